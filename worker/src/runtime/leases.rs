//! Leases as an agent holds them: the atomic acquire of a task's set (waiting on the
//! watch stream for a queued grant), extends while held, and release.

use super::*;

pub(super) async fn release_all(shared: &Shared, ids: Vec<u64>) {
    for id in ids {
        let target = Some(pb::release_request::Target::ReservationId(id));
        let req = pb::ReleaseRequest { session_id: shared.session(), target };
        if let Err(e) = shared.client.release(req).await {
            tracing::warn!(reservation = id, error = %e, "release failed; the lease will expire");
        }
    }
}

/// Extends `ids` every third of the lease while the task holds them.
pub(super) async fn keep_leases(shared: Shared, ids: Vec<u64>) {
    loop {
        tokio::time::sleep(Duration::from_millis(TASK_LEASE_MS / 3)).await;
        for id in &ids {
            let req = pb::ExtendRequest { reservation_id: *id, session_id: shared.session(), lease_ms: TASK_LEASE_MS };
            let _ = shared.client.extend(req).await;
        }
    }
}

/// Acquires `resources` as one atomic set, waiting until granted.
pub(super) async fn acquire(
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

pub(super) const DEADLOCK: &str = "deadlock:";

pub(super) async fn acquire_set(
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

pub(super) fn leases_of(rs: Vec<pb::Reservation>) -> Vec<Lease> {
    rs.into_iter().map(|r| Lease { id: r.id, fencing_token: r.fencing_token }).collect()
}

/// Waits on the watch stream until every item of queued request `request` is granted.
/// A set is granted whole in one apply, but watchers see one event per item: collect them
/// all, or the leases after the first would be held for nobody.
pub(super) async fn wait_for_grant(
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
