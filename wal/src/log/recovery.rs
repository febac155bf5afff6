//! Recovery at open: finishing interrupted truncations and resets, finding the durable end of
//! the last segment, cutting a torn tail, and replaying the shared journal.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::*;

impl LogInner {
    /// Appends the journal's batches that continue this log, then syncs the segment, so the
    /// journal file holding them may be recycled. Entries of another generation (written
    /// before a suffix truncation) are never replayed; a gap ends the replay, because a batch
    /// after a lost one was never acknowledged as durable.
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
            self.active().sync()?;
            self.durable_end.store(self.written_end.load(Ordering::Acquire), Ordering::Release);
        }
        Ok(replayed)
    }
}

/// Removes files that replacements of empty segments left behind when a crash came before
/// their rename (`<base:020>.seg.tmp`): they were never part of the log.
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
    let segment = match Segment::open(disk, &path, index_interval_bytes) {
        Ok(segment) => segment,
        Err(tern_segment::Error::Corrupt { reason: CorruptReason::Truncated { .. }, .. }) => return Ok(true),
        Err(tern_segment::Error::Corrupt { reason: CorruptReason::Magic, .. }) => {
            let file = disk.open(&path).map_err(|e| Error::io(&path, e))?;
            let header = file.read_copy(0, SEGMENT_HEADER_BYTES).map_err(|e| Error::io(&path, e))?;
            return Ok(header.iter().all(|b| *b == 0));
        }
        Err(e) => return Err(Error::from_segment(e)),
    };
    let report = segment.scan(SEGMENT_HEADER_BYTES, 0, None, true).map_err(Error::from_segment)?;
    Ok(report.frame_count == 0 && report.problem.is_none())
}

/// What recovery returns: the segments, the meta, what it found, the generation that journal
/// entries to replay must carry, and the epoch history.
pub(super) type RecoveredLog = (Vec<Arc<Segment>>, Meta, Recovered, u64, EpochHistory);

/// Opens the segments of `dir`, finishes interrupted truncations and resets, finds the end,
/// and loads the epoch history.
pub(super) fn recover(disk: &dyn Disk, dir: &Path, options: &LogOptions) -> Result<RecoveredLog> {
    let names = disk.list(dir).map_err(|e| Error::io(dir, e))?;
    let mut bases: Vec<u64> = names.iter().filter_map(|n| parse_file_name(n, SEGMENT_EXT)).collect();
    bases.sort_unstable();
    remove_segment_tmp_files(disk, dir, &names)?;
    let Some(mut meta) = Meta::read(disk, dir)? else {
        if bases == [0] && creation_interrupted(disk, dir, options.index_interval_bytes)? {
            // The first segment of a new log, and the log's creation stopped before the meta
            // was written: nothing was ever appended to it (appends start after the meta is
            // durable). Create the log afresh.
            let path = dir.join(tern_segment::segment::segment_file_name(0));
            disk.remove(&path).map_err(|e| Error::io(&path, e))?;
        } else if !bases.is_empty() {
            return Err(corrupt(dir.join(crate::meta::META_FILE), 0, CorruptReason::Field("meta file missing")));
        }
        // A new log.
        let segment = Segment::create(disk, dir, 0, options.segment_size_bytes, options.index_interval_bytes)?;
        segment.sync()?;
        let meta = Meta { generation: 1, start_offset: 0, truncate_to: NO_TRUNCATION };
        meta.write(disk, dir)?; // syncs the directory, making the segment's name durable too
        let recovered = Recovered { clean: true, ..Default::default() };
        return Ok((vec![Arc::new(segment)], meta, recovered, 0, EpochHistory::new()));
    };
    let replay_generation = meta.generation;
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
    // Finish a prefix truncation or a reset that a crash interrupted.
    let below_start = segments_below_start(&bases, meta.start_offset);
    if below_start > 0 && below_start == bases.len() {
        // A reset lost power before the name of its first segment was durable. Create that
        // segment before removing the old ones, so the directory always holds a segment.
        let segment =
            Segment::create(disk, dir, meta.start_offset, options.segment_size_bytes, options.index_interval_bytes)?;
        segment.sync()?;
        disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
        bases.push(meta.start_offset);
    }
    let mut removed = false;
    for _ in 0..below_start {
        let base = bases.remove(0);
        let path = dir.join(tern_segment::segment::segment_file_name(base));
        disk.remove(&path).map_err(|e| Error::io(&path, e))?;
        let index = path.with_extension(tern_segment::segment::INDEX_EXT);
        if disk.exists(&index) {
            disk.remove(&index).map_err(|e| Error::io(&index, e))?;
        }
        removed = true;
    }
    if removed {
        disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    let Some(&last_base) = bases.last() else {
        return Err(corrupt(dir.to_path_buf(), 0, CorruptReason::Field("log has no segment files")));
    };
    let mut recovered = Recovered::default();
    let mut segments = Vec::with_capacity(bases.len());
    let mut expected = bases.first().copied().unwrap_or(0);
    for &base in &bases {
        let path = dir.join(tern_segment::segment::segment_file_name(base));
        let segment = Segment::open(disk, &path, options.index_interval_bytes)?;
        if base != expected {
            let reason = CorruptReason::Discontinuity { expected, found: base };
            return Err(corrupt(path, 0, reason));
        }
        if base != last_base {
            // Sealed: synced whole at roll. Trust its index file, or verify it whole.
            match segment.read_index(disk) {
                Ok(Some(index)) => {
                    segment.install(index.end_pos, index.end_offset, index.max_timestamp_ms, index.entries)
                }
                Ok(None) | Err(tern_segment::Error::Corrupt { .. }) => {
                    let report = segment.scan(SEGMENT_HEADER_BYTES, base, None, true)?;
                    recovered.scanned_bytes += report.end_pos - SEGMENT_HEADER_BYTES;
                    if let Some((pos, reason)) = report.problem {
                        return Err(corrupt(path, pos, reason));
                    }
                    // A sealed segment was synced whole and only zeros follow its last frame
                    // (torn tails are zeroed before a segment is sealed). Data after a zero
                    // length means a damaged length field, not the end: without this check the
                    // frames after it are dropped, and the error blames the next segment.
                    let rest = segment.bytes(report.end_pos, segment.size_bytes())?;
                    if rest.iter().any(|b| *b != 0) {
                        return Err(corrupt(path, report.end_pos, CorruptReason::TrailingGarbage));
                    }
                    segment.install(report.end_pos, report.end_offset, report.max_timestamp_ms, report.entries);
                }
                Err(e) => return Err(e.into()),
            }
            if segment.end_offset() == base {
                return Err(corrupt(path, SEGMENT_HEADER_BYTES, CorruptReason::Field("sealed segment is empty")));
            }
        }
        expected = segment.end_offset();
        segments.push(Arc::new(segment));
    }
    let last = segments.last().cloned().expect("checked above");
    let checkpoint = CheckpointWriter::read(disk, dir, meta.generation)?;
    recover_last(disk, &last, checkpoint, &mut recovered)?;
    if meta.truncate_to != NO_TRUNCATION {
        cut_suffix(disk, dir, &mut segments, meta.truncate_to)?;
        // As `truncate_suffix` does: the epochs of the cut batches go, durably, while the
        // truncation is still recorded as pending.
        if history.truncate_from(meta.truncate_to) {
            history.write(disk, dir)?;
        }
        meta.truncate_to = NO_TRUNCATION;
        recovered.clean = false;
    }
    meta.generation += 1;
    meta.write(disk, dir)?;
    Ok((segments, meta, recovered, replay_generation, history))
}

/// Finds the end of the last segment: trusted after a clean close, otherwise walked up to the
/// checkpointed durable point and verified frame by frame after it, cutting a torn tail.
pub(super) fn recover_last(
    disk: &dyn Disk,
    last: &Segment,
    checkpoint: Option<Checkpoint>,
    recovered: &mut Recovered,
) -> Result<()> {
    let path = last.path().to_path_buf();
    let base = last.base_offset();
    if let Some(cp) = checkpoint {
        if cp.segment_base > base {
            let missing = last.path().with_file_name(tern_segment::segment::segment_file_name(cp.segment_base));
            return Err(corrupt(missing, 0, CorruptReason::Field("a synced segment is missing")));
        }
        if cp.clean && cp.segment_base == base {
            if let Ok(Some(index)) = last.read_index(disk) {
                if index.end_pos == cp.durable_pos && index.end_offset == cp.durable_end {
                    last.install(index.end_pos, index.end_offset, index.max_timestamp_ms, index.entries);
                    recovered.clean = true;
                    return Ok(());
                }
            }
        }
    }
    let claim = checkpoint.filter(|cp| cp.segment_base == base);
    let claim_pos = claim.map_or(SEGMENT_HEADER_BYTES, |cp| cp.durable_pos.max(SEGMENT_HEADER_BYTES));
    if claim_pos > last.size_bytes() {
        return Err(corrupt(path, claim_pos, CorruptReason::Field("checkpoint points past the segment")));
    }
    // The checkpointed region was verified when it was written, but a media error may have
    // damaged it since. Verify every checksum here too: an unverified walk only sees damage
    // that breaks the chain of frame lengths, so a flipped bit in a record or a timestamp
    // would let the log open and fail only later, at a read, instead of at open as promised.
    // The cost is bounded by one segment and paid only after a crash.
    let walk = last.scan(SEGMENT_HEADER_BYTES, base, Some(claim_pos), true)?;
    if let Some((pos, reason)) = walk.problem {
        return Err(corrupt(path, pos, reason));
    }
    if walk.end_pos != claim_pos || claim.is_some_and(|cp| cp.durable_end != walk.end_offset) {
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
