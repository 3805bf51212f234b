//! Human-readable one-line forms of responses, refusals and effects, as the CLI, scripts and
//! scenario transcripts print them. Pure formatting.

use std::fmt;

use qm_shared::Mode;

use super::types::{Effect, GrantInfo, Refusal, Response};

/// `cycle=[a -> b -> c]`, or `cycle=[a -> b -> ...] (10001 owners)` when cut short.
struct CycleText<'a>(&'a [String], u32);

impl fmt::Display for CycleText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cycle=[{}", self.0.join(" -> "))?;
        if self.0.len() < self.1 as usize {
            write!(f, " -> ...] ({} owners)", self.1)
        } else {
            f.write_str("]")
        }
    }
}

fn mode_letter(mode: Mode) -> &'static str {
    match mode {
        Mode::Shared => "S",
        Mode::Exclusive => "X",
    }
}

impl fmt::Display for GrantInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} tok={} exp={}",
            self.id,
            self.owner,
            mode_letter(self.mode),
            self.resource,
            self.fencing_token,
            self.expires_at
        )?;
        if self.units != 1 {
            write!(f, " units={}", self.units)?;
        }
        Ok(())
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Response::SessionOpened { session, ttl_ms, expires_at } => {
                write!(f, "session {session} opened ttl={ttl_ms} expires_at={expires_at}")
            }
            Response::TaskSubmitted { task } => write!(f, "task {task} submitted"),
            Response::SpaceMeasured { alarm } => {
                write!(f, "space measured: alarm {}", if *alarm { "NOSPACE raised" } else { "clear" })
            }
            Response::TaskCancelled { task } => write!(f, "task {task} cancelled"),
            Response::WorkerRegistered { session, abandon } => {
                write!(f, "worker {session} registered abandon={abandon:?}")
            }
            Response::TaskReported { task, status } => write!(f, "task {task} {}", status.as_str()),
            Response::SessionKept { session, expires_at } => {
                write!(f, "session {session} kept expires_at={expires_at}")
            }
            Response::SessionClosed { session, released, cancelled } => {
                write!(f, "session {session} closed released={released} cancelled={cancelled}")
            }
            Response::Granted { grants } => {
                f.write_str("granted ")?;
                for (i, g) in grants.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{g}")?;
                }
                Ok(())
            }
            Response::Queued { request, position, estimated_wait_ms } => {
                write!(f, "queued {request} position={position} estimated_wait_ms={estimated_wait_ms}")
            }
            Response::Released { reservation } => write!(f, "released {reservation}"),
            Response::Cancelled { request } => write!(f, "cancelled {request}"),
            Response::Extended { reservation, expires_at } => {
                write!(f, "extended {reservation} expires_at={expires_at}")
            }
            Response::ResourceDeclared { path } => write!(f, "declared {path}"),
            Response::Ticked => f.write_str("ticked"),
            Response::Noop => f.write_str("noop"),
            Response::LeasesRestarted { reservations, sessions } => {
                write!(f, "leases restarted reservations={reservations} sessions={sessions}")
            }
            Response::Configured => f.write_str("configured"),
            Response::JobSubmitted { job } => write!(f, "work item {job} submitted"),
            Response::JobCancelled { job } => write!(f, "work item {job} cancelled"),
            Response::JobRetried { job } => write!(f, "work item {job} retried"),
            Response::GateDecided { job, pass } => write!(f, "gate of {job}/{pass} decided"),
            Response::BudgetSet { scope, name } => write!(f, "budget {} {name} set", scope.as_str()),
            Response::ProjectApplied { name, resources } => {
                write!(f, "project {name} applied ({resources} resources declared)")
            }
            Response::TokenCreated { name } => write!(f, "token {name} created"),
            Response::TokenRevoked { name } => write!(f, "token {name} revoked"),
            Response::Refused(refusal) => write!(f, "REFUSED {refusal}"),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Conflict { holders, waiting_ahead, queue_position, estimated_wait_ms } => {
                let hs: Vec<String> = holders
                    .iter()
                    .map(|h| format!("{} {} {} {}", h.owner, h.reservation, mode_letter(h.mode), h.resource))
                    .collect();
                let ahead: Vec<&str> = waiting_ahead.iter().map(|o| o.name.as_str()).collect();
                write!(
                    f,
                    "conflict holders=[{}] waiting_ahead=[{}] queue_position={queue_position} \
                     estimated_wait_ms={estimated_wait_ms}",
                    hs.join("; "),
                    ahead.join(" ")
                )
            }
            Refusal::QueueFull { resource, queue_len, retry_after_ms } => {
                write!(f, "queue full on {resource} (len {queue_len}) retry_after_ms={retry_after_ms}")
            }
            Refusal::Deadlock { cycle, cycle_len } => write!(f, "DEADLOCK {}", CycleText(cycle, *cycle_len)),
            Refusal::SessionUnknown { session } => write!(f, "session {session} unknown"),
            Refusal::ReservationUnknown { reservation } => write!(f, "reservation {reservation} unknown"),
            Refusal::RequestUnknown { request } => write!(f, "request {request} unknown"),
            Refusal::AlreadyWaiting { request } => write!(f, "owner already waits in {request}"),
            Refusal::Exhausted { what, max } => write!(f, "{what} exhausted (max {max})"),
            Refusal::NoSpace { bytes, quota } => write!(
                f,
                "alarm NOSPACE: the replicated state is {bytes} bytes, over its quota of {quota} (limits.state_bytes_max); \
                 writes that add data are refused until it is back under {}% of the quota; release, close and cancel still work",
                super::types::SPACE_ALARM_CLEAR_PERCENT
            ),
            Refusal::AclBootstrapped => write!(f, "the cluster is already bootstrapped"),
            Refusal::TokenExists { name } => write!(f, "a token named {name:?} exists"),
            Refusal::TokenUnknown { name } => write!(f, "token {name:?} is unknown"),
            Refusal::TaskUnknown { task } => write!(f, "task {task} unknown"),
            Refusal::StaleAttempt { task, attempt, current } => {
                write!(f, "task {task} attempt {attempt} is stale (current {current})")
            }
            Refusal::NotAWorker { session } => write!(f, "session {session} registered no worker"),
            Refusal::TaskEnded { task } => write!(f, "task {task} already ended"),
            Refusal::Invalid(invalid) => write!(f, "INVALID_ARGUMENT {invalid}"),
            Refusal::JobUnknown { job } => write!(f, "work item {job} unknown"),
            Refusal::JobState { job, status } => write!(f, "work item {job} is {status}"),
            Refusal::ProjectUnknown { project } => {
                write!(f, "project {project:?} unknown (register it with qm project apply FILE)")
            }
            Refusal::NotAwaitingDecision { job, pass, status } => {
                write!(f, "pass {pass} of {job} waits for no decision (it is {status})")
            }
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Effect::SessionOpened { session } => write!(f, "SessionOpened {session}"),
            Effect::SessionExpired { session } => write!(f, "SessionExpired {session}"),
            Effect::Granted { grant, request } => match request {
                Some(q) => write!(f, "Granted {grant} (was {q})"),
                None => write!(f, "Granted {grant}"),
            },
            Effect::Queued { request, owner, position, .. } => {
                write!(f, "Queued {request} {owner} position={position}")
            }
            Effect::Released { reservation, resource, reason } => {
                write!(f, "Released {reservation} {resource} ({reason:?})")
            }
            Effect::Expired { reservation, resource, owner, .. } => {
                write!(f, "Expired {reservation} {owner} {resource}")
            }
            Effect::PreemptRequested { reservation, owner, by, grace_ms, deadline, .. } => {
                write!(f, "PreemptRequested {reservation} {owner} by={by} grace_ms={grace_ms} deadline={deadline}")
            }
            Effect::PreemptWithdrawn { reservation, owner, .. } => write!(f, "PreemptWithdrawn {reservation} {owner}"),
            Effect::Revoked { reservation, resource, owner, .. } => {
                write!(f, "Revoked {reservation} {owner} {resource}")
            }
            Effect::DeadlockVictim { request, owner, cycle, cycle_len, .. } => {
                write!(f, "DeadlockVictim {request} {owner} {}", CycleText(cycle, *cycle_len))
            }
            Effect::TimedOut { request, owner, .. } => write!(f, "TimedOut {request} {owner}"),
            Effect::Cancelled { request, owner, .. } => write!(f, "Cancelled {request} {owner}"),
            Effect::PriorityInherited { owner, priority, .. } => {
                write!(f, "PriorityInherited {owner} priority={priority}")
            }
            Effect::TaskQueued { task, resumable } => write!(f, "TaskQueued {task} resumable={resumable}"),
            Effect::TaskAssigned { task, attempt, session } => {
                write!(f, "TaskAssigned {task} attempt={attempt} worker={session}")
            }
            Effect::TaskCancelRequested { task, attempt, session } => {
                write!(f, "TaskCancelRequested {task} attempt={attempt} worker={session}")
            }
            Effect::TaskProgress { task, attempt, percent } => {
                write!(f, "TaskProgress {task} attempt={attempt} {percent}%")
            }
            Effect::TaskEnded { task, status } => write!(f, "TaskEnded {task} {}", status.as_str()),
            Effect::BudgetLevel { scope, name, level, spent_micros, limit_micros } => write!(
                f,
                "BudgetLevel {} {name} {} spent={spent_micros} limit={limit_micros}",
                scope.as_str(),
                level.as_str()
            ),
        }
    }
}
