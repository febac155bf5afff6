//! Starting a new segment: sealing the active one and creating the next without a moment when
//! the directory holds no valid segment.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::*;

impl LogInner {
    /// Seals the active segment (synced, index written) and starts a new one that fits at
    /// least `frame_len` bytes. Called with the append lock held.
    pub(super) fn roll(&self, frame_len: u64) -> Result<Arc<Segment>> {
        let result = (|| {
            let old = self.active();
            let size = self.options.segment_size_bytes.max((SEGMENT_HEADER_BYTES + frame_len).next_multiple_of(4096));
            let base = old.end_offset();
            let replace = old.end_pos() == SEGMENT_HEADER_BYTES;
            let new = if replace {
                // An empty segment too small for this frame: replace it by a larger one.
                replace_empty_segment(&*self.disk, &self.dir, &old, size, self.options.index_interval_bytes)?
            } else {
                old.sync()?;
                old.write_index(&*self.disk)?;
                let new = Segment::create(&*self.disk, &self.dir, base, size, self.options.index_interval_bytes)?;
                new.sync()?;
                self.disk.sync_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
                new
            };
            new.set_direct_writes(self.direct_writes.load(Ordering::Relaxed));
            let new = Arc::new(new);
            let mut segments = self.segments.write();
            if replace {
                segments.pop();
            }
            segments.push(new.clone());
            drop(segments);
            // The old segment was synced whole.
            self.durable_end.fetch_max(base, Ordering::AcqRel);
            self.wake_waiters(base);
            Ok(new)
        })();
        result.inspect_err(|e| self.fence(e))
    }
}

/// Suffix of the file that a replacement segment is built in before it is renamed over the
/// segment (`<base:020>.seg.tmp`). Recovery removes a leftover one.
pub(super) const SEGMENT_TMP_SUFFIX: &str = ".tmp";

/// The temporary file a replacement of the segment at `path` is built in.
pub(super) fn segment_tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(SEGMENT_TMP_SUFFIX);
    PathBuf::from(tmp)
}

/// Replaces the empty segment `old` by an empty one of `size_bytes` at the same base.
///
/// At every instant, across a power loss, the directory holds a valid segment at that base:
/// the new file is created and synced under a temporary name, renamed over the old one, and
/// the directory is synced. Removing the old file first and creating the new one after (as
/// rolls once did) left no segment file at all, and a log that could not be opened, when power
/// failed in between and the old segment was the log's only one.
pub(super) fn replace_empty_segment(
    disk: &dyn Disk,
    dir: &Path,
    old: &Segment,
    size_bytes: u64,
    index_interval_bytes: u64,
) -> Result<Segment> {
    let base = old.base_offset();
    assert_eq!(old.end_pos(), SEGMENT_HEADER_BYTES, "replacing a segment that holds frames");
    assert_eq!(old.end_offset(), base, "replacing a segment that holds records");
    let path = old.path().to_path_buf();
    let tmp = segment_tmp_path(&path);
    if disk.exists(&tmp) {
        disk.remove(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    // An index file of the empty segment would describe the replacement just as well; it goes
    // anyway, so that no file describes a segment that no longer exists.
    let index = old.index_path();
    if disk.exists(&index) {
        disk.remove(&index).map_err(|e| Error::io(&index, e))?;
    }
    let file = disk.create(&tmp, size_bytes).map_err(|e| Error::io(&tmp, e))?;
    file.write_at(0, &encode_segment_header(base)).map_err(|e| Error::io(&tmp, e))?;
    file.sync_data().map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    disk.rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    let new = Segment::open(disk, &path, index_interval_bytes)?;
    debug_assert_eq!(new.size_bytes(), size_bytes, "the replacement segment is not the one just built");
    new.install(SEGMENT_HEADER_BYTES, base, 0, Vec::new());
    Ok(new)
}
