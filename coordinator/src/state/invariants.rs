//! `check_invariants`: the positive and negative space of the state, asserted after every
//! apply in debug builds and after every restore. A failure here is a bug, so it panics.
//!
//! Checked: node counts equal a recount from grants and requests; no two owners hold
//! incompatible modes on a node or on overlapping row ranges; counted resources within
//! capacity unless it was lowered under holders; tokens unique and not past `last_token`;
//! every timer matches its record; every wait-for edge set equals the request's blockers;
//! the graph is acyclic; sessions, owners, grants and requests point at each other
//! consistently.

use std::collections::{BTreeMap, BTreeSet};

use qm_shared::{LockMode, Mode, RowRange};

use super::lock_table::{join_counts, ModeCounts, QueueEntry, QueueKey};
use super::{Blockers, OwnerId, ReservationId, State};

impl State {
    pub fn check_invariants(&self) {
        self.check_records();
        self.check_nodes();
        self.check_conflicts();
        self.check_timers();
        self.check_policy_counts();
        self.tasks.check();
        self.check_jobs();
        self.check_wait_for();
        if let Err(e) = self.acl.check() {
            panic!("token table: {e}");
        }
    }

    fn check_records(&self) {
        for (id, s) in &self.sessions {
            assert_eq!(s.id, *id);
            for (name, o) in &s.owners {
                assert_eq!(self.owners[o].session, *id, "session {id} lists owner {o} of another session");
                assert_eq!(&*self.owners[o].name, name.as_str(), "session {id} lists {o} under another name");
            }
        }
        for (id, o) in &self.owners {
            assert_eq!(o.id, *id);
            assert_eq!(self.sessions[&o.session].owners.get(&*o.name), Some(id), "owner {id} missing from its session");
            assert!(
                !o.grants.is_empty() || o.pending.is_some() || self.vacant_owners.contains(id),
                "owner {id} holds and waits for nothing and is not vacant"
            );
            for g in &o.grants {
                assert_eq!(self.grants[g].owner, *id);
            }
            let sum: u64 = o.grants.iter().map(|g| self.grants[g].granted_at).sum();
            assert_eq!(o.granted_at_sum, sum, "granted_at sum of {id}");
            #[cfg(debug_assertions)]
            if let Some(r) = o.pending {
                let expect = super::wait_for::VictimMeta {
                    effective: self.requests[&r].effective,
                    grants: o.grants.len() as u64,
                    granted_at_sum: sum,
                    created_at: o.created_at,
                };
                assert_eq!(self.wait_for.meta(*id), Some(expect), "victim meta of {id}");
            }
            if let Some(r) = o.pending {
                assert_eq!(self.requests[&r].owner, *id);
            }
        }
        assert_eq!(self.sessions.values().map(|s| s.owners.len()).sum::<usize>(), self.owners.len());
        assert!(self.vacant_owners.iter().all(|o| self.owners.contains_key(o)), "vacant owner unknown");
        let mut tokens = BTreeSet::new();
        for (id, g) in &self.grants {
            assert_eq!(g.id, *id);
            assert!(self.owners[&g.owner].grants.contains(id));
            assert_eq!(self.owners[&g.owner].session, g.session);
            assert!(g.token <= self.last_token, "token {} past last {}", g.token, self.last_token);
            assert!(tokens.insert(g.token), "token {} granted twice", g.token);
            assert!(g.expires_at <= g.cap_at, "lease past its lifetime cap");
        }
        for (id, r) in &self.requests {
            assert_eq!(r.id, *id);
            assert_eq!(self.owners[&r.owner].pending, Some(*id));
            assert!(r.effective >= r.priority);
        }
    }

    /// Recounts every node from the grants and requests, by path text alone, and compares;
    /// checks the links between nodes, grants and requests.
    fn check_nodes(&self) {
        #[derive(Default, Debug)]
        struct Expect {
            held: BTreeMap<OwnerId, ModeCounts>,
            grants: BTreeSet<ReservationId>,
            units: u64,
            queue: BTreeMap<QueueKey, QueueEntry>,
            rows: BTreeSet<RowRange>,
        }
        let mut expect: BTreeMap<String, Expect> = BTreeMap::new();
        for g in self.grants.values() {
            let d = g.path.depth();
            for n in 1..=d {
                let mode = if n == d { g.mode.lock_mode() } else { g.mode.intention() };
                let e = expect.entry(g.path.prefix(n).to_string()).or_default();
                e.held.entry(g.owner).or_default()[mode.index()] += 1;
                if n == d {
                    e.grants.insert(g.id);
                    e.units += u64::from(g.units);
                }
            }
            assert_eq!(self.table.lookup(g.path.as_str()), Some(g.node), "{} points at another node", g.id);
        }
        for r in self.requests.values() {
            // One entry per touched node, with the join of the modes the items need there.
            let mut touches: BTreeMap<String, (LockMode, bool, u32)> = BTreeMap::new();
            for item in &r.items {
                let d = item.path.depth();
                for n in 1..=d {
                    let mode = if n == d { item.mode.lock_mode() } else { item.mode.intention() };
                    let t = touches.entry(item.path.prefix(n).to_string()).or_insert((mode, n == d, 0));
                    t.0 = t.0.join(mode);
                    t.1 |= n == d;
                    if n == d && item.mode == Mode::Shared {
                        t.2 += item.units;
                    }
                }
            }
            for (key, (mode, target, units)) in touches {
                let entry = QueueEntry { request: r.id, owner: r.owner, mode, target, units };
                expect.entry(key).or_default().queue.insert(r.key(), entry);
            }
            assert_eq!(r.targets.len(), r.items.len());
            for (item, node) in r.items.iter().zip(&r.targets) {
                assert_eq!(self.table.lookup(item.path.as_str()), Some(*node), "{} points at another node", r.id);
            }
        }
        let paths: Vec<_> = self
            .grants
            .values()
            .map(|g| g.path.clone())
            .chain(self.requests.values().flat_map(|r| r.items.iter().map(|i| i.path.clone())))
            .collect();
        for path in paths {
            if let (Some(range), Some(parent)) = (path.rows(), path.parent()) {
                expect.entry(parent.to_string()).or_default().rows.insert(range);
            }
            // Every prefix of a held or queued path is a node.
            for n in 1..path.depth() {
                expect.entry(path.prefix(n).to_string()).or_default();
            }
        }
        // Nodes beyond the recount are vacant: empty, and noted for the next collect (or the
        // ancestors of such).
        for (id, node) in self.table.iter() {
            if !expect.contains_key(node.path.as_str()) {
                assert!(node.held.is_empty() && node.queue.is_empty(), "{} holds or queues unaccounted", node.path);
                assert!(node.children > 0 || self.table.is_vacant(id), "{} is empty and not vacant", node.path);
            }
        }
        assert!(expect.keys().all(|k| self.table.lookup(k).is_some()), "a held or queued path has no node");
        let mut children: BTreeMap<_, u32> = BTreeMap::new();
        for (_, node) in self.table.iter() {
            if let Some(p) = node.parent {
                *children.entry(p).or_default() += 1;
            }
        }
        let vacant = Expect::default();
        for (id, node) in self.table.iter() {
            let key = node.path.as_str();
            let e = expect.get(key).unwrap_or(&vacant);
            assert_eq!(
                node.held.iter().map(|(o, c)| (*o, *c)).collect::<BTreeMap<_, _>>(),
                e.held,
                "held modes at {key}"
            );
            let mut total: ModeCounts = [0; 5];
            for counts in node.held.values() {
                assert!(counts.iter().any(|c| *c > 0), "an owner holds nothing at {key}");
                for m in LockMode::ALL {
                    total[m.index()] += counts[m.index()];
                }
            }
            assert_eq!(node.held_total, total, "held totals at {key}");
            assert_eq!(node.grants.iter().copied().collect::<BTreeSet<_>>(), e.grants, "grants at {key}");
            assert_eq!(node.units, e.units, "units at {key}");
            assert_eq!(node.queue, e.queue, "queue at {key}");
            let mut queued: ModeCounts = [0; 5];
            for entry in node.queue.values() {
                queued[entry.mode.index()] += 1;
            }
            assert_eq!(node.queued_total, queued, "queued totals at {key}");
            assert_eq!(node.targeted as usize, node.queue.values().filter(|e| e.target).count(), "targeted at {key}");
            let targets = node.queue.values().filter(|e| e.target);
            let units: u64 = targets.clone().filter(|e| e.mode != LockMode::X).map(|e| u64::from(e.units)).sum();
            let exclusive = targets.filter(|e| e.mode == LockMode::X).count();
            assert_eq!(
                (node.queued_units, node.queued_exclusive as usize),
                (units, exclusive),
                "queued units at {key}"
            );
            assert!(e.rows.iter().all(|r| node.rows.contains_key(r)), "row children at {key}");
            for (range, child) in &node.rows {
                let c = self.table.node(*child);
                assert_eq!((c.path.rows(), c.parent), (Some(*range), Some(id)), "row child link at {key}");
            }
            let parent = node.path.parent().map(|p| self.table.lookup(p).expect("parent node exists"));
            assert_eq!(node.parent, parent, "parent link of {key}");
            assert_eq!(node.children, children.get(&id).copied().unwrap_or(0), "child count of {key}");
        }
    }

    /// No two owners hold incompatible modes anywhere.
    fn check_conflicts(&self) {
        for (_, node) in self.table.iter() {
            let key = node.path.as_str();
            for (owner, mine) in &node.held {
                let others: ModeCounts = std::array::from_fn(|i| node.held_total[i] - mine[i]);
                for m in LockMode::ALL.iter().filter(|m| mine[m.index()] > 0) {
                    for o in LockMode::ALL.iter().filter(|o| others[o.index()] > 0) {
                        assert!(m.compatible(*o), "{owner} holds {m} at {key} beside another owner's {o}");
                    }
                }
            }
            if self.capacity(key).is_some() {
                for g in node.grants.iter().map(|g| &self.grants[g]).filter(|g| g.mode == Mode::Exclusive) {
                    assert!(
                        node.grants.iter().all(|o| self.grants[o].owner == g.owner),
                        "exclusive beside another owner on counted {key}"
                    );
                }
            }
            // Overlapping row ranges under this node.
            let ranges: Vec<_> = node.rows.iter().collect();
            for (i, (a, ida)) in ranges.iter().enumerate() {
                for (b, idb) in ranges[i + 1..].iter().take_while(|(b, _)| b.lo < a.hi) {
                    if !a.overlaps(b) {
                        continue;
                    }
                    let (na, nb) = (self.table.node(**ida), self.table.node(**idb));
                    for (oa, ma) in &na.held {
                        for (ob, mb) in &nb.held {
                            if oa == ob {
                                continue;
                            }
                            if let (Some(ja), Some(jb)) = (join_counts(ma), join_counts(mb)) {
                                assert!(ja.compatible(jb), "{oa} {ja} and {ob} {jb} on overlapping rows under {key}");
                            }
                        }
                    }
                }
            }
        }
    }

    fn check_policy_counts(&self) {
        let mut counts = [0u32; 3];
        for rc in self.resources.values() {
            counts[rc.policy as usize] += 1;
        }
        assert_eq!(self.policy_counts, counts, "policy counts");
    }

    fn check_timers(&self) {
        let leases: BTreeSet<_> = self.grants.values().map(|g| (g.expires_at, g.id)).collect();
        assert_eq!(leases, self.lease_timers, "lease timers");
        let graces: BTreeSet<_> = self.grants.values().filter_map(|g| g.preempt_deadline.map(|d| (d, g.id))).collect();
        assert_eq!(graces, self.grace_timers, "grace timers");
        let sessions: BTreeSet<_> = self.sessions.values().map(|s| (s.expires_at, s.id)).collect();
        assert_eq!(sessions, self.session_timers, "session timers");
        let waits: BTreeSet<_> = self.requests.values().filter_map(|r| r.timeout_at.map(|t| (t, r.id))).collect();
        assert_eq!(waits, self.wait_timers, "wait timers");
        let aging: BTreeSet<_> = self.requests.values().filter_map(|r| r.next_aging_at.map(|t| (t, r.id))).collect();
        assert_eq!(aging, self.aging_timers, "aging timers");
    }

    fn check_wait_for(&self) {
        for (owner, targets) in self.wait_for.edges() {
            assert!(self.owners[owner].pending.is_some(), "{owner} has edges but does not wait");
            for t in targets {
                assert!(self.owners.contains_key(t), "edge to forgotten owner {t}");
            }
        }
        for r in self.requests.values() {
            let mut b = Blockers::edges();
            self.blockers(r.owner, r.key(), &r.items, super::Starts::Targets(&r.targets), &mut b);
            let expect: BTreeSet<_> = b.holders.union(&b.waiters).copied().collect();
            let actual = self.wait_for.targets(r.owner).cloned().unwrap_or_default();
            assert_eq!(actual, expect, "wait-for edges of {} ({})", r.owner, r.id);
            assert!(!expect.is_empty(), "{} waits although nothing blocks it", r.id);
        }
        if self.config.deadlock_detection {
            assert!(self.wait_for.is_acyclic(), "wait-for graph has a cycle after apply");
        }
    }
}
