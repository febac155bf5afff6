//! Creating a log: the first segment is written and synced, then the meta. A process killed,
//! or a machine that lost power, anywhere in between leaves at most an empty first segment and
//! no meta; opening the log again must give a new, usable log, and never turn a log that holds
//! records into a new one.

mod common;

use common::*;
use tern_segment::sim::{FaultOp, SimDisk, Tear};
use tern_segment::Disk;
use tern_wal::{Durability, Visibility};

/// Checks that `tern verify` finds nothing wrong, then opens the log again and checks that it
/// is empty and takes appends.
fn reopens_as_new(disk: &SimDisk, what: &str) {
    let report = tern_wal::verify::verify_log(disk, log_dir(), &mut |_| {})
        .unwrap_or_else(|e| panic!("{what}: verify fails: {e}"));
    assert!(report.problems.is_empty(), "{what}: verify reports {:?}", report.problems);
    let committer = sim_committer(disk);
    let log = open(disk, &committer).unwrap_or_else(|e| panic!("{what}: the log does not open again: {e}"));
    assert_eq!((log.start_offset(), log.written_end()), (0, 0), "{what}");
    log.append(&[b"first"], Durability::Local).unwrap();
    assert_eq!(contents(&log, Visibility::Durable), vec![(0, b"first".to_vec())], "{what}");
    log.close().unwrap();
    committer.stop();
}

#[test]
fn a_log_whose_creation_stopped_anywhere_opens_as_a_new_log() {
    let dry_run = SimDisk::new();
    let committer = sim_committer(&dry_run);
    open(&dry_run, &committer).unwrap().close().unwrap();
    committer.stop();
    let sync_points = dry_run.sync_points();
    assert!(sync_points >= 2, "the segment and the meta are synced");
    for stop_at in 0..=sync_points {
        for power_loss in [None, Some(Tear::None), Some(Tear::Half)] {
            let disk = SimDisk::new();
            disk.crash_at_sync(stop_at);
            let committer = sim_committer(&disk);
            let _ = open(&disk, &committer);
            committer.stop();
            match power_loss {
                None => disk.kill(),
                Some(tear) => disk.crash(tear),
            }
            reopens_as_new(&disk, &format!("stopped at sync point {stop_at} of {sync_points}, {power_loss:?}"));
        }
    }
    // Killed after the first segment was created, before its header was written.
    let disk = SimDisk::new();
    disk.fail_next(FaultOp::Write, libc::EIO);
    let committer = sim_committer(&disk);
    assert!(open(&disk, &committer).is_err());
    committer.stop();
    disk.kill();
    reopens_as_new(&disk, "header never written");
}

#[test]
fn a_first_segment_holding_records_without_its_meta_is_corruption_not_a_new_log() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    log.append(&[b"kept"], Durability::Local).unwrap();
    log.close().unwrap();
    let meta = log_dir().join("log.meta");
    disk.remove(&meta).unwrap();
    let err = open(&disk, &committer).expect_err("a log that lost its meta does not open");
    assert!(err.to_string().contains("meta file missing"), "{err}");
    let report = tern_wal::verify::verify_log(&disk, log_dir(), &mut |_| {}).unwrap();
    assert!(report.problems.iter().any(|p| p.reason.contains("meta file missing")), "{:?}", report.problems);
    assert_eq!(disk.files().iter().filter(|f| f.extension().is_some_and(|e| e == "seg")).count(), 1, "nothing removed");
    committer.stop();
}
