//! Consensus: openraft glue around the pure core.
//!
//! ```text
//!   api ──propose(Command)──▶ Raft::client_write(Request{now, command})
//!                                   │ log (LogStore over a Store: sled or memory)
//!                                   ▼
//!                     StateMachine::apply ──▶ State::apply(index, now, command)
//!                                   │             └─▶ (Response, effects) ──▶ broadcast
//!                                   ▼
//!                          snapshots: State::snapshot / restore
//! ```
//!
//! What this module must not do: decide anything about reservations. It moves commands into
//! `state::State::apply` in log order and moves snapshots in and out; every decision is the
//! core's. I/O failures are typed ([`store::StoreError`]) and surface as openraft
//! `StorageError`s, which stop the node rather than let replicas diverge.

pub mod log_store;
pub mod mem_store;
pub mod network;
pub mod sled_store;
pub mod state_machine;
pub mod store;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::state::{Command, Millis, Response};

/// What goes into the Raft log: a command and the leader's clock when it proposed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub now: Millis,
    pub command: Command,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}@{}", self.command, self.now)
    }
}

/// A coordinator as Raft knows it: the gRPC address peers and clients reach it at.
pub type Node = openraft::BasicNode;
/// Raft node ids are plain integers, chosen by the operator.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The Raft type configuration of the coordinator group.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Node>;
