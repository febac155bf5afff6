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
    let (leader, follower) = common::leader_and_follower(&dirs, 0x1d);
    let mut client = Client::connect(leader.local_addr()).unwrap();
    client.append_acks("orders", vec![Bytes::from_static(b"one")], Acks::Quorum).unwrap();
    let mut client = Client::connect(follower.local_addr()).unwrap();
    let err = client.append_acks("orders", vec![Bytes::from_static(b"two")], Acks::Written).unwrap_err();
    assert!(err.to_string().contains("follower of node 1 (which connected from 127.0.0.1)"), "{err}");
}

/// Nodes started without a cluster id: the first leader makes a random one and its follower
/// takes it, both keep it. A new leader started elsewhere (a new cluster, with an id of its
/// own) and pointed at that follower is refused: it never takes, or cuts, anything there.
#[test]
fn a_leader_of_another_cluster_is_refused_by_a_follower_that_joined_one() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let follower_config = || common::config(0, 2, Role::Follower, vec![], any_port());
    let follower = common::start(dirs[1].path(), tern::Config::default(), follower_config());
    let at = follower.local_addr();
    let first = common::start(
        dirs[0].path(),
        tern::Config::default(),
        common::config(0, 1, Role::Leader, vec![(2, at)], any_port()),
    );
    let mut client = Client::connect(first.local_addr()).unwrap();
    let records: Vec<Bytes> = ["a", "b", "c"].iter().map(|r| Bytes::from_static(r.as_bytes())).collect();
    client.append_acks("orders", records, Acks::Quorum).unwrap();
    first.stop();
    let kept = tern_replication::node_state::NodeState::load(
        &tern_segment::OsDisk::new(),
        &dirs[1].path().join(tern_replication::node_state::NODE_STATE_FILE),
    )
    .unwrap();
    assert_ne!(kept.cluster_id, 0, "the follower keeps the cluster it joined");
    assert_eq!(kept.leader("orders").map(|(_, leader)| leader), Some(1), "and whom it follows");

    // Restarted, the follower still belongs to the first cluster.
    follower.stop();
    let follower =
        common::start(dirs[1].path(), tern::Config::default(), ServerConfig { listen: at, ..follower_config() });
    let other = common::start(
        dirs[2].path(),
        tern::Config::default(),
        ServerConfig {
            commit_timeout: Duration::from_millis(500),
            ..common::config(0, 1, Role::Leader, vec![(2, at)], any_port())
        },
    );
    let mut client = Client::connect(other.local_addr()).unwrap();
    assert!(client.append_acks("orders", vec![Bytes::from_static(b"x")], Acks::Quorum).is_err());
    std::thread::sleep(Duration::from_millis(300));
    let m = common::log_metrics(&other, "orders");
    assert!(m.peers.iter().all(|p| !p.connected), "the follower took a leader of another cluster: {m:?}");
    let (_, _, records) = Client::connect(follower.local_addr()).unwrap().read_from("orders", 0, 10, true).unwrap();
    assert_eq!(records.len(), 3, "the follower's records are untouched");
}

/// A leader whose disk was replaced comes back empty under the same node id and cluster, and
/// its follower holds the log it lost. It must not lead that log as if it were its own (a cut
/// to the follower's end cut nothing, and its new records landed on the foreign prefix): it
/// refuses, says why, and the follower's records stay as they were.
#[test]
fn a_leader_that_lost_its_disk_refuses_to_lead_over_a_follower_holding_more() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let follower = common::start(
        dirs[1].path(),
        tern::Config::default(),
        common::config(0x4d, 2, Role::Follower, vec![], any_port()),
    );
    let at = follower.local_addr();
    let leader_config = || ServerConfig {
        // The refusal comes with the follower's first acks; a loaded machine may take a while.
        commit_timeout: Duration::from_secs(20),
        ..common::config(0x4d, 1, Role::Leader, vec![(2, at)], any_port())
    };
    let first = common::start(dirs[0].path(), tern::Config::default(), leader_config());
    let records: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("r{i}"))).collect();
    Client::connect(first.local_addr()).unwrap().append_acks("orders", records.clone(), Acks::Quorum).unwrap();
    first.stop();
    let replaced = common::start(dirs[2].path(), tern::Config::default(), leader_config());
    let mut client = Client::connect(replaced.local_addr()).unwrap();
    let err = client.append_acks("orders", vec![Bytes::from_static(b"new")], Acks::Quorum).unwrap_err();
    assert!(err.to_string().contains("refusing to lead log orders: node 2 holds records"), "{err}");
    let status = common::log_metrics(&replaced, "orders").not_leading.unwrap_or_default();
    assert!(status.contains("refusing to lead log orders"), "status says: {status:?}");
    let (_, _, held) = Client::connect(at).unwrap().read_from("orders", 0, 10, true).unwrap();
    assert_eq!(held, records, "the follower's log is untouched");
}

/// A follower holds one connection per node leading it: a second connection claiming the
/// node it follows, while that node is heard from, is refused (a stranger using the leader's
/// id gets nothing in), and the real leader's appends go on reaching the quorum.
#[test]
fn a_second_connection_claiming_the_connected_leader_is_refused() {
    use tern_replication::message::{Message, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};

    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (leader, follower) = common::leader_and_follower(&dirs, 0x1d);
    let mut client = Client::connect(leader.local_addr()).unwrap();
    client.append_acks("orders", vec![Bytes::from_static(b"one")], Acks::Quorum).unwrap();
    let mut stranger = std::net::TcpStream::connect(follower.local_addr()).unwrap();
    stranger.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let hello = Message::Hello {
        cluster_id: 0x1d,
        node_id: 1,
        version_min: PROTOCOL_VERSION_MIN,
        version_max: PROTOCOL_VERSION_MAX,
        logs: Vec::new(),
    };
    common::write_message(&mut stranger, &hello).unwrap();
    let answer = common::read_message(&mut stranger).unwrap();
    match answer {
        Message::Refuse { reason } => assert!(reason.contains("connected to this node already"), "{reason}"),
        other => panic!("a second connection claiming node 1 was answered {other:?}"),
    }
    client.append_acks("orders", vec![Bytes::from_static(b"two")], Acks::Quorum).unwrap();
}
