//! A node whose role the controller decides (`tern serve --cluster`).
//!
//! Every node runs a controller member (on its data port + 1) beside its replication server.
//! The cluster map's placement `*` names the node that leads every log without a placement of
//! its own, and the epoch it leads in; a log handed over alone (`tern handover --log`,
//! [`handover`]) gets a placement of its own ([`tern_controller::Command::PlaceLog`]), with its
//! own leader and epochs. The controller issues each epoch of a placement once
//! ([`tern_controller::Command::Elect`]). A node runs its replication server once, and each
//! placement on it as that leader, with that epoch, or as a follower
//! ([`Server::set_default_role`] for `*`, [`Server::set_role`] for a log placed alone):
//!
//! - A leader heartbeats to the controller's leader every [`HEARTBEAT_INTERVAL`], naming each
//!   placement it leads with its epoch. One that cannot reach it for the failure timeout stops
//!   taking appends (it follows): cut off from the controller, it may have been replaced.
//! - The controller's leader watches those heartbeats, per placement. After the failure timeout
//!   without one, it fences the placement's replicas at its next epoch (each durably refuses
//!   anything older on the placement's logs, then reports where each ends; a log placed alone
//!   has a fence of its own, which `*`'s fences do not touch), elects from the reports a node
//!   holding every committed record of every log of the placement
//!   (`tern_replication::election::elect`, per log), and commits the election. The elected
//!   node starts leading; the others follow it. The other placements go on meanwhile.
//!
//! A new leader writes one record in each log it holds at the start of its epoch: a control
//! batch (FORMAT.md "Batch frame") with key `tern.epoch` and an empty value. Records of earlier
//! epochs are committed only along with one of the leader's own (Raft's rule), and after a
//! failover every client may be retrying a batch the log already holds, answered from where it
//! is and not written again: without the marker nothing would ever commit. It takes an offset,
//! but readers never see it (`Log::read` and `ClientRead` skip control records).
//!
//! Nodes join and leave through the map ([`add_node`], [`remove_node`]): a new node learns
//! every log first (a learner: shipped to, counted in no quorum), and the leader changes the
//! voting replicas itself, refusing appends for the moment it takes to make sure the new
//! replicas hold every record it wrote (PROTOCOL.md "Adding and removing nodes").
//!
//! A log is placed alone by an operator (`tern handover --log`); new logs are led under `*`
//! until then: leaders are not yet spread over the nodes by themselves.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tern_controller::{
    Command, Controller, ControllerConfig, DataNode, ElectReason, HandoverStep, LogMap, LogReport, MembershipChange,
    Reply,
};
use tern_replication::driver::{Lead, Role, Server, ServerConfig};
use tern_replication::election::{elect, ReplicaSet, Report};
use tern_replication::message::NodeId;
use tern_replication::proto::Quorum;

use crate::{Engine, EngineLogs};

/// The placement of every log without one of its own: one node leads them all, and each log
/// placed alone (`tern handover --log`) has a leader of its own.
pub const ALL_LOGS: &str = tern_controller::ALL_LOGS;
/// The key of the control record a leader under the controller writes at the start of its
/// epoch in each log it holds (with an empty value): see [`ClusterNode`]'s module docs.
pub const EPOCH_MARKER_KEY: &[u8] = b"tern.epoch";
/// How often a leader tells the controller it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// How often the node looks at the map.
const TICK: Duration = Duration::from_millis(5);
/// How long a replica has to fence itself and report.
const FENCE_TIMEOUT: Duration = Duration::from_secs(2);
/// Once enough reports are in, how long the others may still come.
const REPORT_GRACE: Duration = Duration::from_millis(20);
/// A learner this close to its leader's written end on every log (in bytes) is promoted, once
/// connected for [`PROMOTE_SETTLE`]: the leader refuses appends while it catches up the rest.
pub const PROMOTE_LAG_BYTES: u64 = 1 << 20;
/// How long a learner is connected before it may be promoted (its first acknowledgements).
pub const PROMOTE_SETTLE: Duration = Duration::from_millis(100);
/// A learner connected this long, kept further behind than [`PROMOTE_LAG_BYTES`] by a steady
/// stream of writes, is promoted from [`PROMOTE_LAG_BYTES_LATE`] behind (appends then wait
/// for it to copy that much, a fraction of a second).
pub const PROMOTE_PATIENCE: Duration = Duration::from_secs(10);
/// See [`PROMOTE_PATIENCE`].
pub const PROMOTE_LAG_BYTES_LATE: u64 = 64 << 20;
/// How long a leader changing the replicas refuses appends, at most, waiting for the new
/// replicas to hold its records; it then takes appends again and tries later.
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a leader waits before it tries again a change of replicas that timed out.
const CHANGE_RETRY: Duration = Duration::from_secs(5);
/// How long a leader handing over waits for its target to catch up before it gives the
/// handover up and takes appends again.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a handover's target, behind the leader and connected to it, may go without
/// acknowledging anything new (paused, or stuck) before the handover is given up, for appends
/// are refused meanwhile. A live target catching up acknowledges what it is shipped within
/// milliseconds; a busy machine's may take some hundreds.
pub const HANDOVER_STALL_MAX: Duration = Duration::from_secs(1);
/// As [`HANDOVER_STALL_MAX`], for a target that is not connected (crashed, cut off, or
/// restarting): a live one reconnects within milliseconds, and one that crashed has its
/// connection closed by its kernel at once.
pub const HANDOVER_GONE_MAX: Duration = Duration::from_millis(250);

/// Settings of a node run by the controller.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node.
    pub node_id: NodeId,
    /// Its engine directory; the controller keeps its state in `controller/` under it.
    pub dir: PathBuf,
    /// The voters: node id and data address (`--listen`) of each. Each controller listens on
    /// its node's data port + 1. A node not named here joins a running cluster: it waits until
    /// [`add_node`] (`tern cluster add-node`) adds it.
    pub cluster: BTreeMap<NodeId, SocketAddr>,
    /// A leader not heard from for this long is replaced; a leader that cannot reach the
    /// controller for this long stops taking appends.
    pub failure_timeout: Duration,
    /// Copies that commit a record, the leader included: more than half the nodes (automatic
    /// failover needs every commit quorum to meet every election's reports).
    pub quorum: usize,
    /// The replication server's settings; `role`, `peers`, `quorum` and `leader_epoch` are
    /// set from the map.
    pub server: ServerConfig,
    /// The address peers and clients reach this node at, when it is not `server.listen` (a
    /// forwarder or a NAT in between: `tern serve --advertise`). It is what `cluster` names
    /// for this node and what the map records; its controller is reached at its port + 1 and
    /// listens at `server.listen`'s port + 1.
    pub advertise: Option<SocketAddr>,
}

/// The controller address of a node whose data address is `data`: the next port.
pub fn controller_addr(data: SocketAddr) -> SocketAddr {
    SocketAddr::new(data.ip(), data.port().wrapping_add(1))
}

/// What runs now: the replication server, started once, and the role and epoch each
/// placement (`*`, or a log placed alone) runs in on it.
struct Running {
    server: Server,
    roles: BTreeMap<String, (Role, u64)>,
}

/// What the node keeps of one placement it leads or led.
#[derive(Default)]
struct PlacementState {
    /// The epoch this node stopped leading in (cut off from the controller, or fenced for the
    /// next election): it never leads that epoch again.
    stepped_down: Option<u64>,
    /// The thread carrying a handover or a change of replicas on ([`Shared::hand_over`],
    /// [`Shared::change_replicas`]), joined when the node stops.
    thread: Option<JoinHandle<()>>,
    /// A change of replicas that timed out is not tried again before this.
    change_retry_at: Option<Instant>,
    /// Since when each learner has been connected to this leader.
    learners_connected: BTreeMap<NodeId, Instant>,
    /// The epoch this node last proposed a handover's election in: until a handover of that
    /// epoch is given up in the map, the election may still be committed.
    elect_proposed: Option<u64>,
}

struct Shared {
    config: ClusterConfig,
    engine: Arc<Engine>,
    controller: Controller,
    running: Mutex<Option<Running>>,
    placements: Mutex<BTreeMap<String, PlacementState>>,
    stop: AtomicBool,
}

/// The logs one placement governs on this node's server: every log without a placement of
/// its own (`*`: the server's role for the node), or one log (a role of its own).
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    All,
    Log(&'a str),
}

impl<'a> Scope<'a> {
    fn of(name: &'a str) -> Scope<'a> {
        if name == ALL_LOGS {
            Scope::All
        } else {
            Scope::Log(name)
        }
    }

    fn set_role(self, server: &Server, lead: Option<Lead>) -> std::io::Result<()> {
        match self {
            Scope::All => server.set_default_role(lead),
            Scope::Log(log) => server.set_role(log, lead),
        }
    }

    fn hand_over(self, server: &Server, to: Option<NodeId>) -> std::io::Result<()> {
        match self {
            Scope::All => server.hand_over(to),
            Scope::Log(log) => server.hand_over_log(log, to),
        }
    }

    fn caught_up(self, server: &Server, node: NodeId) -> bool {
        match self {
            Scope::All => server.caught_up(node),
            Scope::Log(log) => server.caught_up_on(log, node),
        }
    }

    fn pause(self, server: &Server, pause: bool) -> std::io::Result<()> {
        match self {
            Scope::All => server.pause_appends(pause),
            Scope::Log(log) => server.pause_log(log, pause),
        }
    }

    fn holding(self, server: &Server, nodes: &[NodeId]) -> usize {
        match self {
            Scope::All => server.holding_everything(nodes),
            Scope::Log(log) => server.holding_everything_on(log, nodes),
        }
    }

    fn acked_by(self, server: &Server, node: NodeId) -> Option<u64> {
        match self {
            Scope::All => server.acked_by(node),
            Scope::Log(log) => server.acked_by_on(log, node),
        }
    }

    fn lag_bytes(self, server: &Server, node: NodeId) -> Option<u64> {
        match self {
            Scope::All => server.lag_bytes(node),
            Scope::Log(log) => server.lag_bytes_on(log, node),
        }
    }

    /// Whether `node` keeps up with the leader running `server`: connected, and within
    /// [`PROMOTE_LAG_BYTES`] of its written end on every log of the scope (in sync, or close
    /// enough to be promoted or left as a replica).
    fn keeps_up(self, server: &Server, node: NodeId) -> bool {
        self.lag_bytes(server, node).is_some_and(|lag| lag <= PROMOTE_LAG_BYTES)
    }
}

impl std::fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::All => write!(f, "every log"),
            Scope::Log(log) => write!(f, "log {log}"),
        }
    }
}

/// A running node of a controller-run cluster. Dropping it stops it.
pub struct ClusterNode {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode").field("node_id", &self.shared.config.node_id).finish()
    }
}

struct FenceHere(std::sync::Weak<Shared>);

impl DataNode for FenceHere {
    fn drain(&self, target: NodeId, timeout: Duration) -> Result<Duration, String> {
        self.drain_here(ALL_LOGS, target, timeout)
    }

    fn drain_log(&self, log: &str, target: NodeId, timeout: Duration) -> Result<Duration, String> {
        self.drain_here(log, target, timeout)
    }

    fn fence(&self, epoch: u64, log: Option<&str>, except: &[String]) -> Result<Vec<LogReport>, String> {
        let shared = self.0.upgrade().ok_or("the node is stopping")?;
        let name = log.unwrap_or(ALL_LOGS);
        // A leader asked to report was given up on: it stops leading (and never leads its epoch
        // again), then reports as a follower.
        let leading = shared
            .running
            .lock()
            .as_ref()
            .and_then(|r| r.roles.get(name).copied())
            .filter(|(role, _)| *role == Role::Leader)
            .map(|(_, epoch)| epoch);
        if let Some(led) = leading.filter(|led| *led >= epoch) {
            // A late request for an election this node has since won: it leads on.
            return Err(format!("node {} leads epoch {led}: not fenced for {epoch}", shared.config.node_id));
        }
        let scope = Scope::of(name);
        if let Some(led) = leading {
            shared.placements.lock().entry(name.to_owned()).or_default().stepped_down = Some(led);
            log_line(&format!(
                "node {} stops leading {scope} in epoch {led}: fenced for the election of {epoch}",
                shared.config.node_id
            ));
            shared.switch(name, Role::Follower, 0).map_err(|e| e.to_string())?;
        }
        let running = shared.running.lock();
        let Some(running) = running.as_ref() else { return Err("the node runs no server yet".into()) };
        let reports = match log {
            Some(log) => vec![running.server.fence_log(log, epoch).map_err(|e| e.to_string())?],
            None => {
                for log in except {
                    running.server.keep_apart(log).map_err(|e| e.to_string())?;
                }
                running.server.fence(epoch).map_err(|e| e.to_string())?
            }
        };
        Ok(reports
            .into_iter()
            .map(|r| LogReport { log: r.log, last_epoch: r.last_epoch, durable_end: r.durable_end })
            .collect())
    }
}

impl FenceHere {
    /// Drains placement `name` (`*`, or a log placed alone) towards `target`, when this node
    /// leads it.
    fn drain_here(&self, name: &str, target: NodeId, timeout: Duration) -> Result<Duration, String> {
        let shared = self.0.upgrade().ok_or("the node is stopping")?;
        let running = shared.running.lock();
        let leads = |r: &&Running| r.roles.get(name).is_some_and(|(role, _)| *role == Role::Leader);
        let Some(running) = running.as_ref().filter(leads) else {
            return Err(format!("node {} does not lead {}", shared.config.node_id, Scope::of(name)));
        };
        match Scope::of(name) {
            Scope::All => running.server.drain(target, timeout),
            Scope::Log(log) => running.server.drain_log(log, target, timeout),
        }
        .map_err(|e| e.to_string())
    }
}

/// A placement in the status document.
fn placement_json(p: &LogMap) -> serde_json::Value {
    serde_json::json!({
        "leader": p.leader,
        "epoch": p.epoch,
        "replicas": p.replicas,
        "quorum": p.quorum,
        "in_sync": p.in_sync,
        "learners": p.learners,
        "leaving": p.leaving,
        "data_loss": p.data_loss.iter().map(|l| serde_json::json!({"epoch": l.epoch, "from": l.from, "to": l.to})).collect::<Vec<_>>(),
        "handover": p.handover.as_ref().map(|h| serde_json::json!({
            "to": h.to, "from_epoch": h.epoch, "step": h.step.name(), "reason": h.reason,
        })),
    })
}

/// The logs of the engine, with the controller's view in the status document.
struct ClusterLogs {
    logs: EngineLogs,
    shared: std::sync::Weak<Shared>,
}

impl tern_replication::driver::Logs for ClusterLogs {
    fn open(&self, name: &str) -> Result<tern_wal::Log, String> {
        self.logs.open(name)
    }
    fn names(&self) -> Vec<String> {
        self.logs.names()
    }
    fn state_dir(&self) -> Option<(Arc<dyn tern_segment::Disk>, PathBuf)> {
        self.logs.state_dir()
    }
    fn reopen(&self, name: &str, durable_end: u64) -> Result<tern_wal::Log, String> {
        self.logs.reopen(name, durable_end)
    }
    fn apply_retention(&self, log: &tern_wal::Log) -> Result<(), String> {
        self.logs.apply_retention(log)
    }
    fn status_extra(&self) -> Option<serde_json::Value> {
        let shared = self.shared.upgrade()?;
        let status = shared.controller.status();
        let map = shared.controller.local_map();
        let mut all = map.logs.get(ALL_LOGS).map_or(serde_json::json!({}), placement_json);
        let placed: serde_json::Map<String, serde_json::Value> = map
            .logs
            .iter()
            .filter(|(name, _)| *name != ALL_LOGS)
            .map(|(n, p)| (n.clone(), placement_json(p)))
            .collect();
        if let Some(fields) = all.as_object_mut() {
            fields.insert("controller_leader".into(), serde_json::json!(status.leader));
            fields.insert("controller_term".into(), serde_json::json!(status.term));
            fields.insert("controller_voters".into(), serde_json::json!(status.voters.keys().collect::<Vec<_>>()));
            fields.insert("controller_learners".into(), serde_json::json!(status.learners));
            let members: Vec<_> =
                map.members.iter().map(|(id, m)| serde_json::json!({"node": id, "addr": m.data_addr})).collect();
            fields.insert("members".into(), serde_json::json!(members));
            fields.insert("placed".into(), serde_json::Value::Object(placed));
        }
        Some(all)
    }
}

impl ClusterNode {
    /// Opens the engine, starts the controller member and the loop that runs the replication
    /// server in the role the map gives this node.
    ///
    /// # Errors
    /// A quorum that does not allow automatic failover; opening the engine or the controller's
    /// store; binding an address.
    pub fn start(config: ClusterConfig, engine: crate::Config) -> std::io::Result<ClusterNode> {
        let me = config.node_id;
        let set = ReplicaSet {
            log: ALL_LOGS.into(),
            replicas: config.cluster.keys().copied().collect(),
            quorum: Quorum::Count(config.quorum),
        };
        if config.quorum == 0 || config.quorum > set.replicas.len() {
            return Err(std::io::Error::other(format!(
                "--quorum {} is outside 1..={}",
                config.quorum,
                set.replicas.len()
            )));
        }
        tern_replication::election::check_failover(&set).map_err(std::io::Error::other)?;
        let engine = Arc::new(Engine::open(&config.dir, engine).map_err(std::io::Error::other)?);
        let voters = config.cluster.iter().map(|(id, addr)| (*id, controller_addr(*addr).to_string())).collect();
        let listen = controller_addr(config.server.listen).to_string();
        let controller_config = ControllerConfig::new(me, config.dir.join("controller"), listen, voters);
        let controller = Controller::start(controller_config).map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            config,
            engine,
            controller,
            running: Mutex::new(None),
            placements: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
        });
        shared.controller.set_data_node(Arc::new(FenceHere(Arc::downgrade(&shared))));
        // A follower from the start: clients are told who leads rather than refused a
        // connection, and a node that led before a restart takes nothing until the map says.
        shared.switch(ALL_LOGS, Role::Follower, 0)?;
        let looping = shared.clone();
        let thread = std::thread::Builder::new().name(format!("tern-cluster-{me}")).spawn(move || looping.run())?;
        Ok(ClusterNode { shared, thread: Some(thread) })
    }

    /// The replication server's address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.running.lock().as_ref().map(|r| r.server.local_addr())
    }

    /// The role and epoch this node runs every log in that has no placement of its own.
    pub fn role(&self) -> Option<(Role, u64)> {
        self.shared.running.lock().as_ref().and_then(|r| r.roles.get(ALL_LOGS).copied())
    }

    /// The role and epoch this node runs each placement in: `*` ([`ClusterNode::role`]) and
    /// each log placed alone.
    pub fn roles(&self) -> BTreeMap<String, (Role, u64)> {
        self.shared.running.lock().as_ref().map(|r| r.roles.clone()).unwrap_or_default()
    }

    /// Runs `f` on the replication server running now, if any.
    pub fn with_server<T>(&self, f: impl FnOnce(&Server) -> T) -> Option<T> {
        self.shared.running.lock().as_ref().map(|r| f(&r.server))
    }

    /// The controller member beside the node.
    pub fn controller(&self) -> &Controller {
        &self.shared.controller
    }

    /// Stops the loop, the replication server and the controller member.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // They hold the engine and the controller member: a restart in the same directory
        // must find them closed.
        let threads: Vec<JoinHandle<()>> =
            self.shared.placements.lock().values_mut().filter_map(|p| p.thread.take()).collect();
        for thread in threads {
            let _ = thread.join();
        }
        if let Some(running) = self.shared.running.lock().take() {
            running.server.stop();
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.halt();
    }
}

fn log_line(what: &str) {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let (h, m, s, ms) = (ms / 3_600_000 % 24, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    eprintln!("tern serve: {h:02}:{m:02}:{s:02}.{ms:03} {what}");
}

impl Shared {
    /// Runs placement `name` (`*`, or a log placed alone) as `role` in `epoch` on the
    /// replication server: started once, as a follower of every log, then told to lead or
    /// follow the placement's logs ([`Server::set_default_role`], [`Server::set_role`]) without
    /// a restart, so that connections, threads and the other placements' logs stay.
    fn switch(self: &Arc<Self>, name: &str, role: Role, epoch: u64) -> std::io::Result<()> {
        let began = Instant::now();
        let scope = Scope::of(name);
        let mut running = self.running.lock();
        let mut lead = None;
        let local = self.controller.local_map();
        let mut cluster_id = local.cluster_id;
        let mut placed: Vec<String> = local.logs.keys().filter(|n| *n != ALL_LOGS).cloned().collect();
        if role == Role::Leader {
            // Read at the controller's leader, not from this member's copy, which may lag
            // after a restart: a planned handover of this epoch must be seen (the leader then
            // starts refusing appends), or the target could be elected while this node writes.
            let map = self.controller.read_map(Duration::from_secs(1)).map_err(std::io::Error::other)?;
            let placement = map.logs.get(name).cloned().ok_or_else(|| std::io::Error::other("no placement"))?;
            if placement.epoch != epoch || placement.leader != self.config.node_id {
                return Err(std::io::Error::other(format!(
                    "the map moved on: node {} leads epoch {}",
                    placement.leader, placement.epoch
                )));
            }
            if map.cluster_id == 0 {
                return Err(std::io::Error::other("the controller has issued no cluster id yet"));
            }
            cluster_id = map.cluster_id;
            placed.extend(map.logs.keys().filter(|n| *n != ALL_LOGS).cloned());
            let peers = placement
                .replicas
                .iter()
                .chain(&placement.learners)
                .filter(|id| **id != self.config.node_id)
                .filter_map(|id| {
                    let addr = map.members.get(id).and_then(|m| m.data_addr.parse().ok());
                    addr.or_else(|| self.config.cluster.get(id).copied()).map(|addr| (*id, addr))
                })
                .collect();
            lead = Some(Lead {
                epoch: Some(epoch),
                peers,
                learners: placement.learners.clone(),
                quorum: Quorum::Count(placement.quorum as usize),
                handing_over_to: placement.handover.as_ref().and_then(|h| h.under_way(epoch)),
            });
        }
        let read = began.elapsed();
        if running.is_none() {
            let mut config = self.config.server.clone();
            config.role = Role::Follower;
            config.peers = Vec::new();
            config.leader_epoch = None;
            if cluster_id != 0 {
                config.cluster_id = cluster_id;
            }
            let logs = ClusterLogs { logs: EngineLogs(self.engine.clone()), shared: Arc::downgrade(self) };
            let server = Server::start(config, Arc::new(logs))?;
            *running = Some(Running { server, roles: BTreeMap::new() });
        }
        let Some(current) = running.as_mut() else { return Err(std::io::Error::other("no server")) };
        let started = began.elapsed();
        if cluster_id != 0 {
            current.server.join_cluster(cluster_id)?;
        }
        if matches!(scope, Scope::All) {
            // A log placed alone is never led under `*`: its epochs are its own, and `*`'s,
            // higher perhaps, would depose its leader. Each gets a role of its own (following
            // until its placement is looked at) before `*`'s role covers the rest: a node
            // restarted a moment ago has given none yet.
            for log in &placed {
                if !current.roles.contains_key(log) {
                    current.server.set_role(log, None)?;
                    current.roles.insert(log.clone(), (Role::Follower, 0));
                }
            }
        }
        // Following until the change is made: a failed change leaves the logs following.
        current.roles.insert(name.to_owned(), (Role::Follower, 0));
        scope.set_role(&current.server, lead)?;
        current.roles.insert(name.to_owned(), (role, epoch));
        let changed = began.elapsed();
        if role == Role::Leader {
            // As Raft's no-op entry: records of earlier epochs commit only along with one of
            // the leader's own epoch, and the first appends after a failover may all be
            // producers' retries of batches already in the log (answered from there, not
            // written again): without a record of its own, the new leader would never commit.
            let names = match scope {
                Scope::All => {
                    self.engine.log_names().unwrap_or_default().into_iter().filter(|n| !placed.contains(n)).collect()
                }
                Scope::Log(log) => vec![log.to_owned()],
            };
            for name in names {
                if let Ok(log) = self.engine.log(&name) {
                    let marker =
                        tern_wal::Record { key: Some(EPOCH_MARKER_KEY), value: b"", timestamp_ms: tern_wal::now_ms() };
                    let control = tern_wal::AppendOptions { control: true, ..tern_wal::AppendOptions::default() };
                    if let Err(e) = log.append_records(&[marker], control) {
                        log_line(&format!("log {name}: no epoch marker for epoch {epoch}: {e}"));
                    }
                }
            }
            log_line(&format!(
                "node {} runs as leader of {scope} in epoch {epoch}: map read in {} us, server ready in {} us, role changed in {} us, marked in {} us",
                self.config.node_id,
                read.as_micros(),
                (started - read).as_micros(),
                (changed - started).as_micros(),
                (began.elapsed() - changed).as_micros()
            ));
        }
        Ok(())
    }

    fn run(self: &Arc<Self>) {
        let me = self.config.node_id;
        let timeout = self.config.failure_timeout;
        let mut registered = false;
        let mut last_heartbeat_ok = Instant::now();
        let mut last_heartbeat_sent: Option<Instant> = None;
        // The epoch of each placement this node last saw, and since when: a new leader gets
        // the failure timeout to start and be heard before it can be found silent.
        let mut observed: BTreeMap<String, (u64, Instant)> = BTreeMap::new();
        // Logs placed alone whose fence this node keeps apart from the node's.
        let mut apart: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        let mut controller_leader = None;
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(TICK);
            let status = self.controller.status();
            if status.leader != controller_leader {
                controller_leader = status.leader;
                if controller_leader == Some(me) {
                    log_line(&format!("node {me} leads the controller (term {})", status.term));
                }
            }
            let map = self.controller.local_map();
            if !registered || map.members.get(&me).map(|m| m.data_addr.as_str()) != Some(&self.data_addr()) {
                let register = Command::Register { node: me, data_addr: self.data_addr() };
                registered = self.controller.propose(register, Duration::from_secs(1)).is_ok();
            }
            if !map.logs.contains_key(ALL_LOGS) {
                if status.leader == Some(me) {
                    self.create_placement();
                }
                continue;
            }
            let mut leads = BTreeMap::new();
            for (name, placement) in &map.logs {
                if name != ALL_LOGS && !apart.contains(name) {
                    // Before anything of its own epochs: `*`'s fences no longer reach it.
                    if self.running.lock().as_ref().is_some_and(|r| r.server.keep_apart(name).is_ok()) {
                        apart.insert(name.clone());
                    }
                }
                if observed.get(name).is_none_or(|(epoch, _)| *epoch != placement.epoch) {
                    observed.insert(name.clone(), (placement.epoch, Instant::now()));
                }
                let was_leading = self.leads(name, placement.epoch);
                if self.tend(name, placement) {
                    if !was_leading {
                        last_heartbeat_ok = Instant::now();
                    }
                    leads.insert(name.clone(), placement.epoch);
                }
            }
            if leads.is_empty() {
                last_heartbeat_ok = Instant::now();
            } else {
                if last_heartbeat_sent.is_none_or(|at| at.elapsed() >= HEARTBEAT_INTERVAL) {
                    last_heartbeat_sent = Some(Instant::now());
                    if self.controller.heartbeat(&leads, HEARTBEAT_INTERVAL).is_ok() {
                        last_heartbeat_ok = Instant::now();
                    }
                    for name in leads.keys() {
                        self.report_in_sync(name, &map.logs[name]);
                    }
                }
                if last_heartbeat_ok.elapsed() > timeout {
                    for (name, epoch) in &leads {
                        log_line(&format!(
                            "node {me} heard no controller for {} ms: it stops leading {} in epoch {epoch}",
                            timeout.as_millis(),
                            Scope::of(name)
                        ));
                        self.placements.lock().entry(name.clone()).or_default().stepped_down = Some(*epoch);
                        let _ = self.switch(name, Role::Follower, 0);
                    }
                }
            }
            // The controller's leader replaces a data leader it has not heard from (itself too,
            // once it stepped down).
            if status.leader != Some(me) {
                continue;
            }
            for (name, placement) in &map.logs {
                let stepped_down = self.placements.lock().get(name).and_then(|p| p.stepped_down);
                if placement.leader == me && stepped_down != Some(placement.epoch) {
                    continue;
                }
                // A live leader heartbeats every member every HEARTBEAT_INTERVAL, so a new
                // controller leader knows how long it has been silent; two intervals of
                // leading let it hear one that it could not hear before (it was cut off).
                let settle = 2 * HEARTBEAT_INTERVAL;
                let settled = self.controller.leading_since().is_some_and(|since| since.elapsed() > settle)
                    && observed.get(name).is_some_and(|(_, since)| since.elapsed() > timeout);
                let heard = self
                    .controller
                    .last_heartbeat(placement.leader)
                    .is_some_and(|(led, at)| led.get(name) == Some(&placement.epoch) && at.elapsed() <= timeout);
                if settled && !heard {
                    self.fail_over(name, placement);
                }
            }
        }
    }

    /// Whether this node runs placement `name` as the leader of `epoch`.
    fn leads(&self, name: &str, epoch: u64) -> bool {
        self.running.lock().as_ref().and_then(|r| r.roles.get(name).copied()) == Some((Role::Leader, epoch))
    }

    /// Runs placement `name` as the map says: leads it (with its handover or change of
    /// replicas carried on) or follows it. Returns whether it leads it now.
    fn tend(self: &Arc<Self>, name: &str, placement: &LogMap) -> bool {
        let me = self.config.node_id;
        let scope = Scope::of(name);
        let stepped_down = self.placements.lock().get(name).and_then(|p| p.stepped_down);
        let lead = placement.leader == me && stepped_down != Some(placement.epoch);
        let current = self.running.lock().as_ref().and_then(|r| r.roles.get(name).copied());
        if !lead {
            if current.map(|(role, _)| role) != Some(Role::Follower) {
                log_line(&format!(
                    "node {me} follows node {} on {scope} (epoch {})",
                    placement.leader, placement.epoch
                ));
                let _ = self.switch(name, Role::Follower, 0);
            }
            return false;
        }
        if current != Some((Role::Leader, placement.epoch)) {
            log_line(&format!("node {me} leads {scope} in epoch {}", placement.epoch));
            if let Err(e) = self.switch(name, Role::Leader, placement.epoch) {
                log_line(&format!("node {me} cannot lead {scope} in epoch {}: {e}", placement.epoch));
                self.placements.lock().entry(name.to_owned()).or_default().stepped_down = Some(placement.epoch);
                let _ = self.switch(name, Role::Follower, 0);
                return false;
            }
        }
        let handing_over = placement.handover.as_ref().is_some_and(|h| h.under_way(placement.epoch).is_some());
        let change = if handing_over { None } else { self.replica_change_due(name, placement) };
        if handing_over || change.is_some() {
            let mut placements = self.placements.lock();
            let state = placements.entry(name.to_owned()).or_default();
            if state.thread.as_ref().is_none_or(|t| t.is_finished()) && !self.stop.load(Ordering::SeqCst) {
                let (shared, placement, name) = (self.clone(), placement.clone(), name.to_owned());
                state.thread = std::thread::Builder::new()
                    .name(format!("tern-handover-{me}"))
                    .spawn(move || match change {
                        Some(promote) => shared.change_replicas(&name, &placement, promote),
                        None => shared.hand_over(&name, &placement),
                    })
                    .ok();
            }
        }
        true
    }

    /// Carries on the planned handover of placement `name` (this node leads its epoch):
    /// refuses appends, waits until the target holds every record written here, and elects
    /// it; or, when the target acknowledges nothing new for [`HANDOVER_STALL_MAX`] (for
    /// [`HANDOVER_GONE_MAX`] when not connected) or does not catch up in [`HANDOVER_TIMEOUT`],
    /// gives the handover up and takes appends again. Every step is idempotent and the map says where it is. A
    /// node that stops meanwhile leaves the step as it is, as a crash would: restarted, it
    /// cannot lead its epoch again (every start of a leader begins a new epoch of its logs),
    /// so the failover after the failure timeout ends the handover.
    fn hand_over(self: &Arc<Self>, name: &str, placement: &LogMap) {
        let me = self.config.node_id;
        let scope = Scope::of(name);
        let Some(handover) = placement.handover.clone() else { return };
        let Some(to) = handover.under_way(placement.epoch) else { return };
        let epoch = placement.epoch;
        let started = Instant::now();
        let Some(drained) = self.as_leader(name, epoch, |s| scope.hand_over(s, Some(to)).map_err(|e| e.to_string()))
        else {
            return;
        };
        if let Err(e) = drained {
            log_line(&format!("node {me} cannot hand {scope} (epoch {epoch}) over to node {to}: {e}"));
            return self.abort_handover(name, epoch, to, e);
        }
        log_line(&format!("node {me} hands {scope} (epoch {epoch}) over to node {to}: appends refused"));
        // The most the target has acknowledged, and since when it has not acknowledged more: a
        // target that crashed, is cut off or paused is given up after a short grace, not the
        // whole timeout, for appends are refused meanwhile.
        let (mut acked_most, mut stalled_since) = (None, Instant::now());
        let caught_up = loop {
            let state = self.as_leader(name, epoch, |s| (scope.caught_up(s, to), scope.acked_by(s, to)));
            let Some((caught_up, acked)) = state else {
                return; // no longer leading this epoch: the map moved on
            };
            if acked.is_some_and(|a| acked_most.is_none_or(|most| a > most)) {
                (acked_most, stalled_since) = (acked, Instant::now());
            }
            let (how, stall_max) = match acked {
                Some(_) => ("connected, acknowledging nothing", HANDOVER_STALL_MAX),
                None => ("not connected", HANDOVER_GONE_MAX),
            };
            match caught_up {
                true => break Ok(()),
                // Stopping is not the target failing to catch up: as after a crash, the map
                // keeps the step, and the restarted node or a failover ends the handover.
                false if self.stop.load(Ordering::SeqCst) => return,
                false if stalled_since.elapsed() >= stall_max => {
                    break Err(format!("node {to} made no progress for {} ms ({how})", stall_max.as_millis()));
                }
                false if started.elapsed() >= HANDOVER_TIMEOUT => {
                    break Err(format!("node {to} did not catch up within {} ms", HANDOVER_TIMEOUT.as_millis()));
                }
                false => std::thread::sleep(Duration::from_micros(200)),
            }
        };
        if let Err(why) = caught_up {
            return self.abort_handover(name, epoch, to, why);
        }
        let caught_up_at = started.elapsed();
        if handover.step < HandoverStep::CaughtUp {
            let step = Command::HandoverStep { log: name.into(), epoch, step: HandoverStep::CaughtUp };
            let _ = self.controller.propose(step, Duration::from_secs(1));
        }
        let elect_cmd =
            Command::Elect { log: name.into(), expected_epoch: epoch, leader: to, reason: ElectReason::Handover };
        self.placements.lock().entry(name.to_owned()).or_default().elect_proposed = Some(epoch);
        match self.controller.propose(elect_cmd, Duration::from_secs(2)) {
            Ok(Reply::Leader { leader, epoch: next, .. }) => {
                log_line(&format!(
                    "node {leader} elected leader of {scope} in epoch {next} (handover: caught up in {} us, elected in {} us)",
                    caught_up_at.as_micros(),
                    started.elapsed().as_micros()
                ));
                // Until this member's copy of the map shows it, the loop would carry on again.
                self.wait_local(name, |p| p.epoch > epoch);
            }
            // Refused: the handover is no longer under way; Conflict: another election came
            // first. Either way appends stay refused here until the map is seen again.
            Ok(other) => log_line(&format!("handover of {scope} (epoch {epoch}) to node {to}: {other:?}")),
            Err(e) => log_line(&format!("handover of {scope} (epoch {epoch}) to node {to} not committed: {e}")),
        }
    }

    /// `f` on the replication server, while this node runs placement `name` as the leader of
    /// `epoch`.
    fn as_leader<T>(&self, name: &str, epoch: u64, f: impl FnOnce(&Server) -> T) -> Option<T> {
        let running = self.running.lock();
        let running = running.as_ref()?;
        (running.roles.get(name) == Some(&(Role::Leader, epoch))).then(|| f(&running.server))
    }

    /// Tells the controller which replicas of placement `name` are in sync (this node, and
    /// those within [`PROMOTE_LAG_BYTES`] of its written end on every log of it), when that
    /// changed: status shows it, and a node removed while it leads hands over to one of them.
    fn report_in_sync(&self, name: &str, placement: &LogMap) {
        let me = self.config.node_id;
        let scope = Scope::of(name);
        let in_sync = self.as_leader(name, placement.epoch, |s| {
            placement.replicas.iter().copied().filter(|n| *n == me || scope.keeps_up(s, *n)).collect::<Vec<_>>()
        });
        let Some(in_sync) = in_sync else { return };
        if in_sync != placement.in_sync {
            let report = Command::SetInSync { log: name.into(), epoch: placement.epoch, in_sync };
            let _ = self.controller.propose(report, HEARTBEAT_INTERVAL);
        }
    }

    /// The change of replicas this node, leading placement `name` in its epoch, has to carry
    /// out now, if any: `Some(Some(learner))` to promote a learner nearly caught up (within
    /// [`PROMOTE_LAG_BYTES`] on every log), `Some(None)` to take the leaving replica out.
    fn replica_change_due(&self, name: &str, placement: &LogMap) -> Option<Option<NodeId>> {
        let me = self.config.node_id;
        let scope = Scope::of(name);
        let nothing_asked = placement.learners.is_empty() && placement.leaving.is_none();
        let retry_at = self.placements.lock().get(name).and_then(|p| p.change_retry_at);
        if nothing_asked || retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        self.as_leader(name, placement.epoch, |server| {
            let close = |node: &NodeId| *node == me || scope.keeps_up(server, *node);
            if placement.leaving.is_some_and(|l| l != me) {
                let (replicas, quorum) = placement.replicas_after(None);
                return (replicas.iter().filter(|n| close(n)).count() >= quorum as usize).then_some(None);
            }
            // A learner just connected has acknowledged nothing yet; one kept behind by a steady
            // stream of writes is promoted, after a while, from further back.
            let mut placements = self.placements.lock();
            let connected = &mut placements.entry(name.to_owned()).or_default().learners_connected;
            connected.retain(|l, _| placement.learners.contains(l));
            let mut ready = None;
            for learner in &placement.learners {
                let Some(lag) = scope.lag_bytes(server, *learner) else {
                    connected.remove(learner);
                    continue;
                };
                let since = *connected.entry(*learner).or_insert_with(Instant::now);
                let allowed = match since.elapsed() {
                    t if t >= PROMOTE_PATIENCE => PROMOTE_LAG_BYTES_LATE,
                    t if t >= PROMOTE_SETTLE => PROMOTE_LAG_BYTES,
                    _ => continue,
                };
                if lag <= allowed {
                    ready = Some(Some(*learner));
                    break;
                }
            }
            ready
        })
        .flatten()
    }

    /// Carries out a change of the replicas of placement `name`, which this node leads in
    /// `placement`'s epoch: promotes `promote` (a learner), or takes out the leaving replica.
    /// Appends are refused meanwhile (for milliseconds): the change is committed only once a
    /// quorum of the new replicas (the learner among them) holds every record written here, so
    /// that every election of the next epochs, counting the new replicas, finds every
    /// committed record. When they do not within [`CHANGE_TIMEOUT`], appends are taken again
    /// and the change is tried later.
    fn change_replicas(self: &Arc<Self>, name: &str, placement: &LogMap, promote: Option<NodeId>) {
        let me = self.config.node_id;
        let scope = Scope::of(name);
        let epoch = placement.epoch;
        let (replicas, quorum) = placement.replicas_after(promote);
        let command = match (promote, placement.leaving) {
            (Some(node), _) => Command::PromoteReplica { log: name.into(), epoch, node },
            (None, Some(node)) => Command::RetireReplica { log: name.into(), epoch, node },
            (None, None) => return,
        };
        let started = Instant::now();
        if self.as_leader(name, epoch, |s| scope.pause(s, true).is_ok()) != Some(true) {
            return;
        }
        loop {
            // The learner itself, and a quorum of the new replicas (it among them).
            let held = self.as_leader(name, epoch, |s| {
                if promote.is_none_or(|learner| scope.caught_up(s, learner)) {
                    scope.holding(s, &replicas)
                } else {
                    0
                }
            });
            match held {
                None => return, // no longer leading this epoch: the map moved on
                Some(held) if held >= quorum as usize => break,
                Some(_) if started.elapsed() >= CHANGE_TIMEOUT || self.stop.load(Ordering::SeqCst) => {
                    log_line(&format!(
                        "node {me}: replicas {replicas:?} of {scope} did not hold epoch {epoch}'s records within {} ms; appends taken again",
                        CHANGE_TIMEOUT.as_millis()
                    ));
                    self.as_leader(name, epoch, |s| scope.pause(s, false));
                    self.placements.lock().entry(name.to_owned()).or_default().change_retry_at =
                        Some(Instant::now() + CHANGE_RETRY);
                    return;
                }
                Some(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
        // Sent until the answer is certain: after a lost reply the change may have been made,
        // and appends taken again in this epoch would then be on too few of the new replicas.
        loop {
            match self.controller.propose(command.clone(), Duration::from_secs(1)) {
                Ok(Reply::Leader { epoch: next, .. }) => {
                    log_line(&format!(
                        "node {me} leads {scope} in epoch {next} with replicas {replicas:?}, quorum {quorum} ({} us of refused appends)",
                        started.elapsed().as_micros()
                    ));
                    self.wait_local(name, |p| p.epoch > epoch);
                    return;
                }
                // The map moved on (this change, or an election): the loop follows it.
                Ok(Reply::Conflict { .. }) => return,
                Ok(other) => {
                    log_line(&format!("node {me}: change of replicas of {scope} in epoch {epoch} refused: {other:?}"));
                    self.as_leader(name, epoch, |s| scope.pause(s, false));
                    return;
                }
                Err(_) if self.stop.load(Ordering::SeqCst) => return,
                Err(e) if self.as_leader(name, epoch, |_| ()).is_none() => {
                    return log_line(&format!("change of replicas of {scope}: {e}"))
                }
                Err(_) => {}
            }
        }
    }

    /// Gives up the handover of placement `name` in `epoch` to `to`, and takes appends again:
    /// at once when this node never proposed the target's election in `epoch` (only the
    /// leader handing over proposes it, and a restarted node never leads the same epoch, so
    /// no election of the target can come), else once the abort is committed (no election
    /// of the target can follow it). Taken again at once, appends do not wait for the
    /// controller, which may be electing a leader of its own when the target died with it.
    fn abort_handover(&self, name: &str, epoch: u64, to: NodeId, reason: String) {
        let me = self.config.node_id;
        let scope = Scope::of(name);
        let proposed = self.placements.lock().get(name).and_then(|p| p.elect_proposed);
        if resumes_before_abort_commits(proposed, epoch) {
            self.as_leader(name, epoch, |s| scope.hand_over(s, None));
        }
        let abort = Command::AbortHandover { log: name.into(), epoch, reason: reason.clone() };
        match self.controller.propose(abort, Duration::from_secs(2)) {
            Ok(Reply::Done) => {
                log_line(&format!("node {me} gave up handing {scope} (epoch {epoch}) over to node {to}: {reason}"));
                self.as_leader(name, epoch, |s| scope.hand_over(s, None));
                self.wait_local(name, |p| {
                    p.epoch > epoch || p.handover.as_ref().is_none_or(|h| h.under_way(epoch).is_none())
                });
            }
            other => log_line(&format!("handover of {scope} (epoch {epoch}) to node {to} not given up: {other:?}")),
        }
    }

    /// Waits (up to a second) until this member's copy of placement `name` satisfies `done`.
    fn wait_local(&self, name: &str, done: impl Fn(&LogMap) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline && !self.controller.local_map().logs.get(name).is_some_and(&done) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Where peers and clients reach this node: its advertised address, or where its server
    /// listens.
    fn data_addr(&self) -> String {
        if let Some(addr) = self.config.advertise {
            return addr.to_string();
        }
        self.running.lock().as_ref().map_or(self.config.server.listen, |r| r.server.local_addr()).to_string()
    }

    /// The controller's leader creates the placement once every voter has registered: the
    /// lowest id leads first, a majority commits.
    fn create_placement(&self) {
        let map = self.controller.local_map();
        if !self.config.cluster.keys().all(|id| map.members.contains_key(id)) {
            return;
        }
        if map.cluster_id == 0 {
            // First the cluster's id (`--cluster-id` when given), which every server then runs
            // with: the first leader must not make one of its own (see `ClusterMap::cluster_id`).
            let id = match self.config.server.cluster_id {
                0 => tern_replication::driver::random_cluster_id(),
                given => given,
            };
            let _ = self.controller.propose(Command::SetClusterId { id }, Duration::from_secs(1));
            return;
        }
        let replicas: Vec<NodeId> = self.config.cluster.keys().copied().collect();
        let quorum = self.config.quorum as u32;
        // Not the controller's leader (this node) when another can lead: a failure then takes
        // one leader, not both, and the controller notices at once.
        let leader = replicas.iter().copied().find(|id| *id != self.config.node_id).unwrap_or(replicas[0]);
        let create = Command::CreateLog { log: ALL_LOGS.into(), replicas, quorum, leader };
        let _ = self.controller.propose(create, Duration::from_secs(1));
    }

    /// Elects the leader of the next epoch of placement `name` from the fenced replicas'
    /// reports (see the module docs), and commits the election.
    fn fail_over(self: &Arc<Self>, name: &str, placement: &LogMap) {
        let me = self.config.node_id;
        let scope = Scope::of(name);
        let epoch = placement.epoch + 1;
        let map = self.controller.local_map();
        // The old leader too: when it is alive but went unheard, it stops leading and reports.
        let reporters: Vec<NodeId> = placement.replicas.clone();
        log_line(&format!(
            "node {me} (controller leader): node {} led {scope} in epoch {} and was not heard for {} ms; fencing {reporters:?} at epoch {epoch}",
            placement.leader,
            placement.epoch,
            self.config.failure_timeout.as_millis()
        ));
        // `*`'s replicas leave the logs placed alone out (each kept apart first).
        let (log, except): (Option<String>, Vec<String>) = match scope {
            Scope::All => (None, map.logs.keys().filter(|n| *n != ALL_LOGS).cloned().collect()),
            Scope::Log(log) => (Some(log.to_owned()), Vec::new()),
        };
        // Reports are taken as they come: the election needs n - k + 1 of them, and a node
        // that does not answer (paused, partitioned) must not hold it up. The others get a
        // moment more, so that the most up to date copy is usually among them.
        let needed = placement.replicas.len() + 1 - (placement.quorum as usize).min(placement.replicas.len());
        let (tx, rx) = std::sync::mpsc::channel();
        for node in &reporters {
            let addr = map
                .members
                .get(node)
                .and_then(|m| m.data_addr.parse::<SocketAddr>().ok())
                .or_else(|| self.config.cluster.get(node).copied())
                .map(|a| controller_addr(a).to_string())
                .unwrap_or_default();
            let (node, tx, shared, log, except) = (*node, tx.clone(), self.clone(), log.clone(), except.clone());
            let _ = std::thread::Builder::new().name(format!("tern-fence-{node}")).spawn(move || {
                let scope = (log.as_deref(), except.as_slice());
                let _ = tx.send((node, shared.controller.fence(node, &addr, epoch, scope, FENCE_TIMEOUT)));
            });
        }
        drop(tx);
        let mut reports: BTreeMap<NodeId, Vec<LogReport>> = BTreeMap::new();
        let deadline = Instant::now() + FENCE_TIMEOUT;
        let mut grace: Option<Instant> = None;
        loop {
            let until = grace.map_or(deadline, |g| g.min(deadline));
            let Ok((node, result)) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) else { break };
            match result {
                Ok(logs) => {
                    reports.insert(node, logs);
                }
                Err(e) => log_line(&format!("node {node} did not report: {e}")),
            }
            if reports.len() >= needed && grace.is_none() {
                grace = Some(Instant::now() + REPORT_GRACE);
            }
            if reports.len() == reporters.len() {
                break;
            }
        }
        let chosen = match choose(placement, &reports, Some(me)) {
            Ok(chosen) => chosen,
            Err(why) => {
                log_line(&format!("no leader elected for {scope} in epoch {epoch}: {why}"));
                return;
            }
        };
        let elect_cmd = Command::Elect {
            log: name.into(),
            expected_epoch: placement.epoch,
            leader: chosen,
            reason: ElectReason::Failover,
        };
        match self.controller.propose(elect_cmd, Duration::from_secs(2)) {
            Ok(Reply::Leader { leader, epoch, .. }) => {
                log_line(&format!("node {leader} elected leader of {scope} in epoch {epoch}"));
            }
            Ok(other) => log_line(&format!("election of {scope} in epoch {epoch}: {other:?}")),
            Err(e) => log_line(&format!("election of {scope} in epoch {epoch} not committed: {e}")),
        }
    }
}

/// The node to lead every log next: one whose copy of every log is the most up to date among
/// the reports (so it holds every committed record of each), from at least `n - k + 1`
/// reporters. Among several, the lowest id other than `avoid` (the controller's leader: a node
/// that leads both takes both down when it fails).
///
/// # Errors
/// Too few reports, a quorum that does not allow automatic failover, or no single reporter
/// most up to date on every log (each log's best copy is on another node: then an operator
/// promotes by hand).
pub fn choose(
    placement: &LogMap,
    reports: &BTreeMap<NodeId, Vec<LogReport>>,
    avoid: Option<NodeId>,
) -> Result<NodeId, String> {
    let candidates = most_up_to_date(placement, reports)?;
    let preferred = candidates.iter().copied().find(|node| Some(*node) != avoid);
    preferred
        .or(candidates.first().copied())
        .ok_or_else(|| "no single replica holds the most complete copy of every log; promote one by hand".to_owned())
}

/// The replica set of `log` under `placement`, and each reporter's report of it (a log a
/// reporter does not hold is an empty copy: epoch 0, end 0).
fn election_of(placement: &LogMap, reports: &BTreeMap<NodeId, Vec<LogReport>>, log: &str) -> (ReplicaSet, Vec<Report>) {
    let set = ReplicaSet {
        log: log.to_owned(),
        replicas: placement.replicas.clone(),
        quorum: Quorum::Count(placement.quorum as usize),
    };
    let of_log = reports
        .iter()
        .map(|(node, logs)| {
            let found = logs.iter().find(|r| r.log == log);
            Report {
                node: *node,
                last_epoch: found.map_or(0, |r| r.last_epoch),
                durable_end: found.map_or(0, |r| r.durable_end),
            }
        })
        .collect();
    (set, of_log)
}

/// The reporters whose copy of every log is the most up to date among the reports, lowest id
/// first (empty when each log's best copy is on another node).
///
/// # Errors
/// Too few reports, or a quorum that does not allow automatic failover.
pub fn most_up_to_date(placement: &LogMap, reports: &BTreeMap<NodeId, Vec<LogReport>>) -> Result<Vec<NodeId>, String> {
    let logs: std::collections::BTreeSet<&str> =
        reports.values().flatten().map(|r| r.log.as_str()).chain([ALL_LOGS]).collect();
    let mut candidates: Vec<NodeId> = reports.keys().copied().collect();
    for log in logs {
        let (set, of_log) = election_of(placement, reports, log);
        let best = elect(&set, &of_log, None).map_err(|e| e.to_string())?;
        let key = |r: &Report| (r.last_epoch, r.durable_end);
        candidates.retain(|node| of_log.iter().any(|r| r.node == *node && key(r) == key(&best)));
    }
    Ok(candidates)
}

/// `tern promote` (`log` `None`) or `--log NAME`: makes `target` the leader of every log
/// without a placement of its own, or of log `NAME` (placed alone first when it is not yet,
/// see [`handover`]), in the next epoch, asked through the controller member of the node at
/// data address `any`. Every replica that answers is fenced
/// at the next epoch first and reports (the leader too: it stops leading). Without `force`,
/// `target` must be most up to date on every log among at least `n - k + 1` reports (it then
/// holds every committed record). With `force` fewer reports do, and the records that may be
/// lost are computed per log (`election::forced_promotion`), recorded in the map with the
/// election, and returned for the operator: never silent.
///
/// # Errors
/// No controller, no placement yet, `target` not a replica or not answering, or (without
/// `force`) too few reports or a target that lacks records another replica holds.
pub fn promote(any: SocketAddr, log: Option<&str>, target: NodeId, force: bool) -> Result<Vec<String>, String> {
    let admin = Admin::new(any)?;
    let name = log.unwrap_or(ALL_LOGS);
    let scope = Scope::of(name);
    let mut lines = Vec::new();
    // The leader that stopped may have led the controller too: its members elect another.
    let deadline = Instant::now() + Duration::from_secs(10);
    let map = placed_map(&admin, name, deadline, &mut lines)?;
    let placement = map.logs.get(name).cloned().ok_or("the placement is gone")?;
    if !placement.replicas.contains(&target) {
        return Err(format!("node {target} is not one of the replicas {:?}", placement.replicas));
    }
    if placement.leader == target {
        return Err(format!("node {target} leads epoch {} already", placement.epoch));
    }
    let epoch = placement.epoch + 1;
    if !force {
        // A planned move: the leader stops taking appends (of the log placed alone: the other
        // logs' go on) and waits until the target holds its every record, so that the target
        // is sure to be elected. A leader that does not answer is not waited for (the election
        // then decides whether the target may lead).
        let leader_addr = map.members.get(&placement.leader).and_then(|m| m.data_addr.parse::<SocketAddr>().ok());
        if let Some(addr) = leader_addr {
            let at = controller_addr(addr).to_string();
            let wait = Duration::from_secs(2);
            let drained = match scope {
                Scope::All => admin.client.drain(&at, target, wait),
                Scope::Log(log) => admin.client.drain_log(&at, log, target, wait),
            };
            match drained {
                Ok(ms) => lines.push(format!(
                    "node {} stopped taking appends; node {target} caught up in {ms} ms",
                    placement.leader
                )),
                Err(e) => lines.push(format!("node {} did not hand over: {e}", placement.leader)),
            }
        }
    }
    let mut reports: BTreeMap<NodeId, Vec<LogReport>> = BTreeMap::new();
    // `*`'s replicas leave the logs placed alone out; a log placed alone is fenced alone.
    let placed: Vec<String> = match scope {
        Scope::All => map.logs.keys().filter(|n| *n != ALL_LOGS).cloned().collect(),
        Scope::Log(_) => Vec::new(),
    };
    // Every replica at once: each syncs its logs and its node state.
    let answers: Vec<(NodeId, std::io::Result<Vec<LogReport>>)> = std::thread::scope(|s| {
        let asks: Vec<_> = placement
            .replicas
            .iter()
            .filter_map(|node| {
                let addr = map.members.get(node).and_then(|m| m.data_addr.parse::<SocketAddr>().ok())?;
                let (node, placed) = (*node, &placed);
                Some(s.spawn(move || {
                    let client = tern_controller::ControllerClient::new(Duration::from_secs(3))?;
                    let reports = client.fence(&controller_addr(addr).to_string(), epoch, log, placed);
                    Ok::<_, std::io::Error>((node, reports))
                }))
            })
            .collect();
        asks.into_iter().filter_map(|a| a.join().ok().and_then(Result::ok)).collect()
    });
    for (node, answer) in answers {
        match answer {
            Ok(logs) => {
                reports.insert(node, logs);
            }
            Err(e) => lines.push(format!("node {node} did not report: {e}")),
        }
    }
    if !reports.contains_key(&target) {
        return Err(format!("node {target} did not report: only a node that answers can be promoted"));
    }
    let reason = if force {
        let logs: std::collections::BTreeSet<String> = reports.values().flatten().map(|r| r.log.clone()).collect();
        let mut worst: Option<(u64, u64)> = None;
        for log in logs {
            let (set, of_log) = election_of(&placement, &reports, &log);
            let loss =
                tern_replication::election::forced_promotion(&set, target, &of_log).map_err(|e| e.to_string())?;
            lines.push(loss.to_string());
            if !loss.is_none() && worst.is_none_or(|(from, to)| loss.to_at_least - loss.from > to - from) {
                worst = Some((loss.from, loss.to_at_least));
            }
        }
        match worst {
            Some((from, to)) => ElectReason::Forced { from, to },
            None => ElectReason::Failover,
        }
    } else {
        let candidates = most_up_to_date(&placement, &reports)?;
        if !candidates.contains(&target) {
            return Err(format!(
                "node {target} is not the most up to date on every log (most up to date: {candidates:?}); \
                 --force promotes it anyway and says what may be lost"
            ));
        }
        ElectReason::Failover
    };
    let elect_cmd = Command::Elect { log: name.into(), expected_epoch: placement.epoch, leader: target, reason };
    match admin.propose(deadline, &elect_cmd)? {
        // Sent again after a lost reply, the election finds itself made.
        Reply::Leader { leader, epoch, .. } | Reply::Conflict { leader, epoch, .. }
            if leader == target && epoch == placement.epoch + 1 =>
        {
            lines.push(format!("node {leader} leads {scope} in epoch {epoch}"))
        }
        other => return Err(format!("the election of epoch {epoch} did not take effect: {other:?}")),
    }
    Ok(lines)
}

/// `tern handover --all` (`log` `None`) or `--log NAME`: hands the leadership of every log
/// without a placement of its own, or of log `NAME`, over to `target` with no record lost,
/// asked through the controller member of the node at data address `any`, and waits up to
/// `timeout` for the outcome, saying each step as the controller records it. A log handed
/// over alone is first given a placement of its own ([`Command::PlaceLog`]): from then on its
/// leader is elected and handed over apart from the other logs. The leader carries the
/// handover out (see [`HandoverStep`]): it refuses appends, waits until `target` holds its
/// exact end, and elects it in the next epoch; it gives the handover up when `target` does not
/// catch up in [`HANDOVER_TIMEOUT`].
///
/// # Errors
/// No controller, no placement yet, `target` not a replica or leading already, another
/// handover under way, the handover given up or overtaken by a failover, or no outcome within
/// `timeout` (it goes on: `tern status` shows its step).
pub fn handover(any: SocketAddr, log: Option<&str>, target: NodeId, timeout: Duration) -> Result<Vec<String>, String> {
    let admin = Admin::new(any)?;
    let deadline = Instant::now() + timeout;
    let name = log.unwrap_or(ALL_LOGS);
    let scope = Scope::of(name);
    let mut lines = Vec::new();
    let map = placed_map(&admin, name, deadline, &mut lines)?;
    let placement = map.logs.get(name).cloned().ok_or("the placement is gone")?;
    let epoch = placement.epoch;
    let start = Command::StartHandover { log: name.into(), epoch, to: target };
    match admin.propose(deadline, &start)? {
        Reply::Leader { .. } => {}
        Reply::Conflict { leader, epoch: now, .. } => {
            return Err(format!("node {leader} leads epoch {now} now (was {epoch}): try again"));
        }
        other => return Err(format!("the handover did not start: {other:?}")),
    }
    let started = Instant::now();
    lines.push(format!(
        "handover of {scope} from node {} (epoch {epoch}) to node {target}: {}",
        placement.leader,
        HandoverStep::Fenced.name()
    ));
    let mut said = HandoverStep::Fenced;
    loop {
        let map = admin.read_map(deadline)?;
        let now = map.logs.get(name).ok_or("the placement is gone")?;
        let step = now.handover.as_ref().filter(|h| h.epoch == epoch && h.to == target).map(|h| (h.step, &h.reason));
        let ms = started.elapsed().as_millis();
        match step {
            Some((HandoverStep::Promoted, _)) => {
                lines.push(format!(
                    "{ms} ms: {}: node {target} leads {scope} in epoch {}",
                    HandoverStep::Promoted.name(),
                    now.epoch
                ));
                return Ok(lines);
            }
            Some((HandoverStep::Aborted, reason)) => {
                return Err(format!("{ms} ms: the handover was given up: {reason}"))
            }
            _ if now.epoch != epoch => {
                return Err(format!("{ms} ms: overtaken: node {} leads epoch {} (a failover)", now.leader, now.epoch));
            }
            Some((step, _)) if step > said => {
                lines.push(format!("{ms} ms: {}", step.name()));
                said = step;
            }
            _ => {}
        }
        if started.elapsed() >= timeout {
            return Err(format!(
                "no outcome within {} ms; the handover goes on at step {} (see tern status)",
                timeout.as_millis(),
                said.name()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Adds node `node` to the cluster reached at `any`: its `tern serve` runs already, at
/// `data_addr`, started with `--cluster` naming the cluster's voters (and not itself, so that it
/// waits to be added instead of forming a cluster). It joins the controller as a learner (a
/// voter with `voter`), then every log as a learner: its leader ships it a copy, and once the
/// copy is nearly caught up, refusing appends for the last of it, makes it a replica (the
/// quorum resized: a majority stays a majority). Returns a line per step.
///
/// # Errors
/// The controller cannot be reached or refuses, or the copy is not a replica within
/// `timeout` (seeding goes on: see `tern status`).
pub fn add_node(
    any: SocketAddr,
    node: NodeId,
    data_addr: SocketAddr,
    voter: bool,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let admin = Admin::new(any)?;
    let started = Instant::now();
    let deadline = started + timeout;
    let ms = || started.elapsed().as_millis();
    let map = admin.read_map(deadline)?;
    if let Some(member) = map.members.get(&node).filter(|m| m.data_addr != data_addr.to_string()) {
        return Err(format!("node {node} is a member at {} already", member.data_addr));
    }
    let learner = MembershipChange::AddLearner { node, addr: controller_addr(data_addr).to_string() };
    admin.change_members(deadline, &learner)?;
    let mut lines = vec![format!("{} ms: node {node} follows the controller's log", ms())];
    if voter {
        admin.change_members(deadline, &MembershipChange::Promote { nodes: vec![node] })?;
        lines.push(format!("{} ms: node {node} votes in the controller", ms()));
    }
    let register = Command::Register { node, data_addr: data_addr.to_string() };
    admin.propose(deadline, &register)?;
    loop {
        let map = admin.read_map(deadline)?;
        let Some((name, log)) =
            map.logs.iter().find(|(_, l)| !l.replicas.contains(&node) && !l.learners.contains(&node))
        else {
            break;
        };
        let add = Command::AddReplica { log: name.clone(), expected_epoch: log.epoch, node };
        match admin.propose(deadline, &add)? {
            Reply::Leader { epoch, .. } => {
                lines.push(format!("{} ms: log {name}: seeding node {node} (epoch {epoch})", ms()))
            }
            Reply::Conflict { .. } => {} // the epoch moved on meanwhile: read again
            other => return Err(format!("log {name}: node {node} not added: {other:?}")),
        }
    }
    loop {
        let map = admin.read_map(deadline)?;
        let seeding: Vec<&String> =
            map.logs.iter().filter(|(_, l)| !l.replicas.contains(&node)).map(|(n, _)| n).collect();
        if seeding.is_empty() {
            for (name, log) in &map.logs {
                lines.push(format!(
                    "{} ms: log {name}: node {node} is a replica (epoch {}, replicas {:?}, quorum {})",
                    ms(),
                    log.epoch,
                    log.replicas,
                    log.quorum
                ));
            }
            return Ok(lines);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "node {node} is still being seeded with {seeding:?} after {} ms; it goes on (see tern status)",
                ms()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Removes node `node` from the cluster reached at `any`: the logs it leads are handed over to
/// another replica first; then, through each log's leader, it leaves the replicas once the
/// replicas left hold every record (the quorum resized); then it leaves the controller and the
/// map. Its `tern serve` is to be stopped after. Returns a line per step.
///
/// # Errors
/// The controller cannot be reached or refuses, a handover fails, or the node still holds a
/// copy after `timeout`.
pub fn remove_node(any: SocketAddr, node: NodeId, timeout: Duration) -> Result<Vec<String>, String> {
    let admin = Admin::new(any)?;
    let started = Instant::now();
    let deadline = started + timeout;
    let ms = || started.elapsed().as_millis();
    let mut lines = Vec::new();
    loop {
        // The logs the node leads are handed over first: at the start, and again whenever a
        // failover elected it meanwhile (the most up to date replica, though leaving), since
        // a leader never takes itself out.
        let map = admin.read_map(deadline)?;
        for (name, placement) in map.logs.iter().filter(|(_, p)| p.leader == node) {
            let to = placement
                .in_sync
                .iter()
                .chain(&placement.replicas)
                .copied()
                .find(|r| *r != node)
                .ok_or_else(|| format!("node {node} is the only replica: nothing to hand its logs over to"))?;
            let log = (name != ALL_LOGS).then_some(name.as_str());
            match handover(any, log, to, deadline.saturating_duration_since(Instant::now())) {
                Ok(said) => lines.extend(said),
                // A failover or a handover may be settling: tried again until the deadline.
                Err(why) if Instant::now() < deadline => {
                    lines.push(format!("{} ms: log {name}: handover to node {to} failed ({why}); trying again", ms()));
                }
                Err(why) => return Err(why),
            }
        }
        let map = admin.read_map(deadline)?;
        let holding: Vec<(&String, &LogMap)> =
            map.logs.iter().filter(|(_, l)| l.replicas.contains(&node) || l.learners.contains(&node)).collect();
        if holding.is_empty() {
            break;
        }
        for (name, log) in holding {
            if log.leaving == Some(node) || log.leader == node {
                continue;
            }
            let remove = Command::RemoveReplica { log: name.clone(), expected_epoch: log.epoch, node };
            match admin.propose(deadline, &remove)? {
                Reply::Done => {
                    lines.push(format!("{} ms: log {name}: node {node} leaving (epoch {})", ms(), log.epoch))
                }
                Reply::Leader { epoch, .. } => {
                    lines.push(format!("{} ms: log {name}: learner {node} gone (epoch {epoch})", ms()))
                }
                Reply::Conflict { .. } => {}
                Reply::Refused(why) => return Err(why),
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("node {node} still holds a copy after {} ms (see tern status)", ms()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let map = admin.read_map(deadline)?;
    for (name, log) in &map.logs {
        lines.push(format!(
            "{} ms: log {name}: replicas {:?}, quorum {} (epoch {})",
            ms(),
            log.replicas,
            log.quorum,
            log.epoch
        ));
    }
    admin.change_members(deadline, &MembershipChange::Remove { nodes: vec![node] })?;
    admin.propose(deadline, &Command::Unregister { node })?;
    lines.push(format!("{} ms: node {node} left the controller and the cluster: stop its tern serve now", ms()));
    Ok(lines)
}

/// The map, read through `admin`, once placement `name` is in it:
/// a log not placed alone yet is placed first ([`Command::PlaceLog`]), said in `lines`.
fn placed_map(
    admin: &Admin,
    name: &str,
    deadline: Instant,
    lines: &mut Vec<String>,
) -> Result<tern_controller::ClusterMap, String> {
    let map = admin.read_map(deadline)?;
    if map.logs.contains_key(name) {
        return Ok(map);
    }
    let all = map.logs.get(ALL_LOGS).ok_or("the cluster has no leader placement yet")?;
    let place = Command::PlaceLog { log: name.to_owned(), expected_epoch: all.epoch };
    match admin.propose(deadline, &place)? {
        Reply::Leader { leader, epoch, .. } => {
            lines.push(format!("log {name} placed alone: node {leader} leads it in epoch {epoch}"));
        }
        Reply::Conflict { leader, epoch, .. } => {
            return Err(format!("node {leader} leads epoch {epoch} of every log now: try again"));
        }
        other => return Err(format!("log {name} was not placed alone: {other:?}")),
    }
    admin.read_map(deadline)
}

/// How an operator's command reaches the controller: through the member beside the node it
/// was given, and, once it has read the map, through any member the map names, so that the
/// command goes on when the node it asked dies or is cut off (it would otherwise wait out its
/// whole deadline on that one node).
struct Admin {
    client: tern_controller::ControllerClient,
    /// Controller addresses to ask, the one given first; `at` is the one asked now.
    contacts: std::cell::RefCell<Vec<String>>,
    at: std::cell::Cell<usize>,
}

impl Admin {
    fn new(any: SocketAddr) -> Result<Admin, String> {
        let client = tern_controller::ControllerClient::new(Duration::from_secs(3)).map_err(|e| e.to_string())?;
        let contacts = std::cell::RefCell::new(vec![controller_addr(any).to_string()]);
        Ok(Admin { client, contacts, at: std::cell::Cell::new(0) })
    }

    /// `what`, asked of one member after another, until it succeeds or `deadline` passes: a
    /// member that is down, or a controller electing its leader, is waited out (for requests
    /// that may be sent again).
    fn retrying<T>(
        &self,
        deadline: Instant,
        what: impl Fn(&tern_controller::ControllerClient, &str) -> std::io::Result<T>,
    ) -> Result<T, String> {
        loop {
            let contact = self.contacts.borrow()[self.at.get()].clone();
            match what(&self.client, &contact) {
                Ok(answer) => return Ok(answer),
                Err(e) if Instant::now() >= deadline => return Err(format!("controller at {contact}: {e}")),
                Err(_) => {
                    self.at.set((self.at.get() + 1) % self.contacts.borrow().len());
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// The map, read at the controller's leader; its members become contacts.
    fn read_map(&self, deadline: Instant) -> Result<tern_controller::ClusterMap, String> {
        let map = self.retrying(deadline, |c, at| c.read_map(at))?;
        let mut contacts = self.contacts.borrow_mut();
        for member in map.members.values() {
            let Ok(addr) = member.data_addr.parse::<SocketAddr>() else { continue };
            let addr = controller_addr(addr).to_string();
            if !contacts.contains(&addr) {
                contacts.push(addr);
            }
        }
        Ok(map)
    }

    fn propose(&self, deadline: Instant, command: &Command) -> Result<Reply, String> {
        self.retrying(deadline, |c, at| c.propose(at, command.clone()))
    }

    fn change_members(&self, deadline: Instant, change: &MembershipChange) -> Result<(), String> {
        self.retrying(deadline, |c, at| c.change_members(at, change.clone()))
    }
}

/// Whether a leader giving up its handover in `epoch` may take appends again before the
/// controller commits the abort, `elect_proposed` being the last epoch in which it proposed
/// its target's election: only when it never proposed it in `epoch`. After such a proposal
/// whose answer it did not get, the election may still commit; the target would then lead
/// the next epoch without the records acknowledged here meanwhile.
fn resumes_before_abort_commits(elect_proposed: Option<u64>, epoch: u64) -> bool {
    elect_proposed != Some(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_that_proposed_its_targets_election_waits_for_the_abort() {
        assert!(resumes_before_abort_commits(None, 7), "no election proposed: appends at once");
        assert!(resumes_before_abort_commits(Some(6), 7), "an election proposed in an earlier epoch");
        assert!(!resumes_before_abort_commits(Some(7), 7), "an election proposed in this epoch may still commit");
    }
}
