//! The container engine on the Docker Engine of this machine: an image built here from local
//! files (a static busybox: no registry is reachable), a repository's test run in a container
//! on the workspace, the network off, a memory limit a runaway command hits, and an agent
//! whose `run_command` runs in a container.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use qm_shared::Role;
use qm_tests::git::{remote_with, scratch};
use qm_tests::image::busybox_image;
use qm_tests::model::{call, tool_results, FakeModel};
use qm_worker::executor::engine::{ContainerLimits, Engine};
use qm_worker::executor::{self, Api, ExecConfig, ExecOutcome, ExecRequest, ExecResult, Kind, Provider};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const FIXED: &str = "add() { echo $(($1 + $2)); }\n";
const TEST: &str = ". ./calc.sh\n[ \"$(add 2 3)\" = 5 ] || { echo \"add 2 3 gave $(add 2 3)\"; exit 1; }\necho ok\n";

fn config(dir: &Path, remote: &Path, memory_bytes: u64) -> ExecConfig {
    let (specs, _) = qm_worker::spec::built_in();
    ExecConfig {
        enabled: [Kind::Command, Kind::Agent].into(),
        work_root: dir.join("work"),
        repos: [("app".to_string(), remote.display().to_string())].into(),
        specs: specs.into_iter().filter_map(|s| Some((s.role?, Arc::new(s)))).collect(),
        engines: [Engine::Container].into(),
        container: ContainerLimits {
            memory_bytes,
            default_image: Some(busybox_image().to_string()),
            ..ContainerLimits::default()
        },
        ..ExecConfig::default()
    }
}

fn req(payload: Value) -> ExecRequest {
    ExecRequest {
        task: 9,
        attempt: 1,
        payload: payload.to_string().into_bytes(),
        resume: None,
        env: vec![("QM_TASK_ID".into(), "9".into())],
        timeout_ms: 60_000,
        model: "m".into(),
        provider: "p".into(),
        role: Some(Role::Implementer),
    }
}

async fn run(config: &ExecConfig, r: ExecRequest) -> ExecResult {
    let (etx, _erx) = mpsc::channel(64);
    let (_ctx, crx) = mpsc::channel(4);
    executor::run(Arc::new(config.clone()), r, etx, crx).await
}

#[tokio::test]
async fn a_repository_s_test_runs_in_a_container_on_the_workspace_with_the_network_off() {
    let s = scratch("container-test");
    let remote = remote_with(s.path(), &[("calc.sh", FIXED), ("test.sh", TEST)]);
    let config = config(s.path(), &remote, 64 << 20);
    let cmd = "sh test.sh && ls /sys/class/net && echo task=$QM_TASK_ID in $(pwd)";
    let began = Instant::now();
    let out = run(&config, req(json!({"executor": "command", "cmd": cmd, "repo": "app", "engine": "container"}))).await;
    println!("container attempt (mirror fetch, worktree, container create/start/wait/remove): {:?}", began.elapsed());
    assert_eq!(out.outcome, ExecOutcome::Succeeded, "{}", out.error);
    assert_eq!(String::from_utf8_lossy(&out.output), "ok\nlo\ntask=9 in /work\n", "only loopback: the network is off");
    // What a container costs an attempt: a command that does nothing, locally and in one.
    for engine in ["local", "container", "local", "container"] {
        let began = Instant::now();
        let out = run(&config, req(json!({"executor": "command", "cmd": "true", "engine": engine}))).await;
        assert_eq!(out.outcome, ExecOutcome::Succeeded, "{}", out.error);
        println!("`true` on the {engine} engine: {:?}", began.elapsed());
    }
}

#[tokio::test]
async fn a_runaway_command_hits_the_container_s_memory_limit_and_the_attempt_says_so() {
    let s = scratch("container-oom");
    let remote = remote_with(s.path(), &[("calc.sh", FIXED), ("test.sh", TEST)]);
    let config = config(s.path(), &remote, 16 << 20);
    let runaway = r#"a=xxxxxxxxxxxxxxxx; while :; do a="$a$a"; done"#;
    let out = run(&config, req(json!({"executor": "command", "cmd": runaway, "engine": "container"}))).await;
    assert_eq!(out.outcome, ExecOutcome::Failed);
    assert!(out.error.starts_with("killed: out of memory (the container's limit is 16777216 bytes"), "{}", out.error);
    // A worker that offers no container engine refuses the payload, naming the flag.
    let local_only = ExecConfig { engines: Default::default(), ..config.clone() };
    let out = run(&local_only, req(json!({"executor": "command", "cmd": "true", "engine": "container"}))).await;
    assert!(out.error.contains("--engine container"), "{}", out.error);
}

#[tokio::test]
async fn an_agent_s_commands_run_in_a_container_and_see_its_edits() {
    let s = scratch("container-agent");
    let remote = remote_with(s.path(), &[("calc.sh", "add() { echo $(($1 - $2)); }\n"), ("test.sh", TEST)]);
    let model = FakeModel::start(vec![
        call("run_command", json!({"command": "sh test.sh"})),
        call("edit_file", json!({"path": "calc.sh", "old_text": "$1 - $2", "new_text": "$1 + $2"})),
        call("run_command", json!({"command": "sh test.sh"})),
        call("finish", json!({"summary": "fixed"})),
    ])
    .await;
    let mut config = config(s.path(), &remote, 64 << 20);
    config.providers =
        [("p".to_string(), Provider { api: Api::Openai, base_url: model.url.clone(), api_key: None })].into();
    let payload =
        json!({"executor": "agent", "prompt": "fix", "repo": "app", "engine": "container", "branch": "qm/j1/fix"});
    let out = run(&config, req(payload)).await;
    assert_eq!(out.outcome, ExecOutcome::Succeeded, "{}", out.error);
    let results = tool_results(&model.requests()[3]);
    assert!(results[0].starts_with("failed\nstdout:\nadd 2 3 gave -1"), "{results:?}");
    assert!(results[2].starts_with("exit status 0\nstdout:\nok"), "{results:?}");
}
