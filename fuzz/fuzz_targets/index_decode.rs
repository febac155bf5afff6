//! Index files and segment headers from arbitrary bytes (FORMAT.md "Index file" and "Segment
//! file"): decoding never panics, and what decodes encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::fix_crc;
use tern_segment::segment::{decode_segment_header, encode_segment_header, SEGMENT_HEADER_BYTES};
use tern_segment::IndexFile;

fn check(data: &[u8]) {
    if let Ok(index) = IndexFile::decode(data) {
        assert_eq!(index.encode(), data); // the whole file is consumed
    }
    if let Ok(base_offset) = decode_segment_header(data) {
        let header = encode_segment_header(base_offset);
        assert_eq!(&header[..], &data[..SEGMENT_HEADER_BYTES as usize]);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // The index crc (bytes 52..56) covers everything else; the segment header crc (28..32)
    // covers the 28 bytes before it.
    let mut index = data.to_vec();
    fix_crc(&mut index, 52, &[0..52, 56..usize::MAX]);
    check(&index);
    let mut header = data.to_vec();
    fix_crc(&mut header, 28, &[0..28]);
    check(&header);
});
