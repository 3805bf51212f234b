//! One log entry carrying many commands: `State::apply_batch` must decide exactly what the
//! same commands applied one by one decide, and keep fencing tokens strictly increasing.

mod support;

use qm_coordinator::state::{Command, Effect, Response, State};
use support::{acquire, Core};

type Applied = (Response, Vec<Effect>);

/// The fencing tokens of the grants the responses in `out` answer, in order.
fn tokens(out: &[Applied]) -> Vec<u64> {
    out.iter()
        .filter_map(|(r, _)| match r {
            Response::Granted { grants } => Some(grants[0].fencing_token),
            _ => None,
        })
        .collect()
}

/// The fencing tokens of the grants the effects in `out` announce; `queued`: only those
/// of requests that had queued.
fn announced(out: &[Applied], queued: bool) -> Vec<u64> {
    out.iter()
        .flat_map(|(_, effects)| effects)
        .filter_map(|e| match e {
            Effect::Granted { grant, request } if !queued || request.is_some() => Some(grant.fencing_token),
            _ => None,
        })
        .collect()
}

/// `out` with every fencing token zeroed. A token is drawn from the log index, which the
/// commands of one entry share; the tokens are checked on their own.
fn untokened(out: &[Applied]) -> Vec<Applied> {
    let mut out = out.to_vec();
    for (r, effects) in &mut out {
        if let Response::Granted { grants } = r {
            grants.iter_mut().for_each(|g| g.fencing_token = 0);
        }
        for e in effects {
            if let Effect::Granted { grant, .. } = e {
                grant.fencing_token = 0;
            }
        }
    }
    out
}

fn strictly_increasing(tokens: &[u64]) -> bool {
    tokens.windows(2).all(|w| w[0] < w[1])
}

#[test]
fn a_batch_decides_what_the_same_commands_decide_one_by_one() {
    // Two cores on one clock that moves only between entries.
    let (mut batched, mut single) = (Core::new().clock_step(0), Core::new().clock_step(0));
    let (a, b) = (batched.open_session("t"), batched.open_session("t"));
    assert_eq!((single.open_session("t"), single.open_session("t")), (a, b));

    // Two owners on one resource (the second queues), a third resource, and a try on the
    // held one (refused, naming the holder): all in one entry.
    let cmds: Vec<Command> = vec![
        acquire(a, "x").exclusive("pg:db/table:t").into(),
        acquire(b, "y").exclusive("pg:db/table:t").into(),
        acquire(b, "z").exclusive("pg:db/table:u").into(),
        acquire(b, "w").exclusive("pg:db/table:t").try_now().into(),
    ];
    batched.now += 1_000;
    single.now += 1_000;
    let batch = batched.apply_batch(cmds.clone());
    let one_by_one: Vec<Applied> = cmds.into_iter().map(|c| single.apply(c)).collect();
    assert_eq!(batch.len(), 4);
    assert!(matches!(batch[3].0, Response::Refused(_)), "{:?}", batch[3]);
    assert_eq!(untokened(&batch), untokened(&one_by_one), "the same responses and effects");
    let token = tokens(&batch);
    assert_eq!(token.len(), 2, "{batch:?}");
    assert!(strictly_increasing(&token), "tokens strictly increase within one entry: {token:?}");
    assert_eq!(announced(&batch, false), token, "the effects announce the grants answered");
    assert!(strictly_increasing(&tokens(&one_by_one)), "{one_by_one:?}");

    // The queued request is granted by a release in the next entry, with a newer token.
    let Response::Granted { grants } = &batch[0].0 else { panic!("{:?}", batch[0]) };
    let release = Command::Release { session: a, reservation: grants[0].id };
    batched.now += 1_000;
    single.now += 1_000;
    let released = batched.apply_batch(vec![release.clone()]);
    assert_eq!(untokened(&released), untokened(&[single.apply(release)]));
    let granted = announced(&released, true);
    assert_eq!(granted.len(), 1, "{:?}", released[0]);
    assert!(granted[0] > token[1]);
    batched.state.check_invariants();
    single.state.check_invariants();
}

#[test]
#[should_panic(expected = "log index")]
fn a_batch_at_an_applied_index_is_refused() {
    let mut state = State::default();
    state.apply(1, 0, Command::Tick);
    state.apply_batch(1, 0, vec![Command::Tick]);
}
