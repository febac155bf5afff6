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
    /// [`OsDisk`] hands out a slice of a shared memory map (no copy) when the range is in the
    /// page cache, and a copy read from the file otherwise.
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
    ring: Option<Mutex<Ring>>,
}

impl std::fmt::Debug for OsDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OsDisk").field("read_only", &self.read_only).field("io_uring", &self.uses_io_uring()).finish()
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
        let ring = io_uring::IoUring::new(RING_ENTRIES).ok().map(|ring| Mutex::new(Ring::new(ring)));
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

    /// True when batched syncs go through io_uring: the kernel allowed a ring and it has not
    /// failed since (after a failure, batched syncs run on threads).
    pub fn uses_io_uring(&self) -> bool {
        self.ring.as_ref().is_some_and(|ring| !ring.lock().broken)
    }

    fn refuse_write(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "opened read-only"));
        }
        Ok(())
    }
}

/// Syncs `files` on one scoped thread each and returns their results in order.
fn sync_on_threads(files: &[&dyn DiskFile]) -> Vec<io::Result<()>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = files.iter().map(|f| scope.spawn(move || f.sync_data())).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(io::Error::other("sync thread panicked"))))
            .collect()
    })
}

/// Submission queue entries of the ring; the completion queue has twice as many.
const RING_ENTRIES: u32 = 64;
/// Syncs submitted to the ring at once: half the submission queue.
const RING_CHUNK: usize = RING_ENTRIES as usize / 2;
/// Consecutive `io_uring_enter` calls that may make no progress (interrupted by a signal, or
/// returning without a completion of this call) before the ring is given up on.
const RING_STALLS_MAX: u32 = 10_000;

/// The io_uring instance of an [`OsDisk`], and what tells its calls apart.
///
/// A sync that failed must never be reported as done: on Linux a second `fdatasync` after a
/// failed one reports success although the dirty pages are gone. So a file whose sync was
/// handed to the kernel gets exactly the result of that sync, or an error when the ring failed
/// before that result was seen; it is never synced again. Only files whose sync was never
/// handed to the kernel may be synced another way.
struct Ring {
    ring: io_uring::IoUring,
    /// Tag of the latest call; each call tags its entries' `user_data` with a new one, so a
    /// completion left over from an earlier call is recognised and ignored.
    call_tag: u32,
    /// Set when the ring failed; batched syncs run on threads from then on.
    broken: bool,
}

impl Ring {
    fn new(ring: io_uring::IoUring) -> Ring {
        Ring { ring, call_tag: 0, broken: false }
    }

    /// Syncs `fds` (`fdatasync`) through the ring, at most [`RING_CHUNK`] in flight at once,
    /// and waits for the completion of every sync it submitted. On a failure of the ring the
    /// ring is marked broken, and the returned batch says which syncs were submitted.
    fn sync(&mut self, fds: &[i32]) -> RingBatch {
        self.call_tag = self.call_tag.wrapping_add(1);
        let mut batch = RingBatch::new(self.call_tag, fds.len());
        if let Err(e) = self.run(&mut batch, fds) {
            self.broken = true;
            batch.failure = Some(e);
        }
        batch
    }

    fn run(&mut self, batch: &mut RingBatch, fds: &[i32]) -> io::Result<()> {
        if u32::try_from(fds.len()).is_err() {
            return Err(io::Error::other("too many files for one batched sync"));
        }
        // Entries still queued would be submitted ahead of this call's and shift the count of
        // consumed entries; only an earlier failure (which broke the ring) can leave them.
        if !self.ring.submission().is_empty() {
            return Err(io::Error::other("io_uring submission queue holds entries of an earlier call"));
        }
        for chunk_start in (0..fds.len()).step_by(RING_CHUNK) {
            let chunk = chunk_start..(chunk_start + RING_CHUNK).min(fds.len());
            for index in chunk.clone() {
                let fd = *fds.get(index).expect("index inside fds");
                let entry = io_uring::opcode::Fsync::new(io_uring::types::Fd(fd))
                    .flags(io_uring::types::FsyncFlags::DATASYNC)
                    .build()
                    .user_data(batch.user_data(index));
                // SAFETY: the entry refers to no buffer; the fd stays open until completion,
                // because the caller holds the files while this function waits for all of
                // them (and the kernel holds its own reference to a submitted file).
                unsafe { self.ring.submission().push(&entry) }
                    .map_err(|_| io::Error::other("io_uring submission queue full"))?;
            }
            self.submit_and_reap(batch, chunk)?;
        }
        Ok(())
    }

    /// Submits the queued entries of `chunk` and reaps completions until none of the batch's
    /// syncs is in flight. Entries the kernel consumed are marked submitted even when the call
    /// that consumed them failed.
    fn submit_and_reap(&mut self, batch: &mut RingBatch, chunk: std::ops::Range<usize>) -> io::Result<()> {
        let mut queued = chunk.clone();
        let mut stalls = 0u32;
        while !queued.is_empty() || batch.in_flight_count() > 0 {
            let want = queued.len() + batch.in_flight_count();
            let entered = self.ring.submit_and_wait(want);
            // The kernel consumes entries in order; those still queued were not handed over.
            let consumed = queued.len() - self.ring.submission().len().min(queued.len());
            batch.submitted(queued.start..queued.start + consumed);
            queued.start += consumed;
            let mut reaped = 0usize;
            for cqe in self.ring.completion() {
                if batch.complete(cqe.user_data(), cqe.result()) {
                    reaped += 1;
                }
            }
            match entered {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
            stalls = if consumed + reaped > 0 { 0 } else { stalls + 1 };
            if stalls > RING_STALLS_MAX {
                return Err(io::Error::other("io_uring made no progress"));
            }
        }
        Ok(())
    }
}

/// What became of each file's sync in one call through the ring. Kept apart from the ring so
/// that attributing completions can be tested without a failing kernel.
#[derive(Debug)]
struct RingBatch {
    /// The call's tag, in the high 32 bits of every entry's `user_data`; the low 32 bits hold
    /// the file's index.
    tag: u32,
    slots: Vec<SyncSlot>,
    in_flight_count: usize,
    /// Why the ring stopped part way, if it did.
    failure: Option<io::Error>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncSlot {
    /// Never handed to the kernel: the file may still be synced another way.
    Unsubmitted,
    /// Handed to the kernel; its completion has not been seen.
    InFlight,
    /// Its completion's result: 0, or a negated errno.
    Done(i32),
}

impl RingBatch {
    fn new(tag: u32, count: usize) -> RingBatch {
        RingBatch { tag, slots: vec![SyncSlot::Unsubmitted; count], in_flight_count: 0, failure: None }
    }

    fn user_data(&self, index: usize) -> u64 {
        (u64::from(self.tag) << 32) | index as u64
    }

    fn in_flight_count(&self) -> usize {
        self.in_flight_count
    }

    /// Marks the syncs of `indices` as handed to the kernel.
    fn submitted(&mut self, indices: std::ops::Range<usize>) {
        for slot in self.slots.get_mut(indices).unwrap_or_default() {
            debug_assert_eq!(*slot, SyncSlot::Unsubmitted);
            *slot = SyncSlot::InFlight;
            self.in_flight_count += 1;
        }
    }

    /// Records a completion read from the ring. Returns false, changing nothing, for one that
    /// is not the completion of an in-flight sync of this call: a leftover of an earlier call
    /// (another tag), an index out of range, or a second completion for the same sync.
    fn complete(&mut self, user_data: u64, result: i32) -> bool {
        if user_data >> 32 != u64::from(self.tag) {
            return false;
        }
        let index = (user_data & u64::from(u32::MAX)) as usize;
        match self.slots.get_mut(index) {
            Some(slot @ SyncSlot::InFlight) => {
                *slot = SyncSlot::Done(result);
                self.in_flight_count -= 1;
                true
            }
            _ => false,
        }
    }

    /// One result per file, in order. A completed sync gives its own result; a sync in flight
    /// when the ring failed gives an error (its outcome is unknown, and syncing again could
    /// report a success that hides a lost write); `sync_unsubmitted` syncs the files whose
    /// sync never reached the kernel, given their indices, and returns their results in order.
    fn results(self, sync_unsubmitted: impl FnOnce(&[usize]) -> Vec<io::Result<()>>) -> Vec<io::Result<()>> {
        let unsubmitted: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| **slot == SyncSlot::Unsubmitted)
            .map(|(index, _)| index)
            .collect();
        let mut fallback = if unsubmitted.is_empty() { Vec::new() } else { sync_unsubmitted(&unsubmitted) }.into_iter();
        let failure = self.failure.as_ref().map_or_else(|| "no failure recorded".to_owned(), ToString::to_string);
        self.slots
            .iter()
            .map(|slot| match *slot {
                SyncSlot::Done(0) => Ok(()),
                SyncSlot::Done(result) if result < 0 => Err(io::Error::from_raw_os_error(-result)),
                SyncSlot::Done(result) => Err(io::Error::other(format!("io_uring fsync returned {result}"))),
                SyncSlot::InFlight => Err(io::Error::other(format!(
                    "io_uring failed ({failure}) before this file's sync completed; whether its data reached the disk is unknown"
                ))),
                SyncSlot::Unsubmitted => fallback
                    .next()
                    .unwrap_or_else(|| Err(io::Error::other("no result for a sync not submitted to io_uring"))),
            })
            .collect()
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
                let batch = match (&self.ring, fds) {
                    (Some(ring), Some(fds)) => {
                        let mut ring = ring.lock();
                        (!ring.broken).then(|| ring.sync(&fds))
                    }
                    _ => None,
                };
                let Some(batch) = batch else { return sync_on_threads(many) };
                // Only syncs that never reached the kernel run again, on threads.
                batch.results(|unsubmitted| {
                    let files: Vec<&dyn DiskFile> =
                        unsubmitted.iter().filter_map(|index| many.get(*index).copied()).collect();
                    sync_on_threads(&files)
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

/// Bytes of a memory page, for `mincore(2)`.
fn page_bytes() -> usize {
    static PAGE_BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE_BYTES.get_or_init(|| {
        // SAFETY: sysconf only reads its integer argument.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(page).ok().filter(|p| p.is_power_of_two()).unwrap_or(4096)
    })
}

/// True when every page of `range` of `map` (a whole map, starting on a page boundary) is in
/// the page cache, as one `mincore(2)` call says. False when the call fails, so the caller
/// copies instead: the safe side. The kernel reports page cache residency for files the
/// process may write (or owns); for other files only pages this process has mapped count.
fn resident(map: &Bytes, range: std::ops::Range<usize>) -> bool {
    let page = page_bytes();
    let first = range.start - range.start % page;
    let (Some(addr), Some(len_bytes)) = (map.get(first..).map(<[u8]>::as_ptr), range.end.checked_sub(first)) else {
        return false;
    };
    if range.end > map.len() || len_bytes == 0 {
        return false;
    }
    let page_count = len_bytes.div_ceil(page);
    let mut on_stack = [0u8; 256];
    let mut on_heap = Vec::new();
    let vec = if page_count <= on_stack.len() {
        on_stack.get_mut(..page_count).unwrap_or_default()
    } else {
        on_heap.resize(page_count, 0u8);
        on_heap.as_mut_slice()
    };
    debug_assert!((addr as usize).is_multiple_of(page), "a map starts on a page boundary");
    // SAFETY: `addr..addr + len_bytes` lies inside the live map `map` holds; mincore only
    // writes one byte per page of it into `vec`, which has `page_count` bytes.
    let rc = unsafe { libc::mincore(addr.cast_mut().cast(), len_bytes, vec.as_mut_ptr()) };
    rc == 0 && vec.iter().all(|v| v & 1 == 1)
}

/// A file of [`OsDisk`]. Reads come from a shared read-only memory map of the file, or from a
/// copy when the range is not in the page cache ([`DiskFile::read_at`]).
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
        // SAFETY: a shared read-only map is sound while no page of it becomes invalid and no
        // byte a reader holds changes:
        // - only Tern's own files are mapped, in a directory the engine holds a lock on, so no
        //   other process truncates or writes them (one that ignores the lock can break this);
        // - a mapped file is never shrunk (`set_len` refuses while a map exists), so no page of
        //   a map lies past the end of its file;
        // - readers look only at bytes below an end that was published after they were
        //   completely written, and those bytes are never written again (a direct write covers
        //   only the whole blocks inside its own frame). A suffix truncation inside a segment
        //   does not zero the bytes it removes: it renames a copy of what it keeps over the
        //   file, and this map (of the old file, which lives on while mapped) never changes.
        //   Only recovery writes zeros over published bytes (a torn tail), before any reader.
        // Residual risk: a page not in the page cache is read from the disk on first touch, and
        // a media error there is SIGBUS, which kills the process. `read_at` hands out map
        // slices only for ranges whose pages are all resident and copies the others with
        // `pread`, where a failing disk is an `io::Error`. But a page resident when checked can
        // be evicted later (memory pressure) and read again when a slice handed out earlier is
        // touched; a media error then is still SIGBUS. Slices may be held as long as callers
        // like, so this takes memory pressure and a failing disk together, not a long hold.
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

    /// A slice of the file's shared map when every page of the range is in the page cache
    /// (one `mincore(2)`); otherwise a copy read with `pread`, so that a disk read error is an
    /// `io::Error` here and not SIGBUS when the caller touches the bytes. The copy also brings
    /// the range into the page cache, so the next read of it is a slice again.
    fn read_at(&self, pos: u64, len_bytes: u64) -> io::Result<Bytes> {
        if len_bytes == 0 {
            return Ok(Bytes::new());
        }
        let end = pos.checked_add(len_bytes).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let map = self.mapped(end)?;
        let (start, end) =
            (usize::try_from(pos).map_err(io::Error::other)?, usize::try_from(end).map_err(io::Error::other)?);
        if resident(&map, start..end) {
            return Ok(map.slice(start..end));
        }
        let mut copy = vec![0u8; end - start];
        self.file.read_exact_at(&mut copy, pos)?;
        Ok(Bytes::from(copy))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn files_with_data(dir: &Path, disk: &OsDisk, count: usize) -> Vec<Arc<dyn DiskFile>> {
        (0..count)
            .map(|i| {
                let file = disk.create(&dir.join(format!("{i}.dat")), 8192).unwrap();
                file.write_at(0, format!("file {i}").as_bytes()).unwrap();
                file
            })
            .collect()
    }

    #[test]
    fn many_files_synced_through_the_ring_all_report_ok() {
        let dir = tempfile::tempdir().unwrap();
        let disk = OsDisk::new();
        // More than two chunks, and a partial last one.
        let files = files_with_data(dir.path(), &disk, 2 * RING_CHUNK + 5);
        let refs: Vec<&dyn DiskFile> = files.iter().map(|f| &**f).collect();
        let ring_before = disk.uses_io_uring();
        for _ in 0..3 {
            let results = disk.sync_files(&refs);
            assert_eq!(results.len(), refs.len());
            for (i, result) in results.iter().enumerate() {
                assert!(result.is_ok(), "file {i}: {result:?}");
            }
        }
        // A ring that worked is still used (where the kernel allows one at all).
        assert_eq!(disk.uses_io_uring(), ring_before);
    }

    /// A completion left in the ring by an earlier call (here a failed sync of a bad
    /// descriptor, tagged with an older call's tag and index 0) is neither counted nor
    /// attributed to file 0 of the next call, and the next call reaps all of its own.
    #[test]
    fn a_completion_left_by_an_earlier_call_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let disk = OsDisk::new();
        let Some(ring) = &disk.ring else {
            eprintln!("io_uring is not available here; nothing to check");
            return;
        };
        let files = files_with_data(dir.path(), &disk, 3);
        let refs: Vec<&dyn DiskFile> = files.iter().map(|f| &**f).collect();
        {
            let mut ring = ring.lock();
            let stale_tag = ring.call_tag;
            let entry =
                io_uring::opcode::Fsync::new(io_uring::types::Fd(-1)).build().user_data(u64::from(stale_tag) << 32);
            // SAFETY: the entry refers to no buffer and no open descriptor.
            unsafe { ring.ring.submission().push(&entry) }.unwrap();
            ring.ring.submit_and_wait(1).unwrap();
            assert_eq!(ring.ring.completion().len(), 1, "the stale completion waits in the ring");
        }
        let results = disk.sync_files(&refs);
        for (i, result) in results.iter().enumerate() {
            assert!(result.is_ok(), "file {i}: {result:?}");
        }
        let mut ring = ring.lock();
        assert!(!ring.broken);
        assert_eq!(ring.ring.completion().len(), 0, "every completion of the call was reaped");
    }

    /// A file of `len_bytes` zeros, and whether `bytes` lies inside its current map.
    fn os_file(dir: &Path, len_bytes: u64) -> OsFile {
        let path = dir.join("mapped.dat");
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        file.set_len(len_bytes).unwrap();
        OsFile::new(file, &path)
    }

    fn inside_map(file: &OsFile, bytes: &Bytes) -> bool {
        let map = file.map.lock().clone().expect("mapped");
        let map_range = map.as_ptr() as usize..map.as_ptr() as usize + map.len();
        map_range.contains(&(bytes.as_ptr() as usize)) && bytes.as_ptr() as usize + bytes.len() <= map_range.end
    }

    fn drop_from_page_cache(file: &OsFile) {
        file.sync_data().unwrap();
        // SAFETY: posix_fadvise only reads its integer arguments; the fd is open.
        let rc = unsafe { libc::posix_fadvise(file.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
    }

    fn pattern(len_bytes: usize, seed: u8) -> Vec<u8> {
        (0..len_bytes).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn a_resident_range_is_a_slice_of_the_map() {
        let dir = tempfile::tempdir().unwrap();
        let file = os_file(dir.path(), 1 << 20);
        let data = pattern(100_000, 1);
        file.write_at(5000, &data).unwrap();
        let bytes = file.read_at(5000, data.len() as u64).unwrap();
        assert_eq!(&bytes[..], &data[..]);
        assert!(inside_map(&file, &bytes), "a range in the page cache is not copied");
    }

    /// A range dropped from the page cache is read with pread into a buffer of its own (a
    /// disk error there is an `io::Error`, not SIGBUS); that read brings it back into the page
    /// cache, so the next read of it is a slice of the map again.
    #[test]
    fn a_range_not_in_the_page_cache_is_copied_then_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let file = os_file(dir.path(), 1 << 20);
        let data = pattern(300_000, 2);
        file.write_at(4096 + 100, &data).unwrap();
        let map = file.mapped(1 << 20).unwrap();
        drop_from_page_cache(&file);
        if resident(&map, 4096..4096 + 100 + data.len()) {
            eprintln!("this file system keeps the pages after POSIX_FADV_DONTNEED; nothing to check");
            return;
        }
        let cold = file.read_at(4096 + 100, data.len() as u64).unwrap();
        assert_eq!(&cold[..], &data[..]);
        assert!(!inside_map(&file, &cold), "a range not in the page cache is copied");
        let warm = file.read_at(4096 + 100, data.len() as u64).unwrap();
        assert_eq!(&warm[..], &data[..]);
        assert!(inside_map(&file, &warm), "the copy brought the range into the page cache");
        // One page missing is enough to copy the range: three pages never touched through the
        // map are dropped, then the middle one is written again.
        let pos = 768usize << 10;
        drop_from_page_cache(&file);
        file.write_at(pos as u64 + 4096, &data[..4096]).unwrap();
        assert!(resident(&map, pos + 4096..pos + 8192) && !resident(&map, pos..pos + 4096));
        let copied = file.read_at(pos as u64, 3 * 4096).unwrap();
        assert!(!inside_map(&file, &copied));
        assert_eq!(&copied[4096..8192], &data[..4096]);
    }

    /// Data written with O_DIRECT is not in the page cache: its first read is a copy.
    #[test]
    fn data_written_around_the_page_cache_is_read_as_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let file = os_file(dir.path(), 1 << 20);
        let _ = file.read_at(0, 1 << 20).unwrap(); // the whole file in the page cache, mapped
        let mut buf = AlignedBuf::default();
        buf.extend_from_slice(&pattern(256 << 10, 3));
        if !file.write_direct(64 << 10, buf.as_slice()).unwrap() {
            eprintln!("this file system has no O_DIRECT; nothing to check");
            return;
        }
        let bytes = file.read_at(64 << 10, 256 << 10).unwrap();
        assert_eq!(&bytes[..], buf.as_slice());
        assert!(!inside_map(&file, &bytes), "direct writes leave the range out of the page cache");
    }

    #[test]
    fn completions_of_other_calls_duplicates_and_strangers_are_ignored() {
        let mut batch = RingBatch::new(7, 4);
        batch.submitted(0..3);
        assert_eq!(batch.in_flight_count(), 3);
        let other_call = RingBatch::new(6, 4);
        assert!(!batch.complete(other_call.user_data(0), -libc::EIO), "an earlier call's completion");
        assert!(!batch.complete(batch.user_data(3), 0), "a sync never submitted");
        assert!(!batch.complete(batch.user_data(9), 0), "an index out of range");
        assert_eq!(batch.in_flight_count(), 3);
        assert!(batch.complete(batch.user_data(1), 0));
        assert!(!batch.complete(batch.user_data(1), -libc::EIO), "a second completion of one sync");
        assert_eq!(batch.in_flight_count(), 2);
        assert_eq!(batch.slots, [SyncSlot::InFlight, SyncSlot::Done(0), SyncSlot::InFlight, SyncSlot::Unsubmitted]);
    }

    /// The ring failed part way: file 0 completed, file 1 failed, file 2 was in flight, files
    /// 3 and 4 never reached the kernel.
    #[test]
    fn after_a_ring_failure_only_unsubmitted_files_are_synced_again() {
        let mut batch = RingBatch::new(1, 5);
        batch.submitted(0..3);
        assert!(batch.complete(batch.user_data(0), 0));
        assert!(batch.complete(batch.user_data(1), -libc::EIO));
        batch.failure = Some(io::Error::from_raw_os_error(libc::EBUSY));
        let mut asked = Vec::new();
        let results = batch.results(|unsubmitted| {
            asked = unsubmitted.to_vec();
            vec![Ok(()), Err(io::Error::from_raw_os_error(libc::ENOSPC))]
        });
        assert_eq!(asked, [3, 4], "only syncs that never reached the kernel run again");
        assert!(results[0].is_ok());
        assert_eq!(results[1].as_ref().unwrap_err().raw_os_error(), Some(libc::EIO));
        let unknown = results[2].as_ref().unwrap_err().to_string();
        assert!(unknown.contains("unknown"), "{unknown}");
        assert!(results[3].is_ok());
        assert_eq!(results[4].as_ref().unwrap_err().raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn a_batch_that_completed_needs_no_fallback() {
        let mut batch = RingBatch::new(u32::MAX, 2);
        batch.submitted(0..2);
        assert!(batch.complete(batch.user_data(1), 0));
        assert!(batch.complete(batch.user_data(0), 0));
        let results = batch.results(|_| panic!("nothing to sync again"));
        assert!(results.iter().all(Result::is_ok));
    }
}
