//! The epoch history: which leader epoch wrote which offsets, kept durably beside the segments.
//!
//! A leader begins its epoch with `begin_epoch`, a follower's history follows the frames it
//! applies, and `epoch_end` answers Kafka's OffsetsForLeaderEpoch so that a returning follower
//! can find where it diverged. The promise that everything here checks, also after power loss
//! at any sync point: the history is never behind the data. Every batch carries the epoch that
//! the history says is in effect at its offset, and an epoch begun is not forgotten.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use tern_segment::frame::{self, BatchMeta, Record};
use tern_segment::sim::{FaultOp, SimDisk, Tear};
use tern_segment::Disk;
use tern_wal::epochs::{EpochHistory, EPOCHS_FILE};
use tern_wal::{AppendOptions, Committer, Durability, Error, JournalOptions, Log, Visibility};

/// Every batch of the log from its start, as (base offset, end offset, epoch).
fn batches(log: &Log) -> tern_wal::Result<Vec<(u64, u64, u64)>> {
    let (start, end) = (log.start_offset(), log.written_end());
    if start == end {
        return Ok(Vec::new());
    }
    let refs = log.read_batches(start, u64::MAX, Visibility::Written)?;
    Ok(refs.iter().map(|b| (b.base_offset, b.end_offset, b.epoch)).collect())
}

/// The frame header of each batch, decoded from the frame bytes themselves.
fn frame_epochs(log: &Log) -> Vec<(u64, u64)> {
    let refs = log.read_batches(log.start_offset(), u64::MAX, Visibility::Written).unwrap();
    refs.iter()
        .map(|b| {
            let decoded = frame::decode(&b.frame).unwrap().unwrap();
            (decoded.header.base_offset, decoded.header.epoch)
        })
        .collect()
}

/// The history is never behind the data: each batch's epoch is the epoch in effect at its base
/// offset, an epoch above 0 has an entry starting at or below it, and no entry starts past the
/// written end.
fn check_history_covers_batches(log: &Log) -> Result<(), String> {
    let history = log.epoch_history();
    let in_effect = |offset: u64| history.iter().rev().find(|(_, start)| *start <= offset).map_or(0, |(e, _)| *e);
    for (base, _, epoch) in batches(log).map_err(|e| format!("read: {e}"))? {
        if epoch > 0 && !history.iter().any(|(e, start)| *e == epoch && *start <= base) {
            return Err(format!("batch at {base} of epoch {epoch} has no history entry at or below it: {history:?}"));
        }
        if in_effect(base) != epoch {
            return Err(format!(
                "batch at {base} has epoch {epoch}, the history says {}: {history:?}",
                in_effect(base)
            ));
        }
    }
    if let Some((epoch, start)) = history.iter().find(|(_, start)| *start > log.written_end()) {
        return Err(format!("epoch {epoch} starts at {start}, past the end {}", log.written_end()));
    }
    let last = batches(log).map_err(|e| e.to_string())?.last().map_or(0, |b| b.2);
    if log.last_epoch() != last {
        return Err(format!("last_epoch says {}, the last batch has epoch {last}", log.last_epoch()));
    }
    Ok(())
}

fn history_file(disk: &SimDisk) -> Option<EpochHistory> {
    let path = log_dir().join(EPOCHS_FILE);
    disk.file_len(&path)?;
    Some(EpochHistory::read(disk, log_dir()).unwrap())
}

#[test]
fn begin_epoch_stamps_later_batches_and_survives_reopen_and_power_loss() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    assert_eq!((log.epoch(), log.last_epoch(), log.epoch_history()), (0, 0, vec![]));
    assert!(history_file(&disk).is_none(), "no file until an epoch begins");
    log.append(&[b"before"], Durability::Local).unwrap();
    log.begin_epoch(3).unwrap();
    assert_eq!((log.epoch(), log.last_epoch()), (3, 0), "epoch 3 has written nothing yet");
    log.append(&[b"a", b"b"], Durability::None).unwrap();
    assert_eq!(log.last_epoch(), 3);
    // Begun twice without a batch between: the second replaces the first.
    log.begin_epoch(5).unwrap();
    log.begin_epoch(6).unwrap();
    assert_eq!(log.epoch_history(), [(3, 1), (6, 3)]);
    assert!(matches!(log.begin_epoch(6), Err(Error::EpochNotNewer { epoch: 6, current: 6 })));
    assert!(matches!(log.begin_epoch(4), Err(Error::EpochNotNewer { epoch: 4, current: 6 })));
    log.append_records(&[Record::new(b"c", 1)], AppendOptions::default()).unwrap().wait(Durability::None).unwrap();
    // set_epoch accepts the current epoch and begins a later one.
    log.set_epoch(6).unwrap();
    log.set_epoch(8).unwrap();
    log.append(&[b"d"], Durability::None).unwrap();
    let want_frames = vec![(0, 0), (1, 3), (3, 6), (4, 8)];
    let want_history = vec![(3, 1), (6, 3), (8, 4)];
    assert_eq!(frame_epochs(&log), want_frames);
    assert_eq!(log.epoch_history(), want_history);
    let on_disk: Vec<(u64, u64)> =
        history_file(&disk).unwrap().entries().iter().map(|e| (e.epoch, e.start_offset)).collect();
    assert_eq!(on_disk, want_history);
    check_history_covers_batches(&log).unwrap();
    log.close().unwrap();
    for crash in [false, true] {
        let log = open(&disk, &committer).unwrap();
        assert_eq!(log.epoch_history(), want_history, "crash: {crash}");
        assert_eq!((log.epoch(), log.last_epoch()), (8, 8));
        assert_eq!(frame_epochs(&log), want_frames);
        if crash {
            // A leader that began an epoch and lost power before writing keeps the epoch.
            log.append(&[b"unsynced"], Durability::None).unwrap();
            log.begin_epoch(9).unwrap();
            drop(log);
            disk.crash(Tear::None);
            let log = open(&disk, &committer).unwrap();
            assert_eq!((log.epoch(), log.written_end()), (9, 6), "begin_epoch synced what came before");
            let offsets = log.append(&[b"e"], Durability::Local).unwrap();
            assert_eq!(offsets, 6..7);
            assert_eq!(frame_epochs(&log).last(), Some(&(6, 9)));
            check_history_covers_batches(&log).unwrap();
        } else {
            drop(log);
            disk.crash(Tear::None);
        }
    }
    committer.stop();
}

#[test]
fn epoch_end_answers_offsets_for_leader_epoch_as_kafka_does() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    assert_eq!(log.epoch_end(3), (0, 0), "no history: epoch 0 ends at the written end");
    for (epoch, count) in [(1, 50), (2, 30), (4, 40)] {
        log.begin_epoch(epoch).unwrap();
        for i in 0..count {
            log.append(&[format!("{epoch}.{i}").as_bytes()], Durability::None).unwrap();
        }
    }
    assert_eq!((log.written_end(), log.epoch_history()), (120, vec![(1, 0), (2, 50), (4, 80)]));
    assert_eq!(log.epoch_end(1), (1, 50));
    assert_eq!(log.epoch_end(2), (2, 80));
    assert_eq!(log.epoch_end(3), (2, 80));
    assert_eq!(log.epoch_end(4), (4, 120));
    assert_eq!(log.epoch_end(9), (4, 120));
    assert_eq!(log.epoch_end(0), (0, 0));
    // Retention does not change the answers: the history keeps the epochs of removed batches.
    let start = log.apply_retention(Some(0), None, 0).unwrap();
    assert!(start > 50, "retention removed epoch 1 and part of 2: {start}");
    assert_eq!((log.epoch_end(1), log.epoch_end(3)), ((1, 50), (2, 80)));
    log.close().unwrap();
    let log = open(&disk, &committer).unwrap();
    assert_eq!((log.epoch_end(2), log.epoch_end(9), log.last_epoch()), ((2, 80), (4, 120), 4));
    committer.stop();
}

/// A leader on its own disk writing `epochs` (epoch, batch count) with one to three records per
/// batch; returns its log, its committer and the frames of all its batches, in order.
fn leader_frames(epochs: &[(u64, usize)]) -> (SimDisk, Committer, Log, Vec<tern_wal::BatchRef>) {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    let mut n = 0;
    for (epoch, batch_count) in epochs {
        if *epoch > 0 {
            log.begin_epoch(*epoch).unwrap();
        }
        for _ in 0..*batch_count {
            let values: Vec<Vec<u8>> = (0..1 + n % 3).map(|j| value_of(&format!("e{epoch} b{n}.{j}:"), 40)).collect();
            let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            log.append(&refs, Durability::None).unwrap();
            n += 1;
        }
    }
    log.sync().unwrap();
    let frames = log.read_batches(0, u64::MAX, Visibility::Written).unwrap();
    (disk, committer, log, frames)
}

fn concat(frames: &[tern_wal::BatchRef]) -> Vec<u8> {
    frames.iter().flat_map(|b| b.frame.iter().copied()).collect()
}

/// One frame of `epoch` at `base`, as a stale leader would ship it.
fn frame_of(epoch: u64, base: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode(&mut out, &BatchMeta { base_offset: base, epoch, ..Default::default() }, &[Record::new(value, 7)])
        .unwrap();
    out
}

#[test]
fn append_frames_records_each_new_epoch_and_refuses_a_stale_leaders_batches() {
    let (_leader_disk, leader_committer, leader, frames) = leader_frames(&[(0, 2), (1, 3), (2, 4), (5, 2), (7, 3)]);
    let leader_history = leader.epoch_history();
    let epochs: Vec<u64> = leader_history.iter().map(|(epoch, _)| *epoch).collect();
    assert_eq!(epochs, [1, 2, 5, 7]);
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    // One call crossing epochs 0 -> 1 -> 2, then one crossing 2 -> 5 -> 7.
    log.append_frames(&concat(&frames[..7])).unwrap().wait(Durability::Local).unwrap();
    assert_eq!(log.epoch_history(), leader_history[..2]);
    assert_eq!(log.epoch(), 2);
    log.append_frames(&concat(&frames[5..])).unwrap().wait(Durability::None).unwrap();
    assert_eq!(log.epoch_history(), leader.epoch_history());
    assert_eq!(log.written_end(), leader.written_end());
    assert_eq!(frame_epochs(&log), frame_epochs(&leader));
    check_history_covers_batches(&log).unwrap();
    let end = log.written_end();
    // A stale leader's batch, alone or after a good one in the same call: nothing is written.
    let stale = frame_of(5, end, b"stale");
    assert!(matches!(
        log.append_frames(&stale),
        Err(Error::StaleEpoch { epoch: 5, current: 7, offset }) if offset == end
    ));
    let mut mixed = frame_of(7, end, b"good");
    mixed.extend_from_slice(&frame_of(6, end + 1, b"stale"));
    assert!(matches!(log.append_frames(&mixed), Err(Error::StaleEpoch { epoch: 6, current: 7, .. })));
    // Epochs must not go back inside one call either, even above the log's epoch.
    let mut backwards = frame_of(9, end, b"nine");
    backwards.extend_from_slice(&frame_of(8, end + 1, b"eight"));
    assert!(matches!(log.append_frames(&backwards), Err(Error::StaleEpoch { epoch: 8, current: 9, .. })));
    assert_eq!((log.written_end(), log.epoch()), (end, 7), "nothing was written");
    assert!(!log.is_fenced());
    // An append naming an epoch follows the same rules.
    let stale_options = AppendOptions { epoch: Some(6), ..AppendOptions::default() };
    assert!(matches!(
        log.append_records(&[Record::new(b"x", 1)], stale_options),
        Err(Error::StaleEpoch { epoch: 6, current: 7, .. })
    ));
    let newer = AppendOptions { epoch: Some(10), ..AppendOptions::default() };
    log.append_records(&[Record::new(b"x", 1)], newer).unwrap().wait(Durability::Local).unwrap();
    assert_eq!(log.epoch_history().last(), Some(&(10, end)));
    // Frames already here are skipped whatever their epoch, and the history survives a crash.
    log.append_frames(&concat(&frames)).unwrap().wait(Durability::Local).unwrap();
    drop(log);
    disk.crash(Tear::None);
    let log = open(&disk, &committer).unwrap();
    let mut want = leader.epoch_history();
    want.push((10, end));
    assert_eq!(log.epoch_history(), want);
    check_history_covers_batches(&log).unwrap();
    committer.stop();
    leader_committer.stop();
}

#[test]
fn truncate_suffix_drops_the_epochs_it_cuts_away_so_a_follower_accepts_its_new_leader() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    for (epoch, count) in [(1, 10), (2, 10), (3, 10)] {
        log.begin_epoch(epoch).unwrap();
        for i in 0..count {
            log.append(&[format!("{epoch}.{i}").as_bytes()], Durability::None).unwrap();
        }
    }
    assert_eq!(log.epoch_history(), [(1, 0), (2, 10), (3, 20)]);
    log.truncate_suffix(25).unwrap();
    assert_eq!(log.epoch_history(), [(1, 0), (2, 10), (3, 20)], "epoch 3 keeps batches");
    log.truncate_suffix(20).unwrap();
    assert_eq!(log.epoch_history(), [(1, 0), (2, 10)]);
    assert_eq!((log.epoch(), log.last_epoch()), (2, 2));
    // An epoch begun at the end that never wrote goes with a truncation at the end, which
    // removes no record.
    log.begin_epoch(4).unwrap();
    log.truncate_suffix(20).unwrap();
    assert_eq!((log.epoch_history(), log.written_end()), (vec![(1, 0), (2, 10)], 20));
    // Now the leader's epoch-2 batches continue the log.
    log.append_frames(&frame_of(2, 20, b"from the new leader")).unwrap().wait(Durability::Local).unwrap();
    check_history_covers_batches(&log).unwrap();
    log.truncate_suffix(0).unwrap();
    assert_eq!((log.epoch_history(), log.epoch()), (vec![], 0));
    log.begin_epoch(2).unwrap();
    log.append(&[b"again"], Durability::Local).unwrap();
    log.truncate_suffix(0).unwrap();
    log.close().unwrap();
    let log = open(&disk, &committer).unwrap();
    assert_eq!(log.epoch_history(), []);
    committer.stop();
}

#[test]
fn a_failed_history_write_writes_no_batch_of_the_new_epoch_and_fences_the_log() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    log.append_frames(&frame_of(1, 0, b"one")).unwrap().wait(Durability::Local).unwrap();
    // The next sync is that of the history file's new version.
    disk.fail_next(FaultOp::Sync, libc::EIO);
    let mut two_epochs = frame_of(1, 1, b"still one");
    two_epochs.extend_from_slice(&frame_of(2, 2, b"two"));
    assert!(log.append_frames(&two_epochs).is_err());
    assert!(log.is_fenced());
    assert_eq!(log.written_end(), 2, "the batch of epoch 1 was written, the one of epoch 2 was not");
    assert_eq!((log.epoch_history(), log.epoch()), (vec![(1, 0)], 1));
    check_history_covers_batches(&log).unwrap();
    drop(log);
    disk.crash(Tear::AllButOne);
    let log = open(&disk, &committer).unwrap();
    assert_eq!(log.epoch_history(), [(1, 0)]);
    check_history_covers_batches(&log).unwrap();
    committer.stop();
}

#[test]
fn a_truncation_that_recovery_finishes_drops_the_epochs_it_cuts_too() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    for epoch in [1, 2] {
        log.begin_epoch(epoch).unwrap();
        for i in 0..5 {
            log.append(&[format!("{epoch}.{i}").as_bytes()], Durability::Local).unwrap();
        }
    }
    // The truncation is recorded in log.meta (a sync of the temporary file, then of the
    // directory); power fails at the first sync of the history file after it.
    disk.crash_at_sync(disk.sync_points() + 2);
    assert!(log.truncate_suffix(5).is_err());
    drop(log);
    disk.crash(Tear::None);
    let log = open(&disk, &committer).unwrap();
    assert_eq!((log.written_end(), log.epoch_history()), (5, vec![(1, 0)]));
    // So the new leader's batches of epoch 1 continue the log.
    log.append_frames(&frame_of(1, 5, b"from the new leader")).unwrap().wait(Durability::Local).unwrap();
    check_history_covers_batches(&log).unwrap();
    committer.stop();
}

#[test]
fn reset_clears_the_history_and_the_copy_rebuilds_it() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    log.begin_epoch(7).unwrap();
    log.append(&[b"old"], Durability::Local).unwrap();
    log.reset(100).unwrap();
    assert_eq!((log.epoch(), log.epoch_history()), (0, vec![]));
    // The leader's retained batches at 100 are of an older epoch than this log had reached.
    log.append_frames(&frame_of(5, 100, b"copied")).unwrap().wait(Durability::Local).unwrap();
    assert_eq!(log.epoch_history(), [(5, 100)]);
    drop(log);
    disk.crash(Tear::None);
    let log = open(&disk, &committer).unwrap();
    assert_eq!((log.epoch_history(), log.written_end()), (vec![(5, 100)], 101));
    assert!(disk.files().iter().all(|f| !f.to_string_lossy().contains("epochs.reset")), "{:?}", disk.files());
    committer.stop();
}

#[test]
fn a_damaged_history_file_fails_open_naming_the_file_and_verify_reports_it() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    log.begin_epoch(1).unwrap();
    log.append(&[b"a"], Durability::Local).unwrap();
    log.begin_epoch(2).unwrap();
    log.close().unwrap();
    let path = log_dir().join(EPOCHS_FILE);
    disk.flip_bit(&path, 20, 3).unwrap();
    match open(&disk, &committer) {
        Err(Error::Segment(tern_segment::Error::Corrupt { file, pos, .. })) => {
            assert_eq!((file, pos), (path.clone(), 48), "the checksum after two entries fails");
        }
        other => panic!("expected corruption of the epoch history, got {other:?}"),
    }
    let report = tern_wal::verify::verify_log(&disk, log_dir(), &mut |_| {}).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].file, path);
    committer.stop();
}

#[test]
fn verify_reports_a_batch_whose_epoch_the_history_does_not_have() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    log.begin_epoch(1).unwrap();
    log.append(&[b"a"], Durability::Local).unwrap();
    log.begin_epoch(2).unwrap();
    log.append(&[b"b"], Durability::Local).unwrap();
    log.close().unwrap();
    let report = tern_wal::verify::verify_log(&disk, log_dir(), &mut |_| {}).unwrap();
    assert_eq!(report.problems, []);
    // A history that lost its newest entry is behind the data.
    let mut behind = EpochHistory::new();
    behind.record(1, 0).unwrap();
    behind.write(&disk, log_dir()).unwrap();
    let report = tern_wal::verify::verify_log(&disk, log_dir(), &mut |_| {}).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].reason.contains("epoch 2"), "{:?}", report.problems);
    committer.stop();
}

#[test]
fn repair_drops_the_epochs_of_the_batches_it_cuts() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    for epoch in [1, 2] {
        log.begin_epoch(epoch).unwrap();
        for i in 0..5 {
            log.append(&[format!("{epoch}.{i}").as_bytes()], Durability::Local).unwrap();
        }
    }
    log.close().unwrap();
    let mut frames = Vec::new();
    tern_wal::verify::verify_log(&disk, log_dir(), &mut |b| frames.push(b.clone())).unwrap();
    // The first batch of epoch 2 is damaged: the repaired log ends where epoch 2 began, and
    // keeping its entry would refuse the epoch-1 batches a new leader may send from there.
    let first_of_two = frames.iter().find(|b| b.base_offset == 5).unwrap();
    disk.flip_bit(&first_of_two.file, first_of_two.pos + 70, 0).unwrap();
    let repaired = tern_wal::verify::repair_log(&disk, log_dir()).unwrap();
    assert_eq!(repaired.end_offset, 5);
    let log = open(&disk, &committer).unwrap();
    assert_eq!((log.written_end(), log.epoch_history()), (5, vec![(1, 0)]));
    check_history_covers_batches(&log).unwrap();
    committer.stop();
}

// ---- Power loss at every sync point ----

fn journal_options() -> JournalOptions {
    JournalOptions {
        dir: PathBuf::from("/data/journal"),
        file_bytes: tern_wal::journal::JOURNAL_HEADER_BYTES + (64 << 10),
    }
}

/// Opens the committer and the log as the engine does: with the journal, replay first.
fn open_with(disk: &SimDisk, journal: bool) -> tern_wal::Result<(Committer, Log)> {
    let committer = if journal {
        Committer::start_with_journal(Arc::new(disk.clone()), &journal_options())?
    } else {
        sim_committer(disk)
    };
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let opened = Log::open(shared, Path::new("/data/log"), "log", small_options(), committer.clone(), true)
        .and_then(|log| if journal { committer.finish_replay().map(|()| log) } else { Ok(log) });
    match opened {
        Ok(log) => Ok((committer, log)),
        Err(e) => {
            committer.stop();
            Err(e)
        }
    }
}

/// What a workload did before it finished or lost power.
#[derive(Default)]
struct Outcome {
    /// Values sent, by offset.
    sent: Vec<Vec<u8>>,
    /// Offsets below this were acknowledged as durable.
    acked_end: u64,
    /// The newest epoch whose `begin_epoch` returned.
    epoch_begun: u64,
    error: Option<String>,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcome")
            .field("sent", &self.sent.len())
            .field("acked_end", &self.acked_end)
            .field("epoch_begun", &self.epoch_begun)
            .finish()
    }
}

/// A leader's life: batches of epoch 0, then epochs begun with batches of each, an epoch
/// begun twice without a batch between, unsynced batches just before an epoch begins, a
/// suffix truncation inside the newest epoch and one that removes it whole, and a last epoch.
fn leader_workload(disk: &SimDisk, journal: bool, out: &mut Outcome) -> tern_wal::Result<()> {
    let (committer, log) = open_with(disk, journal)?;
    let result = (|| {
        let append = |log: &Log, out: &mut Outcome, durability: Durability| -> tern_wal::Result<()> {
            let offset = log.written_end() as usize;
            let value = value_of(&format!("leader {offset}:"), 90 + offset * 37 % 200);
            out.sent.truncate(offset);
            out.sent.push(value.clone());
            let offsets = log.append(&[&value], durability)?;
            if durability == Durability::Local {
                out.acked_end = offsets.end;
            }
            Ok(())
        };
        for i in 0..6 {
            append(&log, out, if i % 2 == 0 { Durability::None } else { Durability::Local })?;
        }
        let mut seventh = 0;
        for epoch in [1, 2, 4, 5, 7] {
            append(&log, out, Durability::None)?; // begin_epoch must make it durable
            log.begin_epoch(epoch)?;
            out.epoch_begun = epoch;
            out.acked_end = log.written_end();
            seventh = log.written_end();
            if epoch == 4 {
                continue; // epoch 5 replaces it
            }
            for i in 0..5 {
                append(&log, out, if i % 3 == 2 { Durability::Local } else { Durability::None })?;
            }
        }
        // Inside epoch 7, then all of it: the log's epoch moves back to 5. Each may take effect
        // before it returns.
        out.acked_end = out.acked_end.min(seventh + 2);
        log.truncate_suffix(seventh + 2)?;
        out.acked_end = out.acked_end.min(seventh);
        out.epoch_begun = 5;
        log.truncate_suffix(seventh)?;
        append(&log, out, Durability::None)?;
        log.begin_epoch(8)?;
        out.epoch_begun = 8;
        for i in 0..4 {
            append(&log, out, if i % 2 == 1 { Durability::Local } else { Durability::None })?;
        }
        log.close()?;
        out.acked_end = log.written_end();
        Ok(())
    })();
    drop(log);
    committer.stop();
    result
}

/// A follower that was leader of epochs 3 and 6, reset past its end, then takes a copy of its
/// new leader's batches, of epoch 4, at the new start.
fn reset_workload(disk: &SimDisk, journal: bool, out: &mut ResetOutcome) -> tern_wal::Result<()> {
    let (committer, log) = open_with(disk, journal)?;
    let result = (|| {
        for (epoch, count) in [(3, 8), (6, 5)] {
            log.begin_epoch(epoch)?;
            for i in 0..count {
                let value = value_of(&format!("old {epoch}.{i}:"), 120);
                log.append(&[&value], if i % 2 == 0 { Durability::Local } else { Durability::None })?;
            }
        }
        out.reset_to = log.written_end() + 50;
        log.reset(out.reset_to)?;
        out.reset_done = true;
        for i in 0..4 {
            let frame = frame_of(4, out.reset_to + i, format!("copy {i}").as_bytes());
            log.append_frames(&frame)?.wait(if i % 2 == 0 { Durability::Local } else { Durability::None })?;
        }
        log.close()?;
        Ok(())
    })();
    drop(log);
    committer.stop();
    result
}

#[derive(Debug, Default)]
struct ResetOutcome {
    reset_to: u64,
    reset_done: bool,
    error: Option<String>,
}

fn check_reset(disk: &SimDisk, journal: bool, out: &ResetOutcome) -> Result<(), String> {
    let (committer, log) = open_with(disk, journal).map_err(|e| format!("recovery failed: {e}"))?;
    let result = (|| {
        check_history_covers_batches(&log)?;
        let history = log.epoch_history();
        if log.start_offset() == out.reset_to && out.reset_to > 0 {
            // The reset took effect: nothing of the old history may remain, or the copy of the
            // new leader's older epoch would be refused.
            if history.iter().any(|(epoch, start)| *epoch != 4 || *start != out.reset_to) {
                return Err(format!("history {history:?} after the reset to {}", out.reset_to));
            }
            let end = log.written_end();
            let more = log.append_frames(&frame_of(4, end, b"more"));
            more.and_then(|appended| appended.wait(Durability::Local))
                .map_err(|e| format!("the copy's next batch is refused: {e}"))?;
        } else if out.reset_done {
            return Err(format!("the reset returned, but the log starts at {}", log.start_offset()));
        } else if log.written_end() > 8 && history.last().is_none_or(|(epoch, _)| *epoch != 6) {
            return Err(format!("the old log ends at {} with history {history:?}", log.written_end()));
        }
        let report = tern_wal::verify::verify_log(disk, log_dir(), &mut |_| {}).map_err(|e| e.to_string())?;
        if !report.problems.is_empty() {
            return Err(format!("verify after recovery: {:?}", report.problems));
        }
        if disk.files().iter().any(|f| f.to_string_lossy().contains("epochs.reset")) {
            return Err(format!("a reset marker is left: {:?}", disk.files()));
        }
        Ok(())
    })();
    drop(log);
    committer.stop();
    result
}

/// A follower's life: frames of a leader applied in calls that cross epochs, some synced.
fn follower_workload(
    disk: &SimDisk,
    journal: bool,
    frames: &[tern_wal::BatchRef],
    out: &mut Outcome,
) -> tern_wal::Result<()> {
    let (committer, log) = open_with(disk, journal)?;
    let result = (|| {
        // Calls of 1, 2, 3, 4... frames; every other one waits for durability.
        let (mut at, mut size, mut call) = (0, 1, 0);
        while at < frames.len() {
            let chunk = &frames[at..(at + size).min(frames.len())];
            let offsets = log.append_frames(&concat(chunk))?;
            let durability = if call % 2 == 1 { Durability::Local } else { Durability::None };
            let offsets = offsets.wait(durability)?;
            if durability == Durability::Local {
                out.acked_end = offsets.end;
            }
            at += chunk.len();
            size += 1;
            call += 1;
        }
        log.close()?;
        out.acked_end = log.written_end();
        Ok(())
    })();
    drop(log);
    committer.stop();
    result
}

fn check_leader(disk: &SimDisk, journal: bool, out: &Outcome) -> Result<(), String> {
    let (committer, log) = open_with(disk, journal).map_err(|e| format!("recovery failed: {e}"))?;
    let result = (|| {
        check_history_covers_batches(&log)?;
        let got = try_contents(&log, Visibility::Written).map_err(|e| format!("read: {e}"))?;
        if (got.len() as u64) < out.acked_end {
            return Err(format!("{} records, {} acknowledged", got.len(), out.acked_end));
        }
        if let Some((offset, _)) = got.iter().find(|(offset, value)| out.sent.get(*offset as usize) != Some(value)) {
            return Err(format!("record at {offset} was never appended there"));
        }
        if log.epoch() < out.epoch_begun {
            return Err(format!("epoch {} was begun, the log reopened at epoch {}", out.epoch_begun, log.epoch()));
        }
        // The recovered log takes appends stamped with its epoch, and verify agrees.
        log.append(&[b"after"], Durability::Local).map_err(|e| format!("append: {e}"))?;
        check_history_covers_batches(&log)?;
        let report = tern_wal::verify::verify_log(disk, log_dir(), &mut |_| {}).map_err(|e| e.to_string())?;
        if !report.problems.is_empty() {
            return Err(format!("verify after recovery: {:?}", report.problems));
        }
        Ok(())
    })();
    drop(log);
    committer.stop();
    result
}

fn check_follower(
    disk: &SimDisk,
    journal: bool,
    leader: &Log,
    frames: &[tern_wal::BatchRef],
    out: &Outcome,
) -> Result<(), String> {
    let (committer, log) = open_with(disk, journal).map_err(|e| format!("recovery failed: {e}"))?;
    let result = (|| {
        check_history_covers_batches(&log)?;
        let end = log.written_end();
        if end < out.acked_end {
            return Err(format!("the log ends at {end}, {} was acknowledged", out.acked_end));
        }
        let got = batches(&log).map_err(|e| e.to_string())?;
        let want: Vec<(u64, u64, u64)> =
            frames.iter().map(|b| (b.base_offset, b.end_offset, b.epoch)).take_while(|b| b.0 < end).collect();
        if got != want {
            return Err(format!("batches {got:?}, the leader's are {want:?}"));
        }
        // The history is the leader's, up to the end: every epoch with a batch here, and
        // perhaps one more whose first batch power took.
        let history = log.epoch_history();
        let leader_history = leader.epoch_history();
        let below: Vec<(u64, u64)> = leader_history.iter().copied().filter(|(_, start)| *start < end).collect();
        let at_end: Vec<(u64, u64)> = leader_history.iter().copied().filter(|(_, start)| *start <= end).collect();
        if history != below && history != at_end {
            return Err(format!("history {history:?}, the leader's is {leader_history:?}, the end {end}"));
        }
        // The rest of the frames apply on top.
        let rest: Vec<tern_wal::BatchRef> = frames.iter().filter(|b| b.end_offset > end).cloned().collect();
        let applied = log.append_frames(&concat(&rest)).and_then(|appended| appended.wait(Durability::Local));
        applied.map_err(|e| format!("apply the rest: {e}"))?;
        if log.epoch_history() != leader_history {
            return Err(format!("history {:?} after applying the rest", log.epoch_history()));
        }
        check_history_covers_batches(&log)?;
        Ok(())
    })();
    drop(log);
    committer.stop();
    result
}

/// Runs `run` once to count its sync points, then again with power lost at each of them and
/// each kind of tear, and checks what reopens.
fn sweep<O: std::fmt::Debug>(
    what: &str,
    run: &dyn Fn(&SimDisk) -> (O, Option<String>),
    check: &dyn Fn(&SimDisk, &O) -> Result<(), String>,
) {
    let dry_run = SimDisk::new();
    let (_, error) = run(&dry_run);
    assert_eq!(error, None, "{what}: the workload runs through without faults");
    let sync_points = dry_run.sync_points();
    for crash_at in 0..=sync_points {
        for tear in [Tear::None, Tear::Prefix(1), Tear::Half, Tear::AllButOne] {
            let disk = SimDisk::new();
            disk.crash_at_sync(crash_at);
            let (outcome, error) = run(&disk);
            disk.crash(tear);
            if let Err(broken) = check(&disk, &outcome) {
                panic!(
                    "{what}: power loss at sync point {crash_at} of {sync_points} with {tear:?} after '{}' \
                     ({outcome:?}): {broken}",
                    error.as_deref().unwrap_or("the workload finished")
                );
            }
        }
    }
    eprintln!("{what}: {sync_points} sync points");
}

#[test]
fn power_loss_during_begin_epoch_and_truncation_never_leaves_the_history_behind_the_data() {
    for journal in [false, true] {
        let run = |disk: &SimDisk| {
            let mut out = Outcome::default();
            out.error = leader_workload(disk, journal, &mut out).err().map(|e| e.to_string());
            let error = out.error.clone();
            (out, error)
        };
        let what = format!("begin_epoch, journal: {journal}");
        sweep(&what, &run, &|disk, out| check_leader(disk, journal, out));
    }
}

#[test]
fn power_loss_while_applying_frames_across_epochs_never_leaves_the_history_behind_the_data() {
    let (_leader_disk, leader_committer, leader, frames) =
        leader_frames(&[(0, 2), (1, 3), (2, 1), (3, 4), (6, 2), (7, 1), (9, 3)]);
    for journal in [false, true] {
        let run = |disk: &SimDisk| {
            let mut out = Outcome::default();
            out.error = follower_workload(disk, journal, &frames, &mut out).err().map(|e| e.to_string());
            let error = out.error.clone();
            (out, error)
        };
        let what = format!("append_frames, journal: {journal}");
        sweep(&what, &run, &|disk, out| check_follower(disk, journal, &leader, &frames, out));
    }
    leader_committer.stop();
}

#[test]
fn power_loss_during_a_reset_clears_the_history_exactly_when_the_reset_takes_effect() {
    for journal in [false, true] {
        let run = |disk: &SimDisk| {
            let mut out = ResetOutcome::default();
            out.error = reset_workload(disk, journal, &mut out).err().map(|e| e.to_string());
            let error = out.error.clone();
            (out, error)
        };
        let what = format!("reset, journal: {journal}");
        sweep(&what, &run, &|disk, out| check_reset(disk, journal, out));
    }
}
