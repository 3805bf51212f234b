//! A leader serves: while every coordinator is up and connected, some leader commits a write
//! at least every `SERVE_WITHIN_MS`.
//!
//! The leader proposes a Tick every 200 ms while anything has a deadline (every run has
//! sessions), and the clients write all the time, so a healthy cluster commits many times a
//! second. A leader that holds its term without committing anything — its heartbeats keep the
//! followers from electing another, and every write it is given is refused — is the
//! unavailability this checker exists for: all nodes up, every health check green, nothing
//! served.
//!
//! Checked during the chaos and liveness phases (the workload runs); the bound is well above
//! an election, a leadership transfer and a leader's step-down after a RestartLeases that did
//! not commit.

use super::{Invariant, Obs};
use crate::cluster::world::Phase;

/// The longest a healthy cluster may go without a leader committing a write.
pub const SERVE_WITHIN_MS: u64 = 15_000;

#[derive(Debug, Default)]
pub struct ServingLeader {
    /// Highest index a leader had applied, and when it first had.
    leader_applied: u64,
    last_commit_ms: u64,
}

impl Invariant for ServingLeader {
    fn name(&self) -> &'static str {
        "leader-serves"
    }

    fn on_step(&mut self, obs: &Obs<'_>) -> Result<(), String> {
        let applied = obs.replicas.iter().filter(|r| r.leader).map(|r| r.applied).max().unwrap_or(0);
        if applied > self.leader_applied {
            self.leader_applied = applied;
            self.last_commit_ms = obs.t_ms;
        }
        if !matches!(obs.phase, Phase::Chaos | Phase::Liveness) {
            return Ok(());
        }
        let Some(healthy) = obs.healthy_since_ms else { return Ok(()) };
        let since = healthy.max(self.last_commit_ms);
        if obs.t_ms.saturating_sub(since) <= SERVE_WITHIN_MS {
            return Ok(());
        }
        let nodes: Vec<String> = obs
            .replicas
            .iter()
            .map(|r| {
                format!("n{}{} term {} applied {}", r.id, if r.leader { " (leader)" } else { "" }, r.term, r.applied)
            })
            .collect();
        Err(format!(
            "every coordinator up and connected since {healthy}ms, and no leader committed anything for {}ms \
             (last at {}ms, index {}): {}",
            obs.t_ms - since,
            self.last_commit_ms,
            self.leader_applied,
            nodes.join(", ")
        ))
    }
}
