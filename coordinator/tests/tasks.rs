//! The job model in the replicated core: dispatch, exactly-once by attempt, requeue on worker
//! loss, resume from checkpoint after preemption.

use std::collections::BTreeMap;

use qm_coordinator::state::{Command, Effect, Item, Response, SessionId, State, TaskId};
use qm_coordinator::state::{Outcome, TaskReport, TaskSpec, TaskStatus, Usage, WorkerSpec};
use qm_shared::{Mode, ResourcePath, Role};

struct Core {
    state: State,
    index: u64,
    now: u64,
}

impl Core {
    fn new() -> Core {
        Core { state: State::default(), index: 0, now: 1_000 }
    }

    fn apply(&mut self, cmd: Command) -> (Response, Vec<Effect>) {
        self.index += 1;
        self.now += 10;
        self.state.apply(self.index, self.now, cmd)
    }

    fn worker(&mut self, node: &str, role: Role, slots: u32) -> SessionId {
        let Response::SessionOpened { session, .. } =
            self.apply(Command::OpenSession { label: node.into(), ttl_ms: 10_000 }).0
        else {
            panic!()
        };
        let spec = WorkerSpec {
            session,
            node_id: node.into(),
            slots: BTreeMap::from([(role, slots)]),
            labels: BTreeMap::new(),
            running: Vec::new(),
            gpus: Vec::new(),
            providers: Vec::new(),
        };
        assert!(matches!(self.apply(Command::RegisterWorker(spec)).0, Response::WorkerRegistered { .. }));
        session
    }

    fn submit(&mut self, role: Role, priority: u32) -> (TaskId, Vec<Effect>) {
        let spec = TaskSpec {
            role,
            items: vec![Item { path: ResourcePath::parse("pg:staging").unwrap(), mode: Mode::Exclusive, units: 1 }],
            payload: b"scripted".to_vec(),
            priority,
            work_item: "WI-1".into(),
            max_attempts: 2,
            timeout_ms: 0,
            incremental: false,
            team: String::new(),
            project: String::new(),
            tier: None,
            requires: Vec::new(),
        };
        let (r, e) = self.apply(Command::SubmitTask(spec));
        let Response::TaskSubmitted { task } = r else { panic!("{r:?}") };
        (task, e)
    }

    fn report(&mut self, session: SessionId, task: TaskId, attempt: u32, report: TaskReport) -> Response {
        self.apply(Command::ReportTask { session, task, attempt, report }).0
    }
}

fn assigned(effects: &[Effect]) -> Vec<(TaskId, u32, SessionId)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::TaskAssigned { task, attempt, session } => Some((*task, *attempt, *session)),
            _ => None,
        })
        .collect()
}

fn finished(outcome: Outcome) -> TaskReport {
    TaskReport::Finished {
        outcome,
        output: b"done".to_vec(),
        error: String::new(),
        usage: Usage::default(),
        wall_ms: 5,
        agent: "w1/implementer-0".into(),
    }
}

#[test]
fn queued_tasks_go_to_free_slots_of_their_role_by_priority() {
    let mut c = Core::new();
    let (low, e) = c.submit(Role::Implementer, 100);
    assert!(assigned(&e).is_empty(), "no worker yet");
    let (high, _) = c.submit(Role::Implementer, 900);
    let (_, _) = c.submit(Role::Verifier, 900);
    let w = c.worker("box-1", Role::Implementer, 1);
    // Registration dispatched the higher priority implementer task only.
    let t = c.state.tasks();
    assert_eq!(t.get(high).unwrap().status, TaskStatus::Running);
    assert_eq!(t.get(high).unwrap().session, Some(w));
    assert_eq!(t.get(low).unwrap().status, TaskStatus::Queued);
    // Finishing it frees the slot for the next.
    let (r, _) = (c.report(w, high, 1, finished(Outcome::Succeeded)), ());
    assert!(matches!(r, Response::TaskReported { status: TaskStatus::Succeeded, .. }), "{r:?}");
    assert_eq!(c.state.tasks().get(low).unwrap().status, TaskStatus::Running);
}

#[test]
fn a_lost_worker_s_task_runs_again_elsewhere_and_the_zombie_is_refused() {
    let mut c = Core::new();
    let a = c.worker("box-a", Role::Implementer, 1);
    let (task, e) = c.submit(Role::Implementer, 500);
    assert_eq!(assigned(&e), vec![(task, 1, a)]);
    let b = c.worker("box-b", Role::Implementer, 1);
    // Progress and a checkpoint, then box-a's session ends.
    c.report(a, task, 1, TaskReport::Progress { percent: 40, stage: "editing".into(), usage: Usage::default() });
    c.report(a, task, 1, TaskReport::Checkpoint { seq: 4, data: b"at 40%".to_vec(), for_preemption: false });
    let (_, e) = c.apply(Command::CloseSession { session: a });
    assert_eq!(assigned(&e), vec![(task, 2, b)], "requeued and dispatched to box-b: {e:?}");
    let t = c.state.tasks().get(task).unwrap();
    assert_eq!(t.checkpoint.as_ref().unwrap().data, b"at 40%");
    // box-a's late result changes nothing; box-b's counts, once.
    let late = c.report(a, task, 1, finished(Outcome::Succeeded));
    assert!(matches!(late, Response::Refused(_)), "{late:?}");
    let r = c.report(b, task, 2, finished(Outcome::Succeeded));
    assert!(matches!(r, Response::TaskReported { status: TaskStatus::Succeeded, .. }), "{r:?}");
    let again = c.report(b, task, 2, finished(Outcome::Succeeded));
    assert!(matches!(again, Response::Refused(_)), "{again:?}");
}

#[test]
fn a_preempted_task_is_requeued_with_its_checkpoint_and_failures_are_bounded() {
    let mut c = Core::new();
    let w = c.worker("box", Role::Implementer, 1);
    let (task, _) = c.submit(Role::Implementer, 100);
    c.report(w, task, 1, TaskReport::Checkpoint { seq: 1, data: b"40".to_vec(), for_preemption: true });
    let (r, e) = c.apply(Command::ReportTask { session: w, task, attempt: 1, report: finished(Outcome::Preempted) });
    assert!(matches!(r, Response::TaskReported { status: TaskStatus::Running, .. }), "requeued and reassigned: {r:?}");
    assert!(e.iter().any(|e| matches!(e, Effect::TaskQueued { resumable: true, .. })), "{e:?}");
    assert_eq!(c.state.tasks().get(task).unwrap().attempts.last().unwrap().resumed_from, Some(1));
    // Two failures (max_attempts 2) end it as failed; preemption did not count.
    c.report(w, task, 2, finished(Outcome::Failed));
    let r = c.report(w, task, 3, finished(Outcome::Failed));
    assert!(matches!(r, Response::TaskReported { status: TaskStatus::Failed, .. }), "{r:?}");
    assert!(c.state.tasks().get(task).unwrap().checkpoint.is_none());
}

#[test]
fn task_commands_are_validated_naming_the_field() {
    let mut c = Core::new();
    let spec = TaskSpec {
        role: Role::Verifier,
        items: Vec::new(),
        payload: vec![0; qm_shared::limits::TASK_PAYLOAD_BYTES_MAX + 1],
        priority: 1,
        work_item: String::new(),
        max_attempts: 1,
        timeout_ms: 0,
        incremental: false,
        team: String::new(),
        project: String::new(),
        tier: None,
        requires: Vec::new(),
    };
    let (r, _) = c.apply(Command::SubmitTask(spec));
    let Response::Refused(refusal) = r else { panic!("{r:?}") };
    assert!(refusal.to_string().contains("payload"), "{refusal}");
}

#[test]
fn a_blocked_agent_lends_its_slot_to_work_that_needs_none_of_its_resources() {
    let mut c = Core::new();
    let w = c.worker("box", Role::Implementer, 1);
    let (blocked, _) = c.submit(Role::Implementer, 500); // needs pg:staging
                                                         // Two queued candidates of the same work item: one needs pg:staging too, one does not.
    let spec = |path: &str| TaskSpec {
        role: Role::Implementer,
        items: vec![Item { path: ResourcePath::parse(path).unwrap(), mode: Mode::Exclusive, units: 1 }],
        payload: Vec::new(),
        priority: 500,
        work_item: "WI-1".into(),
        max_attempts: 1,
        timeout_ms: 0,
        incremental: false,
        team: String::new(),
        project: String::new(),
        tier: None,
        requires: Vec::new(),
    };
    let Response::TaskSubmitted { task: same_resource } = c.apply(Command::SubmitTask(spec("pg:staging/table:t"))).0
    else {
        panic!()
    };
    let Response::TaskSubmitted { task: other } = c.apply(Command::SubmitTask(spec("repo:main"))).0 else { panic!() };
    let (_, e) = c.apply(Command::ReportTask {
        session: w,
        task: blocked,
        attempt: 1,
        report: TaskReport::Blocked { message: "waiting for pg:staging".into() },
    });
    assert_eq!(assigned(&e), vec![(other, 1, w)], "the free-of-conflict task runs meanwhile: {e:?}");
    let t = c.state.tasks();
    assert_eq!(t.get(same_resource).unwrap().status, TaskStatus::Queued);
    assert_eq!(t.get(blocked).unwrap().status, TaskStatus::Running, "the blocked task keeps its place");
    // Once unblocked (progress), the slot is full again: nothing more is dispatched.
    let (_, e) = c.apply(Command::ReportTask {
        session: w,
        task: blocked,
        attempt: 1,
        report: TaskReport::Progress { percent: 5, stage: "running".into(), usage: Usage::default() },
    });
    assert!(assigned(&e).is_empty());
}
