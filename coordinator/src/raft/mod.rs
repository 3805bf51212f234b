//! Consensus: openraft glue around the pure core.
//!
//! ```text
//!   api ──propose(Command)──▶ batcher ──▶ Raft::client_write(Request{now, commands})
//!                                   │ log (LogStore over a Store: sled or memory)
//!                                   ▼
//!                     StateMachine::apply ──▶ State::apply_batch(index, now, commands)
//!                                   │             └─▶ (Response, effects) ──▶ broadcast
//!                                   ▼
//!                          snapshots: State::snapshot / restore
//! ```
//!
//! What this module must not do: decide anything about reservations. It moves commands into
//! `state::State::apply` in log order and moves snapshots in and out; every decision is the
//! core's. I/O failures are typed ([`store::StoreError`]) and surface as openraft
//! `StorageError`s, which stop the node rather than let replicas diverge.

pub mod bounded;
pub mod inbox;
pub mod log_store;
pub mod mem_store;
pub mod network;
pub mod sled_store;
pub mod state_machine;
pub mod store;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::state::{Command, Millis, Response};

/// What goes into the Raft log: the commands the leader batched into one entry, in order,
/// and the leader's clock when it proposed them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub now: Millis,
    pub commands: Vec<Command>,
}

impl Request {
    pub fn one(now: Millis, command: Command) -> Request {
        Request { now, commands: vec![command] }
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} commands@{}", self.commands.len(), self.now)
    }
}

/// The answers to one entry: one per command of its [`Request`], in order (none for Raft's
/// own blank and membership entries).
pub type Responses = Vec<Response>;

/// A coordinator as Raft knows it: the gRPC address clients reach it at (leader hints and
/// `qm cluster status` name this one), and the address its Raft RPCs go to.
///
/// `peer_addr` is empty when the node serves Raft on its client port (no `--peer-listen`);
/// otherwise it is the node's peer port, which serves `qm.v1.RaftPeer` only. Part of every
/// membership entry and snapshot meta on disk (store format 3).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The client address (`http(s)://host:port`).
    pub addr: String,
    /// The peer address; empty: the client address serves Raft too.
    pub peer_addr: String,
}

impl Node {
    /// A node serving Raft on its client port.
    pub fn new(addr: impl Into<String>) -> Node {
        Node { addr: addr.into(), peer_addr: String::new() }
    }

    /// A node with a separate peer port (`peer_addr` empty: none).
    pub fn with_peer(addr: impl Into<String>, peer_addr: impl Into<String>) -> Node {
        Node { addr: addr.into(), peer_addr: peer_addr.into() }
    }

    /// Where this node's Raft RPCs go: its peer address, or its client address if it has none.
    pub fn peer_address(&self) -> &str {
        if self.peer_addr.is_empty() {
            &self.addr
        } else {
            &self.peer_addr
        }
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.peer_addr.is_empty() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{} (peer {})", self.addr, self.peer_addr)
        }
    }
}
/// Raft node ids are plain integers, chosen by the operator.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The Raft type configuration of the coordinator group.
    pub TypeConfig:
        D = Request,
        R = Responses,
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
