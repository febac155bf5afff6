//! `log.meta` and checkpoint slots from arbitrary bytes (FORMAT.md "Log meta file" and
//! "Checkpoint file"): decoding never panics, and what decodes encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::fix_crc;
use tern_wal::meta::{Checkpoint, Meta, META_BYTES, SLOT_BYTES};

/// Bytes of a slot that its checksum covers, checksum included; the rest of the slot is padding.
const SLOT_USED_BYTES: usize = 60;

fn check(data: &[u8]) {
    if let Ok(meta) = Meta::decode(data) {
        let encoded = meta.encode();
        if data.len() == META_BYTES {
            assert_eq!(encoded, data); // the whole file is consumed
        } else {
            // A version 1 file is written back as version 2 with the same fields; what it
            // lacked (the newest segment and the claim) is filled from its start offset.
            let again = Meta::decode(&encoded).expect("an upgraded meta file decodes");
            assert_eq!(
                (again.generation, again.start_offset, again.truncate_to),
                (meta.generation, meta.start_offset, meta.truncate_to)
            );
            assert_eq!(again.encode(), encoded);
        }
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
    // The meta crc covers the bytes before it (36 in version 1, 68 in version 2); a slot's
    // crc (56..60) the 56 bytes before it.
    for crc_at in [36, META_BYTES - 4] {
        let mut meta = data.to_vec();
        fix_crc(&mut meta, crc_at, &[0..crc_at]);
        check(&meta);
    }
    let mut slots = data.to_vec();
    fix_crc(&mut slots, 56, &[0..56]);
    fix_crc(&mut slots, SLOT_BYTES + 56, &[SLOT_BYTES..SLOT_BYTES + 56]);
    check(&slots);
});
