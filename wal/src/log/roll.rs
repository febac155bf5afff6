//! Starting a new segment: sealing the active one and creating the next without a moment when
//! the directory holds no valid segment, or a segment whose header is not durable.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::*;

impl LogInner {
    /// Seals the active segment and starts a new one that fits at least `frame_len` bytes.
    /// Called with the append lock held.
    ///
    /// # Crash safety
    /// The old segment is synced and its index written; the new one is built under a temporary
    /// name, synced, renamed into place and the directory synced ([`create_segment_file`]); then
    /// `log.meta` records it as the newest segment. A crash leaves the old segment as the newest
    /// (a leftover temporary file, or a renamed empty segment the meta does not name yet, is
    /// removed at open) or the new one, never a segment whose header is not durable.
    ///
    /// # Errors
    /// [`Error::DiskFull`] when the new segment's space cannot be allocated: nothing durable
    /// changed, the log is not fenced, and the next append tries the roll again. Any other
    /// failure fences the log.
    pub(super) fn roll(&self, frame_len: u64) -> Result<Arc<Segment>> {
        let old = self.active();
        let size = self.options.segment_size_bytes.max((SEGMENT_HEADER_BYTES + frame_len).next_multiple_of(4096));
        let base = old.end_offset();
        // An empty segment too small for this frame is replaced by a larger one at its base.
        let replace = old.end_pos() == SEGMENT_HEADER_BYTES;
        let result = (|| {
            if !replace {
                self.sync_segment(&old)?;
                old.write_index(&*self.disk)?;
            }
            let new = create_segment_file(
                &*self.disk,
                &self.dir,
                base,
                size,
                self.options.index_interval_bytes,
                replace.then_some(&*old),
            )?;
            if !replace {
                self.update_meta(|meta| {
                    meta.last_base = Some(base);
                    meta.claim = Some(Claim::empty_segment(base));
                })?;
            }
            Ok(new)
        })();
        let new = match result {
            Ok(new) => new,
            Err(e @ Error::DiskFull { .. }) => return Err(e),
            Err(e) => {
                self.fence(&e);
                return Err(e);
            }
        };
        new.set_direct_writes(self.direct_writes.load(Ordering::Relaxed));
        let new = Arc::new(new);
        let mut segments = self.segments.write();
        if replace {
            segments.pop();
        }
        segments.push(new.clone());
        Ok(new)
    }

    /// Syncs `segment` (the active one, or one about to be sealed) itself, not through the
    /// journal, and raises the ends it makes durable. Fails, without syncing, once the log is
    /// fenced: after a failed sync, a new one may report success for data that is gone.
    pub(super) fn sync_segment(&self, segment: &Segment) -> Result<()> {
        self.check_not_fenced()?;
        let end = segment.end_offset();
        segment.sync()?;
        self.check_not_fenced()?;
        self.segment_synced_end.fetch_max(end, Ordering::AcqRel);
        self.durable_end.fetch_max(end, Ordering::AcqRel);
        self.wake_waiters(end);
        Ok(())
    }

    /// Changes `log.meta` durably (under its lock) and then in memory.
    pub(super) fn update_meta(&self, change: impl FnOnce(&mut Meta)) -> Result<Meta> {
        let mut meta = self.meta.lock();
        let mut next = *meta;
        change(&mut next);
        next.write(&*self.disk, &self.dir)?;
        *meta = next;
        Ok(next)
    }
}

/// Suffix of the file a new segment is built in before it is renamed into place
/// (`<base:020>.seg.tmp`). Recovery removes a leftover one.
pub(super) const SEGMENT_TMP_SUFFIX: &str = ".tmp";

/// The temporary file a new segment at `path` is built in.
pub(super) fn segment_tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(SEGMENT_TMP_SUFFIX);
    PathBuf::from(tmp)
}

/// Creates the empty segment `<base:020>.seg` in `dir`, pre-allocated to `size_bytes`, durably
/// ([`build_segment_file`]). `replacing` names the empty segment at the same base that the new
/// one replaces (its index file goes first), if any.
///
/// # Errors
/// [`Error::DiskFull`] when the space cannot be allocated (no file is left behind); I/O errors.
pub(crate) fn create_segment_file(
    disk: &dyn Disk,
    dir: &Path,
    base: u64,
    size_bytes: u64,
    index_interval_bytes: u64,
    replacing: Option<&Segment>,
) -> Result<Segment> {
    if let Some(old) = replacing {
        assert_eq!(old.base_offset(), base, "replacing a segment at another base");
        assert_eq!(old.end_pos(), SEGMENT_HEADER_BYTES, "replacing a segment that holds frames");
        // An index file of the empty segment would describe the replacement just as well; it
        // goes anyway, so that no file describes a segment that no longer exists.
        let index = old.index_path();
        if disk.exists(&index) {
            disk.remove(&index).map_err(|e| Error::io(&index, e))?;
        }
    }
    let path = build_segment_file(disk, dir, base, size_bytes, &|_, _| Ok(()))?;
    let new = Segment::open(disk, &path, index_interval_bytes)?;
    debug_assert_eq!(new.size_bytes(), size_bytes, "the new segment is not the one just built");
    new.install(SEGMENT_HEADER_BYTES, base, 0, Vec::new());
    Ok(new)
}

/// Replaces `source` by a copy of its frames before byte `cut_pos`, durably
/// ([`build_segment_file`]), and returns the copy, which holds nothing after them. The file
/// `source` was opened from is renamed over, not written: its bytes stay as they were for every
/// reader that holds a slice of its map.
pub(super) fn copy_segment_prefix(
    disk: &dyn Disk,
    dir: &Path,
    source: &Segment,
    cut_pos: u64,
    index_interval_bytes: u64,
) -> Result<Segment> {
    const COPY_BYTES: u64 = 4 << 20;
    let base = source.base_offset();
    let copy = |file: &dyn DiskFile, tmp: &Path| -> Result<()> {
        let mut pos = SEGMENT_HEADER_BYTES;
        while pos < cut_pos {
            let end = cut_pos.min(pos + COPY_BYTES);
            let bytes = source.bytes(pos, end)?;
            file.write_at(pos, &bytes).map_err(|e| Error::io(tmp, e))?;
            pos = end;
        }
        Ok(())
    };
    let path = build_segment_file(disk, dir, base, source.size_bytes(), &copy)?;
    let new = Segment::open(disk, &path, index_interval_bytes)?;
    // The copy is read back whole: what the log keeps must be what it had.
    let report = new.scan(SEGMENT_HEADER_BYTES, base, Some(cut_pos), true)?;
    if let Some((pos, reason)) = report.problem {
        return Err(corrupt(path, pos, reason));
    }
    if report.end_pos != cut_pos {
        return Err(corrupt(path, report.end_pos, CorruptReason::Truncated { needed_bytes: cut_pos - report.end_pos }));
    }
    new.install(report.end_pos, report.end_offset, report.max_timestamp_ms, report.entries);
    Ok(new)
}

/// Builds the segment `<base:020>.seg` in `dir` durably: creates `<base:020>.seg.tmp`
/// pre-allocated to `size_bytes`, writes the header and whatever `body` writes after it,
/// syncs it, renames it over `<base:020>.seg` (which may exist) and syncs the directory.
/// Returns the segment's path.
///
/// Filesystems may make a new name and its allocation durable before the data written into
/// the file: creating a segment in place could leave, after a power loss, a segment of zeros
/// where its header should be, and a log that would not open. A synced file renamed into place
/// never does. At every instant the directory holds the old file at `base` (or none) or the
/// complete new one.
///
/// # Errors
/// [`Error::DiskFull`] when the space cannot be allocated; I/O errors. No temporary file is
/// left behind, except when removing it fails too (recovery removes it).
fn build_segment_file(
    disk: &dyn Disk,
    dir: &Path,
    base: u64,
    size_bytes: u64,
    body: &dyn Fn(&dyn DiskFile, &Path) -> Result<()>,
) -> Result<PathBuf> {
    let path = dir.join(tern_segment::segment::segment_file_name(base));
    let tmp = segment_tmp_path(&path);
    if disk.exists(&tmp) {
        disk.remove(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    let file = disk.create(&tmp, size_bytes).map_err(|e| Error::io(&tmp, e))?;
    let built = (|| {
        file.write_at(0, &encode_segment_header(base)).map_err(|e| Error::io(&tmp, e))?;
        body(&*file, &tmp)?;
        file.sync_data().map_err(|e| Error::io(&tmp, e))
    })();
    drop(file);
    if let Err(e) = built {
        let _ = disk.remove(&tmp);
        return Err(e);
    }
    disk.rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    Ok(path)
}
