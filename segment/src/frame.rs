//! The batch frame: the unit of checksum, of replication and of idempotency.
//!
//! Format (FORMAT.md, "Batch frame"), all integers little-endian:
//! `{ body_len u32 | crc32 u32 | header 56 B | records }`, where the crc covers
//! `body_len` and the whole body (header and records), and each record is
//! `{ key_len u32 (u32::MAX = no key) | value_len u32 | timestamp_delta_ms u32 | key | value }`.
#![deny(clippy::indexing_slicing, clippy::cast_possible_truncation)]

use crate::cursor::Cursor;
use crate::error::CorruptReason;

/// Bytes before the body: `body_len u32` and `crc32 u32`.
pub const FRAME_PREFIX_BYTES: usize = 8;
/// Bytes of the batch header at the start of the body.
pub const BATCH_HEADER_BYTES: usize = 56;
/// Bytes of the fixed part of one record.
pub const RECORD_HEADER_BYTES: usize = 12;
/// Largest body a frame may declare. Changing a limit is a format change.
pub const FRAME_BODY_BYTES_MAX: u32 = 64 << 20;
/// Batch format version written by this build.
pub const BATCH_VERSION: u8 = 1;
/// Batch flag: a control batch, whose records the log writes for itself (the start of a
/// leader's epoch) and not a producer. Control records hold offsets, are replicated and
/// committed like any other, and readers of data skip them. A control batch has no producer.
pub const FLAG_CONTROL: u8 = 1;
/// Every flag this build knows; a frame with another bit set is refused.
pub const FLAGS_KNOWN: u8 = FLAG_CONTROL;
/// `key_len` value that means "no key".
pub const NO_KEY: u32 = u32::MAX;
/// Largest value or key a record may carry within the frame limit.
pub const RECORD_BYTES_MAX: usize = FRAME_BODY_BYTES_MAX as usize - BATCH_HEADER_BYTES - RECORD_HEADER_BYTES;

const _: () = assert!(FRAME_PREFIX_BYTES + BATCH_HEADER_BYTES < FRAME_BODY_BYTES_MAX as usize);
const _: () = assert!(BATCH_HEADER_BYTES == 1 + 1 + 2 + 4 + 8 * 6);

/// One record handed to the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Optional key (for compaction and, later, key-hash splits).
    pub key: Option<&'a [u8]>,
    /// The payload.
    pub value: &'a [u8],
    /// Milliseconds since the Unix epoch, chosen by the writer.
    pub timestamp_ms: u64,
}

impl<'a> Record<'a> {
    /// A record with no key.
    pub fn new(value: &'a [u8], timestamp_ms: u64) -> Self {
        Record { key: None, value, timestamp_ms }
    }

    /// Bytes this record takes inside a frame.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.key.map_or(0, <[u8]>::len) + self.value.len()
    }
}

/// Batch-level fields of a frame, besides its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchHeader {
    /// Batch format version (1).
    pub version: u8,
    /// Flags: [`FLAG_CONTROL`] or none; every other bit must be zero.
    pub flags: u8,
    /// Records in the batch, at least one.
    pub record_count: u32,
    /// Offset of the first record.
    pub base_offset: u64,
    /// Epoch of the leader that wrote the batch.
    pub epoch: u64,
    /// Smallest record timestamp; record timestamps are stored as deltas from it.
    pub first_timestamp_ms: u64,
    /// Largest record timestamp.
    pub max_timestamp_ms: u64,
    /// Producer that wrote the batch (0 = none), for idempotent retries.
    pub producer_id: u64,
    /// The producer's sequence number of this batch.
    pub sequence: u64,
}

impl BatchHeader {
    /// One past the offset of the last record.
    pub fn end_offset(&self) -> u64 {
        self.base_offset.saturating_add(u64::from(self.record_count))
    }

    /// A control batch ([`FLAG_CONTROL`]): readers of data skip its records.
    pub fn is_control(&self) -> bool {
        self.flags & FLAG_CONTROL != 0
    }
}

/// Fields the writer chooses for a batch; offsets and timestamps come from the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchMeta {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Leader epoch.
    pub epoch: u64,
    /// Producer id (0 = none).
    pub producer_id: u64,
    /// Producer sequence.
    pub sequence: u64,
    /// Flags ([`FLAG_CONTROL`]); a control batch must have no producer.
    pub flags: u8,
}

/// Why a batch could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A batch needs at least one record.
    #[error("a batch needs at least one record")]
    Empty,
    /// The frame would exceed [`FRAME_BODY_BYTES_MAX`].
    #[error("batch of {len_bytes} bytes exceeds the {limit_bytes}-byte frame limit")]
    TooLarge {
        /// Body bytes the batch would take.
        len_bytes: u64,
        /// Format limit.
        limit_bytes: u32,
    },
    /// Record timestamps span more than `u32::MAX` milliseconds (about 49 days).
    #[error("record timestamps in one batch span more than {} ms", u32::MAX)]
    TimestampSpan,
    /// A key of exactly `u32::MAX` bytes cannot be told apart from "no key".
    #[error("key too long")]
    KeyTooLong,
    /// Flags this build does not know, or a control batch naming a producer.
    #[error("batch flags {0:#04x} are unknown or name a producer on a control batch")]
    Flags(u8),
}

/// Bytes the frame for `records` takes, prefix included.
pub fn encoded_len(records: &[Record<'_>]) -> usize {
    FRAME_PREFIX_BYTES + BATCH_HEADER_BYTES + records.iter().map(Record::encoded_len).sum::<usize>()
}

/// Appends the frame of one batch to `out` and returns its length in bytes.
///
/// This is the only encoder of frames; FORMAT.md "Batch frame" describes what it writes.
#[allow(clippy::indexing_slicing)] // slices of `out` that this function just wrote
#[expect(clippy::cast_possible_truncation)] // NOTE: lengths are bounded by FRAME_BODY_BYTES_MAX first
pub fn encode(out: &mut Vec<u8>, meta: &BatchMeta, records: &[Record<'_>]) -> Result<usize, EncodeError> {
    if records.is_empty() {
        return Err(EncodeError::Empty);
    }
    let frame_len = encoded_len(records);
    let body_len = frame_len - FRAME_PREFIX_BYTES;
    if body_len > FRAME_BODY_BYTES_MAX as usize {
        return Err(EncodeError::TooLarge { len_bytes: body_len as u64, limit_bytes: FRAME_BODY_BYTES_MAX });
    }
    let first_ts = records.iter().map(|r| r.timestamp_ms).min().unwrap_or(0);
    let max_ts = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0);
    if max_ts - first_ts > u64::from(u32::MAX) {
        return Err(EncodeError::TimestampSpan);
    }
    if records.iter().any(|r| r.key.is_some_and(|k| k.len() >= NO_KEY as usize)) {
        return Err(EncodeError::KeyTooLong);
    }
    if meta.flags & !FLAGS_KNOWN != 0 || (meta.flags & FLAG_CONTROL != 0 && meta.producer_id != 0) {
        return Err(EncodeError::Flags(meta.flags));
    }
    let start = out.len();
    out.reserve(frame_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // crc, patched below
    out.push(BATCH_VERSION);
    out.push(meta.flags);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for field in [meta.base_offset, meta.epoch, first_ts, max_ts, meta.producer_id, meta.sequence] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    for record in records {
        let key_len = record.key.map_or(NO_KEY, |k| k.len() as u32);
        out.extend_from_slice(&key_len.to_le_bytes());
        out.extend_from_slice(&(record.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&((record.timestamp_ms - first_ts) as u32).to_le_bytes());
        if let Some(key) = record.key {
            out.extend_from_slice(key);
        }
        out.extend_from_slice(record.value);
    }
    debug_assert_eq!(out.len() - start, frame_len);
    let crc = frame_crc(&out[start..start + 4], &out[start + FRAME_PREFIX_BYTES..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    debug_assert!(matches!(decode(&out[start..]), Ok(Some(f)) if f.frame_len == frame_len));
    Ok(frame_len)
}

fn frame_crc(len_field: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(len_field);
    hasher.update(body);
    hasher.finalize()
}

/// A decoded, checksum-verified frame borrowing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Batch-level fields.
    pub header: BatchHeader,
    /// Bytes of the whole frame, prefix included.
    pub frame_len: usize,
    /// The stored (and verified) checksum.
    pub crc: u32,
    records: &'a [u8],
}

/// One record of a decoded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The record's offset.
    pub offset: u64,
    /// Key, if the record has one.
    pub key: Option<&'a [u8]>,
    /// Payload.
    pub value: &'a [u8],
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// Reads the body length at the start of `buf` without checking anything else.
///
/// `None` when fewer than four bytes are left. A zero length marks the end of the data.
pub fn peek_body_len(buf: &[u8]) -> Option<u32> {
    Cursor::new(buf).u32_le().ok()
}

/// Reads and bounds the body length at the start of a frame. `Ok(None)` at the end of data.
fn body_len(cur: &mut Cursor<'_>) -> Result<Option<u32>, CorruptReason> {
    let Ok(body_len) = cur.u32_le() else { return Ok(None) };
    if body_len == 0 {
        return Ok(None);
    }
    if body_len > FRAME_BODY_BYTES_MAX {
        let len_bytes = u64::from(body_len);
        return Err(CorruptReason::FrameTooLong { len_bytes, limit_bytes: FRAME_BODY_BYTES_MAX });
    }
    if (body_len as usize) < BATCH_HEADER_BYTES {
        return Err(CorruptReason::FrameTooShort { len_bytes: u64::from(body_len) });
    }
    Ok(Some(body_len))
}

/// Reads the batch header at the start of a body and checks the fields every frame must get
/// right: version, known flags (a control batch without a producer), zero reserved bits, a
/// non-zero count whose offsets do not overflow, ordered timestamps.
fn read_header(cur: &mut Cursor<'_>) -> Result<BatchHeader, CorruptReason> {
    let version = cur.u8()?;
    if version != BATCH_VERSION {
        return Err(CorruptReason::Version { found: u32::from(version) });
    }
    let flags = cur.u8()?;
    if flags & !FLAGS_KNOWN != 0 {
        return Err(CorruptReason::Field("flags"));
    }
    if cur.u16_le()? != 0 {
        return Err(CorruptReason::Field("reserved"));
    }
    let header = BatchHeader {
        version,
        flags,
        record_count: cur.u32_le()?,
        base_offset: cur.u64_le()?,
        epoch: cur.u64_le()?,
        first_timestamp_ms: cur.u64_le()?,
        max_timestamp_ms: cur.u64_le()?,
        producer_id: cur.u64_le()?,
        sequence: cur.u64_le()?,
    };
    if header.record_count == 0 {
        return Err(CorruptReason::Records("zero records"));
    }
    if header.is_control() && header.producer_id != 0 {
        return Err(CorruptReason::Field("producer_id"));
    }
    if header.base_offset.checked_add(u64::from(header.record_count)).is_none() {
        return Err(CorruptReason::Field("base_offset"));
    }
    if header.max_timestamp_ms < header.first_timestamp_ms {
        return Err(CorruptReason::Field("max_timestamp_ms"));
    }
    Ok(header)
}

/// Decodes the frame at the start of `buf`.
///
/// Returns `Ok(None)` at the end of the data: fewer than four bytes left, or a zero length
/// (segments are pre-allocated with zeros). The length is bounded, then the checksum is
/// verified, and only then is the body interpreted; every record is bounds-checked here so
/// that iterating a decoded frame cannot fail.
pub fn decode(buf: &[u8]) -> Result<Option<Frame<'_>>, CorruptReason> {
    let mut cur = Cursor::new(buf);
    let Some(body_len) = body_len(&mut cur)? else { return Ok(None) };
    let stored = cur.u32_le()?;
    let body = cur.take(body_len as usize)?;
    let len_field = buf.get(..4).ok_or(CorruptReason::Truncated { needed_bytes: 4 })?;
    let computed = frame_crc(len_field, body);
    if stored != computed {
        return Err(CorruptReason::Checksum { stored, computed });
    }
    let mut cur = Cursor::new(body);
    let header = read_header(&mut cur)?;
    let record_count = header.record_count;
    let records = cur.take(cur.remaining_bytes())?;
    // Bound the count by what the bytes can hold before walking them.
    if record_count as usize > records.len() / RECORD_HEADER_BYTES {
        return Err(CorruptReason::Records("count exceeds what the bytes can hold"));
    }
    let frame = Frame { header, frame_len: FRAME_PREFIX_BYTES + body_len as usize, crc: stored, records };
    let mut walked = 0u32;
    let (mut min_timestamp_ms, mut max_timestamp_ms) = (u64::MAX, 0u64);
    let mut iter = RecordIter { frame_header: header, cur: Cursor::new(records), index: 0 };
    while iter.cur.remaining_bytes() > 0 {
        let record = iter.next_checked()?;
        if record.timestamp_ms > header.max_timestamp_ms {
            return Err(CorruptReason::Records("timestamp above the batch maximum"));
        }
        min_timestamp_ms = min_timestamp_ms.min(record.timestamp_ms);
        max_timestamp_ms = max_timestamp_ms.max(record.timestamp_ms);
        walked += 1;
        if walked > record_count {
            return Err(CorruptReason::Records("more records than the count"));
        }
    }
    if walked != record_count {
        return Err(CorruptReason::Records("fewer records than the count"));
    }
    // The header's timestamps are the smallest and largest record timestamps, as the encoder
    // writes them; anything else would not encode back to the same bytes, and a too-large
    // maximum would keep a segment from retention by age.
    if min_timestamp_ms != header.first_timestamp_ms {
        return Err(CorruptReason::Field("first_timestamp_ms"));
    }
    if max_timestamp_ms != header.max_timestamp_ms {
        return Err(CorruptReason::Field("max_timestamp_ms"));
    }
    Ok(Some(frame))
}

/// Reads a frame's length and batch header without verifying its checksum or records.
///
/// For walking frames that an earlier run already verified and synced (recovery of the region
/// a checkpoint vouches for); the length is still bounded and the frame must fit in `buf`.
pub fn decode_header_unverified(buf: &[u8]) -> Result<Option<(BatchHeader, usize)>, CorruptReason> {
    let mut cur = Cursor::new(buf);
    let Some(body_len) = body_len(&mut cur)? else { return Ok(None) };
    let _crc = cur.u32_le()?;
    let header = read_header(&mut Cursor::new(cur.take(body_len as usize)?))?;
    Ok(Some((header, FRAME_PREFIX_BYTES + body_len as usize)))
}

impl<'a> Frame<'a> {
    /// Iterates the records of this frame in offset order.
    pub fn records(&self) -> RecordIter<'a> {
        RecordIter { frame_header: self.header, cur: Cursor::new(self.records), index: 0 }
    }

    /// Encodes this frame again (used by fuzzing to check that decode inverts encode).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
        let records: Vec<Record<'_>> =
            self.records().map(|r| Record { key: r.key, value: r.value, timestamp_ms: r.timestamp_ms }).collect();
        let meta = BatchMeta {
            base_offset: self.header.base_offset,
            epoch: self.header.epoch,
            producer_id: self.header.producer_id,
            sequence: self.header.sequence,
            flags: self.header.flags,
        };
        encode(out, &meta, &records)
    }
}

/// Iterator over the records of a decoded frame.
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    frame_header: BatchHeader,
    cur: Cursor<'a>,
    index: u32,
}

impl<'a> RecordIter<'a> {
    fn next_checked(&mut self) -> Result<RecordView<'a>, CorruptReason> {
        let key_len = self.cur.u32_le()?;
        let value_len = self.cur.u32_le()?;
        let delta = self.cur.u32_le()?;
        let key = if key_len == NO_KEY { None } else { Some(self.cur.take(key_len as usize)?) };
        let value = self.cur.take(value_len as usize)?;
        let offset = self.frame_header.base_offset.saturating_add(u64::from(self.index));
        self.index = self.index.saturating_add(1);
        let timestamp_ms = self
            .frame_header
            .first_timestamp_ms
            .checked_add(u64::from(delta))
            .ok_or(CorruptReason::Records("timestamp overflows"))?;
        Ok(RecordView { offset, key, value, timestamp_ms })
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = RecordView<'a>;

    fn next(&mut self) -> Option<RecordView<'a>> {
        if self.index >= self.frame_header.record_count {
            return None;
        }
        // `decode` walked every record already, so this cannot fail for a decoded frame.
        self.next_checked().ok()
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(base_offset: u64) -> BatchMeta {
        BatchMeta { base_offset, epoch: 3, producer_id: 9, sequence: 11, flags: 0 }
    }

    #[test]
    fn round_trips_keys_values_and_timestamps() {
        let records = [
            Record { key: Some(b"k"), value: b"v1", timestamp_ms: 1000 },
            Record::new(b"", 1005),
            Record { key: Some(b""), value: b"v3", timestamp_ms: 999 },
        ];
        let mut out = Vec::new();
        let len = encode(&mut out, &meta(42), &records).unwrap();
        assert_eq!(len, out.len());
        let frame = decode(&out).unwrap().unwrap();
        assert_eq!(frame.header.base_offset, 42);
        assert_eq!(frame.header.end_offset(), 45);
        assert_eq!(frame.header.first_timestamp_ms, 999);
        let got: Vec<_> = frame.records().collect();
        assert_eq!(got.len(), 3);
        for (i, (got, want)) in got.iter().zip(&records).enumerate() {
            assert_eq!(got.offset, 42 + i as u64);
            assert_eq!(got.key, want.key);
            assert_eq!(got.value, want.value);
            assert_eq!(got.timestamp_ms, want.timestamp_ms);
        }
    }

    #[test]
    fn zero_length_is_the_end_of_data() {
        assert_eq!(decode(&[0u8; 64]), Ok(None));
        assert_eq!(decode(&[1u8, 0]), Ok(None));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut out = Vec::new();
        encode(&mut out, &meta(7), &[Record::new(b"hello", 5), Record::new(b"world", 6)]).unwrap();
        for bit in 0..out.len() * 8 {
            let mut damaged = out.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            match decode(&damaged) {
                Err(_) => {}
                // A flip in the length field can turn it into zero: the end of data, no record.
                Ok(None) => assert!(bit < 32),
                Ok(Some(f)) => panic!("bit {bit}: damaged frame accepted: {f:?}"),
            }
        }
    }

    #[test]
    fn oversized_length_is_rejected_before_reading_the_body() {
        let mut buf = vec![0u8; 16];
        buf[..4].copy_from_slice(&(FRAME_BODY_BYTES_MAX + 1).to_le_bytes());
        assert!(matches!(decode(&buf), Err(CorruptReason::FrameTooLong { .. })));
    }

    /// Found by `fuzz/` (frame_decode): header timestamps other than the records' smallest
    /// and largest decoded, so the frame did not encode back to its own bytes.
    #[test]
    #[allow(clippy::indexing_slicing)] // fixed positions in a frame this test just encoded
    fn header_timestamps_must_be_the_records_smallest_and_largest() {
        let mut out = Vec::new();
        encode(&mut out, &meta(7), &[Record::new(b"a", 1000), Record::new(b"b", 1010)]).unwrap();
        let reseal = |mut frame: Vec<u8>| {
            let crc = frame_crc(&frame[..4], &frame[FRAME_PREFIX_BYTES..]);
            frame[4..8].copy_from_slice(&crc.to_le_bytes());
            frame
        };
        // first_timestamp_ms is at frame byte 32, max_timestamp_ms at 40.
        let mut lower_first = out.clone();
        lower_first[32..40].copy_from_slice(&999u64.to_le_bytes());
        lower_first[72..76].copy_from_slice(&1u32.to_le_bytes()); // first record's delta: still 1000
        assert_eq!(decode(&reseal(lower_first)), Err(CorruptReason::Field("first_timestamp_ms")));
        let mut higher_max = out.clone();
        higher_max[40..48].copy_from_slice(&2000u64.to_le_bytes());
        assert_eq!(decode(&reseal(higher_max)), Err(CorruptReason::Field("max_timestamp_ms")));
        let mut overflow = out;
        overflow[32..48].copy_from_slice(&[0xff; 16]); // first = max = u64::MAX, deltas 0 and 10
        assert_eq!(decode(&reseal(overflow)), Err(CorruptReason::Records("timestamp overflows")));
    }

    #[test]
    #[allow(clippy::indexing_slicing)] // fixed positions in a frame this test just encoded
    fn control_batches_round_trip_and_other_flags_are_refused() {
        let control = BatchMeta { base_offset: 4, epoch: 2, flags: FLAG_CONTROL, ..BatchMeta::default() };
        let mut out = Vec::new();
        encode(&mut out, &control, &[Record::new(b"", 5)]).unwrap();
        let frame = decode(&out).unwrap().unwrap();
        assert!(frame.header.is_control());
        let mut again = Vec::new();
        frame.encode(&mut again).unwrap();
        assert_eq!(again, out);
        assert!(!decode(&encoded(&meta(4))).unwrap().unwrap().header.is_control());

        // A producer's batch is never a control batch, and unknown bits are refused, both
        // when writing and when reading (the flags are at frame byte 9).
        let with_producer = BatchMeta { producer_id: 3, ..control };
        assert_eq!(encode(&mut Vec::new(), &with_producer, &[Record::new(b"", 5)]), Err(EncodeError::Flags(1)));
        let unknown = BatchMeta { flags: 2, ..BatchMeta::default() };
        assert_eq!(encode(&mut Vec::new(), &unknown, &[Record::new(b"", 5)]), Err(EncodeError::Flags(2)));
        let reseal = |mut frame: Vec<u8>, flags: u8| {
            frame[9] = flags;
            let crc = frame_crc(&frame[..4], &frame[FRAME_PREFIX_BYTES..]);
            frame[4..8].copy_from_slice(&crc.to_le_bytes());
            frame
        };
        for flags in 2..=u8::MAX {
            assert_eq!(decode(&reseal(out.clone(), flags)), Err(CorruptReason::Field("flags")), "flags {flags:#x}");
        }
        let producer_frame = encoded(&meta(4));
        assert_eq!(decode(&reseal(producer_frame, FLAG_CONTROL)), Err(CorruptReason::Field("producer_id")));
    }

    #[test]
    fn the_encoder_takes_a_batch_right_at_each_limit_and_refuses_one_past_it() {
        let at_limit = vec![7u8; RECORD_BYTES_MAX];
        let mut out = Vec::new();
        let len = encode(&mut out, &meta(0), &[Record::new(&at_limit, 1)]).unwrap();
        assert_eq!(len, FRAME_PREFIX_BYTES + FRAME_BODY_BYTES_MAX as usize);
        let past = vec![7u8; RECORD_BYTES_MAX + 1];
        let too_large =
            EncodeError::TooLarge { len_bytes: u64::from(FRAME_BODY_BYTES_MAX) + 1, limit_bytes: FRAME_BODY_BYTES_MAX };
        assert_eq!(encode(&mut Vec::new(), &meta(0), &[Record::new(&past, 1)]), Err(too_large));

        let span = u64::from(u32::MAX);
        let widest = [Record::new(b"a", 10), Record::new(b"b", 10 + span)];
        assert!(encode(&mut Vec::new(), &meta(0), &widest).is_ok());
        let wider = [Record::new(b"a", 10), Record::new(b"b", 11 + span)];
        assert_eq!(encode(&mut Vec::new(), &meta(0), &wider), Err(EncodeError::TimestampSpan));
    }

    fn encoded(meta: &BatchMeta) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, meta, &[Record::new(b"v", 5)]).unwrap();
        out
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..20),
                                 base in 0u64..u64::MAX / 2, ts in 0u64..1 << 40) {
            let records: Vec<_> = values.iter().enumerate().map(|(i, v)| Record::new(v, ts + i as u64)).collect();
            let mut out = Vec::new();
            encode(&mut out, &meta(base), &records).unwrap();
            let frame = decode(&out).unwrap().unwrap();
            let mut again = Vec::new();
            frame.encode(&mut again).unwrap();
            prop_assert_eq!(again, out);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }
    }
}
