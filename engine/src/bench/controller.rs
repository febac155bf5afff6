//! The three-node cluster of `tern bench --workload replicate` run by the controller, measured
//! in the same rounds as the cluster with a fixed leader: what the controller costs.
//!
//! Three in-process [`ClusterNode`]s on loopback (with `--netns`, each in a network namespace
//! of its own), each with its own engine under the bench directory, quorum 2 of 3, failure
//! timeout 1 s (as `tern serve --cluster` by default). Their engines and replication servers
//! are set up as the fixed-leader cluster's ([`super::server_config`]), so what differs is the controller's work: its Raft group on
//! each node (on the data port + 1), the node loops that read its map every 5 ms, the leader's
//! heartbeats to every member, and the epoch marker the leader writes in each log it holds
//! when its epoch starts. (Both leaders lead in an epoch; under the controller its number
//! comes from the map instead of the log.)

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tern_replication::codec::Compression;
use tern_replication::driver::{Client, Role, ShipStats};
use tern_replication::message::Acks;

use crate::cluster::{ClusterConfig, ClusterNode};

/// A leader not heard from for this long is replaced (`tern serve --cluster`'s default).
const FAILURE_TIMEOUT: Duration = Duration::from_secs(1);
/// Copies that commit a record, the leader included, as in the fixed-leader cluster.
const QUORUM: usize = 2;
/// How long the cluster has to choose a leader and take a first quorum append.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at finding a free pair of ports per node.
const PORT_ATTEMPTS_MAX: usize = 100;

/// Three nodes run by the controller; every measurement goes to the leader it chose at the
/// start, and fails if the controller moved the leadership meanwhile (a failover during the
/// bench is a finding, not a figure).
pub(super) struct ControlledCluster {
    nodes: Vec<ClusterNode>,
    /// Each node's engine directory, in the order of `nodes` (node ids 1, 2, 3).
    dirs: Vec<PathBuf>,
    /// The index in `nodes` of the leader, the epoch it leads and its data address.
    leader: usize,
    epoch: u64,
    addr: SocketAddr,
    /// From the start until one node led.
    pub(super) elected: Duration,
    /// From the start until a first quorum append through that leader was acknowledged.
    pub(super) first_append: Duration,
}

impl ControlledCluster {
    /// Starts the three nodes, waits until one leads, then until a 128 B append to `log` with
    /// quorum acks succeeds through it.
    ///
    /// # Errors
    /// No free ports, a node that cannot start, no leader or no quorum append within
    /// [`START_TIMEOUT`].
    pub(super) fn start(
        dir: &Path,
        compression: Compression,
        log: &str,
        hosts: &super::Hosts,
        engine: &crate::Config,
    ) -> Result<ControlledCluster, Box<dyn std::error::Error>> {
        let started = Instant::now();
        let deadline = started + START_TIMEOUT;
        let cluster: BTreeMap<u64, SocketAddr> = (1..).zip(address_pairs(hosts, 3)?).collect();
        let dirs: Vec<PathBuf> =
            cluster.keys().map(|id| super::unique(dir, &format!("controlled-node-{id}"))).collect();
        let nodes = cluster
            .iter()
            .zip(&dirs)
            .map(|((&id, &addr), dir)| {
                let config = ClusterConfig {
                    node_id: id,
                    dir: dir.clone(),
                    cluster: cluster.clone(),
                    failure_timeout: FAILURE_TIMEOUT,
                    quorum: QUORUM,
                    // Role, peers, quorum and epoch come from the controller's map.
                    server: super::server_config(id, addr, Role::Follower, Vec::new(), compression),
                    advertise: None,
                };
                hosts.run(id, || ClusterNode::start(config, engine.clone()))?
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let (leader, epoch) = loop {
            if let [one] = leaders(&nodes)[..] {
                break one;
            }
            if Instant::now() >= deadline {
                return Err(format!("the controller chose no leader within {} s", START_TIMEOUT.as_secs()).into());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let elected = started.elapsed();
        let addr = nodes[leader].local_addr().ok_or("the leader the controller chose runs no server")?;
        // The leader has just started: its followers may not be connected yet.
        let record = bytes::Bytes::from(vec![0x5au8; 128]);
        loop {
            let appended = Client::connect(addr)
                .and_then(|mut client| client.append_acks(log, vec![record.clone()], Acks::Quorum));
            match appended {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "no quorum append through node {} (leader of epoch {epoch}) within {} s: {e}",
                        leader + 1,
                        START_TIMEOUT.as_secs()
                    )
                    .into())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let first_append = started.elapsed();
        let controlled = ControlledCluster { nodes, dirs, leader, epoch, addr, elected, first_append };
        controlled.check()?;
        Ok(controlled)
    }

    /// The engine directories of the three nodes.
    pub(super) fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Runs `measure` against the leader's address, then checks that it still leads the same
    /// epoch.
    ///
    /// # Errors
    /// What `measure` returns, or the leadership moved (said together when both happen).
    pub(super) fn measure<T>(
        &self,
        measure: impl FnOnce(SocketAddr) -> Result<T, Box<dyn std::error::Error>>,
    ) -> Result<T, Box<dyn std::error::Error>> {
        match (measure(self.addr), self.check()) {
            (Ok(measured), Ok(())) => Ok(measured),
            (Ok(_), Err(moved)) => Err(moved.into()),
            (Err(e), Ok(())) => Err(format!("3 nodes under the controller: {e}").into()),
            (Err(e), Err(moved)) => Err(format!("{e}; {moved}").into()),
        }
    }

    /// What the leader has shipped so far.
    pub(super) fn ship_stats(&self) -> ShipStats {
        self.nodes[self.leader].with_server(tern_replication::driver::Server::ship_stats).unwrap_or_default()
    }

    /// Stops every node.
    pub(super) fn stop(self) {
        for node in self.nodes {
            node.stop();
        }
    }

    /// Fails when the leader chosen at the start no longer leads its epoch.
    fn check(&self) -> Result<(), String> {
        if self.nodes[self.leader].role() == Some((Role::Leader, self.epoch)) {
            return Ok(());
        }
        let now: Vec<String> =
            leaders(&self.nodes).iter().map(|(i, epoch)| format!("node {} in epoch {epoch}", i + 1)).collect();
        Err(format!(
            "3 nodes under the controller: node {} led epoch {} when the workload started and does not now \
             (leading now: {}); the controller moved the leadership during the bench",
            self.leader + 1,
            self.epoch,
            if now.is_empty() { "none".to_owned() } else { now.join(", ") }
        ))
    }
}

/// The nodes that run as leaders now, with their epochs: `(index in nodes, epoch)`.
fn leaders(nodes: &[ClusterNode]) -> Vec<(usize, u64)> {
    nodes
        .iter()
        .enumerate()
        .filter_map(|(i, node)| match node.role() {
            Some((Role::Leader, epoch)) => Some((i, epoch)),
            _ => None,
        })
        .collect()
}

/// The data addresses of nodes 1 to `count` whose next ports (their controllers') are free
/// too; no port is in two pairs (on loopback, where all nodes share one address).
fn address_pairs(hosts: &super::Hosts, count: usize) -> std::io::Result<Vec<SocketAddr>> {
    // Every port found stays bound until all are found, so the system hands none out twice.
    let mut held = Vec::with_capacity(2 * count);
    let mut addrs = Vec::with_capacity(count);
    for id in (1..).take(count) {
        let ip = hosts.ip(id);
        let pair = (0..PORT_ATTEMPTS_MAX).find_map(|_| {
            let data = hosts.listen(id).ok()?;
            let addr = data.local_addr().ok()?;
            let next = addr.port().checked_add(1)?;
            let controller = hosts.run(id, || TcpListener::bind((ip, next))).ok()?.ok()?;
            Some((addr, data, controller))
        });
        let Some((addr, data, controller)) = pair else {
            return Err(std::io::Error::other(format!("no free pair of consecutive ports at {ip}")));
        };
        held.push(data);
        held.push(controller);
        addrs.push(addr);
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_pairs_share_no_port() {
        let addrs = address_pairs(&crate::bench::Hosts::Loopback, 3).expect("free loopback ports");
        let mut ports: Vec<u16> = addrs.iter().flat_map(|a| [a.port(), a.port() + 1]).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 6, "a port in two pairs: {addrs:?}");
    }
}
