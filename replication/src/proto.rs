//! The replication protocol core for one log: a state machine without I/O.
//!
//! It owns no socket, file, thread or clock. The driver (threads and TCP, or the simulator)
//! feeds it [`LeaderInput`]s / [`FollowerInput`]s, with time as an argument, and then drains
//! the actions it asks for (`poll_action` until `None`). It never iterates a `HashMap`, so a
//! seed replays exactly.
//!
//! Shipping: for each peer the leader knows the peer's acknowledged written and durable ends
//! and the next offset to send; it asks the driver to ship chunks from there while fewer than
//! `inflight_bytes_max` bytes are unacknowledged (a slow peer slows only itself). The follower
//! applies a chunk only if it starts at or before its written end and continues it; anything
//! else is answered with an acknowledgement of where it stands, and the leader rewinds to that
//! point once nothing it sent has been acknowledged for `resend_ms`.
//!
//! Commit: the highest offset durable on a quorum, the leader's own sync counted only when
//! done, once a record of the leader's own epoch is among it, or durable on every node
//! ([`quorum_commit_end`]). It only moves forward.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use crate::message::{Chunk, Message, NodeId};

/// How many copies make a record committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quorum {
    /// The leader's own sync.
    Leader,
    /// Any `k` of the nodes, the leader included.
    Count(usize),
    /// Every node.
    All,
}

impl Quorum {
    /// Copies needed in a cluster of `nodes` nodes, bounded by it.
    pub fn size(self, nodes: usize) -> usize {
        match self {
            Quorum::Leader => 1,
            Quorum::Count(k) => k.clamp(1, nodes),
            Quorum::All => nodes,
        }
    }
}

/// The commit point a leader may move to: the highest offset durable on `copies` nodes, the
/// leader one of them, once a record of the leader's own epoch is below it; before that, the
/// highest offset durable on every node.
///
/// `leader_durable_end` is the leader's own synced end; `peer_durable_ends` lists every other
/// node of the cluster, with what it acknowledged durable from a log checked against the
/// leader's epoch (0 for one not heard from); `epoch_start` is the offset where the leader's
/// epoch begins in its log (its entry in the epoch history). The `copies`-th highest end is on
/// that many nodes; the leader's own end bounds it, so the leader is always one of the copies
/// and a leader restarted after a power loss still holds every committed record.
///
/// Records of earlier epochs are not committed by being on a quorum (section 5.4.2 of the Raft
/// paper). A new leader ships the records of earlier epochs it holds, and they may reach a
/// quorum; yet a later election may hear from a node whose last batch is of an epoch after
/// theirs and before this leader's (written by a leader deposed before it reached a quorum):
/// more up to date by [`crate::election::elect`]'s rule, it is chosen, and the records it lacks
/// are cut everywhere. Once a record of the leader's own epoch is on a quorum, every later
/// election chooses a node holding it, and so holding everything below it. Records on every
/// node are safe as well (the paper notes it), since no election can choose a node without
/// them: this keeps a lone node, or a cluster whose every node caught up, from waiting for a
/// new append to call committed what it held before a restart.
///
/// # Examples
/// ```
/// use tern_replication::proto::quorum_commit_end;
/// // The leader's epoch began at offset 50. It holds 0..60 synced, one peer 0..60, one 0..40.
/// assert_eq!(quorum_commit_end(60, &[60, 40], 2, 50), 60);
/// // Two copies of 0..50 only, all of an earlier epoch: only what every node holds counts.
/// assert_eq!(quorum_commit_end(60, &[50, 40], 2, 50), 40);
/// // The leader's own sync bounds the point, whatever its peers hold.
/// assert_eq!(quorum_commit_end(55, &[60, 60], 2, 50), 55);
/// // A lone node holds every record there is.
/// assert_eq!(quorum_commit_end(80, &[], 1, 80), 80);
/// ```
pub fn quorum_commit_end(leader_durable_end: u64, peer_durable_ends: &[u64], copies: usize, epoch_start: u64) -> u64 {
    let mut durable: Vec<u64> = Vec::with_capacity(peer_durable_ends.len() + 1);
    durable.extend_from_slice(peer_durable_ends);
    durable.push(leader_durable_end);
    durable.sort_unstable_by(|a, b| b.cmp(a));
    // The `copies`-th highest durable end (one copy at least: the leader's).
    let quorum_end = durable.get(copies.saturating_sub(1)).copied().unwrap_or(0).min(leader_durable_end);
    if quorum_end > epoch_start {
        return quorum_end;
    }
    // The lowest durable end: on every node.
    durable.last().copied().unwrap_or(0).min(leader_durable_end)
}

/// Settings of a leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderConfig {
    /// The log's name.
    pub log: String,
    /// The leader's epoch, stamped on everything it sends.
    pub epoch: u64,
    /// The leader's log's epoch history: `(epoch, first offset)`, ascending, ending with
    /// `epoch` (the log's own record of it, `tern_wal::Log::epoch_history`). It tells where a
    /// returning follower's log stops being the leader's.
    pub epoch_history: Vec<(u64, u64)>,
    /// The followers.
    pub peers: Vec<NodeId>,
    /// Followers among `peers` being seeded: shipped to like the others, but their copies
    /// count toward no quorum (a node added to the replicas catches up first, and a commit
    /// never waits for it nor stands on it).
    pub learners: Vec<NodeId>,
    /// Copies needed to commit, among the leader and the peers that are not learners.
    pub quorum: Quorum,
    /// Most unacknowledged bytes in flight to one peer.
    pub inflight_bytes_max: u64,
    /// Most bytes in one chunk.
    pub chunk_bytes_max: u64,
    /// A heartbeat goes to a peer that was sent nothing for this long.
    pub heartbeat_ms: u64,
    /// A peer that was sent nothing for this long, and not yet the current commit point, gets
    /// a heartbeat that carries it: a follower serving reads learns of the last commits of a
    /// burst within this, not within `heartbeat_ms`. Under steady load, appends carry it.
    pub commit_notice_ms: u64,
    /// With bytes in flight and no progress for this long, resend from the peer's acked end.
    pub resend_ms: u64,
    /// A peer that needs records the leader no longer holds is re-seeded (its log replaced by
    /// a copy of the leader's from the leader's start); otherwise it is told of the data loss
    /// and nothing more is shipped to it.
    pub reseed: bool,
}

impl LeaderConfig {
    /// Copies needed for a quorum, the leader included, bounded by the cluster size.
    pub fn quorum_size(&self) -> usize {
        self.quorum.size(self.voters().count() + 1)
    }

    /// The peers whose copies count toward a quorum (not learners).
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.iter().copied().filter(|p| !self.learners.contains(p))
    }
}

/// What a leader is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderInput {
    /// The local log's written end grew (an append).
    Written {
        /// New written end.
        end: u64,
    },
    /// The local log's durable end grew (a local sync completed).
    Synced {
        /// New durable end.
        end: u64,
    },
    /// A peer connected and said where its log ends (from its handshake).
    Connected {
        /// The peer.
        peer: NodeId,
        /// Its written end.
        written_end: u64,
        /// Its durable end.
        durable_end: u64,
    },
    /// The connection to a peer broke.
    Disconnected {
        /// The peer.
        peer: NodeId,
    },
    /// The driver sent a chunk to a peer, as a [`LeaderAction::Ship`] asked.
    Shipped {
        /// The peer.
        peer: NodeId,
        /// First offset sent.
        base_offset: u64,
        /// One past the last offset sent.
        end_offset: u64,
        /// Bytes on the wire.
        len_bytes: u64,
    },
    /// The driver could not carry out a [`LeaderAction::Ship`] (nothing to read, a read
    /// error, the connection gone). The peer may be asked again on the next event.
    NotShipped {
        /// The peer.
        peer: NodeId,
    },
    /// A message from a peer.
    Received {
        /// The sender.
        peer: NodeId,
        /// The message.
        msg: Message,
    },
    /// The local log's start moved forward (retention deleted segments).
    StartMoved {
        /// The new log start.
        start: u64,
    },
    /// Time passed.
    Tick {
        /// Milliseconds on the driver's monotonic clock.
        now_ms: u64,
    },
}

/// What a leader asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum LeaderAction {
    /// Read batches of the log from `from` (whole batches, at most `bytes_max` unless one batch
    /// is larger), make a chunk, send it as [`Message::Append`] with `commit_end`, and report
    /// it with [`LeaderInput::Shipped`], or report [`LeaderInput::NotShipped`]. The driver may
    /// do it later, on another thread: until one of the two reports arrives (or the peer
    /// reconnects) the leader asks that peer for nothing more, so whatever is written meanwhile
    /// goes into the next chunk.
    Ship {
        /// The peer.
        peer: NodeId,
        /// First offset to send.
        from: u64,
        /// Byte budget.
        bytes_max: u64,
        /// The commit point to send along.
        commit_end: u64,
    },
    /// Send a message.
    Send {
        /// The peer.
        peer: NodeId,
        /// The message.
        msg: Message,
    },
    /// The commit point moved forward: wake whoever waits for a quorum.
    Committed {
        /// New commit point.
        commit_end: u64,
    },
    /// A peer holds records `from..to` that this leader's history says belong to its log, in
    /// an epoch up to `last_epoch`, and this log does not hold them: it lost them (its disk
    /// was lost or replaced). It stops leading, as when deposed, rather than write new records
    /// over a log it does not hold; an operator restores its disk or starts it as a follower.
    LacksRecords {
        /// The peer that holds them.
        peer: NodeId,
        /// This log's end.
        from: u64,
        /// How far the peer's copy of them goes.
        to: u64,
        /// The epoch of the peer's last batch.
        last_epoch: u64,
    },
    /// A peer's log holds records of a later leader epoch, or was checked against one: another
    /// leader took over. This one stops: it ships nothing more, moves the commit point no
    /// further, and its waiting appends must be refused as sent to a node that no longer leads.
    Deposed {
        /// The later epoch seen.
        epoch: u64,
    },
}

/// What a leader knows of one peer ([`Leader::peer_view`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerView {
    /// Whether the peer is connected.
    pub connected: bool,
    /// The peer's acknowledged written end.
    pub acked_written: u64,
    /// The peer's acknowledged durable end.
    pub acked_durable: u64,
    /// The next offset to send it.
    pub next_offset: u64,
    /// Chunks sent and not yet acknowledged.
    pub chunks_in_flight: u64,
    /// Bytes sent and not yet acknowledged.
    pub bytes_in_flight: u64,
    /// Records the peer needs that the leader no longer holds (`from..to`): it is being
    /// re-seeded, or, with re-seeding off, it is stuck.
    pub gap: Option<(u64, u64)>,
    /// Re-seeds this peer completed.
    pub reseeds: u64,
}

#[derive(Debug, Clone, Default)]
struct Peer {
    connected: bool,
    acked_written: u64,
    acked_durable: u64,
    next_offset: u64,
    inflight: VecDeque<(u64, u64)>, // (end_offset, len_bytes)
    inflight_bytes: u64,
    last_progress_ms: u64,
    last_sent_ms: u64,
    /// The highest commit point this peer was sent, in an append or a heartbeat.
    commit_told: u64,
    /// A [`LeaderAction::Ship`] was asked and not yet reported.
    shipping: bool,
    /// The peer's last `Ack` says its log was checked against this leader's epoch: its end is
    /// known, and it takes appends.
    checked: bool,
    /// Records the peer needs that are gone here, and whether it was told on this connection.
    gap: Option<(u64, u64)>,
    gap_told: bool,
    reseeds: u64,
}

/// The leader side of one log.
#[derive(Debug)]
pub struct Leader {
    config: LeaderConfig,
    peers: BTreeMap<NodeId, Peer>,
    written_end: u64,
    durable_end: u64,
    commit_end: u64,
    /// Where this leader's epoch begins in its log: records below it are of earlier epochs.
    epoch_start: u64,
    start_offset: u64,
    now_ms: u64,
    /// The later epoch an ack showed, once one did: this leader no longer leads.
    deposed_by: Option<u64>,
    /// A peer that holds records this log lost (peer, this log's end, the peer's), once one
    /// showed it: this leader stopped.
    lacks: Option<(NodeId, u64, u64, u64)>,
    actions: VecDeque<LeaderAction>,
}

impl Leader {
    /// A leader whose local log ends at `written_end` (`durable_end` synced), which knows
    /// nothing of its peers until they connect. `commit_end` is the commit point it may start
    /// from: records it knows an earlier leader committed (being on a quorum is not enough, see
    /// [`quorum_commit_end`]). Its epoch begins where the history says, or, if the history
    /// lacks it, at `written_end`.
    pub fn new(config: LeaderConfig, written_end: u64, durable_end: u64, commit_end: u64) -> Leader {
        assert!(durable_end <= written_end, "durable {durable_end} past written {written_end}");
        let peers = config.peers.iter().map(|p| (*p, Peer::default())).collect();
        // A history without this epoch (none of the drivers builds one) is read the safe way:
        // every record already in the log is of an earlier epoch.
        let epoch_start =
            config.epoch_history.iter().find(|(e, _)| *e == config.epoch).map_or(written_end, |(_, start)| *start);
        let mut leader = Leader {
            config,
            peers,
            written_end,
            durable_end,
            commit_end: commit_end.min(durable_end),
            epoch_start,
            start_offset: 0,
            now_ms: 0,
            deposed_by: None,
            lacks: None,
            actions: VecDeque::new(),
        };
        leader.update_commit();
        leader
    }

    /// The commit point: every record below it is durable on a quorum.
    pub fn commit_end(&self) -> u64 {
        self.commit_end
    }

    /// The leader's epoch.
    pub fn epoch(&self) -> u64 {
        self.config.epoch
    }

    /// Where the leader's epoch begins in its log. Until a quorum holds a record at or past it,
    /// the commit point rises only over records every node holds ([`quorum_commit_end`]).
    pub fn epoch_start(&self) -> u64 {
        self.epoch_start
    }

    /// The later epoch a peer showed, once one did ([`LeaderAction::Deposed`]): this leader no
    /// longer leads, and does nothing more.
    pub fn deposed_by(&self) -> Option<u64> {
        self.deposed_by
    }

    /// The peer that showed records this log lost, with this log's end, how far the peer's
    /// copy goes and the epoch of its last batch ([`LeaderAction::LacksRecords`]): this leader
    /// stopped.
    pub fn lacks_records(&self) -> Option<(NodeId, u64, u64, u64)> {
        self.lacks
    }

    /// Where a log whose last batch has epoch `epoch` stops agreeing with this leader's, as far
    /// as this leader's history tells (Kafka's OffsetsForLeaderEpoch): `(E', end)`, where `E'`
    /// is the largest epoch at or below `epoch` in the history (0 when there is none: the
    /// records before any epoch) and `end` the start of the first epoch after it, or
    /// `u64::MAX` when `E'` is the current epoch, which goes on (the local log may already
    /// hold more than a `Written` has said).
    ///
    /// The other log's records past where its own copy of `E'` ends do not agree either when
    /// `E' < epoch`: this leader never held the epochs after `E'` that it holds. The follower
    /// cuts there too ([`Message::Truncate`]'s `matched_epoch`).
    pub fn epoch_end(&self, epoch: u64) -> (u64, u64) {
        let history = &self.config.epoch_history;
        match history.iter().rposition(|(e, _)| *e <= epoch) {
            Some(i) => {
                let end = history.get(i + 1).map_or(u64::MAX, |(_, start)| *start);
                (history.get(i).map_or(0, |(e, _)| *e), end)
            }
            None => (0, history.first().map_or(u64::MAX, |(_, start)| *start)),
        }
    }

    /// What the leader knows of a peer: (acked written end, acked durable end, connected).
    pub fn peer_state(&self, peer: NodeId) -> Option<(u64, u64, bool)> {
        self.peers.get(&peer).map(|p| (p.acked_written, p.acked_durable, p.connected))
    }

    /// Restores what a peer had acknowledged durable in leader epoch `epoch`, before a restart
    /// (a replication slot), so the commit point and retention account for it before the peer
    /// reconnects. Only up to where `epoch` ends in this leader's history counts (past it the
    /// peer holds a tail this log lost); never lowers what is known.
    pub fn restore_peer(&mut self, peer: NodeId, durable_end: u64, epoch: u64) {
        let written = self.epoch_end(epoch).1.min(self.written_end);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.acked_durable = p.acked_durable.max(durable_end.min(written));
            p.acked_written = p.acked_written.max(p.acked_durable);
        }
        self.update_commit();
    }

    /// Everything the leader knows of a peer, for metrics.
    pub fn peer_view(&self, peer: NodeId) -> Option<PeerView> {
        self.peers.get(&peer).map(|p| PeerView {
            connected: p.connected,
            acked_written: p.acked_written,
            acked_durable: p.acked_durable,
            next_offset: p.next_offset,
            chunks_in_flight: p.inflight.len() as u64,
            bytes_in_flight: p.inflight_bytes,
            gap: p.gap,
            reseeds: p.reseeds,
        })
    }

    /// Nodes known to hold every record below `end` synced, the leader included.
    pub fn copies_durable(&self, end: u64) -> usize {
        usize::from(self.durable_end >= end) + self.peers.values().filter(|p| p.acked_durable >= end).count()
    }

    /// Nodes in the cluster, the leader included.
    pub fn nodes(&self) -> usize {
        self.peers.len() + 1
    }

    /// The local log's durable end as the leader knows it (from [`LeaderInput::Synced`]).
    pub fn durable_end(&self) -> u64 {
        self.durable_end
    }

    /// The local log's written end as the leader knows it.
    pub fn written_end(&self) -> u64 {
        self.written_end
    }

    /// Feeds one input. Afterwards, drain [`Leader::poll_action`] until it returns `None`.
    pub fn handle(&mut self, input: LeaderInput) {
        if self.deposed_by.is_some() || self.lacks.is_some() {
            return;
        }
        match input {
            LeaderInput::Written { end } => {
                self.written_end = self.written_end.max(end);
                self.ship_all();
            }
            LeaderInput::Synced { end } => {
                // A sync may cover appends whose `Written` has not arrived yet: what is synced
                // was written.
                let grew = end > self.written_end;
                self.written_end = self.written_end.max(end);
                self.durable_end = self.durable_end.max(end);
                self.update_commit();
                if grew {
                    self.ship_all();
                }
            }
            LeaderInput::Connected { peer, written_end, durable_end: _ } => {
                let now = self.now_ms;
                if let Some(p) = self.peers.get_mut(&peer) {
                    // What the peer says at connection time counts only once an `Ack` from a log
                    // checked against this epoch confirms it (it may hold records this leader
                    // lost); what is already known of it stands.
                    let written = self.written_end;
                    let acked_durable = p.acked_durable.min(written);
                    *p = Peer {
                        connected: true,
                        acked_written: p.acked_written.min(written).max(acked_durable),
                        acked_durable,
                        next_offset: written_end.min(written),
                        inflight: VecDeque::new(),
                        inflight_bytes: 0,
                        last_progress_ms: now,
                        last_sent_ms: now,
                        commit_told: 0,
                        shipping: false,
                        checked: false,
                        gap: p.gap,
                        gap_told: false,
                        reseeds: p.reseeds,
                    };
                    // A heartbeat at once: its answer says where the peer stands and checks its
                    // log against this epoch. A new connection's follower says so by itself,
                    // but a leader that begins an epoch over a connection it kept (its node led
                    // a moment ago) would otherwise ship nothing until its first heartbeat
                    // tick, 100 ms of a handover's pause.
                    let msg = Message::Heartbeat {
                        epoch: self.config.epoch,
                        logs: vec![(self.config.log.clone(), self.written_end, self.commit_end)],
                    };
                    self.actions.push_back(LeaderAction::Send { peer, msg });
                    self.update_commit();
                    self.ship(peer);
                }
            }
            LeaderInput::Disconnected { peer } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.connected = false;
                    p.inflight.clear();
                    p.inflight_bytes = 0;
                    p.shipping = false;
                }
            }
            LeaderInput::Shipped { peer, base_offset, end_offset, len_bytes } => {
                let now = self.now_ms;
                // What was read from the local log to ship was written, whether or not its
                // `Written` has arrived yet.
                self.written_end = self.written_end.max(end_offset);
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.shipping = false;
                    // An ack may have moved `next_offset` past the chunk while it was being
                    // sent (the peer had it already): then only the flag is cleared.
                    if p.connected && base_offset == p.next_offset && end_offset > base_offset {
                        p.inflight.push_back((end_offset, len_bytes));
                        p.inflight_bytes += len_bytes;
                        p.next_offset = end_offset;
                        p.last_sent_ms = now;
                    }
                }
                self.ship(peer);
            }
            LeaderInput::NotShipped { peer } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.shipping = false;
                }
            }
            LeaderInput::StartMoved { start } => {
                self.start_offset = self.start_offset.max(start.min(self.written_end));
                self.ship_all();
            }
            LeaderInput::Received { peer, msg } => self.receive(peer, msg),
            LeaderInput::Tick { now_ms } => self.tick(now_ms),
        }
    }

    /// The next action to carry out, if any.
    pub fn poll_action(&mut self) -> Option<LeaderAction> {
        self.actions.pop_front()
    }

    fn receive(&mut self, peer: NodeId, msg: Message) {
        let Message::Ack { log, epoch: checked_epoch, written_end, durable_end, last_epoch } = msg else { return };
        if log != self.config.log {
            return;
        }
        let leader_written = self.written_end;
        let now = self.now_ms;
        let (matched_epoch, diverged_at) = self.epoch_end(last_epoch);
        let own_epoch = self.config.epoch;
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if !p.connected || durable_end > written_end {
            return;
        }
        if checked_epoch > own_epoch || last_epoch > own_epoch {
            // The peer follows a later leader: this one stops.
            let epoch = checked_epoch.max(last_epoch);
            self.deposed_by = Some(epoch);
            self.actions.push_back(LeaderAction::Deposed { epoch });
            return;
        }
        if written_end < p.acked_written || durable_end < p.acked_durable {
            // The peer holds less than it acknowledged: it lost unsynced records in a power
            // loss, or its copy was removed. What it reports is the truth from now on, and it
            // is refilled from there.
            p.acked_written = p.acked_written.min(written_end);
            p.acked_durable = p.acked_durable.min(durable_end).min(p.acked_written);
            p.next_offset = p.next_offset.min(written_end);
            p.inflight.clear();
            p.inflight_bytes = 0;
        }
        // A re-seeded peer holds nothing and no epoch until records arrive, and says so again
        // after it restarts or reconnects: a log without epochs that ends at or below this
        // log's start agrees with it as far as can be told (what it may hold lies below this
        // log's start: it cannot be compared, and is replaced by a re-seed when the peer
        // needs what is gone here). Taking it for diverged at the first epoch's start asked it
        // for a cut below its own start, which it can never make. So is one that a `Truncate`
        // of this epoch checked: the follower found nothing it holds that could part from this
        // log (an empty log re-seeded by another leader, whose log started later than this
        // one's).
        let reseeded = last_epoch == 0 && (written_end <= self.start_offset || checked_epoch == self.config.epoch);
        let diverged_at = if reseeded { written_end } else { diverged_at };
        let was_checked = p.checked;
        p.checked = checked_epoch == self.config.epoch;
        if !p.checked || written_end > diverged_at {
            // Until the peer's log was checked against this epoch it takes no appends of it.
            // Its records past where the newest epoch of this history not after its last one
            // ends here are not this log's: written by a leader that lost them in a power loss,
            // or by one deposed before they reached a quorum. Neither are its records past
            // where its own copy of that epoch ends, if it holds later epochs this leader never
            // held: the follower finds that point in its own history. None of those records
            // were committed: they are cut, and the peer acknowledges and is answered again
            // until a `Truncate` cuts nothing. It names the state it answers, so a late one
            // never cuts what came since.
            let to = written_end.min(diverged_at);
            if to > leader_written {
                // The peer holds records this leader's history calls its own log's (their epoch
                // does not end before them here), at offsets this log never reached: this log
                // lost them (its disk was lost or replaced). Leading would cut nothing and write
                // new records over a log it does not hold: it stops instead.
                let lacks = (peer, leader_written, to, last_epoch);
                self.lacks = Some(lacks);
                self.actions.push_back(LeaderAction::LacksRecords { peer, from: leader_written, to, last_epoch });
                return;
            }
            // A peer taken as re-seeded (above) holds no epoch: the records before any.
            let matched_epoch = if reseeded { 0 } else { matched_epoch };
            let msg = Message::Truncate {
                log: self.config.log.clone(),
                epoch: self.config.epoch,
                to,
                written_end,
                last_epoch,
                matched_epoch,
            };
            self.actions.push_back(LeaderAction::Send { peer, msg });
            // The peer holds at most `to` once it has carried this out (less if its own copy
            // of the matched epoch ends earlier: its next ack says so): nothing past it counts,
            // and shipping resumes from no further.
            p.checked = false;
            p.acked_written = p.acked_written.min(to);
            p.acked_durable = p.acked_durable.min(to);
            p.next_offset = p.next_offset.min(to);
            // An ack of a log not checked against this epoch counts for nothing: it may
            // hold records this leader never wrote, at offsets it did.
            return;
        }
        if !was_checked && written_end <= leader_written {
            // Just checked: the peer's log is this one's up to its end, which is therefore a
            // batch boundary here too; shipping starts there. Where shipping stood before may
            // be inside a batch here (an end the peer reported before it cut further back
            // than the `Truncate` said), and a chunk asked from there starts before it, so
            // that its `Shipped` never matched and the same chunk was asked for again and
            // again. What was in flight was refused.
            p.next_offset = written_end;
            p.inflight.clear();
            p.inflight_bytes = 0;
        }
        if written_end > leader_written {
            // A peer cannot hold what was never written here. With a chunk on its way the
            // ack may be ahead of that chunk's `Shipped`; otherwise the peer holds records
            // this log lost, in an epoch numbered as this one (a leader whose disk was
            // replaced begins the same epoch again): stop, as above.
            if !p.shipping {
                self.lacks = Some((peer, leader_written, written_end, last_epoch));
                let stop = LeaderAction::LacksRecords { peer, from: leader_written, to: written_end, last_epoch };
                self.actions.push_back(stop);
            }
            return;
        }
        if written_end > p.acked_written || durable_end > p.acked_durable {
            p.last_progress_ms = now;
        }
        if p.gap.is_some() && written_end >= self.start_offset {
            // Re-seeded: the peer's log now starts where the leader's does. If it falls
            // behind retention again, it is told again (`gap_told` left set kept the second
            // re-seed from ever being sent on this connection).
            p.gap = None;
            p.gap_told = false;
            p.reseeds += 1;
        }
        p.acked_written = p.acked_written.max(written_end);
        p.acked_durable = p.acked_durable.max(durable_end);
        while let Some(&(end, len)) = p.inflight.front() {
            if end > p.acked_written {
                break;
            }
            p.inflight.pop_front();
            p.inflight_bytes -= len;
        }
        if p.next_offset < p.acked_written {
            p.next_offset = p.acked_written;
        }
        self.update_commit();
        self.ship(peer);
    }

    fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let now = self.now_ms;
        let peers: Vec<NodeId> = self.peers.keys().copied().collect();
        for peer in peers {
            let Some(p) = self.peers.get_mut(&peer) else { continue };
            if !p.connected {
                continue;
            }
            if !p.inflight.is_empty() && now.saturating_sub(p.last_progress_ms) >= self.config.resend_ms {
                // Something sent was lost or refused: resend from what the peer has.
                p.inflight.clear();
                p.inflight_bytes = 0;
                p.next_offset = p.acked_written;
                p.last_progress_ms = now;
            }
            if p.gap.is_some() && p.gap_told && now.saturating_sub(p.last_progress_ms) >= self.config.resend_ms {
                // The peer still lacks what is gone here: tell it again (`ship` below). Over
                // TCP a message is lost only with its connection, which starts afresh; the
                // core does not count on that.
                p.gap_told = false;
                p.last_progress_ms = now;
            }
            let idle_ms = now.saturating_sub(p.last_sent_ms);
            // A peer not checked yet ignores the commit point (see `Follower::learn_commit`).
            let commit_untold = p.checked && self.commit_end > p.commit_told && idle_ms >= self.config.commit_notice_ms;
            if idle_ms >= self.config.heartbeat_ms || commit_untold {
                p.last_sent_ms = now;
                if p.checked {
                    p.commit_told = p.commit_told.max(self.commit_end);
                }
                let msg = Message::Heartbeat {
                    epoch: self.config.epoch,
                    logs: vec![(self.config.log.clone(), self.written_end, self.commit_end)],
                };
                self.actions.push_back(LeaderAction::Send { peer, msg });
            }
            self.ship(peer);
        }
    }

    fn ship_all(&mut self) {
        let peers: Vec<NodeId> = self.peers.keys().copied().collect();
        for peer in peers {
            self.ship(peer);
        }
    }

    /// Asks for the next chunk to `peer` if it is connected, behind, and its window has room.
    /// At most one ship request per peer is outstanding: the next follows its `Shipped` (or
    /// `NotShipped`).
    fn ship(&mut self, peer: NodeId) {
        let written = self.written_end;
        let commit_end = self.commit_end;
        let (window, chunk) = (self.config.inflight_bytes_max, self.config.chunk_bytes_max);
        let Some(p) = self.peers.get_mut(&peer) else { return };
        // Nothing is shipped to a peer before its log was checked against this epoch: a log
        // that diverged must be cut back before anything is added to it (frames it already has
        // are skipped, not compared).
        if !p.connected || !p.checked {
            return;
        }
        if p.next_offset < self.start_offset && p.acked_written < self.start_offset {
            // The peer needs records that are gone here. Never skip them: re-seed it, or tell
            // it and ship it nothing more.
            if !p.gap_told {
                p.gap_told = true;
                let (from, to) = (p.acked_written, self.start_offset);
                p.gap = Some((from, to));
                let log = self.config.log.clone();
                let epoch = self.config.epoch;
                let msg = if self.config.reseed {
                    Message::Reseed { log, epoch, start_offset: to, missing_from: from }
                } else {
                    Message::DataLoss { log, epoch, from, to }
                };
                self.actions.push_back(LeaderAction::Send { peer, msg });
            }
            return;
        }
        if !p.connected || p.next_offset >= written || p.inflight_bytes >= window || p.shipping {
            return;
        }
        if p.next_offset < self.start_offset {
            // Not known yet where the peer stands (its first ack decides).
            return;
        }
        p.shipping = true;
        p.commit_told = p.commit_told.max(commit_end);
        let bytes_max = chunk.min(window - p.inflight_bytes).max(1);
        self.actions.push_back(LeaderAction::Ship { peer, from: p.next_offset, bytes_max, commit_end });
    }

    fn update_commit(&mut self) {
        // The k-th highest durable end: k copies, the leader's counted only once synced, and
        // always one of them: a leader restarted after losing power then still holds every
        // committed record, and what its followers hold beyond it can be cut. Records of
        // earlier epochs count only once a record of this one is on the quorum too, or once
        // every node holds them.
        let learners = &self.config.learners;
        let peers: Vec<u64> =
            self.peers.iter().filter(|(id, _)| !learners.contains(id)).map(|(_, p)| p.acked_durable).collect();
        let k = self.config.quorum_size();
        let quorum_end = quorum_commit_end(self.durable_end, &peers, k, self.epoch_start);
        if quorum_end > self.commit_end {
            assert!(quorum_end <= self.written_end, "commit past end: {quorum_end} > {}", self.written_end);
            self.commit_end = quorum_end;
            self.actions.push_back(LeaderAction::Committed { commit_end: quorum_end });
        }
    }
}

/// What a follower is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowerInput {
    /// A message from the leader.
    Received {
        /// The sender.
        from: NodeId,
        /// The message.
        msg: Message,
    },
    /// The driver appended what a [`FollowerAction::Apply`] asked: the log's written end now.
    Applied {
        /// New written end.
        written_end: u64,
        /// The epoch of the log's last batch now.
        last_epoch: u64,
        /// The entries the log's epoch history gained (`(epoch, start offset)`, oldest first:
        /// those of `tern_wal::Log::epoch_history` after the newest epoch of
        /// [`Follower::epoch_history`]): empty unless a frame of a newer epoch arrived, so
        /// nothing is allocated for most chunks.
        epochs_begun: Vec<(u64, u64)>,
    },
    /// The driver cut the log as a [`FollowerAction::Truncate`] asked (durably). The log's
    /// epoch history lost the entries starting at or after the cut, as
    /// `tern_wal::Log::truncate_suffix` removes them.
    Truncated {
        /// New written end.
        written_end: u64,
        /// The epoch of the log's last batch now.
        last_epoch: u64,
    },
    /// The driver could not apply a chunk (it did not decode or continue the log).
    ApplyFailed,
    /// The driver replaced the log with an empty one starting at `start_offset`, as a
    /// [`FollowerAction::Reset`] asked (durably), its epoch history cleared.
    Reset {
        /// The new start (and end) of the log.
        start_offset: u64,
    },
    /// A local sync completed.
    Synced {
        /// New durable end.
        durable_end: u64,
    },
    /// The driver recorded durably what a [`FollowerAction::RecordLeader`] asked.
    LeaderRecorded {
        /// The epoch recorded.
        epoch: u64,
        /// The node leading it.
        leader: NodeId,
    },
}

/// What a follower asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum FollowerAction {
    /// Verify and append the chunk's frames (skipping those already present), then report
    /// [`FollowerInput::Applied`] or [`FollowerInput::ApplyFailed`].
    Apply {
        /// The frames.
        chunk: Chunk,
        /// The sender's epoch: no frame may carry a later one.
        epoch: u64,
    },
    /// Make the written records durable (through the group commit) and report
    /// [`FollowerInput::Synced`].
    Sync,
    /// Remove every record from `to` on, durably (they diverged from the leader's log), then
    /// report [`FollowerInput::Truncated`], or [`FollowerInput::ApplyFailed`] if it cannot.
    /// The cut point is already the smaller of the leader's and this log's own (where its copy
    /// of the leader's matched epoch ends).
    Truncate {
        /// The new end.
        to: u64,
    },
    /// Replace the log, durably, with an empty one starting at `start_offset` (a re-seed: the
    /// records before it are gone from the leader), then report [`FollowerInput::Reset`].
    Reset {
        /// Where the log starts again.
        start_offset: u64,
    },
    /// Send a message to the leader.
    Send {
        /// The leader.
        to: NodeId,
        /// The message.
        msg: Message,
    },
    /// Record durably that `leader` leads this log in `epoch` (a later epoch than any taken
    /// before), then report [`FollowerInput::LeaderRecorded`]. Nothing of that epoch is taken
    /// until then: after a restart the follower must still refuse older epochs, and another
    /// node claiming this one.
    RecordLeader {
        /// The new epoch.
        epoch: u64,
        /// The node leading it.
        leader: NodeId,
    },
}

/// The follower side of one log.
#[derive(Debug)]
pub struct Follower {
    log: String,
    epoch_seen: u64,
    leader: Option<NodeId>,
    written_end: u64,
    durable_end: u64,
    commit_end: u64,
    applying: bool,
    sync_requested: bool,
    /// The epoch of the last batch held.
    last_epoch: u64,
    /// The leader epoch whose log this one was checked against (by its `Truncate` that cut
    /// nothing): appends of that epoch only are applied. Until a new leader has checked,
    /// nothing of it is added, since frames already present are skipped by offset, not
    /// compared.
    checked_epoch: u64,
    /// The log's epoch history, `(epoch, start offset)` oldest first, as
    /// `tern_wal::Log::epoch_history` keeps it: where its own copy of each epoch ends.
    epoch_history: Vec<(u64, u64)>,
    /// Where the log started when this core was built or last re-seeded. Its own retention
    /// may have moved it up since, but never to the written end (it keeps its newest
    /// segment): a log that ends here holds no record.
    start_offset: u64,
    /// The action in progress is a cut (a [`FollowerAction::Truncate`]).
    cut_pending: bool,
    /// Records the leader no longer holds that this follower needed (`from..to`), and whether
    /// it was re-seeded past them (true) or stopped (false).
    gap: Option<(u64, u64, bool)>,
    /// The message of a new epoch that waits for its leader to be recorded.
    pending: Option<(NodeId, Message)>,
    actions: VecDeque<FollowerAction>,
}

impl Follower {
    /// A follower of `log` whose local log holds the offsets `held` (from its start to its
    /// written end; `durable_end` synced), its last batch of epoch `last_epoch`, its epoch
    /// history `epoch_history` (`tern_wal::Log::epoch_history`: `(epoch, start offset)`, oldest
    /// first).
    pub fn new(
        log: String,
        epoch_seen: u64,
        held: Range<u64>,
        durable_end: u64,
        last_epoch: u64,
        epoch_history: Vec<(u64, u64)>,
    ) -> Follower {
        let Range { start: start_offset, end: written_end } = held;
        assert!(start_offset <= written_end, "log start {start_offset} past its end {written_end}");
        assert!(durable_end <= written_end, "durable {durable_end} past written {written_end}");
        assert!(
            epoch_history.windows(2).all(|w| matches!(w, [(e0, s0), (e1, s1)] if e0 < e1 && s0 <= s1)),
            "epoch history out of order: {epoch_history:?}"
        );
        Follower {
            log,
            epoch_seen,
            leader: None,
            written_end,
            durable_end,
            commit_end: 0,
            applying: false,
            sync_requested: false,
            last_epoch,
            checked_epoch: 0,
            epoch_history,
            start_offset,
            cut_pending: false,
            gap: None,
            pending: None,
            actions: VecDeque::new(),
        }
    }

    /// Restores what the node recorded ([`FollowerAction::RecordLeader`]) before a restart:
    /// `leader` led this log in `epoch`. Older epochs are refused from now on, and so is this
    /// one from any other node.
    pub fn restore_leader(&mut self, epoch: u64, leader: NodeId) {
        if epoch >= self.epoch_seen {
            self.epoch_seen = epoch;
            self.leader = Some(leader);
        }
    }

    /// Fences this log at `epoch` (recorded durably by the caller first, as the node state's
    /// fence): nothing of an older epoch is taken from now on, whoever sends it, and the first
    /// node to send a message of `epoch` or later is taken as its leader once recorded. The
    /// controller fences the replicas of a log before it elects a new leader from their
    /// reports, so that the old leader cannot commit anything through them meanwhile.
    pub fn fence(&mut self, epoch: u64) {
        if epoch > self.epoch_seen {
            self.epoch_seen = epoch;
            self.leader = None;
        }
    }

    /// The node this log follows, once one was taken.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The commit point the leader last announced, bounded by what this node holds.
    pub fn commit_end(&self) -> u64 {
        self.commit_end.min(self.written_end)
    }

    /// Where this follower's own retention must stop ([`tern_wal::Log::set_retention_hold`]):
    /// the commit point it learned. Every record below it is the leader's; a record above it
    /// may have diverged from the leader's log (a tail a restarted leader lost), and a cut back
    /// to below the log's start could never be made.
    pub fn retention_hold(&self) -> u64 {
        self.commit_end()
    }

    /// One past the last record the follower knows it holds.
    pub fn written_end(&self) -> u64 {
        self.written_end
    }

    /// The highest epoch seen.
    pub fn epoch(&self) -> u64 {
        self.epoch_seen
    }

    /// The leader epoch this log was checked against: appends of that epoch only are applied.
    pub fn checked_epoch(&self) -> u64 {
        self.checked_epoch
    }

    /// The log's epoch history as this core knows it (`(epoch, start offset)`, oldest first):
    /// what it was built with, and what [`FollowerInput::Applied`], [`FollowerInput::Truncated`]
    /// and [`FollowerInput::Reset`] changed since. It must equal the log's own
    /// (`tern_wal::Log::epoch_history`); the simulator checks that after every step.
    pub fn epoch_history(&self) -> &[(u64, u64)] {
        &self.epoch_history
    }

    /// The records this follower needed that its leader no longer held (`from..to`), and
    /// whether it was re-seeded (`true`: its log now starts at `to`) or stopped (`false`: a
    /// data loss it cannot get past).
    pub fn gap(&self) -> Option<(u64, u64, bool)> {
        self.gap
    }

    /// Feeds one input. Afterwards, drain [`Follower::poll_action`] until it returns `None`.
    pub fn handle(&mut self, input: FollowerInput) {
        match input {
            FollowerInput::Received { from, msg } => self.receive(from, msg),
            FollowerInput::Applied { written_end, last_epoch, epochs_begun } => {
                assert!(written_end >= self.written_end, "written end went back");
                for (epoch, start) in epochs_begun {
                    self.epoch_begun(epoch, start, written_end);
                }
                self.applying = false;
                self.written_end = written_end;
                // Records shipped before the leader's retention deleted the rest may still
                // arrive after its `DataLoss`: what is lost then starts later, and once they
                // reach the leader's start nothing is lost.
                if let Some((from, to, false)) = self.gap {
                    let from = from.max(written_end.min(to));
                    self.gap = (from < to).then_some((from, to, false));
                }
                self.last_epoch = last_epoch;
                self.request_sync();
                self.ack();
            }
            FollowerInput::Reset { start_offset } => {
                assert!(start_offset >= self.written_end, "a reset went back");
                self.applying = false;
                self.written_end = start_offset;
                self.durable_end = start_offset;
                self.start_offset = start_offset;
                self.last_epoch = 0;
                self.epoch_history.clear();
                self.ack();
            }
            FollowerInput::Truncated { written_end, last_epoch } => {
                self.applying = false;
                self.cut_pending = false;
                self.written_end = written_end;
                self.durable_end = self.durable_end.min(written_end);
                self.last_epoch = last_epoch;
                self.epoch_history.retain(|(_, start)| *start < written_end);
                // Not checked yet: what is left may still part from the leader's log further
                // down (its last epoch now may be another one the leader never held). The ack
                // of the new state is answered by another `Truncate`, until one cuts nothing.
                self.ack();
            }
            FollowerInput::ApplyFailed => {
                self.applying = false;
                // After a failed cut the log stands where it stood, and an ack now would bring
                // the same `Truncate` straight back: a failure that lasts (the cut point is
                // below this log's start) became a loop at the speed of the network. The ack
                // of the next heartbeat brings it back instead, at most ten times a second.
                if !std::mem::take(&mut self.cut_pending) {
                    self.ack();
                }
            }
            FollowerInput::LeaderRecorded { epoch, leader } => {
                if epoch >= self.epoch_seen {
                    self.epoch_seen = epoch;
                    self.leader = Some(leader);
                }
                if let Some((from, msg)) = self.pending.take() {
                    self.receive(from, msg);
                }
            }
            FollowerInput::Synced { durable_end } => {
                self.sync_requested = false;
                // A sync that ran while the log was cut back reports an end past the cut.
                self.durable_end = self.durable_end.max(durable_end.min(self.written_end));
                if self.durable_end < self.written_end {
                    self.request_sync();
                }
                self.ack();
            }
        }
    }

    /// The next action to carry out, if any.
    pub fn poll_action(&mut self) -> Option<FollowerAction> {
        self.actions.pop_front()
    }

    /// Whether a message of `epoch` from `from` is the current leader's. A stale leader's is
    /// answered with where this log stands, so it learns it is behind (and stops leading, if
    /// this log was checked against a later epoch). Another node claiming the epoch this log
    /// already follows a leader in is a stranger or a zombie: nothing of it is taken. The
    /// message of a new epoch is kept until its leader is recorded durably.
    fn accept(&mut self, from: NodeId, epoch: u64, msg: &Message) -> bool {
        if epoch < self.epoch_seen {
            self.leader_ack(from);
            return false;
        }
        if epoch == self.epoch_seen && self.leader.is_some_and(|leader| leader != from) {
            return false;
        }
        if epoch > self.epoch_seen || self.leader.is_none() {
            self.pending = Some((from, msg.clone()));
            self.actions.push_back(FollowerAction::RecordLeader { epoch, leader: from });
            return false;
        }
        true
    }

    fn receive(&mut self, from: NodeId, msg: Message) {
        let epoch = match &msg {
            Message::Append { log, epoch, .. }
            | Message::Truncate { log, epoch, .. }
            | Message::Reseed { log, epoch, .. }
            | Message::DataLoss { log, epoch, .. }
                if *log == self.log =>
            {
                *epoch
            }
            Message::Heartbeat { epoch, .. } => *epoch,
            _ => return,
        };
        if !self.accept(from, epoch, &msg) {
            return;
        }
        self.take(msg);
    }

    /// Takes a message of the current leader.
    fn take(&mut self, msg: Message) {
        match msg {
            Message::Append { log, epoch, commit_end, chunk } if log == self.log => {
                self.learn_commit(epoch, commit_end);
                if self.applying
                    || epoch != self.checked_epoch
                    || chunk.base_offset > self.written_end
                    || chunk.end_offset <= self.written_end
                {
                    // Busy, not checked for this epoch yet, a gap (something was lost), or
                    // nothing new: say where we stand.
                    self.ack();
                    return;
                }
                self.applying = true;
                self.actions.push_back(FollowerAction::Apply { chunk, epoch });
            }
            Message::Truncate { log, epoch, to, written_end, last_epoch, matched_epoch } if log == self.log => {
                if self.applying || (written_end, last_epoch) != (self.written_end, self.last_epoch) {
                    // Busy, or an answer to a state this log has left: the ack brings a new one.
                    self.ack();
                    return;
                }
                // Records past where this log's own copy of the matched epoch ends are of later
                // epochs the leader never held: they part from its log too (KIP-279). A log
                // that holds no record of the matched epoch parts from the leader's where it
                // holds its first later epoch, whatever the leader's `to`: the leader's `to`
                // ends a run of batches this log does not have, so it may fall inside one of
                // its own, and the next round finds where the rest parts.
                let own_end = self.own_epoch_end(matched_epoch);
                let holds = matched_epoch == 0
                    || self.epoch_history.iter().any(|(e, start)| *e == matched_epoch && *start < self.written_end);
                // A log that holds no record (re-seeded, perhaps by another leader whose log
                // started later than this one's, and given nothing since) has nothing that can
                // part from the leader's: a cut below its start could never be made.
                let empty = self.written_end <= self.start_offset;
                let to = if empty {
                    self.written_end
                } else if holds {
                    to.min(own_end)
                } else {
                    own_end
                };
                // An epoch begun here that wrote nothing (this node led it, deposed before it
                // wrote) is a later one than the leader's matched epoch too: its entry must go,
                // by a cut at the end, or the log would refuse the leader's frames of older
                // epochs as older than its own.
                let begun_later =
                    self.epoch_history.iter().any(|(e, start)| *e > matched_epoch && *start >= self.written_end);
                if to >= self.written_end && !begun_later {
                    // Nothing to cut: the last epoch here is the matched one, which the leader
                    // holds at least up to this log's end. Records of one epoch at one offset
                    // are the same records, and so is everything before them.
                    self.checked_epoch = epoch;
                    self.ack();
                    return;
                }
                self.applying = true;
                self.cut_pending = true;
                self.actions.push_back(FollowerAction::Truncate { to });
            }
            Message::Reseed { log, epoch, start_offset, missing_from: _ } if log == self.log => {
                if start_offset <= self.written_end || self.applying {
                    // Already past the gap (a late message), or busy: say where we stand.
                    self.ack();
                    return;
                }
                // What it never got starts at its own end (the leader's `missing_from` is
                // where it last heard this log stood, which may be behind).
                self.gap = Some((self.written_end, start_offset, true));
                self.applying = true;
                // An empty log agrees with any leader's.
                self.checked_epoch = epoch;
                self.actions.push_back(FollowerAction::Reset { start_offset });
            }
            // The records this log will never get start at its own end: the leader's `from` is
            // where it last heard this log stood, which may be behind.
            Message::DataLoss { log, epoch: _, from: _, to } if log == self.log && to > self.written_end => {
                self.gap = Some((self.written_end, to, false));
            }
            Message::Heartbeat { epoch, logs } => {
                if let Some((_, _, commit)) = logs.iter().find(|(name, _, _)| *name == self.log) {
                    self.learn_commit(epoch, *commit);
                }
                self.ack();
            }
            _ => {}
        }
    }

    /// Where this log's own copy of `epoch` ends: where the first later epoch begins in its
    /// history, or its end. A log whose last batch has no epoch (it is empty, or holds only
    /// records older than epochs) holds nothing of a later one, whatever entries its history
    /// keeps from below its start.
    fn own_epoch_end(&self, epoch: u64) -> u64 {
        if self.last_epoch == 0 {
            return self.written_end;
        }
        let later = self.epoch_history.iter().filter(|(e, _)| *e > epoch).map(|(_, start)| *start).min();
        later.map_or(self.written_end, |start| start.min(self.written_end))
    }

    /// Records that the log's epoch history gained `epoch` at `start` (an applied frame of a
    /// newer epoch), as `tern_wal::Log` does: an entry starting where the newest one does
    /// replaces it, since that epoch wrote nothing here.
    fn epoch_begun(&mut self, epoch: u64, start: u64, written_end: u64) {
        if let Some(&(newest, newest_start)) = self.epoch_history.last() {
            assert!(epoch > newest, "epoch {epoch} begun after {newest}");
            assert!(start >= newest_start, "epoch {epoch} begins at {start}, before {newest_start}");
            if newest_start == start {
                self.epoch_history.pop();
            }
        }
        assert!(start <= written_end, "epoch {epoch} begins at {start}, past the end {written_end}");
        self.epoch_history.push((epoch, start));
    }

    /// Takes the commit point the leader of `epoch` sent, once this log was checked against
    /// that epoch: before that it may hold records the leader does not (a tail its earlier
    /// run lost, about to be cut), and below the leader's commit point they would read as
    /// committed.
    fn learn_commit(&mut self, epoch: u64, commit_end: u64) {
        if epoch == self.checked_epoch {
            self.commit_end = self.commit_end.max(commit_end);
        }
    }

    fn request_sync(&mut self) {
        if !self.sync_requested && self.durable_end < self.written_end {
            self.sync_requested = true;
            self.actions.push_back(FollowerAction::Sync);
        }
    }

    fn ack(&mut self) {
        if let Some(leader) = self.leader {
            self.leader_ack(leader);
        }
    }

    fn leader_ack(&mut self, to: NodeId) {
        let msg = Message::Ack {
            log: self.log.clone(),
            epoch: self.checked_epoch,
            written_end: self.written_end,
            durable_end: self.durable_end,
            last_epoch: self.last_epoch,
        };
        self.actions.push_back(FollowerAction::Send { to, msg });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(quorum: Quorum) -> LeaderConfig {
        LeaderConfig {
            log: "l".into(),
            epoch: 1,
            epoch_history: vec![(1, 0)],
            peers: vec![2, 3],
            learners: Vec::new(),
            quorum,
            inflight_bytes_max: 1 << 20,
            chunk_bytes_max: 64 << 10,
            heartbeat_ms: 100,
            commit_notice_ms: 5,
            resend_ms: 500,
            reseed: true,
        }
    }

    /// A fenced follower takes nothing more of the old leader's epoch (answering with where it
    /// stands, so the old leader learns it is behind), and takes the first node of the fenced
    /// epoch as its leader once recorded.
    #[test]
    fn a_fenced_follower_refuses_the_old_epoch_and_takes_the_new_leader() {
        let mut f = Follower::new("l".into(), 0, 0..0, 0, 0, vec![]);
        f.restore_leader(1, 1);
        let append = |epoch: u64, base: u64, end: u64| Message::Append {
            log: "l".into(),
            epoch,
            commit_end: 0,
            chunk: chunk(base, end),
        };
        let truncate = |epoch: u64| Message::Truncate {
            log: "l".into(),
            epoch,
            to: 0,
            written_end: 0,
            last_epoch: 0,
            matched_epoch: 0,
        };
        // The old leader checks the log and ships: taken.
        f.handle(FollowerInput::Received { from: 1, msg: truncate(1) });
        while f.poll_action().is_some() {}
        f.handle(FollowerInput::Received { from: 1, msg: append(1, 0, 5) });
        assert!(matches!(f.poll_action(), Some(FollowerAction::Apply { epoch: 1, .. })));
        f.handle(FollowerInput::Applied { written_end: 5, last_epoch: 1, epochs_begun: vec![(1, 0)] });
        while f.poll_action().is_some() {}
        f.fence(2);
        f.handle(FollowerInput::Received { from: 1, msg: append(1, 5, 9) });
        let actions: Vec<_> = std::iter::from_fn(|| f.poll_action()).collect();
        assert!(actions.iter().all(|a| !matches!(a, FollowerAction::Apply { .. })), "{actions:?}");
        assert!(
            actions.iter().any(|a| matches!(a, FollowerAction::Send { to: 1, msg: Message::Ack { epoch: 1, .. } })),
            "the old leader is told where the log stands: {actions:?}"
        );
        // The elected leader of epoch 2 is recorded, then checks and ships.
        f.handle(FollowerInput::Received { from: 3, msg: truncate(2) });
        assert_eq!(f.poll_action(), Some(FollowerAction::RecordLeader { epoch: 2, leader: 3 }));
        f.handle(FollowerInput::LeaderRecorded { epoch: 2, leader: 3 });
        assert_eq!(f.leader(), Some(3));
        // A fence at or below what the log follows changes nothing.
        f.fence(2);
        assert_eq!(f.leader(), Some(3));
    }

    /// An uncompressed chunk of offsets `base..end` (the core never looks inside).
    fn chunk(base: u64, end: u64) -> Chunk {
        Chunk { base_offset: base, end_offset: end, raw_len_bytes: 0, compressed: false, bytes: Default::default() }
    }

    fn ack(written_end: u64, durable_end: u64) -> Message {
        Message::Ack { log: "l".into(), epoch: 1, written_end, durable_end, last_epoch: 1 }
    }

    #[test]
    fn commit_needs_a_quorum_of_durable_copies_and_never_goes_back() {
        let mut leader = Leader::new(config(Quorum::Count(2)), 0, 0, 0);
        leader.handle(LeaderInput::Connected { peer: 2, written_end: 0, durable_end: 0 });
        leader.handle(LeaderInput::Connected { peer: 3, written_end: 0, durable_end: 0 });
        leader.handle(LeaderInput::Written { end: 10 });
        assert_eq!(leader.commit_end(), 0);
        leader.handle(LeaderInput::Received { peer: 2, msg: ack(10, 10) });
        assert_eq!(leader.commit_end(), 0, "the leader's own sync counts only when done");
        leader.handle(LeaderInput::Synced { end: 10 });
        assert_eq!(leader.commit_end(), 10);
        // A peer reconnecting with less never moves the commit point back.
        leader.handle(LeaderInput::Connected { peer: 2, written_end: 0, durable_end: 0 });
        assert_eq!(leader.commit_end(), 10);
    }

    /// A learner (a replica being seeded) is a peer like the others, but its copy commits nothing: with
    /// peers 2 and 3 voting and 4 learning, 2 of 3 voting copies are needed, and the leader
    /// with the learner is not enough.
    #[test]
    fn a_learners_copy_counts_toward_no_quorum() {
        let seeding = LeaderConfig { peers: vec![2, 3, 4], learners: vec![4], ..config(Quorum::Count(2)) };
        assert_eq!(seeding.quorum_size(), 2);
        let mut leader = Leader::new(seeding, 0, 0, 0);
        for peer in [2, 3, 4] {
            leader.handle(LeaderInput::Connected { peer, written_end: 0, durable_end: 0 });
        }
        leader.handle(LeaderInput::Written { end: 10 });
        leader.handle(LeaderInput::Synced { end: 10 });
        leader.handle(LeaderInput::Received { peer: 4, msg: ack(10, 10) });
        assert_eq!(leader.commit_end(), 0, "the leader and a learner make no quorum");
        leader.handle(LeaderInput::Received { peer: 3, msg: ack(10, 10) });
        assert_eq!(leader.commit_end(), 10);
        let all = LeaderConfig { peers: vec![2, 4], learners: vec![4], ..config(Quorum::All) };
        assert_eq!(all.quorum_size(), 2, "every node: the learner is not one of them");
    }

    /// Raft's rule (section 5.4.2 of the Raft paper): records of earlier epochs that a new
    /// leader holds are on a quorum once it has shipped them, but not committed. The leader
    /// of epoch 1 wrote 0..50 and reached no quorum; a leader of epoch 2 wrote a record at
    /// 50 on a minority; this leader of epoch 3 ships 0..50 to a quorum. A failover now may
    /// take reports from nodes of that quorum and from the epoch-2 node, which is the most
    /// up to date (`election::elect`): its log wins, and any of 0..50 it lacks are gone.
    /// Only a record of the leader's own epoch on a quorum keeps every later election from
    /// choosing a log without it, and with it, everything below; or the records on every node.
    #[test]
    fn a_new_leader_commits_earlier_epochs_records_only_once_one_of_its_own_is_on_a_quorum() {
        let third = LeaderConfig { epoch: 3, epoch_history: vec![(1, 0), (3, 50)], ..config(Quorum::Count(2)) };
        let mut leader = Leader::new(third, 50, 50, 0);
        leader.handle(LeaderInput::Connected { peer: 2, written_end: 0, durable_end: 0 });
        let old = |written_end, durable_end, last_epoch| Message::Ack {
            log: "l".into(),
            epoch: 3,
            written_end,
            durable_end,
            last_epoch,
        };
        leader.handle(LeaderInput::Received { peer: 2, msg: old(50, 50, 1) });
        let actions = drain(&mut leader);
        assert!(!actions.iter().any(|a| matches!(a, LeaderAction::Committed { .. })), "{actions:?}");
        assert_eq!(leader.commit_end(), 0, "0..50 of epoch 1 are on a quorum, no record of epoch 3 is");
        leader.handle(LeaderInput::Written { end: 51 });
        leader.handle(LeaderInput::Synced { end: 51 });
        assert_eq!(leader.commit_end(), 0, "epoch 3's first record is on the leader alone");
        let _ = drain(&mut leader);
        leader.handle(LeaderInput::Received { peer: 2, msg: old(51, 51, 3) });
        assert_eq!(drain(&mut leader), vec![LeaderAction::Committed { commit_end: 51 }]);
        // A slot restored after a restart counts under the same rule.
        let fourth =
            LeaderConfig { epoch: 4, epoch_history: vec![(1, 0), (3, 50), (4, 60)], ..config(Quorum::Count(2)) };
        let mut leader = Leader::new(fourth, 60, 60, 0);
        leader.restore_peer(2, 60, 3);
        assert_eq!(leader.commit_end(), 0, "60 records of epochs 1 and 3 on a quorum, none of epoch 4");
        // Records on every node are safe: no election can choose a node without them.
        leader.restore_peer(3, 55, 3);
        assert_eq!(leader.commit_end(), 55);
    }

    #[test]
    fn a_commit_after_the_last_chunk_reaches_the_followers_without_waiting_for_a_heartbeat() {
        let heartbeats = |actions: &[LeaderAction]| -> Vec<(NodeId, u64)> {
            actions
                .iter()
                .filter_map(|a| match a {
                    LeaderAction::Send { peer, msg: Message::Heartbeat { logs, .. } } => Some((*peer, logs[0].2)),
                    _ => None,
                })
                .collect()
        };
        let mut leader = Leader::new(config(Quorum::Count(2)), 0, 0, 0);
        for peer in [2, 3] {
            leader.handle(LeaderInput::Connected { peer, written_end: 0, durable_end: 0 });
            leader.handle(LeaderInput::Received { peer, msg: ack(0, 0) });
        }
        leader.handle(LeaderInput::Written { end: 10 });
        for peer in [2, 3] {
            leader.handle(LeaderInput::Shipped { peer, base_offset: 0, end_offset: 10, len_bytes: 100 });
        }
        let _ = std::iter::from_fn(|| leader.poll_action()).count();
        // The chunk carried commit point 0; 10 commits once a follower and the leader synced.
        leader.handle(LeaderInput::Synced { end: 10 });
        leader.handle(LeaderInput::Received { peer: 2, msg: ack(10, 10) });
        assert_eq!(leader.commit_end(), 10);
        let mut heartbeats_at = |now_ms| {
            leader.handle(LeaderInput::Tick { now_ms });
            heartbeats(&std::iter::from_fn(|| leader.poll_action()).collect::<Vec<_>>())
        };
        assert_eq!(heartbeats_at(3), vec![], "a chunk went out 3 ms ago");
        assert_eq!(heartbeats_at(6), vec![(2, 10), (3, 10)]);
        // Told once: the next heartbeat is the idle one.
        assert_eq!(heartbeats_at(50), vec![]);
        assert_eq!(heartbeats_at(106), vec![(2, 10), (3, 10)]);
    }

    #[test]
    fn a_peer_is_shipped_from_its_end_within_its_window() {
        let mut leader = Leader::new(config(Quorum::All), 100, 100, 0);
        leader.handle(LeaderInput::Connected { peer: 2, written_end: 0, durable_end: 0 });
        let actions: Vec<_> = std::iter::from_fn(|| leader.poll_action()).collect();
        // Asked where it stands at once, with a heartbeat (over a kept connection, nothing
        // else would ask before the heartbeat interval).
        assert!(
            matches!(&actions[..], [LeaderAction::Send { peer: 2, msg: Message::Heartbeat { epoch: 1, .. } }]),
            "nothing is shipped before the peer says where it stands: {actions:?}"
        );
        leader.handle(LeaderInput::Received { peer: 2, msg: ack(40, 40) });
        let actions: Vec<_> = std::iter::from_fn(|| leader.poll_action()).collect();
        assert!(actions.iter().any(|a| matches!(a, LeaderAction::Ship { peer: 2, from: 40, .. })), "{actions:?}");
    }

    #[test]
    fn a_peer_holding_records_of_an_epoch_that_ends_earlier_here_is_cut_back_before_shipping() {
        // Epoch 1 wrote 0..50 here and more that a power loss took; epoch 2 began at 50.
        let config = LeaderConfig { epoch: 2, epoch_history: vec![(1, 0), (2, 50)], ..config(Quorum::Count(2)) };
        let mut leader = Leader::new(config, 80, 80, 0);
        leader.handle(LeaderInput::Connected { peer: 2, written_end: 0, durable_end: 0 });
        while leader.poll_action().is_some() {} // the heartbeat asking where it stands
        let diverged = Message::Ack { log: "l".into(), epoch: 1, written_end: 70, durable_end: 70, last_epoch: 1 };
        leader.handle(LeaderInput::Received { peer: 2, msg: diverged });
        let actions: Vec<_> = std::iter::from_fn(|| leader.poll_action()).collect();
        let truncate =
            Message::Truncate { log: "l".into(), epoch: 2, to: 50, written_end: 70, last_epoch: 1, matched_epoch: 1 };
        assert_eq!(actions, vec![LeaderAction::Send { peer: 2, msg: truncate }]);
        assert_eq!(leader.commit_end(), 0, "the peer's records past 50 count for nothing");
        let cut = Message::Ack { log: "l".into(), epoch: 2, written_end: 50, durable_end: 50, last_epoch: 1 };
        // (epoch 2 here: the peer's log was checked against epoch 2 when it cut)
        leader.handle(LeaderInput::Received { peer: 2, msg: cut });
        let actions: Vec<_> = std::iter::from_fn(|| leader.poll_action()).collect();
        assert!(actions.iter().any(|a| matches!(a, LeaderAction::Ship { peer: 2, from: 50, .. })), "{actions:?}");
        assert_eq!(leader.peer_state(2), Some((50, 50, true)), "the ack of the cut log counts");
        assert_eq!(leader.commit_end(), 0, "but 0..50 are epoch 1's, and no record of epoch 2 is on a quorum yet");
        let more = Message::Ack { log: "l".into(), epoch: 2, written_end: 60, durable_end: 60, last_epoch: 2 };
        leader.handle(LeaderInput::Received { peer: 2, msg: more });
        assert_eq!(leader.commit_end(), 60);
    }

    #[test]
    fn a_peer_acking_records_shipped_before_their_written_arrived_is_not_taken_for_diverged() {
        // The driver reads the local log to ship, so a chunk can carry records whose `Written`
        // has not reached the core yet; the peer's ack of them must not look like divergence.
        let mut leader = Leader::new(config(Quorum::Count(2)), 0, 0, 0);
        leader.handle(LeaderInput::Connected { peer: 2, written_end: 0, durable_end: 0 });
        leader.handle(LeaderInput::Received { peer: 2, msg: ack(0, 0) });
        leader.handle(LeaderInput::Written { end: 5 });
        let _ = std::iter::from_fn(|| leader.poll_action()).count();
        leader.handle(LeaderInput::Shipped { peer: 2, base_offset: 0, end_offset: 8, len_bytes: 100 });
        leader.handle(LeaderInput::Received { peer: 2, msg: ack(8, 8) });
        let actions: Vec<_> = std::iter::from_fn(|| leader.poll_action()).collect();
        assert!(
            !actions.iter().any(|a| matches!(a, LeaderAction::Send { msg: Message::Truncate { .. }, .. })),
            "{actions:?}"
        );
        assert_eq!(leader.peer_state(2), Some((8, 8, true)));
    }

    #[test]
    fn the_commit_point_never_passes_the_leaders_own_durable_end() {
        let mut leader = Leader::new(config(Quorum::Count(2)), 0, 0, 0);
        for peer in [2, 3] {
            leader.handle(LeaderInput::Connected { peer, written_end: 0, durable_end: 0 });
            leader.handle(LeaderInput::Received { peer, msg: ack(0, 0) });
        }
        leader.handle(LeaderInput::Written { end: 10 });
        leader.handle(LeaderInput::Received { peer: 2, msg: ack(10, 10) });
        leader.handle(LeaderInput::Received { peer: 3, msg: ack(10, 10) });
        assert_eq!(leader.commit_end(), 0, "two followers are a quorum of copies, but not without the leader's");
        leader.handle(LeaderInput::Synced { end: 10 });
        assert_eq!(leader.commit_end(), 10);
    }

    #[test]
    fn a_follower_that_diverged_below_the_leaders_start_is_cut_then_reseeded() {
        // Epoch 1 wrote 0..70 on the follower; the leader lost 50..70 in a power loss, began
        // epoch 2 at 50, wrote up to 100, and retention then deleted everything below 80.
        let config = LeaderConfig { epoch: 2, epoch_history: vec![(1, 0), (2, 50)], ..config(Quorum::Count(2)) };
        let mut leader = Leader::new(config, 100, 100, 0);
        leader.handle(LeaderInput::StartMoved { start: 80 });
        let mut follower = Follower::new("l".into(), 1, 0..70, 70, 1, vec![(1, 0)]);
        leader.handle(LeaderInput::Connected { peer: 2, written_end: 70, durable_end: 70 });
        let hello = Message::Ack { log: "l".into(), epoch: 1, written_end: 70, durable_end: 70, last_epoch: 1 };
        leader.handle(LeaderInput::Received { peer: 2, msg: hello });
        // Pump messages both ways, carrying out the follower's actions as its driver would.
        let mut cuts = Vec::new();
        let mut resets = Vec::new();
        let mut shipped_from = None;
        for _ in 0..20 {
            let mut to_follower = Vec::new();
            while let Some(action) = leader.poll_action() {
                match action {
                    LeaderAction::Send { peer: 2, msg } => to_follower.push(msg),
                    LeaderAction::Ship { peer: 2, from, .. } => shipped_from = Some(from),
                    _ => {}
                }
            }
            for msg in to_follower {
                recv(&mut follower, 1, msg);
            }
            let mut to_leader = Vec::new();
            while let Some(action) = follower.poll_action() {
                match action {
                    FollowerAction::Send { msg, .. } => to_leader.push(msg),
                    FollowerAction::Truncate { to } => {
                        cuts.push(to);
                        follower.handle(FollowerInput::Truncated { written_end: to, last_epoch: 1 });
                    }
                    FollowerAction::Reset { start_offset } => {
                        resets.push(start_offset);
                        follower.handle(FollowerInput::Reset { start_offset });
                    }
                    _ => {}
                }
            }
            for msg in to_leader {
                leader.handle(LeaderInput::Received { peer: 2, msg });
            }
        }
        assert_eq!(cuts, vec![50], "the records the leader lost are cut, nothing it holds");
        assert_eq!(resets, vec![80], "then the follower is re-seeded at the leader's start");
        assert_eq!(shipped_from, Some(80), "and shipped from there");
        assert_eq!(follower.written_end(), 80);
    }

    #[test]
    fn a_failed_cut_is_retried_with_the_next_heartbeat_not_at_once() {
        let mut follower = Follower::new("l".into(), 1, 0..70, 70, 1, vec![(1, 0)]);
        let cut =
            Message::Truncate { log: "l".into(), epoch: 2, to: 50, written_end: 70, last_epoch: 1, matched_epoch: 1 };
        for _ in 0..3 {
            recv(&mut follower, 1, cut.clone());
            assert_eq!(follower.poll_action(), Some(FollowerAction::Truncate { to: 50 }));
            follower.handle(FollowerInput::ApplyFailed);
            assert_eq!(follower.poll_action(), None, "no ack that would bring the same cut straight back");
            let heartbeat = Message::Heartbeat { epoch: 2, logs: vec![("l".into(), 100, 0)] };
            recv(&mut follower, 1, heartbeat);
            let still = Message::Ack { log: "l".into(), epoch: 0, written_end: 70, durable_end: 70, last_epoch: 1 };
            assert_eq!(follower.poll_action(), Some(FollowerAction::Send { to: 1, msg: still }));
        }
        // A failed apply is still answered at once (the leader resends after `resend_ms`).
        let chunk = chunk(70, 71);
        let mut follower = Follower::new("l".into(), 1, 0..70, 70, 1, vec![(1, 0)]);
        let check =
            Message::Truncate { log: "l".into(), epoch: 1, to: 70, written_end: 70, last_epoch: 1, matched_epoch: 1 };
        recv(&mut follower, 1, check);
        let _ = std::iter::from_fn(|| follower.poll_action()).count();
        follower.handle(FollowerInput::Received {
            from: 1,
            msg: Message::Append { log: "l".into(), epoch: 1, commit_end: 0, chunk },
        });
        assert!(matches!(follower.poll_action(), Some(FollowerAction::Apply { .. })));
        follower.handle(FollowerInput::ApplyFailed);
        assert!(matches!(follower.poll_action(), Some(FollowerAction::Send { .. })));
    }

    #[test]
    fn a_follower_takes_the_commit_point_only_once_its_log_was_checked() {
        // Records 50..70 here are a tail the leader lost; its epoch 2 began at 50 and has
        // committed up to 90.
        let mut follower = Follower::new("l".into(), 1, 0..70, 70, 1, vec![(1, 0)]);
        let heartbeat = Message::Heartbeat { epoch: 2, logs: vec![("l".into(), 100, 90)] };
        recv(&mut follower, 1, heartbeat.clone());
        assert_eq!(follower.commit_end(), 0, "50..70 are not the leader's: none of them is committed");
        let chunk = chunk(90, 95);
        let append = Message::Append { log: "l".into(), epoch: 2, commit_end: 90, chunk };
        recv(&mut follower, 1, append);
        assert_eq!(follower.commit_end(), 0);
        let cut =
            Message::Truncate { log: "l".into(), epoch: 2, to: 50, written_end: 70, last_epoch: 1, matched_epoch: 1 };
        recv(&mut follower, 1, cut);
        let _ = std::iter::from_fn(|| follower.poll_action()).count();
        follower.handle(FollowerInput::Truncated { written_end: 50, last_epoch: 1 });
        recv(&mut follower, 1, heartbeat.clone());
        assert_eq!(follower.commit_end(), 0, "cut, not yet checked: the next round says whether it agrees");
        let check =
            Message::Truncate { log: "l".into(), epoch: 2, to: 50, written_end: 50, last_epoch: 1, matched_epoch: 1 };
        recv(&mut follower, 1, check);
        recv(&mut follower, 1, heartbeat);
        assert_eq!(follower.commit_end(), 50, "checked: records up to its end are the leader's");
    }

    /// Feeds a message to a follower, recording a new leader at once as the driver does.
    fn recv(follower: &mut Follower, from: NodeId, msg: Message) {
        follower.handle(FollowerInput::Received { from, msg });
        if let Some(FollowerAction::RecordLeader { epoch, leader }) = follower.actions.front().cloned() {
            follower.actions.pop_front();
            follower.handle(FollowerInput::LeaderRecorded { epoch, leader });
        }
    }

    fn drain(leader: &mut Leader) -> Vec<LeaderAction> {
        std::iter::from_fn(|| leader.poll_action()).collect()
    }

    /// A leader with both peers connected and checked against its epoch, nothing pending.
    fn checked_leader(written_end: u64, durable_end: u64) -> Leader {
        let mut leader = Leader::new(config(Quorum::Count(2)), written_end, durable_end, 0);
        for peer in [2, 3] {
            leader.handle(LeaderInput::Connected { peer, written_end: 0, durable_end: 0 });
            leader.handle(LeaderInput::Received { peer, msg: ack(0, 0) });
        }
        let _ = drain(&mut leader);
        leader
    }

    fn view(leader: &Leader, peer: NodeId) -> (u64, u64, u64) {
        leader.peer_view(peer).map(|v| (v.chunks_in_flight, v.bytes_in_flight, v.next_offset)).unwrap()
    }

    /// Acks take chunks out of flight and move the resend clock (any progress, written or
    /// synced); a repeated ack changes nothing; without progress for `resend_ms`, what is in
    /// flight is sent again from what the peer acknowledged.
    #[test]
    fn acks_take_chunks_out_of_flight_and_progress_of_either_end_holds_off_a_resend() {
        let mut leader = checked_leader(0, 0);
        leader.handle(LeaderInput::Written { end: 30 });
        leader.handle(LeaderInput::Shipped { peer: 2, base_offset: 0, end_offset: 20, len_bytes: 100 });
        leader.handle(LeaderInput::Shipped { peer: 2, base_offset: 20, end_offset: 30, len_bytes: 100 });
        assert_eq!(view(&leader, 2), (2, 200, 30));
        leader.handle(LeaderInput::Received { peer: 2, msg: ack(0, 0) });
        assert_eq!(view(&leader, 2), (2, 200, 30), "a repeated ack");
        leader.handle(LeaderInput::Tick { now_ms: 400 });
        leader.handle(LeaderInput::Received { peer: 2, msg: ack(20, 10) });
        assert_eq!(view(&leader, 2), (1, 100, 30));
        leader.handle(LeaderInput::Tick { now_ms: 800 });
        leader.handle(LeaderInput::Received { peer: 2, msg: ack(20, 20) });
        leader.handle(LeaderInput::Tick { now_ms: 1_000 });
        assert_eq!(view(&leader, 2), (1, 100, 30), "synced progress at 800 holds off the resend");
        leader.handle(LeaderInput::Tick { now_ms: 1_300 });
        assert_eq!(view(&leader, 2), (0, 0, 20), "resent from what the peer acknowledged");
    }

    /// Less written, or less synced, than the peer acknowledged before: each alone is believed.
    #[test]
    fn an_ack_with_less_written_or_less_synced_than_before_is_believed() {
        let mut leader = checked_leader(100, 100);
        for (written, durable) in [(100, 50), (60, 50), (60, 30)] {
            leader.handle(LeaderInput::Received { peer: 2, msg: ack(written, durable) });
            assert_eq!(leader.peer_state(2), Some((written, durable, true)));
        }
    }

    /// A checked peer acknowledging records past this log's end holds what this log lost,
    /// unless a chunk is on its way (its `Shipped`, which says how far was written, may come
    /// after the peer's ack of it).
    #[test]
    fn records_past_the_end_mean_lost_records_only_with_no_chunk_on_its_way() {
        let mut shipping = checked_leader(0, 0);
        shipping.handle(LeaderInput::Written { end: 10 });
        shipping.handle(LeaderInput::Received { peer: 2, msg: ack(15, 15) });
        assert_eq!(shipping.lacks_records(), None);
        let mut idle = checked_leader(0, 0);
        idle.handle(LeaderInput::Written { end: 10 });
        idle.handle(LeaderInput::Shipped { peer: 2, base_offset: 0, end_offset: 10, len_bytes: 100 });
        let _ = drain(&mut idle);
        idle.handle(LeaderInput::Received { peer: 2, msg: ack(15, 15) });
        assert_eq!(idle.lacks_records(), Some((2, 10, 15, 1)));
    }

    /// A peer behind the leader's start is re-seeded once; the re-seed counts when its log
    /// reaches the start, and only then.
    #[test]
    fn a_reseed_counts_once_when_the_peers_log_reaches_the_leaders_start() {
        let mut leader = Leader::new(config(Quorum::Count(2)), 100, 100, 0);
        leader.handle(LeaderInput::StartMoved { start: 50 });
        leader.handle(LeaderInput::Connected { peer: 2, written_end: 0, durable_end: 0 });
        leader.handle(LeaderInput::Received { peer: 2, msg: ack(0, 0) });
        let actions = drain(&mut leader);
        assert!(
            actions.iter().any(|a| matches!(a, LeaderAction::Send { msg: Message::Reseed { .. }, .. })),
            "{actions:?}"
        );
        let gap = |leader: &Leader| leader.peer_view(2).map(|v| (v.gap, v.reseeds)).unwrap();
        assert_eq!(gap(&leader), (Some((0, 50)), 0));
        let reset = Message::Ack { log: "l".into(), epoch: 1, written_end: 50, durable_end: 50, last_epoch: 0 };
        leader.handle(LeaderInput::Received { peer: 2, msg: reset });
        assert_eq!(gap(&leader), (None, 1));
        leader.handle(LeaderInput::Received { peer: 2, msg: ack(60, 60) });
        assert_eq!(gap(&leader), (None, 1));
    }

    /// A checked peer whose last epoch ends earlier here than its log does holds records of
    /// that epoch this leader lost: they are cut, and until then it counts only up to the cut.
    #[test]
    fn a_checked_peer_found_diverged_counts_only_up_to_the_cut() {
        let config = LeaderConfig { epoch: 2, epoch_history: vec![(1, 0), (2, 50)], ..config(Quorum::Count(2)) };
        let mut leader = Leader::new(config, 80, 80, 0);
        leader.handle(LeaderInput::Connected { peer: 2, written_end: 0, durable_end: 0 });
        let checked = Message::Ack { log: "l".into(), epoch: 2, written_end: 80, durable_end: 80, last_epoch: 2 };
        leader.handle(LeaderInput::Received { peer: 2, msg: checked });
        assert_eq!(leader.peer_state(2), Some((80, 80, true)));
        let _ = drain(&mut leader);
        let diverged = Message::Ack { log: "l".into(), epoch: 2, written_end: 70, durable_end: 70, last_epoch: 1 };
        leader.handle(LeaderInput::Received { peer: 2, msg: diverged });
        let actions = drain(&mut leader);
        assert!(
            actions.iter().any(|a| matches!(a, LeaderAction::Send { msg: Message::Truncate { to: 50, .. }, .. })),
            "{actions:?}"
        );
        assert_eq!(leader.peer_state(2), Some((50, 50, true)));
    }

    /// A follower asks for another sync when more was applied while one ran, and for none once
    /// everything is synced.
    #[test]
    fn a_follower_syncs_again_when_more_was_applied_during_a_sync() {
        let mut follower = Follower::new("l".into(), 1, 0..5, 5, 1, vec![(1, 0)]);
        recv(
            &mut follower,
            1,
            Message::Truncate { log: "l".into(), epoch: 1, to: 5, written_end: 5, last_epoch: 1, matched_epoch: 1 },
        );
        while follower.poll_action().is_some() {}
        let syncs = |follower: &mut Follower| {
            std::iter::from_fn(|| follower.poll_action()).filter(|a| matches!(a, FollowerAction::Sync)).count()
        };
        let mut asked = 0;
        for (base, end) in [(5, 10), (10, 20)] {
            let append = Message::Append { log: "l".into(), epoch: 1, commit_end: 0, chunk: chunk(base, end) };
            recv(&mut follower, 1, append);
            assert!(matches!(follower.poll_action(), Some(FollowerAction::Apply { .. })));
            follower.handle(FollowerInput::Applied { written_end: end, last_epoch: 1, epochs_begun: vec![] });
            asked += syncs(&mut follower);
        }
        assert_eq!(asked, 1, "one sync at a time");
        follower.handle(FollowerInput::Synced { durable_end: 10 });
        assert_eq!(syncs(&mut follower), 1, "10..20 is not synced yet");
        follower.handle(FollowerInput::Synced { durable_end: 20 });
        assert_eq!(syncs(&mut follower), 0);
    }

    /// The driver routes messages by log; a follower core still takes nothing of another
    /// log's (not even its epoch), and a data loss that ends where its log ends loses nothing.
    #[test]
    fn a_follower_ignores_another_logs_messages_and_a_loss_ending_at_its_end() {
        let mut follower = Follower::new("l".into(), 1, 0..40, 40, 1, vec![(1, 0)]);
        recv(
            &mut follower,
            1,
            Message::Truncate { log: "l".into(), epoch: 1, to: 40, written_end: 40, last_epoch: 1, matched_epoch: 1 },
        );
        while follower.poll_action().is_some() {}
        let other = Message::Truncate {
            log: "other".into(),
            epoch: 5,
            to: 0,
            written_end: 40,
            last_epoch: 1,
            matched_epoch: 1,
        };
        follower.handle(FollowerInput::Received { from: 1, msg: other });
        assert_eq!(follower.poll_action(), None);
        recv(&mut follower, 1, Message::DataLoss { log: "l".into(), epoch: 1, from: 30, to: 40 });
        assert_eq!(follower.gap(), None);
    }

    /// A chunk the driver could not queue (the follower's outbox was full or closed) is asked
    /// for again by the core at its next tick.
    #[test]
    fn a_chunk_not_shipped_is_asked_for_again_at_the_next_tick() {
        let mut leader = checked_leader(0, 0);
        leader.handle(LeaderInput::Written { end: 10 });
        let asked = |actions: &[LeaderAction]| {
            actions.iter().filter(|a| matches!(a, LeaderAction::Ship { peer: 2, from: 0, .. })).count()
        };
        assert_eq!(asked(&drain(&mut leader)), 1);
        leader.handle(LeaderInput::NotShipped { peer: 2 });
        assert_eq!(asked(&drain(&mut leader)), 0);
        leader.handle(LeaderInput::Tick { now_ms: 1 });
        assert_eq!(asked(&drain(&mut leader)), 1, "asked again");
    }

    /// What receipts say ("synced on a quorum (2 of 3 nodes)") comes from these.
    #[test]
    fn copies_count_the_leader_and_each_peer_that_synced_that_far() {
        let mut leader = checked_leader(0, 0);
        leader.handle(LeaderInput::Synced { end: 10 });
        leader.handle(LeaderInput::Received { peer: 2, msg: ack(10, 10) });
        leader.handle(LeaderInput::Received { peer: 3, msg: ack(6, 4) });
        assert_eq!(leader.durable_end(), 10);
        assert_eq!(leader.nodes(), 3);
        assert_eq!([4, 5, 10, 11].map(|end| leader.copies_durable(end)), [3, 2, 2, 0]);
    }

    /// A sync that covers appends whose `Written` has not come yet ships them at once.
    #[test]
    fn a_sync_past_the_written_end_ships_what_it_covers() {
        let mut leader = checked_leader(0, 0);
        leader.handle(LeaderInput::Synced { end: 10 });
        let actions = drain(&mut leader);
        for peer in [2, 3] {
            assert!(actions.iter().any(|a| matches!(a, LeaderAction::Ship { peer: p, from: 0, .. } if *p == peer)));
        }
    }

    /// A chunk reported shipped counts as in flight only when it went, in order, to a peer still
    /// connected: not one that disconnected meanwhile, not one the peer's ack already passed,
    /// not an empty one.
    #[test]
    fn only_a_chunk_shipped_in_order_to_a_connected_peer_is_in_flight() {
        let in_flight = |leader: &Leader| leader.peer_view(2).map(|v| (v.chunks_in_flight, v.next_offset));
        let mut leader = checked_leader(0, 0);
        leader.handle(LeaderInput::Written { end: 10 });
        leader.handle(LeaderInput::Disconnected { peer: 2 });
        leader.handle(LeaderInput::Shipped { peer: 2, base_offset: 0, end_offset: 10, len_bytes: 100 });
        assert_eq!(in_flight(&leader), Some((0, 0)), "shipped to a peer that went away");

        let mut leader = checked_leader(0, 0);
        leader.handle(LeaderInput::Written { end: 10 });
        leader.handle(LeaderInput::Received { peer: 2, msg: ack(10, 10) });
        leader.handle(LeaderInput::Shipped { peer: 2, base_offset: 0, end_offset: 10, len_bytes: 100 });
        assert_eq!(in_flight(&leader), Some((0, 10)), "the peer had it already");
        leader.handle(LeaderInput::Shipped { peer: 2, base_offset: 10, end_offset: 10, len_bytes: 0 });
        assert_eq!(in_flight(&leader), Some((0, 10)), "an empty chunk");
        leader.handle(LeaderInput::Written { end: 20 });
        leader.handle(LeaderInput::Shipped { peer: 2, base_offset: 10, end_offset: 20, len_bytes: 100 });
        assert_eq!(in_flight(&leader), Some((1, 20)));
    }

    /// An ack counts only from a connected peer and only when it makes sense: one from a peer
    /// that disconnected, or one claiming more synced than written, changes nothing; one with
    /// less synced than written is taken as it is.
    #[test]
    fn an_ack_counts_only_from_a_connected_peer_and_when_synced_is_within_written() {
        let mut leader = checked_leader(10, 10);
        leader.handle(LeaderInput::Disconnected { peer: 2 });
        leader.handle(LeaderInput::Received { peer: 2, msg: ack(10, 10) });
        assert_eq!((leader.commit_end(), leader.peer_state(2)), (0, Some((0, 0, false))));
        leader.handle(LeaderInput::Received { peer: 3, msg: ack(5, 10) });
        assert_eq!((leader.commit_end(), leader.peer_state(3)), (0, Some((0, 0, true))));
        leader.handle(LeaderInput::Received { peer: 3, msg: ack(10, 5) });
        assert_eq!((leader.commit_end(), leader.peer_state(3)), (5, Some((10, 5, true))));
    }

    /// A follower that lost records it had acknowledged (unsynced ones in a power loss, or a
    /// copy removed by an operator) reconnects and reports less: the leader believes it, and
    /// ships it what it lacks, instead of waiting forever for it to pass an end it lost.
    #[test]
    fn a_peer_that_reports_less_than_it_acknowledged_is_refilled_from_what_it_reports() {
        let mut leader = Leader::new(config(Quorum::Count(2)), 100, 100, 0);
        leader.handle(LeaderInput::Connected { peer: 2, written_end: 0, durable_end: 0 });
        leader.handle(LeaderInput::Received { peer: 2, msg: ack(100, 100) });
        assert_eq!(leader.commit_end(), 100);
        leader.handle(LeaderInput::Disconnected { peer: 2 });
        // Restarted after a power loss: 50..100 were written there but not synced.
        leader.handle(LeaderInput::Connected { peer: 2, written_end: 0, durable_end: 0 });
        let _ = drain(&mut leader);
        let restarted = Message::Ack { log: "l".into(), epoch: 0, written_end: 50, durable_end: 50, last_epoch: 1 };
        leader.handle(LeaderInput::Received { peer: 2, msg: restarted });
        assert_eq!(leader.peer_state(2), Some((50, 50, true)), "what it reports is the truth");
        let _ = drain(&mut leader);
        leader.handle(LeaderInput::Received { peer: 2, msg: ack(50, 50) });
        let actions = drain(&mut leader);
        assert!(actions.iter().any(|a| matches!(a, LeaderAction::Ship { peer: 2, from: 50, .. })), "{actions:?}");
        assert_eq!(leader.commit_end(), 100, "the commit point never goes back");

        // Without a reconnect too: an ack below what it acknowledged resets it.
        leader.handle(LeaderInput::Shipped { peer: 2, base_offset: 50, end_offset: 100, len_bytes: 10 });
        leader.handle(LeaderInput::Received { peer: 2, msg: ack(100, 100) });
        let _ = drain(&mut leader);
        leader.handle(LeaderInput::Received { peer: 2, msg: ack(0, 0) });
        assert_eq!(leader.peer_state(2), Some((0, 0, true)));
        let actions = drain(&mut leader);
        assert!(actions.iter().any(|a| matches!(a, LeaderAction::Ship { peer: 2, from: 0, .. })), "{actions:?}");
    }

    /// Only acks of a log checked against the leader's own epoch count toward the commit point.
    #[test]
    fn an_ack_of_an_earlier_epoch_counts_for_nothing() {
        let config = LeaderConfig { epoch: 2, epoch_history: vec![(1, 0), (2, 50)], ..config(Quorum::Count(2)) };
        let mut leader = Leader::new(config, 80, 80, 0);
        leader.handle(LeaderInput::Connected { peer: 2, written_end: 0, durable_end: 0 });
        let old = Message::Ack { log: "l".into(), epoch: 1, written_end: 40, durable_end: 40, last_epoch: 1 };
        leader.handle(LeaderInput::Received { peer: 2, msg: old });
        let actions = drain(&mut leader);
        assert!(!actions.iter().any(|a| matches!(a, LeaderAction::Committed { .. })), "{actions:?}");
        assert_eq!(leader.commit_end(), 0);
        assert_eq!(leader.peer_state(2), Some((0, 0, true)));
    }

    /// An ack from a log that holds or was checked against a later epoch means another leader
    /// took over: this one counts nothing of it and stops leading.
    #[test]
    fn an_ack_of_a_later_epoch_deposes_the_leader_and_counts_for_nothing() {
        for (checked, last) in [(2, 1), (0, 2), (2, 2)] {
            let mut leader = Leader::new(config(Quorum::Count(2)), 100, 100, 0);
            leader.handle(LeaderInput::Connected { peer: 2, written_end: 0, durable_end: 0 });
            let _ = drain(&mut leader);
            let later =
                Message::Ack { log: "l".into(), epoch: checked, written_end: 80, durable_end: 80, last_epoch: last };
            leader.handle(LeaderInput::Received { peer: 2, msg: later });
            let actions = drain(&mut leader);
            assert_eq!(actions, vec![LeaderAction::Deposed { epoch: 2 }], "checked {checked}, last {last}");
            assert_eq!((leader.commit_end(), leader.deposed_by()), (0, Some(2)));
            // From now on it does nothing.
            leader.handle(LeaderInput::Connected { peer: 3, written_end: 0, durable_end: 0 });
            leader.handle(LeaderInput::Received { peer: 3, msg: ack(100, 100) });
            leader.handle(LeaderInput::Tick { now_ms: 10_000 });
            assert_eq!(drain(&mut leader), vec![]);
            assert_eq!(leader.commit_end(), 0);
        }
    }

    /// A follower records who leads a new epoch, durably, before it takes anything of it.
    #[test]
    fn a_follower_records_a_new_leader_before_taking_anything_of_its_epoch() {
        let mut follower = Follower::new("l".into(), 0, 0..5, 5, 1, vec![(1, 0)]);
        let check =
            Message::Truncate { log: "l".into(), epoch: 1, to: 5, written_end: 5, last_epoch: 1, matched_epoch: 1 };
        follower.handle(FollowerInput::Received { from: 1, msg: check });
        assert_eq!(follower.poll_action(), Some(FollowerAction::RecordLeader { epoch: 1, leader: 1 }));
        assert_eq!(follower.poll_action(), None, "nothing of the epoch before it is recorded");
        assert_eq!(follower.checked_epoch(), 0);
        follower.handle(FollowerInput::LeaderRecorded { epoch: 1, leader: 1 });
        assert_eq!(follower.poll_action(), Some(FollowerAction::Send { to: 1, msg: ack(5, 5) }));
        assert_eq!((follower.checked_epoch(), follower.leader()), (1, Some(1)));
    }

    /// After a restart (the recorded leader restored), another node claiming the epoch the log
    /// follows is refused, and so is an older epoch; a later epoch is a new leader.
    #[test]
    fn a_follower_refuses_another_node_claiming_the_epoch_it_follows_also_after_a_restart() {
        let mut follower = Follower::new("l".into(), 0, 0..5, 5, 3, vec![(3, 0)]);
        follower.restore_leader(3, 1);
        let truncate = |epoch| Message::Truncate {
            log: "l".into(),
            epoch,
            to: 5,
            written_end: 5,
            last_epoch: 3,
            matched_epoch: 3,
        };
        follower.handle(FollowerInput::Received { from: 9, msg: truncate(3) });
        assert_eq!(follower.poll_action(), None, "a stranger claiming epoch 3 gets nothing");
        assert_eq!(follower.checked_epoch(), 0);
        follower.handle(FollowerInput::Received { from: 9, msg: truncate(2) });
        assert!(
            matches!(follower.poll_action(), Some(FollowerAction::Send { to: 9, .. })),
            "a stale one learns where it stands"
        );
        assert_eq!(follower.checked_epoch(), 0);
        follower.handle(FollowerInput::Received { from: 1, msg: truncate(3) });
        assert!(matches!(follower.poll_action(), Some(FollowerAction::Send { to: 1, .. })), "its leader is taken");
        assert_eq!(follower.checked_epoch(), 3);
        follower.handle(FollowerInput::Received { from: 9, msg: truncate(4) });
        assert_eq!(follower.poll_action(), Some(FollowerAction::RecordLeader { epoch: 4, leader: 9 }));
    }

    /// A leader whose disk was replaced starts empty, in epoch 1, and meets a follower holding
    /// 0..100 of an earlier epoch 1: it must not take that log for its own (a `Truncate` to 100
    /// cut nothing, and its appends landed on the foreign prefix); it stops and says why.
    #[test]
    fn a_leader_that_lost_records_a_follower_holds_stops_instead_of_writing_over_them() {
        let mut leader = Leader::new(config(Quorum::Count(2)), 0, 0, 0);
        leader.handle(LeaderInput::Connected { peer: 2, written_end: 0, durable_end: 0 });
        let _ = drain(&mut leader);
        let holds = Message::Ack { log: "l".into(), epoch: 0, written_end: 100, durable_end: 100, last_epoch: 1 };
        leader.handle(LeaderInput::Received { peer: 2, msg: holds });
        let stop = LeaderAction::LacksRecords { peer: 2, from: 0, to: 100, last_epoch: 1 };
        assert_eq!(drain(&mut leader), vec![stop]);
        assert_eq!(leader.lacks_records(), Some((2, 0, 100, 1)));
        leader.handle(LeaderInput::Written { end: 3 });
        leader.handle(LeaderInput::Synced { end: 3 });
        leader.handle(LeaderInput::Connected { peer: 3, written_end: 0, durable_end: 0 });
        leader.handle(LeaderInput::Received { peer: 3, msg: ack(0, 0) });
        assert_eq!(drain(&mut leader), vec![], "nothing shipped, nothing committed");
        assert_eq!(leader.commit_end(), 0);
    }

    #[test]
    fn a_restored_slot_counts_only_up_to_where_its_epoch_ends_here() {
        // The slot was saved in epoch 1, when the follower had 0..100 durable; this log lost
        // 80..100 in a power loss, and epochs 2 and 3 wrote 80..120 since. The follower's
        // 80..100 are epoch 1's lost tail, not these records: the slot counts up to 80.
        let config =
            LeaderConfig { epoch: 3, epoch_history: vec![(1, 0), (2, 80), (3, 110)], ..config(Quorum::Count(2)) };
        let mut leader = Leader::new(config, 120, 120, 0);
        leader.restore_peer(2, 100, 1);
        assert_eq!(leader.peer_state(2), Some((80, 80, false)));
        assert_eq!(leader.commit_end(), 0, "0..80 are on a quorum, but no record of epoch 3 is");
        // A slot saved in the current epoch counts in full.
        leader.restore_peer(3, 115, 3);
        assert_eq!(leader.commit_end(), 115);
    }

    /// Runs the divergence check between `leader` and follower `peer` (2) until the follower
    /// is checked, carrying out its cuts as the driver does on a log whose epoch history is
    /// `history` (the follower's). Returns the cut points, in order.
    fn check_peer(leader: &mut Leader, follower: &mut Follower, history: &[(u64, u64)]) -> Vec<u64> {
        let mut cuts = Vec::new();
        let hello = Message::Ack {
            log: "l".into(),
            epoch: follower.checked_epoch(),
            written_end: follower.written_end(),
            durable_end: follower.written_end(),
            last_epoch: follower.last_epoch,
        };
        leader.handle(LeaderInput::Connected { peer: 2, written_end: follower.written_end(), durable_end: 0 });
        leader.handle(LeaderInput::Received { peer: 2, msg: hello });
        for _ in 0..16 {
            for action in drain(leader) {
                if let LeaderAction::Send { peer: 2, msg } = action {
                    recv(follower, 1, msg);
                }
            }
            let mut acks = Vec::new();
            while let Some(action) = follower.poll_action() {
                match action {
                    FollowerAction::Send { msg, .. } => acks.push(msg),
                    FollowerAction::Truncate { to } => {
                        cuts.push(to);
                        // The epoch of the last record kept, from the log's own history.
                        let last_epoch = history.iter().rev().find(|(_, start)| *start < to).map_or(0, |(e, _)| *e);
                        follower.handle(FollowerInput::Truncated { written_end: to, last_epoch });
                    }
                    _ => {}
                }
            }
            if acks.is_empty() {
                break;
            }
            for msg in acks {
                leader.handle(LeaderInput::Received { peer: 2, msg });
            }
        }
        cuts
    }

    /// Found by the election model (`election::tests`, with a one-round check in place of
    /// cutting back to where two copies agree). With leaders on different nodes, a follower's
    /// last epoch may be one the leader never held, begun below where the leader's earlier
    /// epoch ends: node A led epoch 1 and wrote offset 0 unsynced; node B led epoch 2 and
    /// wrote its own offset 0; A led epochs 3 and 4 and holds epoch 1's record at 0, epoch
    /// 3's at 1. B's last epoch is 2; in A's history epoch 1, the newest not after 2, ends
    /// at offset 1. Cut only there, B kept its record at 0 and was taken as agreeing: its copy
    /// then counted toward commits of records it does not hold. As in Kafka (KIP-279, described at
    /// `tern_wal::Log::epoch_end`), the `Truncate` names epoch 1, and B also cuts where its
    /// own copy of epoch 1 ends: where its epoch 2 begins, at 0.
    #[test]
    fn a_follower_whose_last_epoch_the_leader_never_held_is_cut_where_its_own_copy_parts() {
        let fourth = LeaderConfig { epoch: 4, epoch_history: vec![(1, 0), (3, 1), (4, 2)], ..config(Quorum::Count(2)) };
        let mut leader = Leader::new(fourth, 2, 2, 0);
        let history = [(2, 0)];
        let mut follower = Follower::new("l".into(), 2, 0..1, 1, 2, history.to_vec());
        let cuts = check_peer(&mut leader, &mut follower, &history);
        assert_eq!(cuts, vec![0], "epoch 2's record at 0 is not the leader's");
        assert_eq!(follower.checked_epoch(), 4, "the emptied log is checked by the next round");
        assert_eq!(leader.peer_view(2).map(|v| v.next_offset), Some(0));
        assert!(leader.peer_state(2).is_some_and(|(written, _, _)| written == 0));
    }

    /// A follower may need several rounds: each cut leaves a last epoch the leader may not
    /// hold either. Node F holds epoch 1 at 0..8 (from a leader of epoch 1 whose records after
    /// 5 no quorum held) and epoch 5 at 8..10 (it led epoch 5, elected without hearing from
    /// the holders of epochs 2 and 3). The leader of epoch 6 holds epoch 1 at 0..5, 2 at 5..7,
    /// 3 at 7..9. Its newest epoch not after 5 is 3, ending at 9: F cuts where its own copy
    /// of 3 ends, where its epoch 5 begins (8). Its last epoch is then 1, which ends at 5 in
    /// the leader's log: F cuts to 5, and the third round cuts nothing and checks the log.
    #[test]
    fn a_follower_is_cut_again_until_a_round_cuts_nothing() {
        let sixth =
            LeaderConfig { epoch: 6, epoch_history: vec![(1, 0), (2, 5), (3, 7), (6, 9)], ..config(Quorum::Count(2)) };
        let mut leader = Leader::new(sixth, 9, 9, 0);
        let history = [(1, 0), (5, 8)];
        let mut follower = Follower::new("l".into(), 5, 0..10, 10, 5, history.to_vec());
        let cuts = check_peer(&mut leader, &mut follower, &history);
        assert_eq!(cuts, vec![8, 5]);
        assert_eq!(follower.checked_epoch(), 6);
        assert_eq!(follower.written_end(), 5);
        assert_eq!(leader.peer_state(2), Some((5, 5, true)), "the ack of the checked log counts");
        // A follower that holds the leader's epoch where it parts is cut once, then checked.
        let sixth =
            LeaderConfig { epoch: 6, epoch_history: vec![(1, 0), (2, 5), (3, 7), (6, 9)], ..config(Quorum::Count(2)) };
        let mut leader = Leader::new(sixth, 9, 9, 0);
        let history = [(1, 0), (2, 5)];
        let mut follower = Follower::new("l".into(), 2, 0..8, 8, 2, history.to_vec());
        assert_eq!(check_peer(&mut leader, &mut follower, &history), vec![7]);
        assert_eq!(follower.checked_epoch(), 6);
    }

    /// A deposed leader that began its epoch and wrote nothing in it keeps the epoch's entry at
    /// its end. Its new leader never held that epoch and ships it frames of older ones: the
    /// entry goes first, by a cut that removes no record, or the log refuses them.
    #[test]
    fn an_epoch_begun_here_that_wrote_nothing_is_cut_away_before_the_log_is_checked() {
        let fifth = LeaderConfig { epoch: 5, epoch_history: vec![(1, 0), (5, 9)], ..config(Quorum::Count(2)) };
        let mut leader = Leader::new(fifth, 9, 9, 0);
        // It led epoch 4 from 6 and wrote nothing; its last record is of epoch 1.
        let history = [(1, 0), (4, 6)];
        let mut follower = Follower::new("l".into(), 4, 0..6, 6, 1, history.to_vec());
        assert_eq!(check_peer(&mut leader, &mut follower, &history), vec![6]);
        assert_eq!(follower.epoch_history, vec![(1, 0)]);
        assert_eq!(follower.checked_epoch(), 5);
    }

    /// Found by the simulator with leaders moving between nodes (seed 0x7090fc08e0770e75 of
    /// `failover_holds_with_five_nodes_and_heavy_faults`, 300 seeds): node 0 holds epoch 1 at
    /// 0..13 (one batch 9..12) and epoch 4 at 13..24; its new leader holds epoch 2 at 0..10 and
    /// leads epoch 5. The leader's newest epoch not after 4 is 2, ending at 10; node 0 holds no
    /// record of epoch 2. Cut at min(10, 13) it was told to cut inside its batch 9..12, which
    /// a log cannot do. It cuts where its epoch 4 begins (13), then, its last epoch 1 being
    /// before every epoch the leader holds, back to 0.
    #[test]
    fn a_follower_holding_nothing_of_the_matched_epoch_cuts_where_its_later_epochs_begin() {
        let fifth = LeaderConfig { epoch: 5, epoch_history: vec![(2, 0), (5, 10)], ..config(Quorum::Count(2)) };
        let mut leader = Leader::new(fifth, 13, 13, 0);
        let history = [(1, 0), (4, 13)];
        let mut follower = Follower::new("l".into(), 4, 0..24, 24, 4, history.to_vec());
        assert_eq!(check_peer(&mut leader, &mut follower, &history), vec![13, 0]);
        assert_eq!(follower.checked_epoch(), 5);
    }

    /// Found by the simulator with leaders moving between nodes (seed 0x83ac81096ca8b784 of
    /// `failover_keeps_every_committed_record_and_one_leader_per_epoch`, 2,000 seeds): node 1
    /// was re-seeded at 25 by a leader whose retention had deleted what came before, and then
    /// followed another leader, whose log starts at 0. Its empty log has no epoch; taken for
    /// one of records older than epochs, it was told to cut back to where the leader's first
    /// epoch begins (0), below its start, which no log can do. It holds nothing that can
    /// part from the leader's: it is checked as it stands, and shipped from its end.
    #[test]
    fn an_empty_log_re_seeded_by_another_leader_is_checked_as_it_stands() {
        let fifth =
            LeaderConfig { epoch: 5, epoch_history: vec![(1, 0), (2, 207), (5, 237)], ..config(Quorum::Count(2)) };
        let mut leader = Leader::new(fifth, 237, 237, 0);
        let mut follower = Follower::new("l".into(), 4, 25..25, 25, 0, Vec::new());
        assert_eq!(check_peer(&mut leader, &mut follower, &[]), Vec::<u64>::new());
        assert_eq!(follower.checked_epoch(), 5);
        assert_eq!(leader.peer_state(2), Some((25, 25, true)), "its ack counts");
        assert_eq!(leader.peer_view(2).map(|v| v.next_offset), Some(25), "shipped from its end");
    }

    /// Found by the simulator with leaders moving between nodes (seed 0x1ddea1989c659655 of
    /// `failover_keeps_every_committed_record_and_one_leader_per_epoch`, 1,000 seeds): a
    /// follower checked at 12 was being shipped 12..86 when a late ack from before its cut
    /// arrived (its log at 84, its last batch 83..84 of an epoch 3 this leader never held).
    /// The `Truncate` it drew lowered shipping to 84, inside this log's batch 83..86; the next
    /// ack (checked, at 12) resumed shipping from there, a chunk asked from 84 came from 83,
    /// its `Shipped` never matched, and the same chunk was asked for again forever. Once
    /// checked again, a peer is shipped from its end.
    #[test]
    fn a_peer_checked_again_after_a_late_ack_is_shipped_from_its_end() {
        let fourth = LeaderConfig { epoch: 4, epoch_history: vec![(1, 0), (4, 87)], ..config(Quorum::Count(2)) };
        let mut leader = Leader::new(fourth, 156, 156, 0);
        leader.handle(LeaderInput::Connected { peer: 2, written_end: 84, durable_end: 84 });
        let late = Message::Ack { log: "l".into(), epoch: 0, written_end: 84, durable_end: 84, last_epoch: 3 };
        let checked = Message::Ack { log: "l".into(), epoch: 4, written_end: 12, durable_end: 12, last_epoch: 1 };
        leader.handle(LeaderInput::Received { peer: 2, msg: checked.clone() });
        let mut from = 12;
        for end in [30, 50, 70, 86] {
            leader.handle(LeaderInput::Shipped { peer: 2, base_offset: from, end_offset: end, len_bytes: 100 });
            from = end;
        }
        // The chunk asked from 86 is not sent (nothing was read yet).
        let asked = drain(&mut leader);
        assert!(asked.iter().any(|a| matches!(a, LeaderAction::Ship { peer: 2, from: 86, .. })), "{asked:?}");
        leader.handle(LeaderInput::NotShipped { peer: 2 });
        let _ = drain(&mut leader);
        assert_eq!(leader.peer_view(2).map(|v| v.next_offset), Some(86));
        leader.handle(LeaderInput::Received { peer: 2, msg: late });
        let answer = drain(&mut leader);
        assert!(
            matches!(answer.as_slice(), [LeaderAction::Send { msg: Message::Truncate { to: 84, .. }, .. }]),
            "{answer:?}"
        );
        leader.handle(LeaderInput::Received { peer: 2, msg: checked });
        let ships = drain(&mut leader);
        assert!(matches!(ships.as_slice(), [LeaderAction::Ship { peer: 2, from: 12, .. }]), "{ships:?}");
    }

    #[test]
    fn a_truncate_names_the_newest_epoch_of_the_leaders_history_not_after_the_followers_last() {
        let config = LeaderConfig { epoch: 6, epoch_history: vec![(2, 3), (3, 7), (6, 9)], ..config(Quorum::Count(2)) };
        let leader = Leader::new(config, 12, 12, 0);
        assert_eq!(leader.epoch_end(1), (0, 3), "before the first entry: the records before any epoch");
        assert_eq!(leader.epoch_end(2), (2, 7));
        assert_eq!(leader.epoch_end(5), (3, 9), "epochs 4 and 5 never wrote here");
        assert_eq!(leader.epoch_end(6), (6, u64::MAX), "the current epoch goes on");
        // A follower holding epoch 1 at 0..3: the leader's log begins epoch 2 at 3.
        let mut follower = Follower::new("l".into(), 1, 0..6, 6, 1, vec![(1, 0)]);
        let cut =
            Message::Truncate { log: "l".into(), epoch: 6, to: 3, written_end: 6, last_epoch: 1, matched_epoch: 0 };
        recv(&mut follower, 1, cut);
        assert_eq!(follower.poll_action(), Some(FollowerAction::Truncate { to: 0 }), "its epoch 1 is no epoch there");
    }

    #[test]
    fn a_follower_answers_a_gap_with_where_it_stands() {
        let mut follower = Follower::new("l".into(), 1, 0..5, 5, 1, vec![(1, 0)]);
        let check =
            Message::Truncate { log: "l".into(), epoch: 1, to: 5, written_end: 5, last_epoch: 1, matched_epoch: 1 };
        recv(&mut follower, 1, check);
        assert_eq!(follower.poll_action(), Some(FollowerAction::Send { to: 1, msg: ack(5, 5) }));
        let chunk = chunk(9, 12);
        follower.handle(FollowerInput::Received {
            from: 1,
            msg: Message::Append { log: "l".into(), epoch: 1, commit_end: 0, chunk },
        });
        assert_eq!(follower.poll_action(), Some(FollowerAction::Send { to: 1, msg: ack(5, 5) }));
        assert_eq!(follower.poll_action(), None);
    }

    #[test]
    fn a_data_loss_shrinks_as_late_records_arrive_and_is_gone_once_they_reach_the_leaders_start() {
        let mut follower = Follower::new("l".into(), 1, 0..40, 40, 1, vec![(1, 0)]);
        let check =
            Message::Truncate { log: "l".into(), epoch: 1, to: 40, written_end: 40, last_epoch: 1, matched_epoch: 1 };
        recv(&mut follower, 1, check);
        let loss = Message::DataLoss { log: "l".into(), epoch: 1, from: 30, to: 44 };
        recv(&mut follower, 1, loss);
        assert_eq!(follower.gap(), Some((40, 44, false)), "lost from its own end, not the leader's `from`");
        while follower.poll_action().is_some() {}
        // Shipped before the leader's retention deleted the rest, delivered after its notice.
        for (base, end, gap) in [(40, 42, Some((42, 44, false))), (42, 44, None)] {
            let msg = Message::Append { log: "l".into(), epoch: 1, commit_end: 0, chunk: chunk(base, end) };
            recv(&mut follower, 1, msg);
            assert!(matches!(follower.poll_action(), Some(FollowerAction::Apply { .. })));
            follower.handle(FollowerInput::Applied { written_end: end, last_epoch: 1, epochs_begun: vec![] });
            assert_eq!(follower.gap(), gap, "after {base}..{end} arrived");
            while follower.poll_action().is_some() {}
        }
    }

    #[test]
    fn a_follower_takes_a_new_leaders_appends_only_once_checked_and_never_obeys_a_late_cut() {
        let mut follower = Follower::new("l".into(), 1, 0..50, 50, 1, vec![(1, 0)]);
        // A leader of epoch 2 has not checked this log yet: its append is not applied.
        let append = Message::Append { log: "l".into(), epoch: 2, commit_end: 0, chunk: chunk(50, 60) };
        recv(&mut follower, 1, append.clone());
        assert!(matches!(follower.poll_action(), Some(FollowerAction::Send { .. })));
        assert_eq!(follower.poll_action(), None);
        // A cut answering a state the log has left is ignored.
        let late =
            Message::Truncate { log: "l".into(), epoch: 2, to: 40, written_end: 45, last_epoch: 1, matched_epoch: 1 };
        recv(&mut follower, 1, late);
        assert!(matches!(follower.poll_action(), Some(FollowerAction::Send { .. })));
        assert_eq!(follower.poll_action(), None);
        // The cut that answers its state is carried out; then the log is checked for epoch 2.
        let cut =
            Message::Truncate { log: "l".into(), epoch: 2, to: 40, written_end: 50, last_epoch: 1, matched_epoch: 1 };
        recv(&mut follower, 1, cut);
        assert_eq!(follower.poll_action(), Some(FollowerAction::Truncate { to: 40 }));
        follower.handle(FollowerInput::Truncated { written_end: 40, last_epoch: 1 });
        let unchecked = Message::Ack { log: "l".into(), epoch: 0, written_end: 40, durable_end: 40, last_epoch: 1 };
        assert_eq!(follower.poll_action(), Some(FollowerAction::Send { to: 1, msg: unchecked }), "the new state");
        assert_eq!(follower.checked_epoch(), 0, "checked only by a round that cuts nothing");
        let check =
            Message::Truncate { log: "l".into(), epoch: 2, to: 40, written_end: 40, last_epoch: 1, matched_epoch: 1 };
        recv(&mut follower, 1, check);
        assert_eq!(follower.checked_epoch(), 2);
        let _ack = follower.poll_action();
        let append = Message::Append { log: "l".into(), epoch: 2, commit_end: 0, chunk: chunk(40, 60) };
        recv(&mut follower, 1, append);
        assert!(matches!(follower.poll_action(), Some(FollowerAction::Apply { .. })));
    }
}
