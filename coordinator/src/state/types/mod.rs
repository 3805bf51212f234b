//! Commands in, responses and effects out: the whole vocabulary of the replicated core.
//!
//! A [`Command`] is what the leader proposes (it stamps `now` beside it). [`apply`] turns it
//! into one [`Response`] for the proposer and a list of [`Effect`]s for everybody else
//! (watchers, workers, metrics). Refusals are responses, never errors.
//!
//! [`apply`]: super::State::apply

use qm_shared::{Invalid, Mode, ResourcePath};
use serde::{Deserialize, Serialize};

mod acl;
mod budget;
mod work;

pub use acl::*;
pub use budget::*;
pub use work::*;

/// Milliseconds since the Unix epoch, as stamped by the leader.
pub type Millis = u64;
/// A Raft log index.
pub type LogIndex = u64;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id_type!(
    /// A client or agent session, kept alive by heartbeats.
    SessionId,
    "s"
);
id_type!(
    /// A granted reservation (lease).
    ReservationId,
    "r"
);
id_type!(
    /// A pending (queued) acquire request.
    RequestId,
    "q"
);
id_type!(
    /// An owner: one `(session, owner name)` pair. The wait-for graph's nodes.
    OwnerId,
    "o"
);
id_type!(
    /// A task: one unit of agent work (a pass of a work item).
    TaskId,
    "t"
);
id_type!(
    /// A work item: a ticket flowing through a workflow's passes.
    JobId,
    "j"
);

/// What happens to a holder when a waiter far above it in priority is blocked by it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Policy {
    /// Wait.
    #[default]
    None,
    /// Ask the holder to checkpoint and release within a grace period, then revoke.
    Preempt,
    /// Raise the holder's effective priority to its highest waiter's until it releases.
    Inherit,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::None => "none",
            Policy::Preempt => "preempt",
            Policy::Inherit => "inherit",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        match s {
            "none" => Ok(Policy::None),
            "preempt" => Ok(Policy::Preempt),
            "inherit" => Ok(Policy::Inherit),
            _ => Err(Invalid::new("policy", format!("{s:?} is not one of none, preempt, inherit"))),
        }
    }
}

/// One resource of an acquire.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Item {
    pub path: ResourcePath,
    pub mode: Mode,
    /// Slots taken on a counted resource (ignored elsewhere). `exclusive` takes them all.
    pub units: u32,
}

/// How long an acquire may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wait {
    /// Fail fast: grant now or refuse naming the holders.
    Try,
    /// Queue; optionally time out after this many milliseconds.
    Wait { timeout_ms: Option<u64> },
}

/// An acquire of one resource or an atomic set (all-or-nothing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acquire {
    pub session: SessionId,
    pub owner: String,
    pub items: Vec<Item>,
    pub wait: Wait,
    pub priority: u32,
    pub lease_ms: u64,
}

/// A replicated command. The leader stamps `now` (and Raft the log index) beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    OpenSession {
        label: String,
        ttl_ms: u64,
        /// The principal that opened it: the only one (besides an operator) that may act on it.
        principal: String,
    },
    KeepAlive {
        session: SessionId,
    },
    CloseSession {
        session: SessionId,
    },
    Acquire(Acquire),
    Release {
        session: SessionId,
        reservation: ReservationId,
    },
    /// Withdraw a pending request.
    Cancel {
        session: SessionId,
        request: RequestId,
    },
    Extend {
        session: SessionId,
        reservation: ReservationId,
        lease_ms: u64,
    },
    /// Declare (or redeclare) a resource's capacity, policy and preemption grace.
    DeclareResource {
        path: ResourcePath,
        capacity: Option<u32>,
        policy: Policy,
        grace_ms: u64,
    },
    /// The leader's timer: expiries, grace ends, wait timeouts and aging.
    Tick,
    /// Change the replicated tunables (aging, preemption gap, queue bound, deadlock detection).
    Configure {
        config: super::Config,
    },
    /// Proposed first by a new leader: every lease and session restarts with a full TTL, so a
    /// failover never expires anything early.
    RestartLeases,
    /// Queue a task for an agent of its role.
    SubmitTask(TaskSpec),
    /// Stop a task: queued ones end at once, running ones are told to stop.
    CancelTask {
        task: TaskId,
    },
    /// A worker (re)announces itself on its session: the agent slots it hosts per role.
    /// Re-registering on the same session keeps its assignments.
    RegisterWorker(WorkerSpec),
    /// A worker reports on one attempt of a task it was assigned.
    ReportTask {
        session: SessionId,
        task: TaskId,
        attempt: u32,
        report: TaskReport,
    },
    /// Start a work item on its workflow.
    SubmitJob(Box<JobSpec>),
    /// Stop a work item: queued passes end, running ones are told to stop.
    CancelJob {
        job: JobId,
    },
    /// Run a failed (or cancelled) work item again from its unfinished passes.
    RetryJob {
        job: JobId,
    },
    /// A human's decision on a pass waiting for one (a human gate or a spend approval).
    DecideGate {
        job: JobId,
        pass: String,
        approve: bool,
        note: String,
        by: String,
    },
    /// Set (or change) a budget; a limit of 0 removes it.
    SetBudget {
        scope: Scope,
        name: String,
        limit_micros: u64,
        period: Period,
    },
    /// Register (or update) a project: its resources are declared, its providers' concurrency
    /// becomes counted resources `api:<provider>`.
    ApplyProject(Box<qm_shared::workflow::Project>),
    /// The first admin token of a fresh cluster; refused once the cluster has been bootstrapped.
    BootstrapAcl(Box<TokenSpec>),
    /// Add a token.
    CreateToken(Box<TokenSpec>),
    /// Remove a token by name.
    RevokeToken {
        name: String,
    },
    /// The leader measured the replicated state at `bytes` against its quota (etcd's NOSPACE):
    /// over the quota raises the storage alarm, at or under [`SPACE_ALARM_CLEAR_PERCENT`] of
    /// it clears the alarm. Proposed only by the leader itself.
    SpaceMeasured {
        bytes: u64,
        quota: u64,
    },
}

/// The storage alarm clears once the state is back at or under this share of its quota, so
/// that it does not flap at the boundary.
pub const SPACE_ALARM_CLEAR_PERCENT: u64 = 90;

/// The storage alarm: while raised, commands that add data are refused and the rest (release,
/// close, cancel, reports, time) still work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceAlarm {
    /// The state's size when last measured, and the quota it was measured against.
    pub bytes: u64,
    pub quota: u64,
    /// When it was raised.
    pub since: Millis,
}

impl SpaceAlarm {
    /// Whether a measurement of `bytes` against `quota` clears the alarm.
    pub fn clears_at(bytes: u64, quota: u64) -> bool {
        bytes.saturating_mul(100) <= quota.saturating_mul(SPACE_ALARM_CLEAR_PERCENT)
    }
}

impl Command {
    /// Whether the command can make the state larger (refused while the storage alarm is
    /// raised). Releasing, closing, cancelling, reporting, deciding, keeping alive and the
    /// leader's own duties can always run, so that a full cluster can drain.
    pub fn adds_data(&self) -> bool {
        match self {
            Command::OpenSession { .. }
            | Command::Acquire(_)
            | Command::DeclareResource { .. }
            | Command::SubmitTask(_)
            | Command::RegisterWorker(_)
            | Command::SubmitJob(_)
            | Command::RetryJob { .. }
            | Command::ApplyProject(_)
            | Command::BootstrapAcl(_)
            | Command::CreateToken(_) => true,
            Command::SetBudget { limit_micros, .. } => *limit_micros > 0,
            Command::KeepAlive { .. }
            | Command::CloseSession { .. }
            | Command::Release { .. }
            | Command::Cancel { .. }
            | Command::Extend { .. }
            | Command::Tick
            | Command::Configure { .. }
            | Command::RestartLeases
            | Command::CancelTask { .. }
            | Command::ReportTask { .. }
            | Command::CancelJob { .. }
            | Command::DecideGate { .. }
            | Command::RevokeToken { .. }
            | Command::SpaceMeasured { .. } => false,
        }
    }

    /// Whether only the leader itself proposes it (never a client, never a forwarding peer).
    pub fn is_internal(&self) -> bool {
        matches!(self, Command::Tick | Command::RestartLeases | Command::SpaceMeasured { .. })
    }
}

/// A granted reservation as reported to clients and in effects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantInfo {
    pub id: ReservationId,
    pub resource: ResourcePath,
    pub mode: Mode,
    pub units: u32,
    pub fencing_token: u64,
    pub owner: std::sync::Arc<str>,
    pub session: SessionId,
    pub priority: u32,
    pub granted_at: Millis,
    pub expires_at: Millis,
}

/// Who holds (or waits ahead on) something a request needs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HolderInfo {
    pub owner: String,
    pub session: SessionId,
    pub reservation: ReservationId,
    pub resource: ResourcePath,
    pub mode: Mode,
}

/// Why a command was refused. Refusals change nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// `try` found the resources held or queued ahead.
    Conflict {
        holders: Vec<HolderInfo>,
        /// Owners queued ahead whose requests conflict (no barging past them).
        waiting_ahead: Vec<super::OwnerRef>,
        queue_position: u32,
        estimated_wait_ms: u64,
    },
    /// The resource's wait queue is full: back off and retry.
    QueueFull {
        resource: ResourcePath,
        queue_len: u32,
        retry_after_ms: u64,
    },
    /// This wait request closed a wait-for cycle and was chosen as the victim.
    /// `cycle` names its first `CYCLE_REPORT_MAX` owners, starting with the one that closed
    /// it; `cycle_len` is its full length.
    Deadlock {
        cycle: Vec<String>,
        cycle_len: u32,
    },
    SessionUnknown {
        session: SessionId,
    },
    ReservationUnknown {
        reservation: ReservationId,
    },
    RequestUnknown {
        request: RequestId,
    },
    /// The owner already has a pending request; an owner waits on one thing at a time.
    AlreadyWaiting {
        request: RequestId,
    },
    TaskUnknown {
        task: TaskId,
    },
    /// A report for an attempt that is no longer the task's current one, or from a session
    /// the attempt is not assigned to: it changes nothing (a zombie's late word).
    StaleAttempt {
        task: TaskId,
        attempt: u32,
        current: u32,
    },
    /// The session registered no worker.
    NotAWorker {
        session: SessionId,
    },
    /// The task already ended.
    TaskEnded {
        task: TaskId,
    },
    JobUnknown {
        job: JobId,
    },
    /// The work item is not in a state the command applies to.
    JobState {
        job: JobId,
        status: String,
    },
    ProjectUnknown {
        project: String,
    },
    /// The pass is not waiting for a decision.
    NotAwaitingDecision {
        job: JobId,
        pass: String,
        status: String,
    },
    /// The cluster already has its first admin token.
    AclBootstrapped,
    TokenExists {
        name: String,
    },
    TokenUnknown {
        name: String,
    },
    /// A state-wide bound was reached (sessions, reservations, requests).
    Exhausted {
        what: String,
        max: u64,
    },
    /// The command broke a field rule. The edge checks first; the core checks again.
    /// The storage alarm is raised: the state is over its quota and this command adds data.
    NoSpace {
        bytes: u64,
        quota: u64,
    },
    Invalid(Invalid),
}

/// The answer to the proposer of a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    SessionOpened {
        session: SessionId,
        ttl_ms: u64,
        expires_at: Millis,
    },
    SessionKept {
        session: SessionId,
        expires_at: Millis,
    },
    SessionClosed {
        session: SessionId,
        released: u32,
        cancelled: u32,
    },
    Granted {
        grants: Vec<GrantInfo>,
    },
    Queued {
        request: RequestId,
        position: u32,
        estimated_wait_ms: u64,
    },
    Released {
        reservation: ReservationId,
    },
    Cancelled {
        request: RequestId,
    },
    Extended {
        reservation: ReservationId,
        expires_at: Millis,
    },
    ResourceDeclared {
        path: ResourcePath,
    },
    Ticked,
    LeasesRestarted {
        reservations: u32,
        sessions: u32,
    },
    Configured,
    TaskSubmitted {
        task: TaskId,
    },
    TaskCancelled {
        task: TaskId,
    },
    WorkerRegistered {
        session: SessionId,
        /// Tasks the worker said it runs that are no longer its to run: stop them silently.
        abandon: Vec<TaskId>,
    },
    TaskReported {
        task: TaskId,
        status: TaskStatus,
    },
    JobSubmitted {
        job: JobId,
    },
    JobCancelled {
        job: JobId,
    },
    JobRetried {
        job: JobId,
    },
    GateDecided {
        job: JobId,
        pass: String,
    },
    BudgetSet {
        scope: Scope,
        name: String,
    },
    ProjectApplied {
        name: String,
        resources: u32,
    },
    TokenCreated {
        name: String,
    },
    TokenRevoked {
        name: String,
    },
    /// Raft's own entries (a new leader's blank entry, membership changes) change nothing
    /// here and answer `Noop`.
    /// A measurement applied: whether the storage alarm is raised after it.
    SpaceMeasured {
        alarm: bool,
    },
    Noop,
    Refused(Refusal),
}

/// Why a reservation stopped being held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseReason {
    Released,
    SessionClosed,
    SessionExpired,
}

/// Something everybody else needs to hear about: watchers, workers, metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    SessionOpened {
        session: SessionId,
    },
    SessionExpired {
        session: SessionId,
    },
    Granted {
        grant: GrantInfo,
        request: Option<RequestId>,
    },
    Queued {
        request: RequestId,
        owner: String,
        session: SessionId,
        position: u32,
    },
    Released {
        reservation: ReservationId,
        resource: ResourcePath,
        reason: ReleaseReason,
    },
    /// The lease ran out without an extend.
    Expired {
        reservation: ReservationId,
        resource: ResourcePath,
        owner: String,
        session: SessionId,
    },
    PreemptRequested {
        reservation: ReservationId,
        owner: String,
        session: SessionId,
        by: RequestId,
        grace_ms: u64,
        deadline: Millis,
    },
    /// The grace ended but no waiter needs the lease any more: the holder keeps it.
    PreemptWithdrawn {
        reservation: ReservationId,
        owner: String,
        session: SessionId,
    },
    /// The grace ended without a release: the lease is gone and its token is stale.
    Revoked {
        reservation: ReservationId,
        resource: ResourcePath,
        owner: String,
        session: SessionId,
    },
    /// The pending request was aborted to break a wait-for cycle. Held leases stay.
    DeadlockVictim {
        request: RequestId,
        owner: String,
        session: SessionId,
        cycle: Vec<String>,
        cycle_len: u32,
    },
    TimedOut {
        request: RequestId,
        owner: String,
        session: SessionId,
    },
    Cancelled {
        request: RequestId,
        owner: String,
        session: SessionId,
    },
    /// An owner's effective priority changed through inheritance.
    PriorityInherited {
        owner: String,
        session: SessionId,
        priority: u32,
    },
    TaskQueued {
        task: TaskId,
        /// A requeued task resumes from its checkpoint when it has one.
        resumable: bool,
    },
    /// Run attempt `attempt` of `task` on the worker of `session`.
    TaskAssigned {
        task: TaskId,
        attempt: u32,
        session: SessionId,
    },
    /// The worker running `task` must stop it (cancelled).
    TaskCancelRequested {
        task: TaskId,
        attempt: u32,
        session: SessionId,
    },
    TaskProgress {
        task: TaskId,
        attempt: u32,
        percent: u32,
    },
    /// The task ended for good.
    TaskEnded {
        task: TaskId,
        status: TaskStatus,
    },
    /// A budget rose to a new level (approaching, at, over).
    BudgetLevel {
        scope: Scope,
        name: String,
        level: Level,
        spent_micros: u64,
        limit_micros: u64,
    },
}
