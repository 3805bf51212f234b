//! Work items: jobs that run a workflow's passes in order, each pass a task, each gate a
//! decision. The `Jobs` table and the links from tasks to passes live here; the rules live
//! in the files beside it:
//!
//! - `passes.rs`: submitting, starting, advancing, retrying and ending work items;
//! - `gates.rs`: where a gate decides (checks, reviews, human approvals);
//! - `budgets.rs`: budgets by scope and period, and admission of a task against them;
//! - `ledger.rs`: the cost ledger (record, price, forecast);
//! - `cache.rs`: the artifact cache that lets an unchanged pass be skipped;
//! - `validate.rs`: field checks of job, gate, budget and project commands.

mod budgets;
mod cache;
mod check;
mod gates;
mod ledger;
mod passes;
mod validate;

pub use budgets::Budget;
pub use ledger::LedgerEntry;
pub use validate::validate_job_command;

use cache::{cache_key, sha256_hex, tree_key, with_cached, CacheEntry};
use gates::{fill, verdict};
use ledger::ledger_pass;

use crate::state::types::{Item, JobId, Millis, Policy, Refusal, Response, TaskId};
use crate::state::types::{JobSpec, Scope};
use crate::state::{Ctx, ResourceConfig, State};
use qm_shared::limits::{JOB_EVENTS_MAX, PREEMPT_GRACE_MS_MIN, PROJECTS_MAX};
use qm_shared::workflow::{Project, Workflow};
use qm_shared::{ResourcePath, Tier};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum JobStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PassStatus {
    /// Waits for the passes it comes after.
    Pending,
    /// Its task waits for dispatch (see `wait` for why, when it is held back).
    Queued,
    Running,
    /// An agent reviews its gate.
    Reviewing,
    /// Waits for `qm gate approve|reject`.
    AwaitingHuman,
    Passed,
    /// Reused a cached artifact instead of running.
    Cached,
    Failed,
    Cancelled,
}

impl PassStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PassStatus::Pending => "pending",
            PassStatus::Queued => "queued",
            PassStatus::Running => "running",
            PassStatus::Reviewing => "reviewing",
            PassStatus::AwaitingHuman => "awaiting-human",
            PassStatus::Passed => "passed",
            PassStatus::Cached => "cached",
            PassStatus::Failed => "failed",
            PassStatus::Cancelled => "cancelled",
        }
    }

    pub(in crate::state) fn done(self) -> bool {
        matches!(self, PassStatus::Passed | PassStatus::Cached)
    }

    pub(in crate::state) fn active(self) -> bool {
        matches!(self, PassStatus::Queued | PassStatus::Running | PassStatus::Reviewing)
    }
}

/// One decision of a gate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateResult {
    pub round: u32,
    /// `agent <name>` or `human <name>`.
    pub reviewer: String,
    pub passed: bool,
    pub note: String,
    pub at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassState {
    pub name: String,
    pub status: PassStatus,
    /// The tier it runs at now (escalations raise it).
    pub tier: Tier,
    /// Times it was started.
    pub runs: u32,
    pub gate_failures: u32,
    pub task: Option<TaskId>,
    pub review: Option<TaskId>,
    pub gates: Vec<GateResult>,
    /// Why it is not running, when it waits.
    pub wait: Option<String>,
    /// Content address of its output.
    pub artifact: Option<String>,
    pub cache_key: String,
    /// Everything it cost (all runs, reviews included), and what this run cost.
    pub cost_micros: u64,
    pub run_cost_micros: u64,
    pub saved_micros: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub wall_ms: u64,
    /// A spend approval is wanted before dispatch (budget at its `at` threshold).
    pub approval_wanted: bool,
    pub spend_approved: bool,
    /// This run was offered a cached result to replay (see `cache::with_cached`): what that
    /// result cost when it was made, saved if the worker replays it.
    pub offered_micros: u64,
}

impl PassState {
    pub(in crate::state) fn new(name: &str, tier: Tier) -> PassState {
        PassState {
            name: name.to_string(),
            status: PassStatus::Pending,
            tier,
            runs: 0,
            gate_failures: 0,
            task: None,
            review: None,
            gates: Vec::new(),
            wait: None,
            artifact: None,
            cache_key: String::new(),
            cost_micros: 0,
            run_cost_micros: 0,
            saved_micros: 0,
            input_tokens: 0,
            output_tokens: 0,
            wall_ms: 0,
            approval_wanted: false,
            spend_approved: false,
            offered_micros: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub at: Millis,
    pub pass: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub spec: JobSpec,
    pub status: JobStatus,
    pub passes: Vec<PassState>,
    pub submitted_at: Millis,
    pub ended_at: Option<Millis>,
    /// The last `JOB_EVENTS_MAX` events.
    pub events: Vec<JobEvent>,
    pub cost_micros: u64,
    pub saved_micros: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(in crate::state) enum Kind {
    Work,
    Review,
}

/// The work-item part of the replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jobs {
    next_job: u64,
    jobs: BTreeMap<JobId, Job>,
    ended: BTreeSet<(Millis, JobId)>,
    by_task: BTreeMap<TaskId, (JobId, usize, Kind)>,
    projects: BTreeMap<String, Project>,
    /// `api:<provider>` of every project's providers (parsed once, when the project is applied).
    provider_paths: BTreeMap<String, ResourcePath>,
    /// Budgets per scope, by name.
    budgets: BTreeMap<Scope, BTreeMap<String, Budget>>,
    /// Forecasts of running job tasks, counted in their budgets' `committed`.
    commits: BTreeMap<TaskId, u64>,
    ledger: BTreeMap<u64, LedgerEntry>,
    ledger_seq: u64,
    total_micros: u64,
    saved_micros: u64,
    /// (workflow, pass, tier) → (succeeded attempts, their money): the forecast's history.
    history: BTreeMap<String, BTreeMap<String, [(u64, u64); 3]>>,
    cache: BTreeMap<String, CacheEntry>,
    cache_order: BTreeMap<u64, String>,
    artifacts: BTreeMap<String, (u64, Vec<u8>)>,
    artifact_order: BTreeMap<u64, String>,
    artifact_bytes: usize,
    seq: u64,
}

impl Jobs {
    pub fn get(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Job> {
        self.jobs.values()
    }

    pub fn projects(&self) -> impl Iterator<Item = &Project> {
        self.projects.values()
    }

    pub(in crate::state) fn link(&self, task: TaskId) -> Option<(JobId, usize, Kind)> {
        self.by_task.get(&task).copied()
    }

    pub(in crate::state) fn event(&mut self, job: JobId, pass: &str, message: String, ctx: &mut Ctx) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        if j.events.len() >= JOB_EVENTS_MAX {
            j.events.remove(0);
        }
        if j.events.capacity() == 0 {
            j.events.reserve_exact(4 * j.passes.len() + 2);
        }
        j.events.push(JobEvent { at: ctx.now, pass: pass.to_string(), message });
    }
}

pub(in crate::state) fn needs_to_items(w: &Workflow, i: usize) -> Vec<Item> {
    w.passes[i].needs.iter().map(|n| Item { path: n.path.clone(), mode: n.mode, units: n.units }).collect()
}

impl State {
    pub fn jobs(&self) -> &Jobs {
        &self.jobs
    }

    /// Whether the task is a pass (or review) of a work item.
    pub(in crate::state) fn is_pass(&self, task: TaskId) -> bool {
        self.jobs.by_task.contains_key(&task)
    }

    pub(in crate::state) fn jobs_forget_task(&mut self, task: TaskId) {
        self.jobs.by_task.remove(&task);
        self.jobs.commits.remove(&task);
    }

    pub(in crate::state) fn apply_project(&mut self, p: Project, ctx: &mut Ctx) -> Response {
        if self.jobs.projects.len() >= PROJECTS_MAX && !self.jobs.projects.contains_key(&p.name) {
            return Response::Refused(Refusal::Exhausted { what: "projects".into(), max: PROJECTS_MAX as u64 });
        }
        let mut declared = 0;
        for r in &p.resources {
            let policy = r.policy.parse().unwrap_or_default();
            let config = ResourceConfig { capacity: r.capacity, policy, grace_ms: r.grace_ms };
            if let Err(refusal) = self.declare_resource(&r.path, config, ctx) {
                return Response::Refused(refusal);
            }
            declared += 1;
        }
        for pr in &p.providers {
            let Ok(path) = ResourcePath::parse(&format!("api:{}", pr.name)) else { continue };
            self.jobs.provider_paths.insert(pr.name.clone(), path.clone());
            let config =
                ResourceConfig { capacity: Some(pr.concurrency), policy: Policy::None, grace_ms: PREEMPT_GRACE_MS_MIN };
            if let Err(refusal) = self.declare_resource(&path, config, ctx) {
                return Response::Refused(refusal);
            }
            declared += 1;
        }
        let name = p.name.clone();
        self.jobs.projects.insert(name.clone(), p);
        self.release_held();
        self.dispatch_tasks(ctx);
        Response::ProjectApplied { name, resources: declared }
    }
}
