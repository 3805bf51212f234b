//! `qm job …`, `qm gate …`, `qm budget …`, `qm cost …`, `qm project apply` and
//! `qm scheduler …`: work items and what they cost.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use qm_shared::workflow::{dollars, parse_dollars};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::reserve::emit;
use crate::{status_failure, Failure, Output};

/// Largest work-item or workflow file read.
const FILE_LEN_MAX_BYTES: u64 = 256 * 1024;

#[derive(clap::Args, Debug, Default)]
pub struct SubmitArgs {
    /// A work-item file (TOML with the same keys as these flags: title, class, team, project,
    /// workflow, budget, commit, inputs = { … }, run, review_run); flags override it
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// One-line title
    #[arg(long)]
    pub title: Option<String>,
    /// incident, hotfix, security, feature, refactor or docs (gives the priority)
    #[arg(long)]
    pub class: Option<String>,
    /// Override the class's priority (1..=1000)
    #[arg(long)]
    pub priority: Option<u32>,
    /// Team the work is for (fair share and team budgets)
    #[arg(long)]
    pub team: Option<String>,
    /// Project it works against (registered with `qm project apply`)
    #[arg(long)]
    pub project: Option<String>,
    /// A built-in workflow (qm workflow list) or a workflow file (*.toml)
    #[arg(long)]
    pub workflow: Option<String>,
    /// The work item's own budget in dollars, e.g. 2.50
    #[arg(long)]
    pub budget: Option<String>,
    /// An input as NAME=VALUE (or NAME=@FILE); repeat
    #[arg(long = "input")]
    pub inputs: Vec<String>,
    /// Repo commit the work starts from (part of every artifact cache key)
    #[arg(long)]
    pub commit: Option<String>,
    /// Default executor payload of passes, as JSON ({{pass}}, {{title}}, {{input.NAME}} … are
    /// filled in); default: a scripted agent (see --scripted-ms)
    #[arg(long)]
    pub run: Option<String>,
    /// Default executor payload of agent gate reviews (an output starting FAIL or REJECT
    /// fails the gate); default: a scripted reviewer that passes
    #[arg(long)]
    pub review_run: Option<String>,
    /// Run time of the default scripted passes
    #[arg(long, default_value_t = 1_500)]
    pub scripted_ms: u64,
    /// Wait until the work item ends, showing its events on stderr; exit 1 unless it succeeded
    #[arg(long)]
    pub wait: bool,
}

/// A work-item file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    title: Option<String>,
    class: Option<String>,
    priority: Option<u32>,
    team: Option<String>,
    project: Option<String>,
    workflow: Option<String>,
    budget: Option<String>,
    commit: Option<String>,
    #[serde(default)]
    inputs: BTreeMap<String, String>,
    run: Option<toml::Value>,
    review_run: Option<toml::Value>,
}

fn read_file(path: &std::path::Path) -> Result<String, Failure> {
    let meta = std::fs::metadata(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    if meta.len() > FILE_LEN_MAX_BYTES {
        return Err(Failure::usage(format!(
            "{}: {} bytes, at most {FILE_LEN_MAX_BYTES} allowed",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

fn json_payload(flag: &str, text: &str) -> Result<Vec<u8>, Failure> {
    serde_json::from_str::<Value>(text).map_err(|e| Failure::usage(format!("{flag} is not JSON: {e}")))?;
    Ok(text.as_bytes().to_vec())
}

fn default_run(ms: u64) -> Vec<u8> {
    json!({
        "executor": "scripted", "duration_ms": ms, "steps": 5,
        "input_tokens_per_step": 2000, "output_tokens_per_step": 400,
        "output": "{{workflow}}/{{pass}} ({{role}}, {{tier}}) for {{title}}",
    })
    .to_string()
    .into_bytes()
}

fn default_review_run(ms: u64) -> Vec<u8> {
    json!({
        "executor": "scripted", "duration_ms": (ms / 3).max(100), "steps": 2,
        "input_tokens_per_step": 1000, "output_tokens_per_step": 100,
        "output": "PASS: {{criteria}}",
    })
    .to_string()
    .into_bytes()
}

/// The request a `qm job submit` sends (flags over the file over defaults).
pub fn submit_request(a: &SubmitArgs) -> Result<pb::SubmitJobRequest, Failure> {
    let file: JobFile = match &a.file {
        Some(p) => toml::from_str(&read_file(p)?).map_err(|e| Failure::usage(format!("{}: {e}", p.display())))?,
        None => JobFile::default(),
    };
    let pick = |flag: &Option<String>, file: &Option<String>| flag.clone().or_else(|| file.clone());
    let need = |name: &str, v: Option<String>| v.ok_or_else(|| Failure::usage(format!("--{name} is required")));
    let workflow = need("workflow", pick(&a.workflow, &file.workflow))?;
    let (workflow, workflow_toml) = if workflow.ends_with(".toml") || std::path::Path::new(&workflow).is_file() {
        let path = std::path::Path::new(&workflow);
        let name = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        (name, read_file(path)?)
    } else {
        (workflow, String::new())
    };
    let mut inputs = file.inputs.clone();
    for i in &a.inputs {
        let (k, v) = i.split_once('=').ok_or_else(|| Failure::usage(format!("--input {i:?}: expected NAME=VALUE")))?;
        let v = match v.strip_prefix('@') {
            Some(path) => read_file(std::path::Path::new(path))?,
            None => v.to_string(),
        };
        inputs.insert(k.to_string(), v);
    }
    let toml_json = |v: &Option<toml::Value>| -> Result<Option<Vec<u8>>, Failure> {
        v.as_ref().map(|v| serde_json::to_vec(v).map_err(|e| Failure::usage(format!("run: {e}")))).transpose()
    };
    let run = match &a.run {
        Some(r) => json_payload("--run", r)?,
        None => toml_json(&file.run)?.unwrap_or_else(|| default_run(a.scripted_ms)),
    };
    let review_run = match &a.review_run {
        Some(r) => json_payload("--review-run", r)?,
        None => toml_json(&file.review_run)?.unwrap_or_else(|| default_review_run(a.scripted_ms)),
    };
    let budget = pick(&a.budget, &file.budget)
        .map(|b| parse_dollars("--budget", &b))
        .transpose()
        .map_err(|e| Failure::usage(e.to_string()))?;
    Ok(pb::SubmitJobRequest {
        title: need("title", pick(&a.title, &file.title))?,
        class: pick(&a.class, &file.class).unwrap_or_else(|| "feature".into()),
        team: need("team", pick(&a.team, &file.team))?,
        project: need("project", pick(&a.project, &file.project))?,
        workflow,
        workflow_toml,
        budget_micros: budget.unwrap_or(0),
        inputs: inputs.into_iter().collect(),
        commit: pick(&a.commit, &file.commit).unwrap_or_default(),
        run,
        review_run,
        priority: a.priority.or(file.priority).unwrap_or(0),
    })
}

async fn get(client: &Client, id: u64) -> Result<pb::JobInfo, Failure> {
    client
        .call(|ch| async move { Ok(Client::jobs(ch).get(pb::GetJobRequest { job_id: id }).await?.into_inner()) })
        .await
        .map_err(status_failure)
}

pub async fn submit(client: &Client, a: SubmitArgs, output: Output) -> Result<(), Failure> {
    let req = submit_request(&a)?;
    let resp = client
        .call(|ch| {
            let req = req.clone();
            async move { Ok(Client::jobs(ch).submit(req).await?.into_inner()) }
        })
        .await
        .map_err(status_failure)?;
    let id = resp.job_id;
    if !a.wait {
        emit(
            output,
            &json!({"id": format!("j{id}"), "job_id": id, "priority": resp.priority}),
            &format!("work item j{id} submitted (priority {})\n", resp.priority),
        );
        return Ok(());
    }
    eprintln!("work item j{id} submitted (priority {}); waiting (Ctrl-C stops waiting, not the work)", resp.priority);
    let info = wait_end(client, id, true).await?;
    emit(output, &job_json(&info), &show_text(&info));
    if info.status == "succeeded" {
        Ok(())
    } else {
        Err(Failure::error(format!("work item j{id} {}", info.status)))
    }
}

/// The events after `last` (all of them when `last` is not among them any more), and the new
/// last one.
pub fn new_events<'a>(events: &'a [pb::JobEventInfo], last: &mut Option<pb::JobEventInfo>) -> &'a [pb::JobEventInfo] {
    let from = last.as_ref().and_then(|l| events.iter().rposition(|e| e == l)).map_or(0, |i| i + 1);
    if let Some(e) = events.last() {
        *last = Some(e.clone());
    }
    &events[from..]
}

/// A work item's event as one line.
pub fn event_line(id: u64, e: &pb::JobEventInfo) -> String {
    let pass = if e.pass.is_empty() { String::new() } else { format!("{}: ", e.pass) };
    format!("j{id} {pass}{}", e.message)
}

/// Polls until the work item ends, printing new events on stderr when `progress`.
pub async fn wait_end(client: &Client, id: u64, progress: bool) -> Result<pb::JobInfo, Failure> {
    let mut last = None;
    loop {
        let j = get(client, id).await?;
        if progress {
            for e in new_events(&j.events, &mut last) {
                eprintln!("{}", event_line(id, e));
            }
        }
        if j.status != "running" {
            return Ok(j);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn pass_json(p: &pb::PassInfo) -> Value {
    let gates: Vec<Value> = p
        .gates
        .iter()
        .map(
            |g| json!({"round": g.round, "reviewer": g.reviewer, "passed": g.passed, "note": g.note, "at_ms": g.at_ms}),
        )
        .collect();
    let mut v = json!({
        "name": p.name, "role": p.role, "tier": p.tier, "status": p.status, "runs": p.runs,
        "gate_failures": p.gate_failures, "task_id": p.task_id, "review_task_id": p.review_task_id,
        "wait": p.wait, "artifact": p.artifact, "cost_micros": p.cost_micros,
        "saved_micros": p.saved_micros, "input_tokens": p.input_tokens,
        "output_tokens": p.output_tokens, "wall_ms": p.wall_ms, "after": p.after,
    });
    v["gate"] = json!({"reviewer": p.gate_reviewer, "criteria": p.gate_criteria, "on_fail": p.on_fail});
    v["gate_results"] = Value::Array(gates);
    v["approval_wanted"] = json!(p.approval_wanted);
    v["model"] = json!(p.model);
    v["provider"] = json!(p.provider);
    v
}

pub fn job_json(j: &pb::JobInfo) -> Value {
    let mut v = json!({
        "id": format!("j{}", j.job_id), "job_id": j.job_id, "title": j.title, "class": j.class,
        "priority": j.priority, "team": j.team, "project": j.project, "workflow": j.workflow,
        "status": j.status, "submitted_at_ms": j.submitted_at_ms, "ended_at_ms": j.ended_at_ms,
        "cost_micros": j.cost_micros, "saved_micros": j.saved_micros, "budget_micros": j.budget_micros,
        "commit": j.commit,
    });
    v["inputs"] = json!(j.inputs.iter().collect::<BTreeMap<_, _>>());
    v["passes"] = Value::Array(j.passes.iter().map(pass_json).collect());
    v["events"] = Value::Array(
        j.events.iter().map(|e| json!({"at_ms": e.at_ms, "pass": e.pass, "message": e.message})).collect(),
    );
    v
}

fn show_text(j: &pb::JobInfo) -> String {
    let mut s = format!(
        "work item j{}  {}\n  class {} (priority {})  team {}  project {}  workflow {}\n  status {}  cost {}",
        j.job_id,
        j.title,
        j.class,
        j.priority,
        j.team,
        j.project,
        j.workflow,
        j.status,
        dollars(j.cost_micros)
    );
    if j.saved_micros > 0 {
        s.push_str(&format!("  saved {} (cache)", dollars(j.saved_micros)));
    }
    if j.budget_micros > 0 {
        s.push_str(&format!("  budget {}", dollars(j.budget_micros)));
    }
    s.push_str("\n\n");
    s.push_str(&format!(
        "  {:<14} {:<13} {:<9} {:<15} {:>4} {:>9} {:>8} {:>8}  {}\n",
        "PASS", "ROLE", "TIER", "STATUS", "RUNS", "COST", "TOK-IN", "TOK-OUT", "GATE"
    ));
    for p in &j.passes {
        let gate = match p.gate_reviewer.as_str() {
            "" => "-".to_string(),
            r => {
                let last = p.gates.last().map(|g| if g.passed { ", last passed" } else { ", last failed" });
                format!("{r} (on fail {}{})", p.on_fail, last.unwrap_or(""))
            }
        };
        s.push_str(&format!(
            "  {:<14} {:<13} {:<9} {:<15} {:>4} {:>9} {:>8} {:>8}  {gate}\n",
            p.name,
            p.role,
            p.tier,
            p.status,
            p.runs,
            dollars(p.cost_micros),
            p.input_tokens,
            p.output_tokens
        ));
        if !p.wait.is_empty() && matches!(p.status.as_str(), "queued" | "pending") {
            s.push_str(&format!("      waits: {}\n", p.wait));
        }
        if p.status == "awaiting-human" {
            s.push_str(&format!(
                "      waits for a human: {}\n      qm gate approve j{} {} | qm gate reject j{} {}\n",
                p.gate_criteria, j.job_id, p.name, j.job_id, p.name
            ));
        }
        for g in &p.gates {
            let verdict = if g.passed { "passed" } else { "failed" };
            s.push_str(&format!("      gate round {}: {verdict} by {} {}\n", g.round, g.reviewer, g.note));
        }
        if p.saved_micros > 0 {
            s.push_str(&format!(
                "      reused cached artifact {} (saved {})\n",
                short(&p.artifact),
                dollars(p.saved_micros)
            ));
        }
    }
    if !j.events.is_empty() {
        s.push_str("\n  recent events:\n");
        for e in j.events.iter().rev().take(12).collect::<Vec<_>>().into_iter().rev() {
            let pass = if e.pass.is_empty() { String::new() } else { format!("{}: ", e.pass) };
            s.push_str(&format!("    {pass}{}\n", e.message));
        }
    }
    s
}

fn short(d: &str) -> &str {
    &d[..d.len().min(12)]
}

/// A work-item id as given: `j7` or `7`.
pub fn job_id(text: &str) -> Result<u64, Failure> {
    text.trim_start_matches('j')
        .parse()
        .map_err(|_| Failure::usage(format!("{text:?} is not a work-item id (j7 or 7)")))
}

pub async fn show(client: &Client, id: &str, output: Output) -> Result<(), Failure> {
    let j = get(client, job_id(id)?).await?;
    emit(output, &job_json(&j), &show_text(&j));
    Ok(())
}

pub async fn list(client: &Client, status: String, team: String, output: Output) -> Result<(), Failure> {
    let resp = client
        .call(|ch| {
            let req = pb::ListJobsRequest { status: status.clone(), team: team.clone(), limit: 0 };
            async move { Ok(Client::jobs(ch).list(req).await?.into_inner()) }
        })
        .await
        .map_err(status_failure)?;
    let mut text = format!(
        "{:<6} {:<10} {:>4} {:<12} {:<18} {:<10} {:>9}  {}\n",
        "ID", "CLASS", "PRIO", "TEAM", "WORKFLOW", "STATUS", "COST", "TITLE"
    );
    for j in &resp.jobs {
        let at = j
            .passes
            .iter()
            .find(|p| !matches!(p.status.as_str(), "passed" | "cached"))
            .map(|p| format!(" [{}: {}]", p.name, p.status));
        text.push_str(&format!(
            "{:<6} {:<10} {:>4} {:<12} {:<18} {:<10} {:>9}  {}{}\n",
            format!("j{}", j.job_id),
            j.class,
            j.priority,
            j.team,
            j.workflow,
            j.status,
            dollars(j.cost_micros),
            j.title,
            if j.status == "running" { at.unwrap_or_default() } else { String::new() }
        ));
    }
    emit(output, &json!({"jobs": resp.jobs.iter().map(job_json).collect::<Vec<_>>()}), &text);
    Ok(())
}

pub async fn cancel(client: &Client, id: &str, retry: bool, output: Output) -> Result<(), Failure> {
    let job_id = job_id(id)?;
    let ack = client
        .call(|ch| async move {
            let mut c = Client::jobs(ch);
            let r = pb::JobRef { job_id };
            Ok(if retry { c.retry(r).await? } else { c.cancel(r).await? }.into_inner())
        })
        .await
        .map_err(status_failure)?;
    emit(output, &json!({"job_id": ack.job_id, "message": ack.message}), &format!("{}\n", ack.message));
    Ok(())
}

pub async fn decide(
    client: &Client,
    id: &str,
    pass: String,
    approve: bool,
    note: String,
    by: Option<String>,
    output: Output,
) -> Result<(), Failure> {
    let job_id = job_id(id)?;
    let by = by.or_else(|| std::env::var("USER").ok()).unwrap_or_default();
    let req = pb::DecideGateRequest { job_id, pass, approve, note, by };
    let ack = client
        .call(|ch| {
            let req = req.clone();
            async move { Ok(Client::jobs(ch).decide_gate(req).await?.into_inner()) }
        })
        .await
        .map_err(status_failure)?;
    emit(output, &json!({"job_id": ack.job_id, "message": ack.message}), &format!("{}\n", ack.message));
    Ok(())
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

pub async fn budget_set(
    client: &Client,
    scope: String,
    name: String,
    limit: String,
    period: String,
    output: Output,
) -> Result<(), Failure> {
    let limit_micros = parse_dollars("LIMIT", &limit).map_err(|e| Failure::usage(e.to_string()))?;
    let req = pb::SetBudgetRequest { scope, name, limit_micros, period };
    let b = client
        .call(|ch| {
            let req = req.clone();
            async move { Ok(Client::jobs(ch).set_budget(req).await?.into_inner()) }
        })
        .await
        .map_err(status_failure)?;
    emit(output, &budget_json(&b), &format!("{BUDGET_HEADER}{}", budget_line(&b)));
    Ok(())
}

pub async fn budget_show(client: &Client, output: Output) -> Result<(), Failure> {
    let resp = client
        .call(|ch| async move { Ok(Client::jobs(ch).list_budgets(pb::ListBudgetsRequest {}).await?.into_inner()) })
        .await
        .map_err(status_failure)?;
    let text: String = std::iter::once(BUDGET_HEADER.to_string()).chain(resp.budgets.iter().map(budget_line)).collect();
    emit(output, &json!({"budgets": resp.budgets.iter().map(budget_json).collect::<Vec<_>>()}), &text);
    Ok(())
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

/// `--since`: a duration back from now (`30m`, `24h`, `7d`) or ms since the Unix epoch.
pub fn since_ms(text: &str, now_ms: u64) -> Result<u64, Failure> {
    let bad = || Failure::usage(format!("--since {text:?}: expected a duration like 90s, 30m, 24h, 7d or epoch ms"));
    let (num, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "" => return Ok(n),
        "ms" => n,
        "s" => n * 1_000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return Err(bad()),
    };
    Ok(now_ms.saturating_sub(ms))
}

fn entry_json(e: &pb::LedgerEntryInfo) -> Value {
    json!({"seq": e.seq, "at_ms": e.at_ms, "task_id": e.task_id, "attempt": e.attempt,
        "work_item": if e.job_id == 0 { String::new() } else { format!("j{}", e.job_id) },
        "team": e.team, "project": e.project, "workflow": e.workflow, "pass": e.pass, "role": e.role,
        "tier": e.tier, "provider": e.provider, "model": e.model, "input_tokens": e.input_tokens,
        "output_tokens": e.output_tokens, "cached_tokens": e.cached_tokens, "estimated": e.estimated,
        "money_micros": e.money_micros, "saved_micros": e.saved_micros, "wall_ms": e.wall_ms,
        "agent": e.agent, "worker": e.worker, "outcome": e.outcome})
}

#[derive(Default)]
struct Row {
    attempts: u64,
    input: u64,
    output: u64,
    cached: u64,
    money: u64,
    saved: u64,
    wall_ms: u64,
    models: std::collections::BTreeSet<String>,
}

pub async fn cost_report(client: &Client, by: By, since: Option<String>, output: Output) -> Result<(), Failure> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let since_ms = since.as_deref().map(|s| since_ms(s, now)).transpose()?.unwrap_or(0);
    // Page through the ledger (10,000 entries a page).
    let mut resp = pb::CostReportResponse::default();
    let mut after_seq = 0;
    loop {
        let page = client
            .call(|ch| async move {
                let req = pb::CostReportRequest { since_ms, limit: 0, after_seq };
                Ok(Client::jobs(ch).cost_report(req).await?.into_inner())
            })
            .await
            .map_err(status_failure)?;
        resp.entries.extend(page.entries);
        (resp.total_micros, resp.saved_micros, resp.retained) = (page.total_micros, page.saved_micros, page.retained);
        if page.next_after_seq == 0 {
            break;
        }
        after_seq = page.next_after_seq;
    }
    let key = |e: &pb::LedgerEntryInfo| match by {
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
    };
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for e in &resp.entries {
        let r = rows.entry(key(e)).or_default();
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
    }
    let total: u64 = resp.entries.iter().map(|e| e.money_micros).sum();
    let saved: u64 = resp.entries.iter().map(|e| e.saved_micros).sum();
    let by_name = format!("{by:?}").to_lowercase();
    match output {
        Output::Csv => {
            let mut s = String::from("seq,at_ms,work_item,team,project,workflow,pass,role,tier,provider,model,input_tokens,output_tokens,cached_tokens,estimated,money_micros,saved_micros,wall_ms,agent,worker,outcome\n");
            for e in &resp.entries {
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
                ];
                let line: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
                s.push_str(&line.join(","));
                s.push('\n');
            }
            crate::print_stdout(&s);
        }
        _ => {
            let value = json!({
                "by": by_name, "since_ms": since_ms,
                "rows": rows.iter().map(|(k, r)| json!({"key": k, "attempts": r.attempts, "input_tokens": r.input, "output_tokens": r.output, "cached_tokens": r.cached, "money_micros": r.money, "saved_micros": r.saved, "wall_ms": r.wall_ms, "models": r.models})).collect::<Vec<_>>(),
                "entries": resp.entries.iter().map(entry_json).collect::<Vec<_>>(),
                "total_micros": total, "saved_micros": saved,
                "ledger_total_micros": resp.total_micros, "ledger_saved_micros": resp.saved_micros,
                "retained": resp.retained,
            });
            let mut text = format!(
                "{:<28} {:>8} {:>10} {:>10} {:>11} {:>9} {:>9}  {}\n",
                by_name.to_uppercase(),
                "ATTEMPTS",
                "TOK-IN",
                "TOK-OUT",
                "COST",
                "SAVED",
                "WALL",
                "MODELS"
            );
            for (k, r) in &rows {
                let models: Vec<&str> = r.models.iter().map(|m| m.as_str()).collect();
                text.push_str(&format!(
                    "{:<28} {:>8} {:>10} {:>10} {:>11} {:>9} {:>8.1}s  {}\n",
                    k,
                    r.attempts,
                    r.input,
                    r.output,
                    dollars(r.money),
                    dollars(r.saved),
                    r.wall_ms as f64 / 1000.0,
                    models.join(",")
                ));
            }
            text.push_str(&format!(
                "{:<28} {:>8} {:>10} {:>10} {:>11} {:>9}\n",
                "TOTAL",
                rows.values().map(|r| r.attempts).sum::<u64>(),
                rows.values().map(|r| r.input).sum::<u64>(),
                rows.values().map(|r| r.output).sum::<u64>(),
                dollars(total),
                dollars(saved)
            ));
            text.push_str(&format!(
                "ledger total (all time): {}  saved by the cache: {}  ({} entries retained)\n",
                dollars(resp.total_micros),
                dollars(resp.saved_micros),
                resp.retained
            ));
            emit(output, &value, &text);
        }
    }
    Ok(())
}

fn csv_cell(c: &str) -> String {
    if c.contains([',', '"', '\n']) {
        format!("\"{}\"", c.replace('"', "\"\""))
    } else {
        c.to_string()
    }
}

pub async fn forecast(client: &Client, workflow: String, output: Output) -> Result<(), Failure> {
    let path = std::path::Path::new(&workflow);
    let (name, toml) = if workflow.ends_with(".toml") || path.is_file() {
        (path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default(), read_file(path)?)
    } else {
        (workflow, String::new())
    };
    let resp = client
        .call(|ch| {
            let req = pb::ForecastRequest { workflow: name.clone(), workflow_toml: toml.clone() };
            async move { Ok(Client::jobs(ch).forecast(req).await?.into_inner()) }
        })
        .await
        .map_err(status_failure)?;
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

pub async fn project_apply(client: &Client, file: Option<PathBuf>, output: Output) -> Result<(), Failure> {
    let text = match &file {
        Some(p) => read_file(p)?,
        None => qm_shared::workflow_file::DEMO_PROJECT.to_string(),
    };
    // Check locally first: errors name file and line.
    let name = file.as_ref().map_or("demo project".to_string(), |p| p.display().to_string());
    if let Err(errors) = qm_shared::workflow_file::parse_project(&text, &name) {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        return Err(Failure::usage(lines.join("\n")));
    }
    let resp = client
        .call(|ch| {
            let req = pb::ApplyProjectRequest { project_toml: text.clone() };
            async move { Ok(Client::jobs(ch).apply_project(req).await?.into_inner()) }
        })
        .await
        .map_err(status_failure)?;
    emit(
        output,
        &json!({"name": resp.name, "resources_declared": resp.resources_declared}),
        &format!("project {} applied: {} resources declared\n", resp.name, resp.resources_declared),
    );
    Ok(())
}

#[derive(clap::Args, Debug, Default)]
pub struct SchedulerArgs {
    /// Queued work gains --aging-step priority points every this many ms (lock queues too)
    #[arg(long)]
    pub aging_interval_ms: Option<u64>,
    #[arg(long)]
    pub aging_step: Option<u32>,
    /// Points a team's head of queue loses per task it runs (0: fair share off)
    #[arg(long)]
    pub fair_share_points: Option<u32>,
    /// Work at or above this priority is high-priority for the budget policies
    #[arg(long)]
    pub high_priority_min: Option<u32>,
    /// Budget thresholds in percent of the limit
    #[arg(long)]
    pub budget_approaching_pct: Option<u32>,
    #[arg(long)]
    pub budget_at_pct: Option<u32>,
    /// At the `at` threshold, a high-priority dispatch forecast at this many dollars or more
    /// waits for `qm gate approve`
    #[arg(long)]
    pub high_cost: Option<String>,
    /// A waiter this far above a holder preempts it (resources with policy preempt)
    #[arg(long)]
    pub preempt_gap: Option<u32>,
}

pub async fn scheduler(client: &Client, set: Option<SchedulerArgs>, output: Output) -> Result<(), Failure> {
    let cfg = match set {
        None => client
            .call(
                |ch| async move { Ok(Client::jobs(ch).get_scheduler(pb::GetSchedulerRequest {}).await?.into_inner()) },
            )
            .await
            .map_err(status_failure)?,
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
            };
            client
                .call(|ch| async move { Ok(Client::jobs(ch).set_scheduler(req).await?.into_inner()) })
                .await
                .map_err(status_failure)?
        }
    };
    let value = json!({"aging_interval_ms": cfg.aging_interval_ms, "aging_step": cfg.aging_step,
        "fair_share_points": cfg.fair_share_points, "high_priority_min": cfg.high_priority_min,
        "budget_approaching_pct": cfg.budget_approaching_pct, "budget_at_pct": cfg.budget_at_pct,
        "high_cost_micros": cfg.high_cost_micros, "preempt_gap": cfg.preempt_gap,
        "docs_aging_bound_ms": cfg.docs_aging_bound_ms});
    let text = format!(
        "aging               +{} points every {} ms (a docs item, priority 100, is overtaken by nothing newer after {:.1} s)\n\
         fair share          {} points per running task of a team\n\
         high priority       {} and above\n\
         budget thresholds   approaching {}%, at {}%, over 100%\n\
         high-cost approval  forecast {} or more at the `at` threshold\n\
         preemption gap      {} points\n",
        cfg.aging_step,
        cfg.aging_interval_ms,
        cfg.docs_aging_bound_ms as f64 / 1000.0,
        cfg.fair_share_points,
        cfg.high_priority_min,
        cfg.budget_approaching_pct,
        cfg.budget_at_pct,
        dollars(cfg.high_cost_micros),
        cfg.preempt_gap
    );
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
        assert!(since_ms("yesterday", 5).is_err());
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let a = SubmitArgs {
            title: Some("t".into()),
            team: Some("platform".into()),
            project: Some("demo".into()),
            workflow: Some("docs".into()),
            budget: Some("1.5".into()),
            inputs: vec!["spec=hello".into()],
            scripted_ms: 500,
            ..SubmitArgs::default()
        };
        let r = submit_request(&a).expect("valid");
        assert_eq!(r.class, "feature");
        assert_eq!(r.budget_micros, 1_500_000);
        assert_eq!(r.inputs.get("spec").map(String::as_str), Some("hello"));
        assert!(String::from_utf8_lossy(&r.run).contains("scripted"));
        let bad = SubmitArgs { budget: Some("lots".into()), ..a };
        assert_eq!(submit_request(&bad).err().map(|f| f.code), Some(2));
    }

    #[test]
    fn a_work_item_file_gives_every_field_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("qm-job-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("item.toml");
        std::fs::write(
            &path,
            "title = \"From a file\"\nclass = \"hotfix\"\nteam = \"platform\"\nproject = \"demo\"\n\
             workflow = \"production-bug\"\nbudget = \"3.25\"\ncommit = \"abc\"\n\
             inputs = { ticket = \"T-9\" }\nrun = { executor = \"command\", cmd = \"make fix\" }\n",
        )
        .unwrap();
        let a = SubmitArgs { file: Some(path.clone()), class: Some("incident".into()), ..SubmitArgs::default() };
        let r = submit_request(&a).expect("valid");
        assert_eq!(
            (r.title.as_str(), r.class.as_str(), r.workflow.as_str()),
            ("From a file", "incident", "production-bug")
        );
        assert_eq!(r.budget_micros, 3_250_000);
        assert_eq!(r.inputs.get("ticket").map(String::as_str), Some("T-9"));
        let run: Value = serde_json::from_slice(&r.run).unwrap();
        assert_eq!(run["cmd"], "make fix");
        std::fs::write(&path, "title = \"x\"\nsurprise = 1\n").unwrap();
        let err = submit_request(&SubmitArgs { file: Some(path), ..SubmitArgs::default() }).err().unwrap();
        assert_eq!(err.code, 2);
        assert!(err.message.contains("surprise"), "{}", err.message);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn new_events_resume_after_the_last_one_printed_even_when_the_oldest_are_dropped() {
        let ev = |at: u64, m: &str| pb::JobEventInfo { at_ms: at, pass: String::new(), message: m.into() };
        let mut last = None;
        let first = vec![ev(1, "a"), ev(1, "b")];
        assert_eq!(new_events(&first, &mut last).len(), 2);
        // Same millisecond, more events; then the oldest dropped by the bound.
        let second = vec![ev(1, "a"), ev(1, "b"), ev(1, "c")];
        assert_eq!(new_events(&second, &mut last), &second[2..]);
        let third = vec![ev(1, "c"), ev(2, "d")];
        assert_eq!(new_events(&third, &mut last), &third[1..]);
        assert!(new_events(&third, &mut last).is_empty());
    }
}
