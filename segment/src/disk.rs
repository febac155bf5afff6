//! The narrow file layer. `segment` and `wal` reach files only through [`Disk`], so tests can
//! swap in [`crate::sim::SimDisk`], which tears writes, loses unsynced data, fails syncs and
//! flips bits.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

/// A directory tree of files. Paths are ordinary paths; implementations never touch anything
/// outside the paths they are given.
pub trait Disk: Send + Sync + Debug + 'static {
    /// Creates a new file (failing if it exists) of `size_bytes` zero bytes, with its blocks
    /// allocated where the platform allows, so that later writes inside it need no size change.
    /// The new name is durable only after [`Disk::sync_dir`] of its parent.
    ///
    /// # Errors
    /// On error no file is left at `path`: an implementation that created the name before the
    /// allocation failed (ENOSPC) removes it again.
    fn create(&self, path: &Path, size_bytes: u64) -> io::Result<Arc<dyn DiskFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>>;
    /// Renames `source` to `target`, replacing `target`. Durable after `sync_dir`.
    fn rename(&self, source: &Path, target: &Path) -> io::Result<()>;
    /// Removes a file. Durable after `sync_dir`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Names (not paths) of the entries of `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// True when `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// Syncs the data of several files, as concurrently as the implementation can, and
    /// returns one result per file in order. The default syncs them one after another.
    fn sync_files(&self, files: &[&dyn DiskFile]) -> Vec<io::Result<()>> {
        files.iter().map(|f| f.sync_data()).collect()
    }
}

/// One open file.
#[allow(clippy::len_without_is_empty)] // a file's emptiness is never a question Tern asks
pub trait DiskFile: Send + Sync + Debug + 'static {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Writes all of `bytes` at `pos`, extending the file if needed. Not durable until
    /// [`DiskFile::sync_data`] returns.
    fn write_at(&self, pos: u64, bytes: &[u8]) -> io::Result<()>;
    /// Returns the bytes of `pos..pos + len_bytes`, which must lie inside the file.
    /// [`OsDisk`] hands out a slice of a shared memory map: no copy.
    fn read_at(&self, pos: u64, len_bytes: u64) -> io::Result<Bytes>;
    /// Copies `pos..pos + len_bytes` out of the file without mapping it. For small files and
    /// for files whose syncs are latency-critical: writeback of a mapped page must also
    /// write-protect its mappings, which costs every later sync.
    fn read_copy(&self, pos: u64, len_bytes: u64) -> io::Result<Vec<u8>> {
        Ok(self.read_at(pos, len_bytes)?.to_vec())
    }
    /// Writes `bytes` at `pos` bypassing the page cache (O_DIRECT), when the implementation
    /// supports it: `pos` and `bytes.len()` are multiples of [`DIRECT_ALIGN_BYTES`] and
    /// `bytes` starts at an address aligned to it. Returns `Ok(false)`, writing nothing, when
    /// direct writes are not available (the caller then uses [`DiskFile::write_at`]). Not
    /// durable until [`DiskFile::sync_data`] returns.
    fn write_direct(&self, _pos: u64, _bytes: &[u8]) -> io::Result<bool> {
        Ok(false)
    }
    /// The parts of `from..to` that may hold data; the rest reads as zeros. The default says
    /// all of it. [`OsDisk`] asks the filesystem (`SEEK_DATA`/`SEEK_HOLE`), so that finding
    /// the end of the data in a mostly unwritten pre-allocated file does not read it all.
    fn data_regions(&self, from: u64, to: u64) -> io::Result<Vec<std::ops::Range<u64>>> {
        Ok(if from < to { std::iter::once(from..to).collect() } else { Vec::new() })
    }
    /// Makes every write before this call durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Sets the length, zero-filling when it grows.
    fn set_len(&self, len_bytes: u64) -> io::Result<()>;
    /// The raw file descriptor, for implementations that batch syncs through io_uring.
    fn raw_fd(&self) -> Option<i32> {
        None
    }
}

/// Alignment of position, length and address for [`DiskFile::write_direct`].
pub const DIRECT_ALIGN_BYTES: usize = 4096;

/// A growable byte buffer whose start is aligned to [`DIRECT_ALIGN_BYTES`], for direct writes.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only read the initialized bytes.
unsafe impl Sync for AlignedBuf {}

impl Default for AlignedBuf {
    fn default() -> Self {
        AlignedBuf { ptr: std::ptr::NonNull::dangling(), cap: 0, len: 0 }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf").field("len", &self.len).field("cap", &self.cap).finish()
    }
}

impl AlignedBuf {
    fn layout(cap: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(cap, DIRECT_ALIGN_BYTES).expect("aligned layout")
    }

    /// Empties the buffer, keeping its allocation.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    fn reserve(&mut self, additional: usize) {
        let needed = self.len + additional;
        if needed <= self.cap {
            return;
        }
        let cap = needed.next_power_of_two().max(DIRECT_ALIGN_BYTES);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout(cap)) };
        let ptr = std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout(cap)));
        if self.cap > 0 {
            // SAFETY: both regions are valid for `len` bytes and do not overlap; the old one
            // was allocated with the old layout.
            unsafe {
                std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), ptr.as_ptr(), self.len);
                std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap));
            }
        }
        self.ptr = ptr;
        self.cap = cap;
    }

    /// Appends `bytes`.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        // SAFETY: reserve made room for `bytes.len()` more bytes after `len`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(self.len), bytes.len()) };
        self.len += bytes.len();
    }

    /// Appends zeros up to the next multiple of [`DIRECT_ALIGN_BYTES`].
    pub fn pad_to_alignment(&mut self) {
        let padded = self.len.next_multiple_of(DIRECT_ALIGN_BYTES);
        self.reserve(padded - self.len);
        // SAFETY: reserve made room up to `padded`.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(self.len), 0, padded - self.len) };
        self.len = padded;
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        if self.cap == 0 {
            return &[];
        }
        // SAFETY: the first `len` bytes are initialized and owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.cap > 0 {
            // SAFETY: allocated in `reserve` with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) };
        }
    }
}

/// Reads a whole small file, refusing files larger than `len_bytes_max`.
pub fn read_small_file(disk: &dyn Disk, path: &Path, len_bytes_max: u64) -> io::Result<Bytes> {
    let file = disk.open(path)?;
    let len_bytes = file.len()?;
    if len_bytes > len_bytes_max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is {len_bytes} bytes, more than the {len_bytes_max} expected", path.display()),
        ));
    }
    Ok(Bytes::from(file.read_copy(0, len_bytes)?))
}

/// Replaces `path` with `bytes` atomically: write a temporary file, sync it, rename it over.
/// With `durable`, the directory is synced too, so the new content survives power loss.
pub fn write_file_atomic(disk: &dyn Disk, path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    if disk.exists(&tmp) {
        disk.remove(&tmp)?;
    }
    let file = disk.create(&tmp, 0)?;
    file.write_at(0, bytes)?;
    file.sync_data()?;
    drop(file);
    disk.rename(&tmp, path)?;
    if durable {
        if let Some(dir) = path.parent() {
            disk.sync_dir(dir)?;
        }
    }
    Ok(())
}

/// The real file layer: `std::fs`, `fallocate`, `fdatasync`, memory-mapped reads, and syncs
/// of several files submitted together through io_uring where the kernel allows it.
pub struct OsDisk {
    read_only: bool,
    ring: Option<Mutex<io_uring::IoUring>>,
}

impl std::fmt::Debug for OsDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OsDisk").field("read_only", &self.read_only).field("io_uring", &self.ring.is_some()).finish()
    }
}

impl Default for OsDisk {
    fn default() -> Self {
        Self::new()
    }
}

impl OsDisk {
    /// The file layer for reading and writing.
    pub fn new() -> Self {
        let ring = io_uring::IoUring::new(64).ok().map(Mutex::new);
        OsDisk { read_only: false, ring }
    }

    /// A file layer that opens files read-only and refuses every change (for `verify`).
    pub fn read_only() -> Self {
        OsDisk { read_only: true, ring: None }
    }

    /// The file layer without io_uring: several syncs run on scoped threads instead.
    pub fn without_io_uring() -> Self {
        OsDisk { read_only: false, ring: None }
    }

    /// True when batched syncs go through io_uring.
    pub fn uses_io_uring(&self) -> bool {
        self.ring.is_some()
    }

    fn refuse_write(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "opened read-only"));
        }
        Ok(())
    }

    fn sync_through_ring(ring: &mut io_uring::IoUring, fds: &[i32]) -> io::Result<Vec<io::Result<()>>> {
        let mut results: Vec<io::Result<()>> = (0..fds.len()).map(|_| Ok(())).collect();
        for (chunk_index, chunk) in fds.chunks(32).enumerate() {
            for (i, fd) in chunk.iter().enumerate() {
                let entry = io_uring::opcode::Fsync::new(io_uring::types::Fd(*fd))
                    .flags(io_uring::types::FsyncFlags::DATASYNC)
                    .build()
                    .user_data((chunk_index * 32 + i) as u64);
                // SAFETY: the entry refers to no buffer; the fd stays open until completion,
                // because the caller holds the files while this function waits for all of them.
                unsafe { ring.submission().push(&entry) }
                    .map_err(|_| io::Error::other("io_uring submission queue full"))?;
            }
            let mut done = 0;
            while done < chunk.len() {
                ring.submit_and_wait(chunk.len() - done)?;
                for cqe in ring.completion() {
                    let index = cqe.user_data() as usize;
                    if let Some(slot) = results.get_mut(index) {
                        if cqe.result() < 0 {
                            *slot = Err(io::Error::from_raw_os_error(-cqe.result()));
                        }
                    }
                    done += 1;
                }
            }
        }
        Ok(results)
    }
}

impl Disk for OsDisk {
    fn create(&self, path: &Path, size_bytes: u64) -> io::Result<Arc<dyn DiskFile>> {
        self.refuse_write()?;
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        if size_bytes > 0 {
            if let Err(err) = preallocate(&file, size_bytes) {
                drop(file);
                // A failed create leaves no file (the `Disk::create` contract), so that a retry
                // does not find an empty file where a pre-allocated one was expected. If the
                // removal fails too, the allocation error is the one the caller can act on.
                let _ = std::fs::remove_file(path);
                return Err(err);
            }
        }
        Ok(Arc::new(OsFile::new(file, path)))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
        let file = OpenOptions::new().read(true).write(!self.read_only).open(path)?;
        Ok(Arc::new(OsFile::new(file, path)))
    }

    fn rename(&self, source: &Path, target: &Path) -> io::Result<()> {
        self.refuse_write()?;
        std::fs::rename(source, target)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.refuse_write()?;
        std::fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.refuse_write()?;
        std::fs::create_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.refuse_write()?;
        File::open(dir)?.sync_all()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn sync_files(&self, files: &[&dyn DiskFile]) -> Vec<io::Result<()>> {
        match files {
            [] => Vec::new(),
            [one] => vec![one.sync_data()],
            many => {
                let fds: Option<Vec<i32>> = many.iter().map(|f| f.raw_fd()).collect();
                if let (Some(ring), Some(fds)) = (&self.ring, fds) {
                    // If the ring itself fails (not a sync), fall back: syncing is idempotent.
                    if let Ok(results) = Self::sync_through_ring(&mut ring.lock(), &fds) {
                        return results;
                    }
                }
                std::thread::scope(|scope| {
                    let handles: Vec<_> = many.iter().map(|f| scope.spawn(move || f.sync_data())).collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap_or_else(|_| Err(io::Error::other("sync thread panicked"))))
                        .collect()
                })
            }
        }
    }
}

fn preallocate(file: &File, size_bytes: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(size_bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: fallocate only reads its integer arguments; the fd is open for writing.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if crate::error::is_disk_full(&err) {
        return Err(err);
    }
    // Filesystems without fallocate (tmpfs on old kernels, some network filesystems): set the
    // length instead. Syncs then also persist size changes, which is slower but still correct.
    file.set_len(size_bytes)
}

/// A file of [`OsDisk`]. Reads come from a shared read-only memory map of the file.
#[derive(Debug)]
pub struct OsFile {
    file: File,
    path: PathBuf,
    map: Mutex<Option<Bytes>>,
    direct: std::sync::OnceLock<Option<File>>,
}

impl OsFile {
    fn new(file: File, path: &Path) -> Self {
        OsFile { file, path: path.to_path_buf(), map: Mutex::new(None), direct: std::sync::OnceLock::new() }
    }

    fn mapped(&self, end: u64) -> io::Result<Bytes> {
        let mut map = self.map.lock();
        if let Some(bytes) = map.as_ref() {
            if bytes.len() as u64 >= end {
                return Ok(bytes.clone());
            }
        }
        let len = self.file.metadata()?.len();
        if len < end {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read past the end of {} ({end} > {len})", self.path.display()),
            ));
        }
        // SAFETY: Tern's files are only changed by this process (the engine holds a directory
        // lock), files are never shrunk while mapped, and readers only look at bytes that were
        // completely written before the end position they read was published.
        let mmap = unsafe {
            memmap2::MmapOptions::new().len(usize::try_from(len).map_err(io::Error::other)?).map(&self.file)?
        };
        let bytes = Bytes::from_owner(mmap);
        *map = Some(bytes.clone());
        Ok(bytes)
    }
}

impl DiskFile for OsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn write_at(&self, pos: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, pos)
    }

    fn read_at(&self, pos: u64, len_bytes: u64) -> io::Result<Bytes> {
        if len_bytes == 0 {
            return Ok(Bytes::new());
        }
        let end = pos.checked_add(len_bytes).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let map = self.mapped(end)?;
        let (start, end) =
            (usize::try_from(pos).map_err(io::Error::other)?, usize::try_from(end).map_err(io::Error::other)?);
        Ok(map.slice(start..end))
    }

    fn write_direct(&self, pos: u64, bytes: &[u8]) -> io::Result<bool> {
        let aligned = |n: u64| n.is_multiple_of(DIRECT_ALIGN_BYTES as u64);
        assert!(aligned(pos) && aligned(bytes.len() as u64), "unaligned direct write");
        assert!((bytes.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN_BYTES), "unaligned direct buffer");
        // A second descriptor with O_DIRECT; filesystems without it (tmpfs) refuse to open one.
        let direct = self.direct.get_or_init(|| {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&self.path).ok()
        });
        let Some(direct) = direct else { return Ok(false) };
        match direct.write_all_at(bytes, pos) {
            Ok(()) => Ok(true),
            // Refused for this file or range: nothing was written, fall back to buffered.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn data_regions(&self, from: u64, to: u64) -> io::Result<Vec<std::ops::Range<u64>>> {
        let seek = |pos: u64, whence: i32| -> io::Result<Option<u64>> {
            let pos = libc::off_t::try_from(pos).map_err(io::Error::other)?;
            // SAFETY: lseek only reads its integer arguments; the fd is open.
            let rc = unsafe { libc::lseek(self.file.as_raw_fd(), pos, whence) };
            if rc < 0 {
                let err = io::Error::last_os_error();
                return match err.raw_os_error() {
                    Some(libc::ENXIO) => Ok(None),
                    _ => Err(err),
                };
            }
            Ok(Some(rc as u64))
        };
        let mut regions = Vec::new();
        let mut pos = from;
        while pos < to {
            let start = match seek(pos, libc::SEEK_DATA) {
                Ok(Some(start)) => start.max(pos),
                Ok(None) => break,
                // No SEEK_DATA here: treat everything as data.
                Err(_) => return Ok(std::iter::once(pos..to).collect()),
            };
            if start >= to {
                break;
            }
            let end = match seek(start, libc::SEEK_HOLE) {
                Ok(Some(end)) => end.min(to),
                Ok(None) | Err(_) => to,
            };
            if end <= start {
                return Ok(std::iter::once(start..to).collect());
            }
            regions.push(start..end);
            pos = end;
        }
        Ok(regions)
    }

    fn read_copy(&self, pos: u64, len_bytes: u64) -> io::Result<Vec<u8>> {
        let len = usize::try_from(len_bytes).map_err(io::Error::other)?;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, pos)?;
        Ok(buf)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        let mut map = self.map.lock();
        if map.as_ref().is_some_and(|m| (m.len() as u64) > len_bytes) {
            // Shrinking under a live map would turn reads of the cut part into SIGBUS.
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot shrink a mapped file"));
        }
        *map = None;
        self.file.set_len(len_bytes)
    }

    fn raw_fd(&self) -> Option<i32> {
        Some(self.file.as_raw_fd())
    }
}
