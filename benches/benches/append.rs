//! One writer appending one record at a time, by record size and durability, beside the raw
//! limit of the same disk: `pwrite` of the same size at the end of a pre-allocated file, with
//! and without `fdatasync`. The raw file is written through once before the benches
//! (`tern_benches::prewritten`), so its measured writes never convert unwritten extents;
//! Tern's segments are only `fallocate`d, so that cost is part of the ratio.
//!
//! Groups `append/128B`, `append/4KiB`, `append/64KiB`:
//! - `raw_pwrite`: the limit of `tern_append_none` (page cache only).
//! - `raw_pwrite_fdatasync`: the limit of `tern_append_local`.
//! - `tern_append_none`: `log.append(&[&record], Durability::None)`.
//! - `tern_append_local`: `log.append(&[&record], Durability::Local)` (waits for its fdatasync).
//!
//! The synced and unsynced raw writes go to two files, so no `fdatasync` flushes pages another
//! function left dirty. After each sample, outside the timing, what the unsynced functions
//! wrote is synced, and the log's old segments are deleted with `truncate_prefix`, so a long
//! run does not fill the disk.

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tern::{Durability, Log};
use tern_benches::{bench_dir, payload, RawFile};

const SIZES: [(usize, &str); 3] = [(128, "128B"), (4 << 10, "4KiB"), (64 << 10, "64KiB")];
const RAW_FILE_BYTES: u64 = 256 << 20;

fn raw_writes(raw: &mut RawFile, record: &[u8], sync_each: bool, iters: u64) -> Duration {
    let started = Instant::now();
    for _ in 0..iters {
        if sync_each {
            raw.write_and_sync(record).expect("raw write and sync");
        } else {
            raw.write(record).expect("raw write");
        }
    }
    let elapsed = started.elapsed();
    raw.sync().expect("raw sync");
    elapsed
}

fn tern_appends(log: &Log, record: &[u8], durability: Durability, iters: u64) -> Duration {
    let started = Instant::now();
    for _ in 0..iters {
        black_box(log.append(&[record], durability).expect("append"));
    }
    let elapsed = started.elapsed();
    log.sync().expect("sync");
    log.truncate_prefix(log.written_end()).expect("truncate_prefix");
    elapsed
}

fn append(c: &mut Criterion) {
    let dir = bench_dir("append");
    let engine = tern::Engine::open(&dir.path().join("engine"), tern::Config::default()).expect("open engine");
    let log = engine.log("append").expect("open log");
    let mut raw = RawFile::create(&dir.path().join("raw"), RAW_FILE_BYTES).expect("raw file");
    let mut raw_synced = RawFile::create(&dir.path().join("raw-synced"), RAW_FILE_BYTES).expect("raw file");
    for (size, label) in SIZES {
        let record = payload(size, size as u64);
        let mut group = c.benchmark_group(format!("append/{label}"));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter("raw_pwrite"), |b| {
            b.iter_custom(|iters| raw_writes(&mut raw, &record, false, iters));
        });
        group.bench_function(BenchmarkId::from_parameter("raw_pwrite_fdatasync"), |b| {
            b.iter_custom(|iters| raw_writes(&mut raw_synced, &record, true, iters));
        });
        group.bench_function(BenchmarkId::from_parameter("tern_append_none"), |b| {
            b.iter_custom(|iters| tern_appends(&log, &record, Durability::None, iters));
        });
        group.bench_function(BenchmarkId::from_parameter("tern_append_local"), |b| {
            b.iter_custom(|iters| tern_appends(&log, &record, Durability::Local, iters));
        });
        group.finish();
    }
    drop(log);
    engine.close().expect("close engine");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = append
}
criterion_main!(benches);
