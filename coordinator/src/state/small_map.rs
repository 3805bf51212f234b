//! An ordered map that keeps a single entry inline and switches to a `BTreeMap` beyond it.
//!
//! Most lock-table nodes have one holder and one grant, and most owners one lease; a
//! `BTreeMap` spends a whole leaf (hundreds of bytes) on that one entry. The representation is
//! a function of the contents (one entry is always inline), so two replicas with the same
//! contents encode the same bytes; it serializes as a plain map either way.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, Serializer};

#[derive(Clone, PartialEq, Eq)]
pub(crate) enum SmallMap<K, V> {
    Empty,
    One(K, V),
    Many(BTreeMap<K, V>),
}

// Not derived: a derive would demand `K: Default` and `V: Default`, which ids do not have.
#[allow(clippy::derivable_impls)]
impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap::Empty
    }
}

impl<K: Ord + Copy, V> SmallMap<K, V> {
    pub(crate) fn len(&self) -> usize {
        match self {
            SmallMap::Empty => 0,
            SmallMap::One(..) => 1,
            SmallMap::Many(m) => m.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, SmallMap::Empty)
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        match self {
            SmallMap::Empty => None,
            SmallMap::One(k, v) => (k == key).then_some(v),
            SmallMap::Many(m) => m.get(key),
        }
    }

    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// The value for `key`, inserted with `V::default()` if missing.
    pub(crate) fn entry_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        if let SmallMap::One(k, _) = self {
            if *k != key {
                let SmallMap::One(k, v) = std::mem::take(self) else { unreachable!("checked One") };
                *self = SmallMap::Many(BTreeMap::from([(k, v)]));
            }
        }
        match self {
            SmallMap::Empty => {
                *self = SmallMap::One(key, V::default());
                match self {
                    SmallMap::One(_, v) => v,
                    _ => unreachable!("just set"),
                }
            }
            SmallMap::One(_, v) => v,
            SmallMap::Many(m) => m.entry(key).or_default(),
        }
    }

    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        match self {
            SmallMap::Empty => None,
            SmallMap::One(k, v) => (k == key).then_some(v),
            SmallMap::Many(m) => m.get_mut(key),
        }
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        match self {
            SmallMap::Empty => None,
            SmallMap::One(k, _) if k != key => None,
            SmallMap::One(..) => match std::mem::take(self) {
                SmallMap::One(_, v) => Some(v),
                _ => unreachable!("checked One"),
            },
            SmallMap::Many(m) => {
                let v = m.remove(key);
                if m.len() == 1 {
                    let (k, v1) = m.pop_first().expect("one entry");
                    *self = SmallMap::One(k, v1);
                }
                v
            }
        }
    }

    /// Entries in key order.
    pub(crate) fn iter(&self) -> Box<dyn Iterator<Item = (&K, &V)> + '_> {
        match self {
            SmallMap::Empty => Box::new(std::iter::empty()),
            SmallMap::One(k, v) => Box::new(std::iter::once((k, v))),
            SmallMap::Many(m) => Box::new(m.iter()),
        }
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.iter().map(|(k, _)| k)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: Ord + Copy + fmt::Debug, V: fmt::Debug> fmt::Debug for SmallMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Ord + Copy + Serialize, V: Serialize> Serialize for SmallMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de, K: Ord + Copy + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for SmallMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut map = BTreeMap::<K, V>::deserialize(deserializer)?;
        Ok(match map.len() {
            0 => SmallMap::Empty,
            1 => {
                let (k, v) = map.pop_first().expect("one entry");
                SmallMap::One(k, v)
            }
            _ => SmallMap::Many(map),
        })
    }
}

impl<'a, K: Ord + Copy, V> IntoIterator for &'a SmallMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Box<dyn Iterator<Item = (&'a K, &'a V)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// An ordered set on the same representation.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub(crate) struct SmallSet<K: Ord + Copy>(SmallMap<K, ()>);

impl<K: Ord + Copy> Default for SmallSet<K> {
    fn default() -> Self {
        SmallSet(SmallMap::Empty)
    }
}

impl<'a, K: Ord + Copy> IntoIterator for &'a SmallSet<K> {
    type Item = &'a K;
    type IntoIter = Box<dyn Iterator<Item = &'a K> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl<K: Ord + Copy> SmallSet<K> {
    pub(crate) fn insert(&mut self, key: K) {
        self.0.entry_or_default(key);
    }

    pub(crate) fn remove(&mut self, key: &K) -> bool {
        self.0.remove(key).is_some()
    }

    pub(crate) fn contains(&self, key: &K) -> bool {
        self.0.contains_key(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &K> + '_ {
        self.0.keys()
    }
}

impl<K: Ord + Copy + fmt::Debug> fmt::Debug for SmallSet<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl<K: Ord + Copy> FromIterator<K> for SmallSet<K> {
    fn from_iter<I: IntoIterator<Item = K>>(iter: I) -> Self {
        let mut set = SmallSet::default();
        for k in iter {
            set.insert(k);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn representation_follows_contents() {
        let mut m: SmallMap<u32, u32> = SmallMap::default();
        *m.entry_or_default(5) += 1;
        assert!(matches!(m, SmallMap::One(5, 1)));
        *m.entry_or_default(3) += 2;
        *m.entry_or_default(5) += 1;
        assert_eq!(m.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(), [(3, 2), (5, 2)]);
        assert_eq!(m.remove(&3), Some(2));
        assert!(matches!(m, SmallMap::One(5, 2)), "shrinks back inline");
        assert_eq!(m.remove(&9), None);
        assert_eq!(m.remove(&5), Some(2));
        assert!(m.is_empty());
    }

    #[test]
    fn encodes_like_a_map() {
        let mut small: SmallMap<u64, u8> = SmallMap::default();
        let mut big = BTreeMap::new();
        for k in [9u64, 2, 7] {
            small.entry_or_default(k);
            big.insert(k, 0u8);
            assert_eq!(bincode::serialize(&small).unwrap(), bincode::serialize(&big).unwrap());
        }
        let back: SmallMap<u64, u8> = bincode::deserialize(&bincode::serialize(&small).unwrap()).unwrap();
        assert_eq!(back, small);
        let set: SmallSet<u64> = [4, 1].into_iter().collect();
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [1, 4]);
    }
}
