//! Tasks and the workers that run them: the job model the agents work from.
//!
//! ```text
//!   SubmitTask ──▶ Queued ──dispatch──▶ Running(attempt n, worker session)
//!                    ▲                      │ ReportTask{Finished: Succeeded|Failed|…}
//!                    │   Preempted, Failed  ▼
//!                    └── (attempts left) ── ended: Succeeded | Failed | Cancelled
//!   worker session ends ──▶ its running tasks are requeued (their checkpoints kept)
//! ```
//!
//! Dispatch is part of apply, so it is deterministic: queued tasks in (priority desc, id asc)
//! order, each to the worker with the most free slots of its role (ties: lowest session).
//! Exactly-once: only the current attempt, reported from the session it is assigned to, can
//! change a task; a requeued attempt's late reports are refused as stale.

use std::collections::{BTreeMap, BTreeSet};

use qm_shared::limits::{
    TASKS_ENDED_RETAINED_MAX, TASKS_MAX, TASK_ATTEMPTS_MAX, TASK_CHECKPOINT_BYTES_MAX, TASK_ERROR_LEN_MAX_BYTES,
    TASK_OUTPUT_BYTES_MAX, TASK_PAYLOAD_BYTES_MAX, TASK_STAGE_LEN_MAX_BYTES, WORKERS_MAX, WORKER_LABELS_MAX,
    WORKER_NODE_ID_LEN_MAX_BYTES, WORKER_SLOTS_PER_ROLE_MAX, WORK_ITEM_LEN_MAX_BYTES,
};
use qm_shared::workflow::Capability;
use qm_shared::{validate, Invalid, Mode, ResourcePath, Role, Tier};
use serde::{Deserialize, Serialize};

use super::types::{Command, Effect, Item, Millis, Refusal, Response, SessionId, TaskId};
use super::{Ctx, State};

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

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
    /// Stopped after a preemption notice; resumes from its checkpoint.
    Preempted,
    TimedOut,
}

/// Token usage; `estimated` when a provider reported none and it was counted locally.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub estimated: bool,
}

impl Usage {
    fn add(&mut self, other: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
        self.estimated |= other.estimated;
    }
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub attempt: u32,
    pub seq: u64,
    pub data: Vec<u8>,
}

/// One attempt, as history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    pub session: SessionId,
    pub node_id: String,
    pub started_at: Millis,
    pub ended_at: Option<Millis>,
    /// `None` while running, or when the worker was lost.
    pub outcome: Option<Outcome>,
    pub resumed_from: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub spec: TaskSpec,
    pub status: TaskStatus,
    /// The current (or last) attempt; 0 before the first.
    pub attempt: u32,
    /// Failed or timed-out attempts so far (counted against `max_attempts`).
    pub failures: u32,
    pub session: Option<SessionId>,
    pub checkpoint: Option<Checkpoint>,
    pub percent: u32,
    pub stage: String,
    pub blocked: Option<String>,
    pub submitted_at: Millis,
    pub ended_at: Option<Millis>,
    pub usage: Usage,
    pub output: Vec<u8>,
    pub error: String,
    /// The last `TASK_ATTEMPTS_MAX` attempts.
    pub attempts: Vec<Attempt>,
    /// Since when it waits for dispatch (kept across requeues): its age for aging.
    pub queued_since: Millis,
    /// Its place in its role's queue while queued (see [`Tasks::key`]).
    pub key: i64,
    /// The provider and model the current attempt was routed to.
    pub route: Option<Route>,
    /// Why it is not dispatched yet (budget, resources held), when it is not.
    pub wait: Option<String>,
    /// The agent that ran the last attempt (`<node>/<role>-<i>`).
    pub agent: String,
}

/// Where a task's model calls go: chosen at dispatch from its project's providers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub provider: String,
    pub model: String,
    pub tier: Tier,
    pub local: bool,
}

impl Task {
    /// The resources an attempt acquires: the task's own, plus one slot of its provider's
    /// concurrency (rate limits are leases too).
    pub fn attempt_items(&self) -> Vec<Item> {
        let mut items = self.spec.items.clone();
        if let Some(r) = &self.route {
            if let Ok(path) = ResourcePath::parse(&format!("api:{}", r.provider)) {
                if !items.iter().any(|i| i.path == path) {
                    items.push(Item { path, mode: Mode::Shared, units: 1 });
                }
            }
        }
        items
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub session: SessionId,
    pub node_id: String,
    pub slots: BTreeMap<Role, u32>,
    pub labels: BTreeMap<String, String>,
    /// Running tasks and their roles.
    pub running: BTreeMap<TaskId, Role>,
    /// Running tasks whose agent waits for resources and lent its slot to other work.
    pub blocked: BTreeSet<TaskId>,
    pub gpus: Vec<GpuInfo>,
    pub providers: Vec<ProviderInfo>,
    /// Free slots per role as last indexed.
    free_now: BTreeMap<Role, u32>,
}

impl Worker {
    /// Whether the worker's box has what a task requires.
    pub fn capable(&self, requires: &[Capability]) -> bool {
        requires.iter().all(|c| match c {
            Capability::Gpu => !self.gpus.is_empty(),
            Capability::LocalModel => self.providers.iter().any(|p| p.local),
        })
    }

    fn free(&self, role: Role) -> u32 {
        let used = self.running.iter().filter(|(t, r)| **r == role && !self.blocked.contains(*t)).count() as u32;
        self.slots.get(&role).copied().unwrap_or(0).saturating_sub(used)
    }
}

/// Whether two resource paths overlap (one is the other or under it).
fn overlaps(a: &str, b: &str) -> bool {
    let under = |x: &str, y: &str| x == y || x.strip_prefix(y).is_some_and(|rest| rest.starts_with('/'));
    under(a, b) || under(b, a)
}

/// Most queued tasks one dispatch decision looks at in one team's queue before it gives up
/// on that team (skipped ones wait for resources, budget or a capable slot).
const DISPATCH_SCAN_MAX: usize = 64;

/// The job model's part of the replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tasks {
    next_task: u64,
    tasks: BTreeMap<TaskId, Task>,
    /// Queued tasks per role and team, by key: the dispatch order within a team.
    queue: BTreeMap<Role, BTreeMap<String, BTreeSet<(i64, TaskId)>>>,
    queued: usize,
    /// Queued tasks at or above the high-priority bound (budget policies look at it).
    queued_high: usize,
    /// Queued tasks held out of dispatch (over budget, waiting for an approval) until
    /// something they wait on changes.
    held: BTreeSet<TaskId>,
    /// Running tasks per team (fair share).
    team_running: BTreeMap<String, u32>,
    workers: BTreeMap<SessionId, Worker>,
    /// Free agent slots per role: (most free first, lowest session).
    free: BTreeMap<Role, BTreeSet<(std::cmp::Reverse<u32>, SessionId)>>,
    /// Ended tasks by end time, oldest forgotten first past `TASKS_ENDED_RETAINED_MAX`.
    ended: BTreeSet<(Millis, TaskId)>,
}

impl Tasks {
    pub fn get(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(&id)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Task> {
        self.tasks.values()
    }

    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    pub fn worker(&self, session: SessionId) -> Option<&Worker> {
        self.workers.get(&session)
    }

    pub fn queued(&self) -> usize {
        self.queued + self.held.len()
    }

    /// Queued tasks at or above the high-priority bound.
    pub fn queued_high(&self) -> usize {
        self.queued_high
    }

    /// Queue order: aging-invariant. A task's effective priority is `priority + age /
    /// (interval / step)`; ordering by `queued_since·step − priority·interval` (ascending)
    /// is the same order at every instant, so nothing is re-sorted as time passes.
    fn key(config: &super::Config, priority: u32, queued_since: Millis) -> i64 {
        let since = i64::try_from(queued_since).unwrap_or(i64::MAX / 4);
        since.saturating_mul(i64::from(config.aging_step.max(1)))
            - i64::from(priority).saturating_mul(i64::try_from(config.aging_interval_ms).unwrap_or(i64::MAX / 4))
    }

    fn enqueue(&mut self, config: &super::Config, id: TaskId) {
        let t = self.tasks.get_mut(&id).expect("task exists");
        t.key = Tasks::key(config, t.spec.priority, t.queued_since);
        self.queue.entry(t.spec.role).or_default().entry(t.spec.team.clone()).or_default().insert((t.key, id));
        self.queued += 1;
        if t.spec.priority >= config.high_priority_min {
            self.queued_high += 1;
        }
    }

    /// Takes a queued task out of its queue (or the held set).
    fn dequeue(&mut self, config: &super::Config, id: TaskId) {
        if self.held.remove(&id) {
            return;
        }
        let t = &self.tasks[&id];
        let Some(teams) = self.queue.get_mut(&t.spec.role) else { return };
        let Some(set) = teams.get_mut(&t.spec.team) else { return };
        if set.remove(&(t.key, id)) {
            self.queued -= 1;
            if t.spec.priority >= config.high_priority_min {
                self.queued_high -= 1;
            }
        }
        if set.is_empty() {
            teams.remove(&t.spec.team);
            if teams.is_empty() {
                self.queue.remove(&t.spec.role);
            }
        }
    }

    /// Re-keys every queued task (the aging tunables changed).
    pub(super) fn rekey(&mut self, config: &super::Config) {
        let ids: Vec<TaskId> =
            self.queue.values().flat_map(|t| t.values()).flat_map(|s| s.iter().map(|(_, id)| *id)).collect();
        self.queue.clear();
        self.queued = 0;
        self.queued_high = 0;
        for id in ids {
            self.enqueue(config, id);
        }
    }

    /// Recomputes the free-slot index entries of one worker.
    fn refresh_free(&mut self, session: SessionId) {
        let Some(w) = self.workers.get_mut(&session) else { return };
        for (role, n) in std::mem::take(&mut w.free_now) {
            if let Some(set) = self.free.get_mut(&role) {
                set.remove(&(std::cmp::Reverse(n), session));
                if set.is_empty() {
                    self.free.remove(&role);
                }
            }
        }
        let now: BTreeMap<Role, u32> = w.slots.keys().map(|r| (*r, w.free(*r))).filter(|(_, n)| *n > 0).collect();
        for (role, n) in &now {
            self.free.entry(*role).or_default().insert((std::cmp::Reverse(*n), session));
        }
        w.free_now = now;
    }

    fn forget_worker(&mut self, session: SessionId) -> Option<Worker> {
        if let Some(w) = self.workers.get_mut(&session) {
            w.slots.clear();
        }
        self.refresh_free(session);
        self.workers.remove(&session)
    }

    /// Checks the job model's invariants; panics naming the broken one.
    pub(super) fn check(&self) {
        let mut queued = 0;
        for t in self.tasks.values() {
            let in_queue = self
                .queue
                .get(&t.spec.role)
                .and_then(|teams| teams.get(&t.spec.team))
                .is_some_and(|s| s.contains(&(t.key, t.id)));
            queued += usize::from(in_queue);
            let held = self.held.contains(&t.id);
            assert!(!(in_queue && held), "{} both queued and held", t.id);
            assert_eq!(in_queue || held, t.status == TaskStatus::Queued, "{} queued iff Queued", t.id);
            if t.status == TaskStatus::Running {
                let s = t.session.expect("a running task has a session");
                let w = self.workers.get(&s).unwrap_or_else(|| panic!("{} runs on unknown worker {s}", t.id));
                assert!(w.running.contains_key(&t.id), "{} missing from its worker", t.id);
            }
        }
        assert_eq!(queued, self.queued, "queued count");
        let mut running: BTreeMap<&str, u32> = BTreeMap::new();
        for w in self.workers.values() {
            assert!(w.blocked.iter().all(|t| w.running.contains_key(t)), "blocked tasks of {} run there", w.session);
            for id in w.running.keys() {
                let t = &self.tasks[id];
                assert!(
                    t.status == TaskStatus::Running && t.session == Some(w.session),
                    "{id} wrongly on {}",
                    w.session
                );
                *running.entry(t.spec.team.as_str()).or_default() += 1;
            }
            for role in w.slots.keys() {
                let n = w.free(*role);
                let indexed = self.free.get(role).is_some_and(|s| s.contains(&(std::cmp::Reverse(n), w.session)));
                assert_eq!(indexed, n > 0, "free slots of {} for {role} indexed", w.session);
            }
        }
        let team_running: BTreeMap<&str, u32> =
            self.team_running.iter().map(|(k, v)| (k.as_str(), *v)).filter(|(_, v)| *v > 0).collect();
        assert_eq!(running, team_running, "running per team");
    }
}

/// Field rules of the task commands (the edge checks the same).
pub fn validate_task_command(cmd: &Command) -> Result<(), Invalid> {
    let len = |field: &str, n: usize, max: usize| {
        if n > max {
            Err(Invalid::new(field, format!("is {n} bytes, at most {max} allowed")))
        } else {
            Ok(())
        }
    };
    match cmd {
        Command::SubmitTask(spec) => {
            len("payload", spec.payload.len(), TASK_PAYLOAD_BYTES_MAX)?;
            len("team", spec.team.len(), qm_shared::limits::NAME_LEN_MAX_BYTES)?;
            len("project", spec.project.len(), qm_shared::limits::NAME_LEN_MAX_BYTES)?;
            len("work_item", spec.work_item.len(), WORK_ITEM_LEN_MAX_BYTES)?;
            validate::check_priority(spec.priority)?;
            validate::check_range("max_attempts", spec.max_attempts.into(), 1, TASK_ATTEMPTS_MAX as u64)?;
            super::validate_items(&spec.items, true)
        }
        Command::RegisterWorker(w) => {
            if w.node_id.is_empty() {
                return Err(Invalid::new("node_id", "is empty"));
            }
            len("node_id", w.node_id.len(), WORKER_NODE_ID_LEN_MAX_BYTES)?;
            for (role, n) in &w.slots {
                validate::check_range(&format!("slots[{role}]"), (*n).into(), 0, WORKER_SLOTS_PER_ROLE_MAX.into())?;
            }
            if w.labels.len() > WORKER_LABELS_MAX {
                return Err(Invalid::new(
                    "labels",
                    format!("has {} entries, at most {WORKER_LABELS_MAX}", w.labels.len()),
                ));
            }
            for (k, v) in &w.labels {
                len(&format!("labels[{k}]"), k.len() + v.len(), WORKER_NODE_ID_LEN_MAX_BYTES)?;
            }
            if w.gpus.len() > WORKER_LABELS_MAX || w.providers.len() > WORKER_LABELS_MAX {
                return Err(Invalid::new(
                    "gpus",
                    format!("gpus and model_providers: at most {WORKER_LABELS_MAX} each"),
                ));
            }
            for (i, p) in w.providers.iter().enumerate() {
                len(&format!("model_providers[{i}].name"), p.name.len(), WORKER_NODE_ID_LEN_MAX_BYTES)?;
            }
            for (i, g) in w.gpus.iter().enumerate() {
                len(&format!("gpus[{i}].model"), g.model.len(), WORKER_NODE_ID_LEN_MAX_BYTES)?;
            }
            if w.running.len() > WORKER_SLOTS_PER_ROLE_MAX as usize * Role::ALL.len() {
                return Err(Invalid::new("running_task_ids", "lists more tasks than a worker can run"));
            }
            Ok(())
        }
        Command::ReportTask { report, .. } => match report {
            TaskReport::Progress { percent, stage, .. } => {
                validate::check_range("percent_done", (*percent).into(), 0, 100)?;
                len("stage", stage.len(), TASK_STAGE_LEN_MAX_BYTES)
            }
            TaskReport::Checkpoint { data, .. } => len("checkpoint.data", data.len(), TASK_CHECKPOINT_BYTES_MAX),
            TaskReport::Blocked { message } => len("message", message.len(), TASK_ERROR_LEN_MAX_BYTES),
            TaskReport::Finished { output, error, agent, .. } => {
                len("agent", agent.len(), WORKER_NODE_ID_LEN_MAX_BYTES)?;
                len("output", output.len(), TASK_OUTPUT_BYTES_MAX)?;
                len("error", error.len(), TASK_ERROR_LEN_MAX_BYTES)
            }
        },
        _ => Ok(()),
    }
}

impl State {
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// Creates a queued task (the caller dispatches).
    pub(super) fn new_task(&mut self, spec: TaskSpec, ctx: &mut Ctx) -> Result<TaskId, Refusal> {
        if self.tasks.tasks.len() >= TASKS_MAX {
            return Err(Refusal::Exhausted { what: "tasks".into(), max: TASKS_MAX as u64 });
        }
        self.tasks.next_task += 1;
        let id = TaskId(self.tasks.next_task);
        self.tasks.tasks.insert(
            id,
            Task {
                id,
                spec,
                status: TaskStatus::Queued,
                attempt: 0,
                failures: 0,
                session: None,
                checkpoint: None,
                percent: 0,
                stage: String::new(),
                blocked: None,
                submitted_at: ctx.now,
                ended_at: None,
                usage: Usage::default(),
                output: Vec::new(),
                error: String::new(),
                attempts: Vec::new(),
                queued_since: ctx.now,
                key: 0,
                route: None,
                wait: None,
                agent: String::new(),
            },
        );
        self.tasks.enqueue(&self.config, id);
        ctx.effects.push(Effect::TaskQueued { task: id, resumable: false });
        Ok(id)
    }

    pub(super) fn apply_submit_task(&mut self, spec: TaskSpec, ctx: &mut Ctx) -> Response {
        match self.new_task(spec, ctx) {
            Ok(id) => {
                self.dispatch_tasks(ctx);
                Response::TaskSubmitted { task: id }
            }
            Err(r) => Response::Refused(r),
        }
    }

    pub(super) fn apply_cancel_task(&mut self, id: TaskId, ctx: &mut Ctx) -> Response {
        let Some(t) = self.tasks.tasks.get(&id) else {
            return Response::Refused(Refusal::TaskUnknown { task: id });
        };
        match t.status {
            s if s.ended() => Response::Refused(Refusal::TaskEnded { task: id }),
            _ => {
                self.stop_task(id, ctx);
                Response::TaskCancelled { task: id }
            }
        }
    }

    /// Queued: ends cancelled now. Running: its worker is told to stop; the attempt ends when
    /// it reports.
    pub(super) fn stop_task(&mut self, id: TaskId, ctx: &mut Ctx) {
        let t = &self.tasks.tasks[&id];
        match t.status {
            TaskStatus::Queued => self.end_task(id, TaskStatus::Cancelled, ctx),
            TaskStatus::Running => {
                let (attempt, session) = (t.attempt, t.session.expect("running has a session"));
                ctx.effects.push(Effect::TaskCancelRequested { task: id, attempt, session });
            }
            _ => {}
        }
    }

    pub(super) fn apply_register_worker(&mut self, w: WorkerSpec, ctx: &mut Ctx) -> Response {
        if !self.sessions.contains_key(&w.session) {
            return Response::Refused(Refusal::SessionUnknown { session: w.session });
        }
        if !self.tasks.workers.contains_key(&w.session) && self.tasks.workers.len() >= WORKERS_MAX {
            return Response::Refused(Refusal::Exhausted { what: "workers".into(), max: WORKERS_MAX as u64 });
        }
        let running = self.tasks.workers.get(&w.session).map(|old| old.running.clone()).unwrap_or_default();
        // What the worker runs that is not (any more) its current attempt: abandon.
        let abandon: Vec<TaskId> = w
            .running
            .iter()
            .filter(|id| {
                self.tasks.tasks.get(id).is_none_or(|t| t.status != TaskStatus::Running || t.session != Some(w.session))
            })
            .copied()
            .collect();
        let blocked = self.tasks.workers.get(&w.session).map(|old| old.blocked.clone()).unwrap_or_default();
        let free_now = self.tasks.workers.get(&w.session).map(|old| old.free_now.clone()).unwrap_or_default();
        self.tasks.workers.insert(
            w.session,
            Worker {
                session: w.session,
                node_id: w.node_id,
                slots: w.slots,
                labels: w.labels,
                running,
                blocked,
                gpus: w.gpus,
                providers: w.providers,
                free_now,
            },
        );
        self.tasks.refresh_free(w.session);
        self.dispatch_tasks(ctx);
        Response::WorkerRegistered { session: w.session, abandon }
    }

    pub(super) fn apply_report_task(
        &mut self,
        session: SessionId,
        id: TaskId,
        attempt: u32,
        report: TaskReport,
        ctx: &mut Ctx,
    ) -> Response {
        if !self.tasks.workers.contains_key(&session) {
            return Response::Refused(Refusal::NotAWorker { session });
        }
        let Some(t) = self.tasks.tasks.get_mut(&id) else {
            return Response::Refused(Refusal::TaskUnknown { task: id });
        };
        if t.status != TaskStatus::Running || t.session != Some(session) || t.attempt != attempt {
            return Response::Refused(Refusal::StaleAttempt { task: id, attempt, current: t.attempt });
        }
        match report {
            TaskReport::Progress { percent, stage, usage } => {
                t.percent = percent;
                t.stage = stage;
                t.usage.add(&usage);
                t.blocked = None;
                ctx.effects.push(Effect::TaskProgress { task: id, attempt, percent });
                if self.tasks.workers.get_mut(&session).is_some_and(|w| w.blocked.remove(&id)) {
                    self.tasks.refresh_free(session);
                }
            }
            TaskReport::Checkpoint { seq, data, for_preemption: _ } => {
                if t.checkpoint.as_ref().is_none_or(|c| (c.attempt, c.seq) < (attempt, seq)) {
                    t.checkpoint = Some(Checkpoint { attempt, seq, data });
                }
            }
            TaskReport::Blocked { message } => {
                t.blocked = Some(message);
                let first = self.tasks.workers.get_mut(&session).is_some_and(|w| w.blocked.insert(id));
                if first {
                    self.tasks.refresh_free(session);
                    self.replan(session, id, ctx);
                }
            }
            TaskReport::Finished { outcome, output, error, usage, wall_ms, agent } => {
                t.usage.add(&usage);
                t.output = output;
                t.error = error;
                t.blocked = None;
                t.agent = agent;
                if let Some(a) = t.attempts.last_mut() {
                    a.ended_at = Some(ctx.now);
                    a.outcome = Some(outcome);
                }
                self.leave_worker(id, session);
                self.record_attempt(id, Some(outcome), usage, wall_ms, ctx);
                let t = self.tasks.tasks.get_mut(&id).expect("present");
                match outcome {
                    Outcome::Succeeded => self.end_task(id, TaskStatus::Succeeded, ctx),
                    Outcome::Cancelled => self.end_task(id, TaskStatus::Cancelled, ctx),
                    Outcome::Preempted => self.requeue_task(id, ctx),
                    Outcome::Failed | Outcome::TimedOut => {
                        t.failures += 1;
                        if t.failures >= t.spec.max_attempts {
                            self.end_task(id, TaskStatus::Failed, ctx);
                        } else {
                            self.requeue_task(id, ctx);
                        }
                    }
                }
                self.dispatch_tasks(ctx);
            }
        }
        let status = self.tasks.tasks[&id].status;
        Response::TaskReported { task: id, status }
    }

    /// The running task `id` leaves the worker of `session`.
    fn leave_worker(&mut self, id: TaskId, session: SessionId) {
        if let Some(w) = self.tasks.workers.get_mut(&session) {
            w.running.remove(&id);
            w.blocked.remove(&id);
        }
        self.tasks.refresh_free(session);
        let t = self.tasks.tasks.get_mut(&id).expect("task exists");
        t.session = None;
        if let Some(n) = self.tasks.team_running.get_mut(&t.spec.team) {
            *n -= 1;
            if *n == 0 {
                self.tasks.team_running.remove(&t.spec.team);
            }
        }
    }

    /// A worker's session ended: its running attempts are lost; requeue them.
    pub(super) fn worker_lost(&mut self, session: SessionId, ctx: &mut Ctx) {
        let Some(w) = self.tasks.workers.get(&session) else { return };
        let running: Vec<TaskId> = w.running.keys().copied().collect();
        for id in running {
            let t = self.tasks.tasks.get_mut(&id).expect("running task exists");
            if let Some(a) = t.attempts.last_mut() {
                a.ended_at = Some(ctx.now);
            }
            t.blocked = None;
            self.leave_worker(id, session);
            self.record_attempt(id, None, Usage::default(), 0, ctx);
            self.requeue_task(id, ctx);
        }
        self.tasks.forget_worker(session);
        self.dispatch_tasks(ctx);
    }

    /// An agent of `session` waits for `blocked`'s resources: its slot takes other ready work
    /// of the role that needs none of them — from the same work item first — while the
    /// blocked task keeps its place in the resource queues.
    fn replan(&mut self, session: SessionId, blocked: TaskId, ctx: &mut Ctx) {
        let b = &self.tasks.tasks[&blocked];
        let (role, work_item) = (b.spec.role, b.spec.work_item.clone());
        let paths: Vec<&str> = b.spec.items.iter().map(|i| i.path.as_str()).collect();
        if self.tasks.workers.get(&session).is_none_or(|w| w.free(role) == 0) {
            return;
        }
        let Some(teams) = self.tasks.queue.get(&role) else { return };
        let mut queued: Vec<&(i64, TaskId)> = teams.values().flat_map(|s| s.iter()).collect();
        queued.sort();
        let candidate = |same_item: bool| {
            queued
                .iter()
                .map(|(_, id)| &self.tasks.tasks[id])
                .filter(|t| !same_item || (t.spec.work_item == work_item && !work_item.is_empty()))
                .find(|t| !t.spec.items.iter().any(|i| paths.iter().any(|p| overlaps(i.path.as_str(), p))))
                .map(|t| t.id)
        };
        let Some(next) = candidate(true).or_else(|| candidate(false)) else { return };
        self.assign(next, session, ctx);
    }

    fn requeue_task(&mut self, id: TaskId, ctx: &mut Ctx) {
        let t = self.tasks.tasks.get_mut(&id).expect("task exists");
        t.status = TaskStatus::Queued;
        let resumable = t.checkpoint.is_some();
        self.tasks.enqueue(&self.config, id);
        ctx.effects.push(Effect::TaskQueued { task: id, resumable });
    }

    fn end_task(&mut self, id: TaskId, status: TaskStatus, ctx: &mut Ctx) {
        if self.tasks.tasks[&id].status == TaskStatus::Queued {
            self.tasks.dequeue(&self.config, id);
        }
        let t = self.tasks.tasks.get_mut(&id).expect("task exists");
        t.status = status;
        t.ended_at = Some(ctx.now);
        t.checkpoint = None;
        t.wait = None;
        self.tasks.ended.insert((ctx.now, id));
        ctx.effects.push(Effect::TaskEnded { task: id, status });
        self.job_task_ended(id, ctx);
        while self.tasks.ended.len() > TASKS_ENDED_RETAINED_MAX {
            let (_, old) = self.tasks.ended.pop_first().expect("non-empty");
            self.tasks.tasks.remove(&old);
            self.jobs_forget_task(old);
        }
    }

    /// Puts held tasks back in their queues (a budget or an approval changed); dispatch
    /// looks at them again.
    pub(super) fn release_held(&mut self) {
        for id in std::mem::take(&mut self.tasks.held) {
            self.tasks.enqueue(&self.config, id);
        }
    }

    /// Moves a queued task out of dispatch until something it waits on changes.
    fn hold(&mut self, id: TaskId, reason: String, ctx: &mut Ctx) {
        self.tasks.dequeue(&self.config, id);
        self.tasks.held.insert(id);
        self.set_wait(id, Some(reason), ctx);
    }

    /// Records why a queued task is not dispatched (an event on its work item when the reason
    /// changes).
    fn set_wait(&mut self, id: TaskId, reason: Option<String>, ctx: &mut Ctx) {
        let t = self.tasks.tasks.get_mut(&id).expect("task exists");
        if t.wait == reason {
            return;
        }
        t.wait = reason.clone();
        if let Some(r) = reason {
            self.job_task_waits(id, r, ctx);
        }
    }

    /// Hands queued tasks to free agent slots: per role, the team with the best head of queue
    /// after its fair-share penalty, then in key order within it; skipping (backfill) passes
    /// whose resources are held while other work can run, and applying the budget policies.
    pub(super) fn dispatch_tasks(&mut self, ctx: &mut Ctx) {
        let roles: Vec<Role> = self
            .tasks
            .free
            .keys()
            .filter(|r| self.tasks.queue.get(*r).is_some_and(|t| !t.is_empty()))
            .copied()
            .collect();
        for role in roles {
            while let Some((id, session)) = self.pick(role, ctx) {
                self.assign(id, session, ctx);
            }
        }
    }

    /// The worker for a task of `role` needing `requires`: most free slots, lowest session.
    fn slot_for(&self, role: Role, requires: &[Capability]) -> Option<SessionId> {
        let free = self.tasks.free.get(&role)?;
        if requires.is_empty() {
            return free.first().map(|(_, s)| *s);
        }
        free.iter().map(|(_, s)| *s).find(|s| self.tasks.workers[s].capable(requires))
    }

    /// The next dispatch decision for `role`, if any.
    pub(super) fn pick(&mut self, role: Role, ctx: &mut Ctx) -> Option<(TaskId, SessionId)> {
        self.tasks.free.get(&role).filter(|f| !f.is_empty())?;
        let point = i64::try_from(self.config.aging_interval_ms).unwrap_or(i64::MAX / 4);
        let share = i64::from(self.config.fair_share_points).saturating_mul(point);
        let mut teams: Vec<(i64, &str)> = self
            .tasks
            .queue
            .get(&role)?
            .iter()
            .filter_map(|(team, set)| {
                let (key, _) = set.first()?;
                let running = i64::from(self.tasks.team_running.get(team).copied().unwrap_or(0));
                Some((key.saturating_add(share.saturating_mul(running)), team.as_str()))
            })
            .collect();
        teams.sort();
        let mut holds: Vec<(TaskId, String)> = Vec::new();
        let mut approvals: Vec<TaskId> = Vec::new();
        let mut waits: Vec<(TaskId, String)> = Vec::new();
        let mut fallback = None;
        let mut chosen = None;
        'teams: for (_, team) in &teams {
            let set = &self.tasks.queue[&role][*team];
            for (_, id) in set.iter().take(DISPATCH_SCAN_MAX) {
                let t = &self.tasks.tasks[id];
                let Some(session) = self.slot_for(role, &t.spec.requires) else {
                    let needs: Vec<&str> = t.spec.requires.iter().map(|c| c.as_str()).collect();
                    waits.push((*id, format!("no free {role} slot on a worker with {}", needs.join(", "))));
                    continue;
                };
                match self.admit(t, ctx.now) {
                    Admission::Go => {}
                    Admission::Defer(reason) => {
                        waits.push((*id, reason));
                        continue;
                    }
                    Admission::Hold(reason) => {
                        holds.push((*id, reason));
                        continue;
                    }
                    Admission::Approval(reason) => {
                        approvals.push(*id);
                        holds.push((*id, reason));
                        continue;
                    }
                }
                if let Some(reason) = self.backfill_skip(t, ctx.now) {
                    fallback.get_or_insert((*id, session));
                    waits.push((*id, reason));
                    continue;
                }
                chosen = Some((*id, session));
                break 'teams;
            }
        }
        for id in approvals {
            self.want_approval(id);
        }
        for (id, reason) in holds {
            self.hold(id, reason, ctx);
        }
        let chosen = chosen.or(fallback);
        for (id, reason) in waits {
            if chosen.map(|c| c.0) != Some(id) {
                self.set_wait(id, Some(reason), ctx);
            }
        }
        chosen
    }

    /// Why a pass of a work item should be passed over for now: an exclusive claim of it is
    /// held by someone it cannot preempt, and it has not waited its aging bound yet.
    fn backfill_skip(&self, t: &Task, now: Millis) -> Option<String> {
        if !self.is_pass(t.id) || now.saturating_sub(t.queued_since) >= self.config.aging_bound_ms(t.spec.priority) {
            return None;
        }
        let held = self.held_against(&t.spec.items, t.spec.priority)?;
        Some(format!("{held} is held; other work runs first (backfill) for at most the aging bound"))
    }

    /// Starts the next attempt of queued task `id` on the worker of `session`.
    fn assign(&mut self, id: TaskId, session: SessionId, ctx: &mut Ctx) {
        self.tasks.dequeue(&self.config, id);
        let route = self.route(id, session);
        let w = self.tasks.workers.get_mut(&session).expect("worker exists");
        let t = self.tasks.tasks.get_mut(&id).expect("task exists");
        w.running.insert(id, t.spec.role);
        t.status = TaskStatus::Running;
        t.attempt += 1;
        t.session = Some(session);
        t.wait = None;
        t.route = route;
        t.percent = t.checkpoint.as_ref().map_or(0, |_| t.percent);
        if t.attempts.len() >= TASK_ATTEMPTS_MAX {
            t.attempts.remove(0);
        }
        t.attempts.push(Attempt {
            attempt: t.attempt,
            session,
            node_id: w.node_id.clone(),
            started_at: ctx.now,
            ended_at: None,
            outcome: None,
            resumed_from: t.checkpoint.as_ref().map(|c| c.seq),
        });
        *self.tasks.team_running.entry(t.spec.team.clone()).or_default() += 1;
        ctx.effects.push(Effect::TaskAssigned { task: id, attempt: t.attempt, session });
        self.tasks.refresh_free(session);
        self.job_task_started(id, ctx);
    }
}

/// A budget's answer for one dispatch.
pub(super) enum Admission {
    Go,
    /// Not now, but look again at the next decision (approaching: others first).
    Defer(String),
    /// Out of dispatch until the budget or an approval changes.
    Hold(String),
    /// Held until a human approves the spend (`qm gate approve`).
    Approval(String),
}
