//! openraft's state machine (`RaftStateMachine`, storage-v2): log entries into `State::apply`,
//! snapshots in and out of a [`Store`].
//!
//! The state lives in memory behind a lock shared with the API layer (reads take the read
//! lock; only `apply` and `install_snapshot` take the write lock, and never across an await).
//! Every applied command publishes an [`Applied`] record: the API layer waits on it for its
//! own proposals' effects and streams it to watchers. The last [`EVENTS_RETAINED_MAX`]
//! records are kept so a watcher can resume from a recent log index.

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use tokio::sync::broadcast;

use super::store::{decode, encode, Keys, Space, Store, Write};
use super::{Entry, LogId, Responses, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::state::{Effect, LogIndex, Millis, State};

/// Applied records kept for watchers resuming from a log index.
pub const EVENTS_RETAINED_MAX: usize = 16_384;
/// Broadcast buffer per live watcher; a watcher further behind is told it lagged.
pub const EVENTS_CHANNEL_LEN: usize = 8_192;

/// What one applied log entry did.
#[derive(Clone, Debug)]
pub struct Applied {
    pub index: LogIndex,
    pub now: Millis,
    pub effects: Vec<Effect>,
}

/// A live feed of applied records.
pub type Subscription = broadcast::Receiver<Arc<Applied>>;

/// The applied state and its bookkeeping.
#[derive(Debug)]
pub struct Data {
    pub state: State,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

impl Default for Data {
    fn default() -> Data {
        Data { state: State::new(Default::default()), last_applied: None, membership: Default::default() }
    }
}

/// State shared between the state machine (writer) and the API layer (readers).
#[derive(Debug)]
pub struct Shared {
    data: RwLock<Data>,
    retained: Mutex<VecDeque<Arc<Applied>>>,
    events: broadcast::Sender<Arc<Applied>>,
}

impl Shared {
    fn new(data: Data) -> Arc<Shared> {
        let (events, _) = broadcast::channel(EVENTS_CHANNEL_LEN);
        Arc::new(Shared { data: RwLock::new(data), retained: Mutex::new(VecDeque::new()), events })
    }

    /// Runs `f` over the applied state under the read lock.
    pub fn read<R>(&self, f: impl FnOnce(&Data) -> R) -> R {
        f(&self.data.read().expect("state lock poisoned"))
    }

    /// Live applied records from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Applied>> {
        self.events.subscribe()
    }

    /// A live subscription plus the retained records with `index >= from` (oldest first).
    /// `None` when `from` is older than anything retained.
    pub fn subscribe_from(&self, from: LogIndex) -> Option<(Vec<Arc<Applied>>, Subscription)> {
        let retained = self.retained.lock().expect("events lock poisoned");
        let rx = self.events.subscribe();
        let applied = self.read(|d| d.last_applied.map_or(0, |l| l.index));
        let oldest = retained.front().map_or(applied + 1, |a| a.index);
        if from < oldest && from <= applied {
            return None;
        }
        Some((retained.iter().filter(|a| a.index >= from).cloned().collect(), rx))
    }

    fn publish(&self, applied: Applied) {
        let applied = Arc::new(applied);
        let mut retained = self.retained.lock().expect("events lock poisoned");
        if retained.len() == EVENTS_RETAINED_MAX {
            retained.pop_front();
        }
        retained.push_back(applied.clone());
        // Sent under the lock so subscribe_from never misses or repeats a record.
        let _ = self.events.send(applied);
    }
}

/// The coordinator's Raft state machine over a [`Store`] for snapshots.
#[derive(Debug)]
pub struct StateMachine<S: Store> {
    store: S,
    shared: Arc<Shared>,
    snapshots_built: u64,
}

impl<S: Store> StateMachine<S> {
    /// Opens the state machine, restoring the stored snapshot if there is one. Log entries
    /// after it are re-applied by openraft.
    pub fn open(store: S) -> Result<StateMachine<S>, StorageError> {
        let mut data = Data::default();
        if let Some((meta, bytes)) = load_snapshot(&store)? {
            data.state = restore(&meta, &bytes)?;
            data.last_applied = meta.last_log_id;
            data.membership = meta.last_membership.clone();
        }
        Ok(StateMachine { store, shared: Shared::new(data), snapshots_built: 0 })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

fn load_snapshot<S: Store>(store: &S) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
    let Some(meta_bytes) = store.get(Space::Snapshot, Keys::SNAPSHOT_META)? else {
        return Ok(None);
    };
    let meta: SnapshotMeta = decode(Space::Snapshot, Keys::SNAPSHOT_META, &meta_bytes)?;
    let data = store.get(Space::Snapshot, Keys::SNAPSHOT_DATA)?.unwrap_or_default();
    Ok(Some((meta, data)))
}

fn restore(meta: &SnapshotMeta, bytes: &[u8]) -> Result<State, StorageError> {
    State::restore(bytes).map_err(|e| {
        openraft::StorageIOError::read_snapshot(Some(meta.signature()), openraft::AnyError::new(&e)).into()
    })
}

impl<S: Store> RaftSnapshotBuilder<TypeConfig> for StateMachine<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (bytes, last_applied, membership) =
            self.shared.read(|d| (d.state.snapshot(), d.last_applied, d.membership.clone()));
        self.snapshots_built += 1;
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.snapshots_built),
            None => format!("0-0-{}", self.snapshots_built),
        };
        let meta = SnapshotMeta { last_log_id: last_applied, last_membership: membership, snapshot_id };
        save_snapshot(&self.store, &meta, &bytes).await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

async fn save_snapshot<S: Store>(store: &S, meta: &SnapshotMeta, bytes: &[u8]) -> Result<(), StorageError> {
    store.batch(
        Space::Snapshot,
        vec![
            Write::Put(Keys::SNAPSHOT_DATA.to_vec(), bytes.to_vec()),
            Write::Put(Keys::SNAPSHOT_META.to_vec(), encode(meta)),
        ],
    )?;
    store.flush().await?;
    Ok(())
}

impl<S: Store> RaftStateMachine<TypeConfig> for StateMachine<S> {
    type SnapshotBuilder = StateMachine<S>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self.shared.read(|d| (d.last_applied, d.membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Responses>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut published = Vec::new();
        {
            let mut data = self.shared.data.write().expect("state lock poisoned");
            for entry in entries {
                data.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Vec::new(),
                    EntryPayload::Membership(m) => {
                        data.membership = StoredMembership::new(Some(entry.log_id), m);
                        Vec::new()
                    }
                    EntryPayload::Normal(req) => {
                        let mut effects = Vec::new();
                        let answers = data
                            .state
                            .apply_batch(entry.log_id.index, req.now, req.commands)
                            .into_iter()
                            .map(|(response, mut e)| {
                                effects.append(&mut e);
                                response
                            })
                            .collect();
                        let now = data.state.last_now();
                        published.push(Applied { index: entry.log_id.index, now, effects });
                        answers
                    }
                };
                responses.push(response);
            }
        }
        for applied in published {
            // A budget crossing a threshold is the operator's notification (and `qm budget show`).
            for e in applied.effects.iter().filter(|e| matches!(e, crate::state::Effect::BudgetLevel { .. })) {
                tracing::warn!(index = applied.index, "{e}");
            }
            self.shared.publish(applied);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        StateMachine { store: self.store.clone(), shared: self.shared.clone(), snapshots_built: self.snapshots_built }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let state = restore(meta, &bytes)?;
        save_snapshot(&self.store, meta, &bytes).await?;
        let index = meta.last_log_id.map_or(0, |l| l.index);
        tracing::info!(index, bytes = bytes.len(), "installed a snapshot from the leader");
        let mut data = self.shared.data.write().expect("state lock poisoned");
        data.state = state;
        data.last_applied = meta.last_log_id;
        data.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(load_snapshot(&self.store)?.map(|(meta, bytes)| Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) }))
    }
}
