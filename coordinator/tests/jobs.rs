//! Work items in the replicated core: workflows with gates, budgets at dispatch, the cost
//! ledger, the artifact cache, class priority with aging, backfill and model routing.

use std::collections::BTreeMap;

use qm_coordinator::state::{Acquire, Command, Config, Effect, Item, JobId, Response, SessionId, State, TaskId, Wait};
use qm_coordinator::state::{JobSpec, JobStatus, PassStatus, Period, Scope};
use qm_coordinator::state::{Outcome, TaskReport, TaskStatus, Usage, WorkerSpec};
use qm_shared::workflow::{Gate, Need, OnFail, Pass, Price, Project, ProjectResource, Provider, Reviewer, Workflow};
use qm_shared::{Mode, ResourcePath, Role, Tier};

struct Core {
    state: State,
    index: u64,
    now: u64,
    running: BTreeMap<TaskId, (u32, SessionId)>,
}

impl Core {
    fn new() -> Core {
        Core::with(Config::default())
    }

    fn with(config: Config) -> Core {
        let mut c = Core { state: State::new(config), index: 0, now: 1_700_000_000_000, running: BTreeMap::new() };
        let (r, _) = c.apply(Command::ApplyProject(Box::new(project())));
        assert!(matches!(r, Response::ProjectApplied { .. }), "{r:?}");
        c
    }

    fn apply(&mut self, cmd: Command) -> (Response, Vec<Effect>) {
        self.index += 1;
        self.now += 10;
        let (r, e) = self.state.apply(self.index, self.now, cmd);
        for ef in &e {
            match ef {
                Effect::TaskAssigned { task, attempt, session } => {
                    self.running.insert(*task, (*attempt, *session));
                }
                Effect::TaskEnded { task, .. } | Effect::TaskQueued { task, .. } => {
                    self.running.remove(task);
                }
                _ => {}
            }
        }
        (r, e)
    }

    fn worker(&mut self, node: &str, slots: &[(Role, u32)]) -> SessionId {
        let (r, _) = self.apply(Command::OpenSession { label: node.into(), ttl_ms: 300_000 });
        let Response::SessionOpened { session, .. } = r else { panic!("{r:?}") };
        let spec = WorkerSpec {
            session,
            node_id: node.into(),
            slots: slots.iter().copied().collect(),
            labels: BTreeMap::new(),
            running: Vec::new(),
            gpus: Vec::new(),
            providers: Vec::new(),
        };
        assert!(matches!(self.apply(Command::RegisterWorker(spec)).0, Response::WorkerRegistered { .. }));
        session
    }

    fn submit(&mut self, spec: JobSpec) -> JobId {
        let (r, _) = self.apply(Command::SubmitJob(Box::new(spec)));
        let Response::JobSubmitted { job } = r else { panic!("{r:?}") };
        job
    }

    /// Finishes the running attempt of `task` with `output` and `tokens` in / out.
    fn finish(&mut self, task: TaskId, output: &str, tokens: (u64, u64)) {
        let (attempt, session) = self.running[&task];
        let report = TaskReport::Finished {
            outcome: Outcome::Succeeded,
            output: output.as_bytes().to_vec(),
            error: String::new(),
            usage: Usage { input_tokens: tokens.0, output_tokens: tokens.1, cached_tokens: 0, estimated: false },
            wall_ms: 1_000,
            agent: format!("node/{}-0", self.state.tasks().get(task).unwrap().spec.role),
        };
        let (r, _) = self.apply(Command::ReportTask { session, task, attempt, report });
        assert!(matches!(r, Response::TaskReported { .. }), "{r:?}");
    }

    fn pass(&self, job: JobId, name: &str) -> qm_coordinator::state::PassState {
        self.state.jobs().get(job).unwrap().passes.iter().find(|p| p.name == name).unwrap().clone()
    }

    /// Runs the work item to its end (or until nothing runs), answering every task with
    /// `tokens` and every review with PASS, approving human gates.
    fn drive(&mut self, job: JobId) {
        for _ in 0..100 {
            let j = self.state.jobs().get(job).unwrap().clone();
            if j.status != JobStatus::Running {
                return;
            }
            if let Some(p) = j.passes.iter().find(|p| p.status == PassStatus::AwaitingHuman) {
                let cmd = Command::DecideGate {
                    job,
                    pass: p.name.clone(),
                    approve: true,
                    note: "ok".into(),
                    by: "ana".into(),
                };
                assert!(matches!(self.apply(cmd).0, Response::GateDecided { .. }));
                continue;
            }
            let Some(task) = self.running.keys().next().copied() else { return };
            let review = j.passes.iter().any(|p| p.review == Some(task));
            self.finish(task, if review { "PASS: fine" } else { "artifact" }, (10_000, 2_000));
        }
    }
}

fn path(p: &str) -> ResourcePath {
    ResourcePath::parse(p).unwrap()
}

fn project() -> Project {
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

fn pass(name: &str, role: Role, after: &[&str], gate: Option<Gate>) -> Pass {
    Pass {
        name: name.into(),
        role,
        tier: None,
        after: after.iter().map(|s| s.to_string()).collect(),
        needs: vec![Need { path: path("repo:app"), mode: Mode::Shared, units: 1 }],
        requires: Vec::new(),
        inputs: vec!["ticket".into()],
        outputs: vec![format!("{name}.md")],
        gate,
        timeout_ms: 0,
        retries: 1,
        run: Vec::new(),
    }
}

fn gate(reviewer: Reviewer, review_role: Role, on_fail: OnFail) -> Option<Gate> {
    Some(Gate { criteria: "meets the ticket".into(), reviewer, review_role, on_fail, max_failures: 3, run: Vec::new() })
}

fn job(title: &str, class: &str, priority: u32, team: &str, passes: Vec<Pass>) -> JobSpec {
    JobSpec {
        title: title.into(),
        class: class.into(),
        priority,
        team: team.into(),
        project: "demo".into(),
        workflow: Workflow { name: "wf".into(), description: String::new(), passes },
        budget_micros: None,
        inputs: BTreeMap::from([("ticket".to_string(), format!("{title} ticket"))]),
        commit: "abc123".into(),
        run: br#"{"executor":"scripted","output":"{{pass}} of {{title}}"}"#.to_vec(),
        review_run: br#"{"executor":"scripted","output":"PASS"}"#.to_vec(),
    }
}

fn feature_passes() -> Vec<Pass> {
    vec![
        pass("spec", Role::Specifier, &[], gate(Reviewer::Agent, Role::Analyst, OnFail::Retry)),
        pass(
            "design",
            Role::Architect,
            &["spec"],
            gate(Reviewer::Human, Role::Analyst, OnFail::SendBack("spec".into())),
        ),
        pass("generate", Role::Implementer, &["design"], gate(Reviewer::Agent, Role::Verifier, OnFail::Escalate)),
    ]
}

const ALL_ROLES: [(Role, u32); 5] =
    [(Role::Specifier, 1), (Role::Analyst, 1), (Role::Architect, 1), (Role::Implementer, 2), (Role::Verifier, 1)];

#[test]
fn a_workflow_runs_every_pass_through_its_gates_and_the_ledger_adds_up() {
    let mut c = Core::new();
    c.worker("w1", &ALL_ROLES);
    let j = c.submit(job("CSV export", "feature", 500, "platform", feature_passes()));
    // spec runs first, alone; design waits for it.
    assert_eq!(c.pass(j, "spec").status, PassStatus::Running);
    assert_eq!(c.pass(j, "design").status, PassStatus::Pending);
    let spec_task = c.pass(j, "spec").task.unwrap();
    // Routed by tier: specifier's default tier is standard → the cloud model.
    let route = c.state.tasks().get(spec_task).unwrap().route.clone().unwrap();
    assert_eq!((route.provider.as_str(), route.model.as_str()), ("cloud", "claude-standard"));
    c.finish(spec_task, "the spec", (10_000, 2_000));
    assert_eq!(c.pass(j, "spec").status, PassStatus::Reviewing);
    let review = c.pass(j, "spec").review.unwrap();
    assert_eq!(c.state.tasks().get(review).unwrap().spec.role, Role::Analyst);
    c.finish(review, "PASS: complete", (1_000, 100));
    assert_eq!(c.pass(j, "spec").status, PassStatus::Passed);
    // design has a human gate.
    let design = c.pass(j, "design").task.unwrap();
    c.finish(design, "the design", (5_000, 1_000));
    assert_eq!(c.pass(j, "design").status, PassStatus::AwaitingHuman);
    let (r, _) = c.apply(Command::DecideGate {
        job: j,
        pass: "spec".into(),
        approve: true,
        note: String::new(),
        by: "x".into(),
    });
    assert!(matches!(r, Response::Refused(_)), "spec waits for no decision: {r:?}");
    c.apply(Command::DecideGate {
        job: j,
        pass: "design".into(),
        approve: true,
        note: "ship it".into(),
        by: "ana".into(),
    });
    assert_eq!(c.pass(j, "design").status, PassStatus::Passed);
    assert_eq!(c.pass(j, "design").gates[0].reviewer, "human ana");
    c.drive(j);
    let done = c.state.jobs().get(j).unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    // The ledger: one entry per attempt; money from the price table; sums agree.
    let entries: Vec<_> = c.state.jobs().ledger().collect();
    assert_eq!(entries.len(), 5, "spec, spec#gate, design, generate, generate#gate");
    let spec_entry = entries.iter().find(|e| e.pass == "spec").unwrap();
    assert_eq!(spec_entry.model, "claude-standard");
    assert_eq!(spec_entry.money_micros, 10_000 * 3 + 2_000 * 15, "10k in at $3/M + 2k out at $15/M");
    assert_eq!(spec_entry.agent, "node/specifier-0");
    let sum: u64 = entries.iter().map(|e| e.money_micros).sum();
    assert_eq!(sum, c.state.jobs().total_micros());
    assert_eq!(sum, done.cost_micros);
    assert_eq!(done.passes.iter().map(|p| p.cost_micros).sum::<u64>(), sum);
}

#[test]
fn an_identical_rerun_reuses_cached_artifacts_and_a_changed_input_reruns_its_passes() {
    let mut c = Core::new();
    c.worker("w1", &ALL_ROLES);
    let first = c.submit(job("CSV export", "feature", 500, "platform", feature_passes()));
    c.drive(first);
    let cost = c.state.jobs().get(first).unwrap().cost_micros;
    let again = c.submit(job("CSV export", "feature", 500, "platform", feature_passes()));
    let j = c.state.jobs().get(again).unwrap();
    assert_eq!(j.status, JobStatus::Succeeded, "every pass came from the cache");
    assert!(j.passes.iter().all(|p| p.status == PassStatus::Cached));
    assert_eq!(j.cost_micros, 0);
    assert_eq!(j.saved_micros, cost);
    assert_eq!(c.state.jobs().saved_micros(), cost);
    // A different commit: nothing is reused.
    let mut changed = job("CSV export", "feature", 500, "platform", feature_passes());
    changed.commit = "def456".into();
    let third = c.submit(changed);
    assert_eq!(c.pass(third, "spec").status, PassStatus::Running);
}

#[test]
fn a_failed_gate_escalates_a_tier_or_sends_back() {
    let mut c = Core::new();
    c.worker("w1", &ALL_ROLES);
    let j = c.submit(job("x", "feature", 500, "platform", feature_passes()));
    let t = c.pass(j, "spec").task.unwrap();
    c.finish(t, "s", (1, 1));
    c.finish(c.pass(j, "spec").review.unwrap(), "PASS", (1, 1));
    let t = c.pass(j, "design").task.unwrap();
    c.finish(t, "d", (1, 1));
    // Reject the human gate of design: on_fail send back to spec → spec and design run again.
    c.apply(Command::DecideGate { job: j, pass: "design".into(), approve: false, note: "no".into(), by: "ana".into() });
    assert_eq!(c.pass(j, "spec").status, PassStatus::Running);
    assert_eq!(c.pass(j, "spec").runs, 2);
    assert_eq!(c.pass(j, "design").status, PassStatus::Pending);
    c.finish(c.pass(j, "spec").task.unwrap(), "s2", (1, 1));
    c.finish(c.pass(j, "spec").review.unwrap(), "PASS", (1, 1));
    c.finish(c.pass(j, "design").task.unwrap(), "d2", (1, 1));
    c.apply(Command::DecideGate {
        job: j,
        pass: "design".into(),
        approve: true,
        note: String::new(),
        by: "ana".into(),
    });
    // generate: an agent review fails → escalated from standard to frontier.
    let g = c.pass(j, "generate");
    assert_eq!(g.tier, Tier::Standard);
    c.finish(g.task.unwrap(), "code", (1, 1));
    c.finish(c.pass(j, "generate").review.unwrap(), "FAIL: no tests", (1, 1));
    let g = c.pass(j, "generate");
    assert_eq!((g.tier, g.runs, g.gate_failures), (Tier::Frontier, 2, 1));
    let route = c.state.tasks().get(g.task.unwrap()).unwrap().route.clone().unwrap();
    assert_eq!(route.model, "claude-frontier");
    c.drive(j);
    assert_eq!(c.state.jobs().get(j).unwrap().status, JobStatus::Succeeded);
}

#[test]
fn a_budget_holds_a_pass_whose_forecast_would_cross_it_until_raised() {
    let mut c = Core::new();
    c.worker("w1", &ALL_ROLES);
    // The default forecast of a standard pass is $0.10; the team budget is just above it.
    c.apply(Command::SetBudget {
        scope: Scope::Team,
        name: "platform".into(),
        limit_micros: 120_000,
        period: Period::Month,
    });
    let passes = vec![pass("one", Role::Implementer, &[], None), pass("two", Role::Implementer, &["one"], None)];
    let j = c.submit(job("budgeted", "feature", 500, "platform", passes));
    c.finish(c.pass(j, "one").task.unwrap(), "1", (10_000, 2_000)); // $0.06
    let two = c.pass(j, "two");
    assert_eq!(two.status, PassStatus::Queued);
    let wait = two.wait.expect("a reason");
    assert!(wait.contains("team platform budget") && wait.contains("would cross the limit $0.12"), "{wait}");
    assert!(c.running.is_empty());
    c.apply(Command::SetBudget {
        scope: Scope::Team,
        name: "platform".into(),
        limit_micros: 1_000_000,
        period: Period::Month,
    });
    assert_eq!(c.pass(j, "two").status, PassStatus::Running);
    c.drive(j);
    assert_eq!(c.state.jobs().get(j).unwrap().status, JobStatus::Succeeded);
    let b = c.state.jobs().budgets().next().unwrap();
    assert_eq!(b.spent_micros, c.state.jobs().total_micros());
}

#[test]
fn a_hotfix_goes_first_and_docs_wait_at_most_their_aging_bound() {
    let config = Config { aging_interval_ms: 100, aging_step: 10, ..Config::default() };
    let mut c = Core::with(config.clone());
    let one = |name: &str| vec![pass(name, Role::Documenter, &[], None)];
    for i in 0..3 {
        c.submit(job(&format!("f{i}"), "feature", 500, "platform", one("f")));
    }
    let docs = c.submit(job("docs", "docs", 100, "platform", one("d")));
    let hotfix = c.submit(job("hotfix", "hotfix", 900, "platform", one("h")));
    let w = c.worker("w1", &[(Role::Documenter, 1)]);
    let _ = w;
    assert_eq!(c.pass(hotfix, "h").status, PassStatus::Running, "the hotfix goes first");
    // Features keep arriving; the docs item overtakes fresh ones once aged.
    let bound = config.aging_bound_ms(100);
    let submitted = c.state.jobs().get(docs).unwrap().submitted_at;
    let mut dispatched_at = None;
    let mut stream = Vec::new();
    for i in 0..2_000 {
        if c.pass(docs, "d").status != PassStatus::Queued {
            dispatched_at = Some(c.now);
            break;
        }
        stream.push(c.submit(job(&format!("g{i}"), "feature", 500, "platform", one("f"))));
        c.now += 40;
        let t = *c.running.keys().next().unwrap();
        c.finish(t, "x", (1, 1));
    }
    let dispatched_at = dispatched_at.expect("docs dispatched");
    let waited = dispatched_at - submitted;
    assert!(waited <= bound, "docs waited {waited} ms, bound {bound} ms");
    assert!(stream.len() > 10, "features kept arriving while it waited: {}", stream.len());
    // A feature (500) submitted more than (500 - 100) points of aging after the docs item never
    // goes before it.
    let overtake_ms = (500 - 100) * config.aging_interval_ms / u64::from(config.aging_step);
    for id in stream {
        let j = c.state.jobs().get(id).unwrap();
        let ran_first = j.events.iter().any(|e| e.message.starts_with("running") && e.at < dispatched_at);
        if ran_first {
            assert!(j.submitted_at <= submitted + overtake_ms, "{id} overtook the docs item");
        }
    }
}

#[test]
fn backfill_skips_a_pass_whose_resource_is_held_for_runnable_work() {
    let mut c = Core::new();
    // An outsider holds pg:staging exclusively (policy none: no preemption).
    let (r, _) = c.apply(Command::OpenSession { label: "human".into(), ttl_ms: 300_000 });
    let Response::SessionOpened { session, .. } = r else { panic!() };
    let acquire = Acquire {
        session,
        owner: "dba".into(),
        items: vec![Item { path: path("pg:staging"), mode: Mode::Exclusive, units: 1 }],
        wait: Wait::Try,
        priority: 500,
        lease_ms: 600_000,
    };
    assert!(matches!(c.apply(Command::Acquire(acquire)).0, Response::Granted { .. }));
    let mut blocked = pass("migrate", Role::Implementer, &[], None);
    blocked.needs = vec![Need { path: path("pg:staging"), mode: Mode::Exclusive, units: 1 }];
    let first = c.submit(job("migrate", "feature", 600, "platform", vec![blocked]));
    let second = c.submit(job("other", "feature", 500, "platform", vec![pass("code", Role::Implementer, &[], None)]));
    c.worker("w1", &[(Role::Implementer, 1)]);
    assert_eq!(c.pass(second, "code").status, PassStatus::Running, "backfilled");
    let p = c.pass(first, "migrate");
    assert_eq!(p.status, PassStatus::Queued);
    assert!(p.wait.unwrap().contains("pg:staging is held"));
}

#[test]
fn a_local_provider_of_the_tier_is_preferred_when_free_and_priced_by_wall_time() {
    let mut c = Core::new();
    let (r, _) = c.apply(Command::OpenSession { label: "gpu".into(), ttl_ms: 300_000 });
    let Response::SessionOpened { session, .. } = r else { panic!() };
    let spec = WorkerSpec {
        session,
        node_id: "gpu-box".into(),
        slots: BTreeMap::from([(Role::Documenter, 2)]),
        labels: BTreeMap::new(),
        running: Vec::new(),
        gpus: Vec::new(),
        providers: vec![qm_coordinator::state::ProviderInfo {
            name: "local".into(),
            kind: "openai".into(),
            local: true,
        }],
    };
    c.apply(Command::RegisterWorker(spec));
    // documenter's default tier is cheap; the local provider serves cheap with 1 slot.
    let a = c.submit(job("a", "docs", 100, "platform", vec![pass("d", Role::Documenter, &[], None)]));
    let b = c.submit(job("b", "docs", 100, "platform", vec![pass("d", Role::Documenter, &[], None)]));
    let ra = c.state.tasks().get(c.pass(a, "d").task.unwrap()).unwrap().route.clone().unwrap();
    let rb = c.state.tasks().get(c.pass(b, "d").task.unwrap()).unwrap().route.clone().unwrap();
    // Both are routed in one dispatch, before either agent acquired: the local provider's one
    // slot goes to the first, and the second goes to the cloud rather than queue behind it.
    assert_eq!((ra.provider.as_str(), ra.local), ("local", true));
    assert_eq!((rb.provider.as_str(), rb.local), ("cloud", false), "the local provider is busy");
    let task = c.pass(a, "d").task.unwrap();
    assert!(c.state.tasks().get(task).unwrap().attempt_items().iter().any(|i| i.path.as_str() == "api:local"));
    c.finish(task, "docs", (50_000, 10_000));
    let e = c.state.jobs().ledger().find(|e| e.task == task).unwrap();
    assert_eq!(e.money_micros, 100, "$0.36/h × 1 s");
    assert_eq!(c.state.tasks().get(task).unwrap().status, TaskStatus::Succeeded);
}

#[test]
fn at_the_at_threshold_low_priority_work_pauses_and_a_costly_dispatch_waits_for_approval() {
    let config = Config { high_cost_micros: 400_000, ..Config::default() };
    let mut c = Core::with(config);
    c.worker("w1", &[(Role::Implementer, 1), (Role::Architect, 1)]);
    c.apply(Command::SetBudget {
        scope: Scope::Project,
        name: "demo".into(),
        limit_micros: 2_000_000,
        period: Period::Month,
    });
    // Spend $1.92 of $2.00 (96%, past the 95% `at` threshold): 64k in at $3/M + 115.2k out at $15/M.
    let first = c.submit(job("spend", "feature", 500, "platform", vec![pass("p", Role::Implementer, &[], None)]));
    c.finish(c.pass(first, "p").task.unwrap(), "x", (64_000, 115_200));
    assert_eq!(c.state.jobs().budgets().next().unwrap().spent_micros, 1_920_000);
    // Raise it to $3.00 (64%) so the next passes fit, then lower the thresholds to 60/64% so
    // the budget stands at `at` with room left: the rules below apply on their own.
    c.apply(Command::SetBudget {
        scope: Scope::Project,
        name: "demo".into(),
        limit_micros: 3_000_000,
        period: Period::Month,
    });
    let at = Config { high_cost_micros: 400_000, budget_approaching_pct: 60, budget_at_pct: 64, ..Config::default() };
    c.apply(Command::Configure { config: at });
    let low = c.submit(job("low", "docs", 100, "platform", vec![pass("q", Role::Implementer, &[], None)]));
    let wait = c.pass(low, "q").wait.unwrap();
    assert!(wait.contains("is at 64%") && wait.contains("low-priority work paused"), "{wait}");
    // A security fix on the frontier tier: forecast $0.50 ≥ $0.40 → it waits for an approval.
    let mut design = pass("design", Role::Architect, &[], None);
    design.tier = Some(Tier::Frontier);
    let urgent = c.submit(job("urgent", "security", 800, "platform", vec![design]));
    let p = c.pass(urgent, "design");
    assert!(p.approval_wanted);
    assert!(p.wait.unwrap().contains("needs approval (qm gate approve"));
    let (r, _) = c.apply(Command::DecideGate {
        job: urgent,
        pass: "design".into(),
        approve: true,
        note: String::new(),
        by: "cfo".into(),
    });
    assert!(matches!(r, Response::GateDecided { .. }), "{r:?}");
    assert_eq!(c.pass(urgent, "design").status, PassStatus::Running);
    assert_eq!(c.pass(low, "q").status, PassStatus::Queued, "low-priority work still paused");
}

#[test]
fn an_over_budget_scope_pauses_until_the_period_rolls_over() {
    let mut c = Core::new();
    c.worker("w1", &[(Role::Implementer, 1)]);
    c.apply(Command::SetBudget {
        scope: Scope::Team,
        name: "platform".into(),
        limit_micros: 150_000,
        period: Period::Day,
    });
    let a = c.submit(job("a", "feature", 500, "platform", vec![pass("p", Role::Implementer, &[], None)]));
    c.finish(c.pass(a, "p").task.unwrap(), "x", (20_000, 10_000)); // $0.21 > $0.15: over
    let b = c.submit(job("b", "incident", 1000, "platform", vec![pass("q", Role::Implementer, &[], None)]));
    let wait = c.pass(b, "q").wait.unwrap();
    assert!(wait.contains("is over") && wait.contains("until it is raised or the day rolls over"), "{wait}");
    // The next UTC day: spending starts again from zero on the Tick.
    // (A day without keepalives also ended the worker's session; a fresh worker joins.)
    c.now = (c.now / 86_400_000 + 1) * 86_400_000;
    c.apply(Command::Tick);
    assert_eq!(c.state.jobs().budgets().next().unwrap().spent_micros, 0);
    c.worker("w2", &[(Role::Implementer, 1)]);
    assert_eq!(c.pass(b, "q").status, PassStatus::Running, "{:?}", c.pass(b, "q").wait);
    let events: Vec<String> = c.state.jobs().get(b).unwrap().events.iter().map(|e| e.message.clone()).collect();
    assert!(events.iter().any(|e| e.starts_with("waits: team platform budget is over")), "{events:?}");
}

#[test]
fn money_spent_after_a_period_ends_counts_in_the_next_even_before_the_tick_rolls_it() {
    let mut c = Core::new();
    c.worker("w1", &[(Role::Implementer, 1)]);
    c.apply(Command::SetBudget {
        scope: Scope::Team,
        name: "platform".into(),
        limit_micros: 10_000_000,
        period: Period::Day,
    });
    let a = c.submit(job("a", "feature", 500, "platform", vec![pass("p", Role::Implementer, &[], None)]));
    // The attempt ends just after midnight UTC; no Tick has rolled the day yet.
    c.now = (c.now / 86_400_000 + 1) * 86_400_000;
    c.finish(c.pass(a, "p").task.unwrap(), "x", (20_000, 10_000));
    let spent = c.state.jobs().ledger().map(|e| e.money_micros).sum::<u64>();
    assert_eq!(spent, 210_000, "$3/M in, $15/M out");
    c.apply(Command::Tick);
    let b = c.state.jobs().budgets().next().unwrap();
    assert_eq!(b.period_start, c.now / 86_400_000 * 86_400_000, "the new day");
    assert_eq!(b.spent_micros, spent, "spent in the new day, not dropped with the old one");
}

#[test]
fn fair_share_gives_an_idle_team_the_next_slot_over_a_busy_team_at_the_same_class() {
    let mut c = Core::new();
    c.worker("w1", &[(Role::Implementer, 3)]);
    let one = || vec![pass("p", Role::Implementer, &[], None)];
    // Team a fills every slot and queues more; team b arrives later at the same class.
    let a: Vec<JobId> = (0..6).map(|i| c.submit(job(&format!("a{i}"), "feature", 500, "a", one()))).collect();
    let b = c.submit(job("b0", "feature", 500, "b", one()));
    assert_eq!(c.pass(b, "p").status, PassStatus::Queued);
    // A slot frees: a runs 2 after this, b none — b's head of queue beats a's older one.
    let t = c.pass(a[0], "p").task.unwrap();
    c.finish(t, "x", (1, 1));
    assert_eq!(c.pass(b, "p").status, PassStatus::Running, "fair share");
    assert_eq!(c.pass(a[3], "p").status, PassStatus::Queued);
}

#[test]
fn a_pass_that_requires_a_gpu_goes_only_to_a_worker_with_one() {
    let mut c = Core::new();
    c.worker("laptop", &[(Role::Implementer, 1)]);
    let mut train = pass("train", Role::Implementer, &[], None);
    train.requires = vec![qm_shared::workflow::Capability::Gpu];
    let j = c.submit(job("train", "feature", 500, "platform", vec![train]));
    let p = c.pass(j, "train");
    assert_eq!(p.status, PassStatus::Queued);
    assert!(p.wait.unwrap().contains("with gpu"));
    let (r, _) = c.apply(Command::OpenSession { label: "gpu".into(), ttl_ms: 300_000 });
    let Response::SessionOpened { session, .. } = r else { panic!() };
    let spec = WorkerSpec {
        session,
        node_id: "gpu-box".into(),
        slots: BTreeMap::from([(Role::Implementer, 1)]),
        labels: BTreeMap::new(),
        running: Vec::new(),
        gpus: vec![qm_coordinator::state::GpuInfo { index: 0, model: "L4".into(), memory_bytes: 24 << 30 }],
        providers: Vec::new(),
    };
    c.apply(Command::RegisterWorker(spec));
    let task = c.pass(j, "train").task.unwrap();
    assert_eq!(c.state.tasks().get(task).unwrap().session, Some(session));
}
