//! Many writers, each appending 128-byte records and waiting for its `fdatasync`, beside the
//! raw group-commit limit of the same disk.
//!
//! Each sample spawns the writers once; every writer does its share of the sample's
//! iterations and the wall time from start to the last writer's return is measured, so the
//! reported time per iteration is wall time per record (records/s = 1 / time).
//!
//! Groups:
//! - `group_commit/{1,4,16,64}_writers`: `raw_group_commit` (writers queue records; whoever
//!   finds no leader writes all pending at the end of a pre-allocated, pre-written file and
//!   syncs once)
//!   beside `tern_append_local` (all writers on one log).
//! - `group_commit/many_logs_16_writers`: the raw limit, Tern with 16 writers on one log and
//!   Tern with 16 writers each on its own log (the logs share the engine's group commit).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tern::{Durability, Log};
use tern_benches::{bench_dir, payload, timed_writers, RawGroupCommit};

const RECORD_BYTES: usize = 128;
const WRITERS: [usize; 4] = [1, 4, 16, 64];
const RAW_FILE_BYTES: u64 = 256 << 20;

fn raw_appends(raw: &RawGroupCommit, writers: usize, record: &[u8], iters: u64) -> Duration {
    timed_writers(writers, iters, |_, n| {
        for _ in 0..n {
            raw.append(record).expect("raw group commit");
        }
    })
}

/// Writer `w` appends to `logs[w % logs.len()]`.
fn tern_appends(logs: &[Log], writers: usize, record: &[u8], iters: u64) -> Duration {
    timed_writers(writers, iters, |w, n| {
        let log = &logs[w % logs.len()];
        for _ in 0..n {
            log.append(&[record], Durability::Local).expect("append");
        }
    })
}

fn group_commit(c: &mut Criterion) {
    let dir = bench_dir("group-commit");
    let engine = tern::Engine::open(&dir.path().join("engine"), tern::Config::default()).expect("open engine");
    let raw = RawGroupCommit::create(&dir.path().join("raw"), RAW_FILE_BYTES).expect("raw file");
    let record = payload(RECORD_BYTES, 1);
    let one = vec![engine.log("single").expect("open log")];

    for writers in WRITERS {
        let mut group = c.benchmark_group(format!("group_commit/{writers}_writers"));
        group.throughput(Throughput::Bytes(RECORD_BYTES as u64));
        group.bench_function(BenchmarkId::from_parameter("raw_group_commit"), |b| {
            b.iter_custom(|iters| raw_appends(&raw, writers, &record, iters));
        });
        group.bench_function(BenchmarkId::from_parameter("tern_append_local"), |b| {
            b.iter_custom(|iters| tern_appends(&one, writers, &record, iters));
        });
        group.finish();
    }

    let writers = 16;
    let many: Vec<Log> = (0..writers).map(|i| engine.log(&format!("many-{i}")).expect("open log")).collect();
    let mut group = c.benchmark_group(format!("group_commit/many_logs_{writers}_writers"));
    group.throughput(Throughput::Bytes(RECORD_BYTES as u64));
    group.bench_function(BenchmarkId::from_parameter("raw_group_commit"), |b| {
        b.iter_custom(|iters| raw_appends(&raw, writers, &record, iters));
    });
    group.bench_function(BenchmarkId::from_parameter("tern_one_log"), |b| {
        b.iter_custom(|iters| tern_appends(&one, writers, &record, iters));
    });
    group.bench_function(BenchmarkId::from_parameter(format!("tern_{writers}_logs")), |b| {
        b.iter_custom(|iters| tern_appends(&many, writers, &record, iters));
    });
    group.finish();

    drop((one, many));
    engine.close().expect("close engine");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = group_commit
}
criterion_main!(benches);
