//! A cut that keeps what it removes: the records from the cut to the end are written, durably,
//! to a quarantine file of their frames before the log loses them.

mod common;

use common::{log_dir, open, sim_committer};
use tern_segment::sim::{SimDisk, Tear};
use tern_segment::{frame, Disk};
use tern_wal::Durability;

/// The values of every record in a file of frames, by offset.
fn frames_values(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let found = frame::decode(rest).expect("a whole frame").expect("not padding");
        out.extend(found.records().map(|r| (r.offset, r.value.to_vec())));
        rest = &rest[found.frame_len..];
    }
    out
}

#[test]
fn the_cut_records_are_kept_in_a_durable_quarantine_file() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    for i in 0..10u64 {
        let value = format!("record {i}");
        log.append(&[value.as_bytes()], Durability::Local).unwrap();
    }
    let path = log.truncate_suffix_to_quarantine(6).unwrap().expect("records were cut");
    assert_eq!(path, log_dir().join("quarantine-6-10.frames"));
    assert_eq!(log.written_end(), 6);
    assert_eq!(log.truncate_suffix_to_quarantine(6).unwrap(), None, "nothing left to cut");
    // Power fails right after: the cut holds and the file is there, with exactly the records.
    drop(log);
    disk.crash(Tear::None);
    let log = open(&disk, &committer).unwrap();
    assert_eq!(log.written_end(), 6);
    let kept = disk.open(&path).unwrap();
    let bytes = kept.read_copy(0, kept.len().unwrap()).unwrap();
    let want: Vec<(u64, Vec<u8>)> = (6..10).map(|i| (i, format!("record {i}").into_bytes())).collect();
    assert_eq!(frames_values(&bytes), want);
}
