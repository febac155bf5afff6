//! Appends, reads, rolling, reopening and truncation on a real disk and on the simulated one.

mod common;

use std::sync::Arc;

use common::*;
use tern_segment::sim::{FaultOp, SimDisk, Tear};
use tern_segment::{Disk, OsDisk};
use tern_wal::{now_ms, AppendOptions, Committer, Durability, Error, Log, LogOptions, Record, Visibility};

#[test]
fn records_round_trip_across_segments_and_a_clean_reopen() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    let mut want = Vec::new();
    for i in 0..300u64 {
        let value = format!("record-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes();
        let offsets = log.append(&[&value], Durability::Local).unwrap();
        assert_eq!(offsets, i..i + 1);
        want.push((i, value));
    }
    assert!(log.segments().len() > 3, "small segments must roll");
    assert_eq!(contents(&log, Visibility::Durable), want);
    log.close().unwrap();
    let log = open(&disk, &committer).unwrap();
    assert!(log.recovered().clean, "a clean close needs no scan: {:?}", log.recovered());
    assert_eq!(contents(&log, Visibility::Written), want);
    // Reading from the middle goes through the sparse index.
    let from_middle: Vec<u64> = log.read(157, Visibility::Durable).unwrap().map(|r| r.unwrap().offset).collect();
    assert_eq!(from_middle, (157..300).collect::<Vec<_>>());
    committer.stop();
}

#[test]
fn a_record_as_large_as_the_maximum_round_trips_and_a_larger_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Arc<dyn Disk> = Arc::new(OsDisk::new());
    let committer = Committer::start(disk.clone());
    let options = LogOptions { segment_size_bytes: 1 << 20, ..LogOptions::default() };
    let log = Log::open(disk, dir.path(), "big", options, committer.clone(), true).unwrap();
    let big: Vec<u8> = (0..options.record_bytes_max).map(|i| (i % 251) as u8).collect();
    log.append(&[b"small"], Durability::Local).unwrap();
    let offsets = log.append(&[&big], Durability::Local).unwrap();
    let read: Vec<_> = log.read(offsets.start, Visibility::Durable).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(read[0].value.as_ref(), big.as_slice());
    let too_big = vec![0u8; options.record_bytes_max as usize + 1];
    assert!(matches!(log.append(&[&too_big], Durability::Local), Err(Error::RecordTooLarge { .. })));
    log.close().unwrap();
    committer.stop();
}

#[test]
fn truncate_prefix_deletes_whole_segments_and_survives_reopen() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    for i in 0..200u64 {
        log.append(&[format!("{i:0100}").as_bytes()], Durability::Local).unwrap();
    }
    let start = log.truncate_prefix(120).unwrap();
    assert!(start <= 120 && start > 0, "start {start}");
    assert!(matches!(log.read(start - 1, Visibility::Durable), Err(Error::OffsetOutOfRange { .. })));
    assert_eq!(contents(&log, Visibility::Durable).first().map(|r| r.0), Some(start));
    log.close().unwrap();
    let log = open(&disk, &committer).unwrap();
    assert_eq!(log.start_offset(), start);
    assert_eq!(log.written_end(), 200);
    committer.stop();
}

#[test]
fn truncate_suffix_cuts_at_a_batch_boundary_and_the_cut_records_never_return() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    for i in 0..100u64 {
        log.append(&[format!("old-{i:080}").as_bytes(), b"second"], Durability::Local).unwrap();
    }
    assert!(matches!(log.truncate_suffix(61), Err(Error::NotBatchBoundary { offset: 61 })));
    log.truncate_suffix(60).unwrap();
    assert_eq!(log.written_end(), 60);
    // Same-sized batches land exactly where the cut ones were.
    log.append(&[format!("new-{:080}", 0).as_bytes(), b"second"], Durability::None).unwrap();
    disk.crash(Tear::None);
    let log = open(&disk, &committer).unwrap();
    let got = contents(&log, Visibility::Durable);
    assert!(got.len() == 60 || got.len() == 62, "len {}", got.len());
    assert!(got.iter().all(|(_, v)| !v.starts_with(b"old-") || got.len() >= 60), "old records came back");
    assert!(got.iter().skip(60).all(|(_, v)| !v.starts_with(b"old-")));
    committer.stop();
}

#[test]
fn a_failed_sync_fails_the_waiter_and_fences_the_log_until_reopen() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    log.append(&[b"durable"], Durability::Local).unwrap();
    disk.fail_next(FaultOp::Sync, libc::EIO);
    assert!(matches!(log.append(&[b"lost"], Durability::Local), Err(Error::Fenced { .. })));
    assert!(matches!(log.append(&[b"refused"], Durability::None), Err(Error::Fenced { .. })));
    // What was durable stays readable.
    assert_eq!(contents(&log, Visibility::Durable), vec![(0, b"durable".to_vec())]);
    drop(log);
    disk.crash(Tear::None);
    let log = open(&disk, &committer).unwrap();
    assert_eq!(contents(&log, Visibility::Durable), vec![(0, b"durable".to_vec())]);
    log.append(&[b"after"], Durability::Local).unwrap();
    committer.stop();
}

#[test]
fn a_full_disk_is_a_clear_error_and_durable_data_stays_readable() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    log.append(&[b"kept"], Durability::Local).unwrap();
    disk.full_after(0);
    let mut saw_full = false;
    for _ in 0..100 {
        match log.append(&[&[7u8; 1000]], Durability::Local) {
            Ok(_) => {}
            Err(Error::DiskFull { .. }) => {
                saw_full = true;
                break;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(saw_full, "segments are pre-allocated, so the full disk shows when a new one is needed");
    assert_eq!(contents(&log, Visibility::Durable).first(), Some(&(0, b"kept".to_vec())));
    committer.stop();
}

#[test]
fn a_reader_waits_for_the_log_to_grow_without_polling() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    let tail = log.clone();
    let waiter =
        std::thread::spawn(move || tail.wait_for(0, Visibility::Durable, Some(std::time::Duration::from_secs(30))));
    log.append(&[b"wake up"], Durability::Local).unwrap();
    assert!(waiter.join().unwrap());
    assert!(!log.wait_for(5, Visibility::Durable, Some(std::time::Duration::from_millis(1))));
    committer.stop();
}

#[test]
fn many_writers_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Arc<dyn Disk> = Arc::new(OsDisk::new());
    let committer = Committer::start(disk.clone());
    let log = Log::open(disk, dir.path(), "shared", LogOptions::default(), committer.clone(), true).unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let log = log.clone();
            s.spawn(move || {
                for i in 0..50 {
                    log.append(&[format!("{t}-{i}").as_bytes()], Durability::Local).unwrap();
                }
            });
        }
    });
    assert_eq!(log.durable_end(), 400);
    let stats = committer.stats();
    assert!(stats.file_syncs <= 400, "{stats:?}");
    let mut seen: Vec<_> = contents(&log, Visibility::Durable).into_iter().map(|(_, v)| v).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 400);
    log.close().unwrap();
    committer.stop();
}

#[test]
fn control_records_take_offsets_and_ship_but_readers_skip_them() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    let control = AppendOptions { control: true, ..AppendOptions::default() };
    let marker = [Record::new(b"", now_ms())];
    let first = log.append_records(&marker, control).unwrap().offsets;
    log.append(&[b"a", b"b"], Durability::Local).unwrap();
    let second = log.append_records(&marker, control).unwrap().offsets;
    let last = log.append(&[b"c"], Durability::Local).unwrap();
    let trailing = log.append_records(&marker, control).unwrap().wait(Durability::Local).unwrap();
    assert_eq!((first, second, last, trailing), (0..1, 3..4, 4..5, 5..6));

    let read = |from: u64| -> Vec<(u64, Vec<u8>)> {
        log.read(from, Visibility::Durable).unwrap().map(|r| r.map(|r| (r.offset, r.value.to_vec())).unwrap()).collect()
    };
    let all = vec![(1, b"a".to_vec()), (2, b"b".to_vec()), (4, b"c".to_vec())];
    assert_eq!(read(0), all);
    assert_eq!(read(3), all[2..]);
    // A reader past the last record goes on after the control batch, not before it.
    let mut reader = log.read(4, Visibility::Durable).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().offset, 4);
    assert!(reader.next().is_none());
    assert_eq!(reader.next_offset(), 6);
    // Shippers send every batch, control ones included.
    let batches = log.read_batches(0, u64::MAX, Visibility::Durable).unwrap();
    assert_eq!(batches.iter().map(|b| b.base_offset).collect::<Vec<_>>(), vec![0, 1, 3, 4, 5]);
    // A control batch names no producer.
    let with_producer = AppendOptions { producer_id: 7, sequence: 1, ..control };
    assert!(matches!(log.append_records(&marker, with_producer), Err(Error::Invalid(_))));
    log.close().unwrap();
    let log = open(&disk, &committer).unwrap();
    let reopened: Vec<u64> = log.read(0, Visibility::Written).unwrap().map(|r| r.unwrap().offset).collect();
    assert_eq!((reopened, log.written_end()), (vec![1, 2, 4], 6));
    committer.stop();
}
