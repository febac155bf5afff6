//! The two small per-log files besides segments.
//!
//! `log.meta` (FORMAT.md "Log meta file") is authoritative and always written durably (temporary
//! file, fsync, rename, directory fsync): the log-start offset, the newest segment, a pending
//! suffix truncation, a generation that changes at every open, every suffix truncation and every
//! reset, and a [`Claim`]: how far the log's segments were synced when it was written. So after
//! any crash the log knows which segments must exist and a durable end below which damage is
//! corruption, never a torn tail.
//!
//! `checkpoint` (FORMAT.md "Checkpoint file") is written in place after every segment sync, into
//! one of two 64-byte slots alternately, and synced at a clean close, at every journal switch, and
//! at most every [`CHECKPOINT_SYNC_INTERVAL_MS`] while syncs go on. A slot only claims what a
//! completed sync made durable, so a slot that survives a crash tells the truth; a torn slot fails
//! its checksum and the other one is used; a slot from an older generation is ignored, so no claim
//! from before a truncation is ever trusted.
#![deny(clippy::indexing_slicing, clippy::cast_possible_truncation)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tern_segment::cursor::Cursor;
use tern_segment::disk::{read_small_file, write_file_atomic};
use tern_segment::segment::SEGMENT_HEADER_BYTES;
use tern_segment::{CorruptReason, Disk, DiskFile};

use crate::error::{Error, Result};

/// Name of the meta file in a log directory.
pub const META_FILE: &str = "log.meta";
/// Name of the checkpoint file in a log directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";
const META_MAGIC: [u8; 8] = *b"TERNMETA";
/// Meta file version written by this build. Version 1 (40 bytes, without the newest segment and
/// the claim) is still read.
pub const META_VERSION: u32 = 2;
const META_V1_BYTES: usize = 40;
/// Bytes of a version 2 meta file.
pub const META_BYTES: usize = 72;
const CHECKPOINT_MAGIC: [u8; 8] = *b"TERNCKPT";
const CHECKPOINT_VERSION: u32 = 1;
/// Bytes of one checkpoint slot.
pub const SLOT_BYTES: usize = 64;
/// No suffix truncation pending.
pub const NO_TRUNCATION: u64 = u64::MAX;
/// While syncs go on, a log's checkpoint file is synced at most this often (and always at a
/// clean close and a journal switch): the claim a power loss can lose is at most this old.
pub const CHECKPOINT_SYNC_INTERVAL_MS: u64 = 100;

/// A statement that a sync completed: every record below `end` is durable in the log's
/// segments, the segment starting at offset `segment_base` up to byte `pos`. Recovery verifies
/// the frames below a claim and treats damage there as corruption, never as a torn tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Claim {
    /// Base offset of the segment the claim is about.
    pub segment_base: u64,
    /// Bytes of that segment before this position were synced.
    pub pos: u64,
    /// Records before this offset were synced.
    pub end: u64,
}

impl Claim {
    /// The claim of an empty segment at `base`: nothing in it, everything before it.
    pub fn empty_segment(base: u64) -> Claim {
        Claim { segment_base: base, pos: SEGMENT_HEADER_BYTES, end: base }
    }
}

/// The authoritative per-log state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Changes at every open, every suffix truncation and every reset; checkpoint slots and
    /// journal entries of other generations are ignored.
    pub generation: u64,
    /// The log start: no record below it exists. Segments that begin below it are deleted (or
    /// deleted by recovery after a crash); after a reset, the empty segment at it is created
    /// by recovery if a crash came first (FORMAT.md "Log meta file").
    pub start_offset: u64,
    /// A suffix truncation to this offset is in progress ([`NO_TRUNCATION`] if none).
    pub truncate_to: u64,
    /// Base offset of the newest segment, recorded when a roll creates it: every segment from
    /// the one at `start_offset` to this one must exist. `None` in a version 1 file.
    pub last_base: Option<u64>,
    /// How far the segments were synced when this was written. `None` in a version 1 file.
    pub claim: Option<Claim>,
}

impl Meta {
    /// The meta of a new log whose empty first segment starts at `start_offset`.
    pub fn new_log(generation: u64, start_offset: u64) -> Meta {
        Meta {
            generation,
            start_offset,
            truncate_to: NO_TRUNCATION,
            last_base: Some(start_offset),
            claim: Some(Claim::empty_segment(start_offset)),
        }
    }

    /// Encodes the meta file (always the current version).
    pub fn encode(&self) -> Vec<u8> {
        let last_base = self.last_base.unwrap_or(self.start_offset);
        let claim = self.claim.unwrap_or_else(|| Claim::empty_segment(self.start_offset));
        let mut w = Vec::with_capacity(META_BYTES);
        w.extend_from_slice(&META_MAGIC);
        w.extend_from_slice(&META_VERSION.to_le_bytes());
        for field in
            [self.generation, self.start_offset, self.truncate_to, last_base, claim.segment_base, claim.pos, claim.end]
        {
            w.extend_from_slice(&field.to_le_bytes());
        }
        let crc = crc32fast::hash(&w);
        w.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(w.len(), META_BYTES);
        w
    }

    /// Decodes and checks the meta file (version 1 or 2).
    pub fn decode(buf: &[u8]) -> Result<Meta, CorruptReason> {
        if buf.len() != META_BYTES && buf.len() != META_V1_BYTES {
            return Err(CorruptReason::Field("meta file length"));
        }
        let mut cur = Cursor::new(buf);
        let covered = cur.clone().take(buf.len() - 4)?;
        if cur.take(8)? != META_MAGIC {
            return Err(CorruptReason::Magic);
        }
        let version = cur.u32_le()?;
        let (generation, start_offset, truncate_to) = (cur.u64_le()?, cur.u64_le()?, cur.u64_le()?);
        let (last_base, claim) = if buf.len() == META_BYTES {
            let last_base = cur.u64_le()?;
            let claim = Claim { segment_base: cur.u64_le()?, pos: cur.u64_le()?, end: cur.u64_le()? };
            (Some(last_base), Some(claim))
        } else {
            (None, None)
        };
        let stored = cur.u32_le()?;
        let computed = crc32fast::hash(covered);
        if stored != computed {
            return Err(CorruptReason::Checksum { stored, computed });
        }
        let expected_version = if buf.len() == META_BYTES { META_VERSION } else { 1 };
        if version != expected_version {
            return Err(CorruptReason::Version { found: version });
        }
        if let (Some(last_base), Some(claim)) = (last_base, claim) {
            let ordered = start_offset <= last_base
                && claim.segment_base >= start_offset
                && claim.segment_base <= last_base
                && claim.end >= claim.segment_base
                && claim.pos >= SEGMENT_HEADER_BYTES;
            if !ordered {
                return Err(CorruptReason::Field("meta segment range or claim"));
            }
        }
        Ok(Meta { generation, start_offset, truncate_to, last_base, claim })
    }

    /// Reads `log.meta` from `dir`. `Ok(None)` when it does not exist.
    pub fn read(disk: &dyn Disk, dir: &Path) -> Result<Option<Meta>> {
        let path = dir.join(META_FILE);
        if !disk.exists(&path) {
            return Ok(None);
        }
        let bytes = read_small_file(disk, &path, 4096).map_err(|e| Error::io(&path, e))?;
        let meta =
            Meta::decode(&bytes).map_err(|reason| tern_segment::Error::Corrupt { file: path, pos: 0, reason })?;
        Ok(Some(meta))
    }

    /// Replaces `log.meta` in `dir` durably.
    pub fn write(&self, disk: &dyn Disk, dir: &Path) -> Result<()> {
        let path = dir.join(META_FILE);
        write_file_atomic(disk, &path, &self.encode(), true).map_err(|e| Error::io(&path, e))
    }
}

/// What one checkpoint slot claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Increases with every slot written.
    pub seq: u64,
    /// Must equal the meta generation to be trusted.
    pub generation: u64,
    /// Written at a clean close: the log ends exactly at `durable_pos` / `durable_end`.
    pub clean: bool,
    /// Base offset of the segment the claim is about (the last segment when written).
    pub segment_base: u64,
    /// Bytes of that segment before this position were synced.
    pub durable_pos: u64,
    /// Records before this offset were synced.
    pub durable_end: u64,
}

impl Checkpoint {
    /// What the slot claims.
    pub fn claim(&self) -> Claim {
        Claim { segment_base: self.segment_base, pos: self.durable_pos, end: self.durable_end }
    }

    /// Encodes one slot.
    pub fn encode(&self) -> [u8; SLOT_BYTES] {
        let mut w = Vec::with_capacity(SLOT_BYTES);
        w.extend_from_slice(&CHECKPOINT_MAGIC);
        w.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
        w.extend_from_slice(&u32::from(self.clean).to_le_bytes());
        for field in [self.seq, self.generation, self.segment_base, self.durable_pos, self.durable_end] {
            w.extend_from_slice(&field.to_le_bytes());
        }
        let crc = crc32fast::hash(&w);
        w.extend_from_slice(&crc.to_le_bytes());
        w.resize(SLOT_BYTES, 0);
        let mut out = [0u8; SLOT_BYTES];
        out.copy_from_slice(&w);
        out
    }

    /// Decodes one slot; `None` when it is torn, blank or of another version.
    pub fn decode(buf: &[u8]) -> Option<Checkpoint> {
        let mut cur = Cursor::new(buf);
        let covered = cur.clone().take(56).ok()?;
        if cur.take(8).ok()? != CHECKPOINT_MAGIC || cur.u32_le().ok()? != CHECKPOINT_VERSION {
            return None;
        }
        let flags = cur.u32_le().ok()?;
        let cp = Checkpoint {
            clean: flags & 1 != 0,
            seq: cur.u64_le().ok()?,
            generation: cur.u64_le().ok()?,
            segment_base: cur.u64_le().ok()?,
            durable_pos: cur.u64_le().ok()?,
            durable_end: cur.u64_le().ok()?,
        };
        (cur.u32_le().ok()? == crc32fast::hash(covered) && flags <= 1).then_some(cp)
    }

    /// The newest valid slot of `generation` in `bytes` (the whole checkpoint file).
    pub fn newest(bytes: &[u8], generation: u64) -> Option<Checkpoint> {
        bytes
            .chunks(SLOT_BYTES)
            .take(2)
            .filter_map(Checkpoint::decode)
            .filter(|cp| cp.generation == generation)
            .max_by_key(|cp| cp.seq)
    }
}

/// Writes checkpoint slots in place, alternating between the two.
#[derive(Debug)]
pub struct CheckpointWriter {
    path: PathBuf,
    file: Arc<dyn DiskFile>,
    seq: u64,
    /// A slot was written since the file was last synced.
    unsynced: bool,
    /// When the file was last synced (or opened).
    synced_at: std::time::Instant,
    /// How long a written slot may stay unsynced while syncs go on.
    sync_interval: std::time::Duration,
}

impl CheckpointWriter {
    /// Opens (or creates) the checkpoint file of `dir`.
    pub fn open(disk: &dyn Disk, dir: &Path) -> Result<CheckpointWriter> {
        let path = dir.join(CHECKPOINT_FILE);
        let file = if disk.exists(&path) { disk.open(&path) } else { disk.create(&path, 0) };
        let file = file.map_err(|e| Error::io(&path, e))?;
        let len = file.len().map_err(|e| Error::io(&path, e))?;
        let seq = if len >= 2 * SLOT_BYTES as u64 {
            let bytes = file.read_copy(0, 2 * SLOT_BYTES as u64).map_err(|e| Error::io(&path, e))?;
            bytes.chunks(SLOT_BYTES).filter_map(Checkpoint::decode).map(|c| c.seq).max().unwrap_or(0)
        } else {
            0
        };
        Ok(CheckpointWriter {
            path,
            file,
            seq,
            unsynced: false,
            synced_at: std::time::Instant::now(),
            sync_interval: std::time::Duration::from_millis(CHECKPOINT_SYNC_INTERVAL_MS),
        })
    }

    /// Sets how long a written slot may stay unsynced while syncs go on (default
    /// [`CHECKPOINT_SYNC_INTERVAL_MS`]).
    #[must_use]
    pub fn with_sync_interval(mut self, interval: std::time::Duration) -> CheckpointWriter {
        self.sync_interval = interval;
        self
    }

    /// Reads the newest trusted slot of `generation` from `dir`.
    pub fn read(disk: &dyn Disk, dir: &Path, generation: u64) -> Result<Option<Checkpoint>> {
        let path = dir.join(CHECKPOINT_FILE);
        if !disk.exists(&path) {
            return Ok(None);
        }
        let bytes = read_small_file(disk, &path, 4096).map_err(|e| Error::io(&path, e))?;
        Ok(Checkpoint::newest(&bytes, generation))
    }

    /// Writes the next slot. With `sync`, the slot is durable when this returns.
    pub fn write(&mut self, mut cp: Checkpoint, sync: bool) -> Result<()> {
        self.seq += 1;
        cp.seq = self.seq;
        let pos = (self.seq % 2) * SLOT_BYTES as u64;
        self.file.write_at(pos, &cp.encode()).map_err(|e| Error::io(&self.path, e))?;
        self.unsynced = true;
        if sync {
            self.file.sync_data().map_err(|e| Error::io(&self.path, e))?;
            self.mark_synced();
        }
        Ok(())
    }

    /// True when a slot was written since the last sync and that sync is at least the sync
    /// interval old.
    pub fn sync_due(&self, now: std::time::Instant) -> bool {
        self.unsynced && now.saturating_duration_since(self.synced_at) >= self.sync_interval
    }

    /// The checkpoint file, for syncing it together with others.
    pub fn file(&self) -> &Arc<dyn DiskFile> {
        &self.file
    }

    /// The sequence number of the last slot written.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// True when a slot was written since the file was last synced.
    pub fn is_unsynced(&self) -> bool {
        self.unsynced
    }

    /// Notes that the file was synced after the slot numbered `seq` was written; a later slot
    /// stays unsynced.
    pub fn mark_synced_through(&mut self, seq: u64) {
        if self.seq == seq {
            self.mark_synced();
        }
    }

    /// Notes that the file was synced after the last slot was written.
    pub fn mark_synced(&mut self) {
        self.unsynced = false;
        self.synced_at = std::time::Instant::now();
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_rejects_damage() {
        let meta = Meta {
            last_base: Some(30),
            claim: Some(Claim { segment_base: 20, pos: 100, end: 25 }),
            ..Meta::new_log(3, 10)
        };
        let bytes = meta.encode();
        assert_eq!(Meta::decode(&bytes), Ok(meta));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Meta::decode(&bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn a_version_1_meta_is_read_without_segment_range_or_claim() {
        let mut w = Vec::new();
        w.extend_from_slice(b"TERNMETA");
        w.extend_from_slice(&1u32.to_le_bytes());
        for field in [4u64, 10, NO_TRUNCATION] {
            w.extend_from_slice(&field.to_le_bytes());
        }
        let crc = crc32fast::hash(&w);
        w.extend_from_slice(&crc.to_le_bytes());
        let meta = Meta::decode(&w).unwrap();
        assert_eq!((meta.generation, meta.start_offset, meta.last_base, meta.claim), (4, 10, None, None));
        // Written back, it becomes a version 2 file that claims nothing beyond its start.
        let again = Meta::decode(&meta.encode()).unwrap();
        assert_eq!((again.last_base, again.claim), (Some(10), Some(Claim::empty_segment(10))));
    }

    #[test]
    fn a_claim_outside_the_segment_range_is_corrupt() {
        let bad = Meta { claim: Some(Claim { segment_base: 50, pos: 32, end: 50 }), ..Meta::new_log(1, 0) };
        assert_eq!(Meta::decode(&bad.encode()), Err(CorruptReason::Field("meta segment range or claim")));
    }

    fn slot_at(disk: &tern_segment::sim::SimDisk, dir: &Path, slot: usize) -> Option<Checkpoint> {
        let bytes = read_small_file(disk, &dir.join(CHECKPOINT_FILE), 4096).unwrap();
        Checkpoint::decode(bytes.get(slot * SLOT_BYTES..(slot + 1) * SLOT_BYTES)?)
    }

    /// Slots alternate, so a torn write of one leaves the other; a reopened writer numbers on
    /// from the newest slot and writes over the older one.
    #[test]
    fn checkpoint_slots_alternate_and_a_reopened_writer_continues_the_numbering() {
        let disk = tern_segment::sim::SimDisk::new();
        let dir = Path::new("/log");
        let mut writer = CheckpointWriter::open(&disk, dir).unwrap();
        for end in [10, 20, 30] {
            writer.write(Checkpoint { generation: 7, durable_end: end, ..Default::default() }, true).unwrap();
        }
        assert_eq!(writer.seq(), 3);
        assert_eq!(slot_at(&disk, dir, 1).map(|c| (c.seq, c.durable_end)), Some((3, 30)));
        assert_eq!(slot_at(&disk, dir, 0).map(|c| (c.seq, c.durable_end)), Some((2, 20)));
        assert_eq!(CheckpointWriter::read(&disk, dir, 7).unwrap().map(|c| c.durable_end), Some(30));

        let mut writer = CheckpointWriter::open(&disk, dir).unwrap();
        assert_eq!(writer.seq(), 3, "numbering goes on from the newest slot");
        writer.write(Checkpoint { generation: 7, durable_end: 40, ..Default::default() }, true).unwrap();
        assert_eq!(slot_at(&disk, dir, 0).map(|c| (c.seq, c.durable_end)), Some((4, 40)), "over the older slot");
        assert_eq!(slot_at(&disk, dir, 1).map(|c| c.seq), Some(3), "the newer one untouched");
        assert_eq!(CheckpointWriter::read(&disk, dir, 7).unwrap().map(|c| c.durable_end), Some(40));
    }

    /// A written slot is synced once the interval since the last sync has passed, not before,
    /// and nothing is due when nothing was written; a sync covers only the slots written
    /// before it.
    #[test]
    fn a_checkpoint_slot_is_due_for_a_sync_only_after_the_interval_and_only_when_written() {
        use std::time::{Duration, Instant};
        let disk = tern_segment::sim::SimDisk::new();
        let interval = Duration::from_millis(CHECKPOINT_SYNC_INTERVAL_MS);
        let mut writer = CheckpointWriter::open(&disk, Path::new("/log")).unwrap();
        let later = Instant::now() + 2 * interval;
        assert!(!writer.sync_due(later), "nothing written");
        assert!(!writer.is_unsynced());

        writer.write(Checkpoint { generation: 1, durable_end: 5, ..Default::default() }, false).unwrap();
        assert!(writer.is_unsynced());
        assert!(!writer.sync_due(Instant::now()), "within the interval");
        assert!(writer.sync_due(later));

        writer.write(Checkpoint { generation: 1, durable_end: 6, ..Default::default() }, false).unwrap();
        writer.mark_synced_through(writer.seq() - 1);
        assert!(writer.is_unsynced(), "a sync from before the last slot does not cover it");
        writer.mark_synced_through(writer.seq());
        assert!(!writer.is_unsynced());
        assert!(!writer.sync_due(later + 2 * interval), "synced, nothing new");

        writer.write(Checkpoint { generation: 1, durable_end: 7, ..Default::default() }, false).unwrap();
        writer.mark_synced();
        assert!(!writer.is_unsynced());
        writer.write(Checkpoint { generation: 1, durable_end: 8, ..Default::default() }, true).unwrap();
        assert!(!writer.is_unsynced(), "a synced write leaves nothing unsynced");

        let eager = CheckpointWriter::open(&disk, Path::new("/other")).unwrap().with_sync_interval(Duration::ZERO);
        let mut eager = eager;
        eager.write(Checkpoint { generation: 1, durable_end: 1, ..Default::default() }, false).unwrap();
        assert!(eager.sync_due(Instant::now()), "with no interval, every slot is due at once");
    }

    #[test]
    fn newest_slot_of_the_generation_wins() {
        let a = Checkpoint { seq: 4, generation: 2, durable_pos: 100, ..Default::default() };
        let b = Checkpoint { seq: 5, generation: 1, durable_pos: 200, ..Default::default() };
        let mut file = a.encode().to_vec();
        file.extend_from_slice(&b.encode());
        assert_eq!(Checkpoint::newest(&file, 2), Some(a));
        assert_eq!(Checkpoint::newest(&file, 1), Some(b));
        file[70] ^= 1;
        assert_eq!(Checkpoint::newest(&file, 1), None);
    }
}
