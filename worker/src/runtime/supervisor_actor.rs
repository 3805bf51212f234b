//! The supervisor actor around the pure [`supervisor::Supervisor`]: it turns gRPC and actor
//! messages into its events and performs its actions.

use super::*;

#[derive(Debug)]
pub enum SupMsg {
    /// A message from the coordinator.
    Down(pb::CoordinatorMessage),
    /// Tasks the coordinator says are no longer ours.
    Abandon(Vec<u64>),
    /// The agent of `slot` is done with `task`.
    Idle { slot: usize, task: u64 },
    /// Start the agent of `slot` again (after its backoff).
    Restart(usize),
    /// An agent handed over a task whose acquire waits (or, `retry`, must be made again).
    Parked { slot: usize, a: Assignment, retry: bool },
    /// An acquire finished (for an agent's task or a parked one).
    AcquireDone { task: u64, result: Result<Vec<Lease>, AcquireError> },
    /// A parked task's retry pause is over.
    RetryDue(u64),
}

/// The actor around the pure [`supervisor::Supervisor`]: it turns messages into its events
/// and performs its actions (agent messages, gRPC calls, timers).
pub(super) struct SupervisorActor;

pub(super) struct SupState {
    shared: Shared,
    logic: supervisor::Supervisor,
    /// Each slot's agent name, `<node>/<role>-<i>`.
    names: Vec<String>,
    /// Each slot's agent while it runs.
    agents: Vec<Option<ActorRef<AgentMsg>>>,
}

impl SupervisorActor {
    /// Starts the agent of `slot`; `false` if it could not start.
    async fn spawn_agent(myself: &ActorRef<SupMsg>, st: &mut SupState, slot: usize) -> bool {
        let name = st.names[slot].clone();
        let role = st.logic.slots()[slot].role;
        let args = (slot, name.clone(), role, st.shared.clone(), myself.clone());
        match Actor::spawn_linked(Some(name.clone()), AgentActor, args, myself.get_cell()).await {
            Ok((agent, _)) => {
                st.agents[slot] = Some(agent);
                true
            }
            Err(e) => {
                tracing::error!(slot = %name, error = %e, "agent failed to start");
                false
            }
        }
    }

    /// Feeds `event` to the supervisor logic and performs what it asks.
    async fn step(myself: &ActorRef<SupMsg>, st: &mut SupState, event: SupEvent) {
        let now = st.shared.now_ms();
        for action in st.logic.on_event(event, now) {
            SupervisorActor::perform(myself, st, action).await;
        }
    }

    async fn perform(myself: &ActorRef<SupMsg>, st: &mut SupState, action: SupAction) {
        match action {
            SupAction::Agent { slot, event } => {
                match &event {
                    Event::Assigned(a) => {
                        tracing::info!(task = a.task, attempt = a.attempt, slot = %st.names[slot], "assigned")
                    }
                    Event::Resume(a, _) => {
                        tracing::info!(task = a.task, slot = %st.names[slot], "resources granted: resuming the parked task")
                    }
                    _ => {}
                }
                if let Some(agent) = &st.agents[slot] {
                    let _ = agent.cast(AgentMsg::Event(event));
                }
            }
            SupAction::Acquire { task, resources, priority } => {
                let (shared, me) = (st.shared.clone(), myself.clone());
                tokio::spawn(async move {
                    let result = acquire(&shared, task, resources, priority).await;
                    let _ = me.cast(SupMsg::AcquireDone { task, result });
                });
            }
            SupAction::RetryAfter { task, after_ms } => {
                myself.send_after(Duration::from_millis(after_ms), move || SupMsg::RetryDue(task));
            }
            SupAction::CancelAcquire { task } => {
                let pending = st.shared.book.lock().expect("book").pending.remove(&task);
                if let Some(request) = pending {
                    let target = Some(pb::release_request::Target::RequestId(request));
                    let req = pb::ReleaseRequest { session_id: st.shared.session(), target };
                    let _ = st.shared.client.release(req).await;
                }
            }
            SupAction::Release(ids) => release_all(&st.shared, ids).await,
            SupAction::Forget { task } => {
                st.shared.book.lock().expect("book").running.remove(&task);
            }
            SupAction::Report { task, attempt, report } => {
                let _ = st.shared.up.send(report_msg(("", ""), task, attempt, report)).await;
            }
            SupAction::Lost { slot, task, attempt, why } => {
                let leases = st.shared.book.lock().expect("book").running.remove(&task).map(|(_, _, l)| l);
                release_all(&st.shared, leases.unwrap_or_default()).await;
                let name = &st.names[slot];
                let report = Report::Result {
                    outcome: Outcome::Failed,
                    output: Vec::new(),
                    error: format!("agent {name} failed: {why}"),
                    usage: Usage::default(),
                    wall_ms: 0,
                };
                let _ = st.shared.up.send(report_msg((name, ""), task, attempt, report)).await;
            }
            SupAction::Restart { slot, after_ms } => {
                myself.send_after(Duration::from_millis(after_ms), move || SupMsg::Restart(slot));
            }
        }
    }
}

impl Actor for SupervisorActor {
    type Msg = SupMsg;
    type State = SupState;
    type Arguments = (WorkerConfig, Shared);

    async fn pre_start(
        &self,
        myself: ActorRef<SupMsg>,
        (config, shared): Self::Arguments,
    ) -> Result<SupState, ActorProcessingErr> {
        let logic = supervisor::Supervisor::new(&config.slots, supervisor::Policy::default());
        let names: Vec<String> =
            logic.slots().iter().map(|s| format!("{}/{}-{}", config.node_id, s.role, s.index)).collect();
        let agents = vec![None; names.len()];
        let mut st = SupState { shared, logic, names, agents };
        for slot in 0..st.names.len() {
            if !SupervisorActor::spawn_agent(&myself, &mut st, slot).await {
                let why = "failed to start".to_string();
                SupervisorActor::step(&myself, &mut st, SupEvent::Down { slot, why }).await;
            }
        }
        Ok(st)
    }

    async fn handle(&self, myself: ActorRef<SupMsg>, msg: SupMsg, st: &mut SupState) -> Result<(), ActorProcessingErr> {
        use pb::coordinator_message::Msg;
        let event = match msg {
            SupMsg::Down(m) => match m.msg {
                Some(Msg::Assignment(a)) => {
                    let Ok(role) = a.role.parse::<Role>() else {
                        tracing::warn!(role = %a.role, task = a.task_id, "assignment with a malformed role");
                        return Ok(());
                    };
                    SupEvent::Assigned(Assignment {
                        task: a.task_id,
                        role,
                        attempt: a.attempt,
                        resources: a
                            .resources
                            .iter()
                            .map(|r| (r.path.clone(), r.mode == pb::Mode::Exclusive as i32, r.units.max(1)))
                            .collect(),
                        payload: a.payload,
                        priority: a.priority,
                        resume: (!a.resume_checkpoint.is_empty()).then_some(a.resume_checkpoint),
                        timeout_ms: a.timeout_ms,
                        incremental: a.incremental,
                        provider: a.provider,
                        model: a.model,
                    })
                }
                Some(Msg::PreemptNotice(p)) => {
                    tracing::info!(task = p.task_id, grace_ms = p.grace_ms, "preemption notice: checkpointing");
                    SupEvent::Preempt(p.task_id)
                }
                Some(Msg::Cancel(c)) => SupEvent::Cancel(c.task_id),
                _ => return Ok(()),
            },
            SupMsg::Abandon(tasks) => SupEvent::Abandon(tasks),
            SupMsg::Parked { slot, a, retry } => {
                tracing::info!(task = a.task, retry, "blocked on resources: parked; the agent takes other work");
                SupEvent::Parked { slot, a, retry }
            }
            SupMsg::AcquireDone { task, result } => SupEvent::AcquireDone { task, result },
            SupMsg::RetryDue(task) => SupEvent::RetryDue(task),
            SupMsg::Idle { slot, task } => SupEvent::Idle { slot, task },
            SupMsg::Restart(slot) => {
                if !SupervisorActor::spawn_agent(&myself, st, slot).await {
                    SupEvent::Down { slot, why: "failed to start".into() }
                } else {
                    SupEvent::Up(slot)
                }
            }
        };
        SupervisorActor::step(&myself, st, event).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupMsg>,
        event: SupervisionEvent,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        // Explicit policy (ractor's default would stop this supervisor): a failed agent's
        // task is reported failed and its leases released, then the slot restarts after the
        // supervisor logic's backoff, or stays down after too many restarts.
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.unwrap_or_else(|| "stopped".into())),
            _ => return Ok(()),
        };
        let Some(slot) = st.agents.iter().position(|a| a.as_ref().is_some_and(|a| a.get_id() == cell.get_id())) else {
            return Ok(());
        };
        tracing::warn!(slot = %st.names[slot], reason = %why, "agent stopped; restarting with backoff");
        st.agents[slot] = None;
        SupervisorActor::step(&myself, st, SupEvent::Down { slot, why }).await;
        Ok(())
    }
}
