//! Liveness after the heal: within the liveness window a leader is elected and commits, and
//! every client completes an operation (nothing starves once the faults are gone).

use std::collections::BTreeMap;

use super::{End, Invariant, Obs};
use crate::cluster::world::Phase;

#[derive(Debug, Default)]
pub struct Liveness {
    /// Each client's progress count at the heal.
    at_heal: Option<BTreeMap<String, u64>>,
    applied_at_heal: u64,
    /// First time after the heal a leader had applied past the heal's index.
    committed_after_heal: Option<u64>,
    /// When each client first progressed after the heal.
    progressed: BTreeMap<String, u64>,
}

impl Liveness {
    /// Whether everything this checker waits for has happened (the runner may move on).
    pub fn satisfied(&self, clients: usize) -> bool {
        self.committed_after_heal.is_some() && self.progressed.len() >= clients
    }
}

impl Invariant for Liveness {
    fn name(&self) -> &'static str {
        "liveness-after-heal"
    }

    fn on_step(&mut self, obs: &Obs<'_>) -> Result<(), String> {
        let Some(healed) = obs.healed_at_ms else { return Ok(()) };
        let at_heal = self.at_heal.get_or_insert_with(|| {
            self.applied_at_heal = obs.replicas.iter().map(|r| r.applied).max().unwrap_or(0);
            obs.history.progress.clone()
        });
        if obs.phase == Phase::Liveness {
            for (client, n) in &obs.history.progress {
                if *n > at_heal.get(client).copied().unwrap_or(0) {
                    self.progressed.entry(client.clone()).or_insert(obs.t_ms);
                }
            }
            if self.committed_after_heal.is_none()
                && obs.replicas.iter().any(|r| r.leader && r.applied > self.applied_at_heal)
            {
                self.committed_after_heal = Some(obs.t_ms);
            }
        }
        let _ = healed;
        Ok(())
    }

    fn at_end(&mut self, end: &End<'_>) -> Result<(), String> {
        if self.committed_after_heal.is_none() {
            return Err(format!(
                "no leader committed anything in the liveness window after the heal at {}ms",
                end.healed_at_ms
            ));
        }
        for client in end.history.progress.keys() {
            if !self.progressed.contains_key(client) {
                return Err(format!("{client} made no progress in the liveness window after the heal (starved)"));
            }
        }
        Ok(())
    }
}
