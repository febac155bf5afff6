//! A deterministic simulator: a log replicated over a few nodes, each with a real
//! [`tern_wal::Log`] on its own [`SimDisk`], connected by a seeded network that delays, drops,
//! duplicates, reorders, corrupts and partitions, with followers crashing (power loss, torn
//! writes) and restarting, followers whose disk fails a write or a sync (the log is fenced, then
//! reopened from its files and cut back to what was durable, as the driver does), a leader whose
//! retention deletes committed segments (a follower that still needs them is re-seeded), and
//! followers whose own retention runs as the driver's does.
//!
//! Leadership moves between nodes. The controller is modelled as a linearizable register (the
//! log's leader and epoch, changed only by compare-and-set elections, as `tern-controller`'s
//! map issues epochs). The leader may lose power and restart in place (the register issues it
//! the next epoch), lose power for good, pause past the failure timeout (a stalled process),
//! or be cut off from every other node and from the controller. Once the controller has not
//! reached the leader for `failure_timeout_ms` of simulated time, it fences every replica it
//! reaches at the next epoch (`Follower::fence`, and the node state's fence, as
//! `Server::fence`), takes their reports, elects with [`election::elect`] from at least
//! `n - k + 1` of them, and the elected node leads the new epoch (a `Leader` core on its log
//! after `begin_epoch`). An old leader that comes back leads an earlier epoch (a zombie:
//! clients may still append to it) until it learns otherwise, from a follower's ack or from the
//! controller, and is then started as a follower: its new leader cuts its uncommitted tail,
//! into a quarantine file as the driver does.
//!
//! Everything runs in one thread (leader-mode group commit syncs in the caller), every random
//! choice comes from one `ChaCha8Rng`, and records carry the simulated clock's timestamps, so
//! a seed replays exactly.
//!
//! After every step the checkers assert:
//! - every log other than the leader's holds, at each offset, the leader's record or one some
//!   leader wrote there (no record invented or reordered; records are told apart by epoch and
//!   bytes);
//! - the commit point never goes back while a leader runs (a restarted one starts from its
//!   replication slots, saved a while before, as the driver's does);
//! - a follower calls committed only records that are the leader's, up to what was committed;
//! - a follower core knows its log's epoch history as the log keeps it;
//! - every record any leader called committed is durable on a quorum of disks (a crash never
//!   loses it), by the ends the logs report after every step and, every
//!   64 steps and at the end, on crash images: a copy of each disk loses
//!   every unsynced byte and its log is opened as recovery would, so a sync claimed and not
//!   made is caught;
//! - every epoch is issued once, to one node, and only that node leads it and appends in it;
//! - a record committed in any epoch is, at the same offset with the same epoch and bytes, in
//!   every later leader's log (checked when a leader is elected, when any leader commits, and
//!   when the leader appends), and no committed record is ever cut;
//! - every record cut from a log (a returning leader's uncommitted tail, a follower's diverged
//!   records) is in the quarantine file the cut wrote, with its epoch and bytes;
//! - a re-seed never skips a record the leader still holds;
//! - after the faults stop and the network heals, every live log converges to the leader's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tern_segment::sim::{FaultOp, SimDisk, Tear};
use tern_segment::Disk;
use tern_wal::{AppendOptions, CommitMode, Committer, Durability, Log, LogOptions, Record, Visibility};

use crate::codec;
use crate::election::{self, ElectionError, ReplicaSet, Report};
use crate::message::{Message, NodeId};
use crate::proto::{Follower, FollowerAction, FollowerInput, Leader, LeaderAction, LeaderConfig, LeaderInput, Quorum};

/// The simulated log's name.
const LOG: &str = "sim";
/// The node that leads epoch 1.
const FIRST_LEADER: NodeId = 0;

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
    /// Chance per step that the leader loses power and restarts, leading the next epoch the
    /// controller issues it.
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
    /// Chance per step that the leader loses power for good (while fewer than `nodes - k`
    /// nodes are gone, so that the rest can still elect and commit). The controller replaces
    /// it after `failure_timeout_ms`.
    pub leader_death_ratio: f64,
    /// Chance per step that the leader pauses (a stalled process: it does nothing, and what is
    /// sent to it waits) for half to four times `failure_timeout_ms`.
    pub leader_pause_ratio: f64,
    /// Chance per step that the leader is cut off from every other node and from the
    /// controller (it goes on running, and clients on its side go on appending) for half to
    /// four times `failure_timeout_ms`.
    pub leader_isolation_ratio: f64,
    /// Chance per step that the leader is cut off from the controller only, for half to four
    /// times `failure_timeout_ms`: it goes on leading and reaches every node while the
    /// controller replaces it. Only the fence keeps it from committing, through the replicas
    /// it still reaches, records the new leader does not hold.
    pub controller_partition_ratio: f64,
    /// How long, on the simulated clock, the controller waits before it replaces a leader it
    /// cannot reach.
    pub failure_timeout_ms: u64,
    /// Longest time an elected node takes to start leading (uniform from 0): meanwhile it
    /// sends nothing.
    pub leader_start_ms_max: u64,
    /// Chance that a client appends to a node still leading an earlier epoch (it has not heard
    /// of the election), when there is one, rather than to the leader the controller names.
    pub zombie_append_ratio: f64,
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
            leader_death_ratio: 0.0,
            leader_pause_ratio: 0.0,
            leader_isolation_ratio: 0.0,
            controller_partition_ratio: 0.0,
            failure_timeout_ms: 300,
            leader_start_ms_max: 150,
            zombie_append_ratio: 0.3,
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

/// A record as the checkers know it: the epoch of the batch that carries it, and its bytes.
/// Two leader runs may write the same bytes at one offset; never in the same epoch.
type Rec = (u64, Vec<u8>);

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
    /// The fence its node state file keeps (`Server::fence`): nothing of an older epoch is
    /// taken, also after a restart.
    fence_epoch: u64,
    /// Leader: the commit point its core announced last.
    leader_commit: u64,
    /// Its replication slots as last saved while it led: per peer, the acknowledged durable
    /// end and the epoch it was acknowledged in (the driver saves them every second).
    slots: BTreeMap<NodeId, (u64, u64)>,
    /// Follower: its core asked for a sync that has not run yet.
    sync_due: bool,
    /// Follower: chunk bytes applied since its last sync.
    unsynced_bytes: u64,
    /// Follower: a disk error is armed on its disk and has not struck yet.
    fault_armed: bool,
    /// Follower: a disk error fenced its log; it takes nothing until it is reopened.
    reopen_due: bool,
    /// It lost power for good: it does nothing any more (its disk keeps what it synced).
    dead: bool,
    /// Where its log started when it lost power for good (what it sent before may still
    /// arrive, and is judged by it).
    start_at_death: u64,
    /// A stalled process until then: it does nothing, and what is sent to it waits.
    paused_until_ms: Option<u64>,
    /// Cut off from every other node and from the controller until then.
    isolated_until_ms: Option<u64>,
    /// Cut off from the controller only until then.
    unseen_until_ms: Option<u64>,
}

impl Node {
    /// Runs: not dead, not paused.
    fn up(&self) -> bool {
        !self.dead && self.paused_until_ms.is_none() && self.log.is_some()
    }

    /// The controller reaches it: it runs, is not cut off, and its log is not waiting to be
    /// reopened (its fence could not sync it).
    fn reachable(&self) -> bool {
        self.up() && self.isolated_until_ms.is_none() && self.unseen_until_ms.is_none() && !self.reopen_due
    }

    fn leader_core(&self) -> Option<&Leader> {
        match &self.role {
            Role::Leader(l) => Some(l),
            Role::Follower(_) => None,
        }
    }

    fn is_follower(&self) -> bool {
        matches!(self.role, Role::Follower(_))
    }
}

/// The controller, as the simulator models it: a linearizable register holding the log's
/// leader and epoch. Epochs are issued only by `Register::elect`, a compare-and-set, as the
/// controller's map issues them (`Command::Elect`): each epoch once, to one node.
#[derive(Debug, Clone)]
pub struct Register {
    leader: NodeId,
    epoch: u64,
    /// Every epoch issued, and to whom.
    issued: BTreeMap<u64, NodeId>,
}

impl Register {
    fn new(leader: NodeId) -> Register {
        Register { leader, epoch: 1, issued: BTreeMap::from([(1, leader)]) }
    }

    /// Makes `leader` lead the epoch after `expected_epoch`, if the register still holds
    /// `expected_epoch`; otherwise says who leads which epoch now.
    fn elect(&mut self, expected_epoch: u64, leader: NodeId) -> Result<u64, (NodeId, u64)> {
        if self.epoch != expected_epoch {
            return Err((self.leader, self.epoch));
        }
        self.epoch += 1;
        self.leader = leader;
        self.issued.insert(self.epoch, leader);
        Ok(self.epoch)
    }

    /// The node the register names as the log's leader.
    pub fn leader(&self) -> NodeId {
        self.leader
    }

    /// The log's current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
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
    /// Leader power losses, each followed by a restart in place in the next epoch.
    pub leader_crashes: u64,
    /// Follower records cut because they diverged from a leader's log.
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
    /// Leaders that lost power for good.
    pub leader_deaths: u64,
    /// Leaders paused.
    pub leader_pauses: u64,
    /// Leaders cut off from every node and the controller.
    pub leader_isolations: u64,
    /// Leaders cut off from the controller only.
    pub controller_partitions: u64,
    /// Elections the controller completed (a new leader on another node, or the same).
    pub elections: u64,
    /// Elections whose first attempt heard from too few replicas (retried at every step until
    /// enough replicas report).
    pub elections_short: u64,
    /// Nodes leading an earlier epoch that were started as followers.
    pub demotions: u64,
    /// Records clients appended to a node leading an earlier epoch.
    pub zombie_appends: u64,
    /// Records written to quarantine files by cuts (all checked against what was cut).
    pub quarantined: u64,
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
    /// Every record the current leader's log holds, by offset (below its start: the committed
    /// records its retention deleted).
    sent: Vec<Rec>,
    /// The node whose log `sent` describes: the leader the controller names, except while an
    /// elected node could not begin its epoch (its disk failed) and another is to be elected.
    sent_of: NodeId,
    /// Every record any leader wrote, by offset: a log may hold one of them (one a leader lost
    /// in a power loss, or wrote in an epoch that lost its election) until it is cut back.
    written: BTreeMap<u64, Vec<Rec>>,
    /// Every record any leader called committed, by offset.
    committed: BTreeMap<u64, Rec>,
    /// The controller.
    register: Register,
    /// The node that appended in each epoch: at most one.
    appenders: BTreeMap<u64, NodeId>,
    /// Since when the controller has not reached the leader.
    failed_since_ms: Option<u64>,
    /// The epoch an election fenced replicas for and has not completed yet: it goes on until
    /// it does, whether or not the old leader comes back.
    pending_election: Option<u64>,
    /// The highest commit point any leader announced: all of it stays durable on a quorum.
    max_commit: u64,
    faults: bool,
    /// Steps run, for the crash-image check every [`CRASH_IMAGE_EVERY`] of them.
    steps: u64,
}

/// How an injected disk error reads in an error message.
const EIO_TEXT: &str = "os error 5";

/// Steps between two looks at the disks' crash images (it opens a log per node).
const CRASH_IMAGE_EVERY: u64 = 64;

/// Chance per step that a node leading an earlier epoch, reachable again, reads the map and
/// steps down (before a follower's ack tells it).
const ZOMBIE_STEP_DOWN_RATIO: f64 = 0.02;

/// Largest quarantine file the checker reads back.
const QUARANTINE_BYTES_MAX: u64 = 64 << 20;

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
        learners: Vec::new(),
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

/// A follower core for `log`, as the driver builds one: from what the log holds, the leader
/// the node recorded and its fence.
fn follower_core(log: &Log, recorded_leader: Option<(u64, NodeId)>, fence_epoch: u64) -> Follower {
    let (written, durable) = (log.written_end(), log.durable_end());
    let last_epoch = crate::driver::ack_last_epoch(log);
    let held = log.start_offset()..written;
    let mut follower = Follower::new(LOG.into(), 1, held, durable, last_epoch, log.epoch_history());
    if let Some((epoch, leader)) = recorded_leader {
        follower.restore_leader(epoch, leader);
    }
    follower.fence(fence_epoch);
    follower
}

/// Every record of `log` from `from` on, as the checkers know records.
fn records_from(log: &Log, from: u64) -> Result<Vec<(u64, Rec)>, String> {
    let mut out = Vec::new();
    for record in log.read(from, Visibility::Written).map_err(|e| e.to_string())? {
        let record = record.map_err(|e| e.to_string())?;
        out.push((record.offset, (record.epoch, record.value.to_vec())));
    }
    Ok(out)
}

impl World {
    /// A cluster of `config.nodes` nodes with empty logs; node 0 leads epoch 1.
    pub fn new(config: Config) -> Result<World, String> {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut nodes = Vec::with_capacity(config.nodes);
        let peers: Vec<NodeId> = (0..config.nodes as u64).filter(|id| *id != FIRST_LEADER).collect();
        for id in 0..config.nodes as u64 {
            let disk = SimDisk::new();
            let committer =
                Committer::start_with(Arc::new(disk.clone()), None, CommitMode::Leader).map_err(|e| e.to_string())?;
            let log = open_log(&disk, &committer)?;
            let role = if id == FIRST_LEADER {
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
                fence_epoch: 0,
                leader_commit: 0,
                slots: BTreeMap::new(),
                sync_due: false,
                unsynced_bytes: 0,
                fault_armed: false,
                reopen_due: false,
                dead: false,
                start_at_death: 0,
                paused_until_ms: None,
                isolated_until_ms: None,
                unseen_until_ms: None,
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
            sent_of: FIRST_LEADER,
            written: BTreeMap::new(),
            committed: BTreeMap::new(),
            register: Register::new(FIRST_LEADER),
            appenders: BTreeMap::new(),
            failed_since_ms: None,
            pending_election: None,
            max_commit: 0,
            faults: true,
            steps: 0,
        };
        for peer in peers {
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

    /// The node the controller names as the leader.
    fn leader_id(&self) -> NodeId {
        self.register.leader
    }

    /// Every node but the one the controller names as the leader, by id.
    fn others(&self) -> Vec<NodeId> {
        let leader = self.leader_id();
        (0..self.config.nodes as u64).filter(|id| *id != leader).collect()
    }

    /// Nodes that still lead an earlier epoch than the controller's, and run.
    fn zombies(&self) -> Vec<NodeId> {
        let leader = self.leader_id();
        self.nodes.iter().filter(|n| n.id != leader && n.leader_core().is_some() && n.up()).map(|n| n.id).collect()
    }

    /// The commit point of the leader the controller names.
    fn commit_end(&self) -> u64 {
        self.nodes[self.leader_id() as usize].leader_commit
    }

    fn leader(&mut self) -> &mut Leader {
        let id = self.leader_id();
        self.leader_at(id).unwrap_or_else(|| unreachable!("node {id} leads"))
    }

    fn leader_at(&mut self, id: NodeId) -> Option<&mut Leader> {
        match &mut self.nodes[id as usize].role {
            Role::Leader(l) => Some(l),
            Role::Follower(_) => None,
        }
    }

    fn step(&mut self) -> Result<(), String> {
        self.controller_step()?;
        // One roll picks at most one fault, each from its own band of [0, 1); anything above
        // the bands (or any roll once healing began) is an ordinary step.
        if let Some(id) = self.nodes.iter().find(|n| n.reopen_due && n.is_follower() && !n.dead).map(|n| n.id) {
            // The driver's backoff: not at once.
            if self.rng.gen_bool(0.2) {
                return self.reopen(id);
            }
        }
        let roll: f64 = self.rng.gen();
        let (faults, others) = (self.faults, self.others());
        let followers = !others.is_empty();
        let mut floor = 0.0;
        let mut rolled = |ratio: f64| {
            let hit = faults && roll >= floor && roll < floor + ratio;
            floor += ratio;
            hit
        };
        if rolled(self.config.crash_ratio) && followers {
            let victim = others[self.rng.gen_range(0..others.len())];
            return self.crash(victim);
        }
        if rolled(self.config.leader_crash_ratio) {
            return self.crash_leader();
        }
        if rolled(self.config.partition_ratio) && followers {
            let peer = others[self.rng.gen_range(0..others.len())];
            let leader = self.leader_id();
            let link = (leader.min(peer), leader.max(peer));
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
            let id = others[self.rng.gen_range(0..others.len())];
            return self.follower_retain(id);
        }
        if rolled(self.config.disk_error_ratio) && followers {
            let id = others[self.rng.gen_range(0..others.len())];
            let op = if self.rng.gen_bool(0.5) { FaultOp::Sync } else { FaultOp::Write };
            let node = &mut self.nodes[id as usize];
            if !node.fault_armed && !node.reopen_due && node.is_follower() && node.up() {
                node.disk.fail_next(op, libc::EIO);
                node.fault_armed = true;
                self.faults_injected.disk_errors += 1;
            }
            return Ok(());
        }
        if rolled(self.config.leader_death_ratio) {
            return self.leader_death();
        }
        // Faults on the leader that last a span: paused, cut off from the controller, cut off
        // from everyone. One at a time, and none while an election is pending.
        type Span = (fn(&mut Node) -> &mut Option<u64>, fn(&mut Faults) -> &mut u64);
        let spans: [(f64, Span); 3] = [
            (self.config.leader_pause_ratio, (|n| &mut n.paused_until_ms, |f| &mut f.leader_pauses)),
            (self.config.controller_partition_ratio, (|n| &mut n.unseen_until_ms, |f| &mut f.controller_partitions)),
            (self.config.leader_isolation_ratio, (|n| &mut n.isolated_until_ms, |f| &mut f.leader_isolations)),
        ];
        for (ratio, (until_of, count_of)) in spans {
            if rolled(ratio) {
                let until = self.now_ms + self.failure_span_ms();
                let pending = self.pending_election.is_some();
                let node = &mut self.nodes[self.register.leader as usize];
                if node.up() && until_of(node).is_none() && !pending {
                    *until_of(node) = Some(until);
                    *count_of(&mut self.faults_injected) += 1;
                }
                return Ok(());
            }
        }
        match self.rng.gen_range(0..11) {
            0..=2 => {
                let zombies = self.zombies();
                if !zombies.is_empty() && self.rng.gen_bool(self.config.zombie_append_ratio) {
                    let id = zombies[self.rng.gen_range(0..zombies.len())];
                    self.zombie_append(id)
                } else {
                    self.client_append()
                }
            }
            10 if followers => {
                let id = others[self.rng.gen_range(0..others.len())];
                self.follower_sync(id)
            }
            3 => {
                let id = self.leader_id();
                if !self.nodes[id as usize].up() {
                    return Ok(());
                }
                self.leader_sync(id)
            }
            4 => {
                self.now_ms += self.rng.gen_range(1..40);
                let now_ms = self.now_ms;
                if self.rng.gen_bool(0.3) {
                    self.save_slots();
                }
                // Every running leader's timers fire: the controller's and any of an earlier
                // epoch that does not know yet, which syncs what clients appended to it.
                let leader = self.leader_id();
                for id in self.zombies() {
                    self.leader_sync(id)?;
                    self.leader_input_at(id, LeaderInput::Tick { now_ms })?;
                }
                if self.nodes[leader as usize].up() {
                    self.leader_input(LeaderInput::Tick { now_ms })?;
                }
                Ok(())
            }
            _ => self.deliver_next(),
        }
    }

    /// How long a pause or an isolation lasts: half to four failure timeouts, so that some end
    /// before the controller acts and some after.
    fn failure_span_ms(&mut self) -> u64 {
        let timeout = self.config.failure_timeout_ms.max(2);
        self.rng.gen_range(timeout / 2..=timeout * 4)
    }

    /// Syncs leader `id`'s log and tells its core.
    fn leader_sync(&mut self, id: NodeId) -> Result<(), String> {
        let log = self.nodes[id as usize].log.clone().ok_or("leader has no log")?;
        log.sync().map_err(|e| format!("leader {id} sync: {e}"))?;
        let node = &mut self.nodes[id as usize];
        node.durable_floor = node.durable_floor.max(log.durable_end());
        self.leader_input_at(id, LeaderInput::Synced { end: log.durable_end() })
    }

    /// What the controller does at each step: paused nodes resume and isolations end when
    /// their time comes; a leader the controller has not reached for the failure timeout is
    /// replaced; a node still leading an earlier epoch that the controller reaches reads the
    /// map, now and then, and steps down.
    fn controller_step(&mut self) -> Result<(), String> {
        let now_ms = self.now_ms;
        for id in 0..self.config.nodes as u64 {
            let node = &mut self.nodes[id as usize];
            if node.isolated_until_ms.is_some_and(|until| until <= now_ms) {
                node.isolated_until_ms = None;
            }
            if node.unseen_until_ms.is_some_and(|until| until <= now_ms) {
                node.unseen_until_ms = None;
            }
            if node.paused_until_ms.is_some_and(|until| until <= now_ms) {
                node.paused_until_ms = None;
                // Its timers fire as soon as it runs again.
                if node.leader_core().is_some() && !node.dead {
                    self.leader_input_at(id, LeaderInput::Tick { now_ms })?;
                }
            }
        }
        let leader = &self.nodes[self.leader_id() as usize];
        if leader.reachable() && leader.leader_core().is_some() && self.pending_election.is_none() {
            self.failed_since_ms = None;
        } else {
            let since = *self.failed_since_ms.get_or_insert(now_ms);
            if self.pending_election.is_some() || now_ms - since >= self.config.failure_timeout_ms {
                self.failover()?;
            }
        }
        let returned: Vec<NodeId> =
            self.zombies().into_iter().filter(|id| self.nodes[*id as usize].reachable()).collect();
        if let Some(&id) = returned.first() {
            if self.rng.gen_bool(ZOMBIE_STEP_DOWN_RATIO) {
                self.demote(id)?;
            }
        }
        Ok(())
    }

    /// The controller replaces the leader: it fences every replica it reaches at the next
    /// epoch (a node still leading an earlier epoch is first started as a follower: a leader
    /// is not fenced), elects from their reports, and the elected node leads the epoch. With
    /// too few reports it elects nobody, and tries again at the next step.
    fn failover(&mut self) -> Result<(), String> {
        let set = self.replica_set();
        if !self.failover_allowed() {
            // This quorum allows no automatic failover: the leader is waited for.
            return Ok(());
        }
        let expected = self.register.epoch;
        let epoch = expected + 1;
        let retry = self.pending_election.replace(epoch) == Some(epoch);
        for id in 0..self.config.nodes as u64 {
            let node = &self.nodes[id as usize];
            if node.reachable() && node.leader_core().is_some() {
                self.demote(id)?;
            }
        }
        let mut reports = Vec::new();
        for id in 0..self.config.nodes as u64 {
            if let Some(report) = self.fence(id, epoch)? {
                reports.push(report);
            }
        }
        let chosen = match election::elect(&set, &reports, None) {
            Ok(chosen) => chosen,
            Err(ElectionError::TooFewReports { .. }) => {
                self.faults_injected.elections_short += u64::from(!retry);
                return Ok(());
            }
            Err(e) => return Err(format!("election of epoch {epoch}: {e}")),
        };
        let issued = self.register.elect(expected, chosen.node).map_err(|(leader, epoch)| {
            format!("the controller's compare-and-set from epoch {expected} failed: node {leader} leads {epoch}")
        })?;
        if issued != epoch {
            return Err(format!("the controller issued epoch {issued}, not the {epoch} it fenced for"));
        }
        self.pending_election = None;
        self.failed_since_ms = None;
        self.faults_injected.elections += 1;
        self.promote(chosen.node, epoch)
    }

    /// Fences node `id` at `epoch` as `Server::fence` does, if the controller reaches it and it
    /// follows: the fence is recorded durably (its node state), its core refuses anything of an
    /// older epoch, its log is synced, and it reports. `None` when it cannot report.
    fn fence(&mut self, id: NodeId, epoch: u64) -> Result<Option<Report>, String> {
        let node = &mut self.nodes[id as usize];
        if !node.reachable() {
            return Ok(None);
        }
        let Role::Follower(follower) = &mut node.role else { return Ok(None) };
        node.fence_epoch = node.fence_epoch.max(epoch);
        follower.fence(epoch);
        let log = node.log.clone().ok_or("follower has no log")?;
        let synced = log.sync().map_err(|e| format!("follower {id} fence sync: {e}"));
        if synced.is_err() {
            self.disk_error_struck(id, synced)?;
            return Ok(None);
        }
        let node = &mut self.nodes[id as usize];
        node.durable_floor = node.durable_floor.max(log.durable_end());
        Ok(Some(Report { node: id, last_epoch: log.last_epoch(), durable_end: log.durable_end() }))
    }

    /// Node `id`, elected, leads `epoch`: a leader core on its log (the epoch begun in it
    /// first), with the replication slots it saved when it last led.
    fn promote(&mut self, id: NodeId, epoch: u64) -> Result<(), String> {
        let peers: Vec<NodeId> = (0..self.config.nodes as u64).filter(|p| *p != id).collect();
        let log = self.nodes[id as usize].log.clone().ok_or("the elected node has no log")?;
        let mut leader = match leader_core(&log, epoch, &peers, &self.config, 0) {
            Ok(leader) => leader,
            Err(e) if self.nodes[id as usize].fault_armed && e.contains(EIO_TEXT) => {
                // Its disk failed as it began the epoch: it cannot lead, its log is reopened
                // as a follower's, and the controller, which names a leader that does not
                // lead, elects again after the failure timeout.
                return self.disk_error_struck(id, Err(e));
            }
            Err(e) => return Err(e),
        };
        let node = &mut self.nodes[id as usize];
        for (peer, (durable_end, slot_epoch)) in &node.slots {
            leader.restore_peer(*peer, *durable_end, *slot_epoch);
        }
        node.role = Role::Leader(leader);
        node.leader_commit = 0;
        node.sync_due = false;
        node.unsynced_bytes = 0;
        node.durable_floor = node.durable_floor.max(log.durable_end());
        // The model of the new leader's log: the committed records its retention deleted,
        // then what it holds. Every committed record must be there.
        let start = log.start_offset();
        let mut sent: Vec<Rec> = Vec::with_capacity(log.written_end() as usize);
        for offset in 0..start {
            let record = self.committed.get(&offset).ok_or_else(|| {
                format!("node {id}, elected for epoch {epoch}, starts at {start}; record {offset} below was never committed")
            })?;
            sent.push(record.clone());
        }
        sent.extend(records_from(&log, start)?.into_iter().map(|(_, record)| record));
        for (offset, record) in &self.committed {
            if sent.get(*offset as usize) != Some(record) {
                return Err(format!(
                    "node {id}, elected for epoch {epoch}, lacks committed record {offset} (epoch {}): it holds {:?}",
                    record.0,
                    sent.get(*offset as usize).map(|(epoch, _)| epoch)
                ));
            }
        }
        // What other logs were found to agree with is now judged against this log. The old
        // leader's log was the model itself (or, after a power loss, a prefix of it): it agrees
        // as far as the two models do, also if it is gone for good and no longer read.
        let agree = self.sent.iter().zip(&sent).take_while(|(a, b)| a == b).count() as u64;
        for node in &mut self.nodes {
            node.checked_end = if node.id == self.sent_of { agree } else { node.checked_end.min(agree) };
        }
        self.sent = sent;
        self.sent_of = id;
        for peer in peers {
            self.leader_input(LeaderInput::Connected { peer, written_end: 0, durable_end: 0 })?;
        }
        // It takes a while to start leading (the driver stops the node and starts it as the
        // leader of the epoch): until then it sends nothing, and an old leader the controller
        // could not reach goes on shipping to the replicas. Only their fence keeps it from
        // committing through them.
        let start_ms = if self.faults { self.rng.gen_range(0..=self.config.leader_start_ms_max) } else { 0 };
        if start_ms > 0 {
            self.nodes[id as usize].paused_until_ms = Some(self.now_ms + start_ms);
            return Ok(());
        }
        let now_ms = self.now_ms;
        self.leader_input(LeaderInput::Tick { now_ms })
    }

    /// Node `id`, leading an earlier epoch than the controller's, is stopped and started as a
    /// follower (as an operator or the controller's agent does once it learns of the new
    /// leader). Its log keeps everything; the new leader's check cuts its uncommitted tail.
    fn demote(&mut self, id: NodeId) -> Result<(), String> {
        let node = &mut self.nodes[id as usize];
        let log = node.log.clone().ok_or("a leader has no log")?;
        node.role = Role::Follower(follower_core(&log, node.recorded_leader, node.fence_epoch));
        node.sync_due = false;
        node.unsynced_bytes = 0;
        node.leader_commit = 0;
        self.faults_injected.demotions += 1;
        // A new process: its connections, and what was on its way to and from the old one,
        // are gone.
        self.network.retain(|m| m.to != id && m.from != id);
        let (written, durable) = (log.written_end(), log.durable_end());
        self.reconnect(id, written, durable)
    }

    /// Every running leader that reaches node `id` learns that its connection to it is a new
    /// one (it restarted, or changed roles).
    fn reconnect(&mut self, id: NodeId, written_end: u64, durable_end: u64) -> Result<(), String> {
        for leader in 0..self.config.nodes as u64 {
            let node = &self.nodes[leader as usize];
            if leader == id || node.leader_core().is_none() || !node.up() || node.isolated_until_ms.is_some() {
                continue;
            }
            self.leader_input_at(leader, LeaderInput::Disconnected { peer: id })?;
            self.leader_input_at(leader, LeaderInput::Connected { peer: id, written_end, durable_end })?;
        }
        Ok(())
    }

    /// The log's replicas (every node) and its quorum, as the controller's map holds them.
    fn replica_set(&self) -> ReplicaSet {
        ReplicaSet { log: LOG.into(), replicas: (0..self.config.nodes as u64).collect(), quorum: self.config.quorum }
    }

    /// Whether the quorum allows automatic failover (more than half the replicas).
    fn failover_allowed(&self) -> bool {
        election::check_failover(&self.replica_set()).is_ok()
    }

    /// The leader loses power for good, while enough nodes are left to elect and commit
    /// without it.
    fn leader_death(&mut self) -> Result<(), String> {
        let k = self.config.quorum.size(self.config.nodes);
        let dead = self.nodes.iter().filter(|n| n.dead).count();
        let id = self.leader_id();
        let node = &self.nodes[id as usize];
        if !self.failover_allowed()
            || dead + 1 > self.config.nodes - k
            || !node.up()
            || node.leader_core().is_none()
            || self.pending_election.is_some()
        {
            return Ok(());
        }
        let tear = self.random_tear();
        self.faults_injected.leader_deaths += 1;
        let node = &mut self.nodes[id as usize];
        node.start_at_death = node.log.take().map_or(0, |log| log.start_offset());
        node.disk.crash(tear);
        node.dead = true;
        Ok(())
    }

    /// The leader's retention: deletes the segments below a committed offset.
    fn retain(&mut self) -> Result<(), String> {
        let id = self.leader_id();
        if !self.nodes[id as usize].up() || self.nodes[id as usize].leader_core().is_none() {
            return Ok(());
        }
        let log = self.nodes[id as usize].log.clone().ok_or("leader has no log")?;
        let start = log.start_offset();
        let commit_end = self.commit_end();
        if commit_end <= start {
            return Ok(());
        }
        // Mostly everything committed, so that whole segments go (4 KiB each here).
        let offset = if self.rng.gen_bool(0.75) { commit_end } else { self.rng.gen_range(start..=commit_end) };
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
        let node = &self.nodes[id as usize];
        if node.reopen_due || !node.is_follower() || !node.up() {
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

    /// Saves the leader's replication slots as the driver does: a follower being re-seeded or
    /// stopped at a data loss has none that counts.
    fn save_slots(&mut self) {
        let id = self.leader_id();
        let Some(leader) = self.nodes[id as usize].leader_core() else { return };
        let epoch = leader.epoch();
        let mut slots = BTreeMap::new();
        for peer in self.others() {
            if let Some(view) = leader.peer_view(peer).filter(|view| view.gap.is_none()) {
                slots.insert(peer, (view.acked_durable, epoch));
            }
        }
        self.nodes[id as usize].slots = slots;
    }

    /// Values for `count` new records of a batch written at `offset`.
    fn values(&mut self, offset: u64, count: i32) -> Vec<Vec<u8>> {
        (0..count)
            .map(|_| {
                let len = self.rng.gen_range(0..300);
                let mut v = format!("{offset}:").into_bytes();
                v.extend((0..len).map(|_| self.rng.gen_range(b'a'..=b'z')));
                v
            })
            .collect()
    }

    /// Appends `values` to leader `id`'s log, as a client's append: returns their offsets and
    /// the epoch they carry, after checking that no other node appended in that epoch and that
    /// no committed record is written over.
    fn append_at(&mut self, id: NodeId, values: &[Vec<u8>]) -> Result<(std::ops::Range<u64>, u64), String> {
        let log = self.nodes[id as usize].log.clone().ok_or("leader has no log")?;
        let epoch = self.nodes[id as usize].leader_core().ok_or("not a leader")?.epoch();
        if let Some(other) = self.appenders.insert(epoch, id).filter(|other| *other != id) {
            return Err(format!("nodes {other} and {id} both appended in epoch {epoch}"));
        }
        if self.register.issued.get(&epoch) != Some(&id) {
            return Err(format!(
                "node {id} appends in epoch {epoch}, issued to {:?}",
                self.register.issued.get(&epoch)
            ));
        }
        // Timestamps from the simulated clock, not the wall clock: they are in the frames, so
        // they change compressed sizes, and with them chunk sizes and the shipping window. With
        // the wall clock a seed did not replay the run it named.
        let ts = self.now_ms;
        let records: Vec<Record<'_>> = values.iter().map(|v| Record::new(v, ts)).collect();
        let offsets = log
            .append_records(&records, AppendOptions::default())
            .and_then(|appended| appended.wait(Durability::None))
            .map_err(|e| format!("leader {id} append: {e}"))?;
        for (offset, value) in offsets.clone().zip(values) {
            // The leader the controller names holds every committed record, so it appends
            // past them. (One of an earlier epoch may write anywhere: none of it commits.)
            if let Some(committed) = self.committed.get(&offset).filter(|_| id == self.register.leader) {
                return Err(format!(
                    "node {id} (epoch {epoch}) wrote offset {offset} over a committed record of epoch {}",
                    committed.0
                ));
            }
            self.written.entry(offset).or_default().push((epoch, value.clone()));
        }
        Ok((offsets, epoch))
    }

    fn client_append(&mut self) -> Result<(), String> {
        let id = self.leader_id();
        let node = &self.nodes[id as usize];
        if !node.up() || node.leader_core().is_none() {
            return Ok(());
        }
        // An `i32`, as it always was: another type draws differently, and seeds would no
        // longer replay the runs they named.
        let count: i32 = self.rng.gen_range(1..4);
        let values = self.values(self.sent.len() as u64, count);
        let (offsets, epoch) = self.append_at(id, &values)?;
        if offsets.start != self.sent.len() as u64 {
            return Err(format!("leader gave offsets {offsets:?} with {} sent", self.sent.len()));
        }
        self.sent.extend(values.into_iter().map(|v| (epoch, v)));
        self.leader_input(LeaderInput::Written { end: offsets.end })
    }

    /// A client that has not heard of the election appends to node `id`, which still leads an
    /// earlier epoch. Nothing of it may be committed once the controller fenced a quorum.
    fn zombie_append(&mut self, id: NodeId) -> Result<(), String> {
        let log = self.nodes[id as usize].log.clone().ok_or("leader has no log")?;
        let count: i32 = self.rng.gen_range(1..4);
        let values = self.values(log.written_end(), count);
        let (offsets, _) = self.append_at(id, &values)?;
        self.faults_injected.zombie_appends += values.len() as u64;
        self.leader_input_at(id, LeaderInput::Written { end: offsets.end })
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

    /// Delivers the next message, in time order; what is sent to a paused node waits for it.
    fn deliver_next(&mut self) -> Result<(), String> {
        let nodes = &self.nodes;
        let Some(i) = (0..self.network.len())
            .filter(|i| nodes[self.network[*i].to as usize].paused_until_ms.is_none())
            .min_by_key(|i| (self.network[*i].deliver_at_ms, self.network[*i].seq))
        else {
            return Ok(());
        };
        let m = self.network.swap_remove(i);
        self.now_ms = self.now_ms.max(m.deliver_at_ms);
        let link = (m.from.min(m.to), m.from.max(m.to));
        let (sender, recipient) = (&self.nodes[m.from as usize], &self.nodes[m.to as usize]);
        let isolated = sender.isolated_until_ms.is_some() || recipient.isolated_until_ms.is_some();
        if self.cut.contains(&link) || isolated || recipient.dead || recipient.log.is_none() {
            return Ok(());
        }
        let bytes = Bytes::from(m.bytes);
        // A damaged message must be refused by the codec, never taken for another one.
        let msg = match codec::decode(&bytes) {
            Ok(Some((msg, used))) if used == bytes.len() => msg,
            _ => return Ok(()),
        };
        if recipient.leader_core().is_some() {
            self.leader_input_at(m.to, LeaderInput::Received { peer: m.from, msg })
        } else {
            self.follower_input(m.to, FollowerInput::Received { from: m.from, msg })
        }
    }

    /// Feeds the core of the leader the controller names (nothing if it does not lead).
    fn leader_input(&mut self, input: LeaderInput) -> Result<(), String> {
        let id = self.leader_id();
        self.leader_input_at(id, input)
    }

    /// Feeds leader `id`'s core and carries out its actions.
    fn leader_input_at(&mut self, id: NodeId, input: LeaderInput) -> Result<(), String> {
        let Some(leader) = self.leader_at(id) else { return Ok(()) };
        leader.handle(input);
        let mut deposed = false;
        while let Some(action) = self.leader_at(id).and_then(Leader::poll_action) {
            match action {
                LeaderAction::Ship { peer, from, bytes_max, commit_end } => {
                    let log = self.nodes[id as usize].log.clone().ok_or("leader has no log")?;
                    // The driver's own chunk builder: the simulator ships exactly what TCP ships.
                    let chunk = crate::driver::read_chunk(&log, from, bytes_max, &crate::codec::Compression::default())
                        .map_err(|e| format!("ship read: {e}"))?;
                    let leader = self.leader_at(id).ok_or("not a leader")?;
                    let Some(chunk) = chunk else {
                        leader.handle(LeaderInput::NotShipped { peer });
                        continue;
                    };
                    // A chunk is read in whole batches: one asked from inside a batch starts
                    // before where it was asked from, its `Shipped` does not move the leader
                    // on, and the same chunk would be asked for again forever.
                    if chunk.base_offset != from {
                        return Err(format!(
                            "leader {id} ships to node {peer} from {from}, inside its batch {}..",
                            chunk.base_offset
                        ));
                    }
                    let (base, end) = (chunk.base_offset, chunk.end_offset);
                    let len_bytes = chunk.bytes.len() as u64;
                    let epoch = leader.epoch();
                    let msg = Message::Append { log: LOG.into(), epoch, commit_end, chunk };
                    self.send(id, peer, &msg);
                    let leader = self.leader_at(id).ok_or("not a leader")?;
                    leader.handle(LeaderInput::Shipped { peer, base_offset: base, end_offset: end, len_bytes });
                }
                LeaderAction::Send { peer, msg } => self.send(id, peer, &msg),
                LeaderAction::Committed { commit_end } => self.committed_by(id, commit_end)?,
                LeaderAction::Deposed { epoch } => {
                    if id == self.leader_id() {
                        return Err(format!("node {id}, which the controller names, was deposed by epoch {epoch}"));
                    }
                    deposed = true;
                }
                LeaderAction::LacksRecords { peer, from, to, .. } => {
                    return Err(format!("leader {id} lacks records {from}..{to} that node {peer} holds"));
                }
            }
        }
        if deposed {
            // It learned from a follower that a later leader took over: it stops leading, and
            // is started as a follower.
            self.demote(id)?;
        }
        Ok(())
    }

    /// Leader `id` announced `commit_end`: the records below it are committed. They must be
    /// the records any earlier leader committed at those offsets, and they must be in the log
    /// of the leader the controller names, whoever announced them.
    fn committed_by(&mut self, id: NodeId, commit_end: u64) -> Result<(), String> {
        let from = self.nodes[id as usize].leader_commit;
        if commit_end < from {
            return Err(format!("leader {id}: commit went back from {from} to {commit_end}"));
        }
        let records: Vec<(u64, Rec)> = if id == self.leader_id() {
            let sent = self.sent.get(from as usize..commit_end as usize).ok_or_else(|| {
                format!("leader {id} committed {from}..{commit_end} of the {} records it holds", self.sent.len())
            })?;
            (from..).zip(sent.iter().cloned()).collect()
        } else {
            // A leader of an earlier epoch: its own log says what it committed (what its
            // retention deleted was committed before).
            let log = self.nodes[id as usize].log.clone().ok_or("leader has no log")?;
            let from = from.max(log.start_offset());
            records_from(&log, from)?.into_iter().take_while(|(offset, _)| *offset < commit_end).collect()
        };
        for (offset, record) in records {
            if let Some(before) = self.committed.insert(offset, record.clone()).filter(|before| *before != record) {
                return Err(format!(
                    "offset {offset}: committed in epoch {}, then a record of epoch {} by node {id}",
                    before.0, record.0
                ));
            }
            if id != self.leader_id() && self.sent.get(offset as usize) != Some(&record) {
                return Err(format!(
                    "node {id} committed offset {offset} (epoch {}), which the leader of epoch {} does not hold",
                    record.0, self.register.epoch
                ));
            }
        }
        self.nodes[id as usize].leader_commit = commit_end;
        self.max_commit = self.max_commit.max(commit_end);
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
        if self.nodes[id as usize].reopen_due || !self.nodes[id as usize].is_follower() {
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
                FollowerAction::Truncate { to } => self.cut_to_quarantine(id, &log, to)?,
                FollowerAction::Reset { start_offset } => {
                    if !self.config.reseed {
                        return Err(format!("follower {id} re-seeded at {start_offset} with re-seeding off"));
                    }
                    // A re-seed never skips a record the leader still holds: what this log
                    // lacks below `start_offset` is gone from the leader's.
                    let sender = self.follower(id).leader().ok_or("a re-seed without a leader")?;
                    let sender = &self.nodes[sender as usize];
                    let leader_start = sender.log.as_ref().map_or(sender.start_at_death, Log::start_offset);
                    let end = log.written_end();
                    if end >= start_offset || start_offset > leader_start {
                        return Err(format!(
                            "follower {id} at {end} re-seeded at {start_offset}; its leader's log starts at \
                             {leader_start}"
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
                    if self.register.issued.get(&epoch) != Some(&leader) {
                        return Err(format!(
                            "follower {id} takes node {leader} as the leader of epoch {epoch}, issued to {:?}",
                            self.register.issued.get(&epoch)
                        ));
                    }
                    node.recorded_leader = Some((epoch, leader));
                    self.follower(id).handle(FollowerInput::LeaderRecorded { epoch, leader });
                }
            }
        }
        Ok(())
    }

    /// Carries out a cut the follower core of node `id` asked for, as the driver does
    /// (`truncate_suffix_to_quarantine`), and checks it: no committed record is cut, and every
    /// record cut is in the quarantine file, with its epoch and bytes, in order.
    fn cut_to_quarantine(&mut self, id: NodeId, log: &Log, to: u64) -> Result<(), String> {
        let start = log.start_offset();
        if to < start {
            return Err(format!(
                "follower {id} told to cut back to {to}, below its log's start {start}: its own retention deleted \
                 records that diverged from the leader's"
            ));
        }
        let cut = if to < log.written_end() { records_from(log, to)? } else { Vec::new() };
        if let Some((offset, (epoch, _))) =
            cut.iter().find(|(offset, record)| self.committed.get(offset) == Some(record))
        {
            return Err(format!(
                "follower {id} told to cut back to {to}, which cuts committed record {offset} (epoch {epoch})"
            ));
        }
        let kept = log.truncate_suffix_to_quarantine(to).map_err(|e| format!("follower {id} truncate to {to}: {e}"))?;
        let mut quarantined = Vec::with_capacity(cut.len());
        if let Some(path) = &kept {
            let disk = &self.nodes[id as usize].disk;
            let bytes = tern_segment::disk::read_small_file(disk, path, QUARANTINE_BYTES_MAX)
                .map_err(|e| format!("follower {id}: quarantine file {}: {e}", path.display()))?;
            let mut rest: &[u8] = &bytes;
            while !rest.is_empty() {
                let frame = tern_segment::frame::decode(rest)
                    .map_err(|e| format!("follower {id}: quarantine file {}: {e}", path.display()))?
                    .ok_or_else(|| format!("follower {id}: quarantine file {} ends early", path.display()))?;
                let epoch = frame.header.epoch;
                quarantined.extend(frame.records().map(|r| (r.offset, (epoch, r.value.to_vec()))));
                rest = rest.get(frame.frame_len..).unwrap_or_default();
            }
        }
        if quarantined != cut {
            let offsets = |records: &[(u64, Rec)]| records.iter().map(|(o, (e, _))| (*o, *e)).collect::<Vec<_>>();
            return Err(format!(
                "follower {id} cut {:?} (offset, epoch) to {to}; its quarantine file {kept:?} holds {:?}",
                offsets(&cut),
                offsets(&quarantined)
            ));
        }
        self.faults_injected.records_cut += cut.len() as u64;
        self.faults_injected.quarantined += quarantined.len() as u64;
        let node = &mut self.nodes[id as usize];
        node.durable_floor = node.durable_floor.min(to);
        node.checked_end = node.checked_end.min(to);
        let input =
            FollowerInput::Truncated { written_end: log.written_end(), last_epoch: crate::driver::ack_last_epoch(log) };
        self.follower(id).handle(input);
        Ok(())
    }

    /// Runs the sync follower `id`'s core asked for, if it did.
    fn follower_sync(&mut self, id: NodeId) -> Result<(), String> {
        let node = &self.nodes[id as usize];
        if node.reopen_due
            || !node.is_follower()
            || !node.up()
            || !std::mem::take(&mut self.nodes[id as usize].sync_due)
        {
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
        let node = &self.nodes[id as usize];
        if !node.is_follower() || !node.up() {
            return Ok(());
        }
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
    /// log holds, the leader it recorded and its fence, and new connections.
    fn restart_follower(&mut self, id: NodeId, log: Log) -> Result<(), String> {
        let node = &mut self.nodes[id as usize];
        let (written, durable) = (log.written_end(), log.durable_end());
        if written < node.durable_floor {
            return Err(format!("follower {id} lost durable records: {written} < {}", node.durable_floor));
        }
        node.checked_end = node.checked_end.min(written);
        node.durable_floor = node.durable_floor.max(durable);
        node.role = Role::Follower(follower_core(&log, node.recorded_leader, node.fence_epoch));
        node.log = Some(log);
        self.network.retain(|m| m.to != id && m.from != id);
        self.reconnect(id, written, durable)
    }

    /// An operator removes follower `id`'s copy of the log (as PROTOCOL.md recommends for a
    /// copy that cannot be mended): it restarts with an empty log and reconnects, and must be
    /// refilled from the leader.
    pub fn wipe_follower(&mut self, id: NodeId) -> Result<(), String> {
        if id == self.leader_id() || id as usize >= self.nodes.len() {
            return Err("no such follower".into());
        }
        let node = &mut self.nodes[id as usize];
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
        follower.fence(node.fence_epoch);
        node.role = Role::Follower(follower);
        self.network.retain(|m| m.to != id && m.from != id);
        self.reconnect(id, 0, 0)
    }

    /// Power loss on the leader: its unsynced records are lost (the last write torn); it
    /// recovers, and leads the next epoch, which the controller issues it; its followers
    /// reconnect. Nothing committed may be lost: a commit needs the leader's own sync.
    /// Followers holding records it lost are cut back.
    fn crash_leader(&mut self) -> Result<(), String> {
        let id = self.leader_id();
        let node = &self.nodes[id as usize];
        if !node.up() || node.leader_core().is_none() || self.pending_election.is_some() {
            return Ok(());
        }
        let tear = self.random_tear();
        self.faults_injected.leader_crashes += 1;
        let node = &mut self.nodes[id as usize];
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
        self.sent.truncate(written as usize);
        node.durable_floor = node.durable_floor.max(durable);
        let expected = self.register.epoch;
        let epoch = self.register.elect(expected, id).map_err(|(leader, epoch)| {
            format!("the restarted leader's compare-and-set from epoch {expected} failed: node {leader} leads {epoch}")
        })?;
        let peers = self.others();
        // As the driver's: the commit point starts from nothing and is what the replication
        // slots, saved a while before the power loss, give back; the first acks raise it.
        let mut leader = leader_core(&log, epoch, &peers, &self.config, 0)?;
        let node = &mut self.nodes[id as usize];
        for (peer, (durable_end, slot_epoch)) in &node.slots {
            leader.restore_peer(*peer, *durable_end, *slot_epoch);
        }
        node.role = Role::Leader(leader);
        node.log = Some(log);
        node.leader_commit = 0;
        // What the old leader already sent may still arrive (and leave a follower holding
        // records this one lost); what was on its way to it is gone.
        self.network.retain(|m| m.to != id);
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
        // The log `sent` describes: the leader's (as long as the controller's latest choice
        // could lead).
        let leader_id = self.sent_of;
        let leader = &self.nodes[leader_id as usize];
        let leads = leader_id == self.register.leader;
        if let (Some(log), Some(core), false, true) = (leader.log.as_ref(), leader.leader_core(), leader.dead, leads) {
            if log.written_end() != self.sent.len() as u64 {
                return Err(format!(
                    "the leader's log lost records: it ends at {}, {} sent",
                    log.written_end(),
                    self.sent.len()
                ));
            }
            if core.commit_end() != leader.leader_commit {
                return Err(format!(
                    "commit point {} disagrees with the last announced {}",
                    core.commit_end(),
                    leader.leader_commit
                ));
            }
        }
        // Every epoch is issued once, to one node, and only that node leads it.
        for node in self.nodes.iter().filter(|n| !n.dead) {
            if let Some(core) = node.leader_core() {
                let epoch = core.epoch();
                if self.register.issued.get(&epoch) != Some(&node.id) {
                    return Err(format!(
                        "node {} leads epoch {epoch}, which the controller issued to {:?}",
                        node.id,
                        self.register.issued.get(&epoch)
                    ));
                }
            }
        }
        // Every other log holds, at each offset, the leader's record, or one that some leader
        // wrote there and lost (in a power loss, or with its election), until it is cut back.
        // Check what is new; `checked_end` only grows over records that are the leader's.
        for i in 0..self.nodes.len() {
            if i as u64 == leader_id {
                continue;
            }
            let Some(log) = self.nodes[i].log.clone() else { continue };
            let (start, end) = (log.start_offset(), log.written_end());
            // Retention (a leader's, or a follower's held at the commit point it learned) and
            // re-seeds never remove a record that was not committed: what a log no longer
            // holds below its start agreed with every leader's.
            if start > self.max_commit {
                return Err(format!("node {i} starts at {start}, past every commit point ({})", self.max_commit));
            }
            self.nodes[i].checked_end = self.nodes[i].checked_end.max(start);
            let from = self.nodes[i].checked_end;
            if end > from {
                let mut matched = true;
                for (offset, record) in records_from(&log, from).map_err(|e| format!("node {i}: {e}"))? {
                    if self.sent.get(offset as usize) == Some(&record) {
                        if matched {
                            self.nodes[i].checked_end = offset + 1;
                        }
                        continue;
                    }
                    matched = false;
                    if !self.written.get(&offset).is_some_and(|records| records.contains(&record)) {
                        return Err(format!(
                            "node {i} offset {offset} holds a record of epoch {} no leader wrote there",
                            record.0
                        ));
                    }
                }
            }
        }
        // A follower calls committed only records that are the leader's, and no more than the
        // leader committed: its readers see nothing else. Its core knows its log's epoch
        // history as the log keeps it: the divergence check cuts by it.
        for node in self.nodes.iter().filter(|n| n.id != leader_id) {
            let Role::Follower(follower) = &node.role else { continue };
            let told = follower.commit_end();
            if told > self.max_commit || told > node.checked_end {
                return Err(format!(
                    "follower {} reads up to {told} as committed; leader commit {}, its log is the leader's up to {}",
                    node.id, self.max_commit, node.checked_end
                ));
            }
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
        }
        // Committed records are durable on a quorum: the leader's log, and other logs that are
        // the leader's up to the commit point (a node gone for good counts with what its disk
        // kept).
        let quorum = self.config.quorum.size(self.config.nodes);
        // Every commit point any leader announced, not only the current one's.
        let commit = self.max_commit.max(self.commit_end());
        let holders = self
            .nodes
            .iter()
            .filter(|n| {
                let durable = n.log.as_ref().map_or(0, Log::durable_end).max(n.durable_floor);
                let agrees = if n.id == leader_id { u64::MAX } else { n.checked_end };
                durable.min(agrees) >= commit
            })
            .count();
        if holders < quorum {
            return Err(format!(
                "commit {commit} is durable on {holders} nodes, fewer than {quorum}; {}",
                self.describe()
            ));
        }
        Ok(())
    }

    /// The nodes' states, for a failure's message: role and epoch, written and durable ends,
    /// how far each log was found to be the leader's, and faults in force.
    fn describe(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                let role = match &n.role {
                    Role::Leader(l) => format!("leader of {}", l.epoch()),
                    Role::Follower(f) => format!("follower of {} checked {}", f.epoch(), f.checked_epoch()),
                };
                let ends = n.log.as_ref().map(|l| (l.start_offset(), l.written_end(), l.durable_end()));
                let state = [
                    (n.dead, " dead"),
                    (n.paused_until_ms.is_some(), " paused"),
                    (n.isolated_until_ms.is_some(), " isolated"),
                    (n.unseen_until_ms.is_some(), " unseen by the controller"),
                ];
                let state: String = state.iter().filter(|(on, _)| *on).map(|(_, s)| *s).collect();
                let (id, floor, agrees) = (n.id, n.durable_floor, n.checked_end);
                format!(
                    "node {id}: {role}, (start, written, durable) {ends:?}, durable floor {floor}, the leader's up \
                     to {agrees}{state}"
                )
            })
            .collect();
        format!(
            "the controller names node {} for epoch {}; {} records sent; {}",
            self.register.leader,
            self.register.epoch,
            self.sent.len(),
            nodes.join("; ")
        )
    }

    /// Stops every fault, heals every link, resumes paused nodes, lets the controller replace a
    /// leader that is gone and finish an election it began, starts every node still leading an
    /// earlier epoch as a follower, and runs until every live node has caught up.
    fn heal(&mut self) -> Result<(), String> {
        self.faults = false;
        self.cut.clear();
        let now_ms = self.now_ms;
        for id in 0..self.config.nodes as u64 {
            let node = &mut self.nodes[id as usize];
            node.isolated_until_ms = None;
            node.unseen_until_ms = None;
            if node.paused_until_ms.take().is_some() && node.leader_core().is_some() && !node.dead {
                self.leader_input_at(id, LeaderInput::Tick { now_ms })?;
            }
        }
        for _ in 0..10 {
            let leader = &self.nodes[self.leader_id() as usize];
            if leader.up() && leader.leader_core().is_some() && self.pending_election.is_none() {
                break;
            }
            // The controller needs reports: fenced follower logs are reopened first.
            for id in 0..self.config.nodes as u64 {
                if self.nodes[id as usize].reopen_due && !self.nodes[id as usize].dead {
                    self.reopen(id)?;
                }
            }
            self.failover()?;
        }
        let leader = &self.nodes[self.leader_id() as usize];
        if !leader.up() || leader.leader_core().is_none() {
            return Err(format!("no leader after healing: the controller names node {}", leader.id));
        }
        for id in self.zombies() {
            self.demote(id)?;
        }
        // A leader elected or restarted since the last append holds only records of earlier
        // epochs, and commits those only once a record of its own epoch is on a quorum, or once
        // every node holds them (`proto::quorum_commit_end`); a follower stopped at a data loss
        // never will. A client appends one, as it would to a live log.
        if self.leader().epoch_start() >= self.sent.len() as u64 {
            self.client_append()?;
        }
        let leader_id = self.leader_id();
        self.leader_sync(leader_id)?;
        let target = self.sent.len() as u64;
        let quorum = self.config.quorum.size(self.config.nodes);
        for _ in 0..100_000 {
            // A follower told of a data loss stays where it was told it (never moved past it);
            // the commit point then reaches the end only if the others still make a quorum.
            let followers: Vec<&Node> = self.nodes.iter().filter(|n| n.id != leader_id && !n.dead).collect();
            let lost: Vec<bool> = followers.iter().map(|n| self.data_loss(n).is_some()).collect();
            // Caught up: its log ends where the leader's does, all of it synced, and all of it
            // found to be the leader's (a log of the same length may hold other records).
            let caught_up = followers.iter().zip(&lost).all(|(n, lost)| {
                *lost
                    || n.checked_end >= target
                        && n.log.as_ref().is_some_and(|l| l.durable_end() == target && l.written_end() == target)
            });
            let live = 1 + lost.iter().filter(|l| !**l).count();
            let committed = self.commit_end() == target || live < quorum;
            if caught_up && committed {
                return Ok(());
            }
            for id in self.others() {
                if self.nodes[id as usize].reopen_due && !self.nodes[id as usize].dead {
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
            "no convergence after healing: leader {leader_id} ends at {target}, commit {}, nodes (start, written, \
             durable) {ends:?}",
            self.commit_end()
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
        let commit = self.max_commit.max(self.commit_end());
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

    /// Whether `log` holds the committed records up to `commit` (from its own start).
    fn holds_committed(&self, log: &Log, commit: u64) -> Result<bool, String> {
        if log.written_end() < commit {
            return Ok(false);
        }
        for record in log.read(log.start_offset(), Visibility::Written).map_err(|e| e.to_string())? {
            let record = record.map_err(|e| e.to_string())?;
            if record.offset >= commit {
                break;
            }
            let held = (record.epoch, record.value.to_vec());
            if self.committed.get(&record.offset) != Some(&held) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn check_converged(&mut self) -> Result<(), String> {
        self.check()?;
        self.check_crash_images()?;
        let leader_id = self.leader_id();
        let leader = self.nodes[leader_id as usize].log.clone().ok_or("leader has no log")?;
        // Retention may have deleted the leader's first records; from its start on, every log
        // must hold the same.
        let start = leader.start_offset();
        let want: Vec<Rec> = records_from(&leader, start)?.into_iter().map(|(_, record)| record).collect();
        for node in self.nodes.iter().filter(|n| n.id != leader_id && !n.dead) {
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
            let mut got = Vec::new();
            for record in log.read(from, Visibility::Durable).map_err(|e| e.to_string())? {
                let record = record.map_err(|e| e.to_string())?;
                got.push((record.epoch, record.value.to_vec()));
            }
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
        self.commit_end()
    }

    /// Followers that were told of a data loss and stopped there.
    pub fn data_losses(&self) -> u64 {
        self.nodes.iter().filter(|n| self.data_loss(n).is_some()).count() as u64
    }

    /// The faults injected so far.
    pub fn faults(&self) -> Faults {
        self.faults_injected
    }

    /// The controller: who leads which epoch.
    pub fn register(&self) -> &Register {
        &self.register
    }
}
