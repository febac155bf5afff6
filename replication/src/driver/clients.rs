//! Client connections, all served by one thread with epoll (`tern-clients`).
//!
//! The thread that accepted a connection reads its first message (a `Hello` makes it a
//! follower connection instead) and hands it over. From then on the loop reads what every
//! ready connection sent, handles each connection's requests in order, and writes the appends
//! of one pass to each log together: one wakeup, one core lock and one request to the syncer
//! for many clients. An append that waits for its acks is answered by whichever thread sees
//! them hold ([`Waiter`]). Nobody waits on a client's socket: what it does not take at once is
//! sent by the loop when it becomes writable, so a client that stops reading stalls only
//! itself.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tern_wal::{Durability, Visibility};

use super::{
    bytes_after, codec, complete_waiters, deliver, log_line, receipt, status_json, Acks, FrameBudget, Leader,
    LeaderInput, LogSlot, Message, Reader, Reply, Reservation, Shared, Waiter, QUORUM_LAG_REASON,
};
use crate::producers::Check;

/// Requests of one client connection whose replies may be outstanding at once; the loop stops
/// reading its requests beyond that.
const PENDING_REPLIES_MAX: usize = 1024;
/// Reply bytes of one client connection held back (behind a waiting append, or not yet taken
/// by its socket) beyond which the loop stops reading its requests.
const PENDING_REPLY_BYTES_MAX: usize = 64 << 20;
/// What one read from a client connection takes at least room for.
const SMALL_READ_BYTES: usize = 16 << 10;
/// What one read takes at most for a larger message.
const LARGE_READ_BYTES: usize = 4 << 20;
/// How long the loop sleeps at most when some connection waits for something other than its
/// socket (room for replies, an append held back by the quorum-lag bound).
const RETRY_INTERVAL_MS: i32 = 10;
/// How long the loop sleeps at most otherwise (it checks for a stop, and sends what sockets
/// did not take, at least this often).
const IDLE_INTERVAL_MS: i32 = 100;

/// The replies of one client connection, sent in the order of its requests. A request whose
/// reply is not ready (an append waiting for its acks) holds its place; the thread that fills
/// it in sends every reply then first in line, as far as the socket takes it at once.
pub(super) struct ClientConn {
    replies: Mutex<ConnReplies>,
}

struct ConnReplies {
    stream: TcpStream,
    /// The place of `queue[0]`.
    head: u64,
    queue: VecDeque<Option<Vec<u8>>>,
    /// Bytes of replies in `queue`.
    queued_bytes: usize,
    /// Replies ready, in order, not yet taken by the socket.
    out: Vec<u8>,
    /// A write failed: the connection is gone, and later replies are dropped.
    broken: bool,
}

/// Sends what `stream` takes of `bytes` without waiting; how many it took.
fn send_now(stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while let Some(rest) = bytes.get(sent..).filter(|r| !r.is_empty()) {
        // SAFETY: `rest` is valid for `rest.len()` bytes for the duration of the call, and the
        // descriptor belongs to `stream`, which outlives it.
        let n = unsafe {
            libc::send(stream.as_raw_fd(), rest.as_ptr().cast(), rest.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(sent),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
        sent += n as usize;
    }
    Ok(sent)
}

/// Reads what `stream` holds, up to `max` bytes, onto the end of `buf` without waiting and
/// without zeroing the space first: `Ok(0)` at the end of the stream, `WouldBlock` when
/// nothing is there.
fn recv_into_spare(stream: &TcpStream, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let len = spare.len().min(max);
    loop {
        // SAFETY: `spare` is valid for writes of `len` bytes for the duration of the call, and
        // the descriptor belongs to `stream`, which outlives it.
        let n = unsafe { libc::recv(stream.as_raw_fd(), spare.as_mut_ptr().cast(), len, libc::MSG_DONTWAIT) };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: recv initialized the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl ClientConn {
    fn new(stream: TcpStream) -> ClientConn {
        let replies =
            ConnReplies { stream, head: 0, queue: VecDeque::new(), queued_bytes: 0, out: Vec::new(), broken: false };
        ClientConn { replies: Mutex::new(replies) }
    }

    /// The place of the next reply, unless too many replies are held back.
    fn try_reserve(&self) -> Option<u64> {
        let mut r = self.replies.lock();
        if r.queue.len() >= PENDING_REPLIES_MAX || r.queued_bytes + r.out.len() > PENDING_REPLY_BYTES_MAX {
            return None;
        }
        r.queue.push_back(None);
        Some(r.head + r.queue.len() as u64 - 1)
    }

    /// Puts `msg` in place `seq` and sends every reply now first in line, as far as the socket
    /// takes it at once (the loop sends the rest when the socket becomes writable).
    pub(super) fn fill(&self, seq: u64, msg: &Message) {
        let mut bytes = Vec::new();
        codec::encode(msg, &mut bytes);
        let mut replies = self.replies.lock();
        let r = &mut *replies;
        let Some(place) = seq.checked_sub(r.head).and_then(|i| r.queue.get_mut(i as usize)) else {
            return;
        };
        r.queued_bytes += bytes.len();
        *place = Some(bytes);
        while let Some(Some(_)) = r.queue.front() {
            if let Some(Some(bytes)) = r.queue.pop_front() {
                r.queued_bytes -= bytes.len();
                if r.out.is_empty() {
                    r.out = bytes;
                } else {
                    r.out.extend_from_slice(&bytes);
                }
            }
            r.head += 1;
        }
        r.send_out();
    }

    /// Sends what the socket takes of the replies ready (the loop, when it is writable).
    fn send_ready(&self) {
        self.replies.lock().send_out();
    }

    /// The client went away (a reply could not be sent): nothing more is done for it.
    fn is_broken(&self) -> bool {
        self.replies.lock().broken
    }

    /// No reply is owed or still to be sent.
    fn is_quiet(&self) -> bool {
        let r = self.replies.lock();
        r.queue.is_empty() && r.out.is_empty()
    }
}

impl ConnReplies {
    fn send_out(&mut self) {
        if self.broken {
            self.out.clear();
        }
        if self.out.is_empty() {
            return;
        }
        match send_now(&self.stream, &self.out) {
            Ok(n) => drop(self.out.drain(..n)),
            Err(_) => {
                self.broken = true;
                self.out.clear();
                let _ = self.stream.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Counts a connection in [`Shared::connections`] until dropped, and keeps it in the node's
/// open connections (so that a stop can close it) until then.
pub(super) struct Counted {
    pub(super) count: Arc<AtomicUsize>,
    /// Held for its `Drop`.
    pub(super) _registered: Option<super::Registered>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The epoll set of a node's client connections, and those handed over since the loop last
/// looked.
pub(super) struct ClientLoop {
    epoll: OwnedFd,
    incoming: Mutex<Vec<(u64, Conn)>>,
    next_token: AtomicU64,
    /// An eventfd in the epoll set (token [`WAKE_TOKEN`]): written when a log grows or its
    /// commit point moves while reads wait for that.
    wake: OwnedFd,
    /// Reads waiting for records (`ClientRead` with a wait).
    reads_waiting: AtomicUsize,
}

/// The epoll token of [`ClientLoop::wake`]; connections count from 1.
const WAKE_TOKEN: u64 = 0;

impl ClientLoop {
    pub(super) fn new() -> io::Result<ClientLoop> {
        // SAFETY: plain system call; a valid descriptor is owned from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1 and nothing else owns it.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain system call; a valid descriptor is owned from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and nothing else owns it.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        let clients = ClientLoop {
            epoll,
            incoming: Mutex::new(Vec::new()),
            next_token: AtomicU64::new(WAKE_TOKEN + 1),
            wake,
            reads_waiting: AtomicUsize::new(0),
        };
        clients.ctl_fd(libc::EPOLL_CTL_ADD, clients.wake.as_raw_fd(), libc::EPOLLIN as u32, WAKE_TOKEN)?;
        Ok(clients)
    }

    fn ctl(&self, op: libc::c_int, stream: &TcpStream, token: u64) -> io::Result<()> {
        let events = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        self.ctl_fd(op, stream.as_raw_fd(), events, token)
    }

    fn ctl_fd(&self, op: libc::c_int, fd: std::os::fd::RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: both descriptors are open for the duration of the call, and `event` is a
        // valid epoll_event.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A log grew or its commit point moved: wakes the loop if reads wait for that (one
    /// atomic load otherwise).
    /// Drops the connections handed over and not yet taken by the loop (at a stop).
    pub(super) fn drop_incoming(&self) {
        self.incoming.lock().clear();
    }

    pub(super) fn poke(&self) {
        if self.reads_waiting.load(Ordering::Relaxed) > 0 {
            self.wake();
        }
    }

    /// Wakes the loop (a stopping node's, so that it sees the stop at once rather than at its
    /// next idle timeout).
    pub(super) fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: `one` is valid for 8 bytes and the eventfd is open. A full counter (it cannot
        // be, the loop drains it) would only mean the loop is already woken.
        let _ = unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Reads waiting for a first record.
    pub(super) fn reads_waiting(&self) -> usize {
        self.reads_waiting.load(Ordering::Relaxed)
    }

    fn drain_wake(&self) {
        let mut count = [0u8; 8];
        // SAFETY: `count` is valid for 8 bytes and the eventfd is open (non-blocking).
        let _ = unsafe { libc::read(self.wake.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    }
}

/// A read that waits for its first record.
struct WaitingRead {
    replies: Arc<ClientConn>,
    seq: u64,
    log: String,
    from: u64,
    max: u32,
    uncommitted: bool,
    deadline: Instant,
}

impl WaitingRead {
    /// Whether it can be answered: a record is there, its wait is over, or the node stops.
    fn ready(&self, shared: &Shared, now: Instant) -> bool {
        if now >= self.deadline || shared.stop.load(Ordering::SeqCst) {
            return true;
        }
        let Some(slot) = shared.slot(&self.log) else { return true };
        let end = if self.uncommitted { slot.log.written_end() } else { slot.commit_end() };
        end > self.from
    }
}

/// The loop's side of one client connection.
pub(super) struct Conn {
    stream: TcpStream,
    peer: String,
    replies: Arc<ClientConn>,
    /// Bytes read and not yet handled, from `start`.
    buf: Vec<u8>,
    start: usize,
    /// The socket may hold more than was read.
    more: bool,
    /// The client shut its side (or the connection failed): no event comes after what the
    /// socket holds, so it is read until the end, not until a short read.
    hung_up: bool,
    /// A message read and not handled yet (the first, read before the hand-over, or one that
    /// found no room for its reply).
    next: Option<Message>,
    /// An append not written yet because its log is over the quorum-lag bound, with its place
    /// and when it gives up; nothing after it on this connection is handled meanwhile.
    held: Option<Held>,
    /// The last pass could not take a place for the next request's reply.
    no_room: bool,
    /// Room in the node's frame budget for the large message being read, held until it is
    /// whole.
    frame: Option<Reservation>,
    /// The last pass found no room in the node's frame budget for the message being read, and
    /// left it in the socket.
    over_budget: bool,
    /// When the client last sent anything.
    last_heard: Instant,
    _counted: Counted,
    /// Counts it among the client connections ([`ServerConfig::connections_max`]).
    _client: Counted,
}

struct Held {
    slot: Arc<LogSlot>,
    append: Append,
    seq: u64,
    deadline: Instant,
}

/// What a client append asks for.
struct Append {
    acks: Acks,
    /// An idempotent append's `(producer_id, sequence)`.
    producer: Option<(u64, u64)>,
    records: Vec<Bytes>,
}

/// Hands a client connection whose first message is `first` over to the loop, with its count
/// (taken from `counted` only once the loop watches it: on an error it stays with the caller,
/// which closes the connection).
pub(super) fn serve_client(
    shared: &Arc<Shared>,
    mut stream: TcpStream,
    first: Message,
    counted: &mut Option<Counted>,
) -> io::Result<()> {
    // Client connections have a cap of their own: peers (a leader dialing this follower) are
    // never kept out by clients, however many there are.
    let client = Counted { count: shared.clients_open.clone(), _registered: None };
    if shared.clients_open.fetch_add(1, Ordering::SeqCst) >= shared.config.connections_max {
        drop(client);
        let reason = super::TOO_MANY_CLIENTS_REASON;
        let _ = super::write_msg(&mut stream, &Message::Refuse { reason: reason.into() });
        return Err(io::Error::other(reason));
    }
    let replies = Arc::new(ClientConn::new(stream.try_clone()?));
    let token = shared.clients.next_token.fetch_add(1, Ordering::Relaxed);
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    // Watched first: a connection the loop could never hear from must not be handed over. An
    // event that comes before the connection is listed finds no connection and is dropped;
    // the wake below makes the loop look at it anyway (a new one is read without an event).
    shared.clients.ctl(libc::EPOLL_CTL_ADD, &stream, token)?;
    let Some(count) = counted.take() else { return Ok(()) };
    let conn = Conn {
        stream: stream.try_clone()?,
        peer,
        replies,
        buf: Vec::new(),
        start: 0,
        more: true,
        hung_up: false,
        next: Some(first),
        held: None,
        no_room: false,
        frame: None,
        over_budget: false,
        last_heard: Instant::now(),
        _counted: count,
        _client: client,
    };
    shared.clients.incoming.lock().push((token, conn));
    shared.clients.wake();
    if shared.stop.load(Ordering::SeqCst) {
        // The loop may be gone already (a stop sets the flag before anything else): nothing
        // would ever serve or drop the connection, and the stop would wait for its count.
        shared.clients.drop_incoming();
    }
    Ok(())
}

/// The client loop of a node, until it stops.
pub(super) fn client_loop(shared: &Arc<Shared>) {
    let clients = &shared.clients;
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let mut reads: Vec<WaitingRead> = Vec::new();
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut swept = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        let waiting = conns.values().any(|c| c.held.is_some() || c.no_room || c.over_budget);
        let mut timeout = if waiting { RETRY_INTERVAL_MS } else { IDLE_INTERVAL_MS };
        if let Some(first) = reads.iter().map(|r| r.deadline).min() {
            let ms = first.saturating_duration_since(Instant::now()).as_millis();
            timeout = timeout.min(i32::try_from(ms).unwrap_or(i32::MAX));
        }
        // SAFETY: `events` is valid for writes of its length, and the epoll descriptor is open.
        let n = unsafe {
            libc::epoll_wait(clients.epoll.as_raw_fd(), events.as_mut_ptr(), events.len() as libc::c_int, timeout)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                log_line(&format!("client connections: epoll_wait failed: {e}"));
                std::thread::sleep(Duration::from_millis(IDLE_INTERVAL_MS as u64));
            }
            continue;
        }
        conns.extend(clients.incoming.lock().drain(..));
        for event in events.get(..n as usize).unwrap_or_default() {
            let (bits, token) = (event.events, event.u64);
            if token == WAKE_TOKEN {
                clients.drain_wake();
                continue;
            }
            let Some(conn) = conns.get_mut(&token) else { continue };
            if bits & libc::EPOLLOUT as u32 != 0 {
                conn.replies.send_ready();
            }
            if bits & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                conn.more = true;
            }
            if bits & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                conn.hung_up = true;
            }
        }
        let mut idle = Vec::new();
        if swept.elapsed() >= Duration::from_millis(IDLE_INTERVAL_MS as u64) {
            swept = Instant::now();
            for (token, conn) in &conns {
                conn.replies.send_ready();
                // A client that sent nothing for the idle timeout and waits for nothing gives
                // its place back.
                let waiting = conn.held.is_some() || reads.iter().any(|r| Arc::ptr_eq(&r.replies, &conn.replies));
                if conn.last_heard.elapsed() >= shared.config.client_idle_timeout && !waiting && conn.replies.is_quiet()
                {
                    idle.push(*token);
                }
            }
        }
        let mut batch = Batch::default();
        let mut closed = idle;
        for (token, conn) in &mut conns {
            if conn.more || conn.next.is_some() || conn.held.is_some() || conn.start < conn.buf.len() {
                if let Err(e) = serve(shared, conn, &mut batch, &mut reads) {
                    if e.kind() != io::ErrorKind::UnexpectedEof && !shared.stop.load(Ordering::SeqCst) {
                        log_line(&format!("connection from {} closed: {e}", conn.peer));
                    }
                    closed.push(*token);
                }
            }
        }
        batch.write(shared);
        // After the requests, so that a read that began waiting in this pass sees a record
        // written since it looked (it was counted as waiting before that, so anything later
        // wakes the loop).
        if !reads.is_empty() {
            let now = Instant::now();
            let (ready, still): (Vec<WaitingRead>, Vec<WaitingRead>) =
                std::mem::take(&mut reads).into_iter().partition(|r| r.ready(shared, now));
            reads = still;
            for r in ready {
                let reply = client_read(shared, &r.log, r.from, r.max, r.uncommitted);
                r.replies.fill(r.seq, &reply);
            }
        }
        clients.reads_waiting.store(reads.len(), Ordering::Relaxed);
        for token in closed {
            if let Some(conn) = conns.remove(&token) {
                let _ = clients.ctl(libc::EPOLL_CTL_DEL, &conn.stream, token);
                // Shut, so that the peer sees it at once; the descriptor closes with the last
                // handle (this one, and the registration the connection's count holds).
                let _ = conn.stream.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Reads what `conn` sent and handles its whole requests in order, as far as it can now.
fn serve(shared: &Arc<Shared>, conn: &mut Conn, batch: &mut Batch, reads: &mut Vec<WaitingRead>) -> io::Result<()> {
    conn.no_room = false;
    conn.over_budget = false;
    if let Some(held) = conn.held.take() {
        match quorum_lag_refusal(shared, &held.slot) {
            None => batch.push(held.slot, &conn.replies, held.seq, held.append),
            Some(reason) if Instant::now() >= held.deadline || shared.stop.load(Ordering::SeqCst) => {
                conn.replies.fill(held.seq, &Message::Refuse { reason });
            }
            Some(_) => {
                conn.held = Some(held);
                return Ok(());
            }
        }
    }
    loop {
        if conn.held.is_some() {
            return Ok(());
        }
        if conn.replies.is_broken() {
            // Its requests still buffered here are answered to nobody: drop the connection
            // instead of building replies for it.
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"));
        }
        let msg = match conn.next.take() {
            Some(msg) => msg,
            None => match next_message(conn, &shared.frames)? {
                Some(msg) => msg,
                None => return Ok(()),
            },
        };
        let Some(seq) = conn.replies.try_reserve() else {
            conn.no_room = true;
            conn.next = Some(msg);
            return Ok(());
        };
        handle(shared, conn, seq, msg, batch, reads);
    }
}

/// The next whole message `conn` sent, reading more from its socket when needed (and when
/// `frames` has room for it).
fn next_message(conn: &mut Conn, frames: &Arc<FrameBudget>) -> io::Result<Option<Message>> {
    loop {
        let buffered = conn.buf.get(conn.start..).unwrap_or_default();
        let (need, len) = match codec::frame_len(buffered).map_err(io::Error::other)? {
            Some(len) if buffered.len() >= len => {
                let bytes = if conn.start == 0 && conn.buf.len() == len {
                    // The buffer holds exactly this message (a large one is read that way):
                    // it becomes the message's bytes, uncopied.
                    Bytes::from(std::mem::take(&mut conn.buf))
                } else {
                    let bytes = Bytes::copy_from_slice(buffered.get(..len).unwrap_or_default());
                    conn.start += len;
                    if conn.start == conn.buf.len() {
                        conn.buf.clear();
                        conn.start = 0;
                    }
                    bytes
                };
                conn.frame = None;
                return match codec::decode(&bytes).map_err(io::Error::other)? {
                    Some((msg, used)) if used == len => Ok(Some(msg)),
                    _ => Err(io::Error::other("message does not decode")),
                };
            }
            Some(len) => (len - buffered.len(), Some(len)),
            None => (1, None),
        };
        if !conn.more {
            return Ok(None);
        }
        if let (Some(len), None) = (len, &conn.frame) {
            match frames.try_reserve(len, Reader::Untrusted) {
                Some(held) => conn.frame = Some(held),
                None => {
                    // Not read until there is room: its bytes wait in the socket.
                    conn.over_budget = true;
                    return Ok(None);
                }
            }
        }
        if conn.start > 0 {
            conn.buf.drain(..conn.start);
            conn.start = 0;
        }
        // At least a small read's worth; for a large message, what it still needs, but at
        // most 4 MiB at a time, so that its buffer grows with what arrives, not with what its
        // length prefix claims.
        let asked = need.clamp(SMALL_READ_BYTES, LARGE_READ_BYTES);
        conn.buf.reserve(asked);
        let got = recv_into_spare(&conn.stream, &mut conn.buf, asked);
        if matches!(got, Ok(n) if n > 0) {
            conn.last_heard = Instant::now();
        }
        match got {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            // A short read took everything there was: what comes later raises a new event.
            // Not after a hang-up, whose event may have come while the connection was not
            // read (no room for its replies or its frame): its end of file is still to read.
            Ok(n) if n < asked && !conn.hung_up => conn.more = false,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.more = false;
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Handles one request of `conn`, whose reply goes in place `seq`. Appends join `batch`;
/// anything else first writes the batch, so that it sees what the connection appended
/// before it.
fn handle(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    seq: u64,
    msg: Message,
    batch: &mut Batch,
    reads: &mut Vec<WaitingRead>,
) {
    let reply = match msg {
        Message::ClientAppend { log, acks, records } => {
            return handle_append(shared, conn, seq, &log, Append { acks, producer: None, records }, batch);
        }
        Message::ClientAppendIdempotent { log, acks, producer_id, sequence, records } => {
            let append = Append { acks, producer: Some((producer_id, sequence)), records };
            return handle_append(shared, conn, seq, &log, append, batch);
        }
        Message::ClientRead { log, from, max, uncommitted, wait_ms } => {
            batch.write(shared);
            let reply = client_read(shared, &log, from, max, uncommitted);
            let empty = matches!(&reply, Message::ClientRecords { records, .. } if records.is_empty());
            if wait_ms > 0 && empty {
                let deadline = Instant::now() + Duration::from_millis(u64::from(wait_ms));
                let replies = conn.replies.clone();
                reads.push(WaitingRead { replies, seq, log, from, max, uncommitted, deadline });
                // Counted at once, so that a record written before the loop's next pass
                // wakes it.
                shared.clients.reads_waiting.fetch_add(1, Ordering::Relaxed);
                return;
            }
            reply
        }
        Message::ClientStatus => {
            batch.write(shared);
            Message::ClientStatusReply { json: status_json(shared) }
        }
        _ => Message::Refuse { reason: "unexpected message".into() },
    };
    conn.replies.fill(seq, &reply);
}

/// Takes an append of `conn` into `batch`, or holds it back (quorum lag), or refuses it.
fn handle_append(shared: &Arc<Shared>, conn: &mut Conn, seq: u64, log: &str, append: Append, batch: &mut Batch) {
    let slot = match shared.leading_slot(log) {
        Ok(slot) => slot,
        Err(reason) => return conn.replies.fill(seq, &Message::Refuse { reason }),
    };
    if let Some(reason) = shared.write_refusal(&shared.draining.lock(), &slot) {
        return conn.replies.fill(seq, &Message::Refuse { reason });
    }
    let stopped = slot.lock().leader.as_ref().and_then(|l| super::stop_reason(log, shared.config.node_id, l));
    if let Some(reason) = stopped {
        return conn.replies.fill(seq, &Message::Refuse { reason });
    }
    if quorum_lag_refusal(shared, &slot).is_some() {
        let deadline = Instant::now() + shared.config.commit_timeout;
        conn.held = Some(Held { slot, append, seq, deadline });
        return;
    }
    batch.push(slot, &conn.replies, seq, append);
}

/// Backpressure on producers: while the records of `slot` not yet on a quorum take more than
/// `quorum_lag_bytes_max`, appends to it are held (up to `commit_timeout`, then refused with
/// this reason) until the quorum catches up. A slow follower alone never triggers it while a
/// quorum keeps up.
fn quorum_lag_refusal(shared: &Shared, slot: &LogSlot) -> Option<String> {
    let max = shared.config.quorum_lag_bytes_max?;
    let commit = slot.lock().leader.as_ref().map_or(0, Leader::commit_end);
    // Counting bytes walks the segments: only when the lag could matter.
    let lag_bytes = if slot.log.written_end() > commit { bytes_after(&slot.log, commit) } else { 0 };
    (lag_bytes > max).then(|| format!("log {}: {lag_bytes} {QUORUM_LAG_REASON} {max}); try again later", slot.name))
}

/// One append of a pass.
struct Pending {
    replies: Arc<ClientConn>,
    seq: u64,
    append: Append,
}

/// The appends of one pass of the loop, by log.
#[derive(Default)]
struct Batch {
    logs: Vec<(Arc<LogSlot>, Vec<Pending>)>,
}

impl Batch {
    fn push(&mut self, slot: Arc<LogSlot>, replies: &Arc<ClientConn>, seq: u64, append: Append) {
        let pending = Pending { replies: replies.clone(), seq, append };
        match self.logs.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &slot)) {
            Some((_, list)) => list.push(pending),
            None => self.logs.push((slot, vec![pending])),
        }
    }

    /// Writes every append, then per log: one request to the syncer, one `Written`, and the
    /// waiters (or the replies of appends that asked only for the write). Consecutive small
    /// appends of a pass go into the log as one batch, with one write (see [`merge_runs`]);
    /// each still gets its own offsets, and a batch is atomic, so each append's records are
    /// still all there after a crash or none.
    fn write(&mut self, shared: &Arc<Shared>) {
        // Held while writing: a handover (`Server::drain`) sets its reason only between two
        // writes, so nothing is written after it saw the target catch up.
        let draining = shared.draining.lock();
        for (slot, list) in self.logs.drain(..) {
            if let Some(reason) = shared.write_refusal(&draining, &slot) {
                for p in list {
                    p.replies.fill(p.seq, &Message::Refuse { reason: reason.clone() });
                }
                continue;
            }
            let mut written = Vec::with_capacity(list.len());
            let mut list = list.into_iter().peekable();
            while let Some(next) = list.peek() {
                if next.append.producer.is_some() {
                    let p = list.next().expect("peeked");
                    if let Some(offsets) = write_idempotent(&slot, &p) {
                        written.push((p, offsets));
                    }
                    continue;
                }
                // Idempotent appends go alone: a batch header names one producer and sequence.
                let run = merge_runs(&mut list, |p| {
                    p.append.producer.is_none().then(|| p.append.records.iter().map(Bytes::len).sum())
                });
                let values: Vec<&[u8]> = run.iter().flat_map(|p| p.append.records.iter().map(|r| r.as_ref())).collect();
                // Written first, so the batch ships in parallel with the local sync.
                match slot.log.append(&values, Durability::None) {
                    Ok(offsets) => {
                        let mut start = offsets.start;
                        for p in run {
                            let end = start + p.append.records.len() as u64;
                            written.push((p, start..end));
                            start = end;
                        }
                    }
                    Err(_) if run.len() > 1 => {
                        // One append's records may be refused (too large): each on its own.
                        for p in run {
                            let values: Vec<&[u8]> = p.append.records.iter().map(|r| r.as_ref()).collect();
                            match slot.log.append(&values, Durability::None) {
                                Ok(offsets) => written.push((p, offsets)),
                                Err(e) => p.replies.fill(p.seq, &Message::Refuse { reason: e.to_string() }),
                            }
                        }
                    }
                    Err(e) => {
                        for p in run {
                            p.replies.fill(p.seq, &Message::Refuse { reason: e.to_string() });
                        }
                    }
                }
            }
            let Some(end) = written.iter().map(|(_, o)| o.end).max() else { continue };
            if written.iter().any(|(p, _)| p.append.acks != Acks::Written) {
                shared.want_sync(&slot);
            }
            let replies = {
                let mut core = slot.lock();
                shared.leader_input_locked(&slot, &mut core, LeaderInput::Written { end });
                let deadline = Instant::now() + shared.config.commit_timeout;
                // The leader may have stopped since these were written (a later epoch, or a
                // follower holding records it lost): its waiters were refused then, so these
                // are refused now instead of waiting for a commit that never comes.
                let stopped =
                    core.leader.as_ref().and_then(|l| super::stop_reason(&slot.name, shared.config.node_id, l));
                for (p, offsets) in written {
                    if let Some(why) = stopped.as_ref().filter(|_| p.append.acks != Acks::Written) {
                        let reason =
                            format!("offsets {}..{} are on the leader's disk only: {why}", offsets.start, offsets.end);
                        core.replies.push(Reply { conn: p.replies, seq: p.seq, msg: Message::Refuse { reason } });
                    } else if p.append.acks == Acks::Written {
                        // The tick thread syncs it soon (see `tick_loop`); the receipt promises
                        // only the write.
                        let msg = receipt(core.leader.as_ref(), offsets.start, offsets.end, Acks::Written);
                        core.replies.push(Reply { conn: p.replies, seq: p.seq, msg });
                    } else {
                        let waiter =
                            Waiter { start: offsets.start, end: offsets.end, deadline, conn: p.replies, seq: p.seq };
                        core.waiters.add(p.append.acks, waiter);
                    }
                }
                complete_waiters(&mut core);
                // The node began to stop since these were written and may have refused its
                // waiters before these joined them: refused here, or they would go unanswered.
                if shared.stop.load(Ordering::SeqCst) {
                    super::refuse_waiters(
                        &mut core,
                        slot.log.durable_end(),
                        |_| true,
                        &format!("; {}", super::STOPPING_REASON),
                    );
                }
                std::mem::take(&mut core.replies)
            };
            deliver(replies);
        }
    }
}

/// Writes the idempotent append `p` as one batch stamped with its producer and sequence, unless
/// the leader remembers writing it: then its first offsets are the answer, and nothing is
/// written. `None` when it was refused (the refusal is sent).
fn write_idempotent(slot: &LogSlot, p: &Pending) -> Option<std::ops::Range<u64>> {
    let (producer_id, sequence) = p.append.producer?;
    let records = &p.append.records;
    if records.is_empty() {
        // Nothing is written, so there is nothing to remember or to answer twice.
        let end = slot.log.written_end();
        return Some(end..end);
    }
    // Held from the check to the record: the check must see every batch written before.
    let mut producers = slot.producers.lock();
    match producers.check(producer_id, sequence, records.len() as u64) {
        Check::Duplicate(offsets) => {
            slot.duplicate_batches.fetch_add(1, Ordering::Relaxed);
            Some(offsets)
        }
        Check::Refused(reason) => {
            p.replies.fill(p.seq, &Message::Refuse { reason: format!("log {}: {reason}", slot.name) });
            None
        }
        Check::New => {
            let now = tern_wal::now_ms();
            let values: Vec<tern_wal::Record<'_>> = records.iter().map(|r| tern_wal::Record::new(r, now)).collect();
            let options = tern_wal::AppendOptions { epoch: None, producer_id, sequence, control: false };
            match slot.log.append_records(&values, options).and_then(|appended| appended.wait(Durability::None)) {
                Ok(offsets) => {
                    producers.record(producer_id, sequence, offsets.clone());
                    Some(offsets)
                }
                Err(e) => {
                    p.replies.fill(p.seq, &Message::Refuse { reason: e.to_string() });
                    None
                }
            }
        }
    }
}

/// Appends of one pass merged into one batch while each holds at most this many bytes.
const MERGE_APPEND_BYTES_MAX: usize = 16 << 10;
/// ... and the merged batch at most this many (the journal takes batches below 64 KiB).
const MERGE_BATCH_BYTES_MAX: usize = 60 << 10;

/// Takes the next items of `list` that go into the log as one batch: a run of small ones
/// (at most [`MERGE_APPEND_BYTES_MAX`] bytes each by `bytes`, [`MERGE_BATCH_BYTES_MAX`]
/// together), or one larger one alone, or one that `bytes` says must go alone (`None`). The
/// leader wrote each append of a pass with its own `pwrite` and journal entry before: about
/// one per record under small-sync.
fn merge_runs<T>(
    list: &mut std::iter::Peekable<impl Iterator<Item = T>>,
    bytes: impl Fn(&T) -> Option<usize>,
) -> Vec<T> {
    let mut run = Vec::new();
    let mut total = 0;
    while let Some(next) = list.peek() {
        let (size, small) = match bytes(next) {
            Some(size) => (size, size <= MERGE_APPEND_BYTES_MAX),
            None => (0, false),
        };
        if !run.is_empty() && (!small || total + size > MERGE_BATCH_BYTES_MAX) {
            break;
        }
        run.extend(list.next());
        total += size;
        if !small {
            break;
        }
    }
    run
}

/// Bytes of values a read's reply holds at most, unless its one record is larger.
const CLIENT_READ_BYTES_MAX: usize = 16 << 20;

/// Records of `name` from `from`, at most `max` and 16 MiB, below the commit point unless
/// `uncommitted`.
fn client_read(shared: &Arc<Shared>, name: &str, from: u64, max: u32, uncommitted: bool) -> Message {
    let Some(slot) = shared.slot(name) else { return Message::Refuse { reason: format!("no log named {name:?}") } };
    let (log, commit) = (&slot.log, slot.commit_end());
    let end = if uncommitted { log.written_end() } else { commit };
    let from = from.max(log.start_offset());
    if from >= end {
        return Message::ClientRecords { start: from, commit_end: commit, records: Vec::new() };
    }
    let mut reader = match log.read(from, Visibility::Written) {
        Ok(r) => r,
        Err(e) => return Message::Refuse { reason: e.to_string() },
    };
    // The records of a reply are consecutive from `start`: it starts after the control
    // records the reader skips at first and ends before one it skips later. With no record,
    // `start` is where the next read goes on (past control records up to `end`).
    let (mut start, mut records, mut bytes) = (None, Vec::new(), 0usize);
    let resume = loop {
        let record = match reader.next() {
            None => break reader.next_offset(),
            Some(Ok(r)) => r,
            Some(Err(e)) => return Message::Refuse { reason: e.to_string() },
        };
        let consecutive = start.is_none_or(|s| record.offset == s + records.len() as u64);
        // At least one record, however large, so that a reader always moves on.
        let full = records.len() >= max as usize
            || (!records.is_empty() && bytes + record.value.len() > CLIENT_READ_BYTES_MAX);
        if record.offset >= end || !consecutive || full {
            break record.offset;
        }
        start.get_or_insert(record.offset);
        bytes += record.value.len();
        records.push(record.value);
    };
    Message::ClientRecords { start: start.unwrap_or(resume.min(end)), commit_end: commit, records }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(sizes: &[usize]) -> Vec<Vec<usize>> {
        let mut list = sizes.iter().copied().peekable();
        let mut out = Vec::new();
        while list.peek().is_some() {
            out.push(merge_runs(&mut list, |s| Some(*s)));
        }
        out
    }

    #[test]
    fn small_appends_of_a_pass_are_merged_and_large_ones_go_alone() {
        assert_eq!(runs(&[128, 128, 128]), vec![vec![128, 128, 128]]);
        assert_eq!(runs(&[128, 1 << 20, 128, 256]), vec![vec![128], vec![1 << 20], vec![128, 256]]);
        // Each batch stays under the journal's bound.
        let k16 = 16 << 10;
        assert_eq!(runs(&[k16, k16, k16, k16, 10]), vec![vec![k16, k16, k16], vec![k16, 10]]);
        assert_eq!(runs(&[(16 << 10) + 1, 5]), vec![vec![(16 << 10) + 1], vec![5]]);
        assert_eq!(runs(&[0, 0]), vec![vec![0, 0]]);
        assert!(runs(&[]).is_empty());
        // One that must go alone (an idempotent append) ends a run and is not joined.
        let mut list = [Some(1), Some(2), None, Some(3)].into_iter().peekable();
        let alone: Vec<Vec<Option<usize>>> =
            std::iter::from_fn(|| list.peek().is_some().then(|| merge_runs(&mut list, |s| *s))).collect();
        assert_eq!(alone, vec![vec![Some(1), Some(2)], vec![None], vec![Some(3)]]);
    }
}
