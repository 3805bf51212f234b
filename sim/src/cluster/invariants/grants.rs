//! No lost and no phantom grant.
//!
//! * Phantom: every grant a client was told about (acquire answer or its own read) is a
//!   grant some replica applied — same reservation, resource, owner and token.
//! * Lost: at the end, every acknowledged grant is either still held in the converged
//!   state or was ended by an applied record (released, expired, revoked, session ended).
//! * Unasked: every applied grant belongs to an owner some client or agent asked under.

use std::collections::{BTreeMap, BTreeSet};

use qm_coordinator::state::Effect;

use super::{End, Invariant};

#[derive(Debug)]
pub struct Grants;

impl Invariant for Grants {
    fn name(&self) -> &'static str {
        "no-lost-or-phantom-grant"
    }

    fn at_end(&mut self, end: &End<'_>) -> Result<(), String> {
        let mut granted: BTreeMap<u64, (String, String, u64)> = BTreeMap::new();
        let mut ended: BTreeSet<u64> = BTreeSet::new();
        let mut expired_sessions: BTreeSet<u64> = BTreeSet::new();
        for rec in end.applied.values() {
            for e in &rec.effects {
                match e {
                    Effect::Granted { grant, .. } => {
                        granted.insert(
                            grant.id.0,
                            (grant.resource.to_string(), grant.owner.to_string(), grant.fencing_token),
                        );
                        let owner = grant.owner.to_string();
                        if !end.history.owners.contains(&owner) && !owner.starts_with("task-") {
                            return Err(format!(
                                "r{} on {} granted to {owner}, an owner nobody asked under",
                                grant.id.0, grant.resource
                            ));
                        }
                    }
                    Effect::Released { reservation, .. }
                    | Effect::Expired { reservation, .. }
                    | Effect::Revoked { reservation, .. } => {
                        ended.insert(reservation.0);
                    }
                    Effect::SessionExpired { session } => {
                        expired_sessions.insert(session.0);
                    }
                    _ => {}
                }
            }
        }
        let held: BTreeSet<u64> =
            end.replicas.first().map(|r| r.grants.iter().map(|g| g.id.0).collect()).unwrap_or_default();
        for (id, g) in &end.history.grants {
            match granted.get(id) {
                None => {
                    return Err(format!(
                        "phantom grant: {} was told r{id} on {} with token {}, which no replica applied",
                        g.owner, g.resource, g.token
                    ))
                }
                Some((path, owner, token)) if *path != g.resource || *owner != g.owner || *token != g.token => {
                    return Err(format!(
                        "phantom grant: {} was told r{id} on {} token {}, the log says {owner} on {path} token {token}",
                        g.owner, g.resource, g.token
                    ))
                }
                Some(_) => {}
            }
            if !held.contains(id) && !ended.contains(id) && !expired_sessions.contains(&g.session) {
                return Err(format!(
                    "lost grant: r{id} on {} ({}) was acknowledged, is not held, and nothing released or expired it",
                    g.resource, g.owner
                ));
            }
        }
        Ok(())
    }
}
