//! A simulated fenced resource: the thing a lease protects (a table, a file, a deploy slot).
//!
//! It remembers the highest fencing token it has seen and rejects any write carrying an
//! older one, exactly as a resource adapter must; every write, accepted or rejected, is
//! recorded with its token, writer and simulated time for the checkers.

use std::collections::BTreeMap;

/// Writes kept per resource (older ones are summarized in the counters).
pub const WRITES_KEPT_MAX: usize = 4_096;

/// One attempted write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FencedWrite {
    pub t_ms: u64,
    pub token: u64,
    pub owner: String,
    pub accepted: bool,
}

#[derive(Debug, Default)]
pub struct FencedResource {
    pub max_token: u64,
    pub writes: Vec<FencedWrite>,
    pub accepted: u64,
    pub rejected: u64,
    /// Which owner wrote with each accepted token (the mutual-exclusion checker reads it).
    pub token_owner: BTreeMap<u64, String>,
}

impl FencedResource {
    /// Applies a write with `token`; returns whether it was accepted.
    pub fn write(&mut self, t_ms: u64, token: u64, owner: &str) -> bool {
        let accepted = token >= self.max_token;
        if accepted {
            self.max_token = token;
            self.accepted += 1;
        } else {
            self.rejected += 1;
        }
        if self.writes.len() == WRITES_KEPT_MAX {
            self.writes.remove(0);
        }
        self.writes.push(FencedWrite { t_ms, token, owner: owner.to_string(), accepted });
        accepted
    }
}
