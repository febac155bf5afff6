//! openraft's own storage test suite, run against the Tern log store and state machine.

mod common;

use common::{Config, Kv};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use openraft_tern::{LogStore, StateMachineStore};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<Config, LogStore<Config>, StateMachineStore<Config, Kv>, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore<Config>, StateMachineStore<Config, Kv>), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = LogStore::open(&dir.path().join("raft")).expect("open the log store");
        let sm = StateMachineStore::open(&dir.path().join("sm")).expect("open the state machine");
        Ok((dir, log, sm))
    }
}

/// Every test of `openraft::testing::Suite::test_all` (openraft 0.9.25: 35 of them, each on a
/// fresh store in its own directory).
#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).expect("openraft storage suite");
}
