//! No lost job or checkpoint.
//!
//! * Every task whose submission was acknowledged exists in every converged replica.
//! * Every checkpoint that reached the replicated state (seen in any replica's applied state,
//!   which holds committed entries only) is still there at the end — or a later one of a later
//!   attempt is, or the task ended (an ended task no longer needs one).

use std::collections::BTreeMap;

use qm_coordinator::state::TaskStatus;

use super::{End, Invariant, Obs};

#[derive(Debug, Default)]
pub struct Durability {
    /// task → highest (attempt, sequence) committed.
    checkpoints: BTreeMap<u64, (u32, u64)>,
}

impl Invariant for Durability {
    fn name(&self) -> &'static str {
        "no-lost-task-or-checkpoint"
    }

    fn on_step(&mut self, obs: &Obs<'_>) -> Result<(), String> {
        for r in obs.replicas {
            for (task, c) in &r.checkpoints {
                let e = self.checkpoints.entry(*task).or_insert(*c);
                *e = (*e).max(*c);
            }
        }
        Ok(())
    }

    fn at_end(&mut self, end: &End<'_>) -> Result<(), String> {
        for r in end.replicas {
            for (task, client) in &end.history.tasks {
                if !r.tasks.contains_key(task) {
                    return Err(format!(
                        "task {task} submitted by {client} was acknowledged but n{} has no such task",
                        r.id
                    ));
                }
            }
            for (task, seen) in &self.checkpoints {
                let Some(t) = r.tasks.get(task) else {
                    return Err(format!("task {task} had checkpoint {seen:?} committed but is missing on n{}", r.id));
                };
                let ended = matches!(t.status, TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Cancelled);
                if !ended && t.checkpoint.is_none_or(|c| c < *seen) {
                    return Err(format!(
                        "task {task}: checkpoint (attempt, seq) {seen:?} was committed but n{} keeps {:?}",
                        r.id, t.checkpoint
                    ));
                }
            }
        }
        Ok(())
    }
}
