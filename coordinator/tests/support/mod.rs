//! The one harness for the core's tests: a [`Core`] that applies commands at increasing log
//! indexes on a simulated clock and follows which attempt of each task runs where, with
//! helpers for sessions, workers, submissions, reports and gates; and builders with defaults
//! for the specs the tests submit ([`task`], [`job`], [`pass`], [`worker`], [`acquire`]), so
//! that a test spells out only what it is about.

#![allow(dead_code)]

use std::collections::BTreeMap;

use qm_coordinator::state::{Acquire, Command, Config, Effect, GpuInfo, Item, Job, JobId, JobSpec, JobStatus};
use qm_coordinator::state::{Outcome, PassState, PassStatus, ProviderInfo, Response, SessionId, State, Task};
use qm_coordinator::state::{Period, RoleSpec, Scope, TaskId, TaskReport, TaskSpec, Usage, Wait, WorkerSpec};
use qm_shared::workflow::{Capability, Gate, Need, OnFail, Pass, Price, Project, ProjectResource, Provider};
use qm_shared::workflow::{Reviewer, Workflow};
use qm_shared::{Mode, ResourcePath, Role, Tier};

/// Where the simulated clock starts: a real date, so budget periods fall on real UTC days.
pub const START_MS: u64 = 1_700_000_000_000;
/// How far the clock moves before each apply, unless [`Core::clock_step`] says otherwise.
pub const STEP_MS: u64 = 10;
/// The time to live of the sessions the harness opens.
pub const TTL_MS: u64 = 300_000;
/// The lease of an [`acquire`] that names none.
pub const LEASE_MS: u64 = 600_000;

/// The replicated state machine as one node applies it, with the log index and clock.
pub struct Core {
    pub state: State,
    pub index: u64,
    pub now: u64,
    /// Added to `now` before each apply; 0 keeps the clock where the test sets it.
    pub step_ms: u64,
    /// The running attempt and session of every task the effects assigned and did not end.
    pub running: BTreeMap<TaskId, (u32, SessionId)>,
}

impl Core {
    pub fn new() -> Core {
        Core::with(Config::default())
    }

    pub fn with(config: Config) -> Core {
        Core { state: State::new(config), index: 0, now: START_MS, step_ms: STEP_MS, running: BTreeMap::new() }
    }

    /// The same core with the clock moving `ms` before each apply.
    pub fn clock_step(self, ms: u64) -> Core {
        Core { step_ms: ms, ..self }
    }

    /// The same core with `project` applied.
    pub fn project(mut self, project: Project) -> Core {
        let (r, _) = self.apply(Command::ApplyProject(Box::new(project)));
        assert!(matches!(r, Response::ProjectApplied { .. }), "{r:?}");
        self
    }

    /// Applies `cmd` as the next log entry, `step_ms` after the previous one.
    pub fn apply(&mut self, cmd: impl Into<Command>) -> (Response, Vec<Effect>) {
        self.index += 1;
        self.now += self.step_ms;
        let (r, e) = self.state.apply(self.index, self.now, cmd.into());
        self.follow(&e);
        (r, e)
    }

    /// Applies `cmds` as one log entry (one index, one time), `step_ms` after the previous one.
    pub fn apply_batch(&mut self, cmds: Vec<Command>) -> Vec<(Response, Vec<Effect>)> {
        self.index += 1;
        self.now += self.step_ms;
        let out = self.state.apply_batch(self.index, self.now, cmds);
        for (_, e) in &out {
            self.follow(e);
        }
        out
    }

    fn follow(&mut self, effects: &[Effect]) {
        for effect in effects {
            match effect {
                Effect::TaskAssigned { task, attempt, session } => {
                    self.running.insert(*task, (*attempt, *session));
                }
                Effect::TaskEnded { task, .. } | Effect::TaskQueued { task, .. } => {
                    self.running.remove(task);
                }
                _ => {}
            }
        }
    }

    pub fn open_session(&mut self, label: &str) -> SessionId {
        match self.apply(Command::OpenSession { label: label.into(), ttl_ms: TTL_MS, principal: String::new() }).0 {
            Response::SessionOpened { session, .. } => session,
            other => panic!("open session: {other:?}"),
        }
    }

    /// Opens a session for `worker` and registers it there.
    pub fn join(&mut self, worker: WorkerBuilder) -> SessionId {
        let session = self.open_session(&worker.0.node_id);
        let spec = WorkerSpec { session, ..worker.0 };
        let (r, _) = self.apply(Command::RegisterWorker(spec));
        assert!(matches!(r, Response::WorkerRegistered { .. }), "{r:?}");
        session
    }

    /// A worker on `node` with these agent slots and nothing else.
    pub fn worker(&mut self, node: &str, slots: &[(Role, u32)]) -> SessionId {
        self.join(worker(node, slots))
    }

    pub fn submit(&mut self, task: impl Into<TaskSpec>) -> (TaskId, Vec<Effect>) {
        let (r, e) = self.apply(Command::SubmitTask(task.into()));
        let Response::TaskSubmitted { task } = r else { panic!("{r:?}") };
        (task, e)
    }

    pub fn submit_job(&mut self, job: impl Into<JobSpec>) -> JobId {
        let (r, _) = self.apply(Command::SubmitJob(Box::new(job.into())));
        let Response::JobSubmitted { job } = r else { panic!("{r:?}") };
        job
    }

    pub fn report(
        &mut self,
        session: SessionId,
        task: TaskId,
        attempt: u32,
        report: TaskReport,
    ) -> (Response, Vec<Effect>) {
        self.apply(Command::ReportTask { session, task, attempt, report })
    }

    /// Finishes the running attempt of `task` with `output` and `tokens` in / out.
    pub fn finish(&mut self, task: TaskId, output: &str, tokens: (u64, u64)) {
        let (attempt, session) = self.running[&task];
        let usage = Usage {
            input_tokens: tokens.0,
            output_tokens: tokens.1,
            cached_tokens: 0,
            estimated: false,
            reported_micros: None,
        };
        let agent = format!("node/{}-0", self.task(task).spec.role);
        let report = finished_with(Outcome::Succeeded, output.as_bytes(), usage, agent);
        let (r, _) = self.report(session, task, attempt, report);
        assert!(matches!(r, Response::TaskReported { .. }), "{r:?}");
    }

    /// Decides the gate (or the approval) that `pass` of `job` waits for.
    pub fn decide(&mut self, job: JobId, pass: &str, approve: bool, by: &str) -> Response {
        let note = if approve { "ok" } else { "no" };
        self.apply(Command::DecideGate { job, pass: pass.into(), approve, note: note.into(), by: by.into() }).0
    }

    pub fn budget(&mut self, scope: Scope, name: &str, limit_micros: u64, period: Period) {
        let (r, _) = self.apply(Command::SetBudget { scope, name: name.into(), limit_micros, period });
        assert!(matches!(r, Response::BudgetSet { .. }), "{r:?}");
    }

    pub fn task(&self, task: TaskId) -> &Task {
        self.state.tasks().get(task).unwrap()
    }

    pub fn job(&self, job: JobId) -> &Job {
        self.state.jobs().get(job).unwrap()
    }

    pub fn pass(&self, job: JobId, name: &str) -> PassState {
        self.job(job).passes.iter().find(|p| p.name == name).unwrap().clone()
    }

    /// Runs the work item to its end (or until nothing runs), answering every task with
    /// 10k tokens in and 2k out and every review with PASS, approving human gates.
    pub fn drive(&mut self, job: JobId) {
        for _ in 0..100 {
            let j = self.job(job).clone();
            if j.status != JobStatus::Running {
                return;
            }
            if let Some(p) = j.passes.iter().find(|p| p.status == PassStatus::AwaitingHuman) {
                assert!(matches!(self.decide(job, &p.name, true, "ana"), Response::GateDecided { .. }));
                continue;
            }
            let Some(task) = self.running.keys().next().copied() else { return };
            let review = j.passes.iter().any(|p| p.review == Some(task));
            self.finish(task, if review { "PASS: fine" } else { "artifact" }, (10_000, 2_000));
        }
    }
}

pub fn path(p: &str) -> ResourcePath {
    ResourcePath::parse(p).unwrap()
}

/// The tasks the effects assigned: task, attempt, session.
pub fn assigned(effects: &[Effect]) -> Vec<(TaskId, u32, SessionId)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::TaskAssigned { task, attempt, session } => Some((*task, *attempt, *session)),
            _ => None,
        })
        .collect()
}

/// The owners the effects asked to give a lease up.
pub fn preempted(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::PreemptRequested { owner, .. } => Some(owner.clone()),
            _ => None,
        })
        .collect()
}

/// An attempt's end with `outcome`: output `done`, one second, no tokens.
pub fn finished(outcome: Outcome) -> TaskReport {
    finished_with(outcome, b"done", Usage::default(), "node/agent-0".into())
}

fn finished_with(outcome: Outcome, output: &[u8], usage: Usage, agent: String) -> TaskReport {
    TaskReport::Finished {
        outcome,
        output: output.to_vec(),
        error: String::new(),
        usage,
        wall_ms: 1_000,
        agent,
        spec: String::new(),
    }
}

/// An acquire: by default of nothing yet, waiting without a timeout, at priority 500, with
/// a lease of [`LEASE_MS`].
pub fn acquire(session: SessionId, owner: &str) -> AcquireBuilder {
    AcquireBuilder(Acquire {
        session,
        owner: owner.into(),
        items: Vec::new(),
        wait: Wait::Wait { timeout_ms: None },
        priority: 500,
        lease_ms: LEASE_MS,
    })
}

#[derive(Clone, Debug)]
pub struct AcquireBuilder(pub Acquire);

impl AcquireBuilder {
    pub fn item(mut self, p: &str, mode: Mode, units: u32) -> Self {
        self.0.items.push(Item { path: path(p), mode, units });
        self
    }

    pub fn exclusive(self, p: &str) -> Self {
        self.item(p, Mode::Exclusive, 1)
    }

    pub fn shared(self, p: &str, units: u32) -> Self {
        self.item(p, Mode::Shared, units)
    }

    pub fn priority(mut self, priority: u32) -> Self {
        self.0.priority = priority;
        self
    }

    /// Grant now or refuse.
    pub fn try_now(mut self) -> Self {
        self.0.wait = Wait::Try;
        self
    }
}

impl From<AcquireBuilder> for Command {
    fn from(b: AcquireBuilder) -> Command {
        Command::Acquire(b.0)
    }
}

/// A task of `role`: by default `pg:staging` exclusively, a `scripted` payload, priority
/// 500, work item `WI-1`, two attempts, no team, project, tier or requirement.
pub fn task(role: Role) -> TaskBuilder {
    TaskBuilder(TaskSpec {
        role,
        items: vec![Item { path: path("pg:staging"), mode: Mode::Exclusive, units: 1 }],
        payload: b"scripted".to_vec(),
        priority: 500,
        work_item: "WI-1".into(),
        max_attempts: 2,
        timeout_ms: 0,
        incremental: false,
        team: String::new(),
        project: String::new(),
        tier: None,
        requires: Vec::new(),
        principal: String::new(),
    })
}

#[derive(Clone, Debug)]
pub struct TaskBuilder(pub TaskSpec);

impl TaskBuilder {
    pub fn priority(mut self, priority: u32) -> Self {
        self.0.priority = priority;
        self
    }

    /// Needs `p` exclusively (instead of `pg:staging`).
    pub fn needs(mut self, p: &str) -> Self {
        self.0.items = vec![Item { path: path(p), mode: Mode::Exclusive, units: 1 }];
        self
    }

    pub fn payload(mut self, payload: Vec<u8>) -> Self {
        self.0.payload = payload;
        self
    }

    pub fn build(self) -> TaskSpec {
        self.0
    }
}

impl From<TaskBuilder> for TaskSpec {
    fn from(b: TaskBuilder) -> TaskSpec {
        b.0
    }
}

/// A worker on `node` with these agent slots, no labels, GPUs or providers. [`Core::join`]
/// gives it its session.
pub fn worker(node: &str, slots: &[(Role, u32)]) -> WorkerBuilder {
    WorkerBuilder(WorkerSpec {
        session: SessionId(0),
        node_id: node.into(),
        slots: slots.iter().copied().collect(),
        labels: BTreeMap::new(),
        running: Vec::new(),
        gpus: Vec::new(),
        providers: Vec::new(),
        container: false,
        specs: BTreeMap::new(),
        repos: Default::default(),
        clis: Default::default(),
    })
}

#[derive(Clone, Debug)]
pub struct WorkerBuilder(pub WorkerSpec);

impl WorkerBuilder {
    /// It offers the container engine.
    pub fn container(mut self) -> Self {
        self.0.container = true;
        self
    }

    pub fn gpu(mut self, model: &str, memory_bytes: u64) -> Self {
        let index = self.0.gpus.len() as u32;
        self.0.gpus.push(GpuInfo { index, model: model.into(), memory_bytes });
        self
    }

    /// It is granted repository `name`.
    pub fn repo(mut self, name: &str) -> Self {
        self.0.repos.insert(name.into());
        self
    }

    /// It runs the coding-agent CLI `name`.
    pub fn cli(mut self, name: &str) -> Self {
        self.0.clis.insert(name.into());
        self
    }

    /// Its agent spec of `role` gives these tiers.
    pub fn spec_tiers(self, role: Role, start: Tier, max: Tier) -> Self {
        self.spec(role, RoleSpec { start, max, after_failed_gates: 1, money_per_task_micros: None })
    }

    /// Its agent spec of `role`: every field.
    pub fn spec(mut self, role: Role, spec: RoleSpec) -> Self {
        self.0.specs.insert(role, spec);
        self
    }

    pub fn provider(mut self, name: &str, kind: &str, local: bool) -> Self {
        self.0.providers.push(ProviderInfo { name: name.into(), kind: kind.into(), local });
        self
    }
}

/// A work item of `passes`: by default class `feature` at 500, team `platform`, project
/// `demo` ([`demo_project`]), a `ticket` input, commit `abc123` and scripted executors.
pub fn job(title: &str, passes: impl IntoIterator<Item = impl Into<Pass>>) -> JobBuilder {
    JobBuilder(JobSpec {
        title: title.into(),
        class: "feature".into(),
        priority: 500,
        team: "platform".into(),
        project: "demo".into(),
        workflow: Workflow {
            name: "wf".into(),
            description: String::new(),
            passes: passes.into_iter().map(Into::into).collect(),
        },
        budget_micros: None,
        inputs: BTreeMap::from([("ticket".to_string(), format!("{title} ticket"))]),
        commit: "abc123".into(),
        run: br#"{"executor":"scripted","output":"{{pass}} of {{title}}"}"#.to_vec(),
        review_run: br#"{"executor":"scripted","output":"PASS"}"#.to_vec(),
        principal: String::new(),
        complexity: Default::default(),
    })
}

#[derive(Clone, Debug)]
pub struct JobBuilder(pub JobSpec);

impl JobBuilder {
    pub fn class(mut self, class: &str, priority: u32) -> Self {
        self.0.class = class.into();
        self.0.priority = priority;
        self
    }

    pub fn team(mut self, team: &str) -> Self {
        self.0.team = team.into();
        self
    }

    pub fn commit(mut self, commit: &str) -> Self {
        self.0.commit = commit.into();
        self
    }
}

impl From<JobBuilder> for JobSpec {
    fn from(b: JobBuilder) -> JobSpec {
        b.0
    }
}

/// A pass `name` of `role`: by default after nothing, `repo:app` shared, the `ticket` input,
/// output `<name>.md`, the role's default tier, no gate, one retry.
pub fn pass(name: &str, role: Role) -> PassBuilder {
    PassBuilder(Pass {
        name: name.into(),
        role,
        tier: None,
        after: Vec::new(),
        needs: vec![Need { path: path("repo:app"), mode: Mode::Shared, units: 1 }],
        requires: Vec::new(),
        inputs: vec!["ticket".into()],
        outputs: vec![format!("{name}.md")],
        gate: None,
        timeout_ms: 0,
        retries: 1,
        run: Vec::new(),
    })
}

#[derive(Clone, Debug)]
pub struct PassBuilder(pub Pass);

impl PassBuilder {
    pub fn after(mut self, pass: &str) -> Self {
        self.0.after.push(pass.into());
        self
    }

    /// A gate with criteria `meets the ticket`, failing at most three times.
    pub fn gate(mut self, reviewer: Reviewer, review_role: Role, on_fail: OnFail) -> Self {
        let criteria = "meets the ticket".into();
        self.0.gate = Some(Gate { criteria, reviewer, review_role, on_fail, max_failures: 3, run: Vec::new() });
        self
    }

    /// Needs `p` in `mode` (instead of `repo:app` shared).
    pub fn needs(mut self, p: &str, mode: Mode) -> Self {
        self.0.needs = vec![Need { path: path(p), mode, units: 1 }];
        self
    }

    /// Its payload template (the workflow's `run`).
    pub fn run(mut self, run: &str) -> Self {
        self.0.run = run.as_bytes().to_vec();
        self
    }

    pub fn tier(mut self, tier: Tier) -> Self {
        self.0.tier = Some(tier);
        self
    }

    pub fn requires(mut self, capability: Capability) -> Self {
        self.0.requires.push(capability);
        self
    }
}

impl From<PassBuilder> for Pass {
    fn from(b: PassBuilder) -> Pass {
        b.0
    }
}

/// Project `demo` of team `platform`: `repo:app` (preempt) and `pg:staging` (none); a cloud
/// provider of every tier (`claude-<tier>`, priced) and a local one of the cheap tier with one
/// slot at $0.36 an hour.
pub fn demo_project() -> Project {
    let models = |prefix: &str| Tier::ALL.iter().map(|t| (*t, format!("{prefix}-{t}"))).collect();
    let price =
        |i: u64, o: u64| Price { input_per_mtok_micros: i, output_per_mtok_micros: o, cached_per_mtok_micros: 0 };
    Project {
        name: "demo".into(),
        team: "platform".into(),
        resources: vec![
            ProjectResource { path: path("repo:app"), capacity: None, policy: "preempt".into(), grace_ms: 1_000 },
            ProjectResource { path: path("pg:staging"), capacity: None, policy: "none".into(), grace_ms: 1_000 },
        ],
        repos: Vec::new(),
        tools: Vec::new(),
        providers: vec![
            Provider {
                name: "cloud".into(),
                kind: "anthropic".into(),
                endpoint: "https://example.invalid".into(),
                local: false,
                concurrency: 10,
                models: models("claude"),
                hourly_micros: 0,
            },
            Provider {
                name: "local".into(),
                kind: "openai".into(),
                endpoint: "http://127.0.0.1:8080/v1".into(),
                local: true,
                concurrency: 1,
                models: BTreeMap::from([(Tier::Cheap, "llama-small".to_string())]),
                hourly_micros: 360_000,
            },
        ],
        prices: BTreeMap::from([
            ("claude-cheap".to_string(), price(1_000_000, 5_000_000)),
            ("claude-standard".to_string(), price(3_000_000, 15_000_000)),
            ("claude-frontier".to_string(), price(15_000_000, 75_000_000)),
        ]),
    }
}
