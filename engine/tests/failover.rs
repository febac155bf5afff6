//! Moving a cluster's leadership: fenced followers, a leader of an epoch the controller issued.

mod common;

use std::time::Duration;

use common::*;
use tern_replication::driver::{Role, Server};
use tern_replication::message::Acks;

/// Every record of `log` on `server`'s node, committed or not, by offset.
fn records(server: &Server, log: &str) -> Vec<Vec<u8>> {
    let mut client = tern_replication::driver::Client::connect(server.local_addr()).unwrap();
    let (_, _, records) = client.read_from(log, 0, 10_000, true).unwrap();
    records.into_iter().map(|r| r.to_vec()).collect()
}

/// Once a quorum of followers is fenced at a new epoch, the old leader (alive: a zombie, or
/// cut off from the controller) commits nothing more; the follower elected from the reports
/// leads the new epoch and the other fenced follower takes it, keeping everything committed.
#[test]
fn a_fenced_quorum_commits_nothing_for_the_old_leader_and_follows_the_elected_one() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cluster = 0x5eed;
    let follower = |i: usize, id: u64| {
        start(dirs[i].path(), tern::Config::default(), config(cluster, id, Role::Follower, vec![], any_port()))
    };
    let (two, three) = (follower(1, 2), follower(2, 3));
    let peers = vec![(2, two.local_addr()), (3, three.local_addr())];
    let old = start(dirs[0].path(), tern::Config::default(), config(cluster, 1, Role::Leader, peers, any_port()));
    for i in 0..20 {
        old.append("orders", &[format!("committed {i}").as_bytes()], Acks::Quorum).unwrap();
    }
    let reports = [two.fence(10).unwrap(), three.fence(10).unwrap()];
    for report in &reports {
        assert_eq!(report.len(), 1);
        assert!(report[0].durable_end >= 1, "{report:?}");
    }
    let refused = old.append("orders", &[b"after the fence"], Acks::Quorum);
    assert!(refused.is_err(), "the old leader committed through fenced followers: {refused:?}");
    // Node 2 holds every committed record (20): it is elected, and leads epoch 10.
    assert!(reports[0][0].durable_end >= 20);
    two.stop();
    let mut config2 = config(cluster, 2, Role::Leader, vec![(3, three.local_addr())], any_port());
    config2.leader_epoch = Some(10);
    let two = start(dirs[1].path(), tern::Config::default(), config2);
    let receipt = two.append("orders", &[b"new leader"], Acks::Quorum).unwrap();
    assert_eq!((receipt.start, receipt.end), (20, 21), "after every committed record");
    let want: Vec<Vec<u8>> =
        (0..20).map(|i| format!("committed {i}").into_bytes()).chain([b"new leader".to_vec()]).collect();
    eventually("node 3 follows the new leader", Duration::from_secs(20), || {
        (records(&three, "orders") == want).then_some(())
    });
    assert_eq!(records(&two, "orders"), want);
    // The old leader still cannot commit: node 3 follows epoch 10 now.
    assert!(old.append("orders", &[b"zombie"], Acks::Quorum).is_err());
    assert_eq!(three.fence_epoch(), 10);
}

/// A leader may not begin an epoch its log has reached already: that epoch has a leader.
#[test]
fn a_leader_epoch_not_above_the_log_s_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader_config = config(1, 1, Role::Leader, vec![], any_port());
    leader_config.quorum = tern_replication::proto::Quorum::Count(1);
    leader_config.leader_epoch = Some(5);
    let leader = start(dir.path(), tern::Config::default(), leader_config.clone());
    leader.append("orders", &[b"a"], Acks::Leader).unwrap();
    leader.stop();
    let engine = std::sync::Arc::new(tern::Engine::open(dir.path(), tern::Config::default()).unwrap());
    let err = Server::start(leader_config, std::sync::Arc::new(tern::EngineLogs(engine))).err().expect("refused");
    assert!(err.to_string().contains("cannot lead it in epoch 5"), "{err}");
}

/// The gate of a handover: once `Server::hand_over` returns, nothing more is written to any
/// log, however many appends race with it (clients writing through the client loop, one at a
/// time and in batches). Repeated many times to catch a write that checked the gate before it
/// closed and landed after.
#[test]
fn once_a_handover_gate_is_closed_nothing_more_is_written() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (leader, _follower) = leader_and_follower(&dirs, 0x5a7e);
    let addr = leader.local_addr();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for w in 0..8 {
            let stop = &stop;
            s.spawn(move || {
                let mut client = tern_replication::driver::Client::connect(addr).unwrap();
                let records: Vec<bytes::Bytes> = (0..1 + w % 3).map(|_| bytes::Bytes::from_static(b"r")).collect();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = client.append_acks("gate", records.clone(), Acks::Written);
                }
            });
        }
        // The writers stop however this ends (a failed check too).
        struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _stop = StopOnDrop(&stop);
        eventually("appends land", Duration::from_secs(10), || (wrote(&leader) > 100).then_some(()));
        for round in 0..300 {
            leader.hand_over(Some(2)).unwrap();
            let closed_at = wrote(&leader);
            std::thread::sleep(Duration::from_micros(500));
            let later = wrote(&leader);
            assert_eq!(later, closed_at, "round {round}: written after the gate closed");
            leader.hand_over(None).unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
    });
}

/// Records written to the leader's log `gate`.
fn wrote(leader: &Server) -> u64 {
    leader.metrics().logs.iter().find(|l| l.log == "gate").map_or(0, |l| l.written_end)
}

/// A leader started in the middle of a handover (`ServerConfig::handing_over_to`: a restart
/// while the map says its handover is under way) refuses its very first append, naming the
/// target, and nothing is written; it takes appends once the handover is given up.
#[test]
fn a_leader_started_mid_handover_refuses_from_its_first_append() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let follower =
        start(dirs[1].path(), tern::Config::default(), config(0x5a7f, 2, Role::Follower, vec![], any_port()));
    let mut leader_config = config(0x5a7f, 1, Role::Leader, vec![(2, follower.local_addr())], any_port());
    leader_config.handing_over_to = Some(2);
    let leader = start(dirs[0].path(), tern::Config::default(), leader_config);
    assert!(leader.handing_over());
    let mut client = tern_replication::driver::Client::connect(leader.local_addr()).unwrap();
    let refused = client.append_acks("gate", vec![bytes::Bytes::from_static(b"r")], Acks::Written).unwrap_err();
    let moved = tern_replication::driver::moved_to(&refused.to_string());
    assert_eq!(moved, Some(follower.local_addr()), "{refused}");
    assert_eq!(wrote(&leader), 0);
    leader.hand_over(None).unwrap();
    client.append_acks("gate", vec![bytes::Bytes::from_static(b"r")], Acks::Written).unwrap();
    assert_eq!(wrote(&leader), 1);
}
