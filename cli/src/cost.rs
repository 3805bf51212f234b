//! `qm cost report|forecast`: its arguments and handlers. The cost ledger (every attempt's
//! model, provider, tokens, money, wall time, agent, worker and outcome) rolled up, listed as
//! CSV, or used to forecast a workflow run.

use std::collections::{BTreeMap, BTreeSet};

use clap::Subcommand;
use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use qm_shared::workflow::dollars;
use serde_json::{json, Value};

use crate::job::workflow_source;
use crate::reserve::emit;
use crate::{status_failure, Failure, Output};

#[derive(Subcommand, Debug)]
pub enum CostCommand {
    /// Roll the ledger up (-o table|json|csv; csv lists the entries themselves)
    Report {
        /// The field to roll up by
        #[arg(long, value_enum, default_value_t = By::WorkItem)]
        by: By,
        /// A duration back from now (30m, 24h, 7d) or epoch ms
        #[arg(long)]
        since: Option<String>,
    },
    /// Forecast one run of a workflow (built-in name or file) from the ledger's history
    Forecast {
        /// A built-in workflow's name or a workflow file
        workflow: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    WorkItem,
    Team,
    Project,
    Model,
    Role,
    Pass,
}

impl By {
    /// The row a ledger entry is counted in (`-` where the entry has no such field).
    fn key(self, e: &pb::LedgerEntryInfo) -> String {
        match self {
            By::WorkItem => {
                if e.job_id == 0 {
                    "-".to_string()
                } else {
                    format!("j{}", e.job_id)
                }
            }
            By::Team => e.team.clone(),
            By::Project => e.project.clone(),
            By::Model => {
                if e.model.is_empty() {
                    "-".into()
                } else {
                    e.model.clone()
                }
            }
            By::Role => e.role.clone(),
            By::Pass => {
                if e.pass.is_empty() {
                    "-".into()
                } else {
                    format!("{}/{}", e.workflow, e.pass)
                }
            }
        }
    }
}

/// `qm cost …`.
pub async fn dispatch(command: CostCommand, client: &Client, output: Output) -> Result<(), Failure> {
    match command {
        CostCommand::Report { by, since } => report(client, by, since, output).await,
        CostCommand::Forecast { workflow } => forecast(client, workflow, output).await,
    }
}

/// `--since`: a duration back from now (`30m`, `24h`, `7d`), an RFC 3339 time
/// (`2026-11-22T13:05:00Z`) or ms since the Unix epoch.
pub fn since_ms(text: &str, now_ms: u64) -> Result<u64, Failure> {
    let bad = || {
        Failure::usage(format!(
            "--since {text:?}: expected a duration like 90s, 30m, 24h, 7d, an RFC 3339 time like 2026-11-22T13:05:00Z, or epoch ms"
        ))
    };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| bad());
    }
    if text.contains('-') && text.contains(':') {
        return qm_shared::timestamp::parse_rfc3339(text).map_err(|e| Failure::usage(format!("--since {e}")));
    }
    let ms = qm_shared::duration::parse_duration_ms(text).map_err(|_| bad())?;
    Ok(now_ms.saturating_sub(ms))
}

fn entry_json(e: &pb::LedgerEntryInfo) -> Value {
    json!({"seq": e.seq, "at_ms": e.at_ms, "task_id": e.task_id, "attempt": e.attempt,
        "work_item": if e.job_id == 0 { String::new() } else { format!("j{}", e.job_id) },
        "team": e.team, "project": e.project, "workflow": e.workflow, "pass": e.pass, "role": e.role,
        "tier": e.tier, "provider": e.provider, "model": e.model, "input_tokens": e.input_tokens,
        "output_tokens": e.output_tokens, "cached_tokens": e.cached_tokens, "estimated": e.estimated,
        "money_micros": e.money_micros, "saved_micros": e.saved_micros, "wall_ms": e.wall_ms,
        "agent": e.agent, "spec": e.spec, "worker": e.worker, "outcome": e.outcome})
}

/// One row of the roll-up.
#[derive(Default)]
struct Row {
    attempts: u64,
    input: u64,
    output: u64,
    cached: u64,
    money: u64,
    saved: u64,
    wall_ms: u64,
    models: BTreeSet<String>,
    /// The specs (`name@version`) of the agents that did the attempts.
    specs: BTreeSet<String>,
}

/// The ledger's entries rolled up by one field, with their totals.
struct Rollup {
    /// The field, as `--by` names it.
    by: String,
    rows: BTreeMap<String, Row>,
    total_micros: u64,
    saved_micros: u64,
}

/// `qm cost report`: the ledger since `since` rolled up `by` a field, or with `-o csv` the
/// entries themselves.
async fn report(client: &Client, by: By, since: Option<String>, output: Output) -> Result<(), Failure> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let since_ms = since.as_deref().map(|s| since_ms(s, now)).transpose()?.unwrap_or(0);
    let ledger = fetch_ledger(client, since_ms).await?;
    match output {
        Output::Csv => crate::print_stdout(&ledger_csv(&ledger.entries)),
        _ => {
            let rollup = roll_up(&ledger.entries, by);
            emit(output, &report_json(&ledger, &rollup, since_ms), &report_text(&ledger, &rollup));
        }
    }
    Ok(())
}

/// Every ledger entry since `since_ms`, paged through 10,000 entries a page, with the
/// ledger's all-time totals.
async fn fetch_ledger(client: &Client, since_ms: u64) -> Result<pb::CostReportResponse, Failure> {
    let mut resp = pb::CostReportResponse::default();
    let mut after_seq = 0;
    loop {
        let page = client
            .cost_report(pb::CostReportRequest { since_ms, limit: 0, after_seq })
            .await
            .map_err(status_failure)?;
        resp.entries.extend(page.entries);
        (resp.total_micros, resp.saved_micros, resp.retained) = (page.total_micros, page.saved_micros, page.retained);
        if page.next_after_seq == 0 {
            return Ok(resp);
        }
        after_seq = page.next_after_seq;
    }
}

fn roll_up(entries: &[pb::LedgerEntryInfo], by: By) -> Rollup {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for e in entries {
        let r = rows.entry(by.key(e)).or_default();
        r.attempts += u64::from(e.outcome != "cached");
        r.input += e.input_tokens;
        r.output += e.output_tokens;
        r.cached += e.cached_tokens;
        r.money += e.money_micros;
        r.saved += e.saved_micros;
        r.wall_ms += e.wall_ms;
        if !e.model.is_empty() {
            r.models.insert(e.model.clone());
        }
        if !e.spec.is_empty() {
            r.specs.insert(e.spec.clone());
        }
    }
    Rollup {
        by: format!("{by:?}").to_lowercase(),
        rows,
        total_micros: entries.iter().map(|e| e.money_micros).sum(),
        saved_micros: entries.iter().map(|e| e.saved_micros).sum(),
    }
}

fn report_json(ledger: &pb::CostReportResponse, rollup: &Rollup, since_ms: u64) -> Value {
    json!({
        "by": rollup.by, "since_ms": since_ms,
        "rows": rollup.rows.iter().map(|(k, r)| json!({"key": k, "attempts": r.attempts, "input_tokens": r.input, "output_tokens": r.output, "cached_tokens": r.cached, "money_micros": r.money, "saved_micros": r.saved, "wall_ms": r.wall_ms, "models": r.models, "specs": r.specs})).collect::<Vec<_>>(),
        "entries": ledger.entries.iter().map(entry_json).collect::<Vec<_>>(),
        "total_micros": rollup.total_micros, "saved_micros": rollup.saved_micros,
        "ledger_total_micros": ledger.total_micros, "ledger_saved_micros": ledger.saved_micros,
        "retained": ledger.retained,
    })
}

fn report_text(ledger: &pb::CostReportResponse, rollup: &Rollup) -> String {
    let rows = &rollup.rows;
    let mut text = format!(
        "{:<28} {:>8} {:>10} {:>10} {:>11} {:>9} {:>9}  {}\n",
        rollup.by.to_uppercase(),
        "ATTEMPTS",
        "TOK-IN",
        "TOK-OUT",
        "COST",
        "SAVED",
        "WALL",
        "MODELS  SPECS"
    );
    for (k, r) in rows {
        let models: Vec<&str> = r.models.iter().map(|m| m.as_str()).collect();
        let specs: Vec<&str> = r.specs.iter().map(|m| m.as_str()).collect();
        text.push_str(&format!(
            "{:<28} {:>8} {:>10} {:>10} {:>11} {:>9} {:>8.1}s  {}  {}\n",
            k,
            r.attempts,
            r.input,
            r.output,
            dollars(r.money),
            dollars(r.saved),
            r.wall_ms as f64 / 1000.0,
            models.join(","),
            specs.join(",")
        ));
    }
    text.push_str(&format!(
        "{:<28} {:>8} {:>10} {:>10} {:>11} {:>9}\n",
        "TOTAL",
        rows.values().map(|r| r.attempts).sum::<u64>(),
        rows.values().map(|r| r.input).sum::<u64>(),
        rows.values().map(|r| r.output).sum::<u64>(),
        dollars(rollup.total_micros),
        dollars(rollup.saved_micros)
    ));
    text.push_str(&format!(
        "ledger total (all time): {}  saved by the cache: {}  ({} entries retained)\n",
        dollars(ledger.total_micros),
        dollars(ledger.saved_micros),
        ledger.retained
    ));
    text
}

/// The entries themselves as CSV, a header line first.
fn ledger_csv(entries: &[pb::LedgerEntryInfo]) -> String {
    let mut s = String::from("seq,at_ms,work_item,team,project,workflow,pass,role,tier,provider,model,input_tokens,output_tokens,cached_tokens,estimated,money_micros,saved_micros,wall_ms,agent,worker,outcome,spec\n");
    for e in entries {
        let wi = if e.job_id == 0 { String::new() } else { format!("j{}", e.job_id) };
        let cells = [
            e.seq.to_string(),
            e.at_ms.to_string(),
            wi,
            e.team.clone(),
            e.project.clone(),
            e.workflow.clone(),
            e.pass.clone(),
            e.role.clone(),
            e.tier.clone(),
            e.provider.clone(),
            e.model.clone(),
            e.input_tokens.to_string(),
            e.output_tokens.to_string(),
            e.cached_tokens.to_string(),
            e.estimated.to_string(),
            e.money_micros.to_string(),
            e.saved_micros.to_string(),
            e.wall_ms.to_string(),
            e.agent.clone(),
            e.worker.clone(),
            e.outcome.clone(),
            e.spec.clone(),
        ];
        let line: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
        s.push_str(&line.join(","));
        s.push('\n');
    }
    s
}

fn csv_cell(c: &str) -> String {
    if c.contains([',', '"', '\n']) {
        format!("\"{}\"", c.replace('"', "\"\""))
    } else {
        c.to_string()
    }
}

/// `qm cost forecast`: one run of a workflow (a built-in name or a file), from the ledger.
async fn forecast(client: &Client, workflow: String, output: Output) -> Result<(), Failure> {
    let (name, toml) = workflow_source(workflow)?;
    let resp =
        client.forecast(pb::ForecastRequest { workflow: name, workflow_toml: toml }).await.map_err(status_failure)?;
    let mut text = format!(
        "forecast of one run of {}\n{:<16} {:<13} {:<9} {:>10} {:>10}  {}\n",
        resp.workflow, "PASS", "ROLE", "TIER", "PASS", "GATE", "BASIS"
    );
    for p in &resp.passes {
        let basis = if p.samples == 0 { "tier default".to_string() } else { format!("mean of {} runs", p.samples) };
        text.push_str(&format!(
            "{:<16} {:<13} {:<9} {:>10} {:>10}  {basis}\n",
            p.pass,
            p.role,
            p.tier,
            dollars(p.micros),
            dollars(p.review_micros)
        ));
    }
    text.push_str(&format!("total {}\n", dollars(resp.total_micros)));
    let value = json!({"workflow": resp.workflow, "total_micros": resp.total_micros,
        "passes": resp.passes.iter().map(|p| json!({"pass": p.pass, "role": p.role, "tier": p.tier, "micros": p.micros, "samples": p.samples, "review_micros": p.review_micros, "review_samples": p.review_samples})).collect::<Vec<_>>()});
    emit(output, &value, &text);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_epoch_ms() {
        assert_eq!(since_ms("90s", 100_000).ok(), Some(10_000));
        assert_eq!(since_ms("2h", 10 * 3_600_000).ok(), Some(8 * 3_600_000));
        assert_eq!(since_ms("1700000000000", 5).ok(), Some(1_700_000_000_000));
        assert_eq!(since_ms("1970-01-01T00:00:01.5Z", 5).ok(), Some(1_500));
        assert!(since_ms("1970-01-01T00:00:01", 5).is_err());
        assert!(since_ms("yesterday", 5).is_err());
    }
}
