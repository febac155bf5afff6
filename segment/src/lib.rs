//! The on-disk format of one Tern segment: batch frames with checksums, pre-allocated segment
//! files read through memory maps, a sparse offset index, and the narrow file layer
//! ([`disk::Disk`]) that everything above reaches files through.
//!
//! FORMAT.md at the repository root describes every byte.
//!
//! ```
//! use tern_segment::frame::{decode, encode, BatchMeta, Record};
//! let mut buf = Vec::new();
//! encode(&mut buf, &BatchMeta { base_offset: 7, ..Default::default() }, &[Record::new(b"hello", 0)])?;
//! let frame = decode(&buf)?.expect("one frame");
//! assert_eq!(frame.records().next().map(|r| r.value), Some(&b"hello"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod cursor;
pub mod disk;
pub mod error;
pub mod frame;
pub mod segment;
pub mod sim;

pub use disk::{Disk, DiskFile, OsDisk};
pub use error::{CorruptReason, Error, Result};
pub use segment::{IndexEntry, IndexFile, ScanReport, Segment};
