//! Real `tern serve --cluster` processes, clients appending unique values with quorum acks,
//! and a nemesis that faults the leader each round: a SIGKILL (the node restarted later), a
//! SIGSTOP past the failure timeout and a SIGCONT after the failover (a zombie of an old
//! epoch), a cut of its network past the failure timeout, healed after the failover (an old
//! leader that must come back as a follower of the new epoch), or a planned handover with the
//! real `tern handover --all --to N` to a node chosen by the seed; or, in a `member` round, a
//! change of the nodes with the real `tern cluster add-node` and `remove-node`: an extra node
//! (id nodes + 1, a fresh directory each time) is started and added, or, when it is in, removed
//! and stopped. The checker: every acknowledged value is in the log exactly once, at the offset
//! its acknowledgement named, in the same order on every node of the cluster (the extra node
//! too while it is in); no value appears that was not sent; no value appears twice (the
//! clients are idempotent producers, resending what they are unsure of). The extra node must
//! hold every value acknowledged before it was added from the moment add-node says it is a
//! replica, and every value acknowledged since by the time it is removed.
//!
//! Isolation needs root: each node then runs in a network namespace of its own
//! (`tern-nem-<pid>-<id>`, at 10.77.<subnet>.<id>), on a veth pair whose other end is a port of
//! a bridge in the root namespace, where the clients (threads of this test) reach every node.
//! A cut sets the node's bridge port down: nothing reaches the node and nothing leaves it, not
//! even a reset, as when a machine drops off the network. Without root, or when namespaces
//! cannot be made, isolation is left out and a line says so; the other faults run on loopback.
//! A handover's command runs in the namespace of a node chosen by the seed, as an operator on
//! one of the machines would run it, and so do add-node and remove-node. The extra node has a
//! namespace of its own too. It is a learner of the controller, not a voter: a fault on it
//! (it may lead the logs) leaves every voter up, and a fault on a voter leaves a majority of
//! them, so no fault takes the controller's quorum away.
//!
//! Latency: in two runs of three (by the seed; `TERN_NEMESIS_RTT_US` sets it, 0 for none) a
//! round trip of 0.2 or 1 ms separates every two nodes, and every client from every node: a
//! link (`tern::bench::link`, a forwarder that delays each direction by half of it) stands in
//! front of each node's data and controller ports, and the node advertises the link's address
//! (`tern serve --advertise`). The kernel's netem would do this on the veth pairs; where it is
//! missing (here), the links do it. With namespaces the links listen on the bridge, so that a
//! cut node is as unreachable through its links as directly.
//!
//! `TERN_NEMESIS_ROUNDS` (default 3) sets the rounds; `TERN_NEMESIS_NODES` 3 or 5 (the voters);
//! In half the runs (by the seed; `TERN_NEMESIS_PLACE=1` always, `0` never) the clients' log is
//! first placed alone (`tern handover --log`), so that it has a leader of its own: every fault
//! then hits that leader, and handovers move that log alone.
//!
//! `TERN_NEMESIS_FAULTS` `kill`, `pause`, `isolate`, `handover`, `crash` (a handover with the
//! old leader or the target SIGKILLed 0 to 40 ms into the command), `member`, or `both` (the
//! default: kills, pauses, handovers, crashes mid-handover and member changes, and isolations
//! where namespaces can be made, chosen by the seed); `TERN_NEMESIS_VERBOSE` prints every
//! node's lines after each round. A round that kills or pauses a node ends once that node
//! follows the leader again, so that each fault meets a whole cluster. Each round prints the
//! write pause: after a fault, from the fault to the first append acknowledged by the next
//! leader (clients give up on a silent node after 1 s); after a handover, the longest gap
//! between acknowledgements from just before the command to the first acknowledgement from
//! the node it handed over to; after a crash mid-handover, the longest gap between
//! acknowledgements from the kill to the end of the round; after a member change, the longest
//! gap between acknowledgements from just before the command to the first acknowledgement
//! after it (after the removed node is stopped, for a removal).
//!
//! `a_first_leader_cut_before_any_follower_reached_it_rejoins` (root only) cuts the very first
//! leader of a new cluster off the network as soon as it runs as the leader, with no data
//! connection between the nodes until then: it once made a cluster id of its own and refused
//! the rest of its cluster for good after the heal.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tern::bench::link::Link;
use tern::bench::netns::Namespaces;
use tern_replication::driver::{Client, Producer, ProducerConfig};

const LOG: &str = "nemesis";
const FAILURE_TIMEOUT_MS: u64 = 1000;
/// Every node's data port in its own namespace (its controller's is the next one).
const NAMESPACE_DATA_PORT: u16 = 7000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill,
    Pause,
    Isolate,
    Handover,
    /// A handover with the old leader or the target SIGKILLed while it runs (restarted after).
    HandoverCrash,
    /// The extra node added, or removed when it is in.
    Member,
}

impl Fault {
    fn done(self) -> &'static str {
        match self {
            Fault::Kill => "killed",
            Fault::Pause => "paused",
            Fault::Isolate => "isolated",
            Fault::Handover => "handed over",
            Fault::HandoverCrash => "killed mid-handover",
            Fault::Member => "changed members",
        }
    }
}

/// The `tern` binary the nodes and the operator's commands run.
fn tern_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tern")
}

/// Held by each test that runs a cluster, for all of it: the namespaces and links are named
/// after this process, and a second cluster beside a nemesis would disturb its pauses.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_cluster_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A test that failed holding it leaves it poisoned; what it guards is gone with its drop.
    ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where node `id`'s links listen, in runs with latency: on the bridge, this port and the next.
fn link_addr(net: &Namespaces, id: u64) -> SocketAddr {
    let port = u16::try_from(id).ok().and_then(|id| id.checked_mul(2)).expect("node ids 1 to 253");
    net.bridge_addr(NAMESPACE_DATA_PORT + 100 + port)
}

/// The seed's choices for `round`: 32 bits mixed from both.
fn mix(seed: u64, round: u64) -> u64 {
    (seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 32
}

/// Between 2 and 3 s, chosen by the seed: a cut lasts well past the failure timeout.
fn isolation_hold(seed: u64, round: u64) -> Duration {
    Duration::from_millis(2000 + mix(seed, round) % 1001)
}

struct Cluster {
    /// What a failure's message starts with (the seed, to replay it).
    name: String,
    /// Nodes 1 to `voters` vote in the controller and are named in every node's `--cluster`.
    voters: u64,
    /// Each node's data and lines; the extra node gets a fresh one each time it is added.
    dirs: BTreeMap<u64, tempfile::TempDir>,
    /// Every node that may run: the voters, and the extra node (`voters + 1`) in runs with
    /// member rounds. Where peers and clients reach each: a delay link's address in runs with
    /// latency (the node advertises it), else where the node listens.
    addrs: BTreeMap<u64, SocketAddr>,
    /// Where each node listens, behind its links in runs with latency.
    listen: BTreeMap<u64, SocketAddr>,
    /// The links in front of each node's data and controller ports, in runs with latency.
    links: Vec<Link>,
    /// Whether the extra node is in the cluster: added, and not removed since.
    extra_joined: bool,
    children: BTreeMap<u64, Child>,
    /// The nodes' namespaces, when each runs in its own (isolation needs them); dropped after
    /// the nodes are killed.
    net: Option<Namespaces>,
}

impl Cluster {
    /// Nodes at `addrs` (in `net` when given), each with a directory of its own; none started.
    /// Those up to `voters` vote; one more, if any, is the extra node of member rounds.
    fn new(name: String, voters: u64, addrs: BTreeMap<u64, SocketAddr>, net: Option<Namespaces>) -> Cluster {
        assert!(addrs.keys().all(|id| (1..=voters + 1).contains(id)), "voters 1 to {voters}, and one extra node");
        let dirs = addrs.keys().map(|id| (*id, tempfile::tempdir().unwrap())).collect();
        let listen = addrs.clone();
        Cluster {
            name,
            voters,
            dirs,
            addrs,
            listen,
            links: Vec::new(),
            extra_joined: false,
            children: BTreeMap::new(),
            net,
        }
    }

    /// Puts a link that delays each direction by `one_way` in front of every node's data and
    /// controller ports (none started yet): every byte between nodes, and between clients and
    /// nodes, then crosses one. With namespaces, the links listen on the bridge, where every
    /// namespace reaches them; a cut node's links reach it no more than anybody else.
    fn add_latency(&mut self, one_way: Duration) {
        assert!(self.children.is_empty(), "links go in before the nodes start");
        for (id, listen) in &self.listen {
            let front = match &self.net {
                Some(net) => link_addr(net, *id),
                None => address_pair(),
            };
            for port in [0, 1] {
                let at = SocketAddr::new(front.ip(), front.port() + port);
                let to = SocketAddr::new(listen.ip(), listen.port() + port);
                self.links.push(Link::start_at(at, to, one_way).expect("a link in front of a node"));
            }
            self.addrs.insert(*id, front);
        }
    }

    /// The voters: what every node's `--cluster` names (the extra node's too, which is then
    /// waiting to be added, not forming a cluster of its own).
    fn spec(&self) -> String {
        self.addrs.range(..=self.voters).map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(",")
    }

    /// The extra node's id, in runs with member rounds.
    fn extra(&self) -> Option<u64> {
        Some(self.voters + 1).filter(|id| self.addrs.contains_key(id))
    }

    /// The nodes in the cluster now: the voters, and the extra node while it is in.
    fn members(&self) -> Vec<u64> {
        let extra = self.extra().filter(|_| self.extra_joined);
        (1..=self.voters).chain(extra).collect()
    }

    /// The members, and a node that runs without being one (the extra node being added or
    /// removed): whose lines a failure shows.
    fn shown(&self) -> BTreeSet<u64> {
        self.members().into_iter().chain(self.children.keys().copied()).collect()
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.dirs[&id].path().join("data")
    }

    /// Where node `id` writes its lines (kept across its restarts, not across a fresh start).
    fn log_file(&self, id: u64) -> PathBuf {
        self.dirs[&id].path().join("serve.log")
    }

    /// A new, empty directory for node `id` (not running): it starts as a node never seen.
    fn fresh_dir(&mut self, id: u64) {
        assert!(!self.children.contains_key(&id), "node {id} runs in the directory to replace");
        self.dirs.insert(id, tempfile::tempdir().unwrap());
    }

    /// Node `id`'s status document (a cut or stopped node's error comes after 500 ms).
    fn status(&self, id: u64) -> std::io::Result<serde_json::Value> {
        let wait = Duration::from_millis(500);
        let mut client = Client::connect_timeout(self.addrs[&id], wait)?;
        client.set_timeout(Some(wait))?;
        Ok(serde_json::from_str(&client.status()?)?)
    }

    /// Every node's lines and status, for a failure's report.
    fn lines(&self) -> String {
        let mut out = String::new();
        let shown = self.shown();
        for id in &shown {
            let status = self.status(*id).map_or_else(|e| e.to_string(), |doc| doc.to_string());
            out.push_str(&format!("[node {id} status] {status}\n"));
        }
        for id in &shown {
            let text = std::fs::read_to_string(self.log_file(*id)).unwrap_or_default();
            for line in text.lines().filter(|l| !l.contains("cannot connect")) {
                out.push_str(&format!("[node {id}] {line}\n"));
            }
        }
        out
    }

    /// A `tern` command run on node `id`'s machine: in its namespace, when the nodes have them.
    fn command_on(&self, id: u64) -> Command {
        match &self.net {
            None => Command::new(tern_bin()),
            Some(net) => {
                // `ip netns exec` execs the command in place: the child's pid is the command's.
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &net.namespace(id), tern_bin()]);
                command
            }
        }
    }

    fn start(&mut self, id: u64) {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_file(id)).unwrap();
        let mut command = self.command_on(id);
        command
            .args(["serve", "--dir"])
            .arg(self.dir(id))
            .args(["--listen", &self.listen[&id].to_string(), "--node-id", &id.to_string()])
            .args(["--cluster", &self.spec(), "--failure-timeout-ms", &FAILURE_TIMEOUT_MS.to_string()]);
        if self.addrs[&id] != self.listen[&id] {
            command.args(["--advertise", &self.addrs[&id].to_string()]);
        }
        if self.net.is_some() {
            command.arg("--insecure-plaintext");
        }
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent. A test killed
        // before its drop runs takes its nodes with it (they would keep their namespaces).
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.stdout(Stdio::null()).stderr(log).spawn().expect("spawn tern serve");
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

    /// Stops node `id` as an operator would, with a SIGTERM; how long it took to exit. A node
    /// that has not exited after 10 s fails the run.
    fn stop(&mut self, id: u64) -> Duration {
        let started = Instant::now();
        self.signal(id, libc::SIGTERM);
        let mut child = self.children.remove(&id).expect("a running node");
        while child.try_wait().expect("wait for a node").is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{}: node {id} still ran 10 s after a SIGTERM; the nodes said:\n{}", self.name, self.lines());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        started.elapsed()
    }

    /// The node that leads the clients' log, as its status shows (its server leads it, and its
    /// copy of the map names it), and its epoch. A zombie resumed a moment ago may still say it
    /// leads an epoch that is over: of two such nodes, the one of the later epoch.
    fn leader(&self) -> Option<(u64, u64)> {
        self.members()
            .iter()
            .filter_map(|id| {
                let doc = self.status(*id).ok()?;
                let leads = role(&doc) == "leader" && placement(&doc)["leader"] == *id;
                leads.then_some((*id, placement(&doc)["epoch"].as_u64()?))
            })
            .max_by_key(|(_, epoch)| *epoch)
    }

    /// Whether node `id` follows `leader` in `epoch`, and `leader` ships to it: a handover to
    /// it can go through (a node restarted a moment ago may not have rejoined yet).
    fn follows(&self, id: u64, leader: u64, epoch: u64) -> Option<()> {
        let doc = self.status(id).ok()?;
        let cluster = placement(&doc);
        if role(&doc) != "follower" || cluster["leader"] != leader || cluster["epoch"] != epoch {
            return None;
        }
        let lead = self.status(leader).ok()?;
        let logs = lead["logs"].as_array()?;
        let connected = logs
            .iter()
            .flat_map(|l| l["peers"].as_array().into_iter().flatten())
            .any(|p| p["node"] == id && p["connected"] == true);
        (role(&lead) == "leader" && connected).then_some(())
    }

    /// The log's commit end as node `id` knows it.
    fn commit_end(&self, id: u64) -> Option<u64> {
        let doc = self.status(id).ok()?;
        doc["logs"].as_array()?.iter().find(|l| l["log"] == LOG)?["commit_end"].as_u64()
    }

    /// Whether node `old` follows the leader of an epoch after `epoch`, and that leader has it
    /// synced up to `committed` (records of the new epoch: `old` cut whatever it wrote alone):
    /// the leader and its epoch.
    fn follows_a_later_leader(&self, old: u64, epoch: u64, committed: u64) -> Option<(u64, u64)> {
        let doc = self.status(old).ok()?;
        let (leader, later) = (placement(&doc)["leader"].as_u64()?, placement(&doc)["epoch"].as_u64()?);
        if role(&doc) != "follower" || leader == old || later <= epoch {
            return None;
        }
        let lead = self.status(leader).ok()?;
        let synced = lead["logs"]
            .as_array()?
            .iter()
            .filter(|l| l["log"] == LOG)
            .flat_map(|l| l["peers"].as_array().into_iter().flatten())
            .any(|p| p["node"] == old && p["acked_durable"].as_u64().is_some_and(|end| end >= committed));
        (role(&lead) == "leader" && placement(&lead)["epoch"] == later && synced).then_some((leader, later))
    }

    /// Retries `f` until it succeeds; after `timeout`, fails with the cluster's name (the seed)
    /// and the nodes' lines.
    fn eventually<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}; the nodes said:\n{}",
                self.name,
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
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

impl History {
    /// The longest time without an acknowledgement from `since` to now.
    fn longest_gap_since(&self, since: Instant) -> Duration {
        self.longest_gap(since, Instant::now())
    }

    /// The longest time without an acknowledgement from `since` to `until`.
    fn longest_gap(&self, since: Instant, until: Instant) -> Duration {
        let times = self.ack_times.iter().map(|(t, _)| *t).filter(|t| *t > since && *t < until);
        let (mut last, mut gap) = (since, Duration::ZERO);
        for t in times.chain([until]) {
            gap = gap.max(t.duration_since(last));
            last = t;
        }
        gap
    }
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

/// The placement of the clients' log in a node's status: its own (`tern handover --log`), or
/// else that of every log.
fn placement(doc: &serde_json::Value) -> &serde_json::Value {
    let placed = &doc["cluster"]["placed"][LOG];
    if placed.is_object() {
        placed
    } else {
        &doc["cluster"]
    }
}

/// A node's role on the clients' log (its role for every log until it holds that one).
fn role(doc: &serde_json::Value) -> &serde_json::Value {
    let log = doc["logs"].as_array().and_then(|logs| logs.iter().find(|l| l["log"] == LOG));
    log.map_or(&doc["role"], |l| &l["role"])
}

/// A planned move, as an operator makes it: `tern handover --all` run on a node chosen by the
/// seed, asking any node (chosen by the seed too), hands the leadership over from `leader` (of
/// `epoch`) to another node chosen by the seed. The write pause is what the writers saw: the
/// longest gap between acknowledgements from just before the command to the first
/// acknowledgement from the node handed over to. Returns it and the round's line.
fn hand_over(cluster: &Cluster, history: &Mutex<History>, at: Round) -> (u128, String) {
    let mut handover = Handover::new(cluster, at);
    let Round { round, leader, epoch, placed, .. } = at;
    let (target, asked, place) = (handover.target, handover.asked, handover.place.clone());
    let acked_before = history.lock().unwrap().ack_times.len();
    let started = Instant::now();
    let out = handover.command.output().expect("run tern handover");
    let took = started.elapsed();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let said = format!("{} exited with {} after {} ms:\n{stdout}{stderr}", handover.said, out.status, took.as_millis());
    assert!(out.status.success(), "{}, round {round}: {said}the nodes said:\n{}", cluster.name, cluster.lines());
    let promised = match placed {
        true => format!("node {target} leads log {LOG} in epoch "),
        false => format!("node {target} leads every log in epoch "),
    };
    let new_epoch = stdout.lines().find_map(|line| line.split_once(&promised)?.1.trim().parse::<u64>().ok());
    let new_epoch = match new_epoch {
        Some(new_epoch) if new_epoch > epoch => new_epoch,
        _ => panic!("{}, round {round}: {said}no line \"{promised}E\" with E > {epoch}", cluster.name),
    };
    let target_addr = Some(cluster.addrs[&target]);
    let what = format!("round {round}: an append acknowledged by node {target} after the handover");
    let resumed = cluster.eventually(&what, Duration::from_secs(60), || {
        let h = history.lock().unwrap();
        let later = h.ack_times.get(acked_before..)?;
        later.iter().find(|(t, node)| *t > started && *node == target_addr).map(|(t, _)| *t)
    });
    let pause = history.lock().unwrap().longest_gap(started, resumed).as_millis();
    if std::env::var_os("TERN_NEMESIS_VERBOSE").is_some() {
        eprint!("{said}");
    }
    let line = format!(
        "round {round}: handed node {leader} over to node {target}; write pause {pause} ms \
         (`tern handover`{place}, asking node {asked}: {} ms; epoch {new_epoch})",
        took.as_millis()
    );
    (pause, line)
}

/// What a handover round starts from: the run's seed, the round's number (`u64::MAX` for the
/// handover that places the log), the leader (of `epoch`), and whether the clients' log is
/// placed alone (`tern handover --log`).
#[derive(Clone, Copy)]
struct Round {
    seed: u64,
    round: u64,
    leader: u64,
    epoch: u64,
    placed: bool,
}

/// A `tern handover` of a round, as an operator runs it: to a node chosen by the seed (once it
/// follows the leader), asking a node chosen by the seed, run on a node's machine.
struct Handover {
    command: Command,
    target: u64,
    asked: u64,
    /// Where it runs, for the round's line.
    place: String,
    /// The command and the leader it moves from, for a failure's message.
    said: String,
}

impl Handover {
    fn new(cluster: &Cluster, at: Round) -> Handover {
        let Round { seed, round, leader, epoch, placed } = at;
        let ids = cluster.members();
        let others: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
        let mixed = mix(seed, round);
        let target = others[(mixed % others.len() as u64) as usize];
        let asked = ids[((mixed >> 8) % ids.len() as u64) as usize];
        let on = ids[((mixed >> 16) % ids.len() as u64) as usize];
        // Where the command runs: a node's machine (its namespace), or loopback.
        let place = match cluster.net {
            Some(_) => format!(" on node {on}"),
            None => String::new(),
        };
        // A node restarted a moment ago may not follow yet, and a handover to it would be given
        // up (as it should: the target must catch up within the handover's timeout).
        let what = format!("round {round}: node {target} to follow node {leader} in epoch {epoch}");
        cluster.eventually(&what, Duration::from_secs(30), || cluster.follows(target, leader, epoch));
        let asked_addr = cluster.addrs[&asked].to_string();
        let which = if placed { ["--log", LOG] } else { ["--all", ""] };
        let which: Vec<&str> = which.into_iter().filter(|a| !a.is_empty()).collect();
        let mut command = cluster.command_on(on);
        command.args(["handover", "--server", &asked_addr]).args(&which).args(["--to", &target.to_string()]);
        let said = format!(
            "`tern handover --server {asked_addr} {} --to {target}`{place}, from node {leader} of epoch {epoch},",
            which.join(" ")
        );
        Handover { command, target, asked, place, said }
    }
}

/// A handover with the old leader or the target (by the seed) SIGKILLed 0 to 40 ms after the
/// command starts, at whatever step it is then; the command may then fail or succeed. The
/// killed node is restarted once an append is acknowledged by another node, and the round
/// ends once every node follows the leader. The write pause: the longest time without an
/// acknowledgement from the kill to the end of the round.
fn crash_mid_handover(cluster: &mut Cluster, history: &Mutex<History>, at: Round) -> (u128, String) {
    let mut handover = Handover::new(cluster, at);
    let Round { seed, round, leader, .. } = at;
    let mixed = mix(seed, round);
    let victim = if mixed >> 24 & 1 == 0 { leader } else { handover.target };
    let delay = Duration::from_millis((mixed >> 25) % 41);
    let child = handover.command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run tern handover");
    let started = Instant::now();
    // A fault's timing, not an ordering: the step the handover is at is whatever it is then.
    std::thread::sleep(delay);
    let acked_at_kill = history.lock().unwrap().ack_times.len();
    let killed_at = Instant::now();
    cluster.kill(victim);
    let out = child.wait_with_output().expect("wait for tern handover");
    let took = started.elapsed();
    let victim_addr = Some(cluster.addrs[&victim]);
    let what = format!("round {round}: an append acknowledged by another node than {victim} after its kill");
    let resumed = cluster.eventually(&what, Duration::from_secs(60), || {
        let h = history.lock().unwrap();
        let later = h.ack_times.get(acked_at_kill..)?;
        later.iter().find(|(t, node)| *t > killed_at && *node != victim_addr).map(|(t, _)| *t)
    });
    cluster.start(victim);
    // The round ends once every node follows the leader there is then, so that the next
    // round's fault meets a whole cluster (and its pause is that fault's alone). The restarted
    // node may lead: a target elected just before its kill, and back within the failure
    // timeout, leads the epoch it was elected to (it never led it before).
    let what = format!("round {round}: node {victim} restarted, every node to follow the leader");
    cluster.eventually(&what, Duration::from_secs(60), || {
        let (now, now_epoch) = cluster.leader()?;
        cluster.members().into_iter().filter(|id| *id != now).try_for_each(|id| cluster.follows(id, now, now_epoch))
    });
    // The longest time without an acknowledgement from the kill to the end of the round: a
    // handover that elects the target just before its death is followed by a failover, after
    // acknowledgements that came in between.
    let gap = history.lock().unwrap().longest_gap_since(killed_at);
    let pause = resumed.duration_since(killed_at).max(gap).as_millis();
    if std::env::var_os("TERN_NEMESIS_VERBOSE").is_some() {
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprint!("{} exited with {} after {} ms:\n{stdout}{stderr}", handover.said, out.status, took.as_millis());
    }
    // The command ends with an outcome it names, whichever node died: the handover done, given
    // up, or overtaken by a failover (a node asked that dies is replaced by another member; only
    // one killed before the command read the map leaves it nobody else to ask).
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let outcome = ["given up", "overtaken", "try again"].iter().any(|o| stderr.contains(o))
            || (victim == handover.asked && stderr.contains("controller at"));
        assert!(outcome, "seed {seed:#x}, round {round}: {} failed without an outcome: {stderr}", handover.said);
    }
    let role = if victim == leader { "the old leader" } else { "the target" };
    let line = format!(
        "round {round}: handover of node {leader} to node {}{} asking node {}: {role} killed {} ms in; the command {} \
         after {} ms; write pause {pause} ms",
        handover.target,
        handover.place,
        handover.asked,
        delay.as_millis(),
        if out.status.success() { "succeeded" } else { "failed" },
        took.as_millis()
    );
    (pause, line)
}

/// A change of the nodes, as an operator makes it, with the clients appending. When the extra
/// node is out, it is started in a fresh directory (`--cluster` naming the voters: it waits to
/// be added) and added with `tern cluster add-node`; when it is in, it is removed with
/// `tern cluster remove-node`, then stopped. Each command asks a member and runs on a member's
/// machine, both chosen by the seed. Checked: the command's lines; `tern status --json` of a
/// node of the cluster after the change (chosen by the seed) naming the extra node among the
/// replicas and members, or nowhere; on an
/// add, the extra node holding every value acknowledged before the command as soon as the
/// command says it is a replica (its leader promotes it only then); before a removal, every
/// value acknowledged until then. The write pause is the longest gap between acknowledgements
/// from just before the command to the first acknowledgement after it (after the removed node
/// is stopped). Returns what was done ("added" or "removed"), the pause and the round's line.
fn change_members(
    cluster: &mut Cluster,
    history: &Mutex<History>,
    seed: u64,
    round: u64,
    leader: u64,
) -> (&'static str, u128, String) {
    let extra = cluster.extra().expect("member rounds run with an extra node");
    let extra_addr = cluster.addrs[&extra].to_string();
    let members = cluster.members();
    let mixed = mix(seed, round);
    let pick = |among: &[u64], shift: u32| among[((mixed >> shift) % among.len() as u64) as usize];
    let (asked, on) = (pick(&members, 8), pick(&members, 16));
    let joining = !cluster.extra_joined;
    // Whose status shows the change: a node of the cluster after it (a node removed keeps the
    // map as it was when it left).
    let after: Vec<u64> = (1..=cluster.voters).chain(joining.then_some(extra)).collect();
    let shown_by = pick(&after, 24);
    let asked_addr = cluster.addrs[&asked].to_string();
    let place = match cluster.net {
        Some(_) => format!(" on node {on}"),
        None => String::new(),
    };
    let voters: Vec<u64> = (1..=cluster.voters).collect();
    let majority = |n: u64| n / 2 + 1;
    let name = cluster.name.clone();
    if joining {
        cluster.fresh_dir(extra);
        cluster.start(extra);
        // Its server answers (a follower waiting to be added) once it runs.
        cluster.eventually(&format!("round {round}: node {extra} to start"), Duration::from_secs(30), || {
            cluster.status(extra).ok()
        });
    } else {
        // Everything acknowledged so far is on the extra node, as on every member.
        let acked = history.lock().unwrap().acked.clone();
        let what = format!("round {round}: node {extra} to hold the {} values acknowledged so far", acked.len());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match holds(&log_of(cluster.addrs[&extra]).unwrap_or_default(), &acked) {
                Ok(()) => break,
                Err(why) if Instant::now() >= deadline => {
                    panic!("{name}: timed out waiting for {what}: {why}; the nodes said:\n{}", cluster.lines())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
    let (acked_before, acks_before) = {
        let h = history.lock().unwrap();
        (h.acked.clone(), h.ack_times.len())
    };
    let extra_id = extra.to_string();
    let mut args = vec!["cluster"];
    if joining {
        args.extend(["add-node", "--server", &asked_addr, "--node", &extra_id, "--addr", &extra_addr]);
        args.extend(["--timeout-ms", "60000"]);
    } else {
        args.extend(["remove-node", "--server", &asked_addr, "--node", &extra_id, "--timeout-ms", "30000"]);
    }
    let started = Instant::now();
    let out = cluster.command_on(on).args(&args).output().expect("run tern cluster");
    let took = started.elapsed();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let said = format!(
        "`tern {}`{place} exited with {} after {} ms:\n{stdout}{stderr}",
        args.join(" "),
        out.status,
        took.as_millis()
    );
    assert!(out.status.success(), "{name}, round {round}: {said}the nodes said:\n{}", cluster.lines());
    // What the placement must be now: a majority stays a majority.
    let (replicas, quorum) = if joining {
        let with_extra: Vec<u64> = voters.iter().copied().chain([extra]).collect();
        let quorum = majority(with_extra.len() as u64);
        (with_extra, quorum)
    } else {
        (voters.clone(), majority(voters.len() as u64))
    };
    let promised = if joining {
        format!("log *: node {extra} is a replica (epoch ")
    } else {
        format!("log *: replicas {replicas:?}, quorum {quorum} (epoch ")
    };
    let placed = stdout.lines().any(|line| {
        line.contains(&promised) && (!joining || line.ends_with(&format!("replicas {replicas:?}, quorum {quorum})")))
    });
    let left =
        joining || stdout.lines().last().is_some_and(|l| l.contains(&format!("node {extra} left the controller")));
    assert!(
        placed && left,
        "{name}, round {round}: {said}no line \"{promised}\" with replicas {replicas:?}, quorum {quorum}"
    );
    let mut held = String::new();
    if joining {
        cluster.extra_joined = true;
        // Promoted only once it held every record its leader wrote: at once, not eventually.
        let log = log_of(cluster.addrs[&extra]).unwrap_or_default();
        if let Err(why) = holds(&log, &acked_before) {
            panic!(
                "{name}, round {round}: node {extra}, a replica as add-node returned, lacks what was acknowledged before: \
                 {why}\n{said}the nodes said:\n{}",
                cluster.lines()
            );
        }
        held = format!("; it held the {} values acknowledged before", acked_before.len());
    }
    // The status an operator reads (a node's copy of the map may be a moment behind).
    let shown_addr = cluster.addrs[&shown_by].to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = cluster.command_on(on).args(["status", "--json", "--server", &shown_addr]).output();
        let doc: serde_json::Value =
            out.ok().and_then(|out| serde_json::from_slice(&out.stdout).ok()).unwrap_or_default();
        let placed = &doc["cluster"];
        let ids = |key: &str| -> Vec<u64> {
            placed[key].as_array().into_iter().flatten().filter_map(|n| n.as_u64()).collect()
        };
        let named: Vec<u64> =
            placed["members"].as_array().into_iter().flatten().filter_map(|m| m["node"].as_u64()).collect();
        let settled = ids("replicas") == replicas
            && placed["quorum"] == quorum
            && ids("learners").is_empty()
            && placed["leaving"].is_null()
            && named.contains(&extra) == joining
            && ids("controller_learners").contains(&extra) == joining
            && !ids("controller_voters").contains(&extra);
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}, round {round}: `tern status --server {shown_addr} --json` (node {shown_by}) did not show \
             replicas {replicas:?}, quorum {quorum}, node {extra} {} the members within 10 s; last: {placed}\n\
             {said}the nodes said:\n{}",
            if joining { "among" } else { "gone from" },
            cluster.lines()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stopped = String::new();
    if !joining {
        cluster.extra_joined = false;
        let took = cluster.stop(extra);
        // remove-node hands the logs over first when the node leads them.
        let led = if leader == extra { "; it led the logs, handed over first" } else { "" };
        stopped = format!("{led}; stopped in {} ms", took.as_millis());
    }
    let finished = Instant::now();
    let what = format!("round {round}: an append acknowledged after the member change");
    let resumed = cluster.eventually(&what, Duration::from_secs(60), || {
        let h = history.lock().unwrap();
        h.ack_times.get(acks_before..)?.iter().find(|(t, _)| *t > finished).map(|(t, _)| *t)
    });
    let pause = history.lock().unwrap().longest_gap(started, resumed).as_millis();
    if std::env::var_os("TERN_NEMESIS_VERBOSE").is_some() {
        eprint!("{said}");
    }
    let done = if joining { "added" } else { "removed" };
    let command = if joining { "add-node" } else { "remove-node" };
    let line = format!(
        "round {round}: {done} node {extra}; write pause {pause} ms (`tern cluster {command}`{place}, asking node {asked}: \
         {} ms; replicas {replicas:?}, quorum {quorum}{held}{stopped})",
        took.as_millis()
    );
    (done, pause, line)
}

/// Whether `log` holds every value of `acked` at the offset its acknowledgement named; what it
/// lacks first, if not.
fn holds(log: &NodeLog, acked: &[(u64, String)]) -> Result<(), String> {
    for (offset, value) in acked {
        let there = log.get(offset);
        if there != Some(value) {
            return Err(format!(
                "acknowledged {value} at offset {offset}, found {there:?} there ({} records)",
                log.len()
            ));
        }
    }
    Ok(())
}

/// Every record of the log on node at `addr`, committed or not, by offset (readers never see
/// the control record each new leader writes at the start of its epoch: offsets skip it).
fn log_of(addr: SocketAddr) -> Option<NodeLog> {
    let records = read_log(addr, LOG, true).ok()?;
    Some(records.into_iter().map(|(offset, r)| (offset, String::from_utf8(r.to_vec()).unwrap())).collect())
}

/// A node's log: its records by offset.
type NodeLog = BTreeMap<u64, String>;

fn percentile(sorted: &[u128], p: f64) -> u128 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn acknowledged_values_survive_leaders_killed_paused_isolated_handed_over_and_nodes_added_and_removed() {
    let _alone = one_cluster_at_a_time();
    let seed = seed();
    let rounds: u64 = std::env::var("TERN_NEMESIS_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let nodes: u64 = std::env::var("TERN_NEMESIS_NODES").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let mut faults = match std::env::var("TERN_NEMESIS_FAULTS").as_deref() {
        Ok("kill") => vec![Fault::Kill],
        Ok("pause") => vec![Fault::Pause],
        Ok("isolate") => vec![Fault::Isolate],
        Ok("handover") => vec![Fault::Handover],
        Ok("crash") => vec![Fault::HandoverCrash],
        Ok("member") => vec![Fault::Member],
        Ok("both") | Err(_) => {
            vec![Fault::Kill, Fault::Pause, Fault::Isolate, Fault::Handover, Fault::HandoverCrash, Fault::Member]
        }
        Ok(other) => {
            panic!("TERN_NEMESIS_FAULTS={other}: expected kill, pause, isolate, handover, crash, member or both")
        }
    };
    // The voters, and the extra node of member rounds (which runs only while it is added).
    let ids: Vec<u64> = (1..=nodes).chain(faults.contains(&Fault::Member).then_some(nodes + 1)).collect();
    let mut net = None;
    if faults.contains(&Fault::Isolate) {
        match Namespaces::create("nem", &ids) {
            Ok(made) => net = Some(made),
            Err(why) => {
                faults.retain(|f| *f != Fault::Isolate);
                if faults.is_empty() {
                    eprintln!("isolation skipped: no network namespaces ({why})");
                    return;
                }
                eprintln!("isolation left out: no network namespaces ({why}); the other faults on loopback");
            }
        }
    }
    let addrs: BTreeMap<u64, SocketAddr> = match &net {
        Some(net) => ids.iter().map(|id| (*id, net.addr(*id, NAMESPACE_DATA_PORT))).collect(),
        None => ids.iter().map(|id| (*id, address_pair())).collect(),
    };
    let mut cluster = Cluster::new(format!("seed {seed:#x}"), nodes, addrs, net);
    // A round trip between any two of them (`TERN_NEMESIS_RTT_US`; by the seed otherwise:
    // none, 0.2 ms or 1 ms), through links that delay each direction by half of it.
    let rtt_us = match std::env::var("TERN_NEMESIS_RTT_US") {
        Ok(us) => us.parse().unwrap_or_else(|_| panic!("TERN_NEMESIS_RTT_US={us}: expected microseconds")),
        Err(_) => [0, 200, 1000][(seed / 2 % 3) as usize],
    };
    if rtt_us > 0 {
        cluster.add_latency(Duration::from_micros(rtt_us / 2));
    }
    let addrs = cluster.addrs.clone();
    for id in 1..=nodes {
        cluster.start(id);
    }
    let (first, first_epoch) = cluster.eventually("a first leader", Duration::from_secs(30), || cluster.leader());
    // The clients' log led alone (`tern handover --log`), by a leader of its own, in half the
    // runs (`TERN_NEMESIS_PLACE=1` always, `0` never): every fault then hits that leader.
    let placed = match std::env::var("TERN_NEMESIS_PLACE").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => seed % 2 == 1,
    };
    eprintln!(
        "{}: {}, round trip {rtt_us} us between nodes",
        cluster.name,
        if placed { format!("log {LOG} placed alone") } else { "one placement for every log".into() }
    );
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(History::default()));
    let clients: Vec<_> = (0..3)
        .map(|n| {
            let (stop, history) = (stop.clone(), history.clone());
            // The extra node's too: it may come to lead, and a producer goes only to the nodes
            // it knows. While it is out, nothing listens there, and it is passed over at once.
            let addrs: Vec<SocketAddr> = addrs.values().copied().collect();
            std::thread::spawn(move || client_loop(n, addrs, stop, history))
        })
        .collect();
    let mut pauses = Vec::new();
    if placed {
        let acked_before = history.lock().unwrap().acked.len();
        cluster.eventually("appends acknowledged", Duration::from_secs(30), || {
            (history.lock().unwrap().acked.len() > acked_before + 20).then_some(())
        });
        // Placed, then handed over to a node chosen by the seed.
        let at = Round { seed, round: u64::MAX, leader: first, epoch: first_epoch, placed: true };
        let (pause, line) = hand_over(&cluster, &history, at);
        eprintln!("{}", line.replacen(&format!("round {}", u64::MAX), "placing the log", 1));
        pauses.push((Fault::Handover.done(), pause));
    }
    for round in 0..rounds {
        // Let the clients get going on this leader.
        let acked_before = history.lock().unwrap().acked.len();
        cluster.eventually("appends acknowledged", Duration::from_secs(30), || {
            (history.lock().unwrap().acked.len() > acked_before + 20).then_some(())
        });
        let (leader, epoch) =
            cluster.eventually(&format!("a leader in round {round}"), Duration::from_secs(30), || cluster.leader());
        let fault = faults[(seed.wrapping_add(round) % faults.len() as u64) as usize];
        if matches!(fault, Fault::Handover | Fault::HandoverCrash | Fault::Member) {
            let at = Round { seed, round, leader, epoch, placed };
            let (done, pause, line) = match fault {
                Fault::Handover => {
                    let (pause, line) = hand_over(&cluster, &history, at);
                    (fault.done(), pause, line)
                }
                Fault::HandoverCrash => {
                    let (pause, line) = crash_mid_handover(&mut cluster, &history, at);
                    (fault.done(), pause, line)
                }
                _ => change_members(&mut cluster, &history, seed, round, leader),
            };
            eprintln!("{line}");
            if std::env::var_os("TERN_NEMESIS_VERBOSE").is_some() {
                eprintln!("{}", cluster.lines());
            }
            pauses.push((done, pause));
            continue;
        }
        let fault_at = Instant::now();
        match fault {
            Fault::Kill => cluster.kill(leader),
            Fault::Pause => cluster.signal(leader, libc::SIGSTOP),
            Fault::Isolate => cluster.net.as_ref().expect("isolation runs in namespaces").cut(leader),
            Fault::Handover | Fault::HandoverCrash | Fault::Member => unreachable!("a round of its own"),
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
        let mut line = format!("round {round}: {} node {leader}; write pause {pause} ms", fault.done());
        match fault {
            // The zombie wakes up in an epoch that is over: it must commit nothing more.
            Fault::Pause | Fault::Kill => {
                match fault {
                    // The zombie wakes up in an epoch that is over: it must commit nothing more.
                    Fault::Pause => cluster.signal(leader, libc::SIGCONT),
                    _ => cluster.start(leader),
                }
                // The round ends once the old leader follows a later one, so that the next
                // round's kill meets a whole cluster: killed while this one still started,
                // the next leader took the controller's majority with it, and its pause was
                // that of two faults (1.6 s instead of 1.0 to 1.2 s in 3 of 30 kills).
                let what = format!("round {round}: node {leader}, back, to follow a later leader");
                cluster.eventually(&what, Duration::from_secs(60), || cluster.follows_a_later_leader(leader, epoch, 0));
            }
            Fault::Handover | Fault::HandoverCrash | Fault::Member => unreachable!("a round of its own"),
            Fault::Isolate => {
                // Cut past the failure timeout on both sides: the followers' controller replaced
                // the leader, and the leader stopped taking appends for want of the controller.
                let hold = isolation_hold(seed, round);
                std::thread::sleep(hold.saturating_sub(fault_at.elapsed()));
                // What the others committed meanwhile, in the new epoch: the old leader has it
                // only by following the new leader.
                let others: Vec<u64> = cluster.members().into_iter().filter(|id| *id != leader).collect();
                let committed = cluster.eventually("the others' commit end", Duration::from_secs(30), || {
                    others.iter().filter_map(|id| cluster.commit_end(*id)).max()
                });
                let healed_at = Instant::now();
                cluster.net.as_ref().expect("isolation runs in namespaces").heal(leader);
                let what = format!(
                    "round {round}: node {leader}, isolated in epoch {epoch}, back as a follower synced past {committed}"
                );
                let (new_leader, new_epoch) = cluster.eventually(&what, Duration::from_secs(30), || {
                    cluster.follows_a_later_leader(leader, epoch, committed)
                });
                let rejoined_ms = healed_at.elapsed().as_millis();
                // A node coming back must not cost the writers another pause: the longest gap
                // between acknowledgements from the heal to a failure timeout after the rejoin
                // (a leader that loses the controller stops within one).
                std::thread::sleep(Duration::from_millis(FAILURE_TIMEOUT_MS));
                let gap = history.lock().unwrap().longest_gap_since(healed_at);
                line.push_str(&format!(
                    "; healed after {} ms, following node {new_leader} in epoch {new_epoch} {rejoined_ms} ms later; longest gap between acknowledgements since the heal {} ms",
                    healed_at.duration_since(fault_at).as_millis(),
                    gap.as_millis()
                ));
            }
        }
        eprintln!("{line}");
        if std::env::var_os("TERN_NEMESIS_VERBOSE").is_some() {
            eprintln!("{}", cluster.lines());
        }
        pauses.push((fault.done(), pause));
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    // Every node of the cluster converges to one log: the extra node's too, while it is in.
    let history = history.lock().unwrap();
    let members = cluster.members();
    let logs = cluster.eventually("every node to hold the same log", Duration::from_secs(60), || {
        let logs: Vec<NodeLog> = members.iter().filter_map(|id| log_of(cluster.addrs[id])).collect();
        (logs.len() == members.len() && logs.windows(2).all(|w| w[0] == w[1])).then_some(logs)
    });
    let log = &logs[0];
    let mut seen = BTreeSet::new();
    for value in log.values() {
        assert!(history.sent.contains(value), "seed {seed:#x}: {value} was never sent");
        assert!(seen.insert(value.clone()), "seed {seed:#x}: {value} appears twice");
    }
    for (offset, value) in &history.acked {
        assert_eq!(log.get(offset), Some(value), "seed {seed:#x}: acknowledged {value} not at {offset}");
    }
    assert!(history.in_doubt.is_empty(), "seed {seed:#x}: {:?}", history.in_doubt);
    let (files, quarantined) = check_quarantine(&cluster, &members, &history.sent, seed);
    let mut by_fault = Vec::new();
    let kinds = [Fault::Kill, Fault::Pause, Fault::Isolate, Fault::Handover, Fault::HandoverCrash].map(Fault::done);
    for done in kinds.into_iter().chain(["added", "removed"]) {
        let mut sorted: Vec<u128> = pauses.iter().filter(|(d, _)| *d == done).map(|(_, p)| *p).collect();
        sorted.sort_unstable();
        if let (Some(first), Some(last)) = (sorted.first(), sorted.last()) {
            by_fault.push(format!("{} {done}: {first} to {last} ms", sorted.len()));
        }
    }
    let mut sorted: Vec<u128> = pauses.iter().map(|(_, p)| *p).collect();
    sorted.sort_unstable();
    let extra = match cluster.extra() {
        Some(extra) if cluster.extra_joined => format!(" and node {extra} (added)"),
        _ => String::new(),
    };
    eprintln!(
        "{} rounds on {nodes} nodes{extra}: {} acknowledged, none twice, {quarantined} records cut and kept in {files} quarantine files (each listed by status), write pause p50 {} ms, p99 {} ms, max {} ms ({}; failure timeout {FAILURE_TIMEOUT_MS} ms)",
        rounds,
        history.acked.len(),
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted.last().copied().unwrap_or(0),
        by_fault.join(", ")
    );
}

/// Every quarantine file (records a node cut from its log, kept) in a member's log directory
/// is listed by its status, its frames decode, and its records are values a client sent (or
/// the control record a leader writes at the start of its epoch): nothing invented. Returns
/// the files and records counted.
fn check_quarantine(cluster: &Cluster, members: &[u64], sent: &BTreeSet<String>, seed: u64) -> (usize, usize) {
    let (mut files, mut records) = (0, 0);
    for id in members {
        let dir = cluster.dir(*id).join("logs").join(LOG);
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|name| name.starts_with(tern_wal::QUARANTINE_FILE_PREFIX))
                    .collect()
            })
            .unwrap_or_default();
        on_disk.sort();
        let status = cluster.status(*id).unwrap_or_else(|e| panic!("seed {seed:#x}: node {id}'s status: {e}"));
        let listed: Vec<String> = status["logs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["log"] == LOG)
            .flat_map(|l| l["quarantine"].as_array().cloned().unwrap_or_default())
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect();
        assert_eq!(listed, on_disk, "seed {seed:#x}: node {id}'s status lists its quarantine files");
        for name in &on_disk {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            let mut at = 0;
            while at < bytes.len() {
                let frame = tern_segment::frame::decode(&bytes[at..])
                    .unwrap_or_else(|e| panic!("seed {seed:#x}: node {id}: {name} at byte {at}: {e}"))
                    .unwrap_or_else(|| panic!("seed {seed:#x}: node {id}: {name} ends early at byte {at}"));
                for record in frame.records() {
                    let value = String::from_utf8_lossy(record.value).into_owned();
                    assert!(
                        frame.header.is_control() || sent.contains(&value),
                        "seed {seed:#x}: node {id}: {name} holds {value}, never sent"
                    );
                    records += 1;
                }
                at += frame.frame_len;
            }
            files += 1;
        }
    }
    (files, records)
}

/// The lines of every node that refused a node of its own cluster for another cluster id.
fn cluster_id_refusals(cluster: &Cluster) -> Vec<String> {
    let mut refusals = Vec::new();
    for id in cluster.addrs.keys() {
        let text = std::fs::read_to_string(cluster.log_file(*id)).unwrap_or_default();
        refusals.extend(text.lines().filter(|l| l.contains("is not 0x")).map(|l| format!("[node {id}] {l}")));
    }
    refusals
}

/// The very first leader of a cluster, cut off the network as soon as it runs as the leader of
/// epoch 1 and before any follower reached it, follows the next leader after the heal and
/// holds its log. It once made a cluster id of its own there; the next leader made another, and
/// after the heal the first node refused every connection of its cluster for good ("cluster id
/// X is not Y"). Root only: the cut needs a namespace for each node.
#[test]
fn a_first_leader_cut_before_any_follower_reached_it_rejoins() {
    let _alone = one_cluster_at_a_time();
    let ids = [1, 2, 3];
    let net = match Namespaces::create("nem", &ids) {
        Ok(net) => net,
        Err(why) => {
            eprintln!("first leader cut skipped: no network namespaces ({why})");
            return;
        }
    };
    if let Err(why) = ids.iter().try_for_each(|id| net.hold_port(*id, NAMESPACE_DATA_PORT)) {
        eprintln!("first leader cut skipped: data connections cannot be held back ({why})");
        return;
    }
    let addrs = ids.iter().map(|id| (*id, net.addr(*id, NAMESPACE_DATA_PORT))).collect();
    let mut cluster = Cluster::new("a first leader cut".into(), 3, addrs, Some(net));
    for id in ids {
        cluster.start(id);
    }
    // After its line "leads every log in epoch 1", the first leader reads the map at the
    // controller's leader, starts its server (which made a cluster id of its own before the
    // fix) and dials its followers at once. Cut at that line, it could not read the map and
    // never led; cut a few milliseconds later, a follower had mostly joined it already (the
    // build before the fix passed most such runs). So no node dials a data port until the
    // first leader runs as the leader, and then it is cut.
    let deadline = Instant::now() + Duration::from_secs(30);
    let said = |id: u64, what: &str| std::fs::read_to_string(cluster.log_file(id)).unwrap_or_default().contains(what);
    let first = loop {
        if let Some(id) = ids.into_iter().find(|id| said(*id, "leads every log in epoch 1\n")) {
            break id;
        }
        assert!(Instant::now() < deadline, "no node led epoch 1 in 30 s; the nodes said:\n{}", cluster.lines());
        std::thread::sleep(Duration::from_millis(1));
    };
    while !said(first, "runs as leader of every log in epoch 1:") {
        let what = format!("node {first} to run as leader of epoch 1");
        assert!(Instant::now() < deadline, "timed out waiting for {what}; the nodes said:\n{}", cluster.lines());
        std::thread::sleep(Duration::from_millis(1));
    }
    let net = cluster.net.as_ref().expect("the nodes run in namespaces");
    net.cut(first);
    let cut_at = Instant::now();
    for id in ids {
        net.release_port(id, NAMESPACE_DATA_PORT);
    }
    let others: Vec<u64> = ids.into_iter().filter(|id| *id != first).collect();
    let what = format!("another node than {first} to lead an epoch after 1");
    let (leader, epoch) = cluster.eventually(&what, Duration::from_secs(30), || {
        others.iter().find_map(|id| {
            let doc = cluster.status(*id).ok()?;
            let epoch = doc["cluster"]["epoch"].as_u64()?;
            (doc["role"] == "leader" && doc["cluster"]["leader"] == *id && epoch > 1).then_some((*id, epoch))
        })
    });
    // Records of the new epoch, on a quorum without the cut node: it has them only by
    // following the new leader.
    let mut producer = Producer::new(ProducerConfig::new(vec![cluster.addrs[&leader]], LOG)).expect("a producer");
    let written: u64 = 100;
    for batch in 0..written / 10 {
        let records = (0..10).map(|i| bytes::Bytes::from(format!("after-the-cut-{batch}-{i}"))).collect();
        producer.send(records).unwrap_or_else(|e| panic!("appending to node {leader}: {}", e.reason));
    }
    producer.flush().unwrap_or_else(|e| panic!("appending to node {leader}: {}", e.reason));
    let healed_at = Instant::now();
    net.heal(first);
    let what = format!("node {first}, cut as it led epoch 1, to follow a later epoch and hold its leader's log");
    let (now_leader, now_epoch) = cluster.eventually(&what, Duration::from_secs(30), || {
        let refusals = cluster_id_refusals(&cluster);
        assert!(
            refusals.is_empty(),
            "a node refused its own cluster:\n{}\nthe nodes said:\n{}",
            refusals.join("\n"),
            cluster.lines()
        );
        let doc = cluster.status(first).ok()?;
        let (now_leader, now_epoch) = (doc["cluster"]["leader"].as_u64()?, doc["cluster"]["epoch"].as_u64()?);
        if doc["role"] != "follower" || now_leader == first || now_epoch <= 1 {
            return None;
        }
        let leader_log = log_of(cluster.addrs[&now_leader])?;
        let caught_up = leader_log.len() as u64 >= written && log_of(cluster.addrs[&first])? == leader_log;
        caught_up.then_some((now_leader, now_epoch))
    });
    let back_ms = healed_at.elapsed().as_millis();
    let refusals = cluster_id_refusals(&cluster);
    assert!(refusals.is_empty(), "a node refused its own cluster:\n{}", refusals.join("\n"));
    eprintln!(
        "node {first} cut as it led epoch 1; node {leader} led epoch {epoch}; healed after {} ms; \
         node {first} followed node {now_leader} in epoch {now_epoch} with its log {back_ms} ms later",
        healed_at.duration_since(cut_at).as_millis()
    );
}
