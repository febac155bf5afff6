//! Choosing a log's next leader when its leader fails: pure functions of the replicas'
//! reports, without I/O, called by the failover controller and by the simulator alike.
//!
//! A log has a replica set of `n` nodes and a commit quorum of `k` ([`Quorum`]): a record is
//! committed once it is durable on `k` replicas, the leader among them, and a record of the
//! leader's own epoch is too, or once every replica holds it
//! ([`crate::proto::quorum_commit_end`]; section 5.4.2 of the Raft paper).
//!
//! Before it elects the leader of a new epoch `E`, the controller asks the replicas for a
//! [`Report`]. **A replica first promises, durably, to refuse anything of an epoch below `E`
//! (it is fenced), and only then reports** its last epoch and durable end. Without the fence,
//! the old leader could commit a record after a report was taken, on replicas whose reports
//! said they lacked it, and the new leader would not hold it.
//!
//! [`elect`] needs reports from `n - k + 1` distinct replicas: any `k` replicas and any
//! `n - k + 1` share one, so every committed record is on a replica that reported. The most up
//! to date report, the largest `(last epoch, durable end)` (Raft's up-to-date rule), then
//! holds them all. Automatic failover also needs `k > n / 2` ([`check_failover`]): an
//! election then needs no more replicas than a commit does, and any two commit quorums share a
//! replica, which follows one leader per epoch. When reports cannot be had from enough
//! replicas, an operator may promote one anyway; [`forced_promotion`] says which records that
//! may lose. PROTOCOL.md, "Election (failover)", describes the whole.
//!
//! Nothing here iterates a `HashMap`: the same reports always choose the same node.

use std::collections::BTreeSet;
use std::fmt;

use crate::message::NodeId;
use crate::proto::Quorum;

/// What one replica says of its copy of a log, after it has promised to refuse anything of an
/// epoch below the one being elected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Report {
    /// The replica.
    pub node: NodeId,
    /// The epoch of its last durable batch (0: it holds none, or none with an epoch).
    pub last_epoch: u64,
    /// One past the last record it has synced.
    pub durable_end: u64,
}

impl Report {
    /// The order of being up to date: a later last epoch first, then a longer log.
    fn up_to_date(&self) -> (u64, u64) {
        (self.last_epoch, self.durable_end)
    }
}

/// A log's replicas and its commit quorum: what an election needs besides the reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSet {
    /// The log's name, for error messages.
    pub log: String,
    /// Every node holding a copy of the log, the failed leader included.
    pub replicas: Vec<NodeId>,
    /// Copies needed to commit.
    pub quorum: Quorum,
}

impl ReplicaSet {
    /// Copies needed to commit (`k`), bounded by the number of replicas (`n`); 0 without
    /// replicas.
    ///
    /// ```
    /// use tern_replication::{election::ReplicaSet, proto::Quorum};
    /// let set = ReplicaSet { log: "orders".into(), replicas: vec![1, 2, 3], quorum: Quorum::All };
    /// assert_eq!(set.quorum_size(), 3);
    /// ```
    pub fn quorum_size(&self) -> usize {
        match self.replicas.len() {
            0 => 0,
            replicas => self.quorum.size(replicas),
        }
    }

    /// Reports [`elect`] needs: `n - k + 1`, the fewest replicas that share one with every
    /// commit quorum.
    ///
    /// ```
    /// use tern_replication::{election::ReplicaSet, proto::Quorum};
    /// let set = ReplicaSet { log: "orders".into(), replicas: vec![1, 2, 3, 4, 5], quorum: Quorum::Count(3) };
    /// assert_eq!(set.reports_needed(), 3);
    /// ```
    pub fn reports_needed(&self) -> usize {
        self.replicas.len() + 1 - self.quorum_size()
    }

    /// The smallest commit quorum that allows automatic failover: more than half the replicas.
    ///
    /// ```
    /// use tern_replication::{election::ReplicaSet, proto::Quorum};
    /// let set = ReplicaSet { log: "orders".into(), replicas: vec![1, 2, 3, 4], quorum: Quorum::Count(2) };
    /// assert_eq!(set.failover_quorum_min(), 3);
    /// ```
    pub fn failover_quorum_min(&self) -> usize {
        self.replicas.len() / 2 + 1
    }

    /// Checks the replica set itself: not empty, no node twice.
    fn check_members(&self) -> Result<(), ElectionError> {
        if self.replicas.is_empty() {
            return Err(ElectionError::NoReplicas { log: self.log.clone() });
        }
        let mut seen = BTreeSet::new();
        for node in &self.replicas {
            if !seen.insert(*node) {
                return Err(ElectionError::ReplicaListedTwice { log: self.log.clone(), node: *node });
            }
        }
        Ok(())
    }

    /// Checks that every report comes from a replica, and no replica reported twice: a
    /// stranger claiming an id, or one node counted twice, must not make up the numbers.
    fn check_reports(&self, reports: &[Report]) -> Result<(), ElectionError> {
        let mut seen = BTreeSet::new();
        for report in reports {
            if !self.replicas.contains(&report.node) {
                let replicas = self.replicas.clone();
                return Err(ElectionError::NotAReplica { log: self.log.clone(), node: report.node, replicas });
            }
            if !seen.insert(report.node) {
                return Err(ElectionError::ReportedTwice { log: self.log.clone(), node: report.node });
            }
        }
        Ok(())
    }

    /// The replicas that did not report, in the replica set's order.
    fn unreported(&self, reports: &[Report]) -> Vec<NodeId> {
        self.replicas.iter().copied().filter(|node| !reports.iter().any(|r| r.node == *node)).collect()
    }
}

/// Why an election or a forced promotion chose nobody.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElectionError {
    /// The replica set is empty.
    #[error("log {log} has no replicas to elect a leader from")]
    NoReplicas {
        /// The log.
        log: String,
    },
    /// A node is listed twice in the replica set.
    #[error("log {log}: node {node} is listed twice in its replica set")]
    ReplicaListedTwice {
        /// The log.
        log: String,
        /// The node.
        node: NodeId,
    },
    /// The commit quorum is too small for automatic failover.
    #[error(
        "automatic failover needs a commit quorum of more than half the replicas: log {log} has \
         {replicas} replicas and quorum {quorum}; use --quorum {quorum_min} or more, or promote a \
         replica by hand with tern promote --force, which says which records may be lost"
    )]
    QuorumTooSmall {
        /// The log.
        log: String,
        /// Replicas (`n`).
        replicas: usize,
        /// Copies needed to commit (`k`).
        quorum: usize,
        /// The smallest quorum that allows failover.
        quorum_min: usize,
    },
    /// A report came from a node outside the replica set.
    #[error("log {log}: node {node} reported, but its replicas are {replicas:?}")]
    NotAReplica {
        /// The log.
        log: String,
        /// The node that reported.
        node: NodeId,
        /// The replica set.
        replicas: Vec<NodeId>,
    },
    /// Two reports came from the same node.
    #[error("log {log}: node {node} reported twice; a node counts once")]
    ReportedTwice {
        /// The log.
        log: String,
        /// The node.
        node: NodeId,
    },
    /// Too few replicas reported to be sure the chosen one holds every committed record.
    #[error(
        "log {log}: {reported} of its {replicas} replicas reported; a leader sure to hold every \
         committed record needs {needed}, {missing} more (not heard from: {unreported:?})"
    )]
    TooFewReports {
        /// The log.
        log: String,
        /// Distinct replicas that reported.
        reported: usize,
        /// Replicas (`n`).
        replicas: usize,
        /// Reports needed (`n - k + 1`).
        needed: usize,
        /// How many more reports are needed.
        missing: usize,
        /// The replicas that did not report.
        unreported: Vec<NodeId>,
    },
    /// The preferred node is not one of the replicas.
    #[error("log {log}: the preferred node {node} is not one of its replicas {replicas:?}")]
    PreferredNotAReplica {
        /// The log.
        log: String,
        /// The preferred node.
        node: NodeId,
        /// The replica set.
        replicas: Vec<NodeId>,
    },
    /// The node to promote by force did not report.
    #[error("log {log}: node {node}, to be promoted, did not report where its copy ends")]
    TargetNotReported {
        /// The log.
        log: String,
        /// The node.
        node: NodeId,
    },
}

/// Checks that `set` allows automatic failover: a commit quorum of more than half the
/// replicas, and a replica set without duplicates.
///
/// With `k > n / 2`, an election needs `n - k + 1 <= k` reports: whenever enough replicas are
/// up to commit, enough are up to elect. With `k <= n / 2` a log could go on committing with
/// fewer replicas up than an election needs (with `k = 1` every replica would have to report,
/// the failed leader too). And any two commit quorums share a replica, which follows one
/// leader per epoch: should two leaders of one epoch ever be elected, they could not both
/// commit. (Two elections may still hear from disjoint sets of replicas, with 4 replicas and
/// a quorum of 3 for instance: the controller must run one election at a time, each for a new
/// epoch.)
///
/// # Errors
/// [`ElectionError::QuorumTooSmall`], whose message names the numbers and the ways out;
/// [`ElectionError::NoReplicas`]; [`ElectionError::ReplicaListedTwice`].
///
/// # Examples
/// ```
/// use tern_replication::election::{check_failover, ReplicaSet};
/// use tern_replication::proto::Quorum;
/// let mut set = ReplicaSet { log: "orders".into(), replicas: vec![1, 2, 3], quorum: Quorum::Count(1) };
/// let refused = check_failover(&set).unwrap_err().to_string();
/// assert!(refused.contains("log orders has 3 replicas and quorum 1; use --quorum 2"), "{refused}");
/// set.quorum = Quorum::Count(2);
/// assert_eq!(check_failover(&set), Ok(()));
/// ```
pub fn check_failover(set: &ReplicaSet) -> Result<(), ElectionError> {
    set.check_members()?;
    let (replicas, quorum) = (set.replicas.len(), set.quorum_size());
    if 2 * quorum <= replicas {
        let quorum_min = set.failover_quorum_min();
        return Err(ElectionError::QuorumTooSmall { log: set.log.clone(), replicas, quorum, quorum_min });
    }
    Ok(())
}

/// Chooses the leader of a new epoch from the replicas' reports: the most up to date one,
/// which holds every committed record. Returns its report.
///
/// The caller MUST take each report only after that replica has durably promised to refuse
/// anything of an epoch below the one being elected (module docs): otherwise the old leader
/// may commit after the reports were taken, and the chosen replica lack the record.
///
/// Most up to date is the largest `(last_epoch, durable_end)`, as Raft's up-to-date rule.
/// Among equals (which hold the same records) `preferred` wins if it is one of them, else the
/// lowest node id. That this holds every committed record rests on a leader committing
/// records of earlier epochs only with one of its own ([`crate::proto::quorum_commit_end`]).
///
/// # Errors
/// [`ElectionError::TooFewReports`] with fewer than [`ReplicaSet::reports_needed`] reports,
/// saying how many more and from whom; [`ElectionError::NotAReplica`] or
/// [`ElectionError::ReportedTwice`] for a report from outside the set or a second one from the
/// same node; [`ElectionError::PreferredNotAReplica`]; and whatever [`check_failover`] refuses.
///
/// # Examples
/// ```
/// use tern_replication::election::{elect, ReplicaSet, Report};
/// use tern_replication::proto::Quorum;
/// # fn main() -> Result<(), tern_replication::election::ElectionError> {
/// let set = ReplicaSet { log: "orders".into(), replicas: vec![1, 2, 3], quorum: Quorum::Count(2) };
/// // Node 1 led epoch 4 and failed; nodes 2 and 3 are fenced for epoch 5 and report.
/// let reports = [
///     Report { node: 2, last_epoch: 3, durable_end: 900 }, // longer, but an older epoch
///     Report { node: 3, last_epoch: 4, durable_end: 750 },
/// ];
/// assert_eq!(elect(&set, &reports, None)?.node, 3);
/// // One report is not enough: node 1 and node 2 may be the quorum of a record node 3 lacks.
/// assert!(elect(&set, &reports[1..], None).is_err());
/// # Ok(()) }
/// ```
pub fn elect(set: &ReplicaSet, reports: &[Report], preferred: Option<NodeId>) -> Result<Report, ElectionError> {
    check_failover(set)?;
    set.check_reports(reports)?;
    if let Some(node) = preferred.filter(|node| !set.replicas.contains(node)) {
        return Err(ElectionError::PreferredNotAReplica { log: set.log.clone(), node, replicas: set.replicas.clone() });
    }
    let needed = set.reports_needed();
    // Distinct members of the set, as checked above.
    let reported = reports.len();
    if reported < needed {
        return Err(ElectionError::TooFewReports {
            log: set.log.clone(),
            reported,
            replicas: set.replicas.len(),
            needed,
            missing: needed - reported,
            unreported: set.unreported(reports),
        });
    }
    // Node ids are distinct, so the key orders the reports totally: the same reports in any
    // order choose the same node.
    let best =
        reports.iter().max_by_key(|r| (r.up_to_date(), Some(r.node) == preferred, std::cmp::Reverse(r.node))).copied();
    Ok(best.expect("a report: at least one is needed, and as many arrived"))
}

/// What promoting a node by force may lose, from [`forced_promotion`]. Its `Display` says it
/// in a sentence for the operator, also when nothing reported is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLoss {
    /// The log.
    pub log: String,
    /// The node promoted.
    pub target: NodeId,
    /// The target's durable end: records from here on are not in its copy.
    pub from: u64,
    /// The highest durable end among replicas more up to date than the target (`from` when
    /// none is). Records `from..to_at_least` are lost, some of them perhaps committed; a
    /// replica that did not report may hold more.
    pub to_at_least: u64,
    /// Replicas whose last batch is of a later epoch than the target's: they hold records the
    /// target lacks, some perhaps below `from`. Where their copies part from the target's is
    /// found when the new leader checks them; what it cuts is kept in quarantine files.
    pub later_epochs: Vec<NodeId>,
    /// Replicas that did not report: they may hold committed records past `to_at_least`.
    pub unreported: Vec<NodeId>,
}

impl DataLoss {
    /// True when no replica holds a record that the target lacks and that may have been
    /// committed: every replica reported, and none is more up to date than the target.
    ///
    /// ```
    /// use tern_replication::election::{forced_promotion, ReplicaSet, Report};
    /// use tern_replication::proto::Quorum;
    /// let set = ReplicaSet { log: "orders".into(), replicas: vec![1, 2], quorum: Quorum::Count(1) };
    /// let reports = [Report { node: 1, last_epoch: 2, durable_end: 40 }, Report { node: 2, last_epoch: 2, durable_end: 30 }];
    /// assert!(forced_promotion(&set, 1, &reports).unwrap().is_none());
    /// assert!(!forced_promotion(&set, 2, &reports).unwrap().is_none());
    /// ```
    pub fn is_none(&self) -> bool {
        self.to_at_least == self.from && self.later_epochs.is_empty() && self.unreported.is_empty()
    }
}

impl fmt::Display for DataLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (log, target, from, to) = (&self.log, self.target, self.from, self.to_at_least);
        if self.is_none() {
            return write!(
                f,
                "promoting node {target} to lead log {log} loses no committed record: every replica \
                 reported, and none is more up to date than node {target}, which holds {from} records"
            );
        }
        write!(f, "promoting node {target} to lead log {log} may lose committed records")?;
        if to > from {
            write!(f, "; offsets {from}..{to} are on other replicas and not on node {target}")?;
        }
        if !self.later_epochs.is_empty() {
            write!(
                f,
                "; nodes {:?} hold records of a later epoch than node {target}'s last, perhaps from \
                 below offset {from} (the new leader cuts them into quarantine files)",
                self.later_epochs
            )?;
        }
        if !self.unreported.is_empty() {
            write!(
                f,
                "; nodes {:?} did not report and may hold more, so the loss may end past offset {to}",
                self.unreported
            )?;
        }
        Ok(())
    }
}

/// What promoting `target` by force may lose, when [`elect`] cannot be used (too few reports,
/// or a quorum too small for failover). `reports` holds the target's own report and any
/// others, each taken after that replica was fenced, as for [`elect`]. Never silent: the
/// operator is shown the [`DataLoss`], also when nothing is lost.
///
/// Replicas more up to date than the target (by [`elect`]'s rule) may hold committed records it
/// lacks: those of the target's last epoch hold records `from..` their durable end; those of a
/// later one hold records from where their copy parts from the target's, which no report says.
/// A replica with an earlier last epoch holds nothing committed that the target lacks: the
/// leader of the target's last epoch held every record committed before it was elected (if
/// [`elect`] chose it), the target holds that leader's log up to past where its epoch began,
/// and leaders of earlier epochs could not commit after that election.
///
/// # Errors
/// [`ElectionError::TargetNotReported`] when no report is the target's;
/// [`ElectionError::NotAReplica`] (also for a target outside the set),
/// [`ElectionError::ReportedTwice`], [`ElectionError::NoReplicas`],
/// [`ElectionError::ReplicaListedTwice`]. The quorum is not checked.
///
/// # Examples
/// ```
/// use tern_replication::election::{forced_promotion, ReplicaSet, Report};
/// use tern_replication::proto::Quorum;
/// # fn main() -> Result<(), tern_replication::election::ElectionError> {
/// let set = ReplicaSet { log: "orders".into(), replicas: vec![1, 2, 3], quorum: Quorum::Count(2) };
/// // Only nodes 2 and 3 answer, and the operator promotes node 2.
/// let reports = [Report { node: 2, last_epoch: 4, durable_end: 100 }, Report { node: 3, last_epoch: 4, durable_end: 130 }];
/// let loss = forced_promotion(&set, 2, &reports)?;
/// assert_eq!((loss.from, loss.to_at_least, loss.unreported), (100, 130, vec![1]));
/// # Ok(()) }
/// ```
pub fn forced_promotion(set: &ReplicaSet, target: NodeId, reports: &[Report]) -> Result<DataLoss, ElectionError> {
    set.check_members()?;
    if !set.replicas.contains(&target) {
        return Err(ElectionError::NotAReplica { log: set.log.clone(), node: target, replicas: set.replicas.clone() });
    }
    set.check_reports(reports)?;
    let own = reports
        .iter()
        .find(|r| r.node == target)
        .copied()
        .ok_or(ElectionError::TargetNotReported { log: set.log.clone(), node: target })?;
    let ahead = || reports.iter().filter(|r| r.up_to_date() > own.up_to_date());
    let to_at_least = ahead().map(|r| r.durable_end).fold(own.durable_end, u64::max);
    let mut later_epochs: Vec<NodeId> = ahead().filter(|r| r.last_epoch > own.last_epoch).map(|r| r.node).collect();
    later_epochs.sort_unstable();
    Ok(DataLoss {
        log: set.log.clone(),
        target,
        from: own.durable_end,
        to_at_least,
        later_epochs,
        unreported: set.unreported(reports),
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

    use super::*;
    use crate::message::Message;
    use crate::proto::{
        quorum_commit_end, Follower, FollowerAction, FollowerInput, Leader, LeaderAction, LeaderConfig, LeaderInput,
    };

    fn set(replicas: &[NodeId], quorum: usize) -> ReplicaSet {
        ReplicaSet { log: "l".into(), replicas: replicas.to_vec(), quorum: Quorum::Count(quorum) }
    }

    fn report(node: NodeId, last_epoch: u64, durable_end: u64) -> Report {
        Report { node, last_epoch, durable_end }
    }

    #[test]
    fn too_few_reports_elect_nobody_and_say_how_many_more_and_from_whom() {
        let five = set(&[1, 2, 3, 4, 5], 3);
        assert_eq!(five.reports_needed(), 3);
        let reports = [report(4, 2, 10), report(2, 2, 12)];
        let refused = elect(&five, &reports, None).unwrap_err();
        let want = ElectionError::TooFewReports {
            log: "l".into(),
            reported: 2,
            replicas: 5,
            needed: 3,
            missing: 1,
            unreported: vec![1, 3, 5],
        };
        assert_eq!(refused, want);
        let message = refused.to_string();
        assert!(message.contains("2 of its 5 replicas reported") && message.contains("needs 3, 1 more"), "{message}");
        assert!(elect(&five, &[], None).is_err(), "no report at all");
        let third = [report(4, 2, 10), report(2, 2, 12), report(5, 1, 40)];
        assert_eq!(elect(&five, &third, None), Ok(report(2, 2, 12)));
        // All must report when all must commit: any one may hold a record the others lack.
        let all = set(&[1, 2, 3], 3);
        assert_eq!(all.reports_needed(), 1);
        assert_eq!(elect(&all, &[report(3, 1, 5)], None), Ok(report(3, 1, 5)));
    }

    #[test]
    fn a_report_from_outside_the_replica_set_is_refused() {
        let three = set(&[1, 2, 3], 2);
        let reports = [report(1, 1, 5), report(9, 7, 500)];
        let refused = elect(&three, &reports, None).unwrap_err();
        assert_eq!(refused, ElectionError::NotAReplica { log: "l".into(), node: 9, replicas: vec![1, 2, 3] });
        assert!(refused.to_string().contains("node 9 reported, but its replicas are [1, 2, 3]"), "{refused}");
        // Refused, not skipped, also when enough members reported besides.
        let more = [report(1, 1, 5), report(2, 1, 5), report(9, 7, 500)];
        assert!(matches!(elect(&three, &more, None), Err(ElectionError::NotAReplica { node: 9, .. })));
    }

    #[test]
    fn a_node_reporting_twice_is_refused_and_never_counts_twice() {
        let three = set(&[1, 2, 3], 2);
        // Node 2 alone is not enough, however many times it answers (a stranger claiming its
        // id, or a retried request counted again).
        let twice = [report(2, 1, 5), report(2, 1, 5)];
        let refused = elect(&three, &twice, None).unwrap_err();
        assert_eq!(refused, ElectionError::ReportedTwice { log: "l".into(), node: 2 });
        let differing = [report(2, 1, 5), report(3, 1, 4), report(2, 9, 900)];
        assert!(matches!(elect(&three, &differing, None), Err(ElectionError::ReportedTwice { node: 2, .. })));
    }

    #[test]
    fn a_quorum_of_half_the_replicas_or_less_refuses_failover() {
        let message = check_failover(&set(&[1, 2, 3], 1)).unwrap_err().to_string();
        assert_eq!(
            message,
            "automatic failover needs a commit quorum of more than half the replicas: log l has 3 replicas \
             and quorum 1; use --quorum 2 or more, or promote a replica by hand with tern promote --force, \
             which says which records may be lost"
        );
        for (replicas, quorum, quorum_min) in [(2, 1, 2), (3, 1, 2), (4, 1, 3), (4, 2, 3), (5, 2, 3), (6, 3, 4)] {
            let nodes: Vec<NodeId> = (1..=replicas).collect();
            let too_small = set(&nodes, quorum as usize);
            let want = ElectionError::QuorumTooSmall {
                log: "l".into(),
                replicas: replicas as usize,
                quorum: quorum as usize,
                quorum_min,
            };
            assert_eq!(check_failover(&too_small), Err(want.clone()));
            // Refused by `elect` too, even with every replica's report.
            let reports: Vec<Report> = nodes.iter().map(|n| report(*n, 1, 10)).collect();
            assert_eq!(elect(&too_small, &reports, None), Err(want));
        }
        for (replicas, quorum) in [(1, 1), (2, 2), (3, 2), (3, 3), (4, 3), (5, 3), (5, 4)] {
            let nodes: Vec<NodeId> = (1..=replicas).collect();
            assert_eq!(check_failover(&set(&nodes, quorum)), Ok(()), "{replicas} replicas, quorum {quorum}");
        }
        let leader_only = ReplicaSet { quorum: Quorum::Leader, ..set(&[1, 2, 3], 2) };
        assert!(matches!(check_failover(&leader_only), Err(ElectionError::QuorumTooSmall { quorum: 1, .. })));
        let all = ReplicaSet { quorum: Quorum::All, ..set(&[1, 2, 3], 2) };
        assert_eq!(check_failover(&all), Ok(()));
    }

    #[test]
    fn an_empty_replica_set_or_one_listing_a_node_twice_is_refused() {
        let empty = set(&[], 1);
        assert_eq!(check_failover(&empty), Err(ElectionError::NoReplicas { log: "l".into() }));
        assert_eq!(elect(&empty, &[], None), Err(ElectionError::NoReplicas { log: "l".into() }));
        // Listed twice, node 2 would stand for two of the copies a quorum counts.
        let doubled = set(&[1, 2, 2], 2);
        assert_eq!(check_failover(&doubled), Err(ElectionError::ReplicaListedTwice { log: "l".into(), node: 2 }));
        assert!(forced_promotion(&doubled, 1, &[report(1, 1, 1)]).is_err());
    }

    #[test]
    fn a_later_last_epoch_wins_over_a_longer_log_and_then_the_longer_log_wins() {
        let three = set(&[1, 2, 3], 2);
        // Node 2's long tail of epoch 3 was never committed: the leader of epoch 4 began
        // where it stood, which is where node 3's copy ends.
        assert_eq!(elect(&three, &[report(2, 3, 900), report(3, 4, 750)], None), Ok(report(3, 4, 750)));
        assert_eq!(elect(&three, &[report(2, 4, 760), report(3, 4, 750)], None), Ok(report(2, 4, 760)));
        // An empty copy (no epoch) loses to any other.
        assert_eq!(elect(&three, &[report(1, 0, 0), report(3, 1, 1)], None), Ok(report(3, 1, 1)));
    }

    #[test]
    fn ties_go_to_the_preferred_node_then_the_lowest_id_in_any_order() {
        let five = set(&[10, 20, 30, 40, 50], 3);
        let reports = [report(40, 2, 10), report(20, 2, 10), report(30, 2, 10), report(10, 1, 99)];
        let mut reversed = reports;
        reversed.reverse();
        for order in [&reports, &reversed] {
            assert_eq!(elect(&five, order, None).map(|r| r.node), Ok(20), "the lowest id among the best");
            assert_eq!(elect(&five, order, Some(40)).map(|r| r.node), Ok(40), "the preferred one among the best");
            // A preferred node that is not among the most up to date does not win.
            assert_eq!(elect(&five, order, Some(10)).map(|r| r.node), Ok(20));
            assert_eq!(elect(&five, order, Some(50)).map(|r| r.node), Ok(20), "it did not report");
        }
        let refused = elect(&five, &reports, Some(60)).unwrap_err();
        let want =
            ElectionError::PreferredNotAReplica { log: "l".into(), node: 60, replicas: vec![10, 20, 30, 40, 50] };
        assert_eq!(refused, want);
    }

    #[test]
    fn forced_promotion_names_the_range_that_may_be_lost_and_who_may_hold_more() {
        let five = set(&[1, 2, 3, 4, 5], 3);
        // Node 3 holds 30 more records of the target's epoch; node 4 has a longer copy of an
        // earlier epoch, whose tail was never committed; nodes 1 and 5 are silent.
        let reports = [report(2, 3, 100), report(3, 3, 130), report(4, 2, 500)];
        let loss = forced_promotion(&five, 2, &reports).unwrap();
        let want = DataLoss {
            log: "l".into(),
            target: 2,
            from: 100,
            to_at_least: 130,
            later_epochs: vec![],
            unreported: vec![1, 5],
        };
        assert_eq!(loss, want);
        assert!(!loss.is_none());
        assert_eq!(
            loss.to_string(),
            "promoting node 2 to lead log l may lose committed records; offsets 100..130 are on other \
             replicas and not on node 2; nodes [1, 5] did not report and may hold more, so the loss may \
             end past offset 130"
        );

        // A replica of a later epoch holds records the target lacks, perhaps from below its end.
        let reports = [report(2, 3, 100), report(3, 4, 90), report(1, 3, 100), report(4, 3, 80), report(5, 1, 7)];
        let loss = forced_promotion(&five, 2, &reports).unwrap();
        assert_eq!(
            (loss.from, loss.to_at_least, &loss.later_epochs[..], &loss.unreported[..]),
            (100, 100, &[3][..], &[][..])
        );
        let message = loss.to_string();
        assert!(message.contains("nodes [3] hold records of a later epoch") && !message.contains(".."), "{message}");

        // Every replica reported and the target is the most up to date: nothing is lost, and
        // the operator is told so.
        let reports = [report(1, 3, 100), report(2, 3, 100), report(3, 3, 60), report(4, 2, 300), report(5, 0, 0)];
        let loss = forced_promotion(&five, 2, &reports).unwrap();
        assert!(loss.is_none(), "{loss:?}");
        assert!(loss.to_string().contains("loses no committed record"), "{loss}");

        // The quorum is not checked: forcing is the way out of a quorum too small for failover.
        let lone = set(&[1, 2, 3], 1);
        assert_eq!(forced_promotion(&lone, 3, &[report(3, 1, 4)]).map(|l| l.unreported), Ok(vec![1, 2]));
    }

    #[test]
    fn forced_promotion_refuses_a_target_without_a_report_and_reports_it_cannot_trust() {
        let three = set(&[1, 2, 3], 2);
        let target_silent = forced_promotion(&three, 1, &[report(2, 1, 5)]);
        assert_eq!(target_silent, Err(ElectionError::TargetNotReported { log: "l".into(), node: 1 }));
        let stranger_target = forced_promotion(&three, 7, &[report(7, 1, 5)]);
        assert!(matches!(stranger_target, Err(ElectionError::NotAReplica { node: 7, .. })), "{stranger_target:?}");
        let stranger = forced_promotion(&three, 1, &[report(1, 1, 5), report(8, 1, 50)]);
        assert!(matches!(stranger, Err(ElectionError::NotAReplica { node: 8, .. })), "{stranger:?}");
        let twice = forced_promotion(&three, 1, &[report(1, 1, 5), report(1, 1, 5)]);
        assert!(matches!(twice, Err(ElectionError::ReportedTwice { node: 1, .. })), "{twice:?}");
    }

    // The model: a replicated log across `n` replicas, as the controller, the leaders and the
    // followers change it, with every record committed by the rule leaders follow.

    /// A record of the model: the epoch of the leader that wrote it, a number that no other
    /// record has, and the batch it was appended in (the id of the batch's first record): a
    /// log is cut only between batches.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Rec {
        epoch: u64,
        id: u64,
        batch: u64,
    }

    #[derive(Debug, Clone, Default)]
    struct Replica {
        log: Vec<Rec>,
        /// Records below this are synced.
        durable: usize,
        /// The epoch it was fenced at or follows: it refuses anything of an earlier one.
        promised: u64,
    }

    impl Replica {
        fn report(&self, node: NodeId) -> Report {
            let last = self.durable.checked_sub(1).and_then(|i| self.log.get(i));
            Report { node, last_epoch: last.map_or(0, |r| r.epoch), durable_end: self.durable as u64 }
        }
    }

    /// One epoch's leader.
    #[derive(Debug)]
    struct Term {
        epoch: u64,
        /// Index of its replica.
        leader: usize,
        /// Where its epoch begins in its log.
        start: u64,
        /// What each replica acknowledged durable in this epoch.
        acked: Vec<u64>,
        commit_end: u64,
        crashed: bool,
    }

    /// What happens during one epoch, after its leader is elected.
    #[derive(Debug, Clone)]
    enum Step {
        /// The leader appends `count` records, and syncs them if `sync`.
        Append { count: u8, sync: bool },
        /// It ships up to `count` records to replica `to`, whose copy is first cut back to
        /// where it agrees with the leader's; `to` acknowledges its durable end, after a sync
        /// if `sync`.
        Ship { to: u8, count: u8, sync: bool },
        /// The leader of the `back`-th epoch before this one, if it was not fenced and still
        /// runs, appends `append` records, syncs them, and ships as [`Step::Ship`].
        Zombie { back: u8, append: u8, to: u8, count: u8, sync: bool },
        /// Replica `node` syncs what it holds.
        Sync { node: u8 },
        /// Replica `node` loses power: what it had not synced is gone, and it leads no more.
        Crash { node: u8 },
    }

    /// One epoch: the controller fences the replicas in `members` (bits, topped up from
    /// replica `fill` on to the number of reports needed), hears their reports and `elect`s
    /// the leader, which then takes `steps`.
    #[derive(Debug, Clone)]
    struct Epoch {
        members: u8,
        fill: u8,
        preferred: Option<u8>,
        steps: Vec<Step>,
    }

    fn epoch() -> impl Strategy<Value = Epoch> {
        let step = prop_oneof![
            4 => (1u8..=3, any::<bool>()).prop_map(|(count, sync)| Step::Append { count, sync }),
            6 => (any::<u8>(), 0u8..=4, any::<bool>()).prop_map(|(to, count, sync)| Step::Ship { to, count, sync }),
            2 => (1u8..=3, 0u8..=2, any::<u8>(), 0u8..=4, any::<bool>())
                .prop_map(|(back, append, to, count, sync)| Step::Zombie { back, append, to, count, sync }),
            1 => any::<u8>().prop_map(|node| Step::Sync { node }),
            1 => any::<u8>().prop_map(|node| Step::Crash { node }),
        ];
        (any::<u8>(), any::<u8>(), proptest::option::of(any::<u8>()), proptest::collection::vec(step, 0..8))
            .prop_map(|(members, fill, preferred, steps)| Epoch { members, fill, preferred, steps })
    }

    /// A cluster shape with a quorum that allows failover, and the epochs of its history.
    fn history() -> impl Strategy<Value = (usize, usize, Vec<Epoch>)> {
        // Mostly clusters where a commit quorum leaves some replicas out: there, which replica
        // an election hears from matters.
        let replicas = prop_oneof![1 => Just(1usize), 1 => Just(2), 3 => Just(3), 2 => Just(4), 3 => Just(5)];
        replicas.prop_flat_map(|replicas| {
            (Just(replicas), (replicas / 2 + 1)..=replicas, proptest::collection::vec(epoch(), 1..10))
        })
    }

    struct History {
        set: ReplicaSet,
        replicas: Vec<Replica>,
        terms: Vec<Term>,
        /// Every record any leader called committed, by offset.
        committed: BTreeMap<u64, Rec>,
        next_id: u64,
    }

    impl History {
        fn new(replicas: usize, quorum: usize) -> History {
            let nodes: Vec<NodeId> = (0..replicas).map(Self::node).collect();
            History {
                set: set(&nodes, quorum),
                replicas: vec![Replica::default(); replicas],
                terms: Vec::new(),
                committed: BTreeMap::new(),
                next_id: 0,
            }
        }

        /// The node id of replica `index`: not the index, so that nothing mixes the two up.
        fn node(index: usize) -> NodeId {
            100 + 7 * index as NodeId
        }

        fn index(node: NodeId) -> usize {
            ((node - 100) / 7) as usize
        }

        /// The term of the `back`-th latest epoch (0: the current one), if its leader still
        /// leads: its replica was not fenced by a later election, nor lost power since.
        fn leading(&self, back: u8) -> Option<usize> {
            let term = self.terms.len().checked_sub(1 + usize::from(back))?;
            let t = &self.terms[term];
            (!t.crashed && self.replicas[t.leader].promised == t.epoch).then_some(term)
        }

        fn step(&mut self, step: &Step) -> Result<(), String> {
            let n = self.replicas.len();
            match *step {
                Step::Append { count, sync } => match self.leading(0) {
                    Some(term) => self.append(term, count, sync),
                    None => Ok(()),
                },
                Step::Ship { to, count, sync } => match self.leading(0) {
                    Some(term) => self.ship(term, usize::from(to) % n, count, sync),
                    None => Ok(()),
                },
                Step::Zombie { back, append, to, count, sync } => match self.leading(back) {
                    Some(term) => {
                        self.append(term, append, true)?;
                        self.ship(term, usize::from(to) % n, count, sync)
                    }
                    None => Ok(()),
                },
                Step::Sync { node } => {
                    let index = usize::from(node) % n;
                    self.replicas[index].durable = self.replicas[index].log.len();
                    match (0..=3).find_map(|back| self.leading(back).filter(|t| self.terms[*t].leader == index)) {
                        Some(term) => self.advance_commit(term),
                        None => Ok(()),
                    }
                }
                Step::Crash { node } => {
                    let index = usize::from(node) % n;
                    let replica = &mut self.replicas[index];
                    replica.log.truncate(replica.durable);
                    for term in self.terms.iter_mut().filter(|t| t.leader == index) {
                        term.crashed = true;
                    }
                    Ok(())
                }
            }
        }

        fn append(&mut self, term: usize, count: u8, sync: bool) -> Result<(), String> {
            let (epoch, leader) = (self.terms[term].epoch, self.terms[term].leader);
            let replica = &mut self.replicas[leader];
            let batch = self.next_id;
            for _ in 0..count {
                replica.log.push(Rec { epoch, id: self.next_id, batch });
                self.next_id += 1;
            }
            if sync {
                replica.durable = replica.log.len();
            }
            self.advance_commit(term)
        }

        fn ship(&mut self, term: usize, to: usize, count: u8, sync: bool) -> Result<(), String> {
            let (epoch, leader) = (self.terms[term].epoch, self.terms[term].leader);
            if to == leader || self.replicas[to].promised > epoch {
                // A fenced replica, or one following a later leader, refuses it.
                return Ok(());
            }
            let source = self.replicas[leader].log.clone();
            let start = self.terms[term].start;
            let follower = &mut self.replicas[to];
            follower.promised = epoch;
            // The leader's check (`Truncate`), by the protocol's own cores: the copy is cut
            // where they cut it, which must be where it stops agreeing with the leader's.
            let agree = follower.log.iter().zip(&source).take_while(|(a, b)| a == b).count();
            let cut = divergence_check(&source, epoch, start, &follower.log)?;
            if cut != agree {
                return Err(format!(
                    "the leader of epoch {epoch} cut replica {to} to {cut}, where its copy agrees up to {agree}: \
                     leader {source:?}, replica {:?}",
                    follower.log
                ));
            }
            follower.log.truncate(agree);
            follower.durable = follower.durable.min(agree);
            // Whole batches only, as chunks carry them.
            let mut end = (agree + usize::from(count)).min(source.len());
            while end > agree && source.get(end).is_some_and(|next| next.batch == source[end - 1].batch) {
                end += 1;
            }
            follower.log.extend_from_slice(&source[agree..end]);
            if sync {
                follower.durable = follower.log.len();
            }
            self.terms[term].acked[to] = follower.durable as u64;
            self.advance_commit(term)
        }

        fn elect(&mut self, members: u8, fill: u8, preferred: Option<u8>) -> Result<(), String> {
            let n = self.replicas.len();
            let preferred = preferred.map(|p| Self::node(usize::from(p) % n));
            self.check_every_election(preferred)?;
            let needed = self.set.reports_needed();
            let mut chosen: Vec<usize> = (0..n).filter(|i| members >> i & 1 == 1).collect();
            let mut next = usize::from(fill) % n;
            while chosen.len() < needed {
                if !chosen.contains(&next) {
                    chosen.push(next);
                }
                next = (next + 1) % n;
            }
            let epoch = self.terms.last().map_or(1, |t| t.epoch + 1);
            // Fenced first, then heard.
            for index in &chosen {
                self.replicas[*index].promised = epoch;
            }
            let reports: Vec<Report> = chosen.iter().map(|i| self.replicas[*i].report(Self::node(*i))).collect();
            let chose = elect(&self.set, &reports, preferred).map_err(|e| format!("epoch {epoch}: {e}"))?;
            let leader = Self::index(chose.node);
            // As `Log::begin_epoch`: the new leader syncs what it holds, and its epoch begins
            // at its end.
            let replica = &mut self.replicas[leader];
            replica.durable = replica.log.len();
            let start = replica.log.len() as u64;
            self.terms.push(Term { epoch, leader, start, acked: vec![0; n], commit_end: 0, crashed: false });
            // As `Leader::new`: alone, it commits what it holds.
            self.advance_commit(self.terms.len() - 1)
        }

        /// Moves the commit point of `term` as the leader's core does, and records what it
        /// commits; a record committed at an offset where another was is a broken history.
        fn advance_commit(&mut self, term: usize) -> Result<(), String> {
            let t = &self.terms[term];
            let leader = &self.replicas[t.leader];
            let peers: Vec<u64> = t.acked.iter().enumerate().filter(|(i, _)| *i != t.leader).map(|(_, a)| *a).collect();
            let end = quorum_commit_end(leader.durable as u64, &peers, self.set.quorum_size(), t.start);
            for offset in t.commit_end..end {
                let record = leader.log[offset as usize];
                if let Some(before) = self.committed.insert(offset, record).filter(|before| *before != record) {
                    return Err(format!(
                        "offset {offset}: committed as {before:?}, then as {record:?} by the leader of epoch {}",
                        t.epoch
                    ));
                }
            }
            let t = &mut self.terms[term];
            t.commit_end = t.commit_end.max(end);
            Ok(())
        }

        /// Whatever sufficient set of replicas the controller hears from, the one `elect`
        /// chooses holds every committed record, at its offset, in its durable copy.
        fn check_every_election(&self, preferred: Option<NodeId>) -> Result<(), String> {
            let n = self.replicas.len();
            for members in 1u32..(1 << n) {
                if (members.count_ones() as usize) < self.set.reports_needed() {
                    continue;
                }
                let reports: Vec<Report> =
                    (0..n).filter(|i| members >> i & 1 == 1).map(|i| self.replicas[i].report(Self::node(i))).collect();
                let chose = elect(&self.set, &reports, preferred).map_err(|e| format!("{reports:?}: {e}"))?;
                let replica = &self.replicas[Self::index(chose.node)];
                let copy = &replica.log[..replica.durable];
                if let Some((offset, record)) =
                    self.committed.iter().find(|(offset, record)| copy.get(**offset as usize) != Some(record))
                {
                    return Err(format!(
                        "from reports {reports:?} elect chose node {}, whose durable copy lacks committed \
                         record {record:?} at offset {offset} (it holds {:?} there)",
                        chose.node,
                        copy.get(*offset as usize)
                    ));
                }
            }
            Ok(())
        }
    }

    /// A model log's epoch history, as `tern_wal::Log::epoch_history` keeps it: where each
    /// epoch's run of records begins.
    fn history_of(log: &[Rec]) -> Vec<(u64, u64)> {
        let mut history: Vec<(u64, u64)> = Vec::new();
        for (offset, record) in (0u64..).zip(log) {
            if history.last().is_none_or(|(epoch, _)| *epoch != record.epoch) {
                history.push((record.epoch, offset));
            }
        }
        history
    }

    /// Runs the divergence check of a leader of `epoch` (begun at `start` in its log `source`)
    /// on a replica's `copy`, with the protocol's `Leader` and `Follower` cores exchanging
    /// `Ack`s and `Truncate`s until the follower's log is checked; returns where the copy was
    /// cut to.
    fn divergence_check(source: &[Rec], epoch: u64, start: u64, copy: &[Rec]) -> Result<usize, String> {
        let mut leader_history = history_of(source);
        if leader_history.last().is_none_or(|(e, _)| *e != epoch) {
            // As `Log::begin_epoch`: the epoch begins at the end, before it writes anything.
            leader_history.push((epoch, start));
        }
        let config = LeaderConfig {
            log: "l".into(),
            epoch,
            epoch_history: leader_history,
            peers: vec![2],
            learners: Vec::new(),
            quorum: Quorum::Count(1),
            inflight_bytes_max: 1 << 20,
            chunk_bytes_max: 1 << 20,
            heartbeat_ms: 100,
            commit_notice_ms: 5,
            resend_ms: 500,
            reseed: true,
        };
        let end = |log: &[Rec]| log.len() as u64;
        let last_epoch = |log: &[Rec]| log.last().map_or(0, |r| r.epoch);
        let mut leader = Leader::new(config, end(source), end(source), 0);
        let mut copy = copy.to_vec();
        let mut follower = Follower::new("l".into(), 0, 0..end(&copy), 0, last_epoch(&copy), history_of(&copy));
        leader.handle(LeaderInput::Connected { peer: 2, written_end: end(&copy), durable_end: 0 });
        let hello = Message::Ack {
            log: "l".into(),
            epoch: 0,
            written_end: end(&copy),
            durable_end: 0,
            last_epoch: last_epoch(&copy),
        };
        let mut to_leader = vec![hello];
        // Every round but the last cuts at least one record or one epoch entry.
        for _ in 0..=copy.len() + 2 {
            let mut to_follower = Vec::new();
            for msg in to_leader.drain(..) {
                leader.handle(LeaderInput::Received { peer: 2, msg });
                while let Some(action) = leader.poll_action() {
                    match action {
                        LeaderAction::Send { msg, .. } => to_follower.push(msg),
                        LeaderAction::Deposed { .. } | LeaderAction::LacksRecords { .. } => {
                            return Err(format!("checking {copy:?}, the leader of epoch {epoch} stopped: {action:?}"));
                        }
                        _ => {}
                    }
                }
            }
            for msg in to_follower {
                follower.handle(FollowerInput::Received { from: 1, msg });
                while let Some(action) = follower.poll_action() {
                    match action {
                        FollowerAction::Send { msg, .. } => to_leader.push(msg),
                        FollowerAction::RecordLeader { epoch, leader } => {
                            follower.handle(FollowerInput::LeaderRecorded { epoch, leader });
                        }
                        FollowerAction::Truncate { to } => {
                            let to = to as usize;
                            if let (Some(before), Some(after)) =
                                (to.checked_sub(1).and_then(|i| copy.get(i)), copy.get(to))
                            {
                                if before.batch == after.batch {
                                    return Err(format!("the follower cut {copy:?} at {to}, inside a batch"));
                                }
                            }
                            copy.truncate(to);
                            let (written_end, last_epoch) = (end(&copy), last_epoch(&copy));
                            follower.handle(FollowerInput::Truncated { written_end, last_epoch });
                        }
                        other => return Err(format!("the follower asked for {other:?} while being checked")),
                    }
                }
            }
            if follower.checked_epoch() == epoch {
                return Ok(copy.len());
            }
        }
        Err(format!("the leader of epoch {epoch} never finished checking {copy:?} against {source:?}"))
    }

    const CASES_DEFAULT: u32 = 1000;
    const SEED_DEFAULT: u64 = 0x7e51_e1ec_7000_0001;

    /// Random histories of a replicated log, with leaders chosen by `elect` from random
    /// sufficient sets of reports, zombie leaders shipping to whoever is not fenced yet, and
    /// power losses. Before every election and at the end, `elect` must choose, from every
    /// sufficient set of reports, a replica holding every committed record.
    ///
    /// `TERN_ELECTION_CASES` raises the case count (default 1000); `TERN_ELECTION_SEED=0x..`
    /// picks another seed. A failure prints the seed and the shrunk history.
    #[test]
    fn elect_chooses_a_replica_holding_every_committed_record_in_any_history() {
        let cases = std::env::var("TERN_ELECTION_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(CASES_DEFAULT);
        let seed = std::env::var("TERN_ELECTION_SEED")
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .unwrap_or(SEED_DEFAULT);
        let seed_bytes: Vec<u8> = (0..4).flat_map(|_| seed.to_le_bytes()).collect();
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
        // No regression files in the source tree: a failure prints its shrunk history.
        let config = Config { cases, failure_persistence: None, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, rng);
        // The model must commit after failovers, or it proves nothing.
        let committed_after_failover = Cell::new(0u64);
        let result = runner.run(&history(), |(replicas, quorum, epochs)| {
            let mut history = History::new(replicas, quorum);
            for (number, epoch) in (1u64..).zip(&epochs) {
                let fail = |at: &str, e: String| TestCaseError::fail(format!("epoch {number}, {at}: {e}"));
                history.elect(epoch.members, epoch.fill, epoch.preferred).map_err(|err| fail("election", err))?;
                for (i, step) in epoch.steps.iter().enumerate() {
                    history.step(step).map_err(|err| fail(&format!("step {i} ({step:?})"), err))?;
                }
            }
            history.check_every_election(None).map_err(|e| TestCaseError::fail(format!("at the end: {e}")))?;
            let after = history.committed.values().filter(|r| r.epoch > 1).count() as u64;
            committed_after_failover.set(committed_after_failover.get() + after);
            Ok(())
        });
        if let Err(e) = result {
            panic!("seed {seed:#x}: {e}; replay with TERN_ELECTION_SEED={seed:#x}");
        }
        assert!(committed_after_failover.get() > 0, "no history committed a record after a failover");
    }
}
