//! Executors: what an agent runs once it holds a task's resources.
//!
//! One entry point, [`run`], picks the executor named by the task payload (JSON with an
//! `executor` field) and runs it until it finishes, fails, times out or is told to stop.
//! Every executor can checkpoint (an opaque blob, at most `TASK_CHECKPOINT_BYTES_MAX`) when
//! asked, and resume from one.
//!
//! * `scripted`: a deterministic stand-in for demos, tests and the simulator: `steps` steps
//!   over `duration_ms`, token usage per step, an optional failure at a step; its checkpoint
//!   is the next step, so a resumed run continues where it stopped.
//! * `command`: a shell command in a work directory, with a timeout and captured output. Its
//!   checkpoint is whatever it wrote to `$QM_CHECKPOINT_FILE`; on resume that file holds the
//!   last checkpoint before it starts.

use std::time::Duration;

use qm_shared::limits::{TASK_CHECKPOINT_BYTES_MAX, TASK_OUTPUT_BYTES_MAX};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Usage an executor reports, per step or in all.
pub use qm_shared::attempt::Usage;

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRequest {
    pub task: u64,
    pub attempt: u32,
    pub payload: Vec<u8>,
    /// Checkpoint to resume from.
    pub resume: Option<Vec<u8>>,
    /// Extra environment (fencing token and reservation ids) for commands and adapters.
    pub env: Vec<(String, String)>,
    /// 0 means none.
    pub timeout_ms: u64,
    /// The model the coordinator routed the attempt to; an llm payload whose `model` is empty
    /// or `auto` uses it.
    pub model: String,
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
    fn failed(error: impl Into<String>) -> ExecResult {
        ExecResult { outcome: ExecOutcome::Failed, output: Vec::new(), error: error.into(), usage: Usage::default() }
    }
}

/// The scripted executor's parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scripted {
    /// Total run time of a fresh run.
    #[serde(default = "Scripted::default_duration_ms")]
    pub duration_ms: u64,
    /// Steps (progress reports) over that time, 1..=10,000.
    #[serde(default = "Scripted::default_steps")]
    pub steps: u32,
    /// Tokens per step.
    #[serde(default)]
    pub input_tokens_per_step: u64,
    #[serde(default)]
    pub output_tokens_per_step: u64,
    /// Fail (instead of finishing) when reaching this step.
    #[serde(default)]
    pub fail_at_step: Option<u32>,
    /// Output on success.
    #[serde(default)]
    pub output: String,
}

impl Scripted {
    fn default_duration_ms() -> u64 {
        2_000
    }
    fn default_steps() -> u32 {
        10
    }
}

/// The command executor's parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// Run with `sh -c`.
    pub cmd: String,
    /// Work directory; default: the worker's.
    #[serde(default)]
    pub workdir: Option<String>,
}

/// API flavour of a model endpoint.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// OpenAI-compatible chat completions (cloud, llama.cpp server, vLLM, Ollama).
    Openai,
    /// Anthropic Messages.
    Anthropic,
}

/// The llm executor's parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Llm {
    pub api: Api,
    /// e.g. `http://127.0.0.1:8080/v1` (OpenAI-compatible) or `https://api.anthropic.com`.
    pub base_url: String,
    /// Empty or `auto`: the model the coordinator routed the task to (its tier's model).
    #[serde(default)]
    pub model: String,
    /// Environment variable holding the API key on the worker (keys never travel in tasks).
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub system: Option<String>,
    pub prompt: String,
    #[serde(default = "Llm::default_max_tokens")]
    pub max_tokens: u32,
}

impl Llm {
    fn default_max_tokens() -> u32 {
        1_024
    }
}

/// A task payload: which executor, with its parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "executor", rename_all = "lowercase")]
pub enum Payload {
    Scripted(Scripted),
    Command(CommandSpec),
    Llm(Llm),
}

#[derive(Serialize, Deserialize)]
struct ScriptedCheckpoint {
    step: u32,
}

/// Runs the payload's executor to the end (or until stopped).
pub async fn run(req: ExecRequest, events: mpsc::Sender<ExecEvent>, control: mpsc::Receiver<Control>) -> ExecResult {
    let payload: Payload = match serde_json::from_slice(&req.payload) {
        Ok(p) => p,
        Err(e) => return ExecResult::failed(format!("payload: {e}")),
    };
    let timeout = (req.timeout_ms > 0).then(|| Duration::from_millis(req.timeout_ms));
    let work = async {
        match payload {
            Payload::Scripted(s) => scripted(s, &req, events, control).await,
            Payload::Command(c) => command(c, &req, events, control).await,
            Payload::Llm(l) => llm(l, &req, events, control).await,
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, work).await.unwrap_or_else(|_| ExecResult {
            outcome: ExecOutcome::TimedOut,
            output: Vec::new(),
            error: format!("no result within {} ms", t.as_millis()),
            usage: Usage::default(),
        }),
        None => work.await,
    }
}

async fn scripted(
    s: Scripted,
    req: &ExecRequest,
    events: mpsc::Sender<ExecEvent>,
    mut control: mpsc::Receiver<Control>,
) -> ExecResult {
    if !(1..=10_000).contains(&s.steps) {
        return ExecResult::failed(format!("payload.steps: {} is outside 1..=10000", s.steps));
    }
    let start = match &req.resume {
        Some(c) => match serde_json::from_slice::<ScriptedCheckpoint>(c) {
            Ok(c) => c.step.min(s.steps),
            Err(e) => return ExecResult::failed(format!("checkpoint: {e}")),
        },
        None => 0,
    };
    let per_step = Duration::from_millis(s.duration_ms / u64::from(s.steps));
    let mut usage = Usage::default();
    let checkpoint = |step: u32| ExecEvent::Checkpoint(serde_json::to_vec(&ScriptedCheckpoint { step }).expect("json"));
    let mut step = start;
    while step < s.steps {
        tokio::select! {
            c = control.recv() => match c {
                Some(Control::Checkpoint) => { let _ = events.send(checkpoint(step)).await; }
                Some(Control::Stop) | None => {
                    let _ = events.send(checkpoint(step)).await;
                    return ExecResult { outcome: ExecOutcome::Stopped, output: Vec::new(), error: String::new(), usage };
                }
            },
            _ = tokio::time::sleep(per_step) => {
                step += 1;
                if s.fail_at_step == Some(step) {
                    return ExecResult { outcome: ExecOutcome::Failed, output: Vec::new(), error: format!("scripted failure at step {step}"), usage };
                }
                let u = Usage { input_tokens: s.input_tokens_per_step, output_tokens: s.output_tokens_per_step, ..Usage::default() };
                usage.input_tokens += u.input_tokens;
                usage.output_tokens += u.output_tokens;
                let percent = step * 100 / s.steps;
                let _ = events.send(ExecEvent::Progress { percent, stage: format!("step {step}/{}", s.steps), usage: u }).await;
            }
        }
    }
    ExecResult { outcome: ExecOutcome::Succeeded, output: s.output.into_bytes(), error: String::new(), usage }
}

async fn command(
    c: CommandSpec,
    req: &ExecRequest,
    events: mpsc::Sender<ExecEvent>,
    mut control: mpsc::Receiver<Control>,
) -> ExecResult {
    let dir = std::env::temp_dir().join(format!("qm-task-{}-{}", req.task, req.attempt));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return ExecResult::failed(format!("creating {}: {e}", dir.display()));
    }
    let checkpoint_file = dir.join("checkpoint");
    if let Some(data) = &req.resume {
        if let Err(e) = std::fs::write(&checkpoint_file, data) {
            return ExecResult::failed(format!("writing the checkpoint: {e}"));
        }
    }
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(&c.cmd).envs(req.env.iter().cloned()).env("QM_CHECKPOINT_FILE", &checkpoint_file);
    if let Some(w) = &c.workdir {
        cmd.current_dir(w);
    }
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(ch) => ch,
        Err(e) => return ExecResult::failed(format!("starting `sh -c {}`: {e}", c.cmd)),
    };
    let read_checkpoint =
        || std::fs::read(&checkpoint_file).ok().filter(|d| !d.is_empty() && d.len() <= TASK_CHECKPOINT_BYTES_MAX);
    let _ = events.send(ExecEvent::Progress { percent: 0, stage: "running".into(), usage: Usage::default() }).await;
    let mut wait = Box::pin(child.wait_with_output());
    loop {
        tokio::select! {
            out = &mut wait => {
                let _ = std::fs::remove_dir_all(&dir);
                return match out {
                    Ok(out) => {
                        let mut output = out.stdout;
                        output.truncate(TASK_OUTPUT_BYTES_MAX);
                        let ok = out.status.success();
                        let mut error = String::from_utf8_lossy(&out.stderr).into_owned();
                        error.truncate(qm_shared::limits::TASK_ERROR_LEN_MAX_BYTES);
                        if !ok && error.is_empty() {
                            error = format!("exited with {}", out.status);
                        }
                        ExecResult { outcome: if ok { ExecOutcome::Succeeded } else { ExecOutcome::Failed }, output, error, usage: Usage::default() }
                    }
                    Err(e) => ExecResult::failed(format!("waiting for the command: {e}")),
                };
            }
            ctl = control.recv() => {
                if let Some(data) = read_checkpoint() {
                    let _ = events.send(ExecEvent::Checkpoint(data)).await;
                }
                if ctl != Some(Control::Checkpoint) {
                    // Dropping the child kills it.
                    let _ = std::fs::remove_dir_all(&dir);
                    return ExecResult { outcome: ExecOutcome::Stopped, output: Vec::new(), error: String::new(), usage: Usage::default() };
                }
            }
        }
    }
}

/// A model's answer and its usage.
#[derive(Serialize, Deserialize)]
struct LlmCheckpoint {
    text: String,
    input_tokens: u64,
    output_tokens: u64,
    cached_tokens: u64,
    estimated: bool,
}

/// One call: a completed answer is the checkpoint, so a resumed attempt does not pay twice.
async fn llm(
    mut l: Llm,
    req: &ExecRequest,
    events: mpsc::Sender<ExecEvent>,
    mut control: mpsc::Receiver<Control>,
) -> ExecResult {
    if l.model.is_empty() || l.model == "auto" {
        if req.model.is_empty() {
            return ExecResult::failed("payload.model: empty (or auto) and the task was routed to no model");
        }
        l.model = req.model.clone();
    }
    if let Some(c) = &req.resume {
        if let Ok(done) = serde_json::from_slice::<LlmCheckpoint>(c) {
            return ExecResult {
                outcome: ExecOutcome::Succeeded,
                output: done.text.into_bytes(),
                error: String::new(),
                usage: Usage::default(),
            };
        }
    }
    let key = match &l.api_key_env {
        Some(var) => match std::env::var(var) {
            Ok(k) => Some(k),
            Err(_) => return ExecResult::failed(format!("payload.api_key_env: {var} is not set on this worker")),
        },
        None => None,
    };
    let _ = events
        .send(ExecEvent::Progress { percent: 0, stage: format!("calling {}", l.model), usage: Usage::default() })
        .await;
    let call = call_model(&l, key.as_deref());
    tokio::pin!(call);
    let answer = loop {
        tokio::select! {
            r = &mut call => break r,
            c = control.recv() => {
                if c != Some(Control::Checkpoint) {
                    // Nothing to keep from a call in flight: a resumed attempt calls again.
                    return ExecResult { outcome: ExecOutcome::Stopped, output: Vec::new(), error: String::new(), usage: Usage::default() };
                }
            }
        }
    };
    match answer {
        Ok(done) => {
            let usage = Usage {
                input_tokens: done.input_tokens,
                output_tokens: done.output_tokens,
                cached_tokens: done.cached_tokens,
                estimated: done.estimated,
            };
            let mut checkpoint = serde_json::to_vec(&done).expect("json");
            if checkpoint.len() <= TASK_CHECKPOINT_BYTES_MAX {
                let _ = events.send(ExecEvent::Checkpoint(std::mem::take(&mut checkpoint))).await;
            }
            let mut output = done.text.into_bytes();
            output.truncate(TASK_OUTPUT_BYTES_MAX);
            ExecResult { outcome: ExecOutcome::Succeeded, output, error: String::new(), usage }
        }
        Err(e) => ExecResult::failed(e),
    }
}

/// Counts tokens the way providers roughly do (4 bytes a token) when they report none.
fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

async fn call_model(l: &Llm, key: Option<&str>) -> Result<LlmCheckpoint, String> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let base = l.base_url.trim_end_matches('/');
    let (url, body) = match l.api {
        Api::Openai => {
            let mut messages = Vec::new();
            if let Some(s) = &l.system {
                messages.push(serde_json::json!({"role": "system", "content": s}));
            }
            messages.push(serde_json::json!({"role": "user", "content": l.prompt}));
            (
                format!("{base}/chat/completions"),
                serde_json::json!({"model": l.model, "messages": messages, "max_tokens": l.max_tokens}),
            )
        }
        Api::Anthropic => {
            let mut body = serde_json::json!({"model": l.model, "max_tokens": l.max_tokens, "messages": [{"role": "user", "content": l.prompt}]});
            if let Some(s) = &l.system {
                body["system"] = serde_json::json!(s);
            }
            (format!("{base}/v1/messages"), body)
        }
    };
    let mut request = client.post(&url).json(&body);
    request = match (l.api, key) {
        (Api::Openai, Some(k)) => request.bearer_auth(k),
        (Api::Anthropic, k) => {
            let r = request.header("anthropic-version", "2023-06-01");
            match k {
                Some(k) => r.header("x-api-key", k),
                None => r,
            }
        }
        (Api::Openai, None) => request,
    };
    let resp = request.send().await.map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| format!("reading the answer of {url}: {e}"))?;
    if !status.is_success() {
        let mut t = text;
        t.truncate(512);
        return Err(format!("POST {url}: {status}: {t}"));
    }
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("answer of {url} is not JSON: {e}"))?;
    // Lenient: take what is there, estimate what is not.
    let u64_at = |p: &str| v.pointer(p).and_then(serde_json::Value::as_u64);
    let (answer, input, output, cached) = match l.api {
        Api::Openai => (
            v.pointer("/choices/0/message/content").and_then(|c| c.as_str()).unwrap_or_default().to_string(),
            u64_at("/usage/prompt_tokens"),
            u64_at("/usage/completion_tokens"),
            u64_at("/usage/prompt_tokens_details/cached_tokens"),
        ),
        Api::Anthropic => (
            v.get("content")
                .and_then(|c| c.as_array())
                .map(|parts| {
                    parts.iter().filter_map(|p| p.get("text").and_then(|t| t.as_str())).collect::<Vec<_>>().join("")
                })
                .unwrap_or_default(),
            u64_at("/usage/input_tokens"),
            u64_at("/usage/output_tokens"),
            u64_at("/usage/cache_read_input_tokens"),
        ),
    };
    let prompt_len = l.prompt.len() + l.system.as_deref().map_or(0, str::len);
    let estimated = input.is_none() || output.is_none();
    let cached = cached.unwrap_or(0);
    Ok(LlmCheckpoint {
        // OpenAI counts cached prompt tokens inside prompt_tokens; Anthropic does not.
        input_tokens: input.map_or_else(
            || (prompt_len as u64).div_ceil(4),
            |i| if l.api == Api::Openai { i.saturating_sub(cached) } else { i },
        ),
        output_tokens: output.unwrap_or_else(|| estimate_tokens(&answer)),
        cached_tokens: cached,
        estimated,
        text: answer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(payload: serde_json::Value, resume: Option<Vec<u8>>) -> ExecRequest {
        ExecRequest {
            task: 1,
            attempt: 1,
            payload: payload.to_string().into_bytes(),
            resume,
            env: Vec::new(),
            timeout_ms: 0,
            model: String::new(),
        }
    }

    #[tokio::test]
    async fn scripted_stops_with_a_checkpoint_and_resumes_from_it() {
        let p =
            serde_json::json!({"executor": "scripted", "duration_ms": 200, "steps": 10, "input_tokens_per_step": 3});
        let (etx, mut erx) = mpsc::channel(64);
        let (ctx, crx) = mpsc::channel(4);
        let run1 = tokio::spawn(run(req(p.clone(), None), etx, crx));
        // Stop after the fourth progress report.
        let mut seen = 0;
        while let Some(ev) = erx.recv().await {
            if let ExecEvent::Progress { .. } = ev {
                seen += 1;
                if seen == 4 {
                    ctx.send(Control::Stop).await.unwrap();
                    break;
                }
            }
        }
        let r1 = run1.await.unwrap();
        assert_eq!(r1.outcome, ExecOutcome::Stopped);
        let mut cp = None;
        while let Ok(ev) = erx.try_recv() {
            if let ExecEvent::Checkpoint(d) = ev {
                cp = Some(d);
            }
        }
        let cp = cp.expect("a checkpoint before stopping");
        let step: ScriptedCheckpoint = serde_json::from_slice(&cp).unwrap();
        assert!(step.step >= 4, "{}", step.step);
        // Resumed: progress continues above the checkpoint and the run succeeds.
        let (etx, mut erx) = mpsc::channel(64);
        let (_ctx, crx) = mpsc::channel(4);
        let r2 = run(req(p, Some(cp)), etx, crx).await;
        assert_eq!(r2.outcome, ExecOutcome::Succeeded);
        let mut first = None;
        while let Ok(ev) = erx.try_recv() {
            if let ExecEvent::Progress { percent, .. } = ev {
                first.get_or_insert(percent);
            }
        }
        assert!(first.unwrap() > 40, "resumed above 40%: {first:?}");
    }

    #[tokio::test]
    async fn command_runs_with_env_and_captures_output_and_failure() {
        let (etx, _erx) = mpsc::channel(64);
        let (_ctx, crx) = mpsc::channel(4);
        let mut r = req(serde_json::json!({"executor": "command", "cmd": "echo token=$QM_FENCING_TOKEN"}), None);
        r.env.push(("QM_FENCING_TOKEN".into(), "42".into()));
        let out = run(r, etx, crx).await;
        assert_eq!(out.outcome, ExecOutcome::Succeeded, "{}", out.error);
        assert_eq!(String::from_utf8_lossy(&out.output), "token=42\n");
        let (etx, _erx) = mpsc::channel(64);
        let (_ctx, crx) = mpsc::channel(4);
        let out =
            run(req(serde_json::json!({"executor": "command", "cmd": "echo bad >&2; exit 3"}), None), etx, crx).await;
        assert_eq!((out.outcome, out.error.as_str()), (ExecOutcome::Failed, "bad\n"));
        let (etx, _erx) = mpsc::channel(64);
        let (_ctx, crx) = mpsc::channel(4);
        let mut r = req(serde_json::json!({"executor": "command", "cmd": "sleep 5"}), None);
        r.timeout_ms = 100;
        assert_eq!(run(r, etx, crx).await.outcome, ExecOutcome::TimedOut);
        let (etx, _erx) = mpsc::channel(64);
        let (_ctx, crx) = mpsc::channel(4);
        let out = run(req(serde_json::json!({"executor": "nope"}), None), etx, crx).await;
        assert!(out.error.starts_with("payload:"), "{}", out.error);
    }
}
