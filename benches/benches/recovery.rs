//! Reopening a 256 MiB log of 4 KiB records.
//!
//! Group `recovery/256MiB_log`:
//! - `raw_open_mmap`: the floor of any reopen that maps its segments: open and map files of
//!   the same number and size as the log's segments, then unmap and close them.
//! - `tern_clean_reopen`: `Log::open` of a log that was closed cleanly (only the open is timed;
//!   the close that follows is not).
//! - `tern_unclean_reopen`: `Log::open` after an unclean stop. Before each timed open (outside
//!   the timing) a tail is appended to the previous handle, 16 records synced and 16 not, and
//!   the handle is dropped with `std::mem::forget`, so nothing marks the log clean. Each open
//!   uses a fresh `Committer`, as a restarted process would.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use tern_benches::{bench_dir, payload, preallocated, raw_open_and_map, MIB};
use tern_segment::{Disk, OsDisk};
use tern_wal::{Committer, Durability, Log, LogOptions};

const RECORD_BYTES: usize = 4 << 10;
const LOG_BYTES: u64 = 256 << 20;
const TAIL_RECORDS: usize = 16;
const NAME: &str = "recovery";

fn open(disk: &Arc<dyn Disk>, dir: &Path, committer: &Committer, create: bool) -> Log {
    Log::open(disk.clone(), dir, NAME, LogOptions::default(), committer.clone(), create).expect("open log")
}

/// Writes `LOG_BYTES` of 4 KiB records in 1 MiB batches and closes the log cleanly.
fn fill(disk: &Arc<dyn Disk>, dir: &Path) {
    let committer = Committer::start(disk.clone());
    let log = open(disk, dir, &committer, true);
    let records: Vec<Vec<u8>> = (0..MIB / RECORD_BYTES).map(|i| payload(RECORD_BYTES, i as u64)).collect();
    let batch: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    for _ in 0..LOG_BYTES / MIB as u64 {
        log.append(&batch, Durability::None).expect("append");
    }
    log.close().expect("close");
    committer.stop();
}

/// Appends the tail of an unclean stop and forgets the handle (no close, no drop).
fn crash(log: Log, tail: &[&[u8]]) {
    log.append(tail, Durability::Local).expect("append synced tail");
    log.append(tail, Durability::None).expect("append unsynced tail");
    std::mem::forget(log);
}

fn recovery(c: &mut Criterion) {
    let dir = bench_dir("recovery");
    let disk: Arc<dyn Disk> = Arc::new(OsDisk::new());
    let log_dir = dir.path().join("log");
    fill(&disk, &log_dir);

    let segment_bytes = LogOptions::default().segment_size_bytes;
    let raw_paths: Vec<PathBuf> = (0..LOG_BYTES.div_ceil(segment_bytes))
        .map(|i| {
            let path = dir.path().join(format!("raw-{i}"));
            preallocated(&path, segment_bytes).expect("raw file");
            path
        })
        .collect();

    let tail_record = payload(RECORD_BYTES, 99);
    let tail: Vec<&[u8]> = vec![tail_record.as_slice(); TAIL_RECORDS];

    let mut group = c.benchmark_group("recovery/256MiB_log");
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function(BenchmarkId::from_parameter("raw_open_mmap"), |b| {
        b.iter(|| black_box(raw_open_and_map(&raw_paths).expect("raw open")));
    });
    group.bench_function(BenchmarkId::from_parameter("tern_clean_reopen"), |b| {
        let committer = Committer::start(disk.clone());
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let log = open(&disk, &log_dir, &committer, false);
                total += started.elapsed();
                assert!(log.recovered().clean, "a cleanly closed log reopened through recovery");
                log.close().expect("close");
            }
            total
        });
        committer.stop();
    });

    // The unclean state every timed open starts from; one untimed reopen first, to report
    // what recovery walks and verifies after such a stop.
    let mut committer = Committer::start(disk.clone());
    crash(open(&disk, &log_dir, &committer, false), &tail);
    let fresh = Committer::start(disk.clone());
    let log = open(&disk, &log_dir, &fresh, false);
    let recovered = log.recovered();
    eprintln!(
        "recovery/256MiB_log: an unclean reopen walked or verified {} KiB (torn tail cut: {} B)",
        recovered.scanned_bytes >> 10,
        recovered.torn_tail_bytes
    );
    crash(log, &tail);
    committer.stop();
    committer = fresh;
    group.bench_function(BenchmarkId::from_parameter("tern_unclean_reopen"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let fresh = Committer::start(disk.clone());
                let started = Instant::now();
                let log = open(&disk, &log_dir, &fresh, false);
                total += started.elapsed();
                assert!(!log.recovered().clean, "an unclean stop was taken for a clean close");
                crash(log, &tail);
                committer.stop();
                committer = fresh;
            }
            total
        });
    });
    group.finish();

    // Leave the log closed cleanly before the directory is removed.
    committer.stop();
    let committer = Committer::start(disk.clone());
    open(&disk, &log_dir, &committer, false).close().expect("close");
    committer.stop();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = recovery
}
criterion_main!(benches);
