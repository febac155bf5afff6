//! One segment file: a header, then batch frames back to back, then zeros up to the
//! pre-allocated size; and its sparse offset index.
//!
//! Format (FORMAT.md, "Segment file" and "Index file"), little-endian:
//! segment header `{ magic "TERNSEG\0" | version u32 | flags u32 | base_offset u64 | reserved u32 | crc32 u32 }`,
//! index file `{ magic "TERNIDX\0" | version u32 | entry_count u32 | base_offset u64 | end_offset u64 |
//! end_pos u64 | max_timestamp_ms u64 | reserved u32 | crc32 u32 | entries: { offset_delta u32 | pos u32 } * entry_count }`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::cursor::Cursor;
use crate::disk::{read_small_file, write_file_atomic, Disk, DiskFile};
use crate::error::{CorruptReason, Error, Result};
use crate::frame::{self, Frame};

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TERNSEG\0";
/// Segment file format version written by this build.
pub const SEGMENT_VERSION: u32 = 1;
/// Bytes of the segment file header; the first frame starts here.
pub const SEGMENT_HEADER_BYTES: u64 = 32;
/// Magic bytes at the start of every index file.
pub const INDEX_MAGIC: [u8; 8] = *b"TERNIDX\0";
/// Index file format version written by this build.
pub const INDEX_VERSION: u32 = 1;
/// Bytes of the index file header.
pub const INDEX_HEADER_BYTES: usize = 56;
/// Bytes of one index entry.
pub const INDEX_ENTRY_BYTES: usize = 8;
/// Largest segment a `u32` index position can address.
pub const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;

/// Extension of segment files, named `{base_offset:020}.seg`.
pub const SEGMENT_EXT: &str = "seg";
/// Extension of index files, named `{base_offset:020}.idx`.
pub const INDEX_EXT: &str = "idx";

/// File name of the segment whose first offset is `base_offset`.
pub fn segment_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.{SEGMENT_EXT}")
}

/// Parses `{base_offset:020}.seg` (or `.idx` with `ext`) back into the base offset.
pub fn parse_file_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// One entry of the sparse index: the frame starting at `pos` holds `offset` first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// First record offset of the frame.
    pub offset: u64,
    /// Byte position of the frame in the segment file.
    pub pos: u64,
}

/// Encodes a segment header.
pub fn encode_segment_header(base_offset: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut out = [0u8; SEGMENT_HEADER_BYTES as usize];
    let mut w = Vec::with_capacity(32);
    w.extend_from_slice(&SEGMENT_MAGIC);
    w.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
    w.extend_from_slice(&0u32.to_le_bytes());
    w.extend_from_slice(&base_offset.to_le_bytes());
    w.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32fast::hash(&w);
    w.extend_from_slice(&crc.to_le_bytes());
    out.copy_from_slice(&w);
    out
}

/// Decodes a segment header and returns the base offset it names.
pub fn decode_segment_header(buf: &[u8]) -> Result<u64, CorruptReason> {
    let mut cur = Cursor::new(buf);
    let covered = cur.clone().take(28)?;
    if cur.take(8)? != SEGMENT_MAGIC {
        return Err(CorruptReason::Magic);
    }
    let version = cur.u32_le()?;
    let flags = cur.u32_le()?;
    let base_offset = cur.u64_le()?;
    let reserved = cur.u32_le()?;
    let stored = cur.u32_le()?;
    let computed = crc32fast::hash(covered);
    if stored != computed {
        return Err(CorruptReason::Checksum { stored, computed });
    }
    if version != SEGMENT_VERSION {
        return Err(CorruptReason::Version { found: version });
    }
    if flags != 0 {
        return Err(CorruptReason::Field("segment flags"));
    }
    if reserved != 0 {
        return Err(CorruptReason::Field("segment reserved"));
    }
    Ok(base_offset)
}

/// The content of an index file: where a sealed segment ends, and its sparse entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFile {
    /// Base offset of the segment.
    pub base_offset: u64,
    /// One past the last record of the segment.
    pub end_offset: u64,
    /// One past the last frame byte of the segment.
    pub end_pos: u64,
    /// Largest record timestamp in the segment (0 when empty), for retention by age.
    pub max_timestamp_ms: u64,
    /// Sparse entries in increasing offset and position order.
    pub entries: Vec<IndexEntry>,
}

impl IndexFile {
    /// Encodes the index file (FORMAT.md "Index file").
    #[expect(clippy::cast_possible_truncation)] // NOTE: positions are bounded by SEGMENT_BYTES_MAX and deltas by the segment's record count
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(INDEX_HEADER_BYTES + self.entries.len() * INDEX_ENTRY_BYTES);
        w.extend_from_slice(&INDEX_MAGIC);
        w.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        w.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        w.extend_from_slice(&self.base_offset.to_le_bytes());
        w.extend_from_slice(&self.end_offset.to_le_bytes());
        w.extend_from_slice(&self.end_pos.to_le_bytes());
        w.extend_from_slice(&self.max_timestamp_ms.to_le_bytes());
        w.extend_from_slice(&0u32.to_le_bytes());
        w.extend_from_slice(&0u32.to_le_bytes()); // crc, patched below
        for e in &self.entries {
            w.extend_from_slice(&((e.offset - self.base_offset) as u32).to_le_bytes());
            w.extend_from_slice(&(e.pos as u32).to_le_bytes());
        }
        let crc = index_crc(&w);
        w[52..56].copy_from_slice(&crc.to_le_bytes());
        w
    }

    /// Decodes and validates an index file.
    pub fn decode(buf: &[u8]) -> Result<IndexFile, CorruptReason> {
        let mut cur = Cursor::new(buf);
        if cur.take(8)? != INDEX_MAGIC {
            return Err(CorruptReason::Magic);
        }
        let version = cur.u32_le()?;
        let entry_count = cur.u32_le()?;
        let base_offset = cur.u64_le()?;
        let end_offset = cur.u64_le()?;
        let end_pos = cur.u64_le()?;
        let max_timestamp_ms = cur.u64_le()?;
        let reserved = cur.u32_le()?;
        let stored = cur.u32_le()?;
        // Bound the count by the bytes present before trusting it.
        if entry_count as usize != cur.remaining_bytes() / INDEX_ENTRY_BYTES
            || !cur.remaining_bytes().is_multiple_of(INDEX_ENTRY_BYTES)
        {
            return Err(CorruptReason::Field("index entry count"));
        }
        let computed = index_crc(buf);
        if stored != computed {
            return Err(CorruptReason::Checksum { stored, computed });
        }
        if version != INDEX_VERSION {
            return Err(CorruptReason::Version { found: version });
        }
        if reserved != 0 {
            return Err(CorruptReason::Field("index reserved"));
        }
        if end_offset < base_offset || !(SEGMENT_HEADER_BYTES..=SEGMENT_BYTES_MAX).contains(&end_pos) {
            return Err(CorruptReason::Field("index end"));
        }
        let mut entries = Vec::with_capacity(entry_count as usize);
        let mut last: Option<IndexEntry> = None;
        for _ in 0..entry_count {
            let offset =
                base_offset.checked_add(u64::from(cur.u32_le()?)).ok_or(CorruptReason::Field("index offset"))?;
            let pos = u64::from(cur.u32_le()?);
            let entry = IndexEntry { offset, pos };
            let ordered = last.is_none_or(|l| l.offset < offset && l.pos < pos);
            if !ordered || offset >= end_offset || pos >= end_pos || pos < SEGMENT_HEADER_BYTES {
                return Err(CorruptReason::Field("index entry"));
            }
            entries.push(entry);
            last = Some(entry);
        }
        Ok(IndexFile { base_offset, end_offset, end_pos, max_timestamp_ms, entries })
    }
}

fn index_crc(buf: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(buf.get(..52).unwrap_or_default());
    h.update(buf.get(56..).unwrap_or_default());
    h.finalize()
}

/// What a frame-by-frame walk of a segment found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// One past the last valid frame.
    pub end_pos: u64,
    /// One past the last record of the last valid frame.
    pub end_offset: u64,
    /// Index entries for the valid frames walked.
    pub entries: Vec<IndexEntry>,
    /// Frames walked.
    pub frame_count: u64,
    /// Largest record timestamp of the frames walked.
    pub max_timestamp_ms: u64,
    /// The first invalid frame, if the walk did not end at a clean end of data.
    pub problem: Option<(u64, CorruptReason)>,
}

/// A segment file, open for reading and, when it is the last one of its log, for appending.
#[derive(Debug)]
pub struct Segment {
    path: PathBuf,
    base_offset: u64,
    file: Arc<dyn DiskFile>,
    size_bytes: u64,
    index_interval_bytes: u64,
    end_pos: AtomicU64,
    end_offset: AtomicU64,
    max_timestamp_ms: AtomicU64,
    index: RwLock<Vec<IndexEntry>>,
    /// The aligned copy of the whole blocks of a large frame, reused between writes.
    direct_buf: parking_lot::Mutex<crate::disk::AlignedBuf>,
    /// Frames of at least this many bytes are written with O_DIRECT.
    direct_write_bytes_min: std::sync::atomic::AtomicUsize,
    /// Where the last read of whole batches ended: a shipper's next read starts there instead
    /// of walking every frame after the sparse index entry before it.
    read_hint: parking_lot::Mutex<ReadHint>,
    /// Syncs of this file run one at a time, and remember a failure (see [`Segment::lock_sync`]).
    sync_state: parking_lot::Mutex<SyncState>,
}

/// Whether a sync of a segment file ever failed.
#[derive(Debug, Default)]
struct SyncState {
    failed: Option<String>,
}

/// Held while a segment file is synced: syncs of one file never run at once, and once one
/// failed, every later one fails too.
///
/// On Linux a failed `fdatasync` may drop the dirty pages it was to write, and the error is
/// reported once: a second sync, or one that ran at the same time on the same open file,
/// reports success although the data never reached the disk. So a failure is remembered here,
/// under the same lock that every sync of the file holds, and nobody syncs the file again.
#[derive(Debug)]
pub struct SyncGuard<'a> {
    segment: &'a Segment,
    state: parking_lot::MutexGuard<'a, SyncState>,
}

impl SyncGuard<'_> {
    /// `Err` when an earlier sync of this segment failed: nothing written since it opened can
    /// be made durable any more.
    pub fn check(&self) -> Result<()> {
        match &self.state.failed {
            None => Ok(()),
            Some(reason) => Err(Error::io(
                &self.segment.path,
                io::Error::other(format!("an earlier sync of this segment failed ({reason}); it is never retried")),
            )),
        }
    }

    /// Records the outcome of a sync made while holding this guard, and returns it.
    pub fn record(&mut self, result: io::Result<()>) -> Result<()> {
        if let Err(e) = &result {
            self.state.failed.get_or_insert_with(|| e.to_string());
        }
        result.map_err(|e| Error::io(&self.segment.path, e))
    }
}

/// A frame boundary a read ended at, valid while `generation` is the segment's: every
/// [`Segment::install`] (a truncation, a recovery) starts a new one.
#[derive(Debug, Default, Clone, Copy)]
struct ReadHint {
    generation: u64,
    /// (first offset of the frame there, its position)
    at: Option<(u64, u64)>,
}

/// Frames of at least this many bytes are written around the page cache (O_DIRECT), where the
/// file layer supports it: on this machine sequential 1 MiB writes reach several times the
/// buffered rate that way.
pub const DIRECT_WRITE_BYTES_MIN: usize = 256 << 10;

impl Segment {
    /// Creates the segment file `{base_offset}.seg` in `dir`, pre-allocated to `size_bytes`,
    /// and writes its header. Neither the file nor its name is durable until the caller syncs
    /// the file and the directory.
    pub fn create(
        disk: &dyn Disk,
        dir: &Path,
        base_offset: u64,
        size_bytes: u64,
        index_interval_bytes: u64,
    ) -> Result<Segment> {
        let path = dir.join(segment_file_name(base_offset));
        assert!(size_bytes > SEGMENT_HEADER_BYTES && size_bytes <= SEGMENT_BYTES_MAX, "segment size {size_bytes}");
        let file = disk.create(&path, size_bytes).map_err(|e| Error::io(&path, e))?;
        file.write_at(0, &encode_segment_header(base_offset)).map_err(|e| Error::io(&path, e))?;
        Ok(Segment::with_file(path, file, base_offset, size_bytes, index_interval_bytes))
    }

    fn with_file(
        path: PathBuf,
        file: Arc<dyn DiskFile>,
        base_offset: u64,
        size_bytes: u64,
        index_interval_bytes: u64,
    ) -> Segment {
        Segment {
            path,
            base_offset,
            file,
            size_bytes,
            index_interval_bytes: index_interval_bytes.max(1),
            end_pos: AtomicU64::new(SEGMENT_HEADER_BYTES),
            end_offset: AtomicU64::new(base_offset),
            max_timestamp_ms: AtomicU64::new(0),
            index: RwLock::new(Vec::new()),
            direct_buf: parking_lot::Mutex::new(crate::disk::AlignedBuf::default()),
            direct_write_bytes_min: std::sync::atomic::AtomicUsize::new(DIRECT_WRITE_BYTES_MIN),
            read_hint: parking_lot::Mutex::new(ReadHint::default()),
            sync_state: parking_lot::Mutex::new(SyncState::default()),
        }
    }

    /// Opens an existing segment file and checks its header. Its end is unknown until
    /// [`Segment::install`] is called with the result of a scan or of its index file.
    pub fn open(disk: &dyn Disk, path: &Path, index_interval_bytes: u64) -> Result<Segment> {
        let file = disk.open(path).map_err(|e| Error::io(path, e))?;
        let size_bytes = file.len().map_err(|e| Error::io(path, e))?;
        let corrupt = |reason| Error::Corrupt { file: path.to_path_buf(), pos: 0, reason };
        if size_bytes < SEGMENT_HEADER_BYTES {
            return Err(corrupt(CorruptReason::Truncated { needed_bytes: SEGMENT_HEADER_BYTES - size_bytes }));
        }
        if size_bytes > SEGMENT_BYTES_MAX {
            return Err(corrupt(CorruptReason::Field("segment larger than 4 GiB")));
        }
        // Copied, not mapped: faulting in a map here would read ahead far more than 32 bytes.
        let header = file.read_copy(0, SEGMENT_HEADER_BYTES).map_err(|e| Error::io(path, e))?;
        let base_offset = decode_segment_header(&header).map_err(corrupt)?;
        if parse_file_name(&path.file_name().unwrap_or_default().to_string_lossy(), SEGMENT_EXT) != Some(base_offset) {
            return Err(corrupt(CorruptReason::Field("base offset does not match the file name")));
        }
        Ok(Segment::with_file(path.to_path_buf(), file, base_offset, size_bytes, index_interval_bytes))
    }

    /// Path of the segment file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of this segment's index file.
    pub fn index_path(&self) -> PathBuf {
        self.path.with_extension(INDEX_EXT)
    }

    /// First record offset of the segment.
    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }

    /// One past the last record appended.
    pub fn end_offset(&self) -> u64 {
        self.end_offset.load(Ordering::Acquire)
    }

    /// One past the last frame byte appended.
    pub fn end_pos(&self) -> u64 {
        self.end_pos.load(Ordering::Acquire)
    }

    /// Pre-allocated size of the file.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The file, for syncing.
    pub fn file(&self) -> &Arc<dyn DiskFile> {
        &self.file
    }

    /// Bytes still free for frames.
    pub fn remaining_bytes(&self) -> u64 {
        self.size_bytes.saturating_sub(self.end_pos())
    }

    /// Largest record timestamp appended or recovered (0 when empty).
    pub fn max_timestamp_ms(&self) -> u64 {
        self.max_timestamp_ms.load(Ordering::Acquire)
    }

    /// Sets the end and the index after recovery, a scan or a truncation.
    pub fn install(&self, end_pos: u64, end_offset: u64, max_timestamp_ms: u64, entries: Vec<IndexEntry>) {
        assert!(
            end_pos >= SEGMENT_HEADER_BYTES && end_pos <= self.size_bytes,
            "end_pos {end_pos} outside {}",
            self.size_bytes
        );
        assert!(end_offset >= self.base_offset, "end_offset {end_offset} < base {}", self.base_offset);
        *self.index.write() = entries;
        {
            let mut hint = self.read_hint.lock();
            hint.generation += 1;
            hint.at = None;
        }
        self.max_timestamp_ms.store(max_timestamp_ms, Ordering::Release);
        self.end_pos.store(end_pos, Ordering::Release);
        self.end_offset.store(end_offset, Ordering::Release);
    }

    /// Appends one encoded frame holding `base_offset..end_offset` at the end.
    ///
    /// The caller is the only writer of this segment and checked that the frame fits. The new
    /// end is published only after the write completed, so readers never see a partial frame.
    pub fn append(&self, frame_bytes: &[u8], base_offset: u64, end_offset: u64, max_timestamp_ms: u64) -> Result<()> {
        self.append_run(frame_bytes, &[(0, base_offset)], end_offset, max_timestamp_ms)
    }

    /// Appends consecutive encoded frames with one write: `frames` holds them back to back,
    /// `starts` the position of each in `frames` (the first at 0) with its first offset (the
    /// first at [`Segment::end_offset`]), and they hold everything up to `end_offset`.
    ///
    /// The caller is the only writer of this segment and checked that the frames fit and
    /// decode. The new end is published only after the write completed.
    pub fn append_run(
        &self,
        frames: &[u8],
        starts: &[(u64, u64)],
        end_offset: u64,
        max_timestamp_ms: u64,
    ) -> Result<()> {
        let pos = self.end_pos();
        let first = starts.first().map_or(end_offset, |&(_, base)| base);
        assert_eq!(first, self.end_offset(), "offsets must be dense in {}", self.path.display());
        assert!(end_offset > first, "empty frame");
        let new_end = pos + frames.len() as u64;
        assert!(new_end <= self.size_bytes, "frame does not fit in {}", self.path.display());
        if !self.write_around_page_cache(pos, frames)? {
            self.file.write_at(pos, frames).map_err(|e| Error::io(&self.path, e))?;
        }
        for &(rel, base) in starts {
            self.note_frame(pos + rel, base);
        }
        self.max_timestamp_ms.fetch_max(max_timestamp_ms, Ordering::AcqRel);
        self.end_pos.store(new_end, Ordering::Release);
        self.end_offset.store(end_offset, Ordering::Release);
        Ok(())
    }

    /// Writes a large frame mostly around the page cache: the whole blocks strictly inside the
    /// frame with O_DIRECT, and its head (up to the first block boundary) and tail (after the
    /// last whole block) through the page cache. A direct write thus never shares a block with
    /// a buffered write or with bytes a reader may see through the map (open(2) warns against
    /// mixing the two on one block), and no byte before `pos` (published) or after the frame is
    /// written. Returns false, having written nothing, when the frame is below the threshold,
    /// holds no whole block, or the file layer has no direct writes.
    fn write_around_page_cache(&self, pos: u64, frame_bytes: &[u8]) -> Result<bool> {
        let align = crate::disk::DIRECT_ALIGN_BYTES as u64;
        let end = pos + frame_bytes.len() as u64;
        let (inner_start, inner_end) = (pos.next_multiple_of(align), end - end % align);
        let direct_min = self.direct_write_bytes_min.load(Ordering::Relaxed);
        if frame_bytes.len() < direct_min || inner_start >= inner_end {
            return Ok(false);
        }
        // The segment header is in block 0, before every frame: it always stays buffered.
        debug_assert!(inner_start >= align && pos >= SEGMENT_HEADER_BYTES);
        let rel = |at: u64| (at - pos) as usize;
        let (head, rest) = frame_bytes.split_at(rel(inner_start));
        let (inner, tail) = rest.split_at(rel(inner_end) - rel(inner_start));
        // The whole blocks first: if the file layer refuses them, nothing is written yet and
        // the caller writes the whole frame through the page cache.
        let io = |e| Error::io(&self.path, e);
        let written = if (inner.as_ptr() as usize).is_multiple_of(align as usize) {
            self.file.write_direct(inner_start, inner).map_err(io)?
        } else {
            let mut buf = self.direct_buf.lock();
            buf.clear();
            buf.extend_from_slice(inner);
            self.file.write_direct(inner_start, buf.as_slice()).map_err(io)?
        };
        if !written {
            return Ok(false);
        }
        if !head.is_empty() {
            self.file.write_at(pos, head).map_err(io)?;
        }
        if !tail.is_empty() {
            self.file.write_at(inner_end, tail).map_err(io)?;
        }
        Ok(true)
    }

    /// Whether large frames ([`DIRECT_WRITE_BYTES_MIN`] and more) are written with O_DIRECT
    /// (the default) or through the page cache, where a reader that comes right after finds
    /// them (a replication leader's shipper).
    pub fn set_direct_writes(&self, on: bool) {
        let min = if on { DIRECT_WRITE_BYTES_MIN } else { usize::MAX };
        self.direct_write_bytes_min.store(min, Ordering::Relaxed);
    }

    fn note_frame(&self, pos: u64, offset: u64) {
        let mut index = self.index.write();
        let due = index.last().is_none_or(|last| pos >= last.pos.saturating_add(self.index_interval_bytes));
        if due {
            index.push(IndexEntry { offset, pos });
        }
    }

    /// Position of the frame to start reading at to find `offset`: the indexed frame with the
    /// largest first offset not above it, or where the last read ended if that is closer
    /// ([`Segment::note_read_end`]). Frames from there on must be walked.
    pub fn seek(&self, offset: u64) -> (u64, u64) {
        let indexed = {
            let index = self.index.read();
            let i = index.partition_point(|e| e.offset <= offset);
            match i.checked_sub(1).and_then(|i| index.get(i)) {
                Some(e) => (e.pos, e.offset),
                None => (SEGMENT_HEADER_BYTES, self.base_offset),
            }
        };
        match self.read_hint.lock().at {
            Some((hint_offset, hint_pos)) if hint_offset <= offset && hint_offset > indexed.1 => {
                (hint_pos, hint_offset)
            }
            _ => indexed,
        }
    }

    /// The current generation of read hints, to pass to [`Segment::note_read_end`]: take it
    /// before reading.
    pub fn read_generation(&self) -> u64 {
        self.read_hint.lock().generation
    }

    /// Notes that a read of whole frames, begun in `generation`, ended at `pos`, where the
    /// frame holding `offset` first starts (or the segment's end). Ignored if the segment was
    /// truncated or recovered since the read began.
    pub fn note_read_end(&self, generation: u64, offset: u64, pos: u64) {
        let mut hint = self.read_hint.lock();
        if hint.generation == generation && pos <= self.end_pos() {
            hint.at = Some((offset, pos));
        }
    }

    /// The bytes `from_pos..to_pos`: on [`crate::disk::OsDisk`] a slice of the map when they
    /// are in the page cache, a copy otherwise. The residency check costs one `mincore` over
    /// the whole range, so ask for what will be looked at, not for the rest of the segment.
    pub fn bytes(&self, from_pos: u64, to_pos: u64) -> Result<Bytes> {
        self.file.read_at(from_pos, to_pos.saturating_sub(from_pos)).map_err(|e| Error::io(&self.path, e))
    }

    /// Walks frames from `from_pos` (where offset `from_offset` must start) verifying each
    /// checksum (when `verify`) and the offset continuity, until a zero length, the end of the
    /// file, `to_pos`, or the first invalid frame.
    ///
    /// Reads [`SCAN_WINDOW_BYTES`] at a time (more when one frame is longer), so a range not
    /// in the page cache, which the file layer copies, is copied a window at a time.
    pub fn scan(&self, from_pos: u64, from_offset: u64, to_pos: Option<u64>, verify: bool) -> Result<ScanReport> {
        self.scan_in_windows(from_pos, from_offset, to_pos, verify, SCAN_WINDOW_BYTES)
    }

    fn scan_in_windows(
        &self,
        from_pos: u64,
        from_offset: u64,
        to_pos: Option<u64>,
        verify: bool,
        window_bytes: u64,
    ) -> Result<ScanReport> {
        let limit = to_pos.unwrap_or(self.size_bytes).min(self.size_bytes);
        let mut window_start = from_pos;
        let mut bytes = self.bytes(from_pos, limit.min(from_pos.saturating_add(window_bytes)))?;
        let mut report = ScanReport {
            end_pos: from_pos,
            end_offset: from_offset,
            entries: Vec::new(),
            frame_count: 0,
            max_timestamp_ms: 0,
            problem: None,
        };
        let mut last_indexed: Option<u64> = None;
        while let Some(rest) = bytes.get((report.end_pos - window_start) as usize..) {
            // A frame the window cuts off is read again in a window of its own, so every
            // decision below sees what a read of everything up to `limit` would show.
            let needed = frame_bytes_needed(rest);
            if rest.len() < needed && window_start + (bytes.len() as u64) < limit {
                window_start = report.end_pos;
                let end = limit.min(window_start.saturating_add(window_bytes.max(needed as u64)));
                bytes = self.bytes(window_start, end)?;
                continue;
            }
            if rest.len() < frame::FRAME_PREFIX_BYTES {
                if rest.iter().any(|b| *b != 0) {
                    report.problem = Some((
                        report.end_pos,
                        CorruptReason::Truncated { needed_bytes: (frame::FRAME_PREFIX_BYTES - rest.len()) as u64 },
                    ));
                }
                break;
            }
            let decoded = if verify {
                frame::decode(rest).map(|f| f.map(|f| (f.header, f.frame_len)))
            } else {
                frame::decode_header_unverified(rest)
            };
            match decoded {
                Ok(None) => break,
                Ok(Some((header, frame_len))) => {
                    if header.base_offset != report.end_offset {
                        let reason =
                            CorruptReason::Discontinuity { expected: report.end_offset, found: header.base_offset };
                        report.problem = Some((report.end_pos, reason));
                        break;
                    }
                    if last_indexed.is_none_or(|p| report.end_pos >= p.saturating_add(self.index_interval_bytes)) {
                        report.entries.push(IndexEntry { offset: report.end_offset, pos: report.end_pos });
                        last_indexed = Some(report.end_pos);
                    }
                    report.end_pos += frame_len as u64;
                    report.end_offset = header.end_offset();
                    report.max_timestamp_ms = report.max_timestamp_ms.max(header.max_timestamp_ms);
                    report.frame_count += 1;
                }
                Err(reason) => {
                    report.problem = Some((report.end_pos, reason));
                    break;
                }
            }
        }
        Ok(report)
    }

    /// The first position at or after `from_pos` where a frame with a valid checksum starts,
    /// for tools that report every damaged place instead of stopping at the first.
    pub fn resync(&self, from_pos: u64) -> Result<Option<(u64, u64)>> {
        let bytes = self.bytes(from_pos, self.size_bytes)?;
        let mut rel = 0usize;
        while let Some(rest) = bytes.get(rel..) {
            if rest.len() < frame::FRAME_PREFIX_BYTES + frame::BATCH_HEADER_BYTES {
                return Ok(None);
            }
            // Cheap plausibility checks first, so the checksum runs only on likely frames.
            let plausible = frame::peek_body_len(rest)
                .is_some_and(|len| len as usize >= frame::BATCH_HEADER_BYTES && len as usize <= rest.len() - 8)
                && rest.get(8) == Some(&frame::BATCH_VERSION)
                && rest.get(9..12) == Some(&[0, 0, 0]);
            if plausible {
                if let Ok(Some(f)) = frame::decode(rest) {
                    return Ok(Some((from_pos + rel as u64, f.header.base_offset)));
                }
            }
            rel += 1;
        }
        Ok(None)
    }

    /// Writes the index file for this segment (atomically, not yet durable by name).
    pub fn write_index(&self, disk: &dyn Disk) -> Result<()> {
        let index = IndexFile {
            base_offset: self.base_offset,
            end_offset: self.end_offset(),
            end_pos: self.end_pos(),
            max_timestamp_ms: self.max_timestamp_ms(),
            entries: self.index.read().clone(),
        };
        let path = self.index_path();
        write_file_atomic(disk, &path, &index.encode(), false).map_err(|e| Error::io(&path, e))
    }

    /// Reads this segment's index file. `Ok(None)` when it does not exist.
    pub fn read_index(&self, disk: &dyn Disk) -> Result<Option<IndexFile>> {
        let path = self.index_path();
        if !disk.exists(&path) {
            return Ok(None);
        }
        let len_max = (INDEX_HEADER_BYTES as u64)
            + (self.size_bytes / frame::FRAME_PREFIX_BYTES as u64 + 1) * INDEX_ENTRY_BYTES as u64;
        let bytes = read_small_file(disk, &path, len_max).map_err(|e| Error::io(&path, e))?;
        let index =
            IndexFile::decode(&bytes).map_err(|reason| Error::Corrupt { file: path.clone(), pos: 0, reason })?;
        if index.base_offset != self.base_offset || index.end_pos > self.size_bytes {
            return Err(Error::Corrupt {
                file: path,
                pos: 0,
                reason: CorruptReason::Field("index does not match its segment"),
            });
        }
        Ok(Some(index))
    }

    /// Overwrites with zeros every non-zero byte from `from_pos` to the end of the file, so
    /// that stale frames past a cut can never be mistaken for data. Not durable until synced.
    pub fn zero_tail(&self, from_pos: u64) -> Result<()> {
        let Some(end) = self.nonzero_end(from_pos)? else { return Ok(()) };
        let zeros = vec![0u8; 1 << 20];
        let mut pos = from_pos;
        while pos < end {
            let n = (end - pos).min(zeros.len() as u64);
            self.file
                .write_at(pos, zeros.get(..n as usize).unwrap_or_default())
                .map_err(|e| Error::io(&self.path, e))?;
            pos += n;
        }
        Ok(())
    }

    /// One past the last non-zero byte at or after `from_pos`, or `None` when only zeros
    /// follow. Reads only the regions the file layer says may hold data.
    pub fn nonzero_end(&self, from_pos: u64) -> Result<Option<u64>> {
        let regions = self.file.data_regions(from_pos, self.size_bytes).map_err(|e| Error::io(&self.path, e))?;
        for region in regions.iter().rev() {
            let bytes = self.bytes(region.start, region.end)?;
            if let Some(last) = bytes.iter().rposition(|b| *b != 0) {
                return Ok(Some(region.start + last as u64 + 1));
            }
        }
        Ok(None)
    }

    /// Syncs the segment's data. Fails without syncing when an earlier sync of this segment
    /// failed ([`SyncGuard`]).
    pub fn sync(&self) -> Result<()> {
        let mut guard = self.lock_sync();
        guard.check()?;
        let result = self.file.sync_data();
        guard.record(result)
    }

    /// Takes the segment's sync lock, for a caller that syncs the file itself (several files
    /// at once, [`crate::Disk::sync_files`]): check the guard first, record the result after.
    pub fn lock_sync(&self) -> SyncGuard<'_> {
        SyncGuard { segment: self, state: self.sync_state.lock() }
    }
}

/// Bytes [`Segment::scan`] reads and walks at a time (more when one frame is longer).
pub const SCAN_WINDOW_BYTES: u64 = 4 << 20;

/// Bytes at the start of `rest` that decoding a frame there looks at: the prefix, and the
/// body its length declares when that is within the frame limit (a longer one is an error
/// found from the prefix alone).
fn frame_bytes_needed(rest: &[u8]) -> usize {
    let body_len = frame::peek_body_len(rest).filter(|len| *len <= frame::FRAME_BODY_BYTES_MAX).unwrap_or(0);
    frame::FRAME_PREFIX_BYTES + body_len as usize
}

/// Decodes the frame at the start of `bytes` and returns it with its byte length, mapping a
/// bad frame to [`Error::Corrupt`] at `pos` of `file`.
pub fn decode_at<'a>(bytes: &'a [u8], file: &Path, pos: u64) -> Result<Option<Frame<'a>>> {
    frame::decode(bytes).map_err(|reason| Error::Corrupt { file: file.to_path_buf(), pos, reason })
}

/// Checks that `result` is `NotFound`; other errors stay errors.
pub fn not_found_ok<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode, BatchMeta, Record};
    use crate::sim::SimDisk;

    fn frame_of(base: u64, n: usize) -> Vec<u8> {
        let values: Vec<Vec<u8>> = (0..n).map(|i| format!("v{}", base + i as u64).into_bytes()).collect();
        let records: Vec<_> = values.iter().map(|v| Record::new(v, 1)).collect();
        let mut out = Vec::new();
        encode(&mut out, &BatchMeta { base_offset: base, ..Default::default() }, &records).unwrap();
        out
    }

    #[test]
    fn appended_frames_scan_back_and_index_round_trips() {
        let disk = SimDisk::new();
        let dir = Path::new("/log");
        let seg = Segment::create(&disk, dir, 100, 4096, 64).unwrap();
        let mut offset = 100;
        for n in 1..6 {
            let f = frame_of(offset, n);
            seg.append(&f, offset, offset + n as u64, 1).unwrap();
            offset += n as u64;
        }
        let report = seg.scan(SEGMENT_HEADER_BYTES, 100, None, true).unwrap();
        assert_eq!(report.problem, None);
        assert_eq!(report.end_offset, offset);
        assert_eq!(report.end_pos, seg.end_pos());
        assert_eq!(report.entries, *seg.index.read());
        seg.write_index(&disk).unwrap();
        let index = seg.read_index(&disk).unwrap().unwrap();
        assert_eq!(index.end_offset, offset);
        assert_eq!(IndexFile::decode(&index.encode()).unwrap(), index);
        let reopened = Segment::open(&disk, seg.path(), 64).unwrap();
        assert_eq!(reopened.base_offset(), 100);
    }

    #[test]
    fn scan_reports_a_bad_frame_with_its_position() {
        let disk = SimDisk::new();
        let seg = Segment::create(&disk, Path::new("/log"), 0, 4096, 64).unwrap();
        let a = frame_of(0, 2);
        seg.append(&a, 0, 2, 1).unwrap();
        seg.append(&frame_of(2, 2), 2, 4, 1).unwrap();
        let second = SEGMENT_HEADER_BYTES + a.len() as u64;
        disk.flip_bit(seg.path(), second + 20, 3).unwrap();
        let report = seg.scan(SEGMENT_HEADER_BYTES, 0, None, true).unwrap();
        assert_eq!(report.end_offset, 2);
        assert!(matches!(report.problem, Some((pos, CorruptReason::Checksum { .. })) if pos == second));
    }

    /// Found by `fuzz/` (index_decode): a non-zero reserved field decoded, so the header did
    /// not encode back to its own bytes.
    #[test]
    fn reserved_fields_must_be_zero() {
        let mut header = encode_segment_header(5);
        header[24] = 1;
        let crc = crc32fast::hash(&header[..28]);
        header[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_segment_header(&header), Err(CorruptReason::Field("segment reserved")));
        let index = IndexFile { base_offset: 5, end_offset: 6, end_pos: 100, max_timestamp_ms: 1, entries: Vec::new() };
        let mut bytes = index.encode();
        bytes[48] = 1;
        let crc = index_crc(&bytes);
        bytes[52..56].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(IndexFile::decode(&bytes), Err(CorruptReason::Field("index reserved")));
    }

    #[test]
    fn large_frames_written_around_the_page_cache_interleave_with_small_ones() {
        let disk = SimDisk::new();
        let seg = Segment::create(&disk, Path::new("/log"), 0, 8 << 20, 4096).unwrap();
        let mut want = Vec::new();
        for (i, len) in [300usize << 10, 10, 5, 600 << 10, 400 << 10, 7, 256 << 10].into_iter().enumerate() {
            let offset = i as u64;
            let value = vec![i as u8 + 1; len];
            let mut out = Vec::new();
            encode(&mut out, &BatchMeta { base_offset: offset, ..Default::default() }, &[Record::new(&value, 1)])
                .unwrap();
            seg.append(&out, offset, offset + 1, 1).unwrap();
            want.push(value);
        }
        let report = seg.scan(SEGMENT_HEADER_BYTES, 0, None, true).unwrap();
        assert_eq!((report.end_offset, report.end_pos, report.problem), (7, seg.end_pos(), None));
        let bytes = seg.bytes(SEGMENT_HEADER_BYTES, seg.end_pos()).unwrap();
        let mut rel = 0;
        for value in &want {
            let frame = crate::frame::decode(&bytes[rel..]).unwrap().unwrap();
            assert_eq!(frame.records().next().unwrap().value, value.as_slice());
            rel += frame.frame_len;
        }
        // Only zeros after the end: a direct write never pads its last block.
        assert!(seg.bytes(seg.end_pos(), seg.size_bytes()).unwrap().iter().all(|b| *b == 0));
    }

    /// Every write to the file it wraps, with its range and whether it went around the page
    /// cache.
    #[derive(Debug)]
    struct RecordingFile {
        inner: Arc<dyn DiskFile>,
        writes: parking_lot::Mutex<Vec<(std::ops::Range<u64>, bool)>>,
    }

    impl DiskFile for RecordingFile {
        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }
        fn write_at(&self, pos: u64, bytes: &[u8]) -> io::Result<()> {
            self.writes.lock().push((pos..pos + bytes.len() as u64, false));
            self.inner.write_at(pos, bytes)
        }
        fn read_at(&self, pos: u64, len_bytes: u64) -> io::Result<Bytes> {
            self.inner.read_at(pos, len_bytes)
        }
        fn write_direct(&self, pos: u64, bytes: &[u8]) -> io::Result<bool> {
            let written = self.inner.write_direct(pos, bytes)?;
            if written {
                self.writes.lock().push((pos..pos + bytes.len() as u64, true));
            }
            Ok(written)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.inner.sync_data()
        }
        fn set_len(&self, len_bytes: u64) -> io::Result<()> {
            self.inner.set_len(len_bytes)
        }
    }

    fn large_frame(base: u64, value_len: usize, fill: u8) -> (Vec<u8>, Vec<u8>) {
        let value = vec![fill; value_len];
        let mut out = Vec::new();
        encode(&mut out, &BatchMeta { base_offset: base, ..Default::default() }, &[Record::new(&value, 1)]).unwrap();
        (out, value)
    }

    /// A large frame that follows another large one directly, on a real file: only its own
    /// bytes are written, the whole blocks inside it with O_DIRECT. Sentinels just before its
    /// start (in the last block of the frame before, already published) and just after its
    /// end (in its own last block) survive, seen through a map slice taken before the write
    /// and through a fresh read after it.
    #[test]
    fn a_direct_write_touches_no_byte_outside_its_frame() {
        let dir = tempfile::tempdir().unwrap();
        let disk = crate::disk::OsDisk::new();
        let path = dir.path().join(segment_file_name(0));
        let file = disk.create(&path, 8 << 20).unwrap();
        file.write_at(0, &encode_segment_header(0)).unwrap();
        let recording = Arc::new(RecordingFile { inner: file, writes: parking_lot::Mutex::new(Vec::new()) });
        let seg = Segment::with_file(path, recording.clone(), 0, 8 << 20, 4096);
        seg.append(&frame_of(0, 1), 0, 1, 1).unwrap();
        let (b, _) = large_frame(1, 300 << 10, 0xb0);
        seg.append(&b, 1, 2, 1).unwrap();
        let (c, c_value) = large_frame(2, 400 << 10, 0xc0);
        let c_pos = seg.end_pos();
        let c_end = c_pos + c.len() as u64;
        assert!(
            !c_pos.is_multiple_of(4096) && !c_end.is_multiple_of(4096),
            "the frame shares its first and last blocks"
        );
        let sentinel = [0x5au8; 16];
        seg.file().write_at(c_pos - 16, &sentinel).unwrap();
        seg.file().write_at(c_end, &sentinel).unwrap();
        let before = seg.bytes(c_pos - 16, c_pos).unwrap();
        let after = seg.bytes(c_end, c_end + 16).unwrap();
        recording.writes.lock().clear();

        seg.append(&c, 2, 3, 1).unwrap();

        let mut writes = recording.writes.lock().clone();
        writes.sort_by_key(|(range, _)| range.start);
        let mut covered = c_pos;
        for (range, direct) in &writes {
            assert_eq!(range.start, covered, "writes {writes:?} cover the frame exactly once");
            covered = range.end;
            if *direct {
                assert!(range.start.is_multiple_of(4096) && range.end.is_multiple_of(4096), "{range:?}");
            }
        }
        assert_eq!(covered, c_end, "writes {writes:?}");
        if !writes.iter().any(|(_, direct)| *direct) {
            eprintln!("this file system has no O_DIRECT; the frame was written through the page cache");
        }
        assert_eq!(&before[..], &sentinel, "the published bytes before the frame are untouched");
        assert_eq!(&after[..], &sentinel, "the bytes after the frame are untouched");
        assert_eq!(&seg.bytes(c_pos - 16, c_pos).unwrap()[..], &sentinel);
        assert_eq!(&seg.bytes(c_end, c_end + 16).unwrap()[..], &sentinel);
        let bytes = seg.bytes(c_pos, c_end).unwrap();
        let frame = crate::frame::decode(&bytes).unwrap().unwrap();
        assert_eq!(frame.records().next().unwrap().value, c_value.as_slice());
    }

    /// Scanning in windows finds exactly what one read of everything finds: frames across
    /// window edges, frames longer than a window, a damaged frame, a limit inside a frame, and
    /// stale bytes after the end.
    #[test]
    fn a_scan_in_windows_finds_what_a_scan_of_everything_finds() {
        let disk = SimDisk::new();
        let seg = Segment::create(&disk, Path::new("/log"), 0, 1 << 20, 1000).unwrap();
        let mut starts = vec![(SEGMENT_HEADER_BYTES, 0)];
        for (i, len) in [10usize, 3000, 5, 70_000, 700, 1, 20_000, 64].into_iter().enumerate() {
            let (frame, _) = large_frame(i as u64, len, i as u8);
            seg.append(&frame, i as u64, i as u64 + 1, 1).unwrap();
            starts.push((seg.end_pos(), i as u64 + 1));
        }
        let end = seg.end_pos();
        let compare = |label: &str| {
            for &(from_pos, from_offset) in &starts {
                for to_pos in [None, Some(end), Some(end - 3), Some(end + 5), Some(40_000)] {
                    for verify in [true, false] {
                        let whole = seg.scan_in_windows(from_pos, from_offset, to_pos, verify, u64::MAX).unwrap();
                        for window_bytes in [1, 64, 1000, 4096, 65_536] {
                            let windowed =
                                seg.scan_in_windows(from_pos, from_offset, to_pos, verify, window_bytes).unwrap();
                            assert_eq!(windowed, whole, "{label}: from {from_pos} to {to_pos:?} in {window_bytes}");
                        }
                    }
                }
            }
        };
        compare("clean");
        disk.flip_bit(seg.path(), starts[4].0 + 100, 2).unwrap();
        compare("a damaged frame");
        seg.file().write_at(end + 2, b"stale").unwrap();
        compare("stale bytes after the end");
        seg.file().write_at(starts[6].0, &[0, 0, 0, 0]).unwrap();
        compare("a zero length in the middle");
    }

    #[test]
    fn stale_bytes_past_the_end_are_found_on_a_real_file_and_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        let disk = crate::disk::OsDisk::new();
        let seg = Segment::create(&disk, dir.path(), 0, 8 << 20, 4096).unwrap();
        seg.append(&frame_of(0, 2), 0, 2, 1).unwrap();
        assert_eq!(seg.nonzero_end(seg.end_pos()).unwrap(), None);
        // Bytes far past the end, as a crashed write may leave them.
        seg.file().write_at(5 << 20, b"stale").unwrap();
        assert_eq!(seg.nonzero_end(seg.end_pos()).unwrap(), Some((5 << 20) + 5));
        seg.zero_tail(seg.end_pos()).unwrap();
        assert_eq!(seg.nonzero_end(seg.end_pos()).unwrap(), None);
        let report = seg.scan(SEGMENT_HEADER_BYTES, 0, None, true).unwrap();
        assert_eq!((report.end_offset, report.problem), (2, None));
    }

    /// A segment file's length is checked before its header is read: shorter than a header
    /// is corruption naming how much is missing; exactly a header (no frame yet) and exactly the
    /// largest size open; one byte more is refused.
    #[test]
    fn a_segment_files_length_is_checked_at_both_ends() {
        let dir = tempfile::tempdir().unwrap();
        let disk = crate::OsDisk::without_io_uring();
        let path = |base: u64| dir.path().join(segment_file_name(base));
        let write = |base: u64, len: u64, bytes: &[u8]| {
            let file = std::fs::File::create(path(base)).unwrap();
            std::io::Write::write_all(&mut &file, bytes).unwrap();
            file.set_len(len).unwrap();
        };
        let header = encode_segment_header(7);
        write(7, 10, &header[..10]);
        match Segment::open(&disk, &path(7), 1024) {
            Err(Error::Corrupt { pos: 0, reason: CorruptReason::Truncated { needed_bytes }, .. }) => {
                assert_eq!(needed_bytes, SEGMENT_HEADER_BYTES - 10);
            }
            other => panic!("{other:?}"),
        }
        write(7, SEGMENT_HEADER_BYTES, &header);
        assert!(Segment::open(&disk, &path(7), 1024).is_ok(), "a header alone");
        // Sparse: no bytes are written past the header.
        write(7, SEGMENT_BYTES_MAX, &header);
        assert!(Segment::open(&disk, &path(7), 1024).is_ok(), "the largest segment");
        write(7, SEGMENT_BYTES_MAX + 1, &header);
        assert!(matches!(Segment::open(&disk, &path(7), 1024), Err(Error::Corrupt { .. })), "one byte more");
    }

    /// After a failed sync the kernel may have dropped the dirty pages, and a second fsync
    /// reports success: a segment never tries again, whichever path asks.
    #[test]
    fn a_segment_whose_sync_failed_never_syncs_again() {
        let disk = SimDisk::new();
        let seg = Segment::create(&disk, Path::new("/log"), 0, 4096, 64).unwrap();
        seg.append(&frame_of(0, 2), 0, 2, 1).unwrap();
        seg.sync().unwrap();
        seg.append(&frame_of(2, 2), 2, 4, 1).unwrap();
        disk.fail_next(crate::sim::FaultOp::Sync, libc::EIO);
        assert!(seg.sync().is_err());
        let syncs = disk.sync_points();
        for _ in 0..2 {
            assert!(seg.sync().is_err(), "a later sync must fail too");
            assert!(seg.lock_sync().check().is_err());
        }
        assert_eq!(disk.sync_points(), syncs, "and never reach the disk");
    }

    #[test]
    fn zero_tail_erases_stale_frames() {
        let disk = SimDisk::new();
        let seg = Segment::create(&disk, Path::new("/log"), 0, 4096, 64).unwrap();
        seg.append(&frame_of(0, 2), 0, 2, 1).unwrap();
        seg.zero_tail(SEGMENT_HEADER_BYTES).unwrap();
        let report = seg.scan(SEGMENT_HEADER_BYTES, 0, None, true).unwrap();
        assert_eq!((report.end_offset, report.problem), (0, None));
    }
}
