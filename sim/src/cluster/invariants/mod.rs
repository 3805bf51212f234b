//! The invariants, one file each, checked after every simulation step (and some once more
//! at the end, when the replicas have converged).
//!
//! ```text
//!   step ─▶ Obs { live replicas (state, grants, wait-for edges), newly applied records,
//!                 the union of applied records, new fenced writes, new reads, history }
//!        ─▶ every checker's on_step ─▶ first violation stops the run
//!   end  ─▶ every checker's at_end (grants acknowledged, tasks kept, convergence, liveness)
//! ```
//!
//! A checker never changes what it observes; a violation is a message naming what broke,
//! and the runner prints it with the seed and the command that reproduces it.

pub mod convergence;
pub mod deadlock;
pub mod durability;
pub mod election_safety;
pub mod grants;
pub mod lease_expiry;
pub mod liveness;
pub mod mutual_exclusion;
pub mod preemption;
pub mod serving;
pub mod stale_read;
pub mod task_results;
pub mod token_order;

use std::collections::BTreeMap;
use std::sync::Arc;

use qm_coordinator::raft::state_machine::Applied;
use qm_coordinator::state::TaskStatus;
use qm_coordinator::state::{GrantInfo, OwnerRef};

use super::fenced::FencedWrite;
use super::world::{History, Phase, ReadObs};

/// One live replica as seen after a step.
#[derive(Debug)]
pub struct Replica {
    pub id: u64,
    pub leader: bool,
    pub term: u64,
    /// The vote this replica has persisted (openraft reports it once `save_vote` returned).
    pub vote: openraft::Vote<u64>,
    /// The persisted vote and the leader this replica follows, for reports.
    pub vote_text: String,
    pub applied: u64,
    pub grants: Vec<GrantInfo>,
    /// Declared capacities of counted resources: path → capacity.
    pub capacities: BTreeMap<String, u32>,
    pub edges: Vec<(OwnerRef, OwnerRef)>,
    /// Pending requests: id → the priority they preempt with (own or inherited, not aged).
    pub waiters: BTreeMap<u64, u32>,
    pub preempt_gap: u32,
    /// Tasks' checkpoints: task → (attempt, sequence).
    pub checkpoints: BTreeMap<u64, (u32, u64)>,
}

/// What the checkers see after a step.
#[derive(Debug)]
pub struct Obs<'a> {
    pub t_ms: u64,
    pub phase: Phase,
    /// Simulated time the workload was healed at (faults undone), if it has been.
    pub healed_at_ms: Option<u64>,
    pub replicas: &'a [Replica],
    /// Records applied during this step: `(replica, record)`.
    pub records: &'a [(u64, Arc<Applied>)],
    /// Every record any replica applied, by index.
    pub applied: &'a BTreeMap<u64, Arc<Applied>>,
    pub writes: &'a [(String, FencedWrite)],
    pub reads: &'a [ReadObs],
    pub history: &'a History,
    /// The highest clock reading of any node while it was leader, so far.
    pub leader_clock_max_ms: u64,
    /// Since when every coordinator has been up and connected (no fault of the nemesis's
    /// affecting them in force); `None` while one is.
    pub healthy_since_ms: Option<u64>,
}

/// The final state of one replica, after the converge phase.
#[derive(Debug)]
pub struct Final {
    pub id: u64,
    pub applied: u64,
    pub snapshot: Vec<u8>,
    pub grants: Vec<GrantInfo>,
    pub tasks: BTreeMap<u64, FinalTask>,
}

/// A task in a replica's final state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalTask {
    pub status: TaskStatus,
    pub attempt: u32,
    pub output: String,
    pub checkpoint: Option<(u32, u64)>,
}

/// What the checkers see at the end.
#[derive(Debug)]
pub struct End<'a> {
    pub t_ms: u64,
    pub healed_at_ms: u64,
    pub replicas: &'a [Final],
    pub applied: &'a BTreeMap<u64, Arc<Applied>>,
    pub history: &'a History,
}

/// One invariant.
pub trait Invariant: std::fmt::Debug {
    fn name(&self) -> &'static str;
    /// After every step.
    fn on_step(&mut self, _obs: &Obs<'_>) -> Result<(), String> {
        Ok(())
    }
    /// Once, at the end.
    fn at_end(&mut self, _end: &End<'_>) -> Result<(), String> {
        Ok(())
    }
}

/// Every safety invariant, in the order they are checked ([`liveness::Liveness`] is driven
/// by the runner itself, which also needs to know when it is satisfied).
pub fn all() -> Vec<Box<dyn Invariant>> {
    vec![
        Box::new(election_safety::ElectionSafety::default()),
        Box::new(convergence::Convergence::default()),
        Box::new(mutual_exclusion::MutualExclusion::default()),
        Box::new(token_order::TokenOrder::default()),
        Box::new(lease_expiry::LeaseExpiry::default()),
        Box::new(deadlock::Deadlock),
        Box::new(stale_read::StaleRead),
        Box::new(grants::Grants),
        Box::new(preemption::Preemption::default()),
        Box::new(durability::Durability::default()),
        Box::new(task_results::TaskResults),
        Box::new(serving::ServingLeader::default()),
    ]
}
