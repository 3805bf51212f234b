//! `qm.v1.Jobs`: work items, gates, budgets, the cost ledger, forecasts, projects and the
//! scheduler's tunables.
//!
//! Workflow and project files arrive as TOML text and are parsed and validated here, at the
//! edge (errors name file, line and field); the replicated commands carry the parsed forms.

use std::collections::BTreeMap;
use std::sync::Arc;

use qm_shared::limits::{LIST_PAGE_DEFAULT, LIST_PAGE_MAX, WORKFLOW_FILE_BYTES_MAX};

/// Ledger entries per cost-report page (a page stays well under the 4 MiB message bound).
const COST_PAGE_MAX: u32 = 10_000;
use qm_shared::pb::v1 as pb;
use qm_shared::workflow::{Reviewer, Workflow};
use qm_shared::workflow_file::{self, FileError};
use qm_shared::{validate, Invalid};
use tonic::{Request, Response as GrpcResponse, Status};

use crate::error::ApiError;
use crate::node::Node;
use crate::state::{Budget, Job, JobSpec, LedgerEntry, Period, Scope};
use crate::state::{Command, Config, JobId, Refusal, Response, State};

#[derive(Debug)]
pub struct JobsApi {
    pub node: Arc<Node>,
    /// Class → priority (the coordinator's `jobs.classes` config).
    pub classes: BTreeMap<String, u32>,
}

fn unexpected(r: Response) -> Status {
    ApiError::Internal(format!("unexpected answer from the state machine: {r:?}")).into()
}

fn file_errors(field: &str, errors: Vec<FileError>) -> Status {
    let text: Vec<String> = errors.iter().take(20).map(|e| e.to_string()).collect();
    ApiError::Invalid(Invalid::new(field, text.join("; "))).into()
}

/// A built-in workflow by name, or the given file text.
fn workflow_from(name: &str, toml: &str) -> Result<Workflow, Status> {
    if !toml.is_empty() {
        if toml.len() > WORKFLOW_FILE_BYTES_MAX {
            return Err(ApiError::Invalid(Invalid::new(
                "workflow_toml",
                format!("is {} bytes, at most {WORKFLOW_FILE_BYTES_MAX} allowed", toml.len()),
            ))
            .into());
        }
        let file = if name.is_empty() { "workflow" } else { name };
        return workflow_file::parse_workflow(toml, file).map_err(|e| file_errors("workflow_toml", e));
    }
    workflow_file::builtin_workflow(name).ok_or_else(|| {
        let names: Vec<&str> = workflow_file::BUILTIN_WORKFLOWS.iter().map(|(n, _)| *n).collect();
        ApiError::Invalid(Invalid::new(
            "workflow",
            format!("{name:?} is not a built-in workflow ({}); send a workflow file instead", names.join(", ")),
        ))
        .into()
    })
}

fn refused(r: Refusal) -> Status {
    match r {
        Refusal::Invalid(i) => ApiError::Invalid(i).into(),
        Refusal::JobUnknown { job } => ApiError::NotFound(format!("work item {job} is unknown")).into(),
        Refusal::ProjectUnknown { project } => ApiError::NotFound(format!(
            "project {project:?} is not registered: qm project apply FILE (the demo: qm project apply --demo)"
        ))
        .into(),
        Refusal::Exhausted { what, max } => ApiError::ResourceExhausted(format!("{what}: at most {max}")).into(),
        r @ (Refusal::JobState { .. } | Refusal::NotAwaitingDecision { .. }) => {
            ApiError::FailedPrecondition(r.to_string()).into()
        }
        other => ApiError::FailedPrecondition(other.to_string()).into(),
    }
}

fn pass_info(job: &Job, i: usize, state: &State) -> pb::PassInfo {
    let p = &job.passes[i];
    let w = &job.spec.workflow.passes[i];
    let route = p.task.and_then(|t| state.tasks().get(t)).and_then(|t| t.route.clone());
    pb::PassInfo {
        name: p.name.clone(),
        role: w.role.to_string(),
        tier: p.tier.to_string(),
        status: p.status.as_str().into(),
        runs: p.runs,
        gate_failures: p.gate_failures,
        task_id: p.task.map_or(0, |t| t.0),
        review_task_id: p.review.map_or(0, |t| t.0),
        wait: p.wait.clone().unwrap_or_default(),
        artifact: p.artifact.clone().unwrap_or_default(),
        cost_micros: p.cost_micros,
        saved_micros: p.saved_micros,
        input_tokens: p.input_tokens,
        output_tokens: p.output_tokens,
        wall_ms: p.wall_ms,
        after: w.after.clone(),
        gate_reviewer: w.gate.as_ref().map(|g| g.reviewer.as_str().to_string()).unwrap_or_default(),
        gate_criteria: w.gate.as_ref().map(|g| g.criteria.clone()).unwrap_or_default(),
        on_fail: w.gate.as_ref().map(|g| g.on_fail.to_string()).unwrap_or_default(),
        gates: p
            .gates
            .iter()
            .map(|g| pb::GateResultInfo {
                round: g.round,
                reviewer: g.reviewer.clone(),
                passed: g.passed,
                note: g.note.clone(),
                at_ms: g.at,
            })
            .collect(),
        approval_wanted: p.approval_wanted,
        model: route.as_ref().map(|r| r.model.clone()).unwrap_or_default(),
        provider: route.map(|r| r.provider).unwrap_or_default(),
    }
}

/// One work item; `full` adds its events and inputs (lists leave them out: bounded replies).
pub fn job_info(job: &Job, state: &State, full: bool) -> pb::JobInfo {
    pb::JobInfo {
        job_id: job.id.0,
        title: job.spec.title.clone(),
        class: job.spec.class.clone(),
        priority: job.spec.priority,
        team: job.spec.team.clone(),
        project: job.spec.project.clone(),
        workflow: job.spec.workflow.name.clone(),
        status: job.status.as_str().into(),
        submitted_at_ms: job.submitted_at,
        ended_at_ms: job.ended_at.unwrap_or(0),
        cost_micros: job.cost_micros,
        saved_micros: job.saved_micros,
        budget_micros: job.spec.budget_micros.unwrap_or(0),
        passes: (0..job.passes.len()).map(|i| pass_info(job, i, state)).collect(),
        events: if full {
            job.events
                .iter()
                .map(|e| pb::JobEventInfo { at_ms: e.at, pass: e.pass.clone(), message: e.message.clone() })
                .collect()
        } else {
            Vec::new()
        },
        inputs: if full { job.spec.inputs.clone().into_iter().collect() } else { Default::default() },
        commit: job.spec.commit.clone(),
    }
}

fn budget_info(b: &Budget) -> pb::BudgetInfo {
    pb::BudgetInfo {
        scope: b.scope.as_str().into(),
        name: b.name.clone(),
        limit_micros: b.limit_micros,
        period: b.period.as_str().into(),
        period_start_ms: b.period_start,
        period_end_ms: b.period.end(b.period_start).unwrap_or(0),
        spent_micros: b.spent_micros,
        committed_micros: b.committed_micros,
        level: b.level.as_str().into(),
    }
}

fn ledger_info(e: &LedgerEntry) -> pb::LedgerEntryInfo {
    pb::LedgerEntryInfo {
        seq: e.seq,
        at_ms: e.at,
        task_id: e.task.0,
        attempt: e.attempt,
        job_id: e.job.map_or(0, |j| j.0),
        team: e.team.clone(),
        project: e.project.clone(),
        workflow: e.workflow.clone(),
        pass: e.pass.clone(),
        role: e.role.to_string(),
        tier: e.tier.map(|t| t.to_string()).unwrap_or_default(),
        provider: e.provider.clone(),
        model: e.model.clone(),
        input_tokens: e.input_tokens,
        output_tokens: e.output_tokens,
        cached_tokens: e.cached_tokens,
        estimated: e.estimated,
        money_micros: e.money_micros,
        saved_micros: e.saved_micros,
        wall_ms: e.wall_ms,
        agent: e.agent.clone(),
        worker: e.worker.clone(),
        outcome: e.outcome.clone(),
    }
}

fn scheduler_info(c: &Config) -> pb::SchedulerConfig {
    pb::SchedulerConfig {
        aging_interval_ms: c.aging_interval_ms,
        aging_step: c.aging_step,
        fair_share_points: c.fair_share_points,
        set_fair_share: false,
        high_priority_min: c.high_priority_min,
        budget_approaching_pct: c.budget_approaching_pct,
        budget_at_pct: c.budget_at_pct,
        high_cost_micros: c.high_cost_micros,
        preempt_gap: c.preempt_gap,
        docs_aging_bound_ms: c.aging_bound_ms(100),
    }
}

impl JobsApi {
    async fn decide(&self, command: Command) -> Result<Response, Status> {
        crate::state::validate_command(&command).map_err(ApiError::from)?;
        Ok(self.node.propose(command).await?.1)
    }
}

#[tonic::async_trait]
impl pb::jobs_server::Jobs for JobsApi {
    async fn submit(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<GrpcResponse<pb::SubmitJobResponse>, Status> {
        let req = request.into_inner();
        let workflow = workflow_from(&req.workflow, &req.workflow_toml)?;
        let priority = match (req.priority, self.classes.get(&req.class)) {
            (0, Some(p)) => *p,
            (0, None) => {
                let names: Vec<String> = self.classes.iter().map(|(c, p)| format!("{c} ({p})")).collect();
                return Err(ApiError::Invalid(Invalid::new(
                    "class",
                    format!("{:?} is not one of {}", req.class, names.join(", ")),
                ))
                .into());
            }
            (p, _) => p,
        };
        let spec = JobSpec {
            title: req.title,
            class: req.class,
            priority,
            team: req.team,
            project: req.project,
            workflow,
            budget_micros: (req.budget_micros > 0).then_some(req.budget_micros),
            inputs: req.inputs.into_iter().collect(),
            commit: req.commit,
            run: req.run,
            review_run: req.review_run,
        };
        match self.decide(Command::SubmitJob(Box::new(spec))).await? {
            Response::JobSubmitted { job } => Ok(GrpcResponse::new(pb::SubmitJobResponse { job_id: job.0, priority })),
            Response::Refused(r) => Err(refused(r)),
            other => Err(unexpected(other)),
        }
    }

    async fn get(&self, request: Request<pb::GetJobRequest>) -> Result<GrpcResponse<pb::JobInfo>, Status> {
        let id = JobId(request.into_inner().job_id);
        self.node.read_index().await?;
        self.node
            .shared
            .read(|d| d.state.jobs().get(id).map(|j| job_info(j, &d.state, true)))
            .map(GrpcResponse::new)
            .ok_or_else(|| ApiError::NotFound(format!("work item {id} is unknown")).into())
    }

    async fn list(&self, request: Request<pb::ListJobsRequest>) -> Result<GrpcResponse<pb::ListJobsResponse>, Status> {
        let req = request.into_inner();
        let limit = if req.limit == 0 { LIST_PAGE_DEFAULT } else { req.limit };
        validate::check_range("limit", limit.into(), 1, LIST_PAGE_MAX.into()).map_err(ApiError::from)?;
        if !req.status.is_empty() && !["running", "succeeded", "failed", "cancelled"].contains(&req.status.as_str()) {
            return Err(ApiError::Invalid(Invalid::new(
                "status",
                format!("{:?} is not one of running, succeeded, failed, cancelled", req.status),
            ))
            .into());
        }
        self.node.read_index().await?;
        let jobs = self.node.shared.read(|d| {
            d.state
                .jobs()
                .iter()
                .rev()
                .filter(|j| req.status.is_empty() || j.status.as_str() == req.status)
                .filter(|j| req.team.is_empty() || j.spec.team == req.team)
                .take(limit as usize)
                .map(|j| job_info(j, &d.state, false))
                .collect()
        });
        Ok(GrpcResponse::new(pb::ListJobsResponse { jobs }))
    }

    async fn cancel(&self, request: Request<pb::JobRef>) -> Result<GrpcResponse<pb::JobAck>, Status> {
        let job = JobId(request.into_inner().job_id);
        match self.decide(Command::CancelJob { job }).await? {
            Response::JobCancelled { job } => {
                Ok(GrpcResponse::new(pb::JobAck { job_id: job.0, message: format!("{job} cancelled") }))
            }
            Response::Refused(r) => Err(refused(r)),
            other => Err(unexpected(other)),
        }
    }

    async fn retry(&self, request: Request<pb::JobRef>) -> Result<GrpcResponse<pb::JobAck>, Status> {
        let job = JobId(request.into_inner().job_id);
        match self.decide(Command::RetryJob { job }).await? {
            Response::JobRetried { job } => {
                Ok(GrpcResponse::new(pb::JobAck { job_id: job.0, message: format!("{job} running again") }))
            }
            Response::Refused(r) => Err(refused(r)),
            other => Err(unexpected(other)),
        }
    }

    async fn decide_gate(&self, request: Request<pb::DecideGateRequest>) -> Result<GrpcResponse<pb::JobAck>, Status> {
        let req = request.into_inner();
        let command = Command::DecideGate {
            job: JobId(req.job_id),
            pass: req.pass,
            approve: req.approve,
            note: req.note,
            by: req.by,
        };
        match self.decide(command).await? {
            Response::GateDecided { job, pass } => {
                let verdict = if req.approve { "approved" } else { "rejected" };
                Ok(GrpcResponse::new(pb::JobAck { job_id: job.0, message: format!("{job} {pass}: {verdict}") }))
            }
            Response::Refused(r) => Err(refused(r)),
            other => Err(unexpected(other)),
        }
    }

    async fn set_budget(&self, request: Request<pb::SetBudgetRequest>) -> Result<GrpcResponse<pb::BudgetInfo>, Status> {
        let req = request.into_inner();
        let scope: Scope = req.scope.parse().map_err(ApiError::from)?;
        let period: Period =
            if req.period.is_empty() { Period::Month } else { req.period.parse().map_err(ApiError::from)? };
        let name = if scope == Scope::Org && req.name.is_empty() { "org".to_string() } else { req.name };
        match self
            .decide(Command::SetBudget { scope, name: name.clone(), limit_micros: req.limit_micros, period })
            .await?
        {
            Response::BudgetSet { .. } => {
                let info = self
                    .node
                    .shared
                    .read(|d| d.state.jobs().budgets().find(|b| b.scope == scope && b.name == name).map(budget_info));
                Ok(GrpcResponse::new(info.unwrap_or(pb::BudgetInfo {
                    scope: scope.as_str().into(),
                    name,
                    ..Default::default()
                })))
            }
            Response::Refused(r) => Err(refused(r)),
            other => Err(unexpected(other)),
        }
    }

    async fn list_budgets(
        &self,
        _: Request<pb::ListBudgetsRequest>,
    ) -> Result<GrpcResponse<pb::ListBudgetsResponse>, Status> {
        self.node.read_index().await?;
        let budgets = self.node.shared.read(|d| d.state.jobs().budgets().map(budget_info).collect());
        Ok(GrpcResponse::new(pb::ListBudgetsResponse { budgets }))
    }

    async fn cost_report(
        &self,
        request: Request<pb::CostReportRequest>,
    ) -> Result<GrpcResponse<pb::CostReportResponse>, Status> {
        let req = request.into_inner();
        let limit = if req.limit == 0 { COST_PAGE_MAX } else { req.limit };
        validate::check_range("limit", limit.into(), 1, COST_PAGE_MAX.into()).map_err(ApiError::from)?;
        self.node.read_index().await?;
        let resp = self.node.shared.read(|d| {
            let jobs = d.state.jobs();
            let mut page = jobs.ledger_after(req.after_seq).filter(|e| e.at >= req.since_ms).peekable();
            let entries: Vec<pb::LedgerEntryInfo> = page.by_ref().take(limit as usize).map(ledger_info).collect();
            let more = page.peek().is_some();
            pb::CostReportResponse {
                next_after_seq: if more { entries.last().map_or(0, |e| e.seq) } else { 0 },
                entries,
                total_micros: jobs.total_micros(),
                saved_micros: jobs.saved_micros(),
                retained: jobs.ledger_len() as u64,
            }
        });
        Ok(GrpcResponse::new(resp))
    }

    async fn forecast(
        &self,
        request: Request<pb::ForecastRequest>,
    ) -> Result<GrpcResponse<pb::ForecastResponse>, Status> {
        let req = request.into_inner();
        let workflow = workflow_from(&req.workflow, &req.workflow_toml)?;
        self.node.read_index().await?;
        let resp = self.node.shared.read(|d| {
            let (jobs, config) = (d.state.jobs(), d.state.config());
            let passes: Vec<pb::PassForecast> = workflow
                .passes
                .iter()
                .map(|p| {
                    let tier = p.start_tier();
                    let (micros, samples) = jobs.forecast(config, &workflow.name, &p.name, tier);
                    let (review_micros, review_samples) = match &p.gate {
                        Some(g) if g.reviewer != Reviewer::Human => jobs.forecast(
                            config,
                            &workflow.name,
                            &format!("{}#gate", p.name),
                            g.review_role.default_tier(),
                        ),
                        _ => (0, 0),
                    };
                    pb::PassForecast {
                        pass: p.name.clone(),
                        role: p.role.to_string(),
                        tier: tier.to_string(),
                        micros,
                        samples,
                        review_micros,
                        review_samples,
                    }
                })
                .collect();
            let total_micros = passes.iter().map(|p| p.micros + p.review_micros).sum();
            pb::ForecastResponse { workflow: workflow.name.clone(), passes, total_micros }
        });
        Ok(GrpcResponse::new(resp))
    }

    async fn apply_project(
        &self,
        request: Request<pb::ApplyProjectRequest>,
    ) -> Result<GrpcResponse<pb::ApplyProjectResponse>, Status> {
        let req = request.into_inner();
        if req.project_toml.len() > WORKFLOW_FILE_BYTES_MAX {
            return Err(ApiError::Invalid(Invalid::new(
                "project_toml",
                format!("is {} bytes, at most {WORKFLOW_FILE_BYTES_MAX} allowed", req.project_toml.len()),
            ))
            .into());
        }
        let project =
            workflow_file::parse_project(&req.project_toml, "project").map_err(|e| file_errors("project_toml", e))?;
        match self.decide(Command::ApplyProject(Box::new(project))).await? {
            Response::ProjectApplied { name, resources } => {
                Ok(GrpcResponse::new(pb::ApplyProjectResponse { name, resources_declared: resources }))
            }
            Response::Refused(r) => Err(refused(r)),
            other => Err(unexpected(other)),
        }
    }

    async fn get_scheduler(
        &self,
        _: Request<pb::GetSchedulerRequest>,
    ) -> Result<GrpcResponse<pb::SchedulerConfig>, Status> {
        self.node.read_index().await?;
        Ok(GrpcResponse::new(self.node.shared.read(|d| scheduler_info(d.state.config()))))
    }

    async fn set_scheduler(
        &self,
        request: Request<pb::SchedulerConfig>,
    ) -> Result<GrpcResponse<pb::SchedulerConfig>, Status> {
        let req = request.into_inner();
        self.node.read_index().await?;
        let mut config = self.node.shared.read(|d| d.state.config().clone());
        let set = |v: u64, slot: &mut u64| {
            if v != 0 {
                *slot = v;
            }
        };
        set(req.aging_interval_ms, &mut config.aging_interval_ms);
        set(req.high_cost_micros, &mut config.high_cost_micros);
        for (v, slot) in [
            (req.aging_step, &mut config.aging_step),
            (req.high_priority_min, &mut config.high_priority_min),
            (req.budget_approaching_pct, &mut config.budget_approaching_pct),
            (req.budget_at_pct, &mut config.budget_at_pct),
            (req.preempt_gap, &mut config.preempt_gap),
        ] {
            if v != 0 {
                *slot = v;
            }
        }
        if req.set_fair_share {
            config.fair_share_points = req.fair_share_points;
        }
        match self.decide(Command::Configure { config }).await? {
            Response::Configured => Ok(GrpcResponse::new(self.node.shared.read(|d| scheduler_info(d.state.config())))),
            Response::Refused(r) => Err(refused(r)),
            other => Err(unexpected(other)),
        }
    }
}
