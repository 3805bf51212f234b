//! Reports to the coordinator as stream messages.

use super::*;

pub(super) fn usage_pb(u: Usage) -> Vec<pb::TokenUsage> {
    if u == Usage::default() {
        return Vec::new();
    }
    vec![pb::TokenUsage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cached_tokens: u.cached_tokens,
        estimated: u.estimated,
        reported_cost_micros: u.reported_micros,
        ..Default::default()
    }]
}

/// `by` is the agent and its spec (`name@version`), empty where no agent ran it.
pub(super) fn report_msg(by: (&str, &str), task_id: u64, attempt: u32, report: Report) -> pb::WorkerMessage {
    let (agent, spec) = by;
    use pb::worker_message::{Checkpoint, Msg, Progress, TaskResult};
    let msg = match report {
        Report::Progress { percent, stage, usage } => Msg::Progress(Progress {
            task_id,
            attempt,
            stage,
            message: String::new(),
            percent_done: percent,
            usage: usage_pb(usage),
        }),
        Report::Checkpoint { seq, data, for_preemption } => {
            Msg::Checkpoint(Checkpoint { task_id, attempt, seq, data, for_preemption })
        }
        Report::Blocked { message } => Msg::Blocked(pb::worker_message::Blocked {
            task_id,
            attempt,
            resources: Vec::new(),
            holders: Vec::new(),
            request_id: 0,
            message,
        }),
        Report::Result { outcome, output, error, usage, wall_ms } => Msg::Result(TaskResult {
            task_id,
            attempt,
            outcome: match outcome {
                Outcome::Succeeded => pb::TaskOutcome::Succeeded,
                Outcome::Failed => pb::TaskOutcome::Failed,
                Outcome::Cancelled => pb::TaskOutcome::Cancelled,
                Outcome::Preempted => pb::TaskOutcome::Preempted,
                Outcome::TimedOut => pb::TaskOutcome::TimedOut,
            } as i32,
            output,
            error,
            usage: usage_pb(usage),
            wall_time_ms: wall_ms,
            agent: agent.to_string(),
            spec: spec.to_string(),
        }),
    };
    pb::WorkerMessage { msg: Some(msg) }
}
