//! Idempotent producers: a batch sent again with the same producer id and sequence (after a
//! broken connection, a lost reply or a leader restart) is stored once and answered with the
//! offsets it was first written at; `Producer` and `tern append --server A,B,..` send every
//! unacknowledged batch again after a failure, move on from a follower, and, when every node
//! fails for too long, exit naming the batches in doubt.
//!
//! Connections are cut by a small proxy in this file at byte counts the test chooses (in the
//! middle of a request, or in the middle of a reply, whose request the leader has then
//! handled), so each run cuts the same places.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tern_replication::driver::{Client, Producer, ProducerConfig, Role, Server};
use tern_replication::message::Acks;
use tern_replication::proto::Quorum;

mod common;
use common::eventually;

const LOG: &str = "orders";
const CLUSTER_ID: u64 = 0x1de4;
/// Bytes of one `ClientAppended` wire frame: prefix 8, type 1, start 8, end 8, three bytes.
const REPLY_BYTES: usize = 28;

/// A leader alone (quorum 1: its own sync commits), on an engine in `dir`.
fn lone_leader(dir: &Path, listen: SocketAddr) -> Server {
    let mut config = common::config(CLUSTER_ID, 1, Role::Leader, vec![], listen);
    config.quorum = Quorum::Count(1);
    common::start(dir, tern::Config::default(), config)
}

fn records(tag: &str, count: usize) -> Vec<Bytes> {
    (0..count).map(|i| Bytes::from(format!("{tag}-{i}"))).collect()
}

/// Every record of the log the node at `addr` holds, written or committed.
fn read_all(addr: SocketAddr) -> Vec<Bytes> {
    let mut client = Client::connect(addr).expect("connect to read");
    let mut all = Vec::new();
    loop {
        let (start, _, batch) = client.read_from(LOG, all.len() as u64, 10_000, true).expect("read");
        if batch.is_empty() {
            return all;
        }
        assert_eq!(start, all.len() as u64, "a read starts where it was asked to");
        all.extend(batch);
    }
}

// ---------------------------------------------------------------------------------------------
// A proxy that cuts connections where it is told to

/// Where one connection through the proxy is cut: once this many bytes went to the node, or
/// came back from it (the bytes up to there are forwarded, then both sides are shut).
#[derive(Debug, Clone, Copy, Default)]
struct Cut {
    to_node_bytes: Option<usize>,
    to_client_bytes: Option<usize>,
}

struct Proxy {
    addr: SocketAddr,
    /// Cuts for the next connections, in order; connections after these are not cut.
    cuts: Arc<Mutex<VecDeque<Cut>>>,
    /// Cuts made.
    cut: Arc<AtomicU64>,
    /// Takes every byte and forwards none, on new connections and on open ones.
    black_hole: Arc<AtomicBool>,
}

impl Proxy {
    fn start(node: SocketAddr, cuts: Vec<Cut>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            cuts: Arc::new(Mutex::new(cuts.into())),
            cut: Arc::new(AtomicU64::new(0)),
            black_hole: Arc::new(AtomicBool::new(false)),
        };
        let (cuts, cut, black_hole) = (proxy.cuts.clone(), proxy.cut.clone(), proxy.black_hole.clone());
        // Runs until the test process ends.
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if black_hole.load(Ordering::SeqCst) {
                    std::thread::spawn(move || swallow(client));
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(node) else { continue };
                let plan = cuts.lock().unwrap().pop_front().unwrap_or_default();
                let ends = [client.try_clone().unwrap(), upstream.try_clone().unwrap()];
                let (source, target) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                let (c, b, e) = (cut.clone(), black_hole.clone(), ends.each_ref().map(|s| s.try_clone().unwrap()));
                std::thread::spawn(move || pump(source, target, plan.to_node_bytes, &e, &c, &b));
                let (c, b) = (cut.clone(), black_hole.clone());
                std::thread::spawn(move || pump(upstream, client, plan.to_client_bytes, &ends, &c, &b));
            }
        });
        proxy
    }
}

/// Reads and drops everything until the end of the stream.
fn swallow(mut stream: TcpStream) {
    let mut buf = [0u8; 16 << 10];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

/// Forwards `source` to `target`, cutting both connections once `cut_at` bytes went through.
fn pump(
    mut source: TcpStream,
    mut target: TcpStream,
    cut_at: Option<usize>,
    ends: &[TcpStream; 2],
    cut: &AtomicU64,
    black_hole: &AtomicBool,
) {
    let mut forwarded = 0usize;
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if black_hole.load(Ordering::SeqCst) {
            continue;
        }
        let take = cut_at.map_or(n, |at| n.min(at - forwarded));
        if target.write_all(&buf[..take]).is_err() {
            break;
        }
        forwarded += take;
        if cut_at == Some(forwarded) {
            cut.fetch_add(1, Ordering::SeqCst);
            break;
        }
    }
    for end in ends {
        let _ = end.shutdown(Shutdown::Both);
    }
}

// ---------------------------------------------------------------------------------------------
// The leader: a batch sent again is stored once

#[test]
fn a_batch_sent_twice_is_stored_once_and_both_replies_name_the_same_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let leader = lone_leader(dir.path(), common::any_port());
    let addr = leader.local_addr();
    let mut first = Client::connect(addr).unwrap();
    first.append_acks(LOG, records("plain", 2), Acks::Leader).unwrap();
    let batch = records("once", 3);
    let stored = first.append_idempotent(LOG, batch.clone(), Acks::Quorum, 77, 0).unwrap();
    assert_eq!((stored.start, stored.end), (2, 5));
    // Again on the same connection, and on a new one (a retry after a broken connection).
    let again = first.append_idempotent(LOG, batch.clone(), Acks::Leader, 77, 0).unwrap();
    let mut second = Client::connect(addr).unwrap();
    let third = second.append_idempotent(LOG, batch.clone(), Acks::Quorum, 77, 0).unwrap();
    for reply in [again, third] {
        assert_eq!((reply.start, reply.end), (stored.start, stored.end), "a retry names the first offsets");
        assert!(reply.durability >= Acks::Leader, "answered at the durability asked: {reply:?}");
    }
    let mut expected = records("plain", 2);
    expected.extend(batch.clone());
    assert_eq!(read_all(addr), expected, "the batch is stored once");
    let metrics = common::log_metrics(&leader, LOG);
    assert_eq!((metrics.duplicate_batches, metrics.producers), (2, 1));

    // Another producer's sequence 0 is its own batch; the next sequence is new.
    let other = second.append_idempotent(LOG, records("other", 1), Acks::Leader, 78, 0).unwrap();
    assert_eq!((other.start, other.end), (5, 6));
    let next = first.append_idempotent(LOG, records("next", 1), Acks::Leader, 77, 1).unwrap();
    assert_eq!((next.start, next.end), (6, 7));
    // A sequence reused for a batch of another size is refused, not taken for a retry.
    let err = first.append_idempotent(LOG, records("once", 2), Acks::Leader, 77, 0).unwrap_err();
    assert!(err.to_string().contains("was written with 3 records"), "{err}");
    // Past the window the leader remembers, it cannot tell: refused, saying so.
    for sequence in 2..2 + tern_replication::producers::PRODUCER_BATCHES_KEPT as u64 {
        first.append_idempotent(LOG, records("more", 1), Acks::Written, 77, sequence).unwrap();
    }
    let err = first.append_idempotent(LOG, batch, Acks::Leader, 77, 0).unwrap_err();
    assert!(err.to_string().contains("older than the last 5 batches"), "{err}");
    assert_eq!(read_all(addr).len(), 7 + tern_replication::producers::PRODUCER_BATCHES_KEPT);
    leader.stop();
}

/// A `tern serve` leader alone on `dir`, listening on `addr`, once it takes connections.
fn serve(dir: &Path, addr: SocketAddr) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["serve", "--role", "leader", "--node-id", "1", "--listen", &addr.to_string(), "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tern serve");
    eventually("tern serve to take connections", Duration::from_secs(20), || Client::connect(addr).ok());
    child
}

#[test]
fn a_batch_sent_again_after_the_leader_restarts_is_still_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let addr = common::free_addr();
    let mut node = serve(dir.path(), addr);
    let mut client = Client::connect(addr).unwrap();
    let mut stored = Vec::new();
    for sequence in 0..4u64 {
        let batch = records(&format!("s{sequence}"), 1 + sequence as usize);
        stored.push(client.append_idempotent(LOG, batch, Acks::Leader, 9, sequence).unwrap());
    }
    // Killed, as a crash: nothing of the producer table can have been saved on the way out.
    node.kill().unwrap();
    node.wait().unwrap();
    let mut node = serve(dir.path(), addr);
    let mut client = Client::connect(addr).unwrap();
    // The last two batches sent again, as a producer whose replies were lost would.
    for sequence in 2..4u64 {
        let batch = records(&format!("s{sequence}"), 1 + sequence as usize);
        let again = client.append_idempotent(LOG, batch, Acks::Leader, 9, sequence).unwrap();
        let first = stored[sequence as usize];
        assert_eq!((again.start, again.end), (first.start, first.end), "sequence {sequence}");
    }
    let next = client.append_idempotent(LOG, records("s4", 1), Acks::Leader, 9, 4).unwrap();
    assert_eq!(next.start, stored[3].end, "a new batch goes after the others");
    let expected: Vec<Bytes> = (0..4).flat_map(|s| records(&format!("s{s}"), 1 + s)).chain(records("s4", 1)).collect();
    assert_eq!(read_all(addr), expected, "each batch stored once");
    let status: serde_json::Value = serde_json::from_str(&client.status().unwrap()).unwrap();
    let log = status["logs"].as_array().unwrap().iter().find(|l| l["log"] == LOG).unwrap().clone();
    assert_eq!((log["duplicate_batches"].as_u64(), log["producers"].as_u64()), (Some(2), Some(1)), "{log}");
    node.kill().unwrap();
    node.wait().unwrap();
}

/// The rebuild at start reads only the log's tail (`PRODUCER_SCAN_BYTES_MAX`): a producer whose
/// batch lies before it is forgotten (its batch sent again is taken as new), one in it is not.
#[test]
fn a_restarted_leader_remembers_the_producers_of_the_logs_tail_only() {
    let dir = tempfile::tempdir().unwrap();
    let addr = common::free_addr();
    let leader = lone_leader(dir.path(), addr);
    let mut client = Client::connect(addr).unwrap();
    let early = client.append_idempotent(LOG, records("early", 1), Acks::Leader, 1, 0).unwrap();
    // More than the scanned tail after it, in batches of 4 MiB.
    let filler = Bytes::from(vec![b'f'; 1 << 20]);
    let batches = tern_replication::driver::PRODUCER_SCAN_BYTES_MAX.div_ceil(4 << 20) + 2;
    for _ in 0..batches {
        client.append_acks(LOG, vec![filler.clone(); 4], Acks::Written).unwrap();
    }
    let late = client.append_idempotent(LOG, records("late", 1), Acks::Leader, 2, 0).unwrap();
    leader.stop();
    let leader = lone_leader(dir.path(), addr);
    let mut client = Client::connect(addr).unwrap();
    let again = client.append_idempotent(LOG, records("late", 1), Acks::Leader, 2, 0).unwrap();
    assert_eq!((again.start, again.end), (late.start, late.end), "a producer in the tail is remembered");
    let again = client.append_idempotent(LOG, records("early", 1), Acks::Leader, 1, 0).unwrap();
    assert_eq!(again.start, late.end, "a producer before the tail is forgotten: its batch is new");
    assert_ne!(again.start, early.start);
    assert_eq!(common::log_metrics(&leader, LOG).producers, 2);
    leader.stop();
}

// ---------------------------------------------------------------------------------------------
// The producer: cut connections, a follower first, every node lost

#[test]
fn a_producer_whose_connections_are_cut_stores_every_batch_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let leader = lone_leader(dir.path(), common::any_port());
    // Cut in the middle of a reply (the leader wrote the batch; the producer never hears of
    // it) and in the middle of a request, several times each.
    let reply_cut = |replies: usize| Cut { to_client_bytes: Some(replies * REPLY_BYTES + 13), ..Cut::default() };
    let request_cut = |bytes: usize| Cut { to_node_bytes: Some(bytes), ..Cut::default() };
    let cuts = vec![reply_cut(2), request_cut(1_000), reply_cut(0), request_cut(4_321), reply_cut(7), request_cut(77)];
    let planned = cuts.len() as u64;
    let proxy = Proxy::start(leader.local_addr(), cuts);
    let mut config = ProducerConfig::new(vec![proxy.addr], LOG);
    config.acks = Acks::Leader;
    let mut producer = Producer::new(config).unwrap();
    let mut sent = Vec::new();
    let mut acked = Vec::new();
    for sequence in 0..150usize {
        let batch = records(&format!("b{sequence}-{}", "x".repeat(sequence % 40)), 1 + sequence % 7);
        sent.extend(batch.clone());
        acked.extend(producer.send(batch).expect("the producer gets through"));
    }
    acked.extend(producer.flush().expect("the producer gets through"));
    assert_eq!(proxy.cut.load(Ordering::SeqCst), planned, "every planned cut happened");
    // Acknowledged in order, each batch right after the one before: nothing written twice.
    let mut end = 0;
    for (i, a) in acked.iter().enumerate() {
        assert_eq!(a.sequence, i as u64);
        assert_eq!(a.receipt.start, end, "batch {i} starts where the one before ended");
        assert_eq!(a.first_record, end, "one producer alone: its record count is the offset");
        end = a.receipt.end;
    }
    assert_eq!(acked.len(), 150);
    assert_eq!(read_all(leader.local_addr()), sent, "every record once, in order");
    let duplicates = common::log_metrics(&leader, LOG).duplicate_batches;
    assert!(duplicates >= 3, "a batch whose reply was cut is sent again and answered, not written: {duplicates}");
    leader.stop();
}

/// Runs `tern append` with `args`, feeding it lines through the returned sender (closing it
/// ends the input) and handing back its stdout lines as they come.
struct Append {
    child: Child,
    input: Option<std::process::ChildStdin>,
    printed: mpsc::Receiver<String>,
}

impl Append {
    fn start(args: &[String]) -> Append {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .arg("append")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tern append");
        let stdout = child.stdout.take().unwrap();
        let (tx, printed) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Append { input: child.stdin.take(), child, printed }
    }

    fn line(&mut self, text: &str) {
        let input = self.input.as_mut().unwrap();
        input.write_all(format!("{text}\n").as_bytes()).unwrap();
        input.flush().unwrap();
    }

    fn printed(&self) -> String {
        self.printed.recv_timeout(Duration::from_secs(20)).expect("tern append prints an offset")
    }

    /// Ends the input and waits for the exit: (success, stderr, lines printed not yet taken).
    fn finish(mut self) -> (bool, String, Vec<String>) {
        drop(self.input.take());
        let mut stderr = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        let status = self.child.wait().unwrap();
        // The reader thread ends with stdout; what it has not handed over yet follows.
        let rest = self.printed.iter().collect();
        (status.success(), stderr, rest)
    }
}

#[test]
fn tern_append_given_a_follower_first_stores_the_lines_on_the_leader() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (leader, follower) = common::leader_and_follower(&dirs, CLUSTER_ID);
    let servers = format!("{},{}", follower.local_addr(), leader.local_addr());
    let mut append = Append::start(&["--server".into(), servers, "--log".into(), LOG.into()]);
    for (i, text) in ["first", "second", "third"].into_iter().enumerate() {
        append.line(text);
        assert_eq!(append.printed(), i.to_string());
    }
    let (ok, stderr, rest) = append.finish();
    assert!(ok && rest.is_empty(), "tern append failed: {stderr} (and printed {rest:?})");
    assert!(stderr.contains("synced on a quorum (2 of 2 nodes)"), "{stderr}");
    assert_eq!(read_all(leader.local_addr()), vec!["first", "second", "third"]);
    // The follower refused them and took them from the leader: once.
    eventually("the follower to hold the lines", Duration::from_secs(10), || {
        (read_all(follower.local_addr()).len() == 3).then_some(())
    });
    leader.stop();
    follower.stop();
}

#[test]
fn tern_append_that_loses_every_node_exits_naming_the_batches_in_doubt() {
    let dir = tempfile::tempdir().unwrap();
    let leader = lone_leader(dir.path(), common::any_port());
    let proxy = Proxy::start(leader.local_addr(), vec![]);
    let nowhere = common::free_addr();
    let args: Vec<String> = ["--server", &format!("{},{nowhere}", proxy.addr), "--log", LOG]
        .into_iter()
        .map(String::from)
        .chain(["--acks", "leader", "--give-up-after-ms", "3000", "--producer-id", "4242"].map(String::from))
        .collect();
    let mut append = Append::start(&args);
    // One line at a time, each acknowledged: batches 0, 1 and 2.
    for (i, text) in ["a", "b", "c"].into_iter().enumerate() {
        append.line(text);
        assert_eq!(append.printed(), i.to_string());
    }
    // The leader's side goes silent (the connection stays open, as with a hung node or a
    // partition), and the other address never answers: line 4 is sent and never acknowledged.
    proxy.black_hole.store(true, Ordering::SeqCst);
    append.line("d");
    let (ok, stderr, rest) = append.finish();
    assert!(!ok, "tern append succeeded without an acknowledgement: {stderr}");
    assert!(stderr.contains(&format!("lost node {}", proxy.addr)), "names the node it lost: {stderr}");
    assert!(stderr.contains(&nowhere.to_string()), "names every address it tried: {stderr}");
    assert!(stderr.contains("in doubt"), "{stderr}");
    assert!(stderr.contains("producer id 4242"), "{stderr}");
    assert!(stderr.contains("sequence 3 (line 4)"), "names the batch in doubt by sequence and line: {stderr}");
    assert!(!stderr.contains("failed to fill whole buffer"), "{stderr}");
    assert!(rest.is_empty(), "an offset printed for the line in doubt: {rest:?}");
    leader.stop();
}
