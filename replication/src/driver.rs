//! The real driver: the protocol core ([`crate::proto`]) over threads, `std::net` TCP and the
//! real logs. One [`Server`] per node: a leader ships every log to its followers and serves
//! client appends; a follower applies what its leader ships and refuses client appends with the
//! leader's address. Both serve committed reads and status.
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
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_wal::{Durability, Log, Visibility};

use crate::codec;
use crate::message::{Message, NodeId, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use crate::proto::{Follower, FollowerAction, FollowerInput, Leader, LeaderAction, LeaderConfig, LeaderInput, Quorum};

/// Where the driver finds logs by name (the engine implements it).
pub trait Logs: Send + Sync + 'static {
    /// Opens the log `name`, creating it when missing.
    ///
    /// # Errors
    /// A one-line reason.
    fn open(&self, name: &str) -> Result<Log, String>;
    /// Names of the logs stored.
    fn names(&self) -> Vec<String>;
}

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Takes client appends and ships to the followers.
    Leader,
    /// Applies what the leader ships.
    Follower,
}

/// Settings of a node.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Every node of a cluster has the same; connections from another cluster are refused.
    pub cluster_id: u64,
    /// This node.
    pub node_id: NodeId,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Leader or follower.
    pub role: Role,
    /// The followers (for a leader).
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// Copies that commit a record.
    pub quorum: Quorum,
    /// Most connections served at once.
    pub connections_max: usize,
    /// Time a new connection has to complete its handshake.
    pub handshake_timeout: Duration,
    /// How long a quorum append waits for its commit before failing.
    pub commit_timeout: Duration,
}

struct LogState {
    log: Log,
    leader: Option<Leader>,
    follower: Option<Follower>,
}

struct Shared {
    config: ServerConfig,
    logs: Arc<dyn Logs>,
    state: Mutex<BTreeMap<String, LogState>>,
    committed: Condvar,
    /// Leader: the writer channel of each connected follower.
    peers: Mutex<BTreeMap<NodeId, mpsc::SyncSender<Vec<u8>>>>,
    stop: AtomicBool,
    connections: AtomicUsize,
    started: Instant,
    shipped_raw_bytes: std::sync::atomic::AtomicU64,
    shipped_wire_bytes: std::sync::atomic::AtomicU64,
    /// Accepted connections, so that stopping closes them.
    accepted: Mutex<Vec<TcpStream>>,
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

fn log_line(what: &str) {
    eprintln!("tern serve: {what}");
}

impl Server {
    /// Starts a node: binds the listener, opens every stored log, and for a leader starts
    /// dialing the followers.
    ///
    /// # Errors
    /// Binding the address, or opening a stored log.
    pub fn start(config: ServerConfig, logs: Arc<dyn Logs>) -> io::Result<Server> {
        let listener = TcpListener::bind(config.listen)?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            logs,
            state: Mutex::new(BTreeMap::new()),
            committed: Condvar::new(),
            peers: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            started: Instant::now(),
            shipped_raw_bytes: std::sync::atomic::AtomicU64::new(0),
            shipped_wire_bytes: std::sync::atomic::AtomicU64::new(0),
            accepted: Mutex::new(Vec::new()),
        });
        for name in shared.logs.names() {
            shared.log_state(&name).map_err(io::Error::other)?;
        }
        let mut threads = Vec::new();
        let accept = shared.clone();
        threads.push(std::thread::spawn(move || accept_loop(&accept, &listener)));
        if shared.config.role == Role::Leader {
            for (peer, addr) in shared.config.peers.clone() {
                let dial = shared.clone();
                threads.push(std::thread::spawn(move || dial_loop(&dial, peer, addr)));
            }
            let tick = shared.clone();
            threads.push(std::thread::spawn(move || tick_loop(&tick)));
        }
        Ok(Server { shared, local_addr, threads })
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Bytes shipped so far, before and after compression.
    pub fn ship_stats(&self) -> ShipStats {
        ShipStats {
            raw_bytes: self.shared.shipped_raw_bytes.load(Ordering::Relaxed),
            wire_bytes: self.shared.shipped_wire_bytes.load(Ordering::Relaxed),
        }
    }

    /// For a leader: where each follower stands on `log`.
    pub fn peer_lag(&self, log: &str) -> Vec<PeerLag> {
        let state = self.shared.lock();
        let Some(s) = state.get(log) else { return Vec::new() };
        let Some(leader) = s.leader.as_ref() else { return Vec::new() };
        let end = s.log.written_end();
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

    /// The commit point of `log` as this node knows it.
    pub fn commit_end(&self, log: &str) -> u64 {
        let state = self.shared.lock();
        state.get(log).map_or(0, |s| match (&s.leader, &s.follower) {
            (Some(l), _) => l.commit_end(),
            (_, Some(f)) => f.commit_end(),
            _ => 0,
        })
    }

    /// Stops accepting and dialing, and waits for the node's threads.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Close every connection, accepted or dialed, so blocked reads return; wake the accept
        // loop; then wait for the threads. Connection threads let go of the node's logs (and
        // so of its directory lock) within a bounded wait.
        for stream in self.shared.accepted.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_millis(200));
        self.shared.committed.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.shared.connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Sync every log so that a clean stop leaves nothing pending.
        if let Ok(state) = self.shared.state.lock() {
            for s in state.values() {
                let _ = s.log.sync();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.halt();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, LogState>> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state of log `name`, opening (creating) the log the first time.
    fn log_state(&self, name: &str) -> Result<(), String> {
        let mut state = self.lock();
        if state.contains_key(name) {
            return Ok(());
        }
        let log = self.logs.open(name)?;
        let (written, durable) = (log.written_end(), log.durable_end());
        let (leader, follower) = match self.config.role {
            Role::Leader => {
                let config = LeaderConfig {
                    log: name.to_owned(),
                    epoch: 1,
                    peers: self.config.peers.iter().map(|(id, _)| *id).collect(),
                    quorum: self.config.quorum,
                    inflight_bytes_max: 8 << 20,
                    chunk_bytes_max: 1 << 20,
                    heartbeat_ms: 100,
                    resend_ms: 2_000,
                };
                // What is durable here when the node starts is not known to be on a quorum.
                (Some(Leader::new(config, written, durable, 0)), None)
            }
            Role::Follower => (None, Some(Follower::new(name.to_owned(), 0, written, durable))),
        };
        state.insert(name.to_owned(), LogState { log, leader, follower });
        let connected: Vec<NodeId> = self.peers.lock().map(|p| p.keys().copied().collect()).unwrap_or_default();
        for peer in connected {
            self.leader_input(&mut state, name, LeaderInput::Connected { peer, written_end: 0, durable_end: 0 });
        }
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Feeds a leader input for `name` and carries out the actions, with the state locked.
    fn leader_input(&self, state: &mut BTreeMap<String, LogState>, name: &str, input: LeaderInput) {
        let Some(s) = state.get_mut(name) else { return };
        let Some(leader) = s.leader.as_mut() else { return };
        leader.handle(input);
        while let Some(action) = leader.poll_action() {
            match action {
                LeaderAction::Ship { peer, from, bytes_max, commit_end } => {
                    let chunk = match read_chunk(&s.log, from, bytes_max) {
                        Ok(Some(chunk)) => chunk,
                        Ok(None) => continue,
                        Err(e) => {
                            log_line(&format!("log {name}: cannot read from {from} for node {peer}: {e}"));
                            continue;
                        }
                    };
                    let (base, end) = (chunk.base_offset, chunk.end_offset);
                    let raw_bytes = u64::from(chunk.raw_len_bytes);
                    let len_bytes = chunk.bytes.len() as u64;
                    let msg = Message::Append { log: name.to_owned(), epoch: 1, commit_end, chunk };
                    if self.send_to(peer, &msg) {
                        self.shipped_raw_bytes.fetch_add(raw_bytes, Ordering::Relaxed);
                        self.shipped_wire_bytes.fetch_add(len_bytes, Ordering::Relaxed);
                        leader.handle(LeaderInput::Shipped { peer, base_offset: base, end_offset: end, len_bytes });
                    }
                }
                LeaderAction::Send { peer, msg } => {
                    self.send_to(peer, &msg);
                }
                LeaderAction::Committed { .. } => self.committed.notify_all(),
            }
        }
    }

    fn send_to(&self, peer: NodeId, msg: &Message) -> bool {
        let mut bytes = Vec::new();
        codec::encode(msg, &mut bytes);
        let peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        peers.get(&peer).is_some_and(|tx| tx.try_send(bytes).is_ok())
    }
}

/// Reads whole batches of `log` from `from` (at most `bytes_max` bytes unless one batch is
/// larger) into one chunk, zstd-compressed when that pays: what a [`LeaderAction::Ship`] asks
/// for. `Ok(None)` when nothing is there to ship.
///
/// # Errors
/// Reading the log (an offset out of range, a damaged frame).
pub fn read_chunk(log: &Log, from: u64, bytes_max: u64) -> tern_wal::Result<Option<crate::message::Chunk>> {
    let batches = log.read_batches(from, bytes_max, Visibility::Written)?;
    let (Some(first), Some(last)) = (batches.first(), batches.last()) else { return Ok(None) };
    let (base, end) = (first.base_offset, last.end_offset);
    let mut frames = Vec::with_capacity(batches.iter().map(|b| b.frame.len()).sum());
    for b in &batches {
        frames.extend_from_slice(&b.frame);
    }
    Ok(Some(codec::make_chunk(Bytes::from(frames), base, end, 1, 0.1)))
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        if shared.connections.fetch_add(1, Ordering::SeqCst) >= shared.config.connections_max {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            let mut stream = stream;
            let _ = write_msg(&mut stream, &Message::Refuse { reason: "too many connections".into() });
            continue;
        }
        if let Ok(clone) = stream.try_clone() {
            let mut accepted = shared.accepted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            accepted.retain(|s| s.peer_addr().is_ok());
            accepted.push(clone);
        }
        let shared = shared.clone();
        let closer = stream.try_clone();
        std::thread::spawn(move || {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            if let Err(e) = serve_connection(&shared, stream) {
                // A client that hangs up between requests is not an error.
                if !shared.stop.load(Ordering::SeqCst) && e.kind() != io::ErrorKind::UnexpectedEof {
                    log_line(&format!("connection from {peer} closed: {e}"));
                }
            }
            // Dropping `stream` does not close the socket: the clone in `accepted` keeps it
            // open. Without this shutdown, a peer whose bytes were refused (a damaged frame, a
            // wrong cluster id) never saw the connection close, and a leader whose stream a
            // follower had found corrupt kept shipping into a connection nobody read.
            if let Ok(closer) = closer {
                let _ = closer.shutdown(Shutdown::Both);
            }
            shared.connections.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Reads one whole message, bounding its size before buffering the body.
fn read_msg(stream: &mut TcpStream) -> io::Result<Message> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix)?;
    let len = codec::frame_len(&prefix).map_err(io::Error::other)?.ok_or_else(|| io::Error::other("short prefix"))?;
    let mut buf = vec![0u8; len];
    buf[..4].copy_from_slice(&prefix);
    stream.read_exact(&mut buf[4..])?;
    match codec::decode(&Bytes::from(buf)).map_err(io::Error::other)? {
        Some((msg, used)) if used == len => Ok(msg),
        _ => Err(io::Error::other("message does not decode")),
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

/// Reads one whole message like [`read_msg`], but fails with `TimedOut` once `give_up()` holds.
/// It is asked after every read and at least every 100 ms, however slowly bytes trickle in.
fn read_msg_unless(stream: &mut TcpStream, mut give_up: impl FnMut() -> bool) -> io::Result<Message> {
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = vec![0u8; 4];
    read_all_unless(stream, &mut buf, &mut give_up)?;
    let len = codec::frame_len(&buf).map_err(io::Error::other)?.ok_or_else(|| io::Error::other("short prefix"))?;
    buf.resize(len, 0);
    read_all_unless(stream, &mut buf[4..], &mut give_up)?;
    match codec::decode(&Bytes::from(buf)).map_err(io::Error::other)? {
        Some((msg, used)) if used == len => Ok(msg),
        _ => Err(io::Error::other("message does not decode")),
    }
}

fn read_all_unless(stream: &mut TcpStream, buf: &mut [u8], give_up: &mut impl FnMut() -> bool) -> io::Result<()> {
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

fn write_msg(stream: &mut TcpStream, msg: &Message) -> io::Result<()> {
    let mut bytes = Vec::new();
    codec::encode(msg, &mut bytes);
    stream.write_all(&bytes)
}

fn serve_connection(shared: &Arc<Shared>, mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(shared.config.handshake_timeout))?;
    let first = read_msg(&mut stream)?;
    stream.set_read_timeout(None)?;
    match first {
        Message::Hello { cluster_id, node_id, version_min, version_max, .. } => {
            if cluster_id != shared.config.cluster_id {
                let reason = format!("cluster id {cluster_id:#x} is not {:#x}", shared.config.cluster_id);
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
            let welcome = Message::Welcome { cluster_id, node_id: shared.config.node_id, version };
            write_msg(&mut stream, &welcome)?;
            follow(shared, node_id, stream)
        }
        other => serve_client(shared, stream, other),
    }
}

/// Follower: apply what the leader ships, acknowledge after each apply and each sync.
/// A follower connection's side channel to its syncer thread: the logs that need a sync.
#[derive(Default)]
struct SyncQueue {
    logs: Mutex<(std::collections::BTreeSet<String>, bool)>, // (logs to sync, connection closed)
    wake: Condvar,
}

fn follow(shared: &Arc<Shared>, leader: NodeId, stream: TcpStream) -> io::Result<()> {
    let writer = Arc::new(Mutex::new(stream.try_clone()?));
    let queue = Arc::new(SyncQueue::default());
    // Syncs run on their own thread, so chunks keep being applied while one runs and the next
    // sync covers all of them: fsync-batched durability.
    let syncer = {
        let (shared, writer, queue) = (shared.clone(), writer.clone(), queue.clone());
        std::thread::spawn(move || sync_loop(&shared, &writer, &queue))
    };
    let result = follow_messages(shared, leader, stream, &writer, &queue);
    {
        let mut logs = queue.logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        logs.1 = true;
        queue.wake.notify_all();
    }
    let _ = syncer.join();
    result
}

fn sync_loop(shared: &Arc<Shared>, writer: &Arc<Mutex<TcpStream>>, queue: &SyncQueue) {
    loop {
        let names = {
            let mut logs = queue.logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            while logs.0.is_empty() && !logs.1 {
                logs = queue.wake.wait(logs).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            // Syncs asked for before the connection closed are still carried out and reported
            // to the core. The follower core asks for one sync at a time and waits for its
            // `Synced`, across connections: a request dropped here (by returning as soon as
            // the connection closed, or when an ack could not be sent) left it waiting
            // forever, so the follower's durable end, and with it the leader's commit point,
            // never moved again on any later connection.
            if logs.0.is_empty() {
                return;
            }
            std::mem::take(&mut logs.0)
        };
        for name in names {
            let log = shared.lock().get(&name).map(|s| s.log.clone());
            let Some(log) = log else { continue };
            if let Err(e) = log.sync() {
                log_line(&format!("log {name}: sync failed: {e}"));
                return;
            }
            let durable_end = log.durable_end();
            // An ack that cannot be sent (the connection broke) is fine: the next connection
            // starts with an `Ack` of where each log stands.
            let _ = follower_input(shared, writer, queue, &name, FollowerInput::Synced { durable_end });
        }
    }
}

fn follow_messages(
    shared: &Arc<Shared>,
    leader: NodeId,
    stream: TcpStream,
    writer: &Arc<Mutex<TcpStream>>,
    queue: &SyncQueue,
) -> io::Result<()> {
    // Tell the leader where each log stands.
    {
        let state = shared.lock();
        for (name, s) in state.iter() {
            let msg = Message::Ack {
                log: name.clone(),
                epoch: s.follower.as_ref().map_or(0, Follower::epoch),
                written_end: s.log.written_end(),
                durable_end: s.log.durable_end(),
            };
            write_msg(&mut writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner), &msg)?;
        }
    }
    let mut reader = stream;
    loop {
        let msg = read_msg(&mut reader)?;
        let name = match &msg {
            Message::Append { log, .. } => log.clone(),
            Message::Heartbeat { logs, .. } => {
                for (name, _, _) in logs {
                    shared.log_state(name).map_err(io::Error::other)?;
                    let input = FollowerInput::Received { from: leader, msg: msg.clone() };
                    follower_input(shared, writer, queue, name, input)?;
                }
                continue;
            }
            _ => continue,
        };
        shared.log_state(&name).map_err(io::Error::other)?;
        follower_input(shared, writer, queue, &name, FollowerInput::Received { from: leader, msg })?;
    }
}

fn follower_input(
    shared: &Arc<Shared>,
    writer: &Arc<Mutex<TcpStream>>,
    queue: &SyncQueue,
    name: &str,
    input: FollowerInput,
) -> io::Result<()> {
    let mut pending = vec![input];
    while let Some(input) = pending.pop() {
        let mut sends = Vec::new();
        let mut sync: Option<Log> = None;
        {
            let mut state = shared.lock();
            let Some(s) = state.get_mut(name) else { return Ok(()) };
            let Some(follower) = s.follower.as_mut() else { return Ok(()) };
            follower.handle(input);
            while let Some(action) = follower.poll_action() {
                match action {
                    FollowerAction::Apply { chunk } => {
                        let before = s.log.written_end();
                        let applied = codec::chunk_frames(&chunk)
                            .map_err(|e| e.to_string())
                            .and_then(|frames| s.log.append_frames(&frames).map_err(|e| e.to_string()));
                        if let Err(e) = &applied {
                            log_line(&format!(
                                "log {name}: chunk {}..{} refused: {e}",
                                chunk.base_offset, chunk.end_offset
                            ));
                        }
                        let after = s.log.written_end();
                        let next = if after == before && applied.is_err() {
                            FollowerInput::ApplyFailed
                        } else {
                            FollowerInput::Applied { written_end: after }
                        };
                        follower.handle(next);
                    }
                    FollowerAction::Sync => sync = Some(s.log.clone()),
                    FollowerAction::Send { msg, .. } => sends.push(msg),
                }
            }
        }
        // The sync is queued before the acks are sent: if sending fails, the core still gets
        // the `Synced` it waits for (see `sync_loop`).
        if sync.is_some() {
            let mut logs = queue.logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            logs.0.insert(name.to_owned());
            queue.wake.notify_one();
        }
        for msg in sends {
            write_msg(&mut writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner), &msg)?;
        }
    }
    Ok(())
}

/// Leader: dial a follower, handshake, then stream messages both ways until it breaks.
fn dial_loop(shared: &Arc<Shared>, peer: NodeId, addr: SocketAddr) {
    let mut backoff = Duration::from_millis(50);
    while !shared.stop.load(Ordering::SeqCst) {
        let mut welcomed = false;
        match connect_peer(shared, peer, addr, &mut welcomed) {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => {
                if !shared.stop.load(Ordering::SeqCst) && (welcomed || backoff >= Duration::from_millis(800)) {
                    log_line(&format!("node {peer} at {addr}: {e}"));
                }
                // Back off from a peer that cannot be reached, not from one that was reached and
                // then lost. A connection ends with an error, so without this the backoff only
                // ever grew: after a few broken connections every reconnect waited 2 s, and
                // quorum appends stalled that long after each network blip.
                if welcomed {
                    backoff = Duration::from_millis(50);
                }
            }
        }
        {
            let mut state = shared.lock();
            if let Ok(mut peers) = shared.peers.lock() {
                peers.remove(&peer);
            }
            let names: Vec<String> = state.keys().cloned().collect();
            for name in names {
                shared.leader_input(&mut state, &name, LeaderInput::Disconnected { peer });
            }
        }
        let resume = Instant::now() + backoff;
        while Instant::now() < resume && !shared.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Sets `welcomed` once the follower has answered the handshake.
fn connect_peer(shared: &Arc<Shared>, peer: NodeId, addr: SocketAddr, welcomed: &mut bool) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_nodelay(true)?;
    if shared.stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    {
        // Drop the clones of connections closed since, as `accept_loop` does: otherwise a
        // leader that accepts no new client kept one open descriptor per reconnect.
        let mut accepted = shared.accepted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        accepted.retain(|s| s.peer_addr().is_ok());
        accepted.push(stream.try_clone()?);
    }
    let hello = Message::Hello {
        cluster_id: shared.config.cluster_id,
        node_id: shared.config.node_id,
        version_min: PROTOCOL_VERSION_MIN,
        version_max: PROTOCOL_VERSION_MAX,
        logs: Vec::new(),
    };
    write_msg(&mut stream, &hello)?;
    stream.set_read_timeout(Some(shared.config.handshake_timeout))?;
    match read_msg(&mut stream)? {
        Message::Welcome { cluster_id, .. } if cluster_id == shared.config.cluster_id => *welcomed = true,
        Message::Refuse { reason } => return Err(io::Error::other(format!("refused: {reason}"))),
        _ => return Err(io::Error::other("unexpected handshake answer")),
    }
    stream.set_read_timeout(None)?;
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4096);
    let mut writer = stream.try_clone()?;
    let writer_thread = std::thread::spawn(move || {
        while let Ok(bytes) = rx.recv() {
            if writer.write_all(&bytes).is_err() {
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
        }
    });
    {
        let mut state = shared.lock();
        shared.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(peer, tx);
        let names: Vec<String> = state.keys().cloned().collect();
        for name in names {
            shared.leader_input(&mut state, &name, LeaderInput::Connected { peer, written_end: 0, durable_end: 0 });
        }
    }
    let mut heard = Instant::now();
    let result = loop {
        if shared.stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        // A leader without logs sends no heartbeats, so its follower has nothing to answer.
        let silent = || heard.elapsed() >= PEER_SILENCE_MAX && !shared.lock().is_empty();
        let msg = match read_msg_unless(&mut stream, || silent() || shared.stop.load(Ordering::SeqCst)) {
            Ok(msg) => msg,
            Err(e) => break Err(e),
        };
        heard = Instant::now();
        if let Message::Ack { log, .. } = &msg {
            let log = log.clone();
            if shared.log_state(&log).is_ok() {
                let mut state = shared.lock();
                shared.leader_input(&mut state, &log, LeaderInput::Received { peer, msg });
            }
        }
    };
    let _ = stream.shutdown(Shutdown::Both);
    shared.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&peer);
    let _ = writer_thread.join();
    result
}

fn tick_loop(shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10));
        let now_ms = shared.now_ms();
        let mut state = shared.lock();
        let names: Vec<String> = state.keys().cloned().collect();
        for name in names {
            shared.leader_input(&mut state, &name, LeaderInput::Tick { now_ms });
        }
    }
}

/// A client connection: appends (leader only), committed reads, status.
fn serve_client(shared: &Arc<Shared>, mut stream: TcpStream, first: Message) -> io::Result<()> {
    let mut next = Some(first);
    loop {
        let msg = match next.take() {
            Some(msg) => msg,
            None => match read_msg(&mut stream) {
                Ok(msg) => msg,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            },
        };
        let reply = match msg {
            Message::ClientAppend { log, quorum, records } => client_append(shared, &log, quorum, &records),
            Message::ClientRead { log, from, max } => client_read(shared, &log, from, max),
            Message::ClientStatus => Message::ClientStatusReply { json: status_json(shared) },
            _ => Message::Refuse { reason: "unexpected message".into() },
        };
        write_msg(&mut stream, &reply)?;
    }
}

fn client_append(shared: &Arc<Shared>, name: &str, quorum: bool, records: &[Bytes]) -> Message {
    if shared.config.role != Role::Leader {
        let leader = "the leader".to_owned();
        return Message::Refuse { reason: format!("node {} is a follower; append to {leader}", shared.config.node_id) };
    }
    if let Err(e) = shared.log_state(name) {
        return Message::Refuse { reason: e };
    }
    let log = match shared.lock().get(name) {
        Some(s) => s.log.clone(),
        None => return Message::Refuse { reason: format!("no log {name}") },
    };
    let values: Vec<&[u8]> = records.iter().map(|r| r.as_ref()).collect();
    // Written first, so the batch ships in parallel with the local sync.
    let offsets = match log.append(&values, Durability::None) {
        Ok(offsets) => offsets,
        Err(e) => return Message::Refuse { reason: e.to_string() },
    };
    {
        let mut state = shared.lock();
        shared.leader_input(&mut state, name, LeaderInput::Written { end: offsets.end });
    }
    if let Err(e) = log.sync() {
        return Message::Refuse { reason: e.to_string() };
    }
    let mut state = shared.lock();
    shared.leader_input(&mut state, name, LeaderInput::Synced { end: log.durable_end() });
    if !quorum {
        return Message::ClientAppended { start: offsets.start, end: offsets.end, durability: 1 };
    }
    let deadline = Instant::now() + shared.config.commit_timeout;
    loop {
        let commit = state.get(name).and_then(|s| s.leader.as_ref()).map_or(0, Leader::commit_end);
        if commit >= offsets.end {
            return Message::ClientAppended { start: offsets.start, end: offsets.end, durability: 2 };
        }
        let now = Instant::now();
        if now >= deadline || shared.stop.load(Ordering::SeqCst) {
            return Message::Refuse {
                reason: format!(
                    "offsets {}..{} are on the leader's disk but not yet on a quorum",
                    offsets.start, offsets.end
                ),
            };
        }
        state = match shared.committed.wait_timeout(state, deadline - now) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        };
    }
}

fn client_read(shared: &Arc<Shared>, name: &str, from: u64, max: u32) -> Message {
    let (log, commit) = {
        let state = shared.lock();
        let Some(s) = state.get(name) else { return Message::Refuse { reason: format!("no log named {name:?}") } };
        let commit = match (&s.leader, &s.follower) {
            (Some(l), _) => l.commit_end(),
            (_, Some(f)) => f.commit_end(),
            _ => 0,
        };
        (s.log.clone(), commit)
    };
    let from = from.max(log.start_offset());
    if from >= commit {
        return Message::ClientRecords { start: from, commit_end: commit, records: Vec::new() };
    }
    let mut records = Vec::new();
    let mut bytes = 0usize;
    let reader = match log.read(from, Visibility::Written) {
        Ok(r) => r,
        Err(e) => return Message::Refuse { reason: e.to_string() },
    };
    for record in reader {
        let record = match record {
            Ok(r) => r,
            Err(e) => return Message::Refuse { reason: e.to_string() },
        };
        if record.offset >= commit || records.len() >= max as usize || bytes + record.value.len() > (16 << 20) {
            break;
        }
        bytes += record.value.len();
        records.push(record.value);
    }
    Message::ClientRecords { start: from, commit_end: commit, records }
}

fn status_json(shared: &Arc<Shared>) -> String {
    let state = shared.lock();
    let mut logs = Vec::new();
    for (name, s) in state.iter() {
        let mut peers = Vec::new();
        let commit = match (&s.leader, &s.follower) {
            (Some(l), _) => {
                for (id, _) in &shared.config.peers {
                    if let Some((written, durable, connected)) = l.peer_state(*id) {
                        peers.push(serde_json::json!({
                            "node": id, "acked_written": written, "acked_durable": durable,
                            "connected": connected, "lag_records": s.log.written_end().saturating_sub(durable),
                        }));
                    }
                }
                l.commit_end()
            }
            (_, Some(f)) => f.commit_end(),
            _ => 0,
        };
        logs.push(serde_json::json!({
            "log": name, "written_end": s.log.written_end(), "durable_end": s.log.durable_end(),
            "commit_end": commit, "peers": peers,
        }));
    }
    let role = match shared.config.role {
        Role::Leader => "leader",
        Role::Follower => "follower",
    };
    serde_json::json!({ "node": shared.config.node_id, "role": role, "logs": logs }).to_string()
}

/// A blocking client of a node.
pub struct Client {
    stream: TcpStream,
}

impl Client {
    /// Connects to a node.
    ///
    /// # Errors
    /// Connection errors.
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        Ok(Client { stream })
    }

    fn call(&mut self, msg: &Message) -> io::Result<Message> {
        write_msg(&mut self.stream, msg)?;
        match read_msg(&mut self.stream)? {
            Message::Refuse { reason } => Err(io::Error::other(reason)),
            reply => Ok(reply),
        }
    }

    /// Appends `records` as one batch; returns the offsets and the durability achieved
    /// (1: synced on the leader, 2: synced on a quorum).
    ///
    /// # Errors
    /// The node's refusal, or connection errors.
    pub fn append(&mut self, log: &str, records: Vec<Bytes>, quorum: bool) -> io::Result<(u64, u64, u8)> {
        match self.call(&Message::ClientAppend { log: log.to_owned(), quorum, records })? {
            Message::ClientAppended { start, end, durability } => Ok((start, end, durability)),
            _ => Err(io::Error::other("unexpected reply")),
        }
    }

    /// Committed records from `from`, at most `max`: (first offset, commit point, records).
    ///
    /// # Errors
    /// The node's refusal, or connection errors.
    pub fn read(&mut self, log: &str, from: u64, max: u32) -> io::Result<(u64, u64, Vec<Bytes>)> {
        match self.call(&Message::ClientRead { log: log.to_owned(), from, max })? {
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
