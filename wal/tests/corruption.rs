//! Damaged bytes on disk (media errors): found by `verify`, never returned as data by reads,
//! and an error naming file and byte position when recovery depends on them.
//!
//! Randomized tests print their seed; `TERN_SEED=0x..` replays one and `TERN_CORRUPTION_TRIALS`
//! runs more trials.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rand::seq::SliceRandom;
use rand::Rng;
use tern_segment::sim::SimDisk;
use tern_segment::Disk;
use tern_wal::verify::{verify_log, BatchInfo};
use tern_wal::{Durability, Error, Visibility};

fn trials(default: usize) -> usize {
    std::env::var("TERN_CORRUPTION_TRIALS").ok().and_then(|t| t.parse().ok()).unwrap_or(default)
}

/// Writes a log over several segments and returns every value by offset. Every seventh batch
/// is one 60-byte record: a frame body of exactly 128 bytes, whose length field one bit flip
/// turns into zero (the end-of-data marker).
fn write_log(disk: &SimDisk, durability: Durability, close: bool) -> Vec<Vec<u8>> {
    let committer = sim_committer(disk);
    let log = open(disk, &committer).unwrap();
    let mut layout = rng(0x7e57);
    let mut values = Vec::new();
    for i in 0..80 {
        let sizes: Vec<usize> = if i % 7 == 3 {
            vec![60]
        } else {
            (0..layout.gen_range(1..=3)).map(|_| layout.gen_range(0..300)).collect()
        };
        let batch: Vec<Vec<u8>> =
            sizes.iter().enumerate().map(|(j, len)| value_of(&format!("batch {i} record {j}:"), *len)).collect();
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        log.append(&refs, durability).unwrap();
        values.extend(batch);
    }
    assert!(log.segments().len() >= 4, "the log must span sealed segments and an active one");
    if close {
        log.close().unwrap();
    }
    // Stopping waits for the committer to finish the checkpoint of its last sync.
    committer.stop();
    values
}

/// Every intact frame as `verify` reports it, checking that it finds nothing wrong.
fn frames_of_intact_log(disk: &SimDisk) -> Vec<BatchInfo> {
    let mut frames = Vec::new();
    let report = verify_log(disk, log_dir(), &mut |b| frames.push(b.clone())).unwrap();
    assert!(report.problems.is_empty() && report.torn_tail.is_none(), "undamaged log: {report:?}");
    assert_eq!(report.batch_count, frames.len() as u64);
    frames
}

/// A segment file that is not the last one.
fn is_sealed(frames: &[BatchInfo], file: &Path) -> bool {
    frames.last().is_some_and(|last| last.file != file)
}

/// Flips one random bit inside `frame` and returns the byte position.
fn damage(disk: &SimDisk, frame: &BatchInfo, rng: &mut impl Rng) -> (u64, u8) {
    let pos = frame.pos + rng.gen_range(0..frame.len_bytes);
    let bit = rng.gen_range(0..8);
    disk.flip_bit(&frame.file, pos, bit).unwrap();
    (pos, bit)
}

fn corrupt_at(err: &Error) -> Option<(PathBuf, u64)> {
    match err {
        Error::Segment(tern_segment::Error::Corrupt { file, pos, .. }) => Some((file.clone(), *pos)),
        _ => None,
    }
}

/// Where the flip inside `frame` landed, relative to the frame's first byte.
fn flip_in(flips: &[(PathBuf, u64, (u64, u8))], frame: &BatchInfo) -> Option<u64> {
    flips.iter().find(|(file, pos, _)| *file == frame.file && *pos == frame.pos).map(|(_, _, (at, _))| at - frame.pos)
}

/// True when the start of the damaged frame `frames[index]` can be found from intact bytes:
/// it is the first frame of its segment, or follows an intact frame, or follows a damaged
/// frame that can itself be found and whose length field is intact, while its own length
/// field and batch header (the bytes that say "a frame starts here") are intact.
fn findable(frames: &[BatchInfo], flips: &[(PathBuf, u64, (u64, u8))], index: usize) -> bool {
    let frame = &frames[index];
    let Some(previous) = index.checked_sub(1).map(|i| &frames[i]).filter(|p| p.file == frame.file) else {
        return true;
    };
    let Some(previous_flip) = flip_in(flips, previous) else { return true };
    let length_field = 0..4;
    let header_intact = flip_in(flips, frame).is_none_or(|at| at >= 64 || (4..8).contains(&at));
    !length_field.contains(&previous_flip) && header_intact && findable(frames, flips, index - 1)
}

#[test]
fn verify_finds_every_damaged_frame_and_reads_never_return_damaged_bytes() {
    let seed = seed("verify_finds_every_damaged_frame_and_reads_never_return_damaged_bytes");
    let mut rng = rng(seed);
    for trial in 0..trials(24) {
        let disk = SimDisk::new();
        let values = write_log(&disk, Durability::None, true);
        let frames = frames_of_intact_log(&disk);
        // Damage a few frames; every other trial, one of them in the active segment.
        let count = rng.gen_range(1..=4);
        let mut damaged: Vec<&BatchInfo> = frames.choose_multiple(&mut rng, count).collect();
        if trial % 2 == 0 {
            let active: Vec<&BatchInfo> = frames.iter().filter(|f| !is_sealed(&frames, &f.file)).collect();
            let pick = active.choose(&mut rng).expect("the active segment holds frames");
            if !damaged.contains(pick) {
                damaged.push(pick);
            }
        }
        let flips: Vec<_> = damaged.iter().map(|f| (f.file.clone(), f.pos, damage(&disk, f, &mut rng))).collect();
        let context = format!("seed {seed:#x} trial {trial}, flipped (file, frame, (byte, bit)) {flips:?}");
        let is_damaged = |file: &Path, pos: u64| damaged.iter().any(|d| d.file == file && d.pos == pos);

        let mut intact = Vec::new();
        let report = verify_log(&disk, log_dir(), &mut |b| intact.push(b.clone())).unwrap();
        // Verify vouches for exactly the frames that were not damaged.
        let undamaged: Vec<&BatchInfo> = frames.iter().filter(|f| !is_damaged(&f.file, f.pos)).collect();
        assert_eq!(intact.iter().collect::<Vec<_>>(), undamaged, "{context}: intact frames");
        for problem in &report.problems {
            assert!(
                is_damaged(&problem.file, problem.pos),
                "{context}: problem where nothing was damaged: {problem:?}"
            );
        }
        for (index, frame) in frames.iter().enumerate() {
            let Some(flip) = flip_in(&flips, frame) else { continue };
            let reported_here = report.problems.iter().any(|p| p.file == frame.file && p.pos == frame.pos);
            if findable(&frames, &flips, index) {
                assert!(
                    reported_here,
                    "{context}: no problem reported for the frame at {} byte {} (flip at {flip}): {:?}",
                    frame.file.display(),
                    frame.pos,
                    report.problems
                );
            } else {
                // Its start is lost with the damage before it: it must lie in the damaged
                // stretch that verify reports from an earlier problem in the same file on.
                let covered = report.problems.iter().any(|p| {
                    p.file == frame.file
                        && p.pos < frame.pos
                        && !intact.iter().any(|b| b.file == frame.file && p.pos < b.pos && b.pos < frame.pos)
                });
                assert!(
                    covered || reported_here,
                    "{context}: the frame at byte {} is in no damaged stretch",
                    frame.pos
                );
            }
        }
        assert_eq!(report.torn_tail, None, "{context}: damage in a cleanly closed log excused as a torn tail");

        // Reads return the written bytes or an error at a damaged frame, never other bytes.
        let committer = sim_committer(&disk);
        let log = match open(&disk, &committer) {
            Ok(log) => log,
            Err(e) => {
                let at = corrupt_at(&e).unwrap_or_else(|| panic!("{context}: open failed with {e}"));
                assert!(is_damaged(&at.0, at.1), "{context}: open blamed an undamaged place: {e}");
                committer.stop();
                continue;
            }
        };
        let check = |from: u64, limit: usize| {
            let reader = log.read(from, Visibility::Written).unwrap();
            for (i, item) in reader.take(limit).enumerate() {
                match item {
                    Ok(record) => {
                        assert_eq!(record.offset, from + i as u64, "{context}: offsets not dense");
                        assert_eq!(
                            record.value.as_ref(),
                            values[record.offset as usize].as_slice(),
                            "{context}: record {} read back with other bytes",
                            record.offset
                        );
                    }
                    Err(e) => {
                        let at = corrupt_at(&e).unwrap_or_else(|| panic!("{context}: read from {from}: {e}"));
                        assert!(is_damaged(&at.0, at.1), "{context}: read from {from} blamed {e}");
                        return;
                    }
                }
            }
        };
        check(log.start_offset(), usize::MAX);
        for from in log.start_offset()..log.written_end() {
            check(from, 1);
        }
        committer.stop();
    }
}

#[test]
fn opening_a_log_with_a_damaged_sealed_segment_without_index_names_file_and_position() {
    let seed = seed("opening_a_log_with_a_damaged_sealed_segment_without_index_names_file_and_position");
    let mut rng = rng(seed);
    for trial in 0..trials(24) {
        let disk = SimDisk::new();
        write_log(&disk, Durability::None, true);
        let frames = frames_of_intact_log(&disk);
        let sealed: Vec<&BatchInfo> = frames.iter().filter(|f| is_sealed(&frames, &f.file)).collect();
        // Every fourth trial damages a length field to zero, the end-of-data marker; the
        // frames after it must not be taken for free space.
        let (frame, flip) = if trial % 4 == 0 {
            let frame =
                *sealed.iter().copied().filter(|f| f.len_bytes == 136).collect::<Vec<_>>().choose(&mut rng).unwrap();
            disk.flip_bit(&frame.file, frame.pos, 7).unwrap();
            (frame, (frame.pos, 7))
        } else {
            let frame = *sealed.choose(&mut rng).unwrap();
            (frame, damage(&disk, frame, &mut rng))
        };
        // Without its index file, recovery must verify the sealed segment frame by frame.
        disk.remove(&frame.file.with_extension("idx")).unwrap();
        let context = format!("seed {seed:#x} trial {trial}, flipped (byte, bit) {flip:?}");
        let committer = sim_committer(&disk);
        let err = open(&disk, &committer).expect_err(&format!("{context}: opened a log with damaged durable data"));
        assert_eq!(
            corrupt_at(&err),
            Some((frame.file.clone(), frame.pos)),
            "{context}: expected the frame at {} byte {}, got: {err}",
            frame.file.display(),
            frame.pos
        );
        let message = err.to_string();
        assert!(message.contains(&*frame.file.to_string_lossy()) && message.contains(&format!("byte {}", frame.pos)));
        committer.stop();
    }
}

#[test]
fn opening_a_log_with_a_damaged_frame_before_the_checkpoint_names_file_and_position() {
    let seed = seed("opening_a_log_with_a_damaged_frame_before_the_checkpoint_names_file_and_position");
    let mut rng = rng(seed);
    for trial in 0..trials(24) {
        let disk = SimDisk::new();
        // Every append synced, then the process dies: the checkpoint vouches for every frame
        // of the active segment, so none of them may be taken for a torn tail.
        write_log(&disk, Durability::Local, false);
        let frames = frames_of_intact_log(&disk);
        let active: Vec<&BatchInfo> = frames.iter().filter(|f| !is_sealed(&frames, &f.file)).collect();
        let frame = if trial % 4 == 0 {
            let frame =
                *active.iter().copied().filter(|f| f.len_bytes == 136).collect::<Vec<_>>().choose(&mut rng).unwrap();
            disk.flip_bit(&frame.file, frame.pos, 7).unwrap();
            frame
        } else {
            let frame = *active.choose(&mut rng).unwrap();
            damage(&disk, frame, &mut rng);
            frame
        };
        let context = format!("seed {seed:#x} trial {trial}");
        let committer = sim_committer(&disk);
        let err = open(&disk, &committer).expect_err(&format!("{context}: opened a log with damaged durable data"));
        assert_eq!(
            corrupt_at(&err),
            Some((frame.file.clone(), frame.pos)),
            "{context}: expected the frame at {} byte {}, got: {err}",
            frame.file.display(),
            frame.pos
        );
        committer.stop();
    }
}

/// Bits flipped anywhere (headers, index files, meta, checkpoint, free space) never make open,
/// read or verify panic, and never make a read return bytes that were not written.
#[test]
fn damage_anywhere_never_panics_and_never_returns_other_bytes() {
    let seed = seed("damage_anywhere_never_panics_and_never_returns_other_bytes");
    let mut rng = rng(seed);
    for trial in 0..trials(48) {
        let disk = SimDisk::new();
        let values = write_log(&disk, Durability::Local, trial % 2 == 0);
        let files = disk.files();
        let mut flips = Vec::new();
        for _ in 0..rng.gen_range(1..=3) {
            let file = files.choose(&mut rng).unwrap();
            let len_bytes = disk.file_len(file).unwrap();
            if len_bytes == 0 {
                continue;
            }
            // Half the flips land in the first bytes of the file, where headers are.
            let pos = if rng.gen_bool(0.5) { rng.gen_range(0..len_bytes.min(64)) } else { rng.gen_range(0..len_bytes) };
            let bit = rng.gen_range(0..8);
            disk.flip_bit(file, pos, bit).unwrap();
            flips.push((file.clone(), pos, bit));
        }
        let context = format!("seed {seed:#x} trial {trial}, flipped {flips:?}");
        let _ = verify_log(&disk, log_dir(), &mut |_| {});
        let committer = sim_committer(&disk);
        if let Ok(log) = open(&disk, &committer) {
            let start = log.start_offset();
            if let Ok(reader) = log.read(start, Visibility::Written) {
                for (i, item) in reader.enumerate() {
                    let Ok(record) = item else { break };
                    assert_eq!(record.offset, start + i as u64, "{context}: offsets not dense");
                    assert_eq!(
                        Some(&record.value.to_vec()),
                        values.get(record.offset as usize),
                        "{context}: record {} read back with other bytes",
                        record.offset
                    );
                }
            }
        }
        committer.stop();
    }
}
