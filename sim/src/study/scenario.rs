//! Scenario files: the workload, the fleet and the policies of a contention study.
//!
//! A scenario is TOML (format: `docs/simulator.md`). Parsing resolves everything a run needs
//! (workflows, the project, resource footprints with their template values) and checks it, so
//! a run never starts on a scenario it would trip over halfway. Every error names the file,
//! the line when known, the field and the bound or the choices.

use std::collections::BTreeMap;
use std::path::Path;

use qm_coordinator::state::Policy;
use qm_shared::workflow::{Project, Workflow};
use qm_shared::workflow_file::FileError;
use qm_shared::{Mode, Role};

use super::rng::{parse_duration, Dist};

mod file;
pub use file::parse;

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
