//! Real `tern serve --cluster` processes on loopback, clients appending unique values with
//! quorum acks, and a nemesis that SIGKILLs the leader (restarting it later) or SIGSTOPs it past
//! the failure timeout and resumes it (a zombie of an old epoch). The checker: every
//! acknowledged value is in the log exactly once, at the offset its acknowledgement named, in
//! the same order on every node; no value appears that was not sent; no value appears twice
//! (the clients are idempotent producers, resending what they are unsure of).
//!
//! `TERN_NEMESIS_ROUNDS` (default 3) sets the rounds; `TERN_NEMESIS_NODES` 3 or 5;
//! `TERN_NEMESIS_FAULTS` `kill`, `pause` or `both` (the default, chosen by the seed);
//! `TERN_NEMESIS_VERBOSE` prints every node's lines after each round. Each round prints the
//! write pause: from the fault to the first append acknowledged by the next leader (clients
//! give up on a silent node after 1 s).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tern_replication::driver::{Client, Producer, ProducerConfig};

const LOG: &str = "nemesis";
const FAILURE_TIMEOUT_MS: u64 = 1000;

struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    addrs: BTreeMap<u64, SocketAddr>,
    children: BTreeMap<u64, Child>,
}

impl Cluster {
    fn spec(&self) -> String {
        self.addrs.iter().map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(",")
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.dirs[id as usize - 1].path().join("data")
    }

    /// Where node `id` writes its lines (kept across its restarts).
    fn log_file(&self, id: u64) -> PathBuf {
        self.dirs[id as usize - 1].path().join("serve.log")
    }

    /// Every node's lines and status, for a failure's report.
    fn lines(&self) -> String {
        let mut out = String::new();
        for (id, addr) in &self.addrs {
            let status = Client::connect(*addr).and_then(|mut c| {
                c.set_timeout(Some(Duration::from_millis(500)))?;
                c.status()
            });
            out.push_str(&format!("[node {id} status] {}\n", status.unwrap_or_else(|e| e.to_string())));
        }
        for id in self.addrs.keys() {
            let text = std::fs::read_to_string(self.log_file(*id)).unwrap_or_default();
            for line in text.lines().filter(|l| !l.contains("cannot connect")) {
                out.push_str(&format!("[node {id}] {line}\n"));
            }
        }
        out
    }

    fn start(&mut self, id: u64) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_file(id)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["serve", "--dir"])
            .arg(self.dir(id))
            .args(["--listen", &self.addrs[&id].to_string(), "--node-id", &id.to_string()])
            .args(["--cluster", &self.spec(), "--failure-timeout-ms", &FAILURE_TIMEOUT_MS.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tern serve");
        self.children.insert(id, child);
    }

    fn signal(&self, id: u64, signal: i32) {
        let pid = self.children[&id].id() as i32;
        // SAFETY: sending a signal to a child process this test spawned.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The node that says it leads, as its status shows.
    fn leader(&self) -> Option<u64> {
        for (id, addr) in &self.addrs {
            let Ok(mut client) = Client::connect(*addr) else { continue };
            let _ = client.set_timeout(Some(Duration::from_millis(500)));
            let Ok(text) = client.status() else { continue };
            let doc: serde_json::Value = serde_json::from_str(&text).ok()?;
            if doc["role"] == "leader" {
                return Some(*id);
            }
        }
        None
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.children.keys().copied().collect();
        for id in ids {
            self.signal(id, libc::SIGCONT);
            self.kill(id);
        }
    }
}

/// What the clients saw: acknowledged values with their offsets, and values in doubt.
#[derive(Default)]
struct History {
    acked: Vec<(u64, String)>,
    in_doubt: Vec<String>,
    sent: BTreeSet<String>,
    /// When each acknowledgement came, and from which node.
    ack_times: Vec<(Instant, Option<SocketAddr>)>,
}

/// Appends `client-N-i` values one at a time through an idempotent producer: it follows the
/// leader across the nodes and sends a batch it is unsure of again with the same producer id
/// and sequence, so every value is stored once.
fn client_loop(n: u64, addrs: Vec<SocketAddr>, stop: Arc<AtomicBool>, history: Arc<Mutex<History>>) {
    let mut config = ProducerConfig::new(addrs, LOG);
    config.in_flight_max = 1;
    config.give_up_after = Duration::from_secs(60);
    // A paused leader answers nothing: leave it for the next node after a second.
    config.reply_timeout = Some(Duration::from_secs(1));
    let mut producer = Producer::new(config).expect("producer");
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let value = format!("client-{n}-{i}");
        i += 1;
        history.lock().unwrap().sent.insert(value.clone());
        let sent = producer.send(vec![bytes::Bytes::from(value.clone().into_bytes())]);
        let acked = sent.and_then(|mut acked| {
            acked.extend(producer.wait_one()?);
            Ok(acked)
        });
        match acked {
            Ok(acked) => {
                let mut h = history.lock().unwrap();
                for a in acked {
                    h.acked.push((a.receipt.start, format!("client-{n}-{}", a.first_record)));
                    h.ack_times.push((Instant::now(), producer.node()));
                }
            }
            Err(gave_up) => {
                history.lock().unwrap().in_doubt.push(format!("client {n} gave up: {}", gave_up.reason));
                return;
            }
        }
    }
}

/// Every record of the log on node at `addr`, committed or not.
fn log_of(addr: SocketAddr) -> Option<Vec<String>> {
    let mut client = Client::connect(addr).ok()?;
    let mut out = Vec::new();
    loop {
        let (start, _, records) = client.read_from(LOG, out.len() as u64, 10_000, true).ok()?;
        assert_eq!(start, out.len() as u64);
        if records.is_empty() {
            return Some(out);
        }
        out.extend(records.into_iter().map(|r| String::from_utf8(r.to_vec()).unwrap()));
    }
}

/// The log without the empty records each new leader writes at the start of its epoch.
fn values(log: &[String]) -> Vec<&String> {
    log.iter().filter(|v| !v.is_empty()).collect()
}

fn percentile(sorted: &[u128], p: f64) -> u128 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn acknowledged_values_survive_killed_and_paused_leaders() {
    let seed = seed();
    let rounds: u64 = std::env::var("TERN_NEMESIS_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let nodes: u64 = std::env::var("TERN_NEMESIS_NODES").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let addrs: BTreeMap<u64, SocketAddr> = (1..=nodes).map(|id| (id, address_pair())).collect();
    let mut cluster = Cluster {
        dirs: (0..nodes).map(|_| tempfile::tempdir().unwrap()).collect(),
        addrs: addrs.clone(),
        children: BTreeMap::new(),
    };
    for id in 1..=nodes {
        cluster.start(id);
    }
    eventually("a first leader", Duration::from_secs(30), || cluster.leader());
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(History::default()));
    let clients: Vec<_> = (0..3)
        .map(|n| {
            let (stop, history) = (stop.clone(), history.clone());
            let addrs: Vec<SocketAddr> = addrs.values().copied().collect();
            std::thread::spawn(move || client_loop(n, addrs, stop, history))
        })
        .collect();
    let mut pauses = Vec::new();
    for round in 0..rounds {
        // Let the clients get going on this leader.
        let acked_before = history.lock().unwrap().acked.len();
        eventually("appends acknowledged", Duration::from_secs(30), || {
            (history.lock().unwrap().acked.len() > acked_before + 20).then_some(())
        });
        let leader = eventually("a leader", Duration::from_secs(30), || cluster.leader());
        let zombie = match std::env::var("TERN_NEMESIS_FAULTS").as_deref() {
            Ok("kill") => false,
            Ok("pause") => true,
            _ => seed.wrapping_add(round) % 2 == 1,
        };
        let fault_at = Instant::now();
        if zombie {
            cluster.signal(leader, libc::SIGSTOP);
        } else {
            cluster.kill(leader);
        }
        let acked_at_fault = history.lock().unwrap().acked.len();
        let resumed = loop {
            let found = {
                let h = history.lock().unwrap();
                // From another node: a reply the faulted leader sent just before its fault may
                // arrive after it.
                let faulted = Some(addrs[&leader]);
                h.ack_times
                    .get(acked_at_fault..)
                    .and_then(|later| later.iter().find(|(t, node)| *t > fault_at && *node != faulted))
                    .map(|(t, _)| *t)
            };
            if let Some(t) = found {
                break t;
            }
            assert!(
                fault_at.elapsed() < Duration::from_secs(60),
                "seed {seed:#x}, round {round}: no append acknowledged by the next leader in 60 s; the nodes said:\n{}",
                cluster.lines()
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let pause = resumed.duration_since(fault_at).as_millis();
        eprintln!("round {round}: {} node {leader}; write pause {pause} ms", if zombie { "paused" } else { "killed" });
        if std::env::var_os("TERN_NEMESIS_VERBOSE").is_some() {
            eprintln!("{}", cluster.lines());
        }
        pauses.push(pause);
        if zombie {
            // The zombie wakes up in an epoch that is over: it must commit nothing more.
            cluster.signal(leader, libc::SIGCONT);
        } else {
            cluster.start(leader);
        }
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    // Every node converges to one log.
    let history = history.lock().unwrap();
    let logs = eventually("every node holds the same log", Duration::from_secs(60), || {
        let logs: Vec<Vec<String>> = addrs.values().filter_map(|a| log_of(*a)).collect();
        (logs.len() == addrs.len() && logs.windows(2).all(|w| w[0] == w[1])).then_some(logs)
    });
    let log = &logs[0];
    let mut seen = BTreeSet::new();
    for value in values(log) {
        assert!(history.sent.contains(value), "seed {seed:#x}: {value} was never sent");
        assert!(seen.insert(value.clone()), "seed {seed:#x}: {value} appears twice");
    }
    for (offset, value) in &history.acked {
        assert_eq!(log.get(*offset as usize), Some(value), "seed {seed:#x}: acknowledged {value} not at {offset}");
    }
    assert!(history.in_doubt.is_empty(), "seed {seed:#x}: {:?}", history.in_doubt);
    let mut sorted = pauses.clone();
    sorted.sort_unstable();
    eprintln!(
        "{} rounds on {nodes} nodes: {} acknowledged, none twice, write pause p50 {} ms, p99 {} ms, max {} ms (failure timeout {FAILURE_TIMEOUT_MS} ms)",
        rounds,
        history.acked.len(),
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted.last().copied().unwrap_or(0)
    );
}
