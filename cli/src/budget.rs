//! `qm budget set|show`: its arguments and handlers. Budgets at org, team, project and
//! work-item scope, enforced at dispatch.

use clap::Subcommand;
use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use qm_shared::workflow::{dollars, parse_dollars};
use serde_json::{json, Value};

use crate::reserve::emit;
use crate::{status_failure, Failure, Output};

#[derive(Subcommand, Debug)]
pub enum BudgetCommand {
    /// Set a budget: SCOPE (org, team, project, work-item), NAME (`org` for the org scope,
    /// `j7` for a work item) and LIMIT in dollars; 0 removes it
    Set {
        /// org, team, project or work-item
        scope: String,
        /// The team, project or work item (j7); `org` for the org scope
        name: String,
        /// Dollars, e.g. 250 or 12.50
        limit: String,
        /// day, week, month or total
        #[arg(long, default_value = "month")]
        period: String,
    },
    /// Every budget with its spending this period
    Show,
}

/// `qm budget …`.
pub async fn dispatch(command: BudgetCommand, client: &Client, output: Output) -> Result<(), Failure> {
    match command {
        BudgetCommand::Set { scope, name, limit, period } => set(client, scope, name, limit, period, output).await,
        BudgetCommand::Show => show(client, output).await,
    }
}

fn budget_json(b: &pb::BudgetInfo) -> Value {
    json!({"scope": b.scope, "name": b.name, "limit_micros": b.limit_micros, "period": b.period,
        "period_start_ms": b.period_start_ms, "period_end_ms": b.period_end_ms,
        "spent_micros": b.spent_micros, "committed_micros": b.committed_micros, "level": b.level})
}

fn budget_line(b: &pb::BudgetInfo) -> String {
    let pct = b.spent_micros as f64 * 100.0 / b.limit_micros.max(1) as f64;
    format!(
        "{:<10} {:<16} {:>10} {:>10} {:>10} {:>6.1}%  {:<7} {}\n",
        b.scope,
        b.name,
        dollars(b.limit_micros),
        dollars(b.spent_micros),
        dollars(b.committed_micros),
        pct,
        b.period,
        b.level
    )
}

const BUDGET_HEADER: &str = "SCOPE      NAME                  LIMIT      SPENT    RUNNING    USED  PERIOD  LEVEL\n";

async fn set(
    client: &Client,
    scope: String,
    name: String,
    limit: String,
    period: String,
    output: Output,
) -> Result<(), Failure> {
    let limit_micros = parse_dollars("LIMIT", &limit).map_err(|e| Failure::usage(e.to_string()))?;
    let req = pb::SetBudgetRequest { scope, name, limit_micros, period };
    let b = client.set_budget(req).await.map_err(status_failure)?;
    emit(output, &budget_json(&b), &format!("{BUDGET_HEADER}{}", budget_line(&b)));
    Ok(())
}

async fn show(client: &Client, output: Output) -> Result<(), Failure> {
    let resp = client.list_budgets().await.map_err(status_failure)?;
    let text: String = std::iter::once(BUDGET_HEADER.to_string()).chain(resp.budgets.iter().map(budget_line)).collect();
    emit(output, &json!({"budgets": resp.budgets.iter().map(budget_json).collect::<Vec<_>>()}), &text);
    Ok(())
}
