//! Tern's controller: a small quorum of `tern serve` nodes that decides who leads each log.
//!
//! Every node runs a member of one openraft group (3 or 5 voters, further nodes as learners).
//! Its replicated state machine is the [`ClusterMap`]: the nodes and their addresses, and for
//! each log its leader, epoch, replica set and in-sync set. Epochs are only ever issued by the
//! map ([`Command::Elect`] is a compare-and-set on a log's epoch), so every epoch is unique and
//! names exactly one leader. The controller's Raft log is a Tern log (`openraft-tern`), and
//! its RPCs travel on a port of their own ([`rpc`], PROTOCOL.md "Controller"), so that a data
//! connection busy with a large chunk never delays a controller heartbeat.
//!
//! The data path (shipping, group commit, quorum commit) stays Tern's own: the controller only
//! decides.

#![warn(missing_docs)]

pub mod client;
pub mod map;
pub mod network;
mod node;
pub mod rpc;

use std::io::Cursor;

pub use client::ControllerClient;
pub use map::{ClusterMap, Command, DataLoss, ElectReason, Handover, HandoverStep, LogMap, Member, Reply, ALL_LOGS};
pub use node::{Controller, ControllerConfig, ControllerError, ControllerStatus, DataNode, Leads};
pub use rpc::{LogReport, MembershipChange};

openraft::declare_raft_types!(
    /// The controller's openraft types: commands to the cluster map, its replies.
    pub TypeConfig: D = Command, R = Reply
);
