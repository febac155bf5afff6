//! The protocol core under a seeded lossy network, crashing followers, a crashing leader
//! (power loss, then a new epoch), the leader's retention deleting committed segments and the
//! followers' own retention:
//! every follower's log stays a prefix of the leader's (above the commit point it may hold
//! records the leader lost, until they are cut back), a follower calls committed only the
//! leader's records, the commit point never goes back, no committed record is ever lost or
//! cut, every committed record is durable on a quorum, a re-seed never skips a record the
//! leader still holds, and after healing all logs converge. With leadership moving between
//! nodes (the `failover_` tests): every epoch has one leader, every committed record is in
//! every later leader's log, and every record cut is in a quarantine file.
//!
//! 64 seeds by default (fewer for the heavier tests); `TERN_SIM_SEEDS=10000` for more,
//! `TERN_SIM_SEED=0x..` to replay one.

use tern_replication::proto::Quorum;
use tern_replication::sim::{seeds, Config, World};

/// Runs `config` for `steps` steps, then heals and checks convergence; a broken invariant
/// panics with the seed that replays it (and the cluster's shape).
fn run_seed(config: Config, steps: u64) -> World {
    let (seed, nodes, quorum) = (config.seed, config.nodes, config.quorum);
    let mut world = World::new(config).unwrap_or_else(|e| panic!("seed {seed:#x}: setup: {e}"));
    if let Err(broken) = world.run(steps) {
        panic!("{nodes} nodes, {quorum:?}: seed {seed:#x}: {broken}; replay with TERN_SIM_SEED={seed:#x}");
    }
    world
}

/// `retains`: whether the leader's retention must have deleted something across the seeds
/// (with `Quorum::All` the commit point, which bounds it, seldom passes the first segment).
fn run_all(quorum: Quorum, steps: u64, retains: bool) {
    let mut committed = 0;
    let mut crashes = 0;
    let mut leader_crashes = 0;
    let mut cut = 0;
    let mut lost = 0;
    let mut damaged = 0;
    let mut retentions = 0;
    let mut reseeds = 0;
    let (mut inline_syncs, mut later_syncs) = (0, 0);
    let (mut disk_errors, mut reopens) = (0, 0);
    for seed in seeds(64) {
        let config = Config { seed, quorum, ..Config::default() };
        let world = run_seed(config, steps);
        committed += world.committed();
        let faults = world.faults();
        crashes += faults.crashes;
        leader_crashes += faults.leader_crashes;
        cut += faults.records_cut;
        lost += faults.dropped;
        damaged += faults.corrupted;
        retentions += faults.retentions;
        reseeds += faults.reseeds;
        inline_syncs += faults.inline_syncs;
        later_syncs += faults.later_syncs;
        disk_errors += faults.disk_errors;
        reopens += faults.reopens;
    }
    assert!(committed > 0, "the simulation never committed anything");
    eprintln!(
        "{committed} records committed; {crashes} follower and {leader_crashes} leader power losses, \
         {cut} diverged follower records cut, {lost} messages lost, {damaged} damaged, \
         {retentions} retention runs on the leader, {reseeds} followers re-seeded; follower syncs: \
         {inline_syncs} inline, {later_syncs} later; {disk_errors} follower disk errors, {reopens} logs reopened"
    );
    if seeds(64).len() >= 64 {
        assert!(
            crashes > 0 && leader_crashes > 0 && lost > 0 && damaged > 0 && (retentions > 0 || !retains),
            "the faults must happen: {crashes} {leader_crashes} {lost} {damaged} {retentions}"
        );
        assert!(
            inline_syncs > 0 && later_syncs > 0 && reopens > 0,
            "both of the driver's sync paths must run, and fenced logs be reopened: {inline_syncs} inline, \
             {later_syncs} later, {reopens} reopened"
        );
    }
}

#[test]
fn replication_invariants_hold_under_faults_with_a_majority_quorum() {
    run_all(Quorum::Count(2), 600, true);
}

#[test]
fn replication_invariants_hold_under_faults_when_all_must_ack() {
    run_all(Quorum::All, 400, false);
}

/// No faults at all: no loss, duplication, damage, partition, crash or retention.
fn quiet(seed: u64) -> Config {
    Config {
        seed,
        drop_ratio: 0.0,
        duplicate_ratio: 0.0,
        corrupt_ratio: 0.0,
        partition_ratio: 0.0,
        crash_ratio: 0.0,
        leader_crash_ratio: 0.0,
        retention_ratio: 0.0,
        follower_retention_ratio: 0.0,
        disk_error_ratio: 0.0,
        ..Config::default()
    }
}

#[test]
fn a_quiet_network_replicates_everything() {
    // Retention still runs here, as it always did in this test.
    let retention = Config::default();
    let config = Config {
        retention_ratio: retention.retention_ratio,
        follower_retention_ratio: retention.follower_retention_ratio,
        ..quiet(1)
    };
    let mut world = World::new(config).unwrap();
    world.run(500).unwrap();
    assert!(world.appended() > 50);
    assert_eq!(world.committed(), world.appended());
}

/// A follower whose copy of the log was removed comes back empty: the leader believes what
/// it reports (not what it acknowledged before) and refills it.
#[test]
fn a_follower_whose_copy_was_removed_is_refilled() {
    let mut world = World::new(quiet(7)).unwrap();
    world.run(300).unwrap();
    let before = world.appended();
    assert!(before > 20, "{before} records");
    world.wipe_follower(1).unwrap();
    world.run(300).unwrap_or_else(|e| panic!("after follower 1 was wiped at {before} records: {e}"));
    assert!(world.appended() > before);
}

/// A network that keeps followers close behind (no loss, 2 ms at most), and a leader that
/// loses power often: its unsynced tail, already on the followers, is lost.
fn close_behind(seed: u64) -> Config {
    Config {
        seed,
        drop_ratio: 0.0,
        duplicate_ratio: 0.0,
        corrupt_ratio: 0.0,
        partition_ratio: 0.0,
        crash_ratio: 0.002,
        leader_crash_ratio: 0.01,
        delay_ms_max: 2,
        ..Config::default()
    }
}

#[test]
fn a_restarted_leader_cuts_back_followers_holding_records_it_lost() {
    // A network that keeps followers close behind, and a leader that loses power often: its
    // unsynced tail, already on the followers, is lost, and the new epoch must cut it there.
    let mut cut = 0;
    let mut leader_crashes = 0;
    for seed in seeds(64) {
        let world = run_seed(close_behind(seed), 600);
        cut += world.faults().records_cut;
        leader_crashes += world.faults().leader_crashes;
    }
    eprintln!("{leader_crashes} leader power losses; {cut} diverged follower records cut");
    if seeds(64).len() >= 64 {
        assert!(cut > 0, "no follower ever held records the leader lost: the scenario did not happen");
    }
}

#[test]
fn with_reseeding_off_a_follower_behind_retention_stops_at_its_data_loss() {
    // Frequent retention and long partitions, so followers fall behind the leader's start.
    let mut told = 0;
    for seed in seeds(64) {
        let config = Config { seed, reseed: false, retention_ratio: 0.02, partition_ratio: 0.03, ..Config::default() };
        let world = run_seed(config, 600);
        told += world.data_losses();
    }
    eprintln!("{told} followers stopped at a data loss");
    if seeds(64).len() >= 64 {
        assert!(told > 0, "no follower ever fell behind the leader's retention");
    }
}

#[test]
fn replication_invariants_hold_with_five_nodes_and_heavy_faults() {
    // Five nodes with a quorum of three, four times the message loss, five times the crashes
    // and ten times the retention of the default.
    for seed in seeds(16) {
        let config = Config {
            seed,
            nodes: 5,
            quorum: Quorum::Count(3),
            drop_ratio: 0.2,
            duplicate_ratio: 0.1,
            crash_ratio: 0.025,
            leader_crash_ratio: 0.01,
            retention_ratio: 0.03,
            partition_ratio: 0.05,
            ..Config::default()
        };
        run_seed(config, 600);
    }
}

#[test]
fn replication_invariants_hold_in_other_cluster_shapes() {
    // A leader alone, two nodes, leader-only acks, and a quorum smaller than a majority; with
    // more retention than the default.
    let shapes =
        [(1, Quorum::Leader), (2, Quorum::Count(2)), (2, Quorum::Leader), (3, Quorum::Leader), (4, Quorum::Count(2))];
    for (nodes, quorum) in shapes {
        for seed in seeds(16) {
            let config = Config { seed, nodes, quorum, retention_ratio: 0.01, ..Config::default() };
            run_seed(config, 600);
        }
    }
}

#[test]
fn a_followers_own_retention_never_deletes_records_a_restarted_leader_must_cut() {
    // Followers close behind a leader that loses power often, so they hold tails it lost,
    // while their own retention runs often: it must stop at the commit point they learned,
    // or a cut back to below a follower's start could never be made.
    let (mut follower_retentions, mut cut) = (0, 0);
    for seed in seeds(64) {
        let config = Config { partition_ratio: 0.03, follower_retention_ratio: 0.2, ..close_behind(seed) };
        let world = run_seed(config, 600);
        follower_retentions += world.faults().follower_retentions;
        cut += world.faults().records_cut;
    }
    eprintln!("{follower_retentions} follower retention runs; {cut} diverged follower records cut");
    if seeds(64).len() >= 64 {
        assert!(follower_retentions > 0 && cut > 0, "the scenario did not happen: {follower_retentions} {cut}");
    }
}

/// Leadership moves between nodes: the leader loses power for good, pauses past the failure
/// timeout, or is cut off from everyone; the controller (a compare-and-set register in the
/// simulator) fences the replicas it reaches, elects from their reports, and the elected node
/// leads the next epoch. An old leader that comes back leads its epoch for a while (clients
/// still append to it) and is then started as a follower, its uncommitted tail cut into a
/// quarantine file.
fn failover(seed: u64) -> Config {
    Config {
        seed,
        leader_death_ratio: 0.002,
        leader_pause_ratio: 0.005,
        leader_isolation_ratio: 0.005,
        controller_partition_ratio: 0.005,
        ..Config::default()
    }
}

/// Runs `configs` and sums what they injected; with at least `seeds_min` seeds, every kind of
/// failover must have happened.
fn run_failovers(configs: impl Iterator<Item = Config>, steps: u64, seeds_min: usize) {
    let mut totals = tern_replication::sim::Faults::default();
    let mut committed = 0;
    let mut epochs = 0;
    let mut seeds = 0;
    for config in configs {
        let world = run_seed(config, steps);
        let f = world.faults();
        committed += world.committed();
        epochs += world.register().epoch();
        seeds += 1;
        totals.leader_deaths += f.leader_deaths;
        totals.leader_pauses += f.leader_pauses;
        totals.leader_isolations += f.leader_isolations;
        totals.controller_partitions += f.controller_partitions;
        totals.elections += f.elections;
        totals.elections_short += f.elections_short;
        totals.demotions += f.demotions;
        totals.zombie_appends += f.zombie_appends;
        totals.quarantined += f.quarantined;
        totals.records_cut += f.records_cut;
        totals.leader_crashes += f.leader_crashes;
    }
    let t = totals;
    eprintln!(
        "{seeds} seeds: {committed} records committed over {epochs} epochs; {} leader deaths, {} pauses, {} \
         isolations, {} partitions from the controller, {} power losses in place; {} elections ({} short of \
         reports); {} old leaders started as followers; {} records appended to old leaders; {} records cut, {} \
         quarantined",
        t.leader_deaths,
        t.leader_pauses,
        t.leader_isolations,
        t.controller_partitions,
        t.leader_crashes,
        t.elections,
        t.elections_short,
        t.demotions,
        t.zombie_appends,
        t.records_cut,
        t.quarantined
    );
    assert!(committed > 0, "the simulation never committed anything");
    if seeds >= seeds_min {
        assert!(
            t.leader_deaths > 0
                && t.leader_pauses > 0
                && t.leader_isolations > 0
                && t.controller_partitions > 0
                && t.elections > 0,
            "the failovers must happen: {t:?}"
        );
        assert!(t.demotions > 0 && t.zombie_appends > 0 && t.quarantined > 0, "old leaders must come back: {t:?}");
    }
}

#[test]
fn failover_keeps_every_committed_record_and_one_leader_per_epoch() {
    run_failovers(seeds(32).into_iter().map(failover), 800, 32);
}

#[test]
fn failover_holds_with_five_nodes_and_heavy_faults() {
    // Five nodes with a quorum of three (two may die), more loss, crashes and failovers.
    let configs = seeds(8).into_iter().map(|seed| Config {
        nodes: 5,
        quorum: Quorum::Count(3),
        drop_ratio: 0.1,
        crash_ratio: 0.01,
        leader_death_ratio: 0.004,
        leader_pause_ratio: 0.01,
        leader_isolation_ratio: 0.01,
        ..failover(seed)
    });
    run_failovers(configs, 800, 8);
}

#[test]
fn failover_holds_when_every_replica_must_ack() {
    // With every replica in the quorum, one report elects, and no replica may die.
    let configs = seeds(8).into_iter().map(|seed| Config { quorum: Quorum::All, ..failover(seed) });
    run_failovers(configs, 800, usize::MAX);
}
