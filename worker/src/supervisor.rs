//! A worker's supervisor, pure: `on_event(event, now) -> actions`, like [`crate::agent`].
//!
//! It owns the worker's slots (one agent each), the assignments waiting for an idle slot of
//! their role, the tasks parked while their acquire waits (their agent took other work), and
//! the parked tasks granted and waiting for an agent. The worker runtime drives it from
//! gRPC and actor messages and performs its actions; the simulator's studies drive the same
//! code from their event loop, so the two cannot drift apart.
//!
//! ```text
//!   Assigned ─▶ an idle slot of the role? ── yes ─▶ Agent{slot, Assigned}
//!                                          └─ no ──▶ backlog (until a slot of the role is idle)
//!   Parked   ─▶ parked (retry: RetryAfter, then Acquire again as one set)
//!   AcquireDone of a parked task ─▶ granted: ready ─▶ an idle slot? Agent{slot, Resume}
//!                                  │                 else reclaim: the lowest-priority agent
//!                                  │                 of the role (never above it) is preempted
//!                                  └ failed: Report{Failed} (no agent ran it)
//!   Idle       ─▶ ready tasks first (they hold leases), then the backlog
//!   Down(slot) ─▶ its task is lost (Lost), the slot restarts after a doubling backoff,
//!                 or stays down after too many restarts in the window
//! ```
//!
//! Nothing here does I/O or reads a clock: time comes in as `now` (milliseconds).

use std::collections::{BTreeMap, VecDeque};

use qm_shared::Role;

use crate::agent::{Assignment, Event, Lease, Outcome, Report};
use crate::executor::Usage;

/// Why an acquire did not end in a grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcquireError {
    /// Aborted (or refused) to break a wait-for cycle.
    Deadlock(String),
    Failed(String),
}

impl std::fmt::Display for AcquireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AcquireError::Deadlock(why) => write!(f, "deadlock victim: {why}"),
            AcquireError::Failed(e) => f.write_str(e),
        }
    }
}

/// How the supervisor behaves: what the worker runs with, and what a study may vary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// A granted parked task with no idle agent of its role takes a slot back from
    /// lower-priority work (which checkpoints and is requeued), rather than hold its leases
    /// idle.
    pub reclaim: bool,
    /// Pause before a deadlock victim's parked task acquires again.
    pub park_retry_ms: u64,
    /// Restarts of one slot within `restart_window_ms` before it is left down.
    pub restarts_max: u32,
    pub restart_window_ms: u64,
    /// Backoff of a slot restart: doubles from the first, capped.
    pub restart_backoff_first_ms: u64,
    pub restart_backoff_max_ms: u64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            reclaim: true,
            park_retry_ms: 200,
            restarts_max: 10,
            restart_window_ms: 60_000,
            restart_backoff_first_ms: 100,
            restart_backoff_max_ms: 5_000,
        }
    }
}

/// One agent slot as the supervisor sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub role: Role,
    /// Its index among the slots of its role (the agent is `<node>/<role>-<index>`).
    pub index: u32,
    /// Its agent is running (not crashed, or restarted since).
    pub up: bool,
    /// Up and without a task.
    pub idle: bool,
    /// The task and attempt it works on.
    pub task: Option<(u64, u32)>,
    /// The priority of that task.
    pub priority: u32,
    /// Asked to hand the slot back to a parked task whose resources arrived.
    pub yielding: bool,
    /// When it was restarted within the window.
    restarts: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SupEvent {
    /// The coordinator assigned a task (a resend of one already here is ignored).
    Assigned(Assignment),
    /// A preemption notice for a task.
    Preempt(u64),
    /// The coordinator cancels a task.
    Cancel(u64),
    /// Tasks the coordinator says are no longer ours.
    Abandon(Vec<u64>),
    /// The agent of `slot` handed over its task, whose acquire waits (or, `retry`, must be
    /// made again); the agent goes idle.
    Parked { slot: usize, a: Assignment, retry: bool },
    /// An acquire finished (of an agent's task, or of a parked one).
    AcquireDone { task: u64, result: Result<Vec<Lease>, AcquireError> },
    /// A parked task's retry pause is over.
    RetryDue(u64),
    /// The agent of `slot` is done with `task` and has no other. (One for a task the slot no
    /// longer has, e.g. arriving after the next assignment, changes nothing.)
    Idle { slot: usize, task: u64 },
    /// The agent of `slot` stopped (failed or was killed).
    Down { slot: usize, why: String },
    /// The agent of `slot` was started again.
    Up(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub enum SupAction {
    /// Give an event to the agent of `slot`.
    Agent { slot: usize, event: Event },
    /// Acquire a parked task's resources again, as one atomic set, waiting; the answer comes
    /// back as `AcquireDone`.
    Acquire { task: u64, resources: Vec<(String, bool, u32)>, priority: u32 },
    /// Send `RetryDue(task)` after `after_ms`.
    RetryAfter { task: u64, after_ms: u64 },
    /// Withdraw a parked task's pending acquire.
    CancelAcquire { task: u64 },
    /// Release reservations nobody will use.
    Release(Vec<u64>),
    /// Report about a task no agent holds (a parked, granted or backlogged one).
    Report { task: u64, attempt: u32, report: Report },
    /// `task` left this worker without an agent (cancelled, failed or abandoned while it
    /// waited): drop what is kept about it.
    Forget { task: u64 },
    /// The agent of `slot` stopped while on `task`: release what the task held and report
    /// the attempt failed with `why`.
    Lost { slot: usize, task: u64, attempt: u32, why: String },
    /// Start the agent of `slot` again after `after_ms`, then send `Up(slot)`.
    Restart { slot: usize, after_ms: u64 },
}

/// The supervisor of one worker's slots.
#[derive(Clone, Debug)]
pub struct Supervisor {
    policy: Policy,
    slots: Vec<Slot>,
    /// Assignments that found no idle slot of their role yet, in arrival order.
    backlog: VecDeque<Assignment>,
    /// Tasks waiting for resources without an agent (their acquire keeps its place).
    parked: BTreeMap<u64, Assignment>,
    /// Parked tasks granted their resources, waiting for an idle agent, in grant order.
    ready: VecDeque<(Assignment, Vec<Lease>)>,
    /// Slots taken back for granted parked tasks, ever.
    reclaims: u64,
}

impl Supervisor {
    /// `slots[role]` agents of each role, every one up and idle.
    pub fn new(slots: &BTreeMap<Role, u32>, policy: Policy) -> Supervisor {
        let slots = slots
            .iter()
            .flat_map(|(role, n)| {
                (0..*n).map(|index| Slot {
                    role: *role,
                    index,
                    up: true,
                    idle: true,
                    task: None,
                    priority: 0,
                    yielding: false,
                    restarts: Vec::new(),
                })
            })
            .collect();
        Supervisor {
            policy,
            slots,
            backlog: VecDeque::new(),
            parked: BTreeMap::new(),
            ready: VecDeque::new(),
            reclaims: 0,
        }
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The slot whose agent works on `task`.
    pub fn slot_of(&self, task: u64) -> Option<usize> {
        self.slots.iter().position(|s| s.task.is_some_and(|(t, _)| t == task))
    }

    /// Whether `task` waits here without an agent (parked, granted or backlogged).
    pub fn waiting(&self, task: u64) -> bool {
        self.parked.contains_key(&task)
            || self.ready.iter().any(|(a, _)| a.task == task)
            || self.backlog.iter().any(|a| a.task == task)
    }

    /// Tasks parked (their acquire waits without an agent).
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Slots taken back for granted parked tasks, ever.
    pub fn reclaims(&self) -> u64 {
        self.reclaims
    }

    pub fn on_event(&mut self, event: SupEvent, now: u64) -> Vec<SupAction> {
        let mut out = Vec::new();
        match event {
            SupEvent::Assigned(a) => {
                if self.slot_of(a.task).is_none() && !self.waiting(a.task) {
                    self.assign(a, &mut out);
                }
            }
            SupEvent::Preempt(task) => {
                // A parked task holds nothing that could be wanted: nothing to do.
                if let Some(slot) = self.slot_of(task) {
                    out.push(SupAction::Agent { slot, event: Event::Preempt });
                }
            }
            SupEvent::Cancel(task) => self.cancel(task, &mut out),
            SupEvent::Abandon(tasks) => {
                for task in tasks {
                    self.abandon(task, &mut out);
                }
            }
            SupEvent::Parked { slot, a, retry } => {
                let mine = self.slots.get(slot).is_some_and(|s| s.task.is_some_and(|(t, _)| t == a.task));
                if mine {
                    self.slots[slot].task = None;
                } else if self.slot_of(a.task).is_some() || self.waiting(a.task) {
                    // Not that slot's task, and it is elsewhere already: nothing to park.
                    return out;
                }
                if retry {
                    out.push(SupAction::RetryAfter { task: a.task, after_ms: self.policy.park_retry_ms });
                }
                self.parked.insert(a.task, a);
            }
            SupEvent::RetryDue(task) => {
                if let Some(a) = self.parked.get(&task) {
                    out.push(SupAction::Acquire { task, resources: a.resources.clone(), priority: a.priority });
                }
            }
            SupEvent::AcquireDone { task, result } => self.acquire_done(task, result, &mut out),
            SupEvent::Idle { slot, task } => {
                let ended = |s: &&mut Slot| s.up && s.task.is_none_or(|(t, _)| t == task);
                if let Some(s) = self.slots.get_mut(slot).filter(ended) {
                    s.idle = true;
                    s.yielding = false;
                    s.task = None;
                }
                self.on_idle(&mut out);
            }
            SupEvent::Down { slot, why } => self.down(slot, why, now, &mut out),
            SupEvent::Up(slot) => {
                if let Some(s) = self.slots.get_mut(slot).filter(|s| !s.up) {
                    s.up = true;
                    s.idle = true;
                    s.task = None;
                }
                self.on_idle(&mut out);
            }
        }
        out
    }

    /// An idle, up slot of `role`, taken for `a`.
    fn take_idle(&mut self, a: &Assignment) -> Option<usize> {
        let slot = self.slots.iter().position(|s| s.role == a.role && s.up && s.idle)?;
        let s = &mut self.slots[slot];
        s.idle = false;
        s.priority = a.priority;
        s.task = Some((a.task, a.attempt));
        Some(slot)
    }

    fn assign(&mut self, a: Assignment, out: &mut Vec<SupAction>) {
        match self.take_idle(&a) {
            Some(slot) => out.push(SupAction::Agent { slot, event: Event::Assigned(a) }),
            None => self.backlog.push_back(a),
        }
    }

    /// Granted parked tasks first (they hold leases while they wait), then the backlog.
    fn on_idle(&mut self, out: &mut Vec<SupAction>) {
        self.resume_ready(out);
        for a in std::mem::take(&mut self.backlog) {
            self.assign(a, out);
        }
    }

    /// Starts granted parked tasks on idle agents of their role; for one that finds none,
    /// takes a slot back (under the reclaim policy).
    fn resume_ready(&mut self, out: &mut Vec<SupAction>) {
        for (a, leases) in std::mem::take(&mut self.ready) {
            match self.take_idle(&a) {
                Some(slot) => out.push(SupAction::Agent { slot, event: Event::Resume(a, leases) }),
                None => {
                    if self.policy.reclaim {
                        self.reclaim_slot(a.role, a.priority, out);
                    }
                    self.ready.push_back((a, leases));
                }
            }
        }
    }

    /// A parked task's resources arrived but every agent of its role is busy with work it
    /// took while the task waited: the agent with the lowest-priority work (never above the
    /// parked task's; the first such slot on a tie) checkpoints and stops; its task is
    /// requeued and resumes from the checkpoint.
    fn reclaim_slot(&mut self, role: Role, priority: u32, out: &mut Vec<SupAction>) {
        let victim = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.role == role && s.up && !s.idle && !s.yielding && s.task.is_some())
            .filter(|(_, s)| s.priority <= priority)
            .min_by_key(|(i, s)| (s.priority, *i))
            .map(|(i, _)| i);
        if let Some(slot) = victim {
            self.slots[slot].yielding = true;
            self.reclaims += 1;
            out.push(SupAction::Agent { slot, event: Event::Preempt });
        }
    }

    fn acquire_done(&mut self, task: u64, result: Result<Vec<Lease>, AcquireError>, out: &mut Vec<SupAction>) {
        if let Some(a) = self.parked.remove(&task) {
            match result {
                Ok(leases) => {
                    self.ready.push_back((a, leases));
                    self.resume_ready(out);
                }
                Err(e) => {
                    out.push(SupAction::Forget { task });
                    out.push(SupAction::Report {
                        task,
                        attempt: a.attempt,
                        report: result_report(Outcome::Failed, format!("acquiring the task's resources: {e}")),
                    });
                }
            }
            return;
        }
        match (self.slot_of(task), result) {
            (Some(slot), result) => {
                let event = match result {
                    Ok(leases) => Event::Granted(leases),
                    Err(AcquireError::Deadlock(why)) => Event::DeadlockVictim(why),
                    Err(AcquireError::Failed(e)) => Event::AcquireFailed(e),
                };
                out.push(SupAction::Agent { slot, event });
            }
            // Nobody wants it any more (cancelled or abandoned meanwhile).
            (None, Ok(leases)) => out.push(SupAction::Release(leases.iter().map(|l| l.id).collect())),
            (None, Err(_)) => {}
        }
    }

    /// Takes `task` out of wherever it waits without an agent: its acquire withdrawn, or
    /// its leases released if granted.
    fn take_waiting(&mut self, task: u64, out: &mut Vec<SupAction>) -> Option<Assignment> {
        let a = if let Some(a) = self.parked.remove(&task) {
            out.push(SupAction::CancelAcquire { task });
            a
        } else if let Some(i) = self.ready.iter().position(|(a, _)| a.task == task) {
            let (a, leases) = self.ready.remove(i)?;
            out.push(SupAction::Release(leases.iter().map(|l| l.id).collect()));
            a
        } else {
            let i = self.backlog.iter().position(|a| a.task == task)?;
            self.backlog.remove(i)?
        };
        out.push(SupAction::Forget { task });
        Some(a)
    }

    fn cancel(&mut self, task: u64, out: &mut Vec<SupAction>) {
        if let Some(a) = self.take_waiting(task, out) {
            out.push(SupAction::Report {
                task,
                attempt: a.attempt,
                report: result_report(Outcome::Cancelled, String::new()),
            });
        } else if let Some(slot) = self.slot_of(task) {
            out.push(SupAction::Agent { slot, event: Event::Cancel });
        }
    }

    fn abandon(&mut self, task: u64, out: &mut Vec<SupAction>) {
        // Not ours any more: no result for one that waits here.
        if self.take_waiting(task, out).is_none() {
            if let Some(slot) = self.slot_of(task) {
                out.push(SupAction::Agent { slot, event: Event::Abandon });
            }
        }
    }

    /// The agent of `slot` stopped: its task is lost; the slot restarts after a backoff that
    /// doubles with each restart in the window, and past `restarts_max` stays down.
    fn down(&mut self, slot: usize, why: String, now: u64, out: &mut Vec<SupAction>) {
        let policy = self.policy;
        let Some(s) = self.slots.get_mut(slot) else { return };
        if let Some((task, attempt)) = s.task.take() {
            out.push(SupAction::Lost { slot, task, attempt, why });
        }
        s.up = false;
        s.idle = false;
        s.yielding = false;
        s.restarts.retain(|t| now.saturating_sub(*t) < policy.restart_window_ms);
        if s.restarts.len() as u32 >= policy.restarts_max {
            return;
        }
        let doublings = s.restarts.len().min(20) as u32;
        let after_ms =
            policy.restart_backoff_first_ms.saturating_mul(1u64 << doublings).min(policy.restart_backoff_max_ms);
        s.restarts.push(now);
        out.push(SupAction::Restart { slot, after_ms });
    }
}

fn result_report(outcome: Outcome, error: String) -> Report {
    Report::Result { outcome, output: Vec::new(), error, usage: Usage::default(), wall_ms: 0 }
}

#[cfg(test)]
mod tests;
