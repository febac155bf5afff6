//! `tern append` killed with SIGKILL at random moments: every offset it printed must be
//! readable afterwards with the exact bytes that were sent, and nothing else may appear.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;

fn line(round: u64, i: u64, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let len = rng.gen_range(0..200);
    let mut l = format!("r{round}-{i}-").into_bytes();
    l.extend((0..len).map(|_| rng.gen_range(b'a'..=b'z')));
    l
}

/// Records of the log, read with the real binary, as (offset, bytes).
fn read_all(dir: &std::path::Path) -> Vec<(u64, Vec<u8>)> {
    if !dir.join("logs").join("killed").exists() {
        return Vec::new(); // killed before it created the log
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["read", "--dir"])
        .arg(dir)
        .args(["--log", "killed"])
        .output()
        .expect("run tern read");
    assert!(out.status.success(), "tern read failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let tab = l.iter().position(|b| *b == b'\t').expect("OFFSET<TAB>RECORD");
            (std::str::from_utf8(&l[..tab]).unwrap().parse().unwrap(), l[tab + 1..].to_vec())
        })
        .collect()
}

#[test]
fn every_printed_offset_survives_sigkill() {
    let seed = common::seed();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rounds: u64 = std::env::var("TERN_KILL_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let dir = tempfile::tempdir().unwrap();
    let mut expected: Vec<Vec<u8>> = Vec::new(); // the log as it must be: acked or found intact
    let mut acked_total = 0usize;
    for round in 0..rounds {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["append", "--dir"])
            .arg(dir.path())
            .args(["--log", "killed", "--durability", "local"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tern append");
        // An endless stream, so the child is always busy when it is killed.
        let mut stdin = child.stdin.take().unwrap();
        let sent = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
        let (log_sent, mut line_rng) = (sent.clone(), ChaCha8Rng::seed_from_u64(rng.gen()));
        let writer = std::thread::spawn(move || {
            for i in 0.. {
                let l = line(round, i, &mut line_rng);
                log_sent.lock().unwrap().push(l.clone());
                if stdin.write_all(&l).and_then(|()| stdin.write_all(b"\n")).is_err() {
                    return; // killed
                }
            }
        });
        let printed = Arc::new(Mutex::new(Vec::<u64>::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = printed.clone();
        let (first_ack, acked) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { return };
                sink.lock().unwrap().push(l.parse::<u64>().expect("an offset per line"));
                let _ = first_ack.send(());
            }
        });
        // A random moment: in one round of four any time from the start (often before the
        // first ack, while the log is being opened or created), otherwise during the stream,
        // counted from the first ack, so a slow start (a loaded machine, a cold disk, the
        // device probe of a new directory) never leaves every round without one.
        if rng.gen_range(0..4) != 0 {
            let waited = acked.recv_timeout(Duration::from_secs(120));
            waited.unwrap_or_else(|e| panic!("round {round}: no acknowledgement within 120 s ({e})"));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(1..80)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child must die from the signal");
        writer.join().unwrap();
        reader.join().unwrap();
        let sent = sent.lock().unwrap().clone();
        let printed = printed.lock().unwrap().clone();
        let base = expected.len() as u64;
        for (i, offset) in printed.iter().enumerate() {
            assert_eq!(*offset, base + i as u64, "round {round}: offsets are dense and in order");
        }
        let log = read_all(dir.path());
        // Every printed offset holds exactly the line sent; anything after it is a further
        // line of this round, in order (written but not yet acknowledged): nothing invented.
        assert!(log.len() >= expected.len() + printed.len(), "round {round}: acknowledged records lost");
        for (i, (offset, bytes)) in log.iter().enumerate() {
            assert_eq!(*offset, i as u64, "offsets dense");
            if i < expected.len() {
                assert_eq!(bytes, &expected[i], "round {round}: earlier record {i} changed");
            } else {
                let j = i - expected.len();
                assert_eq!(bytes, &sent[j], "round {round}: offset {i} holds bytes that were never sent there");
            }
        }
        acked_total += printed.len();
        expected = log.into_iter().map(|(_, b)| b).collect();
    }
    eprintln!("{rounds} rounds, {acked_total} acknowledged records, {} in the log", expected.len());
    assert!(acked_total > 0, "the harness never saw an acknowledgement; kill later");
    let verify = Command::new(env!("CARGO_BIN_EXE_tern")).args(["verify", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}
