//! `qm job submit|show|list|cancel|retry|wait`: its arguments and handlers. Work items: tickets
//! that flow through a workflow's passes, gates and budgets. Also the pieces other commands
//! share: work-item ids, reading work-item and workflow files, following a work item's events.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use qm_shared::workflow::{dollars, parse_dollars};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::reserve::emit;
use crate::{status_failure, Failure, Output};

/// Largest work-item or workflow file read.
const FILE_LEN_MAX_BYTES: u64 = 256 * 1024;

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Start a work item on a workflow (from flags or a file)
    Submit(SubmitArgs),
    /// Where a work item stands: passes, gate results, what it waits for and why, its cost
    Show {
        /// The work item (`j7` or `7`)
        id: String,
    },
    /// Work items, newest first
    List {
        /// running, succeeded, failed or cancelled
        #[arg(long, default_value = "")]
        status: String,
        /// Only this team's work items
        #[arg(long, default_value = "")]
        team: String,
    },
    /// Stop a running work item (running passes are told to stop)
    Cancel {
        /// The work item (`j7` or `7`)
        id: String,
    },
    /// Run a failed or cancelled work item again from its unfinished passes
    Retry {
        /// The work item (`j7` or `7`)
        id: String,
    },
    /// Wait until the work item ends, or stops at a gate that waits for a human, showing its
    /// events on stderr. Exit 0 when it succeeded, 1 when it failed or was cancelled, 5 when it
    /// waits for a human (the output names the gate and the `qm gate approve|reject` to run)
    Wait {
        /// The work item (`j7` or `7`)
        id: String,
    },
}

/// `qm job …`.
pub async fn dispatch(command: JobCommand, client: &Client, output: Output) -> Result<(), Failure> {
    match command {
        JobCommand::Submit(a) => submit(client, a, output).await,
        JobCommand::Show { id } => show(client, &id, output).await,
        JobCommand::List { status, team } => list(client, status, team, output).await,
        JobCommand::Cancel { id } => cancel(client, &id, false, output).await,
        JobCommand::Retry { id } => cancel(client, &id, true, output).await,
        JobCommand::Wait { id } => {
            let id = job_id(&id)?;
            eprintln!("waiting for work item j{id} (Ctrl-C stops waiting, not the work)");
            wait_and_report(client, id, output).await
        }
    }
}

#[derive(clap::Args, Debug, Default)]
pub struct SubmitArgs {
    /// A work-item file (TOML with the same keys as these flags: title, class, team, project,
    /// workflow, budget, commit, complexity, inputs = { … }, run, review_run); flags override it
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
    /// Repo commit the work starts from (part of every artifact cache key; `{{commit}}` in
    /// payloads)
    #[arg(long)]
    pub commit: Option<String>,
    /// low, normal or high: every pass starts a tier lower (low) or higher (high) than its
    /// workflow says, so a hard ticket goes to a stronger model from the start [default: normal]
    #[arg(long)]
    pub complexity: Option<String>,
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
    /// Wait until the work item ends or a gate waits for a human, showing its events on
    /// stderr; exit 0 when it succeeded, 1 when it failed, 5 at a human gate (then `qm gate
    /// approve` and `qm job wait`)
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
    complexity: Option<String>,
    #[serde(default)]
    inputs: BTreeMap<String, String>,
    run: Option<toml::Value>,
    review_run: Option<toml::Value>,
}

/// A work-item, workflow or project file's text, within the size bound.
pub fn read_file(path: &Path) -> Result<String, Failure> {
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

/// A workflow as given: a file (it ends in `.toml` or is one) as its name (the file stem) and
/// its text, else a built-in name and no text.
pub fn workflow_source(workflow: String) -> Result<(String, String), Failure> {
    let path = Path::new(&workflow);
    if workflow.ends_with(".toml") || path.is_file() {
        let name = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        Ok((name, read_file(path)?))
    } else {
        Ok((workflow, String::new()))
    }
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
    let (workflow, workflow_toml) = workflow_source(workflow)?;
    let mut inputs = file.inputs.clone();
    for i in &a.inputs {
        let (k, v) = i.split_once('=').ok_or_else(|| Failure::usage(format!("--input {i:?}: expected NAME=VALUE")))?;
        let v = match v.strip_prefix('@') {
            Some(path) => read_file(Path::new(path))?,
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
        complexity: pick(&a.complexity, &file.complexity).unwrap_or_default(),
    })
}

async fn get(client: &Client, id: u64) -> Result<pb::JobInfo, Failure> {
    client.get_job(pb::GetJobRequest { job_id: id }).await.map_err(status_failure)
}

async fn submit(client: &Client, a: SubmitArgs, output: Output) -> Result<(), Failure> {
    let req = submit_request(&a)?;
    let resp = client.submit_job(req).await.map_err(status_failure)?;
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
    wait_and_report(client, id, output).await
}

/// Waits for work item `id` ([`wait_end`]), prints where it stands and maps that to the exit
/// code: succeeded 0, awaiting a human 5, anything else 1.
async fn wait_and_report(client: &Client, id: u64, output: Output) -> Result<(), Failure> {
    let info = wait_end(client, id, true).await?;
    emit(output, &job_json(&info), &show_text(&info));
    if let Some(p) = awaiting_human(&info) {
        return Err(Failure::waiting(format!(
            "work item j{id} waits for a human at gate {0}: `qm gate approve j{id} {0}` (or reject), then `qm job wait j{id}`",
            p.name
        )));
    }
    if info.status == "succeeded" {
        Ok(())
    } else {
        Err(Failure::error(format!("work item j{id} {}", info.status)))
    }
}

/// The first pass whose gate waits for a human, while the item runs.
fn awaiting_human(info: &pb::JobInfo) -> Option<&pb::PassInfo> {
    if info.status != "running" {
        return None;
    }
    info.passes.iter().find(|p| p.status == "awaiting-human")
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

/// Polls until the work item ends or waits for a human at a gate, printing new events on
/// stderr when `progress`.
pub async fn wait_end(client: &Client, id: u64, progress: bool) -> Result<pb::JobInfo, Failure> {
    let mut last = None;
    loop {
        let j = get(client, id).await?;
        if progress {
            for e in new_events(&j.events, &mut last) {
                eprintln!("{}", event_line(id, e));
            }
        }
        if j.status != "running" || awaiting_human(&j).is_some() {
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
    crate::ids::job(text).map_err(Failure::usage)
}

async fn show(client: &Client, id: &str, output: Output) -> Result<(), Failure> {
    let j = get(client, job_id(id)?).await?;
    emit(output, &job_json(&j), &show_text(&j));
    Ok(())
}

async fn list(client: &Client, status: String, team: String, output: Output) -> Result<(), Failure> {
    let resp = client.list_jobs(pb::ListJobsRequest { status, team, limit: 0 }).await.map_err(status_failure)?;
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

async fn cancel(client: &Client, id: &str, retry: bool, output: Output) -> Result<(), Failure> {
    let job_id = job_id(id)?;
    let r = pb::JobRef { job_id };
    let ack = if retry { client.retry_job(r).await } else { client.cancel_job(r).await }.map_err(status_failure)?;
    emit(output, &json!({"job_id": ack.job_id, "message": ack.message}), &format!("{}\n", ack.message));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
