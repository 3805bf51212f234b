//! Per-principal quotas in the replicated core: what one principal may hold of the state.

mod support;

use qm_coordinator::state::{Command, Refusal, Response, State};
use qm_shared::limits::SESSIONS_PER_PRINCIPAL_MAX;
use support::Core;

fn open(c: &mut Core, principal: &str) -> Response {
    c.apply(Command::OpenSession { label: "s".into(), ttl_ms: 60_000, principal: principal.into() }).0
}

#[test]
fn a_principal_opens_at_most_its_quota_of_sessions_and_closing_one_makes_room() {
    let mut c = Core::new();
    let mut first = None;
    for _ in 0..SESSIONS_PER_PRINCIPAL_MAX {
        let r = open(&mut c, "ci");
        let Response::SessionOpened { session, .. } = r else { panic!("{r:?}") };
        first.get_or_insert(session);
    }
    let before = c.state.clone();
    let r = open(&mut c, "ci");
    assert!(
        matches!(&r, Response::Refused(Refusal::Exhausted { what, max })
            if what == "sessions of principal \"ci\"" && *max == SESSIONS_PER_PRINCIPAL_MAX as u64),
        "{r:?}"
    );
    c.state.check_invariants();
    // Another principal, and sessions with no principal (access control off), are not held back.
    assert!(matches!(open(&mut c, "ops"), Response::SessionOpened { .. }));
    assert!(matches!(open(&mut c, ""), Response::SessionOpened { .. }));
    assert_ne!(before, c.state);
    // Closing one of ci's sessions makes room for exactly one more.
    let closed = c.apply(Command::CloseSession { session: first.expect("a session") }).0;
    assert!(matches!(closed, Response::SessionClosed { .. }), "{closed:?}");
    assert!(matches!(open(&mut c, "ci"), Response::SessionOpened { .. }));
    assert!(matches!(open(&mut c, "ci"), Response::Refused(Refusal::Exhausted { .. })));
    // The count is derived, not stored: a snapshot restores it, and the quota still holds.
    let mut restored = State::restore(&c.state.snapshot()).expect("restore");
    assert_eq!(restored, c.state);
    let (r, _) = restored.apply(
        c.index + 1,
        c.now + 1,
        Command::OpenSession { label: "s".into(), ttl_ms: 60_000, principal: "ci".into() },
    );
    assert!(matches!(r, Response::Refused(Refusal::Exhausted { .. })), "{r:?}");
}

/// The storage alarm (etcd's NOSPACE): a measurement over the quota raises it; while it is
/// raised every command that adds data is refused, naming the size and the quota, and changes
/// nothing, while release, close, cancel and time still work; a measurement at or under 90%
/// of the quota clears it.
#[test]
fn the_storage_alarm_refuses_growth_allows_release_and_clears_under_ninety_percent() {
    let mut c = Core::new();
    let s = match open(&mut c, "ci") {
        Response::SessionOpened { session, .. } => session,
        r => panic!("{r:?}"),
    };
    let held = c.apply(support::acquire(s, "a").exclusive("pg:db/table:t")).0;
    let Response::Granted { grants, .. } = held else { panic!("{held:?}") };
    let quota = 16_384;
    // Under the quota: nothing happens.
    assert_eq!(c.apply(Command::SpaceMeasured { bytes: quota, quota }).0, Response::SpaceMeasured { alarm: false });
    assert_eq!(c.state.space_alarm(), None);
    let r = c.apply(Command::SpaceMeasured { bytes: quota + 1, quota }).0;
    assert_eq!(r, Response::SpaceMeasured { alarm: true });
    let alarm = c.state.space_alarm().expect("raised");
    assert_eq!((alarm.bytes, alarm.quota, alarm.since), (quota + 1, quota, c.now));

    let growing = [
        Command::OpenSession { label: "more".into(), ttl_ms: 60_000, principal: "ci".into() },
        support::acquire(s, "b").exclusive("pg:db/table:u").into(),
        Command::SubmitTask(support::task(qm_shared::Role::Implementer).build()),
        Command::DeclareResource {
            path: support::path("gpu:g"),
            capacity: Some(2),
            policy: Default::default(),
            grace_ms: 10_000,
        },
    ];
    for cmd in growing {
        let before = c.state.render();
        let (tasks, sessions) = (c.state.tasks().iter().count(), c.state.session_count());
        let r = c.apply(cmd.clone()).0;
        let Response::Refused(refusal) = &r else { panic!("{cmd:?} was not refused: {r:?}") };
        assert_eq!(*refusal, Refusal::NoSpace { bytes: quota + 1, quota }, "{cmd:?}");
        assert!(refusal.to_string().contains("limits.state_bytes_max"), "{refusal}");
        assert_eq!(c.state.render(), before, "{cmd:?} changed the lock table");
        assert_eq!((c.state.tasks().iter().count(), c.state.session_count()), (tasks, sessions), "{cmd:?}");
    }
    // Freeing works; the alarm survives a snapshot.
    let released = c.apply(Command::Release { session: s, reservation: grants[0].id }).0;
    assert!(matches!(released, Response::Released { .. }), "{released:?}");
    let restored = State::restore(&c.state.snapshot()).expect("restore");
    assert_eq!(restored.space_alarm(), Some(alarm));
    // Still over 90%: raised, with the new size.
    let ninety = quota * 9 / 10;
    assert_eq!(c.apply(Command::SpaceMeasured { bytes: ninety + 1, quota }).0, Response::SpaceMeasured { alarm: true });
    assert_eq!(c.state.space_alarm().map(|a| (a.bytes, a.since)), Some((ninety + 1, alarm.since)));
    // At 90%: cleared, and growth works again.
    assert_eq!(c.apply(Command::SpaceMeasured { bytes: ninety, quota }).0, Response::SpaceMeasured { alarm: false });
    assert!(matches!(open(&mut c, "ci"), Response::SessionOpened { .. }));
    c.state.check_invariants();
}

#[test]
fn only_commands_that_add_data_are_held_back_by_the_alarm() {
    use qm_coordinator::state::{Period, Scope};
    let budget =
        |limit_micros| Command::SetBudget { scope: Scope::Team, name: "t".into(), limit_micros, period: Period::Day };
    assert!(budget(1).adds_data(), "a new or raised budget");
    assert!(!budget(0).adds_data(), "removing a budget frees");
    assert!(!Command::Tick.adds_data() && Command::Tick.is_internal());
    assert!(Command::SpaceMeasured { bytes: 0, quota: 16_384 }.is_internal());
    assert!(!Command::OpenSession { label: String::new(), ttl_ms: 1_000, principal: String::new() }.is_internal());
}

/// A principal holds and waits for at most `claims_per_principal_max` resources, counted over
/// all its sessions: past it an acquire is refused naming the principal and the bound, and
/// changes nothing; releasing, a wait ending or a session closing makes room; another
/// principal is not held back; the count survives a snapshot.
#[test]
fn a_principal_holds_and_waits_for_at_most_its_quota_of_resources() {
    let config = qm_coordinator::state::Config { claims_per_principal_max: 4, ..Default::default() };
    let mut c = Core::with(config);
    let session = |c: &mut Core, principal: &str| match open(c, principal) {
        Response::SessionOpened { session, .. } => session,
        r => panic!("{r:?}"),
    };
    let (a, b, other) = (session(&mut c, "ci"), session(&mut c, "ci"), session(&mut c, "ops"));
    let granted = |r: Response| match r {
        Response::Granted { grants } => grants,
        r => panic!("{r:?}"),
    };
    let two = granted(c.apply(support::acquire(a, "x").exclusive("pg:q/table:1").exclusive("pg:q/table:2")).0);
    // Another principal holds table:3; ci waits for it on its second session: 3 claims.
    granted(c.apply(support::acquire(other, "o").exclusive("pg:q/table:3")).0);
    let queued = c.apply(support::acquire(b, "w").exclusive("pg:q/table:3")).0;
    assert!(matches!(queued, Response::Queued { .. }), "{queued:?}");
    granted(c.apply(support::acquire(b, "y").exclusive("pg:q/table:4")).0);
    // A fifth is refused, from either session.
    let before = c.state.render();
    for s in [a, b] {
        let r = c.apply(support::acquire(s, "z").exclusive("pg:q/table:5")).0;
        assert!(
            matches!(&r, Response::Refused(Refusal::Exhausted { what, max: 4 })
                if what == "reservations held and waited for by principal \"ci\""),
            "{r:?}"
        );
    }
    assert_eq!(c.state.render(), before, "nothing changed");
    granted(c.apply(support::acquire(other, "o2").exclusive("pg:q/table:6")).0);
    let restored = State::restore(&c.state.snapshot()).expect("restore");
    assert_eq!(restored.snapshot(), c.state.snapshot());
    // A release makes room for one.
    let released = c.apply(Command::Release { session: a, reservation: two[0].id }).0;
    assert!(matches!(released, Response::Released { .. }), "{released:?}");
    granted(c.apply(support::acquire(a, "z").exclusive("pg:q/table:5")).0);
    assert!(matches!(
        c.apply(support::acquire(a, "z2").exclusive("pg:q/table:7")).0,
        Response::Refused(Refusal::Exhausted { .. })
    ));
    // Closing the session that waits and holds frees both of its claims.
    assert!(matches!(c.apply(Command::CloseSession { session: b }).0, Response::SessionClosed { .. }));
    granted(c.apply(support::acquire(a, "z2").exclusive("pg:q/table:7").exclusive("pg:q/table:8")).0);
    c.state.check_invariants();
}

/// A principal's unended tasks, unended work items and their payload bytes are bounded:
/// past a bound a submission is refused naming the principal and the bound, and changes
/// nothing; a task ending makes room; other principals and submissions without a principal
/// (access control off) are not held back.
#[test]
fn a_principal_submits_at_most_its_quota_of_tasks_work_items_and_payload_bytes() {
    use qm_shared::limits::TASK_PAYLOAD_BYTES_MAX;
    use qm_shared::Role;
    let config = qm_coordinator::state::Config {
        tasks_per_principal_max: 2,
        work_items_per_principal_max: 1,
        payload_bytes_per_principal_max: TASK_PAYLOAD_BYTES_MAX as u64,
        ..Default::default()
    };
    let mut c = Core::with(config).project(support::demo_project());
    let task = |principal: &str, bytes: usize| {
        let mut spec = support::task(Role::Implementer).build();
        spec.principal = principal.into();
        spec.payload = vec![b' '; bytes];
        Command::SubmitTask(spec)
    };
    let refused = |r: Response, what: &str, max: u64| match r {
        Response::Refused(Refusal::Exhausted { what: w, max: m }) => {
            assert_eq!((w.as_str(), m), (format!("{what} of principal \"ci\"").as_str(), max))
        }
        r => panic!("{r:?}"),
    };
    let submitted = |r: Response| match r {
        Response::TaskSubmitted { task } => task,
        r => panic!("{r:?}"),
    };
    let first = submitted(c.apply(task("ci", 10)).0);
    submitted(c.apply(task("ci", 10)).0);
    let before = c.state.tasks().iter().count();
    refused(c.apply(task("ci", 10)).0, "unended tasks", 2);
    assert_eq!(c.state.tasks().iter().count(), before, "nothing changed");
    submitted(c.apply(task("ops", 10)).0);
    submitted(c.apply(task("", 10)).0);
    // An ended task makes room.
    assert!(matches!(c.apply(Command::CancelTask { task: first }).0, Response::TaskCancelled { .. }));
    // Payload bytes: 20 held, so a task of the whole bound does not fit beside them.
    refused(
        c.apply(task("ci", TASK_PAYLOAD_BYTES_MAX)).0,
        "payload bytes of unended work",
        TASK_PAYLOAD_BYTES_MAX as u64,
    );
    submitted(c.apply(task("ci", 10)).0);
    // Work items: one unended at a time.
    let item = || {
        let mut spec: qm_coordinator::state::JobSpec =
            support::job("x", [support::pass("p", Role::Implementer)]).into();
        spec.principal = "ci".into();
        Command::SubmitJob(Box::new(spec))
    };
    assert!(matches!(c.apply(item()).0, Response::JobSubmitted { .. }));
    let jobs = c.state.jobs().iter().count();
    refused(c.apply(item()).0, "unended work items", 1);
    assert_eq!(c.state.jobs().iter().count(), jobs, "nothing changed");
    c.state.check_invariants();
}
