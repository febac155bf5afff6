//! The Raft log on a Tern log: entry index = record offset.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig, StorageError, Vote,
};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tern_segment::frame::{self, BatchMeta};
use tern_segment::{Disk, OsDisk};
use tern_wal::state::StateFile;
use tern_wal::{CommitMode, Committer, Log, LogOptions, Record, Visibility};

use crate::storage_error;

/// Settings of a [`LogStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Pre-allocated size of each segment file of the log: a Raft log of small entries that
    /// is purged after each snapshot needs far less than Tern's 64 MiB default.
    pub segment_size_bytes: u64,
    /// Largest encoded entry accepted.
    pub entry_bytes_max: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { segment_size_bytes: 4 << 20, entry_bytes_max: 16 << 20 }
    }
}

/// File name of the vote and last purged entry, beside the log's directory.
const STATE_FILE: &str = "raft.state";
/// Directory of the log itself.
const LOG_DIR: &str = "log";
/// Most frame bytes one append call hands to the log at once: a call of many large entries is
/// written in runs of about this size, so the store holds at most this much encoded besides
/// openraft's entries. An entry larger than that goes in a run of its own.
const RUN_BYTES_MAX: usize = 8 << 20;

/// What the state file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
struct Persisted<C: RaftTypeConfig> {
    vote: Option<Vote<C::NodeId>>,
    purged: Option<LogId<C::NodeId>>,
}

impl<C: RaftTypeConfig> Default for Persisted<C> {
    fn default() -> Self {
        Persisted { vote: None, purged: None }
    }
}

struct Inner<C: RaftTypeConfig> {
    dir: PathBuf,
    log: Log,
    committer: Committer,
    state: Mutex<(StateFile, Persisted<C>)>,
    entry_bytes_max: u64,
}

impl<C: RaftTypeConfig> Drop for Inner<C> {
    fn drop(&mut self) {
        // Whatever was flushed is durable already; a clean close only saves recovery a scan.
        let _ = self.log.close();
        self.committer.stop();
    }
}

/// openraft's log storage ([`RaftLogStorage`]) on a Tern log. Cloning shares the store (a
/// clone is also its log reader).
///
/// Entry `i` of the Raft log is the record at offset `i`, one batch frame per entry (the frames
/// of one append call are written together and flushed by one sync); the vote
/// and the last purged log id live in a two-slot state file (`tern_wal::state`) beside the
/// log. Purging is exact: entries up to the purged id are never returned, even while the
/// segment holding them is still on disk (segments are deleted whole).
pub struct LogStore<C: RaftTypeConfig> {
    inner: Arc<Inner<C>>,
    _types: PhantomData<C>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore { inner: self.inner.clone(), _types: PhantomData }
    }
}

impl<C: RaftTypeConfig> Debug for LogStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("dir", &self.inner.dir).field("log", &self.inner.log).finish()
    }
}

impl<C: RaftTypeConfig> LogStore<C>
where
    C::Entry: Serialize + DeserializeOwned,
{
    /// Opens (or creates) the store in directory `dir` on the real disk, with default options.
    ///
    /// # Errors
    /// I/O errors; damage to the log or the state file, naming the file and position.
    pub fn open(dir: &Path) -> Result<Self, tern_wal::Error> {
        Self::open_with(Arc::new(OsDisk::new()), dir, StoreOptions::default())
    }

    /// Opens (or creates) the store in directory `dir` of `disk` (a fault-injecting disk in
    /// tests). It runs its own group-commit thread, which reports flushes to openraft.
    ///
    /// A purge that a crash interrupted is finished here: the state file records the purged id
    /// before any segment goes.
    ///
    /// # Errors
    /// As [`LogStore::open`].
    pub fn open_with(disk: Arc<dyn Disk>, dir: &Path, options: StoreOptions) -> Result<Self, tern_wal::Error> {
        if !disk.exists(dir) {
            disk.create_dir_all(dir).map_err(|e| tern_wal::Error::io(dir, e))?;
            if let Some(parent) = dir.parent() {
                disk.sync_dir(parent).map_err(|e| tern_wal::Error::io(parent, e))?;
            }
        }
        let state_path = dir.join(STATE_FILE);
        let state = StateFile::open(&*disk, &state_path)?;
        let persisted: Persisted<C> = match state.get() {
            None => Persisted::default(),
            Some(bytes) => bincode::deserialize(bytes).map_err(|e| {
                tern_wal::Error::Invalid(format!("{}: undecodable vote record: {e}", state_path.display()))
            })?,
        };
        // A thread of its own syncs, so that `append` returns before the sync and openraft's core
        // goes on (replicating to followers, say) meanwhile. In leader mode the core's task would
        // run the sync itself. The price is two thread wake-ups per flush (this thread, then the
        // task waiting for the callback); when the cores are busy with work of higher priority,
        // each can wait for a scheduler tick (BENCHMARKS.md, "openraft on Tern").
        let committer = Committer::start_with(disk.clone(), None, CommitMode::Thread)?;
        let log_options = LogOptions {
            segment_size_bytes: options.segment_size_bytes,
            index_interval_bytes: (options.segment_size_bytes / 64).max(1),
            record_bytes_max: options.entry_bytes_max,
            ..LogOptions::default()
        };
        let log = Log::open(disk, &dir.join(LOG_DIR), "raft", log_options, committer.clone(), true)?;
        if let Some(purged) = &persisted.purged {
            let next = purged.index + 1;
            if log.written_end() < next {
                log.reset(next)?;
            } else if log.start_offset() < next {
                log.truncate_prefix(next)?;
            }
        }
        let inner = Inner {
            dir: dir.to_path_buf(),
            log,
            committer,
            state: Mutex::new((state, persisted)),
            entry_bytes_max: options.entry_bytes_max,
        };
        Ok(LogStore { inner: Arc::new(inner), _types: PhantomData })
    }

    /// The Tern log holding the entries (for metrics and tests).
    pub fn log(&self) -> &Log {
        &self.inner.log
    }

    fn purged(&self) -> Option<LogId<C::NodeId>> {
        self.inner.state.lock().1.purged.clone()
    }

    /// The first index that may be returned: past the purged id and the log's start.
    fn first_readable(&self) -> u64 {
        let after_purged = self.purged().map_or(0, |p| p.index + 1);
        after_purged.max(self.inner.log.start_offset())
    }

    fn read_entries(&self, from: u64, to: u64) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        let log = &self.inner.log;
        let from = from.max(self.first_readable());
        let to = to.min(log.written_end());
        if from >= to {
            return Ok(Vec::new());
        }
        let read_error =
            |e: &(dyn std::error::Error + 'static)| storage_error(ErrorSubject::LogIndex(from), ErrorVerb::Read, e);
        let reader = log.read(from, Visibility::Written).map_err(|e| read_error(&e))?;
        let mut entries = Vec::with_capacity((to - from).min(4096) as usize);
        for record in reader.take((to - from) as usize) {
            let record = record.map_err(|e| read_error(&e))?;
            let entry: C::Entry = bincode::deserialize(&record.value)
                .map_err(|e| storage_error(ErrorSubject::LogIndex(record.offset), ErrorVerb::Read, &*e))?;
            if entry.get_log_id().index != record.offset {
                let e = std::io::Error::other(format!(
                    "entry at offset {} of {} names index {}",
                    record.offset,
                    log.dir().display(),
                    entry.get_log_id().index
                ));
                return Err(storage_error(ErrorSubject::LogIndex(record.offset), ErrorVerb::Read, &e));
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    fn write_state(&self, update: impl FnOnce(&mut Persisted<C>)) -> Result<(), StorageError<C::NodeId>> {
        let mut guard = self.inner.state.lock();
        let (file, persisted) = &mut *guard;
        let mut next = persisted.clone();
        update(&mut next);
        let bytes = bincode::serialize(&next).map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &*e))?;
        file.put(&bytes).map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        *persisted = next;
        Ok(())
    }
}

fn wal_error<NID: openraft::NodeId>(
    subject: ErrorSubject<NID>,
    verb: ErrorVerb,
    e: tern_wal::Error,
) -> StorageError<NID> {
    storage_error(subject, verb, &e)
}

impl<C: RaftTypeConfig> RaftLogReader<C> for LogStore<C>
where
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.read_entries(from, to)
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for LogStore<C>
where
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let purged = self.purged();
        let end = self.inner.log.written_end();
        let last_log_id = if end > self.first_readable() {
            self.read_entries(end - 1, end)?.pop().map(|e| e.get_log_id().clone())
        } else {
            None
        };
        Ok(LogState { last_log_id: last_log_id.or_else(|| purged.clone()), last_purged_log_id: purged })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.write_state(|p| p.vote = Some(vote.clone()))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.inner.state.lock().1.vote.clone())
    }

    /// Writes the entries of one call together: each is its own batch frame (so that openraft
    /// may truncate after any of them), and the frames go to the log in one
    /// [`Log::append_frames`] call, one write while they fit the active segment, flushed by one
    /// sync. Every entry is checked (continuity, purge, size bound) before anything is written:
    /// a refused call writes nothing.
    ///
    /// # Durability
    /// `callback` is called once the sync covering the last entry completed, which makes every
    /// earlier entry of the call durable too, or with the error that keeps it from completing.
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let log = &self.inner.log;
        let purged = self.purged();
        // Purged already: no reader would ever see them (openraft's suite appends below a purge
        // that a state machine ahead of the log caused).
        let entries: Vec<C::Entry> =
            entries.into_iter().filter(|e| purged.as_ref().is_none_or(|p| e.get_log_id().index > p.index)).collect();
        let Some(first) = entries.first() else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let write_error = |log_id: &LogId<C::NodeId>, e: &(dyn std::error::Error + 'static)| {
            storage_error(ErrorSubject::Log(log_id.clone()), ErrorVerb::Write, e)
        };
        // First pass: check every entry, writing nothing.
        let end = log.written_end();
        let first_index = first.get_log_id().index;
        // An empty log may begin at any index (openraft's suite starts logs at 1).
        let reset = first_index > end && end <= self.first_readable();
        let base = if reset { first_index } else { end };
        for (i, entry) in entries.iter().enumerate() {
            let log_id = entry.get_log_id();
            let expected = base + i as u64;
            if log_id.index != expected {
                let e = std::io::Error::other(format!(
                    "entry {log_id} does not continue the log in {}, which ends at index {expected} with the \
                     entries before it in this call",
                    log.dir().display()
                ));
                return Err(write_error(log_id, &e));
            }
            let len_bytes = bincode::serialized_size(entry).map_err(|e| write_error(log_id, &*e))?;
            if len_bytes > self.inner.entry_bytes_max {
                let e = std::io::Error::other(format!(
                    "entry {log_id} of {len_bytes} bytes exceeds the {}-byte maximum",
                    self.inner.entry_bytes_max
                ));
                return Err(write_error(log_id, &e));
            }
        }
        // Second pass: encode one frame per entry and hand them over in runs.
        if reset {
            log.reset(first_index).map_err(|e| write_error(first.get_log_id(), &e))?;
        }
        let epoch = log.epoch();
        let timestamp_ms = tern_wal::now_ms();
        let mut entry_bytes = Vec::new();
        let mut frames = Vec::new();
        let mut run_first = 0;
        let mut last = None;
        for (i, entry) in entries.iter().enumerate() {
            let log_id = entry.get_log_id();
            entry_bytes.clear();
            bincode::serialize_into(&mut entry_bytes, entry).map_err(|e| write_error(log_id, &*e))?;
            let meta = BatchMeta { base_offset: log_id.index, epoch, ..BatchMeta::default() };
            frame::encode(&mut frames, &meta, &[Record::new(&entry_bytes, timestamp_ms)])
                .map_err(|e| write_error(log_id, &e))?;
            if frames.len() < RUN_BYTES_MAX && i + 1 < entries.len() {
                continue;
            }
            let run_log_id = entries.get(run_first).map_or(log_id, |e| e.get_log_id());
            let appended = log.append_frames(&frames).map_err(|e| write_error(run_log_id, &e))?;
            // Checked above and nobody else appends to this log: the run lands where expected.
            assert_eq!(appended.offsets, run_log_id.index..log_id.index + 1, "run of {run_log_id} misplaced");
            frames.clear();
            run_first = i + 1;
            last = Some(appended);
        }
        match last {
            // Durability is monotonic: the last run's flush covers every earlier one.
            Some(appended) => appended.on_durable(move |result| {
                callback.log_io_completed(result.map(|_| ()).map_err(std::io::Error::other));
            }),
            None => callback.log_io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let log = &self.inner.log;
        if log_id.index >= log.written_end() {
            return Ok(());
        }
        log.truncate_suffix(log_id.index).map_err(|e| wal_error(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        if self.purged().is_some_and(|p| p.index >= log_id.index) {
            return Ok(());
        }
        // Recorded first: from here on the entries are gone for every reader, and a crash
        // before the segments go is finished by the next open.
        self.write_state(|p| p.purged = Some(log_id.clone()))?;
        let log = &self.inner.log;
        let next = log_id.index + 1;
        let result = if log.written_end() < next { log.reset(next) } else { log.truncate_prefix(next).map(|_| ()) };
        result.map_err(|e| wal_error(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))
    }
}
