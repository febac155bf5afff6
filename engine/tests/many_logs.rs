//! Several logs replicated at once over the same connections: each keeps its own records, in
//! the order and at the offsets their receipts named, on every node.

use std::time::Duration;

use bytes::Bytes;
use tern_replication::driver::{Client, Role, Server, ServerConfig};
use tern_replication::message::Acks;
use tern_replication::proto::Quorum;

mod common;
use common::any_port;

const LOGS: [&str; 4] = ["orders", "payments", "audit", "events"];

/// A leader (node 1, `dirs[0]`) and followers 2 and 3, in cluster `cluster_id`, committing at
/// `quorum`: `(leader, followers)`.
fn three_nodes(dirs: &[tempfile::TempDir], cluster_id: u64, quorum: Quorum) -> (Server, Vec<Server>) {
    let followers: Vec<Server> = (2..=3)
        .map(|id| {
            let config = common::config(cluster_id, id, Role::Follower, vec![], any_port());
            common::start(dirs[id as usize - 1].path(), tern::Config::default(), config)
        })
        .collect();
    let peers = vec![(2, followers[0].local_addr()), (3, followers[1].local_addr())];
    // The first appends wait for the followers' handshakes: on a loaded machine that took longer
    // than the tests' usual 1 s commit timeout, and this test is about placement, not timing.
    let config = ServerConfig {
        quorum,
        commit_timeout: Duration::from_secs(20),
        ..common::config(cluster_id, 1, Role::Leader, peers, any_port())
    };
    (common::start(dirs[0].path(), tern::Config::default(), config), followers)
}

#[test]
fn concurrent_appends_to_several_logs_land_on_every_node_as_their_receipts_say() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (leader, followers) = three_nodes(&dirs, 0x10, Quorum::Count(2));
    let at = leader.local_addr();
    // Each writer appends to every log in turn, so every connection carries all of them.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            std::thread::spawn(move || {
                let mut client = Client::connect(at).unwrap();
                let mut placed: Vec<(&str, u64, Vec<Bytes>)> = Vec::new();
                for round in 0..25 {
                    let log = LOGS[(w + round) % LOGS.len()];
                    let batch: Vec<Bytes> =
                        (0..1 + round % 3).map(|i| Bytes::from(format!("{log}-w{w}-r{round}-{i}"))).collect();
                    let receipt = client.append_acks(log, batch.clone(), Acks::Quorum).unwrap();
                    assert_eq!(receipt.end - receipt.start, batch.len() as u64);
                    placed.push((log, receipt.start, batch));
                }
                placed
            })
        })
        .collect();
    let placed: Vec<(&str, u64, Vec<Bytes>)> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    for log in LOGS {
        let mut expected: Vec<(u64, Bytes)> = placed
            .iter()
            .filter(|(l, _, _)| *l == log)
            .flat_map(|(_, start, batch)| batch.iter().cloned().enumerate().map(move |(i, r)| (start + i as u64, r)))
            .collect();
        expected.sort();
        let records: Vec<Bytes> = expected.iter().map(|(_, r)| r.clone()).collect();
        assert!(expected.iter().enumerate().all(|(i, (offset, _))| *offset == i as u64), "log {log}: dense offsets");
        for node in std::iter::once(&leader).chain(&followers) {
            let addr = node.local_addr();
            common::eventually(&format!("log {log} on {addr}"), Duration::from_secs(20), || {
                let (_, _, held) = Client::connect(addr).unwrap().read_from(log, 0, 1000, true).ok()?;
                (held == records).then_some(())
            });
        }
    }
}

/// Two followers at the same place get the same chunk, read and compressed once.
#[test]
fn a_chunk_two_followers_need_from_the_same_offset_is_built_once() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (leader, _followers) = three_nodes(&dirs, 0x11, Quorum::All);
    let mut client = Client::connect(leader.local_addr()).unwrap();
    for i in 0..20 {
        client.append_acks("orders", vec![Bytes::from(format!("r{i}"))], Acks::Quorum).unwrap();
    }
    let metrics = common::log_metrics(&leader, "orders");
    let shipped: u64 = metrics.peers.iter().map(|p| p.chunks_shipped).sum();
    assert!(
        metrics.chunks_built < shipped,
        "{} chunks built for {shipped} shipped: none was shared",
        metrics.chunks_built
    );
}
