//! Tern replication: a leader ships batches of each log to its followers, which verify and
//! append them through their own group commit; a record is committed once a quorum has it on
//! disk.
//!
//! - [`message`]: the protocol's messages as values.
//! - [`codec`]: their wire format (PROTOCOL.md), with every length bounded before use.
//! - [`proto`]: the protocol core, a state machine without I/O: inputs in, actions out.
//! - [`election`]: choosing a log's next leader from its replicas' reports when its leader
//!   fails, and what promoting one by force may lose; pure functions, without I/O.
//! - [`producers`]: what a leader remembers of each idempotent producer of a log, so that a
//!   batch sent again is answered with its first offsets instead of being written twice.
//! - [`slots`]: the replication slots file, what a leader knows of each peer on each log,
//!   kept across restarts.
//! - [`node_state`]: the node state file: the cluster a node belongs to and, on a follower,
//!   whom it follows on each log in which epoch, kept across restarts.
//! - [`sim`]: a deterministic simulator running the core over a seeded lossy network and
//!   fault-injecting disks, with the invariants checked after every step.
#![warn(missing_docs)]

pub mod codec;
pub mod driver;
pub mod election;
pub mod message;
pub mod node_state;
pub mod producers;
pub mod proto;
pub mod sim;
pub mod slots;
