//! Errors of the log layer.

use std::path::PathBuf;

/// An error from a log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O failure or corrupt bytes, passed up unchanged from the segment layer.
    #[error(transparent)]
    Segment(tern_segment::Error),
    /// An earlier write or sync failed; the log refuses appends until it is reopened, because
    /// the kernel may have dropped the dirty pages that the failed sync was to persist.
    #[error("log {log} fenced after a failed write or sync ({reason}); reopen it to continue")]
    Fenced {
        /// Log name.
        log: String,
        /// The failure that fenced the log.
        reason: String,
    },
    /// Records being waited for were removed by [`crate::Log::truncate_suffix`] (or
    /// [`crate::Log::truncate_suffix_to_quarantine`]) before they became durable. Records
    /// written at those offsets afterwards are other records: the append did not take effect.
    #[error("log {log}: records below offset {end} were cut at offset {cut} by a suffix truncation before they became durable")]
    Truncated {
        /// Log name.
        log: String,
        /// One past the last record waited for.
        end: u64,
        /// Where the log was cut.
        cut: u64,
    },
    /// The shared journal is damaged where it may hold acknowledged records: a file that
    /// cannot be used while the journal was in use, or a damaged block before valid ones.
    #[error(
        "journal file {} is damaged at byte {pos}: {reason}; records acknowledged through it may be \
         missing (`tern repair --journal` rebuilds it from what can be read)",
        .file.display()
    )]
    JournalDamaged {
        /// The damaged file.
        file: PathBuf,
        /// Byte position of the damage.
        pos: u64,
        /// What is wrong.
        reason: String,
    },
    /// The disk is full. What was durable stays readable.
    #[error("disk full while writing {}", .file.display())]
    DiskFull {
        /// The file being written or created.
        file: PathBuf,
    },
    /// A record exceeds the configured maximum record size.
    #[error("record of {len_bytes} bytes exceeds the {limit_bytes}-byte maximum record size")]
    RecordTooLarge {
        /// Size of the record (key and value).
        len_bytes: u64,
        /// Configured maximum.
        limit_bytes: u64,
    },
    /// An offset outside the log's range.
    #[error("offset {offset} is outside the log's range {start}..{end}")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: u64,
        /// First offset the log holds.
        start: u64,
        /// One past the last offset the log holds.
        end: u64,
    },
    /// `truncate_suffix` was asked to cut inside a batch; batches are atomic.
    #[error("offset {offset} is inside a batch; truncate at a batch boundary")]
    NotBatchBoundary {
        /// The offset asked for.
        offset: u64,
    },
    /// [`crate::Log::reset`] was asked for a start below the written end: offsets are never
    /// reused, so the records there could not be renumbered.
    #[error("cannot reset the log to offset {offset}: it has written records up to {end}")]
    ResetBelowEnd {
        /// The start asked for.
        offset: u64,
        /// One past the last offset written.
        end: u64,
    },
    /// [`crate::Log::begin_epoch`] was asked for an epoch that is not after the log's current
    /// epoch: epochs only move forward.
    #[error("cannot begin epoch {epoch}: the log is already at epoch {current}")]
    EpochNotNewer {
        /// The epoch asked for.
        epoch: u64,
        /// The log's current epoch ([`crate::Log::epoch`]).
        current: u64,
    },
    /// A batch carries an epoch older than the log's current epoch: a stale leader wrote it.
    /// Nothing of the append was written.
    #[error("batch at offset {offset} has epoch {epoch}, older than the log's epoch {current}: from a stale leader")]
    StaleEpoch {
        /// The batch's epoch.
        epoch: u64,
        /// The log's current epoch ([`crate::Log::epoch`]).
        current: u64,
        /// The offset the batch was to start at.
        offset: u64,
    },
    /// An invalid argument or configuration value.
    #[error("{0}")]
    Invalid(String),
    /// The log was closed.
    #[error("log {0} is closed")]
    Closed(String),
}

impl Error {
    /// Maps an I/O error on `file` to [`Error::DiskFull`] or [`Error::Segment`].
    pub fn io(file: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let file = file.into();
        if tern_segment::error::is_disk_full(&source) {
            return Error::DiskFull { file };
        }
        Error::Segment(tern_segment::Error::Io { file, source })
    }

    /// Maps a segment error, turning ENOSPC into [`Error::DiskFull`].
    pub fn from_segment(err: tern_segment::Error) -> Self {
        match err {
            tern_segment::Error::Io { file, source } => Error::io(file, source),
            other => Error::Segment(other),
        }
    }

    /// True for corrupt data (as opposed to I/O failures or misuse).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Segment(tern_segment::Error::Corrupt { .. }))
    }
}

impl From<tern_segment::Error> for Error {
    fn from(err: tern_segment::Error) -> Self {
        Error::from_segment(err)
    }
}

/// Result alias of the log layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
