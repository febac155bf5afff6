//! Boundaries of the durability paths that a mutation check (`cargo mutants` on the log, the
//! committer, the meta and the segment) found no test watching: offsets just outside a log's
//! range, an index file that belongs to another segment, journal replay that must open exactly
//! the logs it names, and a sealed segment that holds nothing.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use tern_segment::sim::{SimDisk, Tear};
use tern_segment::Disk;
use tern_wal::{Committer, Durability, Error, JournalOptions, Log, Visibility};

#[test]
fn a_suffix_truncation_outside_the_log_is_refused_and_changes_nothing() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    for i in 0..40 {
        log.append(&[&value_of(&format!("r{i}"), 300)], Durability::Local).unwrap();
    }
    let start = log.truncate_prefix(20).unwrap();
    assert!(start > 0, "whole segments went");
    let before = contents(&log, Visibility::Durable);
    for offset in [start - 1, 0, 41, u64::MAX] {
        assert!(
            matches!(log.truncate_suffix(offset), Err(Error::OffsetOutOfRange { .. })),
            "truncate_suffix({offset}) on {start}..40"
        );
    }
    assert!(!log.is_fenced());
    assert_eq!(contents(&log, Visibility::Durable), before);
    // The edges themselves are accepted: the end cuts nothing, the start cuts everything.
    log.truncate_suffix(40).unwrap();
    assert_eq!(contents(&log, Visibility::Durable), before);
    log.truncate_suffix(start).unwrap();
    assert_eq!((log.start_offset(), log.written_end()), (start, start));
    committer.stop();
}

/// An index file is trusted at open only when it describes its own segment: one copied from
/// another segment (or naming bytes past the file) is ignored, the segment is scanned instead,
/// and every record reads back.
#[test]
fn an_index_file_of_another_segment_is_never_trusted() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    let mut sent = Vec::new();
    for i in 0..60 {
        let v = value_of(&format!("r{i}"), 300);
        log.append(&[&v], Durability::Local).unwrap();
        sent.push(v);
    }
    let segments = log.segments();
    assert!(segments.len() >= 4);
    log.close().unwrap();
    drop(log);
    // The first sealed segment gets the index of the second.
    let (first, second) = (segments[0].index_path(), segments[1].index_path());
    let other = disk.open(&second).unwrap();
    let bytes = other.read_at(0, other.len().unwrap()).unwrap();
    disk.remove(&first).unwrap();
    let copy = disk.create(&first, 0).unwrap();
    copy.write_at(0, &bytes).unwrap();
    copy.sync_data().unwrap();
    disk.sync_dir(log_dir()).unwrap();
    disk.crash(Tear::None);
    let log = open(&disk, &committer).unwrap();
    let got: Vec<Vec<u8>> = contents(&log, Visibility::Durable).into_iter().map(|(_, v)| v).collect();
    assert_eq!(got, sent);
    committer.stop();
}

fn journal_options() -> JournalOptions {
    JournalOptions {
        dir: PathBuf::from("/data/journal"),
        file_bytes: tern_wal::journal::JOURNAL_HEADER_BYTES + (64 << 10),
    }
}

fn log_path(name: &str) -> PathBuf {
    Path::new("/data/logs").join(name)
}

/// After a power loss, the journal names exactly the logs it holds entries for, and refuses
/// to start a new file until each of them was opened (which replays its entries): starting
/// one first would make their batches stale before they were written back.
#[test]
fn journal_replay_names_exactly_its_logs_and_waits_for_each_to_be_opened() {
    let disk = SimDisk::new();
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    {
        let committer = Committer::start_with_journal(shared.clone(), &journal_options()).unwrap();
        committer.finish_replay().unwrap();
        for name in ["orders", "events"] {
            let log =
                Log::open(shared.clone(), &log_path(name), name, small_options(), committer.clone(), true).unwrap();
            log.append(&[name.as_bytes()], Durability::Local).unwrap();
        }
        let idle = Log::open(shared.clone(), &log_path("idle"), "idle", small_options(), committer.clone(), true);
        drop(idle);
    }
    disk.crash(Tear::None);
    let committer = Committer::start_with_journal(shared.clone(), &journal_options()).unwrap();
    assert_eq!(committer.replay_names(), ["events", "orders"]);
    let orders =
        Log::open(shared.clone(), &log_path("orders"), "orders", small_options(), committer.clone(), false).unwrap();
    assert!(committer.finish_replay().is_err(), "events still has entries to replay");
    let events =
        Log::open(shared.clone(), &log_path("events"), "events", small_options(), committer.clone(), false).unwrap();
    committer.finish_replay().unwrap();
    assert_eq!(contents(&orders, Visibility::Durable), vec![(0, b"orders".to_vec())]);
    assert_eq!(contents(&events, Visibility::Durable), vec![(0, b"events".to_vec())]);
    committer.stop();
}

/// A sealed segment is synced whole before the next one is created, so one that holds no
/// record is damage, reported at open with its file.
#[test]
fn a_sealed_segment_without_records_is_corruption() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    for i in 0..30 {
        log.append(&[&value_of(&format!("r{i}"), 300)], Durability::Local).unwrap();
    }
    let segments = log.segments();
    log.close().unwrap();
    drop(log);
    // The second segment loses its frames and its index: a header and zeros are left.
    let path = segments[1].path().to_path_buf();
    disk.remove(&segments[1].index_path()).unwrap();
    let file = disk.open(&path).unwrap();
    file.write_at(tern_segment::segment::SEGMENT_HEADER_BYTES, &[0u8; 4096 - 32]).unwrap();
    file.sync_data().unwrap();
    disk.sync_dir(log_dir()).unwrap();
    match open(&disk, &committer) {
        Err(Error::Segment(tern_segment::Error::Corrupt { file, .. })) => assert_eq!(file, path),
        other => panic!("{other:?}"),
    }
    committer.stop();
}

/// A segment of zeros after the newest one the meta records (what a build that created
/// segments in place could leave after a crash during a roll) holds nothing: the log opens
/// without it, verify agrees, and appends continue.
#[test]
fn a_segment_of_zeros_past_the_newest_recorded_one_is_removed_at_open() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    for i in 0..20 {
        log.append(&[&value_of(&format!("r{i}"), 300)], Durability::Local).unwrap();
    }
    let end = log.written_end();
    log.close().unwrap();
    drop(log);
    let stray = log_dir().join(tern_segment::segment::segment_file_name(end));
    disk.create(&stray, 4096).unwrap();
    disk.sync_dir(log_dir()).unwrap();
    let report = tern_wal::verify::verify_log(&disk, log_dir(), &mut |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    let log = open(&disk, &committer).unwrap();
    assert_eq!(log.written_end(), end);
    assert_eq!(log.append(&[b"next"], Durability::Local).unwrap(), end..end + 1);
    committer.stop();
}

/// A committer stopped before every log with journal entries was opened keeps those entries
/// (it must not start a new, clean journal file over them): the next start still replays them.
#[test]
fn stopping_before_a_log_was_replayed_keeps_its_journal_entries() {
    let disk = SimDisk::new();
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    {
        let committer = Committer::start_with_journal(shared.clone(), &journal_options()).unwrap();
        committer.finish_replay().unwrap();
        let log =
            Log::open(shared.clone(), &log_path("orders"), "orders", small_options(), committer.clone(), true).unwrap();
        log.append(&[b"acked"], Durability::Local).unwrap();
    }
    disk.crash(Tear::None);
    let committer = Committer::start_with_journal(shared.clone(), &journal_options()).unwrap();
    assert_eq!(committer.replay_names(), ["orders"]);
    committer.stop(); // before opening "orders"
    disk.crash(Tear::None);
    let committer = Committer::start_with_journal(shared.clone(), &journal_options()).unwrap();
    let log =
        Log::open(shared.clone(), &log_path("orders"), "orders", small_options(), committer.clone(), false).unwrap();
    committer.finish_replay().unwrap();
    assert_eq!(contents(&log, Visibility::Durable), vec![(0, b"acked".to_vec())]);
    committer.stop();
}

/// `check_tail` reads every frame of the last segment: damage anywhere in it is an error
/// naming the file and the frame's byte, and an intact segment passes.
#[test]
fn check_tail_finds_damage_anywhere_in_the_last_segment() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    for i in 0..6 {
        log.append(&[&value_of(&format!("r{i}"), 100)], Durability::Local).unwrap();
    }
    log.check_tail().unwrap();
    let last = log.segments().last().cloned().unwrap();
    let frame = u64::from(u32::from_le_bytes(last.bytes(32, 36).unwrap()[..].try_into().unwrap())) + 8;
    let damaged = 32 + 4 * frame;
    disk.flip_bit(last.path(), damaged + 30, 1).unwrap();
    match log.check_tail() {
        Err(Error::Segment(tern_segment::Error::Corrupt { file, pos, .. })) => {
            assert_eq!((file.as_path(), pos), (last.path(), damaged));
        }
        other => panic!("{other:?}"),
    }
    committer.stop();
}

/// A closed log of four segments, each holding records, and the segments' base offsets.
fn closed_log_of_four_segments(disk: &SimDisk, committer: &Committer) -> Vec<u64> {
    let log = open(disk, committer).unwrap();
    let mut i = 0;
    while log.segments().len() < 4 || log.segments()[3].end_offset() == log.segments()[3].base_offset() {
        log.append(&[&value_of(&format!("r{i}"), 300)], Durability::Local).unwrap();
        i += 1;
    }
    let bases = log.segments().iter().map(|s| s.base_offset()).collect();
    log.close().unwrap();
    bases
}

fn segment_path(base: u64) -> PathBuf {
    log_dir().join(tern_segment::segment::segment_file_name(base))
}

fn remove_durably(disk: &SimDisk, path: &Path) {
    disk.remove(path).unwrap();
    disk.sync_dir(path.parent().unwrap()).unwrap();
}

/// Opening must fail with corruption naming `file` at byte `pos`, and verify must agree.
fn expect_corrupt(disk: &SimDisk, committer: &Committer, file: &Path, pos: u64) {
    match open(disk, committer) {
        Err(Error::Segment(tern_segment::Error::Corrupt { file: f, pos: p, .. })) => {
            assert_eq!((f.as_path(), p), (file, pos))
        }
        Err(e) => panic!("{e}"),
        Ok(log) => panic!("opened as {}..{}", log.start_offset(), log.written_end()),
    }
    let report = tern_wal::verify::verify_log(disk, log_dir(), &mut |_| {}).unwrap();
    assert!(report.problems.iter().any(|p| p.file == file), "verify must agree: {report:?}");
}

/// With every segment file gone (the meta still there), the log is not silently recreated
/// empty: the first segment is reported missing.
#[test]
fn a_log_whose_segment_files_are_all_gone_is_reported_not_recreated_empty() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    for base in closed_log_of_four_segments(&disk, &committer) {
        remove_durably(&disk, &segment_path(base));
    }
    expect_corrupt(&disk, &committer, &segment_path(0), 0);
    committer.stop();
}

/// The newest segment gone: reported by name, never a log that silently ends earlier.
#[test]
fn a_log_whose_newest_segment_is_gone_is_reported() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let bases = closed_log_of_four_segments(&disk, &committer);
    remove_durably(&disk, &segment_path(bases[3]));
    expect_corrupt(&disk, &committer, &segment_path(bases[3]), 0);
    // Said as what it is (the meta records which segment is the newest), not only as a
    // missing synced segment.
    let Err(Error::Segment(tern_segment::Error::Corrupt { reason, .. })) = open(&disk, &committer) else {
        panic!("the log opened")
    };
    assert_eq!(reason, tern_segment::CorruptReason::Field("the log's newest segment is missing"));
    committer.stop();
}

/// A middle segment gone: the error names the missing file, not the one after it.
#[test]
fn a_log_whose_middle_segment_is_gone_names_the_missing_file() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let bases = closed_log_of_four_segments(&disk, &committer);
    remove_durably(&disk, &segment_path(bases[2]));
    expect_corrupt(&disk, &committer, &segment_path(bases[2]), 0);
    committer.stop();
}

/// A segment file past the newest one the meta records that holds frames (another log's
/// file copied in, say) is never taken for a roll's leftover: the open fails naming it, and
/// the file stays.
#[test]
fn a_segment_holding_frames_past_the_newest_recorded_one_is_an_error_and_is_kept() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let other_dir = Path::new("/data/other");
    let other = Log::open(shared, other_dir, "other", small_options(), committer.clone(), true).unwrap();
    other.reset(1000).unwrap();
    other.append(&[b"another log's record"], Durability::Local).unwrap();
    other.close().unwrap();
    let bases = closed_log_of_four_segments(&disk, &committer);
    assert!(bases[3] < 1000);
    let source = disk.open(&other_dir.join(tern_segment::segment::segment_file_name(1000))).unwrap();
    let bytes = source.read_copy(0, source.len().unwrap()).unwrap();
    let stray = segment_path(1000);
    let copy = disk.create(&stray, bytes.len() as u64).unwrap();
    copy.write_at(0, &bytes).unwrap();
    copy.sync_data().unwrap();
    disk.sync_dir(log_dir()).unwrap();
    let header = tern_segment::segment::SEGMENT_HEADER_BYTES;
    match open(&disk, &committer) {
        Err(Error::Segment(tern_segment::Error::Corrupt { file, pos, .. })) => {
            assert_eq!((file, pos), (stray.clone(), header))
        }
        Err(e) => panic!("{e}"),
        Ok(log) => panic!("opened as {}..{}, the stray file's record dropped", log.start_offset(), log.written_end()),
    }
    assert!(disk.exists(&stray), "nothing already stored is removed");
    committer.stop();
}

/// A new log whose creation stopped when its first segment was shorter than a header (and no
/// meta was written) held nothing: it opens as a new, empty log, cleanly.
#[test]
fn a_log_whose_creation_stopped_with_a_first_segment_shorter_than_a_header_opens_empty() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    disk.create_dir_all(log_dir()).unwrap();
    let first = segment_path(0);
    let file = disk.create(&first, 0).unwrap();
    file.write_at(0, b"TERNSEG").unwrap();
    file.sync_data().unwrap();
    disk.sync_dir(log_dir()).unwrap();
    let log = open(&disk, &committer).unwrap();
    assert_eq!((log.start_offset(), log.written_end()), (0, 0));
    assert!(log.recovered().clean, "{:?}", log.recovered());
    assert_eq!(log.append(&[b"first"], Durability::Local).unwrap(), 0..1);
    committer.stop();
}

/// Writes `log.meta` as a build with version 1 meta files did: no segment range, no claim.
fn write_v1_meta(disk: &SimDisk) {
    let meta = tern_wal::meta::Meta::read(disk, log_dir()).unwrap().unwrap();
    let mut v1 = b"TERNMETA".to_vec();
    v1.extend_from_slice(&1u32.to_le_bytes());
    for field in [meta.generation, meta.start_offset, meta.truncate_to] {
        v1.extend_from_slice(&field.to_le_bytes());
    }
    let crc = crc32fast::hash(&v1);
    v1.extend_from_slice(&crc.to_le_bytes());
    tern_segment::disk::write_file_atomic(disk, &log_dir().join("log.meta"), &v1, true).unwrap();
}

/// A version 1 log whose newest checkpoint slot claims only part of its first, sealed segment
/// (the slot of a sync before the roll): the records past the claim are intact, not missing.
#[test]
fn a_claim_inside_a_sealed_segment_of_a_version_1_log_is_not_its_end() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let bases = closed_log_of_four_segments(&disk, &committer);
    let generation = tern_wal::meta::Meta::read(&disk, log_dir()).unwrap().unwrap().generation;
    let mut writer = tern_wal::meta::CheckpointWriter::open(&disk, log_dir()).unwrap();
    let header = tern_segment::segment::SEGMENT_HEADER_BYTES;
    let early = tern_wal::meta::Checkpoint {
        generation,
        segment_base: 0,
        durable_pos: header,
        durable_end: 0,
        ..Default::default()
    };
    writer.write(early, true).unwrap();
    write_v1_meta(&disk);
    let log = open(&disk, &committer).unwrap();
    assert_eq!(log.segments().iter().map(|s| s.base_offset()).collect::<Vec<_>>(), bases);
    assert_eq!(contents(&log, Visibility::Durable).len() as u64, log.written_end());
    committer.stop();
}

/// A log from a build with version 1 meta files, whose crash during a roll left the new last
/// segment with a zero header: that segment holds nothing the checkpoint claims, so the log
/// opens with every record and appends continue.
#[test]
fn a_version_1_log_whose_last_segment_has_a_zero_header_opens_with_every_record() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    for i in 0..5 {
        log.append(&[&value_of(&format!("r{i}"), 100)], Durability::Local).unwrap();
    }
    let expected = contents(&log, Visibility::Durable);
    log.close().unwrap();
    drop(log);
    write_v1_meta(&disk);
    disk.create(&segment_path(5), 4096).unwrap();
    disk.sync_dir(log_dir()).unwrap();
    let log = open(&disk, &committer).unwrap();
    assert_eq!(contents(&log, Visibility::Durable), expected);
    assert_eq!(log.append(&[b"next"], Durability::Local).unwrap(), 5..6);
    committer.stop();
}

/// What recovery reports is exact: the bytes of frames it verified (every segment whose index
/// is missing, and the last one), and the bytes past the last whole frame that it cut.
#[test]
fn recovery_reports_exactly_what_it_scanned_and_cut() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    let mut i = 0;
    while log.segments().len() < 3 {
        log.append(&[&value_of(&format!("r{i}"), 300)], Durability::Local).unwrap();
        i += 1;
    }
    let segments = log.segments();
    let last = segments.last().unwrap().clone();
    disk.crash(Tear::None);
    drop(log);
    for segment in &segments[..segments.len() - 1] {
        if disk.exists(&segment.index_path()) {
            disk.remove(&segment.index_path()).unwrap();
        }
    }
    // Ten bytes of a write that was cut short, just past the last frame.
    let file = disk.open(last.path()).unwrap();
    file.write_at(last.end_pos(), &[0xab; 10]).unwrap();
    file.sync_data().unwrap();
    disk.sync_dir(log_dir()).unwrap();
    let log = open(&disk, &committer).unwrap();
    let header = tern_segment::segment::SEGMENT_HEADER_BYTES;
    let scanned: u64 = log.segments().iter().map(|s| s.end_pos() - header).sum();
    let recovered = log.recovered();
    assert_eq!((recovered.scanned_bytes, recovered.torn_tail_bytes, recovered.clean), (scanned, 10, false));
    committer.stop();
}

/// A segment filled to its very last byte, synced: its durable claim ends exactly at the end
/// of the file, which is not past it. The log reopens after a power loss with every record.
#[test]
fn a_segment_filled_to_its_last_byte_reopens_after_a_power_loss() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    // Every checkpoint slot synced: the claim is the last sync's.
    let options = tern_wal::LogOptions { checkpoint_sync_interval_ms: 0, ..small_options() };
    let open = |disk: &SimDisk| {
        let shared: Arc<dyn Disk> = Arc::new(disk.clone());
        Log::open(shared, log_dir(), "log", options, committer.clone(), true)
    };
    let log = open(&disk).unwrap();
    // The bytes a one-record batch adds besides its value.
    let before = log.segments()[0].end_pos();
    log.append(&[b"x"], Durability::Local).unwrap();
    let overhead = log.segments()[0].end_pos() - before - 1;
    while log.segments()[0].remaining_bytes() > 2 * (overhead + 200) {
        log.append(&[&value_of("fill", 200)], Durability::Local).unwrap();
    }
    let fill = log.segments()[0].remaining_bytes() - overhead;
    log.append(&[&vec![b'f'; usize::try_from(fill).unwrap()]], Durability::Local).unwrap();
    assert_eq!(log.segments().len(), 1);
    assert_eq!(log.segments()[0].remaining_bytes(), 0, "filled to the last byte");
    let held = contents(&log, Visibility::Durable);
    disk.crash(Tear::None);
    drop(log);
    let log = open(&disk).expect("a full segment reopens");
    assert_eq!(contents(&log, Visibility::Durable), held);
    committer.stop();
}

/// Quarantining from the end cuts nothing and writes no file.
#[test]
fn quarantining_from_the_end_cuts_nothing_and_writes_no_file() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    log.append(&[b"a", b"b"], Durability::Local).unwrap();
    let files = disk.files().len();
    assert_eq!(log.truncate_suffix_to_quarantine(2).unwrap(), None);
    assert_eq!(disk.files().len(), files);
    assert_eq!(log.written_end(), 2);
    committer.stop();
}
