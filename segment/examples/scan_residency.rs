//! What checking page cache residency before handing out map slices costs a scan.
//!
//! `OsFile::read_at` hands out a slice of the file's map only when `mincore(2)` says every page
//! of the range is in the page cache, and copies the range with `pread` otherwise (a disk
//! error is then an `io::Error`, not SIGBUS). This example measures, on one 64 MiB segment of
//! 4 KiB frames, warm (in the page cache) and cold (dropped with `POSIX_FADV_DONTNEED`):
//!
//! - `scan`: [`Segment::scan`] with every checksum verified (it reads 4 MiB windows);
//! - `to the end`: per frame, one read from the frame to the segment's end and a decode of the
//!   frame: the reads `Reader::next_batch` in `tern-wal` makes;
//! - `frame only`: per frame, a read of its 8-byte prefix, then of the frame alone;
//!
//! each through `OsDisk` ("after": mincore, then a slice or a copy), through a file layer that
//! always hands out map slices ("before"), and, for comparison, through one that makes the
//! kernel fault the range in first with `madvise(MADV_POPULATE_READ)`, which reports a read
//! error as `EFAULT` instead of raising SIGBUS ("populate"). Layers alternate; the median of
//! the rounds is printed. Release mode on a quiet machine:
//!
//! ```sh
//! cargo run --release -p tern-segment --example scan_residency -- [DIR] [ROUNDS]
//! ```
//!
//! `DIR` (default: the system temporary directory) must be on a disk file system (tmpfs keeps
//! pages that `POSIX_FADV_DONTNEED` would drop); `ROUNDS` defaults to 5.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tern_segment::disk::{Disk, DiskFile, OsDisk};
use tern_segment::frame::{decode, encode, peek_body_len, BatchMeta, Record};
use tern_segment::segment::SEGMENT_HEADER_BYTES;
use tern_segment::Segment;

const SEGMENT_BYTES: u64 = 64 << 20;
const FRAME_BYTES: usize = 4096;

/// The file layer before residency checks: every read is a slice of a map of the whole file;
/// with `populate`, the range is first faulted in with `MADV_POPULATE_READ`.
#[derive(Debug)]
struct MapAlways {
    inner: OsDisk,
    populate: bool,
}

#[derive(Debug)]
struct MappedFile {
    inner: Arc<dyn DiskFile>,
    map: Bytes,
    populate: bool,
}

impl Disk for MapAlways {
    fn create(&self, path: &Path, size_bytes: u64) -> io::Result<Arc<dyn DiskFile>> {
        self.inner.create(path, size_bytes)
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
        let file = File::open(path)?;
        // SAFETY: the example's own file, not changed while it is mapped.
        let map = Bytes::from_owner(unsafe { memmap2::Mmap::map(&file)? });
        Ok(Arc::new(MappedFile { inner: self.inner.open(path)?, map, populate: self.populate }))
    }
    fn rename(&self, source: &Path, target: &Path) -> io::Result<()> {
        self.inner.rename(source, target)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
}

impl DiskFile for MappedFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn write_at(&self, pos: u64, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_at(pos, bytes)
    }
    fn read_at(&self, pos: u64, len_bytes: u64) -> io::Result<Bytes> {
        let start = usize::try_from(pos).map_err(io::Error::other)?;
        let end = start + usize::try_from(len_bytes).map_err(io::Error::other)?;
        if end > self.map.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if self.populate {
            let first = start - start % 4096;
            // SAFETY: the range lies inside the live map; madvise only changes page tables.
            let rc = unsafe {
                libc::madvise(self.map.as_ptr().add(first).cast_mut().cast(), end - first, libc::MADV_POPULATE_READ)
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(self.map.slice(start..end))
    }
    fn read_copy(&self, pos: u64, len_bytes: u64) -> io::Result<Vec<u8>> {
        self.inner.read_copy(pos, len_bytes)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        self.inner.set_len(len_bytes)
    }
}

/// Fills a segment with frames of exactly [`FRAME_BYTES`], syncs it, and returns its path
/// and frame count.
fn fill(dir: &Path) -> Result<(PathBuf, u64), Box<dyn std::error::Error>> {
    let disk = OsDisk::new();
    let segment = Segment::create(&disk, dir, 0, SEGMENT_BYTES, 64 << 10)?;
    let overhead = {
        let mut probe = Vec::new();
        encode(&mut probe, &BatchMeta::default(), &[Record::new(b"", 1)])?;
        probe.len()
    };
    let value = vec![0x3cu8; FRAME_BYTES - overhead];
    let mut frame = Vec::new();
    let mut offset = 0u64;
    while segment.remaining_bytes() >= FRAME_BYTES as u64 {
        frame.clear();
        encode(&mut frame, &BatchMeta { base_offset: offset, ..Default::default() }, &[Record::new(&value, 1)])?;
        assert_eq!(frame.len(), FRAME_BYTES);
        segment.append(&frame, offset, offset + 1, 1)?;
        offset += 1;
    }
    segment.sync()?;
    Ok((segment.path().to_path_buf(), offset))
}

/// Drops the file's pages from the page cache (they are clean: the file was synced) and
/// returns the fraction still resident, as seen through a fresh map.
fn drop_cache(path: &Path) -> io::Result<f64> {
    let file = File::open(path)?;
    // SAFETY: posix_fadvise only reads its integer arguments.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: the example's own file, not changed while it is mapped; the map is not read.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    let pages = map.len().div_ceil(4096);
    let mut vec = vec![0u8; pages];
    // SAFETY: the range is the whole live map; vec has one byte per page.
    let rc = unsafe { libc::mincore(map.as_ptr().cast_mut().cast(), map.len(), vec.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(vec.iter().filter(|v| *v & 1 == 1).count() as f64 / pages as f64)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Walk {
    Scan,
    ToTheEnd,
    FrameOnly,
}

/// One walk of the whole segment; returns the frames found.
fn walk(segment: &Segment, how: Walk) -> Result<u64, Box<dyn std::error::Error>> {
    match how {
        Walk::Scan => {
            let report = segment.scan(SEGMENT_HEADER_BYTES, 0, None, true)?;
            assert!(report.problem.is_none(), "{:?}", report.problem);
            Ok(report.frame_count)
        }
        Walk::ToTheEnd | Walk::FrameOnly => {
            let end = segment.end_pos();
            let (mut pos, mut count) = (SEGMENT_HEADER_BYTES, 0u64);
            while pos < end {
                let bytes = if how == Walk::ToTheEnd {
                    segment.bytes(pos, end)?
                } else {
                    let prefix = segment.bytes(pos, pos + 8)?;
                    let body_len = peek_body_len(&prefix).ok_or("no frame prefix")?;
                    segment.bytes(pos, (pos + 8 + u64::from(body_len)).min(end))?
                };
                let frame = decode(&bytes)?.ok_or("a zero length before the end")?;
                pos += frame.frame_len as u64;
                count += 1;
            }
            Ok(count)
        }
    }
}

/// Milliseconds of one walk through `disk`, warm or cold.
fn measure(
    disk: &dyn Disk,
    path: &Path,
    frames: u64,
    how: Walk,
    cold: bool,
) -> Result<f64, Box<dyn std::error::Error>> {
    let segment = Segment::open(disk, path, 64 << 10)?;
    let end_pos = SEGMENT_HEADER_BYTES + frames * FRAME_BYTES as u64;
    segment.install(end_pos, frames, 1, Vec::new());
    if cold {
        let resident = drop_cache(path)?;
        if resident > 0.01 {
            eprintln!("warning: {:.0}% of the file is still in the page cache", resident * 100.0);
        }
    } else {
        walk(&segment, how)?;
    }
    let started = Instant::now();
    let found = walk(&segment, how)?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(found, frames);
    Ok(ms)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let root = args.next().map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let rounds: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(5).max(1);
    let dir = tempfile::Builder::new().prefix("tern-scan-residency-").tempdir_in(&root)?;
    let (path, frames) = fill(dir.path())?;
    let before = MapAlways { inner: OsDisk::new(), populate: false };
    let after = OsDisk::new();
    let populate = MapAlways { inner: OsDisk::new(), populate: true };
    let layers: [(&str, &dyn Disk); 3] =
        [("before (map always)", &before), ("after (mincore + pread)", &after), ("populate (madvise)", &populate)];
    println!("{} frames of {FRAME_BYTES} B in a {} MiB segment in {}", frames, SEGMENT_BYTES >> 20, root.display());
    println!("median of {rounds} rounds, layers alternating\n");
    println!("{:<16} {:<6} {:<26} {:>10} {:>10}", "walk", "cache", "file layer", "ms", "MB/s");
    for how in [Walk::Scan, Walk::ToTheEnd, Walk::FrameOnly] {
        for cold in [false, true] {
            let mut times = [Vec::new(), Vec::new(), Vec::new()];
            for round in 0..rounds {
                for k in 0..layers.len() {
                    let i = (k + round) % layers.len();
                    times[i].push(measure(layers[i].1, &path, frames, how, cold)?);
                }
            }
            for (i, (name, _)) in layers.iter().enumerate() {
                let ms = median(std::mem::take(&mut times[i]));
                let mb_s = (frames * FRAME_BYTES as u64) as f64 / (ms / 1e3) / 1e6;
                let walk = match how {
                    Walk::Scan => "scan",
                    Walk::ToTheEnd => "to the end",
                    Walk::FrameOnly => "frame only",
                };
                println!("{walk:<16} {:<6} {name:<26} {ms:>10.1} {mb_s:>10.0}", if cold { "cold" } else { "warm" });
            }
        }
    }
    Ok(())
}
