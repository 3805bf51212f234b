//! `qm.v1.WorkerGateway`: one bidirectional stream per connected worker.
//!
//! ```text
//!   worker ──Register──▶ open (or keep) the worker's session, RegisterWorker ──▶ Registered
//!          ◀─Assignment / PreemptNotice / Cancel── effects of this session, as they apply
//!          ──Heartbeat──▶ KeepAlive      ──Progress / Checkpoint / Blocked──▶ ReportTask
//!          ──TaskResult──▶ ReportTask ──▶ ResultAccepted (the worker resends until then)
//! ```
//!
//! Any node serves the stream: writes go through `Node::propose` (forwarded to the leader),
//! and effects are read from this node's own applied log. The stream subscribes to effects
//! before it registers and then sends every running assignment of the session the worker did
//! not list, so nothing assigned in between is missed; assignments are de-duplicated by
//! `(task, attempt)`.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use qm_shared::agent::owner_task;
use qm_shared::limits::{SESSION_TTL_MS_DEFAULT, WORKER_NODE_ID_LEN_MAX_BYTES};
use qm_shared::pb::v1 as pb;
use qm_shared::{validate, Invalid, Role};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response as GrpcResponse, Status, Streaming};

use super::convert::{self, outcome_from_pb, usage_from_pb};
use crate::error::ApiError;
use crate::node::Node;
use crate::state::{Command, Effect, Refusal, Response, SessionId, TaskId};
use crate::state::{GpuInfo, ProviderInfo, TaskReport, TaskStatus, WorkerSpec};

/// Messages queued toward one worker before the stream applies backpressure.
const OUTBOUND_BUFFER_LEN: usize = 256;

#[derive(Debug)]
pub struct GatewayApi {
    pub node: Arc<Node>,
}

type Out = Result<pb::CoordinatorMessage, Status>;

fn msg(m: pb::coordinator_message::Msg) -> Out {
    Ok(pb::CoordinatorMessage { msg: Some(m) })
}

/// The Assignment message for the current attempt of `task`, if it runs on `session`.
fn assignment(node: &Node, task: TaskId, session: SessionId) -> Option<pb::CoordinatorMessage> {
    node.shared.read(|d| {
        let t = d.state.tasks().get(task)?;
        if t.status != TaskStatus::Running || t.session != Some(session) {
            return None;
        }
        Some(convert::assignment(t))
    })
}

/// Assignments of `session` not yet sent (every running task of it), recording them as sent.
fn pending_assignments(
    node: &Node,
    session: SessionId,
    sent: &mut BTreeSet<(TaskId, u32)>,
) -> Vec<pb::CoordinatorMessage> {
    let running: Vec<(TaskId, u32)> = node.shared.read(|d| {
        d.state
            .tasks()
            .worker(session)
            .map(|w| w.running.keys().filter_map(|id| d.state.tasks().get(*id).map(|t| (*id, t.attempt))).collect())
            .unwrap_or_default()
    });
    // Forget what no longer runs here, so the set stays bounded by the worker's slots.
    sent.retain(|k| running.contains(k));
    running.into_iter().filter(|k| sent.insert(*k)).filter_map(|(id, _)| assignment(node, id, session)).collect()
}

#[tonic::async_trait]
impl pb::worker_gateway_server::WorkerGateway for GatewayApi {
    type ConnectStream = Pin<Box<dyn Stream<Item = Out> + Send + 'static>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<GrpcResponse<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let first =
            inbound.message().await?.ok_or_else(|| Status::invalid_argument("the stream ended before `register`"))?;
        let Some(pb::worker_message::Msg::Register(reg)) = first.msg else {
            return Err(ApiError::Invalid(Invalid::new("msg", "the first message must be `register`")).into());
        };
        validate::check_name("register.node_id", &reg.node_id, WORKER_NODE_ID_LEN_MAX_BYTES).map_err(ApiError::from)?;
        let mut slots = std::collections::BTreeMap::new();
        for (i, r) in reg.roles.iter().enumerate() {
            let role: Role = r
                .role
                .parse()
                .map_err(|e: qm_shared::agent::UnknownName| {
                    Invalid::new(format!("register.roles[{i}].role"), e.to_string())
                })
                .map_err(ApiError::from)?;
            slots.insert(role, r.slots);
        }
        let ttl_ms = if reg.session_ttl_ms == 0 { SESSION_TTL_MS_DEFAULT } else { reg.session_ttl_ms };
        validate::check_session_ttl_ms(ttl_ms)
            .map_err(|e| ApiError::Invalid(Invalid::new("register.session_ttl_ms", e.message)))?;

        // Subscribe before registering: nothing assigned from here on is missed.
        let mut live = self.node.shared.subscribe();
        let node = self.node.clone();
        let resumed = SessionId(reg.session_id);
        let session = if reg.session_id != 0
            && matches!(node.propose(Command::KeepAlive { session: resumed }).await?.1, Response::SessionKept { .. })
        {
            resumed
        } else {
            let label = format!("worker/{}", reg.node_id);
            match node.propose(Command::OpenSession { label, ttl_ms }).await?.1 {
                Response::SessionOpened { session, .. } => session,
                Response::Refused(Refusal::Exhausted { what, max }) => {
                    return Err(ApiError::ResourceExhausted(format!("{what}: at most {max}")).into())
                }
                other => return Err(ApiError::Internal(format!("unexpected answer: {other:?}")).into()),
            }
        };
        let listed: BTreeSet<TaskId> = reg.running_task_ids.iter().map(|id| TaskId(*id)).collect();
        let spec = WorkerSpec {
            session,
            node_id: reg.node_id.clone(),
            slots,
            labels: reg.labels.clone().into_iter().collect(),
            running: listed.iter().copied().collect(),
            gpus: reg
                .gpus
                .iter()
                .map(|g| GpuInfo { index: g.index, model: g.model.clone(), memory_bytes: g.memory_bytes })
                .collect(),
            providers: reg
                .model_providers
                .iter()
                .map(|p| ProviderInfo {
                    name: p.name.clone(),
                    kind: match pb::ProviderKind::try_from(p.kind) {
                        Ok(pb::ProviderKind::Anthropic) => "anthropic".into(),
                        _ => "openai".into(),
                    },
                    local: p.local,
                })
                .collect(),
        };
        let command = Command::RegisterWorker(spec);
        crate::state::validate_command(&command).map_err(ApiError::from)?;
        let abandon: Vec<u64> = match node.propose(command).await?.1 {
            Response::WorkerRegistered { abandon, .. } => abandon.into_iter().map(|t| t.0).collect(),
            Response::Refused(r) => return Err(ApiError::FailedPrecondition(r.to_string()).into()),
            other => return Err(ApiError::Internal(format!("unexpected answer: {other:?}")).into()),
        };
        tracing::info!(node_id = %reg.node_id, %session, "worker registered");

        let (tx, rx) = mpsc::channel::<Out>(OUTBOUND_BUFFER_LEN);
        let registered = pb::coordinator_message::Registered {
            node_id: reg.node_id.clone(),
            session_id: session.0,
            session_ttl_ms: ttl_ms,
            heartbeat_interval_ms: (ttl_ms / 4).max(250),
            server_time_ms: node.clock.now_ms(),
            abandon_task_ids: abandon,
        };
        let _ = tx.send(msg(pb::coordinator_message::Msg::Registered(registered))).await;
        // Tasks the worker listed keep running there; everything else running on the session
        // is sent as an assignment.
        let mut sent: BTreeSet<(TaskId, u32)> = node.shared.read(|d| {
            listed
                .iter()
                .filter_map(|id| d.state.tasks().get(*id))
                .filter(|t| t.status == TaskStatus::Running && t.session == Some(session))
                .map(|t| (t.id, t.attempt))
                .collect()
        });
        for m in pending_assignments(&node, session, &mut sent) {
            let _ = tx.send(Ok(m)).await;
        }

        // Outbound: this session's effects as they apply.
        {
            let (node, tx) = (node.clone(), tx.clone());
            tokio::spawn(async move {
                loop {
                    let applied = match live.recv().await {
                        Ok(a) => a,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            for m in pending_assignments(&node, session, &mut sent) {
                                if tx.send(Ok(m)).await.is_err() {
                                    return;
                                }
                            }
                            continue;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    for e in &applied.effects {
                        let out = match e {
                            Effect::TaskAssigned { task, attempt, session: s } if *s == session => {
                                if !sent.insert((*task, *attempt)) {
                                    continue;
                                }
                                match assignment(&node, *task, session) {
                                    Some(m) => Ok(m),
                                    None => continue,
                                }
                            }
                            Effect::TaskCancelRequested { task, session: s, .. } if *s == session => {
                                msg(pb::coordinator_message::Msg::Cancel(pb::coordinator_message::Cancel {
                                    task_id: task.0,
                                    reason: "cancelled".into(),
                                }))
                            }
                            Effect::PreemptRequested { reservation, owner, session: s, grace_ms, deadline, .. }
                                if *s == session =>
                            {
                                let Some(task) = owner_task(owner) else { continue };
                                msg(pb::coordinator_message::Msg::PreemptNotice(
                                    pb::coordinator_message::PreemptNotice {
                                        reservation_id: reservation.0,
                                        task_id: task,
                                        grace_ms: *grace_ms,
                                        deadline_at_ms: *deadline,
                                    },
                                ))
                            }
                            Effect::SessionExpired { session: s } if *s == session => Err(Status::failed_precondition(
                                format!("session {session} expired: register again for a new one"),
                            )),
                            _ => continue,
                        };
                        let end = out.is_err();
                        if tx.send(out).await.is_err() || end {
                            return;
                        }
                    }
                }
            });
        }

        // Inbound: heartbeats and reports.
        tokio::spawn(async move {
            loop {
                let m = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) | Err(_) => return,
                };
                let Some(m) = m.msg else { continue };
                use pb::worker_message::Msg;
                let (command, result) = match m {
                    Msg::Register(_) => {
                        let _ = tx.send(Err(Status::invalid_argument("`register` only as the first message"))).await;
                        return;
                    }
                    Msg::Heartbeat(_) => (Command::KeepAlive { session }, None),
                    Msg::Progress(p) => {
                        let report = TaskReport::Progress {
                            percent: p.percent_done,
                            stage: p.stage,
                            usage: usage_from_pb(&p.usage),
                        };
                        (Command::ReportTask { session, task: TaskId(p.task_id), attempt: p.attempt, report }, None)
                    }
                    Msg::Checkpoint(c) => {
                        let report =
                            TaskReport::Checkpoint { seq: c.seq, data: c.data, for_preemption: c.for_preemption };
                        (Command::ReportTask { session, task: TaskId(c.task_id), attempt: c.attempt, report }, None)
                    }
                    Msg::Blocked(b) => {
                        let report = TaskReport::Blocked { message: b.message };
                        (Command::ReportTask { session, task: TaskId(b.task_id), attempt: b.attempt, report }, None)
                    }
                    Msg::Result(r) => {
                        let outcome = match outcome_from_pb(r.outcome) {
                            Ok(o) => o,
                            Err(e) => {
                                let _ = tx.send(Err(ApiError::Invalid(e).into())).await;
                                return;
                            }
                        };
                        let report = TaskReport::Finished {
                            outcome,
                            output: r.output,
                            error: r.error,
                            usage: usage_from_pb(&r.usage),
                            wall_ms: r.wall_time_ms,
                            agent: r.agent,
                        };
                        let key = (r.task_id, r.attempt);
                        (
                            Command::ReportTask { session, task: TaskId(r.task_id), attempt: r.attempt, report },
                            Some(key),
                        )
                    }
                };
                if let Err(e) = crate::state::validate_command(&command) {
                    let _ = tx.send(Err(ApiError::Invalid(e).into())).await;
                    return;
                }
                match node.propose(command).await {
                    Ok((_, Response::Refused(Refusal::SessionUnknown { .. } | Refusal::NotAWorker { .. }))) => {
                        let _ = tx.send(Err(Status::failed_precondition(format!("session {session} is gone")))).await;
                        return;
                    }
                    Ok((_, resp)) => {
                        if let Some((task_id, attempt)) = result {
                            let status = match resp {
                                Response::TaskReported { status, .. } => status.as_str(),
                                _ => "stale",
                            };
                            let accepted = pb::coordinator_message::ResultAccepted {
                                task_id,
                                attempt,
                                status: status.to_string(),
                            };
                            if tx.send(msg(pb::coordinator_message::Msg::ResultAccepted(accepted))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        // The write did not make it (no leader): end the stream so the worker
                        // reconnects and resends what is unacknowledged.
                        tracing::debug!(error = %e, %session, "worker report not committed");
                        let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        return;
                    }
                }
            }
        });
        Ok(GrpcResponse::new(Box::pin(ReceiverStream::new(rx))))
    }
}
