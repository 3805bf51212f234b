//! The worker gateway: assignments out; reported usage and outcomes in.

use qm_shared::pb::v1 as pb;
use qm_shared::Invalid;

use super::{items_to_pb, tier_to_pb};
use crate::state::{Outcome, Task, Usage};

/// The usage a report carries, summed over its entries.
pub fn usage_from_pb(usage: &[pb::TokenUsage]) -> Usage {
    let mut u = Usage::default();
    for x in usage {
        u.input_tokens = u.input_tokens.saturating_add(x.input_tokens);
        u.output_tokens = u.output_tokens.saturating_add(x.output_tokens);
        u.cached_tokens = u.cached_tokens.saturating_add(x.cached_tokens);
        u.estimated |= x.estimated;
        if let Some(m) = x.reported_cost_micros {
            u.reported_micros = Some(u.reported_micros.unwrap_or(0).saturating_add(m));
        }
    }
    u
}

/// A reported task outcome.
pub fn outcome_from_pb(o: i32) -> Result<Outcome, Invalid> {
    match pb::TaskOutcome::try_from(o) {
        Ok(pb::TaskOutcome::Succeeded) => Ok(Outcome::Succeeded),
        Ok(pb::TaskOutcome::Failed) => Ok(Outcome::Failed),
        Ok(pb::TaskOutcome::Cancelled) => Ok(Outcome::Cancelled),
        Ok(pb::TaskOutcome::Preempted) => Ok(Outcome::Preempted),
        Ok(pb::TaskOutcome::TimedOut) => Ok(Outcome::TimedOut),
        _ => Err(Invalid::new("result.outcome", format!("{o} is not a task outcome"))),
    }
}

/// The Assignment message for the current attempt of `t`.
pub fn assignment(t: &Task) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage {
        msg: Some(pb::coordinator_message::Msg::Assignment(pb::coordinator_message::Assignment {
            task_id: t.id.0,
            attempt: t.attempt,
            role: t.spec.role.to_string(),
            resources: items_to_pb(&t.attempt_items()),
            reservations: Vec::new(),
            payload: t.spec.payload.clone(),
            priority: t.spec.priority,
            resume_checkpoint: t.checkpoint.as_ref().map(|c| c.data.clone()).unwrap_or_default(),
            work_item_id: t.spec.work_item.clone(),
            model_tier: t.spec.tier.map_or(pb::ModelTier::Unspecified, tier_to_pb) as i32,
            timeout_ms: t.spec.timeout_ms,
            incremental: t.spec.incremental,
            provider: t.route.as_ref().map(|r| r.provider.clone()).unwrap_or_default(),
            model: t.route.as_ref().map(|r| r.model.clone()).unwrap_or_default(),
        })),
    }
}
