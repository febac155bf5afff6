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
pub mod verify;

pub use committer::{CommitMode, Committer, CommitterStats};
pub use error::{Error, Result};
pub use journal::JournalOptions;
pub use log::{now_ms, AppendOptions, Appended, Durability, Log, LogOptions, LogStats, Recovered, Visibility};
pub use read::{BatchRef, ReadRecord, Reader};
pub use tern_segment::frame::Record;

/// A named failpoint (the `fail` crate): a pause or fault that a test turns on to make a race
/// happen on purpose. Compiled to nothing without the `failpoints` feature.
macro_rules! fail_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}
pub(crate) use fail_point;
