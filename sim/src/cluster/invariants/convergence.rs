//! Replicas agree and converge.
//!
//! * Every step: two replicas that applied the same log index produced the same record (the
//!   same leader-stamped time and the same effects): the state machine is deterministic and
//!   fed the same log.
//! * At the end (workload stopped, faults healed, every replica caught up): every replica's
//!   state-machine snapshot bytes are equal at the same applied index.

use std::collections::BTreeMap;
use std::sync::Arc;

use qm_coordinator::raft::state_machine::Applied;

use super::{End, Invariant, Obs};

#[derive(Debug, Default)]
pub struct Convergence {
    first: BTreeMap<u64, (u64, Arc<Applied>)>,
}

impl Invariant for Convergence {
    fn name(&self) -> &'static str {
        "replicas-converge"
    }

    fn on_step(&mut self, obs: &Obs<'_>) -> Result<(), String> {
        for (node, rec) in obs.records {
            match self.first.get(&rec.index) {
                Some((other, first)) => {
                    if first.now != rec.now || first.effects != rec.effects {
                        return Err(format!(
                            "index {} applied differently: n{other} now={} {} effects, n{node} now={} {} effects",
                            rec.index,
                            first.now,
                            first.effects.len(),
                            rec.now,
                            rec.effects.len()
                        ));
                    }
                }
                None => {
                    self.first.insert(rec.index, (*node, rec.clone()));
                }
            }
        }
        Ok(())
    }

    fn at_end(&mut self, end: &End<'_>) -> Result<(), String> {
        let Some(first) = end.replicas.first() else { return Err("no replica is running at the end".into()) };
        for r in &end.replicas[1..] {
            if r.applied != first.applied {
                return Err(format!(
                    "replicas did not converge: n{} applied {}, n{} applied {}",
                    first.id, first.applied, r.id, r.applied
                ));
            }
            if r.snapshot != first.snapshot {
                return Err(format!(
                    "replicas n{} and n{} differ at index {} ({} vs {} snapshot bytes)",
                    first.id,
                    r.id,
                    r.applied,
                    first.snapshot.len(),
                    r.snapshot.len()
                ));
            }
        }
        Ok(())
    }
}
