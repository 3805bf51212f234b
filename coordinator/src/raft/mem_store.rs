//! [`Store`] in memory, for the simulator and fast tests. Same contract as sled, minus the disk.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::store::{check_format, Pair, Space, Store, StoreError, Write};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// An in-memory store. Clones share the same data (like clones of a sled handle).
#[derive(Clone, Debug)]
pub struct MemStore {
    spaces: Arc<Mutex<[Map; 3]>>,
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore::new()
    }
}

impl MemStore {
    pub fn new() -> MemStore {
        let store = MemStore { spaces: Arc::new(Mutex::new(Default::default())) };
        check_format(&store).expect("an empty memory store accepts the format version");
        store
    }

    fn with<R>(&self, space: Space, f: impl FnOnce(&mut Map) -> R) -> R {
        let mut spaces = self.spaces.lock().expect("memory store lock poisoned");
        f(&mut spaces[space as usize])
    }
}

impl Store for MemStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(space, |m| m.get(key).cloned()))
    }

    fn batch(&self, space: Space, writes: Vec<Write>) -> Result<(), StoreError> {
        self.with(space, |m| {
            for w in writes {
                match w {
                    Write::Put(k, v) => {
                        m.insert(k, v);
                    }
                    Write::Delete(k) => {
                        m.remove(&k);
                    }
                }
            }
        });
        Ok(())
    }

    fn range(&self, space: Space, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, StoreError> {
        Ok(self.with(space, |m| {
            let it: Box<dyn Iterator<Item = (&Vec<u8>, &Vec<u8>)>> = match to {
                Some(to) => {
                    Box::new(m.range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Excluded(to))))
                }
                None => Box::new(m.range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))),
            };
            it.take(limit).map(|(k, v)| (k.clone(), v.clone())).collect()
        }))
    }

    fn last(&self, space: Space) -> Result<Option<Pair>, StoreError> {
        Ok(self.with(space, |m| m.last_key_value().map(|(k, v)| (k.clone(), v.clone()))))
    }

    fn remove_range(&self, space: Space, from: &[u8], to: Option<&[u8]>) -> Result<(), StoreError> {
        let keys: Vec<Vec<u8>> = self.range(space, from, to, usize::MAX)?.into_iter().map(|(k, _)| k).collect();
        self.with(space, |m| {
            for k in keys {
                m.remove(&k);
            }
        });
        Ok(())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        let spaces = self.spaces.lock().expect("memory store lock poisoned");
        spaces.iter().flat_map(|m| m.iter()).map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }
}
