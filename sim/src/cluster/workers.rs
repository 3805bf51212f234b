//! Simulated workers: the real worker runtime (`qm_worker::runtime`, ractor supervisor and
//! agent actors, the gateway stream, lease extends) over turmoil, with the real scripted
//! executor wrapped by the executor seam so that agents also write to the fenced resources.
//!
//! ```text
//!   host "w<i>": runtime::run_with(client, config, sim executor)
//!   sim executor = builtin scripted executor
//!                  + a fenced write with the task's token on every progress step
//!                  + sometimes a hang after the first step (the agent stops answering;
//!                    a preemption or a session expiry takes its lease meanwhile, and its
//!                    next writes are zombie writes with a stale token)
//!                  + its output names the attempt that produced it
//! ```
//!
//! The task payload is a real scripted-executor payload; its `output` field carries the
//! resource path the task writes to.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qm_shared::client::Client;
use qm_shared::Role;
use qm_worker::executor::{self, ExecConfig, ExecEvent, ExecOutcome, ExecResult};
use qm_worker::runtime::{self, Executor, WorkerConfig};
use tokio::sync::mpsc;

use super::net;
use super::options::Options;
use super::rng::Rng;
use super::world::{lock, now_ms, Shared};

/// Progress events forwarded per attempt at most.
const EVENTS_MAX: u64 = 100_000;

/// Worker incarnations in this process: the runtime names its actors after the worker's
/// node id in ractor's process-wide registry, so every incarnation gets a fresh one.
static INCARNATIONS: AtomicU64 = AtomicU64::new(0);

/// The output a successful attempt reports.
pub fn attempt_output(attempt: u32) -> String {
    format!("attempt={attempt}")
}

fn sim_executor(seed: u64, worker: u64, shared: Shared) -> Executor {
    Executor::new(move |req, events, control| {
        let shared = shared.clone();
        Box::pin(async move {
            let env = |k: &str| req.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let token: Option<u64> = env("QM_FENCING_TOKEN").and_then(|t| t.parse().ok());
            let path: Option<String> = serde_json::from_slice::<serde_json::Value>(&req.payload)
                .ok()
                .and_then(|v| v.get("output").and_then(|o| o.as_str()).map(str::to_string))
                .filter(|p| !p.is_empty());
            let (task, attempt) = (req.task, req.attempt);
            let owner = format!("task-{task}");
            let mut rng = Rng::new(seed).fork(1_000_000 + task * 1_000 + u64::from(attempt));
            let hang_ms = if rng.chance(20) { rng.range(3_000, 12_000) } else { 0 };
            lock(&shared).trace.event(
                now_ms(),
                "exec",
                format_args!("w{worker} task={task} attempt={attempt} token={token:?} hang={hang_ms}"),
            );
            let (tx, mut rx) = mpsc::channel(64);
            let inner = tokio::spawn(executor::run(Arc::new(ExecConfig::default()), req, tx, control));
            let mut steps = 0u64;
            while let Some(ev) = rx.recv().await {
                if matches!(ev, ExecEvent::Progress { .. }) {
                    steps += 1;
                    if steps == 2 && hang_ms > 0 {
                        lock(&shared).trace.event(
                            now_ms(),
                            "agent-hang",
                            format_args!("task={task} attempt={attempt} {hang_ms}ms"),
                        );
                        tokio::time::sleep(Duration::from_millis(hang_ms)).await;
                    }
                    if let (Some(t), Some(p)) = (token, &path) {
                        lock(&shared).fenced_write(now_ms(), p, t, &owner);
                    }
                }
                if events.send(ev).await.is_err() || steps > EVENTS_MAX {
                    break;
                }
            }
            let mut result = inner.await.unwrap_or_else(|e| ExecResult {
                outcome: ExecOutcome::Failed,
                output: Vec::new(),
                error: format!("executor panicked: {e}"),
                usage: Default::default(),
            });
            if result.outcome == ExecOutcome::Succeeded {
                result.output = attempt_output(attempt).into_bytes();
            }
            lock(&shared).trace.event(
                now_ms(),
                "exec-done",
                format_args!("task={task} attempt={attempt} {:?}", result.outcome),
            );
            result
        })
    })
}

/// The worker host software.
pub async fn run(index: u64, opts: Options, shared: Shared) -> turmoil::Result {
    let endpoints: Vec<String> = (1..=opts.nodes).map(net::node_endpoint).collect();
    let client = Client::with_connector(&endpoints, net::connector())?;
    let incarnation = INCARNATIONS.fetch_add(1, Ordering::SeqCst);
    let config = WorkerConfig {
        node_id: format!("w{index}.{incarnation}"),
        slots: BTreeMap::from([(Role::Implementer, 2)]),
        labels: BTreeMap::new(),
        session_ttl_ms: opts.session_ttl_ms,
        blocked_after_ms: 2_000,
        providers: Vec::new(),
        gpus: Vec::new(),
        // Scripted only: the simulated workers run nothing else.
        exec: ExecConfig::default(),
    };
    lock(&shared).trace.event(now_ms(), "start", format_args!("w{index}"));
    let exec = sim_executor(opts.seed, index, shared.clone());
    runtime::run_with(client, config, exec, std::future::pending()).await?;
    Ok(())
}
