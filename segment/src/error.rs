//! Errors of the segment layer.
//!
//! [`Error::Corrupt`] is kept apart from [`Error::Io`]: a failing disk and lying bytes need
//! different operator actions. The reason is an enum so tests and tools can match on it.

use std::io;
use std::path::PathBuf;

/// An error from the segment layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused an operation on `file`.
    #[error("I/O error on {}: {source}", .file.display())]
    Io {
        /// The file (or directory) the operation was on.
        file: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// Bytes on disk do not form what the format promises.
    #[error("corrupt data in {} at byte {pos}: {reason}", .file.display())]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte position of the damaged structure (a frame's first byte, for frames).
        pos: u64,
        /// What is wrong.
        reason: CorruptReason,
    },
}

impl Error {
    /// Wraps an I/O error with the file it happened on.
    pub fn io(file: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io { file: file.into(), source }
    }

    /// True when the error is the disk running out of space (ENOSPC).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::Io { source, .. } if is_disk_full(source))
    }
}

/// True when `err` means the disk is full (ENOSPC).
pub fn is_disk_full(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ENOSPC) || err.kind() == io::ErrorKind::StorageFull
}

/// Why a structure read from disk (or the network) was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CorruptReason {
    /// The stored checksum does not match the bytes.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Checksum found in the bytes.
        stored: u32,
        /// Checksum computed over the bytes.
        computed: u32,
    },
    /// A length field exceeds the format limit.
    #[error("frame of {len_bytes} bytes exceeds the {limit_bytes}-byte limit")]
    FrameTooLong {
        /// Length found.
        len_bytes: u64,
        /// Format limit.
        limit_bytes: u32,
    },
    /// A length field is below the smallest valid value.
    #[error("frame of {len_bytes} bytes is shorter than a batch header")]
    FrameTooShort {
        /// Length found.
        len_bytes: u64,
    },
    /// The structure runs past the end of the available bytes.
    #[error("{needed_bytes} bytes missing")]
    Truncated {
        /// How many more bytes would have been needed.
        needed_bytes: u64,
    },
    /// A format or version field holds a value this build does not know.
    #[error("unsupported format version {found}")]
    Version {
        /// Version found.
        found: u32,
    },
    /// A file does not start with the expected magic bytes.
    #[error("bad magic bytes")]
    Magic,
    /// The records inside a batch do not add up to its declared length or count.
    #[error("records do not match the batch header ({0})")]
    Records(&'static str),
    /// A batch does not carry the offset that must come next.
    #[error("batch starts at offset {found}, expected {expected}")]
    Discontinuity {
        /// Offset that must come next.
        expected: u64,
        /// Offset the batch claims.
        found: u64,
    },
    /// A field holds a value the format forbids.
    #[error("invalid field: {0}")]
    Field(&'static str),
    /// Non-zero bytes follow the end of the data, where only zeros may be.
    #[error("unexpected bytes after the end of the data")]
    TrailingGarbage,
}

/// Result alias of the segment layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
