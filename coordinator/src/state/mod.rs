//! The replicated core: a pure state machine.
//!
//! ```text
//!   (index, now, Command) ──▶ State::apply ──▶ (Response, Vec<Effect>)
//!                               │
//!                               ├─ apply_* : the transition the command asks for
//!                               ├─ settle  : grant what became grantable, recompute the
//!                               │            wait-for edges, break cycles, preempt/inherit
//!                               └─ check_invariants (debug builds)
//! ```
//!
//! What this module must not do: no async, no I/O, no clock reads (time is the `now`
//! argument, made monotonic with `max(now, last_now)`), no randomness, no hash maps. `apply`
//! cannot fail: refusals are [`Response::Refused`], a broken invariant is a panic. The same
//! command sequence gives byte-identical [`State::snapshot`]s on every replica.
//!
//! Fencing tokens are the log index of the grant; when one apply grants several
//! reservations, each after the first takes the previous token plus one, so tokens are
//! strictly increasing across the whole state and therefore per resource.

mod acl;
mod acquire;
mod display;
mod invariants;
mod jobs;
mod lock_table;
mod quotas;
mod reads;
mod records;
mod render;
mod scan;
mod sessions;
mod settle;
mod small_map;
mod snapshot;
mod tasks;
mod tick;
mod types;
mod validate;
mod wait_for;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use qm_shared::limits::{
    AGING_INTERVAL_MS_DEFAULT, AGING_STEP_DEFAULT, CAPACITY_MAX, CLAIMS_PER_PRINCIPAL_MAX, CYCLE_REPORT_MAX,
    LIFETIME_MS_MAX, PAYLOAD_BYTES_PER_PRINCIPAL_MAX, PREEMPT_GAP_DEFAULT, PREEMPT_GRACE_MS_MAX, PREEMPT_GRACE_MS_MIN,
    PRIORITY_MAX, QUEUE_LEN_MAX, REQUESTS_MAX, RESERVATIONS_MAX, RESOURCES_DECLARED_MAX, SESSIONS_MAX,
    SESSIONS_PER_PRINCIPAL_MAX, SESSION_LABEL_LEN_MAX_BYTES, SET_SIZE_MAX, TASKS_PER_PRINCIPAL_MAX,
    TASK_PAYLOAD_BYTES_MAX, WORK_ITEMS_PER_PRINCIPAL_MAX,
};
use qm_shared::{Invalid, LockMode, Mode, ResourcePath};

use lock_table::{LockTable, Node, NodeId, QueueEntry, QueueKey};
use records::{Grant, Owner, Request, Session};
use wait_for::{VictimMeta, WaitFor};

pub use acl::Acl;
pub use jobs::{Budget, GateResult, Job, JobEvent, JobStatus, Jobs, LedgerEntry, PassState, PassStatus};
pub use reads::{OwnerRef, WaiterInfo};
pub use snapshot::{SnapshotError, SNAPSHOT_FORMAT_VERSION};
pub use tasks::{Attempt, Checkpoint, Named, Route, Task, Tasks, Worker};
pub use types::*;
pub use validate::validate_command;
use validate::validate_items;

use scan::{Blockers, Starts};
use settle::Change;

/// Most vacant owner records kept before they are freed without waiting for a Tick.
const OWNERS_VACANT_MAX: usize = 4_096;

/// Settling one apply may take this many rounds at most (each round grants, aborts or
/// re-orders something; a loop past this bound is a bug).
const SETTLE_ROUNDS_MAX: usize = 100_000;

/// Most waiters ahead on a counted resource whose units a newcomer looks at before it just
/// waits its turn (see `scan_item`).
const COUNTED_LOOKAHEAD_MAX: usize = 64;

/// Tunables that are part of the replicated state (every replica must agree on them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// A waiter's effective priority rises by `aging_step` every `aging_interval_ms`.
    pub aging_interval_ms: u64,
    pub aging_step: u32,
    /// A waiter at least this far above a holder may preempt it (policy `preempt`).
    pub preempt_gap: u32,
    /// Most requests that may wait on one resource.
    pub queue_len_max: u32,
    /// Break wait-for cycles as they close (the default). Off, cycles are left to wait
    /// timeouts, as with `innodb_deadlock_detect = OFF`; used to study detection itself.
    pub deadlock_detection: bool,
    /// Priority points a team's head of queue loses per task it runs (weighted fair share
    /// between teams); 0 turns fair share off.
    pub fair_share_points: u32,
    /// Work at or above this priority is high-priority for the budget policies.
    pub high_priority_min: u32,
    /// Budget thresholds, percent of the limit: approaching and at (over is above 100).
    pub budget_approaching_pct: u32,
    pub budget_at_pct: u32,
    /// At the `at` threshold, a high-priority dispatch forecast to cost this much or more
    /// waits for an approval (`qm gate approve`).
    pub high_cost_micros: u64,
    /// Forecast of a pass before any history, per tier (cheap, standard, frontier).
    pub forecast_default_micros: [u64; 3],
    /// Reservations held plus resources waited for by one principal, at most.
    pub claims_per_principal_max: u64,
    /// Unended tasks, unended work items and their payload bytes one principal may have.
    pub tasks_per_principal_max: u64,
    pub work_items_per_principal_max: u64,
    pub payload_bytes_per_principal_max: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            aging_interval_ms: AGING_INTERVAL_MS_DEFAULT,
            aging_step: AGING_STEP_DEFAULT,
            preempt_gap: PREEMPT_GAP_DEFAULT,
            queue_len_max: QUEUE_LEN_MAX,
            deadlock_detection: true,
            fair_share_points: 10,
            high_priority_min: 800,
            budget_approaching_pct: 80,
            budget_at_pct: 95,
            high_cost_micros: 1_000_000,
            forecast_default_micros: [20_000, 100_000, 500_000],
            claims_per_principal_max: CLAIMS_PER_PRINCIPAL_MAX,
            tasks_per_principal_max: TASKS_PER_PRINCIPAL_MAX,
            work_items_per_principal_max: WORK_ITEMS_PER_PRINCIPAL_MAX,
            payload_bytes_per_principal_max: PAYLOAD_BYTES_PER_PRINCIPAL_MAX,
        }
    }
}

impl Config {
    /// How long a waiter of priority `priority` waits at most before it reaches the top
    /// priority, after which nothing enqueued later is granted before it.
    pub fn aging_bound_ms(&self, priority: u32) -> u64 {
        let steps = (PRIORITY_MAX - priority.min(PRIORITY_MAX)).div_ceil(self.aging_step.max(1));
        u64::from(steps) * self.aging_interval_ms
    }
}

/// A declared resource: capacity (counted resources), preemption policy and grace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceConfig {
    pub capacity: Option<u32>,
    pub policy: Policy,
    pub grace_ms: u64,
}

/// Monotonic counters, replicated so that every node reports the same figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub grants_total: u64,
    pub releases_total: u64,
    /// Reservations freed because their session ended (closed, or expired without keepalives).
    pub session_releases_total: u64,
    pub expirations_total: u64,
    pub deadlocks_total: u64,
    pub preemptions_total: u64,
    pub revocations_total: u64,
    pub timeouts_total: u64,
}

/// The whole replicated state. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    config: Config,
    last_index: LogIndex,
    last_now: Millis,
    next_session: u64,
    next_reservation: u64,
    next_request: u64,
    next_owner: u64,
    next_seq: u64,
    last_token: u64,
    sessions: BTreeMap<SessionId, Session>,
    /// Open sessions per principal (not the empty one), derived from `sessions`: not in
    /// snapshots, rebuilt on restore, checked against them.
    #[serde(skip)]
    principal_sessions: BTreeMap<String, u32>,
    /// Reservations held plus items waited for per principal, derived like
    /// `principal_sessions`: bounded by `CLAIMS_PER_PRINCIPAL_MAX`.
    #[serde(skip)]
    principal_claims: BTreeMap<String, u64>,
    owners: BTreeMap<OwnerId, Owner>,
    /// Owners holding and waiting for nothing, freed on the next Tick.
    vacant_owners: BTreeSet<OwnerId>,
    grants: BTreeMap<ReservationId, Grant>,
    requests: BTreeMap<RequestId, Request>,
    table: LockTable,
    resources: BTreeMap<String, ResourceConfig>,
    /// How many declared resources have each policy (indexed by `Policy as usize`), so
    /// settling skips preemption and inheritance work when nothing uses them.
    policy_counts: [u32; 3],
    session_timers: BTreeSet<(Millis, SessionId)>,
    lease_timers: BTreeSet<(Millis, ReservationId)>,
    grace_timers: BTreeSet<(Millis, ReservationId)>,
    wait_timers: BTreeSet<(Millis, RequestId)>,
    aging_timers: BTreeSet<(Millis, RequestId)>,
    wait_for: WaitFor,
    stats: Stats,
    tasks: tasks::Tasks,
    jobs: jobs::Jobs,
    acl: acl::Acl,
    /// The storage alarm, while raised.
    space_alarm: Option<SpaceAlarm>,
}

/// What one apply accumulates on its way.
struct Ctx {
    index: LogIndex,
    now: Millis,
    effects: Vec<Effect>,
    /// Nodes where a claim changed, with the modes that changed: waiters there whose mode
    /// conflicts with a changed one are looked at again.
    dirty: BTreeMap<NodeId, Change>,
    /// Requests looked at again whatever changed (new or re-ordered).
    recheck: BTreeSet<RequestId>,
    granted: BTreeMap<RequestId, Vec<GrantInfo>>,
    aborted: BTreeMap<RequestId, (Vec<String>, u32)>,
    /// Owners that may have nothing left (collected at the end of the apply).
    gc: Vec<OwnerId>,
    /// Owners whose inherited priority is re-derived (they released something).
    reset_inherit: BTreeSet<OwnerId>,
}

impl State {
    pub fn new(config: Config) -> State {
        State {
            config,
            next_session: 1,
            next_reservation: 1,
            next_request: 1,
            next_owner: 1,
            next_seq: 1,
            ..State::default()
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn last_index(&self) -> LogIndex {
        self.last_index
    }

    pub fn last_now(&self) -> Millis {
        self.last_now
    }

    /// The storage alarm, while raised.
    pub fn space_alarm(&self) -> Option<SpaceAlarm> {
        self.space_alarm
    }

    /// The state's encoded size: what a snapshot of it takes, less its 12-byte header. Walks
    /// the whole state without allocating.
    pub fn encoded_len(&self) -> u64 {
        bincode::serialized_size(self).expect("sizing an in-memory state cannot fail")
    }

    /// The only way replicated state changes. Pure: the same `(index, now, command)` sequence
    /// gives the same responses, effects and snapshot bytes everywhere.
    pub fn apply(&mut self, index: LogIndex, now: Millis, cmd: Command) -> (Response, Vec<Effect>) {
        assert!(index > self.last_index, "log index {index} after {}", self.last_index);
        self.apply_at(index, now, cmd)
    }

    /// Applies the commands of one log entry in order, all at `index` and `now` (the leader
    /// batches concurrent proposals into one entry). Fencing tokens stay strictly increasing
    /// within the batch. Pure, like [`State::apply`].
    pub fn apply_batch(&mut self, index: LogIndex, now: Millis, cmds: Vec<Command>) -> Vec<(Response, Vec<Effect>)> {
        assert!(index > self.last_index, "log index {index} after {}", self.last_index);
        cmds.into_iter().map(|cmd| self.apply_at(index, now, cmd)).collect()
    }

    fn apply_at(&mut self, index: LogIndex, now: Millis, cmd: Command) -> (Response, Vec<Effect>) {
        self.last_index = index;
        let now = now.max(self.last_now);
        self.last_now = now;
        let mut ctx = Ctx {
            index,
            now,
            effects: Vec::new(),
            dirty: BTreeMap::new(),
            recheck: BTreeSet::new(),
            granted: BTreeMap::new(),
            aborted: BTreeMap::new(),
            gc: Vec::new(),
            reset_inherit: BTreeSet::new(),
        };
        let response = match (validate_command(&cmd), self.space_alarm) {
            (Err(invalid), _) => Response::Refused(Refusal::Invalid(invalid)),
            (Ok(()), Some(alarm)) if cmd.adds_data() => {
                Response::Refused(Refusal::NoSpace { bytes: alarm.bytes, quota: alarm.quota })
            }
            (Ok(()), _) => self.apply_command(cmd, &mut ctx),
        };
        self.settle(&mut ctx);
        self.collect_garbage(&mut ctx);
        #[cfg(debug_assertions)]
        self.check_invariants();
        (response, ctx.effects)
    }

    fn apply_command(&mut self, cmd: Command, ctx: &mut Ctx) -> Response {
        match cmd {
            Command::OpenSession { label, ttl_ms, principal } => self.apply_open_session(label, ttl_ms, principal, ctx),
            Command::KeepAlive { session } => self.apply_keep_alive(session, ctx),
            Command::CloseSession { session } => self.apply_close_session(session, ctx),
            Command::Acquire(acquire) => self.apply_acquire(acquire, ctx),
            Command::Release { session, reservation } => self.apply_release(session, reservation, ctx),
            Command::Cancel { session, request } => self.apply_cancel(session, request, ctx),
            Command::Extend { session, reservation, lease_ms } => {
                self.apply_extend(session, reservation, lease_ms, ctx)
            }
            Command::DeclareResource { path, capacity, policy, grace_ms } => {
                match self.declare_resource(&path, ResourceConfig { capacity, policy, grace_ms }, ctx) {
                    Ok(()) => Response::ResourceDeclared { path },
                    Err(r) => Response::Refused(r),
                }
            }
            Command::Tick => {
                self.apply_tick(ctx);
                Response::Ticked
            }
            Command::RestartLeases => self.apply_restart_leases(ctx),
            Command::Configure { config } => {
                self.config = config;
                self.tasks.rekey(&self.config);
                self.dispatch_tasks(ctx);
                Response::Configured
            }
            Command::SubmitJob(spec) => self.apply_submit_job(*spec, ctx),
            Command::CancelJob { job } => self.apply_cancel_job(job, ctx),
            Command::RetryJob { job } => self.apply_retry_job(job, ctx),
            Command::DecideGate { job, pass, approve, note, by } => {
                self.apply_decide_gate(job, pass, approve, note, by, ctx)
            }
            Command::SetBudget { scope, name, limit_micros, period } => {
                self.apply_set_budget(scope, name, limit_micros, period, ctx)
            }
            Command::ApplyProject(project) => self.apply_project(*project, ctx),
            Command::SubmitTask(spec) => self.apply_submit_task(spec, ctx),
            Command::CancelTask { task } => self.apply_cancel_task(task, ctx),
            Command::RegisterWorker(w) => self.apply_register_worker(w, ctx),
            Command::ReportTask { session, task, attempt, report } => {
                self.apply_report_task(session, task, attempt, report, ctx)
            }
            Command::BootstrapAcl(token) => self.apply_bootstrap_acl(*token, ctx),
            Command::CreateToken(token) => self.apply_create_token(*token, ctx),
            Command::RevokeToken { name } => self.apply_revoke_token(name),
            Command::SpaceMeasured { bytes, quota } => {
                self.space_alarm = match self.space_alarm {
                    _ if SpaceAlarm::clears_at(bytes, quota) => None,
                    Some(alarm) => Some(SpaceAlarm { bytes, quota, ..alarm }),
                    None if bytes > quota => Some(SpaceAlarm { bytes, quota, since: ctx.now }),
                    None => None,
                };
                Response::SpaceMeasured { alarm: self.space_alarm.is_some() }
            }
        }
    }
}

/// Returns the counter's value and advances it.
fn take(counter: &mut u64) -> u64 {
    let id = *counter;
    *counter += 1;
    id
}

/// Ids whose timer is due at `now`, earliest first.
fn due<T: Copy + Ord>(timers: &BTreeSet<(Millis, T)>, now: Millis) -> Vec<T> {
    timers.iter().take_while(|(t, _)| *t <= now).map(|(_, id)| *id).collect()
}
