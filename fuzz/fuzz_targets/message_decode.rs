//! Replication messages from arbitrary bytes (PROTOCOL.md "Wire format"): decoding never panics
//! and never allocates beyond its bounds; a message that decodes encodes back to exactly the
//! bytes it was decoded from; and `frame_len`, which a receiver calls on the first four bytes
//! before buffering a body, agrees with what `decode` consumed.
//!
//! Each input is checked three ways: as given, with the envelope crc rewritten to match, and
//! sealed as one whole message (`len` set to the input's length, then the crc), which lets the
//! fuzzer spend its time on the payload checks behind the checksum.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tern_fuzz::{sealed_message, with_message_crc};
use tern_replication::codec::{decode, encode, frame_len};

fn check(data: &[u8]) {
    let decoded = decode(&Bytes::copy_from_slice(data));
    match frame_len(data) {
        // A length refused from the prefix is refused by decode, with the same error.
        Err(refused) => assert_eq!(decoded, Err(refused)),
        Ok(None) => assert_eq!(decoded, Ok(None), "fewer than four bytes"),
        Ok(Some(frame_bytes)) => match decoded {
            Ok(None) => assert!(frame_bytes > data.len(), "decode waits although the frame is whole"),
            Err(_) => assert!(frame_bytes <= data.len(), "decode refused a frame it did not have whole"),
            Ok(Some((msg, used_bytes))) => {
                assert_eq!(used_bytes, frame_bytes, "frame_len and decode disagree");
                let mut again = Vec::with_capacity(used_bytes);
                encode(&msg, &mut again);
                // Decode exactly inverts encode.
                assert_eq!(again.as_slice(), &data[..used_bytes]);
            }
        },
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&with_message_crc(data));
    if let Some(sealed) = sealed_message(data) {
        check(&sealed);
    }
});
