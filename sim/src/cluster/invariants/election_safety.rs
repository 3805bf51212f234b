//! Election safety, in openraft's form.
//!
//! openraft (by default, without `single-term-leader`) lets several nodes lead in one term:
//! a leader is a `LeaderId` = (term, node), log ids carry it, and votes are totally ordered
//! by it. Two leaders of one term are therefore legal; what keeps the log safe is that a
//! node's vote never goes backwards — in particular not across a crash, which is why
//! `save_vote` must be durable before it returns. So:
//!
//! * every replica's persisted vote (as openraft reports it after `save_vote` returned) only
//!   grows, across restarts included;
//! * at most one node leads as any one `LeaderId`.

use std::collections::BTreeMap;

use super::{Invariant, Obs};

#[derive(Debug, Default)]
pub struct ElectionSafety {
    /// node → highest vote seen.
    votes: BTreeMap<u64, (openraft::Vote<u64>, String)>,
}

impl Invariant for ElectionSafety {
    fn name(&self) -> &'static str {
        "election-safety"
    }

    fn on_step(&mut self, obs: &Obs<'_>) -> Result<(), String> {
        let mut leaders: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        for r in obs.replicas {
            if let Some((before, text)) = self.votes.get(&r.id) {
                if r.vote.partial_cmp(before).is_none_or(|o| o == std::cmp::Ordering::Less) {
                    return Err(format!(
                        "n{}'s vote went backwards: it had persisted {before} ({text}), now {}",
                        r.id, r.vote_text
                    ));
                }
            }
            self.votes.insert(r.id, (r.vote, r.vote_text.clone()));
            if r.leader {
                let key = (r.vote.leader_id.term, r.vote.leader_id.voted_for().unwrap_or(0));
                if let Some(other) = leaders.insert(key, r.id) {
                    return Err(format!("n{other} and n{} both lead as {}", r.id, r.vote));
                }
            }
        }
        Ok(())
    }
}
