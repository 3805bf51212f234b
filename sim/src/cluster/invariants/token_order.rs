//! Fencing tokens strictly increase per resource, in log order: a later grant on a resource
//! never carries a token lower than or equal to an earlier one.

use std::collections::BTreeMap;

use qm_coordinator::state::Effect;

use super::{Invariant, Obs};

#[derive(Debug, Default)]
pub struct TokenOrder {
    /// resource → (index, position in the record) → token.
    seen: BTreeMap<String, BTreeMap<(u64, usize), u64>>,
}

impl Invariant for TokenOrder {
    fn name(&self) -> &'static str {
        "tokens-increase"
    }

    fn on_step(&mut self, obs: &Obs<'_>) -> Result<(), String> {
        for (_, rec) in obs.records {
            for (pos, e) in rec.effects.iter().enumerate() {
                let Effect::Granted { grant, .. } = e else { continue };
                let path = grant.resource.to_string();
                let per = self.seen.entry(path.clone()).or_default();
                let key = (rec.index, pos);
                if per.contains_key(&key) {
                    continue;
                }
                let token = grant.fencing_token;
                if let Some((k, before)) = per.range(..key).next_back() {
                    if *before >= token {
                        return Err(format!(
                            "{path}: token {token} at index {} is not above token {before} at index {}",
                            rec.index, k.0
                        ));
                    }
                }
                if let Some((k, after)) = per.range(key..).next() {
                    if *after <= token {
                        return Err(format!(
                            "{path}: token {after} at index {} is not above token {token} at index {}",
                            k.0, rec.index
                        ));
                    }
                }
                per.insert(key, token);
            }
        }
        Ok(())
    }
}
