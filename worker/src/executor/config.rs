//! What the worker's own configuration allows its executors: which ones run, what a child
//! process inherits, where attempts work, their resource limits, and the model providers
//! with their URLs and keys. Built once from `qm worker run`'s flags; a task payload can read
//! none of it and change none of it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use qm_shared::limits::{
    EXEC_CPU_SECS_DEFAULT, EXEC_KILL_GRACE_MS_DEFAULT, EXEC_MEMORY_BYTES_DEFAULT, EXEC_OPEN_FILES_DEFAULT,
    EXEC_OUTPUT_BYTES_DEFAULT,
};

use qm_shared::Role;

use super::cli::CliTool;
use super::engine::{ContainerLimits, Engine};
use super::llm::Api;
use crate::spec::AgentSpec;

/// The worker environment variables a child sees when the worker names none
/// (`qm worker run --pass-env`).
pub const PASS_ENV_DEFAULT: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

/// An executor that is off unless the worker enables it (`scripted` is always on: it runs
/// nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Command,
    Llm,
    Agent,
    Cli,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Command, Kind::Llm, Kind::Agent, Kind::Cli];

    /// The payload's `executor` name, if it is one that must be enabled.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Command => "command",
            Kind::Llm => "llm",
            Kind::Agent => "agent",
            Kind::Cli => "cli",
        }
    }

    /// What enabling it lets a task do.
    pub fn what(self) -> &'static str {
        match self {
            Kind::Command => "it runs shell commands chosen by the task",
            Kind::Llm => "it calls this worker's model providers with their API keys",
            Kind::Agent => {
                "it lets a model read and edit files in the attempt's workspace, and push branches \
                 under qm/ to this worker's repositories"
            }
            Kind::Cli => "it runs coding-agent CLIs (which run commands of their own) in the attempt's workspace",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resource limits of one attempt's processes; 0 means unlimited (the worker's own limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// CPU seconds of each process (RLIMIT_CPU).
    pub cpu_secs: u64,
    /// Address space of each process, bytes (RLIMIT_AS).
    pub memory_bytes: u64,
    /// Open file descriptors of each process (RLIMIT_NOFILE).
    pub open_files: u64,
    /// Bytes of stdout kept as the output (and of stderr kept for the error); the rest is
    /// drained, counted and reported as truncated.
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_secs: EXEC_CPU_SECS_DEFAULT,
            memory_bytes: EXEC_MEMORY_BYTES_DEFAULT,
            open_files: EXEC_OPEN_FILES_DEFAULT,
            output_bytes: EXEC_OUTPUT_BYTES_DEFAULT,
        }
    }
}

/// A value never printed: `Debug` shows `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A model provider as the worker reaches it (`--provider NAME=KIND:URL`, and
/// `--provider-key-env NAME=VAR` for its key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    pub api: Api,
    /// e.g. `http://127.0.0.1:8080/v1` (OpenAI-compatible) or `https://api.anthropic.com`.
    pub base_url: String,
    pub api_key: Option<Secret>,
}

/// Everything an executor may use, from the worker's configuration.
#[derive(Clone)]
pub struct ExecConfig {
    /// Executors beyond `scripted` that tasks may use.
    pub enabled: BTreeSet<Kind>,
    /// The only worker environment a child sees (names and values, read at startup), besides
    /// the `QM_*` variables of its attempt.
    pub pass_env: Vec<(String, OsString)>,
    /// Each attempt works in `<work_root>/task-<id>-attempt-<n>`, created for it and removed
    /// after it.
    pub work_root: PathBuf,
    pub limits: Limits,
    /// Limits of the attempts of agents of a role, instead of `limits` (`--role-limit`).
    pub role_limits: BTreeMap<Role, Limits>,
    /// After SIGTERM to an attempt's process group (stop, cancel, timeout), how long before
    /// SIGKILL.
    pub kill_grace: Duration,
    /// Model providers by name.
    pub providers: BTreeMap<String, Provider>,
    /// Repositories this worker may work in, by name → URL (`--repo NAME=URL`); a payload
    /// names one, never a URL.
    pub repos: BTreeMap<String, String>,
    /// The spec that drives the agents of each role (`--agents DIR`): system prompt, tools,
    /// name and version.
    pub specs: BTreeMap<Role, Arc<AgentSpec>>,
    /// Coding-agent CLIs the `cli` executor may run, by name (`--agent-cli`).
    pub clis: BTreeMap<String, CliTool>,
    /// Engines beyond `local` this worker offers (`--engine container`).
    pub engines: BTreeSet<Engine>,
    /// What containers may use (`--container-*`).
    pub container: ContainerLimits,
}

impl std::fmt::Debug for ExecConfig {
    /// Names only: the values of passed variables and keys are not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecConfig")
            .field("enabled", &self.enabled)
            .field("pass_env", &self.pass_env.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field("work_root", &self.work_root)
            .field("limits", &self.limits)
            .field("role_limits", &self.role_limits)
            .field("kill_grace", &self.kill_grace)
            .field("providers", &self.providers)
            .field("repos", &self.repos.keys().collect::<Vec<_>>())
            .field("specs", &self.specs.values().map(|s| (&s.name, &s.version)).collect::<Vec<_>>())
            .field("clis", &self.clis.keys().collect::<Vec<_>>())
            .field("engines", &self.engines)
            .field("container", &self.container)
            .finish()
    }
}

impl ExecConfig {
    /// The limits of an attempt of an agent of `role`: the role's, else the worker's.
    pub fn limits_for(&self, role: Option<Role>) -> Limits {
        role.and_then(|r| self.role_limits.get(&r)).copied().unwrap_or(self.limits)
    }
}

impl Default for ExecConfig {
    /// Only `scripted`; no environment passed; default limits; no providers.
    fn default() -> Self {
        ExecConfig {
            enabled: BTreeSet::new(),
            pass_env: Vec::new(),
            work_root: std::env::temp_dir().join("qm-work-default"),
            limits: Limits::default(),
            role_limits: BTreeMap::new(),
            kill_grace: Duration::from_millis(EXEC_KILL_GRACE_MS_DEFAULT),
            providers: BTreeMap::new(),
            repos: BTreeMap::new(),
            specs: BTreeMap::new(),
            clis: BTreeMap::new(),
            engines: BTreeSet::new(),
            container: ContainerLimits::default(),
        }
    }
}

impl ExecConfig {
    /// `names` with their values in this process's environment (unset ones are left out).
    pub fn pass_env_from_process<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<(String, OsString)> {
        names.into_iter().filter_map(|n| std::env::var_os(n).map(|v| (n.to_string(), v))).collect()
    }

    /// The default work root of worker `node_id`: `<temp dir>/qm-work-<node id>` (characters
    /// outside `[A-Za-z0-9._-]` become `_`), one per worker so no two users share a parent.
    pub fn default_work_root(node_id: &str) -> PathBuf {
        let safe: String =
            node_id.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
        std::env::temp_dir().join(format!("qm-work-{safe}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_and_work_roots_stay_under_the_temp_dir() {
        let p = Provider { api: Api::Openai, base_url: "http://x".into(), api_key: Some(Secret::new("sk-123".into())) };
        assert!(!format!("{p:?}").contains("sk-123"), "{p:?}");
        let config = ExecConfig {
            pass_env: vec![("TOKEN".into(), "hunter2".into())],
            providers: [("p".to_string(), p)].into(),
            ..ExecConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(shown.contains("TOKEN") && !shown.contains("hunter2") && !shown.contains("sk-123"), "{shown}");
        let tmp = std::env::temp_dir();
        assert_eq!(ExecConfig::default_work_root("../../etc"), tmp.join("qm-work-.._.._etc"));
        assert_eq!(ExecConfig::default_work_root("box 1"), tmp.join("qm-work-box_1"));
    }
}
