//! Durability promises under a disk that fails the way Linux filesystems do: power lost during
//! recovery and during a truncation, a failed fsync whose dirty pages are gone, a roll cut short,
//! a full disk, damage below the durable end, and readers holding bytes while the log is cut.
//! Each test here failed before the fix it guards (the closing notes of the storage issue name
//! the failure each one showed).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tern_segment::sim::{FaultOp, SimDisk, Tear};
use tern_segment::Disk;
use tern_wal::{AppendOptions, CommitMode, Committer, Durability, Error, JournalOptions, Log, Record, Visibility};

fn journal_options() -> JournalOptions {
    // The smallest journal, so that a workload fills it and switches files.
    JournalOptions {
        dir: PathBuf::from("/data/journal"),
        file_bytes: tern_wal::journal::JOURNAL_HEADER_BYTES + (64 << 10),
    }
}

fn log_path(name: &str) -> PathBuf {
    Path::new("/data/logs").join(name)
}

/// Opens the journaled committer and the named logs as the engine does: every log with
/// journal entries is opened (which replays them), then a new journal file starts.
fn open_journaled(disk: &SimDisk, names: &[&str]) -> tern_wal::Result<(Committer, Vec<Log>)> {
    // Small segments, and records up to 1 MiB for batches too large for the journal.
    open_journaled_with(disk, names, tern_wal::LogOptions { record_bytes_max: 1 << 20, ..small_options() })
}

fn open_journaled_with(
    disk: &SimDisk,
    names: &[&str],
    options: tern_wal::LogOptions,
) -> tern_wal::Result<(Committer, Vec<Log>)> {
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let committer = Committer::start_with_journal(shared.clone(), &journal_options())?;
    let mut logs = Vec::new();
    for name in names {
        logs.push(Log::open(shared.clone(), &log_path(name), name, options, committer.clone(), true)?);
    }
    let left = committer.replay_names();
    assert!(left.is_empty(), "journal entries of logs the test does not open: {left:?}");
    committer.finish_replay()?;
    Ok((committer, logs))
}

fn values(tag: &str, count: usize) -> Vec<Vec<u8>> {
    (0..count).map(|i| value_of(&format!("{tag} {i}:"), 40 + i * 7)).collect()
}

fn tears() -> Vec<Tear> {
    let seeds: u64 = std::env::var("TERN_CRASH_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let mut tears = vec![Tear::None, Tear::AllButOne];
    tears.extend((0..seeds).map(|s| Tear::Random(0x5eed_0000 + s)));
    tears
}

fn values_of(log: &Log) -> Vec<Vec<u8>> {
    try_contents(log, Visibility::Written).expect("an intact log").into_iter().map(|(_, v)| v).collect()
}

// ---- 1. Journal-mode records and the generation change ----

/// Ten records acknowledged through the journal only (their segment never synced) lose power;
/// then power fails again at every sync point of the recovery that replays them. The replayed
/// records must reach the segment, synced, before the generation change makes their journal
/// entries stale.
#[test]
fn journal_mode_records_survive_power_loss_at_every_sync_point_of_their_replay() {
    for tear in tears() {
        for crash_at in 0.. {
            let disk = SimDisk::new();
            let acked = values("acked", 10);
            {
                let (_committer, logs) = open_journaled(&disk, &["orders"]).unwrap();
                for v in &acked {
                    logs[0].append(&[v], Durability::Local).unwrap();
                }
            }
            disk.crash(Tear::None);
            disk.crash_at_sync(disk.sync_points() + crash_at);
            let finished = open_journaled(&disk, &["orders"]).is_ok();
            disk.crash(tear);
            let (_committer, logs) = open_journaled(&disk, &["orders"])
                .unwrap_or_else(|e| panic!("power loss at sync point {crash_at} of recovery, {tear:?}: {e}"));
            assert_eq!(values_of(&logs[0]), acked, "power loss at sync point {crash_at} of recovery, {tear:?}");
            if finished {
                break;
            }
        }
    }
}

/// Journal mode: four records below a suffix truncation's cut were acknowledged through the
/// journal only. Power fails at every sync point of `truncate_suffix(4)`: the four must stay,
/// and the cut happens whole or not at all.
#[test]
fn records_below_a_cut_survive_power_loss_at_every_sync_point_of_the_truncation() {
    for tear in tears() {
        for crash_at in 0.. {
            let disk = SimDisk::new();
            let acked = values("acked", 10);
            let cut_done = {
                let (_committer, logs) = open_journaled(&disk, &["orders"]).unwrap();
                for v in &acked {
                    logs[0].append(&[v], Durability::Local).unwrap();
                }
                disk.crash_at_sync(disk.sync_points() + crash_at);
                logs[0].truncate_suffix(4).is_ok()
            };
            disk.crash(tear);
            let (_committer, logs) = open_journaled(&disk, &["orders"])
                .unwrap_or_else(|e| panic!("power loss at sync point {crash_at} of the truncation, {tear:?}: {e}"));
            let got = values_of(&logs[0]);
            let context = format!("power loss at sync point {crash_at} of the truncation, {tear:?}");
            if cut_done {
                assert_eq!(got, acked[..4], "{context}: the truncation returned Ok");
            } else {
                assert!(got == acked[..4] || got == acked, "{context}: {} records came back", got.len());
            }
            if cut_done {
                break;
            }
        }
    }
}

/// A cut that removes whole segments, inside a segment and exactly at a segment's base: power
/// fails at every sync point of the truncation, and again after the recovery that finishes it
/// (whose removals must be durable before the meta stops recording the cut). Every reopen
/// finds the records below the cut, and the cut whole or not at all.
#[test]
fn a_cut_across_segments_survives_power_loss_during_it_and_after_its_recovery() {
    let acked: Vec<Vec<u8>> = (0..40).map(|i| value_of(&format!("record {i}:"), 300)).collect();
    for at_base in [false, true] {
        for tear in tears() {
            for crash_at in 0.. {
                let disk = SimDisk::new();
                let committer = sim_committer(&disk);
                let log = open(&disk, &committer).unwrap();
                for v in &acked {
                    log.append(&[v], Durability::Local).unwrap();
                }
                let bases: Vec<u64> = log.segments().iter().map(|s| s.base_offset()).collect();
                assert!(bases.len() >= 4, "{bases:?}");
                let cut = if at_base { bases[2] } else { bases[1] + 2 };
                let cut_len = usize::try_from(cut).unwrap();
                disk.crash_at_sync(disk.sync_points() + crash_at);
                let cut_done = log.truncate_suffix(cut).is_ok();
                let context = format!("cut at {cut} of {bases:?}, power loss at sync point {crash_at}, {tear:?}");
                disk.crash(tear);
                drop(log);
                committer.stop();
                let mut after_first = None;
                for reopen in ["after the truncation", "after the recovery from it"] {
                    let committer = sim_committer(&disk);
                    let log = open(&disk, &committer).unwrap_or_else(|e| panic!("{context}, {reopen}: {e}"));
                    let got = values_of(&log);
                    assert!(got == acked[..cut_len] || got == acked, "{context}, {reopen}: {} records", got.len());
                    if cut_done {
                        assert_eq!(got.len(), cut_len, "{context}, {reopen}: the truncation returned Ok");
                    }
                    assert!(after_first.is_none_or(|n| n == got.len()), "{context}, {reopen}: changed");
                    after_first = Some(got.len());
                    // Power fails again: whatever the recovery left unsynced is lost.
                    disk.crash(Tear::None);
                    drop(log);
                    committer.stop();
                }
                if cut_done {
                    break;
                }
            }
        }
    }
}

// ---- 2. A failed fsync is never retried ----

/// A log's small records are acknowledged through the journal; then a sync of its segment
/// fails (the kernel drops the dirty pages, the records were in them) and fences the log. The
/// journal later fills up and switches files. The switch must not sync that segment again (the
/// second fsync reports success with nothing written) and must keep the only durable copy of
/// those records: after a power loss they are all there.
#[test]
fn records_acknowledged_through_the_journal_survive_a_failed_segment_sync_and_a_journal_switch() {
    let disk = SimDisk::new();
    let acked = values("acked", 5);
    {
        let (committer, logs) = open_journaled(&disk, &["orders", "events"]).unwrap();
        let (orders, events) = (&logs[0], &logs[1]);
        for v in &acked {
            orders.append(&[v], Durability::Local).unwrap();
        }
        // A batch too large for the journal: its group syncs the segment itself, and that fails.
        disk.fail_next(FaultOp::Sync, libc::EIO);
        let large = vec![7u8; 70 << 10];
        assert!(orders.append(&[&large], Durability::Local).is_err());
        assert!(orders.is_fenced());
        // Another log fills the journal until it switches files, twice.
        let switches = committer.stats().journal_switches;
        let mut i = 0;
        while committer.stats().journal_switches < switches + 2 {
            events.append(&[&value_of(&format!("event {i}"), 200)], Durability::Local).unwrap();
            i += 1;
        }
    }
    assert!(disk.crash_report().writes_dropped_count > 0, "the failed sync dropped written data");
    disk.crash(Tear::None);
    let (_committer, logs) = open_journaled(&disk, &["orders", "events"]).unwrap();
    assert_eq!(values_of(&logs[0]), acked, "every record acknowledged before the failed sync");
}

// ---- 3. Waiting on records that a suffix truncation removed ----

fn pending(log: &Log, value: &[u8]) -> tern_wal::Appended {
    log.append_records(&[Record::new(value, tern_wal::now_ms())], AppendOptions::default()).unwrap()
}

/// A waiter for records cut before they were durable gets a typed error, in both commit modes,
/// instead of spinning at 100% CPU (leader mode) or parking forever (thread mode).
#[test]
fn a_waiter_for_records_a_truncation_cut_fails_instead_of_waiting_forever() {
    for mode in [CommitMode::Leader, CommitMode::Thread] {
        let disk = SimDisk::new();
        let shared: Arc<dyn Disk> = Arc::new(disk.clone());
        let committer = Committer::start_with(shared.clone(), None, mode).unwrap();
        let log = Log::open(shared, log_dir(), "log", small_options(), committer.clone(), true).unwrap();
        log.append(&[b"kept"], Durability::Local).unwrap();
        let cut = pending(&log, b"cut");
        log.truncate_suffix(1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(cut.wait(Durability::Local));
        });
        let result = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("{mode:?}: still waiting"));
        assert!(matches!(result, Err(Error::Truncated { end: 2, cut: 1, .. })), "{mode:?}: {result:?}");
        committer.stop();
    }
}

/// Once new records fill the offsets of cut ones and become durable, a waiter for the cut
/// records must not be told that its append took effect.
#[test]
fn a_waiter_for_cut_records_is_not_told_they_are_durable_when_new_records_fill_their_offsets() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    log.append(&[b"kept"], Durability::Local).unwrap();
    let cut = pending(&log, b"cut");
    log.truncate_suffix(1).unwrap();
    assert_eq!(log.append(&[b"new"], Durability::Local).unwrap(), 1..2);
    assert!(matches!(cut.wait(Durability::Local), Err(Error::Truncated { .. })));
    assert_eq!(contents(&log, Visibility::Durable), vec![(0, b"kept".to_vec()), (1, b"new".to_vec())]);
    committer.stop();
}

/// A cut at the very end of an append's records leaves them: its waiter succeeds, while the
/// waiter of the records past the cut fails.
#[test]
fn a_cut_at_the_end_of_an_append_leaves_its_waiter_successful() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    let kept = pending(&log, b"kept");
    let cut = pending(&log, b"cut");
    log.truncate_suffix(1).unwrap();
    assert_eq!(kept.wait(Durability::Local).unwrap(), 0..1);
    assert!(matches!(cut.wait(Durability::Local), Err(Error::Truncated { end: 2, cut: 1, .. })));
    committer.stop();
}

/// The log remembers the last 1024 cuts. A waiter that saw every cut since its append judges
/// them exactly (cuts at or past its records leave it successful); one that saw more than are
/// remembered cannot know, and fails rather than claim records that may have been cut.
#[test]
fn a_waiter_that_outlived_more_cuts_than_are_remembered_fails_rather_than_guess() {
    const REMEMBERED: usize = 1024;
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    let exact = pending(&log, b"kept");
    let outlived = pending(&log, b"kept too");
    let end = log.written_end();
    let cut_past = |count: usize| {
        for i in 0..count {
            log.append(&[format!("cut {i}").as_bytes()], Durability::None).unwrap();
            log.truncate_suffix(end).unwrap();
        }
    };
    cut_past(REMEMBERED);
    assert_eq!(exact.wait(Durability::Local).unwrap(), 0..1, "every cut since is remembered");
    cut_past(1);
    let result = outlived.wait(Durability::Local);
    assert!(matches!(result, Err(Error::Truncated { .. })), "{result:?}");
    assert_eq!(contents(&log, Visibility::Durable).len(), 2, "the records were in fact kept");
    committer.stop();
}

// ---- 5. A power loss during a roll ----

/// Rolls with power lost at every sync point, under the page-level crash model (a new name
/// and its allocation may be durable before the data written into the file): the log opens
/// every time, with every acknowledged record.
#[test]
fn a_power_loss_during_a_roll_never_leaves_a_log_that_will_not_open() {
    let workload = |disk: &SimDisk, acked: &mut usize| -> tern_wal::Result<()> {
        let committer = sim_committer(disk);
        let log = open(disk, &committer)?;
        for i in 0..24 {
            log.append(&[&value_of(&format!("record {i}:"), 700)], Durability::Local)?;
            *acked = i + 1;
        }
        Ok(())
    };
    let dry = SimDisk::new();
    workload(&dry, &mut 0).unwrap();
    let segments = dry.files().iter().filter(|p| p.extension().is_some_and(|e| e == "seg")).count();
    assert!(segments >= 4, "the workload rolls: {segments} segments");
    for tear in tears() {
        for crash_at in 0..=dry.sync_points() {
            let disk = SimDisk::new();
            disk.crash_at_sync(crash_at);
            let mut acked = 0;
            let _ = workload(&disk, &mut acked);
            disk.crash(tear);
            let committer = sim_committer(&disk);
            let log = open(&disk, &committer).unwrap_or_else(|e| {
                panic!("power loss at sync point {crash_at}, {tear:?}: the log does not open: {e}")
            });
            let got = values_of(&log);
            assert!(
                got.len() >= acked,
                "power loss at sync point {crash_at}, {tear:?}: {} of {acked} acked",
                got.len()
            );
            for (i, v) in got.iter().enumerate() {
                assert_eq!(v, &value_of(&format!("record {i}:"), 700), "sync point {crash_at}, {tear:?}: record {i}");
            }
            log.append(&[b"after"], Durability::Local).unwrap();
            committer.stop();
        }
    }
}

// ---- 6. Bytes handed to a reader never change ----

/// Record values are slices of the segment's memory map. A suffix truncation and the appends
/// that refill the cut offsets must not change a byte of them while a reader holds them: the
/// cut continues in a new file, and the old one stays as it was for its readers.
#[test]
fn bytes_a_reader_holds_never_change_when_the_log_is_cut_and_refilled() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Arc<dyn Disk> = Arc::new(tern_segment::OsDisk::new());
    let committer = Committer::start(disk.clone());
    let options = tern_wal::LogOptions { segment_size_bytes: 8192, ..small_options() };
    let log = Log::open(disk.clone(), dir.path(), "log", options, committer.clone(), true).unwrap();
    let old: Vec<Vec<u8>> = (0..30).map(|i| format!("value-{i}").into_bytes()).collect();
    for v in &old {
        log.append(&[&[v.as_slice(), &[b'.'; 300]].concat()], Durability::Local).unwrap();
    }
    assert!(log.segments().len() >= 2, "the cuts below fall in a sealed segment and in the last one");
    let held: Vec<bytes::Bytes> = log.read(0, Visibility::Durable).unwrap().map(|r| r.unwrap().value).collect();
    let snapshot: Vec<Vec<u8>> = held.iter().map(|b| b.to_vec()).collect();
    for cut in [25u64, 7] {
        log.truncate_suffix(cut).unwrap();
        assert_eq!(held.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), snapshot, "after the cut at {cut}");
        for i in cut..30 {
            log.append(&[&[format!("NEW!!-{i}").as_bytes(), &[b'!'; 300]].concat()], Durability::Local).unwrap();
        }
        assert_eq!(held.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), snapshot, "after refilling from {cut}");
    }
    let now: Vec<Vec<u8>> = values_of(&log);
    assert!(now[7].starts_with(b"NEW!!-7") && now[6].starts_with(b"value-6"));
    log.close().unwrap();
    committer.stop();
}

// ---- 7. Damage below the durable end is an error after a power loss, never a cut ----

/// Byte position of the frame holding `offset` in the log's first segment.
fn frame_pos(log: &Log, offset: u64) -> u64 {
    let batches = log.read_batches(log.start_offset(), u64::MAX, Visibility::Durable).unwrap();
    let before: usize = batches.iter().take_while(|b| b.end_offset <= offset).map(|b| b.frame.len()).sum();
    tern_segment::segment::SEGMENT_HEADER_BYTES + before as u64
}

fn first_segment() -> PathBuf {
    log_dir().join(tern_segment::segment::segment_file_name(0))
}

fn expect_damage_reported(disk: &SimDisk, damaged_pos: u64, context: &str) {
    let committer = sim_committer(disk);
    match open(disk, &committer) {
        Err(Error::Segment(tern_segment::Error::Corrupt { file, pos, .. })) => {
            assert_eq!((file, pos), (first_segment(), damaged_pos), "{context}");
        }
        Err(e) => panic!("{context}: {e}"),
        Ok(log) => panic!("{context}: opened as {log:?}, the damaged record and those after it silently cut"),
    }
    let report = tern_wal::verify::verify_log(disk, log_dir(), &mut |_| {}).unwrap();
    assert!(
        report.problems.iter().any(|p| p.file == first_segment() && p.pos == damaged_pos),
        "{context}: verify must agree with open: {report:?}"
    );
    committer.stop();
}

/// Ten synced records, a clean close, a reopen (a new generation) and a power loss: a media
/// error in record 3 must stop the next open with an error naming the file and the byte.
#[test]
fn a_flipped_bit_in_synced_records_is_an_error_after_a_reopen_and_a_power_loss() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    for v in values("synced", 10) {
        log.append(&[&v], Durability::Local).unwrap();
    }
    log.close().unwrap();
    let log = open(&disk, &committer).unwrap();
    let damaged = frame_pos(&log, 3);
    drop(log);
    committer.stop();
    disk.crash(Tear::None);
    disk.flip_bit(&first_segment(), damaged + 20, 2).unwrap();
    expect_damage_reported(&disk, damaged, "a flipped bit in record 3 after a reopen and a power loss");
}

/// Without a close: synced records whose checkpoint had time to be synced (it is synced at
/// most every 100 ms while syncs go on) are covered by it after a power loss.
#[test]
fn a_flipped_bit_in_records_a_synced_checkpoint_covers_is_an_error_after_a_power_loss() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    // No interval: the slot written after each segment sync is synced with it.
    let options = tern_wal::LogOptions { checkpoint_sync_interval_ms: 0, ..small_options() };
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let log = Log::open(shared, log_dir(), "log", options, committer.clone(), true).unwrap();
    for v in values("synced", 10) {
        log.append(&[&v], Durability::Local).unwrap();
    }
    let damaged = frame_pos(&log, 3);
    // Power fails with the log open: no close syncs anything for it.
    disk.crash(Tear::None);
    drop(log);
    committer.stop();
    disk.flip_bit(&first_segment(), damaged + 20, 2).unwrap();
    expect_damage_reported(&disk, damaged, "a flipped bit in record 3 after a power loss");
}

/// Records acknowledged through the journal are synced into their segment when the journal
/// switches files; the switch then syncs the checkpoint slot claiming them (however long the
/// interval), because their journal entries are gone. After a power loss, damage in one of
/// them is an error, not a torn tail.
#[test]
fn a_journal_switch_makes_the_claim_durable_so_damage_below_it_is_an_error_after_a_power_loss() {
    let disk = SimDisk::new();
    let options = tern_wal::LogOptions { checkpoint_sync_interval_ms: 3_600_000, ..small_options() };
    let (committer, logs) = open_journaled_with(&disk, &["orders", "events"], options).unwrap();
    let (orders, events) = (&logs[0], &logs[1]);
    for v in values("acked", 10) {
        orders.append(&[&v], Durability::Local).unwrap();
    }
    assert_eq!(orders.segments().len(), 1, "the claim of the roll's meta must not cover them");
    let damaged = frame_pos(orders, 3);
    let switches = committer.stats().journal_switches;
    let mut i = 0;
    while committer.stats().journal_switches == switches {
        events.append(&[&value_of(&format!("event {i}"), 200)], Durability::Local).unwrap();
        i += 1;
    }
    disk.crash(Tear::None);
    drop(logs);
    committer.stop();
    let orders_segment = log_path("orders").join(tern_segment::segment::segment_file_name(0));
    disk.flip_bit(&orders_segment, damaged + 20, 2).unwrap();
    match open_journaled_with(&disk, &["orders", "events"], options) {
        Err(Error::Segment(tern_segment::Error::Corrupt { file, pos, .. })) => {
            assert_eq!((file, pos), (orders_segment, damaged));
        }
        Err(e) => panic!("{e}"),
        Ok((_, logs)) => {
            panic!("opened with {} records, the damaged one and those after it cut", logs[0].written_end())
        }
    }
}

/// A batch too large for the journal skips it: the group that acknowledges it must sync its
/// segment, or a power loss takes it.
#[test]
fn a_batch_too_large_for_the_journal_is_durable_when_acknowledged() {
    let disk = SimDisk::new();
    let (committer, logs) = open_journaled(&disk, &["orders"]).unwrap();
    let small = values("small", 3);
    for v in &small {
        logs[0].append(&[v], Durability::Local).unwrap();
    }
    let large = value_of("large:", 70 << 10);
    logs[0].append(&[&large], Durability::Local).unwrap();
    disk.crash(Tear::None);
    drop(logs);
    committer.stop();
    let (_committer, logs) = open_journaled(&disk, &["orders"]).unwrap();
    let mut expected = small;
    expected.push(large);
    assert_eq!(values_of(&logs[0]), expected);
}

// ---- 9. A full disk during a roll ----

/// A roll whose new segment cannot be allocated fails with `DiskFull`, leaves no file behind
/// and does not fence the log: the next append, once space is back, rolls and succeeds, and
/// everything acknowledged survives a power loss.
#[test]
fn a_full_disk_during_a_roll_is_left_by_itself_once_space_is_back() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    let mut acked = Vec::new();
    while log.segments()[0].remaining_bytes() > 1000 {
        let v = value_of(&format!("record {}:", acked.len()), 900);
        log.append(&[&v], Durability::Local).unwrap();
        acked.push(v);
    }
    disk.fail_next(FaultOp::Allocate, libc::ENOSPC);
    let refused = log.append(&[&value_of("refused:", 900)], Durability::Local);
    assert!(matches!(refused, Err(Error::DiskFull { .. })), "{refused:?}");
    assert!(!log.is_fenced(), "a refused allocation is not a failed sync");
    let files_before = disk.files().len();
    let v = value_of("after space came back:", 900);
    log.append(&[&v], Durability::Local).unwrap();
    acked.push(v);
    assert_eq!(log.segments().len(), 2);
    assert_eq!(disk.files().len(), files_before + 1, "the new segment, and no file left by the refused roll");
    drop(log);
    committer.stop();
    disk.crash(Tear::None);
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    assert_eq!(values_of(&log), acked);
    committer.stop();
}

// ---- 11. Smaller ----

#[test]
fn closing_a_fenced_log_reports_the_fence_and_truncations_refuse_it() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    for i in 0..20 {
        log.append(&[&value_of(&format!("r{i}"), 500)], Durability::Local).unwrap();
    }
    disk.fail_next(FaultOp::Sync, libc::EIO);
    assert!(log.append(&[b"x"], Durability::Local).is_err());
    assert!(matches!(log.truncate_prefix(5), Err(Error::Fenced { .. })));
    assert!(matches!(log.close(), Err(Error::Fenced { .. })), "a fenced log is not closed cleanly");
    assert!(matches!(log.truncate_prefix(5), Err(Error::Closed(_))));
    committer.stop();
}
