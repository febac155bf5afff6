//! The node state file from arbitrary bytes (FORMAT.md "Node state file"): decoding never
//! panics, and what decodes encodes back to exactly the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::fix_crc;
use tern_replication::node_state::NodeState;

fn check(data: &[u8]) {
    if let Ok(state) = NodeState::decode(data) {
        assert_eq!(state.encode(), data); // the whole file is consumed, in its one canonical form
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // The crc is the last four bytes and covers every byte before it.
    if data.len() >= 4 {
        let mut fixed = data.to_vec();
        let crc_at = fixed.len() - 4;
        fix_crc(&mut fixed, crc_at, &[0..crc_at]);
        check(&fixed);
    }
});
