//! Group commit: one thread syncs for every log that asked, in one go.
//!
//! Writers write their frames into the page cache themselves (in order, under their log's
//! append lock); small batches are also staged into the shared journal block. Then they ask the
//! committer for a sync. The committer blocks for the first request, takes every request
//! already waiting (bounded by [`GROUP_LOGS_MAX`]), snapshots each log's written end, writes the
//! staged journal block with one write, and syncs the journal plus the segments of logs that
//! wrote batches too large for the journal, all together ([`Disk::sync_files`]). While it
//! syncs, writers keep writing and the next group gathers. A writer alone never waits on a timer.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use parking_lot::Mutex;
use tern_segment::{Disk, DiskFile, Segment};

use crate::error::{Error, Result};
use crate::journal::{self, Journal, JournalOptions, Replay};
use crate::log::LogInner;

/// Most logs synced in one group.
pub const GROUP_LOGS_MAX: usize = 1024;
/// Capacity of the request channel (each log has at most one request queued at a time).
const CHANNEL_CAPACITY: usize = 1 << 16;

pub(crate) enum Msg {
    Sync(Arc<LogInner>),
    Stop,
}

/// Who performs a group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommitMode {
    /// A dedicated committer thread, fed by a channel.
    Thread,
    /// The first writer that waits leads: it commits the group of everything queued, in its
    /// own thread, then hands leadership to a queued writer (as raft-engine's write barrier).
    /// Saves two thread hand-offs per group.
    #[default]
    Leader,
}

/// Counters of the committer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitterStats {
    /// Groups committed.
    pub groups: u64,
    /// Files synced (one `fdatasync` each).
    pub file_syncs: u64,
    /// Journal blocks written.
    pub journal_blocks: u64,
    /// Journal switches (each syncs the segments of the logs that used the journal).
    pub journal_switches: u64,
}

#[derive(Debug, Default)]
struct Counters {
    groups: AtomicU64,
    file_syncs: AtomicU64,
    journal_blocks: AtomicU64,
    journal_switches: AtomicU64,
}

/// Batches staged for the next journal block, and the logs that staged since the last switch.
#[derive(Default)]
pub(crate) struct Staging {
    block: Vec<u8>,
    registry: Vec<Arc<LogInner>>,
}

/// The group-commit thread shared by every log of an engine. Cloning shares it.
#[derive(Clone)]
pub struct Committer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").field("journal", &self.shared.journal.is_some()).finish_non_exhaustive()
    }
}

struct Shared {
    disk: Arc<dyn Disk>,
    mode: CommitMode,
    queue: Mutex<Vec<Arc<LogInner>>>,
    /// Leaders committing now (leader mode): at most one, so that groups complete in order
    /// and no two syncs of one file ever run at once.
    leading: AtomicUsize,
    candidates: Mutex<Vec<std::thread::Thread>>,
    tx: Sender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
    counters: Counters,
    journal: Option<Mutex<Journal>>,
    journal_failed: AtomicBool,
    staging: Mutex<Staging>,
    staged_bytes_soft_max: usize,
    replay: Mutex<Replay>,
}

impl Committer {
    /// Starts a committer without a journal: every synced append syncs its log's segment.
    pub fn start(disk: Arc<dyn Disk>) -> Committer {
        Self::spawn(disk, None, Replay::new(), CommitMode::default())
    }

    /// Starts a committer of the given mode, with the shared journal when `journal` is given
    /// (see [`Committer::start_with_journal`] for what the caller must do before appending).
    ///
    /// # Errors
    /// As [`Committer::start_with_journal`].
    pub fn start_with(disk: Arc<dyn Disk>, journal: Option<&JournalOptions>, mode: CommitMode) -> Result<Committer> {
        let (journal, replay) = match journal {
            Some(options) => {
                let (journal, replay) = Journal::open(disk.clone(), options)?;
                (Some(journal), replay)
            }
            None => (None, Replay::new()),
        };
        Ok(Self::spawn(disk, journal, replay, mode))
    }

    /// Starts a committer with the shared journal in `options.dir`, recovering it.
    ///
    /// Before any append, the caller MUST open every log named by
    /// [`Committer::replay_names`] (opening replays its journal entries) and then call
    /// [`Committer::finish_replay`], which starts a new journal file.
    ///
    /// # Errors
    /// I/O errors creating or reading the journal; [`Error::Invalid`] for a bad size.
    pub fn start_with_journal(disk: Arc<dyn Disk>, options: &JournalOptions) -> Result<Committer> {
        Self::start_with(disk, Some(options), CommitMode::default())
    }

    fn spawn(disk: Arc<dyn Disk>, journal: Option<Journal>, replay: Replay, mode: CommitMode) -> Committer {
        let (tx, rx) = crossbeam_channel::bounded(CHANNEL_CAPACITY);
        let staged_bytes_soft_max = journal.as_ref().map_or(usize::MAX, |j| (j.block_bytes_max() / 4) as usize);
        let shared = Arc::new(Shared {
            staged_bytes_soft_max,
            disk,
            mode,
            queue: Mutex::new(Vec::new()),
            leading: AtomicUsize::new(0),
            candidates: Mutex::new(Vec::new()),
            tx,
            thread: Mutex::new(None),
            counters: Counters::default(),
            journal: journal.map(Mutex::new),
            journal_failed: AtomicBool::new(false),
            staging: Mutex::new(Staging::default()),
            replay: Mutex::new(replay),
        });
        if mode == CommitMode::Thread {
            let thread_shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name("tern-committer".into())
                .spawn(move || run(&thread_shared, &rx))
                .expect("spawning the committer thread");
            *shared.thread.lock() = Some(thread);
        }
        Committer { shared }
    }

    /// Counters so far.
    pub fn stats(&self) -> CommitterStats {
        let c = &self.shared.counters;
        CommitterStats {
            groups: c.groups.load(Ordering::Relaxed),
            file_syncs: c.file_syncs.load(Ordering::Relaxed),
            journal_blocks: c.journal_blocks.load(Ordering::Relaxed),
            journal_switches: c.journal_switches.load(Ordering::Relaxed),
        }
    }

    /// True when small batches are made durable through the shared journal.
    pub fn has_journal(&self) -> bool {
        self.shared.journal.is_some()
    }

    /// Names of the logs that have journal entries to replay.
    pub fn replay_names(&self) -> Vec<String> {
        self.shared.replay.lock().keys().cloned().collect()
    }

    /// Starts a new journal file once every log with entries to replay has been opened.
    ///
    /// # Errors
    /// I/O errors writing the journal header.
    pub fn finish_replay(&self) -> Result<()> {
        let Some(journal) = &self.shared.journal else { return Ok(()) };
        let mut journal = journal.lock();
        // Checked, not taken: a refused call must leave the entries for the logs still to open.
        let left: Vec<String> = self.shared.replay.lock().keys().cloned().collect();
        if !left.is_empty() {
            return Err(Error::Invalid(format!("journal entries of logs {left:?} were not replayed")));
        }
        switch(&self.shared, &mut journal, false)
    }

    /// Stops the thread after it has served every request already queued. With a journal,
    /// the segments of every log that used it are synced and the journal is marked clean, so
    /// the next start replays nothing.
    pub fn stop(&self) {
        let _ = self.shared.tx.send(Msg::Stop);
        if let Some(thread) = self.shared.thread.lock().take() {
            let _ = thread.join();
        }
        if let Some(journal) = &self.shared.journal {
            // Entries not yet replayed into their logs must stay in the journal.
            let replayed = self.shared.replay.lock().is_empty();
            if replayed && !self.shared.journal_failed.load(Ordering::SeqCst) {
                let _ = switch(&self.shared, &mut journal.lock(), true);
            }
        }
    }

    /// The commit mode.
    pub fn mode(&self) -> CommitMode {
        self.shared.mode
    }

    /// Queues a sync request; false when the committer has stopped.
    pub(crate) fn request(&self, log: Arc<LogInner>) -> bool {
        match self.shared.mode {
            CommitMode::Thread => self.shared.tx.send(Msg::Sync(log)).is_ok(),
            CommitMode::Leader => {
                self.shared.queue.lock().push(log);
                true
            }
        }
    }

    /// In leader mode, commits one group in the calling thread if nobody else leads, and
    /// returns true; false when another thread leads (or in thread mode).
    ///
    /// When the leader finishes and syncs were queued meanwhile, it hands over to the writers
    /// waiting to lead; when none waits (the queued syncs are for durability callbacks,
    /// [`Appended::on_durable`](crate::Appended::on_durable)), it leads the next group itself.
    pub(crate) fn try_lead(&self) -> bool {
        let shared = &self.shared;
        if shared.mode != CommitMode::Leader {
            return false;
        }
        let mut led = false;
        while shared.leading.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            led = true;
            let group = std::mem::take(&mut *shared.queue.lock());
            let mut unique: Vec<Arc<LogInner>> = Vec::with_capacity(group.len());
            for log in group {
                if !unique.iter().any(|g| Arc::ptr_eq(g, &log)) {
                    unique.push(log);
                }
            }
            if !unique.is_empty() {
                commit_group(shared, unique, &mut Vec::new());
            }
            shared.leading.fetch_sub(1, Ordering::SeqCst);
            if shared.queue.lock().is_empty() {
                break;
            }
            // Hand over: whoever queued meanwhile competes to lead the next group.
            let candidates = std::mem::take(&mut *shared.candidates.lock());
            if !candidates.is_empty() {
                for thread in candidates {
                    thread.unpark();
                }
                break;
            }
        }
        led
    }

    /// Registers the calling thread to be woken when leadership frees up with work queued.
    /// Returns false when nobody leads (so the caller should try to lead instead of parking).
    pub(crate) fn await_leadership(&self) -> bool {
        if self.shared.mode != CommitMode::Leader {
            return true;
        }
        self.shared.candidates.lock().push(std::thread::current());
        self.shared.leading.load(Ordering::SeqCst) > 0
    }

    /// Makes the journal entries of log `name` in the current journal file the ones its next
    /// open replays: a log whose handle was fenced is opened again while the node runs, and
    /// the batches it acknowledged through the journal (which its segment may have lost with
    /// the failed sync) go back into it, as at a start.
    ///
    /// # Errors
    /// Reading the journal file.
    pub fn reload_replay(&self, name: &str) -> Result<()> {
        let Some(journal) = self.shared.journal.as_ref() else { return Ok(()) };
        let entries = journal.lock().entries_of(name)?;
        if !entries.is_empty() {
            self.shared.replay.lock().insert(name.to_owned(), entries);
        }
        Ok(())
    }

    /// Takes the journal entries of log `name` (frames with their log generation).
    pub(crate) fn take_replay(&self, name: &str) -> Vec<(u64, Bytes)> {
        self.shared.replay.lock().remove(name).unwrap_or_default()
    }

    /// Stages one batch frame of `log` for the next journal block. Called under the log's
    /// append lock, so each log's batches are staged in offset order. Returns the staged bytes.
    pub(crate) fn stage(&self, log: &Arc<LogInner>, name: &str, generation: u64, frame_bytes: &[u8]) -> usize {
        let mut staging = self.shared.staging.lock();
        journal::stage_entry(&mut staging.block, name, generation, frame_bytes);
        if !log.journal_registered.swap(true, Ordering::SeqCst) {
            staging.registry.push(log.clone());
        }
        staging.block.len()
    }

    /// Largest block the journal takes before it must switch; writers ask for a group sync when
    /// the staged block passes a quarter of it.
    pub(crate) fn staged_bytes_soft_max(&self) -> usize {
        self.shared.staged_bytes_soft_max
    }
}

/// Syncs `segments` (distinct) together with `extra` files ([`Disk::sync_files`]) and returns
/// the results of each, in order. Each segment is synced under its sync lock, taken in one
/// global order (by address) so that two callers never wait for each other: a segment whose
/// earlier sync failed is not synced again and fails at once
/// ([`tern_segment::segment::SyncGuard`]).
fn sync_segments(
    shared: &Shared,
    segments: &[&Segment],
    extra: &[&dyn DiskFile],
) -> (Vec<io::Result<()>>, Vec<io::Result<()>>) {
    let address = |i: &usize| segments.get(*i).map_or(0, |s| std::ptr::from_ref::<Segment>(s) as usize);
    let mut order: Vec<usize> = (0..segments.len()).collect();
    order.sort_by_key(address);
    debug_assert!(order.windows(2).all(|w| address(&w[0]) != address(&w[1])), "a segment listed twice");
    let mut guards: Vec<(usize, tern_segment::segment::SyncGuard<'_>)> =
        order.iter().filter_map(|&i| segments.get(i).map(|s| (i, s.lock_sync()))).collect();
    let mut results: Vec<io::Result<()>> = (0..segments.len()).map(|_| Ok(())).collect();
    let mut files: Vec<&dyn DiskFile> = extra.to_vec();
    let mut synced: Vec<usize> = Vec::with_capacity(guards.len());
    for (g, (i, guard)) in guards.iter().enumerate() {
        match (guard.check(), segments.get(*i)) {
            (Ok(()), Some(segment)) => {
                files.push(&**segment.file());
                synced.push(g);
            }
            (Err(e), _) => {
                if let Some(slot) = results.get_mut(*i) {
                    *slot = Err(io::Error::other(e.to_string()));
                }
            }
            (Ok(()), None) => {}
        }
    }
    let mut all = shared.disk.sync_files(&files).into_iter();
    shared.counters.file_syncs.fetch_add(files.len() as u64, Ordering::Relaxed);
    let extra_results: Vec<io::Result<()>> = extra.iter().map(|_| all.next().unwrap_or(Ok(()))).collect();
    for g in synced {
        let result = all.next().unwrap_or_else(|| Err(io::Error::other("no sync result")));
        if let Some((i, guard)) = guards.get_mut(g) {
            let recorded = guard.record(result).map_err(|e| io::Error::other(e.to_string()));
            if let Some(slot) = results.get_mut(*i) {
                *slot = recorded;
            }
        }
    }
    (extra_results, results)
}

/// Starts the other journal file, once nothing in the current one is needed any more: the
/// segments of every log that staged into it are synced (and their checkpoints claim it), except
/// for fenced logs, whose entries are carried into the new file instead.
///
/// A fenced log's segment is never synced again: after a failed sync the kernel may have
/// dropped its dirty pages, and a new sync would report success without writing them. Its
/// batches acknowledged through the journal may exist nowhere else, so they stay in the journal
/// (the new file's first block) until the log is recovered at the next open. The new file is
/// marked clean only when `clean` is asked and nothing was carried. Holding the journal lock
/// keeps groups out meanwhile.
fn switch(shared: &Shared, journal: &mut Journal, clean: bool) -> Result<()> {
    let registry = {
        let mut staging = shared.staging.lock();
        for log in &staging.registry {
            log.journal_registered.store(false, Ordering::SeqCst);
        }
        std::mem::take(&mut staging.registry)
    };
    let (fenced, live): (Vec<_>, Vec<_>) = registry.into_iter().partition(|log| log.is_fenced());
    let targets: Vec<_> = live.into_iter().map(|log| (log.segment_target(), log)).collect();
    let segments: Vec<&Segment> = targets.iter().map(|(t, _)| &*t.segment).collect();
    let (_, results) = sync_segments(shared, &segments, &[]);
    drop(segments);
    let mut failed = None;
    let mut synced = Vec::with_capacity(targets.len());
    for ((target, log), result) in targets.into_iter().zip(results) {
        if let Err(e) = &result {
            failed
                .get_or_insert_with(|| Error::io(target.segment.path(), std::io::Error::new(e.kind(), e.to_string())));
        }
        log.complete_sync(target, result, true);
        synced.push(log);
    }
    if let Some(e) = failed {
        // The journal still holds batches whose segments did not sync: never switch away.
        shared.journal_failed.store(true, Ordering::SeqCst);
        return Err(e);
    }
    // The checkpoints now claim what the journal held; make them durable with it.
    let checkpoints: Vec<(&Arc<LogInner>, Arc<dyn DiskFile>, u64)> =
        synced.iter().filter_map(|log| log.checkpoint_to_sync().map(|(file, seq)| (log, file, seq))).collect();
    let files: Vec<&dyn DiskFile> = checkpoints.iter().map(|(_, file, _)| &**file).collect();
    let results = shared.disk.sync_files(&files);
    shared.counters.file_syncs.fetch_add(files.len() as u64, Ordering::Relaxed);
    for ((log, _, seq), result) in checkpoints.iter().zip(results) {
        // A failed checkpoint sync only leaves recovery an older claim.
        if result.is_ok() {
            log.checkpoint_synced(*seq);
        }
    }
    let names: Vec<&str> = fenced.iter().map(|log| log.name()).collect();
    let carried =
        journal.switch_carrying(clean, &names).inspect_err(|_| shared.journal_failed.store(true, Ordering::SeqCst))?;
    if carried > 0 {
        let mut staging = shared.staging.lock();
        for log in fenced {
            log.journal_registered.store(true, Ordering::SeqCst);
            staging.registry.push(log);
        }
    }
    shared.counters.journal_switches.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn run(shared: &Shared, rx: &Receiver<Msg>) {
    let mut group: Vec<Arc<LogInner>> = Vec::new();
    let mut spare_block: Vec<u8> = Vec::new();
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
        commit_group(shared, std::mem::take(&mut group), &mut spare_block);
    }
}

/// Commits one group: snapshots the logs, writes the staged journal block, syncs the journal
/// and the segments that need it together, and completes every log.
fn commit_group(shared: &Shared, group: Vec<Arc<LogInner>>, spare_block: &mut Vec<u8>) {
    let mut group = group;
    // Snapshot the logs first: every batch below a snapshot was staged before it.
    let targets: Vec<_> = group.drain(..).filter_map(|log| log.sync_target().map(|t| (log, t))).collect();
    if targets.is_empty() {
        return;
    }
    let mut journal_guard = shared.journal.as_ref().map(|j| j.lock());
    let mut journal_error: Option<String> = None;
    let mut wrote_journal = false;
    if let Some(journal) = journal_guard.as_deref_mut() {
        let mut block = {
            let mut staging = shared.staging.lock();
            std::mem::replace(&mut staging.block, std::mem::take(spare_block))
        };
        if shared.journal_failed.load(Ordering::SeqCst) {
            journal_error = Some("the journal failed earlier".into());
        } else if !block.is_empty() {
            let fits = block.len() as u64 <= journal.remaining_bytes();
            let result = if fits {
                journal::seal_block(&mut block, journal.seq());
                journal.write(&block).map(|()| wrote_journal = true)
            } else {
                // The switch syncs the segments of every log that staged, which makes this
                // block's batches durable without writing it.
                switch(shared, journal, false)
            };
            if let Err(e) = result {
                shared.journal_failed.store(true, Ordering::SeqCst);
                journal_error = Some(e.to_string());
            }
            if wrote_journal {
                shared.counters.journal_blocks.fetch_add(1, Ordering::Relaxed);
            }
        }
        block.clear();
        *spare_block = block;
    }
    if let Some(reason) = journal_error {
        drop(journal_guard);
        for (log, _) in targets {
            log.fence(&Error::Invalid(format!("journal write failed: {reason}")));
        }
        return;
    }
    // The journal lock is released before syncing: the next group may write its block and
    // start its own sync meanwhile. Its sync starts after this block was written, so it covers
    // this block too; if the journal switches first, the switch syncs these logs' segments.
    let journal_file: Option<(Arc<dyn DiskFile>, std::path::PathBuf)> = journal_guard
        .as_deref()
        .filter(|_| wrote_journal)
        .and_then(|j| j.file().map(|f| (f.clone(), j.path().to_path_buf())));
    drop(journal_guard);
    let extra: Vec<&dyn DiskFile> = journal_file.iter().map(|(file, _)| &**file).collect();
    let segments: Vec<&Segment> = targets.iter().filter(|(_, t)| t.sync_segment).map(|(_, t)| &*t.segment).collect();
    let (mut extra_results, results) = sync_segments(shared, &segments, &extra);
    drop(segments);
    shared.counters.groups.fetch_add(1, Ordering::Relaxed);
    let journal_result = if extra.is_empty() { Ok(()) } else { extra_results.remove(0) };
    drop(extra);
    if let Err(e) = &journal_result {
        shared.journal_failed.store(true, Ordering::SeqCst);
        let path = journal_file.map(|(_, p)| p).unwrap_or_default();
        let reason = format!("sync of {} failed: {e}", path.display());
        for (log, _) in targets {
            log.fence(&Error::Invalid(reason.clone()));
        }
        return;
    }
    let mut results = results.into_iter();
    for (log, target) in targets {
        let result = if target.sync_segment { results.next().unwrap_or(Ok(())) } else { Ok(()) };
        let synced_segment = target.sync_segment;
        log.complete_sync(target, result, synced_segment);
    }
}
