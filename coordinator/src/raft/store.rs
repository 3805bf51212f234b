//! Our storage seam: a small ordered key-value interface with typed key spaces.
//!
//! Raft needs a durable log, a durable vote and durable snapshots; it does not need a
//! general database. [`Store`] is exactly that much: a few key spaces of ordered byte keys,
//! batched writes and an explicit `flush` that returns only when everything written before
//! it is on stable storage. Two implementations pass the same openraft conformance suite:
//! [`SledStore`](super::sled_store::SledStore) on disk and [`MemStore`](super::mem_store::MemStore)
//! in memory (for the simulator and fast tests).
//!
//! The typed layer on top ([`Keys`]) fixes the key encodings (big-endian log indexes, so byte
//! order is index order) and the on-disk format version, checked on open.

use std::future::Future;

/// Key spaces. Each is an independent ordered map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// Vote, committed log id, last purged log id, format version.
    Meta,
    /// Log entries keyed by big-endian index.
    Log,
    /// The current state-machine snapshot (meta and data).
    Snapshot,
}

impl Space {
    pub const ALL: [Space; 3] = [Space::Meta, Space::Log, Space::Snapshot];

    pub fn name(self) -> &'static str {
        match self {
            Space::Meta => "meta",
            Space::Log => "log",
            Space::Snapshot => "snapshot",
        }
    }
}

/// On-disk layout version; a store written by another layout is refused on open.
/// 2: a log entry carries a batch of commands.
/// 3: a member (in membership entries and snapshot metas) carries its peer address.
pub const STORE_FORMAT_VERSION: u32 = 3;

/// Storage failures. Every one of them stops the Raft node (openraft treats storage errors
/// as fatal), so they carry enough to be read in a log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O on {space}: {source}")]
    Io { space: &'static str, source: std::io::Error },
    #[error("corrupt value in {space} at key {key:02x?}: {detail}")]
    Corrupt { space: &'static str, key: Vec<u8>, detail: String },
    #[error("{}", format_message(*found, *supported))]
    Format { found: u32, supported: u32 },
}

/// Why a store of another format is refused, and what to do about it.
fn format_message(found: u32, supported: u32) -> String {
    if found < supported {
        format!(
            "store format version {found} was written by an older qm (this build reads and writes only {supported}); \
             start this node on a new, empty data directory and add it back with `qm cluster add`, \
             or run the qm that wrote it"
        )
    } else {
        format!(
            "store format version {found} was written by a newer qm (this build reads and writes only {supported}); \
             upgrade qm or use a new data directory"
        )
    }
}

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// A write in a batch.
#[derive(Clone, Debug)]
pub enum Write {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// The storage seam. Implementations must keep each space ordered by key bytes, apply a
/// batch atomically, and make `flush` durable.
pub trait Store: Clone + Send + Sync + 'static {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Applies every write of the batch, atomically.
    fn batch(&self, space: Space, writes: Vec<Write>) -> Result<(), StoreError>;
    /// Entries with `from <= key < to` (`to = None`: to the end), in key order, at most `limit`.
    fn range(&self, space: Space, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, StoreError>;
    /// The entry with the greatest key.
    fn last(&self, space: Space) -> Result<Option<Pair>, StoreError>;
    /// Deletes every key with `from <= key < to` (`to = None`: to the end).
    fn remove_range(&self, space: Space, from: &[u8], to: Option<&[u8]>) -> Result<(), StoreError>;
    /// Returns once every write made before the call is durable.
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Bytes used on disk (or in memory), for metrics.
    fn size_bytes(&self) -> u64;
}

/// Key encodings shared by the typed layers.
#[derive(Debug)]
pub struct Keys;

impl Keys {
    pub const VOTE: &'static [u8] = b"vote";
    pub const COMMITTED: &'static [u8] = b"committed";
    pub const LAST_PURGED: &'static [u8] = b"last_purged";
    pub const FORMAT: &'static [u8] = b"format";
    pub const SNAPSHOT_META: &'static [u8] = b"meta";
    pub const SNAPSHOT_DATA: &'static [u8] = b"data";

    pub fn index(index: u64) -> [u8; 8] {
        index.to_be_bytes()
    }

    pub fn parse_index(space: Space, key: &[u8]) -> Result<u64, StoreError> {
        let bytes: [u8; 8] = key.try_into().map_err(|_| StoreError::Corrupt {
            space: space.name(),
            key: key.to_vec(),
            detail: "a log key is 8 bytes".into(),
        })?;
        Ok(u64::from_be_bytes(bytes))
    }
}

/// Checks (or, on an empty store, writes) the format version.
pub fn check_format<S: Store>(store: &S) -> Result<(), StoreError> {
    match store.get(Space::Meta, Keys::FORMAT)? {
        Some(bytes) => {
            let found = u32::from_be_bytes(bytes.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                space: Space::Meta.name(),
                key: Keys::FORMAT.to_vec(),
                detail: "format version is 4 bytes".into(),
            })?);
            if found != STORE_FORMAT_VERSION {
                return Err(StoreError::Format { found, supported: STORE_FORMAT_VERSION });
            }
            Ok(())
        }
        None => store
            .batch(Space::Meta, vec![Write::Put(Keys::FORMAT.to_vec(), STORE_FORMAT_VERSION.to_be_bytes().to_vec())]),
    }
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("serializing to memory cannot fail")
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(space: Space, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    bincode::deserialize(bytes).map_err(|e| StoreError::Corrupt {
        space: space.name(),
        key: key.to_vec(),
        detail: e.to_string(),
    })
}

impl From<StoreError> for openraft::StorageError<super::NodeId> {
    fn from(e: StoreError) -> Self {
        let subject = match &e {
            StoreError::Io { space: "log", .. } | StoreError::Corrupt { space: "log", .. } => {
                openraft::ErrorSubject::Logs
            }
            StoreError::Io { space: "snapshot", .. } | StoreError::Corrupt { space: "snapshot", .. } => {
                openraft::ErrorSubject::Snapshot(None)
            }
            _ => openraft::ErrorSubject::Store,
        };
        openraft::StorageIOError::new(subject, openraft::ErrorVerb::Write, openraft::AnyError::new(&e)).into()
    }
}
