//! The two small per-log files besides segments.
//!
//! `log.meta` (FORMAT.md "Log meta file") is authoritative and always written durably (temporary
//! file, fsync, rename, directory fsync): the log-start offset, a pending suffix truncation, and
//! a generation that changes at every open, every suffix truncation and every reset.
//!
//! `checkpoint` (FORMAT.md "Checkpoint file") is a hint written in place after every group
//! sync, without its own fsync, into one of two 64-byte slots alternately. A slot only claims
//! what a completed sync made durable, so a slot that survives a crash tells the truth; a torn
//! slot fails its checksum and the other one is used; a slot from an older generation is
//! ignored, so no claim from before a truncation or from an earlier run is ever trusted.
#![deny(clippy::indexing_slicing, clippy::cast_possible_truncation)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tern_segment::cursor::Cursor;
use tern_segment::disk::{read_small_file, write_file_atomic};
use tern_segment::{CorruptReason, Disk, DiskFile};

use crate::error::{Error, Result};

/// Name of the meta file in a log directory.
pub const META_FILE: &str = "log.meta";
/// Name of the checkpoint file in a log directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";
const META_MAGIC: [u8; 8] = *b"TERNMETA";
const META_VERSION: u32 = 1;
const META_BYTES: usize = 40;
const CHECKPOINT_MAGIC: [u8; 8] = *b"TERNCKPT";
const CHECKPOINT_VERSION: u32 = 1;
/// Bytes of one checkpoint slot.
pub const SLOT_BYTES: usize = 64;
/// No suffix truncation pending.
pub const NO_TRUNCATION: u64 = u64::MAX;

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
}

impl Meta {
    /// Encodes the meta file.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(META_BYTES);
        w.extend_from_slice(&META_MAGIC);
        w.extend_from_slice(&META_VERSION.to_le_bytes());
        for field in [self.generation, self.start_offset, self.truncate_to] {
            w.extend_from_slice(&field.to_le_bytes());
        }
        let crc = crc32fast::hash(&w);
        w.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(w.len(), META_BYTES);
        w
    }

    /// Decodes and checks the meta file.
    pub fn decode(buf: &[u8]) -> Result<Meta, CorruptReason> {
        if buf.len() != META_BYTES {
            return Err(CorruptReason::Field("meta file length"));
        }
        let mut cur = Cursor::new(buf);
        let covered = cur.clone().take(META_BYTES - 4)?;
        if cur.take(8)? != META_MAGIC {
            return Err(CorruptReason::Magic);
        }
        let version = cur.u32_le()?;
        let meta = Meta { generation: cur.u64_le()?, start_offset: cur.u64_le()?, truncate_to: cur.u64_le()? };
        let stored = cur.u32_le()?;
        let computed = crc32fast::hash(covered);
        if stored != computed {
            return Err(CorruptReason::Checksum { stored, computed });
        }
        if version != META_VERSION {
            return Err(CorruptReason::Version { found: version });
        }
        Ok(meta)
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
        Ok(CheckpointWriter { path, file, seq })
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
        if sync {
            self.file.sync_data().map_err(|e| Error::io(&self.path, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_rejects_damage() {
        let meta = Meta { generation: 3, start_offset: 10, truncate_to: NO_TRUNCATION };
        let bytes = meta.encode();
        assert_eq!(Meta::decode(&bytes), Ok(meta));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Meta::decode(&bad).is_err(), "byte {i}");
        }
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
