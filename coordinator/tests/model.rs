//! Model-based property test of the pure core.
//!
//! Random command sequences run against the real [`State`] and a twin that is snapshotted
//! and restored at random points. A small reference model, written from the definitions in
//! DESIGN.md and sharing no code with the lock table, watches every response and effect and
//! checks after every apply:
//!
//! * no two conflicting holders ever coexist (own statement of the conflict rules, counted
//!   capacity included), and the holders the effects announced are exactly the state's;
//! * fencing tokens strictly increase per resource;
//! * the wait-for graph equals the model's own (holders and conflicting waiters ahead), has no
//!   cycle after any apply, and every deadlock victim lay on a real cycle: the same command on
//!   a copy with detection off leaves a cycle through it;
//! * no waiter at the top priority is overtaken by a later conflicting request, and aging
//!   lifts every waiter at least as fast as the configured rate, so nothing waits past the
//!   aging bound while its resource keeps being granted;
//! * progress: a request is refused as blocked only when something blocks it (or, as its own
//!   deadlock, only when its owner's own units fill the resource), and no waiter is left waiting
//!   for nothing after an apply (every waiter has a conflicting holder or a conflicting waiter
//!   ahead), so a core that queued or refused grantable requests fails;
//! * the twin, restored from snapshots midway, gives the same responses, effects and bytes.
//!
//! 10,000 cases run in the normal test run (`QM_MODEL_CASES` overrides); the seed is fixed so
//! a failure reproduces, and `QM_MODEL_SEED` picks another.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as PropConfig, RngSeed, TestRunner};

use qm_coordinator::state::{
    Acquire, Command, Config, Effect, GrantInfo, Item, Policy, Refusal, Response, SessionId, State, Wait, WaiterInfo,
};
use qm_shared::limits::PRIORITY_MAX;
use qm_shared::{Mode, ResourcePath};

const PATHS: &[&str] = &[
    "pg:db",
    "pg:db/table:t1",
    "pg:db/table:t2",
    "pg:db/table:t1/rows:[0,10)",
    "pg:db/table:t1/rows:[5,15)",
    "pg:db/table:t1/rows:[10,20)",
    "pg:db/table:t2/rows:[0,100)",
    "gpu:g",
    "api:x",
];
const OWNERS: &[&str] = &["a", "b", "c", "d", "e"];
const PRIORITIES: &[u32] = &[0, 100, 500, 900, 1000];
/// Counted resources of the universe and their initial capacity (`Op::Redeclare` changes it).
const CAPACITY: &[(&str, u32)] = &[("gpu:g", 2)];

/// Declared capacities as the harness last declared them.
type Caps = BTreeMap<String, u32>;

#[derive(Clone, Debug)]
enum Op {
    Acquire {
        session: usize,
        owner: usize,
        items: Vec<(usize, bool, u32)>,
        wait: u8,
        priority: usize,
        lease_s: u64,
    },
    Release {
        pick: Index,
    },
    Cancel {
        pick: Index,
    },
    Extend {
        pick: Index,
        lease_s: u64,
    },
    KeepAlive {
        session: usize,
    },
    Close {
        session: usize,
    },
    Open {
        ttl_s: u64,
    },
    Advance {
        ms: u64,
    },
    Restart,
    SnapshotTwin,
    /// Redeclare the counted resource with another capacity and policy (possibly below what
    /// is held, possibly below what a waiter needs).
    Redeclare {
        capacity: u32,
        policy: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let item = (0..PATHS.len(), any::<bool>(), 1u32..=2);
    prop_oneof![
        10 => (0..3usize, 0..OWNERS.len(), prop::collection::vec(item, 1..=3), 0u8..4, 0..PRIORITIES.len(), 1u64..=30)
            .prop_map(|(session, owner, items, wait, priority, lease_s)| Op::Acquire { session, owner, items, wait, priority, lease_s }),
        4 => any::<Index>().prop_map(|pick| Op::Release { pick }),
        1 => any::<Index>().prop_map(|pick| Op::Cancel { pick }),
        1 => (any::<Index>(), 1u64..=30).prop_map(|(pick, lease_s)| Op::Extend { pick, lease_s }),
        2 => (0..3usize).prop_map(|session| Op::KeepAlive { session }),
        1 => (0..3usize).prop_map(|session| Op::Close { session }),
        1 => (1u64..=20).prop_map(|ttl_s| Op::Open { ttl_s }),
        4 => (0u64..8_000).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Restart),
        1 => Just(Op::SnapshotTwin),
        1 => (1u32..=3, 0u8..3).prop_map(|(capacity, policy)| Op::Redeclare { capacity, policy }),
    ]
}

/// Whether two resource claims by different owners conflict, stated from the definitions:
/// same resource or overlapping row ranges under one parent: unless both shared; an ancestor
/// and a descendant: when the ancestor is exclusive, or it is shared and the descendant
/// exclusive; unrelated paths never.
fn claims_conflict(a: &str, am: Mode, b: &str, bm: Mode) -> bool {
    let (pa, pb) = (ResourcePath::parse(a).unwrap(), ResourcePath::parse(b).unwrap());
    let both_shared = am == Mode::Shared && bm == Mode::Shared;
    if a == b {
        return !both_shared;
    }
    if let (Some(ra), Some(rb)) = (pa.rows(), pb.rows()) {
        if pa.parent() == pb.parent() && ra.lo < rb.hi && rb.lo < ra.hi {
            return !both_shared;
        }
    }
    let below = |x: &str, y: &str| x.starts_with(y) && x.as_bytes().get(y.len()) == Some(&b'/');
    if below(b, a) {
        return am == Mode::Exclusive || (am == Mode::Shared && bm == Mode::Exclusive);
    }
    if below(a, b) {
        return bm == Mode::Exclusive || (bm == Mode::Shared && am == Mode::Exclusive);
    }
    false
}

/// The five lock modes, with the model's own statement of the compatibility matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms)]
enum Lm {
    IS,
    IX,
    S,
    SIX,
    X,
}

impl Lm {
    fn of(mode: Mode) -> Lm {
        if mode == Mode::Shared {
            Lm::S
        } else {
            Lm::X
        }
    }

    fn intention(mode: Mode) -> Lm {
        if mode == Mode::Shared {
            Lm::IS
        } else {
            Lm::IX
        }
    }

    fn compatible(self, other: Lm) -> bool {
        //            IS     IX     S      SIX    X
        const M: [[bool; 5]; 5] = [
            [true, true, true, true, false],     // IS
            [true, true, false, false, false],   // IX
            [true, false, true, false, false],   // S
            [true, false, false, false, false],  // SIX
            [false, false, false, false, false], // X
        ];
        M[self as usize][other as usize]
    }

    /// The first mode, weakest first, that conflicts with everything either conflicts with.
    fn join(self, other: Lm) -> Lm {
        *[Lm::IS, Lm::IX, Lm::S, Lm::SIX, Lm::X]
            .iter()
            .find(|c| c.covers(self) && c.covers(other))
            .expect("X covers everything")
    }

    /// Conflicts with at least everything `m` conflicts with.
    fn covers(self, m: Lm) -> bool {
        [Lm::IS, Lm::IX, Lm::S, Lm::SIX, Lm::X].iter().all(|x| m.compatible(*x) || !self.compatible(*x))
    }
}

/// The nodes a claim lies on, root first, with its mode there and whether it names the node.
fn claim_nodes(item: &Item) -> Vec<(String, Lm, bool)> {
    let d = item.path.depth();
    (1..=d)
        .map(|n| {
            let mode = if n == d { Lm::of(item.mode) } else { Lm::intention(item.mode) };
            (item.path.prefix(n).to_string(), mode, n == d)
        })
        .collect()
}

/// Whether `item` names a counted resource without enough free units for it (exclusive
/// needs the whole capacity).
fn short_of_units(caps: &Caps, grants: &[GrantInfo], item: &Item) -> bool {
    let Some(cap) = capacity(caps, item.path.as_str()) else { return false };
    let used: u32 = grants.iter().filter(|g| g.resource == item.path).map(|g| g.units).sum();
    let need = if item.mode == Mode::Exclusive { cap } else { item.units };
    used + need > cap
}

/// Who a request of `me` with queue key `key` (priority from the top, then arrival) waits for:
/// every other owner holding a conflicting claim (or filling a counted resource it is short
/// of), and every other owner queued ahead with a conflicting claim (or on the same counted
/// resource).
fn blockers(
    me: &OwnerKey,
    key: (u32, u64),
    items: &[Item],
    grants: &[GrantInfo],
    waiters: &[WaiterInfo],
    caps: &Caps,
) -> BTreeSet<OwnerKey> {
    let mut out = BTreeSet::new();
    for item in items {
        let path = item.path.as_str();
        let counted = capacity(caps, path);
        let short = short_of_units(caps, grants, item);
        for g in grants {
            let other: OwnerKey = (g.session, g.owner.to_string());
            let full = short && g.resource == item.path;
            if other != *me && (full || claims_conflict(path, item.mode, g.resource.as_str(), g.mode)) {
                out.insert(other);
            }
        }
        for x in waiters {
            let other: OwnerKey = (x.session, x.owner.clone());
            let ahead = (PRIORITY_MAX - x.effective_priority, x.seq) < key;
            if other == *me || !ahead {
                continue;
            }
            let conflict = x.items.iter().any(|xi| {
                claims_conflict(path, item.mode, xi.path.as_str(), xi.mode)
                    || (counted.is_some() && xi.path == item.path)
            });
            if conflict {
                out.insert(other);
            }
        }
    }
    out
}

/// Whether an item asks more units than its counted resource has at all (it can never fit).
fn beyond_capacity(caps: &Caps, item: &Item) -> bool {
    capacity(caps, item.path.as_str()).is_some_and(|cap| item.units > cap)
}

fn capacity(caps: &Caps, path: &str) -> Option<u32> {
    caps.get(path).copied()
}

type OwnerKey = (SessionId, String);
/// A queue entry as the model sees it: (priority-then-arrival key, owner, mode, names the node).
type QueueEntry = ((u32, u64), OwnerKey, Lm, bool);

struct Harness {
    state: State,
    twin: State,
    index: u64,
    now: u64,
    sessions: Vec<SessionId>,
    /// Holders as announced by effects: reservation id → grant.
    holders: BTreeMap<u64, GrantInfo>,
    last_token: BTreeMap<String, u64>,
    config: Config,
    caps: Caps,
}

impl Harness {
    fn new() -> Harness {
        let config = Config { aging_interval_ms: 1_000, aging_step: 100, ..Config::default() };
        let mut h = Harness {
            state: State::new(config.clone()),
            twin: State::new(config.clone()),
            index: 0,
            now: 0,
            sessions: Vec::new(),
            holders: BTreeMap::new(),
            last_token: BTreeMap::new(),
            config,
            caps: CAPACITY.iter().map(|(p, c)| (p.to_string(), *c)).collect(),
        };
        for (path, cap) in CAPACITY {
            let path = ResourcePath::parse(path).unwrap();
            h.apply(Command::DeclareResource { path, capacity: Some(*cap), policy: Policy::Preempt, grace_ms: 2_000 });
        }
        h.apply(Command::DeclareResource {
            path: ResourcePath::parse("api:x").unwrap(),
            capacity: None,
            policy: Policy::Inherit,
            grace_ms: 1_000,
        });
        for _ in 0..3 {
            h.open(20_000);
        }
        h
    }

    fn open(&mut self, ttl_ms: u64) {
        if let Response::SessionOpened { session, .. } =
            self.apply(Command::OpenSession { label: "t".into(), ttl_ms, principal: String::new() })
        {
            self.sessions.push(session);
        }
    }

    fn session(&self, i: usize) -> SessionId {
        self.sessions[self.sessions.len().saturating_sub(3) + i % self.sessions.len().min(3)]
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Acquire { session, owner, items, wait, priority, lease_s } => {
                let mut seen = BTreeSet::new();
                let items: Vec<Item> = items
                    .into_iter()
                    .filter(|(p, _, _)| seen.insert(*p))
                    .map(|(p, exclusive, units)| Item {
                        path: ResourcePath::parse(PATHS[p]).unwrap(),
                        mode: if exclusive { Mode::Exclusive } else { Mode::Shared },
                        units,
                    })
                    .collect();
                let wait = match wait {
                    0 => Wait::Try,
                    1 => Wait::Wait { timeout_ms: Some(3_000) },
                    _ => Wait::Wait { timeout_ms: None },
                };
                let session = self.session(session);
                let owner = OWNERS[owner].to_string();
                self.apply(Command::Acquire(Acquire {
                    session,
                    owner,
                    items,
                    wait,
                    priority: PRIORITIES[priority],
                    lease_ms: lease_s * 1_000,
                }));
            }
            Op::Release { pick } => {
                let grants: Vec<GrantInfo> = self.state.grants().collect();
                if !grants.is_empty() {
                    let g = pick.get(&grants);
                    self.apply(Command::Release { session: g.session, reservation: g.id });
                }
            }
            Op::Cancel { pick } => {
                let waiters: Vec<WaiterInfo> = self.state.waiters().collect();
                if !waiters.is_empty() {
                    let w = pick.get(&waiters);
                    self.apply(Command::Cancel { session: w.session, request: w.request });
                }
            }
            Op::Extend { pick, lease_s } => {
                let grants: Vec<GrantInfo> = self.state.grants().collect();
                if !grants.is_empty() {
                    let g = pick.get(&grants);
                    self.apply(Command::Extend { session: g.session, reservation: g.id, lease_ms: lease_s * 1_000 });
                }
            }
            Op::KeepAlive { session } => {
                let session = self.session(session);
                self.apply(Command::KeepAlive { session });
            }
            Op::Close { session } => {
                let session = self.session(session);
                self.apply(Command::CloseSession { session });
                self.open(20_000);
            }
            Op::Open { ttl_s } => self.open(ttl_s * 1_000),
            Op::Advance { ms } => {
                self.now += ms;
                self.apply(Command::Tick);
            }
            Op::Restart => {
                self.apply(Command::RestartLeases);
            }
            Op::Redeclare { capacity, policy } => {
                let policy = [Policy::None, Policy::Preempt, Policy::Inherit][usize::from(policy)];
                let (path, _) = CAPACITY[0];
                self.caps.insert(path.to_string(), capacity);
                let path = ResourcePath::parse(path).unwrap();
                self.apply(Command::DeclareResource { path, capacity: Some(capacity), policy, grace_ms: 2_000 });
            }
            Op::SnapshotTwin => {
                let bytes = self.twin.snapshot();
                self.twin = State::restore(&bytes).expect("restore");
                assert_eq!(self.twin.snapshot(), bytes, "restore round-trips byte for byte");
            }
        }
    }

    fn apply(&mut self, cmd: Command) -> Response {
        self.index += 1;
        let before_waiters: Vec<WaiterInfo> = self.state.waiters().collect();
        let shadow = matches!(cmd, Command::Acquire(_)).then(|| {
            let mut copy = State::restore(&self.state.snapshot()).expect("restore");
            let config = Config { deadlock_detection: false, ..copy.config().clone() };
            copy.apply(self.index, self.now, Command::Configure { config });
            copy
        });
        // What a try would wait for, judged before the apply: a new request is queued behind
        // every waiter of its priority or above.
        let acquire_blockers = match &cmd {
            Command::Acquire(a) => {
                let grants: Vec<GrantInfo> = self.state.grants().collect();
                let key = (PRIORITY_MAX - a.priority, u64::MAX);
                let me = (a.session, a.owner.clone());
                let impossible = a.items.iter().any(|i| beyond_capacity(&self.caps, i));
                let short = a.items.iter().any(|i| short_of_units(&self.caps, &grants, i));
                Some((blockers(&me, key, &a.items, &grants, &before_waiters, &self.caps), impossible, short))
            }
            _ => None,
        };
        let (response, effects) = self.state.apply(self.index, self.now, cmd.clone());
        let (twin_response, twin_effects) = self.twin.apply(self.index, self.now, cmd.clone());
        assert_eq!(response, twin_response, "twin diverged on {cmd:?}");
        assert_eq!(effects, twin_effects, "twin effects diverged on {cmd:?}");

        if let Some((blockers, impossible, short)) = acquire_blockers {
            match &response {
                Response::Refused(Refusal::Conflict { .. }) => {
                    assert!(!blockers.is_empty() || impossible, "a try nothing blocks was refused: {cmd:?}");
                }
                // Waiting only for its own owner's units is the one deadlock a lone request
                // can be refused for.
                Response::Refused(Refusal::Deadlock { cycle_len: 1, .. }) => {
                    assert!(short, "refused as its own deadlock with units to spare: {cmd:?}");
                }
                _ => {}
            }
        }
        self.check_progress();
        self.check_effects(&effects, &before_waiters);
        self.check_holders(&effects);
        self.check_wait_for();
        self.check_victims(&effects, shadow, cmd.clone());
        if matches!(cmd, Command::Tick) {
            self.check_aging();
        }
        response
    }

    /// Effects announce every grant and every end of one; tokens increase per resource;
    /// a top-priority waiter is never overtaken by a later conflicting grant.
    fn check_effects(&mut self, effects: &[Effect], before: &[WaiterInfo]) {
        for e in effects {
            match e {
                Effect::Granted { grant, request } => {
                    let path = grant.resource.as_str().to_string();
                    let last = self.last_token.get(&path).copied().unwrap_or(0);
                    assert!(grant.fencing_token > last, "token {} on {path} after {last}", grant.fencing_token);
                    self.last_token.insert(path, grant.fencing_token);
                    self.holders.insert(grant.id.0, grant.clone());

                    let seq = request.and_then(|r| before.iter().find(|w| w.request == r).map(|w| w.seq));
                    for w in before.iter().filter(|w| w.effective_priority == PRIORITY_MAX) {
                        let still = self.state.waiters().any(|x| x.request == w.request);
                        let earlier = seq.is_none_or(|s| w.seq < s);
                        if still && earlier && (*w.owner != *grant.owner || w.session != grant.session) {
                            for item in &w.items {
                                let conflicts =
                                    claims_conflict(item.path.as_str(), item.mode, grant.resource.as_str(), grant.mode);
                                // On a counted resource a later grant may take free units, but
                                // never ones the earlier waiter needs.
                                let competes = match capacity(&self.caps, item.path.as_str()) {
                                    Some(cap) if item.path == grant.resource => {
                                        let used: u32 = self
                                            .holders
                                            .values()
                                            .filter(|g| g.resource == item.path)
                                            .map(|g| g.units)
                                            .sum();
                                        let need = if item.mode == Mode::Exclusive { cap } else { item.units };
                                        used + need > cap
                                    }
                                    _ => false,
                                };
                                assert!(
                                    !conflicts && !competes,
                                    "{} overtook top-priority waiter {} on {}",
                                    grant.owner,
                                    w.request,
                                    item.path
                                );
                            }
                        }
                    }
                }
                Effect::Released { reservation, .. }
                | Effect::Expired { reservation, .. }
                | Effect::Revoked { reservation, .. } => {
                    assert!(self.holders.remove(&reservation.0).is_some(), "end of unknown {reservation}");
                }
                _ => {}
            }
        }
    }

    /// The announced holders are the state's, and no two of them conflict.
    fn check_holders(&self, effects: &[Effect]) {
        let actual: BTreeMap<u64, GrantInfo> = self.state.grants().map(|g| (g.id.0, g)).collect();
        let announced: BTreeSet<u64> = self.holders.keys().copied().collect();
        assert_eq!(actual.keys().copied().collect::<BTreeSet<_>>(), announced, "holders differ from effects");
        let grants: Vec<&GrantInfo> = actual.values().collect();
        for (i, a) in grants.iter().enumerate() {
            for b in &grants[i + 1..] {
                if a.owner == b.owner && a.session == b.session {
                    continue;
                }
                assert!(
                    !claims_conflict(a.resource.as_str(), a.mode, b.resource.as_str(), b.mode),
                    "conflicting holders: {}@{} {:?} {} and {}@{} {:?} {}",
                    a.owner,
                    a.session,
                    a.mode,
                    a.resource,
                    b.owner,
                    b.session,
                    b.mode,
                    b.resource
                );
            }
        }
        // A capacity may be lowered under its holders; a grant never goes past it.
        let granted: BTreeSet<&str> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Granted { grant, .. } => Some(grant.resource.as_str()),
                _ => None,
            })
            .collect();
        for (path, cap) in &self.caps {
            if granted.contains(path.as_str()) {
                let used: u32 = grants.iter().filter(|g| g.resource.as_str() == path).map(|g| g.units).sum();
                assert!(used <= *cap, "a grant took {path} to {used} units of {cap}");
            }
        }
    }

    /// The full wait-for relation: holders whose claims conflict (or fill a counted
    /// resource) and every conflicting waiter ahead in priority-then-arrival order. Cycles
    /// are judged on this graph.
    fn full_edges(state: &State, caps: &Caps) -> BTreeSet<(OwnerKey, OwnerKey)> {
        let grants: Vec<GrantInfo> = state.grants().collect();
        let waiters: Vec<WaiterInfo> = state.waiters().collect();
        let mut edges = BTreeSet::new();
        for w in &waiters {
            let me: OwnerKey = (w.session, w.owner.clone());
            let key = (PRIORITY_MAX - w.effective_priority, w.seq);
            for other in blockers(&me, key, &w.items, &grants, &waiters, caps) {
                edges.insert((me.clone(), other));
            }
        }
        edges
    }

    /// The edges the core keeps, computed per node from the holdings and the requests' queue
    /// entries: the conflicting waiters ahead up to the nearest one whose mode conflicts with
    /// everything the waiter's does, and the conflicting holders only where no such covering
    /// waiter exists (it waits for them itself); among a counted resource's own waiters the
    /// nearest whose units no longer fit beside its own, and all of its holders when it is
    /// short of units.
    fn reduced_edges(state: &State, caps: &Caps) -> BTreeSet<(OwnerKey, OwnerKey)> {
        let grants: Vec<GrantInfo> = state.grants().collect();
        let waiters: Vec<WaiterInfo> = state.waiters().collect();
        let key = |w: &WaiterInfo| (PRIORITY_MAX - w.effective_priority, w.seq);
        // Queue entries per node: (key, owner, joined mode, names the node).
        let mut queues: BTreeMap<String, Vec<QueueEntry>> = BTreeMap::new();
        for w in &waiters {
            let mut touches: BTreeMap<String, (Lm, bool)> = BTreeMap::new();
            for item in &w.items {
                for (node, mode, target) in claim_nodes(item) {
                    let t = touches.entry(node).or_insert((mode, target));
                    t.0 = t.0.join(mode);
                    t.1 |= target;
                }
            }
            for (node, (mode, target)) in touches {
                queues.entry(node).or_default().push((key(w), (w.session, w.owner.clone()), mode, target));
            }
        }
        // Holdings per node: (owner, mode there).
        let mut held: BTreeMap<String, Vec<(OwnerKey, Lm)>> = BTreeMap::new();
        for g in &grants {
            let item = Item { path: g.resource.clone(), mode: g.mode, units: g.units };
            for (node, mode, _) in claim_nodes(&item) {
                held.entry(node).or_default().push(((g.session, g.owner.to_string()), mode));
            }
        }
        let mut edges = BTreeSet::new();
        for w in &waiters {
            let me: OwnerKey = (w.session, w.owner.clone());
            for item in &w.items {
                let path = item.path.as_str();
                let counted = capacity(caps, path);
                // A counted resource short of units waits for all its holders.
                if short_of_units(caps, &grants, item) {
                    for g in grants.iter().filter(|g| g.resource.as_str() == path) {
                        let other: OwnerKey = (g.session, g.owner.to_string());
                        if other != me {
                            edges.insert((me.clone(), other));
                        }
                    }
                }
                // Nodes to scan: the item's own and its ancestors, then overlapping row ranges.
                let mut scans: Vec<(String, Lm)> = claim_nodes(item).into_iter().map(|(n, m, _)| (n, m)).collect();
                if let (Some(range), Some(parent)) = (item.path.rows(), item.path.parent()) {
                    let nodes: BTreeSet<&String> = queues.keys().chain(held.keys()).collect();
                    for node in nodes {
                        let Ok(p) = ResourcePath::parse(node) else { continue };
                        if p.parent() == Some(parent) && p.rows().is_some_and(|r| r != range && r.overlaps(&range)) {
                            scans.push((node.clone(), Lm::of(item.mode)));
                        }
                    }
                }
                for (node, mode) in scans {
                    let mut ahead: Vec<_> =
                        queues.get(&node).into_iter().flatten().filter(|e| e.0 < key(w) && e.1 != me).collect();
                    ahead.sort_by_key(|e| std::cmp::Reverse(e.0));
                    let mut covered = false;
                    for (_, other, m, _) in &ahead {
                        if !mode.compatible(*m) {
                            edges.insert((me.clone(), other.clone()));
                            if m.covers(mode) {
                                covered = true;
                                break;
                            }
                        }
                    }
                    if !covered {
                        for (other, m) in held.get(&node).into_iter().flatten() {
                            if *other != me && !mode.compatible(*m) {
                                edges.insert((me.clone(), other.clone()));
                            }
                        }
                    }
                    // Among a counted resource's own waiters: the nearest one ahead whose
                    // units, with those of the waiters between, no longer fit beside ours.
                    if let Some(cap) = counted.filter(|_| node == path) {
                        let need = |it: &Item| if it.mode == Mode::Exclusive { cap } else { it.units };
                        let used: u32 = grants.iter().filter(|g| g.resource.as_str() == path).map(|g| g.units).sum();
                        let mut reserved = used + need(item);
                        for (k, other, _, _) in ahead.iter().filter(|e| e.3) {
                            let theirs = waiters
                                .iter()
                                .find(|x| key(x) == *k && (x.session, x.owner.clone()) == *other)
                                .and_then(|x| x.items.iter().find(|it| it.path.as_str() == path))
                                .map_or(cap, need);
                            reserved += theirs;
                            if reserved > cap {
                                edges.insert((me.clone(), other.clone()));
                                break;
                            }
                        }
                    }
                }
            }
        }
        edges
    }

    fn check_wait_for(&self) {
        let reduced = Self::reduced_edges(&self.state, &self.caps);
        let actual: BTreeSet<(OwnerKey, OwnerKey)> =
            self.state.wait_for_edges().into_iter().map(|(a, b)| ((a.session, a.name), (b.session, b.name))).collect();
        assert_eq!(actual, reduced, "wait-for graph differs from the model's");
        let full = Self::full_edges(&self.state, &self.caps);
        assert!(reduced.is_subset(&full), "an edge the full relation does not have");
        assert!(find_cycle(&full).is_none(), "a cycle survived the apply: {full:?}");
    }

    /// Progress: no request waits for nothing. Every waiter has someone to wait for (a
    /// conflicting holder or a conflicting waiter ahead), or asks more units than its resource
    /// has at all. A core that queued a grantable request would fail here.
    fn check_progress(&self) {
        let grants: Vec<GrantInfo> = self.state.grants().collect();
        let waiters: Vec<WaiterInfo> = self.state.waiters().collect();
        for w in &waiters {
            let me: OwnerKey = (w.session, w.owner.clone());
            let key = (PRIORITY_MAX - w.effective_priority, w.seq);
            let impossible = w.items.iter().any(|i| beyond_capacity(&self.caps, i));
            assert!(
                impossible || !blockers(&me, key, &w.items, &grants, &waiters, &self.caps).is_empty(),
                "{} waits for nothing: {:?}",
                w.request,
                w.items
            );
        }
    }

    /// Every victim lay on a cycle the command really closed; every cycle it closed was broken.
    fn check_victims(&self, effects: &[Effect], shadow: Option<State>, cmd: Command) {
        let victims: Vec<(OwnerKey, usize)> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::DeadlockVictim { owner, session, cycle_len, .. } => {
                    Some(((*session, owner.clone()), *cycle_len as usize))
                }
                _ => None,
            })
            .collect();
        let Some(mut shadow) = shadow else {
            return;
        };
        shadow.apply(self.index + 1, self.now, cmd);
        let edges = Self::full_edges(&shadow, &self.caps);
        let cycle = find_cycle(&edges);
        match (victims.first(), cycle) {
            (None, None) => {}
            (None, Some(c)) => panic!("the command closed a cycle {c:?} and nothing was aborted"),
            (Some((victim, len)), _) => {
                let on_cycle = *len == 1 || reaches(&edges, victim, victim);
                assert!(on_cycle, "victim {victim:?} is on no cycle of {edges:?}");
            }
        }
    }

    /// After a Tick every waiter has gained at least the configured aging since it queued.
    fn check_aging(&self) {
        for w in self.state.waiters() {
            let steps = (self.now - w.enqueued_at) / self.config.aging_interval_ms;
            let floor = (u64::from(w.priority) + steps * u64::from(self.config.aging_step)).min(PRIORITY_MAX.into());
            assert!(u64::from(w.effective_priority) >= floor, "{} aged too slowly", w.request);
        }
    }
}

fn reaches(edges: &BTreeSet<(OwnerKey, OwnerKey)>, from: &OwnerKey, to: &OwnerKey) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.clone()];
    while let Some(n) = stack.pop() {
        for (_, next) in edges.range((n.clone(), (SessionId(0), String::new()))..).take_while(|(a, _)| *a == n) {
            if next == to {
                return true;
            }
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    false
}

fn find_cycle(edges: &BTreeSet<(OwnerKey, OwnerKey)>) -> Option<OwnerKey> {
    let nodes: BTreeSet<&OwnerKey> = edges.iter().map(|(a, _)| a).collect();
    nodes.into_iter().find(|n| reaches(edges, n, n)).cloned()
}

fn cases() -> u32 {
    std::env::var("QM_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

fn seed() -> u64 {
    std::env::var("QM_MODEL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x514d_2026)
}

#[test]
fn the_core_agrees_with_the_model() {
    let config = PropConfig {
        cases: cases(),
        rng_seed: RngSeed::Fixed(seed()),
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..PropConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(op(), 1..60), |ops| {
        let mut h = Harness::new();
        for op in ops {
            h.run(op);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\nreproduce with: QM_MODEL_SEED={} cargo test -p qm-coordinator --test model", seed());
    }
}
