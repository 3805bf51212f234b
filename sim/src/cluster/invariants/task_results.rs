//! Task results come from the attempt that holds the task: a succeeded task's output (which
//! the simulated executor stamps with its attempt number) is the output of the task's current
//! attempt. A zombie — an older attempt whose worker lost the task — must be refused.

use qm_coordinator::state::TaskStatus;

use super::{End, Invariant};
use crate::cluster::workers::attempt_output;

#[derive(Debug)]
pub struct TaskResults;

impl Invariant for TaskResults {
    fn name(&self) -> &'static str {
        "task-result-from-current-attempt"
    }

    fn at_end(&mut self, end: &End<'_>) -> Result<(), String> {
        for r in end.replicas {
            for (id, t) in &r.tasks {
                if t.status == TaskStatus::Succeeded && t.output != attempt_output(t.attempt) {
                    return Err(format!(
                        "task {id} succeeded at attempt {} with the output of another attempt ({:?}) on n{}",
                        t.attempt, t.output, r.id
                    ));
                }
            }
        }
        Ok(())
    }
}
