//! One log entry carrying many commands: `State::apply_batch` must decide exactly what the
//! same commands applied one by one decide, and keep fencing tokens strictly increasing.

use qm_coordinator::state::{Acquire, Command, Item, Response, State, Wait};
use qm_shared::{Mode, ResourcePath};

fn acquire(session: qm_coordinator::state::SessionId, owner: &str, path: &str) -> Command {
    Command::Acquire(Acquire {
        session,
        owner: owner.to_string(),
        items: vec![Item { path: ResourcePath::parse(path).unwrap(), mode: Mode::Exclusive, units: 1 }],
        wait: Wait::Wait { timeout_ms: None },
        priority: 500,
        lease_ms: 60_000,
    })
}

fn open(state: &mut State, index: u64) -> qm_coordinator::state::SessionId {
    match state.apply(index, 1_000, Command::OpenSession { label: "t".into(), ttl_ms: 60_000 }).0 {
        Response::SessionOpened { session, .. } => session,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_batch_decides_what_the_same_commands_decide_one_by_one() {
    let mut batched = State::default();
    let mut single = State::default();
    let (a, b) = (open(&mut batched, 1), open(&mut batched, 2));
    assert_eq!((open(&mut single, 1), open(&mut single, 2)), (a, b));

    // Two owners on one resource (the second queues), a third resource, and a release of the
    // first grant: all in one entry.
    let cmds =
        vec![acquire(a, "x", "pg:db/table:t"), acquire(b, "y", "pg:db/table:t"), acquire(b, "z", "pg:db/table:u")];
    let batch = batched.apply_batch(3, 2_000, cmds.clone());
    let one_by_one: Vec<_> = cmds.into_iter().zip(3..).map(|(c, i)| single.apply(i, 2_000, c)).collect();
    assert_eq!(batch.len(), 3);
    for ((rb, _), (rs, _)) in batch.iter().zip(&one_by_one) {
        assert_eq!(std::mem::discriminant(rb), std::mem::discriminant(rs), "{rb:?} vs {rs:?}");
    }
    let tokens: Vec<u64> = batch
        .iter()
        .filter_map(|(r, _)| match r {
            Response::Granted { grants } => Some(grants[0].fencing_token),
            _ => None,
        })
        .collect();
    assert_eq!(tokens.len(), 2, "{batch:?}");
    assert!(tokens[0] < tokens[1], "tokens strictly increase within one entry: {tokens:?}");

    // The queued request is granted by a release in the next entry, with a newer token.
    let Response::Granted { grants } = &batch[0].0 else { panic!() };
    let released = batched.apply_batch(4, 3_000, vec![Command::Release { session: a, reservation: grants[0].id }]);
    let granted: Vec<u64> = released[0]
        .1
        .iter()
        .filter_map(|e| match e {
            qm_coordinator::state::Effect::Granted { grant, request: Some(_) } => Some(grant.fencing_token),
            _ => None,
        })
        .collect();
    assert_eq!(granted.len(), 1, "{:?}", released[0]);
    assert!(granted[0] > tokens[1]);
}

#[test]
#[should_panic(expected = "log index")]
fn a_batch_at_an_applied_index_is_refused() {
    let mut state = State::default();
    state.apply(1, 0, Command::Tick);
    state.apply_batch(1, 0, vec![Command::Tick]);
}
