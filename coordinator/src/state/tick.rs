//! Time: resource declarations, the tick that expires sessions, leases, grace periods,
//! waits and aging timers, and the lease restart a new leader proposes.

use super::*;

impl State {
    /// Declares (or redeclares) a resource's capacity, policy and grace.
    pub(super) fn declare_resource(
        &mut self,
        path: &ResourcePath,
        config: ResourceConfig,
        ctx: &mut Ctx,
    ) -> Result<(), Refusal> {
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

    pub(super) fn apply_tick(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        self.table.collect();
        self.collect_owners();
        // Ends and timeouts in the order they fell due: everything that ended at or before a
        // waiter's deadline is released, and what came free granted, before that deadline is
        // judged. A resource that came free in time goes to the waiter, however coarse the
        // ticks.
        let deadlines: BTreeSet<Millis> =
            self.wait_timers.iter().take_while(|(t, _)| *t <= now).map(|(t, _)| *t).collect();
        for deadline in deadlines {
            self.end_due(deadline, ctx);
            self.settle(ctx);
            for id in due(&self.wait_timers, deadline) {
                let request = self.remove_request(id, ctx);
                self.stats.timeouts_total += 1;
                let owner = self.owners[&request.owner].name.to_string();
                ctx.effects.push(Effect::TimedOut { request: id, owner, session: request.session });
            }
        }
        self.end_due(now, ctx);
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

    /// Ends what fell due at or before `at`: sessions, leases, and preemption graces (a lease
    /// is revoked if some waiter still wants it, the notice withdrawn otherwise).
    fn end_due(&mut self, at: Millis, ctx: &mut Ctx) {
        let due_sessions: Vec<SessionId> = due(&self.session_timers, at);
        for s in due_sessions {
            self.end_session(s, ReleaseReason::SessionExpired, ctx);
        }
        for id in due(&self.lease_timers, at) {
            let grant = self.remove_grant(id, ctx);
            self.stats.expirations_total += 1;
            let owner = self.owners[&grant.owner].name.to_string();
            ctx.effects.push(Effect::Expired { reservation: id, resource: grant.path, owner, session: grant.session });
        }
        for id in due(&self.grace_timers, at) {
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
    }

    pub(super) fn apply_restart_leases(&mut self, ctx: &mut Ctx) -> Response {
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
}
