//! Reading a log: records in offset order, zero-copy slices of the segment maps.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tern_segment::frame;
use tern_segment::Segment;

use crate::error::{Error, Result};
use crate::log::{Log, Visibility};

/// One record read from a log. `key` and `value` are slices of the segment's memory map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    /// The record's offset.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Key, if any.
    pub key: Option<Bytes>,
    /// Payload.
    pub value: Bytes,
    /// Epoch of the batch.
    pub epoch: u64,
}

/// One whole batch frame, as stored and as shipped: checksum verified, zero-copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRef {
    /// First offset of the batch.
    pub base_offset: u64,
    /// One past its last offset.
    pub end_offset: u64,
    /// Epoch of the batch.
    pub epoch: u64,
    /// The frame bytes.
    pub frame: Bytes,
}

/// Iterates records from an offset up to the end seen when it was created (or last
/// [`Reader::refresh`]ed). Every frame's checksum is verified before any record of it is
/// returned; a damaged frame is an error naming file and position, never data. Records of
/// control batches ([`crate::AppendOptions::control`]) are skipped: offsets of the records
/// returned are then not consecutive across them.
#[derive(Debug)]
pub struct Reader {
    log: Log,
    visibility: Visibility,
    next_offset: u64,
    limit: u64,
    segment: Option<Arc<Segment>>,
    /// The read hint generation of `segment` when it was located.
    generation: u64,
    pos: u64,
    /// Bytes of `segment` from the position it starts at: frames are decoded from it until
    /// one does not fit, so a reader asks the file layer for a window at a time, not for the
    /// rest of the segment at every frame.
    window: Option<(u64, Bytes)>,
    pending: VecDeque<ReadRecord>,
    failed: bool,
}

/// Bytes a reader asks the file layer for at once (more when one frame is larger).
const READ_WINDOW_BYTES: u64 = 4 << 20;

impl Log {
    /// Reads records from `from` up to the current `visibility` end.
    ///
    /// # Errors
    /// [`Error::OffsetOutOfRange`] when `from` is below the log start or past the end.
    pub fn read(&self, from: u64, visibility: Visibility) -> Result<Reader> {
        let (start, end) = (self.start_offset(), self.end(visibility));
        if from < start || from > end {
            return Err(Error::OffsetOutOfRange { offset: from, start, end });
        }
        Ok(Reader {
            log: self.clone(),
            visibility,
            next_offset: from,
            limit: end,
            segment: None,
            generation: 0,
            pos: 0,
            window: None,
            pending: VecDeque::new(),
            failed: false,
        })
    }

    /// Whole batches from `from` (the batch containing `from` first), up to `bytes_max` bytes
    /// (at least one batch), as zero-copy frames: what a shipper sends.
    ///
    /// # Errors
    /// As [`Log::read`], and [`tern_segment::Error::Corrupt`] for a damaged frame.
    pub fn read_batches(&self, from: u64, bytes_max: u64, visibility: Visibility) -> Result<Vec<BatchRef>> {
        let mut reader = self.read(from, visibility)?;
        let mut out = Vec::new();
        let mut total = 0u64;
        let mut ended = None;
        while total < bytes_max || out.is_empty() {
            let Some(batch) = reader.next_batch(&mut |_, _| {})? else { break };
            total += batch.frame.len() as u64;
            reader.next_offset = batch.end_offset;
            ended = reader.segment.clone().map(|s| (s, reader.generation, batch.end_offset, reader.pos));
            out.push(batch);
        }
        // The next read (a shipper's, from where this one ended) starts there.
        if let Some((segment, generation, offset, pos)) = ended {
            segment.note_read_end(generation, offset, pos);
        }
        Ok(out)
    }
}

impl Reader {
    /// Where the reader goes on from: the offset after the last record returned or control
    /// batch skipped (the next record's, unless a control batch comes first).
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Extends the reader to the log's current end (for tailing after [`Log::wait_for`]).
    pub fn refresh(&mut self) {
        self.limit = self.log.end(self.visibility);
    }

    /// Finds the segment and position of the batch holding `next_offset`.
    fn locate(&mut self) -> Result<Option<Arc<Segment>>> {
        if let Some(segment) = &self.segment {
            return Ok(Some(segment.clone()));
        }
        let segments = self.log.segments();
        let Some(segment) = segments.iter().rev().find(|s| s.base_offset() <= self.next_offset).cloned() else {
            let (start, end) = (self.log.start_offset(), self.log.written_end());
            return Err(Error::OffsetOutOfRange { offset: self.next_offset, start, end });
        };
        self.generation = segment.read_generation();
        let (pos, _) = segment.seek(self.next_offset);
        self.pos = pos;
        self.window = None;
        self.segment = Some(segment.clone());
        Ok(Some(segment))
    }

    /// The next whole batch holding `next_offset`, or `None` at the limit. `on_frame` sees
    /// the verified frame before it is returned, so records need no second decode.
    fn next_batch(&mut self, on_frame: &mut dyn FnMut(&frame::Frame<'_>, &Bytes)) -> Result<Option<BatchRef>> {
        loop {
            if self.next_offset >= self.limit {
                return Ok(None);
            }
            let Some(segment) = self.locate()? else { return Ok(None) };
            let end_pos = segment.end_pos();
            if self.pos >= end_pos {
                // This segment is done; the next one starts at its end offset.
                if segment.end_offset() <= self.next_offset {
                    self.segment = None;
                    continue;
                }
                return Ok(None);
            }
            let bytes = self.window_at(&segment, end_pos)?;
            let frame = tern_segment::segment::decode_at(&bytes, segment.path(), self.pos)?.ok_or_else(|| {
                Error::Segment(tern_segment::Error::Corrupt {
                    file: segment.path().to_path_buf(),
                    pos: self.pos,
                    reason: tern_segment::CorruptReason::Truncated { needed_bytes: 0 },
                })
            })?;
            let header = frame.header;
            let frame_bytes = bytes.slice(..frame.frame_len);
            let expected_pos = self.pos;
            self.pos += frame.frame_len as u64;
            if header.end_offset() <= self.next_offset {
                continue; // before the start, reached through the sparse index
            }
            if header.base_offset > self.next_offset {
                return Err(Error::Segment(tern_segment::Error::Corrupt {
                    file: segment.path().to_path_buf(),
                    pos: expected_pos,
                    reason: tern_segment::CorruptReason::Discontinuity {
                        expected: self.next_offset,
                        found: header.base_offset,
                    },
                }));
            }
            on_frame(&frame, &frame_bytes);
            return Ok(Some(BatchRef {
                base_offset: header.base_offset,
                end_offset: header.end_offset(),
                epoch: header.epoch,
                frame: frame_bytes,
            }));
        }
    }
}

impl Reader {
    /// The bytes of `segment` from `self.pos` up to `end_pos`, holding at least the whole frame
    /// that starts there (when it is complete): from the current window when it does, else from
    /// a new window read at `self.pos`.
    fn window_at(&mut self, segment: &Segment, end_pos: u64) -> Result<Bytes> {
        let frame_end =
            |bytes: &Bytes| frame::peek_body_len(bytes).map(|len| u64::from(len) + frame::FRAME_PREFIX_BYTES as u64);
        if let Some((start, window)) = &self.window {
            let rel = self.pos.checked_sub(*start).and_then(|r| usize::try_from(r).ok());
            if let Some(rest) = rel.and_then(|rel| window.get(rel..).map(|_| window.slice(rel..))) {
                if frame_end(&rest).is_some_and(|len| len <= rest.len() as u64) {
                    return Ok(rest);
                }
            }
        }
        let mut to = end_pos.min(self.pos.saturating_add(READ_WINDOW_BYTES));
        let mut bytes = segment.bytes(self.pos, to)?;
        if let Some(len) = frame_end(&bytes).filter(|len| *len > bytes.len() as u64) {
            // One frame larger than the window: read it whole (or what there is of it).
            to = end_pos.min(self.pos.saturating_add(len));
            bytes = segment.bytes(self.pos, to)?;
        }
        self.window = Some((self.pos, bytes.clone()));
        Ok(bytes)
    }
}

impl Iterator for Reader {
    type Item = Result<ReadRecord>;

    fn next(&mut self) -> Option<Result<ReadRecord>> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(record) = self.pending.pop_front() {
                self.next_offset = record.offset + 1;
                return Some(Ok(record));
            }
            let (from, mut pending) = (self.next_offset, std::mem::take(&mut self.pending));
            let result = self.next_batch(&mut |decoded, bytes| {
                if decoded.header.is_control() {
                    return; // the log's own records, not data
                }
                for record in decoded.records().filter(|r| r.offset >= from) {
                    pending.push_back(ReadRecord {
                        offset: record.offset,
                        timestamp_ms: record.timestamp_ms,
                        key: record.key.map(|k| bytes.slice_ref(k)),
                        value: bytes.slice_ref(record.value),
                        epoch: decoded.header.epoch,
                    });
                }
            });
            self.pending = pending;
            match result {
                // Past the batch; each record popped sets it back to its own offset + 1 (a
                // control batch gives none: the next record is after it).
                Ok(Some(batch)) => self.next_offset = batch.end_offset,
                Ok(None) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
