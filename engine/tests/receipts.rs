//! Durability receipts, watermarks and metrics of a three-node cluster in this process: every
//! acknowledgement says what it achieved, each log's three watermarks say what every ack
//! promised, and a reader sees committed records unless it asks for more.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tern_replication::codec;
use tern_replication::driver::{Client, LogMetrics, Receipt, Role, Server, ServerConfig};
use tern_replication::message::{Acks, Message};

mod common;
use common::any_port;

const LOG: &str = "events";

fn node(dir: &Path, id: u64, role: Role, peers: Vec<(u64, SocketAddr)>, listen: SocketAddr) -> Server {
    node_with(dir, id, role, peers, listen, Some(256 << 20))
}

fn node_with(
    dir: &Path,
    id: u64,
    role: Role,
    peers: Vec<(u64, SocketAddr)>,
    listen: SocketAddr,
    quorum_lag_bytes_max: Option<u64>,
) -> Server {
    let config = ServerConfig {
        commit_timeout: Duration::from_millis(500),
        quorum_lag_bytes_max,
        ..common::config(0x5ec, id, role, peers, listen)
    };
    common::start(dir, tern::Config::default(), config)
}

/// Waits up to 10 s.
fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    common::eventually(what, Duration::from_secs(10), f)
}

fn log_metrics(server: &Server) -> LogMetrics {
    common::log_metrics(server, LOG)
}

fn records(n: usize, tag: &str) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(format!("{tag}-{i}"))).collect()
}

#[test]
fn receipts_say_what_was_achieved_and_watermarks_what_was_promised() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let f2 = node(dirs[1].path(), 2, Role::Follower, vec![], any_port());
    let f3 = node(dirs[2].path(), 3, Role::Follower, vec![], any_port());
    let f3_addr = f3.local_addr();
    let leader = node(dirs[0].path(), 1, Role::Leader, vec![(2, f2.local_addr()), (3, f3_addr)], any_port());
    let mut client = Client::connect(leader.local_addr()).unwrap();

    // Quorum: synced on at least two of three nodes.
    let r = client.append_acks(LOG, records(10, "q"), Acks::Quorum).unwrap();
    assert_eq!((r.start, r.end, r.durability, r.nodes), (0, 10, Acks::Quorum, 3));
    assert!(r.copies >= 2, "a quorum receipt names at least two copies: {r:?}");
    let m = log_metrics(&leader);
    assert!(m.commit_end >= 10 && m.durable_end >= m.commit_end && m.written_end >= m.durable_end, "{m:?}");

    // Leader: synced here; the receipt reports quorum only if the commit point already passed.
    let r = client.append_acks(LOG, records(5, "l"), Acks::Leader).unwrap();
    assert!(r.durability >= Acks::Leader && r.copies >= 1, "{r:?}");
    assert!(log_metrics(&leader).durable_end >= 15);

    // Written: acknowledged before any sync, and synced soon after by the node itself.
    let r = client.append_acks(LOG, records(5, "w"), Acks::Written).unwrap();
    assert_eq!((r.start, r.end), (15, 20));
    assert!(r.durability >= Acks::Written, "{r:?}");
    eventually("the written-only batch to be synced and committed", || {
        let m = log_metrics(&leader);
        (m.durable_end >= 20 && m.commit_end >= 20).then_some(())
    });

    // Followers: fsync-batched apply, counted.
    eventually("both followers to report their syncs", || {
        let (a, b) = (log_metrics(&f2), log_metrics(&f3));
        (a.records_synced >= 20 && b.records_synced >= 20).then_some(())
    });
    let m = log_metrics(&f2);
    assert!(m.follower_syncs >= 1 && m.chunks_applied >= 1 && m.bytes_applied > 0, "{m:?}");
    for f in [&f2, &f3] {
        assert_eq!(log_metrics(f).records_cut, 0, "a follower of a leader that never restarted cut records");
    }
    let peers = log_metrics(&leader).peers;
    assert_eq!(peers.len(), 2);
    for p in &peers {
        assert!(p.shipped_raw_bytes > 0 && p.shipped_wire_bytes > 0 && p.chunks_shipped >= 1, "{p:?}");
    }

    // With both followers gone, a leader-acked batch is on the leader's disk but not committed:
    // a committed read stops before it, an uncommitted one sees it, a quorum append fails.
    f2.stop();
    f3.stop();
    let r = client.append_acks(LOG, records(3, "alone"), Acks::Leader).unwrap();
    assert_eq!((r.start, r.end, r.durability, r.copies, r.nodes), (20, 23, Acks::Leader, 1, 3));
    let err = client.append_acks(LOG, records(1, "refused"), Acks::Quorum).unwrap_err();
    assert!(err.to_string().contains("not yet on a quorum"), "{err}");
    let (_, commit, committed) = client.read_from(LOG, 0, 1000, false).unwrap();
    assert_eq!((commit, committed.len()), (20, 20), "committed reads stop at the commit point");
    let (_, _, all) = client.read_from(LOG, 0, 1000, true).unwrap();
    assert_eq!(all.len(), 24, "uncommitted reads see everything the leader holds");
    assert_eq!(all[22], Bytes::from("alone-2"));
    let m = log_metrics(&leader);
    assert_eq!((m.written_end, m.durable_end, m.commit_end), (24, 24, 20));
    for p in &m.peers {
        assert!(!p.connected && p.lag_records == 4 && p.lag_bytes > 0, "{p:?}");
    }
    // The lag in time is the age of the oldest record a follower lacks: it grows while they are
    // away.
    eventually("the followers' lag in time to grow", || {
        log_metrics(&leader).peers.iter().all(|p| (20..60_000).contains(&p.lag_ms)).then_some(())
    });

    // A follower that comes back catches up, and the commit point passes everything.
    let f3 = node(dirs[2].path(), 3, Role::Follower, vec![], f3_addr);
    eventually("the commit point to pass the records written while alone", || {
        (log_metrics(&leader).commit_end >= 24).then_some(())
    });
    let p = log_metrics(&leader).peers.into_iter().find(|p| p.node == 3).unwrap();
    assert_eq!((p.lag_records, p.lag_bytes, p.lag_ms), (0, 0, 0), "{p:?}");
    leader.stop();
    f3.stop();
}

#[test]
fn producers_wait_when_the_quorum_falls_behind_the_bound_and_go_on_once_it_catches_up() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let bound = 256 << 10;
    let f2 = node_with(dirs[1].path(), 2, Role::Follower, vec![], any_port(), Some(bound));
    let f3 = node_with(dirs[2].path(), 3, Role::Follower, vec![], any_port(), Some(bound));
    let f2_addr = f2.local_addr();
    let peers = vec![(2, f2_addr), (3, f3.local_addr())];
    let leader = node_with(dirs[0].path(), 1, Role::Leader, peers, any_port(), Some(bound));
    let mut client = Client::connect(leader.local_addr()).unwrap();
    let batch = || vec![Bytes::from(vec![7u8; 16 << 10])];
    client.append_acks(LOG, batch(), Acks::Quorum).unwrap();
    // No quorum: leader-acked appends go on until the uncommitted bytes pass the bound, then
    // wait and are refused, naming the bound.
    f2.stop();
    f3.stop();
    let mut accepted = 0u64;
    let refused = loop {
        match client.append_acks(LOG, batch(), Acks::Leader) {
            Ok(_) => accepted += 16 << 10,
            Err(e) => break e.to_string(),
        }
        assert!(accepted < 1 << 20, "appends went on far past the bound");
    };
    assert!(refused.contains("not yet on a quorum (the bound is 262144)"), "{refused}");
    // The lag is counted to the sparse index's precision (64 KiB by default).
    assert!(accepted + (64 << 10) >= bound, "refused well before the bound: {accepted} bytes accepted");
    // A quorum again (leader and node 2): the backlog commits and appends go on.
    let _f2 = node_with(dirs[1].path(), 2, Role::Follower, vec![], f2_addr, Some(bound));
    let r = eventually("appends to be accepted again", || client.append_acks(LOG, batch(), Acks::Quorum).ok());
    assert_eq!(r.durability, Acks::Quorum);
}

#[test]
fn a_stopped_node_lets_go_of_its_directory_at_once() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20 {
        let node = node(dir.path(), 1, Role::Leader, vec![], any_port());
        // A client connection is open while the node stops: its thread must have let go of
        // the engine by the time `stop` returns.
        let mut client = Client::connect(node.local_addr()).unwrap();
        client.append_acks(LOG, records(1, "r"), Acks::Leader).unwrap();
        node.stop();
        let engine = tern::Engine::open(dir.path(), tern::Config::default());
        assert!(engine.is_ok(), "round {round}: the directory is still held: {:?}", engine.err());
    }
}

/// Sends `requests` in one write, as a client that does not wait between them.
fn send_all(stream: &mut std::net::TcpStream, requests: &[Message]) {
    let mut out = Vec::new();
    for msg in requests {
        codec::encode(msg, &mut out);
    }
    stream.write_all(&out).unwrap();
}

/// The next whole reply on `stream`.
fn next_reply(stream: &mut std::net::TcpStream, buffered: &mut Vec<u8>) -> Message {
    loop {
        if let Some((msg, used)) = codec::decode(&Bytes::copy_from_slice(buffered)).unwrap() {
            buffered.drain(..used);
            return msg;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the node closed the connection");
        buffered.extend_from_slice(&chunk[..n]);
    }
}

fn append(acks: Acks, tag: &str) -> Message {
    Message::ClientAppend { log: LOG.into(), acks, records: records(1, tag) }
}

#[test]
fn requests_sent_without_waiting_are_answered_in_order_and_a_waiting_append_holds_up_no_reading() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (f2_addr, f3_addr) = (common::free_addr(), common::free_addr());
    let leader = node(dirs[0].path(), 1, Role::Leader, vec![(2, f2_addr), (3, f3_addr)], any_port());
    let mut stream = std::net::TcpStream::connect(leader.local_addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buffered = Vec::new();

    // No follower is up: the quorum append waits for its commit timeout (500 ms) and is
    // refused. The requests after it are handled meanwhile (the leader-acked one is synced
    // and both reach the log), but their replies wait for it.
    let started = std::time::Instant::now();
    let status = Message::ClientStatus;
    send_all(&mut stream, &[append(Acks::Quorum, "q"), status, append(Acks::Leader, "l")]);
    match next_reply(&mut stream, &mut buffered) {
        Message::Refuse { reason } => assert!(reason.contains("not yet on a quorum"), "{reason}"),
        other => panic!("expected the quorum append to be refused, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(450), "refused before its commit timeout");
    assert!(matches!(next_reply(&mut stream, &mut buffered), Message::ClientStatusReply { .. }));
    match next_reply(&mut stream, &mut buffered) {
        Message::ClientAppended { start: 1, end: 2, durability: Acks::Leader, .. } => {}
        other => panic!("expected the leader-acked append of offset 1, got {other:?}"),
    }

    // With the followers up, a run of quorum appends, a read and a written-only append sent at
    // once: every reply in request order, offsets in order.
    let _f2 = node(dirs[1].path(), 2, Role::Follower, vec![], f2_addr);
    let _f3 = node(dirs[2].path(), 3, Role::Follower, vec![], f3_addr);
    eventually("the followers to catch up", || (log_metrics(&leader).commit_end >= 2).then_some(()));
    let mut requests: Vec<Message> = (0..20).map(|i| append(Acks::Quorum, &format!("p{i}"))).collect();
    requests.insert(10, Message::ClientRead { log: LOG.into(), from: 0, max: 1000, uncommitted: true, wait_ms: 0 });
    requests.push(append(Acks::Written, "w"));
    send_all(&mut stream, &requests);
    let mut next_offset = 2;
    for (i, request) in requests.iter().enumerate() {
        match (request, next_reply(&mut stream, &mut buffered)) {
            (Message::ClientAppend { acks, .. }, Message::ClientAppended { start, end, durability, .. }) => {
                assert_eq!((start, end), (next_offset, next_offset + 1), "reply {i}");
                assert!(durability >= *acks, "reply {i}: {durability:?} for {acks:?}");
                next_offset = end;
            }
            (Message::ClientRead { .. }, Message::ClientRecords { records, .. }) => {
                assert_eq!(records.len(), 12, "the read sees the ten appends sent before it");
            }
            (request, reply) => panic!("reply {i}: {reply:?} to {request:?}"),
        }
    }
}

#[test]
fn an_append_waiting_for_its_quorum_when_the_node_stops_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        commit_timeout: Duration::from_secs(60),
        ..common::config(0x5ec, 1, Role::Leader, vec![(2, common::free_addr()), (3, common::free_addr())], any_port())
    };
    let leader = common::start(dir.path(), tern::Config::default(), config);
    let mut stream = std::net::TcpStream::connect(leader.local_addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    send_all(&mut stream, &[append(Acks::Quorum, "q")]);
    eventually("the append to be on the leader's disk", || {
        leader.metrics().logs.iter().any(|l| l.log == LOG && l.durable_end >= 1).then_some(())
    });
    leader.stop();
    match next_reply(&mut stream, &mut Vec::new()) {
        Message::Refuse { reason } => {
            assert!(reason.contains("offsets 0..1 are on the leader's disk but not yet on a quorum"), "{reason}");
            assert!(reason.contains("the node is stopping"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_client_that_stops_reading_its_replies_holds_up_no_one_else() {
    let dir = tempfile::tempdir().unwrap();
    // Its follower is never started: quorum appends wait for their 3 s commit timeout.
    let config = ServerConfig {
        commit_timeout: Duration::from_secs(3),
        ..common::config(0x5ec, 1, Role::Leader, vec![(2, common::free_addr())], any_port())
    };
    let leader = common::start(dir.path(), tern::Config::default(), config);
    let mut other = Client::connect(leader.local_addr()).unwrap();
    let big: Vec<Bytes> = (0..32).map(|i| Bytes::from(vec![i as u8; 64 << 10])).collect();
    other.append_acks(LOG, big.clone(), Acks::Leader).unwrap();

    // A client sends a quorum append and then reads of 32 MiB in all, and reads nothing back.
    // Their replies queue behind the append's, and are ready when the tick thread refuses it.
    let mut stuck = std::net::TcpStream::connect(leader.local_addr()).unwrap();
    let mut requests = vec![append(Acks::Quorum, "stuck")];
    requests.extend((0..16).map(|_| Message::ClientRead {
        log: LOG.into(),
        from: 0,
        max: 1000,
        uncommitted: true,
        wait_ms: 0,
    }));
    send_all(&mut stuck, &requests);
    eventually("the stuck client's append to be written", || {
        leader.metrics().logs.iter().any(|l| l.log == LOG && l.written_end >= 33).then_some(())
    });

    // Another client's quorum append is still refused on time: the thread answering both
    // does not wait for the first client to read.
    other.set_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = std::time::Instant::now();
    let err = other.append_acks(LOG, records(1, "other"), Acks::Quorum).unwrap_err();
    assert!(err.to_string().contains("not yet on a quorum"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "refused only after {:?}", started.elapsed());

    // Everything the stuck client asked for is there, in order, once it reads.
    stuck.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buffered = Vec::new();
    assert!(matches!(next_reply(&mut stuck, &mut buffered), Message::Refuse { .. }));
    for i in 0..16 {
        match next_reply(&mut stuck, &mut buffered) {
            Message::ClientRecords { start: 0, records, .. } => assert_eq!(records[..32], big[..], "read {i}"),
            other => panic!("read {i}: {other:?}"),
        }
    }
    leader.stop();
}

#[test]
fn a_waiting_read_answers_once_a_record_is_committed_on_the_leader_and_on_a_follower() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let f2 = node(dirs[1].path(), 2, Role::Follower, vec![], any_port());
    let f3 = node(dirs[2].path(), 3, Role::Follower, vec![], any_port());
    let leader = node(dirs[0].path(), 1, Role::Leader, vec![(2, f2.local_addr()), (3, f3.local_addr())], any_port());
    let mut writer = Client::connect(leader.local_addr()).unwrap();
    writer.append_acks(LOG, records(3, "before"), Acks::Quorum).unwrap();
    eventually("the follower to know the commit point", || (log_metrics(&f2).commit_end >= 3).then_some(()));

    // Nothing from offset 3 yet: a read with a wait is answered empty once the wait is over.
    let mut reader = Client::connect(leader.local_addr()).unwrap();
    let started = std::time::Instant::now();
    let (start, _, none) = reader.read_wait(LOG, 3, 10, false, Duration::from_millis(300)).unwrap();
    assert_eq!((start, none.len()), (3, 0));
    assert!(started.elapsed() >= Duration::from_millis(300), "answered after {:?}", started.elapsed());

    // Readers on the leader and on a follower wait; an append wakes both as soon as it is
    // committed (the leader's at once, the follower's when the next append or heartbeat
    // brings it the commit point: within 100 ms), long before their 20 s are over.
    let waiting: Vec<_> = [leader.local_addr(), f2.local_addr()]
        .into_iter()
        .map(|addr| {
            std::thread::spawn(move || {
                let mut reader = Client::connect(addr).unwrap();
                let started = std::time::Instant::now();
                let got = reader.read_wait(LOG, 3, 10, false, Duration::from_secs(20)).unwrap();
                (got, started.elapsed())
            })
        })
        .collect();
    for server in [&leader, &f2] {
        eventually("the read to wait", || (server.metrics().reads_waiting == 1).then_some(()));
    }
    writer.append_acks(LOG, records(2, "after"), Acks::Quorum).unwrap();
    for handle in waiting {
        let ((start, _, got), took) = handle.join().unwrap();
        assert_eq!((start, got), (3, records(2, "after")));
        assert!(took < Duration::from_secs(10), "answered only after {took:?}");
    }
    assert_eq!(leader.metrics().reads_waiting, 0);
    leader.stop();
    f2.stop();
    f3.stop();
}

#[test]
fn concurrent_appends_each_get_their_own_records_at_the_offsets_their_receipts_name() {
    // Appends arriving together are written as one batch on the leader; each must still get
    // the offsets of exactly its own records, on every node.
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let f2 = node(dirs[1].path(), 2, Role::Follower, vec![], any_port());
    let f3 = node(dirs[2].path(), 3, Role::Follower, vec![], any_port());
    let leader = node(dirs[0].path(), 1, Role::Leader, vec![(2, f2.local_addr()), (3, f3.local_addr())], any_port());
    let addr = leader.local_addr();
    let sent: Vec<Vec<(Receipt, Vec<Bytes>)>> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..8)
            .map(|w| {
                s.spawn(move || {
                    let mut client = Client::connect(addr).unwrap();
                    (0..40)
                        .map(|i| {
                            let batch = records(1 + (w + i) % 4, &format!("w{w}-a{i}"));
                            (client.append_acks(LOG, batch.clone(), Acks::Quorum).unwrap(), batch)
                        })
                        .collect()
                })
            })
            .collect();
        writers.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let end = sent.iter().flatten().map(|(r, _)| r.end).max().unwrap();
    for server in [&leader, &f2, &f3] {
        eventually("the node to hold every record", || (log_metrics(server).durable_end >= end).then_some(()));
        let mut reader = Client::connect(server.local_addr()).unwrap();
        let (_, _, all) = reader.read_from(LOG, 0, u32::MAX, true).unwrap();
        assert_eq!(all.len() as u64, end, "every offset holds exactly one record");
        for (receipt, batch) in sent.iter().flatten() {
            let got = &all[receipt.start as usize..receipt.end as usize];
            assert_eq!(
                got,
                batch.as_slice(),
                "node {:?}: records at {}..{}",
                server.local_addr(),
                receipt.start,
                receipt.end
            );
        }
    }
    for server in [leader, f2, f3] {
        server.stop();
    }
}

/// Control records (a leader's record at the start of its epoch) take offsets, ship and commit
/// like any other, but a reader never gets one: a reply is a run of consecutive records from
/// its `start`, past control records that come first and ending before one that comes later,
/// and a reader that goes on from `start` + its count gets every record at its offset.
#[test]
fn readers_skip_control_records_and_go_on_from_each_replys_start() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let follower = node(dirs[1].path(), 2, Role::Follower, vec![], any_port());
    let engine = std::sync::Arc::new(tern::Engine::open(dirs[0].path(), tern::Config::default()).unwrap());
    let control = tern_wal::AppendOptions { control: true, ..tern_wal::AppendOptions::default() };
    let mark = || {
        let marker = tern_wal::Record { key: Some(b"tern.epoch"), value: b"", timestamp_ms: tern_wal::now_ms() };
        let appended = engine.log(LOG).unwrap().append_records(&[marker], control).unwrap();
        appended.wait(tern_wal::Durability::Local).unwrap()
    };
    // Offsets: control 0, a-0 a-1 at 1 and 2, control 3 and 4, b-0 at 5, control 6.
    assert_eq!(mark(), 0..1);
    let config = common::config(0x5ec, 1, Role::Leader, vec![(2, follower.local_addr())], any_port());
    let leader = Server::start(config, std::sync::Arc::new(tern::EngineLogs(engine.clone()))).unwrap();
    let mut client = Client::connect(leader.local_addr()).unwrap();
    assert_eq!(client.append_acks(LOG, records(2, "a"), Acks::Quorum).unwrap().start, 1);
    assert_eq!((mark(), mark()), (3..4, 4..5));
    assert_eq!(client.append_acks(LOG, records(1, "b"), Acks::Quorum).unwrap().start, 5);
    assert_eq!(mark(), 6..7);
    for server in [&leader, &follower] {
        eventually("the control records to commit", || (log_metrics(server).commit_end == 7).then_some(()));
    }
    for server in [&leader, &follower] {
        let mut reader = Client::connect(server.local_addr()).unwrap();
        // A run starts past the control record at 0 and ends before the one at 3.
        assert_eq!(reader.read(LOG, 0, 100).unwrap(), (1, 7, records(2, "a")));
        assert_eq!(reader.read(LOG, 2, 100).unwrap(), (2, 7, records(2, "a")[1..].to_vec()));
        assert_eq!(reader.read(LOG, 3, 100).unwrap(), (5, 7, records(1, "b")));
        // With nothing but control records left, the reply is empty and says where to go on.
        assert_eq!(reader.read(LOG, 6, 100).unwrap(), (7, 7, Vec::new()));
        let everything = common::read_log(server.local_addr(), LOG, false).unwrap();
        let want = [(1, "a-0"), (2, "a-1"), (5, "b-0")].map(|(o, v)| (o, Bytes::from(v)));
        assert_eq!(everything.into_iter().collect::<Vec<_>>(), want);
    }
    leader.stop();
    follower.stop();
}

/// A read's reply holds at most `max` records and 16 MiB of values, and a record as large as
/// the largest one a log takes by default comes alone.
#[test]
fn a_read_reply_is_bounded_by_count_and_bytes_and_holds_at_least_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let leader = node(dir.path(), 1, Role::Leader, vec![], any_port());
    let mut client = Client::connect(leader.local_addr()).unwrap();
    let eight = |tag: u8| Bytes::from(vec![tag; 8 << 20]);
    for tag in 0..3 {
        client.append_acks(LOG, vec![eight(tag)], Acks::Leader).unwrap();
    }
    let sizes = |records: Vec<Bytes>| records.iter().map(|r| (r[0], r.len())).collect::<Vec<_>>();
    // Two of 8 MiB make exactly 16 MiB; a third would go past.
    let (start, _, records) = client.read_from(LOG, 0, 100, true).unwrap();
    assert_eq!((start, sizes(records)), (0, vec![(0, 8 << 20), (1, 8 << 20)]));
    let (start, _, records) = client.read_from(LOG, 0, 1, true).unwrap();
    assert_eq!((start, sizes(records)), (0, vec![(0, 8 << 20)]));
    let (start, _, records) = client.read_from(LOG, 2, 100, true).unwrap();
    assert_eq!((start, sizes(records)), (2, vec![(2, 8 << 20)]));
    // A record as large as the bound comes alone.
    let largest = Bytes::from(vec![9; 16 << 20]);
    client.append_acks(LOG, vec![Bytes::from_static(b"small"), largest], Acks::Leader).unwrap();
    let (start, _, records) = client.read_from(LOG, 3, 100, true).unwrap();
    assert_eq!((start, sizes(records)), (3, vec![(b's', 5)]));
    let (start, _, records) = client.read_from(LOG, 4, 100, true).unwrap();
    assert_eq!((start, sizes(records)), (4, vec![(9, 16 << 20)]));
    leader.stop();
}
