//! Dispatch: queued tasks to free agent slots, in (priority, age) order with backfill, each
//! to the worker with the most free slots of its role. Part of apply, so deterministic.

use qm_shared::limits::TASK_ATTEMPTS_MAX;
use qm_shared::workflow::Capability;
use qm_shared::Role;

use crate::state::types::TaskStatus;
use crate::state::types::{Effect, Millis, SessionId, TaskId};
use crate::state::{Ctx, State};

use super::*;

/// Most queued tasks one dispatch decision looks at in one team's queue before it gives up
/// on that team (skipped ones wait for resources, budget or a capable slot).
pub(in crate::state) const DISPATCH_SCAN_MAX: usize = 64;

impl State {
    /// Hands queued tasks to free agent slots: per role, the team with the best head of queue
    /// after its fair-share penalty, then in key order within it; skipping (backfill) passes
    /// whose resources are held while other work can run, and applying the budget policies.
    pub(in crate::state) fn dispatch_tasks(&mut self, ctx: &mut Ctx) {
        let roles: Vec<Role> = self
            .tasks
            .free
            .keys()
            .filter(|r| self.tasks.queue.get(*r).is_some_and(|t| !t.is_empty()))
            .copied()
            .collect();
        for role in roles {
            while let Some((id, session)) = self.pick(role, ctx) {
                self.assign(id, session, ctx);
            }
        }
    }

    /// The worker for a task of `role` needing `requires`: most free slots, lowest session.
    pub(in crate::state) fn slot_for(&self, role: Role, requires: &[Capability], named: &Named) -> Option<SessionId> {
        let free = self.tasks.free.get(&role)?;
        if requires.is_empty() && *named == Named::default() {
            return free.first().map(|(_, s)| *s);
        }
        free.iter().map(|(_, s)| *s).find(|s| self.tasks.workers[s].capable(requires, named))
    }

    /// The next dispatch decision for `role`, if any.
    pub(in crate::state) fn pick(&mut self, role: Role, ctx: &mut Ctx) -> Option<(TaskId, SessionId)> {
        self.tasks.free.get(&role).filter(|f| !f.is_empty())?;
        let point = i64::try_from(self.config.aging_interval_ms).unwrap_or(i64::MAX / 4);
        let share = i64::from(self.config.fair_share_points).saturating_mul(point);
        let mut teams: Vec<(i64, &str)> = self
            .tasks
            .queue
            .get(&role)?
            .iter()
            .filter_map(|(team, set)| {
                let (key, _) = set.first()?;
                let running = i64::from(self.tasks.team_running.get(team).copied().unwrap_or(0));
                Some((key.saturating_add(share.saturating_mul(running)), team.as_str()))
            })
            .collect();
        teams.sort();
        let mut holds: Vec<(TaskId, String)> = Vec::new();
        let mut approvals: Vec<TaskId> = Vec::new();
        let mut waits: Vec<(TaskId, String)> = Vec::new();
        let mut fallback = None;
        let mut chosen = None;
        'teams: for (_, team) in &teams {
            let set = &self.tasks.queue[&role][*team];
            for (_, id) in set.iter().take(DISPATCH_SCAN_MAX) {
                let t = &self.tasks.tasks[id];
                let Some(session) = self.slot_for(role, &t.spec.requires, &t.named) else {
                    let mut needs: Vec<String> = t.spec.requires.iter().map(|c| c.as_str().to_string()).collect();
                    needs.extend(t.named.wanted());
                    waits.push((*id, format!("no free {role} slot on a worker with {}", needs.join(", "))));
                    continue;
                };
                match self.admit(t, ctx.now) {
                    Admission::Go => {}
                    Admission::Defer(reason) => {
                        waits.push((*id, reason));
                        continue;
                    }
                    Admission::Hold(reason) => {
                        holds.push((*id, reason));
                        continue;
                    }
                    Admission::Approval(reason) => {
                        approvals.push(*id);
                        holds.push((*id, reason));
                        continue;
                    }
                }
                if let Some(reason) = self.backfill_skip(t, ctx.now) {
                    fallback.get_or_insert((*id, session));
                    waits.push((*id, reason));
                    continue;
                }
                chosen = Some((*id, session));
                break 'teams;
            }
        }
        for id in approvals {
            self.want_approval(id);
        }
        for (id, reason) in holds {
            self.hold(id, reason, ctx);
        }
        let chosen = chosen.or(fallback);
        for (id, reason) in waits {
            if chosen.map(|c| c.0) != Some(id) {
                self.set_wait(id, Some(reason), ctx);
            }
        }
        chosen
    }

    /// Why a pass of a work item should be passed over for now: an exclusive claim of it is
    /// held by someone it cannot preempt, and it has not waited its aging bound yet.
    pub(in crate::state) fn backfill_skip(&self, t: &Task, now: Millis) -> Option<String> {
        if !self.is_pass(t.id) || now.saturating_sub(t.queued_since) >= self.config.aging_bound_ms(t.spec.priority) {
            return None;
        }
        let held = self.held_against(&t.spec.items, t.spec.priority)?;
        Some(format!("{held} is held; other work runs first (backfill) for at most the aging bound"))
    }

    /// Starts the next attempt of queued task `id` on the worker of `session`.
    pub(in crate::state) fn assign(&mut self, id: TaskId, session: SessionId, ctx: &mut Ctx) {
        self.tasks.dequeue(&self.config, id);
        let route = self.route(id, session);
        let w = self.tasks.workers.get_mut(&session).expect("worker exists");
        let t = self.tasks.tasks.get_mut(&id).expect("task exists");
        w.running.insert(id, t.spec.role);
        t.status = TaskStatus::Running;
        t.attempt += 1;
        t.session = Some(session);
        t.wait = None;
        if let Some(r) = &route {
            *self.tasks.routed.entry(r.provider.clone()).or_default() += 1;
        }
        t.route = route;
        t.percent = t.checkpoint.as_ref().map_or(0, |_| t.percent);
        if t.attempts.len() >= TASK_ATTEMPTS_MAX {
            t.attempts.remove(0);
        }
        t.attempts.push(Attempt {
            attempt: t.attempt,
            session,
            node_id: w.node_id.clone(),
            started_at: ctx.now,
            ended_at: None,
            outcome: None,
            resumed_from: t.checkpoint.as_ref().map(|c| c.seq),
        });
        *self.tasks.team_running.entry(t.spec.team.clone()).or_default() += 1;
        ctx.effects.push(Effect::TaskAssigned { task: id, attempt: t.attempt, session });
        self.tasks.refresh_free(session);
        self.job_task_started(id, ctx);
    }
}
