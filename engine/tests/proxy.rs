//! Replication through a fault-injecting TCP proxy, all in this process on loopback: the
//! leader's peer address is the proxy, which forwards to the follower and, driven by a seeded
//! RNG, delays, corrupts, cuts and drops the bytes it forwards. Damaged traffic must be detected
//! (by the envelope's length bound and checksum, or by a peer that stops answering) and the
//! connection closed; once the faults stop, the follower converges to the leader, with every
//! acknowledged record in place and nothing invented. Another test slips a 50 MiB length
//! prefix between two messages, in each direction, which no checksum can catch in time: the
//! leader must give up on that connection. A last one sends garbage straight to the nodes.
//!
//! The seed is printed; `TERN_SEED=0x..` replays the faults each connection draws (where they
//! land in the stream still depends on how the kernel splits reads). `TERN_PROXY_ROUNDS`
//! (default 120 batches, and a fault budget of a quarter of that) makes the run longer.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tern_replication::codec;
use tern_replication::driver::{Client, Role, Server};

mod common;
use common::eventually;
use tern_replication::message::Message;

const LOG: &str = "orders";
const CLUSTER_ID: u64 = 0x7e57;
/// Chance that one forwarded read gets a fault, while faults are on and the budget lasts.
const FAULT_PROBABILITY: f64 = 0.05;
/// Directions through the proxy, as indexes of [`Faults::inject`].
const TO_FOLLOWER: usize = 0;
const TO_LEADER: usize = 1;

fn rounds() -> usize {
    std::env::var("TERN_PROXY_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(120)
}

fn node(dir: &Path, id: u64, role: Role, peers: Vec<(u64, SocketAddr)>) -> Server {
    // Leader and follower: every quorum append needs the follower.
    common::start(dir, tern::Config::default(), common::config(CLUSTER_ID, id, role, peers, common::any_port()))
}

/// Every committed record of the log, read through the client protocol: (commit point, records).
fn read_all(addr: SocketAddr) -> io::Result<(u64, Vec<Bytes>)> {
    let mut client = Client::connect(addr)?;
    let mut records = Vec::new();
    let mut commit = 0;
    loop {
        let (start, c, batch) = client.read(LOG, records.len() as u64, 10_000)?;
        commit = commit.max(c);
        if batch.is_empty() {
            return Ok((commit, records));
        }
        assert_eq!(start, records.len() as u64, "a read starts where it was asked to");
        records.extend(batch);
    }
}

/// The leader's written end of the log, from its status document.
fn written_end(addr: SocketAddr) -> Option<u64> {
    let json: serde_json::Value = serde_json::from_str(&Client::connect(addr).ok()?.status().ok()?).ok()?;
    json["logs"].as_array()?.iter().find(|l| l["log"] == LOG)?["written_end"].as_u64()
}

// ---------------------------------------------------------------------------------------------
// The proxy

/// The faults the proxy injects: on or off, a budget, and what it did.
#[derive(Default)]
struct Faults {
    on: AtomicBool,
    budget: AtomicU64,
    delays: AtomicU64,
    flips: AtomicU64,
    cuts: AtomicU64,
    drops: AtomicU64,
    /// Bytes to slip in between two messages, once, by direction ([`TO_FOLLOWER`],
    /// [`TO_LEADER`]); counted in `injected`. Meant for a run without random faults, which
    /// would throw off where messages start.
    inject: Mutex<[Option<Vec<u8>>; 2]>,
    injected: AtomicU64,
}

impl Faults {
    /// Takes one fault from the budget, if faults are on and some are left.
    fn take(&self) -> bool {
        self.on.load(Ordering::SeqCst)
            && self.budget.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1)).is_ok()
    }

    /// Faults that damaged the stream, as opposed to delaying it.
    fn damaging(&self) -> u64 {
        self.flips.load(Ordering::SeqCst) + self.cuts.load(Ordering::SeqCst) + self.drops.load(Ordering::SeqCst)
    }

    fn total(&self) -> u64 {
        self.damaging() + self.delays.load(Ordering::SeqCst)
    }

    fn summary(&self) -> String {
        format!(
            "{} delays, {} bit flips, {} cuts, {} drops",
            self.delays.load(Ordering::SeqCst),
            self.flips.load(Ordering::SeqCst),
            self.cuts.load(Ordering::SeqCst),
            self.drops.load(Ordering::SeqCst)
        )
    }
}

/// Follows the wire frames of one direction (PROTOCOL.md "Envelope": `len u32 | crc32 u32 |
/// len bytes`) to know where the next message starts.
#[derive(Default)]
struct Framing {
    prefix: Vec<u8>,
    body_left: usize,
}

impl Framing {
    /// Takes in forwarded bytes; says whether the stream now stands between two messages.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let k = self.body_left.min(bytes.len());
                self.body_left -= k;
                bytes = &bytes[k..];
            } else {
                let k = (4 - self.prefix.len()).min(bytes.len());
                self.prefix.extend_from_slice(&bytes[..k]);
                bytes = &bytes[k..];
                if self.prefix.len() == 4 {
                    let len = u32::from_le_bytes(self.prefix[..].try_into().unwrap());
                    self.body_left = 4 + len as usize; // the crc, then `len` bytes
                    self.prefix.clear();
                }
            }
        }
        self.prefix.is_empty() && self.body_left == 0
    }
}

/// A TCP proxy to `target` that injects [`Faults`] into what it forwards, both ways.
struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Both ends of every connection, so that stopping closes them.
    streams: Arc<Mutex<Vec<TcpStream>>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Option<JoinHandle<()>>,
    connections: Arc<AtomicU64>,
}

impl Proxy {
    fn start(target: SocketAddr, seed: u64, faults: Arc<Faults>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let accept = {
            let (stop, streams, threads, connections) =
                (stop.clone(), streams.clone(), threads.clone(), connections.clone());
            std::thread::spawn(move || {
                for inbound in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(inbound) = inbound else { continue };
                    let Ok(outbound) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
                        let _ = inbound.shutdown(Shutdown::Both);
                        continue;
                    };
                    let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                    let n = connections.fetch_add(1, Ordering::SeqCst);
                    let mut streams = streams.lock().unwrap();
                    streams.retain(|s| s.peer_addr().is_ok()); // those closed since
                    streams.push(inbound.try_clone().unwrap());
                    streams.push(outbound.try_clone().unwrap());
                    let mut threads = threads.lock().unwrap();
                    for (direction, from, to) in [
                        (TO_FOLLOWER, inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                        (TO_LEADER, outbound.try_clone().unwrap(), inbound.try_clone().unwrap()),
                    ] {
                        // One RNG stream per connection and direction: what each one draws does
                        // not depend on how the threads interleave.
                        let mut rng = ChaCha8Rng::seed_from_u64(seed);
                        rng.set_stream(2 * n + direction as u64);
                        let faults = faults.clone();
                        threads.push(std::thread::spawn(move || pump(from, to, direction, &faults, rng)));
                    }
                }
            })
        };
        Proxy { addr, stop, streams, threads, accept: Some(accept), connections }
    }

    fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)); // wakes the accept loop
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for thread in self.threads.lock().unwrap().drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Forwards `from` to `to` until either side closes, injecting faults. Closing one direction
/// closes both sockets, so the other direction's pump ends too and both nodes see the cut.
fn pump(mut from: TcpStream, mut to: TcpStream, direction: usize, faults: &Faults, mut rng: ChaCha8Rng) {
    let mut buf = vec![0u8; 64 << 10];
    let mut framing = Framing::default();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut spliced = Vec::new();
        let mut bytes = &mut buf[..n];
        if rng.gen_bool(FAULT_PROBABILITY) && faults.take() {
            match rng.gen_range(0..4) {
                0 => {
                    // Latency: the bytes arrive intact, later.
                    faults.delays.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(rng.gen_range(1..=30)));
                }
                1 => {
                    let bit = rng.gen_range(0..n * 8);
                    bytes[bit / 8] ^= 1 << (bit % 8);
                    faults.flips.fetch_add(1, Ordering::SeqCst);
                }
                2 => {
                    faults.cuts.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                _ => {
                    // Lose a run of bytes: what follows no longer starts where the receiver
                    // expects a message to.
                    let first = rng.gen_range(0..n);
                    let end = rng.gen_range(first + 1..=n);
                    spliced.extend_from_slice(&bytes[..first]);
                    spliced.extend_from_slice(&bytes[end..]);
                    bytes = &mut spliced[..];
                    faults.drops.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        if to.write_all(bytes).is_err() {
            break;
        }
        if framing.feed(bytes) {
            let extra = faults.inject.lock().unwrap()[direction].take();
            if let Some(extra) = extra {
                faults.injected.fetch_add(1, Ordering::SeqCst);
                if to.write_all(&extra).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------------------------------------
// Appending and checking

/// Appends unique batches at quorum, remembering every batch sent and what the leader
/// acknowledged.
struct Appender {
    addr: SocketAddr,
    client: Client,
    rng: ChaCha8Rng,
    /// Every batch sent, in order; its index is its attempt number.
    attempts: Vec<Vec<Bytes>>,
    /// (offset the leader gave it, attempt).
    acked: Vec<(u64, usize)>,
    failures: usize,
}

impl Appender {
    fn new(addr: SocketAddr, seed: u64) -> Appender {
        let client = eventually("the leader to listen", Duration::from_secs(20), || Client::connect(addr).ok());
        Appender {
            addr,
            client,
            rng: ChaCha8Rng::seed_from_u64(seed),
            attempts: Vec::new(),
            acked: Vec::new(),
            failures: 0,
        }
    }

    /// Appends one batch, retrying until the leader acknowledges one. A failed append may or
    /// may not have been written; its retry is a new batch (new bytes), so the final check
    /// can tell them apart.
    fn append_until_acked(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = self.attempts.len();
            // 1..=8 records, each unique: `a{attempt}-{i}-` and random letters.
            let records: Vec<Bytes> = (0..self.rng.gen_range(1..=8))
                .map(|i| {
                    let mut r = format!("a{attempt}-{i}-").into_bytes();
                    let len = self.rng.gen_range(0..300);
                    r.extend((0..len).map(|_| self.rng.gen_range(b'a'..=b'z')));
                    Bytes::from(r)
                })
                .collect();
            self.attempts.push(records.clone());
            match self.client.append(LOG, records.clone(), true) {
                Ok((start, end, durability)) => {
                    assert_eq!(durability, 2, "a quorum append is acknowledged at quorum durability");
                    assert_eq!(end - start, records.len() as u64, "one offset per record");
                    let acked_end = self.acked.last().map_or(0, |&(s, a)| s + self.attempts[a].len() as u64);
                    assert!(start >= acked_end, "offsets only grow: {start} after {acked_end}");
                    self.acked.push((start, attempt));
                    return;
                }
                Err(e) => {
                    self.failures += 1;
                    assert!(Instant::now() < deadline, "appends kept failing for {timeout:?}: {e}");
                    // A refusal leaves the connection usable; a broken one needs a new one.
                    if e.kind() != io::ErrorKind::Other {
                        self.client = Client::connect(self.addr).unwrap();
                    }
                }
            }
        }
    }
}

/// Waits until the follower has everything the leader wrote and both agree on the commit
/// point, then checks what a reader sees on both: the same records; every acknowledged batch
/// at the offsets the leader gave it, with its exact bytes; and nothing but whole batches that
/// some append sent, in the order they were sent, each at most once (nothing invented,
/// reordered or torn). Returns the number of records and of batches written but never
/// acknowledged.
fn check_converged(leader: &Server, follower: &Server, appender: &Appender) -> (u64, usize) {
    let healed = Instant::now();
    let written = eventually("the follower to converge", Duration::from_secs(60), || {
        let written = written_end(leader.local_addr())?;
        let commit = leader.commit_end(LOG);
        (commit == written && follower.commit_end(LOG) == commit).then_some(written)
    });
    eprintln!("converged {:.1?} after the faults stopped", healed.elapsed());

    let (leader_commit, on_leader) = read_all(leader.local_addr()).expect("read the leader");
    let (follower_commit, on_follower) = read_all(follower.local_addr()).expect("read the follower");
    assert_eq!((leader_commit, follower_commit), (written, written), "commit points");
    assert_eq!(on_leader.len() as u64, written, "every record the leader wrote is committed and readable");
    assert_eq!(on_leader.len(), on_follower.len(), "the follower holds as many records as the leader");
    if let Some(i) = (0..on_leader.len()).find(|&i| on_leader[i] != on_follower[i]) {
        panic!("offset {i} differs: leader {:?}, follower {:?}", on_leader[i], on_follower[i]);
    }

    let attempts = &appender.attempts;
    let mut found_at: Vec<Option<u64>> = vec![None; attempts.len()];
    let (mut pos, mut next_attempt) = (0usize, 0usize);
    while pos < on_leader.len() {
        let attempt = (next_attempt..attempts.len())
            .find(|&a| attempts[a][0] == on_leader[pos])
            .unwrap_or_else(|| panic!("offset {pos} holds {:?}, which no append sent there", on_leader[pos]));
        let sent = &attempts[attempt];
        assert_eq!(
            on_leader.get(pos..pos + sent.len()),
            Some(&sent[..]),
            "offset {pos}: the batch of attempt {attempt} is not whole"
        );
        found_at[attempt] = Some(pos as u64);
        pos += sent.len();
        next_attempt = attempt + 1;
    }
    for &(start, attempt) in &appender.acked {
        assert_eq!(found_at[attempt], Some(start), "acknowledged attempt {attempt} is not at offset {start}");
    }
    (written, found_at.iter().flatten().count() - appender.acked.len())
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn corrupted_or_cut_replication_traffic_is_detected_and_nothing_is_lost_or_invented() {
    let started = Instant::now();
    let seed = common::seed();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rounds = rounds();
    let budget = (rounds as u64 / 4).max(4);
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let follower = node(dirs[1].path(), 2, Role::Follower, vec![]);
    let faults = Arc::new(Faults::default());
    faults.budget.store(budget, Ordering::SeqCst);
    let proxy = Proxy::start(follower.local_addr(), rng.gen(), faults.clone());
    let leader = node(dirs[0].path(), 1, Role::Leader, vec![(2, proxy.addr)]);
    let mut appender = Appender::new(leader.local_addr(), rng.gen());

    // A first append before the faults, so that both nodes hold the log.
    appender.append_until_acked(Duration::from_secs(20));
    faults.on.store(true, Ordering::SeqCst);
    // At least `rounds` batches, and on until the fault budget is spent (every forwarded read
    // may draw a fault, so appending spends it); bounded in case it never is.
    let mut batches = 0;
    while batches < rounds || (faults.budget.load(Ordering::SeqCst) > 0 && batches < 50 * rounds) {
        appender.append_until_acked(Duration::from_secs(30));
        batches += 1;
    }
    // Heal: no more faults. The follower catches up with everything the leader wrote, failed
    // appends included, and learns the commit point.
    faults.on.store(false, Ordering::SeqCst);
    let (written, unacked_written) = check_converged(&leader, &follower, &appender);

    eprintln!(
        "{} acknowledged batches, {} failed appends ({unacked_written} of them written anyway), {written} records; \
         {} proxy connections; faults: {}; {:.1?} in all",
        appender.acked.len(),
        appender.failures,
        proxy.connections(),
        faults.summary(),
        started.elapsed()
    );
    assert_eq!(faults.total(), budget, "the proxy injected its whole fault budget: {}", faults.summary());
    assert!(faults.damaging() > 0, "the proxy never damaged the stream: {}", faults.summary());
    // A damaged stream is closed by whichever side detects it, so the leader dialed again.
    assert!(proxy.connections() > 1, "the leader never had to reconnect");
    leader.stop();
    drop(proxy);
    follower.stop();
}

#[test]
fn a_desynchronized_stream_is_abandoned_and_quorum_appends_resume() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let follower = node(dirs[1].path(), 2, Role::Follower, vec![]);
    let faults = Arc::new(Faults::default()); // no random faults
    let proxy = Proxy::start(follower.local_addr(), 0, faults.clone());
    let leader = node(dirs[0].path(), 1, Role::Leader, vec![(2, proxy.addr)]);
    let mut appender = Appender::new(leader.local_addr(), 1);
    appender.append_until_acked(Duration::from_secs(20));

    // Four bytes between two messages that read as the length prefix of a 50 MiB message: what
    // a receiver sees when bytes were lost and it takes payload for a length. Its checksum
    // cannot be checked before 50 MiB arrive, and the peer's small messages would take hours
    // to fill it; the connection must be given up on, in either direction.
    for (direction, name) in [(TO_LEADER, "to the leader"), (TO_FOLLOWER, "to the follower")] {
        let connections = proxy.connections();
        faults.inject.lock().unwrap()[direction] = Some((50u32 << 20).to_le_bytes().to_vec());
        eventually("the proxy to inject", Duration::from_secs(20), || {
            faults.inject.lock().unwrap()[direction].is_none().then_some(())
        });
        // The quorum needs the follower: an acknowledged append shows replication resumed.
        let acked = appender.acked.len();
        appender.append_until_acked(Duration::from_secs(30));
        assert_eq!(appender.acked.len(), acked + 1);
        assert!(proxy.connections() > connections, "{name}: the leader kept the desynchronized connection");
        eprintln!("{name}: abandoned, replication resumed after {} failed appends", appender.failures);
    }
    assert_eq!(faults.injected.load(Ordering::SeqCst), 2);
    check_converged(&leader, &follower, &appender);
    leader.stop();
    drop(proxy);
    follower.stop();
}

/// Sends `bytes` on a new connection to `addr` and reads until the node closes it. Returns what
/// the node sent back; panics if the node keeps the connection open.
fn send_garbage(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    // The node may close before it has read everything, which can fail the write: that is fine.
    let _ = stream.write_all(bytes);
    // Generous: the node should close at once, or after its one-second handshake timeout.
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut back = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return back,
            Ok(n) => back.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return back,
            Err(e) => panic!("the node at {addr} kept a connection open after garbage: {e}"),
        }
    }
}

fn encoded(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode(msg, &mut out);
    out
}

#[test]
fn a_peer_sending_garbage_is_disconnected_and_the_node_keeps_serving() {
    let seed = common::seed();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let follower = node(dirs[1].path(), 2, Role::Follower, vec![]);
    let leader = node(dirs[0].path(), 1, Role::Leader, vec![(2, follower.local_addr())]);
    let mut appender = Appender::new(leader.local_addr(), rng.gen());
    appender.append_until_acked(Duration::from_secs(20));

    let wrong_cluster = encoded(&Message::Hello {
        cluster_id: CLUSTER_ID + 1,
        node_id: 9,
        version_min: 1,
        version_max: 1,
        logs: vec![],
    });
    let mut flipped =
        encoded(&Message::ClientRead { log: LOG.into(), from: 0, max: 10, uncommitted: false, wait_ms: 0 });
    let last = flipped.len() - 1;
    flipped[last] ^= 0x10; // the checksum no longer matches
    let mut unknown_type = encoded(&Message::ClientStatus);
    unknown_type[8] = 99;
    let crc = {
        let mut h = crc32fast::Hasher::new();
        h.update(&unknown_type[..4]);
        h.update(&unknown_type[8..]);
        h.finalize()
    };
    unknown_type[4..8].copy_from_slice(&crc.to_le_bytes()); // intact, but of no known type
    let mut after_a_request = encoded(&Message::ClientStatus);
    after_a_request.extend_from_slice(&u32::MAX.to_le_bytes());

    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("a u32::MAX length prefix".into(), [&u32::MAX.to_le_bytes()[..], &[0xAB; 64]].concat()),
        ("a length prefix below the minimum".into(), vec![0, 0, 0, 0, 1, 2, 3, 4, 5]),
        // 50 MiB promised, 12 bytes sent: the handshake timeout ends the wait.
        ("a 50 MiB length prefix and silence".into(), [&(50u32 << 20).to_le_bytes()[..], &[7; 12]].concat()),
        ("a message with a bad checksum".into(), flipped),
        ("a checksummed message of an unknown type".into(), unknown_type),
        ("garbage after a valid request".into(), after_a_request),
    ];
    for i in 0..8 {
        let random = (0..rng.gen_range(1..4096)).map(|_| rng.gen::<u8>()).collect();
        cases.push((format!("random bytes #{i}"), random));
    }

    for (name, addr) in [("follower", follower.local_addr()), ("leader", leader.local_addr())] {
        for (what, bytes) in &cases {
            send_garbage(addr, bytes);
            eprintln!("{name}: {what}: closed");
        }
        // A Hello from another cluster is answered with a Refuse that says why, then closed.
        let back = send_garbage(addr, &wrong_cluster);
        match codec::decode(&Bytes::from(back)) {
            Ok(Some((Message::Refuse { reason }, _))) => assert!(reason.contains("cluster id"), "{name}: {reason}"),
            other => panic!("{name}: a Hello from another cluster got {other:?}"),
        }
        // The node still serves: the leader takes a quorum append (so the follower still
        // replicates) at the next offset.
        let acked = appender.acked.len();
        appender.append_until_acked(Duration::from_secs(20));
        assert_eq!(appender.failures, 0, "{name}: an append failed after garbage");
        assert_eq!(appender.acked.len(), acked + 1);
    }
    // Both serve reads of every acknowledged record.
    let (records, unacked_written) = check_converged(&leader, &follower, &appender);
    assert_eq!((records, unacked_written), (appender.attempts.iter().map(|a| a.len() as u64).sum(), 0));
    leader.stop();
    follower.stop();
}

#[test]
fn a_follower_drops_a_leader_that_falls_silent() {
    let dir = tempfile::tempdir().unwrap();
    let follower = node(dir.path(), 2, Role::Follower, vec![]);
    // A "leader" that completes the handshake, ships one heartbeat naming a log, then says
    // nothing more without closing: as if its machine vanished.
    let mut stream = TcpStream::connect(follower.local_addr()).unwrap();
    let hello = Message::Hello { cluster_id: CLUSTER_ID, node_id: 1, version_min: 1, version_max: 1, logs: vec![] };
    stream.write_all(&encoded(&hello)).unwrap();
    let heartbeat = Message::Heartbeat { epoch: 1, logs: vec![(LOG.into(), 0, 0)] };
    stream.write_all(&encoded(&heartbeat)).unwrap();
    let started = Instant::now();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The follower answers (Welcome, acks), then must close the connection on its own.
    let mut sink = Vec::new();
    let closed = stream.read_to_end(&mut sink);
    assert!(closed.is_ok(), "the follower kept a silent leader's connection open: {closed:?}");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(15), "closed only after {waited:?}");
    assert!(!sink.is_empty(), "the follower answered the handshake");
    drop(follower);
}

#[test]
fn a_client_call_to_a_node_that_never_answers_times_out() {
    // A listener that never accepts: the kernel completes the connection, nobody answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let mut client = Client::connect(addr).unwrap();
    client.set_timeout(Some(Duration::from_millis(200))).unwrap();
    let started = Instant::now();
    let err = client.status().expect_err("no answer must not be taken for one");
    assert!(matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "waited {:?}", started.elapsed());
}
