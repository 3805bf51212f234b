//! Preemption is by priority, never by age: aging orders a queue so nothing starves, but a
//! waiter that merely waited long must not evict a holder of its own priority (found by the
//! simulator: equal-priority hotfixes evicted each other in turn on `repo:app`).

use qm_coordinator::state::{Acquire, Command, Config, Effect, Item, Policy, Response, State, Wait};
use qm_shared::{Mode, ResourcePath};

fn open(s: &mut State, i: &mut u64, label: &str) -> qm_coordinator::state::SessionId {
    *i += 1;
    match s.apply(*i, 0, Command::OpenSession { label: label.into(), ttl_ms: 300_000 }).0 {
        Response::SessionOpened { session, .. } => session,
        r => panic!("{r:?}"),
    }
}

fn acquire(session: qm_coordinator::state::SessionId, owner: &str, priority: u32) -> Command {
    Command::Acquire(Acquire {
        session,
        owner: owner.into(),
        items: vec![Item { path: ResourcePath::parse("repo:app").unwrap(), mode: Mode::Exclusive, units: 1 }],
        wait: Wait::Wait { timeout_ms: None },
        priority,
        lease_ms: 3_600_000,
    })
}

fn preempted_after_waiting(holder: u32, waiter: u32) -> bool {
    let config = Config { aging_interval_ms: 1_000, aging_step: 10, ..Config::default() };
    let mut s = State::new(config);
    let mut i = 0;
    i += 1;
    let path = ResourcePath::parse("repo:app").unwrap();
    s.apply(i, 0, Command::DeclareResource { path, capacity: None, policy: Policy::Preempt, grace_ms: 5_000 });
    let (a, b) = (open(&mut s, &mut i, "a"), open(&mut s, &mut i, "b"));
    i += 1;
    assert!(matches!(s.apply(i, 0, acquire(a, "holder", holder)).0, Response::Granted { .. }));
    i += 1;
    let (r, mut effects) = s.apply(i, 0, acquire(b, "waiter", waiter));
    assert!(matches!(r, Response::Queued { .. }), "{r:?}");
    // Two minutes of ticks: aging lifts the waiter by 1,200 points, to the top.
    for t in 1..=120u64 {
        i += 1;
        effects.extend(s.apply(i, t * 1_000, Command::Tick).1);
    }
    effects.iter().any(|e| matches!(e, Effect::PreemptRequested { .. }))
}

#[test]
fn an_aged_waiter_does_not_preempt_a_holder_of_its_own_priority() {
    assert!(!preempted_after_waiting(900, 900));
    assert!(!preempted_after_waiting(500, 590), "aged past the gap, still below it by priority");
}

#[test]
fn a_waiter_far_enough_above_preempts() {
    assert!(preempted_after_waiting(500, 900));
    assert!(preempted_after_waiting(500, 600), "exactly the gap");
}
