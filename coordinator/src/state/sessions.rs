//! Sessions: open, keep alive, close, and what ending one releases.

use super::*;

impl State {
    pub(super) fn apply_open_session(
        &mut self,
        label: String,
        ttl_ms: u64,
        principal: String,
        ctx: &mut Ctx,
    ) -> Response {
        if self.sessions.len() >= SESSIONS_MAX {
            return Response::Refused(Refusal::Exhausted { what: "sessions".into(), max: SESSIONS_MAX as u64 });
        }
        if !principal.is_empty() {
            let open = self.principal_sessions.get(&principal).copied().unwrap_or(0);
            if open as usize >= SESSIONS_PER_PRINCIPAL_MAX {
                return Response::Refused(Refusal::Exhausted {
                    what: format!("sessions of principal {principal:?}"),
                    max: SESSIONS_PER_PRINCIPAL_MAX as u64,
                });
            }
            self.principal_sessions.insert(principal.clone(), open + 1);
        }
        let id = SessionId(take(&mut self.next_session));
        let expires_at = ctx.now + ttl_ms;
        self.sessions.insert(id, Session { id, label, ttl_ms, expires_at, owners: BTreeMap::new(), principal });
        self.session_timers.insert((expires_at, id));
        ctx.effects.push(Effect::SessionOpened { session: id });
        Response::SessionOpened { session: id, ttl_ms, expires_at }
    }

    pub(super) fn apply_keep_alive(&mut self, id: SessionId, ctx: &mut Ctx) -> Response {
        let Some(session) = self.sessions.get_mut(&id) else {
            return Response::Refused(Refusal::SessionUnknown { session: id });
        };
        self.session_timers.remove(&(session.expires_at, id));
        session.expires_at = ctx.now + session.ttl_ms;
        self.session_timers.insert((session.expires_at, id));
        Response::SessionKept { session: id, expires_at: session.expires_at }
    }

    pub(super) fn apply_close_session(&mut self, id: SessionId, ctx: &mut Ctx) -> Response {
        match self.end_session(id, ReleaseReason::SessionClosed, ctx) {
            None => Response::Refused(Refusal::SessionUnknown { session: id }),
            Some((released, cancelled)) => Response::SessionClosed { session: id, released, cancelled },
        }
    }

    /// Rebuilds the open sessions and the claims per principal from the sessions, grants and
    /// requests (after a restore).
    pub(super) fn rebuild_principal_sessions(&mut self) {
        self.principal_sessions.clear();
        for s in self.sessions.values().filter(|s| !s.principal.is_empty()) {
            *self.principal_sessions.entry(s.principal.clone()).or_default() += 1;
        }
        self.principal_claims = self.claims_per_principal();
    }

    /// Reservations held plus items waited for, per principal (not the empty one), counted
    /// from the grants and requests.
    pub(super) fn claims_per_principal(&self) -> BTreeMap<String, u64> {
        let mut claims: BTreeMap<String, u64> = BTreeMap::new();
        let sessions = self
            .grants
            .values()
            .map(|g| (g.session, 1))
            .chain(self.requests.values().map(|r| (r.session, r.items.len() as u64)));
        for (session, n) in sessions {
            match self.sessions.get(&session) {
                Some(s) if !s.principal.is_empty() => *claims.entry(s.principal.clone()).or_default() += n,
                _ => {}
            }
        }
        claims
    }

    /// Adds `add` and takes `sub` from the claims of `session`'s principal (nothing for a
    /// session without one, or one already ended: ending a session takes its claims at once).
    pub(super) fn count_claims(&mut self, session: SessionId, add: u64, sub: u64) {
        let Some(s) = self.sessions.get(&session) else { return };
        if s.principal.is_empty() {
            return;
        }
        // The common case (the principal already counts something) allocates nothing.
        match self.principal_claims.get_mut(&s.principal) {
            Some(n) => {
                *n = (*n + add).saturating_sub(sub);
                if *n == 0 {
                    self.principal_claims.remove(&s.principal);
                }
            }
            None if add > sub => {
                self.principal_claims.insert(s.principal.clone(), add - sub);
            }
            None => {}
        }
    }

    /// Releases everything a session holds and cancels its waits.
    pub(super) fn end_session(&mut self, id: SessionId, reason: ReleaseReason, ctx: &mut Ctx) -> Option<(u32, u32)> {
        let claims: u64 = self
            .sessions
            .get(&id)?
            .owners
            .values()
            .map(|o| {
                let o = &self.owners[o];
                o.grants.len() as u64 + o.pending.map_or(0, |r| self.requests[&r].items.len() as u64)
            })
            .sum();
        self.count_claims(id, 0, claims);
        let session = self.sessions.remove(&id)?;
        if let Some(open) = self.principal_sessions.get_mut(&session.principal) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                self.principal_sessions.remove(&session.principal);
            }
        }
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
                self.stats.session_releases_total += 1;
                released += 1;
            }
            ctx.gc.push(*owner);
        }
        Some((released, cancelled))
    }
}
