//! A file layer in memory that models what a power loss and a failing disk do to files, for
//! crash tests. It is meant to be as unkind as a real Linux filesystem, not kinder.
//!
//! Faults it injects, and why Tern must survive each:
//! - **Lost unsynced data**: [`SimDisk::crash`] keeps only what `sync_data` made durable, and
//!   only the names that `sync_dir` made durable. Page caches are volatile.
//! - **Torn writes** ([`Tear::Prefix`], [`Tear::Half`], [`Tear::AllButOne`]): a crash may keep
//!   earlier unsynced writes, in order, and part of the last one. Disks write sectors, not
//!   frames.
//! - **Pages that survive out of order** ([`Tear::Random`]): the kernel writes dirty pages back
//!   in its own order, so after a power loss any subset of them may be on the disk: a later
//!   page without an earlier one, and a page torn at a 512-byte sector, because a device only
//!   promises that a sector is written whole. Recovery must not assume that what survived is a
//!   prefix of what was written.
//! - **Names that survive without their data** ([`Tear::Random`]): a filesystem journals the
//!   changes of a directory in order, but apart from file data. A crash keeps a prefix of each
//!   directory's pending creations, renames and removals, whether or not the files' data was
//!   synced. A created file then holds its durable content: zeros over the size it was created
//!   with. Creating a file in place and then writing it is a crash window; write a temporary
//!   file, sync it, rename it, and sync the directory.
//! - **Power loss at a sync point**: [`SimDisk::crash_at_sync`] makes the Nth sync and every
//!   operation after it fail, as if the machine stopped there.
//! - **Failed sync** ([`FaultOp::Sync`]): EIO, and what Linux does next. The kernel marks the
//!   dirty pages clean but keeps them cached: reads still return the new bytes, the next sync
//!   of the file reports success, and those bytes never become durable. A log that retries a
//!   failed sync and then trusts its data loses acknowledged records; it must fence instead.
//! - **Failed write, create, rename, remove or directory sync** ([`SimDisk::fail_next`]): the
//!   operation changes nothing. Error paths must leave the log consistent.
//! - **Failed allocation** ([`FaultOp::Allocate`]): `create` with a size gets ENOSPC from the
//!   pre-allocation and leaves no file behind, as [`Disk::create`] promises. Like `OsDisk`, it
//!   created the name and removed it again, so a power loss before the directory is synced may
//!   bring the name back as an empty file ([`Tear::Random`]).
//! - **Full disk** ([`SimDisk::full_after`]): ENOSPC once a byte budget is used.
//! - **Bit flips** ([`SimDisk::flip_bit`]): media errors in durable data.
//!
//! A test that claims to survive a fault must also show the fault happened (a twin test that
//! sees the loss). [`SimDisk::crash_with_report`], [`SimDisk::crash_report`] and
//! [`SimDisk::dirty_pages`] say how many pages and names a crash kept, tore or lost, and how many
//! writes failed syncs dropped.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::disk::{Disk, DiskFile};

/// The unit in which the page cache writes file data back, and in which [`Tear::Random`]
/// keeps or loses it.
pub const PAGE_BYTES: usize = 4096;
/// The unit a device writes whole; a page torn by [`Tear::Random`] is torn at a multiple of it.
pub const SECTOR_BYTES: usize = 512;
const SECTORS_PER_PAGE: usize = PAGE_BYTES / SECTOR_BYTES;
const _: () = assert!(PAGE_BYTES.is_multiple_of(SECTOR_BYTES) && SECTORS_PER_PAGE > 1);

/// What a crash keeps of the data and names that were not yet durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tear {
    /// Every unsynced write is lost.
    None,
    /// Earlier unsynced writes survive whole; the last keeps only its first N bytes.
    Prefix(usize),
    /// Earlier unsynced writes survive whole; the last keeps its first half.
    Half,
    /// Earlier unsynced writes survive whole; the last loses only its final byte.
    AllButOne,
    /// A power loss as a real filesystem sees it, chosen by the seed. Each dirty page of each
    /// file is independently kept whole, lost, or torn after its first 1 to 7 sectors; a
    /// prefix of each directory's pending name operations becomes durable. The same disk
    /// operations and the same seed always give the same image.
    ///
    /// The legacy variants above work on writes, not pages, and never make a name durable
    /// without [`Disk::sync_dir`].
    Random(u64),
}

/// Operations that [`SimDisk::fail_next`] can make fail. A failed operation changes nothing,
/// except a failed sync, which drops the file's unsynced writes (see [`FaultOp::Sync`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// `write_at`.
    Write,
    /// `sync_data` (and each file of `sync_files`). As on Linux, the file's unsynced writes
    /// are dropped: reads keep returning them until a crash, the next sync succeeds, and they
    /// never become durable. The failed call is not a sync point.
    Sync,
    /// `create`.
    Create,
    /// `sync_dir`. The directory's pending name operations stay pending. The failed call is
    /// still a sync point, so [`SimDisk::crash_at_sync`] numbering does not depend on faults.
    SyncDir,
    /// `rename`.
    Rename,
    /// `remove`.
    Remove,
    /// The pre-allocation of the next `create` with a size above zero (creates of size zero
    /// leave this fault queued). The create fails and leaves no file. As with `OsDisk`, the
    /// name was created and removed again: until the directory is synced, a [`Tear::Random`]
    /// crash may keep the creation without the removal, leaving an empty file.
    Allocate,
}

/// What the last crash did, for tests that must prove a fault was exercised.
///
/// Page counts describe [`Tear::Random`] crashes; the legacy tears work on writes and leave
/// them at zero. A rename between two directories is one name operation in each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Dirty pages that reached the disk whole.
    pub pages_kept_count: u64,
    /// Dirty pages of which nothing reached the disk.
    pub pages_lost_count: u64,
    /// Dirty pages of which only the first 1 to 7 sectors reached the disk.
    pub pages_torn_count: u64,
    /// Pending name operations (creations, renames, removals) that became durable although
    /// their directory was not synced.
    pub name_ops_kept_count: u64,
    /// Pending name operations that were lost.
    pub name_ops_lost_count: u64,
    /// Writes dropped by failed syncs since the disk was made, as of this report. They were
    /// readable until a crash and never became durable.
    pub writes_dropped_count: u64,
}

/// A change to a file's content since its last sync (successful or failed).
#[derive(Debug, Clone)]
enum Pending {
    Write { pos: usize, bytes: Vec<u8> },
    SetLen(usize),
}

#[derive(Debug, Clone, Default)]
struct Inode {
    /// What reads see: the page cache.
    live: Vec<u8>,
    /// What survives power loss without the pending changes.
    durable: Vec<u8>,
    /// Changes since the last sync, in order; a sync makes exactly these durable.
    pending: Vec<Pending>,
    /// Pages touched by the writes in `pending`.
    dirty_pages: BTreeSet<usize>,
    /// A failed sync dropped writes since the last crash, so `live` holds bytes that no sync
    /// will make durable.
    dropped: bool,
}

impl Inode {
    /// `durable` with every pending change applied: what a sync makes durable. Equal to `live`
    /// unless a failed sync dropped writes.
    fn synced_image(&self) -> Vec<u8> {
        let mut image = self.durable.clone();
        for change in &self.pending {
            match change {
                Pending::Write { pos, bytes } => apply_write(&mut image, *pos, bytes),
                Pending::SetLen(len_bytes) => image.resize(*len_bytes, 0),
            }
        }
        debug_assert!(self.dropped || image == self.live, "pending changes do not rebuild the live content");
        image
    }

    fn sync(&mut self) {
        self.durable = self.synced_image();
        self.pending.clear();
        self.dirty_pages.clear();
    }

    /// A failed sync: the kernel marked the pages clean, so the writes are never written back.
    /// Length changes are metadata and stay pending. Returns how many writes were dropped.
    fn drop_dirty_writes(&mut self) -> u64 {
        let before = self.pending.len();
        self.pending.retain(|change| matches!(change, Pending::SetLen(_)));
        self.dirty_pages.clear();
        self.dropped = true;
        (before - self.pending.len()) as u64
    }

    /// The image after a crash with a legacy tear: earlier writes whole, the last one torn.
    /// Length changes are lost, as they always were with these tears.
    fn legacy_image(&self, tear: Tear) -> Vec<u8> {
        let mut image = self.durable.clone();
        if tear == Tear::None {
            return image;
        }
        let writes: Vec<(usize, &[u8])> = self
            .pending
            .iter()
            .filter_map(|change| match change {
                Pending::Write { pos, bytes } => Some((*pos, bytes.as_slice())),
                Pending::SetLen(_) => None,
            })
            .collect();
        let last = writes.len().saturating_sub(1);
        for (i, (pos, bytes)) in writes.into_iter().enumerate() {
            let keep = if i < last {
                bytes.len()
            } else {
                match tear {
                    Tear::None | Tear::Random(_) => 0,
                    Tear::Prefix(n) => n.min(bytes.len()),
                    Tear::Half => bytes.len() / 2,
                    Tear::AllButOne => bytes.len().saturating_sub(1),
                }
            };
            apply_write(&mut image, pos, bytes.get(..keep).unwrap_or_default());
        }
        image
    }

    /// The image after a crash with [`Tear::Random`]: each dirty page kept, lost or torn. The
    /// length is the durable one, extended over what survived past it, never past the length
    /// a sync would have made durable.
    fn random_image(&self, rng: &mut SplitMix64, report: &mut CrashReport) -> Vec<u8> {
        let target = self.synced_image();
        let mut image = self.durable.clone();
        for &page in &self.dirty_pages {
            let start = page * PAGE_BYTES;
            let kept_bytes = match rng.below(3) {
                0 => {
                    report.pages_kept_count += 1;
                    PAGE_BYTES
                }
                1 => {
                    report.pages_lost_count += 1;
                    continue;
                }
                _ => {
                    report.pages_torn_count += 1;
                    (1 + rng.below(SECTORS_PER_PAGE as u64 - 1) as usize) * SECTOR_BYTES
                }
            };
            let end = (start + kept_bytes).min(target.len());
            if let Some(bytes) = target.get(start..end) {
                apply_write(&mut image, start, bytes);
            }
        }
        image
    }
}

/// One change to the entries of one directory, waiting for `sync_dir`. A rename within a
/// directory both unlinks and links; a rename between directories is an unlink in the
/// source directory and a link in the target directory.
#[derive(Debug, Clone)]
struct NameOp {
    unlink: Option<PathBuf>,
    link: Option<(PathBuf, usize)>,
}

impl NameOp {
    fn apply(&self, names: &mut BTreeMap<PathBuf, usize>) {
        if let Some(path) = &self.unlink {
            names.remove(path);
        }
        if let Some((path, index)) = &self.link {
            names.insert(path.clone(), *index);
        }
    }
}

/// SplitMix64 (Steele, Lea and Flood, 2014). Its output is fixed by its definition, so a seed
/// gives the same crash image on every version of Tern and of its dependencies.
struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for one file or directory: its choices do not change when other files or
    /// directories are added to the workload.
    fn stream(seed: u64, key: u64) -> Self {
        let mut key = SplitMix64(key);
        SplitMix64(seed ^ key.next_u64())
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`. The modulo bias is below 2^-50 for the small `n` used here.
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// FNV-1a of a path's bytes: a stable key for a directory's generator (std's hasher may change).
fn path_key(path: &Path) -> u64 {
    path.as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xCBF2_9CE4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01B3))
}

/// The directory whose entry `path` is.
fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

#[derive(Debug, Clone, Default)]
struct State {
    inodes: Vec<Inode>,
    live_names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    /// Per directory, the name operations since its last `sync_dir`, in order. Applying them
    /// to the durable names of the directory gives its live names.
    pending_names: BTreeMap<PathBuf, Vec<NameOp>>,
    generation: u64,
    syncs: u64,
    crash_at_sync: Option<u64>,
    dead: bool,
    faults: VecDeque<(FaultOp, i32)>,
    bytes_left: Option<u64>,
    last_crash: CrashReport,
    writes_dropped_count: u64,
}

impl State {
    fn check_alive(&self) -> io::Result<()> {
        if self.dead {
            return Err(io::Error::other("simulated power loss"));
        }
        Ok(())
    }

    fn take_fault(&mut self, op: FaultOp) -> io::Result<()> {
        if let Some(i) = self.faults.iter().position(|(o, _)| *o == op) {
            if let Some((_, errno)) = self.faults.remove(i) {
                return Err(io::Error::from_raw_os_error(errno));
            }
        }
        Ok(())
    }

    /// Counts a sync point; at the planned crash point the machine "stops".
    fn sync_point(&mut self) -> io::Result<()> {
        self.check_alive()?;
        if self.crash_at_sync == Some(self.syncs) {
            self.dead = true;
            return Err(io::Error::other("simulated power loss"));
        }
        self.syncs += 1;
        Ok(())
    }

    fn spend(&mut self, len_bytes: u64) -> io::Result<()> {
        if let Some(left) = self.bytes_left.as_mut() {
            if *left < len_bytes {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            *left -= len_bytes;
        }
        Ok(())
    }

    fn inode(&mut self, index: usize) -> io::Result<&mut Inode> {
        self.inodes.get_mut(index).ok_or_else(|| io::Error::other("stale inode"))
    }

    /// Applies a name operation to the live names and queues it for its directory.
    fn change_name(&mut self, dir: PathBuf, op: NameOp) {
        op.apply(&mut self.live_names);
        self.pending_names.entry(dir).or_default().push(op);
    }

    fn report(&self) -> CrashReport {
        CrashReport { writes_dropped_count: self.writes_dropped_count, ..self.last_crash }
    }
}

/// An in-memory [`Disk`] with a power-loss model. Cloning shares the same disk.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// An independent copy of this disk as it is now, written, synced and pending alike: crash
    /// the copy to see what a power loss at this moment would leave, the original untouched.
    /// Files open on the original are not open on the copy.
    ///
    /// ```
    /// use std::path::Path;
    /// use tern_segment::sim::{SimDisk, Tear};
    /// use tern_segment::Disk;
    /// let disk = SimDisk::new();
    /// let file = disk.create(Path::new("/d/a"), 0)?;
    /// disk.sync_dir(Path::new("/d"))?;
    /// file.write_at(0, b"unsynced")?;
    /// let image = disk.fork();
    /// image.crash(Tear::None);
    /// assert_eq!(image.file_len(Path::new("/d/a")), Some(0));
    /// assert_eq!(disk.file_len(Path::new("/d/a")), Some(8), "the original keeps its page cache");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn fork(&self) -> SimDisk {
        let mut state = self.state.lock().clone();
        state.generation += 1;
        SimDisk { state: Arc::new(Mutex::new(state)) }
    }

    /// Sync points (`sync_data` and `sync_dir` calls) counted so far.
    pub fn sync_points(&self) -> u64 {
        self.state.lock().syncs
    }

    /// Makes sync point `n` (0-based) and every operation after it fail, as if power were lost
    /// just before it. Call [`SimDisk::crash`] afterwards to reboot.
    pub fn crash_at_sync(&self, n: u64) {
        self.state.lock().crash_at_sync = Some(n);
    }

    /// The next `op` fails with the OS error `errno` (for example `libc::EIO`).
    pub fn fail_next(&self, op: FaultOp, errno: i32) {
        self.state.lock().faults.push_back((op, errno));
    }

    /// After `len_bytes` more bytes are written or allocated, writes and creates fail with ENOSPC.
    pub fn full_after(&self, len_bytes: u64) {
        self.state.lock().bytes_left = Some(len_bytes);
    }

    /// Lifts the ENOSPC budget.
    pub fn unlimited(&self) {
        self.state.lock().bytes_left = None;
    }

    /// Flips one bit of a file, in both its live and its durable content.
    pub fn flip_bit(&self, path: &Path, pos: u64, bit: u8) -> io::Result<()> {
        let mut state = self.state.lock();
        let index = *state.live_names.get(path).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let inode = state.inode(index)?;
        let pos = usize::try_from(pos).map_err(io::Error::other)?;
        for data in [&mut inode.live, &mut inode.durable] {
            if let Some(byte) = data.get_mut(pos) {
                *byte ^= 1 << (bit % 8);
            }
        }
        Ok(())
    }

    /// The process dies and a new one starts, the machine stays up: everything written stays
    /// (the page cache survives), synced or not, including writes a failed sync dropped; open
    /// files become invalid.
    pub fn kill(&self) {
        let mut state = self.state.lock();
        state.generation += 1;
        state.dead = false;
        state.crash_at_sync = None;
        state.faults.clear();
    }

    /// Power loss and reboot: names and bytes fall back to what was made durable, plus what
    /// `tear` lets survive of the rest. Writes dropped by a failed sync are gone. Open files
    /// become invalid.
    pub fn crash(&self, tear: Tear) {
        self.crash_with_report(tear);
    }

    /// [`SimDisk::crash`], returning what the crash kept and lost.
    ///
    /// ```
    /// use std::path::Path;
    /// use tern_segment::sim::{SimDisk, Tear};
    /// use tern_segment::Disk;
    /// let disk = SimDisk::new();
    /// let file = disk.create(Path::new("/d/a"), 0)?;
    /// disk.sync_dir(Path::new("/d"))?;
    /// file.write_at(0, &[7; 8192])?; // two dirty pages, never synced
    /// let report = disk.crash_with_report(Tear::Random(42));
    /// assert_eq!(report.pages_kept_count + report.pages_lost_count + report.pages_torn_count, 2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn crash_with_report(&self, tear: Tear) -> CrashReport {
        let mut state = self.state.lock();
        let mut report = CrashReport::default();
        for (index, inode) in state.inodes.iter_mut().enumerate() {
            let image = match tear {
                Tear::Random(seed) => inode.random_image(&mut SplitMix64::stream(seed, index as u64), &mut report),
                legacy => inode.legacy_image(legacy),
            };
            inode.live = image.clone();
            inode.durable = image;
            inode.pending.clear();
            inode.dirty_pages.clear();
            inode.dropped = false;
        }
        let pending_names = std::mem::take(&mut state.pending_names);
        for (dir, ops) in pending_names {
            let kept_count = match tear {
                Tear::Random(seed) => {
                    let mut rng = SplitMix64::stream(seed, path_key(&dir));
                    rng.below(ops.len() as u64 + 1) as usize
                }
                _ => 0,
            };
            for op in ops.iter().take(kept_count) {
                op.apply(&mut state.durable_names);
            }
            report.name_ops_kept_count += kept_count as u64;
            report.name_ops_lost_count += (ops.len() - kept_count) as u64;
        }
        state.live_names = state.durable_names.clone();
        state.generation += 1;
        state.dead = false;
        state.crash_at_sync = None;
        state.faults.clear();
        state.last_crash = report;
        state.report()
    }

    /// What the last crash kept and lost (all zero before the first crash), with the writes
    /// dropped by failed syncs counted up to now.
    pub fn crash_report(&self) -> CrashReport {
        self.state.lock().report()
    }

    /// Pages of a file touched by writes since its last sync, successful or failed (a failed
    /// sync drops them). Zero when no file has this name.
    pub fn dirty_pages(&self, path: &Path) -> usize {
        let state = self.state.lock();
        let Some(index) = state.live_names.get(path) else { return 0 };
        state.inodes.get(*index).map_or(0, |inode| inode.dirty_pages.len())
    }

    /// Names of all files that currently exist, for tests that damage every file.
    pub fn files(&self) -> Vec<PathBuf> {
        self.state.lock().live_names.keys().cloned().collect()
    }

    /// Current length of a file.
    pub fn file_len(&self, path: &Path) -> Option<u64> {
        let state = self.state.lock();
        let index = *state.live_names.get(path)?;
        state.inodes.get(index).map(|i| i.live.len() as u64)
    }

    fn handle(&self, index: usize, generation: u64) -> Arc<dyn DiskFile> {
        Arc::new(SimFile { state: self.state.clone(), index, generation })
    }
}

fn apply_write(data: &mut Vec<u8>, pos: usize, bytes: &[u8]) {
    let end = pos + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    if let Some(target) = data.get_mut(pos..end) {
        target.copy_from_slice(bytes);
    }
}

impl Disk for SimDisk {
    fn create(&self, path: &Path, size_bytes: u64) -> io::Result<Arc<dyn DiskFile>> {
        let mut state = self.state.lock();
        state.check_alive()?;
        state.take_fault(FaultOp::Create)?;
        if state.live_names.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let size = usize::try_from(size_bytes).map_err(io::Error::other)?;
        let dir = parent_of(path);
        let (link, unlink) = (
            NameOp { unlink: None, link: Some((path.to_path_buf(), state.inodes.len())) },
            NameOp { unlink: Some(path.to_path_buf()), link: None },
        );
        if size_bytes > 0 {
            if let Err(err) = state.take_fault(FaultOp::Allocate) {
                // As OsDisk does: the name was created, the pre-allocation failed, and the name
                // was removed again. Both changes wait for `sync_dir`, so a power loss before it
                // may keep the creation without the removal: an empty file.
                state.inodes.push(Inode::default());
                state.change_name(dir.clone(), link);
                state.change_name(dir, unlink);
                return Err(err);
            }
        }
        state.spend(size_bytes)?;
        // The allocation is metadata: it is durable with the name, and reads as zeros.
        state.inodes.push(Inode { live: vec![0; size], durable: vec![0; size], ..Inode::default() });
        let index = state.inodes.len() - 1;
        state.change_name(dir, link);
        let generation = state.generation;
        drop(state);
        Ok(self.handle(index, generation))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
        let state = self.state.lock();
        state.check_alive()?;
        let index = *state.live_names.get(path).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let generation = state.generation;
        drop(state);
        Ok(self.handle(index, generation))
    }

    fn rename(&self, source: &Path, target: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.check_alive()?;
        state.take_fault(FaultOp::Rename)?;
        let index = *state.live_names.get(source).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let (source_dir, target_dir) = (parent_of(source), parent_of(target));
        let (unlink, link) = (Some(source.to_path_buf()), Some((target.to_path_buf(), index)));
        if source_dir == target_dir {
            state.change_name(source_dir, NameOp { unlink, link });
        } else {
            state.change_name(source_dir, NameOp { unlink, link: None });
            state.change_name(target_dir, NameOp { unlink: None, link });
        }
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.check_alive()?;
        state.take_fault(FaultOp::Remove)?;
        if !state.live_names.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        state.change_name(parent_of(path), NameOp { unlink: Some(path.to_path_buf()), link: None });
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state.lock();
        state.check_alive()?;
        let mut names: Vec<String> = state
            .live_names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        // Directories are implicit: a direct child directory is any prefix of a file path.
        for path in state.live_names.keys() {
            if let Ok(rest) = path.strip_prefix(dir) {
                let mut parts = rest.components();
                if let (Some(first), Some(_)) = (parts.next(), parts.next()) {
                    if let Some(name) = first.as_os_str().to_str() {
                        names.push(name.to_owned());
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        self.state.lock().check_alive()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.sync_point()?;
        state.take_fault(FaultOp::SyncDir)?;
        let ops = state.pending_names.remove(dir).unwrap_or_default();
        for op in &ops {
            op.apply(&mut state.durable_names);
        }
        debug_assert!(
            {
                let in_dir = |names: &BTreeMap<PathBuf, usize>| {
                    names
                        .iter()
                        .filter(|(p, _)| p.parent() == Some(dir))
                        .map(|(p, i)| (p.clone(), *i))
                        .collect::<Vec<_>>()
                };
                in_dir(&state.durable_names) == in_dir(&state.live_names)
            },
            "after sync_dir({}) its durable entries differ from its live ones",
            dir.display()
        );
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let state = self.state.lock();
        state.live_names.contains_key(path) || state.live_names.keys().any(|p| p.starts_with(path))
    }
}

/// A file of [`SimDisk`].
#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<State>>,
    index: usize,
    generation: u64,
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.state.lock();
        state.check_alive()?;
        if state.generation != self.generation {
            return Err(io::Error::other("file handle from before a crash"));
        }
        f(&mut state)
    }
}

impl DiskFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        self.with(|s| Ok(s.inode(self.index)?.live.len() as u64))
    }

    fn write_at(&self, pos: u64, bytes: &[u8]) -> io::Result<()> {
        self.with(|s| {
            s.take_fault(FaultOp::Write)?;
            let growth = (pos + bytes.len() as u64).saturating_sub(s.inode(self.index)?.live.len() as u64);
            s.spend(growth)?;
            let inode = s.inode(self.index)?;
            let pos = usize::try_from(pos).map_err(io::Error::other)?;
            apply_write(&mut inode.live, pos, bytes);
            if let Some(last) = (pos + bytes.len()).checked_sub(1) {
                inode.dirty_pages.extend(pos / PAGE_BYTES..=last / PAGE_BYTES);
            }
            inode.pending.push(Pending::Write { pos, bytes: bytes.to_vec() });
            Ok(())
        })
    }

    fn write_direct(&self, pos: u64, bytes: &[u8]) -> io::Result<bool> {
        let align = crate::disk::DIRECT_ALIGN_BYTES as u64;
        assert!(pos.is_multiple_of(align) && (bytes.len() as u64).is_multiple_of(align), "unaligned direct write");
        self.write_at(pos, bytes).map(|()| true)
    }

    fn read_at(&self, pos: u64, len_bytes: u64) -> io::Result<Bytes> {
        self.with(|s| {
            let inode = s.inode(self.index)?;
            let start = usize::try_from(pos).map_err(io::Error::other)?;
            let end = start.checked_add(usize::try_from(len_bytes).map_err(io::Error::other)?);
            end.and_then(|end| inode.live.get(start..end))
                .map(Bytes::copy_from_slice)
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|s| {
            if let Err(err) = s.take_fault(FaultOp::Sync) {
                let dropped_count = s.inode(self.index)?.drop_dirty_writes();
                s.writes_dropped_count += dropped_count;
                return Err(err);
            }
            s.sync_point()?;
            s.inode(self.index)?.sync();
            Ok(())
        })
    }

    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        self.with(|s| {
            let inode = s.inode(self.index)?;
            let len = usize::try_from(len_bytes).map_err(io::Error::other)?;
            inode.live.resize(len, 0);
            inode.pending.push(Pending::SetLen(len));
            Ok(())
        })
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_data_is_lost_and_synced_data_survives() {
        let disk = SimDisk::new();
        let dir = Path::new("/d");
        let f = disk.create(&dir.join("a"), 8).unwrap();
        f.write_at(0, b"sync").unwrap();
        f.sync_data().unwrap();
        disk.sync_dir(dir).unwrap();
        f.write_at(4, b"lost").unwrap();
        disk.crash(Tear::None);
        let f = disk.open(&dir.join("a")).unwrap();
        assert_eq!(&f.read_at(0, 8).unwrap()[..], b"sync\0\0\0\0");
    }

    #[test]
    fn a_file_whose_directory_was_not_synced_disappears() {
        let disk = SimDisk::new();
        let f = disk.create(Path::new("/d/a"), 4).unwrap();
        f.sync_data().unwrap();
        disk.crash(Tear::None);
        assert!(disk.open(Path::new("/d/a")).is_err());
    }

    #[test]
    fn a_torn_write_keeps_a_prefix() {
        let disk = SimDisk::new();
        let f = disk.create(Path::new("/d/a"), 0).unwrap();
        disk.sync_dir(Path::new("/d")).unwrap();
        f.write_at(0, b"abcdef").unwrap();
        disk.crash(Tear::Half);
        assert_eq!(&disk.open(Path::new("/d/a")).unwrap().read_at(0, 3).unwrap()[..], b"abc");
    }

    #[test]
    fn power_loss_at_a_sync_point_fails_that_sync() {
        let disk = SimDisk::new();
        let f = disk.create(Path::new("/d/a"), 0).unwrap();
        disk.crash_at_sync(1);
        f.sync_data().unwrap();
        assert!(f.sync_data().is_err());
        assert!(f.write_at(0, b"x").is_err());
    }

    const PAGE: u64 = PAGE_BYTES as u64;
    const SEEDS: u64 = 256;

    fn read_all(disk: &SimDisk, path: &Path) -> Option<Vec<u8>> {
        let file = disk.open(path).ok()?;
        Some(file.read_at(0, file.len().unwrap()).unwrap().to_vec())
    }

    /// Every file and its content: the whole image a crash left.
    fn image(disk: &SimDisk) -> BTreeMap<PathBuf, Vec<u8>> {
        disk.files().into_iter().map(|p| (p.clone(), read_all(disk, &p).unwrap())).collect()
    }

    /// How a crash treated one page: `Some(SECTORS_PER_PAGE)` kept, `Some(0)` lost,
    /// `Some(k)` torn after k sectors, `None` anything else (a bug in the model).
    fn fate(page: &[u8], old: u8, new: u8) -> Option<usize> {
        let sectors: Vec<u8> = page
            .chunks(SECTOR_BYTES)
            .map(|s| {
                if s.iter().all(|b| *b == new) {
                    new
                } else if s.iter().all(|b| *b == old) {
                    old
                } else {
                    0
                }
            })
            .collect();
        let new_count = sectors.iter().take_while(|s| **s == new).count();
        sectors[new_count..].iter().all(|s| *s == old).then_some(new_count)
    }

    #[test]
    fn a_failed_sync_drops_the_data_for_good_though_reads_still_return_it() {
        let disk = SimDisk::new();
        let (dir, path) = (Path::new("/d"), Path::new("/d/a"));
        let f = disk.create(path, 0).unwrap();
        disk.sync_dir(dir).unwrap();
        f.write_at(0, b"durable").unwrap();
        f.sync_data().unwrap();
        f.write_at(7, b"dropped").unwrap();
        disk.fail_next(FaultOp::Sync, libc::EIO);
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(libc::EIO));
        assert_eq!(&f.read_at(0, 14).unwrap()[..], b"durabledropped", "the page cache keeps the bytes");
        assert_eq!(disk.dirty_pages(path), 0, "the failed sync marked the pages clean");
        f.sync_data().expect("the next sync reports success");
        assert_eq!(disk.crash_report().writes_dropped_count, 1);
        disk.crash(Tear::AllButOne);
        assert_eq!(read_all(&disk, path).unwrap(), b"durable", "the successful sync made nothing of it durable");
    }

    #[test]
    fn a_process_kill_after_a_failed_sync_keeps_the_cached_bytes() {
        let disk = SimDisk::new();
        let path = Path::new("/d/a");
        let f = disk.create(path, 0).unwrap();
        f.write_at(0, b"cached").unwrap();
        disk.fail_next(FaultOp::Sync, libc::EIO);
        assert!(f.sync_data().is_err());
        disk.kill();
        assert_eq!(read_all(&disk, path).unwrap(), b"cached");
    }

    #[test]
    fn writes_after_a_failed_sync_become_durable_but_the_dropped_ones_never_do() {
        let disk = SimDisk::new();
        let (dir, path) = (Path::new("/d"), Path::new("/d/a"));
        let f = disk.create(path, 0).unwrap();
        disk.sync_dir(dir).unwrap();
        f.write_at(0, b"AAAA").unwrap();
        disk.fail_next(FaultOp::Sync, libc::EIO);
        assert!(f.sync_data().is_err());
        // Same page as the dropped write: still only this write becomes durable.
        f.write_at(8, b"BB").unwrap();
        assert_eq!(disk.dirty_pages(path), 1);
        f.sync_data().unwrap();
        assert_eq!(&f.read_at(0, 10).unwrap()[..], b"AAAA\0\0\0\0BB");
        disk.crash(Tear::None);
        assert_eq!(read_all(&disk, path).unwrap(), b"\0\0\0\0\0\0\0\0BB");
    }

    #[test]
    fn sync_files_drops_the_writes_of_each_file_whose_sync_failed() {
        let disk = SimDisk::new();
        let dir = Path::new("/d");
        let (a, b) = (disk.create(&dir.join("a"), 0).unwrap(), disk.create(&dir.join("b"), 0).unwrap());
        disk.sync_dir(dir).unwrap();
        a.write_at(0, b"lost").unwrap();
        b.write_at(0, b"kept").unwrap();
        disk.fail_next(FaultOp::Sync, libc::EIO);
        let results = disk.sync_files(&[&*a, &*b]);
        assert!(results[0].is_err() && results[1].is_ok(), "{results:?}");
        a.sync_data().unwrap();
        assert_eq!(disk.crash_report().writes_dropped_count, 1);
        disk.crash(Tear::Half);
        assert_eq!(read_all(&disk, &dir.join("a")).unwrap(), b"");
        assert_eq!(read_all(&disk, &dir.join("b")).unwrap(), b"kept");
    }

    #[test]
    fn dirty_pages_count_every_page_a_write_touches_until_a_sync() {
        let disk = SimDisk::new();
        let path = Path::new("/d/a");
        let f = disk.create(path, 0).unwrap();
        f.write_at(PAGE - 6, b"straddles").unwrap();
        f.write_at(3 * PAGE, b"").unwrap();
        assert_eq!(disk.dirty_pages(path), 2);
        f.sync_data().unwrap();
        assert_eq!(disk.dirty_pages(path), 0);
        assert_eq!(disk.dirty_pages(Path::new("/d/none")), 0);
    }

    /// Four synced pages of `OLD`, overwritten with page i holding `NEW + i`, never synced.
    fn overwritten_pages(seed: u64) -> (SimDisk, CrashReport) {
        const OLD: u8 = 0xAA;
        let disk = SimDisk::new();
        let path = Path::new("/d/a");
        let f = disk.create(path, 0).unwrap();
        disk.sync_dir(Path::new("/d")).unwrap();
        f.write_at(0, &[OLD; 4 * PAGE_BYTES]).unwrap();
        f.sync_data().unwrap();
        for page in 0..4u8 {
            f.write_at(u64::from(page) * PAGE, &[0x10 + page; PAGE_BYTES]).unwrap();
        }
        assert_eq!(disk.dirty_pages(path), 4);
        let report = disk.crash_with_report(Tear::Random(seed));
        (disk, report)
    }

    #[test]
    fn random_tears_keep_lose_or_tear_each_page_independently() {
        let (mut later_without_earlier, mut torn_seen) = (false, false);
        for seed in 0..SEEDS {
            let (disk, report) = overwritten_pages(seed);
            let content = read_all(&disk, Path::new("/d/a")).unwrap();
            assert_eq!(content.len(), 4 * PAGE_BYTES, "seed {seed}: overwrites do not change the length");
            let fates: Vec<usize> = content
                .chunks(PAGE_BYTES)
                .enumerate()
                .map(|(i, page)| {
                    fate(page, 0xAA, 0x10 + i as u8).unwrap_or_else(|| panic!("seed {seed}: page {i} is no tear"))
                })
                .collect();
            let count = |f: fn(&usize) -> bool| fates.iter().filter(|k| f(k)).count() as u64;
            assert_eq!(report.pages_kept_count, count(|k| *k == SECTORS_PER_PAGE), "seed {seed}: {fates:?}");
            assert_eq!(report.pages_lost_count, count(|k| *k == 0), "seed {seed}: {fates:?}");
            assert_eq!(report.pages_torn_count, count(|k| (1..SECTORS_PER_PAGE).contains(k)), "seed {seed}");
            later_without_earlier |= (0..4).any(|i| fates[i] == 0 && fates[i + 1..].contains(&SECTORS_PER_PAGE));
            torn_seen |= report.pages_torn_count > 0;
        }
        assert!(later_without_earlier, "no seed kept a later page while losing an earlier one");
        assert!(torn_seen, "no seed tore a page at a sector boundary");
    }

    #[test]
    fn random_tears_extend_the_length_only_over_what_survived() {
        let mut gap_seen = false;
        for seed in 0..SEEDS {
            let disk = SimDisk::new();
            let path = Path::new("/d/a");
            let f = disk.create(path, 0).unwrap();
            disk.sync_dir(Path::new("/d")).unwrap();
            f.write_at(0, &[1; PAGE_BYTES]).unwrap();
            f.sync_data().unwrap();
            f.write_at(PAGE, &[2; 3 * PAGE_BYTES - 100]).unwrap(); // the last page is partly written
            disk.crash(Tear::Random(seed));
            let content = read_all(&disk, path).unwrap();
            assert!(content[..PAGE_BYTES].iter().all(|b| *b == 1), "seed {seed}: durable page damaged");
            let appended = &content[PAGE_BYTES..];
            assert!(appended.iter().all(|b| *b == 0 || *b == 2), "seed {seed}: invented bytes");
            // The length ends with surviving data (or at the durable length), never with zeros.
            assert!(appended.last().is_none_or(|b| *b == 2), "seed {seed}: length past the data");
            assert!(content.len() <= 4 * PAGE_BYTES - 100, "seed {seed}: longer than anything written");
            gap_seen |= appended.first() == Some(&0);
        }
        assert!(gap_seen, "no seed kept a later appended page without the first one");
    }

    /// Several files in two directories, with synced and unsynced data and names.
    fn mixed_workload(disk: &SimDisk) {
        let (logs, meta) = (Path::new("/logs"), Path::new("/meta"));
        let segment = disk.create(&logs.join("0.seg"), 4 * PAGE).unwrap();
        disk.sync_dir(logs).unwrap();
        segment.write_at(0, &[3; 2 * PAGE_BYTES]).unwrap();
        segment.sync_data().unwrap();
        segment.write_at(PAGE, &[4; 3 * PAGE_BYTES]).unwrap();
        let next = disk.create(&logs.join("1.seg"), 2 * PAGE).unwrap();
        next.write_at(100, &[5; 5000]).unwrap();
        let tmp = disk.create(&meta.join("m.tmp"), 0).unwrap();
        tmp.write_at(0, b"meta").unwrap();
        disk.rename(&meta.join("m.tmp"), &meta.join("m")).unwrap();
        disk.rename(&logs.join("1.seg"), &meta.join("moved")).unwrap();
    }

    #[test]
    fn the_same_seed_gives_the_same_crash_image() {
        let mut images = BTreeSet::new();
        for seed in 0..32 {
            let run = || {
                let disk = SimDisk::new();
                mixed_workload(&disk);
                let report = disk.crash_with_report(Tear::Random(seed));
                (image(&disk), report)
            };
            let first = run();
            assert_eq!(first, run(), "seed {seed}");
            images.insert(first.0);
        }
        assert!(images.len() > 1, "the seed never changed the image");
    }

    #[test]
    fn a_preallocated_file_whose_name_survives_without_its_data_reads_as_zeros_of_its_full_size() {
        let (mut zeros_seen, mut absent_seen) = (false, false);
        for seed in 0..SEEDS {
            let disk = SimDisk::new();
            let path = Path::new("/d/a");
            let f = disk.create(path, 3 * PAGE).unwrap();
            f.write_at(0, &[0x55; 3 * PAGE_BYTES]).unwrap();
            disk.crash(Tear::Random(seed));
            let Some(content) = read_all(&disk, path) else {
                absent_seen = true;
                continue;
            };
            assert_eq!(content.len(), 3 * PAGE_BYTES, "seed {seed}: the allocation is durable with the name");
            assert!(content.iter().all(|b| *b == 0 || *b == 0x55), "seed {seed}");
            zeros_seen |= content.iter().all(|b| *b == 0);
        }
        assert!(zeros_seen && absent_seen, "zeros {zeros_seen}, absent {absent_seen}");
    }

    #[test]
    fn a_rename_can_survive_without_the_renamed_files_data() {
        let mut empty_seen = false;
        for seed in 0..SEEDS {
            let disk = SimDisk::new();
            let dir = Path::new("/d");
            let f = disk.create(&dir.join("tmp"), 0).unwrap();
            disk.sync_dir(dir).unwrap();
            f.write_at(0, b"never synced").unwrap();
            disk.rename(&dir.join("tmp"), &dir.join("final")).unwrap();
            let report = disk.crash_with_report(Tear::Random(seed));
            assert_eq!(report.name_ops_kept_count + report.name_ops_lost_count, 1);
            let (tmp, target) = (read_all(&disk, &dir.join("tmp")), read_all(&disk, &dir.join("final")));
            assert!(tmp.is_some() != target.is_some(), "seed {seed}: a rename is atomic");
            if report.name_ops_kept_count == 1 {
                assert!(target.is_some(), "seed {seed}");
            }
            empty_seen |= target.as_deref() == Some(b"");
        }
        assert!(empty_seen, "no seed kept the rename without the data");
    }

    #[test]
    fn pending_name_operations_survive_as_an_in_order_prefix() {
        let dir = Path::new("/d");
        let prefixes: [&[&str]; 5] = [&[], &["a"], &["a", "b"], &["a", "b", "c"], &["b", "c"]];
        let mut seen = BTreeSet::new();
        for seed in 0..SEEDS {
            let disk = SimDisk::new();
            for name in ["a", "b", "c"] {
                disk.create(&dir.join(name), 0).unwrap();
            }
            disk.remove(&dir.join("a")).unwrap();
            let report = disk.crash_with_report(Tear::Random(seed));
            let names = disk.list(dir).unwrap();
            let kept = prefixes.iter().position(|p| names == *p).unwrap_or_else(|| panic!("seed {seed}: {names:?}"));
            assert_eq!((report.name_ops_kept_count, report.name_ops_lost_count), (kept as u64, 4 - kept as u64));
            seen.insert(kept);
        }
        assert_eq!(seen.len(), prefixes.len(), "some prefix never survived: {seen:?}");
    }

    #[test]
    fn legacy_tears_make_no_name_durable_without_sync_dir() {
        for tear in [Tear::None, Tear::Prefix(1), Tear::Half, Tear::AllButOne] {
            let disk = SimDisk::new();
            let f = disk.create(Path::new("/d/a"), PAGE).unwrap();
            f.write_at(0, b"data").unwrap();
            disk.rename(Path::new("/d/a"), Path::new("/e/b")).unwrap();
            let report = disk.crash_with_report(tear);
            assert!(disk.files().is_empty(), "{tear:?}: {:?}", disk.files());
            assert_eq!((report.name_ops_kept_count, report.name_ops_lost_count), (0, 3), "{tear:?}");
        }
    }

    #[test]
    fn a_sync_dir_makes_only_its_own_directorys_entries_durable() {
        let disk = SimDisk::new();
        let (source, target) = (Path::new("/s/a"), Path::new("/t/b"));
        disk.create(source, 0).unwrap().write_at(0, b"x").unwrap();
        disk.sync_dir(Path::new("/s")).unwrap();
        disk.rename(source, target).unwrap();
        disk.sync_dir(Path::new("/t")).unwrap();
        disk.crash(Tear::Random(7));
        assert!(disk.exists(source) && disk.exists(target), "{:?}", disk.files());
    }

    #[test]
    fn a_failed_allocate_leaves_no_file() {
        let disk = SimDisk::new();
        let (dir, path) = (Path::new("/d"), Path::new("/d/a"));
        disk.fail_next(FaultOp::Allocate, libc::ENOSPC);
        disk.create(&dir.join("empty"), 0).expect("a create without a size allocates nothing");
        let err = disk.create(path, PAGE).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert!(!disk.exists(path));
        assert_eq!(disk.list(dir).unwrap(), ["empty"]);
        disk.sync_dir(dir).unwrap();
        disk.crash(Tear::Random(1));
        assert!(!disk.exists(path), "the removal is durable with the creation");
        disk.create(path, PAGE).expect("the name is free again");
    }

    #[test]
    fn a_failed_allocate_may_leave_an_empty_file_after_a_power_loss_before_sync_dir() {
        let mut empty_seen = false;
        for seed in 0..SEEDS {
            let disk = SimDisk::new();
            let path = Path::new("/d/a");
            disk.fail_next(FaultOp::Allocate, libc::ENOSPC);
            assert!(disk.create(path, PAGE).is_err());
            disk.crash(Tear::Random(seed));
            if let Some(content) = read_all(&disk, path) {
                assert!(content.is_empty(), "seed {seed}: the allocation failed, so nothing was allocated");
                empty_seen = true;
            }
        }
        assert!(empty_seen, "no seed kept the creation without the removal");
    }

    #[test]
    fn a_failed_sync_dir_makes_nothing_durable_and_is_still_a_sync_point() {
        let disk = SimDisk::new();
        let dir = Path::new("/d");
        disk.create(&dir.join("a"), 0).unwrap();
        disk.fail_next(FaultOp::SyncDir, libc::EIO);
        let before = disk.sync_points();
        assert_eq!(disk.sync_dir(dir).unwrap_err().raw_os_error(), Some(libc::EIO));
        assert_eq!(disk.sync_points(), before + 1);
        disk.crash(Tear::AllButOne);
        assert!(disk.files().is_empty());

        // The operations stay pending: a later sync_dir still makes them durable.
        disk.create(&dir.join("b"), 0).unwrap();
        disk.fail_next(FaultOp::SyncDir, libc::EIO);
        assert!(disk.sync_dir(dir).is_err());
        disk.sync_dir(dir).unwrap();
        disk.crash(Tear::None);
        assert_eq!(disk.list(dir).unwrap(), ["b"]);
    }

    #[test]
    fn a_failed_rename_or_remove_changes_nothing() {
        let disk = SimDisk::new();
        let dir = Path::new("/d");
        disk.create(&dir.join("a"), 0).unwrap();
        disk.create(&dir.join("b"), 0).unwrap();
        disk.sync_dir(dir).unwrap();
        disk.fail_next(FaultOp::Rename, libc::EIO);
        assert!(disk.rename(&dir.join("a"), &dir.join("c")).is_err());
        disk.fail_next(FaultOp::Remove, libc::EIO);
        assert!(disk.remove(&dir.join("b")).is_err());
        assert_eq!(disk.list(dir).unwrap(), ["a", "b"]);
        let report = disk.crash_with_report(Tear::Random(3));
        assert_eq!(report.name_ops_kept_count + report.name_ops_lost_count, 0, "nothing was pending");
        assert_eq!(disk.list(dir).unwrap(), ["a", "b"]);
    }
}
