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
use qm_shared::workflow::{Complexity, Reviewer, Workflow};
use qm_shared::workflow_file::{self, FileError};
use qm_shared::{validate, Invalid};
use tonic::{Request, Response as GrpcResponse, Status};

use super::auth::Principal;
use super::convert;
use crate::error::ApiError;
use crate::node::Node;
use crate::state::{Command, JobId, JobSpec, Period, Response, Scope};

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

impl JobsApi {
    /// Refuses acting on a work item of a team the principal is not granted.
    async fn check_job_team(&self, principal: &Principal, job: JobId) -> Result<(), Status> {
        if principal.token.is_none() {
            return Ok(());
        }
        self.node.read_index().await?;
        let team = self.node.shared.read(|d| d.state.jobs().get(job).map(|j| j.spec.team.clone()));
        if let Some(team) = team {
            principal.check_team("the work item's team", &team)?;
        }
        Ok(())
    }

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
        let principal = Principal::of(&request);
        let req = request.into_inner();
        principal.check_team("team", &req.team)?;
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
        principal.check_priority("priority", priority)?;
        let complexity = Complexity::parse(&req.complexity).ok_or_else(|| {
            ApiError::Invalid(Invalid::new(
                "complexity",
                format!("{:?} is not one of {}", req.complexity, Complexity::NAMES),
            ))
        })?;
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
            principal: principal.name.clone(),
            complexity,
        };
        match self.decide(Command::SubmitJob(Box::new(spec))).await? {
            Response::JobSubmitted { job } => Ok(GrpcResponse::new(pb::SubmitJobResponse { job_id: job.0, priority })),
            Response::Refused(r) => Err(ApiError::from(r).into()),
            other => Err(unexpected(other)),
        }
    }

    async fn get(&self, request: Request<pb::GetJobRequest>) -> Result<GrpcResponse<pb::JobInfo>, Status> {
        let id = JobId(request.into_inner().job_id);
        self.node.read_index().await?;
        self.node
            .shared
            .read(|d| d.state.jobs().get(id).map(|j| convert::job_info(j, &d.state, true)))
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
                .map(|j| convert::job_info(j, &d.state, false))
                .collect()
        });
        Ok(GrpcResponse::new(pb::ListJobsResponse { jobs }))
    }

    async fn cancel(&self, request: Request<pb::JobRef>) -> Result<GrpcResponse<pb::JobAck>, Status> {
        let principal = Principal::of(&request);
        let job = JobId(request.into_inner().job_id);
        self.check_job_team(&principal, job).await?;
        match self.decide(Command::CancelJob { job }).await? {
            Response::JobCancelled { job } => {
                Ok(GrpcResponse::new(pb::JobAck { job_id: job.0, message: format!("{job} cancelled") }))
            }
            Response::Refused(r) => Err(ApiError::from(r).into()),
            other => Err(unexpected(other)),
        }
    }

    async fn retry(&self, request: Request<pb::JobRef>) -> Result<GrpcResponse<pb::JobAck>, Status> {
        let principal = Principal::of(&request);
        let job = JobId(request.into_inner().job_id);
        self.check_job_team(&principal, job).await?;
        match self.decide(Command::RetryJob { job }).await? {
            Response::JobRetried { job } => {
                Ok(GrpcResponse::new(pb::JobAck { job_id: job.0, message: format!("{job} running again") }))
            }
            Response::Refused(r) => Err(ApiError::from(r).into()),
            other => Err(unexpected(other)),
        }
    }

    async fn decide_gate(&self, request: Request<pb::DecideGateRequest>) -> Result<GrpcResponse<pb::JobAck>, Status> {
        let principal = Principal::of(&request);
        let req = request.into_inner();
        // The decision is recorded under the principal's name; naming someone else is refused.
        let by = match &principal.token {
            None => req.by,
            Some(_) if req.by.is_empty() || req.by == principal.name => principal.name.clone(),
            Some(_) => {
                return Err(ApiError::PermissionDenied(format!(
                    "rule gate-by: by {:?} is not the caller; decisions are recorded as {:?}",
                    req.by, principal.name
                ))
                .into())
            }
        };
        let command =
            Command::DecideGate { job: JobId(req.job_id), pass: req.pass, approve: req.approve, note: req.note, by };
        match self.decide(command).await? {
            Response::GateDecided { job, pass } => {
                let verdict = if req.approve { "approved" } else { "rejected" };
                Ok(GrpcResponse::new(pb::JobAck { job_id: job.0, message: format!("{job} {pass}: {verdict}") }))
            }
            Response::Refused(r) => Err(ApiError::from(r).into()),
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
                let info = self.node.shared.read(|d| {
                    d.state.jobs().budgets().find(|b| b.scope == scope && b.name == name).map(convert::budget_info)
                });
                Ok(GrpcResponse::new(info.unwrap_or(pb::BudgetInfo {
                    scope: scope.as_str().into(),
                    name,
                    ..Default::default()
                })))
            }
            Response::Refused(r) => Err(ApiError::from(r).into()),
            other => Err(unexpected(other)),
        }
    }

    async fn list_budgets(
        &self,
        _: Request<pb::ListBudgetsRequest>,
    ) -> Result<GrpcResponse<pb::ListBudgetsResponse>, Status> {
        self.node.read_index().await?;
        let budgets = self.node.shared.read(|d| d.state.jobs().budgets().map(convert::budget_info).collect());
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
            let entries: Vec<pb::LedgerEntryInfo> =
                page.by_ref().take(limit as usize).map(convert::ledger_info).collect();
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

    async fn get_artifacts(
        &self,
        request: Request<pb::GetArtifactsRequest>,
    ) -> Result<GrpcResponse<pb::GetArtifactsResponse>, Status> {
        let req = request.into_inner();
        let id = JobId(req.job_id);
        self.node.read_index().await?;
        let found = self.node.shared.read(|d| {
            let jobs = d.state.jobs();
            let job = jobs.get(id)?;
            let artifacts: Vec<pb::ArtifactInfo> = job
                .passes
                .iter()
                .map(|p| {
                    let digest = p.artifact.clone().unwrap_or_default();
                    let data = jobs.artifact(&digest);
                    pb::ArtifactInfo {
                        pass: p.name.clone(),
                        size_bytes: data.map_or(0, |d| d.len() as u64),
                        retained: data.is_some(),
                        data: if p.name == req.pass {
                            data.map(<[u8]>::to_vec).unwrap_or_default()
                        } else {
                            Vec::new()
                        },
                        digest,
                    }
                })
                .collect();
            Some(artifacts)
        });
        let artifacts = found.ok_or_else(|| ApiError::NotFound(format!("work item {id} is unknown")))?;
        if !req.pass.is_empty() && !artifacts.iter().any(|a| a.pass == req.pass) {
            let names: Vec<&str> = artifacts.iter().map(|a| a.pass.as_str()).collect();
            return Err(ApiError::NotFound(format!(
                "pass {:?} is not a pass of {id}; its passes: {}",
                req.pass,
                names.join(", ")
            ))
            .into());
        }
        Ok(GrpcResponse::new(pb::GetArtifactsResponse { artifacts }))
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
            Response::Refused(r) => Err(ApiError::from(r).into()),
            other => Err(unexpected(other)),
        }
    }

    async fn get_scheduler(
        &self,
        _: Request<pb::GetSchedulerRequest>,
    ) -> Result<GrpcResponse<pb::SchedulerConfig>, Status> {
        self.node.read_index().await?;
        Ok(GrpcResponse::new(self.node.shared.read(|d| convert::scheduler_info(d.state.config()))))
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
        set(req.claims_per_principal_max, &mut config.claims_per_principal_max);
        set(req.tasks_per_principal_max, &mut config.tasks_per_principal_max);
        set(req.work_items_per_principal_max, &mut config.work_items_per_principal_max);
        set(req.payload_bytes_per_principal_max, &mut config.payload_bytes_per_principal_max);
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
            Response::Configured => {
                Ok(GrpcResponse::new(self.node.shared.read(|d| convert::scheduler_info(d.state.config()))))
            }
            Response::Refused(r) => Err(ApiError::from(r).into()),
            other => Err(unexpected(other)),
        }
    }
}
