//! The epoch history of a log: at which offset each leader epoch began writing it, like Kafka's
//! leader-epoch checkpoint file or a PostgreSQL timeline history.
//!
//! Replication uses it to find where a returning follower diverged from its leader
//! ([`EpochHistory::epoch_end`], Kafka's OffsetsForLeaderEpoch). The file `epochs` (FORMAT.md
//! "Epoch history file") is small, replaced whole, atomically and durably, whenever an entry is
//! added or removed; a missing file is an empty history (a log that never had an epoch, or one
//! created before the file existed).
//!
//! The log keeps one invariant across any crash: **the history is never behind the data**.
//! Every batch's epoch is the epoch in effect at its base offset according to the history: an
//! entry is made durable before the first batch of its epoch is written, and removed only after
//! its batches are gone or while their removal is recorded as pending in `log.meta`.
#![deny(clippy::indexing_slicing, clippy::cast_possible_truncation)]

use std::path::Path;

use tern_segment::cursor::Cursor;
use tern_segment::disk::write_file_atomic;
use tern_segment::{CorruptReason, Disk};

use crate::error::{Error, Result};

/// Name of the epoch history file in a log directory.
pub const EPOCHS_FILE: &str = "epochs";
/// Most entries a history holds. Changing a limit is a format change.
pub const EPOCH_ENTRIES_MAX: usize = 1 << 16;
/// Largest epoch history file: a full history.
pub const EPOCHS_FILE_BYTES_MAX: u64 = (HEADER_BYTES + EPOCH_ENTRIES_MAX * ENTRY_BYTES + CRC_BYTES) as u64;
/// A reset of the log to `<start>` that must also clear the history is in progress while a file
/// named `epochs.reset.<start:020>` exists (FORMAT.md "Epoch history file").
pub const RESET_MARKER_PREFIX: &str = "epochs.reset.";

const EPOCHS_MAGIC: [u8; 8] = *b"TERNEPCH";
const EPOCHS_VERSION: u32 = 1;
/// Magic, version and entry count.
const HEADER_BYTES: usize = 16;
/// Epoch and start offset.
const ENTRY_BYTES: usize = 16;
const CRC_BYTES: usize = 4;
/// Stands for the file in errors of [`EpochHistory::decode`], which sees bytes, not a file.
const DECODED_BYTES: &str = "<epoch history bytes>";

const _: () = assert!(HEADER_BYTES == 8 + 4 + 4);
const _: () = assert!(ENTRY_BYTES == 8 + 8);
// Every entry count within the limit fits the u32 field.
const _: () = assert!(EPOCH_ENTRIES_MAX <= u32::MAX as usize);

/// One entry: from `start_offset` on (up to the next entry's start), batches carry `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EpochEntry {
    /// The leader epoch, at least 1 (epoch 0 means "no epoch" and is never recorded).
    pub epoch: u64,
    /// The first offset of the epoch in this log: the log's written end when the epoch began
    /// here.
    pub start_offset: u64,
}

/// The epochs of one log, oldest first: strictly increasing in epoch, non-decreasing in start
/// offset. Before the first entry, the implicit epoch 0 is in effect.
///
/// ```
/// use tern_wal::epochs::EpochHistory;
/// let mut history = EpochHistory::new();
/// history.record(1, 0)?;
/// history.record(2, 50)?;
/// history.record(4, 80)?;
/// assert_eq!(history.epoch_at(60), 2);
/// // Epoch 3 never wrote here: a follower whose last batch has epoch 3 keeps only what lies
/// // below where epoch 2, the newest epoch not after 3, ends.
/// assert_eq!(history.epoch_end(3, 120), (2, 80));
/// let again = EpochHistory::decode(&history.encode()).expect("a file just encoded decodes");
/// assert_eq!(again, history);
/// # Ok::<(), tern_wal::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochHistory {
    entries: Vec<EpochEntry>,
}

impl EpochHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The newest epoch (0 when empty).
    pub fn latest_epoch(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.epoch)
    }

    /// The epoch in effect at `offset`: that of the last entry starting at or before it (0 when
    /// none does).
    pub fn epoch_at(&self, offset: u64) -> u64 {
        let after = self.entries.partition_point(|e| e.start_offset <= offset);
        after.checked_sub(1).and_then(|i| self.entries.get(i)).map_or(0, |e| e.epoch)
    }

    /// Kafka's OffsetsForLeaderEpoch for a log whose written end is `written_end`: the newest
    /// epoch `E' <= epoch` and the offset where `E'` ends here (the next entry's start, or
    /// `written_end` when `E'` is the newest). When no entry is at or below `epoch`, `E'` is
    /// the implicit epoch 0, which ends where the first entry starts (`written_end` when the
    /// history is empty). See [`crate::Log::epoch_end`].
    pub fn epoch_end(&self, epoch: u64, written_end: u64) -> (u64, u64) {
        let after = self.entries.partition_point(|e| e.epoch <= epoch);
        let end_of = |next: usize| self.entries.get(next).map_or(written_end, |e| e.start_offset);
        match after.checked_sub(1).and_then(|i| self.entries.get(i)) {
            Some(entry) => (entry.epoch, end_of(after)),
            None => (0, end_of(0)),
        }
    }

    /// Records that `epoch` begins at `start_offset`. When the newest entry starts at the same
    /// offset, its epoch wrote nothing here and the new entry replaces it, so that epochs
    /// which never wrote a batch do not pile up (as Kafka's cache does).
    ///
    /// # Errors
    /// [`Error::Invalid`] when the history already holds [`EPOCH_ENTRIES_MAX`] entries.
    ///
    /// # Panics
    /// When `epoch` is 0 or not after the newest epoch, or `start_offset` is below the newest
    /// entry's start: the log checks both before, so either is a bug.
    pub fn record(&mut self, epoch: u64, start_offset: u64) -> Result<()> {
        assert!(epoch > self.latest_epoch(), "epoch {epoch} is not after {}", self.latest_epoch());
        if let Some(last) = self.entries.last() {
            assert!(start_offset >= last.start_offset, "epoch {epoch} starts at {start_offset}, before {last:?}");
            if last.start_offset == start_offset {
                self.entries.pop();
            }
        }
        if self.entries.len() >= EPOCH_ENTRIES_MAX {
            return Err(Error::Invalid(format!(
                "the epoch history holds {EPOCH_ENTRIES_MAX} epochs, its limit; epoch {epoch} cannot begin"
            )));
        }
        self.entries.push(EpochEntry { epoch, start_offset });
        Ok(())
    }

    /// Removes the entries starting at or after `offset`, whose epochs hold no batch once the
    /// log is cut at `offset`. Returns whether any was removed.
    pub fn truncate_from(&mut self, offset: u64) -> bool {
        let keep = self.entries.partition_point(|e| e.start_offset < offset);
        let changed = keep < self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// Removes the entries starting after `end`: a crash lost the batches that were written
    /// after them (an entry starting exactly at `end` stays: an epoch begun by a leader that
    /// has not written yet). Returns whether any was removed.
    pub fn truncate_after(&mut self, end: u64) -> bool {
        self.truncate_from(end.saturating_add(1))
    }

    /// Encodes the file (FORMAT.md "Epoch history file").
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.entries.len() <= EPOCH_ENTRIES_MAX, "{} epoch entries", self.entries.len());
        let count = u32::try_from(self.entries.len()).expect("bounded by EPOCH_ENTRIES_MAX");
        let len_bytes = HEADER_BYTES + self.entries.len() * ENTRY_BYTES + CRC_BYTES;
        let mut w = Vec::with_capacity(len_bytes);
        w.extend_from_slice(&EPOCHS_MAGIC);
        w.extend_from_slice(&EPOCHS_VERSION.to_le_bytes());
        w.extend_from_slice(&count.to_le_bytes());
        let mut previous: Option<&EpochEntry> = None;
        for entry in &self.entries {
            // `record` keeps the order; checked again here, as the decoder will.
            assert!(entry.epoch > previous.map_or(0, |p| p.epoch), "epochs out of order at {entry:?}");
            assert!(entry.start_offset >= previous.map_or(0, |p| p.start_offset), "starts out of order at {entry:?}");
            w.extend_from_slice(&entry.epoch.to_le_bytes());
            w.extend_from_slice(&entry.start_offset.to_le_bytes());
            previous = Some(entry);
        }
        let crc = crc32fast::hash(&w);
        w.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(w.len(), len_bytes);
        debug_assert_eq!(EpochHistory::decode(&w).ok().as_ref(), Some(self));
        w
    }

    /// Decodes and checks an epoch history file: its length is bounded, its magic and checksum
    /// are verified before anything else is read, the entry count is bounded by the limit and
    /// by the bytes present before anything is allocated, and the entries must be in order, so
    /// that a file decodes to exactly one history and encodes back to the same bytes. Never
    /// panics.
    ///
    /// # Errors
    /// [`tern_segment::Error::Corrupt`] with the position of the field found wrong; its file is
    /// `<epoch history bytes>`.
    pub fn decode(bytes: &[u8]) -> Result<EpochHistory, tern_segment::Error> {
        decode_file(bytes, Path::new(DECODED_BYTES))
    }

    /// Reads the history of the log in `dir`; a missing file is an empty history.
    ///
    /// # Errors
    /// [`tern_segment::Error::Corrupt`] (inside [`Error::Segment`]) naming the file and byte
    /// position when it is damaged; I/O errors.
    pub fn read(disk: &dyn Disk, dir: &Path) -> Result<EpochHistory> {
        let path = dir.join(EPOCHS_FILE);
        if !disk.exists(&path) {
            return Ok(EpochHistory::new());
        }
        let file = disk.open(&path).map_err(|e| Error::io(&path, e))?;
        let len_bytes = file.len().map_err(|e| Error::io(&path, e))?;
        if len_bytes > EPOCHS_FILE_BYTES_MAX {
            let reason = CorruptReason::Field("epoch history file longer than the entry limit allows");
            return Err(tern_segment::Error::Corrupt { file: path, pos: EPOCHS_FILE_BYTES_MAX, reason }.into());
        }
        let bytes = file.read_copy(0, len_bytes).map_err(|e| Error::io(&path, e))?;
        Ok(decode_file(&bytes, &path)?)
    }

    /// Replaces the history file of the log in `dir` with this history.
    ///
    /// # Durability
    /// Durable when this returns: a temporary file is written and synced, renamed over the
    /// file, and the directory is synced. A crash at any point leaves the previous file or the
    /// new one, whole.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write(&self, disk: &dyn Disk, dir: &Path) -> Result<()> {
        let path = dir.join(EPOCHS_FILE);
        write_file_atomic(disk, &path, &self.encode(), true).map_err(|e| Error::io(&path, e))
    }
}

/// Name of the marker of a reset to `start_offset` in progress.
pub fn reset_marker_name(start_offset: u64) -> String {
    format!("{RESET_MARKER_PREFIX}{start_offset:020}")
}

/// The reset start a marker file name stands for, if `name` is one.
pub fn parse_reset_marker(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(RESET_MARKER_PREFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn decode_file(bytes: &[u8], file: &Path) -> Result<EpochHistory, tern_segment::Error> {
    let corrupt = |pos: usize, reason| corrupt(file, pos, reason);
    if bytes.len() as u64 > EPOCHS_FILE_BYTES_MAX {
        let reason = CorruptReason::Field("epoch history longer than the entry limit allows");
        return Err(corrupt(0, reason));
    }
    if read(&mut Cursor::new(bytes), file, |cur| cur.take(EPOCHS_MAGIC.len()))? != EPOCHS_MAGIC {
        return Err(corrupt(0, CorruptReason::Magic));
    }
    let Some(crc_pos) = bytes.len().checked_sub(CRC_BYTES).filter(|pos| *pos >= HEADER_BYTES) else {
        let needed_bytes = (HEADER_BYTES + CRC_BYTES).saturating_sub(bytes.len()) as u64;
        return Err(corrupt(bytes.len(), CorruptReason::Truncated { needed_bytes }));
    };
    let (covered, crc_bytes) = bytes.split_at(crc_pos);
    let stored = read(&mut Cursor::new(crc_bytes), file, Cursor::u32_le)?;
    let computed = crc32fast::hash(covered);
    if stored != computed {
        return Err(corrupt(crc_pos, CorruptReason::Checksum { stored, computed }));
    }
    // Only the covered bytes from here, so the entries must end exactly at the checksum.
    let mut cur = Cursor::new(covered);
    read(&mut cur, file, |cur| cur.take(EPOCHS_MAGIC.len()))?;
    let version_pos = cur.pos();
    let version = read(&mut cur, file, Cursor::u32_le)?;
    if version != EPOCHS_VERSION {
        return Err(corrupt(version_pos, CorruptReason::Version { found: version }));
    }
    let count_pos = cur.pos();
    let count = read(&mut cur, file, Cursor::u32_le)?;
    // Bound the count by the limit and by the bytes left before trusting it with any work.
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    if count > EPOCH_ENTRIES_MAX {
        return Err(corrupt(count_pos, CorruptReason::Field("entry count above the limit")));
    }
    if count > cur.remaining_bytes() / ENTRY_BYTES {
        return Err(corrupt(count_pos, CorruptReason::Field("entry count exceeds what the file holds")));
    }
    let mut entries: Vec<EpochEntry> = Vec::with_capacity(count);
    for _ in 0..count {
        let entry_pos = cur.pos();
        let epoch = read(&mut cur, file, Cursor::u64_le)?;
        let start_offset = read(&mut cur, file, Cursor::u64_le)?;
        if epoch == 0 {
            return Err(corrupt(entry_pos, CorruptReason::Field("epoch 0 in the epoch history")));
        }
        if let Some(previous) = entries.last() {
            if epoch <= previous.epoch {
                return Err(corrupt(entry_pos, CorruptReason::Field("epochs not strictly increasing")));
            }
            if start_offset < previous.start_offset {
                return Err(corrupt(entry_pos + 8, CorruptReason::Field("epoch start offsets decreasing")));
            }
        }
        entries.push(EpochEntry { epoch, start_offset });
    }
    if cur.remaining_bytes() > 0 {
        return Err(corrupt(cur.pos(), CorruptReason::TrailingGarbage));
    }
    Ok(EpochHistory { entries })
}

fn corrupt(file: &Path, pos: usize, reason: CorruptReason) -> tern_segment::Error {
    tern_segment::Error::Corrupt { file: file.to_path_buf(), pos: pos as u64, reason }
}

/// Runs one cursor read; an error names the position where the read started.
fn read<'a, T>(
    cur: &mut Cursor<'a>,
    file: &Path,
    read: impl FnOnce(&mut Cursor<'a>) -> Result<T, CorruptReason>,
) -> Result<T, tern_segment::Error> {
    let pos = cur.pos();
    read(cur).map_err(|reason| corrupt(file, pos, reason))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn sample() -> EpochHistory {
        let mut history = EpochHistory::new();
        for (epoch, start) in [(1, 0), (2, 50), (4, 80), (9, 80 + (1 << 40))] {
            history.record(epoch, start).unwrap();
        }
        history
    }

    fn corrupt_at(result: Result<EpochHistory, tern_segment::Error>) -> (u64, CorruptReason) {
        match result {
            Err(tern_segment::Error::Corrupt { pos, reason, .. }) => (pos, reason),
            other => panic!("expected a corrupt error, got {other:?}"),
        }
    }

    /// `bytes` with its checksum made to match, so that the checks behind it are reached.
    fn with_crc(mut bytes: Vec<u8>) -> Vec<u8> {
        let crc_pos = bytes.len() - CRC_BYTES;
        let crc = crc32fast::hash(&bytes[..crc_pos]);
        bytes[crc_pos..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn the_layout_is_the_one_format_md_describes() {
        let mut history = EpochHistory::new();
        history.record(3, 0x0102).unwrap();
        let bytes = history.encode();
        assert_eq!(bytes.len(), HEADER_BYTES + ENTRY_BYTES + CRC_BYTES);
        assert_eq!(&bytes[..8], b"TERNEPCH");
        assert_eq!(bytes[8..12], 1u32.to_le_bytes());
        assert_eq!(bytes[12..16], 1u32.to_le_bytes());
        assert_eq!(bytes[16..24], 3u64.to_le_bytes());
        assert_eq!(bytes[24..32], 0x0102u64.to_le_bytes());
        assert_eq!(bytes[32..36], crc32fast::hash(&bytes[..32]).to_le_bytes());
        assert_eq!(EpochHistory::new().encode().len(), HEADER_BYTES + CRC_BYTES);
    }

    #[test]
    fn a_history_round_trips_and_every_flipped_bit_is_refused() {
        for history in [EpochHistory::new(), sample()] {
            let bytes = history.encode();
            assert_eq!(EpochHistory::decode(&bytes).unwrap(), history);
            for pos in 0..bytes.len() {
                for bit in 0..8 {
                    let mut bad = bytes.clone();
                    bad[pos] ^= 1 << bit;
                    assert!(EpochHistory::decode(&bad).is_err(), "bit {bit} of byte {pos} flipped");
                }
            }
            // Cut short anywhere, or with a byte more.
            for len in 0..bytes.len() {
                assert!(EpochHistory::decode(&bytes[..len]).is_err(), "cut to {len} bytes");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(EpochHistory::decode(&longer).is_err());
        }
    }

    #[test]
    fn errors_name_the_field_found_wrong() {
        let good = sample().encode();
        let mut bad = good.clone();
        bad[9] ^= 1;
        assert_eq!(corrupt_at(EpochHistory::decode(&with_crc(bad))).0, 8, "version");
        // A count larger than the file holds, and one above the limit.
        let mut bad = good.clone();
        bad[12..16].copy_from_slice(&5u32.to_le_bytes());
        assert_eq!(corrupt_at(EpochHistory::decode(&with_crc(bad))).0, 12);
        let mut bad = good.clone();
        bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(corrupt_at(EpochHistory::decode(&with_crc(bad))).0, 12);
        // Fewer entries than the bytes hold: the rest is garbage.
        let mut bad = good.clone();
        bad[12..16].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(corrupt_at(EpochHistory::decode(&with_crc(bad))), (16 + 3 * 16, CorruptReason::TrailingGarbage));
        // Entry 2 (epoch 4 at 80): its epoch repeated, made 0, and its start moved back.
        let entry = 16 + 2 * 16;
        let mut bad = good.clone();
        bad[entry..entry + 8].copy_from_slice(&2u64.to_le_bytes());
        assert_eq!(corrupt_at(EpochHistory::decode(&with_crc(bad))).0, entry as u64);
        let mut bad = good.clone();
        bad[16..24].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(corrupt_at(EpochHistory::decode(&with_crc(bad))).0, 16);
        let mut bad = good.clone();
        bad[entry + 8..entry + 16].copy_from_slice(&49u64.to_le_bytes());
        assert_eq!(corrupt_at(EpochHistory::decode(&with_crc(bad))).0, entry as u64 + 8);
        // The same start twice is allowed (an epoch that wrote nothing), as FORMAT.md says.
        let mut same = good.clone();
        same[entry + 8..entry + 16].copy_from_slice(&50u64.to_le_bytes());
        let same = EpochHistory::decode(&with_crc(same)).unwrap();
        assert_eq!(same.epoch_at(50), 4);
        assert_eq!(corrupt_at(EpochHistory::decode(b"TERNEPC")), (0, CorruptReason::Truncated { needed_bytes: 1 }));
        assert_eq!(corrupt_at(EpochHistory::decode(&good[..19])).0, 19);
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(corrupt_at(EpochHistory::decode(&bad)), (0, CorruptReason::Magic));
    }

    #[test]
    fn epoch_end_answers_as_kafka_does() {
        let mut history = EpochHistory::new();
        assert_eq!(history.epoch_end(3, 120), (0, 120), "empty: everything is epoch 0");
        history.record(1, 0).unwrap();
        history.record(2, 50).unwrap();
        history.record(4, 80).unwrap();
        assert_eq!(history.epoch_end(0, 120), (0, 0));
        assert_eq!(history.epoch_end(1, 120), (1, 50));
        assert_eq!(history.epoch_end(2, 120), (2, 80));
        assert_eq!(history.epoch_end(3, 120), (2, 80));
        assert_eq!(history.epoch_end(4, 120), (4, 120));
        assert_eq!(history.epoch_end(9, 120), (4, 120));
        assert_eq!(history.epoch_end(u64::MAX, 120), (4, 120));
        let mut late = EpochHistory::new();
        late.record(5, 30).unwrap();
        assert_eq!(late.epoch_end(4, 70), (0, 30), "before the first entry, epoch 0 is in effect");
        assert_eq!((late.epoch_at(29), late.epoch_at(30), late.epoch_at(u64::MAX)), (0, 5, 5));
    }

    #[test]
    fn an_epoch_that_wrote_nothing_is_replaced_and_truncation_drops_from_the_offset() {
        let mut history = EpochHistory::new();
        history.record(1, 10).unwrap();
        history.record(2, 10).unwrap();
        assert_eq!(history.entries(), [EpochEntry { epoch: 2, start_offset: 10 }]);
        history.record(3, 20).unwrap();
        history.record(5, 30).unwrap();
        assert!(!history.truncate_after(30), "an epoch starting at the end stays");
        assert!(history.truncate_after(29));
        assert_eq!(history.latest_epoch(), 3);
        assert!(!history.truncate_from(21));
        assert!(history.truncate_from(20));
        assert_eq!(history.latest_epoch(), 2);
        assert!(history.truncate_from(0));
        assert!(history.is_empty());
    }

    #[test]
    fn a_full_history_refuses_another_epoch() {
        let mut history = EpochHistory::new();
        for i in 0..EPOCH_ENTRIES_MAX as u64 {
            history.record(i + 1, i).unwrap();
        }
        let bytes = history.encode();
        assert_eq!(bytes.len() as u64, EPOCHS_FILE_BYTES_MAX);
        assert_eq!(EpochHistory::decode(&bytes).unwrap(), history);
        assert!(matches!(history.record(u64::MAX, u64::MAX), Err(Error::Invalid(_))));
        // Replacing the newest entry (an epoch that wrote nothing) needs no room.
        let last = EPOCH_ENTRIES_MAX as u64 - 1;
        history.record(u64::MAX, last).unwrap();
        assert_eq!(history.latest_epoch(), u64::MAX);
    }

    #[test]
    fn reset_markers_name_their_start() {
        let name = reset_marker_name(42);
        assert_eq!(name, "epochs.reset.00000000000000000042");
        assert_eq!(parse_reset_marker(&name), Some(42));
        assert_eq!(parse_reset_marker(&reset_marker_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_reset_marker("epochs.reset.42"), None);
        assert_eq!(parse_reset_marker("epochs.tmp"), None);
        assert_eq!(parse_reset_marker("epochs.reset.9999999999999999999x"), None);
        assert_eq!(parse_reset_marker("epochs.reset.99999999999999999999"), None, "above u64::MAX");
    }
}
