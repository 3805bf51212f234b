//! Settling after a transition: candidates to grant, inheritance, preemption, deadlock
//! cycles and garbage collection of owners.

use super::*;

/// What changed at a node during one apply: a set of modes (bit = `LockMode::index`), or
/// everything (a capacity was redeclared).
///
/// On a counted resource it also sums the units that came free (grants released, waiters
/// gone): a waiter there whose set fits now even with those units taken back fitted before
/// too, so nothing about this node changed for it.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Change {
    pub(in crate::state) modes: u8,
    pub(in crate::state) all: bool,
    pub(in crate::state) freed: u64,
}

impl Change {
    /// Whether a waiter asking `mode` at this node may be affected by a change of modes.
    pub(super) fn affects(self, mode: LockMode) -> bool {
        self.all || LockMode::ALL.iter().any(|m| self.modes & (1 << m.index()) != 0 && !mode.compatible(*m))
    }
}

impl State {
    /// Brings the derived parts of the state up to date after a transition: grants what became
    /// grantable, recomputes wait-for edges, breaks every new cycle, applies preemption and
    /// inheritance. Loops until nothing is dirty.
    pub(super) fn settle(&mut self, ctx: &mut Ctx) {
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
    pub(super) fn touch(&self, ctx: &mut Ctx, id: NodeId, mode: Option<LockMode>) {
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
    pub(super) fn freed(&self, ctx: &mut Ctx, id: NodeId, units: u64) {
        if units > 0 && self.table.try_node(id).is_some_and(|n| !n.queue.is_empty()) {
            ctx.dirty.entry(id).or_default().freed += units;
        }
    }

    /// A claim (held or waiting) of `mode` on node `target` changed: touch every node up to
    /// the root, and the row ranges overlapping it.
    pub(super) fn touch_claim(&self, ctx: &mut Ctx, target: NodeId, mode: Mode) {
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
    pub(super) fn candidates(&self, ctx: &mut Ctx) -> BTreeSet<(QueueKey, RequestId)> {
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

    pub(super) fn aged_priority(&self, request: &Request, now: Millis) -> u32 {
        let steps = (now - request.enqueued_at) / self.config.aging_interval_ms;
        let aged = u64::from(request.priority) + steps * u64::from(self.config.aging_step);
        let inherited = self.owners[&request.owner].inherited;
        (aged.min(u64::from(PRIORITY_MAX)) as u32).max(inherited.min(PRIORITY_MAX))
    }

    /// Aborts victims until no cycle passes through `start`.
    pub(super) fn break_cycles(&mut self, start: OwnerId, ctx: &mut Ctx) {
        while self.owners.get(&start).is_some_and(|o| o.pending.is_some()) {
            let Some(cycle) = self.wait_for.find_cycle(start, ctx.now) else { break };
            self.abort_victim(cycle.victim, &cycle.owners, cycle.len, ctx);
        }
    }

    /// Keeps the wait-for mirror's copy of what victim choice needs of a waiting owner.
    pub(super) fn refresh_victim_meta(&mut self, owner: OwnerId) {
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
    pub(super) fn abort_victim(&mut self, victim: OwnerId, cycle: &[OwnerId], cycle_len: usize, ctx: &mut Ctx) {
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
    pub(super) fn blocking_grants(&self, id: RequestId) -> Vec<ReservationId> {
        let request = &self.requests[&id];
        let mut blockers = Blockers::edges();
        self.blockers(request.owner, request.key(), &request.items, Starts::Targets(&request.targets), &mut blockers);
        self.grants_blocking(id, &blockers.holders)
    }

    /// The grants of `holders` that stand in the way of pending request `id`.
    pub(super) fn grants_blocking(&self, id: RequestId, holders: &BTreeSet<OwnerId>) -> Vec<ReservationId> {
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
    pub(super) fn apply_inheritance(&mut self, id: RequestId, blocking: &BTreeSet<OwnerId>, ctx: &mut Ctx) {
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
    pub(super) fn preempting_priority(&self, id: RequestId) -> u32 {
        let request = &self.requests[&id];
        request.priority.max(self.owners[&request.owner].inherited.min(PRIORITY_MAX))
    }

    /// Preemption for a request still waiting once the apply has settled: every `preempt`
    /// lease in its way held at least `preempt_gap` below it is asked to yield within its
    /// resource's grace.
    pub(super) fn apply_preemption(&mut self, id: RequestId, ctx: &mut Ctx) {
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
    pub(super) fn preemption_wanted(&self, g: ReservationId) -> bool {
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
    pub(super) fn collect_garbage(&mut self, ctx: &mut Ctx) {
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
    pub(super) fn collect_owners(&mut self) {
        for owner in std::mem::take(&mut self.vacant_owners) {
            if self.owners.get(&owner).is_some_and(|o| o.grants.is_empty() && o.pending.is_none()) {
                self.remove_owner(owner);
            }
        }
    }

    pub(super) fn remove_owner(&mut self, owner: OwnerId) {
        let o = self.owners.remove(&owner).expect("owner exists");
        if let Some(s) = self.sessions.get_mut(&o.session) {
            s.owners.remove(&*o.name);
        }
        self.vacant_owners.remove(&owner);
        self.wait_for.forget(owner);
    }
}
