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
//!
//! - `supervisor_actor.rs`: the supervisor actor; `agent_actor.rs`: the agent actors;
//! - `leases.rs`: acquire, extend, release; `report.rs`: reports as stream messages;
//! - `connection.rs`: register, serve the stream, reconnect.

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

mod agent_actor;
mod connection;
mod leases;
mod report;
mod supervisor_actor;

use agent_actor::*;
pub use connection::{run, run_with};
use leases::*;
use report::*;
pub use supervisor_actor::SupMsg;
use supervisor_actor::*;
