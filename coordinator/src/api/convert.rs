//! Protocol ↔ domain conversions for the client API. Validation of wire input happens here,
//! at the edge: every error names the wire field and the bound.

use qm_shared::limits::{LEASE_MS_DEFAULT, PRIORITY_DEFAULT};
use qm_shared::pb::v1 as pb;
use qm_shared::{validate, Invalid, Mode, ResourcePath};

use crate::state::{Acquire, Effect, GrantInfo, HolderInfo, Item, ReleaseReason, SessionId, State, Wait, WaiterInfo};

pub fn mode_from_pb(field: &str, mode: i32) -> Result<Mode, Invalid> {
    match pb::Mode::try_from(mode) {
        Ok(pb::Mode::Shared) => Ok(Mode::Shared),
        Ok(pb::Mode::Exclusive) => Ok(Mode::Exclusive),
        _ => Err(Invalid::new(field, format!("{mode} is not a mode; use MODE_SHARED (1) or MODE_EXCLUSIVE (2)"))),
    }
}

pub fn mode_to_pb(mode: Mode) -> i32 {
    match mode {
        Mode::Shared => pb::Mode::Shared as i32,
        Mode::Exclusive => pb::Mode::Exclusive as i32,
    }
}

pub fn path(field: &str, text: &str) -> Result<ResourcePath, Invalid> {
    ResourcePath::parse(text).map_err(|e| Invalid::new(field, e.message))
}

/// The optional resource-prefix filter of List, Watch and Graph.
pub fn prefix(field: &str, text: &str) -> Result<Option<ResourcePath>, Invalid> {
    if text.is_empty() {
        return Ok(None);
    }
    path(field, text).map(Some)
}

/// Resource requests as core items, each field checked and named.
pub fn items_from_pb(resources: Vec<pb::ResourceRequest>) -> Result<Vec<Item>, Invalid> {
    if resources.len() > qm_shared::limits::SET_SIZE_MAX {
        return Err(Invalid::new(
            "resources",
            format!("has {} entries, at most {}", resources.len(), qm_shared::limits::SET_SIZE_MAX),
        ));
    }
    let mut items = Vec::with_capacity(resources.len());
    for (i, r) in resources.into_iter().enumerate() {
        let path = path(&format!("resources[{i}].path"), &r.path)?;
        let mode = mode_from_pb(&format!("resources[{i}].mode"), r.mode)?;
        items.push(Item { path, mode, units: r.units.max(1) });
    }
    Ok(items)
}

pub fn items_to_pb(items: &[Item]) -> Vec<pb::ResourceRequest> {
    items
        .iter()
        .map(|i| pb::ResourceRequest { path: i.path.to_string(), mode: mode_to_pb(i.mode), units: i.units })
        .collect()
}

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

/// Holders currently blocking `owner@session`: the grants of the owners it waits for that
/// overlap what it asked for.
pub fn blockers(state: &State, owner: &str, session: SessionId, items: &[Item]) -> Vec<pb::Holder> {
    let targets: Vec<_> = state
        .wait_for_edges()
        .into_iter()
        .filter(|(from, _)| from.name == owner && from.session == session)
        .map(|(_, to)| to)
        .collect();
    state
        .grants()
        .filter(|g| targets.iter().any(|t| *t.name == *g.owner && t.session == g.session))
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

pub fn tier_to_pb(t: qm_shared::Tier) -> pb::ModelTier {
    match t {
        qm_shared::Tier::Cheap => pb::ModelTier::Cheap,
        qm_shared::Tier::Standard => pb::ModelTier::Standard,
        qm_shared::Tier::Frontier => pb::ModelTier::Frontier,
    }
}
