//! Mutual exclusion, as the fenced resources and the replicas see it.
//!
//! * Every replica, every step: no two owners hold exclusive grants on one resource (one
//!   owner may hold several: acquiring again what it holds is re-entrant).
//! * Every accepted fenced write: its token was written by one owner only, and it is the
//!   token of a grant the cluster committed to that owner on that resource (checked as soon
//!   as a replica has applied that grant, at the latest at the end).
//! * Accepted tokens never go down on a resource (the fence's own rule, asserted).

use std::collections::BTreeMap;

use qm_coordinator::state::Effect;
use qm_shared::Mode;

use super::{End, Invariant, Obs};

#[derive(Debug, Default)]
pub struct MutualExclusion {
    /// (resource, token) → owner, from accepted writes.
    writers: BTreeMap<(String, u64), String>,
    /// token → (resource, owner), from committed grants.
    granted: BTreeMap<u64, (String, String)>,
    /// Accepted writes whose grant no replica has applied yet.
    unconfirmed: BTreeMap<(String, u64), String>,
    last_accepted: BTreeMap<String, u64>,
}

impl MutualExclusion {
    fn confirm(&mut self) -> Result<(), String> {
        let mut done = Vec::new();
        for ((path, token), owner) in &self.unconfirmed {
            if let Some((gpath, gowner)) = self.granted.get(token) {
                if gpath != path || gowner != owner {
                    return Err(format!(
                        "fenced write to {path} by {owner} with token {token}, but token {token} was granted to {gowner} on {gpath}"
                    ));
                }
                done.push((path.clone(), *token));
            }
        }
        for k in done {
            self.unconfirmed.remove(&k);
        }
        Ok(())
    }
}

impl Invariant for MutualExclusion {
    fn name(&self) -> &'static str {
        "mutual-exclusion"
    }

    fn on_step(&mut self, obs: &Obs<'_>) -> Result<(), String> {
        for r in obs.replicas {
            let mut held: BTreeMap<String, (u64, &str)> = BTreeMap::new();
            for g in r.grants.iter().filter(|g| g.mode == Mode::Exclusive) {
                if let Some((other, owner)) = held.insert(g.resource.to_string(), (g.id.0, &g.owner)) {
                    if *owner == *g.owner {
                        continue;
                    }
                    return Err(format!(
                        "n{} holds two exclusive grants on {}: r{other} ({owner}) and r{} ({})",
                        r.id, g.resource, g.id.0, g.owner
                    ));
                }
            }
        }
        for (_, rec) in obs.records {
            for e in &rec.effects {
                if let Effect::Granted { grant, .. } = e {
                    self.granted.insert(grant.fencing_token, (grant.resource.to_string(), grant.owner.to_string()));
                }
            }
        }
        for (path, w) in obs.writes.iter().filter(|(_, w)| w.accepted) {
            let last = self.last_accepted.entry(path.clone()).or_default();
            if w.token < *last {
                return Err(format!("{path} accepted token {} after token {last}", w.token));
            }
            *last = w.token;
            let key = (path.clone(), w.token);
            if let Some(other) = self.writers.get(&key) {
                if *other != w.owner {
                    return Err(format!(
                        "{path}: token {} used by two owners, {other} and {} (two holders at once)",
                        w.token, w.owner
                    ));
                }
            }
            self.writers.insert(key.clone(), w.owner.clone());
            self.unconfirmed.insert(key, w.owner.clone());
        }
        self.confirm()
    }

    fn at_end(&mut self, _end: &End<'_>) -> Result<(), String> {
        self.confirm()?;
        match self.unconfirmed.iter().next() {
            Some(((path, token), owner)) => {
                Err(format!("fenced write to {path} by {owner} with token {token}, a token no replica ever granted"))
            }
            None => Ok(()),
        }
    }
}
