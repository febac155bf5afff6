//! Nodes run by the controller (`tern::cluster`): the leader is chosen, replaced when it
//! stops, and a node that comes back follows; nothing acknowledged is lost.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tern::cluster::{ClusterConfig, ClusterNode};
use tern_replication::driver::{Client, Role};

fn start_node(dir: &Path, id: u64, cluster: &BTreeMap<u64, SocketAddr>) -> ClusterNode {
    let server = config(0, id, Role::Follower, vec![], cluster[&id]);
    let config = ClusterConfig {
        node_id: id,
        dir: dir.to_path_buf(),
        cluster: cluster.clone(),
        failure_timeout: Duration::from_secs(1),
        quorum: 2,
        server,
    };
    ClusterNode::start(config, tern::Config::default()).expect("node starts")
}

/// The node that leads, once exactly one does, with its epoch.
fn leader_of(nodes: &BTreeMap<u64, ClusterNode>, above_epoch: u64) -> (u64, u64) {
    eventually("one node leads", Duration::from_secs(30), || {
        let leaders: Vec<(u64, u64)> = nodes
            .iter()
            .filter_map(|(id, n)| match n.role() {
                Some((Role::Leader, epoch)) if epoch > above_epoch => Some((*id, epoch)),
                _ => None,
            })
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    })
}

fn append(node: &ClusterNode, values: &[String]) -> std::io::Result<(u64, u64)> {
    let mut client = Client::connect(node.local_addr().unwrap())?;
    let records = values.iter().map(|v| bytes::Bytes::from(v.clone().into_bytes())).collect();
    let (start, end, _) = client.append("orders", records, true)?;
    Ok((start, end))
}

fn committed(node: &ClusterNode) -> Vec<String> {
    let Ok(mut client) = Client::connect(node.local_addr().unwrap()) else { return Vec::new() };
    let Ok((_, _, records)) = client.read_from("orders", 0, 100_000, false) else { return Vec::new() };
    records.into_iter().map(|r| String::from_utf8(r.to_vec()).unwrap()).collect()
}

#[test]
fn a_stopped_leader_is_replaced_and_nothing_acknowledged_is_lost() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cluster: BTreeMap<u64, SocketAddr> = (1..=3).map(|id| (id, address_pair())).collect();
    let mut nodes: BTreeMap<u64, ClusterNode> =
        (1..=3).map(|id| (id, start_node(dirs[id as usize - 1].path(), id, &cluster))).collect();
    let (first, epoch) = leader_of(&nodes, 0);
    let mut acked = Vec::new();
    for i in 0..50 {
        let value = format!("before {i}");
        append(&nodes[&first], std::slice::from_ref(&value)).unwrap();
        acked.push(value);
    }
    let stopped_at = Instant::now();
    nodes.remove(&first).unwrap().stop();
    let (second, epoch2) = leader_of(&nodes, epoch);
    assert_ne!(second, first);
    // The first append the new leader acknowledges.
    let value = "after".to_owned();
    eventually("the new leader takes appends", Duration::from_secs(20), || {
        append(&nodes[&second], std::slice::from_ref(&value)).ok()
    });
    eprintln!("write pause after the leader stopped: {} ms", stopped_at.elapsed().as_millis());
    acked.push(value);
    assert_eq!(committed(&nodes[&second]), acked, "every acknowledged record, in order, once");
    // The old leader comes back and follows, catching up.
    let back = start_node(dirs[first as usize - 1].path(), first, &cluster);
    nodes.insert(first, back);
    eventually("the returning node follows and catches up", Duration::from_secs(30), || {
        (nodes[&first].role() == Some((Role::Follower, 0)) && committed(&nodes[&first]) == acked).then_some(())
    });
    assert_eq!(leader_of(&nodes, epoch).0, second, "the returning node did not take over: epoch {epoch2}");
}
