//! Field checks of task and worker commands against the named limits.

use qm_shared::limits::{
    TASK_ATTEMPTS_MAX, TASK_CHECKPOINT_BYTES_MAX, TASK_ERROR_LEN_MAX_BYTES, TASK_OUTPUT_BYTES_MAX,
    TASK_PAYLOAD_BYTES_MAX, TASK_STAGE_LEN_MAX_BYTES, WORKER_LABELS_MAX, WORKER_NODE_ID_LEN_MAX_BYTES,
    WORKER_ROLES_MAX, WORKER_SLOTS_PER_ROLE_MAX, WORK_ITEM_LEN_MAX_BYTES,
};
use qm_shared::{validate, Invalid};

use crate::state::types::Command;
use crate::state::types::TaskReport;

/// Field rules of the task commands (the edge checks the same).
pub fn validate_task_command(cmd: &Command) -> Result<(), Invalid> {
    let len = |field: &str, n: usize, max: usize| {
        if n > max {
            Err(Invalid::new(field, format!("is {n} bytes, at most {max} allowed")))
        } else {
            Ok(())
        }
    };
    match cmd {
        Command::SubmitTask(spec) => {
            len("payload", spec.payload.len(), TASK_PAYLOAD_BYTES_MAX)?;
            len("team", spec.team.len(), qm_shared::limits::NAME_LEN_MAX_BYTES)?;
            len("project", spec.project.len(), qm_shared::limits::NAME_LEN_MAX_BYTES)?;
            len("work_item", spec.work_item.len(), WORK_ITEM_LEN_MAX_BYTES)?;
            validate::check_priority(spec.priority)?;
            validate::check_range("max_attempts", spec.max_attempts.into(), 1, TASK_ATTEMPTS_MAX as u64)?;
            crate::state::validate_items(&spec.items, true)
        }
        Command::RegisterWorker(w) => {
            if w.node_id.is_empty() {
                return Err(Invalid::new("node_id", "is empty"));
            }
            len("node_id", w.node_id.len(), WORKER_NODE_ID_LEN_MAX_BYTES)?;
            if w.slots.len() > WORKER_ROLES_MAX {
                return Err(Invalid::new("slots", format!("has {} roles, at most {WORKER_ROLES_MAX}", w.slots.len())));
            }
            for (field, names) in [("repos", &w.repos), ("clis", &w.clis)] {
                if names.len() > WORKER_LABELS_MAX {
                    return Err(Invalid::new(
                        field,
                        format!("has {} entries, at most {WORKER_LABELS_MAX}", names.len()),
                    ));
                }
                for n in names {
                    len(&format!("{field}[{n}]"), n.len(), WORKER_NODE_ID_LEN_MAX_BYTES)?;
                }
            }
            if let Some(role) = w.specs.keys().find(|r| !w.slots.contains_key(r)) {
                return Err(Invalid::new(format!("specs[{role}]"), "names a role the worker has no slots for"));
            }
            for (role, n) in &w.slots {
                validate::check_range(&format!("slots[{role}]"), (*n).into(), 0, WORKER_SLOTS_PER_ROLE_MAX.into())?;
            }
            if w.labels.len() > WORKER_LABELS_MAX {
                return Err(Invalid::new(
                    "labels",
                    format!("has {} entries, at most {WORKER_LABELS_MAX}", w.labels.len()),
                ));
            }
            for (k, v) in &w.labels {
                len(&format!("labels[{k}]"), k.len() + v.len(), WORKER_NODE_ID_LEN_MAX_BYTES)?;
            }
            if w.gpus.len() > WORKER_LABELS_MAX || w.providers.len() > WORKER_LABELS_MAX {
                return Err(Invalid::new(
                    "gpus",
                    format!("gpus and model_providers: at most {WORKER_LABELS_MAX} each"),
                ));
            }
            for (i, p) in w.providers.iter().enumerate() {
                len(&format!("model_providers[{i}].name"), p.name.len(), WORKER_NODE_ID_LEN_MAX_BYTES)?;
            }
            for (i, g) in w.gpus.iter().enumerate() {
                len(&format!("gpus[{i}].model"), g.model.len(), WORKER_NODE_ID_LEN_MAX_BYTES)?;
            }
            if w.running.len() > WORKER_SLOTS_PER_ROLE_MAX as usize * WORKER_ROLES_MAX {
                return Err(Invalid::new("running_task_ids", "lists more tasks than a worker can run"));
            }
            Ok(())
        }
        Command::ReportTask { report, .. } => match report {
            TaskReport::Progress { percent, stage, .. } => {
                validate::check_range("percent_done", (*percent).into(), 0, 100)?;
                len("stage", stage.len(), TASK_STAGE_LEN_MAX_BYTES)
            }
            TaskReport::Checkpoint { data, .. } => len("checkpoint.data", data.len(), TASK_CHECKPOINT_BYTES_MAX),
            TaskReport::Blocked { message } => len("message", message.len(), TASK_ERROR_LEN_MAX_BYTES),
            TaskReport::Finished { output, error, agent, spec, .. } => {
                len("agent", agent.len(), WORKER_NODE_ID_LEN_MAX_BYTES)?;
                len("spec", spec.len(), WORKER_NODE_ID_LEN_MAX_BYTES)?;
                len("output", output.len(), TASK_OUTPUT_BYTES_MAX)?;
                len("error", error.len(), TASK_ERROR_LEN_MAX_BYTES)
            }
        },
        _ => Ok(()),
    }
}
