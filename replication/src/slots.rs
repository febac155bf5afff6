//! Replication slots: what a leader knows of each peer on each log, kept across restarts.
//!
//! Like a PostgreSQL replication slot, a slot records how far a peer has durably caught up on
//! one log ([`Slot::durable_end`]), so that after a restart the leader still knows which records
//! every peer needs and can hold back retention for them ([`tern_wal::Log::set_retention_hold`]).
//! When a peer fell further behind than retention allows, its slot says so
//! ([`SlotState::NeedsReseed`]): the records it misses are gone from the leader, and the peer
//! needs a fresh copy of the leader's retained segments ([`tern_wal::Log::reset`]).
//!
//! The file (FORMAT.md "Replication slots file") is small, replaced whole, atomically and
//! durably on every [`Slots::store`]; it is read once at start. Its bytes are untrusted: every
//! length and count is bounded before use, the checksum is verified before anything is
//! interpreted, and a damaged file is an error naming the byte position, never data.
#![deny(clippy::indexing_slicing, clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tern_segment::cursor::Cursor;
use tern_segment::disk::{read_small_file, write_file_atomic};
use tern_segment::{CorruptReason, Disk};

use crate::message::NodeId;

/// Name of the slots file in a node's data directory.
pub const SLOTS_FILE: &str = "replication.slots";
/// Largest slots file read or written. Changing a limit is a format change.
pub const SLOTS_FILE_BYTES_MAX: u64 = 16 << 20;
/// Longest log name in a slot, in bytes of UTF-8 (FORMAT.md allows 200 for a log; the journal
/// and the wire allow 255).
pub const SLOT_LOG_NAME_BYTES_MAX: usize = 255;

const SLOTS_MAGIC: [u8; 8] = *b"TERNSLOT";
const SLOTS_VERSION: u32 = 1;
/// Magic, version and entry count.
const HEADER_BYTES: usize = 16;
const CRC_BYTES: usize = 4;
/// An entry without its name: name length, node id, durable end, state, missing range, epoch.
const ENTRY_FIXED_BYTES: usize = 2 + 8 + 8 + 1 + 8 + 8 + 8;
/// The smallest entry: a one-byte name.
const ENTRY_BYTES_MIN: usize = ENTRY_FIXED_BYTES + 1;
const STATE_ACTIVE: u8 = 0;
const STATE_NEEDS_RESEED: u8 = 1;
/// Stands for the file in errors of [`Slots::decode`], which sees bytes, not a file.
const DECODED_BYTES: &str = "<replication slots bytes>";

const _: () = assert!(SLOT_LOG_NAME_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(((HEADER_BYTES + CRC_BYTES + ENTRY_BYTES_MIN) as u64) < SLOTS_FILE_BYTES_MAX);
// Every entry count a file within the limit can hold fits the u32 field.
const _: () = assert!(SLOTS_FILE_BYTES_MAX / (ENTRY_BYTES_MIN as u64) <= u32::MAX as u64);

/// Where a peer stands on one log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotState {
    /// The peer catches up from the leader's log.
    Active,
    /// The peer fell behind retention by more than the allowed lag: it misses the records
    /// `missing_from..missing_to`, which the leader no longer holds, and needs a fresh copy of
    /// the leader's retained segments before it can follow again.
    NeedsReseed {
        /// First offset the peer misses (its durable end when it fell behind).
        missing_from: u64,
        /// One past the last offset it misses: the leader's log start when it fell behind.
        /// Always above `missing_from`.
        missing_to: u64,
    },
}

/// What a leader knows of one peer on one log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot {
    /// The peer's acknowledged durable end: it holds every offset below this on its disk.
    pub durable_end: u64,
    /// The leader epoch in which it was acknowledged: the peer's records below
    /// `durable_end` are the leader's log as it stood in that epoch, so after a restart only
    /// those below where that epoch ends in the leader's history count.
    pub epoch: u64,
    /// Whether the peer can catch up from the log.
    pub state: SlotState,
}

/// Why a slots file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlotsError {
    /// The file could not be read or written.
    #[error("I/O error on {}: {source}", .file.display())]
    Io {
        /// The slots file.
        file: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The bytes are not a valid slots file (FORMAT.md "Replication slots file").
    #[error("corrupt replication slots in {} at byte {pos}: {reason}", .file.display())]
    Corrupt {
        /// The slots file (`<replication slots bytes>` for [`Slots::decode`]).
        file: PathBuf,
        /// Position of the first byte of the field found wrong.
        pos: u64,
        /// What is wrong.
        reason: CorruptReason,
    },
    /// The slots would encode to more than [`SLOTS_FILE_BYTES_MAX`] bytes; nothing was written.
    #[error("replication slots of {len_bytes} bytes exceed the {SLOTS_FILE_BYTES_MAX}-byte limit")]
    TooLarge {
        /// Encoded size.
        len_bytes: u64,
    },
}

/// Every slot of one node, by log name and peer, in that order.
///
/// ```
/// use tern_replication::slots::{Slot, SlotState, Slots};
/// let mut slots = Slots::new();
/// slots.set("orders", 2, Slot { durable_end: 40, epoch: 1, state: SlotState::Active });
/// let missing = SlotState::NeedsReseed { missing_from: 7, missing_to: 90 };
/// slots.set("orders", 3, Slot { durable_end: 7, epoch: 1, state: missing });
/// let bytes = slots.encode();
/// let again = Slots::decode(&bytes).expect("a file just encoded decodes");
/// assert_eq!(again, slots);
/// assert_eq!(again.get("orders", 3).map(|s| s.state), Some(missing));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slots {
    entries: BTreeMap<(String, NodeId), Slot>,
}

impl Slots {
    /// No slots.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the slots file at `path`; a missing file means no slots (a node that never led).
    /// A leftover temporary file of an interrupted [`Slots::store`] is ignored.
    ///
    /// # Errors
    /// [`SlotsError::Io`], also for a file larger than [`SLOTS_FILE_BYTES_MAX`];
    /// [`SlotsError::Corrupt`] naming the file and byte position when the bytes are damaged.
    ///
    /// # Examples
    /// ```
    /// use std::path::Path;
    /// use tern_replication::slots::{Slots, SLOTS_FILE};
    /// let disk = tern_segment::sim::SimDisk::new();
    /// let slots = Slots::load(&disk, &Path::new("/data").join(SLOTS_FILE)).expect("no file is no slots");
    /// assert!(slots.is_empty());
    /// ```
    pub fn load(disk: &dyn Disk, path: &Path) -> Result<Slots, SlotsError> {
        if !disk.exists(path) {
            return Ok(Slots::new());
        }
        let bytes = read_small_file(disk, path, SLOTS_FILE_BYTES_MAX)
            .map_err(|source| SlotsError::Io { file: path.to_path_buf(), source })?;
        Slots::decode(&bytes).map_err(|e| match e {
            SlotsError::Corrupt { pos, reason, .. } => SlotsError::Corrupt { file: path.to_path_buf(), pos, reason },
            other => other,
        })
    }

    /// Replaces the slots file at `path` with these slots.
    ///
    /// # Durability
    /// Durable when this returns: a temporary file is written and synced, renamed over `path`,
    /// and the directory is synced. A crash at any point leaves either the previous file or the
    /// new one, whole; never a mix, never nothing when there was a file before.
    ///
    /// # Errors
    /// [`SlotsError::TooLarge`] before anything is written; [`SlotsError::Io`].
    ///
    /// # Examples
    /// ```
    /// use std::path::Path;
    /// use tern_replication::slots::{Slot, SlotState, Slots, SLOTS_FILE};
    /// let disk = tern_segment::sim::SimDisk::new();
    /// let path = Path::new("/data").join(SLOTS_FILE);
    /// let mut slots = Slots::new();
    /// slots.set("orders", 2, Slot { durable_end: 40, epoch: 1, state: SlotState::Active });
    /// slots.store(&disk, &path).expect("stored");
    /// assert_eq!(Slots::load(&disk, &path).expect("loaded"), slots);
    /// ```
    pub fn store(&self, disk: &dyn Disk, path: &Path) -> Result<(), SlotsError> {
        let bytes = self.encode();
        let len_bytes = bytes.len() as u64;
        if len_bytes > SLOTS_FILE_BYTES_MAX {
            return Err(SlotsError::TooLarge { len_bytes });
        }
        write_file_atomic(disk, path, &bytes, true)
            .map_err(|source| SlotsError::Io { file: path.to_path_buf(), source })
    }

    /// The slot of `peer` on log `log`, if any.
    pub fn get(&self, log: &str, peer: NodeId) -> Option<&Slot> {
        self.entries.get(&(log.to_owned(), peer))
    }

    /// Sets the slot of `peer` on log `log`, returning the one it replaces.
    ///
    /// # Panics
    /// When `log` is empty or longer than [`SLOT_LOG_NAME_BYTES_MAX`] bytes, or a
    /// [`SlotState::NeedsReseed`] range is empty: log names are checked when a log is created,
    /// and a peer that misses nothing does not need a reseed, so either is a bug of the caller.
    pub fn set(&mut self, log: &str, peer: NodeId, slot: Slot) -> Option<Slot> {
        assert!(
            (1..=SLOT_LOG_NAME_BYTES_MAX).contains(&log.len()),
            "log name of {} bytes in a replication slot",
            log.len()
        );
        if let SlotState::NeedsReseed { missing_from, missing_to } = slot.state {
            assert!(missing_from < missing_to, "empty missing range {missing_from}..{missing_to} in a slot");
        }
        self.entries.insert((log.to_owned(), peer), slot)
    }

    /// Removes the slot of `peer` on log `log` (the peer left, or the log was deleted).
    pub fn remove(&mut self, log: &str, peer: NodeId) -> Option<Slot> {
        self.entries.remove(&(log.to_owned(), peer))
    }

    /// Every slot as `(log, peer, slot)`, by log name (bytewise) and then peer.
    pub fn iter(&self) -> impl Iterator<Item = (&str, NodeId, &Slot)> + '_ {
        self.entries.iter().map(|((log, peer), slot)| (log.as_str(), *peer, slot))
    }

    /// How many slots there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no slot.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Encodes the slots file (FORMAT.md "Replication slots file"). [`Slots::store`] refuses
    /// the result when it is over [`SLOTS_FILE_BYTES_MAX`].
    pub fn encode(&self) -> Vec<u8> {
        let names_bytes: usize = self.entries.keys().map(|(log, _)| log.len()).sum();
        let len_bytes = HEADER_BYTES + self.entries.len() * ENTRY_FIXED_BYTES + names_bytes + CRC_BYTES;
        let mut w = Vec::with_capacity(len_bytes);
        w.extend_from_slice(&SLOTS_MAGIC);
        w.extend_from_slice(&SLOTS_VERSION.to_le_bytes());
        let count = u32::try_from(self.entries.len()).expect("more slots than a u32 counts");
        w.extend_from_slice(&count.to_le_bytes());
        for ((log, peer), slot) in &self.entries {
            // `set` keeps both; checked again here, as the decoder will.
            let name_len = u16::try_from(log.len()).expect("log name length checked by set");
            assert!(!log.is_empty() && log.len() <= SLOT_LOG_NAME_BYTES_MAX, "log name of {} bytes", log.len());
            let (state, missing_from, missing_to) = match slot.state {
                SlotState::Active => (STATE_ACTIVE, 0, 0),
                SlotState::NeedsReseed { missing_from, missing_to } => {
                    assert!(missing_from < missing_to, "empty missing range {missing_from}..{missing_to}");
                    (STATE_NEEDS_RESEED, missing_from, missing_to)
                }
            };
            w.extend_from_slice(&name_len.to_le_bytes());
            w.extend_from_slice(log.as_bytes());
            w.extend_from_slice(&peer.to_le_bytes());
            w.extend_from_slice(&slot.durable_end.to_le_bytes());
            w.push(state);
            w.extend_from_slice(&missing_from.to_le_bytes());
            w.extend_from_slice(&missing_to.to_le_bytes());
            w.extend_from_slice(&slot.epoch.to_le_bytes());
        }
        let crc = crc32fast::hash(&w);
        w.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(w.len(), len_bytes);
        debug_assert!(Slots::decode(&w).is_ok_and(|again| again == *self) || w.len() as u64 > SLOTS_FILE_BYTES_MAX);
        w
    }

    /// Decodes and checks a slots file: its length is bounded, its magic and checksum are
    /// verified before anything else is read, every count is bounded by the bytes left, and
    /// entries must be in strictly increasing (log, peer) order, so that a file decodes to
    /// exactly one value and encodes back to the same bytes. Never panics.
    ///
    /// # Errors
    /// [`SlotsError::Corrupt`] with the position of the field found wrong.
    pub fn decode(bytes: &[u8]) -> Result<Slots, SlotsError> {
        let len_bytes = bytes.len() as u64;
        if len_bytes > SLOTS_FILE_BYTES_MAX {
            let limit_bytes = u32::try_from(SLOTS_FILE_BYTES_MAX).unwrap_or(u32::MAX);
            return Err(corrupt(0, CorruptReason::FrameTooLong { len_bytes, limit_bytes }));
        }
        if read(&mut Cursor::new(bytes), |cur| cur.take(SLOTS_MAGIC.len()))? != SLOTS_MAGIC {
            return Err(corrupt(0, CorruptReason::Magic));
        }
        let Some(crc_pos) = bytes.len().checked_sub(CRC_BYTES).filter(|pos| *pos >= HEADER_BYTES) else {
            let needed_bytes = (HEADER_BYTES + CRC_BYTES).saturating_sub(bytes.len()) as u64;
            return Err(corrupt(bytes.len(), CorruptReason::Truncated { needed_bytes }));
        };
        let (covered, crc_bytes) = bytes.split_at(crc_pos);
        let stored = read(&mut Cursor::new(crc_bytes), Cursor::u32_le).map_err(|_| corrupt(crc_pos, CRC_MISSING))?;
        let computed = crc32fast::hash(covered);
        if stored != computed {
            return Err(corrupt(crc_pos, CorruptReason::Checksum { stored, computed }));
        }
        // Only the covered bytes from here, so the entries must end exactly at the checksum.
        let mut cur = Cursor::new(covered);
        read(&mut cur, |cur| cur.take(SLOTS_MAGIC.len()))?;
        let version_pos = cur.pos();
        let version = read(&mut cur, Cursor::u32_le)?;
        if version != SLOTS_VERSION {
            return Err(corrupt(version_pos, CorruptReason::Version { found: version }));
        }
        let count_pos = cur.pos();
        let count = read(&mut cur, Cursor::u32_le)?;
        // Bound the count by the bytes left before trusting it with any work.
        if u64::from(count) > (cur.remaining_bytes() / ENTRY_BYTES_MIN) as u64 {
            return Err(corrupt(count_pos, CorruptReason::Field("entry count exceeds what the file can hold")));
        }
        let mut entries = BTreeMap::new();
        let mut last_key: Option<(String, NodeId)> = None;
        for _ in 0..count {
            let entry_pos = cur.pos();
            let name_len = usize::from(read(&mut cur, Cursor::u16_le)?);
            if !(1..=SLOT_LOG_NAME_BYTES_MAX).contains(&name_len) {
                return Err(corrupt(entry_pos, CorruptReason::Field("log name length outside 1..=255")));
            }
            let name_pos = cur.pos();
            let name = std::str::from_utf8(read(&mut cur, |cur| cur.take(name_len))?)
                .map_err(|_| corrupt(name_pos, CorruptReason::Field("log name is not UTF-8")))?;
            let peer = read(&mut cur, Cursor::u64_le)?;
            let durable_end = read(&mut cur, Cursor::u64_le)?;
            let state_pos = cur.pos();
            let state = read(&mut cur, Cursor::u8)?;
            let missing_pos = cur.pos();
            let missing_from = read(&mut cur, Cursor::u64_le)?;
            let missing_to = read(&mut cur, Cursor::u64_le)?;
            let epoch = read(&mut cur, Cursor::u64_le)?;
            let state = match state {
                STATE_ACTIVE if missing_from == 0 && missing_to == 0 => SlotState::Active,
                STATE_ACTIVE => {
                    return Err(corrupt(missing_pos, CorruptReason::Field("missing range of an active slot")));
                }
                STATE_NEEDS_RESEED if missing_from < missing_to => SlotState::NeedsReseed { missing_from, missing_to },
                STATE_NEEDS_RESEED => return Err(corrupt(missing_pos, CorruptReason::Field("empty missing range"))),
                _ => return Err(corrupt(state_pos, CorruptReason::Field("slot state"))),
            };
            let key = (name.to_owned(), peer);
            if last_key.as_ref().is_some_and(|last| *last >= key) {
                return Err(corrupt(entry_pos, CorruptReason::Field("entries out of order or repeated")));
            }
            last_key = Some(key.clone());
            entries.insert(key, Slot { durable_end, epoch, state });
        }
        if cur.remaining_bytes() > 0 {
            return Err(corrupt(cur.pos(), CorruptReason::TrailingGarbage));
        }
        Ok(Slots { entries })
    }
}

/// The checksum field is cut short (unreachable: its position leaves four bytes).
const CRC_MISSING: CorruptReason = CorruptReason::Truncated { needed_bytes: CRC_BYTES as u64 };

fn corrupt(pos: usize, reason: CorruptReason) -> SlotsError {
    SlotsError::Corrupt { file: PathBuf::from(DECODED_BYTES), pos: pos as u64, reason }
}

/// Runs one cursor read; an error names the position where the read started.
fn read<'a, T>(
    cur: &mut Cursor<'a>,
    read: impl FnOnce(&mut Cursor<'a>) -> Result<T, CorruptReason>,
) -> Result<T, SlotsError> {
    let pos = cur.pos();
    read(cur).map_err(|reason| corrupt(pos, reason))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
mod tests {
    use proptest::prelude::*;
    use tern_segment::sim::{SimDisk, Tear};

    use super::*;

    fn sample() -> Slots {
        let mut slots = Slots::new();
        slots.set("orders", 2, Slot { durable_end: 40, epoch: 1, state: SlotState::Active });
        slots.set(
            "orders",
            3,
            Slot { durable_end: 7, epoch: 1, state: SlotState::NeedsReseed { missing_from: 7, missing_to: 90 } },
        );
        slots.set("événements", 1, Slot { durable_end: u64::MAX, epoch: 1, state: SlotState::Active });
        slots.set("a", u64::MAX, Slot { durable_end: 0, epoch: 1, state: SlotState::Active });
        slots
    }

    /// `bytes` with its checksum made to match, so that the checks behind it are reached.
    fn with_crc(mut bytes: Vec<u8>) -> Vec<u8> {
        let crc_pos = bytes.len() - CRC_BYTES;
        let crc = crc32fast::hash(&bytes[..crc_pos]);
        bytes[crc_pos..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    fn corrupt_at(result: Result<Slots, SlotsError>) -> (u64, CorruptReason) {
        match result {
            Err(SlotsError::Corrupt { pos, reason, .. }) => (pos, reason),
            other => panic!("expected a corrupt error, got {other:?}"),
        }
    }

    #[test]
    fn the_layout_is_the_one_format_md_describes() {
        let mut slots = Slots::new();
        slots.set(
            "ab",
            0x0102,
            Slot { durable_end: 5, epoch: 1, state: SlotState::NeedsReseed { missing_from: 5, missing_to: 9 } },
        );
        let bytes = slots.encode();
        assert_eq!(bytes.len(), HEADER_BYTES + ENTRY_FIXED_BYTES + 2 + CRC_BYTES);
        assert_eq!(&bytes[..8], b"TERNSLOT");
        assert_eq!(bytes[8..12], 1u32.to_le_bytes());
        assert_eq!(bytes[12..16], 1u32.to_le_bytes());
        assert_eq!(bytes[16..18], 2u16.to_le_bytes());
        assert_eq!(&bytes[18..20], b"ab");
        assert_eq!(bytes[20..28], 0x0102u64.to_le_bytes());
        assert_eq!(bytes[28..36], 5u64.to_le_bytes());
        assert_eq!(bytes[36], STATE_NEEDS_RESEED);
        assert_eq!(bytes[37..45], 5u64.to_le_bytes());
        assert_eq!(bytes[45..53], 9u64.to_le_bytes());
        assert_eq!(bytes[53..61], 1u64.to_le_bytes());
        assert_eq!(bytes[61..65], crc32fast::hash(&bytes[..61]).to_le_bytes());
        let empty = Slots::new().encode();
        assert_eq!(empty.len(), HEADER_BYTES + CRC_BYTES);
        assert_eq!(Slots::decode(&empty).unwrap(), Slots::new());
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let bytes = sample().encode();
        for pos in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[pos] ^= 1 << bit;
                assert!(Slots::decode(&bad).is_err(), "flip of bit {bit} at byte {pos} accepted");
            }
        }
    }

    #[test]
    fn every_truncation_and_any_extra_byte_is_refused() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(Slots::decode(&bytes[..len]).is_err(), "truncated to {len} bytes accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Slots::decode(&longer).is_err());
        // Even with the checksum made to match, a byte between the entries and it is refused.
        let mut garbage = bytes[..bytes.len() - CRC_BYTES].to_vec();
        garbage.extend_from_slice(&[0, 0, 0, 0, 0]);
        let garbage = with_crc(garbage);
        assert_eq!(
            corrupt_at(Slots::decode(&garbage)),
            ((bytes.len() - CRC_BYTES) as u64, CorruptReason::TrailingGarbage)
        );
    }

    #[test]
    fn errors_name_the_position_of_the_field_found_wrong() {
        let bytes = sample().encode();
        let mut magic = bytes.clone();
        magic[3] ^= 1;
        assert_eq!(corrupt_at(Slots::decode(&magic)), (0, CorruptReason::Magic));
        let crc_pos = (bytes.len() - CRC_BYTES) as u64;
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(matches!(corrupt_at(Slots::decode(&flipped)), (pos, CorruptReason::Checksum { .. }) if pos == crc_pos));
        let mut version = bytes.clone();
        version[8] = 2;
        assert_eq!(corrupt_at(Slots::decode(&with_crc(version))), (8, CorruptReason::Version { found: 2 }));
        // A count the bytes cannot hold is refused before any entry is read.
        let mut count = bytes.clone();
        count[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(corrupt_at(Slots::decode(&with_crc(count))), (12, CorruptReason::Field(_))));
        // The first entry (by key: "a", peer u64::MAX) starts at 16; its name at 18.
        let mut name_len = bytes.clone();
        name_len[16..18].copy_from_slice(&0u16.to_le_bytes());
        assert!(matches!(corrupt_at(Slots::decode(&with_crc(name_len))), (16, CorruptReason::Field(_))));
        let mut name = bytes.clone();
        name[18] = 0xff;
        assert!(matches!(corrupt_at(Slots::decode(&with_crc(name))), (18, CorruptReason::Field(_))));
        let mut state = bytes.clone();
        state[18 + 1 + 16] = 7;
        assert!(matches!(corrupt_at(Slots::decode(&with_crc(state))), (35, CorruptReason::Field(_))));
        let mut active_range = bytes.clone();
        active_range[36] = 1;
        assert!(matches!(corrupt_at(Slots::decode(&with_crc(active_range))), (36, CorruptReason::Field(_))));
        // The second entry repeats the first: refused at its start.
        let entry = &bytes[16..16 + ENTRY_FIXED_BYTES + 1];
        let mut repeated = bytes[..12].to_vec();
        repeated.extend_from_slice(&2u32.to_le_bytes());
        repeated.extend_from_slice(entry);
        repeated.extend_from_slice(entry);
        repeated.extend_from_slice(&[0; CRC_BYTES]);
        let at = (16 + entry.len()) as u64;
        assert!(matches!(corrupt_at(Slots::decode(&with_crc(repeated))), (pos, CorruptReason::Field(_)) if pos == at));
    }

    #[test]
    fn the_accessors_see_what_was_set() {
        let mut slots = Slots::new();
        assert!(slots.is_empty());
        let slot = Slot { durable_end: 7, epoch: 2, state: SlotState::Active };
        assert_eq!(slots.set("orders", 3, slot), None);
        assert!(!slots.is_empty());
        assert_eq!(slots.get("orders", 3), Some(&slot));
        assert_eq!(slots.get("orders", 4), None);
        assert_eq!(slots.remove("orders", 3), Some(slot));
        assert_eq!(slots.remove("orders", 3), None);
        assert!(slots.is_empty());
    }

    #[test]
    fn a_count_one_over_what_the_bytes_can_hold_is_refused_at_the_count() {
        // 100 entries of the smallest size: the bytes hold exactly 100.
        let mut slots = Slots::new();
        for peer in 0..100 {
            slots.set("a", peer, Slot { durable_end: 0, epoch: 0, state: SlotState::Active });
        }
        let mut bytes = slots.encode();
        assert_eq!(bytes.len(), HEADER_BYTES + 100 * ENTRY_BYTES_MIN + CRC_BYTES);
        bytes[12..16].copy_from_slice(&101u32.to_le_bytes());
        assert!(matches!(corrupt_at(Slots::decode(&with_crc(bytes))), (12, CorruptReason::Field(_))));
    }

    #[test]
    fn a_file_shorter_than_a_header_and_a_checksum_says_how_much_is_missing() {
        let bytes = Slots::new().encode();
        assert_eq!(corrupt_at(Slots::decode(&bytes[..8])), (8, CorruptReason::Truncated { needed_bytes: 12 }));
    }

    #[test]
    fn an_empty_or_reversed_missing_range_is_refused_at_the_range() {
        let mut slots = Slots::new();
        let needs = SlotState::NeedsReseed { missing_from: 5, missing_to: 9 };
        slots.set("ab", 1, Slot { durable_end: 5, epoch: 1, state: needs });
        let bytes = slots.encode();
        for missing_to in [5u64, 4] {
            let mut bad = bytes.clone();
            bad[45..53].copy_from_slice(&missing_to.to_le_bytes());
            assert_eq!(corrupt_at(Slots::decode(&with_crc(bad))), (37, CorruptReason::Field("empty missing range")));
        }
    }

    #[test]
    fn a_file_of_exactly_the_limit_is_stored_and_loaded_and_one_byte_more_is_refused() {
        let disk = SimDisk::new();
        let path = Path::new("/data").join(SLOTS_FILE);
        let slot = Slot { durable_end: 1, epoch: 1, state: SlotState::Active };
        let long = "x".repeat(SLOT_LOG_NAME_BYTES_MAX);
        let mut slots = Slots::new();
        // 56,299 entries of 298 bytes and one of 94, with the header and the checksum: 16 MiB.
        for peer in 0..56_299 {
            slots.set(&long, peer, slot);
        }
        slots.set(&"y".repeat(51), 0, slot);
        assert_eq!(slots.encode().len() as u64, SLOTS_FILE_BYTES_MAX);
        slots.store(&disk, &path).expect("a file of exactly the limit is stored");
        assert_eq!(Slots::load(&disk, &path).expect("and loaded"), slots);
        slots.remove(&"y".repeat(51), 0);
        slots.set(&"y".repeat(52), 0, slot);
        let refused = slots.store(&disk, &path);
        assert!(
            matches!(refused, Err(SlotsError::TooLarge { len_bytes }) if len_bytes == SLOTS_FILE_BYTES_MAX + 1),
            "{refused:?}"
        );
    }

    #[test]
    fn a_file_over_the_limit_is_refused_without_reading_it() {
        let disk = SimDisk::new();
        let path = Path::new("/data").join(SLOTS_FILE);
        let file = disk.create(&path, SLOTS_FILE_BYTES_MAX + 1).unwrap();
        drop(file);
        assert!(matches!(Slots::load(&disk, &path), Err(SlotsError::Io { .. })));
        let huge = vec![0u8; SLOTS_FILE_BYTES_MAX as usize + 1];
        assert!(matches!(corrupt_at(Slots::decode(&huge)), (0, CorruptReason::FrameTooLong { .. })));
    }

    #[test]
    fn a_missing_file_is_no_slots_and_a_damaged_one_names_its_path() {
        let disk = SimDisk::new();
        let path = Path::new("/data").join(SLOTS_FILE);
        assert_eq!(Slots::load(&disk, &path).unwrap(), Slots::new());
        sample().store(&disk, &path).unwrap();
        assert_eq!(Slots::load(&disk, &path).unwrap(), sample());
        disk.flip_bit(&path, 30, 2).unwrap();
        match Slots::load(&disk, &path) {
            Err(SlotsError::Corrupt { file, reason: CorruptReason::Checksum { .. }, .. }) => assert_eq!(file, path),
            other => panic!("{other:?}"),
        }
    }

    /// Replaces the file `path` held with `next`, with power lost at sync point `crash_at` and
    /// the last write torn by `tear`; the file must then hold `before` or `next`, whole.
    #[test]
    fn a_store_cut_short_by_power_loss_leaves_the_previous_file_or_the_new_one() {
        let path = Path::new("/data").join(SLOTS_FILE);
        let before = sample();
        let mut next = sample();
        next.set("orders", 2, Slot { durable_end: 41, epoch: 1, state: SlotState::Active });
        next.remove("a", u64::MAX);
        let setup = |disk: &SimDisk| before.store(disk, &path).unwrap();
        let dry = SimDisk::new();
        setup(&dry);
        let first = dry.sync_points();
        next.store(&dry, &path).unwrap();
        let last = dry.sync_points();
        assert!(last - first >= 2, "a store syncs the file and the directory");
        let (mut saw_before, mut saw_next) = (false, false);
        for crash_at in first..=last {
            for tear in [Tear::None, Tear::Prefix(1), Tear::Half, Tear::AllButOne] {
                let disk = SimDisk::new();
                setup(&disk);
                disk.crash_at_sync(crash_at);
                let stored = next.store(&disk, &path);
                disk.crash(tear);
                let loaded = Slots::load(&disk, &path)
                    .unwrap_or_else(|e| panic!("crash at sync point {crash_at} ({tear:?}): {e}"));
                if loaded == before {
                    assert!(stored.is_err(), "crash at {crash_at} ({tear:?}): a store that returned Ok was lost");
                    saw_before = true;
                } else {
                    assert_eq!(loaded, next, "crash at {crash_at} ({tear:?})");
                    saw_next = true;
                }
                // A leftover temporary file does not stop the next store.
                let mut after = next.clone();
                after.set("later", 9, Slot { durable_end: 1, epoch: 1, state: SlotState::Active });
                after.store(&disk, &path).unwrap();
                assert_eq!(Slots::load(&disk, &path).unwrap(), after);
            }
        }
        assert!(saw_before && saw_next);
    }

    #[test]
    fn a_torn_or_stray_temporary_file_is_ignored() {
        let disk = SimDisk::new();
        let path = Path::new("/data").join(SLOTS_FILE);
        sample().store(&disk, &path).unwrap();
        let tmp = Path::new("/data").join(format!("{SLOTS_FILE}.tmp"));
        let torn = disk.create(&tmp, 0).unwrap();
        torn.write_at(0, &Slots::new().encode()[..10]).unwrap();
        drop(torn);
        assert_eq!(Slots::load(&disk, &path).unwrap(), sample());
        Slots::new().store(&disk, &path).unwrap();
        assert_eq!(Slots::load(&disk, &path).unwrap(), Slots::new());
    }

    #[test]
    #[should_panic(expected = "empty missing range")]
    fn an_empty_missing_range_is_a_bug_of_the_caller() {
        Slots::new().set(
            "orders",
            1,
            Slot { durable_end: 5, epoch: 1, state: SlotState::NeedsReseed { missing_from: 5, missing_to: 5 } },
        );
    }

    fn arb_slots() -> impl Strategy<Value = Slots> {
        let name = proptest::string::string_regex("[a-z0-9._é-]{1,40}").expect("a valid regex");
        let state = prop_oneof![
            Just(SlotState::Active),
            (any::<u64>(), 1u64..u64::MAX).prop_map(|(from, len)| {
                let from = from.min(u64::MAX - len);
                SlotState::NeedsReseed { missing_from: from, missing_to: from + len }
            }),
        ];
        proptest::collection::vec((name, any::<NodeId>(), any::<u64>(), any::<u64>(), state), 0..24).prop_map(
            |entries| {
                let mut slots = Slots::new();
                for (log, peer, durable_end, epoch, state) in entries {
                    slots.set(&log, peer, Slot { durable_end, epoch, state });
                }
                slots
            },
        )
    }

    proptest! {
        #[test]
        fn slots_round_trip_and_decode_exactly_inverts_encode(slots in arb_slots()) {
            let bytes = slots.encode();
            let again = Slots::decode(&bytes).expect("a file just encoded decodes");
            prop_assert_eq!(&again, &slots);
            prop_assert_eq!(again.encode(), bytes);
            prop_assert_eq!(again.iter().count(), slots.len());
        }

        #[test]
        fn decode_never_panics_and_what_it_accepts_encodes_back(
            slots in arb_slots(),
            damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = slots.encode();
            for (at, byte) in damage {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            // As damaged, and with the checksum made to match so the checks behind it run.
            let cut = HEADER_BYTES + CRC_BYTES + cut.index(bytes.len() - HEADER_BYTES - CRC_BYTES + 1);
            for candidate in [bytes.clone(), with_crc(bytes.clone()), with_crc(bytes[..cut.min(bytes.len())].to_vec())] {
                if let Ok(decoded) = Slots::decode(&candidate) {
                    prop_assert_eq!(decoded.encode(), candidate);
                }
            }
        }
    }
}
