//! One agent slot's logic, pure: `on_event(event, now) -> actions`.
//!
//! ```text
//!   Idle ──Assigned──▶ Acquiring ──Granted──▶ Running ──ExecDone──▶ Idle   (release, result)
//!                         │ failed/cancelled      │ Preempt: checkpoint + stop ─▶ Stopping
//!                         ▼                       │ Cancel:  stop              ─▶ Stopping
//!                        Idle (result)            ▼ Abandon: stop, no result   ─▶ Stopping
//!   Stopping ──ExecDone──▶ Idle (release; result Preempted / Cancelled, or none if abandoned)
//! ```
//!
//! The actor around it performs the actions (gRPC calls, the executor) and feeds their
//! outcomes back as events. Nothing here does I/O or reads a clock.

use crate::executor::{Control, ExecEvent, ExecOutcome, ExecRequest, ExecResult, Usage};
use qm_shared::Role;

/// An assignment as the agent needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    pub task: u64,
    /// The role of the agent slot it was given to (its executor's limits may be the role's).
    pub role: Role,
    pub attempt: u32,
    /// `(path, mode is exclusive, units)`.
    pub resources: Vec<(String, bool, u32)>,
    pub payload: Vec<u8>,
    pub priority: u32,
    pub resume: Option<Vec<u8>>,
    pub timeout_ms: u64,
    /// Acquire one resource at a time, in order (locking as it goes).
    pub incremental: bool,
    /// The provider and model the coordinator routed the attempt to (empty: none).
    pub provider: String,
    pub model: String,
}

/// A granted reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: u64,
    pub fencing_token: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Assigned(Assignment),
    Granted(Vec<Lease>),
    AcquireFailed(String),
    /// The pending acquire was aborted to break a deadlock.
    DeadlockVictim(String),
    Exec(ExecEvent),
    ExecDone(ExecResult),
    Preempt,
    Cancel,
    /// The coordinator no longer considers this attempt ours: stop without a result.
    Abandon,
    /// The acquire of `task` has waited past the blocked threshold.
    BlockedTimeout(u64),
    /// A parked task's resources were granted: run it here.
    Resume(Assignment, Vec<Lease>),
}

/// A report to the coordinator about the current attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    Progress {
        percent: u32,
        stage: String,
        usage: Usage,
    },
    /// Waiting for resources; the slot takes other work meanwhile.
    Blocked {
        message: String,
    },
    Checkpoint {
        seq: u64,
        data: Vec<u8>,
        for_preemption: bool,
    },
    Result {
        outcome: Outcome,
        output: Vec<u8>,
        error: String,
        usage: Usage,
        wall_ms: u64,
    },
}

pub use qm_shared::attempt::Outcome;

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Acquire the resources as one atomic set, waiting, under owner `task-<id>`.
    Acquire {
        task: u64,
        resources: Vec<(String, bool, u32)>,
        priority: u32,
    },
    /// Withdraw a pending acquire of the task (if any).
    CancelAcquire {
        task: u64,
    },
    Start(ExecRequest),
    Control(Control),
    Release(Vec<u64>),
    Report {
        task: u64,
        attempt: u32,
        report: Report,
    },
    /// Hand the waiting task to the supervisor: its acquire stays queued (keeping its place)
    /// and it runs on the first idle agent once granted. This agent is free meanwhile.
    /// `retry`: the acquire is gone (a deadlock victim); acquire again, as one atomic set.
    Park {
        a: Assignment,
        retry: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    Idle,
    /// `held`: granted so far (incremental); `next`: index of the next resource to ask for.
    Acquiring {
        a: Assignment,
        since: u64,
        held: Vec<Lease>,
        next: usize,
    },
    Running {
        a: Assignment,
        leases: Vec<Lease>,
        since: u64,
    },
    Stopping {
        a: Assignment,
        leases: Vec<Lease>,
        since: u64,
        reason: Stop,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Preempted,
    Cancelled,
    Abandoned,
}

/// One slot's state.
#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    phase: Phase,
    checkpoint_seq: u64,
}

impl Default for Agent {
    fn default() -> Self {
        Agent::new()
    }
}

impl Agent {
    pub fn new() -> Agent {
        Agent { phase: Phase::Idle, checkpoint_seq: 0 }
    }

    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Idle
    }

    /// The task and attempt this slot works on.
    pub fn current(&self) -> Option<(u64, u32)> {
        match &self.phase {
            Phase::Idle => None,
            Phase::Acquiring { a, .. } | Phase::Running { a, .. } | Phase::Stopping { a, .. } => {
                Some((a.task, a.attempt))
            }
        }
    }

    pub fn on_event(&mut self, event: Event, now: u64) -> Vec<Action> {
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        let (phase, actions) = self.step(phase, event, now);
        self.phase = phase;
        actions
    }

    /// The transition table: the next phase and the actions for `event` in `phase`.
    fn step(&mut self, phase: Phase, event: Event, now: u64) -> (Phase, Vec<Action>) {
        match (phase, event) {
            (Phase::Idle, Event::Assigned(a)) => self.on_assigned(a, now),
            (Phase::Acquiring { a, since, held, next }, Event::Granted(leases)) => {
                self.on_granted(Acquiring { a, since, held, next }, leases, now)
            }
            (Phase::Acquiring { a, held, .. }, Event::DeadlockVictim(why)) => {
                (Phase::Idle, deadlock_victim(a, &held, &why))
            }
            (Phase::Acquiring { a, since, held, .. }, Event::AcquireFailed(error)) => {
                (Phase::Idle, acquire_failed(&a, since, &held, &error, now))
            }
            (Phase::Acquiring { a, since, held, .. }, Event::Cancel) => {
                (Phase::Idle, acquire_cancelled(&a, since, &held, now))
            }
            (Phase::Acquiring { a, held, .. }, Event::Abandon) => {
                let mut actions = vec![Action::CancelAcquire { task: a.task }];
                if !held.is_empty() {
                    actions.push(Action::Release(held.iter().map(|l| l.id).collect()));
                }
                (Phase::Idle, actions)
            }
            // An incremental acquisition keeps its agent: it locks as it goes, and what it
            // holds (or will be granted next) only makes sense to the agent walking the set.
            (Phase::Acquiring { a, since, held, next }, Event::BlockedTimeout(task))
                if task == a.task && !a.incremental =>
            {
                let _ = (held, next);
                (Phase::Idle, park_blocked(a, since, now))
            }
            (Phase::Idle, Event::Resume(a, leases)) => {
                self.checkpoint_seq = 0;
                let start = self.start(&a, &leases);
                (Phase::Running { a, leases, since: now }, start)
            }
            (Phase::Running { a, leases, since }, Event::Exec(ev)) => {
                let r = self.exec_report(ev, false);
                (Phase::Running { a: a.clone(), leases, since }, vec![report_on(&a, r)])
            }
            (Phase::Stopping { a, leases, since, reason }, Event::Exec(ev)) => {
                let r = self.exec_report(ev, reason == Stop::Preempted);
                let actions = if reason == Stop::Abandoned { Vec::new() } else { vec![report_on(&a, r)] };
                (Phase::Stopping { a, leases, since, reason }, actions)
            }
            (Phase::Running { a, leases, since }, Event::Preempt) => {
                (Phase::Stopping { a, leases, since, reason: Stop::Preempted }, vec![Action::Control(Control::Stop)])
            }
            (Phase::Running { a, leases, since }, Event::Cancel) => {
                (Phase::Stopping { a, leases, since, reason: Stop::Cancelled }, vec![Action::Control(Control::Stop)])
            }
            (Phase::Running { a, leases, since }, Event::Abandon) => {
                (Phase::Stopping { a, leases, since, reason: Stop::Abandoned }, vec![Action::Control(Control::Stop)])
            }
            (Phase::Running { a, leases, since }, Event::ExecDone(r)) => {
                (Phase::Idle, finished(&a, &leases, since, r, now))
            }
            (Phase::Stopping { a, leases, since, reason }, Event::ExecDone(r)) => {
                (Phase::Idle, stopped(&a, &leases, since, reason, r, now))
            }
            // Anything else is out of order (a late grant after a cancel, a duplicate notice):
            // keep the phase; a late grant is released so nothing is held for nobody.
            (phase, Event::Granted(leases)) => (phase, vec![Action::Release(leases.iter().map(|l| l.id).collect())]),
            (phase, _) => (phase, Vec::new()),
        }
    }

    /// A new assignment: start it at once if it needs nothing, else ask for its resources
    /// (all at once, or the first of them when it acquires incrementally).
    fn on_assigned(&mut self, a: Assignment, now: u64) -> (Phase, Vec<Action>) {
        self.checkpoint_seq = 0;
        if a.resources.is_empty() {
            let start = self.start(&a, &[]);
            return (Phase::Running { a, leases: Vec::new(), since: now }, start);
        }
        let next = if a.incremental { 1 } else { a.resources.len() };
        let acquire = Action::Acquire { task: a.task, resources: a.resources[..next].to_vec(), priority: a.priority };
        (Phase::Acquiring { a, since: now, held: Vec::new(), next }, vec![acquire])
    }

    /// A grant while acquiring: ask for the next resource of an incremental set, or start
    /// once everything is held.
    fn on_granted(&mut self, acquiring: Acquiring, leases: Vec<Lease>, now: u64) -> (Phase, Vec<Action>) {
        let Acquiring { a, since, mut held, next } = acquiring;
        held.extend(leases);
        if next < a.resources.len() {
            let acquire =
                Action::Acquire { task: a.task, resources: vec![a.resources[next].clone()], priority: a.priority };
            return (Phase::Acquiring { a, since, held, next: next + 1 }, vec![acquire]);
        }
        let start = self.start(&a, &held);
        (Phase::Running { a, leases: held, since: now }, start)
    }

    fn start(&self, a: &Assignment, leases: &[Lease]) -> Vec<Action> {
        let mut env = Vec::new();
        if let Some(token) = leases.iter().map(|l| l.fencing_token).max() {
            env.push(("QM_FENCING_TOKEN".to_string(), token.to_string()));
            let ids: Vec<String> = leases.iter().map(|l| l.id.to_string()).collect();
            env.push(("QM_RESERVATION_ID".to_string(), ids.join(",")));
        }
        env.push(("QM_TASK_ID".to_string(), a.task.to_string()));
        env.push(("QM_TASK_ATTEMPT".to_string(), a.attempt.to_string()));
        vec![Action::Start(ExecRequest {
            task: a.task,
            attempt: a.attempt,
            payload: a.payload.clone(),
            resume: a.resume.clone(),
            env,
            timeout_ms: a.timeout_ms,
            model: a.model.clone(),
            provider: a.provider.clone(),
            role: Some(a.role),
        })]
    }

    fn exec_report(&mut self, ev: ExecEvent, for_preemption: bool) -> Report {
        match ev {
            ExecEvent::Progress { percent, stage, usage } => Report::Progress { percent, stage, usage },
            ExecEvent::Checkpoint(data) => {
                self.checkpoint_seq += 1;
                Report::Checkpoint { seq: self.checkpoint_seq, data, for_preemption }
            }
        }
    }
}

/// The fields of [`Phase::Acquiring`], taken out of the phase.
struct Acquiring {
    a: Assignment,
    since: u64,
    held: Vec<Lease>,
    next: usize,
}

/// A report on the attempt `a` is working on.
fn report_on(a: &Assignment, report: Report) -> Action {
    Action::Report { task: a.task, attempt: a.attempt, report }
}

/// The acquire was aborted to break a deadlock: give back what it holds so the other side of
/// the cycle can finish, free this agent for other work, and retry the whole set atomically.
fn deadlock_victim(a: Assignment, held: &[Lease], why: &str) -> Vec<Action> {
    let mut actions = Vec::new();
    if !held.is_empty() {
        actions.push(Action::Release(held.iter().map(|l| l.id).collect()));
    }
    let message = format!("deadlock victim ({why}); released what it held, re-planning");
    actions.push(report_on(&a, Report::Blocked { message }));
    actions.push(Action::Park { a: Assignment { incremental: false, ..a }, retry: true });
    actions
}

/// The acquire failed: give back what it holds and report the attempt failed.
fn acquire_failed(a: &Assignment, since: u64, held: &[Lease], error: &str, now: u64) -> Vec<Action> {
    let r = Report::Result {
        outcome: Outcome::Failed,
        output: Vec::new(),
        error: format!("acquiring the task's resources: {error}"),
        usage: Usage::default(),
        wall_ms: now.saturating_sub(since),
    };
    release_then(held, report_on(a, r))
}

/// Cancelled while acquiring: withdraw the acquire, give back what it holds, report it cancelled.
fn acquire_cancelled(a: &Assignment, since: u64, held: &[Lease], now: u64) -> Vec<Action> {
    let r = Report::Result {
        outcome: Outcome::Cancelled,
        output: Vec::new(),
        error: String::new(),
        usage: Usage::default(),
        wall_ms: now.saturating_sub(since),
    };
    let mut actions = vec![Action::CancelAcquire { task: a.task }];
    actions.extend(release_then(held, report_on(a, r)));
    actions
}

/// The acquire has waited too long: say so and hand the task to the supervisor to wait there.
fn park_blocked(a: Assignment, since: u64, now: u64) -> Vec<Action> {
    let paths: Vec<&str> = a.resources.iter().map(|(p, _, _)| p.as_str()).collect();
    let message = format!("waiting for {} since {} ms; re-planning", paths.join(", "), now.saturating_sub(since));
    vec![report_on(&a, Report::Blocked { message }), Action::Park { a, retry: false }]
}

/// The attempt's result report: its outcome, what the run produced, and the time since `since`.
fn run_result(outcome: Outcome, r: ExecResult, since: u64, now: u64) -> Report {
    Report::Result { outcome, output: r.output, error: r.error, usage: r.usage, wall_ms: now.saturating_sub(since) }
}

/// The run ended by itself: release, then report how it went.
fn finished(a: &Assignment, leases: &[Lease], since: u64, r: ExecResult, now: u64) -> Vec<Action> {
    let outcome = match r.outcome {
        ExecOutcome::Succeeded => Outcome::Succeeded,
        ExecOutcome::Failed | ExecOutcome::Stopped => Outcome::Failed,
        ExecOutcome::TimedOut => Outcome::TimedOut,
    };
    let result = run_result(outcome, r, since, now);
    release_then(leases, report_on(a, result))
}

/// The run we stopped has ended: release, then report it preempted or cancelled (or, when
/// abandoned, report nothing).
fn stopped(a: &Assignment, leases: &[Lease], since: u64, reason: Stop, r: ExecResult, now: u64) -> Vec<Action> {
    let outcome = match (reason, r.outcome) {
        (Stop::Preempted, _) => Outcome::Preempted,
        (_, ExecOutcome::Succeeded) => Outcome::Succeeded,
        _ => Outcome::Cancelled,
    };
    let result = run_result(outcome, r, since, now);
    match (reason, leases.is_empty()) {
        (Stop::Abandoned, true) => Vec::new(),
        (Stop::Abandoned, false) => vec![Action::Release(leases.iter().map(|l| l.id).collect())],
        _ => release_then(leases, report_on(a, result)),
    }
}

/// Release the leases first (so a waiter gets them sooner), then report.
fn release_then(leases: &[Lease], report: Action) -> Vec<Action> {
    let mut actions = Vec::new();
    if !leases.is_empty() {
        actions.push(Action::Release(leases.iter().map(|l| l.id).collect()));
    }
    actions.push(report);
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment() -> Assignment {
        Assignment {
            task: 7,
            role: Role::Implementer,
            attempt: 1,
            resources: vec![("pg:staging".into(), true, 1)],
            payload: b"{}".to_vec(),
            priority: 100,
            resume: None,
            timeout_ms: 0,
            incremental: false,
            provider: String::new(),
            model: String::new(),
        }
    }

    #[test]
    fn incremental_acquisition_locks_as_it_goes_and_a_deadlock_victim_gives_back_and_parks() {
        let mut a = Agent::new();
        let two = Assignment {
            resources: vec![("pg:a".into(), true, 1), ("pg:b".into(), true, 1)],
            incremental: true,
            ..assignment()
        };
        let acts = a.on_event(Event::Assigned(two), 0);
        assert!(
            matches!(&acts[..], [Action::Acquire { resources, .. }] if resources.len() == 1 && resources[0].0 == "pg:a")
        );
        let acts = a.on_event(Event::Granted(vec![Lease { id: 1, fencing_token: 10 }]), 1);
        assert!(matches!(&acts[..], [Action::Acquire { resources, .. }] if resources[0].0 == "pg:b"));
        assert!(a.on_event(Event::BlockedTimeout(7), 2_000).is_empty(), "locking as it goes, it stays");
        let acts = a.on_event(Event::DeadlockVictim("cycle".into()), 2_001);
        assert_eq!(acts[0], Action::Release(vec![1]));
        assert!(matches!(&acts[1], Action::Report { report: Report::Blocked { .. }, .. }));
        assert!(matches!(&acts[2], Action::Park { a: p, retry: true } if !p.incremental));
        assert!(a.is_idle());
    }

    #[test]
    fn acquire_run_release_report() {
        let mut a = Agent::new();
        let acts = a.on_event(Event::Assigned(assignment()), 0);
        assert!(matches!(acts[..], [Action::Acquire { task: 7, .. }]));
        let acts = a.on_event(Event::Granted(vec![Lease { id: 3, fencing_token: 41 }]), 10);
        let [Action::Start(req)] = &acts[..] else { panic!("{acts:?}") };
        assert!(req.env.contains(&("QM_FENCING_TOKEN".into(), "41".into())));
        assert!(req.env.contains(&("QM_RESERVATION_ID".into(), "3".into())));
        let done = ExecResult {
            outcome: ExecOutcome::Succeeded,
            output: b"ok".to_vec(),
            error: String::new(),
            usage: Usage::default(),
        };
        let acts = a.on_event(Event::ExecDone(done), 110);
        assert_eq!(acts[0], Action::Release(vec![3]));
        assert!(matches!(
            &acts[1],
            Action::Report { report: Report::Result { outcome: Outcome::Succeeded, wall_ms: 100, .. }, .. }
        ));
        assert!(a.is_idle());
    }

    #[test]
    fn preemption_checkpoints_then_releases_then_reports_preempted() {
        let mut a = Agent::new();
        a.on_event(Event::Assigned(assignment()), 0);
        a.on_event(Event::Granted(vec![Lease { id: 3, fencing_token: 41 }]), 0);
        assert_eq!(a.on_event(Event::Preempt, 5), vec![Action::Control(Control::Stop)]);
        let acts = a.on_event(Event::Exec(ExecEvent::Checkpoint(b"step 4".to_vec())), 6);
        assert!(matches!(
            &acts[..],
            [Action::Report { report: Report::Checkpoint { seq: 1, for_preemption: true, .. }, .. }]
        ));
        let stopped = ExecResult {
            outcome: ExecOutcome::Stopped,
            output: Vec::new(),
            error: String::new(),
            usage: Usage::default(),
        };
        let acts = a.on_event(Event::ExecDone(stopped), 7);
        assert_eq!(acts[0], Action::Release(vec![3]));
        assert!(matches!(&acts[1], Action::Report { report: Report::Result { outcome: Outcome::Preempted, .. }, .. }));
    }

    #[test]
    fn a_blocked_acquire_parks_the_task_and_a_resume_runs_it() {
        let mut a = Agent::new();
        a.on_event(Event::Assigned(assignment()), 0);
        assert!(a.on_event(Event::BlockedTimeout(99), 10).is_empty(), "a stale timeout is ignored");
        let acts = a.on_event(Event::BlockedTimeout(7), 2_000);
        assert!(matches!(&acts[0], Action::Report { report: Report::Blocked { .. }, .. }), "{acts:?}");
        assert!(matches!(&acts[1], Action::Park { a: p, retry: false } if p.task == 7));
        assert!(a.is_idle());
        let acts = a.on_event(Event::Resume(assignment(), vec![Lease { id: 5, fencing_token: 9 }]), 3_000);
        assert!(matches!(&acts[..], [Action::Start(_)]));
        assert_eq!(a.current(), Some((7, 1)));
    }

    #[test]
    fn abandoned_work_stops_silently_and_late_grants_are_released() {
        let mut a = Agent::new();
        a.on_event(Event::Assigned(assignment()), 0);
        assert_eq!(a.on_event(Event::Abandon, 1), vec![Action::CancelAcquire { task: 7 }]);
        assert!(a.is_idle());
        assert_eq!(
            a.on_event(Event::Granted(vec![Lease { id: 9, fencing_token: 1 }]), 2),
            vec![Action::Release(vec![9])]
        );
    }
}
