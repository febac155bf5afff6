//! Power loss over real TCP: three nodes in this process, each engine on its own simulated
//! disk (`SimDisk`, which keeps only what was synced, plus any subset of unsynced pages, torn
//! at sector boundaries), serving and shipping over loopback. Every record acknowledged on a
//! quorum must survive every node losing power at once, and nodes losing it one at a time.
//! (The cluster tests kill processes with SIGKILL, which leaves the page cache: they would pass
//! without any fsync.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tern::Engine;
use tern_replication::driver::{Client, Role, Server};
use tern_replication::message::Acks;
use tern_segment::sim::{SimDisk, Tear};

mod common;

const LOG: &str = "orders";

struct Node {
    dir: tempfile::TempDir,
    disk: SimDisk,
    addr: SocketAddr,
    id: u64,
    role: Role,
    peers: Vec<(u64, SocketAddr)>,
    server: Option<Server>,
}

impl Node {
    fn new(id: u64, role: Role) -> Node {
        let (dir, disk, addr) = (tempfile::tempdir().unwrap(), SimDisk::new(), common::free_addr());
        Node { dir, disk, addr, id, role, peers: Vec::new(), server: None }
    }

    fn start(&mut self) {
        let engine = Arc::new(
            Engine::open_with_disk(self.dir.path(), Self::engine_config(), Arc::new(self.disk.clone())).unwrap(),
        );
        let server_config = tern_replication::driver::ServerConfig {
            commit_timeout: Duration::from_secs(10),
            ..common::config(0x9a, self.id, self.role, self.peers.clone(), self.addr)
        };
        self.server = Some(Server::start(server_config, Arc::new(tern::EngineLogs(engine))).unwrap());
    }

    /// Whether the node's disk holds every record of `acked` at its offset (opened without
    /// serving it, so nothing is shipped to it first).
    fn holds(&self, acked: &[Bytes]) -> bool {
        let engine =
            Engine::open_with_disk(self.dir.path(), Self::engine_config(), Arc::new(self.disk.clone())).unwrap();
        let Ok(log) = engine.existing_log(LOG) else { return acked.is_empty() };
        let held: Vec<Bytes> =
            log.read(0, tern::Visibility::Written).unwrap().take(acked.len()).map(|r| r.unwrap().value).collect();
        held == acked
    }

    fn engine_config() -> tern::Config {
        tern::Config { direct_writes: tern::DirectWrites::Off, io_uring: false, ..tern::Config::default() }
    }

    /// Power fails: what was not synced is lost (any subset of its pages, torn), then the
    /// node's threads stop (their writes go nowhere) and it starts again from its disk.
    fn lose_power(&mut self, seed: u64) {
        self.disk.crash(Tear::Random(seed));
        if let Some(server) = self.server.take() {
            server.stop();
        }
        self.disk.crash(Tear::None);
        self.start();
    }
}

fn cluster() -> Vec<Node> {
    let mut nodes = vec![Node::new(1, Role::Leader), Node::new(2, Role::Follower), Node::new(3, Role::Follower)];
    nodes[0].peers = vec![(2, nodes[1].addr), (3, nodes[2].addr)];
    for node in nodes.iter_mut().rev() {
        node.start();
    }
    nodes
}

/// Appends `batches` quorum-acknowledged batches; returns every acknowledged record by offset.
fn write(leader: SocketAddr, acked: &mut Vec<Bytes>, batches: usize, tag: &str) {
    let mut client = Client::connect(leader).unwrap();
    for b in 0..batches {
        let records: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("{tag}-{b}-{i}"))).collect();
        let r = client.append_acks(LOG, records.clone(), Acks::Quorum).unwrap();
        assert_eq!(r.start, acked.len() as u64);
        acked.extend(records);
    }
}

/// Every acknowledged record is on the leader at its offset, and once the followers are back,
/// committed again.
fn check(nodes: &[Node], acked: &[Bytes], context: &str) {
    let leader = nodes[0].addr;
    let held =
        common::eventually(&format!("{context}: the leader's records committed"), Duration::from_secs(30), || {
            let mut client = Client::connect(leader).ok()?;
            let (start, commit, records) = client.read_from(LOG, 0, 100_000, true).ok()?;
            (start == 0 && commit >= acked.len() as u64).then_some(records)
        });
    assert!(held.len() >= acked.len(), "{context}: {} records, {} acknowledged", held.len(), acked.len());
    assert_eq!(&held[..acked.len()], acked, "{context}: acknowledged records changed");
}

#[test]
fn quorum_acknowledged_records_survive_every_node_losing_power_at_once() {
    let seed = common::seed();
    let mut nodes = cluster();
    let mut acked = Vec::new();
    for round in 0..3 {
        write(nodes[0].addr, &mut acked, 20, &format!("all-{round}"));
        for (i, node) in nodes.iter_mut().enumerate().rev() {
            node.disk.crash(Tear::Random(seed + round * 10 + i as u64));
        }
        for node in nodes.iter_mut().rev() {
            if let Some(server) = node.server.take() {
                server.stop();
            }
            node.disk.crash(Tear::None);
        }
        // What the disks kept, before anything is shipped again: a quorum holds every
        // acknowledged record.
        let context = format!("round {round}, seed {seed:#x}");
        let holders = nodes.iter().filter(|node| node.holds(&acked)).count();
        assert!(holders >= 2, "{context}: {holders} nodes kept every acknowledged record");
        for node in nodes.iter_mut().rev() {
            node.start();
        }
        check(&nodes, &acked, &context);
    }
}

#[test]
fn quorum_acknowledged_records_survive_nodes_losing_power_one_at_a_time() {
    let seed = common::seed();
    let mut nodes = cluster();
    let mut acked = Vec::new();
    for (round, victim) in [1, 0, 2, 0].into_iter().enumerate() {
        write(nodes[0].addr, &mut acked, 20, &format!("one-{round}"));
        nodes[victim].lose_power(seed + round as u64);
        check(&nodes, &acked, &format!("round {round}, node {} lost power, seed {seed:#x}", victim + 1));
    }
}
