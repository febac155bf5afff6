//! The `tern` binary as a user meets it: clear errors, verify naming damage, dump.

use std::process::{Command, Output};

use tern::{Config, Durability, Engine};

fn tern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern")).args(args).output().expect("run tern")
}

fn assert_clean_failure(out: &Output) {
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(!stderr.contains("RUST_BACKTRACE"), "backtrace hint: {stderr}");
}

#[test]
fn bad_input_gets_a_short_error_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for args in [
        vec!["append"],
        vec!["append", "--dir", d, "--log", "a/b"],
        vec!["append", "--dir", d, "--log", ".."],
        vec!["append", "--dir", d, "--log", "x", "--durability", "maybe"],
        vec!["read", "--dir", "/nonexistent/tern", "--log", "a"],
        vec!["read", "--dir", d, "--log", "missing"],
        vec!["read", "--dir", d, "--log", "a", "--from", "-1"],
        vec!["verify", "--dir", "/nonexistent/tern"],
        vec!["dump", "--dir", d, "--log", "missing"],
        vec!["bench", "--seconds", "-3"],
        vec!["demo", "--seconds", "0"],
        // Fails closed: no plaintext listener on a routable address without the explicit flag.
        vec!["serve", "--dir", d, "--listen", "0.0.0.0:0", "--node-id", "1", "--role", "leader"],
        vec![
            "serve",
            "--dir",
            d,
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "1",
            "--role",
            "leader",
            "--peers",
            "1=127.0.0.1:9",
        ],
        vec![
            "serve",
            "--dir",
            d,
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "1",
            "--role",
            "leader",
            "--peers",
            "2=nowhere",
        ],
        vec!["append", "--server", "127.0.0.1:1", "--log", "a", "--give-up-after-ms", "300"],
        vec!["status", "--server", "127.0.0.1:1"],
    ] {
        assert_clean_failure(&tern(&args));
    }
    // Nothing was created outside the directory by a bad name.
    assert!(!dir.path().join("logs").join("a").exists());
}

#[test]
fn a_line_over_the_record_limit_is_refused_and_earlier_lines_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut input = b"first\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', (Config::default().record_bytes_max + 1) as usize));
    input.push(b'\n');
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["append", "--dir", dir.path().to_str().unwrap(), "--log", "a"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut stdin, &input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert_clean_failure(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("maximum record size"));
    let read = tern(&["read", "--dir", dir.path().to_str().unwrap(), "--log", "a"]);
    assert_eq!(String::from_utf8_lossy(&read.stdout), "0\tfirst\n");
}

#[test]
fn verify_names_every_damaged_frame_and_read_never_returns_damaged_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { segment_size_bytes: 16 << 10, index_interval_bytes: 1024, ..Config::default() };
    let mut sent = Vec::new();
    {
        let engine = Engine::open(dir.path(), config.clone()).unwrap();
        let log = engine.log("damaged").unwrap();
        for i in 0..400u32 {
            let value = format!("value-{i:05}-{}", "v".repeat((i % 90) as usize)).into_bytes();
            log.append(&[&value], Durability::Local).unwrap();
            sent.push(value);
        }
        engine.close().unwrap();
    }
    let d = dir.path().to_str().unwrap();
    let verify = tern(&["verify", "--dir", d]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    // Frame positions from dump: (file, pos, len).
    let dump = String::from_utf8(tern(&["dump", "--dir", d]).stdout).unwrap();
    let frames: Vec<(String, u64, u64)> = dump
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let num = |s: &str, p: &str| s.strip_prefix(p).unwrap().parse::<u64>().unwrap();
            (f[1].to_owned(), num(f[2], "pos "), num(f[5], "bytes "))
        })
        .collect();
    assert_eq!(frames.len(), 400);
    let files: std::collections::BTreeSet<&String> = frames.iter().map(|f| &f.0).collect();
    assert!(files.len() >= 3, "sealed and active segments are both damaged");
    // Damage one byte inside ten frames spread over all segments (sealed and active).
    let log_dir = dir.path().join("logs").join("damaged");
    let mut damaged = Vec::new();
    for k in 0..10 {
        let (file, pos, len) = &frames[k * 39 + 5];
        let path = log_dir.join(file);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = (pos + 8 + (k as u64 * 7) % (len - 8)) as usize;
        bytes[at] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
        damaged.push((file.clone(), *pos));
    }
    let verify = tern(&["verify", "--dir", d]);
    assert_eq!(verify.status.code(), Some(1));
    let report = String::from_utf8_lossy(&verify.stdout);
    for (file, pos) in &damaged {
        assert!(report.contains(&format!("{file}: byte {pos}:")), "{file} byte {pos} not named in:\n{report}");
    }
    // Reads stop at damage with an error; what they return is exactly what was sent.
    let read = tern(&["read", "--dir", d, "--log", "damaged"]);
    for line in read.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let tab = line.iter().position(|b| *b == b'\t').unwrap();
        let offset: usize = std::str::from_utf8(&line[..tab]).unwrap().parse().unwrap();
        assert_eq!(&line[tab + 1..], sent[offset].as_slice(), "offset {offset} returned damaged bytes");
    }
    assert!(!read.status.success() || read.stdout.split(|b| *b == b'\n').count() < 400);
}

#[test]
fn repair_cuts_at_the_first_damaged_frame_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { segment_size_bytes: 16 << 10, index_interval_bytes: 1024, ..Config::default() };
    {
        let engine = Engine::open(dir.path(), config).unwrap();
        let log = engine.log("hurt").unwrap();
        for i in 0..300u32 {
            log.append(&[format!("value-{i:05}-{}", "v".repeat(60)).as_bytes()], Durability::Local).unwrap();
        }
        engine.close().unwrap();
    }
    let d = dir.path().to_str().unwrap();
    let dump = String::from_utf8(tern(&["dump", "--dir", d]).stdout).unwrap();
    let line = dump.lines().nth(120).unwrap();
    let f: Vec<&str> = line.split('\t').collect();
    let pos: u64 = f[2].strip_prefix("pos ").unwrap().parse().unwrap();
    let first_cut: u64 = f[3].strip_prefix("offsets ").unwrap().split("..").next().unwrap().parse().unwrap();
    let path = dir.path().join("logs").join("hurt").join(f[1]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[pos as usize + 40] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    // Reading and verifying never change anything.
    assert_eq!(tern(&["verify", "--dir", d]).status.code(), Some(1));
    assert_eq!(tern(&["verify", "--dir", d]).status.code(), Some(1));
    let repair = tern(&["repair", "--dir", d, "--log", "hurt"]);
    assert!(repair.status.success(), "{}", String::from_utf8_lossy(&repair.stderr));
    assert!(String::from_utf8_lossy(&repair.stdout).contains(&format!("now ends at offset {first_cut}")));
    let verify = tern(&["verify", "--dir", d]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    let read = tern(&["read", "--dir", d, "--log", "hurt"]);
    assert!(read.status.success());
    assert_eq!(read.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() as u64, first_cut);
    // The log takes appends again after the cut.
    let engine = Engine::open(dir.path(), Config::default()).unwrap();
    let offsets = engine.existing_log("hurt").unwrap().append(&[b"after"], Durability::Local).unwrap();
    assert_eq!(offsets.start, first_cut);
}

/// Runs `tern` and expects it to exit within 20 s: a `serve` that does not fail keeps
/// serving, which here is the failure.
fn tern_exits(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tern");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("tern {args:?} started serving instead of refusing");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A node started without `--role` would lead (a follower restarted without it became a
/// second leader); a peer named twice, by id or by address, would be counted as two copies.
#[test]
fn serve_refuses_a_missing_role_and_a_peer_named_twice() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let base = ["serve", "--dir", d, "--listen", "127.0.0.1:0", "--node-id", "1"];
    let cases: [(&[&str], &str); 7] = [
        (&[], "--role"),
        (&["--role", "leader", "--peers", "2=127.0.0.1:7001,3=127.0.0.1:7001"], "address 127.0.0.1:7001 twice"),
        (&["--role", "leader", "--peers", "2=127.0.0.1:7001,2=127.0.0.1:7002"], "node id 2 twice"),
        (&["--role", "follower", "--peers", "2=127.0.0.1:7001"], "--peers is for the leader"),
        // An advertised address is what --cluster must name for the node, and only with it.
        (&["--role", "leader", "--advertise", "127.0.0.1:7005"], "--cluster"),
        (
            &["--cluster", "1=127.0.0.1:7001,2=127.0.0.1:7003", "--advertise", "127.0.0.1:7005"],
            "not at its --advertise",
        ),
        (
            &["--cluster", "2=127.0.0.1:7003,3=127.0.0.1:7005", "--advertise", "127.0.0.1:7005"],
            "another node's address",
        ),
    ];
    for (extra, said) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = tern_exits(&args);
        assert_clean_failure(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    }
}
