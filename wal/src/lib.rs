//! A Tern log: a directory of segment files with dense record offsets, appended through a
//! group commit shared by many logs, recovered after crashes without trusting a torn tail,
//! and truncated at either end for retention and replication.
#![warn(missing_docs)]

pub mod committer;
pub mod epochs;
pub mod error;
pub mod journal;
pub mod log;
pub mod meta;
pub mod read;
pub mod state;
pub mod verify;

pub use committer::{CommitMode, Committer, CommitterStats};
pub use error::{Error, Result};
pub use journal::JournalOptions;
pub use log::{
    now_ms, AppendOptions, Appended, Durability, Log, LogOptions, LogStats, Recovered, Visibility,
    QUARANTINE_FILE_PREFIX,
};
pub use read::{BatchRef, ReadRecord, Reader};
pub use tern_segment::frame::Record;

#[cfg(feature = "failpoints")]
pub mod failpoints;

/// A named pause point (`tern_wal::failpoints`, with the `failpoints` feature): a test can hold
/// a thread here to make a race happen on purpose. Compiled to nothing without the feature.
macro_rules! fail_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        crate::failpoints::hit($name);
    };
}
pub(crate) use fail_point;
