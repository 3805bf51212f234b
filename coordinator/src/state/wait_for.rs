//! The wait-for graph: an edge from each waiting owner to each owner blocking it.
//!
//! The edge sets (`edges`) are replicated state. Beside them sits a dense mirror — owners
//! numbered by slot, adjacency in vectors — rebuilt from `edges` on restore and used only to
//! walk the graph fast. Every walk visits neighbours in `OwnerId` order, never slot order, so
//! the cycle found (and so the victim) is the same on every replica, restored or not.
//!
//! Cycle detection is incremental: only an owner whose edge set *gained* a target can close a
//! cycle, and every new cycle passes through such an owner, so a depth-first search from each
//! of them back to itself finds every cycle in the apply that closes it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use qm_shared::limits::CYCLE_REPORT_MAX;

use super::types::{Millis, OwnerId};

/// What choosing a victim needs to know of a waiting owner, kept beside its slot so that
/// choosing among 10k cycle members reads vectors, not maps. The state refreshes it whenever
/// a waiting owner's effective priority or holdings change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct VictimMeta {
    /// Effective priority of its pending request.
    pub(crate) effective: u32,
    /// Number of leases it holds, and the sum of their grant times: sunk work at `now` is
    /// `grants * now - granted_at_sum`.
    pub(crate) grants: u64,
    pub(crate) granted_at_sum: u64,
    pub(crate) created_at: Millis,
}

impl VictimMeta {
    /// Smallest is the victim: lowest priority, least sunk work, youngest, highest id.
    fn key(&self, owner: OwnerId, now: Millis) -> (u32, u128, std::cmp::Reverse<Millis>, std::cmp::Reverse<OwnerId>) {
        let sunk = u128::from(self.grants) * u128::from(now) - u128::from(self.granted_at_sum);
        (self.effective, sunk, std::cmp::Reverse(self.created_at), std::cmp::Reverse(owner))
    }
}

/// A cycle found through an owner: its members (starting with that owner) and the victim.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Cycle {
    /// The first `CYCLE_REPORT_MAX` owners on it, starting with the one searched from.
    pub(crate) owners: Vec<OwnerId>,
    pub(crate) len: usize,
    pub(crate) victim: OwnerId,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct WaitFor {
    edges: BTreeMap<OwnerId, BTreeSet<OwnerId>>,
    #[serde(skip)]
    dense: Dense,
}

impl PartialEq for WaitFor {
    fn eq(&self, other: &Self) -> bool {
        self.edges == other.edges
    }
}

impl Eq for WaitFor {}

#[derive(Clone, Debug, Default)]
struct Dense {
    slot_of: BTreeMap<OwnerId, u32>,
    owner_of: Vec<OwnerId>,
    /// Out-neighbours by slot, ordered by `OwnerId`: the first kept in a flat vector
    /// (`NO_SLOT` when none) so a walk down a long chain reads 4 bytes per owner; the rest,
    /// rarely any, beside it.
    first: Vec<u32>,
    rest: Vec<Vec<u32>>,
    meta: Vec<VictimMeta>,
    free: Vec<u32>,
    mark: Vec<u32>,
    epoch: u32,
}

/// No neighbour.
const NO_SLOT: u32 = u32::MAX;

impl Dense {
    fn clear_adj(&mut self, slot: u32) {
        self.first[slot as usize] = NO_SLOT;
        self.rest[slot as usize].clear();
    }

    /// The `i`-th out-neighbour of `slot`, in `OwnerId` order.
    fn neighbour(&self, slot: u32, i: u32) -> Option<u32> {
        match i {
            0 => Some(self.first[slot as usize]).filter(|t| *t != NO_SLOT),
            _ => self.rest[slot as usize].get(i as usize - 1).copied(),
        }
    }

    fn slot(&mut self, owner: OwnerId) -> u32 {
        if let Some(slot) = self.slot_of.get(&owner) {
            return *slot;
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.owner_of[slot as usize] = owner;
                slot
            }
            None => {
                self.owner_of.push(owner);
                self.first.push(NO_SLOT);
                self.rest.push(Vec::new());
                self.meta.push(VictimMeta::default());
                self.mark.push(0);
                (self.owner_of.len() - 1) as u32
            }
        };
        self.slot_of.insert(owner, slot);
        slot
    }
}

impl WaitFor {
    pub(crate) fn edges(&self) -> &BTreeMap<OwnerId, BTreeSet<OwnerId>> {
        &self.edges
    }

    pub(crate) fn targets(&self, owner: OwnerId) -> Option<&BTreeSet<OwnerId>> {
        self.edges.get(&owner)
    }

    /// Replaces `owner`'s out-edges; returns whether it gained a target it did not have.
    pub(crate) fn set(&mut self, owner: OwnerId, targets: BTreeSet<OwnerId>) -> bool {
        let gained = match self.edges.get(&owner) {
            Some(old) => targets.iter().any(|t| !old.contains(t)),
            None => !targets.is_empty(),
        };
        if !gained && self.edges.get(&owner).map_or(targets.is_empty(), |old| *old == targets) {
            return false;
        }
        let from = self.dense.slot(owner);
        let slots: Vec<u32> = targets.iter().map(|t| self.dense.slot(*t)).collect();
        self.dense.first[from as usize] = slots.first().copied().unwrap_or(NO_SLOT);
        self.dense.rest[from as usize] = slots.get(1..).map(<[u32]>::to_vec).unwrap_or_default();
        if targets.is_empty() {
            self.edges.remove(&owner);
        } else {
            self.edges.insert(owner, targets);
        }
        gained
    }

    /// Drops `owner`'s out-edges (it no longer waits).
    pub(crate) fn clear(&mut self, owner: OwnerId) {
        if self.edges.remove(&owner).is_some() {
            let slot = self.dense.slot_of[&owner];
            self.dense.clear_adj(slot);
        }
    }

    /// Forgets an owner that neither waits nor holds (no edge can point at it any more).
    pub(crate) fn forget(&mut self, owner: OwnerId) {
        debug_assert!(!self.edges.contains_key(&owner));
        if let Some(slot) = self.dense.slot_of.remove(&owner) {
            self.dense.clear_adj(slot);
            self.dense.meta[slot as usize] = VictimMeta::default();
            self.dense.free.push(slot);
        }
    }

    /// Records what victim choice needs of a waiting owner.
    pub(crate) fn set_meta(&mut self, owner: OwnerId, meta: VictimMeta) {
        let slot = self.dense.slot(owner);
        self.dense.meta[slot as usize] = meta;
    }

    #[cfg(debug_assertions)]
    pub(crate) fn meta(&self, owner: OwnerId) -> Option<VictimMeta> {
        self.dense.slot_of.get(&owner).map(|s| self.dense.meta[*s as usize])
    }

    /// Rebuilds the dense mirror from the replicated edges (after restore; the state then
    /// sets every waiting owner's meta).
    pub(crate) fn rebuild(&mut self) {
        self.dense = Dense::default();
        let edges = std::mem::take(&mut self.edges);
        for (owner, targets) in edges {
            self.set(owner, targets);
        }
    }

    /// A cycle through `start`, if one exists: its owners starting with `start`, and the
    /// victim by `VictimMeta` order at `now`. Iterative DFS; neighbours in `OwnerId` order;
    /// each owner expanded at most once.
    pub(crate) fn find_cycle(&mut self, start: OwnerId, now: Millis) -> Option<Cycle> {
        let d = &mut self.dense;
        let s = *d.slot_of.get(&start)?;
        d.epoch = d.epoch.wrapping_add(1);
        if d.epoch == 0 {
            d.mark.iter_mut().for_each(|m| *m = 0);
            d.epoch = 1;
        }
        let epoch = d.epoch;
        d.mark[s as usize] = epoch;
        let mut stack: Vec<(u32, u32)> = vec![(s, 0)];
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let Some(child) = d.neighbour(node, *next) else {
                stack.pop();
                continue;
            };
            *next += 1;
            if child == s {
                let owners: Vec<OwnerId> =
                    stack.iter().take(CYCLE_REPORT_MAX).map(|(slot, _)| d.owner_of[*slot as usize]).collect();
                let victim = stack
                    .iter()
                    .map(|(slot, _)| (d.meta[*slot as usize].key(d.owner_of[*slot as usize], now), *slot))
                    .min()
                    .map(|(_, slot)| d.owner_of[slot as usize])
                    .expect("a cycle has members");
                return Some(Cycle { owners, len: stack.len(), victim });
            }
            if d.mark[child as usize] != epoch {
                d.mark[child as usize] = epoch;
                stack.push((child, 0));
            }
        }
        None
    }

    /// Whether the whole graph is acyclic (for invariant checks; O(V + E)).
    pub(crate) fn is_acyclic(&self) -> bool {
        // Kahn's algorithm over the replicated edges.
        let mut indegree: BTreeMap<OwnerId, usize> = BTreeMap::new();
        for (from, targets) in &self.edges {
            indegree.entry(*from).or_default();
            for t in targets {
                *indegree.entry(*t).or_default() += 1;
            }
        }
        let mut ready: Vec<OwnerId> = indegree.iter().filter(|(_, d)| **d == 0).map(|(o, _)| *o).collect();
        let mut seen = 0;
        while let Some(o) = ready.pop() {
            seen += 1;
            for t in self.edges.get(&o).into_iter().flatten() {
                let d = indegree.get_mut(t).expect("target counted");
                *d -= 1;
                if *d == 0 {
                    ready.push(*t);
                }
            }
        }
        seen == indegree.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(g: &mut WaitFor, from: u64, to: &[u64]) -> bool {
        g.set(OwnerId(from), to.iter().map(|t| OwnerId(*t)).collect())
    }

    #[test]
    fn finds_the_cycle_through_the_owner_that_closed_it() {
        let mut g = WaitFor::default();
        assert!(set(&mut g, 1, &[2]));
        assert!(set(&mut g, 2, &[3]));
        assert_eq!(g.find_cycle(OwnerId(1), 0), None);
        assert!(set(&mut g, 3, &[1, 4]));
        for (owner, effective) in [(1, 500), (2, 100), (3, 500)] {
            g.set_meta(OwnerId(owner), VictimMeta { effective, ..VictimMeta::default() });
        }
        let cycle = g.find_cycle(OwnerId(3), 0).unwrap();
        assert_eq!(cycle.owners, vec![OwnerId(3), OwnerId(1), OwnerId(2)]);
        assert_eq!(cycle.victim, OwnerId(2), "lowest priority");
        assert!(!g.is_acyclic());
        g.clear(OwnerId(3));
        assert!(g.is_acyclic());
        assert_eq!(g.find_cycle(OwnerId(1), 0), None);
    }

    #[test]
    fn victim_order_is_priority_then_sunk_work_then_youngest_then_highest_id() {
        let mut g = WaitFor::default();
        set(&mut g, 1, &[2]);
        set(&mut g, 2, &[3]);
        set(&mut g, 3, &[1]);
        let meta =
            |grants, granted_at_sum, created_at| VictimMeta { effective: 500, grants, granted_at_sum, created_at };
        // Sunk work at now=100: o1 2*100-50=150, o2 1*100-10=90, o3 1*100-10=90.
        g.set_meta(OwnerId(1), meta(2, 50, 0));
        g.set_meta(OwnerId(2), meta(1, 10, 5));
        g.set_meta(OwnerId(3), meta(1, 10, 5));
        assert_eq!(g.find_cycle(OwnerId(1), 100).unwrap().victim, OwnerId(3), "tie on age: highest id");
        g.set_meta(OwnerId(2), meta(1, 10, 7));
        assert_eq!(g.find_cycle(OwnerId(1), 100).unwrap().victim, OwnerId(2), "youngest");
    }

    #[test]
    fn setting_the_same_edges_again_gains_nothing() {
        let mut g = WaitFor::default();
        assert!(set(&mut g, 1, &[2, 3]));
        assert!(!set(&mut g, 1, &[3, 2]));
        assert!(!set(&mut g, 1, &[2]));
        assert!(set(&mut g, 1, &[2, 5]));
    }

    #[test]
    fn restore_rebuilds_the_same_walks() {
        let mut g = WaitFor::default();
        for (from, to) in [(5, 9), (9, 7), (7, 5), (1, 9)] {
            set(&mut g, from, &[to]);
        }
        g.forget(OwnerId(42));
        let mut restored = WaitFor { edges: g.edges.clone(), dense: Dense::default() };
        restored.rebuild();
        assert_eq!(g.find_cycle(OwnerId(7), 0), restored.find_cycle(OwnerId(7), 0));
    }
}
