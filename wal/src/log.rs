//! A log: a directory of segments with dense record offsets, appended through group commit.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use tern_segment::frame::{self, BatchMeta, Record};
use tern_segment::segment::{encode_segment_header, parse_file_name, SEGMENT_EXT, SEGMENT_HEADER_BYTES};
use tern_segment::{CorruptReason, Disk, DiskFile, Segment};

use crate::committer::Committer;
use crate::epochs::{self, EpochHistory, EPOCHS_FILE};
use crate::error::{Error, Result};
use crate::journal::DIRECT_BATCH_BYTES;
use crate::meta::{Checkpoint, CheckpointWriter, Claim, Meta, NO_TRUNCATION};

mod commit;
mod recovery;
mod roll;
mod truncate;

use commit::{DurableCallback, Waiter};
pub(crate) use recovery::{blank_header, creation_interrupted, durable_claim, plan_segments, segments_below_start};
use recovery::{corrupt, recover, RecoveredLog};
pub(crate) use roll::create_segment_file;
use roll::{copy_segment_prefix, SEGMENT_TMP_SUFFIX};
use truncate::{clear_history_then_marker, frame_pos};

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
    /// How long a checkpoint slot written after a segment sync may stay unsynced while syncs
    /// go on (it is always synced at a clean close and at a journal switch): after a power
    /// loss, records synced within this window are known to be intact only back to an older
    /// claim. Default [`CHECKPOINT_SYNC_INTERVAL_MS`](crate::meta::CHECKPOINT_SYNC_INTERVAL_MS);
    /// at most one hour.
    pub checkpoint_sync_interval_ms: u64,
}

/// The longest [`LogOptions::checkpoint_sync_interval_ms`] accepted: one hour.
pub const CHECKPOINT_SYNC_INTERVAL_MS_MAX: u64 = 3_600_000;

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size_bytes: SEGMENT_BYTES_DEFAULT,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            record_bytes_max: RECORD_BYTES_DEFAULT,
            checkpoint_sync_interval_ms: crate::meta::CHECKPOINT_SYNC_INTERVAL_MS,
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
        if self.checkpoint_sync_interval_ms > CHECKPOINT_SYNC_INTERVAL_MS_MAX {
            return invalid(format!(
                "checkpoint_sync_interval_ms {} is outside 0..={CHECKPOINT_SYNC_INTERVAL_MS_MAX}",
                self.checkpoint_sync_interval_ms
            ));
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
    /// A control batch ([`tern_segment::frame::FLAG_CONTROL`]): records the log writes for
    /// itself, such as a leader's record at the start of its epoch. They take offsets and are
    /// replicated and committed like any other, but [`Log::read`] skips them. A control batch
    /// has no producer.
    pub control: bool,
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
    /// The meta generation when the snapshot was taken: a checkpoint slot claims it.
    generation: u64,
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
    /// Records below this are durable in the segments themselves, not only in the journal:
    /// what a checkpoint may claim, and what must hold before a generation change makes the
    /// journal's copies of them stale.
    segment_synced_end: AtomicU64,
    /// Suffix truncations so far (while open).
    truncations: AtomicU64,
    /// Recent suffix truncations `(count after it, offset)`, for waiters appended before them.
    cuts: Mutex<Vec<(u64, u64)>>,
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
    /// Waiters for durability, each with the end it waits for.
    waiters: Mutex<Vec<(u64, Waiter)>>,
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
        let RecoveredLog { segments, meta, mut recovered, history } = recover(&*disk, dir, &options)?;
        let last = segments.last().cloned().expect("recovery leaves at least one segment");
        let end = last.end_offset();
        let checkpoint = CheckpointWriter::open(&*disk, dir)?
            .with_sync_interval(Duration::from_millis(options.checkpoint_sync_interval_ms));
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
            segment_synced_end: AtomicU64::new(end),
            truncations: AtomicU64::new(0),
            cuts: Mutex::new(Vec::new()),
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
        // The journal's batches go into the segment and are synced there (`replay`) before the
        // generation changes below: from then on their journal entries are stale.
        recovered.replayed_batches = inner.replay(&replay, meta.generation)?;
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
        // A new generation, recorded with a claim for everything recovered (synced by
        // recovery and replay): after any later crash, damage below it is corruption.
        let active = inner.active();
        let claim = Claim { segment_base: active.base_offset(), pos: active.end_pos(), end: active.end_offset() };
        let meta = inner.update_meta(|meta| {
            meta.generation += 1;
            meta.truncate_to = NO_TRUNCATION;
            meta.last_base = Some(claim.segment_base);
            meta.claim = Some(claim);
        })?;
        inner.generation.store(meta.generation, Ordering::SeqCst);
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
            return Ok(Appended { log: self.clone(), offsets: end..end, truncations: 0 });
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
        let meta = BatchMeta {
            base_offset: base,
            epoch,
            producer_id: options.producer_id,
            sequence: options.sequence,
            flags: if options.control { frame::FLAG_CONTROL } else { 0 },
        };
        st.buf.clear();
        let frame_len = frame::encode(&mut st.buf, &meta, records).map_err(|e| Error::Invalid(e.to_string()))?;
        inner.enter_epoch(&mut st.history, epoch, base)?;
        let end = base + records.len() as u64;
        let max_ts = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0);
        inner.write_frame(&st.buf, base, end, max_ts)?;
        debug_assert_eq!(st.buf.len(), frame_len);
        let staged_bytes = self.inner.journal_frame(&st.buf, records.len() as u64);
        let truncations = inner.truncations.load(Ordering::SeqCst);
        drop(guard);
        self.inner.appended(staged_bytes);
        Ok(Appended { log: self.clone(), offsets: base..end, truncations })
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
        let truncations = inner.truncations.load(Ordering::SeqCst);
        drop(guard);
        self.inner.appended(staged_bytes);
        Ok(Appended { log: self.clone(), offsets: start..end, truncations })
    }

    /// Makes everything written so far durable and waits for it.
    ///
    /// # Errors
    /// [`Error::Fenced`] if the sync failed.
    pub fn sync(&self) -> Result<()> {
        let (end, truncations) = {
            let _st = self.inner.write.lock();
            (self.written_end(), self.inner.truncations.load(Ordering::SeqCst))
        };
        self.inner.wait_durable(&self.inner, end, truncations)
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

    /// Syncs everything, writes the index of the last segment and a clean checkpoint, so the
    /// next open needs no scan. Appends fail with [`Error::Closed`] afterwards.
    ///
    /// # Errors
    /// I/O errors; [`Error::Fenced`] if the final sync failed, or if the log was fenced before
    /// (it is closed then, but not cleanly: the next open recovers it).
    pub fn close(&self) -> Result<()> {
        let inner = &self.inner;
        let _st = inner.write.lock();
        if inner.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut checkpoint = inner.checkpoint.lock();
        inner.closed.store(true, Ordering::SeqCst);
        inner.notify_readers();
        if let Err(e) = inner.check_not_fenced() {
            // Closed, but not cleanly: what the failed sync was to persist may be gone.
            inner.wake_all_waiters();
            return Err(e);
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
        inner.segment_synced_end.fetch_max(end, Ordering::AcqRel);
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

    /// Verifies every frame of the last segment (checksums and offset continuity), the one
    /// appends continue. Open trusts it without reading it after a clean close, as it trusts
    /// sealed segments by their index files; a tool about to append to a log it did not write
    /// can ask first, so that it never adds records after damage that a repair would remove
    /// with them.
    ///
    /// # Errors
    /// [`tern_segment::Error::Corrupt`] (inside [`Error::Segment`]) naming file and byte of the
    /// first damaged frame; I/O errors.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use tern_wal::{Committer, Durability, Log, LogOptions};
    /// let dir = tempfile::tempdir()?;
    /// let disk: Arc<dyn tern_segment::Disk> = Arc::new(tern_segment::OsDisk::new());
    /// let log = Log::open(disk.clone(), dir.path(), "orders", LogOptions::default(), Committer::start(disk), true)?;
    /// log.append(&[b"a"], Durability::Local)?;
    /// log.check_tail()?;
    /// # Ok(()) }
    /// ```
    pub fn check_tail(&self) -> Result<()> {
        let last = self.inner.active();
        let report = last.scan(SEGMENT_HEADER_BYTES, last.base_offset(), Some(last.end_pos()), true)?;
        if let Some((pos, reason)) = report.problem {
            return Err(corrupt(last.path().to_path_buf(), pos, reason));
        }
        if report.end_offset != last.end_offset() {
            let reason = CorruptReason::Discontinuity { expected: last.end_offset(), found: report.end_offset };
            return Err(corrupt(last.path().to_path_buf(), report.end_pos, reason));
        }
        Ok(())
    }
}

/// Offsets of an append, and a handle to wait until they are durable.
#[derive(Debug)]
#[must_use = "an append is not durable until waited for"]
pub struct Appended {
    log: Log,
    /// Offsets given to the batch's records.
    pub offsets: Range<u64>,
    /// The log's suffix truncation count when the batch was written.
    truncations: u64,
}

impl Appended {
    /// Waits until the batch is as durable as `durability` asks and returns its offsets.
    ///
    /// # Errors
    /// [`Error::Fenced`] if the sync covering this batch failed; [`Error::Truncated`] if a
    /// suffix truncation removed the batch before it was durable.
    pub fn wait(self, durability: Durability) -> Result<Range<u64>> {
        if durability == Durability::Local && !self.offsets.is_empty() {
            let inner = &self.log.inner;
            inner.wait_durable(&inner.clone(), self.offsets.end, self.truncations)?;
        }
        Ok(self.offsets)
    }

    /// Calls `callback` once the batch is durable on the local disk, or once that can no
    /// longer happen, with what [`Appended::wait`] would have returned for
    /// [`Durability::Local`]: the caller does not block (an async log store hands the result
    /// to its runtime this way).
    ///
    /// The callback runs on the thread that completes the covering sync, or that fails or
    /// closes the log, possibly while the log's append lock is held: it must be quick and
    /// must not call into this log (send the result somewhere instead). It may also run
    /// before this returns, when the batch is already durable or the log already failed.
    ///
    /// With [`CommitMode::Thread`](crate::CommitMode::Thread) the committer's thread syncs.
    /// With [`CommitMode::Leader`](crate::CommitMode::Leader) the group is committed by a
    /// writer that waits, and when none does, by the caller of this method (which then blocks
    /// for that one sync) or by the group's leader, which goes on leading while only callbacks
    /// are queued.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use tern_wal::{AppendOptions, CommitMode, Committer, Log, LogOptions, Record};
    /// let dir = tempfile::tempdir()?;
    /// let disk: Arc<dyn tern_segment::Disk> = Arc::new(tern_segment::OsDisk::new());
    /// let committer = Committer::start_with(disk.clone(), None, CommitMode::Thread)?;
    /// let log = Log::open(disk, dir.path(), "raft", LogOptions::default(), committer.clone(), true)?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let appended = log.append_records(&[Record::new(b"entry", 0)], AppendOptions::default())?;
    /// appended.on_durable(move |result| {
    ///     let _ = tx.send(result);
    /// });
    /// assert_eq!(rx.recv()??, 0..1);
    /// assert_eq!(log.durable_end(), 1);
    /// log.close()?;
    /// committer.stop();
    /// # Ok(()) }
    /// ```
    pub fn on_durable<F>(self, callback: F)
    where
        F: FnOnce(Result<Range<u64>>) + Send + 'static,
    {
        if self.offsets.is_empty() {
            return callback(Ok(self.offsets));
        }
        let inner = self.log.inner.clone();
        let offsets = self.offsets.clone();
        let call: DurableCallback = Box::new(move |result| callback(result.map(|()| offsets)));
        inner.notify_durable(self.offsets.end, self.truncations, call);
    }
}

impl LogInner {
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

    fn notify_readers(&self) {
        if self.readers_waiting.load(Ordering::SeqCst) > 0 {
            let _guard = self.grew_lock.lock();
            self.grew.notify_all();
        }
    }
}
