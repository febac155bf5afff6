//! Chunks from arbitrary bytes (PROTOCOL.md "Chunk"): `chunk_frames` never panics, never makes
//! an allocation larger than `CHUNK_RAW_BYTES_MAX`, returns exactly `raw_len` bytes when it
//! accepts a chunk, and accepts every honest chunk of valid, continuous frames.
//!
//! Input: `control u8 | claim u32 | rest`. With control bit 3 clear, `rest` is the raw frames,
//! and bit 0 rewrites the checksum of every frame in it to match first (random bytes almost
//! never carry one). With bit 3 set, the raw frames are built by the real encoder from `rest`
//! (see [`build`]), and bit 4 then flips the bits `claim >> 24` (or 1) of the byte at
//! `claim >> 8 & 0xffff` (modulo the length), a damage the frame checksums must catch. Three
//! chunks are built from the raw frames and checked:
//! - uncompressed, `bytes = rest`;
//! - compressed for real with zstd, so decompression succeeds and the frames behind it are
//!   reached;
//! - `rest` itself as the compressed bytes, to feed the zstd decoder arbitrary data.
//!
//! The first two declare the honest `raw_len` unless bit 1 is set, the third always declares
//! `claim`; with bit 1 the others declare `claim` too. Offsets are the ones the frames carry (a
//! walk with the segment frame decoder finds them), shifted by `claim` when bit 2 is set.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tern_fuzz::fix_frame_crcs;
use tern_replication::codec::{chunk_frames, make_chunk, CHUNK_RAW_BYTES_MAX};
use tern_replication::message::Chunk;
use tern_segment::frame;

/// Records the largest single allocation made through the Rust allocator. (zstd's contexts
/// come from C `malloc` and are bounded by zstd itself; libFuzzer's `-malloc_limit_mb` covers
/// them.)
struct Largest;

static LARGEST_ALLOC_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on unchanged to the system allocator; the wrapper only records
// the requested sizes.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOC_BYTES.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOC_BYTES.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST_ALLOC_BYTES.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller's contract holds.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// The offsets the frames in `raw` run over, if they are valid, continuous and use up all the
/// bytes; `Some((0, 0))` for no bytes.
fn walk(raw: &[u8]) -> Option<(u64, u64)> {
    let (mut pos, mut range) = (0usize, None::<(u64, u64)>);
    while pos < raw.len() {
        let found = frame::decode(&raw[pos..]).ok()??;
        let (base, end) = (found.header.base_offset, found.header.end_offset());
        range = match range {
            None => Some((base, end)),
            Some((first, next)) if next == base => Some((first, end)),
            Some(_) => return None,
        };
        pos += found.frame_len;
    }
    Some(range.unwrap_or((0, 0)))
}

/// Consecutive frames from `base_offset`, encoded from `spec`: batches of `count u8` (1 + count
/// % 4 records), each record `len u8 | value (len % 64 bytes)`.
fn build(mut spec: &[u8], base_offset: u64) -> Vec<u8> {
    let byte = |spec: &mut &[u8]| {
        let (first, rest) = spec.split_first().unwrap_or((&0, &[]));
        *spec = rest;
        *first
    };
    let (mut out, mut offset) = (Vec::new(), base_offset);
    while !spec.is_empty() {
        let count = 1 + usize::from(byte(&mut spec) % 4);
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(byte(&mut spec) % 64).min(spec.len());
            let (value, rest) = spec.split_at(len);
            values.push(value);
            spec = rest;
        }
        let records: Vec<frame::Record<'_>> = values.iter().map(|v| frame::Record::new(v, 1_700_000_000_000)).collect();
        let meta = frame::BatchMeta { base_offset: offset, epoch: 1, ..Default::default() };
        frame::encode(&mut out, &meta, &records).expect("a small batch encodes");
        offset += records.len() as u64;
    }
    out
}

/// `chunk_frames` on `chunk`, checking the allocation bound and the declared length.
fn frames_of(chunk: &Chunk) -> Option<Bytes> {
    LARGEST_ALLOC_BYTES.store(0, Ordering::Relaxed);
    let result = chunk_frames(chunk);
    let largest = LARGEST_ALLOC_BYTES.load(Ordering::Relaxed);
    assert!(largest <= CHUNK_RAW_BYTES_MAX as usize, "chunk_frames allocated {largest} bytes at once");
    let frames = result.ok()?;
    assert_eq!(frames.len(), chunk.raw_len_bytes as usize, "accepted frames are not raw_len bytes");
    Some(frames)
}

fuzz_target!(|data: &[u8]| {
    let (control, rest) = data.split_first().unwrap_or((&0, &[]));
    let (claim, rest) = rest.split_at(rest.len().min(4));
    let mut claim_bytes = [0u8; 4];
    claim_bytes[..claim.len()].copy_from_slice(claim);
    let claim = u32::from_le_bytes(claim_bytes);
    let mut raw = rest.to_vec();
    let mut damaged = false;
    if control & 8 != 0 {
        raw = build(rest, u64::from(claim & 0xff) << 40);
        if control & 16 != 0 && !raw.is_empty() {
            let pos = (claim >> 8 & 0xffff) as usize % raw.len();
            raw[pos] ^= (claim >> 24) as u8 | 1;
            damaged = true;
        }
    } else if control & 1 != 0 {
        fix_frame_crcs(&mut raw);
    }
    let raw = Bytes::from(raw);
    let valid = walk(&raw);
    if control & 8 != 0 {
        // Frames from the encoder are valid unless damaged, and any damage is caught.
        assert_eq!(valid.is_some(), !damaged, "a damaged frame went unseen, or an intact one was refused");
    }
    let (mut base_offset, mut end_offset) = valid.unwrap_or((0, 0));
    let honest = control & 6 == 0;
    if control & 2 == 0 && valid.is_some() {
        // Exercises the builder, whose debug assertion runs chunk_frames on what it built.
        let built = make_chunk(raw.clone(), base_offset, end_offset, 1, 0.0);
        assert_eq!(frames_of(&built), Some(raw.clone()));
    }
    if control & 4 != 0 {
        base_offset = base_offset.wrapping_add(u64::from(claim & 0xff));
        end_offset = end_offset.wrapping_add(u64::from(claim >> 8 & 0xff));
    }
    let raw_len_bytes = if control & 2 == 0 { raw.len() as u32 } else { claim };

    let plain = Chunk { base_offset, end_offset, raw_len_bytes, compressed: false, bytes: raw.clone() };
    let accepted = frames_of(&plain);
    if honest && valid.is_some() {
        assert_eq!(accepted, Some(raw.clone()), "an honest chunk of valid frames was refused");
    }

    if let Ok(compressed) = zstd::bulk::compress(&raw, 1) {
        let smaller = compressed.len() < raw.len();
        let chunk = Chunk { base_offset, end_offset, raw_len_bytes, compressed: true, bytes: Bytes::from(compressed) };
        let accepted = frames_of(&chunk);
        if honest && valid.is_some() && smaller {
            assert_eq!(accepted, Some(raw.clone()), "an honest compressed chunk of valid frames was refused");
        }
    }

    let as_given =
        Chunk { base_offset, end_offset, raw_len_bytes: claim, compressed: true, bytes: Bytes::from(rest.to_vec()) };
    let _ = frames_of(&as_given);
});
