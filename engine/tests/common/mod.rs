//! What the cluster tests share: waiting for a state, ports, and in-process nodes.
#![allow(dead_code)] // each test file uses part of it

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern::cluster::ClusterConfig;
use tern_replication::driver::{LogMetrics, Role, Server, ServerConfig};
use tern_replication::proto::Quorum;

/// Retries until `f` succeeds or `timeout` passes: waiting for a state, not for a time.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Any free loopback port, chosen when bound.
pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A loopback port free now, to bind later (a node restarted on the same address).
pub fn free_addr() -> SocketAddr {
    address_pair()
}

/// A data address whose next port (a controller's, in `tern serve --cluster`) is free too.
pub fn address_pair() -> SocketAddr {
    // Below the kernel's ephemeral range: a port from that range, free while its node is down
    // (killed, restarting), can be taken meanwhile as the local port of any outgoing
    // connection, and the node then cannot listen on it again.
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (first, last) = (10_000u16, low.saturating_sub(2).max(10_002));
    let mut pick = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    };
    // Never the same pair twice in one test process: a port handed out and free for a moment
    // (its node stopped, to restart at the same address) must not go to a test running beside.
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        pick = pick.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let port = first + ((pick >> 33) % u64::from(last - first)) as u16;
        {
            let mut handed = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if handed.contains(&port) || handed.contains(&(port + 1)) || handed.contains(&(port - 1)) {
                continue;
            }
            handed.extend([port, port + 1]);
        }
        let (Ok(_data), Ok(_next)) =
            (std::net::TcpListener::bind(("127.0.0.1", port)), std::net::TcpListener::bind(("127.0.0.1", port + 1)))
        else {
            continue;
        };
        return SocketAddr::from(([127, 0, 0, 1], port));
    }
}

/// A node's settings for tests: quorum 2, short timeouts (a 5 s commit timeout), defaults elsewhere.
pub fn config(cluster_id: u64, id: u64, role: Role, peers: Vec<(u64, SocketAddr)>, listen: SocketAddr) -> ServerConfig {
    ServerConfig {
        cluster_id,
        node_id: id,
        listen,
        role,
        peers,
        quorum: Quorum::Count(2),
        connections_max: 64,
        handshake_timeout: Duration::from_secs(1),
        client_idle_timeout: Duration::from_secs(60),
        // Long enough for a node's first appends to wait out its followers' handshakes on a
        // loaded machine; tests of the timeout itself set their own.
        commit_timeout: Duration::from_secs(5),
        compression: tern_replication::codec::Compression::default(),
        slot_lag_bytes_max: None,
        quorum_lag_bytes_max: Some(256 << 20),
        reseed: true,
        frame_memory_max: tern_replication::driver::FRAME_MEMORY_MAX_DEFAULT,
        leader_epoch: None,
        handing_over_to: None,
        learners: Vec::new(),
    }
}

/// The settings of node `id` of `cluster` run by the controller (`tern serve --cluster`), in
/// `dir`: listening at its address in `cluster` (reached at `advertise` if given), quorum 2,
/// the test settings otherwise ([`config`]).
pub fn cluster_config(
    dir: &Path,
    id: u64,
    cluster: &BTreeMap<u64, SocketAddr>,
    failure_timeout: Duration,
    advertise: Option<SocketAddr>,
) -> ClusterConfig {
    ClusterConfig {
        node_id: id,
        dir: dir.to_path_buf(),
        cluster: cluster.clone(),
        failure_timeout,
        quorum: 2,
        server: config(0, id, Role::Follower, vec![], cluster[&id]),
        advertise,
    }
}

/// A node serving an engine opened in `dir`.
pub fn start(dir: &Path, engine: tern::Config, config: ServerConfig) -> Server {
    let engine = Arc::new(tern::Engine::open(dir, engine).expect("open engine"));
    Server::start(config, Arc::new(tern::EngineLogs(engine))).expect("start node")
}

/// The metrics of `log` on `server`.
pub fn log_metrics(server: &Server, log: &str) -> LogMetrics {
    server.metrics().logs.into_iter().find(|l| l.log == log).expect("the log is open")
}

/// A seed from `TERN_SEED` (hex) or the clock, printed so that a failure can be replayed.
pub fn seed() -> u64 {
    let seed = std::env::var("TERN_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("seed {seed:#x} (replay with TERN_SEED={seed:#x})");
    seed
}

/// Reads one whole message from a raw connection (a test playing a peer or a client by hand).
pub fn read_message(stream: &mut std::net::TcpStream) -> std::io::Result<tern_replication::message::Message> {
    use std::io::Read;
    let mut bytes = vec![0u8; 4];
    stream.read_exact(&mut bytes)?;
    let len = tern_replication::codec::frame_len(&bytes).map_err(std::io::Error::other)?.unwrap_or(4);
    bytes.resize(len, 0);
    stream.read_exact(&mut bytes[4..])?;
    match tern_replication::codec::decode(&bytes::Bytes::from(bytes)).map_err(std::io::Error::other)? {
        Some((msg, _)) => Ok(msg),
        None => Err(std::io::Error::other("a short message")),
    }
}

/// Writes one message to a raw connection.
pub fn write_message(
    stream: &mut std::net::TcpStream,
    msg: &tern_replication::message::Message,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut bytes = Vec::new();
    tern_replication::codec::encode(msg, &mut bytes);
    stream.write_all(&bytes)
}

/// A follower (node 2) in `dirs[1]` and a leader (node 1) in `dirs[0]` shipping to it, in
/// cluster `cluster_id`, with the test settings: `(leader, follower)`.
pub fn leader_and_follower(dirs: &[tempfile::TempDir], cluster_id: u64) -> (Server, Server) {
    let follower =
        start(dirs[1].path(), tern::Config::default(), config(cluster_id, 2, Role::Follower, vec![], any_port()));
    let peers = vec![(2, follower.local_addr())];
    let leader = start(dirs[0].path(), tern::Config::default(), config(cluster_id, 1, Role::Leader, peers, any_port()));
    (leader, follower)
}

/// Every record of `log` a node at `addr` answers with (committed ones only unless
/// `uncommitted`), by offset: read on from each reply's first offset, as readers must, since
/// control records are skipped.
pub fn read_log(
    addr: SocketAddr,
    log: &str,
    uncommitted: bool,
) -> std::io::Result<std::collections::BTreeMap<u64, bytes::Bytes>> {
    let mut client = tern_replication::driver::Client::connect(addr)?;
    let (mut out, mut next) = (std::collections::BTreeMap::new(), 0);
    loop {
        let (start, _, records) = client.read_from(log, next, 10_000, uncommitted)?;
        assert!(start >= next, "a read from {next} answered from {start}");
        if records.is_empty() {
            return Ok(out);
        }
        next = start + records.len() as u64;
        out.extend((start..).zip(records));
    }
}
