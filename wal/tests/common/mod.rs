//! Helpers shared by the log tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use tern_segment::sim::SimDisk;
use tern_segment::Disk;
use tern_wal::{Committer, Log, LogOptions, Visibility};

/// Small segments so that tests roll, index and truncate across many files.
pub fn small_options() -> LogOptions {
    LogOptions { segment_size_bytes: 4096, index_interval_bytes: 256, record_bytes_max: 2048 }
}

pub fn open(disk: &SimDisk, committer: &Committer) -> tern_wal::Result<Log> {
    let disk: Arc<dyn Disk> = Arc::new(disk.clone());
    Log::open(disk, Path::new("/data/log"), "log", small_options(), committer.clone(), true)
}

pub fn sim_committer(disk: &SimDisk) -> Committer {
    Committer::start(Arc::new(disk.clone()))
}

/// Every record of the log from its start, as (offset, value).
pub fn contents(log: &Log, visibility: Visibility) -> Vec<(u64, Vec<u8>)> {
    log.read(log.start_offset(), visibility)
        .expect("read from start")
        .map(|r| r.map(|r| (r.offset, r.value.to_vec())))
        .collect::<Result<_, _>>()
        .expect("intact log")
}

/// A seed from `TERN_SEED` or the clock, printed so that a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("TERN_SEED").ok().and_then(|s| {
        let s = s.trim_start_matches("0x");
        u64::from_str_radix(s, 16).ok()
    });
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("{test}: seed {seed:#x} (replay with TERN_SEED={seed:#x})");
    seed
}
