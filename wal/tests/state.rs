//! The state file (`tern_wal::state::StateFile`): a put that returned survives any power loss,
//! one that did not leaves the previous value or the new one, and damage is reported, never
//! read as "no value".

use std::path::Path;

use tern_segment::sim::{FaultOp, SimDisk, Tear};
use tern_segment::Disk;
use tern_wal::state::{StateFile, STATE_BYTES_MAX};
use tern_wal::Error;

const PATH: &str = "/data/raft.state";

fn value(i: u32) -> Vec<u8> {
    // Values of varied lengths, so that a torn slot may mix a long old value with a short new one.
    format!("vote {i} ").repeat(1 + (i as usize * 37) % 300).into_bytes()
}

/// Puts values 1..=3, then value 4 with a power loss at each of its sync points in turn, with
/// every tear mode: after the reboot the file holds value 3 or value 4, and value 4 whenever its
/// put returned. Power fails again during the reopen too.
#[test]
fn a_put_survives_power_loss_at_every_sync_point() {
    let tears = [Tear::None, Tear::Half, Tear::Prefix(10), Tear::AllButOne].into_iter();
    // Random tears keep, lose or tear each dirty page on its own: 64 seeds cover the mixes.
    for tear in tears.chain((0..64).map(Tear::Random)) {
        for crash_at in 0.. {
            let disk = SimDisk::new();
            let path = Path::new(PATH);
            let mut state = StateFile::open(&disk, path).unwrap();
            for i in 1..=3 {
                state.put(&value(i)).unwrap();
            }
            disk.crash_at_sync(disk.sync_points() + crash_at);
            let returned = state.put(&value(4)).is_ok();
            drop(state);
            disk.crash(tear);
            let context = format!("power loss at sync point {crash_at} of the put, {tear:?}");
            // Power fails again while the file is opened (opening only reads: no sync point
            // of a reopen may change what it finds).
            let got = StateFile::open(&disk, path).unwrap_or_else(|e| panic!("{context}: {e}"));
            let got = got.get().map(<[u8]>::to_vec);
            if returned {
                assert_eq!(got, Some(value(4)), "{context}: the put returned");
                break;
            }
            assert!(got == Some(value(3)) || got == Some(value(4)), "{context}: {got:?}");
        }
    }
}

/// The first put of a new file, with power lost at each of its sync points: afterwards the file
/// opens, empty or with the value, and with the value whenever the put returned.
#[test]
fn the_first_put_survives_power_loss_at_every_sync_point() {
    for tear in [Tear::None, Tear::Half, Tear::Prefix(3)].into_iter().chain((0..64).map(Tear::Random)) {
        for crash_at in 0.. {
            let disk = SimDisk::new();
            disk.crash_at_sync(crash_at);
            let returned = StateFile::open(&disk, Path::new(PATH)).and_then(|mut s| s.put(&value(1))).is_ok();
            disk.crash(tear);
            let context = format!("power loss at sync point {crash_at} of the first put, {tear:?}");
            let got = StateFile::open(&disk, Path::new(PATH)).unwrap_or_else(|e| panic!("{context}: {e}"));
            if returned {
                assert_eq!(got.get(), Some(&value(1)[..]), "{context}");
                break;
            }
            assert!(got.get().is_none() || got.get() == Some(&value(1)[..]), "{context}");
        }
    }
}

/// A bit flipped in either slot of a file holding a value: the other slot still holds it.
/// Both slots damaged: an error naming the file, not an empty value (an empty vote would let a
/// node vote twice in one term).
#[test]
fn damage_to_one_slot_is_survived_and_to_both_is_reported() {
    let disk = SimDisk::new();
    let path = Path::new(PATH);
    let mut state = StateFile::open(&disk, path).unwrap();
    state.put(&value(1)).unwrap();
    state.put(&value(2)).unwrap();
    drop(state);
    disk.flip_bit(path, 30, 2).unwrap();
    assert_eq!(StateFile::open(&disk, path).unwrap().get(), Some(&value(2)[..]), "slot 0 damaged");
    disk.flip_bit(path, 30, 2).unwrap();
    disk.flip_bit(path, 4096 + 30, 2).unwrap();
    assert_eq!(StateFile::open(&disk, path).unwrap().get(), Some(&value(2)[..]), "slot 1 damaged");
    disk.flip_bit(path, 30, 2).unwrap();
    let err = StateFile::open(&disk, path).unwrap_err();
    let message = err.to_string();
    assert!(message.contains(PATH), "{message}");
}

/// Every byte of a slot's header and value is checked, the reserved field too: with the same
/// byte flipped in both slots the file is reported, whichever byte it is.
#[test]
fn a_flip_anywhere_in_both_slots_is_reported() {
    let disk = SimDisk::new();
    let path = Path::new(PATH);
    let mut state = StateFile::open(&disk, path).unwrap();
    state.put(&value(1)).unwrap();
    let used = 24 + value(1).len() as u64;
    drop(state);
    for pos in 0..used {
        disk.flip_bit(path, pos, 0).unwrap();
        disk.flip_bit(path, 4096 + pos, 0).unwrap();
        assert!(StateFile::open(&disk, path).is_err(), "byte {pos} flipped in both slots was read as a value");
        disk.flip_bit(path, pos, 0).unwrap();
        disk.flip_bit(path, 4096 + pos, 0).unwrap();
    }
    assert_eq!(StateFile::open(&disk, path).unwrap().get(), Some(&value(1)[..]));
}

/// After a failed sync the handle refuses puts (the next sync would report success over
/// dropped pages); a reopened handle reads what the disk holds and goes on.
#[test]
fn a_failed_sync_fences_the_handle_until_it_is_reopened() {
    let disk = SimDisk::new();
    let path = Path::new(PATH);
    let mut state = StateFile::open(&disk, path).unwrap();
    state.put(&value(1)).unwrap();
    disk.fail_next(FaultOp::Sync, libc::EIO);
    assert!(state.put(&value(2)).is_err());
    assert!(matches!(state.put(&value(3)), Err(Error::Fenced { .. })));
    drop(state);
    disk.crash(Tear::None);
    let mut state = StateFile::open(&disk, path).unwrap();
    assert_eq!(state.get(), Some(&value(1)[..]), "the failed put's slot was dropped with its sync");
    state.put(&value(3)).unwrap();
    disk.crash(Tear::None);
    assert_eq!(StateFile::open(&disk, path).unwrap().get(), Some(&value(3)[..]));
}

#[test]
fn a_value_over_the_limit_is_refused_and_nothing_changes() {
    let disk = SimDisk::new();
    let path = Path::new(PATH);
    let mut state = StateFile::open(&disk, path).unwrap();
    state.put(b"kept").unwrap();
    assert!(matches!(state.put(&vec![1; STATE_BYTES_MAX + 1]), Err(Error::Invalid(_))));
    state.put(&vec![2; STATE_BYTES_MAX]).unwrap();
    assert_eq!(StateFile::open(&disk, path).unwrap().get(), Some(&vec![2; STATE_BYTES_MAX][..]));
    let _ = disk.exists(path);
}
