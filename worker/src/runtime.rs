//! The worker process: one gRPC stream to the coordinators, a ractor supervisor actor, one
//! agent actor per slot.
//!
//! ```text
//!   connection task ──Down(msg)──▶ SupervisorActor ──Event──▶ AgentActor "<node>/<role>-<i>"
//!        ▲  reconnects with backoff,        │ performs the pure Supervisor's     │
//!        │  resends unacknowledged results  │ actions (assign, park, resume,     │
//!        │                                  │ restart with backoff, release)     │
//!        └────────────── up: WorkerMessage (progress, checkpoints, results) ◀────┘
//! ```
//!
//! The supervisor actor keeps the pure [`supervisor::Supervisor`] (the simulator's studies
//! drive the same one). Each agent keeps the pure [`Agent`] logic and performs its actions: acquire (an atomic
//! set, waiting, owner `task-<id>`, kept alive by extends while held), run the executor,
//! release, report. The worker's session belongs to the stream: it survives reconnects
//! (Register names it again), and if the worker dies it expires and the coordinator
//! requeues the worker's tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's clock, not the OS's: the same in production, simulated time in the simulator.
use tokio::time::Instant;

use futures::StreamExt;
use qm_shared::agent::task_owner;
use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use qm_shared::Role;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::mpsc;

use crate::agent::{Action, Agent, Assignment, Event, Lease, Outcome, Report};
use crate::executor::{self, Control, ExecConfig, ExecEvent, ExecRequest, ExecResult, Usage};
pub use crate::supervisor::AcquireError;
use crate::supervisor::{self, SupAction, SupEvent};

/// Lease asked for each task resource; extended every third of it while held.
pub const TASK_LEASE_MS: u64 = 60_000;
/// Reconnect backoff.
pub const RECONNECT_BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Messages buffered from agents toward the stream.
const UP_BUFFER_LEN: usize = 1_024;

/// What a worker offers.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub node_id: String,
    pub slots: BTreeMap<Role, u32>,
    pub labels: BTreeMap<String, String>,
    pub session_ttl_ms: u64,
    /// An acquire queued this long reports Blocked and frees its agent for other work.
    pub blocked_after_ms: u64,
    /// Model providers this worker reaches.
    pub providers: Vec<pb::ModelProvider>,
    /// GPUs on this box (see [`crate::gpu::detect_gpus`]).
    pub gpus: Vec<pb::Gpu>,
    /// What the builtin executors may do here: enabled executors, the environment children
    /// see, the work root, limits, provider URLs and keys (see [`executor::ExecConfig`]).
    pub exec: ExecConfig,
}

/// What agents share with the supervisor and the connection.
#[derive(Debug, Default)]
struct Book {
    /// Task → (slot, attempt, leases held); the slot is [`PARKED`] while the task waits
    /// for resources without an agent.
    running: BTreeMap<u64, (String, u32, Vec<u64>)>,
    /// Pending acquire request by task.
    pending: BTreeMap<u64, u64>,
}

/// The slot name of a parked task.
const PARKED: &str = "(parked)";

/// The executor seam: what runs a task once its agent holds the resources. Production uses
/// [`executor::run`] ([`Executor::builtin`]); the simulator wraps it to also write to its
/// fenced resources and to hang.
#[derive(Clone)]
pub struct Executor(Arc<ExecFn>);

/// What an [`Executor`] calls: the request, where to send events, where controls arrive.
pub type ExecFn = dyn Fn(ExecRequest, mpsc::Sender<ExecEvent>, mpsc::Receiver<Control>) -> futures::future::BoxFuture<'static, ExecResult>
    + Send
    + Sync;

impl Executor {
    /// The executors of [`executor::run`] (scripted, and command and llm where `config`
    /// enables them).
    pub fn builtin(config: ExecConfig) -> Executor {
        let config = Arc::new(config);
        Executor::new(move |req, events, control| Box::pin(executor::run(config.clone(), req, events, control)))
    }

    pub fn new(
        f: impl Fn(
                ExecRequest,
                mpsc::Sender<ExecEvent>,
                mpsc::Receiver<Control>,
            ) -> futures::future::BoxFuture<'static, ExecResult>
            + Send
            + Sync
            + 'static,
    ) -> Executor {
        Executor(Arc::new(f))
    }
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Executor")
    }
}

#[derive(Clone)]
struct Shared {
    client: Client,
    executor: Executor,
    session: Arc<AtomicU64>,
    up: mpsc::Sender<pb::WorkerMessage>,
    book: Arc<Mutex<Book>>,
    started: Instant,
    blocked_after: Duration,
    /// The spec of each role's agents as `name@version`, reported with each result.
    specs: Arc<BTreeMap<Role, String>>,
}

impl Shared {
    fn session(&self) -> u64 {
        self.session.load(Ordering::SeqCst)
    }
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

// ------------------------------------------------------------------ agent actor

#[derive(Debug)]
pub enum AgentMsg {
    Event(Event),
}

struct AgentActor;

struct AgentState {
    /// Its slot's index in the supervisor, and its name (`<node>/<role>-<i>`).
    index: usize,
    slot: String,
    /// Its spec as `name@version` (empty: none).
    spec: String,
    logic: Agent,
    shared: Shared,
    supervisor: ActorRef<SupMsg>,
    control: Option<mpsc::Sender<Control>>,
    extender: Option<tokio::task::JoinHandle<()>>,
}

impl Actor for AgentActor {
    type Msg = AgentMsg;
    type State = AgentState;
    type Arguments = (usize, String, Role, Shared, ActorRef<SupMsg>);

    async fn pre_start(
        &self,
        _myself: ActorRef<AgentMsg>,
        (index, slot, role, shared, supervisor): Self::Arguments,
    ) -> Result<AgentState, ActorProcessingErr> {
        let spec = shared.specs.get(&role).cloned().unwrap_or_default();
        Ok(AgentState { index, slot, spec, logic: Agent::new(), shared, supervisor, control: None, extender: None })
    }

    async fn handle(
        &self,
        myself: ActorRef<AgentMsg>,
        msg: AgentMsg,
        st: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        let AgentMsg::Event(event) = msg;
        // The task this event is about, for telling the supervisor when it is done with it.
        let task = match &event {
            Event::Assigned(a) | Event::Resume(a, _) => Some(a.task),
            _ => st.logic.current().map(|(task, _)| task),
        };
        let granted = match &event {
            Event::Granted(leases) => st.logic.current().map(|(task, _)| (task, leases.clone())),
            Event::Resume(a, leases) => Some((a.task, leases.clone())),
            _ => None,
        };
        if let Some((task, leases)) = granted {
            let ids: Vec<u64> = leases.iter().map(|l| l.id).collect();
            let mut book = st.shared.book.lock().expect("book");
            book.pending.remove(&task);
            if let Some(entry) = book.running.get_mut(&task) {
                entry.0 = st.slot.clone();
                entry.2 = ids.clone();
            }
            drop(book);
            st.extender = Some(tokio::spawn(keep_leases(st.shared.clone(), ids)));
        }
        if let Event::Assigned(a) = &event {
            st.shared.book.lock().expect("book").running.insert(a.task, (st.slot.clone(), a.attempt, Vec::new()));
        }
        let now = st.shared.now_ms();
        for action in st.logic.on_event(event, now) {
            perform(&myself, st, action).await;
        }
        if st.logic.is_idle() {
            if let Some(x) = st.extender.take() {
                x.abort();
            }
            st.control = None;
            st.shared.book.lock().expect("book").running.retain(|_, (slot, _, _)| *slot != st.slot);
            if let Some(task) = task {
                let _ = st.supervisor.cast(SupMsg::Idle { slot: st.index, task });
            }
        }
        Ok(())
    }
}

async fn perform(myself: &ActorRef<AgentMsg>, st: &mut AgentState, action: Action) {
    let shared = st.shared.clone();
    match action {
        Action::Acquire { task, resources, priority } => {
            // The outcome goes to the supervisor: by then the task may be parked.
            let supervisor = st.supervisor.clone();
            tokio::spawn(async move {
                let result = acquire(&shared, task, resources, priority).await;
                let _ = supervisor.cast(SupMsg::AcquireDone { task, result });
            });
            let after = st.shared.blocked_after;
            myself.send_after(after, move || AgentMsg::Event(Event::BlockedTimeout(task)));
        }
        Action::Park { a, retry } => {
            if let Some(entry) = shared.book.lock().expect("book").running.get_mut(&a.task) {
                entry.0 = PARKED.to_string();
                entry.2.clear();
            }
            let _ = st.supervisor.cast(SupMsg::Parked { slot: st.index, a, retry });
        }
        Action::CancelAcquire { task } => {
            let pending = shared.book.lock().expect("book").pending.remove(&task);
            if let Some(request) = pending {
                tokio::spawn(async move {
                    let target = Some(pb::release_request::Target::RequestId(request));
                    let _ = shared.client.release(pb::ReleaseRequest { session_id: shared.session(), target }).await;
                });
            }
        }
        Action::Start(req) => {
            let (events_tx, mut events_rx) = mpsc::channel(64);
            let (control_tx, control_rx) = mpsc::channel(4);
            st.control = Some(control_tx);
            let me = myself.clone();
            tokio::spawn(async move {
                let run = tokio::spawn((shared.executor.0)(req, events_tx, control_rx));
                while let Some(ev) = events_rx.recv().await {
                    let _ = me.cast(AgentMsg::Event(Event::Exec(ev)));
                }
                let result = run.await.unwrap_or_else(|e| executor::ExecResult {
                    outcome: executor::ExecOutcome::Failed,
                    output: Vec::new(),
                    error: format!("executor panicked: {e}"),
                    usage: Usage::default(),
                });
                let _ = me.cast(AgentMsg::Event(Event::ExecDone(result)));
            });
        }
        Action::Control(c) => {
            if let Some(control) = &st.control {
                let _ = control.send(c).await;
            }
        }
        Action::Release(ids) => release_all(&shared, ids).await,
        Action::Report { task, attempt, report } => {
            let _ = shared.up.send(report_msg((&st.slot, &st.spec), task, attempt, report)).await;
        }
    }
}

async fn release_all(shared: &Shared, ids: Vec<u64>) {
    for id in ids {
        let target = Some(pb::release_request::Target::ReservationId(id));
        let req = pb::ReleaseRequest { session_id: shared.session(), target };
        if let Err(e) = shared.client.release(req).await {
            tracing::warn!(reservation = id, error = %e, "release failed; the lease will expire");
        }
    }
}

/// Extends `ids` every third of the lease while the task holds them.
async fn keep_leases(shared: Shared, ids: Vec<u64>) {
    loop {
        tokio::time::sleep(Duration::from_millis(TASK_LEASE_MS / 3)).await;
        for id in &ids {
            let req = pb::ExtendRequest { reservation_id: *id, session_id: shared.session(), lease_ms: TASK_LEASE_MS };
            let _ = shared.client.extend(req).await;
        }
    }
}

/// Acquires `resources` as one atomic set, waiting until granted.
async fn acquire(
    shared: &Shared,
    task: u64,
    resources: Vec<(String, bool, u32)>,
    priority: u32,
) -> Result<Vec<Lease>, AcquireError> {
    acquire_set(shared, task, resources, priority).await.map_err(|e| match e.strip_prefix(DEADLOCK) {
        Some(why) => AcquireError::Deadlock(why.to_string()),
        None => AcquireError::Failed(e),
    })
}

const DEADLOCK: &str = "deadlock:";

async fn acquire_set(
    shared: &Shared,
    task: u64,
    resources: Vec<(String, bool, u32)>,
    priority: u32,
) -> Result<Vec<Lease>, String> {
    let owner = task_owner(task);
    let session = shared.session();
    // Watch first, so the grant cannot slip between the answer and the watch.
    let mut events = shared
        .client
        .watch(pb::WatchRequest { session_id: Some(session), owner: Some(owner.clone()), ..Default::default() })
        .await
        .map_err(|s| s.message().to_string())?;
    let wanted = resources.len();
    let req = pb::AcquireRequest {
        session_id: session,
        owner,
        resources: resources
            .into_iter()
            .map(|(path, exclusive, units)| pb::ResourceRequest {
                path,
                mode: if exclusive { pb::Mode::Exclusive } else { pb::Mode::Shared } as i32,
                units: if units <= 1 { 0 } else { units },
            })
            .collect(),
        kind: pb::AcquireKind::Wait as i32,
        priority,
        lease_ms: TASK_LEASE_MS,
        wait_timeout_ms: None,
    };
    use pb::acquire_response::Outcome as O;
    match shared.client.acquire(req).await.map_err(|s| s.message().to_string())?.outcome {
        Some(O::Granted(g)) => Ok(leases_of(g.reservations)),
        Some(O::Queued(q)) => {
            shared.book.lock().expect("book").pending.insert(task, q.request_id);
            let waited = wait_for_grant(&mut events, q.request_id, wanted).await;
            // Timed out, cancelled or a victim: the request is gone, and a later CancelAcquire
            // must not name it. (A grant is cleared when the agent takes its leases, so a
            // cancel before then still releases them by request.)
            if waited.is_err() {
                let mut book = shared.book.lock().expect("book");
                if book.pending.get(&task) == Some(&q.request_id) {
                    book.pending.remove(&task);
                }
            }
            waited
        }
        Some(O::Refused(r)) if r.reason == pb::RefusalReason::Deadlock as i32 => {
            Err(format!("{DEADLOCK}refused as closing a cycle"))
        }
        Some(O::Refused(r)) => Err(format!("refused: {:?}", pb::RefusalReason::try_from(r.reason).unwrap_or_default())),
        None => Err("empty answer".into()),
    }
}

fn leases_of(rs: Vec<pb::Reservation>) -> Vec<Lease> {
    rs.into_iter().map(|r| Lease { id: r.id, fencing_token: r.fencing_token }).collect()
}

/// Waits on the watch stream until every item of queued request `request` is granted.
/// A set is granted whole in one apply, but watchers see one event per item: collect them
/// all, or the leases after the first would be held for nobody.
async fn wait_for_grant(
    events: &mut tonic::Streaming<pb::WatchEvent>,
    request: u64,
    wanted: usize,
) -> Result<Vec<Lease>, String> {
    use pb::watch_event::Kind;
    let mut granted = Vec::with_capacity(wanted);
    while let Some(ev) = events.next().await {
        match ev.map_err(|s| s.message().to_string())?.kind {
            Some(Kind::Granted(g)) if g.request_id == request => {
                granted.extend(leases_of(g.reservations));
                if granted.len() >= wanted {
                    return Ok(granted);
                }
            }
            Some(Kind::TimedOut(t)) if t.request_id == request => return Err("the wait timed out".into()),
            Some(Kind::Cancelled(c)) if c.request_id == request => return Err("the wait was cancelled".into()),
            Some(Kind::DeadlockVictim(d)) if d.request_id == request => {
                return Err(format!("{DEADLOCK}cycle {}", d.cycle_owners.join(" → ")))
            }
            _ => {}
        }
    }
    Err("the watch stream ended while waiting".into())
}

fn usage_pb(u: Usage) -> Vec<pb::TokenUsage> {
    if u == Usage::default() {
        return Vec::new();
    }
    vec![pb::TokenUsage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cached_tokens: u.cached_tokens,
        estimated: u.estimated,
        reported_cost_micros: u.reported_micros,
        ..Default::default()
    }]
}

/// `by` is the agent and its spec (`name@version`), empty where no agent ran it.
fn report_msg(by: (&str, &str), task_id: u64, attempt: u32, report: Report) -> pb::WorkerMessage {
    let (agent, spec) = by;
    use pb::worker_message::{Checkpoint, Msg, Progress, TaskResult};
    let msg = match report {
        Report::Progress { percent, stage, usage } => Msg::Progress(Progress {
            task_id,
            attempt,
            stage,
            message: String::new(),
            percent_done: percent,
            usage: usage_pb(usage),
        }),
        Report::Checkpoint { seq, data, for_preemption } => {
            Msg::Checkpoint(Checkpoint { task_id, attempt, seq, data, for_preemption })
        }
        Report::Blocked { message } => Msg::Blocked(pb::worker_message::Blocked {
            task_id,
            attempt,
            resources: Vec::new(),
            holders: Vec::new(),
            request_id: 0,
            message,
        }),
        Report::Result { outcome, output, error, usage, wall_ms } => Msg::Result(TaskResult {
            task_id,
            attempt,
            outcome: match outcome {
                Outcome::Succeeded => pb::TaskOutcome::Succeeded,
                Outcome::Failed => pb::TaskOutcome::Failed,
                Outcome::Cancelled => pb::TaskOutcome::Cancelled,
                Outcome::Preempted => pb::TaskOutcome::Preempted,
                Outcome::TimedOut => pb::TaskOutcome::TimedOut,
            } as i32,
            output,
            error,
            usage: usage_pb(usage),
            wall_time_ms: wall_ms,
            agent: agent.to_string(),
            spec: spec.to_string(),
        }),
    };
    pb::WorkerMessage { msg: Some(msg) }
}

// ------------------------------------------------------------------ supervisor

#[derive(Debug)]
pub enum SupMsg {
    /// A message from the coordinator.
    Down(pb::CoordinatorMessage),
    /// Tasks the coordinator says are no longer ours.
    Abandon(Vec<u64>),
    /// The agent of `slot` is done with `task`.
    Idle { slot: usize, task: u64 },
    /// Start the agent of `slot` again (after its backoff).
    Restart(usize),
    /// An agent handed over a task whose acquire waits (or, `retry`, must be made again).
    Parked { slot: usize, a: Assignment, retry: bool },
    /// An acquire finished (for an agent's task or a parked one).
    AcquireDone { task: u64, result: Result<Vec<Lease>, AcquireError> },
    /// A parked task's retry pause is over.
    RetryDue(u64),
}

/// The actor around the pure [`supervisor::Supervisor`]: it turns messages into its events
/// and performs its actions (agent messages, gRPC calls, timers).
struct SupervisorActor;

struct SupState {
    shared: Shared,
    logic: supervisor::Supervisor,
    /// Each slot's agent name, `<node>/<role>-<i>`.
    names: Vec<String>,
    /// Each slot's agent while it runs.
    agents: Vec<Option<ActorRef<AgentMsg>>>,
}

impl SupervisorActor {
    /// Starts the agent of `slot`; `false` if it could not start.
    async fn spawn_agent(myself: &ActorRef<SupMsg>, st: &mut SupState, slot: usize) -> bool {
        let name = st.names[slot].clone();
        let role = st.logic.slots()[slot].role;
        let args = (slot, name.clone(), role, st.shared.clone(), myself.clone());
        match Actor::spawn_linked(Some(name.clone()), AgentActor, args, myself.get_cell()).await {
            Ok((agent, _)) => {
                st.agents[slot] = Some(agent);
                true
            }
            Err(e) => {
                tracing::error!(slot = %name, error = %e, "agent failed to start");
                false
            }
        }
    }

    /// Feeds `event` to the supervisor logic and performs what it asks.
    async fn step(myself: &ActorRef<SupMsg>, st: &mut SupState, event: SupEvent) {
        let now = st.shared.now_ms();
        for action in st.logic.on_event(event, now) {
            SupervisorActor::perform(myself, st, action).await;
        }
    }

    async fn perform(myself: &ActorRef<SupMsg>, st: &mut SupState, action: SupAction) {
        match action {
            SupAction::Agent { slot, event } => {
                match &event {
                    Event::Assigned(a) => {
                        tracing::info!(task = a.task, attempt = a.attempt, slot = %st.names[slot], "assigned")
                    }
                    Event::Resume(a, _) => {
                        tracing::info!(task = a.task, slot = %st.names[slot], "resources granted: resuming the parked task")
                    }
                    _ => {}
                }
                if let Some(agent) = &st.agents[slot] {
                    let _ = agent.cast(AgentMsg::Event(event));
                }
            }
            SupAction::Acquire { task, resources, priority } => {
                let (shared, me) = (st.shared.clone(), myself.clone());
                tokio::spawn(async move {
                    let result = acquire(&shared, task, resources, priority).await;
                    let _ = me.cast(SupMsg::AcquireDone { task, result });
                });
            }
            SupAction::RetryAfter { task, after_ms } => {
                myself.send_after(Duration::from_millis(after_ms), move || SupMsg::RetryDue(task));
            }
            SupAction::CancelAcquire { task } => {
                let pending = st.shared.book.lock().expect("book").pending.remove(&task);
                if let Some(request) = pending {
                    let target = Some(pb::release_request::Target::RequestId(request));
                    let req = pb::ReleaseRequest { session_id: st.shared.session(), target };
                    let _ = st.shared.client.release(req).await;
                }
            }
            SupAction::Release(ids) => release_all(&st.shared, ids).await,
            SupAction::Forget { task } => {
                st.shared.book.lock().expect("book").running.remove(&task);
            }
            SupAction::Report { task, attempt, report } => {
                let _ = st.shared.up.send(report_msg(("", ""), task, attempt, report)).await;
            }
            SupAction::Lost { slot, task, attempt, why } => {
                let leases = st.shared.book.lock().expect("book").running.remove(&task).map(|(_, _, l)| l);
                release_all(&st.shared, leases.unwrap_or_default()).await;
                let name = &st.names[slot];
                let report = Report::Result {
                    outcome: Outcome::Failed,
                    output: Vec::new(),
                    error: format!("agent {name} failed: {why}"),
                    usage: Usage::default(),
                    wall_ms: 0,
                };
                let _ = st.shared.up.send(report_msg((name, ""), task, attempt, report)).await;
            }
            SupAction::Restart { slot, after_ms } => {
                myself.send_after(Duration::from_millis(after_ms), move || SupMsg::Restart(slot));
            }
        }
    }
}

impl Actor for SupervisorActor {
    type Msg = SupMsg;
    type State = SupState;
    type Arguments = (WorkerConfig, Shared);

    async fn pre_start(
        &self,
        myself: ActorRef<SupMsg>,
        (config, shared): Self::Arguments,
    ) -> Result<SupState, ActorProcessingErr> {
        let logic = supervisor::Supervisor::new(&config.slots, supervisor::Policy::default());
        let names: Vec<String> =
            logic.slots().iter().map(|s| format!("{}/{}-{}", config.node_id, s.role, s.index)).collect();
        let agents = vec![None; names.len()];
        let mut st = SupState { shared, logic, names, agents };
        for slot in 0..st.names.len() {
            if !SupervisorActor::spawn_agent(&myself, &mut st, slot).await {
                let why = "failed to start".to_string();
                SupervisorActor::step(&myself, &mut st, SupEvent::Down { slot, why }).await;
            }
        }
        Ok(st)
    }

    async fn handle(&self, myself: ActorRef<SupMsg>, msg: SupMsg, st: &mut SupState) -> Result<(), ActorProcessingErr> {
        use pb::coordinator_message::Msg;
        let event = match msg {
            SupMsg::Down(m) => match m.msg {
                Some(Msg::Assignment(a)) => {
                    let Ok(role) = a.role.parse::<Role>() else {
                        tracing::warn!(role = %a.role, task = a.task_id, "assignment with a malformed role");
                        return Ok(());
                    };
                    SupEvent::Assigned(Assignment {
                        task: a.task_id,
                        role,
                        attempt: a.attempt,
                        resources: a
                            .resources
                            .iter()
                            .map(|r| (r.path.clone(), r.mode == pb::Mode::Exclusive as i32, r.units.max(1)))
                            .collect(),
                        payload: a.payload,
                        priority: a.priority,
                        resume: (!a.resume_checkpoint.is_empty()).then_some(a.resume_checkpoint),
                        timeout_ms: a.timeout_ms,
                        incremental: a.incremental,
                        provider: a.provider,
                        model: a.model,
                    })
                }
                Some(Msg::PreemptNotice(p)) => {
                    tracing::info!(task = p.task_id, grace_ms = p.grace_ms, "preemption notice: checkpointing");
                    SupEvent::Preempt(p.task_id)
                }
                Some(Msg::Cancel(c)) => SupEvent::Cancel(c.task_id),
                _ => return Ok(()),
            },
            SupMsg::Abandon(tasks) => SupEvent::Abandon(tasks),
            SupMsg::Parked { slot, a, retry } => {
                tracing::info!(task = a.task, retry, "blocked on resources: parked; the agent takes other work");
                SupEvent::Parked { slot, a, retry }
            }
            SupMsg::AcquireDone { task, result } => SupEvent::AcquireDone { task, result },
            SupMsg::RetryDue(task) => SupEvent::RetryDue(task),
            SupMsg::Idle { slot, task } => SupEvent::Idle { slot, task },
            SupMsg::Restart(slot) => {
                if !SupervisorActor::spawn_agent(&myself, st, slot).await {
                    SupEvent::Down { slot, why: "failed to start".into() }
                } else {
                    SupEvent::Up(slot)
                }
            }
        };
        SupervisorActor::step(&myself, st, event).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupMsg>,
        event: SupervisionEvent,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        // Explicit policy (ractor's default would stop this supervisor): a failed agent's
        // task is reported failed and its leases released, then the slot restarts after the
        // supervisor logic's backoff, or stays down after too many restarts.
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.unwrap_or_else(|| "stopped".into())),
            _ => return Ok(()),
        };
        let Some(slot) = st.agents.iter().position(|a| a.as_ref().is_some_and(|a| a.get_id() == cell.get_id())) else {
            return Ok(());
        };
        tracing::warn!(slot = %st.names[slot], reason = %why, "agent stopped; restarting with backoff");
        st.agents[slot] = None;
        SupervisorActor::step(&myself, st, SupEvent::Down { slot, why }).await;
        Ok(())
    }
}

// ------------------------------------------------------------------ connection

/// The slots per role a worker registers, with the tiers each role's agent spec gives.
fn role_slots(config: &WorkerConfig) -> Vec<pb::RoleSlots> {
    config
        .slots
        .iter()
        .map(|(role, n)| {
            let spec = config.exec.specs.get(role);
            pb::RoleSlots {
                role: role.to_string(),
                slots: *n,
                tier: spec.map(|s| s.tier.to_string()).unwrap_or_default(),
                max_tier: spec.map(|s| s.escalation.max_tier.to_string()).unwrap_or_default(),
            }
        })
        .collect()
}

/// Runs the worker until `shutdown` resolves: connects, registers, serves assignments, and
/// on shutdown closes its session so its tasks are requeued at once.
pub async fn run(
    client: Client,
    config: WorkerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let executor = Executor::builtin(config.exec.clone());
    run_with(client, config, executor, shutdown).await
}

/// [`run`] with the executor seam set (the simulator's).
pub async fn run_with(
    client: Client,
    config: WorkerConfig,
    executor: Executor,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let (up_tx, mut up_rx) = mpsc::channel(UP_BUFFER_LEN);
    let shared = Shared {
        client: client.clone(),
        executor,
        session: Arc::new(AtomicU64::new(0)),
        up: up_tx,
        book: Arc::new(Mutex::new(Book::default())),
        started: Instant::now(),
        blocked_after: Duration::from_millis(config.blocked_after_ms),
        specs: Arc::new(config.exec.specs.iter().map(|(r, s)| (*r, format!("{}@{}", s.name, s.version))).collect()),
    };
    let (supervisor, handle) =
        Actor::spawn(Some(format!("{}/supervisor", config.node_id)), SupervisorActor, (config.clone(), shared.clone()))
            .await
            .map_err(|e| format!("starting the supervisor: {e}"))?;
    let connection = connect_loop(client.clone(), config.clone(), shared.clone(), supervisor.clone(), &mut up_rx);
    tokio::select! {
        _ = connection => {}
        _ = shutdown => {}
    }
    supervisor.stop(Some("shutting down".into()));
    let _ = handle.await;
    let session = shared.session();
    if session != 0 {
        let _ = client.close_session(session).await;
    }
    Ok(())
}

async fn connect_loop(
    client: Client,
    config: WorkerConfig,
    shared: Shared,
    supervisor: ActorRef<SupMsg>,
    up_rx: &mut mpsc::Receiver<pb::WorkerMessage>,
) {
    let mut backoff = RECONNECT_BACKOFF_FIRST;
    // Results not yet acknowledged, resent after a reconnect.
    let mut unacked: BTreeMap<(u64, u32), pb::WorkerMessage> = BTreeMap::new();
    loop {
        let register = {
            let running: Vec<u64> = shared.book.lock().expect("book").running.keys().copied().collect();
            pb::WorkerMessage {
                msg: Some(pb::worker_message::Msg::Register(pb::worker_message::Register {
                    node_id: config.node_id.clone(),
                    roles: role_slots(&config),
                    repos: config.exec.repos.keys().cloned().collect(),
                    clis: config.exec.clis.keys().cloned().collect(),
                    labels: config.labels.clone().into_iter().collect(),
                    model_providers: config.providers.clone(),
                    gpus: config.gpus.clone(),
                    engines: config
                        .exec
                        .engines
                        .iter()
                        .map(|e| match e {
                            executor::engine::Engine::Container => "container".to_string(),
                            executor::engine::Engine::Local => "local".to_string(),
                        })
                        .collect(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    running_task_ids: running,
                    session_ttl_ms: config.session_ttl_ms,
                    session_id: shared.session(),
                })),
            }
        };
        let (mut down, tx) = match client.connect_worker(register, UP_BUFFER_LEN).await {
            Ok(opened) => opened,
            Err(e) => {
                tracing::warn!(error = %e, "connecting to the coordinators failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                continue;
            }
        };
        let registered = match down.message().await {
            Ok(Some(pb::CoordinatorMessage { msg: Some(pb::coordinator_message::Msg::Registered(r)) })) => r,
            other => {
                tracing::warn!(answer = ?other.err(), "no registration answer; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                continue;
            }
        };
        backoff = RECONNECT_BACKOFF_FIRST;
        let previous = shared.session.swap(registered.session_id, Ordering::SeqCst);
        if previous != 0 && previous != registered.session_id {
            tracing::warn!(previous, now = registered.session_id, "the old session expired; its tasks were requeued");
            let lost: Vec<u64> = shared.book.lock().expect("book").running.keys().copied().collect();
            let _ = supervisor.cast(SupMsg::Abandon(lost));
            unacked.clear();
        }
        tracing::info!(session = registered.session_id, node_id = %config.node_id, "registered");
        if !registered.abandon_task_ids.is_empty() {
            let _ = supervisor.cast(SupMsg::Abandon(registered.abandon_task_ids.clone()));
        }
        for m in unacked.values() {
            let _ = tx.send(m.clone()).await;
        }
        let mut heartbeat = tokio::time::interval(Duration::from_millis(registered.heartbeat_interval_ms.max(100)));
        let mut seq = 0u64;
        loop {
            tokio::select! {
                m = down.message() => match m {
                    Ok(Some(m)) => {
                        if let Some(pb::coordinator_message::Msg::ResultAccepted(a)) = &m.msg {
                            unacked.remove(&(a.task_id, a.attempt));
                            continue;
                        }
                        let _ = supervisor.cast(SupMsg::Down(m));
                    }
                    Ok(None) | Err(_) => {
                        tracing::warn!(error = ?m.err(), "the coordinator stream ended; reconnecting");
                        break;
                    }
                },
                up = up_rx.recv() => {
                    let Some(up) = up else { return };
                    if let Some(pb::worker_message::Msg::Result(r)) = &up.msg {
                        unacked.insert((r.task_id, r.attempt), up.clone());
                    }
                    if tx.send(up).await.is_err() {
                        break;
                    }
                }
                _ = heartbeat.tick() => {
                    seq += 1;
                    let running: BTreeSet<u64> = shared.book.lock().expect("book").running.keys().copied().collect();
                    let hb = pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Heartbeat(pb::worker_message::Heartbeat {
                        seq,
                        running_task_ids: running.into_iter().collect(),
                        free_slots: Vec::new(),
                    }))};
                    if tx.send(hb).await.is_err() {
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}
