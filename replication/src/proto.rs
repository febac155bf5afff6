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
//! done. It only moves forward.

use std::collections::{BTreeMap, VecDeque};

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

/// Settings of a leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderConfig {
    /// The log's name.
    pub log: String,
    /// The leader's epoch, stamped on everything it sends.
    pub epoch: u64,
    /// The followers.
    pub peers: Vec<NodeId>,
    /// Copies needed to commit.
    pub quorum: Quorum,
    /// Most unacknowledged bytes in flight to one peer.
    pub inflight_bytes_max: u64,
    /// Most bytes in one chunk.
    pub chunk_bytes_max: u64,
    /// A heartbeat goes to a peer that was sent nothing for this long.
    pub heartbeat_ms: u64,
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
        self.quorum.size(self.peers.len() + 1)
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
    /// A [`LeaderAction::Ship`] was asked and not yet reported.
    shipping: bool,
    /// An `Ack` arrived on this connection: the peer's end is known.
    heard: bool,
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
    start_offset: u64,
    now_ms: u64,
    actions: VecDeque<LeaderAction>,
}

impl Leader {
    /// A leader whose local log ends at `written_end` (`durable_end` synced), which knows
    /// nothing of its peers until they connect. `commit_end` is the commit point it may start
    /// from (records it knows to be on a quorum, for instance from before a restart).
    pub fn new(config: LeaderConfig, written_end: u64, durable_end: u64, commit_end: u64) -> Leader {
        assert!(durable_end <= written_end, "durable {durable_end} past written {written_end}");
        let peers = config.peers.iter().map(|p| (*p, Peer::default())).collect();
        let mut leader = Leader {
            config,
            peers,
            written_end,
            durable_end,
            commit_end: commit_end.min(durable_end),
            start_offset: 0,
            now_ms: 0,
            actions: VecDeque::new(),
        };
        leader.update_commit();
        leader
    }

    /// The commit point: every record below it is durable on a quorum.
    pub fn commit_end(&self) -> u64 {
        self.commit_end
    }

    /// What the leader knows of a peer: (acked written end, acked durable end, connected).
    pub fn peer_state(&self, peer: NodeId) -> Option<(u64, u64, bool)> {
        self.peers.get(&peer).map(|p| (p.acked_written, p.acked_durable, p.connected))
    }

    /// Restores what a peer had acknowledged durable before a restart (a replication slot), so
    /// the commit point and retention account for it before the peer reconnects. Bounded by
    /// the local written end; never lowers what is known.
    pub fn restore_peer(&mut self, peer: NodeId, durable_end: u64) {
        let written = self.written_end;
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

    /// The local log's written end as the leader knows it.
    pub fn written_end(&self) -> u64 {
        self.written_end
    }

    /// Feeds one input. Afterwards, drain [`Leader::poll_action`] until it returns `None`.
    pub fn handle(&mut self, input: LeaderInput) {
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
            LeaderInput::Connected { peer, written_end, durable_end } => {
                let now = self.now_ms;
                if let Some(p) = self.peers.get_mut(&peer) {
                    // A peer never holds more than the leader wrote; a longer log diverged and
                    // must be cut back by the failover step, not trusted here.
                    let written = written_end.min(self.written_end);
                    *p = Peer {
                        connected: true,
                        acked_written: written,
                        acked_durable: durable_end.min(written).max(p.acked_durable.min(written)),
                        next_offset: written,
                        inflight: VecDeque::new(),
                        inflight_bytes: 0,
                        last_progress_ms: now,
                        last_sent_ms: now,
                        shipping: false,
                        heard: false,
                        gap: p.gap,
                        gap_told: false,
                        reseeds: p.reseeds,
                    };
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
        let Message::Ack { log, epoch: _, written_end, durable_end } = msg else { return };
        if log != self.config.log {
            return;
        }
        let leader_written = self.written_end;
        let now = self.now_ms;
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if !p.connected {
            return;
        }
        // A peer cannot hold what was never written here; treat such an ack as garbage.
        if written_end > leader_written || durable_end > written_end {
            return;
        }
        if written_end > p.acked_written || durable_end > p.acked_durable {
            p.last_progress_ms = now;
        }
        p.heard = true;
        if p.gap.is_some() && written_end >= self.start_offset {
            // Re-seeded: the peer's log now starts where the leader's does.
            p.gap = None;
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
            if now.saturating_sub(p.last_sent_ms) >= self.config.heartbeat_ms {
                p.last_sent_ms = now;
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
        if p.connected && p.heard && p.next_offset < self.start_offset && p.acked_written < self.start_offset {
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
        let bytes_max = chunk.min(window - p.inflight_bytes).max(1);
        self.actions.push_back(LeaderAction::Ship { peer, from: p.next_offset, bytes_max, commit_end });
    }

    fn update_commit(&mut self) {
        let mut durable: Vec<u64> = self.peers.values().map(|p| p.acked_durable).collect();
        durable.push(self.durable_end);
        durable.sort_unstable_by(|a, b| b.cmp(a));
        // The k-th highest durable end: k copies, the leader's counted only once synced.
        let k = self.config.quorum_size();
        let quorum_end = durable.get(k - 1).copied().unwrap_or(0).min(self.written_end);
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
    },
    /// The driver could not apply a chunk (it did not decode or continue the log).
    ApplyFailed,
    /// The driver replaced the log with an empty one starting at `start_offset`, as a
    /// [`FollowerAction::Reset`] asked (durably).
    Reset {
        /// The new start (and end) of the log.
        start_offset: u64,
    },
    /// A local sync completed.
    Synced {
        /// New durable end.
        durable_end: u64,
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
    /// Records the leader no longer holds that this follower needed (`from..to`), and whether
    /// it was re-seeded past them (true) or stopped (false).
    gap: Option<(u64, u64, bool)>,
    actions: VecDeque<FollowerAction>,
}

impl Follower {
    /// A follower of `log` whose local log ends at `written_end` (`durable_end` synced).
    pub fn new(log: String, epoch_seen: u64, written_end: u64, durable_end: u64) -> Follower {
        assert!(durable_end <= written_end, "durable {durable_end} past written {written_end}");
        Follower {
            log,
            epoch_seen,
            leader: None,
            written_end,
            durable_end,
            commit_end: 0,
            applying: false,
            sync_requested: false,
            gap: None,
            actions: VecDeque::new(),
        }
    }

    /// The commit point the leader last announced, bounded by what this node holds.
    pub fn commit_end(&self) -> u64 {
        self.commit_end.min(self.written_end)
    }

    /// One past the last record the follower knows it holds.
    pub fn written_end(&self) -> u64 {
        self.written_end
    }

    /// The highest epoch seen.
    pub fn epoch(&self) -> u64 {
        self.epoch_seen
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
            FollowerInput::Applied { written_end } => {
                assert!(written_end >= self.written_end, "written end went back");
                self.applying = false;
                self.written_end = written_end;
                self.request_sync();
                self.ack();
            }
            FollowerInput::Reset { start_offset } => {
                assert!(start_offset >= self.written_end, "a reset went back");
                self.applying = false;
                self.written_end = start_offset;
                self.durable_end = start_offset;
                self.ack();
            }
            FollowerInput::ApplyFailed => {
                self.applying = false;
                self.ack();
            }
            FollowerInput::Synced { durable_end } => {
                self.sync_requested = false;
                assert!(durable_end <= self.written_end, "synced past the written end");
                self.durable_end = self.durable_end.max(durable_end);
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

    fn receive(&mut self, from: NodeId, msg: Message) {
        match msg {
            Message::Append { log, epoch, commit_end, chunk } => {
                if log != self.log {
                    return;
                }
                if epoch < self.epoch_seen {
                    // A stale leader: tell it the epoch it is behind.
                    self.leader_ack(from);
                    return;
                }
                self.epoch_seen = epoch;
                self.leader = Some(from);
                self.commit_end = self.commit_end.max(commit_end);
                if self.applying || chunk.base_offset > self.written_end || chunk.end_offset <= self.written_end {
                    // Busy, a gap (something was lost), or nothing new: say where we stand.
                    self.ack();
                    return;
                }
                self.applying = true;
                self.actions.push_back(FollowerAction::Apply { chunk, epoch });
            }
            Message::Reseed { log, epoch, start_offset, missing_from } => {
                if log != self.log {
                    return;
                }
                if epoch < self.epoch_seen {
                    self.leader_ack(from);
                    return;
                }
                self.epoch_seen = epoch;
                self.leader = Some(from);
                if start_offset <= self.written_end || self.applying {
                    // Already past the gap (a late message), or busy: say where we stand.
                    self.ack();
                    return;
                }
                self.gap = Some((missing_from.min(self.written_end), start_offset, true));
                self.applying = true;
                self.actions.push_back(FollowerAction::Reset { start_offset });
            }
            Message::DataLoss { log, epoch, from: lost_from, to } => {
                if log != self.log || epoch < self.epoch_seen {
                    return;
                }
                self.epoch_seen = epoch;
                self.leader = Some(from);
                if to > self.written_end {
                    self.gap = Some((lost_from, to, false));
                }
            }
            Message::Heartbeat { epoch, logs } => {
                if epoch < self.epoch_seen {
                    self.leader_ack(from);
                    return;
                }
                self.epoch_seen = epoch;
                self.leader = Some(from);
                if let Some((_, _, commit)) = logs.iter().find(|(name, _, _)| *name == self.log) {
                    self.commit_end = self.commit_end.max(*commit);
                }
                self.ack();
            }
            _ => {}
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
            epoch: self.epoch_seen,
            written_end: self.written_end,
            durable_end: self.durable_end,
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
            peers: vec![2, 3],
            quorum,
            inflight_bytes_max: 1 << 20,
            chunk_bytes_max: 64 << 10,
            heartbeat_ms: 100,
            resend_ms: 500,
            reseed: true,
        }
    }

    fn ack(written_end: u64, durable_end: u64) -> Message {
        Message::Ack { log: "l".into(), epoch: 1, written_end, durable_end }
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

    #[test]
    fn a_peer_is_shipped_from_its_end_within_its_window() {
        let mut leader = Leader::new(config(Quorum::All), 100, 100, 0);
        leader.handle(LeaderInput::Connected { peer: 2, written_end: 40, durable_end: 40 });
        let actions: Vec<_> = std::iter::from_fn(|| leader.poll_action()).collect();
        assert!(actions.iter().any(|a| matches!(a, LeaderAction::Ship { peer: 2, from: 40, .. })), "{actions:?}");
    }

    #[test]
    fn a_follower_answers_a_gap_with_where_it_stands() {
        let mut follower = Follower::new("l".into(), 1, 5, 5);
        let chunk =
            Chunk { base_offset: 9, end_offset: 12, raw_len_bytes: 0, compressed: false, bytes: Default::default() };
        follower.handle(FollowerInput::Received {
            from: 1,
            msg: Message::Append { log: "l".into(), epoch: 1, commit_end: 0, chunk },
        });
        assert_eq!(follower.poll_action(), Some(FollowerAction::Send { to: 1, msg: ack(5, 5) }));
        assert_eq!(follower.poll_action(), None);
    }
}
