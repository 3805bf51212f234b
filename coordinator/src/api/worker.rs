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

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use qm_shared::agent::owner_task;
use qm_shared::limits::{SESSION_TTL_MS_DEFAULT, WORKER_NODE_ID_LEN_MAX_BYTES, WORKER_ROLES_MAX};
use qm_shared::pb::v1 as pb;
use qm_shared::{validate, Invalid, Role, Tier};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response as GrpcResponse, Status, Streaming};

use super::auth::Principal;
use super::convert::{self, outcome_from_pb, usage_from_pb};
use crate::error::ApiError;
use crate::node::Node;
use crate::raft::state_machine::Subscription;
use crate::state::{Command, Effect, Refusal, Response, SessionId, TaskId};
use crate::state::{GpuInfo, ProviderInfo, RoleSpec, TaskReport, TaskStatus, WorkerSpec};

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

/// The slots per role and the session TTL a worker's `Register` asks for, checked.
#[allow(clippy::type_complexity)]
fn checked_registration(
    reg: &pb::worker_message::Register,
) -> Result<(BTreeMap<Role, u32>, BTreeMap<Role, RoleSpec>, u64), Status> {
    validate::check_name("register.node_id", &reg.node_id, WORKER_NODE_ID_LEN_MAX_BYTES).map_err(ApiError::from)?;
    if reg.roles.len() > WORKER_ROLES_MAX {
        return Err(ApiError::Invalid(Invalid::new(
            "register.roles",
            format!("has {} roles, at most {WORKER_ROLES_MAX}", reg.roles.len()),
        ))
        .into());
    }
    let (mut slots, mut specs) = (BTreeMap::new(), BTreeMap::new());
    for (i, r) in reg.roles.iter().enumerate() {
        let role: Role = r
            .role
            .parse()
            .map_err(|e: qm_shared::agent::UnknownName| {
                Invalid::new(format!("register.roles[{i}].role"), e.to_string())
            })
            .map_err(ApiError::from)?;
        slots.insert(role, r.slots);
        let tier = |field: &str, text: &str| -> Result<Option<Tier>, Status> {
            if text.is_empty() {
                return Ok(None);
            }
            text.parse().map(Some).map_err(|e: qm_shared::agent::UnknownName| {
                ApiError::Invalid(Invalid::new(format!("register.roles[{i}].{field}"), e.to_string())).into()
            })
        };
        if let Some(start) = tier("tier", &r.tier)? {
            let max = tier("max_tier", &r.max_tier)?.unwrap_or(Tier::Frontier);
            let after_failed_gates = r.escalate_after_failed_gates.max(1);
            let money_per_task_micros = (r.money_per_task_micros > 0).then_some(r.money_per_task_micros);
            specs.insert(role, RoleSpec { start, max, after_failed_gates, money_per_task_micros });
        }
    }
    let ttl_ms = if reg.session_ttl_ms == 0 { SESSION_TTL_MS_DEFAULT } else { reg.session_ttl_ms };
    validate::check_session_ttl_ms(ttl_ms)
        .map_err(|e| ApiError::Invalid(Invalid::new("register.session_ttl_ms", e.message)))?;
    Ok((slots, specs, ttl_ms))
}

/// The worker's session: the one it names if that is still alive, else a new one.
async fn open_session(
    node: &Node,
    principal: &Principal,
    reg: &pb::worker_message::Register,
    ttl_ms: u64,
) -> Result<SessionId, Status> {
    let resumed = SessionId(reg.session_id);
    if reg.session_id != 0 {
        // Only the principal that opened a session resumes it (and so receives its
        // assignments and reports for it).
        match principal.check_session(node, resumed).await {
            Err(ApiError::NotFound(_)) => {}
            other => other?,
        }
    }
    if reg.session_id != 0
        && matches!(node.propose(Command::KeepAlive { session: resumed }).await?.1, Response::SessionKept { .. })
    {
        return Ok(resumed);
    }
    let label = format!("worker/{}", reg.node_id);
    let principal = principal.name.clone();
    match node.propose(Command::OpenSession { label, ttl_ms, principal }).await?.1 {
        Response::SessionOpened { session, .. } => Ok(session),
        Response::Refused(refusal) => Err(ApiError::from(refusal).into()),
        other => Err(ApiError::Internal(format!("unexpected answer: {other:?}")).into()),
    }
}

/// The worker as `Register` describes it, on `session`, still running the `listed` tasks.
fn worker_spec(
    reg: &pb::worker_message::Register,
    session: SessionId,
    (slots, specs): (BTreeMap<Role, u32>, BTreeMap<Role, RoleSpec>),
    listed: &BTreeSet<TaskId>,
) -> WorkerSpec {
    WorkerSpec {
        session,
        node_id: reg.node_id.clone(),
        slots,
        specs,
        labels: reg.labels.clone().into_iter().collect(),
        running: listed.iter().copied().collect(),
        gpus: reg
            .gpus
            .iter()
            .map(|g| GpuInfo { index: g.index, model: g.model.clone(), memory_bytes: g.memory_bytes })
            .collect(),
        container: reg.engines.iter().any(|e| e == "container"),
        repos: reg.repos.iter().cloned().collect(),
        clis: reg.clis.iter().cloned().collect(),
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
    }
}

/// Registers the worker; returns the tasks it listed that it must abandon.
async fn register_worker(node: &Node, spec: WorkerSpec) -> Result<Vec<u64>, Status> {
    let command = Command::RegisterWorker(spec);
    crate::state::validate_command(&command).map_err(ApiError::from)?;
    match node.propose(command).await?.1 {
        Response::WorkerRegistered { abandon, .. } => Ok(abandon.into_iter().map(|t| t.0).collect()),
        Response::Refused(r) => Err(ApiError::FailedPrecondition(r.to_string()).into()),
        other => Err(ApiError::Internal(format!("unexpected answer: {other:?}")).into()),
    }
}

#[tonic::async_trait]
impl pb::worker_gateway_server::WorkerGateway for GatewayApi {
    type ConnectStream = Pin<Box<dyn Stream<Item = Out> + Send + 'static>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<GrpcResponse<Self::ConnectStream>, Status> {
        let principal = Principal::of(&request);
        let mut inbound = request.into_inner();
        let first =
            inbound.message().await?.ok_or_else(|| Status::invalid_argument("the stream ended before `register`"))?;
        let Some(pb::worker_message::Msg::Register(reg)) = first.msg else {
            return Err(ApiError::Invalid(Invalid::new("msg", "the first message must be `register`")).into());
        };
        let (slots, specs, ttl_ms) = checked_registration(&reg)?;
        principal.check_node("register.node_id", &reg.node_id)?;

        // Subscribe before registering: nothing assigned from here on is missed.
        let live = self.node.shared.subscribe();
        let node = self.node.clone();
        let session = open_session(&node, &principal, &reg, ttl_ms).await?;
        let listed: BTreeSet<TaskId> = reg.running_task_ids.iter().map(|id| TaskId(*id)).collect();
        let abandon = register_worker(&node, worker_spec(&reg, session, (slots, specs), &listed)).await?;
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
        let connection = Connection { node, session, tx };
        let sent = connection.greet(registered, &listed).await;
        tokio::spawn(connection.clone().forward_effects(live, sent));
        tokio::spawn(connection.serve_reports(inbound));
        Ok(GrpcResponse::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One registered worker's stream: the node serving it, its session, and the queue of
/// messages toward it.
#[derive(Clone)]
struct Connection {
    node: Arc<Node>,
    session: SessionId,
    tx: mpsc::Sender<Out>,
}

impl Connection {
    /// Sends `Registered`, then every running assignment of the session the worker did not
    /// list (tasks it listed keep running there); returns the assignments it now has.
    async fn greet(
        &self,
        registered: pb::coordinator_message::Registered,
        listed: &BTreeSet<TaskId>,
    ) -> BTreeSet<(TaskId, u32)> {
        let _ = self.tx.send(msg(pb::coordinator_message::Msg::Registered(registered))).await;
        let mut sent: BTreeSet<(TaskId, u32)> = self.node.shared.read(|d| {
            listed
                .iter()
                .filter_map(|id| d.state.tasks().get(*id))
                .filter(|t| t.status == TaskStatus::Running && t.session == Some(self.session))
                .map(|t| (t.id, t.attempt))
                .collect()
        });
        for m in pending_assignments(&self.node, self.session, &mut sent) {
            let _ = self.tx.send(Ok(m)).await;
        }
        sent
    }

    /// Outbound: this session's effects as they apply, until the worker goes away, the
    /// session expires or the node stops applying.
    async fn forward_effects(self, mut live: Subscription, mut sent: BTreeSet<(TaskId, u32)>) {
        loop {
            let applied = match live.recv().await {
                Ok(a) => a,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    for m in pending_assignments(&self.node, self.session, &mut sent) {
                        if self.tx.send(Ok(m)).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            for e in &applied.effects {
                let Some(out) = self.effect_message(e, &mut sent) else { continue };
                let end = out.is_err();
                if self.tx.send(out).await.is_err() || end {
                    return;
                }
            }
        }
    }

    /// What an applied effect tells this worker, if anything: an assignment not sent yet, a
    /// cancel, a preemption notice, or (as an error ending the stream) its session's expiry.
    fn effect_message(&self, e: &Effect, sent: &mut BTreeSet<(TaskId, u32)>) -> Option<Out> {
        let session = self.session;
        match e {
            Effect::TaskAssigned { task, attempt, session: s } if *s == session => {
                if !sent.insert((*task, *attempt)) {
                    return None;
                }
                assignment(&self.node, *task, session).map(Ok)
            }
            Effect::TaskCancelRequested { task, session: s, .. } if *s == session => {
                Some(msg(pb::coordinator_message::Msg::Cancel(pb::coordinator_message::Cancel {
                    task_id: task.0,
                    reason: "cancelled".into(),
                })))
            }
            Effect::PreemptRequested { reservation, owner, session: s, grace_ms, deadline, .. } if *s == session => {
                let task = owner_task(owner)?;
                Some(msg(pb::coordinator_message::Msg::PreemptNotice(pb::coordinator_message::PreemptNotice {
                    reservation_id: reservation.0,
                    task_id: task,
                    grace_ms: *grace_ms,
                    deadline_at_ms: *deadline,
                })))
            }
            Effect::SessionExpired { session: s } if *s == session => Some(Err(Status::failed_precondition(format!(
                "session {session} expired: register again for a new one"
            )))),
            _ => None,
        }
    }

    /// Inbound: heartbeats and reports, each proposed as a command, until the worker closes
    /// the stream or a message ends it.
    async fn serve_reports(self, mut inbound: Streaming<pb::WorkerMessage>) {
        loop {
            let m = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => return,
            };
            let Some(m) = m.msg else { continue };
            let (command, result) = match self.command(m) {
                Ok(c) => c,
                Err(status) => {
                    let _ = self.tx.send(Err(status)).await;
                    return;
                }
            };
            if !self.commit(command, result).await {
                return;
            }
        }
    }

    /// The checked command a worker's message asks for and, for a task result, the
    /// `(task, attempt)` to acknowledge; an error ends the stream.
    fn command(&self, m: pb::worker_message::Msg) -> Result<(Command, Option<(u64, u32)>), Status> {
        use pb::worker_message::Msg;
        let session = self.session;
        let (command, result) = match m {
            Msg::Register(_) => return Err(Status::invalid_argument("`register` only as the first message")),
            Msg::Heartbeat(_) => (Command::KeepAlive { session }, None),
            Msg::Progress(p) => {
                let report =
                    TaskReport::Progress { percent: p.percent_done, stage: p.stage, usage: usage_from_pb(&p.usage) };
                (Command::ReportTask { session, task: TaskId(p.task_id), attempt: p.attempt, report }, None)
            }
            Msg::Checkpoint(c) => {
                let report = TaskReport::Checkpoint { seq: c.seq, data: c.data, for_preemption: c.for_preemption };
                (Command::ReportTask { session, task: TaskId(c.task_id), attempt: c.attempt, report }, None)
            }
            Msg::Blocked(b) => {
                let report = TaskReport::Blocked { message: b.message };
                (Command::ReportTask { session, task: TaskId(b.task_id), attempt: b.attempt, report }, None)
            }
            Msg::Result(r) => {
                let outcome = outcome_from_pb(r.outcome).map_err(ApiError::Invalid)?;
                let report = TaskReport::Finished {
                    outcome,
                    output: r.output,
                    error: r.error,
                    usage: usage_from_pb(&r.usage),
                    wall_ms: r.wall_time_ms,
                    agent: r.agent,
                    spec: r.spec,
                };
                let key = (r.task_id, r.attempt);
                (Command::ReportTask { session, task: TaskId(r.task_id), attempt: r.attempt, report }, Some(key))
            }
        };
        crate::state::validate_command(&command).map_err(ApiError::Invalid)?;
        Ok((command, result))
    }

    /// Proposes a worker's command and acknowledges a task result with `ResultAccepted`;
    /// false when the stream must end (the session is gone, the write failed, the worker left).
    async fn commit(&self, command: Command, result: Option<(u64, u32)>) -> bool {
        let session = self.session;
        match self.node.propose(command).await {
            Ok((_, Response::Refused(Refusal::SessionUnknown { .. } | Refusal::NotAWorker { .. }))) => {
                let _ = self.tx.send(Err(Status::failed_precondition(format!("session {session} is gone")))).await;
                false
            }
            Ok((_, resp)) => {
                let Some((task_id, attempt)) = result else { return true };
                let status = match resp {
                    Response::TaskReported { status, .. } => status.as_str(),
                    _ => "stale",
                };
                let accepted = pb::coordinator_message::ResultAccepted { task_id, attempt, status: status.to_string() };
                self.tx.send(msg(pb::coordinator_message::Msg::ResultAccepted(accepted))).await.is_ok()
            }
            Err(e) => {
                // The write did not make it (no leader): end the stream so the worker
                // reconnects and resends what is unacknowledged.
                tracing::debug!(error = %e, %session, "worker report not committed");
                let _ = self.tx.send(Err(Status::unavailable(e.to_string()))).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
                false
            }
        }
    }
}
