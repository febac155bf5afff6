//! A log: a directory of segments with dense record offsets, appended through group commit.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use tern_segment::frame::{self, BatchMeta, Record};
use tern_segment::segment::{encode_segment_header, parse_file_name, SEGMENT_EXT, SEGMENT_HEADER_BYTES};
use tern_segment::{CorruptReason, Disk, Segment};

use crate::committer::Committer;
use crate::epochs::{self, EpochHistory, EPOCHS_FILE};
use crate::error::{Error, Result};
use crate::journal::DIRECT_BATCH_BYTES;
use crate::meta::{Checkpoint, CheckpointWriter, Meta, NO_TRUNCATION};

/// Default size of a segment file.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Smallest segment size accepted.
pub const SEGMENT_BYTES_MIN: u64 = 4096;
/// Largest segment size accepted.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;
/// Default distance between sparse index entries.
pub const INDEX_INTERVAL_BYTES_DEFAULT: u64 = 64 << 10;
/// Name prefix of the files that keep records cut by [`Log::truncate_suffix_to_quarantine`].
pub const QUARANTINE_FILE_PREFIX: &str = "quarantine-";
/// Default maximum size of one record (key plus value).
pub const RECORD_BYTES_DEFAULT: u64 = 16 << 20;
/// The stored retention hold when none is set: no offset reaches it, so it holds nothing.
const NO_RETENTION_HOLD: u64 = u64::MAX;

/// How durable an append must be before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Durability {
    /// Written to the page cache: survives a process crash, not a power loss.
    None,
    /// Synced to the local disk with `fdatasync`: survives a power loss.
    Local,
}

/// Which end of the log a reader may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Visibility {
    /// Everything written, synced or not.
    Written,
    /// Only what is durable on the local disk.
    Durable,
}

/// Settings of one log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// Pre-allocated size of each segment file.
    pub segment_size_bytes: u64,
    /// Distance in bytes between sparse index entries.
    pub index_interval_bytes: u64,
    /// Largest record (key plus value) an append accepts.
    pub record_bytes_max: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size_bytes: SEGMENT_BYTES_DEFAULT,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            record_bytes_max: RECORD_BYTES_DEFAULT,
        }
    }
}

impl LogOptions {
    /// Checks every field against its bounds.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(Error::Invalid(m));
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_size_bytes) {
            return invalid(format!(
                "segment_size_bytes {} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                self.segment_size_bytes
            ));
        }
        if self.index_interval_bytes == 0 || self.index_interval_bytes > self.segment_size_bytes {
            return invalid(format!(
                "index_interval_bytes {} must be in 1..=segment_size_bytes",
                self.index_interval_bytes
            ));
        }
        let limit = frame::RECORD_BYTES_MAX as u64;
        if self.record_bytes_max == 0 || self.record_bytes_max > limit {
            return invalid(format!("record_bytes_max {} is outside 1..={limit}", self.record_bytes_max));
        }
        Ok(())
    }
}

/// Batch-level fields an appender may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppendOptions {
    /// Leader epoch stamped on the batch; `None` uses the log's current epoch
    /// ([`Log::epoch`]). An epoch older than that is refused ([`Error::StaleEpoch`]); a newer
    /// one is recorded in the epoch history, durably, before the batch is written, as
    /// [`Log::append_frames`] does.
    pub epoch: Option<u64>,
    /// Producer id (0 = none).
    pub producer_id: u64,
    /// Producer sequence number.
    pub sequence: u64,
}

/// What recovery found when the log was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovered {
    /// The last close was clean: nothing was scanned.
    pub clean: bool,
    /// Bytes of frames walked or verified to find the end.
    pub scanned_bytes: u64,
    /// Bytes past the last whole frame that were cut (a torn tail).
    pub torn_tail_bytes: u64,
    /// Batches restored from the shared journal (synced there, lost from the segment).
    pub replayed_batches: u64,
}

/// Counters of one log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    /// Batches appended.
    pub batches: u64,
    /// Records appended.
    pub records: u64,
    /// Frame bytes appended.
    pub bytes: u64,
    /// Group syncs that covered this log.
    pub syncs: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    syncs: AtomicU64,
}

struct WriteState {
    buf: Vec<u8>,
    /// The epoch history, as durable in the `epochs` file. Its newest epoch is stamped on
    /// appended batches that name none.
    history: EpochHistory,
    /// The frames of one `append_frames` call, checked before any is written.
    spans: Vec<FrameSpan>,
}

/// One frame of an `append_frames` call that continues the log.
#[derive(Debug, Clone, Copy)]
struct FrameSpan {
    /// Position of the frame in the call's bytes.
    rel: usize,
    len_bytes: usize,
    header: frame::BatchHeader,
}

/// A snapshot the committer syncs: the active segment and the log end written before the sync.
pub(crate) struct SyncTarget {
    pub(crate) segment: Arc<Segment>,
    /// The segment itself must be synced (no journal, or batches too large for it).
    pub(crate) sync_segment: bool,
    end_offset: u64,
    end_pos: u64,
    truncations: u64,
}

pub(crate) struct LogInner {
    name: String,
    dir: PathBuf,
    disk: Arc<dyn Disk>,
    options: LogOptions,
    committer: Committer,
    write: Mutex<WriteState>,
    pub(crate) segments: RwLock<Vec<Arc<Segment>>>,
    start_offset: AtomicU64,
    written_end: AtomicU64,
    durable_end: AtomicU64,
    truncations: AtomicU64,
    /// The meta generation, stamped on this log's journal entries.
    generation: AtomicU64,
    /// Retention never deletes a segment holding an offset at or above this
    /// ([`NO_RETENTION_HOLD`] when none). Changed under the append lock.
    retention_hold: AtomicU64,
    /// Registered with the committer's journal since its last switch.
    pub(crate) journal_registered: AtomicBool,
    /// Batches were written that are not in the journal: a sync must sync the segment.
    direct_dirty: AtomicBool,
    /// Large frames go around the page cache (O_DIRECT): see [`Log::set_direct_writes`].
    direct_writes: AtomicBool,
    sync_requested: AtomicBool,
    fenced: AtomicBool,
    fence_reason: Mutex<Option<String>>,
    closed: AtomicBool,
    waiters: Mutex<Vec<(u64, Thread)>>,
    grew_lock: Mutex<()>,
    grew: Condvar,
    readers_waiting: AtomicUsize,
    checkpoint: Mutex<CheckpointWriter>,
    meta: Mutex<Meta>,
    recovered: Recovered,
    counters: Counters,
}

/// A log: records with dense offsets in a directory of segment files. Cloning is cheap and
/// shares the log.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use tern_wal::{Committer, Durability, Log, LogOptions, Visibility};
/// let dir = tempfile::tempdir()?;
/// let disk: Arc<dyn tern_segment::Disk> = Arc::new(tern_segment::OsDisk::new());
/// let committer = Committer::start(disk.clone());
/// let log = Log::open(disk, dir.path(), "orders", LogOptions::default(), committer.clone(), true)?;
/// let offsets = log.append(&[b"a", b"b"], Durability::Local)?;
/// assert_eq!(offsets, 0..2);
/// let values: Vec<_> = log.read(0, Visibility::Durable)?.map(|r| r.map(|r| r.value)).collect::<Result<_, _>>()?;
/// assert_eq!(values, [&b"a"[..], &b"b"[..]]);
/// log.close()?;
/// committer.stop();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Log {
    pub(crate) inner: Arc<LogInner>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("name", &self.inner.name)
            .field("start", &self.start_offset())
            .field("written_end", &self.written_end())
            .field("durable_end", &self.durable_end())
            .finish()
    }
}

/// Milliseconds since the Unix epoch, for record timestamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Log {
    /// Opens the log in `dir`, recovering it after a crash, or creates it when `create` is set.
    ///
    /// Recovery reads the durable meta file, removes segments a crashed prefix truncation or
    /// reset left behind (creating the empty first segment of a reset if needed), finishes a
    /// crashed suffix truncation, trusts sealed segments by their index files, and finds the
    /// end of the last segment: no scan after a clean close; after a crash, a cheap walk up to
    /// the last checkpoint and a verified scan of the tail behind it. A torn tail is cut;
    /// damage before the checkpointed durable point is an error.
    ///
    /// It also loads the epoch history (FORMAT.md "Epoch history file"; a missing file is an
    /// empty history), clears it if a reset that took effect had not yet done so, and removes,
    /// durably, its entries that start past the recovered end: a crash lost their batches.
    ///
    /// # Errors
    /// [`tern_segment::Error::Corrupt`] (inside [`Error::Segment`]) naming file and byte
    /// position when durable data or the epoch history is damaged or missing; I/O errors;
    /// [`Error::Invalid`] for bad options or a missing log when `create` is false.
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: &Path,
        name: &str,
        options: LogOptions,
        committer: Committer,
        create: bool,
    ) -> Result<Log> {
        options.validate()?;
        if !disk.exists(dir) {
            if !create {
                return Err(Error::Invalid(format!("log directory {} does not exist", dir.display())));
            }
            disk.create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            if let Some(parent) = dir.parent() {
                disk.sync_dir(parent).map_err(|e| Error::io(parent, e))?;
            }
        }
        let (segments, meta, mut recovered, replay_generation, history) = recover(&*disk, dir, &options)?;
        let last = segments.last().cloned().expect("recovery leaves at least one segment");
        let end = last.end_offset();
        let checkpoint = CheckpointWriter::open(&*disk, dir)?;
        let start = segments.first().map_or(0, |s| s.base_offset());
        let replay = committer.take_replay(name);
        let inner = LogInner {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
            disk,
            options,
            committer,
            write: Mutex::new(WriteState { buf: Vec::with_capacity(64 << 10), history, spans: Vec::new() }),
            segments: RwLock::new(segments),
            start_offset: AtomicU64::new(start),
            written_end: AtomicU64::new(end),
            durable_end: AtomicU64::new(end),
            truncations: AtomicU64::new(0),
            generation: AtomicU64::new(meta.generation),
            retention_hold: AtomicU64::new(NO_RETENTION_HOLD),
            journal_registered: AtomicBool::new(false),
            direct_dirty: AtomicBool::new(false),
            direct_writes: AtomicBool::new(true),
            sync_requested: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            fence_reason: Mutex::new(None),
            closed: AtomicBool::new(false),
            waiters: Mutex::new(Vec::new()),
            grew_lock: Mutex::new(()),
            grew: Condvar::new(),
            readers_waiting: AtomicUsize::new(0),
            checkpoint: Mutex::new(checkpoint),
            meta: Mutex::new(meta),
            recovered,
            counters: Counters::default(),
        };
        let mut inner = inner;
        recovered.replayed_batches = inner.replay(&replay, replay_generation)?;
        if recovered.replayed_batches > 0 {
            recovered.clean = false;
        }
        inner.recovered = recovered;
        {
            // Only now is the end known (the journal may have restored batches). An entry
            // starting past it names an epoch whose batches a crash lost: drop it, durably,
            // before a batch of an older epoch is written where it starts.
            let mut st = inner.write.lock();
            let end = inner.written_end.load(Ordering::Acquire);
            let mut history = st.history.clone();
            if history.truncate_after(end) {
                history.write(&*inner.disk, dir)?;
                st.history = history;
            }
        }
        let last = inner.active();
        inner.checkpoint.lock().write(
            Checkpoint {
                generation: meta.generation,
                segment_base: last.base_offset(),
                durable_pos: last.end_pos(),
                durable_end: last.end_offset(),
                ..Default::default()
            },
            false,
        )?;
        Ok(Log { inner: Arc::new(inner) })
    }

    /// The log's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether frames of 256 KiB and more are written around the page cache with O_DIRECT
    /// (the default: fastest for a writer that does not read them back) or through it. A
    /// replication leader turns it off: its shipper reads every batch right after it is
    /// written, and would otherwise read large ones back from the disk.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// use std::sync::Arc;
    /// use tern_wal::{Committer, Durability, Log, LogOptions};
    /// let disk: Arc<dyn tern_segment::Disk> = Arc::new(tern_segment::OsDisk::new());
    /// let log = Log::open(disk.clone(), dir.path(), "bulk", LogOptions::default(), Committer::start(disk), true)?;
    /// log.set_direct_writes(false);
    /// log.append(&[&vec![7u8; 1 << 20]], Durability::Local)?;
    /// # Ok(()) }
    /// ```
    pub fn set_direct_writes(&self, on: bool) {
        self.inner.direct_writes.store(on, Ordering::Relaxed);
        for segment in self.inner.segments.read().iter() {
            segment.set_direct_writes(on);
        }
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// What recovery found at open.
    pub fn recovered(&self) -> Recovered {
        self.inner.recovered
    }

    /// First offset the log holds.
    pub fn start_offset(&self) -> u64 {
        self.inner.start_offset.load(Ordering::Acquire)
    }

    /// One past the last offset written (in the page cache at least).
    pub fn written_end(&self) -> u64 {
        self.inner.written_end.load(Ordering::Acquire)
    }

    /// One past the last offset durable on the local disk.
    pub fn durable_end(&self) -> u64 {
        self.inner.durable_end.load(Ordering::Acquire)
    }

    /// The end a reader with `visibility` may see.
    pub fn end(&self, visibility: Visibility) -> u64 {
        match visibility {
            Visibility::Written => self.written_end(),
            Visibility::Durable => self.durable_end(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> LogStats {
        let c = &self.inner.counters;
        LogStats {
            batches: c.batches.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
        }
    }

    /// Bytes of segment files (pre-allocated size).
    pub fn size_bytes(&self) -> u64 {
        self.inner.segments.read().iter().map(|s| s.size_bytes()).sum()
    }

    /// Sets the epoch stamped on later batches: [`Log::begin_epoch`], except that the current
    /// epoch itself is accepted and changes nothing.
    ///
    /// # Errors
    /// [`Error::EpochNotNewer`] for an epoch below the current one; otherwise as
    /// [`Log::begin_epoch`].
    pub fn set_epoch(&self, epoch: u64) -> Result<()> {
        if epoch == self.epoch() {
            return Ok(());
        }
        self.begin_epoch(epoch)
    }

    /// Begins `epoch` here, as its leader: records in the epoch history that `epoch` starts at
    /// the written end, and stamps it on every later batch appended without an epoch of its own
    /// ([`Log::append`], [`Log::append_records`]).
    ///
    /// When the newest epoch of the history starts at the written end too (it wrote nothing
    /// here), the new entry replaces it: an epoch without batches cannot be where a follower
    /// diverged, and replacing keeps repeated elections from growing the history.
    ///
    /// # Durability
    /// Durable when this returns: records written before are synced first (so the new entry
    /// never starts past the durable end, where recovery would drop it), then the history file
    /// is replaced atomically and durably. A power loss before it returns leaves the old
    /// history or the new one; no batch of `epoch` is written before the new one is durable.
    ///
    /// # Errors
    /// [`Error::EpochNotNewer`] unless `epoch` is after [`Log::epoch`]; [`Error::Fenced`] or
    /// [`Error::Closed`]; [`Error::Invalid`] when the history is full
    /// ([`epochs::EPOCH_ENTRIES_MAX`]); I/O errors, after which the log is fenced.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use tern_wal::{Committer, Durability, Log, LogOptions, Visibility};
    /// let dir = tempfile::tempdir()?;
    /// let disk: Arc<dyn tern_segment::Disk> = Arc::new(tern_segment::OsDisk::new());
    /// let committer = Committer::start(disk.clone());
    /// let log = Log::open(disk.clone(), dir.path(), "orders", LogOptions::default(), committer.clone(), true)?;
    /// log.begin_epoch(3)?;
    /// log.append(&[b"a", b"b"], Durability::Local)?;
    /// log.begin_epoch(5)?;
    /// log.append(&[b"c"], Durability::Local)?;
    /// assert!(log.begin_epoch(5).is_err(), "epochs only move forward");
    /// assert_eq!(log.epoch_history(), [(3, 0), (5, 2)]);
    /// log.close()?;
    /// let log = Log::open(disk, dir.path(), "orders", LogOptions::default(), committer.clone(), false)?;
    /// assert_eq!((log.epoch(), log.last_epoch()), (5, 5));
    /// let epochs: Vec<u64> = log.read(0, Visibility::Durable)?.map(|r| r.map(|r| r.epoch)).collect::<Result<_, _>>()?;
    /// assert_eq!(epochs, [3, 3, 5]);
    /// log.close()?;
    /// committer.stop();
    /// # Ok(()) }
    /// ```
    pub fn begin_epoch(&self, epoch: u64) -> Result<()> {
        let inner = &self.inner;
        let mut st = inner.write.lock();
        inner.check_writable()?;
        let current = st.history.latest_epoch();
        if epoch <= current {
            return Err(Error::EpochNotNewer { epoch, current });
        }
        if let Err(e) = inner.sync_written() {
            inner.fence(&e);
            return Err(e);
        }
        let start = inner.written_end.load(Ordering::Acquire);
        let mut next = st.history.clone();
        next.record(epoch, start)?;
        inner.store_history(&mut st.history, next)
    }

    /// The newest epoch of the epoch history (0 when it is empty): what [`Log::append`] stamps
    /// on batches. A leader's epoch from [`Log::begin_epoch`], or on a follower the newest epoch
    /// among the batches it applied. It moves back only when [`Log::truncate_suffix`] or
    /// [`Log::reset`] removes the entries of the epochs it cuts away.
    pub fn epoch(&self) -> u64 {
        self.inner.write.lock().history.latest_epoch()
    }

    /// The epoch history, oldest first: `(epoch, start_offset)` pairs, strictly increasing in
    /// epoch and non-decreasing in start offset. From each entry's start offset up to the next
    /// entry's, batches carry its epoch; below the first entry, epoch 0. An entry may start
    /// below the log start (retention removed its first batches), and the newest may start at
    /// the written end (an epoch begun that has written nothing yet).
    pub fn epoch_history(&self) -> Vec<(u64, u64)> {
        let st = self.inner.write.lock();
        st.history.entries().iter().map(|e| (e.epoch, e.start_offset)).collect()
    }

    /// The epoch of the last batch the log holds: 0 when the log is empty or has no epoch
    /// history. Read from the history, which always agrees with the batches.
    pub fn last_epoch(&self) -> u64 {
        let st = self.inner.write.lock();
        let end = self.written_end();
        if end == self.start_offset() {
            return 0;
        }
        st.history.epoch_at(end - 1)
    }

    /// Where an epoch ends in this log, as Kafka's OffsetsForLeaderEpoch answers a follower:
    /// `(E', end)`, where `E'` is the newest epoch of the history not after `epoch`, and `end`
    /// is the offset where `E'` ends here: the start of the next entry, or the written end when
    /// `E'` is the newest. When no entry is at or below `epoch`, `E'` is 0, the implicit epoch
    /// of the batches below the first entry, and `end` is the first entry's start (the written
    /// end when the history is empty).
    ///
    /// A follower whose last batch has epoch `epoch` ([`Log::last_epoch`]) asks its leader,
    /// and keeps only records below `end`: from there on the leader holds batches of epochs
    /// after `E'`, which no record of the follower's up to epoch `epoch` can match. When
    /// `E' < epoch`, the leader never wrote `epoch`, and the follower's batches of epochs after
    /// `E'` diverge too. So, as in Kafka (KIP-279), the follower looks up its own
    /// `(E'', own_end) = epoch_end(E')`: if `E'' == E'`, it cuts at the smaller of `end` and
    /// `own_end` ([`Log::truncate_suffix`]); otherwise it never had `E'` and asks again with
    /// `E''`, which is smaller, so the exchange ends (at epoch 0 at the latest). Records below
    /// the cut carry the same epoch at the same offset on both sides, so they are the same
    /// records.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use tern_wal::{Committer, Durability, Log, LogOptions};
    /// let dir = tempfile::tempdir()?;
    /// let disk: Arc<dyn tern_segment::Disk> = Arc::new(tern_segment::OsDisk::new());
    /// let committer = Committer::start(disk.clone());
    /// let log = Log::open(disk, dir.path(), "orders", LogOptions::default(), committer.clone(), true)?;
    /// for (epoch, count) in [(1, 50), (2, 30), (4, 40)] {
    ///     log.begin_epoch(epoch)?;
    ///     for _ in 0..count {
    ///         log.append(&[b"x"], Durability::None)?;
    ///     }
    /// }
    /// assert_eq!(log.epoch_history(), [(1, 0), (2, 50), (4, 80)]);
    /// assert_eq!(log.epoch_end(2), (2, 80));
    /// assert_eq!(log.epoch_end(3), (2, 80)); // epoch 3 never wrote here: cut where 2 ends
    /// assert_eq!(log.epoch_end(4), (4, 120));
    /// assert_eq!(log.epoch_end(0), (0, 0));
    /// log.close()?;
    /// committer.stop();
    /// # Ok(()) }
    /// ```
    pub fn epoch_end(&self, epoch: u64) -> (u64, u64) {
        let st = self.inner.write.lock();
        st.history.epoch_end(epoch, self.written_end())
    }

    /// Appends `values` as one atomic batch, stamped with the current time, and returns the
    /// offsets they were given once the batch is as durable as asked.
    ///
    /// # Durability
    /// [`Durability::Local`] returns after an `fdatasync` shared with the rest of the group
    /// commit: the records survive power loss. [`Durability::None`] returns once the batch is
    /// in the page cache: it survives a process crash, not a power loss.
    ///
    /// # Errors
    /// [`Error::RecordTooLarge`]; [`Error::Fenced`] once an earlier write or sync failed
    /// (reopen the log to continue); [`Error::DiskFull`]; I/O errors.
    pub fn append(&self, values: &[&[u8]], durability: Durability) -> Result<Range<u64>> {
        let ts = now_ms();
        let records: Vec<Record<'_>> = values.iter().map(|v| Record::new(v, ts)).collect();
        self.append_records(&records, AppendOptions::default())?.wait(durability)
    }

    /// Appends `records` as one atomic batch and returns at once, with a handle to wait for
    /// durability. The batch is in the page cache when this returns.
    ///
    /// # Errors
    /// As [`Log::append`].
    pub fn append_records(&self, records: &[Record<'_>], options: AppendOptions) -> Result<Appended> {
        let inner = &self.inner;
        if records.is_empty() {
            let end = self.written_end();
            return Ok(Appended { log: self.clone(), offsets: end..end });
        }
        for record in records {
            let len_bytes = (record.value.len() + record.key.map_or(0, <[u8]>::len)) as u64;
            if len_bytes > inner.options.record_bytes_max {
                return Err(Error::RecordTooLarge { len_bytes, limit_bytes: inner.options.record_bytes_max });
            }
        }
        let mut guard = inner.write.lock();
        let st = &mut *guard;
        inner.check_writable()?;
        let base = inner.written_end.load(Ordering::Acquire);
        let epoch = options.epoch.unwrap_or(st.history.latest_epoch());
        let meta = BatchMeta { base_offset: base, epoch, producer_id: options.producer_id, sequence: options.sequence };
        st.buf.clear();
        let frame_len = frame::encode(&mut st.buf, &meta, records).map_err(|e| Error::Invalid(e.to_string()))?;
        inner.enter_epoch(&mut st.history, epoch, base)?;
        let end = base + records.len() as u64;
        let max_ts = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0);
        inner.write_frame(&st.buf, base, end, max_ts)?;
        debug_assert_eq!(st.buf.len(), frame_len);
        let staged_bytes = self.inner.journal_frame(&st.buf, records.len() as u64);
        drop(guard);
        self.inner.appended(staged_bytes);
        Ok(Appended { log: self.clone(), offsets: base..end })
    }

    /// Appends batch frames exactly as another log wrote them (a follower applying what its
    /// leader shipped): epochs, timestamps and producer fields are kept. Frames that end at or
    /// before this log's end are skipped, so applying the same frames twice writes them once;
    /// the first frame kept must start exactly at the end. Returns the offsets now covered by
    /// `frames` in this log, and a handle to wait for durability.
    ///
    /// The epoch history follows the frames: before the first frame of an epoch newer than
    /// [`Log::epoch`] is written, `(its epoch, its base offset)` is recorded durably, so the
    /// history is never behind the data. The frames of one call may span several epochs.
    ///
    /// Every frame is checked before any is written: when one does not decode, does not
    /// continue the log, holds a record that is too large, or carries an epoch older than the
    /// one before it (or than [`Log::epoch`] for the first), nothing is written.
    ///
    /// # Durability
    /// As [`Log::append_records`] for the frames; a new epoch's history entry is durable
    /// before its first frame is written.
    ///
    /// # Errors
    /// [`tern_segment::Error::Corrupt`] (inside [`Error::Segment`]) for a frame that does not
    /// decode or does not continue the log; [`Error::StaleEpoch`] for a frame of an epoch
    /// older than the log's (a stale leader's: a follower that must accept it first cuts the
    /// newer epoch's records away with [`Log::truncate_suffix`]); otherwise as [`Log::append`].
    pub fn append_frames(&self, frames: &[u8]) -> Result<Appended> {
        let inner = &self.inner;
        let mut guard = inner.write.lock();
        let st = &mut *guard;
        inner.check_writable()?;
        let start = inner.written_end.load(Ordering::Acquire);
        // First pass: decode and check every frame, writing nothing.
        st.spans.clear();
        let mut rel = 0usize;
        let mut end = start;
        let mut epoch = st.history.latest_epoch();
        while rel < frames.len() {
            let rest = frames.get(rel..).unwrap_or_default();
            let pos = rel as u64;
            let corrupt = move |reason| {
                Error::Segment(tern_segment::Error::Corrupt { file: PathBuf::from("<shipped frames>"), pos, reason })
            };
            let frame =
                frame::decode(rest).map_err(corrupt)?.ok_or(corrupt(CorruptReason::Truncated { needed_bytes: 4 }))?;
            let header = frame.header;
            let span = FrameSpan { rel, len_bytes: frame.frame_len, header };
            rel += frame.frame_len;
            if header.end_offset() <= end {
                continue; // already here
            }
            if header.base_offset != end {
                return Err(corrupt(CorruptReason::Discontinuity { expected: end, found: header.base_offset }));
            }
            if header.epoch < epoch {
                return Err(Error::StaleEpoch { epoch: header.epoch, current: epoch, offset: header.base_offset });
            }
            for record in frame.records() {
                let len_bytes = (record.value.len() + record.key.map_or(0, <[u8]>::len)) as u64;
                if len_bytes > inner.options.record_bytes_max {
                    return Err(Error::RecordTooLarge { len_bytes, limit_bytes: inner.options.record_bytes_max });
                }
            }
            end = header.end_offset();
            epoch = header.epoch;
            st.spans.push(span);
        }
        // Second pass: write them, each new epoch's history entry first. Consecutive frames
        // of one epoch that fit in the active segment go out in one write.
        let mut staged_bytes = 0;
        let mut i = 0;
        while let Some(first) = st.spans.get(i) {
            inner.enter_epoch(&mut st.history, first.header.epoch, first.header.base_offset)?;
            let room = inner.active().remaining_bytes();
            let mut run_bytes = first.len_bytes as u64;
            let mut j = i + 1;
            while let Some(next) = st.spans.get(j) {
                let prev = st.spans.get(j - 1).map_or(0, |p| p.rel + p.len_bytes);
                let bytes = run_bytes + next.len_bytes as u64;
                if next.rel != prev || next.header.epoch != first.header.epoch || bytes > room {
                    break;
                }
                run_bytes = bytes;
                j += 1;
            }
            let run = st.spans.get(i..j).unwrap_or_default();
            inner.write_run(frames, run)?;
            for span in run {
                let bytes = frames.get(span.rel..span.rel + span.len_bytes).unwrap_or_default();
                staged_bytes = self.inner.journal_frame(bytes, u64::from(span.header.record_count));
            }
            i = j;
        }
        let end = inner.written_end.load(Ordering::Acquire);
        drop(guard);
        self.inner.appended(staged_bytes);
        Ok(Appended { log: self.clone(), offsets: start..end })
    }

    /// Makes everything written so far durable and waits for it.
    ///
    /// # Errors
    /// [`Error::Fenced`] if the sync failed.
    pub fn sync(&self) -> Result<()> {
        let end = self.written_end();
        self.inner.wait_durable(&self.inner, end)
    }

    /// Blocks until the log's `visibility` end passes `offset` (so `offset` can be read), the
    /// log is fenced or closed, or `timeout` passes. Returns whether the end passed `offset`.
    /// No polling: appends and syncs wake waiting readers.
    pub fn wait_for(&self, offset: u64, visibility: Visibility, timeout: Option<Duration>) -> bool {
        let inner = &self.inner;
        let deadline = timeout.map(|t| Instant::now() + t);
        inner.readers_waiting.fetch_add(1, Ordering::SeqCst);
        let mut guard = inner.grew_lock.lock();
        let passed = loop {
            if self.end(visibility) > offset {
                break true;
            }
            if inner.fenced.load(Ordering::SeqCst) || inner.closed.load(Ordering::SeqCst) {
                break false;
            }
            match deadline {
                Some(d) => {
                    if inner.grew.wait_until(&mut guard, d).timed_out() {
                        break self.end(visibility) > offset;
                    }
                }
                None => inner.grew.wait(&mut guard),
            }
        };
        drop(guard);
        inner.readers_waiting.fetch_sub(1, Ordering::SeqCst);
        passed
    }

    /// Deletes whole segments that hold only offsets below `offset` (retention). The last
    /// segment is never deleted, so the log start may stay below `offset`. Returns the new log
    /// start. Crash-safe: the new start is recorded durably before any file is removed.
    ///
    /// # Errors
    /// [`Error::OffsetOutOfRange`] when `offset` is past the written end; I/O errors.
    pub fn truncate_prefix(&self, offset: u64) -> Result<u64> {
        self.truncate_prefix_below(offset, false)
    }

    /// [`Log::truncate_prefix`], lowering `offset` to the retention hold when `held` is set.
    /// The hold is read under the append lock, which [`Log::set_retention_hold`] also takes,
    /// so a hold set before this takes the lock is always honoured.
    fn truncate_prefix_below(&self, offset: u64, held: bool) -> Result<u64> {
        let inner = &self.inner;
        let _st = inner.write.lock();
        let offset = if held { offset.min(inner.retention_hold.load(Ordering::Acquire)) } else { offset };
        let (start, end) = (self.start_offset(), self.written_end());
        if offset > end {
            return Err(Error::OffsetOutOfRange { offset, start, end });
        }
        let segments = inner.segments.read().clone();
        let doomed: Vec<Arc<Segment>> = segments
            .iter()
            .take(segments.len().saturating_sub(1))
            .take_while(|s| s.end_offset() <= offset)
            .cloned()
            .collect();
        let Some(new_start) = segments.get(doomed.len()).map(|s| s.base_offset()) else { return Ok(start) };
        if doomed.is_empty() {
            return Ok(start);
        }
        {
            let mut meta = inner.meta.lock();
            let mut next = *meta;
            next.start_offset = new_start;
            next.write(&*inner.disk, &inner.dir)?;
            *meta = next;
        }
        for segment in &doomed {
            remove_segment_files(&*inner.disk, segment)?;
        }
        inner.disk.sync_dir(&inner.dir).map_err(|e| Error::io(&inner.dir, e))?;
        inner.segments.write().drain(..doomed.len());
        inner.start_offset.store(new_start, Ordering::Release);
        Ok(new_start)
    }

    /// Applies retention: deletes the oldest segments while the log is larger than
    /// `size_bytes_max`, or while their newest record is older than `age_ms_max` at `now_ms`.
    /// Never deletes a segment holding an offset at or above the retention hold
    /// ([`Log::set_retention_hold`]). Returns the new log start.
    ///
    /// # Errors
    /// As [`Log::truncate_prefix`].
    pub fn apply_retention(&self, size_bytes_max: Option<u64>, age_ms_max: Option<u64>, now_ms: u64) -> Result<u64> {
        let segments = self.inner.segments.read().clone();
        let mut total: u64 = segments.iter().map(|s| s.end_pos()).sum();
        let mut cut = self.start_offset();
        for segment in segments.iter().take(segments.len().saturating_sub(1)) {
            let too_big = size_bytes_max.is_some_and(|max| total > max);
            let too_old = age_ms_max.is_some_and(|max| now_ms.saturating_sub(segment.max_timestamp_ms()) > max);
            if !too_big && !too_old {
                break;
            }
            total -= segment.end_pos();
            cut = segment.end_offset();
        }
        if cut > self.start_offset() {
            return self.truncate_prefix_below(cut, true);
        }
        Ok(self.start_offset())
    }

    /// Sets the retention hold: from when this returns, [`Log::apply_retention`] never deletes
    /// a segment that holds any offset at or above `hold` (it deletes only segments whose end
    /// is at most `hold`). `None` lifts the hold. A leader holds the oldest offset a peer still
    /// needs, so that the peer can catch up from the log instead of needing a fresh copy.
    ///
    /// The hold is not persisted: it lives as long as this open log and starts as `None`.
    /// [`Log::truncate_prefix`] ignores it, because it is an operator's explicit order.
    /// `Some(u64::MAX)` holds nothing, as no offset reaches it, and reads back as `None`.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use tern_wal::{Committer, Durability, Log, LogOptions};
    /// let dir = tempfile::tempdir()?;
    /// let disk: Arc<dyn tern_segment::Disk> = Arc::new(tern_segment::OsDisk::new());
    /// let committer = Committer::start(disk.clone());
    /// let options = LogOptions { segment_size_bytes: 4096, index_interval_bytes: 1024, ..LogOptions::default() };
    /// let log = Log::open(disk, dir.path(), "orders", options, committer.clone(), true)?;
    /// for _ in 0..40 {
    ///     log.append(&[&[7u8; 500]], Durability::Local)?; // rolls a segment every few appends
    /// }
    /// log.set_retention_hold(Some(0)); // a peer still needs offset 0
    /// assert_eq!(log.apply_retention(Some(0), None, 0)?, 0, "nothing deleted");
    /// log.set_retention_hold(None);
    /// assert!(log.apply_retention(Some(0), None, 0)? > 0, "now retention deletes");
    /// log.close()?;
    /// committer.stop();
    /// # Ok(()) }
    /// ```
    pub fn set_retention_hold(&self, hold: Option<u64>) {
        // Under the append lock, so that no retention run that read the old hold is still
        // deleting when this returns (see `truncate_prefix_below`).
        let _st = self.inner.write.lock();
        self.inner.retention_hold.store(hold.unwrap_or(NO_RETENTION_HOLD), Ordering::Release);
    }

    /// The retention hold set by [`Log::set_retention_hold`], if any.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use tern_wal::{Committer, Log, LogOptions};
    /// let dir = tempfile::tempdir()?;
    /// let disk: Arc<dyn tern_segment::Disk> = Arc::new(tern_segment::OsDisk::new());
    /// let committer = Committer::start(disk.clone());
    /// let log = Log::open(disk, dir.path(), "orders", LogOptions::default(), committer.clone(), true)?;
    /// assert_eq!(log.retention_hold(), None);
    /// log.set_retention_hold(Some(42));
    /// assert_eq!(log.retention_hold(), Some(42));
    /// log.close()?;
    /// committer.stop();
    /// # Ok(()) }
    /// ```
    pub fn retention_hold(&self) -> Option<u64> {
        let hold = self.inner.retention_hold.load(Ordering::Acquire);
        (hold != NO_RETENTION_HOLD).then_some(hold)
    }

    /// [`Log::truncate_suffix`], keeping what it removes: the batches from `offset` to the
    /// written end are first written, durably, to `quarantine-OFFSET-END.frames` in the log's
    /// directory (their frames back to back, the segment frame format, FORMAT.md). A
    /// replication follower uses it to cut records that diverged from its leader's log, so
    /// they stay for the operator. Returns the file's path, or `None` when nothing was cut.
    /// The caller is the log's only writer meanwhile.
    ///
    /// # Errors
    /// As [`Log::truncate_suffix`], and I/O errors writing the file (then nothing is cut).
    pub fn truncate_suffix_to_quarantine(&self, offset: u64) -> Result<Option<PathBuf>> {
        let end = self.written_end();
        if offset >= end {
            self.truncate_suffix(offset)?;
            return Ok(None);
        }
        let mut frames = Vec::new();
        let mut next = offset;
        while next < end {
            let batches = self.read_batches(next, 4 << 20, Visibility::Written)?;
            let Some(last) = batches.last() else { break };
            next = last.end_offset;
            for batch in &batches {
                frames.extend_from_slice(&batch.frame);
            }
        }
        let path = self.inner.dir.join(format!("{QUARANTINE_FILE_PREFIX}{offset}-{end}.frames"));
        tern_segment::disk::write_file_atomic(&*self.inner.disk, &path, &frames, true)
            .map_err(|e| Error::io(&path, e))?;
        self.truncate_suffix(offset)?;
        Ok(Some(path))
    }

    /// Removes every record at or after `offset`, which must be a batch boundary (replication
    /// uses this to drop a divergent suffix). Crash-safe: the truncation is recorded durably
    /// first and finished by recovery if a crash interrupts it; the cut bytes are overwritten
    /// with zeros so they can never reappear.
    ///
    /// The epoch history loses every entry that starts at or after `offset`: those epochs
    /// hold no batch any more. That includes an entry starting exactly at `offset`, such as an
    /// epoch just begun by [`Log::begin_epoch`] that wrote nothing, and it holds when `offset`
    /// is the written end, where no record is removed: a follower that cut its divergent
    /// records must accept the leader's batches of older epochs from there on. So
    /// [`Log::epoch`] may move back; a leader begins its epoch again after truncating.
    ///
    /// # Durability
    /// Durable when this returns. The history entries are removed durably after the
    /// truncation is recorded and before any record is cut; recovery removes them too when it
    /// finishes a truncation.
    ///
    /// # Errors
    /// [`Error::OffsetOutOfRange`], [`Error::NotBatchBoundary`], [`Error::Fenced`], I/O errors.
    pub fn truncate_suffix(&self, offset: u64) -> Result<()> {
        let inner = &self.inner;
        let mut st = inner.write.lock();
        inner.check_writable()?;
        let (start, end) = (self.start_offset(), self.written_end());
        if offset < start || offset > end {
            return Err(Error::OffsetOutOfRange { offset, start, end });
        }
        let mut history = st.history.clone();
        let history_cut = history.truncate_from(offset);
        if offset == end {
            // No record goes, only the entries of epochs that have none.
            return if history_cut { inner.store_history(&mut st.history, history) } else { Ok(()) };
        }
        let segments = inner.segments.read().clone();
        if !is_batch_boundary(&segments, offset)? {
            return Err(Error::NotBatchBoundary { offset });
        }
        let result = (|| {
            let mut meta = inner.meta.lock();
            let mut next = *meta;
            next.truncate_to = offset;
            next.generation += 1;
            next.write(&*inner.disk, &inner.dir)?;
            *meta = next;
            inner.truncations.fetch_add(1, Ordering::SeqCst);
            if history_cut {
                // After the truncation is recorded (so that a crash cannot leave the batches
                // without their entries), before the records go.
                history.write(&*inner.disk, &inner.dir)?;
                st.history = history;
            }
            let mut segments = segments;
            cut_suffix(&*inner.disk, &inner.dir, &mut segments, offset)?;
            next.truncate_to = NO_TRUNCATION;
            next.generation += 1;
            next.write(&*inner.disk, &inner.dir)?;
            *meta = next;
            *inner.segments.write() = segments;
            Ok(())
        })();
        if let Err(e) = result {
            inner.fence(&e);
            return Err(e);
        }
        // Journal entries of the cut records carry the old generation: never replayed.
        inner.generation.store(inner.meta.lock().generation, Ordering::SeqCst);
        inner.written_end.store(offset, Ordering::Release);
        inner.durable_end.store(offset, Ordering::Release);
        let last = inner.active();
        let meta = *inner.meta.lock();
        inner.checkpoint.lock().write(
            Checkpoint {
                generation: meta.generation,
                segment_base: last.base_offset(),
                durable_pos: last.end_pos(),
                durable_end: offset,
                ..Default::default()
            },
            false,
        )?;
        drop(st);
        Ok(())
    }

    /// Discards every record and makes the log empty, with its start and its next offset both
    /// at `start_offset`. A follower whose leader no longer holds the records it misses uses
    /// this before it takes a fresh copy of the leader's segments from `start_offset` on.
    ///
    /// Offsets are never reused, so `start_offset` must be at least the written end. Records
    /// written but not yet durable are synced first, so an append waiting for durability is
    /// told the truth, and a power loss during the reset finds either the whole old log or the
    /// empty log at `start_offset`.
    ///
    /// The epoch history is cleared with the records it described, and [`Log::epoch`] becomes
    /// 0: the copied batches rebuild it as [`Log::append_frames`] applies them. (Keeping the
    /// current epoch at `start_offset` instead would refuse those batches whenever their epochs
    /// are older than the one this log had reached.)
    ///
    /// # Durability
    /// Durable when this returns. When the log has an epoch history, a marker file
    /// `epochs.reset.<start_offset:020>` is created and its name synced first. The new start is
    /// then recorded in `log.meta`, under a new generation (journal entries and checkpoint
    /// slots of the discarded records are never trusted again); then the first segment at
    /// `start_offset` is created and its name synced; then the old segments are removed; then
    /// the history file and, after it, the marker. Recovery finishes a reset that a crash
    /// interrupted after the meta was replaced, clearing the history if the marker is still
    /// there (FORMAT.md "Recovery").
    ///
    /// # Errors
    /// [`Error::ResetBelowEnd`] when `start_offset` is below the written end; [`Error::Fenced`]
    /// or [`Error::Closed`]; I/O errors, after which the log is fenced and a reopen finishes or
    /// forgets the reset.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use tern_wal::{Committer, Durability, Log, LogOptions, Visibility};
    /// let dir = tempfile::tempdir()?;
    /// let disk: Arc<dyn tern_segment::Disk> = Arc::new(tern_segment::OsDisk::new());
    /// let committer = Committer::start(disk.clone());
    /// let log = Log::open(disk.clone(), dir.path(), "orders", LogOptions::default(), committer.clone(), true)?;
    /// log.append(&[b"old", b"old"], Durability::Local)?;
    /// log.reset(1000)?;
    /// assert_eq!((log.start_offset(), log.written_end()), (1000, 1000));
    /// assert_eq!(log.append(&[b"new"], Durability::Local)?, 1000..1001);
    /// log.close()?;
    /// let log = Log::open(disk, dir.path(), "orders", LogOptions::default(), committer.clone(), false)?;
    /// let records: Vec<_> = log.read(log.start_offset(), Visibility::Durable)?.collect::<Result<_, _>>()?;
    /// assert_eq!((records.len(), records[0].offset, &records[0].value[..]), (1, 1000, &b"new"[..]));
    /// log.close()?;
    /// committer.stop();
    /// # Ok(()) }
    /// ```
    pub fn reset(&self, start_offset: u64) -> Result<()> {
        let inner = &self.inner;
        let mut st = inner.write.lock();
        inner.check_writable()?;
        let end = self.written_end();
        if start_offset < end {
            return Err(Error::ResetBelowEnd { offset: start_offset, end });
        }
        let clear_history = !st.history.is_empty();
        let marker = inner.dir.join(epochs::reset_marker_name(start_offset));
        let result = (|| {
            inner.sync_written()?;
            if clear_history {
                // Until the marker is gone, recovery clears the history if the new start is
                // in effect, and otherwise removes the marker (FORMAT.md "Recovery").
                if inner.disk.exists(&marker) {
                    inner.disk.remove(&marker).map_err(|e| Error::io(&marker, e))?;
                }
                inner.disk.create(&marker, 0).map_err(|e| Error::io(&marker, e))?;
                inner.disk.sync_dir(&inner.dir).map_err(|e| Error::io(&inner.dir, e))?;
            }
            let generation = {
                let mut meta = inner.meta.lock();
                assert_eq!(meta.truncate_to, NO_TRUNCATION, "a suffix truncation was left unfinished");
                let next = Meta { generation: meta.generation + 1, start_offset, truncate_to: NO_TRUNCATION };
                next.write(&*inner.disk, &inner.dir)?;
                *meta = next;
                next.generation
            };
            // From here a crash ends in the empty log at `start_offset`; a sync of the old
            // segments still in flight must not raise the durable end or write a checkpoint.
            inner.truncations.fetch_add(1, Ordering::SeqCst);
            let old = inner.segments.read().clone();
            // An empty segment may already start at `start_offset` (the old log ended there
            // with an empty active segment): it is the new first segment as it stands.
            let reused = old.last().filter(|s| s.base_offset() == start_offset).cloned();
            if let Some(segment) = &reused {
                assert_eq!(segment.end_offset(), start_offset, "a segment at the reset start holds records");
            }
            let first = match reused {
                Some(segment) => segment,
                None => {
                    let segment = Segment::create(
                        &*inner.disk,
                        &inner.dir,
                        start_offset,
                        inner.options.segment_size_bytes,
                        inner.options.index_interval_bytes,
                    )?;
                    segment.sync()?;
                    // The new segment's name is durable before any old one goes, so the
                    // directory never holds no segment at all.
                    inner.disk.sync_dir(&inner.dir).map_err(|e| Error::io(&inner.dir, e))?;
                    Arc::new(segment)
                }
            };
            let doomed: Vec<&Arc<Segment>> = old.iter().filter(|s| !Arc::ptr_eq(s, &first)).collect();
            for segment in &doomed {
                remove_segment_files(&*inner.disk, segment)?;
            }
            if !doomed.is_empty() {
                inner.disk.sync_dir(&inner.dir).map_err(|e| Error::io(&inner.dir, e))?;
            }
            if clear_history {
                clear_history_then_marker(&*inner.disk, &inner.dir, &marker)?;
            }
            Ok((first, generation))
        })();
        let (first, generation) = match result {
            Ok(done) => done,
            Err(e) => {
                inner.fence(&e);
                return Err(e);
            }
        };
        // Journal entries of the discarded records carry an older generation: never replayed.
        inner.generation.store(generation, Ordering::SeqCst);
        st.history = EpochHistory::new();
        // Ends before start, so that a reader never sees the start past the end.
        *inner.segments.write() = vec![first.clone()];
        inner.written_end.store(start_offset, Ordering::Release);
        inner.durable_end.store(start_offset, Ordering::Release);
        inner.start_offset.store(start_offset, Ordering::Release);
        inner.checkpoint.lock().write(
            Checkpoint {
                generation,
                segment_base: start_offset,
                durable_pos: first.end_pos(),
                durable_end: start_offset,
                ..Default::default()
            },
            false,
        )?;
        drop(st);
        inner.wake_waiters(start_offset);
        inner.notify_readers();
        Ok(())
    }

    /// Syncs everything, writes the index of the last segment and a clean checkpoint, so the
    /// next open needs no scan. Appends fail with [`Error::Closed`] afterwards.
    ///
    /// # Errors
    /// I/O errors; [`Error::Fenced`] if the final sync failed.
    pub fn close(&self) -> Result<()> {
        let inner = &self.inner;
        let _st = inner.write.lock();
        if inner.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut checkpoint = inner.checkpoint.lock();
        inner.closed.store(true, Ordering::SeqCst);
        inner.notify_readers();
        if inner.fenced.load(Ordering::SeqCst) {
            inner.wake_all_waiters();
            return Ok(());
        }
        let last = inner.active();
        let end = inner.written_end.load(Ordering::Acquire);
        let finish = (|| {
            last.sync()?;
            last.write_index(&*inner.disk)?;
            Ok::<_, tern_segment::Error>(())
        })();
        if let Err(e) = finish {
            let err = Error::from_segment(e);
            drop(checkpoint);
            inner.fence(&err);
            return Err(err);
        }
        inner.durable_end.fetch_max(end, Ordering::AcqRel);
        inner.wake_waiters(end);
        let generation = inner.meta.lock().generation;
        checkpoint.write(
            Checkpoint {
                generation,
                clean: true,
                segment_base: last.base_offset(),
                durable_pos: last.end_pos(),
                durable_end: end,
                ..Default::default()
            },
            true,
        )?;
        Ok(())
    }

    /// True once an earlier write or sync failed.
    pub fn is_fenced(&self) -> bool {
        self.inner.fenced.load(Ordering::SeqCst)
    }

    /// The log's segments, oldest first.
    pub fn segments(&self) -> Vec<Arc<Segment>> {
        self.inner.segments.read().clone()
    }
}

/// Offsets of an append, and a handle to wait until they are durable.
#[derive(Debug)]
#[must_use = "an append is not durable until waited for"]
pub struct Appended {
    log: Log,
    /// Offsets given to the batch's records.
    pub offsets: Range<u64>,
}

impl Appended {
    /// Waits until the batch is as durable as `durability` asks and returns its offsets.
    ///
    /// # Errors
    /// [`Error::Fenced`] if the sync covering this batch failed.
    pub fn wait(self, durability: Durability) -> Result<Range<u64>> {
        if durability == Durability::Local && !self.offsets.is_empty() {
            let inner = &self.log.inner;
            inner.wait_durable(&inner.clone(), self.offsets.end)?;
        }
        Ok(self.offsets)
    }
}

impl LogInner {
    /// Makes every record written so far durable by syncing the active segment directly (the
    /// append lock is held, so the committer cannot be waited for). Earlier segments were
    /// synced whole when they were sealed. The caller fences the log if this fails.
    fn sync_written(&self) -> Result<()> {
        let end = self.written_end.load(Ordering::Acquire);
        if end > self.durable_end.load(Ordering::Acquire) {
            self.active().sync()?;
            self.direct_dirty.store(false, Ordering::SeqCst);
            self.durable_end.fetch_max(end, Ordering::AcqRel);
            self.wake_waiters(end);
        }
        Ok(())
    }

    /// Replaces the epoch history by `next`: durably in the `epochs` file, then in memory.
    /// Called with the append lock held. A failure fences the log: the file may then hold
    /// either history, and batches written against the other one could leave it behind them.
    fn store_history(&self, current: &mut EpochHistory, next: EpochHistory) -> Result<()> {
        if let Err(e) = next.write(&*self.disk, &self.dir) {
            self.fence(&e);
            return Err(e);
        }
        *current = next;
        Ok(())
    }

    /// Before a batch of `epoch` is written at `base` (append lock held): refuses an epoch
    /// older than the history's newest, and records a newer one durably, so that the history
    /// is never behind the data.
    fn enter_epoch(&self, history: &mut EpochHistory, epoch: u64, base: u64) -> Result<()> {
        let current = history.latest_epoch();
        if epoch < current {
            return Err(Error::StaleEpoch { epoch, current, offset: base });
        }
        if epoch > current {
            let mut next = history.clone();
            next.record(epoch, base)?;
            self.store_history(history, next)?;
        }
        Ok(())
    }

    /// Writes one encoded frame at the end of the active segment (rolling first when it does
    /// not fit) and publishes the new written end. Called with the append lock held.
    fn write_frame(&self, frame_bytes: &[u8], base: u64, end: u64, max_ts: u64) -> Result<()> {
        let active = self.active();
        let frame_len = frame_bytes.len() as u64;
        let active = if active.remaining_bytes() < frame_len { self.roll(frame_len)? } else { active };
        if let Err(e) = active.append(frame_bytes, base, end, max_ts) {
            let err = Error::from_segment(e);
            self.fence(&err);
            return Err(err);
        }
        self.written_end.store(end, Ordering::Release);
        Ok(())
    }

    /// Writes the consecutive frames `run` of `frames` at the end of the active segment, with
    /// one write when there is more than one (the caller checked they fit), and publishes the
    /// new written end. Called with the append lock held.
    fn write_run(&self, frames: &[u8], run: &[FrameSpan]) -> Result<()> {
        let (Some(first), Some(last)) = (run.first(), run.last()) else { return Ok(()) };
        let bytes = frames.get(first.rel..last.rel + last.len_bytes).unwrap_or_default();
        let end = last.header.end_offset();
        let max_ts = run.iter().map(|s| s.header.max_timestamp_ms).max().unwrap_or(0);
        if run.len() == 1 {
            return self.write_frame(bytes, first.header.base_offset, end, max_ts);
        }
        let starts: Vec<(u64, u64)> = run.iter().map(|s| ((s.rel - first.rel) as u64, s.header.base_offset)).collect();
        if let Err(e) = self.active().append_run(bytes, &starts, end, max_ts) {
            let err = Error::from_segment(e);
            self.fence(&err);
            return Err(err);
        }
        self.written_end.store(end, Ordering::Release);
        Ok(())
    }

    /// After a frame was written (append lock held): stages it into the shared journal when it
    /// is small enough, or marks the segment as needing its own sync; counts it. Returns the
    /// bytes now staged in the journal block.
    fn journal_frame(self: &Arc<Self>, frame_bytes: &[u8], record_count: u64) -> usize {
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.records.fetch_add(record_count, Ordering::Relaxed);
        self.counters.bytes.fetch_add(frame_bytes.len() as u64, Ordering::Relaxed);
        if self.committer.has_journal() && frame_bytes.len() < DIRECT_BATCH_BYTES {
            let generation = self.generation.load(Ordering::Relaxed);
            return self.committer.stage(self, &self.name, generation, frame_bytes);
        }
        self.direct_dirty.store(true, Ordering::SeqCst);
        0
    }

    /// After an append released the append lock: keeps the staged journal block bounded even
    /// when nobody waits for durability, and wakes readers waiting for the log to grow.
    fn appended(self: &Arc<Self>, staged_bytes: usize) {
        if staged_bytes > self.committer.staged_bytes_soft_max() {
            self.request_sync();
            self.committer.try_lead();
        }
        self.notify_readers();
    }

    /// Appends the journal's batches that continue this log, then syncs the segment, so the
    /// journal file holding them may be recycled. Entries of another generation (written
    /// before a suffix truncation) are never replayed; a gap ends the replay, because a batch
    /// after a lost one was never acknowledged as durable.
    fn replay(&self, entries: &[(u64, bytes::Bytes)], generation: u64) -> Result<u64> {
        let _st = self.write.lock();
        let mut replayed = 0;
        for (entry_generation, frame_bytes) in entries {
            if *entry_generation != generation {
                continue;
            }
            let Ok(Some(frame)) = frame::decode(frame_bytes) else { break };
            let header = frame.header;
            let end = self.written_end.load(Ordering::Acquire);
            if header.end_offset() <= end {
                continue;
            }
            if header.base_offset != end {
                break;
            }
            let bytes = frame_bytes.get(..frame.frame_len).unwrap_or_default();
            self.write_frame(bytes, header.base_offset, header.end_offset(), header.max_timestamp_ms)?;
            replayed += 1;
        }
        if replayed > 0 {
            self.active().sync()?;
            self.durable_end.store(self.written_end.load(Ordering::Acquire), Ordering::Release);
        }
        Ok(replayed)
    }

    /// A snapshot of the active segment and the log end, for a journal switch.
    pub(crate) fn segment_target(&self) -> SyncTarget {
        let _st = self.write.lock();
        let segment = self.active();
        SyncTarget {
            end_pos: segment.end_pos(),
            sync_segment: true,
            end_offset: self.written_end.load(Ordering::Acquire),
            segment,
            truncations: self.truncations.load(Ordering::SeqCst),
        }
    }

    fn active(&self) -> Arc<Segment> {
        self.segments.read().last().cloned().expect("a log always has a segment")
    }

    fn check_writable(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed(self.name.clone()));
        }
        if self.fenced.load(Ordering::SeqCst) {
            let reason = self.fence_reason.lock().clone().unwrap_or_default();
            return Err(Error::Fenced { log: self.name.clone(), reason });
        }
        Ok(())
    }

    /// Seals the active segment (synced, index written) and starts a new one that fits at
    /// least `frame_len` bytes. Called with the append lock held.
    fn roll(&self, frame_len: u64) -> Result<Arc<Segment>> {
        let result = (|| {
            let old = self.active();
            let size = self.options.segment_size_bytes.max((SEGMENT_HEADER_BYTES + frame_len).next_multiple_of(4096));
            let base = old.end_offset();
            let replace = old.end_pos() == SEGMENT_HEADER_BYTES;
            let new = if replace {
                // An empty segment too small for this frame: replace it by a larger one.
                replace_empty_segment(&*self.disk, &self.dir, &old, size, self.options.index_interval_bytes)?
            } else {
                old.sync()?;
                old.write_index(&*self.disk)?;
                let new = Segment::create(&*self.disk, &self.dir, base, size, self.options.index_interval_bytes)?;
                new.sync()?;
                self.disk.sync_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
                new
            };
            new.set_direct_writes(self.direct_writes.load(Ordering::Relaxed));
            let new = Arc::new(new);
            let mut segments = self.segments.write();
            if replace {
                segments.pop();
            }
            segments.push(new.clone());
            drop(segments);
            // The old segment was synced whole.
            self.durable_end.fetch_max(base, Ordering::AcqRel);
            self.wake_waiters(base);
            Ok(new)
        })();
        result.inspect_err(|e| self.fence(e))
    }

    pub(crate) fn request_sync(self: &Arc<Self>) -> bool {
        if self.sync_requested.swap(true, Ordering::SeqCst) {
            return true;
        }
        self.committer.request(self.clone())
    }

    fn wait_durable(&self, this: &Arc<LogInner>, end: u64) -> Result<()> {
        let mut requested = false;
        loop {
            if self.durable_end.load(Ordering::Acquire) >= end {
                return Ok(());
            }
            if self.fenced.load(Ordering::SeqCst) {
                let reason = self.fence_reason.lock().clone().unwrap_or_default();
                return Err(Error::Fenced { log: self.name.clone(), reason });
            }
            if self.closed.load(Ordering::SeqCst) {
                return Err(Error::Closed(self.name.clone()));
            }
            if !requested {
                if !this.request_sync() {
                    return Err(Error::Closed(self.name.clone()));
                }
                requested = true;
            }
            // Leader mode: if nobody is committing, commit the group in this thread.
            if self.committer.try_lead() {
                continue;
            }
            {
                let mut waiters = self.waiters.lock();
                if self.durable_end.load(Ordering::Acquire) >= end
                    || self.fenced.load(Ordering::SeqCst)
                    || self.closed.load(Ordering::SeqCst)
                {
                    continue;
                }
                waiters.push((end, std::thread::current()));
            }
            if !self.committer.await_leadership() {
                continue; // the leader finished meanwhile: try to lead
            }
            std::thread::park();
            // A later group may be needed if this batch was written after the snapshot of the
            // group that woke us; ask again (deduplicated by `sync_requested`).
            requested = false;
        }
    }

    /// Called by the committer: what to sync for this log, if anything.
    pub(crate) fn sync_target(&self) -> Option<SyncTarget> {
        self.sync_requested.store(false, Ordering::SeqCst);
        if self.fenced.load(Ordering::SeqCst) || self.closed.load(Ordering::SeqCst) {
            self.wake_all_waiters();
            return None;
        }
        let _st = self.write.lock();
        let end_offset = self.written_end.load(Ordering::Acquire);
        if end_offset <= self.durable_end.load(Ordering::Acquire) {
            return None;
        }
        let segment = self.active();
        let sync_segment = !self.committer.has_journal() || self.direct_dirty.swap(false, Ordering::SeqCst);
        Some(SyncTarget {
            end_pos: segment.end_pos(),
            sync_segment,
            segment,
            end_offset,
            truncations: self.truncations.load(Ordering::SeqCst),
        })
    }

    /// Called by the committer after syncing `target`.
    ///
    /// `synced_segment` says whether the segment itself was synced (rather than the journal),
    /// which is what a checkpoint may claim.
    pub(crate) fn complete_sync(&self, target: SyncTarget, result: std::io::Result<()>, synced_segment: bool) {
        if let Err(e) = result {
            self.fence(&Error::io(target.segment.path(), e));
            return;
        }
        {
            // Under the append lock, so a suffix truncation cannot run between the check and
            // the raise and leave the durable end above the written end.
            let _st = self.write.lock();
            if self.truncations.load(Ordering::SeqCst) != target.truncations {
                return;
            }
            self.durable_end.fetch_max(target.end_offset, Ordering::AcqRel);
        }
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        if synced_segment {
            let mut checkpoint = self.checkpoint.lock();
            if !self.closed.load(Ordering::SeqCst) {
                let generation = self.meta.lock().generation;
                let cp = Checkpoint {
                    generation,
                    segment_base: target.segment.base_offset(),
                    durable_pos: target.end_pos,
                    durable_end: target.end_offset,
                    ..Default::default()
                };
                // A lost checkpoint only makes the next recovery scan more; not fatal.
                let _ = checkpoint.write(cp, false);
            }
        }
        self.wake_waiters(self.durable_end.load(Ordering::Acquire));
        self.notify_readers();
    }

    fn wake_waiters(&self, durable_end: u64) {
        let mut waiters = self.waiters.lock();
        waiters.retain(|(end, thread)| {
            if *end <= durable_end {
                thread.unpark();
                false
            } else {
                true
            }
        });
    }

    fn wake_all_waiters(&self) {
        for (_, thread) in self.waiters.lock().drain(..) {
            thread.unpark();
        }
    }

    pub(crate) fn fence(&self, err: &Error) {
        {
            let mut reason = self.fence_reason.lock();
            if reason.is_none() {
                *reason = Some(err.to_string());
            }
        }
        self.fenced.store(true, Ordering::SeqCst);
        self.wake_all_waiters();
        self.notify_readers();
    }

    fn notify_readers(&self) {
        if self.readers_waiting.load(Ordering::SeqCst) > 0 {
            let _guard = self.grew_lock.lock();
            self.grew.notify_all();
        }
    }
}

fn remove_segment_files(disk: &dyn Disk, segment: &Segment) -> Result<()> {
    let index = segment.index_path();
    if disk.exists(&index) {
        disk.remove(&index).map_err(|e| Error::io(&index, e))?;
    }
    disk.remove(segment.path()).map_err(|e| Error::io(segment.path(), e))
}

/// Finishes the epoch history's part of a reset whose new start is in effect: the history
/// file goes (a missing file is an empty history) durably, and only then the reset's marker,
/// so that no crash leaves the old history without the marker that condemns it.
fn clear_history_then_marker(disk: &dyn Disk, dir: &Path, marker: &Path) -> Result<()> {
    let path = dir.join(EPOCHS_FILE);
    if disk.exists(&path) {
        disk.remove(&path).map_err(|e| Error::io(&path, e))?;
        disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    disk.remove(marker).map_err(|e| Error::io(marker, e))?;
    disk.sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// Suffix of the file that a replacement segment is built in before it is renamed over the
/// segment (`<base:020>.seg.tmp`). Recovery removes a leftover one.
const SEGMENT_TMP_SUFFIX: &str = ".tmp";

/// The temporary file a replacement of the segment at `path` is built in.
fn segment_tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(SEGMENT_TMP_SUFFIX);
    PathBuf::from(tmp)
}

/// Replaces the empty segment `old` by an empty one of `size_bytes` at the same base.
///
/// At every instant, across a power loss, the directory holds a valid segment at that base:
/// the new file is created and synced under a temporary name, renamed over the old one, and
/// the directory is synced. Removing the old file first and creating the new one after (as
/// rolls once did) left no segment file at all, and a log that could not be opened, when power
/// failed in between and the old segment was the log's only one.
fn replace_empty_segment(
    disk: &dyn Disk,
    dir: &Path,
    old: &Segment,
    size_bytes: u64,
    index_interval_bytes: u64,
) -> Result<Segment> {
    let base = old.base_offset();
    assert_eq!(old.end_pos(), SEGMENT_HEADER_BYTES, "replacing a segment that holds frames");
    assert_eq!(old.end_offset(), base, "replacing a segment that holds records");
    let path = old.path().to_path_buf();
    let tmp = segment_tmp_path(&path);
    if disk.exists(&tmp) {
        disk.remove(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    // An index file of the empty segment would describe the replacement just as well; it goes
    // anyway, so that no file describes a segment that no longer exists.
    let index = old.index_path();
    if disk.exists(&index) {
        disk.remove(&index).map_err(|e| Error::io(&index, e))?;
    }
    let file = disk.create(&tmp, size_bytes).map_err(|e| Error::io(&tmp, e))?;
    file.write_at(0, &encode_segment_header(base)).map_err(|e| Error::io(&tmp, e))?;
    file.sync_data().map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    disk.rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    let new = Segment::open(disk, &path, index_interval_bytes)?;
    debug_assert_eq!(new.size_bytes(), size_bytes, "the replacement segment is not the one just built");
    new.install(SEGMENT_HEADER_BYTES, base, 0, Vec::new());
    Ok(new)
}

/// Removes files that replacements of empty segments left behind when a crash came before
/// their rename (`<base:020>.seg.tmp`): they were never part of the log.
fn remove_segment_tmp_files(disk: &dyn Disk, dir: &Path, names: &[String]) -> Result<()> {
    for name in names {
        let Some(stem) = name.strip_suffix(SEGMENT_TMP_SUFFIX) else { continue };
        if parse_file_name(stem, SEGMENT_EXT).is_some() {
            let path = dir.join(name);
            disk.remove(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// True when some batch starts exactly at `offset` (or `offset` is a segment base).
fn is_batch_boundary(segments: &[Arc<Segment>], offset: u64) -> Result<bool> {
    let Some(segment) = segments.iter().rev().find(|s| s.base_offset() <= offset) else { return Ok(false) };
    match frame_pos(segment, offset) {
        Ok(_) => Ok(true),
        Err(Error::NotBatchBoundary { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Position of the frame that starts at `offset` in `segment` (its end when `offset` is the end).
fn frame_pos(segment: &Segment, offset: u64) -> Result<u64> {
    if offset <= segment.base_offset() {
        return Ok(SEGMENT_HEADER_BYTES);
    }
    if offset >= segment.end_offset() {
        return Ok(segment.end_pos());
    }
    let (pos, from) = segment.seek(offset);
    let report = segment.scan(pos, from, Some(segment.end_pos()), false)?;
    // Walk again, stopping at the frame that starts at `offset`.
    let bytes = segment.bytes(pos, report.end_pos)?;
    let (mut at, mut next) = (pos, from);
    while next < offset {
        let rel = (at - pos) as usize;
        let Ok(Some((header, len))) = frame::decode_header_unverified(bytes.get(rel..).unwrap_or_default()) else {
            break;
        };
        at += len as u64;
        next = header.end_offset();
    }
    if next != offset {
        return Err(Error::NotBatchBoundary { offset });
    }
    Ok(at)
}

/// Removes every record at or after `offset`: later segments go, newest first; the segment
/// holding `offset` loses its index file and has its tail overwritten with zeros.
fn cut_suffix(disk: &dyn Disk, dir: &Path, segments: &mut Vec<Arc<Segment>>, offset: u64) -> Result<()> {
    while segments.len() > 1 && segments.last().is_some_and(|s| s.base_offset() >= offset) {
        if let Some(segment) = segments.pop() {
            remove_segment_files(disk, &segment)?;
        }
    }
    let last = segments.last().cloned().expect("at least one segment");
    let cut_pos = frame_pos(&last, offset)?;
    let cut_offset = offset.clamp(last.base_offset(), last.end_offset());
    let index = last.index_path();
    if disk.exists(&index) {
        disk.remove(&index).map_err(|e| Error::io(&index, e))?;
    }
    disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    last.zero_tail(cut_pos)?;
    last.sync()?;
    let report = last.scan(SEGMENT_HEADER_BYTES, last.base_offset(), Some(cut_pos), false)?;
    last.install(cut_pos, cut_offset, report.max_timestamp_ms, report.entries);
    Ok(())
}

/// How many of the oldest segments (`bases`, sorted) hold only records below `start_offset`,
/// which `log.meta` says are gone, so that recovery removes them.
///
/// A segment is below the start when the next one begins at or below it (a prefix truncation,
/// or a reset, that a crash interrupted). The last segment is one only when it begins below the
/// start: the log start is always a segment base, so that happens only when a reset lost power
/// before its first segment, at the start, was durable; every record the old segment holds is
/// below the start, because a reset never starts below the written end.
pub(crate) fn segments_below_start(bases: &[u64], start_offset: u64) -> usize {
    let mut count = 0;
    while bases.get(count + 1).is_some_and(|base| *base <= start_offset) {
        count += 1;
    }
    if count + 1 == bases.len() && bases.get(count).is_some_and(|base| *base < start_offset) {
        count += 1;
    }
    count
}

fn corrupt(file: PathBuf, pos: u64, reason: CorruptReason) -> Error {
    Error::Segment(tern_segment::Error::Corrupt { file, pos, reason })
}

/// Whether the lone first segment of a log without a meta is what a creation that stopped
/// part way left: a file too short for its header, a header not written yet (zeros), or a
/// valid header and no frame. Anything else is data, and a missing meta then is corruption,
/// never a new log.
pub(crate) fn creation_interrupted(disk: &dyn Disk, dir: &Path, index_interval_bytes: u64) -> Result<bool> {
    let path = dir.join(tern_segment::segment::segment_file_name(0));
    let segment = match Segment::open(disk, &path, index_interval_bytes) {
        Ok(segment) => segment,
        Err(tern_segment::Error::Corrupt { reason: CorruptReason::Truncated { .. }, .. }) => return Ok(true),
        Err(tern_segment::Error::Corrupt { reason: CorruptReason::Magic, .. }) => {
            let file = disk.open(&path).map_err(|e| Error::io(&path, e))?;
            let header = file.read_copy(0, SEGMENT_HEADER_BYTES).map_err(|e| Error::io(&path, e))?;
            return Ok(header.iter().all(|b| *b == 0));
        }
        Err(e) => return Err(Error::from_segment(e)),
    };
    let report = segment.scan(SEGMENT_HEADER_BYTES, 0, None, true).map_err(Error::from_segment)?;
    Ok(report.frame_count == 0 && report.problem.is_none())
}

/// What recovery returns: the segments, the meta, what it found, the generation that journal
/// entries to replay must carry, and the epoch history.
type RecoveredLog = (Vec<Arc<Segment>>, Meta, Recovered, u64, EpochHistory);

/// Opens the segments of `dir`, finishes interrupted truncations and resets, finds the end,
/// and loads the epoch history.
fn recover(disk: &dyn Disk, dir: &Path, options: &LogOptions) -> Result<RecoveredLog> {
    let names = disk.list(dir).map_err(|e| Error::io(dir, e))?;
    let mut bases: Vec<u64> = names.iter().filter_map(|n| parse_file_name(n, SEGMENT_EXT)).collect();
    bases.sort_unstable();
    remove_segment_tmp_files(disk, dir, &names)?;
    let Some(mut meta) = Meta::read(disk, dir)? else {
        if bases == [0] && creation_interrupted(disk, dir, options.index_interval_bytes)? {
            // The first segment of a new log, and the log's creation stopped before the meta
            // was written: nothing was ever appended to it (appends start after the meta is
            // durable). Create the log afresh.
            let path = dir.join(tern_segment::segment::segment_file_name(0));
            disk.remove(&path).map_err(|e| Error::io(&path, e))?;
        } else if !bases.is_empty() {
            return Err(corrupt(dir.join(crate::meta::META_FILE), 0, CorruptReason::Field("meta file missing")));
        }
        // A new log.
        let segment = Segment::create(disk, dir, 0, options.segment_size_bytes, options.index_interval_bytes)?;
        segment.sync()?;
        let meta = Meta { generation: 1, start_offset: 0, truncate_to: NO_TRUNCATION };
        meta.write(disk, dir)?; // syncs the directory, making the segment's name durable too
        let recovered = Recovered { clean: true, ..Default::default() };
        return Ok((vec![Arc::new(segment)], meta, recovered, 0, EpochHistory::new()));
    };
    let replay_generation = meta.generation;
    // A reset that must clear the epoch history left its marker: the reset took effect if the
    // meta has its start (a reset never starts below the old written end, so the old log
    // starts there only if it was already empty there), and then the history goes with the
    // records it described; otherwise the reset never happened, and the marker just goes.
    let mut marker_removed = false;
    for reset_start in names.iter().filter_map(|name| epochs::parse_reset_marker(name)) {
        let marker = dir.join(epochs::reset_marker_name(reset_start));
        if meta.start_offset >= reset_start {
            clear_history_then_marker(disk, dir, &marker)?;
        } else {
            disk.remove(&marker).map_err(|e| Error::io(&marker, e))?;
            marker_removed = true;
        }
    }
    if marker_removed {
        disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut history = EpochHistory::read(disk, dir)?;
    // Finish a prefix truncation or a reset that a crash interrupted.
    let below_start = segments_below_start(&bases, meta.start_offset);
    if below_start > 0 && below_start == bases.len() {
        // A reset lost power before the name of its first segment was durable. Create that
        // segment before removing the old ones, so the directory always holds a segment.
        let segment =
            Segment::create(disk, dir, meta.start_offset, options.segment_size_bytes, options.index_interval_bytes)?;
        segment.sync()?;
        disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
        bases.push(meta.start_offset);
    }
    let mut removed = false;
    for _ in 0..below_start {
        let base = bases.remove(0);
        let path = dir.join(tern_segment::segment::segment_file_name(base));
        disk.remove(&path).map_err(|e| Error::io(&path, e))?;
        let index = path.with_extension(tern_segment::segment::INDEX_EXT);
        if disk.exists(&index) {
            disk.remove(&index).map_err(|e| Error::io(&index, e))?;
        }
        removed = true;
    }
    if removed {
        disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    let Some(&last_base) = bases.last() else {
        return Err(corrupt(dir.to_path_buf(), 0, CorruptReason::Field("log has no segment files")));
    };
    let mut recovered = Recovered::default();
    let mut segments = Vec::with_capacity(bases.len());
    let mut expected = bases.first().copied().unwrap_or(0);
    for &base in &bases {
        let path = dir.join(tern_segment::segment::segment_file_name(base));
        let segment = Segment::open(disk, &path, options.index_interval_bytes)?;
        if base != expected {
            let reason = CorruptReason::Discontinuity { expected, found: base };
            return Err(corrupt(path, 0, reason));
        }
        if base != last_base {
            // Sealed: synced whole at roll. Trust its index file, or verify it whole.
            match segment.read_index(disk) {
                Ok(Some(index)) => {
                    segment.install(index.end_pos, index.end_offset, index.max_timestamp_ms, index.entries)
                }
                Ok(None) | Err(tern_segment::Error::Corrupt { .. }) => {
                    let report = segment.scan(SEGMENT_HEADER_BYTES, base, None, true)?;
                    recovered.scanned_bytes += report.end_pos - SEGMENT_HEADER_BYTES;
                    if let Some((pos, reason)) = report.problem {
                        return Err(corrupt(path, pos, reason));
                    }
                    // A sealed segment was synced whole and only zeros follow its last frame
                    // (torn tails are zeroed before a segment is sealed). Data after a zero
                    // length means a damaged length field, not the end: without this check the
                    // frames after it are dropped, and the error blames the next segment.
                    let rest = segment.bytes(report.end_pos, segment.size_bytes())?;
                    if rest.iter().any(|b| *b != 0) {
                        return Err(corrupt(path, report.end_pos, CorruptReason::TrailingGarbage));
                    }
                    segment.install(report.end_pos, report.end_offset, report.max_timestamp_ms, report.entries);
                }
                Err(e) => return Err(e.into()),
            }
            if segment.end_offset() == base {
                return Err(corrupt(path, SEGMENT_HEADER_BYTES, CorruptReason::Field("sealed segment is empty")));
            }
        }
        expected = segment.end_offset();
        segments.push(Arc::new(segment));
    }
    let last = segments.last().cloned().expect("checked above");
    let checkpoint = CheckpointWriter::read(disk, dir, meta.generation)?;
    recover_last(disk, &last, checkpoint, &mut recovered)?;
    if meta.truncate_to != NO_TRUNCATION {
        cut_suffix(disk, dir, &mut segments, meta.truncate_to)?;
        // As `truncate_suffix` does: the epochs of the cut batches go, durably, while the
        // truncation is still recorded as pending.
        if history.truncate_from(meta.truncate_to) {
            history.write(disk, dir)?;
        }
        meta.truncate_to = NO_TRUNCATION;
        recovered.clean = false;
    }
    meta.generation += 1;
    meta.write(disk, dir)?;
    Ok((segments, meta, recovered, replay_generation, history))
}

/// Finds the end of the last segment: trusted after a clean close, otherwise walked up to the
/// checkpointed durable point and verified frame by frame after it, cutting a torn tail.
fn recover_last(
    disk: &dyn Disk,
    last: &Segment,
    checkpoint: Option<Checkpoint>,
    recovered: &mut Recovered,
) -> Result<()> {
    let path = last.path().to_path_buf();
    let base = last.base_offset();
    if let Some(cp) = checkpoint {
        if cp.segment_base > base {
            let missing = last.path().with_file_name(tern_segment::segment::segment_file_name(cp.segment_base));
            return Err(corrupt(missing, 0, CorruptReason::Field("a synced segment is missing")));
        }
        if cp.clean && cp.segment_base == base {
            if let Ok(Some(index)) = last.read_index(disk) {
                if index.end_pos == cp.durable_pos && index.end_offset == cp.durable_end {
                    last.install(index.end_pos, index.end_offset, index.max_timestamp_ms, index.entries);
                    recovered.clean = true;
                    return Ok(());
                }
            }
        }
    }
    let claim = checkpoint.filter(|cp| cp.segment_base == base);
    let claim_pos = claim.map_or(SEGMENT_HEADER_BYTES, |cp| cp.durable_pos.max(SEGMENT_HEADER_BYTES));
    if claim_pos > last.size_bytes() {
        return Err(corrupt(path, claim_pos, CorruptReason::Field("checkpoint points past the segment")));
    }
    // The checkpointed region was verified when it was written, but a media error may have
    // damaged it since. Verify every checksum here too: an unverified walk only sees damage
    // that breaks the chain of frame lengths, so a flipped bit in a record or a timestamp
    // would let the log open and fail only later, at a read, instead of at open as promised.
    // The cost is bounded by one segment and paid only after a crash.
    let walk = last.scan(SEGMENT_HEADER_BYTES, base, Some(claim_pos), true)?;
    if let Some((pos, reason)) = walk.problem {
        return Err(corrupt(path, pos, reason));
    }
    if walk.end_pos != claim_pos || claim.is_some_and(|cp| cp.durable_end != walk.end_offset) {
        return Err(corrupt(path, walk.end_pos, CorruptReason::Truncated { needed_bytes: claim_pos - walk.end_pos }));
    }
    // After it, every frame is verified; the first bad one starts a torn tail.
    let tail = last.scan(claim_pos, walk.end_offset, None, true)?;
    recovered.scanned_bytes += tail.end_pos - SEGMENT_HEADER_BYTES;
    if let Some(nonzero_end) = last.nonzero_end(tail.end_pos)? {
        recovered.torn_tail_bytes = nonzero_end - tail.end_pos;
        last.zero_tail(tail.end_pos)?;
    }
    // What was found may sit only in the page cache (the process died, the machine did not):
    // sync it before calling it durable.
    last.sync()?;
    let mut entries = walk.entries;
    let walked_pos = entries.last().map_or(0, |e| e.pos);
    entries.extend(tail.entries.into_iter().filter(|e| e.pos > walked_pos));
    last.install(tail.end_pos, tail.end_offset, walk.max_timestamp_ms.max(tail.max_timestamp_ms), entries);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::segments_below_start;

    #[test]
    fn recovery_removes_exactly_the_segments_below_the_log_start() {
        // In step: the start is the first base.
        assert_eq!(segments_below_start(&[0, 10, 20], 0), 0);
        // A prefix truncation or a reset cut short: the next segment begins at or below it.
        assert_eq!(segments_below_start(&[0, 10, 20], 10), 1);
        assert_eq!(segments_below_start(&[0, 10, 20], 15), 1);
        assert_eq!(segments_below_start(&[0, 10, 20, 500], 500), 3);
        // A reset cut short before its first segment was durable: nothing is at the start.
        assert_eq!(segments_below_start(&[0, 10, 20], 500), 3);
        assert_eq!(segments_below_start(&[20], 500), 1);
        // The last segment at the start stays, as does a log with no segment at all.
        assert_eq!(segments_below_start(&[500], 500), 0);
        assert_eq!(segments_below_start(&[], 500), 0);
    }
}
