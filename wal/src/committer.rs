//! Group commit: one thread syncs for every log that asked, in one go.
//!
//! Writers write their frames into the page cache themselves (in order, under their log's
//! append lock) and then ask the committer for a sync. The committer blocks for the first
//! request, takes every request already waiting (bounded by [`GROUP_LOGS_MAX`]), snapshots each
//! log's written end, and syncs all their files together ([`Disk::sync_files`]: one
//! `fdatasync` for one file, io_uring or threads for several). While it syncs, writers keep
//! writing and the next group gathers in the channel. A writer alone never waits on a timer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use parking_lot::Mutex;
use tern_segment::{Disk, DiskFile};

use crate::log::LogInner;

/// Most logs synced in one group.
pub const GROUP_LOGS_MAX: usize = 1024;
/// Capacity of the request channel (each log has at most one request queued at a time).
const CHANNEL_CAPACITY: usize = 1 << 16;

pub(crate) enum Msg {
    Sync(Arc<LogInner>),
    Stop,
}

/// Counters of the committer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitterStats {
    /// Groups committed.
    pub groups: u64,
    /// Files synced (one `fdatasync` each).
    pub file_syncs: u64,
}

#[derive(Debug, Default)]
struct Counters {
    groups: AtomicU64,
    file_syncs: AtomicU64,
}

/// The group-commit thread shared by every log of an engine. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Committer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    tx: Sender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
}

impl Committer {
    /// Starts the committer thread.
    pub fn start(disk: Arc<dyn Disk>) -> Committer {
        let (tx, rx) = crossbeam_channel::bounded(CHANNEL_CAPACITY);
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("tern-committer".into())
            .spawn(move || run(&*disk, &rx, &thread_counters))
            .expect("spawning the committer thread");
        Committer { shared: Arc::new(Shared { tx, thread: Mutex::new(Some(thread)), counters }) }
    }

    /// Counters so far.
    pub fn stats(&self) -> CommitterStats {
        CommitterStats {
            groups: self.shared.counters.groups.load(Ordering::Relaxed),
            file_syncs: self.shared.counters.file_syncs.load(Ordering::Relaxed),
        }
    }

    /// Stops the thread after it has served every request already queued.
    pub fn stop(&self) {
        let _ = self.shared.tx.send(Msg::Stop);
        if let Some(thread) = self.shared.thread.lock().take() {
            let _ = thread.join();
        }
    }

    /// Queues a sync request; false when the committer has stopped.
    pub(crate) fn request(&self, log: Arc<LogInner>) -> bool {
        self.shared.tx.send(Msg::Sync(log)).is_ok()
    }
}

fn run(disk: &dyn Disk, rx: &Receiver<Msg>, counters: &Counters) {
    let mut group: Vec<Arc<LogInner>> = Vec::new();
    let mut stop = false;
    while !stop {
        match rx.recv() {
            Ok(Msg::Sync(log)) => group.push(log),
            Ok(Msg::Stop) | Err(_) => stop = true,
        }
        // Take whoever is already waiting; never wait for more.
        while group.len() < GROUP_LOGS_MAX {
            match rx.try_recv() {
                Ok(Msg::Sync(log)) => {
                    if !group.iter().any(|g| Arc::ptr_eq(g, &log)) {
                        group.push(log);
                    }
                }
                Ok(Msg::Stop) => stop = true,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if group.is_empty() {
            continue;
        }
        let targets: Vec<_> = group.drain(..).filter_map(|log| log.sync_target().map(|t| (log, t))).collect();
        if targets.is_empty() {
            continue;
        }
        let files: Vec<&dyn DiskFile> = targets.iter().map(|(_, t)| &**t.segment.file()).collect();
        let results = disk.sync_files(&files);
        counters.groups.fetch_add(1, Ordering::Relaxed);
        counters.file_syncs.fetch_add(files.len() as u64, Ordering::Relaxed);
        drop(files);
        for ((log, target), result) in targets.into_iter().zip(results) {
            log.complete_sync(target, result);
        }
    }
}
