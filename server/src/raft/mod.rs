//! Replication: a partition group as an openraft state machine.
//!
//! Everything of openraft lives behind this module, so that a version bump touches one place
//! (openraft is pinned to one exact version in `server/Cargo.toml`).
//!
//! - [`log_store`]: the Raft log, vote and committed index in the node's fjall database; one
//!   flusher thread fsyncs the appends of every group at once, and an append is reported
//!   durable only after that fsync.
//! - [`state_machine`]: the group's partitions, changed only by applying
//!   [`Proposal`]s with [`crate::engine::partition::Partition::apply`]; snapshots are images of
//!   the partitions' replicated state, installed wholesale together with the applied index.
//! - [`network`]: openraft's network for one group, over the shared transport.
//! - [`transport`]: one TCP connection per pair of nodes, length-delimited `postcard`
//!   frames tagged with a request id and a group, shared by every group.
//! - [`replica`]: one node's member of a group: its `Raft`, its proposals and its metrics.
//! - [`lease`]: the leader lease latest reads are served under, and the vote refusals that
//!   make it safe.
//!
//! The partition's `apply` is deterministic (no clock, no randomness), so replicas that apply
//! the same log end in the same state; `replica` tests compare them.

// openraft's storage traits answer its own `StorageError`, which is large; boxing it is
// not ours to choose.
pub mod lease;
#[allow(clippy::result_large_err)]
pub mod log_store;
pub mod network;
pub mod replica;
#[allow(clippy::result_large_err)]
pub mod state_machine;
pub mod transport;

use std::io;

use serde::{Deserialize, Serialize};

use crate::engine::command::{Command, Outcome};

/// A node's id in the cluster (the `--node-id` flag).
pub type NodeId = u64;

/// A replication group's id. Today one data group holds every partition.
pub type GroupId = u32;

/// One command for one partition of the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposed {
    pub partition: u32,
    pub command: Command,
    /// The proposer's span, when traces are exported: every member's `raft.apply` span of
    /// the command hangs under it, so a transaction's trace shows it on each member.
    pub parent: Option<crate::telemetry::SpanParent>,
}

/// One log entry's payload: every command proposed while the previous entry was being
/// appended, applied in order. openraft 0.9 fsyncs each entry's append before it takes the
/// next request, so one command per entry would cost one fsync each; a batch shares one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub commands: Vec<Proposed>,
}

impl Proposal {
    /// An entry of one command.
    pub fn one(partition: u32, command: Command) -> Self {
        Self { commands: vec![Proposed { partition, command, parent: None }] }
    }
}

openraft::declare_raft_types!(
    /// The type configuration of reSTM's Raft groups.
    pub Restm:
        D = Proposal,
        // What applying each of the entry's commands answered, in order (`None` for a
        // partition the group does not hold); empty for entries that carry no command
        // (blank, membership).
        R = Vec<Option<Outcome>>,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = Vec<u8>,
);

pub use openraft::{BasicNode, Config as RaftConfig};

/// openraft's storage error for this configuration.
pub type StorageError = openraft::StorageError<NodeId>;

/// A storage error of openraft's kind from an I/O-ish failure.
fn storage_error(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}

/// Encodes with postcard (the log's and the wire's format).
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, io::Error> {
    postcard::to_stdvec(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Decodes postcard.
pub(crate) fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, io::Error> {
    postcard::from_bytes(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
