//! Removing records: a prefix (retention), a suffix (a follower's divergent records), or all of
//! them (a reset before a fresh copy). Each records its intent durably first, so recovery
//! finishes what a crash interrupted.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::*;

impl Log {
    /// Deletes whole segments that hold only offsets below `offset` (retention). The last
    /// segment is never deleted, so the log start may stay below `offset`. Returns the new log
    /// start. Crash-safe: the new start is recorded durably before any file is removed.
    ///
    /// # Errors
    /// [`Error::OffsetOutOfRange`] when `offset` is past the written end; [`Error::Fenced`] or
    /// [`Error::Closed`]; I/O errors.
    pub fn truncate_prefix(&self, offset: u64) -> Result<u64> {
        self.truncate_prefix_below(offset, false)
    }

    /// [`Log::truncate_prefix`], lowering `offset` to the retention hold when `held` is set.
    /// The hold is read under the append lock, which [`Log::set_retention_hold`] also takes,
    /// so a hold set before this takes the lock is always honoured.
    pub(super) fn truncate_prefix_below(&self, offset: u64, held: bool) -> Result<u64> {
        let inner = &self.inner;
        let _st = inner.write.lock();
        inner.check_writable()?;
        let offset = if held { offset.min(inner.retention_hold.load(Ordering::Acquire)) } else { offset };
        let (start, end) = (self.start_offset(), self.written_end());
        if offset > end {
            return Err(Error::OffsetOutOfRange { offset, start, end });
        }
        let segments = inner.segments.read().clone();
        let doomed: Vec<Arc<Segment>> = segments
            .iter()
            .take(segments.len().saturating_sub(1))
            .take_while(|s| s.end_offset() <= offset)
            .cloned()
            .collect();
        let Some(new_start) = segments.get(doomed.len()).map(|s| s.base_offset()) else { return Ok(start) };
        if doomed.is_empty() {
            return Ok(start);
        }
        inner.update_meta(|meta| meta.start_offset = new_start)?;
        for segment in &doomed {
            remove_segment_files(&*inner.disk, segment)?;
        }
        inner.disk.sync_dir(&inner.dir).map_err(|e| Error::io(&inner.dir, e))?;
        inner.segments.write().drain(..doomed.len());
        inner.start_offset.store(new_start, Ordering::Release);
        Ok(new_start)
    }

    /// Applies retention: deletes the oldest segments while the log is larger than
    /// `size_bytes_max`, or while their newest record is older than `age_ms_max` at `now_ms`.
    /// Never deletes a segment holding an offset at or above the retention hold
    /// ([`Log::set_retention_hold`]). Returns the new log start.
    ///
    /// # Errors
    /// As [`Log::truncate_prefix`].
    pub fn apply_retention(&self, size_bytes_max: Option<u64>, age_ms_max: Option<u64>, now_ms: u64) -> Result<u64> {
        let segments = self.inner.segments.read().clone();
        let mut total: u64 = segments.iter().map(|s| s.end_pos()).sum();
        let mut cut = self.start_offset();
        for segment in segments.iter().take(segments.len().saturating_sub(1)) {
            let too_big = size_bytes_max.is_some_and(|max| total > max);
            let too_old = age_ms_max.is_some_and(|max| now_ms.saturating_sub(segment.max_timestamp_ms()) > max);
            if !too_big && !too_old {
                break;
            }
            total -= segment.end_pos();
            cut = segment.end_offset();
        }
        if cut > self.start_offset() {
            return self.truncate_prefix_below(cut, true);
        }
        Ok(self.start_offset())
    }

    /// Sets the retention hold: from when this returns, [`Log::apply_retention`] never deletes
    /// a segment that holds any offset at or above `hold` (it deletes only segments whose end
    /// is at most `hold`). `None` lifts the hold. A leader holds the oldest offset a peer still
    /// needs, so that the peer can catch up from the log instead of needing a fresh copy.
    ///
    /// The hold is not persisted: it lives as long as this open log and starts as `None`.
    /// [`Log::truncate_prefix`] ignores it, because it is an operator's explicit order.
    /// `Some(u64::MAX)` holds nothing, as no offset reaches it, and reads back as `None`.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use tern_wal::{Committer, Durability, Log, LogOptions};
    /// let dir = tempfile::tempdir()?;
    /// let disk: Arc<dyn tern_segment::Disk> = Arc::new(tern_segment::OsDisk::new());
    /// let committer = Committer::start(disk.clone());
    /// let options = LogOptions { segment_size_bytes: 4096, index_interval_bytes: 1024, ..LogOptions::default() };
    /// let log = Log::open(disk, dir.path(), "orders", options, committer.clone(), true)?;
    /// for _ in 0..40 {
    ///     log.append(&[&[7u8; 500]], Durability::Local)?; // rolls a segment every few appends
    /// }
    /// log.set_retention_hold(Some(0)); // a peer still needs offset 0
    /// assert_eq!(log.apply_retention(Some(0), None, 0)?, 0, "nothing deleted");
    /// log.set_retention_hold(None);
    /// assert!(log.apply_retention(Some(0), None, 0)? > 0, "now retention deletes");
    /// log.close()?;
    /// committer.stop();
    /// # Ok(()) }
    /// ```
    pub fn set_retention_hold(&self, hold: Option<u64>) {
        // Under the append lock, so that no retention run that read the old hold is still
        // deleting when this returns (see `truncate_prefix_below`).
        let _st = self.inner.write.lock();
        self.inner.retention_hold.store(hold.unwrap_or(NO_RETENTION_HOLD), Ordering::Release);
    }

    /// The retention hold set by [`Log::set_retention_hold`], if any.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use tern_wal::{Committer, Log, LogOptions};
    /// let dir = tempfile::tempdir()?;
    /// let disk: Arc<dyn tern_segment::Disk> = Arc::new(tern_segment::OsDisk::new());
    /// let committer = Committer::start(disk.clone());
    /// let log = Log::open(disk, dir.path(), "orders", LogOptions::default(), committer.clone(), true)?;
    /// assert_eq!(log.retention_hold(), None);
    /// log.set_retention_hold(Some(42));
    /// assert_eq!(log.retention_hold(), Some(42));
    /// log.close()?;
    /// committer.stop();
    /// # Ok(()) }
    /// ```
    pub fn retention_hold(&self) -> Option<u64> {
        let hold = self.inner.retention_hold.load(Ordering::Acquire);
        (hold != NO_RETENTION_HOLD).then_some(hold)
    }

    /// [`Log::truncate_suffix`], keeping what it removes: the batches from `offset` to the
    /// written end are first written, durably, to `quarantine-OFFSET-END.frames` in the log's
    /// directory (their frames back to back, the segment frame format, FORMAT.md). A
    /// replication follower uses it to cut records that diverged from its leader's log, so
    /// they stay for the operator. Returns the file's path, or `None` when nothing was cut.
    /// The caller is the log's only writer meanwhile.
    ///
    /// # Errors
    /// As [`Log::truncate_suffix`], and I/O errors writing the file (then nothing is cut).
    pub fn truncate_suffix_to_quarantine(&self, offset: u64) -> Result<Option<PathBuf>> {
        let end = self.written_end();
        if offset >= end {
            self.truncate_suffix(offset)?;
            return Ok(None);
        }
        let mut frames = Vec::new();
        let mut next = offset;
        while next < end {
            let batches = self.read_batches(next, 4 << 20, Visibility::Written)?;
            let Some(last) = batches.last() else { break };
            next = last.end_offset;
            for batch in &batches {
                frames.extend_from_slice(&batch.frame);
            }
        }
        let path = self.inner.dir.join(format!("{QUARANTINE_FILE_PREFIX}{offset}-{end}.frames"));
        tern_segment::disk::write_file_atomic(&*self.inner.disk, &path, &frames, true)
            .map_err(|e| Error::io(&path, e))?;
        self.truncate_suffix(offset)?;
        Ok(Some(path))
    }

    /// Removes every record at or after `offset`, which must be a batch boundary (replication
    /// uses this to drop a divergent suffix). Crash-safe: the truncation is recorded durably
    /// first and finished by recovery if a crash interrupts it.
    ///
    /// Bytes already handed to readers never change: when the cut falls inside a segment, the
    /// records that stay are copied into a new file that replaces it (built under a temporary
    /// name, synced, renamed into place), and appends continue there. The old file lives on,
    /// unchanged, for as long as a reader holds a slice of its map. A waiter for records the cut
    /// removed fails with [`Error::Truncated`], even once new records fill their offsets.
    ///
    /// The epoch history loses every entry that starts at or after `offset`: those epochs
    /// hold no batch any more. That includes an entry starting exactly at `offset`, such as an
    /// epoch just begun by [`Log::begin_epoch`] that wrote nothing, and it holds when `offset`
    /// is the written end, where no record is removed: a follower that cut its divergent
    /// records must accept the leader's batches of older epochs from there on. So
    /// [`Log::epoch`] may move back; a leader begins its epoch again after truncating.
    ///
    /// # Durability
    /// Durable when this returns. The records below the cut are synced into their segment
    /// first: the truncation is recorded under a new generation, which makes their journal
    /// copies stale. Then the history entries are removed durably, before any record is cut;
    /// recovery removes them too when it finishes a truncation.
    ///
    /// # Errors
    /// [`Error::OffsetOutOfRange`], [`Error::NotBatchBoundary`], [`Error::Fenced`], I/O errors.
    pub fn truncate_suffix(&self, offset: u64) -> Result<()> {
        let inner = &self.inner;
        let mut st = inner.write.lock();
        inner.check_writable()?;
        let (start, end) = (self.start_offset(), self.written_end());
        if offset < start || offset > end {
            return Err(Error::OffsetOutOfRange { offset, start, end });
        }
        let mut history = st.history.clone();
        let history_cut = history.truncate_from(offset);
        if offset == end {
            // No record goes, only the entries of epochs that have none.
            return if history_cut { inner.store_history(&mut st.history, history) } else { Ok(()) };
        }
        let segments = inner.segments.read().clone();
        if !is_batch_boundary(&segments, offset)? {
            return Err(Error::NotBatchBoundary { offset });
        }
        let result = (|| {
            inner.sync_written()?;
            let holder = kept_segments(&segments, offset).last().cloned().expect("the first segment is kept");
            let claim = Claim { segment_base: holder.base_offset(), pos: frame_pos(&holder, offset)?, end: offset };
            let meta = inner.update_meta(|meta| {
                meta.truncate_to = offset;
                meta.generation += 1;
                meta.last_base = Some(claim.segment_base);
                meta.claim = Some(claim);
            })?;
            // Journal entries staged from now on carry the new generation; none are staged
            // meanwhile (the append lock is held).
            inner.generation.store(meta.generation, Ordering::SeqCst);
            inner.truncations.fetch_add(1, Ordering::SeqCst);
            inner.remember_cut(offset);
            if history_cut {
                // After the truncation is recorded (so that a crash cannot leave the batches
                // without their entries), before the records go.
                history.write(&*inner.disk, &inner.dir)?;
                st.history = history;
            }
            let kept = cut_suffix(inner, &segments, offset)?;
            inner.update_meta(|meta| meta.truncate_to = NO_TRUNCATION)?;
            Ok(kept)
        })();
        let kept = match result {
            Ok(kept) => kept,
            Err(e) => {
                inner.fence(&e);
                return Err(e);
            }
        };
        *inner.segments.write() = kept;
        inner.direct_dirty.store(false, Ordering::SeqCst);
        inner.written_end.store(offset, Ordering::Release);
        inner.durable_end.store(offset, Ordering::Release);
        inner.segment_synced_end.store(offset, Ordering::Release);
        drop(st);
        // Waiters for cut records find the cut and fail.
        inner.wake_all_waiters();
        inner.notify_readers();
        Ok(())
    }

    /// Discards every record and makes the log empty, with its start and its next offset both
    /// at `start_offset`. A follower whose leader no longer holds the records it misses uses
    /// this before it takes a fresh copy of the leader's segments from `start_offset` on.
    ///
    /// Offsets are never reused, so `start_offset` must be at least the written end. Records
    /// written but not yet durable are synced first, so an append waiting for durability is
    /// told the truth, and a power loss during the reset finds either the whole old log or the
    /// empty log at `start_offset`.
    ///
    /// The epoch history is cleared with the records it described, and [`Log::epoch`] becomes
    /// 0: the copied batches rebuild it as [`Log::append_frames`] applies them. (Keeping the
    /// current epoch at `start_offset` instead would refuse those batches whenever their epochs
    /// are older than the one this log had reached.)
    ///
    /// # Durability
    /// Durable when this returns. When the log has an epoch history, a marker file
    /// `epochs.reset.<start_offset:020>` is created and its name synced first. The new start is
    /// then recorded in `log.meta`, under a new generation (journal entries and checkpoint
    /// slots of the discarded records are never trusted again); then the first segment at
    /// `start_offset` is created and its name synced; then the old segments are removed; then
    /// the history file and, after it, the marker. Recovery finishes a reset that a crash
    /// interrupted after the meta was replaced, clearing the history if the marker is still
    /// there (FORMAT.md "Recovery").
    ///
    /// # Errors
    /// [`Error::ResetBelowEnd`] when `start_offset` is below the written end; [`Error::Fenced`]
    /// or [`Error::Closed`]; I/O errors, after which the log is fenced and a reopen finishes or
    /// forgets the reset.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use tern_wal::{Committer, Durability, Log, LogOptions, Visibility};
    /// let dir = tempfile::tempdir()?;
    /// let disk: Arc<dyn tern_segment::Disk> = Arc::new(tern_segment::OsDisk::new());
    /// let committer = Committer::start(disk.clone());
    /// let log = Log::open(disk.clone(), dir.path(), "orders", LogOptions::default(), committer.clone(), true)?;
    /// log.append(&[b"old", b"old"], Durability::Local)?;
    /// log.reset(1000)?;
    /// assert_eq!((log.start_offset(), log.written_end()), (1000, 1000));
    /// assert_eq!(log.append(&[b"new"], Durability::Local)?, 1000..1001);
    /// log.close()?;
    /// let log = Log::open(disk, dir.path(), "orders", LogOptions::default(), committer.clone(), false)?;
    /// let records: Vec<_> = log.read(log.start_offset(), Visibility::Durable)?.collect::<Result<_, _>>()?;
    /// assert_eq!((records.len(), records[0].offset, &records[0].value[..]), (1, 1000, &b"new"[..]));
    /// log.close()?;
    /// committer.stop();
    /// # Ok(()) }
    /// ```
    pub fn reset(&self, start_offset: u64) -> Result<()> {
        let inner = &self.inner;
        let mut st = inner.write.lock();
        inner.check_writable()?;
        let end = self.written_end();
        if start_offset < end {
            return Err(Error::ResetBelowEnd { offset: start_offset, end });
        }
        let clear_history = !st.history.is_empty();
        let marker = inner.dir.join(epochs::reset_marker_name(start_offset));
        let result = (|| {
            inner.sync_written()?;
            if clear_history {
                // Until the marker is gone, recovery clears the history if the new start is
                // in effect, and otherwise removes the marker (FORMAT.md "Recovery").
                if inner.disk.exists(&marker) {
                    inner.disk.remove(&marker).map_err(|e| Error::io(&marker, e))?;
                }
                inner.disk.create(&marker, 0).map_err(|e| Error::io(&marker, e))?;
                inner.disk.sync_dir(&inner.dir).map_err(|e| Error::io(&inner.dir, e))?;
            }
            let generation = {
                let mut meta = inner.meta.lock();
                assert_eq!(meta.truncate_to, NO_TRUNCATION, "a suffix truncation was left unfinished");
                let next = Meta::new_log(meta.generation + 1, start_offset);
                next.write(&*inner.disk, &inner.dir)?;
                *meta = next;
                next.generation
            };
            // From here a crash ends in the empty log at `start_offset`; a sync of the old
            // segments still in flight must not raise the durable end or write a checkpoint.
            inner.truncations.fetch_add(1, Ordering::SeqCst);
            let old = inner.segments.read().clone();
            // An empty segment may already start at `start_offset` (the old log ended there
            // with an empty active segment): it is the new first segment as it stands.
            let reused = old.last().filter(|s| s.base_offset() == start_offset).cloned();
            if let Some(segment) = &reused {
                assert_eq!(segment.end_offset(), start_offset, "a segment at the reset start holds records");
            }
            let first = match reused {
                Some(segment) => segment,
                // The new segment's name is durable before any old one goes, so the directory
                // never holds no segment at all.
                None => Arc::new(create_segment_file(
                    &*inner.disk,
                    &inner.dir,
                    start_offset,
                    inner.options.segment_size_bytes,
                    inner.options.index_interval_bytes,
                    None,
                )?),
            };
            let doomed: Vec<&Arc<Segment>> = old.iter().filter(|s| !Arc::ptr_eq(s, &first)).collect();
            for segment in &doomed {
                remove_segment_files(&*inner.disk, segment)?;
            }
            if !doomed.is_empty() {
                inner.disk.sync_dir(&inner.dir).map_err(|e| Error::io(&inner.dir, e))?;
            }
            if clear_history {
                clear_history_then_marker(&*inner.disk, &inner.dir, &marker)?;
            }
            Ok((first, generation))
        })();
        let (first, generation) = match result {
            Ok(done) => done,
            Err(e) => {
                inner.fence(&e);
                return Err(e);
            }
        };
        // Journal entries of the discarded records carry an older generation: never replayed.
        inner.generation.store(generation, Ordering::SeqCst);
        st.history = EpochHistory::new();
        // Ends before start, so that a reader never sees the start past the end.
        *inner.segments.write() = vec![first.clone()];
        first.set_direct_writes(inner.direct_writes.load(Ordering::Relaxed));
        inner.written_end.store(start_offset, Ordering::Release);
        inner.durable_end.store(start_offset, Ordering::Release);
        inner.segment_synced_end.store(start_offset, Ordering::Release);
        inner.start_offset.store(start_offset, Ordering::Release);
        drop(st);
        inner.wake_waiters(start_offset);
        inner.notify_readers();
        Ok(())
    }
}

pub(super) fn remove_segment_files(disk: &dyn Disk, segment: &Segment) -> Result<()> {
    let index = segment.index_path();
    if disk.exists(&index) {
        disk.remove(&index).map_err(|e| Error::io(&index, e))?;
    }
    disk.remove(segment.path()).map_err(|e| Error::io(segment.path(), e))
}

/// Finishes the epoch history's part of a reset whose new start is in effect: the history
/// file goes (a missing file is an empty history) durably, and only then the reset's marker,
/// so that no crash leaves the old history without the marker that condemns it.
pub(super) fn clear_history_then_marker(disk: &dyn Disk, dir: &Path, marker: &Path) -> Result<()> {
    let path = dir.join(EPOCHS_FILE);
    if disk.exists(&path) {
        disk.remove(&path).map_err(|e| Error::io(&path, e))?;
        disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    disk.remove(marker).map_err(|e| Error::io(marker, e))?;
    disk.sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// True when some batch starts exactly at `offset` (or `offset` is a segment base).
pub(super) fn is_batch_boundary(segments: &[Arc<Segment>], offset: u64) -> Result<bool> {
    let Some(segment) = segments.iter().rev().find(|s| s.base_offset() <= offset) else { return Ok(false) };
    match frame_pos(segment, offset) {
        Ok(_) => Ok(true),
        Err(Error::NotBatchBoundary { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Position of the frame that starts at `offset` in `segment` (its end when `offset` is the end).
pub(super) fn frame_pos(segment: &Segment, offset: u64) -> Result<u64> {
    if offset <= segment.base_offset() {
        return Ok(SEGMENT_HEADER_BYTES);
    }
    if offset >= segment.end_offset() {
        return Ok(segment.end_pos());
    }
    let (pos, from) = segment.seek(offset);
    let report = segment.scan(pos, from, Some(segment.end_pos()), false)?;
    // Walk again, stopping at the frame that starts at `offset`.
    let bytes = segment.bytes(pos, report.end_pos)?;
    let (mut at, mut next) = (pos, from);
    while next < offset {
        let rel = (at - pos) as usize;
        let Ok(Some((header, len))) = frame::decode_header_unverified(bytes.get(rel..).unwrap_or_default()) else {
            break;
        };
        at += len as u64;
        next = header.end_offset();
    }
    if next != offset {
        return Err(Error::NotBatchBoundary { offset });
    }
    Ok(at)
}

/// The segments that keep records below `offset`: those that start below it, and the first
/// one always (a cut at the log start empties it).
fn kept_segments(segments: &[Arc<Segment>], offset: u64) -> &[Arc<Segment>] {
    let keep = 1 + segments.iter().skip(1).take_while(|s| s.base_offset() < offset).count();
    segments.get(..keep.min(segments.len())).unwrap_or_default()
}

/// Removes every record at or after `offset` from an open log, without changing a byte a
/// reader may hold: later segments go, newest first; when the cut falls inside the segment
/// holding `offset`, that segment is replaced by a copy of the frames below the cut. Returns
/// the segments that remain. Called with the append lock held, the truncation recorded.
fn cut_suffix(inner: &LogInner, segments: &[Arc<Segment>], offset: u64) -> Result<Vec<Arc<Segment>>> {
    let (disk, dir) = (&*inner.disk, inner.dir.as_path());
    let mut kept = kept_segments(segments, offset).to_vec();
    for segment in segments.iter().skip(kept.len()).rev() {
        remove_segment_files(disk, segment)?;
    }
    let holder = kept.last().cloned().expect("the first segment is kept");
    // Appends continue in this segment: an index file would describe it wrongly.
    let index = holder.index_path();
    if disk.exists(&index) {
        disk.remove(&index).map_err(|e| Error::io(&index, e))?;
    }
    disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    if offset < holder.end_offset() {
        let cut_pos = frame_pos(&holder, offset)?;
        let copy = copy_segment_prefix(disk, dir, &holder, cut_pos, inner.options.index_interval_bytes)?;
        copy.set_direct_writes(inner.direct_writes.load(Ordering::Relaxed));
        if let Some(last) = kept.last_mut() {
            *last = Arc::new(copy);
        }
    }
    Ok(kept)
}
