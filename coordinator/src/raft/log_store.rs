//! openraft's log storage (`RaftLogStorage`, storage-v2) over a [`Store`].
//!
//! Durability rule: `append` calls openraft's `LogFlushed` callback, and `save_vote`
//! returns, only after `Store::flush` has returned, so an acknowledged entry or vote survives
//! a crash (sled: `flush_async`, i.e. fsync).
//!
//! Group commit: `append` writes its entries and hands the callback to one flusher task, then
//! returns, so Raft keeps accepting and replicating while the disk syncs. The flusher takes
//! every callback queued so far, flushes once — covering every write made before that flush
//! began — and completes them in append order. Under load one fsync acknowledges many appends.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use super::store::{decode, encode, Keys, Space, Store, Write};
use super::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Most entries one read returns; openraft pages through longer ranges.
const READ_ENTRIES_MAX: usize = 4_096;

/// Appends waiting for the flusher at most; a full queue makes `append` wait (backpressure).
const FLUSH_QUEUE_MAX: usize = 4_096;

/// The Raft log and vote of one coordinator.
#[derive(Clone)]
pub struct LogStore<S: Store> {
    store: S,
    flusher: tokio::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl<S: Store> Debug for LogStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl<S: Store> LogStore<S> {
    /// Opens the log over `store` and starts its flusher task (which ends when the last
    /// handle is dropped). Must be called inside a tokio runtime.
    pub fn new(store: S) -> LogStore<S> {
        let (flusher, queue) = tokio::sync::mpsc::channel(FLUSH_QUEUE_MAX);
        tokio::spawn(flush_appends(store.clone(), queue));
        LogStore { store, flusher }
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.store.get(Space::Meta, key)? {
            Some(bytes) => Ok(Some(decode(Space::Meta, key, &bytes)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        Ok(self.store.batch(Space::Meta, vec![Write::Put(key.to_vec(), encode(value))])?)
    }
}

impl<S: Store> RaftLogReader<TypeConfig> for LogStore<S> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.checked_add(1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if to.is_some_and(|to| to <= from) {
            return Ok(Vec::new());
        }
        let to_key = to.map(Keys::index);
        let rows =
            self.store.range(Space::Log, &Keys::index(from), to_key.as_ref().map(|k| &k[..]), READ_ENTRIES_MAX)?;
        rows.into_iter().map(|(k, v)| Ok(decode::<Entry>(Space::Log, &k, &v)?)).collect()
    }
}

impl<S: Store> RaftLogStorage<TypeConfig> for LogStore<S> {
    type LogReader = LogStore<S>;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.meta(Keys::LAST_PURGED)?;
        let last = match self.store.last(Space::Log)? {
            Some((k, v)) => Some(decode::<Entry>(Space::Log, &k, &v)?.log_id),
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(Keys::VOTE, vote)?;
        self.store.flush().await?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.meta(Keys::VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed on purpose: a committed index that is lost is re-learned from the leader.
        self.put_meta(Keys::COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.meta::<Option<LogId>>(Keys::COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let writes: Vec<Write> =
            entries.into_iter().map(|e| Write::Put(Keys::index(e.log_id.index).to_vec(), encode(&e))).collect();
        self.store.batch(Space::Log, writes)?;
        if let Err(e) = self.flusher.send(callback).await {
            // The flusher is gone (shutting down): flush here rather than drop the callback.
            let flushed = self.store.flush().await;
            e.0.log_io_completed(flushed.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string())));
            flushed?;
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.store.remove_range(Space::Log, &Keys::index(log_id.index), None)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves extra entries, never a hole.
        self.put_meta(Keys::LAST_PURGED, &log_id)?;
        let to = log_id.index.checked_add(1).map(Keys::index);
        self.store.remove_range(Space::Log, &Keys::index(0), to.as_ref().map(|k| &k[..]))?;
        Ok(())
    }
}

/// The group-commit loop: one flush for every append queued before it began, callbacks
/// completed in append order. A failed flush fails every callback it covered (Raft then
/// stops this node: an entry that may not be durable is never acknowledged).
async fn flush_appends<S: Store>(store: S, mut queue: tokio::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    let mut waiting = Vec::new();
    while queue.recv_many(&mut waiting, FLUSH_QUEUE_MAX).await > 0 {
        let flushed = store.flush().await;
        for callback in waiting.drain(..) {
            callback.log_io_completed(flushed.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string())));
        }
    }
}
