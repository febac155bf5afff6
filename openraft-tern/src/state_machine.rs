//! A state machine that applies entries to an [`Application`] and keeps its snapshots in a
//! checksummed file.

use std::fmt::Debug;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bincode::Options as _;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, RaftTypeConfig,
    SnapshotMeta, StorageError, StoredMembership,
};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tern_segment::{Disk, OsDisk};

use crate::storage_error;

/// The application state a [`StateMachineStore`] applies entries to.
pub trait Application<C: RaftTypeConfig>: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Applies one request, committed at `log_id`, and returns the response for its client.
    fn apply(&mut self, log_id: &LogId<C::NodeId>, request: &C::D) -> C::R;
}

/// File holding the newest snapshot: magic, version, length, checksum, then the snapshot.
const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_MAGIC: [u8; 4] = *b"TSNP";
const SNAPSHOT_VERSION: u32 = 1;
const SNAPSHOT_HEADER_BYTES: usize = 20;
/// The largest snapshot file read back.
const SNAPSHOT_BYTES_MAX: u64 = 1 << 32;

/// What a snapshot's data holds: the applied state as of its last log id.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct SnapshotContent<C: RaftTypeConfig, A> {
    last_applied: Option<LogId<C::NodeId>>,
    membership: StoredMembership<C::NodeId, C::Node>,
    #[serde(bound(serialize = "A: Serialize", deserialize = "A: DeserializeOwned"))]
    app: A,
}

/// A snapshot kept on disk: its metadata and its data.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct StoredSnapshot<C: RaftTypeConfig> {
    meta: SnapshotMeta<C::NodeId, C::Node>,
    data: Vec<u8>,
}

impl<C: RaftTypeConfig> Clone for StoredSnapshot<C> {
    fn clone(&self) -> Self {
        StoredSnapshot { meta: self.meta.clone(), data: self.data.clone() }
    }
}

struct SmState<C: RaftTypeConfig, A> {
    last_applied: Option<LogId<C::NodeId>>,
    membership: StoredMembership<C::NodeId, C::Node>,
    app: A,
    snapshot: Option<StoredSnapshot<C>>,
    snapshots_built: u64,
}

struct Inner<C: RaftTypeConfig, A> {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    state: Mutex<SmState<C, A>>,
}

/// openraft's state machine ([`RaftStateMachine`]) applying entries to an [`Application`] `A`.
/// Cloning shares it (a clone is also its snapshot builder).
///
/// The applied state lives in memory; a snapshot is written durably (checksummed, replaced
/// atomically) when openraft builds or installs one, and loaded at open. openraft applies the
/// committed entries past it again after a restart.
pub struct StateMachineStore<C: RaftTypeConfig, A> {
    inner: Arc<Inner<C, A>>,
}

impl<C: RaftTypeConfig, A> Clone for StateMachineStore<C, A> {
    fn clone(&self) -> Self {
        StateMachineStore { inner: self.inner.clone() }
    }
}

impl<C: RaftTypeConfig, A> Debug for StateMachineStore<C, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

fn snapshot_error<NID: openraft::NodeId>(verb: ErrorVerb, e: &(dyn std::error::Error + 'static)) -> StorageError<NID> {
    storage_error(ErrorSubject::Snapshot(None), verb, e)
}

impl<C, A> StateMachineStore<C, A>
where
    C: RaftTypeConfig<Entry = Entry<C>, SnapshotData = Cursor<Vec<u8>>>,
    C::R: Default,
    A: Application<C>,
{
    /// Opens (or creates) the state machine in directory `dir` on the real disk, from its
    /// newest snapshot if it has one.
    ///
    /// # Errors
    /// I/O errors; a damaged snapshot file, named.
    pub fn open(dir: &Path) -> Result<Self, tern_wal::Error> {
        Self::open_with(Arc::new(OsDisk::new()), dir)
    }

    /// [`StateMachineStore::open`] on `disk`.
    ///
    /// # Errors
    /// As [`StateMachineStore::open`].
    pub fn open_with(disk: Arc<dyn Disk>, dir: &Path) -> Result<Self, tern_wal::Error> {
        if !disk.exists(dir) {
            disk.create_dir_all(dir).map_err(|e| tern_wal::Error::io(dir, e))?;
            if let Some(parent) = dir.parent() {
                disk.sync_dir(parent).map_err(|e| tern_wal::Error::io(parent, e))?;
            }
        }
        let path = dir.join(SNAPSHOT_FILE);
        let mut state = SmState {
            last_applied: None,
            membership: StoredMembership::default(),
            app: A::default(),
            snapshot: None,
            snapshots_built: 0,
        };
        if disk.exists(&path) {
            let bytes = tern_segment::disk::read_small_file(&*disk, &path, SNAPSHOT_BYTES_MAX)
                .map_err(|e| tern_wal::Error::io(&path, e))?;
            let (stored, content) = load_snapshot_file::<C, A>(&bytes)
                .map_err(|reason| tern_wal::Error::Invalid(format!("{}: {reason}", path.display())))?;
            state.last_applied = content.last_applied;
            state.membership = content.membership;
            state.app = content.app;
            state.snapshot = Some(stored);
        }
        Ok(StateMachineStore { inner: Arc::new(Inner { disk, dir: dir.to_path_buf(), state: Mutex::new(state) }) })
    }

    /// Reads the application state.
    pub fn with_app<T>(&self, f: impl FnOnce(&A) -> T) -> T {
        f(&self.inner.state.lock().app)
    }

    /// Writes `snapshot` durably as the newest one.
    fn persist(&self, snapshot: &StoredSnapshot<C>) -> Result<(), StorageError<C::NodeId>> {
        let file = encode_snapshot_file(snapshot).map_err(|e| snapshot_error(ErrorVerb::Write, &*e))?;
        let path = self.inner.dir.join(SNAPSHOT_FILE);
        tern_segment::disk::write_file_atomic(&*self.inner.disk, &path, &file, true)
            .map_err(|e| snapshot_error(ErrorVerb::Write, &e))
    }
}

/// A snapshot file holding `snapshot`: header, then the snapshot.
fn encode_snapshot_file<C: RaftTypeConfig>(snapshot: &StoredSnapshot<C>) -> bincode::Result<Vec<u8>> {
    let body = bincode::serialize(snapshot)?;
    let mut file = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + body.len());
    file.extend_from_slice(&SNAPSHOT_MAGIC);
    file.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    file.extend_from_slice(&(body.len() as u64).to_le_bytes());
    file.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    file.extend_from_slice(&body);
    Ok(file)
}

/// The snapshot in a snapshot file and the applied state in it, as [`StateMachineStore::open`]
/// loads them.
fn load_snapshot_file<C: RaftTypeConfig, A: Application<C>>(
    bytes: &[u8],
) -> Result<(StoredSnapshot<C>, SnapshotContent<C, A>), String> {
    let stored: StoredSnapshot<C> = decode_snapshot_file(bytes)?;
    let content: SnapshotContent<C, A> =
        bincode::deserialize(&stored.data).map_err(|e| format!("undecodable snapshot: {e}"))?;
    Ok((stored, content))
}

/// Loads the bytes of a snapshot file as [`StateMachineStore::open`] does, with application
/// state `A`, and returns the file that [`StateMachineStore`] writes for the snapshot loaded.
/// For the fuzz targets; not part of the API.
///
/// # Errors
/// Why the bytes do not load, as `open` reports it (without the file name).
#[doc(hidden)]
pub fn reencode_snapshot_file<C: RaftTypeConfig, A: Application<C>>(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (stored, _) = load_snapshot_file::<C, A>(bytes)?;
    encode_snapshot_file(&stored).map_err(|e| format!("unencodable snapshot: {e}"))
}

/// The snapshot in a snapshot file, every field checked.
fn decode_snapshot_file<C: RaftTypeConfig>(bytes: &[u8]) -> Result<StoredSnapshot<C>, String> {
    let header = bytes.get(..SNAPSHOT_HEADER_BYTES).ok_or("shorter than its header")?;
    if header.get(..4) != Some(&SNAPSHOT_MAGIC[..]) {
        return Err("bad magic bytes".into());
    }
    let field = |range: std::ops::Range<usize>| header.get(range).unwrap_or_default();
    let version = u32::from_le_bytes(field(4..8).try_into().unwrap_or_default());
    if version != SNAPSHOT_VERSION {
        return Err(format!("unsupported snapshot version {version}"));
    }
    let len = u64::from_le_bytes(field(8..16).try_into().unwrap_or_default());
    let stored_crc = u32::from_le_bytes(field(16..20).try_into().unwrap_or_default());
    let body = bytes.get(SNAPSHOT_HEADER_BYTES..).unwrap_or_default();
    if body.len() as u64 != len {
        return Err(format!("holds {} bytes of snapshot, its header says {len}", body.len()));
    }
    let computed = crc32fast::hash(body);
    if computed != stored_crc {
        return Err(format!("checksum mismatch (stored {stored_crc:#010x}, computed {computed:#010x})"));
    }
    // As `bincode::serialize` writes, but nothing may follow the snapshot: the length and the
    // checksum cover exactly what `persist` wrote.
    let stored: StoredSnapshot<C> = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
        .deserialize(body)
        .map_err(|e| format!("undecodable snapshot: {e}"))?;
    // bincode reads a map or set whose keys are out of order or repeated (the membership's),
    // which `persist` never writes: the body must be the snapshot's one encoding.
    if !is_encoding_of(&stored, body) {
        return Err("snapshot not as written (map keys out of order or repeated)".into());
    }
    Ok(stored)
}

/// Whether `bytes` is exactly `bincode::serialize(value)`, compared as it is encoded (no copy).
fn is_encoding_of<T: Serialize>(value: &T, bytes: &[u8]) -> bool {
    struct Rest<'a>(&'a [u8]);
    impl std::io::Write for Rest<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let rest = self.0.strip_prefix(buf).ok_or_else(|| std::io::Error::other("differs"))?;
            self.0 = rest;
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut rest = Rest(bytes);
    bincode::serialize_into(&mut rest, value).is_ok() && rest.0.is_empty()
}

impl<C, A> RaftSnapshotBuilder<C> for StateMachineStore<C, A>
where
    C: RaftTypeConfig<Entry = Entry<C>, SnapshotData = Cursor<Vec<u8>>>,
    C::R: Default,
    A: Application<C>,
{
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, StorageError<C::NodeId>> {
        let stored = {
            let mut state = self.inner.state.lock();
            let content = SnapshotContent::<C, &A> {
                last_applied: state.last_applied.clone(),
                membership: state.membership.clone(),
                app: &state.app,
            };
            let data = bincode::serialize(&content).map_err(|e| snapshot_error(ErrorVerb::Write, &*e))?;
            state.snapshots_built += 1;
            let snapshot_id = match &state.last_applied {
                Some(last) => format!("{}-{}-{}", last.leader_id, last.index, state.snapshots_built),
                None => format!("--{}", state.snapshots_built),
            };
            let meta = SnapshotMeta {
                last_log_id: state.last_applied.clone(),
                last_membership: state.membership.clone(),
                snapshot_id,
            };
            StoredSnapshot::<C> { meta, data }
        };
        self.persist(&stored)?;
        let snapshot = Snapshot { meta: stored.meta.clone(), snapshot: Box::new(Cursor::new(stored.data.clone())) };
        self.inner.state.lock().snapshot = Some(stored);
        Ok(snapshot)
    }
}

impl<C, A> RaftStateMachine<C> for StateMachineStore<C, A>
where
    C: RaftTypeConfig<Entry = Entry<C>, SnapshotData = Cursor<Vec<u8>>>,
    C::R: Default,
    A: Application<C>,
{
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<C::NodeId>>, StoredMembership<C::NodeId, C::Node>), StorageError<C::NodeId>> {
        let state = self.inner.state.lock();
        Ok((state.last_applied.clone(), state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<C::R>, StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.inner.state.lock();
        let mut replies = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id.clone());
            let reply = match &entry.payload {
                EntryPayload::Blank => C::R::default(),
                EntryPayload::Normal(request) => state.app.apply(&entry.log_id, request),
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id.clone()), membership.clone());
                    C::R::default()
                }
            };
            replies.push(reply);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<C::NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<C::NodeId, C::Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        let data = snapshot.into_inner();
        let content: SnapshotContent<C, A> =
            bincode::deserialize(&data).map_err(|e| snapshot_error(ErrorVerb::Read, &*e))?;
        let stored = StoredSnapshot::<C> { meta: meta.clone(), data };
        // Durable before it is in effect: after a crash the state machine starts from it.
        self.persist(&stored)?;
        let mut state = self.inner.state.lock();
        state.last_applied = content.last_applied;
        state.membership = content.membership;
        state.app = content.app;
        state.snapshot = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<C>>, StorageError<C::NodeId>> {
        let state = self.inner.state.lock();
        Ok(state
            .snapshot
            .as_ref()
            .map(|stored| Snapshot { meta: stored.meta.clone(), snapshot: Box::new(Cursor::new(stored.data.clone())) }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{BasicNode, Membership};

    use super::*;

    openraft::declare_raft_types!(Config: D = u64, R = u64);

    /// Applied state of no bytes.
    #[derive(Default, Serialize, Deserialize)]
    struct Nothing;

    impl Application<Config> for Nothing {
        fn apply(&mut self, _: &LogId<u64>, _: &u64) -> u64 {
            0
        }
    }

    /// The body of a snapshot file the `snapshot_file` fuzz target found: a snapshot (its first
    /// 88 bytes) and 108 bytes after it, all covered by the header's length and checksum. It
    /// loaded, and the file written for it again was 108 bytes shorter. Bytes after the
    /// snapshot are not a file this store wrote: refused.
    const BODY: [u8; 196] = [
        1, 68, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 11, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0,
        0, 68, 68, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 68, 68, 68, 0, 68, 68, 68, 68,
        68, 68, 68, 68, 68, 58, 0, 0, 255, 0, 0, 0, 0, 0, 0, 29, 255, 255,
    ];

    fn file(body: &[u8]) -> Vec<u8> {
        let mut file = Vec::new();
        file.extend_from_slice(&SNAPSHOT_MAGIC);
        file.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        file.extend_from_slice(&(body.len() as u64).to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        file.extend_from_slice(body);
        file
    }

    /// A snapshot file whose membership lists its nodes out of order (node 2, then node 1), or
    /// node 1 twice: it loaded, as the membership sorted (or with one node 1), so the file
    /// written for it again differed. Not a file this store wrote: refused.
    #[test]
    fn map_keys_out_of_order_or_repeated_are_refused() {
        let nodes = [(1, BasicNode::new("a")), (2, BasicNode::new("b"))];
        let membership = Membership::new(vec![BTreeSet::from([1, 2])], BTreeMap::from(nodes));
        let meta = SnapshotMeta {
            last_log_id: None,
            last_membership: StoredMembership::new(None, membership),
            snapshot_id: "s".into(),
        };
        let data = bincode::serialize(&SnapshotContent::<Config, Nothing> {
            last_applied: None,
            membership: StoredMembership::default(),
            app: Nothing,
        })
        .unwrap();
        let body = bincode::serialize(&StoredSnapshot::<Config> { meta, data }).unwrap();
        assert_eq!(reencode_snapshot_file::<Config, Nothing>(&file(&body)).unwrap(), file(&body));
        // Each node is its id (u64), then its address (u64 length, one byte).
        let one: Vec<u8> = [&1u64.to_le_bytes()[..], &1u64.to_le_bytes(), b"a"].concat();
        let two: Vec<u8> = [&2u64.to_le_bytes()[..], &1u64.to_le_bytes(), b"b"].concat();
        let at = body.windows(34).position(|w| w == [&one[..], &two[..]].concat()).unwrap();
        let mut swapped = body.clone();
        swapped[at..at + 34].copy_from_slice(&[&two[..], &one[..]].concat());
        let mut repeated = body.clone();
        repeated[at + 17..at + 34].copy_from_slice(&one);
        for damaged in [swapped, repeated] {
            let err = reencode_snapshot_file::<Config, Nothing>(&file(&damaged)).unwrap_err();
            assert!(err.contains("not as written"), "{err}");
        }
    }

    #[test]
    fn bytes_after_the_snapshot_are_refused() {
        let err = reencode_snapshot_file::<Config, Nothing>(&file(&BODY)).unwrap_err();
        assert!(err.contains("undecodable snapshot"), "{err}");
        // The snapshot alone loads and is written back as the same bytes.
        let alone = file(&BODY[..88]);
        assert_eq!(reencode_snapshot_file::<Config, Nothing>(&alone).unwrap(), alone);
    }
}
