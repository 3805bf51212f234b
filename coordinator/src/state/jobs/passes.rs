//! Passes: submitting a work item, starting each pass as a task, advancing when a pass
//! passes its gate, retrying, cancelling and ending the item, and routing a pass to a model
//! provider.

use qm_shared::limits::{BUDGETS_MAX, JOBS_ENDED_RETAINED_MAX, JOBS_MAX, TASK_PAYLOAD_BYTES_MAX};
use qm_shared::workflow::{dollars, Complexity, Reviewer};
use qm_shared::{Invalid, Mode, Tier};

use crate::state::quotas::{job_bytes, Work};
use crate::state::types::{Item, JobId, Refusal, Response, TaskId};
use crate::state::types::{JobSpec, Level, Period, Scope, TaskSpec, TaskStatus};
use crate::state::{Ctx, State};

use super::*;

impl State {
    pub(in crate::state) fn apply_submit_job(&mut self, spec: JobSpec, ctx: &mut Ctx) -> Response {
        if self.jobs.jobs.len() >= JOBS_MAX {
            return Response::Refused(Refusal::Exhausted { what: "work items".into(), max: JOBS_MAX as u64 });
        }
        if let Err(r) = self.work_quota(&spec.principal, Work::Item, job_bytes(&spec)) {
            return Response::Refused(r);
        }
        let Some(project) = self.jobs.projects.get(&spec.project) else {
            return Response::Refused(Refusal::ProjectUnknown { project: spec.project });
        };
        for (i, p) in spec.workflow.passes.iter().enumerate() {
            if let Err(r) = self.check_role_offered(&format!("workflow.pass[{i}].role"), p.role) {
                return Response::Refused(r);
            }
            if let Some(g) = p.gate.as_ref().filter(|g| g.reviewer != qm_shared::workflow::Reviewer::Human) {
                if let Err(r) = self.check_role_offered(&format!("workflow.pass[{i}].gate.review_role"), g.review_role)
                {
                    return Response::Refused(r);
                }
            }
            for (j, n) in p.needs.iter().enumerate() {
                if !project.covers(&n.path) {
                    return Response::Refused(Refusal::Invalid(Invalid::new(
                        format!("workflow.pass[{i}].needs[{j}].path"),
                        format!("{} is not declared by project {}", n.path, project.name),
                    )));
                }
            }
        }
        if spec.budget_micros.is_some() && self.jobs.budget_count() >= BUDGETS_MAX {
            return Response::Refused(Refusal::Exhausted { what: "budgets".into(), max: BUDGETS_MAX as u64 });
        }
        self.jobs.next_job += 1;
        let id = JobId(self.jobs.next_job);
        let passes = spec
            .workflow
            .passes
            .iter()
            .map(|p| {
                // The workflow's tier, else the role's agent spec's, else the role's default.
                let start = p.tier.or_else(|| self.role_spec(p.role).map(|t| t.start)).unwrap_or(p.start_tier());
                PassState::new(&p.name, spec.complexity.tier(start))
            })
            .collect();
        let complexity = match spec.complexity {
            Complexity::Normal => String::new(),
            c => format!(
                ", complexity {} (every pass starts a tier {})",
                c.as_str(),
                if c == Complexity::High { "up" } else { "down" }
            ),
        };
        let summary = format!(
            "submitted: {} (priority {}), team {}, project {}, workflow {} ({} pass{}){complexity}",
            spec.class,
            spec.priority,
            spec.team,
            spec.project,
            spec.workflow.name,
            spec.workflow.passes.len(),
            if spec.workflow.passes.len() == 1 { "" } else { "es" }
        );
        if let Some(limit) = spec.budget_micros {
            self.jobs.budgets.entry(Scope::Item).or_default().insert(
                id.to_string(),
                Budget {
                    scope: Scope::Item,
                    name: id.to_string(),
                    limit_micros: limit,
                    period: Period::Total,
                    period_start: 0,
                    spent_micros: 0,
                    committed_micros: 0,
                    level: Level::Under,
                },
            );
        }
        self.jobs.jobs.insert(
            id,
            Job {
                id,
                spec,
                status: JobStatus::Running,
                passes,
                submitted_at: ctx.now,
                ended_at: None,
                events: Vec::new(),
                cost_micros: 0,
                saved_micros: 0,
            },
        );
        self.jobs.event(id, "", summary, ctx);
        self.advance(id, ctx);
        self.dispatch_tasks(ctx);
        Response::JobSubmitted { job: id }
    }

    pub(in crate::state) fn apply_cancel_job(&mut self, id: JobId, ctx: &mut Ctx) -> Response {
        let Some(job) = self.jobs.jobs.get(&id) else {
            return Response::Refused(Refusal::JobUnknown { job: id });
        };
        if job.status != JobStatus::Running {
            return Response::Refused(Refusal::JobState { job: id, status: job.status.as_str().into() });
        }
        self.end_job(id, JobStatus::Cancelled, "cancelled".into(), ctx);
        self.dispatch_tasks(ctx);
        Response::JobCancelled { job: id }
    }

    pub(in crate::state) fn apply_retry_job(&mut self, id: JobId, ctx: &mut Ctx) -> Response {
        let Some(job) = self.jobs.jobs.get_mut(&id) else {
            return Response::Refused(Refusal::JobUnknown { job: id });
        };
        if !matches!(job.status, JobStatus::Failed | JobStatus::Cancelled) {
            return Response::Refused(Refusal::JobState { job: id, status: job.status.as_str().into() });
        }
        if let Some(at) = job.ended_at.take() {
            self.jobs.ended.remove(&(at, id));
        }
        job.status = JobStatus::Running;
        let mut again = Vec::new();
        for p in &mut job.passes {
            if !p.status.done() && p.status != PassStatus::Pending {
                p.status = PassStatus::Pending;
                p.gate_failures = 0;
                p.wait = None;
                again.push(p.name.clone());
            }
        }
        self.jobs.event(id, "", format!("retried: {} again", again.join(", ")), ctx);
        self.advance(id, ctx);
        self.dispatch_tasks(ctx);
        Response::JobRetried { job: id }
    }

    /// The provider and model for a task's attempt on `session`'s worker: a local provider of
    /// the tier the worker hosts, when one has a free slot; else a cloud one with a free slot;
    /// else the first cloud one (its concurrency lease waits).
    pub(in crate::state) fn route(
        &self,
        task: TaskId,
        session: crate::state::SessionId,
    ) -> Option<crate::state::Route> {
        let t = self.tasks.get(task)?;
        let tier = t.spec.tier?;
        let project = self.jobs.projects.get(&t.spec.project)?;
        let worker = self.tasks.worker(session)?;
        let hosts = |name: &str| worker.providers.iter().any(|p| p.name == name);
        // Free: another attempt fits beside the leases held there and beside the running
        // attempts already routed there whose agents have not acquired yet (a dispatch that
        // routes several tasks in one apply sees none of their leases).
        let free = |name: &str| {
            self.jobs.provider_paths.get(name).is_some_and(|path| {
                let routed = self.routed_running(name);
                self.capacity(path.as_str()).is_none_or(|cap| routed < cap)
                    && self.held_against(&[Item { path: path.clone(), mode: Mode::Shared, units: 1 }], 0).is_none()
            })
        };
        let serving: Vec<_> = project.providers.iter().filter(|p| p.models.contains_key(&tier)).collect();
        let pick = serving
            .iter()
            .find(|p| p.local && hosts(&p.name) && free(&p.name))
            .or_else(|| serving.iter().find(|p| !p.local && free(&p.name)))
            .or_else(|| serving.iter().find(|p| !p.local))
            .or_else(|| serving.iter().find(|p| p.local && hosts(&p.name)))?;
        Some(crate::state::Route {
            provider: pick.name.clone(),
            model: pick.models[&tier].clone(),
            tier,
            local: pick.local,
        })
    }

    /// Running attempts routed to provider `name`.
    fn routed_running(&self, name: &str) -> u32 {
        self.tasks.routed.get(name).copied().unwrap_or(0)
    }

    pub(in crate::state) fn job_task_started(&mut self, task: TaskId, ctx: &mut Ctx) {
        let Some((job_id, i, kind)) = self.jobs.link(task) else { return };
        let t = &self.tasks.get(task).expect("task exists");
        let tier = t.spec.tier.unwrap_or(Tier::Standard);
        let node = t.attempts.last().map(|a| a.node_id.clone()).unwrap_or_default();
        let route = t.route.as_ref().map(|r| format!(", {} via {}", r.model, r.provider)).unwrap_or_default();
        let attempt = t.attempt;
        let job = self.jobs.jobs.get_mut(&job_id).expect("job exists");
        let (team, project, workflow) =
            (job.spec.team.clone(), job.spec.project.clone(), job.spec.workflow.name.clone());
        let p = &mut job.passes[i];
        p.wait = None;
        if kind == Kind::Work {
            p.status = PassStatus::Running;
        }
        let name = ledger_pass(&p.name, kind).into_owned();
        let (forecast, _) = self.jobs.forecast(&self.config, &workflow, &name, tier);
        self.jobs.commits.insert(task, forecast);
        self.jobs.for_covering(&team, &project, &job_id.to_string(), |b| b.committed_micros += forecast);
        let what = if kind == Kind::Review { "review running" } else { "running" };
        self.jobs.event(job_id, &name, format!("{what} on {node} (attempt {attempt}, {tier}{route})"), ctx);
    }

    pub(in crate::state) fn job_task_waits(&mut self, task: TaskId, reason: String, ctx: &mut Ctx) {
        let Some((job_id, i, kind)) = self.jobs.link(task) else { return };
        let job = self.jobs.jobs.get_mut(&job_id).expect("job exists");
        let name = ledger_pass(&job.passes[i].name, kind).into_owned();
        job.passes[i].wait = Some(reason.clone());
        self.jobs.event(job_id, &name, format!("waits: {reason}"), ctx);
    }

    /// A task of a work item ended (succeeded, failed for good, or cancelled).
    pub(in crate::state) fn job_task_ended(&mut self, task: TaskId, ctx: &mut Ctx) {
        let Some((job_id, i, kind)) = self.jobs.link(task) else { return };
        let t = self.tasks.get(task).expect("task exists");
        let (status, output, error, agent) = (t.status, t.output.clone(), t.error.clone(), t.agent.clone());
        let Some(job) = self.jobs.jobs.get_mut(&job_id) else { return };
        if job.status != JobStatus::Running {
            let p = &mut job.passes[i];
            if p.status.active() {
                p.status = PassStatus::Cancelled;
            }
            return;
        }
        let name = job.passes[i].name.clone();
        let gate = job.spec.workflow.passes[i].gate.as_ref().map(|g| (g.reviewer, g.review_role));
        match (kind, status) {
            (Kind::Work, TaskStatus::Succeeded) => {
                let digest = sha256_hex(&[&output]);
                job.passes[i].artifact = Some(digest.clone());
                self.jobs.store_artifact(&digest, output);
                match gate {
                    None => self.pass_passed(job_id, i, ctx),
                    Some((Reviewer::Human, _)) => self.await_human(job_id, i, ctx),
                    Some((_, review_role)) => self.start_review(job_id, i, review_role, ctx),
                }
            }
            (Kind::Review, TaskStatus::Succeeded) => {
                let (passed, note) = verdict(&output);
                let p = &mut job.passes[i];
                let round = p.gate_failures + 1;
                let reviewer = format!("agent {}", if agent.is_empty() { "-" } else { &agent });
                p.gates.push(GateResult { round, reviewer: reviewer.clone(), passed, note: note.clone(), at: ctx.now });
                let verdict = if passed { "passed" } else { "failed" };
                self.jobs.event(job_id, &name, format!("gate {verdict} ({reviewer}): {note}"), ctx);
                match (passed, gate.map(|g| g.0)) {
                    (true, Some(Reviewer::Both)) => self.await_human(job_id, i, ctx),
                    (true, _) => self.pass_passed(job_id, i, ctx),
                    (false, _) => self.gate_failed(job_id, i, ctx),
                }
            }
            (_, status) => {
                let what = if kind == Kind::Review { "review" } else { "pass" };
                let p = &mut job.passes[i];
                p.status = PassStatus::Failed;
                let why = format!("{what} {}: {error}", status.as_str());
                self.end_job(job_id, JobStatus::Failed, format!("{name}: {why}"), ctx);
            }
        }
        self.advance(job_id, ctx);
    }

    /// Starts every pending pass whose predecessors passed (or reuses its cached artifact);
    /// ends the work item when every pass is done.
    pub(in crate::state) fn advance(&mut self, job_id: JobId, ctx: &mut Ctx) {
        let Some(job) = self.jobs.jobs.get(&job_id) else { return };
        if job.status != JobStatus::Running {
            return;
        }
        for i in 0..job.passes.len() {
            let job = &self.jobs.jobs[&job_id];
            if job.status != JobStatus::Running {
                return;
            }
            let pass = &job.spec.workflow.passes[i];
            let ready = job.passes[i].status == PassStatus::Pending
                && pass.after.iter().all(|a| job.passes.iter().any(|p| &p.name == a && p.status.done()));
            if !ready {
                continue;
            }
            let key = cache_key(job, i);
            let hit = self
                .jobs
                .cache
                .get(&key)
                .filter(|e| self.jobs.artifacts.contains_key(&e.digest))
                .map(|e| (e.digest.clone(), e.cost_micros));
            let j = self.jobs.jobs.get_mut(&job_id).expect("job exists");
            j.passes[i].cache_key = key;
            if let Some((digest, saved)) = hit {
                let p = &mut j.passes[i];
                p.status = PassStatus::Cached;
                p.artifact = Some(digest.clone());
                p.saved_micros += saved;
                j.saved_micros += saved;
                let name = p.name.clone();
                let role = j.spec.workflow.passes[i].role;
                let tier = p.tier;
                self.jobs.ledger_seq += 1;
                let entry = LedgerEntry {
                    seq: self.jobs.ledger_seq,
                    at: ctx.now,
                    task: TaskId(0),
                    attempt: 0,
                    job: Some(job_id),
                    team: j.spec.team.clone(),
                    project: j.spec.project.clone(),
                    workflow: j.spec.workflow.name.clone(),
                    pass: name.clone(),
                    role,
                    tier: Some(tier),
                    provider: String::new(),
                    model: String::new(),
                    input_tokens: 0,
                    output_tokens: 0,
                    cached_tokens: 0,
                    estimated: false,
                    money_micros: 0,
                    saved_micros: saved,
                    wall_ms: 0,
                    agent: String::new(),
                    spec: String::new(),
                    worker: String::new(),
                    outcome: "cached".into(),
                };
                self.add_ledger(entry, ctx);
                let short: String = digest.chars().take(12).collect();
                self.jobs.event(
                    job_id,
                    &name,
                    format!("reused cached artifact {short} (saved {})", dollars(saved)),
                    ctx,
                );
                continue;
            }
            self.start_pass(job_id, i, ctx);
        }
        let job = &self.jobs.jobs[&job_id];
        if job.status == JobStatus::Running && job.passes.iter().all(|p| p.status.done()) {
            let (cost, saved) = (job.cost_micros, job.saved_micros);
            self.end_job(
                job_id,
                JobStatus::Succeeded,
                format!("succeeded: cost {}, saved {} by the artifact cache", dollars(cost), dollars(saved)),
                ctx,
            );
        }
    }

    pub(in crate::state) fn start_pass(&mut self, job_id: JobId, i: usize, ctx: &mut Ctx) {
        let job = &self.jobs.jobs[&job_id];
        let pass = &job.spec.workflow.passes[i];
        let template = if pass.run.is_empty() { &job.spec.run } else { &pass.run };
        let mut spec = TaskSpec {
            role: pass.role,
            items: needs_to_items(&job.spec.workflow, i),
            payload: fill(
                template,
                job,
                i,
                pass.gate.as_ref().map_or("", |g| g.criteria.as_str()),
                &self.jobs.fill_values(job, i, false, template),
            ),
            priority: job.spec.priority,
            work_item: job_id.to_string(),
            max_attempts: pass.retries + 1,
            timeout_ms: pass.timeout_ms,
            incremental: false,
            team: job.spec.team.clone(),
            project: job.spec.project.clone(),
            tier: Some(job.passes[i].tier),
            requires: pass.requires.clone(),
            principal: String::new(),
        };
        // An earlier result of this pass on the same inputs at another commit: offered to the
        // agent, which replays it if the files it read are unchanged. Only on the pass's first
        // run here: a run after a failed gate wants new work, not the same change again.
        let mut offered = 0;
        let first_run = job.passes[i].runs == 0;
        let earlier = self.jobs.cache.get(&tree_key(job, i)).filter(|_| first_run).and_then(|e| {
            let (_, artifact) = self.jobs.artifacts.get(&e.digest)?;
            Some((with_cached(&spec.payload, artifact, TASK_PAYLOAD_BYTES_MAX)?, e.cost_micros))
        });
        if let Some((payload, cost)) = earlier {
            spec.payload = payload;
            offered = cost;
        }
        match self.new_task(spec, ctx) {
            Ok(task) => {
                self.jobs.by_task.insert(task, (job_id, i, Kind::Work));
                let p = &mut self.jobs.jobs.get_mut(&job_id).expect("job").passes[i];
                p.offered_micros = offered;
                p.status = PassStatus::Queued;
                p.task = Some(task);
                p.review = None;
                p.runs += 1;
                p.run_cost_micros = 0;
                p.approval_wanted = false;
                p.spend_approved = false;
                let (name, tier, runs) = (p.name.clone(), p.tier, p.runs);
                self.jobs.event(job_id, &name, format!("queued as {task} (run {runs}, tier {tier})"), ctx);
            }
            Err(r) => self.end_job(job_id, JobStatus::Failed, format!("pass could not be queued: {r:?}"), ctx),
        }
    }

    pub(in crate::state) fn end_job(&mut self, job_id: JobId, status: JobStatus, why: String, ctx: &mut Ctx) {
        let j = self.jobs.jobs.get_mut(&job_id).expect("job exists");
        j.status = status;
        j.ended_at = Some(ctx.now);
        let mut stop = Vec::new();
        for p in &mut j.passes {
            if p.status.active() || p.status == PassStatus::AwaitingHuman {
                stop.extend(p.task.into_iter().chain(p.review));
                p.status = PassStatus::Cancelled;
            }
        }
        self.jobs.ended.insert((ctx.now, job_id));
        self.jobs.event(job_id, "", why, ctx);
        for task in stop {
            if self.tasks.get(task).is_some_and(|t| !t.status.ended()) {
                self.stop_task(task, ctx);
            }
        }
        while self.jobs.ended.len() > JOBS_ENDED_RETAINED_MAX {
            let (_, old) = self.jobs.ended.pop_first().expect("non-empty");
            // Earlier runs' tasks leave `by_task` when the tasks themselves are forgotten.
            if let Some(gone) = self.jobs.jobs.remove(&old) {
                for task in gone.passes.iter().flat_map(|p| p.task.into_iter().chain(p.review)) {
                    self.jobs.by_task.remove(&task);
                    self.jobs.commits.remove(&task);
                }
            }
        }
    }
}
