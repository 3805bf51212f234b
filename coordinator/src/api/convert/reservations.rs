//! Reservations: acquire requests in; reservations, holders, pending requests, refusals and
//! watch events out.

use std::collections::{BTreeMap, BTreeSet};

use qm_shared::limits::{LEASE_MS_DEFAULT, PRIORITY_DEFAULT};
use qm_shared::pb::v1 as pb;
use qm_shared::{validate, Invalid};

use super::{items_from_pb, mode_to_pb};
use crate::state::{Acquire, Effect, GrantInfo, HolderInfo, Item, Policy, Refusal, ReleaseReason, SessionId, State};
use crate::state::{Wait, WaiterInfo};

pub fn acquire_from_pb(req: pb::AcquireRequest, state: &State) -> Result<Acquire, Invalid> {
    let session = SessionId(req.session_id);
    if req.session_id == 0 {
        return Err(Invalid::new("session_id", "is required (open a session first)"));
    }
    let owner = if req.owner.is_empty() { state.session_label(session).unwrap_or("").to_string() } else { req.owner };
    let owner = if owner.is_empty() { format!("{session}") } else { owner };
    validate::check_owner(&owner)?;
    let wait = match pb::AcquireKind::try_from(req.kind) {
        Ok(pb::AcquireKind::Try) => {
            if req.wait_timeout_ms.is_some() {
                return Err(Invalid::new("wait_timeout_ms", "applies to ACQUIRE_KIND_WAIT only"));
            }
            Wait::Try
        }
        Ok(pb::AcquireKind::Wait) => {
            if let Some(t) = req.wait_timeout_ms {
                validate::check_wait_timeout_ms(t)?;
            }
            Wait::Wait { timeout_ms: req.wait_timeout_ms }
        }
        _ => {
            return Err(Invalid::new(
                "kind",
                format!("{} is not an acquire kind; use ACQUIRE_KIND_TRY (1) or ACQUIRE_KIND_WAIT (2)", req.kind),
            ))
        }
    };
    let items = items_from_pb(req.resources)?;
    validate::check_priority(req.priority)?;
    let lease_ms = if req.lease_ms == 0 { LEASE_MS_DEFAULT } else { req.lease_ms };
    validate::check_lease_ms(lease_ms).map_err(|e| Invalid::new("lease_ms", e.message))?;
    let priority = if req.priority == 0 { PRIORITY_DEFAULT } else { req.priority };
    Ok(Acquire { session, owner, items, wait, priority, lease_ms })
}

/// A resource policy; unspecified is none.
pub fn policy_from_pb(field: &str, policy: i32) -> Result<Policy, Invalid> {
    match pb::ResourcePolicy::try_from(policy) {
        Ok(pb::ResourcePolicy::Unspecified | pb::ResourcePolicy::None) => Ok(Policy::None),
        Ok(pb::ResourcePolicy::Preempt) => Ok(Policy::Preempt),
        Ok(pb::ResourcePolicy::Inherit) => Ok(Policy::Inherit),
        Err(_) => Err(Invalid::new(field, format!("{policy} is not a policy"))),
    }
}

pub fn reservation(g: &GrantInfo) -> pb::Reservation {
    pb::Reservation {
        id: g.id.0,
        resource: g.resource.to_string(),
        mode: mode_to_pb(g.mode),
        units: g.units,
        fencing_token: g.fencing_token,
        owner: g.owner.to_string(),
        session_id: g.session.0,
        priority: g.priority,
        granted_at_ms: g.granted_at,
        expires_at_ms: g.expires_at,
        effective_priority: g.priority,
    }
}

pub fn holder(h: &HolderInfo, state: &State) -> pb::Holder {
    let grant = state.grant(h.reservation);
    pb::Holder {
        owner: h.owner.clone(),
        session_id: h.session.0,
        reservation_id: h.reservation.0,
        resource: h.resource.to_string(),
        mode: mode_to_pb(h.mode),
        units: grant.as_ref().map_or(1, |g| g.units),
        priority: grant.as_ref().map_or(0, |g| g.priority),
        expires_at_ms: grant.as_ref().map_or(0, |g| g.expires_at),
    }
}

pub fn pending(w: &WaiterInfo, position: u32, deadline: u64) -> pb::PendingRequest {
    pb::PendingRequest {
        request_id: w.request.0,
        owner: w.owner.clone(),
        session_id: w.session.0,
        resources: w
            .items
            .iter()
            .map(|i| pb::ResourceRequest { path: i.path.to_string(), mode: mode_to_pb(i.mode), units: i.units })
            .collect(),
        priority: w.priority,
        effective_priority: w.effective_priority,
        enqueued_at_ms: w.enqueued_at,
        deadline_at_ms: deadline,
        position,
    }
}

/// Holders currently blocking `owner@session`: the grants that overlap what it asked for, of
/// the owners it waits for directly or through the requests queued ahead of it.
pub fn blockers(state: &State, owner: &str, session: SessionId, items: &[Item]) -> Vec<pb::Holder> {
    // Whom the owner waits for, directly or through the waiters queued ahead of it (those
    // hold nothing the request wants; the holders they wait for do).
    let mut waits_for: BTreeMap<(String, SessionId), Vec<(String, SessionId)>> = BTreeMap::new();
    for (from, to) in state.wait_for_edges() {
        waits_for.entry((from.name, from.session)).or_default().push((to.name, to.session));
    }
    let mut reached: BTreeSet<(String, SessionId)> = BTreeSet::new();
    let mut frontier = vec![(owner.to_string(), session)];
    while let Some(key) = frontier.pop() {
        for to in waits_for.get(&key).into_iter().flatten() {
            if reached.insert(to.clone()) {
                frontier.push(to.clone());
            }
        }
    }
    reached.remove(&(owner.to_string(), session));
    state
        .grants()
        .filter(|g| reached.contains(&(g.owner.to_string(), g.session)))
        .filter(|g| {
            items.iter().any(|i| i.path.is_within(g.resource.as_str()) || g.resource.is_within(i.path.as_str()))
        })
        .map(|g| pb::Holder {
            owner: g.owner.to_string(),
            session_id: g.session.0,
            reservation_id: g.id.0,
            resource: g.resource.to_string(),
            mode: mode_to_pb(g.mode),
            units: g.units,
            priority: g.priority,
            expires_at_ms: g.expires_at,
        })
        .collect()
}

/// What an effect is about, for watch filters: `(resource, session, owner)`.
pub fn effect_subject(e: &Effect) -> (Option<&str>, Option<SessionId>, Option<&str>) {
    match e {
        Effect::SessionOpened { session } | Effect::SessionExpired { session } => (None, Some(*session), None),
        Effect::Granted { grant, .. } => (Some(grant.resource.as_str()), Some(grant.session), Some(&grant.owner)),
        Effect::Queued { owner, session, .. } => (None, Some(*session), Some(owner)),
        Effect::Released { resource, .. } => (Some(resource.as_str()), None, None),
        Effect::Expired { resource, owner, session, .. } | Effect::Revoked { resource, owner, session, .. } => {
            (Some(resource.as_str()), Some(*session), Some(owner))
        }
        Effect::PreemptRequested { owner, session, .. }
        | Effect::PreemptWithdrawn { owner, session, .. }
        | Effect::DeadlockVictim { owner, session, .. }
        | Effect::TimedOut { owner, session, .. }
        | Effect::Cancelled { owner, session, .. }
        | Effect::PriorityInherited { owner, session, .. } => (None, Some(*session), Some(owner)),
        Effect::TaskAssigned { session, .. } | Effect::TaskCancelRequested { session, .. } => {
            (None, Some(*session), None)
        }
        Effect::TaskQueued { .. }
        | Effect::TaskProgress { .. }
        | Effect::TaskEnded { .. }
        | Effect::BudgetLevel { .. } => (None, None, None),
    }
}

fn bare(id: u64, resource: &str) -> pb::Reservation {
    pb::Reservation { id, resource: resource.to_string(), ..Default::default() }
}

/// The watch event for an effect, if watchers see that effect.
pub fn watch_event(index: u64, at_ms: u64, e: &Effect) -> Option<pb::WatchEvent> {
    use pb::watch_event as we;
    let kind = match e {
        Effect::Granted { grant, request } => we::Kind::Granted(we::Granted {
            reservations: vec![reservation(grant)],
            request_id: request.map_or(0, |r| r.0),
        }),
        Effect::Queued { request, owner, session, position } => we::Kind::Queued(we::Queued {
            request: Some(pb::PendingRequest {
                request_id: request.0,
                owner: owner.clone(),
                session_id: session.0,
                position: *position,
                enqueued_at_ms: at_ms,
                ..Default::default()
            }),
            blocked_by: Vec::new(),
        }),
        Effect::Released { reservation, resource, reason } => match reason {
            ReleaseReason::Released => {
                we::Kind::Released(we::Released { reservation: Some(bare(reservation.0, resource.as_str())) })
            }
            ReleaseReason::SessionClosed | ReleaseReason::SessionExpired => {
                we::Kind::Released(we::Released { reservation: Some(bare(reservation.0, resource.as_str())) })
            }
        },
        Effect::Expired { reservation, resource, owner, session } => we::Kind::Expired(we::Expired {
            reservation: Some(pb::Reservation {
                owner: owner.clone(),
                session_id: session.0,
                ..bare(reservation.0, resource.as_str())
            }),
        }),
        Effect::Revoked { reservation, resource, owner, session } => we::Kind::Revoked(we::Revoked {
            reservation: Some(pb::Reservation {
                owner: owner.clone(),
                session_id: session.0,
                ..bare(reservation.0, resource.as_str())
            }),
            reason: "preemption grace elapsed".into(),
        }),
        Effect::PreemptRequested { reservation, owner, session, by, grace_ms, deadline } => {
            we::Kind::PreemptRequested(we::PreemptRequested {
                reservation: Some(pb::Reservation {
                    id: reservation.0,
                    owner: owner.clone(),
                    session_id: session.0,
                    ..Default::default()
                }),
                grace_ms: *grace_ms,
                deadline_at_ms: *deadline,
                requested_by_owner: format!("{by}"),
                requested_by_priority: 0,
            })
        }
        Effect::DeadlockVictim { request, owner, session, cycle, .. } => we::Kind::DeadlockVictim(we::DeadlockVictim {
            request_id: request.0,
            owner: owner.clone(),
            session_id: session.0,
            cycle_owners: cycle.clone(),
        }),
        Effect::TimedOut { request, owner, session } => {
            we::Kind::TimedOut(we::TimedOut { request_id: request.0, owner: owner.clone(), session_id: session.0 })
        }
        Effect::Cancelled { request, owner, session } => {
            we::Kind::Cancelled(we::Cancelled { request_id: request.0, owner: owner.clone(), session_id: session.0 })
        }
        Effect::SessionExpired { session } => {
            we::Kind::SessionExpired(we::SessionExpired { session_id: session.0, ..Default::default() })
        }
        Effect::SessionOpened { .. }
        | Effect::PreemptWithdrawn { .. }
        | Effect::PriorityInherited { .. }
        | Effect::TaskQueued { .. }
        | Effect::TaskAssigned { .. }
        | Effect::TaskCancelRequested { .. }
        | Effect::TaskProgress { .. }
        | Effect::TaskEnded { .. }
        | Effect::BudgetLevel { .. } => return None,
    };
    Some(pb::WatchEvent { index, at_ms, kind: Some(kind) })
}

fn refusal_reason(r: &Refusal) -> pb::RefusalReason {
    match r {
        Refusal::Conflict { .. } => pb::RefusalReason::Conflict,
        Refusal::QueueFull { .. } => pb::RefusalReason::QueueFull,
        Refusal::Deadlock { .. } => pb::RefusalReason::Deadlock,
        Refusal::SessionUnknown { .. } => pb::RefusalReason::SessionUnknown,
        Refusal::AlreadyWaiting { .. } => pb::RefusalReason::AlreadyWaiting,
        Refusal::ReservationUnknown { .. }
        | Refusal::RequestUnknown { .. }
        | Refusal::Exhausted { .. }
        | Refusal::NoSpace { .. } => pb::RefusalReason::OverCapacity,
        Refusal::TaskUnknown { .. }
        | Refusal::StaleAttempt { .. }
        | Refusal::NotAWorker { .. }
        | Refusal::TaskEnded { .. }
        | Refusal::JobUnknown { .. }
        | Refusal::JobState { .. }
        | Refusal::ProjectUnknown { .. }
        | Refusal::NotAwaitingDecision { .. }
        | Refusal::AclBootstrapped
        | Refusal::TokenExists { .. }
        | Refusal::TokenUnknown { .. } => pb::RefusalReason::Unspecified,
        Refusal::Invalid(_) => pb::RefusalReason::Unspecified,
    }
}

/// The Refused outcome of an Acquire, holders named from `state`. A broken field rule or an
/// exhausted quota is not an answer but an error: that refusal is given back.
pub fn acquire_refused(r: Refusal, state: &State) -> Result<pb::acquire_response::Refused, Refusal> {
    use pb::acquire_response as ar;
    let reason = refusal_reason(&r) as i32;
    Ok(match r {
        // Bad input and exhausted quotas answer as a status (INVALID_ARGUMENT,
        // RESOURCE_EXHAUSTED), like every other call's, not as a conflict to wait out.
        r @ (Refusal::Invalid(_) | Refusal::Exhausted { .. } | Refusal::NoSpace { .. }) => return Err(r),
        Refusal::Conflict { holders, queue_position, estimated_wait_ms, .. } => ar::Refused {
            reason,
            holders: holders.iter().map(|h| holder(h, state)).collect(),
            queue_position,
            estimated_wait_ms,
            retry_after_ms: estimated_wait_ms.clamp(100, 5_000),
            message: "held by others (or others queued ahead)".into(),
            request_id: 0,
        },
        Refusal::QueueFull { resource, queue_len, retry_after_ms } => ar::Refused {
            reason,
            retry_after_ms,
            message: format!("queue of {resource} is full ({queue_len} waiting)"),
            ..Default::default()
        },
        Refusal::Deadlock { cycle, cycle_len } => ar::Refused {
            reason,
            message: format!("would deadlock: cycle of {cycle_len}: {}", cycle.join(" -> ")),
            ..Default::default()
        },
        Refusal::AlreadyWaiting { request } => ar::Refused {
            reason,
            request_id: request.0,
            message: Refusal::AlreadyWaiting { request }.to_string(),
            ..Default::default()
        },
        other => ar::Refused { reason, message: other.to_string(), ..Default::default() },
    })
}
