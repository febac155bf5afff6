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

/// The placement of every log without one of its own ([`Command::PlaceLog`]).
pub const ALL_LOGS: &str = "*";

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
    /// The planned handover under way, or the last one that took effect.
    pub handover: Option<Handover>,
    /// Nodes being seeded with a copy ([`Command::AddReplica`]): the leader ships to them, but
    /// their copies count toward no quorum and no election, until the leader finds one caught
    /// up and makes it a replica ([`Command::PromoteReplica`]).
    pub learners: Vec<NodeId>,
    /// A replica to be removed ([`Command::RemoveReplica`]): the leader takes it out once the
    /// replicas left hold every record it wrote ([`Command::RetireReplica`]).
    pub leaving: Option<NodeId>,
}

impl LogMap {
    /// The same leader leads the next epoch (its followers or quorum changed).
    fn next_epoch(&mut self, log: &str) -> Reply {
        let Some(epoch) = self.epoch.checked_add(1) else {
            return Reply::Refused(format!("log {log}: no epoch after {}", self.epoch));
        };
        self.epoch = epoch;
        Reply::Leader { log: log.to_owned(), leader: self.leader, epoch }
    }

    /// The replicas and quorum a change of this log's replicas leads to: a learner promoted
    /// (`Some(learner)`), or else the leaving replica taken out. The leader waits on exactly
    /// this before proposing the change, and the map applies exactly this.
    pub fn replicas_after(&self, promoted: Option<NodeId>) -> (Vec<NodeId>, u32) {
        let n = self.replicas.len();
        match (promoted, self.leaving) {
            (Some(node), _) => {
                let mut replicas = self.replicas.clone();
                replicas.push(node);
                replicas.sort_unstable();
                (replicas, resized_quorum(self.quorum, n, n + 1))
            }
            (None, Some(leaving)) => (
                self.replicas.iter().copied().filter(|r| *r != leaving).collect(),
                resized_quorum(self.quorum, n, n.saturating_sub(1)),
            ),
            (None, None) => (self.replicas.clone(), self.quorum),
        }
    }
}

/// The quorum of a log whose `n` replicas become `to`: every replica stays every replica, a
/// majority stays a majority (the smallest quorum that allows automatic failover), and any
/// other quorum is kept, within the new count and never below its majority.
pub fn resized_quorum(quorum: u32, n: usize, to: usize) -> u32 {
    let (k, to) = (quorum as usize, to.max(1));
    // A majority first: of 2 replicas, 2 is both a majority and every replica, and a log
    // shrunk to 2 and grown back to 3 must be back at 2 of 3, not 3 of 3.
    let resized = if k == n / 2 + 1 {
        to / 2 + 1
    } else if k >= n {
        to
    } else {
        k.clamp(to / 2 + 1, to)
    };
    resized as u32
}

/// A planned handover of a log's leadership ([`Command::StartHandover`]): kept in the map so
/// that whichever controller member leads carries it on after a crash, and so that a leader
/// restarted in the middle of one starts refusing appends again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// The node taking over.
    pub to: NodeId,
    /// The epoch of the leader handing over (the target leads the next one).
    pub epoch: u64,
    /// How far it got.
    pub step: HandoverStep,
    /// Why it was given up (empty unless [`HandoverStep::Aborted`]).
    pub reason: String,
}

impl Handover {
    /// The target, while this handover of the leader of `epoch` is under way (fenced or
    /// caught up).
    pub fn under_way(&self, epoch: u64) -> Option<NodeId> {
        (self.epoch == epoch && matches!(self.step, HandoverStep::Fenced | HandoverStep::CaughtUp)).then_some(self.to)
    }
}

/// The steps of a planned handover, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HandoverStep {
    /// The leader of `epoch` is to refuse appends ("moved", naming the target), from now on
    /// and also after a restart, while the target catches up.
    Fenced,
    /// The target holds the leader's exact end of every log (the leader said so to the
    /// controller's leader, which elects the target next).
    CaughtUp,
    /// The target leads the next epoch (an [`ElectReason::Handover`] election took effect).
    Promoted,
    /// Given up ([`Command::AbortHandover`]): the leader takes appends again, and no
    /// election of the target for this handover can take effect any more.
    Aborted,
}

impl HandoverStep {
    /// The step's name, as status shows it.
    pub fn name(self) -> &'static str {
        match self {
            HandoverStep::Fenced => "fenced",
            HandoverStep::CaughtUp => "caught-up",
            HandoverStep::Promoted => "promoted",
            HandoverStep::Aborted => "aborted",
        }
    }
}

/// The whole map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// The id every replication server of the cluster runs with (0: none issued yet). Issued
    /// once, here, so that it does not depend on which node led first: a node that led before
    /// any follower reached it, then was cut off, still belongs to the same cluster as the
    /// leaders after it.
    pub cluster_id: u64,
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
    /// A planned handover to a replica holding the exact end: takes effect only while the
    /// log's handover to that leader is under way ([`Handover::under_way`]).
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
    /// Forgets a node that holds no copy of any log (it was removed from the cluster).
    Unregister {
        /// The node.
        node: NodeId,
    },
    /// Issues the cluster id, if none is yet (`id` is not 0); once issued it never changes.
    SetClusterId {
        /// The id proposed.
        id: u64,
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
    /// Starts a planned handover of `log` from its leader of `epoch` to `to` (step
    /// [`HandoverStep::Fenced`]). Refused for another epoch, a target that is not a replica or
    /// leads already, or while another handover of the log is under way; the same one again
    /// changes nothing.
    StartHandover {
        /// The log.
        log: String,
        /// The epoch of the leader handing over.
        epoch: u64,
        /// The node taking over.
        to: NodeId,
    },
    /// Moves the handover of `log` from the leader of `epoch` on to `step` (only forward, and
    /// only to `CaughtUp`: an election promotes, `AbortHandover` gives up). Ignored for
    /// another epoch or a handover no longer under way.
    HandoverStep {
        /// The log.
        log: String,
        /// The epoch of the leader handing over.
        epoch: u64,
        /// The step reached.
        step: HandoverStep,
    },
    /// Starts seeding `node` (a registered member) with a copy of `log`, if `log` is still at
    /// `expected_epoch`: it becomes a learner, and the leader leads the next epoch with it among
    /// its followers (a new epoch is how a leader's followers change). Refused for a node that
    /// already holds a copy or is not registered.
    AddReplica {
        /// The log.
        log: String,
        /// The epoch the proposer saw.
        expected_epoch: u64,
        /// The node to seed.
        node: NodeId,
    },
    /// The leader of `epoch` found learner `node` caught up and, refusing appends, made sure a
    /// quorum of the replicas with `node` holds every record it wrote: `node` becomes a
    /// replica, the quorum is resized ([`resized_quorum`]), and the leader leads the next epoch.
    PromoteReplica {
        /// The log.
        log: String,
        /// The epoch of the leader promoting.
        epoch: u64,
        /// The learner.
        node: NodeId,
    },
    /// Removes `node` from `log`, if `log` is still at `expected_epoch`: a learner at once (next
    /// epoch); a replica once its leader took it out ([`Command::RetireReplica`]), which this
    /// asks for ([`LogMap::leaving`]). Refused for the leader (hand the log over first), for
    /// the last replica, and while another replica is leaving.
    RemoveReplica {
        /// The log.
        log: String,
        /// The epoch the proposer saw.
        expected_epoch: u64,
        /// The node to remove.
        node: NodeId,
    },
    /// The leader of `epoch`, refusing appends, made sure a quorum of the replicas other than
    /// the leaving one holds every record it wrote: that replica goes, the quorum is resized,
    /// and the leader leads the next epoch.
    RetireReplica {
        /// The log.
        log: String,
        /// The epoch of the leader retiring it.
        epoch: u64,
        /// The leaving replica.
        node: NodeId,
    },
    /// Gives up the handover of `log` from the leader of `epoch` (the target did not catch up
    /// in time, or went away): the leader takes appends again.
    AbortHandover {
        /// The log.
        log: String,
        /// The epoch of the leader handing over.
        epoch: u64,
        /// Why, for status.
        reason: String,
    },
    /// Gives log `log`, until now led with every log under placement `*`, a placement of its
    /// own, if `*` is still at `expected_epoch`: the same leader, replicas and quorum, in the
    /// next epoch (epochs are per log: `*`'s later epochs are never this log's). From then on
    /// its leader is elected, handed over and heartbeats apart. Refused while `*` changes its
    /// replicas or hands over; the same log placed again is answered as it is.
    PlaceLog {
        /// The log.
        log: String,
        /// The epoch of `*` the proposer saw.
        expected_epoch: u64,
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
            Command::Unregister { node } => {
                let holding: Vec<&String> = self
                    .logs
                    .iter()
                    .filter(|(_, l)| l.replicas.contains(node) || l.learners.contains(node))
                    .map(|(name, _)| name)
                    .collect();
                if holding.is_empty() {
                    self.members.remove(node);
                    Reply::Done
                } else {
                    Reply::Refused(format!("node {node} holds a copy of {holding:?}"))
                }
            }
            Command::SetClusterId { id } => {
                if self.cluster_id == 0 {
                    self.cluster_id = *id;
                }
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
            Command::StartHandover { log, epoch, to } => self.start_handover(log, *epoch, *to),
            Command::HandoverStep { log, epoch, step } => {
                let Some(entry) = self.logs.get_mut(log) else {
                    return Reply::Refused(format!("no log {log}"));
                };
                match entry.handover.as_mut() {
                    Some(h)
                        if entry.epoch == *epoch
                            && h.under_way(*epoch).is_some()
                            && *step == HandoverStep::CaughtUp =>
                    {
                        h.step = HandoverStep::CaughtUp;
                        Reply::Done
                    }
                    _ => Reply::Conflict { log: log.clone(), leader: entry.leader, epoch: entry.epoch },
                }
            }
            Command::AddReplica { log, expected_epoch, node } => self.add_replica(log, *expected_epoch, *node),
            Command::PromoteReplica { log, epoch, node } => self.promote_replica(log, *epoch, *node),
            Command::RemoveReplica { log, expected_epoch, node } => self.remove_replica(log, *expected_epoch, *node),
            Command::RetireReplica { log, epoch, node } => self.retire_replica(log, *epoch, *node),
            Command::PlaceLog { log, expected_epoch } => self.place_log(log, *expected_epoch),
            Command::AbortHandover { log, epoch, reason } => {
                let Some(entry) = self.logs.get_mut(log) else {
                    return Reply::Refused(format!("no log {log}"));
                };
                // A handover under way is of the current epoch: any election ends it.
                let under_way = entry.handover.as_ref().is_some_and(|h| h.under_way(*epoch).is_some());
                let aborted =
                    entry.handover.as_ref().is_some_and(|h| h.epoch == *epoch && h.step == HandoverStep::Aborted);
                if under_way || aborted {
                    if let Some(h) = entry.handover.as_mut().filter(|_| under_way) {
                        h.step = HandoverStep::Aborted;
                        h.reason = reason.clone();
                    }
                    Reply::Done
                } else {
                    Reply::Conflict { log: log.clone(), leader: entry.leader, epoch: entry.epoch }
                }
            }
        }
    }

    /// `log` if it is at `epoch` and `node` is one of its replicas; otherwise the reply that
    /// says why not (the compare-and-set every epoch-changing command starts with).
    fn at_epoch(&mut self, log: &str, epoch: u64, node: NodeId) -> Result<&mut LogMap, Reply> {
        let entry = self.log_at(log, epoch)?;
        if !entry.replicas.contains(&node) {
            return Err(Reply::Refused(format!(
                "log {log}: node {node} is not one of its replicas {:?}",
                entry.replicas
            )));
        }
        Ok(entry)
    }

    /// `log` if it is at `epoch`; otherwise the reply that says why not.
    fn log_at(&mut self, log: &str, epoch: u64) -> Result<&mut LogMap, Reply> {
        let Some(entry) = self.logs.get_mut(log) else {
            return Err(Reply::Refused(format!("no log {log}")));
        };
        if entry.epoch != epoch {
            return Err(Reply::Conflict { log: log.to_owned(), leader: entry.leader, epoch: entry.epoch });
        }
        Ok(entry)
    }

    fn add_replica(&mut self, log: &str, expected_epoch: u64, node: NodeId) -> Reply {
        if !self.members.contains_key(&node) {
            return Reply::Refused(format!("log {log}: node {node} is not a registered member"));
        }
        let entry = match self.log_at(log, expected_epoch) {
            Ok(entry) => entry,
            Err(reply) => return reply,
        };
        if entry.replicas.contains(&node) || entry.learners.contains(&node) {
            return Reply::Refused(format!("log {log}: node {node} holds a copy already"));
        }
        entry.learners.push(node);
        entry.learners.sort_unstable();
        entry.next_epoch(log)
    }

    fn promote_replica(&mut self, log: &str, epoch: u64, node: NodeId) -> Reply {
        let entry = match self.log_at(log, epoch) {
            Ok(entry) => entry,
            Err(reply) => return reply,
        };
        if !entry.learners.contains(&node) {
            return Reply::Refused(format!("log {log}: node {node} is not a learner"));
        }
        // What the leader made sure of before proposing this: one computation for both.
        (entry.replicas, entry.quorum) = entry.replicas_after(Some(node));
        entry.learners.retain(|l| *l != node);
        entry.in_sync.push(node);
        entry.in_sync.sort_unstable();
        entry.next_epoch(log)
    }

    fn remove_replica(&mut self, log: &str, expected_epoch: u64, node: NodeId) -> Reply {
        let entry = match self.log_at(log, expected_epoch) {
            Ok(entry) => entry,
            Err(reply) => return reply,
        };
        if entry.learners.contains(&node) {
            entry.learners.retain(|l| *l != node);
            return entry.next_epoch(log);
        }
        if !entry.replicas.contains(&node) {
            return Reply::Refused(format!("log {log}: node {node} holds no copy"));
        }
        if entry.leader == node {
            return Reply::Refused(format!("log {log}: node {node} leads it; hand it over first (tern handover)"));
        }
        if entry.handover.as_ref().is_some_and(|h| h.under_way(entry.epoch) == Some(node)) {
            return Reply::Refused(format!("log {log}: a handover to node {node} is under way"));
        }
        match entry.leaving {
            Some(leaving) if leaving == node => Reply::Done,
            Some(leaving) => Reply::Refused(format!("log {log}: node {leaving} is leaving it already")),
            // Never the last replica: that one leads.
            None => {
                entry.leaving = Some(node);
                Reply::Done
            }
        }
    }

    fn retire_replica(&mut self, log: &str, epoch: u64, node: NodeId) -> Reply {
        let entry = match self.log_at(log, epoch) {
            Ok(entry) => entry,
            Err(reply) => return reply,
        };
        if entry.leaving != Some(node) || entry.leader == node {
            return Reply::Refused(format!("log {log}: node {node} is not leaving it"));
        }
        (entry.replicas, entry.quorum) = entry.replicas_after(None);
        entry.in_sync.retain(|r| *r != node);
        entry.leaving = None;
        entry.next_epoch(log)
    }

    fn start_handover(&mut self, log: &str, epoch: u64, to: NodeId) -> Reply {
        let entry = match self.at_epoch(log, epoch, to) {
            Ok(entry) => entry,
            Err(reply) => return reply,
        };
        if entry.leader == to {
            return Reply::Refused(format!("log {log}: node {to} leads epoch {epoch} already"));
        }
        match &entry.handover {
            Some(h) if h.under_way(epoch) == Some(to) => {}
            Some(h) if h.under_way(epoch).is_some() => {
                return Reply::Refused(format!("log {log}: a handover to node {} is under way", h.to));
            }
            _ => entry.handover = Some(Handover { to, epoch, step: HandoverStep::Fenced, reason: String::new() }),
        }
        Reply::Leader { log: log.to_owned(), leader: entry.leader, epoch }
    }

    fn place_log(&mut self, log: &str, expected_epoch: u64) -> Reply {
        if let Some(placed) = self.logs.get(log).filter(|_| log != ALL_LOGS) {
            return Reply::Leader { log: log.to_owned(), leader: placed.leader, epoch: placed.epoch };
        }
        if log == ALL_LOGS || log.is_empty() {
            return Reply::Refused(format!("{log:?} is not a log name"));
        }
        let all = match self.log_at(ALL_LOGS, expected_epoch) {
            Ok(all) => all,
            Err(reply) => return reply,
        };
        if !all.learners.is_empty() || all.leaving.is_some() {
            return Reply::Refused("the replicas of every log are changing: place the log once that is done".into());
        }
        if all.handover.as_ref().is_some_and(|h| h.under_way(all.epoch).is_some()) {
            return Reply::Refused("every log is being handed over: place the log once that is done".into());
        }
        let Some(epoch) = all.epoch.checked_add(1) else {
            return Reply::Refused(format!("log {log}: no epoch after {}", all.epoch));
        };
        let placed = LogMap { epoch, handover: None, data_loss: Vec::new(), ..all.clone() };
        let leader = placed.leader;
        self.logs.insert(log.to_owned(), placed);
        Reply::Leader { log: log.to_owned(), leader, epoch }
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
        let entry = LogMap {
            leader,
            epoch: 1,
            replicas: sorted.clone(),
            quorum,
            in_sync: vec![leader],
            data_loss: Vec::new(),
            handover: None,
            learners: Vec::new(),
            leaving: None,
        };
        self.logs.insert(log.to_owned(), entry);
        Reply::Leader { log: log.to_owned(), leader, epoch: 1 }
    }

    fn elect(&mut self, log: &str, expected_epoch: u64, leader: NodeId, reason: &ElectReason) -> Reply {
        let entry = match self.at_epoch(log, expected_epoch, leader) {
            Ok(entry) => entry,
            Err(reply) => return reply,
        };
        let Some(epoch) = entry.epoch.checked_add(1) else {
            return Reply::Refused(format!("log {log}: no epoch after {}", entry.epoch));
        };
        // A handover ends with the election of its target (and only while under way: after it
        // was given up, its leader may be writing again); any other election ends it too.
        let handing_over = entry.handover.as_ref().and_then(|h| h.under_way(expected_epoch));
        entry.handover = match reason {
            ElectReason::Handover if handing_over != Some(leader) => {
                return Reply::Refused(format!(
                    "log {log}: no handover of epoch {expected_epoch} to node {leader} is under way"
                ));
            }
            ElectReason::Handover => entry.handover.take().map(|h| Handover { step: HandoverStep::Promoted, ..h }),
            _ => None,
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

    fn register(map: &mut ClusterMap, node: NodeId) {
        map.apply_command(&Command::Register { node, data_addr: format!("127.0.0.1:{}", 7000 + node) });
    }

    fn leads(leader: NodeId, epoch: u64) -> Reply {
        Reply::Leader { log: "orders".into(), leader, epoch }
    }

    #[test]
    fn quorums_resize_as_majorities_stay_majorities_and_all_stays_all() {
        assert_eq!([2, 3, 4, 5, 6].map(|to| resized_quorum(2, 3, to)), [2, 2, 3, 3, 4]);
        assert_eq!([2, 3, 4].map(|to| resized_quorum(3, 3, to)), [2, 3, 4]);
        assert_eq!(resized_quorum(3, 4, 3), 2, "3 of 4 is a majority");
        assert_eq!(resized_quorum(4, 5, 4), 4, "4 of 5 (neither) kept");
        assert_eq!(resized_quorum(4, 5, 6), 4);
        assert_eq!(resized_quorum(4, 5, 3), 3, "never more than the replicas");
        assert_eq!(resized_quorum(1, 3, 4), 3, "never below a majority");
        assert_eq!(resized_quorum(1, 1, 2), 2);
        assert_eq!(resized_quorum(2, 2, 1), 1);
        assert_eq!(resized_quorum(2, 2, 3), 2, "shrunk to 2 of 2 and grown back: 2 of 3");
    }

    #[test]
    fn a_node_added_learns_first_then_joins_the_replicas_and_the_quorum() {
        let mut map = ClusterMap::default();
        create(&mut map);
        let add = Command::AddReplica { log: "orders".into(), expected_epoch: 1, node: 4 };
        assert!(matches!(map.apply_command(&add), Reply::Refused(m) if m.contains("not a registered member")));
        register(&mut map, 4);
        assert_eq!(map.apply_command(&add), leads(1, 2));
        assert_eq!(map.logs["orders"].learners, vec![4]);
        assert_eq!((map.logs["orders"].replicas.len(), map.logs["orders"].quorum), (3, 2));
        // A retry after a lost reply changes nothing.
        assert_eq!(map.apply_command(&add), Reply::Conflict { log: "orders".into(), leader: 1, epoch: 2 });
        let again = Command::AddReplica { log: "orders".into(), expected_epoch: 2, node: 4 };
        assert!(matches!(map.apply_command(&again), Reply::Refused(m) if m.contains("holds a copy already")));
        // A learner is elected by no one and leads nothing.
        assert!(matches!(map.apply_command(&elect(2, 4)), Reply::Refused(_)));
        let stale = Command::PromoteReplica { log: "orders".into(), epoch: 1, node: 4 };
        assert_eq!(map.apply_command(&stale), Reply::Conflict { log: "orders".into(), leader: 1, epoch: 2 });
        let not_learner = Command::PromoteReplica { log: "orders".into(), epoch: 2, node: 3 };
        assert!(matches!(map.apply_command(&not_learner), Reply::Refused(_)));
        let promote = Command::PromoteReplica { log: "orders".into(), epoch: 2, node: 4 };
        assert_eq!(map.apply_command(&promote), leads(1, 3));
        let orders = &map.logs["orders"];
        assert_eq!((orders.replicas.clone(), orders.quorum, orders.learners.len()), (vec![1, 2, 3, 4], 3, 0));
        assert!(orders.in_sync.contains(&4));
    }

    #[test]
    fn a_replica_leaves_only_through_its_leader_and_never_the_leader_itself() {
        let mut map = ClusterMap::default();
        create(&mut map);
        let remove = |node| Command::RemoveReplica { log: "orders".into(), expected_epoch: 1, node };
        assert!(matches!(map.apply_command(&remove(1)), Reply::Refused(m) if m.contains("hand it over first")));
        assert!(matches!(map.apply_command(&remove(7)), Reply::Refused(m) if m.contains("holds no copy")));
        assert_eq!(map.apply_command(&remove(3)), Reply::Done);
        assert_eq!(map.apply_command(&remove(3)), Reply::Done, "asked again: nothing changes");
        assert!(matches!(map.apply_command(&remove(2)), Reply::Refused(m) if m.contains("leaving it already")));
        assert_eq!((map.logs["orders"].epoch, map.logs["orders"].leaving), (1, Some(3)));
        assert_eq!(map.logs["orders"].replicas_after(None), (vec![1, 2], 2));
        assert_eq!(map.logs["orders"].replicas_after(Some(4)), (vec![1, 2, 3, 4], 3));
        let not_leaving = Command::RetireReplica { log: "orders".into(), epoch: 1, node: 2 };
        assert!(matches!(map.apply_command(&not_leaving), Reply::Refused(_)));
        let retire = Command::RetireReplica { log: "orders".into(), epoch: 1, node: 3 };
        assert_eq!(map.apply_command(&retire), leads(1, 2));
        let orders = &map.logs["orders"];
        assert_eq!((orders.replicas.clone(), orders.quorum, orders.leaving), (vec![1, 2], 2, None));
        assert_eq!(orders.in_sync, vec![1], "the leaving replica is no longer in sync, the others stay");
        assert_eq!(map.apply_command(&retire), Reply::Conflict { log: "orders".into(), leader: 1, epoch: 2 });
        // A learner goes at once.
        register(&mut map, 4);
        map.apply_command(&Command::AddReplica { log: "orders".into(), expected_epoch: 2, node: 4 });
        let drop_learner = Command::RemoveReplica { log: "orders".into(), expected_epoch: 3, node: 4 };
        assert_eq!(map.apply_command(&drop_learner), leads(1, 4));
        assert!(map.logs["orders"].learners.is_empty());
        assert!(matches!(map.apply_command(&Command::Unregister { node: 2 }), Reply::Refused(_)));
        assert_eq!(map.apply_command(&Command::Unregister { node: 4 }), Reply::Done);
        assert!(!map.members.contains_key(&4));
        // The last replica stays.
        let remove2 = Command::RemoveReplica { log: "orders".into(), expected_epoch: 4, node: 2 };
        map.apply_command(&remove2);
        map.apply_command(&Command::RetireReplica { log: "orders".into(), epoch: 4, node: 2 });
        assert_eq!(map.logs["orders"].replicas, vec![1]);
    }

    #[test]
    fn a_replica_leaving_four_leaves_a_majority_of_three_and_a_handover_target_stays() {
        let mut map = ClusterMap::default();
        create(&mut map);
        register(&mut map, 4);
        map.apply_command(&Command::AddReplica { log: "orders".into(), expected_epoch: 1, node: 4 });
        map.apply_command(&Command::PromoteReplica { log: "orders".into(), epoch: 2, node: 4 });
        map.apply_command(&Command::SetInSync { log: "orders".into(), epoch: 3, in_sync: vec![1, 2, 3, 4] });
        assert_eq!((map.logs["orders"].replicas.len(), map.logs["orders"].quorum), (4, 3));
        let start = Command::StartHandover { log: "orders".into(), epoch: 3, to: 3 };
        assert_eq!(map.apply_command(&start), leads(1, 3));
        let remove = |node| Command::RemoveReplica { log: "orders".into(), expected_epoch: 3, node };
        assert!(matches!(map.apply_command(&remove(3)), Reply::Refused(m) if m.contains("handover to node 3")));
        assert_eq!(map.apply_command(&remove(2)), Reply::Done);
        let retire = Command::RetireReplica { log: "orders".into(), epoch: 3, node: 2 };
        assert_eq!(map.apply_command(&retire), leads(1, 4));
        let orders = &map.logs["orders"];
        assert_eq!((orders.replicas.clone(), orders.quorum), (vec![1, 3, 4], 2));
        assert_eq!(orders.in_sync, vec![1, 3, 4]);
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

    #[test]
    fn status_names_each_handover_step() {
        let names: Vec<&str> =
            [HandoverStep::Fenced, HandoverStep::CaughtUp, HandoverStep::Promoted, HandoverStep::Aborted]
                .into_iter()
                .map(HandoverStep::name)
                .collect();
        assert_eq!(names, ["fenced", "caught-up", "promoted", "aborted"]);
    }

    #[test]
    fn a_log_created_again_the_same_way_is_answered_and_otherwise_refused() {
        let mut map = ClusterMap::default();
        create(&mut map);
        let again = Command::CreateLog { log: "orders".into(), replicas: vec![3, 2, 1], quorum: 2, leader: 2 };
        assert_eq!(map.apply_command(&again), Reply::Leader { log: "orders".into(), leader: 1, epoch: 1 });
        let other_quorum = Command::CreateLog { log: "orders".into(), replicas: vec![1, 2, 3], quorum: 3, leader: 1 };
        assert!(matches!(map.apply_command(&other_quorum), Reply::Refused(_)));
        let other_replicas = Command::CreateLog { log: "orders".into(), replicas: vec![1, 2], quorum: 2, leader: 1 };
        assert!(matches!(map.apply_command(&other_replicas), Reply::Refused(_)));
        // Every replica may be needed for a commit.
        let all = Command::CreateLog { log: "all".into(), replicas: vec![1, 2, 3], quorum: 3, leader: 1 };
        assert!(matches!(map.apply_command(&all), Reply::Leader { .. }));
    }

    /// A log placed alone starts from `*` as it is, in the next epoch, and from then on its
    /// epochs are its own: an election of `*` does not move it, nor it `*`.
    #[test]
    fn a_log_placed_alone_takes_the_next_epoch_and_goes_its_own_way() {
        let mut map = ClusterMap::default();
        map.apply_command(&Command::CreateLog { log: ALL_LOGS.into(), replicas: vec![1, 2, 3], quorum: 2, leader: 1 });
        let place = |epoch| Command::PlaceLog { log: "orders".into(), expected_epoch: epoch };
        assert!(matches!(map.apply_command(&place(0)), Reply::Conflict { .. }));
        assert_eq!(map.apply_command(&place(1)), leads(1, 2));
        assert_eq!(map.apply_command(&place(1)), leads(1, 2), "placed again: the same");
        let orders = map.logs["orders"].clone();
        assert_eq!((orders.replicas, orders.quorum, orders.epoch), (vec![1, 2, 3], 2, 2));
        assert_eq!(map.logs[ALL_LOGS].epoch, 1, "* keeps its epoch");
        map.apply_command(&Command::Elect {
            log: "orders".into(),
            expected_epoch: 2,
            leader: 3,
            reason: ElectReason::Failover,
        });
        assert_eq!((map.logs["orders"].leader, map.logs[ALL_LOGS].leader), (3, 1));
        for bad in [ALL_LOGS, ""] {
            let command = Command::PlaceLog { log: bad.into(), expected_epoch: 1 };
            assert!(matches!(map.apply_command(&command), Reply::Refused(_)), "{bad:?}");
        }
        map.apply_command(&Command::StartHandover { log: ALL_LOGS.into(), epoch: 1, to: 2 });
        let refused = map.apply_command(&Command::PlaceLog { log: "events".into(), expected_epoch: 1 });
        assert!(matches!(refused, Reply::Refused(_)), "placed while every log is handed over: {refused:?}");
    }

    #[test]
    fn the_cluster_id_is_issued_once() {
        let mut map = ClusterMap::default();
        map.apply_command(&Command::SetClusterId { id: 0 });
        assert_eq!(map.cluster_id, 0, "0 is no id");
        map.apply_command(&Command::SetClusterId { id: 7 });
        map.apply_command(&Command::SetClusterId { id: 9 });
        assert_eq!(map.cluster_id, 7);
    }

    fn start_handover(epoch: u64, to: NodeId) -> Command {
        Command::StartHandover { log: "orders".into(), epoch, to }
    }

    fn handover_elect(expected_epoch: u64, leader: NodeId) -> Command {
        Command::Elect { log: "orders".into(), expected_epoch, leader, reason: ElectReason::Handover }
    }

    #[test]
    fn a_handover_goes_fenced_caught_up_promoted_and_each_step_may_be_sent_again() {
        let mut map = ClusterMap::default();
        create(&mut map);
        assert!(matches!(map.apply_command(&start_handover(1, 2)), Reply::Leader { leader: 1, epoch: 1, .. }));
        assert!(matches!(map.apply_command(&start_handover(1, 2)), Reply::Leader { .. }), "the same start again");
        assert!(matches!(map.apply_command(&start_handover(1, 3)), Reply::Refused(m) if m.contains("under way")));
        let step = |map: &ClusterMap| map.logs["orders"].handover.as_ref().map(|h| h.step);
        assert_eq!(step(&map), Some(HandoverStep::Fenced));
        let caught_up = Command::HandoverStep { log: "orders".into(), epoch: 1, step: HandoverStep::CaughtUp };
        assert_eq!(map.apply_command(&caught_up), Reply::Done);
        assert_eq!(map.apply_command(&caught_up), Reply::Done);
        assert_eq!(step(&map), Some(HandoverStep::CaughtUp));
        assert_eq!(
            map.apply_command(&handover_elect(1, 2)),
            Reply::Leader { log: "orders".into(), leader: 2, epoch: 2 }
        );
        assert_eq!(step(&map), Some(HandoverStep::Promoted));
        assert!(matches!(map.apply_command(&handover_elect(1, 2)), Reply::Conflict { epoch: 2, .. }));
        // A step of a handover that is over changes nothing, nor does giving it up.
        assert!(matches!(map.apply_command(&caught_up), Reply::Conflict { .. }));
        let late = Command::AbortHandover { log: "orders".into(), epoch: 1, reason: "late".into() };
        assert!(matches!(map.apply_command(&late), Reply::Conflict { epoch: 2, .. }));
        assert_eq!(step(&map), Some(HandoverStep::Promoted));
        // The next one starts from the new leader.
        assert!(matches!(map.apply_command(&start_handover(2, 1)), Reply::Leader { leader: 2, epoch: 2, .. }));
        assert!(matches!(map.apply_command(&start_handover(1, 3)), Reply::Conflict { epoch: 2, .. }), "a stale start");
    }

    #[test]
    fn a_handover_election_takes_effect_only_while_that_handover_is_under_way() {
        let mut map = ClusterMap::default();
        create(&mut map);
        // None started: a leader that never stopped taking appends must not be replaced so.
        assert!(matches!(map.apply_command(&handover_elect(1, 2)), Reply::Refused(_)));
        map.apply_command(&start_handover(1, 2));
        assert!(matches!(map.apply_command(&handover_elect(1, 3)), Reply::Refused(_)), "another target");
        let abort = Command::AbortHandover { log: "orders".into(), epoch: 1, reason: "node 2 did not catch up".into() };
        assert_eq!(map.apply_command(&abort), Reply::Done);
        assert_eq!(map.apply_command(&abort), Reply::Done, "given up again: the same");
        let handover = map.logs["orders"].handover.clone().unwrap();
        assert_eq!((handover.step, handover.reason.as_str()), (HandoverStep::Aborted, "node 2 did not catch up"));
        // Given up, its leader takes appends again: its election would lose them.
        let before = map.clone();
        assert!(matches!(map.apply_command(&handover_elect(1, 2)), Reply::Refused(_)));
        let caught_up = Command::HandoverStep { log: "orders".into(), epoch: 1, step: HandoverStep::CaughtUp };
        assert!(matches!(map.apply_command(&caught_up), Reply::Conflict { .. }));
        assert_eq!(map, before);
        // Started again, then overtaken by a failover: that ends it.
        map.apply_command(&start_handover(1, 3));
        assert_eq!(map.logs["orders"].handover.as_ref().unwrap().step, HandoverStep::Fenced);
        assert!(matches!(map.apply_command(&elect(1, 2)), Reply::Leader { epoch: 2, .. }));
        assert_eq!(map.logs["orders"].handover, None);
        let late = Command::AbortHandover { log: "orders".into(), epoch: 1, reason: String::new() };
        assert!(matches!(map.apply_command(&late), Reply::Conflict { epoch: 2, .. }));
    }

    #[test]
    fn a_handover_to_the_leader_or_outside_the_replicas_is_refused() {
        let mut map = ClusterMap::default();
        create(&mut map);
        assert!(matches!(map.apply_command(&start_handover(1, 1)), Reply::Refused(m) if m.contains("leads")));
        assert!(matches!(map.apply_command(&start_handover(1, 9)), Reply::Refused(m) if m.contains("replicas")));
        assert_eq!(map.logs["orders"].handover, None);
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
