//! Executors: what an agent runs once it holds a task's resources.
//!
//! One entry point, [`run`], picks the executor named by the task payload (JSON with an
//! `executor` field) and runs it until it finishes, fails, times out or is told to stop.
//! Every executor can checkpoint (an opaque blob, at most `TASK_CHECKPOINT_BYTES_MAX`) when
//! asked, and resume from one.
//!
//! * `scripted` ([`scripted`]): a deterministic stand-in for demos, tests and the simulator.
//!   Always available.
//! * `command` ([`command`]): a shell command in its own process group, work directory,
//!   cleared environment and resource limits.
//! * `llm` ([`llm`]): one call to a model provider the worker's own configuration names.
//!
//! Safe by default: what a payload may do is bounded by the worker's [`ExecConfig`], never by
//! the payload. `command` and `llm` run only on a worker started with `--enable-executor`;
//! a payload cannot enable them, name an API key variable or a provider URL, or pass the
//! worker's environment to a child. A refusal fails the attempt (the task), never the worker.
//!
//! ```text
//!   payload ──▶ run: enabled? refused fields? parse ──▶ scripted | command | llm
//!                                                        │ events (progress, checkpoints)
//!                         control (checkpoint, stop) ──▶ │ ──▶ ExecResult
//! ```

pub mod agent;
pub mod child;
pub mod cli;
pub mod command;
pub mod config;
pub mod engine;
pub mod llm;
pub mod scripted;
pub mod workspace;

use std::sync::Arc;
use std::time::Duration;

use futures::future::Either;
use qm_shared::Role;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use agent::AgentTask;
pub use cli::CliTask;
pub use command::CommandSpec;
pub use config::{ExecConfig, Kind, Limits, Provider, Secret};
pub use llm::{Api, Llm};
/// Usage an executor reports, per step or in all.
pub use qm_shared::attempt::Usage;
pub use scripted::Scripted;

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRequest {
    pub task: u64,
    pub attempt: u32,
    pub payload: Vec<u8>,
    /// Checkpoint to resume from.
    pub resume: Option<Vec<u8>>,
    /// `QM_*` variables the agent sets for the attempt (fencing token, reservation ids, task
    /// id and attempt); a command's child sees these on top of the worker's allow-list.
    pub env: Vec<(String, String)>,
    /// 0 means none.
    pub timeout_ms: u64,
    /// The model the coordinator routed the attempt to; an llm payload whose `model` is empty
    /// or `auto` uses it.
    pub model: String,
    /// The provider the coordinator routed the attempt to; an llm payload whose `provider` is
    /// empty or `auto` uses it.
    pub provider: String,
    /// The role of the agent running it: its limits are the role's where the worker sets
    /// them (`--role-limit`), else the worker's.
    pub role: Option<Role>,
}

/// Reported while running.
#[derive(Clone, Debug, PartialEq)]
pub enum ExecEvent {
    Progress { percent: u32, stage: String, usage: Usage },
    Checkpoint(Vec<u8>),
}

/// Asked of a running executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Report a checkpoint now (then keep running).
    Checkpoint,
    /// Report a checkpoint and stop.
    Stop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecOutcome {
    Succeeded,
    Failed,
    TimedOut,
    /// Stopped on request, after a checkpoint.
    Stopped,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ExecResult {
    pub outcome: ExecOutcome,
    pub output: Vec<u8>,
    pub error: String,
    pub usage: Usage,
}

impl ExecResult {
    pub(crate) fn failed(error: impl Into<String>) -> ExecResult {
        ExecResult { outcome: ExecOutcome::Failed, output: Vec::new(), error: error.into(), usage: Usage::default() }
    }

    pub(crate) fn stopped(usage: Usage) -> ExecResult {
        ExecResult { outcome: ExecOutcome::Stopped, output: Vec::new(), error: String::new(), usage }
    }

    pub(crate) fn timed_out(t: Duration) -> ExecResult {
        ExecResult {
            outcome: ExecOutcome::TimedOut,
            output: Vec::new(),
            error: format!("no result within {} ms", t.as_millis()),
            usage: Usage::default(),
        }
    }
}

/// A task payload: which executor, with its parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "executor", rename_all = "lowercase")]
pub enum Payload {
    Scripted(Scripted),
    Command(CommandSpec),
    Llm(Llm),
    Agent(AgentTask),
    Cli(CliTask),
}

/// The payload checked against the worker's configuration: the executor is enabled here and
/// no refused field is set. Errors name the executor or field, and what to do instead.
fn check(config: &ExecConfig, payload: &[u8]) -> Result<Payload, String> {
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| format!("payload: {e}"))?;
    let name = value.get("executor").and_then(|e| e.as_str()).unwrap_or_default();
    if let Some(kind) = Kind::parse(name) {
        if !config.enabled.contains(&kind) {
            return Err(format!(
                "executor `{name}` is disabled on this worker: {}; start the worker with \
                 `qm worker run --enable-executor {name}` to allow it",
                kind.what()
            ));
        }
    }
    if let Some(refusal) = qm_shared::payload::refused_field(&value) {
        return Err(refusal.to_string());
    }
    serde_json::from_value(value).map_err(|e| format!("payload: {e}"))
}

/// Runs the payload's executor to the end (or until stopped), within what `config` allows.
pub async fn run(
    config: Arc<ExecConfig>,
    req: ExecRequest,
    events: mpsc::Sender<ExecEvent>,
    control: mpsc::Receiver<Control>,
) -> ExecResult {
    let payload = match check(&config, &req.payload) {
        Ok(p) => p,
        Err(e) => return ExecResult::failed(e),
    };
    let timeout = (req.timeout_ms > 0).then(|| Duration::from_millis(req.timeout_ms));
    let limits = config.limits_for(req.role);
    let config = if limits == config.limits { config } else { Arc::new(ExecConfig { limits, ..(*config).clone() }) };
    let work = match payload {
        Payload::Scripted(s) => Either::Left(scripted::run(s, &req, events, control)),
        // The command executor keeps its own deadline: it stops its process group (TERM,
        // then KILL) rather than being dropped.
        Payload::Command(c) => return command::run(c, &config, &req, timeout, events, control).await,
        Payload::Llm(l) => Either::Right(llm::run(l, &config, &req, events, control)),
        // So does the agent executor: its workspace is removed however it ends.
        Payload::Agent(a) => return agent::run(a, &config, &req, timeout, events, control).await,
        Payload::Cli(c) => return cli::run(c, &config, &req, timeout).await,
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, work).await.unwrap_or_else(|_| ExecResult::timed_out(t)),
        None => work.await,
    }
}

/// The attempt's own directory: `<work root>/task-<id>-attempt-<n>`.
pub(crate) fn attempt_dir(config: &ExecConfig, req: &ExecRequest) -> std::path::PathBuf {
    config.work_root.join(format!("task-{}-attempt-{}", req.task, req.attempt))
}

/// An attempt's directories: its own (`<work root>/task-<id>-attempt-<n>`, made fresh and
/// private: a worker that crashed may have left one behind) and, when the payload names a
/// repository, a worktree of it at `<dir>/repo`. [`AttemptDirs::remove`] takes both away.
pub(crate) struct AttemptDirs {
    pub dir: std::path::PathBuf,
    pub workspace: Option<workspace::Workspace>,
}

impl AttemptDirs {
    /// The directory, and a worktree of this worker's repository `repo` (if named) from
    /// `start` (or from the branch `prefer`, if the remote has it), diffs against `base`; an
    /// error naming the payload field when the worker has no such repository. Nothing is
    /// left behind on an error.
    pub(crate) async fn prepare(
        config: &ExecConfig,
        req: &ExecRequest,
        repo: Option<&str>,
        (start, prefer): (&str, Option<&str>),
        base: &str,
    ) -> Result<AttemptDirs, String> {
        let dir = attempt_dir(config, req);
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let mut mkdir = tokio::fs::DirBuilder::new();
        mkdir.recursive(true).mode(0o700);
        mkdir.create(&dir).await.map_err(|e| format!("creating the work directory {}: {e}", dir.display()))?;
        let Some(repo) = repo else { return Ok(AttemptDirs { dir, workspace: None }) };
        let Some(url) = config.repos.get(repo) else {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            let known: Vec<&str> = config.repos.keys().map(String::as_str).collect();
            return Err(format!(
                "payload.repo: {repo:?} is not a repository of this worker (its repositories: {}; add one with \
                 `qm worker run --repo NAME=URL`)",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ));
        };
        match workspace::Workspace::open(&config.work_root, (repo, url), &dir.join("repo"), (start, prefer), base).await
        {
            Ok(w) => {
                let setup_ms = w.setup.as_millis() as u64;
                tracing::debug!(task = req.task, attempt = req.attempt, repo, setup_ms, "workspace ready");
                Ok(AttemptDirs { dir, workspace: Some(w) })
            }
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                Err(e)
            }
        }
    }

    /// [`AttemptDirs::prepare`], and where the attempt's files are ([`AttemptDirs::files`]);
    /// nothing is left behind on an error.
    pub(crate) async fn prepare_files(
        config: &ExecConfig,
        req: &ExecRequest,
        repo: Option<&str>,
        start: (&str, Option<&str>),
        base: &str,
    ) -> Result<(AttemptDirs, std::path::PathBuf), String> {
        let dirs = AttemptDirs::prepare(config, req, repo, start, base).await?;
        match dirs.files().await {
            Ok(files) => Ok((dirs, files)),
            Err(e) => {
                dirs.remove().await;
                Err(e)
            }
        }
    }

    /// Where the attempt's files are: the worktree, else `<dir>/work` (made here).
    pub(crate) async fn files(&self) -> Result<std::path::PathBuf, String> {
        if let Some(w) = &self.workspace {
            return Ok(w.dir.clone());
        }
        let work = self.dir.join("work");
        tokio::fs::create_dir_all(&work).await.map_err(|e| format!("creating {}: {e}", work.display()))?;
        Ok(work)
    }

    /// Removes the worktree (the mirror stays) and the directory.
    pub(crate) async fn remove(self) {
        if let Some(w) = self.workspace {
            w.close().await;
        }
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub(crate) fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn req(payload: serde_json::Value, resume: Option<Vec<u8>>) -> ExecRequest {
        ExecRequest {
            task: 1,
            attempt: 1,
            payload: payload.to_string().into_bytes(),
            resume,
            env: Vec::new(),
            timeout_ms: 0,
            model: String::new(),
            provider: String::new(),
            role: None,
        }
    }

    /// Runs `payload` to the end under `config`, ignoring events.
    pub(crate) async fn run_to_end(config: ExecConfig, r: ExecRequest) -> ExecResult {
        let (etx, _erx) = mpsc::channel(64);
        let (_ctx, crx) = mpsc::channel(4);
        run(Arc::new(config), r, etx, crx).await
    }

    #[tokio::test]
    async fn disabled_executors_fail_the_attempt_naming_the_executor_and_the_flag() {
        for (payload, name) in [
            (serde_json::json!({"executor": "command", "cmd": "true"}), "command"),
            (serde_json::json!({"executor": "llm", "prompt": "hi"}), "llm"),
        ] {
            let out = run_to_end(ExecConfig::default(), req(payload, None)).await;
            assert_eq!(out.outcome, ExecOutcome::Failed);
            assert!(out.error.starts_with(&format!("executor `{name}` is disabled on this worker")), "{}", out.error);
            assert!(out.error.contains(&format!("--enable-executor {name}")), "{}", out.error);
        }
        // A payload cannot enable them either: an `enable` field is just unknown.
        let p = serde_json::json!({"executor": "command", "cmd": "true", "enabled": true});
        let out = run_to_end(ExecConfig::default(), req(p, None)).await;
        assert!(out.error.starts_with("executor `command` is disabled"), "{}", out.error);
        let out = run_to_end(ExecConfig::default(), req(serde_json::json!({"executor": "nope"}), None)).await;
        assert!(out.error.starts_with("payload:"), "{}", out.error);
    }

    #[tokio::test]
    async fn payloads_naming_a_key_variable_or_a_url_are_refused_with_the_reason() {
        let config = ExecConfig { enabled: [Kind::Llm].into(), ..ExecConfig::default() };
        for (field, value) in [("api_key_env", "AWS_SECRET_ACCESS_KEY"), ("base_url", "http://attacker.invalid/v1")] {
            let mut p = serde_json::json!({"executor": "llm", "provider": "p", "prompt": "hi"});
            p[field] = serde_json::json!(value);
            let out = run_to_end(config.clone(), req(p, None)).await;
            assert_eq!(out.outcome, ExecOutcome::Failed);
            assert!(out.error.starts_with(&format!("payload.{field}: refused: a task cannot choose")), "{}", out.error);
        }
        // And deny_unknown_fields refuses them even without the table.
        let p = serde_json::json!({"executor": "llm", "prompt": "hi", "base_url": "http://x"});
        let err = serde_json::from_value::<Payload>(p).expect_err("unknown field");
        assert!(err.to_string().contains("unknown field `base_url`"), "{err}");
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        let mut s = "aé".to_string();
        truncate_at_char(&mut s, 2);
        assert_eq!(s, "a");
    }
}
