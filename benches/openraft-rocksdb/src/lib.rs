//! openraft's log storage on RocksDB, to measure openraft on Tern against (`benches/raft_log.rs`;
//! BENCHMARKS.md, "openraft on Tern against openraft on an in-memory log store"). This crate is
//! a workspace member outside `default-members`, so RocksDB is built only when it is named
//! (`benches/openraft-rocksdb/run.sh`).
//!
//! The store is laid out as openraft's own RocksDB example lays out its log: entries in column
//! family `logs` keyed by their index in big-endian (so key order is index order), the vote and
//! the last purged log id in column family `meta`. Entries are encoded with bincode, as
//! openraft-tern encodes them.
//!
//! # Durability
//! Every write (an append call's entries, a vote, a truncation, a purge) is one `WriteBatch`
//! written with `WriteOptions::set_sync(true)`: RocksDB appends it to its write-ahead log and
//! syncs that file before the call returns. An append reports its flush to openraft after that
//! synced write, from the calling task.

// openraft's trait methods return its `StorageError` (185 bytes).
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig, StorageError,
    StorageIOError, Vote,
};
use rocksdb::{ColumnFamily, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Column family of the entries, keyed by index.
const LOGS: &str = "logs";
/// Column family of the vote and the last purged log id.
const META: &str = "meta";
const VOTE_KEY: &[u8] = b"vote";
const PURGED_KEY: &[u8] = b"purged";
/// Past every 8-byte index key: the end of a range that deletes to the end of the log.
const PAST_LAST_KEY: [u8; 9] = [0xff; 9];

/// openraft's log storage ([`RaftLogStorage`]) on a RocksDB database. Cloning shares the
/// database (a clone is also its log reader).
#[derive(Clone)]
pub struct RocksLog<C: RaftTypeConfig> {
    db: Arc<DB>,
    _types: PhantomData<C>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl<C: RaftTypeConfig> RocksLog<C>
where
    C::Entry: Serialize + DeserializeOwned,
{
    /// Opens (or creates) the database in directory `dir`, with RocksDB's default options.
    ///
    /// # Errors
    /// RocksDB's, for example when another process holds the database.
    pub fn open(dir: &Path) -> Result<Self, rocksdb::Error> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let db = DB::open_cf(&options, dir, [LOGS, META])?;
        Ok(RocksLog { db: Arc::new(db), _types: PhantomData })
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column family created at open")
    }

    /// Writes `batch` and syncs RocksDB's write-ahead log before returning.
    fn write_synced(&self, batch: WriteBatch) -> Result<(), rocksdb::Error> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)
    }

    fn meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError<C::NodeId>> {
        match self.db.get_cf(self.cf(META), key).map_err(|e| StorageIOError::read(&e))? {
            None => Ok(None),
            Some(bytes) => Ok(Some(bincode::deserialize(&bytes).map_err(|e| StorageIOError::read(&*e))?)),
        }
    }

    /// The stored entries in `range`, in index order.
    fn read_entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        let from = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        let start = index_key(from);
        for item in self.db.iterator_cf(self.cf(LOGS), IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item.map_err(|e| StorageIOError::read_log_at_index(from, &e))?;
            let index = key.as_ref().try_into().map(u64::from_be_bytes);
            let index = index.map_err(|e| StorageIOError::read_log_at_index(from, &e))?;
            // Keys come in index order from `from` on: the first one outside is past the end.
            if !range.contains(&index) {
                break;
            }
            entries.push(bincode::deserialize(&value).map_err(|e| StorageIOError::read_log_at_index(index, &*e))?);
        }
        Ok(entries)
    }
}

impl<C: RaftTypeConfig> RaftLogReader<C> for RocksLog<C>
where
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        self.read_entries(range)
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for RocksLog<C>
where
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let purged: Option<LogId<C::NodeId>> = self.meta(PURGED_KEY)?;
        let last = match self.db.iterator_cf(self.cf(LOGS), IteratorMode::End).next() {
            None => None,
            Some(item) => {
                let (_, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                let entry: C::Entry = bincode::deserialize(&value).map_err(|e| StorageIOError::read_logs(&*e))?;
                Some(entry.get_log_id().clone())
            }
        };
        Ok(LogState { last_log_id: last.or_else(|| purged.clone()), last_purged_log_id: purged })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let bytes = bincode::serialize(vote).map_err(|e| StorageIOError::write_vote(&*e))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(META), VOTE_KEY, bytes);
        Ok(self.write_synced(batch).map_err(|e| StorageIOError::write_vote(&e))?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        self.meta(VOTE_KEY)
    }

    /// Writes the entries of one call in one synced `WriteBatch`.
    ///
    /// # Durability
    /// `callback` is called after RocksDB synced its write-ahead log with the batch in it.
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let logs = self.cf(LOGS);
        let mut batch = WriteBatch::default();
        let mut bytes = Vec::new();
        let mut last = None;
        for entry in entries {
            let log_id = entry.get_log_id();
            bytes.clear();
            bincode::serialize_into(&mut bytes, &entry)
                .map_err(|e| StorageIOError::write_log_entry(log_id.clone(), &*e))?;
            batch.put_cf(logs, index_key(log_id.index), &bytes);
            last = Some(log_id.clone());
        }
        let Some(last) = last else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        // A failed write returns its error, which openraft takes as fatal: no flush to report.
        self.write_synced(batch).map_err(|e| StorageIOError::write_log_entry(last, &e))?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(LOGS), &index_key(log_id.index)[..], &PAST_LAST_KEY[..]);
        let delete_error = |e| StorageIOError::new(ErrorSubject::Log(log_id), ErrorVerb::Delete, &e);
        Ok(self.write_synced(batch).map_err(delete_error)?)
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let bytes = bincode::serialize(&log_id).map_err(|e| StorageIOError::write_logs(&*e))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(META), PURGED_KEY, bytes);
        let end = log_id.index.checked_add(1).map_or(PAST_LAST_KEY.to_vec(), |next| index_key(next).to_vec());
        batch.delete_range_cf(self.cf(LOGS), &index_key(0)[..], &end[..]);
        let delete_error = |e| StorageIOError::new(ErrorSubject::Log(log_id), ErrorVerb::Delete, &e);
        Ok(self.write_synced(batch).map_err(delete_error)?)
    }
}
