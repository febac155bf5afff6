//! The cluster map: the controller's replicated state machine. Pure: commands in, replies
//! out, no I/O, deterministic (ordered maps only), so every controller member that applies the
//! same log holds the same map.
//!
//! Epochs of a log are only ever issued here, by [`Command::Elect`], a compare-and-set on the
//! log's current epoch: each epoch is issued once and names exactly one leader, whichever
//! member proposed it and however many proposals race.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tern_replication::message::NodeId;

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Where it serves replication and clients (`tern serve --listen`).
    pub data_addr: String,
}

/// Records an operator accepted to lose by forcing a promotion: `[from, to)` of `log`, at
/// least (replicas that did not report may have held more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataLoss {
    /// The epoch the forced leader took.
    pub epoch: u64,
    /// First offset that may be lost.
    pub from: u64,
    /// One past the last offset known to be lost.
    pub to: u64,
}

/// Where a log lives and who leads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMap {
    /// The node that leads it in `epoch`.
    pub leader: NodeId,
    /// The current epoch: issued by this map, never reused.
    pub epoch: u64,
    /// The nodes holding a copy, the leader included.
    pub replicas: Vec<NodeId>,
    /// Copies that make a record committed (the leader's included).
    pub quorum: u32,
    /// Replicas known to be caught up with the leader, as its leader last reported.
    pub in_sync: Vec<NodeId>,
    /// Ranges accepted as lost by forced promotions, oldest first.
    pub data_loss: Vec<DataLoss>,
}

/// The whole map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Nodes by id.
    pub members: BTreeMap<NodeId, Member>,
    /// Logs by name.
    pub logs: BTreeMap<String, LogMap>,
}

/// Why a leader is elected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectReason {
    /// The leader failed; the new one holds every committed record (the election function
    /// picked it from a quorum of reports).
    Failover,
    /// A planned handover to a replica holding the exact end.
    Handover,
    /// An operator forced it with too few reports, accepting the loss of `[from, to)`.
    Forced {
        /// First offset that may be lost.
        from: u64,
        /// One past the last offset known to be lost.
        to: u64,
    },
}

/// A change to the map, proposed through the controller's Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A node says where it serves (again, after an address change).
    Register {
        /// The node.
        node: NodeId,
        /// Its `--listen` address.
        data_addr: String,
    },
    /// A new log on `replicas`, led by `leader` in epoch 1.
    CreateLog {
        /// The log's name.
        log: String,
        /// The nodes holding a copy.
        replicas: Vec<NodeId>,
        /// Copies that make a record committed.
        quorum: u32,
        /// The first leader.
        leader: NodeId,
    },
    /// Compare-and-set: if `log`'s epoch is still `expected_epoch`, `leader` leads it in epoch
    /// `expected_epoch + 1`; otherwise nothing changes and the reply says what is current.
    Elect {
        /// The log.
        log: String,
        /// The epoch the proposer saw.
        expected_epoch: u64,
        /// The new leader, one of the replicas.
        leader: NodeId,
        /// Why.
        reason: ElectReason,
    },
    /// The leader of `epoch` reports which replicas are caught up. Ignored for another epoch.
    SetInSync {
        /// The log.
        log: String,
        /// The reporting leader's epoch.
        epoch: u64,
        /// Replicas caught up (the leader included).
        in_sync: Vec<NodeId>,
    },
}

/// What applying a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Applied, nothing to report (also the reply to Raft's own entries).
    #[default]
    Done,
    /// `log` is led by `leader` in `epoch` (the result of a `CreateLog` or an `Elect`).
    Leader {
        /// The log.
        log: String,
        /// Its leader.
        leader: NodeId,
        /// Its epoch.
        epoch: u64,
    },
    /// The compare-and-set lost: `log` is at `epoch` under `leader`.
    Conflict {
        /// The log.
        log: String,
        /// Its current leader.
        leader: NodeId,
        /// Its current epoch.
        epoch: u64,
    },
    /// Refused, with the reason (an unknown log, a leader that is not a replica, ...).
    Refused(String),
}

impl ClusterMap {
    /// Applies `command` and says what it did. Deterministic: the same commands in the same
    /// order give the same map on every member.
    pub fn apply_command(&mut self, command: &Command) -> Reply {
        match command {
            Command::Register { node, data_addr } => {
                self.members.insert(*node, Member { data_addr: data_addr.clone() });
                Reply::Done
            }
            Command::CreateLog { log, replicas, quorum, leader } => self.create_log(log, replicas, *quorum, *leader),
            Command::Elect { log, expected_epoch, leader, reason } => self.elect(log, *expected_epoch, *leader, reason),
            Command::SetInSync { log, epoch, in_sync } => {
                let Some(entry) = self.logs.get_mut(log) else {
                    return Reply::Refused(format!("no log {log}"));
                };
                if entry.epoch != *epoch {
                    return Reply::Conflict { log: log.clone(), leader: entry.leader, epoch: entry.epoch };
                }
                let mut in_sync: Vec<NodeId> = in_sync.iter().copied().filter(|n| entry.replicas.contains(n)).collect();
                in_sync.sort_unstable();
                in_sync.dedup();
                entry.in_sync = in_sync;
                Reply::Done
            }
        }
    }

    fn create_log(&mut self, log: &str, replicas: &[NodeId], quorum: u32, leader: NodeId) -> Reply {
        let mut sorted = replicas.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != replicas.len() {
            return Reply::Refused(format!("log {log}: a replica is listed twice in {replicas:?}"));
        }
        if !sorted.contains(&leader) {
            return Reply::Refused(format!("log {log}: leader {leader} is not one of its replicas {sorted:?}"));
        }
        if quorum == 0 || quorum as usize > sorted.len() {
            return Reply::Refused(format!("log {log}: quorum {quorum} with {} replicas", sorted.len()));
        }
        if let Some(existing) = self.logs.get(log) {
            // Proposed again (a retried proposal whose reply was lost): the same log is fine.
            return if existing.replicas == sorted && existing.quorum == quorum {
                Reply::Leader { log: log.to_owned(), leader: existing.leader, epoch: existing.epoch }
            } else {
                Reply::Refused(format!("log {log} exists with replicas {:?}", existing.replicas))
            };
        }
        let entry =
            LogMap { leader, epoch: 1, replicas: sorted.clone(), quorum, in_sync: vec![leader], data_loss: Vec::new() };
        self.logs.insert(log.to_owned(), entry);
        Reply::Leader { log: log.to_owned(), leader, epoch: 1 }
    }

    fn elect(&mut self, log: &str, expected_epoch: u64, leader: NodeId, reason: &ElectReason) -> Reply {
        let Some(entry) = self.logs.get_mut(log) else {
            return Reply::Refused(format!("no log {log}"));
        };
        if entry.epoch != expected_epoch {
            return Reply::Conflict { log: log.to_owned(), leader: entry.leader, epoch: entry.epoch };
        }
        if !entry.replicas.contains(&leader) {
            return Reply::Refused(format!("log {log}: node {leader} is not one of its replicas {:?}", entry.replicas));
        }
        let Some(epoch) = entry.epoch.checked_add(1) else {
            return Reply::Refused(format!("log {log}: no epoch after {}", entry.epoch));
        };
        entry.epoch = epoch;
        entry.leader = leader;
        entry.in_sync = vec![leader];
        if let ElectReason::Forced { from, to } = reason {
            entry.data_loss.push(DataLoss { epoch, from: *from, to: *to });
        }
        Reply::Leader { log: log.to_owned(), leader, epoch }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn create(map: &mut ClusterMap) {
        let reply = map.apply_command(&Command::CreateLog {
            log: "orders".into(),
            replicas: vec![1, 2, 3],
            quorum: 2,
            leader: 1,
        });
        assert_eq!(reply, Reply::Leader { log: "orders".into(), leader: 1, epoch: 1 });
    }

    fn elect(expected_epoch: u64, leader: NodeId) -> Command {
        Command::Elect { log: "orders".into(), expected_epoch, leader, reason: ElectReason::Failover }
    }

    #[test]
    fn an_election_takes_the_next_epoch_only_from_the_epoch_it_saw() {
        let mut map = ClusterMap::default();
        create(&mut map);
        assert_eq!(map.apply_command(&elect(1, 2)), Reply::Leader { log: "orders".into(), leader: 2, epoch: 2 });
        // A second proposer that also saw epoch 1 loses, and learns who won.
        assert_eq!(map.apply_command(&elect(1, 3)), Reply::Conflict { log: "orders".into(), leader: 2, epoch: 2 });
        assert_eq!(map.logs["orders"].leader, 2);
        assert_eq!(map.apply_command(&elect(2, 3)), Reply::Leader { log: "orders".into(), leader: 3, epoch: 3 });
    }

    #[test]
    fn a_leader_outside_the_replicas_or_an_unknown_log_is_refused_and_nothing_changes() {
        let mut map = ClusterMap::default();
        create(&mut map);
        let before = map.clone();
        assert!(matches!(map.apply_command(&elect(1, 9)), Reply::Refused(m) if m.contains("not one of its replicas")));
        let unknown = Command::Elect { log: "x".into(), expected_epoch: 1, leader: 1, reason: ElectReason::Failover };
        assert!(matches!(map.apply_command(&unknown), Reply::Refused(_)));
        let twice = Command::CreateLog { log: "y".into(), replicas: vec![1, 1], quorum: 1, leader: 1 };
        assert!(matches!(map.apply_command(&twice), Reply::Refused(_)));
        let no_quorum = Command::CreateLog { log: "y".into(), replicas: vec![1, 2], quorum: 3, leader: 1 };
        assert!(matches!(map.apply_command(&no_quorum), Reply::Refused(_)));
        assert_eq!(map, before);
    }

    #[test]
    fn a_forced_promotion_records_the_loss_it_accepted() {
        let mut map = ClusterMap::default();
        create(&mut map);
        let forced = Command::Elect {
            log: "orders".into(),
            expected_epoch: 1,
            leader: 3,
            reason: ElectReason::Forced { from: 40, to: 55 },
        };
        map.apply_command(&forced);
        assert_eq!(map.logs["orders"].data_loss, vec![DataLoss { epoch: 2, from: 40, to: 55 }]);
    }

    #[test]
    fn in_sync_reports_of_another_epoch_are_ignored() {
        let mut map = ClusterMap::default();
        create(&mut map);
        map.apply_command(&elect(1, 2));
        let stale = Command::SetInSync { log: "orders".into(), epoch: 1, in_sync: vec![1, 2, 3] };
        assert!(matches!(map.apply_command(&stale), Reply::Conflict { epoch: 2, .. }));
        assert_eq!(map.logs["orders"].in_sync, vec![2]);
        let current = Command::SetInSync { log: "orders".into(), epoch: 2, in_sync: vec![3, 2, 9, 3] };
        map.apply_command(&current);
        assert_eq!(map.logs["orders"].in_sync, vec![2, 3], "sorted, deduplicated, replicas only");
    }

    proptest! {
        /// However elections race (each proposer holding a possibly stale epoch), every epoch
        /// of a log is issued at most once and names one leader, and epochs only grow.
        #[test]
        fn every_epoch_is_issued_once_and_names_one_leader(
            proposals in proptest::collection::vec((0u64..8, 1u64..=3), 1..60)
        ) {
            let mut map = ClusterMap::default();
            create(&mut map);
            let mut issued: BTreeMap<u64, NodeId> = BTreeMap::from([(1, 1)]);
            let mut last = 1;
            for (seen, leader) in proposals {
                if let Reply::Leader { epoch, leader: who, .. } = map.apply_command(&elect(seen, leader)) {
                    prop_assert!(issued.insert(epoch, who).is_none(), "epoch {} issued twice", epoch);
                    prop_assert_eq!(epoch, seen + 1);
                    prop_assert!(epoch > last);
                    last = epoch;
                }
                prop_assert_eq!(map.logs["orders"].epoch, last);
                prop_assert_eq!(map.logs["orders"].leader, issued[&last]);
            }
        }
    }
}
