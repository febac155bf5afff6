//! The messages of the replication protocol (PROTOCOL.md), as values. The codec
//! ([`crate::codec`]) turns them into bytes and back; the protocol core
//! ([`crate::proto`]) consumes and produces them.

use bytes::Bytes;

/// A node of a cluster.
pub type NodeId = u64;

/// Lowest protocol version this build speaks.
pub const PROTOCOL_VERSION_MIN: u16 = 1;
/// Highest protocol version this build speaks.
pub const PROTOCOL_VERSION_MAX: u16 = 1;

/// Longest wait a `ClientRead` may ask for (30 s, below a client's default timeout).
pub const CLIENT_READ_WAIT_MS_MAX: u32 = 30_000;

/// A run of consecutive batch frames of one log, as shipped: either the frames themselves or
/// their zstd compression. Compressed once and shared by every peer that needs the same range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the first record of the first frame.
    pub base_offset: u64,
    /// One past the last record of the last frame.
    pub end_offset: u64,
    /// Length of the frames once decompressed (equal to `bytes.len()` when not compressed).
    pub raw_len_bytes: u32,
    /// `bytes` is zstd-compressed.
    pub compressed: bool,
    /// The frames, or their compression.
    pub bytes: Bytes,
}

/// One message of the replication protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First message of a connection, from the side that connected.
    Hello {
        /// Must match the other side's cluster id, or the connection is refused.
        cluster_id: u64,
        /// The sender's node id.
        node_id: NodeId,
        /// Lowest protocol version the sender speaks.
        version_min: u16,
        /// Highest protocol version the sender speaks.
        version_max: u16,
        /// Logs the sender follows, with the end of each on its disk (written end).
        logs: Vec<(String, u64)>,
    },
    /// Answer to `Hello`: the highest version both sides speak.
    Welcome {
        /// The answering side's cluster id.
        cluster_id: u64,
        /// The answering side's node id.
        node_id: NodeId,
        /// The version both sides will speak.
        version: u16,
    },
    /// The connection is refused or closed for a stated reason.
    Refuse {
        /// A short, human-readable reason.
        reason: String,
    },
    /// Leader to follower: frames of one log, starting exactly at the follower's end.
    Append {
        /// The log, by name.
        log: String,
        /// The leader's epoch.
        epoch: u64,
        /// The highest offset committed (durable on a quorum), so followers can expose it.
        commit_end: u64,
        /// The frames.
        chunk: Chunk,
    },
    /// Leader to follower, when there is nothing to send: liveness and the commit point.
    Heartbeat {
        /// The leader's epoch.
        epoch: u64,
        /// Per log: the leader's written end and commit point.
        logs: Vec<(String, u64, u64)>,
    },
    /// Follower to leader: where a log stands on the follower.
    Ack {
        /// The log, by name.
        log: String,
        /// The leader epoch the follower's log was checked against (by its `Truncate`); appends
        /// of that epoch only are applied.
        epoch: u64,
        /// One past the last record the follower holds (written, maybe not synced).
        written_end: u64,
        /// One past the last record the follower has synced.
        durable_end: u64,
        /// The epoch of the last batch the follower holds (0 for none): where its log may have
        /// diverged from a restarted leader's.
        last_epoch: u64,
    },
    /// Leader to follower: the follower's records from `to` on are not the leader's (they were
    /// written in an epoch the leader's log ends earlier), and neither are those past where the
    /// follower's own copy of `matched_epoch` ends (the leader never held the epochs after it
    /// that the follower holds); remove them, durably, acknowledge, and be answered again.
    /// Only records never committed are ever cut.
    ///
    /// One that cuts nothing (`to` at the follower's end, and the follower's last epoch
    /// `matched_epoch`) tells the follower that its log was checked against the leader's
    /// epoch: only then does it apply appends of that epoch. It applies only while the
    /// follower's log still is as its `Ack` said (`written_end`, `last_epoch`), so a late one
    /// never cuts what came since.
    Truncate {
        /// The log, by name.
        log: String,
        /// The leader's epoch.
        epoch: u64,
        /// Where `matched_epoch` ends in the leader's log, or the follower's end if that is
        /// lower.
        to: u64,
        /// The follower's written end this answers.
        written_end: u64,
        /// The follower's last batch epoch this answers.
        last_epoch: u64,
        /// The largest epoch at or below `last_epoch` in the leader's epoch history (0: none,
        /// the records before any epoch): the follower also cuts where its own copy of it
        /// ends, where the first later epoch begins in its own history (Kafka's KIP-279), and
        /// only there if it holds no record of it.
        matched_epoch: u64,
    },
    /// Leader to follower: the records from `missing_from` to `start_offset` are gone from the
    /// leader (retention deleted them); replace the log with an empty one starting at
    /// `start_offset`, then take a full copy of what the leader holds from there.
    Reseed {
        /// The log, by name.
        log: String,
        /// The leader's epoch.
        epoch: u64,
        /// The leader's log start: where the follower's log starts again.
        start_offset: u64,
        /// The follower's end: the first record it will never get.
        missing_from: u64,
    },
    /// Leader to follower, when re-seeding is off: records `from..to` are gone from the leader,
    /// so this follower cannot continue that log. Nothing is skipped: it stops and reports.
    DataLoss {
        /// The log, by name.
        log: String,
        /// The leader's epoch.
        epoch: u64,
        /// The first record the follower cannot get.
        from: u64,
        /// The leader's log start.
        to: u64,
    },
    /// Client to node: append `records` as one batch to `log`.
    ClientAppend {
        /// The log, by name.
        log: String,
        /// What the acknowledgement waits for.
        acks: Acks,
        /// The records.
        records: Vec<Bytes>,
    },
    /// Client to node: append `records` as one batch to `log`, at most once per
    /// `(producer_id, sequence)`: the leader remembers the last
    /// [`PRODUCER_BATCHES_KEPT`](crate::producers::PRODUCER_BATCHES_KEPT) batches of each
    /// producer, and answers a batch it already wrote with the offsets it wrote it at, without
    /// writing it again (PROTOCOL.md "Idempotent appends").
    ClientAppendIdempotent {
        /// The log, by name.
        log: String,
        /// What the acknowledgement waits for.
        acks: Acks,
        /// The producer, chosen by the client; never 0 (0 in a batch header means none).
        producer_id: u64,
        /// The producer's number for this batch: one more than its previous batch's.
        sequence: u64,
        /// The records.
        records: Vec<Bytes>,
    },
    /// Node to client: the offsets the batch got, and what the acknowledgement promises (a
    /// durability receipt).
    ClientAppended {
        /// First offset.
        start: u64,
        /// One past the last offset.
        end: u64,
        /// What was achieved, at least what was asked for.
        durability: Acks,
        /// Nodes known to have the batch synced when the ack was sent (the leader included;
        /// 0 when only written).
        copies: u8,
        /// Nodes in the cluster.
        nodes: u8,
    },
    /// Client to node: records of `log` from `from`, at most `max`; committed ones only
    /// unless `uncommitted`.
    ClientRead {
        /// The log, by name.
        log: String,
        /// First offset wanted.
        from: u64,
        /// Most records wanted.
        max: u32,
        /// Also records this node holds that are not committed yet (for tooling): they may
        /// still be lost or replaced by a failover.
        uncommitted: bool,
        /// How long the node may wait for a first record when it has none from `from` yet, in
        /// milliseconds: 0 answers at once (at most [`CLIENT_READ_WAIT_MS_MAX`]).
        wait_ms: u32,
    },
    /// Node to client: records at dense offsets from `start`.
    ClientRecords {
        /// Offset of the first record.
        start: u64,
        /// The commit point the node knows.
        commit_end: u64,
        /// The records.
        records: Vec<Bytes>,
    },
    /// Client to node: ask for the node's status.
    ClientStatus,
    /// Node to client: the status as a JSON document.
    ClientStatusReply {
        /// JSON text.
        json: String,
    },
}

/// The durability an append asks for, and that its receipt reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Acks {
    /// Written to the leader's log (page cache): lost if the leader's machine crashes.
    Written = 0,
    /// Synced on the leader's disk.
    Leader = 1,
    /// Synced on a quorum of nodes: the commit point passed it.
    Quorum = 2,
}

impl Acks {
    /// The level of a wire byte; `None` for an unknown one.
    pub fn from_u8(byte: u8) -> Option<Acks> {
        match byte {
            0 => Some(Acks::Written),
            1 => Some(Acks::Leader),
            2 => Some(Acks::Quorum),
            _ => None,
        }
    }

    /// The level's wire byte.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Its name: `written`, `leader` or `quorum`.
    pub fn name(self) -> &'static str {
        match self {
            Acks::Written => "written",
            Acks::Leader => "leader",
            Acks::Quorum => "quorum",
        }
    }
}
