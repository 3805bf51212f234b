//! Preemption uses a waiter's own (or inherited) priority, never its aged one: aging orders
//! queues, and an aged waiter evicting a holder of its own priority would be evicted back.

mod support;

use qm_coordinator::state::{Command, Config, Policy, Response};
use support::{acquire, path, preempted, Core};

#[test]
fn an_aged_waiter_does_not_preempt_its_own_priority_but_a_higher_one_does() {
    let config = Config { aging_interval_ms: 1_000, aging_step: 10, ..Config::default() };
    // The clock moves only where the test moves it: a second a tick.
    let mut core = Core::with(config).clock_step(0);
    core.apply(Command::DeclareResource {
        path: path("repo:app"),
        capacity: None,
        policy: Policy::Preempt,
        grace_ms: 5_000,
    });
    let s = core.open_session("t");
    let app = |owner: &str, priority: u32| acquire(s, owner).exclusive("repo:app").priority(priority);
    assert!(matches!(core.apply(app("holder", 500)).0, Response::Granted { .. }));
    let (r, effects) = core.apply(app("same", 500));
    assert!(matches!(r, Response::Queued { .. }));
    assert!(preempted(&effects).is_empty());
    // Twenty seconds of aging take the waiter to 700 points, well past the preemption gap
    // above the holder (and still below a hotfix, which then queues ahead of it).
    for _ in 0..20 {
        core.now += 1_000;
        let (_, effects) = core.apply(Command::Tick);
        assert_eq!(preempted(&effects), Vec::<String>::new(), "an aged equal-priority waiter preempted");
        core.apply(Command::KeepAlive { session: s });
    }
    // A hotfix at 900 does.
    let (_, effects) = core.apply(app("hotfix", 900));
    assert_eq!(preempted(&effects), vec!["holder".to_string()]);
    core.state.check_invariants();
}
