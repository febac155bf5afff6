//! Batch frames from arbitrary bytes (FORMAT.md "Batch frame"): decoding never panics, and a
//! frame that decodes encodes back to exactly the bytes it was decoded from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::with_frame_crc;
use tern_segment::frame::{decode, decode_header_unverified};

fn check(data: &[u8]) {
    let unverified = decode_header_unverified(data);
    if let Ok(Some(frame)) = decode(data) {
        let used_bytes = frame.frame_len;
        let mut again = Vec::with_capacity(used_bytes);
        let len = frame.encode(&mut again).expect("a decoded frame encodes");
        assert_eq!(len, used_bytes);
        // Decode exactly inverts encode.
        assert_eq!(again.as_slice(), &data[..used_bytes]);
        // The cheap walk used for checkpointed regions must agree with the full decode.
        assert_eq!(unverified, Ok(Some((frame.header, used_bytes))));
        assert_eq!(frame.records().count(), frame.header.record_count as usize);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&with_frame_crc(data));
});
