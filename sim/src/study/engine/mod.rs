//! The discrete-event loop of a study: the real replicated core, modelled agents around it.
//!
//! ```text
//!   events (arrivals, ticks, agents finishing, humans deciding) ordered by (time, seq)
//!        │
//!        ▼
//!   modelled workers: the worker's own pure supervisor (`qm_worker::supervisor`: park a
//!   blocked task, resume it when granted, backlog assignments until a slot is idle) and its
//!   pure agent logic (`qm_worker::agent::Agent`) per slot — the code a worker runs
//!        │ commands                         ▲ effects (assignments, grants, preemptions…)
//!        ▼                                  │
//!   qm_coordinator::state::State::apply(index, now, command)  — the same code a coordinator runs
//! ```
//!
//! What is modelled rather than run: the executors (a pass takes a drawn time, fails or hangs
//! with the scenario's odds, checkpoints when stopped), the network (commands apply at the
//! moment they are sent) and humans (gate decisions after a drawn delay). Agents ask for
//! leases of an hour and extend them every 40 minutes instead of every 20 seconds, and
//! workers keep their sessions alive every minute: the core sees the same grants and
//! releases, with fewer commands.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use qm_coordinator::state::{
    Acquire, Command, Config, Effect, Item, JobId, Refusal, RequestId, Response, SessionId, State, TaskId, Wait,
};
use qm_coordinator::state::{JobSpec, JobStatus, PassStatus};
use qm_coordinator::state::{ProviderInfo, TaskReport, WorkerSpec};
use qm_shared::agent::{owner_task, task_owner};
use qm_shared::limits::{LEASE_MS_MAX, SESSION_TTL_MS_MAX};
use qm_shared::workflow::Need;
use qm_shared::{Mode, ResourcePath, Role};
use qm_worker::agent::{Action, Agent, Assignment, Event, Lease, Report as AgentReport};
use qm_worker::executor::{ExecEvent, ExecOutcome, ExecRequest, ExecResult, Usage as ExecUsage};
use qm_worker::supervisor::{AcquireError, Policy as SupPolicy, SupAction, SupEvent, Supervisor};

use super::report::{percentile, BudgetEvent, Gauge, LongestWait, Report, ResourceUse, RoleUse, WaitStats};
use super::rng::{hash_str, Rng};
use super::scenario::{coarsen, fill, Pattern, Policies, Scenario};

/// Simulated time 0: Monday 2026-01-05 08:00 UTC (budget days and weeks start on real
/// calendar boundaries).
pub const START_MS: u64 = 1_767_600_000;
const EPOCH_MS: u64 = START_MS * 1_000;
/// How often modelled workers send a keepalive.
const KEEPALIVE_MS: u64 = 60_000;
/// How often the simulated humans look for decisions wanted, and the ledger is read.
const POLL_MS: u64 = 60_000;
/// A held lease is extended this long before it would run out.
const EXTEND_EVERY_MS: u64 = LEASE_MS_MAX * 2 / 3;
/// A deadlock victim's parked task acquires again after this pause (as the worker does).
const PARK_RETRY_MS: u64 = 200;
/// Most events one run processes (a runaway scenario stops with what it has).
const EVENTS_MAX: u64 = 200_000_000;

mod report;
mod worker;
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrive {
        stream: usize,
    },
    Tick,
    KeepAlive,
    Poll,
    /// The executor of a slot finished (or hung to its timeout).
    ExecDone {
        w: usize,
        s: usize,
        gen: u64,
    },
    /// A stopped executor has written its checkpoint.
    Stopped {
        w: usize,
        s: usize,
        gen: u64,
    },
    /// An acquire waited past the re-plan threshold.
    Blocked {
        w: usize,
        s: usize,
        task: u64,
    },
    ParkRetry {
        w: usize,
        task: u64,
    },
    Extend {
        w: usize,
        s: usize,
        gen: u64,
    },
    Decide {
        job: u64,
        pass: usize,
        runs: u32,
    },
}

/// A message to an agent of a worker, or to its supervisor.
#[derive(Debug)]
enum Msg {
    Agent { w: usize, s: usize, event: Event },
    Sup { w: usize, event: SupEvent },
}

#[derive(Debug)]
enum Plan {
    Succeed,
    Fail,
    Hang,
}

#[derive(Debug)]
struct Exec {
    task: u64,
    gen: u64,
    started: u64,
    /// Work done before this attempt (from its checkpoint).
    done_before: u64,
    total: u64,
    review: bool,
    output: Vec<u8>,
    ends: u64,
    plan: Plan,
    stopping: bool,
}

/// A slot's agent and what it runs (its role and state are the supervisor's).
#[derive(Debug)]
struct Slot {
    agent: Agent,
    exec: Option<Exec>,
    leases: Vec<u64>,
}

#[derive(Debug)]
struct SimWorker {
    session: SessionId,
    node: String,
    /// One per slot of `sup`, in its order.
    slots: Vec<Slot>,
    sup: Supervisor,
}

/// Per-task facts the study keeps to measure.
#[derive(Debug, Default)]
struct TaskInfo {
    class: usize,
    job: u64,
    queued_at: u64,
    assigned_at: Option<u64>,
}

struct Metrics {
    bucket_ms: u64,
    waits: Vec<Vec<u64>>,
    dispatch_sum: Vec<u64>,
    resources_sum: Vec<u64>,
    leads: Vec<Vec<u64>>,
    submitted: Vec<u64>,
    completed: Vec<u64>,
    failed: Vec<u64>,
    role_running: BTreeMap<Role, Gauge>,
    role_occupied: BTreeMap<Role, Gauge>,
    role_slots: BTreeMap<Role, u64>,
    rows: Vec<(String, Option<u32>, String)>,
    row_of: BTreeMap<String, usize>,
    busy: Vec<Gauge>,
    held_units: Vec<u64>,
    waiters: Vec<Gauge>,
    grants: Vec<u64>,
    lease_row: BTreeMap<u64, (usize, u64)>,
    request_rows: BTreeMap<RequestId, Vec<usize>>,
    r: Report,
    ledger_seq: u64,
}

/// One run of a scenario under one set of policies.
pub struct Run<'a> {
    sc: &'a Scenario,
    pol: Policies,
    seed: u64,
    state: State,
    index: u64,
    now: u64,
    seq: u64,
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    workers: Vec<SimWorker>,
    by_session: BTreeMap<SessionId, usize>,
    requests: BTreeMap<RequestId, (usize, u64)>,
    pending: BTreeMap<u64, RequestId>,
    inbox: VecDeque<Msg>,
    grants_by_request: BTreeMap<RequestId, Vec<Lease>>,
    tasks: BTreeMap<u64, TaskInfo>,
    jobs: BTreeMap<u64, usize>,
    open_jobs: BTreeSet<u64>,
    decisions: BTreeSet<(u64, usize, u32)>,
    fresh: BTreeMap<(u64, u64), u64>,
    streams: Vec<(Rng, u64)>,
    arrival_rng: Rng,
    behaviour_rng: Rng,
    gen: u64,
    /// The class of the work item being submitted (its first passes queue inside the apply).
    submitting: Option<usize>,
    m: Metrics,
}

impl std::fmt::Debug for Run<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run").field("scenario", &self.sc.name).field("now", &self.now).finish_non_exhaustive()
    }
}

/// Runs `sc` under `pol` with `seed` and reports what happened.
pub fn run(sc: &Scenario, variant: &str, pol: &Policies, seed: u64) -> Report {
    let wall = std::time::Instant::now();
    let mut r = Run::new(sc, pol, seed);
    r.m.r.variant = variant.to_string();
    r.setup();
    r.main_loop();
    let mut report = r.finish();
    report.wall_ms = wall.elapsed().as_millis() as u64;
    report
}

impl<'a> Run<'a> {
    fn new(sc: &'a Scenario, pol: &Policies, seed: u64) -> Run<'a> {
        let buckets = sc.buckets as usize;
        let bucket_ms = sc.duration_ms.div_ceil(u64::from(sc.buckets)).max(1);
        let classes = qm_shared::workflow_file::CLASSES.len();
        let mut rows: Vec<(String, Option<u32>, String)> = sc
            .project
            .resources
            .iter()
            .map(|r| (r.path.as_str().to_string(), r.capacity, effective_policy(pol, &r.policy).to_string()))
            .collect();
        rows.extend(
            sc.project.providers.iter().map(|p| (format!("api:{}", p.name), Some(p.concurrency), "none".to_string())),
        );
        rows.sort();
        rows.dedup_by(|a, b| a.0 == b.0);
        let n = rows.len();
        let mut role_slots = BTreeMap::new();
        for g in &sc.workers {
            for (role, k) in &g.slots {
                *role_slots.entry(*role).or_insert(0) += u64::from(g.count) * u64::from(*k);
            }
        }
        let m = Metrics {
            bucket_ms,
            waits: vec![Vec::new(); classes],
            dispatch_sum: vec![0; classes],
            resources_sum: vec![0; classes],
            leads: vec![Vec::new(); classes],
            submitted: vec![0; classes],
            completed: vec![0; classes],
            failed: vec![0; classes],
            role_running: role_slots.keys().map(|r| (*r, Gauge::new(buckets))).collect(),
            role_occupied: role_slots.keys().map(|r| (*r, Gauge::new(buckets))).collect(),
            role_slots,
            rows,
            row_of: BTreeMap::new(),
            busy: vec![Gauge::new(buckets); n],
            held_units: vec![0; n],
            waiters: vec![Gauge::new(buckets); n],
            grants: vec![0; n],
            lease_row: BTreeMap::new(),
            request_rows: BTreeMap::new(),
            r: Report { scenario: sc.name.clone(), seed, sim_ms: sc.duration_ms, bucket_ms, ..Default::default() },
            ledger_seq: 0,
        };
        let config = Config {
            fair_share_points: pol.fair_share_points,
            deadlock_detection: pol.deadlock_detection,
            aging_interval_ms: pol.aging_interval_ms,
            aging_step: pol.aging_step,
            ..Config::default()
        };
        Run {
            sc,
            pol: pol.clone(),
            seed,
            state: State::new(config),
            index: 0,
            now: 0,
            seq: 0,
            events: BinaryHeap::new(),
            workers: Vec::new(),
            by_session: BTreeMap::new(),
            requests: BTreeMap::new(),
            pending: BTreeMap::new(),
            inbox: VecDeque::new(),
            grants_by_request: BTreeMap::new(),
            tasks: BTreeMap::new(),
            jobs: BTreeMap::new(),
            open_jobs: BTreeSet::new(),
            decisions: BTreeSet::new(),
            fresh: BTreeMap::new(),
            streams: sc.arrivals.iter().enumerate().map(|(i, _)| (Rng::keyed(seed, &[1, i as u64]), 0)).collect(),
            arrival_rng: Rng::keyed(seed, &[2]),
            behaviour_rng: Rng::keyed(seed, &[3]),
            gen: 0,
            submitting: None,
            m,
        }
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((t, self.seq, ev)));
    }

    /// Applies one command to the core at the current time and handles its effects.
    fn apply(&mut self, cmd: Command) -> Response {
        self.index += 1;
        self.m.r.commands += 1;
        let (resp, effects) = self.state.apply(self.index, EPOCH_MS + self.now, cmd);
        for e in effects {
            self.on_effect(e);
        }
        let grants = std::mem::take(&mut self.grants_by_request);
        for (request, leases) in grants {
            self.m.request_done(request, self.now);
            if let Some((w, task)) = self.requests.remove(&request) {
                self.pending.remove(&task);
                self.inbox.push_back(Msg::Sup { w, event: SupEvent::AcquireDone { task, result: Ok(leases) } });
            }
        }
        resp
    }

    fn setup(&mut self) {
        let sc = self.sc;
        // The project, with every resource under the variant's preemption policy.
        let mut project = sc.project.clone();
        for r in &mut project.resources {
            r.policy = effective_policy(&self.pol, &r.policy).to_string();
        }
        let resp = self.apply(Command::ApplyProject(Box::new(project)));
        assert!(matches!(resp, Response::ProjectApplied { .. }), "the scenario's project was refused: {resp:?}");
        for b in &sc.budgets {
            self.apply(Command::SetBudget {
                scope: b.scope,
                name: b.name.clone(),
                limit_micros: b.limit_micros,
                period: b.period,
            });
        }
        // The fleet.
        let locals: Vec<ProviderInfo> = sc
            .project
            .providers
            .iter()
            .filter(|p| p.local)
            .map(|p| ProviderInfo { name: p.name.clone(), kind: p.kind.clone(), local: true })
            .collect();
        let remotes: Vec<ProviderInfo> = sc
            .project
            .providers
            .iter()
            .filter(|p| !p.local)
            .map(|p| ProviderInfo { name: p.name.clone(), kind: p.kind.clone(), local: false })
            .collect();
        for g in &sc.workers {
            for i in 0..g.count {
                let node = format!("{}-{i}", g.name);
                let Response::SessionOpened { session, .. } = self.apply(Command::OpenSession {
                    label: node.clone(),
                    ttl_ms: SESSION_TTL_MS_MAX,
                    principal: String::new(),
                }) else {
                    panic!("opening a worker session was refused");
                };
                let mut providers = remotes.clone();
                if g.local_model {
                    providers.extend(locals.iter().cloned());
                }
                let gpus = (0..g.gpus)
                    .map(|k| qm_coordinator::state::GpuInfo { index: k, model: "sim".into(), memory_bytes: 0 })
                    .collect();
                let w = self.workers.len();
                let policy =
                    SupPolicy { reclaim: self.pol.reclaim, park_retry_ms: PARK_RETRY_MS, ..SupPolicy::default() };
                let sup = Supervisor::new(&g.slots, policy);
                let slots = (0..sup.slots().len())
                    .map(|_| Slot { agent: Agent::new(), exec: None, leases: Vec::new() })
                    .collect();
                self.workers.push(SimWorker { session, node: node.clone(), slots, sup });
                self.by_session.insert(session, w);
                self.apply(Command::RegisterWorker(WorkerSpec {
                    session,
                    node_id: node,
                    slots: g.slots.clone(),
                    labels: BTreeMap::new(),
                    running: Vec::new(),
                    gpus,
                    providers,
                    container: false,
                    specs: BTreeMap::new(),
                    repos: Default::default(),
                    clis: Default::default(),
                }));
                self.drain();
            }
        }
        self.m.r.workers = self.workers.len() as u64;
        self.m.r.agents = sc.agents();
        // The workload.
        for (i, a) in sc.arrivals.iter().enumerate() {
            match &a.pattern {
                Pattern::Correlated { at_ms, .. } => {
                    for t in at_ms.clone() {
                        if t >= a.from_ms && t < a.until_ms && t < sc.duration_ms {
                            self.at(t, Ev::Arrive { stream: i });
                        }
                    }
                }
                Pattern::Steady { per_hour } | Pattern::Bursty { per_hour, .. } => {
                    let gap = self.streams[i].0.exp(3_600_000.0 / per_hour) as u64;
                    let t = a.from_ms + gap;
                    if t < a.until_ms.min(sc.duration_ms) {
                        self.at(t, Ev::Arrive { stream: i });
                    }
                }
            }
        }
        self.at(sc.tick_ms, Ev::Tick);
        self.at(KEEPALIVE_MS, Ev::KeepAlive);
        self.at(POLL_MS, Ev::Poll);
    }

    fn main_loop(&mut self) {
        while let Some(Reverse((t, _, ev))) = self.events.pop() {
            if t > self.sc.duration_ms || self.m.r.events >= EVENTS_MAX {
                break;
            }
            self.now = t;
            self.m.r.events += 1;
            self.on_event(ev);
            self.drain();
        }
        self.now = self.sc.duration_ms;
    }

    fn on_event(&mut self, ev: Ev) {
        match ev {
            Ev::Arrive { stream } => self.arrive(stream),
            Ev::Tick => {
                self.apply(Command::Tick);
                self.at(self.now + self.sc.tick_ms, Ev::Tick);
            }
            Ev::KeepAlive => {
                for w in 0..self.workers.len() {
                    let session = self.workers[w].session;
                    self.apply(Command::KeepAlive { session });
                }
                self.at(self.now + KEEPALIVE_MS, Ev::KeepAlive);
            }
            Ev::Poll => {
                self.poll();
                self.at(self.now + POLL_MS, Ev::Poll);
            }
            Ev::ExecDone { w, s, gen } => self.exec_done(w, s, gen),
            Ev::Stopped { w, s, gen } => {
                let slot = &self.workers[w].slots[s];
                let Some(x) = slot.exec.as_ref().filter(|x| x.gen == gen) else { return };
                let done = x.done_before + self.now.saturating_sub(x.started);
                let data = format!("done={done};total={}", x.total).into_bytes();
                let usage = self.usage(self.now.saturating_sub(x.started));
                let role = self.workers[w].sup.slots()[s].role;
                self.m.running(role, self.now, -1.0);
                self.workers[w].slots[s].exec = None;
                self.inbox.push_back(Msg::Agent { w, s, event: Event::Exec(ExecEvent::Checkpoint(data)) });
                let result =
                    ExecResult { outcome: ExecOutcome::Stopped, output: Vec::new(), error: String::new(), usage };
                self.inbox.push_back(Msg::Agent { w, s, event: Event::ExecDone(result) });
            }
            Ev::Blocked { w, s, task } => {
                self.inbox.push_back(Msg::Agent { w, s, event: Event::BlockedTimeout(task) });
            }
            Ev::ParkRetry { w, task } => self.sup_event(w, SupEvent::RetryDue(task)),
            Ev::Extend { w, s, gen } => {
                let slot = &self.workers[w].slots[s];
                if slot.exec.as_ref().is_some_and(|x| x.gen == gen) {
                    let session = self.workers[w].session;
                    for id in self.workers[w].slots[s].leases.clone() {
                        self.apply(Command::Extend {
                            session,
                            reservation: qm_coordinator::state::ReservationId(id),
                            lease_ms: LEASE_MS_MAX,
                        });
                    }
                    self.at(self.now + EXTEND_EVERY_MS, Ev::Extend { w, s, gen });
                }
            }
            Ev::Decide { job, pass, runs } => {
                let Some(j) = self.state.jobs().get(JobId(job)) else { return };
                let p = &j.passes[pass];
                let wanted = p.runs == runs
                    && (p.status == PassStatus::AwaitingHuman || p.status == PassStatus::Queued && p.approval_wanted);
                if !wanted {
                    return;
                }
                let gate = p.status == PassStatus::AwaitingHuman;
                let name = p.name.clone();
                let approve = !gate || self.behaviour_rng.chance(self.sc.behaviour.human_approve);
                let resp = self.apply(Command::DecideGate {
                    job: JobId(job),
                    pass: name,
                    approve,
                    note: if approve { "approved".into() } else { "rejected".into() },
                    by: "sim-human".into(),
                });
                if matches!(resp, Response::GateDecided { .. }) {
                    if gate {
                        self.m.r.human_decisions += 1;
                    } else {
                        self.m.r.spend_approvals += 1;
                    }
                }
            }
        }
    }

    /// Work items arrive on stream `i`; the next arrival is scheduled.
    fn arrive(&mut self, i: usize) {
        let sc = self.sc;
        let a = &sc.arrivals[i];
        let (count, next) = match &a.pattern {
            Pattern::Steady { per_hour } => (1, Some(3_600_000.0 / per_hour)),
            Pattern::Bursty { per_hour, burst } => (*burst, Some(3_600_000.0 / per_hour)),
            Pattern::Correlated { count, .. } => (*count, None),
        };
        let shared_pick = matches!(a.pattern, Pattern::Correlated { .. }).then(|| self.pick(i));
        for _ in 0..count {
            if self.m.r.items_submitted >= super::scenario::ARRIVALS_MAX {
                break;
            }
            let pick = shared_pick.clone().unwrap_or_else(|| self.pick(i));
            self.submit(i, &pick);
        }
        if let Some(mean) = next {
            let gap = self.streams[i].0.exp(mean).max(1.0) as u64;
            let t = self.now + gap;
            if t < a.until_ms.min(sc.duration_ms) {
                self.at(t, Ev::Arrive { stream: i });
            }
        }
    }

    fn pick(&mut self, i: usize) -> BTreeMap<String, String> {
        let a = &self.sc.arrivals[i];
        a.pick
            .iter()
            .map(|(k, vals)| (k.clone(), vals[self.arrival_rng.below(vals.len() as u64) as usize].clone()))
            .collect()
    }

    fn submit(&mut self, i: usize, pick: &BTreeMap<String, String>) {
        let sc = self.sc;
        let a = &sc.arrivals[i];
        let sw = &sc.workflows[&a.workflow];
        let n = self.streams[i].1;
        self.streams[i].1 += 1;
        let mut workflow = sw.workflow.clone();
        for (p, needs) in workflow.passes.iter_mut().zip(&sw.needs) {
            let mut out: Vec<Need> = Vec::new();
            for (t, mode, units) in needs {
                let mut path = fill(t, pick);
                if self.pol.coarse {
                    path = coarsen(&path, self.pol.coarse_depth);
                }
                let path = ResourcePath::parse(&path).expect("checked when the scenario was read");
                match out.iter_mut().find(|x| x.path == path) {
                    Some(x) => {
                        if *mode == Mode::Exclusive {
                            x.mode = Mode::Exclusive;
                        }
                        x.units = x.units.max(*units);
                    }
                    None => out.push(Need { path, mode: *mode, units: *units }),
                }
            }
            p.needs = out;
        }
        let mut inputs: BTreeMap<String, String> = pick.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let title = format!("{} #{n}", a.name);
        for p in &workflow.passes {
            for input in &p.inputs {
                if !workflow.passes.iter().any(|q| q.outputs.contains(input)) {
                    inputs.entry(input.clone()).or_insert_with(|| title.clone());
                }
            }
        }
        let spec = JobSpec {
            title,
            class: a.class.clone(),
            priority: a.priority,
            team: a.team.clone(),
            project: sc.project.name.clone(),
            workflow,
            budget_micros: a.budget_micros,
            inputs,
            commit: "sim".into(),
            run: br#"{"w":"{{workflow}}","p":"{{pass}}","j":"{{job}}"}"#.to_vec(),
            review_run: br#"{"review":true,"w":"{{workflow}}","p":"{{pass}}","j":"{{job}}"}"#.to_vec(),
            principal: String::new(),
            complexity: Default::default(),
        };
        let class = class_index(&a.class);
        self.m.submitted[class] += 1;
        self.m.r.items_submitted += 1;
        self.submitting = Some(class);
        let resp = self.apply(Command::SubmitJob(Box::new(spec)));
        self.submitting = None;
        match resp {
            Response::JobSubmitted { job } => {
                self.jobs.insert(job.0, class);
                self.open_jobs.insert(job.0);
                self.job_maybe_ended(job.0);
            }
            _ => self.m.failed[class] += 1,
        }
    }

    fn on_effect(&mut self, e: Effect) {
        let now = self.now;
        match e {
            Effect::TaskQueued { task, .. } => {
                let job = self
                    .state
                    .tasks()
                    .get(task)
                    .and_then(|t| t.spec.work_item.strip_prefix('j').and_then(|j| j.parse::<u64>().ok()))
                    .unwrap_or(0);
                let class = self.jobs.get(&job).copied().or(self.submitting).unwrap_or(0);
                let info = self.tasks.entry(task.0).or_default();
                *info = TaskInfo { class, job, queued_at: now, assigned_at: None };
            }
            Effect::TaskAssigned { task, attempt, session } => {
                if let Some(info) = self.tasks.get_mut(&task.0) {
                    info.assigned_at = Some(now);
                }
                let Some(&w) = self.by_session.get(&session) else { return };
                let Some(t) = self.state.tasks().get(task) else { return };
                let a = Assignment {
                    task: task.0,
                    role: t.spec.role,
                    attempt,
                    resources: t
                        .attempt_items()
                        .iter()
                        .map(|i| (i.path.as_str().to_string(), i.mode == Mode::Exclusive, i.units.max(1)))
                        .collect(),
                    payload: t.spec.payload.clone(),
                    priority: t.spec.priority,
                    resume: t.checkpoint.as_ref().map(|c| c.data.clone()),
                    timeout_ms: t.spec.timeout_ms,
                    incremental: t.spec.incremental,
                    provider: t.route.as_ref().map(|r| r.provider.clone()).unwrap_or_default(),
                    model: t.route.as_ref().map(|r| r.model.clone()).unwrap_or_default(),
                };
                self.sup_event(w, SupEvent::Assigned(a));
            }
            Effect::Granted { grant, request } => {
                let row = self.m.row(grant.resource.as_str());
                let units = u64::from(grant.units.max(1));
                self.m.lease_row.insert(grant.id.0, (row, units));
                self.m.hold(row, units as i64, now);
                self.m.grants[row] += 1;
                if let Some(r) = request {
                    self.grants_by_request
                        .entry(r)
                        .or_default()
                        .push(Lease { id: grant.id.0, fencing_token: grant.fencing_token });
                }
            }
            Effect::Released { reservation, .. } => self.m.unhold(reservation.0, now),
            Effect::Expired { reservation, .. } => {
                self.m.r.expiries += 1;
                self.m.unhold(reservation.0, now);
            }
            Effect::Revoked { reservation, .. } => {
                self.m.r.revocations += 1;
                self.m.unhold(reservation.0, now);
            }
            Effect::PreemptRequested { owner, session, .. } => {
                self.m.r.preemptions += 1;
                let (Some(task), Some(&w)) = (owner_task(&owner), self.by_session.get(&session)) else { return };
                self.sup_event(w, SupEvent::Preempt(task));
            }
            Effect::DeadlockVictim { request, .. } => {
                self.m.r.deadlocks += 1;
                self.m.request_done(request, now);
                if let Some((w, task)) = self.requests.remove(&request) {
                    self.pending.remove(&task);
                    let result = Err(AcquireError::Deadlock("cycle".into()));
                    self.inbox.push_back(Msg::Sup { w, event: SupEvent::AcquireDone { task, result } });
                }
            }
            Effect::TimedOut { request, .. } | Effect::Cancelled { request, .. } => {
                self.m.request_done(request, now);
                if let Some((w, task)) = self.requests.remove(&request) {
                    self.pending.remove(&task);
                    let result = Err(AcquireError::Failed("the wait ended".into()));
                    self.inbox.push_back(Msg::Sup { w, event: SupEvent::AcquireDone { task, result } });
                }
            }
            Effect::TaskCancelRequested { task, session, .. } => {
                let Some(&w) = self.by_session.get(&session) else { return };
                self.sup_event(w, SupEvent::Cancel(task.0));
            }
            Effect::TaskEnded { task, .. } => {
                if let Some(info) = self.tasks.remove(&task.0) {
                    self.job_maybe_ended(info.job);
                }
            }
            Effect::BudgetLevel { scope, name, level, spent_micros, limit_micros }
                if self.m.r.budget_events.len() < 1_000 =>
            {
                self.m.r.budget_events.push(BudgetEvent {
                    at_ms: now,
                    scope: scope.as_str().to_string(),
                    name,
                    level: level.as_str().to_string(),
                    spent_micros,
                    limit_micros,
                });
            }
            _ => {}
        }
    }

    fn job_maybe_ended(&mut self, job: u64) {
        if !self.open_jobs.contains(&job) {
            return;
        }
        let Some(j) = self.state.jobs().get(JobId(job)) else { return };
        if j.status == JobStatus::Running {
            return;
        }
        self.open_jobs.remove(&job);
        let class = self.jobs.get(&job).copied().unwrap_or(0);
        match j.status {
            JobStatus::Succeeded => {
                self.m.completed[class] += 1;
                self.m.leads[class].push(self.now.saturating_sub(j.submitted_at.saturating_sub(EPOCH_MS)));
            }
            _ => self.m.failed[class] += 1,
        }
    }

    /// Humans decide what waits for them; the ledger is read for cost by team and class.
    fn poll(&mut self) {
        let mut wanted = Vec::new();
        for job in &self.open_jobs {
            let Some(j) = self.state.jobs().get(JobId(*job)) else { continue };
            for (i, p) in j.passes.iter().enumerate() {
                let waits =
                    p.status == PassStatus::AwaitingHuman || p.status == PassStatus::Queued && p.approval_wanted;
                if waits && !self.decisions.contains(&(*job, i, p.runs)) {
                    wanted.push((*job, i, p.runs));
                }
            }
        }
        for (job, pass, runs) in wanted {
            self.decisions.insert((job, pass, runs));
            let delay = self.sc.behaviour.human.sample(&mut self.behaviour_rng);
            self.at(self.now + delay, Ev::Decide { job, pass, runs });
        }
        self.read_ledger();
    }

    fn read_ledger(&mut self) {
        let mut last = self.m.ledger_seq;
        for e in self.state.jobs().ledger_after(last) {
            last = e.seq;
            if e.money_micros == 0 {
                continue;
            }
            *self.m.r.cost_by_team.entry(e.team.clone()).or_default() += e.money_micros;
            let class = e.job.and_then(|j| self.jobs.get(&j.0)).copied().unwrap_or(0);
            let name = qm_shared::workflow_file::CLASSES[class].0.to_string();
            *self.m.r.cost_by_class.entry(name).or_default() += e.money_micros;
        }
        self.m.ledger_seq = last;
    }
}

fn effective_policy<'p>(pol: &Policies, declared: &'p str) -> &'p str {
    match pol.preemption {
        Some(p) => p.as_str(),
        None => declared,
    }
}

fn class_index(class: &str) -> usize {
    qm_shared::workflow_file::CLASSES.iter().position(|(c, _)| *c == class).unwrap_or(0)
}

/// `done=<ms>;total=<ms>` → `(done, total)`.
fn parse_checkpoint(data: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(data).ok()?;
    let (d, t) = s.split_once(';')?;
    Some((d.strip_prefix("done=")?.parse().ok()?, t.strip_prefix("total=")?.parse().ok()?))
}
