//! Journal headers and blocks from arbitrary bytes (FORMAT.md "Journal"): decoding never
//! panics, never reads past a block, and one whole block decodes to entries that stage and seal
//! back to exactly the same bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tern_wal::journal::{decode_blocks, decode_header, encode_header, seal_block, stage_entry, BLOCK_HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Some((seq, clean)) = decode_header(data) {
        assert_eq!(&encode_header(seq, clean)[..], &data[..64]);
    }
    let body = Bytes::copy_from_slice(data);
    let seq = data.get(8..16).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
    let (_, used) = decode_blocks(&body, seq);
    assert!(used <= data.len());
    // The same bytes as one block with a correct length and checksum.
    if data.len() > BLOCK_HEADER_BYTES {
        let mut block = data.to_vec();
        seal_block(&mut block, seq);
        let (entries, used) = decode_blocks(&Bytes::from(block.clone()), seq);
        if used == block.len() {
            let mut again = Vec::new();
            for (name, generation, frame) in &entries {
                stage_entry(&mut again, name, *generation, frame);
            }
            if !again.is_empty() {
                seal_block(&mut again, seq);
                assert_eq!(again, block);
            }
        }
    }
});
