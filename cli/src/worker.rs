//! `qm worker run|list`: its arguments and handlers. A worker node hosts agent slots and
//! runs the tasks the coordinators assign it.

use std::collections::BTreeMap;

use clap::Subcommand;
use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use qm_shared::Role;
use qm_worker::runtime::WorkerConfig;
use serde_json::json;

use crate::reserve::emit;
use crate::{status_failure, Failure, Output};

#[derive(Subcommand, Debug)]
pub enum WorkerCommand {
    /// Run a worker in the foreground: connect, register slots, run assigned tasks.
    #[command(after_help = "Example:\n  qm worker run --node-id box-1 --slots implementer=2 --slots verifier=1\n\
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
    let mut text =
        format!("{:<20} {:<8} {:<36} {:<5} {:<24} {}\n", "NODE", "SESSION", "SLOTS", "GPUS", "PROVIDERS", "RUNNING");
    for w in &resp.workers {
        let slots: Vec<String> = w.slots.iter().map(|(r, n)| format!("{r}={n}")).collect();
        let running: Vec<String> = w.running_task_ids.iter().map(|t| t.to_string()).collect();
        let providers: Vec<String> =
            w.model_providers.iter().map(|p| format!("{}{}", p.name, if p.local { " (local)" } else { "" })).collect();
        text.push_str(&format!(
            "{:<20} {:<8} {:<36} {:<5} {:<24} {}\n",
            w.node_id,
            w.session_id,
            slots.join(","),
            w.gpus.len(),
            providers.join(","),
            running.join(",")
        ));
    }
    let value = json!(resp
        .workers
        .iter()
        .map(|w| json!({
            "node_id": w.node_id, "session_id": w.session_id, "slots": w.slots, "running": w.running_task_ids,
            "labels": w.labels,
            "gpus": w.gpus.iter().map(|g| json!({"index": g.index, "model": g.model, "memory_bytes": g.memory_bytes})).collect::<Vec<_>>(),
            "model_providers": w.model_providers.iter().map(|p| json!({
                "name": p.name,
                "kind": if p.kind == pb::ProviderKind::Anthropic as i32 { "anthropic" } else { "openai" },
                "local": p.local,
            })).collect::<Vec<_>>(),
        }))
        .collect::<Vec<_>>());
    emit(output, &value, &text);
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// This worker's node id, unique among workers [default: the host name]
    #[arg(long)]
    pub node_id: Option<String>,
    /// Agent slots as ROLE=N; repeat per role [default: implementer=1, verifier=1]
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
    /// a loopback URL marks it local. Repeat. e.g. local-vllm=openai:http://127.0.0.1:8000/v1
    #[arg(long = "provider")]
    pub providers: Vec<String>,
}

fn provider(text: &str) -> Result<pb::ModelProvider, Failure> {
    let bad = || Failure::usage(format!("--provider {text:?}: expected NAME=KIND:URL with KIND openai or anthropic"));
    let (name, rest) = text.split_once('=').ok_or_else(bad)?;
    let (kind, url) = rest.split_once(':').ok_or_else(bad)?;
    let kind = match kind {
        "openai" => pb::ProviderKind::OpenaiCompatible,
        "anthropic" => pb::ProviderKind::Anthropic,
        _ => return Err(bad()),
    };
    if name.is_empty() || !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad());
    }
    let authority = url.split("://").nth(1).unwrap_or("");
    let host = authority.split(['/', ':']).next().unwrap_or("");
    let local = host == "localhost" || host.starts_with("127.") || authority.starts_with("[::1]");
    Ok(pb::ModelProvider { name: name.to_string(), kind: kind as i32, local, ..Default::default() })
}

/// The worker's configuration from its flags (defaults filled in, values checked).
fn config(a: WorkerArgs) -> Result<WorkerConfig, Failure> {
    let mut slots = BTreeMap::new();
    let given = if a.slots.is_empty() { vec!["implementer=1".to_string(), "verifier=1".to_string()] } else { a.slots };
    for s in given {
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
    let providers = a.providers.iter().map(|p| provider(p)).collect::<Result<Vec<_>, _>>()?;
    Ok(WorkerConfig {
        node_id,
        slots,
        labels,
        session_ttl_ms: a.session_ttl_ms,
        blocked_after_ms: a.blocked_after_ms,
        providers,
        gpus: Vec::new(),
    })
}

/// Runs the worker until Ctrl-C.
async fn run(client: Client, mut config: WorkerConfig) -> Result<(), Failure> {
    config.gpus = qm_worker::gpu::detect_gpus().await;
    eprintln!(
        "qm worker {}: slots {}; {} GPU(s); providers: {}",
        config.node_id,
        config.slots.iter().map(|(r, n)| format!("{r}={n}")).collect::<Vec<_>>().join(","),
        config.gpus.len(),
        if config.providers.is_empty() {
            "none".to_string()
        } else {
            config.providers.iter().map(|p| p.name.clone()).collect::<Vec<_>>().join(",")
        }
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    qm_worker::runtime::run(client, config, shutdown).await.map_err(Failure::error)
}
