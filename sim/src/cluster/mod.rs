//! Level-B simulation: the real coordinator cluster under turmoil.
//!
//! ```text
//!   seed ─▶ Options (nodes, clients, latencies, election timeouts, snapshot threshold, …)
//!        ─▶ turmoil Sim: hosts n1..nN  real Node + real gRPC services on SimStore/SimClock
//!                        hosts c1..cK  workload through the real client library
//!                        host  ctl     leadership transfers and snapshots for the nemesis
//!        ─▶ loop, one 1 ms step at a time, bounded by Options::deadline_ms:
//!              nemesis.before_step ─▶ sim.step ─▶ observe ─▶ every invariant
//!           phases: chaos (faults) ─▶ heal ─▶ liveness ─▶ converge ─▶ end checks
//!        ─▶ Report { trace hash, ops, faults, violation? }
//! ```
//!
//! Everything inside the hosts is production code; the simulator owns only the network, the
//! clocks, the disks, the workload, the faults and the checkers. A run is a function of its
//! seed: the trace (every client request and answer, every fault, every applied record) is
//! hashed, and the same seed must give the same hash.
//!
//! What determinism needed in practice:
//! * openraft draws its election timeout from an unseeded thread RNG: each node's range is
//!   one wide and the seed picks it;
//! * every clock is simulated time: the coordinator's `Clock` is a [`clock::SimClock`], and
//!   the client library and the worker runtime measure durations on tokio's clock (they used
//!   `std::time::Instant`, which is real time even under turmoil);
//! * tokio's `select!` picks among ready branches with a per-runtime RNG seeded from the OS
//!   unless tokio is built with `--cfg tokio_unstable`, which lets turmoil seed it from the
//!   run's seed. Without it the same seed gave different traces in about one run in three
//!   once workers were in play; `.cargo/config.toml` sets the flag for the whole workspace,
//!   and [`deterministic`] says whether this build has it.

pub mod clock;
pub mod fenced;
pub mod hosts;
pub mod invariants;
pub mod nemesis;
pub mod net;
pub mod options;
pub mod regressions;
pub mod rng;
pub mod store;
pub mod trace;
pub mod workers;
pub mod workload;
pub mod world;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use qm_coordinator::node::Node;
use qm_coordinator::raft::state_machine::{Applied, Subscription};

pub use options::Options;

use clock::SimClock;
use invariants::{End, Final, FinalTask, Invariant, Obs, Replica};
use nemesis::Nemesis;
use store::SimStore;
use world::{lock, Phase, Shared, World};

/// Whether this build seeds tokio's RNG from the run's seed (`--cfg tokio_unstable`); without
/// it a seed's run can differ from one execution to the next (see the module docs).
pub fn deterministic() -> bool {
    cfg!(tokio_unstable)
}

/// A broken invariant.
#[derive(Clone, Debug)]
pub struct Violation {
    pub invariant: String,
    pub message: String,
    pub t_ms: u64,
}

/// The outcome of one seed.
#[derive(Clone, Debug)]
pub struct Report {
    pub seed: u64,
    pub nodes: u64,
    pub chaos_ms: u64,
    pub faults_enabled: bool,
    pub focus: Option<options::Focus>,
    pub trace_hash: String,
    pub trace_lines: u64,
    /// Operations the clients started.
    pub ops: u64,
    pub grants_acked: u64,
    pub fenced_writes: u64,
    pub fenced_rejected: u64,
    pub faults: u64,
    pub faults_by_kind: BTreeMap<String, u64>,
    pub sim_ms: u64,
    pub applied_index: u64,
    pub snapshot_installs: u64,
    pub violation: Option<Violation>,
    pub trace_tail: Vec<String>,
    pub trace_all: Option<Vec<String>>,
}

impl Report {
    /// The one-line command that reproduces this run.
    pub fn command(&self) -> String {
        options::command(self.seed, self.nodes, self.chaos_ms, self.faults_enabled, self.focus)
    }
}

thread_local! {
    /// Panics raised on this thread while a simulation runs on it (host tasks included).
    static PANICS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
    /// The command reproducing the run on this thread.
    static COMMAND: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let recorded = PANICS.with(|p| match p.borrow_mut().as_mut() {
                Some(list) => {
                    if list.len() < 16 {
                        list.push(info.to_string());
                    }
                    true
                }
                None => false,
            });
            if recorded {
                // Also said at once, with the command that reproduces the run: a panic inside
                // a host can take the process down before the report is printed (a panicking
                // task makes turmoil shut the host's runtime down, and tokio may abort).
                let command = COMMAND.with(|c| c.borrow().clone()).unwrap_or_default();
                eprintln!("panic in the simulation: {info}\nreproduce with: {command}");
            }
            if !recorded {
                previous(info);
            }
        }));
    });
}

/// Subscriptions to each live replica's applied records.
#[derive(Default)]
struct Observer {
    subs: BTreeMap<u64, (Arc<Node>, Subscription)>,
    applied: BTreeMap<u64, Arc<Applied>>,
    leader_clock_max_ms: u64,
    /// Each live replica's applied index at the previous step.
    last_applied: BTreeMap<u64, u64>,
    /// Followers that caught up by installing a snapshot (their log was purged past them).
    snapshot_installs: u64,
}

impl Observer {
    fn drain(&mut self, shared: &Shared, t: u64) -> Vec<(u64, Arc<Applied>)> {
        let nodes: Vec<(u64, Arc<Node>)> = lock(shared).nodes.iter().map(|(k, v)| (*k, v.clone())).collect();
        self.subs.retain(|id, (n, _)| nodes.iter().any(|(i, m)| i == id && Arc::ptr_eq(n, m)));
        let mut out = Vec::new();
        for (id, node) in nodes {
            let (_, rx) = self.subs.entry(id).or_insert_with(|| (node.clone(), node.shared.subscribe()));
            for _ in 0..100_000 {
                match rx.try_recv() {
                    Ok(a) => out.push((id, a)),
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => {
                        lock(shared).trace.event(t, "observer", format_args!("n{id} lagged {n} records"));
                    }
                    Err(_) => break,
                }
            }
        }
        let mut w = lock(shared);
        for (id, a) in &out {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.applied.entry(a.index) {
                w.trace.event(t, "apply", format_args!("n{id} index={} now={} {:?}", a.index, a.now, a.effects));
                slot.insert(a.clone());
            }
        }
        out
    }
}

fn replicas(shared: &Shared, clocks: &BTreeMap<u64, SimClock>, t: u64, obs: &mut Observer) -> Vec<Replica> {
    let nodes: Vec<(u64, Arc<Node>)> = lock(shared).nodes.iter().map(|(k, v)| (*k, v.clone())).collect();
    let mut out = Vec::new();
    for (id, node) in nodes {
        let m = node.metrics();
        let leader = m.state == ServerState::Leader;
        let applied = m.last_applied.map_or(0, |l| l.index);
        let snap = m.snapshot.map_or(0, |l| l.index);
        let before = obs.last_applied.insert(id, applied);
        if before.is_some_and(|b| snap > b + 1 && applied >= snap && !leader) {
            obs.snapshot_installs += 1;
            lock(shared).trace.event(t, "snapshot", format_args!("n{id} installed a snapshot at index {snap}"));
        }
        if leader {
            obs.leader_clock_max_ms = obs.leader_clock_max_ms.max(clocks[&id].reading_at(t));
        }
        let (grants, capacities, edges, waiters, preempt_gap, checkpoints) = node.shared.read(|d| {
            (
                d.state.grants().collect(),
                d.state.capacities().map(|(path, c)| (path.to_string(), c)).collect(),
                d.state.wait_for_edges(),
                d.state.waiters().map(|w| (w.request.0, w.preempting_priority)).collect(),
                d.state.config().preempt_gap,
                d.state
                    .tasks()
                    .iter()
                    .filter_map(|t| t.checkpoint.as_ref().map(|c| (t.id.0, (c.attempt, c.seq))))
                    .collect(),
            )
        });
        out.push(Replica {
            id,
            leader,
            term: m.current_term,
            vote: m.vote,
            vote_text: format!("vote={} leader={:?} last_log={:?}", m.vote, m.current_leader, m.last_log_index),
            applied,
            grants,
            capacities,
            edges,
            waiters,
            preempt_gap,
            checkpoints,
        });
    }
    out
}

/// Runs one seed to the end (or to its first violation), on a thread of its own: the
/// simulation builds its own runtimes (which cannot nest in a caller's), and thread-local
/// state left by an earlier run on the same thread would make this run differ.
pub fn run(opts: &Options) -> Report {
    install_panic_hook();
    let opts = opts.clone();
    let run = std::thread::Builder::new().name(format!("sim-seed-{}", opts.seed)).spawn(move || {
        PANICS.with(|p| *p.borrow_mut() = Some(Vec::new()));
        COMMAND.with(|c| *c.borrow_mut() = Some(Options::command(&opts)));
        run_inner(&opts)
    });
    match run.map(|handle| handle.join()) {
        Ok(Ok(report)) => report,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => panic!("spawning the simulation thread: {e}"),
    }
}

fn run_inner(opts: &Options) -> Report {
    let mut run = Run::new(opts);
    let violation = match run.steps() {
        Err(v) => Some(v),
        Ok(finals) if finals.is_empty() => Some(Violation::new(
            "run-finished",
            format!("the run hit its deadline at {}ms before converging", run.t),
            run.t,
        )),
        Ok(finals) => run.check_end(&finals),
    };
    run.finish(violation)
}

impl Violation {
    fn new(invariant: &str, message: String, t_ms: u64) -> Violation {
        Violation { invariant: invariant.to_string(), message, t_ms }
    }
}

/// The simulation with every host on it (the nodes, the clients, the workers and the control
/// host), each node's clock, and the nemesis that knows them all.
fn build(opts: &Options, shared: &Shared) -> (turmoil::Sim<'static>, BTreeMap<u64, SimClock>, Nemesis) {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_millis(opts.deadline_ms() + 10_000))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(opts.latency_ms.0))
        .max_message_latency(Duration::from_millis(opts.latency_ms.1))
        .tcp_capacity(65_536)
        .rng_seed(opts.seed)
        .build();

    let mut stores = BTreeMap::new();
    let mut clocks = BTreeMap::new();
    let mut rng = rng::Rng::new(opts.seed).fork(3);
    let mut hosts = Vec::new();
    for id in 1..=opts.nodes {
        let store = SimStore::new();
        let clock = SimClock::new(rng.range(0, 2_000) as i64 - 1_000);
        stores.insert(id, store.clone());
        clocks.insert(id, clock.clone());
        let host = hosts::NodeHost { id, store, clock, config: hosts::node_config(opts, id) };
        let sh = shared.clone();
        sim.host(net::node_host(id), move || host.clone().run(sh.clone()));
        hosts.push(net::node_host(id));
    }
    for c in 1..=opts.clients {
        let (o, sh) = (opts.clone(), shared.clone());
        lock(shared).history.progress.insert(format!("c{c}"), 0);
        sim.host(format!("c{c}"), move || workload::run(c, o.clone(), sh.clone()));
        hosts.push(format!("c{c}"));
    }
    for w in 1..=opts.workers {
        let (o, sh) = (opts.clone(), shared.clone());
        sim.host(format!("w{w}"), move || workers::run(w, o.clone(), sh.clone()));
        hosts.push(format!("w{w}"));
    }
    {
        let (o, sh) = (opts.clone(), shared.clone());
        sim.host("ctl", move || nemesis::control(o.clone(), sh.clone()));
        hosts.push("ctl".into());
    }
    let nemesis = Nemesis::new(opts, stores, clocks.clone(), hosts);
    (sim, clocks, nemesis)
}

/// One seed's run in progress: the simulation, its faults, its checkers and what they have
/// seen so far.
struct Run<'a> {
    opts: &'a Options,
    shared: Shared,
    sim: turmoil::Sim<'static>,
    clocks: BTreeMap<u64, SimClock>,
    nemesis: Nemesis,
    checks: Vec<Box<dyn Invariant>>,
    liveness: invariants::liveness::Liveness,
    observer: Observer,
    healed_at: Option<u64>,
    converge_started: u64,
    /// Simulated time at the latest step.
    t: u64,
}

impl<'a> Run<'a> {
    fn new(opts: &'a Options) -> Run<'a> {
        let shared = World::new(opts.keep_trace);
        let (sim, clocks, nemesis) = build(opts, &shared);
        Run {
            opts,
            shared,
            sim,
            clocks,
            nemesis,
            checks: invariants::all(),
            liveness: invariants::liveness::Liveness::default(),
            observer: Observer::default(),
            healed_at: None,
            converge_started: 0,
            t: 0,
        }
    }

    /// Steps until the replicas converge (their final states) or an invariant breaks; no
    /// final states if the deadline comes first.
    fn steps(&mut self) -> Result<Vec<Final>, Violation> {
        for _ in 0..self.opts.deadline_ms() {
            if let Some(finals) = self.step()? {
                return Ok(finals);
            }
        }
        Ok(Vec::new())
    }

    /// One 1 ms step: the phase moves on, the nemesis acts, the hosts run, and every checker
    /// looks at the outcome. `Some`: the replicas have converged, with these final states.
    fn step(&mut self) -> Result<Option<Vec<Final>>, Violation> {
        self.t = self.sim.elapsed().as_millis() as u64;
        for c in self.clocks.values() {
            c.set_now(self.t);
        }
        self.advance_phase();
        self.nemesis.before_step(&mut self.sim, self.t, &self.shared);
        if let Err(e) = self.sim.step() {
            return Err(Violation::new("host-software", format!("a host failed: {e}"), self.t));
        }
        self.t = self.sim.elapsed().as_millis() as u64;
        if let Some(p) = PANICS.with(|p| p.borrow().as_ref().and_then(|l| l.first().cloned())) {
            return Err(Violation::new("no-panic", format!("a host panicked: {p}"), self.t));
        }
        let records = self.observer.drain(&self.shared, self.t);
        let reps = replicas(&self.shared, &self.clocks, self.t, &mut self.observer);
        let (writes, reads, phase) = {
            let mut w = lock(&self.shared);
            w.applied_max = w.applied_max.max(reps.iter().map(|r| r.applied).max().unwrap_or(0));
            (std::mem::take(&mut w.new_writes), std::mem::take(&mut w.history.reads), w.phase)
        };
        self.check_step(phase, &reps, &records, &writes, &reads)?;
        if phase == Phase::Converge {
            return self.converged(&reps);
        }
        Ok(None)
    }

    /// Chaos ends (faults healed) at `chaos_ms`; liveness ends once every client made
    /// progress or `liveness_ms` after the heal, and convergence begins.
    fn advance_phase(&mut self) {
        let t = self.t;
        let phase = lock(&self.shared).phase;
        if phase == Phase::Chaos && t >= self.opts.chaos_ms {
            self.nemesis.heal(&mut self.sim, t, &self.shared);
            self.healed_at = Some(t);
            lock(&self.shared).phase = Phase::Liveness;
        } else if phase == Phase::Liveness {
            let clients = self.opts.clients as usize;
            if self.liveness.satisfied(clients) || t >= self.healed_at.unwrap_or(0) + self.opts.liveness_ms {
                lock(&self.shared).phase = Phase::Converge;
                lock(&self.shared).trace.event(t, "phase", format_args!("converge"));
                self.converge_started = t;
            }
        }
    }

    /// Every invariant, then liveness, on what this step showed.
    fn check_step(
        &mut self,
        phase: Phase,
        reps: &[Replica],
        records: &[(u64, Arc<Applied>)],
        writes: &[(String, fenced::FencedWrite)],
        reads: &[world::ReadObs],
    ) -> Result<(), Violation> {
        let t = self.t;
        let w = lock(&self.shared);
        let obs = Obs {
            t_ms: t,
            phase,
            healed_at_ms: self.healed_at,
            replicas: reps,
            records,
            applied: &self.observer.applied,
            writes,
            reads,
            history: &w.history,
            leader_clock_max_ms: self.observer.leader_clock_max_ms,
            healthy_since_ms: self.nemesis.healthy_since_ms,
        };
        for c in self.checks.iter_mut() {
            c.on_step(&obs).map_err(|m| Violation::new(c.name(), m, t))?;
        }
        self.liveness.on_step(&obs).map_err(|m| Violation::new(self.liveness.name(), m, t))
    }

    /// In the converge phase: every replica's final state once all are up, agree and have
    /// applied something, 2 s into the phase; a violation once `converge_ms` has passed.
    fn converged(&mut self, reps: &[Replica]) -> Result<Option<Vec<Final>>, Violation> {
        let t = self.t;
        let all_up = reps.len() as u64 == self.opts.nodes;
        let same = reps.windows(2).all(|p| p[0].applied == p[1].applied);
        let nodes: Vec<(u64, Arc<Node>)> = lock(&self.shared).nodes.iter().map(|(k, v)| (*k, v.clone())).collect();
        if all_up && same && reps.first().is_some_and(|r| r.applied > 0) && t >= self.converge_started + 2_000 {
            let finals = nodes.iter().map(|(id, n)| final_state(*id, n)).collect();
            lock(&self.shared).phase = Phase::Done;
            return Ok(Some(finals));
        }
        if t >= self.converge_started + self.opts.converge_ms {
            let applied: Vec<String> = reps.iter().map(|r| format!("n{}@{}", r.id, r.applied)).collect();
            return Err(Violation::new(
                "replicas-converge",
                format!("replicas did not catch up within {}ms: {}", self.opts.converge_ms, applied.join(" ")),
                t,
            ));
        }
        Ok(None)
    }

    /// Every invariant's end check, then liveness's, on the replicas' final states.
    fn check_end(&mut self, finals: &[Final]) -> Option<Violation> {
        let t = self.t;
        let w = lock(&self.shared);
        let end = End {
            t_ms: t,
            healed_at_ms: self.healed_at.unwrap_or(0),
            replicas: finals,
            applied: &self.observer.applied,
            history: &w.history,
        };
        for c in self.checks.iter_mut() {
            if let Err(m) = c.at_end(&end) {
                return Some(Violation::new(c.name(), m, t));
            }
        }
        self.liveness.at_end(&end).err().map(|m| Violation::new(self.liveness.name(), m, t))
    }

    /// Ends the run: the violation (if any) goes into the trace, the report is taken, and
    /// every host is dropped while the simulation is still alive.
    fn finish(self, violation: Option<Violation>) -> Report {
        let (opts, t) = (self.opts, self.t);
        lock(&self.shared).phase = Phase::Done;
        let mut w = lock(&self.shared);
        if let Some(v) = &violation {
            w.trace.event(v.t_ms, "VIOLATION", format_args!("{}: {}", v.invariant, v.message));
        }
        let fenced_writes = w.fenced.values().map(|f| f.accepted + f.rejected).sum();
        let fenced_rejected = w.fenced.values().map(|f| f.rejected).sum();
        let report = Report {
            seed: opts.seed,
            nodes: opts.nodes,
            chaos_ms: opts.chaos_ms,
            faults_enabled: opts.faults,
            focus: opts.focus,
            trace_hash: w.trace.hash(),
            trace_lines: w.trace.lines(),
            ops: w.history.ops,
            grants_acked: w.history.grants.len() as u64,
            fenced_writes,
            fenced_rejected,
            faults: self.nemesis.total(),
            faults_by_kind: self.nemesis.injected.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            sim_ms: t,
            applied_index: self.observer.applied.keys().next_back().copied().unwrap_or(0),
            snapshot_installs: self.observer.snapshot_installs,
            violation,
            trace_tail: w.trace.tail().cloned().collect(),
            trace_all: w.trace.all().map(|a| a.to_vec()),
        };
        drop(w);
        // Drop every host (and the node handles) while the simulation is still alive.
        lock(&self.shared).nodes.clear();
        drop(self.sim);
        report
    }
}

/// A replica's final state, for the end checks.
fn final_state(id: u64, node: &Node) -> Final {
    node.shared.read(|d| Final {
        id,
        applied: d.last_applied.map_or(0, |l| l.index),
        snapshot: d.state.snapshot(),
        grants: d.state.grants().collect(),
        tasks: d
            .state
            .tasks()
            .iter()
            .map(|t| {
                (
                    t.id.0,
                    FinalTask {
                        status: t.status,
                        attempt: t.attempt,
                        output: String::from_utf8_lossy(&t.output).into_owned(),
                        checkpoint: t.checkpoint.as_ref().map(|c| (c.attempt, c.seq)),
                    },
                )
            })
            .collect(),
    })
}
