//! The `agent` executor: a model that uses tools in a workspace until it finishes, off unless
//! the worker enables it.
//!
//! The agent's spec (`qm worker run --agents DIR`, the role's spec) gives the system prompt
//! and the tools it may use ([`tools`]); the payload gives the task's prompt, the repository
//! to work in, where to start and the branch to push. Each turn sends the transcript to the
//! routed provider and model ([`model`]), runs the tool calls it answers with, and appends
//! their results, until the model calls `finish` (a summary; for a review, a verdict and its
//! reasons).
//!
//! Bounded by turns (`max_turns`), tokens (the spec's `budget.tokens_per_task`, over every
//! attempt), the attempt's timeout and each tool's own bounds. Its checkpoint is the
//! transcript plus a work-in-progress commit pushed to `refs/qm/checkpoints/task-<id>`, so a
//! preempted attempt resumes, on any worker with the repository, from the same files and the
//! same conversation. On success the workspace's changes are committed and pushed to the
//! payload's `branch`; the output (JSON) carries the summary or verdict, the branch, the
//! commit, the diff summary and the diff (bounded), the spec's name and version, and the
//! calls that were refused.

mod model;
pub(crate) mod tools;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use qm_shared::limits::{TASK_CHECKPOINT_BYTES_MAX, TASK_OUTPUT_BYTES_MAX};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::workspace::{check_branch, checkpoint_ref};
use super::{
    truncate_at_char, AttemptDirs, Control, ExecConfig, ExecEvent, ExecOutcome, ExecRequest, ExecResult, Provider,
    Usage,
};
use tools::{Bench, Tool};

/// The most turns a payload may ask for.
pub const AGENT_TURNS_MAX: u32 = 200;
/// The most output tokens one model call may ask for.
pub const AGENT_CALL_TOKENS_MAX: u32 = 200_000;
/// Bytes of the diff the output carries (the branch holds all of it).
pub(crate) const DIFF_BYTES_MAX: usize = 24 * 1024;
/// Bytes of the summary or the reasons the output carries.
pub(crate) const SUMMARY_BYTES_MAX: usize = 8 * 1024;
/// Refused tool calls an attempt lists (later ones are logged only), each cut to
/// `REFUSAL_BYTES_MAX`.
const REFUSALS_LISTED_MAX: usize = 32;
const REFUSAL_BYTES_MAX: usize = 512;

/// The agent executor's parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentTask {
    /// What to do (the user message after the spec's system prompt).
    pub prompt: String,
    /// A provider configured on this worker; empty or `auto`: the routed one.
    #[serde(default)]
    pub provider: String,
    /// Empty or `auto`: the routed model.
    #[serde(default)]
    pub model: String,
    /// Work in a worktree of this worker's repository of that name (`--repo NAME=URL`);
    /// without one, in an empty directory of the attempt's.
    #[serde(default)]
    pub repo: Option<String>,
    /// The commit or branch to start from; empty: the remote's default branch.
    #[serde(default)]
    pub start: String,
    /// The commit the diff is taken against; empty: where the attempt starts.
    #[serde(default)]
    pub base: String,
    /// Push the result here (a branch under `qm/`, e.g. `qm/{{job}}/{{pass}}`).
    #[serde(default)]
    pub branch: Option<String>,
    /// A review: `finish` takes a verdict (pass or fail) and its reasons.
    #[serde(default)]
    pub review: bool,
    /// Where `run_command` runs: `local` (default) or `container`.
    #[serde(default)]
    pub engine: String,
    /// The container's image (default: the worker's `--container-image`).
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default = "AgentTask::default_turns")]
    pub max_turns: u32,
    /// Output tokens per model call.
    #[serde(default = "AgentTask::default_max_tokens")]
    pub max_tokens: u32,
    /// Set by the coordinator: an earlier result of the same pass on the same inputs, with
    /// the files it read (`reads`) and their digest (`tree`). If those files are unchanged
    /// at this base, its change is applied here instead of asking the model.
    #[serde(default)]
    pub cached: Option<Value>,
}

impl AgentTask {
    fn default_turns() -> u32 {
        30
    }

    fn default_max_tokens() -> u32 {
        4_096
    }

    fn check(&self) -> Result<(), String> {
        if !(1..=AGENT_TURNS_MAX).contains(&self.max_turns) {
            return Err(format!("payload.max_turns: {} is outside 1..={AGENT_TURNS_MAX}", self.max_turns));
        }
        if !(1..=AGENT_CALL_TOKENS_MAX).contains(&self.max_tokens) {
            return Err(format!("payload.max_tokens: {} is outside 1..={AGENT_CALL_TOKENS_MAX}", self.max_tokens));
        }
        if let Some(b) = &self.branch {
            check_branch(b)?;
        }
        Ok(())
    }
}

/// What a checkpoint holds: the conversation and where the files are.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Saved {
    messages: Vec<Value>,
    turns: u32,
    /// Tokens spent by every attempt so far (the spec's budget counts them all).
    tokens: u64,
    base: String,
    /// The work-in-progress commit, pushed to the task's checkpoint ref.
    wip: Option<String>,
    refused: Vec<String>,
    /// The paths the agent looked at (read, edited, listed or searched; `.` for the whole
    /// tree), for the cache: a later run whose base holds the same content there may reuse
    /// this result.
    #[serde(default)]
    reads: BTreeSet<String>,
}

/// Paths an attempt records as read before it counts as having read the whole tree.
const READS_LISTED_MAX: usize = 256;

/// The path a tool call looks at, normalized (`.` for the whole tree); `None` for a call
/// that reads nothing.
fn read_by(tool: &str, args: &Value) -> Option<String> {
    let path = args.get("path").and_then(Value::as_str).unwrap_or_default();
    let whole = || Some(".".to_string());
    match Tool::parse(tool)? {
        Tool::ReadFile | Tool::EditFile | Tool::ListFiles | Tool::Search => {
            let p = path.trim_start_matches("./").trim_end_matches('/');
            if p.is_empty() || p == "." || p.len() > 1_024 || p.contains(['\n', '\t']) {
                whole()
            } else {
                Some(p.to_string())
            }
        }
        // A command may read anything.
        Tool::RunCommand => whole(),
        Tool::WriteFile | Tool::Finish => None,
    }
}
enum End {
    Finished(Value),
    Failed(String),
    Stopped,
}

/// One attempt in progress.
struct Agent<'a> {
    t: &'a AgentTask,
    config: &'a ExecConfig,
    req: &'a ExecRequest,
    provider: &'a Provider,
    provider_name: String,
    model: String,
    spec: Option<(String, String)>,
    allowed: BTreeSet<Tool>,
    tools: Vec<Value>,
    /// The image `run_command` runs in (the container engine), if any.
    image: Option<String>,
    /// The spec's `budget.tokens_per_task`.
    tokens_max: Option<u64>,
    saved: Saved,
    usage: Usage,
    attempt: AttemptDirs,
    /// Where the tools act: the worktree, or the attempt's own `work` directory.
    root: PathBuf,
}

/// The attempt's system prompt: the spec's, then how to work here.
fn system_prompt(spec_prompt: Option<&str>, role: &str, review: bool) -> String {
    let who = spec_prompt.map_or_else(|| format!("You are the {role} agent."), str::to_string);
    let end = if review {
        "When you have judged the change, call `finish` with your verdict (pass or fail) and specific reasons."
    } else {
        "When the work is done, call `finish` with a summary; your changes are committed and pushed for you."
    };
    format!("{who}\n\nYou work through the tools you are given, on the files of your workspace (paths relative to it). {end}")
}

pub(crate) async fn run(
    t: AgentTask,
    config: &ExecConfig,
    req: &ExecRequest,
    timeout: Option<Duration>,
    events: mpsc::Sender<ExecEvent>,
    control: mpsc::Receiver<Control>,
) -> ExecResult {
    if let Err(e) = t.check() {
        return ExecResult::failed(e);
    }
    let model = if t.model.is_empty() || t.model == "auto" { req.model.clone() } else { t.model.clone() };
    if model.is_empty() {
        return ExecResult::failed("payload.model: empty (or auto) and the task was routed to no model");
    }
    let image = match super::engine::choose(config, &t.engine, t.image.as_deref()) {
        Ok(image) => image,
        Err(e) => return ExecResult::failed(e),
    };
    let (provider_name, provider) = match super::llm::provider(&t.provider, None, config, req) {
        Ok(found) => found,
        Err(e) => return ExecResult::failed(e),
    };
    let spec = req.role.and_then(|r| config.specs.get(&r));
    // Without a spec, an agent may only look and finish.
    let allowed = match spec {
        Some(s) => Tool::allowed_by(&s.tools),
        None => [Tool::ReadFile, Tool::ListFiles, Tool::Search, Tool::Finish].into(),
    };
    let mut saved = req.resume.as_deref().and_then(|c| serde_json::from_slice::<Saved>(c).ok()).unwrap_or_default();
    // A resumed attempt starts from its work-in-progress commit, diffing against the first base.
    let start = saved.wip.clone().unwrap_or_else(|| t.start.clone());
    let base = if saved.base.is_empty() { t.base.clone() } else { saved.base.clone() };
    // A run of the pass after a gate sent it back (or escalated it) goes on from the branch
    // the last one pushed, so the reviewer's reasons apply to that work; the diff stays
    // against the first base.
    let prefer = t.branch.as_deref().filter(|_| saved.wip.is_none());
    let (attempt, root) =
        match AttemptDirs::prepare_files(config, req, t.repo.as_deref(), (&start, prefer), &base).await {
            Ok(ready) => ready,
            Err(e) => return ExecResult::failed(e),
        };
    if let Some(w) = &attempt.workspace {
        saved.base = w.base.clone();
    }
    if saved.messages.is_empty() {
        let role = req.role.as_ref().map_or("agent", |r| r.as_str());
        let system = system_prompt(spec.map(|s| s.prompt.as_str()), role, t.review);
        saved.messages =
            vec![json!({"role": "system", "content": system}), json!({"role": "user", "content": t.prompt})];
    }
    let mut agent = Agent {
        t: &t,
        config,
        req,
        provider,
        provider_name,
        model,
        spec: spec.map(|s| (s.name.clone(), s.version.clone())),
        tools: allowed.iter().map(|tool| tool.schema(t.review)).collect(),
        image,
        allowed,
        tokens_max: spec.and_then(|s| s.budget.tokens_per_task),
        saved,
        usage: Usage::default(),
        attempt,
        root,
    };
    if agent.saved.turns == 0 {
        if let Some(result) = agent.replay().await {
            agent.attempt.remove().await;
            return result;
        }
    }
    let end = match timeout {
        Some(limit) => tokio::time::timeout(limit, agent.converse(&events, control)).await.map_err(|_| limit),
        None => Ok(agent.converse(&events, control).await),
    };
    let result = match end {
        Ok(end) => agent.result(end).await,
        Err(limit) => ExecResult::timed_out(limit),
    };
    agent.attempt.remove().await;
    result
}

impl Agent<'_> {
    /// Turns until `finish`, a bound, or a stop.
    async fn converse(&mut self, events: &mpsc::Sender<ExecEvent>, mut control: mpsc::Receiver<Control>) -> End {
        loop {
            if self.saved.turns >= self.t.max_turns {
                return End::Failed(format!("no finish within payload.max_turns = {} turns", self.t.max_turns));
            }
            if let Some(b) = self.tokens_max.filter(|b| self.saved.tokens >= *b) {
                return End::Failed(format!(
                    "spent {} tokens, at the spec's budget.tokens_per_task of {b}",
                    self.saved.tokens
                ));
            }
            // The call owns its copy: a checkpoint may be taken while it is in flight.
            let (messages, tools) = (self.saved.messages.clone(), self.tools.clone());
            let (provider, model, max_tokens) = (self.provider, self.model.clone(), self.t.max_tokens);
            let call = async move { model::turn(provider, &model, &messages, &tools, max_tokens).await };
            tokio::pin!(call);
            let turn = loop {
                tokio::select! {
                    r = &mut call => break r,
                    c = control.recv() => {
                        self.checkpoint(events).await;
                        if c != Some(Control::Checkpoint) {
                            return End::Stopped;
                        }
                    }
                }
            };
            let turn = match turn {
                Ok(t) => t,
                Err(e) => return End::Failed(e),
            };
            self.saved.turns += 1;
            self.usage.add(&turn.usage);
            self.saved.tokens += turn.usage.input_tokens + turn.usage.output_tokens + turn.usage.cached_tokens;
            self.saved.messages.push(turn.message);
            if turn.calls.is_empty() {
                return End::Finished(json!({"summary": turn.text}));
            }
            let mut finished = None;
            let mut stage = Vec::new();
            for c in turn.calls {
                stage.push(c.name.clone());
                if c.name == Tool::Finish.name() {
                    finished = Some(c.args.clone());
                }
                if let Some(path) = read_by(&c.name, &c.args) {
                    if self.saved.reads.len() >= READS_LISTED_MAX {
                        self.saved.reads = BTreeSet::from([".".to_string()]);
                    } else if !self.saved.reads.contains(".") {
                        self.saved.reads.insert(path);
                    }
                }
                let (answer, refused) = self.bench().call(&c.name, &c.args).await;
                if let Some(mut why) = refused {
                    tracing::warn!(task = self.req.task, "{why}");
                    if self.saved.refused.len() < REFUSALS_LISTED_MAX {
                        truncate_at_char(&mut why, REFUSAL_BYTES_MAX);
                        self.saved.refused.push(why);
                    }
                }
                let answer = if c.name == Tool::Finish.name() { "done".to_string() } else { answer };
                self.saved.messages.push(json!({"role": "tool", "tool_call_id": c.id, "content": answer}));
            }
            let percent = (self.saved.turns * 100 / self.t.max_turns).min(99);
            let stage = format!("turn {}: {}", self.saved.turns, stage.join(", "));
            let _ = events.send(ExecEvent::Progress { percent, stage, usage: self.usage }).await;
            if let Some(args) = finished {
                return End::Finished(args);
            }
        }
    }

    fn bench(&self) -> Bench<'_> {
        Bench {
            root: &self.root,
            attempt_dir: &self.attempt.dir,
            config: self.config,
            req: self.req,
            allowed: &self.allowed,
            image: self.image.as_deref(),
        }
    }

    /// Commits the work in progress, pushes it to the checkpoint ref, and reports the
    /// transcript (old tool results cut down if it would not fit).
    async fn checkpoint(&mut self, events: &mpsc::Sender<ExecEvent>) {
        if let Some(w) = &self.attempt.workspace {
            let saved = async {
                w.commit(&format!("qm: work in progress of task {} (turn {})", self.req.task, self.saved.turns))
                    .await?;
                w.push(&checkpoint_ref(self.req.task)).await?;
                w.head().await
            };
            match saved.await {
                Ok(head) => self.saved.wip = Some(head),
                Err(e) => {
                    tracing::warn!(task = self.req.task, "checkpoint commit not saved: {e}");
                    return;
                }
            }
        }
        if let Some(data) = fit(&self.saved) {
            let _ = events.send(ExecEvent::Checkpoint(data)).await;
        }
    }

    /// The result of `end`: on success, the work committed and pushed and the output written.
    async fn result(&mut self, end: End) -> ExecResult {
        let args = match end {
            End::Failed(e) => {
                let mut r = ExecResult::failed(e);
                r.usage = self.usage;
                return r;
            }
            End::Stopped => return ExecResult::stopped(self.usage),
            End::Finished(args) => args,
        };
        let text = |k: &str| {
            let mut v = args.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            truncate_at_char(&mut v, SUMMARY_BYTES_MAX);
            v
        };
        let mut out = json!({
            "summary": text("summary"),
            "spec": self.spec.as_ref().map(|s| s.0.clone()),
            "spec_version": self.spec.as_ref().map(|s| s.1.clone()),
            "provider": self.provider_name,
            "model": self.model,
            "turns": self.saved.turns,
            "refused": self.saved.refused,
        });
        if let Some(w) = &self.attempt.workspace {
            let reads: Vec<String> = self.saved.reads.iter().cloned().collect();
            match w.read_digest(&reads).await {
                Ok(tree) => {
                    out["reads"] = json!(reads);
                    out["tree"] = json!(tree);
                }
                Err(e) => tracing::warn!(task = self.req.task, "the files read are not recorded for the cache: {e}"),
            }
        }
        if self.t.review {
            let verdict = text("verdict").to_ascii_lowercase();
            out["verdict"] = json!(if verdict == "pass" { "pass" } else { "fail" });
            out["reasons"] = json!(text("reasons"));
        }
        if let Err(e) = self.deliver(&mut out).await {
            let mut r = ExecResult::failed(e);
            r.usage = self.usage;
            return r;
        }
        let output = bounded(out, TASK_OUTPUT_BYTES_MAX);
        ExecResult { outcome: ExecOutcome::Succeeded, output, error: String::new(), usage: self.usage }
    }

    /// The coordinator's cached result of this pass, if the files it read hold the same
    /// content at this base: its change applied here (picked onto this base when the base
    /// moved), committed, pushed and described like a fresh one, with no model called.
    /// `None` when there is none, the files differ, or the change does not apply.
    async fn replay(&mut self) -> Option<ExecResult> {
        let cached = self.t.cached.as_ref()?;
        let w = self.attempt.workspace.as_ref()?;
        let reads: Vec<String> =
            cached["reads"].as_array()?.iter().filter_map(|v| v.as_str().map(String::from)).collect();
        let tree = cached["tree"].as_str()?;
        match w.read_digest(&reads).await {
            Ok(now) if now == tree => {}
            Ok(_) => {
                tracing::info!(task = self.req.task, "cache: the files the cached result read changed; running");
                return None;
            }
            Err(e) => {
                tracing::warn!(task = self.req.task, "cache: {e}; running");
                return None;
            }
        }
        let from = cached["commit"].as_str().map(String::from);
        if let (Some(commit), Some(old_base)) = (&from, cached["base"].as_str()) {
            if let Err(e) = w.replay(old_base, commit).await {
                tracing::info!(task = self.req.task, "cache: the cached change does not apply here ({e}); running");
                return None;
            }
        }
        let mut out = json!({});
        for k in
            ["summary", "verdict", "reasons", "spec", "spec_version", "provider", "model", "turns", "reads", "tree"]
        {
            if let Some(v) = cached.get(k) {
                out[k] = v.clone();
            }
        }
        out["refused"] = json!([]);
        out["replayed"] = json!(true);
        out["replayed_from"] = json!(from);
        if let Err(e) = self.deliver(&mut out).await {
            tracing::warn!(task = self.req.task, "cache: delivering the replayed change: {e}; running");
            return None;
        }
        tracing::info!(task = self.req.task, "cache: the files it read are unchanged; the cached change is replayed");
        let output = bounded(out, TASK_OUTPUT_BYTES_MAX);
        Some(ExecResult { outcome: ExecOutcome::Succeeded, output, error: String::new(), usage: Usage::default() })
    }

    /// Commits and pushes the workspace's changes (with a `branch`) and adds the branch,
    /// commit and diff to `out`.
    async fn deliver(&self, out: &mut Value) -> Result<(), String> {
        let Some(w) = &self.attempt.workspace else { return Ok(()) };
        let summary = out["summary"].as_str().unwrap_or_default().to_string();
        w.deliver(self.req.task, &summary, self.t.branch.as_deref(), DIFF_BYTES_MAX, out).await
    }
}

/// The output's JSON within `max` bytes, still JSON: while it is over, the longest of its
/// texts (the diff, the diff summary, the reasons, the summary) is cut by half, with a note,
/// and listed under `cut`. (The branch holds the whole change.)
pub(crate) fn bounded(mut out: Value, max: usize) -> Vec<u8> {
    const TEXTS: [&str; 4] = ["diff", "diffstat", "reasons", "summary"];
    const NOTE: &str = "\n… (cut to fit the output bound)";
    for _ in 0..64 {
        let bytes = serde_json::to_vec(&out).expect("json");
        if bytes.len() <= max {
            return bytes;
        }
        let longest = TEXTS.into_iter().max_by_key(|k| out[*k].as_str().map_or(0, str::len)).unwrap_or("diff");
        let mut text = out[longest].as_str().unwrap_or_default().to_string();
        if text.len() <= NOTE.len() {
            break;
        }
        let half = text.len() / 2;
        truncate_at_char(&mut text, half);
        text.push_str(NOTE);
        out[longest] = json!(text);
        match out["cut"].as_array_mut() {
            Some(cut) if !cut.iter().any(|c| c == longest) => cut.push(json!(longest)),
            Some(_) => {}
            None => out["cut"] = json!([longest]),
        }
    }
    // Unreachable with the bounds above (every other field is small); still JSON if it were.
    serde_json::to_vec(&json!({"summary": "the output did not fit its bound", "cut": TEXTS})).expect("json")
}

/// The checkpoint's bytes, within `TASK_CHECKPOINT_BYTES_MAX`: the oldest tool results are
/// cut to a note until it fits; `None` if even that is not enough.
fn fit(saved: &Saved) -> Option<Vec<u8>> {
    let mut s = saved.clone();
    let mut i = 0;
    loop {
        let data = serde_json::to_vec(&s).expect("json");
        if data.len() <= TASK_CHECKPOINT_BYTES_MAX {
            return Some(data);
        }
        let next = s.messages.iter().skip(i).position(|m| m["role"] == "tool" && m["content"] != ELIDED)?;
        i += next;
        s.messages[i]["content"] = json!(ELIDED);
        i += 1;
    }
}

/// What a tool result cut from a checkpoint says.
const ELIDED: &str = "[result dropped from the checkpoint to fit; call the tool again if you need it]";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_too_large_drops_the_oldest_tool_results_first() {
        let big = "x".repeat(100 * 1024);
        let mut saved = Saved::default();
        for i in 0..4 {
            saved.messages.push(json!({"role": "tool", "tool_call_id": i.to_string(), "content": big}));
        }
        let data = fit(&saved).expect("fits once two results are dropped");
        let back: Saved = serde_json::from_slice(&data).unwrap();
        assert!(data.len() <= TASK_CHECKPOINT_BYTES_MAX);
        assert_eq!(back.messages[0]["content"], ELIDED);
        assert_eq!(back.messages[1]["content"], ELIDED);
        assert_eq!(back.messages[3]["content"], big.as_str());
    }

    #[test]
    fn an_output_over_its_bound_is_cut_field_by_field_and_stays_json() {
        let stat: String = (0..20_000).map(|i| format!(" src/file{i}.rs | 1 +\n")).collect();
        let out = json!({"summary": "s", "diff": "d".repeat(DIFF_BYTES_MAX), "diffstat": stat, "turns": 3});
        let bytes = bounded(out, TASK_OUTPUT_BYTES_MAX);
        assert!(bytes.len() <= TASK_OUTPUT_BYTES_MAX, "{}", bytes.len());
        let back: Value = serde_json::from_slice(&bytes).expect("still JSON");
        assert_eq!(back["cut"], json!(["diffstat"]));
        assert!(back["diffstat"].as_str().unwrap().ends_with("(cut to fit the output bound)"));
        assert_eq!((back["summary"].as_str(), back["turns"].as_u64()), (Some("s"), Some(3)));
        // Within the bound: untouched.
        let small = json!({"summary": "s", "diff": "d"});
        assert_eq!(bounded(small.clone(), TASK_OUTPUT_BYTES_MAX), serde_json::to_vec(&small).unwrap());
    }

    #[test]
    fn payload_bounds_name_the_field() {
        let t = |turns, branch: Option<&str>| AgentTask {
            prompt: "p".into(),
            provider: String::new(),
            model: String::new(),
            repo: None,
            start: String::new(),
            base: String::new(),
            branch: branch.map(str::to_string),
            review: false,
            engine: String::new(),
            image: None,
            max_turns: turns,
            max_tokens: 100,
            cached: None,
        };
        assert!(t(0, None).check().unwrap_err().starts_with("payload.max_turns: 0 is outside 1..=200"));
        assert!(t(5, Some("main")).check().unwrap_err().starts_with("payload.branch:"));
        t(5, Some("qm/j1/implement")).check().unwrap();
    }
}
