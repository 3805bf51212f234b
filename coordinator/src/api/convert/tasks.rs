//! Tasks: task and worker listings out, the status filter in.

use qm_shared::pb::v1 as pb;
use qm_shared::Invalid;

use super::items_to_pb;
use crate::state::{Outcome, State, Task, TaskStatus, Usage, Worker};

pub fn outcome_str(o: Option<Outcome>, ended: bool) -> &'static str {
    match (o, ended) {
        (Some(Outcome::Succeeded), _) => "succeeded",
        (Some(Outcome::Failed), _) => "failed",
        (Some(Outcome::Cancelled), _) => "cancelled",
        (Some(Outcome::Preempted), _) => "preempted",
        (Some(Outcome::TimedOut), _) => "timed_out",
        (None, true) => "lost",
        (None, false) => "",
    }
}

pub fn usage_to_pb(u: &Usage) -> pb::TokenUsage {
    pb::TokenUsage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cached_tokens: u.cached_tokens,
        estimated: u.estimated,
        ..Default::default()
    }
}

pub fn task_info(t: &Task, state: &State) -> pb::TaskInfo {
    let worker = t.session.and_then(|s| state.tasks().worker(s)).map(|w| w.node_id.clone()).unwrap_or_default();
    pb::TaskInfo {
        task_id: t.id.0,
        role: t.spec.role.to_string(),
        status: t.status.as_str().to_string(),
        attempt: t.attempt,
        priority: t.spec.priority,
        work_item_id: t.spec.work_item.clone(),
        resources: items_to_pb(&t.spec.items),
        worker_node_id: worker,
        percent_done: t.percent,
        stage: t.stage.clone(),
        blocked: t.blocked.clone().unwrap_or_default(),
        checkpoint_seq: t.checkpoint.as_ref().map_or(0, |c| c.seq),
        usage: Some(usage_to_pb(&t.usage)),
        submitted_at_ms: t.submitted_at,
        ended_at_ms: t.ended_at.unwrap_or(0),
        error: t.error.clone(),
        output: t.output.clone(),
        attempts: t
            .attempts
            .iter()
            .map(|a| pb::TaskAttempt {
                attempt: a.attempt,
                worker_node_id: a.node_id.clone(),
                started_at_ms: a.started_at,
                ended_at_ms: a.ended_at.unwrap_or(0),
                outcome: outcome_str(a.outcome, a.ended_at.is_some()).to_string(),
                resumed_from_seq: a.resumed_from.unwrap_or(0),
            })
            .collect(),
        failures: t.failures,
    }
}

/// The status filter of List: empty is none.
pub fn status_filter(s: &str) -> Result<Option<TaskStatus>, Invalid> {
    Ok(Some(match s {
        "" => return Ok(None),
        "queued" => TaskStatus::Queued,
        "running" => TaskStatus::Running,
        "succeeded" => TaskStatus::Succeeded,
        "failed" => TaskStatus::Failed,
        "cancelled" => TaskStatus::Cancelled,
        other => {
            return Err(Invalid::new(
                "status",
                format!("{other:?} is not one of queued, running, succeeded, failed, cancelled"),
            ))
        }
    }))
}

/// A connected worker: its slots, running tasks, labels, GPUs and model providers.
pub fn worker_info(w: &Worker) -> pb::WorkerInfo {
    pb::WorkerInfo {
        node_id: w.node_id.clone(),
        session_id: w.session.0,
        slots: w.slots.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
        running_task_ids: w.running.keys().map(|t| t.0).collect(),
        engines: if w.container { vec!["container".to_string()] } else { Vec::new() },
        repos: w.repos.iter().cloned().collect(),
        clis: w.clis.iter().cloned().collect(),
        labels: w.labels.clone().into_iter().collect(),
        gpus: w
            .gpus
            .iter()
            .map(|g| pb::Gpu { index: g.index, model: g.model.clone(), memory_bytes: g.memory_bytes })
            .collect(),
        model_providers: w
            .providers
            .iter()
            .map(|p| pb::ModelProvider {
                name: p.name.clone(),
                kind: if p.kind == "anthropic" {
                    pb::ProviderKind::Anthropic
                } else {
                    pb::ProviderKind::OpenaiCompatible
                } as i32,
                local: p.local,
                ..Default::default()
            })
            .collect(),
    }
}
