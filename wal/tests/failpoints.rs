//! Races made to happen on purpose with named pauses inside the log (the `failpoints` feature).
//! Pause points are process-wide: the tests take turns.

mod common;

use std::sync::Arc;

use common::*;
use tern_segment::sim::FaultOp;
use tern_segment::sim::{SimDisk, Tear};
use tern_segment::Disk;
use tern_wal::{AppendOptions, CommitMode, Committer, Durability, Error, Log, Record, Visibility};

/// A log on a fresh simulated disk with a committer in leader mode.
fn leader_mode_log() -> (SimDisk, Committer, Log) {
    let disk = SimDisk::new();
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let committer = Committer::start_with(shared.clone(), None, CommitMode::Leader).unwrap();
    let log = Log::open(shared, log_dir(), "log", small_options(), committer.clone(), true).unwrap();
    (disk, committer, log)
}

/// Pause points are process-wide: one test at a time uses them.
static TURN: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// A group sync completes (its records are durable) and, before it writes the checkpoint slot
/// claiming them, a suffix truncation cuts those records. The late slot must not make the log
/// refuse to open ("486 bytes missing" once): it belongs to the generation before the cut.
#[test]
fn a_checkpoint_written_after_a_truncation_for_a_sync_before_it_is_never_trusted() {
    let _turn = TURN.lock();
    let disk = SimDisk::new();
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    // Leader mode: a synced append returns only once its group completed, checkpoint included,
    // so the pause below catches the late append's group and no earlier one.
    let committer = Committer::start_with(shared.clone(), None, CommitMode::Leader).unwrap();
    let log = Log::open(shared.clone(), log_dir(), "log", small_options(), committer.clone(), true).unwrap();
    for i in 0..10 {
        log.append(&[&value_of(&format!("record {i}:"), 40)], Durability::Local).unwrap();
    }
    tern_wal::failpoints::pause("complete_sync::before_checkpoint");
    let late = log
        .append_records(&[Record::new(&value_of("late:", 300), tern_wal::now_ms())], AppendOptions::default())
        .unwrap();
    // The waiter leads its group: the sync of offset 10 completes, raises the durable end, and
    // pauses before the checkpoint slot.
    let waiter = std::thread::spawn(move || late.wait(Durability::Local));
    while log.durable_end() < 11 {
        std::thread::yield_now();
    }
    log.truncate_suffix(5).unwrap();
    tern_wal::failpoints::resume("complete_sync::before_checkpoint");
    let _ = waiter.join().unwrap();
    committer.stop();
    drop(log);
    // The process dies; the page cache (and the late slot in it) survives.
    disk.kill();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).expect("the log opens after a late checkpoint slot");
    let got = contents(&log, Visibility::Written);
    assert_eq!(got.len(), 5, "{got:?}");
    for (i, (offset, value)) in got.iter().enumerate() {
        assert_eq!((*offset, value), (i as u64, &value_of(&format!("record {i}:"), 40)));
    }
    committer.stop();
}

/// A group sync finishes and, before it raises the durable end, a suffix truncation cuts the
/// records it synced. The late completion must not raise the durable end past the cut: new
/// records written there would be acknowledged without a sync, and lost in a power loss.
#[test]
fn a_sync_that_completes_after_a_truncation_never_raises_the_durable_end_past_the_cut() {
    let _turn = TURN.lock();
    const POINT: &str = "complete_sync::before_raise";
    let (disk, committer, log) = leader_mode_log();
    for i in 0..5 {
        log.append(&[&value_of(&format!("record {i}:"), 40)], Durability::Local).unwrap();
    }
    tern_wal::failpoints::pause(POINT);
    let late = log
        .append_records(&[Record::new(&value_of("late:", 300), tern_wal::now_ms())], AppendOptions::default())
        .unwrap();
    let waiter = std::thread::spawn(move || late.wait(Durability::Local));
    while tern_wal::failpoints::waiting(POINT) == 0 {
        std::thread::yield_now();
    }
    log.truncate_suffix(5).unwrap();
    tern_wal::failpoints::resume(POINT);
    let late_result = waiter.join().unwrap();
    assert!(matches!(late_result, Err(tern_wal::Error::Truncated { .. })), "{late_result:?}");
    assert!(
        log.durable_end() <= log.written_end(),
        "durable end {} past the end {}",
        log.durable_end(),
        log.written_end()
    );
    let new_value = value_of("new:", 40);
    log.append(&[&new_value], Durability::Local).unwrap();
    disk.crash(Tear::None);
    drop(log);
    committer.stop();
    let committer = sim_committer(&disk);
    let log = open(&disk, &committer).unwrap();
    let got = contents(&log, Visibility::Written);
    assert_eq!(got.last(), Some(&(5, new_value)), "the acknowledged record after the cut");
    committer.stop();
}

/// What happens to a log while a waiter stands between its last check and parking.
#[derive(Debug, Clone, Copy)]
enum Meanwhile {
    /// The committer's sync of its records completes.
    Synced,
    /// That sync fails, fencing the log.
    Fenced,
    /// A suffix truncation cuts its records.
    Cut,
}

/// A waiter checks the log, then takes the waiters' lock to park. Whatever happens in between
/// (its records become durable, the log is fenced, or they are cut) wakes nobody, since the
/// waiter is not in the list yet: it must see it under the lock and not park, or it waits
/// forever.
#[test]
fn a_waiter_never_parks_after_what_it_waits_for_happened_just_before() {
    const PARK: &str = "wait_durable::before_park";
    const RAISE: &str = "complete_sync::before_raise";
    let _turn = TURN.lock();
    for meanwhile in [Meanwhile::Synced, Meanwhile::Fenced, Meanwhile::Cut] {
        let disk = SimDisk::new();
        let shared: Arc<dyn Disk> = Arc::new(disk.clone());
        let committer = Committer::start_with(shared.clone(), None, CommitMode::Thread).unwrap();
        let log = Log::open(shared, log_dir(), "log", small_options(), committer.clone(), true).unwrap();
        log.append(&[b"kept"], Durability::Local).unwrap();
        tern_wal::failpoints::pause(PARK);
        tern_wal::failpoints::pause(RAISE);
        if matches!(meanwhile, Meanwhile::Fenced) {
            disk.fail_next(FaultOp::Sync, libc::EIO);
        }
        let late = log.append_records(&[Record::new(b"late", tern_wal::now_ms())], AppendOptions::default()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(late.wait(Durability::Local));
        });
        // The waiter asked for its sync and stands before parking; the committer did the sync
        // and stands before reporting it.
        while tern_wal::failpoints::waiting(PARK) == 0 || tern_wal::failpoints::waiting(RAISE) == 0 {
            std::thread::yield_now();
        }
        match meanwhile {
            Meanwhile::Synced | Meanwhile::Fenced => {
                tern_wal::failpoints::resume(RAISE);
                let done =
                    || if matches!(meanwhile, Meanwhile::Fenced) { log.is_fenced() } else { log.durable_end() >= 2 };
                while !done() {
                    std::thread::yield_now();
                }
            }
            Meanwhile::Cut => {
                log.truncate_suffix(1).unwrap();
            }
        }
        tern_wal::failpoints::resume(PARK);
        tern_wal::failpoints::resume(RAISE);
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{meanwhile:?}: the waiter parked and was never woken"));
        match meanwhile {
            Meanwhile::Synced => assert_eq!(result.unwrap(), 1..2),
            Meanwhile::Fenced => assert!(matches!(result, Err(Error::Fenced { .. })), "{result:?}"),
            Meanwhile::Cut => assert!(matches!(result, Err(Error::Truncated { .. })), "{result:?}"),
        }
        committer.stop();
    }
}

/// Leader mode: a durability callback registered while another writer leads a group, with no
/// thread waiting to lead the next one, is still called: the leader goes on to commit the
/// callback's group instead of handing over to nobody.
#[test]
fn a_callback_queued_while_another_writer_leads_is_committed_by_that_leader() {
    let _turn = TURN.lock();
    const POINT: &str = "complete_sync::before_raise";
    let (_disk, committer, log) = leader_mode_log();
    tern_wal::failpoints::pause(POINT);
    let first = log.append_records(&[Record::new(b"first", 0)], AppendOptions::default()).unwrap();
    let leader = std::thread::spawn(move || first.wait(Durability::Local));
    while tern_wal::failpoints::waiting(POINT) == 0 {
        std::thread::yield_now();
    }
    // The writer leads a group and is inside it: this callback's sync queues behind it.
    let (tx, rx) = std::sync::mpsc::channel();
    let second = log.append_records(&[Record::new(b"second", 0)], AppendOptions::default()).unwrap();
    second.on_durable(move |result| tx.send(result).unwrap());
    tern_wal::failpoints::resume(POINT);
    assert_eq!(leader.join().unwrap().unwrap(), 0..1);
    let result = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the callback was never called");
    assert_eq!(result.unwrap(), 1..2);
    committer.stop();
}
