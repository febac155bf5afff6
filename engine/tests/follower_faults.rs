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

/// Engine settings for a node on a SimDisk: no journal, no O_DIRECT, no io_uring.
fn on_sim_disk() -> tern::Config {
    tern::Config { journal: false, direct_writes: tern::DirectWrites::Off, io_uring: false, ..tern::Config::default() }
}

/// With a quorum of both nodes, a follower whose fsync fails stops every commit until it is
/// back: it must come back by itself.
#[test]
fn a_follower_whose_sync_failed_reopens_its_log_and_catches_up() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let disk = SimDisk::new();
    let config = on_sim_disk();
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
    let config = on_sim_disk();
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

/// A follower applies nothing stamped with a later epoch than the leader that sent it: a chunk
/// whose batch says epoch 2, shipped in epoch 1, is refused and the log stays as it was (the
/// driver decodes chunks with `chunk_frames_within`, not only the codec's own test).
#[test]
fn a_follower_refuses_a_chunk_holding_a_later_epoch_than_its_sender() {
    use tern_replication::message::{Message, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};

    // A batch of epoch 2, read from a log of its own as a leader's shipper would.
    let source_dir = tempfile::tempdir().unwrap();
    let source = Engine::open(source_dir.path(), tern::Config::default()).unwrap();
    let log = source.log(LOG).unwrap();
    log.begin_epoch(2).unwrap();
    log.append(&[b"stamped by a later leader".as_slice()], tern::Durability::Local).unwrap();
    let chunk = tern_replication::driver::read_chunk(&log, 0, 1 << 20, &tern_replication::codec::Compression::OFF)
        .unwrap()
        .expect("a chunk");

    let dir = tempfile::tempdir().unwrap();
    let follower =
        common::start(dir.path(), tern::Config::default(), common::config(0xf9, 2, Role::Follower, vec![], any_port()));
    let mut leader = std::net::TcpStream::connect(follower.local_addr()).unwrap();
    leader.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let hello = Message::Hello {
        cluster_id: 0xf9,
        node_id: 1,
        version_min: PROTOCOL_VERSION_MIN,
        version_max: PROTOCOL_VERSION_MAX,
        logs: Vec::new(),
    };
    common::write_message(&mut leader, &hello).unwrap();
    assert!(matches!(common::read_message(&mut leader).unwrap(), Message::Welcome { .. }));
    // Check the (new, empty) log for epoch 1, then ship the chunk in epoch 1.
    let check = Message::Truncate { log: LOG.into(), epoch: 1, to: 0, written_end: 0, last_epoch: 0, matched_epoch: 0 };
    common::write_message(&mut leader, &check).unwrap();
    let checked = common::read_message(&mut leader).unwrap();
    assert!(matches!(checked, Message::Ack { epoch: 1, written_end: 0, .. }), "{checked:?}");
    let append = Message::Append { log: LOG.into(), epoch: 1, commit_end: 0, chunk };
    common::write_message(&mut leader, &append).unwrap();
    // Its answer (an ack, at once or with the next heartbeat's) never says the record was taken.
    let heartbeat = Message::Heartbeat { epoch: 1, logs: vec![(LOG.into(), 1, 0)] };
    common::write_message(&mut leader, &heartbeat).unwrap();
    let answer = common::read_message(&mut leader).unwrap();
    assert!(
        matches!(answer, Message::Ack { written_end: 0, .. }),
        "the follower took a later epoch's batch: {answer:?}"
    );
    assert_eq!(common::log_metrics(&follower, LOG).written_end, 0);
}
