//! Preemption follows the policy: a holder is asked to yield only for a waiter whose own or
//! inherited priority (aging does not count) is at least `preempt_gap` above the holder's, and
//! a lease is revoked only after such a request.

use std::collections::{BTreeMap, BTreeSet};

use qm_coordinator::state::Effect;

use super::{Invariant, Obs};

#[derive(Debug, Default)]
pub struct Preemption {
    /// reservation → holder priority, from grants.
    priority: BTreeMap<u64, u32>,
    /// Reservations asked to yield.
    asked: BTreeSet<u64>,
}

impl Invariant for Preemption {
    fn name(&self) -> &'static str {
        "preemption-policy"
    }

    fn on_step(&mut self, obs: &Obs<'_>) -> Result<(), String> {
        for r in obs.replicas {
            for g in &r.grants {
                self.priority.insert(g.id.0, g.priority);
            }
        }
        for (node, rec) in obs.records {
            for e in &rec.effects {
                match e {
                    Effect::Granted { grant, .. } => {
                        self.priority.insert(grant.id.0, grant.priority);
                    }
                    Effect::PreemptRequested { reservation, owner, by, .. } => {
                        self.asked.insert(reservation.0);
                        let Some(replica) = obs.replicas.iter().find(|r| r.id == *node) else { continue };
                        let (Some(holder), Some(waiter)) =
                            (self.priority.get(&reservation.0), replica.waiters.get(&by.0))
                        else {
                            continue;
                        };
                        if *waiter < holder.saturating_add(replica.preempt_gap) {
                            return Err(format!(
                                "r{} ({owner}, priority {holder}) asked to yield at index {} for request {} of preempting priority {waiter}, less than {} above it",
                                reservation.0, rec.index, by.0, replica.preempt_gap
                            ));
                        }
                    }
                    Effect::Revoked { reservation, owner, .. } if !self.asked.contains(&reservation.0) => {
                        return Err(format!(
                            "r{} ({owner}) revoked at index {} without a preemption request",
                            reservation.0, rec.index
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}
