//! `qm.v1.Tasks`: submit, get, list, cancel tasks; list workers.

use std::sync::Arc;

use qm_shared::limits::{LIST_PAGE_DEFAULT, LIST_PAGE_MAX, PRIORITY_DEFAULT, TASK_ATTEMPTS_MAX};
use qm_shared::pb::v1 as pb;
use qm_shared::{Invalid, Role};
use tonic::{Request, Response as GrpcResponse, Status};

use super::convert;
use crate::error::ApiError;
use crate::node::Node;
use crate::state::{Command, Refusal, Response, State, TaskId};
use crate::state::{Outcome, Task, TaskSpec, TaskStatus, Usage};

/// Attempts a task gets when the request names none.
const MAX_ATTEMPTS_DEFAULT: u32 = 3;

#[derive(Debug)]
pub struct TasksApi {
    pub node: Arc<Node>,
}

pub fn outcome_str(o: Option<Outcome>, ended: bool) -> &'static str {
    match (o, ended) {
        (Some(Outcome::Succeeded), _) => "succeeded",
        (Some(Outcome::Failed), _) => "failed",
        (Some(Outcome::Cancelled), _) => "cancelled",
        (Some(Outcome::Preempted), _) => "preempted",
        (Some(Outcome::TimedOut), _) => "timed_out",
        (None, true) => "lost",
        (None, false) => "",
    }
}

pub fn usage_to_pb(u: &Usage) -> pb::TokenUsage {
    pb::TokenUsage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cached_tokens: u.cached_tokens,
        estimated: u.estimated,
        ..Default::default()
    }
}

pub fn task_info(t: &Task, state: &State) -> pb::TaskInfo {
    let worker = t.session.and_then(|s| state.tasks().worker(s)).map(|w| w.node_id.clone()).unwrap_or_default();
    pb::TaskInfo {
        task_id: t.id.0,
        role: t.spec.role.to_string(),
        status: t.status.as_str().to_string(),
        attempt: t.attempt,
        priority: t.spec.priority,
        work_item_id: t.spec.work_item.clone(),
        resources: convert::items_to_pb(&t.spec.items),
        worker_node_id: worker,
        percent_done: t.percent,
        stage: t.stage.clone(),
        blocked: t.blocked.clone().unwrap_or_default(),
        checkpoint_seq: t.checkpoint.as_ref().map_or(0, |c| c.seq),
        usage: Some(usage_to_pb(&t.usage)),
        submitted_at_ms: t.submitted_at,
        ended_at_ms: t.ended_at.unwrap_or(0),
        error: t.error.clone(),
        output: t.output.clone(),
        attempts: t
            .attempts
            .iter()
            .map(|a| pb::TaskAttempt {
                attempt: a.attempt,
                worker_node_id: a.node_id.clone(),
                started_at_ms: a.started_at,
                ended_at_ms: a.ended_at.unwrap_or(0),
                outcome: outcome_str(a.outcome, a.ended_at.is_some()).to_string(),
                resumed_from_seq: a.resumed_from.unwrap_or(0),
            })
            .collect(),
        failures: t.failures,
    }
}

fn unexpected(r: Response) -> Status {
    ApiError::Internal(format!("unexpected answer from the state machine: {r:?}")).into()
}

fn status_filter(s: &str) -> Result<Option<TaskStatus>, Invalid> {
    Ok(Some(match s {
        "" => return Ok(None),
        "queued" => TaskStatus::Queued,
        "running" => TaskStatus::Running,
        "succeeded" => TaskStatus::Succeeded,
        "failed" => TaskStatus::Failed,
        "cancelled" => TaskStatus::Cancelled,
        other => {
            return Err(Invalid::new(
                "status",
                format!("{other:?} is not one of queued, running, succeeded, failed, cancelled"),
            ))
        }
    }))
}

#[tonic::async_trait]
impl pb::tasks_server::Tasks for TasksApi {
    async fn submit(
        &self,
        request: Request<pb::SubmitTaskRequest>,
    ) -> Result<GrpcResponse<pb::SubmitTaskResponse>, Status> {
        let req = request.into_inner();
        let role: Role = req
            .role
            .parse()
            .map_err(|e: qm_shared::agent::UnknownName| ApiError::Invalid(Invalid::new("role", e.to_string())))?;
        let items = convert::items_from_pb(req.resources).map_err(ApiError::from)?;
        let max_attempts = if req.max_attempts == 0 { MAX_ATTEMPTS_DEFAULT } else { req.max_attempts };
        if max_attempts as usize > TASK_ATTEMPTS_MAX {
            return Err(ApiError::Invalid(Invalid::new(
                "max_attempts",
                format!("{max_attempts} is over the limit of {TASK_ATTEMPTS_MAX}"),
            ))
            .into());
        }
        let spec = TaskSpec {
            role,
            items,
            payload: req.payload,
            priority: if req.priority == 0 { PRIORITY_DEFAULT } else { req.priority },
            work_item: req.work_item_id,
            max_attempts,
            timeout_ms: req.timeout_ms,
            incremental: req.incremental,
            team: String::new(),
            project: String::new(),
            tier: None,
            requires: Vec::new(),
        };
        let command = Command::SubmitTask(spec);
        crate::state::validate_command(&command).map_err(ApiError::from)?;
        match self.node.propose(command).await?.1 {
            Response::TaskSubmitted { task } => Ok(GrpcResponse::new(pb::SubmitTaskResponse { task_id: task.0 })),
            Response::Refused(Refusal::Exhausted { what, max }) => {
                Err(ApiError::ResourceExhausted(format!("{what}: at most {max}")).into())
            }
            Response::Refused(Refusal::Invalid(i)) => Err(ApiError::Invalid(i).into()),
            other => Err(unexpected(other)),
        }
    }

    async fn get(&self, request: Request<pb::GetTaskRequest>) -> Result<GrpcResponse<pb::TaskInfo>, Status> {
        let id = TaskId(request.into_inner().task_id);
        self.node.read_index().await?;
        self.node
            .shared
            .read(|d| d.state.tasks().get(id).map(|t| task_info(t, &d.state)))
            .map(GrpcResponse::new)
            .ok_or_else(|| ApiError::NotFound(format!("task {id} is unknown")).into())
    }

    async fn list(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<GrpcResponse<pb::ListTasksResponse>, Status> {
        let req = request.into_inner();
        let status = status_filter(&req.status).map_err(ApiError::from)?;
        let limit = if req.limit == 0 { LIST_PAGE_DEFAULT } else { req.limit };
        if limit > LIST_PAGE_MAX {
            return Err(ApiError::Invalid(Invalid::new(
                "limit",
                format!("{limit} is over the limit of {LIST_PAGE_MAX}"),
            ))
            .into());
        }
        self.node.read_index().await?;
        let resp = self.node.shared.read(|d| {
            let tasks = d.state.tasks();
            pb::ListTasksResponse {
                tasks: tasks
                    .iter()
                    .rev()
                    .filter(|t| status.is_none_or(|s| t.status == s))
                    .take(limit as usize)
                    .map(|t| task_info(t, &d.state))
                    .collect(),
                queued: tasks.queued() as u64,
            }
        });
        Ok(GrpcResponse::new(resp))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<GrpcResponse<pb::CancelTaskResponse>, Status> {
        let task = TaskId(request.into_inner().task_id);
        match self.node.propose(Command::CancelTask { task }).await?.1 {
            Response::TaskCancelled { .. } => Ok(GrpcResponse::new(pb::CancelTaskResponse {})),
            Response::Refused(Refusal::TaskUnknown { task }) => {
                Err(ApiError::NotFound(format!("task {task} is unknown")).into())
            }
            Response::Refused(Refusal::TaskEnded { task }) => {
                Err(ApiError::FailedPrecondition(format!("task {task} already ended")).into())
            }
            other => Err(unexpected(other)),
        }
    }

    async fn workers(
        &self,
        _: Request<pb::ListWorkersRequest>,
    ) -> Result<GrpcResponse<pb::ListWorkersResponse>, Status> {
        self.node.read_index().await?;
        let workers = self.node.shared.read(|d| {
            d.state
                .tasks()
                .workers()
                .map(|w| pb::WorkerInfo {
                    node_id: w.node_id.clone(),
                    session_id: w.session.0,
                    slots: w.slots.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
                    running_task_ids: w.running.keys().map(|t| t.0).collect(),
                    labels: w.labels.clone().into_iter().collect(),
                    gpus: w
                        .gpus
                        .iter()
                        .map(|g| pb::Gpu { index: g.index, model: g.model.clone(), memory_bytes: g.memory_bytes })
                        .collect(),
                    model_providers: w
                        .providers
                        .iter()
                        .map(|p| pb::ModelProvider {
                            name: p.name.clone(),
                            kind: if p.kind == "anthropic" {
                                pb::ProviderKind::Anthropic
                            } else {
                                pb::ProviderKind::OpenaiCompatible
                            } as i32,
                            local: p.local,
                            ..Default::default()
                        })
                        .collect(),
                })
                .collect()
        });
        Ok(GrpcResponse::new(pb::ListWorkersResponse { workers }))
    }
}
