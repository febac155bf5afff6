//! A deterministic simulator: one leader and its followers, each with a real [`tern_wal::Log`]
//! on its own [`SimDisk`], connected by a seeded network that delays, drops, duplicates,
//! reorders, corrupts and partitions, with followers crashing (power loss, torn writes) and
//! restarting, followers whose disk fails a write or a sync (the log is fenced, then reopened
//! from its files and cut back to what was durable, as the driver does), a leader whose
//! retention deletes committed segments (a follower that still needs them is re-seeded), and
//! followers whose own retention runs as the driver's does.
//! Everything runs in one thread (leader-mode group commit syncs in
//! the caller), every random choice comes from one `ChaCha8Rng`, and records carry the
//! simulated clock's timestamps, so a seed replays exactly.
//!
//! After every step the checkers assert:
//! - every follower's log is a prefix of the leader's (no record invented or reordered);
//! - the commit point never goes back while a leader runs (a restarted one starts from its
//!   replication slots, saved a while before, as the driver's does);
//! - a follower calls committed only records that are the leader's, up to the leader's commit;
//! - every record any leader called committed is durable on a quorum of disks (a crash never
//!   loses it), by the ends the logs report after every step and, every
//!   64 steps and at the end, on crash images: a copy of each disk loses
//!   every unsynced byte and its log is opened as recovery would, so a sync claimed and not
//!   made is caught;
//! - a re-seed never skips a record the leader still holds;
//! - after the faults stop and the network heals, all logs converge to the leader's.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tern_segment::sim::{FaultOp, SimDisk, Tear};
use tern_segment::Disk;
use tern_wal::{AppendOptions, CommitMode, Committer, Durability, Log, LogOptions, Record, Visibility};

use crate::codec;
use crate::message::{Message, NodeId};
use crate::proto::{Follower, FollowerAction, FollowerInput, Leader, LeaderAction, LeaderConfig, LeaderInput, Quorum};

/// The simulated log's name.
const LOG: &str = "sim";
const LEADER: NodeId = 0;

/// Knobs of one simulation. Every random choice comes from `seed`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed of the one random generator.
    pub seed: u64,
    /// Nodes, the leader included.
    pub nodes: usize,
    /// Copies needed to commit.
    pub quorum: Quorum,
    /// Chance that a message is lost.
    pub drop_ratio: f64,
    /// Chance that a message is delivered twice.
    pub duplicate_ratio: f64,
    /// Chance that a message has a byte flipped on the way (the codec must refuse it).
    pub corrupt_ratio: f64,
    /// Most delivery delay; delays are uniform, so messages overtake each other.
    pub delay_ms_max: u64,
    /// Chance per step that a link is cut or healed.
    pub partition_ratio: f64,
    /// Chance per step that a follower loses power and restarts.
    pub crash_ratio: f64,
    /// Chance per step that the leader loses power and restarts, in a new epoch.
    pub leader_crash_ratio: f64,
    /// Chance per step that the leader's retention deletes committed segments, whether or not
    /// every follower has them (as once a follower's lag passes the bound): a follower that
    /// still needs them must be re-seeded, never moved past them silently.
    pub retention_ratio: f64,
    /// Chance per step that a follower's own retention runs, as the driver runs it: held at
    /// the commit point that follower learned, so it never deletes records that may still
    /// diverge from the leader's (and have to be cut).
    pub follower_retention_ratio: f64,
    /// Whether a follower behind the leader's retention is re-seeded; otherwise it is told of
    /// the data loss and stays where it is.
    pub reseed: bool,
    /// Chance per step that a follower's next write or sync fails (EIO). Its log is fenced; a
    /// later step reopens it from its files, cut back to what the fenced handle knew durable,
    /// as the driver does after a backoff.
    pub disk_error_ratio: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 0,
            nodes: 3,
            quorum: Quorum::Count(2),
            drop_ratio: 0.05,
            duplicate_ratio: 0.02,
            corrupt_ratio: 0.01,
            delay_ms_max: 30,
            partition_ratio: 0.01,
            crash_ratio: 0.005,
            leader_crash_ratio: 0.002,
            retention_ratio: 0.003,
            follower_retention_ratio: 0.003,
            reseed: true,
            disk_error_ratio: 0.002,
        }
    }
}

/// The seeds to run: `TERN_SIM_SEED=0x..` replays one; `TERN_SIM_SEEDS=N` runs N (default
/// `default_count`).
pub fn seeds(default_count: u64) -> Vec<u64> {
    if let Some(seed) =
        std::env::var("TERN_SIM_SEED").ok().and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
    {
        return vec![seed];
    }
    let count = std::env::var("TERN_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default_count);
    (0..count).map(|i| 0x7e51_0000_0000_0000 ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect()
}

struct InFlight {
    deliver_at_ms: u64,
    seq: u64,
    from: NodeId,
    to: NodeId,
    bytes: Vec<u8>,
}

enum Role {
    Leader(Leader),
    Follower(Follower),
}

struct Node {
    id: NodeId,
    disk: SimDisk,
    committer: Committer,
    log: Option<Log>,
    role: Role,
    /// The highest durable end this node ever reported: a crash must not lose it.
    durable_floor: u64,
    /// Records up to here were checked against the leader's.
    checked_end: u64,
    /// Follower: the leader epoch it took last and who led it, as its node state file keeps
    /// it (written durably before anything of the epoch is taken).
    recorded_leader: Option<(u64, NodeId)>,
    /// Follower: its core asked for a sync that has not run yet.
    sync_due: bool,
    /// Follower: chunk bytes applied since its last sync.
    unsynced_bytes: u64,
    /// Follower: a disk error is armed on its disk and has not struck yet.
    fault_armed: bool,
    /// Follower: a disk error fenced its log; it takes nothing until it is reopened.
    reopen_due: bool,
}

/// A follower syncs inline (at once, as the driver's connection reader does once it has read
/// everything) when at most this many chunk bytes arrived since its last sync and no sync is
/// waiting; otherwise the sync waits for a later step (the driver's syncer thread). The
/// driver's bound is 64 KiB, a sixteenth of its largest chunk (1 MiB); the same share of the
/// simulator's 2 KiB chunks.
const INLINE_SYNC_MAX_BYTES: u64 = 128;

/// Faults a run injected, to show that a passing run was not a quiet one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Follower power losses.
    pub crashes: u64,
    /// Leader power losses.
    pub leader_crashes: u64,
    /// Follower records cut because they diverged from a restarted leader's log.
    pub records_cut: u64,
    /// Messages lost.
    pub dropped: u64,
    /// Messages delivered twice.
    pub duplicated: u64,
    /// Messages damaged on the way (all refused by the codec).
    pub corrupted: u64,
    /// Link cuts.
    pub cuts: u64,
    /// Times the leader's retention deleted segments.
    pub retentions: u64,
    /// Times a follower's retention deleted segments.
    pub follower_retentions: u64,
    /// Followers re-seeded from the leader's start.
    pub reseeds: u64,
    /// Follower syncs made inline, right when asked for (not a fault: the driver's policy).
    pub inline_syncs: u64,
    /// Follower syncs made in a later step, as by the driver's syncer thread.
    pub later_syncs: u64,
    /// Follower writes or syncs made to fail.
    pub disk_errors: u64,
    /// Follower logs reopened after a disk error fenced them.
    pub reopens: u64,
}

/// One simulated cluster.
pub struct World {
    faults_injected: Faults,
    config: Config,
    rng: ChaCha8Rng,
    now_ms: u64,
    seq: u64,
    nodes: Vec<Node>,
    network: Vec<InFlight>,
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Every value the leader's log holds, by offset.
    sent: Vec<Vec<u8>>,
    /// Values the leader wrote at an offset and then lost in a power loss: a follower may
    /// hold one of them, above the commit point, until it is cut back.
    lost: std::collections::BTreeMap<u64, Vec<Vec<u8>>>,
    /// The leader's epoch.
    epoch: u64,
    /// The current leader's commit point.
    commit_end: u64,
    /// The highest commit point any leader announced: all of it stays durable on a quorum.
    max_commit: u64,
    /// The leader's replication slots as last saved: each follower's acknowledged durable end
    /// and the epoch it was acknowledged in (the driver saves them every second).
    slots: std::collections::BTreeMap<NodeId, (u64, u64)>,
    faults: bool,
    /// Steps run, for the crash-image check every [`CRASH_IMAGE_EVERY`] of them.
    steps: u64,
}

/// How an injected disk error reads in an error message.
const EIO_TEXT: &str = "os error 5";

/// Steps between two looks at the disks' crash images (it opens a log per node).
const CRASH_IMAGE_EVERY: u64 = 64;

fn log_options() -> LogOptions {
    LogOptions {
        segment_size_bytes: 4 << 10,
        index_interval_bytes: 1024,
        record_bytes_max: 2048,
        ..LogOptions::default()
    }
}

fn open_log(disk: &SimDisk, committer: &Committer) -> Result<Log, String> {
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    Log::open(shared, Path::new("/node/log"), LOG, log_options(), committer.clone(), true).map_err(|e| e.to_string())
}

/// The leader core of `log` in a new `epoch` (begun in the log first), starting from
/// `commit_end`.
fn leader_core(log: &Log, epoch: u64, peers: &[NodeId], config: &Config, commit_end: u64) -> Result<Leader, String> {
    log.begin_epoch(epoch).map_err(|e| format!("leader epoch {epoch}: {e}"))?;
    let config = LeaderConfig {
        log: LOG.into(),
        epoch,
        epoch_history: log.epoch_history(),
        peers: peers.to_vec(),
        quorum: config.quorum,
        inflight_bytes_max: 8 << 10,
        chunk_bytes_max: 2 << 10,
        heartbeat_ms: 50,
        commit_notice_ms: 10,
        resend_ms: 200,
        reseed: config.reseed,
    };
    let mut leader = Leader::new(config, log.written_end(), log.durable_end(), commit_end);
    // As the driver does: the core learns where the log starts (retention may have moved it).
    leader.handle(LeaderInput::StartMoved { start: log.start_offset() });
    Ok(leader)
}

impl World {
    /// A cluster of `config.nodes` nodes with empty logs; node 0 leads.
    pub fn new(config: Config) -> Result<World, String> {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut nodes = Vec::with_capacity(config.nodes);
        let peers: Vec<NodeId> = (1..config.nodes as u64).collect();
        for id in 0..config.nodes as u64 {
            let disk = SimDisk::new();
            let committer =
                Committer::start_with(Arc::new(disk.clone()), None, CommitMode::Leader).map_err(|e| e.to_string())?;
            let log = open_log(&disk, &committer)?;
            let role = if id == LEADER {
                Role::Leader(leader_core(&log, 1, &peers, &config, 0)?)
            } else {
                Role::Follower(Follower::new(LOG.into(), 0, 0..0, 0, 0, Vec::new()))
            };
            nodes.push(Node {
                id,
                disk,
                committer,
                log: Some(log),
                role,
                durable_floor: 0,
                checked_end: 0,
                recorded_leader: None,
                sync_due: false,
                unsynced_bytes: 0,
                fault_armed: false,
                reopen_due: false,
            });
        }
        let mut world = World {
            faults_injected: Faults::default(),
            config,
            rng,
            now_ms: 0,
            seq: 0,
            nodes,
            network: Vec::new(),
            cut: BTreeSet::new(),
            sent: Vec::new(),
            lost: std::collections::BTreeMap::new(),
            epoch: 1,
            commit_end: 0,
            max_commit: 0,
            slots: std::collections::BTreeMap::new(),
            faults: true,
            steps: 0,
        };
        for peer in 1..world.config.nodes as u64 {
            world.leader_input(LeaderInput::Connected { peer, written_end: 0, durable_end: 0 })?;
        }
        Ok(world)
    }

    /// Runs `steps` random steps with faults, then heals everything and runs until the logs
    /// converge. Returns a description of the first broken invariant.
    pub fn run(&mut self, steps: u64) -> Result<(), String> {
        for step in 0..steps {
            self.step().map_err(|e| format!("step {step} at {} ms: {e}", self.now_ms))?;
            self.check().map_err(|e| format!("after step {step}: {e}"))?;
            self.steps += 1;
            if self.steps.is_multiple_of(CRASH_IMAGE_EVERY) {
                self.check_crash_images().map_err(|e| format!("after step {step}: {e}"))?;
            }
        }
        self.heal()?;
        self.check_converged()
    }

    fn leader(&mut self) -> &mut Leader {
        match &mut self.nodes[0].role {
            Role::Leader(l) => l,
            Role::Follower(_) => unreachable!("node 0 leads"),
        }
    }

    fn step(&mut self) -> Result<(), String> {
        // One roll picks at most one fault, each from its own band of [0, 1); anything above
        // the bands (or any roll once healing began) is an ordinary step.
        if let Some(id) = (1..self.config.nodes as u64).find(|id| self.nodes[*id as usize].reopen_due) {
            // The driver's backoff: not at once.
            if self.rng.gen_bool(0.2) {
                return self.reopen(id);
            }
        }
        let roll: f64 = self.rng.gen();
        let (faults, followers) = (self.faults, self.config.nodes > 1);
        let mut floor = 0.0;
        let mut rolled = |ratio: f64| {
            let hit = faults && roll >= floor && roll < floor + ratio;
            floor += ratio;
            hit
        };
        if rolled(self.config.crash_ratio) && followers {
            let victim = self.rng.gen_range(1..self.config.nodes as u64);
            return self.crash(victim);
        }
        if rolled(self.config.leader_crash_ratio) {
            return self.crash_leader();
        }
        if rolled(self.config.partition_ratio) && followers {
            let peer = self.rng.gen_range(1..self.config.nodes as u64);
            let link = (LEADER, peer);
            if !self.cut.remove(&link) {
                self.cut.insert(link);
                self.faults_injected.cuts += 1;
            }
            return Ok(());
        }
        if rolled(self.config.retention_ratio) {
            return self.retain();
        }
        if rolled(self.config.follower_retention_ratio) && followers {
            let id = self.rng.gen_range(1..self.config.nodes as u64);
            return self.follower_retain(id);
        }
        if rolled(self.config.disk_error_ratio) && followers {
            let id = self.rng.gen_range(1..self.config.nodes as u64);
            let op = if self.rng.gen_bool(0.5) { FaultOp::Sync } else { FaultOp::Write };
            let node = &mut self.nodes[id as usize];
            if !node.fault_armed && !node.reopen_due {
                node.disk.fail_next(op, libc::EIO);
                node.fault_armed = true;
                self.faults_injected.disk_errors += 1;
            }
            return Ok(());
        }
        match self.rng.gen_range(0..11) {
            0..=2 => self.client_append(),
            10 if followers => {
                let id = self.rng.gen_range(1..self.config.nodes as u64);
                self.follower_sync(id)
            }
            3 => {
                let log = self.nodes[0].log.clone().ok_or("leader has no log")?;
                log.sync().map_err(|e| format!("leader sync: {e}"))?;
                self.nodes[0].durable_floor = self.nodes[0].durable_floor.max(log.durable_end());
                self.leader_input(LeaderInput::Synced { end: log.durable_end() })
            }
            4 => {
                self.now_ms += self.rng.gen_range(1..40);
                let now_ms = self.now_ms;
                if self.rng.gen_bool(0.3) {
                    self.save_slots();
                }
                self.leader_input(LeaderInput::Tick { now_ms })
            }
            _ => self.deliver_next(),
        }
    }

    /// The leader's retention: deletes the segments below a committed offset.
    fn retain(&mut self) -> Result<(), String> {
        let log = self.nodes[0].log.clone().ok_or("leader has no log")?;
        let start = log.start_offset();
        if self.commit_end <= start {
            return Ok(());
        }
        // Mostly everything committed, so that whole segments go (4 KiB each here).
        let offset =
            if self.rng.gen_bool(0.75) { self.commit_end } else { self.rng.gen_range(start..=self.commit_end) };
        let new_start = log.truncate_prefix(offset).map_err(|e| format!("leader retention to {offset}: {e}"))?;
        if new_start > start {
            self.faults_injected.retentions += 1;
            self.leader_input(LeaderInput::StartMoved { start: new_start })?;
        }
        Ok(())
    }

    /// A follower's own retention, as the driver runs it: everything but the active segment may
    /// go, held at the commit point the follower learned (`Follower::retention_hold`).
    fn follower_retain(&mut self, id: NodeId) -> Result<(), String> {
        if self.nodes[id as usize].reopen_due {
            return Ok(());
        }
        let result = self.follower_retain_inner(id);
        self.disk_error_struck(id, result)
    }

    fn follower_retain_inner(&mut self, id: NodeId) -> Result<(), String> {
        let Some(log) = self.nodes[id as usize].log.clone() else { return Ok(()) };
        let hold = self.follower(id).retention_hold();
        log.set_retention_hold(Some(hold));
        let start = log.start_offset();
        // Mostly everything but the active segment, so that the newest records are at stake.
        let size_max = if self.rng.gen_bool(0.75) { 1 } else { self.rng.gen_range(1..64 << 10) };
        log.apply_retention(Some(size_max), None, self.now_ms)
            .map_err(|e| format!("follower {id} retention held at {hold}: {e}"))?;
        if log.start_offset() > start {
            self.faults_injected.follower_retentions += 1;
        }
        Ok(())
    }

    /// Saves the replication slots as the driver does: a follower being re-seeded or stopped
    /// at a data loss has none that counts.
    fn save_slots(&mut self) {
        let epoch = self.epoch;
        for peer in 1..self.config.nodes as u64 {
            match self.leader().peer_view(peer) {
                Some(view) if view.gap.is_none() => {
                    self.slots.insert(peer, (view.acked_durable, epoch));
                }
                _ => {
                    self.slots.remove(&peer);
                }
            }
        }
    }

    fn client_append(&mut self) -> Result<(), String> {
        let count = self.rng.gen_range(1..4);
        let values: Vec<Vec<u8>> = (0..count)
            .map(|_| {
                let len = self.rng.gen_range(0..300);
                let offset = self.sent.len();
                let mut v = format!("{offset}:").into_bytes();
                v.extend((0..len).map(|_| self.rng.gen_range(b'a'..=b'z')));
                v
            })
            .collect();
        let log = self.nodes[0].log.clone().ok_or("leader has no log")?;
        // Timestamps from the simulated clock, not the wall clock: they are in the frames, so
        // they change compressed sizes, and with them chunk sizes and the shipping window. With
        // the wall clock a seed did not replay the run it named.
        let ts = self.now_ms;
        let records: Vec<Record<'_>> = values.iter().map(|v| Record::new(v, ts)).collect();
        let offsets = log
            .append_records(&records, AppendOptions::default())
            .and_then(|appended| appended.wait(Durability::None))
            .map_err(|e| format!("leader append: {e}"))?;
        if offsets.start != self.sent.len() as u64 {
            return Err(format!("leader gave offsets {offsets:?} with {} sent", self.sent.len()));
        }
        self.sent.extend(values);
        self.leader_input(LeaderInput::Written { end: offsets.end })
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: &Message) {
        let mut bytes = Vec::new();
        codec::encode(msg, &mut bytes);
        let copies = if self.faults && self.rng.gen_bool(self.config.duplicate_ratio) { 2 } else { 1 };
        self.faults_injected.duplicated += copies - 1;
        for _ in 0..copies {
            if self.faults && self.rng.gen_bool(self.config.drop_ratio) {
                self.faults_injected.dropped += 1;
                continue;
            }
            let mut bytes = bytes.clone();
            if self.faults && self.rng.gen_bool(self.config.corrupt_ratio) && !bytes.is_empty() {
                self.faults_injected.corrupted += 1;
                let i = self.rng.gen_range(0..bytes.len());
                bytes[i] ^= 1 << self.rng.gen_range(0..8);
            }
            let delay = if self.faults { self.rng.gen_range(0..=self.config.delay_ms_max) } else { 1 };
            self.seq += 1;
            self.network.push(InFlight { deliver_at_ms: self.now_ms + delay, seq: self.seq, from, to, bytes });
        }
    }

    fn deliver_next(&mut self) -> Result<(), String> {
        let Some(i) = (0..self.network.len()).min_by_key(|i| (self.network[*i].deliver_at_ms, self.network[*i].seq))
        else {
            return Ok(());
        };
        let m = self.network.swap_remove(i);
        self.now_ms = self.now_ms.max(m.deliver_at_ms);
        let link = (m.from.min(m.to), m.from.max(m.to));
        if self.cut.contains(&link) || self.nodes[m.to as usize].log.is_none() {
            return Ok(());
        }
        let bytes = Bytes::from(m.bytes);
        // A damaged message must be refused by the codec, never taken for another one.
        let msg = match codec::decode(&bytes) {
            Ok(Some((msg, used))) if used == bytes.len() => msg,
            _ => return Ok(()),
        };
        if m.to == LEADER {
            self.leader_input(LeaderInput::Received { peer: m.from, msg })
        } else {
            self.follower_input(m.to, FollowerInput::Received { from: m.from, msg })
        }
    }

    fn leader_input(&mut self, input: LeaderInput) -> Result<(), String> {
        self.leader().handle(input);
        while let Some(action) = self.leader().poll_action() {
            match action {
                LeaderAction::Ship { peer, from, bytes_max, commit_end } => {
                    let log = self.nodes[0].log.clone().ok_or("leader has no log")?;
                    // The driver's own chunk builder: the simulator ships exactly what TCP ships.
                    let chunk = crate::driver::read_chunk(&log, from, bytes_max, &crate::codec::Compression::default())
                        .map_err(|e| format!("ship read: {e}"))?;
                    let Some(chunk) = chunk else {
                        self.leader().handle(LeaderInput::NotShipped { peer });
                        continue;
                    };
                    let (base, end) = (chunk.base_offset, chunk.end_offset);
                    let len_bytes = chunk.bytes.len() as u64;
                    let epoch = self.epoch;
                    let msg = Message::Append { log: LOG.into(), epoch, commit_end, chunk };
                    self.send(LEADER, peer, &msg);
                    self.leader().handle(LeaderInput::Shipped { peer, base_offset: base, end_offset: end, len_bytes });
                }
                LeaderAction::Send { peer, msg } => self.send(LEADER, peer, &msg),
                LeaderAction::Committed { commit_end } => {
                    if commit_end < self.commit_end {
                        return Err(format!("commit went back from {} to {commit_end}", self.commit_end));
                    }
                    self.commit_end = commit_end;
                    self.max_commit = self.max_commit.max(commit_end);
                }
                LeaderAction::Deposed { epoch } => {
                    return Err(format!("the only leader was deposed by epoch {epoch}"));
                }
                LeaderAction::LacksRecords { peer, from, to, .. } => {
                    return Err(format!("the leader lacks records {from}..{to} that follower {peer} holds"));
                }
            }
        }
        Ok(())
    }

    fn follower(&mut self, id: NodeId) -> &mut Follower {
        match &mut self.nodes[id as usize].role {
            Role::Follower(f) => f,
            Role::Leader(_) => unreachable!("node {id} follows"),
        }
    }

    /// Feeds follower `id`'s core and carries out its actions. A disk error armed on its disk
    /// that strikes meanwhile fences its log: the node takes nothing more until reopened.
    fn follower_input(&mut self, id: NodeId, input: FollowerInput) -> Result<(), String> {
        if self.nodes[id as usize].reopen_due {
            return Ok(());
        }
        let result = self.follower_input_inner(id, input);
        self.disk_error_struck(id, result)
    }

    /// Turns an error that is the armed disk error striking into a log to reopen; any other
    /// error stands.
    fn disk_error_struck(&mut self, id: NodeId, result: Result<(), String>) -> Result<(), String> {
        let node = &mut self.nodes[id as usize];
        match result {
            Err(e) if node.fault_armed && e.contains(EIO_TEXT) => {
                node.fault_armed = false;
                node.reopen_due = true;
                node.sync_due = false;
                Ok(())
            }
            other => other,
        }
    }

    fn follower_input_inner(&mut self, id: NodeId, input: FollowerInput) -> Result<(), String> {
        self.follower(id).handle(input);
        while let Some(action) = self.follower(id).poll_action() {
            let log = self.nodes[id as usize].log.clone().ok_or("follower has no log")?;
            match action {
                FollowerAction::Apply { chunk, epoch } => {
                    // As the driver: no frame may carry a later epoch than its sender's.
                    let applied = codec::chunk_frames_within(&chunk, epoch)
                        .map_err(|e| e.to_string())
                        .and_then(|frames| log.append_frames(&frames).map_err(|e| e.to_string()));
                    if let Err(e) = &applied {
                        if log.is_fenced() {
                            return Err(format!("follower {id} fenced: {e}"));
                        }
                        // A refused write that did not fence the log is the armed fault too.
                        if e.contains(EIO_TEXT) {
                            return Err(e.clone());
                        }
                    }
                    // Frames before a bad one may have been appended: report the real end.
                    let input = match applied {
                        Err(_) if log.written_end() == self.follower(id).written_end() => FollowerInput::ApplyFailed,
                        _ => crate::driver::applied_input(&log, self.follower(id)),
                    };
                    self.nodes[id as usize].unsynced_bytes += chunk.bytes.len() as u64;
                    self.follower(id).handle(input);
                }
                // As the driver does, the sync runs apart from the apply: inline when little
                // arrived and no sync waits (the driver's reader syncs before its next read),
                // otherwise in a later step (its syncer thread). The ack of the apply says
                // written, not durable, and a power loss in between loses what it applied.
                FollowerAction::Sync => {
                    let node = &mut self.nodes[id as usize];
                    let inline = node.unsynced_bytes <= INLINE_SYNC_MAX_BYTES && !node.sync_due;
                    node.sync_due = true;
                    if inline {
                        self.faults_injected.inline_syncs += 1;
                        self.follower_sync(id)?;
                    } else {
                        self.faults_injected.later_syncs += 1;
                    }
                }
                FollowerAction::Truncate { to } => {
                    let start = log.start_offset();
                    if to < start {
                        return Err(format!(
                            "follower {id} told to cut back to {to}, below its log's start {start}: its own \
                             retention deleted records that diverged from the leader's"
                        ));
                    }
                    // Below the commit point only records that are not the leader's may be cut.
                    // (A cut at the end removes no record, only epochs begun that wrote none.)
                    if to < self.max_commit && to < log.written_end() {
                        let first = log.read(to, Visibility::Written).map_err(|e| e.to_string())?.next();
                        let first = first.ok_or("nothing to cut")?.map_err(|e| e.to_string())?;
                        if self.sent.get(to as usize).is_some_and(|v| *v == first.value) {
                            return Err(format!(
                                "follower {id} told to cut committed records at {to} (commit point {})",
                                self.max_commit
                            ));
                        }
                    }
                    let cut = log.written_end().saturating_sub(to);
                    log.truncate_suffix(to).map_err(|e| format!("follower {id} truncate to {to}: {e}"))?;
                    self.faults_injected.records_cut += cut;
                    let node = &mut self.nodes[id as usize];
                    node.durable_floor = node.durable_floor.min(to);
                    node.checked_end = node.checked_end.min(to);
                    let input = FollowerInput::Truncated {
                        written_end: log.written_end(),
                        last_epoch: crate::driver::ack_last_epoch(&log),
                    };
                    self.follower(id).handle(input);
                }
                FollowerAction::Reset { start_offset } => {
                    if !self.config.reseed {
                        return Err(format!("follower {id} re-seeded at {start_offset} with re-seeding off"));
                    }
                    // A re-seed never skips a record the leader still holds: what this log
                    // lacks below `start_offset` is gone from the leader's.
                    let leader_start = self.nodes[0].log.as_ref().map_or(0, Log::start_offset);
                    let end = log.written_end();
                    if end >= start_offset || start_offset > leader_start {
                        return Err(format!(
                            "follower {id} at {end} re-seeded at {start_offset}; the leader's log starts at {leader_start}"
                        ));
                    }
                    log.reset(start_offset).map_err(|e| format!("follower {id} reset to {start_offset}: {e}"))?;
                    self.faults_injected.reseeds += 1;
                    let node = &mut self.nodes[id as usize];
                    node.checked_end = start_offset;
                    node.durable_floor = node.durable_floor.max(start_offset);
                    self.follower(id).handle(FollowerInput::Reset { start_offset });
                }
                FollowerAction::Send { to, msg } => self.send(id, to, &msg),
                FollowerAction::RecordLeader { epoch, leader } => {
                    let node = &mut self.nodes[id as usize];
                    if node.recorded_leader.is_some_and(|(e, l)| e > epoch || (e == epoch && l != leader)) {
                        return Err(format!(
                            "follower {id} records node {leader} for epoch {epoch} over {:?}",
                            node.recorded_leader
                        ));
                    }
                    node.recorded_leader = Some((epoch, leader));
                    self.follower(id).handle(FollowerInput::LeaderRecorded { epoch, leader });
                }
            }
        }
        Ok(())
    }

    /// Runs the sync follower `id`'s core asked for, if it did.
    fn follower_sync(&mut self, id: NodeId) -> Result<(), String> {
        if self.nodes[id as usize].reopen_due || !std::mem::take(&mut self.nodes[id as usize].sync_due) {
            return Ok(());
        }
        let result = self.follower_sync_inner(id);
        self.disk_error_struck(id, result)
    }

    fn follower_sync_inner(&mut self, id: NodeId) -> Result<(), String> {
        let log = self.nodes[id as usize].log.clone().ok_or("follower has no log")?;
        self.nodes[id as usize].unsynced_bytes = 0;
        log.sync().map_err(|e| format!("follower {id} sync: {e}"))?;
        let durable = log.durable_end();
        let node = &mut self.nodes[id as usize];
        node.durable_floor = node.durable_floor.max(durable);
        self.follower_input(id, FollowerInput::Synced { durable_end: durable })
    }

    /// Power loss on a follower: unsynced bytes are lost (the last write torn), then it
    /// recovers from its disk and reconnects.
    fn crash(&mut self, id: NodeId) -> Result<(), String> {
        let tear = self.random_tear();
        self.faults_injected.crashes += 1;
        let node = &mut self.nodes[id as usize];
        node.log = None;
        node.sync_due = false;
        node.unsynced_bytes = 0;
        // A reboot: no fault stays armed (the disk forgets them) and the log is opened anew.
        node.fault_armed = false;
        node.reopen_due = false;
        node.disk.crash(tear);
        let log = open_log(&node.disk, &node.committer).map_err(|e| format!("follower {id} recovery: {e}"))?;
        self.restart_follower(id, log)
    }

    /// A follower whose log a disk error fenced opens it again from its files, as the driver
    /// does after a backoff, keeping nothing past what the fenced handle knew durable (after a
    /// failed sync, reads may still return pages the disk dropped).
    fn reopen(&mut self, id: NodeId) -> Result<(), String> {
        self.faults_injected.reopens += 1;
        let node = &mut self.nodes[id as usize];
        let Some(fenced) = node.log.take() else { return Ok(()) };
        let durable = fenced.durable_end();
        drop(fenced);
        node.reopen_due = false;
        node.sync_due = false;
        node.unsynced_bytes = 0;
        let log = open_log(&node.disk, &node.committer).map_err(|e| format!("follower {id} reopen: {e}"))?;
        if log.written_end() > durable && durable >= log.start_offset() {
            log.truncate_suffix(durable).map_err(|e| format!("follower {id} reopen, cut to {durable}: {e}"))?;
        }
        self.restart_follower(id, log)
    }

    /// Starts follower `id` again on `log`, after a crash or a reopen: a new core from what the
    /// log holds and the leader it recorded, and a new connection.
    fn restart_follower(&mut self, id: NodeId, log: Log) -> Result<(), String> {
        let node = &mut self.nodes[id as usize];
        let (written, durable) = (log.written_end(), log.durable_end());
        if written < node.durable_floor {
            return Err(format!("follower {id} lost durable records: {written} < {}", node.durable_floor));
        }
        node.checked_end = node.checked_end.min(written);
        node.durable_floor = node.durable_floor.max(durable);
        let (last_epoch, history) = (crate::driver::ack_last_epoch(&log), log.epoch_history());
        let held = log.start_offset()..written;
        node.log = Some(log);
        let mut follower = Follower::new(LOG.into(), 1, held, durable, last_epoch, history);
        if let Some((epoch, leader)) = node.recorded_leader {
            follower.restore_leader(epoch, leader);
        }
        node.role = Role::Follower(follower);
        self.network.retain(|m| m.to != id && m.from != id);
        self.leader_input(LeaderInput::Disconnected { peer: id })?;
        self.leader_input(LeaderInput::Connected { peer: id, written_end: written, durable_end: durable })
    }

    /// An operator removes follower `id`'s copy of the log (as PROTOCOL.md recommends for a
    /// copy that cannot be mended): it restarts with an empty log and reconnects, and must be
    /// refilled from the leader.
    pub fn wipe_follower(&mut self, id: NodeId) -> Result<(), String> {
        let node = self.nodes.get_mut(id as usize).filter(|_| id != LEADER).ok_or("no such follower")?;
        node.log = None;
        node.committer.stop();
        node.disk = SimDisk::new();
        node.committer =
            Committer::start_with(Arc::new(node.disk.clone()), None, CommitMode::Leader).map_err(|e| e.to_string())?;
        node.log = Some(open_log(&node.disk, &node.committer)?);
        node.durable_floor = 0;
        node.checked_end = 0;
        node.sync_due = false;
        node.unsynced_bytes = 0;
        // The node state file stays: the copy of one log was removed, not the node.
        let mut follower = Follower::new(LOG.into(), 0, 0..0, 0, 0, Vec::new());
        if let Some((epoch, leader)) = node.recorded_leader {
            follower.restore_leader(epoch, leader);
        }
        node.role = Role::Follower(follower);
        self.network.retain(|m| m.to != id && m.from != id);
        self.leader_input(LeaderInput::Disconnected { peer: id })?;
        self.leader_input(LeaderInput::Connected { peer: id, written_end: 0, durable_end: 0 })
    }

    /// Power loss on the leader: its unsynced records are lost (the last write torn); it
    /// recovers, begins a new epoch, and its followers reconnect. Nothing committed may be lost:
    /// a commit needs the leader's own sync. Followers holding records it lost are cut back.
    fn crash_leader(&mut self) -> Result<(), String> {
        let tear = self.random_tear();
        self.faults_injected.leader_crashes += 1;
        let node = &mut self.nodes[0];
        node.log = None;
        node.disk.crash(tear);
        let log = open_log(&node.disk, &node.committer).map_err(|e| format!("leader recovery: {e}"))?;
        let (written, durable) = (log.written_end(), log.durable_end());
        if written < node.durable_floor {
            return Err(format!("the leader lost durable records: {written} < {}", node.durable_floor));
        }
        if written < self.max_commit {
            return Err(format!("the leader lost committed records: {written} < {}", self.max_commit));
        }
        for (offset, value) in self.sent.iter().enumerate().skip(written as usize) {
            self.lost.entry(offset as u64).or_default().push(value.clone());
        }
        self.sent.truncate(written as usize);
        node.durable_floor = node.durable_floor.max(durable);
        self.epoch += 1;
        let peers: Vec<NodeId> = (1..self.config.nodes as u64).collect();
        // As the driver's: the commit point starts from nothing and is what the replication
        // slots, saved a while before the power loss, give back; the first acks raise it.
        let mut leader = leader_core(&log, self.epoch, &peers, &self.config, 0)?;
        for (peer, (durable_end, epoch)) in &self.slots {
            leader.restore_peer(*peer, *durable_end, *epoch);
        }
        node.role = Role::Leader(leader);
        node.log = Some(log);
        self.commit_end = 0;
        // What the old leader already sent may still arrive (and leave a follower holding
        // records this one lost); what was on its way to it is gone.
        self.network.retain(|m| m.to != LEADER);
        for peer in peers {
            self.leader_input(LeaderInput::Connected { peer, written_end: 0, durable_end: 0 })?;
        }
        // What the new core did on its own (a leader alone commits what it holds durably).
        let now_ms = self.now_ms;
        self.leader_input(LeaderInput::Tick { now_ms })
    }

    fn random_tear(&mut self) -> Tear {
        match self.rng.gen_range(0..4) {
            0 => Tear::None,
            1 => Tear::Prefix(1),
            2 => Tear::Half,
            _ => Tear::AllButOne,
        }
    }

    fn check(&mut self) -> Result<(), String> {
        let leader_log = self.nodes[0].log.clone().ok_or("leader has no log")?;
        if leader_log.written_end() != self.sent.len() as u64 {
            return Err("the leader's log lost records".into());
        }
        let leader_commit = self.leader().commit_end();
        if leader_commit != self.commit_end {
            return Err(format!("commit point {leader_commit} disagrees with the last announced {}", self.commit_end));
        }
        // Followers hold a prefix of the leader's log, except records the leader wrote and then
        // lost, which they may hold until they are cut back. Check what is new; `checked_end`
        // only grows over records that are the leader's.
        for i in 1..self.nodes.len() {
            let Some(log) = self.nodes[i].log.clone() else { continue };
            let end = log.written_end();
            let from = self.nodes[i].checked_end.max(log.start_offset());
            if end > from {
                let mut matched = true;
                for record in log.read(from, Visibility::Written).map_err(|e| e.to_string())? {
                    let record = record.map_err(|e| format!("follower {i}: {e}"))?;
                    let offset = record.offset;
                    if self.sent.get(offset as usize).is_some_and(|v| *v == record.value) {
                        if matched {
                            self.nodes[i].checked_end = offset + 1;
                        }
                        continue;
                    }
                    matched = false;
                    let was_lost = self.lost.get(&offset).is_some_and(|values| values.contains(&record.value.to_vec()));
                    if !was_lost {
                        return Err(format!("follower {i} offset {offset} holds a record the leader never wrote"));
                    }
                }
            }
        }
        // A follower calls committed only records that are the leader's, and no more than the
        // leader committed: its readers see nothing else. Its core knows its log's epoch
        // history as the log keeps it: the divergence check cuts by it.
        for node in &self.nodes[1..] {
            let Role::Follower(follower) = &node.role else { continue };
            if let Some(log) = node.log.as_ref().filter(|_| !node.reopen_due) {
                let history = log.epoch_history();
                if follower.epoch_history() != history.as_slice() {
                    return Err(format!(
                        "follower {} core knows the epoch history {:?}, its log holds {history:?}",
                        node.id,
                        follower.epoch_history()
                    ));
                }
            }
            let told = follower.commit_end();
            if told > self.max_commit || told > node.checked_end {
                return Err(format!(
                    "follower {} reads up to {told} as committed; leader commit {}, its log is the leader's up to {}",
                    node.id, self.max_commit, node.checked_end
                ));
            }
        }
        // Committed records are durable on a quorum: the leader's log, and followers whose log
        // is the leader's up to the commit point.
        let quorum = self.config.quorum.size(self.config.nodes);
        // Every commit point any leader announced, not only the current one's.
        let commit = self.max_commit.max(self.leader().commit_end());
        let holders = self
            .nodes
            .iter()
            .filter(|n| {
                let durable = n.log.as_ref().map_or(0, Log::durable_end).max(n.durable_floor);
                let agrees = if n.id == LEADER { u64::MAX } else { n.checked_end };
                durable.min(agrees) >= commit
            })
            .count();
        if holders < quorum {
            return Err(format!("commit {commit} is durable on {holders} nodes, fewer than {quorum}"));
        }
        Ok(())
    }

    /// Stops every fault, heals every link, and runs until every follower has caught up.
    fn heal(&mut self) -> Result<(), String> {
        self.faults = false;
        self.cut.clear();
        // A leader restarted since the last append holds only records of earlier epochs, and
        // commits those only once a record of its own epoch is on a quorum, or once every node
        // holds them (`proto::quorum_commit_end`); a follower stopped at a data loss never will.
        // A client appends one, as it would to a live log.
        if self.leader().epoch_start() >= self.sent.len() as u64 {
            self.client_append()?;
        }
        let log = self.nodes[0].log.clone().ok_or("leader has no log")?;
        log.sync().map_err(|e| e.to_string())?;
        self.leader_input(LeaderInput::Synced { end: log.durable_end() })?;
        let target = self.sent.len() as u64;
        for _ in 0..100_000 {
            // A follower told of a data loss stays where it was told it (never moved past it);
            // the commit point then reaches the end only if the others still make a quorum.
            let lost: Vec<bool> = self.nodes[1..].iter().map(|n| self.data_loss(n).is_some()).collect();
            let caught_up = self.nodes[1..]
                .iter()
                .zip(&lost)
                .all(|(n, lost)| *lost || n.log.as_ref().is_some_and(|l| l.durable_end() == target));
            let live = 1 + lost.iter().filter(|l| !**l).count();
            let committed = self.commit_end == target || live < self.config.quorum.size(self.config.nodes);
            if caught_up && committed {
                return Ok(());
            }
            for id in 1..self.config.nodes as u64 {
                if self.nodes[id as usize].reopen_due {
                    self.reopen(id)?;
                }
                self.follower_sync(id)?;
            }
            if self.network.is_empty() {
                self.now_ms += 50;
                let now_ms = self.now_ms;
                self.leader_input(LeaderInput::Tick { now_ms })?;
            } else {
                self.deliver_next()?;
            }
            self.check()?;
        }
        let ends: Vec<_> = self
            .nodes
            .iter()
            .map(|n| n.log.as_ref().map(|l| (l.start_offset(), l.written_end(), l.durable_end())))
            .collect();
        Err(format!(
            "no convergence after healing: leader end {target}, commit {}, nodes (start, written, durable) {ends:?}",
            self.commit_end
        ))
    }

    /// The data loss `node` was told of (`from..to`), if it is a follower that was.
    fn data_loss(&self, node: &Node) -> Option<(u64, u64)> {
        match &node.role {
            Role::Follower(f) => f.gap().filter(|(_, _, reseeded)| !reseeded).map(|(from, to, _)| (from, to)),
            Role::Leader(_) => None,
        }
    }

    /// Every record any leader called committed survives a power loss on a quorum of disks,
    /// judged on crash images (a copy of each disk losing every unsynced byte, its log opened
    /// as recovery would), not on the durable ends the logs and the cores report.
    fn check_crash_images(&self) -> Result<(), String> {
        let commit = self.max_commit.max(self.commit_end);
        if commit == 0 {
            return Ok(());
        }
        let mut holders = 0;
        for node in &self.nodes {
            let image = node.disk.fork();
            image.crash(Tear::None);
            let committer =
                Committer::start_with(Arc::new(image.clone()), None, CommitMode::Leader).map_err(|e| e.to_string())?;
            let held = open_log(&image, &committer)
                .map_err(|e| format!("node {}: its crash image does not open: {e}", node.id))
                .and_then(|log| self.holds_committed(&log, commit));
            committer.stop();
            holders += usize::from(held?);
        }
        let quorum = self.config.quorum.size(self.config.nodes);
        if holders < quorum {
            return Err(format!(
                "commit {commit} survives a power loss on {holders} nodes' disks, fewer than {quorum}"
            ));
        }
        Ok(())
    }

    /// Whether `log` holds the leader's records up to `commit` (from its own start).
    fn holds_committed(&self, log: &Log, commit: u64) -> Result<bool, String> {
        if log.written_end() < commit {
            return Ok(false);
        }
        for record in log.read(log.start_offset(), Visibility::Written).map_err(|e| e.to_string())? {
            let record = record.map_err(|e| e.to_string())?;
            if record.offset >= commit {
                break;
            }
            if self.sent.get(record.offset as usize).is_none_or(|v| *v != record.value) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn check_converged(&mut self) -> Result<(), String> {
        self.check()?;
        self.check_crash_images()?;
        let leader = self.nodes[0].log.clone().ok_or("leader has no log")?;
        // Retention may have deleted the leader's first records; from its start on, every log
        // must hold the same.
        let start = leader.start_offset();
        let want: Vec<Bytes> = leader
            .read(start, Visibility::Written)
            .map_err(|e| e.to_string())?
            .map(|r| r.map(|r| r.value))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        for node in &self.nodes[1..] {
            let log = node.log.as_ref().ok_or("follower has no log")?;
            if let Some((from, to)) = self.data_loss(node) {
                // It holds the leader's records up to the loss (`check` compared them) and
                // nothing after: it was not moved past it.
                if log.written_end() != from || to <= from || to > start {
                    return Err(format!(
                        "follower {} told of lost records {from}..{to} ends at {}; the leader starts at {start}",
                        node.id,
                        log.written_end()
                    ));
                }
                continue;
            }
            // The follower's own retention may have deleted more than the leader's.
            let from = log.start_offset().max(start);
            let got: Vec<Bytes> = log
                .read(from, Visibility::Durable)
                .map_err(|e| e.to_string())?
                .map(|r| r.map(|r| r.value))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let want = want.get((from - start) as usize..).unwrap_or_default();
            if got != want {
                return Err(format!(
                    "follower {} did not converge: {} records, leader {}",
                    node.id,
                    got.len(),
                    want.len()
                ));
            }
        }
        Ok(())
    }

    /// Records the leader appended.
    pub fn appended(&self) -> u64 {
        self.sent.len() as u64
    }

    /// The commit point reached.
    pub fn committed(&self) -> u64 {
        self.commit_end
    }

    /// Followers that were told of a data loss and stopped there.
    pub fn data_losses(&self) -> u64 {
        self.nodes.iter().filter(|n| self.data_loss(n).is_some()).count() as u64
    }

    /// The faults injected so far.
    pub fn faults(&self) -> Faults {
        self.faults_injected
    }
}
