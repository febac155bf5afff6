//! A program that embeds the engine a leader serves: what it appends in-process is replicated
//! like a network client's appends, and it can learn what an append achieved without polling.

use std::sync::Arc;
use std::time::Duration;

use tern::{Durability, Engine};
use tern_replication::driver::{Client, Role, Server};
use tern_replication::message::Acks;

mod common;
use common::any_port;

/// A follower, and a leader serving `engine`, with quorum 2 of 2.
fn cluster(dirs: &[tempfile::TempDir]) -> (Arc<Engine>, Server, Server) {
    let follower = common::start(
        dirs[1].path(),
        tern::Config::default(),
        common::config(0xe1, 2, Role::Follower, vec![], any_port()),
    );
    let engine = Arc::new(Engine::open(dirs[0].path(), tern::Config::default()).unwrap());
    let config = common::config(0xe1, 1, Role::Leader, vec![(2, follower.local_addr())], any_port());
    let leader = Server::start(config, Arc::new(tern::EngineLogs(engine.clone()))).unwrap();
    (engine, leader, follower)
}

fn committed_on(node: &Server, log: &str) -> Vec<Vec<u8>> {
    let Ok(mut client) = Client::connect(node.local_addr()) else { return Vec::new() };
    client.read(log, 0, 1000).map(|(_, _, records)| records.iter().map(|r| r.to_vec()).collect()).unwrap_or_default()
}

/// Records appended straight to the engine's logs (one that existed when the node started,
/// one created after) are shipped and committed, without any network client appending.
#[test]
fn records_appended_to_the_engine_directly_are_replicated() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    {
        let engine = Engine::open(dirs[0].path(), tern::Config::default()).unwrap();
        engine.log("existing").unwrap();
    }
    let (engine, leader, follower) = cluster(&dirs);
    for log in ["existing", "created-later"] {
        engine.log(log).unwrap().append(&[b"one", b"two"], Durability::Local).unwrap();
        common::eventually(&format!("{log:?} committed"), Duration::from_secs(10), || {
            (leader.commit_end(log) >= 2).then_some(())
        });
        let want = vec![b"one".to_vec(), b"two".to_vec()];
        common::eventually(&format!("{log:?} on the follower"), Duration::from_secs(10), || {
            (committed_on(&follower, log) == want).then_some(())
        });
    }
}

/// `Server::append` acknowledges at the level asked, with a receipt, as a network append does;
/// `Server::wait_committed` waits for the commit point.
#[test]
fn an_in_process_append_gets_a_receipt_and_the_commit_point_can_be_awaited() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (engine, leader, _follower) = cluster(&dirs);
    let r = leader.append("orders", &[b"a".as_slice(), b"b"], Acks::Quorum).unwrap();
    assert_eq!((r.start, r.end, r.durability, r.copies, r.nodes), (0, 2, Acks::Quorum, 2, 2), "{r}");
    let r = leader.append("orders", &[b"c".as_slice()], Acks::Written).unwrap();
    assert_eq!((r.start, r.end), (2, 3));
    assert_eq!(leader.wait_committed("orders", 3, Duration::from_secs(10)).unwrap(), 3);
    engine.log("orders").unwrap().append(&[b"d"], Durability::None).unwrap();
    assert!(leader.wait_committed("orders", 4, Duration::from_secs(10)).unwrap() >= 4);
    let err = leader.wait_committed("orders", 100, Duration::from_millis(50)).unwrap_err();
    assert!(err.to_string().contains("not reached"), "{err}");
}
