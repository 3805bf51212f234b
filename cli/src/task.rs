//! `qm task submit|list|show|cancel`: its arguments and handlers. Tasks are units of agent
//! work: a role, resources with modes and an executor payload.

use std::time::Duration;

use clap::Subcommand;
use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use serde_json::{json, Value};

use crate::reserve::emit;
use crate::{status_failure, Failure, Output};

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Queue a task for an agent of its role.
    #[command(after_help = "Examples:\n  \
        qm task submit --role implementer --resource pg:staging --scripted-ms 3000 --wait\n  \
        qm task submit --role verifier --resource pg:staging:shared --cmd 'make test' --priority 800\n  \
        qm task submit --role implementer --payload '{\"executor\":\"scripted\",\"duration_ms\":5000,\"steps\":20}'\n  \
        qm task submit --role implementer --payload '{\"executor\":\"llm\",\"provider\":\"local-vllm\",\"model\":\"qwen2.5-coder\",\"prompt\":\"...\"}'\n\n\
        Executors: scripted {duration_ms, steps, input_tokens_per_step, output_tokens_per_step, fail_at_step, output}; \
        command {cmd, workdir (relative, inside the attempt's work directory)}; \
        llm {provider (one of the worker's --provider names; default: the routed one), api (must match the provider's), \
        model, prompt, system, max_tokens}. \
        command and llm run only on workers started with --enable-executor command|llm; a payload cannot name an \
        API key variable or a provider URL. The agent runs it with QM_FENCING_TOKEN and QM_RESERVATION_ID set.")]
    Submit(SubmitArgs),
    /// Tasks, newest first.
    List {
        /// Only this status: queued, running, succeeded, failed, cancelled
        #[arg(long, default_value = "")]
        status: String,
        /// At most this many (1..=10000)
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One task: status, progress, checkpoint, usage and every attempt.
    Show {
        /// Task id (`t26`, `26` or `task-26`)
        #[arg(value_parser = crate::ids::task)]
        id: u64,
    },
    /// Cancel a task (a running one is told to stop).
    Cancel {
        /// Task id (`t26`, `26` or `task-26`)
        #[arg(value_parser = crate::ids::task)]
        id: u64,
    },
}

/// `qm task …`.
pub async fn dispatch(command: TaskCommand, client: &Client, output: Output) -> Result<(), Failure> {
    match command {
        TaskCommand::Submit(a) => submit(client, a, output).await,
        TaskCommand::List { status, limit } => list(client, status, limit, output).await,
        TaskCommand::Show { id } => show(client, id, output).await,
        TaskCommand::Cancel { id } => cancel(client, id, output).await,
    }
}

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
    /// Shorthand for a command payload (`sh -c CMD`; runs only on workers started with
    /// `--enable-executor command`)
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
        // A segment is kind:name with no further colon, so a second colon in the last segment
        // starts a mode suffix.
        Some((_, suffix)) if text.rsplit('/').next().is_some_and(|last| last.matches(':').count() >= 2) => {
            return Err(Failure::usage(format!(
                "--resource {text:?}: {suffix:?} is not a mode; end the path with :shared or :exclusive \
                 (default exclusive), e.g. pg:staging:shared"
            )))
        }
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
    client.get_task(pb::GetTaskRequest { task_id: id }).await.map_err(status_failure)
}

async fn submit(client: &Client, a: SubmitArgs, output: Output) -> Result<(), Failure> {
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
    let id = client.submit_task(req).await.map_err(status_failure)?.task_id;
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

async fn show(client: &Client, id: u64, output: Output) -> Result<(), Failure> {
    let t = get(client, id).await?;
    emit(output, &info_json(&t), &show_text(&t));
    Ok(())
}

async fn list(client: &Client, status: String, limit: u32, output: Output) -> Result<(), Failure> {
    let resp = client.list_tasks(pb::ListTasksRequest { status, limit }).await.map_err(status_failure)?;
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

async fn cancel(client: &Client, id: u64, output: Output) -> Result<(), Failure> {
    client.cancel_task(pb::CancelTaskRequest { task_id: id }).await.map_err(status_failure)?;
    emit(output, &json!({"id": id, "cancel": "requested"}), &format!("task {id}: cancel requested\n"));
    Ok(())
}
