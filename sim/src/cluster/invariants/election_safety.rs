//! Election safety: at most one leader per term, ever (Raft's first safety property; a vote
//! that did not survive a crash breaks it first).

use std::collections::BTreeMap;

use super::{Invariant, Obs};

#[derive(Debug, Default)]
pub struct ElectionSafety {
    leaders: BTreeMap<u64, u64>,
}

impl Invariant for ElectionSafety {
    fn name(&self) -> &'static str {
        "election-safety"
    }

    fn on_step(&mut self, obs: &Obs<'_>) -> Result<(), String> {
        for r in obs.replicas.iter().filter(|r| r.leader) {
            let first = *self.leaders.entry(r.term).or_insert(r.id);
            if first != r.id {
                return Err(format!("two leaders in term {}: n{first} and n{}", r.term, r.id));
            }
        }
        Ok(())
    }
}
