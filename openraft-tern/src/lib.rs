//! [openraft](https://docs.rs/openraft/0.9) storage on a Tern log: a [`LogStore`] that keeps
//! the Raft log in a `tern_wal::Log` (one batch frame per entry, group commit, checksums,
//! recovery that cuts a torn tail) and its vote and last purged entry in a two-slot state file,
//! and a [`StateMachineStore`] that applies entries to an [`Application`] and keeps its
//! snapshots in a checksummed file.
//!
//! It passes openraft's own storage test suite (`openraft::testing::Suite`, run by this
//! crate's `cargo test`). Tern's controller keeps its Raft log here; any openraft application
//! may do the same:
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use openraft_tern::{Application, LogStore, StateMachineStore};
//! use serde::{Deserialize, Serialize};
//! use std::io::Cursor; // named by `declare_raft_types!`
//!
//! openraft::declare_raft_types!(pub Config: D = String, R = u64);
//!
//! /// The application: counts the requests it applied.
//! #[derive(Default, Serialize, Deserialize)]
//! struct Counter(u64);
//!
//! impl Application<Config> for Counter {
//!     fn apply(&mut self, _log_id: &openraft::LogId<u64>, _request: &String) -> u64 {
//!         self.0 += 1;
//!         self.0
//!     }
//! }
//!
//! let dir = tempfile::tempdir()?;
//! let log_store = LogStore::<Config>::open(&dir.path().join("raft"))?;
//! let state_machine = StateMachineStore::<Config, Counter>::open(&dir.path().join("sm"))?;
//! // Then: openraft::Raft::new(node_id, config, network, log_store, state_machine).await
//! # drop((log_store, state_machine));
//! # Ok(()) }
//! ```
//!
//! # Durability
//! [`LogStore::append`](openraft::storage::RaftLogStorage::append) writes each entry as its own
//! batch (so that a truncation may cut after any entry) and reports the flush through
//! `tern_wal::Appended::on_durable` from the committer's thread: openraft goes on while the
//! group commit syncs. A failed sync fences the log: the flush is reported failed, never
//! successful (the kernel may have dropped the pages). Votes and purges are durable when their
//! call returns. Every length and checksum read back is checked; damage is an error naming the
//! file, never an entry.

#![warn(missing_docs)]
// openraft's trait methods return its `StorageError` (185 bytes); the helpers here return what they do.
#![allow(clippy::result_large_err)]

mod log_store;
mod state_machine;

pub use log_store::{LogStore, StoreOptions};
#[doc(hidden)]
pub use state_machine::reencode_snapshot_file;
pub use state_machine::{Application, StateMachineStore};

/// An error of the storage layer as openraft wants it.
fn storage_error<NID: openraft::NodeId>(
    subject: openraft::ErrorSubject<NID>,
    verb: openraft::ErrorVerb,
    error: &(dyn std::error::Error + 'static),
) -> openraft::StorageError<NID> {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::from_dyn(error, None)).into()
}
