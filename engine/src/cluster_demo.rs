//! `tern demo` (the default): a leader and two followers on loopback ports in temporary
//! directories. A workload streams through them with live progress (throughput, per-peer lag,
//! compression ratio); one follower is stopped while writing goes on, then restarted and seen
//! to catch up; at the end the three logs must be identical.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use tern_replication::driver::{Client, Role, Server};

use crate::demo::DemoArgs;
use crate::{Config, Engine, Visibility};

const LOG: &str = "orders";
const WRITERS: u64 = 8;

fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn start(
    dir: &Path,
    id: u64,
    addr: SocketAddr,
    role: Role,
    peers: Vec<(u64, SocketAddr)>,
) -> Result<Server, Box<dyn std::error::Error>> {
    let spec = crate::bench::NodeSpec {
        id,
        dir: dir.to_path_buf(),
        addr,
        role,
        peers,
        compression: tern_replication::codec::Compression::default(),
        engine: Config { segment_size_bytes: 16 << 20, ..Config::default() },
    };
    // The server holds the engine; the demo needs only the server.
    Ok(crate::bench::start_node(&spec)?.1)
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

/// Runs the cluster demo.
///
/// # Errors
/// A node that cannot start, an append that fails, or logs that differ at the end.
pub fn run(args: &DemoArgs) -> Result<(), Box<dyn std::error::Error>> {
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
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect::<Result<_, _>>()?;
    println!(
        "tern demo: a leader and two followers on {}, {}, {} (data in {})",
        addrs[0],
        addrs[1],
        addrs[2],
        root.display()
    );
    let mut followers: Vec<Option<Server>> = vec![
        Some(start(&dirs[1], 2, addrs[1], Role::Follower, vec![])?),
        Some(start(&dirs[2], 3, addrs[2], Role::Follower, vec![])?),
    ];
    let leader = start(&dirs[0], 1, addrs[0], Role::Leader, vec![(2, addrs[1]), (3, addrs[2])])?;

    let phase = Duration::from_secs_f64(args.seconds / 3.0);
    let stop = AtomicBool::new(false);
    let appended = AtomicU64::new(0);
    let failed: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let started = Instant::now();
    let mut notes = Vec::new();
    std::thread::scope(|s| -> Result<(), Box<dyn std::error::Error>> {
        for w in 0..WRITERS {
            let (stop, appended, failed, addr) = (&stop, &appended, &failed, addrs[0]);
            s.spawn(move || {
                let result = (|| -> std::io::Result<()> {
                    let mut client = Client::connect(addr)?;
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let batch: Vec<Bytes> = (0..16).map(|i| order(w, n + i)).collect();
                        client.append(LOG, batch, true)?;
                        n += 16;
                        appended.fetch_add(16, Ordering::Relaxed);
                    }
                    Ok(())
                })();
                if let Err(e) = result {
                    *failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
                    stop.store(true, Ordering::Relaxed);
                }
            });
        }
        let progress = |label: &str| {
            let secs = started.elapsed().as_secs_f64().max(0.001);
            let lag: Vec<String> = leader
                .peer_lag(LOG)
                .iter()
                .map(|p| format!("node {}: {}{}", p.node, p.lag_records, if p.connected { "" } else { " (down)" }))
                .collect();
            let ship = leader.ship_stats();
            let ratio = ship.raw_bytes as f64 / ship.wire_bytes.max(1) as f64;
            bar.set_message(format!(
                "{label}: {:.0} records/s acked on a quorum; lag {}; compression {ratio:.1}x",
                appended.load(Ordering::Relaxed) as f64 / secs,
                lag.join(", ")
            ));
        };
        let run_for = |label: &str, duration: Duration| {
            let until = Instant::now() + duration;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                progress(label);
            }
        };
        run_for("3 nodes", phase);
        notes.push(format!(
            "{:>6.1} s  3 nodes up: {} records acked",
            started.elapsed().as_secs_f64(),
            appended.load(Ordering::Relaxed)
        ));
        if let Some(server) = followers[1].take() {
            server.stop();
        }
        notes.push(format!("{:>6.1} s  node 3 stopped", started.elapsed().as_secs_f64()));
        run_for("node 3 down", phase);
        let lag_down = leader.peer_lag(LOG).iter().find(|p| p.node == 3).map_or(0, |p| p.lag_records);
        notes.push(format!(
            "{:>6.1} s  writing went on: node 3 is {lag_down} records behind",
            started.elapsed().as_secs_f64()
        ));
        followers[1] = Some(start(&dirs[2], 3, addrs[2], Role::Follower, vec![])?);
        let restarted = Instant::now();
        notes.push(format!("{:>6.1} s  node 3 restarted", started.elapsed().as_secs_f64()));
        let mut caught_up = None;
        // Writing goes on until node 3 has caught up (or 30 s pass), and at least one phase.
        let until = Instant::now() + Duration::from_secs(30).max(phase);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            if caught_up.is_some() && restarted.elapsed() >= phase {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            progress("node 3 catching up");
            if caught_up.is_none()
                && leader.peer_lag(LOG).iter().any(|p| p.node == 3 && p.connected && p.lag_records < 200)
            {
                caught_up = Some(restarted.elapsed());
            }
        }
        stop.store(true, Ordering::Relaxed);
        match caught_up {
            Some(t) => notes.push(format!(
                "{:>6.1} s  node 3 caught up {lag_down} records in {:.2} s, with writes going on",
                started.elapsed().as_secs_f64(),
                t.as_secs_f64()
            )),
            None => notes.push(format!(
                "{:>6.1} s  node 3 still catching up when writing stopped",
                started.elapsed().as_secs_f64()
            )),
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    if let Some(e) = failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
        return Err(format!("a writer failed: {e}").into());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = appended.load(Ordering::Relaxed);
    for note in &notes {
        println!("{note}");
    }
    // Wait for every node to hold everything, then compare the three logs record by record.
    let target = leader.commit_end(LOG);
    let deadline = Instant::now() + Duration::from_secs(30);
    while followers.iter().flatten().any(|f| f.commit_end(LOG) < target) {
        if Instant::now() > deadline {
            return Err("the followers did not converge within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ship = leader.ship_stats();
    leader.stop();
    for follower in followers.into_iter().flatten() {
        follower.stop();
    }
    let mut logs = Vec::new();
    for dir in &dirs {
        let engine = Engine::open(dir, Config { create_if_missing: false, ..Config::default() })?;
        let records: Vec<Bytes> = engine
            .existing_log(LOG)?
            .read(0, Visibility::Durable)?
            .map(|r| r.map(|r| r.value))
            .collect::<Result<_, _>>()?;
        logs.push(records);
    }
    if logs[0].len() as u64 != total || logs[1] != logs[0] || logs[2] != logs[0] {
        return Err(format!(
            "logs differ: leader {} records, followers {} and {}, {total} acknowledged",
            logs[0].len(),
            logs[1].len(),
            logs[2].len()
        )
        .into());
    }
    println!("summary after {elapsed:.1} s:");
    println!(
        "  {total} records acknowledged on a quorum (2 of 3, each synced on both), {:.0} records/s",
        total as f64 / elapsed
    );
    println!(
        "  shipped {:.1} MB of batches as {:.1} MB on the wire: compression {:.1}x",
        ship.raw_bytes as f64 / 1e6,
        ship.wire_bytes as f64 / 1e6,
        ship.raw_bytes as f64 / ship.wire_bytes.max(1) as f64
    );
    println!("  all three logs identical: {} records each, checked record by record: OK", logs[0].len());
    Ok(())
}
