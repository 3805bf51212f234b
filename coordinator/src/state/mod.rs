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

mod display;
mod invariants;
pub mod jobs;
mod lock_table;
mod records;
mod render;
mod small_map;
mod snapshot;
pub mod tasks;
mod types;
mod wait_for;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use qm_shared::limits::{
    AGING_INTERVAL_MS_DEFAULT, AGING_STEP_DEFAULT, CAPACITY_MAX, CYCLE_REPORT_MAX, LIFETIME_MS_MAX,
    PREEMPT_GAP_DEFAULT, PREEMPT_GRACE_MS_MAX, PREEMPT_GRACE_MS_MIN, PRIORITY_MAX, QUEUE_LEN_MAX, REQUESTS_MAX,
    RESERVATIONS_MAX, RESOURCES_DECLARED_MAX, SESSIONS_MAX, SESSION_LABEL_LEN_MAX_BYTES, SET_SIZE_MAX,
};
use qm_shared::{validate, Invalid, LockMode, Mode, ResourcePath};

use lock_table::{LockTable, Node, NodeId, QueueEntry, QueueKey};
use records::{Grant, Owner, Request, Session};
use wait_for::{VictimMeta, WaitFor};

pub use snapshot::{SnapshotError, SNAPSHOT_FORMAT_VERSION};
pub use types::*;

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

/// What changed at a node during one apply: a set of modes (bit = `LockMode::index`), or
/// everything (a capacity was redeclared).
///
/// On a counted resource it also sums the units that came free (grants released, waiters
/// gone): a waiter there whose set fits now even with those units taken back fitted before
/// too, so nothing about this node changed for it.
#[derive(Clone, Copy, Debug, Default)]
struct Change {
    modes: u8,
    all: bool,
    freed: u64,
}

impl Change {
    /// Whether a waiter asking `mode` at this node may be affected by a change of modes.
    fn affects(self, mode: LockMode) -> bool {
        self.all || LockMode::ALL.iter().any(|m| self.modes & (1 << m.index()) != 0 && !mode.compatible(*m))
    }
}

/// What one request asks of one node it touches: the join of its items' modes there, whether
/// an item names the node, and the units its shared items ask there.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Touch {
    pub(crate) mode: LockMode,
    pub(crate) target: bool,
    pub(crate) units: u32,
}

/// What a grant is given: the requester's priority, the lease, and the request it ends (if
/// it waited).
#[derive(Clone, Copy)]
struct Terms {
    priority: u32,
    lease_ms: u64,
    request: Option<RequestId>,
}

/// Where scanning an item starts: the items' own nodes (a queued request), or the deepest
/// existing node on each item's path (a new request; `None` when nothing on it exists).
#[derive(Clone, Copy)]
enum Starts<'a> {
    Targets(&'a [NodeId]),
    Deepest(&'a [Option<(NodeId, usize)>]),
}

impl Starts<'_> {
    fn get(self, i: usize, depth: usize) -> Option<(NodeId, usize)> {
        match self {
            Starts::Targets(t) => Some((t[i], depth)),
            Starts::Deepest(d) => d[i],
        }
    }

    /// Whether the request is queued (and so counted among the waiters of its nodes).
    fn queued(self) -> bool {
        matches!(self, Starts::Targets(_))
    }
}

/// Who blocks a request: owners holding something incompatible, and owners waiting ahead.
///
/// Two depths. `report` (for refusals and queue positions) lists every conflicting holder and
/// waiter ahead. `edges` (for the wait-for graph) stops, at each node, after the nearest
/// conflicting waiter whose mode conflicts with at least everything the request's mode
/// conflicts with, and then leaves out that node's holders: that waiter already waits
/// (directly or down its own chain) for everyone further ahead and every such holder, so
/// reachability in the graph, and so every cycle, is kept, while a queue of n writers is a
/// chain of n edges instead of n²/2 (and a new holder does not rewrite every waiter's edges).
#[derive(Debug, Default)]
struct Blockers {
    full: bool,
    holders: BTreeSet<OwnerId>,
    waiters: BTreeSet<OwnerId>,
    /// Targeted waiters ahead on the named resources (for the queue position; `report` only).
    ahead: u32,
}

impl Blockers {
    fn report() -> Blockers {
        Blockers { full: true, ..Blockers::default() }
    }

    fn edges() -> Blockers {
        Blockers::default()
    }
}

/// Whether `a` conflicts with every mode that `m` conflicts with.
fn covers(a: LockMode, m: LockMode) -> bool {
    LockMode::ALL.iter().all(|x| m.compatible(*x) || !a.compatible(*x))
}

/// Checks a command's fields against the limits. The gRPC edge calls this before proposing;
/// `apply` calls it again and refuses what fails, so nothing invalid is ever written.
pub fn validate_command(cmd: &Command) -> Result<(), Invalid> {
    match cmd {
        Command::OpenSession { label, ttl_ms } => {
            if label.len() > SESSION_LABEL_LEN_MAX_BYTES {
                return Err(Invalid::new(
                    "label",
                    format!("is {} bytes, at most {SESSION_LABEL_LEN_MAX_BYTES} allowed", label.len()),
                ));
            }
            validate::check_session_ttl_ms(*ttl_ms)
        }
        Command::Acquire(a) => {
            validate::check_owner(&a.owner)?;
            validate::check_priority(a.priority)?;
            validate::check_lease_ms(a.lease_ms)?;
            if let Wait::Wait { timeout_ms: Some(t) } = a.wait {
                validate::check_wait_timeout_ms(t)?;
            }
            validate_items(&a.items, false)
        }
        Command::Extend { lease_ms, .. } => validate::check_lease_ms(*lease_ms),
        Command::DeclareResource { capacity, grace_ms, .. } => {
            if let Some(c) = capacity {
                validate::check_range("capacity", (*c).into(), 1, CAPACITY_MAX.into())?;
            }
            validate::check_range("grace_ms", *grace_ms, PREEMPT_GRACE_MS_MIN, PREEMPT_GRACE_MS_MAX)
        }
        Command::Configure { config } => {
            validate::check_range("aging_interval_ms", config.aging_interval_ms, 1, 3_600_000)?;
            validate::check_range("aging_step", config.aging_step.into(), 1, PRIORITY_MAX.into())?;
            validate::check_range("preempt_gap", config.preempt_gap.into(), 0, PRIORITY_MAX.into())?;
            validate::check_range("queue_len_max", config.queue_len_max.into(), 1, QUEUE_LEN_MAX.into())?;
            validate::check_range("fair_share_points", config.fair_share_points.into(), 0, PRIORITY_MAX.into())?;
            validate::check_range("high_priority_min", config.high_priority_min.into(), 0, PRIORITY_MAX.into())?;
            validate::check_range("budget_approaching_pct", config.budget_approaching_pct.into(), 1, 100)?;
            validate::check_range(
                "budget_at_pct",
                config.budget_at_pct.into(),
                config.budget_approaching_pct.into(),
                100,
            )?;
            validate::check_range("high_cost_micros", config.high_cost_micros, 0, qm_shared::limits::MONEY_MICROS_MAX)?;
            for (i, f) in config.forecast_default_micros.iter().enumerate() {
                validate::check_range(
                    &format!("forecast_default_micros[{i}]"),
                    *f,
                    0,
                    qm_shared::limits::MONEY_MICROS_MAX,
                )?;
            }
            Ok(())
        }
        Command::SubmitTask(_) | Command::RegisterWorker(_) | Command::ReportTask { .. } => {
            tasks::validate_task_command(cmd)
        }
        Command::SubmitJob(_) | Command::DecideGate { .. } | Command::SetBudget { .. } | Command::ApplyProject(_) => {
            jobs::validate_job_command(cmd)
        }
        Command::KeepAlive { .. }
        | Command::CloseSession { .. }
        | Command::Release { .. }
        | Command::Cancel { .. }
        | Command::CancelTask { .. }
        | Command::CancelJob { .. }
        | Command::RetryJob { .. }
        | Command::Tick
        | Command::RestartLeases => Ok(()),
    }
}

/// An acquire set (or a task's resources; `allow_empty` for a task needing none): size,
/// units, no path twice.
pub(crate) fn validate_items(items: &[Item], allow_empty: bool) -> Result<(), Invalid> {
    if (items.is_empty() && !allow_empty) || items.len() > SET_SIZE_MAX {
        let min = usize::from(!allow_empty);
        return Err(Invalid::new("resources", format!("has {} entries, {min}..={SET_SIZE_MAX} allowed", items.len())));
    }
    for (i, item) in items.iter().enumerate() {
        validate::check_range("units", item.units.into(), 1, CAPACITY_MAX.into())
            .map_err(|e| e.within(&format!("resources[{i}]")))?;
        // Sets are small (SET_SIZE_MAX), so a pairwise check beats allocating a set.
        if items[..i].iter().any(|other| other.path == item.path) {
            return Err(Invalid::new(
                format!("resources[{i}].resource"),
                format!("{} appears twice in one set", item.path),
            ));
        }
    }
    Ok(())
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
        let response = match validate_command(&cmd) {
            Err(invalid) => Response::Refused(Refusal::Invalid(invalid)),
            Ok(()) => self.apply_command(cmd, &mut ctx),
        };
        self.settle(&mut ctx);
        self.collect_garbage(&mut ctx);
        #[cfg(debug_assertions)]
        self.check_invariants();
        (response, ctx.effects)
    }

    fn apply_command(&mut self, cmd: Command, ctx: &mut Ctx) -> Response {
        match cmd {
            Command::OpenSession { label, ttl_ms } => self.apply_open_session(label, ttl_ms, ctx),
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
        }
    }

    // ---------------------------------------------------------------- sessions

    fn apply_open_session(&mut self, label: String, ttl_ms: u64, ctx: &mut Ctx) -> Response {
        if self.sessions.len() >= SESSIONS_MAX {
            return Response::Refused(Refusal::Exhausted { what: "sessions".into(), max: SESSIONS_MAX as u64 });
        }
        let id = SessionId(take(&mut self.next_session));
        let expires_at = ctx.now + ttl_ms;
        self.sessions.insert(id, Session { id, label, ttl_ms, expires_at, owners: BTreeMap::new() });
        self.session_timers.insert((expires_at, id));
        ctx.effects.push(Effect::SessionOpened { session: id });
        Response::SessionOpened { session: id, ttl_ms, expires_at }
    }

    fn apply_keep_alive(&mut self, id: SessionId, ctx: &mut Ctx) -> Response {
        let Some(session) = self.sessions.get_mut(&id) else {
            return Response::Refused(Refusal::SessionUnknown { session: id });
        };
        self.session_timers.remove(&(session.expires_at, id));
        session.expires_at = ctx.now + session.ttl_ms;
        self.session_timers.insert((session.expires_at, id));
        Response::SessionKept { session: id, expires_at: session.expires_at }
    }

    fn apply_close_session(&mut self, id: SessionId, ctx: &mut Ctx) -> Response {
        match self.end_session(id, ReleaseReason::SessionClosed, ctx) {
            None => Response::Refused(Refusal::SessionUnknown { session: id }),
            Some((released, cancelled)) => Response::SessionClosed { session: id, released, cancelled },
        }
    }

    /// Releases everything a session holds and cancels its waits.
    fn end_session(&mut self, id: SessionId, reason: ReleaseReason, ctx: &mut Ctx) -> Option<(u32, u32)> {
        let session = self.sessions.remove(&id)?;
        self.worker_lost(id, ctx);
        self.session_timers.remove(&(session.expires_at, id));
        if reason == ReleaseReason::SessionExpired {
            ctx.effects.push(Effect::SessionExpired { session: id });
        }
        let (mut released, mut cancelled) = (0, 0);
        for owner in session.owners.values() {
            let o = &self.owners[owner];
            let grants: Vec<ReservationId> = o.grants.iter().copied().collect();
            if let Some(request) = o.pending {
                let (name, session) = (o.name.to_string(), o.session);
                self.remove_request(request, ctx);
                ctx.effects.push(Effect::Cancelled { request, owner: name, session });
                cancelled += 1;
            }
            for g in grants {
                let grant = self.remove_grant(g, ctx);
                ctx.effects.push(Effect::Released { reservation: g, resource: grant.path, reason });
                released += 1;
            }
            ctx.gc.push(*owner);
        }
        Some((released, cancelled))
    }

    // ---------------------------------------------------------------- acquire

    fn apply_acquire(&mut self, mut a: Acquire, ctx: &mut Ctx) -> Response {
        if !self.sessions.contains_key(&a.session) {
            return Response::Refused(Refusal::SessionUnknown { session: a.session });
        }
        a.items.sort();
        let existing = self.sessions[&a.session].owners.get(&a.owner).copied();
        // A newcomer owner holds nothing yet; this id never matches a real holder.
        let owner = existing.unwrap_or(OwnerId(u64::MAX));
        let inherited = existing.map_or(0, |o| self.owners[&o].inherited);
        if let Some(o) = existing {
            if let Some(request) = self.owners[&o].pending {
                return Response::Refused(Refusal::AlreadyWaiting { request });
            }
        }
        // A shared claim asking more units than the resource has could never be granted.
        for (i, item) in a.items.iter().enumerate() {
            if let Some(capacity) = self.capacity(item.path.as_str()) {
                if item.mode == Mode::Shared && item.units > capacity {
                    return Response::Refused(Refusal::Invalid(Invalid::new(
                        format!("resources[{i}].units"),
                        format!("{} is above the capacity {capacity} of {}", item.units, item.path),
                    )));
                }
            }
        }
        let effective = a.priority.max(inherited).min(PRIORITY_MAX);
        let key = QueueKey { inv_priority: PRIORITY_MAX - effective, seq: self.next_seq };

        let deepest: Vec<Option<(NodeId, usize)>> = a.items.iter().map(|i| self.table.deepest(&i.path)).collect();
        if !self.is_blocked(owner, key, &a.items, Starts::Deepest(&deepest)) {
            if self.grants.len() + a.items.len() > RESERVATIONS_MAX {
                return Response::Refused(Refusal::Exhausted {
                    what: "reservations".into(),
                    max: RESERVATIONS_MAX as u64,
                });
            }
            let owner = match existing {
                Some(o) => o,
                None => self.new_owner(a.session, &a.owner, ctx.now),
            };
            self.next_seq += 1;
            let terms = Terms { priority: a.priority, lease_ms: a.lease_ms, request: None };
            let grants = self.grant_items(owner, &a.items, terms, Some(&deepest), ctx);
            return Response::Granted { grants };
        }

        let mut blockers = Blockers::report();
        self.blockers(owner, key, &a.items, Starts::Deepest(&deepest), &mut blockers);
        if blockers.holders.is_empty() && blockers.waiters.is_empty() {
            // Blocked by nothing but the owner's own units on a counted resource: it would
            // wait for itself.
            return Response::Refused(Refusal::Deadlock { cycle: vec![a.owner], cycle_len: 1 });
        }
        let estimated_wait_ms = self.estimate_wait(&a.items, &blockers, ctx.now);
        let timeout_ms = match a.wait {
            Wait::Try => {
                return Response::Refused(Refusal::Conflict {
                    holders: self.holder_infos(&a.items, &blockers),
                    waiting_ahead: blockers.waiters.iter().map(|o| self.owner_ref(*o)).collect(),
                    queue_position: blockers.ahead + 1,
                    estimated_wait_ms,
                });
            }
            Wait::Wait { timeout_ms } => timeout_ms,
        };
        for item in &a.items {
            let queue_len = self.table.get(item.path.as_str()).map_or(0, |n| n.targeted);
            if queue_len >= self.config.queue_len_max {
                return Response::Refused(Refusal::QueueFull {
                    resource: item.path.clone(),
                    queue_len,
                    retry_after_ms: estimated_wait_ms.max(1),
                });
            }
        }
        if self.requests.len() >= REQUESTS_MAX {
            return Response::Refused(Refusal::Exhausted { what: "requests".into(), max: REQUESTS_MAX as u64 });
        }

        let owner = match existing {
            Some(o) => o,
            None => self.new_owner(a.session, &a.owner, ctx.now),
        };
        let id = RequestId(take(&mut self.next_request));
        self.next_seq += 1;
        let timeout_at = timeout_ms.map(|t| ctx.now + t);
        let next_aging_at = (a.priority < PRIORITY_MAX).then(|| ctx.now + self.config.aging_interval_ms);
        let mut request = Request {
            id,
            owner,
            session: a.session,
            items: a.items,
            targets: Vec::new(),
            priority: a.priority,
            effective,
            seq: key.seq,
            enqueued_at: ctx.now,
            timeout_at,
            next_aging_at,
            lease_ms: a.lease_ms,
        };
        if let Some(t) = timeout_at {
            self.wait_timers.insert((t, id));
        }
        if let Some(t) = next_aging_at {
            self.aging_timers.insert((t, id));
        }
        self.enqueue(&mut request, ctx);
        self.owners.get_mut(&owner).expect("owner exists").pending = Some(id);
        self.requests.insert(id, request);
        self.refresh_victim_meta(owner);
        let position = blockers.ahead + 1;
        ctx.effects.push(Effect::Queued { request: id, owner: a.owner, session: a.session, position });

        self.settle(ctx);
        if let Some(grants) = ctx.granted.get(&id) {
            return Response::Granted { grants: grants.clone() };
        }
        if let Some((cycle, cycle_len)) = ctx.aborted.get(&id) {
            return Response::Refused(Refusal::Deadlock { cycle: cycle.clone(), cycle_len: *cycle_len });
        }
        Response::Queued { request: id, position, estimated_wait_ms }
    }

    fn new_owner(&mut self, session: SessionId, name: &str, now: Millis) -> OwnerId {
        let id = OwnerId(take(&mut self.next_owner));
        self.owners.insert(
            id,
            Owner {
                id,
                session,
                name: name.into(),
                created_at: now,
                grants: Default::default(),
                granted_at_sum: 0,
                pending: None,
                inherited: 0,
            },
        );
        self.sessions.get_mut(&session).expect("session exists").owners.insert(name.to_string(), id);
        id
    }

    /// Grants `items` in canonical (sorted) order, one token each.
    fn grant_items(
        &mut self,
        owner: OwnerId,
        items: &[Item],
        terms: Terms,
        deepest: Option<&[Option<(NodeId, usize)>]>,
        ctx: &mut Ctx,
    ) -> Vec<GrantInfo> {
        let Terms { priority, lease_ms, request } = terms;
        let mut infos = Vec::with_capacity(items.len());
        let session = self.owners[&owner].session;
        for item in items {
            let id = ReservationId(take(&mut self.next_reservation));
            let token = ctx.index.max(self.last_token + 1);
            self.last_token = token;
            let units = match (item.mode, self.capacity(item.path.as_str())) {
                (Mode::Exclusive, Some(capacity)) => capacity,
                _ => item.units,
            };
            let node = match deepest {
                // One item: nothing was created or freed since `deepest` was taken.
                Some(d) if items.len() == 1 => self.table.ensure_below(&item.path, d[0]),
                _ => self.table.ensure(&item.path),
            };
            let grant = Grant {
                id,
                owner,
                session,
                path: item.path.clone(),
                node,
                mode: item.mode,
                units,
                token,
                priority,
                granted_at: ctx.now,
                lease_ms,
                expires_at: ctx.now + lease_ms,
                cap_at: ctx.now + LIFETIME_MS_MAX,
                preempt_deadline: None,
            };
            let (mut current, mut target) = (Some(node), true);
            while let Some(nid) = current {
                let n = self.table.node_mut(nid);
                if target {
                    n.hold(owner, item.mode.lock_mode());
                    n.grants.insert(id);
                    n.units += u64::from(units);
                } else {
                    n.hold(owner, item.mode.intention());
                }
                (current, target) = (n.parent, false);
            }
            self.touch_claim(ctx, node, item.mode);
            self.lease_timers.insert((grant.expires_at, id));
            let info = grant.info(&self.owners[&owner].name);
            let o = self.owners.get_mut(&owner).expect("owner exists");
            o.grants.insert(id);
            o.granted_at_sum += grant.granted_at;
            self.grants.insert(id, grant);
            self.stats.grants_total += 1;
            ctx.effects.push(Effect::Granted { grant: info.clone(), request });
            infos.push(info);
        }
        infos
    }

    fn remove_grant(&mut self, id: ReservationId, ctx: &mut Ctx) -> Grant {
        let grant = self.grants.remove(&id).expect("grant exists");
        let (mut current, mut target) = (Some(grant.node), true);
        while let Some(nid) = current {
            let n = self.table.node_mut(nid);
            if target {
                n.unhold(grant.owner, grant.mode.lock_mode());
                n.grants.remove(&id);
                n.units -= u64::from(grant.units);
                if !n.queue.is_empty() && grant.units > 0 {
                    ctx.dirty.entry(nid).or_default().freed += u64::from(grant.units);
                }
            } else {
                n.unhold(grant.owner, grant.mode.intention());
            }
            (current, target) = (n.parent, false);
        }
        self.touch_claim(ctx, grant.node, grant.mode);
        self.table.release(grant.node);
        self.lease_timers.remove(&(grant.expires_at, id));
        if let Some(deadline) = grant.preempt_deadline {
            self.grace_timers.remove(&(deadline, id));
        }
        let owner = self.owners.get_mut(&grant.owner).expect("owner exists");
        owner.grants.remove(&id);
        owner.granted_at_sum -= grant.granted_at;
        if owner.pending.is_some() {
            self.refresh_victim_meta(grant.owner);
        }
        let owner = self.owners.get_mut(&grant.owner).expect("owner exists");
        if owner.inherited > 0 {
            ctx.reset_inherit.insert(grant.owner);
        }
        if owner.grants.is_empty() && owner.pending.is_none() {
            ctx.gc.push(grant.owner);
        }
        grant
    }

    /// Enters `request` into the queue of every node it touches (creating nodes as needed)
    /// and records its target nodes.
    fn enqueue(&mut self, request: &mut Request, ctx: &mut Ctx) {
        request.targets = request.items.iter().map(|item| self.table.ensure(&item.path)).collect();
        let key = request.key();
        for (nid, Touch { mode, target, units }) in self.queue_touches(request) {
            let entry = QueueEntry { request: request.id, owner: request.owner, mode, target, units };
            self.table.node_mut(nid).enqueue(key, entry);
        }
        for (item, node) in request.items.iter().zip(&request.targets) {
            self.touch_claim(ctx, *node, item.mode);
        }
        ctx.recheck.insert(request.id);
    }

    fn dequeue(&mut self, request: &Request, ctx: &mut Ctx) {
        let key = request.key();
        for (nid, _) in self.queue_touches(request) {
            let entry = self.table.node_mut(nid).dequeue(&key);
            if entry.target {
                if let Some(capacity) = self.capacity(self.table.node(nid).path.as_str()) {
                    self.freed(ctx, nid, entry.need(capacity));
                }
            }
        }
        for (item, node) in request.items.iter().zip(&request.targets) {
            self.touch_claim(ctx, *node, item.mode);
        }
        for node in &request.targets {
            self.table.release(*node);
        }
    }

    /// The queue entries of a request: one per node it touches, with the join of the modes its
    /// items need there (an item's mode on its own node, the intention on ancestors) and
    /// whether some item names the node.
    pub(crate) fn queue_touches(&self, request: &Request) -> BTreeMap<NodeId, Touch> {
        let mut touches: BTreeMap<NodeId, Touch> = BTreeMap::new();
        for (item, node) in request.items.iter().zip(&request.targets) {
            for (i, nid) in self.table.chain(*node).enumerate() {
                let target = i == 0;
                let mode = if target { item.mode.lock_mode() } else { item.mode.intention() };
                let units = if target && item.mode == Mode::Shared { item.units } else { 0 };
                let t = touches.entry(nid).or_insert(Touch { mode, target, units: 0 });
                t.mode = t.mode.join(mode);
                t.target |= target;
                t.units += units;
            }
        }
        touches
    }

    /// Removes a pending request everywhere (granted, cancelled, timed out or aborted).
    fn remove_request(&mut self, id: RequestId, ctx: &mut Ctx) -> Request {
        let request = self.requests.remove(&id).expect("request exists");
        self.dequeue(&request, ctx);
        if let Some(t) = request.timeout_at {
            self.wait_timers.remove(&(t, id));
        }
        if let Some(t) = request.next_aging_at {
            self.aging_timers.remove(&(t, id));
        }
        let owner = self.owners.get_mut(&request.owner).expect("owner exists");
        owner.pending = None;
        if owner.grants.is_empty() {
            ctx.gc.push(request.owner);
        }
        self.wait_for.clear(request.owner);
        request
    }

    fn grant_request(&mut self, id: RequestId, ctx: &mut Ctx) {
        let request = self.remove_request(id, ctx);
        let terms = Terms { priority: request.priority, lease_ms: request.lease_ms, request: Some(id) };
        let grants = self.grant_items(request.owner, &request.items, terms, None, ctx);
        ctx.granted.insert(id, grants);
    }

    /// Moves a request to a new effective priority (aging, inheritance).
    fn set_effective(&mut self, id: RequestId, effective: u32, ctx: &mut Ctx) {
        let request = self.requests.get(&id).expect("request exists").clone();
        if request.effective == effective {
            return;
        }
        self.dequeue(&request, ctx);
        let mut request = Request { effective, ..request };
        self.enqueue(&mut request, ctx);
        let owner = request.owner;
        self.requests.insert(id, request);
        self.refresh_victim_meta(owner);
    }

    // ---------------------------------------------------------------- release, extend

    fn apply_release(&mut self, session: SessionId, id: ReservationId, ctx: &mut Ctx) -> Response {
        if self.grants.get(&id).is_none_or(|g| g.session != session) {
            return Response::Refused(Refusal::ReservationUnknown { reservation: id });
        }
        let grant = self.remove_grant(id, ctx);
        self.stats.releases_total += 1;
        ctx.effects.push(Effect::Released { reservation: id, resource: grant.path, reason: ReleaseReason::Released });
        Response::Released { reservation: id }
    }

    fn apply_cancel(&mut self, session: SessionId, id: RequestId, ctx: &mut Ctx) -> Response {
        if self.requests.get(&id).is_none_or(|r| r.session != session) {
            return Response::Refused(Refusal::RequestUnknown { request: id });
        }
        let request = self.remove_request(id, ctx);
        let owner = self.owners[&request.owner].name.to_string();
        ctx.effects.push(Effect::Cancelled { request: id, owner, session });
        Response::Cancelled { request: id }
    }

    fn apply_extend(&mut self, session: SessionId, id: ReservationId, lease_ms: u64, ctx: &mut Ctx) -> Response {
        let Some(grant) = self.grants.get_mut(&id).filter(|g| g.session == session) else {
            return Response::Refused(Refusal::ReservationUnknown { reservation: id });
        };
        self.lease_timers.remove(&(grant.expires_at, id));
        grant.expires_at = (ctx.now + lease_ms).min(grant.cap_at).max(grant.expires_at);
        grant.lease_ms = lease_ms;
        self.lease_timers.insert((grant.expires_at, id));
        Response::Extended { reservation: id, expires_at: grant.expires_at }
    }

    // ---------------------------------------------------------------- time

    /// Declares (or redeclares) a resource's capacity, policy and grace.
    fn declare_resource(&mut self, path: &ResourcePath, config: ResourceConfig, ctx: &mut Ctx) -> Result<(), Refusal> {
        if self.resources.len() >= RESOURCES_DECLARED_MAX && !self.resources.contains_key(path.as_str()) {
            return Err(Refusal::Exhausted { what: "declared resources".into(), max: RESOURCES_DECLARED_MAX as u64 });
        }
        let policy = config.policy;
        if let Some(old) = self.resources.insert(path.as_str().to_string(), config) {
            self.policy_counts[old.policy as usize] -= 1;
        }
        self.policy_counts[policy as usize] += 1;
        if let Some(id) = self.table.lookup(path.as_str()) {
            self.touch(ctx, id, None);
        }
        Ok(())
    }

    fn apply_tick(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        self.table.collect();
        self.collect_owners();
        let due_sessions: Vec<SessionId> = due(&self.session_timers, now);
        for s in due_sessions {
            self.end_session(s, ReleaseReason::SessionExpired, ctx);
        }
        for id in due(&self.lease_timers, now) {
            let grant = self.remove_grant(id, ctx);
            self.stats.expirations_total += 1;
            let owner = self.owners[&grant.owner].name.to_string();
            ctx.effects.push(Effect::Expired { reservation: id, resource: grant.path, owner, session: grant.session });
        }
        for id in due(&self.grace_timers, now) {
            if !self.preemption_wanted(id) {
                // Whoever asked is gone (granted elsewhere, timed out, cancelled): the holder
                // keeps its lease.
                let grant = self.grants.get_mut(&id).expect("grant exists");
                let deadline = grant.preempt_deadline.take().expect("grace timer has a deadline");
                self.grace_timers.remove(&(deadline, id));
                let owner = self.owners[&grant.owner].name.to_string();
                ctx.effects.push(Effect::PreemptWithdrawn { reservation: id, owner, session: grant.session });
                continue;
            }
            let grant = self.remove_grant(id, ctx);
            self.stats.revocations_total += 1;
            let owner = self.owners[&grant.owner].name.to_string();
            ctx.effects.push(Effect::Revoked { reservation: id, resource: grant.path, owner, session: grant.session });
        }
        for id in due(&self.wait_timers, now) {
            let request = self.remove_request(id, ctx);
            self.stats.timeouts_total += 1;
            let owner = self.owners[&request.owner].name.to_string();
            ctx.effects.push(Effect::TimedOut { request: id, owner, session: request.session });
        }
        for id in due(&self.aging_timers, now) {
            let request = self.requests.get_mut(&id).expect("aging request exists");
            self.aging_timers.remove(&(request.next_aging_at.expect("aging scheduled"), id));
            let interval = self.config.aging_interval_ms;
            let steps = (now - request.enqueued_at) / interval;
            let aged = u64::from(request.priority) + steps * u64::from(self.config.aging_step);
            let inherited = self.owners[&request.owner].inherited;
            let aged = aged.min(u64::from(PRIORITY_MAX)) as u32;
            let effective = aged.max(inherited.min(PRIORITY_MAX));
            // Aging goes on under inherited priority: inheritance ends, aging does not.
            request.next_aging_at = (aged < PRIORITY_MAX).then(|| request.enqueued_at + (steps + 1) * interval);
            if let Some(t) = request.next_aging_at {
                self.aging_timers.insert((t, id));
            }
            self.set_effective(id, effective, ctx);
        }
        self.roll_budget_periods(ctx);
        self.dispatch_tasks(ctx);
    }

    fn apply_restart_leases(&mut self, ctx: &mut Ctx) -> Response {
        let now = ctx.now;
        self.lease_timers.clear();
        self.grace_timers.clear();
        let graces: BTreeMap<ReservationId, u64> = self
            .grants
            .values()
            .filter(|g| g.preempt_deadline.is_some())
            .map(|g| (g.id, self.resource_config(&g.path).map_or(PREEMPT_GRACE_MS_MIN, |r| r.grace_ms)))
            .collect();
        for (id, grant) in &mut self.grants {
            grant.expires_at = now + grant.lease_ms;
            grant.cap_at = grant.cap_at.max(grant.expires_at);
            self.lease_timers.insert((grant.expires_at, *id));
            if let Some(deadline) = &mut grant.preempt_deadline {
                *deadline = now + graces[id];
                self.grace_timers.insert((*deadline, *id));
            }
        }
        self.session_timers.clear();
        for (id, session) in &mut self.sessions {
            session.expires_at = now + session.ttl_ms;
            self.session_timers.insert((session.expires_at, *id));
        }
        Response::LeasesRestarted { reservations: self.grants.len() as u32, sessions: self.sessions.len() as u32 }
    }

    // ---------------------------------------------------------------- conflicts

    fn policy_count(&self, policy: Policy) -> u32 {
        self.policy_counts[policy as usize]
    }

    fn capacity(&self, path: &str) -> Option<u32> {
        self.resources.get(path).and_then(|r| r.capacity)
    }

    /// The declared config nearest to `path` (itself or an ancestor).
    fn resource_config(&self, path: &ResourcePath) -> Option<&ResourceConfig> {
        (1..=path.depth()).rev().find_map(|n| self.resources.get(path.prefix(n)))
    }

    /// The first of `items` a newcomer at `priority` could not have now, when its holders are
    /// not ones it would preempt (policy `preempt` and at least `preempt_gap` below it).
    pub fn held_against(&self, items: &[Item], priority: u32) -> Option<String> {
        let key = QueueKey { inv_priority: PRIORITY_MAX - priority.min(PRIORITY_MAX), seq: self.next_seq };
        let nobody = OwnerId(u64::MAX);
        for item in items {
            let deepest = [self.table.deepest(&item.path)];
            let one = std::slice::from_ref(item);
            if !self.is_blocked(nobody, key, one, Starts::Deepest(&deepest)) {
                continue;
            }
            let mut b = Blockers::report();
            self.blockers(nobody, key, one, Starts::Deepest(&deepest), &mut b);
            let holders = self.holder_infos(one, &b);
            let preemptible = b.waiters.is_empty()
                && !holders.is_empty()
                && holders.iter().all(|h| {
                    let g = &self.grants[&h.reservation];
                    self.resource_config(&g.path).is_some_and(|c| c.policy == Policy::Preempt)
                        && priority >= g.priority.saturating_add(self.config.preempt_gap)
                });
            if !preemptible {
                return Some(item.path.to_string());
            }
        }
        None
    }

    /// Whether `items` are blocked for `owner` at queue position `key`. `targets` are the
    /// items' nodes when the request is queued (and so they exist).
    fn is_blocked(&self, owner: OwnerId, key: QueueKey, items: &[Item], starts: Starts) -> bool {
        items
            .iter()
            .enumerate()
            .any(|(i, item)| self.scan_item(owner, key, item, starts.get(i, item.path.depth()), starts.queued(), None))
    }

    fn blockers(&self, owner: OwnerId, key: QueueKey, items: &[Item], starts: Starts, out: &mut Blockers) {
        for (i, item) in items.iter().enumerate() {
            self.scan_item(owner, key, item, starts.get(i, item.path.depth()), starts.queued(), Some(out));
        }
    }

    /// Whether `item`, asked by `owner` at queue position `key`, is blocked; with `out`,
    /// also collects who blocks it. Walks from the item's node (or the deepest existing
    /// ancestor) up to the root, then the overlapping row ranges beside it.
    fn scan_item(
        &self,
        owner: OwnerId,
        key: QueueKey,
        item: &Item,
        start: Option<(NodeId, usize)>,
        queued: bool,
        mut out: Option<&mut Blockers>,
    ) -> bool {
        let depth = item.path.depth();
        let Some((start, start_depth)) = start else { return false };
        let mut blocked = false;
        for (i, nid) in self.table.chain(start).enumerate() {
            let node = self.table.node(nid);
            let is_target = i == 0 && start_depth == depth;
            let mode = if is_target { item.mode.lock_mode() } else { item.mode.intention() };
            blocked |= scan_node(node, owner, key, mode, out.as_deref_mut());
            if is_target {
                if let Some(capacity) = self.capacity(item.path.as_str()) {
                    let needed = u64::from(if item.mode == Mode::Exclusive { capacity } else { item.units });
                    if node.units + needed > u64::from(capacity) {
                        blocked = true;
                        if let Some(out) = out.as_deref_mut() {
                            out.holders
                                .extend(node.grants.iter().map(|g| self.grants[g].owner).filter(|o| *o != owner));
                        }
                    }
                    // No barging on a counted resource: a newcomer may take free units only
                    // if enough stay free for every waiter ahead of it. A waiter ahead that is
                    // held up elsewhere (by another item of its set) keeps its units, but does
                    // not stop the whole queue behind it while units stand idle.
                    //
                    // When the holders and every waiter fit together (a queued request is one
                    // of those waiters), nobody ahead can be short: no need to look.
                    let everyone = node.units + node.queued_need(capacity) + if queued { 0 } else { needed };
                    if everyone > u64::from(capacity) {
                        let mut reserved = node.units + needed;
                        let mut looked = 0;
                        for entry in node.queue.range(..key).rev().map(|(_, e)| e) {
                            if !entry.target || entry.owner == owner {
                                continue;
                            }
                            // Bounded: past COUNTED_LOOKAHEAD_MAX waiters ahead, the newcomer
                            // waits its turn (plain FIFO) rather than the scan growing with
                            // the queue.
                            looked += 1;
                            if looked > COUNTED_LOOKAHEAD_MAX {
                                reserved = u64::MAX;
                            }
                            reserved = reserved.saturating_add(entry.need(capacity));
                            if reserved > u64::from(capacity) {
                                blocked = true;
                                match out.as_deref_mut() {
                                    Some(out) => {
                                        out.waiters.insert(entry.owner);
                                        if !out.full {
                                            break;
                                        }
                                    }
                                    None => break,
                                }
                            }
                        }
                    }
                }
                if let Some(out) = out.as_deref_mut().filter(|o| o.full) {
                    out.ahead = out.ahead.max(node.queue.range(..key).filter(|(_, e)| e.target).count() as u32);
                }
            }
            if blocked && out.is_none() {
                return true;
            }
        }
        let parent = match (start_depth == depth, start_depth + 1 == depth) {
            (true, _) => self.table.node(start).parent,
            (false, true) => Some(start),
            _ => None,
        };
        if let (Some(range), Some(parent)) = (item.path.rows(), parent) {
            let p = self.table.node(parent);
            for (sibling, sid) in p.rows.iter().take_while(|(r, _)| r.lo < range.hi) {
                if *sibling == range || !sibling.overlaps(&range) {
                    continue;
                }
                blocked |= scan_node(self.table.node(*sid), owner, key, item.mode.lock_mode(), out.as_deref_mut());
                if blocked && out.is_none() {
                    return true;
                }
            }
        }
        blocked
    }

    /// Upper bound on the wait: the longest remaining lease among blocking holders plus the
    /// leases of the waiters ahead.
    fn estimate_wait(&self, items: &[Item], blockers: &Blockers, now: Millis) -> u64 {
        let infos = self.holder_infos(items, blockers);
        let held = infos.iter().map(|h| self.grants[&h.reservation].expires_at.saturating_sub(now)).max();
        let ahead: u64 =
            blockers.waiters.iter().filter_map(|o| self.owners[o].pending).map(|r| self.requests[&r].lease_ms).sum();
        held.unwrap_or(0) + ahead
    }

    /// Whether `grant` (of another owner) stands in the way of `item`: their modes conflict on
    /// the node they share, on overlapping row ranges, or on a counted resource.
    fn grant_blocks(&self, grant: &Grant, item: &Item) -> bool {
        let (g, i) = (&grant.path, &item.path);
        if g == i {
            return !grant.mode.lock_mode().compatible(item.mode.lock_mode()) || self.capacity(i.as_str()).is_some();
        }
        if i.is_within(g.as_str()) {
            return !grant.mode.lock_mode().compatible(item.mode.intention());
        }
        if g.is_within(i.as_str()) {
            return !grant.mode.intention().compatible(item.mode.lock_mode());
        }
        same_line(g, i) && !grant.mode.lock_mode().compatible(item.mode.lock_mode())
    }

    /// The blocking holders' reservations that stand in the way of some item.
    fn holder_infos(&self, items: &[Item], blockers: &Blockers) -> Vec<HolderInfo> {
        let mut infos = BTreeSet::new();
        for owner in &blockers.holders {
            let o = &self.owners[owner];
            for g in &o.grants {
                let grant = &self.grants[g];
                if items.iter().any(|item| self.grant_blocks(grant, item)) {
                    infos.insert(HolderInfo {
                        owner: o.name.to_string(),
                        session: o.session,
                        reservation: grant.id,
                        resource: grant.path.clone(),
                        mode: grant.mode,
                    });
                }
            }
        }
        infos.into_iter().collect()
    }

    // ---------------------------------------------------------------- settle

    /// Brings the derived parts of the state up to date after a transition: grants what became
    /// grantable, recomputes wait-for edges, breaks every new cycle, applies preemption and
    /// inheritance. Loops until nothing is dirty.
    fn settle(&mut self, ctx: &mut Ctx) {
        let resets = std::mem::take(&mut ctx.reset_inherit);
        for owner in resets {
            let Some(o) = self.owners.get_mut(&owner) else { continue };
            o.inherited = 0;
            let pending = o.pending;
            let claims: Vec<(NodeId, Mode)> =
                o.grants.iter().map(|g| (self.grants[g].node, self.grants[g].mode)).collect();
            for (node, mode) in claims {
                self.touch_claim(ctx, node, mode);
            }
            if let Some(r) = pending {
                let request = &self.requests[&r];
                let aged = self.aged_priority(request, ctx.now);
                self.set_effective(r, aged, ctx);
            }
        }
        // Owners whose edges gained a target; checked for cycles once a round leaves the
        // graph settled (inheritance may re-order queues and dissolve a transient cycle).
        let mut unchecked: BTreeSet<OwnerId> = BTreeSet::new();
        let mut pressured: BTreeSet<RequestId> = BTreeSet::new();
        for round in 0.. {
            assert!(round < SETTLE_ROUNDS_MAX, "settle did not converge");
            if ctx.dirty.is_empty() && ctx.recheck.is_empty() {
                if unchecked.is_empty() || !self.config.deadlock_detection {
                    break;
                }
                for owner in std::mem::take(&mut unchecked) {
                    self.break_cycles(owner, ctx);
                }
                continue;
            }
            // In queue order: grant what is free, or recompute who it waits for. A grant
            // cannot change the edges of a candidate already looked at (that one is ahead, so
            // anything conflicting with it would be blocked by it); an abort or a re-order
            // marks nodes dirty for the next round.
            let inheritance = self.policy_count(Policy::Inherit) > 0;
            for (_, id) in self.candidates(ctx) {
                let Some(r) = self.requests.get(&id) else { continue };
                if !self.is_blocked(r.owner, r.key(), &r.items, Starts::Targets(&r.targets)) {
                    self.grant_request(id, ctx);
                    continue;
                }
                let mut b = Blockers::edges();
                self.blockers(r.owner, r.key(), &r.items, Starts::Targets(&r.targets), &mut b);
                let owner = r.owner;
                let targets: BTreeSet<OwnerId> = b.holders.union(&b.waiters).copied().collect();
                let too_big = r
                    .items
                    .iter()
                    .any(|i| i.mode == Mode::Shared && self.capacity(i.path.as_str()).is_some_and(|c| i.units > c));
                if targets.is_empty() || too_big {
                    // Nobody else stands in the way, yet it is blocked (only its own units on a
                    // counted resource do), or it needs more units than a lowered capacity has:
                    // it would wait for itself forever, a cycle of one.
                    self.abort_victim(owner, &[owner], 1, ctx);
                    continue;
                }
                if self.wait_for.set(owner, targets) {
                    unchecked.insert(owner);
                }
                if inheritance {
                    self.apply_inheritance(id, &b.holders, ctx);
                }
                pressured.insert(id);
            }
        }
        // Preemption last, for the requests that survived: a victim of this apply asks
        // nobody to yield.
        if self.policy_count(Policy::Preempt) > 0 {
            for id in pressured {
                if self.requests.contains_key(&id) {
                    self.apply_preemption(id, ctx);
                }
            }
        }
    }

    /// Records that a claim of `mode` changed at node `id` (`None`: everything changed), if
    /// any waiter there could be affected.
    fn touch(&self, ctx: &mut Ctx, id: NodeId, mode: Option<LockMode>) {
        let Some(node) = self.table.try_node(id) else { return };
        if node.queue.is_empty() {
            return;
        }
        let counted = self.capacity(node.path.as_str()).is_some();
        if mode.is_some_and(|m| !counted && !node.queue_may_conflict(m)) {
            return;
        }
        let change = ctx.dirty.entry(id).or_default();
        match mode {
            Some(m) => change.modes |= 1 << m.index(),
            None => change.all = true,
        }
    }

    /// Notes that `units` of counted node `id` came free for its waiters during this apply.
    fn freed(&self, ctx: &mut Ctx, id: NodeId, units: u64) {
        if units > 0 && self.table.try_node(id).is_some_and(|n| !n.queue.is_empty()) {
            ctx.dirty.entry(id).or_default().freed += units;
        }
    }

    /// A claim (held or waiting) of `mode` on node `target` changed: touch every node up to
    /// the root, and the row ranges overlapping it.
    fn touch_claim(&self, ctx: &mut Ctx, target: NodeId, mode: Mode) {
        for (i, nid) in self.table.chain(target).enumerate() {
            let m = if i == 0 { mode.lock_mode() } else { mode.intention() };
            self.touch(ctx, nid, Some(m));
        }
        let node = self.table.node(target);
        if let (Some(range), Some(parent)) = (node.path.rows(), node.parent) {
            for (sibling, sid) in self.table.node(parent).rows.iter().take_while(|(r, _)| r.lo < range.hi) {
                if *sibling != range && sibling.overlaps(&range) {
                    self.touch(ctx, *sid, Some(mode.lock_mode()));
                }
            }
        }
    }

    /// The waiters to look at again, in queue order: those whose mode conflicts with a change
    /// at their node, and those named for a recheck.
    fn candidates(&self, ctx: &mut Ctx) -> BTreeSet<(QueueKey, RequestId)> {
        let mut out = BTreeSet::new();
        for (id, change) in std::mem::take(&mut ctx.dirty) {
            let Some(node) = self.table.try_node(id) else { continue };
            // On a counted resource, a waiter naming it is looked at again unless every
            // waiter there fits beside the holders, before this apply's changes as after
            // (see `scan_item`): then neither its blocking nor its edges changed here.
            let units_settled = self.capacity(node.path.as_str()).is_none_or(|capacity| {
                node.units.saturating_add(node.queued_need(capacity)).saturating_add(change.freed)
                    <= u64::from(capacity)
            });
            let modes_settled = !change.all
                && !LockMode::ALL.iter().any(|m| change.modes & (1 << m.index()) != 0 && node.queue_may_conflict(*m));
            if units_settled && modes_settled {
                continue;
            }
            for (k, e) in &node.queue {
                if change.affects(e.mode) || (e.target && !units_settled) {
                    out.insert((*k, e.request));
                }
            }
        }
        for id in std::mem::take(&mut ctx.recheck) {
            if let Some(r) = self.requests.get(&id) {
                out.insert((r.key(), id));
            }
        }
        out
    }

    fn aged_priority(&self, request: &Request, now: Millis) -> u32 {
        let steps = (now - request.enqueued_at) / self.config.aging_interval_ms;
        let aged = u64::from(request.priority) + steps * u64::from(self.config.aging_step);
        let inherited = self.owners[&request.owner].inherited;
        (aged.min(u64::from(PRIORITY_MAX)) as u32).max(inherited.min(PRIORITY_MAX))
    }

    /// Aborts victims until no cycle passes through `start`.
    fn break_cycles(&mut self, start: OwnerId, ctx: &mut Ctx) {
        while self.owners.get(&start).is_some_and(|o| o.pending.is_some()) {
            let Some(cycle) = self.wait_for.find_cycle(start, ctx.now) else { break };
            self.abort_victim(cycle.victim, &cycle.owners, cycle.len, ctx);
        }
    }

    /// Keeps the wait-for mirror's copy of what victim choice needs of a waiting owner.
    fn refresh_victim_meta(&mut self, owner: OwnerId) {
        let o = &self.owners[&owner];
        let Some(request) = o.pending else { return };
        let meta = VictimMeta {
            effective: self.requests[&request].effective,
            grants: o.grants.len() as u64,
            granted_at_sum: o.granted_at_sum,
            created_at: o.created_at,
        };
        self.wait_for.set_meta(owner, meta);
    }

    /// Aborts `victim`'s pending request to break a cycle of `cycle_len` owners (the first of
    /// which are `cycle`); its held leases stay.
    fn abort_victim(&mut self, victim: OwnerId, cycle: &[OwnerId], cycle_len: usize, ctx: &mut Ctx) {
        let names: Vec<String> = cycle.iter().take(CYCLE_REPORT_MAX).map(|o| self.owners[o].name.to_string()).collect();
        let cycle_len = cycle_len as u32;
        let request = self.owners[&victim].pending.expect("every owner on a cycle waits");
        let removed = self.remove_request(request, ctx);
        self.stats.deadlocks_total += 1;
        ctx.effects.push(Effect::DeadlockVictim {
            request,
            owner: self.owners[&victim].name.to_string(),
            session: removed.session,
            cycle: names.clone(),
            cycle_len,
        });
        ctx.aborted.insert(request, (names, cycle_len));
    }

    /// The grants of other owners that stand in the way of pending request `id`.
    fn blocking_grants(&self, id: RequestId) -> Vec<ReservationId> {
        let request = &self.requests[&id];
        let mut blockers = Blockers::edges();
        self.blockers(request.owner, request.key(), &request.items, Starts::Targets(&request.targets), &mut blockers);
        self.grants_blocking(id, &blockers.holders)
    }

    /// The grants of `holders` that stand in the way of pending request `id`.
    fn grants_blocking(&self, id: RequestId, holders: &BTreeSet<OwnerId>) -> Vec<ReservationId> {
        let request = &self.requests[&id];
        let mut out = Vec::new();
        for holder in holders {
            for g in &self.owners[holder].grants {
                if request.items.iter().any(|item| self.grant_blocks(&self.grants[g], item)) {
                    out.push(*g);
                }
            }
        }
        out
    }

    /// Priority inheritance for a request still waiting: owners holding `inherit` resources in
    /// its way take its effective priority (for their own waits) until they release. Only the
    /// holders it points at directly count; a waiter further back points at the waiter ahead
    /// of it instead, which is at least its priority, so the highest waiter still reaches them.
    fn apply_inheritance(&mut self, id: RequestId, blocking: &BTreeSet<OwnerId>, ctx: &mut Ctx) {
        let effective = self.requests[&id].effective;
        let holders: BTreeSet<OwnerId> = self
            .grants_blocking(id, blocking)
            .into_iter()
            .filter(|g| self.resource_config(&self.grants[g].path).is_some_and(|rc| rc.policy == Policy::Inherit))
            .map(|g| self.grants[&g].owner)
            .collect();
        for holder in holders {
            let h = self.owners.get_mut(&holder).expect("holder exists");
            if h.inherited >= effective {
                continue;
            }
            h.inherited = effective;
            ctx.effects.push(Effect::PriorityInherited {
                owner: h.name.to_string(),
                session: h.session,
                priority: effective,
            });
            if let Some(r) = h.pending {
                let raised = self.requests[&r].effective.max(effective);
                self.set_effective(r, raised, ctx);
            }
        }
    }

    /// The priority a waiter preempts with: its own, or the priority it inherited. Aging
    /// orders queues but does not preempt: an aged waiter would evict a holder of its own
    /// priority, which then ages and evicts it back.
    fn preempting_priority(&self, id: RequestId) -> u32 {
        let request = &self.requests[&id];
        request.priority.max(self.owners[&request.owner].inherited.min(PRIORITY_MAX))
    }

    /// Preemption for a request still waiting once the apply has settled: every `preempt`
    /// lease in its way held at least `preempt_gap` below it is asked to yield within its
    /// resource's grace.
    fn apply_preemption(&mut self, id: RequestId, ctx: &mut Ctx) {
        let claim = self.preempting_priority(id);
        for g in self.blocking_grants(id) {
            let grant = &self.grants[&g];
            let Some(rc) = self.resource_config(&grant.path) else { continue };
            if rc.policy != Policy::Preempt
                || grant.preempt_deadline.is_some()
                || claim < grant.priority.saturating_add(self.config.preempt_gap)
            {
                continue;
            }
            let grace_ms = rc.grace_ms;
            let deadline = ctx.now + grace_ms;
            let grant = self.grants.get_mut(&g).expect("grant exists");
            grant.preempt_deadline = Some(deadline);
            self.grace_timers.insert((deadline, g));
            self.stats.preemptions_total += 1;
            ctx.effects.push(Effect::PreemptRequested {
                reservation: g,
                owner: self.owners[&grant.owner].name.to_string(),
                session: grant.session,
                by: id,
                grace_ms,
                deadline,
            });
        }
    }

    /// Whether some waiter still needs `grant` preempted: one it blocks, at least
    /// `preempt_gap` above it. Waiters that could be blocked by it queue on its node, its
    /// ancestors, or row ranges overlapping it.
    fn preemption_wanted(&self, g: ReservationId) -> bool {
        let grant = &self.grants[&g];
        let mut nodes: Vec<NodeId> = self.table.chain(grant.node).collect();
        let node = self.table.node(grant.node);
        if let (Some(range), Some(parent)) = (node.path.rows(), node.parent) {
            nodes.extend(self.table.node(parent).rows.iter().filter(|(r, _)| r.overlaps(&range)).map(|(_, id)| *id));
        }
        let threshold = grant.priority.saturating_add(self.config.preempt_gap);
        nodes.iter().flat_map(|n| self.table.node(*n).queue.values()).any(|e| {
            let r = &self.requests[&e.request];
            r.owner != grant.owner
                && self.preempting_priority(e.request) >= threshold
                && r.items.iter().any(|item| self.grant_blocks(grant, item))
        })
    }

    /// Owners left holding and waiting for nothing are kept as vacant until the next Tick (or
    /// until `OWNERS_VACANT_MAX` wait), so an agent that acquires again under the same name
    /// reuses its record. Owners of an ended session go at once.
    fn collect_garbage(&mut self, ctx: &mut Ctx) {
        for owner in std::mem::take(&mut ctx.gc) {
            let Some(o) = self.owners.get(&owner) else { continue };
            if !o.grants.is_empty() || o.pending.is_some() {
                continue;
            }
            if self.sessions.contains_key(&o.session) {
                self.vacant_owners.insert(owner);
            } else {
                self.remove_owner(owner);
            }
        }
        if self.vacant_owners.len() > OWNERS_VACANT_MAX {
            self.collect_owners();
        }
    }

    /// Frees every vacant owner that still holds and waits for nothing.
    fn collect_owners(&mut self) {
        for owner in std::mem::take(&mut self.vacant_owners) {
            if self.owners.get(&owner).is_some_and(|o| o.grants.is_empty() && o.pending.is_none()) {
                self.remove_owner(owner);
            }
        }
    }

    fn remove_owner(&mut self, owner: OwnerId) {
        let o = self.owners.remove(&owner).expect("owner exists");
        if let Some(s) = self.sessions.get_mut(&o.session) {
            s.owners.remove(&*o.name);
        }
        self.vacant_owners.remove(&owner);
        self.wait_for.forget(owner);
    }

    // ---------------------------------------------------------------- reads

    /// Every held reservation, in id order.
    pub fn grants(&self) -> impl Iterator<Item = GrantInfo> + '_ {
        self.grants.values().map(|g| g.info(&self.owners[&g.owner].name))
    }

    pub fn grant(&self, id: ReservationId) -> Option<GrantInfo> {
        self.grants.get(&id).map(|g| g.info(&self.owners[&g.owner].name))
    }

    /// Every pending request, with its own, effective and preempting priorities.
    pub fn waiters(&self) -> impl Iterator<Item = WaiterInfo> + '_ {
        self.requests.values().map(|r| WaiterInfo {
            request: r.id,
            owner: self.owners[&r.owner].name.to_string(),
            session: r.session,
            items: r.items.clone(),
            priority: r.priority,
            effective_priority: r.effective,
            preempting_priority: self.preempting_priority(r.id),
            enqueued_at: r.enqueued_at,
            seq: r.seq,
        })
    }

    /// The wait-for graph as owner-name edges `(waiter, blocker)`.
    pub fn wait_for_edges(&self) -> Vec<(OwnerRef, OwnerRef)> {
        self.wait_for
            .edges()
            .iter()
            .flat_map(|(from, targets)| targets.iter().map(move |t| (self.owner_ref(*from), self.owner_ref(*t))))
            .collect()
    }

    fn owner_ref(&self, owner: OwnerId) -> OwnerRef {
        let o = &self.owners[&owner];
        OwnerRef { name: o.name.to_string(), session: o.session }
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn session_label(&self, id: SessionId) -> Option<&str> {
        self.sessions.get(&id).map(|s| s.label.as_str())
    }

    /// Whether a Tick could change anything (sessions or leases to expire, waiters to age or
    /// time out). The leader skips Ticks while there is nothing to time.
    pub fn has_timed_work(&self) -> bool {
        !self.sessions.is_empty() || !self.grants.is_empty() || !self.requests.is_empty()
    }

    pub fn session_expires_at(&self, id: SessionId) -> Option<Millis> {
        self.sessions.get(&id).map(|s| s.expires_at)
    }
}

/// A pending request as reported to readers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaiterInfo {
    pub request: RequestId,
    pub owner: String,
    pub session: SessionId,
    pub items: Vec<Item>,
    pub priority: u32,
    pub effective_priority: u32,
    /// What it preempts with: its own or inherited priority, never the aged one.
    pub preempting_priority: u32,
    pub enqueued_at: Millis,
    /// Arrival order (FIFO within a priority).
    pub seq: u64,
}

/// An owner as readers name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnerRef {
    pub name: String,
    pub session: SessionId,
}

/// Returns the counter's value and advances it.
fn take(counter: &mut u64) -> u64 {
    let id = *counter;
    *counter += 1;
    id
}

/// Holders of `node` and waiters ahead of `key` that conflict with `mode` for `owner`.
fn scan_node(node: &Node, owner: OwnerId, key: QueueKey, mode: LockMode, out: Option<&mut Blockers>) -> bool {
    let mut blocked = node.others_conflict(owner, mode);
    match out {
        None => {
            if blocked {
                return true;
            }
            if node.queue_may_conflict(mode) {
                return node.queue.range(..key).any(|(_, e)| e.owner != owner && !mode.compatible(e.mode));
            }
            false
        }
        Some(out) => {
            let mut covered = false;
            if node.queue_may_conflict(mode) {
                for (_, e) in node.queue.range(..key).rev() {
                    if e.owner != owner && !mode.compatible(e.mode) {
                        blocked = true;
                        out.waiters.insert(e.owner);
                        if !out.full && covers(e.mode, mode) {
                            covered = true;
                            break;
                        }
                    }
                }
            }
            // A covering waiter ahead conflicts with every holder here that this request
            // conflicts with, and waits for them itself (or through its own covering waiter).
            if !covered {
                node.conflicting_holders(owner, mode, &mut out.holders);
            }
            blocked
        }
    }
}

/// Two paths on one line of the hierarchy (one within the other), or overlapping row ranges
/// under the same parent.
fn same_line(a: &ResourcePath, b: &ResourcePath) -> bool {
    if a.is_within(b.as_str()) || b.is_within(a.as_str()) {
        return true;
    }
    match (a.rows(), b.rows()) {
        (Some(ra), Some(rb)) => a.parent() == b.parent() && ra.overlaps(&rb),
        _ => false,
    }
}

/// Ids whose timer is due at `now`, earliest first.
fn due<T: Copy + Ord>(timers: &BTreeSet<(Millis, T)>, now: Millis) -> Vec<T> {
    timers.iter().take_while(|(t, _)| *t <= now).map(|(_, id)| *id).collect()
}
