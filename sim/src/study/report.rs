//! What a study measures, and the report it prints.
//!
//! Time-weighted figures (utilisation, waiters) are integrated exactly between the events
//! that change them, into fixed buckets of simulated time, so the plots over time and the
//! totals agree.

use std::collections::BTreeMap;

use serde::Serialize;

/// A value that changes at events, integrated over time into buckets.
#[derive(Clone, Debug)]
pub struct Gauge {
    value: f64,
    last: u64,
    peak: f64,
    /// Integral of the value over each bucket (value × ms).
    buckets: Vec<f64>,
}

impl Gauge {
    pub fn new(buckets: usize) -> Gauge {
        Gauge { value: 0.0, last: 0, peak: 0.0, buckets: vec![0.0; buckets] }
    }

    pub fn add(&mut self, now: u64, bucket_ms: u64, delta: f64) {
        self.advance(now, bucket_ms);
        self.value += delta;
        if self.value > self.peak {
            self.peak = self.value;
        }
    }

    /// Integrates the current value up to `now`.
    pub fn advance(&mut self, now: u64, bucket_ms: u64) {
        let mut t = self.last;
        while t < now {
            let b = (t / bucket_ms) as usize;
            if b >= self.buckets.len() {
                break;
            }
            let end = ((b as u64 + 1) * bucket_ms).min(now);
            self.buckets[b] += self.value * (end - t) as f64;
            t = end;
        }
        self.last = self.last.max(now);
    }

    pub fn value(&self) -> f64 {
        self.value
    }

    pub fn peak(&self) -> f64 {
        self.peak
    }

    /// Mean value in each bucket.
    pub fn means(&self, bucket_ms: u64) -> Vec<f64> {
        self.buckets.iter().map(|v| v / bucket_ms as f64).collect()
    }

    /// Mean value over the whole run.
    pub fn mean(&self, bucket_ms: u64) -> f64 {
        self.buckets.iter().sum::<f64>() / (bucket_ms as f64 * self.buckets.len() as f64)
    }
}

/// Wait-time summary of one class.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct WaitStats {
    pub class: String,
    pub priority: u32,
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    /// Pass attempts started.
    pub starts: u64,
    pub p50_ms: u64,
    pub p90_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    /// Mean time waiting for an agent, then for the resources.
    pub mean_dispatch_ms: u64,
    pub mean_resources_ms: u64,
    /// Work item lead time (submitted → done), median and 90th percentile.
    pub lead_p50_ms: u64,
    pub lead_p90_ms: u64,
    /// Fraction of waits at or below each point of `cdf_ms` (the report's x axis).
    pub cdf: Vec<f64>,
}

/// Utilisation of one role's agents.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RoleUse {
    pub role: String,
    pub slots: u64,
    /// Fraction of slot time running work.
    pub running: f64,
    /// Fraction of slot time with a task (running, or acquiring its resources).
    pub occupied: f64,
}

/// One resource row: a declared resource and everything under it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ResourceUse {
    pub path: String,
    pub capacity: Option<u32>,
    pub policy: String,
    /// Fraction of time in use (counted: units held / capacity; otherwise: any lease held).
    pub busy: f64,
    pub mean_waiters: f64,
    pub peak_waiters: u64,
    pub grants: u64,
    /// Busy fraction and mean waiters per time bucket.
    pub busy_series: Vec<f64>,
    pub waiters_series: Vec<f64>,
}

/// A budget crossing a threshold.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BudgetEvent {
    pub at_ms: u64,
    pub scope: String,
    pub name: String,
    pub level: String,
    pub spent_micros: u64,
    pub limit_micros: u64,
}

/// The longest wait seen.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LongestWait {
    pub ms: u64,
    pub class: String,
    pub pass: String,
    pub job: String,
    /// Still waiting when the run ended.
    pub unfinished: bool,
}

/// Everything one run measured.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Report {
    pub scenario: String,
    pub variant: String,
    pub seed: u64,
    pub sim_ms: u64,
    pub wall_ms: u64,
    pub workers: u64,
    pub agents: u64,
    /// Commands applied to the replicated state.
    pub commands: u64,
    pub events: u64,
    pub items_submitted: u64,
    pub items_completed: u64,
    pub items_failed: u64,
    pub items_in_flight: u64,
    pub items_per_hour: f64,
    pub passes_succeeded: u64,
    pub passes_per_hour: f64,
    pub attempts_started: u64,
    pub attempts_failed: u64,
    pub attempts_timed_out: u64,
    pub attempts_preempted: u64,
    pub gate_failures: u64,
    pub deadlocks: u64,
    pub preemptions: u64,
    pub revocations: u64,
    pub expiries: u64,
    /// Agents that parked a blocked task and took other work.
    pub replans: u64,
    /// Passes started by an agent whose worker had a parked, still-blocked task: work done
    /// thanks to re-planning.
    pub replan_starts: u64,
    /// Slots taken back from other work for a parked task whose resources arrived.
    pub reclaims: u64,
    pub queue_full: u64,
    pub human_decisions: u64,
    pub spend_approvals: u64,
    pub cost_micros: u64,
    pub cost_by_team: BTreeMap<String, u64>,
    pub cost_by_class: BTreeMap<String, u64>,
    pub budget_events: Vec<BudgetEvent>,
    pub longest_wait: LongestWait,
    pub classes: Vec<WaitStats>,
    pub roles: Vec<RoleUse>,
    pub resources: Vec<ResourceUse>,
    pub bucket_ms: u64,
    /// Agent utilisation (running) per bucket, all roles together.
    pub agent_series: Vec<f64>,
    /// x axis of every class's `cdf`.
    pub cdf_ms: Vec<u64>,
    /// SHA-256 (first 16 hex digits) of the final replicated state: the same seed gives the
    /// same digest.
    pub state_digest: String,
}

/// Percentile of a sorted slice.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Human-readable milliseconds: `850ms`, `12.4s`, `7m12s`, `2h05m`.
pub fn hms(ms: u64) -> String {
    match ms {
        ms if ms < 1_000 => format!("{ms}ms"),
        ms if ms < 60_000 => format!("{:.1}s", ms as f64 / 1e3),
        ms if ms < 3_600_000 => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1_000),
        ms => format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000),
    }
}

fn pct(f: f64) -> String {
    format!("{:.0}%", f * 100.0)
}

impl Report {
    /// The report as text tables.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let hours = self.sim_ms as f64 / 3.6e6;
        let _ = writeln!(
            s,
            "{} — variant {}, seed {}: {:.1} simulated hours, {} agents on {} workers, {} commands in {} wall",
            self.scenario,
            self.variant,
            self.seed,
            hours,
            self.agents,
            self.workers,
            self.commands,
            hms(self.wall_ms)
        );
        let _ = writeln!(
            s,
            "work items: {} submitted, {} done ({:.1}/h), {} failed, {} in flight; passes: {} succeeded ({:.1}/h)",
            self.items_submitted,
            self.items_completed,
            self.items_per_hour,
            self.items_failed,
            self.items_in_flight,
            self.passes_succeeded,
            self.passes_per_hour
        );
        let _ = writeln!(s, "\nwait for a pass to start, per class (queued → running):");
        let _ = writeln!(
            s,
            "  {:<10} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10}",
            "class", "prio", "starts", "p50", "p90", "p99", "max", "for agent", "for locks", "lead p50"
        );
        for c in &self.classes {
            let _ = writeln!(
                s,
                "  {:<10} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10}",
                c.class,
                c.priority,
                c.starts,
                hms(c.p50_ms),
                hms(c.p90_ms),
                hms(c.p99_ms),
                hms(c.max_ms),
                hms(c.mean_dispatch_ms),
                hms(c.mean_resources_ms),
                hms(c.lead_p50_ms)
            );
        }
        let _ = writeln!(s, "\nagents (fraction of slot time):");
        let _ = writeln!(s, "  {:<14} {:>6} {:>8} {:>9}", "role", "slots", "running", "occupied");
        for r in &self.roles {
            let _ = writeln!(s, "  {:<14} {:>6} {:>8} {:>9}", r.role, r.slots, pct(r.running), pct(r.occupied));
        }
        let _ = writeln!(s, "\nresources:");
        let _ = writeln!(
            s,
            "  {:<28} {:>8} {:>8} {:>6} {:>12} {:>12} {:>8}",
            "path", "capacity", "policy", "busy", "mean waiters", "peak waiters", "grants"
        );
        for r in &self.resources {
            let _ = writeln!(
                s,
                "  {:<28} {:>8} {:>8} {:>6} {:>12.1} {:>12} {:>8}",
                r.path,
                r.capacity.map_or("lock".to_string(), |c| c.to_string()),
                r.policy,
                pct(r.busy),
                r.mean_waiters,
                r.peak_waiters,
                r.grants
            );
        }
        let _ = writeln!(
            s,
            "\ncontention: {} deadlocks broken, {} preemptions ({} revoked), {} re-plans ({} passes started meanwhile), {} queue-full refusals, {} lease expiries",
            self.deadlocks, self.preemptions, self.revocations, self.replans, self.replan_starts, self.queue_full, self.expiries
        );
        let _ = writeln!(
            s,
            "attempts: {} started, {} failed, {} timed out (hung), {} preempted; {} gate failures; {} human decisions, {} spend approvals",
            self.attempts_started,
            self.attempts_failed,
            self.attempts_timed_out,
            self.attempts_preempted,
            self.gate_failures,
            self.human_decisions,
            self.spend_approvals
        );
        let lw = &self.longest_wait;
        let _ = writeln!(
            s,
            "starvation: longest wait {} ({} {} of {}{})",
            hms(lw.ms),
            lw.class,
            lw.pass,
            lw.job,
            if lw.unfinished { ", still waiting at the end" } else { "" }
        );
        let teams: Vec<String> =
            self.cost_by_team.iter().map(|(t, m)| format!("{t} {}", qm_shared::workflow::dollars(*m))).collect();
        let _ = writeln!(s, "cost: {} ({})", qm_shared::workflow::dollars(self.cost_micros), teams.join(", "));
        if self.budget_events.is_empty() {
            let _ = writeln!(s, "budgets: no threshold crossed");
        } else {
            let _ = writeln!(s, "budgets:");
            for b in &self.budget_events {
                let _ = writeln!(
                    s,
                    "  at {}: {} {} {} ({} of {})",
                    hms(b.at_ms),
                    b.scope,
                    b.name,
                    b.level,
                    qm_shared::workflow::dollars(b.spent_micros),
                    qm_shared::workflow::dollars(b.limit_micros)
                );
            }
        }
        let _ = writeln!(s, "state digest {}", self.state_digest);
        s
    }
}

/// Several variants of one workload, side by side.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Comparison {
    pub scenario: String,
    pub seed: u64,
    pub runs: Vec<Report>,
}

impl Comparison {
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "{} — seed {}, the same arrivals under each variant\n", self.scenario, self.seed);
        let names: Vec<&str> = self.runs.iter().map(|r| r.variant.as_str()).collect();
        let w = names.iter().map(|n| n.len()).max().unwrap_or(8).max(12);
        let _ = write!(s, "  {:<26}", "");
        for n in &names {
            let _ = write!(s, " {n:>w$}");
        }
        s.push('\n');
        let mut row = |label: &str, f: &dyn Fn(&Report) -> String| {
            let _ = write!(s, "  {label:<26}");
            for r in &self.runs {
                let _ = write!(s, " {:>w$}", f(r));
            }
            s.push('\n');
        };
        row("work items done", &|r| r.items_completed.to_string());
        row("items/hour", &|r| format!("{:.1}", r.items_per_hour));
        row("passes/hour", &|r| format!("{:.1}", r.passes_per_hour));
        let classes: Vec<String> =
            self.runs.first().map(|r| r.classes.iter().map(|c| c.class.clone()).collect()).unwrap_or_default();
        for c in &classes {
            let get = |r: &Report| r.classes.iter().find(|x| &x.class == c).cloned().unwrap_or_default();
            row(&format!("{c} wait p50"), &|r| hms(get(r).p50_ms));
            row(&format!("{c} wait p99"), &|r| hms(get(r).p99_ms));
            row(&format!("{c} lead p50"), &|r| hms(get(r).lead_p50_ms));
        }
        row("agents running", &|r| {
            let (run, slots) =
                r.roles.iter().fold((0.0, 0u64), |(a, n), x| (a + x.running * x.slots as f64, n + x.slots));
            pct(if slots == 0 { 0.0 } else { run / slots as f64 })
        });
        row("agents occupied", &|r| {
            let (occ, slots) =
                r.roles.iter().fold((0.0, 0u64), |(a, n), x| (a + x.occupied * x.slots as f64, n + x.slots));
            pct(if slots == 0 { 0.0 } else { occ / slots as f64 })
        });
        row("deadlocks", &|r| r.deadlocks.to_string());
        row("preemptions", &|r| r.preemptions.to_string());
        row("re-plans", &|r| r.replans.to_string());
        row("passes started meanwhile", &|r| r.replan_starts.to_string());
        row("slots taken back", &|r| r.reclaims.to_string());
        row("longest wait", &|r| hms(r.longest_wait.ms));
        row("cost", &|r| qm_shared::workflow::dollars(r.cost_micros));
        s
    }
}
