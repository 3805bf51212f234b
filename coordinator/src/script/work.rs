//! Script commands for the scheduler, work items and budgets:
//!
//! ```text
//! worker w1 implementer:2 verifier:1 [gpus=1] [providers=anthropic,local-llama:local] [engines=container] [ttl=N]
//!                               open session w1 and register a worker with these agent slots
//! task implementer [prio=N] [attempts=N] [timeout=N] [team=T] [project=P] [tier=cheap]
//!      [incremental] [X repo:app S pg:db ...]
//!                               submit a task for an agent of that role
//! report w1 t3 done [output="PASS: fine"] [in=N] [out=N] [wall=N]
//! report w1 t3 fail|preempted|timed-out [error="..."]
//! report w1 t3 progress=50 | checkpoint=SEQ [preempt] | blocked="why"
//!                               a worker's report on the task's current attempt ([attempt=N])
//! cancel-task t3
//! project demo | project <<END ... END      register the demo project, or one given inline
//! workflow <<END ... END                    define a workflow (a workflow file, inline)
//! item WORKFLOW [title="..."] [class=feature] [team=T] [project=P] [budget=2.50]
//!      [commit=C] [input.NAME="..."]        submit a work item (a built-in or defined workflow)
//! cancel-item j1 | retry-item j1
//! decide j1 PASS approve|reject [by=NAME] [note="..."]
//! budget SCOPE NAME DOLLARS [period=day|week|month|total]
//! show tasks | show items | show budgets | show workers
//! ```

use std::collections::BTreeMap;
use std::fmt::Write;

use qm_shared::limits::TASK_ATTEMPTS_DEFAULT;
use qm_shared::workflow::{dollars, parse_dollars};
use qm_shared::workflow_file::DEMO_PROJECT;
use qm_shared::workflow_file::{builtin_workflow, class_priority, parse_project, parse_workflow, FileError};
use qm_shared::Role;

use super::{id, items, number, Body, LineError, Opts, Runner};
use crate::state::{Command, GpuInfo, JobId, JobSpec, Outcome, Period, ProviderInfo, Response, Scope};
use crate::state::{TaskId, TaskReport, TaskSpec, Usage, WorkerSpec};

/// The executor payload of a script's work items: the pass and title filled in.
const ITEM_RUN: &str = r#"{"pass":"{{pass}}","title":"{{title}}"}"#;

impl Runner {
    /// Runs `verb` if it is a scheduler, work-item or budget command; `false` if it is not one.
    pub(super) fn run_work(&mut self, verb: &str, args: &[&str], body: &mut Option<Body>) -> Result<bool, LineError> {
        let opts = Opts::of(args);
        match verb {
            "worker" => self.worker(args, &opts)?,
            "task" => self.task(args, &opts)?,
            "report" => self.report(args, &opts)?,
            "cancel-task" => {
                let task = TaskId(id('t', args.first())?);
                self.apply(Command::CancelTask { task });
            }
            "project" => self.project(args, body.take())?,
            "workflow" => {
                let body = body.take().ok_or("workflow needs its file inline: workflow <<END ... END")?;
                let workflow = parse_workflow(&body.text, "workflow").map_err(|e| at_line(&body, e))?;
                writeln!(self.out, "  = workflow {} defined", workflow.name).expect("write to String");
                self.workflows.insert(workflow.name.clone(), workflow);
            }
            "item" => self.item(args, &opts)?,
            "cancel-item" => {
                let job = JobId(id('j', args.first())?);
                self.apply(Command::CancelJob { job });
            }
            "retry-item" => {
                let job = JobId(id('j', args.first())?);
                self.apply(Command::RetryJob { job });
            }
            "decide" => {
                let job = JobId(id('j', args.first())?);
                let pass = args.get(1).ok_or("decide needs a pass name")?.to_string();
                let approve = match args.get(2).copied() {
                    Some("approve") => true,
                    Some("reject") => false,
                    _ => return Err("decide needs approve or reject after the pass".into()),
                };
                let by = opts.text("by").unwrap_or("ana").to_string();
                let note = opts.text("note").unwrap_or_default().to_string();
                self.apply(Command::DecideGate { job, pass, approve, note, by });
            }
            "budget" => {
                let [scope, name, amount] = args
                    .get(..3)
                    .and_then(|a| <[&str; 3]>::try_from(a).ok())
                    .ok_or("budget needs a scope, a name and an amount in dollars: budget team platform 5.00")?;
                let scope: Scope = scope.parse().map_err(|e: qm_shared::Invalid| e.to_string())?;
                let limit_micros = parse_dollars("amount", amount).map_err(|e| e.to_string())?;
                let period = match opts.text("period") {
                    None => Period::Total,
                    Some(p) => p.parse().map_err(|e: qm_shared::Invalid| e.to_string())?,
                };
                self.apply(Command::SetBudget { scope, name: name.to_string(), limit_micros, period });
            }
            "show" if !args.is_empty() => {
                let text = match args[0] {
                    "tasks" => self.render_tasks(),
                    "items" => self.render_items(),
                    "budgets" => self.render_budgets(),
                    "workers" => self.render_workers(),
                    other => return Err(format!("show {other}: expected tasks, items, budgets or workers").into()),
                };
                self.table(&text);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn worker(&mut self, args: &[&str], opts: &Opts) -> Result<(), String> {
        let name = args.first().ok_or("worker needs a name")?;
        let mut slots = BTreeMap::new();
        for w in args[1..].iter().filter(|w| !w.contains('=')) {
            let (role, n) = w.split_once(':').ok_or_else(|| format!("{w}: expected role:slots"))?;
            let role: Role = role.parse().map_err(|e: qm_shared::agent::UnknownName| e.to_string())?;
            slots.insert(role, number(role.as_str(), n)? as u32);
        }
        let gpus = (0..opts.number("gpus")?.unwrap_or(0) as u32)
            .map(|index| GpuInfo { index, model: "gpu".into(), memory_bytes: 24 << 30 })
            .collect();
        let providers = opts
            .text("providers")
            .unwrap_or_default()
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (name, local) = p.strip_suffix(":local").map_or((p, false), |n| (n, true));
                ProviderInfo { name: name.to_string(), kind: "openai".into(), local }
            })
            .collect();
        let ttl_ms = opts.number("ttl")?.unwrap_or(300_000);
        let response = self.apply(Command::OpenSession { label: name.to_string(), ttl_ms, principal: String::new() });
        let Response::SessionOpened { session, .. } = response else { return Ok(()) };
        self.sessions.insert(name.to_string(), session);
        let spec = WorkerSpec {
            session,
            node_id: name.to_string(),
            slots,
            labels: BTreeMap::new(),
            running: Vec::new(),
            gpus,
            providers,
            container: opts.text("engines").is_some_and(|e| e.split(',').any(|e| e == "container")),
            specs: BTreeMap::new(),
            repos: Default::default(),
            clis: Default::default(),
        };
        self.apply(Command::RegisterWorker(spec));
        Ok(())
    }

    fn task(&mut self, args: &[&str], opts: &Opts) -> Result<(), String> {
        let role: Role = args
            .first()
            .ok_or("task needs a role")?
            .parse()
            .map_err(|e: qm_shared::agent::UnknownName| e.to_string())?;
        let words = args[1..].iter().filter(|w| !w.contains('=') && **w != "incremental");
        let tier =
            opts.text("tier").map(str::parse).transpose().map_err(|e: qm_shared::agent::UnknownName| e.to_string())?;
        let spec = TaskSpec {
            role,
            items: items(words, opts.number("units")?.unwrap_or(1) as u32)?,
            payload: b"{}".to_vec(),
            priority: opts.number("prio")?.unwrap_or(500) as u32,
            work_item: String::new(),
            max_attempts: opts.number("attempts")?.map_or(TASK_ATTEMPTS_DEFAULT, |n| n as u32),
            timeout_ms: opts.number("timeout")?.unwrap_or(0),
            incremental: args.contains(&"incremental"),
            team: opts.text("team").unwrap_or_default().to_string(),
            project: opts.text("project").unwrap_or_default().to_string(),
            tier,
            requires: Vec::new(),
            principal: String::new(),
        };
        self.apply(Command::SubmitTask(spec));
        Ok(())
    }

    fn report(&mut self, args: &[&str], opts: &Opts) -> Result<(), String> {
        let session = self.session(args.first())?;
        let task = TaskId(id('t', args.get(1))?);
        let attempt = match opts.number("attempt")? {
            Some(n) => n as u32,
            None => self.state.tasks().get(task).map_or(0, |t| t.attempt),
        };
        let usage = Usage {
            input_tokens: opts.number("in")?.unwrap_or(0),
            output_tokens: opts.number("out")?.unwrap_or(0),
            cached_tokens: 0,
            estimated: false,
            reported_micros: None,
        };
        let finished = |outcome| TaskReport::Finished {
            outcome,
            output: opts.text("output").unwrap_or_default().as_bytes().to_vec(),
            error: opts.text("error").unwrap_or_default().to_string(),
            usage,
            wall_ms: 1_000,
            agent: format!("{}/agent-0", args[0]),
            spec: String::new(),
        };
        let report = match args.get(2).map(|w| w.split_once('=').map_or(*w, |(k, _)| k)) {
            Some("done") => finished(Outcome::Succeeded),
            Some("fail") => finished(Outcome::Failed),
            Some("preempted") => finished(Outcome::Preempted),
            Some("timed-out") => finished(Outcome::TimedOut),
            Some("progress") => TaskReport::Progress {
                percent: opts.number("progress")?.unwrap_or(0) as u32,
                stage: opts.text("stage").unwrap_or_default().to_string(),
                usage,
            },
            Some("checkpoint") => TaskReport::Checkpoint {
                seq: opts.number("checkpoint")?.unwrap_or(1),
                data: b"checkpoint".to_vec(),
                for_preemption: args.contains(&"preempt"),
            },
            Some("blocked") => TaskReport::Blocked { message: opts.text("blocked").unwrap_or_default().to_string() },
            _ => {
                return Err("report needs done, fail, preempted, timed-out, progress=N, checkpoint=N or blocked=".into())
            }
        };
        self.apply(Command::ReportTask { session, task, attempt, report });
        Ok(())
    }

    fn project(&mut self, args: &[&str], body: Option<Body>) -> Result<(), LineError> {
        let project = match (args.first().copied(), body) {
            (Some("demo"), None) => {
                parse_project(DEMO_PROJECT, "projects/demo.toml").map_err(|e| format!("the demo project: {}", e[0]))?
            }
            (None, Some(body)) => parse_project(&body.text, "project").map_err(|e| at_line(&body, e))?,
            _ => return Err("project needs `demo` or its file inline: project <<END ... END".into()),
        };
        self.apply(Command::ApplyProject(Box::new(project)));
        Ok(())
    }

    fn item(&mut self, args: &[&str], opts: &Opts) -> Result<(), String> {
        let name = args.first().ok_or("item needs a workflow name")?;
        let workflow = match self.workflows.get(*name) {
            Some(w) => w.clone(),
            None => builtin_workflow(name).ok_or_else(|| format!("workflow {name} is neither built in nor defined"))?,
        };
        let class = opts.text("class").unwrap_or("feature");
        let priority = match opts.number("prio")? {
            Some(p) => p as u32,
            None => class_priority(class).ok_or_else(|| format!("class {class} is not a known class"))?,
        };
        let budget_micros =
            opts.text("budget").map(|b| parse_dollars("budget", b)).transpose().map_err(|e| e.to_string())?;
        let inputs = opts
            .0
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("input.").map(|k| (k.to_string(), v.to_string())))
            .collect();
        let spec = JobSpec {
            title: opts.text("title").unwrap_or(name).to_string(),
            class: class.to_string(),
            priority,
            team: opts.text("team").unwrap_or_default().to_string(),
            project: opts.text("project").unwrap_or_default().to_string(),
            workflow,
            budget_micros,
            inputs,
            commit: opts.text("commit").unwrap_or("c0").to_string(),
            run: ITEM_RUN.as_bytes().to_vec(),
            review_run: ITEM_RUN.as_bytes().to_vec(),
            principal: String::new(),
            complexity: Default::default(),
        };
        self.apply(Command::SubmitJob(Box::new(spec)));
        Ok(())
    }

    fn render_tasks(&self) -> String {
        let mut out = String::new();
        for t in self.state.tasks().iter() {
            let mut line = format!(
                "{} {} prio={} {} attempt={}",
                t.id,
                t.spec.role,
                t.spec.priority,
                t.status.as_str(),
                t.attempt
            );
            if let Some(s) = t.session {
                write!(line, " worker={s}").expect("write to String");
            }
            if t.failures > 0 {
                write!(line, " failures={}", t.failures).expect("write to String");
            }
            if let Some(c) = &t.checkpoint {
                write!(line, " checkpoint={}", c.seq).expect("write to String");
            }
            if let Some(r) = &t.route {
                write!(line, " route={}/{}", r.provider, r.model).expect("write to String");
            }
            if let Some(w) = &t.wait {
                write!(line, " waits: {w}").expect("write to String");
            }
            writeln!(out, "{line}").expect("write to String");
        }
        if out.is_empty() {
            out.push_str("no tasks\n");
        }
        out
    }

    fn render_items(&self) -> String {
        let mut out = String::new();
        for j in self.state.jobs().iter() {
            let cost = dollars(j.cost_micros);
            let mut line =
                format!("{} {} {} prio={} cost={cost}", j.id, j.spec.title, j.status.as_str(), j.spec.priority);
            if j.saved_micros > 0 {
                write!(line, " saved={}", dollars(j.saved_micros)).expect("write to String");
            }
            writeln!(out, "{line}").expect("write to String");
            for p in &j.passes {
                let mut line = format!("  {} {} tier={}", p.name, p.status.as_str(), p.tier.as_str());
                if p.runs > 0 {
                    write!(line, " runs={}", p.runs).expect("write to String");
                }
                if p.gate_failures > 0 {
                    write!(line, " gate_failures={}", p.gate_failures).expect("write to String");
                }
                if let Some(t) = p.task {
                    write!(line, " task={t}").expect("write to String");
                }
                if let Some(t) = p.review {
                    write!(line, " review={t}").expect("write to String");
                }
                if p.cost_micros > 0 {
                    write!(line, " cost={}", dollars(p.cost_micros)).expect("write to String");
                }
                if let Some(w) = &p.wait {
                    write!(line, " waits: {w}").expect("write to String");
                }
                writeln!(out, "{line}").expect("write to String");
            }
        }
        if out.is_empty() {
            out.push_str("no work items\n");
        }
        out
    }

    fn render_budgets(&self) -> String {
        let mut out = String::new();
        for b in self.state.jobs().budgets() {
            writeln!(
                out,
                "{} {} {} spent={} committed={} limit={} level={}",
                b.scope.as_str(),
                b.name,
                b.period.as_str(),
                dollars(b.spent_micros),
                dollars(b.committed_micros),
                dollars(b.limit_micros),
                b.level.as_str()
            )
            .expect("write to String");
        }
        let jobs = self.state.jobs();
        writeln!(out, "ledger: {} entries, total={}", jobs.ledger_len(), dollars(jobs.total_micros()))
            .expect("write to String");
        out
    }

    fn render_workers(&self) -> String {
        let mut out = String::new();
        for w in self.state.tasks().workers() {
            let slots: Vec<String> = w.slots.iter().map(|(r, n)| format!("{r}:{n}")).collect();
            let running: Vec<String> = w.running.keys().map(|t| t.to_string()).collect();
            writeln!(out, "{} {} slots={} running=[{}]", w.session, w.node_id, slots.join(","), running.join(","))
                .expect("write to String");
        }
        if out.is_empty() {
            out.push_str("no workers\n");
        }
        out
    }
}

/// The first error of an inline file, on its line of the script.
fn at_line(body: &Body, errors: Vec<FileError>) -> LineError {
    let e = &errors[0];
    let line = body.first_line + e.line.map_or(0, |l| l - 1);
    let field = if e.field.is_empty() { String::new() } else { format!("{}: ", e.field) };
    let more = if errors.len() > 1 { format!(" (and {} more)", errors.len() - 1) } else { String::new() };
    LineError::At(line, format!("{field}{}{more}", e.message))
}
