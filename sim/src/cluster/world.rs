//! What the simulated hosts and the checkers share: live coordinator handles, the fenced
//! resources, the history clients observed, and the trace.
//!
//! Hosts (coordinators, clients, workers) write into it as they act; the main loop reads it
//! between steps. Everything runs on one thread (turmoil), so the lock is never contended;
//! it exists because the coordinator's types must be `Send`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use qm_coordinator::node::Node;

use super::fenced::{FencedResource, FencedWrite};
use super::trace::Trace;

/// The phases of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Workload and faults.
    Chaos,
    /// Faults repaired; the workload goes on and must make progress.
    Liveness,
    /// Workload stopped; replicas must converge.
    Converge,
    Done,
}

/// A grant a client was told about (an acquire answer, or its own list read).
#[derive(Clone, Debug)]
pub struct AckedGrant {
    pub reservation: u64,
    pub resource: String,
    pub token: u64,
    pub owner: String,
    pub session: u64,
    pub expires_at_ms: u64,
    pub lease_ms: u64,
    pub t_ms: u64,
}

/// A linearizable read a client made, for the stale-read check.
#[derive(Clone, Debug)]
pub struct ReadObs {
    pub client: String,
    pub node: u64,
    /// Highest index any replica had applied when the read was sent.
    pub floor: u64,
    pub index: u64,
    pub t_ms: u64,
}

/// What clients observed.
#[derive(Debug, Default)]
pub struct History {
    pub grants: BTreeMap<u64, AckedGrant>,
    /// Every owner a client asked for something under.
    pub owners: BTreeSet<String>,
    /// Acknowledged task submissions: task id → submitting client.
    pub tasks: BTreeMap<u64, String>,
    /// Acknowledged checkpoints: (task, attempt) → highest sequence acknowledged.
    pub checkpoints: BTreeMap<u64, u64>,
    /// Reads not yet checked.
    pub reads: Vec<ReadObs>,
    /// Completed operations per client (acquire → write → release cycles, submissions).
    pub progress: BTreeMap<String, u64>,
    /// Operations started.
    pub ops: u64,
}

#[derive(Debug)]
pub struct World {
    pub trace: Trace,
    pub phase: Phase,
    /// Coordinators whose software is running, with their handles.
    pub nodes: BTreeMap<u64, Arc<Node>>,
    pub fenced: BTreeMap<String, FencedResource>,
    /// Fenced writes not yet looked at by the checkers.
    pub new_writes: Vec<(String, FencedWrite)>,
    pub history: History,
    /// Highest last-applied index over all replicas, as of the last step.
    pub applied_max: u64,
    /// Errors host software reported that are violations by themselves.
    pub host_errors: Vec<String>,
    /// Administrative calls the nemesis asked for, run in order by the control host.
    pub control: Vec<ControlOp>,
    /// Administrative calls the control host has made (whatever their outcome).
    pub control_done: u64,
}

/// An administrative call the control host makes for the nemesis, through the real API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlOp {
    /// `Cluster.TransferLeader` to this node, or to any.
    Transfer(Option<u64>),
    /// `Cluster.SnapshotNow` on this node (its log is compacted).
    Snapshot(u64),
    /// Writes until the cluster has applied this many more entries (bounded).
    RunAhead(u64),
}

/// The world behind a lock, shared by every host.
pub type Shared = Arc<Mutex<World>>;

impl World {
    pub fn new(keep_trace: bool) -> Shared {
        Arc::new(Mutex::new(World {
            trace: Trace::new(keep_trace),
            phase: Phase::Chaos,
            nodes: BTreeMap::new(),
            fenced: BTreeMap::new(),
            new_writes: Vec::new(),
            history: History::default(),
            applied_max: 0,
            host_errors: Vec::new(),
            control: Vec::new(),
            control_done: 0,
        }))
    }

    /// A write to the fenced resource `path`; returns whether it was accepted.
    pub fn fenced_write(&mut self, t_ms: u64, path: &str, token: u64, owner: &str) -> bool {
        let r = self.fenced.entry(path.to_string()).or_default();
        let accepted = r.write(t_ms, token, owner);
        let w = r.writes.last().cloned().expect("just written");
        self.trace.event(
            t_ms,
            "fence",
            format_args!("{path} token={token} owner={owner} {}", if accepted { "ok" } else { "REJECTED" }),
        );
        self.new_writes.push((path.to_string(), w));
        accepted
    }
}

/// Simulated milliseconds since the start, inside a host.
pub fn now_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
}

/// Locks the world.
pub fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, World> {
    shared.lock().expect("world lock poisoned")
}
