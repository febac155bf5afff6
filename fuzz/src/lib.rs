//! Helpers shared by the fuzz targets.
//!
//! Random bytes almost never carry a matching CRC-32, so a target that only fed the fuzzer's
//! bytes to a decoder would test the checksum comparison and little behind it. Each target
//! therefore decodes the bytes as given and also a copy whose checksum fields were rewritten
//! to match, which lets the fuzzer reach every check made after the checksum.

/// Overwrites the little-endian CRC-32 at `crc_at..crc_at + 4` with the checksum of `covered`
/// (ranges of `buf` that it covers, clipped to the buffer). Does nothing when the field does
/// not fit in `buf`.
pub fn fix_crc(buf: &mut [u8], crc_at: usize, covered: &[std::ops::Range<usize>]) {
    if buf.len() < crc_at + 4 {
        return;
    }
    let mut hasher = crc32fast::Hasher::new();
    for range in covered {
        let end = range.end.min(buf.len());
        if range.start < end {
            hasher.update(&buf[range.start..end]);
        }
    }
    let crc = hasher.finalize();
    buf[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A copy of the frame at the start of `buf` with its checksum made to match (FORMAT.md
/// "Batch frame": the crc covers `body_len` and the body).
pub fn with_frame_crc(buf: &[u8]) -> Vec<u8> {
    let mut out = buf.to_vec();
    fix_frame_crc(&mut out);
    out
}

/// Rewrites the checksum of the frame at the start of `buf` to match. Returns the frame's
/// length, prefix included, or `None` when fewer than eight bytes are left or the length is
/// zero (the end of data).
pub fn fix_frame_crc(buf: &mut [u8]) -> Option<usize> {
    let len_field: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    let body_len = u32::from_le_bytes(len_field) as usize;
    if body_len == 0 || buf.len() < 8 {
        return None;
    }
    fix_crc(buf, 4, &[0..4, 8..8usize.saturating_add(body_len)]);
    Some(8usize.saturating_add(body_len))
}

/// Rewrites the checksum of every frame laid back to back in `buf`, stopping at a zero length
/// or at a frame that does not fit.
pub fn fix_frame_crcs(buf: &mut [u8]) {
    let mut pos = 0usize;
    while let Some(rest) = buf.get_mut(pos..) {
        match fix_frame_crc(rest) {
            Some(len) if len <= rest.len() => pos += len,
            _ => break,
        }
    }
}

/// A copy of the replication message at the start of `buf` with its checksum made to match
/// (PROTOCOL.md "Envelope": `{ len u32 | crc32 u32 | type u8 | payload }`, the crc covering
/// `len` and everything after the crc field, the same layout as a batch frame's prefix).
pub fn with_message_crc(buf: &[u8]) -> Vec<u8> {
    let mut out = buf.to_vec();
    fix_frame_crc(&mut out);
    out
}

/// A copy of `buf` as one whole replication message: `len` rewritten to cover everything after
/// the crc field, then the checksum made to match. `None` when `buf` is shorter than the
/// eight-byte prefix.
pub fn sealed_message(buf: &[u8]) -> Option<Vec<u8>> {
    let len = u32::try_from(buf.len().checked_sub(8)?).ok()?;
    let mut out = buf.to_vec();
    out[..4].copy_from_slice(&len.to_le_bytes());
    let end = out.len();
    fix_crc(&mut out, 4, &[0..4, 8..end]);
    Some(out)
}

/// Runs `check` on `data` as given and on a copy whose last four bytes are made the checksum
/// of every byte before them (the layout of the small state files: slots, node state).
pub fn check_with_trailing_crc(data: &[u8], check: impl Fn(&[u8])) {
    check(data);
    if data.len() >= 4 {
        let mut fixed = data.to_vec();
        let crc_at = fixed.len() - 4;
        fix_crc(&mut fixed, crc_at, std::slice::from_ref(&(0..crc_at)));
        check(&fixed);
    }
}
