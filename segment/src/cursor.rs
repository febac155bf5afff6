//! One cursor over untrusted bytes: every slice goes through `take`, all arithmetic is checked.
#![deny(clippy::indexing_slicing, clippy::cast_possible_truncation)]

use crate::error::CorruptReason;

/// Reads little-endian fields from untrusted bytes without ever panicking.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    pub fn remaining_bytes(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn shortfall(&self, len_bytes: usize) -> u64 {
        (len_bytes as u64).saturating_sub(self.remaining_bytes() as u64)
    }

    /// Takes the next `len_bytes` bytes, or reports how many are missing.
    pub fn take(&mut self, len_bytes: usize) -> Result<&'a [u8], CorruptReason> {
        let bytes = self
            .pos
            .checked_add(len_bytes)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or(CorruptReason::Truncated { needed_bytes: self.shortfall(len_bytes) })?;
        self.pos += len_bytes;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CorruptReason> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Reads a `u8`.
    pub fn u8(&mut self) -> Result<u8, CorruptReason> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u16`.
    pub fn u16_le(&mut self) -> Result<u16, CorruptReason> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u32`.
    pub fn u32_le(&mut self) -> Result<u32, CorruptReason> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u64`.
    pub fn u64_le(&mut self) -> Result<u64, CorruptReason> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}
