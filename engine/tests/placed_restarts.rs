//! Restarts and pauses around a log placed alone (`tern handover --log orders`): `orders` has a
//! leader and epochs of its own, every other log (`events` here) is led under `*`.
//!
//! - The leader of `*` restarts, then the leader of `orders`: each comes back following, never
//!   leading a log whose placement names another node, and the other placement keeps its leader
//!   and epoch.
//! - `orders` fails over while its old leader is down, then the old leader restarts: it follows
//!   the new epoch, refuses every append meanwhile, and its copy converges.
//! - The leader of `orders` runs as a process and is paused (SIGSTOP) past the failure timeout:
//!   `orders` fails over and `*` is handed over meanwhile. Resumed, it acknowledges no append of
//!   its old epoch, and its copies of both logs converge.
//! - `orders` is handed over to a replica that is paused: the handover is given up for want of
//!   progress within a moment (its connection still open), and the leader goes on.
//!
//! In the last two, `*`'s epoch is first pushed past `orders`' (promotions of `*`, which fence
//! every replica at the node's level): the returning node's node-wide fence is then above the
//! epoch `orders` fails over to, and only the fence of `orders`' own keeps it taking that epoch.
//!
//! Every check is of what a user sees: every acknowledged value on the leaders once and in order,
//! nothing that was not sent, nothing written twice; the node the map names takes the appends;
//! a node of an epoch that is over acknowledges nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use tern::cluster::{ClusterNode, ALL_LOGS};
use tern_controller::{ClusterMap, LogMap};
use tern_replication::driver::{Client, Role};

/// The log placed alone.
const ORDERS: &str = "orders";
/// A log led under `*`.
const EVENTS: &str = "events";
/// The nodes' failure timeout.
const FAILURE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long any one state is waited for.
const WAIT: Duration = Duration::from_secs(20);

/// Held by each test for all of it: on a small machine, three clusters at once can starve a
/// leader's heartbeats past the 1 s failure timeout, and a failover nobody asked for would make
/// the checks of who leads meaningless.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_cluster_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A test that failed holding it leaves it poisoned; what it guards is gone with its drop.
    ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn start_node(dir: &Path, id: u64, cluster: &BTreeMap<u64, SocketAddr>) -> ClusterNode {
    let config = cluster_config(dir, id, cluster, FAILURE_TIMEOUT, None);
    ClusterNode::start(config, tern::Config::default()).expect("node starts")
}

/// What each test starts from: three nodes' directories and data addresses, the first of them
/// started in this process, and a [`Book`] of nothing sent yet.
struct Placed {
    dirs: Vec<tempfile::TempDir>,
    cluster: BTreeMap<u64, SocketAddr>,
    /// The nodes started in this process, by id.
    nodes: BTreeMap<u64, ClusterNode>,
    /// Every node's data address.
    all_contacts: Vec<SocketAddr>,
    /// The data addresses of the nodes started in this process.
    contacts: Vec<SocketAddr>,
    book: Book,
}

impl Placed {
    /// Nodes 1 to `in_process` started in this process (the test starts the others, if any).
    fn start(in_process: u64) -> Placed {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let cluster: BTreeMap<u64, SocketAddr> = (1..=3).map(|id| (id, address_pair())).collect();
        let nodes: BTreeMap<u64, ClusterNode> =
            (1..=in_process).map(|id| (id, start_node(dirs[id as usize - 1].path(), id, &cluster))).collect();
        let all_contacts = cluster.values().copied().collect();
        let contacts = nodes.keys().map(|id| cluster[id]).collect();
        Placed { dirs, cluster, nodes, all_contacts, contacts, book: Book::default() }
    }
}

/// Stops node `id` and starts it again in the same directory, at the same address.
fn restart(
    nodes: &mut BTreeMap<u64, ClusterNode>,
    dirs: &[tempfile::TempDir],
    cluster: &BTreeMap<u64, SocketAddr>,
    id: u64,
) {
    nodes.remove(&id).expect("the node runs").stop();
    nodes.insert(id, start_node(dirs[id as usize - 1].path(), id, cluster));
}

/// The cluster map, read at the controller's leader through the first of `contacts` that answers.
fn read_map(contacts: &[SocketAddr]) -> Option<ClusterMap> {
    let client = tern_controller::ControllerClient::new(Duration::from_secs(3)).ok()?;
    contacts.iter().find_map(|addr| client.read_map(&tern::cluster::controller_addr(*addr).to_string()).ok())
}

/// The placement that governs `log`: its own, or `*`'s (none before the first is made).
fn governing<'a>(map: &'a ClusterMap, log: &str) -> Option<&'a LogMap> {
    map.logs.get(log).or_else(|| map.logs.get(ALL_LOGS))
}

/// The values of `log` on the node at `addr` (committed ones only unless `uncommitted`); readers
/// never see the control record each new leader writes at the start of its epoch.
fn read_values(addr: SocketAddr, log: &str, uncommitted: bool) -> Option<Vec<String>> {
    let mut client = Client::connect_timeout(addr, Duration::from_secs(1)).ok()?;
    client.set_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut values = Vec::new();
    let mut next = 0;
    // Bounded: the tests write a few hundred records at most.
    for _ in 0..1_000 {
        let (start, _, records) = client.read_from(log, next, 10_000, uncommitted).ok()?;
        if records.is_empty() {
            return Some(values);
        }
        next = start + records.len() as u64;
        values.extend(records.into_iter().map(|r| String::from_utf8(r.to_vec()).expect("the tests write UTF-8")));
    }
    panic!("log {log} at {addr} did not end within 1000 reads");
}

/// What was sent to each log, and what was acknowledged, in order.
#[derive(Default)]
struct Book {
    sent: BTreeMap<String, BTreeSet<String>>,
    acked: BTreeMap<String, Vec<String>>,
    count: u64,
}

impl Book {
    /// Appends one value to `log` through the node the map names as its leader, with a quorum's
    /// acknowledgement; an attempt that fails is given up (its value is in doubt: it may be
    /// stored once) and the next one sends a new value, until one is acknowledged. `watch` runs
    /// before each attempt. Returns the leader that acknowledged.
    fn append(
        &mut self,
        contacts: &[SocketAddr],
        cluster: &BTreeMap<u64, SocketAddr>,
        log: &str,
        mut watch: impl FnMut(),
    ) -> u64 {
        wait_for(&format!("an append to {log} acknowledged"), || {
            watch();
            self.count += 1;
            let value = format!("{log} {}", self.count);
            self.sent.entry(log.to_owned()).or_default().insert(value.clone());
            let map = read_map(contacts).ok_or("no map read")?;
            let leader = governing(&map, log).ok_or("no placement yet")?.leader;
            let at = format!("node {leader}, which the map names");
            let mut client = Client::connect_timeout(cluster[&leader], Duration::from_secs(1))
                .and_then(|mut c| c.set_timeout(Some(Duration::from_secs(10))).map(|()| c))
                .map_err(|e| format!("{at}: {e}"))?;
            client.append(log, vec![bytes::Bytes::from(value.clone())], true).map_err(|e| format!("{at}: {e}"))?;
            self.acked.entry(log.to_owned()).or_default().push(value);
            Ok(leader)
        })
    }

    /// Appends `count` values to each of `logs` (see [`Book::append`]).
    fn append_each(
        &mut self,
        contacts: &[SocketAddr],
        cluster: &BTreeMap<u64, SocketAddr>,
        logs: &[&str],
        count: usize,
        mut watch: impl FnMut(),
    ) {
        for _ in 0..count {
            for log in logs {
                self.append(contacts, cluster, log, &mut watch);
            }
        }
    }

    /// Checks `values`, a copy of `log`: every acknowledged value is there once and in the order
    /// of its acknowledgement, no value is there twice, and every value there was sent.
    fn check(&self, log: &str, values: &[String], whose: &str) {
        let empty = BTreeSet::new();
        let sent = self.sent.get(log).unwrap_or(&empty);
        let acked = self.acked.get(log).map_or(&[][..], Vec::as_slice);
        let invented: Vec<&String> = values.iter().filter(|v| !sent.contains(*v)).take(3).collect();
        assert!(invented.is_empty(), "{whose} copy of {log} holds values never sent, e.g. {invented:?}");
        let mut seen = BTreeSet::new();
        let twice: Vec<&String> = values.iter().filter(|v| !seen.insert(v.as_str())).take(3).collect();
        assert!(twice.is_empty(), "{whose} copy of {log} holds values twice, e.g. {twice:?}");
        let acked_set: BTreeSet<&String> = acked.iter().collect();
        let kept: Vec<&String> = values.iter().filter(|v| acked_set.contains(v)).collect();
        let lost: Vec<&String> = acked.iter().filter(|v| !seen.contains(v.as_str())).take(3).collect();
        assert!(lost.is_empty(), "{whose} copy of {log} lost acknowledged values, e.g. {lost:?}");
        assert!(
            kept.iter().copied().eq(acked.iter()),
            "{whose} copy of {log} holds the acknowledged values out of order"
        );
    }

    /// Checks the committed copy of each of `logs` on the leader the map names (see
    /// [`Book::check`]).
    fn check_leaders(&self, contacts: &[SocketAddr], cluster: &BTreeMap<u64, SocketAddr>, logs: &[&str]) {
        for log in logs {
            let (leader, values) = eventually(&format!("the leader of {log} read"), WAIT, || {
                let leader = governing(&read_map(contacts)?, log)?.leader;
                Some((leader, read_values(cluster[&leader], log, false)?))
            });
            self.check(log, &values, &format!("leader {leader}'s"));
            eprintln!("log {log}: {} values acknowledged, all on leader {leader} once", self.acked[*log].len());
        }
    }
}

/// Retries `f` until it gives `Ok`, for at most [`WAIT`]; then fails with what it last said.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match f() {
            Ok(value) => return value,
            Err(last) => assert!(Instant::now() < deadline, "timed out waiting for {what}; last: {last}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether node `id`'s copy of `log` (uncommitted records too) is the committed copy of the
/// leader the map names; if not, how they differ.
fn converged(contacts: &[SocketAddr], cluster: &BTreeMap<u64, SocketAddr>, id: u64, log: &str) -> Result<(), String> {
    let map = read_map(contacts).ok_or("no map read")?;
    let leader = governing(&map, log).ok_or("no placement yet")?.leader;
    let on_leader = read_values(cluster[&leader], log, false).ok_or(format!("leader {leader} not read"))?;
    let here = match leader == id {
        true => on_leader.clone(),
        false => read_values(cluster[&id], log, true).ok_or(format!("node {id} not read"))?,
    };
    if here == on_leader {
        return Ok(());
    }
    let at = here.iter().zip(&on_leader).take_while(|(a, b)| a == b).count();
    Err(format!(
        "node {id} holds {} values, leader {leader} {}; from index {at}: {:?} against {:?}",
        here.len(),
        on_leader.len(),
        here.get(at),
        on_leader.get(at)
    ))
}

/// What node `id` leads that the map does not name it to lead: a log its server leads whose
/// placement is not one the node runs as leader, or a placement it runs as leader in an epoch
/// the map gave another node.
fn leads_unmapped(id: u64, node: &ClusterNode, contacts: &[SocketAddr]) -> Option<String> {
    let led: Vec<String> =
        node.with_server(|s| s.metrics().logs.into_iter().filter(|l| l.role == Role::Leader).map(|l| l.log).collect())?;
    let roles = node.roles();
    if led.is_empty() && roles.values().all(|(role, _)| *role != Role::Leader) {
        return None;
    }
    let map = read_map(contacts)?;
    for log in &led {
        let name = if map.logs.contains_key(log) { log.as_str() } else { ALL_LOGS };
        if roles.get(name).is_none_or(|(role, _)| *role != Role::Leader) {
            return Some(format!("its server leads log {log}, whose placement {name} it does not lead ({roles:?})"));
        }
    }
    for (name, (role, epoch)) in &roles {
        let Some(placement) = map.logs.get(name) else { continue };
        // A map that moved past the epoch the node leads is one it has not seen yet.
        if *role == Role::Leader && placement.epoch == *epoch && placement.leader != id {
            return Some(format!("it leads {name} in epoch {epoch}, which the map gave node {}", placement.leader));
        }
        if *role == Role::Leader && placement.epoch < *epoch {
            return Some(format!("it leads {name} in epoch {epoch}, which the map never issued ({})", placement.epoch));
        }
    }
    None
}

/// Fails when node `id` leads what the map does not name it to lead, for longer than the
/// moment a node takes to follow a map that changed as it was read.
fn assert_leads_only_as_mapped(id: u64, node: &ClusterNode, contacts: &[SocketAddr]) {
    let Some(mut seen) = leads_unmapped(id, node, contacts) else { return };
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        match leads_unmapped(id, node, contacts) {
            None => return,
            Some(again) => seen = again,
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("node {id} leads what the map does not name it to lead: {seen}");
}

/// Fails when `values` holds any of `refused` (appends no node acknowledged, sent to a node of
/// an epoch that is over).
fn assert_absent(refused: &[String], values: &[String], whose: &str) {
    let stored: Vec<&String> = values.iter().filter(|v| refused.contains(v)).collect();
    assert!(stored.is_empty(), "{whose} holds values sent to a node of an epoch that is over: {stored:?}");
}

/// The state file of the node whose engine directory is `dir`: its fences, and whom it follows
/// on each log.
fn node_state(dir: &Path) -> tern_replication::node_state::NodeState {
    let path = dir.join(tern_replication::node_state::NODE_STATE_FILE);
    tern_replication::node_state::NodeState::load(&tern_segment::OsDisk::new(), &path).expect("the node state reads")
}

/// Waits for the first leader of `*`, appends to both logs through it, places `orders` alone on
/// `orders_on` (another node than `*`'s leader) or on the first node that is not `*`'s leader,
/// and waits until it takes appends there: `(leader of *, leader of orders)`.
fn place_orders(
    contacts: &[SocketAddr],
    cluster: &BTreeMap<u64, SocketAddr>,
    orders_on: Option<u64>,
    book: &mut Book,
) -> (u64, u64) {
    book.append_each(contacts, cluster, &[ORDERS, EVENTS], 5, || ());
    let all = governing(&read_map(contacts).expect("the map reads"), EVENTS).expect("every log led").leader;
    let target = orders_on.unwrap_or_else(|| *cluster.keys().find(|id| **id != all).unwrap());
    assert_ne!(target, all, "orders is placed on another node than the leader of every other log");
    let lines = tern::cluster::handover(cluster[&all], Some(ORDERS), target, WAIT).expect("orders placed alone");
    eprintln!("{}", lines.join("\n"));
    book.append_each(contacts, cluster, &[ORDERS, EVENTS], 5, || ());
    let map = read_map(contacts).unwrap();
    assert_eq!((map.logs[ORDERS].leader, map.logs[ALL_LOGS].leader), (target, all));
    (all, target)
}

/// Promotes `*` (`tern promote --all`) back and forth between the nodes other than `keep_off`
/// until its epoch is above `above`: each promotion fences every replica of `*` at the node's
/// level, `keep_off` too (which follows `*`), but not `orders` anywhere. Writes to `events`
/// after each. Returns `*`'s epoch.
///
/// # Panics
/// After 10 promotions (each moves `*` one epoch on).
fn push_all_past(
    contacts: &[SocketAddr],
    cluster: &BTreeMap<u64, SocketAddr>,
    keep_off: u64,
    above: u64,
    book: &mut Book,
) -> u64 {
    for _ in 0..10 {
        let map = read_map(contacts).expect("the map reads");
        let all = &map.logs[ALL_LOGS];
        if all.epoch > above {
            return all.epoch;
        }
        let to = *cluster.keys().find(|id| **id != keep_off && **id != all.leader).unwrap();
        let lines = tern::cluster::promote(cluster[&all.leader], None, to, false).expect("* promoted");
        eprintln!("{}", lines.join("\n"));
        book.append(contacts, cluster, EVENTS, || ());
    }
    panic!("* is not above epoch {above} after 10 promotions");
}

/// The leader of `*` restarts, then the leader of `orders`. Each comes back following every
/// log, and never leads a log whose placement names another node; the other placement keeps
/// its leader and epoch through the restart; both logs take appends through the leaders the
/// map names; every acknowledged value is on the leaders once, and the restarted node's copies
/// converge with theirs.
#[test]
fn restarting_either_leader_leaves_each_log_with_the_leader_its_placement_names() {
    let _one = one_cluster_at_a_time();
    let started = Instant::now();
    let Placed { dirs, cluster, mut nodes, all_contacts, mut book, .. } = Placed::start(3);
    place_orders(&all_contacts, &cluster, None, &mut book);
    book.append_each(&all_contacts, &cluster, &[ORDERS, EVENTS], 10, || ());

    for (placement, other) in [(ALL_LOGS, ORDERS), (ORDERS, ALL_LOGS)] {
        let mut before = read_map(&all_contacts).unwrap();
        let restarted = before.logs[placement].leader;
        if before.logs[other].leader == restarted {
            // `*` failed over to the leader of orders: it is moved off, so that one placement
            // is led elsewhere while the other's leader restarts.
            let to = *cluster.keys().find(|id| **id != restarted).unwrap();
            let lines = tern::cluster::handover(cluster[&restarted], None, to, WAIT).expect("* handed over");
            eprintln!("{}", lines.join("\n"));
            before = read_map(&all_contacts).unwrap();
        }
        let kept = (before.logs[other].leader, before.logs[other].epoch);
        eprintln!("restarting node {restarted}; {other} is led by node {} in epoch {}", kept.0, kept.1);
        restart(&mut nodes, &dirs, &cluster, restarted);
        let watch = || assert_leads_only_as_mapped(restarted, &nodes[&restarted], &all_contacts);
        book.append_each(&all_contacts, &cluster, &[ORDERS, EVENTS], 5, watch);
        for log in [ORDERS, EVENTS] {
            wait_for(&format!("node {restarted}'s copy of {log} to converge"), || {
                watch();
                converged(&all_contacts, &cluster, restarted, log)
            });
        }
        let after = read_map(&all_contacts).unwrap();
        assert_eq!(
            (after.logs[other].leader, after.logs[other].epoch),
            kept,
            "{other} kept its leader and epoch while node {restarted} restarted"
        );
        eprintln!(
            "node {restarted} back; {placement} led by node {} in epoch {}",
            after.logs[placement].leader, after.logs[placement].epoch
        );
        book.check_leaders(&all_contacts, &cluster, &[ORDERS, EVENTS]);
    }
    eprintln!("took {} ms", started.elapsed().as_millis());
}

/// `orders` fails over while its leader is down; the old leader restarts. Its node-wide fence
/// (from promotions of `*`) is above `orders`' new epoch. It comes back following `orders` in
/// the new epoch, refuses every append to it meanwhile (none is acknowledged, none is stored
/// anywhere), and its copy converges with the new leader's; every acknowledged value is on the
/// leaders once.
#[test]
fn an_old_leader_of_a_placed_log_restarted_after_its_failover_follows_the_new_epoch() {
    let _one = one_cluster_at_a_time();
    let started = Instant::now();
    let Placed { dirs, cluster, mut nodes, all_contacts, mut book, .. } = Placed::start(3);
    let (_, old) = place_orders(&all_contacts, &cluster, None, &mut book);
    let old_epoch = read_map(&all_contacts).unwrap().logs[ORDERS].epoch;
    let all_epoch = push_all_past(&all_contacts, &cluster, old, old_epoch + 1, &mut book);
    book.append_each(&all_contacts, &cluster, &[ORDERS, EVENTS], 10, || ());
    let fence = nodes[&old].with_server(|s| s.fence_epoch()).unwrap();
    assert!(fence > old_epoch + 1, "node {old}'s fence {fence} is above the epoch orders fails over to");
    eprintln!("orders in epoch {old_epoch} on node {old}; * in epoch {all_epoch}; node {old} fenced at {fence}");

    nodes.remove(&old).unwrap().stop();
    let others: Vec<SocketAddr> = nodes.keys().map(|id| cluster[id]).collect();
    let (new, new_epoch) = eventually("orders failed over", WAIT, || {
        let placement = read_map(&others)?.logs.remove(ORDERS)?;
        (placement.epoch > old_epoch).then_some((placement.leader, placement.epoch))
    });
    assert_ne!(new, old);
    book.append_each(&others, &cluster, &[ORDERS, EVENTS], 5, || ());

    nodes.insert(old, start_node(dirs[old as usize - 1].path(), old, &cluster));
    // From the moment it is back, appends to it are refused (each with a value of its own), until
    // it names the new leader and epoch in its refusal.
    let mut refused = Vec::new();
    let why = wait_for(&format!("node {old} to follow orders in epoch {new_epoch}"), || {
        assert_leads_only_as_mapped(old, &nodes[&old], &all_contacts);
        let value = format!("stale {}", refused.len());
        let mut client = Client::connect_timeout(cluster[&old], Duration::from_secs(1))
            .and_then(|mut c| c.set_timeout(Some(Duration::from_secs(10))).map(|()| c))
            .map_err(|e| e.to_string())?;
        let answer = client.append(ORDERS, vec![bytes::Bytes::from(value.clone())], true);
        refused.push(value.clone());
        let why = answer.err().unwrap_or_else(|| panic!("node {old} acknowledged {value:?} to orders")).to_string();
        let follows = why.contains(&format!("follower of node {new}")) && why.contains(&format!("(epoch {new_epoch})"));
        let role = nodes[&old].roles().get(ORDERS).copied();
        match follows && role == Some((Role::Follower, 0)) {
            true => Ok(why),
            false => Err(format!("role {role:?}, refused with: {why}")),
        }
    });
    eprintln!("{} appends to node {old} refused; the last: {why}", refused.len());
    let kept = node_state(dirs[old as usize - 1].path());
    assert_eq!(kept.leader(ORDERS), Some((new_epoch, new)), "node {old} keeps whom it follows on orders");
    assert!(kept.fence_of(ORDERS) <= new_epoch, "node {old}'s fence of orders lets the new epoch in");

    let watch = || assert_leads_only_as_mapped(old, &nodes[&old], &all_contacts);
    book.append_each(&all_contacts, &cluster, &[ORDERS, EVENTS], 5, watch);
    for log in [ORDERS, EVENTS] {
        wait_for(&format!("node {old}'s copy of {log} to converge"), || {
            watch();
            converged(&all_contacts, &cluster, old, log)
        });
    }
    let on_new = read_values(cluster[&new], ORDERS, false).unwrap();
    let here = read_values(cluster[&old], ORDERS, true).unwrap();
    assert_absent(&refused, &on_new, &format!("leader {new}'s copy of orders"));
    assert_absent(&refused, &here, &format!("node {old}'s copy of orders"));
    book.check_leaders(&all_contacts, &cluster, &[ORDERS, EVENTS]);
    book.check(ORDERS, &here, &format!("node {old}'s"));
    let map = read_map(&all_contacts).unwrap();
    assert_eq!((map.logs[ORDERS].leader, map.logs[ORDERS].epoch), (new, new_epoch), "orders did not move again");
    eprintln!("took {} ms", started.elapsed().as_millis());
}

/// `tern serve --cluster` as a child process, so that it can be paused; killed when dropped,
/// its lines printed if the test is failing.
struct Process {
    child: std::process::Child,
    lines: std::path::PathBuf,
}

impl Process {
    fn start(dir: &Path, id: u64, cluster: &BTreeMap<u64, SocketAddr>) -> Process {
        use std::os::unix::process::CommandExt;
        let spec: Vec<String> = cluster.iter().map(|(id, addr)| format!("{id}={addr}")).collect();
        let lines = dir.join("serve.log");
        let log = std::fs::File::create(&lines).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tern"));
        command
            .args(["serve", "--dir"])
            .arg(dir.join("data"))
            .args(["--listen", &cluster[&id].to_string(), "--node-id", &id.to_string()])
            .args(["--cluster", &spec.join(","), "--failure-timeout-ms"])
            .arg(FAILURE_TIMEOUT.as_millis().to_string());
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent. A test killed
        // before its drop runs takes the node with it.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.stdout(std::process::Stdio::null()).stderr(log).spawn().expect("spawn tern serve");
        Process { child, lines }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: a signal to the child this test spawned, not yet waited for.
        let sent = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(sent, 0, "signal {signal} sent");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("the paused node said:\n{}", std::fs::read_to_string(&self.lines).unwrap_or_default());
        }
    }
}

/// A node's status document.
fn status(addr: SocketAddr) -> Option<serde_json::Value> {
    let mut client = Client::connect_timeout(addr, Duration::from_millis(500)).ok()?;
    client.set_timeout(Some(Duration::from_millis(500))).ok()?;
    serde_json::from_str(&client.status().ok()?).ok()
}

/// The leader of `orders` (node 3, a process) is paused past the failure timeout with appends
/// of its old epoch waiting on its socket. Its node-wide fence is above `orders`' next epoch
/// (promotions of `*` first). Meanwhile `orders` fails over and `*` is handed over, both taking
/// appends. Resumed, the old leader acknowledges none of the appends sent to it, follows both
/// placements' new leaders, and its copies converge: whatever it wrote alone in its old epoch is
/// cut, and every acknowledged value is on the leaders once.
#[test]
fn a_paused_leader_of_a_placed_log_resumes_acknowledging_nothing_and_converges() {
    let _one = one_cluster_at_a_time();
    let started = Instant::now();
    // `contacts` are never the paused node: a read of the map through it would wait for it.
    let Placed { dirs, cluster, nodes, all_contacts, contacts, mut book } = Placed::start(2);
    let paused = 3;
    let process = Process::start(dirs[2].path(), paused, &cluster);
    let (_, orders) = place_orders(&all_contacts, &cluster, Some(paused), &mut book);
    assert_eq!(orders, paused);
    let old_epoch = read_map(&contacts).unwrap().logs[ORDERS].epoch;
    let all_epoch = push_all_past(&contacts, &cluster, paused, old_epoch + 1, &mut book);
    book.append_each(&contacts, &cluster, &[ORDERS, EVENTS], 10, || ());
    let fence = node_state(&dirs[2].path().join("data")).fence_epoch;
    assert!(fence > old_epoch + 1, "node {paused}'s fence {fence} is above the epoch orders fails over to");
    eprintln!("orders in epoch {old_epoch} on node {paused}; * in epoch {all_epoch}; node {paused} fenced at {fence}");

    process.signal(libc::SIGSTOP);
    let paused_at = Instant::now();
    let (new, new_epoch) = eventually("orders failed over", WAIT, || {
        let placement = read_map(&contacts)?.logs.remove(ORDERS)?;
        (placement.epoch > old_epoch).then_some((placement.leader, placement.epoch))
    });
    assert_ne!(new, paused);
    let map = read_map(&contacts).unwrap();
    let (all_from, all_to) =
        (map.logs[ALL_LOGS].leader, *nodes.keys().find(|id| **id != map.logs[ALL_LOGS].leader).unwrap());
    let lines = tern::cluster::handover(cluster[&all_from], None, all_to, WAIT).expect("* handed over");
    eprintln!("{}", lines.join("\n"));
    book.append_each(&contacts, &cluster, &[ORDERS, EVENTS], 5, || ());
    let map = read_map(&contacts).unwrap();
    assert!(map.logs[ALL_LOGS].epoch > new_epoch, "* ({}) is ahead of orders ({new_epoch})", map.logs[ALL_LOGS].epoch);

    // Appends of the old epoch wait on the paused node's socket; each must fail once it runs.
    let zombie_values: Vec<String> = (0..3).map(|i| format!("stale {i}")).collect();
    let answers: Vec<Result<(u64, u64, u8), String>> = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting: Vec<_> = zombie_values
            .iter()
            .map(|value| {
                let tx = tx.clone();
                let addr = cluster[&paused];
                s.spawn(move || {
                    // The kernel completes the connection of a paused process.
                    let mut client =
                        Client::connect_timeout(addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
                    client.set_timeout(Some(Duration::from_secs(15))).map_err(|e| e.to_string())?;
                    let _ = tx.send(());
                    client.append(ORDERS, vec![bytes::Bytes::from(value.clone())], true).map_err(|e| e.to_string())
                })
            })
            .collect();
        for _ in &waiting {
            rx.recv_timeout(WAIT).expect("connected to the paused node");
        }
        process.signal(libc::SIGCONT);
        eprintln!("node {paused} resumed after {} ms", paused_at.elapsed().as_millis());
        waiting.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for (value, answer) in zombie_values.iter().zip(&answers) {
        match answer {
            Ok(offsets) => {
                panic!("node {paused}, resumed, acknowledged {value:?} at {offsets:?} in an epoch that is over")
            }
            Err(why) => eprintln!("{value:?} refused: {why}"),
        }
    }

    eventually("the resumed node follows orders in its new epoch", WAIT, || {
        let doc = status(cluster[&paused])?;
        let placed = &doc["cluster"]["placed"][ORDERS];
        let role = doc["logs"].as_array()?.iter().find(|l| l["log"] == ORDERS)?["role"].clone();
        (role == "follower" && placed["leader"] == new && placed["epoch"] == new_epoch).then_some(())
    });
    book.append_each(&contacts, &cluster, &[ORDERS, EVENTS], 5, || ());
    for log in [ORDERS, EVENTS] {
        wait_for(&format!("node {paused}'s copy of {log} to converge"), || converged(&contacts, &cluster, paused, log));
    }
    let on_new = read_values(cluster[&new], ORDERS, false).unwrap();
    let here = read_values(cluster[&paused], ORDERS, true).unwrap();
    assert_absent(&zombie_values, &on_new, &format!("leader {new}'s copy of orders"));
    assert_absent(&zombie_values, &here, &format!("node {paused}'s copy of orders"));
    book.check_leaders(&contacts, &cluster, &[ORDERS, EVENTS]);
    book.check(ORDERS, &here, &format!("node {paused}'s"));
    let doc = status(cluster[&paused]).unwrap();
    let cut = doc["logs"].as_array().unwrap().iter().find(|l| l["log"] == ORDERS).map(|l| l["records_cut"].clone());
    eprintln!("node {paused} cut {cut:?} records of orders; took {} ms", started.elapsed().as_millis());
}

/// A handover of `orders` to a replica that is paused (SIGSTOP: the kernel keeps its connections
/// open, and it acknowledges nothing) is given up for want of progress within a moment, not
/// after the silence that drops its connection (3 s) nor the handover's timeout (5 s), appends
/// being refused meanwhile: the error says the target was connected and took nothing in, the
/// leader of `orders` takes appends again in the same epoch, and the resumed node converges.
#[test]
fn a_handover_to_a_paused_replica_is_given_up_for_want_of_progress() {
    let _one = one_cluster_at_a_time();
    let Placed { dirs, cluster, nodes, all_contacts, contacts, mut book } = Placed::start(2);
    let paused = 3;
    // Started once the others have a controller leader: paused, it does not hold the
    // controller up (the commands below would wait out its election, and the 3 s of silence
    // that drop its connections would pass first).
    eventually("a controller leader among nodes 1 and 2", WAIT, || read_map(&contacts));
    let process = Process::start(dirs[2].path(), paused, &cluster);
    book.append_each(&all_contacts, &cluster, &[EVENTS], 1, || ());
    let all = governing(&read_map(&contacts).unwrap(), EVENTS).unwrap().leader;
    assert_ne!(all, paused, "the lowest ids lead first");
    let orders_on = *nodes.keys().find(|id| **id != all).unwrap();
    let (_, leader) = place_orders(&all_contacts, &cluster, Some(orders_on), &mut book);
    let epoch = read_map(&contacts).unwrap().logs[ORDERS].epoch;
    wait_for(&format!("node {paused}'s copy of orders to converge"), || converged(&contacts, &cluster, paused, ORDERS));
    // Paused once the leader of orders ships to it: the connection then stays (a dial to a
    // paused node never completes its handshake, and the node would count as not connected).
    eventually(&format!("node {leader} to ship orders to node {paused}"), WAIT, || {
        let doc = status(cluster[&leader])?;
        let orders = doc["logs"].as_array()?.iter().find(|l| l["log"] == ORDERS)?.clone();
        let peers = orders["peers"].as_array()?;
        peers.iter().any(|p| p["node"] == paused && p["connected"] == true).then_some(())
    });

    process.signal(libc::SIGSTOP);
    // Behind by these, which the paused node never acknowledges.
    book.append_each(&contacts, &cluster, &[ORDERS], 5, || ());
    let err = tern::cluster::handover(cluster[&leader], Some(ORDERS), paused, WAIT).unwrap_err();
    assert!(err.contains("given up") && err.contains("made no progress") && err.contains("(connected"), "{err}");
    let map = read_map(&contacts).unwrap();
    assert_eq!((map.logs[ORDERS].leader, map.logs[ORDERS].epoch), (leader, epoch), "orders keeps its leader");
    assert!(!nodes[&leader].with_server(|s| s.handing_over()).unwrap(), "appends are taken again");
    book.append_each(&contacts, &cluster, &[ORDERS], 5, || ());

    process.signal(libc::SIGCONT);
    wait_for(&format!("node {paused}'s copy of orders to converge"), || converged(&contacts, &cluster, paused, ORDERS));
    book.check_leaders(&contacts, &cluster, &[ORDERS, EVENTS]);
}
