//! Agents at work, as a team would run them: a real `qm coordinator` and `qm worker`
//! processes, a real git repository made by the test whose test fails, and a stand-in model
//! server that plays back the tool calls a model would make (the server is outside the
//! system; the worker's code that talks to it is the production code).

use std::path::{Path, PathBuf};
use std::time::Duration;

use qm_tests::git::{git, push_change, remote_with, show};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use qm_tests::model::{call, system_of, tool_results, turns_of, FakeModel};
use qm_tests::{eventually, Cluster};
use serde_json::{json, Value};

const CALC: &str = "add() { echo $(($1 - $2)); }\n";
const FIXED: &str = "add() { echo $(($1 + $2)); }\n";
const TEST: &str = ". ./calc.sh\n[ \"$(add 2 3)\" = 5 ] || { echo \"add 2 3 gave $(add 2 3)\"; exit 1; }\necho ok\n";

/// A project whose one provider is the stand-in model, with a model per tier and prices;
/// `repo:app` is preemptible.
fn project(url: &str) -> String {
    format!(
        r#"name = "calc"
team = "platform"
repos = ["app"]

[[resource]]
path = "repo:app"
policy = "preempt"
grace = "5s"

[[provider]]
name = "fake"
kind = "openai"
endpoint = "{url}"
concurrency = 4
models = {{ cheap = "m-cheap", standard = "m-standard", frontier = "m-frontier" }}

[price."m-cheap"]
input = "1.00"
output = "2.00"

[price."m-standard"]
input = "3.00"
output = "15.00"

[price."m-frontier"]
input = "15.00"
output = "75.00"
"#
    )
}

/// implement (an agent edits the repository and pushes qm/<item>/implement) → verify (the
/// repository's test, run in a worktree of that branch) with an agent review gate that sees
/// the diff and the test's output.
const WORKFLOW: &str = r#"name = "ticket"
description = "An agent fixes the ticket; the repository's test checks it; a reviewer judges the diff."

[[pass]]
name = "implement"
role = "implementer"
inputs = ["ticket"]
outputs = ["change"]
run = { executor = "agent", prompt = "{{input.ticket}}", repo = "app", start = "{{commit}}", branch = "qm/{{job}}/implement", max_turns = 10 }

[[pass]]
name = "verify"
role = "verifier"
after = ["implement"]
inputs = ["change"]
outputs = ["report"]
run = { executor = "command", cmd = "sh test.sh", repo = "app", start = "qm/{{job}}/implement" }

[pass.gate]
criteria = "The change fixes the ticket and the test passes."
reviewer = "agent"
review_role = "analyst"
on_fail = "stop"
run = { executor = "agent", review = true, prompt = "Criteria: {{criteria}}\n\nThe change:\n{{artifact.implement}}\n\nThe test run:\n{{output}}" }
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

/// A one-node cluster, a remote whose test fails (its `main` is the base commit), and the
/// `calc` project routed to the stand-in model at `model_url`.
fn calc_cluster(model_url: &str) -> (Cluster, PathBuf, PathBuf, String) {
    let c = Cluster::start(1, 10_000);
    let dir = c.dir.path().to_path_buf();
    let remote = remote_with(&dir, &[("calc.sh", CALC), ("test.sh", TEST)]);
    let base = git(&remote, &["rev-parse", "main"]).trim().to_string();
    let applied = c.qm_json(&["project", "apply", &write(&dir, "calc.toml", &project(model_url))]);
    assert_eq!(applied["name"], "calc");
    (c, dir, remote, base)
}

/// The flags of a worker whose agents and commands work in `remote` (as `app`) on the
/// stand-in model at `model_url` (as `fake`), then `extra`.
fn agent_flags(remote: &Path, model_url: &str, extra: &[&str]) -> Vec<String> {
    let (repo, provider) = (format!("app={}", remote.display()), format!("fake=openai:{model_url}"));
    let flags =
        ["--enable-executor", "agent", "--enable-executor", "command", "--repo", &repo, "--provider", &provider];
    flags.iter().chain(extra).map(|f| f.to_string()).collect()
}

/// Starts worker `node` with `slots` and `flags`, and waits until `workers` are registered.
async fn worker(c: &mut Cluster, node: &str, slots: &[&str], flags: &[String], workers: usize) {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    c.spawn_worker_with(node, slots, &flags, &[]);
    c.wait_workers(workers).await;
}

/// Submits the `ticket` on the workflow file `workflow` to the `calc` project, from `base`
/// when given; the work item's id.
fn submit(c: &Cluster, workflow: &str, base: Option<&str>, ticket: &str) -> String {
    let input = format!("ticket={ticket}");
    let mut args = vec!["job", "submit", "--title", "add subtracts", "--team", "platform", "--project", "calc"];
    args.extend(["--workflow", workflow, "--input", &input]);
    if let Some(base) = base {
        args.extend(["--commit", base]);
    }
    c.qm_json(&args)["id"].as_str().expect("id").to_string()
}

/// Polls `qm job show` (bounded: 90 s) until the work item has ended.
async fn ended(c: &Cluster, id: &str) -> Value {
    eventually(&format!("{id} ends"), Duration::from_secs(90), || async {
        let (code, out, err) = c.qm(&["job", "show", id]);
        if code != 0 {
            return Err(format!("qm job show exited {code}: {err}"));
        }
        let j: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        if ["succeeded", "failed", "cancelled"].contains(&j["status"].as_str().unwrap_or_default()) {
            Ok(j)
        } else {
            Err(format!("{j:#}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_end_to_end_an_agent_fixes_the_repository_the_test_passes_and_a_reviewer_sees_the_diff() {
    let model = FakeModel::start(vec![
        // The implementer reads, edits and finishes.
        call("read_file", json!({"path": "calc.sh"})),
        call("edit_file", json!({"path": "calc.sh", "old_text": "$1 - $2", "new_text": "$1 + $2"})),
        call("finish", json!({"summary": "add adds its arguments"})),
        // The reviewer judges.
        call("finish", json!({"verdict": "pass", "reasons": "the diff fixes add and the test passes"})),
    ])
    .await;
    let (mut c, dir, remote, base) = calc_cluster(&model.url);
    let flags = agent_flags(&remote, &model.url, &[]);
    worker(&mut c, "w1", &["implementer=1", "verifier=1", "analyst=1"], &flags, 1).await;
    let workflow = write(&dir, "ticket.toml", WORKFLOW);
    let id = submit(&c, &workflow, Some(&base), "add 2 3 gives -1; make sh test.sh pass");
    let j = ended(&c, &id).await;
    assert_eq!(j["status"], "succeeded", "{j:#}");

    // The branch on the remote holds the fix; main does not.
    let branch = format!("qm/{id}/implement");
    assert_eq!(show(&remote, &branch, "calc.sh").as_deref(), Some(FIXED));
    assert_eq!(show(&remote, "main", "calc.sh").as_deref(), Some(CALC));

    // The implementer got the ticket after its spec's prompt, on the routed model; the
    // reviewer's request carried the diff and the test's output.
    let reqs = model.requests();
    assert_eq!(reqs.len(), 4, "{reqs:#?}");
    assert_eq!(reqs[0]["model"], "m-standard");
    assert!(reqs[0]["messages"][0]["content"].as_str().unwrap().starts_with("You are the implementer."));
    assert_eq!(reqs[0]["messages"][1]["content"], "add 2 3 gives -1; make sh test.sh pass");
    let review = reqs[3]["messages"][1]["content"].as_str().unwrap();
    assert!(review.contains("+add() { echo $(($1 + $2)); }"), "the diff reaches the reviewer: {review}");
    assert!(review.contains("The test run:\nok"), "and the test's output: {review}");

    // The gate passed on the structured verdict.
    let verify = j["passes"].as_array().unwrap().iter().find(|p| p["name"] == "verify").unwrap();
    let gate = &verify["gate_results"][0];
    assert_eq!(
        (gate["passed"].as_bool(), gate["note"].as_str()),
        (Some(true), Some("the diff fixes add and the test passes")),
        "{verify:#}"
    );

    // The artifacts: the implementer's output names its branch and carries the diff.
    let art = c.qm_json(&["artifact", "get", &id, "implement"]);
    assert_eq!(art["content"]["branch"], branch.as_str());
    assert!(art["content"]["diff"].as_str().unwrap().contains("+add() { echo $(($1 + $2)); }"), "{art:#}");
    let listed = c.qm_json(&["artifact", "list", &id]);
    assert_eq!(listed["artifacts"].as_array().unwrap().len(), 2, "{listed:#}");
    let (code, _, err) = c.qm(&["artifact", "get", &id, "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("\"nope\" is not a pass of"), "{err}");

    // The cost report shows each attempt with its spec and model.
    let report = c.qm_json(&["cost", "report", "--by", "pass", "-o", "json"]);
    let entries = report["entries"].as_array().unwrap();
    let entry = |pass: &str| entries.iter().find(|e| e["pass"] == pass).unwrap_or_else(|| panic!("{pass}: {report:#}"));
    let implement = entry("implement");
    assert!(implement["spec"].as_str().unwrap().starts_with("implementer@"), "{implement}");
    assert_eq!(implement["model"], "m-standard");
    assert_eq!(implement["input_tokens"], 3_000, "three calls of 1,000 prompt tokens");
    assert!(entry("verify")["spec"].as_str().unwrap().starts_with("verifier@"));
    assert!(entry("verify#gate")["spec"].as_str().unwrap().starts_with("analyst@"));
    let by_pass = report["rows"].as_array().unwrap();
    let row = by_pass.iter().find(|r| r["key"] == "ticket/implement").unwrap();
    assert_eq!(row["models"], json!(["m-standard"]));
    assert_eq!(row["specs"], json!([implement["spec"]]));
    let (_, text, _) = c.qm(&["cost", "report", "--by", "pass", "-o", "table"]);
    assert!(text.contains("m-standard  implementer@"), "{text}");
    c.kill_worker("w1");
}

/// implement (holding `repo:app` exclusively, so urgent work can preempt it) → verify.
const PREEMPTIBLE: &str = r#"name = "ticket-exclusive"
description = "An agent fixes the ticket holding the repository; its test checks it."

[[pass]]
name = "implement"
role = "implementer"
inputs = ["ticket"]
outputs = ["change"]
needs = [{ path = "repo:app", mode = "exclusive" }]
run = { executor = "agent", prompt = "{{input.ticket}}", repo = "app", start = "{{commit}}", branch = "qm/{{job}}/implement", max_turns = 10 }

[[pass]]
name = "verify"
role = "verifier"
after = ["implement"]
inputs = ["change"]
outputs = ["report"]
run = { executor = "command", cmd = "sh test.sh", repo = "app", start = "qm/{{job}}/implement" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_agent_resumes_on_another_worker_from_its_checkpoint_commit_and_transcript() {
    // The implementer edits on its first turn; its second waits until the test lets it go.
    let go = Arc::new(AtomicBool::new(false));
    let gate = go.clone();
    let model = FakeModel::start_with(move |r| {
        if !system_of(r).starts_with("You are the implementer.") {
            return None;
        }
        match turns_of(r) {
            0 => Some(call("edit_file", json!({"path": "calc.sh", "old_text": "$1 - $2", "new_text": "$1 + $2"}))),
            1 => gate.load(Ordering::SeqCst).then(|| call("run_command", json!({"command": "sh test.sh"}))),
            _ => Some(call("finish", json!({"summary": "add adds"}))),
        }
    })
    .await;
    let (mut c, dir, remote, base) = calc_cluster(&model.url);
    let flags = agent_flags(&remote, &model.url, &[]);
    worker(&mut c, "w1", &["implementer=1", "verifier=1"], &flags, 1).await;
    let workflow = write(&dir, "ticket.toml", PREEMPTIBLE);
    let id = submit(&c, &workflow, Some(&base), "make sh test.sh pass");
    // The first edit is made on w1; its next turn waits on the model.
    model.until_requests(2).await;
    let job = c.qm_json(&["job", "show", &id]);
    let task = job["passes"][0]["task_id"].as_u64().expect("implement runs").to_string();

    // Urgent work on another worker wants the repository: the implementer is preempted.
    worker(&mut c, "w2", &["diagnostician=1", "implementer=1", "verifier=1"], &flags, 2).await;
    c.qm_json(&[
        "task",
        "submit",
        "--role",
        "diagnostician",
        "--resource",
        "repo:app",
        "--priority",
        "1000",
        "--scripted-ms",
        "300",
    ]);
    eventually("the implementer is preempted with a checkpoint", Duration::from_secs(60), || async {
        let t = c.qm_json(&["task", "show", &task]);
        let first = &t["attempts"][0];
        (first["outcome"] == "preempted" && t["checkpoint_seq"].as_u64() > Some(0))
            .then_some(())
            .ok_or(format!("{t:#}"))
    })
    .await;
    // w1 is gone: the pass can only resume on w2, from the checkpoint commit it pushed.
    c.kill_worker("w1");
    let wip = show(&remote, &format!("refs/qm/checkpoints/task-{task}"), "calc.sh");
    assert_eq!(wip.as_deref(), Some(FIXED), "the work-in-progress commit holds the first edit");
    go.store(true, Ordering::SeqCst);
    model.wake();
    let j = ended(&c, &id).await;
    assert_eq!(j["status"], "succeeded", "{j:#}");

    let t = c.qm_json(&["task", "show", &task]);
    let attempts = t["attempts"].as_array().unwrap();
    let last = attempts.last().unwrap();
    assert_eq!(last["outcome"], "succeeded", "{t:#}");
    assert!(last["resumed_from_seq"].as_u64() > Some(0), "resumed from a checkpoint: {t:#}");
    assert_eq!(attempts[0]["worker"], "w1", "{t:#}");
    assert_eq!(last["worker"], "w2", "{t:#}");
    // The resumed transcript goes on from the edit, and the test passes in w2's worktree.
    let reqs = model.requests();
    let finishing =
        reqs.iter().rev().find(|r| system_of(r).starts_with("You are the implementer.") && turns_of(r) == 2).unwrap();
    let results = tool_results(finishing);
    assert_eq!(results[0], "edited calc.sh");
    assert!(results[1].starts_with("exit status 0\nstdout:\nok"), "{results:?}");
    assert_eq!(show(&remote, &format!("qm/{id}/implement"), "calc.sh").as_deref(), Some(FIXED));
    let refs = git(&remote, &["for-each-ref", "--format=%(refname)", "refs/qm"]);
    assert_eq!(refs, "", "the finished task's checkpoint ref is removed");
    c.kill_worker("w2");
}

/// A stand-in for Claude Code's print mode on PATH: it fixes calc.sh in the directory it runs
/// in and prints the documented JSON result (with the prompt it was given in `result`).
const FAKE_CLAUDE: &str = r#"#!/bin/sh
[ "$1" = "-p" ] && [ "$3" = "--output-format" ] && [ "$4" = "json" ] || { echo "unexpected arguments: $*" >&2; exit 2; }
sed -i 's/\$1 - \$2/$1 + $2/' calc.sh
printf '{"type":"result","subtype":"success","is_error":false,"duration_ms":1200,"num_turns":3,"result":"fixed: %s","session_id":"s1","total_cost_usd":0.0421,"usage":{"input_tokens":1200,"cache_creation_input_tokens":0,"cache_read_input_tokens":3000,"output_tokens":250}}\n' "$2"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coding_agent_cli_does_the_pass_and_its_own_usage_and_cost_are_charged() {
    use std::os::unix::fs::PermissionsExt;
    let model = FakeModel::start(Vec::new()).await;
    let (mut c, dir, remote, _) = calc_cluster(&model.url);
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("claude"), FAKE_CLAUDE).unwrap();
    std::fs::set_permissions(bin.join("claude"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let repo = format!("app={}", remote.display());
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let flags = ["--enable-executor", "cli", "--agent-cli", "claude", "--repo", &repo];
    c.spawn_worker_with("w1", &["implementer=1"], &flags, &[("PATH", &path)]);
    c.wait_workers(1).await;
    let workflow = write(
        &dir,
        "cli.toml",
        r#"name = "cli-ticket"
description = "Claude Code does the ticket."

[[pass]]
name = "implement"
role = "implementer"
inputs = ["ticket"]
outputs = ["change"]
run = { executor = "cli", tool = "claude", prompt = "{{input.ticket}}", repo = "app", branch = "qm/{{job}}/implement" }
"#,
    );
    let id = submit(&c, &workflow, None, "make sh test.sh pass");
    let j = ended(&c, &id).await;
    assert_eq!(j["status"], "succeeded", "{j:#}");
    assert_eq!(show(&remote, &format!("qm/{id}/implement"), "calc.sh").as_deref(), Some(FIXED));
    let report = c.qm_json(&["cost", "report", "--by", "pass", "-o", "json"]);
    let e = report["entries"].as_array().unwrap().iter().find(|e| e["pass"] == "implement").unwrap().clone();
    assert_eq!(
        (&e["input_tokens"], &e["output_tokens"], &e["cached_tokens"], &e["estimated"], &e["money_micros"]),
        (&json!(1200), &json!(250), &json!(3000), &json!(false), &json!(42_100)),
        "the CLI's own usage and cost: {e}"
    );
    assert!(model.requests().is_empty(), "the CLI, not the worker, talked to its model");
    c.kill_worker("w1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ticket_runs_with_the_container_engine_and_a_rerun_on_the_same_commit_is_served_from_the_cache() {
    let image = qm_tests::image::busybox_image();
    // The implementer runs the test in its container before and after its edit.
    let model = FakeModel::start_with(|r| {
        if system_of(r).starts_with("You are the analyst.") {
            return Some(call("finish", json!({"verdict": "pass", "reasons": "fixed and tested"})));
        }
        Some(match turns_of(r) {
            0 => call("run_command", json!({"command": "sh test.sh"})),
            1 => call("edit_file", json!({"path": "calc.sh", "old_text": "$1 - $2", "new_text": "$1 + $2"})),
            2 => call("run_command", json!({"command": "sh test.sh"})),
            _ => call("finish", json!({"summary": "add adds"})),
        })
    })
    .await;
    let (mut c, dir, remote, base) = calc_cluster(&model.url);
    let container = ["--engine", "container", "--container-image", image, "--container-memory-bytes", "67108864"];
    let flags = agent_flags(&remote, &model.url, &container);
    worker(&mut c, "w1", &["implementer=1", "verifier=1", "analyst=1"], &flags, 1).await;
    let listed = c.qm_json(&["worker", "list"]);
    assert_eq!(listed["workers"][0]["engines"], json!(["local", "container"]), "{listed:#}");
    // The ticket workflow with every command in a container.
    let in_containers = WORKFLOW
        .replace(
            r#"branch = "qm/{{job}}/implement", max_turns = 10 }"#,
            r#"branch = "qm/{{job}}/implement", max_turns = 10, engine = "container" }"#,
        )
        .replace(
            r#"cmd = "sh test.sh", repo = "app", start = "qm/{{job}}/implement" }"#,
            r#"cmd = "sh test.sh", repo = "app", start = "qm/{{job}}/implement", engine = "container" }"#,
        );
    let in_containers =
        in_containers.replace("role = \"verifier\"\n", "role = \"verifier\"\nrequires = [\"container\"]\n");
    assert_eq!(in_containers.matches(r#"engine = "container""#).count(), 2);
    assert_eq!(in_containers.matches(r#"requires = ["container"]"#).count(), 1);
    let workflow = write(&dir, "ticket.toml", &in_containers);

    let ticket = || submit(&c, &workflow, Some(&base), "make sh test.sh pass");
    let first = ticket();
    let j = ended(&c, &first).await;
    assert_eq!(j["status"], "succeeded", "{j:#}");
    let reqs = model.requests();
    let before = tool_results(&reqs[2]);
    assert!(before[0].starts_with("failed\nstdout:\nadd 2 3 gave -1"), "in the container, before the edit: {before:?}");
    let after = tool_results(&reqs[3]);
    assert!(after[2].starts_with("exit status 0\nstdout:\nok"), "and after it: {after:?}");
    let review = reqs.last().unwrap()["messages"][1]["content"].as_str().unwrap().to_string();
    assert!(review.contains("The test run:\nok"), "verify ran in its container: {review}");

    // The same ticket on the same commit: every pass is served from the cache, no model called.
    let asked = model.requests().len();
    let second = ticket();
    let j = ended(&c, &second).await;
    assert_eq!(j["status"], "succeeded", "{j:#}");
    assert_eq!(model.requests().len(), asked, "nothing ran again");
    let report = c.qm_json(&["cost", "report", "--by", "work-item", "-o", "json"]);
    let n = second.trim_start_matches('j');
    let outcomes: Vec<&str> = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["work_item"] == format!("j{n}"))
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["cached", "cached"], "{report:#}");
    c.kill_worker("w1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_goes_to_the_free_local_model_of_its_tier_and_the_next_to_the_cloud_while_it_is_busy() {
    let mut c = Cluster::start(1, 10_000);
    let dir = c.dir.path().to_path_buf();
    let done = || Some(call("finish", json!({"summary": "done"})));
    let (local, cloud) = (FakeModel::start_with(move |_| done()).await, FakeModel::start_with(move |_| done()).await);
    let project = format!(
        r#"name = "routed"
team = "platform"

[[provider]]
name = "gpu-box"
kind = "openai"
endpoint = "{}"
local = true
concurrency = 1
hourly = "0.36"
models = {{ standard = "qwen-coder" }}

[[provider]]
name = "cloud"
kind = "openai"
endpoint = "{}"
concurrency = 8
models = {{ standard = "cloud-standard" }}

[price."cloud-standard"]
input = "3.00"
output = "15.00"
"#,
        local.url, cloud.url
    );
    c.qm_json(&["project", "apply", &write(&dir, "routed.toml", &project)]);
    let (to_local, to_cloud) = (format!("gpu-box=openai:{}", local.url), format!("cloud=openai:{}", cloud.url));
    let flags = ["--enable-executor", "agent", "--provider", &to_local, "--provider", &to_cloud];
    c.spawn_worker_with("w1", &["implementer=2"], &flags, &[]);
    c.wait_workers(1).await;
    // Two passes of the standard tier, side by side: dispatched together to the two slots.
    let workflow = write(
        &dir,
        "two.toml",
        r#"name = "two"
description = "Two independent passes."

[[pass]]
name = "a"
role = "implementer"
run = { executor = "agent", prompt = "do a" }

[[pass]]
name = "b"
role = "implementer"
run = { executor = "agent", prompt = "do b" }
"#,
    );
    // A complexity that is not one is refused, naming the field, and submits nothing.
    let bad = ["job", "submit", "--title", "x", "--team", "platform", "--project", "routed", "--complexity", "extreme"];
    let (code, _, err) = c.qm(&[&bad[..], &["--workflow", &workflow]].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("complexity: \"extreme\" is not one of low, normal or high"), "{err}");
    assert_eq!(c.qm_json(&["job", "list"])["jobs"].as_array().map(Vec::len), Some(0));
    let id = c.qm_json(&[
        "job",
        "submit",
        "--title",
        "two",
        "--team",
        "platform",
        "--project",
        "routed",
        "--workflow",
        &workflow,
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let j = ended(&c, &id).await;
    assert_eq!(j["status"], "succeeded", "{j:#}");
    // One went to the local model while it had its one slot; the other to the cloud.
    let (l, k) = (local.requests(), cloud.requests());
    assert_eq!((l.len(), k.len()), (1, 1), "local {l:#?} cloud {k:#?}");
    assert_eq!(l[0]["model"], "qwen-coder");
    assert_eq!(k[0]["model"], "cloud-standard");
    let report = c.qm_json(&["cost", "report", "--by", "model", "-o", "json"]);
    let mut providers: Vec<&str> =
        report["entries"].as_array().unwrap().iter().map(|e| e["provider"].as_str().unwrap()).collect();
    providers.sort();
    assert_eq!(providers, ["cloud", "gpu-box"], "{report:#}");
    c.kill_worker("w1");
}

/// A role no built-in spec has: its spec declares it, with its slots, tools and prompt.
const SECURITY_REVIEWER: &str = "---\nname: security-reviewer\ndescription: Reads a change for security holes.\n\
tools: Read, Grep\nrole: security-reviewer\nslots: 1\ntier: cheap\n---\n\nYou are the security reviewer. Read; never write.\n";

const AUDIT: &str = r#"name = "audit"
description = "A security reviewer reads the repository."

[[pass]]
name = "audit"
role = "security-reviewer"
inputs = ["ticket"]
outputs = ["findings"]
run = { executor = "agent", prompt = "{{input.ticket}}", repo = "app", start = "{{commit}}", max_turns = 5 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_declared_only_in_a_spec_runs_the_pass_of_a_workflow_that_names_it_once_a_worker_offers_it() {
    let model = FakeModel::start(vec![
        call("read_file", json!({"path": "calc.sh"})),
        call("finish", json!({"summary": "no shell injection: add only does arithmetic"})),
    ])
    .await;
    let (mut c, dir, remote, base) = calc_cluster(&model.url);
    // The workflow names a role no worker offers yet: refused at submit, naming the field,
    // and nothing is made.
    let workflow = write(&dir, "audit.toml", AUDIT);
    let args = ["job", "submit", "--title", "audit", "--team", "platform", "--project", "calc", "--workflow"];
    let mut args: Vec<&str> = args.to_vec();
    args.extend([workflow.as_str(), "--input", "ticket=audit calc.sh", "--commit", &base]);
    let (code, _, err) = c.qm(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("workflow.pass[0].role") && err.contains("no connected worker offers it"), "{err}");
    assert_eq!(c.qm_json(&["job", "list"])["jobs"], json!([]));

    // A worker whose only spec declares the role; its slots come from the spec.
    let agents = dir.join("agents");
    std::fs::create_dir_all(&agents).expect("mkdir");
    write(&agents, "security-reviewer.md", SECURITY_REVIEWER);
    let flags = agent_flags(&remote, &model.url, &["--agents", agents.to_str().unwrap()]);
    worker(&mut c, "w1", &[], &flags, 1).await;
    let listed = c.qm_json(&["worker", "list"]);
    assert_eq!(listed["workers"][0]["slots"], json!({"security-reviewer": 1}), "{listed:#}");

    let id = submit(&c, &workflow, Some(&base), "audit calc.sh");
    let j = ended(&c, &id).await;
    assert_eq!(j["status"], "succeeded", "{j:#}");
    let reqs = model.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    assert_eq!(reqs[0]["model"], "m-cheap", "the spec's tier routes the pass");
    let system = reqs[0]["messages"][0]["content"].as_str().unwrap();
    assert!(system.starts_with("You are the security reviewer."), "{system}");
    // Its tools are the spec's: reading and searching, not writing or running.
    let offered: Vec<&str> =
        reqs[0]["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap()).collect();
    assert_eq!(offered, ["read_file", "search", "finish"], "{offered:?}");
    let report = c.qm_json(&["cost", "report", "--by", "pass", "-o", "json"]);
    let entry = &report["entries"][0];
    assert!(entry["spec"].as_str().unwrap().starts_with("security-reviewer@"), "{report:#}");
    assert_eq!(entry["role"], "security-reviewer", "{entry}");
    c.kill_worker("w1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_commit_that_changed_only_what_verify_reads_replays_the_implementer_and_reruns_verify() {
    let fix = || {
        vec![
            call("read_file", json!({"path": "calc.sh"})),
            call("edit_file", json!({"path": "calc.sh", "old_text": "$1 - $2", "new_text": "$1 + $2"})),
            call("finish", json!({"summary": "add adds its arguments"})),
        ]
    };
    let model = FakeModel::start(fix()).await;
    let (mut c, dir, remote, base) = calc_cluster(&model.url);
    let flags = agent_flags(&remote, &model.url, &[]);
    worker(&mut c, "w1", &["implementer=1", "verifier=1"], &flags, 1).await;
    let workflow = write(&dir, "ticket.toml", PREEMPTIBLE);
    let first = submit(&c, &workflow, Some(&base), "add 2 3 gives -1");
    assert_eq!(ended(&c, &first).await["status"], "succeeded");
    assert_eq!(model.requests().len(), 3);

    // Upstream, only the test changes: a stricter one, which the implementer never read.
    let stricter = format!("{TEST}[ \"$(add 10 5)\" = 15 ] || exit 1\n");
    let moved = push_change(&dir, &[("test.sh", &stricter)]);
    let second = submit(&c, &workflow, Some(&moved), "add 2 3 gives -1");
    let j = ended(&c, &second).await;
    assert_eq!(j["status"], "succeeded", "{j:#}");
    assert_eq!(model.requests().len(), 3, "the implementer's model was not asked again");
    // The cached change was replayed onto the new commit: the branch has the fix and the
    // stricter test, and verify ran on it (its output is new, not reused).
    let branch = format!("qm/{second}/implement");
    assert_eq!(show(&remote, &branch, "calc.sh").as_deref(), Some(FIXED));
    assert_eq!(show(&remote, &branch, "test.sh").as_deref(), Some(stricter.as_str()));
    let pass = |name: &str| j["passes"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap().clone();
    assert_eq!(
        (pass("implement")["status"].as_str(), pass("verify")["status"].as_str()),
        (Some("passed"), Some("passed"))
    );
    let events: Vec<&str> = j["events"].as_array().unwrap().iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(events.iter().any(|e| e.starts_with("replayed a cached result")), "{events:#?}");
    assert!(j["saved_micros"].as_u64().unwrap() > 0, "{j:#}");
    let art = c.qm_json(&["artifact", "get", &second, "implement"]);
    assert_eq!(art["content"]["replayed"], true, "{art:#}");
    assert_eq!(art["content"]["reads"], json!(["calc.sh"]), "{art:#}");

    // A change to the file the implementer read: it runs again.
    model.give(fix());
    let moved = push_change(&dir, &[("calc.sh", &format!("# arithmetic\n{CALC}"))]);
    let third = submit(&c, &workflow, Some(&moved), "add 2 3 gives -1");
    assert_eq!(ended(&c, &third).await["status"], "succeeded");
    assert_eq!(model.requests().len(), 6, "the implementer's model was asked again");
    c.kill_worker("w1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_sent_back_by_its_reviewer_goes_on_from_its_own_branch_with_the_reasons() {
    let model = FakeModel::start(vec![
        // The implementer's first run fixes add, clumsily; the test passes.
        call("read_file", json!({"path": "calc.sh"})),
        call("edit_file", json!({"path": "calc.sh", "old_text": "$1 - $2", "new_text": "$1 + $2 + 0"})),
        call("finish", json!({"summary": "add adds"})),
        call("finish", json!({"verdict": "fail", "reasons": "drop the + 0"})),
        // Sent back: it reads its own change, and tidies it.
        call("read_file", json!({"path": "calc.sh"})),
        call("edit_file", json!({"path": "calc.sh", "old_text": "$1 + $2 + 0", "new_text": "$1 + $2"})),
        call("finish", json!({"summary": "add adds, plainly"})),
        call("finish", json!({"verdict": "pass", "reasons": "plain and tested"})),
    ])
    .await;
    let (mut c, _dir, remote, base) = calc_cluster(&model.url);
    let flags = agent_flags(&remote, &model.url, &[]);
    worker(&mut c, "w1", &["implementer=1", "verifier=1", "analyst=1"], &flags, 1).await;
    let args = ["job", "submit", "--title", "add", "--team", "platform", "--project", "calc", "--workflow", "ticket"];
    let mut args: Vec<&str> = args.to_vec();
    args.extend(["--input", "ticket=add 2 3 gives -1", "--input", "test=sh test.sh", "--commit", &base]);
    let id = c.qm_json(&args)["id"].as_str().expect("id").to_string();
    let j = ended(&c, &id).await;
    assert_eq!(j["status"], "succeeded", "{j:#}");
    let reqs = model.requests();
    assert_eq!(reqs.len(), 8, "{reqs:#?}");
    // The second run was told why, and started from the branch its first run pushed.
    let prompt = reqs[4]["messages"][1]["content"].as_str().unwrap();
    assert!(prompt.contains("The last review failed") && prompt.contains("drop the + 0"), "{prompt}");
    let read = tool_results(&reqs[5]);
    assert!(read.last().unwrap().contains("$(($1 + $2 + 0))"), "{read:?}");
    // The branch holds the tidy fix, and the diff is still against the work item's base.
    assert_eq!(show(&remote, &format!("qm/{id}/implement"), "calc.sh").as_deref(), Some(FIXED));
    let art = c.qm_json(&["artifact", "get", &id, "implement"]);
    assert_eq!(art["content"]["base"], base.as_str(), "{art:#}");
    assert!(art["content"]["diff"].as_str().unwrap().contains("-add() { echo $(($1 - $2)); }"), "{art:#}");
    c.kill_worker("w1");
}
