//! A small durable record kept beside a log: what a consensus log store must keep apart from
//! its entries (the vote, the last purged entry), or any value of up to [`STATE_BYTES_MAX`]
//! bytes that must survive a power loss whole.
//!
//! The file holds two copies of the value in two 4 KiB slots (FORMAT.md "State file"). A
//! [`StateFile::put`] writes the new value to the first slot and syncs, then to the second and
//! syncs: a power loss tears at most the slot being written, and the other one holds either
//! the previous value (the put had not returned) or the new one. Damage to one slot is
//! survived too, since both hold the current value once a put returns. Reading takes the
//! valid slot with the highest sequence number; no valid slot in a file that was written is
//! corruption, reported with the file and the slot's position, never an empty value.
//!
//! After a failed sync the kernel may have dropped the written pages, and the next sync
//! reports success: the handle refuses every later put, and only a fresh
//! [`StateFile::open`] (which reads what the disk really holds) continues.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tern_wal::state::StateFile;
//! let dir = tempfile::tempdir()?;
//! let disk = tern_segment::OsDisk::new();
//! let path = dir.path().join("raft.state");
//! let mut state = StateFile::open(&disk, &path)?;
//! assert_eq!(state.get(), None);
//! state.put(b"vote: term 3 for node 2")?;
//! drop(state);
//! let state = StateFile::open(&disk, &path)?;
//! assert_eq!(state.get(), Some(&b"vote: term 3 for node 2"[..]));
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tern_segment::{CorruptReason, Disk, DiskFile};

use crate::error::{Error, Result};

/// Bytes of one slot.
pub const SLOT_BYTES: usize = 4096;
/// Bytes of a slot's header: magic (4), version (2), reserved (2), sequence (8), length (4),
/// checksum (4).
const HEADER_BYTES: usize = 24;
/// The largest value a state file holds.
pub const STATE_BYTES_MAX: usize = SLOT_BYTES - HEADER_BYTES;
const MAGIC: [u8; 4] = *b"TSTA";
const VERSION: u16 = 1;

/// A small value kept durably in a file of two slots. See the [module docs](self).
pub struct StateFile {
    path: PathBuf,
    file: Arc<dyn DiskFile>,
    seq: u64,
    value: Option<Vec<u8>>,
    failed: bool,
}

impl std::fmt::Debug for StateFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateFile").field("path", &self.path).field("seq", &self.seq).finish_non_exhaustive()
    }
}

impl StateFile {
    /// Opens the state file at `path`, creating it (durably: file, then its directory entry)
    /// when it does not exist, and reads its value.
    ///
    /// # Errors
    /// [`tern_segment::Error::Corrupt`] (inside [`Error::Segment`]) naming the file and a
    /// slot's position when the file was written but neither slot holds a valid value; I/O
    /// errors.
    pub fn open(disk: &dyn Disk, path: &Path) -> Result<StateFile> {
        let file = if disk.exists(path) {
            disk.open(path).map_err(|e| Error::io(path, e))?
        } else {
            let file = disk.create(path, 2 * SLOT_BYTES as u64).map_err(|e| Error::io(path, e))?;
            file.sync_data().map_err(|e| Error::io(path, e))?;
            if let Some(dir) = path.parent() {
                disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
            }
            file
        };
        let len = file.len().map_err(|e| Error::io(path, e))?;
        let bytes = file.read_copy(0, len.min(2 * SLOT_BYTES as u64)).map_err(|e| Error::io(path, e))?;
        let slot = |i: usize| bytes.get(i * SLOT_BYTES..((i + 1) * SLOT_BYTES).min(bytes.len())).unwrap_or_default();
        let (first, second) = (decode_slot(slot(0)), decode_slot(slot(1)));
        let newest = match (first, second) {
            (Ok(a), Ok(b)) => Some(if b.0 > a.0 { b } else { a }),
            (Ok(a), Err(_)) => Some(a),
            (Err(_), Ok(b)) => Some(b),
            // The first put tore its first slot before the second was ever written: it never
            // returned, so there is no value.
            (Err(_), Err(Damage::Blank)) => None,
            (Err(reason), Err(_)) => {
                let reason = match reason {
                    Damage::Blank => CorruptReason::Field("state slot 0 blank but slot 1 written"),
                    Damage::Bad(reason) => reason,
                };
                return Err(Error::Segment(tern_segment::Error::Corrupt { file: path.to_path_buf(), pos: 0, reason }));
            }
        };
        let (seq, value) = newest.map_or((0, None), |(seq, value)| (seq, Some(value)));
        Ok(StateFile { path: path.to_path_buf(), file, seq, value, failed: false })
    }

    /// The value, or `None` when none was ever put.
    pub fn get(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }

    /// Replaces the value, durably: when this returns, a power loss keeps it.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a value over [`STATE_BYTES_MAX`] bytes, or after the last
    /// sequence number, `u64::MAX` (only a damaged or forged file holds it): nothing is written;
    /// I/O errors, after which this handle refuses every put ([`Error::Fenced`]): reopen the
    /// file to read what it holds.
    pub fn put(&mut self, value: &[u8]) -> Result<()> {
        if value.len() > STATE_BYTES_MAX {
            return Err(Error::Invalid(format!(
                "state value of {} bytes exceeds the {STATE_BYTES_MAX}-byte maximum",
                value.len()
            )));
        }
        if self.failed {
            return Err(Error::Fenced {
                log: self.path.display().to_string(),
                reason: "an earlier write or sync of the state file failed".into(),
            });
        }
        // Only a damaged or forged file holds the last sequence number (no writer makes 2^64
        // puts). Wrapping to 0 could bring back an older value: the slot written first would
        // then lose to the other one's, which may hold the value before the current one.
        let seq = self.seq.checked_add(1).ok_or_else(|| {
            Error::Invalid(format!("state file {}: sequence number {} is the last one", self.path.display(), self.seq))
        })?;
        let slot = encode_slot(seq, value);
        for pos in [0, SLOT_BYTES as u64] {
            let written = self.file.write_at(pos, &slot).and_then(|()| self.file.sync_data());
            if let Err(e) = written {
                self.failed = true;
                return Err(Error::io(&self.path, e));
            }
        }
        self.seq = seq;
        self.value = Some(value.to_vec());
        Ok(())
    }
}

/// Why a slot holds no value.
enum Damage {
    /// Only zeros: never written.
    Blank,
    /// Written, but not whole or not valid.
    Bad(CorruptReason),
}

fn encode_slot(seq: u64, value: &[u8]) -> Vec<u8> {
    let mut slot = Vec::with_capacity(SLOT_BYTES);
    slot.extend_from_slice(&MAGIC);
    slot.extend_from_slice(&VERSION.to_le_bytes());
    slot.extend_from_slice(&0u16.to_le_bytes());
    slot.extend_from_slice(&seq.to_le_bytes());
    slot.extend_from_slice(&(value.len() as u32).to_le_bytes());
    slot.extend_from_slice(&checksum(seq, value).to_le_bytes());
    slot.extend_from_slice(value);
    slot.resize(SLOT_BYTES, 0);
    slot
}

fn checksum(seq: u64, value: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(&(value.len() as u32).to_le_bytes());
    hasher.update(value);
    hasher.finalize()
}

/// The sequence number and value of a slot, checked: every length is bounded before use.
fn decode_slot(slot: &[u8]) -> Result<(u64, Vec<u8>), Damage> {
    if slot.iter().all(|b| *b == 0) {
        return Err(Damage::Blank);
    }
    let field = |range: std::ops::Range<usize>| {
        slot.get(range).ok_or(Damage::Bad(CorruptReason::Truncated { needed_bytes: HEADER_BYTES as u64 }))
    };
    if field(0..4)? != MAGIC {
        return Err(Damage::Bad(CorruptReason::Magic));
    }
    let version = u16::from_le_bytes(field(4..6)?.try_into().unwrap_or_default());
    if version != VERSION {
        return Err(Damage::Bad(CorruptReason::Version { found: u32::from(version) }));
    }
    if field(6..8)? != [0, 0] {
        return Err(Damage::Bad(CorruptReason::Field("state slot reserved")));
    }
    let seq = u64::from_le_bytes(field(8..16)?.try_into().unwrap_or_default());
    let len = u32::from_le_bytes(field(16..20)?.try_into().unwrap_or_default()) as usize;
    let stored = u32::from_le_bytes(field(20..24)?.try_into().unwrap_or_default());
    if len > STATE_BYTES_MAX {
        return Err(Damage::Bad(CorruptReason::Field("state value length over the slot size")));
    }
    let value = field(HEADER_BYTES..HEADER_BYTES + len)?;
    let computed = checksum(seq, value);
    if computed != stored {
        return Err(Damage::Bad(CorruptReason::Checksum { stored, computed }));
    }
    Ok((seq, value.to_vec()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tern_segment::sim::{SimDisk, Tear};

    use super::*;

    /// The file the `state_file` fuzz target found: slot 0 valid with sequence number
    /// `u64::MAX`, slot 1 valid with 533, both holding an empty value. The put after opening it
    /// overflowed the sequence number (a panic where overflow is checked). It is refused, with
    /// nothing written: the file still reads the same.
    #[test]
    fn a_put_after_the_last_sequence_number_is_refused() {
        let path = Path::new("/data/raft.state");
        let disk = SimDisk::new();
        let file = disk.create(path, 0).unwrap();
        file.write_at(0, &encode_slot(u64::MAX, b"")).unwrap();
        file.write_at(SLOT_BYTES as u64, &encode_slot(533, b"")).unwrap();
        file.sync_data().unwrap();
        disk.sync_dir(Path::new("/data")).unwrap();
        drop(file);
        let mut state = StateFile::open(&disk, path).unwrap();
        assert_eq!((state.seq, state.get()), (u64::MAX, Some(&b""[..])));
        let err = state.put(b"vote").unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        assert_eq!(state.get(), Some(&b""[..]));
        drop(state);
        disk.crash(Tear::None);
        let state = StateFile::open(&disk, path).unwrap();
        assert_eq!((state.seq, state.get()), (u64::MAX, Some(&b""[..])));
    }
}
