//! Durability callbacks ([`Appended::on_durable`]): told the truth, told once, never left
//! waiting, in both commit modes.

mod common;

use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tern_segment::sim::{FaultOp, SimDisk, Tear};
use tern_segment::Disk;
use tern_wal::{AppendOptions, CommitMode, Committer, Durability, Error, Log, Record, Visibility};

fn committer(disk: &SimDisk, mode: CommitMode) -> Committer {
    Committer::start_with(Arc::new(disk.clone()), None, mode).unwrap()
}

/// Appends `value` and registers a callback that sends its outcome to the returned receiver.
fn append_with_callback(log: &Log, value: &[u8]) -> Receiver<tern_wal::Result<std::ops::Range<u64>>> {
    let (tx, rx) = channel();
    let appended = log.append_records(&[Record::new(value, tern_wal::now_ms())], AppendOptions::default()).unwrap();
    appended.on_durable(move |result| tx.send(result).unwrap());
    rx
}

fn outcome(
    rx: &Receiver<tern_wal::Result<std::ops::Range<u64>>>,
    what: &str,
) -> tern_wal::Result<std::ops::Range<u64>> {
    rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("{what}: the callback was never called"))
}

/// Each callback is called once, with its own offsets, and only once its record survives a
/// power loss: the image of the disk taken inside the callback holds it.
#[test]
fn a_callback_is_called_once_its_record_survives_a_power_loss() {
    for mode in [CommitMode::Thread, CommitMode::Leader] {
        let disk = SimDisk::new();
        let committer = committer(&disk, mode);
        let log = open(&disk, &committer).unwrap();
        let mut receivers = Vec::new();
        for i in 0..20u64 {
            let (tx, rx) = channel();
            let value = value_of(&format!("record {i}:"), 100);
            let appended =
                log.append_records(&[Record::new(&value, tern_wal::now_ms())], AppendOptions::default()).unwrap();
            let image_disk = disk.clone();
            appended.on_durable(move |result| {
                // What a power loss now would leave.
                let image = image_disk.fork();
                image.crash(Tear::None);
                tx.send((result, image)).unwrap();
            });
            receivers.push(rx);
        }
        for (i, rx) in receivers.iter().enumerate() {
            let (result, image) = rx.recv_timeout(Duration::from_secs(20)).expect("called");
            assert_eq!(result.unwrap(), i as u64..i as u64 + 1, "{mode:?}");
            assert!(rx.try_recv().is_err(), "{mode:?}: called twice");
            let image_committer = sim_committer(&image);
            let reopened = open(&image, &image_committer).unwrap();
            let got = contents(&reopened, Visibility::Written);
            assert!(got.len() > i, "{mode:?}: record {i} was reported durable but a power loss lost it: {got:?}");
            assert_eq!(got[i], (i as u64, value_of(&format!("record {i}:"), 100)));
            image_committer.stop();
        }
        committer.stop();
    }
}

/// After a failed fsync the kernel may have dropped the pages: the callback of a record that
/// sync was to persist is told the log failed, never that the record is durable, even though
/// the next fsync of the file would report success.
#[test]
fn a_callback_whose_sync_failed_is_told_so() {
    for mode in [CommitMode::Thread, CommitMode::Leader] {
        let disk = SimDisk::new();
        let committer = committer(&disk, mode);
        let log = open(&disk, &committer).unwrap();
        log.append(&[b"durable"], Durability::Local).unwrap();
        disk.fail_next(FaultOp::Sync, libc::EIO);
        let rx = append_with_callback(&log, b"lost");
        let result = outcome(&rx, "failed sync");
        assert!(matches!(result, Err(Error::Fenced { .. })), "{mode:?}: {result:?}");
        // Later callbacks are refused too, at once.
        let result = outcome(&append_with_callback_or_refused(&log), "after the fence");
        assert!(matches!(result, Err(Error::Fenced { .. })), "{mode:?}: {result:?}");
        committer.stop();
    }
}

/// An append on a fenced log is refused before any callback exists; a callback registered for
/// a batch written before the fence is told of it at once.
fn append_with_callback_or_refused(log: &Log) -> Receiver<tern_wal::Result<std::ops::Range<u64>>> {
    let (tx, rx) = channel();
    match log.append_records(&[Record::new(b"late", 0)], AppendOptions::default()) {
        Ok(appended) => appended.on_durable(move |result| tx.send(result).unwrap()),
        Err(e) => tx.send(Err(e)).unwrap(),
    }
    rx
}

/// A callback for records cut before they were durable is told they were cut; one for
/// records below the cut is told they are durable.
#[test]
fn a_callback_for_cut_records_is_told_they_were_cut() {
    let disk = SimDisk::new();
    // Thread mode with a committer that is never asked before the cut: the records are
    // written, not synced, when the cut comes.
    let committer = committer(&disk, CommitMode::Thread);
    let log = open(&disk, &committer).unwrap();
    let kept = log.append_records(&[Record::new(b"kept", 0)], AppendOptions::default()).unwrap();
    let cut = log.append_records(&[Record::new(b"cut", 0)], AppendOptions::default()).unwrap();
    log.truncate_suffix(1).unwrap();
    let (tx, rx) = channel();
    let tx2 = tx.clone();
    kept.on_durable(move |result| tx.send(("kept", result)).unwrap());
    cut.on_durable(move |result| tx2.send(("cut", result)).unwrap());
    let mut got: Vec<_> = (0..2).map(|_| rx.recv_timeout(Duration::from_secs(20)).expect("called")).collect();
    got.sort_by_key(|(name, _)| *name);
    assert!(matches!(got[0], ("cut", Err(Error::Truncated { end: 2, cut: 1, .. }))), "{got:?}");
    assert!(matches!(got[1], ("kept", Ok(ref r)) if *r == (0..1)), "{got:?}");
    committer.stop();
}

/// Closing the log settles every callback: those whose records the closing sync made durable
/// are told so.
#[test]
fn closing_the_log_settles_its_callbacks() {
    let disk = SimDisk::new();
    let committer = committer(&disk, CommitMode::Thread);
    let log = open(&disk, &committer).unwrap();
    let receivers: Vec<_> = (0..50).map(|i| append_with_callback(&log, format!("r{i}").as_bytes())).collect();
    log.close().unwrap();
    for (i, rx) in receivers.iter().enumerate() {
        assert_eq!(outcome(rx, "close").unwrap(), i as u64..i as u64 + 1);
    }
    committer.stop();
}

/// A callback registered after the committer stopped is told the log is closed, not left
/// waiting for a sync that will never come.
#[test]
fn a_callback_after_the_committer_stopped_is_not_left_waiting() {
    let disk = SimDisk::new();
    let committer = committer(&disk, CommitMode::Thread);
    let log = open(&disk, &committer).unwrap();
    committer.stop();
    let rx = append_with_callback(&log, b"orphan");
    let result = outcome(&rx, "stopped committer");
    assert!(matches!(result, Err(Error::Closed(_))), "{result:?}");
}

/// Many threads append and register callbacks at once, in leader mode where no thread waits:
/// every callback is called exactly once, and the durable end covers each when it is called.
#[test]
fn concurrent_callbacks_in_leader_mode_are_all_called_once() {
    let disk = SimDisk::new();
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let committer = Committer::start_with(shared.clone(), None, CommitMode::Leader).unwrap();
    let log = Log::open(shared, log_dir(), "log", small_options(), committer.clone(), true).unwrap();
    let (tx, rx) = channel();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (log, tx) = (log.clone(), tx.clone());
            s.spawn(move || {
                for i in 0..200 {
                    let value = format!("t{t} r{i}");
                    let appended = log.append_records(&[Record::new(value.as_bytes(), 0)], AppendOptions::default());
                    let (log2, tx) = (log.clone(), tx.clone());
                    appended.unwrap().on_durable(move |result| {
                        let range = result.unwrap();
                        assert!(log2.durable_end() >= range.end, "called before durable");
                        tx.send(range.start).unwrap();
                    });
                }
            });
        }
    });
    drop(tx);
    let mut got: Vec<u64> = Vec::new();
    while let Ok(offset) = rx.recv_timeout(Duration::from_secs(20)) {
        got.push(offset);
    }
    got.sort_unstable();
    assert_eq!(got, (0..800).collect::<Vec<_>>(), "each callback once");
    committer.stop();
}
