//! Leaders per log: one node leads some logs and follows others, and the leadership of one log
//! moves while the others go on being written.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tern_replication::driver::{Client, Lead, Role, Server};
use tern_replication::message::Acks;
use tern_replication::proto::Quorum;

/// Every record of `log` on `server`'s node, committed or not, by offset.
fn records(server: &Server, log: &str) -> Vec<Vec<u8>> {
    let mut client = Client::connect(server.local_addr()).unwrap();
    let (_, _, records) = client.read_from(log, 0, 100_000, true).unwrap();
    records.into_iter().map(|r| r.to_vec()).collect()
}

/// Three nodes started as followers, in one cluster.
fn three_followers(dirs: &[tempfile::TempDir]) -> Vec<Server> {
    (0..3)
        .map(|i| {
            let id = i as u64 + 1;
            start(dirs[i].path(), tern::Config::default(), config(0x5eed, id, Role::Follower, vec![], any_port()))
        })
        .collect()
}

/// How node `i` of `nodes` leads a log in `epoch`, with the two others as its followers.
fn lead(nodes: &[Server], i: usize, epoch: u64) -> Lead {
    let peers = (0..nodes.len()).filter(|j| *j != i).map(|j| (j as u64 + 1, nodes[j].local_addr())).collect();
    Lead { epoch: Some(epoch), peers, learners: Vec::new(), quorum: Quorum::Count(2), handing_over_to: None }
}

/// Stops the writer threads when the test ends, also by a panic.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Node 1 leads `orders` and node 2 leads `events`, at once, each committing on a quorum of
/// the three nodes. `orders` is then handed over to node 3 (its appends refused, node 3 caught
/// up, node 1 following, node 3 leading the next epoch) while `events` is written without a
/// pause: no append to `events` fails, its leader keeps its epoch, and every node ends with the
/// same records of both logs, each once.
#[test]
fn each_log_has_its_own_leader_and_one_moves_while_the_others_are_written() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = three_followers(&dirs);
    nodes[0].set_role("orders", Some(lead(&nodes, 0, 1))).unwrap();
    nodes[1].set_role("events", Some(lead(&nodes, 1, 1))).unwrap();
    for i in 0..10 {
        nodes[0].append("orders", &[format!("order {i}").as_bytes()], Acks::Quorum).unwrap();
        nodes[1].append("events", &[format!("event {i}").as_bytes()], Acks::Quorum).unwrap();
    }
    // Each log's followers refuse its appends, naming its leader.
    let refused = nodes[1].append("orders", &[b"to a follower"], Acks::Quorum).unwrap_err().to_string();
    assert!(refused.contains("follower of node 1 (which connected from 127.0.0.1) on log orders"), "{refused}");
    let refused = nodes[0].append("events", &[b"to a follower"], Acks::Quorum).unwrap_err().to_string();
    assert!(refused.contains("follower of node 2 (which connected from 127.0.0.1) on log events"), "{refused}");

    // A producer of events, through the network client, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_writer = StopOnDrop(stop.clone());
    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, acked, addr) = (stop.clone(), acked.clone(), nodes[1].local_addr());
        std::thread::spawn(move || {
            let mut client = Client::connect(addr).unwrap();
            let mut failures = Vec::new();
            let mut i = 10;
            while !stop.load(Ordering::SeqCst) {
                let value = format!("event {i}");
                match client.append_acks("events", vec![value.into()], Acks::Quorum) {
                    Ok(_) => {
                        acked.fetch_add(1, Ordering::SeqCst);
                        i += 1;
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (i, failures)
        })
    };
    eventually("events written meanwhile", Duration::from_secs(10), || {
        (acked.load(Ordering::SeqCst) >= 20).then_some(())
    });

    // orders moves from node 1 to node 3.
    let before = acked.load(Ordering::SeqCst);
    nodes[0].hand_over_log("orders", Some(3)).unwrap();
    let moved = nodes[0].append("orders", &[b"while handing over"], Acks::Quorum).unwrap_err().to_string();
    assert!(moved.starts_with(tern_replication::driver::MOVED_PREFIX), "{moved}");
    eventually("node 3 holds every order", Duration::from_secs(10), || {
        nodes[0].caught_up_on("orders", 3).then_some(())
    });
    nodes[0].set_role("orders", None).unwrap();
    nodes[2].set_role("orders", Some(lead(&nodes, 2, 2))).unwrap();
    let receipt = nodes[2].append("orders", &[b"order 10"], Acks::Quorum).unwrap();
    assert_eq!((receipt.start, receipt.end), (10, 11), "after every order node 1 wrote");
    let refused = nodes[0].append("orders", &[b"to the old leader"], Acks::Quorum).unwrap_err().to_string();
    assert!(refused.contains("not the leader"), "{refused}");
    eventually("events written after the move", Duration::from_secs(10), || {
        (acked.load(Ordering::SeqCst) >= before + 20).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    let (next, failures) = writer.join().unwrap();
    assert!(failures.is_empty(), "appends to events failed while orders moved: {failures:?}");

    let orders: Vec<Vec<u8>> = (0..11).map(|i| format!("order {i}").into_bytes()).collect();
    let events: Vec<Vec<u8>> = (0..next).map(|i| format!("event {i}").into_bytes()).collect();
    for node in &nodes {
        eventually("every node holds both logs", Duration::from_secs(20), || {
            (records(node, "orders") == orders && records(node, "events") == events).then_some(())
        });
    }
    let roles = |node: &Server| {
        node.metrics().logs.iter().map(|l| (l.log.clone(), l.role)).collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(roles(&nodes[0])["orders"], Role::Follower);
    assert_eq!(roles(&nodes[1])["events"], Role::Leader);
    assert_eq!(roles(&nodes[2])["orders"], Role::Leader);
}

/// A log fenced alone stops its old leader committing through the fenced nodes, and only that
/// log: another log led by the same node goes on committing through them.
#[test]
fn a_log_fenced_alone_stops_its_leader_and_no_other_log() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = three_followers(&dirs);
    nodes[0].set_role("orders", Some(lead(&nodes, 0, 1))).unwrap();
    nodes[0].set_role("events", Some(lead(&nodes, 0, 1))).unwrap();
    nodes[0].append("orders", &[b"order 0"], Acks::Quorum).unwrap();
    nodes[0].append("events", &[b"event 0"], Acks::Quorum).unwrap();
    let reports: Vec<_> = nodes[1..].iter().map(|node| node.fence_log("orders", 5).unwrap()).collect();
    assert!(reports.iter().all(|r| r.log == "orders" && r.durable_end <= 1), "{reports:?}");
    // The committed record is on a quorum: on one of the two followers at least.
    assert!(reports.iter().any(|r| r.durable_end == 1), "{reports:?}");
    let refused = nodes[0].append("orders", &[b"after the fence"], Acks::Quorum);
    assert!(refused.is_err(), "the old leader committed through fenced followers: {refused:?}");
    nodes[0].append("events", &[b"event 1"], Acks::Quorum).unwrap();
    // A log led here is not fenced.
    assert!(nodes[0].fence_log("events", 5).is_err());
    // The node's fence leaves a log fenced alone as it is, and fences the others.
    let reports = nodes[2].fence(3).unwrap();
    assert_eq!(reports.iter().map(|r| r.log.as_str()).collect::<Vec<_>>(), ["events"]);
}

/// The node's role covers every log without a role of its own, logs created later too; a log
/// with a role of its own keeps it when the node's role changes. Node 1 leads every log but
/// `orders`, which node 3 leads; every log but `orders` then moves to node 2, and `orders`
/// goes on being written on node 3 in the same epoch.
#[test]
fn a_log_with_a_role_of_its_own_keeps_it_when_the_node_s_role_changes() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = three_followers(&dirs);
    nodes[0].set_role("orders", None).unwrap();
    nodes[0].set_default_role(Some(lead(&nodes, 0, 1))).unwrap();
    nodes[2].set_role("orders", Some(lead(&nodes, 2, 1))).unwrap();
    for i in 0..5 {
        nodes[0].append("events", &[format!("event {i}").as_bytes()], Acks::Quorum).unwrap();
        nodes[2].append("orders", &[format!("order {i}").as_bytes()], Acks::Quorum).unwrap();
    }
    // Created after the node's role was set: led by node 1 too.
    nodes[0].append("audit", &[b"audit 0"], Acks::Quorum).unwrap();
    assert_eq!(log_metrics(&nodes[0], "orders").role, Role::Follower);

    nodes[0].hand_over(Some(2)).unwrap();
    eventually("node 2 holds every log node 1 leads", Duration::from_secs(10), || nodes[0].caught_up(2).then_some(()));
    nodes[0].set_default_role(None).unwrap();
    nodes[1].set_role("orders", None).unwrap();
    nodes[1].set_default_role(Some(lead(&nodes, 1, 2))).unwrap();
    assert_eq!(nodes[1].append("events", &[b"event 5"], Acks::Quorum).unwrap().start, 5);
    assert_eq!(nodes[1].append("audit", &[b"audit 1"], Acks::Quorum).unwrap().start, 1);
    assert_eq!(nodes[2].append("orders", &[b"order 5"], Acks::Quorum).unwrap().start, 5);
    assert!(nodes[0].append("events", &[b"to the old leader"], Acks::Quorum).is_err());
    assert_eq!(log_metrics(&nodes[2], "orders").role, Role::Leader);
    for node in &nodes {
        eventually("every node holds every log", Duration::from_secs(20), || {
            let held = records(node, "orders").len() == 6 && records(node, "events").len() == 6;
            (held && records(node, "audit").len() == 2).then_some(())
        });
    }
}
