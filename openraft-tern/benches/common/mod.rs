//! The groups of the openraft benches and what they share: `raft_log.rs` here runs them on Tern,
//! on an in-memory log store and on the raw disk; `benches/openraft-rocksdb` runs the same groups
//! with a RocksDB log store added, through the `more` argument of each group.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftLogStorageExt};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, SnapshotPolicy,
    StorageError, Vote,
};
use openraft_tern::{Application, LogStore, StateMachineStore, StoreOptions};
use serde::{Deserialize, Serialize};
use tern_segment::frame::{BATCH_HEADER_BYTES, FRAME_PREFIX_BYTES, RECORD_HEADER_BYTES};
use tern_segment::{Disk, DiskFile, OsDisk};
use tokio::runtime::Runtime;
use tokio::sync::Mutex;

openraft::declare_raft_types!(pub Config: D = Vec<u8>, R = u64);

/// Counts what it applied.
#[derive(Default, Serialize, Deserialize)]
struct Counter(u64);

impl Application<Config> for Counter {
    fn apply(&mut self, _log_id: &LogId<u64>, _request: &Vec<u8>) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// A log store in memory, as openraft's examples keep theirs.
#[derive(Clone, Default)]
struct MemLog {
    inner: Arc<Mutex<MemInner>>,
}

#[derive(Default)]
struct MemInner {
    entries: BTreeMap<u64, Entry<Config>>,
    vote: Option<Vote<u64>>,
    purged: Option<LogId<u64>>,
}

impl RaftLogReader<Config> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<Config>>, StorageError<u64>> {
        Ok(self.inner.lock().await.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<Config> for MemLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<Config>, StorageError<u64>> {
        let inner = self.inner.lock().await;
        let last = inner.entries.values().next_back().map(|e| e.log_id).or(inner.purged);
        Ok(LogState { last_purged_log_id: inner.purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.inner.lock().await.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.inner.lock().await.vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<Config>) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<Config>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.inner.lock().await;
        for entry in entries {
            inner.entries.insert(entry.log_id.index, entry);
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.inner.lock().await.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.inner.lock().await;
        inner.purged = Some(log_id);
        let kept = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = kept;
        Ok(())
    }
}

/// A network for a one-node cluster: never used.
struct NoNetwork;

impl RaftNetworkFactory<Config> for NoNetwork {
    type Network = NoNetwork;
    async fn new_client(&mut self, _target: u64, _node: &BasicNode) -> Self::Network {
        NoNetwork
    }
}

fn unreachable<E: std::error::Error>() -> RPCError<u64, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other("one-node cluster")))
}

impl RaftNetwork<Config> for NoNetwork {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<Config>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<Config>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(unreachable())
    }
}

/// A fresh directory in `TERN_BENCH_DIR` (default: the system temporary directory).
pub fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("TERN_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).expect("bench directory"),
        None => tempfile::tempdir().expect("temporary directory"),
    }
}

fn entry(index: u64) -> Entry<Config> {
    Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(vec![7; 100]) }
}

/// Appends `iters` batches of `batch` entries to `store`, each waited for until flushed.
async fn append_batches<S: RaftLogStorage<Config>>(store: &mut S, next: &mut u64, batch: u64, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        store.blocking_append((*next..*next + batch).map(entry)).await.expect("append");
        *next += batch;
    }
    start.elapsed()
}

/// Appends to pre-allocated files of the store's segment size, as a segment is written.
struct RawLog {
    disk: OsDisk,
    dir: std::path::PathBuf,
    file: Arc<dyn DiskFile>,
    files_count: u64,
    pos: u64,
}

impl RawLog {
    const FILE_BYTES: u64 = 4 << 20;

    fn new(dir: &std::path::Path) -> RawLog {
        assert_eq!(Self::FILE_BYTES, StoreOptions::default().segment_size_bytes, "as the store's segments");
        let disk = OsDisk::new();
        let file = disk.create(&dir.join("raw-0"), Self::FILE_BYTES).expect("raw file");
        RawLog { disk, dir: dir.to_path_buf(), file, files_count: 1, pos: 0 }
    }

    /// Writes `bytes` after the last write (in a new file when they do not fit), then syncs.
    fn write_and_sync(&mut self, bytes: &[u8]) {
        if self.pos + bytes.len() as u64 > Self::FILE_BYTES {
            let path = self.dir.join(format!("raw-{}", self.files_count));
            self.file = self.disk.create(&path, Self::FILE_BYTES).expect("raw file");
            self.files_count += 1;
            self.pos = 0;
        }
        self.file.write_at(self.pos, bytes).expect("raw write");
        self.file.sync_data().expect("raw fdatasync");
        self.pos += bytes.len() as u64;
    }
}

/// Measures appends of `batch` entries to `store` as `name` in `group`, each waited for until
/// flushed.
pub fn bench_append<S: RaftLogStorage<Config>>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    mut store: S,
    batch: u64,
) {
    let mut next = 0;
    group.bench_function(BenchmarkId::new(name, batch), |b| {
        b.iter_custom(|iters| rt.block_on(append_batches(&mut store, &mut next, batch, iters)))
    });
}

/// The `raft_log_append` group; for each batch size, `more(group, runtime, directory, batch)`
/// adds the benches of other stores, after Tern's, the raw disk's and the in-memory store's, in
/// the same directory.
pub fn raft_log_append(
    c: &mut Criterion,
    mut more: impl FnMut(&mut BenchmarkGroup<'_, WallTime>, &Runtime, &Path, u64),
) {
    let rt = Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("raft_log_append");
    group.measurement_time(Duration::from_secs(5));
    for batch in [1u64, 64] {
        group.throughput(Throughput::Elements(batch));
        let dir = bench_dir();
        let tern = LogStore::<Config>::open(&dir.path().join("raft")).expect("open");
        bench_append(&mut group, &rt, "tern", tern, batch);
        let frame_bytes = FRAME_PREFIX_BYTES + BATCH_HEADER_BYTES + RECORD_HEADER_BYTES;
        let entry_bytes = bincode::serialized_size(&entry(0)).expect("entry size") as usize;
        let bytes = vec![7u8; (frame_bytes + entry_bytes) * batch as usize];
        let mut raw = RawLog::new(dir.path());
        group.bench_function(BenchmarkId::new("raw", batch), |b| b.iter(|| raw.write_and_sync(&bytes)));
        bench_append(&mut group, &rt, "memory", MemLog::default(), batch);
        more(&mut group, &rt, dir.path(), batch);
    }
    group.finish();
}

/// A started one-node Raft on `log`, its leader elected.
/// Its state machine is Tern's, in `dir`, whatever the log store.
pub async fn one_node<LS: RaftLogStorage<Config>>(log: LS, dir: &Path) -> openraft::Raft<Config> {
    let config = openraft::Config {
        snapshot_policy: SnapshotPolicy::Never,
        heartbeat_interval: 100,
        election_timeout_min: 200,
        election_timeout_max: 300,
        ..Default::default()
    };
    let config = Arc::new(config.validate().expect("config"));
    let sm = StateMachineStore::<Config, Counter>::open(&dir.join("sm")).expect("state machine");
    let raft = openraft::Raft::new(1, config, NoNetwork, log, sm).await.expect("raft");
    raft.initialize(BTreeMap::from([(1, BasicNode::default())])).await.expect("initialize");
    raft.wait(Some(Duration::from_secs(10))).current_leader(1, "leader").await.expect("leader");
    raft
}

/// `iters` writes from `tasks` concurrent tasks.
async fn client_writes(raft: &openraft::Raft<Config>, tasks: u64, iters: u64) -> Duration {
    let start = Instant::now();
    let per_task = iters.div_ceil(tasks);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let raft = raft.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..per_task {
                raft.client_write(vec![7; 100]).await.expect("write");
            }
        }));
    }
    for handle in handles {
        handle.await.expect("task");
    }
    start.elapsed()
}

/// The `raft_client_write` group; `more(runtime)` starts one-node clusters on other log stores,
/// each named and with the directory it keeps until the end, measured after Tern's and the
/// in-memory store's.
pub fn raft_client_write(
    c: &mut Criterion,
    more: impl FnOnce(&Runtime) -> Vec<(&'static str, openraft::Raft<Config>, tempfile::TempDir)>,
) {
    let rt = Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("raft_client_write");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    let dir = bench_dir();
    let tern = rt.block_on(one_node(LogStore::<Config>::open(&dir.path().join("raft")).expect("open"), dir.path()));
    let memory_dir = bench_dir();
    let memory = rt.block_on(one_node(MemLog::default(), memory_dir.path()));
    let mut rafts = vec![("tern", tern, dir), ("memory", memory, memory_dir)];
    rafts.extend(more(&rt));
    for tasks in [1u64, 16] {
        for (name, raft, _) in &rafts {
            group.bench_function(BenchmarkId::new(*name, tasks), |b| {
                b.iter_custom(|iters| rt.block_on(client_writes(raft, tasks, iters)))
            });
        }
    }
    group.finish();
    rt.block_on(async {
        for (_, raft, _) in rafts {
            let _ = raft.shutdown().await;
        }
    });
}
