//! The agent executor as a worker runs it: a real git repository, a worktree per attempt,
//! tool calls played back by a stand-in model server, commands in the worker's confinement,
//! the spec's tools enforced, and a checkpoint that resumes on another worker's mirror.

use std::path::Path;
use std::sync::Arc;

use qm_shared::Role;
use qm_tests::git::{remote_with, scratch, show};
use qm_tests::model::{call, calls, tool_results, FakeModel};
use qm_worker::executor::{self, Api, Control, ExecConfig, ExecOutcome, ExecRequest, ExecResult, Kind, Provider};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// A repository whose test fails: `add` subtracts.
const CALC: &str = "add() { echo $(($1 - $2)); }\n";
const TEST: &str = ". ./calc.sh\n[ \"$(add 2 3)\" = 5 ] || { echo \"add 2 3 gave $(add 2 3)\"; exit 1; }\necho ok\n";

/// A worker's configuration: `agent` and `command` on, the repository `app`, the shipped
/// specs (or `specs`), the fake model as provider `p`, its work root `work`.
fn config(dir: &Path, work: &str, remote: &Path, model: &FakeModel, specs: Option<&Path>) -> ExecConfig {
    let (specs, errors) = match specs {
        Some(d) => qm_worker::spec::load_dir(d),
        None => qm_worker::spec::built_in(),
    };
    assert!(errors.is_empty(), "{errors:?}");
    ExecConfig {
        enabled: [Kind::Agent, Kind::Command].into(),
        work_root: dir.join(work),
        pass_env: ExecConfig::pass_env_from_process(["PATH"]),
        providers: [("p".to_string(), Provider { api: Api::Openai, base_url: model.url.clone(), api_key: None })]
            .into(),
        repos: [("app".to_string(), remote.display().to_string())].into(),
        specs: specs.into_iter().filter_map(|s| Some((s.role?, Arc::new(s)))).collect(),
        ..ExecConfig::default()
    }
}

fn req(role: Role, payload: Value, resume: Option<Vec<u8>>) -> ExecRequest {
    ExecRequest {
        task: 7,
        attempt: 1,
        payload: payload.to_string().into_bytes(),
        resume,
        env: Vec::new(),
        timeout_ms: 0,
        model: "routed-model".into(),
        provider: "p".into(),
        role: Some(role),
    }
}

fn implement() -> Value {
    json!({"executor": "agent", "prompt": "make sh test.sh pass", "repo": "app", "branch": "qm/j1/implement"})
}

async fn run(config: &ExecConfig, r: ExecRequest) -> ExecResult {
    let (etx, _erx) = mpsc::channel(64);
    let (_ctx, crx) = mpsc::channel(4);
    executor::run(Arc::new(config.clone()), r, etx, crx).await
}

fn fix() -> Value {
    call("edit_file", json!({"path": "calc.sh", "old_text": "$1 - $2", "new_text": "$1 + $2"}))
}

#[tokio::test]
async fn an_implementer_edits_runs_the_test_and_pushes_its_branch() {
    let s = scratch("agent-ticket");
    let remote = remote_with(s.path(), &[("calc.sh", CALC), ("test.sh", TEST)]);
    let model = FakeModel::start(vec![
        call("read_file", json!({"path": "calc.sh"})),
        fix(),
        call("run_command", json!({"command": "sh test.sh"})),
        call("finish", json!({"summary": "add adds now"})),
    ])
    .await;
    let config = config(s.path(), "w1", &remote, &model, None);
    let out = run(&config, req(Role::Implementer, implement(), None)).await;
    assert_eq!(out.outcome, ExecOutcome::Succeeded, "{}", out.error);
    let v: Value = serde_json::from_slice(&out.output).unwrap();
    println!("workspace setup (mirror made and fetched, worktree added): {} ms", v["setup_ms"]);
    assert_eq!(v["branch"], "qm/j1/implement");
    assert_eq!(v["spec"], "implementer");
    assert_eq!(v["summary"], "add adds now");
    assert!(v["diff"].as_str().unwrap().contains("+add() { echo $(($1 + $2)); }"), "{v}");
    assert_eq!(show(&remote, "qm/j1/implement", "calc.sh").unwrap(), "add() { echo $(($1 + $2)); }\n");
    assert_eq!(show(&remote, "main", "calc.sh").unwrap(), CALC, "main is untouched");
    let reqs = model.requests();
    assert_eq!(reqs.len(), 4);
    assert!(reqs.iter().all(|r| r["model"] == "routed-model"));
    assert_eq!(tool_results(&reqs[1])[0], CALC, "the model read the file");
    let ran = &tool_results(&reqs[3])[2];
    assert!(ran.starts_with("exit status 0\nstdout:\nok"), "{ran}");
    let system = reqs[0]["messages"][0]["content"].as_str().unwrap();
    assert!(system.starts_with("You are the implementer."), "the spec's body is the system prompt: {system}");
    assert_eq!((out.usage.input_tokens, out.usage.output_tokens), (4_000, 200));
    // The worktree is gone; the mirror stays, to be fetched next time.
    assert!(!config.work_root.join("task-7-attempt-1").exists());
    assert!(config.work_root.join("mirrors/app.git/HEAD").exists());
}

#[tokio::test]
async fn a_tool_the_spec_does_not_allow_is_refused_recorded_and_the_attempt_goes_on() {
    let s = scratch("agent-refused");
    let remote = remote_with(s.path(), &[("calc.sh", CALC), ("test.sh", TEST)]);
    let specs = s.path().join("agents");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::write(
        specs.join("reader.md"),
        "---\nname: reader\ndescription: reads\ntools: Read, Grep\nrole: analyst\ntier: cheap\n---\nYou only read.\n",
    )
    .unwrap();
    let model = FakeModel::start(vec![
        calls(&[
            ("run_command", json!({"command": "touch pwned"})),
            ("write_file", json!({"path": "x", "content": "y"})),
        ]),
        call("finish", json!({"summary": "could not run it"})),
    ])
    .await;
    let config = config(s.path(), "w1", &remote, &model, Some(&specs));
    let payload = json!({"executor": "agent", "prompt": "look", "repo": "app", "branch": "qm/j1/look"});
    let out = run(&config, req(Role::Analyst, payload, None)).await;
    assert_eq!(out.outcome, ExecOutcome::Succeeded, "{}", out.error);
    let v: Value = serde_json::from_slice(&out.output).unwrap();
    assert_eq!(
        v["refused"],
        json!([
            "run_command: refused: the agent's spec does not allow `Bash`",
            "write_file: refused: the agent's spec does not allow `Write`"
        ])
    );
    let answers = tool_results(&model.requests()[1]);
    assert!(answers[0].starts_with("error: run_command: refused"), "{answers:?}");
    // Not offered either, and nothing changed on the branch.
    let first = &model.requests()[0];
    let offered: Vec<&str> =
        first["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap()).collect();
    assert_eq!(offered, ["read_file", "search", "finish"]);
    assert_eq!(show(&remote, "qm/j1/look", "calc.sh").unwrap(), CALC);
    assert_eq!(show(&remote, "qm/j1/look", "pwned"), None);

    // A revision git could read as an option is refused before git or the model is called.
    let written = s.path().join("written-by-git");
    let payload = json!({"executor": "agent", "prompt": "look", "repo": "app", "base": format!("--output={}", written.display())});
    let asked = model.requests().len();
    let out = run(&config, req(Role::Analyst, payload, None)).await;
    assert_eq!(out.outcome, ExecOutcome::Failed);
    assert!(out.error.starts_with("payload.base: \"--output="), "{}", out.error);
    assert!(!written.exists());
    assert_eq!(model.requests().len(), asked);
}

#[tokio::test]
async fn a_preempted_agent_resumes_on_another_worker_from_its_commit_and_transcript() {
    let s = scratch("agent-resume");
    let remote = remote_with(s.path(), &[("calc.sh", CALC), ("test.sh", TEST)]);
    let model = FakeModel::start(vec![fix()]).await;
    let first = config(s.path(), "w1", &remote, &model, None);
    let (etx, mut erx) = mpsc::channel(64);
    let (ctx, crx) = mpsc::channel(4);
    let running =
        tokio::spawn(executor::run(Arc::new(first.clone()), req(Role::Implementer, implement(), None), etx, crx));
    // The edit is made; the second turn waits on the model: preempt it there.
    model.until_requests(2).await;
    ctx.send(Control::Stop).await.unwrap();
    let out = running.await.unwrap();
    assert_eq!(out.outcome, ExecOutcome::Stopped);
    let mut checkpoint = None;
    while let Ok(ev) = erx.try_recv() {
        if let executor::ExecEvent::Checkpoint(data) = ev {
            checkpoint = Some(data);
        }
    }
    let checkpoint = checkpoint.expect("a checkpoint before the stop");
    assert!(show(&remote, "refs/qm/checkpoints/task-7", "calc.sh").unwrap().contains("$1 + $2"), "the WIP commit");
    // Another worker (its own work root and mirror) resumes it.
    model.give(vec![call("run_command", json!({"command": "sh test.sh"})), call("finish", json!({"summary": "done"}))]);
    let second = config(s.path(), "w2", &remote, &model, None);
    let mut r = req(Role::Implementer, implement(), Some(checkpoint));
    r.attempt = 2;
    let out = run(&second, r).await;
    assert_eq!(out.outcome, ExecOutcome::Succeeded, "{}", out.error);
    let reqs = model.requests();
    let resumed = &reqs[reqs.len() - 2];
    assert_eq!(tool_results(resumed), ["edited calc.sh"], "the transcript continues");
    let ran = &tool_results(reqs.last().unwrap())[1];
    assert!(ran.starts_with("exit status 0"), "the first edit is there on the second worker: {ran}");
    assert_eq!(show(&remote, "qm/j1/implement", "calc.sh").unwrap(), "add() { echo $(($1 + $2)); }\n");
    let v: Value = serde_json::from_slice(&out.output).unwrap();
    assert!(v["diff"].as_str().unwrap().contains("+add() { echo $(($1 + $2)); }"), "diffed from the base: {v}");
}
