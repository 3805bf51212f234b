//! Reading a scenario file: its raw TOML form, checked section by section into a
//! [`Scenario`]. The checks collect every error they find (each naming the file, the field
//! and the bound or the choices) rather than stopping at the first.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use qm_coordinator::state::Policy;
use qm_shared::toml_place::line_of_field;
use qm_shared::workflow::{Need, Project, ProjectResource, Workflow};
use qm_shared::workflow_file::{builtin_workflow, parse_project, parse_workflow, FileError, CLASSES, DEMO_PROJECT};
use qm_shared::{Mode, ResourcePath, Role};

use super::{
    expand, instantiations, placeholders, Arrival, Behaviour, BudgetSpec, Durations, Pattern, Policies, Scenario,
    StudyWorkflow, Variant, WorkerGroup, AGENTS_MAX, BUCKETS_MAX, DURATION_MS_MAX, VARIANTS_MAX, WORKERS_MAX,
};
use crate::study::rng::{parse_duration, Dist, DURATION_MS_CAP};

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
    let (duration_ms, tick_ms, buckets) = cx.run_length(&raw);
    let mut project = cx.project(raw.project.as_deref(), read).map_err(|e| placed(e, text, file))?;
    cx.add_resources(&mut project, &raw.resource);
    let workers = cx.workers(&raw.workers);
    let workflows = cx.workflows(&raw.workflow, read);
    let arrivals = cx.arrivals(&raw.arrivals, &workflows, &project, duration_ms);
    cx.roles_hosted(&workers, &workflows, &arrivals);
    if arrivals.is_empty() && cx.errors.is_empty() {
        cx.err("arrivals", "give at least one stream of work");
    }
    let durations = cx.durations(&raw.durations, &workflows);
    let behaviour = cx.behaviour(&raw.behaviour);
    let budgets = cx.budgets(&raw.budgets);
    let policies = cx.policy("policy", &raw.policy, &Policies::default());
    let variants = cx.variants(&raw.variant, &policies);

    if !cx.errors.is_empty() {
        return Err(placed(cx.errors, text, file));
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
        durations,
        behaviour,
        budgets,
        policies,
        variants,
    })
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

/// The errors with the line of their field in this file (errors of files it names, such as a
/// workflow file, already carry their own), in line order.
fn placed(mut errors: Vec<FileError>, text: &str, file: &str) -> Vec<FileError> {
    for e in errors.iter_mut().filter(|e| e.line.is_none() && e.file == file) {
        e.line = line_of_field(text, &e.field);
    }
    errors.sort_by_key(|e| (e.file != file, e.line.unwrap_or(0)));
    errors
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
            s.as_ref().map(|s| cx.duration(&format!("{field}.{k}"), s, DURATION_MS_CAP))
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

    /// The name, and how long the run is, its step and its report's resolution:
    /// `(duration_ms, tick_ms, buckets)`.
    fn run_length(&mut self, raw: &Raw) -> (u64, u64, u32) {
        if raw.name.is_empty() || raw.name.len() > qm_shared::limits::NAME_LEN_MAX_BYTES {
            self.err("name", format!("must be 1..={} bytes", qm_shared::limits::NAME_LEN_MAX_BYTES));
        }
        let duration_ms = self.duration("duration", &raw.duration, DURATION_MS_MAX);
        if duration_ms == 0 && self.errors.is_empty() {
            self.err("duration", "must be above 0");
        }
        let tick_ms = raw.tick.as_ref().map_or(1_000, |t| self.duration("tick", t, 60_000));
        if tick_ms < 10 {
            self.err("tick", "must be at least 10ms");
        }
        let buckets = raw.buckets.unwrap_or(48);
        if buckets == 0 || buckets > BUCKETS_MAX {
            self.err("buckets", format!("{buckets} is outside 1..={BUCKETS_MAX}"));
        }
        (duration_ms, tick_ms, buckets)
    }

    /// The project: the demo one, or a file. A project that cannot be read ends the checks.
    fn project(
        &mut self,
        name: Option<&str>,
        read: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Project, Vec<FileError>> {
        match name {
            None | Some("demo") => parse_project(DEMO_PROJECT, "projects/demo.toml"),
            Some(name) => match read(name) {
                Ok(t) => match parse_project(&t, name) {
                    Ok(p) => Ok(p),
                    Err(mut e) => {
                        self.errors.append(&mut e);
                        Err(std::mem::take(&mut self.errors))
                    }
                },
                Err(e) => {
                    self.err("project", e);
                    Err(std::mem::take(&mut self.errors))
                }
            },
        }
    }

    /// The scenario's `[[resource]]`s, added to the project (replacing one at the same path).
    fn add_resources(&mut self, project: &mut Project, resources: &[RawResource]) {
        for (i, r) in resources.iter().enumerate() {
            let f = format!("resource[{i}]");
            let path = match ResourcePath::parse(&r.path) {
                Ok(p) => p,
                Err(e) => {
                    self.err(format!("{f}.path"), e.to_string());
                    continue;
                }
            };
            let policy = r.policy.clone().unwrap_or_else(|| "none".into());
            if policy.parse::<Policy>().is_err() {
                self.err(format!("{f}.policy"), format!("{policy:?} is not one of none, preempt, inherit"));
            }
            let grace_ms = r.grace.as_ref().map_or(qm_shared::limits::PROJECT_GRACE_MS_DEFAULT, |g| {
                self.duration(&format!("{f}.grace"), g, qm_shared::limits::PREEMPT_GRACE_MS_MAX)
            });
            if let Some(c) = r.capacity {
                if c == 0 || c > qm_shared::limits::CAPACITY_MAX {
                    self.err(
                        format!("{f}.capacity"),
                        format!("{c} is outside 1..={}", qm_shared::limits::CAPACITY_MAX),
                    );
                }
            }
            project.resources.retain(|x| x.path != path);
            project.resources.push(ProjectResource { path, capacity: r.capacity, policy, grace_ms });
        }
    }

    /// The worker groups, with the fleet's workers and agent slots in all within bounds.
    fn workers(&mut self, raw: &[RawWorkers]) -> Vec<WorkerGroup> {
        let mut workers = Vec::new();
        let (mut boxes, mut agents) = (0u64, 0u64);
        for (i, w) in raw.iter().enumerate() {
            let slots = self.slots(&format!("workers[{i}]"), &w.slots);
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
            self.err("workers", format!("{boxes} workers in all is outside 1..={WORKERS_MAX}"));
        }
        if agents > AGENTS_MAX {
            self.err("workers", format!("{agents} agent slots in all is above {AGENTS_MAX}"));
        }
        workers
    }

    /// A worker group's agent slots per role (known roles, each within the per-role bound).
    fn slots(&mut self, f: &str, raw: &BTreeMap<String, u32>) -> BTreeMap<Role, u32> {
        let mut slots = BTreeMap::new();
        for (role, n) in raw {
            match role.parse::<Role>().map_err(|e| e.to_string()).and_then(Role::check_not_misspelt) {
                Ok(r) => {
                    slots.insert(r, *n);
                }
                Err(e) => self.err(format!("{f}.slots.{role}"), e.to_string()),
            }
            if *n > qm_shared::limits::WORKER_SLOTS_PER_ROLE_MAX {
                self.err(
                    format!("{f}.slots.{role}"),
                    format!("{n} is above {}", qm_shared::limits::WORKER_SLOTS_PER_ROLE_MAX),
                );
            }
        }
        slots
    }

    /// The workflows, by name, with their passes' footprints; each given once.
    fn workflows(
        &mut self,
        raw: &[RawWorkflow],
        read: &dyn Fn(&str) -> Result<String, String>,
    ) -> BTreeMap<String, StudyWorkflow> {
        let mut workflows = BTreeMap::new();
        for (i, w) in raw.iter().enumerate() {
            let f = format!("workflow[{i}]");
            let Some(wf) = self.workflow(&f, w, read) else { continue };
            let needs = self.needs(&f, &wf, &w.needs);
            if workflows.insert(wf.name.clone(), StudyWorkflow { workflow: wf.clone(), needs }).is_some() {
                self.err(&f, format!("workflow {:?} is given twice", wf.name));
            }
        }
        workflows
    }

    /// A `[[workflow]]`'s workflow: a built-in one or a file; `None` after an error.
    fn workflow(
        &mut self,
        f: &str,
        w: &RawWorkflow,
        read: &dyn Fn(&str) -> Result<String, String>,
    ) -> Option<Workflow> {
        match (&w.builtin, &w.file) {
            (Some(name), None) => match builtin_workflow(name) {
                Some(wf) => Some(wf),
                None => {
                    let names: Vec<&str> =
                        qm_shared::workflow_file::BUILTIN_WORKFLOWS.iter().map(|(n, _)| *n).collect();
                    self.err(format!("{f}.builtin"), format!("unknown workflow {name:?}; one of {}", names.join(", ")));
                    None
                }
            },
            (None, Some(name)) => match read(name).map(|t| parse_workflow(&t, name)) {
                Ok(Ok(wf)) => Some(wf),
                Ok(Err(mut e)) => {
                    self.errors.append(&mut e);
                    None
                }
                Err(e) => {
                    self.err(format!("{f}.file"), e);
                    None
                }
            },
            _ => {
                self.err(f, "give exactly one of builtin or file");
                None
            }
        }
    }

    /// Each pass's footprint: the workflow's own, or the scenario's `needs` for that pass.
    fn needs(&mut self, f: &str, wf: &Workflow, raw: &BTreeMap<String, Vec<RawNeed>>) -> Vec<Vec<(String, Mode, u32)>> {
        let mut needs: Vec<Vec<(String, Mode, u32)>> = wf
            .passes
            .iter()
            .map(|p| p.needs.iter().map(|n: &Need| (n.path.as_str().to_string(), n.mode, n.units)).collect())
            .collect();
        for (pass, list) in raw {
            let Some((pi, _)) = wf.pass(pass) else {
                let names: Vec<&str> = wf.passes.iter().map(|p| p.name.as_str()).collect();
                self.err(
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
                        self.err(
                            format!("{f}.needs.{pass}[{k}].mode"),
                            format!("{m:?} is not one of shared, exclusive"),
                        );
                        Mode::Shared
                    }
                };
                v.push((n.path.clone(), mode, n.units.unwrap_or(1).max(1)));
            }
            needs[pi] = v;
        }
        needs
    }

    /// The streams of work, each of a workflow of this scenario.
    fn arrivals(
        &mut self,
        raw: &[RawArrival],
        workflows: &BTreeMap<String, StudyWorkflow>,
        project: &Project,
        duration_ms: u64,
    ) -> Vec<Arrival> {
        let mut arrivals = Vec::new();
        for (i, a) in raw.iter().enumerate() {
            let f = format!("arrivals[{i}]");
            let Some(wf) = workflows.get(&a.workflow) else {
                let names: Vec<&String> = workflows.keys().collect();
                self.err(
                    format!("{f}.workflow"),
                    format!("{:?} is not a workflow of this scenario; one of {names:?}", a.workflow),
                );
                continue;
            };
            let priority = self.class_priority(&f, &a.class);
            let from_ms = a.from.as_ref().map_or(0, |s| self.duration(&format!("{f}.from"), s, DURATION_MS_MAX));
            let until_ms =
                a.until.as_ref().map_or(duration_ms, |s| self.duration(&format!("{f}.until"), s, DURATION_MS_MAX));
            let Some(pattern) = self.pattern(&f, a) else { continue };
            let pick = self.pick(&f, &a.pick);
            self.footprints(&f, wf, &pick, project);
            let budget_micros = a.budget.as_ref().and_then(|b| self.dollars(&format!("{f}.budget"), b));
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
        arrivals
    }

    /// The priority of a work class (0 after an error).
    fn class_priority(&mut self, f: &str, class: &str) -> u32 {
        match CLASSES.iter().find(|(c, _)| *c == class) {
            Some((_, p)) => *p,
            None => {
                let names: Vec<&str> = CLASSES.iter().map(|(c, _)| *c).collect();
                self.err(format!("{f}.class"), format!("unknown class {class:?}; one of {}", names.join(", ")));
                0
            }
        }
    }

    /// How a stream's work arrives, with the fields its pattern needs; `None` for an unknown
    /// pattern.
    fn pattern(&mut self, f: &str, a: &RawArrival) -> Option<Pattern> {
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
        Some(match a.pattern.as_str() {
            "steady" => Pattern::Steady { per_hour: per_hour(self) },
            "bursty" => {
                let burst = a.burst.unwrap_or(0);
                if burst == 0 || burst > 10_000 {
                    self.err(format!("{f}.burst"), "bursty arrivals need burst in 1..=10000");
                }
                Pattern::Bursty { per_hour: per_hour(self), burst }
            }
            "correlated" => {
                let at: Vec<u64> =
                    a.at.iter()
                        .flatten()
                        .enumerate()
                        .map(|(k, s)| self.duration(&format!("{f}.at[{k}]"), s, DURATION_MS_MAX))
                        .collect();
                let count = a.count.unwrap_or(0);
                if at.is_empty() {
                    self.err(format!("{f}.at"), "correlated arrivals need at least one moment");
                }
                if count == 0 || count > 100_000 {
                    self.err(format!("{f}.count"), "correlated arrivals need count in 1..=100000");
                }
                Pattern::Correlated { at_ms: at, count }
            }
            p => {
                self.err(format!("{f}.pattern"), format!("{p:?} is not one of steady, bursty, correlated"));
                return None;
            }
        })
    }

    /// A stream's template values, ranges expanded.
    fn pick(&mut self, f: &str, raw: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
        let mut pick = BTreeMap::new();
        for (k, vals) in raw {
            match expand(vals) {
                Ok(v) => {
                    pick.insert(k.clone(), v);
                }
                Err(e) => self.err(format!("{f}.pick.{k}"), e),
            }
        }
        pick
    }

    /// Every template value the footprints use must be picked, and (when nothing is wrong so
    /// far) every path they can make must parse and lie under the project's resources.
    fn footprints(&mut self, f: &str, wf: &StudyWorkflow, pick: &BTreeMap<String, Vec<String>>, project: &Project) {
        let mut keys = BTreeSet::new();
        for list in &wf.needs {
            for (t, _, _) in list {
                keys.extend(placeholders(t));
            }
        }
        for k in &keys {
            match pick.get(k) {
                Some(v) if !v.is_empty() => {}
                _ => self.err(
                    format!("{f}.pick.{k}"),
                    format!("workflow {} uses {{{k}}}: give its values", wf.workflow.name),
                ),
            }
        }
        if !self.errors.is_empty() {
            return;
        }
        for (pi, list) in wf.needs.iter().enumerate() {
            for (t, _, _) in list {
                for v in instantiations(t, pick) {
                    match ResourcePath::parse(&v) {
                        Ok(p) if project.covers(&p) => {}
                        Ok(_) => self.err(
                            format!("{f} → {}.{}", wf.workflow.name, wf.workflow.passes[pi].name),
                            format!("{v} is not under a resource of project {}", project.name),
                        ),
                        Err(e) => self
                            .err(format!("{f} → {}.{}", wf.workflow.name, wf.workflow.passes[pi].name), e.to_string()),
                    }
                }
            }
        }
    }

    /// A dollar amount, in micro-dollars; `None` after an error.
    fn dollars(&mut self, field: &str, s: &str) -> Option<u64> {
        match qm_shared::workflow::parse_dollars(field, s) {
            Ok(m) => Some(m),
            Err(e) => {
                self.err(field, e.to_string());
                None
            }
        }
    }

    /// Every role the workload needs (passes and agent reviews) must have slots somewhere.
    fn roles_hosted(
        &mut self,
        workers: &[WorkerGroup],
        workflows: &BTreeMap<String, StudyWorkflow>,
        arrivals: &[Arrival],
    ) {
        let hosted: BTreeSet<Role> = workers
            .iter()
            .filter(|g| g.count > 0)
            .flat_map(|g| g.slots.iter().filter(|(_, n)| **n > 0).map(|(r, _)| *r))
            .collect();
        for a in arrivals {
            let Some(wf) = workflows.get(&a.workflow) else { continue };
            for p in &wf.workflow.passes {
                let mut need = vec![(p.role, p.name.clone())];
                if let Some(g) = p.gate.as_ref().filter(|g| g.reviewer != qm_shared::workflow::Reviewer::Human) {
                    need.push((g.review_role, format!("{}'s gate review", p.name)));
                }
                for (role, what) in need {
                    if !hosted.contains(&role) {
                        self.err(
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
    }

    /// How long the modelled work takes: by default, for reviews, per role and per pass.
    fn durations(&mut self, d: &RawDurations, workflows: &BTreeMap<String, StudyWorkflow>) -> Durations {
        let default = self.dist("durations.default", &d.default);
        let review = d
            .review
            .as_ref()
            .map_or(Dist::LogNormal { median: 120_000, p90: 480_000 }, |r| self.dist("durations.review", r));
        let mut role = BTreeMap::new();
        for (k, v) in &d.role {
            match k.parse::<Role>().map_err(|e| e.to_string()).and_then(Role::check_not_misspelt) {
                Ok(r) => {
                    role.insert(r, self.dist(&format!("durations.role.{k}"), v));
                }
                Err(e) => self.err(format!("durations.role.{k}"), e.to_string()),
            }
        }
        let mut pass = BTreeMap::new();
        for (k, v) in &d.pass {
            let known =
                k.split_once('/').is_some_and(|(w, p)| workflows.get(w).is_some_and(|s| s.workflow.pass(p).is_some()));
            if !known {
                self.err(format!("durations.pass.{k}"), "write <workflow>/<pass> of a workflow of this scenario");
            }
            pass.insert(k.clone(), self.dist(&format!("durations.pass.{k}"), v));
        }
        Durations { default, review, role, pass }
    }

    /// How the modelled agents and humans behave besides taking time.
    fn behaviour(&mut self, b: &RawBehaviour) -> Behaviour {
        let behaviour = Behaviour {
            fail: self.rate("behaviour.fail", b.fail.unwrap_or(0.02), 1.0),
            hang: self.rate("behaviour.hang", b.hang.unwrap_or(0.0), 1.0),
            gate_fail: self.rate("behaviour.gate_fail", b.gate_fail.unwrap_or(0.1), 1.0),
            hang_timeout_ms: b
                .hang_timeout
                .as_ref()
                .map_or(3_600_000, |s| self.duration("behaviour.hang_timeout", s, 86_400_000))
                .max(1),
            checkpoint_ms: b.checkpoint.as_ref().map_or(3_000, |s| self.duration("behaviour.checkpoint", s, 3_600_000)),
            tokens_in_per_min: b.tokens_in_per_min.unwrap_or(8_000).min(10_000_000),
            tokens_out_per_min: b.tokens_out_per_min.unwrap_or(1_500).min(10_000_000),
            human: b
                .human
                .as_ref()
                .map_or(Dist::LogNormal { median: 900_000, p90: 3_600_000 }, |h| self.dist("behaviour.human", h)),
            human_approve: self.rate("behaviour.human_approve", b.human_approve.unwrap_or(0.95), 1.0),
        };
        if behaviour.fail + behaviour.hang > 1.0 {
            self.err("behaviour", "fail + hang is above 1");
        }
        behaviour
    }

    /// The budgets set before the run starts.
    fn budgets(&mut self, raw: &[RawBudget]) -> Vec<BudgetSpec> {
        let mut budgets = Vec::new();
        for (i, b) in raw.iter().enumerate() {
            let f = format!("budgets[{i}]");
            let scope = match b.scope.parse() {
                Ok(s) => s,
                Err(e) => {
                    self.err(format!("{f}.scope"), format!("{e}"));
                    continue;
                }
            };
            let period = match b.period.parse() {
                Ok(p) => p,
                Err(e) => {
                    self.err(format!("{f}.period"), format!("{e}"));
                    continue;
                }
            };
            if let Some(limit_micros) = self.dollars(&format!("{f}.limit"), &b.limit) {
                budgets.push(BudgetSpec { scope, name: b.name.clone(), limit_micros, period });
            }
        }
        budgets
    }

    /// The variants a comparison runs, each `base` with its changes.
    fn variants(&mut self, raw: &[RawVariant], base: &Policies) -> Vec<Variant> {
        let mut variants = Vec::new();
        for (i, v) in raw.iter().enumerate() {
            let p = self.policy(&format!("variant[{i}]"), &v.policy, base);
            variants.push(Variant { name: v.name.clone(), policies: p });
        }
        if variants.len() > VARIANTS_MAX {
            self.err("variant", format!("{} variants is above {VARIANTS_MAX}", variants.len()));
        }
        variants
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
