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
//!
//! Beside this file: `dispatch.rs` (which queued task goes to which agent slot),
//! `workers.rs` (registration and loss of workers), `validate.rs` (field checks).

mod dispatch;
mod validate;
mod workers;

pub use validate::validate_task_command;
pub use workers::Worker;

use crate::state::invariants::{ensure, ensure_eq, entry, Checked};
use crate::state::quotas::Work;
use crate::state::types::{Effect, Item, Millis, Refusal, Response, SessionId, TaskId};
use crate::state::types::{Outcome, TaskReport, TaskSpec, TaskStatus, Usage};
use crate::state::{Ctx, State};
use qm_shared::limits::{TASKS_ENDED_RETAINED_MAX, TASKS_MAX};
use qm_shared::{Mode, ResourcePath, Role, Tier};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

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
    /// Its spec as `name@version` (empty: none).
    pub agent_spec: String,
    /// What its payload names that a worker must have.
    pub named: Named,
}

/// The repository (`repo`) and coding-agent CLI (`tool` of a `cli` payload) a task's payload
/// names: only a worker granted them runs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Named {
    pub repo: Option<String>,
    pub cli: Option<String>,
}

impl Named {
    /// Read from a JSON payload; nothing for any other.
    pub fn of(payload: &[u8]) -> Named {
        let Ok(serde_json::Value::Object(p)) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return Named::default();
        };
        let text = |k: &str| p.get(k).and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(String::from);
        let cli = if p.get("executor").and_then(|e| e.as_str()) == Some("cli") { text("tool") } else { None };
        Named { repo: text("repo"), cli }
    }

    /// What a worker must have for it, for a wait reason: `repo app`, `cli claude`.
    pub fn wanted(&self) -> Vec<String> {
        let repo = self.repo.iter().map(|r| format!("repo {r}"));
        repo.chain(self.cli.iter().map(|c| format!("cli {c}"))).collect()
    }
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

/// Whether two resource paths overlap (one is the other or under it).
pub(in crate::state) fn overlaps(a: &str, b: &str) -> bool {
    let under = |x: &str, y: &str| x == y || x.strip_prefix(y).is_some_and(|rest| rest.starts_with('/'));
    under(a, b) || under(b, a)
}

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
    /// Running attempts per model provider they were routed to (how busy routing judges a
    /// provider before its agents have acquired). Derived: rebuilt on restore.
    #[serde(skip)]
    pub(in crate::state) routed: BTreeMap<String, u32>,
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
    pub(in crate::state) fn key(config: &crate::state::Config, priority: u32, queued_since: Millis) -> i64 {
        let since = i64::try_from(queued_since).unwrap_or(i64::MAX / 4);
        since.saturating_mul(i64::from(config.aging_step.max(1)))
            - i64::from(priority).saturating_mul(i64::try_from(config.aging_interval_ms).unwrap_or(i64::MAX / 4))
    }

    pub(in crate::state) fn enqueue(&mut self, config: &crate::state::Config, id: TaskId) {
        let t = self.tasks.get_mut(&id).expect("task exists");
        t.key = Tasks::key(config, t.spec.priority, t.queued_since);
        self.queue.entry(t.spec.role).or_default().entry(t.spec.team.clone()).or_default().insert((t.key, id));
        self.queued += 1;
        if t.spec.priority >= config.high_priority_min {
            self.queued_high += 1;
        }
    }

    /// Takes a queued task out of its queue (or the held set).
    pub(in crate::state) fn dequeue(&mut self, config: &crate::state::Config, id: TaskId) {
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
    pub(in crate::state) fn rekey(&mut self, config: &crate::state::Config) {
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
    pub(in crate::state) fn refresh_free(&mut self, session: SessionId) {
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

    pub(in crate::state) fn forget_worker(&mut self, session: SessionId) -> Option<Worker> {
        if let Some(w) = self.workers.get_mut(&session) {
            w.slots.clear();
        }
        self.refresh_free(session);
        self.workers.remove(&session)
    }

    /// Recounts `routed` from the running attempts (after a restore).
    pub(in crate::state) fn rebuild_routed(&mut self) {
        self.routed = self.count_routed();
    }

    fn count_routed(&self) -> BTreeMap<String, u32> {
        let mut routed = BTreeMap::new();
        for id in self.workers.values().flat_map(|w| w.running.keys()) {
            if let Some(r) = self.tasks.get(id).and_then(|t| t.route.as_ref()) {
                *routed.entry(r.provider.clone()).or_default() += 1;
            }
        }
        routed
    }

    /// Checks the task model's invariants; returns the first broken one.
    pub(in crate::state) fn check(&self) -> Checked {
        ensure_eq!(self.routed, self.count_routed(), "running attempts per provider against a recount");
        let mut queued = 0;
        for t in self.tasks.values() {
            let in_queue = self
                .queue
                .get(&t.spec.role)
                .and_then(|teams| teams.get(&t.spec.team))
                .is_some_and(|s| s.contains(&(t.key, t.id)));
            queued += usize::from(in_queue);
            let held = self.held.contains(&t.id);
            ensure!(!(in_queue && held), "{} both queued and held", t.id);
            ensure_eq!(in_queue || held, t.status == TaskStatus::Queued, "{} queued iff Queued", t.id);
            if t.status == TaskStatus::Running {
                let s = t.session.ok_or_else(|| format!("running {} has no session", t.id))?;
                let w = entry(&self.workers, &s, "worker")?;
                ensure!(w.running.contains_key(&t.id), "{} missing from its worker", t.id);
            }
        }
        ensure_eq!(queued, self.queued, "queued count");
        let mut running: BTreeMap<&str, u32> = BTreeMap::new();
        for w in self.workers.values() {
            ensure!(w.blocked.iter().all(|t| w.running.contains_key(t)), "blocked tasks of {} run there", w.session);
            for id in w.running.keys() {
                let t = entry(&self.tasks, id, "task")?;
                ensure!(
                    t.status == TaskStatus::Running && t.session == Some(w.session),
                    "{id} wrongly on {}",
                    w.session
                );
                *running.entry(t.spec.team.as_str()).or_default() += 1;
            }
            for role in w.slots.keys() {
                let n = w.free(*role);
                let indexed = self.free.get(role).is_some_and(|s| s.contains(&(std::cmp::Reverse(n), w.session)));
                ensure_eq!(indexed, n > 0, "free slots of {} for {role} indexed", w.session);
            }
        }
        let team_running: BTreeMap<&str, u32> =
            self.team_running.iter().map(|(k, v)| (k.as_str(), *v)).filter(|(_, v)| *v > 0).collect();
        ensure_eq!(running, team_running, "running per team");
        Ok(())
    }
}

impl State {
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// Creates a queued task (the caller dispatches).
    pub(in crate::state) fn new_task(&mut self, spec: TaskSpec, ctx: &mut Ctx) -> Result<TaskId, Refusal> {
        if self.tasks.tasks.len() >= TASKS_MAX {
            return Err(Refusal::Exhausted { what: "tasks".into(), max: TASKS_MAX as u64 });
        }
        self.tasks.next_task += 1;
        let id = TaskId(self.tasks.next_task);
        let named = Named::of(&spec.payload);
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
                agent_spec: String::new(),
                named,
            },
        );
        self.tasks.enqueue(&self.config, id);
        ctx.effects.push(Effect::TaskQueued { task: id, resumable: false });
        Ok(id)
    }

    pub(in crate::state) fn apply_submit_task(&mut self, spec: TaskSpec, ctx: &mut Ctx) -> Response {
        if let Err(r) = self.work_quota(&spec.principal, Work::Task, spec.payload.len() as u64) {
            return Response::Refused(r);
        }
        if let Err(r) = self.check_role_offered("role", spec.role) {
            return Response::Refused(r);
        }
        match self.new_task(spec, ctx) {
            Ok(id) => {
                self.dispatch_tasks(ctx);
                Response::TaskSubmitted { task: id }
            }
            Err(r) => Response::Refused(r),
        }
    }

    pub(in crate::state) fn apply_cancel_task(&mut self, id: TaskId, ctx: &mut Ctx) -> Response {
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
    pub(in crate::state) fn stop_task(&mut self, id: TaskId, ctx: &mut Ctx) {
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

    pub(in crate::state) fn apply_report_task(
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
        if t.status.ended() && t.attempt == attempt {
            // Its last attempt's result is in: a repeat (or a late zombie of it) ends nowhere.
            return Response::Refused(Refusal::TaskEnded { task: id });
        }
        if t.status != TaskStatus::Running || t.session != Some(session) || t.attempt != attempt {
            return Response::Refused(Refusal::StaleAttempt { task: id, attempt, current: t.attempt });
        }
        let mut spent_before = None;
        match report {
            TaskReport::Progress { percent, stage, usage } => {
                t.percent = percent;
                t.stage = stage;
                spent_before = Some(t.usage);
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
            TaskReport::Finished { outcome, output, error, usage, wall_ms, agent, spec } => {
                t.usage.add(&usage);
                t.output = output;
                t.error = error;
                t.blocked = None;
                t.agent = agent;
                t.agent_spec = spec;
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
        if let Some(before) = spent_before {
            self.stop_over_spec_budget(id, &before, ctx);
        }
        let status = self.tasks.tasks[&id].status;
        Response::TaskReported { task: id, status }
    }

    /// An agent of `session` waits for `blocked`'s resources: its slot takes other ready work
    /// of the role that needs none of them — from the same work item first — while the
    /// blocked task keeps its place in the resource queues.
    pub(in crate::state) fn replan(&mut self, session: SessionId, blocked: TaskId, ctx: &mut Ctx) {
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

    pub(in crate::state) fn requeue_task(&mut self, id: TaskId, ctx: &mut Ctx) {
        let t = self.tasks.tasks.get_mut(&id).expect("task exists");
        t.status = TaskStatus::Queued;
        let resumable = t.checkpoint.is_some();
        self.tasks.enqueue(&self.config, id);
        ctx.effects.push(Effect::TaskQueued { task: id, resumable });
    }

    pub(in crate::state) fn end_task(&mut self, id: TaskId, status: TaskStatus, ctx: &mut Ctx) {
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
    pub(in crate::state) fn release_held(&mut self) {
        for id in std::mem::take(&mut self.tasks.held) {
            self.tasks.enqueue(&self.config, id);
        }
    }

    /// Moves a queued task out of dispatch until something it waits on changes.
    pub(in crate::state) fn hold(&mut self, id: TaskId, reason: String, ctx: &mut Ctx) {
        self.tasks.dequeue(&self.config, id);
        self.tasks.held.insert(id);
        self.set_wait(id, Some(reason), ctx);
    }

    /// Records why a queued task is not dispatched (an event on its work item when the reason
    /// changes).
    pub(in crate::state) fn set_wait(&mut self, id: TaskId, reason: Option<String>, ctx: &mut Ctx) {
        let t = self.tasks.tasks.get_mut(&id).expect("task exists");
        if t.wait == reason {
            return;
        }
        t.wait = reason.clone();
        if let Some(r) = reason {
            self.job_task_waits(id, r, ctx);
        }
    }
}

/// A budget's answer for one dispatch.
pub(in crate::state) enum Admission {
    Go,
    /// Not now, but look again at the next decision (approaching: others first).
    Defer(String),
    /// Out of dispatch until the budget or an approval changes.
    Hold(String),
    /// Held until a human approves the spend (`qm gate approve`).
    Approval(String),
}
