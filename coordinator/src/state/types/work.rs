//! Work vocabulary: what a task asks (`TaskSpec`), what a worker offers (`WorkerSpec`), what
//! a worker reports about an attempt (`TaskReport`), and a work item's spec (`JobSpec`).

use std::collections::{BTreeMap, BTreeSet};

use qm_shared::workflow::{Capability, Complexity, Workflow};
use qm_shared::{Role, Tier};
use serde::{Deserialize, Serialize};

use super::{Item, SessionId, TaskId};

pub use qm_shared::attempt::{Outcome, Usage};

/// A work item as submitted: its workflow travels with it (built-in or a team's file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub title: String,
    pub class: String,
    pub priority: u32,
    pub team: String,
    pub project: String,
    pub workflow: Workflow,
    /// The work item's own budget (period `total`).
    pub budget_micros: Option<u64>,
    pub inputs: BTreeMap<String, String>,
    /// The repo commit the work starts from (part of every cache key).
    pub commit: String,
    /// Executor payload of passes that name none (JSON; `{{pass}}`, `{{title}}`, … filled in).
    pub run: Vec<u8>,
    /// Executor payload of agent reviews that name none.
    pub review_run: Vec<u8>,
    /// Who submitted it (a token's name; empty with access control off): its quotas.
    pub principal: String,
    /// Its declared complexity: every pass starts a tier lower (low) or higher (high).
    pub complexity: Complexity,
}

/// What to run: a role, the resources it needs with modes, an executor payload, a priority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub role: Role,
    pub items: Vec<Item>,
    /// Opaque to the coordinator: the executor's instructions.
    pub payload: Vec<u8>,
    pub priority: u32,
    /// The work item the task belongs to (free-form id; may be empty).
    pub work_item: String,
    /// Attempts before a failing task ends as failed (preemptions and lost workers do not count).
    pub max_attempts: u32,
    /// Time limit of one attempt, enforced by the agent; 0 means none.
    pub timeout_ms: u64,
    /// Acquire the resources one at a time in order, rather than as one atomic set.
    pub incremental: bool,
    /// The team the work is for (fair share); empty for ad-hoc tasks.
    pub team: String,
    /// The project whose providers and prices route and cost the task; empty: none.
    pub project: String,
    /// The model tier to route to (a pass's tier); `None`: no model routing.
    pub tier: Option<Tier>,
    /// What the agent slot must have beyond its role.
    pub requires: Vec<Capability>,
    /// Who submitted it directly (a token's name); empty with access control off and for the
    /// tasks of a work item, which count under the item's principal.
    pub principal: String,
}

/// A worker's announcement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub session: SessionId,
    pub node_id: String,
    /// Agent slots per role.
    pub slots: BTreeMap<Role, u32>,
    pub labels: BTreeMap<String, String>,
    /// Tasks the worker still runs (after a reconnect).
    pub running: Vec<TaskId>,
    pub gpus: Vec<GpuInfo>,
    pub providers: Vec<ProviderInfo>,
    /// It offers the container engine.
    pub container: bool,
    /// The tiers its agent specs give, per role: where a pass of the role starts when its
    /// workflow sets no tier, and the highest a failed gate escalates it to.
    pub specs: BTreeMap<Role, RoleSpec>,
    /// Repositories it is granted and coding-agent CLIs it runs, by name.
    pub repos: BTreeSet<String>,
    pub clis: BTreeSet<String>,
}

/// What a role's agent spec says that the coordinator acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleSpec {
    /// The tier a pass of the role starts at when its workflow sets none.
    pub start: Tier,
    /// The highest tier a failed gate escalates it to.
    pub max: Tier,
    /// Failed gates before each escalation (at least 1).
    pub after_failed_gates: u32,
    /// The most one task of the role may be forecast to cost without a spend approval.
    pub money_per_task_micros: Option<u64>,
}

/// A GPU on a worker's box.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub model: String,
    pub memory_bytes: u64,
}

/// A model provider a worker reaches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderInfo {
    pub name: String,
    /// `openai` (OpenAI-compatible) or `anthropic`.
    pub kind: String,
    /// On the worker's own box (priced by its amortised cost).
    pub local: bool,
}

/// What a worker says about one attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskReport {
    Progress {
        percent: u32,
        stage: String,
        usage: Usage,
    },
    /// The highest `seq` wins; a preemption checkpoint precedes the release.
    Checkpoint {
        seq: u64,
        data: Vec<u8>,
        for_preemption: bool,
    },
    /// Waiting on resources; recorded for `qm task show`.
    Blocked {
        message: String,
    },
    Finished {
        outcome: Outcome,
        output: Vec<u8>,
        error: String,
        usage: Usage,
        wall_ms: u64,
        /// The agent that ran it (`<node>/<role>-<i>`).
        agent: String,
        /// The agent's spec as `name@version` (empty: none).
        spec: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn ended(self) -> bool {
        matches!(self, TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Cancelled)
    }
}
