//! The discrete-event loop of a study: the real replicated core, modelled agents around it.
//!
//! ```text
//!   events (arrivals, ticks, agents finishing, humans deciding) ordered by (time, seq)
//!        │
//!        ▼
//!   modelled workers: the worker's own pure agent logic (`qm_worker::agent::Agent`) per slot,
//!   and a supervisor that mirrors the worker runtime (park a blocked task, resume it when
//!   granted, backlog assignments until a slot is idle)
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
use qm_worker::agent::{Action, Agent, Assignment, Event, Lease, Outcome as AgentOutcome, Report as AgentReport};
use qm_worker::executor::{ExecEvent, ExecOutcome, ExecRequest, ExecResult, Usage as ExecUsage};

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

/// What the supervisor of a worker is told.
#[derive(Debug)]
enum Msg {
    Agent { w: usize, s: usize, event: Event },
    AcquireDone { w: usize, task: u64, result: Result<Vec<Lease>, AcqErr> },
    Idle { w: usize, s: usize },
}

#[derive(Debug)]
enum AcqErr {
    Deadlock(String),
    Failed(String),
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

#[derive(Debug)]
struct Slot {
    role: Role,
    agent: Agent,
    idle: bool,
    exec: Option<Exec>,
    leases: Vec<u64>,
    /// Priority of the task it works on.
    priority: u32,
    /// Asked to hand its slot back to a granted parked task.
    yielding: bool,
}

#[derive(Debug)]
struct SimWorker {
    session: SessionId,
    node: String,
    slots: Vec<Slot>,
    backlog: VecDeque<(Role, Assignment)>,
    parked: BTreeMap<u64, (Role, Assignment)>,
    ready: Vec<(Role, Assignment, Vec<Lease>)>,
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
                self.inbox.push_back(Msg::AcquireDone { w, task, result: Ok(leases) });
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
                let mut slots = Vec::new();
                for (role, n) in &g.slots {
                    for _ in 0..*n {
                        slots.push(Slot {
                            role: *role,
                            agent: Agent::new(),
                            idle: true,
                            exec: None,
                            leases: Vec::new(),
                            priority: 0,
                            yielding: false,
                        });
                    }
                }
                self.workers.push(SimWorker {
                    session,
                    node: node.clone(),
                    slots,
                    backlog: VecDeque::new(),
                    parked: BTreeMap::new(),
                    ready: Vec::new(),
                });
                self.by_session.insert(session, w);
                self.apply(Command::RegisterWorker(WorkerSpec {
                    session,
                    node_id: node,
                    slots: g.slots.clone(),
                    labels: BTreeMap::new(),
                    running: Vec::new(),
                    gpus,
                    providers,
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
                let role = slot.role;
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
            Ev::ParkRetry { w, task } => {
                if let Some((_, a)) = self.workers[w].parked.get(&task) {
                    let (resources, priority) = (a.resources.clone(), a.priority);
                    self.acquire(w, None, task, resources, priority);
                }
            }
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
                let role = t.spec.role;
                self.assign(w, role, a);
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
                if let Some(s) = self.agent_of_task(w, task) {
                    self.inbox.push_back(Msg::Agent { w, s, event: Event::Preempt });
                }
            }
            Effect::DeadlockVictim { request, .. } => {
                self.m.r.deadlocks += 1;
                self.m.request_done(request, now);
                if let Some((w, task)) = self.requests.remove(&request) {
                    self.pending.remove(&task);
                    let why = "cycle".to_string();
                    self.inbox.push_back(Msg::AcquireDone { w, task, result: Err(AcqErr::Deadlock(why)) });
                }
            }
            Effect::TimedOut { request, .. } | Effect::Cancelled { request, .. } => {
                self.m.request_done(request, now);
                if let Some((w, task)) = self.requests.remove(&request) {
                    self.pending.remove(&task);
                    let err = AcqErr::Failed("the wait ended".into());
                    self.inbox.push_back(Msg::AcquireDone { w, task, result: Err(err) });
                }
            }
            Effect::TaskCancelRequested { task, session, .. } => {
                let Some(&w) = self.by_session.get(&session) else { return };
                if let Some((_, a)) = self.workers[w].parked.remove(&task.0) {
                    if let Some(r) = self.pending.remove(&a.task) {
                        self.requests.remove(&r);
                        self.apply(Command::Cancel { session, request: r });
                    }
                    let report = AgentReport::Result {
                        outcome: AgentOutcome::Cancelled,
                        output: Vec::new(),
                        error: String::new(),
                        usage: ExecUsage::default(),
                        wall_ms: 0,
                    };
                    self.report(w, None, a.task, a.attempt, report);
                } else if let Some(s) = self.agent_of_task(w, task.0) {
                    self.inbox.push_back(Msg::Agent { w, s, event: Event::Cancel });
                }
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

    // ------------------------------------------------------------------ the modelled worker

    fn agent_of_task(&self, w: usize, task: u64) -> Option<usize> {
        self.workers[w].slots.iter().position(|s| s.agent.current().is_some_and(|(t, _)| t == task))
    }

    /// An idle slot of `role` on worker `w`, now taken for work of `priority`.
    fn take_idle(&mut self, w: usize, role: Role, priority: u32) -> Option<usize> {
        let slots = &mut self.workers[w].slots;
        let s = slots.iter().position(|s| s.role == role && s.idle)?;
        slots[s].idle = false;
        slots[s].priority = priority;
        self.m.occupied(role, self.now, 1.0);
        Some(s)
    }

    fn assign(&mut self, w: usize, role: Role, a: Assignment) {
        match self.take_idle(w, role, a.priority) {
            Some(s) => self.inbox.push_back(Msg::Agent { w, s, event: Event::Assigned(a) }),
            None => self.workers[w].backlog.push_back((role, a)),
        }
    }

    fn drain(&mut self) {
        let mut guard = 0u64;
        while let Some(msg) = self.inbox.pop_front() {
            guard += 1;
            assert!(guard < 10_000_000, "a message loop did not settle");
            match msg {
                Msg::Agent { w, s, event } => self.agent_event(w, s, event),
                Msg::AcquireDone { w, task, result } => self.acquire_done(w, task, result),
                Msg::Idle { w, s } => self.slot_idle(w, s),
            }
        }
    }

    fn agent_event(&mut self, w: usize, s: usize, event: Event) {
        let granted = match &event {
            Event::Granted(leases) | Event::Resume(_, leases) => Some(leases.iter().map(|l| l.id).collect::<Vec<_>>()),
            _ => None,
        };
        if let Some(ids) = granted {
            self.workers[w].slots[s].leases.extend(ids);
        }
        let actions = self.workers[w].slots[s].agent.on_event(event, EPOCH_MS + self.now);
        for action in actions {
            self.perform(w, s, action);
        }
        let slot = &mut self.workers[w].slots[s];
        if slot.agent.is_idle() && !slot.idle {
            slot.idle = true;
            slot.yielding = false;
            slot.leases.clear();
            let role = slot.role;
            self.m.occupied(role, self.now, -1.0);
            self.inbox.push_back(Msg::Idle { w, s });
        }
    }

    fn perform(&mut self, w: usize, s: usize, action: Action) {
        match action {
            Action::Acquire { task, resources, priority } => self.acquire(w, Some(s), task, resources, priority),
            Action::CancelAcquire { task } => {
                if let Some(r) = self.pending.remove(&task) {
                    self.requests.remove(&r);
                    let session = self.workers[w].session;
                    self.apply(Command::Cancel { session, request: r });
                }
            }
            Action::Start(req) => self.start(w, s, req),
            Action::Control(_) => {
                // Stop: the modelled executor checkpoints, then ends.
                let ckpt = self.sc.behaviour.checkpoint_ms;
                if let Some(x) = self.workers[w].slots[s].exec.as_mut() {
                    if !x.stopping {
                        x.stopping = true;
                        let gen = x.gen;
                        self.at(self.now + ckpt, Ev::Stopped { w, s, gen });
                    }
                }
            }
            Action::Release(ids) => {
                let session = self.workers[w].session;
                for id in ids {
                    self.apply(Command::Release { session, reservation: qm_coordinator::state::ReservationId(id) });
                }
            }
            Action::Report { task, attempt, report } => self.report(w, Some(s), task, attempt, report),
            Action::Park { a, retry } => {
                self.m.r.replans += 1;
                let task = a.task;
                let role = self.workers[w].slots[s].role;
                self.workers[w].slots[s].leases.clear();
                self.workers[w].parked.insert(task, (role, a));
                if retry {
                    self.at(self.now + PARK_RETRY_MS, Ev::ParkRetry { w, task });
                }
            }
        }
    }

    fn acquire(&mut self, w: usize, s: Option<usize>, task: u64, resources: Vec<(String, bool, u32)>, priority: u32) {
        let session = self.workers[w].session;
        let items: Vec<Item> = resources
            .iter()
            .map(|(p, x, u)| Item {
                path: ResourcePath::parse(p).expect("the core's own paths parse"),
                mode: if *x { Mode::Exclusive } else { Mode::Shared },
                units: *u,
            })
            .collect();
        // The rows a queued request is charged to in the heat map: the items actually held
        // against it (all of them when it only queues behind earlier waiters).
        let blocked: Vec<bool> =
            items.iter().map(|i| self.state.held_against(std::slice::from_ref(i), priority).is_some()).collect();
        let any = blocked.iter().any(|b| *b);
        let rows: Vec<usize> =
            items.iter().zip(&blocked).filter(|(_, b)| **b || !any).map(|(i, _)| self.m.row(i.path.as_str())).collect();
        let cmd = Command::Acquire(Acquire {
            session,
            owner: task_owner(task),
            items,
            wait: Wait::Wait { timeout_ms: None },
            priority,
            lease_ms: LEASE_MS_MAX,
        });
        match self.apply(cmd) {
            Response::Granted { grants } => {
                let leases = grants.iter().map(|g| Lease { id: g.id.0, fencing_token: g.fencing_token }).collect();
                self.inbox.push_back(Msg::AcquireDone { w, task, result: Ok(leases) });
            }
            Response::Queued { request, .. } => {
                self.pending.insert(task, request);
                self.requests.insert(request, (w, task));
                self.m.request_waits(request, rows, self.now);
                if let (Some(s), true) = (s, self.pol.replan) {
                    self.at(self.now + self.pol.replan_after_ms, Ev::Blocked { w, s, task });
                }
            }
            Response::Refused(Refusal::Deadlock { .. }) => {
                self.m.r.deadlocks += 1;
                let err = AcqErr::Deadlock("refused as closing a cycle".into());
                self.inbox.push_back(Msg::AcquireDone { w, task, result: Err(err) });
            }
            Response::Refused(r) => {
                if matches!(r, Refusal::QueueFull { .. }) {
                    self.m.r.queue_full += 1;
                }
                let err = AcqErr::Failed(format!("refused: {r:?}"));
                self.inbox.push_back(Msg::AcquireDone { w, task, result: Err(err) });
            }
            other => panic!("unexpected answer to an acquire: {other:?}"),
        }
    }

    fn acquire_done(&mut self, w: usize, task: u64, result: Result<Vec<Lease>, AcqErr>) {
        match self.workers[w].parked.remove(&task) {
            Some((role, a)) => match result {
                Ok(leases) => {
                    self.workers[w].ready.push((role, a, leases));
                    self.resume_ready(w);
                }
                Err(e) => {
                    let error = match e {
                        AcqErr::Deadlock(why) => format!("acquiring the task's resources: deadlock: {why}"),
                        AcqErr::Failed(why) => format!("acquiring the task's resources: {why}"),
                    };
                    let report = AgentReport::Result {
                        outcome: AgentOutcome::Failed,
                        output: Vec::new(),
                        error,
                        usage: ExecUsage::default(),
                        wall_ms: 0,
                    };
                    self.report(w, None, a.task, a.attempt, report);
                }
            },
            None => match self.agent_of_task(w, task) {
                Some(s) => {
                    let event = match result {
                        Ok(leases) => Event::Granted(leases),
                        Err(AcqErr::Deadlock(why)) => Event::DeadlockVictim(why),
                        Err(AcqErr::Failed(e)) => Event::AcquireFailed(e),
                    };
                    self.agent_event(w, s, event);
                }
                None => {
                    if let Ok(leases) = result {
                        let session = self.workers[w].session;
                        for l in leases {
                            self.apply(Command::Release {
                                session,
                                reservation: qm_coordinator::state::ReservationId(l.id),
                            });
                        }
                    }
                }
            },
        }
    }

    fn slot_idle(&mut self, w: usize, _s: usize) {
        self.resume_ready(w);
        let backlog = std::mem::take(&mut self.workers[w].backlog);
        for (role, a) in backlog {
            self.assign(w, role, a);
        }
    }

    fn resume_ready(&mut self, w: usize) {
        let ready = std::mem::take(&mut self.workers[w].ready);
        for (role, a, leases) in ready {
            match self.take_idle(w, role, a.priority) {
                Some(s) => self.inbox.push_back(Msg::Agent { w, s, event: Event::Resume(a, leases) }),
                None => {
                    let worker = &mut self.workers[w];
                    // The slot it lent is busy with other work: take it back (the other work
                    // checkpoints and is requeued), rather than hold the leases idle.
                    if self.pol.reclaim {
                        let victim = worker
                            .slots
                            .iter()
                            .enumerate()
                            .filter(|(_, x)| x.role == role && !x.idle && !x.yielding && x.exec.is_some())
                            .filter(|(_, x)| x.priority <= a.priority)
                            .min_by_key(|(i, x)| (x.priority, *i))
                            .map(|(i, _)| i);
                        if let Some(v) = victim {
                            worker.slots[v].yielding = true;
                            self.m.r.reclaims += 1;
                            self.inbox.push_back(Msg::Agent { w, s: v, event: Event::Preempt });
                        }
                    }
                    worker.ready.push((role, a, leases));
                }
            }
        }
    }

    fn report(&mut self, w: usize, s: Option<usize>, task: u64, attempt: u32, report: AgentReport) {
        let session = self.workers[w].session;
        let agent = match s {
            Some(s) => format!("{}/{}-{s}", self.workers[w].node, self.workers[w].slots[s].role.as_str()),
            None => String::new(),
        };
        let report = match report {
            AgentReport::Progress { percent, stage, usage: u } => TaskReport::Progress { percent, stage, usage: u },
            AgentReport::Blocked { message } => TaskReport::Blocked { message },
            AgentReport::Checkpoint { seq, data, for_preemption } => {
                TaskReport::Checkpoint { seq, data, for_preemption }
            }
            AgentReport::Result { outcome, output, error, usage: u, wall_ms } => {
                use qm_coordinator::state::Outcome as O;
                match outcome {
                    O::Failed => self.m.r.attempts_failed += 1,
                    O::TimedOut => self.m.r.attempts_timed_out += 1,
                    O::Preempted => self.m.r.attempts_preempted += 1,
                    _ => {}
                }
                if outcome == O::Succeeded && output.starts_with(b"FAIL") {
                    self.m.r.gate_failures += 1;
                }
                TaskReport::Finished { outcome, output, error, usage: u, wall_ms, agent }
            }
        };
        self.apply(Command::ReportTask { session, task: TaskId(task), attempt, report });
    }

    // ------------------------------------------------------------------ the modelled executor

    fn start(&mut self, w: usize, s: usize, req: ExecRequest) {
        let now = self.now;
        let payload: serde_json::Value = serde_json::from_slice(&req.payload).unwrap_or_default();
        let wf = payload["w"].as_str().unwrap_or("").to_string();
        let pass = payload["p"].as_str().unwrap_or("").to_string();
        let job =
            payload["j"].as_str().and_then(|j| j.strip_prefix('j')).and_then(|j| j.parse::<u64>().ok()).unwrap_or(0);
        let review = payload["review"].as_bool().unwrap_or(false);
        let role = self.workers[w].slots[s].role;

        // Waits: queued → assigned → resources granted (now).
        if let Some(info) = self.tasks.get(&req.task) {
            let wait = now.saturating_sub(info.queued_at);
            let assigned = info.assigned_at.unwrap_or(now).max(info.queued_at);
            let c = info.class;
            self.m.waits[c].push(wait);
            self.m.dispatch_sum[c] += assigned - info.queued_at;
            self.m.resources_sum[c] += now.saturating_sub(assigned);
            if wait > self.m.r.longest_wait.ms {
                self.m.r.longest_wait = LongestWait {
                    ms: wait,
                    class: qm_shared::workflow_file::CLASSES[c].0.to_string(),
                    pass: format!("{wf}/{pass}{}", if review { "#gate" } else { "" }),
                    job: format!("j{job}"),
                    unfinished: false,
                };
            }
        }
        self.m.r.attempts_started += 1;
        if !self.workers[w].parked.is_empty() {
            self.m.r.replan_starts += 1;
        }

        // The attempt's plan: keyed draws, so every variant sees the same work.
        let pass_key = hash_str(&format!("{wf}/{pass}/{review}"));
        let resumed = req.resume.as_deref().and_then(parse_checkpoint);
        let (done_before, total) = match resumed {
            Some(x) => x,
            None => {
                let k = self.fresh.entry((job, pass_key)).or_insert(0);
                *k += 1;
                let mut rng = Rng::keyed(self.seed, &[4, job, pass_key, *k]);
                let dist = if review { self.sc.durations.review } else { self.sc.durations.of(&wf, &pass, role) };
                (0, dist.sample(&mut rng))
            }
        };
        let fresh = self.fresh.get(&(job, pass_key)).copied().unwrap_or(0);
        let mut rng = Rng::keyed(self.seed, &[5, job, pass_key, fresh, u64::from(req.attempt)]);
        let b = &self.sc.behaviour;
        let x = rng.unit();
        let plan = if review {
            Plan::Succeed
        } else if x < b.fail {
            Plan::Fail
        } else if x < b.fail + b.hang {
            Plan::Hang
        } else {
            Plan::Succeed
        };
        let remaining = total.saturating_sub(done_before).max(1);
        let timeout = if req.timeout_ms > 0 { req.timeout_ms } else { b.hang_timeout_ms };
        let ends = match plan {
            Plan::Succeed => now + remaining,
            Plan::Fail => now + 1 + (remaining as f64 * rng.unit()) as u64,
            Plan::Hang => now + timeout,
        };
        let ends = if req.timeout_ms > 0 { ends.min(now + req.timeout_ms) } else { ends };
        let output = if review {
            if rng.chance(b.gate_fail) {
                b"FAIL: the modelled review found a gap".to_vec()
            } else {
                b"PASS".to_vec()
            }
        } else {
            format!("{wf}/{pass} of j{job}, run {fresh}").into_bytes()
        };
        self.gen += 1;
        let gen = self.gen;
        self.workers[w].slots[s].exec = Some(Exec {
            task: req.task,
            gen,
            started: now,
            done_before,
            total,
            review,
            output,
            ends,
            plan,
            stopping: false,
        });
        self.m.running(role, now, 1.0);
        self.at(ends, Ev::ExecDone { w, s, gen });
        if ends > now + EXTEND_EVERY_MS {
            self.at(now + EXTEND_EVERY_MS, Ev::Extend { w, s, gen });
        }
    }

    fn exec_done(&mut self, w: usize, s: usize, gen: u64) {
        let now = self.now;
        let slot = &mut self.workers[w].slots[s];
        if !slot.exec.as_ref().is_some_and(|x| x.gen == gen && !x.stopping) {
            return;
        }
        let x = slot.exec.take().expect("present");
        let role = slot.role;
        self.m.running(role, now, -1.0);
        let worked = now.saturating_sub(x.started);
        let finished = x.done_before + worked >= x.total;
        let outcome = match x.plan {
            Plan::Succeed if finished => ExecOutcome::Succeeded,
            Plan::Succeed | Plan::Hang => ExecOutcome::TimedOut,
            Plan::Fail => ExecOutcome::Failed,
        };
        let _ = (x.task, x.ends);
        if outcome == ExecOutcome::Succeeded && !x.review {
            self.m.r.passes_succeeded += 1;
        }
        let error = match outcome {
            ExecOutcome::Failed => "the modelled attempt failed".to_string(),
            ExecOutcome::TimedOut => "the attempt ran past its timeout".to_string(),
            _ => String::new(),
        };
        let output = if outcome == ExecOutcome::Succeeded { x.output } else { Vec::new() };
        let result = ExecResult { outcome, output, error, usage: self.usage(worked) };
        self.agent_event(w, s, Event::ExecDone(result));
    }

    fn usage(&self, worked_ms: u64) -> ExecUsage {
        let min = worked_ms as f64 / 60_000.0;
        ExecUsage {
            input_tokens: (self.sc.behaviour.tokens_in_per_min as f64 * min) as u64,
            output_tokens: (self.sc.behaviour.tokens_out_per_min as f64 * min) as u64,
            cached_tokens: 0,
            estimated: false,
        }
    }

    // ------------------------------------------------------------------ the report

    fn finish(mut self) -> Report {
        let end = self.sc.duration_ms;
        self.read_ledger();
        let bucket_ms = self.m.bucket_ms;
        // Passes still waiting at the end count for starvation (in task order: ties go to the first).
        for (task, info) in &self.tasks {
            let wait = end.saturating_sub(info.queued_at);
            if info.assigned_at.is_none() && wait > self.m.r.longest_wait.ms {
                let pass = self.state.tasks().get(TaskId(*task)).map_or(String::new(), |t| {
                    let v: serde_json::Value = serde_json::from_slice(&t.spec.payload).unwrap_or_default();
                    let review = if v["review"].as_bool().unwrap_or(false) { "#gate" } else { "" };
                    format!("{}/{}{review}", v["w"].as_str().unwrap_or(""), v["p"].as_str().unwrap_or(""))
                });
                self.m.r.longest_wait = LongestWait {
                    ms: wait,
                    class: qm_shared::workflow_file::CLASSES[info.class].0.to_string(),
                    pass,
                    job: format!("j{}", info.job),
                    unfinished: true,
                };
            }
        }
        for g in self.m.role_running.values_mut().chain(self.m.role_occupied.values_mut()) {
            g.advance(end, bucket_ms);
        }
        for g in self.m.busy.iter_mut().chain(self.m.waiters.iter_mut()) {
            g.advance(end, bucket_ms);
        }
        let mut r = std::mem::take(&mut self.m.r);
        let hours = end as f64 / 3.6e6;
        r.items_completed = self.m.completed.iter().sum();
        r.items_failed = self.m.failed.iter().sum();
        r.items_in_flight = self.open_jobs.len() as u64;
        r.items_per_hour = r.items_completed as f64 / hours;
        r.passes_per_hour = r.passes_succeeded as f64 / hours;
        r.cost_micros = self.state.jobs().total_micros();

        // Wait CDF x axis: log-spaced from 1 s to the longest wait.
        let longest = self.m.waits.iter().flat_map(|w| w.iter()).copied().max().unwrap_or(1_000).max(1_000);
        let points = 60;
        let cdf_ms: Vec<u64> = (0..=points)
            .map(|k| (1_000.0 * (longest as f64 / 1_000.0).powf(k as f64 / points as f64)) as u64)
            .collect();
        for (c, (class, prio)) in qm_shared::workflow_file::CLASSES.iter().enumerate() {
            if self.m.submitted[c] == 0 {
                continue;
            }
            let mut w = std::mem::take(&mut self.m.waits[c]);
            w.sort_unstable();
            let mut leads = std::mem::take(&mut self.m.leads[c]);
            leads.sort_unstable();
            let n = w.len().max(1) as u64;
            let cdf = cdf_ms.iter().map(|x| w.partition_point(|v| v <= x) as f64 / w.len().max(1) as f64).collect();
            r.classes.push(WaitStats {
                class: class.to_string(),
                priority: *prio,
                submitted: self.m.submitted[c],
                completed: self.m.completed[c],
                failed: self.m.failed[c],
                starts: w.len() as u64,
                p50_ms: percentile(&w, 0.50),
                p90_ms: percentile(&w, 0.90),
                p99_ms: percentile(&w, 0.99),
                max_ms: w.last().copied().unwrap_or(0),
                mean_dispatch_ms: self.m.dispatch_sum[c] / n,
                mean_resources_ms: self.m.resources_sum[c] / n,
                lead_p50_ms: percentile(&leads, 0.50),
                lead_p90_ms: percentile(&leads, 0.90),
                cdf,
            });
        }
        r.cdf_ms = cdf_ms;
        let total_slots: u64 = self.m.role_slots.values().sum();
        let mut series = vec![0.0; self.sc.buckets as usize];
        for (role, slots) in &self.m.role_slots {
            let run = &self.m.role_running[role];
            let occ = &self.m.role_occupied[role];
            for (b, v) in run.means(bucket_ms).iter().enumerate() {
                series[b] += v / total_slots.max(1) as f64;
            }
            r.roles.push(RoleUse {
                role: role.as_str().to_string(),
                slots: *slots,
                running: run.mean(bucket_ms) / *slots as f64,
                occupied: occ.mean(bucket_ms) / *slots as f64,
            });
        }
        r.agent_series = series;
        for (i, (path, capacity, policy)) in self.m.rows.iter().enumerate() {
            let cap = f64::from(capacity.unwrap_or(1).max(1));
            let busy: Vec<f64> = self.m.busy[i].means(bucket_ms).iter().map(|v| v / cap).collect();
            r.resources.push(ResourceUse {
                path: path.clone(),
                capacity: *capacity,
                policy: policy.clone(),
                busy: self.m.busy[i].mean(bucket_ms) / cap,
                mean_waiters: self.m.waiters[i].mean(bucket_ms),
                peak_waiters: self.m.waiters[i].peak() as u64,
                grants: self.m.grants[i],
                busy_series: busy,
                waiters_series: self.m.waiters[i].means(bucket_ms),
            });
        }
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.state.snapshot());
        r.state_digest = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        r
    }
}

impl Metrics {
    /// The report row of a resource path: the declared resource it lies under.
    fn row(&mut self, path: &str) -> usize {
        if let Some(r) = self.row_of.get(path) {
            return *r;
        }
        let under = |p: &str, root: &str| p == root || p.strip_prefix(root).is_some_and(|rest| rest.starts_with('/'));
        let row = self
            .rows
            .iter()
            .enumerate()
            .filter(|(_, (root, _, _))| under(path, root))
            .max_by_key(|(_, (root, _, _))| root.len())
            .map(|(i, _)| i);
        let row = match row {
            Some(r) => r,
            None => {
                let root = path.split('/').next().unwrap_or(path).to_string();
                match self.rows.iter().position(|(p, _, _)| *p == root) {
                    Some(i) => i,
                    None => {
                        let n = self.busy.first().map_or(48, |g| g.means(1).len());
                        self.rows.push((root, None, "none".into()));
                        self.busy.push(Gauge::new(n));
                        self.waiters.push(Gauge::new(n));
                        self.held_units.push(0);
                        self.grants.push(0);
                        self.rows.len() - 1
                    }
                }
            }
        };
        self.row_of.insert(path.to_string(), row);
        row
    }

    fn hold(&mut self, row: usize, delta: i64, now: u64) {
        let before = self.held_units[row];
        let after = (before as i64 + delta).max(0) as u64;
        self.held_units[row] = after;
        let counted = self.rows[row].1.is_some();
        let (b, a) =
            if counted { (before as f64, after as f64) } else { ((before > 0) as u8 as f64, (after > 0) as u8 as f64) };
        if a != b {
            self.busy[row].add(now, self.bucket_ms, a - b);
        }
    }

    fn unhold(&mut self, lease: u64, now: u64) {
        if let Some((row, units)) = self.lease_row.remove(&lease) {
            self.hold(row, -(units as i64), now);
        }
    }

    fn request_waits(&mut self, request: RequestId, rows: Vec<usize>, now: u64) {
        for r in &rows {
            self.waiters[*r].add(now, self.bucket_ms, 1.0);
        }
        self.request_rows.insert(request, rows);
    }

    fn request_done(&mut self, request: RequestId, now: u64) {
        if let Some(rows) = self.request_rows.remove(&request) {
            for r in rows {
                self.waiters[r].add(now, self.bucket_ms, -1.0);
            }
        }
    }

    fn running(&mut self, role: Role, now: u64, d: f64) {
        if let Some(g) = self.role_running.get_mut(&role) {
            g.add(now, self.bucket_ms, d);
        }
    }

    fn occupied(&mut self, role: Role, now: u64, d: f64) {
        if let Some(g) = self.role_occupied.get_mut(&role) {
            g.add(now, self.bucket_ms, d);
        }
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
