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
