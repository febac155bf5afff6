//! A blocking client of the controller for tools (`tern promote`, `tern status`): one request,
//! one response, following the redirect to the controller's leader when a member names it.

use std::io;
use std::time::Duration;

use crate::map::{ClusterMap, Command, Reply};
use crate::network::{call, CallError};
use crate::rpc::{LogReport, MembershipChange, Request, Response, ServeError};

/// Talks to controller members from a thread outside any async runtime.
#[derive(Debug)]
pub struct ControllerClient {
    runtime: tokio::runtime::Runtime,
    timeout: Duration,
}

fn io_error(e: CallError) -> io::Error {
    match e {
        CallError::Unreachable(e) | CallError::Network(e) => e,
    }
}

fn served<T>(result: Result<T, ServeError>) -> io::Result<Result<T, Option<String>>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(ServeError::NotLeader { addr, .. }) => Ok(Err(addr)),
        Err(ServeError::Busy(why) | ServeError::Failed(why)) => Err(io::Error::other(why)),
    }
}

impl ControllerClient {
    /// A client whose every request gives up after `timeout`.
    ///
    /// # Errors
    /// The runtime cannot start.
    pub fn new(timeout: Duration) -> io::Result<ControllerClient> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(ControllerClient { runtime, timeout })
    }

    fn request(&self, addr: &str, request: &Request) -> io::Result<Response> {
        self.runtime
            .block_on(call(&mut None, addr, request, self.timeout))
            .map_err(|e| io::Error::other(format!("controller member at {addr}: {}", io_error(e))))
    }

    /// Sends `request` at `addr`, then to the leader a member names, up to three times;
    /// `pick` takes the served result out of the response of the right kind.
    fn at_leader<T>(
        &self,
        addr: &str,
        request: &Request,
        pick: impl Fn(Response) -> Option<Result<T, ServeError>>,
    ) -> io::Result<T> {
        let mut at = addr.to_owned();
        for _ in 0..3 {
            let result =
                pick(self.request(&at, request)?).ok_or_else(|| io::Error::other("a response of another kind"))?;
            match served(result)? {
                Ok(value) => return Ok(value),
                Err(Some(leader)) => at = leader,
                Err(None) => return Err(io::Error::other("the controller has no leader now")),
            }
        }
        Err(io::Error::other("redirected too often"))
    }

    /// The cluster map, read at the controller's leader (asked at `addr`, then at the leader
    /// it names).
    ///
    /// # Errors
    /// No answer, or no leader known.
    pub fn read_map(&self, addr: &str) -> io::Result<ClusterMap> {
        self.at_leader(addr, &Request::ReadMap, |r| match r {
            Response::ReadMap(result) => Some(result),
            _ => None,
        })
    }

    /// Applies `command` to the map at the controller's leader.
    ///
    /// # Errors
    /// As [`ControllerClient::read_map`].
    pub fn propose(&self, addr: &str, command: Command) -> io::Result<Reply> {
        self.at_leader(addr, &Request::Propose(command), |r| match r {
            Response::Propose(result) => Some(result),
            _ => None,
        })
    }

    /// Changes the controller's membership at its leader ([`MembershipChange`]).
    ///
    /// # Errors
    /// As [`ControllerClient::read_map`]; a change already under way, or refused.
    pub fn change_members(&self, addr: &str, change: MembershipChange) -> io::Result<()> {
        self.at_leader(addr, &Request::ChangeMembers(change), |r| match r {
            Response::ChangeMembers(result) => Some(result),
            _ => None,
        })
    }

    /// Fences the data node beside the member at `addr` at `epoch` (log `log` alone, or every
    /// log but `except`: see [`crate::DataNode::fence`]) and returns its reports.
    ///
    /// # Errors
    /// No answer, or the node's refusal.
    pub fn fence(&self, addr: &str, epoch: u64, log: Option<&str>, except: &[String]) -> io::Result<Vec<LogReport>> {
        let request = Request::Fence { epoch, log: log.map(str::to_owned), except: except.to_vec() };
        match self.request(addr, &request)? {
            Response::Fence(result) => match served(result)? {
                Ok(reports) => Ok(reports),
                Err(_) => Err(io::Error::other("refused")),
            },
            _ => Err(io::Error::other("a response of another kind")),
        }
    }

    /// Asks the data leader beside the member at `addr` to hand over to `target` (stop taking
    /// appends, wait until `target` holds every record); returns the wait in milliseconds.
    ///
    /// # Errors
    /// No answer, or the node's refusal.
    pub fn drain(&self, addr: &str, target: tern_replication::message::NodeId, timeout: Duration) -> io::Result<u64> {
        self.drain_request(addr, &Request::Drain { target, timeout_ms: timeout.as_millis() as u64 })
    }

    /// As [`ControllerClient::drain`], for log `log` alone (placed alone; the other logs'
    /// appends go on).
    ///
    /// # Errors
    /// No answer, or the node's refusal.
    pub fn drain_log(
        &self,
        addr: &str,
        log: &str,
        target: tern_replication::message::NodeId,
        timeout: Duration,
    ) -> io::Result<u64> {
        let timeout_ms = timeout.as_millis() as u64;
        self.drain_request(addr, &Request::DrainLog { log: log.to_owned(), target, timeout_ms })
    }

    fn drain_request(&self, addr: &str, request: &Request) -> io::Result<u64> {
        match self.request(addr, request)? {
            Response::Drain(result) => match served(result)? {
                Ok(ms) => Ok(ms),
                Err(_) => Err(io::Error::other("refused")),
            },
            _ => Err(io::Error::other("a response of another kind")),
        }
    }
}
