//! Snapshot and restore of the whole state, in a versioned format.
//!
//! ```text
//!   "QMSTATE\0" (8 bytes) · format version (u32 LE) · bincode(State)
//! ```
//!
//! Every map in the state is a `BTreeMap`/`BTreeSet`, so the encoding is canonical: the same
//! command sequence gives byte-identical snapshots on every replica. Derived indexes (the
//! dense wait-for mirror) are not written; restore rebuilds them and checks the invariants.
//!
//! Restore takes bytes from a peer or from disk, so it treats them as input: in every build
//! it runs the non-panicking checker ([`State::try_check_invariants`]) and refuses a state
//! that decodes but breaks an invariant ([`SnapshotError::Invariant`]) instead of panicking.

use super::State;

const MAGIC: &[u8; 8] = b"QMSTATE\0";
/// Bump on any change to the encoded layout; restore refuses versions it does not know.
/// 8: a role is encoded by its name (roles are open: a spec may declare one).
pub const SNAPSHOT_FORMAT_VERSION: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a Quartermaster state snapshot (bad magic)")]
    BadMagic,
    #[error("snapshot format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("snapshot body is corrupt: {0}")]
    Corrupt(#[from] bincode::Error),
    #[error("snapshot decodes but breaks an invariant: {0}")]
    Invariant(String),
}

impl State {
    /// The whole state as bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 * 1024);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        bincode::serialize_into(&mut out, self).expect("serializing to memory cannot fail");
        out
    }

    /// Reads a snapshot written by [`State::snapshot`].
    pub fn restore(bytes: &[u8]) -> Result<State, SnapshotError> {
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(SnapshotError::UnsupportedVersion { found: version, supported: SNAPSHOT_FORMAT_VERSION });
        }
        let mut state: State = bincode::deserialize(&bytes[12..])?;
        state.wait_for.rebuild();
        state.tasks.rebuild_routed();
        state.rebuild_principal_sessions();
        // Only owners whose links hold: a broken link is for the checker to report.
        let waiting: Vec<_> = state
            .requests
            .iter()
            .filter(|(id, r)| state.owners.get(&r.owner).is_some_and(|o| o.pending == Some(**id)))
            .map(|(_, r)| r.owner)
            .collect();
        for owner in waiting {
            state.refresh_victim_meta(owner);
        }
        state.try_check_invariants().map_err(SnapshotError::Invariant)?;
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use qm_shared::{LockMode, Mode, ResourcePath};

    use super::*;
    use crate::state::{Acquire, Command, Config, Item, Response, Wait};

    /// Owners `a` and `b` hold `db:x/table:t` shared; `c` waits for it exclusively.
    fn readers_and_a_writer() -> State {
        let mut state = State::new(Config::default());
        let open = Command::OpenSession { label: "s".into(), ttl_ms: 60_000, principal: String::new() };
        let Response::SessionOpened { session, .. } = state.apply(1, 1_000, open).0 else { panic!("no session") };
        for (index, (owner, mode)) in (2..).zip([("a", Mode::Shared), ("b", Mode::Shared), ("c", Mode::Exclusive)]) {
            let path = ResourcePath::parse("db:x/table:t").unwrap();
            let items = vec![Item { path, mode, units: 1 }];
            let wait = Wait::Wait { timeout_ms: None };
            let acquire = Acquire { session, owner: owner.into(), items, wait, priority: 500, lease_ms: 60_000 };
            let (r, _) = state.apply(index, 1_000, Command::Acquire(acquire));
            assert!(matches!(r, Response::Granted { .. } | Response::Queued { .. }), "{r:?}");
        }
        state
    }

    #[test]
    fn a_sound_state_restores_to_itself() {
        let state = readers_and_a_writer();
        let restored = State::restore(&state.snapshot()).unwrap();
        assert_eq!(restored.snapshot(), state.snapshot());
    }

    #[test]
    fn restore_refuses_a_holder_beside_a_conflicting_holder() {
        let mut state = readers_and_a_writer();
        // b's lease becomes exclusive everywhere it is counted (its record, its node, the
        // node's ancestors), so that only the conflict with a's shared lease is wrong.
        let b = state.owners.values().find(|o| &*o.name == "b").unwrap().id;
        let grant = state.grants.values_mut().find(|g| g.owner == b).unwrap();
        grant.mode = Mode::Exclusive;
        let node = grant.node;
        for id in state.table.chain(node).collect::<Vec<_>>() {
            let (from, to) = if id == node { (LockMode::S, LockMode::X) } else { (LockMode::IS, LockMode::IX) };
            let n = state.table.node_mut(id);
            let counts = n.held.get_mut(&b).unwrap();
            counts[from.index()] -= 1;
            counts[to.index()] += 1;
            n.held_total[from.index()] -= 1;
            n.held_total[to.index()] += 1;
        }
        let err = State::restore(&state.snapshot()).unwrap_err();
        assert!(matches!(&err, SnapshotError::Invariant(m) if m.contains("beside another owner's")), "{err}");
    }

    #[test]
    fn restore_refuses_a_derived_count_that_disagrees() {
        let mut state = readers_and_a_writer();
        state.policy_counts[0] += 1;
        let err = State::restore(&state.snapshot()).unwrap_err();
        assert!(matches!(&err, SnapshotError::Invariant(m) if m.contains("policy counts")), "{err}");
    }

    /// Every single-byte change and every truncation of a snapshot restores to a sound state
    /// or is refused: none panics.
    #[test]
    fn restore_never_panics_on_a_damaged_snapshot() {
        let bytes = readers_and_a_writer().snapshot();
        for at in 12..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                damaged[at] ^= flip;
                if let Ok(state) = State::restore(&damaged) {
                    state.check_invariants();
                }
            }
            assert!(State::restore(&bytes[..at]).is_err());
        }
    }
}
