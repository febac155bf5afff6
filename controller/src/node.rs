//! One controller member: an openraft node whose log is a Tern log, serving its peers and the
//! node's own proposals, with a blocking API for the thread-based server around it.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, SnapshotPolicy};
use openraft_tern::{Application, LogStore, StateMachineStore};
use tern_replication::message::NodeId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::map::{ClusterMap, Command, Reply};
use crate::network::{call, Network};
use crate::rpc::{read_frame, write_frame, LogReport, MembershipChange, Request, Response, ServeError};
use crate::TypeConfig;

impl Application<TypeConfig> for ClusterMap {
    fn apply(&mut self, _log_id: &openraft::LogId<NodeId>, request: &Command) -> Reply {
        self.apply_command(request)
    }
}

/// Settings of a controller member.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// Directory of the controller's Raft log and snapshots.
    pub dir: PathBuf,
    /// Address the controller listens on (port 0 picks one: see [`Controller::addr`]).
    pub listen: String,
    /// The voters and their controller addresses. A member whose store is empty and who is
    /// listed here forms the cluster with them (every listed member doing so with the same list
    /// is safe); a restarted member rejoins from its own state.
    pub voters: BTreeMap<NodeId, String>,
    /// Raft heartbeat interval.
    pub heartbeat: Duration,
    /// Raft election timeout range (a follower that hears no leader for a random time in it
    /// starts an election); each voter takes its own slice of it, by rank of id.
    pub election_timeout: (Duration, Duration),
}

impl ControllerConfig {
    /// Defaults for a member: 50 ms heartbeats, elections after 150 to 300 ms of silence beyond
    /// the leader's lease (as long as the longest election timeout): the controller's own
    /// failover is part of a log leader's when one node leads both.
    pub fn new(node_id: NodeId, dir: PathBuf, listen: String, voters: BTreeMap<NodeId, String>) -> Self {
        ControllerConfig {
            node_id,
            dir,
            listen,
            voters,
            heartbeat: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(150), Duration::from_millis(300)),
        }
    }
}

/// This member's slice of the election timeout range, in milliseconds: the range split in as
/// many slices as voters, taken by rank of id. openraft draws one timeout per process, so two
/// members that drew close ones would start their elections together after every leader's
/// death and split the votes again and again; members in disjoint slices never do.
fn election_band(me: NodeId, voters: &BTreeMap<NodeId, String>, (min, max): (Duration, Duration)) -> (u64, u64) {
    let (min, max) = (min.as_millis() as u64, max.as_millis() as u64);
    let slices = voters.len().max(1) as u64;
    let rank = voters.keys().position(|id| *id == me).map_or(slices - 1, |r| r as u64);
    let width = (max.saturating_sub(min) / slices).max(1);
    (min + rank * width, min + (rank + 1) * width)
}

/// Why a controller request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// No controller leader answered in time (a quorum of members may be down or partitioned).
    #[error("no controller leader answered within {waited_ms} ms (last known leader: {leader:?})")]
    NoLeader {
        /// How long it tried.
        waited_ms: u64,
        /// The leader it last heard of.
        leader: Option<NodeId>,
    },
    /// This member took the request as the controller's leader, but a quorum of members did
    /// not answer in time (they are down or cut off). A command may still be committed later.
    #[error("not committed by a quorum of the controller within {waited_ms} ms (it may still be)")]
    NoQuorum {
        /// How long it tried.
        waited_ms: u64,
    },
    /// The controller refused or failed.
    #[error("controller: {0}")]
    Failed(String),
    /// Starting the member failed.
    #[error("controller: {0}")]
    Io(#[from] io::Error),
}

/// What a member knows of the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerStatus {
    /// This member.
    pub node_id: NodeId,
    /// The controller's leader, if known.
    pub leader: Option<NodeId>,
    /// The Raft term.
    pub term: u64,
    /// Voters and their controller addresses.
    pub voters: BTreeMap<NodeId, String>,
    /// Learners (members that follow the map without voting).
    pub learners: Vec<NodeId>,
    /// Index of the last entry applied to this member's map.
    pub applied: Option<u64>,
}

/// What the controller asks of the data node it runs beside (`tern serve` implements it with
/// its replication server).
pub trait DataNode: Send + Sync + 'static {
    /// Fences every log at `epoch`, durably, and reports where each ends (see
    /// `tern_replication::driver::Server::fence`).
    ///
    /// # Errors
    /// Why it could not (a node that leads does not report).
    /// Only log `log` when given (placed alone: `Server::fence_log`); without it, every log
    /// but those in `except` (placed alone, each given a fence of its own first).
    fn fence(&self, epoch: u64, log: Option<&str>, except: &[String]) -> Result<Vec<LogReport>, String>;

    /// A leader handing over to `target`: stops taking appends and waits until `target` holds
    /// every record, for up to `timeout`; returns how long that took.
    ///
    /// # Errors
    /// The node does not lead, or `target` did not catch up in time.
    fn drain(&self, target: NodeId, timeout: Duration) -> Result<Duration, String> {
        let _ = (target, timeout);
        Err("this node does not hand over".into())
    }

    /// As [`DataNode::drain`], for log `log` alone (placed alone, led here): its appends stop,
    /// the other logs' go on.
    ///
    /// # Errors
    /// The node does not lead `log`, or `target` did not catch up in time.
    fn drain_log(&self, log: &str, target: NodeId, timeout: Duration) -> Result<Duration, String> {
        let _ = (log, target, timeout);
        Err("this node does not hand over".into())
    }
}

/// The epoch of each placement a data leader leads, as its heartbeat says.
pub type Leads = BTreeMap<String, u64>;

/// What the member's tasks share.
struct Shared {
    node_id: NodeId,
    raft: openraft::Raft<TypeConfig>,
    map: StateMachineStore<TypeConfig, ClusterMap>,
    data_node: parking_lot::Mutex<Option<Arc<dyn DataNode>>>,
    /// When each data leader was last heard, and in which epoch (kept by every member).
    heartbeats: parking_lot::Mutex<BTreeMap<NodeId, (Leads, Instant)>>,
    /// Connections this member's data leader heartbeats over, by member address: `None` while
    /// a heartbeat to that member is under way (the next one skips it).
    heartbeat_streams: parking_lot::Mutex<BTreeMap<String, Option<tokio::net::TcpStream>>>,
    /// Since when this member leads the controller (`None`: it does not).
    leading_since: parking_lot::Mutex<Option<Instant>>,
}

/// One running controller member. Dropping it (or [`Controller::shutdown`]) stops it.
pub struct Controller {
    node_id: NodeId,
    addr: SocketAddr,
    raft: openraft::Raft<TypeConfig>,
    map: StateMachineStore<TypeConfig, ClusterMap>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").field("node_id", &self.node_id).field("addr", &self.addr).finish()
    }
}

impl Controller {
    /// Starts a member: opens its Raft log and map under `config.dir`, listens, and forms the
    /// cluster with the listed voters when its store is empty.
    ///
    /// # Errors
    /// I/O errors opening the store or binding the address; a damaged store, named.
    pub fn start(config: ControllerConfig) -> Result<Controller, ControllerError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("tern-controller-{}", config.node_id))
            .enable_all()
            .build()?;
        let wal_error = |e: tern_wal::Error| ControllerError::Failed(e.to_string());
        let log = LogStore::<TypeConfig>::open(&config.dir.join("raft")).map_err(wal_error)?;
        let map = StateMachineStore::<TypeConfig, ClusterMap>::open(&config.dir.join("map")).map_err(wal_error)?;
        let election_band = election_band(config.node_id, &config.voters, config.election_timeout);
        let raft_config = openraft::Config {
            cluster_name: "tern-controller".into(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: election_band.0,
            election_timeout_max: election_band.1,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(10_000),
            max_in_snapshot_log_to_keep: 1_000,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| ControllerError::Failed(e.to_string()))?);
        let (stop, stopped) = watch::channel(false);
        let (raft, addr, shared) = runtime.block_on(async {
            let raft = openraft::Raft::new(config.node_id, raft_config, Network, log.clone(), map.clone())
                .await
                .map_err(|e| ControllerError::Failed(e.to_string()))?;
            let listener = TcpListener::bind(&config.listen).await?;
            let addr = listener.local_addr()?;
            let shared = Arc::new(Shared {
                node_id: config.node_id,
                raft: raft.clone(),
                map: map.clone(),
                data_node: parking_lot::Mutex::new(None),
                heartbeats: parking_lot::Mutex::new(BTreeMap::new()),
                heartbeat_streams: parking_lot::Mutex::new(BTreeMap::new()),
                leading_since: parking_lot::Mutex::new(None),
            });
            tokio::spawn(watch_leadership(shared.clone(), stopped.clone()));
            tokio::spawn(serve(listener, shared.clone(), stopped));
            let pristine = {
                let mut log = log.clone();
                use openraft::storage::RaftLogStorage;
                let state = log.get_log_state().await.map_err(|e| ControllerError::Failed(e.to_string()))?;
                let vote = log.read_vote().await.map_err(|e| ControllerError::Failed(e.to_string()))?;
                state.last_log_id.is_none() && vote.is_none()
            };
            if !pristine {
                // A restarted member campaigns at once (it has heard no leader yet) and, with
                // no pre-vote in openraft 0.9, its higher term makes a healthy leader step
                // down when it answers that leader's next append. It stays quiet until it
                // follows a leader and holds that leader's entries (it has applied one of the
                // leader's term), or for a few election timeouts when that does not happen (the
                // whole controller restarted, or the leader died just after it was heard).
                //
                // Hearing the leader is not enough. A member that restarted a moment before the
                // leader died has heard it but lacks its last entries: it campaigns first (its
                // slice of the timeout may be the shortest), every up-to-date member refuses it,
                // and its rising terms make their own campaigns fail in turn. Worse, a candidate
                // refused for a shorter log waits two more election timeouts before its next
                // campaign, and openraft keeps that delay until it campaigns again, however
                // long after: the nemesis saw controller elections of 1.2 to 1.6 s, over three
                // terms, when a leader died just after the previous one's member restarted.
                raft.runtime_config().elect(false);
                tokio::spawn(elect_once_caught_up(raft.clone(), config.node_id, 3 * config.election_timeout.1));
            }
            if pristine && config.voters.contains_key(&config.node_id) {
                // A voter with an empty store may be one whose disk was lost: it no longer
                // knows whom it voted for, and could vote twice in one term. It is told apart
                // from a voter starting for the first time by the others' map, where it
                // registered once it had a store.
                if let Some(seen_by) = registered_elsewhere(&config).await {
                    return Err(ControllerError::Failed(format!(
                        "node {me} is registered in the cluster's map already (node {seen_by}'s), but its controller \
                         store in {dir} is empty: its disk was lost or replaced, and it would have forgotten its \
                         votes. Remove it (tern cluster remove-node --node {me}), then start it with an empty \
                         directory and without naming it in --cluster, and add it again (tern cluster add-node)",
                        me = config.node_id,
                        dir = config.dir.display()
                    )));
                }
                let voters: BTreeMap<NodeId, BasicNode> =
                    config.voters.iter().map(|(id, addr)| (*id, BasicNode::new(addr))).collect();
                // Already formed (another member's entries reached us first): fine.
                let _ = raft.initialize(voters).await;
            }
            Ok::<_, ControllerError>((raft, addr, shared))
        })?;
        Ok(Controller { node_id: config.node_id, addr, raft, map, shared, stop, runtime: Some(runtime) })
    }

    /// The address the member listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// This member's node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("running until shutdown")
    }

    /// Applies `command` to the cluster map through the controller's Raft log, forwarding it to
    /// the controller's leader when this member does not lead, and retrying while a leader is
    /// elected, for up to `timeout`. Returns the map's reply once the command is committed.
    ///
    /// A retry after a lost reply may apply a command twice: every [`Command`] is written so
    /// that its second application changes nothing (an `Elect` then answers `Conflict` naming
    /// the leader and epoch the first one installed).
    ///
    /// # Errors
    /// [`ControllerError::NoLeader`] when no leader answered in time.
    pub fn propose(&self, command: Command, timeout: Duration) -> Result<Reply, ControllerError> {
        self.runtime().block_on(propose(&self.raft, command, timeout))
    }

    /// The cluster map as of a linearizable read at the controller's leader: it holds every
    /// command committed before this call.
    ///
    /// # Errors
    /// As [`Controller::propose`].
    pub fn read_map(&self, timeout: Duration) -> Result<ClusterMap, ControllerError> {
        self.runtime().block_on(read_map(&self.raft, &self.map, timeout))
    }

    /// Changes the controller's members (at its leader, forwarded there when this member does
    /// not lead), retrying while a leader is elected, for up to `timeout`. Adding a learner
    /// waits until it has caught up with the log; promoting and removing go through
    /// openraft's joint consensus, so that no two majorities ever decide at once.
    ///
    /// # Errors
    /// [`ControllerError::NoLeader`]; [`ControllerError::Failed`] for a change openraft
    /// refuses (promoting a node that is not a learner, removing every voter).
    pub fn change_members(&self, change: MembershipChange, timeout: Duration) -> Result<(), ControllerError> {
        self.runtime().block_on(change_members_at_leader(&self.raft, change, timeout))
    }

    /// Sets the data node this member fences and reports for ([`DataNode`]).
    pub fn set_data_node(&self, node: Arc<dyn DataNode>) {
        *self.shared.data_node.lock() = Some(node);
    }

    /// A data leader's heartbeat: tells every controller member that this node is alive and
    /// leads in `epoch`, and succeeds once the controller's leader took it. Every member keeps
    /// it, so that a member that becomes the controller's leader (after the old one died,
    /// perhaps with this node) knows how long each data leader has been silent without first
    /// waiting to hear from it.
    ///
    /// # Errors
    /// [`ControllerError::NoLeader`] when no controller leader answered within `timeout`: a
    /// data leader that cannot reach the controller for its failure timeout stops leading.
    pub fn heartbeat(&self, leads: &Leads, timeout: Duration) -> Result<(), ControllerError> {
        let shared = self.shared.clone();
        let me = self.node_id;
        self.runtime().block_on(async move {
            let deadline = Instant::now() + timeout;
            let mut leader = None;
            loop {
                shared.heartbeats.lock().insert(me, (leads.clone(), Instant::now()));
                let status = self.status();
                leader = status.leader.or(leader);
                let remaining = deadline.saturating_duration_since(Instant::now());
                let mut calls = tokio::task::JoinSet::new();
                for addr in status.voters.iter().filter(|(id, _)| **id != me).map(|(_, addr)| addr.clone()) {
                    // One connection per member, kept: a new one per heartbeat would leave a
                    // trail of local ports in TIME_WAIT.
                    let mut stream = {
                        let mut streams = shared.heartbeat_streams.lock();
                        let stream = match streams.get_mut(&addr) {
                            Some(slot) => match slot.take() {
                                Some(stream) => Some(stream),
                                None => continue, // the last heartbeat to it is still under way
                            },
                            None => None,
                        };
                        streams.insert(addr.clone(), None);
                        stream
                    };
                    let (shared, leads) = (shared.clone(), leads.clone());
                    calls.spawn(async move {
                        let request = Request::Heartbeat { node: me, leads };
                        let answer = call(&mut stream, &addr, &request, remaining).await;
                        let mut streams = shared.heartbeat_streams.lock();
                        match stream {
                            Some(stream) => streams.insert(addr, Some(stream)),
                            None => streams.remove(&addr),
                        };
                        answer
                    });
                }
                // Only a member that leads the controller answers Ok; the calls to the others
                // finish on their own (a paused member must not hold up this one).
                let mut taken = status.leader == Some(me);
                while !taken {
                    let Some(answer) = calls.join_next().await else { break };
                    taken = matches!(answer, Ok(Ok(Response::Heartbeat(Ok(())))));
                }
                calls.detach_all();
                if taken {
                    return Ok(());
                }
                if Instant::now() + NO_LEADER_BACKOFF >= deadline {
                    return Err(ControllerError::NoLeader { waited_ms: timeout.as_millis() as u64, leader });
                }
                tokio::time::sleep(NO_LEADER_BACKOFF).await;
            }
        })
    }

    /// When data leader `node` was last heard by this member, and which placements it led in
    /// which epoch.
    pub fn last_heartbeat(&self, node: NodeId) -> Option<(Leads, Instant)> {
        self.shared.heartbeats.lock().get(&node).cloned()
    }

    /// Since when this member leads the controller, if it does.
    pub fn leading_since(&self) -> Option<Instant> {
        *self.shared.leading_since.lock()
    }

    /// Asks the data node beside member `node` (at controller address `addr`; this member's
    /// own when `node` is this one) to fence its logs at `epoch` and report where they end.
    ///
    /// # Errors
    /// The node's refusal, or no answer within `timeout`.
    pub fn fence(
        &self,
        node: NodeId,
        addr: &str,
        epoch: u64,
        (log, except): (Option<&str>, &[String]),
        timeout: Duration,
    ) -> Result<Vec<LogReport>, ControllerError> {
        if node == self.node_id {
            let data = self.shared.data_node.lock().clone();
            let data = data.ok_or_else(|| ControllerError::Failed("no data node beside this member".into()))?;
            return data.fence(epoch, log, except).map_err(ControllerError::Failed);
        }
        let request = Request::Fence { epoch, log: log.map(str::to_owned), except: except.to_vec() };
        self.runtime().block_on(async {
            match call(&mut None, addr, &request, timeout).await {
                Ok(Response::Fence(Ok(reports))) => Ok(reports),
                Ok(Response::Fence(Err(e))) => Err(ControllerError::Failed(format!("node {node}: {e:?}"))),
                Ok(_) => Err(ControllerError::Failed(format!("node {node}: a response of another kind"))),
                Err(e) => Err(ControllerError::Failed(format!("node {node} at {addr}: {e:?}"))),
            }
        })
    }

    /// The cluster map as this member has applied it: possibly behind the leader's.
    pub fn local_map(&self) -> ClusterMap {
        self.map.with_app(Clone::clone)
    }

    /// What this member knows of the controller.
    pub fn status(&self) -> ControllerStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters = membership
            .voter_ids()
            .map(|id| (id, membership.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default()))
            .collect();
        ControllerStatus {
            node_id: self.node_id,
            leader: metrics.current_leader,
            term: metrics.current_term,
            voters,
            learners: membership.learner_ids().collect(),
            applied: metrics.last_applied.map(|id| id.index),
        }
    }

    /// Waits until some member leads the controller, up to `timeout`; returns it.
    pub fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.raft.metrics().borrow().current_leader {
                return Some(leader);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the member: its Raft node, its listener and its connections. What it committed
    /// stays in its store.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let Some(runtime) = self.runtime.take() else { return };
        let _ = self.stop.send(true);
        let raft = self.raft.clone();
        runtime.block_on(async move {
            let _ = raft.shutdown().await;
        });
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// How long to wait before asking again while no leader is known.
const NO_LEADER_BACKOFF: Duration = Duration::from_millis(50);

/// `call` (a request to this member's Raft), given up at `deadline`: at a member that leads,
/// openraft waits for a quorum for as long as it takes, and the members that would make it may
/// be down for good. The caller's timeout holds only with this.
async fn until<T>(
    deadline: Instant,
    timeout: Duration,
    call: impl std::future::Future<Output = T>,
) -> Result<T, ControllerError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(remaining, call)
        .await
        .map_err(|_| ControllerError::NoQuorum { waited_ms: timeout.as_millis() as u64 })
}

async fn propose(
    raft: &openraft::Raft<TypeConfig>,
    command: Command,
    timeout: Duration,
) -> Result<Reply, ControllerError> {
    let deadline = Instant::now() + timeout;
    let mut leader = None;
    loop {
        match until(deadline, timeout, raft.client_write(command.clone())).await? {
            Ok(written) => return Ok(written.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                leader = forward.leader_id.or(leader);
                if let Some(node) = forward.leader_node {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let request = Request::Propose(command.clone());
                    if let Ok(Response::Propose(result)) = call(&mut None, &node.addr, &request, remaining).await {
                        match result {
                            Ok(reply) => return Ok(reply),
                            Err(ServeError::Failed(reason)) => return Err(ControllerError::Failed(reason)),
                            Err(ServeError::NotLeader { .. } | ServeError::Busy(_)) => {}
                        }
                    }
                }
            }
            Err(e) => return Err(ControllerError::Failed(e.to_string())),
        }
        if Instant::now() + NO_LEADER_BACKOFF >= deadline {
            return Err(ControllerError::NoLeader { waited_ms: timeout.as_millis() as u64, leader });
        }
        tokio::time::sleep(NO_LEADER_BACKOFF).await;
    }
}

async fn read_map(
    raft: &openraft::Raft<TypeConfig>,
    map: &StateMachineStore<TypeConfig, ClusterMap>,
    timeout: Duration,
) -> Result<ClusterMap, ControllerError> {
    let deadline = Instant::now() + timeout;
    let mut leader = None;
    loop {
        match until(deadline, timeout, raft.ensure_linearizable()).await? {
            Ok(_) => return Ok(map.with_app(Clone::clone)),
            Err(RaftError::APIError(e)) => {
                if let CheckIsLeaderError::ForwardToLeader(forward) = e {
                    leader = forward.leader_id.or(leader);
                    if let Some(node) = &forward.leader_node {
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        if let Ok(Response::ReadMap(Ok(map))) =
                            call(&mut None, &node.addr, &Request::ReadMap, remaining).await
                        {
                            return Ok(map);
                        }
                    }
                }
            }
            Err(e) => return Err(ControllerError::Failed(e.to_string())),
        }
        if Instant::now() + NO_LEADER_BACKOFF >= deadline {
            return Err(ControllerError::NoLeader { waited_ms: timeout.as_millis() as u64, leader });
        }
        tokio::time::sleep(NO_LEADER_BACKOFF).await;
    }
}

/// Applies `change` at this member, which must lead: the reply a peer gets.
async fn change_members_here(raft: &openraft::Raft<TypeConfig>, change: MembershipChange) -> Result<(), ServeError> {
    let result = match change {
        MembershipChange::AddLearner { node, addr } => raft.add_learner(node, BasicNode::new(addr), true).await,
        MembershipChange::Promote { nodes } => {
            let ids: std::collections::BTreeSet<NodeId> = nodes.into_iter().collect();
            raft.change_membership(openraft::ChangeMembers::AddVoterIds(ids), false).await
        }
        MembershipChange::Remove { nodes } => {
            let ids: std::collections::BTreeSet<NodeId> = nodes.into_iter().collect();
            let metrics = raft.metrics().borrow().clone();
            let learners: std::collections::BTreeSet<NodeId> =
                metrics.membership_config.membership().learner_ids().filter(|id| ids.contains(id)).collect();
            let voters: std::collections::BTreeSet<NodeId> = ids.difference(&learners).copied().collect();
            let mut result = Ok(None);
            if !voters.is_empty() {
                result = raft.change_membership(openraft::ChangeMembers::RemoveVoters(voters), false).await.map(Some);
            }
            if result.is_ok() && !learners.is_empty() {
                result = raft.change_membership(openraft::ChangeMembers::RemoveNodes(learners), false).await.map(Some);
            }
            match result {
                Ok(_) => return Ok(()),
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(_) => Ok(()),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            Err(ServeError::NotLeader { leader: forward.leader_id, addr: forward.leader_node.map(|n| n.addr) })
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(e)))) => {
            Err(ServeError::Busy(e.to_string()))
        }
        Err(e) => Err(ServeError::Failed(e.to_string())),
    }
}

async fn change_members_at_leader(
    raft: &openraft::Raft<TypeConfig>,
    change: MembershipChange,
    timeout: Duration,
) -> Result<(), ControllerError> {
    let deadline = Instant::now() + timeout;
    let mut leader = None;
    loop {
        match until(deadline, timeout, change_members_here(raft, change.clone())).await? {
            Ok(()) => return Ok(()),
            Err(ServeError::Failed(reason)) => return Err(ControllerError::Failed(reason)),
            Err(ServeError::Busy(_)) => {}
            Err(ServeError::NotLeader { leader: known, addr }) => {
                leader = known.or(leader);
                if let Some(addr) = addr {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let request = Request::ChangeMembers(change.clone());
                    if let Ok(Response::ChangeMembers(result)) = call(&mut None, &addr, &request, remaining).await {
                        match result {
                            Ok(()) => return Ok(()),
                            Err(ServeError::Failed(reason)) => return Err(ControllerError::Failed(reason)),
                            Err(ServeError::NotLeader { .. } | ServeError::Busy(_)) => {}
                        }
                    }
                }
            }
        }
        if Instant::now() + NO_LEADER_BACKOFF >= deadline {
            return Err(ControllerError::NoLeader { waited_ms: timeout.as_millis() as u64, leader });
        }
        tokio::time::sleep(NO_LEADER_BACKOFF).await;
    }
}

/// The first other voter whose copy of the cluster map has node `config.node_id` registered;
/// `None` when none answers so (the others are down or forming the cluster too: a first
/// start).
async fn registered_elsewhere(config: &ControllerConfig) -> Option<NodeId> {
    const ASK_TIMEOUT: Duration = Duration::from_millis(300);
    for (id, addr) in config.voters.iter().filter(|(id, _)| **id != config.node_id) {
        if let Ok(Response::LocalMap(map)) = call(&mut None, addr, &Request::LocalMap, ASK_TIMEOUT).await {
            if map.members.contains_key(&config.node_id) {
                return Some(*id);
            }
        }
    }
    None
}

/// Lets `raft` start elections once it follows another member and has applied an entry of
/// that member's term (so it holds the log up to the leader's first entry at least), or after
/// `quiet`.
async fn elect_once_caught_up(raft: openraft::Raft<TypeConfig>, me: NodeId, quiet: Duration) {
    let mut metrics = raft.metrics();
    let caught_up = metrics.wait_for(|m| {
        m.current_leader.is_some_and(|l| l != me)
            && m.vote.is_committed()
            && m.last_applied.is_some_and(|applied| applied.leader_id.get_term() >= m.vote.leader_id().get_term())
    });
    let _ = tokio::time::timeout(quiet, caught_up).await;
    raft.runtime_config().elect(true);
}

/// Keeps [`Shared::leading_since`] up to date from openraft's metrics.
async fn watch_leadership(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut metrics = shared.raft.metrics();
    loop {
        let leads = metrics.borrow().current_leader == Some(shared.node_id);
        {
            let mut since = shared.leading_since.lock();
            match (leads, *since) {
                (true, None) => *since = Some(Instant::now()),
                (false, Some(_)) => *since = None,
                _ => {}
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

/// Accepts controller connections until told to stop.
async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream, shared.clone(), stop.clone()));
            }
            _ = stop.changed() => return,
        }
    }
}

/// Answers one connection's requests, one at a time, until it closes, sends a bad frame, or
/// the member stops.
async fn serve_connection(mut stream: TcpStream, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let (raft, map) = (&shared.raft, &shared.map);
    loop {
        let request = tokio::select! {
            request = read_frame::<_, Request>(&mut stream) => match request {
                Ok(request) => request,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let response = match request {
            Request::AppendEntries(rpc) => Response::AppendEntries(raft.append_entries(rpc).await),
            Request::Vote(rpc) => Response::Vote(raft.vote(rpc).await),
            Request::InstallSnapshot(rpc) => Response::InstallSnapshot(raft.install_snapshot(rpc).await),
            Request::Propose(command) => Response::Propose(match raft.client_write(command).await {
                Ok(written) => Ok(written.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                    Err(ServeError::NotLeader { leader: forward.leader_id, addr: forward.leader_node.map(|n| n.addr) })
                }
                Err(e) => Err(ServeError::Failed(e.to_string())),
            }),
            Request::ReadMap => Response::ReadMap(match raft.ensure_linearizable().await {
                Ok(_) => Ok(map.with_app(Clone::clone)),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                    Err(ServeError::NotLeader { leader: forward.leader_id, addr: forward.leader_node.map(|n| n.addr) })
                }
                Err(e) => Err(ServeError::Failed(e.to_string())),
            }),
            Request::ChangeMembers(change) => Response::ChangeMembers(change_members_here(raft, change).await),
            Request::LocalMap => Response::LocalMap(map.with_app(Clone::clone)),
            Request::Heartbeat { node, leads } => Response::Heartbeat({
                // Kept by every member: the next controller leader knows how long it was.
                shared.heartbeats.lock().insert(node, (leads, Instant::now()));
                if shared.leading_since.lock().is_some() {
                    Ok(())
                } else {
                    Err(ServeError::NotLeader { leader: raft.metrics().borrow().current_leader, addr: None })
                }
            }),
            Request::Drain { .. } | Request::DrainLog { .. } => {
                let data = shared.data_node.lock().clone();
                Response::Drain(match data {
                    None => Err(ServeError::Failed("no data node beside this member".into())),
                    Some(data) => {
                        let drain = move || match request {
                            Request::Drain { target, timeout_ms } => {
                                data.drain(target, Duration::from_millis(timeout_ms.min(60_000)))
                            }
                            Request::DrainLog { log, target, timeout_ms } => {
                                data.drain_log(&log, target, Duration::from_millis(timeout_ms.min(60_000)))
                            }
                            _ => unreachable!("a drain"),
                        };
                        match tokio::task::spawn_blocking(drain).await {
                            Ok(result) => result.map(|d| d.as_millis() as u64).map_err(ServeError::Failed),
                            Err(e) => Err(ServeError::Failed(e.to_string())),
                        }
                    }
                })
            }
            Request::Fence { epoch, log, except } => {
                let data = shared.data_node.lock().clone();
                Response::Fence(match data {
                    None => Err(ServeError::Failed("no data node beside this member".into())),
                    Some(data) => {
                        match tokio::task::spawn_blocking(move || data.fence(epoch, log.as_deref(), &except)).await {
                            Ok(result) => result.map_err(ServeError::Failed),
                            Err(e) => Err(ServeError::Failed(e.to_string())),
                        }
                    }
                })
            }
        };
        if write_frame(&mut stream, &response).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_take_disjoint_slices_of_the_election_timeout_range() {
        let range = (Duration::from_millis(150), Duration::from_millis(300));
        for n in [1u64, 3, 5] {
            let voters: BTreeMap<NodeId, String> = (1..=n).map(|id| (id * 7, format!("10.0.0.{id}:1"))).collect();
            let bands: Vec<(u64, u64)> = voters.keys().map(|id| election_band(*id, &voters, range)).collect();
            for (i, (lo, hi)) in bands.iter().enumerate() {
                assert!(150 <= *lo && lo < hi && *hi <= 300, "{n} voters: band {i} {lo}..{hi}");
                if let Some((next_lo, _)) = bands.get(i + 1) {
                    assert!(hi <= next_lo, "{n} voters: bands {i} and {} overlap", i + 1);
                }
            }
            assert_eq!(election_band(99, &voters, range), *bands.last().unwrap(), "a learner takes the last");
        }
    }
}
