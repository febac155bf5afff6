//! The replication slots file from arbitrary bytes (FORMAT.md "Replication slots file"):
//! decoding never panics, and what decodes encodes back to exactly the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::check_with_trailing_crc;
use tern_replication::slots::Slots;

fn check(data: &[u8]) {
    if let Ok(slots) = Slots::decode(data) {
        assert_eq!(slots.encode(), data); // the whole file is consumed, in its one canonical form
    }
}

fuzz_target!(|data: &[u8]| check_with_trailing_crc(data, check));
