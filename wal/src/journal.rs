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
    // Bytes 24..60 are zero in version 1: a header with anything there was not written by it,
    // even when its checksum holds.
    let reserved_zero = covered.get(24..).is_some_and(|r| r.iter().all(|&b| b == 0));
    let stored = u32::from_le_bytes(buf.get(60..64)?.try_into().ok()?);
    (stored == crc32fast::hash(covered) && flags & !FLAG_CLEAN == 0 && reserved_zero)
        .then_some((seq, flags & FLAG_CLEAN != 0))
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

/// Where, at or after `from`, a block of journal `seq` with a valid checksum starts in `body`:
/// the next block after a damaged one. A block of another sequence (stale, from an earlier use
/// of the file) never matches.
pub fn next_valid_block(body: &[u8], from: usize, seq: u64) -> Option<usize> {
    let seq_bytes = seq.to_le_bytes();
    let mut pos = from;
    while pos + BLOCK_HEADER_BYTES <= body.len() {
        if body.get(pos + 8..pos + 16) == Some(&seq_bytes[..]) {
            let len =
                body.get(pos..pos + 4).map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or_default())) as usize;
            if len >= BLOCK_HEADER_BYTES - 8 && pos + 8 + len <= body.len() {
                let stored =
                    body.get(pos + 4..pos + 8).map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
                let mut h = crc32fast::Hasher::new();
                h.update(body.get(pos..pos + 4).unwrap_or_default());
                h.update(body.get(pos + 8..pos + 8 + len).unwrap_or_default());
                if h.finalize() == stored {
                    return Some(pos);
                }
            }
        }
        pos += 1;
    }
    None
}

/// What one journal file is, as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    /// A valid header.
    Valid {
        /// Its sequence number: the highest is the current file.
        seq: u64,
        /// Marked clean by an engine that closed every log first: nothing in it is needed.
        clean: bool,
        /// The file's length.
        len_bytes: u64,
    },
    /// Long enough, without a valid header: never used (zeros), or a switch to it that a crash
    /// cut short (the other file is then still current). Nothing in it is current.
    Unused {
        /// The file's length.
        len_bytes: u64,
    },
    /// Missing, not a regular file, unreadable, or too short to be a journal file.
    Unusable {
        /// What is wrong with it.
        reason: String,
    },
}

/// A damaged place in the journal: a file, a byte position, and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalDamage {
    /// The damaged file.
    pub file: PathBuf,
    /// Byte position of the damage.
    pub pos: u64,
    /// What is wrong.
    pub reason: String,
}

/// What [`inspect`] found in a journal directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// Each journal file with its state.
    pub files: Vec<(PathBuf, FileState)>,
    /// The current file (the valid header with the highest sequence), if any.
    pub current: Option<usize>,
    /// Damage that can cost acknowledged records: a file that cannot be used while the other has
    /// a valid header (every file of a journal that finished its creation has one, so the
    /// unusable one may have been current),
    /// or, in a current file not marked clean, a block that fails its checksum with a valid
    /// block of the same sequence after it (a torn last block is a crash, not damage).
    pub damage: Vec<JournalDamage>,
}

/// The smallest journal file this build writes or accepts.
pub const JOURNAL_FILE_BYTES_MIN: u64 = JOURNAL_HEADER_BYTES + (1 << 16);

/// Looks at the journal in `dir` without changing anything (for `tern verify` and for open).
///
/// # Errors
/// I/O errors other than a file that is missing or cannot be opened (which is its state).
pub fn inspect(disk: &dyn Disk, dir: &Path) -> Result<Inspection> {
    let mut files = Vec::with_capacity(NAMES.len());
    for name in NAMES {
        let path = dir.join(name);
        let state = file_state(disk, &path);
        files.push((path, state));
    }
    let current = files
        .iter()
        .enumerate()
        .filter_map(|(i, (_, state))| match state {
            FileState::Valid { seq, .. } => Some((*seq, i)),
            _ => None,
        })
        .max()
        .map(|(_, i)| i);
    let mut damage = Vec::new();
    if current.is_some() {
        for (path, state) in &files {
            if let FileState::Unusable { reason } = state {
                damage.push(JournalDamage { file: path.clone(), pos: 0, reason: reason.clone() });
            }
        }
    }
    if let Some((path, FileState::Valid { seq, clean: false, len_bytes })) = current.and_then(|i| files.get(i)) {
        let file = disk.open(path).map_err(|e| Error::io(path, e))?;
        let body =
            file.read_at(JOURNAL_HEADER_BYTES, len_bytes - JOURNAL_HEADER_BYTES).map_err(|e| Error::io(path, e))?;
        let (_, valid_len) = decode_blocks(&body, *seq);
        if let Some(next) = next_valid_block(&body, valid_len + 1, *seq) {
            damage.push(JournalDamage {
                file: path.clone(),
                pos: JOURNAL_HEADER_BYTES + valid_len as u64,
                reason: format!(
                    "a block fails its checksum, and a valid block of the same sequence follows at byte {}",
                    JOURNAL_HEADER_BYTES + next as u64
                ),
            });
        }
    }
    Ok(Inspection { files, current, damage })
}

fn file_state(disk: &dyn Disk, path: &Path) -> FileState {
    let unusable = |reason: String| FileState::Unusable { reason };
    if !disk.exists(path) {
        return unusable("missing".into());
    }
    let file = match disk.open(path) {
        Ok(file) => file,
        Err(e) => return unusable(format!("cannot be opened as a file: {e}")),
    };
    let len_bytes = match file.len() {
        Ok(len) => len,
        Err(e) => return unusable(format!("cannot be read: {e}")),
    };
    if len_bytes < JOURNAL_FILE_BYTES_MIN {
        return unusable(format!("{len_bytes} bytes, shorter than a journal file ({JOURNAL_FILE_BYTES_MIN})"));
    }
    match file.read_copy(0, JOURNAL_HEADER_BYTES) {
        Ok(header) => match decode_header(&header) {
            Some((seq, clean)) => FileState::Valid { seq, clean, len_bytes },
            None => FileState::Unused { len_bytes },
        },
        Err(e) => unusable(format!("cannot be read: {e}")),
    }
}

/// What [`rebuild`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Entries read from the current file (before and after any damage) and kept in the new
    /// one, so that the next open replays them as before.
    pub salvaged_entries: u64,
    /// The logs those entries belong to.
    pub logs: Vec<String>,
    /// Files that were moved aside (`<name>.damaged`, `.damaged.1`, ...) for the operator.
    pub moved_aside: Vec<PathBuf>,
}

/// Rebuilds the journal in `options.dir` from whatever can be read, for `tern repair`: every
/// entry of the current file that decodes (damaged blocks are skipped) is carried into a new
/// current file; both files are recreated at their full size, filled with written zeros; the old
/// ones are moved aside, never deleted. The engine must not be open.
///
/// Records acknowledged through entries that could not be read are not restored: the logs
/// that relied on them recover to what their segments hold.
///
/// # Errors
/// I/O errors; [`Error::Invalid`] for a bad size or when the salvaged entries do not fit a file.
pub fn rebuild(disk: &dyn Disk, options: &JournalOptions) -> Result<Rebuilt> {
    check_file_bytes(options.file_bytes)?;
    let dir = &options.dir;
    if !disk.exists(dir) {
        disk.create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let inspection = inspect(disk, dir)?;
    let mut rebuilt = Rebuilt::default();
    let mut block = Vec::new();
    let mut seq = 0;
    if let Some((path, FileState::Valid { seq: current, clean, len_bytes })) =
        inspection.current.and_then(|i| inspection.files.get(i))
    {
        seq = *current;
        if !clean {
            let file = disk.open(path).map_err(|e| Error::io(path, e))?;
            let body =
                file.read_at(JOURNAL_HEADER_BYTES, len_bytes - JOURNAL_HEADER_BYTES).map_err(|e| Error::io(path, e))?;
            let mut pos = 0;
            loop {
                let (entries, valid_len) = decode_blocks(&body.slice(pos..), *current);
                for (name, generation, frame) in entries {
                    stage_entry(&mut block, &name, generation, &frame);
                    rebuilt.salvaged_entries += 1;
                    if !rebuilt.logs.contains(&name) {
                        rebuilt.logs.push(name);
                    }
                }
                match next_valid_block(&body, pos + valid_len + 1, *current) {
                    Some(next) => pos = next,
                    None => break,
                }
            }
        }
    }
    let seq = seq + 1;
    let mut first = encode_header(seq, block.is_empty()).to_vec();
    if !block.is_empty() {
        seal_block(&mut block, seq);
        first.extend_from_slice(&block);
    }
    if first.len() as u64 > options.file_bytes {
        return Err(Error::Invalid(format!(
            "the salvaged journal entries ({} bytes) do not fit a journal file",
            block.len()
        )));
    }
    // Build both new files under temporary names, then move the old ones aside and rename.
    let mut built = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let tmp = dir.join(format!("{name}.tmp"));
        if disk.exists(&tmp) {
            disk.remove(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        let file = create_zeroed(disk, &tmp, options.file_bytes)?;
        if i == 0 {
            file.write_at(0, &first).map_err(|e| Error::io(&tmp, e))?;
            file.sync_data().map_err(|e| Error::io(&tmp, e))?;
        } else {
            stamp_created(&tmp, &*file)?;
        }
        built.push((tmp, dir.join(name)));
    }
    for (tmp, path) in built {
        if disk.exists(&path) {
            let aside = (0..)
                .map(|n| {
                    if n == 0 {
                        format!("{}.damaged", path.display())
                    } else {
                        format!("{}.damaged.{n}", path.display())
                    }
                })
                .map(PathBuf::from)
                .find(|p| !disk.exists(p))
                .unwrap_or_default();
            disk.rename(&path, &aside).map_err(|e| Error::io(&path, e))?;
            rebuilt.moved_aside.push(aside);
        }
        disk.rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    }
    disk.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    Ok(rebuilt)
}

fn check_file_bytes(file_bytes: u64) -> Result<()> {
    if !(JOURNAL_FILE_BYTES_MIN..=(1 << 30)).contains(&file_bytes) {
        return Err(Error::Invalid(format!("journal file size {file_bytes} is outside 128 KiB..=1 GiB")));
    }
    Ok(())
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
    ///
    /// # Errors
    /// [`Error::JournalDamaged`] when the journal was in use and a file cannot be used, or the
    /// current file has a damaged block before valid ones ([`inspect`]): what was lost may have
    /// been acknowledged. The engine opens anyway when every log was closed cleanly (nothing in
    /// the journal is needed); otherwise [`rebuild`] mends it when an operator asks.
    pub(crate) fn open(disk: Arc<dyn Disk>, options: &JournalOptions) -> Result<(Journal, Replay)> {
        let dir = options.dir.clone();
        check_file_bytes(options.file_bytes)?;
        if !disk.exists(&dir) {
            disk.create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            if let Some(parent) = dir.parent() {
                disk.sync_dir(parent).map_err(|e| Error::io(parent, e))?;
            }
        }
        let inspection = inspect(&*disk, &dir)?;
        if let Some(damage) = inspection.damage.first() {
            return Err(Error::JournalDamaged {
                file: damage.file.clone(),
                pos: damage.pos,
                reason: damage.reason.clone(),
            });
        }
        // Without a valid header anywhere the journal was never used (or its creation was cut
        // short): files that cannot be used are made again, at full size.
        let mut created = Vec::new();
        for (path, state) in &inspection.files {
            if let FileState::Unusable { .. } = state {
                if disk.exists(path) {
                    disk.remove(path).map_err(|e| Error::io(path, e))?;
                }
                created.push((path, create_zeroed(&*disk, path, options.file_bytes)?));
            }
        }
        if !created.is_empty() {
            disk.sync_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        for (path, file) in &created {
            stamp_created(path, &**file)?;
        }
        let mut files = Vec::with_capacity(NAMES.len());
        let mut lens = Vec::with_capacity(NAMES.len());
        for (path, _) in &inspection.files {
            let file = disk.open(path).map_err(|e| Error::io(path, e))?;
            lens.push(file.len().map_err(|e| Error::io(path, e))?);
            files.push((path.clone(), file));
        }
        let file_bytes = lens.iter().copied().min().unwrap_or(options.file_bytes);
        let mut replay = Replay::new();
        let (seq, current) = match inspection.current.and_then(|i| inspection.files.get(i).map(|f| (i, &f.1))) {
            Some((i, FileState::Valid { seq, clean, .. })) => {
                if !clean {
                    let (path, file) = files.get(i).ok_or_else(|| Error::Invalid("journal file".into()))?;
                    let body = file
                        .read_at(JOURNAL_HEADER_BYTES, file_bytes - JOURNAL_HEADER_BYTES)
                        .map_err(|e| Error::io(path, e))?;
                    let (entries, _) = decode_blocks(&body, *seq);
                    for (name, generation, frame) in entries {
                        replay.entry(name).or_default().push((generation, frame));
                    }
                }
                (*seq, i)
            }
            _ => (0, 1),
        };
        let journal = Journal { dir, file_bytes, files, current, seq, pos: file_bytes };
        Ok((journal, replay))
    }

    /// The entries of log `name` in the current file (what a log fenced since its last switch
    /// acknowledged through it, and what the switch carried for it).
    pub(crate) fn entries_of(&self, name: &str) -> Result<Vec<(u64, Bytes)>> {
        let Some((path, file)) = self.files.get(self.current) else { return Ok(Vec::new()) };
        if self.seq == 0 {
            return Ok(Vec::new());
        }
        let len = self.pos.min(self.file_bytes).saturating_sub(JOURNAL_HEADER_BYTES);
        let body = file.read_at(JOURNAL_HEADER_BYTES, len).map_err(|e| Error::io(path, e))?;
        let (entries, _) = decode_blocks(&body, self.seq);
        Ok(entries
            .into_iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, generation, frame)| (generation, frame))
            .collect())
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

/// Creates a journal file of `len_bytes` written zeros and syncs it.
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

/// Gives a journal file whose creation is durable (its name synced) a clean header of
/// sequence 0. Every file of a journal that finished its creation has a valid header, so a file
/// that cannot be used while the other has one is damage, never a journal not used yet; a
/// crash before both names were durable leaves no header at all, and the journal is created
/// again.
fn stamp_created(path: &Path, file: &dyn DiskFile) -> Result<()> {
    file.write_at(0, &encode_header(0, true)).map_err(|e| Error::io(path, e))?;
    file.sync_data().map_err(|e| Error::io(path, e))
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

    /// Found by the `journal_decode` fuzz target: a header with non-zero reserved bytes and a
    /// checksum computed over them decoded as a valid version 1 header, which re-encodes to
    /// other bytes.
    #[test]
    fn a_header_with_reserved_bytes_set_is_not_a_version_1_header() {
        let mut odd = encode_header(9, true);
        odd[40] = 0x5a;
        let crc = crc32fast::hash(&odd[..60]);
        odd[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_header(&odd), None);
    }
}
