//! `qm.v1.Tasks`: submit, get, list, cancel tasks; list workers.

use std::sync::Arc;

use qm_shared::limits::{LIST_PAGE_DEFAULT, LIST_PAGE_MAX, PRIORITY_DEFAULT, TASK_ATTEMPTS_MAX};
use qm_shared::pb::v1 as pb;
use qm_shared::{Invalid, Role};
use tonic::{Request, Response as GrpcResponse, Status};

use super::auth::Principal;
use super::convert;
use crate::error::ApiError;
use crate::node::Node;
use crate::state::{Command, Response, TaskId, TaskSpec};

/// Attempts a task gets when the request names none.

#[derive(Debug)]
pub struct TasksApi {
    pub node: Arc<Node>,
}

fn unexpected(r: Response) -> Status {
    ApiError::Internal(format!("unexpected answer from the state machine: {r:?}")).into()
}

#[tonic::async_trait]
impl pb::tasks_server::Tasks for TasksApi {
    async fn submit(
        &self,
        request: Request<pb::SubmitTaskRequest>,
    ) -> Result<GrpcResponse<pb::SubmitTaskResponse>, Status> {
        let principal = Principal::of(&request);
        let req = request.into_inner();
        let role: Role = req
            .role
            .parse()
            .map_err(|e: qm_shared::agent::UnknownName| ApiError::Invalid(Invalid::new("role", e.to_string())))?;
        let items = convert::items_from_pb(req.resources).map_err(ApiError::from)?;
        let max_attempts =
            if req.max_attempts == 0 { qm_shared::limits::TASK_ATTEMPTS_DEFAULT } else { req.max_attempts };
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
            principal: principal.name.clone(),
        };
        principal.check_team("team", &spec.team)?;
        principal.check_items(&spec.items, spec.priority)?;
        let command = Command::SubmitTask(spec);
        crate::state::validate_command(&command).map_err(ApiError::from)?;
        if let Command::SubmitTask(spec) = &command {
            // Refused here rather than queued and failed on a worker, attempt after attempt.
            qm_shared::payload::check_envelope(&spec.payload).map_err(ApiError::Invalid)?;
        }
        match self.node.propose(command).await?.1 {
            Response::TaskSubmitted { task } => Ok(GrpcResponse::new(pb::SubmitTaskResponse { task_id: task.0 })),
            Response::Refused(r) => Err(ApiError::from(r).into()),
            other => Err(unexpected(other)),
        }
    }

    async fn get(&self, request: Request<pb::GetTaskRequest>) -> Result<GrpcResponse<pb::TaskInfo>, Status> {
        let id = TaskId(request.into_inner().task_id);
        self.node.read_index().await?;
        self.node
            .shared
            .read(|d| d.state.tasks().get(id).map(|t| convert::task_info(t, &d.state)))
            .map(GrpcResponse::new)
            .ok_or_else(|| ApiError::NotFound(format!("task {id} is unknown")).into())
    }

    async fn list(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<GrpcResponse<pb::ListTasksResponse>, Status> {
        let req = request.into_inner();
        let status = convert::status_filter(&req.status).map_err(ApiError::from)?;
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
                    .map(|t| convert::task_info(t, &d.state))
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
        let principal = Principal::of(&request);
        let task = TaskId(request.into_inner().task_id);
        self.node.read_index().await?;
        let team = self.node.shared.read(|d| d.state.tasks().get(task).map(|t| t.spec.team.clone()));
        if let Some(team) = team {
            principal.check_team("the task's team", &team)?;
        }
        match self.node.propose(Command::CancelTask { task }).await?.1 {
            Response::TaskCancelled { .. } => Ok(GrpcResponse::new(pb::CancelTaskResponse {})),
            Response::Refused(r) => Err(ApiError::from(r).into()),
            other => Err(unexpected(other)),
        }
    }

    async fn workers(
        &self,
        _: Request<pb::ListWorkersRequest>,
    ) -> Result<GrpcResponse<pb::ListWorkersResponse>, Status> {
        self.node.read_index().await?;
        let workers = self.node.shared.read(|d| d.state.tasks().workers().map(convert::worker_info).collect());
        Ok(GrpcResponse::new(pb::ListWorkersResponse { workers }))
    }
}
