//! Preemption uses a waiter's own (or inherited) priority, never its aged one: aging orders
//! queues, and an aged waiter evicting a holder of its own priority would be evicted back.

use qm_coordinator::state::{Acquire, Command, Config, Effect, Item, Policy, Response, SessionId, State, Wait};
use qm_shared::{Mode, ResourcePath};

struct Core {
    state: State,
    index: u64,
    now: u64,
}

impl Core {
    fn apply(&mut self, cmd: Command) -> (Response, Vec<Effect>) {
        self.index += 1;
        self.state.apply(self.index, self.now, cmd)
    }

    fn session(&mut self) -> SessionId {
        match self.apply(Command::OpenSession { label: "t".into(), ttl_ms: 300_000 }).0 {
            Response::SessionOpened { session, .. } => session,
            other => panic!("open session: {other:?}"),
        }
    }

    fn acquire(&mut self, session: SessionId, owner: &str, priority: u32) -> (Response, Vec<Effect>) {
        self.apply(Command::Acquire(Acquire {
            session,
            owner: owner.into(),
            items: vec![Item { path: ResourcePath::parse("repo:app").unwrap(), mode: Mode::Exclusive, units: 1 }],
            wait: Wait::Wait { timeout_ms: None },
            priority,
            lease_ms: 600_000,
        }))
    }
}

fn preempted(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::PreemptRequested { owner, .. } => Some(owner.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_aged_waiter_does_not_preempt_its_own_priority_but_a_higher_one_does() {
    let config = Config { aging_interval_ms: 1_000, aging_step: 10, ..Config::default() };
    let mut core = Core { state: State::new(config), index: 0, now: 1_000 };
    core.apply(Command::DeclareResource {
        path: ResourcePath::parse("repo:app").unwrap(),
        capacity: None,
        policy: Policy::Preempt,
        grace_ms: 5_000,
    });
    let s = core.session();
    assert!(matches!(core.acquire(s, "holder", 500).0, Response::Granted { .. }));
    let (r, effects) = core.acquire(s, "same", 500);
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
    let (_, effects) = core.acquire(s, "hotfix", 900);
    assert_eq!(preempted(&effects), vec!["holder".to_string()]);
    core.state.check_invariants();
}
