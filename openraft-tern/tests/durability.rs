//! The log store on a disk that loses power: what openraft was told is flushed, the vote, and
//! a purge survive; a purge cut short by a crash is finished at the next open.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{Config, Set};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};
use openraft_tern::{LogStore, StoreOptions};
use tern_segment::sim::{SimDisk, Tear};

const DIR: &str = "/data/raft";

/// Small segments, so that purges delete files and appends roll.
fn options() -> StoreOptions {
    StoreOptions { segment_size_bytes: 4096, ..StoreOptions::default() }
}

fn open(disk: &SimDisk) -> LogStore<Config> {
    LogStore::open_with(Arc::new(disk.clone()), Path::new(DIR), options()).expect("the store opens")
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry<Config> {
    let request = Set { key: format!("key {index}"), value: "v".repeat((index as usize * 31) % 200) };
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(request) }
}

async fn all_entries(store: &mut LogStore<Config>) -> Vec<Entry<Config>> {
    store.try_get_log_entries(0..).await.expect("readable")
}

fn ids(entries: &[Entry<Config>]) -> Vec<LogId<u64>> {
    entries.iter().map(|e| e.log_id).collect()
}

/// Entries whose append openraft was told is flushed, and the saved vote, are all there after
/// a power loss, whatever the crash keeps of the pages written since.
#[tokio::test]
async fn flushed_entries_and_the_vote_survive_a_power_loss() {
    for seed in 0..24u64 {
        let disk = SimDisk::new();
        let mut store = open(&disk);
        store.save_vote(&Vote::new(3, 1)).await.unwrap();
        let mut index = 0;
        for batch in 0..12u64 {
            let count = 1 + (seed + batch) % 5;
            store.blocking_append((index..index + count).map(|i| entry(3, i))).await.unwrap();
            index += count;
        }
        // Power fails now, the store still open (a clean close would sync everything).
        let image = disk.fork();
        image.crash(Tear::Random(seed));
        drop(store);
        let mut store = open(&image);
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(3, 1)), "seed {seed}");
        let got = all_entries(&mut store).await;
        let want: Vec<_> = (0..index).map(|i| entry(3, i)).collect();
        assert_eq!(got, want, "seed {seed}");
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(3, index - 1)), "seed {seed}");
    }
}

/// A purge with power lost at each of its sync points: at the next open the purged entries are
/// never returned (the purge is finished) or all there (it never took effect), and the entries
/// past it are intact either way; once the purge returned it always took effect. Both a purge
/// inside the log and one past its end (which empties it) are tried.
#[tokio::test]
async fn a_purge_cut_short_by_a_power_loss_is_finished_or_never_happened() {
    for purge_to in [20u64, 70] {
        for crash_at in 0.. {
            let disk = SimDisk::new();
            let mut store = open(&disk);
            store.blocking_append((0..50).map(|i| entry(1, i))).await.unwrap();
            disk.crash_at_sync(disk.sync_points() + crash_at);
            let returned = store.purge(log_id(1, purge_to)).await.is_ok();
            drop(store);
            disk.crash(Tear::Random(crash_at));
            let context = format!("purge to {purge_to}, power loss at sync point {crash_at}");
            let mut store = open(&disk);
            let state = store.get_log_state().await.unwrap();
            let got = ids(&all_entries(&mut store).await);
            if state.last_purged_log_id.is_some() {
                assert_eq!(state.last_purged_log_id, Some(log_id(1, purge_to)), "{context}");
                let want: Vec<_> = (purge_to + 1..50).map(|i| log_id(1, i)).collect();
                assert_eq!(got, want, "{context}");
                let last = if purge_to >= 50 { log_id(1, purge_to) } else { log_id(1, 49) };
                assert_eq!(state.last_log_id, Some(last), "{context}");
                if purge_to >= 50 {
                    // The next entry goes right after the purged one, and is read back there,
                    // also after a restart.
                    store.blocking_append([entry(2, purge_to + 1)]).await.unwrap();
                    let want = vec![log_id(2, purge_to + 1)];
                    assert_eq!(ids(&all_entries(&mut store).await), want, "{context}");
                    drop(store);
                    let mut store = open(&disk);
                    assert_eq!(ids(&all_entries(&mut store).await), want, "{context}, reopened");
                }
            } else {
                assert!(!returned, "{context}: the purge returned but is gone");
                assert_eq!(got, (0..50).map(|i| log_id(1, i)).collect::<Vec<_>>(), "{context}");
            }
            if returned {
                break;
            }
        }
    }
}

/// openraft truncates after any entry, also inside what one append call wrote; the cut holds
/// across a restart, and the log goes on from it with entries of a new term.
#[tokio::test]
async fn a_truncation_after_any_entry_holds_across_a_restart() {
    for cut in [0u64, 1, 4, 9] {
        let disk = SimDisk::new();
        let mut store = open(&disk);
        store.blocking_append((0..10).map(|i| entry(1, i))).await.unwrap();
        store.truncate(log_id(1, cut)).await.unwrap();
        drop(store);
        disk.crash(Tear::None);
        let mut store = open(&disk);
        assert_eq!(
            ids(&all_entries(&mut store).await),
            (0..cut).map(|i| log_id(1, i)).collect::<Vec<_>>(),
            "cut {cut}"
        );
        store.blocking_append((cut..cut + 3).map(|i| entry(2, i))).await.unwrap();
        let got = all_entries(&mut store).await;
        assert_eq!(got.len() as u64, cut + 3);
        assert_eq!(got.last().map(|e| e.log_id), Some(log_id(2, cut + 2)));
    }
}

/// An entry that does not continue the log is refused with its log id and the log's end;
/// nothing is written.
#[tokio::test]
async fn an_entry_that_does_not_continue_the_log_is_refused() {
    let disk = SimDisk::new();
    let mut store = open(&disk);
    store.blocking_append((0..3).map(|i| entry(1, i))).await.unwrap();
    let err = store.blocking_append([entry(1, 5)]).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("ends at index 3"), "{message}");
    assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 2)));
}

/// An entry over `entry_bytes_max` is refused with its size and the bound, one of exactly the
/// bound is taken, and nothing of the refused one is written.
#[tokio::test]
async fn an_entry_over_the_size_bound_is_refused_and_one_at_the_bound_taken() {
    let disk = SimDisk::new();
    let at_bound = bincode::serialized_size(&entry(1, 0)).unwrap();
    let options = StoreOptions { entry_bytes_max: at_bound, ..options() };
    let mut store = LogStore::<Config>::open_with(Arc::new(disk.clone()), Path::new(DIR), options).unwrap();
    store.blocking_append([entry(1, 0)]).await.expect("an entry of exactly the bound");
    let mut big = entry(1, 1);
    big.payload = EntryPayload::Normal(Set { key: "big".into(), value: "x".repeat(at_bound as usize) });
    let message = store.blocking_append([big]).await.unwrap_err().to_string();
    assert!(message.contains(&format!("exceeds the {at_bound}-byte maximum")), "{message}");
    assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 0)));
}
