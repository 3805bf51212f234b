//! The `scripted` executor: a deterministic stand-in for demos, tests and the simulator.
//! `steps` steps over `duration_ms`, token usage per step, an optional failure at a step; its
//! checkpoint is the next step, so a resumed run continues where it stopped. It runs nothing,
//! so it is always enabled.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Control, ExecEvent, ExecOutcome, ExecRequest, ExecResult, Usage};

/// The scripted executor's parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scripted {
    /// Total run time of a fresh run.
    #[serde(default = "Scripted::default_duration_ms")]
    pub duration_ms: u64,
    /// Steps (progress reports) over that time, 1..=10,000.
    #[serde(default = "Scripted::default_steps")]
    pub steps: u32,
    /// Tokens per step.
    #[serde(default)]
    pub input_tokens_per_step: u64,
    #[serde(default)]
    pub output_tokens_per_step: u64,
    /// Fail (instead of finishing) when reaching this step.
    #[serde(default)]
    pub fail_at_step: Option<u32>,
    /// Output on success.
    #[serde(default)]
    pub output: String,
}

impl Scripted {
    fn default_duration_ms() -> u64 {
        2_000
    }
    fn default_steps() -> u32 {
        10
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ScriptedCheckpoint {
    pub(crate) step: u32,
}

pub(crate) async fn run(
    s: Scripted,
    req: &ExecRequest,
    events: mpsc::Sender<ExecEvent>,
    mut control: mpsc::Receiver<Control>,
) -> ExecResult {
    if !(1..=10_000).contains(&s.steps) {
        return ExecResult::failed(format!("payload.steps: {} is outside 1..=10000", s.steps));
    }
    let start = match &req.resume {
        Some(c) => match serde_json::from_slice::<ScriptedCheckpoint>(c) {
            Ok(c) => c.step.min(s.steps),
            Err(e) => return ExecResult::failed(format!("checkpoint: {e}")),
        },
        None => 0,
    };
    let per_step = Duration::from_millis(s.duration_ms / u64::from(s.steps));
    let mut usage = Usage::default();
    let checkpoint = |step: u32| ExecEvent::Checkpoint(serde_json::to_vec(&ScriptedCheckpoint { step }).expect("json"));
    let mut step = start;
    while step < s.steps {
        tokio::select! {
            c = control.recv() => match c {
                Some(Control::Checkpoint) => { let _ = events.send(checkpoint(step)).await; }
                Some(Control::Stop) | None => {
                    let _ = events.send(checkpoint(step)).await;
                    return ExecResult::stopped(usage);
                }
            },
            _ = tokio::time::sleep(per_step) => {
                step += 1;
                if s.fail_at_step == Some(step) {
                    return ExecResult { outcome: ExecOutcome::Failed, output: Vec::new(), error: format!("scripted failure at step {step}"), usage };
                }
                let u = Usage { input_tokens: s.input_tokens_per_step, output_tokens: s.output_tokens_per_step, ..Usage::default() };
                usage.input_tokens += u.input_tokens;
                usage.output_tokens += u.output_tokens;
                let percent = step * 100 / s.steps;
                let _ = events.send(ExecEvent::Progress { percent, stage: format!("step {step}/{}", s.steps), usage: u }).await;
            }
        }
    }
    ExecResult { outcome: ExecOutcome::Succeeded, output: s.output.into_bytes(), error: String::new(), usage }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::tests::req;
    use super::super::{run as exec, ExecConfig};
    use super::*;

    #[tokio::test]
    async fn scripted_stops_with_a_checkpoint_and_resumes_from_it() {
        let p =
            serde_json::json!({"executor": "scripted", "duration_ms": 200, "steps": 10, "input_tokens_per_step": 3});
        let config = Arc::new(ExecConfig::default());
        let (etx, mut erx) = mpsc::channel(64);
        let (ctx, crx) = mpsc::channel(4);
        let run1 = tokio::spawn(exec(config.clone(), req(p.clone(), None), etx, crx));
        // Stop after the fourth progress report.
        let mut seen = 0;
        while let Some(ev) = erx.recv().await {
            if let ExecEvent::Progress { .. } = ev {
                seen += 1;
                if seen == 4 {
                    ctx.send(Control::Stop).await.unwrap();
                    break;
                }
            }
        }
        let r1 = run1.await.unwrap();
        assert_eq!(r1.outcome, ExecOutcome::Stopped);
        let mut cp = None;
        while let Ok(ev) = erx.try_recv() {
            if let ExecEvent::Checkpoint(d) = ev {
                cp = Some(d);
            }
        }
        let cp = cp.expect("a checkpoint before stopping");
        let step: ScriptedCheckpoint = serde_json::from_slice(&cp).unwrap();
        assert!(step.step >= 4, "{}", step.step);
        // Resumed: progress continues above the checkpoint and the run succeeds.
        let (etx, mut erx) = mpsc::channel(64);
        let (_ctx, crx) = mpsc::channel(4);
        let r2 = exec(config, req(p, Some(cp)), etx, crx).await;
        assert_eq!(r2.outcome, ExecOutcome::Succeeded);
        let mut first = None;
        while let Ok(ev) = erx.try_recv() {
            if let ExecEvent::Progress { percent, .. } = ev {
                first.get_or_insert(percent);
            }
        }
        assert!(first.unwrap() > 40, "resumed above 40%: {first:?}");
    }
}
