//! openraft's log storage (`RaftLogStorage`, storage-v2) over a [`Store`].
//!
//! Durability rule: `append` calls openraft's `LogFlushed` callback, and `save_vote`
//! returns, only after `Store::flush` has returned, so an acknowledged entry or vote survives
//! a crash (sled: `flush_async`, i.e. fsync).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use super::store::{decode, encode, Keys, Space, Store, Write};
use super::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Most entries one read returns; openraft pages through longer ranges.
const READ_ENTRIES_MAX: usize = 4_096;

/// The Raft log and vote of one coordinator.
#[derive(Clone, Debug)]
pub struct LogStore<S: Store> {
    store: S,
}

impl<S: Store> LogStore<S> {
    pub fn new(store: S) -> LogStore<S> {
        LogStore { store }
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
        let flushed = self.store.flush().await;
        let result = flushed.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(result);
        flushed?;
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
