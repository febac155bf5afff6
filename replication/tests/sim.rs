//! The protocol core under a seeded lossy network and crashing followers: every follower's
//! log stays a prefix of the leader's, the commit point never goes back, every committed record
//! is durable on a quorum, and after healing all logs converge.
//!
//! 64 seeds by default; `TERN_SIM_SEEDS=10000` for more, `TERN_SIM_SEED=0x..` to replay one.

use tern_replication::proto::Quorum;
use tern_replication::sim::{seeds, Config, World};

fn run_all(quorum: Quorum, steps: u64) {
    let mut committed = 0;
    let mut crashes = 0;
    let mut lost = 0;
    let mut damaged = 0;
    for seed in seeds(64) {
        let config = Config { seed, quorum, ..Config::default() };
        let mut world = World::new(config).unwrap_or_else(|e| panic!("seed {seed:#x}: setup: {e}"));
        if let Err(broken) = world.run(steps) {
            panic!("seed {seed:#x}: {broken}; replay with TERN_SIM_SEED={seed:#x}");
        }
        committed += world.committed();
        let faults = world.faults();
        crashes += faults.crashes;
        lost += faults.dropped;
        damaged += faults.corrupted;
    }
    assert!(committed > 0, "the simulation never committed anything");
    eprintln!("{committed} records committed; {crashes} crashes, {lost} messages lost, {damaged} damaged");
    if seeds(64).len() >= 64 {
        assert!(crashes > 0 && lost > 0 && damaged > 0, "the faults must happen: {crashes} {lost} {damaged}");
    }
}

#[test]
fn replication_invariants_hold_under_faults_with_a_majority_quorum() {
    run_all(Quorum::Count(2), 600);
}

#[test]
fn replication_invariants_hold_under_faults_when_all_must_ack() {
    run_all(Quorum::All, 400);
}

#[test]
fn a_quiet_network_replicates_everything() {
    let config = Config {
        seed: 1,
        drop_ratio: 0.0,
        duplicate_ratio: 0.0,
        corrupt_ratio: 0.0,
        partition_ratio: 0.0,
        crash_ratio: 0.0,
        ..Config::default()
    };
    let mut world = World::new(config).unwrap();
    world.run(500).unwrap();
    assert!(world.appended() > 50);
    assert_eq!(world.committed(), world.appended());
}
