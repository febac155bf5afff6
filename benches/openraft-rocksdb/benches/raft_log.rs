//! openraft on Tern, on RocksDB and on an in-memory log store, beside the raw disk, in one
//! criterion run: the groups of openraft-tern's `raft_log` bench (its `benches/common`, shared
//! here) with RocksDB ([`RocksLog`]) added to each.
//!
//! - `raft_log_append/{tern,raw,memory,rocksdb}/{1,64}`: appends of 1 or 64 entries of about 100
//!   bytes, each waited for until reported flushed; on RocksDB, one `WriteBatch` per append
//!   written with `sync = true`. All in the same directory.
//! - `raft_client_write/{tern,memory,rocksdb}/{1,16}`: a one-node openraft cluster,
//!   `client_write` from 1 or 16 concurrent tasks. The state machine is openraft-tern's in
//!   every case: only the log store differs.
//!
//! The directory is `TERN_BENCH_DIR` (default: the system temporary directory). `run.sh` beside
//! this crate's manifest installs RocksDB and runs this bench.

#[path = "../../../openraft-tern/benches/common/mod.rs"]
mod common;

use common::{bench_append, bench_dir, one_node, Config};
use criterion::{criterion_group, criterion_main, Criterion};
use tern_bench_openraft_rocksdb::RocksLog;

fn raft_log_append(c: &mut Criterion) {
    common::raft_log_append(c, |group, rt, dir, batch| {
        let rocksdb = RocksLog::<Config>::open(&dir.join("rocksdb")).expect("open RocksDB");
        bench_append(group, rt, "rocksdb", rocksdb, batch);
    });
}

fn raft_client_write(c: &mut Criterion) {
    common::raft_client_write(c, |rt| {
        let dir = bench_dir();
        let rocksdb = RocksLog::<Config>::open(&dir.path().join("rocksdb")).expect("open RocksDB");
        let raft = rt.block_on(one_node(rocksdb, dir.path()));
        vec![("rocksdb", raft, dir)]
    });
}

criterion_group!(benches, raft_log_append, raft_client_write);
criterion_main!(benches);
