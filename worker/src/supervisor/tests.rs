use super::*;

fn a(task: u64, role: Role, priority: u32) -> Assignment {
    Assignment {
        task,
        role,
        attempt: 1,
        resources: vec![(format!("repo:r{task}"), true, 1)],
        payload: Vec::new(),
        priority,
        resume: None,
        timeout_ms: 0,
        incremental: false,
        provider: String::new(),
        model: String::new(),
    }
}

fn lease(id: u64) -> Lease {
    Lease { id, fencing_token: id }
}

/// implementer=2, verifier=1: slots 0 and 1 are implementers, 2 the verifier.
fn sup() -> Supervisor {
    let slots = BTreeMap::from([(Role::Implementer, 2), (Role::Verifier, 1)]);
    Supervisor::new(&slots, Policy::default())
}

fn to_agent(actions: &[SupAction]) -> Vec<(usize, &'static str, u64)> {
    actions
        .iter()
        .filter_map(|x| match x {
            SupAction::Agent { slot, event: Event::Assigned(a) } => Some((*slot, "assigned", a.task)),
            SupAction::Agent { slot, event: Event::Resume(a, _) } => Some((*slot, "resume", a.task)),
            SupAction::Agent { slot, event: Event::Preempt } => Some((*slot, "preempt", 0)),
            SupAction::Agent { slot, event: Event::Cancel } => Some((*slot, "cancel", 0)),
            SupAction::Agent { slot, event: Event::Abandon } => Some((*slot, "abandon", 0)),
            _ => None,
        })
        .collect()
}

#[test]
fn an_assignment_takes_an_idle_slot_of_its_role_or_waits_for_one_of_its_role() {
    let mut s = sup();
    assert_eq!(to_agent(&s.on_event(SupEvent::Assigned(a(1, Role::Implementer, 5)), 0)), [(0, "assigned", 1)]);
    assert_eq!(to_agent(&s.on_event(SupEvent::Assigned(a(2, Role::Implementer, 5)), 0)), [(1, "assigned", 2)]);
    // A resend of a task already here changes nothing.
    assert!(s.on_event(SupEvent::Assigned(a(2, Role::Implementer, 5)), 0).is_empty());
    // No idle implementer: backlogged, even though the verifier is idle.
    assert!(s.on_event(SupEvent::Assigned(a(3, Role::Implementer, 5)), 0).is_empty());
    assert!(s.waiting(3));
    let v = s.on_event(SupEvent::Assigned(a(4, Role::Verifier, 5)), 0);
    assert_eq!(to_agent(&v), [(2, "assigned", 4)]);
    // The verifier going idle never takes the implementer's backlog.
    assert!(to_agent(&s.on_event(SupEvent::Idle { slot: 2, task: 4 }, 0)).is_empty());
    assert!(s.slots()[2].idle && s.waiting(3));
    // An implementer going idle does.
    assert_eq!(to_agent(&s.on_event(SupEvent::Idle { slot: 0, task: 1 }, 0)), [(0, "assigned", 3)]);
    assert_eq!(s.slot_of(3), Some(0));
}

#[test]
fn a_late_idle_for_a_task_the_slot_no_longer_has_does_not_free_it() {
    let mut s = sup();
    s.on_event(SupEvent::Assigned(a(1, Role::Verifier, 5)), 0);
    s.on_event(SupEvent::Idle { slot: 2, task: 1 }, 0);
    s.on_event(SupEvent::Assigned(a(2, Role::Verifier, 5)), 0);
    // The agent reports idle again for task 1 before it has seen task 2.
    s.on_event(SupEvent::Idle { slot: 2, task: 1 }, 0);
    assert_eq!((s.slots()[2].idle, s.slot_of(2)), (false, Some(2)));
    assert!(s.on_event(SupEvent::Assigned(a(3, Role::Verifier, 5)), 0).is_empty(), "task 3 waits");
}

#[test]
fn a_parked_task_granted_resumes_on_the_first_idle_agent_and_takes_a_slot_back_when_there_is_none() {
    let mut s = sup();
    s.on_event(SupEvent::Assigned(a(1, Role::Implementer, 50)), 0);
    // Task 1's acquire waits: parked, its agent takes task 2 (low) and then 3 (lower).
    s.on_event(SupEvent::Parked { slot: 0, a: a(1, Role::Implementer, 50), retry: false }, 0);
    s.on_event(SupEvent::Idle { slot: 0, task: 1 }, 0);
    assert_eq!(s.parked(), 1);
    s.on_event(SupEvent::Assigned(a(2, Role::Implementer, 10)), 0);
    s.on_event(SupEvent::Assigned(a(3, Role::Implementer, 5)), 0);
    // Granted: no idle implementer, so the lowest-priority one (task 3 on slot 1) yields.
    let acts = s.on_event(SupEvent::AcquireDone { task: 1, result: Ok(vec![lease(7)]) }, 0);
    assert_eq!(to_agent(&acts), [(1, "preempt", 0)]);
    assert_eq!(s.reclaims(), 1);
    // A second grant-time pass does not ask the same agent twice.
    assert!(to_agent(&s.on_event(SupEvent::Assigned(a(4, Role::Verifier, 1)), 0)).iter().all(|x| x.0 == 2));
    // Once it stops, task 1 resumes there with its leases, before any backlog.
    s.on_event(SupEvent::Assigned(a(5, Role::Implementer, 99)), 0);
    let acts = s.on_event(SupEvent::Idle { slot: 1, task: 3 }, 0);
    assert_eq!(to_agent(&acts), [(1, "resume", 1)]);
    assert!(acts.iter().any(|x| matches!(x, SupAction::Agent { event: Event::Resume(_, l), .. } if l == &[lease(7)])));
    assert!(s.waiting(5), "the backlog waits for the next idle implementer");
}

#[test]
fn a_slot_is_never_taken_back_for_a_parked_task_of_lower_priority() {
    let mut s = sup();
    s.on_event(SupEvent::Assigned(a(1, Role::Verifier, 5)), 0);
    s.on_event(SupEvent::Parked { slot: 2, a: a(1, Role::Verifier, 5), retry: false }, 0);
    s.on_event(SupEvent::Idle { slot: 2, task: 1 }, 0);
    s.on_event(SupEvent::Assigned(a(2, Role::Verifier, 80)), 0);
    let acts = s.on_event(SupEvent::AcquireDone { task: 1, result: Ok(vec![lease(3)]) }, 0);
    assert!(to_agent(&acts).is_empty(), "{acts:?}");
    // Without the reclaim policy, never.
    let slots = BTreeMap::from([(Role::Verifier, 1)]);
    let mut s = Supervisor::new(&slots, Policy { reclaim: false, ..Policy::default() });
    s.on_event(SupEvent::Assigned(a(1, Role::Verifier, 90)), 0);
    s.on_event(SupEvent::Parked { slot: 0, a: a(1, Role::Verifier, 90), retry: false }, 0);
    s.on_event(SupEvent::Idle { slot: 0, task: 1 }, 0);
    s.on_event(SupEvent::Assigned(a(2, Role::Verifier, 1)), 0);
    assert!(to_agent(&s.on_event(SupEvent::AcquireDone { task: 1, result: Ok(vec![]) }, 0)).is_empty());
}

#[test]
fn a_deadlock_victim_parked_acquires_again_after_the_pause_unless_it_went_away() {
    let mut s = sup();
    s.on_event(SupEvent::Assigned(a(1, Role::Implementer, 5)), 0);
    let acts = s.on_event(SupEvent::Parked { slot: 0, a: a(1, Role::Implementer, 5), retry: true }, 0);
    assert_eq!(acts, [SupAction::RetryAfter { task: 1, after_ms: 200 }]);
    let acts = s.on_event(SupEvent::RetryDue(1), 200);
    assert_eq!(acts, [SupAction::Acquire { task: 1, resources: vec![("repo:r1".into(), true, 1)], priority: 5 }]);
    s.on_event(SupEvent::Cancel(1), 300);
    assert!(s.on_event(SupEvent::RetryDue(1), 400).is_empty());
}

#[test]
fn a_failed_acquire_of_a_parked_task_is_reported_by_no_agent_and_a_grant_for_nobody_is_released() {
    let mut s = sup();
    s.on_event(SupEvent::Assigned(a(1, Role::Implementer, 5)), 0);
    s.on_event(SupEvent::Parked { slot: 0, a: a(1, Role::Implementer, 5), retry: false }, 0);
    let acts = s.on_event(SupEvent::AcquireDone { task: 1, result: Err(AcquireError::Deadlock("cycle".into())) }, 0);
    let [SupAction::Forget { task: 1 }, SupAction::Report { task: 1, attempt: 1, report: Report::Result { outcome, error, .. } }] =
        &acts[..]
    else {
        panic!("{acts:?}")
    };
    assert_eq!((*outcome, error.as_str()), (Outcome::Failed, "acquiring the task's resources: deadlock victim: cycle"));
    let acts = s.on_event(SupEvent::AcquireDone { task: 9, result: Ok(vec![lease(4), lease(5)]) }, 0);
    assert_eq!(acts, [SupAction::Release(vec![4, 5])]);
    // An agent's own acquire goes to the agent.
    s.on_event(SupEvent::Assigned(a(2, Role::Verifier, 5)), 0);
    let acts = s.on_event(SupEvent::AcquireDone { task: 2, result: Err(AcquireError::Failed("no".into())) }, 0);
    assert_eq!(acts, [SupAction::Agent { slot: 2, event: Event::AcquireFailed("no".into()) }]);
}

#[test]
fn cancel_and_abandon_reach_a_task_wherever_it_waits() {
    let mut s = sup();
    // Parked: the acquire is withdrawn and the attempt reported cancelled.
    s.on_event(SupEvent::Assigned(a(1, Role::Verifier, 5)), 0);
    s.on_event(SupEvent::Parked { slot: 2, a: a(1, Role::Verifier, 5), retry: false }, 0);
    s.on_event(SupEvent::Idle { slot: 2, task: 1 }, 0);
    let acts = s.on_event(SupEvent::Cancel(1), 0);
    assert!(
        matches!(
            &acts[..],
            [SupAction::CancelAcquire { task: 1 }, SupAction::Forget { task: 1 }, SupAction::Report { task: 1, .. }]
        ),
        "{acts:?}"
    );
    // Granted and waiting for an agent: its leases are released.
    s.on_event(SupEvent::Assigned(a(2, Role::Verifier, 5)), 0);
    s.on_event(SupEvent::Parked { slot: 2, a: a(2, Role::Verifier, 5), retry: false }, 0);
    s.on_event(SupEvent::Idle { slot: 2, task: 2 }, 0);
    s.on_event(SupEvent::Assigned(a(3, Role::Verifier, 9)), 0);
    s.on_event(SupEvent::AcquireDone { task: 2, result: Ok(vec![lease(8)]) }, 0);
    let acts = s.on_event(SupEvent::Abandon(vec![2]), 0);
    assert_eq!(
        acts,
        [SupAction::Release(vec![8]), SupAction::Forget { task: 2 }],
        "abandoned: released, and no result"
    );
    // Backlogged: reported cancelled, never started.
    s.on_event(SupEvent::Assigned(a(4, Role::Verifier, 5)), 0);
    let acts = s.on_event(SupEvent::Cancel(4), 0);
    assert!(matches!(&acts[..], [SupAction::Forget { task: 4 }, SupAction::Report { task: 4, .. }]), "{acts:?}");
    assert!(to_agent(&s.on_event(SupEvent::Idle { slot: 2, task: 3 }, 0)).is_empty());
    // On an agent: the agent is told.
    s.on_event(SupEvent::Assigned(a(5, Role::Verifier, 5)), 0);
    assert_eq!(to_agent(&s.on_event(SupEvent::Cancel(5), 0)), [(2, "cancel", 0)]);
    assert_eq!(to_agent(&s.on_event(SupEvent::Abandon(vec![5]), 0)), [(2, "abandon", 0)]);
    assert_eq!(to_agent(&s.on_event(SupEvent::Preempt(5), 0)), [(2, "preempt", 0)]);
}

#[test]
fn a_stopped_agent_loses_its_task_and_restarts_with_a_doubling_backoff_until_it_stays_down() {
    let slots = BTreeMap::from([(Role::Verifier, 1)]);
    let policy = Policy { restarts_max: 3, ..Policy::default() };
    let mut s = Supervisor::new(&slots, policy);
    s.on_event(SupEvent::Assigned(a(1, Role::Verifier, 5)), 0);
    let acts = s.on_event(SupEvent::Down { slot: 0, why: "panicked".into() }, 1_000);
    assert_eq!(
        acts,
        [
            SupAction::Lost { slot: 0, task: 1, attempt: 1, why: "panicked".into() },
            SupAction::Restart { slot: 0, after_ms: 100 }
        ]
    );
    // Down: assignments wait.
    assert!(s.on_event(SupEvent::Assigned(a(2, Role::Verifier, 5)), 1_000).is_empty());
    assert_eq!(to_agent(&s.on_event(SupEvent::Up(0), 1_100)), [(0, "assigned", 2)]);
    let mut backoffs = Vec::new();
    for t in [2_000, 3_000, 4_000] {
        let acts = s.on_event(SupEvent::Down { slot: 0, why: "again".into() }, t);
        backoffs.extend(acts.iter().filter_map(|x| match x {
            SupAction::Restart { after_ms, .. } => Some(*after_ms),
            _ => None,
        }));
        s.on_event(SupEvent::Up(0), t + 500);
    }
    assert_eq!(backoffs, [200, 400], "the third restart within the window is not made");
    // Outside the window, the count starts again.
    let acts = s.on_event(SupEvent::Down { slot: 0, why: "later".into() }, 200_000);
    assert_eq!(acts, [SupAction::Restart { slot: 0, after_ms: 100 }]);
}

/// A small seeded generator, so every run explores the same sequences.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Arbitrary event sequences (valid or not) never panic, and keep the books straight: a
/// task is in at most one place; an idle slot is up and has no task; a slot with a task is
/// busy.
#[test]
fn arbitrary_events_keep_every_task_in_one_place() {
    let roles = [Role::Implementer, Role::Verifier];
    for seed in 1..200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut s = sup();
        for step in 0..300u64 {
            let task = rng.below(8);
            let slot = rng.below(4) as usize;
            let event = match rng.below(10) {
                0 | 1 => SupEvent::Assigned(a(task, roles[rng.below(2) as usize], rng.below(100) as u32)),
                2 => SupEvent::Preempt(task),
                3 => SupEvent::Cancel(task),
                4 => SupEvent::Abandon(vec![task]),
                5 => SupEvent::Parked { slot, a: a(task, roles[rng.below(2) as usize], 5), retry: rng.below(2) == 0 },
                6 => SupEvent::AcquireDone {
                    task,
                    result: if rng.below(3) == 0 {
                        Err(AcquireError::Failed("x".into()))
                    } else {
                        Ok(vec![lease(task)])
                    },
                },
                7 => SupEvent::Idle { slot, task },
                8 => SupEvent::RetryDue(task),
                _ => {
                    if rng.below(2) == 0 {
                        SupEvent::Down { slot, why: "x".into() }
                    } else {
                        SupEvent::Up(slot)
                    }
                }
            };
            s.on_event(event, step * 10);
            for t in 0..8 {
                let places = usize::from(s.parked.contains_key(&t))
                    + s.ready.iter().filter(|(a, _)| a.task == t).count()
                    + s.backlog.iter().filter(|a| a.task == t).count()
                    + s.slots.iter().filter(|x| x.task.is_some_and(|(k, _)| k == t)).count();
                assert!(places <= 1, "seed {seed} step {step}: task {t} is in {places} places: {s:?}");
            }
            for x in &s.slots {
                assert!(!x.idle || (x.up && x.task.is_none()), "seed {seed} step {step}: {x:?}");
            }
        }
    }
}
