//! `StateFile::open` of a state file holding arbitrary bytes, on a `SimDisk` (FORMAT.md "State
//! file"): opening never panics, and this target decodes the two slots itself, by FORMAT.md, to
//! hold it to what it returns. A value is what a valid slot holds, the one with the higher
//! sequence number; no value only when neither slot is valid and slot 1 is blank (all zeros,
//! or past the end of the file); an error only when neither slot is valid and slot 1 is not
//! blank. After an open that returned, a put returns, leaves both slots holding the value with
//! the next sequence number, and a reopen reads it; after sequence number `u64::MAX` the put is
//! refused and the file reads as before.
//!
//! Input: `control u8 | split u8 | rest`. Control bit 0 clear: the file is `rest` as given
//! (any length). Bit 0 set: the file is two whole slots, slot 0 beginning with the first
//! `split * 16` bytes of `rest` and slot 1 with the others, zeros after. Then bits 1 and 2
//! write a valid magic, version and reserved field at the start of slot 0 and slot 1, and bits
//! 3 and 4 rewrite the checksum of slot 0 and slot 1 to match (random bytes almost never carry
//! one). The value put is `rest`, up to `STATE_BYTES_MAX` bytes, reversed.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tern_segment::sim::SimDisk;
use tern_segment::Disk;
use tern_wal::state::{StateFile, SLOT_BYTES, STATE_BYTES_MAX};

const PATH: &str = "/data/raft.state";
const HEADER_BYTES: usize = 24;

/// A slot as FORMAT.md "State file" describes it.
#[derive(Debug, PartialEq)]
enum Slot {
    /// All zeros (or no bytes): never written.
    Blank,
    /// Written, not valid.
    Bad,
    /// Sequence number and value.
    Valid(u64, Vec<u8>),
}

/// Slot `i` of `file`: its bytes, clipped to the file.
fn slot_bytes(file: &[u8], i: usize) -> &[u8] {
    let start = (i * SLOT_BYTES).min(file.len());
    &file[start..((i + 1) * SLOT_BYTES).min(file.len())]
}

fn crc(seq: &[u8], len: &[u8], value: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(seq);
    hasher.update(len);
    hasher.update(value);
    hasher.finalize()
}

fn decode(slot: &[u8]) -> Slot {
    if slot.iter().all(|b| *b == 0) {
        return Slot::Blank;
    }
    if slot.len() < HEADER_BYTES || slot[..4] != *b"TSTA" || slot[4..6] != [1, 0] || slot[6..8] != [0, 0] {
        return Slot::Bad;
    }
    let seq = u64::from_le_bytes(slot[8..16].try_into().unwrap());
    let len = u32::from_le_bytes(slot[16..20].try_into().unwrap()) as usize;
    let stored = u32::from_le_bytes(slot[20..24].try_into().unwrap());
    if len > SLOT_BYTES - HEADER_BYTES || HEADER_BYTES + len > slot.len() {
        return Slot::Bad;
    }
    let value = &slot[HEADER_BYTES..HEADER_BYTES + len];
    if crc(&slot[8..16], &slot[16..20], value) != stored {
        return Slot::Bad;
    }
    Slot::Valid(seq, value.to_vec())
}

/// Rewrites the checksum of the slot at `start` of `file` to match, as far as the file holds it.
fn fix_crc(file: &mut [u8], start: usize) {
    let Some(slot) = file.get_mut(start..(start + SLOT_BYTES).min(file.len())) else { return };
    if slot.len() < HEADER_BYTES {
        return;
    }
    let len = (u32::from_le_bytes(slot[16..20].try_into().unwrap()) as usize).min(slot.len() - HEADER_BYTES);
    let sum = crc(&slot[8..16], &slot[16..20], &slot[HEADER_BYTES..HEADER_BYTES + len]);
    slot[20..24].copy_from_slice(&sum.to_le_bytes());
}

fn build(control: u8, split: u8, rest: &[u8]) -> Vec<u8> {
    let mut file = if control & 1 == 0 {
        rest.to_vec()
    } else {
        let (first, second) = rest.split_at((usize::from(split) * 16).min(rest.len()));
        let mut file = vec![0u8; 2 * SLOT_BYTES];
        file[..first.len().min(SLOT_BYTES)].copy_from_slice(&first[..first.len().min(SLOT_BYTES)]);
        let second = &second[..second.len().min(SLOT_BYTES)];
        file[SLOT_BYTES..SLOT_BYTES + second.len()].copy_from_slice(second);
        file
    };
    for (i, bit) in [(0, 2), (1, 4)] {
        let start = i * SLOT_BYTES;
        if control & bit != 0 && file.len() >= start + 8 {
            file[start..start + 8].copy_from_slice(b"TSTA\x01\x00\x00\x00");
        }
    }
    for (i, bit) in [(0, 8), (1, 16)] {
        if control & bit != 0 {
            fix_crc(&mut file, i * SLOT_BYTES);
        }
    }
    file
}

fuzz_target!(|data: &[u8]| {
    let [control, split, rest @ ..] = data else { return };
    let file = build(*control, *split, rest);
    let disk = SimDisk::new();
    let path = Path::new(PATH);
    let handle = disk.create(path, 0).expect("create");
    if !file.is_empty() {
        handle.write_at(0, &file).expect("write");
    }
    handle.sync_data().expect("sync");
    disk.sync_dir(path.parent().unwrap()).expect("sync dir");
    drop(handle);

    let slots = [decode(slot_bytes(&file, 0)), decode(slot_bytes(&file, 1))];
    let newest = match &slots {
        [Slot::Valid(a, _), Slot::Valid(b, _)] => Some(a.max(b)),
        [Slot::Valid(a, _), _] | [_, Slot::Valid(a, _)] => Some(a),
        _ => None,
    };
    let opened = StateFile::open(&disk, path);
    let seq = match (&opened, newest) {
        (Ok(state), Some(&newest)) => {
            let got = state.get().expect("a valid slot, but no value");
            let holds = |slot: &Slot| matches!(slot, Slot::Valid(seq, value) if *seq == newest && value == got);
            assert!(slots.iter().any(holds), "{got:?} is not the newest valid slot of {slots:?}");
            newest
        }
        (Ok(state), None) => {
            assert_eq!(slots[1], Slot::Blank, "no valid slot and slot 1 written, but no error");
            assert_eq!(state.get(), None);
            0
        }
        (Err(e), newest) => {
            assert!(newest.is_none(), "{e}, but a slot is valid: {slots:?}");
            assert_ne!(slots[1], Slot::Blank, "{e}, but slot 1 is blank: a first put that never returned");
            return;
        }
    };

    let mut value: Vec<u8> = rest.iter().take(STATE_BYTES_MAX).copied().collect();
    value.reverse();
    let mut state = opened.unwrap();
    if seq == u64::MAX {
        // The last sequence number: refused, with nothing written.
        assert!(state.put(&value).is_err(), "a put after sequence number u64::MAX");
        let before = state.get().map(<[u8]>::to_vec);
        drop(state);
        let reopened = StateFile::open(&disk, path).expect("reopen after a refused put");
        assert_eq!(reopened.get().map(<[u8]>::to_vec), before, "a refused put changed the file");
        return;
    }
    state.put(&value).expect("a put after an open");
    assert_eq!(state.get(), Some(&value[..]));
    drop(state);
    let reopened = StateFile::open(&disk, path).expect("reopen after a put");
    assert_eq!(reopened.get(), Some(&value[..]), "reopened after a put");
    let handle = disk.open(path).expect("open");
    let after = handle.read_copy(0, handle.len().unwrap()).expect("read");
    for i in 0..2 {
        assert_eq!(decode(slot_bytes(&after, i)), Slot::Valid(seq + 1, value.clone()), "slot {i} after a put");
    }
});
