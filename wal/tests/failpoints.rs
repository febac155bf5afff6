//! Races made to happen on purpose with named pauses inside the log (the `failpoints` feature).
//! Pause points are process-wide: each test names its own.

mod common;

use std::sync::Arc;

use common::*;
use tern_segment::sim::{SimDisk, Tear};
use tern_segment::Disk;
use tern_wal::{AppendOptions, CommitMode, Committer, Durability, Log, Record, Visibility};

/// A group sync completes (its records are durable) and, before it writes the checkpoint slot
/// claiming them, a suffix truncation cuts those records. The late slot must not make the log
/// refuse to open ("486 bytes missing" once): it belongs to the generation before the cut.
#[test]
fn a_checkpoint_written_after_a_truncation_for_a_sync_before_it_is_never_trusted() {
    let disk = SimDisk::new();
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    // Leader mode: a synced append returns only once its group completed, checkpoint included,
    // so the pause below catches the late append's group and no earlier one.
    let committer = Committer::start_with(shared.clone(), None, CommitMode::Leader).unwrap();
    let log = Log::open(shared.clone(), log_dir(), "log", small_options(), committer.clone(), true).unwrap();
    for i in 0..10 {
        log.append(&[&value_of(&format!("record {i}:"), 40)], Durability::Local).unwrap();
    }
    tern_wal::failpoints::pause("complete_sync::before_checkpoint");
    let late = log
        .append_records(&[Record::new(&value_of("late:", 300), tern_wal::now_ms())], AppendOptions::default())
        .unwrap();
    // The waiter leads its group: the sync of offset 10 completes, raises the durable end, and
    // pauses before the checkpoint slot.
    let waiter = std::thread::spawn(move || late.wait(Durability::Local));
    while log.durable_end() < 11 {
        std::thread::yield_now();
    }
    log.truncate_suffix(5).unwrap();
    tern_wal::failpoints::resume("complete_sync::before_checkpoint");
    let _ = waiter.join().unwrap();
    committer.stop();
    drop(log);
    // The process dies; the page cache (and the late slot in it) survives.
    disk.kill();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).expect("the log opens after a late checkpoint slot");
    let got = contents(&log, Visibility::Written);
    assert_eq!(got.len(), 5, "{got:?}");
    for (i, (offset, value)) in got.iter().enumerate() {
        assert_eq!((*offset, value), (i as u64, &value_of(&format!("record {i}:"), 40)));
    }
    committer.stop();
}

/// A group sync finishes and, before it raises the durable end, a suffix truncation cuts the
/// records it synced. The late completion must not raise the durable end past the cut: new
/// records written there would be acknowledged without a sync, and lost in a power loss.
#[test]
fn a_sync_that_completes_after_a_truncation_never_raises_the_durable_end_past_the_cut() {
    const POINT: &str = "complete_sync::before_raise";
    let disk = SimDisk::new();
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let committer = Committer::start_with(shared.clone(), None, CommitMode::Leader).unwrap();
    let log = Log::open(shared, log_dir(), "log", small_options(), committer.clone(), true).unwrap();
    for i in 0..5 {
        log.append(&[&value_of(&format!("record {i}:"), 40)], Durability::Local).unwrap();
    }
    tern_wal::failpoints::pause(POINT);
    let late = log
        .append_records(&[Record::new(&value_of("late:", 300), tern_wal::now_ms())], AppendOptions::default())
        .unwrap();
    let waiter = std::thread::spawn(move || late.wait(Durability::Local));
    while tern_wal::failpoints::waiting(POINT) == 0 {
        std::thread::yield_now();
    }
    log.truncate_suffix(5).unwrap();
    tern_wal::failpoints::resume(POINT);
    let late_result = waiter.join().unwrap();
    assert!(matches!(late_result, Err(tern_wal::Error::Truncated { .. })), "{late_result:?}");
    assert!(
        log.durable_end() <= log.written_end(),
        "durable end {} past the end {}",
        log.durable_end(),
        log.written_end()
    );
    let new_value = value_of("new:", 40);
    log.append(&[&new_value], Durability::Local).unwrap();
    disk.crash(Tear::None);
    drop(log);
    committer.stop();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    let got = contents(&log, Visibility::Written);
    assert_eq!(got.last(), Some(&(5, new_value)), "the acknowledged record after the cut");
    committer.stop();
}
