//! A follower whose disk fails: it reports the fault, reopens the log from its files after a
//! backoff (recovery cuts it back to what was durable) and fetches the rest from its leader.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tern::Engine;
use tern_replication::driver::{Client, Role, Server, ServerConfig};
use tern_replication::message::Acks;
use tern_segment::sim::{FaultOp, SimDisk};

mod common;
use common::any_port;

const LOG: &str = "orders";

fn records(tag: &str) -> Vec<Bytes> {
    (0..5).map(|i| Bytes::from(format!("{tag}-{i}"))).collect()
}

/// With a quorum of both nodes, a follower whose fsync fails stops every commit until it is
/// back: it must come back by itself.
#[test]
fn a_follower_whose_sync_failed_reopens_its_log_and_catches_up() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let disk = SimDisk::new();
    let config = tern::Config {
        journal: false,
        direct_writes: tern::DirectWrites::Off,
        io_uring: false,
        ..tern::Config::default()
    };
    let engine = Arc::new(Engine::open_with_disk(dirs[1].path(), config.clone(), Arc::new(disk.clone())).unwrap());
    let follower =
        Server::start(common::config(0xf7, 2, Role::Follower, vec![], any_port()), Arc::new(tern::EngineLogs(engine)))
            .unwrap();
    let leader_config = ServerConfig {
        commit_timeout: Duration::from_secs(3),
        ..common::config(0xf7, 1, Role::Leader, vec![(2, follower.local_addr())], any_port())
    };
    let leader = common::start(dirs[0].path(), tern::Config::default(), leader_config);
    let mut client = Client::connect(leader.local_addr()).unwrap();
    let mut acked = Vec::new();
    for b in 0..5 {
        let batch = records(&format!("before-{b}"));
        client.append_acks(LOG, batch.clone(), Acks::Quorum).unwrap();
        acked.extend(batch);
    }
    disk.fail_next(FaultOp::Sync, libc::EIO);
    // The append whose follower sync fails is not committed; the follower reopens its log and
    // catches up, and appends commit again.
    let at = leader.local_addr();
    let during = std::thread::spawn(move || {
        let _ = Client::connect(at).unwrap().append_acks(LOG, records("during"), Acks::Quorum);
    });
    // The fault is reported in the follower's status while it lasts.
    let fault = common::eventually("the follower to report its disk fault", Duration::from_secs(10), || {
        common::log_metrics(&follower, LOG).disk_fault
    });
    assert!(fault.contains("reopened from its files"), "{fault}");
    during.join().unwrap();
    let batch = records("after");
    common::eventually("a quorum append after the follower's fault", Duration::from_secs(20), || {
        client.append_acks(LOG, batch.clone(), Acks::Quorum).ok()
    });
    acked.extend(batch);
    let metrics = common::log_metrics(&follower, LOG);
    assert_eq!(metrics.disk_fault, None, "the fault is over");
    assert!(metrics.reopens >= 1, "the log was reopened");
    // The quorum counted the follower's copy: it must survive a power loss there. (A log
    // reopened from what reads return after a failed fsync took pages the kernel had dropped
    // for durable; the records written after them were then lost at the power loss.)
    follower.stop();
    disk.crash(tern_segment::sim::Tear::None);
    let engine = Engine::open_with_disk(dirs[1].path(), config, Arc::new(disk.clone())).unwrap();
    let log = engine.existing_log(LOG).unwrap();
    let held: Vec<Bytes> = log.read(0, tern::Visibility::Written).unwrap().map(|r| r.unwrap().value).collect();
    assert!(held.len() >= acked.len(), "{} records after the power loss", held.len());
    let wanted: Vec<&Bytes> = held.iter().filter(|r| !r.starts_with(b"during")).take(acked.len()).collect();
    assert_eq!(wanted, acked.iter().collect::<Vec<_>>(), "every acknowledged record survives the power loss");
}

/// A leader whose fsync fails acknowledges nothing it did not sync: the append waiting for that
/// sync is refused, so is every later one to that log, and its status says why.
#[test]
fn a_leader_whose_sync_failed_acknowledges_nothing_more_and_says_so() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let follower = common::start(
        dirs[1].path(),
        tern::Config::default(),
        common::config(0xf8, 2, Role::Follower, vec![], any_port()),
    );
    let disk = SimDisk::new();
    let config = tern::Config {
        journal: false,
        direct_writes: tern::DirectWrites::Off,
        io_uring: false,
        ..tern::Config::default()
    };
    let engine = Arc::new(Engine::open_with_disk(dirs[0].path(), config, Arc::new(disk.clone())).unwrap());
    let leader_config = common::config(0xf8, 1, Role::Leader, vec![(2, follower.local_addr())], any_port());
    let leader = Server::start(leader_config, Arc::new(tern::EngineLogs(engine))).unwrap();
    let mut client = Client::connect(leader.local_addr()).unwrap();
    client.append_acks(LOG, records("before"), Acks::Quorum).unwrap();
    disk.fail_next(FaultOp::Sync, libc::EIO);
    let failed = client.append_acks(LOG, records("during"), Acks::Leader);
    assert!(failed.is_err(), "an append whose sync failed was acknowledged: {failed:?}");
    let after = client.append_acks(LOG, records("after"), Acks::Leader);
    assert!(after.is_err(), "a fenced log took an append: {after:?}");
    let metrics = common::log_metrics(&leader, LOG);
    let fault = metrics.disk_fault.unwrap_or_default();
    assert!(fault.contains("takes no appends until the node restarts"), "status says: {fault:?}");
    assert_eq!(metrics.commit_end, 5, "nothing past what was synced is committed");
}
