//! No lost job or checkpoint: every task whose submission was acknowledged exists in every
//! converged replica, and every acknowledged checkpoint is at or below the one each replica
//! keeps for its task (a task that ended keeps none: it no longer needs one).

use super::{End, Invariant};

#[derive(Debug)]
pub struct Durability;

impl Invariant for Durability {
    fn name(&self) -> &'static str {
        "no-lost-task-or-checkpoint"
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
            for (task, seq) in &end.history.checkpoints {
                match r.tasks.get(task) {
                    Some(kept) if *kept == u64::MAX || kept >= seq => {}
                    Some(kept) => {
                        return Err(format!(
                            "task {task}: checkpoint {seq} was acknowledged but n{} keeps checkpoint {kept}",
                            r.id
                        ))
                    }
                    None => {
                        return Err(format!("task {task} with acknowledged checkpoint {seq} is missing on n{}", r.id))
                    }
                }
            }
        }
        Ok(())
    }
}
