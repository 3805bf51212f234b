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
use qm_shared::{validate, Invalid, Role};
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
}

impl Worker {
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

/// The job model's part of the replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tasks {
    next_task: u64,
    tasks: BTreeMap<TaskId, Task>,
    /// Queued tasks by (inverted priority, id): the dispatch order.
    queue: BTreeSet<(u32, TaskId)>,
    workers: BTreeMap<SessionId, Worker>,
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
        self.queue.len()
    }

    /// Checks the job model's invariants; panics naming the broken one.
    pub(super) fn check(&self) {
        for t in self.tasks.values() {
            let queued = self.queue.contains(&(u32::MAX - t.spec.priority, t.id));
            assert_eq!(queued, t.status == TaskStatus::Queued, "{} queued iff Queued", t.id);
            if t.status == TaskStatus::Running {
                let s = t.session.expect("a running task has a session");
                let w = self.workers.get(&s).unwrap_or_else(|| panic!("{} runs on unknown worker {s}", t.id));
                assert!(w.running.contains_key(&t.id), "{} missing from its worker", t.id);
            }
        }
        for w in self.workers.values() {
            assert!(w.blocked.iter().all(|t| w.running.contains_key(t)), "blocked tasks of {} run there", w.session);
            for id in w.running.keys() {
                let t = &self.tasks[id];
                assert!(
                    t.status == TaskStatus::Running && t.session == Some(w.session),
                    "{id} wrongly on {}",
                    w.session
                );
            }
        }
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
            TaskReport::Finished { output, error, .. } => {
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

    pub(super) fn apply_submit_task(&mut self, spec: TaskSpec, ctx: &mut Ctx) -> Response {
        if self.tasks.tasks.len() >= TASKS_MAX {
            return Response::Refused(Refusal::Exhausted { what: "tasks".into(), max: TASKS_MAX as u64 });
        }
        self.tasks.next_task += 1;
        let id = TaskId(self.tasks.next_task);
        self.tasks.queue.insert((u32::MAX - spec.priority, id));
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
            },
        );
        ctx.effects.push(Effect::TaskQueued { task: id, resumable: false });
        self.dispatch_tasks(ctx);
        Response::TaskSubmitted { task: id }
    }

    pub(super) fn apply_cancel_task(&mut self, id: TaskId, ctx: &mut Ctx) -> Response {
        let Some(t) = self.tasks.tasks.get(&id) else {
            return Response::Refused(Refusal::TaskUnknown { task: id });
        };
        match t.status {
            s if s.ended() => Response::Refused(Refusal::TaskEnded { task: id }),
            TaskStatus::Queued => {
                self.end_task(id, TaskStatus::Cancelled, ctx);
                Response::TaskCancelled { task: id }
            }
            _ => {
                // The worker stops it and reports Cancelled; the attempt ends then.
                let (attempt, session) = (t.attempt, t.session.expect("running has a session"));
                ctx.effects.push(Effect::TaskCancelRequested { task: id, attempt, session });
                Response::TaskCancelled { task: id }
            }
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
            },
        );
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
                if let Some(w) = self.tasks.workers.get_mut(&session) {
                    w.blocked.remove(&id);
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
                    self.replan(session, id, ctx);
                }
            }
            TaskReport::Finished { outcome, output, error, usage, wall_ms: _ } => {
                t.usage.add(&usage);
                t.output = output;
                t.error = error;
                t.blocked = None;
                if let Some(a) = t.attempts.last_mut() {
                    a.ended_at = Some(ctx.now);
                    a.outcome = Some(outcome);
                }
                if let Some(w) = self.tasks.workers.get_mut(&session) {
                    w.running.remove(&id);
                    w.blocked.remove(&id);
                }
                let t = self.tasks.tasks.get_mut(&id).expect("present");
                t.session = None;
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

    /// A worker's session ended: its running attempts are lost; requeue them.
    pub(super) fn worker_lost(&mut self, session: SessionId, ctx: &mut Ctx) {
        let Some(w) = self.tasks.workers.remove(&session) else { return };
        for id in w.running.keys() {
            let t = self.tasks.tasks.get_mut(id).expect("running task exists");
            if let Some(a) = t.attempts.last_mut() {
                a.ended_at = Some(ctx.now);
            }
            t.session = None;
            t.blocked = None;
            self.requeue_task(*id, ctx);
        }
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
        let candidate = |same_item: bool| {
            self.tasks
                .queue
                .iter()
                .map(|(_, id)| &self.tasks.tasks[id])
                .filter(|t| {
                    t.spec.role == role && (!same_item || (t.spec.work_item == work_item && !work_item.is_empty()))
                })
                .find(|t| !t.spec.items.iter().any(|i| paths.iter().any(|p| overlaps(i.path.as_str(), p))))
                .map(|t| t.id)
        };
        let Some(next) = candidate(true).or_else(|| candidate(false)) else { return };
        self.assign(next, session, ctx);
    }

    fn requeue_task(&mut self, id: TaskId, ctx: &mut Ctx) {
        let t = self.tasks.tasks.get_mut(&id).expect("task exists");
        t.status = TaskStatus::Queued;
        self.tasks.queue.insert((u32::MAX - t.spec.priority, id));
        ctx.effects.push(Effect::TaskQueued { task: id, resumable: t.checkpoint.is_some() });
    }

    fn end_task(&mut self, id: TaskId, status: TaskStatus, ctx: &mut Ctx) {
        let t = self.tasks.tasks.get_mut(&id).expect("task exists");
        self.tasks.queue.remove(&(u32::MAX - t.spec.priority, id));
        t.status = status;
        t.ended_at = Some(ctx.now);
        t.checkpoint = None;
        self.tasks.ended.insert((ctx.now, id));
        ctx.effects.push(Effect::TaskEnded { task: id, status });
        while self.tasks.ended.len() > TASKS_ENDED_RETAINED_MAX {
            let (_, old) = self.tasks.ended.pop_first().expect("non-empty");
            self.tasks.tasks.remove(&old);
        }
    }

    /// Hands queued tasks to free agent slots, in dispatch order.
    fn dispatch_tasks(&mut self, ctx: &mut Ctx) {
        let mut free: BTreeMap<Role, BTreeMap<SessionId, u32>> = BTreeMap::new();
        for w in self.tasks.workers.values() {
            for role in w.slots.keys() {
                let n = w.free(*role);
                if n > 0 {
                    free.entry(*role).or_default().insert(w.session, n);
                }
            }
        }
        if free.is_empty() {
            return;
        }
        let mut assign = Vec::new();
        for &(key, id) in &self.tasks.queue {
            let role = self.tasks.tasks[&id].spec.role;
            let Some(slots) = free.get_mut(&role) else { continue };
            // Most free slots first; ties go to the lowest session.
            let (&session, n) = slots.iter_mut().max_by_key(|(s, n)| (**n, std::cmp::Reverse(**s))).expect("non-empty");
            *n -= 1;
            if *n == 0 {
                slots.remove(&session);
                if slots.is_empty() {
                    free.remove(&role);
                }
            }
            assign.push((key, id, session));
            if free.is_empty() {
                break;
            }
        }
        for (_, id, session) in assign {
            self.assign(id, session, ctx);
        }
    }

    /// Starts the next attempt of queued task `id` on the worker of `session`.
    fn assign(&mut self, id: TaskId, session: SessionId, ctx: &mut Ctx) {
        {
            let priority = self.tasks.tasks[&id].spec.priority;
            self.tasks.queue.remove(&(u32::MAX - priority, id));
            let w = self.tasks.workers.get_mut(&session).expect("worker exists");
            let t = self.tasks.tasks.get_mut(&id).expect("task exists");
            w.running.insert(id, t.spec.role);
            t.status = TaskStatus::Running;
            t.attempt += 1;
            t.session = Some(session);
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
            ctx.effects.push(Effect::TaskAssigned { task: id, attempt: t.attempt, session });
        }
    }
}
