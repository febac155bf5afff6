//! The epoch history file from arbitrary bytes (FORMAT.md "Epoch history file"): decoding never
//! panics nor allocates more than the bytes justify, what decodes encodes back to exactly the
//! same bytes, and the queries replication asks of a history answer within its bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::fix_crc;
use tern_wal::epochs::EpochHistory;

/// Magic, version and entry count; each entry; the checksum.
const HEADER_BYTES: usize = 16;
const ENTRY_BYTES: usize = 16;
const CRC_BYTES: usize = 4;

fn check(data: &[u8]) {
    let Ok(history) = EpochHistory::decode(data) else { return };
    assert_eq!(history.encode(), data); // the whole file is consumed, in its one canonical form
    let entries = history.entries();
    let written_end = entries.last().map_or(0, |e| e.start_offset).saturating_add(1);
    let mut probes: Vec<u64> = vec![0, 1, u64::MAX];
    for entry in entries {
        probes.extend([entry.epoch - 1, entry.epoch, entry.epoch.saturating_add(1)]);
    }
    for epoch in probes {
        let (found, end) = history.epoch_end(epoch, written_end);
        assert!(found <= epoch, "epoch_end({epoch}) answered the later epoch {found}");
        assert!(end <= written_end, "epoch_end({epoch}) ends past the written end");
        assert!(found == 0 || entries.iter().any(|e| e.epoch == found));
        // The offset before the end is in an epoch no later than the one found.
        assert!(end == 0 || history.epoch_at(end - 1) <= found);
    }
    let mut cut = history.clone();
    cut.truncate_from(written_end / 2);
    assert!(cut.entries().iter().all(|e| e.start_offset < written_end / 2));
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // The crc is the last four bytes and covers every byte before it.
    if data.len() >= CRC_BYTES {
        let mut fixed = data.to_vec();
        let crc_at = fixed.len() - CRC_BYTES;
        fix_crc(&mut fixed, crc_at, &[0..crc_at]);
        check(&fixed);
    }
    // A well-formed frame around the fuzzer's entries, so that their order checks are reached.
    if data.len() >= HEADER_BYTES {
        let count = (data.len() - HEADER_BYTES) / ENTRY_BYTES;
        let mut sealed = b"TERNEPCH".to_vec();
        sealed.extend_from_slice(&1u32.to_le_bytes());
        sealed.extend_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_le_bytes());
        sealed.extend_from_slice(&data[HEADER_BYTES..HEADER_BYTES + count * ENTRY_BYTES]);
        sealed.extend_from_slice(&[0; CRC_BYTES]);
        let crc_at = sealed.len() - CRC_BYTES;
        fix_crc(&mut sealed, crc_at, &[0..crc_at]);
        check(&sealed);
    }
});
