//! The cost ledger: an entry per attempt, priced from usage and the project's prices; the
//! totals and the forecast of a pass's cost.

use qm_shared::limits::{LEDGER_ENTRIES_MAX, MONEY_MICROS_MAX};
use qm_shared::{Role, Tier};
use serde::{Deserialize, Serialize};

use crate::state::tasks::Task;
use crate::state::types::{JobId, Millis, TaskId};
use crate::state::types::{Outcome, Usage};
use crate::state::{Ctx, State};

use super::*;

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
    /// The agent's spec as `name@version` (empty: none, or a cached reuse).
    pub spec: String,
    pub worker: String,
    /// succeeded, failed, cancelled, preempted, timed-out, lost or cached.
    pub outcome: String,
}

impl Jobs {
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

    /// The forecast of one run of `pass` at `tier`, and whether history backs it (else the
    /// tier's default).
    pub fn forecast(&self, config: &crate::state::Config, workflow: &str, pass: &str, tier: Tier) -> (u64, u64) {
        match self.history.get(workflow).and_then(|m| m.get(pass)).map(|h| h[tier as usize]) {
            Some((n, money)) if n > 0 => (money / n, n),
            _ => (config.forecast_default_micros[tier as usize], 0),
        }
    }
}

pub(in crate::state) fn outcome_str(outcome: Option<Outcome>) -> &'static str {
    match outcome {
        Some(Outcome::Succeeded) => "succeeded",
        Some(Outcome::Failed) => "failed",
        Some(Outcome::Cancelled) => "cancelled",
        Some(Outcome::Preempted) => "preempted",
        Some(Outcome::TimedOut) => "timed-out",
        None => "lost",
    }
}

impl State {
    /// Writes the ledger entry of an attempt that ended (`None`: its worker was lost) and
    /// charges its money to the budgets in scope.
    pub(in crate::state) fn record_attempt(
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
            spec: t.agent_spec.clone(),
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
        // Money spent after a period ended belongs to the next one, whether or not a Tick
        // has rolled the budgets since.
        self.roll_budget_periods(ctx);
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

    pub(in crate::state) fn add_ledger(&mut self, entry: LedgerEntry, ctx: &mut Ctx) {
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
    pub(in crate::state) fn price(&self, t: &Task, usage: &Usage, wall_ms: u64) -> u64 {
        if let Some(reported) = usage.reported_micros {
            return reported.min(MONEY_MICROS_MAX);
        }
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
}

/// The ledger's name of a pass's task: the pass, or `<pass>#gate` for its review.
pub(in crate::state) fn ledger_pass(pass: &str, kind: Kind) -> std::borrow::Cow<'_, str> {
    match kind {
        Kind::Work => pass.into(),
        Kind::Review => format!("{pass}#gate").into(),
    }
}
