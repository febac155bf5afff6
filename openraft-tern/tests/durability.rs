//! The log store on a disk that loses power: what openraft was told is flushed, the vote, and
//! a purge survive; a purge cut short by a crash is finished at the next open.

mod common;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{Config, Set};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};
use openraft_tern::{LogStore, StoreOptions};
use tern_segment::sim::{SimDisk, Tear};
use tern_segment::{Disk, DiskFile};

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

/// A call refused at any of its entries writes none of them: not the entries before the one
/// refused, and not the reset an empty log takes for a call that starts past its end.
#[tokio::test]
async fn a_call_refused_at_a_later_entry_writes_nothing() {
    let disk = SimDisk::new();
    // Entry 6 is the largest of those below that must be taken.
    let at_bound = bincode::serialized_size(&entry(1, 6)).unwrap();
    let options = StoreOptions { entry_bytes_max: at_bound, ..options() };
    let mut store = LogStore::<Config>::open_with(Arc::new(disk.clone()), Path::new(DIR), options).unwrap();
    // On the empty log: a call starting at 5 with a gap after 6.
    let message = store.blocking_append([entry(1, 5), entry(1, 6), entry(1, 8)]).await.unwrap_err().to_string();
    assert!(message.contains("ends at index 7"), "{message}");
    assert_eq!(store.get_log_state().await.unwrap().last_log_id, None);
    store.blocking_append([entry(1, 0), entry(1, 1)]).await.expect("the log still starts anywhere");
    // A gap after two good entries.
    let message = store.blocking_append([entry(1, 2), entry(1, 3), entry(1, 5)]).await.unwrap_err().to_string();
    assert!(message.contains("ends at index 4"), "{message}");
    assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 1)));
    // An entry over the size bound after two good ones.
    let mut big = entry(1, 4);
    big.payload = EntryPayload::Normal(Set { key: "big".into(), value: "x".repeat(at_bound as usize) });
    let message = store.blocking_append([entry(1, 2), entry(1, 3), big]).await.unwrap_err().to_string();
    assert!(message.contains(&format!("exceeds the {at_bound}-byte maximum")), "{message}");
    assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 1)));
    assert_eq!(ids(&all_entries(&mut store).await), [log_id(1, 0), log_id(1, 1)]);
}

/// The entries of one append call reach the segment in one write and are flushed by one
/// sync, and each stays a batch of its own (openraft may truncate after any of them).
#[tokio::test]
async fn the_entries_of_one_call_are_one_write_and_one_sync() {
    let disk = CountingDisk::new(SimDisk::new());
    let options = StoreOptions { segment_size_bytes: 1 << 20, ..options() };
    let mut store = LogStore::<Config>::open_with(Arc::new(disk.clone()), Path::new(DIR), options).unwrap();
    store.blocking_append((0..3).map(|i| entry(1, i))).await.unwrap();
    for count in [1u64, 2, 16, 64] {
        let start = store.get_log_state().await.unwrap().last_log_id.map_or(0, |id| id.index + 1);
        let (writes, syncs) = disk.segment_counts();
        store.blocking_append((start..start + count).map(|i| entry(1, i))).await.unwrap();
        let (writes_after, syncs_after) = disk.segment_counts();
        assert_eq!(writes_after - writes, 1, "segment writes for {count} entries");
        assert_eq!(syncs_after - syncs, 1, "segment syncs for {count} entries");
    }
    let end = 3 + 1 + 2 + 16 + 64;
    assert_eq!(store.log().stats().batches, end, "one batch frame per entry");
    store.truncate(log_id(1, end - 40)).await.expect("a cut inside what one call wrote");
    assert_eq!(all_entries(&mut store).await, (0..end - 40).map(|i| entry(1, i)).collect::<Vec<_>>());
}

/// A call of more entry bytes than the store hands to the log at once goes in several runs;
/// its flush is reported once all of them are synced, and they all survive a power loss.
#[tokio::test]
async fn a_call_written_in_several_runs_is_flushed_whole() {
    let disk = SimDisk::new();
    let mut store = open(&disk);
    let big = |index: u64| {
        let request = Set { key: format!("key {index}"), value: "x".repeat(3 << 20) };
        Entry { log_id: log_id(1, index), payload: EntryPayload::Normal(request) }
    };
    store.blocking_append((0..5).map(big)).await.unwrap();
    let image = disk.fork();
    image.crash(Tear::Random(7));
    drop(store);
    let mut store = open(&image);
    assert_eq!(all_entries(&mut store).await, (0..5).map(big).collect::<Vec<_>>());
}

/// A [`SimDisk`] that counts the writes and syncs of segment files.
#[derive(Debug, Clone)]
struct CountingDisk {
    inner: SimDisk,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    segment_writes: AtomicU64,
    segment_syncs: AtomicU64,
}

impl CountingDisk {
    fn new(inner: SimDisk) -> Self {
        CountingDisk { inner, counts: Arc::default() }
    }

    /// Writes and syncs of segment files so far.
    fn segment_counts(&self) -> (u64, u64) {
        (self.counts.segment_writes.load(Ordering::SeqCst), self.counts.segment_syncs.load(Ordering::SeqCst))
    }

    fn wrap(&self, path: &Path, file: Arc<dyn DiskFile>) -> Arc<dyn DiskFile> {
        let segment = path.extension().is_some_and(|e| e == tern_segment::segment::SEGMENT_EXT);
        Arc::new(CountingFile { inner: file, counts: segment.then(|| self.counts.clone()) })
    }
}

impl Disk for CountingDisk {
    fn create(&self, path: &Path, size_bytes: u64) -> io::Result<Arc<dyn DiskFile>> {
        Ok(self.wrap(path, self.inner.create(path, size_bytes)?))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
        Ok(self.wrap(path, self.inner.open(path)?))
    }
    fn rename(&self, source: &Path, target: &Path) -> io::Result<()> {
        self.inner.rename(source, target)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
}

/// A file of a [`CountingDisk`]; `counts` only for segment files.
#[derive(Debug)]
struct CountingFile {
    inner: Arc<dyn DiskFile>,
    counts: Option<Arc<Counts>>,
}

impl CountingFile {
    fn count(&self, which: impl Fn(&Counts) -> &AtomicU64) {
        if let Some(counts) = &self.counts {
            which(counts).fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl DiskFile for CountingFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn write_at(&self, pos: u64, bytes: &[u8]) -> io::Result<()> {
        self.count(|c| &c.segment_writes);
        self.inner.write_at(pos, bytes)
    }
    fn read_at(&self, pos: u64, len_bytes: u64) -> io::Result<bytes::Bytes> {
        self.inner.read_at(pos, len_bytes)
    }
    fn read_copy(&self, pos: u64, len_bytes: u64) -> io::Result<Vec<u8>> {
        self.inner.read_copy(pos, len_bytes)
    }
    fn write_direct(&self, pos: u64, bytes: &[u8]) -> io::Result<bool> {
        let direct = self.inner.write_direct(pos, bytes)?;
        if direct {
            self.count(|c| &c.segment_writes);
        }
        Ok(direct)
    }
    fn data_regions(&self, from: u64, to: u64) -> io::Result<Vec<std::ops::Range<u64>>> {
        self.inner.data_regions(from, to)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.count(|c| &c.segment_syncs);
        self.inner.sync_data()
    }
    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        self.inner.set_len(len_bytes)
    }
    fn raw_fd(&self) -> Option<i32> {
        self.inner.raw_fd()
    }
}
