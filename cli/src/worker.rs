//! `qm worker run|list`: its arguments and handlers. A worker node hosts agent slots and
//! runs the tasks the coordinators assign it.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Subcommand;
use qm_shared::client::Client;
use qm_shared::limits;
use qm_shared::pb::v1 as pb;
use qm_shared::Role;
use qm_worker::executor::engine::{ContainerLimits, Engine};
use qm_worker::executor::{Api, ExecConfig, Kind, Limits, Provider, Secret};
use qm_worker::runtime::WorkerConfig;
use serde_json::json;

use crate::reserve::emit;
use crate::{status_failure, Failure, Output};

#[derive(Subcommand, Debug)]
pub enum WorkerCommand {
    /// Run a worker in the foreground: connect, register slots, run assigned tasks.
    #[command(after_help = "Example:\n  qm worker run --node-id box-1 --slots implementer=2 --slots verifier=1\n  \
        qm worker run --enable-executor command --pass-env PATH --pass-env CARGO_HOME --limit-cpu-secs 600\n  \
        ANTHROPIC_API_KEY=... qm worker run --enable-executor llm \\\n    \
        --provider anthropic=anthropic:https://api.anthropic.com --provider-key-env anthropic=ANTHROPIC_API_KEY\n  \
        qm worker run --slots implementer=1 --slots verifier=1 --slots analyst=1 --enable-executor agent \\\n    \
        --enable-executor command --repo app=git@github.com:you/app.git --engine container --container-image tools:1 \\\n    \
        --provider anthropic=anthropic:https://api.anthropic.com --provider-key-env anthropic=ANTHROPIC_API_KEY\n\
        Only the scripted executor runs unless --enable-executor says otherwise; commands run in \
        their own process group and work directory, with a cleared environment and limits \
        (docs/security.md).\n\
        Ctrl-C closes the worker's session: its running tasks go back to the queue and resume \
        elsewhere from their last checkpoint.")]
    Run(WorkerArgs),
    /// Connected workers, their slots and running tasks.
    List,
}

/// `qm worker …`.
pub async fn dispatch(command: WorkerCommand, client: &Client, output: Output) -> Result<(), Failure> {
    match command {
        WorkerCommand::List => list(client, output).await,
        WorkerCommand::Run(a) => {
            crate::init_tracing();
            run(client.clone(), config(a)?).await
        }
    }
}

/// `qm worker list`.
async fn list(client: &Client, output: Output) -> Result<(), Failure> {
    let resp = client.list_workers().await.map_err(status_failure)?;
    let mut text = format!(
        "{:<20} {:<8} {:<36} {:<5} {:<24} {:<10} {:<16} {}\n",
        "NODE", "SESSION", "SLOTS", "GPUS", "PROVIDERS", "ENGINES", "REPOS", "RUNNING"
    );
    for w in &resp.workers {
        let slots: Vec<String> = w.slots.iter().map(|(r, n)| format!("{r}={n}")).collect();
        let running: Vec<String> = w.running_task_ids.iter().map(|t| t.to_string()).collect();
        let providers: Vec<String> =
            w.model_providers.iter().map(|p| format!("{}{}", p.name, if p.local { " (local)" } else { "" })).collect();
        let engines: Vec<&str> = std::iter::once("local").chain(w.engines.iter().map(String::as_str)).collect();
        let repos = if w.repos.is_empty() { "-".to_string() } else { w.repos.join(",") };
        text.push_str(&format!(
            "{:<20} {:<8} {:<36} {:<5} {:<24} {:<10} {:<16} {}\n",
            w.node_id,
            w.session_id,
            slots.join(","),
            w.gpus.len(),
            providers.join(","),
            engines.join(","),
            repos,
            running.join(",")
        ));
    }
    let workers: Vec<serde_json::Value> = resp
        .workers
        .iter()
        .map(|w| json!({
            "node_id": w.node_id, "session_id": w.session_id, "slots": w.slots, "running": w.running_task_ids,
            "labels": w.labels, "repos": w.repos, "clis": w.clis,
            "engines": std::iter::once("local").chain(w.engines.iter().map(String::as_str)).collect::<Vec<_>>(),
            "gpus": w.gpus.iter().map(|g| json!({"index": g.index, "model": g.model, "memory_bytes": g.memory_bytes})).collect::<Vec<_>>(),
            "model_providers": w.model_providers.iter().map(|p| json!({
                "name": p.name,
                "kind": if p.kind == pb::ProviderKind::Anthropic as i32 { "anthropic" } else { "openai" },
                "local": p.local,
            })).collect::<Vec<_>>(),
        }))
        .collect();
    let value = json!({ "workers": workers });
    emit(output, &value, &text);
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// This worker's node id, unique among workers [default: the host name]
    #[arg(long)]
    pub node_id: Option<String>,
    /// Agent slots as ROLE=N; repeat per role. ROLE is a built-in role or one a spec of
    /// --agents declares [default: the `slots:` of each spec; the shipped specs give
    /// implementer=1, verifier=1]
    #[arg(long = "slots")]
    pub slots: Vec<String>,
    /// A label as KEY=VALUE; repeat
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Session TTL in ms: how long the coordinators wait for a silent worker before
    /// requeueing its tasks (1000..=300000)
    #[arg(long, default_value_t = 10_000)]
    pub session_ttl_ms: u64,
    /// An agent whose acquire stays queued this long (ms) reports itself blocked and takes
    /// other ready work of its role; the waiting task keeps its place and resumes once granted
    #[arg(long, default_value_t = 2_000)]
    pub blocked_after_ms: u64,
    /// A model provider this worker reaches, as NAME=KIND:URL (KIND openai or anthropic);
    /// a loopback URL marks it local. Repeat. e.g. local-vllm=openai:http://127.0.0.1:8000/v1.
    /// `llm` tasks name a provider, never a URL
    #[arg(long = "provider")]
    pub providers: Vec<String>,
    /// The API key of provider NAME is the value of this worker's environment variable VAR,
    /// as NAME=VAR (read at startup; it must be set). Repeat per provider. Tasks cannot
    /// name key variables, and commands never see them
    #[arg(long = "provider-key-env", value_name = "NAME=VAR")]
    pub provider_keys: Vec<String>,
    #[command(flatten)]
    pub exec: ExecArgs,
}

/// What a task's executor may do on this worker (`qm worker run` and `qm dev`).
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Let tasks use an executor beyond `scripted` (which runs nothing and is always on):
    /// `command` runs shell commands the task chooses, `llm` calls this worker's providers with
    /// their keys, `agent` lets a model use tools on a workspace (running commands only where
    /// `command` is enabled too and the role's spec allows Bash). Off unless given here; a
    /// task cannot turn one on. Repeat
    #[arg(long = "enable-executor", value_enum, value_name = "EXECUTOR")]
    pub enable_executors: Vec<ExecutorName>,
    /// A variable of the worker's environment that commands see. Children start with an
    /// empty environment plus these and their attempt's QM_* variables. Repeat; giving any
    /// replaces the default list
    #[arg(long = "pass-env", value_name = "NAME", default_values = qm_worker::executor::config::PASS_ENV_DEFAULT)]
    pub pass_env: Vec<String>,
    /// Directory under which each attempt gets its own work directory,
    /// task-<id>-attempt-<n> (created for it, removed after) [default: <temp dir>/qm-work-<node id>]
    #[arg(long, value_name = "DIR")]
    pub work_root: Option<std::path::PathBuf>,
    /// CPU seconds each process of an attempt may use (RLIMIT_CPU); 0: unlimited
    #[arg(long, value_name = "SECS", default_value_t = limits::EXEC_CPU_SECS_DEFAULT)]
    pub limit_cpu_secs: u64,
    /// Address space each process of an attempt may map, in bytes (RLIMIT_AS); 0: unlimited,
    /// else at least 16 MiB [default: 16 GiB]
    #[arg(long, value_name = "BYTES", default_value_t = limits::EXEC_MEMORY_BYTES_DEFAULT, hide_default_value = true)]
    pub limit_memory_bytes: u64,
    /// Open files each process of an attempt may hold (RLIMIT_NOFILE); 0: unlimited, else at
    /// least 8
    #[arg(long, value_name = "N", default_value_t = limits::EXEC_OPEN_FILES_DEFAULT)]
    pub limit_open_files: u64,
    /// Bytes of a command's stdout kept as the task output (1024..=65536); the rest is
    /// dropped and the output says so
    #[arg(long, value_name = "BYTES", default_value_t = limits::EXEC_OUTPUT_BYTES_DEFAULT)]
    pub limit_output_bytes: usize,
    /// On stop, cancel, preemption or timeout an attempt's process group gets SIGTERM, then
    /// SIGKILL this many ms later if its shell has not exited (0..=60000)
    #[arg(long, value_name = "MS", default_value_t = limits::EXEC_KILL_GRACE_MS_DEFAULT)]
    pub kill_grace_ms: u64,
    /// A repository agents may work in, as NAME=URL (any git URL: a path, file://, https://,
    /// ssh; credentials are this worker's own git credentials). Repeat. Passes name a
    /// repository, never a URL; each attempt gets its own worktree of a mirror kept under
    /// the work root, and pushes only to branches under qm/
    #[arg(long = "repo", value_name = "NAME=URL")]
    pub repos: Vec<String>,
    /// Directory of agent specs (*.md with front matter) that drive this worker's agents:
    /// each role's spec gives its system prompt and the tools it may use [default: the
    /// shipped specs, as in agents/]
    #[arg(long, value_name = "DIR")]
    pub agents: Option<std::path::PathBuf>,
    /// A coding-agent CLI the `cli` executor may run: a built-in adapter (claude, codex,
    /// aider, opencode) or NAME=TEMPLATE, a shell template in which "$QM_PROMPT" is the
    /// prompt. It runs in the attempt's workspace with the --pass-env variables (give it its
    /// key with --pass-env ANTHROPIC_API_KEY). Repeat
    #[arg(long = "agent-cli", value_name = "NAME[=TEMPLATE]")]
    pub agent_clis: Vec<String>,
    /// Offer the `container` engine: payloads with engine = "container" run each command in
    /// a container on the Docker Engine (workspace at /work, network off, the limits below,
    /// all capabilities dropped). `local` is always offered
    #[arg(long = "engine", value_enum, value_name = "ENGINE")]
    pub engines: Vec<EngineName>,
    /// The image a container runs when the payload names none
    #[arg(long, value_name = "IMAGE")]
    pub container_image: Option<String>,
    /// Memory of each container, swap included, in bytes (at least 4 MiB) [default: 2 GiB]
    #[arg(long, value_name = "BYTES", default_value_t = 2 << 30, hide_default_value = true)]
    pub container_memory_bytes: u64,
    /// CPUs each container may use, e.g. 0.5 or 2 (0.01..=1024)
    #[arg(long, value_name = "CPUS", default_value_t = 2.0)]
    pub container_cpus: f64,
    /// Processes and threads each container may have (8..=1000000)
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub container_pids: u64,
    /// A limit of one role's attempts instead of the worker's, as
    /// ROLE:cpu-secs|memory-bytes|open-files|output-bytes=VALUE (same bounds as the --limit-*
    /// flags); repeat per role and limit, e.g. --role-limit implementer:cpu-secs=1800
    #[arg(long = "role-limit", value_name = "ROLE:LIMIT=VALUE")]
    pub role_limits: Vec<String>,
}

/// An engine a worker may offer beyond `local`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineName {
    Container,
}

/// An executor a worker may enable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorName {
    Command,
    Llm,
    Agent,
    Cli,
}

impl ExecutorName {
    fn kind(self) -> Kind {
        match self {
            ExecutorName::Command => Kind::Command,
            ExecutorName::Llm => Kind::Llm,
            ExecutorName::Agent => Kind::Agent,
            ExecutorName::Cli => Kind::Cli,
        }
    }
}

/// The executors' configuration from the flags (values checked); `providers` come from
/// `--provider` and `--provider-key-env`.
pub fn exec_config(a: ExecArgs, node_id: &str, providers: BTreeMap<String, Provider>) -> Result<ExecConfig, Failure> {
    for name in &a.pass_env {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(Failure::usage(format!("--pass-env {name:?}: not a variable name")));
        }
    }
    let worker_limits = Limits {
        cpu_secs: a.limit_cpu_secs,
        memory_bytes: a.limit_memory_bytes,
        open_files: a.limit_open_files,
        output_bytes: a.limit_output_bytes,
    };
    check_limits(&worker_limits, "limit-")?;
    let mut role_limits: BTreeMap<Role, Limits> = BTreeMap::new();
    for text in &a.role_limits {
        let (role, limit) = role_limit(text)?;
        let l = role_limits.entry(role).or_insert(worker_limits);
        match limit {
            ("cpu-secs", v) => l.cpu_secs = v,
            ("memory-bytes", v) => l.memory_bytes = v,
            ("open-files", v) => l.open_files = v,
            (_, v) => l.output_bytes = usize::try_from(v).unwrap_or(usize::MAX),
        }
        check_limits(l, &format!("role-limit {role}:"))
            .map_err(|f| Failure::usage(format!("{} (from {text:?})", f.message())))?;
    }
    if a.kill_grace_ms > limits::EXEC_KILL_GRACE_MS_MAX {
        return Err(Failure::usage(format!(
            "--kill-grace-ms: {} is over {}",
            a.kill_grace_ms,
            limits::EXEC_KILL_GRACE_MS_MAX
        )));
    }
    let repos = repos(&a.repos)?;
    let specs = specs(a.agents.as_deref())?;
    let clis = qm_worker::executor::cli::parse_flags(&a.agent_clis).map_err(Failure::usage)?;
    let container = container_limits(&a)?;
    Ok(ExecConfig {
        clis,
        engines: a.engines.iter().map(|EngineName::Container| Engine::Container).collect(),
        container,
        repos,
        specs,
        enabled: a.enable_executors.iter().map(|e| e.kind()).collect(),
        pass_env: ExecConfig::pass_env_from_process(a.pass_env.iter().map(String::as_str)),
        work_root: a.work_root.unwrap_or_else(|| ExecConfig::default_work_root(node_id)),
        limits: worker_limits,
        role_limits,
        kill_grace: Duration::from_millis(a.kill_grace_ms),
        providers,
    })
}

/// The container limits of `--container-*`, checked.
fn container_limits(a: &ExecArgs) -> Result<ContainerLimits, Failure> {
    if a.container_memory_bytes < 4 << 20 {
        return Err(Failure::usage(format!(
            "--container-memory-bytes: {} is below 4194304 (4 MiB)",
            a.container_memory_bytes
        )));
    }
    if !(0.01..=1024.0).contains(&a.container_cpus) {
        return Err(Failure::usage(format!("--container-cpus: {} is outside 0.01..=1024", a.container_cpus)));
    }
    if !(8..=1_000_000).contains(&a.container_pids) {
        return Err(Failure::usage(format!("--container-pids: {} is outside 8..=1000000", a.container_pids)));
    }
    Ok(ContainerLimits {
        memory_bytes: a.container_memory_bytes,
        nano_cpus: (a.container_cpus * 1e9).round() as u64,
        pids: a.container_pids,
        default_image: a.container_image.clone(),
    })
}

/// The repositories of `--repo NAME=URL`.
fn repos(flags: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    let mut repos = BTreeMap::new();
    for text in flags {
        let bad = |why: &str| Failure::usage(format!("--repo {text:?}: {why}"));
        let (name, url) = text.split_once('=').ok_or_else(|| bad("expected NAME=URL"))?;
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            && !name.starts_with('.');
        if !name_ok {
            return Err(bad("NAME must be 1..=64 of letters, digits, . _ - (not starting with .)"));
        }
        if url.is_empty() || url.starts_with('-') {
            return Err(bad("URL must be a git URL or path"));
        }
        if repos.insert(name.to_string(), url.to_string()).is_some() {
            return Err(bad("the repository is given twice"));
        }
    }
    Ok(repos)
}

/// The spec of each role: from `--agents DIR`, else the shipped ones. Every error in the
/// directory is reported, with its file and line.
fn specs(dir: Option<&std::path::Path>) -> Result<BTreeMap<Role, std::sync::Arc<qm_worker::spec::AgentSpec>>, Failure> {
    let (loaded, errors) = match dir {
        Some(d) => qm_worker::spec::load_dir(d),
        None => qm_worker::spec::built_in(),
    };
    if !errors.is_empty() {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        return Err(Failure::usage(format!("--agents: {}", lines.join("\n"))));
    }
    let mut by_role = BTreeMap::new();
    for s in loaded {
        let Some(role) = s.role else { continue };
        if let Some(first) = by_role.insert(role, std::sync::Arc::new(s)) {
            let second = &by_role[&role];
            return Err(Failure::usage(format!(
                "--agents: role {role} has two specs, {} and {}; keep one",
                first.source.display(),
                second.source.display()
            )));
        }
    }
    Ok(by_role)
}

/// The bounds every limit keeps, the worker's (`--limit-*`) and a role's (`--role-limit`):
/// `flag` prefixes the names in errors.
fn check_limits(l: &Limits, flag: &str) -> Result<(), Failure> {
    let at_least = |name: &str, v: u64, min: u64| {
        if v != 0 && v < min {
            return Err(Failure::usage(format!("--{flag}{name}: {v} is below {min} (0 means unlimited)")));
        }
        Ok(())
    };
    at_least("memory-bytes", l.memory_bytes, 16 * 1024 * 1024)?;
    at_least("open-files", l.open_files, 8)?;
    if !(1_024..=limits::TASK_OUTPUT_BYTES_MAX).contains(&l.output_bytes) {
        return Err(Failure::usage(format!(
            "--{flag}output-bytes: {} is outside 1024..={}",
            l.output_bytes,
            limits::TASK_OUTPUT_BYTES_MAX
        )));
    }
    Ok(())
}

/// One `--role-limit ROLE:NAME=VALUE`.
fn role_limit(text: &str) -> Result<(Role, (&str, u64)), Failure> {
    let bad = |why: String| Failure::usage(format!("--role-limit {text:?}: {why}"));
    let (role, rest) = text.split_once(':').ok_or_else(|| bad("expected ROLE:LIMIT=VALUE".into()))?;
    let role: Role = role.parse().map_err(|e| bad(format!("{e}")))?;
    let (name, value) = rest.split_once('=').ok_or_else(|| bad("expected ROLE:LIMIT=VALUE".into()))?;
    let name = ["cpu-secs", "memory-bytes", "open-files", "output-bytes"]
        .into_iter()
        .find(|n| *n == name)
        .ok_or_else(|| bad(format!("{name:?} is not a limit: cpu-secs, memory-bytes, open-files or output-bytes")))?;
    let value: u64 = value.parse().map_err(|_| bad(format!("{value:?} is not a whole number")))?;
    Ok((role, (name, value)))
}

/// One `--provider NAME=KIND:URL`: what the worker registers, and how its executor reaches it.
fn provider(text: &str) -> Result<(pb::ModelProvider, Provider), Failure> {
    let bad = || Failure::usage(format!("--provider {text:?}: expected NAME=KIND:URL with KIND openai or anthropic"));
    let (name, rest) = text.split_once('=').ok_or_else(bad)?;
    let (kind, url) = rest.split_once(':').ok_or_else(bad)?;
    let (kind, api) = match kind {
        "openai" => (pb::ProviderKind::OpenaiCompatible, Api::Openai),
        "anthropic" => (pb::ProviderKind::Anthropic, Api::Anthropic),
        _ => return Err(bad()),
    };
    if name.is_empty() || !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad());
    }
    let authority = url.split("://").nth(1).unwrap_or("");
    let host = authority.split(['/', ':']).next().unwrap_or("");
    let local = host == "localhost" || host.starts_with("127.") || authority.starts_with("[::1]");
    let registered = pb::ModelProvider { name: name.to_string(), kind: kind as i32, local, ..Default::default() };
    Ok((registered, Provider { api, base_url: url.to_string(), api_key: None }))
}

/// The providers of `--provider`, with the keys `--provider-key-env` names read from this
/// process's environment.
fn providers(
    flags: &[String],
    keys: &[String],
) -> Result<(Vec<pb::ModelProvider>, BTreeMap<String, Provider>), Failure> {
    let mut registered = Vec::new();
    let mut reached = BTreeMap::new();
    for text in flags {
        let (r, p) = provider(text)?;
        if reached.insert(r.name.clone(), p).is_some() {
            return Err(Failure::usage(format!("--provider {text:?}: provider {} is given twice", r.name)));
        }
        registered.push(r);
    }
    for k in keys {
        let (name, var) = k
            .split_once('=')
            .filter(|(n, v)| !n.is_empty() && !v.is_empty())
            .ok_or_else(|| Failure::usage(format!("--provider-key-env {k:?}: expected NAME=VAR")))?;
        let p = reached
            .get_mut(name)
            .ok_or_else(|| Failure::usage(format!("--provider-key-env {k:?}: no --provider is named {name:?}")))?;
        let key = std::env::var(var).ok().filter(|v| !v.is_empty()).ok_or_else(|| {
            Failure::usage(format!("--provider-key-env {k:?}: {var} is not set in this worker's environment"))
        })?;
        p.api_key = Some(Secret::new(key));
    }
    Ok((registered, reached))
}

/// The worker's configuration from its flags (defaults filled in, values checked).
fn config(a: WorkerArgs) -> Result<WorkerConfig, Failure> {
    let mut slots = BTreeMap::new();
    for s in &a.slots {
        let (role, n) = s.split_once('=').ok_or_else(|| Failure::usage(format!("--slots {s:?}: expected ROLE=N")))?;
        let role: Role =
            role.parse().map_err(|e: qm_shared::agent::UnknownName| Failure::usage(format!("--slots: {e}")))?;
        let n: u32 = n.parse().map_err(|_| Failure::usage(format!("--slots {s:?}: N must be a number")))?;
        if n == 0 || n > qm_shared::limits::WORKER_SLOTS_PER_ROLE_MAX {
            return Err(Failure::usage(format!(
                "--slots {s:?}: N must be 1..={}",
                qm_shared::limits::WORKER_SLOTS_PER_ROLE_MAX
            )));
        }
        slots.insert(role, n);
    }
    let mut labels = BTreeMap::new();
    for l in a.labels {
        let (k, v) = l.split_once('=').ok_or_else(|| Failure::usage(format!("--label {l:?}: expected KEY=VALUE")))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let node_id = match a.node_id {
        Some(n) => n,
        None => {
            std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "worker".into())
        }
    };
    qm_shared::validate::check_session_ttl_ms(a.session_ttl_ms)
        .map_err(|e| Failure::usage(format!("--session-ttl-ms: {}", e.message)))?;
    if !(100..=3_600_000).contains(&a.blocked_after_ms) {
        return Err(Failure::usage(format!("--blocked-after-ms: {} is outside 100..=3600000", a.blocked_after_ms)));
    }
    let (providers, reached) = providers(&a.providers, &a.provider_keys)?;
    let exec = exec_config(a.exec, &node_id, reached)?;
    if slots.is_empty() {
        slots = exec.specs.iter().filter_map(|(role, spec)| Some((*role, spec.slots?))).collect();
    }
    if slots.is_empty() {
        return Err(Failure::usage(
            "no agent slots: give --slots ROLE=N, or `slots:` in a spec of --agents".to_string(),
        ));
    }
    if let Some(role) = exec.role_limits.keys().find(|r| !slots.contains_key(r)) {
        let hosted: Vec<String> = slots.keys().map(|r| r.to_string()).collect();
        return Err(Failure::usage(format!(
            "--role-limit {role}: this worker hosts no {role} agents (its slots: {})",
            hosted.join(", ")
        )));
    }
    if slots.len() > qm_shared::limits::WORKER_ROLES_MAX {
        return Err(Failure::usage(format!(
            "--slots: {} roles, at most {}",
            slots.len(),
            qm_shared::limits::WORKER_ROLES_MAX
        )));
    }
    Ok(WorkerConfig {
        node_id,
        slots,
        labels,
        session_ttl_ms: a.session_ttl_ms,
        blocked_after_ms: a.blocked_after_ms,
        providers,
        gpus: Vec::new(),
        exec,
    })
}

/// Runs the worker until Ctrl-C.
async fn run(client: Client, mut config: WorkerConfig) -> Result<(), Failure> {
    config.gpus = qm_worker::gpu::detect_gpus().await;
    let list = |names: Vec<String>| if names.is_empty() { "none".to_string() } else { names.join(",") };
    eprintln!(
        "qm worker {}: slots {}; {} GPU(s); providers: {}; executors: scripted{}; work root {}",
        config.node_id,
        config.slots.iter().map(|(r, n)| format!("{r}={n}")).collect::<Vec<_>>().join(","),
        config.gpus.len(),
        list(config.providers.iter().map(|p| p.name.clone()).collect()),
        config.exec.enabled.iter().map(|k| format!(",{k}")).collect::<String>(),
        config.exec.work_root.display(),
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    qm_worker::runtime::run(client, config, shutdown).await.map_err(Failure::error)
}
