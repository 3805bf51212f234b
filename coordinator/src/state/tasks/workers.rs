//! Workers: registration (slots, GPUs, providers), and what losing one does to its tasks.

use std::collections::{BTreeMap, BTreeSet};

use qm_shared::limits::WORKERS_MAX;
use qm_shared::workflow::Capability;
use qm_shared::Role;
use serde::{Deserialize, Serialize};

use crate::state::types::{GpuInfo, ProviderInfo, RoleSpec, TaskStatus, Usage, WorkerSpec};
use crate::state::types::{Refusal, Response, SessionId, TaskId};
use crate::state::{Ctx, State};

use super::Named;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub session: SessionId,
    pub node_id: String,
    pub slots: BTreeMap<Role, u32>,
    pub labels: BTreeMap<String, String>,
    /// Running tasks and their roles.
    pub running: BTreeMap<TaskId, Role>,
    /// Running tasks whose agent waits for resources and lent its slot to other work.
    pub blocked: BTreeSet<TaskId>,
    pub gpus: Vec<GpuInfo>,
    pub providers: Vec<ProviderInfo>,
    /// It offers the container engine.
    pub container: bool,
    /// The tiers its agent specs give, per role.
    pub specs: BTreeMap<Role, RoleSpec>,
    /// Repositories it is granted and coding-agent CLIs it runs, by name.
    pub repos: BTreeSet<String>,
    pub clis: BTreeSet<String>,
    /// Free slots per role as last indexed.
    pub(in crate::state) free_now: BTreeMap<Role, u32>,
}

impl Worker {
    /// Whether the worker's box has what a task requires, and the repository and CLI its
    /// payload names.
    pub fn capable(&self, requires: &[Capability], named: &Named) -> bool {
        requires.iter().all(|c| match c {
            Capability::Gpu => !self.gpus.is_empty(),
            Capability::LocalModel => self.providers.iter().any(|p| p.local),
            Capability::Container => self.container,
        }) && named.repo.as_ref().is_none_or(|r| self.repos.contains(r))
            && named.cli.as_ref().is_none_or(|c| self.clis.contains(c))
    }

    pub(in crate::state) fn free(&self, role: Role) -> u32 {
        let used = self.running.iter().filter(|(t, r)| **r == role && !self.blocked.contains(*t)).count() as u32;
        self.slots.get(&role).copied().unwrap_or(0).saturating_sub(used)
    }
}

impl State {
    /// Refuses a role no connected worker offers, unless it is built in: a role a spec
    /// declares is usable once a worker hosts it, and a misspelt role is caught at submit
    /// instead of waiting forever. `field` names where the role was given.
    pub(in crate::state) fn check_role_offered(&self, field: &str, role: Role) -> Result<(), Refusal> {
        if role.is_built_in() || self.tasks.workers.values().any(|w| w.slots.contains_key(&role)) {
            return Ok(());
        }
        Err(Refusal::Invalid(qm_shared::Invalid::new(
            field,
            format!(
                "{role} is not a built-in role and no connected worker offers it; a worker offers it \
                 once a spec of its --agents declares it (role: {role}, slots: N) or --slots {role}=N names it"
            ),
        )))
    }

    /// A role's tiers as an agent spec gives them: the first connected worker's (in session
    /// order) that has a spec for it.
    pub(in crate::state) fn role_spec(&self, role: Role) -> Option<RoleSpec> {
        self.tasks.workers.values().find_map(|w| w.specs.get(&role).copied())
    }

    pub(in crate::state) fn apply_register_worker(&mut self, w: WorkerSpec, ctx: &mut Ctx) -> Response {
        if !self.sessions.contains_key(&w.session) {
            return Response::Refused(Refusal::SessionUnknown { session: w.session });
        }
        if !self.tasks.workers.contains_key(&w.session) && self.tasks.workers.len() >= WORKERS_MAX {
            return Response::Refused(Refusal::Exhausted { what: "workers".into(), max: WORKERS_MAX as u64 });
        }
        let running = self.tasks.workers.get(&w.session).map(|old| old.running.clone()).unwrap_or_default();
        // What the worker runs that is not (any more) its current attempt: abandon.
        let abandon: Vec<TaskId> = w
            .running
            .iter()
            .filter(|id| {
                self.tasks.tasks.get(id).is_none_or(|t| t.status != TaskStatus::Running || t.session != Some(w.session))
            })
            .copied()
            .collect();
        let blocked = self.tasks.workers.get(&w.session).map(|old| old.blocked.clone()).unwrap_or_default();
        let free_now = self.tasks.workers.get(&w.session).map(|old| old.free_now.clone()).unwrap_or_default();
        self.tasks.workers.insert(
            w.session,
            Worker {
                session: w.session,
                node_id: w.node_id,
                slots: w.slots,
                labels: w.labels,
                running,
                blocked,
                gpus: w.gpus,
                providers: w.providers,
                container: w.container,
                specs: w.specs,
                repos: w.repos,
                clis: w.clis,
                free_now,
            },
        );
        self.tasks.refresh_free(w.session);
        self.dispatch_tasks(ctx);
        Response::WorkerRegistered { session: w.session, abandon }
    }

    /// The running task `id` leaves the worker of `session`.
    pub(in crate::state) fn leave_worker(&mut self, id: TaskId, session: SessionId) {
        if let Some(w) = self.tasks.workers.get_mut(&session) {
            w.running.remove(&id);
            w.blocked.remove(&id);
        }
        self.tasks.refresh_free(session);
        let t = self.tasks.tasks.get_mut(&id).expect("task exists");
        t.session = None;
        if let Some(r) = &t.route {
            if let Some(n) = self.tasks.routed.get_mut(&r.provider) {
                *n -= 1;
                if *n == 0 {
                    self.tasks.routed.remove(&r.provider);
                }
            }
        }
        if let Some(n) = self.tasks.team_running.get_mut(&t.spec.team) {
            *n -= 1;
            if *n == 0 {
                self.tasks.team_running.remove(&t.spec.team);
            }
        }
    }

    /// A worker's session ended: its running attempts are lost; requeue them.
    pub(in crate::state) fn worker_lost(&mut self, session: SessionId, ctx: &mut Ctx) {
        let Some(w) = self.tasks.workers.get(&session) else { return };
        let running: Vec<TaskId> = w.running.keys().copied().collect();
        for id in running {
            let t = self.tasks.tasks.get_mut(&id).expect("running task exists");
            if let Some(a) = t.attempts.last_mut() {
                a.ended_at = Some(ctx.now);
            }
            t.blocked = None;
            self.leave_worker(id, session);
            self.record_attempt(id, None, Usage::default(), 0, ctx);
            self.requeue_task(id, ctx);
        }
        self.tasks.forget_worker(session);
        self.dispatch_tasks(ctx);
    }
}
