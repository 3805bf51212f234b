//! Snapshot and restore of the whole state, in a versioned format.
//!
//! ```text
//!   "QMSTATE\0" (8 bytes) · format version (u32 LE) · bincode(State)
//! ```
//!
//! Every map in the state is a `BTreeMap`/`BTreeSet`, so the encoding is canonical: the same
//! command sequence gives byte-identical snapshots on every replica. Derived indexes (the
//! dense wait-for mirror) are not written; restore rebuilds them and checks the invariants.

use super::State;

const MAGIC: &[u8; 8] = b"QMSTATE\0";
/// Bump on any change to the encoded layout; restore refuses versions it does not know.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a Quartermaster state snapshot (bad magic)")]
    BadMagic,
    #[error("snapshot format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("snapshot body is corrupt: {0}")]
    Corrupt(#[from] bincode::Error),
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
        let waiting: Vec<_> = state.requests.values().map(|r| r.owner).collect();
        for owner in waiting {
            state.refresh_victim_meta(owner);
        }
        state.check_invariants();
        Ok(state)
    }
}
