//! Work items in the replicated core: workflows with gates, budgets at dispatch, the cost
//! ledger, the artifact cache, class priority with aging, backfill and model routing.

mod support;

use qm_coordinator::state::{
    Command, Config, Effect, JobId, JobStatus, PassStatus, Period, Response, RoleSpec, Scope, TaskReport, TaskStatus,
    Usage,
};
use qm_shared::workflow::{Capability, OnFail, Reviewer};
use qm_shared::{Mode, Role, Tier};
use support::{acquire, demo_project, job, pass, worker, Core, PassBuilder};

fn feature_passes() -> [PassBuilder; 3] {
    [
        pass("spec", Role::Specifier).gate(Reviewer::Agent, Role::Analyst, OnFail::Retry),
        pass("design", Role::Architect).after("spec").gate(
            Reviewer::Human,
            Role::Analyst,
            OnFail::SendBack("spec".into()),
        ),
        pass("generate", Role::Implementer).after("design").gate(Reviewer::Agent, Role::Verifier, OnFail::Escalate),
    ]
}

const ALL_ROLES: [(Role, u32); 5] =
    [(Role::Specifier, 1), (Role::Analyst, 1), (Role::Architect, 1), (Role::Implementer, 2), (Role::Verifier, 1)];

#[test]
fn a_workflow_runs_every_pass_through_its_gates_and_the_ledger_adds_up() {
    let mut c = Core::new().project(demo_project());
    c.worker("w1", &ALL_ROLES);
    let j = c.submit_job(job("CSV export", feature_passes()));
    // spec runs first, alone; design waits for it.
    assert_eq!(c.pass(j, "spec").status, PassStatus::Running);
    assert_eq!(c.pass(j, "design").status, PassStatus::Pending);
    let spec_task = c.pass(j, "spec").task.unwrap();
    // Routed by tier: specifier's default tier is standard → the cloud model.
    let route = c.task(spec_task).route.clone().unwrap();
    assert_eq!((route.provider.as_str(), route.model.as_str()), ("cloud", "claude-standard"));
    c.finish(spec_task, "the spec", (10_000, 2_000));
    assert_eq!(c.pass(j, "spec").status, PassStatus::Reviewing);
    let review = c.pass(j, "spec").review.unwrap();
    assert_eq!(c.task(review).spec.role, Role::Analyst);
    c.finish(review, "PASS: complete", (1_000, 100));
    assert_eq!(c.pass(j, "spec").status, PassStatus::Passed);
    // design has a human gate.
    let design = c.pass(j, "design").task.unwrap();
    c.finish(design, "the design", (5_000, 1_000));
    assert_eq!(c.pass(j, "design").status, PassStatus::AwaitingHuman);
    let r = c.decide(j, "spec", true, "x");
    assert!(matches!(r, Response::Refused(_)), "spec waits for no decision: {r:?}");
    let r = c.decide(j, "design", true, "ana");
    assert!(matches!(r, Response::GateDecided { .. }), "{r:?}");
    assert_eq!(c.pass(j, "design").status, PassStatus::Passed);
    assert_eq!(c.pass(j, "design").gates[0].reviewer, "human ana");
    c.drive(j);
    let done = c.job(j);
    assert_eq!(done.status, JobStatus::Succeeded);
    // The ledger: one entry per attempt; money from the price table; sums agree.
    let entries: Vec<_> = c.state.jobs().ledger().collect();
    assert_eq!(entries.len(), 5, "spec, spec#gate, design, generate, generate#gate");
    let spec_entry = entries.iter().find(|e| e.pass == "spec").unwrap();
    assert_eq!(spec_entry.model, "claude-standard");
    assert_eq!(spec_entry.money_micros, 10_000 * 3 + 2_000 * 15, "10k in at $3/M + 2k out at $15/M");
    assert_eq!(spec_entry.agent, "node/specifier-0");
    let sum: u64 = entries.iter().map(|e| e.money_micros).sum();
    assert_eq!(sum, c.state.jobs().total_micros());
    assert_eq!(sum, done.cost_micros);
    assert_eq!(done.passes.iter().map(|p| p.cost_micros).sum::<u64>(), sum);
}

#[test]
fn an_identical_rerun_reuses_cached_artifacts_and_a_changed_input_reruns_its_passes() {
    let mut c = Core::new().project(demo_project());
    c.worker("w1", &ALL_ROLES);
    let first = c.submit_job(job("CSV export", feature_passes()));
    c.drive(first);
    let cost = c.job(first).cost_micros;
    let again = c.submit_job(job("CSV export", feature_passes()));
    let j = c.job(again);
    assert_eq!(j.status, JobStatus::Succeeded, "every pass came from the cache");
    assert!(j.passes.iter().all(|p| p.status == PassStatus::Cached));
    assert_eq!(j.cost_micros, 0);
    assert_eq!(j.saved_micros, cost);
    assert_eq!(c.state.jobs().saved_micros(), cost);
    // A different commit: nothing is reused.
    let third = c.submit_job(job("CSV export", feature_passes()).commit("def456"));
    assert_eq!(c.pass(third, "spec").status, PassStatus::Running);
}

#[test]
fn a_failed_gate_escalates_a_tier_or_sends_back() {
    let mut c = Core::new().project(demo_project());
    c.worker("w1", &ALL_ROLES);
    let j = c.submit_job(job("x", feature_passes()));
    let t = c.pass(j, "spec").task.unwrap();
    c.finish(t, "s", (1, 1));
    c.finish(c.pass(j, "spec").review.unwrap(), "PASS", (1, 1));
    let t = c.pass(j, "design").task.unwrap();
    c.finish(t, "d", (1, 1));
    // Reject the human gate of design: on_fail send back to spec → spec and design run again.
    c.decide(j, "design", false, "ana");
    assert_eq!(c.pass(j, "spec").status, PassStatus::Running);
    assert_eq!(c.pass(j, "spec").runs, 2);
    assert_eq!(c.pass(j, "design").status, PassStatus::Pending);
    c.finish(c.pass(j, "spec").task.unwrap(), "s2", (1, 1));
    c.finish(c.pass(j, "spec").review.unwrap(), "PASS", (1, 1));
    c.finish(c.pass(j, "design").task.unwrap(), "d2", (1, 1));
    c.decide(j, "design", true, "ana");
    // generate: an agent review fails → escalated from standard to frontier.
    let g = c.pass(j, "generate");
    assert_eq!(g.tier, Tier::Standard);
    c.finish(g.task.unwrap(), "code", (1, 1));
    c.finish(c.pass(j, "generate").review.unwrap(), "FAIL: no tests", (1, 1));
    let g = c.pass(j, "generate");
    assert_eq!((g.tier, g.runs, g.gate_failures), (Tier::Frontier, 2, 1));
    let route = c.task(g.task.unwrap()).route.clone().unwrap();
    assert_eq!(route.model, "claude-frontier");
    c.drive(j);
    assert_eq!(c.job(j).status, JobStatus::Succeeded);
}

#[test]
fn a_roles_agent_spec_gives_its_passes_their_starting_tier_and_caps_their_escalation() {
    let mut c = Core::new().project(demo_project());
    // The implementer's spec: start cheap, escalate no higher than standard.
    c.join(worker("w1", &ALL_ROLES).spec_tiers(Role::Implementer, Tier::Cheap, Tier::Standard));
    let passes = [
        pass("generate", Role::Implementer).gate(Reviewer::Agent, Role::Verifier, OnFail::Escalate),
        pass("pinned", Role::Implementer).tier(Tier::Frontier).after("generate"),
        pass("check", Role::Verifier).after("generate"),
    ];
    let j = c.submit_job(job("x", passes));
    let tiers = |c: &Core| ["generate", "pinned", "check"].map(|p| c.pass(j, p).tier);
    // The spec's tier where the workflow sets none; the workflow's where it does; the
    // role's default where no spec says.
    assert_eq!(tiers(&c), [Tier::Cheap, Tier::Frontier, Tier::Standard]);
    c.finish(c.pass(j, "generate").task.unwrap(), "code", (1, 1));
    c.finish(c.pass(j, "generate").review.unwrap(), "FAIL: no tests", (1, 1));
    assert_eq!(c.pass(j, "generate").tier, Tier::Standard, "escalated one tier");
    c.finish(c.pass(j, "generate").task.unwrap(), "code", (1, 1));
    c.finish(c.pass(j, "generate").review.unwrap(), "FAIL: still no tests", (1, 1));
    let g = c.pass(j, "generate");
    assert_eq!((g.tier, g.gate_failures), (Tier::Standard, 2), "capped at the spec's max_tier");
    let events: Vec<&str> = c.job(j).events.iter().map(|e| e.message.as_str()).collect();
    assert!(
        events.iter().any(|e| e.contains("runs again at standard, the highest tier its agent spec allows")),
        "{events:?}"
    );
}

#[test]
fn a_roles_spec_escalates_after_its_count_of_failed_gates_and_wants_approval_over_its_usd_per_task() {
    let mut c = Core::new().project(demo_project());
    let patient =
        RoleSpec { start: Tier::Cheap, max: Tier::Frontier, after_failed_gates: 2, money_per_task_micros: None };
    let thrifty = RoleSpec {
        start: Tier::Standard,
        max: Tier::Standard,
        after_failed_gates: 1,
        money_per_task_micros: Some(50_000),
    };
    c.join(worker("w1", &ALL_ROLES).spec(Role::Implementer, patient).spec(Role::Architect, thrifty));
    let passes = [
        pass("generate", Role::Implementer).gate(Reviewer::Agent, Role::Verifier, OnFail::Escalate),
        pass("design", Role::Architect).after("generate"),
    ];
    let j = c.submit_job(job("x", passes));
    for (round, tier) in [(1, Tier::Cheap), (2, Tier::Standard)] {
        c.finish(c.pass(j, "generate").task.unwrap(), "code", (1, 1));
        c.finish(c.pass(j, "generate").review.unwrap(), "FAIL: not yet", (1, 1));
        assert_eq!(c.pass(j, "generate").tier, tier, "after {round} failed gates");
    }
    c.finish(c.pass(j, "generate").task.unwrap(), "code", (1, 1));
    c.finish(c.pass(j, "generate").review.unwrap(), "PASS", (1, 1));
    // The architect's spec allows $0.05 per task, under the $0.10 forecast: its pass waits for a spend approval.
    let d = c.pass(j, "design");
    assert_eq!(d.status, PassStatus::Queued, "{d:?}");
    assert!(d.wait.as_deref().is_some_and(|w| w.contains("over its agent spec's usd_per_task $0.05")), "{d:?}");
    c.decide(j, "design", true, "ana");
    assert_eq!(c.pass(j, "design").status, PassStatus::Running);
    c.state.check_invariants();
}

#[test]
fn a_running_pass_that_spends_past_its_roles_usd_per_task_is_stopped_and_says_why() {
    let mut c = Core::new().project(demo_project());
    let spec = RoleSpec {
        start: Tier::Standard,
        max: Tier::Standard,
        after_failed_gates: 1,
        money_per_task_micros: Some(150_000),
    };
    let w = c.join(worker("w1", &ALL_ROLES).spec(Role::Implementer, spec));
    let j = c.submit_job(job("x", [pass("generate", Role::Implementer)]));
    let t = c.pass(j, "generate").task.unwrap();
    assert_eq!(c.task(t).status, TaskStatus::Running, "the $0.10 forecast is under the $0.15 cap");
    let progress = |output_tokens| TaskReport::Progress {
        percent: 10,
        stage: "turn".into(),
        usage: Usage { output_tokens, ..Usage::default() },
    };
    // $0.075 so far: goes on.
    let (_, e) = c.report(w, t, 1, progress(5_000));
    assert!(!e.iter().any(|e| matches!(e, Effect::TaskCancelRequested { .. })), "{e:?}");
    // $0.30: over the cap, stopped once, and the work item says why.
    let (_, e) = c.report(w, t, 1, progress(15_000));
    assert!(e.iter().any(|e| matches!(e, Effect::TaskCancelRequested { task, .. } if *task == t)), "{e:?}");
    let said = c
        .job(j)
        .events
        .iter()
        .any(|e| e.message == "spent $0.30 so far, over its agent spec's usd_per_task $0.15: stopped");
    assert!(said, "{:?}", c.job(j).events);
    let (_, e) = c.report(w, t, 1, progress(1_000));
    assert!(!e.iter().any(|e| matches!(e, Effect::TaskCancelRequested { .. })), "asked once: {e:?}");
    c.state.check_invariants();
}

#[test]
fn an_agent_result_that_records_its_reads_is_offered_at_a_new_commit_but_never_to_a_run_sent_back() {
    let mut c = Core::new().project(demo_project());
    c.join(worker("w1", &ALL_ROLES).repo("app"));
    let passes = || {
        [
            pass("implement", Role::Implementer).run(r#"{"executor":"agent","prompt":"fix","repo":"app"}"#),
            pass("check", Role::Verifier).after("implement").gate(
                Reviewer::Human,
                Role::Analyst,
                OnFail::SendBack("implement".into()),
            ),
        ]
    };
    let payload = |c: &Core, j| -> serde_json::Value {
        serde_json::from_slice(&c.task(c.pass(j, "implement").task.unwrap()).spec.payload).unwrap()
    };
    let art = r#"{"summary":"fixed","commit":"c1","base":"b1","reads":["calc.sh"],"tree":"t1"}"#;
    let first = c.submit_job(job("a", passes()).commit("b1"));
    assert!(payload(&c, first).get("cached").is_none(), "nothing to offer yet");
    c.finish(c.pass(first, "implement").task.unwrap(), art, (1_000, 100));
    c.finish(c.pass(first, "check").task.unwrap(), "ok", (1, 1));
    c.decide(first, "check", true, "ana");

    // Another work item, same inputs, another commit: the result rides along.
    let second = c.submit_job(job("a", passes()).commit("b2"));
    assert_eq!(payload(&c, second)["cached"]["tree"], "t1");
    // The worker replays it: no cost, the first run's cost saved.
    let replayed = r#"{"summary":"fixed","commit":"c2","base":"b2","reads":["calc.sh"],"tree":"t1","replayed":true}"#;
    c.finish(c.pass(second, "implement").task.unwrap(), replayed, (0, 0));
    let p = c.pass(second, "implement");
    assert!(p.saved_micros > 0 && p.run_cost_micros == 0, "{p:?}");
    assert!(c.job(second).events.iter().any(|e| e.message.starts_with("replayed a cached result")));
    // A human sends it back: the rerun gets no cached result, whatever the key says.
    c.finish(c.pass(second, "check").task.unwrap(), "ok", (1, 1));
    c.decide(second, "check", false, "ana");
    assert_eq!(c.pass(second, "implement").runs, 2);
    assert!(payload(&c, second).get("cached").is_none(), "a run sent back is not offered the same change");
    // And a third item at yet another commit is not offered what the gate rejected.
    let third = c.submit_job(job("a", passes()).commit("b3"));
    assert!(payload(&c, third).get("cached").is_none());
    c.state.check_invariants();
}

#[test]
fn a_failed_gate_with_on_fail_stop_fails_the_work_item_and_runs_nothing_after_it() {
    let mut c = Core::new().project(demo_project());
    c.worker("w1", &ALL_ROLES);
    let passes = [
        pass("spec", Role::Specifier).gate(Reviewer::Agent, Role::Analyst, OnFail::Stop),
        pass("design", Role::Architect).after("spec"),
    ];
    let j = c.submit_job(job("x", passes));
    c.finish(c.pass(j, "spec").task.unwrap(), "s", (1, 1));
    c.finish(c.pass(j, "spec").review.unwrap(), "FAIL: the requirements are vague", (1, 1));
    let done = c.job(j);
    assert_eq!(done.status, JobStatus::Failed, "{done:?}");
    assert_eq!(c.pass(j, "spec").runs, 1, "stop does not retry");
    assert_eq!(c.pass(j, "design").status, PassStatus::Pending, "the pass after it never runs");
    assert!(c.pass(j, "design").task.is_none());
    assert!(
        done.events.iter().any(|e| e.message.contains("gate failed (on_fail stop)")),
        "the item says why it stopped: {:?}",
        done.events
    );
}

#[test]
fn a_budget_holds_a_pass_whose_forecast_would_cross_it_until_raised() {
    let mut c = Core::new().project(demo_project());
    c.worker("w1", &ALL_ROLES);
    // The default forecast of a standard pass is $0.10; the team budget is just above it.
    c.budget(Scope::Team, "platform", 120_000, Period::Month);
    let j =
        c.submit_job(job("budgeted", [pass("one", Role::Implementer), pass("two", Role::Implementer).after("one")]));
    c.finish(c.pass(j, "one").task.unwrap(), "1", (10_000, 2_000)); // $0.06
    let two = c.pass(j, "two");
    assert_eq!(two.status, PassStatus::Queued);
    let wait = two.wait.expect("a reason");
    assert!(wait.contains("team platform budget") && wait.contains("would cross the limit $0.12"), "{wait}");
    assert!(c.running.is_empty());
    c.budget(Scope::Team, "platform", 1_000_000, Period::Month);
    assert_eq!(c.pass(j, "two").status, PassStatus::Running);
    c.drive(j);
    assert_eq!(c.job(j).status, JobStatus::Succeeded);
    let b = c.state.jobs().budgets().next().unwrap();
    assert_eq!(b.spent_micros, c.state.jobs().total_micros());
}

#[test]
fn a_hotfix_goes_first_and_docs_wait_at_most_their_aging_bound() {
    let config = Config { aging_interval_ms: 100, aging_step: 10, ..Config::default() };
    let mut c = Core::with(config.clone()).project(demo_project());
    let one = |name: &str| [pass(name, Role::Documenter)];
    for i in 0..3 {
        c.submit_job(job(&format!("f{i}"), one("f")));
    }
    let docs = c.submit_job(job("docs", one("d")).class("docs", 100));
    let hotfix = c.submit_job(job("hotfix", one("h")).class("hotfix", 900));
    c.worker("w1", &[(Role::Documenter, 1)]);
    assert_eq!(c.pass(hotfix, "h").status, PassStatus::Running, "the hotfix goes first");
    // Features keep arriving; the docs item overtakes fresh ones once aged.
    let bound = config.aging_bound_ms(100);
    let submitted = c.job(docs).submitted_at;
    let mut dispatched_at = None;
    let mut stream = Vec::new();
    for i in 0..2_000 {
        if c.pass(docs, "d").status != PassStatus::Queued {
            dispatched_at = Some(c.now);
            break;
        }
        stream.push(c.submit_job(job(&format!("g{i}"), one("f"))));
        c.now += 40;
        let t = *c.running.keys().next().unwrap();
        c.finish(t, "x", (1, 1));
    }
    let dispatched_at = dispatched_at.expect("docs dispatched");
    let waited = dispatched_at - submitted;
    assert!(waited <= bound, "docs waited {waited} ms, bound {bound} ms");
    assert!(stream.len() > 10, "features kept arriving while it waited: {}", stream.len());
    // A feature (500) submitted more than (500 - 100) points of aging after the docs item never
    // goes before it.
    let overtake_ms = (500 - 100) * config.aging_interval_ms / u64::from(config.aging_step);
    for id in stream {
        let j = c.job(id);
        let ran_first = j.events.iter().any(|e| e.message.starts_with("running") && e.at < dispatched_at);
        if ran_first {
            assert!(j.submitted_at <= submitted + overtake_ms, "{id} overtook the docs item");
        }
    }
}

#[test]
fn backfill_skips_a_pass_whose_resource_is_held_for_runnable_work() {
    let mut c = Core::new().project(demo_project());
    // An outsider holds pg:staging exclusively (policy none: no preemption).
    let human = c.open_session("human");
    assert!(matches!(c.apply(acquire(human, "dba").exclusive("pg:staging").try_now()).0, Response::Granted { .. }));
    let blocked = pass("migrate", Role::Implementer).needs("pg:staging", Mode::Exclusive);
    let first = c.submit_job(job("migrate", [blocked]).class("feature", 600));
    let second = c.submit_job(job("other", [pass("code", Role::Implementer)]));
    c.worker("w1", &[(Role::Implementer, 1)]);
    assert_eq!(c.pass(second, "code").status, PassStatus::Running, "backfilled");
    let p = c.pass(first, "migrate");
    assert_eq!(p.status, PassStatus::Queued);
    assert!(p.wait.unwrap().contains("pg:staging is held"));
}

#[test]
fn a_local_provider_of_the_tier_is_preferred_when_free_and_priced_by_wall_time() {
    let mut c = Core::new().project(demo_project());
    c.join(worker("gpu-box", &[(Role::Documenter, 2)]).provider("local", "openai", true));
    // documenter's default tier is cheap; the local provider serves cheap with 1 slot.
    let a = c.submit_job(job("a", [pass("d", Role::Documenter)]).class("docs", 100));
    let b = c.submit_job(job("b", [pass("d", Role::Documenter)]).class("docs", 100));
    let ra = c.task(c.pass(a, "d").task.unwrap()).route.clone().unwrap();
    let rb = c.task(c.pass(b, "d").task.unwrap()).route.clone().unwrap();
    // Both are routed in one dispatch, before either agent acquired: the local provider's one
    // slot goes to the first, and the second goes to the cloud rather than queue behind it.
    assert_eq!((ra.provider.as_str(), ra.local), ("local", true));
    assert_eq!((rb.provider.as_str(), rb.local), ("cloud", false), "the local provider is busy");
    let task = c.pass(a, "d").task.unwrap();
    assert!(c.task(task).attempt_items().iter().any(|i| i.path.as_str() == "api:local"));
    c.finish(task, "docs", (50_000, 10_000));
    let e = c.state.jobs().ledger().find(|e| e.task == task).unwrap();
    assert_eq!(e.money_micros, 100, "$0.36/h × 1 s");
    assert_eq!(c.task(task).status, TaskStatus::Succeeded);
}

#[test]
fn at_the_at_threshold_low_priority_work_pauses_and_a_costly_dispatch_waits_for_approval() {
    let config = Config { high_cost_micros: 400_000, ..Config::default() };
    let mut c = Core::with(config).project(demo_project());
    c.worker("w1", &[(Role::Implementer, 1), (Role::Architect, 1)]);
    c.budget(Scope::Project, "demo", 2_000_000, Period::Month);
    // Spend $1.92 of $2.00 (96%, past the 95% `at` threshold): 64k in at $3/M + 115.2k out at $15/M.
    let first = c.submit_job(job("spend", [pass("p", Role::Implementer)]));
    c.finish(c.pass(first, "p").task.unwrap(), "x", (64_000, 115_200));
    assert_eq!(c.state.jobs().budgets().next().unwrap().spent_micros, 1_920_000);
    // Raise it to $3.00 (64%) so the next passes fit, then lower the thresholds to 60/64% so
    // the budget stands at `at` with room left: the rules below apply on their own.
    c.budget(Scope::Project, "demo", 3_000_000, Period::Month);
    let at = Config { high_cost_micros: 400_000, budget_approaching_pct: 60, budget_at_pct: 64, ..Config::default() };
    c.apply(Command::Configure { config: at });
    let low = c.submit_job(job("low", [pass("q", Role::Implementer)]).class("docs", 100));
    let wait = c.pass(low, "q").wait.unwrap();
    assert!(wait.contains("is at 64%") && wait.contains("low-priority work paused"), "{wait}");
    // A security fix on the frontier tier: forecast $0.50 ≥ $0.40 → it waits for an approval.
    let design = pass("design", Role::Architect).tier(Tier::Frontier);
    let urgent = c.submit_job(job("urgent", [design]).class("security", 800));
    let p = c.pass(urgent, "design");
    assert!(p.approval_wanted);
    assert!(p.wait.unwrap().contains("needs approval (qm gate approve"));
    let r = c.decide(urgent, "design", true, "cfo");
    assert!(matches!(r, Response::GateDecided { .. }), "{r:?}");
    assert_eq!(c.pass(urgent, "design").status, PassStatus::Running);
    assert_eq!(c.pass(low, "q").status, PassStatus::Queued, "low-priority work still paused");
}

#[test]
fn an_over_budget_scope_pauses_until_the_period_rolls_over() {
    let mut c = Core::new().project(demo_project());
    c.worker("w1", &[(Role::Implementer, 1)]);
    c.budget(Scope::Team, "platform", 150_000, Period::Day);
    let a = c.submit_job(job("a", [pass("p", Role::Implementer)]));
    c.finish(c.pass(a, "p").task.unwrap(), "x", (20_000, 10_000)); // $0.21 > $0.15: over
    let b = c.submit_job(job("b", [pass("q", Role::Implementer)]).class("incident", 1000));
    let wait = c.pass(b, "q").wait.unwrap();
    assert!(wait.contains("is over") && wait.contains("until it is raised or the day rolls over"), "{wait}");
    // The next UTC day: spending starts again from zero on the Tick.
    // (A day without keepalives also ended the worker's session; a fresh worker joins.)
    c.now = (c.now / 86_400_000 + 1) * 86_400_000;
    c.apply(Command::Tick);
    assert_eq!(c.state.jobs().budgets().next().unwrap().spent_micros, 0);
    c.worker("w2", &[(Role::Implementer, 1)]);
    assert_eq!(c.pass(b, "q").status, PassStatus::Running, "{:?}", c.pass(b, "q").wait);
    let events: Vec<String> = c.job(b).events.iter().map(|e| e.message.clone()).collect();
    assert!(events.iter().any(|e| e.starts_with("waits: team platform budget is over")), "{events:?}");
}

#[test]
fn money_spent_after_a_period_ends_counts_in_the_next_even_before_the_tick_rolls_it() {
    let mut c = Core::new().project(demo_project());
    c.worker("w1", &[(Role::Implementer, 1)]);
    c.budget(Scope::Team, "platform", 10_000_000, Period::Day);
    let a = c.submit_job(job("a", [pass("p", Role::Implementer)]));
    // The attempt ends just after midnight UTC; no Tick has rolled the day yet.
    c.now = (c.now / 86_400_000 + 1) * 86_400_000;
    c.finish(c.pass(a, "p").task.unwrap(), "x", (20_000, 10_000));
    let spent = c.state.jobs().ledger().map(|e| e.money_micros).sum::<u64>();
    assert_eq!(spent, 210_000, "$3/M in, $15/M out");
    c.apply(Command::Tick);
    let b = c.state.jobs().budgets().next().unwrap();
    assert_eq!(b.period_start, c.now / 86_400_000 * 86_400_000, "the new day");
    assert_eq!(b.spent_micros, spent, "spent in the new day, not dropped with the old one");
}

#[test]
fn fair_share_gives_an_idle_team_the_next_slot_over_a_busy_team_at_the_same_class() {
    let mut c = Core::new().project(demo_project());
    c.worker("w1", &[(Role::Implementer, 3)]);
    let one = || [pass("p", Role::Implementer)];
    // Team a fills every slot and queues more; team b arrives later at the same class.
    let a: Vec<JobId> = (0..6).map(|i| c.submit_job(job(&format!("a{i}"), one()).team("a"))).collect();
    let b = c.submit_job(job("b0", one()).team("b"));
    assert_eq!(c.pass(b, "p").status, PassStatus::Queued);
    // A slot frees: a runs 2 after this, b none — b's head of queue beats a's older one.
    let t = c.pass(a[0], "p").task.unwrap();
    c.finish(t, "x", (1, 1));
    assert_eq!(c.pass(b, "p").status, PassStatus::Running, "fair share");
    assert_eq!(c.pass(a[3], "p").status, PassStatus::Queued);
}

#[test]
fn a_pass_that_requires_a_gpu_goes_only_to_a_worker_with_one() {
    let mut c = Core::new().project(demo_project());
    c.worker("laptop", &[(Role::Implementer, 1)]);
    let j = c.submit_job(job("train", [pass("train", Role::Implementer).requires(Capability::Gpu)]));
    let p = c.pass(j, "train");
    assert_eq!(p.status, PassStatus::Queued);
    assert!(p.wait.unwrap().contains("with gpu"));
    let session = c.join(worker("gpu-box", &[(Role::Implementer, 1)]).gpu("L4", 24 << 30));
    let task = c.pass(j, "train").task.unwrap();
    assert_eq!(c.task(task).session, Some(session));
}

#[test]
fn a_reviewer_sees_the_output_it_reviews_and_a_later_pass_sees_the_artifacts_before_it() {
    let mut c = Core::new().project(demo_project());
    c.worker("w1", &ALL_ROLES);
    let mut spec = job(
        "fix add",
        [
            pass("implement", Role::Implementer).gate(Reviewer::Agent, Role::Verifier, OnFail::Retry),
            pass("verify", Role::Verifier).after("implement"),
            pass("document", Role::Specifier).after("verify"),
        ],
    );
    spec.0.run =
        br#"{"executor":"scripted","output":"{{pass}} at {{commit}} after [{{artifact.implement}}]"}"#.to_vec();
    spec.0.review_run = br#"{"executor":"scripted","output":"review of [{{output}}]"}"#.to_vec();
    let j = c.submit_job(spec);
    let implement = c.pass(j, "implement").task.unwrap();
    let payload = |c: &Core, t| String::from_utf8(c.task(t).spec.payload.clone()).unwrap();
    assert_eq!(
        payload(&c, implement),
        r#"{"executor":"scripted","output":"implement at abc123 after [{{artifact.implement}}]"}"#
    );
    // An agent's output: a reviewer reads it as text, diff and all.
    let out = r#"{"summary":"add adds","branch":"qm/j1/implement","diff":"-a - b\n+a + b\n"}"#;
    c.finish(implement, out, (100, 10));
    let review = c.pass(j, "implement").review.unwrap();
    assert_eq!(
        payload(&c, review),
        r#"{"executor":"scripted","output":"review of [summary:\nadd adds\nbranch:\nqm/j1/implement\ndiff:\n-a - b\n+a + b\n\n]"}"#
    );
    // A structured verdict decides the gate, and its reasons are the note.
    c.finish(review, r#"{"verdict":"fail","reasons":"no test for negatives"}"#, (10, 1));
    let p = c.pass(j, "implement");
    assert_eq!((p.gates[0].passed, p.gates[0].note.as_str()), (false, "no test for negatives"));
    let again = p.task.unwrap();
    c.finish(again, out, (100, 10));
    c.finish(c.pass(j, "implement").review.unwrap(), r#"{"verdict":"pass","reasons":"ok"}"#, (10, 1));
    assert_eq!(c.pass(j, "implement").status, PassStatus::Passed);
    // verify comes after implement; document after verify, so after implement too.
    let verify = c.pass(j, "verify").task.unwrap();
    assert!(payload(&c, verify).contains(r#"after [summary:\nadd adds"#), "{}", payload(&c, verify));
    c.finish(verify, "ok", (1, 1));
    let document = c.pass(j, "document").task.unwrap();
    assert!(payload(&c, document).contains(r#"after [summary:\nadd adds"#), "{}", payload(&c, document));
}

#[test]
fn a_work_item_s_declared_complexity_moves_every_pass_s_starting_tier() {
    let mut c = Core::new().project(demo_project());
    c.worker("w1", &ALL_ROLES);
    let tiers = |c: &mut Core, complexity| {
        let mut spec = job("t", [pass("spec", Role::Specifier), pass("gen", Role::Implementer).tier(Tier::Frontier)]);
        spec.0.complexity = complexity;
        let j = c.submit_job(spec);
        (c.pass(j, "spec").tier, c.pass(j, "gen").tier)
    };
    use qm_shared::workflow::Complexity;
    assert_eq!(tiers(&mut c, Complexity::Normal), (Tier::Standard, Tier::Frontier));
    assert_eq!(tiers(&mut c, Complexity::High), (Tier::Frontier, Tier::Frontier), "never above frontier");
    assert_eq!(tiers(&mut c, Complexity::Low), (Tier::Cheap, Tier::Standard));
}

#[test]
fn a_pass_sent_back_by_a_failed_review_sees_the_reviewer_s_reasons() {
    let mut c = Core::new().project(demo_project());
    c.worker("w1", &ALL_ROLES);
    let mut spec = job(
        "fix add",
        [
            pass("implement", Role::Implementer),
            pass("verify", Role::Verifier).after("implement").gate(
                Reviewer::Agent,
                Role::Analyst,
                OnFail::SendBack("implement".into()),
            ),
        ],
    );
    spec.0.run = br#"{"executor":"scripted","output":"{{pass}} [{{feedback}}]"}"#.to_vec();
    let j = c.submit_job(spec);
    let payload = |c: &Core, t| String::from_utf8(c.task(t).spec.payload.clone()).unwrap();
    let first = c.pass(j, "implement").task.unwrap();
    assert!(payload(&c, first).contains("implement []"), "no feedback on a first run: {}", payload(&c, first));
    c.finish(first, "done", (1, 1));
    c.finish(c.pass(j, "verify").task.unwrap(), "ok", (1, 1));
    c.finish(
        c.pass(j, "verify").review.unwrap(),
        r#"{"verdict":"fail","reasons":"no test for negative numbers"}"#,
        (1, 1),
    );
    let again = c.pass(j, "implement").task.unwrap();
    assert_ne!(again, first, "sent back");
    assert!(
        payload(&c, again)
            .contains("[The last review failed: verify's gate, by agent node/analyst-0: no test for negative numbers]"),
        "{}",
        payload(&c, again)
    );
}

#[test]
fn a_pass_that_requires_the_container_engine_goes_only_to_a_worker_that_offers_it() {
    let mut c = Core::new().project(demo_project());
    c.worker("laptop", &[(Role::Verifier, 1)]);
    let j = c.submit_job(job("verify", [pass("verify", Role::Verifier).requires(Capability::Container)]));
    let p = c.pass(j, "verify");
    assert_eq!(p.status, PassStatus::Queued);
    assert!(p.wait.unwrap().contains("with container"));
    let session = c.join(worker("ci-box", &[(Role::Verifier, 1)]).container());
    let task = c.pass(j, "verify").task.unwrap();
    assert_eq!(c.task(task).session, Some(session));
}
