//! openraft on Tern against openraft on an in-memory log store (as openraft's own examples keep
//! their log: a `BTreeMap`, flushes reported at once, nothing durable).
//!
//! - `raft_log_append/{tern,memory}/{1,64}`: the log store alone: appends of 1 or 64 entries of
//!   about 100 bytes, each waited for until reported flushed (on Tern: synced to disk).
//! - `raft_log_append/raw/{1,64}`: the raw-disk limit beside it: the bytes Tern writes for the
//!   same entries (their batch frames) written at the end of a pre-allocated file of the
//!   store's segment size, then `fdatasync`, in the same directory.
//! - `raft_client_write/{tern,memory}/{1,16}`: a one-node openraft cluster, `client_write` from 1
//!   or 16 concurrent tasks (16 let group commit serve several writes per fsync).
//!
//! The directory is `TERN_BENCH_DIR` (default: the system temporary directory); put it on the
//! disk you want measured. `benches/openraft-rocksdb` runs the same groups with openraft on
//! RocksDB added.

mod common;

use criterion::{criterion_group, criterion_main, Criterion};

fn raft_log_append(c: &mut Criterion) {
    common::raft_log_append(c, |_group, _rt, _dir, _batch| {});
}

fn raft_client_write(c: &mut Criterion) {
    common::raft_client_write(c, |_rt| Vec::new());
}

criterion_group!(benches, raft_log_append, raft_client_write);
criterion_main!(benches);
