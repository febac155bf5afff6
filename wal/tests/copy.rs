//! A follower's copy: `append_frames` writes each run of consecutive frames that fits in the
//! active segment with one write. Whatever the grouping of frames into calls, and however the
//! runs meet segment ends, the copy holds exactly the leader's records, every offset is found
//! through the sparse index, and a power loss after a sync keeps all of them.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use rand::Rng;
use tern_segment::sim::{SimDisk, Tear};
use tern_segment::Disk;
use tern_wal::{Durability, Log, Visibility};

fn open_at(disk: &SimDisk, committer: &tern_wal::Committer, dir: &str) -> Log {
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    Log::open(shared, Path::new(dir), "log", small_options(), committer.clone(), true).unwrap()
}

#[test]
fn frames_copied_in_runs_read_back_exactly_from_every_offset_and_survive_power_loss() {
    let seed = seed("frames_copied_in_runs");
    let mut rng = rng(seed);
    for round in 0..20 {
        let disk = SimDisk::new();
        let committer = sim_committer(&disk);
        let leader = open_at(&disk, &committer, "/data/leader");
        for i in 0..rng.gen_range(1..120) {
            let values: Vec<Vec<u8>> = (0..rng.gen_range(1..4))
                .map(|k| value_of(&format!("{round}-{i}-{k}"), rng.gen_range(1..900)))
                .collect();
            let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            leader.append(&refs, Durability::None).unwrap();
        }
        let frames: Vec<bytes::Bytes> =
            leader.read_batches(0, u64::MAX, Visibility::Written).unwrap().into_iter().map(|b| b.frame).collect();
        let follower = open_at(&disk, &committer, "/data/follower");
        let mut at = 0;
        while at < frames.len() {
            // Overlapping calls too: frames already here are skipped.
            let from = at.saturating_sub(rng.gen_range(0..2));
            let to = (at + rng.gen_range(1..12)).min(frames.len());
            let bytes: Vec<u8> = frames[from..to].iter().flat_map(|f| f.iter().copied()).collect();
            follower.append_frames(&bytes).unwrap().wait(Durability::Local).unwrap();
            at = to;
        }
        let want = contents(&leader, Visibility::Written);
        assert_eq!(contents(&follower, Visibility::Written), want, "seed {seed:#x} round {round}");
        assert!(follower.segments().len() > 1 || leader.segments().len() == 1, "seed {seed:#x}: no roll");
        for (offset, value) in &want {
            let first = follower.read(*offset, Visibility::Durable).unwrap().next().unwrap().unwrap();
            assert_eq!((first.offset, first.value.as_ref()), (*offset, value.as_slice()), "seed {seed:#x}");
        }
        drop((leader, follower));
        disk.crash(Tear::None);
        let follower = open_at(&disk, &committer, "/data/follower");
        assert_eq!(contents(&follower, Visibility::Durable), want, "seed {seed:#x} round {round}, after power loss");
        drop(follower);
        committer.stop();
    }
}

#[test]
fn where_a_read_ended_is_forgotten_when_the_log_is_cut_back() {
    let disk = SimDisk::new();
    let committer = sim_committer(&disk);
    let log = open_at(&disk, &committer, "/data/log");
    let batch = |tag: &str, len: usize| {
        let value = value_of(tag, len);
        log.append(&[value.as_slice()], Durability::None).unwrap();
    };
    for i in 0..40 {
        batch(&format!("old-{i}"), 60);
    }
    // A shipper-like read ends somewhere past 25: the next read from there starts at its end.
    let read = log.read_batches(20, 10 * 80, Visibility::Written).unwrap();
    let ended = read.last().unwrap().end_offset;
    assert!(ended > 25, "{ended}");
    // Cut back below it, then write batches of other sizes: the old boundary means nothing now.
    log.truncate_suffix(22).unwrap();
    for i in 22..40 {
        batch(&format!("new-{i}"), 23 + i % 7);
    }
    // From the old boundary first (a read from anywhere sets a new one).
    let froms = std::iter::once(ended).chain(22..40u64);
    for from in froms {
        let first = log.read_batches(from, 1, Visibility::Written).unwrap().remove(0);
        assert_eq!(first.base_offset, from);
        let record = log.read(from, Visibility::Written).unwrap().next().unwrap().unwrap();
        assert_eq!(record.value.as_ref(), value_of(&format!("new-{from}"), 23 + from as usize % 7).as_slice());
    }
    drop(log);
    committer.stop();
}
