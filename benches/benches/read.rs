//! A full scan of a 256 MiB log of 4 KiB records, every frame's checksum verified by the
//! reader, beside the raw limit: a memory-mapped file of the same size read with a crc32 over
//! every 1 MiB (the log was written in 1 MiB batches, one checksum each).
//!
//! Both are in the page cache (written just before), so this measures the read path, not the
//! disk. Group `scan/256MiB_4KiB_records`: `raw_mmap_crc32`, `tern_read`.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use tern::{Durability, Log, Visibility};
use tern_benches::{bench_dir, payload, RawMapped, MIB};

const RECORD_BYTES: usize = 4 << 10;
const LOG_BYTES: u64 = 256 << 20;

/// Appends `LOG_BYTES` of 4 KiB records in 1 MiB batches, the last one synced.
fn fill(log: &Log) {
    let records: Vec<Vec<u8>> = (0..MIB / RECORD_BYTES).map(|i| payload(RECORD_BYTES, i as u64)).collect();
    let batch: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    let batches = LOG_BYTES / MIB as u64;
    for i in 0..batches {
        let durability = if i + 1 == batches { Durability::Local } else { Durability::None };
        log.append(&batch, durability).expect("append");
    }
}

/// Reads every record from the start; returns the value bytes read.
fn scan(log: &Log) -> u64 {
    let mut bytes = 0;
    for record in log.read(log.start_offset(), Visibility::Durable).expect("read") {
        bytes += black_box(record.expect("record").value).len() as u64;
    }
    bytes
}

fn read(c: &mut Criterion) {
    let dir = bench_dir("read");
    let raw = RawMapped::create(&dir.path().join("raw"), LOG_BYTES).expect("raw file");
    let engine = tern::Engine::open(&dir.path().join("engine"), tern::Config::default()).expect("open engine");
    let log = engine.log("scan").expect("open log");
    fill(&log);
    assert_eq!(scan(&log), LOG_BYTES, "the scan does not return what was written");

    let mut group = c.benchmark_group("scan/256MiB_4KiB_records");
    group.throughput(Throughput::Bytes(LOG_BYTES));
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function(BenchmarkId::from_parameter("raw_mmap_crc32"), |b| b.iter(|| black_box(raw.crc_all())));
    group.bench_function(BenchmarkId::from_parameter("tern_read"), |b| b.iter(|| scan(&log)));
    group.finish();

    drop(log);
    engine.close().expect("close engine");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = read
}
criterion_main!(benches);
