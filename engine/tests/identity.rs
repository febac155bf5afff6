//! Node identity: a follower reached under two ids is one copy, not two.

use std::time::Duration;

use bytes::Bytes;
use tern_replication::driver::{Client, Role, ServerConfig};
use tern_replication::message::Acks;
use tern_replication::proto::Quorum;

mod common;
use common::any_port;

/// The leader is told that nodes 2 and 3 are at the same address, where node 2 runs. Node 2
/// answers both connections as itself: the leader must count it once, so a quorum of all three
/// nodes is never reached, and the status shows node 3 as not connected.
#[test]
fn one_follower_configured_under_two_ids_is_counted_once() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let follower = common::start(
        dirs[1].path(),
        tern::Config::default(),
        common::config(0x1d, 2, Role::Follower, vec![], any_port()),
    );
    let at = follower.local_addr();
    let config = ServerConfig {
        quorum: Quorum::All,
        commit_timeout: Duration::from_secs(2),
        ..common::config(0x1d, 1, Role::Leader, vec![(2, at), (3, at)], any_port())
    };
    let leader = common::start(dirs[0].path(), tern::Config::default(), config);
    let mut client = Client::connect(leader.local_addr()).unwrap();
    let result = client.append_acks("orders", vec![Bytes::from_static(b"one")], Acks::Quorum);
    assert!(result.is_err(), "a quorum of 3 nodes from two machines: {result:?}");
    let m = common::log_metrics(&leader, "orders");
    let peer = |node: u64| m.peers.iter().find(|p| p.node == node).copied();
    assert!(peer(2).is_some_and(|p| p.connected), "{m:?}");
    assert!(peer(3).is_none_or(|p| !p.connected), "node 2 counted as node 3: {m:?}");
}

/// A follower refuses a client's append and names the node it follows.
#[test]
fn a_follower_refuses_appends_naming_its_leader() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let follower = common::start(
        dirs[1].path(),
        tern::Config::default(),
        common::config(0x1d, 2, Role::Follower, vec![], any_port()),
    );
    let leader = common::start(
        dirs[0].path(),
        tern::Config::default(),
        common::config(0x1d, 1, Role::Leader, vec![(2, follower.local_addr())], any_port()),
    );
    let mut client = Client::connect(leader.local_addr()).unwrap();
    client.append_acks("orders", vec![Bytes::from_static(b"one")], Acks::Quorum).unwrap();
    let mut client = Client::connect(follower.local_addr()).unwrap();
    let err = client.append_acks("orders", vec![Bytes::from_static(b"two")], Acks::Written).unwrap_err();
    assert!(err.to_string().contains("follower of node 1 (which connected from 127.0.0.1)"), "{err}");
}
