//! Power loss at every sync point.
//!
//! A scripted workload (appends mixing `Durability::Local` and `None`, several segment rolls, a
//! prefix truncation, a clean restart and a final close) runs once to count its sync points.
//! Then, for each sync point and each kind of torn write, it runs again on a fresh `SimDisk`
//! whose power fails at that point, and the log is reopened from what the disk kept. Whatever
//! the crash point, recovery must succeed, every record acknowledged as durable must be at its
//! offset with its bytes, and every record present must be one that an append really sent
//! there, at dense offsets from the log start.
//!
//! The disk is as unkind as a real one (`SimDisk`, `Tear::Random`): any subset of unsynced pages
//! survives, in any order, torn at sector boundaries; a new name may be durable before its data;
//! and power may fail again during the recovery from the first loss. Each test also asserts
//! that these faults really happened in its runs, so that it could see them.
//!
//! `TERN_CRASH_FULL=1` runs a longer workload with more kinds of tear, `TERN_CRASH_SEEDS=N` more
//! page-level crash images per sync point (default 2), and both a second power loss at every sync
//! point of every recovery (by default, at every third).

mod common;

use std::sync::Barrier;

use common::*;
use tern_segment::sim::{CrashReport, FaultOp, SimDisk, Tear};
use tern_wal::{AppendOptions, Appended, Committer, Durability, Error, Log, Record, Visibility};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Local and None appends, a clean restart in the middle and a close at the end.
    Mixed,
    /// As `Mixed`, with small synced appends made durable through the shared journal.
    Journal,
    /// Only None appends and no close: nothing but rolls and truncation syncs anything.
    NoSync,
}

/// What one run of the workload did before it finished or met its first failure.
#[derive(Debug, Default, Clone)]
struct Outcome {
    /// The values every append attempt sent, by the offset they were to have.
    sent: Vec<Vec<u8>>,
    /// Records below this offset were acknowledged as durable (a Local append, which covers
    /// everything written before it, or a clean close).
    acked_end: u64,
    /// A completed prefix truncation promised the log start is at least this.
    start_min: u64,
    /// No attempted prefix truncation asked for more than this.
    start_max: u64,
    /// The first failure, or `None` when the workload finished.
    error: Option<String>,
}

fn full() -> bool {
    std::env::var_os("TERN_CRASH_FULL").is_some_and(|v| v != "0")
}

fn append_count() -> usize {
    if full() {
        240
    } else {
        60
    }
}

fn tears() -> Vec<Tear> {
    let mut tears = vec![Tear::None, Tear::Prefix(1), Tear::Half, Tear::AllButOne];
    if full() {
        // Inside the length field, inside the crc, inside the batch header, just past it.
        tears.extend([Tear::Prefix(3), Tear::Prefix(6), Tear::Prefix(40), Tear::Prefix(64), Tear::Prefix(80)]);
    }
    let seeds: u64 = std::env::var("TERN_CRASH_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    tears.extend((0..seeds).map(|s| Tear::Random(0xc0ffee00 + s)));
    tears
}

/// Whether to lose power again at sync point `at` of the recovery after the crash at
/// `crash_at`: at every one with `TERN_CRASH_FULL`, otherwise after every third first crash.
fn second_crash_due(crash_at: u64) -> bool {
    full() || crash_at.is_multiple_of(3)
}

fn journal_options() -> tern_wal::JournalOptions {
    tern_wal::JournalOptions {
        dir: std::path::PathBuf::from("/data/journal"),
        file_bytes: tern_wal::journal::JOURNAL_HEADER_BYTES + (64 << 10),
    }
}

/// The committer the mode runs with. Starting one with the journal recovers the journal, and
/// fails when power is lost meanwhile, as the engine's open would.
fn committer_for(disk: &SimDisk, mode: Mode) -> tern_wal::Result<Committer> {
    if mode == Mode::Journal {
        let shared: std::sync::Arc<dyn tern_segment::Disk> = std::sync::Arc::new(disk.clone());
        return Committer::start_with_journal(shared, &journal_options());
    }
    Ok(sim_committer(disk))
}

/// Opens the log as the engine does: with the journal, its entries are replayed into it and a
/// new journal file starts.
fn open_in(disk: &SimDisk, committer: &Committer) -> tern_wal::Result<Log> {
    let log = open(disk, committer)?;
    committer.finish_replay()?;
    Ok(log)
}

fn run_workload(disk: &SimDisk, mode: Mode) -> Outcome {
    let mut outcome = Outcome::default();
    let result = committer_for(disk, mode).and_then(|committer| workload(disk, &committer, mode, &mut outcome));
    outcome.error = result.err().map(|e| e.to_string());
    // Not stopped: a stop syncs segments, which the crash that follows must not get for free.
    outcome
}

/// Runs until the first operation fails (the power loss), recording what was promised.
fn workload(disk: &SimDisk, committer: &Committer, mode: Mode, out: &mut Outcome) -> tern_wal::Result<()> {
    let appends = append_count();
    let mut log = open_in(disk, committer)?;
    for i in 0..appends {
        if i == appends / 2 {
            // Half the log: at least the first segment goes, so a crash can leave segments
            // below the new start for recovery to remove.
            let requested = log.written_end() / 2;
            out.start_max = requested;
            out.start_min = log.truncate_prefix(requested)?;
            assert!(out.start_min > 0, "the prefix truncation removes a segment: {:?}", log.segments());
        }
        if i == appends * 3 / 4 && mode != Mode::NoSync {
            log.close()?;
            out.acked_end = log.written_end();
            log = open_in(disk, committer)?;
        }
        let values: Vec<Vec<u8>> = (0..1 + i % 3)
            .map(|j| value_of(&format!("append {i} record {j}:"), 30 + (i * 37 + j * 53) % 170))
            .collect();
        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let base = log.written_end();
        assert_eq!(base, out.sent.len() as u64, "the workload sends at dense offsets");
        out.sent.extend(values.iter().cloned());
        let durability = if mode != Mode::NoSync && i % 3 != 0 { Durability::Local } else { Durability::None };
        let offsets = log.append(&refs, durability)?;
        if durability == Durability::Local {
            out.acked_end = offsets.end;
        }
    }
    if mode != Mode::NoSync {
        log.close()?;
        out.acked_end = log.written_end();
    }
    Ok(())
}

/// Every acknowledged record is present at its offset with its bytes; `got` is dense from `start`.
fn assert_acked_intact(got: &[(u64, Vec<u8>)], start: u64, out: &Outcome) -> Result<(), String> {
    let end = start + got.len() as u64;
    if end < out.acked_end {
        return Err(format!("acknowledged records {end}..{} are gone", out.acked_end));
    }
    for (offset, value) in got.iter().filter(|(o, _)| *o < out.acked_end) {
        if out.sent.get(*offset as usize) != Some(value) {
            return Err(format!("acknowledged record {offset} came back with other bytes"));
        }
    }
    Ok(())
}

/// Every record present is one some append sent at that offset, at dense offsets from `start`.
fn assert_nothing_invented(got: &[(u64, Vec<u8>)], start: u64, out: &Outcome) -> Result<(), String> {
    for (i, (offset, value)) in got.iter().enumerate() {
        if *offset != start + i as u64 {
            return Err(format!("offsets not dense: {offset} where {} was due", start + i as u64));
        }
        if out.sent.get(*offset as usize) != Some(value) {
            return Err(format!("record {offset} ({} bytes) was never sent there", value.len()));
        }
    }
    Ok(())
}

/// Reopens the log from what the disk kept, checks it against what the workload was told, and
/// checks that it takes appends again.
fn check_recovery(disk: &SimDisk, out: &Outcome) -> Result<(), String> {
    check_recovery_in(disk, out, Mode::Mixed)
}

/// [`check_recovery`] with the committer of `mode`.
fn check_recovery_in(disk: &SimDisk, out: &Outcome, mode: Mode) -> Result<(), String> {
    let committer = committer_for(disk, mode).map_err(|e| format!("opening the journal: {e}"))?;
    let result = reopen_and_check(disk, &committer, out).and_then(|log| check_usable(disk, &log));
    committer.stop();
    result
}

/// The read-only part of [`check_recovery`].
fn reopen_and_check(disk: &SimDisk, committer: &Committer, out: &Outcome) -> Result<Log, String> {
    let log = open_in(disk, committer).map_err(|e| format!("recovery failed: {e}"))?;
    let start = log.start_offset();
    if start < out.start_min || start > out.start_max.max(out.start_min) {
        return Err(format!("log start {start} outside {}..={}", out.start_min, out.start_max));
    }
    let got = try_contents(&log, Visibility::Written).map_err(|e| format!("reading the recovered log: {e}"))?;
    assert_nothing_invented(&got, start, out)?;
    assert_acked_intact(&got, start, out)?;
    if log.durable_end() != log.written_end() || start + got.len() as u64 != log.written_end() {
        return Err(format!("recovered {} records but {log:?}", got.len()));
    }
    Ok(log)
}

/// The recovered log takes appends where it ended, and verify finds nothing wrong with it.
fn check_usable(disk: &SimDisk, log: &Log) -> Result<(), String> {
    let end = log.written_end();
    let offsets = log.append(&[b"after recovery"], Durability::Local).map_err(|e| format!("append: {e}"))?;
    if offsets != (end..end + 1) {
        return Err(format!("append after recovery got {offsets:?}, expected {end}"));
    }
    let last = try_contents(log, Visibility::Durable).map_err(|e| format!("read: {e}"))?.pop();
    if last != Some((end, b"after recovery".to_vec())) {
        return Err(format!("the append after recovery reads back as {last:?}"));
    }
    let report = tern_wal::verify::verify_log(disk, log_dir(), &mut |_| {}).map_err(|e| e.to_string())?;
    if !report.problems.is_empty() {
        return Err(format!("verify after recovery: {:?}", report.problems));
    }
    Ok(())
}

/// The workload of `mode` with power lost at each of its sync points, under every tear; with a
/// page-level tear, power is lost again at every sync point of the recovery after some of
/// them. Returns what the crashes did, summed.
fn power_loss_at_every_sync_point(mode: Mode) -> CrashReport {
    let dry_run = SimDisk::new();
    let outcome = run_workload(&dry_run, mode);
    assert_eq!(outcome.error, None, "the workload runs through without faults");
    let sync_points = dry_run.sync_points();
    let segments_rolled = dry_run.files().iter().filter(|p| p.extension().is_some_and(|e| e == "seg")).count();
    assert!(segments_rolled >= 3, "the workload must roll segments, kept {segments_rolled}");
    let tears = tears();
    let mut seen = CrashReport::default();
    let fail = |crash_at: u64, tear: Tear, again: Option<u64>, outcome: &Outcome, broken: String| -> ! {
        let again = again.map_or(String::new(), |j| format!(", and again at sync point {j} of the recovery"));
        panic!(
            "{mode:?}: power loss at sync point {crash_at} of {sync_points} with {tear:?}{again} after '{}': {broken}",
            outcome.error.as_deref().unwrap_or("the workload finished")
        )
    };
    for crash_at in 0..=sync_points {
        for &tear in &tears {
            let crashed = |disk: &SimDisk| {
                disk.crash_at_sync(crash_at);
                let outcome = run_workload(disk, mode);
                (outcome, disk.crash_with_report(tear))
            };
            let disk = SimDisk::new();
            let (outcome, report) = crashed(&disk);
            add(&mut seen, report);
            if crash_at < sync_points {
                assert!(outcome.error.is_some(), "the workload passed sync point {crash_at} without losing power");
            }
            if let Err(broken) = check_recovery_in(&disk, &outcome, mode) {
                fail(crash_at, tear, None, &outcome, broken);
            }
            if !matches!(tear, Tear::Random(_)) || !second_crash_due(crash_at) {
                continue;
            }
            // Power fails again during the recovery, at each of its sync points in turn.
            for again in 0.. {
                let disk = SimDisk::new();
                let (outcome, _) = crashed(&disk);
                disk.crash_at_sync(disk.sync_points() + again);
                let finished = committer_for(&disk, mode).and_then(|c| open_in(&disk, &c)).is_ok();
                add(&mut seen, disk.crash_with_report(Tear::Random(crash_at ^ again << 32)));
                if let Err(broken) = check_recovery_in(&disk, &outcome, mode) {
                    fail(crash_at, tear, Some(again), &outcome, broken);
                }
                if finished {
                    break;
                }
            }
        }
    }
    eprintln!("{mode:?}: checked {} sync points x {} tears: {seen:?}", sync_points + 1, tears.len());
    seen
}

fn add(sum: &mut CrashReport, report: CrashReport) {
    sum.pages_kept_count += report.pages_kept_count;
    sum.pages_lost_count += report.pages_lost_count;
    sum.pages_torn_count += report.pages_torn_count;
    sum.name_ops_kept_count += report.name_ops_kept_count;
    sum.name_ops_lost_count += report.name_ops_lost_count;
}

/// The faults the page-level model adds must have happened in a run that claims to survive
/// them: pages kept, lost and torn, and names made durable without their directory's sync.
fn assert_faults_exercised(seen: CrashReport) {
    assert!(seen.pages_kept_count > 0 && seen.pages_lost_count > 0 && seen.pages_torn_count > 0, "{seen:?}");
    assert!(seen.name_ops_kept_count > 0 && seen.name_ops_lost_count > 0, "{seen:?}");
}

#[test]
fn acked_records_survive_power_loss_at_every_sync_point() {
    assert_faults_exercised(power_loss_at_every_sync_point(Mode::Mixed));
}

#[test]
fn acked_records_survive_power_loss_at_every_sync_point_with_the_journal() {
    assert_faults_exercised(power_loss_at_every_sync_point(Mode::Journal));
}

/// What the suffix-truncation workload did before it finished or lost power.
#[derive(Debug, Default)]
struct CutOutcome {
    /// Values appended before the cut, all acknowledged as durable.
    old: Vec<Vec<u8>>,
    /// The offset the suffix was cut at.
    cut: u64,
    /// Whether `truncate_suffix` was called, and whether it returned `Ok`.
    cut_attempted: bool,
    cut_done: bool,
    /// Values appended after the cut, by offset from `cut`.
    new: Vec<Vec<u8>>,
    /// Offsets below this were acknowledged as durable.
    acked_end: u64,
    error: Option<String>,
}

/// Appends synced batches over several segments, cuts the suffix back into an early sealed
/// segment, appends different records at the cut offsets, and closes.
fn cut_workload(disk: &SimDisk, committer: &Committer, out: &mut CutOutcome) -> tern_wal::Result<()> {
    let log = open(disk, committer)?;
    let mut batch_starts = Vec::new();
    for i in 0..30 {
        let values: Vec<Vec<u8>> =
            (0..1 + i % 2).map(|j| value_of(&format!("old {i}.{j}:"), 60 + i * 41 % 200)).collect();
        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        batch_starts.push(log.written_end());
        out.old.extend(values.iter().cloned());
        out.acked_end = log.append(&refs, Durability::Local)?.end;
    }
    out.cut = batch_starts[7];
    let later_segments = log.segments().iter().filter(|s| s.base_offset() > out.cut).count();
    assert!(later_segments >= 2, "the cut must remove whole segments, not only a tail");
    out.cut_attempted = true;
    log.truncate_suffix(out.cut)?;
    out.cut_done = true;
    out.acked_end = out.cut;
    for i in 0..12 {
        let values: Vec<Vec<u8>> =
            (0..1 + i % 3).map(|j| value_of(&format!("new {i}.{j}:"), 60 + i * 29 % 200)).collect();
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
}

fn run_cut_workload(disk: &SimDisk) -> CutOutcome {
    let committer = sim_committer(disk);
    let mut outcome = CutOutcome::default();
    outcome.error = cut_workload(disk, &committer, &mut outcome).err().map(|e| e.to_string());
    committer.stop();
    outcome
}

/// The records the log may hold after the crash, by offset, and the shortest it may be.
fn check_cut_recovery(disk: &SimDisk, out: &CutOutcome) -> Result<(), String> {
    let committer = sim_committer(disk);
    let result = (|| {
        let log = open(disk, &committer).map_err(|e| format!("recovery failed: {e}"))?;
        let got = try_contents(&log, Visibility::Written).map_err(|e| format!("read: {e}"))?;
        let values: Vec<&Vec<u8>> = got.iter().map(|(_, v)| v).collect();
        let offsets_dense = got.iter().enumerate().all(|(i, (o, _))| *o == i as u64);
        if !offsets_dense || log.start_offset() != 0 {
            return Err(format!("offsets not dense from 0: {log:?}"));
        }
        let cut = out.cut as usize;
        let old_all: Vec<&Vec<u8>> = out.old.iter().collect();
        let old_kept: Vec<&Vec<u8>> = out.old.iter().take(cut).collect();
        if out.cut_attempted && !out.cut_done {
            // Interrupted: every old record was durable, so the cut happened whole or not at all.
            if values != old_kept && values != old_all {
                return Err(format!("half a truncation: {} records, cut at {cut} of {}", values.len(), out.old.len()));
            }
            return check_usable(disk, &log);
        }
        let sent: Vec<&Vec<u8>> = if out.cut_done { old_kept.into_iter().chain(&out.new).collect() } else { old_all };
        if values.len() < out.acked_end as usize {
            return Err(format!("acknowledged records {}..{} are gone", values.len(), out.acked_end));
        }
        if let Some(offset) = values.iter().zip(&sent).position(|(got, sent)| got != sent) {
            let old = out.old.get(offset).is_some_and(|v| v == values[offset]);
            return Err(format!("record {offset} is not what was appended there last (a cut record: {old})"));
        }
        if values.len() > sent.len() {
            return Err(format!("{} records, only {} appended", values.len(), sent.len()));
        }
        check_usable(disk, &log)
    })();
    committer.stop();
    result
}

#[test]
fn a_suffix_truncation_cut_short_by_power_loss_is_all_or_nothing() {
    let dry_run = SimDisk::new();
    let outcome = run_cut_workload(&dry_run);
    assert_eq!(outcome.error, None, "the workload runs through without faults");
    assert!(outcome.old.len() > outcome.cut as usize && outcome.cut > 0);
    let sync_points = dry_run.sync_points();
    for crash_at in 0..=sync_points {
        for &tear in &tears() {
            let disk = SimDisk::new();
            disk.crash_at_sync(crash_at);
            let outcome = run_cut_workload(&disk);
            disk.crash(tear);
            if let Err(broken) = check_cut_recovery(&disk, &outcome) {
                panic!(
                    "power loss at sync point {crash_at} of {sync_points} with {tear:?} after '{}' (cut at {}, done: {}): {broken}",
                    outcome.error.as_deref().unwrap_or("the workload finished"),
                    outcome.cut,
                    outcome.cut_done
                );
            }
        }
    }
}

/// The twin of the test above: without syncs, a power loss does lose appends, and the same
/// checks see it. This proves the harness can tell a log that keeps its promises from one that
/// would only keep them by luck.
#[test]
fn appends_without_a_sync_are_lost_in_a_power_loss_and_the_harness_sees_it() {
    let disk = SimDisk::new();
    let outcome = run_workload(&disk, Mode::NoSync);
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.acked_end, 0, "nothing was acknowledged as durable");
    disk.crash(Tear::None);
    let committer = sim_committer(&disk);
    // Had the appends been acknowledged, the harness would have reported their loss...
    let claimed = Outcome { acked_end: outcome.sent.len() as u64, ..outcome.clone() };
    let broken = reopen_and_check(&disk, &committer, &claimed).expect_err("records appended without a sync were lost");
    assert!(broken.contains("are gone"), "{broken}");
    committer.stop();
    // ...while what the log kept passes every check that holds after any crash.
    check_recovery(&disk, &outcome).expect("recovery after a power loss without syncs");
}

#[test]
fn a_failed_sync_fails_every_waiter_of_its_group_and_fences_the_log() {
    const WAITERS: usize = 6;
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    log.append(&[b"durable"], Durability::Local).unwrap();
    let stats_before = committer.stats();
    // Written before anyone asks for a sync, so one group sync covers every one of them.
    let values: Vec<Vec<u8>> = (0..WAITERS).map(|i| format!("waiter {i}").into_bytes()).collect();
    let pending: Vec<Appended> = values
        .iter()
        .map(|v| log.append_records(&[Record::new(v, tern_wal::now_ms())], AppendOptions::default()).unwrap())
        .collect();
    disk.fail_next(FaultOp::Sync, libc::EIO);
    let barrier = Barrier::new(WAITERS);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = pending
            .into_iter()
            .map(|appended| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    appended.wait(Durability::Local)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("waiter thread")).collect()
    });
    for (i, result) in results.iter().enumerate() {
        assert!(matches!(result, Err(Error::Fenced { .. })), "waiter {i}: {result:?}");
    }
    let stats = committer.stats();
    assert_eq!(stats.file_syncs - stats_before.file_syncs, 1, "one failed sync, never retried: {stats:?}");
    assert!(log.is_fenced());
    // Fenced: no append of either durability, no truncation, no sync.
    assert!(matches!(log.append(&[b"refused"], Durability::None), Err(Error::Fenced { .. })));
    assert!(matches!(log.append(&[b"refused"], Durability::Local), Err(Error::Fenced { .. })));
    assert!(matches!(log.truncate_suffix(1), Err(Error::Fenced { .. })));
    assert!(matches!(log.sync(), Err(Error::Fenced { .. })));
    // The durable view never includes what the failed sync was to persist.
    assert_eq!(log.durable_end(), 1);
    assert_eq!(contents(&log, Visibility::Durable), vec![(0, b"durable".to_vec())]);
    committer.stop();

    // After a power loss and a reopen, the log works again; nothing was invented.
    drop(log);
    disk.crash(Tear::None);
    let committer = sim_committer(&disk);
    let log: Log = open(&disk, &committer).unwrap();
    let got = contents(&log, Visibility::Written);
    assert_eq!(got.first(), Some(&(0, b"durable".to_vec())));
    for (offset, value) in got.iter().skip(1) {
        assert_eq!(Some(value), values.get(*offset as usize - 1), "record {offset} was never appended there");
    }
    log.append(&[b"after"], Durability::Local).unwrap();
    committer.stop();
}
