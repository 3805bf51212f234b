//! Budgets: limits by scope (org, team, project, work item) and calendar period, their
//! levels (under, approaching, at, over), and admission: where a task is checked against every
//! budget that covers it before it may start.

use qm_shared::limits::BUDGETS_MAX;
use qm_shared::workflow::dollars;
use serde::{Deserialize, Serialize};

use crate::state::tasks::{Admission, Task};
use crate::state::types::{Effect, JobId, Millis, Refusal, Response};
use crate::state::types::{Level, Period, Scope};
use crate::state::{Ctx, State};

use super::*;

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

impl Jobs {
    pub fn budgets(&self) -> impl Iterator<Item = &Budget> {
        self.budgets.values().flat_map(|m| m.values())
    }

    pub(in crate::state) fn budget_count(&self) -> usize {
        self.budgets.values().map(|m| m.len()).sum()
    }

    /// The name a scope's budget covering this work has (`None`: the work has no such scope).
    pub(in crate::state) fn scope_name<'a>(
        scope: Scope,
        team: &'a str,
        project: &'a str,
        job: &'a str,
    ) -> Option<&'a str> {
        let name = match scope {
            Scope::Org => "org",
            Scope::Team => team,
            Scope::Project => project,
            Scope::Item => job,
        };
        (!name.is_empty()).then_some(name)
    }

    /// The budgets covering work of `team`, `project` and work item `job` (`j7`; empty: none).
    pub(in crate::state) fn covering<'a>(
        &'a self,
        team: &'a str,
        project: &'a str,
        job: &'a str,
    ) -> impl Iterator<Item = &'a Budget> {
        self.budgets.iter().filter_map(move |(scope, m)| m.get(Jobs::scope_name(*scope, team, project, job)?))
    }

    pub(in crate::state) fn for_covering(
        &mut self,
        team: &str,
        project: &str,
        job: &str,
        mut f: impl FnMut(&mut Budget),
    ) {
        for (scope, m) in self.budgets.iter_mut() {
            if let Some(b) = Jobs::scope_name(*scope, team, project, job).and_then(|n| m.get_mut(n)) {
                f(b);
            }
        }
    }

    /// Ledger money in `scope`/`name` from `since` on (the retained entries).
    pub(in crate::state) fn spent_since(&self, scope: Scope, name: &str, since: Millis) -> u64 {
        self.ledger
            .values()
            .filter(|e| e.at >= since && in_scope(scope, name, &e.team, &e.project, e.job))
            .map(|e| e.money_micros)
            .sum()
    }

    pub(in crate::state) fn committed_in(&self, scope: Scope, name: &str, tasks: &crate::state::Tasks) -> u64 {
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

impl State {
    pub(in crate::state) fn apply_set_budget(
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
    pub(in crate::state) fn roll_budget_periods(&mut self, ctx: &mut Ctx) {
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
    pub(in crate::state) fn update_levels(&mut self, ctx: &mut Ctx) {
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
    pub(in crate::state) fn admit(&self, t: &Task, _now: Millis) -> Admission {
        let Some((job_id, i, kind)) = self.jobs.link(t.id) else { return Admission::Go };
        let job = &self.jobs.jobs[&job_id];
        let pass = &job.passes[i];
        let tier = t.spec.tier.unwrap_or(pass.tier);
        let (forecast, _) =
            self.jobs.forecast(&self.config, &job.spec.workflow.name, &ledger_pass(&pass.name, kind), tier);
        if let Some(cap) = self.role_spec(t.spec.role).and_then(|s| s.money_per_task_micros) {
            if forecast > cap && !pass.spend_approved {
                return Admission::Approval(format!(
                    "the forecast {} for {} ({tier}) is over its agent spec's usd_per_task {}: needs approval \
                     (qm gate approve {job_id} {})",
                    dollars(forecast),
                    ledger_pass(&pass.name, kind),
                    dollars(cap),
                    pass.name
                ));
            }
        }
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

    /// A running task whose usage so far (priced as the ledger would) has just crossed its
    /// role's agent spec's `usd_per_task` is stopped, unless a human approved its spend; the
    /// work item says why. (A local provider's hourly cost counts only at the end.)
    pub(in crate::state) fn stop_over_spec_budget(
        &mut self,
        id: TaskId,
        before: &crate::state::types::Usage,
        ctx: &mut Ctx,
    ) {
        let Some(t) = self.tasks.get(id) else { return };
        let Some(cap) = self.role_spec(t.spec.role).and_then(|s| s.money_per_task_micros) else { return };
        let (was, now) = (self.price(t, before, 0), self.price(t, &t.usage, 0));
        if was > cap || now <= cap {
            return;
        }
        if let Some((job, i, kind)) = self.jobs.link(id) {
            let Some(p) = self.jobs.jobs.get(&job).map(|j| &j.passes[i]) else { return };
            if p.spend_approved {
                return;
            }
            let name = ledger_pass(&p.name, kind).into_owned();
            let why =
                format!("spent {} so far, over its agent spec's usd_per_task {}: stopped", dollars(now), dollars(cap));
            self.jobs.event(job, &name, why, ctx);
        }
        self.stop_task(id, ctx);
    }
}

pub(in crate::state) fn in_scope(scope: Scope, name: &str, team: &str, project: &str, job: Option<JobId>) -> bool {
    match scope {
        Scope::Org => true,
        Scope::Team => team == name,
        Scope::Project => project == name,
        Scope::Item => job.is_some_and(|j| j.to_string() == name),
    }
}
