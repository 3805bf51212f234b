//! The simulated coordinator hosts: the real `Node` (openraft, batcher, leader duties) and
//! the real gRPC services, on a [`SimStore`] and a [`SimClock`], over turmoil TCP.
//!
//! ```text
//!   host "n<id>" software (re-run by turmoil on every restart):
//!     Node::start_with_connector(config, SimClock, SimStore, turmoil connector)
//!       └─ api::serve_incoming(node, turmoil listener)       ← the production services
//! ```
//!
//! The store and the clock outlive the software: a crash drops the host's runtime (every
//! task) and [`SimStore::crash`] what was not flushed; a restart opens what remains.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use qm_coordinator::node::{default_classes, Node, NodeConfig};
use qm_coordinator::raft::Node as RaftNode;

use super::clock::SimClock;
use super::net;
use super::options::Options;
use super::store::SimStore;
use super::world::{lock, now_ms, Shared};

/// The configuration of coordinator `id` in a run.
pub fn node_config(opts: &Options, id: u64) -> NodeConfig {
    let members: BTreeMap<u64, RaftNode> =
        (1..=opts.nodes).map(|i| (i, RaftNode::new(net::node_endpoint(i)))).collect();
    let election = opts.election_ms[(id - 1) as usize];
    NodeConfig {
        id,
        advertise: net::node_endpoint(id),
        peer_advertise: String::new(),
        data_dir: None,
        initial_members: members,
        heartbeat_ms: 100,
        // openraft draws each election timeout from min..max with a thread-local RNG that the
        // simulator cannot seed; a one-wide range makes the draw a constant, and the seed
        // varies it per node instead (see `Options::election_ms`).
        election_timeout_min_ms: election,
        election_timeout_max_ms: election + 1,
        tick_ms: 200,
        snapshot_logs: opts.snapshot_logs,
        classes: default_classes(),
        // The simulated clients carry no tokens: access control is tested against real
        // processes (tests/tests/acl.rs); here the coordination is under test.
        access_control: false,
        initial_admin_hash: None,
        tls: None,
        insecure: false,
        audit_bytes_max: qm_shared::limits::AUDIT_BYTES_DEFAULT,
        write_rate: None,
        state_bytes_max: qm_shared::limits::STATE_BYTES_DEFAULT,
    }
}

/// What one coordinator host keeps across restarts.
#[derive(Clone, Debug)]
pub struct NodeHost {
    pub id: u64,
    pub store: SimStore,
    pub clock: SimClock,
    pub config: NodeConfig,
}

impl NodeHost {
    /// The host software: start the node, register it, serve until the host crashes.
    pub async fn run(self, shared: Shared) -> turmoil::Result {
        let id = self.id;
        let node =
            Node::start_with_connector(self.config.clone(), Arc::new(self.clock.clone()), self.store, net::connector())
                .await
                .map_err(|e| format!("node {id} failed to start: {e}"))?;
        {
            let mut w = lock(&shared);
            w.trace.event(now_ms(), "start", format_args!("n{id}"));
            w.nodes.insert(id, node.clone());
        }
        let listener = turmoil::net::TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), net::GRPC_PORT)).await?;
        qm_coordinator::api::serve_incoming(node, net::incoming(listener), std::future::pending()).await?;
        Ok(())
    }
}
