//! The scheduler in the pure core (criterion): dispatch decisions per second with about
//! 100,000 queued passes and 1,000 agents.
//!
//! Setup: one project, ten teams with team budgets (so every decision runs the budget
//! policies), 12,500 work items of an eight-pass workflow whose passes all start at once (so
//! 100,000 passes queue across four roles and ten teams, at every class priority), then 100
//! workers of 10 agent slots each. One measured step is one apply: an agent reports its pass
//! succeeded (ledger entry, budgets charged, work item advanced) and the freed slot gets the
//! next pass (fair share across teams, aging order, backfill and budget checks, provider
//! routing). The queue is topped up outside the timed section so it stays near 100,000.
//!
//! Run: `cargo bench -p qm-coordinator --bench scheduler`. Goal: at least 50,000 decisions/s.

use std::cell::RefCell;

/// The allocator the `qm` binary ships with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use qm_coordinator::state::{Command, Effect, Response, SessionId, State, TaskId};
use qm_coordinator::state::{JobSpec, Period, Scope};
use qm_coordinator::state::{Outcome, TaskReport, Usage, WorkerSpec};
use qm_shared::workflow::{Need, Pass, Price, Project, ProjectResource, Provider, Workflow};
use qm_shared::{Mode, ResourcePath, Role, Tier};

const QUEUED: usize = 100_000;
/// Passes per work item (roles cycle through `ROLES`): 12,500 work items queue 100,000 passes.
const PASSES: usize = 8;
const TEAMS: usize = 10;
const WORKERS: usize = 100;
const ROLES: [Role; 4] = [Role::Implementer, Role::Verifier, Role::Documenter, Role::Analyst];
const SLOTS: [u32; 4] = [4, 2, 2, 2];

struct Bench {
    state: State,
    index: u64,
    now: u64,
    running: Vec<(TaskId, u32, SessionId)>,
    submitted: usize,
}

impl Bench {
    fn apply(&mut self, cmd: Command) -> (Response, Vec<Effect>) {
        self.index += 1;
        self.now += 1;
        self.state.apply(self.index, self.now, cmd)
    }

    fn note(&mut self, effects: &[Effect]) {
        for e in effects {
            if let Effect::TaskAssigned { task, attempt, session } = e {
                self.running.push((*task, *attempt, *session));
            }
        }
    }

    fn submit(&mut self, n: usize) {
        for _ in 0..n {
            let i = self.submitted;
            self.submitted += 1;
            let spec = JobSpec {
                title: format!("item {i}"),
                class: "feature".into(),
                priority: 100 + (i as u32 % 10) * 100,
                team: format!("team-{}", i % TEAMS),
                project: "bench".into(),
                workflow: workflow(),
                budget_micros: None,
                inputs: BTreeMap::from([("ticket".to_string(), format!("T-{i}"))]),
                commit: "c0ffee".into(),
                run: br#"{"executor":"scripted"}"#.to_vec(),
                review_run: Vec::new(),
                principal: String::new(),
                complexity: Default::default(),
            };
            let (r, e) = self.apply(Command::SubmitJob(Box::new(spec)));
            assert!(matches!(r, Response::JobSubmitted { .. }), "{r:?}");
            self.note(&e);
        }
    }

    /// The project, the team budgets and 100,000 queued passes; no workers yet.
    fn new_without_workers() -> Bench {
        let mut b =
            Bench { state: State::default(), index: 0, now: 1_700_000_000_000, running: Vec::new(), submitted: 0 };
        let (r, _) = b.apply(Command::ApplyProject(Box::new(project())));
        assert!(matches!(r, Response::ProjectApplied { .. }), "{r:?}");
        for t in 0..TEAMS {
            let cmd = Command::SetBudget {
                scope: Scope::Team,
                name: format!("team-{t}"),
                limit_micros: 1_000_000_000_000,
                period: Period::Month,
            };
            b.apply(cmd);
        }
        b.submit(QUEUED / PASSES);
        b
    }

    fn new() -> Bench {
        let mut b = Bench::new_without_workers();
        for w in 0..WORKERS {
            let (r, _) =
                b.apply(Command::OpenSession { label: format!("w{w}"), ttl_ms: 300_000, principal: String::new() });
            let Response::SessionOpened { session, .. } = r else { panic!("{r:?}") };
            let spec = WorkerSpec {
                session,
                node_id: format!("w{w}"),
                slots: ROLES.iter().copied().zip(SLOTS).collect(),
                labels: BTreeMap::new(),
                running: Vec::new(),
                gpus: Vec::new(),
                providers: Vec::new(),
                container: false,
                specs: BTreeMap::new(),
                repos: Default::default(),
                clis: Default::default(),
            };
            let (_, e) = b.apply(Command::RegisterWorker(spec));
            b.note(&e);
        }
        assert_eq!(b.running.len(), WORKERS * SLOTS.iter().sum::<u32>() as usize, "every agent busy");
        b
    }

    /// One decision: a running pass succeeds, its slot takes the next.
    fn step(&mut self) {
        let (task, attempt, session) = self.running.swap_remove(0);
        let report = TaskReport::Finished {
            outcome: Outcome::Succeeded,
            output: b"artifact".to_vec(),
            error: String::new(),
            usage: Usage {
                input_tokens: 1_000,
                output_tokens: 200,
                cached_tokens: 0,
                estimated: false,
                reported_micros: None,
            },
            wall_ms: 1_000,
            agent: "w/agent".into(),
            spec: String::new(),
        };
        let (_, e) = self.apply(Command::ReportTask { session, task, attempt, report });
        self.note(&e);
    }
}

fn workflow() -> Workflow {
    Workflow {
        name: "bench".into(),
        description: String::new(),
        passes: (0..PASSES)
            .map(|i| Pass {
                name: format!("p{i}"),
                role: ROLES[i % ROLES.len()],
                tier: None,
                after: Vec::new(),
                needs: vec![Need { path: ResourcePath::parse("repo:app").unwrap(), mode: Mode::Shared, units: 1 }],
                requires: Vec::new(),
                inputs: vec!["ticket".into()],
                outputs: vec![format!("out{i}")],
                gate: None,
                timeout_ms: 0,
                retries: 1,
                run: Vec::new(),
            })
            .collect(),
    }
}

fn project() -> Project {
    let model = |t: &str| format!("model-{t}");
    Project {
        name: "bench".into(),
        team: "team-0".into(),
        resources: vec![ProjectResource {
            path: ResourcePath::parse("repo:app").unwrap(),
            capacity: None,
            policy: "none".into(),
            grace_ms: 5_000,
        }],
        repos: Vec::new(),
        tools: Vec::new(),
        providers: vec![Provider {
            name: "cloud".into(),
            kind: "openai".into(),
            endpoint: "https://example.invalid/v1".into(),
            local: false,
            concurrency: 10_000,
            models: Tier::ALL.iter().map(|t| (*t, model(t.as_str()))).collect(),
            hourly_micros: 0,
        }],
        prices: Tier::ALL
            .iter()
            .map(|t| {
                let p = Price {
                    input_per_mtok_micros: 3_000_000,
                    output_per_mtok_micros: 15_000_000,
                    cached_per_mtok_micros: 0,
                };
                (model(t.as_str()), p)
            })
            .collect(),
    }
}

fn scheduler(c: &mut Criterion) {
    let started = Instant::now();
    let bench = RefCell::new(Bench::new());
    println!(
        "setup: {} queued passes, {} agents on {WORKERS} workers, {TEAMS} teams, in {:.1} s",
        bench.borrow().state.tasks().queued(),
        bench.borrow().running.len(),
        started.elapsed().as_secs_f64()
    );
    let mut g = c.benchmark_group("scheduler");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.bench_function("dispatch_decision_100k_queued_1k_agents", |bn| {
        bn.iter_custom(|iters| {
            let mut b = bench.borrow_mut();
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let queued = b.state.tasks().queued();
                if queued < QUEUED - 5_000 && b.state.jobs().iter().count() < 40_000 {
                    b.submit((QUEUED - queued) / PASSES);
                }
                let n = left.min(2_000);
                let t = Instant::now();
                for _ in 0..n {
                    b.step();
                }
                spent += t.elapsed();
                left -= n;
            }
            spent
        })
    });
    // Decisions alone: 1,000 agent slots come free at once (a worker of 250 slots per role
    // registers) with 100,000 passes queued; one apply makes 1,000 dispatch decisions.
    let fresh = Bench::new_without_workers();
    let slots = 250;
    g.throughput(Throughput::Elements(slots as u64 * ROLES.len() as u64));
    g.sample_size(10);
    g.bench_function("fill_1k_free_slots_from_100k_queued", |bn| {
        bn.iter_batched(
            || fresh.state.clone(),
            |mut state| {
                let (r, _) = state.apply(
                    fresh.index + 1,
                    fresh.now + 1,
                    Command::OpenSession { label: "big".into(), ttl_ms: 300_000, principal: String::new() },
                );
                let Response::SessionOpened { session, .. } = r else { panic!("{r:?}") };
                let spec = WorkerSpec {
                    session,
                    node_id: "big".into(),
                    slots: ROLES.iter().map(|r| (*r, slots)).collect(),
                    labels: BTreeMap::new(),
                    running: Vec::new(),
                    gpus: Vec::new(),
                    providers: Vec::new(),
                    container: false,
                    specs: BTreeMap::new(),
                    repos: Default::default(),
                    clis: Default::default(),
                };
                let (_, e) = state.apply(fresh.index + 2, fresh.now + 2, Command::RegisterWorker(spec));
                let assigned = e.iter().filter(|e| matches!(e, Effect::TaskAssigned { .. })).count();
                assert_eq!(assigned, slots as usize * ROLES.len());
                (state, e)
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
    let b = bench.borrow();
    println!(
        "after: {} queued, {} ledger entries, total {} micro-dollars",
        b.state.tasks().queued(),
        b.state.jobs().ledger().count(),
        b.state.jobs().total_micros()
    );
}

criterion_group!(benches, scheduler);
criterion_main!(benches);
