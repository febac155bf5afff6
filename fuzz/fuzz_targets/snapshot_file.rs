//! Snapshot files of `openraft-tern` from arbitrary bytes (magic "TSNP", version u32, length
//! u64, CRC-32 of the rest, then the bincode of the snapshot's metadata and data, whose data
//! holds the applied state): loading one as `StateMachineStore::open` does never panics, with
//! the controller's cluster map as the applied state and with one of no bytes (which lets the
//! fuzzer reach the metadata without building a map first), and a file that loads is written
//! back as exactly the same bytes.
//!
//! Input: `control u8 | file`. Control bit 0 puts a header that matches (length and checksum
//! of `file`) before `file`, as random bytes almost never carry a checksum; bit 1 selects the
//! cluster map.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openraft::LogId;
use openraft_tern::{reencode_snapshot_file, Application};
use serde::{Deserialize, Serialize};
use tern_controller::{ClusterMap, Command, Reply, TypeConfig};

/// Applied state of no bytes.
#[derive(Default, Serialize, Deserialize)]
struct Nothing;

impl Application<TypeConfig> for Nothing {
    fn apply(&mut self, _: &LogId<u64>, _: &Command) -> Reply {
        Reply::default()
    }
}

fn check<A: Application<TypeConfig>>(file: &[u8]) {
    if let Ok(again) = reencode_snapshot_file::<TypeConfig, A>(file) {
        assert_eq!(again, file, "a snapshot file loaded, and is written back otherwise");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    let file = if control & 1 == 0 {
        rest.to_vec()
    } else {
        let mut file = Vec::with_capacity(20 + rest.len());
        file.extend_from_slice(b"TSNP");
        file.extend_from_slice(&1u32.to_le_bytes());
        file.extend_from_slice(&(rest.len() as u64).to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(rest).to_le_bytes());
        file.extend_from_slice(rest);
        file
    };
    if control & 2 == 0 {
        check::<Nothing>(&file);
    } else {
        check::<ClusterMap>(&file);
    }
});
