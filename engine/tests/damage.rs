//! Damage an operator can meet on a real disk, seen through the `tern` binary: a journal file
//! cut short, replaced or lost; segment files missing at the start, the end or in the middle;
//! a damaged segment header; a damaged index. `verify` and `read` must agree on every case,
//! and `repair` must work from whatever is readable and say exactly what it removed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tern::{Config, Durability, Engine};

fn tern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern")).args(args).output().expect("run tern")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn records(out: &Output) -> Vec<(u64, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let (offset, value) = line.split_once('\t').expect("OFFSET<TAB>RECORD");
            (offset.parse().unwrap(), value.to_owned())
        })
        .collect()
}

fn value(i: u64) -> String {
    format!("value-{i:05}-{}", "v".repeat(80))
}

fn small_segments() -> Config {
    Config { segment_size_bytes: 16 << 10, index_interval_bytes: 1024, ..Config::default() }
}

/// A log of `count` records over several 16 KiB segments, closed cleanly.
fn closed_log(dir: &Path, count: u64) -> Vec<PathBuf> {
    let engine = Engine::open(dir, small_segments()).unwrap();
    let log = engine.log("orders").unwrap();
    for i in 0..count {
        log.append(&[value(i).as_bytes()], Durability::Local).unwrap();
    }
    let segments: Vec<PathBuf> = log.segments().iter().map(|s| s.path().to_path_buf()).collect();
    drop(log);
    engine.close().unwrap();
    assert!(segments.len() >= 5, "the log spans several segments: {}", segments.len());
    segments
}

fn journal_file(dir: &Path, name: &str) -> PathBuf {
    dir.join("journal").join(name)
}

/// The journal file with the higher header sequence: the current one.
fn current_journal(dir: &Path) -> PathBuf {
    let seq = |name: &str| {
        let bytes = std::fs::read(journal_file(dir, name)).unwrap();
        tern_wal::journal::decode_header(&bytes[..64]).map_or(0, |(seq, _)| seq)
    };
    journal_file(dir, if seq("a.jnl") >= seq("b.jnl") { "a.jnl" } else { "b.jnl" })
}

fn damage_journal(path: &Path, how: &str) {
    match how {
        "cut to 7 bytes" => {
            let bytes = std::fs::read(path).unwrap();
            std::fs::write(path, &bytes[..7]).unwrap();
        }
        "replaced by a directory" => {
            std::fs::remove_file(path).unwrap();
            std::fs::create_dir(path).unwrap();
        }
        "deleted" => std::fs::remove_file(path).unwrap(),
        other => panic!("{other}"),
    }
}

/// After a clean close the journal holds nothing needed: whatever happened to one of its
/// files, `verify` says so and passes, and the next open rebuilds the file at its full size.
#[test]
fn a_damaged_journal_after_a_clean_close_is_rebuilt_by_the_next_open_and_verify_agrees() {
    for how in ["cut to 7 bytes", "replaced by a directory", "deleted"] {
        for which in ["a.jnl", "b.jnl"] {
            let dir = tempfile::tempdir().unwrap();
            closed_log(dir.path(), 400);
            let d = dir.path().to_str().unwrap();
            let path = journal_file(dir.path(), which);
            damage_journal(&path, how);
            let verify = tern(&["verify", "--dir", d]);
            assert!(verify.status.success(), "{which} {how}: {}", text(&verify));
            if how != "deleted" {
                assert!(text(&verify).contains("holds nothing needed"), "{which} {how}: {}", text(&verify));
            }
            let read = tern(&["read", "--dir", d, "--log", "orders"]);
            assert!(read.status.success(), "{which} {how}: {}", text(&read));
            assert_eq!(records(&read).len(), 400, "{which} {how}");
            let meta = std::fs::metadata(&path).unwrap();
            assert!(meta.is_file() && meta.len() == Config::default().journal_file_bytes, "{which} {how}: {meta:?}");
            let append = Command::new(env!("CARGO_BIN_EXE_tern"))
                .args(["append", "--dir", d, "--log", "orders"])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(append.status.success(), "{which} {how}: {}", text(&append));
        }
    }
}

/// Records acknowledged through the journal of a process that was killed: damage to the
/// current journal file is an error in `verify` and in `read` alike, until `repair --journal`
/// rebuilds it; then every record the killed process wrote is read back.
#[test]
fn a_damaged_journal_holding_acknowledged_records_stops_read_and_verify_until_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["append", "--dir", d, "--log", "orders"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::{BufRead, Write};
        let mut stdin = child.stdin.take().unwrap();
        let mut acked = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        for i in 0..50 {
            writeln!(stdin, "{}", value(i)).unwrap();
            stdin.flush().unwrap();
            assert_eq!(acked.next().unwrap().unwrap(), i.to_string(), "offset acknowledged once durable");
        }
        // Killed while waiting for more input: no clean close.
        child.kill().unwrap();
        child.wait().unwrap();
    }
    damage_journal(&current_journal(dir.path()), "cut to 7 bytes");
    let verify = tern(&["verify", "--dir", d]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    assert!(text(&verify).contains("may be missing"), "{}", text(&verify));
    let read = tern(&["read", "--dir", d, "--log", "orders"]);
    assert!(!read.status.success());
    assert!(text(&read).contains("journal file") && text(&read).contains("damaged"), "{}", text(&read));
    let repair = tern(&["repair", "--dir", d, "--journal"]);
    assert!(repair.status.success(), "{}", text(&repair));
    assert!(text(&repair).contains("moved"), "{}", text(&repair));
    let verify = tern(&["verify", "--dir", d]);
    assert!(verify.status.success(), "{}", text(&verify));
    // The process died, the machine did not: its segment writes are in the page cache.
    let read = tern(&["read", "--dir", d, "--log", "orders"]);
    assert!(read.status.success(), "{}", text(&read));
    assert_eq!(records(&read).into_iter().map(|(_, v)| v).collect::<Vec<_>>(), (0..50).map(value).collect::<Vec<_>>());
}

/// One case of segment damage: `verify` and `read` both fail, naming `names`, and `append`
/// refuses the log; `repair` then reports `reports` and the log reads back exactly `kept`.
fn segment_case(what: &str, damage: impl Fn(&[PathBuf]), names: &str, reports: &[&str], kept: std::ops::Range<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let segments = closed_log(dir.path(), 1000);
    let d = dir.path().to_str().unwrap();
    damage(&segments);
    let verify = tern(&["verify", "--dir", d]);
    assert_eq!(verify.status.code(), Some(1), "{what}: {}", text(&verify));
    assert!(text(&verify).contains(names), "{what}: verify: {}", text(&verify));
    let read = tern(&["read", "--dir", d, "--log", "orders"]);
    assert!(!read.status.success(), "{what}: read: {}", text(&read));
    assert!(text(&read).contains(names), "{what}: read: {}", text(&read));
    let append = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["append", "--dir", d, "--log", "orders"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!append.status.success(), "{what}: append on a damaged log");
    let repair = tern(&["repair", "--dir", d, "--log", "orders"]);
    assert!(repair.status.success(), "{what}: {}", text(&repair));
    for report in reports {
        assert!(text(&repair).contains(report), "{what}: repair says {}", text(&repair));
    }
    let verify = tern(&["verify", "--dir", d]);
    assert!(verify.status.success(), "{what}: after repair: {}", text(&verify));
    let read = tern(&["read", "--dir", d, "--log", "orders"]);
    assert!(read.status.success(), "{what}: after repair: {}", text(&read));
    let got = records(&read);
    let want: Vec<(u64, String)> = kept.clone().map(|i| (i, value(i))).collect();
    assert_eq!(got, want, "{what}");
    // Appends go on where the repaired log ends.
    let engine = Engine::open(dir.path(), small_segments()).unwrap();
    assert_eq!(engine.existing_log("orders").unwrap().append(&[b"after"], Durability::Local).unwrap().start, kept.end);
}

fn base_of(segment: &Path) -> u64 {
    segment.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

#[test]
fn missing_segments_are_errors_in_verify_and_read_alike_and_repair_says_what_it_removed() {
    let probe = tempfile::tempdir().unwrap();
    let segments = closed_log(probe.path(), 1000);
    let (second, middle, last) = (base_of(&segments[1]), base_of(&segments[2]), base_of(&segments[segments.len() - 1]));
    let name = |base: u64| tern_segment::segment::segment_file_name(base);
    segment_case(
        "first segment deleted",
        |s| std::fs::remove_file(&s[0]).unwrap(),
        &name(0),
        &[&format!("removed offsets 0..{second} ({second} records)"), &format!("starts at offset {second}")],
        second..1000,
    );
    segment_case(
        "last segment deleted",
        |s| std::fs::remove_file(s.last().unwrap()).unwrap(),
        &name(last),
        &[&format!("now ends at offset {last}"), &format!("removed offsets {last}..1000 ({} records)", 1000 - last)],
        0..last,
    );
    segment_case(
        "a middle segment deleted",
        |s| std::fs::remove_file(&s[2]).unwrap(),
        &name(middle),
        &[
            &format!("now ends at offset {middle}"),
            &format!("removed offsets {middle}..1000 ({} records)", 1000 - middle),
        ],
        0..middle,
    );
    segment_case(
        "the first segment cut to 0 bytes",
        |s| std::fs::write(&s[0], b"").unwrap(),
        &name(0),
        &[&format!("removed offsets 0..{second}")],
        second..1000,
    );
}

#[test]
fn damaged_headers_are_rebuilt_and_damage_in_the_last_segment_is_cut_with_an_exact_count() {
    let probe = tempfile::tempdir().unwrap();
    let segments = closed_log(probe.path(), 1000);
    let last = base_of(&segments[segments.len() - 1]);
    let name = |base: u64| tern_segment::segment::segment_file_name(base);
    let second = base_of(&segments[1]);
    segment_case(
        "a damaged segment header",
        |s| {
            let mut bytes = std::fs::read(&s[1]).unwrap();
            bytes[..32].fill(0);
            std::fs::write(&s[1], bytes).unwrap();
        },
        &name(second),
        &["rebuilt the header", "now holds offsets 0..1000"],
        0..1000,
    );
    // A record a few frames into the last segment.
    let damaged = last + 3;
    segment_case(
        "damage inside the last segment",
        |s| {
            let path = s.last().unwrap();
            let mut bytes = std::fs::read(path).unwrap();
            // After the 32-byte header, frames of one record each, all of one size.
            let one = u32::from_le_bytes(bytes[32..36].try_into().unwrap()) as usize + 8;
            bytes[32 + 3 * one + 70] ^= 0x10;
            std::fs::write(path, bytes).unwrap();
        },
        &name(last),
        &[
            &format!("now ends at offset {damaged}"),
            &format!("removed offsets {damaged}..1000 ({} records)", 1000 - damaged),
        ],
        0..damaged,
    );
}

/// A damaged index is derived data: `verify` notes it and passes, `read` succeeds, and the next
/// open rebuilds it, so that it is not even noted afterwards.
#[test]
fn a_damaged_index_is_noted_rebuilt_by_the_next_open_and_never_blocks_a_read() {
    let dir = tempfile::tempdir().unwrap();
    let segments = closed_log(dir.path(), 1000);
    let d = dir.path().to_str().unwrap();
    let index = segments[1].with_extension("idx");
    let mut bytes = std::fs::read(&index).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&index, bytes).unwrap();
    let verify = tern(&["verify", "--dir", d]);
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(text(&verify).contains("note:"), "{}", text(&verify));
    let read = tern(&["read", "--dir", d, "--log", "orders"]);
    assert!(read.status.success(), "{}", text(&read));
    assert_eq!(records(&read).len(), 1000);
    let verify = tern(&["verify", "--dir", d]);
    assert!(verify.status.success() && !text(&verify).contains("note:"), "{}", text(&verify));
}
