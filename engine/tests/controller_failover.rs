//! Nodes run by the controller (`tern::cluster`): the leader is chosen, replaced when it
//! stops, and a node that comes back follows; nothing acknowledged is lost.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tern::cluster::{ClusterConfig, ClusterNode};
use tern_controller::{Handover, HandoverStep};
use tern_replication::driver::{Client, Role};

fn start_node(dir: &Path, id: u64, cluster: &BTreeMap<u64, SocketAddr>) -> ClusterNode {
    start_node_timeout(dir, id, cluster, Duration::from_secs(1))
}

fn start_node_timeout(dir: &Path, id: u64, cluster: &BTreeMap<u64, SocketAddr>, timeout: Duration) -> ClusterNode {
    let config = cluster_config(dir, id, cluster, timeout, None);
    ClusterNode::start(config, tern::Config::default()).expect("node starts")
}

type Nodes = (Vec<tempfile::TempDir>, BTreeMap<u64, SocketAddr>, BTreeMap<u64, ClusterNode>);

/// Three nodes with the tests' settings: their directories, data addresses and nodes.
fn three_nodes() -> Nodes {
    three_nodes_timeout(Duration::from_secs(1))
}

/// [`three_nodes`] with another failure timeout.
fn three_nodes_timeout(timeout: Duration) -> Nodes {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cluster: BTreeMap<u64, SocketAddr> = (1..=3).map(|id| (id, address_pair())).collect();
    let nodes =
        (1..=3).map(|id| (id, start_node_timeout(dirs[id as usize - 1].path(), id, &cluster, timeout))).collect();
    (dirs, cluster, nodes)
}

/// The node that leads, once exactly one does, with its epoch.
fn leader_of(nodes: &BTreeMap<u64, ClusterNode>, above_epoch: u64) -> (u64, u64) {
    eventually("one node leads", Duration::from_secs(30), || {
        let leaders: Vec<(u64, u64)> = nodes
            .iter()
            .filter_map(|(id, n)| match n.role() {
                Some((Role::Leader, epoch)) if epoch > above_epoch => Some((*id, epoch)),
                _ => None,
            })
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    })
}

fn append(node: &ClusterNode, values: &[String]) -> std::io::Result<(u64, u64)> {
    // No server for a moment while the node switches roles and fails to start one.
    let addr = node.local_addr().ok_or_else(|| std::io::Error::other("the node runs no server"))?;
    let mut client = Client::connect(addr)?;
    let records = values.iter().map(|v| bytes::Bytes::from(v.clone().into_bytes())).collect();
    let (start, end, _) = client.append("orders", records, true)?;
    Ok((start, end))
}

fn committed(node: &ClusterNode) -> Vec<String> {
    committed_of(node, "orders")
}

#[test]
fn a_stopped_leader_is_replaced_and_nothing_acknowledged_is_lost() {
    let (dirs, cluster, mut nodes) = three_nodes();
    let (first, epoch) = leader_of(&nodes, 0);
    let mut acked = Vec::new();
    for i in 0..50 {
        let value = format!("before {i}");
        append(&nodes[&first], std::slice::from_ref(&value)).unwrap();
        acked.push(value);
    }
    let stopped_at = Instant::now();
    nodes.remove(&first).unwrap().stop();
    let (second, epoch2) = leader_of(&nodes, epoch);
    assert_ne!(second, first);
    // The first append the new leader acknowledges.
    let value = "after".to_owned();
    eventually("the new leader takes appends", Duration::from_secs(20), || {
        append(&nodes[&second], std::slice::from_ref(&value)).ok()
    });
    eprintln!("write pause after the leader stopped: {} ms", stopped_at.elapsed().as_millis());
    acked.push(value);
    assert_eq!(committed(&nodes[&second]), acked, "every acknowledged record, in order, once");
    // The old leader comes back and follows, catching up.
    let back = start_node(dirs[first as usize - 1].path(), first, &cluster);
    nodes.insert(first, back);
    eventually("the returning node follows and catches up", Duration::from_secs(30), || {
        (nodes[&first].role() == Some((Role::Follower, 0)) && committed(&nodes[&first]) == acked).then_some(())
    });
    assert_eq!(leader_of(&nodes, epoch).0, second, "the returning node did not take over: epoch {epoch2}");
}

/// Planned handovers of the leadership (`tern handover --all`) while a producer appends: each
/// takes effect in the next epoch, nothing acknowledged is lost, and the write pause of each
/// is printed (`TERN_HANDOVER_ROUNDS`, default 5; `TERN_HANDOVER_PROMOTE` moves with `tern
/// promote` instead, which fences every replica first).
#[test]
fn planned_moves_lose_nothing_and_pause_writes_briefly() {
    let by_promote = std::env::var_os("TERN_HANDOVER_PROMOTE").is_some();
    let rounds: u64 = std::env::var("TERN_HANDOVER_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cluster: BTreeMap<u64, SocketAddr> = (1..=3).map(|id| (id, address_pair())).collect();
    let nodes: BTreeMap<u64, ClusterNode> =
        (1..=3).map(|id| (id, start_node(dirs[id as usize - 1].path(), id, &cluster))).collect();
    let (mut leader, mut epoch) = leader_of(&nodes, 0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let acked: std::sync::Mutex<Vec<(Instant, String)>> = std::sync::Mutex::new(Vec::new());
    let mut pauses = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            // An idempotent producer: a batch it is unsure of (its leader stepped down while
            // it waited) is sent again with the same sequence and stored once.
            let addrs: Vec<SocketAddr> = cluster.values().copied().collect();
            let mut config = tern_replication::driver::ProducerConfig::new(addrs, "orders");
            config.in_flight_max = 1;
            config.give_up_after = Duration::from_secs(30);
            config.reply_timeout = Some(Duration::from_secs(1));
            let mut producer = tern_replication::driver::Producer::new(config).unwrap();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let value = format!("value {i}");
                i += 1;
                producer.send(vec![bytes::Bytes::from(value.clone().into_bytes())]).unwrap();
                producer.wait_one().unwrap();
                acked.lock().unwrap().push((Instant::now(), value));
            }
        });
        for round in 0..rounds {
            eventually("appends go on", Duration::from_secs(20), || (acked.lock().unwrap().len() > 20).then_some(()));
            let to = 1 + leader % 3;
            let before = acked.lock().unwrap().last().map(|(t, _)| *t).unwrap();
            let called = Instant::now();
            let moved = if by_promote {
                tern::cluster::promote(cluster[&1], None, to, false)
            } else {
                tern::cluster::handover(cluster[&1], None, to, Duration::from_secs(10))
            };
            let returned = Instant::now();
            let lines = moved.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert!(lines.last().unwrap().contains(&format!("node {to} leads")), "{lines:?}");
            let (now, next_epoch) = leader_of(&nodes, epoch);
            assert_eq!(now, to);
            let after = eventually("an append after the move", Duration::from_secs(20), || {
                acked
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(t, _)| *t)
                    .find(|t| *t > before + Duration::from_micros(1) && now == to)
            });
            let resumed = eventually("an append acknowledged by the new leader", Duration::from_secs(20), || {
                let acks = acked.lock().unwrap();
                let n = acks.len();
                (n > 0 && acks[n - 1].0 > after).then(|| acks[n - 1].0)
            });
            let (gap, at) = acked
                .lock()
                .unwrap()
                .windows(2)
                .filter(|w| w[0].0 >= before && w[1].0 <= resumed)
                .map(|w| (w[1].0.duration_since(w[0].0).as_millis(), w[0].0))
                .max()
                .unwrap_or((0, before));
            if std::env::var_os("TERN_HANDOVER_VERBOSE").is_some() {
                eprintln!(
                    "round {round}: gap {gap} ms from {} ms after the call began ({} ms for the call)",
                    at.saturating_duration_since(called).as_millis(),
                    returned.duration_since(called).as_millis()
                );
            }
            pauses.push(gap);
            (leader, epoch) = (now, next_epoch);
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let acked: Vec<String> = acked.into_inner().unwrap().into_iter().map(|(_, v)| v).collect();
    let log = eventually("the leader holds every acknowledged value", Duration::from_secs(20), || {
        let log = committed(&nodes[&leader]);
        acked.iter().all(|v| log.contains(v)).then_some(log)
    });
    let unique: std::collections::BTreeSet<&String> = log.iter().collect();
    assert_eq!(unique.len(), log.len(), "a value appears twice");
    pauses.sort_unstable();
    eprintln!(
        "{rounds} planned moves: longest gap between acknowledgements around each, p50 {} ms, p99 {} ms, max {} ms",
        pauses[pauses.len() / 2],
        pauses[((pauses.len() as f64 - 1.0) * 0.99).round() as usize],
        pauses[pauses.len() - 1]
    );
}

/// Appends `count` records of 1 KiB in batches of 100 with quorum acks; returns them.
fn append_many(node: &ClusterNode, tag: &str, count: usize) -> Vec<String> {
    let mut client = Client::connect(node.local_addr().unwrap()).unwrap();
    let mut acked = Vec::new();
    for chunk in 0..count / 100 {
        let values: Vec<String> =
            (0..100).map(|i| format!("{tag} {:05} {}", chunk * 100 + i, "x".repeat(1000))).collect();
        let records = values.iter().map(|v| bytes::Bytes::from(v.clone().into_bytes())).collect();
        client.append("orders", records, true).unwrap();
        acked.extend(values);
    }
    acked
}

/// A handover to a node that was down while the others took records: the leader waits until
/// the target holds every one of them before electing it, so nothing acknowledged is lost
/// (electing it at once loses most of them: the third copy is cut back to the target's).
#[test]
fn a_handover_to_a_node_far_behind_waits_for_it_and_loses_nothing() {
    let (dirs, cluster, mut nodes) = three_nodes();
    let (leader, epoch) = leader_of(&nodes, 0);
    let target = 1 + leader % 3;
    let mut acked = append_many(&nodes[&leader], "before", 100);
    nodes.remove(&target).unwrap().stop();
    acked.extend(append_many(&nodes[&leader], "while down", 3_000));
    nodes.insert(target, start_node(dirs[target as usize - 1].path(), target, &cluster));
    let lines = tern::cluster::handover(cluster[&leader], None, target, Duration::from_secs(20)).unwrap();
    assert!(
        lines.last().unwrap().contains(&format!("node {target} leads every log in epoch {}", epoch + 1)),
        "{lines:?}"
    );
    assert_eq!(leader_of(&nodes, epoch), (target, epoch + 1));
    acked.extend(append_many(&nodes[&target], "after", 100));
    assert_eq!(committed(&nodes[&target]), acked, "every acknowledged record, in order, once");
}

/// A handover to a node that is down is given up once the target has made no progress for a
/// short grace (not the whole timeout, appends being refused meanwhile): the step says why,
/// and the leader takes appends again in the same epoch.
#[test]
fn a_handover_to_a_node_that_is_down_is_given_up_and_the_leader_goes_on() {
    let (_dirs, cluster, mut nodes) = three_nodes();
    let (leader, epoch) = leader_of(&nodes, 0);
    let target = 1 + leader % 3;
    nodes.remove(&target).unwrap().stop();
    let mut acked = append_many(&nodes[&leader], "before", 100);
    let started = Instant::now();
    let err = tern::cluster::handover(cluster[&leader], None, target, Duration::from_secs(20)).unwrap_err();
    assert!(err.contains("given up") && err.contains("made no progress") && err.contains("(not connected)"), "{err}");
    let took = started.elapsed();
    assert!(took >= tern::cluster::HANDOVER_GONE_MAX && took < tern::cluster::HANDOVER_TIMEOUT, "{took:?}");
    assert_eq!(nodes[&leader].role(), Some((Role::Leader, epoch)));
    let status = nodes[&leader].with_server(|s| s.handing_over()).unwrap();
    assert!(!status, "the leader takes appends again");
    acked.extend(append_many(&nodes[&leader], "after", 100));
    assert_eq!(committed(&nodes[&leader]), acked);
}

/// A handover to a target that catches up slowly but steadily waits for it, however long that
/// takes within the handover's timeout: only a target that acknowledges nothing new for
/// `HANDOVER_STALL_MAX` (1 s) is given up. The target is 20 MiB behind (80 records of 256 KiB),
/// reached through links that add a 60 ms round trip to its data and controller ports (`tern
/// serve --advertise`): its catch-up takes round trip after round trip, acknowledged all along,
/// and the handover starts with more than 40 records (10 MiB) to go.
#[test]
fn a_handover_to_a_target_catching_up_slowly_but_steadily_waits_for_it() {
    let far = FarBehind::start(Duration::from_millis(30), 20, u64::MAX);
    let FarBehind { ref nodes, ref cluster, leader, epoch, target, .. } = far;
    let lines = tern::cluster::handover(cluster[&leader], None, target, Duration::from_secs(20))
        .expect("the handover waits for a target that makes progress");
    eprintln!("{}", lines.join("\n"));
    assert_eq!(leader_of(nodes, epoch), (target, epoch + 1));
    let mut acked = far.acked.clone();
    acked.extend(append_many(&nodes[&target], "after", 100));
    assert_each_once(&committed(&nodes[&target]), &acked);
}

/// A handover to a target that makes progress all along but cannot catch up within
/// `HANDOVER_TIMEOUT` (5 s) is given up at the timeout: the leader keeps its epoch and takes
/// appends again. The target is 128 MiB behind, through links that add a 600 ms round trip:
/// with at most 8 MiB (as shipped) unacknowledged per follower and records compression takes
/// little from, it catches up at about 15 MiB/s at most, so in 7 s or more, acknowledging
/// chunks all along (never stalled for `HANDOVER_STALL_MAX`).
#[test]
fn a_handover_to_a_target_too_slow_to_catch_up_in_time_is_given_up_at_the_timeout() {
    // Started once the target acknowledged some of it: its first acknowledgement comes after
    // two round trips (the check of its log, then the first chunk), more than 1 s here.
    let far = FarBehind::start(Duration::from_millis(300), 128, 122 << 20);
    let FarBehind { ref nodes, ref cluster, leader, epoch, target, .. } = far;
    let started = Instant::now();
    let err = tern::cluster::handover(cluster[&leader], None, target, Duration::from_secs(20)).unwrap_err();
    let took = started.elapsed();
    let lag = nodes[&leader].with_server(|s| s.lag_bytes(target)).flatten();
    eprintln!("given up after {took:?}, {lag:?} bytes still to go: {err}");
    assert!(err.contains("given up"), "{err}");
    assert!(took >= tern::cluster::HANDOVER_TIMEOUT, "given up after {took:?}: {err}");
    assert_eq!(nodes[&leader].role(), Some((Role::Leader, epoch)));
    let mut acked = far.acked.clone();
    acked.extend(append_many(&nodes[&leader], "after", 100));
    assert_each_once(&committed(&nodes[&leader]), &acked);
}

/// Three nodes, the third (`target`) reached through links that add `one_way` each way to its
/// data and controller ports (`tern serve --advertise`), stopped while `mib` MiB are appended
/// (records of 256 KiB of printable characters drawn by a xorshift: little for compression to
/// take away), then started
/// again: connected, more than 10 MiB behind, and less than `lag_below` bytes.
struct FarBehind {
    nodes: BTreeMap<u64, ClusterNode>,
    cluster: BTreeMap<u64, SocketAddr>,
    leader: u64,
    epoch: u64,
    target: u64,
    /// Every value acknowledged, in order.
    acked: Vec<String>,
    _links: [tern::bench::link::Link; 2],
    /// Last: dropped after the nodes.
    _dirs: Vec<tempfile::TempDir>,
}

impl FarBehind {
    fn start(one_way: Duration, mib: usize, lag_below: u64) -> FarBehind {
        use tern::bench::link::Link;
        use tern::cluster::controller_addr;
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let cluster: BTreeMap<u64, SocketAddr> = (1..=3).map(|id| (id, address_pair())).collect();
        let target = 3;
        let advertised = address_pair();
        let links = [
            Link::start_at(advertised, cluster[&target], one_way).unwrap(),
            Link::start_at(controller_addr(advertised), controller_addr(cluster[&target]), one_way).unwrap(),
        ];
        let start = |id: u64| {
            let advertise = (id == target).then_some(advertised);
            let config = cluster_config(dirs[id as usize - 1].path(), id, &cluster, Duration::from_secs(1), advertise);
            ClusterNode::start(config, tern::Config::default()).expect("node starts")
        };
        let mut nodes: BTreeMap<u64, ClusterNode> = (1..=3).map(|id| (id, start(id))).collect();
        let (leader, epoch) = leader_of(&nodes, 0);
        assert_ne!(leader, target, "the lowest ids lead first");
        let mut acked = append_many(&nodes[&leader], "before", 100);
        nodes.remove(&target).unwrap().stop();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut client = Client::connect(nodes[&leader].local_addr().unwrap()).unwrap();
        for batch in 0..mib {
            let values: Vec<String> = (0..4)
                .map(|i| {
                    let mut value = format!("big {batch}.{i} ").into_bytes();
                    while value.len() < 256 << 10 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        value.extend(x.to_le_bytes().map(|b| b' ' + b % 95));
                    }
                    String::from_utf8(value).expect("printable ASCII")
                })
                .collect();
            let records = values.iter().map(|v| bytes::Bytes::from(v.clone())).collect();
            client.append("orders", records, true).expect("appended with the third node's acknowledgement");
            acked.extend(values);
        }
        nodes.insert(target, start(target));
        // Under way: connected, and still far behind.
        eventually("the target catching up", Duration::from_secs(20), || {
            let lag = nodes[&leader].with_server(|s| s.lag_bytes(target)).flatten()?;
            (lag > 10 << 20 && lag < lag_below).then_some(())
        });
        FarBehind { nodes, cluster, leader, epoch, target, acked, _links: links, _dirs: dirs }
    }
}

/// `tern promote` of a replica that lacks records another holds, the leader gone: refused
/// without `--force`; with it, the replica leads the next epoch, the records it lacks are named
/// and kept in the map, and the other replica's extra records are cut into quarantine. (The
/// failure timeout is long, so that no automatic failover elects the complete replica first.)
#[test]
fn a_forced_promotion_names_what_it_loses_and_only_with_force() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cluster: BTreeMap<u64, SocketAddr> = (1..=3).map(|id| (id, address_pair())).collect();
    let long = Duration::from_secs(60);
    let start = |id: u64| start_node_timeout(dirs[id as usize - 1].path(), id, &cluster, long);
    let mut nodes: BTreeMap<u64, ClusterNode> = (1..=3).map(|id| (id, start(id))).collect();
    let (leader, epoch) = leader_of(&nodes, 0);
    let (behind, complete) = (1 + leader % 3, 1 + (leader + 1) % 3);
    let kept = append_many(&nodes[&leader], "kept", 100);
    // A quorum is two of three: the node to fall behind must hold these before it stops.
    eventually("every node holds the first records", Duration::from_secs(20), || {
        (committed(&nodes[&behind]) == kept).then_some(())
    });
    nodes.remove(&behind).unwrap().stop();
    append_many(&nodes[&leader], "on two", 200);
    nodes.remove(&leader).unwrap().stop();
    nodes.insert(behind, start(behind));
    let refused = tern::cluster::promote(cluster[&complete], None, behind, false).unwrap_err();
    assert!(refused.contains("not the most up to date") && refused.contains("--force"), "{refused}");
    let lines = tern::cluster::promote(cluster[&complete], None, behind, true).unwrap();
    let text = lines.join("\n");
    assert!(text.contains("may lose committed records"), "{text}");
    assert!(text.contains(&format!("node {behind} leads every log in epoch {}", epoch + 1)), "{text}");
    assert_eq!(leader_of(&nodes, epoch), (behind, epoch + 1));
    let map = nodes[&behind].controller().local_map();
    let loss = &map.logs[tern::cluster::ALL_LOGS].data_loss;
    assert_eq!(loss.len(), 1, "{loss:?}");
    assert_eq!(loss[0].epoch, epoch + 1);
    assert!(loss[0].to >= loss[0].from + 200, "the 200 records only the others held: {loss:?}");
    // The new leader has what it had; the complete replica follows it, cut back to it.
    let mut expected = kept.clone();
    expected.extend(append_many(&nodes[&behind], "after", 100));
    assert_eq!(committed(&nodes[&behind]), expected);
    eventually("the complete replica follows, cut back to the new leader's log", Duration::from_secs(30), || {
        (committed(&nodes[&complete]) == expected).then_some(())
    });
    let mut quarantined: Vec<String> = std::fs::read_dir(dirs[complete as usize - 1].path().join("logs/orders"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("quarantine-"))
        .collect();
    assert!(!quarantined.is_empty(), "the records cut are kept in a quarantine file");
    quarantined.sort();
    // And status lists them.
    let listed = nodes[&complete].with_server(|s| log_metrics(s, "orders").quarantine).unwrap();
    assert_eq!(listed, quarantined);
}

// Crashes during a planned handover (`tern handover --all`). Each node is stopped as a
// process would end: its loop, its replication server and its controller member go. A crash
// of either node at any step must end the handover one way or the other (the target leads the
// next epoch, or the handover is given up or overtaken by a failover), with every
// acknowledged record kept once, a leader taking appends again, and status saying which.

/// The data leader and its epoch, the controller's leader, and the third node (the target of
/// the handover tests below): the controller's leader is neither leader nor target when it
/// does not lead the data too (the first placement avoids that).
fn roles(nodes: &BTreeMap<u64, ClusterNode>) -> (u64, u64, u64, u64) {
    let (leader, epoch) = leader_of(nodes, 0);
    let controller = controller_leader(nodes);
    let target = (1..=3).find(|id| *id != leader && *id != controller).unwrap_or(1 + leader % 3);
    (leader, epoch, controller, target)
}

/// The controller's leader, once every running node names the same one.
fn controller_leader(nodes: &BTreeMap<u64, ClusterNode>) -> u64 {
    eventually("the controller members agree on a leader", Duration::from_secs(20), || {
        let named: std::collections::BTreeSet<Option<u64>> =
            nodes.values().map(|n| n.controller().status().leader).collect();
        (named.len() == 1).then(|| named.into_iter().next().flatten()).flatten()
    })
}

/// Whether `node` refuses appends for a handover (its gate is closed).
fn gate_closed(node: &ClusterNode) -> bool {
    node.with_server(|s| s.handing_over()) == Some(true)
}

/// The handover in the map as `node`'s controller member holds it.
fn handover_in_map(node: &ClusterNode) -> Option<Handover> {
    node.controller().local_map().logs.get(tern::cluster::ALL_LOGS)?.handover.clone()
}

/// The handover `tern status` shows at `node`: its step's name, the epoch handed over, the
/// target.
fn status_handover(node: &ClusterNode) -> Option<(String, u64, u64)> {
    let mut client = Client::connect(node.local_addr()?).ok()?;
    let doc: serde_json::Value = serde_json::from_str(&client.status().ok()?).ok()?;
    let shown = &doc["cluster"]["handover"];
    Some((shown["step"].as_str()?.to_owned(), shown["from_epoch"].as_u64()?, shown["to"].as_u64()?))
}

/// Every acknowledged value is in `log` exactly once, and no value is there twice.
fn assert_each_once(log: &[String], acked: &[String]) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for value in log {
        *counts.entry(value.as_str()).or_default() += 1;
    }
    // Values are shown by their first 20 bytes (the tag and the number).
    let short = |v: &str| v.chars().take(20).collect::<String>();
    let twice: Vec<String> = counts.iter().filter(|(_, n)| **n > 1).map(|(v, _)| short(v)).take(3).collect();
    assert!(twice.is_empty(), "values stored more than once, e.g. {twice:?}");
    let lost: Vec<String> = acked.iter().filter(|v| !counts.contains_key(v.as_str())).map(|v| short(v)).collect();
    assert!(lost.is_empty(), "{} acknowledged values lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(3)]);
}

/// An idempotent producer appending one value at a time to `orders` through every node, as a
/// client of a cluster whose leader moves or fails does, from its own thread (see
/// [`with_writer`]). It keeps the values acknowledged; one that gives up is replaced by a new
/// one (its batch in doubt may or may not be stored, and is not counted).
#[derive(Default)]
struct Writer {
    stop: std::sync::atomic::AtomicBool,
    acked: std::sync::Mutex<Vec<String>>,
    gave_up: std::sync::Mutex<Vec<String>>,
}

impl Writer {
    fn run(&self, cluster: &BTreeMap<u64, SocketAddr>) {
        use std::sync::atomic::Ordering::SeqCst;
        use tern_replication::driver::{Producer, ProducerConfig};
        let mut i = 0u64;
        while !self.stop.load(SeqCst) {
            let mut config = ProducerConfig::new(cluster.values().copied().collect(), "orders");
            config.in_flight_max = 1;
            config.reply_timeout = Some(Duration::from_secs(1));
            let mut producer = Producer::new(config).unwrap();
            while !self.stop.load(SeqCst) {
                let value = format!("written {i}");
                i += 1;
                let record = vec![bytes::Bytes::from(value.clone().into_bytes())];
                match producer.send(record).and_then(|_| producer.wait_one()) {
                    Ok(_) => self.acked.lock().unwrap().push(value),
                    Err(gave_up) => {
                        self.gave_up.lock().unwrap().push(gave_up.to_string());
                        break;
                    }
                }
            }
        }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `more` values beyond those acknowledged so far are acknowledged.
    fn wait_for_more(&self, more: usize, what: &str) {
        let now = self.acked_count();
        eventually(what, Duration::from_secs(20), || (self.acked_count() >= now + more).then_some(()));
    }
}

/// Runs `body` while a [`Writer`] appends; returns what `body` returned and the values
/// acknowledged. The writer stops however `body` ends (a failed check too).
fn with_writer<T>(cluster: &BTreeMap<u64, SocketAddr>, body: impl FnOnce(&Writer) -> T) -> (T, Vec<String>) {
    struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let writer = Writer::default();
    let out = std::thread::scope(|s| {
        s.spawn(|| writer.run(cluster));
        let _stop = StopOnDrop(&writer.stop);
        writer.wait_for_more(10, "the writer's first appends");
        body(&writer)
    });
    let gave_up = writer.gave_up.into_inner().unwrap();
    if !gave_up.is_empty() {
        eprintln!("producers that gave up (their last batch in doubt): {gave_up:?}");
    }
    (out, writer.acked.into_inner().unwrap())
}

/// The leader crashes while its handover waits for a target far behind (step fenced, appends
/// refused): the controller fails over to the replica holding every record. Nothing
/// acknowledged is lost, the new leader takes appends in a later epoch, the operator's
/// handover reports that it was overtaken, no handover is left under way, and the next one
/// works.
#[test]
fn a_leader_crashing_mid_handover_is_failed_over_and_a_later_handover_works() {
    let started = Instant::now();
    let (dirs, cluster, mut nodes) = three_nodes();
    let (leader, epoch, controller, target) = roles(&nodes);
    let mut acked = append_many(&nodes[&leader], "before", 100);
    nodes.remove(&target).unwrap().stop();
    acked.extend(append_many(&nodes[&leader], "while down", 2_000));
    let ((answer, new, new_epoch), written) = with_writer(&cluster, |writer| {
        std::thread::scope(|s| {
            let asked =
                s.spawn(|| tern::cluster::handover(cluster[&controller], None, target, Duration::from_secs(15)));
            eventually("the leader refuses appends", Duration::from_secs(10), || {
                gate_closed(&nodes[&leader]).then_some(())
            });
            let shown = handover_in_map(&nodes[&controller]).map(|h| (h.to, h.epoch, h.step));
            assert_eq!(shown, Some((target, epoch, HandoverStep::Fenced)));
            nodes.remove(&leader).unwrap().stop();
            nodes.insert(target, start_node(dirs[target as usize - 1].path(), target, &cluster));
            let (new, new_epoch) = leader_of(&nodes, epoch);
            writer.wait_for_more(20, "appends resume at the new leader");
            (asked.join().unwrap(), new, new_epoch)
        })
    });
    acked.extend(written);
    assert_ne!(new, leader);
    let answer = answer.unwrap_err();
    assert!(answer.contains("overtaken"), "{answer}");
    let placement =
        nodes[&new].controller().read_map(Duration::from_secs(2)).unwrap().logs[tern::cluster::ALL_LOGS].clone();
    assert_eq!((placement.leader, placement.epoch), (new, new_epoch));
    assert!(placement.handover.as_ref().is_none_or(|h| h.under_way(new_epoch).is_none()), "{placement:?}");
    acked.extend(append_many(&nodes[&new], "after", 100));
    assert_each_once(&committed(&nodes[&new]), &acked);
    // The crashed node comes back and follows; a new handover is not blocked by the old one.
    nodes.insert(leader, start_node(dirs[leader as usize - 1].path(), leader, &cluster));
    let next = if new == target { leader } else { target };
    let lines = tern::cluster::handover(cluster[&controller], None, next, Duration::from_secs(20)).unwrap();
    assert!(
        lines.last().unwrap().contains(&format!("node {next} leads every log in epoch {}", new_epoch + 1)),
        "{lines:?}"
    );
    assert_eq!(leader_of(&nodes, new_epoch), (next, new_epoch + 1));
    acked.extend(append_many(&nodes[&next], "last", 100));
    assert_each_once(&committed(&nodes[&next]), &acked);
    eprintln!("done in {} ms", started.elapsed().as_millis());
}

/// The leader restarts within the failure timeout while its handover waits for the target.
/// It cannot lead its epoch again (every start of a leader begins a new epoch of its logs, and
/// a log already at that epoch refuses it), so it comes back taking no appends, and status
/// still shows the handover fenced, until the failover after the failure timeout ends the
/// handover ("overtaken"): a node holding every record leads a later epoch and takes appends,
/// nothing acknowledged is lost, and the target, back, follows.
#[test]
fn a_leader_restarted_mid_handover_takes_no_append_in_its_epoch_and_a_failover_ends_it() {
    let started = Instant::now();
    // Longer than the restart takes: the node is back well before it could be found silent.
    let timeout = Duration::from_secs(3);
    let (dirs, cluster, mut nodes) = three_nodes_timeout(timeout);
    let (leader, epoch, controller, target) = roles(&nodes);
    let restart = |id: u64| start_node_timeout(dirs[id as usize - 1].path(), id, &cluster, timeout);
    let mut acked = append_many(&nodes[&leader], "before", 100);
    nodes.remove(&target).unwrap().stop();
    acked.extend(append_many(&nodes[&leader], "while down", 2_000));
    let answer = std::thread::scope(|s| {
        let asked = s.spawn(|| tern::cluster::handover(cluster[&controller], None, target, Duration::from_secs(20)));
        eventually("the leader refuses appends", Duration::from_secs(10), || {
            gate_closed(&nodes[&leader]).then_some(())
        });
        let down_at = Instant::now();
        nodes.remove(&leader).unwrap().stop();
        nodes.insert(leader, restart(leader));
        eprintln!("the leader was back in {} ms", down_at.elapsed().as_millis());
        eventually("the restarted node serves", Duration::from_secs(10), || nodes[&leader].local_addr());
        let fenced = Some(("fenced".to_owned(), epoch, target));
        assert_eq!(status_handover(&nodes[&controller]), fenced, "status shows where the handover is");
        nodes.insert(target, restart(target));
        // Until the failover, the restarted node neither leads its old epoch nor takes an
        // append: asked all along, as it comes to look at the map.
        let map_epoch = || nodes[&controller].controller().local_map().logs[tern::cluster::ALL_LOGS].epoch;
        let deadline = Instant::now() + Duration::from_secs(15);
        for attempt in 0.. {
            if map_epoch() != epoch {
                break;
            }
            assert_ne!(nodes[&leader].role(), Some((Role::Leader, epoch)), "the restarted node leads its old epoch");
            let value = format!("mid-handover {attempt}");
            if let Ok(range) = append(&nodes[&leader], std::slice::from_ref(&value)) {
                // Only once it was elected again, in a later epoch (the map says so first).
                assert_ne!(map_epoch(), epoch, "the restarted node took an append in its old epoch at {range:?}");
                acked.push(value);
                break;
            }
            assert!(Instant::now() < deadline, "no failover within 15 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        asked.join().unwrap()
    });
    let answer = answer.unwrap_err();
    assert!(answer.contains("overtaken"), "{answer}");
    let (now, now_epoch) = leader_of(&nodes, epoch);
    assert_ne!(now, target, "the target lacks records: it cannot be elected");
    let placement =
        nodes[&now].controller().read_map(Duration::from_secs(2)).unwrap().logs[tern::cluster::ALL_LOGS].clone();
    assert_eq!((placement.leader, placement.epoch, placement.handover), (now, now_epoch, None));
    acked.extend(append_many(&nodes[&now], "after", 100));
    assert_eq!(committed(&nodes[&now]), acked, "every acknowledged record, in order, once");
    eventually("the target follows and catches up", Duration::from_secs(20), || {
        (committed(&nodes[&target]) == acked).then_some(())
    });
    eprintln!("done in {} ms", started.elapsed().as_millis());
}

/// The target crashes as soon as the map shows it caught up or elected: elected, it never
/// leads, and the controller fails over to another replica in a later epoch. Nothing
/// acknowledged is lost, appends resume, no handover is left under way, and the target comes
/// back as a follower of the new leader.
#[test]
fn a_target_crashing_once_caught_up_is_failed_over_and_nothing_is_lost() {
    let started = Instant::now();
    let (dirs, cluster, mut nodes) = three_nodes();
    let (leader, epoch, controller, target) = roles(&nodes);
    let mut acked = append_many(&nodes[&leader], "before", 100);
    let ((seen, answer, new, new_epoch), written) = with_writer(&cluster, |writer| {
        let (seen, answer) = std::thread::scope(|s| {
            let asked =
                s.spawn(|| tern::cluster::handover(cluster[&controller], None, target, Duration::from_secs(15)));
            // Polled closely: the election follows the caught-up step at once.
            let deadline = Instant::now() + Duration::from_secs(15);
            let seen = loop {
                let step = handover_in_map(&nodes[&controller]).filter(|h| h.epoch == epoch).map(|h| h.step);
                if let Some(step @ (HandoverStep::CaughtUp | HandoverStep::Promoted)) = step {
                    break step;
                }
                assert!(Instant::now() < deadline, "the target never caught up: {step:?}");
                std::thread::sleep(Duration::from_micros(100));
            };
            nodes.remove(&target).unwrap().stop();
            (seen, asked.join().unwrap())
        });
        let (new, new_epoch) = leader_of(&nodes, epoch + 1);
        writer.wait_for_more(20, "appends resume at the new leader");
        (seen, answer, new, new_epoch)
    });
    eprintln!("the target stopped at step {}", seen.name());
    acked.extend(written);
    let lines = answer.unwrap();
    assert!(
        lines.last().unwrap().contains(&format!("node {target} leads every log in epoch {}", epoch + 1)),
        "{lines:?}"
    );
    assert_ne!(new, target);
    assert!(new_epoch >= epoch + 2, "a failover after the handover's epoch: {new_epoch}");
    let placement =
        nodes[&new].controller().read_map(Duration::from_secs(2)).unwrap().logs[tern::cluster::ALL_LOGS].clone();
    assert_eq!((placement.leader, placement.epoch, placement.handover), (new, new_epoch, None));
    eventually("status shows no handover", Duration::from_secs(10), || {
        status_handover(&nodes[&new]).is_none().then_some(())
    });
    acked.extend(append_many(&nodes[&new], "after", 100));
    let log = committed(&nodes[&new]);
    assert_each_once(&log, &acked);
    nodes.insert(target, start_node(dirs[target as usize - 1].path(), target, &cluster));
    eventually("the target comes back as a follower and catches up", Duration::from_secs(20), || {
        (nodes[&target].role() == Some((Role::Follower, 0)) && committed(&nodes[&target]) == log).then_some(())
    });
    assert_eq!(leader_of(&nodes, epoch + 1), (new, new_epoch));
    eprintln!("done in {} ms", started.elapsed().as_millis());
}

/// The controller's leader (neither the data leader nor the target) crashes while a handover
/// waits for the target: the other two elect a controller leader, and the handover completes
/// or is given up (or a failover overtakes it); whichever, the map's step says which, one node
/// leads and takes appends, and every acknowledged record is there once.
#[test]
fn a_handover_ends_cleanly_when_the_controller_leader_crashes_mid_way() {
    let started = Instant::now();
    let mut tries = 0;
    let (dirs, cluster, mut nodes, (leader, epoch, controller, target)) = loop {
        let (dirs, cluster, nodes) = three_nodes();
        let roles = roles(&nodes);
        if roles.0 != roles.2 {
            break (dirs, cluster, nodes, roles);
        }
        tries += 1;
        if tries == 3 {
            eprintln!("skipped: the controller's leader led the data in {tries} clusters; the case needs a third node");
            return;
        }
    };
    let mut acked = append_many(&nodes[&leader], "before", 100);
    nodes.remove(&target).unwrap().stop();
    acked.extend(append_many(&nodes[&leader], "while down", 2_000));
    let (answer, written) = with_writer(&cluster, |writer| {
        let answer = std::thread::scope(|s| {
            // Asked through the leader, which stays up.
            let asked = s.spawn(|| tern::cluster::handover(cluster[&leader], None, target, Duration::from_secs(15)));
            eventually("the leader refuses appends", Duration::from_secs(10), || {
                gate_closed(&nodes[&leader]).then_some(())
            });
            nodes.remove(&controller).unwrap().stop();
            nodes.insert(target, start_node(dirs[target as usize - 1].path(), target, &cluster));
            asked.join().unwrap()
        });
        writer.wait_for_more(20, "appends resume");
        answer
    });
    acked.extend(written);
    let map = nodes[&leader].controller().read_map(Duration::from_secs(2)).unwrap();
    let placement = map.logs[tern::cluster::ALL_LOGS].clone();
    let step = placement.handover.as_ref().map(|h| (h.to, h.epoch, h.step));
    match &answer {
        Ok(lines) => {
            assert!(lines.last().unwrap().contains(&format!("node {target} leads every log")), "{lines:?}");
            assert_eq!((placement.leader, placement.epoch), (target, epoch + 1));
            assert_eq!(step, Some((target, epoch, HandoverStep::Promoted)));
        }
        Err(e) if e.contains("given up") => {
            assert_eq!((placement.leader, placement.epoch), (leader, epoch));
            assert_eq!(step, Some((target, epoch, HandoverStep::Aborted)));
        }
        Err(e) => {
            assert!(e.contains("overtaken"), "{e}");
            assert!(placement.epoch > epoch && step.is_none(), "{placement:?}");
        }
    }
    eprintln!("the handover ended: {answer:?}");
    let (now, now_epoch) = leader_of(&nodes, 0);
    assert_eq!((now, now_epoch), (placement.leader, placement.epoch));
    assert!(!gate_closed(&nodes[&now]), "the leader takes appends");
    acked.extend(append_many(&nodes[&now], "after", 100));
    assert_each_once(&committed(&nodes[&now]), &acked);
    eprintln!("done in {} ms", started.elapsed().as_millis());
}

/// A node added while a producer appends (`tern cluster add-node`) is seeded as a learner,
/// then becomes a replica with the quorum resized to 3 of 4, holding every acknowledged
/// record. With the leader stopped, the four replicas fail over with nothing lost; the added
/// node, removed (`tern cluster remove-node`), leaves 3 replicas with a quorum of 2, and the
/// appends go on.
#[test]
fn a_node_added_is_seeded_then_counts_and_removed_leaves_a_majority_quorum() {
    let (_dirs, cluster, mut nodes) = three_nodes();
    let (leader, _) = leader_of(&nodes, 0);
    let before = append_many(&nodes[&leader], "before", 2000);
    let dir4 = tempfile::tempdir().unwrap();
    let addr4 = address_pair();
    // Listening at `addr4`, with `--cluster` naming the three voters only: it waits to be added.
    let mut with_4 = cluster.clone();
    with_4.insert(4, addr4);
    let joining = ClusterConfig {
        cluster: cluster.clone(),
        ..cluster_config(dir4.path(), 4, &with_4, Duration::from_secs(1), None)
    };
    nodes
        .insert(4, ClusterNode::start(joining, tern::Config::default()).expect("a node not named in --cluster starts"));
    let (lines, acked) = with_writer(&cluster, |writer| {
        let lines =
            tern::cluster::add_node(cluster[&1], 4, addr4, false, Duration::from_secs(30)).expect("node 4 added");
        writer.wait_for_more(20, "appends once node 4 counts");
        lines
    });
    eprintln!("{}", lines.join("\n"));
    let read_map = |at: SocketAddr| {
        let client = tern_controller::ControllerClient::new(Duration::from_secs(3)).unwrap();
        client.read_map(&tern::cluster::controller_addr(at).to_string()).unwrap()
    };
    let placement = read_map(addr4).logs[tern::cluster::ALL_LOGS].clone();
    assert_eq!((placement.replicas.clone(), placement.quorum), (vec![1, 2, 3, 4], 3));
    assert!(placement.learners.is_empty());
    let all: Vec<String> = before.iter().chain(&acked).cloned().collect();
    eventually("node 4 holds every acknowledged record", Duration::from_secs(20), || {
        let held = committed(&nodes[&4]);
        all.iter().all(|v| held.contains(v)).then_some(())
    });
    assert_each_once(&committed(&nodes[&4]), &all);
    eventually("the leader reports node 4 in sync", Duration::from_secs(10), || {
        read_map(addr4).logs[tern::cluster::ALL_LOGS].in_sync.contains(&4).then_some(())
    });

    let (leader, epoch) = leader_of(&nodes, 0);
    nodes.remove(&leader).unwrap().stop();
    let (leader, _) = leader_of(&nodes, epoch);
    eprintln!("node {leader} leads after the failover");
    // Committed there once a record of its epoch is on 3 of the 4 replicas (the 3 left).
    eventually("the new leader's commit covers every acknowledged record", Duration::from_secs(20), || {
        let held = committed(&nodes[&leader]);
        all.iter().all(|v| held.contains(v)).then_some(())
    });
    assert_each_once(&committed(&nodes[&leader]), &all);
    // An election leaves the new leader alone in sync; it reports the others as they keep up.
    let live: Vec<u64> = nodes.keys().copied().collect();
    eventually("the new leader reports the live replicas in sync", Duration::from_secs(10), || {
        (read_map(cluster[&leader]).logs[tern::cluster::ALL_LOGS].in_sync == live).then_some(())
    });

    let lines = tern::cluster::remove_node(cluster[&leader], 4, Duration::from_secs(30)).expect("node 4 removed");
    eprintln!("{}", lines.join("\n"));
    nodes.remove(&4).unwrap().stop();
    let map = read_map(cluster[&leader]);
    let placement = &map.logs[tern::cluster::ALL_LOGS];
    assert_eq!((placement.replicas.len(), placement.quorum), (3, 2));
    assert!(!placement.replicas.contains(&4) && !map.members.contains_key(&4));
    let after = vec!["after removal".to_owned()];
    eventually("an append after the removal", Duration::from_secs(10), || append(&nodes[&leader], &after).ok());
}

/// A replica removed while the one left beside the leader is far behind (it was down while
/// 5,000 records were acknowledged): the leader takes it out only once the replicas left hold
/// every record, so when the leader then stops, the one left (elected from its report alone:
/// 2 replicas, quorum 2) holds every acknowledged record. Taking it out at once loses them.
#[test]
fn a_replica_is_taken_out_only_once_the_replicas_left_hold_every_record() {
    let (dirs, cluster, mut nodes) = three_nodes();
    let (leader, _) = leader_of(&nodes, 0);
    let behind = *nodes.keys().find(|id| **id != leader).unwrap();
    let leaving = *nodes.keys().find(|id| **id != leader && **id != behind).unwrap();
    nodes.remove(&behind).unwrap().stop();
    let acked = append_many(&nodes[&leader], "while down", 5000);
    nodes.insert(behind, start_node(dirs[behind as usize - 1].path(), behind, &cluster));
    let contact = tern::cluster::controller_addr(cluster[&leader]).to_string();
    let client = tern_controller::ControllerClient::new(Duration::from_secs(3)).unwrap();
    let epoch = client.read_map(&contact).unwrap().logs[tern::cluster::ALL_LOGS].epoch;
    ask_removal(&client, &contact, epoch, leaving);
    let placement = eventually("the replica taken out", Duration::from_secs(20), || {
        let placement = client.read_map(&contact).ok()?.logs[tern::cluster::ALL_LOGS].clone();
        (!placement.replicas.contains(&leaving)).then_some(placement)
    });
    assert_eq!((placement.replicas.len(), placement.quorum), (2, 2));
    nodes.remove(&leader).unwrap().stop();
    let (new_leader, _) = leader_of(&nodes, placement.epoch);
    assert_eq!(new_leader, behind, "the only replica left is elected");
    // It commits with both replicas: the old leader comes back as its follower (cut back to
    // the new leader's log, with anything beyond it quarantined).
    nodes.insert(leader, start_node(dirs[leader as usize - 1].path(), leader, &cluster));
    let marker = vec!["after".to_owned()];
    eventually("an append on both replicas", Duration::from_secs(20), || append(&nodes[&new_leader], &marker).ok());
    assert_each_once(&committed(&nodes[&new_leader]), &acked);
}

/// A voter whose disk was lost (its directory emptied) is refused at its restart, naming the
/// cure: it would have forgotten its votes. The cure works: removed, then started empty without
/// naming itself in --cluster and added again as a voter, it holds every record and the
/// cluster takes appends.
#[test]
fn a_voter_that_lost_its_disk_is_refused_until_removed_and_added_again() {
    let (dirs, cluster, mut nodes) = three_nodes();
    let (leader, _) = leader_of(&nodes, 0);
    let acked = append_many(&nodes[&leader], "before", 300);
    let lost = *nodes.keys().find(|id| **id != leader).unwrap();
    nodes.remove(&lost).unwrap().stop();
    let dir = dirs[lost as usize - 1].path();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(path).unwrap()
        } else {
            std::fs::remove_file(path).unwrap()
        }
    }
    let again = cluster_config(dir, lost, &cluster, Duration::from_secs(1), None);
    let refused = ClusterNode::start(again.clone(), tern::Config::default()).expect_err("a voter without its votes");
    assert!(refused.to_string().contains("its disk was lost"), "{refused}");
    eprintln!("{refused}");

    tern::cluster::remove_node(cluster[&leader], lost, Duration::from_secs(30)).expect("removed");
    let others: std::collections::BTreeMap<u64, SocketAddr> =
        cluster.iter().filter(|(id, _)| **id != lost).map(|(id, a)| (*id, *a)).collect();
    let joining = ClusterConfig { cluster: others, ..again };
    nodes.insert(lost, ClusterNode::start(joining, tern::Config::default()).expect("an empty node joins"));
    let lines = tern::cluster::add_node(cluster[&leader], lost, cluster[&lost], true, Duration::from_secs(30))
        .expect("added again");
    eprintln!("{}", lines.join("\n"));
    let status = nodes[&leader].controller().status();
    assert!(status.voters.contains_key(&lost), "a voter again: {status:?}");
    let placement =
        nodes[&leader].controller().read_map(Duration::from_secs(3)).unwrap().logs[tern::cluster::ALL_LOGS].clone();
    assert_eq!((placement.replicas.len(), placement.quorum), (3, 2), "a majority again");
    let more = vec!["after".to_owned()];
    eventually("an append once added again", Duration::from_secs(10), || append(&nodes[&leader], &more).ok());
    eventually("the node added again holds every record", Duration::from_secs(20), || {
        let held = committed(&nodes[&lost]);
        acked.iter().chain(&more).all(|v| held.contains(v)).then_some(())
    });
}

/// Three nodes, once the first leader (of `epoch`) acknowledged 200 records and one of its
/// followers (`down`) was stopped; the other follower (`leaving`) is to be asked to leave.
struct OneDown {
    dirs: Vec<tempfile::TempDir>,
    cluster: BTreeMap<u64, SocketAddr>,
    nodes: BTreeMap<u64, ClusterNode>,
    leader: u64,
    epoch: u64,
    down: u64,
    leaving: u64,
    /// The records acknowledged.
    acked: Vec<String>,
}

fn one_down() -> OneDown {
    let (dirs, cluster, mut nodes) = three_nodes();
    let (leader, epoch) = leader_of(&nodes, 0);
    let down = *nodes.keys().find(|id| **id != leader).unwrap();
    let leaving = *nodes.keys().find(|id| **id != leader && **id != down).unwrap();
    let acked = append_many(&nodes[&leader], "before", 200);
    nodes.remove(&down).unwrap().stop();
    OneDown { dirs, cluster, nodes, leader, epoch, down, leaving, acked }
}

/// A replica asked to leave while the one that would be left beside the leader is down: the
/// leader does not take it out (the replicas left could not hold the records) and does not
/// stop the writes meanwhile; once the other replica is back, it takes it out.
#[test]
fn a_replica_leaves_only_once_the_replicas_left_can_hold_the_records_and_writes_go_on_meanwhile() {
    let OneDown { dirs, cluster, mut nodes, leader, epoch, down, leaving, mut acked } = one_down();
    let contact = tern::cluster::controller_addr(cluster[&leader]).to_string();
    let client = tern_controller::ControllerClient::new(Duration::from_secs(3)).unwrap();
    ask_removal(&client, &contact, epoch, leaving);
    for i in 0..20 {
        let value = vec![format!("while {down} is down {i}")];
        append(&nodes[&leader], &value).expect("appends go on while the removal waits");
        acked.extend(value);
        std::thread::sleep(Duration::from_millis(20));
    }
    let map = eventually("the map", Duration::from_secs(10), || client.read_map(&contact).ok());
    let placement = map.logs[tern::cluster::ALL_LOGS].clone();
    assert_eq!((placement.epoch, placement.replicas.len(), placement.leaving), (epoch, 3, Some(leaving)));
    nodes.insert(down, start_node(dirs[down as usize - 1].path(), down, &cluster));
    let placement = eventually("the replica taken out once the other is back", Duration::from_secs(20), || {
        let placement = client.read_map(&contact).ok()?.logs[tern::cluster::ALL_LOGS].clone();
        (!placement.replicas.contains(&leaving)).then_some(placement)
    });
    assert_eq!((placement.replicas.len(), placement.quorum), (2, 2));
    let after = vec!["after".to_owned()];
    eventually("an append after the removal", Duration::from_secs(10), || append(&nodes[&leader], &after).ok());
    acked.extend(after);
    assert_each_once(&committed(&nodes[&leader]), &acked);
}

/// Appends `value` to `log` through `node` and waits for the quorum.
fn append_to(node: &ClusterNode, log: &str, value: &str) -> std::io::Result<(u64, u64)> {
    let addr = node.local_addr().ok_or_else(|| std::io::Error::other("the node runs no server"))?;
    let mut client = Client::connect(addr)?;
    let (start, end, _) = client.append(log, vec![bytes::Bytes::from(value.to_owned())], true)?;
    Ok((start, end))
}

/// The committed values of `log` on `node`.
fn committed_of(node: &ClusterNode, log: &str) -> Vec<String> {
    let Some(addr) = node.local_addr() else { return Vec::new() };
    let Ok(records) = read_log(addr, log, false) else { return Vec::new() };
    records.into_values().map(|r| String::from_utf8(r.to_vec()).unwrap()).collect()
}

/// Leaders per log: `tern handover --log orders` gives `orders` a placement of its own, led
/// by another node than every other log; both leaders take appends at once. When the node
/// leading `orders` stops, `orders` alone fails over (the other logs keep their leader and
/// epoch), and nothing acknowledged on either log is lost.
#[test]
fn a_log_handed_over_alone_has_a_leader_of_its_own_and_fails_over_apart() {
    let (_dirs, cluster, mut nodes) = three_nodes();
    let (leader, epoch) = leader_of(&nodes, 0);
    let mut orders = Vec::new();
    let mut events = Vec::new();
    for i in 0..20 {
        let (order, event) = (format!("order {i}"), format!("event {i}"));
        append_to(&nodes[&leader], "orders", &order).unwrap();
        append_to(&nodes[&leader], "events", &event).unwrap();
        orders.push(order);
        events.push(event);
    }
    let target = *nodes.keys().find(|id| **id != leader).unwrap();
    let lines = tern::cluster::handover(cluster[&leader], Some("orders"), target, Duration::from_secs(20)).unwrap();
    eprintln!("{}", lines.join("\n"));
    assert!(lines[0].contains("log orders placed alone"), "{lines:?}");
    assert!(lines.last().unwrap().contains(&format!("node {target} leads log orders in epoch")), "{lines:?}");
    let map = read_map_any(&cluster, &nodes).unwrap();
    assert_eq!((map.logs["orders"].leader, map.logs[tern::cluster::ALL_LOGS].leader), (target, leader));
    assert_eq!(map.logs[tern::cluster::ALL_LOGS].epoch, epoch, "every other log kept its leader and epoch");
    eventually("node {target} takes the appends of orders", Duration::from_secs(10), || {
        append_to(&nodes[&target], "orders", "order 20").ok()
    });
    orders.push("order 20".into());
    append_to(&nodes[&leader], "events", "event 20").unwrap();
    events.push("event 20".into());
    let refused = append_to(&nodes[&leader], "orders", "to the old leader").unwrap_err().to_string();
    assert!(refused.contains(&format!("follower of node {target}")), "{refused}");
    assert_eq!(nodes[&target].roles()["orders"].0, Role::Leader);

    // The leader of orders stops: orders fails over to the third node or to the leader of
    // the other logs; the other logs are not touched.
    nodes.remove(&target).unwrap().stop();
    let orders_leader = eventually("orders failed over", Duration::from_secs(30), || {
        let map = read_map_any(&cluster, &nodes)?;
        let placed = &map.logs["orders"];
        (placed.leader != target).then_some(placed.leader)
    });
    eventually("orders taken again", Duration::from_secs(20), || {
        append_to(&nodes[&orders_leader], "orders", "order 21").ok()
    });
    orders.push("order 21".into());
    append_to(&nodes[&leader], "events", "event 21").unwrap();
    events.push("event 21".into());
    let map = read_map_any(&cluster, &nodes).unwrap();
    assert_eq!(map.logs[tern::cluster::ALL_LOGS].epoch, epoch, "the other logs did not fail over");
    assert_each_once(&committed_of(&nodes[&orders_leader], "orders"), &orders);
    assert_each_once(&committed_of(&nodes[&leader], "events"), &events);
}

/// The map read through any node still running.
fn read_map_any(
    cluster: &BTreeMap<u64, SocketAddr>,
    nodes: &BTreeMap<u64, ClusterNode>,
) -> Option<tern_controller::ClusterMap> {
    let client = tern_controller::ControllerClient::new(Duration::from_secs(3)).ok()?;
    nodes.keys().find_map(|id| client.read_map(&tern::cluster::controller_addr(cluster[id]).to_string()).ok())
}

/// `tern promote --log`: the leader of a log placed alone stops, and before any automatic
/// failover (a long failure timeout here) an operator promotes a replica of that log alone:
/// only that log's replicas are fenced and only its epoch moves; the node promoted is the most
/// up to date of the reports (a node that is not is refused, naming the one that is), and it
/// holds every acknowledged record of the log.
#[test]
fn a_log_placed_alone_is_promoted_alone() {
    let (_dirs, cluster, mut nodes) = three_nodes_timeout(Duration::from_secs(60));
    let (leader, epoch) = leader_of(&nodes, 0);
    let target = *nodes.keys().find(|id| **id != leader).unwrap();
    tern::cluster::handover(cluster[&leader], Some("orders"), target, Duration::from_secs(20)).unwrap();
    let mut orders = Vec::new();
    for i in 0..20 {
        let order = format!("order {i}");
        eventually("orders taken", Duration::from_secs(10), || append_to(&nodes[&target], "orders", &order).ok());
        orders.push(order);
    }
    nodes.remove(&target).unwrap().stop();
    // One of the two left is the most up to date (or both are): the other is refused.
    let promoted = nodes
        .keys()
        .copied()
        .find(|to| match tern::cluster::promote(cluster[&leader], Some("orders"), *to, false) {
            Ok(lines) => {
                eprintln!("{}", lines.join("\n"));
                assert!(lines.last().unwrap().contains(&format!("node {to} leads log orders in epoch")), "{lines:?}");
                true
            }
            Err(why) => {
                assert!(why.contains("is not the most up to date"), "{why}");
                false
            }
        })
        .expect("a replica promoted");
    let map = read_map_any(&cluster, &nodes).unwrap();
    assert_eq!(map.logs["orders"].leader, promoted);
    assert_eq!((map.logs[tern::cluster::ALL_LOGS].leader, map.logs[tern::cluster::ALL_LOGS].epoch), (leader, epoch));
    eventually("orders taken again", Duration::from_secs(20), || {
        append_to(&nodes[&promoted], "orders", "order 20").ok()
    });
    orders.push("order 20".into());
    assert_each_once(&committed_of(&nodes[&promoted], "orders"), &orders);
    // The other logs were not fenced: their leader still takes appends.
    append_to(&nodes[&leader], "events", "event").unwrap();
}

/// `tern promote --log` (without `--force`) of a replica while the log's leader lives and takes
/// appends is a planned move, as for every log: the leader stops taking that log's appends
/// (the other logs' go on) and waits until the target holds its every record, so the target is
/// elected though writes never stopped, and every acknowledged value is on it once.
#[test]
fn promoting_a_replica_of_a_log_placed_alone_drains_its_live_leader_first() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (_dirs, cluster, nodes) = three_nodes_timeout(Duration::from_secs(60));
    let (leader, _) = leader_of(&nodes, 0);
    let on = *nodes.keys().find(|id| **id != leader).unwrap();
    tern::cluster::handover(cluster[&leader], Some("orders"), on, Duration::from_secs(20)).unwrap();
    let to = *nodes.keys().find(|id| **id != leader && **id != on).unwrap();
    let (stop, count) = (AtomicBool::new(false), AtomicUsize::new(0));
    let (acked, promoted) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut acked = Vec::new();
            // Refused ("moved", or not leading any more) values are not acknowledged.
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let value = format!("order {i}");
                if append_to(&nodes[&on], "orders", &value).is_ok() {
                    acked.push(value);
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
            acked
        });
        eventually("orders taken", Duration::from_secs(20), || (count.load(Ordering::SeqCst) >= 50).then_some(()));
        let promoted = tern::cluster::promote(cluster[&leader], Some("orders"), to, false);
        stop.store(true, Ordering::SeqCst);
        (writer.join().unwrap(), promoted)
    });
    let lines = promoted.expect("the replica is promoted");
    eprintln!("{}", lines.join("\n"));
    let drained = format!("node {on} stopped taking appends; node {to} caught up in");
    assert!(lines.iter().any(|l| l.contains(&drained)), "the leader of orders drained first: {lines:?}");
    assert!(lines.last().unwrap().contains(&format!("node {to} leads log orders in epoch")), "{lines:?}");
    append_to(&nodes[&leader], "events", "event").expect("the other logs take appends");
    eventually("orders taken on the promoted node", Duration::from_secs(20), || {
        append_to(&nodes[&to], "orders", "after").ok()
    });
    let mut acked = acked;
    acked.push("after".into());
    assert_each_once(&committed_of(&nodes[&to], "orders"), &acked);
}

/// Asks, through the controller member at `contact`, that replica `leaving` leave every log
/// of placement `*` at `epoch`. The controller may be electing (a node stopped a moment ago
/// may have led it): the proposal is sent until one is taken.
fn ask_removal(client: &tern_controller::ControllerClient, contact: &str, epoch: u64, leaving: u64) {
    let remove = tern_controller::Command::RemoveReplica {
        log: tern::cluster::ALL_LOGS.into(),
        expected_epoch: epoch,
        node: leaving,
    };
    let reply =
        eventually("the removal asked", Duration::from_secs(10), || client.propose(contact, remove.clone()).ok());
    assert_eq!(reply, tern_controller::Reply::Done);
}

/// A replica being removed can still be elected leader (it may be the only one holding every
/// committed record), and a leader never takes itself out: `tern cluster remove-node` then
/// hands its logs over again, and the removal ends. Here the leaving replica is the most up to
/// date when its leader stops: the other follower was down while records were written.
#[test]
fn a_leaving_replica_elected_leader_is_handed_over_and_removed() {
    let OneDown { dirs, cluster, mut nodes, leader, epoch, down, leaving, mut acked } = one_down();
    acked.extend(append_many(&nodes[&leader], "while down", 200));
    let contact = tern::cluster::controller_addr(cluster[&leaving]).to_string();
    let client = tern_controller::ControllerClient::new(Duration::from_secs(3)).unwrap();
    ask_removal(&client, &contact, epoch, leaving);
    // The leader cannot take it out (the replica left besides itself is down); it stops, and
    // the more up to date of the two others is elected: the leaving one.
    nodes.remove(&leader).unwrap().stop();
    nodes.insert(down, start_node(dirs[down as usize - 1].path(), down, &cluster));
    let placement = eventually("the leaving replica elected", Duration::from_secs(30), || {
        let placement = client.read_map(&contact).ok()?.logs[tern::cluster::ALL_LOGS].clone();
        (placement.epoch > epoch).then_some(placement)
    });
    assert_eq!((placement.leader, placement.leaving), (leaving, Some(leaving)), "{placement:?}");
    // The replicas left must both be up to take it out.
    nodes.insert(leader, start_node(dirs[leader as usize - 1].path(), leader, &cluster));
    let said = tern::cluster::remove_node(cluster[&leaving], leaving, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("the removal of a leaving leader ends: {e}"));
    // Read through a node that stays: the one removed left the controller.
    let staying = tern::cluster::controller_addr(cluster[&down]).to_string();
    let map = eventually("the map after the removal", Duration::from_secs(10), || client.read_map(&staying).ok());
    let placement = map.logs[tern::cluster::ALL_LOGS].clone();
    let mut left = vec![leader, down];
    left.sort_unstable();
    assert_eq!(placement.replicas, left, "{said:?}");
    assert_ne!(placement.leader, leaving, "{said:?}");
    let after = vec!["after".to_owned()];
    let new_leader = &nodes[&placement.leader];
    eventually("an append after the removal", Duration::from_secs(10), || append(new_leader, &after).ok());
    acked.extend(after);
    assert_each_once(&committed(new_leader), &acked);
}
