//! The shared journal: small synced appends of many logs are durable after one journal sync,
//! and come back after a power loss although their segments were never synced.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::small_options;
use tern_segment::sim::{SimDisk, Tear};
use tern_segment::Disk;
use tern_wal::{Committer, Durability, JournalOptions, Log, Visibility};

const LOGS: [&str; 3] = ["orders", "events", "audit"];

fn log_dir(name: &str) -> PathBuf {
    Path::new("/data/logs").join(name)
}

fn journal_options() -> JournalOptions {
    // The smallest journal, so that workloads fill it and switch files.
    JournalOptions {
        dir: PathBuf::from("/data/journal"),
        file_bytes: tern_wal::journal::JOURNAL_HEADER_BYTES + (64 << 10),
    }
}

/// Opens the committer and every log as the engine does: replay first, then a new journal file.
fn open_all(disk: &SimDisk) -> tern_wal::Result<(Committer, BTreeMap<&'static str, Log>)> {
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let committer = Committer::start_with_journal(shared.clone(), &journal_options())?;
    let mut logs = BTreeMap::new();
    for name in LOGS {
        let log = Log::open(shared.clone(), &log_dir(name), name, small_options(), committer.clone(), true)?;
        logs.insert(name, log);
    }
    assert!(committer.replay_names().is_empty(), "every log with journal entries was opened");
    committer.finish_replay()?;
    Ok((committer, logs))
}

fn contents(log: &Log) -> Vec<(u64, Vec<u8>)> {
    log.read(log.start_offset(), Visibility::Written)
        .unwrap()
        .map(|r| r.map(|r| (r.offset, r.value.to_vec())))
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn acked_appends_of_many_logs_survive_power_loss_through_the_journal() {
    let disk = SimDisk::new();
    let (committer, logs) = open_all(&disk).unwrap();
    let mut acked: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = logs
            .iter()
            .map(|(name, log)| {
                s.spawn(move || {
                    (0..40)
                        .map(|i| {
                            let v = format!("{name}-{i}").into_bytes();
                            log.append(&[&v], Durability::Local).unwrap();
                            v
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for ((name, _), h) in logs.iter().zip(handles) {
            acked.insert(name, h.join().unwrap());
        }
    });
    let stats = committer.stats();
    assert!(stats.journal_blocks > 0, "{stats:?}");
    drop(logs);
    disk.crash(Tear::None); // the segments were never synced; only the journal was
    committer.stop();
    let (committer, logs) = open_all(&disk).unwrap();
    let mut replayed = 0;
    for (name, log) in &logs {
        let got: Vec<Vec<u8>> = contents(log).into_iter().map(|(_, v)| v).collect();
        assert_eq!(&got, &acked[name], "{name}");
        replayed += log.recovered().replayed_batches;
    }
    assert!(replayed > 0, "the journal, not the segments, kept the records");
    committer.stop();
}

#[test]
fn records_cut_by_a_suffix_truncation_never_come_back_from_the_journal() {
    let disk = SimDisk::new();
    let (committer, logs) = open_all(&disk).unwrap();
    let log = &logs["orders"];
    for i in 0..10 {
        log.append(&[format!("old-{i}").as_bytes()], Durability::Local).unwrap();
    }
    log.truncate_suffix(4).unwrap();
    log.append(&[b"new-4"], Durability::Local).unwrap();
    drop(logs);
    disk.crash(Tear::None);
    committer.stop();
    let (committer, logs) = open_all(&disk).unwrap();
    let got: Vec<Vec<u8>> = contents(&logs["orders"]).into_iter().map(|(_, v)| v).collect();
    let want: Vec<Vec<u8>> = (0..4).map(|i| format!("old-{i}").into_bytes()).chain([b"new-4".to_vec()]).collect();
    assert_eq!(got, want);
    committer.stop();
}

/// One scripted run on three logs; returns, per log, the values sent at each offset in the
/// current timeline and the acknowledged end, up to the first failure.
struct Run {
    sent: BTreeMap<&'static str, Vec<Vec<u8>>>,
    acked_end: BTreeMap<&'static str, u64>,
    journal_switches: u64,
}

fn workload(disk: &SimDisk) -> Run {
    let mut run = Run { sent: BTreeMap::new(), acked_end: BTreeMap::new(), journal_switches: 0 };
    let Ok((committer, logs)) = open_all(disk) else { return run };
    'steps: for step in 0..60usize {
        let name = LOGS[step % LOGS.len()];
        let log = &logs[name];
        let sent = run.sent.entry(name).or_default();
        if step == 31 {
            // Cut the orders log back to a batch boundary.
            let to = (sent.len() as u64 / 2) & !1;
            let boundary = (0..=to).rev().find(|o| o % 2 == 0).unwrap_or(0);
            // Once asked, a truncation may complete at recovery even if it returned an error.
            let acked = run.acked_end.entry(name).or_default();
            *acked = (*acked).min(boundary);
            if log.truncate_suffix(boundary).is_err() {
                break 'steps;
            }
            sent.truncate(boundary as usize);
            continue;
        }
        let values: Vec<Vec<u8>> =
            (0..2).map(|i| format!("{name}-{step}-{i}-{}", "x".repeat(step * 53 % 1500)).into_bytes()).collect();
        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let durability = if step % 4 == 1 { Durability::None } else { Durability::Local };
        sent.extend(values.iter().cloned());
        match log.append(&refs, durability) {
            Ok(offsets) => {
                if durability == Durability::Local {
                    run.acked_end.insert(name, offsets.end);
                }
            }
            Err(_) => break,
        }
    }
    drop(logs);
    committer.stop();
    run.journal_switches = committer.stats().journal_switches;
    run
}

#[test]
fn power_loss_at_every_sync_point_with_the_journal_loses_no_acked_record() {
    let dry = SimDisk::new();
    let switches = workload(&dry).journal_switches;
    // finish_replay, stop, and at least one switch because the journal was full.
    assert!(switches >= 3, "the workload must fill the journal: {switches} switches");
    let sync_points = dry.sync_points();
    assert!(sync_points > 20, "the workload syncs: {sync_points}");
    let mut checked = 0;
    for crash_at in 0..=sync_points {
        for tear in [Tear::None, Tear::Prefix(1), Tear::Half, Tear::AllButOne] {
            let disk = SimDisk::new();
            disk.crash_at_sync(crash_at);
            let run = workload(&disk);
            disk.crash(tear);
            let (committer, logs) = open_all(&disk)
                .unwrap_or_else(|e| panic!("recovery after a crash at sync point {crash_at} ({tear:?}): {e}"));
            for (name, log) in &logs {
                let got = contents(log);
                let sent = run.sent.get(name).cloned().unwrap_or_default();
                let acked = run.acked_end.get(name).copied().unwrap_or(0);
                assert!(
                    got.len() as u64 >= acked,
                    "crash at {crash_at} ({tear:?}): {name} lost acked records: {} < {acked}",
                    got.len()
                );
                for (offset, value) in &got {
                    assert_eq!(
                        sent.get(*offset as usize),
                        Some(value),
                        "crash at {crash_at} ({tear:?}): {name} offset {offset} holds bytes never sent there"
                    );
                }
            }
            drop(logs);
            committer.stop();
            checked += 1;
        }
    }
    eprintln!("{checked} crash images checked over {sync_points} sync points");
}
