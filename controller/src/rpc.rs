//! The controller's wire format: openraft's RPCs and the controller's own requests between
//! controller members, on a port of their own (PROTOCOL.md "Controller").
//!
//! Each message is one frame: magic `TCTL`, body length (u32, at most [`FRAME_BYTES_MAX`]),
//! CRC-32 of the body, then the body (bincode of [`Request`] or [`Response`]). A connection
//! carries one request at a time, each answered by one response. The length is checked
//! before anything is allocated; a bad magic, length or checksum closes the connection.

use std::collections::BTreeMap;
use std::io;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tern_replication::message::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::map::{ClusterMap, Command, Reply};
use crate::TypeConfig;

/// First bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"TCTL";
/// Bytes of a frame header: magic, length, checksum.
const HEADER_BYTES: usize = 12;
/// The largest frame body: a snapshot chunk (openraft sends 3 MiB by default) with room.
pub const FRAME_BYTES_MAX: u32 = 16 << 20;
/// The controller protocol version, in every request.
pub const CONTROLLER_PROTOCOL_VERSION: u16 = 1;

/// A request to a controller member.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Request {
    /// openraft: replicate entries.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// openraft: ask for a vote.
    Vote(VoteRequest<NodeId>),
    /// openraft: a snapshot chunk.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Apply a command to the cluster map (a member forwards its proposal to the leader).
    Propose(Command),
    /// The cluster map as the controller's leader has applied it (a linearizable read).
    ReadMap,
    /// Change the controller's membership (served by its leader).
    ChangeMembers(MembershipChange),
    /// A data leader says it is alive and which placements it leads in which epoch (served by
    /// the controller's leader, which keeps the time it heard it, in memory).
    Heartbeat {
        /// The data leader.
        node: NodeId,
        /// The epoch of each placement it leads (`*` and logs placed one by one).
        leads: BTreeMap<String, u64>,
    },
    /// Fence this node's logs at `epoch` and report where each ends (served by the data node
    /// beside any member), for the election of the leader of `epoch`: log `log` alone, or
    /// every log but those placed one by one (`except`, each given a fence of its own first).
    Fence {
        /// The epoch being elected.
        epoch: u64,
        /// The log placed alone being elected, or `None` for the placement of every other log.
        log: Option<String>,
        /// With `log` `None`: the logs placed one by one, left out.
        except: Vec<String>,
    },
    /// The data leader beside this member stops taking appends and waits until `target` holds
    /// its every record (a planned handover), for up to `timeout_ms`.
    Drain {
        /// The node taking over.
        target: NodeId,
        /// How long to wait for it to catch up.
        timeout_ms: u64,
    },
    /// The map as this member has applied it (it may lag): served by any member.
    LocalMap,
    /// As `Drain`, for log `log` alone, which the data node beside this member leads (placed
    /// alone): its appends stop, the other logs' go on. Answered with a `Drain` response.
    DrainLog {
        /// The log placed alone.
        log: String,
        /// The node taking over.
        target: NodeId,
        /// How long to wait for it to catch up.
        timeout_ms: u64,
    },
}

/// Where one log stands on a fenced node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogReport {
    /// The log.
    pub log: String,
    /// The epoch of its last batch (0: none).
    pub last_epoch: u64,
    /// One past its last durable record.
    pub durable_end: u64,
}

/// A change of the controller's members, made by openraft's joint consensus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a node as a learner: it receives the map, does not vote. Waits until it caught up.
    AddLearner {
        /// The node.
        node: NodeId,
        /// Its controller address.
        addr: String,
    },
    /// Make learners voters.
    Promote {
        /// The learners.
        nodes: Vec<NodeId>,
    },
    /// Remove nodes (voters or learners) from the controller.
    Remove {
        /// The nodes.
        nodes: Vec<NodeId>,
    },
}

/// Why a proposal or a read was not served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServeError {
    /// This member does not lead the controller; `leader` does, if known.
    NotLeader {
        /// The leader this member knows of.
        leader: Option<NodeId>,
        /// Its controller address.
        addr: Option<String>,
    },
    /// Another change is under way (a membership change still committing): try again.
    Busy(String),
    /// Anything else, said in words.
    Failed(String),
}

/// The response to a [`Request`], of the same kind.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Response {
    /// To `AppendEntries`.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To `InstallSnapshot`.
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// To `Propose`.
    Propose(Result<Reply, ServeError>),
    /// To `ReadMap`.
    ReadMap(Result<ClusterMap, ServeError>),
    /// To `ChangeMembers`.
    ChangeMembers(Result<(), ServeError>),
    /// To `Heartbeat`.
    Heartbeat(Result<(), ServeError>),
    /// To `Fence`: every log's report.
    Fence(Result<Vec<LogReport>, ServeError>),
    /// To `Drain`: how long the target took to catch up, in milliseconds.
    Drain(Result<u64, ServeError>),
    /// To `LocalMap`.
    LocalMap(ClusterMap),
}

/// A request with the protocol version it speaks.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// [`CONTROLLER_PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// The message.
    pub message: T,
}

/// Writes `message` as one frame.
pub async fn write_frame<W, T>(writer: &mut W, message: &T) -> io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
    T: Serialize,
{
    let body =
        bincode::serialize(&Envelope { version: CONTROLLER_PROTOCOL_VERSION, message }).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).ok().filter(|len| *len <= FRAME_BYTES_MAX).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("controller frame of {} bytes is too large", body.len()))
    })?;
    let mut frame = Vec::with_capacity(HEADER_BYTES + body.len());
    frame.extend_from_slice(&FRAME_MAGIC);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    frame.extend_from_slice(&body);
    writer.write_all(&frame).await?;
    writer.flush().await
}

/// Reads one frame and decodes it, checking magic, length, checksum and version first.
pub async fn read_frame<R, T>(reader: &mut R) -> io::Result<T>
where
    R: tokio::io::AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut header = [0u8; HEADER_BYTES];
    reader.read_exact(&mut header).await?;
    decode_body(&header, reader).await
}

async fn decode_body<R, T>(header: &[u8; HEADER_BYTES], reader: &mut R) -> io::Result<T>
where
    R: tokio::io::AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let (magic, rest) = header.split_at(4);
    if magic != FRAME_MAGIC {
        return Err(invalid(format!("not a controller frame (magic {magic:02x?})")));
    }
    let (len, crc) = rest.split_at(4);
    let len = u32::from_le_bytes(len.try_into().unwrap_or_default());
    let stored = u32::from_le_bytes(crc.try_into().unwrap_or_default());
    if len > FRAME_BYTES_MAX {
        return Err(invalid(format!("controller frame of {len} bytes exceeds the {FRAME_BYTES_MAX}-byte limit")));
    }
    let mut body = vec![0u8; len as usize];
    reader.read_exact(&mut body).await?;
    let computed = crc32fast::hash(&body);
    if computed != stored {
        return Err(invalid(format!(
            "controller frame checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )));
    }
    let envelope: Envelope<T> = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(u64::from(FRAME_BYTES_MAX))
        .deserialize(&body)
        .map_err(|e| invalid(format!("undecodable controller frame: {e}")))?;
    if envelope.version != CONTROLLER_PROTOCOL_VERSION {
        return Err(invalid(format!(
            "controller protocol version {} (this node speaks {CONTROLLER_PROTOCOL_VERSION})",
            envelope.version
        )));
    }
    Ok(envelope.message)
}

use bincode::Options as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_round_trips_and_damage_is_refused_before_decoding() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::ReadMap).await.unwrap();
        let got: Request = read_frame(&mut buf.as_slice()).await.unwrap();
        assert!(matches!(got, Request::ReadMap));
        for pos in 0..buf.len() {
            let mut damaged = buf.clone();
            damaged[pos] ^= 0x40;
            let result: io::Result<Request> = read_frame(&mut damaged.as_slice()).await;
            assert!(result.is_err(), "flipped byte {pos} went unnoticed");
        }
        // A length past the limit is refused without allocating it.
        let mut huge = buf.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = read_frame::<_, Request>(&mut huge.as_slice()).await.unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }
}
