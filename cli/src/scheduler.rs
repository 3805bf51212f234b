//! `qm scheduler show|set`: its arguments and handler. The scheduler's replicated tunables:
//! aging, fair share, budget thresholds, the high-cost approval and the preemption gap.

use clap::Subcommand;
use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use qm_shared::workflow::{dollars, parse_dollars};
use serde_json::json;

use crate::reserve::emit;
use crate::{status_failure, Failure, Output};

#[derive(Subcommand, Debug)]
pub enum SchedulerCommand {
    /// The current tunables
    Show,
    /// Change tunables (only the flags given)
    Set(SchedulerArgs),
}

/// `qm scheduler …`.
pub async fn dispatch(command: SchedulerCommand, client: &Client, output: Output) -> Result<(), Failure> {
    match command {
        SchedulerCommand::Show => scheduler(client, None, output).await,
        SchedulerCommand::Set(a) => scheduler(client, Some(a), output).await,
    }
}

#[derive(clap::Args, Debug, Default)]
pub struct SchedulerArgs {
    /// Queued work gains --aging-step priority points every this many ms (lock queues too)
    #[arg(long)]
    pub aging_interval_ms: Option<u64>,
    /// Priority points queued work gains every --aging-interval-ms
    #[arg(long)]
    pub aging_step: Option<u32>,
    /// Points a team's head of queue loses per task it runs (0: fair share off)
    #[arg(long)]
    pub fair_share_points: Option<u32>,
    /// Work at or above this priority is high-priority for the budget policies
    #[arg(long)]
    pub high_priority_min: Option<u32>,
    /// Budget threshold "approaching", in percent of the limit
    #[arg(long)]
    pub budget_approaching_pct: Option<u32>,
    /// Budget threshold "at", in percent of the limit
    #[arg(long)]
    pub budget_at_pct: Option<u32>,
    /// At the `at` threshold, a high-priority dispatch forecast at this many dollars or more
    /// waits for `qm gate approve`
    #[arg(long)]
    pub high_cost: Option<String>,
    /// A waiter this far above a holder preempts it (resources with policy preempt)
    #[arg(long)]
    pub preempt_gap: Option<u32>,
    /// Reservations held plus resources waited for by one principal (token), at most
    /// (1..=100000); past it an acquire is refused with RESOURCE_EXHAUSTED
    #[arg(long)]
    pub claims_per_principal_max: Option<u64>,
    /// Unended tasks one principal may have submitted (1..=10000)
    #[arg(long)]
    pub tasks_per_principal_max: Option<u64>,
    /// Unended work items one principal may have submitted (1..=2500)
    #[arg(long)]
    pub work_items_per_principal_max: Option<u64>,
    /// Payload bytes of one principal's unended tasks and work items (65536..=67108864)
    #[arg(long)]
    pub payload_bytes_per_principal_max: Option<u64>,
}

/// Sets the tunables given in `set` (none: only reads them) and prints them all.
async fn scheduler(client: &Client, set: Option<SchedulerArgs>, output: Output) -> Result<(), Failure> {
    let cfg = match set {
        None => client.get_scheduler().await.map_err(status_failure)?,
        Some(a) => {
            let high_cost = a
                .high_cost
                .as_deref()
                .map(|h| parse_dollars("--high-cost", h))
                .transpose()
                .map_err(|e| Failure::usage(e.to_string()))?;
            let req = pb::SchedulerConfig {
                aging_interval_ms: a.aging_interval_ms.unwrap_or(0),
                aging_step: a.aging_step.unwrap_or(0),
                fair_share_points: a.fair_share_points.unwrap_or(0),
                set_fair_share: a.fair_share_points.is_some(),
                high_priority_min: a.high_priority_min.unwrap_or(0),
                budget_approaching_pct: a.budget_approaching_pct.unwrap_or(0),
                budget_at_pct: a.budget_at_pct.unwrap_or(0),
                high_cost_micros: high_cost.unwrap_or(0),
                preempt_gap: a.preempt_gap.unwrap_or(0),
                docs_aging_bound_ms: 0,
                claims_per_principal_max: a.claims_per_principal_max.unwrap_or(0),
                tasks_per_principal_max: a.tasks_per_principal_max.unwrap_or(0),
                work_items_per_principal_max: a.work_items_per_principal_max.unwrap_or(0),
                payload_bytes_per_principal_max: a.payload_bytes_per_principal_max.unwrap_or(0),
            };
            client.set_scheduler(req).await.map_err(status_failure)?
        }
    };
    let value = json!({"aging_interval_ms": cfg.aging_interval_ms, "aging_step": cfg.aging_step,
        "fair_share_points": cfg.fair_share_points, "high_priority_min": cfg.high_priority_min,
        "budget_approaching_pct": cfg.budget_approaching_pct, "budget_at_pct": cfg.budget_at_pct,
        "high_cost_micros": cfg.high_cost_micros, "preempt_gap": cfg.preempt_gap,
        "docs_aging_bound_ms": cfg.docs_aging_bound_ms, "claims_per_principal_max": cfg.claims_per_principal_max,
        "tasks_per_principal_max": cfg.tasks_per_principal_max,
        "work_items_per_principal_max": cfg.work_items_per_principal_max,
        "payload_bytes_per_principal_max": cfg.payload_bytes_per_principal_max});
    let text = format!(
        "aging               +{} points every {} ms (a docs item, priority 100, is overtaken by nothing newer after {:.1} s)\n\
         fair share          {} points per running task of a team\n\
         high priority       {} and above\n\
         budget thresholds   approaching {}%, at {}%, over 100%\n\
         high-cost approval  forecast {} or more at the `at` threshold\n\
         preemption gap      {} points\n\
         claims              {} reservations held or waited for per principal, at most\n\
         work                {} tasks, {} work items and {} payload bytes unended per principal, at most\n",
        cfg.aging_step,
        cfg.aging_interval_ms,
        cfg.docs_aging_bound_ms as f64 / 1000.0,
        cfg.fair_share_points,
        cfg.high_priority_min,
        cfg.budget_approaching_pct,
        cfg.budget_at_pct,
        dollars(cfg.high_cost_micros),
        cfg.preempt_gap,
        cfg.claims_per_principal_max,
        cfg.tasks_per_principal_max,
        cfg.work_items_per_principal_max,
        cfg.payload_bytes_per_principal_max
    );
    emit(output, &value, &text);
    Ok(())
}
