//! Conflict scans: who blocks a request (holders and waiters ahead, at every node on each
//! item's path), for refusals, queue positions and wait-for edges.

use super::*;

/// Where scanning an item starts: the items' own nodes (a queued request), or the deepest
/// existing node on each item's path (a new request; `None` when nothing on it exists).
#[derive(Clone, Copy)]
pub(super) enum Starts<'a> {
    Targets(&'a [NodeId]),
    Deepest(&'a [Option<(NodeId, usize)>]),
}

impl Starts<'_> {
    pub(super) fn get(self, i: usize, depth: usize) -> Option<(NodeId, usize)> {
        match self {
            Starts::Targets(t) => Some((t[i], depth)),
            Starts::Deepest(d) => d[i],
        }
    }

    /// Whether the request is queued (and so counted among the waiters of its nodes).
    pub(super) fn queued(self) -> bool {
        matches!(self, Starts::Targets(_))
    }
}

/// Who blocks a request: owners holding something incompatible, and owners waiting ahead.
///
/// Two depths. `report` (for refusals and queue positions) lists every conflicting holder and
/// waiter ahead. `edges` (for the wait-for graph) stops, at each node, after the nearest
/// conflicting waiter whose mode conflicts with at least everything the request's mode
/// conflicts with, and then leaves out that node's holders: that waiter already waits
/// (directly or down its own chain) for everyone further ahead and every such holder, so
/// reachability in the graph, and so every cycle, is kept, while a queue of n writers is a
/// chain of n edges instead of n²/2 (and a new holder does not rewrite every waiter's edges).
#[derive(Debug, Default)]
pub(super) struct Blockers {
    pub(in crate::state) full: bool,
    pub(in crate::state) holders: BTreeSet<OwnerId>,
    pub(in crate::state) waiters: BTreeSet<OwnerId>,
    /// Targeted waiters ahead on the named resources (for the queue position; `report` only).
    pub(in crate::state) ahead: u32,
}

impl Blockers {
    pub(super) fn report() -> Blockers {
        Blockers { full: true, ..Blockers::default() }
    }

    pub(super) fn edges() -> Blockers {
        Blockers::default()
    }
}

/// Whether `a` conflicts with every mode that `m` conflicts with.
pub(super) fn covers(a: LockMode, m: LockMode) -> bool {
    LockMode::ALL.iter().all(|x| m.compatible(*x) || !a.compatible(*x))
}

impl State {
    pub(super) fn policy_count(&self, policy: Policy) -> u32 {
        self.policy_counts[policy as usize]
    }

    pub(super) fn capacity(&self, path: &str) -> Option<u32> {
        self.resources.get(path).and_then(|r| r.capacity)
    }

    /// The declared config nearest to `path` (itself or an ancestor).
    pub(super) fn resource_config(&self, path: &ResourcePath) -> Option<&ResourceConfig> {
        (1..=path.depth()).rev().find_map(|n| self.resources.get(path.prefix(n)))
    }

    /// The first of `items` a newcomer at `priority` could not have now, when its holders are
    /// not ones it would preempt (policy `preempt` and at least `preempt_gap` below it).
    pub fn held_against(&self, items: &[Item], priority: u32) -> Option<String> {
        let key = QueueKey { inv_priority: PRIORITY_MAX - priority.min(PRIORITY_MAX), seq: self.next_seq };
        let nobody = OwnerId(u64::MAX);
        for item in items {
            let deepest = [self.table.deepest(&item.path)];
            let one = std::slice::from_ref(item);
            if !self.is_blocked(nobody, key, one, Starts::Deepest(&deepest)) {
                continue;
            }
            let mut b = Blockers::report();
            self.blockers(nobody, key, one, Starts::Deepest(&deepest), &mut b);
            let holders = self.holder_infos(one, &b);
            let preemptible = b.waiters.is_empty()
                && !holders.is_empty()
                && holders.iter().all(|h| {
                    let g = &self.grants[&h.reservation];
                    self.resource_config(&g.path).is_some_and(|c| c.policy == Policy::Preempt)
                        && priority >= g.priority.saturating_add(self.config.preempt_gap)
                });
            if !preemptible {
                return Some(item.path.to_string());
            }
        }
        None
    }

    /// Whether `items` are blocked for `owner` at queue position `key`. `targets` are the
    /// items' nodes when the request is queued (and so they exist).
    pub(super) fn is_blocked(&self, owner: OwnerId, key: QueueKey, items: &[Item], starts: Starts) -> bool {
        items
            .iter()
            .enumerate()
            .any(|(i, item)| self.scan_item(owner, key, item, starts.get(i, item.path.depth()), starts.queued(), None))
    }

    pub(super) fn blockers(&self, owner: OwnerId, key: QueueKey, items: &[Item], starts: Starts, out: &mut Blockers) {
        for (i, item) in items.iter().enumerate() {
            self.scan_item(owner, key, item, starts.get(i, item.path.depth()), starts.queued(), Some(out));
        }
    }

    /// Whether `item`, asked by `owner` at queue position `key`, is blocked; with `out`,
    /// also collects who blocks it. Walks from the item's node (or the deepest existing
    /// ancestor) up to the root, then the overlapping row ranges beside it.
    pub(super) fn scan_item(
        &self,
        owner: OwnerId,
        key: QueueKey,
        item: &Item,
        start: Option<(NodeId, usize)>,
        queued: bool,
        mut out: Option<&mut Blockers>,
    ) -> bool {
        let depth = item.path.depth();
        let Some((start, start_depth)) = start else { return false };
        let mut blocked = false;
        for (i, nid) in self.table.chain(start).enumerate() {
            let node = self.table.node(nid);
            let is_target = i == 0 && start_depth == depth;
            let mode = if is_target { item.mode.lock_mode() } else { item.mode.intention() };
            blocked |= scan_node(node, owner, key, mode, out.as_deref_mut());
            if is_target {
                if let Some(capacity) = self.capacity(item.path.as_str()) {
                    blocked |= self.scan_units(node, owner, key, item, capacity, queued, out.as_deref_mut());
                }
                if let Some(out) = out.as_deref_mut().filter(|o| o.full) {
                    out.ahead = out.ahead.max(node.queue.range(..key).filter(|(_, e)| e.target).count() as u32);
                }
            }
            if blocked && out.is_none() {
                return true;
            }
        }
        let parent = match (start_depth == depth, start_depth + 1 == depth) {
            (true, _) => self.table.node(start).parent,
            (false, true) => Some(start),
            _ => None,
        };
        if let (Some(range), Some(parent)) = (item.path.rows(), parent) {
            let p = self.table.node(parent);
            for (sibling, sid) in p.rows.iter().take_while(|(r, _)| r.lo < range.hi) {
                if *sibling == range || !sibling.overlaps(&range) {
                    continue;
                }
                blocked |= scan_node(self.table.node(*sid), owner, key, item.mode.lock_mode(), out.as_deref_mut());
                if blocked && out.is_none() {
                    return true;
                }
            }
        }
        blocked
    }

    /// The counted-units test at a request's own node: whether the units it needs fit beside
    /// the holders' and beside those of the waiters ahead (no barging on a counted resource).
    /// Records who it waits for in `out`.
    #[allow(clippy::too_many_arguments)]
    fn scan_units(
        &self,
        node: &Node,
        owner: OwnerId,
        key: QueueKey,
        item: &Item,
        capacity: u32,
        queued: bool,
        mut out: Option<&mut Blockers>,
    ) -> bool {
        let mut blocked = false;
        let needed = u64::from(if item.mode == Mode::Exclusive { capacity } else { item.units });
        if node.units + needed > u64::from(capacity) {
            blocked = true;
            if let Some(out) = out.as_deref_mut() {
                out.holders.extend(node.grants.iter().map(|g| self.grants[g].owner).filter(|o| *o != owner));
            }
        }
        // No barging on a counted resource: a newcomer may take free units only
        // if enough stay free for every waiter ahead of it. A waiter ahead that is
        // held up elsewhere (by another item of its set) keeps its units, but does
        // not stop the whole queue behind it while units stand idle.
        //
        // When the holders and every waiter fit together (a queued request is one
        // of those waiters), nobody ahead can be short: no need to look.
        let everyone = node.units + node.queued_need(capacity) + if queued { 0 } else { needed };
        if everyone > u64::from(capacity) {
            let mut reserved = node.units + needed;
            let mut looked = 0;
            for entry in node.queue.range(..key).rev().map(|(_, e)| e) {
                if !entry.target || entry.owner == owner {
                    continue;
                }
                // Bounded: past COUNTED_LOOKAHEAD_MAX waiters ahead, the newcomer
                // waits its turn (plain FIFO) rather than the scan growing with
                // the queue.
                looked += 1;
                if looked > COUNTED_LOOKAHEAD_MAX {
                    reserved = u64::MAX;
                }
                reserved = reserved.saturating_add(entry.need(capacity));
                if reserved > u64::from(capacity) {
                    blocked = true;
                    match out.as_deref_mut() {
                        Some(out) => {
                            out.waiters.insert(entry.owner);
                            if !out.full {
                                break;
                            }
                        }
                        None => break,
                    }
                }
            }
        }
        blocked
    }

    /// Upper bound on the wait: the longest remaining lease among blocking holders plus the
    /// leases of the waiters ahead.
    pub(super) fn estimate_wait(&self, items: &[Item], blockers: &Blockers, now: Millis) -> u64 {
        let infos = self.holder_infos(items, blockers);
        let held = infos.iter().map(|h| self.grants[&h.reservation].expires_at.saturating_sub(now)).max();
        let ahead: u64 =
            blockers.waiters.iter().filter_map(|o| self.owners[o].pending).map(|r| self.requests[&r].lease_ms).sum();
        held.unwrap_or(0) + ahead
    }

    /// Whether `grant` (of another owner) stands in the way of `item`: their modes conflict on
    /// the node they share, on overlapping row ranges, or on a counted resource.
    pub(super) fn grant_blocks(&self, grant: &Grant, item: &Item) -> bool {
        let (g, i) = (&grant.path, &item.path);
        if g == i {
            return !grant.mode.lock_mode().compatible(item.mode.lock_mode()) || self.capacity(i.as_str()).is_some();
        }
        if i.is_within(g.as_str()) {
            return !grant.mode.lock_mode().compatible(item.mode.intention());
        }
        if g.is_within(i.as_str()) {
            return !grant.mode.intention().compatible(item.mode.lock_mode());
        }
        same_line(g, i) && !grant.mode.lock_mode().compatible(item.mode.lock_mode())
    }

    /// The blocking holders' reservations that stand in the way of some item.
    pub(super) fn holder_infos(&self, items: &[Item], blockers: &Blockers) -> Vec<HolderInfo> {
        let mut infos = BTreeSet::new();
        for owner in &blockers.holders {
            let o = &self.owners[owner];
            for g in &o.grants {
                let grant = &self.grants[g];
                if items.iter().any(|item| self.grant_blocks(grant, item)) {
                    infos.insert(HolderInfo {
                        owner: o.name.to_string(),
                        session: o.session,
                        reservation: grant.id,
                        resource: grant.path.clone(),
                        mode: grant.mode,
                    });
                }
            }
        }
        infos.into_iter().collect()
    }
}

/// Holders of `node` and waiters ahead of `key` that conflict with `mode` for `owner`.
pub(super) fn scan_node(
    node: &Node,
    owner: OwnerId,
    key: QueueKey,
    mode: LockMode,
    out: Option<&mut Blockers>,
) -> bool {
    let mut blocked = node.others_conflict(owner, mode);
    match out {
        None => {
            if blocked {
                return true;
            }
            if node.queue_may_conflict(mode) {
                return node.queue.range(..key).any(|(_, e)| e.owner != owner && !mode.compatible(e.mode));
            }
            false
        }
        Some(out) => {
            let mut covered = false;
            if node.queue_may_conflict(mode) {
                for (_, e) in node.queue.range(..key).rev() {
                    if e.owner != owner && !mode.compatible(e.mode) {
                        blocked = true;
                        out.waiters.insert(e.owner);
                        if !out.full && covers(e.mode, mode) {
                            covered = true;
                            break;
                        }
                    }
                }
            }
            // A covering waiter ahead conflicts with every holder here that this request
            // conflicts with, and waits for them itself (or through its own covering waiter).
            if !covered {
                node.conflicting_holders(owner, mode, &mut out.holders);
            }
            blocked
        }
    }
}

/// Two paths on one line of the hierarchy (one within the other), or overlapping row ranges
/// under the same parent.
pub(super) fn same_line(a: &ResourcePath, b: &ResourcePath) -> bool {
    if a.is_within(b.as_str()) || b.is_within(a.as_str()) {
        return true;
    }
    match (a.rows(), b.rows()) {
        (Some(ra), Some(rb)) => a.parent() == b.parent() && ra.overlaps(&rb),
        _ => false,
    }
}
