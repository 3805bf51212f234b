//! The tools an agent's model may call, inside the attempt's workspace.
//!
//! A spec's `tools` (Claude Code names) decide which are offered: `Read` → `read_file`,
//! `Glob` → `list_files`, `Grep` → `search`, `Write` → `write_file`, `Edit` → `edit_file`,
//! `Bash` → `run_command`. `finish` is always offered. A call to a tool the spec does not
//! allow is refused (the model is told why, and the refusal is recorded in the attempt's
//! output); the attempt goes on. Every path is relative to the workspace: absolute paths,
//! `..`, `.git` and symbolic links that lead out are refused. Every answer is bounded.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::super::{command, engine};
use super::super::{ExecConfig, ExecOutcome, ExecRequest, Kind};

/// Bytes of a file, a listing, a search or a command's output a tool answers with.
pub(crate) const ANSWER_BYTES_MAX: usize = 16 * 1024;
/// Bytes a write or an edit may make a file.
const FILE_BYTES_MAX: usize = 1024 * 1024;
/// Entries a listing walks.
const LIST_ENTRIES_MAX: usize = 2_000;
/// Files a search reads.
const SEARCH_FILES_MAX: usize = 5_000;
/// How long one `run_command` may take.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Tool {
    ReadFile,
    ListFiles,
    Search,
    WriteFile,
    EditFile,
    RunCommand,
    Finish,
}

impl Tool {
    pub(crate) const ALL: [Tool; 7] = [
        Tool::ReadFile,
        Tool::ListFiles,
        Tool::Search,
        Tool::WriteFile,
        Tool::EditFile,
        Tool::RunCommand,
        Tool::Finish,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Tool::ReadFile => "read_file",
            Tool::ListFiles => "list_files",
            Tool::Search => "search",
            Tool::WriteFile => "write_file",
            Tool::EditFile => "edit_file",
            Tool::RunCommand => "run_command",
            Tool::Finish => "finish",
        }
    }

    /// The spec's name for it (Claude Code's tool names); `None` for `finish`.
    fn spec_name(self) -> Option<&'static str> {
        Some(match self {
            Tool::ReadFile => "Read",
            Tool::ListFiles => "Glob",
            Tool::Search => "Grep",
            Tool::WriteFile => "Write",
            Tool::EditFile => "Edit",
            Tool::RunCommand => "Bash",
            Tool::Finish => return None,
        })
    }

    pub(crate) fn parse(name: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The tools a spec's `tools` list allows (`finish` always).
    pub(crate) fn allowed_by(spec_tools: &[String]) -> BTreeSet<Tool> {
        Tool::ALL
            .into_iter()
            .filter(|t| t.spec_name().is_none_or(|n| spec_tools.iter().any(|s| s.eq_ignore_ascii_case(n))))
            .collect()
    }

    /// The OpenAI function definition.
    pub(crate) fn schema(self, review: bool) -> Value {
        let s = |p: &str| json!({"type": "string", "description": p});
        let (description, properties, required): (&str, Value, Vec<&str>) = match self {
            Tool::ReadFile => (
                "Read a text file of the workspace (at most 16 KiB are returned).",
                json!({"path": s("relative path in the workspace")}),
                vec!["path"],
            ),
            Tool::ListFiles => (
                "List the files under a directory of the workspace, recursively.",
                json!({"path": s("relative directory; empty for the whole workspace")}),
                vec![],
            ),
            Tool::Search => (
                "Find the lines that contain a text, as path:line: text.",
                json!({"pattern": s("the text to find (literal)"), "path": s("relative directory to search; empty for all")}),
                vec!["pattern"],
            ),
            Tool::WriteFile => (
                "Create or replace a file of the workspace with the given content.",
                json!({"path": s("relative path"), "content": s("the whole new content")}),
                vec!["path", "content"],
            ),
            Tool::EditFile => (
                "Replace the one occurrence of old_text in a file by new_text.",
                json!({"path": s("relative path"), "old_text": s("text that occurs exactly once"), "new_text": s("its replacement")}),
                vec!["path", "old_text", "new_text"],
            ),
            Tool::RunCommand => (
                "Run a shell command in the workspace (the worker's limits apply); returns its exit status and output.",
                json!({"command": s("the command, run with /bin/sh -c")}),
                vec!["command"],
            ),
            Tool::Finish if review => (
                "End the review with a verdict: pass when the change meets the criteria, fail otherwise.",
                json!({"verdict": {"type": "string", "enum": ["pass", "fail"]}, "reasons": s("why, specifically")}),
                vec!["verdict", "reasons"],
            ),
            Tool::Finish => (
                "End the task: say what was done. Changes to files are committed and pushed for you.",
                json!({"summary": s("what was done and why")}),
                vec!["summary"],
            ),
        };
        json!({"type": "function", "function": {
            "name": self.name(), "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        }})
    }
}

/// Where tools act, and what they may do.
pub(crate) struct Bench<'a> {
    pub root: &'a Path,
    /// The attempt's directory (the checkpoint file of a command goes there, outside the
    /// workspace).
    pub attempt_dir: &'a Path,
    pub config: &'a ExecConfig,
    pub req: &'a ExecRequest,
    pub allowed: &'a BTreeSet<Tool>,
    /// Commands run in a container of this image (the container engine), else locally.
    pub image: Option<&'a str>,
}

impl Bench<'_> {
    /// Runs one call; the answer for the model (an error is an answer too, prefixed `error:`),
    /// and whether it was refused by the spec or the worker.
    pub(crate) async fn call(&self, name: &str, args: &Value) -> (String, Option<String>) {
        let Some(tool) = Tool::parse(name) else {
            let known: Vec<&str> = self.allowed.iter().map(|t| t.name()).collect();
            return (format!("error: no tool {name:?}; the tools are: {}", known.join(", ")), None);
        };
        if !self.allowed.contains(&tool) {
            let why = format!(
                "{name}: refused: the agent's spec does not allow `{}`",
                tool.spec_name().unwrap_or(tool.name())
            );
            return (format!("error: {why}"), Some(why));
        }
        if tool == Tool::RunCommand && !self.config.enabled.contains(&Kind::Command) {
            let why = format!(
                "{name}: refused: this worker does not run commands (start it with `--enable-executor command`)"
            );
            return (format!("error: {why}"), Some(why));
        }
        let text = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or_default();
        let answer = match tool {
            Tool::ReadFile => self.read(text("path")).await,
            Tool::ListFiles => self.list(text("path")).await,
            Tool::Search => self.search(text("pattern"), text("path")).await,
            Tool::WriteFile => self.write(text("path"), text("content")).await,
            Tool::EditFile => self.edit(text("path"), text("old_text"), text("new_text")).await,
            Tool::RunCommand => Ok(self.run(text("command")).await),
            Tool::Finish => Ok(String::new()),
        };
        let mut answer = answer.unwrap_or_else(|e| format!("error: {e}"));
        super::super::truncate_at_char(&mut answer, ANSWER_BYTES_MAX);
        (answer, None)
    }

    /// `rel` inside the workspace: relative, no `..`, not in `.git`, and (for what exists)
    /// not leaving it through a symbolic link.
    fn path(&self, rel: &str) -> Result<PathBuf, String> {
        let mut parts = Vec::new();
        for c in Path::new(rel).components() {
            match c {
                Component::Normal(p) => parts.push(p),
                Component::CurDir => {}
                _ => return Err(format!("path {rel:?}: refused: give a path relative to the workspace, without `..`")),
            }
        }
        if parts.first().is_some_and(|p| *p == ".git") {
            return Err(format!("path {rel:?}: refused: the repository's own files are not the agent's"));
        }
        let full = parts.iter().fold(self.root.to_path_buf(), |p, c| p.join(c));
        // The deepest part that exists must resolve inside the workspace.
        let root = self.root.canonicalize().map_err(|e| format!("workspace: {e}"))?;
        let mut probe = full.clone();
        while !probe.exists() && probe.pop() {}
        let real = probe.canonicalize().map_err(|e| format!("path {rel:?}: {e}"))?;
        if !real.starts_with(&root) {
            return Err(format!("path {rel:?}: refused: it leads out of the workspace"));
        }
        Ok(full)
    }

    async fn read(&self, rel: &str) -> Result<String, String> {
        let path = self.path(rel)?;
        let bytes = tokio::fs::read(&path).await.map_err(|e| format!("{rel}: {e}"))?;
        let whole = bytes.len();
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if whole > ANSWER_BYTES_MAX {
            super::super::truncate_at_char(&mut text, ANSWER_BYTES_MAX - 100);
            text.push_str(&format!("\n[truncated: {whole} bytes in all]"));
        }
        Ok(text)
    }

    async fn list(&self, rel: &str) -> Result<String, String> {
        let start = self.path(rel)?;
        let root = self.root.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, &start, &mut |p| {
                out.push(p.to_string());
                out.len() < LIST_ENTRIES_MAX
            });
            out.sort();
            out.join("\n")
        })
        .await
        .map_err(|e| e.to_string())
    }

    async fn search(&self, pattern: &str, rel: &str) -> Result<String, String> {
        if pattern.is_empty() {
            return Err("pattern: empty".into());
        }
        let start = self.path(rel)?;
        let (root, pattern) = (self.root.to_path_buf(), pattern.to_string());
        tokio::task::spawn_blocking(move || {
            let mut files = Vec::new();
            walk(&root, &start, &mut |p| {
                files.push(p.to_string());
                files.len() < SEARCH_FILES_MAX
            });
            files.sort();
            let mut out = String::new();
            for f in files {
                let Ok(text) = std::fs::read_to_string(root.join(&f)) else { continue };
                for (n, line) in text.lines().enumerate().filter(|(_, l)| l.contains(&pattern)) {
                    out.push_str(&format!("{f}:{}: {line}\n", n + 1));
                    if out.len() > ANSWER_BYTES_MAX {
                        return out;
                    }
                }
            }
            if out.is_empty() {
                out = "no match".into();
            }
            out
        })
        .await
        .map_err(|e| e.to_string())
    }

    async fn write(&self, rel: &str, content: &str) -> Result<String, String> {
        if content.len() > FILE_BYTES_MAX {
            return Err(format!("content: {} bytes is over the limit of {FILE_BYTES_MAX}", content.len()));
        }
        let path = self.path(rel)?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(|e| format!("{rel}: {e}"))?;
        }
        tokio::fs::write(&path, content).await.map_err(|e| format!("{rel}: {e}"))?;
        Ok(format!("wrote {rel} ({} bytes)", content.len()))
    }

    async fn edit(&self, rel: &str, old: &str, new: &str) -> Result<String, String> {
        if old.is_empty() {
            return Err("old_text: empty; give text that occurs once in the file".into());
        }
        let path = self.path(rel)?;
        let text = tokio::fs::read_to_string(&path).await.map_err(|e| format!("{rel}: {e}"))?;
        match text.matches(old).count() {
            1 => {}
            0 => return Err(format!("old_text does not occur in {rel}")),
            n => return Err(format!("old_text occurs {n} times in {rel}; give more context so it occurs once")),
        }
        let edited = text.replacen(old, new, 1);
        if edited.len() > FILE_BYTES_MAX {
            return Err(format!("{rel} would be {} bytes, over the limit of {FILE_BYTES_MAX}", edited.len()));
        }
        tokio::fs::write(&path, edited).await.map_err(|e| format!("{rel}: {e}"))?;
        Ok(format!("edited {rel}"))
    }

    async fn run(&self, cmd: &str) -> String {
        let r = match self.image {
            Some(image) => {
                // No control reaches a tool's command: the attempt's own stop drops it.
                let (_keep, mut control) = tokio::sync::mpsc::channel(1);
                let (root, config, req) = (self.root, self.config, self.req);
                engine::run_in_container(image, cmd, root, config, req, COMMAND_TIMEOUT, &mut control).await
            }
            None => command::run_once(cmd, self.root, self.attempt_dir, self.config, self.req, COMMAND_TIMEOUT).await,
        };
        let status = match r.outcome {
            ExecOutcome::Succeeded => "exit status 0".to_string(),
            ExecOutcome::TimedOut => format!("timed out after {} s", COMMAND_TIMEOUT.as_secs()),
            _ => "failed".to_string(),
        };
        format!("{status}\nstdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&r.output), r.error)
    }
}

/// Calls `each` with the workspace-relative path of every file under `dir` (not `.git`, not
/// through symbolic links) until it returns false.
fn walk(root: &Path, dir: &Path, each: &mut dyn FnMut(&str) -> bool) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return true };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(kind) = e.file_type() else { continue };
        let path = e.path();
        if e.file_name() == ".git" || kind.is_symlink() {
            continue;
        }
        if kind.is_dir() {
            if !walk(root, &path, each) {
                return false;
            }
        } else if let Ok(rel) = path.strip_prefix(root) {
            if !each(&rel.to_string_lossy()) {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_s_tools_decide_what_is_offered() {
        let names = |tools: &[&str]| -> Vec<&str> {
            let tools: Vec<String> = tools.iter().map(|s| s.to_string()).collect();
            Tool::allowed_by(&tools).into_iter().map(Tool::name).collect()
        };
        assert_eq!(names(&["Read", "Grep", "Glob"]), ["read_file", "list_files", "search", "finish"]);
        assert_eq!(
            names(&["Read", "Edit", "Write", "Grep", "Glob", "Bash"]),
            ["read_file", "list_files", "search", "write_file", "edit_file", "run_command", "finish"]
        );
        assert_eq!(names(&[]), ["finish"]);
    }
}
