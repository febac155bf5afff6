//! Errors of the engine.

use std::path::PathBuf;

/// An error from the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error from a log (I/O, corrupt data, fencing, limits).
    #[error(transparent)]
    Wal(#[from] tern_wal::Error),
    /// Another process holds the engine directory.
    #[error("{} is in use by another process (lock file {})", .dir.display(), .lock.display())]
    Locked {
        /// The engine directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// A log name that is empty, too long, or could escape the engine directory.
    #[error("invalid log name {name:?}: {why}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A configuration value out of bounds.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A log or directory that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// An I/O error outside any log.
    #[error("I/O error on {}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
