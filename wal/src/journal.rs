//! The shared journal: one file stream that makes small appends of every log durable with a
//! single `fdatasync` per group, however many logs the group touched.
//!
//! Measured on this class of machine (ARCHITECTURE.md): one `fdatasync` per log file costs
//! about one device flush each, even when the syncs of 16 files are submitted together through
//! io_uring (16 files: ~360 us per round against ~60 us for one file). So small batches are
//! written twice: into their log's segment (page cache only, for zero-copy reads) and, by the
//! committer, into this journal, whose one sync makes the whole group durable. Batches of
//! [`DIRECT_BATCH_BYTES`] or more skip the journal; their log's segment is synced instead.
//!
//! Two journal files, `a.jnl` and `b.jnl`, are created filled with written zeros, so a sync of
//! an overwrite never has to persist extent conversions. The one with the highest valid header
//! sequence is current. When it is full, the committer syncs the segments of every log that
//! wrote into it, then switches to the other file with the next sequence number. Recovery
//! replays the current file's blocks into the logs; blocks of another sequence are stale.
//!
//! Format (FORMAT.md "Journal"): header `{ magic "TERNJRNL" | version u32 | flags u32 |
//! seq u64 | zeros | crc32 u32 at 60 }` (64 bytes); then blocks `{ len u32 | crc32 u32 |
//! seq u64 | entries }` where the crc covers `len` and everything after the crc, and each entry
//! is `{ name_len u16 | name | generation u64 | batch frame }`. The generation is the log's
//! meta generation when the batch was written; a suffix truncation changes it, so entries for
//! records that were later truncated are never replayed.
#![deny(clippy::indexing_slicing, clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tern_segment::cursor::Cursor;
use tern_segment::{frame, Disk, DiskFile};

use crate::error::{Error, Result};

/// Batches of at least this many bytes skip the journal: their log's segment is synced.
pub const DIRECT_BATCH_BYTES: usize = 64 << 10;
/// Default size of each of the two journal files.
pub const JOURNAL_FILE_BYTES_DEFAULT: u64 = 16 << 20;
/// Bytes of the journal file header.
pub const JOURNAL_HEADER_BYTES: u64 = HEADER_LEN as u64;
const HEADER_LEN: usize = 64;
/// Bytes before a block's entries: `len u32 | crc u32 | seq u64`.
pub const BLOCK_HEADER_BYTES: usize = 16;
const MAGIC: [u8; 8] = *b"TERNJRNL";
const VERSION: u32 = 1;
const FLAG_CLEAN: u32 = 1;
const NAMES: [&str; 2] = ["a.jnl", "b.jnl"];
/// Longest log name an entry may carry.
pub const NAME_BYTES_MAX: usize = 255;

/// Where the journal lives and how large its files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalOptions {
    /// Directory of the two journal files.
    pub dir: PathBuf,
    /// Size of each journal file.
    pub file_bytes: u64,
}

/// Batch frames found in the journal at open, per log name, in order, with the log
/// generation each was written under.
pub type Replay = BTreeMap<String, Vec<(u64, Bytes)>>;

/// Encodes a journal header.
#[allow(clippy::indexing_slicing)] // fixed-size array written in place
pub fn encode_header(seq: u64, clean: bool) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(if clean { FLAG_CLEAN } else { 0 }).to_le_bytes());
    out[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&out[..60]);
    out[60..64].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a journal header: `(seq, clean)`, or `None` when it is not a valid header.
pub fn decode_header(buf: &[u8]) -> Option<(u64, bool)> {
    let covered = buf.get(..60)?;
    let mut cur = Cursor::new(buf);
    if cur.take(8).ok()? != MAGIC || cur.u32_le().ok()? != VERSION {
        return None;
    }
    let flags = cur.u32_le().ok()?;
    let seq = cur.u64_le().ok()?;
    let stored = u32::from_le_bytes(buf.get(60..64)?.try_into().ok()?);
    (stored == crc32fast::hash(covered) && flags & !FLAG_CLEAN == 0).then_some((seq, flags & FLAG_CLEAN != 0))
}

/// Appends one entry (a log's batch frame) to a block being staged.
#[expect(clippy::cast_possible_truncation)] // NOTE: names are bounded by NAME_BYTES_MAX
pub fn stage_entry(block: &mut Vec<u8>, name: &str, generation: u64, frame_bytes: &[u8]) {
    assert!(name.len() <= NAME_BYTES_MAX, "log name too long for the journal");
    if block.is_empty() {
        block.resize(BLOCK_HEADER_BYTES, 0);
    }
    block.extend_from_slice(&(name.len() as u16).to_le_bytes());
    block.extend_from_slice(name.as_bytes());
    block.extend_from_slice(&generation.to_le_bytes());
    block.extend_from_slice(frame_bytes);
}

/// Fills in the header of a staged block for journal `seq`.
#[allow(clippy::indexing_slicing)] // the block starts with its reserved header
#[expect(clippy::cast_possible_truncation)] // NOTE: blocks are bounded by the journal file size
pub fn seal_block(block: &mut [u8], seq: u64) {
    assert!(block.len() > BLOCK_HEADER_BYTES, "an empty block");
    let len = (block.len() - 8) as u32;
    block[..4].copy_from_slice(&len.to_le_bytes());
    block[8..16].copy_from_slice(&seq.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&block[..4]);
    h.update(&block[8..]);
    let crc = h.finalize();
    block[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the blocks of a journal file body (after the header) whose sequence is `seq`,
/// stopping at the first block that is torn, stale or damaged. Returns the entries and the
/// byte length of the valid blocks.
pub fn decode_blocks(body: &Bytes, seq: u64) -> (Vec<(String, u64, Bytes)>, usize) {
    let mut entries = Vec::new();
    let mut pos = 0usize;
    loop {
        let rest = body.get(pos..).unwrap_or_default();
        let mut cur = Cursor::new(rest);
        let Ok(len_field) = cur.take(4) else { break };
        let len = u32::from_le_bytes(len_field.try_into().unwrap_or_default()) as usize;
        if len < BLOCK_HEADER_BYTES - 8 || len > rest.len().saturating_sub(8) {
            break;
        }
        let Ok(stored) = cur.u32_le() else { break };
        let Ok(covered) = cur.take(len) else { break };
        let mut h = crc32fast::Hasher::new();
        h.update(len_field);
        h.update(covered);
        if h.finalize() != stored {
            break;
        }
        let mut block = Cursor::new(covered);
        if block.u64_le().ok() != Some(seq) {
            break;
        }
        let block_start = pos + BLOCK_HEADER_BYTES;
        let mut parsed = Vec::new();
        let mut ok = true;
        while block.remaining_bytes() > 0 {
            let Some(entry) = decode_entry(&mut block, body, block_start) else {
                ok = false;
                break;
            };
            parsed.push(entry);
        }
        if !ok {
            // A block with a good checksum but bad entries was not written by Tern: stop.
            break;
        }
        entries.extend(parsed);
        pos += 8 + len;
    }
    (entries, pos)
}

fn decode_entry(block: &mut Cursor<'_>, body: &Bytes, block_start: usize) -> Option<(String, u64, Bytes)> {
    let name_len = usize::from(block.u16_le().ok()?);
    if name_len == 0 || name_len > NAME_BYTES_MAX {
        return None;
    }
    let name = std::str::from_utf8(block.take(name_len).ok()?).ok()?.to_owned();
    let generation = block.u64_le().ok()?;
    let frame_start = block_start + block.pos() - BLOCK_HEADER_BYTES + 8;
    let rest = body.get(frame_start..)?;
    let frame_len = frame::decode(rest).ok()??.frame_len;
    block.take(frame_len).ok()?;
    Some((name, generation, body.slice(frame_start..frame_start + frame_len)))
}

/// The journal files and the write position, owned by the committer.
#[derive(Debug)]
pub(crate) struct Journal {
    dir: PathBuf,
    file_bytes: u64,
    files: Vec<(PathBuf, Arc<dyn DiskFile>)>,
    current: usize,
    seq: u64,
    pos: u64,
}

impl Journal {
    /// Opens (creating when missing) the journal and returns what must be replayed.
    pub(crate) fn open(disk: Arc<dyn Disk>, options: &JournalOptions) -> Result<(Journal, Replay)> {
        let dir = options.dir.clone();
        if options.file_bytes < JOURNAL_HEADER_BYTES + (1 << 16) || options.file_bytes > (1 << 30) {
            return Err(Error::Invalid(format!("journal file size {} is outside 128 KiB..=1 GiB", options.file_bytes)));
        }
        if !disk.exists(&dir) {
            disk.create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            if let Some(parent) = dir.parent() {
                disk.sync_dir(parent).map_err(|e| Error::io(parent, e))?;
            }
        }
        let mut files = Vec::with_capacity(2);
        let mut created = false;
        for name in NAMES {
            let path = dir.join(name);
            let file = if disk.exists(&path) {
                disk.open(&path).map_err(|e| Error::io(&path, e))?
            } else {
                created = true;
                create_zeroed(&*disk, &path, options.file_bytes)?
            };
            files.push((path, file));
        }
        if created {
            disk.sync_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        let mut headers = Vec::with_capacity(2);
        for (path, file) in &files {
            let len = file.len().map_err(|e| Error::io(path, e))?;
            let header = if len >= JOURNAL_HEADER_BYTES {
                decode_header(&file.read_copy(0, JOURNAL_HEADER_BYTES).map_err(|e| Error::io(path, e))?)
            } else {
                None
            };
            headers.push((header, len));
        }
        let file_bytes = headers.iter().map(|(_, len)| *len).min().unwrap_or(options.file_bytes);
        let current = headers.iter().enumerate().filter_map(|(i, (h, _))| h.map(|(seq, clean)| (seq, clean, i))).max();
        let mut replay = Replay::new();
        let (seq, current) = match current {
            Some((seq, clean, i)) => {
                if !clean {
                    let (path, file) = files.get(i).ok_or_else(|| Error::Invalid("journal file".into()))?;
                    let body = file
                        .read_at(JOURNAL_HEADER_BYTES, file_bytes - JOURNAL_HEADER_BYTES)
                        .map_err(|e| Error::io(path, e))?;
                    let (entries, _) = decode_blocks(&body, seq);
                    for (name, generation, frame) in entries {
                        replay.entry(name).or_default().push((generation, frame));
                    }
                }
                (seq, i)
            }
            None => (0, 1),
        };
        let journal = Journal { dir, file_bytes, files, current, seq, pos: file_bytes };
        Ok((journal, replay))
    }

    /// Sequence number blocks must carry now.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Bytes left in the current file.
    pub(crate) fn remaining_bytes(&self) -> u64 {
        self.file_bytes.saturating_sub(self.pos)
    }

    /// Largest block that fits in an empty journal file.
    pub(crate) fn block_bytes_max(&self) -> u64 {
        self.file_bytes - JOURNAL_HEADER_BYTES
    }

    /// The current file, for syncing.
    pub(crate) fn file(&self) -> Option<&Arc<dyn DiskFile>> {
        self.files.get(self.current).map(|(_, f)| f)
    }

    /// Path of the current file.
    pub(crate) fn path(&self) -> &Path {
        self.files.get(self.current).map_or(self.dir.as_path(), |(p, _)| p.as_path())
    }

    /// Writes a sealed block at the write position (not yet synced).
    pub(crate) fn write(&mut self, block: &[u8]) -> Result<()> {
        assert!(block.len() as u64 <= self.remaining_bytes(), "block does not fit; switch first");
        let (path, file) = self.files.get(self.current).ok_or_else(|| Error::Invalid("journal file".into()))?;
        file.write_at(self.pos, block).map_err(|e| Error::io(path, e))?;
        self.pos += block.len() as u64;
        Ok(())
    }

    /// Starts the other file with the next sequence number, carrying over the current file's
    /// entries of the logs named in `carry` as its first block, and returns how many entries it
    /// carried. The caller must first have synced every other segment that the current file's
    /// blocks describe: the rest of it is stale from now on. The new file is marked clean only
    /// when `clean` is asked and nothing was carried.
    pub(crate) fn switch_carrying(&mut self, clean: bool, carry: &[&str]) -> Result<usize> {
        let mut block = Vec::new();
        let mut carried = 0;
        if !carry.is_empty() {
            let (path, file) = self.files.get(self.current).ok_or_else(|| Error::Invalid("journal file".into()))?;
            let written = self.pos.min(self.file_bytes).saturating_sub(JOURNAL_HEADER_BYTES);
            let body = file.read_at(JOURNAL_HEADER_BYTES, written).map_err(|e| Error::io(path, e))?;
            for (name, generation, frame) in decode_blocks(&body, self.seq).0 {
                if carry.contains(&name.as_str()) {
                    stage_entry(&mut block, &name, generation, &frame);
                    carried += 1;
                }
            }
        }
        let next = (self.current + 1) % self.files.len();
        let seq = self.seq + 1;
        let mut bytes = encode_header(seq, clean && carried == 0).to_vec();
        if carried > 0 {
            seal_block(&mut block, seq);
            bytes.extend_from_slice(&block);
        }
        let (path, file) = self.files.get(next).ok_or_else(|| Error::Invalid("journal file".into()))?;
        if bytes.len() as u64 > self.file_bytes {
            return Err(Error::Invalid(format!(
                "the journal entries of fenced logs ({} bytes) no longer fit a journal file; reopen the engine",
                block.len()
            )));
        }
        file.write_at(0, &bytes).map_err(|e| Error::io(path, e))?;
        file.sync_data().map_err(|e| Error::io(path, e))?;
        self.current = next;
        self.seq = seq;
        self.pos = bytes.len() as u64;
        Ok(carried)
    }
}

fn create_zeroed(disk: &dyn Disk, path: &Path, len_bytes: u64) -> Result<Arc<dyn DiskFile>> {
    let file = disk.create(path, 0).map_err(|e| Error::io(path, e))?;
    let zeros = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < len_bytes {
        let n = usize::try_from(len_bytes - pos).unwrap_or(usize::MAX).min(zeros.len());
        file.write_at(pos, zeros.get(..n).unwrap_or_default()).map_err(|e| Error::io(path, e))?;
        pos += n as u64;
    }
    file.sync_data().map_err(|e| Error::io(path, e))?;
    Ok(file)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use tern_segment::frame::{encode, BatchMeta, Record};

    fn frame_of(base: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, &BatchMeta { base_offset: base, ..Default::default() }, &[Record::new(b"v", 1)]).unwrap();
        out
    }

    #[test]
    fn blocks_round_trip_and_stop_at_stale_or_torn_ones() {
        let mut body = Vec::new();
        for (seq, base) in [(7, 0), (7, 1), (6, 2)] {
            let mut block = Vec::new();
            stage_entry(&mut block, "orders", 3, &frame_of(base));
            stage_entry(&mut block, "events-1", 3, &frame_of(base));
            seal_block(&mut block, seq);
            body.extend_from_slice(&block);
        }
        let good_len = body.len() * 2 / 3;
        let body = Bytes::from(body);
        let (entries, used) = decode_blocks(&body, 7);
        assert_eq!(entries.len(), 4);
        assert_eq!(used, good_len);
        assert_eq!((entries[0].0.as_str(), entries[0].1), ("orders", 3));
        let mut torn = body.to_vec();
        torn[good_len - 3] ^= 1;
        assert_eq!(decode_blocks(&Bytes::from(torn), 7).0.len(), 2);
    }

    #[test]
    fn headers_round_trip() {
        assert_eq!(decode_header(&encode_header(9, true)), Some((9, true)));
        let mut bad = encode_header(9, false);
        bad[17] ^= 1;
        assert_eq!(decode_header(&bad), None);
    }
}
