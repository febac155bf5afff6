//! Rolling past an empty active segment that is too small for the next batch.
//!
//! The story: a roll replaced such a segment by removing it, syncing the directory and only then
//! creating the larger one. When that empty segment was the log's only one (a new log, or what
//! a prefix truncation or a reset leaves), a power loss between those two steps left a directory
//! without any segment file, and the log could not be opened again ("log has no segment
//! files"). Whatever the sync point at which power fails, the log must reopen, with every
//! acknowledged record.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use tern_segment::sim::{SimDisk, Tear};
use tern_segment::Disk;
use tern_wal::{Committer, Durability, Log, LogOptions, Visibility};

/// Small segments, and records that can be larger than one.
fn options() -> LogOptions {
    LogOptions {
        segment_size_bytes: 4096,
        index_interval_bytes: 256,
        record_bytes_max: 16 << 10,
        ..LogOptions::default()
    }
}

fn open_log(disk: &SimDisk, committer: &Committer) -> tern_wal::Result<Log> {
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    Log::open(shared, Path::new("/data/log"), "log", options(), committer.clone(), true)
}

/// How the log comes to have one empty segment before the large append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// A new log: its first segment is empty.
    Fresh,
    /// Records in several segments, a prefix truncation down to the last one, and a suffix
    /// truncation that empties it.
    Truncated,
    /// Records, then a reset past them.
    Reset,
}

#[derive(Debug, Default)]
struct Outcome {
    /// Values sent, by offset from `start`.
    sent: Vec<Vec<u8>>,
    /// The log start once the setup is done (the first offset of `sent`).
    start: u64,
    /// The setup finished (before that, only a successful recovery is checked here: the
    /// setup's own steps have sweeps of their own).
    setup_done: bool,
    /// Offsets below this were acknowledged as durable.
    acked_end: u64,
    error: Option<String>,
}

fn workload(disk: &SimDisk, setup: Setup, out: &mut Outcome) -> tern_wal::Result<()> {
    let committer = sim_committer(disk);
    let result = (|| {
        let log = open_log(disk, &committer)?;
        match setup {
            Setup::Fresh => {}
            Setup::Truncated => {
                // Records in several segments; retention keeps only the last segment, and a
                // suffix truncation empties it.
                for i in 0..40 {
                    log.append(&[&value_of(&format!("old {i}"), 300)], Durability::Local)?;
                }
                out.start = log.truncate_prefix(log.written_end())?;
                log.truncate_suffix(out.start)?;
            }
            Setup::Reset => {
                for i in 0..10 {
                    log.append(&[&value_of(&format!("old {i}"), 300)], Durability::Local)?;
                }
                log.reset(500)?;
                out.start = 500;
            }
        }
        out.acked_end = out.start;
        out.setup_done = true;
        let segments = log.segments();
        assert_eq!(segments.len(), 1, "{setup:?}: one segment before the large append");
        assert_eq!(segments[0].end_offset(), segments[0].base_offset(), "{setup:?}: and it is empty");
        assert_eq!(segments[0].base_offset(), out.start);
        // Larger than a whole segment: the empty one is replaced by a larger one.
        for (i, len) in [6000, 200, 9000, 300].into_iter().enumerate() {
            let value = value_of(&format!("big {i}"), len);
            out.sent.push(value.clone());
            let offsets = log.append(&[&value], Durability::Local)?;
            out.acked_end = offsets.end;
        }
        log.close()?;
        Ok(())
    })();
    committer.stop();
    result
}

fn run(disk: &SimDisk, setup: Setup) -> Outcome {
    let mut out = Outcome::default();
    out.error = workload(disk, setup, &mut out).err().map(|e| e.to_string());
    out
}

fn check(disk: &SimDisk, out: &Outcome) -> Result<(), String> {
    let committer = sim_committer(disk);
    let result = (|| {
        let log = open_log(disk, &committer).map_err(|e| format!("recovery failed: {e}"))?;
        let got = try_contents(&log, Visibility::Written).map_err(|e| format!("read: {e}"))?;
        let start = log.start_offset();
        if !out.setup_done {
            // Only a successful recovery and a usable log are asked of a crash in the setup.
        } else if out.acked_end > out.start && start != out.start {
            return Err(format!("log starts at {start}, expected {}", out.start));
        }
        if out.setup_done && start == out.start {
            if (got.len() as u64) < out.acked_end - out.start {
                return Err(format!("{} records, {} acknowledged", got.len(), out.acked_end - out.start));
            }
            for (i, (offset, value)) in got.iter().enumerate() {
                if *offset != start + i as u64 || out.sent.get(i) != Some(value) {
                    return Err(format!("record at {offset} was never appended there"));
                }
            }
        }
        log.append(&[b"after"], Durability::Local).map_err(|e| format!("append after recovery: {e}"))?;
        let report = tern_wal::verify::verify_log(disk, log_dir(), &mut |_| {}).map_err(|e| e.to_string())?;
        if !report.problems.is_empty() {
            return Err(format!("verify after recovery: {:?}", report.problems));
        }
        Ok(())
    })();
    committer.stop();
    result
}

#[test]
fn replacing_an_empty_only_segment_survives_power_loss_at_every_sync_point() {
    for setup in [Setup::Fresh, Setup::Truncated, Setup::Reset] {
        let dry_run = SimDisk::new();
        let outcome = run(&dry_run, setup);
        assert_eq!(outcome.error, None, "{setup:?}: the workload runs through without faults");
        let sync_points = dry_run.sync_points();
        for crash_at in 0..=sync_points {
            for tear in [Tear::None, Tear::Prefix(1), Tear::Half, Tear::AllButOne] {
                let disk = SimDisk::new();
                disk.crash_at_sync(crash_at);
                let outcome = run(&disk, setup);
                disk.crash(tear);
                if let Err(broken) = check(&disk, &outcome) {
                    panic!(
                        "{setup:?}: power loss at sync point {crash_at} of {sync_points} with {tear:?} after '{}': \
                         {broken}",
                        outcome.error.as_deref().unwrap_or("the workload finished")
                    );
                }
            }
        }
    }
}

#[test]
fn a_replacement_segment_that_a_crash_left_unrenamed_is_removed_at_open() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open_log(&disk, &committer).unwrap();
    log.append(&[b"kept"], Durability::Local).unwrap();
    log.close().unwrap();
    // As a real file system may keep it: the name of a replacement built for the segment at 1.
    let leftover = log_dir().join("00000000000000000001.seg.tmp");
    disk.create(&leftover, 8192).unwrap().sync_data().unwrap();
    disk.sync_dir(log_dir()).unwrap();
    let log = open_log(&disk, &committer).unwrap();
    assert!(!disk.exists(&leftover), "{:?}", disk.files());
    assert_eq!(contents(&log, Visibility::Durable), vec![(0, b"kept".to_vec())]);
    // A file that only looks similar is not touched.
    let other = log_dir().join("notes.seg.tmp");
    disk.create(&other, 0).unwrap();
    log.close().unwrap();
    open_log(&disk, &committer).unwrap();
    assert!(disk.exists(&other));
    committer.stop();
}
