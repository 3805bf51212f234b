//! Counted resources under a long queue: waiters held up elsewhere keep their units, but do
//! not stop a newcomer while units stand idle, however many of them there are.

use qm_coordinator::state::{Acquire, Command, Item, Policy, Response, SessionId, State, Wait};
use qm_shared::{Mode, ResourcePath};

struct Core {
    state: State,
    index: u64,
    now: u64,
}

impl Core {
    fn apply(&mut self, cmd: Command) -> Response {
        self.index += 1;
        self.now += 10;
        self.state.apply(self.index, self.now, cmd).0
    }

    fn session(&mut self) -> SessionId {
        match self.apply(Command::OpenSession { label: "t".into(), ttl_ms: 300_000 }) {
            Response::SessionOpened { session, .. } => session,
            other => panic!("open session: {other:?}"),
        }
    }

    fn acquire(&mut self, session: SessionId, owner: &str, items: &[(&str, Mode, u32)]) -> Response {
        let items = items
            .iter()
            .map(|(path, mode, units)| Item { path: ResourcePath::parse(path).unwrap(), mode: *mode, units: *units })
            .collect();
        self.apply(Command::Acquire(Acquire {
            session,
            owner: owner.into(),
            items,
            wait: Wait::Wait { timeout_ms: None },
            priority: 500,
            lease_ms: 600_000,
        }))
    }
}

#[test]
fn a_newcomer_takes_idle_units_behind_any_number_of_waiters_held_up_elsewhere() {
    let mut core = Core { state: State::default(), index: 0, now: 1_000 };
    core.apply(Command::DeclareResource {
        path: ResourcePath::parse("api:x").unwrap(),
        capacity: Some(1_000),
        policy: Policy::None,
        grace_ms: 1_000,
    });
    let s = core.session();
    assert!(matches!(core.acquire(s, "holder", &[("repo:app", Mode::Exclusive, 1)]), Response::Granted { .. }));
    // 300 sets want repo:app (held) and one unit of api:x each: they queue on both.
    for i in 0..300 {
        let r =
            core.acquire(s, &format!("blocked-{i}"), &[("repo:app", Mode::Exclusive, 1), ("api:x", Mode::Shared, 1)]);
        assert!(matches!(r, Response::Queued { .. }), "blocked-{i}: {r:?}");
    }
    // Their 300 units and a newcomer's 600 fit in 1,000: it is granted at once.
    let r = core.acquire(s, "newcomer", &[("api:x", Mode::Shared, 600)]);
    assert!(matches!(r, Response::Granted { .. }), "newcomer: {r:?}");
    // 101 more would take a unit a waiter ahead may need: it queues.
    let r = core.acquire(s, "too-many", &[("api:x", Mode::Shared, 101)]);
    assert!(matches!(r, Response::Queued { .. }), "too-many: {r:?}");
    // 99 would fit beside the holders, but not beside them and the 101 queued ahead.
    let r = core.acquire(s, "after", &[("api:x", Mode::Shared, 99)]);
    assert!(matches!(r, Response::Queued { .. }), "after: {r:?}");
    core.state.check_invariants();
}
