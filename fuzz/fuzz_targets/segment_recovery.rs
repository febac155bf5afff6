//! Recovery of a log whose only segment holds arbitrary bytes after a valid header: opening
//! returns `Ok` or `Err` and never panics, a log that opened reads back its records, and it
//! closes and opens again at the same end.
//!
//! Input: `control u8 | claim [u8; 4] | rest`. Control bits:
//! - bit 3 clear: `rest` is the segment body as given; bit 0 rewrites the checksum of every
//!   frame in it to match first (random bytes almost never carry one, and recovery would stop
//!   at the first frame).
//! - bit 3 set: the body is built by the real encoder from `rest` (see [`Built`]) and then
//!   damaged at known places, so recovery can be held to what it must keep and what it must cut.
//! - bit 1: a checkpoint slot is written too, which recovery trusts without checksums. It claims
//!   `claim` as `durable_pos u16 | durable_end u16` for a body as given, and the end of frame
//!   `claim[0] % (frames + 1)` for a built body. Bit 2 marks that slot as written by a clean close.
#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tern_fuzz::fix_frame_crcs;
use tern_segment::frame::{self, BatchMeta, Record};
use tern_segment::segment::{encode_segment_header, segment_file_name, SEGMENT_HEADER_BYTES};
use tern_segment::sim::SimDisk;
use tern_segment::Disk;
use tern_wal::meta::{Checkpoint, Meta, CHECKPOINT_FILE};
use tern_wal::{Committer, Log, LogOptions, Visibility};

/// The smallest segment a log accepts. libFuzzer's inputs stay below 4 KiB by default, so a
/// larger segment would only add zeros to scan; this one lets a body reach the end of the file.
const SEGMENT_BYTES: u64 = 4096;
const BODY_BYTES_MAX: usize = (SEGMENT_BYTES - SEGMENT_HEADER_BYTES) as usize;
const GENERATION: u64 = 1;

fn options() -> LogOptions {
    LogOptions {
        segment_size_bytes: SEGMENT_BYTES,
        index_interval_bytes: 1024,
        record_bytes_max: 4096,
        ..LogOptions::default()
    }
}

/// One committer for the whole run: starting one per input (its request channel has 64 Ki
/// slots) cost more than the recovery under test. Recovery, reads and close never ask it for a
/// sync, and a sync it did run would go through each file's own `sync_data`, whatever disk the
/// file is on.
fn committer() -> Committer {
    static COMMITTER: OnceLock<Committer> = OnceLock::new();
    COMMITTER.get_or_init(|| Committer::start(Arc::new(SimDisk::new()))).clone()
}

/// A body of valid frames built from `cut u16 | flip_pos u16 | flip_xor u8 | batches`, then
/// damaged: the byte at `flip_pos` is XORed with `flip_xor`, and every byte from `cut` on is
/// zeroed (a torn tail). Each batch is `b u8` and `1 + b % 4` records, each `len u8 | ts u8 |
/// value (len % 64 bytes)`; batches that would not fit in the segment are dropped.
struct Built {
    body: Vec<u8>,
    /// Byte position (in the body) and record offset at the end of each frame.
    frame_ends: Vec<(usize, u64)>,
    /// First byte that differs from the frames as encoded.
    damage_at: usize,
}

fn take<'a>(spec: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = spec.split_at(n.min(spec.len()));
    *spec = tail;
    head
}

fn byte(spec: &mut &[u8]) -> u8 {
    take(spec, 1).first().copied().unwrap_or(0)
}

fn build(mut spec: &[u8]) -> Built {
    let cut = usize::from(u16::from_le_bytes([byte(&mut spec), byte(&mut spec)]));
    let flip_pos = usize::from(u16::from_le_bytes([byte(&mut spec), byte(&mut spec)]));
    let flip_xor = byte(&mut spec);
    let (mut body, mut frame_ends, mut offset) = (Vec::new(), Vec::new(), 0u64);
    while !spec.is_empty() {
        let count = 1 + usize::from(byte(&mut spec) % 4);
        let mut specs = Vec::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(byte(&mut spec) % 64);
            let timestamp_ms = 1_700_000_000_000 + u64::from(byte(&mut spec));
            specs.push((take(&mut spec, len), timestamp_ms));
        }
        let records: Vec<Record<'_>> = specs.iter().map(|(v, ts)| Record::new(v, *ts)).collect();
        let mut frame_bytes = Vec::new();
        let meta = BatchMeta { base_offset: offset, epoch: 1, ..Default::default() };
        frame::encode(&mut frame_bytes, &meta, &records).expect("a small batch encodes");
        if body.len() + frame_bytes.len() > BODY_BYTES_MAX {
            break;
        }
        body.extend_from_slice(&frame_bytes);
        offset += records.len() as u64;
        frame_ends.push((body.len(), offset));
    }
    let original = body.clone();
    body.resize(BODY_BYTES_MAX, 0);
    if let Some(b) = body.get_mut(flip_pos) {
        *b ^= flip_xor;
    }
    if let Some(tail) = body.get_mut(cut..) {
        tail.fill(0);
    }
    let damage_at = body.iter().zip(original.iter().chain(std::iter::repeat(&0))).position(|(a, b)| a != b);
    Built { body, frame_ends, damage_at: damage_at.unwrap_or(BODY_BYTES_MAX) }
}

fn lay_out(disk: &SimDisk, dir: &Path, body: &[u8], checkpoint: Option<Checkpoint>) {
    let path = dir.join(segment_file_name(0));
    // SimDisk pre-allocates with zeros, as the real file layer does.
    let file = disk.create(&path, SEGMENT_BYTES).expect("create segment");
    file.write_at(0, &encode_segment_header(0)).expect("write header");
    file.write_at(SEGMENT_HEADER_BYTES, &body[..body.len().min(BODY_BYTES_MAX)]).expect("write body");
    file.sync_data().expect("sync segment");
    if let Some(cp) = checkpoint {
        let file = disk.create(&dir.join(CHECKPOINT_FILE), 0).expect("create checkpoint");
        file.write_at(0, &cp.encode()).expect("write checkpoint");
        file.sync_data().expect("sync checkpoint");
    }
    // Writes log.meta durably and syncs the directory, which makes every name durable.
    Meta::new_log(GENERATION, 0).write(disk, dir).expect("write meta");
    disk.sync_dir(dir).expect("sync dir");
}

/// Only zeros may follow the last frame (FORMAT.md "Segment file"): recovery overwrites a torn
/// tail, so that stale bytes can never be read as data later.
fn assert_zeros_after_end(log: &Log) {
    let last = log.segments().last().cloned().expect("a log has a segment");
    let tail = last.bytes(last.end_pos(), last.size_bytes()).expect("reading the tail");
    assert!(tail.iter().all(|b| *b == 0), "non-zero bytes follow the last frame after recovery");
}

/// Reads every record from the start; returns how many read back before the end or an error.
/// With `all_verified`, recovery checked the checksum of every frame it kept, so every record
/// up to the end must read back.
fn read_all(log: &Log, all_verified: bool) -> u64 {
    let start = log.start_offset();
    let mut next = start;
    let reader = log.read(start, Visibility::Written).expect("reading from the start");
    for record in reader {
        match record {
            Ok(record) => {
                assert_eq!(record.offset, next, "offsets are dense");
                next += 1;
            }
            Err(e) => {
                assert!(!all_verified, "a record recovery verified does not read back: {e}");
                return next - start;
            }
        }
    }
    assert_eq!(next, log.written_end());
    next - start
}

fn checkpoint(control: u8, durable_pos: u64, durable_end: u64) -> Option<Checkpoint> {
    (control & 2 != 0).then_some(Checkpoint {
        seq: 1,
        generation: GENERATION,
        clean: control & 4 != 0,
        segment_base: 0,
        durable_pos,
        durable_end,
    })
}

fuzz_target!(|data: &[u8]| {
    let (control, rest) = data.split_first().unwrap_or((&0, &[]));
    let (claim, rest) = rest.split_at(rest.len().min(4));
    let mut claim = claim.to_vec();
    claim.resize(4, 0);
    // For a built body: the end offset recovery must reach, when it must open at all.
    let mut must_end_at = None;
    let (body, checkpoint) = if control & 8 == 0 {
        let mut body = rest.to_vec();
        if control & 1 != 0 {
            fix_frame_crcs(&mut body);
        }
        let durable_pos = u64::from(u16::from_le_bytes([claim[0], claim[1]]));
        let durable_end = u64::from(u16::from_le_bytes([claim[2], claim[3]]));
        (body, checkpoint(*control, durable_pos, durable_end))
    } else {
        let built = build(rest);
        // Frames wholly before the first damaged byte are intact: recovery keeps exactly those.
        let intact_end = built.frame_ends.iter().take_while(|(pos, _)| *pos <= built.damage_at).last();
        let intact_end = intact_end.map_or(0, |(_, offset)| *offset);
        let claimed = usize::from(claim[0]) % (built.frame_ends.len() + 1);
        let (claim_pos, claim_end) = claimed.checked_sub(1).map_or((0, 0), |i| built.frame_ends[i]);
        let checkpoint = checkpoint(*control, SEGMENT_HEADER_BYTES + claim_pos as u64, claim_end);
        // Damage inside the claimed region may go unseen (it is walked without checksums) or
        // fail the open; damage after it is a torn tail, which never fails the open.
        if checkpoint.is_none() || built.damage_at >= claim_pos {
            must_end_at = Some(intact_end);
        }
        (built.body, checkpoint)
    };
    let sim = SimDisk::new();
    let dir = Path::new("/log");
    lay_out(&sim, dir, &body, checkpoint);
    let disk: Arc<dyn Disk> = Arc::new(sim);
    let opened = Log::open(disk.clone(), dir, "fuzz", options(), committer(), false);
    let log = match (opened, must_end_at) {
        (Ok(log), _) => log,
        (Err(e), Some(end)) => panic!("a log with intact frames to offset {end}, then a torn tail, fails to open: {e}"),
        (Err(_), None) => return,
    };
    // Every frame kept was verified, or is intact: every record must read back.
    let all_verified = checkpoint.is_none() || must_end_at.is_some();
    let end = log.written_end();
    if let Some(must_end_at) = must_end_at {
        assert_eq!(end, must_end_at, "recovery keeps every intact frame and no damaged one");
    }
    assert_zeros_after_end(&log);
    let records = read_all(&log, all_verified);
    log.close().expect("closing a recovered log");
    drop(log);
    let again = Log::open(disk, dir, "fuzz", options(), committer(), false)
        .expect("a log that recovered once opens again after a clean close");
    assert!(again.recovered().clean);
    assert_eq!(again.written_end(), end);
    assert_zeros_after_end(&again);
    assert_eq!(read_all(&again, all_verified), records);
    again.close().expect("closing the reopened log");
});
