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
    /// Found, but not damage: derived data that the next open rebuilds (an index file that
    /// does not decode). Open and read succeed.
    pub notes: Vec<Problem>,
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
            if base > expected {
                let missing = dir.join(segment_file_name(expected));
                problem(&mut report, &missing, 0, format!("missing: the next segment starts at offset {base}"));
            } else {
                problem(&mut report, &path, 0, format!("segment starts at offset {base}, expected {expected}"));
            }
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
            let reason = format!("{e} (derived data: the next open scans the segment and rebuilds it)");
            report.notes.push(Problem { file: path, pos: 0, reason });
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

/// Whether the log in `dir` was last closed cleanly (its newest trusted checkpoint slot is a
/// clean close's), so that nothing of it depends on the shared journal. A directory without a
/// meta holds no records and counts as clean; anything unreadable does not.
pub fn closed_cleanly(disk: &dyn Disk, dir: &Path) -> bool {
    match Meta::read(disk, dir) {
        Ok(None) => true,
        Ok(Some(meta)) => {
            matches!(CheckpointWriter::read(disk, dir, meta.generation), Ok(Some(cp)) if cp.clean)
        }
        Err(_) => false,
    }
}

/// What [`repair_log`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repaired {
    /// The damaged place where the log was cut (its end now), or `None` when nothing was cut.
    pub cut_at: Option<Problem>,
    /// The log's start after the repair.
    pub start_offset: u64,
    /// The log's end after the repair.
    pub end_offset: u64,
    /// Offsets removed at the front: the first segments could not be read at all, and the log
    /// now starts at the first one that could.
    pub removed_front: Option<std::ops::Range<u64>>,
    /// Offsets removed at the back, from the cut to the highest end that any readable frame
    /// after it, or the log's durable claim, names. Offsets are dense, so this many records
    /// went.
    pub removed_back: Option<std::ops::Range<u64>>,
    /// Segment headers rewritten from their file names (the frames after them were intact).
    pub headers_rebuilt: Vec<PathBuf>,
    /// Index files rewritten because they were missing, damaged or did not match their segment.
    pub indexes_rebuilt: Vec<PathBuf>,
    /// Segment files removed.
    pub segments_removed: Vec<PathBuf>,
}

/// Makes a damaged log open again, working from whatever can be read: a segment header that
/// was damaged is rewritten from the file name when the frames after it are intact; leading
/// segments that cannot be read at all are dropped (the log starts after them); from the start,
/// the log keeps every frame up to the first damaged one (a bad frame, a missing or unreadable
/// segment, offsets that do not continue) and removes everything after it; the indexes of the
/// segments kept are rebuilt where they do not match; the epoch history loses the entries of
/// removed epochs; `log.meta` gets a new generation (no checkpoint slot or journal entry from
/// before the repair is trusted), the new start and end. Only for an operator who asked: the
/// removed records are gone, and [`Repaired`] says exactly which offsets went. The log must
/// not be open.
///
/// # Errors
/// I/O errors; a missing or damaged `log.meta` or epoch history, which this cannot rebuild.
pub fn repair_log(disk: &dyn Disk, dir: &Path) -> Result<Repaired> {
    let interval = crate::log::INDEX_INTERVAL_BYTES_DEFAULT;
    let Some(mut meta) = Meta::read(disk, dir)? else {
        return Err(Error::Invalid(format!("{} has no log.meta; not a log directory", dir.display())));
    };
    // Read before anything changes, so that a damaged history stops the repair early.
    let mut history = EpochHistory::read(disk, dir)?;
    let names = disk.list(dir).map_err(|e| Error::io(dir, e))?;
    let mut bases: Vec<u64> = names.iter().filter_map(|n| parse_file_name(n, SEGMENT_EXT)).collect();
    bases.sort_unstable();
    let mut repaired = Repaired::default();
    let checkpoint = CheckpointWriter::read(disk, dir, meta.generation).ok().flatten();
    let claim_end = crate::log::durable_claim(&meta, checkpoint).map_or(0, |c| c.end);
    let path_of = |base: u64| dir.join(segment_file_name(base));
    // Leftovers below the start go, as recovery removes them; a pending truncation's cut is
    // where the log ends at the latest.
    let below = crate::log::segments_below_start(&bases, meta.start_offset);
    let leftovers: Vec<u64> = bases.drain(..below).collect();
    let end_max = if meta.truncate_to == NO_TRUNCATION { u64::MAX } else { meta.truncate_to };
    // Open every segment that can be opened, rebuilding a damaged header from the file name
    // when the frame after it starts at that offset.
    let mut segments: Vec<(u64, Option<Segment>)> = Vec::with_capacity(bases.len());
    for &base in &bases {
        let path = path_of(base);
        let segment = match Segment::open(disk, &path, interval) {
            Ok(segment) => Some(segment),
            Err(tern_segment::Error::Corrupt { .. }) => match rebuild_header(disk, &path, base, interval)? {
                Some(segment) => {
                    repaired.headers_rebuilt.push(path.clone());
                    Some(segment)
                }
                None => None,
            },
            Err(e) => return Err(e.into()),
        };
        segments.push((base, segment));
    }
    // The log starts at its first readable segment; leading unreadable ones go.
    let first_readable = segments.iter().position(|(_, s)| s.is_some());
    let start = match first_readable {
        Some(i) => segments.get(i).map_or(meta.start_offset, |(base, _)| *base).max(meta.start_offset),
        None => meta.start_offset,
    };
    if start > meta.start_offset {
        repaired.removed_front = Some(meta.start_offset..start);
    }
    // Walk from the start: keep frames up to the first damage.
    let mut expected = start;
    let mut kept: Vec<Segment> = Vec::new();
    let mut cut: Option<(u64, u64, Problem)> = None; // (position, offset, what)
    let mut highest_end = expected;
    for (base, segment) in segments.iter().skip(first_readable.unwrap_or(segments.len())) {
        let path = path_of(*base);
        let Some(segment) = segment else {
            if cut.is_none() {
                cut = Some((
                    u64::MAX,
                    expected,
                    Problem { file: path, pos: 0, reason: "unreadable segment header".into() },
                ));
            }
            continue;
        };
        // Count what later segments hold, for the report, even past the cut.
        let unverified = segment.scan(SEGMENT_HEADER_BYTES, *base, None, false)?;
        highest_end = highest_end.max(unverified.end_offset);
        if cut.is_some() {
            continue;
        }
        if *base != expected {
            let reason = format!("segment starts at offset {base}, expected {expected} (a segment is missing)");
            cut = Some((u64::MAX, expected, Problem { file: path, pos: 0, reason }));
            continue;
        }
        if *base >= end_max && !kept.is_empty() {
            let reason = "a suffix truncation was pending".to_owned();
            cut = Some((0, expected, Problem { file: path, pos: SEGMENT_HEADER_BYTES, reason }));
            continue;
        }
        let scan = segment.scan(SEGMENT_HEADER_BYTES, *base, None, true)?;
        let reopened = Segment::open(disk, segment.path(), interval)?;
        if scan.end_offset > end_max {
            // A pending suffix truncation ends the log inside this segment.
            let pos = frame_end_pos(segment, end_max)?;
            let kept_part = reopened.scan(SEGMENT_HEADER_BYTES, *base, Some(pos), true)?;
            reopened.install(kept_part.end_pos, kept_part.end_offset, kept_part.max_timestamp_ms, kept_part.entries);
            kept.push(reopened);
            let reason = "a suffix truncation was pending".to_owned();
            cut = Some((pos, end_max, Problem { file: path, pos, reason }));
            continue;
        }
        let mut problem = scan.problem.map(|(pos, reason)| (pos, reason.to_string()));
        if problem.is_none() && segment.nonzero_end(scan.end_pos)?.is_some() {
            problem = Some((scan.end_pos, "zero length, but data follows".into()));
        }
        reopened.install(scan.end_pos, scan.end_offset, scan.max_timestamp_ms, scan.entries);
        kept.push(reopened);
        expected = scan.end_offset;
        if let Some((pos, reason)) = problem {
            cut = Some((pos, scan.end_offset, Problem { file: path, pos, reason }));
        }
    }
    let end = kept.last().map_or(start, Segment::end_offset);
    // A kept segment that holds nothing is dropped, unless it is the only one.
    while kept.len() > 1 && kept.last().is_some_and(|s| s.end_offset() == s.base_offset()) {
        kept.pop();
    }
    let back_end = highest_end.max(claim_end).max(meta.last_base.unwrap_or(0)).min(end_max.max(end));
    if back_end > end {
        repaired.removed_back = Some(end..back_end);
        if cut.is_none() {
            // Nothing damaged was read, yet the log held more: its newest segments are gone.
            let reason = "missing: the log's records end here".to_owned();
            cut = Some((0, end, Problem { file: path_of(end), pos: 0, reason }));
        }
    }
    repaired.cut_at = cut.map(|(_, _, problem)| problem);
    // Apply: remove every segment file not kept, newest first.
    let kept_bases: Vec<u64> = kept.iter().map(Segment::base_offset).collect();
    let doomed: Vec<u64> =
        leftovers.iter().chain(bases.iter()).copied().filter(|b| !kept_bases.contains(b)).rev().collect();
    for base in doomed {
        let path = path_of(base);
        disk.remove(&path).map_err(|e| Error::io(&path, e))?;
        let index = path.with_extension(tern_segment::segment::INDEX_EXT);
        if disk.exists(&index) {
            disk.remove(&index).map_err(|e| Error::io(&index, e))?;
        }
        repaired.segments_removed.push(path);
    }
    if kept.is_empty() {
        // Nothing readable: the log restarts empty at its start.
        kept.push(crate::log::create_segment_file(
            disk,
            dir,
            start,
            crate::log::SEGMENT_BYTES_DEFAULT,
            interval,
            None,
        )?);
    }
    let last = kept.last().expect("a segment is kept");
    // Appends continue in the last segment: an index would describe it wrongly.
    let last_index = last.index_path();
    if disk.exists(&last_index) {
        disk.remove(&last_index).map_err(|e| Error::io(&last_index, e))?;
    }
    disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    last.zero_tail(last.end_pos())?;
    last.sync()?;
    // Indexes of sealed segments: rebuilt where they are missing, damaged or wrong.
    for segment in kept.iter().take(kept.len() - 1) {
        let matches = matches!(segment.read_index(disk), Ok(Some(index))
            if index.end_pos == segment.end_pos() && index.end_offset == segment.end_offset());
        if !matches {
            segment.write_index(disk)?;
            repaired.indexes_rebuilt.push(segment.index_path());
        }
    }
    // The epochs of removed batches go, as in a suffix truncation.
    if history.truncate_from(end) {
        history.write(disk, dir)?;
    }
    // A new generation: no checkpoint slot or journal entry from before the repair is trusted.
    meta.generation += 1;
    meta.truncate_to = NO_TRUNCATION;
    meta.start_offset = kept.first().map_or(start, Segment::base_offset);
    meta.last_base = Some(last.base_offset());
    meta.claim = Some(crate::meta::Claim { segment_base: last.base_offset(), pos: last.end_pos(), end });
    meta.write(disk, dir)?;
    repaired.start_offset = meta.start_offset;
    repaired.end_offset = end;
    Ok(repaired)
}

/// Rewrites the header of the segment at `path` from its file name, when the first frame after
/// the header is intact and starts at `base`; returns the segment then, `None` otherwise.
fn rebuild_header(disk: &dyn Disk, path: &Path, base: u64, interval: u64) -> Result<Option<Segment>> {
    let Ok(file) = disk.open(path) else { return Ok(None) };
    let len = file.len().map_err(|e| Error::io(path, e))?;
    if len <= SEGMENT_HEADER_BYTES {
        return Ok(None);
    }
    let probe = file
        .read_copy(
            SEGMENT_HEADER_BYTES,
            (len - SEGMENT_HEADER_BYTES).min(u64::from(frame::FRAME_BODY_BYTES_MAX) + frame::FRAME_PREFIX_BYTES as u64),
        )
        .map_err(|e| Error::io(path, e))?;
    match frame::decode(&probe) {
        Ok(Some(f)) if f.header.base_offset == base => {}
        _ => return Ok(None),
    }
    file.write_at(0, &tern_segment::segment::encode_segment_header(base)).map_err(|e| Error::io(path, e))?;
    file.sync_data().map_err(|e| Error::io(path, e))?;
    Ok(Some(Segment::open(disk, path, interval)?))
}

/// Position just after the frame that ends at `offset` in `segment` (walked from its start).
fn frame_end_pos(segment: &Segment, offset: u64) -> Result<u64> {
    let report = segment.scan(SEGMENT_HEADER_BYTES, segment.base_offset(), None, false)?;
    let bytes = segment.bytes(SEGMENT_HEADER_BYTES, report.end_pos)?;
    let (mut pos, mut next) = (SEGMENT_HEADER_BYTES, segment.base_offset());
    while next < offset {
        let rel = (pos - SEGMENT_HEADER_BYTES) as usize;
        let Ok(Some((header, len))) = frame::decode_header_unverified(bytes.get(rel..).unwrap_or_default()) else {
            break;
        };
        pos += len as u64;
        next = header.end_offset();
    }
    Ok(pos)
}
