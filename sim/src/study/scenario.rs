//! Scenario files: the workload, the fleet and the policies of a contention study.
//!
//! A scenario is TOML (format: `docs/simulator.md`). Parsing resolves everything a run needs
//! (workflows, the project, resource footprints with their template values) and checks it, so
//! a run never starts on a scenario it would trip over halfway. Every error names the file,
//! the line when known, the field and the bound or the choices.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use qm_coordinator::state::Policy;
use qm_shared::workflow::{Need, Project, ProjectResource, Workflow};
use qm_shared::workflow_file::{builtin_workflow, parse_project, parse_workflow, FileError, CLASSES, DEMO_PROJECT};
use qm_shared::{Mode, ResourcePath, Role};

use super::rng::{parse_duration, Dist};

/// Most simulated time one run may cover.
pub const DURATION_MS_MAX: u64 = 7 * 24 * 3_600_000;
/// Most agent slots a scenario may run.
pub const AGENTS_MAX: u64 = 100_000;
/// Most workers (boxes) a scenario may run.
pub const WORKERS_MAX: u64 = 20_000;
/// Most work items one run may submit (arrivals past it are dropped and counted).
pub const ARRIVALS_MAX: u64 = 1_000_000;
/// Most time buckets of a report (utilisation over time, the heat map).
pub const BUCKETS_MAX: u32 = 500;
/// Most variants one comparison runs.
pub const VARIANTS_MAX: usize = 16;

/// The policies a comparison varies.
#[derive(Clone, Debug, PartialEq)]
pub struct Policies {
    /// Overrides every resource's preemption policy; `None`: as declared.
    pub preemption: Option<Policy>,
    /// A blocked agent parks its task and takes other work (the worker's default).
    pub replan: bool,
    /// How long an acquire waits before the agent re-plans.
    pub replan_after_ms: u64,
    /// A parked task whose resources arrive takes its slot back from the work that borrowed
    /// it (which checkpoints and is requeued) instead of holding its leases until a slot frees.
    pub reclaim: bool,
    /// `coarse` locks each footprint at its first `coarse_depth` path segments.
    pub coarse: bool,
    pub coarse_depth: usize,
    pub fair_share_points: u32,
    pub deadlock_detection: bool,
    pub aging_interval_ms: u64,
    pub aging_step: u32,
}

impl Default for Policies {
    fn default() -> Policies {
        let c = qm_coordinator::state::Config::default();
        Policies {
            preemption: None,
            replan: true,
            replan_after_ms: 2_000,
            reclaim: true,
            coarse: false,
            coarse_depth: 1,
            fair_share_points: c.fair_share_points,
            deadlock_detection: c.deadlock_detection,
            aging_interval_ms: c.aging_interval_ms,
            aging_step: c.aging_step,
        }
    }
}

/// A named set of policy changes, run side by side by `qm sim compare`.
#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    pub name: String,
    pub policies: Policies,
}

/// A group of identical workers.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerGroup {
    pub name: String,
    pub count: u32,
    pub slots: BTreeMap<Role, u32>,
    pub gpus: u32,
    /// Hosts the project's local model providers.
    pub local_model: bool,
}

/// How work arrives.
#[derive(Clone, Debug, PartialEq)]
pub enum Pattern {
    /// Poisson arrivals at `per_hour`.
    Steady { per_hour: f64 },
    /// Poisson bursts at `per_hour`, each of `burst` items at once.
    Bursty { per_hour: f64, burst: u32 },
    /// At each moment, `count` items at once, all with the same template values: everybody
    /// asks for the same things at the same time (a stand-up, a release weekend).
    Correlated { at_ms: Vec<u64>, count: u32 },
}

/// A stream of work items of one workflow and class.
#[derive(Clone, Debug, PartialEq)]
pub struct Arrival {
    pub name: String,
    pub workflow: String,
    pub class: String,
    pub priority: u32,
    pub team: String,
    pub pattern: Pattern,
    pub from_ms: u64,
    pub until_ms: u64,
    /// Template values of the footprints (`{schema}` → one of these), drawn per item.
    pub pick: BTreeMap<String, Vec<String>>,
    pub budget_micros: Option<u64>,
}

/// A workflow as the study runs it: the workflow, and its passes' resource footprints,
/// which may name template values (`pg:staging/schema:{schema}`).
#[derive(Clone, Debug, PartialEq)]
pub struct StudyWorkflow {
    pub workflow: Workflow,
    /// Per pass (by index): `(path template, mode, units)`.
    pub needs: Vec<Vec<(String, Mode, u32)>>,
}

/// Durations of the modelled work.
#[derive(Clone, Debug, PartialEq)]
pub struct Durations {
    pub default: Dist,
    pub review: Dist,
    pub role: BTreeMap<Role, Dist>,
    /// `workflow/pass` → distribution.
    pub pass: BTreeMap<String, Dist>,
}

impl Durations {
    pub fn of(&self, workflow: &str, pass: &str, role: Role) -> Dist {
        self.pass.get(&format!("{workflow}/{pass}")).or_else(|| self.role.get(&role)).copied().unwrap_or(self.default)
    }
}

/// How modelled agents behave besides taking time.
#[derive(Clone, Debug, PartialEq)]
pub struct Behaviour {
    pub fail: f64,
    pub hang: f64,
    pub gate_fail: f64,
    pub hang_timeout_ms: u64,
    pub checkpoint_ms: u64,
    pub tokens_in_per_min: u64,
    pub tokens_out_per_min: u64,
    pub human: Dist,
    pub human_approve: f64,
}

/// A budget set before the run starts.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetSpec {
    pub scope: qm_coordinator::state::Scope,
    pub name: String,
    pub limit_micros: u64,
    pub period: qm_coordinator::state::Period,
}

/// A parsed, checked scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub file: String,
    pub duration_ms: u64,
    pub tick_ms: u64,
    pub buckets: u32,
    pub seed: u64,
    pub project: Project,
    pub workers: Vec<WorkerGroup>,
    pub workflows: BTreeMap<String, StudyWorkflow>,
    pub arrivals: Vec<Arrival>,
    pub durations: Durations,
    pub behaviour: Behaviour,
    pub budgets: Vec<BudgetSpec>,
    pub policies: Policies,
    pub variants: Vec<Variant>,
}

impl Scenario {
    pub fn agents(&self) -> u64 {
        self.workers.iter().map(|g| u64::from(g.count) * g.slots.values().map(|n| u64::from(*n)).sum::<u64>()).sum()
    }
}

// ----------------------------------------------------------------------------- raw form

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    #[serde(default)]
    description: String,
    duration: String,
    tick: Option<String>,
    buckets: Option<u32>,
    seed: Option<u64>,
    project: Option<String>,
    #[serde(default)]
    resource: Vec<RawResource>,
    workers: Vec<RawWorkers>,
    workflow: Vec<RawWorkflow>,
    arrivals: Vec<RawArrival>,
    durations: RawDurations,
    #[serde(default)]
    behaviour: RawBehaviour,
    #[serde(default)]
    budgets: Vec<RawBudget>,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    variant: Vec<RawVariant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    path: String,
    capacity: Option<u32>,
    policy: Option<String>,
    grace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkers {
    name: Option<String>,
    count: u32,
    slots: BTreeMap<String, u32>,
    #[serde(default)]
    gpus: u32,
    #[serde(default)]
    local_model: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    builtin: Option<String>,
    file: Option<String>,
    #[serde(default)]
    needs: BTreeMap<String, Vec<RawNeed>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNeed {
    path: String,
    mode: String,
    units: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArrival {
    name: Option<String>,
    workflow: String,
    class: String,
    team: String,
    pattern: String,
    per_hour: Option<f64>,
    burst: Option<u32>,
    at: Option<Vec<String>>,
    count: Option<u32>,
    from: Option<String>,
    until: Option<String>,
    #[serde(default)]
    pick: BTreeMap<String, Vec<String>>,
    budget: Option<String>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawDist {
    fixed: Option<String>,
    min: Option<String>,
    max: Option<String>,
    mean: Option<String>,
    median: Option<String>,
    p90: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDurations {
    default: RawDist,
    review: Option<RawDist>,
    #[serde(default)]
    role: BTreeMap<String, RawDist>,
    #[serde(default)]
    pass: BTreeMap<String, RawDist>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBehaviour {
    fail: Option<f64>,
    hang: Option<f64>,
    gate_fail: Option<f64>,
    hang_timeout: Option<String>,
    checkpoint: Option<String>,
    tokens_in_per_min: Option<u64>,
    tokens_out_per_min: Option<u64>,
    human: Option<RawDist>,
    human_approve: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    scope: String,
    name: String,
    limit: String,
    #[serde(default = "default_period")]
    period: String,
}

fn default_period() -> String {
    "total".into()
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    preemption: Option<String>,
    replan: Option<bool>,
    replan_after: Option<String>,
    reclaim: Option<bool>,
    granularity: Option<String>,
    coarse_depth: Option<usize>,
    fair_share_points: Option<u32>,
    deadlock_detection: Option<bool>,
    aging_interval: Option<String>,
    aging_step: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariant {
    name: String,
    #[serde(flatten)]
    policy: RawPolicy,
}

// ----------------------------------------------------------------------------- checking

struct Cx<'a> {
    file: &'a str,
    errors: Vec<FileError>,
}

impl Cx<'_> {
    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FileError {
            file: self.file.to_string(),
            line: None,
            field: field.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, field: &str, s: &str, max: u64) -> u64 {
        match parse_duration(s) {
            Ok(ms) if ms > max => {
                self.err(field, format!("{s} is longer than the bound {}", human_ms(max)));
                0
            }
            Ok(ms) => ms,
            Err(e) => {
                self.err(field, e);
                0
            }
        }
    }

    fn rate(&mut self, field: &str, v: f64, max: f64) -> f64 {
        if !(0.0..=max).contains(&v) {
            self.err(field, format!("{v} is outside 0..={max}"));
            return 0.0;
        }
        v
    }

    fn dist(&mut self, field: &str, d: &RawDist) -> Dist {
        let ms = |cx: &mut Cx, k: &str, s: &Option<String>| {
            s.as_ref().map(|s| cx.duration(&format!("{field}.{k}"), s, super::rng::DURATION_MS_CAP))
        };
        let (fixed, min, max) = (ms(self, "fixed", &d.fixed), ms(self, "min", &d.min), ms(self, "max", &d.max));
        let (mean, median, p90) = (ms(self, "mean", &d.mean), ms(self, "median", &d.median), ms(self, "p90", &d.p90));
        match (fixed, min, max, mean, median, p90) {
            (Some(f), None, None, None, None, None) => Dist::Fixed(f.max(1)),
            (None, Some(lo), Some(hi), None, None, None) if lo <= hi => Dist::Uniform(lo, hi),
            (None, Some(_), Some(_), None, None, None) => {
                self.err(field, "min is above max");
                Dist::Fixed(1)
            }
            (None, None, None, Some(m), None, None) => Dist::Exp(m.max(1)),
            (None, None, None, None, Some(m), Some(p)) if p >= m => Dist::LogNormal { median: m.max(1), p90: p },
            (None, None, None, None, Some(_), Some(_)) => {
                self.err(field, "p90 is below the median");
                Dist::Fixed(1)
            }
            _ => {
                self.err(field, "give one of: fixed; min and max; mean; median and p90");
                Dist::Fixed(1)
            }
        }
    }

    fn policy(&mut self, field: &str, raw: &RawPolicy, base: &Policies) -> Policies {
        let mut p = base.clone();
        if let Some(s) = &raw.preemption {
            match s.parse::<Policy>() {
                Ok(v) => p.preemption = Some(v),
                Err(_) => {
                    self.err(format!("{field}.preemption"), format!("{s:?} is not one of preempt, inherit, none"))
                }
            }
        }
        if let Some(v) = raw.replan {
            p.replan = v;
        }
        if let Some(v) = raw.reclaim {
            p.reclaim = v;
        }
        if let Some(s) = &raw.replan_after {
            p.replan_after_ms = self.duration(&format!("{field}.replan_after"), s, 3_600_000).max(1);
        }
        match raw.granularity.as_deref() {
            None => {}
            Some("fine") => p.coarse = false,
            Some("coarse") => p.coarse = true,
            Some(s) => self.err(format!("{field}.granularity"), format!("{s:?} is not one of fine, coarse")),
        }
        if let Some(d) = raw.coarse_depth {
            if d == 0 || d > qm_shared::limits::PATH_SEGMENTS_MAX {
                self.err(
                    format!("{field}.coarse_depth"),
                    format!("{d} is outside 1..={}", qm_shared::limits::PATH_SEGMENTS_MAX),
                );
            } else {
                p.coarse_depth = d;
            }
        }
        if let Some(v) = raw.fair_share_points {
            if v > qm_shared::limits::PRIORITY_MAX {
                self.err(
                    format!("{field}.fair_share_points"),
                    format!("{v} is above {}", qm_shared::limits::PRIORITY_MAX),
                );
            }
            p.fair_share_points = v;
        }
        if let Some(v) = raw.deadlock_detection {
            p.deadlock_detection = v;
        }
        if let Some(s) = &raw.aging_interval {
            p.aging_interval_ms = self.duration(&format!("{field}.aging_interval"), s, 3_600_000).max(1);
        }
        if let Some(v) = raw.aging_step {
            if v == 0 || v > qm_shared::limits::PRIORITY_MAX {
                self.err(
                    format!("{field}.aging_step"),
                    format!("{v} is outside 1..={}", qm_shared::limits::PRIORITY_MAX),
                );
            }
            p.aging_step = v.max(1);
        }
        p
    }
}

fn human_ms(ms: u64) -> String {
    match ms {
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

/// Reads and checks a scenario file. Workflow and project files it names are read relative
/// to it.
pub fn load(path: &Path) -> Result<Scenario, Vec<FileError>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![FileError { file: file.clone(), line: None, field: String::new(), message: format!("reading it: {e}") }]
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    parse(&text, &file, &|name| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).map_err(|e| format!("reading {}: {e}", p.display()))
    })
}

/// Parses a scenario's text; `read` fetches the files it names (relative to the scenario).
pub fn parse(
    text: &str,
    file: &str,
    read: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Scenario, Vec<FileError>> {
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        vec![FileError { file: file.to_string(), line, field: String::new(), message: e.message().to_string() }]
    })?;
    let mut cx = Cx { file, errors: Vec::new() };

    if raw.name.is_empty() || raw.name.len() > qm_shared::limits::NAME_LEN_MAX_BYTES {
        cx.err("name", format!("must be 1..={} bytes", qm_shared::limits::NAME_LEN_MAX_BYTES));
    }
    let duration_ms = cx.duration("duration", &raw.duration, DURATION_MS_MAX);
    if duration_ms == 0 && cx.errors.is_empty() {
        cx.err("duration", "must be above 0");
    }
    let tick_ms = raw.tick.as_ref().map_or(1_000, |t| cx.duration("tick", t, 60_000));
    if tick_ms < 10 {
        cx.err("tick", "must be at least 10ms");
    }
    let buckets = raw.buckets.unwrap_or(48);
    if buckets == 0 || buckets > BUCKETS_MAX {
        cx.err("buckets", format!("{buckets} is outside 1..={BUCKETS_MAX}"));
    }

    // The project: the demo one, or a file; the scenario's resources are added to it.
    let mut project = match raw.project.as_deref() {
        None | Some("demo") => parse_project(DEMO_PROJECT, "projects/demo.toml")?,
        Some(name) => match read(name) {
            Ok(t) => match parse_project(&t, name) {
                Ok(p) => p,
                Err(mut e) => {
                    cx.errors.append(&mut e);
                    return Err(cx.errors);
                }
            },
            Err(e) => {
                cx.err("project", e);
                return Err(cx.errors);
            }
        },
    };
    for (i, r) in raw.resource.iter().enumerate() {
        let f = format!("resource[{i}]");
        let path = match ResourcePath::parse(&r.path) {
            Ok(p) => p,
            Err(e) => {
                cx.err(format!("{f}.path"), e.to_string());
                continue;
            }
        };
        let policy = r.policy.clone().unwrap_or_else(|| "none".into());
        if policy.parse::<Policy>().is_err() {
            cx.err(format!("{f}.policy"), format!("{policy:?} is not one of none, preempt, inherit"));
        }
        let grace_ms = r.grace.as_ref().map_or(qm_shared::limits::PROJECT_GRACE_MS_DEFAULT, |g| {
            cx.duration(&format!("{f}.grace"), g, qm_shared::limits::PREEMPT_GRACE_MS_MAX)
        });
        if let Some(c) = r.capacity {
            if c == 0 || c > qm_shared::limits::CAPACITY_MAX {
                cx.err(format!("{f}.capacity"), format!("{c} is outside 1..={}", qm_shared::limits::CAPACITY_MAX));
            }
        }
        project.resources.retain(|x| x.path != path);
        project.resources.push(ProjectResource { path, capacity: r.capacity, policy, grace_ms });
    }

    // Workers.
    let mut workers = Vec::new();
    let (mut boxes, mut agents) = (0u64, 0u64);
    for (i, w) in raw.workers.iter().enumerate() {
        let f = format!("workers[{i}]");
        let mut slots = BTreeMap::new();
        for (role, n) in &w.slots {
            match role.parse::<Role>() {
                Ok(r) => {
                    slots.insert(r, *n);
                }
                Err(_) => cx.err(
                    format!("{f}.slots.{role}"),
                    format!("unknown role; one of {}", Role::ALL.map(|r| r.as_str()).join(", ")),
                ),
            }
            if *n > qm_shared::limits::WORKER_SLOTS_PER_ROLE_MAX {
                cx.err(
                    format!("{f}.slots.{role}"),
                    format!("{n} is above {}", qm_shared::limits::WORKER_SLOTS_PER_ROLE_MAX),
                );
            }
        }
        boxes += u64::from(w.count);
        agents += u64::from(w.count) * slots.values().map(|n| u64::from(*n)).sum::<u64>();
        workers.push(WorkerGroup {
            name: w.name.clone().unwrap_or_else(|| format!("w{i}")),
            count: w.count,
            slots,
            gpus: w.gpus.min(16),
            local_model: w.local_model,
        });
    }
    if boxes == 0 || boxes > WORKERS_MAX {
        cx.err("workers", format!("{boxes} workers in all is outside 1..={WORKERS_MAX}"));
    }
    if agents > AGENTS_MAX {
        cx.err("workers", format!("{agents} agent slots in all is above {AGENTS_MAX}"));
    }

    // Workflows and their footprints.
    let mut workflows = BTreeMap::new();
    for (i, w) in raw.workflow.iter().enumerate() {
        let f = format!("workflow[{i}]");
        let wf = match (&w.builtin, &w.file) {
            (Some(name), None) => match builtin_workflow(name) {
                Some(wf) => wf,
                None => {
                    let names: Vec<&str> =
                        qm_shared::workflow_file::BUILTIN_WORKFLOWS.iter().map(|(n, _)| *n).collect();
                    cx.err(format!("{f}.builtin"), format!("unknown workflow {name:?}; one of {}", names.join(", ")));
                    continue;
                }
            },
            (None, Some(name)) => match read(name).map(|t| parse_workflow(&t, name)) {
                Ok(Ok(wf)) => wf,
                Ok(Err(mut e)) => {
                    cx.errors.append(&mut e);
                    continue;
                }
                Err(e) => {
                    cx.err(format!("{f}.file"), e);
                    continue;
                }
            },
            _ => {
                cx.err(&f, "give exactly one of builtin or file");
                continue;
            }
        };
        let mut needs: Vec<Vec<(String, Mode, u32)>> = wf
            .passes
            .iter()
            .map(|p| p.needs.iter().map(|n: &Need| (n.path.as_str().to_string(), n.mode, n.units)).collect())
            .collect();
        for (pass, list) in &w.needs {
            let Some((pi, _)) = wf.pass(pass) else {
                let names: Vec<&str> = wf.passes.iter().map(|p| p.name.as_str()).collect();
                cx.err(
                    format!("{f}.needs.{pass}"),
                    format!("no such pass in {}; one of {}", wf.name, names.join(", ")),
                );
                continue;
            };
            let mut v = Vec::new();
            for (k, n) in list.iter().enumerate() {
                let mode = match n.mode.as_str() {
                    "shared" => Mode::Shared,
                    "exclusive" => Mode::Exclusive,
                    m => {
                        cx.err(format!("{f}.needs.{pass}[{k}].mode"), format!("{m:?} is not one of shared, exclusive"));
                        Mode::Shared
                    }
                };
                v.push((n.path.clone(), mode, n.units.unwrap_or(1).max(1)));
            }
            needs[pi] = v;
        }
        if workflows.insert(wf.name.clone(), StudyWorkflow { workflow: wf.clone(), needs }).is_some() {
            cx.err(&f, format!("workflow {:?} is given twice", wf.name));
        }
    }

    // Arrivals.
    let mut arrivals = Vec::new();
    for (i, a) in raw.arrivals.iter().enumerate() {
        let f = format!("arrivals[{i}]");
        let Some(wf) = workflows.get(&a.workflow) else {
            let names: Vec<&String> = workflows.keys().collect();
            cx.err(
                format!("{f}.workflow"),
                format!("{:?} is not a workflow of this scenario; one of {names:?}", a.workflow),
            );
            continue;
        };
        let priority = match CLASSES.iter().find(|(c, _)| *c == a.class) {
            Some((_, p)) => *p,
            None => {
                let names: Vec<&str> = CLASSES.iter().map(|(c, _)| *c).collect();
                cx.err(format!("{f}.class"), format!("unknown class {:?}; one of {}", a.class, names.join(", ")));
                0
            }
        };
        let from_ms = a.from.as_ref().map_or(0, |s| cx.duration(&format!("{f}.from"), s, DURATION_MS_MAX));
        let until_ms = a.until.as_ref().map_or(duration_ms, |s| cx.duration(&format!("{f}.until"), s, DURATION_MS_MAX));
        let per_hour = |cx: &mut Cx| match a.per_hour {
            Some(v) if v > 0.0 && v <= 1_000_000.0 => v,
            Some(v) => {
                cx.err(format!("{f}.per_hour"), format!("{v} is outside (0, 1000000]"));
                1.0
            }
            None => {
                cx.err(format!("{f}.per_hour"), "is required by this pattern");
                1.0
            }
        };
        let pattern = match a.pattern.as_str() {
            "steady" => Pattern::Steady { per_hour: per_hour(&mut cx) },
            "bursty" => {
                let burst = a.burst.unwrap_or(0);
                if burst == 0 || burst > 10_000 {
                    cx.err(format!("{f}.burst"), "bursty arrivals need burst in 1..=10000");
                }
                Pattern::Bursty { per_hour: per_hour(&mut cx), burst }
            }
            "correlated" => {
                let at: Vec<u64> =
                    a.at.iter()
                        .flatten()
                        .enumerate()
                        .map(|(k, s)| cx.duration(&format!("{f}.at[{k}]"), s, DURATION_MS_MAX))
                        .collect();
                let count = a.count.unwrap_or(0);
                if at.is_empty() {
                    cx.err(format!("{f}.at"), "correlated arrivals need at least one moment");
                }
                if count == 0 || count > 100_000 {
                    cx.err(format!("{f}.count"), "correlated arrivals need count in 1..=100000");
                }
                Pattern::Correlated { at_ms: at, count }
            }
            p => {
                cx.err(format!("{f}.pattern"), format!("{p:?} is not one of steady, bursty, correlated"));
                continue;
            }
        };
        let mut pick = BTreeMap::new();
        for (k, vals) in &a.pick {
            match expand(vals) {
                Ok(v) => {
                    pick.insert(k.clone(), v);
                }
                Err(e) => cx.err(format!("{f}.pick.{k}"), e),
            }
        }
        // Every template value the footprints use must be picked, and every path they can
        // make must parse and lie under the project's resources.
        let mut keys = BTreeSet::new();
        for list in &wf.needs {
            for (t, _, _) in list {
                keys.extend(placeholders(t));
            }
        }
        for k in &keys {
            match pick.get(k) {
                Some(v) if !v.is_empty() => {}
                _ => cx.err(
                    format!("{f}.pick.{k}"),
                    format!("workflow {} uses {{{k}}}: give its values", wf.workflow.name),
                ),
            }
        }
        if cx.errors.is_empty() {
            for (pi, list) in wf.needs.iter().enumerate() {
                for (t, _, _) in list {
                    for v in instantiations(t, &pick) {
                        match ResourcePath::parse(&v) {
                            Ok(p) if project.covers(&p) => {}
                            Ok(_) => cx.err(
                                format!("{f} → {}.{}", wf.workflow.name, wf.workflow.passes[pi].name),
                                format!("{v} is not under a resource of project {}", project.name),
                            ),
                            Err(e) => cx.err(
                                format!("{f} → {}.{}", wf.workflow.name, wf.workflow.passes[pi].name),
                                e.to_string(),
                            ),
                        }
                    }
                }
            }
        }
        let budget_micros = match &a.budget {
            None => None,
            Some(b) => match qm_shared::workflow::parse_dollars(&format!("{f}.budget"), b) {
                Ok(m) => Some(m),
                Err(e) => {
                    cx.err(format!("{f}.budget"), e.to_string());
                    None
                }
            },
        };
        arrivals.push(Arrival {
            name: a.name.clone().unwrap_or_else(|| format!("{}/{}", a.workflow, a.class)),
            workflow: a.workflow.clone(),
            class: a.class.clone(),
            priority,
            team: a.team.clone(),
            pattern,
            from_ms,
            until_ms,
            pick,
            budget_micros,
        });
    }
    // Every role the workload needs (passes and agent reviews) must have slots somewhere.
    let hosted: BTreeSet<Role> = workers
        .iter()
        .filter(|g| g.count > 0)
        .flat_map(|g| g.slots.iter().filter(|(_, n)| **n > 0).map(|(r, _)| *r))
        .collect();
    for a in &arrivals {
        let Some(wf) = workflows.get(&a.workflow) else { continue };
        for p in &wf.workflow.passes {
            let mut need = vec![(p.role, p.name.clone())];
            if let Some(g) = p.gate.as_ref().filter(|g| g.reviewer != qm_shared::workflow::Reviewer::Human) {
                need.push((g.review_role, format!("{}'s gate review", p.name)));
            }
            for (role, what) in need {
                if !hosted.contains(&role) {
                    cx.err(
                        "workers",
                        format!(
                            "no worker has {} slots, which {} ({}) needs; its work items could never finish",
                            role.as_str(),
                            what,
                            wf.workflow.name
                        ),
                    );
                }
            }
        }
    }
    if arrivals.is_empty() && cx.errors.is_empty() {
        cx.err("arrivals", "give at least one stream of work");
    }

    // Durations and behaviour.
    let d = &raw.durations;
    let default = cx.dist("durations.default", &d.default);
    let review =
        d.review.as_ref().map_or(Dist::LogNormal { median: 120_000, p90: 480_000 }, |r| cx.dist("durations.review", r));
    let mut role = BTreeMap::new();
    for (k, v) in &d.role {
        match k.parse::<Role>() {
            Ok(r) => {
                role.insert(r, cx.dist(&format!("durations.role.{k}"), v));
            }
            Err(_) => cx.err(
                format!("durations.role.{k}"),
                format!("unknown role; one of {}", Role::ALL.map(|r| r.as_str()).join(", ")),
            ),
        }
    }
    let mut pass = BTreeMap::new();
    for (k, v) in &d.pass {
        let known =
            k.split_once('/').is_some_and(|(w, p)| workflows.get(w).is_some_and(|s| s.workflow.pass(p).is_some()));
        if !known {
            cx.err(format!("durations.pass.{k}"), "write <workflow>/<pass> of a workflow of this scenario");
        }
        pass.insert(k.clone(), cx.dist(&format!("durations.pass.{k}"), v));
    }
    let b = &raw.behaviour;
    let behaviour = Behaviour {
        fail: cx.rate("behaviour.fail", b.fail.unwrap_or(0.02), 1.0),
        hang: cx.rate("behaviour.hang", b.hang.unwrap_or(0.0), 1.0),
        gate_fail: cx.rate("behaviour.gate_fail", b.gate_fail.unwrap_or(0.1), 1.0),
        hang_timeout_ms: b
            .hang_timeout
            .as_ref()
            .map_or(3_600_000, |s| cx.duration("behaviour.hang_timeout", s, 86_400_000))
            .max(1),
        checkpoint_ms: b.checkpoint.as_ref().map_or(3_000, |s| cx.duration("behaviour.checkpoint", s, 3_600_000)),
        tokens_in_per_min: b.tokens_in_per_min.unwrap_or(8_000).min(10_000_000),
        tokens_out_per_min: b.tokens_out_per_min.unwrap_or(1_500).min(10_000_000),
        human: b
            .human
            .as_ref()
            .map_or(Dist::LogNormal { median: 900_000, p90: 3_600_000 }, |h| cx.dist("behaviour.human", h)),
        human_approve: cx.rate("behaviour.human_approve", b.human_approve.unwrap_or(0.95), 1.0),
    };
    if behaviour.fail + behaviour.hang > 1.0 {
        cx.err("behaviour", "fail + hang is above 1");
    }

    let mut budgets = Vec::new();
    for (i, b) in raw.budgets.iter().enumerate() {
        let f = format!("budgets[{i}]");
        let scope = match b.scope.parse() {
            Ok(s) => s,
            Err(e) => {
                cx.err(format!("{f}.scope"), format!("{e}"));
                continue;
            }
        };
        let period = match b.period.parse() {
            Ok(p) => p,
            Err(e) => {
                cx.err(format!("{f}.period"), format!("{e}"));
                continue;
            }
        };
        match qm_shared::workflow::parse_dollars(&format!("{f}.limit"), &b.limit) {
            Ok(limit_micros) => budgets.push(BudgetSpec { scope, name: b.name.clone(), limit_micros, period }),
            Err(e) => cx.err(format!("{f}.limit"), e.to_string()),
        }
    }

    let policies = cx.policy("policy", &raw.policy, &Policies::default());
    let mut variants = Vec::new();
    for (i, v) in raw.variant.iter().enumerate() {
        let p = cx.policy(&format!("variant[{i}]"), &v.policy, &policies);
        variants.push(Variant { name: v.name.clone(), policies: p });
    }
    if variants.len() > VARIANTS_MAX {
        cx.err("variant", format!("{} variants is above {VARIANTS_MAX}", variants.len()));
    }

    if !cx.errors.is_empty() {
        return Err(cx.errors);
    }
    Ok(Scenario {
        name: raw.name,
        description: raw.description,
        file: file.to_string(),
        duration_ms,
        tick_ms,
        buckets,
        seed: raw.seed.unwrap_or(1),
        project,
        workers,
        workflows,
        arrivals,
        durations: Durations { default, review, role, pass },
        behaviour,
        budgets,
        policies,
        variants,
    })
}

/// Most values one template name may take.
pub const PICK_VALUES_MAX: usize = 100_000;

/// Expands pick values; `"s{0000..1999}"` stands for `s0000`, `s0001`, … `s1999` (zero
/// padded to the width of the first bound).
fn expand(vals: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for v in vals {
        let range = v.find('{').and_then(|s| v[s..].find('}').map(|e| (s, s + e)));
        let Some((s, e)) = range.filter(|(s, e)| v[s + 1..*e].contains("..")) else {
            out.push(v.clone());
            continue;
        };
        let (lo, hi) = v[s + 1..e].split_once("..").expect("checked");
        let bad = || format!("{v:?}: write a range as prefix{{0..99}}suffix");
        let (a, b): (u64, u64) = (lo.parse().map_err(|_| bad())?, hi.parse().map_err(|_| bad())?);
        if a > b || (b - a) as usize >= PICK_VALUES_MAX {
            return Err(format!("{v:?}: the range must run upwards and hold at most {PICK_VALUES_MAX} values"));
        }
        for n in a..=b {
            out.push(format!("{}{n:0w$}{}", &v[..s], &v[e + 1..], w = lo.len()));
        }
    }
    if out.len() > PICK_VALUES_MAX {
        return Err(format!("{} values is above {PICK_VALUES_MAX}", out.len()));
    }
    Ok(out)
}

/// Template names in a footprint path: `pg:staging/schema:{schema}` → `schema`.
pub fn placeholders(t: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(s) = rest.find('{') {
        let Some(e) = rest[s..].find('}') else { break };
        out.push(rest[s + 1..s + e].to_string());
        rest = &rest[s + e + 1..];
    }
    out
}

/// Fills a footprint template with one value per name.
pub fn fill(t: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = t.to_string();
    for (k, v) in values {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// Every path a template can become under `pick` (bounded: at most 64 are checked).
fn instantiations(t: &str, pick: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut out = vec![t.to_string()];
    for k in placeholders(t) {
        let Some(vals) = pick.get(&k) else { continue };
        out = out
            .iter()
            .flat_map(|o| vals.iter().map(|v| o.replace(&format!("{{{k}}}"), v)).collect::<Vec<_>>())
            .take(64)
            .collect();
    }
    out
}

/// Locks a path at its first `depth` segments (coarse granularity).
pub fn coarsen(path: &str, depth: usize) -> String {
    path.split('/').take(depth).collect::<Vec<_>>().join("/")
}

/// The policy settings `qm sim compare --vary` accepts.
pub const SETTINGS: [&str; 8] = [
    "preemption",
    "replan",
    "replan_after",
    "reclaim",
    "granularity",
    "fair_share_points",
    "deadlock_detection",
    "aging_step",
];

/// One policy setting changed: `key` is one of [`SETTINGS`], `value` as in a scenario file
/// (`on`/`off` for switches).
pub fn apply_setting(base: &Policies, key: &str, value: &str) -> Result<Policies, String> {
    let mut p = base.clone();
    let switch = |v: &str| match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{key}: {v:?} is not one of on, off")),
    };
    match key {
        "preemption" => {
            p.preemption = Some(
                value
                    .parse::<Policy>()
                    .map_err(|_| format!("{key}: {value:?} is not one of preempt, inherit, none"))?,
            )
        }
        "replan" => p.replan = switch(value)?,
        "reclaim" => p.reclaim = switch(value)?,
        "deadlock_detection" => p.deadlock_detection = switch(value)?,
        "replan_after" => {
            p.replan_after_ms = parse_duration(value).map_err(|e| format!("{key}: {e}"))?.clamp(1, 3_600_000)
        }
        "granularity" => {
            p.coarse = match value {
                "fine" => false,
                "coarse" => true,
                _ => return Err(format!("{key}: {value:?} is not one of fine, coarse")),
            }
        }
        "fair_share_points" | "aging_step" => {
            let v: u32 = value.parse().map_err(|_| format!("{key}: {value:?} is not a whole number"))?;
            if v > qm_shared::limits::PRIORITY_MAX || key == "aging_step" && v == 0 {
                return Err(format!(
                    "{key}: {v} is outside {}..={}",
                    u32::from(key == "aging_step"),
                    qm_shared::limits::PRIORITY_MAX
                ));
            }
            if key == "aging_step" {
                p.aging_step = v;
            } else {
                p.fair_share_points = v;
            }
        }
        _ => return Err(format!("unknown setting {key:?}; one of {}", SETTINGS.join(", "))),
    }
    Ok(p)
}
