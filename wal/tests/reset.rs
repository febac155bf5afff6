//! The retention hold, and resetting a log to an empty one at a later start offset.
//!
//! A leader holds back retention for the oldest offset a peer still needs; a follower that fell
//! behind retention anyway discards its log and starts again, empty, where the leader's retained
//! segments begin. The reset must be all or nothing across a power loss at any sync point, with
//! or without the shared journal: the log reopens as the whole old log or as the empty log at
//! the new start (plus what was appended after the reset), and never shows an old record again
//! once the new start is in effect.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use tern_segment::sim::{SimDisk, Tear};
use tern_segment::Disk;
use tern_wal::{Committer, Durability, Error, JournalOptions, Log, Visibility};

/// Appends `count` records of 100 bytes, one batch each, synced: several small segments.
fn fill(log: &Log, count: u64) {
    for i in 0..count {
        log.append(&[format!("{i:0100}").as_bytes()], Durability::Local).unwrap();
    }
}

#[test]
fn a_retention_hold_keeps_the_segments_retention_would_drop_until_it_is_lifted() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    fill(&log, 200);
    let segments = log.segments();
    assert!(segments.len() >= 5, "small segments must roll: {}", segments.len());
    // Hold an offset inside the third segment: the first two may go, the third must stay.
    let third = &segments[2];
    let hold = third.base_offset() + 1;
    assert!(hold < third.end_offset());
    assert_eq!(log.retention_hold(), None);
    log.set_retention_hold(Some(hold));
    assert_eq!(log.retention_hold(), Some(hold));
    let start = log.apply_retention(Some(0), None, 0).unwrap();
    assert_eq!(start, third.base_offset(), "only the segments wholly below the hold go");
    assert_eq!(contents(&log, Visibility::Durable).first().map(|r| r.0), Some(third.base_offset()));
    // Age-based retention honours the hold too.
    assert_eq!(log.apply_retention(None, Some(0), u64::MAX).unwrap(), third.base_offset());
    // A hold exactly at a segment's end lets that segment go: it holds no offset at or above.
    log.set_retention_hold(Some(third.end_offset()));
    assert_eq!(log.apply_retention(Some(0), None, 0).unwrap(), third.end_offset());
    // Lifted, retention deletes everything but the last segment.
    log.set_retention_hold(None);
    assert_eq!(log.retention_hold(), None);
    let last_base = log.segments().last().unwrap().base_offset();
    assert_eq!(log.apply_retention(Some(0), None, 0).unwrap(), last_base);
    assert_eq!(log.written_end(), 200);
    committer.stop();
}

#[test]
fn a_retention_hold_at_the_log_start_keeps_everything_and_truncate_prefix_ignores_it() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    fill(&log, 200);
    log.set_retention_hold(Some(0));
    assert_eq!(log.apply_retention(Some(0), None, 0).unwrap(), 0);
    assert_eq!(log.apply_retention(None, Some(0), u64::MAX).unwrap(), 0);
    assert_eq!(contents(&log, Visibility::Durable).len(), 200);
    // An explicit truncation is an operator's order: the hold does not stop it.
    let start = log.truncate_prefix(150).unwrap();
    assert!(start > 0 && start <= 150, "start {start}");
    assert_eq!(log.retention_hold(), Some(0), "the hold itself is unchanged");
    // The hold lives with the open log only.
    log.close().unwrap();
    let log = open(&disk, &committer).unwrap();
    assert_eq!(log.retention_hold(), None);
    committer.stop();
}

#[test]
fn after_a_reset_appends_are_numbered_from_the_new_start_and_survive_reopen() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    fill(&log, 120);
    assert!(log.segments().len() > 2);
    log.reset(5000).unwrap();
    assert_eq!((log.start_offset(), log.written_end(), log.durable_end()), (5000, 5000, 5000));
    assert_eq!(log.segments().len(), 1);
    assert_eq!(contents(&log, Visibility::Written), vec![]);
    assert!(matches!(log.read(0, Visibility::Written), Err(Error::OffsetOutOfRange { .. })));
    assert_eq!(log.append(&[b"a", b"b"], Durability::Local).unwrap(), 5000..5002);
    assert_eq!(log.append(&[b"c"], Durability::None).unwrap(), 5002..5003);
    log.close().unwrap();
    let log = open(&disk, &committer).unwrap();
    assert_eq!((log.start_offset(), log.written_end()), (5000, 5003));
    let want: Vec<(u64, Vec<u8>)> = vec![(5000, b"a".to_vec()), (5001, b"b".to_vec()), (5002, b"c".to_vec())];
    assert_eq!(contents(&log, Visibility::Durable), want);
    let files = disk.files();
    let segment_files: Vec<&PathBuf> = files.iter().filter(|p| p.extension().is_some_and(|e| e == "seg")).collect();
    assert_eq!(segment_files.len(), 1, "every old segment file is gone: {segment_files:?}");
    committer.stop();
}

#[test]
fn a_reset_log_reopens_empty_at_its_start_after_a_close_and_after_power_loss() {
    for crash in [false, true] {
        let disk = SimDisk::new();
        let committer = sim_committer(&disk);
        let log = open(&disk, &committer).unwrap();
        fill(&log, 80);
        log.reset(80).unwrap(); // exactly the written end: allowed
        if crash {
            drop(log);
            disk.crash(Tear::None);
        } else {
            log.close().unwrap();
        }
        let log = open(&disk, &committer).unwrap();
        assert_eq!((log.start_offset(), log.written_end(), log.durable_end()), (80, 80, 80), "crash: {crash}");
        assert_eq!(contents(&log, Visibility::Written), vec![]);
        // Still a log: it takes appends and a second reset, which reuses its empty segment.
        assert_eq!(log.append(&[b"x"], Durability::Local).unwrap(), 80..81);
        log.reset(81).unwrap();
        log.reset(81).unwrap();
        assert_eq!(log.append(&[b"y"], Durability::Local).unwrap(), 81..82);
        drop(log);
        disk.crash(Tear::None);
        let log = open(&disk, &committer).unwrap();
        assert_eq!(contents(&log, Visibility::Durable), vec![(81, b"y".to_vec())]);
        committer.stop();
    }
}

#[test]
fn a_reset_below_the_written_end_is_refused_and_changes_nothing() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    fill(&log, 10);
    assert!(matches!(log.reset(9), Err(Error::ResetBelowEnd { offset: 9, end: 10 })));
    assert!(matches!(log.reset(0), Err(Error::ResetBelowEnd { offset: 0, end: 10 })));
    assert!(!log.is_fenced());
    assert_eq!(contents(&log, Visibility::Durable).len(), 10);
    log.close().unwrap();
    assert!(matches!(log.reset(100), Err(Error::Closed(_))));
    committer.stop();
}

#[test]
fn a_reset_syncs_written_records_first_so_a_waiter_is_told_the_truth_even_if_it_fails() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    log.append(&[b"synced"], Durability::Local).unwrap();
    let pending =
        log.append_records(&[tern_wal::Record::new(b"pending", tern_wal::now_ms())], Default::default()).unwrap();
    assert_eq!(log.durable_end(), 1);
    // The reset's first sync point syncs the pending record; power fails at its second, inside
    // the write of the meta file, so the reset never takes effect.
    disk.crash_at_sync(disk.sync_points() + 1);
    assert!(log.reset(10).is_err());
    assert!(log.is_fenced());
    // The waiter hears that its record is durable, and a power loss proves it.
    assert_eq!(pending.wait(Durability::Local).unwrap(), 1..2);
    drop(log);
    disk.crash(Tear::None);
    let log = open(&disk, &committer).unwrap();
    assert_eq!(contents(&log, Visibility::Durable), vec![(0, b"synced".to_vec()), (1, b"pending".to_vec())]);
    committer.stop();
}

#[test]
fn a_fresh_empty_log_resets_in_place() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    log.reset(0).unwrap();
    log.reset(7).unwrap();
    assert_eq!(log.append(&[b"seven"], Durability::Local).unwrap(), 7..8);
    drop(log);
    disk.crash(Tear::None);
    let log = open(&disk, &committer).unwrap();
    assert_eq!(contents(&log, Visibility::Durable), vec![(7, b"seven".to_vec())]);
    committer.stop();
}

// ---- Power loss at every sync point of a reset, without and with the journal ----

fn journal_options() -> JournalOptions {
    JournalOptions {
        dir: PathBuf::from("/data/journal"),
        file_bytes: tern_wal::journal::JOURNAL_HEADER_BYTES + (64 << 10),
    }
}

/// Opens the committer and the log as the engine does: with the journal, replay first, then a
/// new journal file.
fn open_with(disk: &SimDisk, journal: bool) -> tern_wal::Result<(Committer, Log)> {
    if !journal {
        let committer = sim_committer(disk);
        return match open(disk, &committer) {
            Ok(log) => Ok((committer, log)),
            Err(e) => {
                committer.stop();
                Err(e)
            }
        };
    }
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let committer = Committer::start_with_journal(shared.clone(), &journal_options())?;
    let opened = Log::open(shared, Path::new("/data/log"), "log", small_options(), committer.clone(), true)
        .and_then(|log| committer.finish_replay().map(|()| log));
    match opened {
        Ok(log) => Ok((committer, log)),
        Err(e) => {
            committer.stop();
            Err(e)
        }
    }
}

/// What the reset workload did before it finished or lost power.
#[derive(Debug, Default)]
struct ResetOutcome {
    /// Values appended before the reset, by offset from 0; all acknowledged as durable.
    old: Vec<Vec<u8>>,
    /// The start the log was reset to.
    reset_to: u64,
    /// Whether `reset` was called, and whether it returned `Ok`.
    reset_attempted: bool,
    reset_done: bool,
    /// Values appended after the reset, by offset from `reset_to`.
    new: Vec<Vec<u8>>,
    /// Offsets below this were acknowledged as durable (in the timeline current when it was).
    acked_end: u64,
    error: Option<String>,
}

/// Appends synced batches over several segments, resets the log `gap` offsets past its end,
/// appends other records there, and closes.
fn reset_workload(disk: &SimDisk, journal: bool, gap: u64, out: &mut ResetOutcome) -> tern_wal::Result<()> {
    let (committer, log) = open_with(disk, journal)?;
    let result = (|| {
        for i in 0..24 {
            let values: Vec<Vec<u8>> =
                (0..1 + i % 2).map(|j| value_of(&format!("old {i}.{j}:"), 60 + i * 41 % 300)).collect();
            let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            out.old.extend(values.iter().cloned());
            // The last old batch is synced, so every old record is acknowledged.
            let durability = if i % 3 == 1 && i != 23 { Durability::None } else { Durability::Local };
            let offsets = log.append(&refs, durability)?;
            if durability == Durability::Local {
                out.acked_end = offsets.end;
            }
        }
        assert!(log.segments().len() >= 3, "the old log spans several segments");
        out.reset_to = log.written_end() + gap;
        out.reset_attempted = true;
        log.reset(out.reset_to)?;
        out.reset_done = true;
        out.acked_end = out.reset_to;
        for i in 0..10 {
            let values: Vec<Vec<u8>> =
                (0..1 + i % 3).map(|j| value_of(&format!("new {i}.{j}:"), 60 + i * 29 % 300)).collect();
            let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            out.new.extend(values.iter().cloned());
            let durability = if i % 2 == 0 { Durability::Local } else { Durability::None };
            let offsets = log.append(&refs, durability)?;
            if durability == Durability::Local {
                out.acked_end = offsets.end;
            }
        }
        log.close()?;
        out.acked_end = log.written_end();
        Ok(())
    })();
    drop(log);
    committer.stop();
    result
}

fn run_reset_workload(disk: &SimDisk, journal: bool, gap: u64) -> ResetOutcome {
    let mut outcome = ResetOutcome::default();
    outcome.error = reset_workload(disk, journal, gap, &mut outcome).err().map(|e| e.to_string());
    outcome
}

/// Which timeline a recovered log turned out to be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timeline {
    Old,
    Reset,
}

/// Reopens the log from what the disk kept and checks it is the old log or the reset one.
fn check_reset_recovery(disk: &SimDisk, journal: bool, out: &ResetOutcome) -> Result<Timeline, String> {
    let (committer, log) = open_with(disk, journal).map_err(|e| format!("recovery failed: {e}"))?;
    let result = (|| {
        let got = try_contents(&log, Visibility::Written).map_err(|e| format!("read: {e}"))?;
        let (start, end) = (log.start_offset(), log.written_end());
        if log.durable_end() != end || start + got.len() as u64 != end {
            return Err(format!("recovered {} records but {log:?}", got.len()));
        }
        if let Some((i, (offset, _))) = got.iter().enumerate().find(|(i, (o, _))| *o != start + *i as u64) {
            return Err(format!("offsets not dense: {offset} at index {i} from {start}"));
        }
        let values: Vec<&Vec<u8>> = got.iter().map(|(_, v)| v).collect();
        let timeline = if start == 0 && !(out.reset_done && out.reset_to == 0) {
            // The old log: a reset never reached its meta file. Nothing may be missing from it
            // once the reset was asked for (every old record was acknowledged by then).
            if out.reset_done {
                return Err(format!("the reset returned, but the log reopened at 0 with {} records", got.len()));
            }
            let sent: Vec<&Vec<u8>> = out.old.iter().collect();
            if values.len() < out.acked_end as usize || values.len() > sent.len() {
                return Err(format!(
                    "old log of {} records; acked {}, sent {}",
                    values.len(),
                    out.acked_end,
                    sent.len()
                ));
            }
            if out.reset_attempted && values.len() != sent.len() {
                return Err(format!("half a reset: {} of {} old records", values.len(), sent.len()));
            }
            if let Some(offset) = values.iter().zip(&sent).position(|(got, sent)| got != sent) {
                return Err(format!("old record {offset} came back with other bytes"));
            }
            Timeline::Old
        } else {
            if !out.reset_attempted || start != out.reset_to {
                return Err(format!("log starts at {start}, but the reset asked for {}", out.reset_to));
            }
            if got.iter().any(|(_, v)| out.old.contains(v)) {
                return Err("a record of the old log is visible after the reset".into());
            }
            let acked_new = out.acked_end.saturating_sub(out.reset_to) as usize;
            if out.reset_done && values.len() < acked_new {
                return Err(format!("acknowledged records {}..{} are gone", end, out.acked_end));
            }
            if values.len() > out.new.len() {
                return Err(format!("{} records after the reset, only {} appended", values.len(), out.new.len()));
            }
            if let Some(i) = values.iter().zip(&out.new).position(|(got, sent)| *got != sent) {
                return Err(format!("record {} was never appended there", out.reset_to + i as u64));
            }
            Timeline::Reset
        };
        // The recovered log takes appends where it ended, and verify finds nothing wrong.
        let offsets = log.append(&[b"after recovery"], Durability::Local).map_err(|e| format!("append: {e}"))?;
        if offsets != (end..end + 1) {
            return Err(format!("append after recovery got {offsets:?}, expected {end}"));
        }
        let report = tern_wal::verify::verify_log(disk, log_dir(), &mut |_| {}).map_err(|e| e.to_string())?;
        if !report.problems.is_empty() {
            return Err(format!("verify after recovery: {:?}", report.problems));
        }
        Ok(timeline)
    })();
    drop(log);
    committer.stop();
    result
}

fn power_loss_during_reset(journal: bool, gap: u64) {
    let dry_run = SimDisk::new();
    let outcome = run_reset_workload(&dry_run, journal, gap);
    assert_eq!(outcome.error, None, "the workload runs through without faults");
    let sync_points = dry_run.sync_points();
    let (mut old, mut reset, mut interrupted_reset) = (0, 0, 0);
    for crash_at in 0..=sync_points {
        for tear in [Tear::None, Tear::Prefix(1), Tear::Half, Tear::AllButOne] {
            let disk = SimDisk::new();
            disk.crash_at_sync(crash_at);
            let outcome = run_reset_workload(&disk, journal, gap);
            disk.crash(tear);
            match check_reset_recovery(&disk, journal, &outcome) {
                Ok(Timeline::Old) => old += 1,
                Ok(Timeline::Reset) => {
                    reset += 1;
                    if !outcome.reset_done {
                        interrupted_reset += 1;
                    }
                }
                Err(broken) => panic!(
                    "journal: {journal}, gap {gap}: power loss at sync point {crash_at} of {sync_points} with \
                     {tear:?} after '{}' (reset to {}, attempted: {}, done: {}): {broken}",
                    outcome.error.as_deref().unwrap_or("the workload finished"),
                    outcome.reset_to,
                    outcome.reset_attempted,
                    outcome.reset_done,
                ),
            }
        }
    }
    // The sweep must have seen both timelines, and resets that recovery had to finish.
    assert!(old > 0 && reset > 0 && interrupted_reset > 0, "old {old}, reset {reset}, interrupted {interrupted_reset}");
    eprintln!("journal: {journal}, gap {gap}: {sync_points} sync points; old {old}, reset {reset} ({interrupted_reset} finished by recovery)");
}

#[test]
fn a_reset_cut_short_by_power_loss_reopens_as_the_old_log_or_the_empty_one() {
    power_loss_during_reset(false, 1000);
    power_loss_during_reset(false, 0);
}

#[test]
fn a_reset_cut_short_by_power_loss_with_the_journal_never_replays_old_records() {
    power_loss_during_reset(true, 1000);
    power_loss_during_reset(true, 0);
}

#[test]
fn records_discarded_by_a_reset_never_come_back_from_the_journal() {
    for append_after in [false, true] {
        let disk = SimDisk::new();
        let (committer, log) = open_with(&disk, true).unwrap();
        for i in 0..10 {
            log.append(&[format!("old-{i}").as_bytes()], Durability::Local).unwrap();
        }
        assert!(committer.stats().journal_blocks > 0, "the old records are durable through the journal");
        log.reset(10).unwrap();
        if append_after {
            log.append(&[b"new-10"], Durability::Local).unwrap();
        }
        drop(log);
        disk.crash(Tear::None);
        committer.stop();
        let (committer, log) = open_with(&disk, true).unwrap();
        let want: Vec<(u64, Vec<u8>)> = if append_after { vec![(10, b"new-10".to_vec())] } else { vec![] };
        assert_eq!(contents(&log, Visibility::Written), want, "append after: {append_after}");
        assert_eq!(log.start_offset(), 10);
        drop(log);
        committer.stop();
    }
}
