//! Model-based test: random appends, reads, reopens, power losses and truncations at either
//! end, with the log compared after every step against a model of what its user was told.
//!
//! The model is the list of records by offset, the first batch offsets (the only places a
//! suffix cut is allowed), the log start, and the durable end the user was promised: the end
//! of the last append acknowledged with `Durability::Local` (a sync covers everything written
//! before it), or of a clean close. After a power loss, everything promised must be back at
//! the same offsets with the same bytes; later records may survive, but only as a prefix of
//! what was appended.
//!
//! `PROPTEST_CASES` raises the case count (default 48).

mod common;

use std::collections::BTreeSet;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tern_segment::sim::{SimDisk, Tear};
use tern_wal::{Committer, Durability, Error, Log, Visibility};

const CASES_DEFAULT: u32 = 48;

#[derive(Debug, Clone)]
enum Op {
    /// One batch; each record is (length, fill), fill 0 meaning all zero bytes.
    Append { records: Vec<(usize, u8)>, local: bool },
    /// Read from `start + pick % (end - start + 1)`.
    Read { pick: u32 },
    /// Clean close, then open.
    Reopen,
    /// Power loss with `tear`, then open.
    Crash { tear: Tear },
    /// `truncate_prefix(pick % (end + 1))`.
    TruncatePrefix { pick: u32 },
    /// `truncate_suffix` at a batch boundary (or, with `inside`, at an offset that may be
    /// inside a batch, which must be refused and change nothing).
    TruncateSuffix { pick: u32, inside: bool },
}

fn op() -> impl Strategy<Value = Op> {
    let record = (0usize..300, any::<u8>());
    let tear =
        prop_oneof![Just(Tear::None), (1usize..200).prop_map(Tear::Prefix), Just(Tear::Half), Just(Tear::AllButOne)];
    prop_oneof![
        24 => (proptest::collection::vec(record, 1..4), any::<bool>())
            .prop_map(|(records, local)| Op::Append { records, local }),
        3 => any::<u32>().prop_map(|pick| Op::Read { pick }),
        1 => Just(Op::Reopen),
        2 => tear.prop_map(|tear| Op::Crash { tear }),
        1 => any::<u32>().prop_map(|pick| Op::TruncatePrefix { pick }),
        1 => (any::<u32>(), proptest::bool::weighted(0.3))
            .prop_map(|(pick, inside)| Op::TruncateSuffix { pick, inside }),
    ]
}

#[derive(Debug, Default)]
struct Model {
    /// Every record ever kept, by offset (those below `start` are only placeholders).
    records: Vec<Vec<u8>>,
    /// First offset of every batch.
    batch_starts: BTreeSet<u64>,
    start: u64,
    /// Records below this were promised to survive power loss.
    durable: u64,
}

impl Model {
    fn end(&self) -> u64 {
        self.records.len() as u64
    }

    fn is_boundary(&self, offset: u64) -> bool {
        offset == self.start || offset == self.end() || self.batch_starts.contains(&offset)
    }

    fn cut(&mut self, end: u64) {
        self.records.truncate(end as usize);
        self.batch_starts.retain(|b| *b < end);
        self.durable = self.durable.min(end);
    }

    fn slice(&self, from: u64, to: u64) -> Vec<(u64, Vec<u8>)> {
        (from..to).map(|o| (o, self.records[o as usize].clone())).collect()
    }
}

struct Harness {
    disk: SimDisk,
    committer: Committer,
    log: Log,
    model: Model,
    appends: u64,
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(TestCaseError::fail(format!($($fmt)+)));
        }
    };
}

impl Harness {
    fn new() -> Harness {
        let disk = SimDisk::new();
        let committer = sim_committer(&disk);
        let log = open(&disk, &committer).expect("create");
        Harness { disk, committer, log, model: Model::default(), appends: 0 }
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let model = &mut self.model;
        match op {
            Op::Append { records, local } => {
                self.appends += 1;
                let values: Vec<Vec<u8>> = records
                    .iter()
                    .enumerate()
                    .map(|(i, (len, fill))| {
                        if *fill == 0 {
                            vec![0; *len]
                        } else {
                            value_of(&format!("a{}r{i}f{fill}:", self.appends), *len)
                        }
                    })
                    .collect();
                let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
                let durability = if *local { Durability::Local } else { Durability::None };
                let base = model.end();
                let offsets = self.log.append(&refs, durability).map_err(|e| fail(format!("append: {e}")))?;
                ensure!(offsets == (base..base + values.len() as u64), "append got {offsets:?}, base {base}");
                model.batch_starts.insert(base);
                model.records.extend(values);
                if *local {
                    model.durable = model.end();
                }
            }
            Op::Read { pick } => {
                let from = model.start + u64::from(*pick) % (model.end() - model.start + 1);
                let got = read_from(&self.log, from, Visibility::Written)?;
                ensure!(got == model.slice(from, model.end()), "read from {from} differs from the model");
                let durable_end = self.log.durable_end();
                if from <= durable_end {
                    let got = read_from(&self.log, from, Visibility::Durable)?;
                    ensure!(got == model.slice(from, durable_end), "durable read from {from} differs");
                } else {
                    let refused = self.log.read(from, Visibility::Durable);
                    ensure!(matches!(refused, Err(Error::OffsetOutOfRange { .. })), "durable read past the end");
                }
                let past_end = self.log.read(model.end() + 1, Visibility::Written);
                ensure!(matches!(past_end, Err(Error::OffsetOutOfRange { .. })), "read past the end");
                if model.start > 0 {
                    let below = self.log.read(model.start - 1, Visibility::Written);
                    ensure!(matches!(below, Err(Error::OffsetOutOfRange { .. })), "read below the start");
                }
            }
            Op::Reopen => {
                self.log.close().map_err(|e| fail(format!("close: {e}")))?;
                self.log = open(&self.disk, &self.committer).map_err(|e| fail(format!("reopen: {e}")))?;
                ensure!(self.log.recovered().clean, "open after a clean close scanned: {:?}", self.log.recovered());
                model.durable = model.end();
            }
            Op::Crash { tear } => {
                // What the log itself told Durable readers is a promise too.
                let promised = model.durable.max(self.log.durable_end());
                self.disk.crash(*tear);
                self.log = open(&self.disk, &self.committer)
                    .map_err(|e| fail(format!("recovery after a crash with {tear:?} failed: {e}")))?;
                let end = self.log.written_end();
                ensure!(end >= promised, "power loss lost promised records: end {end} < promised {promised}");
                ensure!(end <= model.end(), "recovery invented records: end {end} > appended {}", model.end());
                ensure!(model.is_boundary(end), "recovery ended inside a batch at {end}");
                ensure!(self.log.durable_end() == end, "recovered tail not durable: {:?}", self.log);
                model.cut(end);
                model.durable = end;
            }
            Op::TruncatePrefix { pick } => {
                let requested = u64::from(*pick) % (model.end() + 1);
                let before = model.start;
                let start = self.log.truncate_prefix(requested).map_err(|e| fail(format!("truncate_prefix: {e}")))?;
                if requested >= before {
                    ensure!(before <= start && start <= requested, "start {start} outside {before}..={requested}");
                } else {
                    ensure!(start == before, "a request below the start moved it from {before} to {start}");
                }
                model.start = start;
            }
            Op::TruncateSuffix { pick, inside } => {
                let span = model.end() - model.start + 1;
                let offset = if *inside {
                    model.start + u64::from(*pick) % span
                } else {
                    let boundaries: Vec<u64> = model
                        .batch_starts
                        .range(model.start..)
                        .copied()
                        .chain([model.start, model.end()])
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    boundaries[*pick as usize % boundaries.len()]
                };
                let result = self.log.truncate_suffix(offset);
                if model.is_boundary(offset) {
                    result.map_err(|e| fail(format!("truncate_suffix({offset}): {e}")))?;
                    model.cut(offset);
                } else {
                    ensure!(
                        matches!(result, Err(Error::NotBatchBoundary { offset: o }) if o == offset),
                        "truncate_suffix inside a batch at {offset}: {result:?}"
                    );
                    ensure!(!self.log.is_fenced(), "a refused truncation fenced the log");
                }
            }
        }
        self.check()
    }

    /// The log equals the model, through what a user can observe.
    fn check(&self) -> Result<(), TestCaseError> {
        let (log, model) = (&self.log, &self.model);
        ensure!(log.start_offset() == model.start, "start {} != model {}", log.start_offset(), model.start);
        ensure!(log.written_end() == model.end(), "end {} != model {}", log.written_end(), model.end());
        let durable_end = log.durable_end();
        ensure!(
            model.durable <= durable_end && durable_end <= model.end(),
            "durable end {durable_end} outside {}..={}",
            model.durable,
            model.end()
        );
        let got = try_contents(log, Visibility::Written).map_err(|e| fail(format!("read: {e}")))?;
        ensure!(got == model.slice(model.start, model.end()), "log differs from the model: {}", diff(&got, model));
        let got = try_contents(log, Visibility::Durable).map_err(|e| fail(format!("durable read: {e}")))?;
        ensure!(got == model.slice(model.start, durable_end), "durable view differs from the model");
        Ok(())
    }
}

fn fail(message: String) -> TestCaseError {
    TestCaseError::fail(message)
}

fn read_from(log: &Log, from: u64, visibility: Visibility) -> Result<Vec<(u64, Vec<u8>)>, TestCaseError> {
    let reader = log.read(from, visibility).map_err(|e| fail(format!("read from {from}: {e}")))?;
    reader
        .map(|r| r.map(|r| (r.offset, r.value.to_vec())))
        .collect::<Result<_, _>>()
        .map_err(|e| fail(format!("read from {from}: {e}")))
}

/// The first difference, for a readable failure message.
fn diff(got: &[(u64, Vec<u8>)], model: &Model) -> String {
    let want = model.slice(model.start, model.end());
    let first = got.iter().zip(&want).position(|(g, w)| g != w);
    match first {
        Some(i) => format!("first difference at offset {} (index {i})", want[i].0),
        None => format!("{} records read, {} expected", got.len(), want.len()),
    }
}

#[test]
fn the_log_matches_a_model_through_appends_reads_reopens_crashes_and_truncations() {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(CASES_DEFAULT);
    // No regression files in the source tree: a failure prints its shrunk sequence of steps.
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&proptest::collection::vec(op(), 1..120), |ops| {
        let mut harness = Harness::new();
        let result = ops
            .iter()
            .enumerate()
            .try_for_each(|(i, op)| harness.step(op).map_err(|e| fail(format!("step {i} ({op:?}): {e}"))));
        harness.committer.stop();
        result
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
