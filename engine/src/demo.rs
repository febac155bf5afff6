//! `tern demo`: a realistic mixed workload on one node, with progress and a summary.
//!
//! Orders are appended with local durability by several writers, while event streams of 16
//! partitions are appended in batches without waiting for sync, a consumer tails the orders
//! log, and a blob log takes 64 KiB records. Then the engine is closed, reopened and every
//! record is read back and checked.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::{Config, Durability, Engine, Visibility};

/// Arguments of `tern demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Run the single-node workload instead of the three-node cluster.
    #[arg(long)]
    pub single_node: bool,
    /// Keep the engine in this directory instead of a temporary one (must not exist).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Seconds of mixed workload.
    #[arg(long, default_value_t = 8.0)]
    pub seconds: f64,
}

const ORDER_WRITERS: u64 = 8;
const PARTITIONS: u64 = 16;

fn order(writer: u64, n: u64) -> Vec<u8> {
    format!(
        r#"{{"order":"{writer}-{n}","customer":{},"items":{},"total_cents":{}}}"#,
        n % 977,
        1 + n % 7,
        995 + n * 13 % 20000
    )
    .into_bytes()
}

fn event(partition: u64, n: u64) -> Vec<u8> {
    format!(
        "partition={partition} seq={n} kind=page_view path=/products/{} session={:016x}",
        n % 5000,
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
    .into_bytes()
}

/// Runs the demo: the three-node cluster by default, or the single-node workload.
///
/// # Errors
/// Any engine error, or a record read back that differs from what was written.
pub fn run(args: &DemoArgs) -> Result<(), Box<dyn std::error::Error>> {
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err("--seconds must be in (0, 3600]".into());
    }
    if !args.single_node {
        return crate::cluster_demo::run(args);
    }
    let tmp;
    let dir = match &args.dir {
        Some(dir) if dir.exists() => return Err(format!("{} already exists", dir.display()).into()),
        Some(dir) => dir.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("tern-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    println!("tern demo: a single-node engine in {}", dir.display());
    let config = Config { segment_size_bytes: 16 << 20, ..Config::default() };
    let engine = Engine::open(&dir, config.clone())?;
    let duration = Duration::from_secs_f64(args.seconds);
    let stop = AtomicBool::new(false);
    let orders_done = AtomicU64::new(0);
    let events_done = AtomicU64::new(0);
    let blobs_done = AtomicU64::new(0);
    let tailed = AtomicU64::new(0);
    let bar = ProgressBar::new(duration.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let orders = engine.log("orders")?;
    let partitions: Vec<_> = (0..PARTITIONS).map(|p| engine.log(&format!("events-{p}"))).collect::<Result<_, _>>()?;
    let blobs = engine.log("blobs")?;
    let started = Instant::now();
    let result: Result<(), String> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for w in 0..ORDER_WRITERS {
            let (orders, stop, done) = (orders.clone(), &stop, &orders_done);
            handles.push(s.spawn(move || -> Result<(), String> {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    orders.append(&[&order(w, n)], Durability::Local).map_err(|e| e.to_string())?;
                    n += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }));
        }
        {
            let (partitions, stop, done) = (&partitions, &stop, &events_done);
            handles.push(s.spawn(move || -> Result<(), String> {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for (p, log) in partitions.iter().enumerate() {
                        let batch: Vec<Vec<u8>> = (0..32).map(|i| event(p as u64, n + i)).collect();
                        let values: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                        log.append(&values, Durability::None).map_err(|e| e.to_string())?;
                        done.fetch_add(32, Ordering::Relaxed);
                    }
                    n += 32;
                    if n.is_multiple_of(1024) {
                        for log in partitions {
                            log.sync().map_err(|e| e.to_string())?;
                        }
                    }
                }
                Ok(())
            }));
        }
        {
            let (blobs, stop, done) = (blobs.clone(), &stop, &blobs_done);
            handles.push(s.spawn(move || -> Result<(), String> {
                let blob: Vec<u8> = (0..64 << 10).map(|i: u32| (i % 251) as u8).collect();
                while !stop.load(Ordering::Relaxed) {
                    blobs.append(&[&blob], Durability::Local).map_err(|e| e.to_string())?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }));
        }
        {
            // A consumer tails the orders log, seeing only durable records, in order.
            let (orders, stop, tailed) = (orders.clone(), &stop, &tailed);
            handles.push(s.spawn(move || -> Result<(), String> {
                let mut next = 0u64;
                loop {
                    if !orders.wait_for(next, Visibility::Durable, Some(Duration::from_millis(200))) {
                        if stop.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        continue;
                    }
                    for record in orders.read(next, Visibility::Durable).map_err(|e| e.to_string())? {
                        let record = record.map_err(|e| e.to_string())?;
                        if record.offset != next {
                            return Err(format!("tail saw offset {} where {next} was expected", record.offset));
                        }
                        next += 1;
                    }
                    tailed.store(next, Ordering::Relaxed);
                }
            }));
        }
        while started.elapsed() < duration {
            std::thread::sleep(Duration::from_millis(100));
            let secs = started.elapsed().as_secs_f64();
            bar.set_position(started.elapsed().as_millis() as u64);
            bar.set_message(format!(
                "orders {:.0}/s (tail at {}), events {:.0}/s, blobs {:.1} MB/s",
                orders_done.load(Ordering::Relaxed) as f64 / secs,
                tailed.load(Ordering::Relaxed),
                events_done.load(Ordering::Relaxed) as f64 / secs,
                blobs_done.load(Ordering::Relaxed) as f64 * 65536.0 / secs / 1e6,
            ));
        }
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().try_for_each(|h| h.join().map_err(|_| "a worker panicked".to_owned())?)
    });
    bar.finish_and_clear();
    result?;
    let elapsed = started.elapsed().as_secs_f64();
    let metrics = engine.metrics();
    drop((orders, partitions, blobs));
    engine.close()?;

    println!("reopening and reading every record back ...");
    let reopen_started = Instant::now();
    let engine = Engine::open(&dir, config)?;
    let orders = engine.existing_log("orders")?;
    let reopen_ms = reopen_started.elapsed().as_secs_f64() * 1e3;
    let mut per_writer = vec![0u64; ORDER_WRITERS as usize];
    let mut order_count = 0u64;
    for record in orders.read(0, Visibility::Durable)? {
        let record = record?;
        let text = std::str::from_utf8(&record.value)?;
        let id = text.split('"').nth(3).ok_or("order without id")?;
        let (w, n) = id.split_once('-').ok_or("bad order id")?;
        let (w, n): (usize, u64) = (w.parse()?, n.parse()?);
        if per_writer.get(w) != Some(&n) || record.value != order(w as u64, n) {
            return Err(format!("order {id} at offset {} is out of order or damaged", record.offset).into());
        }
        per_writer[w] += 1;
        order_count += 1;
    }
    let mut event_count = 0u64;
    for p in 0..PARTITIONS {
        let log = engine.existing_log(&format!("events-{p}"))?;
        for (i, record) in log.read(0, Visibility::Durable)?.enumerate() {
            if record?.value != event(p, i as u64) {
                return Err(format!("event {i} of partition {p} is damaged").into());
            }
            event_count += 1;
        }
    }
    let blob_count = engine.existing_log("blobs")?.read(0, Visibility::Durable)?.count() as u64;
    let syncs = metrics.committer.file_syncs.max(1);
    let appended_records: u64 = metrics.logs.values().map(|l| l.records).sum();
    println!("summary after {elapsed:.1} s:");
    println!(
        "  orders  {order_count:>10} records, {:>9.0}/s, each synced before it was acknowledged",
        order_count as f64 / elapsed
    );
    println!(
        "  events  {event_count:>10} records, {:>9.0}/s over {PARTITIONS} partition logs",
        event_count as f64 / elapsed
    );
    println!("  blobs   {blob_count:>10} records of 64 KiB, {:.0} MB/s", blob_count as f64 * 65536.0 / elapsed / 1e6);
    println!(
        "  group commit: {} groups, {} file syncs, {:.1} records per sync",
        metrics.committer.groups,
        metrics.committer.file_syncs,
        appended_records as f64 / syncs as f64
    );
    println!("  reopen after clean close: {reopen_ms:.1} ms; every record read back and checked: OK");
    Ok(())
}
