//! `tern demo` (the default): three nodes on loopback ports in temporary directories, run by
//! the controller. A workload streams through the leader it chose, with live progress
//! (throughput, per-peer lag, compression ratio); a follower is stopped while writing goes on,
//! then restarted and seen to catch up; then the leader itself is stopped mid-stream, a
//! follower takes over, and the write pause is printed. At the end every acknowledged record
//! must be in the log exactly once, at the offset its acknowledgement named, and the three
//! logs identical.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use tern_replication::driver::Role;

use crate::cluster::{ClusterConfig, ClusterNode};
use crate::demo::DemoArgs;
use crate::{Config, Engine, Visibility};

const LOG: &str = "orders";
const WRITERS: u64 = 8;
const BATCH: u64 = 16;
const FAILURE_TIMEOUT: Duration = Duration::from_millis(1000);

/// A loopback data address whose next port (its controller's) is free too.
fn address_pair() -> std::io::Result<SocketAddr> {
    loop {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let Some(next) = addr.port().checked_add(1) else { continue };
        if TcpListener::bind(("127.0.0.1", next)).is_ok() {
            return Ok(addr);
        }
    }
}

fn start(dir: &Path, id: u64, cluster: &BTreeMap<u64, SocketAddr>) -> std::io::Result<ClusterNode> {
    let server = tern_replication::driver::ServerConfig {
        cluster_id: 0,
        node_id: id,
        listen: cluster[&id],
        role: Role::Follower,
        peers: Vec::new(),
        quorum: tern_replication::proto::Quorum::Count(2),
        connections_max: 256,
        handshake_timeout: Duration::from_secs(5),
        client_idle_timeout: Duration::from_secs(120),
        commit_timeout: Duration::from_secs(5),
        compression: tern_replication::codec::Compression::default(),
        slot_lag_bytes_max: None,
        quorum_lag_bytes_max: Some(256 << 20),
        reseed: true,
        frame_memory_max: tern_replication::driver::FRAME_MEMORY_MAX_DEFAULT,
        leader_epoch: None,
        handing_over_to: None,
        learners: Vec::new(),
    };
    let config = ClusterConfig {
        node_id: id,
        dir: dir.to_path_buf(),
        cluster: cluster.clone(),
        failure_timeout: FAILURE_TIMEOUT,
        quorum: 2,
        server,
        advertise: None,
    };
    ClusterNode::start(config, Config { segment_size_bytes: 16 << 20, ..Config::default() })
}

/// An order event: JSON that compresses the way real events do.
fn order(writer: u64, n: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"type":"order_placed","order":"{writer}-{n}","customer":{},"items":[{{"sku":"SKU-{:05}","qty":{}}}],"total_cents":{},"currency":"EUR"}}"#,
        n % 977,
        n % 5000,
        1 + n % 7,
        995 + n * 13 % 20000
    ))
}

/// The node leading now, if exactly one does.
fn leader_of(nodes: &BTreeMap<u64, ClusterNode>) -> Option<u64> {
    let leaders: Vec<u64> = nodes
        .iter()
        .filter(|(_, n)| n.role().is_some_and(|(role, _)| role == Role::Leader))
        .map(|(id, _)| *id)
        .collect();
    (leaders.len() == 1).then(|| leaders[0])
}

/// What the writers saw: batches acknowledged (offset of the first record, the records), and
/// batches whose append failed (in doubt: stored or not).
#[derive(Default)]
struct Seen {
    acked: Vec<(u64, Vec<Bytes>)>,
    in_doubt: Vec<Vec<Bytes>>,
    /// The last acknowledgement, and the node address it came from.
    last_ack: Option<(Instant, SocketAddr)>,
    /// Why a writer gave up, if one did.
    gave_up: Option<String>,
}

/// Runs the cluster demo.
///
/// # Errors
/// A node that cannot start, no leader, or a check that fails at the end.
pub fn run(args: &DemoArgs) -> Result<(), Box<dyn std::error::Error>> {
    // The demo never hangs: whatever goes wrong, it ends with an error.
    let limit = Duration::from_secs_f64(args.seconds) + Duration::from_secs(120);
    let _ = std::thread::Builder::new().name("tern-demo-watchdog".into()).spawn(move || {
        std::thread::sleep(limit);
        eprintln!("tern: error: the demo did not finish within {} s", limit.as_secs());
        std::process::exit(1);
    });
    let tmp;
    let root: PathBuf = match &args.dir {
        Some(dir) if dir.exists() => return Err(format!("{} already exists", dir.display()).into()),
        Some(dir) => dir.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("tern-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let dirs: Vec<PathBuf> = (1..=3).map(|i| root.join(format!("node-{i}"))).collect();
    let cluster: BTreeMap<u64, SocketAddr> =
        (1..=3).map(|id| Ok((id, address_pair()?))).collect::<std::io::Result<_>>()?;
    println!(
        "tern demo: three nodes run by the controller on {}, {}, {} (data in {})",
        cluster[&1],
        cluster[&2],
        cluster[&3],
        root.display()
    );
    let mut nodes: BTreeMap<u64, ClusterNode> = BTreeMap::new();
    for id in 1..=3u64 {
        nodes.insert(id, start(&dirs[id as usize - 1], id, &cluster)?);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(id) = leader_of(&nodes) {
            break id;
        }
        if Instant::now() > deadline {
            return Err("no leader was chosen within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("       the controller chose node {first} to lead");
    let addrs: Vec<SocketAddr> = cluster.values().copied().collect();
    let phase = Duration::from_secs_f64(args.seconds / 4.0);
    let stop = AtomicBool::new(false);
    let appended = AtomicU64::new(0);
    let seen = Mutex::new(Seen::default());
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let started = Instant::now();
    let mut notes = Vec::new();
    let nodes = Mutex::new(nodes);
    std::thread::scope(|s| -> Result<(), Box<dyn std::error::Error>> {
        for w in 0..WRITERS {
            let (stop, appended, seen, addrs) = (&stop, &appended, &seen, &addrs);
            s.spawn(move || {
                // An idempotent producer: it follows the leader over the three addresses and
                // sends a batch it is unsure of again with the same sequence, stored once.
                let mut config = tern_replication::driver::ProducerConfig::new(addrs.clone(), LOG);
                config.in_flight_max = 1;
                config.give_up_after = Duration::from_secs(30);
                config.reply_timeout = Some(Duration::from_secs(1));
                let mut producer = match tern_replication::driver::Producer::new(config) {
                    Ok(p) => p,
                    Err(e) => {
                        seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).gave_up = Some(e.to_string());
                        return;
                    }
                };
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<Bytes> = (0..BATCH).map(|i| order(w, n + i)).collect();
                    n += BATCH;
                    let result = producer.send(batch.clone()).and_then(|mut acked| {
                        acked.extend(producer.wait_one()?);
                        Ok(acked)
                    });
                    match result {
                        Ok(acked) => {
                            let at = producer.node().unwrap_or(addrs[0]);
                            let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            for a in acked {
                                appended.fetch_add(BATCH, Ordering::Relaxed);
                                seen.acked.push((a.receipt.start, batch.clone()));
                                seen.last_ack = Some((Instant::now(), at));
                            }
                        }
                        Err(gave_up) => {
                            seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).gave_up =
                                Some(gave_up.reason);
                            return;
                        }
                    }
                }
            });
        }
        let progress = |label: &str| {
            let secs = started.elapsed().as_secs_f64().max(0.001);
            let nodes = nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let line = leader_of(&nodes).and_then(|id| {
                nodes[&id].with_server(|server| {
                    let lag: Vec<String> = server
                        .peer_lag(LOG)
                        .iter()
                        .map(|p| {
                            format!("node {}: {}{}", p.node, p.lag_records, if p.connected { "" } else { " (down)" })
                        })
                        .collect();
                    let ship = server.ship_stats();
                    let ratio = ship.raw_bytes as f64 / ship.wire_bytes.max(1) as f64;
                    format!("leader node {id}; lag {}; compression {ratio:.1}x", lag.join(", "))
                })
            });
            bar.set_message(format!(
                "{label}: {:.0} records/s acked on a quorum; {}",
                appended.load(Ordering::Relaxed) as f64 / secs,
                line.unwrap_or_else(|| "no leader".into())
            ));
        };
        let run_for = |label: &str, duration: Duration| {
            let until = Instant::now() + duration;
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(100));
                progress(label);
            }
        };
        let at = || started.elapsed().as_secs_f64();
        run_for("3 nodes", phase);
        notes.push(format!("{:>6.1} s  3 nodes up: {} records acked", at(), appended.load(Ordering::Relaxed)));
        // A follower stops; writing goes on with the other two.
        let follower = {
            let nodes = nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let leader = leader_of(&nodes).unwrap_or(first);
            *nodes.keys().find(|id| **id != leader).unwrap_or(&1)
        };
        if let Some(node) = nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&follower) {
            node.stop();
        }
        notes.push(format!("{:>6.1} s  node {follower} (a follower) stopped", at()));
        run_for(&format!("node {follower} down"), phase);
        notes.push(format!("{:>6.1} s  writing went on: {} records acked", at(), appended.load(Ordering::Relaxed)));
        let node = start(&dirs[follower as usize - 1], follower, &cluster)?;
        nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(follower, node);
        notes.push(format!("{:>6.1} s  node {follower} restarted", at()));
        run_for(&format!("node {follower} catching up"), phase);
        // The leader stops mid-stream: a follower takes over.
        let leader = leader_of(&nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).unwrap_or(first);
        let stopped = nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&leader);
        let killed_at = Instant::now();
        if let Some(node) = stopped {
            node.stop();
        }
        notes.push(format!("{:>6.1} s  node {leader} (the leader) stopped mid-stream", at()));
        let until = Instant::now() + Duration::from_secs(30);
        let resumed = loop {
            // The first acknowledgement by another node than the stopped leader.
            let last = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).last_ack;
            if let Some((t, _)) = last.filter(|(t, from)| *t > killed_at && *from != cluster[&leader]) {
                break Some(t);
            }
            if Instant::now() > until {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
            progress("leader down");
        };
        let Some(resumed) = resumed else {
            stop.store(true, Ordering::Relaxed);
            return Err("no new leader acknowledged an append within 30 s".into());
        };
        let new = leader_of(&nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        notes.push(format!(
            "{:>6.1} s  node {} took over: writes paused {} ms (failure timeout {} ms)",
            at(),
            new.map_or_else(|| "?".to_owned(), |n| n.to_string()),
            resumed.duration_since(killed_at).as_millis(),
            FAILURE_TIMEOUT.as_millis()
        ));
        let node = start(&dirs[leader as usize - 1], leader, &cluster)?;
        nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(leader, node);
        notes.push(format!("{:>6.1} s  node {leader} restarted: it follows", at()));
        run_for("after the failover", phase);
        stop.store(true, Ordering::Relaxed);
        Ok(())
    })?;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    for note in &notes {
        println!("{note}");
    }
    let nodes = nodes.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    // Wait for the followers to hold everything the leader committed.
    let leader = leader_of(&nodes).ok_or("no leader at the end")?;
    let target = nodes[&leader].with_server(|s| s.commit_end(LOG)).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes.values().any(|n| n.with_server(|s| s.commit_end(LOG)).unwrap_or(0) < target) {
        if Instant::now() > deadline {
            return Err("the followers did not converge within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ship = nodes[&leader].with_server(|s| s.ship_stats());
    for node in nodes.into_values() {
        node.stop();
    }
    // Records by offset: readers skip the control record each new leader writes at the start
    // of its epoch, which still takes an offset.
    let mut logs = Vec::new();
    for dir in &dirs {
        let engine = Engine::open(dir, Config { create_if_missing: false, ..Config::default() })?;
        let log = engine.existing_log(LOG)?;
        let records: BTreeMap<u64, Bytes> =
            log.read(0, Visibility::Durable)?.map(|r| r.map(|r| (r.offset, r.value))).collect::<Result<_, _>>()?;
        logs.push((records, log.durable_end()));
    }
    let (log, end) = &logs[0];
    if logs.iter().any(|(l, e)| l != log || e != end) {
        let lens: Vec<(usize, u64)> = logs.iter().map(|(l, e)| (l.len(), *e)).collect();
        return Err(format!("the three logs differ: {lens:?} (records, end offset)").into());
    }
    let seen = seen.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(why) = &seen.gave_up {
        return Err(format!("a writer gave up: {why}").into());
    }
    let mut acked_records = 0usize;
    for (start, batch) in &seen.acked {
        for (i, record) in batch.iter().enumerate() {
            if log.get(&(start + i as u64)) != Some(record) {
                return Err(format!("an acknowledged record is not at offset {}", start + i as u64).into());
            }
        }
        acked_records += batch.len();
    }
    let markers = *end as usize - log.len();
    let mut unique = BTreeSet::new();
    for record in log.values() {
        if !unique.insert(record) {
            return Err("a record appears twice in the log".into());
        }
    }
    let doubtful: usize = seen.in_doubt.iter().map(Vec::len).sum();
    let stored_doubtful: usize = seen.in_doubt.iter().flatten().filter(|r| unique.contains(r)).count();
    if acked_records + stored_doubtful != log.len() {
        return Err(format!(
            "the log holds {} records: {acked_records} acknowledged and {stored_doubtful} in doubt account for fewer",
            log.len()
        )
        .into());
    }
    println!("summary after {elapsed:.1} s:");
    println!(
        "  {acked_records} records acknowledged on a quorum (2 of 3, each synced on both), {:.0} records/s",
        acked_records as f64 / elapsed
    );
    if let Some(ship) = ship {
        println!(
            "  the last leader shipped {:.1} MB of batches as {:.1} MB on the wire: compression {:.1}x",
            ship.raw_bytes as f64 / 1e6,
            ship.wire_bytes as f64 / 1e6,
            ship.raw_bytes as f64 / ship.wire_bytes.max(1) as f64
        );
    }
    println!(
        "  {doubtful} records in doubt when the leader stopped (their appends failed): {stored_doubtful} of them are in the log, each once"
    );
    println!(
        "  all three logs identical, {} records each (and {markers} epoch marker(s), one per new leader, which readers skip); every acknowledged record once, at its offset; none invented: OK",
        log.len()
    );
    Ok(())
}
