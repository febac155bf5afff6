//! The real driver: the protocol core ([`crate::proto`]) over threads, `std::net` TCP and the
//! real logs. One [`Server`] per node: a leader ships every log to its followers and serves
//! client appends; a follower applies what its leader ships and refuses client appends, naming
//! the node it follows and the address that node connected from. Both serve committed reads
//! and status.
//!
//! Connections: the leader dials each follower (reconnecting with backoff), sends `Hello`, and
//! expects `Welcome` within the handshake timeout, then `Ack`s that say where each of the
//! follower's logs ends. A connection that sends a frame over the size limit, a damaged frame,
//! a wrong cluster id or no handshake in time is closed with a logged reason; the node goes on.
//! A leader also closes, and dials again, a follower connection that delivers no whole message
//! for `PEER_SILENCE_MAX`, 3 s (a stream out of step after lost bytes can look like that).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_wal::{Log, Visibility};

use crate::codec::{self, Compression};
use crate::message::{
    Acks, Chunk, Message, NodeId, CLIENT_READ_WAIT_MS_MAX, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN,
};
use crate::node_state::{NodeState, NODE_STATE_FILE};
use crate::producers::Producers;
use crate::proto::{
    Follower, FollowerAction, FollowerInput, Leader, LeaderAction, LeaderConfig, LeaderInput, PeerView, Quorum,
};
use crate::slots::{Slot, SlotState, Slots, SLOTS_FILE};

mod budget;
mod clients;
mod follower;
mod leader;
mod producer;
use budget::{FrameBudget, Reader, Reservation};
pub use budget::{FRAME_MEMORY_MAX_DEFAULT, FRAME_MEMORY_MIN, SMALL_FRAME_BYTES};
use clients::{ClientConn, ClientLoop, Counted};
use follower::follow;
pub(crate) use follower::{ack_last_epoch, applied_input};
pub use leader::read_chunk;
use leader::{dial_loop, leader_sync_loop, Outbox, Outgoing};
pub use producer::{
    random_producer_id, Acked, GaveUp, InDoubt, Producer, ProducerConfig, PRODUCER_BATCHES_IN_FLIGHT_MAX,
};

/// A replication failure a node reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The leader no longer holds records `from..to` of `log` that this follower needs (its
    /// retention deleted them) and re-seeding is off: the follower stops at `from` rather
    /// than skip them.
    #[error("log {log}: records {from}..{to} are gone from the leader; this follower stops at {from}")]
    DataLoss {
        /// The log.
        log: String,
        /// The first record the follower cannot get (its end).
        from: u64,
        /// The leader's log start.
        to: u64,
    },
}

/// Where the driver finds logs by name (the engine implements it).
pub trait Logs: Send + Sync + 'static {
    /// Opens the log `name`, creating it when missing.
    ///
    /// # Errors
    /// A one-line reason.
    fn open(&self, name: &str) -> Result<Log, String>;
    /// Names of the logs stored.
    fn names(&self) -> Vec<String>;
    /// Where the node keeps its replication slots (what each follower acknowledged, kept
    /// across restarts), and the disk layer to reach it. `None` (the default) keeps nothing.
    fn state_dir(&self) -> Option<(Arc<dyn tern_segment::Disk>, std::path::PathBuf)> {
        None
    }
    /// Opens the log `name` again from its files, after its handle was fenced by a failed
    /// write or sync, keeping nothing past `durable_end`, what the fenced handle knew to be
    /// durable (after a failed fsync, reads may still return pages the kernel dropped). The
    /// default opens it as [`Logs::open`] does and cuts it there (an implementation that
    /// caches handles must drop the fenced one first).
    ///
    /// # Errors
    /// A one-line reason.
    fn reopen(&self, name: &str, durable_end: u64) -> Result<Log, String> {
        let log = self.open(name)?;
        if log.written_end() > durable_end && durable_end >= log.start_offset() {
            log.truncate_suffix(durable_end).map_err(|e| e.to_string())?;
        }
        Ok(log)
    }
    /// More for the node's status document, under `"cluster"` (a node run by a controller
    /// adds the controller's view). The default adds nothing.
    fn status_extra(&self) -> Option<serde_json::Value> {
        None
    }
    /// Applies the node's retention to `log` (deleting whole segments from its front, never
    /// past its retention hold). The default keeps everything.
    ///
    /// # Errors
    /// A one-line reason.
    fn apply_retention(&self, log: &Log) -> Result<(), String> {
        let _ = log;
        Ok(())
    }
}

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Takes client appends and ships to the followers.
    Leader,
    /// Applies what the leader ships.
    Follower,
}

/// How a node leads one log ([`Server::set_role`]): what [`ServerConfig`]'s `role`, `peers`,
/// `learners`, `quorum`, `leader_epoch` and `handing_over_to` say for every log of a node
/// whose role is per node.
#[derive(Debug, Clone)]
pub struct Lead {
    /// The epoch it leads in (see [`ServerConfig::leader_epoch`]).
    pub epoch: Option<u64>,
    /// The followers of this log.
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// Followers among `peers` being seeded: their copies count toward no quorum.
    pub learners: Vec<NodeId>,
    /// Copies that commit a record.
    pub quorum: Quorum,
    /// Refuse every append to this log from the start, naming this follower (a handover under
    /// way, see [`Server::hand_over_log`]).
    pub handing_over_to: Option<NodeId>,
}

/// Settings of a node.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Every node of a cluster has the same; connections from another cluster are refused.
    /// 0: the one kept in the node state file (`node.state`, FORMAT.md); a leader without one
    /// makes a random id at its first start, a follower without one takes the id of the first
    /// leader that reaches it. A non-zero id must match the kept one.
    pub cluster_id: u64,
    /// This node.
    pub node_id: NodeId,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Leader or follower.
    pub role: Role,
    /// The followers (for a leader).
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// Followers among `peers` being seeded (for a leader): shipped to, but their copies count
    /// toward no quorum ([`LeaderConfig::learners`]).
    pub learners: Vec<NodeId>,
    /// Copies that commit a record.
    pub quorum: Quorum,
    /// Most client connections served at once. Peers (a leader dialing this node) have
    /// [`PEER_CONNECTIONS_MAX`] places of their own, so clients never keep them out.
    pub connections_max: usize,
    /// Time a new connection has to send its whole first message (a peer's handshake, or a
    /// client's first request), however it trickles in.
    pub handshake_timeout: Duration,
    /// A client connection that sent nothing for this long and waits for no reply is closed.
    pub client_idle_timeout: Duration,
    /// How long a quorum append waits for its commit before failing.
    pub commit_timeout: Duration,
    /// How a leader compresses what it ships.
    pub compression: Compression,
    /// A follower whose acknowledged durable end is more than this many bytes behind stops
    /// holding back retention: the segments it still needs may be deleted, and it is then
    /// re-seeded (or told of the data loss). `None` holds them for as long as it takes.
    pub slot_lag_bytes_max: Option<u64>,
    /// Producer backpressure: while more than this many bytes of a log are not yet on a
    /// quorum, appends to it wait for the quorum (and are refused after `commit_timeout`).
    /// `None` never holds producers back.
    pub quorum_lag_bytes_max: Option<u64>,
    /// Re-seed a follower that needs records this leader no longer holds (replace its log by
    /// a full copy of what is retained here, reported in status and metrics), or, when false,
    /// send it a data loss it stops at (see [`Server::data_losses`]).
    pub reseed: bool,
    /// Most bytes of frames being received at once, across all connections (frames of up to
    /// [`SMALL_FRAME_BYTES`] are not counted). A larger frame holds its whole length while it
    /// arrives; one that does not fit waits, and a connection's first message gives up at
    /// `handshake_timeout`. [`codec::FRAME_BYTES_MAX`] of it is kept for peers. At least
    /// [`FRAME_MEMORY_MIN`]; default [`FRAME_MEMORY_MAX_DEFAULT`].
    pub frame_memory_max: usize,
    /// Leader: the epoch the controller issued this node's leadership (every log begins it,
    /// so every epoch names one leader cluster-wide). `None`: each start of a leader begins
    /// epoch `last + 1` of each log, as a leader chosen by configuration does. A log already at
    /// this epoch or later is not led (its start fails): another leader took it.
    pub leader_epoch: Option<u64>,
    /// Leader: start handing over to this follower (see [`Server::hand_over`]): every client
    /// append is refused, naming it, from the first connection on. A leader restarted in the
    /// middle of a planned handover starts this way, so that nothing is written between its
    /// start and its next look at the handover.
    pub handing_over_to: Option<NodeId>,
}

/// One log of the node: the log itself, outside any lock (appends and syncs take none of the
/// node's), and its protocol core behind the log's own lock, so that logs never wait for each
/// other.
struct LogSlot {
    name: String,
    log: Log,
    /// How this node leads the log (`None`: it follows). A change of role replaces the slot.
    lead: Option<Lead>,
    /// The log has a role of its own ([`Server::set_role`]): what is said of every log of the
    /// node (its role, a handover of them all, a change of their replicas) is not said of it.
    own_role: bool,
    /// Set, between two writes, when the slot was replaced by one of another role: nothing
    /// more is written or shipped through it.
    retired: AtomicBool,
    core: Mutex<Core>,
    /// The chunks shipped last, newest at the back: a peer asking for a range another peer was
    /// just sent gets the same chunk, compressed once. Chunks are built under this lock, not
    /// the core's, so acks and appends go on while a large chunk is compressed.
    recent_chunks: Mutex<std::collections::VecDeque<Chunk>>,
    /// Leader: chunks read from the log and compressed (not those reused from `recent_chunks`).
    chunks_built: std::sync::atomic::AtomicU64,
    /// Signalled when the commit point moves (leader) or the core changes in a way a waiting
    /// client cares about.
    committed: Condvar,
    /// Follower counters.
    applied: Applied,
    /// Leader: the last batches of each idempotent producer, rebuilt from the log's tail at
    /// start ([`recover_producers`]). Checked and updated by the client loop, the only
    /// writer of idempotent batches, under this lock from the check to the record.
    producers: Mutex<Producers>,
    /// Leader: idempotent batches answered from `producers` without being written again.
    duplicate_batches: std::sync::atomic::AtomicU64,
}

struct Core {
    leader: Option<Leader>,
    follower: Option<Follower>,
    /// Leader: what was shipped to each peer.
    shipped: BTreeMap<NodeId, Shipped>,
    /// Leader: client appends waiting for their acks.
    waiters: Waiters,
    /// Leader: replies to waiters whose acks now hold, sent once the core is unlocked.
    replies: Vec<Reply>,
}

/// A client append waiting for its acks. Its connection's thread does not wait with it: the
/// reply is sent by whichever thread sees the acks hold (the leader's syncer for its own sync,
/// a follower connection's reader for the quorum), and the connection goes on reading.
struct Waiter {
    start: u64,
    end: u64,
    deadline: Instant,
    conn: Arc<ClientConn>,
    seq: u64,
}

/// The waiting appends of one log, each queue in order of end offset.
#[derive(Default)]
struct Waiters {
    /// Waiting for the leader's own sync ([`Acks::Leader`]).
    synced: std::collections::VecDeque<Waiter>,
    /// Waiting for the commit point ([`Acks::Quorum`]).
    committed: std::collections::VecDeque<Waiter>,
}

impl Waiters {
    fn add(&mut self, acks: Acks, waiter: Waiter) {
        let queue = if acks == Acks::Quorum { &mut self.committed } else { &mut self.synced };
        let at = queue.partition_point(|w| w.end <= waiter.end);
        queue.insert(at, waiter);
    }

    fn is_empty(&self) -> bool {
        self.synced.is_empty() && self.committed.is_empty()
    }
}

/// A reply for a client connection, in the place `seq` of its replies.
struct Reply {
    conn: Arc<ClientConn>,
    seq: u64,
    msg: Message,
}

fn deliver(replies: Vec<Reply>) {
    for reply in replies {
        reply.conn.fill(reply.seq, &reply.msg);
    }
}

/// What an append's acknowledgement says it achieved.
fn receipt(leader: Option<&Leader>, start: u64, end: u64, durability: Acks) -> Message {
    let copies = leader.map_or(0, |l| l.copies_durable(end));
    let nodes = leader.map_or(1, Leader::nodes);
    Message::ClientAppended {
        start,
        end,
        durability,
        copies: u8::try_from(copies).unwrap_or(u8::MAX),
        nodes: u8::try_from(nodes).unwrap_or(u8::MAX),
    }
}

/// Replies to the waiters whose acks hold: those at or below the commit point, and those
/// waiting for the leader's sync at or below its durable end (they say `Quorum` if the commit
/// point passed them too).
fn complete_waiters(core: &mut Core) {
    let Core { leader, waiters, replies, .. } = core;
    let Some(leader) = leader.as_ref() else { return };
    let (commit, durable_end) = (leader.commit_end(), leader.durable_end());
    while let Some(w) = waiters.committed.pop_front() {
        if w.end > commit {
            waiters.committed.push_front(w);
            break;
        }
        let msg = receipt(Some(leader), w.start, w.end, Acks::Quorum);
        replies.push(Reply { conn: w.conn, seq: w.seq, msg });
    }
    while let Some(w) = waiters.synced.pop_front() {
        if w.end > durable_end {
            waiters.synced.push_front(w);
            break;
        }
        let durability = if w.end <= commit { Acks::Quorum } else { Acks::Leader };
        let msg = receipt(Some(leader), w.start, w.end, durability);
        replies.push(Reply { conn: w.conn, seq: w.seq, msg });
    }
}

/// Refuses the waiters `expired` picks, saying how far each got.
fn refuse_waiters(core: &mut Core, durable_end: u64, mut expired: impl FnMut(&Waiter) -> bool, why: &str) {
    let Core { waiters, replies, .. } = core;
    for queue in [&mut waiters.synced, &mut waiters.committed] {
        let (gone, kept): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(queue).into_iter().partition(&mut expired);
        *queue = kept.into();
        for w in gone {
            let reason = if w.end <= durable_end {
                format!("offsets {}..{} are on the leader's disk {NOT_ON_QUORUM_REASON}{why}", w.start, w.end)
            } else {
                format!("offsets {}..{} {NOT_SYNCED_REASON}{why}", w.start, w.end)
            };
            replies.push(Reply { conn: w.conn, seq: w.seq, msg: Message::Refuse { reason } });
        }
    }
}

/// A cluster id nobody else has: 64 random bits from the standard library's per-process
/// random hash keys, never 0 (what a leader without one takes, and what a controller issues to
/// its cluster).
pub fn random_cluster_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

impl Shared {
    /// The cluster id: fixed at start, except on a follower that has none yet, which takes
    /// the first leader's.
    fn cluster_id(&self) -> u64 {
        self.node_state.lock().cluster_id
    }

    /// A follower without a cluster id takes `cluster_id`, durably; afterwards only nodes of
    /// that cluster are taken.
    fn join_cluster(&self, cluster_id: u64) -> Result<(), String> {
        let mut joined = false;
        self.update_node_state(|state| {
            if state.cluster_id == 0 {
                state.cluster_id = cluster_id;
                joined = true;
            }
        })?;
        let kept = self.cluster_id();
        if kept != cluster_id {
            return Err(format!("cluster id {cluster_id:#x} is not {kept:#x}"));
        }
        if joined {
            log_line(&format!("joined cluster {cluster_id:#x}"));
        }
        Ok(())
    }

    /// Follower: a log whose handle was fenced (a write or sync failed: its disk failed, or
    /// filled) is opened again from its files after a backoff (1 s, doubling to 30 s while it
    /// keeps failing): recovery cuts it back to what was durable, and the leader, told where
    /// it now ends, ships it the rest. The fault is logged each time.
    fn reopen_fenced_logs(&self) {
        // A leader's fenced log takes no appends until the node restarts (its written records
        // may be ahead of what is durable; reopening would cut them under its followers).
        for slot in self.all_slots() {
            if !slot.log.is_fenced() || slot.lead.is_some() {
                continue;
            }
            let name = slot.name.clone();
            {
                let mut backoff = self.reopen_backoff.lock();
                let (at, delay) = backoff.entry(name.clone()).or_insert_with(|| {
                    log_line(&format!("log {name}: its disk failed; it is reopened from its files in 1 s"));
                    (Instant::now() + Duration::from_secs(1), Duration::from_secs(1))
                });
                if Instant::now() < *at {
                    continue;
                }
                *delay = (*delay * 2).min(Duration::from_secs(30));
                *at = Instant::now() + *delay;
            }
            // Under the slots' lock, so that no connection opens a new slot on the fenced
            // handle meanwhile; `log_state` then finds the reopened handle.
            let reopened = {
                let mut slots = self.slots.lock();
                slots.remove(&name);
                self.logs.reopen(&name, slot.log.durable_end())
            }
            .and_then(|_| self.log_state(&name));
            match reopened {
                Ok(new) => {
                    self.reopen_backoff.lock().remove(&name);
                    let mut faults = self.disk_faults.lock();
                    let fault = faults.entry(name.clone()).or_default();
                    *fault = (fault.0 + 1, None);
                    log_line(&format!(
                        "log {name}: reopened after its disk failed; recovery kept {}..{}, the rest comes from the leader",
                        new.log.start_offset(),
                        new.log.written_end()
                    ));
                }
                Err(e) => {
                    // Served as before (fenced: it refuses writes) until the next attempt.
                    self.slots.lock().entry(name.clone()).or_insert(slot);
                    log_line(&format!("log {name}: cannot reopen it yet: {e}"));
                    self.disk_faults.lock().entry(name.clone()).or_default().1 = Some(e);
                }
            }
        }
    }

    /// Follower: takes `stream` as the connection of node `leader`. A node has one: while its
    /// earlier connection was heard from within [`PEER_SILENCE_MAX`], a second one claiming
    /// the same node is refused (a stranger using its id, or one machine counted twice); an
    /// earlier one silent for longer (half-open after a crash or a partition) is closed and
    /// replaced.
    fn admit_leader(self: &Arc<Self>, leader: NodeId, stream: &TcpStream) -> Result<AdmittedLeader, String> {
        let now = self.started.elapsed().as_millis() as u64;
        let mut conns = self.leader_conns.lock();
        if let Some(old) = conns.get(&leader) {
            let silent_ms = now.saturating_sub(old.heard.load(Ordering::Relaxed));
            if silent_ms < PEER_SILENCE_MAX.as_millis() as u64 {
                return Err(format!(
                    "node {leader} is connected to this node already (from {}, heard {silent_ms} ms ago); \
                     a second connection claiming it is refused",
                    old.from
                ));
            }
            let _ = old.closer.shutdown(Shutdown::Both);
            log_line(&format!("node {leader}: a new connection replaces one silent for {silent_ms} ms"));
        }
        let conn = LeaderConn {
            id: self.next_leader_conn.fetch_add(1, Ordering::Relaxed),
            heard: Arc::new(std::sync::atomic::AtomicU64::new(now)),
            from: stream.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
            closer: stream.try_clone().map_err(|e| e.to_string())?,
            writer: None,
        };
        let admitted = AdmittedLeader { shared: self.clone(), leader, id: conn.id, heard: conn.heard.clone() };
        conns.insert(leader, conn);
        Ok(admitted)
    }

    /// Records durably that `leader` leads `log` in `epoch` (a follower).
    fn record_leader(&self, log: &str, epoch: u64, leader: NodeId) -> Result<(), String> {
        self.update_node_state(|state| state.set_leader(log, epoch, leader))
    }

    /// Changes the node state, durably first: the one in memory changes only once the file
    /// holds the change.
    fn update_node_state(&self, change: impl FnOnce(&mut NodeState)) -> Result<(), String> {
        let mut state = self.node_state.lock();
        let mut next = state.clone();
        change(&mut next);
        if next == *state {
            return Ok(());
        }
        if let Some((disk, path)) = &self.node_state_file {
            next.store(&**disk, path).map_err(|e| e.to_string())?;
        }
        *state = next;
        Ok(())
    }

    /// Why a follower of `log` refuses an append to it: it names the leader of the log, when
    /// it has heard of one.
    fn follower_refusal(&self, log: &str) -> String {
        let me = self.config.node_id;
        let following = *self.following.lock();
        if let Some((epoch, leader)) = self.node_state.lock().leader(log) {
            let from = match following {
                Some((node, ip)) if node == leader => format!(" (which connected from {ip})"),
                _ => String::new(),
            };
            return format!(
                "{NOT_LEADER_PREFIX}node {me} is a follower of node {leader}{from} on log {log} (epoch {epoch}); append \
                 to node {leader}"
            );
        }
        match following {
            Some((leader, ip)) => format!(
                "{NOT_LEADER_PREFIX}node {me} is a follower of node {leader} (which connected from {ip}); append to \
                 node {leader}"
            ),
            None => format!(
                "{NOT_LEADER_PREFIX}node {me} is a follower and has not heard from its leader yet; append to the leader"
            ),
        }
    }
}

/// Places for peer connections besides [`ServerConfig::connections_max`] client ones: a new
/// connection is accepted while fewer than the sum are open, and a client one only while fewer
/// than `connections_max` clients are.
pub const PEER_CONNECTIONS_MAX: usize = 16;

/// A connection's place among the node's open connections; dropping it removes the entry,
/// which closes the descriptor once the connection's own handle is gone too.
pub(super) struct Registered {
    accepted: Arc<Mutex<BTreeMap<u64, TcpStream>>>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.accepted.lock().remove(&self.id);
    }
}

impl Shared {
    /// Lists the registered connection `registered` among those waiting for their first
    /// message, until the returned guard is dropped.
    fn await_first_message(&self, registered: &Registered) -> AwaitingFirst {
        self.pending.lock().push_back(registered.id);
        AwaitingFirst { pending: self.pending.clone(), id: registered.id }
    }

    /// Closes the connection that has waited longest for its first message, if there is one
    /// (through its registered handle: no descriptor of its own is kept for that).
    fn close_oldest_awaiting(&self) -> bool {
        let Some(oldest) = self.pending.lock().pop_front() else { return false };
        if let Some(stream) = self.accepted.lock().get(&oldest) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        true
    }

    /// Keeps a handle of `stream` where a stop can close it, until the result is dropped.
    fn register(&self, stream: &TcpStream) -> Option<Registered> {
        let clone = stream.try_clone().ok()?;
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        self.accepted.lock().insert(id, clone);
        Some(Registered { accepted: self.accepted.clone(), id })
    }
}

/// Why a leader stopped leading a log whose follower holds records it lost.
fn lacks_reason(log: &str, peer: NodeId, from: u64, to: u64, last_epoch: u64) -> String {
    format!(
        "refusing to lead log {log}: node {peer} holds records {from}..{to} (up to epoch {last_epoch}) that this \
         node's copy lacks; its disk was lost or replaced. Restore it, or start this node as a follower"
    )
}

/// Why a leader refuses appends to a log it stopped leading, if it did.
fn stop_reason(log: &str, node: NodeId, leader: &Leader) -> Option<String> {
    if let Some(epoch) = leader.deposed_by() {
        return Some(not_leader_reason(log, node, epoch));
    }
    leader.lacks_records().map(|(peer, from, to, last_epoch)| lacks_reason(log, peer, from, to, last_epoch))
}

fn leader_commit(core: &Core) -> u64 {
    core.leader.as_ref().map_or(0, Leader::commit_end)
}

/// What the reason of every refusal that means "this node does not take appends, another may"
/// holds (a follower's, or a leader's that a later epoch took over from, at the start or after
/// the offsets a batch was written at): a client moves on to the next node it knows
/// (PROTOCOL.md "Client messages").
pub const NOT_LEADER_PREFIX: &str = "not the leader: ";

/// Whether a refusal of an append says that sending the same batch again, here or to another
/// node, may succeed: this node does not lead the log ([`NOT_LEADER_PREFIX`]), it is stopping
/// or has no room for another connection now, or the batch is written but did not reach the
/// durability asked in time. Sent again with its producer id and sequence, such a batch is not
/// written twice. Any other refusal (a record too large, a bad log name, a sequence the leader
/// no longer remembers) fails the same way every time.
pub fn refusal_is_retriable(reason: &str) -> bool {
    reason.starts_with(MOVED_PREFIX)
        || reason.contains(NOT_LEADER_PREFIX)
        || reason.contains(STOPPING_REASON)
        || reason.contains(NOT_ON_QUORUM_REASON)
        || reason.contains(NOT_SYNCED_REASON)
        || reason.contains(QUORUM_LAG_REASON)
        || reason == TOO_MANY_CONNECTIONS_REASON
        || reason == TOO_MANY_CLIENTS_REASON
}

/// How a leader handing its logs over ([`Server::drain`]) refuses appends: nothing was
/// written; the node it names takes over, at the address after [`MOVED_ADDR`].
pub const MOVED_PREFIX: &str = "moved: ";

/// In a [`MOVED_PREFIX`] refusal, what comes before the new leader's address.
pub const MOVED_ADDR: &str = " at ";

/// The refusal of node `me`, leading as `lead` says, handing over to `target`.
fn moved_reason(me: NodeId, lead: Option<&Lead>, target: NodeId) -> io::Result<String> {
    let Some((_, addr)) = lead.and_then(|lead| lead.peers.iter().find(|(id, _)| *id == target)) else {
        return Err(io::Error::other(format!("node {target} is not a follower of this node")));
    };
    Ok(format!(
        "{MOVED_PREFIX}node {me} is handing its logs over to node {target}{MOVED_ADDR}{addr}; retry there (not written \
         here)"
    ))
}

/// Whether `target` has synced every record written to `slot`'s log, when this node leads it.
fn slot_caught_up(slot: &LogSlot, target: NodeId) -> bool {
    let core = slot.lock();
    let written = slot.log.written_end();
    core.leader.as_ref().is_none_or(|l| l.peer_state(target).is_some_and(|(_, durable, _)| durable >= written))
}

/// The address a [`MOVED_PREFIX`] refusal names, if any.
pub fn moved_to(reason: &str) -> Option<SocketAddr> {
    let rest = reason.strip_prefix(MOVED_PREFIX)?;
    let (_, after) = rest.split_once(MOVED_ADDR)?;
    after.split(';').next()?.trim().parse().ok()
}

/// The words of the refusals [`refusal_is_retriable`] looks for: one home for each.
const STOPPING_REASON: &str = "the node is stopping";
const NOT_ON_QUORUM_REASON: &str = "but not yet on a quorum";
const NOT_SYNCED_REASON: &str = "are not yet synced on the leader";
const QUORUM_LAG_REASON: &str = "bytes are not yet on a quorum (the bound is";
const TOO_MANY_CONNECTIONS_REASON: &str = "too many connections";
const TOO_MANY_CLIENTS_REASON: &str = "too many client connections";

/// Why a node refuses appends to a log it led until a peer showed a later epoch.
pub(crate) fn not_leader_reason(log: &str, node: NodeId, epoch: u64) -> String {
    format!("{NOT_LEADER_PREFIX}node {node} no longer leads log {log} (a leader of epoch {epoch} took over)")
}

/// What a leader shipped to one peer on one log.
#[derive(Debug, Clone, Copy, Default)]
struct Shipped {
    raw_bytes: u64,
    wire_bytes: u64,
    chunks: u64,
}

/// Follower counters of one log.
#[derive(Debug, Default)]
struct Applied {
    chunks: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
    syncs: std::sync::atomic::AtomicU64,
    /// Of those, the ones the connection's reader made itself (small amounts, syncer idle).
    inline_syncs: std::sync::atomic::AtomicU64,
    records_synced: std::sync::atomic::AtomicU64,
    records_cut: std::sync::atomic::AtomicU64,
    /// Cuts the leader asked for that failed (logged the first time, then every 600th).
    cuts_failed: std::sync::atomic::AtomicU64,
}

/// Chunks kept for reuse per log: one per peer at the same place is what counts.
const RECENT_CHUNKS_MAX: usize = 4;

impl LogSlot {
    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock()
    }

    fn commit_end(&self) -> u64 {
        let core = self.lock();
        match (&core.leader, &core.follower) {
            (Some(l), _) => l.commit_end(),
            (_, Some(f)) => f.commit_end(),
            _ => 0,
        }
    }
}

struct Shared {
    config: ServerConfig,
    logs: Arc<dyn Logs>,
    slots: Mutex<BTreeMap<String, Arc<LogSlot>>>,
    /// Leader: the outbox of each connected follower.
    peers: Mutex<BTreeMap<NodeId, Arc<Outbox>>>,
    stop: AtomicBool,
    /// Connection threads running. Each counts itself out only after it let go of the node,
    /// so once it is 0 at a stop, nothing but the `Server` holds the logs (and the engine's
    /// directory lock).
    connections: Arc<AtomicUsize>,
    started: Instant,
    /// Client connections open (the client loop's), against [`ServerConfig::connections_max`].
    clients_open: Arc<AtomicUsize>,
    /// Bytes of frames being received, against [`ServerConfig::frame_memory_max`].
    frames: Arc<FrameBudget>,
    /// Open connections, accepted or dialed, so that stopping closes them. Each is removed
    /// (and its descriptor closed) when its connection ends: see [`Registered`].
    accepted: Arc<Mutex<BTreeMap<u64, TcpStream>>>,
    /// Numbers the entries of `accepted`.
    next_connection: std::sync::atomic::AtomicU64,
    /// Accepted connections whose first message has not come yet, by their id in `accepted`,
    /// oldest first: over the connection cap, the oldest is closed to make room (see
    /// [`accept_loop`]).
    pending: Arc<Mutex<std::collections::VecDeque<u64>>>,
    /// Leader: what each follower acknowledged on each log, and where the file keeping it
    /// across restarts is.
    peer_slots: Mutex<Slots>,
    peer_slots_file: Option<(Arc<dyn tern_segment::Disk>, std::path::PathBuf)>,
    /// Leader: the logs with appends waiting for a local sync, for the syncer thread.
    syncs: SyncQueue,
    /// The client connections, served by one thread.
    clients: ClientLoop,
    /// Follower: the node it follows now and the address that node connected from, for the
    /// refusal of client appends.
    following: Mutex<Option<(NodeId, std::net::IpAddr)>>,
    /// The cluster id and, on a follower, whom each log follows in which epoch; kept in
    /// `node_state_file` when the node has a state directory.
    node_state: Mutex<NodeState>,
    node_state_file: Option<(Arc<dyn tern_segment::Disk>, std::path::PathBuf)>,
    /// Leader: the (log, follower) pairs retention no longer waits for (beyond the slot lag
    /// bound), so that letting one go is logged once.
    let_go: Mutex<std::collections::BTreeSet<(String, NodeId)>>,
    /// Follower: fenced logs waiting to be reopened, with when and the next delay.
    reopen_backoff: Mutex<BTreeMap<String, (Instant, Duration)>>,
    /// Follower: the connection of each node leading it, with when it was last heard from
    /// (milliseconds since `started`), so that a second connection claiming a node whose
    /// connection is alive is refused.
    leader_conns: Mutex<BTreeMap<NodeId, LeaderConn>>,
    /// Numbers leader connections.
    next_leader_conn: std::sync::atomic::AtomicU64,
    /// Follower: per log, how often it was reopened after its disk failed, and why the last
    /// attempt to reopen it failed (while it still does).
    disk_faults: Mutex<BTreeMap<String, (u64, Option<String>)>>,
    /// Leader: handing over; client appends are refused with these reasons (see
    /// [`Server::drain`]). Writers hold this lock while they write, so a change taken under it
    /// comes between two writes.
    draining: Mutex<Draining>,
    /// Roles set per log ([`Server::set_role`]) over the node's (`Some`: leads, `None`:
    /// follows).
    roles: Mutex<BTreeMap<String, Option<Lead>>>,
    /// How the node leads every log without a role of its own (`None`: it follows them): as
    /// its configuration says at start, then as [`Server::set_default_role`] sets.
    default_lead: Mutex<Option<Lead>>,
    /// Leader: the followers being dialed, by a thread each ([`Shared::dial`]), until no log
    /// led here has them as a peer.
    dialing: Mutex<BTreeMap<NodeId, JoinHandle<()>>>,
}

/// Why client appends are refused while a leader hands over or changes its replicas.
#[derive(Debug, Default)]
struct Draining {
    /// The appends of every log without a role of its own.
    all: Option<String>,
    /// The appends of single logs.
    logs: BTreeMap<String, String>,
}

/// Where one log stands on a fenced node: its part of an election's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogReport {
    /// The log.
    pub log: String,
    /// The epoch of its last batch (0: it holds none).
    pub last_epoch: u64,
    /// One past its last durable record (everything written was synced for the report).
    pub durable_end: u64,
}

/// Counters of a leader's shipping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShipStats {
    /// Frame bytes shipped, before compression.
    pub raw_bytes: u64,
    /// Chunk bytes on the wire, after compression.
    pub wire_bytes: u64,
}

/// Where one follower stands on one log, as its leader knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLag {
    /// The follower.
    pub node: NodeId,
    /// Records the leader holds that the follower has not synced.
    pub lag_records: u64,
    /// Whether the follower is connected.
    pub connected: bool,
}

/// A running node. Dropping it stops it.
pub struct Server {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

/// Starts a named thread (the name shows in `top -H`, `perf` and panics).
fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> io::Result<JoinHandle<T>> {
    std::thread::Builder::new().name(name.to_owned()).spawn(f)
}

fn log_line(what: &str) {
    eprintln!("tern serve: {what}");
}

impl Server {
    /// Starts a node: binds the listener, opens every stored log, and for a leader starts
    /// dialing the followers.
    ///
    /// # Errors
    /// A frame memory budget below [`FRAME_MEMORY_MIN`], binding the address, reading or
    /// writing the node state, or opening a stored log.
    pub fn start(config: ServerConfig, logs: Arc<dyn Logs>) -> io::Result<Server> {
        if config.frame_memory_max < FRAME_MEMORY_MIN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a frame memory budget of {} bytes is too small: a node needs at least {FRAME_MEMORY_MIN} \
                     (a largest frame for peers and one for clients)",
                    config.frame_memory_max
                ),
            ));
        }
        let listener = TcpListener::bind(config.listen)?;
        let local_addr = listener.local_addr()?;
        let peer_slots_file = logs.state_dir().map(|(disk, dir)| (disk, dir.join(SLOTS_FILE)));
        // A follower may come to lead some logs ([`Server::set_role`]).
        let peer_slots = match &peer_slots_file {
            Some((disk, path)) => Slots::load(&**disk, path).map_err(|e| io::Error::other(e.to_string()))?,
            None => Slots::new(),
        };
        let node_state_file = logs.state_dir().map(|(disk, dir)| (disk, dir.join(NODE_STATE_FILE)));
        let kept_state = match &node_state_file {
            Some((disk, path)) => NodeState::load(&**disk, path).map_err(|e| io::Error::other(e.to_string()))?,
            None => NodeState::default(),
        };
        let mut node_state = kept_state.clone();
        let mut config = config;
        match (config.cluster_id, node_state.cluster_id) {
            (0, 0) if config.role == Role::Leader => node_state.cluster_id = random_cluster_id(),
            (0, kept) => config.cluster_id = kept,
            (given, 0) => node_state.cluster_id = given,
            (given, kept) if given != kept => {
                return Err(io::Error::other(format!(
                    "this node belongs to cluster {kept:#x}, not {given:#x} (kept in {NODE_STATE_FILE})"
                )));
            }
            _ => {}
        }
        config.cluster_id = node_state.cluster_id;
        if let Some((disk, path)) = &node_state_file {
            if kept_state != node_state {
                node_state.store(&**disk, path).map_err(|e| io::Error::other(e.to_string()))?;
            }
        }
        let frames = FrameBudget::new(config.frame_memory_max);
        let draining = match config.handing_over_to.filter(|_| config.role == Role::Leader) {
            Some(target) => Some(moved_reason(config.node_id, Some(&node_lead(&config)), target)?),
            None => None,
        };
        let default_lead = (config.role == Role::Leader).then(|| node_lead(&config));
        let shared = Arc::new(Shared {
            config,
            logs,
            slots: Mutex::new(BTreeMap::new()),
            peers: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
            connections: Arc::new(AtomicUsize::new(0)),
            started: Instant::now(),
            accepted: Arc::new(Mutex::new(BTreeMap::new())),
            clients_open: Arc::new(AtomicUsize::new(0)),
            frames,
            next_connection: std::sync::atomic::AtomicU64::new(0),
            pending: Arc::new(Mutex::new(std::collections::VecDeque::new())),
            peer_slots: Mutex::new(peer_slots),
            peer_slots_file,
            syncs: SyncQueue::default(),
            clients: ClientLoop::new()?,
            following: Mutex::new(None),
            node_state: Mutex::new(node_state),
            node_state_file,
            reopen_backoff: Mutex::new(BTreeMap::new()),
            leader_conns: Mutex::new(BTreeMap::new()),
            next_leader_conn: std::sync::atomic::AtomicU64::new(0),
            disk_faults: Mutex::new(BTreeMap::new()),
            draining: Mutex::new(Draining { all: draining, logs: BTreeMap::new() }),
            let_go: Mutex::new(std::collections::BTreeSet::new()),
            roles: Mutex::new(BTreeMap::new()),
            default_lead: Mutex::new(default_lead),
            dialing: Mutex::new(BTreeMap::new()),
        });
        for name in shared.logs.names() {
            shared.log_state(&name).map_err(io::Error::other)?;
        }
        let mut threads = Vec::new();
        let accept = shared.clone();
        threads.push(spawn("tern-accept", move || accept_loop(&accept, &listener))?);
        shared.dial_peers()?;
        let syncer = shared.clone();
        threads.push(spawn("tern-sync", move || leader_sync_loop(&syncer))?);
        let clients = shared.clone();
        threads.push(spawn("tern-clients", move || clients::client_loop(&clients))?);
        let tick = shared.clone();
        threads.push(spawn("tern-tick", move || tick_loop(&tick))?);
        Ok(Server { shared, local_addr, threads })
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Bytes shipped so far, before and after compression, over every log and follower.
    pub fn ship_stats(&self) -> ShipStats {
        let mut stats = ShipStats::default();
        for slot in self.shared.all_slots() {
            for shipped in slot.lock().shipped.values() {
                stats.raw_bytes += shipped.raw_bytes;
                stats.wire_bytes += shipped.wire_bytes;
            }
        }
        stats
    }

    /// For a leader: where each follower stands on `log`.
    pub fn peer_lag(&self, log: &str) -> Vec<PeerLag> {
        let Some(slot) = self.shared.slot(log) else { return Vec::new() };
        let core = slot.lock();
        let Some(leader) = core.leader.as_ref() else { return Vec::new() };
        let end = slot.log.written_end();
        self.shared
            .config
            .peers
            .iter()
            .filter_map(|(node, _)| {
                let (_, durable, connected) = leader.peer_state(*node)?;
                Some(PeerLag { node: *node, lag_records: end.saturating_sub(durable), connected })
            })
            .collect()
    }

    /// Everything the node measures, per log and per peer.
    pub fn metrics(&self) -> NodeMetrics {
        self.shared.metrics()
    }

    /// Follower: the logs it cannot follow because its leader no longer holds records it
    /// needs and re-seeding is off, as [`Error::DataLoss`]. Nothing was skipped: each such log
    /// stopped at its end.
    pub fn data_losses(&self) -> Vec<Error> {
        self.shared
            .all_slots()
            .iter()
            .filter_map(|slot| match slot.lock().follower.as_ref().and_then(Follower::gap) {
                Some((from, to, false)) => Some(Error::DataLoss { log: slot.name.clone(), from, to }),
                _ => None,
            })
            .collect()
    }

    /// Follower: fences every log at `epoch` (see [`NodeState::fence_epoch`]), durably first,
    /// syncs every log, and reports where each ends: what an election of the leader of `epoch`
    /// needs from this node. From the moment the fence is on disk the node takes nothing of an
    /// older epoch, on any log, also after a restart, so the leader being replaced can commit
    /// nothing more through it. Fencing again at the same epoch reports again; a lower epoch
    /// changes nothing but the report. Logs fenced alone ([`Server::fence_log`]) are neither
    /// fenced nor reported: their epochs are their own.
    ///
    /// # Errors
    /// On a leader of a log this fences (stop leading it first: a node that takes appends is
    /// not fenced); writing the node state; a log whose sync fails (it is fenced, and reopened
    /// as a follower's log is).
    pub fn fence(&self, epoch: u64) -> io::Result<Vec<LogReport>> {
        let shared = &self.shared;
        // The slots first: a slot's opening reads the node state inside the slots' lock.
        let slots = shared.all_slots();
        let fenced: Vec<Arc<LogSlot>> = {
            let state = shared.node_state.lock();
            slots.into_iter().filter(|s| !state.fenced_alone(&s.name)).collect()
        };
        if fenced.iter().any(|s| s.lead.is_some()) {
            return Err(io::Error::other("a leader is not fenced: stop it, and start it as a follower first"));
        }
        shared.update_node_state(|state| state.fence_epoch = state.fence_epoch.max(epoch)).map_err(io::Error::other)?;
        fenced.iter().map(|slot| shared.fence_slot(slot)).collect()
    }

    /// Follower of `log`: fences that log alone at `epoch`, as [`Server::fence`] fences every
    /// log, and reports where it ends. From then on the log has a fence of its own, and the
    /// node's fence no longer applies to it: for logs whose leaders are elected one log at a
    /// time.
    ///
    /// # Errors
    /// As [`Server::fence`], for this log; opening it (a log this node never held is created).
    pub fn fence_log(&self, log: &str, epoch: u64) -> io::Result<LogReport> {
        let shared = &self.shared;
        // A replica that has not received anything of the log yet reports an empty copy.
        let slot = shared.log_state(log).map_err(io::Error::other)?;
        if slot.lead.is_some() {
            return Err(io::Error::other(format!("log {log} is led here: it is not fenced; stop leading it first")));
        }
        shared.update_node_state(|state| state.fence_log(log, epoch)).map_err(io::Error::other)?;
        shared.fence_slot(&slot)
    }

    /// Makes this node lead `log` as `lead` says, or follow it (`None`), from now on, whatever
    /// the node's role: the log's appends, shipping and acknowledgements change over between
    /// two writes, while the node's other logs go on. Leading begins a new epoch of the log,
    /// as a leader's start does ([`ServerConfig::leader_epoch`]); appends waiting on the role
    /// it had are refused (retriable), and a client sent elsewhere by a follower's refusal
    /// finds the leader. Setting the role the log has again begins nothing new.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server: tern_replication::driver::Server = todo!();
    /// use tern_replication::driver::Lead;
    /// use tern_replication::proto::Quorum;
    /// let peers = vec![(2, "10.0.0.2:7000".parse()?), (3, "10.0.0.3:7000".parse()?)];
    /// let lead = Lead { epoch: Some(8), peers, learners: vec![], quorum: Quorum::Count(2), handing_over_to: None };
    /// server.set_role("orders", Some(lead))?; // leads "orders" in epoch 8
    /// server.set_role("events", None)?; // follows "events", whoever leads it
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Opening the log, or beginning its epoch (one at or past it is there already: another
    /// leader took it); the log then follows.
    pub fn set_role(&self, log: &str, lead: Option<Lead>) -> io::Result<()> {
        let shared = &self.shared;
        let mut draining = shared.draining.lock();
        let mut old = Vec::new();
        let names = [log.to_owned()];
        let set = || drop(shared.roles.lock().insert(log.to_owned(), lead.clone()));
        shared.replace_slots(set, |_| names.to_vec(), &mut old);
        let result = shared.reopen_slots(&mut draining, &names, lead.as_ref());
        if result.is_err() {
            // It follows instead (the next call may lead it).
            let set = || drop(shared.roles.lock().insert(log.to_owned(), None));
            shared.replace_slots(set, |_| names.to_vec(), &mut old);
            let _ = shared.reopen_slots(&mut draining, &names, None);
        }
        drop(draining);
        shared.retire(old);
        shared.announce_followed(&[log.to_owned()]);
        shared.dial_peers()?;
        result.map_err(io::Error::other)
    }

    /// Makes this node lead every log without a role of its own ([`Server::set_role`]) as `lead`
    /// says, logs created later too, or follow them (`None`): as [`Server::set_role`] does for
    /// one log, for all of them at once, between two writes. With `handing_over_to`, every
    /// append to them is refused, naming that follower, from the start.
    ///
    /// # Errors
    /// As [`Server::set_role`], for any of those logs; they all follow then.
    pub fn set_default_role(&self, lead: Option<Lead>) -> io::Result<()> {
        let shared = &self.shared;
        let mut draining = shared.draining.lock();
        let mut old = Vec::new();
        // The logs without a role of their own; their handover refusal is `draining.all`.
        let covered = |slots: &BTreeMap<String, Arc<LogSlot>>| {
            let roles = shared.roles.lock();
            slots.keys().filter(|name| !roles.contains_key(*name)).cloned().collect()
        };
        let set = || *shared.default_lead.lock() = lead.clone();
        let names = shared.replace_slots(set, covered, &mut old);
        let each = lead.clone().map(|lead| Lead { handing_over_to: None, ..lead });
        draining.all = None;
        let mut result = shared.reopen_slots(&mut draining, &names, each.as_ref());
        if let (Ok(()), Some(to)) = (&result, lead.as_ref().and_then(|l| l.handing_over_to)) {
            match moved_reason(shared.config.node_id, lead.as_ref(), to) {
                Ok(why) => draining.all = Some(why),
                Err(e) => result = Err(e.to_string()),
            }
        }
        if result.is_err() {
            draining.all = None;
            let set = || *shared.default_lead.lock() = None;
            shared.replace_slots(set, |_| names.clone(), &mut old);
            let _ = shared.reopen_slots(&mut draining, &names, None);
        }
        drop(draining);
        shared.retire(old);
        shared.announce_followed(&names);
        shared.dial_peers()?;
        result.map_err(io::Error::other)
    }

    /// Makes this node a member of cluster `cluster_id`, durably, when it belongs to none yet
    /// (as a follower does when the first leader reaches it): for a node that comes to lead
    /// before any leader reached it.
    ///
    /// # Errors
    /// It belongs to another cluster; writing the node state.
    pub fn join_cluster(&self, cluster_id: u64) -> io::Result<()> {
        self.shared.join_cluster(cluster_id).map_err(io::Error::other)
    }

    /// Leader, handing over to `target`: from now on client appends are refused with a
    /// retryable reason naming `target` and its address ([`MOVED_PREFIX`]), and this waits (up
    /// to `timeout`) until `target` has synced every record of every log that this node has
    /// written, so that it can take over with exactly this log. Shipping goes on meanwhile.
    /// Returns how long the wait took.
    ///
    /// # Errors
    /// This node does not lead, `target` is not one of its peers, or `timeout` passed first
    /// (appends stay refused: the handover goes on, or [`Server::hand_over`] with `None` gives
    /// it up).
    pub fn drain(&self, target: NodeId, timeout: Duration) -> io::Result<Duration> {
        self.hand_over(Some(target))?;
        self.wait_caught_up(None, target, timeout)
    }

    /// Leader of `log`: as [`Server::drain`], for this log alone (its appends are refused,
    /// the other logs' go on; [`Server::hand_over_log`] with `None` gives it up).
    ///
    /// # Errors
    /// This node does not lead `log`, `target` is not one of its peers, or `timeout` passed
    /// first.
    pub fn drain_log(&self, log: &str, target: NodeId, timeout: Duration) -> io::Result<Duration> {
        self.hand_over_log(log, Some(target))?;
        self.wait_caught_up(Some(log), target, timeout)
    }

    fn wait_caught_up(&self, log: Option<&str>, target: NodeId, timeout: Duration) -> io::Result<Duration> {
        let started = Instant::now();
        loop {
            let caught_up = match log {
                Some(log) => self.caught_up_on(log, target),
                None => self.caught_up(target),
            };
            if caught_up {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= timeout {
                return Err(io::Error::other(format!(
                    "node {target} did not catch up within {} ms",
                    timeout.as_millis()
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Leader: starts refusing client appends, naming `target` as the node to go to (`Some`),
    /// or takes appends again (`None`: a handover given up). Once this returns with `Some`,
    /// nothing more is written to any log until it is called with `None`.
    ///
    /// # Errors
    /// This node does not lead, or `target` is not one of its peers.
    pub fn hand_over(&self, target: Option<NodeId>) -> io::Result<()> {
        let shared = &self.shared;
        let Some(lead) = shared.leads_any() else { return Err(io::Error::other("only a leader hands over")) };
        let reason = match target {
            Some(target) => Some(moved_reason(shared.config.node_id, Some(&lead), target)?),
            None => None,
        };
        // Taken between two writes (the writers hold this lock while they write).
        shared.draining.lock().all = reason;
        Ok(())
    }

    /// Leader of `log`: as [`Server::hand_over`], for this log alone.
    ///
    /// # Errors
    /// This node does not lead `log`, or `target` is not one of its peers.
    pub fn hand_over_log(&self, log: &str, target: Option<NodeId>) -> io::Result<()> {
        let shared = &self.shared;
        let lead = shared.slot(log).and_then(|s| s.lead.clone());
        let Some(lead) = lead else { return Err(io::Error::other(format!("this node does not lead log {log}"))) };
        let reason = match target {
            Some(target) => Some(moved_reason(shared.config.node_id, Some(&lead), target)?),
            None => None,
        };
        let mut draining = shared.draining.lock();
        match reason {
            Some(reason) => draining.logs.insert(log.to_owned(), reason),
            None => draining.logs.remove(log),
        };
        Ok(())
    }

    /// Leader: refuses client appends for a moment (`true`) while the replicas of its logs
    /// change, with a retriable [`MOVED_PREFIX`] refusal that names this node itself; or takes
    /// them again (`false`). Once this returns with `true`, nothing more is written to any log
    /// until it is called with `false`.
    ///
    /// # Errors
    /// This node does not lead.
    pub fn pause_appends(&self, pause: bool) -> io::Result<()> {
        let shared = &self.shared;
        if shared.leads_any().is_none() {
            return Err(io::Error::other("only a leader pauses appends"));
        }
        let reason = pause.then(|| {
            format!(
                "{MOVED_PREFIX}node {} is changing the replicas of its logs and takes appends again in a \
                 moment{MOVED_ADDR}{}; retry there (not written here)",
                shared.config.node_id, self.local_addr
            )
        });
        // Taken between two writes (the writers hold this lock while they write).
        shared.draining.lock().all = reason;
        Ok(())
    }

    /// Leader of `log`: as [`Server::pause_appends`], for this log alone.
    ///
    /// # Errors
    /// This node does not lead `log`.
    pub fn pause_log(&self, log: &str, pause: bool) -> io::Result<()> {
        let shared = &self.shared;
        if shared.slot(log).is_none_or(|s| s.lead.is_none()) {
            return Err(io::Error::other(format!("this node does not lead log {log}")));
        }
        let mut draining = shared.draining.lock();
        if pause {
            let why = format!(
                "{MOVED_PREFIX}node {} is changing the replicas of log {log} and takes appends again in a \
                 moment{MOVED_ADDR}{}; retry there (not written here)",
                shared.config.node_id, self.local_addr
            );
            draining.logs.insert(log.to_owned(), why);
        } else {
            draining.logs.remove(log);
        }
        Ok(())
    }

    /// Gives `log` a fence of its own, at the fence that applies to it now, durably: from now
    /// on the node's fence ([`Server::fence`]) leaves it as it is (its leaders are elected
    /// apart from the node's other logs). Nothing changes for a log that has one.
    ///
    /// # Errors
    /// Writing the node state.
    pub fn keep_apart(&self, log: &str) -> io::Result<()> {
        self.shared
            .update_node_state(|state| {
                let fence = state.fence_of(log);
                state.fence_log(log, fence);
            })
            .map_err(io::Error::other)
    }

    /// How many of `nodes` hold every record this leader has written, of every log, synced:
    /// a follower once it acknowledged it durable, this node once its own log is synced (a
    /// sync is asked for when it is not).
    pub fn holding_everything(&self, nodes: &[NodeId]) -> usize {
        self.holding(None, nodes)
    }

    /// As [`Server::holding_everything`], of log `log` alone.
    pub fn holding_everything_on(&self, log: &str, nodes: &[NodeId]) -> usize {
        self.holding(Some(log), nodes)
    }

    /// The logs led as the node's role says (`None`), or log `log`.
    fn scope(&self, log: Option<&str>) -> Vec<Arc<LogSlot>> {
        let slots = self.shared.all_slots();
        slots.into_iter().filter(|s| log.map_or(!s.own_role, |log| s.name == log)).collect()
    }

    fn holding(&self, log: Option<&str>, nodes: &[NodeId]) -> usize {
        let me = self.shared.config.node_id;
        let slots = self.scope(log);
        let synced_here = || {
            let mut synced = true;
            for slot in &slots {
                let written = slot.log.written_end();
                let durable = slot.lock().leader.as_ref().map(Leader::durable_end);
                if durable.is_some_and(|d| d < written) {
                    self.shared.want_sync(slot);
                    synced = false;
                }
            }
            synced
        };
        let caught_up = |node: NodeId| slots.iter().all(|slot| slot_caught_up(slot, node));
        nodes.iter().filter(|node| if **node == me { synced_here() } else { caught_up(**node) }).count()
    }

    /// How far behind this leader's written end `target`'s synced copy is, in bytes, on the log
    /// where it is furthest behind (`None`: it is not connected, or not yet to some log).
    pub fn lag_bytes(&self, target: NodeId) -> Option<u64> {
        self.lag(None, target)
    }

    /// As [`Server::lag_bytes`], on log `log` alone.
    pub fn lag_bytes_on(&self, log: &str, target: NodeId) -> Option<u64> {
        self.lag(Some(log), target)
    }

    /// How much `target` has acknowledged, as one number that grows with every acknowledgement
    /// of a record written or synced there, over every log this node leads (`None`: it is not
    /// connected, or not yet to some log). A connected follower whose figure stands still while
    /// it is behind takes nothing in: paused, or stuck.
    pub fn acked_by(&self, target: NodeId) -> Option<u64> {
        self.acked(None, target)
    }

    /// As [`Server::acked_by`], on log `log` alone.
    pub fn acked_by_on(&self, log: &str, target: NodeId) -> Option<u64> {
        self.acked(Some(log), target)
    }

    fn acked(&self, log: Option<&str>, target: NodeId) -> Option<u64> {
        let mut acked = 0u64;
        for slot in self.scope(log) {
            let core = slot.lock();
            let Some(leader) = core.leader.as_ref() else { continue };
            let (written, durable, connected) = leader.peer_state(target)?;
            if !connected {
                return None;
            }
            acked = acked.saturating_add(written).saturating_add(durable);
        }
        Some(acked)
    }

    fn lag(&self, log: Option<&str>, target: NodeId) -> Option<u64> {
        let mut lag = 0;
        for slot in self.scope(log) {
            let written = slot.log.written_end();
            let durable = {
                let core = slot.lock();
                let Some(leader) = core.leader.as_ref() else { continue };
                let (_, durable, connected) = leader.peer_state(target)?;
                if !connected {
                    return None;
                }
                durable
            };
            // Bytes of the log past the peer's synced end (offsets count records: a learner
            // a few large records behind is far behind).
            if durable < written {
                lag = lag.max(bytes_after(&slot.log, durable));
            }
        }
        Some(lag)
    }

    /// Whether `target` has synced every record this leader has written, of every log.
    pub fn caught_up(&self, target: NodeId) -> bool {
        self.scope(None).iter().all(|slot| slot_caught_up(slot, target))
    }

    /// Whether `target` has synced every record this node has written to `log`, which it leads
    /// (false when it does not).
    pub fn caught_up_on(&self, log: &str, target: NodeId) -> bool {
        self.shared.slot(log).is_some_and(|slot| slot.lead.is_some() && slot_caught_up(&slot, target))
    }

    /// Whether client appends are refused for a handover (of every log, or of one).
    pub fn handing_over(&self) -> bool {
        let draining = self.shared.draining.lock();
        draining.all.is_some() || !draining.logs.is_empty()
    }

    /// The fence of this node: nothing of an older epoch is taken (0: none).
    pub fn fence_epoch(&self) -> u64 {
        self.shared.node_state.lock().fence_epoch
    }

    /// The commit point of `log` as this node knows it.
    pub fn commit_end(&self, log: &str) -> u64 {
        self.shared.slot(log).map_or(0, |slot| slot.commit_end())
    }

    /// Appends `records` to `log` on this node, a leader, and waits until `acks` holds for
    /// them (at most the commit timeout), as an append from a network client does: the batch
    /// ships to the followers while it is synced here. Records appended to the engine's logs
    /// directly (`Engine::log(..).append(..)`) are shipped too; this is the way to also learn
    /// what their acknowledgement achieved.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server: tern_replication::driver::Server = todo!();
    /// use tern_replication::message::Acks;
    /// let receipt = server.append("orders", &[b"order 1".as_slice(), b"order 2"], Acks::Quorum)?;
    /// println!("{}..{}: {receipt}", receipt.start, receipt.end); // synced on a quorum (2 of 3 nodes)
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// This node follows, or no longer leads the log; the append was refused by the log; or
    /// `acks` did not hold within the commit timeout (the records may still commit later).
    pub fn append(&self, log: &str, records: &[&[u8]], acks: Acks) -> io::Result<Receipt> {
        let shared = &self.shared;
        let slot = shared.leading_slot(log).map_err(io::Error::other)?;
        if let Some(why) = slot.lock().leader.as_ref().and_then(|l| stop_reason(log, shared.config.node_id, l)) {
            return Err(io::Error::other(why));
        }
        let offsets = {
            // Held while writing, as the client loop does (see `Server::drain`).
            let draining = shared.draining.lock();
            if let Some(reason) = shared.write_refusal(&draining, &slot) {
                return Err(io::Error::other(reason));
            }
            slot.log.append(records, tern_wal::Durability::None).map_err(io::Error::other)?
        };
        if acks != Acks::Written {
            shared.want_sync(&slot);
        }
        shared.leader_input(&slot, LeaderInput::Written { end: offsets.end });
        let deadline = Instant::now() + shared.config.commit_timeout;
        self.wait_until(&slot, deadline, |leader| match acks {
            Acks::Written => true,
            Acks::Leader => leader.durable_end() >= offsets.end,
            Acks::Quorum => leader.commit_end() >= offsets.end,
        })
        .map_err(|why| io::Error::other(format!("offsets {}..{}: {why}", offsets.start, offsets.end)))?;
        let core = slot.lock();
        let reached = match core.leader.as_ref() {
            Some(l) if l.commit_end() >= offsets.end => Acks::Quorum,
            Some(l) if l.durable_end() >= offsets.end => Acks::Leader,
            _ => Acks::Written,
        };
        match receipt(core.leader.as_ref(), offsets.start, offsets.end, reached) {
            Message::ClientAppended { start, end, durability, copies, nodes } => {
                Ok(Receipt { start, end, durability, copies, nodes })
            }
            _ => Err(io::Error::other("no receipt")),
        }
    }

    /// Waits, without polling, until `log`'s commit point on this node, a leader, reaches
    /// `end` or `timeout` passes; returns the commit point then.
    ///
    /// # Errors
    /// This node does not lead `log` (or no longer does), or `timeout` passed first.
    pub fn wait_committed(&self, log: &str, end: u64, timeout: Duration) -> io::Result<u64> {
        let slot = self.shared.slot(log).ok_or_else(|| io::Error::other(format!("no log named {log:?} here")))?;
        self.wait_until(&slot, Instant::now() + timeout, |leader| leader.commit_end() >= end)
            .map_err(io::Error::other)?;
        Ok(slot.commit_end())
    }

    /// Waits on the log's condition variable (notified at every commit and local sync) until
    /// `done` holds for its leader core, or the deadline.
    fn wait_until(&self, slot: &LogSlot, deadline: Instant, done: impl Fn(&Leader) -> bool) -> Result<(), String> {
        let mut core = slot.lock();
        loop {
            let Some(leader) = core.leader.as_ref() else { return Err("this node does not lead the log".into()) };
            if let Some(why) = stop_reason(&slot.name, self.shared.config.node_id, leader) {
                return Err(why);
            }
            if done(leader) {
                return Ok(());
            }
            if slot.committed.wait_until(&mut core, deadline).timed_out() {
                return Err(format!("not reached within the commit timeout (commit point {})", leader_commit(&core)));
            }
        }
    }

    /// Stops accepting and dialing, and waits for the node's threads.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return; // stopped already (`stop`, then the drop)
        }
        for slot in self.shared.all_slots() {
            self.shared.refuse_waiters(&slot, |_| true, &format!("; {STOPPING_REASON}"));
        }
        // Close every connection, accepted or dialed, so blocked reads return; wake the accept
        // loop; then wait for the threads. Connection threads let go of the node's logs (and
        // so of its directory lock) within a bounded wait.
        for stream in self.shared.accepted.lock().values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_millis(200));
        self.shared.clients.wake();
        for slot in self.shared.all_slots() {
            slot.committed.notify_all();
        }
        {
            let mut syncs = self.shared.syncs.logs.lock();
            syncs.1 = true;
            self.shared.syncs.wake.notify_all();
        }
        for thread in &self.threads {
            thread.thread().unpark();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // Not under the lock: a dialing thread takes it to end.
        let dialing = std::mem::take(&mut *self.shared.dialing.lock());
        for thread in dialing.into_values() {
            let _ = thread.join();
        }
        // Client connections handed over after the client loop's last look are dropped here
        // (with their counts): nothing serves them any more.
        self.shared.clients.drop_incoming();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.shared.connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Sync every log so that a clean stop leaves nothing pending.
        for slot in self.shared.all_slots() {
            let _ = slot.log.sync();
        }
        self.shared.persist_slots();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.halt();
    }
}

/// How a node whose role is per node leads each of its logs.
fn node_lead(config: &ServerConfig) -> Lead {
    Lead {
        epoch: config.leader_epoch,
        peers: config.peers.clone(),
        learners: config.learners.clone(),
        quorum: config.quorum,
        handing_over_to: None,
    }
}

impl Shared {
    /// Removes the slots of the logs `select` picks, after `set` changed the role they are to
    /// have, keeping the removed ones in `old` for [`Shared::retire`]; returns the names. All
    /// under the slots' lock, as a slot is opened ([`Shared::log_state`] holds it throughout):
    /// a slot opened between the change and the removal would begin the new role's epoch, and
    /// the slot replacing it would then find the epoch begun already.
    fn replace_slots(
        &self,
        set: impl FnOnce(),
        select: impl FnOnce(&BTreeMap<String, Arc<LogSlot>>) -> Vec<String>,
        old: &mut Vec<Arc<LogSlot>>,
    ) -> Vec<String> {
        let mut slots = self.slots.lock();
        set();
        let names = select(&slots);
        for name in &names {
            if let Some(slot) = slots.remove(name) {
                slot.retired.store(true, Ordering::SeqCst);
                old.push(slot);
            }
        }
        names
    }

    /// Opens the slots of `names` again, in the role `lead` they were given (with `draining`,
    /// the writers' lock, held: between two writes); each one's handover refusal follows
    /// `lead.handing_over_to`. The first error, once every one was tried.
    fn reopen_slots(&self, draining: &mut Draining, names: &[String], lead: Option<&Lead>) -> Result<(), String> {
        let mut result = Ok(());
        for name in names {
            draining.logs.remove(name);
            let why = match lead.and_then(|l| l.handing_over_to) {
                Some(to) => match moved_reason(self.config.node_id, lead, to) {
                    Ok(why) => Some(why),
                    Err(e) => {
                        result = result.and(Err(e.to_string()));
                        continue;
                    }
                },
                None => None,
            };
            match self.log_state(name) {
                Ok(slot) => {
                    debug_assert_eq!(slot.lead.is_some(), lead.is_some());
                    if let Some(why) = why {
                        draining.logs.insert(name.clone(), why);
                    }
                }
                Err(e) => result = result.and(Err(e)),
            }
        }
        result
    }

    /// Tells every node leading this one where each of `names` that it now follows stands, as
    /// a new connection's follower does: a node that just stopped leading a log dropped what a
    /// new leader of it shipped meanwhile, and that leader would otherwise learn where it
    /// stands only from the answer to its next heartbeat (100 ms of a handover's pause).
    fn announce_followed(&self, names: &[String]) {
        let writers: Vec<Arc<Mutex<TcpStream>>> =
            self.leader_conns.lock().values().filter_map(|c| c.writer.clone()).collect();
        if writers.is_empty() {
            return;
        }
        let mut out = Vec::new();
        for slot in names.iter().filter_map(|name| self.slot(name)).filter(|s| s.lead.is_none()) {
            let msg = Message::Ack {
                log: slot.name.clone(),
                epoch: slot.lock().follower.as_ref().map_or(0, Follower::checked_epoch),
                written_end: slot.log.written_end(),
                durable_end: slot.log.durable_end(),
                last_epoch: follower::ack_last_epoch(&slot.log),
            };
            codec::encode(&msg, &mut out);
        }
        for writer in writers {
            let _ = writer.lock().write_all(&out);
        }
    }

    /// Refuses the appends still waiting on slots replaced by [`Shared::replace_slots`].
    fn retire(&self, old: Vec<Arc<LogSlot>>) {
        for slot in old {
            let why =
                format!("; {NOT_LEADER_PREFIX}node {} no longer leads log {} this way", self.config.node_id, slot.name);
            self.refuse_waiters(&slot, |_| true, &why);
            slot.committed.notify_all();
        }
    }

    /// How this node leads log `name` (`None`: it follows it): as set for the log
    /// ([`Server::set_role`]), or else as the node's role says.
    fn lead_of(&self, name: &str) -> Option<Lead> {
        match self.roles.lock().get(name) {
            Some(lead) => lead.clone(),
            None => self.default_lead.lock().clone(),
        }
    }

    /// Whether this node leads log `name` (without opening it).
    fn would_lead(&self, name: &str) -> bool {
        match self.roles.lock().get(name) {
            Some(lead) => lead.is_some(),
            None => self.default_lead.lock().is_some(),
        }
    }

    /// How this node leads one of its logs, if it leads any.
    fn leads_any(&self) -> Option<Lead> {
        if let Some(lead) = self.default_lead.lock().clone() {
            return Some(lead);
        }
        self.all_slots().into_iter().find_map(|s| s.lead.clone())
    }

    /// The slot of `log`, which this node leads (opened the first time); or why not.
    fn leading_slot(&self, log: &str) -> Result<Arc<LogSlot>, String> {
        let slot = match self.slot(log) {
            Some(slot) => slot,
            None if self.would_lead(log) => self.log_state(log)?,
            None => return Err(self.follower_refusal(log)),
        };
        if slot.lead.is_none() {
            return Err(self.follower_refusal(log));
        }
        Ok(slot)
    }

    /// Why a write to `slot` must not be made now (with the writers' lock, `draining`, held):
    /// a handover or a change of replicas under way, or the slot was replaced.
    fn write_refusal(&self, draining: &Draining, slot: &LogSlot) -> Option<String> {
        if slot.retired.load(Ordering::SeqCst) {
            return Some(format!(
                "{NOT_LEADER_PREFIX}the role of node {} on log {} changed; retry",
                self.config.node_id, slot.name
            ));
        }
        draining.logs.get(&slot.name).or(draining.all.as_ref().filter(|_| !slot.own_role)).cloned()
    }

    /// Fences `slot` at the fence the node state now gives it, syncs its log and reports.
    fn fence_slot(&self, slot: &LogSlot) -> io::Result<LogReport> {
        let fence = self.node_state.lock().fence_of(&slot.name);
        if let Some(follower) = slot.lock().follower.as_mut() {
            follower.fence(fence);
        }
        slot.log.sync().map_err(|e| io::Error::other(format!("log {}: {e}", slot.name)))?;
        Ok(LogReport { log: slot.name.clone(), last_epoch: slot.log.last_epoch(), durable_end: slot.log.durable_end() })
    }

    /// Starts dialing every follower of a log led here that no thread dials yet; a dialing
    /// thread ends once no log led here has its follower as a peer.
    fn dial_peers(self: &Arc<Self>) -> io::Result<()> {
        let mut wanted: BTreeMap<NodeId, SocketAddr> = BTreeMap::new();
        if let Some(lead) = self.default_lead.lock().as_ref() {
            wanted.extend(lead.peers.iter().copied());
        }
        for slot in self.all_slots() {
            if let Some(lead) = &slot.lead {
                wanted.extend(lead.peers.iter().copied());
            }
        }
        let mut dialing = self.dialing.lock();
        dialing.retain(|_, thread| !thread.is_finished());
        for (peer, addr) in wanted {
            if self.stop.load(Ordering::SeqCst) || dialing.contains_key(&peer) {
                continue;
            }
            let dial = self.clone();
            dialing.insert(peer, spawn(&format!("tern-dial-{peer}"), move || dial_loop(&dial, peer, addr))?);
        }
        Ok(())
    }

    /// Whether a log led here has `peer` as a follower: its dialing thread goes on.
    fn wants_peer(&self, peer: NodeId) -> bool {
        let wanted = |lead: &Lead| lead.peers.iter().any(|(p, _)| *p == peer);
        // Its own statement: the node's role is locked inside the slots' lock (a slot's
        // opening reads it), never around it. Held across `all_slots`, a dialing thread and a
        // slot being opened waited for each other for good, and every append with them.
        let by_node_role = self.default_lead.lock().as_ref().is_some_and(wanted);
        by_node_role || self.all_slots().iter().any(|s| s.lead.as_ref().is_some_and(wanted))
    }

    /// The slot of log `name`, if the node has opened it.
    fn slot(&self, name: &str) -> Option<Arc<LogSlot>> {
        self.slots.lock().get(name).cloned()
    }

    /// Every log the node has opened, by name.
    fn all_slots(&self) -> Vec<Arc<LogSlot>> {
        self.slots.lock().values().cloned().collect()
    }

    fn has_logs(&self) -> bool {
        !self.slots.lock().is_empty()
    }

    /// The slot of log `name`, opening (creating) the log the first time.
    fn log_state(&self, name: &str) -> Result<Arc<LogSlot>, String> {
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.get(name) {
            return Ok(slot.clone());
        }
        let log = self.logs.open(name)?;
        let (written, durable) = (log.written_end(), log.durable_end());
        let lead = self.lead_of(name);
        let own_role = self.roles.lock().contains_key(name);
        let (leader, follower) = match &lead {
            Some(lead) => {
                // Every start of a leader is a new epoch of each of its logs, recorded durably
                // before anything of it is shipped: a follower holding records of an earlier
                // epoch past where that epoch ends here (lost here in a power loss) is cut back.
                let epoch = match lead.epoch {
                    Some(epoch) if epoch <= log.epoch() => {
                        return Err(format!(
                            "log {name}: cannot lead it in epoch {epoch}: it is at epoch {} already",
                            log.epoch()
                        ));
                    }
                    Some(epoch) => epoch,
                    None => log.epoch() + 1,
                };
                log.begin_epoch(epoch).map_err(|e| format!("log {name}: cannot begin epoch {epoch}: {e}"))?;
                // The shipper reads every batch right after it is written: keep large ones in
                // the page cache instead of reading them back from the disk.
                if !lead.peers.is_empty() {
                    log.set_direct_writes(false);
                }
                let config = LeaderConfig {
                    log: name.to_owned(),
                    epoch,
                    epoch_history: log.epoch_history(),
                    peers: lead.peers.iter().map(|(id, _)| *id).collect(),
                    learners: lead.learners.clone(),
                    quorum: lead.quorum,
                    inflight_bytes_max: 8 << 20,
                    chunk_bytes_max: 1 << 20,
                    heartbeat_ms: 100,
                    // The tick thread runs every 10 ms: a follower learns of a commit within
                    // about one tick once the leader has nothing more to ship it.
                    commit_notice_ms: 5,
                    resend_ms: 2_000,
                    reseed: self.config.reseed,
                };
                // What is durable here when the node starts is on a quorum only as far as the
                // followers' slots say.
                let mut leader = Leader::new(config, written, durable, 0);
                leader.handle(LeaderInput::StartMoved { start: log.start_offset() });
                let kept = self.peer_slots.lock();
                for (peer, _) in &lead.peers {
                    if let Some(Slot { durable_end, epoch, state: SlotState::Active }) = kept.get(name, *peer) {
                        leader.restore_peer(*peer, *durable_end, *epoch);
                    }
                }
                drop(kept);
                while leader.poll_action().is_some() {}
                (Some(leader), None)
            }
            None => {
                let last_epoch = follower::ack_last_epoch(&log);
                let held = log.start_offset()..written;
                let mut follower = Follower::new(name.to_owned(), 0, held, durable, last_epoch, log.epoch_history());
                let state = self.node_state.lock();
                if let Some((epoch, leader)) = state.leader(name) {
                    follower.restore_leader(epoch, leader);
                }
                follower.fence(state.fence_of(name));
                drop(state);
                (None, Some(follower))
            }
        };
        // A follower needs no table: the batch frames it applies carry the producer fields,
        // and it rebuilds one from them when it is started as a leader.
        let producers = if leader.is_some() {
            let (producers, scanned) = recover_producers(&log);
            if scanned.bytes > 0 && !producers.is_empty() {
                log_line(&format!(
                    "log {name}: {} producers remembered from the last {} batches ({} bytes from offset {})",
                    producers.len(),
                    scanned.batches,
                    scanned.bytes,
                    scanned.from
                ));
            }
            producers
        } else {
            Producers::default()
        };
        let slot = Arc::new(LogSlot {
            name: name.to_owned(),
            log,
            lead,
            own_role,
            retired: AtomicBool::new(false),
            core: Mutex::new(Core {
                leader,
                follower,
                shipped: BTreeMap::new(),
                waiters: Waiters::default(),
                replies: Vec::new(),
            }),
            recent_chunks: Mutex::new(std::collections::VecDeque::new()),
            chunks_built: std::sync::atomic::AtomicU64::new(0),
            committed: Condvar::new(),
            applied: Applied::default(),
            producers: Mutex::new(producers),
            duplicate_batches: std::sync::atomic::AtomicU64::new(0),
        });
        slots.insert(name.to_owned(), slot.clone());
        drop(slots);
        let connected: Vec<NodeId> = self.peers.lock().keys().copied().collect();
        for peer in connected {
            self.leader_input(&slot, LeaderInput::Connected { peer, written_end: 0, durable_end: 0 });
        }
        Ok(slot)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Feeds a leader input to the core of `slot` and carries out the actions.
    fn leader_input(&self, slot: &Arc<LogSlot>, input: LeaderInput) {
        let replies = {
            let mut core = slot.lock();
            self.leader_input_locked(slot, &mut core, input);
            std::mem::take(&mut core.replies)
        };
        deliver(replies);
    }

    fn leader_input_locked(&self, slot: &Arc<LogSlot>, core: &mut Core, input: LeaderInput) {
        let Some(leader) = core.leader.as_mut() else { return };
        let synced = matches!(input, LeaderInput::Synced { .. });
        leader.handle(input);
        if synced {
            // In-process waiters for the leader's own sync (`Server::append`).
            slot.committed.notify_all();
        }
        let mut stopped = None;
        while let Some(action) = leader.poll_action() {
            match action {
                LeaderAction::Ship { peer, from, bytes_max, commit_end } => {
                    let ship = Outgoing::Ship { slot: slot.clone(), from, bytes_max, commit_end };
                    if !self.outbox(peer).is_some_and(|outbox| outbox.push(ship)) {
                        leader.handle(LeaderInput::NotShipped { peer });
                    }
                }
                LeaderAction::Send { peer, msg } => {
                    let mut bytes = Vec::new();
                    codec::encode(&msg, &mut bytes);
                    if let Some(outbox) = self.outbox(peer) {
                        outbox.push(Outgoing::Bytes(bytes));
                    }
                }
                LeaderAction::Committed { .. } => {
                    slot.committed.notify_all();
                    self.clients.poke();
                }
                LeaderAction::LacksRecords { peer, from, to, last_epoch } => {
                    let why = lacks_reason(&slot.name, peer, from, to, last_epoch);
                    log_line(&format!("log {}: {why}", slot.name));
                    stopped = Some(why);
                }
                LeaderAction::Deposed { epoch } => {
                    log_line(&format!(
                        "log {}: a follower follows epoch {epoch}, later than this leader's {}: this node no \
                         longer leads it and refuses its appends",
                        slot.name,
                        leader.epoch()
                    ));
                    stopped = Some(not_leader_reason(&slot.name, self.config.node_id, epoch));
                }
            }
        }
        if let Some(why) = stopped {
            refuse_waiters(core, slot.log.durable_end(), |_| true, &format!(": {why}"));
            slot.committed.notify_all();
            self.clients.poke();
            return;
        }
        if !core.waiters.is_empty() {
            complete_waiters(core);
        }
    }

    /// Leader: asks the syncer to sync `slot`'s log.
    fn want_sync(&self, slot: &LogSlot) {
        let mut logs = self.syncs.logs.lock();
        if !logs.0.contains(&slot.name) {
            logs.0.insert(slot.name.clone());
            self.syncs.wake.notify_one();
        }
    }

    /// Leader: refuses the waiting appends of `slot` that `expired` picks.
    fn refuse_waiters(&self, slot: &LogSlot, expired: impl FnMut(&Waiter) -> bool, why: &str) {
        let replies = {
            let mut core = slot.lock();
            if core.waiters.is_empty() {
                return;
            }
            refuse_waiters(&mut core, slot.log.durable_end(), expired, why);
            std::mem::take(&mut core.replies)
        };
        deliver(replies);
    }

    fn outbox(&self, peer: NodeId) -> Option<Arc<Outbox>> {
        self.peers.lock().get(&peer).cloned()
    }

    /// The chunk that ships `from` (within `bytes_max`) to `peer`: one just built for another
    /// peer from the same offset, otherwise a new one read from the log. A reused chunk may end
    /// before what was written since; the rest goes in the next one.
    fn chunk_for(&self, slot: &LogSlot, peer: NodeId, from: u64, bytes_max: u64) -> Option<Chunk> {
        let mut recent = slot.recent_chunks.lock();
        // Like a new read, a reused chunk may pass the budget by less than one chunk.
        if let Some(chunk) = recent.iter().rev().find(|c| c.base_offset == from) {
            return Some(chunk.clone());
        }
        match read_chunk(&slot.log, from, bytes_max, &self.config.compression) {
            Ok(Some(chunk)) => {
                slot.chunks_built.fetch_add(1, Ordering::Relaxed);
                if recent.len() >= RECENT_CHUNKS_MAX {
                    recent.pop_front();
                }
                recent.push_back(chunk.clone());
                Some(chunk)
            }
            Ok(None) => None,
            Err(e) => {
                log_line(&format!("log {}: cannot read from {from} for node {peer}: {e}", slot.name));
                None
            }
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        // Over the cap, the connection that has waited longest for its first message is closed
        // to make room: connections that send a few bytes and then nothing (or nothing at all)
        // cannot keep clients or the leader out by their number, only by reconnecting faster
        // than a real peer sends its first message. (The count goes over the cap until the
        // closed connection's thread has ended, by at most the connections closed so.)
        if shared.connections.fetch_add(1, Ordering::SeqCst) >= shared.config.connections_max + PEER_CONNECTIONS_MAX
            && !shared.close_oldest_awaiting()
        {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            let mut stream = stream;
            let _ = write_msg(&mut stream, &Message::Refuse { reason: TOO_MANY_CONNECTIONS_REASON.into() });
            continue;
        }
        // Counts the connection, and keeps it where a stop can close it, until its thread
        // ends, or, for a client, until the client loop lets go of it.
        let registered = shared.register(&stream);
        let awaiting = registered.as_ref().map(|r| shared.await_first_message(r));
        let mut counted = Some(Counted { count: shared.connections.clone(), _registered: registered });
        let shared = shared.clone();
        let closer = stream.try_clone();
        let spawned = spawn("tern-conn", move || {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            if let Err(e) = serve_connection(&shared, stream, &mut counted, awaiting) {
                // A client that hangs up between requests is not an error.
                if !shared.stop.load(Ordering::SeqCst) && e.kind() != io::ErrorKind::UnexpectedEof {
                    log_line(&format!("connection from {peer} closed: {e}"));
                }
            }
            // Shut at once, so that a peer whose bytes were refused (a damaged frame, a wrong
            // cluster id) sees the connection close, and a leader whose stream a follower had
            // found corrupt stops shipping into it; dropping `counted` then closes the
            // descriptor. A client handed over to the client loop (which took `counted`) stays
            // open.
            if counted.is_some() {
                if let Ok(closer) = closer {
                    let _ = closer.shutdown(Shutdown::Both);
                }
            }
            // The node first, then the count: once it is 0 at a stop, nothing else holds it.
            drop(shared);
            drop(counted);
        });
        if let Err(e) = spawned {
            // Out of threads: the connection is dropped with the closure (and its count and
            // registration with it) and the node goes on.
            log_line(&format!("cannot serve a new connection: {e}"));
        }
    }
}

/// Reads one whole message, bounding its size before buffering the body.
fn read_msg(stream: &mut impl Read) -> io::Result<Message> {
    read_msg_held(stream, |_| Ok(None)).map(|(msg, _)| msg)
}

/// [`read_msg`], first asking `reserve` for room for the whole frame (given its length): the
/// room is held with the message, until the caller drops it.
fn read_msg_held(
    stream: &mut impl Read,
    reserve: impl FnOnce(usize) -> io::Result<Option<Reservation>>,
) -> io::Result<(Message, Option<Reservation>)> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix)?;
    let len = codec::frame_len(&prefix).map_err(io::Error::other)?.ok_or_else(|| io::Error::other("short prefix"))?;
    let held = reserve(len)?;
    // Filled as the body arrives, not zeroed first (a large chunk spent a tenth of a
    // follower's reader on that); the capacity is only address space until bytes arrive.
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&prefix);
    let body = (len - prefix.len()) as u64;
    if stream.take(body).read_to_end(&mut buf)? as u64 != body {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    match codec::decode(&Bytes::from(buf)).map_err(io::Error::other)? {
        Some((msg, used)) if used == len => Ok((msg, held)),
        _ => Err(io::Error::other("message does not decode")),
    }
}

/// How often a reader whose frame does not fit in the node's frame memory budget looks again.
const BUDGET_POLL: Duration = Duration::from_millis(5);

/// Room in the node's frame budget for a frame of `len` bytes, waiting while it does not fit,
/// until `give_up()` holds.
fn reserve_frame(
    frames: &Arc<FrameBudget>,
    len: usize,
    reader: Reader,
    give_up: &mut impl FnMut() -> bool,
) -> io::Result<Reservation> {
    loop {
        if let Some(held) = frames.try_reserve(len, reader) {
            return Ok(held);
        }
        if give_up() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no room for a frame of {len} bytes: {} bytes of frames being received are held \
                     (the budget is {})",
                    frames.used(),
                    frames.max()
                ),
            ));
        }
        std::thread::sleep(BUDGET_POLL);
    }
}

/// How long a leader waits for a whole message from a connected follower, while it has logs,
/// before it closes the connection and dials again. A follower answers every `Append` and
/// `Heartbeat`, and the leader sends one or the other at least every `heartbeat_ms` (100 ms),
/// so this is 30 missed answers.
///
/// Without it a connection that lost bytes mid-stream could hang forever: the receiver takes
/// payload bytes for a length prefix, and a length within `FRAME_BYTES_MAX` makes it wait for
/// up to 80 MiB that never come. The leader reading the follower's small acks would wait for
/// hours, since each keeps the socket from going idle; a follower stuck the same way stops
/// answering. Either way the leader hears no whole message, and the commit point stopped.
const PEER_SILENCE_MAX: Duration = Duration::from_secs(3);

/// Reads one whole message like [`read_msg_held`], with room for it in `frames`, but fails
/// with `TimedOut` once `give_up()` holds. It is asked after every read and at least every
/// [`GIVE_UP_POLL`] (the read timeout the caller set on the socket), however slowly bytes
/// trickle in, and while the frame waits for room. The buffer grows with the bytes that
/// arrive, at most [`GROW_STEP`] ahead of them, never with what the length prefix claims.
fn read_msg_unless(
    stream: &mut impl Read,
    frames: &Arc<FrameBudget>,
    reader: Reader,
    mut give_up: impl FnMut() -> bool,
) -> io::Result<(Message, Reservation)> {
    let mut buf = vec![0u8; 4];
    read_all_unless(stream, &mut buf, &mut give_up)?;
    let len = codec::frame_len(&buf).map_err(io::Error::other)?.ok_or_else(|| io::Error::other("short prefix"))?;
    let held = reserve_frame(frames, len, reader, &mut give_up)?;
    while buf.len() < len {
        let at = buf.len();
        buf.resize(len.min(at + GROW_STEP), 0);
        read_all_unless(stream, buf.get_mut(at..).unwrap_or_default(), &mut give_up)?;
    }
    match codec::decode(&Bytes::from(buf)).map_err(io::Error::other)? {
        Some((msg, used)) if used == len => Ok((msg, held)),
        _ => Err(io::Error::other("message does not decode")),
    }
}

/// How far a buffer read by [`read_msg_unless`] grows ahead of the bytes that arrived.
const GROW_STEP: usize = 4 << 20;

/// The read timeout of a socket read by [`read_msg_unless`].
const GIVE_UP_POLL: Duration = Duration::from_millis(100);

fn read_all_unless(stream: &mut impl Read, buf: &mut [u8], give_up: &mut impl FnMut() -> bool) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        if give_up() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no whole message from the peer in time"));
        }
        match stream.read(buf.get_mut(filled..).unwrap_or_default()) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(super) fn write_msg(stream: &mut TcpStream, msg: &Message) -> io::Result<()> {
    let mut bytes = Vec::new();
    codec::encode(msg, &mut bytes);
    stream.write_all(&bytes)
}

/// Serves an accepted connection: a follower's until it ends; a client's is handed over to
/// the client loop with `counted`.
fn serve_connection(
    shared: &Arc<Shared>,
    mut stream: TcpStream,
    counted: &mut Option<Counted>,
    awaiting: Option<AwaitingFirst>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // One deadline for the whole first message: a peer trickling a byte at a time keeps no
    // place longer than that.
    let deadline = Instant::now() + shared.config.handshake_timeout;
    stream.set_read_timeout(Some(GIVE_UP_POLL))?;
    // Its room in the frame budget is given back at once: the message is handled next (a
    // client's by the client loop's next pass).
    let (first, _) = read_msg_unless(&mut stream, &shared.frames, Reader::Untrusted, || Instant::now() >= deadline)?;
    // It sent a whole message: no longer among those closed to make room.
    drop(awaiting);
    stream.set_read_timeout(None)?;
    match first {
        Message::Hello { cluster_id, node_id, version_min, version_max, .. } => {
            let joined = if shared.config.role == Role::Follower {
                shared.join_cluster(cluster_id)
            } else if cluster_id == shared.cluster_id() {
                Ok(())
            } else {
                Err(format!("cluster id {cluster_id:#x} is not {:#x}", shared.cluster_id()))
            };
            if let Err(reason) = joined {
                let _ = write_msg(&mut stream, &Message::Refuse { reason: reason.clone() });
                return Err(io::Error::other(reason));
            }
            let version = version_max.min(PROTOCOL_VERSION_MAX);
            if version < version_min.max(PROTOCOL_VERSION_MIN) {
                let reason = format!("no common protocol version in {version_min}..={version_max}");
                let _ = write_msg(&mut stream, &Message::Refuse { reason: reason.clone() });
                return Err(io::Error::other(reason));
            }
            if shared.config.role != Role::Follower {
                let reason = "this node leads; it does not follow".to_owned();
                let _ = write_msg(&mut stream, &Message::Refuse { reason: reason.clone() });
                return Err(io::Error::other(reason));
            }
            let admitted = match shared.admit_leader(node_id, &stream) {
                Ok(admitted) => admitted,
                Err(reason) => {
                    let _ = write_msg(&mut stream, &Message::Refuse { reason: reason.clone() });
                    return Err(io::Error::other(reason));
                }
            };
            let welcome = Message::Welcome { cluster_id, node_id: shared.config.node_id, version };
            write_msg(&mut stream, &welcome)?;
            if let Ok(from) = stream.peer_addr() {
                *shared.following.lock() = Some((node_id, from.ip()));
            }
            follow(shared, &admitted, stream)
        }
        other => clients::serve_client(shared, stream, other, counted),
    }
}

/// A connection listed as waiting for its first message ([`Shared::await_first_message`]).
struct AwaitingFirst {
    pending: Arc<Mutex<std::collections::VecDeque<u64>>>,
    id: u64,
}

impl Drop for AwaitingFirst {
    fn drop(&mut self) {
        self.pending.lock().retain(|id| *id != self.id);
    }
}

/// A follower's connection from a node leading it ([`Shared::admit_leader`]).
struct LeaderConn {
    id: u64,
    heard: Arc<std::sync::atomic::AtomicU64>,
    from: String,
    closer: TcpStream,
    /// Where this connection's acks are written, once its follower loop runs.
    writer: Option<Arc<Mutex<TcpStream>>>,
}

/// A leader connection admitted; dropping it (when the connection ends) lets the next one in.
pub(super) struct AdmittedLeader {
    shared: Arc<Shared>,
    leader: NodeId,
    id: u64,
    heard: Arc<std::sync::atomic::AtomicU64>,
}

impl AdmittedLeader {
    /// Notes that the leader was just heard from.
    pub(super) fn heard(&self) {
        self.heard.store(self.shared.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for AdmittedLeader {
    fn drop(&mut self) {
        let mut conns = self.shared.leader_conns.lock();
        if conns.get(&self.leader).is_some_and(|c| c.id == self.id) {
            conns.remove(&self.leader);
        }
    }
}

/// A follower connection's side channel to its syncer thread: the logs that need a sync.
#[derive(Default)]
struct SyncQueue {
    logs: Mutex<(std::collections::BTreeSet<String>, bool)>, // (logs to sync, connection closed)
    wake: Condvar,
    /// A follower's syncer is syncing (set and cleared by it).
    busy: AtomicBool,
}

/// How often retention runs and the replication slots are saved.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

fn tick_loop(shared: &Arc<Shared>) {
    let mut maintained = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        // Unparked by a stop, so that a stopping node does not wait out the tick.
        std::thread::park_timeout(Duration::from_millis(10));
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        if maintained.elapsed() >= MAINTENANCE_INTERVAL {
            maintained = Instant::now();
            shared.maintain();
        }
        shared.reopen_fenced_logs();
        let now_ms = shared.now_ms();
        for slot in shared.all_slots().into_iter().filter(|s| s.lead.is_some()) {
            // Appends acknowledged as only written are synced soon, by the syncer thread: a
            // sync that takes seconds must not hold up heartbeats (followers would take the
            // silence for a lost leader and reconnect).
            if slot.log.durable_end() < slot.log.written_end() {
                shared.want_sync(&slot);
            }
            // Whatever the log holds is shipped, however it was written: records appended in
            // this process straight to the engine's log reach the core here.
            let (written, durable) = (slot.log.written_end(), slot.log.durable_end());
            let known = slot.lock().leader.as_ref().map(|l| (l.written_end(), l.durable_end()));
            if let Some((known_written, known_durable)) = known {
                if durable > known_durable {
                    shared.leader_input(&slot, LeaderInput::Synced { end: durable });
                }
                if written > known_written.max(durable) {
                    shared.leader_input(&slot, LeaderInput::Written { end: written });
                }
            }
            shared.leader_input(&slot, LeaderInput::Tick { now_ms });
            let now = Instant::now();
            shared.refuse_waiters(&slot, |w| w.deadline <= now, "");
        }
    }
}

/// What a client connection reads at once.
const CLIENT_READ_BUFFER_BYTES: usize = 64 << 10;

/// How long ago the record at `offset` was appended (its timestamp), in milliseconds: how far
/// in time a peer that lacks it is behind. 0 when it cannot be read.
fn age_ms(log: &Log, offset: u64, now_ms: u64) -> u64 {
    let first = log.read(offset, Visibility::Written).ok().and_then(|mut reader| reader.next());
    first.and_then(Result::ok).map_or(0, |record| now_ms.saturating_sub(record.timestamp_ms))
}

/// Bytes of `log` from `offset` to its written end, to the sparse index's precision.
fn bytes_after(log: &Log, offset: u64) -> u64 {
    log.segments()
        .iter()
        .filter(|s| s.end_offset() > offset)
        .map(|s| {
            let from = if s.base_offset() >= offset { 0 } else { s.seek(offset).0 };
            s.end_pos().saturating_sub(from)
        })
        .sum()
}

/// Bytes of a log's tail a leader reads at its start to rebuild what it remembers of the
/// log's idempotent producers (`recover_producers`).
///
/// Why the tail and not the whole log: a retry that matters after a restart is one of the
/// batches in flight when the leader stopped, and those are at the end of the log; reading
/// every batch header of a log of many gigabytes would delay every start for producers that
/// left long ago. 64 MiB holds the last few seconds of writes of a busy log, the 5 unanswered
/// batches of 4 MiB of thirteen producers at once, and reading it from the page cache takes
/// tens of milliseconds (from a cold disk, about half a second at 150 MB/s), once per log at
/// each leader start. A producer whose last batches are older than the tail is forgotten: its
/// next batch is taken as new, whatever its sequence.
pub const PRODUCER_SCAN_BYTES_MAX: u64 = 64 << 20;

/// Where a leader's rebuild of its producers read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Scanned {
    from: u64,
    batches: u64,
    bytes: u64,
}

/// Rebuilds what a leader remembers of the producers of `log` from the batch headers of its
/// last [`PRODUCER_SCAN_BYTES_MAX`] bytes (to the sparse index's precision, plus at most one
/// batch): at most that many bytes read, each frame's checksum verified, once per log at
/// start. A frame that cannot be read ends the rebuild where it is (logged): the leader then
/// remembers less, and does not refuse to start over it (reads and shipping report the
/// damage).
fn recover_producers(log: &Log) -> (Producers, Scanned) {
    let mut producers = Producers::default();
    let end = log.written_end();
    let from = tail_offset(log, PRODUCER_SCAN_BYTES_MAX);
    let mut scanned = Scanned { from, ..Scanned::default() };
    let mut next = from;
    // `from` bounds what is read; the end is never cut short, since the last batches are the
    // ones most likely to be sent again.
    while next < end {
        let batches = match log.read_batches(next, 4 << 20, Visibility::Written) {
            Ok(batches) => batches,
            Err(e) => {
                log_line(&format!("log {}: producers rebuilt only up to offset {next}: {e}", log.name()));
                break;
            }
        };
        let Some(last) = batches.last() else { break };
        next = last.end_offset;
        for batch in &batches {
            scanned.batches += 1;
            scanned.bytes += batch.frame.len() as u64;
            // The frame was verified by `read_batches`; its header is read again here only for
            // the producer fields, which `BatchRef` does not carry.
            if let Ok(Some((header, _))) = tern_segment::frame::decode_header_unverified(&batch.frame) {
                producers.recover(header.producer_id, header.sequence, batch.base_offset..batch.end_offset);
            }
        }
    }
    (producers, scanned)
}

/// The first offset of the last `bytes_max` bytes of `log` (to the sparse index's precision):
/// the log start when the log is smaller.
fn tail_offset(log: &Log, bytes_max: u64) -> u64 {
    let mut left = bytes_max;
    for segment in log.segments().iter().rev() {
        let (base, end) = (segment.base_offset(), segment.end_offset());
        let first_pos = segment.seek(base).0;
        let size = segment.end_pos().saturating_sub(first_pos);
        if size <= left {
            left -= size;
            continue;
        }
        // The smallest offset whose frame starts within the last `left` bytes: positions grow
        // with offsets, so a binary search over the sparse index finds it.
        let wanted_pos = segment.end_pos() - left;
        let (mut lo, mut hi) = (base, end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if segment.seek(mid).0 >= wanted_pos {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        return lo.max(log.start_offset()).min(end);
    }
    log.start_offset()
}

impl Shared {
    /// Retention and replication slots, every [`MAINTENANCE_INTERVAL`]. On a leader, each
    /// log's retention hold is the lowest durable end acknowledged by a follower still held
    /// for (one re-seeding, or more than `slot_lag_bytes_max` behind, is not), so retention
    /// never deletes what such a follower needs. On a follower it is the commit point learned
    /// from the leader.
    fn maintain(&self) {
        // Logs created in this process since the node started (an embedder's
        // `Engine::log(name)`) are served, and on a leader shipped, from now on.
        for name in self.logs.names() {
            if self.slot(&name).is_none() {
                if let Err(e) = self.log_state(&name) {
                    log_line(&format!("log {name}: {e}"));
                }
            }
        }
        for slot in self.all_slots() {
            let log = &slot.log;
            if let Some(lead) = &slot.lead {
                let (views, commit): (Vec<(NodeId, PeerView)>, u64) = {
                    let core = slot.lock();
                    let Some(leader) = core.leader.as_ref() else { continue };
                    let views =
                        lead.peers.iter().filter_map(|(peer, _)| Some((*peer, leader.peer_view(*peer)?))).collect();
                    (views, leader.commit_end())
                };
                let written = log.written_end();
                let mut held = Vec::with_capacity(views.len());
                for (peer, v) in &views {
                    let lag_bytes = if v.acked_durable >= written { 0 } else { bytes_after(log, v.acked_durable) };
                    let too_far = self.config.slot_lag_bytes_max.is_some_and(|max| lag_bytes > max);
                    // Said once each time a follower is let go, and once when it is held again.
                    let key = (slot.name.clone(), *peer);
                    let was_let_go = self.let_go.lock().contains(&key);
                    if too_far && !was_let_go {
                        self.let_go.lock().insert(key);
                        log_line(&format!(
                            "log {}: node {peer} is {lag_bytes} bytes behind, more than --slot-lag-bytes-max {}: \
                             retention no longer waits for it (it is re-seeded if it needs what is deleted)",
                            slot.name,
                            self.config.slot_lag_bytes_max.unwrap_or_default()
                        ));
                    } else if !too_far && was_let_go {
                        self.let_go.lock().remove(&key);
                        log_line(&format!("log {}: node {peer} is within the slot lag bound again", slot.name));
                    }
                    if v.gap.is_none() && !too_far {
                        held.push(v.acked_durable);
                    }
                }
                let hold = held.into_iter().min();
                // Never past the commit point either, even when every follower was let go:
                // records above it may exist nowhere else, and a follower re-seeded past them
                // would later move the commit point over records no node holds.
                log.set_retention_hold(Some(hold.map_or(commit, |h| h.min(commit))));
            } else {
                // A follower keeps what may still have to be cut: above the commit point it
                // learned, its records may have diverged from the leader's, and a cut back to
                // below its own start could never be made.
                let hold = slot.lock().follower.as_ref().map_or(0, Follower::retention_hold);
                log.set_retention_hold(Some(hold));
            }
            let start = log.start_offset();
            if let Err(e) = self.logs.apply_retention(log) {
                log_line(&format!("log {}: retention: {e}", slot.name));
            }
            if log.start_offset() > start {
                self.leader_input(&slot, LeaderInput::StartMoved { start: log.start_offset() });
            }
        }
        self.persist_slots();
    }

    /// Saves what each follower acknowledged, if it changed (leader, with a state directory).
    fn persist_slots(&self) {
        let Some((disk, path)) = &self.peer_slots_file else { return };
        // The slots first: a leader slot's opening reads the kept slots inside the slots' lock,
        // and roles change at any time now, not only at a start.
        let slots = self.all_slots();
        let mut kept = self.peer_slots.lock();
        let mut changed = false;
        for slot in slots {
            let Some(lead) = &slot.lead else { continue };
            let core = slot.lock();
            let Some(leader) = core.leader.as_ref() else { continue };
            for (peer, _) in &lead.peers {
                let Some(view) = leader.peer_view(*peer) else { continue };
                let state = match view.gap {
                    Some((from, to)) if from < to => SlotState::NeedsReseed { missing_from: from, missing_to: to },
                    _ => SlotState::Active,
                };
                let new = Slot { durable_end: view.acked_durable, epoch: leader.epoch(), state };
                if kept.get(&slot.name, *peer) != Some(&new) {
                    kept.set(&slot.name, *peer, new);
                    changed = true;
                }
            }
        }
        if changed {
            if let Err(e) = kept.store(&**disk, path) {
                log_line(&format!("cannot save the replication slots: {e}"));
            }
        }
    }

    fn metrics(&self) -> NodeMetrics {
        let now_ms = tern_wal::now_ms();
        let logs = self
            .all_slots()
            .iter()
            .map(|slot| {
                let core = slot.lock();
                let log = &slot.log;
                let written_end = log.written_end();
                let mut peers = Vec::new();
                if let (Some(leader), Some(lead)) = (core.leader.as_ref(), slot.lead.as_ref()) {
                    for (node, _) in &lead.peers {
                        let Some(view) = leader.peer_view(*node) else { continue };
                        let shipped = core.shipped.get(node).copied().unwrap_or_default();
                        let lag_records = written_end.saturating_sub(view.acked_durable);
                        peers.push(PeerMetrics {
                            node: *node,
                            connected: view.connected,
                            acked_written: view.acked_written,
                            acked_durable: view.acked_durable,
                            lag_records,
                            lag_bytes: if lag_records == 0 { 0 } else { bytes_after(log, view.acked_durable) },
                            lag_ms: if lag_records == 0 { 0 } else { age_ms(log, view.acked_durable, now_ms) },
                            shipped_raw_bytes: shipped.raw_bytes,
                            shipped_wire_bytes: shipped.wire_bytes,
                            chunks_shipped: shipped.chunks,
                            chunks_in_flight: view.chunks_in_flight,
                            bytes_in_flight: view.bytes_in_flight,
                            gap: view.gap,
                            reseeds: view.reseeds,
                        });
                    }
                }
                let commit_end = match (&core.leader, &core.follower) {
                    (Some(l), _) => l.commit_end(),
                    (_, Some(f)) => f.commit_end(),
                    _ => 0,
                };
                let applied = &slot.applied;
                let (reopens, reopen_failed) = self.disk_faults.lock().get(&slot.name).cloned().unwrap_or_default();
                let disk_fault = log.is_fenced().then(|| {
                    let what = match slot.lead {
                        None => "a write or sync failed; the log is reopened from its files after a backoff",
                        Some(_) => "a write or sync failed; the log takes no appends until the node restarts",
                    };
                    match reopen_failed {
                        Some(e) => format!("{what} (the last attempt failed: {e})"),
                        None => what.to_owned(),
                    }
                });
                LogMetrics {
                    log: slot.name.clone(),
                    role: if slot.lead.is_some() { Role::Leader } else { Role::Follower },
                    start_offset: log.start_offset(),
                    written_end,
                    durable_end: log.durable_end(),
                    commit_end,
                    peers,
                    chunks_applied: applied.chunks.load(Ordering::Relaxed),
                    bytes_applied: applied.bytes.load(Ordering::Relaxed),
                    follower_syncs: applied.syncs.load(Ordering::Relaxed),
                    follower_inline_syncs: applied.inline_syncs.load(Ordering::Relaxed),
                    records_synced: applied.records_synced.load(Ordering::Relaxed),
                    records_cut: applied.records_cut.load(Ordering::Relaxed),
                    quarantine: quarantine_files(log.dir()),
                    cuts_failed: applied.cuts_failed.load(Ordering::Relaxed),
                    gap: core.follower.as_ref().and_then(Follower::gap),
                    disk_fault,
                    reopens,
                    not_leading: core.leader.as_ref().and_then(|l| stop_reason(&slot.name, self.config.node_id, l)),
                    chunks_built: slot.chunks_built.load(Ordering::Relaxed),
                    producers: slot.producers.lock().len() as u64,
                    duplicate_batches: slot.duplicate_batches.load(Ordering::Relaxed),
                }
            })
            .collect();
        NodeMetrics {
            node: self.config.node_id,
            role: if self.default_lead.lock().is_some() { Role::Leader } else { Role::Follower },
            connections: self.connections.load(Ordering::SeqCst) as u64,
            reads_waiting: self.clients.reads_waiting() as u64,
            frame_bytes_held: self.frames.used() as u64,
            frame_memory_max: self.frames.max() as u64,
            logs,
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
    }
}

/// The names of the quarantine files in `dir`, sorted.
fn quarantine_files(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(tern_wal::QUARANTINE_FILE_PREFIX))
        .collect();
    names.sort();
    names
}

/// A node's metrics ([`Server::metrics`], and `tern status` as JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeMetrics {
    /// The node.
    pub node: NodeId,
    /// Its role.
    pub role: Role,
    /// Accepted connections open: clients, and on a follower its leader's.
    pub connections: u64,
    /// Client reads waiting for a first record ([`Client::read_wait`]).
    pub reads_waiting: u64,
    /// Bytes of the frame memory budget held by frames being received now.
    pub frame_bytes_held: u64,
    /// The frame memory budget ([`ServerConfig::frame_memory_max`]).
    pub frame_memory_max: u64,
    /// One entry per log, by name.
    pub logs: Vec<LogMetrics>,
}

/// Metrics of one log on one node. The three ends are its durability watermarks: what an ack
/// at each level ([`Acks`]) has promised is below the matching one.
#[derive(Debug, Clone, PartialEq)]
pub struct LogMetrics {
    /// The log.
    pub log: String,
    /// This node's role on it.
    pub role: Role,
    /// First offset still held.
    pub start_offset: u64,
    /// One past the last record written here (page cache): the `written` watermark.
    pub written_end: u64,
    /// One past the last record synced here: the `leader` (local fsync) watermark.
    pub durable_end: u64,
    /// The commit point: every record below it is synced on a quorum. The `quorum` watermark.
    pub commit_end: u64,
    /// Leader: each follower.
    pub peers: Vec<PeerMetrics>,
    /// Follower: chunks applied.
    pub chunks_applied: u64,
    /// Follower: frame bytes applied.
    pub bytes_applied: u64,
    /// Follower: syncs made (each covers every chunk applied before it).
    pub follower_syncs: u64,
    /// Follower: of those, the ones its connection's reader made itself instead of handing
    /// them to the syncer thread (up to 64 KiB received since the last sync, syncer idle).
    pub follower_inline_syncs: u64,
    /// Follower: records those syncs made durable.
    pub records_synced: u64,
    /// Follower: records cut because they diverged from a restarted leader's log (kept in
    /// quarantine files in the log's directory).
    pub records_cut: u64,
    /// The quarantine files in the log's directory (records cut from its end, kept: a
    /// follower's diverged tail, or what a forced promotion or an operator's repair cut), by
    /// name.
    pub quarantine: Vec<String>,
    /// Follower: cuts its leader asked for that failed (the log says why; while it lasts the
    /// leader asks again with each heartbeat and ships this log nothing).
    pub cuts_failed: u64,
    /// Follower: records it needed that its leader no longer held (`from..to`), and whether it
    /// was re-seeded past them (`true`) or stopped there (`false`, a data loss).
    pub gap: Option<(u64, u64, bool)>,
    /// Why the log takes no writes now, if a write or sync of it failed (its handle is
    /// fenced). A follower reopens it after a backoff; the reason then says why the last
    /// attempt failed, if it did.
    pub disk_fault: Option<String>,
    /// Follower: times the log was reopened from its files after a disk fault.
    pub reopens: u64,
    /// Leader: why this node stopped leading the log (a later epoch took over, or a follower
    /// holds records this node lost), if it did; appends to it are refused with this reason.
    pub not_leading: Option<String>,
    /// Leader: chunks read from the log and compressed. A chunk asked for by several followers
    /// from the same offset is built once: this stays below the sum of their `chunks_shipped`.
    pub chunks_built: u64,
    /// Leader: idempotent producers it remembers the last batches of.
    pub producers: u64,
    /// Leader: idempotent batches sent again and answered with the offsets they were first
    /// written at, without writing them twice.
    pub duplicate_batches: u64,
}

/// What a leader knows of one follower on one log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerMetrics {
    /// The follower.
    pub node: NodeId,
    /// Whether it is connected.
    pub connected: bool,
    /// Its acknowledged written end.
    pub acked_written: u64,
    /// Its acknowledged durable end.
    pub acked_durable: u64,
    /// Records the leader holds that it has not synced.
    pub lag_records: u64,
    /// The same in bytes, to the sparse index's precision (64 KiB by default).
    pub lag_bytes: u64,
    /// Age of the oldest record it has not synced, from that record's timestamp (0 when it
    /// lacks none).
    pub lag_ms: u64,
    /// Frame bytes shipped to it, before compression.
    pub shipped_raw_bytes: u64,
    /// Chunk bytes shipped to it, after compression.
    pub shipped_wire_bytes: u64,
    /// Chunks shipped to it.
    pub chunks_shipped: u64,
    /// Chunks sent and not yet acknowledged.
    pub chunks_in_flight: u64,
    /// Bytes sent and not yet acknowledged.
    pub bytes_in_flight: u64,
    /// Records it needs that this leader no longer holds (`from..to`): being re-seeded, or
    /// stopped when re-seeding is off.
    pub gap: Option<(u64, u64)>,
    /// Re-seeds it completed.
    pub reseeds: u64,
}

impl NodeMetrics {
    /// The metrics as a JSON document (what `tern status --json` prints).
    pub fn to_json(&self) -> String {
        let logs: Vec<serde_json::Value> = self
            .logs
            .iter()
            .map(|l| {
                let peers: Vec<serde_json::Value> = l
                    .peers
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "node": p.node, "connected": p.connected,
                            "acked_written": p.acked_written, "acked_durable": p.acked_durable,
                            "lag_records": p.lag_records, "lag_bytes": p.lag_bytes, "lag_ms": p.lag_ms,
                            "shipped_raw_bytes": p.shipped_raw_bytes, "shipped_wire_bytes": p.shipped_wire_bytes,
                            "chunks_shipped": p.chunks_shipped, "chunks_in_flight": p.chunks_in_flight,
                            "bytes_in_flight": p.bytes_in_flight,
                            "needs_records": p.gap.map(|(from, to)| serde_json::json!({ "from": from, "to": to })),
                            "reseeds": p.reseeds,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "log": l.log, "role": role_name(l.role), "start_offset": l.start_offset,
                    "written_end": l.written_end, "durable_end": l.durable_end, "commit_end": l.commit_end,
                    "peers": peers,
                    "chunks_applied": l.chunks_applied, "bytes_applied": l.bytes_applied,
                    "follower_syncs": l.follower_syncs, "follower_inline_syncs": l.follower_inline_syncs,
                    "records_synced": l.records_synced,
                    "records_cut": l.records_cut, "cuts_failed": l.cuts_failed, "quarantine": l.quarantine,
                    "gap": l.gap.map(|(from, to, reseeded)| {
                        serde_json::json!({ "from": from, "to": to, "outcome": if reseeded { "re-seeded" } else { "data loss" } })
                    }),
                    "disk_fault": l.disk_fault, "reopens": l.reopens, "not_leading": l.not_leading,
                    "chunks_built": l.chunks_built,
                    "producers": l.producers, "duplicate_batches": l.duplicate_batches,
                })
            })
            .collect();
        serde_json::json!({
            "node": self.node, "role": role_name(self.role), "connections": self.connections,
            "reads_waiting": self.reads_waiting, "frame_bytes_held": self.frame_bytes_held,
            "frame_memory_max": self.frame_memory_max, "logs": logs,
        })
        .to_string()
    }
}

fn status_json(shared: &Arc<Shared>) -> String {
    let text = shared.metrics().to_json();
    match shared.logs.status_extra() {
        None => text,
        Some(extra) => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(mut doc) => {
                doc["cluster"] = extra;
                doc.to_string()
            }
            Err(_) => text,
        },
    }
}

/// What an append's acknowledgement promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// First offset of the batch.
    pub start: u64,
    /// One past its last offset.
    pub end: u64,
    /// The level reached: at least the one asked for.
    pub durability: Acks,
    /// Nodes known to have the batch synced when the ack was sent (the leader included).
    pub copies: u8,
    /// Nodes in the cluster.
    pub nodes: u8,
}

impl std::fmt::Display for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.durability {
            Acks::Written => write!(f, "written on the leader, not yet synced"),
            Acks::Leader => write!(f, "synced on the leader ({} of {} nodes)", self.copies, self.nodes),
            Acks::Quorum => write!(f, "synced on a quorum ({} of {} nodes)", self.copies, self.nodes),
        }
    }
}

/// How long a [`Client`] call waits for the node by default: longer than a node's own
/// commit timeout (30 s in `tern serve`), so a quorum append fails with the node's reason.
pub const CLIENT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);

/// A blocking client of a node.
pub struct Client {
    stream: TcpStream,
    /// The same socket, read through a buffer: one read takes a whole reply.
    reader: io::BufReader<TcpStream>,
}

impl Client {
    /// Connects to a node.
    ///
    /// # Errors
    /// Connection errors.
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        Client::connect_timeout(addr, Duration::from_secs(5))
    }

    /// Connects to a node, waiting at most `timeout` for the connection.
    ///
    /// # Errors
    /// Connection errors; a zero `timeout`.
    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(CLIENT_TIMEOUT_DEFAULT))?;
        stream.set_write_timeout(Some(CLIENT_TIMEOUT_DEFAULT))?;
        let reader = io::BufReader::with_capacity(CLIENT_READ_BUFFER_BYTES, stream.try_clone()?);
        Ok(Client { stream, reader })
    }

    /// How long a call waits for the node's answer (and to send its request) before failing
    /// with `TimedOut`; `None` waits forever. Default [`CLIENT_TIMEOUT_DEFAULT`]. After a
    /// timeout the connection is out of step: connect again.
    ///
    /// # Errors
    /// A zero duration.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)
    }

    fn call(&mut self, msg: &Message) -> io::Result<Message> {
        self.send(msg)?;
        match self.receive()? {
            Message::Refuse { reason } => Err(io::Error::other(reason)),
            reply => Ok(reply),
        }
    }

    /// Sends one request without waiting for its reply (replies come in request order).
    fn send(&mut self, msg: &Message) -> io::Result<()> {
        write_msg(&mut self.stream, msg)
    }

    /// The next reply, a refusal included.
    fn receive(&mut self) -> io::Result<Message> {
        read_msg(&mut self.reader)
    }

    /// Appends `records` as one batch; returns the offsets and the durability achieved
    /// (1: synced on the leader, 2: synced on a quorum).
    ///
    /// # Errors
    /// The node's refusal, or connection errors.
    pub fn append(&mut self, log: &str, records: Vec<Bytes>, quorum: bool) -> io::Result<(u64, u64, u8)> {
        let acks = if quorum { Acks::Quorum } else { Acks::Leader };
        let receipt = self.append_acks(log, records, acks)?;
        Ok((receipt.start, receipt.end, receipt.durability.as_u8()))
    }

    /// Appends `records` as one batch, acknowledged once `acks` holds; returns the receipt.
    ///
    /// # Errors
    /// The node's refusal (a follower, a quorum not reached in time), or connection errors.
    pub fn append_acks(&mut self, log: &str, records: Vec<Bytes>, acks: Acks) -> io::Result<Receipt> {
        match self.call(&Message::ClientAppend { log: log.to_owned(), acks, records })? {
            Message::ClientAppended { start, end, durability, copies, nodes } => {
                Ok(Receipt { start, end, durability, copies, nodes })
            }
            _ => Err(io::Error::other("unexpected reply")),
        }
    }

    /// Appends `records` as batch `sequence` of producer `producer_id` (not 0), acknowledged
    /// once `acks` holds. The leader writes a batch of a producer once: sent again with the
    /// same producer and sequence (after a broken connection, a timeout, or a leader restart),
    /// it is answered with the offsets it was first written at, once `acks` holds for them
    /// (PROTOCOL.md "Idempotent appends"). [`Producer`] numbers the batches and sends them
    /// again by itself.
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// use tern_replication::driver::Client;
    /// use tern_replication::message::Acks;
    /// let mut client = Client::connect("127.0.0.1:7400".parse().unwrap())?;
    /// let batch = vec![bytes::Bytes::from_static(b"order 1")];
    /// let first = client.append_idempotent("orders", batch.clone(), Acks::Quorum, 42, 0)?;
    /// let again = client.append_idempotent("orders", batch, Acks::Quorum, 42, 0)?;
    /// assert_eq!((first.start, first.end), (again.start, again.end)); // stored once
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The node's refusal (a follower; a sequence older than the last batches the leader
    /// remembers of the producer; one reused for a batch of another size), or connection
    /// errors.
    ///
    /// # Panics
    /// `producer_id` 0, which a batch header reads as "no producer".
    pub fn append_idempotent(
        &mut self,
        log: &str,
        records: Vec<Bytes>,
        acks: Acks,
        producer_id: u64,
        sequence: u64,
    ) -> io::Result<Receipt> {
        let msg = Message::ClientAppendIdempotent { log: log.to_owned(), acks, producer_id, sequence, records };
        match self.call(&msg)? {
            Message::ClientAppended { start, end, durability, copies, nodes } => {
                Ok(Receipt { start, end, durability, copies, nodes })
            }
            _ => Err(io::Error::other("unexpected reply")),
        }
    }

    /// Committed records from `from`, at most `max`: (first offset, commit point, records).
    ///
    /// The records are consecutive from the first offset, which is past `from` when control
    /// records (a leader's record at the start of its epoch) came first: readers never see
    /// those, and a reply ends before one. Read on from the first offset + the records' count.
    /// With no record, the first offset is where the next read should begin.
    ///
    /// # Errors
    /// The node's refusal, or connection errors.
    pub fn read(&mut self, log: &str, from: u64, max: u32) -> io::Result<(u64, u64, Vec<Bytes>)> {
        self.read_from(log, from, max, false)
    }

    /// Records from `from`, at most `max`, committed ones only unless `uncommitted` (records
    /// the node holds that may still be lost: for tooling): (first offset, commit point,
    /// records).
    ///
    /// # Errors
    /// The node's refusal, or connection errors.
    pub fn read_from(
        &mut self,
        log: &str,
        from: u64,
        max: u32,
        uncommitted: bool,
    ) -> io::Result<(u64, u64, Vec<Bytes>)> {
        self.read_wait(log, from, max, uncommitted, Duration::ZERO)
    }

    /// Like [`Client::read_from`], but when the node has no record from `from` yet, it waits
    /// up to `wait` (at most 30 s) for one before answering with none: a tail without polling.
    ///
    /// # Errors
    /// The node's refusal, or connection errors.
    pub fn read_wait(
        &mut self,
        log: &str,
        from: u64,
        max: u32,
        uncommitted: bool,
        wait: Duration,
    ) -> io::Result<(u64, u64, Vec<Bytes>)> {
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).min(CLIENT_READ_WAIT_MS_MAX);
        match self.call(&Message::ClientRead { log: log.to_owned(), from, max, uncommitted, wait_ms })? {
            Message::ClientRecords { start, commit_end, records } => Ok((start, commit_end, records)),
            _ => Err(io::Error::other("unexpected reply")),
        }
    }

    /// The node's status as JSON.
    ///
    /// # Errors
    /// Connection errors.
    pub fn status(&mut self) -> io::Result<String> {
        match self.call(&Message::ClientStatus)? {
            Message::ClientStatusReply { json } => Ok(json),
            _ => Err(io::Error::other("unexpected reply")),
        }
    }
}
