//! Work items as a user runs them: a real `qm coordinator` and `qm worker` processes on
//! loopback, scripted executors, and the `qm` CLI for everything else (`qm project apply`,
//! `qm job submit|show`, `qm gate approve`, `qm budget set`, `qm cost report|forecast`).

use std::time::Duration;

use qm_tests::{eventually, Cluster};
use serde_json::Value;

/// Every role's slots on one worker.
const ALL_ROLES: [&str; 9] = [
    "analyst=2",
    "architect=1",
    "specifier=1",
    "implementer=2",
    "verifier=2",
    "deployer=1",
    "monitor=1",
    "documenter=2",
    "diagnostician=1",
];

fn cluster_with_worker(slots: &[&str]) -> Cluster {
    let mut c = Cluster::start(1, 10_000);
    c.spawn_worker("w1", slots);
    let applied = c.qm_json(&["project", "apply", "--demo"]);
    assert_eq!(applied["name"], "demo");
    c
}

fn show(c: &Cluster, id: &str) -> Value {
    c.qm_json(&["job", "show", id])
}

fn pass<'a>(job: &'a Value, name: &str) -> &'a Value {
    job["passes"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no pass {name}"))
}

/// Polls `qm job show` (bounded: 60 s) until `done` holds. A `qm` that fails (a coordinator
/// restarting, not listening yet) is polled again, not a failure.
async fn wait_job(c: &Cluster, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually(&format!("{id}: {what}"), Duration::from_secs(60), || async {
        let (code, out, err) = c.qm(&["job", "show", id]);
        if code != 0 {
            return Err(format!("qm job show exited {code}: {err}"));
        }
        let j: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        if done(&j) {
            Ok(j)
        } else {
            Err(format!("{j:#}"))
        }
    })
    .await
}

fn submit(c: &Cluster, args: &[&str]) -> String {
    let mut all = vec!["job", "submit", "--team", "platform", "--project", "demo", "--scripted-ms", "300"];
    all.extend_from_slice(args);
    c.qm_json(&all)["id"].as_str().expect("id").to_string()
}

fn write(c: &Cluster, name: &str, text: &str) -> String {
    let path = c.dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feature_runs_every_pass_and_gate_and_the_cost_report_adds_up() {
    let mut c = cluster_with_worker(&ALL_ROLES);
    c.wait_workers(1).await;
    let id =
        submit(&c, &["--title", "CSV export", "--class", "feature", "--workflow", "new-feature", "--commit", "abc"]);
    // The human gate (design): the work item waits for it, says so, and an approval moves it on.
    let j = wait_job(&c, &id, "a pass awaiting a human", |j| {
        j["passes"].as_array().unwrap().iter().any(|p| p["status"] == "awaiting-human")
    })
    .await;
    let waiting = j["passes"].as_array().unwrap().iter().find(|p| p["status"] == "awaiting-human").unwrap();
    assert_eq!(waiting["gate"]["reviewer"], "human");
    let name = waiting["name"].as_str().unwrap().to_string();
    // An approver's token decides; the decision is recorded under the token's name.
    let ana = c.qm_json(&["token", "create", "--name", "ana", "--role", "approver"]);
    let (code, out, err) =
        c.qm_at_with(ana["secret"].as_str().unwrap(), &["gate", "approve", &id, &name, "--note", "looks right"]);
    assert_eq!(code, 0, "{err}");
    let ack: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ack["message"].as_str().unwrap().contains("approved"));
    let j = wait_job(&c, &id, "the end", |j| j["status"] != "running").await;
    assert_eq!(j["status"], "succeeded", "{j:#}");
    let passes = j["passes"].as_array().unwrap();
    assert_eq!(passes.len(), 7, "spec, design, IR, validation, generation, verification, integration");
    for p in passes {
        assert_eq!(p["status"], "passed", "{p:#}");
        assert!(p["cost_micros"].as_u64().unwrap() > 0, "{p:#}");
        if p["gate"]["reviewer"] == "agent" {
            assert!(p["gate_results"][0]["reviewer"].as_str().unwrap().starts_with("agent "), "{p:#}");
        }
    }
    assert_eq!(pass(&j, &name)["gate_results"][0]["reviewer"], "human ana");
    // The cost report: each pass's model, tokens, money and time; the sum is the ledger total.
    let report = c.qm_json(&["cost", "report", "--by", "pass"]);
    let rows = report["rows"].as_array().unwrap();
    for p in passes {
        let key = format!("new-feature/{}", p["name"].as_str().unwrap());
        let row = rows.iter().find(|r| r["key"] == key.as_str()).unwrap_or_else(|| panic!("no row {key}: {report:#}"));
        assert!(!row["models"].as_array().unwrap().is_empty(), "{row:#}");
        assert!(row["input_tokens"].as_u64().unwrap() > 0 && row["output_tokens"].as_u64().unwrap() > 0);
        assert!(row["money_micros"].as_u64().unwrap() > 0 && row["wall_ms"].as_u64().unwrap() > 0);
    }
    let sum: u64 = rows.iter().map(|r| r["money_micros"].as_u64().unwrap()).sum();
    assert_eq!(sum, report["ledger_total_micros"].as_u64().unwrap());
    assert_eq!(sum, j["cost_micros"].as_u64().unwrap());
    eprintln!(
        "new-feature: cost {} micro-dollars over {} ledger entries",
        sum,
        report["entries"].as_array().unwrap().len()
    );
    c.kill_worker("w1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_that_would_cross_the_team_budget_waits_until_it_is_raised() {
    let mut c = cluster_with_worker(&ALL_ROLES);
    c.wait_workers(1).await;
    let wf = write(
        &c,
        "two-step.toml",
        r#"name = "two-step"
description = "two implementer passes"
[[pass]]
name = "first"
role = "implementer"
needs = [{ path = "repo:app", mode = "shared" }]
[[pass]]
name = "second"
role = "implementer"
after = ["first"]
needs = [{ path = "repo:app", mode = "shared" }]
"#,
    );
    let forecast = c.qm_json(&["cost", "forecast", &wf]);
    let first = forecast["passes"][0]["micros"].as_u64().unwrap();
    let limit = format!("{:.6}", first as f64 * 1.2 / 1e6);
    c.qm_json(&["budget", "set", "team", "platform", &limit, "--period", "month"]);
    let id = submit(&c, &["--title", "budgeted", "--workflow", &wf]);
    let j = wait_job(&c, &id, "second waits with a reason", |j| pass(j, "second")["wait"] != "").await;
    let second = pass(&j, "second");
    assert_eq!(second["status"], "queued");
    let reason = second["wait"].as_str().unwrap();
    assert!(reason.contains("team platform budget") && reason.contains("would cross the limit"), "{reason}");
    eprintln!("second pass waits: {reason}");
    assert_eq!(pass(&j, "first")["status"], "passed");
    let budgets = c.qm_json(&["budget", "show"]);
    assert!(budgets["budgets"][0]["spent_micros"].as_u64().unwrap() > 0);
    // Raising it resumes the work.
    c.qm_json(&["budget", "set", "team", "platform", "100"]);
    let j = wait_job(&c, &id, "the end", |j| j["status"] != "running").await;
    assert_eq!(j["status"], "succeeded");
    c.kill_worker("w1");
}

/// A workflow file of one implementer pass holding repo:app exclusively for `ms`.
fn one_pass(c: &Cluster, name: &str, ms: u64) -> String {
    let text = [
        format!("name = \"{name}\""),
        "description = \"one pass\"".into(),
        "[[pass]]".into(),
        "name = \"work\"".into(),
        "role = \"implementer\"".into(),
        "needs = [ { path = \"repo:app\", mode = \"exclusive\" } ]".into(),
        format!("run = {} executor = \"scripted\", duration_ms = {ms}, steps = 10 {}", '{', '}'),
    ];
    write(c, &format!("{name}.toml"), &(text.join("\n") + "\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hotfix_goes_first_and_preempts_a_feature_that_resumes_from_its_checkpoint() {
    let mut c = cluster_with_worker(&["implementer=2", "documenter=1"]);
    c.wait_workers(1).await;
    let sched = c.qm_json(&["scheduler", "set", "--aging-interval-ms", "100", "--aging-step", "10"]);
    // A docs item (priority 100) reaches the top in (1000 - 100) / 10 steps of 100 ms.
    assert_eq!(sched["docs_aging_bound_ms"], 9_000, "{sched:#}");
    let feature = one_pass(&c, "feature-edit", 3_000);
    let hotfix = one_pass(&c, "hotfix-edit", 500);
    // A feature holds repo:app; two more queue behind it.
    let f1 = submit(&c, &["--title", "f1", "--class", "feature", "--workflow", &feature]);
    wait_job(&c, &f1, "f1 running", |j| pass(j, "work")["status"] == "running").await;
    // Let it make progress first, so that its preemption has a checkpoint to resume from.
    eventually("f1 making progress", Duration::from_secs(30), || async {
        let tasks = c.qm_json(&["task", "list"]);
        let mine = tasks["tasks"].as_array().unwrap().iter().find(|t| t["work_item"] == f1.as_str()).cloned();
        match mine {
            Some(t) if t["percent_done"].as_u64().unwrap_or(0) >= 10 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let f2 = submit(&c, &["--title", "f2", "--class", "feature", "--workflow", &feature]);
    let h = submit(&c, &["--title", "h", "--class", "hotfix", "--workflow", &hotfix]);
    let j = wait_job(&c, &h, "the hotfix ends", |j| j["status"] != "running").await;
    assert_eq!(j["status"], "succeeded");
    let f2_now = show(&c, &f2);
    assert_ne!(f2_now["status"], "succeeded", "the hotfix went first: {f2_now:#}");
    // f1 was preempted (policy preempt on repo:app) and resumes.
    let f1_done = wait_job(&c, &f1, "f1 ends", |j| j["status"] != "running").await;
    assert_eq!(f1_done["status"], "succeeded");
    let report = c.qm_json(&["cost", "report", "--by", "work-item"]);
    let preempted = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["outcome"] == "preempted" && e["work_item"] == f1.as_str());
    assert!(preempted, "f1's first attempt was preempted: {report:#}");
    wait_job(&c, &f2, "f2 ends", |j| j["status"] != "running").await;
    // How long a docs item waits under a stream of features is a property of the scheduler's
    // aging, checked against its bound in simulated time by the core's test
    // `a_hotfix_goes_first_and_docs_wait_at_most_their_aging_bound`.
    c.kill_worker("w1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_rerun_reuses_the_cached_artifacts_of_unchanged_passes() {
    let mut c = cluster_with_worker(&ALL_ROLES);
    c.wait_workers(1).await;
    let wf = write(
        &c,
        "cached.toml",
        r#"name = "cached"
description = "a pass per input"
[[pass]]
name = "outline"
role = "documenter"
inputs = ["ticket"]
outputs = ["outline.md"]
[[pass]]
name = "write"
role = "documenter"
after = ["outline"]
inputs = ["outline.md", "notes"]
outputs = ["docs.md"]
"#,
    );
    let run = async |notes: &str| {
        let id = submit(
            &c,
            &[
                "--title",
                "docs",
                "--class",
                "docs",
                "--workflow",
                &wf,
                "--commit",
                "abc123",
                "--input",
                "ticket=T-1",
                "--input",
                &format!("notes={notes}"),
            ],
        );
        wait_job(&c, &id, "the end", |j| j["status"] != "running").await
    };
    let first = run("v1").await;
    assert_eq!(first["status"], "succeeded");
    let cost = first["cost_micros"].as_u64().unwrap();
    let again = run("v1").await;
    assert_eq!(again["status"], "succeeded");
    assert!(again["passes"].as_array().unwrap().iter().all(|p| p["status"] == "cached"), "{again:#}");
    assert_eq!(again["cost_micros"], 0);
    assert_eq!(again["saved_micros"].as_u64().unwrap(), cost);
    // Notes changed: the outline is reused, the write pass runs.
    let changed = run("v2").await;
    assert_eq!(pass(&changed, "outline")["status"], "cached");
    assert_eq!(pass(&changed, "write")["status"], "passed");
    let report = c.qm_json(&["cost", "report", "--by", "work-item"]);
    let saved = report["saved_micros"].as_u64().unwrap();
    assert!(saved > cost, "the ledger shows the saving: {saved} > {cost}");
    c.kill_worker("w1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_work_items_name_the_field_and_change_nothing() {
    let c = cluster_with_worker(&["implementer=1"]);
    let bad = |args: &[&str], want: &str| {
        let mut all = vec!["job", "submit", "--team", "platform", "--project", "demo", "--title", "t"];
        all.extend_from_slice(args);
        let (code, _, err) = c.qm(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    };
    bad(&["--workflow", "nope"], "workflow");
    bad(&["--workflow", "docs", "--class", "urgent"], "class");
    bad(&["--workflow", "docs", "--priority", "1001"], "priority");
    bad(&["--workflow", "docs", "--budget", "lots"], "--budget");
    let cyclic = write(&c, "cyclic.toml", "name = \"c\"\ndescription = \"\"\n[[pass]]\nname = \"a\"\nrole = \"analyst\"\nafter = [\"b\"]\n[[pass]]\nname = \"b\"\nrole = \"analyst\"\nafter = [\"a\"]\n");
    bad(&["--workflow", &cyclic], "cycle");
    let (code, _, err) =
        c.qm(&["job", "submit", "--team", "platform", "--project", "nowhere", "--title", "t", "--workflow", "docs"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("nowhere"), "{err}");
    let listed = c.qm_json(&["job", "list"]);
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 0, "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_item_survives_a_coordinator_sigkill_and_finishes_with_its_ledger_intact() {
    let mut c = cluster_with_worker(&ALL_ROLES);
    c.wait_workers(1).await;
    c.qm_json(&["budget", "set", "team", "platform", "50"]);
    let id = submit(&c, &["--title", "survives", "--class", "feature", "--workflow", "docs"]);
    let before = wait_job(&c, &id, "write passed", |j| pass(j, "write")["status"] == "passed").await;
    let spent_before = c.qm_json(&["budget", "show"])["budgets"][0]["spent_micros"].as_u64().unwrap();
    assert!(spent_before > 0);
    // SIGKILL the only coordinator mid-workflow and start it again from its sled directory.
    c.kill(1);
    c.spawn(1, false);
    let j = wait_job(&c, &id, "the end", |j| j["status"] != "running").await;
    assert_eq!(j["status"], "succeeded", "{j:#}");
    assert_eq!(pass(&j, "write")["artifact"], pass(&before, "write")["artifact"], "the artifact survived");
    let report = c.qm_json(&["cost", "report", "--by", "pass"]);
    let sum: u64 = report["rows"].as_array().unwrap().iter().map(|r| r["money_micros"].as_u64().unwrap()).sum();
    assert_eq!(sum, j["cost_micros"].as_u64().unwrap());
    let spent = c.qm_json(&["budget", "show"])["budgets"][0]["spent_micros"].as_u64().unwrap();
    assert_eq!(spent, sum, "the budget was charged for every attempt, before and after the restart");
    c.kill_worker("w1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_over_its_timeout_is_stopped_retried_and_fails_the_work_item() {
    let mut c = cluster_with_worker(&ALL_ROLES);
    c.wait_workers(1).await;
    // One attempt may run 300 ms; the scripted agent would take a minute.
    let wf = write(
        &c,
        "slow.toml",
        "name = \"slow\"\ndescription = \"a pass over its time limit\"\n[[pass]]\nname = \"work\"\n\
         role = \"implementer\"\ntimeout = \"300ms\"\nretries = 1\n\
         run = { executor = \"scripted\", duration_ms = 60000, steps = 10 }\n",
    );
    let id = submit(&c, &["--title", "too slow", "--workflow", &wf]);
    let j = wait_job(&c, &id, "the item ends", |j| j["status"] != "running").await;
    assert_eq!(j["status"], "failed", "{j:#}");
    let work = pass(&j, "work");
    assert_eq!(work["status"], "failed", "{work:#}");
    let events: Vec<&str> = j["events"].as_array().unwrap().iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(events.iter().any(|m| m.contains("(attempt 2,")), "the one retry ran: {events:#?}");
    assert!(!events.iter().any(|m| m.contains("(attempt 3,")), "and no more: {events:#?}");
    assert!(events.iter().any(|m| m.contains("no result within 300 ms")), "the item says why: {events:#?}");
    c.kill_worker("w1");
}
