//! Tern: an embeddable, log-based replication storage engine.
//!
//! An [`Engine`] holds many named logs in one directory. Every log is a sequence of records
//! with dense offsets, written in atomic batches; one group-commit thread serves all logs, so
//! appends to many logs share their `fdatasync`s.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let engine = tern::Engine::open(dir.path(), tern::Config::default())?;
//! let orders = engine.log("orders")?;
//! let offsets = orders.append(&[b"a", b"b"], tern::Durability::Local)?;
//! assert_eq!(offsets.end - offsets.start, 2);
//! let first = orders.read(offsets.start, tern::Visibility::Durable)?.next().transpose()?;
//! assert_eq!(first.map(|r| r.value), Some(bytes::Bytes::from_static(b"a")));
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod bench;
pub mod cluster;
pub mod cluster_demo;
pub mod config;
pub mod demo;
pub mod device;
pub mod engine;
pub mod error;

pub use config::Config;
pub use device::DirectWrites;
pub use engine::{validate_log_name, Engine, EngineLogs, Metrics};
pub use error::{Error, Result};
pub use tern_wal::{
    AppendOptions, Appended, BatchRef, Durability, Log, LogStats, ReadRecord, Reader, Record, Recovered, Visibility,
};
