//! Field checks against the named limits: what the gRPC edge runs before proposing and
//! `apply` runs again, so nothing invalid is ever written.

use super::*;
use qm_shared::limits::STATE_BYTES_MAX_MIN;

/// Checks a command's fields against the limits. The gRPC edge calls this before proposing;
/// `apply` calls it again and refuses what fails, so nothing invalid is ever written.
pub fn validate_command(cmd: &Command) -> Result<(), Invalid> {
    match cmd {
        Command::OpenSession { label, ttl_ms, principal } => {
            if label.len() > SESSION_LABEL_LEN_MAX_BYTES {
                return Err(Invalid::new(
                    "label",
                    format!("is {} bytes, at most {SESSION_LABEL_LEN_MAX_BYTES} allowed", label.len()),
                ));
            }
            if principal.len() > qm_shared::limits::TOKEN_NAME_LEN_MAX_BYTES {
                return Err(Invalid::new(
                    "principal",
                    format!(
                        "is {} bytes, at most {} allowed",
                        principal.len(),
                        qm_shared::limits::TOKEN_NAME_LEN_MAX_BYTES
                    ),
                ));
            }
            qm_shared::validate::check_session_ttl_ms(*ttl_ms)
        }
        Command::Acquire(a) => {
            qm_shared::validate::check_owner(&a.owner)?;
            qm_shared::validate::check_priority(a.priority)?;
            qm_shared::validate::check_lease_ms(a.lease_ms)?;
            if let Wait::Wait { timeout_ms: Some(t) } = a.wait {
                qm_shared::validate::check_wait_timeout_ms(t)?;
            }
            validate_items(&a.items, false)
        }
        Command::Extend { lease_ms, .. } => qm_shared::validate::check_lease_ms(*lease_ms),
        Command::DeclareResource { capacity, grace_ms, .. } => {
            if let Some(c) = capacity {
                qm_shared::validate::check_range("capacity", (*c).into(), 1, CAPACITY_MAX.into())?;
            }
            qm_shared::validate::check_range("grace_ms", *grace_ms, PREEMPT_GRACE_MS_MIN, PREEMPT_GRACE_MS_MAX)
        }
        Command::Configure { config } => {
            qm_shared::validate::check_range("aging_interval_ms", config.aging_interval_ms, 1, 3_600_000)?;
            qm_shared::validate::check_range("aging_step", config.aging_step.into(), 1, PRIORITY_MAX.into())?;
            qm_shared::validate::check_range("preempt_gap", config.preempt_gap.into(), 0, PRIORITY_MAX.into())?;
            qm_shared::validate::check_range("queue_len_max", config.queue_len_max.into(), 1, QUEUE_LEN_MAX.into())?;
            qm_shared::validate::check_range(
                "claims_per_principal_max",
                config.claims_per_principal_max,
                1,
                CLAIMS_PER_PRINCIPAL_MAX,
            )?;
            let tasks = config.tasks_per_principal_max;
            qm_shared::validate::check_range("tasks_per_principal_max", tasks, 1, TASKS_PER_PRINCIPAL_MAX)?;
            let items = config.work_items_per_principal_max;
            qm_shared::validate::check_range("work_items_per_principal_max", items, 1, WORK_ITEMS_PER_PRINCIPAL_MAX)?;
            let bytes = config.payload_bytes_per_principal_max;
            qm_shared::validate::check_range(
                "payload_bytes_per_principal_max",
                bytes,
                TASK_PAYLOAD_BYTES_MAX as u64,
                PAYLOAD_BYTES_PER_PRINCIPAL_MAX,
            )?;
            qm_shared::validate::check_range(
                "fair_share_points",
                config.fair_share_points.into(),
                0,
                PRIORITY_MAX.into(),
            )?;
            qm_shared::validate::check_range(
                "high_priority_min",
                config.high_priority_min.into(),
                0,
                PRIORITY_MAX.into(),
            )?;
            qm_shared::validate::check_range("budget_approaching_pct", config.budget_approaching_pct.into(), 1, 100)?;
            qm_shared::validate::check_range(
                "budget_at_pct",
                config.budget_at_pct.into(),
                config.budget_approaching_pct.into(),
                100,
            )?;
            qm_shared::validate::check_range(
                "high_cost_micros",
                config.high_cost_micros,
                0,
                qm_shared::limits::MONEY_MICROS_MAX,
            )?;
            for (i, f) in config.forecast_default_micros.iter().enumerate() {
                qm_shared::validate::check_range(
                    &format!("forecast_default_micros[{i}]"),
                    *f,
                    0,
                    qm_shared::limits::MONEY_MICROS_MAX,
                )?;
            }
            Ok(())
        }
        Command::SubmitTask(_) | Command::RegisterWorker(_) | Command::ReportTask { .. } => {
            tasks::validate_task_command(cmd)
        }
        Command::SubmitJob(_) | Command::DecideGate { .. } | Command::SetBudget { .. } | Command::ApplyProject(_) => {
            jobs::validate_job_command(cmd)
        }
        Command::BootstrapAcl(t) | Command::CreateToken(t) => acl::validate_token(t),
        Command::RevokeToken { name } => {
            qm_shared::validate::check_name("name", name, qm_shared::limits::TOKEN_NAME_LEN_MAX_BYTES)
        }
        Command::KeepAlive { .. }
        | Command::CloseSession { .. }
        | Command::Release { .. }
        | Command::Cancel { .. }
        | Command::CancelTask { .. }
        | Command::CancelJob { .. }
        | Command::RetryJob { .. }
        | Command::Tick
        | Command::RestartLeases => Ok(()),
        Command::SpaceMeasured { quota, .. } => {
            qm_shared::validate::check_range("quota", *quota, STATE_BYTES_MAX_MIN, u64::MAX)
        }
    }
}

/// An acquire set (or a task's resources; `allow_empty` for a task needing none): size,
/// units, no path twice.
pub(crate) fn validate_items(items: &[Item], allow_empty: bool) -> Result<(), Invalid> {
    if (items.is_empty() && !allow_empty) || items.len() > SET_SIZE_MAX {
        let min = usize::from(!allow_empty);
        return Err(Invalid::new("resources", format!("has {} entries, {min}..={SET_SIZE_MAX} allowed", items.len())));
    }
    for (i, item) in items.iter().enumerate() {
        qm_shared::validate::check_range("units", item.units.into(), 1, CAPACITY_MAX.into())
            .map_err(|e| e.within(&format!("resources[{i}]")))?;
        // Sets are small (SET_SIZE_MAX), so a pairwise check beats allocating a set.
        if items[..i].iter().any(|other| other.path == item.path) {
            return Err(Invalid::new(
                format!("resources[{i}].resource"),
                format!("{} appears twice in one set", item.path),
            ));
        }
    }
    Ok(())
}
