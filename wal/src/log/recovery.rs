//! Recovery at open: finishing interrupted truncations, resets and rolls, finding the durable
//! end of the last segment, cutting a torn tail, and replaying the shared journal.
//!
//! The crash rules, in the order recovery applies them (FORMAT.md "Recovery"):
//! 1. Leftover temporary files of segment creations are removed: they were never part of the
//!    log.
//! 2. `log.meta` is the authority on which segments exist: from the one at `start_offset` to
//!    the one at `last_base`, contiguous. Segments below the start (a prefix truncation or a
//!    reset cut short) are removed; a pending suffix truncation removes the segments past its
//!    cut; a segment past `last_base` was created by a roll that stopped before recording it,
//!    holds nothing, and is removed. A segment missing at either end, or in the middle, is
//!    corruption naming the missing file.
//! 3. The durable claim is the newest of the meta's and of the checkpoint slots of the meta's
//!    generation. Frames below it are verified, and damage there is corruption naming file
//!    and byte; after it, the first bad frame starts a torn tail, which is cut.
//! 4. The journal's batches of the meta's generation that continue the log are appended, and
//!    the segment is synced; only then does the meta get a new generation (with a claim for
//!    everything recovered), which makes those journal entries stale. A crash anywhere in
//!    between recovers the same way again.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::*;

impl LogInner {
    /// Appends the journal's batches that continue this log and syncs the segment, so that
    /// they are durable in the segment before the generation changes. Entries of another
    /// generation (written before a suffix truncation) are never replayed; a gap ends the
    /// replay, because a batch after a lost one was never acknowledged as durable.
    pub(super) fn replay(&self, entries: &[(u64, bytes::Bytes)], generation: u64) -> Result<u64> {
        let _st = self.write.lock();
        let mut replayed = 0;
        for (entry_generation, frame_bytes) in entries {
            if *entry_generation != generation {
                continue;
            }
            let Ok(Some(frame)) = frame::decode(frame_bytes) else { break };
            let header = frame.header;
            let end = self.written_end.load(Ordering::Acquire);
            if header.end_offset() <= end {
                continue;
            }
            if header.base_offset != end {
                break;
            }
            let bytes = frame_bytes.get(..frame.frame_len).unwrap_or_default();
            self.write_frame(bytes, header.base_offset, header.end_offset(), header.max_timestamp_ms)?;
            replayed += 1;
        }
        if replayed > 0 {
            let active = self.active();
            self.sync_segment(&active)?;
        }
        Ok(replayed)
    }
}

/// Removes files that segment creations left behind when a crash came before their rename
/// (`<base:020>.seg.tmp`): they were never part of the log.
pub(super) fn remove_segment_tmp_files(disk: &dyn Disk, dir: &Path, names: &[String]) -> Result<()> {
    for name in names {
        let Some(stem) = name.strip_suffix(SEGMENT_TMP_SUFFIX) else { continue };
        if parse_file_name(stem, SEGMENT_EXT).is_some() {
            let path = dir.join(name);
            disk.remove(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// How many of the oldest segments (`bases`, sorted) hold only records below `start_offset`,
/// which `log.meta` says are gone, so that recovery removes them.
///
/// A segment is below the start when the next one begins at or below it (a prefix truncation,
/// or a reset, that a crash interrupted). The last segment is one only when it begins below the
/// start: the log start is always a segment base, so that happens only when a reset lost power
/// before its first segment, at the start, was durable; every record the old segment holds is
/// below the start, because a reset never starts below the written end.
pub(crate) fn segments_below_start(bases: &[u64], start_offset: u64) -> usize {
    let mut count = 0;
    while bases.get(count + 1).is_some_and(|base| *base <= start_offset) {
        count += 1;
    }
    if count + 1 == bases.len() && bases.get(count).is_some_and(|base| *base < start_offset) {
        count += 1;
    }
    count
}

pub(super) fn corrupt(file: PathBuf, pos: u64, reason: CorruptReason) -> Error {
    Error::Segment(tern_segment::Error::Corrupt { file, pos, reason })
}

/// Whether the lone first segment of a log without a meta is what a creation that stopped
/// part way left: a file too short for its header, a header not written yet (zeros), or a
/// valid header and no frame. Anything else is data, and a missing meta then is corruption,
/// never a new log.
pub(crate) fn creation_interrupted(disk: &dyn Disk, dir: &Path, index_interval_bytes: u64) -> Result<bool> {
    let path = dir.join(tern_segment::segment::segment_file_name(0));
    if blank_header(disk, &path)? {
        return Ok(true);
    }
    let segment = Segment::open(disk, &path, index_interval_bytes)?;
    let report = segment.scan(SEGMENT_HEADER_BYTES, 0, None, true).map_err(Error::from_segment)?;
    Ok(report.frame_count == 0 && report.problem.is_none())
}

/// Whether the segment file at `path` has no header yet: shorter than one, or zeros where it
/// belongs. Such a file was being created when a crash came (or by a build that created
/// segments in place), and holds nothing.
pub(crate) fn blank_header(disk: &dyn Disk, path: &Path) -> Result<bool> {
    let file = disk.open(path).map_err(|e| Error::io(path, e))?;
    let len = file.len().map_err(|e| Error::io(path, e))?;
    if len < SEGMENT_HEADER_BYTES {
        return Ok(true);
    }
    let header = file.read_copy(0, SEGMENT_HEADER_BYTES).map_err(|e| Error::io(path, e))?;
    Ok(header.iter().all(|b| *b == 0))
}

/// Which segment files recovery keeps, removes and expects, decided from their base offsets
/// and the meta alone. Recovery and `verify` both follow it, so they agree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SegmentPlan {
    /// Below the log start: a prefix truncation or a reset cut short. Removed.
    pub(crate) below_start: Vec<u64>,
    /// A reset moved the start past every segment and lost power before its first segment
    /// was durable: recovery creates that segment.
    pub(crate) create_first: bool,
    /// At or past a pending suffix truncation's cut (never the first segment). Removed.
    pub(crate) past_cut: Vec<u64>,
    /// Past the newest segment the meta records: created by a roll that stopped before
    /// recording it, so they hold nothing. Removed.
    pub(crate) unrecorded: Vec<u64>,
    /// The log's segments, oldest first.
    pub(crate) kept: Vec<u64>,
    /// A segment the meta says exists that is not there, and which one: the log's corrupt.
    pub(crate) missing: Option<(u64, &'static str)>,
}

/// Plans recovery's handling of the segment files with `bases` (sorted) under `meta`.
pub(crate) fn plan_segments(bases: &[u64], meta: &Meta) -> SegmentPlan {
    let mut plan = SegmentPlan::default();
    let below = segments_below_start(bases, meta.start_offset);
    plan.below_start = bases.get(..below).unwrap_or_default().to_vec();
    let mut kept: Vec<u64> = bases.get(below..).unwrap_or_default().to_vec();
    if below > 0 && kept.is_empty() {
        plan.create_first = true;
        kept.push(meta.start_offset);
    }
    if kept.first() != Some(&meta.start_offset) {
        plan.missing = Some((meta.start_offset, "the log's first segment is missing"));
    }
    if meta.truncate_to != NO_TRUNCATION {
        let keep = 1 + kept.iter().skip(1).take_while(|base| **base < meta.truncate_to).count();
        plan.past_cut = kept.split_off(keep.min(kept.len()));
    }
    if let Some(last_base) = meta.last_base {
        let unrecorded = kept.iter().position(|base| *base > last_base).unwrap_or(kept.len());
        plan.unrecorded = kept.split_off(unrecorded);
        let cut_removed_it = meta.truncate_to != NO_TRUNCATION;
        if plan.missing.is_none() && kept.last() != Some(&last_base) && !cut_removed_it {
            plan.missing = Some((last_base, "the log's newest segment is missing"));
        }
    }
    plan.kept = kept;
    plan
}

/// What recovery found: the segments, the meta as it was read (the new generation is written
/// only after the journal's batches are replayed and synced), what recovery did, and the epoch
/// history.
pub(super) struct RecoveredLog {
    pub(super) segments: Vec<Arc<Segment>>,
    pub(super) meta: Meta,
    pub(super) recovered: Recovered,
    pub(super) history: EpochHistory,
}

/// Creates a new log in `dir` (which holds no meta): its empty first segment, durably, then
/// the meta. A lone first segment that an interrupted creation left is replaced.
fn create_log(disk: &dyn Disk, dir: &Path, options: &LogOptions, bases: &[u64]) -> Result<RecoveredLog> {
    if bases == [0] && creation_interrupted(disk, dir, options.index_interval_bytes)? {
        // The first segment of a new log, and the log's creation stopped before the meta was
        // written: nothing was ever appended to it (appends start after the meta is durable).
        let path = dir.join(tern_segment::segment::segment_file_name(0));
        disk.remove(&path).map_err(|e| Error::io(&path, e))?;
    } else if !bases.is_empty() {
        return Err(corrupt(dir.join(crate::meta::META_FILE), 0, CorruptReason::Field("meta file missing")));
    }
    let segment = create_segment_file(disk, dir, 0, options.segment_size_bytes, options.index_interval_bytes, None)?;
    let meta = Meta::new_log(1, 0);
    meta.write(disk, dir)?;
    let recovered = Recovered { clean: true, ..Default::default() };
    Ok(RecoveredLog { segments: vec![Arc::new(segment)], meta, recovered, history: EpochHistory::new() })
}

/// Removes segment files (and their index files) and syncs the directory if any went.
fn remove_segments(disk: &dyn Disk, dir: &Path, bases: &[u64]) -> Result<()> {
    for &base in bases {
        let path = dir.join(tern_segment::segment::segment_file_name(base));
        disk.remove(&path).map_err(|e| Error::io(&path, e))?;
        let index = path.with_extension(tern_segment::segment::INDEX_EXT);
        if disk.exists(&index) {
            disk.remove(&index).map_err(|e| Error::io(&index, e))?;
        }
    }
    if !bases.is_empty() {
        disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

/// The newest of the claims the meta and the checkpoint slots of its generation make.
pub(crate) fn durable_claim(meta: &Meta, checkpoint: Option<Checkpoint>) -> Option<Claim> {
    let from_checkpoint = checkpoint.map(|cp| cp.claim());
    [meta.claim, from_checkpoint].into_iter().flatten().max_by_key(|c| (c.end, c.segment_base, c.pos))
}

/// Opens the segments of `dir`, finishes interrupted truncations, resets and rolls, finds the
/// end, and loads the epoch history. Changes only what a crash left unfinished or torn;
/// damage below the durable claim is an error that names file and byte and changes nothing.
pub(super) fn recover(disk: &dyn Disk, dir: &Path, options: &LogOptions) -> Result<RecoveredLog> {
    let names = disk.list(dir).map_err(|e| Error::io(dir, e))?;
    let mut bases: Vec<u64> = names.iter().filter_map(|n| parse_file_name(n, SEGMENT_EXT)).collect();
    bases.sort_unstable();
    remove_segment_tmp_files(disk, dir, &names)?;
    let Some(meta) = Meta::read(disk, dir)? else {
        return create_log(disk, dir, options, &bases);
    };
    // A reset that must clear the epoch history left its marker: the reset took effect if the
    // meta has its start (a reset never starts below the old written end, so the old log
    // starts there only if it was already empty there), and then the history goes with the
    // records it described; otherwise the reset never happened, and the marker just goes.
    let mut marker_removed = false;
    for reset_start in names.iter().filter_map(|name| epochs::parse_reset_marker(name)) {
        let marker = dir.join(epochs::reset_marker_name(reset_start));
        if meta.start_offset >= reset_start {
            clear_history_then_marker(disk, dir, &marker)?;
        } else {
            disk.remove(&marker).map_err(|e| Error::io(&marker, e))?;
            marker_removed = true;
        }
    }
    if marker_removed {
        disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut history = EpochHistory::read(disk, dir)?;
    let interval = options.index_interval_bytes;
    let plan = plan_segments(&bases, &meta);
    let segment_path = |base: u64| dir.join(tern_segment::segment::segment_file_name(base));
    if plan.create_first {
        // A reset lost power before the name of its first segment was durable. Create that
        // segment before removing the old ones, so the directory always holds a segment.
        create_segment_file(disk, dir, meta.start_offset, options.segment_size_bytes, interval, None)?;
    }
    // Finish a prefix truncation or a reset, then a suffix truncation's removal of the
    // segments past its cut, that a crash interrupted.
    remove_segments(disk, dir, &plan.below_start)?;
    if let Some((base, why)) = plan.missing {
        return Err(corrupt(segment_path(base), 0, CorruptReason::Field(why)));
    }
    remove_segments(disk, dir, &plan.past_cut.iter().rev().copied().collect::<Vec<_>>())?;
    // A roll creates its segment, then records it in the meta: one it did not record yet
    // holds nothing (appends go there only after the record is durable).
    for &base in &plan.unrecorded {
        let path = segment_path(base);
        if !blank_header(disk, &path)? {
            let segment = Segment::open(disk, &path, interval)?;
            let report = segment.scan(SEGMENT_HEADER_BYTES, base, None, true)?;
            if report.frame_count > 0 {
                let reason = CorruptReason::Field("a segment past the newest one log.meta records holds frames");
                return Err(corrupt(path, SEGMENT_HEADER_BYTES, reason));
            }
        }
    }
    remove_segments(disk, dir, &plan.unrecorded)?;
    let bases = plan.kept;
    let checkpoint = CheckpointWriter::read(disk, dir, meta.generation)?;
    let claim = durable_claim(&meta, checkpoint);
    let last_base = *bases.last().expect("the first segment is there");
    if let Some(claim) = claim.filter(|c| c.segment_base > last_base) {
        let reason = CorruptReason::Field("a synced segment is missing");
        return Err(corrupt(segment_path(claim.segment_base), 0, reason));
    }
    // A last segment without a header holds nothing, when no claim reaches into it: it was
    // being created when the crash came (a build that created segments in place).
    if claim.is_none_or(|c| c.end <= last_base) && blank_header(disk, &segment_path(last_base))? {
        disk.remove(&segment_path(last_base)).map_err(|e| Error::io(segment_path(last_base), e))?;
        create_segment_file(disk, dir, last_base, options.segment_size_bytes, interval, None)?;
    }
    let mut recovered = Recovered::default();
    let mut segments = Vec::with_capacity(bases.len());
    let mut expected = meta.start_offset;
    for &base in &bases {
        let path = segment_path(base);
        if base != expected {
            let missing = segment_path(expected.min(base));
            let reason = CorruptReason::Discontinuity { expected, found: base };
            return Err(corrupt(if base > expected { missing } else { path }, 0, reason));
        }
        let segment = Segment::open(disk, &path, interval)?;
        if base != last_base {
            recover_sealed(disk, &segment, &mut recovered)?;
            if let Some(claim) = claim.filter(|c| c.segment_base == base && c.end > segment.end_offset()) {
                let reason = CorruptReason::Truncated { needed_bytes: claim.pos.saturating_sub(segment.end_pos()) };
                return Err(corrupt(path, segment.end_pos(), reason));
            }
        }
        expected = segment.end_offset();
        segments.push(Arc::new(segment));
    }
    let last = segments.last().cloned().expect("checked above");
    let claim_in_last = claim.filter(|c| c.segment_base == last.base_offset());
    let clean = checkpoint.filter(|cp| cp.clean && cp.segment_base == last.base_offset());
    recover_last(disk, &last, claim_in_last, clean, &mut recovered)?;
    if meta.truncate_to != NO_TRUNCATION {
        cut_in_place(disk, dir, &mut segments, meta.truncate_to)?;
        // As `truncate_suffix` does: the epochs of the cut batches go, durably, while the
        // truncation is still recorded as pending.
        if history.truncate_from(meta.truncate_to) {
            history.write(disk, dir)?;
        }
        recovered.clean = false;
    }
    Ok(RecoveredLog { segments, meta, recovered, history })
}

/// Finds the end of a sealed segment: from its index file, or by verifying it whole.
fn recover_sealed(disk: &dyn Disk, segment: &Segment, recovered: &mut Recovered) -> Result<()> {
    let base = segment.base_offset();
    let path = segment.path().to_path_buf();
    match segment.read_index(disk) {
        Ok(Some(index)) => segment.install(index.end_pos, index.end_offset, index.max_timestamp_ms, index.entries),
        Ok(None) | Err(tern_segment::Error::Corrupt { .. }) => {
            let report = segment.scan(SEGMENT_HEADER_BYTES, base, None, true)?;
            recovered.scanned_bytes += report.end_pos - SEGMENT_HEADER_BYTES;
            if let Some((pos, reason)) = report.problem {
                return Err(corrupt(path, pos, reason));
            }
            // A sealed segment was synced whole and only zeros follow its last frame (torn
            // tails are zeroed before a segment is sealed). Data after a zero length means a
            // damaged length field, not the end: without this check the frames after it are
            // dropped, and the error blames the next segment.
            if segment.nonzero_end(report.end_pos)?.is_some() {
                return Err(corrupt(path, report.end_pos, CorruptReason::TrailingGarbage));
            }
            segment.install(report.end_pos, report.end_offset, report.max_timestamp_ms, report.entries);
            // Derived data: rebuilt, so the next open trusts it again. A failure only costs
            // the next open this scan again.
            let _ = segment.write_index(disk);
        }
        Err(e) => return Err(e.into()),
    }
    if segment.end_offset() == base {
        return Err(corrupt(path, SEGMENT_HEADER_BYTES, CorruptReason::Field("sealed segment is empty")));
    }
    Ok(())
}

/// Finds the end of the last segment: trusted after a clean close, otherwise verified up to
/// the durable claim (damage there is corruption) and frame by frame after it, cutting a torn
/// tail.
fn recover_last(
    disk: &dyn Disk,
    last: &Segment,
    claim: Option<Claim>,
    clean: Option<Checkpoint>,
    recovered: &mut Recovered,
) -> Result<()> {
    let path = last.path().to_path_buf();
    let base = last.base_offset();
    if let Some(cp) = clean {
        if let Ok(Some(index)) = last.read_index(disk) {
            if index.end_pos == cp.durable_pos && index.end_offset == cp.durable_end {
                last.install(index.end_pos, index.end_offset, index.max_timestamp_ms, index.entries);
                recovered.clean = true;
                return Ok(());
            }
        }
    }
    let claim_pos = claim.map_or(SEGMENT_HEADER_BYTES, |c| c.pos.max(SEGMENT_HEADER_BYTES));
    if claim_pos > last.size_bytes() {
        return Err(corrupt(path, claim_pos, CorruptReason::Field("the durable claim points past the segment")));
    }
    // The claimed region was verified when it was written, but a media error may have damaged
    // it since. Verify every checksum here too: an unverified walk only sees damage that
    // breaks the chain of frame lengths, so a flipped bit in a record or a timestamp would let
    // the log open and fail only later, at a read, instead of at open as promised. The cost is
    // bounded by one segment and paid only after a crash.
    let walk = last.scan(SEGMENT_HEADER_BYTES, base, Some(claim_pos), true)?;
    if let Some((pos, reason)) = walk.problem {
        return Err(corrupt(path, pos, reason));
    }
    if walk.end_pos != claim_pos || claim.is_some_and(|c| c.end != walk.end_offset) {
        return Err(corrupt(path, walk.end_pos, CorruptReason::Truncated { needed_bytes: claim_pos - walk.end_pos }));
    }
    // After it, every frame is verified; the first bad one starts a torn tail.
    let tail = last.scan(claim_pos, walk.end_offset, None, true)?;
    recovered.scanned_bytes += tail.end_pos - SEGMENT_HEADER_BYTES;
    if let Some(nonzero_end) = last.nonzero_end(tail.end_pos)? {
        recovered.torn_tail_bytes = nonzero_end - tail.end_pos;
        last.zero_tail(tail.end_pos)?;
    }
    // What was found may sit only in the page cache (the process died, the machine did not):
    // sync it before calling it durable.
    last.sync()?;
    let mut entries = walk.entries;
    let walked_pos = entries.last().map_or(0, |e| e.pos);
    entries.extend(tail.entries.into_iter().filter(|e| e.pos > walked_pos));
    last.install(tail.end_pos, tail.end_offset, walk.max_timestamp_ms.max(tail.max_timestamp_ms), entries);
    Ok(())
}

/// Finishes a suffix truncation at recovery, where no reader holds a map yet: later segments
/// go, and the segment holding `offset` has its tail overwritten with zeros and synced.
fn cut_in_place(disk: &dyn Disk, dir: &Path, segments: &mut Vec<Arc<Segment>>, offset: u64) -> Result<()> {
    let gone: Vec<u64> =
        segments.iter().skip(1).filter(|s| s.base_offset() >= offset).map(|s| s.base_offset()).collect();
    segments.truncate(segments.len() - gone.len());
    remove_segments(disk, dir, &gone)?;
    let last = segments.last().cloned().expect("at least one segment");
    let cut_pos = frame_pos(&last, offset)?;
    let cut_offset = offset.clamp(last.base_offset(), last.end_offset());
    let index = last.index_path();
    if disk.exists(&index) {
        disk.remove(&index).map_err(|e| Error::io(&index, e))?;
        disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    last.zero_tail(cut_pos)?;
    last.sync()?;
    let report = last.scan(SEGMENT_HEADER_BYTES, last.base_offset(), Some(cut_pos), false)?;
    last.install(cut_pos, cut_offset, report.max_timestamp_ms, report.entries);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::segments_below_start;

    #[test]
    fn recovery_removes_exactly_the_segments_below_the_log_start() {
        // In step: the start is the first base.
        assert_eq!(segments_below_start(&[0, 10, 20], 0), 0);
        // A prefix truncation or a reset cut short: the next segment begins at or below it.
        assert_eq!(segments_below_start(&[0, 10, 20], 10), 1);
        assert_eq!(segments_below_start(&[0, 10, 20], 15), 1);
        assert_eq!(segments_below_start(&[0, 10, 20, 500], 500), 3);
        // A reset cut short before its first segment was durable: nothing is at the start.
        assert_eq!(segments_below_start(&[0, 10, 20], 500), 3);
        assert_eq!(segments_below_start(&[20], 500), 1);
        // The last segment at the start stays, as does a log with no segment at all.
        assert_eq!(segments_below_start(&[500], 500), 0);
        assert_eq!(segments_below_start(&[], 500), 0);
    }
}
