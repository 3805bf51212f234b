//! The agent actor: one per slot, keeping the pure [`Agent`] logic and performing its
//! actions (acquire, run the executor, release, report).

use super::*;

#[derive(Debug)]
pub enum AgentMsg {
    Event(Event),
}

pub(super) struct AgentActor;

pub(super) struct AgentState {
    /// Its slot's index in the supervisor, and its name (`<node>/<role>-<i>`).
    index: usize,
    slot: String,
    /// Its spec as `name@version` (empty: none).
    spec: String,
    logic: Agent,
    shared: Shared,
    supervisor: ActorRef<SupMsg>,
    control: Option<mpsc::Sender<Control>>,
    extender: Option<tokio::task::JoinHandle<()>>,
}

impl Actor for AgentActor {
    type Msg = AgentMsg;
    type State = AgentState;
    type Arguments = (usize, String, Role, Shared, ActorRef<SupMsg>);

    async fn pre_start(
        &self,
        _myself: ActorRef<AgentMsg>,
        (index, slot, role, shared, supervisor): Self::Arguments,
    ) -> Result<AgentState, ActorProcessingErr> {
        let spec = shared.specs.get(&role).cloned().unwrap_or_default();
        Ok(AgentState { index, slot, spec, logic: Agent::new(), shared, supervisor, control: None, extender: None })
    }

    async fn handle(
        &self,
        myself: ActorRef<AgentMsg>,
        msg: AgentMsg,
        st: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        let AgentMsg::Event(event) = msg;
        // The task this event is about, for telling the supervisor when it is done with it.
        let task = match &event {
            Event::Assigned(a) | Event::Resume(a, _) => Some(a.task),
            _ => st.logic.current().map(|(task, _)| task),
        };
        let granted = match &event {
            Event::Granted(leases) => st.logic.current().map(|(task, _)| (task, leases.clone())),
            Event::Resume(a, leases) => Some((a.task, leases.clone())),
            _ => None,
        };
        if let Some((task, leases)) = granted {
            let ids: Vec<u64> = leases.iter().map(|l| l.id).collect();
            let mut book = st.shared.book.lock().expect("book");
            book.pending.remove(&task);
            if let Some(entry) = book.running.get_mut(&task) {
                entry.0 = st.slot.clone();
                entry.2 = ids.clone();
            }
            drop(book);
            st.extender = Some(tokio::spawn(keep_leases(st.shared.clone(), ids)));
        }
        if let Event::Assigned(a) = &event {
            st.shared.book.lock().expect("book").running.insert(a.task, (st.slot.clone(), a.attempt, Vec::new()));
        }
        let now = st.shared.now_ms();
        for action in st.logic.on_event(event, now) {
            perform(&myself, st, action).await;
        }
        if st.logic.is_idle() {
            if let Some(x) = st.extender.take() {
                x.abort();
            }
            st.control = None;
            st.shared.book.lock().expect("book").running.retain(|_, (slot, _, _)| *slot != st.slot);
            if let Some(task) = task {
                let _ = st.supervisor.cast(SupMsg::Idle { slot: st.index, task });
            }
        }
        Ok(())
    }
}

pub(super) async fn perform(myself: &ActorRef<AgentMsg>, st: &mut AgentState, action: Action) {
    let shared = st.shared.clone();
    match action {
        Action::Acquire { task, resources, priority } => {
            // The outcome goes to the supervisor: by then the task may be parked.
            let supervisor = st.supervisor.clone();
            tokio::spawn(async move {
                let result = acquire(&shared, task, resources, priority).await;
                let _ = supervisor.cast(SupMsg::AcquireDone { task, result });
            });
            let after = st.shared.blocked_after;
            myself.send_after(after, move || AgentMsg::Event(Event::BlockedTimeout(task)));
        }
        Action::Park { a, retry } => {
            if let Some(entry) = shared.book.lock().expect("book").running.get_mut(&a.task) {
                entry.0 = PARKED.to_string();
                entry.2.clear();
            }
            let _ = st.supervisor.cast(SupMsg::Parked { slot: st.index, a, retry });
        }
        Action::CancelAcquire { task } => {
            let pending = shared.book.lock().expect("book").pending.remove(&task);
            if let Some(request) = pending {
                tokio::spawn(async move {
                    let target = Some(pb::release_request::Target::RequestId(request));
                    let _ = shared.client.release(pb::ReleaseRequest { session_id: shared.session(), target }).await;
                });
            }
        }
        Action::Start(req) => {
            let (events_tx, mut events_rx) = mpsc::channel(64);
            let (control_tx, control_rx) = mpsc::channel(4);
            st.control = Some(control_tx);
            let me = myself.clone();
            tokio::spawn(async move {
                let run = tokio::spawn((shared.executor.0)(req, events_tx, control_rx));
                while let Some(ev) = events_rx.recv().await {
                    let _ = me.cast(AgentMsg::Event(Event::Exec(ev)));
                }
                let result = run.await.unwrap_or_else(|e| executor::ExecResult {
                    outcome: executor::ExecOutcome::Failed,
                    output: Vec::new(),
                    error: format!("executor panicked: {e}"),
                    usage: Usage::default(),
                });
                let _ = me.cast(AgentMsg::Event(Event::ExecDone(result)));
            });
        }
        Action::Control(c) => {
            if let Some(control) = &st.control {
                let _ = control.send(c).await;
            }
        }
        Action::Release(ids) => release_all(&shared, ids).await,
        Action::Report { task, attempt, report } => {
            let _ = shared.up.send(report_msg((&st.slot, &st.spec), task, attempt, report)).await;
        }
    }
}
