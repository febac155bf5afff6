//! Shared pieces of Tern's criterion benches: where they run, the payloads they write and the
//! raw-disk baselines that every group measures beside Tern in the same run and directory
//! (STYLE.md, "Benchmarks: ratios to the raw disk"). The peer comparison in `benches/peers`
//! uses the same baselines.
//!
//! Everything here is plain `std` + `libc` file I/O; nothing depends on Tern's private items.
#![warn(missing_docs)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Environment variable naming the directory the benches make their temporary directories in.
pub const BENCH_DIR_ENV: &str = "TERN_BENCH_DIR";

/// Bytes of one MiB.
pub const MIB: usize = 1 << 20;

/// The directory benches work in: `$TERN_BENCH_DIR`, or the system temporary directory.
pub fn bench_root() -> PathBuf {
    std::env::var_os(BENCH_DIR_ENV).map(PathBuf::from).unwrap_or_else(std::env::temp_dir)
}

/// A fresh temporary directory inside [`bench_root`], removed when dropped.
///
/// # Panics
/// When the directory cannot be made; the message names `TERN_BENCH_DIR`.
pub fn bench_dir(prefix: &str) -> tempfile::TempDir {
    let root = bench_root();
    tempfile::Builder::new()
        .prefix(&format!("tern-bench-{prefix}-"))
        .tempdir_in(&root)
        .unwrap_or_else(|e| panic!("cannot make a bench directory in {} (set {BENCH_DIR_ENV}): {e}", root.display()))
}

/// `len` pseudo-random bytes (xorshift64* from `seed`): incompressible, so a peer that
/// compresses batches gains nothing from the payload.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Opens (truncating) `path` and allocates `size_bytes` on disk for it, as Tern pre-allocates
/// its segments.
///
/// # Errors
/// I/O errors creating or sizing the file.
pub fn preallocated(path: &Path, size_bytes: u64) -> io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    let len = libc::off_t::try_from(size_bytes).map_err(|_| io::Error::other("file size too large"))?;
    // SAFETY: fallocate reads only its integer arguments; the descriptor is open for writing.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc != 0 {
        file.set_len(size_bytes)?;
    }
    Ok(file)
}

/// [`preallocated`], then written through once with zeros and synced, so that later writes
/// overwrite blocks that are allocated and written: no unwritten-extent conversion (a metadata
/// change a later `fdatasync` must commit) in any measured write, whether or not the writes
/// have wrapped around yet. This is the disk's best case for the raw limits.
///
/// # Errors
/// I/O errors creating, writing or syncing the file.
pub fn prewritten(path: &Path, size_bytes: u64) -> io::Result<File> {
    let file = preallocated(path, size_bytes)?;
    let zeros = vec![0u8; MIB];
    let mut pos = 0;
    while pos < size_bytes {
        let len = zeros.len().min(usize::try_from(size_bytes - pos).unwrap_or(usize::MAX));
        file.write_all_at(&zeros[..len], pos)?;
        pos += len as u64;
    }
    file.sync_data()?;
    Ok(file)
}

/// The raw append limit: `pwrite` at the end of a [`prewritten`] file, optionally followed by
/// `fdatasync`. Writes wrap to the start of the file when they reach its end.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    size_bytes: u64,
    pos: u64,
}

impl RawFile {
    /// Creates the pre-allocated file.
    ///
    /// # Errors
    /// I/O errors creating it.
    pub fn create(path: &Path, size_bytes: u64) -> io::Result<RawFile> {
        Ok(RawFile { file: prewritten(path, size_bytes)?, size_bytes, pos: 0 })
    }

    /// Writes `buf` at the current end (page cache only).
    ///
    /// # Errors
    /// I/O errors of the write.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        let len = buf.len() as u64;
        if self.pos + len > self.size_bytes {
            self.pos = 0;
        }
        self.file.write_all_at(buf, self.pos)?;
        self.pos += len;
        Ok(())
    }

    /// Writes `buf` at the current end and waits for `fdatasync`.
    ///
    /// # Errors
    /// I/O errors of the write or the sync.
    pub fn write_and_sync(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write(buf)?;
        self.file.sync_data()
    }

    /// `fdatasync` of everything written so far.
    ///
    /// # Errors
    /// I/O errors of the sync.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[derive(Debug, Default)]
struct GroupState {
    pending: Vec<u8>,
    queued: u64,
    durable: u64,
    leader: bool,
    pos: u64,
    failed: bool,
}

/// The raw group-commit limit: writers queue records; whoever finds no leader becomes one,
/// writes everything pending at the end of a [`prewritten`] file with one `pwrite` and syncs
/// once with `fdatasync`; every writer whose record that covered returns.
#[derive(Debug)]
pub struct RawGroupCommit {
    file: File,
    size_bytes: u64,
    state: Mutex<GroupState>,
    cond: Condvar,
}

impl RawGroupCommit {
    /// Creates the pre-allocated file.
    ///
    /// # Errors
    /// I/O errors creating it.
    pub fn create(path: &Path, size_bytes: u64) -> io::Result<RawGroupCommit> {
        Ok(RawGroupCommit {
            file: prewritten(path, size_bytes)?,
            size_bytes,
            state: Mutex::new(GroupState::default()),
            cond: Condvar::new(),
        })
    }

    /// Appends `record` and returns once a `fdatasync` covered it.
    ///
    /// # Errors
    /// When a write or sync of any group failed.
    pub fn append(&self, record: &[u8]) -> io::Result<()> {
        let mut write_buf = Vec::new();
        let mut st = self.state.lock();
        st.pending.extend_from_slice(record);
        st.queued += 1;
        let mine = st.queued;
        loop {
            if st.failed {
                return Err(io::Error::other("raw group commit: a write or sync failed"));
            }
            if st.durable >= mine {
                return Ok(());
            }
            if st.leader {
                self.cond.wait(&mut st);
                continue;
            }
            st.leader = true;
            std::mem::swap(&mut write_buf, &mut st.pending);
            let upto = st.queued;
            let len = write_buf.len() as u64;
            if st.pos + len > self.size_bytes {
                st.pos = 0;
            }
            let pos = st.pos;
            st.pos += len;
            drop(st);
            let result = self.file.write_all_at(&write_buf, pos).and_then(|()| self.file.sync_data());
            write_buf.clear();
            st = self.state.lock();
            st.leader = false;
            st.failed |= result.is_err();
            st.durable = st.durable.max(upto);
            self.cond.notify_all();
        }
    }
}

/// The raw read limit: a file of the scanned size, memory-mapped, with a crc32 over every
/// 1 MiB (the size of the batches the benches write, one checksum each).
#[derive(Debug)]
pub struct RawMapped {
    map: memmap2::Mmap,
}

impl RawMapped {
    /// Writes `size_bytes` of pseudo-random data to `path` in 1 MiB writes, syncs it and maps
    /// it. The pages stay in the page cache, as a log's do right after it was written.
    ///
    /// # Errors
    /// I/O errors writing or mapping the file.
    pub fn create(path: &Path, size_bytes: u64) -> io::Result<RawMapped> {
        let file = preallocated(path, size_bytes)?;
        let chunk = payload(MIB, 7);
        let mut pos = 0;
        while pos < size_bytes {
            let len = chunk.len().min(usize::try_from(size_bytes - pos).unwrap_or(usize::MAX));
            file.write_all_at(&chunk[..len], pos)?;
            pos += len as u64;
        }
        file.sync_data()?;
        // SAFETY: the file is private to this bench and nothing changes it while it is mapped.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(RawMapped { map })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Reads every byte through the map, with a crc32 per 1 MiB; returns the xor of them.
    pub fn crc_all(&self) -> u32 {
        self.map.chunks(MIB).fold(0, |acc, chunk| acc ^ crc32fast::hash(chunk))
    }
}

/// The raw floor of reopening a log: open and map each of `paths` (files the size of the
/// log's segments), then unmap and close them. Returns the bytes mapped.
///
/// # Errors
/// I/O errors opening or mapping.
pub fn raw_open_and_map(paths: &[PathBuf]) -> io::Result<usize> {
    let mut mapped = 0;
    for path in paths {
        let file = File::open(path)?;
        // SAFETY: the file is private to this bench and nothing changes it while it is mapped.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        mapped += map.len();
    }
    Ok(mapped)
}

/// Runs `writers` threads, each calling `work(writer, count)` once with its share of `iters`
/// (they add up to `iters`), and returns the wall time from the moment all threads are ready
/// until the last one finished. The threads are spawned before the clock starts.
///
/// # Panics
/// When `work` panics in any thread.
pub fn timed_writers<F>(writers: usize, iters: u64, work: F) -> Duration
where
    F: Fn(usize, u64) + Sync,
{
    let writers = writers.max(1);
    let barrier = Barrier::new(writers + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (barrier, work) = (&barrier, &work);
                let share = iters / writers as u64 + u64::from((w as u64) < iters % writers as u64);
                s.spawn(move || {
                    barrier.wait();
                    work(w, share);
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        for handle in handles {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        started.elapsed()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn payload_is_deterministic_and_sized() {
        assert_eq!(payload(4096, 3), payload(4096, 3));
        assert_ne!(payload(4096, 3), payload(4096, 4));
        assert_eq!(payload(13, 1).len(), 13);
    }

    #[test]
    fn timed_writers_share_all_iterations() {
        for (writers, iters) in [(1, 0), (4, 3), (16, 1001), (64, 64)] {
            let done = AtomicU64::new(0);
            timed_writers(writers, iters, |_, n| {
                done.fetch_add(n, Ordering::Relaxed);
            });
            assert_eq!(done.load(Ordering::Relaxed), iters);
        }
    }

    #[test]
    fn raw_baselines_write_and_read() {
        let dir = bench_dir("unit");
        let mut raw = RawFile::create(&dir.path().join("raw"), 8192).expect("raw file");
        for _ in 0..5 {
            raw.write_and_sync(&[1u8; 3000]).expect("write");
        }
        let group = RawGroupCommit::create(&dir.path().join("group"), 1 << 20).expect("group file");
        timed_writers(4, 40, |_, n| {
            for _ in 0..n {
                group.append(&[2u8; 128]).expect("append");
            }
        });
        let mapped = RawMapped::create(&dir.path().join("mapped"), 3 * MIB as u64 / 2).expect("mapped");
        assert_eq!(mapped.len(), 3 * MIB / 2);
        let _ = mapped.crc_all();
        assert_eq!(raw_open_and_map(&[dir.path().join("mapped")]).expect("map"), 3 * MIB / 2);
    }
}
