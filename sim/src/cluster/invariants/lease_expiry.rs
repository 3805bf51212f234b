//! No premature expiry: a lease expires only once the leader's clock has passed its
//! `expires_at`, judged on the leader's timeline.
//!
//! * The entry that expires a lease carries a leader-stamped time at or after the lease's
//!   `expires_at` as that replica last showed it (extends and leader-change restarts move it).
//! * That stamp is a leader's reading: it is never ahead of the highest clock reading any node
//!   had while it was leader (so a follower's clock, or an unstamped time, cannot expire it).

use std::collections::BTreeMap;

use qm_coordinator::state::Effect;

use super::{Invariant, Obs};

/// Slack for a stamp taken within the step its leader was observed in (ms).
pub const STAMP_SLACK_MS: u64 = 5;

#[derive(Debug, Default)]
pub struct LeaseExpiry {
    /// (replica, reservation) → expires_at as last observed on that replica.
    expires: BTreeMap<(u64, u64), u64>,
}

impl Invariant for LeaseExpiry {
    fn name(&self) -> &'static str {
        "no-premature-expiry"
    }

    fn on_step(&mut self, obs: &Obs<'_>) -> Result<(), String> {
        for (node, rec) in obs.records {
            for e in &rec.effects {
                match e {
                    Effect::Granted { grant, .. } => {
                        self.expires.entry((*node, grant.id.0)).or_insert(grant.expires_at);
                    }
                    Effect::Expired { reservation, resource, owner, .. } => {
                        if let Some(at) = self.expires.get(&(*node, reservation.0)) {
                            if rec.now < *at {
                                return Err(format!(
                                    "n{node} expired r{} ({resource}, {owner}) at index {} stamped {} before its expires_at {}",
                                    reservation.0, rec.index, rec.now, at
                                ));
                            }
                        }
                        if rec.now > obs.leader_clock_max_ms + STAMP_SLACK_MS {
                            return Err(format!(
                                "n{node} expired r{} ({resource}) at index {} stamped {}, ahead of every leader's clock (at most {})",
                                reservation.0, rec.index, rec.now, obs.leader_clock_max_ms
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
        for r in obs.replicas {
            for g in &r.grants {
                self.expires.insert((r.id, g.id.0), g.expires_at);
            }
        }
        Ok(())
    }
}
