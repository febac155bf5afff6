//! A file layer in memory that models what a power loss does to files, for crash tests.
//!
//! Faults it injects, and why Tern must survive each:
//! - **Lost unsynced data**: [`SimDisk::crash`] keeps only what `sync_data` made durable, and
//!   only the names that `sync_dir` made durable. Page caches are volatile.
//! - **Torn writes**: a crash may keep earlier unsynced writes and part of the last one
//!   ([`Tear`]). Disks write sectors, not frames.
//! - **Power loss at a sync point**: [`SimDisk::crash_at_sync`] makes the Nth sync and every
//!   operation after it fail, as if the machine stopped there.
//! - **Failed sync or write** ([`SimDisk::fail_next`]): EIO. The kernel may have dropped the
//!   dirty pages, so the log must never trust an unsynced write after this.
//! - **Full disk** ([`SimDisk::full_after`]): ENOSPC once a byte budget is used.
//! - **Bit flips** ([`SimDisk::flip_bit`]): media errors in durable data.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::disk::{Disk, DiskFile};

/// How the last unsynced write of each file survives a crash.
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
}

/// Operations that [`SimDisk::fail_next`] can make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// `write_at`.
    Write,
    /// `sync_data` (and each file of `sync_files`).
    Sync,
    /// `create`.
    Create,
}

#[derive(Debug, Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<(u64, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct State {
    inodes: Vec<Inode>,
    live_names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    generation: u64,
    syncs: u64,
    crash_at_sync: Option<u64>,
    dead: bool,
    faults: VecDeque<(FaultOp, i32)>,
    bytes_left: Option<u64>,
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
    /// (the page cache survives), synced or not; open files become invalid.
    pub fn kill(&self) {
        let mut state = self.state.lock();
        state.generation += 1;
        state.dead = false;
        state.crash_at_sync = None;
        state.faults.clear();
    }

    /// Power loss and reboot: names and bytes fall back to what was made durable, with the
    /// last unsynced write of each file torn as `tear` says. Open files become invalid.
    pub fn crash(&self, tear: Tear) {
        let mut state = self.state.lock();
        for inode in &mut state.inodes {
            let mut image = inode.durable.clone();
            let writes = std::mem::take(&mut inode.unsynced);
            if tear != Tear::None {
                let last = writes.len().saturating_sub(1);
                for (i, (pos, bytes)) in writes.iter().enumerate() {
                    let keep = if i < last {
                        bytes.len()
                    } else {
                        match tear {
                            Tear::None => 0,
                            Tear::Prefix(n) => n.min(bytes.len()),
                            Tear::Half => bytes.len() / 2,
                            Tear::AllButOne => bytes.len().saturating_sub(1),
                        }
                    };
                    apply_write(&mut image, *pos as usize, bytes.get(..keep).unwrap_or_default());
                }
            }
            inode.live = image.clone();
            inode.durable = image;
        }
        state.live_names = state.durable_names.clone();
        state.generation += 1;
        state.dead = false;
        state.crash_at_sync = None;
        state.faults.clear();
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
        state.spend(size_bytes)?;
        let size = usize::try_from(size_bytes).map_err(io::Error::other)?;
        state.inodes.push(Inode { live: vec![0; size], durable: Vec::new(), unsynced: Vec::new() });
        let index = state.inodes.len() - 1;
        state.live_names.insert(path.to_path_buf(), index);
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
        let index = state.live_names.remove(source).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        state.live_names.insert(target.to_path_buf(), index);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.check_alive()?;
        state.live_names.remove(path).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
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
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        let live: Vec<(PathBuf, usize)> =
            state.live_names.iter().filter(|(p, _)| in_dir(p)).map(|(p, i)| (p.clone(), *i)).collect();
        state.durable_names.retain(|p, _| !in_dir(p));
        state.durable_names.extend(live);
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
            inode.unsynced.push((pos as u64, bytes.to_vec()));
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
            s.take_fault(FaultOp::Sync)?;
            s.sync_point()?;
            let inode = s.inode(self.index)?;
            inode.durable = inode.live.clone();
            inode.unsynced.clear();
            Ok(())
        })
    }

    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        self.with(|s| {
            let inode = s.inode(self.index)?;
            let len = usize::try_from(len_bytes).map_err(io::Error::other)?;
            inode.live.resize(len, 0);
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
}
