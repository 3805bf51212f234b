//! Jobs: work items, budgets, ledger entries and the scheduler's tunables out.

use qm_shared::pb::v1 as pb;

use crate::state::{Budget, Config, Job, LedgerEntry, State};

pub fn pass_info(job: &Job, i: usize, state: &State) -> pb::PassInfo {
    let p = &job.passes[i];
    let w = &job.spec.workflow.passes[i];
    let route = p.task.and_then(|t| state.tasks().get(t)).and_then(|t| t.route.clone());
    pb::PassInfo {
        name: p.name.clone(),
        role: w.role.to_string(),
        tier: p.tier.to_string(),
        status: p.status.as_str().into(),
        runs: p.runs,
        gate_failures: p.gate_failures,
        task_id: p.task.map_or(0, |t| t.0),
        review_task_id: p.review.map_or(0, |t| t.0),
        wait: p.wait.clone().unwrap_or_default(),
        artifact: p.artifact.clone().unwrap_or_default(),
        cost_micros: p.cost_micros,
        saved_micros: p.saved_micros,
        input_tokens: p.input_tokens,
        output_tokens: p.output_tokens,
        wall_ms: p.wall_ms,
        after: w.after.clone(),
        gate_reviewer: w.gate.as_ref().map(|g| g.reviewer.as_str().to_string()).unwrap_or_default(),
        gate_criteria: w.gate.as_ref().map(|g| g.criteria.clone()).unwrap_or_default(),
        on_fail: w.gate.as_ref().map(|g| g.on_fail.to_string()).unwrap_or_default(),
        gates: p
            .gates
            .iter()
            .map(|g| pb::GateResultInfo {
                round: g.round,
                reviewer: g.reviewer.clone(),
                passed: g.passed,
                note: g.note.clone(),
                at_ms: g.at,
            })
            .collect(),
        approval_wanted: p.approval_wanted,
        model: route.as_ref().map(|r| r.model.clone()).unwrap_or_default(),
        provider: route.map(|r| r.provider).unwrap_or_default(),
    }
}

/// One work item; `full` adds its events and inputs (lists leave them out: bounded replies).
pub fn job_info(job: &Job, state: &State, full: bool) -> pb::JobInfo {
    pb::JobInfo {
        job_id: job.id.0,
        title: job.spec.title.clone(),
        class: job.spec.class.clone(),
        priority: job.spec.priority,
        team: job.spec.team.clone(),
        project: job.spec.project.clone(),
        workflow: job.spec.workflow.name.clone(),
        status: job.status.as_str().into(),
        submitted_at_ms: job.submitted_at,
        ended_at_ms: job.ended_at.unwrap_or(0),
        cost_micros: job.cost_micros,
        saved_micros: job.saved_micros,
        budget_micros: job.spec.budget_micros.unwrap_or(0),
        passes: (0..job.passes.len()).map(|i| pass_info(job, i, state)).collect(),
        events: if full {
            job.events
                .iter()
                .map(|e| pb::JobEventInfo { at_ms: e.at, pass: e.pass.clone(), message: e.message.clone() })
                .collect()
        } else {
            Vec::new()
        },
        inputs: if full { job.spec.inputs.clone().into_iter().collect() } else { Default::default() },
        commit: job.spec.commit.clone(),
    }
}

pub fn budget_info(b: &Budget) -> pb::BudgetInfo {
    pb::BudgetInfo {
        scope: b.scope.as_str().into(),
        name: b.name.clone(),
        limit_micros: b.limit_micros,
        period: b.period.as_str().into(),
        period_start_ms: b.period_start,
        period_end_ms: b.period.end(b.period_start).unwrap_or(0),
        spent_micros: b.spent_micros,
        committed_micros: b.committed_micros,
        level: b.level.as_str().into(),
    }
}

pub fn ledger_info(e: &LedgerEntry) -> pb::LedgerEntryInfo {
    pb::LedgerEntryInfo {
        seq: e.seq,
        at_ms: e.at,
        task_id: e.task.0,
        attempt: e.attempt,
        job_id: e.job.map_or(0, |j| j.0),
        team: e.team.clone(),
        project: e.project.clone(),
        workflow: e.workflow.clone(),
        pass: e.pass.clone(),
        role: e.role.to_string(),
        tier: e.tier.map(|t| t.to_string()).unwrap_or_default(),
        provider: e.provider.clone(),
        model: e.model.clone(),
        input_tokens: e.input_tokens,
        output_tokens: e.output_tokens,
        cached_tokens: e.cached_tokens,
        estimated: e.estimated,
        money_micros: e.money_micros,
        saved_micros: e.saved_micros,
        wall_ms: e.wall_ms,
        agent: e.agent.clone(),
        worker: e.worker.clone(),
        outcome: e.outcome.clone(),
        spec: e.spec.clone(),
    }
}

pub fn scheduler_info(c: &Config) -> pb::SchedulerConfig {
    pb::SchedulerConfig {
        aging_interval_ms: c.aging_interval_ms,
        aging_step: c.aging_step,
        fair_share_points: c.fair_share_points,
        set_fair_share: false,
        high_priority_min: c.high_priority_min,
        budget_approaching_pct: c.budget_approaching_pct,
        budget_at_pct: c.budget_at_pct,
        high_cost_micros: c.high_cost_micros,
        preempt_gap: c.preempt_gap,
        docs_aging_bound_ms: c.aging_bound_ms(100),
        claims_per_principal_max: c.claims_per_principal_max,
        tasks_per_principal_max: c.tasks_per_principal_max,
        work_items_per_principal_max: c.work_items_per_principal_max,
        payload_bytes_per_principal_max: c.payload_bytes_per_principal_max,
    }
}
