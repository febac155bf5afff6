//! Read-only checks of a log directory: every frame of every segment, the index files, the
//! meta file, the epoch history (it decodes, and every batch carries the epoch it says is in
//! effect at the batch's offset) and the continuity of offsets. Used by `tern verify` and
//! `tern dump`.

use std::path::{Path, PathBuf};

use tern_segment::segment::{parse_file_name, segment_file_name, SEGMENT_EXT, SEGMENT_HEADER_BYTES};
use tern_segment::{frame, Disk, Segment};

use crate::epochs::{EpochHistory, EPOCHS_FILE};
use crate::error::{Error, Result};
use crate::meta::{CheckpointWriter, Meta, NO_TRUNCATION};

/// A damaged place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The damaged file.
    pub file: PathBuf,
    /// Byte position of the damaged structure.
    pub pos: u64,
    /// What is wrong.
    pub reason: String,
}

/// One batch as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchInfo {
    /// Segment file.
    pub file: PathBuf,
    /// Byte position of the frame.
    pub pos: u64,
    /// First offset.
    pub base_offset: u64,
    /// One past the last offset.
    pub end_offset: u64,
    /// Epoch.
    pub epoch: u64,
    /// Frame length in bytes.
    pub len_bytes: u64,
    /// Stored checksum.
    pub crc: u32,
}

/// What verifying one log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Damaged places, in file and position order.
    pub problems: Vec<Problem>,
    /// Bytes after the last checkpointed durable point that do not form frames: left by a
    /// crash, never acknowledged, cut at the next open. Not damage.
    pub torn_tail: Option<(PathBuf, u64)>,
    /// Batches found intact.
    pub batch_count: u64,
    /// Records in those batches.
    pub record_count: u64,
}

/// Checks every frame of the log in `dir` without changing anything, calling `on_batch` for
/// each intact batch in order.
///
/// # Errors
/// Only when the directory cannot be listed; everything found damaged is in the report.
pub fn verify_log(disk: &dyn Disk, dir: &Path, on_batch: &mut dyn FnMut(&BatchInfo)) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let names = disk.list(dir).map_err(|e| Error::io(dir, e))?;
    let problem = |report: &mut VerifyReport, file: &Path, pos: u64, reason: String| {
        report.problems.push(Problem { file: file.to_path_buf(), pos, reason });
    };
    let meta = match Meta::read(disk, dir) {
        Ok(Some(meta)) => Some(meta),
        Ok(None) => {
            let bases: Vec<u64> = names.iter().filter_map(|n| parse_file_name(n, SEGMENT_EXT)).collect();
            if bases.is_empty() || (bases == [0] && crate::log::creation_interrupted(disk, dir, 4096).unwrap_or(false))
            {
                // A creation that stopped part way (or never began): it holds nothing, and
                // opening the log creates it afresh (FORMAT.md "Log meta file").
                return Ok(report);
            }
            problem(&mut report, &dir.join(crate::meta::META_FILE), 0, "meta file missing".into());
            None
        }
        Err(e) => {
            problem(&mut report, &dir.join(crate::meta::META_FILE), 0, e.to_string());
            None
        }
    };
    let history = match EpochHistory::read(disk, dir) {
        Ok(history) => Some(history),
        Err(e) => {
            let pos = match &e {
                Error::Segment(tern_segment::Error::Corrupt { pos, .. }) => *pos,
                _ => 0,
            };
            problem(&mut report, &dir.join(EPOCHS_FILE), pos, e.to_string());
            None
        }
    };
    // Batches at or after a suffix truncation in progress are gone once the log opens, and
    // their epochs may already be gone from the history.
    let checked_end = meta.map_or(NO_TRUNCATION, |m| m.truncate_to);
    let mut epoch_problems = Vec::new();
    let mut on_batch = |batch: &BatchInfo| {
        if let Some(history) = history.as_ref().filter(|_| batch.base_offset < checked_end) {
            let in_effect = history.epoch_at(batch.base_offset);
            if in_effect != batch.epoch {
                epoch_problems.push(Problem {
                    file: batch.file.clone(),
                    pos: batch.pos,
                    reason: format!(
                        "batch at offset {} has epoch {}, but the epoch history says epoch {in_effect} is in \
                         effect there",
                        batch.base_offset, batch.epoch
                    ),
                });
            }
        }
        on_batch(batch);
    };
    let on_batch: &mut dyn FnMut(&BatchInfo) = &mut on_batch;
    let checkpoint = meta.and_then(|m| CheckpointWriter::read(disk, dir, m.generation).ok().flatten());
    let claim = meta.and_then(|m| crate::log::durable_claim(&m, checkpoint));
    let mut bases: Vec<u64> = names.iter().filter_map(|n| parse_file_name(n, SEGMENT_EXT)).collect();
    bases.sort_unstable();
    // Recovery's plan: segments below the start, past a pending cut or not yet recorded by the
    // meta are not the log (the next open removes them); a segment the meta names that is not
    // there is damage.
    if let Some(meta) = meta {
        let plan = crate::log::plan_segments(&bases, &meta);
        if let Some((base, why)) = plan.missing {
            problem(&mut report, &dir.join(segment_file_name(base)), 0, why.to_owned());
        }
        for &base in &plan.unrecorded {
            let path = dir.join(segment_file_name(base));
            let holds_frames = !crate::log::blank_header(disk, &path).unwrap_or(false)
                && Segment::open(disk, &path, crate::log::INDEX_INTERVAL_BYTES_DEFAULT)
                    .and_then(|s| s.scan(SEGMENT_HEADER_BYTES, base, None, true))
                    .is_ok_and(|r| r.frame_count > 0);
            if holds_frames {
                let reason = "a segment past the newest one log.meta records holds frames".to_owned();
                problem(&mut report, &path, SEGMENT_HEADER_BYTES, reason);
            }
        }
        bases = plan.kept.into_iter().filter(|base| bases.contains(base)).collect();
    }
    if let Some(claim) = claim.filter(|c| bases.last().is_some_and(|last| c.segment_base > *last)) {
        let path = dir.join(segment_file_name(claim.segment_base));
        problem(&mut report, &path, 0, "a synced segment is missing".into());
    }
    // A last segment without a header holds nothing when no claim reaches into it: the next
    // open creates it afresh.
    if let Some(&last) = bases.last() {
        let blank = crate::log::blank_header(disk, &dir.join(segment_file_name(last))).unwrap_or(false);
        if blank && claim.is_none_or(|c| c.end <= last) && bases.len() > 1 {
            bases.pop();
        }
    }
    let mut expected: Option<u64> = None;
    let last_base = bases.last().copied();
    for base in bases {
        let path = dir.join(segment_file_name(base));
        let segment = match Segment::open(disk, &path, crate::log::INDEX_INTERVAL_BYTES_DEFAULT) {
            Ok(s) => s,
            Err(e) => {
                let pos = if let tern_segment::Error::Corrupt { pos, .. } = &e { *pos } else { 0 };
                problem(&mut report, &path, pos, e.to_string());
                expected = None;
                continue;
            }
        };
        if let Some(expected) = expected.filter(|e| *e != base) {
            problem(&mut report, &path, 0, format!("segment starts at offset {base}, expected {expected}"));
        }
        let is_last = Some(base) == last_base;
        // Only the last segment may end in a torn tail, and only past the durable claim.
        let durable_pos = match claim {
            Some(c) if is_last && c.segment_base == base => c.pos,
            _ if is_last => SEGMENT_HEADER_BYTES,
            _ => u64::MAX,
        };
        let (mut pos, mut offset) = (SEGMENT_HEADER_BYTES, base);
        let mut scanned_end = None;
        loop {
            let scan = match segment.scan(pos, offset, None, true) {
                Ok(s) => s,
                Err(e) => {
                    problem(&mut report, &path, pos, e.to_string());
                    break;
                }
            };
            emit_batches(&segment, pos, scan.end_pos, &mut report, on_batch);
            let Some((bad_pos, reason)) = scan.problem else {
                // A clean end: only zeros may follow.
                let rest = segment.bytes(scan.end_pos, segment.size_bytes()).unwrap_or_default();
                if let Some(first) = rest.iter().position(|b| *b != 0) {
                    if scan.end_pos >= durable_pos {
                        report.torn_tail = Some((path.clone(), scan.end_pos));
                    } else {
                        let at = scan.end_pos;
                        problem(
                            &mut report,
                            &path,
                            at,
                            format!("zero length, but data follows at byte {}", at + first as u64),
                        );
                        if let Ok(Some((next_pos, next_offset))) = segment.resync(at + 1) {
                            (pos, offset) = (next_pos, next_offset);
                            continue;
                        }
                    }
                }
                scanned_end = Some((scan.end_pos, scan.end_offset));
                expected = Some(scan.end_offset);
                break;
            };
            if bad_pos >= durable_pos {
                report.torn_tail = Some((path.clone(), bad_pos));
                scanned_end = Some((bad_pos, scan.end_offset));
                expected = Some(scan.end_offset);
                break;
            }
            problem(&mut report, &path, bad_pos, reason.to_string());
            match next_after_damage(&segment, bad_pos) {
                Some((next_pos, next_offset)) => (pos, offset) = (next_pos, next_offset),
                None => {
                    expected = None;
                    break;
                }
            }
        }
        check_index(disk, &segment, is_last, scanned_end, &mut report);
    }
    report.problems.append(&mut epoch_problems);
    Ok(report)
}

/// Where to go on after the damaged frame at `bad_pos`: the position and claimed base offset
/// of the next frame to check, if any.
///
/// Resyncing alone finds the next *intact* frame, skipping every damaged frame before it
/// unreported. So when the damaged frame's length field leads to a frame header before that
/// intact frame, that frame is checked next, and each damaged frame of a run is reported at
/// its own position. A damaged length field may point anywhere, so it is never followed past
/// the first intact frame: the true next frame cannot lie beyond that one.
fn next_after_damage(segment: &Segment, bad_pos: u64) -> Option<(u64, u64)> {
    let intact = segment.resync(bad_pos + 1).ok().flatten();
    let declared = (|| {
        let bytes = segment.bytes(bad_pos, segment.size_bytes()).ok()?;
        let body_len = usize::try_from(frame::peek_body_len(&bytes)?).ok()?;
        let next_rel = frame::FRAME_PREFIX_BYTES.checked_add(body_len)?;
        let (header, _) = frame::decode_header_unverified(bytes.get(next_rel..)?).ok()??;
        Some((bad_pos + next_rel as u64, header.base_offset))
    })();
    match (declared, intact) {
        (Some(declared), Some(intact)) if declared.0 < intact.0 => Some(declared),
        (Some(declared), None) => Some(declared),
        (_, intact) => intact,
    }
}

fn emit_batches(
    segment: &Segment,
    from_pos: u64,
    to_pos: u64,
    report: &mut VerifyReport,
    on_batch: &mut dyn FnMut(&BatchInfo),
) {
    let Ok(bytes) = segment.bytes(from_pos, to_pos) else { return };
    let mut rel = 0usize;
    while let Ok(Some(f)) = frame::decode(bytes.get(rel..).unwrap_or_default()) {
        report.batch_count += 1;
        report.record_count += u64::from(f.header.record_count);
        on_batch(&BatchInfo {
            file: segment.path().to_path_buf(),
            pos: from_pos + rel as u64,
            base_offset: f.header.base_offset,
            end_offset: f.header.end_offset(),
            epoch: f.header.epoch,
            len_bytes: f.frame_len as u64,
            crc: f.crc,
        });
        rel += f.frame_len;
    }
}

fn check_index(
    disk: &dyn Disk,
    segment: &Segment,
    is_last: bool,
    scanned: Option<(u64, u64)>,
    report: &mut VerifyReport,
) {
    let path = segment.index_path();
    let index = match segment.read_index(disk) {
        Ok(Some(index)) => index,
        Ok(None) => return,
        Err(e) => {
            report.problems.push(Problem { file: path, pos: 0, reason: e.to_string() });
            return;
        }
    };
    let Some((end_pos, end_offset)) = scanned else { return };
    // The last segment's index is a hint from the last close; later appends may follow it.
    let consistent = if is_last {
        index.end_pos <= end_pos && index.end_offset <= end_offset
    } else {
        index.end_pos == end_pos && index.end_offset == end_offset
    };
    if !consistent {
        let reason = format!(
            "index says the segment ends at byte {} / offset {}, the frames end at byte {end_pos} / offset {end_offset}",
            index.end_pos, index.end_offset
        );
        report.problems.push(Problem { file: path, pos: 0, reason });
    }
}

/// What [`repair_log`] cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// The first damaged place, where the log now ends; `None` when nothing was damaged.
    pub cut_at: Option<Problem>,
    /// The log's end offset after the repair.
    pub end_offset: u64,
    /// Records removed with whole later segments (records after the damage inside the damaged
    /// segment cannot be counted).
    pub removed_records_min: u64,
}

/// Cuts the log in `dir` at its first damaged frame: that frame and everything after it
/// (later frames, later segments) are removed, everything before it is kept. Only for an
/// operator who asked for it: the removed records are gone. The log must not be open.
///
/// # Errors
/// I/O errors; a damaged segment header, meta file or epoch history, which this cannot
/// repair.
pub fn repair_log(disk: &dyn Disk, dir: &Path) -> Result<Repaired> {
    let names = disk.list(dir).map_err(|e| Error::io(dir, e))?;
    let mut bases: Vec<u64> = names.iter().filter_map(|n| parse_file_name(n, SEGMENT_EXT)).collect();
    bases.sort_unstable();
    let Some(mut meta) = Meta::read(disk, dir)? else {
        return Err(Error::Invalid(format!("{} has no log.meta; not a log directory", dir.display())));
    };
    // Read before anything changes, so that a damaged history stops the repair early.
    let mut history = EpochHistory::read(disk, dir)?;
    let interval = crate::log::INDEX_INTERVAL_BYTES_DEFAULT;
    let mut segments = Vec::with_capacity(bases.len());
    for base in &bases {
        segments.push(Segment::open(disk, &dir.join(segment_file_name(*base)), interval)?);
    }
    let mut cut: Option<(usize, u64, u64, Problem)> = None;
    let mut expected = segments.first().map_or(0, Segment::base_offset);
    for (i, segment) in segments.iter().enumerate() {
        if segment.base_offset() != expected {
            let problem = Problem {
                file: segment.path().to_path_buf(),
                pos: 0,
                reason: format!("segment starts at offset {}, expected {expected}", segment.base_offset()),
            };
            cut = Some((i, SEGMENT_HEADER_BYTES, segment.base_offset(), problem));
            break;
        }
        let scan = segment.scan(SEGMENT_HEADER_BYTES, segment.base_offset(), None, true)?;
        let rest = segment.bytes(scan.end_pos, segment.size_bytes())?;
        let trailing = rest.iter().any(|b| *b != 0);
        if let Some((pos, reason)) = scan.problem {
            let problem = Problem { file: segment.path().to_path_buf(), pos, reason: reason.to_string() };
            cut = Some((i, pos, scan.end_offset, problem));
            break;
        }
        if trailing && i + 1 < segments.len() {
            let problem = Problem {
                file: segment.path().to_path_buf(),
                pos: scan.end_pos,
                reason: "zero length, but data follows".into(),
            };
            cut = Some((i, scan.end_pos, scan.end_offset, problem));
            break;
        }
        expected = scan.end_offset;
    }
    let Some((index, pos, end_offset, problem)) = cut else {
        return Ok(Repaired { cut_at: None, end_offset: expected, removed_records_min: 0 });
    };
    // Everything after the damage goes: later segments newest first, then the damaged tail.
    let mut removed_records = 0u64;
    for segment in segments.iter().skip(index + 1).rev() {
        let report = segment.scan(SEGMENT_HEADER_BYTES, segment.base_offset(), None, false)?;
        removed_records += report.end_offset - segment.base_offset();
        disk.remove(segment.path()).map_err(|e| Error::io(segment.path(), e))?;
        let idx = segment.index_path();
        if disk.exists(&idx) {
            disk.remove(&idx).map_err(|e| Error::io(&idx, e))?;
        }
    }
    let Some(segment) = segments.get(index) else { return Err(Error::Invalid("segment index".into())) };
    let idx = segment.index_path();
    if disk.exists(&idx) {
        disk.remove(&idx).map_err(|e| Error::io(&idx, e))?;
    }
    disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    segment.zero_tail(pos)?;
    segment.sync()?;
    // The epochs of the removed batches go, as in a suffix truncation.
    if history.truncate_from(end_offset) {
        history.write(disk, dir)?;
    }
    // A new generation: no checkpoint slot or journal entry from before the repair is trusted.
    meta.generation += 1;
    meta.truncate_to = crate::meta::NO_TRUNCATION;
    meta.write(disk, dir)?;
    Ok(Repaired { cut_at: Some(problem), end_offset, removed_records_min: removed_records })
}
