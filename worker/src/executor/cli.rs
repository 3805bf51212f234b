//! The `cli` executor: an existing coding-agent CLI run non-interactively in the attempt's
//! workspace, off unless the worker enables it and names the CLI.
//!
//! The worker configures each CLI (`qm worker run --agent-cli NAME[=TEMPLATE]`): a shell
//! template in which `"$QM_PROMPT"` is the task's prompt (passed in the environment, so it
//! is never parsed by the shell), and how to read its output. Built in:
//!
//! | name | template | output |
//! |---|---|---|
//! | `claude` | `claude -p "$QM_PROMPT" --output-format json` | Claude Code's JSON result: `result`, `usage`, `total_cost_usd`, `is_error` |
//! | `codex` | `codex exec --full-auto "$QM_PROMPT"` | text; usage estimated |
//! | `aider` | `aider --yes-always --no-auto-commits --message "$QM_PROMPT"` | text; usage estimated |
//! | `opencode` | `opencode run "$QM_PROMPT"` | text; usage estimated |
//!
//! The CLI runs as a `command` does (process group, cleared environment plus `--pass-env`,
//! limits); its credentials are the variables the worker passes it. Usage and cost come from
//! the CLI's documented JSON where it gives them (the cost is charged as reported); otherwise
//! the tokens are estimated from the text (4 bytes a token) and marked estimated. On success
//! the workspace's changes are committed and pushed to the payload's `branch`, as the `agent`
//! executor does.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::agent::{DIFF_BYTES_MAX, SUMMARY_BYTES_MAX};
use super::workspace::check_branch;
use super::{command, truncate_at_char, ExecConfig, ExecOutcome, ExecRequest, ExecResult, Usage};

/// How long a CLI may run when the task sets no timeout.
const CLI_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3_600);

/// How a CLI's standard output is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CliFormat {
    /// Claude Code's `--output-format json` result object.
    ClaudeJson,
    /// Plain text: the summary; usage estimated.
    Text,
}

/// A coding-agent CLI as this worker runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CliTool {
    /// A `/bin/sh -c` template; `"$QM_PROMPT"` is the prompt.
    pub template: String,
    pub format: CliFormat,
}

/// The built-in adapters, by name.
pub fn built_in(name: &str) -> Option<CliTool> {
    let (template, format) = match name {
        "claude" => (r#"claude -p "$QM_PROMPT" --output-format json"#, CliFormat::ClaudeJson),
        "codex" => (r#"codex exec --full-auto "$QM_PROMPT""#, CliFormat::Text),
        "aider" => (r#"aider --yes-always --no-auto-commits --message "$QM_PROMPT""#, CliFormat::Text),
        "opencode" => (r#"opencode run "$QM_PROMPT""#, CliFormat::Text),
        _ => return None,
    };
    Some(CliTool { template: template.to_string(), format })
}

/// The built-in adapters' names.
pub const BUILT_IN: [&str; 4] = ["claude", "codex", "aider", "opencode"];

/// The cli executor's parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CliTask {
    /// A CLI this worker configures (`--agent-cli`).
    pub tool: String,
    pub prompt: String,
    /// As the `agent` executor's: the repository, where to start, the diff's base, the branch
    /// to push.
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub start: String,
    #[serde(default)]
    pub base: String,
    #[serde(default)]
    pub branch: Option<String>,
}

/// Runs the CLI in a workspace of its own, then delivers the change.
pub(crate) async fn run(c: CliTask, config: &ExecConfig, req: &ExecRequest, timeout: Option<Duration>) -> ExecResult {
    let Some(tool) = config.clis.get(&c.tool) else {
        let known: Vec<&str> = config.clis.keys().map(String::as_str).collect();
        return ExecResult::failed(format!(
            "payload.tool: {:?} is not a CLI of this worker (its CLIs: {}; add one with `qm worker run --agent-cli NAME`)",
            c.tool,
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        ));
    };
    if let Some(b) = &c.branch {
        if let Err(e) = check_branch(b) {
            return ExecResult::failed(e);
        }
    }
    let (dirs, cwd) =
        match super::AttemptDirs::prepare_files(config, req, c.repo.as_deref(), (&c.start, None), &c.base).await {
            Ok(ready) => ready,
            Err(e) => return ExecResult::failed(e),
        };
    let mut with_prompt = req.clone();
    with_prompt.env.push(("QM_PROMPT".to_string(), c.prompt.clone()));
    let limit = timeout.unwrap_or(CLI_TIMEOUT_DEFAULT);
    let ran = command::run_once(&tool.template, &cwd, &dirs.dir, config, &with_prompt, limit).await;
    let mut result = read(tool.format, &c, ran);
    if result.outcome == ExecOutcome::Succeeded {
        if let Some(w) = &dirs.workspace {
            let mut out: Value = serde_json::from_slice(&result.output).unwrap_or_else(|_| json!({}));
            let summary = out["summary"].as_str().unwrap_or_default().to_string();
            match w.deliver(req.task, &summary, c.branch.as_deref(), DIFF_BYTES_MAX, &mut out).await {
                Ok(()) => result.output = super::agent::bounded(out, qm_shared::limits::TASK_OUTPUT_BYTES_MAX),
                Err(e) => {
                    result = ExecResult { outcome: ExecOutcome::Failed, output: Vec::new(), error: e, ..result };
                }
            }
        }
    }
    dirs.remove().await;
    result
}

/// The attempt's result from the CLI's run: output, usage and cost as its format gives them.
fn read(format: CliFormat, c: &CliTask, ran: ExecResult) -> ExecResult {
    if ran.outcome == ExecOutcome::TimedOut {
        return ran;
    }
    let text = String::from_utf8_lossy(&ran.output).into_owned();
    let (summary, usage, is_error) = match format {
        CliFormat::ClaudeJson => match claude_result(&text) {
            Some(r) => r,
            None => (text.clone(), estimate(&c.prompt, &text), ran.outcome != ExecOutcome::Succeeded),
        },
        CliFormat::Text => (text.clone(), estimate(&c.prompt, &text), false),
    };
    let mut summary = summary;
    truncate_at_char(&mut summary, SUMMARY_BYTES_MAX);
    let output = serde_json::to_vec(&json!({"summary": summary, "tool": c.tool, "usage_estimated": usage.estimated}))
        .expect("json");
    let outcome =
        if ran.outcome == ExecOutcome::Succeeded && !is_error { ExecOutcome::Succeeded } else { ExecOutcome::Failed };
    let error = match outcome {
        ExecOutcome::Succeeded => String::new(),
        _ if !ran.error.is_empty() => ran.error,
        _ => format!("{} reported an error: {}", c.tool, summary.lines().next().unwrap_or_default()),
    };
    ExecResult { outcome, output, error, usage }
}

/// Tokens estimated from text, marked so.
fn estimate(prompt: &str, answer: &str) -> Usage {
    Usage {
        input_tokens: (prompt.len() as u64).div_ceil(4),
        output_tokens: (answer.len() as u64).div_ceil(4),
        cached_tokens: 0,
        estimated: true,
        reported_micros: None,
    }
}

/// Claude Code's JSON result (`claude -p --output-format json`): the result text, its usage
/// and cost, and whether it is an error. `None` when the output is not that object.
fn claude_result(text: &str) -> Option<(String, Usage, bool)> {
    // The result is the last JSON object printed (a CLI may print notices before it).
    let v: Value =
        text.lines().rev().find_map(|l| serde_json::from_str::<Value>(l.trim()).ok().filter(Value::is_object))?;
    if v.get("type").and_then(Value::as_str) != Some("result") {
        return None;
    }
    let n = |p: &str| v.pointer(p).and_then(Value::as_u64);
    let usage = Usage {
        input_tokens: n("/usage/input_tokens").unwrap_or(0) + n("/usage/cache_creation_input_tokens").unwrap_or(0),
        output_tokens: n("/usage/output_tokens").unwrap_or(0),
        cached_tokens: n("/usage/cache_read_input_tokens").unwrap_or(0),
        estimated: v.get("usage").is_none(),
        reported_micros: v.get("total_cost_usd").and_then(Value::as_f64).map(|d| (d.max(0.0) * 1e6).round() as u64),
    };
    let is_error = v.get("is_error").and_then(Value::as_bool).unwrap_or(false)
        || v.get("subtype").and_then(Value::as_str).is_some_and(|s| s != "success");
    let result = v.get("result").and_then(Value::as_str).unwrap_or_default().to_string();
    Some((result, usage, is_error))
}

/// The CLIs of `--agent-cli` flags: `NAME` (a built-in) or `NAME=TEMPLATE` (text output).
pub fn parse_flags(flags: &[String]) -> Result<BTreeMap<String, CliTool>, String> {
    let mut clis = BTreeMap::new();
    for f in flags {
        let (name, tool) = match f.split_once('=') {
            Some((name, template)) if !template.trim().is_empty() => {
                (name, CliTool { template: template.to_string(), format: CliFormat::Text })
            }
            Some(_) => return Err(format!("--agent-cli {f:?}: the template is empty")),
            None => (
                f.as_str(),
                built_in(f).ok_or_else(|| {
                    format!("--agent-cli {f:?}: not a built-in CLI ({}); give NAME=TEMPLATE", BUILT_IN.join(", "))
                })?,
            ),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(format!("--agent-cli {f:?}: NAME must be letters, digits, . _ -"));
        }
        if clis.insert(name.to_string(), tool).is_some() {
            return Err(format!("--agent-cli {f:?}: {name} is given twice"));
        }
    }
    Ok(clis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_s_json_result_gives_usage_and_its_own_cost() {
        let out =
            "notice: something\n{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"done\",\
                   \"total_cost_usd\":0.0123,\"usage\":{\"input_tokens\":10,\"cache_creation_input_tokens\":90,\
                   \"cache_read_input_tokens\":500,\"output_tokens\":40}}\n";
        let (text, u, err) = claude_result(out).unwrap();
        assert_eq!((text.as_str(), err), ("done", false));
        assert_eq!((u.input_tokens, u.output_tokens, u.cached_tokens, u.estimated), (100, 40, 500, false));
        assert_eq!(u.reported_micros, Some(12_300));
        let (_, _, err) = claude_result(r#"{"type":"result","subtype":"error_max_turns","is_error":true}"#).unwrap();
        assert!(err);
        assert!(claude_result("plain text").is_none());
    }

    #[test]
    fn flags_name_a_built_in_or_give_a_template() {
        let clis = parse_flags(&["claude".into(), "mine=my-agent --go \"$QM_PROMPT\"".into()]).unwrap();
        assert_eq!(clis["claude"].format, CliFormat::ClaudeJson);
        assert_eq!(clis["mine"], CliTool { template: "my-agent --go \"$QM_PROMPT\"".into(), format: CliFormat::Text });
        assert!(parse_flags(&["nope".into()]).unwrap_err().contains("not a built-in CLI"));
        assert!(parse_flags(&["a b=x".into()]).unwrap_err().contains("NAME must be"));
    }
}
