//! `qm task submit|list|show|cancel` and `qm worker run|list`.

use std::collections::BTreeMap;
use std::time::Duration;

use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use qm_shared::Role;
use qm_worker::runtime::WorkerConfig;
use serde_json::{json, Value};

use crate::reserve::emit;
use crate::{status_failure, Failure, Output};

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// Agent role to run it (analyst, architect, specifier, implementer, verifier, deployer,
    /// monitor, documenter, diagnostician)
    #[arg(long)]
    pub role: String,
    /// A resource to hold while it runs, as PATH[:shared|:exclusive] (default exclusive);
    /// repeat for an atomic set
    #[arg(long = "resource")]
    pub resources: Vec<String>,
    /// Executor payload as JSON, e.g. '{"executor":"command","cmd":"make test"}'
    #[arg(long, conflicts_with_all = ["scripted_ms", "cmd"])]
    pub payload: Option<String>,
    /// Shorthand for a scripted payload running this long (10 steps)
    #[arg(long)]
    pub scripted_ms: Option<u64>,
    /// Shorthand for a command payload (`sh -c CMD`)
    #[arg(long)]
    pub cmd: Option<String>,
    /// Priority 1..=1000
    #[arg(long, default_value_t = 500)]
    pub priority: u32,
    /// Work item id
    #[arg(long, default_value = "")]
    pub work_item: String,
    /// Attempts before a failing task ends as failed (1..=16)
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Time limit of one attempt in ms (0: none)
    #[arg(long, default_value_t = 0)]
    pub timeout_ms: u64,
    /// Acquire the resources one at a time in the order given (locking as it goes) instead of
    /// as one atomic set; a deadlock this causes is broken and the victim retries atomically
    #[arg(long)]
    pub incremental: bool,
    /// Wait until the task ends, showing progress on stderr; exit 1 unless it succeeded
    #[arg(long)]
    pub wait: bool,
}

fn resource(text: &str) -> Result<pb::ResourceRequest, Failure> {
    let (path, mode) = match text.rsplit_once(':') {
        Some((p, "shared")) => (p, pb::Mode::Shared),
        Some((p, "exclusive")) => (p, pb::Mode::Exclusive),
        _ => (text, pb::Mode::Exclusive),
    };
    Ok(pb::ResourceRequest { path: path.to_string(), mode: mode as i32, units: 0 })
}

pub fn info_json(t: &pb::TaskInfo) -> Value {
    let usage = t.usage.clone().unwrap_or_default();
    json!({
        "id": t.task_id, "role": t.role, "status": t.status, "attempt": t.attempt, "failures": t.failures,
        "priority": t.priority, "work_item": t.work_item_id, "worker": t.worker_node_id,
        "percent_done": t.percent_done, "stage": t.stage, "blocked": t.blocked,
        "checkpoint_seq": t.checkpoint_seq,
        "resources": t.resources.iter().map(|r| json!({"path": r.path, "mode": if r.mode == pb::Mode::Shared as i32 { "shared" } else { "exclusive" }})).collect::<Vec<_>>(),
        "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens, "cached_tokens": usage.cached_tokens, "estimated": usage.estimated},
        "submitted_at_ms": t.submitted_at_ms, "ended_at_ms": t.ended_at_ms, "error": t.error,
        "output": String::from_utf8_lossy(&t.output),
        "attempts": t.attempts.iter().map(|a| json!({"attempt": a.attempt, "worker": a.worker_node_id, "started_at_ms": a.started_at_ms, "ended_at_ms": a.ended_at_ms, "outcome": a.outcome, "resumed_from_seq": a.resumed_from_seq})).collect::<Vec<_>>(),
    })
}

async fn get(client: &Client, id: u64) -> Result<pb::TaskInfo, Failure> {
    client
        .call(|ch| async move { Ok(Client::tasks(ch).get(pb::GetTaskRequest { task_id: id }).await?.into_inner()) })
        .await
        .map_err(status_failure)
}

pub async fn submit(client: &Client, a: SubmitArgs, output: Output) -> Result<(), Failure> {
    let payload = match (&a.payload, a.scripted_ms, &a.cmd) {
        (Some(p), _, _) => {
            serde_json::from_str::<Value>(p).map_err(|e| Failure::usage(format!("--payload is not JSON: {e}")))?;
            p.clone().into_bytes()
        }
        (None, Some(ms), _) => json!({"executor": "scripted", "duration_ms": ms, "steps": 10}).to_string().into_bytes(),
        (None, None, Some(cmd)) => json!({"executor": "command", "cmd": cmd}).to_string().into_bytes(),
        (None, None, None) => return Err(Failure::usage("give one of --payload, --scripted-ms or --cmd")),
    };
    let req = pb::SubmitTaskRequest {
        role: a.role.clone(),
        resources: a.resources.iter().map(|r| resource(r)).collect::<Result<_, _>>()?,
        payload,
        priority: a.priority,
        work_item_id: a.work_item.clone(),
        max_attempts: a.max_attempts,
        timeout_ms: a.timeout_ms,
        incremental: a.incremental,
    };
    let id = client
        .call(|ch| {
            let req = req.clone();
            async move { Ok(Client::tasks(ch).submit(req).await?.into_inner()) }
        })
        .await
        .map_err(status_failure)?
        .task_id;
    if !a.wait {
        emit(output, &json!({"id": id, "status": "queued"}), &format!("task {id} queued\n"));
        return Ok(());
    }
    eprintln!("task {id} queued; waiting (Ctrl-C stops waiting, not the task)");
    let mut last = (String::new(), u32::MAX, 0u32);
    let info = loop {
        let t = get(client, id).await?;
        let now = (t.status.clone(), t.percent_done, t.attempt);
        if now != last {
            let worker = if t.worker_node_id.is_empty() { String::new() } else { format!(" on {}", t.worker_node_id) };
            eprintln!("task {id}: {} {}%{worker} (attempt {})", t.status, t.percent_done, t.attempt);
            last = now;
        }
        if matches!(t.status.as_str(), "succeeded" | "failed" | "cancelled") {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    emit(output, &info_json(&info), &show_text(&info));
    if info.status == "succeeded" {
        Ok(())
    } else {
        Err(Failure::error(format!("task {id} {}: {}", info.status, info.error)))
    }
}

fn show_text(t: &pb::TaskInfo) -> String {
    let usage = t.usage.clone().unwrap_or_default();
    let mut s = format!(
        "task {}  role {}  status {}  priority {}  attempt {}  {}%\n",
        t.task_id, t.role, t.status, t.priority, t.attempt, t.percent_done
    );
    if !t.work_item_id.is_empty() {
        s.push_str(&format!("work item {}\n", t.work_item_id));
    }
    for r in &t.resources {
        let mode = if r.mode == pb::Mode::Shared as i32 { "shared" } else { "exclusive" };
        s.push_str(&format!("needs {} ({mode})\n", r.path));
    }
    if !t.worker_node_id.is_empty() {
        s.push_str(&format!("running on {}  stage {}\n", t.worker_node_id, t.stage));
    }
    if !t.blocked.is_empty() {
        s.push_str(&format!("blocked: {}\n", t.blocked));
    }
    if t.checkpoint_seq > 0 {
        s.push_str(&format!("checkpoint #{} stored (a new attempt resumes from it)\n", t.checkpoint_seq));
    }
    s.push_str(&format!(
        "tokens in {} out {} cached {}{}\n",
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_tokens,
        if usage.estimated { " (estimated)" } else { "" }
    ));
    for a in &t.attempts {
        let outcome = if a.outcome.is_empty() { "running" } else { a.outcome.as_str() };
        let resumed = if a.resumed_from_seq > 0 {
            format!(", resumed from checkpoint #{}", a.resumed_from_seq)
        } else {
            String::new()
        };
        s.push_str(&format!("attempt {} on {}: {outcome}{resumed}\n", a.attempt, a.worker_node_id));
    }
    if !t.error.is_empty() {
        s.push_str(&format!("error: {}\n", t.error));
    }
    s
}

pub async fn show(client: &Client, id: u64, output: Output) -> Result<(), Failure> {
    let t = get(client, id).await?;
    emit(output, &info_json(&t), &show_text(&t));
    Ok(())
}

pub async fn list(client: &Client, status: String, limit: u32, output: Output) -> Result<(), Failure> {
    let resp = client
        .call(|ch| {
            let status = status.clone();
            async move { Ok(Client::tasks(ch).list(pb::ListTasksRequest { status, limit }).await?.into_inner()) }
        })
        .await
        .map_err(status_failure)?;
    let mut text = format!(
        "{:<8} {:<14} {:<10} {:>4} {:>5} {:<20} {}\n",
        "ID", "ROLE", "STATUS", "TRY", "DONE", "WORKER", "WORK ITEM"
    );
    for t in &resp.tasks {
        text.push_str(&format!(
            "{:<8} {:<14} {:<10} {:>4} {:>4}% {:<20} {}\n",
            t.task_id, t.role, t.status, t.attempt, t.percent_done, t.worker_node_id, t.work_item_id
        ));
    }
    let value = json!({"tasks": resp.tasks.iter().map(info_json).collect::<Vec<_>>(), "queued": resp.queued});
    emit(output, &value, &text);
    Ok(())
}

pub async fn cancel(client: &Client, id: u64, output: Output) -> Result<(), Failure> {
    client
        .call(
            |ch| async move { Ok(Client::tasks(ch).cancel(pb::CancelTaskRequest { task_id: id }).await?.into_inner()) },
        )
        .await
        .map_err(status_failure)?;
    emit(output, &json!({"id": id, "cancel": "requested"}), &format!("task {id}: cancel requested\n"));
    Ok(())
}

pub async fn workers(client: &Client, output: Output) -> Result<(), Failure> {
    let resp = client
        .call(|ch| async move { Ok(Client::tasks(ch).workers(pb::ListWorkersRequest {}).await?.into_inner()) })
        .await
        .map_err(status_failure)?;
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

pub fn worker_config(a: WorkerArgs) -> Result<WorkerConfig, Failure> {
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

pub async fn run_worker(client: Client, mut config: WorkerConfig) -> Result<(), Failure> {
    config.gpus = qm_worker::runtime::detect_gpus().await;
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
