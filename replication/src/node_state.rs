//! What a node keeps about its cluster across restarts (FORMAT.md "Node state file").
//!
//! - The cluster id. A leader started without one makes a random id at its first start; a
//!   follower started without one takes the id of the first leader that reaches it. Either way
//!   the id is kept here, and from then on the node refuses every node of another cluster: a
//!   new leader of another cluster pointed at it can never cut its records.
//! - On a follower, per log, the highest leader epoch it took and the node that led it in that
//!   epoch. It is recorded durably before anything of a new epoch is taken, so that after a
//!   restart the follower still refuses an older epoch, and another node claiming the same
//!   epoch (a stranger, or a zombie with a copied disk).
//! - The fence: the epoch below which the node takes nothing on any log, recorded durably
//!   before the node reports where its logs end for the election of that epoch (a report is a
//!   promise: the old leader can no longer commit through this node).
//! - Fences of single logs, for logs whose leaders are elected one log at a time: such a log
//!   is governed by its own fence instead of the node's (its epochs are its own, and the
//!   node's fence may pass them).
//!
//! The file is small, replaced whole, atomically and durably at every change, and read once at
//! start. Its bytes are untrusted: lengths and counts are bounded before use and the checksum
//! is verified before anything is interpreted; a damaged file is an error naming the byte.
#![deny(clippy::indexing_slicing, clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tern_segment::cursor::Cursor;
use tern_segment::disk::{read_small_file, write_file_atomic};
use tern_segment::{CorruptReason, Disk};

use crate::message::NodeId;

/// Name of the node state file in a node's data directory.
pub const NODE_STATE_FILE: &str = "node.state";
/// Largest node state file read or written. Changing a limit is a format change.
pub const NODE_STATE_FILE_BYTES_MAX: u64 = 4 << 20;
/// Longest log name in the file, in bytes of UTF-8.
pub const NODE_STATE_LOG_NAME_BYTES_MAX: usize = 255;

const MAGIC: [u8; 8] = *b"TERNNODE";
/// Version 1 has no fence; version 2 adds it after the cluster id; version 3 adds fences of
/// single logs after the entries (its node fence may be 0). A state is written in the lowest
/// version that holds it, so that every state has one encoding and older builds read it.
const VERSION: u32 = 1;
const VERSION_FENCED: u32 = 2;
const VERSION_LOG_FENCES: u32 = 3;
/// Magic, version, cluster id and entry count.
const HEADER_BYTES: usize = 8 + 4 + 8 + 4;
/// The fence field of version 2.
const FENCE_BYTES: usize = 8;
const CRC_BYTES: usize = 4;
/// An entry without its name: name length, epoch, leader.
const ENTRY_FIXED_BYTES: usize = 2 + 8 + 8;
const ENTRY_BYTES_MIN: usize = ENTRY_FIXED_BYTES + 1;
/// A fence of one log without its name: name length, epoch.
const LOG_FENCE_FIXED_BYTES: usize = 2 + 8;
const LOG_FENCE_BYTES_MIN: usize = LOG_FENCE_FIXED_BYTES + 1;

const _: () = assert!(NODE_STATE_LOG_NAME_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(NODE_STATE_FILE_BYTES_MAX / (ENTRY_BYTES_MIN as u64) <= u32::MAX as u64);

/// Why the node state file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeStateError {
    /// The file could not be read or written.
    #[error("I/O error on {}: {source}", .file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The bytes are not a valid node state file.
    #[error("corrupt node state in {} at byte {pos}: {reason}", .file.display())]
    Corrupt {
        /// The file (`<node state bytes>` for [`NodeState::decode`]).
        file: PathBuf,
        /// Position of the first byte of the field found wrong.
        pos: u64,
        /// What is wrong.
        reason: CorruptReason,
    },
    /// The state would encode to more than [`NODE_STATE_FILE_BYTES_MAX`] bytes.
    #[error("node state of {len_bytes} bytes exceeds the {NODE_STATE_FILE_BYTES_MAX}-byte limit")]
    TooLarge {
        /// Encoded size.
        len_bytes: u64,
    },
}

/// The cluster a node belongs to and, on a follower, whom it follows on each log.
///
/// ```
/// use tern_replication::node_state::NodeState;
/// let mut state = NodeState::default();
/// state.cluster_id = 0x5eed;
/// state.set_leader("orders", 3, 1);
/// let again = NodeState::decode(&state.encode()).expect("a file just encoded decodes");
/// assert_eq!(again, state);
/// assert_eq!(again.leader("orders"), Some((3, 1)));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeState {
    /// The cluster this node belongs to; 0 while it has none yet.
    pub cluster_id: u64,
    /// Per log: the highest leader epoch taken, and the node that led it then.
    leaders: BTreeMap<String, (u64, NodeId)>,
    /// Nothing of an epoch below this is taken on any log without a fence of its own in
    /// `log_fences` (0: no fence).
    pub fence_epoch: u64,
    /// Logs fenced one at a time: nothing of an epoch below its fence is taken on such a log,
    /// and `fence_epoch` does not apply to it.
    log_fences: BTreeMap<String, u64>,
}

impl NodeState {
    /// Reads the file at `path`; a missing file is an empty state (a node that never ran).
    ///
    /// # Errors
    /// [`NodeStateError::Io`]; [`NodeStateError::Corrupt`] naming the file and byte.
    pub fn load(disk: &dyn Disk, path: &Path) -> Result<NodeState, NodeStateError> {
        if !disk.exists(path) {
            return Ok(NodeState::default());
        }
        let bytes = read_small_file(disk, path, NODE_STATE_FILE_BYTES_MAX)
            .map_err(|source| NodeStateError::Io { file: path.to_path_buf(), source })?;
        NodeState::decode(&bytes).map_err(|e| match e {
            NodeStateError::Corrupt { pos, reason, .. } => {
                NodeStateError::Corrupt { file: path.to_path_buf(), pos, reason }
            }
            other => other,
        })
    }

    /// Replaces the file at `path`, durably when this returns (temporary file, sync, rename,
    /// directory sync): a crash leaves the previous file or this one, whole.
    ///
    /// # Errors
    /// [`NodeStateError::TooLarge`] before anything is written; [`NodeStateError::Io`].
    pub fn store(&self, disk: &dyn Disk, path: &Path) -> Result<(), NodeStateError> {
        let bytes = self.encode();
        let len_bytes = bytes.len() as u64;
        if len_bytes > NODE_STATE_FILE_BYTES_MAX {
            return Err(NodeStateError::TooLarge { len_bytes });
        }
        write_file_atomic(disk, path, &bytes, true)
            .map_err(|source| NodeStateError::Io { file: path.to_path_buf(), source })
    }

    /// The highest leader epoch taken on `log`, and the node that led it then.
    pub fn leader(&self, log: &str) -> Option<(u64, NodeId)> {
        self.leaders.get(log).copied()
    }

    /// Records that `leader` leads `log` in `epoch`.
    ///
    /// # Panics
    /// When `log` is empty or longer than [`NODE_STATE_LOG_NAME_BYTES_MAX`] bytes (log names
    /// are checked when a log is created: a bug of the caller).
    pub fn set_leader(&mut self, log: &str, epoch: u64, leader: NodeId) {
        assert!((1..=NODE_STATE_LOG_NAME_BYTES_MAX).contains(&log.len()), "log name of {} bytes", log.len());
        self.leaders.insert(log.to_owned(), (epoch, leader));
    }

    /// The fence that applies to `log`: its own, or else the node's (0: none).
    pub fn fence_of(&self, log: &str) -> u64 {
        self.log_fences.get(log).copied().unwrap_or(self.fence_epoch)
    }

    /// Whether `log` has a fence of its own ([`NodeState::fence_log`]).
    pub fn fenced_alone(&self, log: &str) -> bool {
        self.log_fences.contains_key(log)
    }

    /// Gives `log` a fence of its own, at `epoch` or the one it has if higher: from now on the
    /// node's fence no longer applies to it.
    ///
    /// # Panics
    /// As [`NodeState::set_leader`], for a bad name.
    pub fn fence_log(&mut self, log: &str, epoch: u64) {
        assert!((1..=NODE_STATE_LOG_NAME_BYTES_MAX).contains(&log.len()), "log name of {} bytes", log.len());
        let fence = self.log_fences.entry(log.to_owned()).or_insert(0);
        *fence = (*fence).max(epoch);
    }

    /// Encodes the file.
    pub fn encode(&self) -> Vec<u8> {
        let mut w =
            Vec::with_capacity(HEADER_BYTES + FENCE_BYTES + CRC_BYTES + self.leaders.len() * (ENTRY_FIXED_BYTES + 16));
        w.extend_from_slice(&MAGIC);
        let version = match (self.fence_epoch, self.log_fences.is_empty()) {
            (0, true) => VERSION,
            (_, true) => VERSION_FENCED,
            (_, false) => VERSION_LOG_FENCES,
        };
        w.extend_from_slice(&version.to_le_bytes());
        w.extend_from_slice(&self.cluster_id.to_le_bytes());
        if version != VERSION {
            w.extend_from_slice(&self.fence_epoch.to_le_bytes());
        }
        let count = u32::try_from(self.leaders.len()).expect("more logs than a u32 counts");
        w.extend_from_slice(&count.to_le_bytes());
        for (log, (epoch, leader)) in &self.leaders {
            let name_len = u16::try_from(log.len()).expect("log name length checked by set_leader");
            w.extend_from_slice(&name_len.to_le_bytes());
            w.extend_from_slice(log.as_bytes());
            w.extend_from_slice(&epoch.to_le_bytes());
            w.extend_from_slice(&leader.to_le_bytes());
        }
        if version == VERSION_LOG_FENCES {
            let count = u32::try_from(self.log_fences.len()).expect("more logs than a u32 counts");
            w.extend_from_slice(&count.to_le_bytes());
            for (log, epoch) in &self.log_fences {
                let name_len = u16::try_from(log.len()).expect("log name length checked by fence_log");
                w.extend_from_slice(&name_len.to_le_bytes());
                w.extend_from_slice(log.as_bytes());
                w.extend_from_slice(&epoch.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&w);
        w.extend_from_slice(&crc.to_le_bytes());
        w
    }

    /// Decodes and checks the file: length bounded, magic and checksum verified first, every
    /// count bounded by the bytes left, entries in strictly increasing name order (so a file
    /// decodes to one value and encodes back to the same bytes). Never panics.
    ///
    /// # Errors
    /// [`NodeStateError::Corrupt`] with the position of the field found wrong.
    pub fn decode(bytes: &[u8]) -> Result<NodeState, NodeStateError> {
        let len_bytes = bytes.len() as u64;
        if len_bytes > NODE_STATE_FILE_BYTES_MAX {
            let limit_bytes = u32::try_from(NODE_STATE_FILE_BYTES_MAX).unwrap_or(u32::MAX);
            return Err(corrupt(0, CorruptReason::FrameTooLong { len_bytes, limit_bytes }));
        }
        if bytes.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
            return Err(corrupt(0, CorruptReason::Magic));
        }
        let Some(crc_pos) = bytes.len().checked_sub(CRC_BYTES).filter(|pos| *pos >= HEADER_BYTES) else {
            let needed_bytes = (HEADER_BYTES + CRC_BYTES).saturating_sub(bytes.len()) as u64;
            return Err(corrupt(bytes.len(), CorruptReason::Truncated { needed_bytes }));
        };
        let (covered, crc_bytes) = bytes.split_at(crc_pos);
        let mut crc_cur = Cursor::new(crc_bytes);
        let stored = crc_cur.u32_le().map_err(|reason| corrupt(crc_pos, reason))?;
        let computed = crc32fast::hash(covered);
        if stored != computed {
            return Err(corrupt(crc_pos, CorruptReason::Checksum { stored, computed }));
        }
        let mut cur = Cursor::new(covered);
        cur.take(MAGIC.len()).map_err(|r| corrupt(0, r))?;
        let version_pos = cur.pos();
        let version = cur.u32_le().map_err(|r| corrupt(version_pos, r))?;
        if !(VERSION..=VERSION_LOG_FENCES).contains(&version) {
            return Err(corrupt(version_pos, CorruptReason::Version { found: version }));
        }
        let cluster_pos = cur.pos();
        let cluster_id = cur.u64_le().map_err(|r| corrupt(cluster_pos, r))?;
        let mut fence_epoch = 0;
        if version != VERSION {
            let fence_pos = cur.pos();
            fence_epoch = cur.u64_le().map_err(|r| corrupt(fence_pos, r))?;
            if fence_epoch == 0 && version == VERSION_FENCED {
                return Err(corrupt(fence_pos, CorruptReason::Field("a version 2 state with no fence")));
            }
        }
        let count_pos = cur.pos();
        let count = cur.u32_le().map_err(|r| corrupt(count_pos, r))?;
        if u64::from(count) > (cur.remaining_bytes() / ENTRY_BYTES_MIN) as u64 {
            return Err(corrupt(count_pos, CorruptReason::Field("entry count exceeds what the file can hold")));
        }
        let mut leaders = BTreeMap::new();
        let mut last: Option<String> = None;
        for _ in 0..count {
            let name = entry_name(&mut cur, &mut last)?;
            let fields_pos = cur.pos();
            let epoch = cur.u64_le().map_err(|r| corrupt(fields_pos, r))?;
            let leader = cur.u64_le().map_err(|r| corrupt(fields_pos + 8, r))?;
            leaders.insert(name, (epoch, leader));
        }
        let mut log_fences = BTreeMap::new();
        if version == VERSION_LOG_FENCES {
            let count_pos = cur.pos();
            let count = cur.u32_le().map_err(|r| corrupt(count_pos, r))?;
            if count == 0 {
                return Err(corrupt(count_pos, CorruptReason::Field("a version 3 state with no log fence")));
            }
            if u64::from(count) > (cur.remaining_bytes() / LOG_FENCE_BYTES_MIN) as u64 {
                return Err(corrupt(count_pos, CorruptReason::Field("log fence count exceeds what the file can hold")));
            }
            let mut last: Option<String> = None;
            for _ in 0..count {
                let name = entry_name(&mut cur, &mut last)?;
                let epoch_pos = cur.pos();
                let epoch = cur.u64_le().map_err(|r| corrupt(epoch_pos, r))?;
                log_fences.insert(name, epoch);
            }
        }
        if cur.remaining_bytes() > 0 {
            return Err(corrupt(cur.pos(), CorruptReason::TrailingGarbage));
        }
        Ok(NodeState { cluster_id, leaders, fence_epoch, log_fences })
    }
}

/// Reads the name that begins an entry, checking its length, its UTF-8 and that it comes
/// after `last`, which it becomes.
fn entry_name(cur: &mut Cursor<'_>, last: &mut Option<String>) -> Result<String, NodeStateError> {
    let entry_pos = cur.pos();
    let name_len = usize::from(cur.u16_le().map_err(|r| corrupt(entry_pos, r))?);
    if !(1..=NODE_STATE_LOG_NAME_BYTES_MAX).contains(&name_len) {
        return Err(corrupt(entry_pos, CorruptReason::Field("log name length outside 1..=255")));
    }
    let name_pos = cur.pos();
    let name_bytes = cur.take(name_len).map_err(|r| corrupt(name_pos, r))?;
    let name = std::str::from_utf8(name_bytes)
        .map_err(|_| corrupt(name_pos, CorruptReason::Field("log name is not UTF-8")))?;
    if last.as_deref().is_some_and(|last| last >= name) {
        return Err(corrupt(entry_pos, CorruptReason::Field("entries out of order or repeated")));
    }
    *last = Some(name.to_owned());
    Ok(name.to_owned())
}

fn corrupt(pos: usize, reason: CorruptReason) -> NodeStateError {
    NodeStateError::Corrupt { file: PathBuf::from("<node state bytes>"), pos: pos as u64, reason }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn sample() -> NodeState {
        let mut state = NodeState { cluster_id: 0xfeed, ..NodeState::default() };
        state.set_leader("orders", 7, 1);
        state.set_leader("events", 2, 3);
        state
    }

    #[test]
    fn the_state_round_trips_through_the_file_and_a_missing_file_is_empty() {
        let disk = tern_segment::sim::SimDisk::new();
        let path = Path::new("/data").join(NODE_STATE_FILE);
        assert_eq!(NodeState::load(&disk, &path).unwrap(), NodeState::default());
        sample().store(&disk, &path).unwrap();
        assert_eq!(NodeState::load(&disk, &path).unwrap(), sample());
    }

    /// Every flipped bit and every cut of `bytes` is refused.
    fn assert_every_damage_refused(bytes: &[u8]) {
        for i in 0..bytes.len() * 8 {
            let mut bad = bytes.to_vec();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(NodeState::decode(&bad).is_err(), "bit {i}");
        }
        for len in 0..bytes.len() {
            assert!(NodeState::decode(&bytes[..len]).is_err(), "cut to {len}");
        }
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_refused() {
        assert_every_damage_refused(&sample().encode());
    }

    #[test]
    fn a_fenced_state_round_trips_as_version_2_and_every_damage_to_it_is_refused() {
        let mut state = sample();
        state.fence_epoch = 9;
        let bytes = state.encode();
        assert_eq!(bytes[8..12], 2u32.to_le_bytes());
        assert_eq!(NodeState::decode(&bytes).unwrap(), state);
        assert_every_damage_refused(&bytes);
        // Without a fence the file is version 1, as older builds wrote it.
        assert_eq!(sample().encode()[8..12], 1u32.to_le_bytes());
    }

    /// A log with a fence of its own is governed by it alone: the node's fence, higher or
    /// lower, does not apply to it (its epochs are its own), and it still does to the others.
    #[test]
    fn a_log_fenced_alone_keeps_its_own_fence_through_the_file_and_every_damage_is_refused() {
        let mut state = sample();
        state.fence_log("orders", 4);
        state.fence_log("orders", 3);
        state.fence_epoch = 9;
        assert_eq!((state.fence_of("orders"), state.fence_of("events")), (4, 9));
        let bytes = state.encode();
        assert_eq!(bytes[8..12], 3u32.to_le_bytes());
        assert_eq!(NodeState::decode(&bytes).unwrap(), state);
        assert_every_damage_refused(&bytes);
        // Without a node fence: version 3 with 0 there.
        let mut alone = sample();
        alone.fence_log("events", 2);
        assert_eq!(NodeState::decode(&alone.encode()).unwrap().fence_of("events"), 2);
    }

    #[test]
    fn a_count_larger_than_the_file_is_refused_before_any_work() {
        let mut bytes = NodeState::default().encode();
        bytes[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc_at = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..crc_at]);
        bytes[crc_at..].copy_from_slice(&crc.to_le_bytes());
        match NodeState::decode(&bytes) {
            Err(NodeStateError::Corrupt { pos: 20, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
