//! The lock table: one node per resource path that is held, waited on, or has children.
//!
//! A grant of mode `M` on `a/b/c` puts `intention(M)` on `a` and `a/b` and `M` on `a/b/c`.
//! A waiting request is entered the same way into the wait queue of every node it touches,
//! so both "who holds" and "who waits ahead" are answered per node:
//!
//! ```text
//!   node "pg:staging"                 held {o1: IX, o2: IS}    queue [q9 o3 IX]
//!   node "pg:staging/table:orders"    held {o1: X}             queue [q9 o3 X]
//!   node ".../table:users"            held {o2: S}
//! ```
//!
//! A request is grantable when, on every node it touches, it is compatible with every other
//! owner's holdings and with every other owner's waiter ahead of it (no barging), when the
//! row ranges it overlaps under the same parent are compatible too, and when a counted
//! resource has the units free with nobody queued ahead.
//!
//! Per-node mode counts make the common "nothing conflicts" answer O(depth · log n) even when
//! an ancestor is shared by 100k holders.
//!
//! Nodes live in a slab addressed by [`NodeId`], each linked to its parent, with an index
//! from path text to id. A held grant or a queued request remembers its node, so releasing
//! and re-scanning walk parent links instead of searching the index by string. The slab
//! reuses freed slots last-in first-out: ids depend only on the command history, so every
//! replica (restored or not) numbers its nodes identically.
//!
//! A node that falls empty is not freed at once: it is noted as vacant and freed by the next
//! `collect` (each Tick, or sooner when `VACANT_MAX` nodes wait). Agents re-acquire the same
//! resources over and over; keeping the node between two grants saves creating it again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use qm_shared::{LockMode, ResourcePath, RowRange};

use super::small_map::{SmallMap, SmallSet};
use super::types::{OwnerId, RequestId, ReservationId};

/// Counts of held or queued modes, indexed by `LockMode::index()`.
pub(crate) type ModeCounts = [u32; 5];

/// Position in a wait queue: higher effective priority first, then FIFO by sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct QueueKey {
    /// `PRIORITY_MAX - effective priority`, so that smaller sorts first.
    pub(crate) inv_priority: u32,
    pub(crate) seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct QueueEntry {
    pub(crate) request: RequestId,
    pub(crate) owner: OwnerId,
    pub(crate) mode: LockMode,
    /// True on the node the request names; false on its ancestors (intention entries).
    pub(crate) target: bool,
    /// Units asked of this node by a shared item naming it (0 otherwise; an exclusive item
    /// on a counted resource needs its whole capacity, whatever that is when it is looked at).
    pub(crate) units: u32,
}

impl QueueEntry {
    /// Units this entry needs of a counted resource of `capacity`.
    pub(crate) fn need(&self, capacity: u32) -> u64 {
        match (self.target, self.mode) {
            (false, _) => 0,
            (true, LockMode::X) => u64::from(capacity),
            (true, _) => u64::from(self.units),
        }
    }
}

/// Most vacant nodes kept before they are collected without waiting for a Tick.
pub(crate) const VACANT_MAX: usize = 4_096;

/// A node's slot in the lock table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct NodeId(u32);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Node {
    pub(crate) path: ResourcePath,
    pub(crate) parent: Option<NodeId>,
    /// Modes held here, per owner.
    pub(crate) held: SmallMap<OwnerId, ModeCounts>,
    /// Sum of `held` over owners.
    pub(crate) held_total: ModeCounts,
    /// Grants naming this node as their resource.
    pub(crate) grants: SmallSet<ReservationId>,
    /// Units held by `grants` (counted resources).
    pub(crate) units: u64,
    /// Waiters touching this node, in grant order.
    pub(crate) queue: BTreeMap<QueueKey, QueueEntry>,
    /// Sum of queued modes.
    pub(crate) queued_total: ModeCounts,
    /// Queue entries whose request names this node (bounded by `queue_len_max`).
    pub(crate) targeted: u32,
    /// Units asked by the shared entries naming this node (counted resources).
    pub(crate) queued_units: u64,
    /// Exclusive entries naming this node (each needs the whole capacity).
    pub(crate) queued_exclusive: u32,
    /// Row-range children that exist as nodes.
    pub(crate) rows: BTreeMap<RowRange, NodeId>,
    /// Child nodes that exist (row ranges included); a node with children is never freed.
    pub(crate) children: u32,
}

impl Node {
    pub(crate) fn new(path: ResourcePath, parent: Option<NodeId>) -> Node {
        Node {
            path,
            parent,
            held: SmallMap::default(),
            held_total: [0; 5],
            grants: SmallSet::default(),
            units: 0,
            queue: BTreeMap::new(),
            queued_total: [0; 5],
            targeted: 0,
            queued_units: 0,
            queued_exclusive: 0,
            rows: BTreeMap::new(),
            children: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.held.is_empty() && self.queue.is_empty() && self.children == 0
    }

    pub(crate) fn hold(&mut self, owner: OwnerId, mode: LockMode) {
        self.held.entry_or_default(owner)[mode.index()] += 1;
        self.held_total[mode.index()] += 1;
    }

    pub(crate) fn unhold(&mut self, owner: OwnerId, mode: LockMode) {
        let counts = self.held.get_mut(&owner).expect("unhold: owner holds here");
        counts[mode.index()] = counts[mode.index()].checked_sub(1).expect("unhold: mode held");
        if counts.iter().all(|c| *c == 0) {
            self.held.remove(&owner);
        }
        self.held_total[mode.index()] -= 1;
    }

    pub(crate) fn enqueue(&mut self, key: QueueKey, entry: QueueEntry) {
        self.queued_total[entry.mode.index()] += 1;
        if entry.target {
            self.targeted += 1;
            self.queued_units += u64::from(entry.units);
            self.queued_exclusive += u32::from(entry.mode == LockMode::X);
        }
        let previous = self.queue.insert(key, entry);
        assert!(previous.is_none(), "queue keys are unique");
    }

    pub(crate) fn dequeue(&mut self, key: &QueueKey) -> QueueEntry {
        let entry = self.queue.remove(key).expect("dequeue: entry present");
        self.queued_total[entry.mode.index()] -= 1;
        if entry.target {
            self.targeted -= 1;
            self.queued_units -= u64::from(entry.units);
            self.queued_exclusive -= u32::from(entry.mode == LockMode::X);
        }
        entry
    }

    /// Whether some owner other than `owner` holds a mode incompatible with `mode`.
    pub(crate) fn others_conflict(&self, owner: OwnerId, mode: LockMode) -> bool {
        let mine = self.held.get(&owner);
        LockMode::ALL.iter().any(|m| {
            let others = self.held_total[m.index()] - mine.map_or(0, |c| c[m.index()]);
            others > 0 && !mode.compatible(*m)
        })
    }

    /// Owners other than `owner` holding a mode incompatible with `mode`.
    pub(crate) fn conflicting_holders(&self, owner: OwnerId, mode: LockMode, out: &mut BTreeSet<OwnerId>) {
        if !self.others_conflict(owner, mode) {
            return;
        }
        for (other, counts) in &self.held {
            if *other != owner && LockMode::ALL.iter().any(|m| counts[m.index()] > 0 && !mode.compatible(*m)) {
                out.insert(*other);
            }
        }
    }

    /// Units the waiters naming this counted node need together, at `capacity`.
    pub(crate) fn queued_need(&self, capacity: u32) -> u64 {
        self.queued_units + u64::from(self.queued_exclusive) * u64::from(capacity)
    }

    /// Whether any queued mode at all conflicts with `mode` (fast pre-check).
    pub(crate) fn queue_may_conflict(&self, mode: LockMode) -> bool {
        LockMode::ALL.iter().any(|m| self.queued_total[m.index()] > 0 && !mode.compatible(*m))
    }
}

/// The join of every mode with a non-zero count.
pub(crate) fn join_counts(counts: &ModeCounts) -> Option<LockMode> {
    LockMode::ALL.iter().filter(|m| counts[m.index()] > 0).copied().reduce(LockMode::join)
}

/// The nodes, by id and by path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LockTable {
    /// Path text → node. Keys share the text of the node's `ResourcePath`.
    index: BTreeMap<Arc<str>, NodeId>,
    slab: Vec<Option<Node>>,
    free: Vec<NodeId>,
    /// Nodes that fell empty since the last collect (some may be in use again).
    vacant: BTreeSet<NodeId>,
}

impl LockTable {
    pub(crate) fn lookup(&self, path: &str) -> Option<NodeId> {
        self.index.get(path).copied()
    }

    pub(crate) fn get(&self, path: &str) -> Option<&Node> {
        self.lookup(path).map(|id| self.node(id))
    }

    /// The node in slot `id`, if the slot is in use.
    pub(crate) fn try_node(&self, id: NodeId) -> Option<&Node> {
        self.slab.get(id.0 as usize).and_then(Option::as_ref)
    }

    pub(crate) fn node(&self, id: NodeId) -> &Node {
        self.try_node(id).expect("node id in use")
    }

    pub(crate) fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.slab[id.0 as usize].as_mut().expect("node id in use")
    }

    /// The node for `path`, created with any missing ancestors; a new row-range node
    /// registers with its parent.
    pub(crate) fn ensure(&mut self, path: &ResourcePath) -> NodeId {
        let deepest = self.deepest(path);
        self.ensure_below(path, deepest)
    }

    /// Like [`ensure`](Self::ensure), given `deepest`, the result of [`deepest`](Self::deepest)
    /// for `path` with no node created or freed since: only the missing levels are created.
    pub(crate) fn ensure_below(&mut self, path: &ResourcePath, deepest: Option<(NodeId, usize)>) -> NodeId {
        let (mut parent, from) = match deepest {
            Some((id, depth)) => (Some(id), depth + 1),
            None => (None, 1),
        };
        for n in from..=path.depth() {
            parent = Some(self.create(path.ancestor(n), parent));
        }
        parent.expect("a path has at least one segment")
    }

    fn create(&mut self, path: ResourcePath, parent: Option<NodeId>) -> NodeId {
        debug_assert!(self.lookup(path.as_str()).is_none(), "{path} exists");
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slab.push(None);
                NodeId((self.slab.len() - 1) as u32)
            }
        };
        self.index.insert(path.shared_text(), id);
        if let Some(parent) = parent {
            let p = self.node_mut(parent);
            p.children += 1;
            if let Some(range) = path.rows() {
                p.rows.insert(range, id);
            }
        }
        self.slab[id.0 as usize] = Some(Node::new(path, parent));
        id
    }

    /// The deepest existing node on `path` and its depth (`1..=path.depth()`).
    pub(crate) fn deepest(&self, path: &ResourcePath) -> Option<(NodeId, usize)> {
        (1..=path.depth()).rev().find_map(|n| self.lookup(path.prefix(n)).map(|id| (id, n)))
    }

    /// Notes that `id` may have fallen empty; it is freed by the next [`collect`](Self::collect).
    pub(crate) fn release(&mut self, id: NodeId) {
        if self.node(id).is_empty() {
            self.vacant.insert(id);
            if self.vacant.len() > VACANT_MAX {
                self.collect();
            }
        }
    }

    /// Frees every vacant node that is still empty, and then its ancestors while they are.
    pub(crate) fn collect(&mut self) {
        for id in std::mem::take(&mut self.vacant) {
            let mut current = self.try_node(id).map(|_| id);
            while let Some(id) = current {
                if !self.node(id).is_empty() {
                    break;
                }
                let node = self.slab[id.0 as usize].take().expect("node id in use");
                self.index.remove(node.path.as_str());
                self.free.push(id);
                if let Some(parent) = node.parent {
                    let p = self.node_mut(parent);
                    p.children -= 1;
                    if let Some(range) = node.path.rows() {
                        p.rows.remove(&range);
                    }
                }
                current = node.parent;
            }
        }
    }

    pub(crate) fn is_vacant(&self, id: NodeId) -> bool {
        self.vacant.contains(&id)
    }

    /// `id` and its ancestors, leaf first.
    pub(crate) fn chain(&self, id: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        std::iter::successors(Some(id), |id| self.node(*id).parent)
    }

    /// Every node in path order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (NodeId, &Node)> + '_ {
        self.index.values().map(|id| (*id, self.node(*id)))
    }

    /// The slab and the index agree: every indexed path names a slot in use holding that
    /// path, every slot is either indexed or on the free list (once), so [`node`](Self::node)
    /// and [`iter`](Self::iter) cannot fail on an id the index hands out.
    pub(crate) fn check_slots(&self) -> super::invariants::Checked {
        for (path, id) in &self.index {
            let node = self.try_node(*id).ok_or_else(|| format!("{path} is indexed at a slot not in use"))?;
            if node.path.as_str() != &**path {
                return Err(format!("{path} is indexed at the slot of {}", node.path));
            }
        }
        let in_use = self.slab.iter().filter(|s| s.is_some()).count();
        if in_use != self.index.len() {
            return Err(format!("{in_use} slots in use, {} indexed", self.index.len()));
        }
        let free: BTreeSet<NodeId> = self.free.iter().copied().collect();
        if free.len() != self.free.len() || free.len() + in_use != self.slab.len() {
            return Err(format!("{} free slots listed for {} empty", self.free.len(), self.slab.len() - in_use));
        }
        // In range, distinct, not in use, and as many as the empty slots: exactly the empty slots.
        if let Some(id) = free.iter().find(|id| id.0 as usize >= self.slab.len() || self.try_node(**id).is_some()) {
            return Err(format!("slot {} is listed free but is in use or past the slab", id.0));
        }
        Ok(())
    }
}
