//! [`Store`] on sled: one tree per key space, `Db::flush` (fsync) for durability.

use std::path::Path;

use super::store::{check_format, Pair, Space, Store, StoreError, Write};

/// The on-disk store of a coordinator: a sled database in its data directory.
#[derive(Clone, Debug)]
pub struct SledStore {
    db: sled::Db,
    trees: [sled::Tree; 3],
}

fn io(space: Space, e: sled::Error) -> StoreError {
    let source = match e {
        sled::Error::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    };
    StoreError::Io { space: space.name(), source }
}

/// sled's page cache (its default is 1 GiB): the recent log entries Raft reads back fit in
/// it; a snapshot is written and read once. Counted in the sizing of docs/operations.md.
const SLED_CACHE_BYTES: u64 = 128 * 1024 * 1024;

impl SledStore {
    /// Opens (or creates) the store in `dir` and checks its format version.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
            .map_err(|e| io(Space::Meta, e))?;
        let open = |space: Space| db.open_tree(space.name()).map_err(|e| io(space, e));
        let trees = [open(Space::Meta)?, open(Space::Log)?, open(Space::Snapshot)?];
        let store = SledStore { db, trees };
        check_format(&store)?;
        Ok(store)
    }

    fn tree(&self, space: Space) -> &sled::Tree {
        &self.trees[space as usize]
    }
}

impl Store for SledStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(space).get(key).map_err(|e| io(space, e))?.map(|v| v.to_vec()))
    }

    fn batch(&self, space: Space, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for w in writes {
            match w {
                Write::Put(k, v) => batch.insert(k, v),
                Write::Delete(k) => batch.remove(k),
            }
        }
        self.tree(space).apply_batch(batch).map_err(|e| io(space, e))
    }

    fn range(&self, space: Space, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, StoreError> {
        let tree = self.tree(space);
        let iter = match to {
            Some(to) => tree.range(from..to),
            None => tree.range(from..),
        };
        iter.take(limit).map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(|e| io(space, e))).collect()
    }

    fn last(&self, space: Space) -> Result<Option<Pair>, StoreError> {
        Ok(self.tree(space).last().map_err(|e| io(space, e))?.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn remove_range(&self, space: Space, from: &[u8], to: Option<&[u8]>) -> Result<(), StoreError> {
        let keys = self.range(space, from, to, usize::MAX)?;
        let mut batch = sled::Batch::default();
        for (k, _) in keys {
            batch.remove(k);
        }
        self.tree(space).apply_batch(batch).map_err(|e| io(space, e))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // `Db::flush` (the fsync behind `flush_async`) on tokio's blocking pool: sled's own
        // pool, which `flush_async` uses, wakes every one of its threads for each job, and
        // that wake-up storm cost a loaded leader most of a core. The log's flusher runs one
        // flush at a time, so this holds one blocking thread at most.
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(flushed) => flushed.map(|_| ()).map_err(|e| io(Space::Log, e)),
            Err(e) => Err(io(Space::Log, sled::Error::ReportableBug(format!("flush task failed: {e}")))),
        }
    }

    fn size_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
