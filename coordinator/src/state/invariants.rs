//! `check_invariants`: the positive and negative space of the state, asserted after every
//! apply in debug builds and after every restore. After an apply a failure is a bug, so
//! [`State::check_invariants`] panics; a snapshot received from a peer is input, so restore
//! runs [`State::try_check_invariants`], which returns the broken invariant as an error and
//! never panics, indexes a map or follows a link it has not checked first.
//!
//! Checked: the lock table's slots, index and links are consistent; node counts equal a
//! recount from grants and requests; no two owners hold incompatible modes on a node or on
//! overlapping row ranges; counted resources within capacity unless it was lowered under
//! holders; tokens unique and not past `last_token`; every timer matches its record; every
//! wait-for edge set equals the request's blockers; the graph is acyclic; sessions, owners,
//! grants and requests point at each other consistently.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use qm_shared::limits::PRIORITY_MAX;
use qm_shared::{LockMode, Mode, RowRange};

use super::lock_table::{join_counts, ModeCounts, QueueEntry, QueueKey};
use super::{Blockers, OwnerId, ReservationId, State};

/// What an invariant checker returns: `Err` names the broken invariant.
pub(crate) type Checked = Result<(), String>;

/// `assert!` for invariant checkers: a false condition returns its message as an `Err`.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

/// `assert_eq!` for invariant checkers: unequal sides return both, and the message, as an `Err`.
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($arg:tt)+) => {
        match (&$left, &$right) {
            (left, right) => {
                if *left != *right {
                    return Err(format!("{}: {:?} != {:?}", format_args!($($arg)+), left, right));
                }
            }
        }
    };
    ($left:expr, $right:expr $(,)?) => {
        match (&$left, &$right) {
            (left, right) => {
                if *left != *right {
                    return Err(format!("{} != {}: {:?} != {:?}", stringify!($left), stringify!($right), left, right));
                }
            }
        }
    };
}

pub(crate) use {ensure, ensure_eq};

/// `map[key]` for invariant checkers: a missing key is a broken invariant, returned as an `Err`.
pub(crate) fn entry<'a, K: Ord + Debug, V>(map: &'a BTreeMap<K, V>, key: &K, what: &str) -> Result<&'a V, String> {
    map.get(key).ok_or_else(|| format!("{what} {key:?} is named but does not exist"))
}

impl State {
    /// Checks every invariant; panics naming the first broken one (a bug in `apply`).
    pub fn check_invariants(&self) {
        if let Err(broken) = self.try_check_invariants() {
            panic!("invariant broken: {broken}");
        }
    }

    /// Checks every invariant and returns the first broken one; never panics. The lock
    /// table's slots and the records' links are checked before anything follows them, so a
    /// state decoded from arbitrary bytes is refused rather than crashing the checker.
    pub fn try_check_invariants(&self) -> Checked {
        self.table.check_slots()?;
        self.check_records()?;
        self.check_nodes()?;
        self.check_conflicts()?;
        self.check_timers()?;
        self.check_policy_counts()?;
        self.tasks.check()?;
        self.check_jobs()?;
        self.check_wait_for()?;
        self.acl.check().map_err(|e| format!("token table: {e}"))
    }

    fn check_records(&self) -> Checked {
        let mut per_principal: BTreeMap<&str, u32> = BTreeMap::new();
        for s in self.sessions.values().filter(|s| !s.principal.is_empty()) {
            *per_principal.entry(s.principal.as_str()).or_default() += 1;
        }
        let kept: BTreeMap<&str, u32> = self.principal_sessions.iter().map(|(p, n)| (p.as_str(), *n)).collect();
        ensure_eq!(kept, per_principal, "open sessions per principal");
        ensure_eq!(self.principal_claims, self.claims_per_principal(), "claims per principal");
        for (id, s) in &self.sessions {
            ensure_eq!(s.id, *id);
            for (name, o) in &s.owners {
                let owner = entry(&self.owners, o, "owner")?;
                ensure_eq!(owner.session, *id, "session {id} lists owner {o} of another session");
                ensure_eq!(&*owner.name, name.as_str(), "session {id} lists {o} under another name");
            }
        }
        for (id, o) in &self.owners {
            ensure_eq!(o.id, *id);
            let session = entry(&self.sessions, &o.session, "session")?;
            ensure_eq!(session.owners.get(&*o.name), Some(id), "owner {id} missing from its session");
            ensure!(
                !o.grants.is_empty() || o.pending.is_some() || self.vacant_owners.contains(id),
                "owner {id} holds and waits for nothing and is not vacant"
            );
            let mut sum = 0u64;
            for g in &o.grants {
                let grant = entry(&self.grants, g, "grant")?;
                ensure_eq!(grant.owner, *id, "grant {g} of owner {id}");
                sum = sum.saturating_add(grant.granted_at);
            }
            ensure_eq!(o.granted_at_sum, sum, "granted_at sum of {id}");
            if let Some(r) = o.pending {
                let request = entry(&self.requests, &r, "request")?;
                ensure_eq!(request.owner, *id, "pending request {r} of owner {id}");
                #[cfg(debug_assertions)]
                {
                    let expect = super::wait_for::VictimMeta {
                        effective: request.effective,
                        grants: o.grants.len() as u64,
                        granted_at_sum: sum,
                        created_at: o.created_at,
                    };
                    ensure_eq!(self.wait_for.meta(*id), Some(expect), "victim meta of {id}");
                }
            }
        }
        ensure_eq!(self.sessions.values().map(|s| s.owners.len()).sum::<usize>(), self.owners.len(), "owner count");
        ensure!(self.vacant_owners.iter().all(|o| self.owners.contains_key(o)), "vacant owner unknown");
        let mut tokens = BTreeSet::new();
        for (id, g) in &self.grants {
            ensure_eq!(g.id, *id);
            let owner = entry(&self.owners, &g.owner, "owner")?;
            ensure!(owner.grants.contains(id), "{id} missing from its owner {}", g.owner);
            ensure_eq!(owner.session, g.session, "session of {id}");
            ensure!(g.token <= self.last_token, "token {} past last {}", g.token, self.last_token);
            ensure!(tokens.insert(g.token), "token {} granted twice", g.token);
            ensure!(g.expires_at <= g.cap_at, "lease past its lifetime cap");
        }
        for (id, r) in &self.requests {
            ensure_eq!(r.id, *id);
            ensure_eq!(entry(&self.owners, &r.owner, "owner")?.pending, Some(*id), "pending request of {}", r.owner);
            ensure!(r.effective >= r.priority, "{id} below its own priority");
            ensure!(r.effective <= PRIORITY_MAX, "{id} at priority {} past PRIORITY_MAX", r.effective);
        }
        Ok(())
    }

    /// Recounts every node from the grants and requests, by path text alone, and compares;
    /// checks the links between nodes, grants and requests.
    fn check_nodes(&self) -> Checked {
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
                let counts = e.held.entry(g.owner).or_default();
                counts[mode.index()] = counts[mode.index()].saturating_add(1);
                if n == d {
                    e.grants.insert(g.id);
                    e.units = e.units.saturating_add(u64::from(g.units));
                }
            }
            ensure_eq!(self.table.lookup(g.path.as_str()), Some(g.node), "{} points at another node", g.id);
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
                        t.2 = t.2.saturating_add(item.units);
                    }
                }
            }
            for (key, (mode, target, units)) in touches {
                let entry = QueueEntry { request: r.id, owner: r.owner, mode, target, units };
                expect.entry(key).or_default().queue.insert(r.key(), entry);
            }
            ensure_eq!(r.targets.len(), r.items.len(), "targets of {}", r.id);
            for (item, node) in r.items.iter().zip(&r.targets) {
                ensure_eq!(self.table.lookup(item.path.as_str()), Some(*node), "{} points at another node", r.id);
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
                ensure!(node.held.is_empty() && node.queue.is_empty(), "{} holds or queues unaccounted", node.path);
                ensure!(node.children > 0 || self.table.is_vacant(id), "{} is empty and not vacant", node.path);
            }
        }
        ensure!(expect.keys().all(|k| self.table.lookup(k).is_some()), "a held or queued path has no node");
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
            ensure_eq!(
                node.held.iter().map(|(o, c)| (*o, *c)).collect::<BTreeMap<_, _>>(),
                e.held,
                "held modes at {key}"
            );
            let mut total: ModeCounts = [0; 5];
            for counts in node.held.values() {
                ensure!(counts.iter().any(|c| *c > 0), "an owner holds nothing at {key}");
                for m in LockMode::ALL {
                    total[m.index()] = total[m.index()].saturating_add(counts[m.index()]);
                }
            }
            ensure_eq!(node.held_total, total, "held totals at {key}");
            ensure_eq!(node.grants.iter().copied().collect::<BTreeSet<_>>(), e.grants, "grants at {key}");
            ensure_eq!(node.units, e.units, "units at {key}");
            ensure_eq!(node.queue, e.queue, "queue at {key}");
            let mut queued: ModeCounts = [0; 5];
            for entry in node.queue.values() {
                queued[entry.mode.index()] += 1;
            }
            ensure_eq!(node.queued_total, queued, "queued totals at {key}");
            let targeted = node.queue.values().filter(|e| e.target).count();
            ensure_eq!(node.targeted as usize, targeted, "targeted at {key}");
            let targets = node.queue.values().filter(|e| e.target);
            let units: u64 = targets.clone().filter(|e| e.mode != LockMode::X).map(|e| u64::from(e.units)).sum();
            let exclusive = targets.filter(|e| e.mode == LockMode::X).count();
            ensure_eq!(
                (node.queued_units, node.queued_exclusive as usize),
                (units, exclusive),
                "queued units at {key}"
            );
            ensure!(e.rows.iter().all(|r| node.rows.contains_key(r)), "row children at {key}");
            for (range, child) in &node.rows {
                let c = self.table.try_node(*child).ok_or_else(|| format!("row child of {key} not in use"))?;
                ensure_eq!((c.path.rows(), c.parent), (Some(*range), Some(id)), "row child link at {key}");
            }
            let parent = match node.path.parent() {
                Some(p) => Some(self.table.lookup(p).ok_or_else(|| format!("the parent of {key} has no node"))?),
                None => None,
            };
            ensure_eq!(node.parent, parent, "parent link of {key}");
            ensure_eq!(node.children, children.get(&id).copied().unwrap_or(0), "child count of {key}");
        }
        Ok(())
    }

    /// No two owners hold incompatible modes anywhere.
    fn check_conflicts(&self) -> Checked {
        for (_, node) in self.table.iter() {
            let key = node.path.as_str();
            for (owner, mine) in &node.held {
                let others: ModeCounts = std::array::from_fn(|i| node.held_total[i] - mine[i]);
                for m in LockMode::ALL.iter().filter(|m| mine[m.index()] > 0) {
                    for o in LockMode::ALL.iter().filter(|o| others[o.index()] > 0) {
                        ensure!(m.compatible(*o), "{owner} holds {m} at {key} beside another owner's {o}");
                    }
                }
            }
            if self.capacity(key).is_some() {
                for g in node.grants.iter() {
                    let g = entry(&self.grants, g, "grant")?;
                    if g.mode != Mode::Exclusive {
                        continue;
                    }
                    for o in node.grants.iter() {
                        let other = entry(&self.grants, o, "grant")?;
                        ensure!(other.owner == g.owner, "exclusive beside another owner on counted {key}");
                    }
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
                                ensure!(ja.compatible(jb), "{oa} {ja} and {ob} {jb} on overlapping rows under {key}");
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn check_policy_counts(&self) -> Checked {
        let mut counts = [0u32; 3];
        for rc in self.resources.values() {
            counts[rc.policy as usize] += 1;
        }
        ensure_eq!(self.policy_counts, counts, "policy counts");
        Ok(())
    }

    fn check_timers(&self) -> Checked {
        let leases: BTreeSet<_> = self.grants.values().map(|g| (g.expires_at, g.id)).collect();
        ensure_eq!(leases, self.lease_timers, "lease timers");
        let graces: BTreeSet<_> = self.grants.values().filter_map(|g| g.preempt_deadline.map(|d| (d, g.id))).collect();
        ensure_eq!(graces, self.grace_timers, "grace timers");
        let sessions: BTreeSet<_> = self.sessions.values().map(|s| (s.expires_at, s.id)).collect();
        ensure_eq!(sessions, self.session_timers, "session timers");
        let waits: BTreeSet<_> = self.requests.values().filter_map(|r| r.timeout_at.map(|t| (t, r.id))).collect();
        ensure_eq!(waits, self.wait_timers, "wait timers");
        let aging: BTreeSet<_> = self.requests.values().filter_map(|r| r.next_aging_at.map(|t| (t, r.id))).collect();
        ensure_eq!(aging, self.aging_timers, "aging timers");
        Ok(())
    }

    /// Runs last: the blocker scan follows node links and records that the checks before it
    /// have vouched for.
    fn check_wait_for(&self) -> Checked {
        for (owner, targets) in self.wait_for.edges() {
            ensure!(entry(&self.owners, owner, "owner")?.pending.is_some(), "{owner} has edges but does not wait");
            for t in targets {
                ensure!(self.owners.contains_key(t), "edge to forgotten owner {t}");
            }
        }
        for r in self.requests.values() {
            let mut b = Blockers::edges();
            self.blockers(r.owner, r.key(), &r.items, super::Starts::Targets(&r.targets), &mut b);
            let expect: BTreeSet<_> = b.holders.union(&b.waiters).copied().collect();
            let actual = self.wait_for.targets(r.owner).cloned().unwrap_or_default();
            ensure_eq!(actual, expect, "wait-for edges of {} ({})", r.owner, r.id);
            ensure!(!expect.is_empty(), "{} waits although nothing blocks it", r.id);
        }
        if self.config.deadlock_detection {
            ensure!(self.wait_for.is_acyclic(), "wait-for graph has a cycle after apply");
        }
        Ok(())
    }
}
