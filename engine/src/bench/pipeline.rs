//! The raw replication pipeline: the ceiling this machine sets for replicated small-sync,
//! measured in the same run as Tern's three-node cluster.
//!
//! A leader and `followers` followers in this process, with nothing of Tern: clients send bare
//! 128-byte records over TCP; one epoll thread on the leader reads every ready client, writes
//! what the pass brought to a file with one `pwrite`, sends the same bytes to each follower
//! and wakes a sync thread; each follower thread reads what arrived, writes it, `fdatasync`s
//! and answers with its durable end; the leader answers a client (8 bytes) once its own sync
//! and `quorum` follower syncs cover its record. No framing, checksums, epochs, compression,
//! flow control or recovery; files are written with zeros first, so a sync never has to
//! persist new extents (Tern's small syncs go through its zero-filled journal the same way).
//!
//! With a link delay, each leader-to-follower connection goes through a [`Link`] that adds
//! the delay each way; clients reach the leader directly.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use super::link::Link;

/// Bytes of one record, as in Tern's small-sync.
const RECORD_BYTES: usize = 128;
/// Each node's file, written with zeros first and then overwritten in a ring.
const FILE_BYTES: u64 = 64 << 20;
const LISTENER: u64 = u64::MAX;
const FOLLOWER: u64 = 1 << 32;

/// A running raw pipeline; clients connect to [`Pipeline::addr`].
pub(super) struct Pipeline {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    leader: Arc<Leader>,
    threads: Vec<JoinHandle<()>>,
    /// The links to the followers, when they have a delay.
    links: Vec<Link>,
}

struct State {
    written: u64,
    durable: u64,
    /// Each follower's durable end.
    acked: Vec<u64>,
    /// Clients waiting, by the end of their last record, with how many of their records a
    /// pass took (each is answered with 8 bytes, in one write).
    waiters: VecDeque<(u64, Arc<TcpStream>, u64)>,
}

struct Leader {
    state: Mutex<State>,
    wrote: Condvar,
    quorum: usize,
}

impl Leader {
    /// Answers every client whose record is durable here and on `quorum` followers.
    fn answer(&self, st: &mut State) {
        let mut acked = st.acked.clone();
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let followers = if self.quorum == 0 { u64::MAX } else { acked.get(self.quorum - 1).copied().unwrap_or(0) };
        let commit = st.durable.min(followers);
        let mut answers = Vec::new();
        while st.waiters.front().is_some_and(|(end, _, _)| *end <= commit) {
            if let Some((end, client, records)) = st.waiters.pop_front() {
                answers.clear();
                for _ in 0..records {
                    answers.extend_from_slice(&end.to_le_bytes());
                }
                // A client that went away is no longer waited for.
                let _ = (&*client).write_all(&answers);
            }
        }
    }
}

/// A file of [`FILE_BYTES`] zeros, synced.
fn zero_filled(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path)?;
    let zeros = vec![0u8; 1 << 20];
    for i in 0..FILE_BYTES / (1 << 20) {
        file.write_all_at(&zeros, i << 20)?;
    }
    file.sync_all()?;
    Ok(file)
}

/// Writes `bytes` at `offset` of the ring `file`, wrapping at its end.
fn write_ring(file: &File, offset: u64, bytes: &[u8]) -> io::Result<()> {
    let pos = offset % FILE_BYTES;
    let first = bytes.len().min((FILE_BYTES - pos) as usize);
    let (head, tail) = bytes.split_at(first);
    file.write_all_at(head, pos)?;
    if !tail.is_empty() {
        file.write_all_at(tail, 0)?;
    }
    Ok(())
}

/// A follower: reads what the leader sent, writes and syncs it, answers with its end.
fn follower(mut stream: TcpStream, file: File) {
    let mut buf = vec![0u8; 1 << 20];
    let mut held = 0usize;
    let mut end = 0u64;
    loop {
        let n = match stream.read(buf.get_mut(held..).unwrap_or_default()) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        held += n;
        let whole = held / RECORD_BYTES * RECORD_BYTES;
        if whole == 0 {
            continue;
        }
        let written = write_ring(&file, end * RECORD_BYTES as u64, buf.get(..whole).unwrap_or_default());
        if written.and_then(|()| file.sync_data()).is_err() {
            return;
        }
        end += (whole / RECORD_BYTES) as u64;
        buf.copy_within(whole..held, 0);
        held -= whole;
        if stream.write_all(&end.to_le_bytes()).is_err() {
            return;
        }
    }
}

/// The epoll set of the leader's loop.
struct Epoll(i32);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: no pointers are passed.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll(fd))
    }

    fn add(&self, fd: i32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: `event` lives across the call.
        if unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn remove(&self, fd: i32) {
        // SAFETY: a null event is allowed for EPOLL_CTL_DEL.
        unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
    }

    /// Ready tokens, waiting at most `timeout_ms`.
    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        let max = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: `events` holds `max` entries.
        let n = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), max, timeout_ms) };
        n.max(0) as usize
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned here.
        unsafe { libc::close(self.0) };
    }
}

struct Client {
    stream: Arc<TcpStream>,
    held: Vec<u8>,
}

/// The leader's loop: reads clients and followers' acks, writes and ships each pass.
fn leader_loop(
    listener: TcpListener,
    to_followers: Vec<TcpStream>,
    file: Arc<File>,
    leader: Arc<Leader>,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    let epoll = Epoll::new()?;
    listener.set_nonblocking(true)?;
    epoll.add(listener.as_raw_fd(), LISTENER)?;
    for (i, f) in to_followers.iter().enumerate() {
        epoll.add(f.as_raw_fd(), FOLLOWER + i as u64)?;
    }
    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut acks: Vec<Vec<u8>> = vec![Vec::new(); to_followers.len()];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut buf = vec![0u8; 64 << 10];
    let mut pass = Vec::new();
    let mut waiting = Vec::new();
    let mut written = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let ready = epoll.wait(&mut events, 50);
        pass.clear();
        let mut acked = false;
        for event in events.iter().take(ready) {
            let token = event.u64;
            if token == LISTENER {
                while let Ok((stream, _)) = listener.accept() {
                    stream.set_nonblocking(false)?;
                    stream.set_nodelay(true)?;
                    let slot = clients.iter().position(Option::is_none).unwrap_or(clients.len());
                    epoll.add(stream.as_raw_fd(), slot as u64)?;
                    let client = Client { stream: Arc::new(stream), held: Vec::new() };
                    match clients.get_mut(slot) {
                        Some(entry) => *entry = Some(client),
                        None => clients.push(Some(client)),
                    }
                }
            } else if token >= FOLLOWER {
                let i = (token - FOLLOWER) as usize;
                let (Some(mut stream), Some(held)) = (to_followers.get(i), acks.get_mut(i)) else { continue };
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                held.extend_from_slice(buf.get(..n).unwrap_or_default());
                let whole = held.len() / 8 * 8;
                if let Some(last) = held.get(whole.saturating_sub(8)..whole) {
                    let end = u64::from_le_bytes(last.try_into().unwrap_or_default());
                    if let Some(a) = leader.state.lock().acked.get_mut(i) {
                        *a = (*a).max(end);
                    }
                    acked = true;
                }
                held.drain(..whole);
            } else {
                let Some(entry) = clients.get_mut(token as usize) else { continue };
                let Some(client) = entry else { continue };
                let n = (&*client.stream).read(&mut buf).unwrap_or(0);
                if n == 0 {
                    epoll.remove(client.stream.as_raw_fd());
                    *entry = None;
                    continue;
                }
                client.held.extend_from_slice(buf.get(..n).unwrap_or_default());
                let whole = client.held.len() / RECORD_BYTES * RECORD_BYTES;
                pass.extend_from_slice(client.held.get(..whole).unwrap_or_default());
                if whole > 0 {
                    waiting.push((client.stream.clone(), (whole / RECORD_BYTES) as u64));
                }
                client.held.drain(..whole);
            }
        }
        if !pass.is_empty() {
            write_ring(&file, written * RECORD_BYTES as u64, &pass)?;
            for mut f in &to_followers {
                f.write_all(&pass)?;
            }
            let mut st = leader.state.lock();
            for (client, records) in waiting.drain(..) {
                written += records;
                st.waiters.push_back((written, client, records));
            }
            st.written = written;
            leader.wrote.notify_one();
        }
        if acked {
            leader.answer(&mut leader.state.lock());
        }
    }
    Ok(())
}

/// The leader's sync thread: syncs what was written, then answers whom that covers.
fn sync_loop(file: Arc<File>, leader: Arc<Leader>, stop: Arc<AtomicBool>) {
    loop {
        let target = {
            let mut st = leader.state.lock();
            while st.durable >= st.written && !stop.load(Ordering::Relaxed) {
                leader.wrote.wait(&mut st);
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            st.written
        };
        if file.sync_data().is_err() {
            return;
        }
        let mut st = leader.state.lock();
        st.durable = st.durable.max(target);
        leader.answer(&mut st);
    }
}

impl Pipeline {
    /// Starts a leader and `followers` followers with their files in `dir`; a record is
    /// answered once `quorum` followers synced it too. A `link_one_way` delay goes each way
    /// between the leader and every follower.
    pub(super) fn start(
        dir: &Path,
        followers: usize,
        quorum: usize,
        link_one_way: Option<std::time::Duration>,
        hosts: &super::Hosts,
    ) -> io::Result<Pipeline> {
        let stop = Arc::new(AtomicBool::new(false));
        let leader = Arc::new(Leader {
            state: Mutex::new(State { written: 0, durable: 0, acked: vec![0; followers], waiters: VecDeque::new() }),
            wrote: Condvar::new(),
            quorum: quorum.min(followers),
        });
        let mut threads = Vec::new();
        let mut to_followers = Vec::new();
        let mut links = Vec::new();
        for i in 0..followers {
            // The leader is node 1, follower i node i + 2.
            let listener = hosts.listen(i as u64 + 2)?;
            let target = match link_one_way {
                Some(one_way) => {
                    let link = hosts.link(listener.local_addr()?, one_way)?;
                    let target = link.addr();
                    links.push(link);
                    target
                }
                None => listener.local_addr()?,
            };
            let stream = hosts.run(1, || TcpStream::connect(target))??;
            let (accepted, _) = listener.accept()?;
            stream.set_nodelay(true)?;
            accepted.set_nodelay(true)?;
            let file = zero_filled(&dir.join(format!("raw-pipeline-follower-{i}")))?;
            let thread =
                std::thread::Builder::new().name("raw-follower".into()).spawn(move || follower(accepted, file))?;
            threads.push(thread);
            to_followers.push(stream);
        }
        let file = Arc::new(zero_filled(&dir.join("raw-pipeline-leader"))?);
        let listener = hosts.listen(1)?;
        let addr = listener.local_addr()?;
        let (f, l, s) = (file.clone(), leader.clone(), stop.clone());
        threads.push(std::thread::Builder::new().name("raw-sync".into()).spawn(move || sync_loop(f, l, s))?);
        let (l, s) = (leader.clone(), stop.clone());
        let thread = std::thread::Builder::new().name("raw-leader".into()).spawn(move || {
            if let Err(e) = leader_loop(listener, to_followers, file, l, s) {
                eprintln!("raw pipeline: {e}");
            }
        })?;
        threads.push(thread);
        Ok(Pipeline { addr, stop, leader, threads, links })
    }

    /// Where clients connect.
    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops every thread (the followers end when the leader's connections close).
    pub(super) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        {
            let _st = self.leader.state.lock();
            self.leader.wrote.notify_all();
        }
        for thread in self.threads {
            let _ = thread.join();
        }
        for link in self.links {
            link.stop();
        }
    }
}

/// One client of the raw pipeline: sends a record, waits for its answer.
pub(super) fn client(addr: SocketAddr) -> Option<impl FnMut() -> bool> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_nodelay(true).ok()?;
    let record = [0x5au8; RECORD_BYTES];
    let mut answer = [0u8; 8];
    Some(move || stream.write_all(&record).is_ok() && stream.read_exact(&mut answer).is_ok())
}

/// `clients` clients send `batches` batches of `batch_bytes` (whole records) between them, each
/// waiting for the answers to its batch before the next; MB/s.
///
/// # Errors
/// A client that cannot connect, or a connection that broke.
pub(super) fn bulk(addr: SocketAddr, clients: usize, batches: u64, batch_bytes: usize) -> io::Result<f64> {
    let records = batch_bytes / RECORD_BYTES;
    let batch = vec![0x5au8; records * RECORD_BYTES];
    let mut streams = (0..clients)
        .map(|_| {
            let stream = TcpStream::connect(addr)?;
            stream.set_nodelay(true)?;
            Ok(stream)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let started = std::time::Instant::now();
    std::thread::scope(|scope| -> io::Result<()> {
        let handles: Vec<_> = streams
            .iter_mut()
            .enumerate()
            .map(|(k, stream)| {
                let mine = (k as u64..batches).step_by(clients.max(1)).count();
                let batch = &batch;
                scope.spawn(move || -> io::Result<()> {
                    let mut answers = vec![0u8; records * 8];
                    for _ in 0..mine {
                        stream.write_all(batch)?;
                        stream.read_exact(&mut answers)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle.join().map_err(|_| io::Error::other("a raw bulk client panicked"))??;
        }
        Ok(())
    })?;
    Ok((batches as usize * records * RECORD_BYTES) as f64 / started.elapsed().as_secs_f64() / 1e6)
}
