//! Field checks of job, gate, budget and project commands against the named limits.

use qm_shared::limits::{
    CAPACITY_MAX, GATE_FAILURES_MAX, JOB_INPUTS_MAX, JOB_INPUT_BYTES_MAX, MONEY_MICROS_MAX, NAME_LEN_MAX_BYTES,
    PREEMPT_GRACE_MS_MAX, PREEMPT_GRACE_MS_MIN, PROJECT_ENTRIES_MAX, TASK_ATTEMPTS_MAX, TASK_PAYLOAD_BYTES_MAX,
    TEXT_LEN_MAX_BYTES, WORKFLOW_PASSES_MAX,
};
use qm_shared::workflow::{OnFail, Reviewer};
use qm_shared::{validate, Invalid, ResourcePath};

use crate::state::types::JobSpec;
use crate::state::types::{Command, Policy};

use super::*;

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

pub(in crate::state) fn validate_workflow(spec: &JobSpec) -> Result<(), Invalid> {
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
        crate::state::validate_items(&needs_to_items(w, i), true).map_err(|e| e.within(&format!("{at}.needs")))?;
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

pub(in crate::state) fn len_ok(field: &str, n: usize, max: usize) -> Result<(), Invalid> {
    if n > max {
        Err(Invalid::new(field, format!("is {n} bytes, at most {max} allowed")))
    } else {
        Ok(())
    }
}
