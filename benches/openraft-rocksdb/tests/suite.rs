//! openraft's own storage test suite, run against the RocksDB log store (with openraft-tern's
//! state machine, the one the bench runs beside it): the store measured is a correct one.

#[path = "../../../openraft-tern/tests/common/mod.rs"]
mod common;

use common::{Config, Kv};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use openraft_tern::StateMachineStore;
use tempfile::TempDir;
use tern_bench_openraft_rocksdb::RocksLog;

struct Builder;

impl StoreBuilder<Config, RocksLog<Config>, StateMachineStore<Config, Kv>, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, RocksLog<Config>, StateMachineStore<Config, Kv>), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = RocksLog::open(&dir.path().join("rocksdb")).expect("open the RocksDB log store");
        let sm = StateMachineStore::open(&dir.path().join("sm")).expect("open the state machine");
        Ok((dir, log, sm))
    }
}

/// Every test of `openraft::testing::Suite::test_all`, each on a fresh database.
#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).expect("openraft storage suite");
}
