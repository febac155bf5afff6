//! Connections that a node drops: every one closes its socket for good.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use tern_replication::driver::Role;

mod common;
use common::any_port;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Connections that send garbage are dropped by the node; their descriptors must not stay
/// open (six rounds of two hundred once reached `ulimit -n` and the node refused everyone).
#[test]
fn garbage_connections_leave_no_descriptor_open() {
    let dir = tempfile::tempdir().unwrap();
    let node =
        common::start(dir.path(), tern::Config::default(), common::config(0xfd, 1, Role::Leader, vec![], any_port()));
    let at = node.local_addr();
    // Warm up: threads and files the node opens once.
    drop(TcpStream::connect(at).unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let before = open_descriptors();
    let mut noise = vec![0u8; 256 << 10];
    let mut x: u32 = 0x9e37_79b9;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    for _ in 0..3 {
        let conns: Vec<TcpStream> = (0..10)
            .map(|_| {
                let mut c = TcpStream::connect(at).unwrap();
                c.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
                let _ = c.write_all(&noise);
                c
            })
            .collect();
        drop(conns);
    }
    common::eventually("the node to close every garbage connection", Duration::from_secs(10), || {
        (open_descriptors() <= before + 2).then_some(())
    });
}

/// Waits until the node closes `conn` (a read returns end of file or an error), or `limit`.
fn closed_within(conn: &mut TcpStream, limit: Duration) -> bool {
    use std::io::Read;
    conn.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let deadline = std::time::Instant::now() + limit;
    let mut buf = [0u8; 256];
    while std::time::Instant::now() < deadline {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// The handshake timeout bounds the whole first message, not each read: a connection that
/// trickles a byte every 300 ms is closed once the 1 s it had are over.
#[test]
fn a_connection_trickling_its_first_message_is_closed_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let node =
        common::start(dir.path(), tern::Config::default(), common::config(0xfd, 1, Role::Leader, vec![], any_port()));
    let mut conn = TcpStream::connect(node.local_addr()).unwrap();
    let trickle = conn.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut trickle = trickle;
        // A length prefix of a 1 KiB message, then its body a byte at a time.
        let mut bytes = 1024u32.to_le_bytes().to_vec();
        bytes.resize(1024, 0);
        for b in bytes {
            if trickle.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    assert!(closed_within(&mut conn, Duration::from_secs(4)), "still open after 4 s of trickling");
    drop(conn);
    let _ = writer.join();
}

/// Clients that connect and then say nothing more give their places back after the idle
/// timeout.
#[test]
fn an_idle_client_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = tern_replication::driver::ServerConfig {
        client_idle_timeout: Duration::from_millis(500),
        ..common::config(0xfd, 1, Role::Leader, vec![], any_port())
    };
    let node = common::start(dir.path(), tern::Config::default(), config);
    let mut client = tern_replication::driver::Client::connect(node.local_addr()).unwrap();
    client.status().unwrap();
    let mut conn = TcpStream::connect(node.local_addr()).unwrap();
    // A status request, so that it is a client; then nothing.
    let mut bytes = Vec::new();
    tern_replication::codec::encode(&tern_replication::message::Message::ClientStatus, &mut bytes);
    conn.write_all(&bytes).unwrap();
    assert!(closed_within(&mut conn, Duration::from_secs(5)), "an idle client kept its place");
}

/// A follower whose client places are all taken by idle clients still takes its leader's
/// connection: quorum appends go on.
#[test]
fn clients_filling_a_followers_places_never_keep_its_leader_out() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let follower_config = tern_replication::driver::ServerConfig {
        connections_max: 4,
        ..common::config(0xfd, 2, Role::Follower, vec![], any_port())
    };
    let follower = common::start(dirs[1].path(), tern::Config::default(), follower_config);
    let idle: Vec<tern_replication::driver::Client> = (0..4)
        .map(|_| {
            let mut c = tern_replication::driver::Client::connect(follower.local_addr()).unwrap();
            c.status().unwrap();
            c
        })
        .collect();
    let leader = common::start(
        dirs[0].path(),
        tern::Config::default(),
        common::config(0xfd, 1, Role::Leader, vec![(2, follower.local_addr())], any_port()),
    );
    let mut client = tern_replication::driver::Client::connect(leader.local_addr()).unwrap();
    let r =
        client.append_acks("orders", vec![bytes::Bytes::from_static(b"one")], tern_replication::message::Acks::Quorum);
    assert!(r.is_ok(), "the leader was kept out by idle clients: {r:?}");
    drop(idle);
}

/// A client that pipelines many reads and never reads the replies, then goes away, must not
/// hold up other clients, nor keep the node busy building replies for nobody.
#[test]
fn a_client_that_never_reads_its_replies_stalls_nobody_else() {
    let dir = tempfile::tempdir().unwrap();
    let node =
        common::start(dir.path(), tern::Config::default(), common::config(0xfd, 1, Role::Leader, vec![], any_port()));
    let mut client = tern_replication::driver::Client::connect(node.local_addr()).unwrap();
    let big: Vec<bytes::Bytes> = (0..64).map(|_| bytes::Bytes::from(vec![b'x'; 16 << 10])).collect();
    for _ in 0..4 {
        client.append_acks("orders", big.clone(), tern_replication::message::Acks::Leader).unwrap();
    }
    let mut request = Vec::new();
    let read = tern_replication::message::Message::ClientRead {
        log: "orders".into(),
        from: 0,
        max: 10_000,
        uncommitted: true,
        wait_ms: 0,
    };
    for _ in 0..1024 {
        tern_replication::codec::encode(&read, &mut request);
    }
    for _ in 0..4 {
        let mut abuser = TcpStream::connect(node.local_addr()).unwrap();
        abuser.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = abuser.write_all(&request);
        drop(abuser);
    }
    let started = std::time::Instant::now();
    client
        .append_acks("orders", vec![bytes::Bytes::from_static(b"one more")], tern_replication::message::Acks::Leader)
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "an append took {:?} behind clients that read nothing",
        started.elapsed()
    );
    // Nothing is still being built for the connections that went away: the node stops at once.
    drop(client);
    let stopping = std::time::Instant::now();
    node.stop();
    assert!(stopping.elapsed() < Duration::from_secs(10), "the stop took {:?}", stopping.elapsed());
}

/// Resident memory of this process (the node runs in it).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

/// Connections that claim large frames and send part of them make the node buffer no more
/// than its frame memory budget: a large frame holds room for its whole length before its
/// bytes are buffered, a frame that does not fit is not read (its bytes wait in the socket),
/// and small requests of other clients are served meanwhile. Before the budget, a first
/// message's buffer was its whole claimed length, zeroed: eight claims of 60 MiB cost 480 MiB.
#[test]
fn frames_being_received_stay_within_one_memory_budget() {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;
    use tern_replication::driver::{Client, ServerConfig, FRAME_MEMORY_MIN};
    use tern_replication::message::{Acks, Message};

    const CLAIM: usize = 60 << 20;
    const SENT: usize = 40 << 20;
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        frame_memory_max: FRAME_MEMORY_MIN,
        leader_epoch: None,
        handing_over_to: None,
        learners: Vec::new(),
        // The abusers keep their places for the whole test.
        handshake_timeout: Duration::from_secs(60),
        ..common::config(0xfb, 1, Role::Leader, vec![], any_port())
    };
    let node = common::start(dir.path(), tern::Config::default(), config);
    let at = node.local_addr();
    let mut client = Client::connect(at).unwrap();
    client.append_acks("orders", vec![bytes::Bytes::from_static(b"warm")], Acks::Leader).unwrap();
    let body = Arc::new(vec![0xabu8; SENT]);
    let before = resident_bytes();
    let sent = Arc::new(AtomicUsize::new(0));
    let mut status = Vec::new();
    tern_replication::codec::encode(&Message::ClientStatus, &mut status);
    // Eight claims as a first message, four from clients the client loop serves.
    let abusers: Vec<(TcpStream, std::thread::JoinHandle<()>)> = (0..12)
        .map(|i| {
            let conn = TcpStream::connect(at).unwrap();
            let mut out = conn.try_clone().unwrap();
            let (body, sent, status) = (body.clone(), sent.clone(), status.clone());
            let sender = std::thread::spawn(move || {
                if i >= 8 && out.write_all(&status).is_err() {
                    return;
                }
                let len = u32::try_from(CLAIM - tern_replication::codec::ENVELOPE_PREFIX_BYTES).unwrap();
                if out.write_all(&len.to_le_bytes()).is_err() {
                    return;
                }
                for piece in body.chunks(1 << 20) {
                    if out.write_all(piece).is_err() {
                        return;
                    }
                    sent.fetch_add(piece.len(), Ordering::Relaxed);
                }
            });
            (conn, sender)
        })
        .collect();
    // Until the senders stop getting bytes in: one frame at a time fits.
    let last = AtomicU64::new(u64::MAX);
    common::eventually("the senders to block", Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(500));
        let now = sent.load(Ordering::Relaxed) as u64;
        (last.swap(now, Ordering::Relaxed) == now && now >= SENT as u64).then_some(())
    });
    let metrics = node.metrics();
    assert_eq!(metrics.frame_bytes_held, CLAIM as u64, "one claim fits the clients' part of the budget, two do not");
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown < (CLAIM + (32 << 20)) as u64,
        "the node holds {} MiB more for frames being received, over a budget of {} MiB",
        grown >> 20,
        metrics.frame_memory_max >> 20
    );
    // Small requests are not held up by the large ones.
    let started = std::time::Instant::now();
    client.append_acks("orders", vec![bytes::Bytes::from_static(b"small")], Acks::Leader).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "a small append waited {:?}", started.elapsed());
    for (conn, sender) in abusers {
        let _ = conn.shutdown(std::net::Shutdown::Both);
        let _ = sender.join();
    }
    common::eventually("the budget to be given back", Duration::from_secs(10), || {
        (node.metrics().frame_bytes_held == 0).then_some(())
    });
    // A large append fits again.
    let large = vec![bytes::Bytes::from(vec![b'x'; 8 << 20])];
    client.append_acks("orders", large, Acks::Leader).unwrap();
}

/// Connections that send a few bytes and then nothing, more of them than the node takes, do not
/// keep a real client out: over the cap, the connection that has waited longest for its first
/// message is closed to make room. (Before, clients were refused "too many connections" until
/// the flood's handshake deadlines passed, again for as long as the flood reconnected.)
#[test]
fn a_flood_of_connections_that_never_finish_a_message_locks_no_client_out() {
    let dir = tempfile::tempdir().unwrap();
    let config = tern_replication::driver::ServerConfig {
        connections_max: 4,
        // The flood would keep its places for the whole test.
        handshake_timeout: Duration::from_secs(60),
        ..common::config(0xfe, 1, Role::Leader, vec![], any_port())
    };
    let node = common::start(dir.path(), tern::Config::default(), config);
    let flood: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut c = TcpStream::connect(node.local_addr()).unwrap();
            let _ = c.write_all(&[1, 2, 3]);
            c
        })
        .collect();
    for round in 0..5 {
        let mut client = tern_replication::driver::Client::connect(node.local_addr()).unwrap();
        client.set_timeout(Some(Duration::from_secs(10))).unwrap();
        let status = client.status();
        assert!(status.is_ok(), "round {round}: a client was kept out by the flood: {status:?}");
    }
    drop(flood);
}
