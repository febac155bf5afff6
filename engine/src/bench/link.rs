//! A link with latency between two nodes (`tern bench --link-rtt-us`, and the nemesis test's
//! `TERN_NEMESIS_RTT_US`): a TCP forwarder that delivers every byte a fixed time after it
//! arrived, in each direction.
//!
//! The kernel's `netem` qdisc would do this on a real interface; where it is missing, the
//! delay goes here, in the process. A [`Link`] listens on a port and, for each connection it
//! accepts, dials its target and runs two directions. Each direction is a
//! reader thread and a writer thread joined by a bounded queue: the reader stamps each chunk
//! it reads with its due time (arrival + the one-way delay) and queues it at once; the writer
//! sleeps until the chunk at the head is due, then writes it. Chunks arrive in order, so the
//! due times are in order, and while one chunk waits the ones behind it wait out their own
//! delay at the same time: the line holds up to [`CHUNKS_IN_FLIGHT_MAX`] chunks of up to
//! [`CHUNK_BYTES_MAX`] at once, and adds latency without capping the rate (a per-chunk sleep
//! before each write would serialize them: one chunk per delay).
//!
//! What it does not model: loss, reordering, jitter, or a bandwidth limit. It adds the two
//! loopback hops of the forwarder itself and the writer's wake-up (its timer slack is set to
//! 1 ns, so a sleep ends within tens of microseconds of its due time, not the default 50 us
//! later); `tern bench` reports the round trip measured through a link beside the figures.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Bytes read at most per chunk.
pub const CHUNK_BYTES_MAX: usize = 64 << 10;
/// Chunks queued at most per direction: up to 256 MiB in flight, far above what loopback
/// moves in the longest delay the bench allows, so the queue never limits the rate; it only
/// bounds the memory of a receiver that stopped reading.
pub const CHUNKS_IN_FLIGHT_MAX: usize = 4096;
/// The longest one-way delay a link accepts.
pub const ONE_WAY_MAX: Duration = Duration::from_secs(1);
/// How long a link waits to reach its target for one connection (a target cut off the
/// network answers nothing) before it closes the connection it accepted.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A running link; connect to [`Link::addr`] to reach its target with the delay added. The
/// benches put one between nodes (`tern bench --link-rtt-us`), and cluster tests one in front
/// of each node's data and controller ports (a node then advertises the link's address).
pub struct Link {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// The connections forwarded so far and not yet over, for [`Link::stop`] to shut down.
    conns: Arc<Mutex<Vec<Forwarded>>>,
    acceptor: Option<JoinHandle<()>>,
}

/// One connection a link forwards: both ends and the threads of both directions (none until
/// the target answered).
#[derive(Default)]
struct Forwarded {
    streams: Vec<TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

impl Link {
    /// Starts a link on a loopback port to `target` that delays each direction by `one_way`.
    ///
    /// # Errors
    /// `one_way` above [`ONE_WAY_MAX`], no loopback port, or no thread.
    pub fn start(target: SocketAddr, one_way: Duration) -> io::Result<Link> {
        Link::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), target, one_way)
    }

    /// Starts a link listening at `listen` (port 0 picks one) to `target` that delays each
    /// direction by `one_way`. Each connection it accepts is forwarded by threads of its own:
    /// a target that is down or unreachable closes that connection (after up to a second),
    /// and holds up no other.
    ///
    /// # Errors
    /// `one_way` above [`ONE_WAY_MAX`], `listen` taken, or no thread.
    pub fn start_at(listen: SocketAddr, target: SocketAddr, one_way: Duration) -> io::Result<Link> {
        if one_way > ONE_WAY_MAX {
            return Err(io::Error::other(format!("one-way delay {one_way:?} above {ONE_WAY_MAX:?}")));
        }
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (s, c) = (stop.clone(), conns.clone());
        let acceptor = std::thread::Builder::new()
            .name("link-accept".into())
            .spawn(move || accept_loop(&listener, target, one_way, &s, &c))?;
        Ok(Link { addr, stop, conns, acceptor: Some(acceptor) })
    }

    /// Where to connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every forwarded connection and joins every thread.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        let Some(acceptor) = self.acceptor.take() else { return };
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor from `accept`; it sees the flag and returns.
        drop(TcpStream::connect(self.addr));
        let _ = acceptor.join();
        // A connection still reaching its target adds its streams once it gets there (or
        // gives up within the connect timeout), then sees the flag and ends them.
        loop {
            let conns = std::mem::take(&mut *self.conns.lock());
            if conns.is_empty() {
                return;
            }
            for conn in &conns {
                for stream in &conn.streams {
                    let _ = stream.shutdown(Shutdown::Both);
                }
            }
            for thread in conns.into_iter().flat_map(|c| c.threads) {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shut();
    }
}

fn accept_loop(
    listener: &TcpListener,
    target: SocketAddr,
    one_way: Duration,
    stop: &Arc<AtomicBool>,
    conns: &Arc<Mutex<Vec<Forwarded>>>,
) {
    for accepted in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(source) = accepted else { continue };
        let (stop, list) = (stop.clone(), conns.clone());
        let mut conns = conns.lock();
        // Connections whose every thread ended are over: their streams close here.
        conns.retain(|c| c.threads.iter().any(|t| !t.is_finished()));
        let dial = std::thread::Builder::new().name("link-dial".into()).spawn(move || {
            // A target that is down (a node being restarted) closes the connection at once, as a
            // refused connection would; one cut off the network, after the timeout. The dialer
            // tries again.
            let Ok(sink) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else { return };
            if let Err(e) = forward(source, sink, one_way, &stop, &list) {
                eprintln!("link to {target}: {e}");
            }
        });
        if let Ok(dial) = dial {
            conns.push(Forwarded { streams: Vec::new(), threads: vec![dial] });
        }
    }
}

/// Runs both directions of one connection.
fn forward(
    source: TcpStream,
    target: TcpStream,
    one_way: Duration,
    stop: &AtomicBool,
    conns: &Mutex<Vec<Forwarded>>,
) -> io::Result<()> {
    source.set_nodelay(true)?;
    target.set_nodelay(true)?;
    let mut conns = conns.lock();
    if stop.load(Ordering::SeqCst) {
        return Ok(()); // the link is stopping: both ends close here
    }
    let mut conn = Forwarded { streams: vec![source.try_clone()?, target.try_clone()?], threads: Vec::new() };
    for (from, to) in [(source.try_clone()?, target.try_clone()?), (target, source)] {
        let (send, recv) = crossbeam_channel::bounded::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT_MAX);
        let reader =
            std::thread::Builder::new().name("link-read".into()).spawn(move || read_side(from, one_way, &send));
        conn.threads.push(reader?);
        conn.threads.push(std::thread::Builder::new().name("link-write".into()).spawn(move || write_side(to, &recv))?);
    }
    conns.push(conn);
    Ok(())
}

/// Reads chunks as they arrive and queues each with the time it is due at the other end.
fn read_side(mut from: TcpStream, one_way: Duration, queue: &crossbeam_channel::Sender<(Instant, Vec<u8>)>) {
    let mut buf = vec![0u8; CHUNK_BYTES_MAX];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return, // dropping the sender ends the writer after the last chunk
            Ok(n) => n,
        };
        let due = Instant::now() + one_way;
        let chunk = buf.get(..n).unwrap_or_default().to_vec();
        if queue.send((due, chunk)).is_err() {
            let _ = from.shutdown(Shutdown::Read);
            return;
        }
    }
}

/// Writes each queued chunk once it is due; passes the end of the stream on.
fn write_side(mut to: TcpStream, queue: &crossbeam_channel::Receiver<(Instant, Vec<u8>)>) {
    // SAFETY: `prctl(PR_SET_TIMERSLACK)` takes an integer and changes only this thread's timer
    // slack: its sleeps end within 1 ns of their deadline plus the scheduler's wake-up,
    // instead of up to 50 us late, which would add to every delay.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    for (due, chunk) in queue {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if to.write_all(&chunk).is_err() {
            let _ = to.shutdown(Shutdown::Both);
            return; // dropping the receiver ends the reader at its next chunk
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Round trips of a 128-byte message through a link of `one_way` each way to an echo on
/// loopback, `count` of them one after the other: (p50, p99) in microseconds.
///
/// # Errors
/// No loopback port, or the echo broke.
pub fn round_trip_us(one_way: Duration, count: usize) -> io::Result<(f64, f64)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let link = Link::start(listener.local_addr()?, one_way)?;
    let measured = TcpStream::connect(link.addr()).and_then(|stream| echo_round_trips(stream, &listener, count));
    link.stop();
    measured
}

/// Round trips of a 128-byte message over `stream`, `count` of them one after the other, to
/// an echo of the connection `listener` accepts (the one `stream` reaches, directly or
/// through links): (p50, p99) in microseconds.
///
/// # Errors
/// The echo broke.
pub(crate) fn echo_round_trips(mut stream: TcpStream, listener: &TcpListener, count: usize) -> io::Result<(f64, f64)> {
    stream.set_nodelay(true)?;
    let (echo, _) = listener.accept()?;
    echo.set_nodelay(true)?;
    let echoer = std::thread::Builder::new().name("link-echo".into()).spawn(move || {
        let mut echo = echo;
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = echo.read(&mut buf) {
            if echo.write_all(buf.get(..n).unwrap_or_default()).is_err() {
                return;
            }
        }
    })?;
    let message = [0x5au8; 128];
    let mut answer = [0u8; 128];
    let mut samples_us = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        stream.write_all(&message)?;
        stream.read_exact(&mut answer)?;
        samples_us.push(started.elapsed().as_secs_f64() * 1e6);
    }
    stream.shutdown(Shutdown::Write)?;
    let _ = echoer.join();
    samples_us.sort_by(f64::total_cmp);
    Ok((super::percentile(&samples_us, 0.50), super::percentile(&samples_us, 0.99)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink behind a link: everything it received until the end of the stream, and when the
    /// last byte came.
    fn sink_behind_link(one_way: Duration) -> (Link, JoinHandle<(Vec<u8>, Instant)>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let link = Link::start(listener.local_addr().expect("bound"), one_way).expect("the link starts");
        let sink = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("the link connects");
            let mut received = Vec::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut last = Instant::now();
            while let Ok(n @ 1..) = stream.read(&mut buf) {
                received.extend_from_slice(&buf[..n]);
                last = Instant::now();
            }
            (received, last)
        });
        (link, sink)
    }

    #[test]
    fn round_trip_takes_at_least_the_rtt() {
        let one_way = Duration::from_millis(2);
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let link = Link::start(listener.local_addr().expect("bound"), one_way).expect("the link starts");
        let mut client = TcpStream::connect(link.addr()).expect("the link accepts");
        let (mut server, _) = listener.accept().expect("the link connects");
        for i in 0..20u8 {
            let started = Instant::now();
            client.write_all(&[i; 100]).expect("write");
            let mut request = [0u8; 100];
            server.read_exact(&mut request).expect("the request arrives");
            assert!(started.elapsed() >= one_way, "request {i} arrived after {:?}", started.elapsed());
            assert_eq!(request, [i; 100], "request {i} changed on the way");
            server.write_all(&request).expect("write");
            let mut answer = [0u8; 100];
            client.read_exact(&mut answer).expect("the answer arrives");
            assert!(started.elapsed() >= 2 * one_way, "round trip {i} took {:?}", started.elapsed());
            assert_eq!(answer, [i; 100], "answer {i} changed on the way");
        }
        drop(client);
        link.stop();
    }

    #[test]
    fn chunks_in_flight_overlap() {
        // 100 chunks sent 2 ms apart through a 20 ms line: delivered in about 200 + 20 ms. A
        // line that waited out the delay before each write in turn would need 100 x 20 ms.
        let one_way = Duration::from_millis(20);
        let (link, sink) = sink_behind_link(one_way);
        let mut stream = TcpStream::connect(link.addr()).expect("the link accepts");
        stream.set_nodelay(true).expect("nodelay");
        let started = Instant::now();
        let mut sent = Vec::new();
        for i in 0..100u32 {
            let chunk: Vec<u8> = (0..1024u32).map(|k| (i.wrapping_mul(31).wrapping_add(k) % 251) as u8).collect();
            stream.write_all(&chunk).expect("write");
            sent.extend_from_slice(&chunk);
            std::thread::sleep(Duration::from_millis(2)); // pacing, so each chunk is read alone
        }
        let sent_for = started.elapsed();
        drop(stream);
        let (received, last) = sink.join().expect("the sink ends");
        let took = last - started;
        assert_eq!(received, sent, "bytes lost, changed or reordered");
        assert!(took >= one_way, "delivered in {took:?}, under the one-way delay");
        assert!(took < sent_for + one_way + Duration::from_millis(500), "chunks waited in turn: {took:?}");
        link.stop();
    }

    #[test]
    fn throughput_is_not_capped_by_the_delay() {
        // 64 MiB through a 50 ms line. One chunk per delay would move 64 KiB per 50 ms and take
        // 50 s; a window of a few chunks, seconds.
        let one_way = Duration::from_millis(50);
        let (link, sink) = sink_behind_link(one_way);
        let mut stream = TcpStream::connect(link.addr()).expect("the link accepts");
        let block = vec![0xa5u8; 1 << 20];
        let started = Instant::now();
        for _ in 0..64 {
            stream.write_all(&block).expect("write");
        }
        drop(stream);
        let (received, last) = sink.join().expect("the sink ends");
        let took = last - started;
        assert_eq!(received.len(), 64 << 20, "bytes lost");
        assert!(received.iter().all(|&b| b == 0xa5), "bytes changed");
        assert!(took < Duration::from_secs(3), "64 MiB took {took:?}");
        link.stop();
    }
}
