//! A [`Store`] for the simulator that knows what a crash loses.
//!
//! It behaves like the in-memory `MemStore` (same contract, clones share the data) and also
//! keeps the *durable* image: what the last `flush` covered. Writes after the last flush are
//! a journal; [`SimStore::crash`] keeps a prefix of it chosen by the nemesis (an OS that wrote
//! part of its page cache before dying; the store applies writes in order, so a prefix is
//! exactly what can survive) and drops the rest. A restarted coordinator opens what remains.
//!
//! What it does not model: torn single writes, and reordering between key spaces (sled
//! does not reorder either).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use qm_coordinator::raft::store::{check_format, Pair, Space, Store, StoreError, Write};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Default)]
struct Inner {
    live: [Map; 3],
    durable: [Map; 3],
    /// Writes since the last flush, in order.
    journal: Vec<(Space, Write)>,
    flushes: u64,
}

fn apply(maps: &mut [Map; 3], space: Space, w: Write) {
    let m = &mut maps[space as usize];
    match w {
        Write::Put(k, v) => {
            m.insert(k, v);
        }
        Write::Delete(k) => {
            m.remove(&k);
        }
    }
}

/// The simulated disk of one coordinator.
#[derive(Clone, Debug)]
pub struct SimStore {
    inner: Arc<Mutex<Inner>>,
}

impl SimStore {
    pub fn new() -> SimStore {
        let s = SimStore { inner: Arc::new(Mutex::new(Inner::default())) };
        check_format(&s).expect("an empty store accepts the format version");
        futures::executor::block_on(s.flush()).expect("flush");
        s
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().expect("sim store lock"))
    }

    /// The process died: keep the durable image plus the first `keep` unflushed writes.
    /// Returns how many unflushed writes were lost.
    pub fn crash(&self, keep: usize) -> usize {
        self.with(|i| {
            let journal = std::mem::take(&mut i.journal);
            let lost = journal.len().saturating_sub(keep);
            for (space, w) in journal.into_iter().take(keep) {
                apply(&mut i.durable, space, w);
            }
            i.live = i.durable.clone();
            lost
        })
    }

    /// Writes not yet flushed.
    pub fn unflushed(&self) -> usize {
        self.with(|i| i.journal.len())
    }
}

impl Default for SimStore {
    fn default() -> Self {
        SimStore::new()
    }
}

impl Store for SimStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(|i| i.live[space as usize].get(key).cloned()))
    }

    fn batch(&self, space: Space, writes: Vec<Write>) -> Result<(), StoreError> {
        self.with(|i| {
            for w in writes {
                apply(&mut i.live, space, w.clone());
                i.journal.push((space, w));
            }
        });
        Ok(())
    }

    fn range(&self, space: Space, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, StoreError> {
        Ok(self.with(|i| {
            let m = &i.live[space as usize];
            let upper = match to {
                Some(to) => std::ops::Bound::Excluded(to),
                None => std::ops::Bound::Unbounded,
            };
            m.range::<[u8], _>((std::ops::Bound::Included(from), upper))
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }))
    }

    fn last(&self, space: Space) -> Result<Option<Pair>, StoreError> {
        Ok(self.with(|i| i.live[space as usize].last_key_value().map(|(k, v)| (k.clone(), v.clone()))))
    }

    fn remove_range(&self, space: Space, from: &[u8], to: Option<&[u8]>) -> Result<(), StoreError> {
        let keys: Vec<Vec<u8>> = self.range(space, from, to, usize::MAX)?.into_iter().map(|(k, _)| k).collect();
        self.batch(space, keys.into_iter().map(Write::Delete).collect())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.with(|i| {
            for (space, w) in std::mem::take(&mut i.journal) {
                apply(&mut i.durable, space, w);
            }
            i.flushes += 1;
        });
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.with(|i| i.live.iter().flat_map(|m| m.iter()).map(|(k, v)| (k.len() + v.len()) as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_what_was_flushed_and_a_prefix_of_the_rest() {
        let s = SimStore::new();
        s.batch(Space::Log, vec![Write::Put(b"a".to_vec(), b"1".to_vec())]).unwrap();
        futures::executor::block_on(s.flush()).unwrap();
        s.batch(Space::Log, vec![Write::Put(b"b".to_vec(), b"2".to_vec())]).unwrap();
        s.batch(Space::Log, vec![Write::Put(b"c".to_vec(), b"3".to_vec())]).unwrap();
        assert_eq!(s.crash(1), 1);
        assert!(s.get(Space::Log, b"a").unwrap().is_some());
        assert!(s.get(Space::Log, b"b").unwrap().is_some());
        assert!(s.get(Space::Log, b"c").unwrap().is_none());
    }
}
