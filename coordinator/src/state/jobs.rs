//! Work items, their workflows, budgets, the cost ledger and the artifact cache.
//!
//! ```text
//!   SubmitJob ─▶ passes Pending ─(after: all passed)─▶ cache hit? ─yes─▶ Cached
//!                                                         │no
//!                                                         ▼
//!        task Queued ─dispatch (budget admission)─▶ Running ─▶ succeeded ─▶ gate
//!                                                                  agent: review task
//!                                                                  human: AwaitingHuman
//!        gate passed ─▶ Passed (artifact cached)      gate failed ─▶ on_fail: retry,
//!                                                     escalate a tier, send back, stop
//! ```
//!
//! Every attempt of every task writes a ledger entry (model, provider, tokens, money, wall
//! time, agent, worker, outcome); money comes from the project's price table (a local
//! provider: its box's hourly cost × wall time). Budgets at org, team, project and work-item
//! scope are checked at dispatch against a forecast (the mean cost of the same pass and tier
//! in the ledger's history, a per-tier default before there is any). Pure, like the rest of
//! the state: no clock, no I/O, `BTreeMap` only.

use std::collections::{BTreeMap, BTreeSet};

use qm_shared::limits::{
    ARTIFACTS_MAX, ARTIFACT_BYTES_TOTAL_MAX, BUDGETS_MAX, CAPACITY_MAX, GATE_FAILURES_MAX, JOBS_ENDED_RETAINED_MAX,
    JOBS_MAX, JOB_EVENTS_MAX, JOB_INPUTS_MAX, JOB_INPUT_BYTES_MAX, LEDGER_ENTRIES_MAX, MONEY_MICROS_MAX,
    NAME_LEN_MAX_BYTES, PREEMPT_GRACE_MS_MAX, PREEMPT_GRACE_MS_MIN, PROJECTS_MAX, PROJECT_ENTRIES_MAX,
    TASK_ATTEMPTS_MAX, TASK_PAYLOAD_BYTES_MAX, TEXT_LEN_MAX_BYTES, WORKFLOW_PASSES_MAX,
};
use qm_shared::workflow::{dollars, OnFail, Project, Reviewer, Workflow};
use qm_shared::{validate, Invalid, Mode, ResourcePath, Role, Tier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::tasks::{Admission, Outcome, Task, TaskSpec, TaskStatus, Usage};
use super::types::{Command, Effect, Item, JobId, Millis, Policy, Refusal, Response, TaskId};
use super::{Ctx, ResourceConfig, State};

const DAY_MS: u64 = 86_400_000;

/// Where a budget applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    Org,
    Team,
    Project,
    /// One work item (`j<id>`).
    Item,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Org, Scope::Team, Scope::Project, Scope::Item];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Org => "org",
            Scope::Team => "team",
            Scope::Project => "project",
            Scope::Item => "work-item",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Scope, Invalid> {
        Scope::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| Invalid::new("scope", format!("{s:?} is not one of org, team, project, work-item")))
    }
}

/// A budget's period; spending starts again from zero when it rolls over (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Period {
    Day,
    /// Monday to Sunday.
    Week,
    /// A calendar month.
    Month,
    /// Never rolls over.
    Total,
}

impl Period {
    pub const ALL: [Period; 4] = [Period::Day, Period::Week, Period::Month, Period::Total];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Total => "total",
        }
    }

    /// Start of the period containing `now`.
    pub fn start(self, now: Millis) -> Millis {
        let days = now / DAY_MS;
        match self {
            Period::Day => days * DAY_MS,
            // 1970-01-01 was a Thursday: Monday is 3 days before day 0's week offset.
            Period::Week => (days - (days + 3) % 7) * DAY_MS,
            Period::Month => {
                let (y, m, _) = civil_from_days(days as i64);
                days_from_civil(y, m, 1) as u64 * DAY_MS
            }
            Period::Total => 0,
        }
    }

    /// End of the period starting at `start`; `None` for `total`.
    pub fn end(self, start: Millis) -> Option<Millis> {
        match self {
            Period::Day => Some(start + DAY_MS),
            Period::Week => Some(start + 7 * DAY_MS),
            Period::Month => {
                let (y, m, _) = civil_from_days((start / DAY_MS) as i64);
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                Some(days_from_civil(y, m, 1) as u64 * DAY_MS)
            }
            Period::Total => None,
        }
    }
}

impl std::str::FromStr for Period {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Period, Invalid> {
        Period::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| Invalid::new("period", format!("{s:?} is not one of day, week, month, total")))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// How far into its limit a budget is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    #[default]
    Under,
    Approaching,
    At,
    Over,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Under => "under",
            Level::Approaching => "approaching",
            Level::At => "at",
            Level::Over => "over",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub scope: Scope,
    pub name: String,
    pub limit_micros: u64,
    pub period: Period,
    pub period_start: Millis,
    /// Spent in this period (ledger money).
    pub spent_micros: u64,
    /// Forecast cost of the attempts running now.
    pub committed_micros: u64,
    pub level: Level,
}

/// A work item as submitted: its workflow travels with it (built-in or a team's file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub title: String,
    pub class: String,
    pub priority: u32,
    pub team: String,
    pub project: String,
    pub workflow: Workflow,
    /// The work item's own budget (period `total`).
    pub budget_micros: Option<u64>,
    pub inputs: BTreeMap<String, String>,
    /// The repo commit the work starts from (part of every cache key).
    pub commit: String,
    /// Executor payload of passes that name none (JSON; `{{pass}}`, `{{title}}`, … filled in).
    pub run: Vec<u8>,
    /// Executor payload of agent reviews that name none.
    pub review_run: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum JobStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PassStatus {
    /// Waits for the passes it comes after.
    Pending,
    /// Its task waits for dispatch (see `wait` for why, when it is held back).
    Queued,
    Running,
    /// An agent reviews its gate.
    Reviewing,
    /// Waits for `qm gate approve|reject`.
    AwaitingHuman,
    Passed,
    /// Reused a cached artifact instead of running.
    Cached,
    Failed,
    Cancelled,
}

impl PassStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PassStatus::Pending => "pending",
            PassStatus::Queued => "queued",
            PassStatus::Running => "running",
            PassStatus::Reviewing => "reviewing",
            PassStatus::AwaitingHuman => "awaiting-human",
            PassStatus::Passed => "passed",
            PassStatus::Cached => "cached",
            PassStatus::Failed => "failed",
            PassStatus::Cancelled => "cancelled",
        }
    }

    fn done(self) -> bool {
        matches!(self, PassStatus::Passed | PassStatus::Cached)
    }

    fn active(self) -> bool {
        matches!(self, PassStatus::Queued | PassStatus::Running | PassStatus::Reviewing)
    }
}

/// One decision of a gate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateResult {
    pub round: u32,
    /// `agent <name>` or `human <name>`.
    pub reviewer: String,
    pub passed: bool,
    pub note: String,
    pub at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassState {
    pub name: String,
    pub status: PassStatus,
    /// The tier it runs at now (escalations raise it).
    pub tier: Tier,
    /// Times it was started.
    pub runs: u32,
    pub gate_failures: u32,
    pub task: Option<TaskId>,
    pub review: Option<TaskId>,
    pub gates: Vec<GateResult>,
    /// Why it is not running, when it waits.
    pub wait: Option<String>,
    /// Content address of its output.
    pub artifact: Option<String>,
    pub cache_key: String,
    /// Everything it cost (all runs, reviews included), and what this run cost.
    pub cost_micros: u64,
    pub run_cost_micros: u64,
    pub saved_micros: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub wall_ms: u64,
    /// A spend approval is wanted before dispatch (budget at its `at` threshold).
    pub approval_wanted: bool,
    pub spend_approved: bool,
}

impl PassState {
    fn new(name: &str, tier: Tier) -> PassState {
        PassState {
            name: name.to_string(),
            status: PassStatus::Pending,
            tier,
            runs: 0,
            gate_failures: 0,
            task: None,
            review: None,
            gates: Vec::new(),
            wait: None,
            artifact: None,
            cache_key: String::new(),
            cost_micros: 0,
            run_cost_micros: 0,
            saved_micros: 0,
            input_tokens: 0,
            output_tokens: 0,
            wall_ms: 0,
            approval_wanted: false,
            spend_approved: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub at: Millis,
    pub pass: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub spec: JobSpec,
    pub status: JobStatus,
    pub passes: Vec<PassState>,
    pub submitted_at: Millis,
    pub ended_at: Option<Millis>,
    /// The last `JOB_EVENTS_MAX` events.
    pub events: Vec<JobEvent>,
    pub cost_micros: u64,
    pub saved_micros: u64,
}

/// One attempt, as the ledger keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub seq: u64,
    pub at: Millis,
    pub task: TaskId,
    pub attempt: u32,
    pub job: Option<JobId>,
    pub team: String,
    pub project: String,
    pub workflow: String,
    /// The pass (`<pass>#gate` for its review).
    pub pass: String,
    pub role: Role,
    pub tier: Option<Tier>,
    pub provider: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub estimated: bool,
    pub money_micros: u64,
    /// A cached artifact reused: what running the pass cost when it was made.
    pub saved_micros: u64,
    pub wall_ms: u64,
    pub agent: String,
    pub worker: String,
    /// succeeded, failed, cancelled, preempted, timed-out, lost or cached.
    pub outcome: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct CacheEntry {
    digest: String,
    cost_micros: u64,
    seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Kind {
    Work,
    Review,
}

/// The work-item part of the replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jobs {
    next_job: u64,
    jobs: BTreeMap<JobId, Job>,
    ended: BTreeSet<(Millis, JobId)>,
    by_task: BTreeMap<TaskId, (JobId, usize, Kind)>,
    projects: BTreeMap<String, Project>,
    /// `api:<provider>` of every project's providers (parsed once, when the project is applied).
    provider_paths: BTreeMap<String, ResourcePath>,
    /// Budgets per scope, by name.
    budgets: BTreeMap<Scope, BTreeMap<String, Budget>>,
    /// Forecasts of running job tasks, counted in their budgets' `committed`.
    commits: BTreeMap<TaskId, u64>,
    ledger: BTreeMap<u64, LedgerEntry>,
    ledger_seq: u64,
    total_micros: u64,
    saved_micros: u64,
    /// (workflow, pass, tier) → (succeeded attempts, their money): the forecast's history.
    history: BTreeMap<String, BTreeMap<String, [(u64, u64); 3]>>,
    cache: BTreeMap<String, CacheEntry>,
    cache_order: BTreeMap<u64, String>,
    artifacts: BTreeMap<String, (u64, Vec<u8>)>,
    artifact_order: BTreeMap<u64, String>,
    artifact_bytes: usize,
    seq: u64,
}

impl Jobs {
    pub fn get(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Job> {
        self.jobs.values()
    }

    pub fn budgets(&self) -> impl Iterator<Item = &Budget> {
        self.budgets.values().flat_map(|m| m.values())
    }

    fn budget_count(&self) -> usize {
        self.budgets.values().map(|m| m.len()).sum()
    }

    /// The name a scope's budget covering this work has (`None`: the work has no such scope).
    fn scope_name<'a>(scope: Scope, team: &'a str, project: &'a str, job: &'a str) -> Option<&'a str> {
        let name = match scope {
            Scope::Org => "org",
            Scope::Team => team,
            Scope::Project => project,
            Scope::Item => job,
        };
        (!name.is_empty()).then_some(name)
    }

    /// The budgets covering work of `team`, `project` and work item `job` (`j7`; empty: none).
    fn covering<'a>(&'a self, team: &'a str, project: &'a str, job: &'a str) -> impl Iterator<Item = &'a Budget> {
        self.budgets.iter().filter_map(move |(scope, m)| m.get(Jobs::scope_name(*scope, team, project, job)?))
    }

    fn for_covering(&mut self, team: &str, project: &str, job: &str, mut f: impl FnMut(&mut Budget)) {
        for (scope, m) in self.budgets.iter_mut() {
            if let Some(b) = Jobs::scope_name(*scope, team, project, job).and_then(|n| m.get_mut(n)) {
                f(b);
            }
        }
    }

    pub fn projects(&self) -> impl Iterator<Item = &Project> {
        self.projects.values()
    }

    /// Ledger entries, oldest first.
    pub fn ledger(&self) -> impl DoubleEndedIterator<Item = &LedgerEntry> {
        self.ledger.values()
    }

    /// Ledger entries after sequence number `seq`, oldest first.
    pub fn ledger_after(&self, seq: u64) -> impl Iterator<Item = &LedgerEntry> {
        self.ledger.range(seq.saturating_add(1)..).map(|(_, e)| e)
    }

    pub fn ledger_len(&self) -> usize {
        self.ledger.len()
    }

    /// Money of every attempt ever recorded (kept exact past the retained entries).
    pub fn total_micros(&self) -> u64 {
        self.total_micros
    }

    pub fn saved_micros(&self) -> u64 {
        self.saved_micros
    }

    pub fn artifact(&self, digest: &str) -> Option<&[u8]> {
        self.artifacts.get(digest).map(|(_, d)| d.as_slice())
    }

    /// The forecast of one run of `pass` at `tier`, and whether history backs it (else the
    /// tier's default).
    pub fn forecast(&self, config: &super::Config, workflow: &str, pass: &str, tier: Tier) -> (u64, u64) {
        match self.history.get(workflow).and_then(|m| m.get(pass)).map(|h| h[tier as usize]) {
            Some((n, money)) if n > 0 => (money / n, n),
            _ => (config.forecast_default_micros[tier as usize], 0),
        }
    }

    fn link(&self, task: TaskId) -> Option<(JobId, usize, Kind)> {
        self.by_task.get(&task).copied()
    }

    fn event(&mut self, job: JobId, pass: &str, message: String, ctx: &mut Ctx) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        if j.events.len() >= JOB_EVENTS_MAX {
            j.events.remove(0);
        }
        if j.events.capacity() == 0 {
            j.events.reserve_exact(4 * j.passes.len() + 2);
        }
        j.events.push(JobEvent { at: ctx.now, pass: pass.to_string(), message });
    }

    fn store_artifact(&mut self, digest: &str, data: Vec<u8>) {
        if self.artifacts.contains_key(digest) {
            return;
        }
        self.seq += 1;
        self.artifact_bytes += data.len();
        self.artifacts.insert(digest.to_string(), (self.seq, data));
        self.artifact_order.insert(self.seq, digest.to_string());
        while self.artifacts.len() > ARTIFACTS_MAX || self.artifact_bytes > ARTIFACT_BYTES_TOTAL_MAX {
            let Some((_, old)) = self.artifact_order.pop_first() else { break };
            if let Some((_, d)) = self.artifacts.remove(&old) {
                self.artifact_bytes -= d.len();
            }
        }
    }

    fn remember(&mut self, key: String, digest: String, cost_micros: u64) {
        self.seq += 1;
        if let Some(old) = self.cache.insert(key.clone(), CacheEntry { digest, cost_micros, seq: self.seq }) {
            self.cache_order.remove(&old.seq);
        }
        self.cache_order.insert(self.seq, key);
        while self.cache.len() > ARTIFACTS_MAX {
            let Some((_, old)) = self.cache_order.pop_first() else { break };
            self.cache.remove(&old);
        }
    }
}

/// Hex SHA-256.
fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in h.finalize() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// `text` as the inside of a JSON string.
fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A gate review's verdict: it fails when the output starts with FAIL or REJECT.
fn verdict(output: &[u8]) -> (bool, String) {
    let text = String::from_utf8_lossy(output);
    let first = text.trim().lines().next().unwrap_or("").chars().take(200).collect::<String>();
    let upper = first.to_ascii_uppercase();
    (!(upper.starts_with("FAIL") || upper.starts_with("REJECT")), first)
}

fn outcome_str(outcome: Option<Outcome>) -> &'static str {
    match outcome {
        Some(Outcome::Succeeded) => "succeeded",
        Some(Outcome::Failed) => "failed",
        Some(Outcome::Cancelled) => "cancelled",
        Some(Outcome::Preempted) => "preempted",
        Some(Outcome::TimedOut) => "timed-out",
        None => "lost",
    }
}

fn needs_to_items(w: &Workflow, i: usize) -> Vec<Item> {
    w.passes[i].needs.iter().map(|n| Item { path: n.path.clone(), mode: n.mode, units: n.units }).collect()
}

/// Field rules of the work-item commands (the edge checks the same).
pub fn validate_job_command(cmd: &Command) -> Result<(), Invalid> {
    let len = |field: &str, n: usize, max: usize| {
        if n > max {
            Err(Invalid::new(field, format!("is {n} bytes, at most {max} allowed")))
        } else {
            Ok(())
        }
    };
    let money = |field: &str, v: u64| validate::check_range(field, v, 0, MONEY_MICROS_MAX);
    match cmd {
        Command::SubmitJob(spec) => {
            validate::check_name("title", &spec.title, TEXT_LEN_MAX_BYTES)?;
            validate::check_name("class", &spec.class, NAME_LEN_MAX_BYTES)?;
            validate::check_name("team", &spec.team, NAME_LEN_MAX_BYTES)?;
            validate::check_name("project", &spec.project, NAME_LEN_MAX_BYTES)?;
            validate::check_priority(spec.priority)?;
            len("commit", spec.commit.len(), NAME_LEN_MAX_BYTES)?;
            if let Some(b) = spec.budget_micros {
                money("budget", b)?;
            }
            if spec.inputs.len() > JOB_INPUTS_MAX {
                return Err(Invalid::new(
                    "inputs",
                    format!("has {} entries, at most {JOB_INPUTS_MAX}", spec.inputs.len()),
                ));
            }
            for (k, v) in &spec.inputs {
                validate::check_name("inputs.name", k, NAME_LEN_MAX_BYTES)?;
                len(&format!("inputs[{k}]"), v.len(), JOB_INPUT_BYTES_MAX)?;
            }
            len("run", spec.run.len(), TASK_PAYLOAD_BYTES_MAX)?;
            len("review_run", spec.review_run.len(), TASK_PAYLOAD_BYTES_MAX)?;
            validate_workflow(spec).map_err(|e| e.within("workflow"))
        }
        Command::DecideGate { pass, note, by, .. } => {
            validate::check_name("pass", pass, NAME_LEN_MAX_BYTES)?;
            len("note", note.len(), TEXT_LEN_MAX_BYTES)?;
            len("by", by.len(), NAME_LEN_MAX_BYTES)
        }
        Command::SetBudget { name, limit_micros, .. } => {
            validate::check_name("name", name, NAME_LEN_MAX_BYTES)?;
            money("limit", *limit_micros)
        }
        Command::ApplyProject(p) => {
            validate::check_name("name", &p.name, NAME_LEN_MAX_BYTES)?;
            validate::check_name("team", &p.team, NAME_LEN_MAX_BYTES)?;
            for (field, n) in [
                ("resource", p.resources.len()),
                ("provider", p.providers.len()),
                ("price", p.prices.len()),
                ("repos", p.repos.len()),
                ("tools", p.tools.len()),
            ] {
                if n > PROJECT_ENTRIES_MAX {
                    return Err(Invalid::new(field, format!("has {n} entries, at most {PROJECT_ENTRIES_MAX}")));
                }
            }
            for (i, r) in p.resources.iter().enumerate() {
                if let Some(c) = r.capacity {
                    validate::check_range(&format!("resource[{i}].capacity"), c.into(), 1, CAPACITY_MAX.into())?;
                }
                validate::check_range(
                    &format!("resource[{i}].grace_ms"),
                    r.grace_ms,
                    PREEMPT_GRACE_MS_MIN,
                    PREEMPT_GRACE_MS_MAX,
                )?;
                r.policy.parse::<Policy>().map_err(|e| e.within(&format!("resource[{i}]")))?;
            }
            for (i, pr) in p.providers.iter().enumerate() {
                validate::check_name(&format!("provider[{i}].name"), &pr.name, NAME_LEN_MAX_BYTES)?;
                ResourcePath::parse(&format!("api:{}", pr.name)).map_err(|e| e.within(&format!("provider[{i}]")))?;
                validate::check_range(
                    &format!("provider[{i}].concurrency"),
                    pr.concurrency.into(),
                    1,
                    CAPACITY_MAX.into(),
                )?;
                money(&format!("provider[{i}].hourly"), pr.hourly_micros)?;
            }
            for (m, pr) in &p.prices {
                for v in [pr.input_per_mtok_micros, pr.output_per_mtok_micros, pr.cached_per_mtok_micros] {
                    money(&format!("price[{m}]"), v)?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn validate_workflow(spec: &JobSpec) -> Result<(), Invalid> {
    let w = &spec.workflow;
    validate::check_name("name", &w.name, NAME_LEN_MAX_BYTES)?;
    if w.passes.is_empty() || w.passes.len() > WORKFLOW_PASSES_MAX {
        return Err(Invalid::new("pass", format!("has {} passes, 1..={WORKFLOW_PASSES_MAX} allowed", w.passes.len())));
    }
    for (i, p) in w.passes.iter().enumerate() {
        let at = format!("pass[{i}]");
        validate::check_name(&format!("{at}.name"), &p.name, NAME_LEN_MAX_BYTES)?;
        if w.passes[..i].iter().any(|q| q.name == p.name) {
            return Err(Invalid::new(format!("{at}.name"), format!("{:?} appears twice", p.name)));
        }
        for a in &p.after {
            if !w.passes[..i].iter().any(|q| &q.name == a) {
                return Err(Invalid::new(format!("{at}.after"), format!("{a:?} is not an earlier pass")));
            }
        }
        super::validate_items(&needs_to_items(w, i), true).map_err(|e| e.within(&format!("{at}.needs")))?;
        validate::check_range(&format!("{at}.retries"), p.retries.into(), 0, TASK_ATTEMPTS_MAX as u64 - 1)?;
        if p.inputs.len() > JOB_INPUTS_MAX || p.outputs.len() > JOB_INPUTS_MAX {
            return Err(Invalid::new(
                format!("{at}.inputs"),
                format!("inputs and outputs: at most {JOB_INPUTS_MAX} each"),
            ));
        }
        len_ok(&format!("{at}.run"), p.run.len(), TASK_PAYLOAD_BYTES_MAX)?;
        if p.run.is_empty() && spec.run.is_empty() {
            return Err(Invalid::new(
                format!("{at}.run"),
                "no executor payload: give the pass one or the work item a default",
            ));
        }
        if let Some(g) = &p.gate {
            len_ok(&format!("{at}.gate.criteria"), g.criteria.len(), TEXT_LEN_MAX_BYTES)?;
            validate::check_range(
                &format!("{at}.gate.max_failures"),
                g.max_failures.into(),
                1,
                GATE_FAILURES_MAX.into(),
            )?;
            if g.reviewer != Reviewer::Human {
                if g.review_role == p.role {
                    return Err(Invalid::new(
                        format!("{at}.gate.review_role"),
                        format!(
                            "is the pass's own role {}: a gate is never reviewed by the agent that did the pass",
                            p.role
                        ),
                    ));
                }
                len_ok(&format!("{at}.gate.run"), g.run.len(), TASK_PAYLOAD_BYTES_MAX)?;
                if g.run.is_empty() && spec.review_run.is_empty() {
                    return Err(Invalid::new(
                        format!("{at}.gate.run"),
                        "no review payload: give the gate one or the work item a default",
                    ));
                }
            }
            if let OnFail::SendBack(to) = &g.on_fail {
                if !w.passes[..i].iter().any(|q| &q.name == to) {
                    return Err(Invalid::new(
                        format!("{at}.gate.send_back_to"),
                        format!("{to:?} is not an earlier pass"),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn len_ok(field: &str, n: usize, max: usize) -> Result<(), Invalid> {
    if n > max {
        Err(Invalid::new(field, format!("is {n} bytes, at most {max} allowed")))
    } else {
        Ok(())
    }
}

impl State {
    pub fn jobs(&self) -> &Jobs {
        &self.jobs
    }

    /// Whether the task is a pass (or review) of a work item.
    pub(super) fn is_pass(&self, task: TaskId) -> bool {
        self.jobs.by_task.contains_key(&task)
    }

    pub(super) fn jobs_forget_task(&mut self, task: TaskId) {
        self.jobs.by_task.remove(&task);
        self.jobs.commits.remove(&task);
    }

    pub(super) fn apply_project(&mut self, p: Project, ctx: &mut Ctx) -> Response {
        if self.jobs.projects.len() >= PROJECTS_MAX && !self.jobs.projects.contains_key(&p.name) {
            return Response::Refused(Refusal::Exhausted { what: "projects".into(), max: PROJECTS_MAX as u64 });
        }
        let mut declared = 0;
        for r in &p.resources {
            let policy = r.policy.parse().unwrap_or_default();
            let config = ResourceConfig { capacity: r.capacity, policy, grace_ms: r.grace_ms };
            if let Err(refusal) = self.declare_resource(&r.path, config, ctx) {
                return Response::Refused(refusal);
            }
            declared += 1;
        }
        for pr in &p.providers {
            let Ok(path) = ResourcePath::parse(&format!("api:{}", pr.name)) else { continue };
            self.jobs.provider_paths.insert(pr.name.clone(), path.clone());
            let config =
                ResourceConfig { capacity: Some(pr.concurrency), policy: Policy::None, grace_ms: PREEMPT_GRACE_MS_MIN };
            if let Err(refusal) = self.declare_resource(&path, config, ctx) {
                return Response::Refused(refusal);
            }
            declared += 1;
        }
        let name = p.name.clone();
        self.jobs.projects.insert(name.clone(), p);
        self.release_held();
        self.dispatch_tasks(ctx);
        Response::ProjectApplied { name, resources: declared }
    }

    pub(super) fn apply_submit_job(&mut self, spec: JobSpec, ctx: &mut Ctx) -> Response {
        if self.jobs.jobs.len() >= JOBS_MAX {
            return Response::Refused(Refusal::Exhausted { what: "work items".into(), max: JOBS_MAX as u64 });
        }
        let Some(project) = self.jobs.projects.get(&spec.project) else {
            return Response::Refused(Refusal::ProjectUnknown { project: spec.project });
        };
        for (i, p) in spec.workflow.passes.iter().enumerate() {
            for (j, n) in p.needs.iter().enumerate() {
                if !project.covers(&n.path) {
                    return Response::Refused(Refusal::Invalid(Invalid::new(
                        format!("workflow.pass[{i}].needs[{j}].path"),
                        format!("{} is not declared by project {}", n.path, project.name),
                    )));
                }
            }
        }
        if spec.budget_micros.is_some() && self.jobs.budget_count() >= BUDGETS_MAX {
            return Response::Refused(Refusal::Exhausted { what: "budgets".into(), max: BUDGETS_MAX as u64 });
        }
        self.jobs.next_job += 1;
        let id = JobId(self.jobs.next_job);
        let passes = spec.workflow.passes.iter().map(|p| PassState::new(&p.name, p.start_tier())).collect();
        let summary = format!(
            "submitted: {} (priority {}), team {}, project {}, workflow {} ({} passes)",
            spec.class,
            spec.priority,
            spec.team,
            spec.project,
            spec.workflow.name,
            spec.workflow.passes.len()
        );
        if let Some(limit) = spec.budget_micros {
            self.jobs.budgets.entry(Scope::Item).or_default().insert(
                id.to_string(),
                Budget {
                    scope: Scope::Item,
                    name: id.to_string(),
                    limit_micros: limit,
                    period: Period::Total,
                    period_start: 0,
                    spent_micros: 0,
                    committed_micros: 0,
                    level: Level::Under,
                },
            );
        }
        self.jobs.jobs.insert(
            id,
            Job {
                id,
                spec,
                status: JobStatus::Running,
                passes,
                submitted_at: ctx.now,
                ended_at: None,
                events: Vec::new(),
                cost_micros: 0,
                saved_micros: 0,
            },
        );
        self.jobs.event(id, "", summary, ctx);
        self.advance(id, ctx);
        self.dispatch_tasks(ctx);
        Response::JobSubmitted { job: id }
    }

    pub(super) fn apply_cancel_job(&mut self, id: JobId, ctx: &mut Ctx) -> Response {
        let Some(job) = self.jobs.jobs.get(&id) else {
            return Response::Refused(Refusal::JobUnknown { job: id });
        };
        if job.status != JobStatus::Running {
            return Response::Refused(Refusal::JobState { job: id, status: job.status.as_str().into() });
        }
        self.end_job(id, JobStatus::Cancelled, "cancelled".into(), ctx);
        self.dispatch_tasks(ctx);
        Response::JobCancelled { job: id }
    }

    pub(super) fn apply_retry_job(&mut self, id: JobId, ctx: &mut Ctx) -> Response {
        let Some(job) = self.jobs.jobs.get_mut(&id) else {
            return Response::Refused(Refusal::JobUnknown { job: id });
        };
        if !matches!(job.status, JobStatus::Failed | JobStatus::Cancelled) {
            return Response::Refused(Refusal::JobState { job: id, status: job.status.as_str().into() });
        }
        if let Some(at) = job.ended_at.take() {
            self.jobs.ended.remove(&(at, id));
        }
        job.status = JobStatus::Running;
        let mut again = Vec::new();
        for p in &mut job.passes {
            if !p.status.done() && p.status != PassStatus::Pending {
                p.status = PassStatus::Pending;
                p.gate_failures = 0;
                p.wait = None;
                again.push(p.name.clone());
            }
        }
        self.jobs.event(id, "", format!("retried: {} again", again.join(", ")), ctx);
        self.advance(id, ctx);
        self.dispatch_tasks(ctx);
        Response::JobRetried { job: id }
    }

    pub(super) fn apply_decide_gate(
        &mut self,
        id: JobId,
        pass: String,
        approve: bool,
        note: String,
        by: String,
        ctx: &mut Ctx,
    ) -> Response {
        let Some(job) = self.jobs.jobs.get_mut(&id) else {
            return Response::Refused(Refusal::JobUnknown { job: id });
        };
        let Some(i) = job.passes.iter().position(|p| p.name == pass) else {
            let names: Vec<&str> = job.passes.iter().map(|p| p.name.as_str()).collect();
            return Response::Refused(Refusal::Invalid(Invalid::new(
                "pass",
                format!("{pass:?} is not a pass of {id}; its passes: {}", names.join(", ")),
            )));
        };
        let p = &mut job.passes[i];
        let who = if by.is_empty() { "human".to_string() } else { format!("human {by}") };
        if p.status == PassStatus::AwaitingHuman {
            let round = p.gate_failures + 1;
            p.gates.push(GateResult { round, reviewer: who.clone(), passed: approve, note: note.clone(), at: ctx.now });
            let verdict = if approve { "approved" } else { "rejected" };
            let note = if note.is_empty() { String::new() } else { format!(": {note}") };
            self.jobs.event(id, &pass, format!("gate {verdict} by {who}{note}"), ctx);
            if approve {
                self.pass_passed(id, i, ctx);
            } else {
                self.gate_failed(id, i, ctx);
            }
        } else if p.status == PassStatus::Queued && p.approval_wanted {
            if approve {
                p.approval_wanted = false;
                p.spend_approved = true;
                self.jobs.event(id, &pass, format!("spend approved by {who}"), ctx);
                self.release_held();
            } else {
                self.jobs.event(id, &pass, format!("spend rejected by {who}"), ctx);
                self.end_job(id, JobStatus::Failed, format!("{pass}: spend rejected"), ctx);
            }
        } else {
            let status = p.status.as_str().to_string();
            return Response::Refused(Refusal::NotAwaitingDecision { job: id, pass, status });
        }
        self.advance(id, ctx);
        self.dispatch_tasks(ctx);
        Response::GateDecided { job: id, pass }
    }

    pub(super) fn apply_set_budget(
        &mut self,
        scope: Scope,
        name: String,
        limit_micros: u64,
        period: Period,
        ctx: &mut Ctx,
    ) -> Response {
        let exists = self.jobs.budgets.get(&scope).is_some_and(|m| m.contains_key(&name));
        if limit_micros == 0 {
            if let Some(m) = self.jobs.budgets.get_mut(&scope) {
                m.remove(&name);
            }
        } else if exists {
            let start = period.start(ctx.now);
            let spent = self.jobs.spent_since(scope, &name, start);
            let b = self.jobs.budgets.get_mut(&scope).and_then(|m| m.get_mut(&name)).expect("present");
            b.limit_micros = limit_micros;
            if b.period != period {
                b.period = period;
                b.period_start = start;
                b.spent_micros = spent;
            }
        } else {
            if self.jobs.budget_count() >= BUDGETS_MAX {
                return Response::Refused(Refusal::Exhausted { what: "budgets".into(), max: BUDGETS_MAX as u64 });
            }
            let start = period.start(ctx.now);
            let spent = self.jobs.spent_since(scope, &name, start);
            let committed = self.jobs.committed_in(scope, &name, &self.tasks);
            self.jobs.budgets.entry(scope).or_default().insert(
                name.clone(),
                Budget {
                    scope,
                    name: name.clone(),
                    limit_micros,
                    period,
                    period_start: start,
                    spent_micros: spent,
                    committed_micros: committed,
                    level: Level::Under,
                },
            );
        }
        self.update_levels(ctx);
        self.release_held();
        self.dispatch_tasks(ctx);
        Response::BudgetSet { scope, name }
    }

    /// Budgets whose period ended start again from zero.
    pub(super) fn roll_budget_periods(&mut self, ctx: &mut Ctx) {
        let mut rolled = false;
        for b in self.jobs.budgets.values_mut().flat_map(|m| m.values_mut()) {
            if b.period.end(b.period_start).is_some_and(|end| end <= ctx.now) {
                b.period_start = b.period.start(ctx.now);
                b.spent_micros = 0;
                b.level = Level::Under;
                rolled = true;
            }
        }
        if rolled {
            self.release_held();
        }
    }

    /// Re-derives each budget's level; a rise is an event.
    fn update_levels(&mut self, ctx: &mut Ctx) {
        let (approaching, at) = (self.config.budget_approaching_pct, self.config.budget_at_pct);
        for b in self.jobs.budgets.values_mut().flat_map(|m| m.values_mut()) {
            let used = u128::from(b.spent_micros) * 100;
            let limit = u128::from(b.limit_micros.max(1));
            let level = if b.spent_micros > b.limit_micros {
                Level::Over
            } else if used >= limit * u128::from(at) {
                Level::At
            } else if used >= limit * u128::from(approaching) {
                Level::Approaching
            } else {
                Level::Under
            };
            if level > b.level {
                ctx.effects.push(Effect::BudgetLevel {
                    scope: b.scope,
                    name: b.name.clone(),
                    level,
                    spent_micros: b.spent_micros,
                    limit_micros: b.limit_micros,
                });
            }
            b.level = level;
        }
    }

    /// The budget policies for one dispatch of `t`.
    pub(super) fn admit(&self, t: &Task, _now: Millis) -> Admission {
        let Some((job_id, i, kind)) = self.jobs.link(t.id) else { return Admission::Go };
        let job = &self.jobs.jobs[&job_id];
        let pass = &job.passes[i];
        let tier = t.spec.tier.unwrap_or(pass.tier);
        let (forecast, _) =
            self.jobs.forecast(&self.config, &job.spec.workflow.name, &ledger_pass(&pass.name, kind), tier);
        let low = t.spec.priority < self.config.high_priority_min;
        let item = if self.jobs.budgets.get(&Scope::Item).is_some_and(|m| !m.is_empty()) {
            job_id.to_string()
        } else {
            String::new()
        };
        for b in self.jobs.covering(&job.spec.team, &job.spec.project, &item) {
            let what = format!("{} {} budget", b.scope.as_str(), b.name);
            if b.spent_micros > b.limit_micros {
                return Admission::Hold(format!(
                    "{what} is over: spent {} of {}; everything in scope paused until it is raised or the {} rolls over",
                    dollars(b.spent_micros),
                    dollars(b.limit_micros),
                    b.period.as_str()
                ));
            }
            let used = b.spent_micros + b.committed_micros;
            if used.saturating_add(forecast) > b.limit_micros {
                return Admission::Hold(format!(
                    "{what}: spent {} + running {} + forecast {} for {} ({tier}) would cross the limit {}",
                    dollars(b.spent_micros),
                    dollars(b.committed_micros),
                    dollars(forecast),
                    ledger_pass(&pass.name, kind),
                    dollars(b.limit_micros)
                ));
            }
            let pct = u128::from(used) * 100 / u128::from(b.limit_micros.max(1));
            if pct >= u128::from(self.config.budget_at_pct) {
                if low {
                    return Admission::Hold(format!(
                        "{what} is at {pct}% of {}: low-priority work paused",
                        dollars(b.limit_micros)
                    ));
                }
                if forecast >= self.config.high_cost_micros && !pass.spend_approved {
                    return Admission::Approval(format!(
                        "{what} is at {pct}% of {}: a dispatch forecast at {} needs approval (qm gate approve {job_id} {})",
                        dollars(b.limit_micros),
                        dollars(forecast),
                        pass.name
                    ));
                }
            } else if pct >= u128::from(self.config.budget_approaching_pct) && low && self.tasks.queued_high() > 0 {
                return Admission::Defer(format!(
                    "{what} is approaching its limit ({pct}% of {}): higher-priority work goes first",
                    dollars(b.limit_micros)
                ));
            }
        }
        Admission::Go
    }

    /// Marks the pass of a held task as waiting for a spend approval.
    pub(super) fn want_approval(&mut self, task: TaskId) {
        if let Some((job, i, _)) = self.jobs.link(task) {
            if let Some(j) = self.jobs.jobs.get_mut(&job) {
                j.passes[i].approval_wanted = true;
            }
        }
    }

    /// The provider and model for a task's attempt on `session`'s worker: a local provider of
    /// the tier the worker hosts, when one has a free slot; else a cloud one with a free slot;
    /// else the first cloud one (its concurrency lease waits).
    pub(super) fn route(&self, task: TaskId, session: super::SessionId) -> Option<super::tasks::Route> {
        let t = self.tasks.get(task)?;
        let tier = t.spec.tier?;
        let project = self.jobs.projects.get(&t.spec.project)?;
        let worker = self.tasks.worker(session)?;
        let hosts = |name: &str| worker.providers.iter().any(|p| p.name == name);
        let free = |name: &str| {
            self.jobs.provider_paths.get(name).is_some_and(|path| {
                self.held_against(&[Item { path: path.clone(), mode: Mode::Shared, units: 1 }], 0).is_none()
            })
        };
        let serving: Vec<_> = project.providers.iter().filter(|p| p.models.contains_key(&tier)).collect();
        let pick = serving
            .iter()
            .find(|p| p.local && hosts(&p.name) && free(&p.name))
            .or_else(|| serving.iter().find(|p| !p.local && free(&p.name)))
            .or_else(|| serving.iter().find(|p| !p.local))
            .or_else(|| serving.iter().find(|p| p.local && hosts(&p.name)))?;
        Some(super::tasks::Route {
            provider: pick.name.clone(),
            model: pick.models[&tier].clone(),
            tier,
            local: pick.local,
        })
    }

    pub(super) fn job_task_started(&mut self, task: TaskId, ctx: &mut Ctx) {
        let Some((job_id, i, kind)) = self.jobs.link(task) else { return };
        let t = &self.tasks.get(task).expect("task exists");
        let tier = t.spec.tier.unwrap_or(Tier::Standard);
        let node = t.attempts.last().map(|a| a.node_id.clone()).unwrap_or_default();
        let route = t.route.as_ref().map(|r| format!(", {} via {}", r.model, r.provider)).unwrap_or_default();
        let attempt = t.attempt;
        let job = self.jobs.jobs.get_mut(&job_id).expect("job exists");
        let (team, project, workflow) =
            (job.spec.team.clone(), job.spec.project.clone(), job.spec.workflow.name.clone());
        let p = &mut job.passes[i];
        p.wait = None;
        if kind == Kind::Work {
            p.status = PassStatus::Running;
        }
        let name = ledger_pass(&p.name, kind).into_owned();
        let (forecast, _) = self.jobs.forecast(&self.config, &workflow, &name, tier);
        self.jobs.commits.insert(task, forecast);
        self.jobs.for_covering(&team, &project, &job_id.to_string(), |b| b.committed_micros += forecast);
        let what = if kind == Kind::Review { "review running" } else { "running" };
        self.jobs.event(job_id, &name, format!("{what} on {node} (attempt {attempt}, {tier}{route})"), ctx);
    }

    pub(super) fn job_task_waits(&mut self, task: TaskId, reason: String, ctx: &mut Ctx) {
        let Some((job_id, i, kind)) = self.jobs.link(task) else { return };
        let job = self.jobs.jobs.get_mut(&job_id).expect("job exists");
        let name = ledger_pass(&job.passes[i].name, kind).into_owned();
        job.passes[i].wait = Some(reason.clone());
        self.jobs.event(job_id, &name, format!("waits: {reason}"), ctx);
    }

    /// Writes the ledger entry of an attempt that ended (`None`: its worker was lost) and
    /// charges its money to the budgets in scope.
    pub(super) fn record_attempt(
        &mut self,
        task: TaskId,
        outcome: Option<Outcome>,
        usage: Usage,
        wall_ms: u64,
        ctx: &mut Ctx,
    ) {
        let t = self.tasks.get(task).expect("task exists");
        let link = self.jobs.link(task);
        let job = link.and_then(|(j, _, _)| self.jobs.jobs.get(&j));
        let pass_name = match (link, job) {
            (Some((_, i, kind)), Some(j)) => ledger_pass(&j.passes[i].name, kind).into_owned(),
            _ => String::new(),
        };
        let money = self.price(t, &usage, wall_ms);
        let worker = t.attempts.last().map(|a| a.node_id.clone()).unwrap_or_default();
        self.jobs.ledger_seq += 1;
        let entry = LedgerEntry {
            seq: self.jobs.ledger_seq,
            at: ctx.now,
            task,
            attempt: t.attempt,
            job: link.map(|(j, _, _)| j),
            team: t.spec.team.clone(),
            project: t.spec.project.clone(),
            workflow: job.map(|j| j.spec.workflow.name.clone()).unwrap_or_default(),
            pass: pass_name.clone(),
            role: t.spec.role,
            tier: t.route.as_ref().map(|r| r.tier).or(t.spec.tier),
            provider: t.route.as_ref().map(|r| r.provider.clone()).unwrap_or_default(),
            model: t.route.as_ref().map(|r| r.model.clone()).unwrap_or_default(),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cached_tokens: usage.cached_tokens,
            estimated: usage.estimated,
            money_micros: money,
            saved_micros: 0,
            wall_ms,
            agent: t.agent.clone(),
            worker,
            outcome: outcome_str(outcome).to_string(),
        };
        let (team, project) = (entry.team.clone(), entry.project.clone());
        let item = entry.job.map(|j| j.to_string()).unwrap_or_default();
        if let (Some(Outcome::Succeeded), Some(j), Some(tier)) = (outcome, job, entry.tier) {
            let by_pass = match self.jobs.history.get_mut(&j.spec.workflow.name) {
                Some(m) => m,
                None => self.jobs.history.entry(j.spec.workflow.name.clone()).or_default(),
            };
            let h = match by_pass.get_mut(&pass_name) {
                Some(h) => h,
                None => by_pass.entry(pass_name).or_default(),
            };
            let h = &mut h[tier as usize];
            h.0 += 1;
            h.1 = h.1.saturating_add(money);
        }
        self.add_ledger(entry, ctx);
        let committed = self.jobs.commits.remove(&task).unwrap_or(0);
        self.jobs.for_covering(&team, &project, &item, |b| {
            b.spent_micros = b.spent_micros.saturating_add(money);
            b.committed_micros = b.committed_micros.saturating_sub(committed);
        });
        if let Some((job_id, i, _)) = link {
            if let Some(j) = self.jobs.jobs.get_mut(&job_id) {
                j.cost_micros = j.cost_micros.saturating_add(money);
                let p = &mut j.passes[i];
                p.cost_micros = p.cost_micros.saturating_add(money);
                p.run_cost_micros = p.run_cost_micros.saturating_add(money);
                p.input_tokens += usage.input_tokens;
                p.output_tokens += usage.output_tokens;
                p.wall_ms += wall_ms;
            }
        }
        self.update_levels(ctx);
        self.release_held();
    }

    fn add_ledger(&mut self, entry: LedgerEntry, ctx: &mut Ctx) {
        self.jobs.total_micros = self.jobs.total_micros.saturating_add(entry.money_micros);
        self.jobs.saved_micros = self.jobs.saved_micros.saturating_add(entry.saved_micros);
        let _ = ctx;
        self.jobs.ledger.insert(entry.seq, entry);
        while self.jobs.ledger.len() > LEDGER_ENTRIES_MAX {
            self.jobs.ledger.pop_first();
        }
    }

    /// Money of an attempt: tokens × the project's price of the model; a local provider's
    /// hourly cost × wall time.
    fn price(&self, t: &Task, usage: &Usage, wall_ms: u64) -> u64 {
        let (Some(route), Some(project)) = (&t.route, self.jobs.projects.get(&t.spec.project)) else { return 0 };
        if route.local {
            let hourly = project.providers.iter().find(|p| p.name == route.provider).map_or(0, |p| p.hourly_micros);
            return (u128::from(hourly) * u128::from(wall_ms) / 3_600_000) as u64;
        }
        let Some(price) = project.prices.get(&route.model) else { return 0 };
        let m = u128::from(usage.input_tokens) * u128::from(price.input_per_mtok_micros)
            + u128::from(usage.output_tokens) * u128::from(price.output_per_mtok_micros)
            + u128::from(usage.cached_tokens) * u128::from(price.cached_per_mtok_micros);
        (m / 1_000_000).min(u128::from(MONEY_MICROS_MAX)) as u64
    }

    /// A task of a work item ended (succeeded, failed for good, or cancelled).
    pub(super) fn job_task_ended(&mut self, task: TaskId, ctx: &mut Ctx) {
        let Some((job_id, i, kind)) = self.jobs.link(task) else { return };
        let t = self.tasks.get(task).expect("task exists");
        let (status, output, error, agent) = (t.status, t.output.clone(), t.error.clone(), t.agent.clone());
        let Some(job) = self.jobs.jobs.get_mut(&job_id) else { return };
        if job.status != JobStatus::Running {
            let p = &mut job.passes[i];
            if p.status.active() {
                p.status = PassStatus::Cancelled;
            }
            return;
        }
        let name = job.passes[i].name.clone();
        let gate = job.spec.workflow.passes[i].gate.as_ref().map(|g| (g.reviewer, g.review_role));
        match (kind, status) {
            (Kind::Work, TaskStatus::Succeeded) => {
                let digest = sha256_hex(&[&output]);
                job.passes[i].artifact = Some(digest.clone());
                self.jobs.store_artifact(&digest, output);
                match gate {
                    None => self.pass_passed(job_id, i, ctx),
                    Some((Reviewer::Human, _)) => self.await_human(job_id, i, ctx),
                    Some((_, review_role)) => self.start_review(job_id, i, review_role, ctx),
                }
            }
            (Kind::Review, TaskStatus::Succeeded) => {
                let (passed, note) = verdict(&output);
                let p = &mut job.passes[i];
                let round = p.gate_failures + 1;
                let reviewer = format!("agent {}", if agent.is_empty() { "-" } else { &agent });
                p.gates.push(GateResult { round, reviewer: reviewer.clone(), passed, note: note.clone(), at: ctx.now });
                let verdict = if passed { "passed" } else { "failed" };
                self.jobs.event(job_id, &name, format!("gate {verdict} ({reviewer}): {note}"), ctx);
                match (passed, gate.map(|g| g.0)) {
                    (true, Some(Reviewer::Both)) => self.await_human(job_id, i, ctx),
                    (true, _) => self.pass_passed(job_id, i, ctx),
                    (false, _) => self.gate_failed(job_id, i, ctx),
                }
            }
            (_, status) => {
                let what = if kind == Kind::Review { "review" } else { "pass" };
                let p = &mut job.passes[i];
                p.status = PassStatus::Failed;
                let why = format!("{what} {}: {error}", status.as_str());
                self.end_job(job_id, JobStatus::Failed, format!("{name}: {why}"), ctx);
            }
        }
        self.advance(job_id, ctx);
    }

    fn await_human(&mut self, job: JobId, i: usize, ctx: &mut Ctx) {
        let j = self.jobs.jobs.get_mut(&job).expect("job exists");
        let p = &mut j.passes[i];
        p.status = PassStatus::AwaitingHuman;
        let name = p.name.clone();
        let criteria = j.spec.workflow.passes[i].gate.as_ref().map(|g| g.criteria.clone()).unwrap_or_default();
        self.jobs.event(
            job,
            &name,
            format!("waits for a human gate ({criteria}): qm gate approve {job} {name} | qm gate reject {job} {name}"),
            ctx,
        );
    }

    fn start_review(&mut self, job_id: JobId, i: usize, role: Role, ctx: &mut Ctx) {
        let job = &self.jobs.jobs[&job_id];
        let pass = &job.spec.workflow.passes[i];
        let gate = pass.gate.as_ref().expect("reviewed passes have gates");
        let template = if gate.run.is_empty() { &job.spec.review_run } else { &gate.run };
        let payload = fill(template, job, i, &gate.criteria);
        let spec = TaskSpec {
            role,
            items: Vec::new(),
            payload,
            priority: job.spec.priority,
            work_item: job_id.to_string(),
            max_attempts: 2,
            timeout_ms: pass.timeout_ms,
            incremental: false,
            team: job.spec.team.clone(),
            project: job.spec.project.clone(),
            tier: Some(role.default_tier()),
            requires: Vec::new(),
        };
        match self.new_task(spec, ctx) {
            Ok(task) => {
                self.jobs.by_task.insert(task, (job_id, i, Kind::Review));
                let p = &mut self.jobs.jobs.get_mut(&job_id).expect("job").passes[i];
                p.status = PassStatus::Reviewing;
                p.review = Some(task);
                let name = p.name.clone();
                self.jobs.event(
                    job_id,
                    &name,
                    format!("output ready; gate review by the {role} role queued ({task})"),
                    ctx,
                );
            }
            Err(r) => self.end_job(job_id, JobStatus::Failed, format!("gate review could not be queued: {r:?}"), ctx),
        }
    }

    fn pass_passed(&mut self, job_id: JobId, i: usize, ctx: &mut Ctx) {
        let j = self.jobs.jobs.get_mut(&job_id).expect("job exists");
        let p = &mut j.passes[i];
        p.status = PassStatus::Passed;
        p.wait = None;
        let (name, key, digest, cost) = (p.name.clone(), p.cache_key.clone(), p.artifact.clone(), p.run_cost_micros);
        if let Some(d) = digest {
            if !key.is_empty() {
                self.jobs.remember(key, d, cost);
            }
        }
        self.jobs.event(job_id, &name, format!("passed ({} this run)", dollars(cost)), ctx);
    }

    fn gate_failed(&mut self, job_id: JobId, i: usize, ctx: &mut Ctx) {
        let j = self.jobs.jobs.get_mut(&job_id).expect("job exists");
        let gate = j.spec.workflow.passes[i].gate.clone().expect("failed gates exist");
        let p = &mut j.passes[i];
        p.gate_failures += 1;
        let name = p.name.clone();
        if p.gate_failures > gate.max_failures {
            p.status = PassStatus::Failed;
            let why = format!("{name}: gate failed {} times (max_failures {})", p.gate_failures, gate.max_failures);
            self.end_job(job_id, JobStatus::Failed, why, ctx);
            return;
        }
        match &gate.on_fail {
            OnFail::Retry => {
                p.status = PassStatus::Pending;
                self.jobs.event(job_id, &name, "gate failed: runs again".into(), ctx);
            }
            OnFail::Escalate => {
                let from = p.tier;
                p.tier = p.tier.escalated();
                p.status = PassStatus::Pending;
                let to = p.tier;
                self.jobs.event(job_id, &name, format!("gate failed: runs again, escalated {from} → {to}"), ctx);
            }
            OnFail::SendBack(to) => {
                let (from, _) = j.spec.workflow.pass(to).expect("validated");
                // The target and everything downstream of it run again.
                let mut again: BTreeSet<usize> = BTreeSet::from([from]);
                for (k, pass) in j.spec.workflow.passes.iter().enumerate().skip(from + 1) {
                    let after = pass.after.iter().filter_map(|a| j.spec.workflow.pass(a).map(|x| x.0));
                    if after.into_iter().any(|x| again.contains(&x)) {
                        again.insert(k);
                    }
                }
                let mut stop = Vec::new();
                let mut stale = Vec::new();
                for k in again {
                    let q = &mut j.passes[k];
                    if q.status.active() {
                        stop.extend(q.task.into_iter().chain(q.review));
                    }
                    q.status = PassStatus::Pending;
                    q.wait = None;
                    stale.push(std::mem::take(&mut q.cache_key));
                }
                // What a later gate rejected is not reused: the passes run again for real.
                for key in stale {
                    if let Some(e) = self.jobs.cache.remove(&key) {
                        self.jobs.cache_order.remove(&e.seq);
                    }
                }
                self.jobs.event(job_id, &name, format!("gate failed: sent back to {to}"), ctx);
                for task in stop {
                    self.jobs.by_task.remove(&task);
                    if self.tasks.get(task).is_some_and(|t| !t.status.ended()) {
                        self.stop_task(task, ctx);
                    }
                }
            }
            OnFail::Stop => {
                p.status = PassStatus::Failed;
                self.end_job(job_id, JobStatus::Failed, format!("{name}: gate failed (on_fail stop)"), ctx);
            }
        }
    }

    /// Starts every pending pass whose predecessors passed (or reuses its cached artifact);
    /// ends the work item when every pass is done.
    fn advance(&mut self, job_id: JobId, ctx: &mut Ctx) {
        let Some(job) = self.jobs.jobs.get(&job_id) else { return };
        if job.status != JobStatus::Running {
            return;
        }
        for i in 0..job.passes.len() {
            let job = &self.jobs.jobs[&job_id];
            if job.status != JobStatus::Running {
                return;
            }
            let pass = &job.spec.workflow.passes[i];
            let ready = job.passes[i].status == PassStatus::Pending
                && pass.after.iter().all(|a| job.passes.iter().any(|p| &p.name == a && p.status.done()));
            if !ready {
                continue;
            }
            let key = cache_key(job, i);
            let hit = self
                .jobs
                .cache
                .get(&key)
                .filter(|e| self.jobs.artifacts.contains_key(&e.digest))
                .map(|e| (e.digest.clone(), e.cost_micros));
            let j = self.jobs.jobs.get_mut(&job_id).expect("job exists");
            j.passes[i].cache_key = key;
            if let Some((digest, saved)) = hit {
                let p = &mut j.passes[i];
                p.status = PassStatus::Cached;
                p.artifact = Some(digest.clone());
                p.saved_micros += saved;
                j.saved_micros += saved;
                let name = p.name.clone();
                let role = j.spec.workflow.passes[i].role;
                let tier = p.tier;
                self.jobs.ledger_seq += 1;
                let entry = LedgerEntry {
                    seq: self.jobs.ledger_seq,
                    at: ctx.now,
                    task: TaskId(0),
                    attempt: 0,
                    job: Some(job_id),
                    team: j.spec.team.clone(),
                    project: j.spec.project.clone(),
                    workflow: j.spec.workflow.name.clone(),
                    pass: name.clone(),
                    role,
                    tier: Some(tier),
                    provider: String::new(),
                    model: String::new(),
                    input_tokens: 0,
                    output_tokens: 0,
                    cached_tokens: 0,
                    estimated: false,
                    money_micros: 0,
                    saved_micros: saved,
                    wall_ms: 0,
                    agent: String::new(),
                    worker: String::new(),
                    outcome: "cached".into(),
                };
                self.add_ledger(entry, ctx);
                let short: String = digest.chars().take(12).collect();
                self.jobs.event(
                    job_id,
                    &name,
                    format!("reused cached artifact {short} (saved {})", dollars(saved)),
                    ctx,
                );
                continue;
            }
            self.start_pass(job_id, i, ctx);
        }
        let job = &self.jobs.jobs[&job_id];
        if job.status == JobStatus::Running && job.passes.iter().all(|p| p.status.done()) {
            let (cost, saved) = (job.cost_micros, job.saved_micros);
            self.end_job(
                job_id,
                JobStatus::Succeeded,
                format!("succeeded: cost {}, saved {} by the artifact cache", dollars(cost), dollars(saved)),
                ctx,
            );
        }
    }

    fn start_pass(&mut self, job_id: JobId, i: usize, ctx: &mut Ctx) {
        let job = &self.jobs.jobs[&job_id];
        let pass = &job.spec.workflow.passes[i];
        let template = if pass.run.is_empty() { &job.spec.run } else { &pass.run };
        let spec = TaskSpec {
            role: pass.role,
            items: needs_to_items(&job.spec.workflow, i),
            payload: fill(template, job, i, pass.gate.as_ref().map_or("", |g| g.criteria.as_str())),
            priority: job.spec.priority,
            work_item: job_id.to_string(),
            max_attempts: pass.retries + 1,
            timeout_ms: pass.timeout_ms,
            incremental: false,
            team: job.spec.team.clone(),
            project: job.spec.project.clone(),
            tier: Some(job.passes[i].tier),
            requires: pass.requires.clone(),
        };
        match self.new_task(spec, ctx) {
            Ok(task) => {
                self.jobs.by_task.insert(task, (job_id, i, Kind::Work));
                let p = &mut self.jobs.jobs.get_mut(&job_id).expect("job").passes[i];
                p.status = PassStatus::Queued;
                p.task = Some(task);
                p.review = None;
                p.runs += 1;
                p.run_cost_micros = 0;
                p.approval_wanted = false;
                p.spend_approved = false;
                let (name, tier, runs) = (p.name.clone(), p.tier, p.runs);
                self.jobs.event(job_id, &name, format!("queued as {task} (run {runs}, tier {tier})"), ctx);
            }
            Err(r) => self.end_job(job_id, JobStatus::Failed, format!("pass could not be queued: {r:?}"), ctx),
        }
    }

    fn end_job(&mut self, job_id: JobId, status: JobStatus, why: String, ctx: &mut Ctx) {
        let j = self.jobs.jobs.get_mut(&job_id).expect("job exists");
        j.status = status;
        j.ended_at = Some(ctx.now);
        let mut stop = Vec::new();
        for p in &mut j.passes {
            if p.status.active() || p.status == PassStatus::AwaitingHuman {
                stop.extend(p.task.into_iter().chain(p.review));
                p.status = PassStatus::Cancelled;
            }
        }
        self.jobs.ended.insert((ctx.now, job_id));
        self.jobs.event(job_id, "", why, ctx);
        for task in stop {
            if self.tasks.get(task).is_some_and(|t| !t.status.ended()) {
                self.stop_task(task, ctx);
            }
        }
        while self.jobs.ended.len() > JOBS_ENDED_RETAINED_MAX {
            let (_, old) = self.jobs.ended.pop_first().expect("non-empty");
            // Earlier runs' tasks leave `by_task` when the tasks themselves are forgotten.
            if let Some(gone) = self.jobs.jobs.remove(&old) {
                for task in gone.passes.iter().flat_map(|p| p.task.into_iter().chain(p.review)) {
                    self.jobs.by_task.remove(&task);
                    self.jobs.commits.remove(&task);
                }
            }
        }
    }
}

impl Jobs {
    /// Ledger money in `scope`/`name` from `since` on (the retained entries).
    fn spent_since(&self, scope: Scope, name: &str, since: Millis) -> u64 {
        self.ledger
            .values()
            .filter(|e| e.at >= since && in_scope(scope, name, &e.team, &e.project, e.job))
            .map(|e| e.money_micros)
            .sum()
    }

    fn committed_in(&self, scope: Scope, name: &str, tasks: &super::tasks::Tasks) -> u64 {
        self.commits
            .iter()
            .filter(|(t, _)| {
                tasks.get(**t).is_some_and(|t| {
                    in_scope(scope, name, &t.spec.team, &t.spec.project, self.by_task.get(&t.id).map(|l| l.0))
                })
            })
            .map(|(_, f)| *f)
            .sum()
    }
}

fn in_scope(scope: Scope, name: &str, team: &str, project: &str, job: Option<JobId>) -> bool {
    match scope {
        Scope::Org => true,
        Scope::Team => team == name,
        Scope::Project => project == name,
        Scope::Item => job.is_some_and(|j| j.to_string() == name),
    }
}

/// The ledger's name of a pass's task: the pass, or `<pass>#gate` for its review.
fn ledger_pass(pass: &str, kind: Kind) -> std::borrow::Cow<'_, str> {
    match kind {
        Kind::Work => pass.into(),
        Kind::Review => format!("{pass}#gate").into(),
    }
}

/// The cache key of pass `i`: the workflow and pass, its role, the repo commit, the digests
/// of the inputs it names (work-item inputs or upstream outputs) and of the passes it
/// comes after.
fn cache_key(job: &Job, i: usize) -> String {
    let w = &job.spec.workflow;
    let pass = &w.passes[i];
    let mut parts: Vec<Vec<u8>> = vec![
        b"qm-cache-v1".to_vec(),
        w.name.clone().into_bytes(),
        pass.name.clone().into_bytes(),
        pass.role.as_str().as_bytes().to_vec(),
        job.spec.commit.clone().into_bytes(),
    ];
    let mut inputs: Vec<&String> = pass.inputs.iter().collect();
    inputs.sort();
    for name in inputs {
        let value = match job.spec.inputs.get(name) {
            Some(v) => sha256_hex(&[v.as_bytes()]),
            None => w
                .passes
                .iter()
                .zip(&job.passes)
                .find(|(p, _)| p.outputs.contains(name))
                .and_then(|(_, s)| s.artifact.clone())
                .unwrap_or_else(|| "-".into()),
        };
        parts.push(format!("{name}={value}").into_bytes());
    }
    for a in &pass.after {
        let digest = w.pass(a).and_then(|(k, _)| job.passes[k].artifact.clone()).unwrap_or_default();
        parts.push(format!("after {a}={digest}").into_bytes());
    }
    let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
    sha256_hex(&refs)
}

/// Fills a payload template: `{{pass}}`, `{{role}}`, `{{tier}}`, `{{title}}`, `{{job}}`,
/// `{{workflow}}`, `{{criteria}}` and `{{input.<name>}}`, JSON-escaped.
fn fill(template: &[u8], job: &Job, i: usize, criteria: &str) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(template) else { return template.to_vec() };
    if !text.contains("{{") {
        return template.to_vec();
    }
    let pass = &job.spec.workflow.passes[i];
    let mut out = text
        .replace("{{pass}}", &json_escape(&pass.name))
        .replace("{{role}}", pass.role.as_str())
        .replace("{{tier}}", job.passes[i].tier.as_str())
        .replace("{{title}}", &json_escape(&job.spec.title))
        .replace("{{job}}", &job.id.to_string())
        .replace("{{workflow}}", &json_escape(&job.spec.workflow.name))
        .replace("{{criteria}}", &json_escape(criteria));
    for (k, v) in &job.spec.inputs {
        out = out.replace(&format!("{{{{input.{k}}}}}"), &json_escape(v));
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_start_and_end_on_calendar_boundaries() {
        // 2026-11-22 (a Sunday) 13:00 UTC.
        let now = days_from_civil(2026, 11, 22) as u64 * DAY_MS + 13 * 3_600_000;
        assert_eq!(civil_from_days((Period::Day.start(now) / DAY_MS) as i64), (2026, 11, 22));
        assert_eq!(civil_from_days((Period::Week.start(now) / DAY_MS) as i64), (2026, 11, 16));
        let month = Period::Month.start(now);
        assert_eq!(civil_from_days((month / DAY_MS) as i64), (2026, 11, 1));
        let next = Period::Month.end(month).unwrap();
        assert_eq!(civil_from_days((next / DAY_MS) as i64), (2026, 12, 1));
        let dec = Period::Month.end(next).unwrap();
        assert_eq!(civil_from_days((dec / DAY_MS) as i64), (2027, 1, 1));
        assert_eq!(Period::Total.end(0), None);
    }

    #[test]
    fn review_verdicts_fail_only_on_fail_or_reject() {
        assert!(verdict(b"PASS: criteria met").0);
        assert!(verdict(b"looks good").0);
        assert!(!verdict(b"FAIL: missing tests\nmore").0);
        assert_eq!(verdict(b"  reject: no\n").1, "reject: no");
    }

    #[test]
    fn templates_are_filled_json_escaped() {
        let text = "{\"output\":\"{{pass}} of {{title}} / {{input.spec}}\"}";
        let job = Job {
            id: JobId(3),
            spec: JobSpec {
                title: "say \"hi\"".into(),
                class: "feature".into(),
                priority: 500,
                team: "t".into(),
                project: "p".into(),
                workflow: Workflow {
                    name: "w".into(),
                    description: String::new(),
                    passes: vec![qm_shared::workflow::Pass {
                        name: "spec".into(),
                        role: Role::Specifier,
                        tier: None,
                        after: vec![],
                        needs: vec![],
                        requires: vec![],
                        inputs: vec![],
                        outputs: vec![],
                        gate: None,
                        timeout_ms: 0,
                        retries: 0,
                        run: vec![],
                    }],
                },
                budget_micros: None,
                inputs: BTreeMap::from([("spec".to_string(), "line\nbreak".to_string())]),
                commit: String::new(),
                run: vec![],
                review_run: vec![],
            },
            status: JobStatus::Running,
            passes: vec![],
            submitted_at: 0,
            ended_at: None,
            events: vec![],
            cost_micros: 0,
            saved_micros: 0,
        };
        let mut job = job;
        job.passes.push(PassState::new("spec", Tier::Standard));
        let filled = fill(text.as_bytes(), &job, 0, "");
        let v: serde_json::Value = serde_json::from_slice(&filled).expect("valid json");
        assert_eq!(v["output"], "spec of say \"hi\" / line\nbreak");
    }
}
