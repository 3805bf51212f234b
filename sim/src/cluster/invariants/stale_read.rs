//! Reads are linearizable: a List answered with read index `i` must have `i` at least the
//! highest index any replica had applied when the read was sent (a read index is the
//! leader's commit index, which no applied index exceeds). A node answering from its own
//! state without asking the leader fails this as soon as it lags.

use super::{Invariant, Obs};

#[derive(Debug)]
pub struct StaleRead;

impl Invariant for StaleRead {
    fn name(&self) -> &'static str {
        "linearizable-reads"
    }

    fn on_step(&mut self, obs: &Obs<'_>) -> Result<(), String> {
        for r in obs.reads {
            if r.index < r.floor {
                return Err(format!(
                    "{} read at n{} returned index {} but index {} was already applied when it was sent",
                    r.client, r.node, r.index, r.floor
                ));
            }
        }
        Ok(())
    }
}
