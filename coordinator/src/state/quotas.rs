//! Per-principal quotas on submitted work: unended tasks, unended work items, and the payload
//! bytes they carry. (Sessions and lock claims per principal are counted where they change,
//! in `sessions.rs` and `acquire.rs`.) Counted by a scan at submission: submissions are rare
//! next to acquires, and a scan leaves nothing derived to keep in step.

use super::jobs::JobStatus;
use super::*;

/// What is being submitted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Work {
    Task,
    Item,
}

/// The bytes of a work item that count against its principal's payload quota.
pub(super) fn job_bytes(spec: &JobSpec) -> u64 {
    let inputs: usize = spec.inputs.iter().map(|(k, v)| k.len() + v.len()).sum();
    (spec.run.len() + spec.review_run.len() + spec.title.len() + inputs) as u64
}

impl State {
    /// Refuses `work` of `bytes` from `principal` if it would take the principal past its
    /// tasks, work items or payload bytes (a principal's empty name: no quota).
    pub(super) fn work_quota(&self, principal: &str, work: Work, bytes: u64) -> Result<(), Refusal> {
        if principal.is_empty() {
            return Ok(());
        }
        let tasks = self.tasks.iter().filter(|t| !t.status.ended() && t.spec.principal == principal);
        let (task_count, task_bytes) = tasks.fold((0u64, 0u64), |(n, b), t| (n + 1, b + t.spec.payload.len() as u64));
        let items = self.jobs.iter().filter(|j| j.status == JobStatus::Running && j.spec.principal == principal);
        let (item_count, item_bytes) = items.fold((0u64, 0u64), |(n, b), j| (n + 1, b + job_bytes(&j.spec)));
        let c = &self.config;
        let exhausted =
            |what: &str, max: u64| Refusal::Exhausted { what: format!("{what} of principal {principal:?}"), max };
        if work == Work::Task && task_count >= c.tasks_per_principal_max {
            return Err(exhausted("unended tasks", c.tasks_per_principal_max));
        }
        if work == Work::Item && item_count >= c.work_items_per_principal_max {
            return Err(exhausted("unended work items", c.work_items_per_principal_max));
        }
        if task_bytes + item_bytes + bytes > c.payload_bytes_per_principal_max {
            return Err(exhausted("payload bytes of unended work", c.payload_bytes_per_principal_max));
        }
        Ok(())
    }
}
