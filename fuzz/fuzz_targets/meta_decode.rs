//! `log.meta` and checkpoint slots from arbitrary bytes (FORMAT.md "Log meta file" and
//! "Checkpoint file"): decoding never panics, and what decodes encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::fix_crc;
use tern_wal::meta::{Checkpoint, Meta, SLOT_BYTES};

/// Bytes of a slot that its checksum covers, checksum included; the rest of the slot is padding.
const SLOT_USED_BYTES: usize = 60;

fn check(data: &[u8]) {
    if let Ok(meta) = Meta::decode(data) {
        assert_eq!(meta.encode(), data); // the whole file is consumed
    }
    if let Some(checkpoint) = Checkpoint::decode(data) {
        let slot = checkpoint.encode();
        assert_eq!(slot.len(), SLOT_BYTES);
        assert_eq!(&slot[..SLOT_USED_BYTES], &data[..SLOT_USED_BYTES]);
        assert!(slot[SLOT_USED_BYTES..].iter().all(|b| *b == 0));
    }
    // Two slots side by side, as the checkpoint file holds them.
    let _ = Checkpoint::newest(data, 1);
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // The meta crc (bytes 36..40) covers the 36 bytes before it; a slot's crc (56..60) the 56
    // bytes before it.
    let mut meta = data.to_vec();
    fix_crc(&mut meta, 36, &[0..36]);
    check(&meta);
    let mut slots = data.to_vec();
    fix_crc(&mut slots, 56, &[0..56]);
    fix_crc(&mut slots, SLOT_BYTES + 56, &[SLOT_BYTES..SLOT_BYTES + 56]);
    check(&slots);
});
