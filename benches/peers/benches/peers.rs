//! Tern beside raft-engine and okaywal and the raw disk, in one criterion run, same directory,
//! same payloads (pseudo-random, so raft-engine's batch compression could gain nothing; it is
//! turned off).
//!
//! Groups (the function ids are `raw_*`, `tern*`, `raft_engine`, `okaywal`):
//! - `peers/small_sync_16x128B`: 16 writers append 128-byte records, each waiting for its
//!   fsync; one sample spawns the writers once and measures wall time per record. Tern: all
//!   writers on one log, and each on its own log. raft-engine: each writer on its own region
//!   (one region's entries must arrive in index order), all sharing raft-engine's write group
//!   and file; `write(&mut batch, sync = true)` ends in `fdatasync`. okaywal: one entry of one
//!   chunk per record, `commit()` waits for its (grouped) `fdatasync`.
//! - `peers/bulk_4KiB_1MiB_per_fsync`: one writer, 256 records of 4 KiB per synced append.
//!   raft-engine: one `LogBatch` of 256 entries; okaywal: one entry of 256 chunks.
//! - `peers/scan_256MiB_4KiB`: reading back 256 MiB of 4 KiB records, every checksum verified:
//!   Tern's reader; raft-engine's `fetch_entries_to` 256 entries at a time (verifies each
//!   block's checksum, decodes the entries); okaywal has no sequential reader other than
//!   recovery (which checkpoints, so consumes, the log), so it reads every chunk by its
//!   position with `read_at` and checks the chunk's crc. Raw: mmap + crc32 per 1 MiB.
//!
//! Settings: Tern, `Config::default()` (64 MiB segments). raft-engine: `Config::default()`
//! with `batch_compression_threshold = 0` (no compression). okaywal: segment files of 64 MiB
//! (`preallocate_bytes`) checkpointed after 48 MiB (its default ratio of 3/4; the default 1 MiB
//! files would checkpoint after every 1 MiB entry of the bulk workload); the scan's log is
//! never checkpointed, so that all of it stays readable.
//!
//! Between samples (outside the timing) the write workloads drop what they wrote: Tern with
//! `truncate_prefix`, raft-engine with `compact_to` + `purge_expired_files`; okaywal recycles
//! its checkpointed files itself.

use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use okaywal::{Entry, EntryId, LogManager, LogPosition, SegmentReader, WriteAheadLog};
use raft_engine::LogBatch;
use tern::{Durability, Log, Visibility};
use tern_benches::{bench_dir, payload, timed_writers, RawFile, RawGroupCommit, RawMapped, MIB};

const SMALL_BYTES: usize = 128;
const WRITERS: usize = 16;
const RECORD_BYTES: usize = 4 << 10;
const RECORDS_PER_BATCH: usize = MIB / RECORD_BYTES;
const SCAN_BYTES: u64 = 256 << 20;
const RAW_FILE_BYTES: u64 = 256 << 20;
const OKAYWAL_FILE_BYTES: u32 = 64 << 20;
const OKAYWAL_CHECKPOINT_BYTES: u64 = 48 << 20;

/// raft-engine stores protobuf 2 messages. This one is written by hand (field 1: index,
/// field 2: data), so no code generator or build script is needed.
mod raft_entry {
    use protobuf::rt;
    use protobuf::wire_format::WireType;
    use protobuf::{CachedSize, Clear, CodedInputStream, CodedOutputStream, ProtobufResult, UnknownFields};

    /// One raft-engine log entry.
    #[derive(Debug, Clone, PartialEq, Default)]
    pub struct RaftEntry {
        pub index: u64,
        pub data: Vec<u8>,
        unknown_fields: UnknownFields,
        cached_size: CachedSize,
    }

    impl RaftEntry {
        pub fn new(index: u64, data: Vec<u8>) -> RaftEntry {
            RaftEntry { index, data, ..RaftEntry::default() }
        }
    }

    impl Clear for RaftEntry {
        fn clear(&mut self) {
            self.index = 0;
            self.data.clear();
            self.unknown_fields.clear();
        }
    }

    impl protobuf::Message for RaftEntry {
        fn descriptor(&self) -> &'static protobuf::reflect::MessageDescriptor {
            Self::descriptor_static()
        }

        fn is_initialized(&self) -> bool {
            true
        }

        fn merge_from(&mut self, is: &mut CodedInputStream<'_>) -> ProtobufResult<()> {
            while !is.eof()? {
                let (field, wire_type) = is.read_tag_unpack()?;
                match (field, wire_type) {
                    (1, WireType::WireTypeVarint) => self.index = is.read_uint64()?,
                    (2, WireType::WireTypeLengthDelimited) => is.read_bytes_into(&mut self.data)?,
                    _ => rt::read_unknown_or_skip_group(field, wire_type, is, &mut self.unknown_fields)?,
                }
            }
            Ok(())
        }

        fn write_to_with_cached_sizes(&self, os: &mut CodedOutputStream<'_>) -> ProtobufResult<()> {
            if self.index != 0 {
                os.write_uint64(1, self.index)?;
            }
            if !self.data.is_empty() {
                os.write_bytes(2, &self.data)?;
            }
            os.write_unknown_fields(&self.unknown_fields)
        }

        fn compute_size(&self) -> u32 {
            let mut size = 0;
            if self.index != 0 {
                size += rt::value_size(1, self.index, WireType::WireTypeVarint);
            }
            if !self.data.is_empty() {
                size += rt::bytes_size(2, &self.data);
            }
            size += rt::unknown_fields_size(&self.unknown_fields);
            self.cached_size.set(size);
            size
        }

        fn get_cached_size(&self) -> u32 {
            self.cached_size.get()
        }

        fn get_unknown_fields(&self) -> &UnknownFields {
            &self.unknown_fields
        }

        fn mut_unknown_fields(&mut self) -> &mut UnknownFields {
            &mut self.unknown_fields
        }

        fn as_any(&self) -> &dyn std::any::Any {
            self
        }

        fn new() -> RaftEntry {
            RaftEntry::default()
        }

        fn default_instance() -> &'static RaftEntry {
            static INSTANCE: std::sync::OnceLock<RaftEntry> = std::sync::OnceLock::new();
            INSTANCE.get_or_init(RaftEntry::default)
        }
    }

    /// Tells raft-engine how to find an entry's index.
    #[derive(Debug, Clone, Copy)]
    pub struct EntryExt;

    impl raft_engine::MessageExt for EntryExt {
        type Entry = RaftEntry;

        fn index(e: &RaftEntry) -> u64 {
            e.index
        }
    }
}

use raft_entry::{EntryExt, RaftEntry};

fn open_raft_engine(dir: &Path) -> raft_engine::Engine {
    let config = raft_engine::Config {
        dir: dir.to_str().expect("a UTF-8 bench directory").to_owned(),
        batch_compression_threshold: raft_engine::ReadableSize(0),
        ..raft_engine::Config::default()
    };
    raft_engine::Engine::open(config).expect("open raft-engine")
}

/// Writes `entries` (indexes already set) to `region` and waits for the sync.
fn raft_write(engine: &raft_engine::Engine, batch: &mut LogBatch, region: u64, entries: &[RaftEntry]) {
    batch.add_entries::<EntryExt>(region, entries).expect("add entries");
    engine.write(batch, true).expect("raft-engine write");
}

/// Drops everything written so far to `regions` (`next[i]` is the next index of region i+1).
fn raft_compact(engine: &raft_engine::Engine, next: &[AtomicU64]) {
    for (i, next) in next.iter().enumerate() {
        engine.compact_to(i as u64 + 1, next.load(Ordering::Relaxed));
    }
    engine.purge_expired_files().expect("purge");
}

/// An okaywal log manager that keeps nothing. Recovery reads every chunk of every entry
/// (`read_all_chunks`): okaywal 0.3.1 misparses a segment when a manager leaves chunks unread
/// (it skips their crc twice) and loses every later entry; `tests/okaywal_recovery.rs` shows it.
#[derive(Debug, Default)]
struct KeepNothing {
    recovered: Arc<AtomicU64>,
}

impl LogManager for KeepNothing {
    fn recover(&mut self, entry: &mut Entry<'_>) -> io::Result<()> {
        if entry.read_all_chunks()?.is_some() {
            self.recovered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn checkpoint_to(&mut self, _last: EntryId, _entries: &mut SegmentReader, _wal: &WriteAheadLog) -> io::Result<()> {
        Ok(())
    }
}

fn open_okaywal(dir: &Path, checkpoint_after_bytes: u64) -> WriteAheadLog {
    okaywal::Configuration::default_for(dir)
        .preallocate_bytes(OKAYWAL_FILE_BYTES)
        .checkpoint_after_bytes(checkpoint_after_bytes)
        .open(KeepNothing::default())
        .expect("open okaywal")
}

/// One okaywal entry of one chunk per record; returns the chunks' positions.
fn okaywal_write(wal: &WriteAheadLog, records: &[&[u8]]) -> Vec<LogPosition> {
    let mut entry = wal.begin_entry().expect("begin entry");
    let positions = records.iter().map(|r| entry.write_chunk(r).expect("write chunk").position).collect();
    entry.commit().expect("commit");
    positions
}

fn tern_appends(log: &Log, records: &[&[u8]], iters: u64) -> Duration {
    let started = Instant::now();
    for _ in 0..iters {
        log.append(records, Durability::Local).expect("append");
    }
    let elapsed = started.elapsed();
    log.truncate_prefix(log.written_end()).expect("truncate_prefix");
    elapsed
}

fn small_sync(c: &mut Criterion, dir: &Path, engine: &tern::Engine) {
    let record = payload(SMALL_BYTES, 1);
    let raw = RawGroupCommit::create(&dir.join("raw-small"), RAW_FILE_BYTES).expect("raw file");
    let one = engine.log("small").expect("open log");
    let many: Vec<Log> = (0..WRITERS).map(|i| engine.log(&format!("small-{i}")).expect("open log")).collect();
    let raft = open_raft_engine(&dir.join("raft-small"));
    let raft_next: Vec<AtomicU64> = (0..WRITERS).map(|_| AtomicU64::new(1)).collect();
    let okay = open_okaywal(&dir.join("okaywal-small"), OKAYWAL_CHECKPOINT_BYTES);

    let mut group = c.benchmark_group(format!("peers/small_sync_{WRITERS}x{SMALL_BYTES}B"));
    group.throughput(Throughput::Bytes(SMALL_BYTES as u64));
    group.bench_function(BenchmarkId::from_parameter("raw_group_commit"), |b| {
        b.iter_custom(|iters| {
            timed_writers(WRITERS, iters, |_, n| {
                for _ in 0..n {
                    raw.append(&record).expect("raw group commit");
                }
            })
        });
    });
    group.bench_function(BenchmarkId::from_parameter("tern_one_log"), |b| {
        b.iter_custom(|iters| {
            timed_writers(WRITERS, iters, |_, n| {
                for _ in 0..n {
                    one.append(&[&record], Durability::Local).expect("append");
                }
            })
        });
    });
    group.bench_function(BenchmarkId::from_parameter(format!("tern_{WRITERS}_logs")), |b| {
        b.iter_custom(|iters| {
            timed_writers(WRITERS, iters, |w, n| {
                for _ in 0..n {
                    many[w].append(&[&record], Durability::Local).expect("append");
                }
            })
        });
    });
    group.bench_function(BenchmarkId::from_parameter("raft_engine"), |b| {
        b.iter_custom(|iters| {
            let elapsed = timed_writers(WRITERS, iters, |w, n| {
                let mut batch = LogBatch::default();
                let mut entry = [RaftEntry::new(0, record.clone())];
                for _ in 0..n {
                    entry[0].index = raft_next[w].fetch_add(1, Ordering::Relaxed);
                    raft_write(&raft, &mut batch, w as u64 + 1, &entry);
                }
            });
            raft_compact(&raft, &raft_next);
            elapsed
        });
    });
    group.bench_function(BenchmarkId::from_parameter("okaywal"), |b| {
        b.iter_custom(|iters| {
            timed_writers(WRITERS, iters, |_, n| {
                for _ in 0..n {
                    okaywal_write(&okay, &[&record]);
                }
            })
        });
    });
    group.finish();
    okay.shutdown().expect("okaywal shutdown");
}

fn bulk(c: &mut Criterion, dir: &Path, engine: &tern::Engine) {
    let records: Vec<Vec<u8>> = (0..RECORDS_PER_BATCH).map(|i| payload(RECORD_BYTES, i as u64)).collect();
    let batch: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    let joined = batch.concat();
    let mut raw = RawFile::create(&dir.join("raw-bulk"), RAW_FILE_BYTES).expect("raw file");
    let log = engine.log("bulk").expect("open log");
    let raft = open_raft_engine(&dir.join("raft-bulk"));
    let raft_next = [AtomicU64::new(1)];
    let mut raft_entries: Vec<RaftEntry> = records.iter().map(|r| RaftEntry::new(0, r.clone())).collect();
    let okay = open_okaywal(&dir.join("okaywal-bulk"), OKAYWAL_CHECKPOINT_BYTES);

    let mut group = c.benchmark_group("peers/bulk_4KiB_1MiB_per_fsync");
    group.throughput(Throughput::Bytes(MIB as u64));
    group.bench_function(BenchmarkId::from_parameter("raw_pwrite_fdatasync"), |b| {
        b.iter(|| raw.write_and_sync(&joined).expect("raw write and sync"));
    });
    group.bench_function(BenchmarkId::from_parameter("tern"), |b| {
        b.iter_custom(|iters| tern_appends(&log, &batch, iters))
    });
    group.bench_function(BenchmarkId::from_parameter("raft_engine"), |b| {
        let mut log_batch = LogBatch::default();
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                let first = raft_next[0].fetch_add(RECORDS_PER_BATCH as u64, Ordering::Relaxed);
                for (i, e) in raft_entries.iter_mut().enumerate() {
                    e.index = first + i as u64;
                }
                raft_write(&raft, &mut log_batch, 1, &raft_entries);
            }
            let elapsed = started.elapsed();
            raft_compact(&raft, &raft_next);
            elapsed
        });
    });
    group.bench_function(BenchmarkId::from_parameter("okaywal"), |b| {
        b.iter(|| black_box(okaywal_write(&okay, &batch)));
    });
    group.finish();
    okay.shutdown().expect("okaywal shutdown");
}

fn scan(c: &mut Criterion, dir: &Path, engine: &tern::Engine) {
    let records: Vec<Vec<u8>> = (0..RECORDS_PER_BATCH).map(|i| payload(RECORD_BYTES, i as u64)).collect();
    let batch: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    let batches = SCAN_BYTES / MIB as u64;
    let total_records = batches * RECORDS_PER_BATCH as u64;

    let raw = RawMapped::create(&dir.join("raw-scan"), SCAN_BYTES).expect("raw file");

    let log = engine.log("scan").expect("open log");
    for _ in 0..batches {
        log.append(&batch, Durability::None).expect("append");
    }
    log.sync().expect("sync");
    let tern_scan = || {
        let mut bytes = 0u64;
        for record in log.read(log.start_offset(), Visibility::Durable).expect("read") {
            bytes += black_box(record.expect("record").value).len() as u64;
        }
        bytes
    };

    let raft = open_raft_engine(&dir.join("raft-scan"));
    let mut raft_entries: Vec<RaftEntry> = records.iter().map(|r| RaftEntry::new(0, r.clone())).collect();
    let mut log_batch = LogBatch::default();
    for b in 0..batches {
        for (i, e) in raft_entries.iter_mut().enumerate() {
            e.index = 1 + b * RECORDS_PER_BATCH as u64 + i as u64;
        }
        log_batch.add_entries::<EntryExt>(1, &raft_entries).expect("add entries");
        raft.write(&mut log_batch, b + 1 == batches).expect("raft-engine write");
    }
    drop(raft_entries);
    let raft_scan = || {
        let mut bytes = 0u64;
        let mut entries = Vec::with_capacity(RECORDS_PER_BATCH);
        let mut next = 1;
        while next <= total_records {
            let end = (next + RECORDS_PER_BATCH as u64).min(total_records + 1);
            raft.fetch_entries_to::<EntryExt>(1, next, end, None, &mut entries).expect("fetch entries");
            bytes += entries.drain(..).map(|e| black_box(e.data).len() as u64).sum::<u64>();
            next = end;
        }
        bytes
    };

    let okay = open_okaywal(&dir.join("okaywal-scan"), u64::MAX);
    let positions: Vec<LogPosition> = (0..batches).flat_map(|_| okaywal_write(&okay, &batch)).collect();
    let okay_scan = || {
        let mut bytes = 0u64;
        let mut buf = Vec::with_capacity(RECORD_BYTES);
        for &position in &positions {
            let mut chunk = okay.read_at(position).expect("read_at");
            buf.clear();
            chunk.read_to_end(&mut buf).expect("read chunk");
            assert!(chunk.crc_is_valid().expect("crc"), "okaywal chunk crc mismatch");
            bytes += black_box(&buf).len() as u64;
        }
        bytes
    };

    for (name, bytes) in [("tern", tern_scan()), ("raft-engine", raft_scan()), ("okaywal", okay_scan())] {
        assert_eq!(bytes, SCAN_BYTES, "{name}'s scan does not return what was written");
    }

    let mut group = c.benchmark_group("peers/scan_256MiB_4KiB");
    group.throughput(Throughput::Bytes(SCAN_BYTES));
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function(BenchmarkId::from_parameter("raw_mmap_crc32"), |b| b.iter(|| black_box(raw.crc_all())));
    group.bench_function(BenchmarkId::from_parameter("tern"), |b| b.iter(tern_scan));
    group.bench_function(BenchmarkId::from_parameter("raft_engine"), |b| b.iter(raft_scan));
    group.bench_function(BenchmarkId::from_parameter("okaywal"), |b| b.iter(okay_scan));
    group.finish();
    drop(positions);
    okay.shutdown().expect("okaywal shutdown");
}

fn peers(c: &mut Criterion) {
    let dir = bench_dir("peers");
    let engine = tern::Engine::open(&dir.path().join("tern"), tern::Config::default()).expect("open engine");
    small_sync(c, dir.path(), &engine);
    bulk(c, dir.path(), &engine);
    scan(c, dir.path(), &engine);
    engine.close().expect("close engine");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = peers
}
criterion_main!(benches);
