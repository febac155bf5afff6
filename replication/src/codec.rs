//! The wire format of the replication protocol: every [`Message`] as bytes, and back.
//!
//! Format (PROTOCOL.md "Wire format"), all integers little-endian. Each message travels in one
//! envelope, the *wire frame*: `{ len u32 | crc32 u32 | type u8 | payload }`, where `len`
//! counts the bytes after the crc field (type and payload) and the crc covers the `len` field
//! and everything after the crc field. Strings are `{ len u16 | UTF-8 bytes }`, lists are
//! `{ count u32 | items }`, and a chunk is `{ base_offset u64 | end_offset u64 | raw_len u32 |
//! flags u8 | bytes_len u32 | bytes }`.
//!
//! A receiver calls [`frame_len`] on the first four bytes to learn how much to buffer (an
//! oversized length is refused before any of the body is read), then [`decode`]. Decoding
//! bounds every length, verifies the checksum, and only then looks inside; every count is
//! bounded by its format limit and by what the remaining bytes can hold before anything is
//! allocated. The frames inside a chunk are checked separately, by [`chunk_frames`], which
//! reuses the segment frame decoder so that frame bounds live in one place.
//!
//! ```
//! use bytes::Bytes;
//! use tern_replication::codec::{decode, encode, frame_len};
//! use tern_replication::message::Message;
//!
//! let msg = Message::Refuse { reason: "cluster id mismatch".into() };
//! let mut out = Vec::new();
//! encode(&msg, &mut out);
//! assert_eq!(frame_len(&out[..4])?, Some(out.len()));
//! let (decoded, used_bytes) = decode(&Bytes::from(out.clone()))?.expect("one whole message");
//! assert_eq!((decoded, used_bytes), (msg, out.len()));
//! # Ok::<(), tern_replication::codec::CodecError>(())
//! ```
#![deny(clippy::indexing_slicing, clippy::cast_possible_truncation)]

use bytes::Bytes;
use tern_segment::cursor::Cursor;
use tern_segment::frame;
use tern_segment::CorruptReason;

use crate::message::{Acks, Chunk, Message, CLIENT_READ_WAIT_MS_MAX, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};

/// Bytes before the type byte: `len u32 | crc32 u32`.
pub const ENVELOPE_PREFIX_BYTES: usize = 8;
/// Smallest wire frame: the prefix and the type byte (a `ClientStatus` has no payload).
pub const FRAME_BYTES_MIN: usize = ENVELOPE_PREFIX_BYTES + 1;
/// Largest wire frame, prefix included. It must hold the largest message of every type (see the
/// assertions below): an `Append` whose chunk carries [`CHUNK_RAW_BYTES_MAX`] bytes, a `Hello`
/// or `Heartbeat` naming [`LOGS_MAX`] logs of the longest name. Changing a limit is a format
/// change.
pub const FRAME_BYTES_MAX: u32 = 80 << 20;
/// Largest raw (decompressed) length of a chunk. It must hold the largest batch frame
/// (`FRAME_PREFIX_BYTES + FRAME_BODY_BYTES_MAX`, 64 MiB + 8 bytes), or a log holding such a
/// batch could never be shipped; 65 MiB is the next round number. Decompression allocates at
/// most this much.
pub const CHUNK_RAW_BYTES_MAX: u32 = 65 << 20;
/// Most logs one `Hello` or `Heartbeat` may name.
pub const LOGS_MAX: u32 = 1 << 16;
/// Longest log name on the wire (as in the journal; the engine itself allows 200 bytes).
pub const LOG_NAME_BYTES_MAX: usize = 255;
/// Longest `Refuse` reason; [`encode`] cuts a longer one at a character boundary.
pub const REASON_BYTES_MAX: usize = 1024;
/// Bytes of a chunk before its data: `base_offset u64 | end_offset u64 | raw_len u32 |
/// flags u8 | bytes_len u32`.
pub const CHUNK_HEADER_BYTES: usize = 8 + 8 + 4 + 1 + 4;
/// Chunk flag bit 0: `bytes` is zstd-compressed. Every other bit is reserved and must be zero.
pub const CHUNK_FLAG_ZSTD: u8 = 1;

const TYPE_HELLO: u8 = 1;
const TYPE_WELCOME: u8 = 2;
const TYPE_REFUSE: u8 = 3;
const TYPE_APPEND: u8 = 4;
const TYPE_HEARTBEAT: u8 = 5;
const TYPE_ACK: u8 = 6;
const TYPE_RESEED: u8 = 7;
const TYPE_DATA_LOSS: u8 = 8;
const TYPE_TRUNCATE: u8 = 9;
const TYPE_CLIENT_APPEND: u8 = 16;
const TYPE_CLIENT_APPENDED: u8 = 17;
const TYPE_CLIENT_READ: u8 = 18;
const TYPE_CLIENT_RECORDS: u8 = 19;
const TYPE_CLIENT_STATUS: u8 = 20;
const TYPE_CLIENT_STATUS_REPLY: u8 = 21;
const TYPE_CLIENT_APPEND_IDEMPOTENT: u8 = 22;

/// Most records in one client message.
pub const CLIENT_RECORDS_MAX: u32 = 1 << 20;
/// Most record bytes in one client message (the records of one batch, as the frame limit).
pub const CLIENT_RECORD_BYTES_MAX: usize = frame::FRAME_BODY_BYTES_MAX as usize;
/// Longest status document.
pub const STATUS_BYTES_MAX: usize = 1 << 20;
/// The largest client message: a `ClientAppendIdempotent` of the most records (its header,
/// `acks u8 | producer_id u64 | sequence u64`, is larger than a `ClientRecords` header).
const CLIENT_BYTES_MAX: usize = ENVELOPE_PREFIX_BYTES
    + 1
    + STRING_LEN_BYTES
    + LOG_NAME_BYTES_MAX
    + 1
    + 16
    + 4
    + CLIENT_RECORDS_MAX as usize * 4
    + CLIENT_RECORD_BYTES_MAX;
const _: () = assert!(CLIENT_BYTES_MAX <= FRAME_BYTES_MAX as usize);

const STRING_LEN_BYTES: usize = 2;
/// Smallest item of a `Hello` log list: a one-byte name and `written_end u64`.
const HELLO_LOG_BYTES_MIN: usize = STRING_LEN_BYTES + 1 + 8;
const HELLO_LOG_BYTES_MAX: usize = STRING_LEN_BYTES + LOG_NAME_BYTES_MAX + 8;
/// Smallest item of a `Heartbeat` log list: a one-byte name, `end u64` and `commit_end u64`.
const HEARTBEAT_LOG_BYTES_MIN: usize = STRING_LEN_BYTES + 1 + 16;
const HEARTBEAT_LOG_BYTES_MAX: usize = STRING_LEN_BYTES + LOG_NAME_BYTES_MAX + 16;
const HELLO_BYTES_MAX: usize = ENVELOPE_PREFIX_BYTES + 1 + 8 + 8 + 2 + 2 + 4 + LOGS_MAX as usize * HELLO_LOG_BYTES_MAX;
const HEARTBEAT_BYTES_MAX: usize = ENVELOPE_PREFIX_BYTES + 1 + 8 + 4 + LOGS_MAX as usize * HEARTBEAT_LOG_BYTES_MAX;
const APPEND_BYTES_MAX: usize = ENVELOPE_PREFIX_BYTES
    + 1
    + STRING_LEN_BYTES
    + LOG_NAME_BYTES_MAX
    + 8
    + 8
    + CHUNK_HEADER_BYTES
    + CHUNK_RAW_BYTES_MAX as usize;
const REFUSE_BYTES_MAX: usize = ENVELOPE_PREFIX_BYTES + 1 + STRING_LEN_BYTES + REASON_BYTES_MAX;

// Every message a sender may build fits in one wire frame.
const _: () = assert!(APPEND_BYTES_MAX <= FRAME_BYTES_MAX as usize);
const _: () = assert!(HELLO_BYTES_MAX <= FRAME_BYTES_MAX as usize);
const _: () = assert!(HEARTBEAT_BYTES_MAX <= FRAME_BYTES_MAX as usize);
const _: () = assert!(REFUSE_BYTES_MAX <= FRAME_BYTES_MAX as usize);
// A chunk can carry the largest batch frame the segment layer accepts.
const _: () = assert!(CHUNK_RAW_BYTES_MAX as usize >= frame::FRAME_PREFIX_BYTES + frame::FRAME_BODY_BYTES_MAX as usize);
// String lengths fit their u16 field; the smallest frame is smaller than the largest.
const _: () = assert!(LOG_NAME_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(REASON_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(FRAME_BYTES_MIN < FRAME_BYTES_MAX as usize);

/// Why bytes could not be decoded into a message or a chunk into frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The bytes do not form what PROTOCOL.md promises: damaged in transit, or a faulty peer.
    /// The connection cannot be trusted any further.
    #[error("corrupt bytes at position {pos}: {reason}")]
    Corrupt {
        /// For [`decode`] and [`frame_len`]: position in the buffer (the first byte of the wire
        /// frame is 0) of the field found wrong. For [`chunk_frames`]: position in the chunk's
        /// raw frames of the frame found wrong (0 for the chunk as a whole).
        pos: usize,
        /// What is wrong.
        reason: CorruptReason,
    },
    /// A well-formed wire frame (checksum verified) of a message type this build does not know:
    /// the peer speaks a protocol this build does not.
    #[error("unsupported message type {message_type}")]
    Unsupported {
        /// The type byte found.
        message_type: u8,
    },
}

fn corrupt(pos: usize, reason: CorruptReason) -> CodecError {
    CodecError::Corrupt { pos, reason }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Appends the wire frame of `msg` to `out`.
///
/// This is the only encoder of messages; PROTOCOL.md "Wire format" describes what it writes.
/// A `Refuse` reason longer than [`REASON_BYTES_MAX`] is cut at a character boundary.
///
/// # Panics
/// When `msg` breaks a format limit, which is a bug of the sender: a log name of 0 or more than
/// [`LOG_NAME_BYTES_MAX`] bytes, more than [`LOGS_MAX`] logs, a `Hello` version range that is
/// empty or starts at 0, a `Welcome` version outside the versions this build speaks, or a chunk
/// that breaks the rules of [`chunk_frames`]'s layout checks (see PROTOCOL.md "Chunk").
///
/// # Examples
/// ```
/// use tern_replication::codec::encode;
/// use tern_replication::message::Message;
/// let mut out = Vec::new();
/// encode(&Message::Heartbeat { epoch: 3, logs: vec![("orders".into(), 10, 8)] }, &mut out);
/// assert_eq!(out.len(), 8 + 1 + 8 + 4 + (2 + 6 + 16));
/// ```
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; ENVELOPE_PREFIX_BYTES]); // len and crc, patched by `seal`
    match msg {
        Message::Hello { cluster_id, node_id, version_min, version_max, logs } => {
            assert!(*version_min >= 1, "Hello version_min is 0");
            assert!(version_min <= version_max, "Hello versions {version_min}..={version_max} are empty");
            out.push(TYPE_HELLO);
            put_u64(out, *cluster_id);
            put_u64(out, *node_id);
            out.extend_from_slice(&version_min.to_le_bytes());
            out.extend_from_slice(&version_max.to_le_bytes());
            put_count(out, logs.len());
            for (name, written_end) in logs {
                put_log_name(out, name);
                put_u64(out, *written_end);
            }
        }
        Message::Welcome { cluster_id, node_id, version } => {
            assert!(
                (PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(version),
                "Welcome picks version {version}, which this build does not speak"
            );
            out.push(TYPE_WELCOME);
            put_u64(out, *cluster_id);
            put_u64(out, *node_id);
            out.extend_from_slice(&version.to_le_bytes());
        }
        Message::Refuse { reason } => {
            out.push(TYPE_REFUSE);
            put_string(out, cut_at_char_boundary(reason, REASON_BYTES_MAX));
        }
        Message::Append { log, epoch, commit_end, chunk } => {
            out.push(TYPE_APPEND);
            put_log_name(out, log);
            put_u64(out, *epoch);
            put_u64(out, *commit_end);
            put_chunk(out, chunk);
        }
        Message::Heartbeat { epoch, logs } => {
            out.push(TYPE_HEARTBEAT);
            put_u64(out, *epoch);
            put_count(out, logs.len());
            for (name, end, commit_end) in logs {
                put_log_name(out, name);
                put_u64(out, *end);
                put_u64(out, *commit_end);
            }
        }
        Message::Truncate { log, epoch, to, written_end, last_epoch, matched_epoch } => {
            assert!(to <= written_end, "Truncate to {to} past the end {written_end} it answers");
            assert!(matched_epoch <= last_epoch, "Truncate matches epoch {matched_epoch} after {last_epoch}");
            out.push(TYPE_TRUNCATE);
            put_log_name(out, log);
            put_u64(out, *epoch);
            put_u64(out, *to);
            put_u64(out, *written_end);
            put_u64(out, *last_epoch);
            put_u64(out, *matched_epoch);
        }
        Message::Ack { log, epoch, written_end, durable_end, last_epoch } => {
            out.push(TYPE_ACK);
            put_log_name(out, log);
            put_u64(out, *epoch);
            put_u64(out, *written_end);
            put_u64(out, *durable_end);
            put_u64(out, *last_epoch);
        }
        Message::Reseed { log, epoch, start_offset, missing_from } => {
            out.push(TYPE_RESEED);
            put_log_name(out, log);
            put_u64(out, *epoch);
            put_u64(out, *start_offset);
            put_u64(out, *missing_from);
        }
        Message::DataLoss { log, epoch, from, to } => {
            out.push(TYPE_DATA_LOSS);
            put_log_name(out, log);
            put_u64(out, *epoch);
            put_u64(out, *from);
            put_u64(out, *to);
        }
        Message::ClientAppend { log, acks, records } => {
            out.push(TYPE_CLIENT_APPEND);
            put_log_name(out, log);
            out.push(acks.as_u8());
            put_records(out, records);
        }
        Message::ClientAppendIdempotent { log, acks, producer_id, sequence, records } => {
            // The decoder refuses producer 0, which a batch header reads as "no producer".
            assert!(*producer_id != 0, "ClientAppendIdempotent with producer id 0");
            out.push(TYPE_CLIENT_APPEND_IDEMPOTENT);
            put_log_name(out, log);
            out.push(acks.as_u8());
            put_u64(out, *producer_id);
            put_u64(out, *sequence);
            put_records(out, records);
        }
        Message::ClientAppended { start, end, durability, copies, nodes } => {
            out.push(TYPE_CLIENT_APPENDED);
            put_u64(out, *start);
            put_u64(out, *end);
            out.extend_from_slice(&[durability.as_u8(), *copies, *nodes]);
        }
        Message::ClientRead { log, from, max, uncommitted, wait_ms } => {
            out.push(TYPE_CLIENT_READ);
            put_log_name(out, log);
            put_u64(out, *from);
            out.extend_from_slice(&max.to_le_bytes());
            out.push(u8::from(*uncommitted));
            // Written only when there is a wait (and so the first layout, which ended at the
            // flag, is the one for no wait).
            if *wait_ms > 0 {
                out.extend_from_slice(&wait_ms.to_le_bytes());
            }
        }
        Message::ClientRecords { start, commit_end, records } => {
            out.push(TYPE_CLIENT_RECORDS);
            put_u64(out, *start);
            put_u64(out, *commit_end);
            put_records(out, records);
        }
        Message::ClientStatus => out.push(TYPE_CLIENT_STATUS),
        Message::ClientStatusReply { json } => {
            out.push(TYPE_CLIENT_STATUS_REPLY);
            let json = cut_at_char_boundary(json, STATUS_BYTES_MAX);
            let len = u32::try_from(json.len()).expect("bounded by STATUS_BYTES_MAX");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(json.as_bytes());
        }
    }
    seal(out, start);
    // The decoder re-checks what the encoder wrote (a copy: debug builds only).
    debug_assert!(
        matches!(decode(&Bytes::copy_from_slice(out.get(start..).unwrap_or_default())),
                 Ok(Some((_, used_bytes))) if used_bytes == out.len() - start),
        "encode wrote a message that does not decode"
    );
}

/// Fills in `len` and `crc32` of the wire frame that starts at `start`.
#[allow(clippy::indexing_slicing)] // positions of the prefix this module just reserved
#[expect(clippy::cast_possible_truncation)] // NOTE: the length is bounded by FRAME_BYTES_MAX first
fn seal(out: &mut [u8], start: usize) {
    let frame_bytes = out.len() - start;
    // The limits assert at compile time that every valid message fits; this guards the asserts.
    assert!(frame_bytes <= FRAME_BYTES_MAX as usize, "message of {frame_bytes} bytes exceeds FRAME_BYTES_MAX");
    let len = (frame_bytes - ENVELOPE_PREFIX_BYTES) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = frame_crc(&out[start..start + 4], &out[start + ENVELOPE_PREFIX_BYTES..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn frame_crc(len_field: &[u8], covered: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(len_field);
    hasher.update(covered);
    hasher.finalize()
}

/// `count u32 | { len u32 | bytes } * count`, bounded as the decoder bounds it.
#[expect(clippy::cast_possible_truncation)] // NOTE: bounded by the asserts just above
fn put_records(out: &mut Vec<u8>, records: &[Bytes]) {
    assert!(records.len() <= CLIENT_RECORDS_MAX as usize, "too many records in one client message");
    assert!(records.iter().map(Bytes::len).sum::<usize>() <= CLIENT_RECORD_BYTES_MAX, "client message too large");
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for record in records {
        out.extend_from_slice(&(record.len() as u32).to_le_bytes());
        out.extend_from_slice(record);
    }
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

#[expect(clippy::cast_possible_truncation)] // NOTE: bounded by LOGS_MAX first
fn put_count(out: &mut Vec<u8>, count: usize) {
    assert!(count <= LOGS_MAX as usize, "{count} logs in one message exceed LOGS_MAX ({LOGS_MAX})");
    out.extend_from_slice(&(count as u32).to_le_bytes());
}

fn put_log_name(out: &mut Vec<u8>, name: &str) {
    assert!(
        (1..=LOG_NAME_BYTES_MAX).contains(&name.len()),
        "log name of {} bytes is outside 1..={LOG_NAME_BYTES_MAX}",
        name.len()
    );
    put_string(out, name);
}

#[expect(clippy::cast_possible_truncation)] // NOTE: callers bound strings far below u16::MAX
fn put_string(out: &mut Vec<u8>, text: &str) {
    assert!(text.len() <= usize::from(u16::MAX), "string of {} bytes", text.len());
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// The longest prefix of `text` of at most `len_bytes_max` bytes that ends on a character.
fn cut_at_char_boundary(text: &str, len_bytes_max: usize) -> &str {
    let mut end = text.len().min(len_bytes_max);
    while !text.is_char_boundary(end) {
        end -= 1; // terminates: 0 is a boundary
    }
    text.get(..end).unwrap_or_default()
}

#[expect(clippy::cast_possible_truncation)] // NOTE: bytes_len <= raw_len <= CHUNK_RAW_BYTES_MAX, checked first
fn put_chunk(out: &mut Vec<u8>, chunk: &Chunk) {
    let bytes_len = chunk.bytes.len() as u64;
    if let Some((_, reason)) =
        chunk_layout_error(chunk.base_offset, chunk.end_offset, chunk.raw_len_bytes, chunk.compressed, bytes_len)
    {
        panic!("encoding a malformed chunk: {reason} ({chunk:?})");
    }
    put_u64(out, chunk.base_offset);
    put_u64(out, chunk.end_offset);
    out.extend_from_slice(&chunk.raw_len_bytes.to_le_bytes());
    out.push(if chunk.compressed { CHUNK_FLAG_ZSTD } else { 0 });
    out.extend_from_slice(&(bytes_len as u32).to_le_bytes());
    out.extend_from_slice(&chunk.bytes);
}

/// Positions of the chunk fields, from the chunk's first byte.
const CHUNK_END_OFFSET_POS: usize = 8;
const CHUNK_RAW_LEN_POS: usize = 16;
const CHUNK_FLAGS_POS: usize = 20;
const CHUNK_BYTES_LEN_POS: usize = 21;

/// The layout rules of a chunk (PROTOCOL.md "Chunk"), shared by the encoder, which asserts them,
/// and the decoders, which report the first one broken with the position of its field.
fn chunk_layout_error(
    base_offset: u64,
    end_offset: u64,
    raw_len_bytes: u32,
    compressed: bool,
    bytes_len: u64,
) -> Option<(usize, CorruptReason)> {
    if end_offset < base_offset {
        return Some((CHUNK_END_OFFSET_POS, CorruptReason::Field("chunk end_offset is below its base_offset")));
    }
    if raw_len_bytes > CHUNK_RAW_BYTES_MAX {
        let len_bytes = u64::from(raw_len_bytes);
        return Some((CHUNK_RAW_LEN_POS, CorruptReason::FrameTooLong { len_bytes, limit_bytes: CHUNK_RAW_BYTES_MAX }));
    }
    // Every record takes at least a record header in the raw frames.
    if end_offset - base_offset > u64::from(raw_len_bytes) / frame::RECORD_HEADER_BYTES as u64 {
        return Some((CHUNK_END_OFFSET_POS, CorruptReason::Field("chunk claims more records than its bytes can hold")));
    }
    if !compressed && bytes_len != u64::from(raw_len_bytes) {
        return Some((CHUNK_BYTES_LEN_POS, CorruptReason::Field("bytes_len of an uncompressed chunk is not raw_len")));
    }
    // `make_chunk` only compresses when that saves bytes, so the compressed length is bounded too.
    if compressed && bytes_len >= u64::from(raw_len_bytes) {
        return Some((
            CHUNK_BYTES_LEN_POS,
            CorruptReason::Field("bytes_len of a compressed chunk is not below raw_len"),
        ));
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// The total length of the wire frame that starts `prefix`, from its first four bytes.
///
/// A receiver calls this as soon as it has four bytes, and buffers the body only if the length
/// is within [`FRAME_BYTES_MIN`]`..=`[`FRAME_BYTES_MAX`]. Nothing past the length field is
/// read; the checksum is verified by [`decode`].
///
/// # Errors
/// [`CodecError::Corrupt`] at position 0 when the length is out of bounds
/// ([`CorruptReason::FrameTooLong`] above the limit, [`CorruptReason::Field`] below the minimum).
///
/// # Examples
/// ```
/// use tern_replication::codec::{frame_len, CodecError, FRAME_BYTES_MAX};
/// assert_eq!(frame_len(&[3, 0])?, None); // fewer than four bytes
/// assert_eq!(frame_len(&[3, 0, 0, 0])?, Some(8 + 3));
/// assert!(matches!(frame_len(&FRAME_BYTES_MAX.to_le_bytes()), Err(CodecError::Corrupt { pos: 0, .. })));
/// # Ok::<(), CodecError>(())
/// ```
pub fn frame_len(prefix: &[u8]) -> Result<Option<usize>, CodecError> {
    let Ok(len) = Cursor::new(prefix).u32_le() else { return Ok(None) };
    // u64: the sum cannot overflow, even where usize has 32 bits.
    let frame_bytes = u64::from(len) + ENVELOPE_PREFIX_BYTES as u64;
    if frame_bytes > u64::from(FRAME_BYTES_MAX) {
        return Err(corrupt(0, CorruptReason::FrameTooLong { len_bytes: frame_bytes, limit_bytes: FRAME_BYTES_MAX }));
    }
    if frame_bytes < FRAME_BYTES_MIN as u64 {
        // Not `FrameTooShort`, whose message speaks of a batch header.
        return Err(corrupt(0, CorruptReason::Field("len is below the smallest message")));
    }
    Ok(Some(ENVELOPE_PREFIX_BYTES + len as usize))
}

/// Decodes the message at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold the whole wire frame (call [`frame_len`] to
/// learn how much it needs), or the message and the bytes it took. The length is bounded, then
/// the checksum verified, and only then is the payload interpreted; every string and list is
/// bounded before anything is allocated, and the payload must use up the frame exactly. The
/// chunk of an `Append` is a zero-copy slice of `buf`; its frames are not looked at here (see
/// [`chunk_frames`]). Versions: a `Hello` may offer any non-empty range starting at 1 or more
/// (the protocol core decides whether it overlaps this build's), a `Welcome` must pick a
/// version this build speaks.
///
/// # Errors
/// [`CodecError::Corrupt`] for bytes that break the format, with the position of the field
/// found wrong; [`CodecError::Unsupported`] for a checksummed frame of an unknown message type.
///
/// # Examples
/// ```
/// use bytes::Bytes;
/// use tern_replication::codec::{decode, encode};
/// use tern_replication::message::Message;
/// let msg = Message::Ack { log: "orders".into(), epoch: 2, written_end: 10, durable_end: 9, last_epoch: 2 };
/// let mut out = Vec::new();
/// encode(&msg, &mut out);
/// assert_eq!(decode(&Bytes::copy_from_slice(&out[..out.len() - 1]))?, None); // needs one more byte
/// assert_eq!(decode(&Bytes::from(out.clone()))?, Some((msg, out.len())));
/// # Ok::<(), tern_replication::codec::CodecError>(())
/// ```
pub fn decode(buf: &Bytes) -> Result<Option<(Message, usize)>, CodecError> {
    let Some(frame_bytes) = frame_len(buf)? else { return Ok(None) };
    let Some(frame) = buf.get(..frame_bytes) else { return Ok(None) };
    let mut reader = Reader { buf, cur: Cursor::new(frame) };
    let len_field = reader.take(4)?;
    let crc_pos = reader.pos();
    let stored = reader.u32()?;
    let computed = frame_crc(len_field, frame.get(ENVELOPE_PREFIX_BYTES..).unwrap_or_default());
    if stored != computed {
        return Err(corrupt(crc_pos, CorruptReason::Checksum { stored, computed }));
    }
    let type_byte = reader.u8()?;
    let msg = match type_byte {
        TYPE_HELLO => reader.hello()?,
        TYPE_WELCOME => reader.welcome()?,
        TYPE_REFUSE => Message::Refuse { reason: reader.string(0, REASON_BYTES_MAX, "refuse reason")? },
        TYPE_APPEND => Message::Append {
            log: reader.log_name()?,
            epoch: reader.u64()?,
            commit_end: reader.u64()?,
            chunk: reader.chunk()?,
        },
        TYPE_HEARTBEAT => reader.heartbeat()?,
        TYPE_ACK => Message::Ack {
            log: reader.log_name()?,
            epoch: reader.u64()?,
            written_end: reader.u64()?,
            durable_end: reader.u64()?,
            last_epoch: reader.u64()?,
        },
        TYPE_TRUNCATE => {
            let (log, epoch) = (reader.log_name()?, reader.u64()?);
            let to_pos = reader.pos();
            let (to, written_end, last_epoch) = (reader.u64()?, reader.u64()?, reader.u64()?);
            if to > written_end {
                return Err(corrupt(to_pos, CorruptReason::Field("truncate past the end it answers")));
            }
            // The leader's newest epoch at or below the follower's last one: never after it.
            let matched_pos = reader.pos();
            let matched_epoch = reader.u64()?;
            if matched_epoch > last_epoch {
                return Err(corrupt(matched_pos, CorruptReason::Field("truncate matches an epoch after the last one")));
            }
            Message::Truncate { log, epoch, to, written_end, last_epoch, matched_epoch }
        }
        TYPE_RESEED | TYPE_DATA_LOSS => {
            let (log, epoch) = (reader.log_name()?, reader.u64()?);
            let range_pos = reader.pos();
            let (a, b) = (reader.u64()?, reader.u64()?);
            if type_byte == TYPE_RESEED {
                if b >= a {
                    return Err(corrupt(
                        range_pos,
                        CorruptReason::Field("re-seed start not after the missing records"),
                    ));
                }
                Message::Reseed { log, epoch, start_offset: a, missing_from: b }
            } else {
                if a >= b {
                    return Err(corrupt(range_pos, CorruptReason::Field("empty data loss range")));
                }
                Message::DataLoss { log, epoch, from: a, to: b }
            }
        }
        TYPE_CLIENT_APPEND => {
            let log = reader.log_name()?;
            let acks = reader.acks()?;
            Message::ClientAppend { log, acks, records: reader.records()? }
        }
        TYPE_CLIENT_APPEND_IDEMPOTENT => {
            let log = reader.log_name()?;
            let acks = reader.acks()?;
            let producer_pos = reader.pos();
            let producer_id = reader.u64()?;
            if producer_id == 0 {
                return Err(corrupt(producer_pos, CorruptReason::Field("producer id 0")));
            }
            let sequence = reader.u64()?;
            Message::ClientAppendIdempotent { log, acks, producer_id, sequence, records: reader.records()? }
        }
        TYPE_CLIENT_APPENDED => {
            let (start, end, durability) = (reader.u64()?, reader.u64()?, reader.acks()?);
            let (copies, nodes) = (reader.u8()?, reader.u8()?);
            if copies > nodes {
                return Err(corrupt(reader.pos() - 2, CorruptReason::Field("receipt copies exceed nodes")));
            }
            Message::ClientAppended { start, end, durability, copies, nodes }
        }
        TYPE_CLIENT_READ => {
            let (log, from, max) = (reader.log_name()?, reader.u64()?, reader.u32()?);
            let flag_pos = reader.pos();
            let uncommitted = match reader.u8()? {
                0 => false,
                1 => true,
                _ => return Err(corrupt(flag_pos, CorruptReason::Field("uncommitted flag"))),
            };
            // Absent for no wait (as in the first layout of the message), so that one message
            // has one encoding.
            let wait_pos = reader.pos();
            let wait_ms = if reader.pos() < frame.len() { reader.u32()? } else { 0 };
            if reader.pos() > wait_pos && wait_ms == 0 {
                return Err(corrupt(wait_pos, CorruptReason::Field("read wait of 0 written out")));
            }
            if wait_ms > CLIENT_READ_WAIT_MS_MAX {
                return Err(corrupt(wait_pos, CorruptReason::Field("read wait over 30 s")));
            }
            Message::ClientRead { log, from, max, uncommitted, wait_ms }
        }
        TYPE_CLIENT_RECORDS => {
            Message::ClientRecords { start: reader.u64()?, commit_end: reader.u64()?, records: reader.records()? }
        }
        TYPE_CLIENT_STATUS => Message::ClientStatus,
        TYPE_CLIENT_STATUS_REPLY => {
            let pos = reader.pos();
            let len = reader.u32()? as usize;
            if len > STATUS_BYTES_MAX {
                return Err(corrupt(pos, CorruptReason::Field("status length")));
            }
            let text =
                std::str::from_utf8(reader.take(len)?).map_err(|_| corrupt(pos, CorruptReason::Field("status")))?;
            Message::ClientStatusReply { json: text.to_owned() }
        }
        message_type => return Err(CodecError::Unsupported { message_type }),
    };
    if reader.cur.remaining_bytes() > 0 {
        return Err(corrupt(reader.pos(), CorruptReason::TrailingGarbage));
    }
    Ok(Some((msg, frame_bytes)))
}

/// The cursor over one wire frame, with the position of each field attached to its errors.
struct Reader<'a> {
    /// The whole buffer, for zero-copy slices; `cur` starts at its first byte.
    buf: &'a Bytes,
    cur: Cursor<'a>,
}

impl<'a> Reader<'a> {
    fn pos(&self) -> usize {
        self.cur.pos()
    }

    /// Runs one cursor read; an error names the position where the read started.
    fn read<T>(&mut self, read: impl FnOnce(&mut Cursor<'a>) -> Result<T, CorruptReason>) -> Result<T, CodecError> {
        let pos = self.cur.pos();
        read(&mut self.cur).map_err(|reason| corrupt(pos, reason))
    }

    fn take(&mut self, len_bytes: usize) -> Result<&'a [u8], CodecError> {
        self.read(|cur| cur.take(len_bytes))
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        self.read(Cursor::u8)
    }

    fn u16(&mut self) -> Result<u16, CodecError> {
        self.read(Cursor::u16_le)
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        self.read(Cursor::u32_le)
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        self.read(Cursor::u64_le)
    }

    /// `len u16 | UTF-8 bytes`, with `len` in `len_min..=len_max`.
    fn string(&mut self, len_min: usize, len_max: usize, field: &'static str) -> Result<String, CodecError> {
        let pos = self.pos();
        let len_bytes = usize::from(self.u16()?);
        if len_bytes < len_min || len_bytes > len_max {
            return Err(corrupt(pos, CorruptReason::Field(field)));
        }
        let bytes = self.take(len_bytes)?;
        let text = std::str::from_utf8(bytes).map_err(|_| corrupt(pos, CorruptReason::Field(field)))?;
        Ok(text.to_owned())
    }

    /// A record list, bounded by [`CLIENT_RECORDS_MAX`] and by what the frame can hold (each
    /// record takes at least its 4-byte length) before anything is allocated; the records are
    /// zero-copy slices of the buffer.
    fn records(&mut self) -> Result<Vec<Bytes>, CodecError> {
        let pos = self.pos();
        let count = self.u32()?;
        if count > CLIENT_RECORDS_MAX || count as usize > self.cur.remaining_bytes() / 4 {
            return Err(corrupt(pos, CorruptReason::Field("record count")));
        }
        let mut records = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let len = self.u32()? as usize;
            let start = self.pos();
            self.take(len)?;
            records.push(self.buf.slice(start..start + len));
        }
        Ok(records)
    }

    fn acks(&mut self) -> Result<Acks, CodecError> {
        let pos = self.pos();
        Acks::from_u8(self.u8()?).ok_or_else(|| corrupt(pos, CorruptReason::Field("unknown ack level")))
    }

    fn log_name(&mut self) -> Result<String, CodecError> {
        self.string(1, LOG_NAME_BYTES_MAX, "log name")
    }

    /// A list's `count u32`, bounded by [`LOGS_MAX`] and by what the rest of the frame can hold
    /// at `item_bytes_min` bytes an item, so that allocating `count` items is safe.
    fn log_count(&mut self, item_bytes_min: usize) -> Result<usize, CodecError> {
        let pos = self.pos();
        let count = self.u32()?;
        if count > LOGS_MAX {
            return Err(corrupt(pos, CorruptReason::Field("log count exceeds LOGS_MAX")));
        }
        let count = count as usize;
        let remaining_bytes = self.cur.remaining_bytes();
        if count > remaining_bytes / item_bytes_min {
            let needed_bytes = (count * item_bytes_min - remaining_bytes) as u64;
            return Err(corrupt(pos, CorruptReason::Truncated { needed_bytes }));
        }
        Ok(count)
    }

    fn hello(&mut self) -> Result<Message, CodecError> {
        let cluster_id = self.u64()?;
        let node_id = self.u64()?;
        let version_pos = self.pos();
        let version_min = self.u16()?;
        let version_max = self.u16()?;
        if version_min == 0 || version_min > version_max {
            return Err(corrupt(version_pos, CorruptReason::Field("Hello versions are an empty range or start at 0")));
        }
        let count = self.log_count(HELLO_LOG_BYTES_MIN)?;
        let mut logs = Vec::with_capacity(count);
        for _ in 0..count {
            logs.push((self.log_name()?, self.u64()?));
        }
        Ok(Message::Hello { cluster_id, node_id, version_min, version_max, logs })
    }

    fn welcome(&mut self) -> Result<Message, CodecError> {
        let cluster_id = self.u64()?;
        let node_id = self.u64()?;
        let version_pos = self.pos();
        let version = self.u16()?;
        // The answer must pick from the range this build offered in its Hello.
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&version) {
            return Err(corrupt(version_pos, CorruptReason::Version { found: u32::from(version) }));
        }
        Ok(Message::Welcome { cluster_id, node_id, version })
    }

    fn heartbeat(&mut self) -> Result<Message, CodecError> {
        let epoch = self.u64()?;
        let count = self.log_count(HEARTBEAT_LOG_BYTES_MIN)?;
        let mut logs = Vec::with_capacity(count);
        for _ in 0..count {
            logs.push((self.log_name()?, self.u64()?, self.u64()?));
        }
        Ok(Message::Heartbeat { epoch, logs })
    }

    fn chunk(&mut self) -> Result<Chunk, CodecError> {
        let chunk_pos = self.pos();
        let base_offset = self.u64()?;
        let end_offset = self.u64()?;
        let raw_len_bytes = self.u32()?;
        let flags = self.u8()?;
        if flags & !CHUNK_FLAG_ZSTD != 0 {
            return Err(corrupt(chunk_pos + CHUNK_FLAGS_POS, CorruptReason::Field("chunk flags")));
        }
        let compressed = flags & CHUNK_FLAG_ZSTD != 0;
        let bytes_len = self.u32()?;
        if let Some((field_pos, reason)) =
            chunk_layout_error(base_offset, end_offset, raw_len_bytes, compressed, u64::from(bytes_len))
        {
            return Err(corrupt(chunk_pos + field_pos, reason));
        }
        let bytes_pos = self.pos();
        self.take(bytes_len as usize)?;
        let bytes = self.buf.slice(bytes_pos..self.pos());
        Ok(Chunk { base_offset, end_offset, raw_len_bytes, compressed, bytes })
    }
}

// ---------------------------------------------------------------------------------------------
// Chunks

/// How a leader compresses the chunks it ships.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compression {
    /// zstd level (1 is fast; up to 22).
    pub level: i32,
    /// A chunk is shipped compressed only when that saves at least this fraction of its bytes
    /// (0.1 = a tenth); otherwise raw. 1 or more turns compression off: zstd is not even run.
    pub min_saving: f64,
}

impl Compression {
    /// No compression: every chunk is shipped raw.
    pub const OFF: Compression = Compression { level: 1, min_saving: 1.0 };

    /// Whether chunks are compressed at all.
    pub fn is_on(&self) -> bool {
        self.min_saving < 1.0
    }
}

impl Default for Compression {
    /// zstd level 1, kept when it saves at least a tenth.
    fn default() -> Self {
        Compression { level: 1, min_saving: 0.1 }
    }
}

/// Builds the chunk that ships `frames`, consecutive batch frames holding the records
/// `base_offset..end_offset`.
///
/// The frames are compressed with zstd at `level`, and the compression is kept only when it
/// saves at least `min_saving` (a fraction: 0.1 = a tenth) of the bytes; otherwise the chunk
/// carries `frames` itself, without a copy. With `min_saving` 1 or more zstd is not run. A chunk is built once and shared by every peer
/// that needs the same range.
///
/// # Panics
/// When `frames` is longer than [`CHUNK_RAW_BYTES_MAX`] or `end_offset < base_offset`. Debug
/// builds also check, through [`chunk_frames`], that the frames really run from `base_offset`
/// to `end_offset`.
///
/// # Examples
/// ```
/// use bytes::Bytes;
/// use tern_replication::codec::{chunk_frames, make_chunk};
/// use tern_segment::frame::{encode, BatchMeta, Record};
/// let mut frames = Vec::new();
/// encode(&mut frames, &BatchMeta { base_offset: 5, ..Default::default() }, &[Record::new(&[7; 4096], 0)])?;
/// let frames = Bytes::from(frames);
/// let chunk = make_chunk(frames.clone(), 5, 6, 3, 0.1);
/// assert!(chunk.compressed && chunk.bytes.len() < frames.len());
/// assert_eq!(chunk_frames(&chunk)?, frames);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[expect(clippy::cast_possible_truncation)] // NOTE: the length is bounded by CHUNK_RAW_BYTES_MAX first
pub fn make_chunk(frames: Bytes, base_offset: u64, end_offset: u64, level: i32, min_saving: f64) -> Chunk {
    assert!(
        frames.len() <= CHUNK_RAW_BYTES_MAX as usize,
        "{} bytes of frames exceed CHUNK_RAW_BYTES_MAX ({CHUNK_RAW_BYTES_MAX})",
        frames.len()
    );
    assert!(end_offset >= base_offset, "chunk end {end_offset} is below its base {base_offset}");
    let raw_len_bytes = frames.len() as u32;
    // A compression error is not the peer's problem: ship the frames as they are.
    // Nothing saves all of the bytes: with `min_saving` 1 or more zstd is not even tried.
    let compressed = if min_saving >= 1.0 || !sample_compresses(&frames, level, min_saving) {
        None
    } else {
        compress(&frames, level).filter(|c| saves_enough(c.len(), frames.len(), min_saving))
    };
    let chunk = match compressed {
        Some(compressed) => {
            Chunk { base_offset, end_offset, raw_len_bytes, compressed: true, bytes: Bytes::from(compressed) }
        }
        None => Chunk { base_offset, end_offset, raw_len_bytes, compressed: false, bytes: frames.clone() },
    };
    // The decoder re-checks the chunk the encoder built: layout, decompression, continuity.
    debug_assert_eq!(chunk_frames(&chunk), Ok(frames), "make_chunk built a chunk that does not decode");
    chunk
}

// One zstd context per thread, made once and reused: creating a context for every chunk cost
// more than compressing a small chunk (ZSTD_createCCtx and ZSTD_createDCtx led the profile of
// the replicated small-sync workload).
thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// `raw` compressed at `level` with this thread's context; `None` on a zstd error.
fn compress(raw: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(made_at, _)| *made_at != level) {
            *cell = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, compressor) = cell.as_mut()?;
        compressor.compress(raw).ok()
    })
}

/// `compressed` decompressed into at most `capacity` bytes with this thread's context; `None`
/// when it is not zstd data or holds more than `capacity` bytes.
fn decompress(compressed: &[u8], capacity: usize) -> Option<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new().ok()?);
        }
        cell.as_mut()?.decompress(compressed, capacity).ok()
    })
}

/// Bytes of a large chunk compressed first, to learn whether compressing all of it pays.
const SAMPLE_BYTES: usize = 64 << 10;

/// Whether `frames` look worth compressing: a chunk of more than four samples is judged by one
/// sample from its middle, so incompressible data (already compressed or encrypted payloads)
/// costs a sixteenth of a 1 MiB chunk's compression instead of all of it. A smaller chunk is
/// simply compressed.
fn sample_compresses(frames: &[u8], level: i32, min_saving: f64) -> bool {
    if frames.len() <= 4 * SAMPLE_BYTES {
        return true;
    }
    let start = (frames.len() - SAMPLE_BYTES) / 2;
    let Some(sample) = frames.get(start..start + SAMPLE_BYTES) else { return true };
    compress(sample, level).is_some_and(|c| saves_enough(c.len(), sample.len(), min_saving))
}

/// True when compressing `raw_bytes` down to `compressed_bytes` saves at least `min_saving` of
/// them. Never true when nothing is saved, whatever `min_saving` is (a NaN saves nothing).
fn saves_enough(compressed_bytes: usize, raw_bytes: usize, min_saving: f64) -> bool {
    compressed_bytes < raw_bytes && (raw_bytes - compressed_bytes) as f64 >= min_saving * raw_bytes as f64
}

/// The raw frames of `chunk`, checked.
///
/// A compressed chunk is decompressed with its declared `raw_len` as the bound on the output
/// (refused above [`CHUNK_RAW_BYTES_MAX`] before anything is allocated), and the output must be
/// exactly `raw_len` bytes. Then every frame is decoded with [`tern_segment::frame::decode`]
/// (checksums verified): they must follow each other from `chunk.base_offset` to
/// `chunk.end_offset` exactly and use up all the bytes. An uncompressed chunk's frames are
/// returned without a copy.
///
/// # Errors
/// [`CodecError::Corrupt`], with the position of the bad frame in the raw frames (0 for a
/// chunk that breaks the layout rules or does not decompress).
///
/// # Examples
/// ```
/// use bytes::Bytes;
/// use tern_replication::codec::{chunk_frames, CodecError};
/// use tern_replication::message::Chunk;
/// use tern_segment::CorruptReason;
/// // A compressed chunk whose raw_len lies is refused before decompressing.
/// let chunk = Chunk { base_offset: 0, end_offset: 0, raw_len_bytes: u32::MAX, compressed: true, bytes: Bytes::new() };
/// assert!(matches!(chunk_frames(&chunk), Err(CodecError::Corrupt { reason: CorruptReason::FrameTooLong { .. }, .. })));
/// ```
pub fn chunk_frames(chunk: &Chunk) -> Result<Bytes, CodecError> {
    chunk_frames_within(chunk, u64::MAX)
}

/// [`chunk_frames`], and every frame's epoch must be at most `epoch_max`: a follower applies
/// nothing stamped by a leader newer than the one that sent it.
///
/// # Errors
/// As [`chunk_frames`]; a frame of a later epoch is [`CodecError::Corrupt`] at its position.
pub fn chunk_frames_within(chunk: &Chunk, epoch_max: u64) -> Result<Bytes, CodecError> {
    let bytes_len = chunk.bytes.len() as u64;
    if let Some((_, reason)) =
        chunk_layout_error(chunk.base_offset, chunk.end_offset, chunk.raw_len_bytes, chunk.compressed, bytes_len)
    {
        return Err(corrupt(0, reason));
    }
    let raw_len_bytes = chunk.raw_len_bytes as usize;
    let raw = if chunk.compressed {
        // The capacity bounds the output: more data than declared fails instead of growing.
        let raw = decompress(&chunk.bytes, raw_len_bytes)
            .ok_or_else(|| corrupt(0, CorruptReason::Field("chunk bytes are not zstd data within raw_len")))?;
        if raw.len() != raw_len_bytes {
            let needed_bytes = (raw_len_bytes - raw.len()) as u64; // decompress never exceeds its bound
            return Err(corrupt(raw.len(), CorruptReason::Truncated { needed_bytes }));
        }
        Bytes::from(raw)
    } else {
        chunk.bytes.clone()
    };
    let mut pos = 0usize;
    let mut next_offset = chunk.base_offset;
    // Bounded: every pass consumes a whole frame of at least FRAME_PREFIX_BYTES + 56 bytes.
    while let Some(rest) = raw.get(pos..).filter(|rest| !rest.is_empty()) {
        // `None` is a zero length or fewer than four bytes: padding, which a chunk never has.
        let found = frame::decode(rest).map_err(|reason| corrupt(pos, reason))?;
        let found = found.ok_or(corrupt(pos, CorruptReason::TrailingGarbage))?;
        if found.header.epoch > epoch_max {
            return Err(corrupt(pos, CorruptReason::Records("batch epoch is later than its sender's")));
        }
        if found.header.base_offset != next_offset {
            let discontinuity = CorruptReason::Discontinuity { expected: next_offset, found: found.header.base_offset };
            return Err(corrupt(pos, discontinuity));
        }
        next_offset = found.header.end_offset();
        if next_offset > chunk.end_offset {
            return Err(corrupt(pos, CorruptReason::Records("frame runs past the chunk's end_offset")));
        }
        pos += found.frame_len;
    }
    if next_offset != chunk.end_offset {
        return Err(corrupt(pos, CorruptReason::Records("frames end before the chunk's end_offset")));
    }
    Ok(raw)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{RngCore, SeedableRng};
    use tern_segment::frame::{BatchMeta, Record};

    fn encoded(msg: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        encode(msg, &mut out);
        out
    }

    fn decoded(bytes: &[u8]) -> Result<Option<(Message, usize)>, CodecError> {
        decode(&Bytes::copy_from_slice(bytes))
    }

    /// Encodes `batches` (each a list of values) as consecutive frames from `base_offset`;
    /// returns the frames and the end offset.
    fn frames(base_offset: u64, batches: &[Vec<Vec<u8>>]) -> (Bytes, u64) {
        let mut out = Vec::new();
        let mut offset = base_offset;
        for (i, values) in batches.iter().enumerate() {
            let records: Vec<Record<'_>> = values.iter().map(|v| Record::new(v, 1_000 + i as u64)).collect();
            frame::encode(&mut out, &BatchMeta { base_offset: offset, epoch: 2, ..Default::default() }, &records)
                .expect("small batches encode");
            offset += records.len() as u64;
        }
        (Bytes::from(out), offset)
    }

    fn every_variant() -> Vec<Message> {
        let (raw, end) = frames(40, &[vec![b"a".to_vec(), b"bb".to_vec()], vec![vec![7; 300]]]);
        vec![
            Message::ClientAppend {
                log: "orders".into(),
                acks: Acks::Quorum,
                records: vec![Bytes::from_static(b"a"), Bytes::new(), Bytes::from(vec![7u8; 300])],
            },
            Message::ClientAppend { log: "o".into(), acks: Acks::Written, records: vec![] },
            Message::Reseed { log: "orders".into(), epoch: 3, start_offset: 900, missing_from: 120 },
            Message::DataLoss { log: "orders".into(), epoch: 3, from: 120, to: 900 },
            Message::ClientAppend { log: "o".into(), acks: Acks::Leader, records: vec![] },
            Message::ClientAppended { start: 3, end: 6, durability: Acks::Quorum, copies: 2, nodes: 3 },
            Message::ClientRead { log: "orders".into(), from: 9, max: 100, uncommitted: false, wait_ms: 0 },
            Message::ClientRead { log: "orders".into(), from: 9, max: 100, uncommitted: true, wait_ms: 30_000 },
            Message::ClientRecords { start: 9, commit_end: 12, records: vec![Bytes::from_static(b"x"); 3] },
            Message::ClientStatus,
            Message::ClientStatusReply { json: "{\"node\":1}".into() },
            Message::ClientAppendIdempotent {
                log: "orders".into(),
                acks: Acks::Quorum,
                producer_id: u64::MAX,
                sequence: 0,
                records: vec![Bytes::from_static(b"a"), Bytes::new()],
            },
            Message::ClientAppendIdempotent {
                log: "o".into(),
                acks: Acks::Written,
                producer_id: 1,
                sequence: u64::MAX,
                records: vec![],
            },
            Message::Hello {
                cluster_id: 0xC1,
                node_id: 2,
                version_min: 1,
                version_max: 3,
                logs: vec![("orders".into(), 17), ("ü".into(), 0)],
            },
            Message::Hello { cluster_id: 0, node_id: 0, version_min: 1, version_max: 1, logs: vec![] },
            Message::Welcome { cluster_id: 0xC1, node_id: 1, version: PROTOCOL_VERSION_MAX },
            Message::Refuse { reason: String::new() },
            Message::Refuse { reason: "cluster id 0xc2 is not 0xc1".into() },
            Message::Append {
                log: "orders".into(),
                epoch: 4,
                commit_end: 39,
                chunk: make_chunk(raw.clone(), 40, end, 3, 0.0),
            },
            Message::Append { log: "o".into(), epoch: 4, commit_end: 39, chunk: make_chunk(raw, 40, end, 3, 0.99) },
            Message::Append {
                log: "o".into(),
                epoch: 4,
                commit_end: 41,
                chunk: make_chunk(Bytes::new(), 41, 41, 3, 0.1),
            },
            Message::Heartbeat { epoch: 9, logs: vec![("orders".into(), 43, 40), ("x".repeat(255), u64::MAX, 0)] },
            Message::Heartbeat { epoch: 9, logs: vec![] },
            Message::Ack { log: "orders".into(), epoch: 4, written_end: 43, durable_end: 41, last_epoch: 3 },
            Message::Truncate {
                log: "orders".into(),
                epoch: 5,
                to: 40,
                written_end: 43,
                last_epoch: 3,
                matched_epoch: 2,
            },
            Message::Truncate { log: "o".into(), epoch: 1, to: 0, written_end: 0, last_epoch: 0, matched_epoch: 0 },
        ]
    }

    #[test]
    fn round_trips_every_message_variant() {
        for msg in every_variant() {
            let out = encoded(&msg);
            assert_eq!(frame_len(&out), Ok(Some(out.len())), "{msg:?}");
            assert_eq!(decoded(&out), Ok(Some((msg.clone(), out.len()))), "{msg:?}");
            // Followed by more bytes (the next message): only this one is consumed.
            let mut two = out.clone();
            two.extend_from_slice(&out);
            assert_eq!(decoded(&two), Ok(Some((msg.clone(), out.len()))), "{msg:?}");
            // Any strict prefix needs more bytes.
            for cut in 0..out.len() {
                assert_eq!(decoded(&out[..cut]), Ok(None), "{msg:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn chunk_bytes_are_slices_of_the_received_buffer() {
        let (raw, end) = frames(0, &[vec![vec![1; 100]]]);
        let msg = Message::Append { log: "l".into(), epoch: 1, commit_end: 0, chunk: make_chunk(raw, 0, end, 1, 0.5) };
        let buf = Bytes::from(encoded(&msg));
        let Some((Message::Append { chunk, .. }, _)) = decode(&buf).unwrap() else { panic!("an Append") };
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        assert!(range.contains(&(chunk.bytes.as_ptr() as usize)), "the chunk was copied");
    }

    #[test]
    fn every_single_bit_flip_is_rejected_or_needs_more() {
        for msg in every_variant() {
            let out = encoded(&msg);
            for bit in 0..out.len() * 8 {
                let mut damaged = out.clone();
                damaged[bit / 8] ^= 1 << (bit % 8);
                match decoded(&damaged) {
                    Err(_) => {}
                    // Only a flip in the length field can make the frame look longer than the buffer.
                    Ok(None) => assert!(bit < 32, "{msg:?}: bit {bit} flipped, decode waits for more"),
                    Ok(Some(other)) => panic!("{msg:?}: bit {bit} flipped, decoded as {other:?}"),
                }
            }
        }
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let too_long = (FRAME_BYTES_MAX - ENVELOPE_PREFIX_BYTES as u32 + 1).to_le_bytes();
        let len_bytes = u64::from(FRAME_BYTES_MAX) + 1;
        let refused = corrupt(0, CorruptReason::FrameTooLong { len_bytes, limit_bytes: FRAME_BYTES_MAX });
        assert_eq!(frame_len(&too_long), Err(refused));
        // decode refuses it from the four bytes alone, instead of asking for 80 MiB more.
        assert_eq!(decode(&Bytes::copy_from_slice(&too_long)), Err(refused));
        let huge = u32::MAX.to_le_bytes();
        assert!(matches!(
            frame_len(&huge),
            Err(CodecError::Corrupt { pos: 0, reason: CorruptReason::FrameTooLong { .. } })
        ));
        // The largest allowed length is accepted and waits for its body.
        let largest = (FRAME_BYTES_MAX - ENVELOPE_PREFIX_BYTES as u32).to_le_bytes();
        assert_eq!(frame_len(&largest), Ok(Some(FRAME_BYTES_MAX as usize)));
        assert_eq!(decode(&Bytes::copy_from_slice(&largest)), Ok(None));
        // Too short to hold a type byte.
        let short = 0u32.to_le_bytes();
        assert_eq!(frame_len(&short), Err(corrupt(0, CorruptReason::Field("len is below the smallest message"))));
        assert_eq!(
            decode(&Bytes::copy_from_slice(&short)),
            Err(corrupt(0, CorruptReason::Field("len is below the smallest message")))
        );
    }

    /// Rewrites `len` and the crc of a frame built by hand, so that the checks behind the
    /// checksum are reached.
    fn resealed(mut frame: Vec<u8>) -> Vec<u8> {
        let len = (frame.len() - ENVELOPE_PREFIX_BYTES) as u32;
        frame[..4].copy_from_slice(&len.to_le_bytes());
        let crc = frame_crc(&frame[..4], &frame[ENVELOPE_PREFIX_BYTES..]);
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
        frame
    }

    fn frame_of(message_type: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; ENVELOPE_PREFIX_BYTES];
        frame.push(message_type);
        frame.extend_from_slice(payload);
        resealed(frame)
    }

    #[test]
    fn unknown_type_is_unsupported_and_a_bad_checksum_corrupt() {
        assert_eq!(decoded(&frame_of(0, &[0, 0])), Err(CodecError::Unsupported { message_type: 0 }));
        assert_eq!(decoded(&frame_of(10, &[0, 0])), Err(CodecError::Unsupported { message_type: 10 }));
        let mut bad_crc = frame_of(TYPE_REFUSE, &[0, 0]);
        bad_crc[4] ^= 1;
        assert!(matches!(
            decoded(&bad_crc),
            Err(CodecError::Corrupt { pos: 4, reason: CorruptReason::Checksum { .. } })
        ));
    }

    #[test]
    fn bytes_after_the_payload_are_rejected() {
        let mut out = encoded(&Message::Refuse { reason: "no".into() });
        out.push(0);
        let out = resealed(out);
        assert_eq!(decoded(&out), Err(corrupt(out.len() - 1, CorruptReason::TrailingGarbage)));
    }

    #[test]
    fn a_read_waits_only_when_its_wait_is_written_and_within_the_bound() {
        let read = |wait_ms| Message::ClientRead { log: "o".into(), from: 5, max: 7, uncommitted: true, wait_ms };
        let (full, short) = (encoded(&read(250)), encoded(&read(0)));
        // No wait is the first layout of the message, which ended at the flag.
        assert_eq!(short.len() + 4, full.len());
        assert_eq!(decoded(&short), Ok(Some((read(0), short.len()))));
        let at = full.len() - 4;
        let with_wait = |wait_ms: u32| {
            let mut bytes = full.clone();
            bytes[at..].copy_from_slice(&wait_ms.to_le_bytes());
            resealed(bytes)
        };
        assert_eq!(decoded(&with_wait(0)), Err(corrupt(at, CorruptReason::Field("read wait of 0 written out"))));
        let over = with_wait(CLIENT_READ_WAIT_MS_MAX + 1);
        assert_eq!(decoded(&over), Err(corrupt(at, CorruptReason::Field("read wait over 30 s"))));
        let most = with_wait(CLIENT_READ_WAIT_MS_MAX);
        assert_eq!(decoded(&most), Ok(Some((read(CLIENT_READ_WAIT_MS_MAX), most.len()))));
    }

    #[test]
    fn an_idempotent_append_is_laid_out_as_documented_and_refuses_producer_0() {
        let msg = Message::ClientAppendIdempotent {
            log: "ab".into(),
            acks: Acks::Leader,
            producer_id: 0x0102_0304_0506_0708,
            sequence: 9,
            records: vec![Bytes::from_static(b"xyz")],
        };
        let out = encoded(&msg);
        // PROTOCOL.md "Client messages": log | acks | producer_id | sequence | records.
        let mut payload = vec![2, 0, b'a', b'b', 1];
        payload.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        payload.extend_from_slice(&9u64.to_le_bytes());
        payload.extend_from_slice(&[1, 0, 0, 0, 3, 0, 0, 0, b'x', b'y', b'z']);
        assert_eq!(out, frame_of(TYPE_CLIENT_APPEND_IDEMPOTENT, &payload));
        let producer_at = ENVELOPE_PREFIX_BYTES + 1 + 4 + 1;
        let mut zero = out.clone();
        zero[producer_at..producer_at + 8].fill(0);
        assert_eq!(decoded(&resealed(zero)), Err(corrupt(producer_at, CorruptReason::Field("producer id 0"))));
        // A record count the frame cannot hold is refused before anything is allocated.
        let count_at = producer_at + 16;
        let mut lying = out.clone();
        lying[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decoded(&resealed(lying)), Err(corrupt(count_at, CorruptReason::Field("record count"))));
        let mut bad_acks = out;
        bad_acks[producer_at - 1] = 3;
        assert_eq!(
            decoded(&resealed(bad_acks)),
            Err(corrupt(producer_at - 1, CorruptReason::Field("unknown ack level")))
        );
    }

    #[test]
    fn a_truncate_cuts_within_the_end_it_answers_and_matches_no_epoch_after_the_last() {
        let truncate = |matched_epoch| Message::Truncate {
            log: "o".into(),
            epoch: 4,
            to: 5,
            written_end: 7,
            last_epoch: 3,
            matched_epoch,
        };
        let out = encoded(&truncate(2));
        // The envelope (8), the type (1), the name (2 + 1), then epoch, to, written_end,
        // last_epoch and matched_epoch, 8 bytes each.
        let (to_at, matched_at) = (20, 44);
        assert_eq!(out.len(), matched_at + 8);
        let with = |at: usize, value: u64| {
            let mut bytes = out.clone();
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
            resealed(bytes)
        };
        let past = Err(corrupt(to_at, CorruptReason::Field("truncate past the end it answers")));
        assert_eq!(decoded(&with(to_at, 8)), past);
        let later = Err(corrupt(matched_at, CorruptReason::Field("truncate matches an epoch after the last one")));
        assert_eq!(decoded(&with(matched_at, 4)), later);
        let last = with(matched_at, 3);
        assert_eq!(decoded(&last), Ok(Some((truncate(3), last.len()))));
        // The field is always there: a `Truncate` that ends after `last_epoch` is short.
        let short = resealed(out[..matched_at].to_vec());
        assert_eq!(decoded(&short), Err(corrupt(matched_at, CorruptReason::Truncated { needed_bytes: 8 })));
    }

    #[test]
    fn versions_are_checked() {
        let hello = |min: u16, max: u16| {
            let mut p = vec![0u8; 16];
            p.extend_from_slice(&min.to_le_bytes());
            p.extend_from_slice(&max.to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
            decoded(&frame_of(TYPE_HELLO, &p))
        };
        assert!(matches!(hello(0, 1), Err(CodecError::Corrupt { pos: 25, .. })));
        assert!(matches!(hello(3, 2), Err(CodecError::Corrupt { pos: 25, .. })));
        // A range this build does not share is still a Hello: the core answers with a Refuse.
        assert!(matches!(hello(7, 9), Ok(Some((Message::Hello { version_min: 7, .. }, _)))));
        let welcome = |version: u16| {
            let mut p = vec![0u8; 16];
            p.extend_from_slice(&version.to_le_bytes());
            decoded(&frame_of(TYPE_WELCOME, &p))
        };
        let unknown = PROTOCOL_VERSION_MAX + 1;
        assert_eq!(welcome(unknown), Err(corrupt(25, CorruptReason::Version { found: u32::from(unknown) })));
        assert_eq!(welcome(0), Err(corrupt(25, CorruptReason::Version { found: 0 })));
    }

    #[test]
    fn strings_are_bounded_and_utf8() {
        let ack = |name: &[u8]| {
            let mut p = (name.len() as u16).to_le_bytes().to_vec();
            p.extend_from_slice(name);
            p.extend_from_slice(&[0u8; 32]);
            decoded(&frame_of(TYPE_ACK, &p))
        };
        assert!(matches!(ack(b"ok"), Ok(Some(_))));
        assert_eq!(ack(b""), Err(corrupt(9, CorruptReason::Field("log name"))));
        assert_eq!(ack(&[b'x'; 256]), Err(corrupt(9, CorruptReason::Field("log name"))));
        assert_eq!(ack(&[0xff, 0xfe]), Err(corrupt(9, CorruptReason::Field("log name"))));
        let refuse = |len: u16| decoded(&frame_of(TYPE_REFUSE, &len.to_le_bytes()));
        assert_eq!(refuse(1025), Err(corrupt(9, CorruptReason::Field("refuse reason"))));
        // The encoder cuts a long reason at a character boundary, never inside a character.
        let long = "é".repeat(600); // 1200 bytes
        let out = encoded(&Message::Refuse { reason: long });
        let Ok(Some((Message::Refuse { reason }, _))) = decoded(&out) else { panic!("a Refuse") };
        assert_eq!(reason, "é".repeat(512));
    }

    #[test]
    fn log_counts_are_bounded_before_allocating() {
        let heartbeat = |count: u32, extra_bytes: usize| {
            let mut p = 0u64.to_le_bytes().to_vec();
            p.extend_from_slice(&count.to_le_bytes());
            p.extend(std::iter::repeat_n(0u8, extra_bytes));
            decoded(&frame_of(TYPE_HEARTBEAT, &p))
        };
        assert_eq!(heartbeat(LOGS_MAX + 1, 0), Err(corrupt(17, CorruptReason::Field("log count exceeds LOGS_MAX"))));
        // Two items need at least 38 bytes; 37 are there.
        assert_eq!(
            heartbeat(2, 2 * HEARTBEAT_LOG_BYTES_MIN - 1),
            Err(corrupt(17, CorruptReason::Truncated { needed_bytes: 1 }))
        );
        // A count within bounds whose items are malformed fails on the items.
        assert_eq!(heartbeat(2, 2 * HEARTBEAT_LOG_BYTES_MIN), Err(corrupt(21, CorruptReason::Field("log name"))));
    }

    #[test]
    fn chunk_layout_is_checked_when_decoding() {
        let append = |raw_len: u32, flags: u8, bytes: &[u8], base: u64, end: u64| {
            let mut p = vec![1, 0, b'l'];
            p.extend_from_slice(&[0u8; 16]);
            p.extend_from_slice(&base.to_le_bytes());
            p.extend_from_slice(&end.to_le_bytes());
            p.extend_from_slice(&raw_len.to_le_bytes());
            p.push(flags);
            p.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            p.extend_from_slice(bytes);
            decoded(&frame_of(TYPE_APPEND, &p))
        };
        const CHUNK_POS: usize = 9 + 3 + 16;
        assert!(matches!(append(3, 0, b"abc", 0, 0), Ok(Some(_))));
        assert!(matches!(append(4, 1, b"abc", 0, 0), Ok(Some(_))));
        assert_eq!(
            append(3, 2, b"abc", 0, 0),
            Err(corrupt(CHUNK_POS + CHUNK_FLAGS_POS, CorruptReason::Field("chunk flags")))
        );
        assert!(matches!(append(4, 0, b"abc", 0, 0), Err(CodecError::Corrupt { pos: 49, .. })));
        assert!(matches!(append(3, 1, b"abc", 0, 0), Err(CodecError::Corrupt { pos: 49, .. })));
        assert!(matches!(append(3, 0, b"abc", 5, 4), Err(CodecError::Corrupt { pos: 36, .. })));
        assert!(matches!(append(24, 0, &[0; 24], 0, 3), Err(CodecError::Corrupt { pos: 36, .. })));
        assert!(matches!(append(24, 0, &[0; 24], 0, 2), Ok(Some(_))));
        let over = CHUNK_RAW_BYTES_MAX + 1;
        let too_long = CorruptReason::FrameTooLong { len_bytes: u64::from(over), limit_bytes: CHUNK_RAW_BYTES_MAX };
        assert_eq!(append(over, 1, b"abc", 0, 0), Err(corrupt(CHUNK_POS + CHUNK_RAW_LEN_POS, too_long)));
    }

    fn compressible_frames() -> (Bytes, u64) {
        let values: Vec<Vec<u8>> =
            (0..64).map(|i| format!("order {i} for customer 12345, status shipped").into_bytes()).collect();
        frames(100, &[values.clone(), values])
    }

    fn incompressible_frames() -> (Bytes, u64) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut value = vec![0u8; 8192];
        rng.fill_bytes(&mut value);
        frames(100, &[vec![value]])
    }

    #[test]
    fn compressible_frames_compress_and_incompressible_stay_raw() {
        let (raw, end) = compressible_frames();
        let chunk = make_chunk(raw.clone(), 100, end, 3, 0.1);
        assert!(chunk.compressed);
        assert!(chunk.bytes.len() * 4 < raw.len(), "{} of {} bytes", chunk.bytes.len(), raw.len());
        assert_eq!(chunk.raw_len_bytes as usize, raw.len());
        assert_eq!(chunk_frames(&chunk), Ok(raw.clone()));
        // The same frames, when the saving asked for is more than zstd gets: shipped raw.
        let chunk = make_chunk(raw.clone(), 100, end, 3, 0.99);
        assert!(!chunk.compressed);
        assert_eq!(chunk_frames(&chunk), Ok(raw));

        let (raw, end) = incompressible_frames();
        let chunk = make_chunk(raw.clone(), 100, end, 3, 0.1);
        assert!(!chunk.compressed);
        assert_eq!(chunk.bytes.as_ptr(), raw.as_ptr(), "raw frames are shipped without a copy");
        assert_eq!(chunk_frames(&chunk), Ok(raw));
    }

    #[test]
    fn a_frame_of_a_later_epoch_than_its_sender_is_refused() {
        // The test frames carry epoch 2.
        let (raw, end) = compressible_frames();
        let chunk = make_chunk(raw.clone(), 100, end, 1, 0.1);
        assert_eq!(chunk_frames_within(&chunk, 2), Ok(raw));
        assert!(matches!(
            chunk_frames_within(&chunk, 1),
            Err(CodecError::Corrupt { pos: 0, reason: CorruptReason::Records(_) })
        ));
    }

    #[test]
    fn a_large_chunk_is_judged_by_a_sample() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let noise: Vec<Vec<u8>> = (0..128)
            .map(|_| {
                let mut value = vec![0u8; 8192];
                rng.fill_bytes(&mut value);
                value
            })
            .collect();
        let (raw, end) = frames(0, &[noise]);
        assert!(raw.len() > 4 * SAMPLE_BYTES);
        assert!(!make_chunk(raw.clone(), 0, end, 1, 0.1).compressed, "1 MiB of noise ships raw");
        let text: Vec<Vec<u8>> =
            (0..12_000).map(|i| format!("event {i}: page view of /products/{}", i % 50).into_bytes()).collect();
        let (raw, end) = frames(0, &[text]);
        assert!(raw.len() > 4 * SAMPLE_BYTES);
        let chunk = make_chunk(raw.clone(), 0, end, 1, 0.1);
        assert!(chunk.compressed && chunk.bytes.len() * 4 < raw.len());
        assert_eq!(chunk_frames(&chunk), Ok(raw));
    }

    #[test]
    fn chunk_with_a_lying_raw_len_is_refused() {
        let (raw, end) = compressible_frames();
        let honest = make_chunk(raw.clone(), 100, end, 3, 0.1);
        assert!(honest.compressed);
        // Claims less than the data decompresses to: the bounded decompression fails.
        let less = Chunk { raw_len_bytes: honest.raw_len_bytes - 1, ..honest.clone() };
        assert!(matches!(chunk_frames(&less), Err(CodecError::Corrupt { pos: 0, .. })));
        // Claims more: the output is shorter than declared.
        let more = Chunk { raw_len_bytes: honest.raw_len_bytes + 1, ..honest.clone() };
        assert_eq!(chunk_frames(&more), Err(corrupt(raw.len(), CorruptReason::Truncated { needed_bytes: 1 })));
        // Claims more than any chunk may hold: refused before decompressing.
        let huge = Chunk { raw_len_bytes: u32::MAX, ..honest.clone() };
        assert!(matches!(
            chunk_frames(&huge),
            Err(CodecError::Corrupt { reason: CorruptReason::FrameTooLong { .. }, .. })
        ));
        // An uncompressed chunk whose raw_len is not its length.
        let (raw, end) = incompressible_frames();
        let plain = Chunk {
            base_offset: 100,
            end_offset: end,
            raw_len_bytes: raw.len() as u32 - 1,
            compressed: false,
            bytes: raw,
        };
        assert!(matches!(chunk_frames(&plain), Err(CodecError::Corrupt { pos: 0, .. })));
    }

    #[test]
    fn chunk_frames_must_be_continuous_from_base_to_end() {
        let (raw, end) = frames(10, &[vec![b"a".to_vec()], vec![b"b".to_vec(), b"c".to_vec()]]);
        let first_len = frame::decode(&raw).unwrap().unwrap().frame_len;
        let plain = |bytes: Bytes, base_offset: u64, end_offset: u64| Chunk {
            base_offset,
            end_offset,
            raw_len_bytes: bytes.len() as u32,
            compressed: false,
            bytes,
        };
        assert_eq!(chunk_frames(&plain(raw.clone(), 10, end)), Ok(raw.clone()));
        assert_eq!(
            chunk_frames(&plain(raw.clone(), 9, end)),
            Err(corrupt(0, CorruptReason::Discontinuity { expected: 9, found: 10 }))
        );
        assert_eq!(
            chunk_frames(&plain(raw.clone(), 10, end + 1)),
            Err(corrupt(raw.len(), CorruptReason::Records("frames end before the chunk's end_offset")))
        );
        assert_eq!(
            chunk_frames(&plain(raw.clone(), 10, end - 1)),
            Err(corrupt(first_len, CorruptReason::Records("frame runs past the chunk's end_offset")))
        );
        // A gap: the second frame alone, after the first, twice.
        let mut gap = raw[..first_len].to_vec();
        gap.extend_from_slice(&raw[..first_len]);
        assert_eq!(
            chunk_frames(&plain(Bytes::from(gap), 10, 12)),
            Err(corrupt(first_len, CorruptReason::Discontinuity { expected: 11, found: 10 }))
        );
        // Zero padding after the frames is not a frame.
        let mut padded = raw.to_vec();
        padded.extend_from_slice(&[0; 64]);
        assert_eq!(
            chunk_frames(&plain(Bytes::from(padded), 10, end)),
            Err(corrupt(raw.len(), CorruptReason::TrailingGarbage))
        );
        // A damaged frame: its checksum fails at its position.
        let mut damaged = raw.to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(matches!(
            chunk_frames(&plain(Bytes::from(damaged), 10, end)),
            Err(CodecError::Corrupt { pos, reason: CorruptReason::Checksum { .. } }) if pos == first_len
        ));
        // No frames: valid only as an empty range.
        assert_eq!(chunk_frames(&plain(Bytes::new(), 5, 5)), Ok(Bytes::new()));
        assert!(chunk_frames(&plain(Bytes::new(), 5, 6)).is_err());
    }

    fn log_name() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-z0-9._ü-]{1,40}").expect("a valid regex")
    }

    fn arb_chunk() -> impl Strategy<Value = Chunk> {
        (any::<u64>(), 0u64..4, proptest::collection::vec(any::<u8>(), 0..200), any::<bool>(), 1u32..100).prop_map(
            |(base_offset, records, bytes, compressed, extra)| {
                let raw_len_bytes = bytes.len() as u32 + if compressed { extra } else { 0 };
                let records = records.min(u64::from(raw_len_bytes) / frame::RECORD_HEADER_BYTES as u64);
                let base_offset = base_offset.min(u64::MAX - records);
                Chunk {
                    base_offset,
                    end_offset: base_offset + records,
                    raw_len_bytes,
                    compressed,
                    bytes: Bytes::from(bytes),
                }
            },
        )
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let logs = || proptest::collection::vec((log_name(), any::<u64>()), 0..8);
        prop_oneof![
            (any::<u64>(), any::<u64>(), 1u16..5, 0u16..5, logs()).prop_map(
                |(cluster_id, node_id, min, span, logs)| {
                    Message::Hello { cluster_id, node_id, version_min: min, version_max: min + span, logs }
                }
            ),
            (any::<u64>(), any::<u64>()).prop_map(|(cluster_id, node_id)| Message::Welcome {
                cluster_id,
                node_id,
                version: PROTOCOL_VERSION_MIN
            }),
            ".{0,100}".prop_map(|reason| Message::Refuse { reason }),
            (log_name(), any::<u64>(), any::<u64>(), arb_chunk())
                .prop_map(|(log, epoch, commit_end, chunk)| Message::Append { log, epoch, commit_end, chunk }),
            (any::<u64>(), proptest::collection::vec((log_name(), any::<u64>(), any::<u64>()), 0..8))
                .prop_map(|(epoch, logs)| Message::Heartbeat { epoch, logs }),
            (log_name(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(log, epoch, written_end, durable_end, last_epoch)| {
                    Message::Ack { log, epoch, written_end, durable_end, last_epoch }
                }
            ),
            (log_name(), 0u8..3, proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..4))
                .prop_map(|(log, acks, records)| Message::ClientAppend {
                    log,
                    acks: Acks::from_u8(acks).expect("0..3 are levels"),
                    records: records.into_iter().map(Bytes::from).collect(),
                }),
            (
                log_name(),
                0u8..3,
                1u64..,
                any::<u64>(),
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..4)
            )
                .prop_map(|(log, acks, producer_id, sequence, records)| Message::ClientAppendIdempotent {
                    log,
                    acks: Acks::from_u8(acks).expect("0..3 are levels"),
                    producer_id,
                    sequence,
                    records: records.into_iter().map(Bytes::from).collect(),
                }),
            (log_name(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(log, epoch, a, b, c, d)| Message::Truncate {
                    log,
                    epoch,
                    to: a.min(b),
                    written_end: a.max(b),
                    last_epoch: c.max(d),
                    matched_epoch: c.min(d),
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(msg in arb_message()) {
            let out = encoded(&msg);
            prop_assert_eq!(frame_len(&out), Ok(Some(out.len())));
            prop_assert_eq!(decoded(&out), Ok(Some((msg, out.len()))));
        }

        #[test]
        fn append_of_random_frames_round_trips(
            batches in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6), 0..6),
            base_offset in 0u64..1 << 48,
            repeat in any::<bool>(),
            level in 1i32..6,
            min_saving in 0.0f64..0.5,
        ) {
            // Repeated values make some chunks compressible, random ones keep others raw.
            let batches: Vec<Vec<Vec<u8>>> = if repeat {
                batches.iter().map(|b| b.iter().map(|v| v.iter().map(|x| x % 4).collect()).collect()).collect()
            } else {
                batches
            };
            let (raw, end) = frames(base_offset, &batches);
            let chunk = make_chunk(raw.clone(), base_offset, end, level, min_saving);
            let msg = Message::Append { log: "orders".into(), epoch: 3, commit_end: base_offset, chunk };
            let buf = Bytes::from(encoded(&msg));
            let (back, used_bytes) = decode(&buf).unwrap().unwrap();
            prop_assert_eq!(used_bytes, buf.len());
            prop_assert_eq!(&back, &msg);
            let Message::Append { chunk, .. } = back else { unreachable!() };
            prop_assert_eq!(chunk_frames(&chunk), Ok(raw));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128), fix in any::<bool>()) {
            let bytes = if fix && bytes.len() >= ENVELOPE_PREFIX_BYTES { resealed(bytes) } else { bytes };
            if let Ok(Some((msg, used_bytes))) = decoded(&bytes) {
                prop_assert_eq!(encoded(&msg), bytes[..used_bytes].to_vec());
            }
        }
    }
}
