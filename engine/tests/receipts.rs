//! Durability receipts, watermarks and metrics of a three-node cluster in this process: every
//! acknowledgement says what it achieved, each log's three watermarks say what every ack
//! promised, and a reader sees committed records unless it asks for more.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tern_replication::driver::{Client, LogMetrics, Role, Server, ServerConfig};
use tern_replication::message::Acks;

mod common;
use common::any_port;

const LOG: &str = "events";

fn node(dir: &Path, id: u64, role: Role, peers: Vec<(u64, SocketAddr)>, listen: SocketAddr) -> Server {
    node_with(dir, id, role, peers, listen, Some(256 << 20))
}

fn node_with(
    dir: &Path,
    id: u64,
    role: Role,
    peers: Vec<(u64, SocketAddr)>,
    listen: SocketAddr,
    quorum_lag_bytes_max: Option<u64>,
) -> Server {
    let config = ServerConfig {
        commit_timeout: Duration::from_millis(500),
        quorum_lag_bytes_max,
        ..common::config(0x5ec, id, role, peers, listen)
    };
    common::start(dir, tern::Config::default(), config)
}

/// Waits up to 10 s.
fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    common::eventually(what, Duration::from_secs(10), f)
}

fn log_metrics(server: &Server) -> LogMetrics {
    common::log_metrics(server, LOG)
}

fn records(n: usize, tag: &str) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(format!("{tag}-{i}"))).collect()
}

#[test]
fn receipts_say_what_was_achieved_and_watermarks_what_was_promised() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let f2 = node(dirs[1].path(), 2, Role::Follower, vec![], any_port());
    let f3 = node(dirs[2].path(), 3, Role::Follower, vec![], any_port());
    let f3_addr = f3.local_addr();
    let leader = node(dirs[0].path(), 1, Role::Leader, vec![(2, f2.local_addr()), (3, f3_addr)], any_port());
    let mut client = Client::connect(leader.local_addr()).unwrap();

    // Quorum: synced on at least two of three nodes.
    let r = client.append_acks(LOG, records(10, "q"), Acks::Quorum).unwrap();
    assert_eq!((r.start, r.end, r.durability, r.nodes), (0, 10, Acks::Quorum, 3));
    assert!(r.copies >= 2, "a quorum receipt names at least two copies: {r:?}");
    let m = log_metrics(&leader);
    assert!(m.commit_end >= 10 && m.durable_end >= m.commit_end && m.written_end >= m.durable_end, "{m:?}");

    // Leader: synced here; the receipt reports quorum only if the commit point already passed.
    let r = client.append_acks(LOG, records(5, "l"), Acks::Leader).unwrap();
    assert!(r.durability >= Acks::Leader && r.copies >= 1, "{r:?}");
    assert!(log_metrics(&leader).durable_end >= 15);

    // Written: acknowledged before any sync, and synced soon after by the node itself.
    let r = client.append_acks(LOG, records(5, "w"), Acks::Written).unwrap();
    assert_eq!((r.start, r.end), (15, 20));
    assert!(r.durability >= Acks::Written, "{r:?}");
    eventually("the written-only batch to be synced and committed", || {
        let m = log_metrics(&leader);
        (m.durable_end >= 20 && m.commit_end >= 20).then_some(())
    });

    // Followers: fsync-batched apply, counted.
    eventually("both followers to report their syncs", || {
        let (a, b) = (log_metrics(&f2), log_metrics(&f3));
        (a.records_synced >= 20 && b.records_synced >= 20).then_some(())
    });
    let m = log_metrics(&f2);
    assert!(m.follower_syncs >= 1 && m.chunks_applied >= 1 && m.bytes_applied > 0, "{m:?}");
    for f in [&f2, &f3] {
        assert_eq!(log_metrics(f).records_cut, 0, "a follower of a leader that never restarted cut records");
    }
    let peers = log_metrics(&leader).peers;
    assert_eq!(peers.len(), 2);
    for p in &peers {
        assert!(p.shipped_raw_bytes > 0 && p.shipped_wire_bytes > 0 && p.chunks_shipped >= 1, "{p:?}");
    }

    // With both followers gone, a leader-acked batch is on the leader's disk but not committed:
    // a committed read stops before it, an uncommitted one sees it, a quorum append fails.
    f2.stop();
    f3.stop();
    let r = client.append_acks(LOG, records(3, "alone"), Acks::Leader).unwrap();
    assert_eq!((r.start, r.end, r.durability, r.copies, r.nodes), (20, 23, Acks::Leader, 1, 3));
    let err = client.append_acks(LOG, records(1, "refused"), Acks::Quorum).unwrap_err();
    assert!(err.to_string().contains("not yet on a quorum"), "{err}");
    let (_, commit, committed) = client.read_from(LOG, 0, 1000, false).unwrap();
    assert_eq!((commit, committed.len()), (20, 20), "committed reads stop at the commit point");
    let (_, _, all) = client.read_from(LOG, 0, 1000, true).unwrap();
    assert_eq!(all.len(), 24, "uncommitted reads see everything the leader holds");
    assert_eq!(all[22], Bytes::from("alone-2"));
    let m = log_metrics(&leader);
    assert_eq!((m.written_end, m.durable_end, m.commit_end), (24, 24, 20));
    for p in &m.peers {
        assert!(!p.connected && p.lag_records == 4 && p.lag_bytes > 0, "{p:?}");
    }
    // The lag in time is the age of the oldest record a follower lacks: it grows while they are
    // away.
    eventually("the followers' lag in time to grow", || {
        log_metrics(&leader).peers.iter().all(|p| (20..60_000).contains(&p.lag_ms)).then_some(())
    });

    // A follower that comes back catches up, and the commit point passes everything.
    let f3 = node(dirs[2].path(), 3, Role::Follower, vec![], f3_addr);
    eventually("the commit point to pass the records written while alone", || {
        (log_metrics(&leader).commit_end >= 24).then_some(())
    });
    let p = log_metrics(&leader).peers.into_iter().find(|p| p.node == 3).unwrap();
    assert_eq!((p.lag_records, p.lag_bytes, p.lag_ms), (0, 0, 0), "{p:?}");
    leader.stop();
    f3.stop();
}

#[test]
fn producers_wait_when_the_quorum_falls_behind_the_bound_and_go_on_once_it_catches_up() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let bound = 256 << 10;
    let f2 = node_with(dirs[1].path(), 2, Role::Follower, vec![], any_port(), Some(bound));
    let f3 = node_with(dirs[2].path(), 3, Role::Follower, vec![], any_port(), Some(bound));
    let f2_addr = f2.local_addr();
    let peers = vec![(2, f2_addr), (3, f3.local_addr())];
    let leader = node_with(dirs[0].path(), 1, Role::Leader, peers, any_port(), Some(bound));
    let mut client = Client::connect(leader.local_addr()).unwrap();
    let batch = || vec![Bytes::from(vec![7u8; 16 << 10])];
    client.append_acks(LOG, batch(), Acks::Quorum).unwrap();
    // No quorum: leader-acked appends go on until the uncommitted bytes pass the bound, then
    // wait and are refused, naming the bound.
    f2.stop();
    f3.stop();
    let mut accepted = 0u64;
    let refused = loop {
        match client.append_acks(LOG, batch(), Acks::Leader) {
            Ok(_) => accepted += 16 << 10,
            Err(e) => break e.to_string(),
        }
        assert!(accepted < 1 << 20, "appends went on far past the bound");
    };
    assert!(refused.contains("not yet on a quorum (the bound is 262144)"), "{refused}");
    // The lag is counted to the sparse index's precision (64 KiB by default).
    assert!(accepted + (64 << 10) >= bound, "refused well before the bound: {accepted} bytes accepted");
    // A quorum again (leader and node 2): the backlog commits and appends go on.
    let _f2 = node_with(dirs[1].path(), 2, Role::Follower, vec![], f2_addr, Some(bound));
    let r = eventually("appends to be accepted again", || client.append_acks(LOG, batch(), Acks::Quorum).ok());
    assert_eq!(r.durability, Acks::Quorum);
}

#[test]
fn a_stopped_node_lets_go_of_its_directory_at_once() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20 {
        let node = node(dir.path(), 1, Role::Leader, vec![], any_port());
        // A client connection is open while the node stops: its thread must have let go of
        // the engine by the time `stop` returns.
        let mut client = Client::connect(node.local_addr()).unwrap();
        client.append_acks(LOG, records(1, "r"), Acks::Leader).unwrap();
        node.stop();
        let engine = tern::Engine::open(dir.path(), tern::Config::default());
        assert!(engine.is_ok(), "round {round}: the directory is still held: {:?}", engine.err());
    }
}
