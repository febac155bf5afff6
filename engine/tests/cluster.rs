//! Three `tern serve` processes over real TCP on loopback: a leader and two followers. A
//! follower is killed with SIGKILL mid-stream and restarted, several times; every append
//! acknowledged at quorum stays, and at the end all three logs are identical.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use tern_replication::driver::Client;

mod common;
use common::{eventually, free_addr};

fn serve(dir: &std::path::Path, addr: SocketAddr, id: u64, extra: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("serve")
        .arg("--dir")
        .arg(dir)
        .args(["--listen", &addr.to_string(), "--node-id", &id.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tern serve")
}

fn all_records(addr: SocketAddr) -> Option<(u64, Vec<Bytes>)> {
    let mut client = Client::connect(addr).ok()?;
    let mut out = Vec::new();
    let mut commit = 0;
    loop {
        let (start, c, records) = client.read("orders", out.len() as u64, 10_000).ok()?;
        commit = commit.max(c);
        if records.is_empty() {
            return Some((commit, out));
        }
        assert_eq!(start, out.len() as u64);
        out.extend(records);
    }
}

struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn quorum_acked_appends_survive_follower_sigkills_and_logs_converge() {
    let rounds: usize = std::env::var("TERN_CLUSTER_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let follower = |i: usize| serve(dirs[i].path(), addrs[i], i as u64 + 1, &["--role".into(), "follower".into()]);
    let peers = format!("2={},3={}", addrs[1], addrs[2]);
    let mut nodes = Nodes(vec![]);
    nodes.0.push(serve(
        dirs[0].path(),
        addrs[0],
        1,
        &["--role".into(), "leader".into(), "--peers".into(), peers, "--quorum".into(), "2".into()],
    ));
    nodes.0.push(follower(1));
    nodes.0.push(follower(2));
    let mut client = eventually("the leader to listen", Duration::from_secs(20), || Client::connect(addrs[0]).ok());
    let mut acked: Vec<Bytes> = Vec::new();
    let mut next = 0u64;
    for round in 0..rounds {
        for _ in 0..40 {
            let batch: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("r{round}-{next}-{i}"))).collect();
            let (start, end, durability) = client.append("orders", batch.clone(), true).expect("quorum append");
            assert_eq!((start, end, durability), (acked.len() as u64, acked.len() as u64 + 5, 2));
            acked.extend(batch);
            next += 1;
        }
        // Kill a follower mid-stream; the other one keeps the quorum.
        let victim = 1 + round % 2;
        nodes.0[victim].kill().unwrap();
        nodes.0[victim].wait().unwrap();
        for _ in 0..20 {
            let batch: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("r{round}-{next}-{i}"))).collect();
            client.append("orders", batch.clone(), true).expect("quorum append with one follower down");
            acked.extend(batch);
            next += 1;
        }
        nodes.0[victim] = follower(victim);
    }
    // Every node converges to the same log, holding every quorum-acked record.
    let target = acked.len() as u64;
    for addr in &addrs {
        let (commit, records) = eventually("convergence", Duration::from_secs(30), || {
            all_records(*addr).filter(|(commit, records)| *commit == target && records.len() as u64 == target)
        });
        assert_eq!(commit, target);
        assert_eq!(records, acked, "node at {addr} differs");
    }
}

#[test]
fn quorum_acked_appends_survive_leader_sigkills_and_logs_converge() {
    let rounds: usize = std::env::var("TERN_CLUSTER_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let peers = format!("2={},3={}", addrs[1], addrs[2]);
    let leader = || {
        serve(
            dirs[0].path(),
            addrs[0],
            1,
            &["--role".into(), "leader".into(), "--peers".into(), peers.clone(), "--quorum".into(), "2".into()],
        )
    };
    let mut nodes = Nodes(vec![leader()]);
    for i in 1..3 {
        nodes.0.push(serve(dirs[i].path(), addrs[i], i as u64 + 1, &["--role".into(), "follower".into()]));
    }
    // Each acknowledged batch: where the receipt put it, and its records.
    let mut acked: Vec<(u64, Vec<Bytes>)> = Vec::new();
    for round in 0..rounds {
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        // Four writers at once, with batches of 1 to 5 records: the leader writes the appends
        // that arrive together as one batch, and each receipt must still name its own records.
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let count = count.clone();
                let mut client =
                    eventually("the leader to listen", Duration::from_secs(20), || Client::connect(addrs[0]).ok());
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    for n in 0.. {
                        let len = 1 + (w + n) % 5;
                        let batch: Vec<Bytes> =
                            (0..len).map(|i| Bytes::from(format!("r{round}-w{w}-{n}-{i}"))).collect();
                        match client.append("orders", batch.clone(), true) {
                            Ok((start, end, 2)) if end == start + len => acked.push((start, batch)),
                            Ok(other) => panic!("a quorum append of {len} was acknowledged as {other:?}"),
                            Err(_) => return acked, // the leader was killed
                        }
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    acked
                })
            })
            .collect();
        // Kill the leader mid-stream, once some appends went through, and start it again.
        eventually("appends to be acknowledged", Duration::from_secs(30), || {
            (count.load(std::sync::atomic::Ordering::SeqCst) >= 30).then_some(())
        });
        nodes.0[0].kill().unwrap();
        nodes.0[0].wait().unwrap();
        for writer in writers {
            acked.extend(writer.join().unwrap());
        }
        nodes.0[0] = leader();
    }
    // All three logs converge to the same records, and every acknowledged batch is where its
    // receipt said. (Batches written but not acknowledged before a kill may be there too.)
    let mut client = eventually("the leader to listen", Duration::from_secs(20), || Client::connect(addrs[0]).ok());
    let (end, _, _) = eventually("a last quorum append", Duration::from_secs(30), || {
        client.append("orders", vec![Bytes::from_static(b"last")], true).ok()
    });
    let target = end + 1;
    let logs: Vec<Vec<Bytes>> = addrs
        .iter()
        .map(|addr| {
            eventually("convergence", Duration::from_secs(30), || {
                all_records(*addr)
                    .filter(|(commit, records)| *commit >= target && records.len() as u64 >= target)
                    .map(|(_, records)| records)
            })
        })
        .collect();
    assert_eq!(logs[0], logs[1], "node 2 differs from the leader");
    assert_eq!(logs[0], logs[2], "node 3 differs from the leader");
    for (start, batch) in &acked {
        let at = &logs[0][*start as usize..*start as usize + batch.len()];
        assert_eq!(at, &batch[..], "an acknowledged batch is not where its receipt put it");
    }
    assert!(acked.len() >= 30 * rounds, "only {} batches acknowledged", acked.len());
}

#[test]
fn tern_read_follow_prints_each_record_once_it_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _node = Nodes(vec![serve(dir.path(), addr, 1, &["--role".into(), "leader".into()])]);
    let mut client = eventually("the node to listen", Duration::from_secs(20), || Client::connect(addr).ok());
    client.append("orders", vec![Bytes::from("first")], true).unwrap();
    let mut follow = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["read", "--server", &addr.to_string(), "--log", "orders", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            if lines_tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let next = || lines.recv_timeout(Duration::from_secs(20)).expect("a line from tern read --follow");
    assert_eq!(next(), "0\tfirst");
    // Each append shows up while the reader waits, in order, once.
    for i in 1..=5 {
        client.append("orders", vec![Bytes::from(format!("later-{i}"))], true).unwrap();
        assert_eq!(next(), format!("{i}\tlater-{i}"));
    }
    follow.kill().unwrap();
    follow.wait().unwrap();
}
