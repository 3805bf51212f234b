//! The job model in the replicated core: dispatch, exactly-once by attempt, requeue on worker
//! loss, resume from checkpoint after preemption.

mod support;

use qm_coordinator::state::{Command, Effect, Outcome, Response, TaskReport, TaskStatus, Usage};
use qm_shared::Role;
use support::{assigned, finished, task, worker, Core};

#[test]
fn queued_tasks_go_to_free_slots_of_their_role_by_priority() {
    let mut c = Core::new();
    let (low, e) = c.submit(task(Role::Implementer).priority(100));
    assert!(assigned(&e).is_empty(), "no worker yet");
    let (high, _) = c.submit(task(Role::Implementer).priority(900));
    c.submit(task(Role::Verifier).priority(900));
    let w = c.worker("box-1", &[(Role::Implementer, 1)]);
    // Registration dispatched the higher priority implementer task only.
    assert_eq!(c.task(high).status, TaskStatus::Running);
    assert_eq!(c.task(high).session, Some(w));
    assert_eq!(c.task(low).status, TaskStatus::Queued);
    // Finishing it frees the slot for the next.
    let (r, _) = c.report(w, high, 1, finished(Outcome::Succeeded));
    assert!(matches!(r, Response::TaskReported { status: TaskStatus::Succeeded, .. }), "{r:?}");
    assert_eq!(c.task(low).status, TaskStatus::Running);
}

#[test]
fn a_lost_worker_s_task_runs_again_elsewhere_and_the_zombie_is_refused() {
    let mut c = Core::new();
    let a = c.worker("box-a", &[(Role::Implementer, 1)]);
    let (task, e) = c.submit(task(Role::Implementer));
    assert_eq!(assigned(&e), vec![(task, 1, a)]);
    let b = c.worker("box-b", &[(Role::Implementer, 1)]);
    // Progress and a checkpoint, then box-a's session ends.
    c.report(a, task, 1, TaskReport::Progress { percent: 40, stage: "editing".into(), usage: Usage::default() });
    c.report(a, task, 1, TaskReport::Checkpoint { seq: 4, data: b"at 40%".to_vec(), for_preemption: false });
    let (_, e) = c.apply(Command::CloseSession { session: a });
    assert_eq!(assigned(&e), vec![(task, 2, b)], "requeued and dispatched to box-b: {e:?}");
    assert_eq!(c.task(task).checkpoint.as_ref().unwrap().data, b"at 40%");
    // box-a's late result changes nothing; box-b's counts, once.
    let (late, _) = c.report(a, task, 1, finished(Outcome::Succeeded));
    assert!(matches!(late, Response::Refused(_)), "{late:?}");
    let (r, _) = c.report(b, task, 2, finished(Outcome::Succeeded));
    assert!(matches!(r, Response::TaskReported { status: TaskStatus::Succeeded, .. }), "{r:?}");
    let (again, _) = c.report(b, task, 2, finished(Outcome::Succeeded));
    assert!(matches!(again, Response::Refused(_)), "{again:?}");
}

#[test]
fn a_preempted_task_is_requeued_with_its_checkpoint_and_failures_are_bounded() {
    let mut c = Core::new();
    let w = c.worker("box", &[(Role::Implementer, 1)]);
    let (task, _) = c.submit(task(Role::Implementer).priority(100));
    c.report(w, task, 1, TaskReport::Checkpoint { seq: 1, data: b"40".to_vec(), for_preemption: true });
    let (r, e) = c.report(w, task, 1, finished(Outcome::Preempted));
    assert!(matches!(r, Response::TaskReported { status: TaskStatus::Running, .. }), "requeued and reassigned: {r:?}");
    assert!(e.iter().any(|e| matches!(e, Effect::TaskQueued { resumable: true, .. })), "{e:?}");
    assert_eq!(c.task(task).attempts.last().unwrap().resumed_from, Some(1));
    // Two failures (max_attempts 2) end it as failed; preemption did not count.
    c.report(w, task, 2, finished(Outcome::Failed));
    let (r, _) = c.report(w, task, 3, finished(Outcome::Failed));
    assert!(matches!(r, Response::TaskReported { status: TaskStatus::Failed, .. }), "{r:?}");
    assert!(c.task(task).checkpoint.is_none());
}

#[test]
fn task_commands_are_validated_naming_the_field() {
    let mut c = Core::new();
    let spec = task(Role::Verifier).payload(vec![0; qm_shared::limits::TASK_PAYLOAD_BYTES_MAX + 1]).build();
    let (r, _) = c.apply(Command::SubmitTask(spec));
    let Response::Refused(refusal) = r else { panic!("{r:?}") };
    assert!(refusal.to_string().contains("payload"), "{refusal}");
}

#[test]
fn a_blocked_agent_lends_its_slot_to_work_that_needs_none_of_its_resources() {
    let mut c = Core::new();
    let w = c.worker("box", &[(Role::Implementer, 1)]);
    let (blocked, _) = c.submit(task(Role::Implementer)); // needs pg:staging
                                                          // Two queued candidates of the same work item: one needs pg:staging too, one does not.
    let (same_resource, _) = c.submit(task(Role::Implementer).needs("pg:staging/table:t"));
    let (other, _) = c.submit(task(Role::Implementer).needs("repo:main"));
    let (_, e) = c.report(w, blocked, 1, TaskReport::Blocked { message: "waiting for pg:staging".into() });
    assert_eq!(assigned(&e), vec![(other, 1, w)], "the free-of-conflict task runs meanwhile: {e:?}");
    assert_eq!(c.task(same_resource).status, TaskStatus::Queued);
    assert_eq!(c.task(blocked).status, TaskStatus::Running, "the blocked task keeps its place");
    // Once unblocked (progress), the slot is full again: nothing more is dispatched.
    let progress = TaskReport::Progress { percent: 5, stage: "running".into(), usage: Usage::default() };
    let (_, e) = c.report(w, blocked, 1, progress);
    assert!(assigned(&e).is_empty());
}

#[test]
fn a_task_whose_payload_names_a_repository_or_a_cli_goes_only_to_a_worker_that_has_it() {
    let mut c = Core::new();
    let plain = c.join(worker("plain", &[(Role::Implementer, 2)]));
    let agent = br#"{"executor":"agent","prompt":"fix","repo":"app"}"#.to_vec();
    let (t, _) = c.submit(task(Role::Implementer).payload(agent));
    let t = c.task(t);
    assert_eq!(t.status, TaskStatus::Queued, "the free slot's worker has no repository app");
    assert_eq!(t.wait.as_deref(), Some("no free implementer slot on a worker with repo app"));
    let id = t.id;
    let cli = br#"{"executor":"cli","tool":"claude","prompt":"fix"}"#.to_vec();
    let (by_cli, _) = c.submit(task(Role::Implementer).payload(cli));
    assert_eq!(c.task(by_cli).wait.as_deref(), Some("no free implementer slot on a worker with cli claude"));
    // A payload naming neither runs on the plain worker.
    let (any, _) = c.submit(task(Role::Implementer));
    assert_eq!(c.task(any).session, Some(plain));
    // A worker granted app (and running claude) takes both.
    let granted = c.join(worker("granted", &[(Role::Implementer, 2)]).repo("app").cli("claude"));
    assert_eq!((c.task(id).session, c.task(by_cli).session), (Some(granted), Some(granted)));
    c.state.check_invariants();
}
