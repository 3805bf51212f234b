//! The executors as a worker runs them, with real child processes: what a task payload may
//! and may not do, the environment a child sees, process groups on stop and timeout,
//! resource limits, output caps, shell quoting, and what a provider's error may quote.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use qm_shared::shell::shell_quote;
use qm_worker::executor::{
    self, Api, Control, ExecConfig, ExecEvent, ExecOutcome, ExecRequest, ExecResult, Kind, Limits, Provider, Secret,
};
use tokio::sync::mpsc;

/// A directory of one test's own, removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("qm-executor-test-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config with `command` enabled and a work root in `dir`.
fn config(dir: &Scratch) -> ExecConfig {
    ExecConfig {
        enabled: [Kind::Command].into(),
        work_root: dir.join("work"),
        pass_env: ExecConfig::pass_env_from_process(["PATH"]),
        ..ExecConfig::default()
    }
}

fn req(payload: serde_json::Value) -> ExecRequest {
    ExecRequest {
        task: 1,
        attempt: 1,
        payload: payload.to_string().into_bytes(),
        resume: None,
        env: Vec::new(),
        timeout_ms: 0,
        model: String::new(),
        provider: String::new(),
        role: None,
    }
}

fn cmd(cmd: &str) -> ExecRequest {
    req(serde_json::json!({"executor": "command", "cmd": cmd}))
}

async fn run(config: &ExecConfig, r: ExecRequest) -> ExecResult {
    let (etx, _erx) = mpsc::channel(64);
    let (_ctx, crx) = mpsc::channel(4);
    executor::run(Arc::new(config.clone()), r, etx, crx).await
}

fn output(r: &ExecResult) -> String {
    assert_eq!(r.outcome, ExecOutcome::Succeeded, "{r:?}");
    String::from_utf8_lossy(&r.output).into_owned()
}

/// Whether process `pid` is gone (reaped, or a zombie nobody has reaped yet: it runs nothing).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // pid (comm) STATE ...; comm may hold spaces, so read after the last ')'.
        Ok(stat) => {
            stat.rsplit_once(')').is_some_and(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
        }
    }
}

/// Polls (bounded: 10 s) until `pid` is gone.
async fn until_gone(pid: u32) {
    for _ in 0..1_000 {
        if gone(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("process {pid} survived its attempt");
}

/// Polls (bounded: 10 s) until `file` holds a pid.
async fn pid_in(file: &Path) -> u32 {
    for _ in 0..1_000 {
        if let Some(pid) = std::fs::read_to_string(file).ok().and_then(|t| t.trim().parse().ok()) {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no pid in {}", file.display());
}

#[tokio::test]
async fn commands_run_with_their_qm_variables_capture_output_and_fail_and_time_out() {
    let dir = Scratch::new("basics");
    let config = config(&dir);
    let mut r = cmd("echo token=$QM_FENCING_TOKEN");
    r.env.push(("QM_FENCING_TOKEN".into(), "42".into()));
    assert_eq!(output(&run(&config, r).await), "token=42\n");
    let out = run(&config, cmd("echo bad >&2; exit 3")).await;
    assert_eq!((out.outcome, out.error.as_str()), (ExecOutcome::Failed, "bad\n"));
    let out = run(&config, cmd("exit 4")).await;
    assert_eq!((out.outcome, out.error.as_str()), (ExecOutcome::Failed, "exited with exit status: 4"));
    let mut r = cmd("sleep 5");
    r.timeout_ms = 100;
    assert_eq!(run(&config, r).await.outcome, ExecOutcome::TimedOut);
    let out = run(&config, req(serde_json::json!({"executor": "nope"}))).await;
    assert!(out.error.starts_with("payload:"), "{}", out.error);
    // A resumed attempt finds its checkpoint in $QM_CHECKPOINT_FILE.
    let mut r = cmd("cat \"$QM_CHECKPOINT_FILE\"");
    r.resume = Some(b"step=7".to_vec());
    assert_eq!(output(&run(&config, r).await), "step=7");
}

#[tokio::test]
async fn a_disabled_command_executor_runs_nothing() {
    let dir = Scratch::new("disabled");
    let marker = dir.join("ran");
    let config = ExecConfig { work_root: dir.join("work"), ..ExecConfig::default() };
    let out = run(&config, cmd(&format!("touch {}", marker.display()))).await;
    assert_eq!(out.outcome, ExecOutcome::Failed);
    assert!(out.error.starts_with("executor `command` is disabled on this worker"), "{}", out.error);
    assert!(out.error.contains("qm worker run --enable-executor command"), "{}", out.error);
    assert!(!marker.exists(), "the command ran");
}

#[tokio::test]
async fn the_child_sees_the_allow_list_and_its_qm_variables_and_nothing_else() {
    let dir = Scratch::new("env");
    let mut config = config(&dir);
    config.pass_env.push(("QM_TEST_KEPT".into(), "kept".into()));
    config.providers.insert(
        "p".into(),
        Provider {
            api: Api::Openai,
            base_url: "http://127.0.0.1:9/v1".into(),
            api_key: Some(Secret::new("sk-never-seen".into())),
        },
    );
    let mut r = cmd("env");
    r.env.push(("QM_TASK_ID".into(), "1".into()));
    let out = output(&run(&config, r).await);
    let seen: BTreeSet<&str> = out.lines().filter_map(|l| l.split_once('=')).map(|(n, _)| n).collect();
    let allowed = ["PATH", "QM_TEST_KEPT", "QM_TASK_ID", "QM_CHECKPOINT_FILE", "QM_WORK_DIR"];
    let by_the_shell = ["PWD", "OLDPWD", "SHLVL", "_"];
    for name in &seen {
        assert!(allowed.contains(name) || by_the_shell.contains(name), "{name} leaked into the child:\n{out}");
    }
    for name in allowed {
        assert!(seen.contains(name), "{name} is missing:\n{out}");
    }
    assert!(!out.contains("sk-never-seen"), "{out}");
    // The test process has variables of its own (HOME, CARGO_*, ...): the check above saw them
    // kept out, it did not pass for want of any.
    let ours: Vec<String> = std::env::vars_os()
        .filter_map(|(n, _)| n.into_string().ok())
        .filter(|n| !allowed.contains(&n.as_str()) && !by_the_shell.contains(&n.as_str()))
        .collect();
    assert!(!ours.is_empty(), "the test process has no variable outside the allow-list");
}

#[tokio::test]
async fn a_stopped_command_takes_its_grandchildren_with_it() {
    let dir = Scratch::new("stop");
    let pidfile = dir.join("pid");
    let config = config(&dir);
    let (etx, mut erx) = mpsc::channel(64);
    let (ctx, crx) = mpsc::channel(4);
    let r = cmd(&format!("sleep 1000 & echo $! > {}; wait", pidfile.display()));
    let running = tokio::spawn(executor::run(Arc::new(config), r, etx, crx));
    let grandchild = pid_in(&pidfile).await;
    assert!(!gone(grandchild), "the grandchild runs before the stop");
    ctx.send(Control::Stop).await.expect("control");
    let result = running.await.expect("run");
    assert_eq!(result.outcome, ExecOutcome::Stopped);
    until_gone(grandchild).await;
    while let Ok(ev) = erx.try_recv() {
        assert!(matches!(ev, ExecEvent::Progress { .. }), "no checkpoint was written: {ev:?}");
    }
}

#[tokio::test]
async fn a_timed_out_command_that_ignores_sigterm_is_killed_with_its_group() {
    let dir = Scratch::new("timeout");
    let pidfile = dir.join("pid");
    let config = ExecConfig { kill_grace: Duration::from_millis(200), ..config(&dir) };
    // The shell and its child ignore SIGTERM: only the SIGKILL after the grace ends them.
    let mut r = cmd(&format!("trap '' TERM; sleep 1000 & echo $! > {}; wait", pidfile.display()));
    r.timeout_ms = 300;
    let result = run(&config, r).await;
    assert_eq!(result.outcome, ExecOutcome::TimedOut, "{result:?}");
    until_gone(pid_in(&pidfile).await).await;
}

#[tokio::test]
async fn background_jobs_left_behind_by_a_finished_command_are_killed() {
    let dir = Scratch::new("leftover");
    let pidfile = dir.join("pid");
    // The job holds the shell's stdout open: the output is still complete once it is killed.
    let r = cmd(&format!("sleep 1000 & echo $! > {}; echo done", pidfile.display()));
    assert_eq!(output(&run(&config(&dir), r).await), "done\n");
    until_gone(pid_in(&pidfile).await).await;
}

#[tokio::test]
async fn resource_limits_are_visible_in_the_child() {
    let dir = Scratch::new("limits");
    let mut config = config(&dir);
    config.limits = Limits { cpu_secs: 77, memory_bytes: 1024 * 1024 * 1024, open_files: 64, ..Limits::default() };
    let out = output(&run(&config, cmd("ulimit -n; ulimit -t; ulimit -v; ulimit -Hn")).await);
    assert_eq!(out, "64\n77\n1048576\n64\n", "soft and hard limits alike, so the child cannot raise them");
    // 0 leaves a limit as the worker has it.
    config.limits.open_files = 0;
    let ours = std::process::Command::new("/bin/sh").args(["-c", "ulimit -Hn"]).output().expect("sh");
    let out = output(&run(&config, cmd("ulimit -Hn")).await);
    assert_eq!(out, String::from_utf8_lossy(&ours.stdout));
}

#[tokio::test]
async fn a_role_with_limits_of_its_own_runs_under_them_and_other_roles_under_the_workers() {
    let dir = Scratch::new("role-limits");
    let mut config = config(&dir);
    config.limits = Limits { open_files: 256, ..Limits::default() };
    config.role_limits.insert(qm_shared::Role::Verifier, Limits { open_files: 64, ..Limits::default() });
    let as_role = |role| ExecRequest { role: Some(role), ..cmd("ulimit -n") };
    assert_eq!(output(&run(&config, as_role(qm_shared::Role::Verifier)).await), "64\n");
    assert_eq!(output(&run(&config, as_role(qm_shared::Role::Implementer)).await), "256\n");
    assert_eq!(output(&run(&config, cmd("ulimit -n")).await), "256\n", "no role: the worker's limits");
}

#[tokio::test]
async fn output_past_the_cap_is_cut_and_says_so() {
    let dir = Scratch::new("cap");
    let mut config = config(&dir);
    config.limits.output_bytes = 1_024;
    let out = output(&run(&config, cmd("head -c 5000 /dev/zero | tr '\\0' x")).await);
    assert_eq!(out.len(), 1_024);
    assert!(out.starts_with("xxxx"), "{out}");
    assert!(out.ends_with("\n[qm: output truncated to 1024 bytes; the command wrote 5000]\n"), "{out}");
    let whole = output(&run(&config, cmd("head -c 1024 /dev/zero | tr '\\0' x")).await);
    assert_eq!(whole, "x".repeat(1_024));
}

#[tokio::test]
async fn workdirs_are_relative_paths_inside_the_attempts_directory() {
    let dir = Scratch::new("workdir");
    let config = config(&dir);
    let payload = |w: &str| req(serde_json::json!({"executor": "command", "cmd": "pwd", "workdir": w}));
    let out = output(&run(&config, payload("src/app")).await);
    assert_eq!(out.trim_end(), config.work_root.join("task-1-attempt-1/src/app").display().to_string());
    for bad in ["../escape", "/tmp"] {
        let r = run(&config, payload(bad)).await;
        assert_eq!(r.outcome, ExecOutcome::Failed);
        assert!(r.error.starts_with(&format!("payload.workdir: {bad:?} refused")), "{}", r.error);
    }
    assert!(!config.work_root.join("task-1-attempt-1").exists(), "the attempt's directory is removed after");
}

#[tokio::test]
async fn quoted_task_data_stays_one_argument() {
    let dir = Scratch::new("quote");
    let config = config(&dir);
    for hostile in
        ["; rm -rf victim", "$(rm -rf victim)", "`rm -rf victim`", "it's | rm -rf victim", "a\nrm -rf victim"]
    {
        let script = format!(
            "mkdir victim && set -- {}; echo $#; printf '[%s]\\n' \"$@\"; test -d victim && echo kept",
            shell_quote(hostile)
        );
        let out = output(&run(&config, cmd(&script)).await);
        assert_eq!(out, format!("1\n[{hostile}]\nkept\n"), "{hostile:?}");
    }
}

#[tokio::test]
async fn provider_errors_are_bounded_and_scrubbed_of_the_key() {
    use axum::{http::HeaderMap, http::StatusCode, routing::post, Router};
    // A provider that quotes the credentials it was sent, at length.
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|headers: HeaderMap| async move {
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let body =
                format!("invalid credentials: {auth}; key sk-proj-abcdef0123456789 rejected; {}", "x".repeat(4_000));
            (StatusCode::UNAUTHORIZED, body)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let key = "worker-key-0123456789";
    let config = ExecConfig {
        enabled: [Kind::Llm].into(),
        providers: [(
            "p".to_string(),
            Provider {
                api: Api::Openai,
                base_url: format!("http://{addr}/v1"),
                api_key: Some(Secret::new(key.into())),
            },
        )]
        .into(),
        ..ExecConfig::default()
    };
    let r = req(serde_json::json!({"executor": "llm", "provider": "p", "model": "m", "prompt": "hi"}));
    let out = run(&config, r).await;
    assert_eq!(out.outcome, ExecOutcome::Failed);
    assert!(
        out.error.contains("401 Unauthorized: invalid credentials: Bearer [redacted]; key sk-[redacted] rejected; xxx"),
        "{}",
        out.error
    );
    assert!(!out.error.contains(key) && !out.error.contains("abcdef0123"), "{}", out.error);
    assert!(out.error.ends_with(" […]") && out.error.len() < 700, "bounded: {} bytes", out.error.len());

    // A provider the worker does not configure is refused, naming the ones it does.
    let r = req(serde_json::json!({"executor": "llm", "provider": "elsewhere", "model": "m", "prompt": "hi"}));
    let out = run(&config, r).await;
    assert!(
        out.error.starts_with("payload.provider: \"elsewhere\" is not configured on this worker (its providers: p;"),
        "{}",
        out.error
    );
}
