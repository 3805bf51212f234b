//! Counted resources under a long queue: waiters held up elsewhere keep their units, but do
//! not stop a newcomer while units stand idle, however many of them there are.

mod support;

use qm_coordinator::state::{Command, Policy, Response};
use support::{acquire, path, Core};

#[test]
fn a_newcomer_takes_idle_units_behind_any_number_of_waiters_held_up_elsewhere() {
    let mut core = Core::new();
    core.apply(Command::DeclareResource {
        path: path("api:x"),
        capacity: Some(1_000),
        policy: Policy::None,
        grace_ms: 1_000,
    });
    let s = core.open_session("t");
    assert!(matches!(core.apply(acquire(s, "holder").exclusive("repo:app")).0, Response::Granted { .. }));
    // 300 sets want repo:app (held) and one unit of api:x each: they queue on both.
    for i in 0..300 {
        let (r, _) = core.apply(acquire(s, &format!("blocked-{i}")).exclusive("repo:app").shared("api:x", 1));
        assert!(matches!(r, Response::Queued { .. }), "blocked-{i}: {r:?}");
    }
    // Their 300 units and a newcomer's 600 fit in 1,000: it is granted at once.
    let (r, _) = core.apply(acquire(s, "newcomer").shared("api:x", 600));
    assert!(matches!(r, Response::Granted { .. }), "newcomer: {r:?}");
    // 101 more would take a unit a waiter ahead may need: it queues.
    let (r, _) = core.apply(acquire(s, "too-many").shared("api:x", 101));
    assert!(matches!(r, Response::Queued { .. }), "too-many: {r:?}");
    // 99 would fit beside the holders, but not beside them and the 101 queued ahead.
    let (r, _) = core.apply(acquire(s, "after").shared("api:x", 99));
    assert!(matches!(r, Response::Queued { .. }), "after: {r:?}");
    core.state.check_invariants();
}

#[test]
fn reservations_freed_because_their_session_ended_are_counted() {
    use qm_coordinator::state::Command;
    let mut core = Core::new();
    let closed = core.open_session("closed");
    let lapsed = core.open_session("lapsed");
    for (s, owner, p) in [(closed, "a", "pg:a"), (closed, "b", "pg:b"), (lapsed, "c", "pg:c")] {
        assert!(matches!(core.apply(acquire(s, owner).exclusive(p)).0, Response::Granted { .. }));
    }
    let (_, _) = core.apply(acquire(closed, "d").exclusive("pg:c"));
    core.apply(Command::CloseSession { session: closed });
    assert_eq!(core.state.stats().session_releases_total, 2, "the queued request is cancelled, not counted");
    // The other session lapses: its lease goes the same way.
    let mut core = core.clock_step(support::TTL_MS + 1);
    core.apply(Command::Tick);
    let stats = core.state.stats();
    assert_eq!((stats.session_releases_total, stats.releases_total), (3, 0), "{stats:?}");
    core.state.check_invariants();
}
