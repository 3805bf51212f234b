//! Acquire, release, cancel and extend: how a request becomes a grant or a queue entry,
//! and how grants and queue entries are added and removed.

use super::*;

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
pub(super) struct Terms {
    priority: u32,
    lease_ms: u64,
    request: Option<RequestId>,
}

impl State {
    pub(super) fn apply_acquire(&mut self, mut a: Acquire, ctx: &mut Ctx) -> Response {
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
        let principal = &self.sessions[&a.session].principal;
        if !principal.is_empty() {
            let claims = self.principal_claims.get(principal).copied().unwrap_or(0);
            let max = self.config.claims_per_principal_max;
            if claims + a.items.len() as u64 > max {
                return Response::Refused(Refusal::Exhausted {
                    what: format!("reservations held and waited for by principal {principal:?}"),
                    max,
                });
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
        self.count_claims(request.session, request.items.len() as u64, 0);
        self.requests.insert(id, request);
        self.refresh_victim_meta(owner);
        let position = blockers.ahead + 1;
        ctx.effects.push(Effect::Queued { request: id, owner: a.owner, session: a.session, position });

        self.settle(ctx);
        // A request answered in the apply that made it (granted, or refused as the victim of
        // the cycle it closed) was never queued as far as anyone watching can tell.
        let answered = ctx.granted.contains_key(&id) || ctx.aborted.contains_key(&id);
        if answered {
            ctx.effects.retain(|e| !matches!(e, Effect::Queued { request, .. } if *request == id));
        }
        if let Some(grants) = ctx.granted.get(&id) {
            return Response::Granted { grants: grants.clone() };
        }
        if let Some((cycle, cycle_len)) = ctx.aborted.get(&id) {
            return Response::Refused(Refusal::Deadlock { cycle: cycle.clone(), cycle_len: *cycle_len });
        }
        Response::Queued { request: id, position, estimated_wait_ms }
    }

    pub(super) fn new_owner(&mut self, session: SessionId, name: &str, now: Millis) -> OwnerId {
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
    pub(super) fn grant_items(
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
            self.count_claims(grant.session, 1, 0);
            self.grants.insert(id, grant);
            self.stats.grants_total += 1;
            ctx.effects.push(Effect::Granted { grant: info.clone(), request });
            infos.push(info);
        }
        infos
    }

    pub(super) fn remove_grant(&mut self, id: ReservationId, ctx: &mut Ctx) -> Grant {
        let grant = self.grants.remove(&id).expect("grant exists");
        self.count_claims(grant.session, 0, 1);
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
    pub(super) fn enqueue(&mut self, request: &mut Request, ctx: &mut Ctx) {
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

    pub(super) fn dequeue(&mut self, request: &Request, ctx: &mut Ctx) {
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
    pub(super) fn remove_request(&mut self, id: RequestId, ctx: &mut Ctx) -> Request {
        let request = self.requests.remove(&id).expect("request exists");
        self.count_claims(request.session, 0, request.items.len() as u64);
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

    pub(super) fn grant_request(&mut self, id: RequestId, ctx: &mut Ctx) {
        let request = self.remove_request(id, ctx);
        let terms = Terms { priority: request.priority, lease_ms: request.lease_ms, request: Some(id) };
        let grants = self.grant_items(request.owner, &request.items, terms, None, ctx);
        ctx.granted.insert(id, grants);
    }

    /// Moves a request to a new effective priority (aging, inheritance).
    pub(super) fn set_effective(&mut self, id: RequestId, effective: u32, ctx: &mut Ctx) {
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

    pub(super) fn apply_release(&mut self, session: SessionId, id: ReservationId, ctx: &mut Ctx) -> Response {
        if self.grants.get(&id).is_none_or(|g| g.session != session) {
            return Response::Refused(Refusal::ReservationUnknown { reservation: id });
        }
        let grant = self.remove_grant(id, ctx);
        self.stats.releases_total += 1;
        ctx.effects.push(Effect::Released { reservation: id, resource: grant.path, reason: ReleaseReason::Released });
        Response::Released { reservation: id }
    }

    pub(super) fn apply_cancel(&mut self, session: SessionId, id: RequestId, ctx: &mut Ctx) -> Response {
        if self.requests.get(&id).is_none_or(|r| r.session != session) {
            return Response::Refused(Refusal::RequestUnknown { request: id });
        }
        let request = self.remove_request(id, ctx);
        let owner = self.owners[&request.owner].name.to_string();
        ctx.effects.push(Effect::Cancelled { request: id, owner, session });
        Response::Cancelled { request: id }
    }

    pub(super) fn apply_extend(
        &mut self,
        session: SessionId,
        id: ReservationId,
        lease_ms: u64,
        ctx: &mut Ctx,
    ) -> Response {
        let Some(grant) = self.grants.get_mut(&id).filter(|g| g.session == session) else {
            return Response::Refused(Refusal::ReservationUnknown { reservation: id });
        };
        self.lease_timers.remove(&(grant.expires_at, id));
        grant.expires_at = (ctx.now + lease_ms).min(grant.cap_at).max(grant.expires_at);
        grant.lease_ms = lease_ms;
        self.lease_timers.insert((grant.expires_at, id));
        Response::Extended { reservation: id, expires_at: grant.expires_at }
    }
}
