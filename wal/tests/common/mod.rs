//! Helpers shared by the log tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use tern_segment::sim::SimDisk;
use tern_segment::Disk;
use tern_wal::{Committer, Log, LogOptions, Visibility};

/// Small segments so that tests roll, index and truncate across many files.
pub fn small_options() -> LogOptions {
    LogOptions { segment_size_bytes: 4096, index_interval_bytes: 256, record_bytes_max: 2048, ..LogOptions::default() }
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

/// The directory `open` puts the log in.
pub fn log_dir() -> &'static Path {
    Path::new("/data/log")
}

/// Every record of the log from its start, as (offset, value), or the first error a reader met.
pub fn try_contents(log: &Log, visibility: Visibility) -> tern_wal::Result<Vec<(u64, Vec<u8>)>> {
    log.read(log.start_offset(), visibility)?.map(|r| r.map(|r| (r.offset, r.value.to_vec()))).collect()
}

/// A generator with stable, documented output, so that a printed seed replays after upgrades.
pub fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand::SeedableRng::seed_from_u64(seed)
}

/// A value of `len_bytes` bytes that names `tag` and is unlikely to equal any other value.
pub fn value_of(tag: &str, len_bytes: usize) -> Vec<u8> {
    let mut value = tag.as_bytes().to_vec();
    let mut x = tag.bytes().fold(0x9e37_79b9_u32, |h, b| h.rotate_left(5) ^ u32::from(b));
    while value.len() < len_bytes {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        value.push(x as u8);
    }
    value.truncate(len_bytes);
    value
}
