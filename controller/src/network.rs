//! openraft's network between controller members: one TCP connection per peer, kept open,
//! one request at a time, each bounded by openraft's deadline.

use std::io;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use tern_replication::message::NodeId;
use tokio::net::TcpStream;

use crate::rpc::{read_frame, write_frame, Request, Response};
use crate::TypeConfig;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Makes a [`Peer`] for each controller member openraft talks to.
#[derive(Debug, Clone, Default)]
pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer { target, addr: node.addr.clone(), stream: None }
    }
}

/// The connection to one controller member.
#[derive(Debug)]
pub struct Peer {
    target: NodeId,
    addr: String,
    stream: Option<TcpStream>,
}

/// Sends `request` to `addr` over `stream` (connecting first when there is none) and reads
/// the response, within `timeout`. A failure drops the connection: the next call dials again.
pub(crate) async fn call(
    stream: &mut Option<TcpStream>,
    addr: &str,
    request: &Request,
    timeout: Duration,
) -> Result<Response, CallError> {
    let exchange = async {
        if stream.is_none() {
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| CallError::Unreachable(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
                .map_err(CallError::Unreachable)?;
            connected.set_nodelay(true).map_err(CallError::Unreachable)?;
            *stream = Some(connected);
        }
        let Some(conn) = stream.as_mut() else { unreachable!("connected above") };
        write_frame(conn, request).await.map_err(CallError::Network)?;
        read_frame::<_, Response>(conn).await.map_err(CallError::Network)
    };
    let result = match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(CallError::Network(io::Error::new(io::ErrorKind::TimedOut, "no response in time"))),
    };
    if result.is_err() {
        *stream = None;
    }
    result
}

/// Why a call failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// No connection could be made.
    Unreachable(io::Error),
    /// The connection failed or the answer was bad.
    Network(io::Error),
}

impl CallError {
    fn into_rpc<E: std::error::Error>(self) -> RPCError<NodeId, BasicNode, E> {
        match self {
            CallError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Network(e) => RPCError::Network(NetworkError::new(&e)),
        }
    }
}

fn wrong_kind<E: std::error::Error>() -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&io::Error::other("response of another kind than the request")))
}

impl Peer {
    async fn call(&mut self, request: Request, option: &RPCOption) -> Result<Response, CallError> {
        call(&mut self.stream, &self.addr, &request, option.hard_ttl()).await
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(Request::AppendEntries(rpc), &option).await.map_err(CallError::into_rpc)? {
            Response::AppendEntries(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(wrong_kind()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        match self.call(Request::InstallSnapshot(rpc), &option).await.map_err(CallError::into_rpc)? {
            Response::InstallSnapshot(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(wrong_kind()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(Request::Vote(rpc), &option).await.map_err(CallError::into_rpc)? {
            Response::Vote(result) => result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(wrong_kind()),
        }
    }

    /// The wait between attempts to reach a member that could not be reached: 50 ms (openraft's
    /// default, 500 ms, left a restarted member without the leader's heartbeats for long enough
    /// that it started an election and deposed a healthy leader). A dial to a dead member on
    /// these links costs a refused connection.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}

/// See [`Peer::backoff`].
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(50);
