//! Mutual exclusion, as the fenced resources and the replicas see it.
//!
//! * Every replica, every step: no two owners hold conflicting grants ([`conflicts`]: the
//!   same resource or overlapping row ranges unless both are shared, an ancestor and a
//!   descendant unless both are shared), and the units held on a counted resource fit its
//!   capacity unless the capacity was lowered under the holders ([`over_capacity`]). One
//!   owner may hold several grants: acquiring again what it holds is re-entrant.
//! * Every accepted fenced write: its token was written by one owner only, and it is the
//!   token of a grant the cluster committed to that owner on that resource (checked as soon
//!   as a replica has applied that grant, at the latest at the end).
//! * Accepted tokens never go down on a resource (the fence's own rule, asserted).

use std::collections::{BTreeMap, BTreeSet};

use qm_coordinator::state::{Effect, GrantInfo};
use qm_shared::{Mode, ResourcePath};

use super::{End, Invariant, Obs};

/// The lock table's conflict rule, stated on its own: whether grants `a` and `b` may not be
/// held at once.
///
/// * One owner (a session and an owner name) never conflicts with itself.
/// * Same path, or two row ranges under one parent that overlap: a conflict unless both
///   grants are shared.
/// * One path an ancestor of the other: the descendant's grant puts an intention mode on
///   the ancestor (IS for shared, IX for exclusive). An exclusive ancestor (X) is compatible
///   with neither; a shared ancestor (S) is compatible with IS only. So shared above shared
///   is allowed, and every other pair conflicts.
/// * Otherwise (siblings, disjoint row ranges, other trees): no conflict.
///
/// Counted resources add the units rule of [`over_capacity`].
pub fn conflicts(a: &GrantInfo, b: &GrantInfo) -> bool {
    if a.session == b.session && a.owner == b.owner {
        return false;
    }
    let both_shared = a.mode == Mode::Shared && b.mode == Mode::Shared;
    let (pa, pb) = (&a.resource, &b.resource);
    if pa == pb || rows_overlap(pa, pb) {
        return !both_shared;
    }
    let (ancestor, descendant) = if pb.is_within(pa.as_str()) {
        (a, b)
    } else if pa.is_within(pb.as_str()) {
        (b, a)
    } else {
        return false;
    };
    ancestor.mode == Mode::Exclusive || descendant.mode == Mode::Exclusive
}

/// Two row-range paths under one parent whose ranges overlap.
fn rows_overlap(a: &ResourcePath, b: &ResourcePath) -> bool {
    match (a.rows(), b.rows()) {
        (Some(ra), Some(rb)) => a.parent() == b.parent() && ra.overlaps(&rb),
        _ => false,
    }
}

/// The counted-units rule for one resource declared with `capacity`: the units its grants
/// hold (every owner's, an owner's own re-entrant grants included) fit within the capacity.
/// A redeclaration may lower the capacity under holders, who keep their grants (nothing is
/// revoked for it); the units may then stay above the capacity, but only while nothing has
/// been granted there since: `before` are the reservations that were held when this
/// capacity was first seen. `None` when the rule holds, else what broke.
pub fn over_capacity(capacity: u32, held: &[&GrantInfo], before: &BTreeSet<u64>) -> Option<String> {
    let units: u64 = held.iter().map(|g| u64::from(g.units)).sum();
    if units <= u64::from(capacity) {
        return None;
    }
    let newer = held.iter().find(|g| !before.contains(&g.id.0))?;
    Some(format!(
        "{} units held on {} of capacity {capacity}, and r{} ({}@s{}, {} units) was granted beside the others",
        units, newer.resource, newer.id.0, newer.owner, newer.session.0, newer.units
    ))
}

/// Every pair of `grants` (one replica's) that [`conflicts`], compared within each root
/// segment only (paths under different roots never conflict). The first pair found, if any.
pub fn first_conflict(grants: &[GrantInfo]) -> Option<(&GrantInfo, &GrantInfo)> {
    let mut by_root: BTreeMap<&str, Vec<&GrantInfo>> = BTreeMap::new();
    for g in grants {
        by_root.entry(g.resource.prefix(1)).or_default().push(g);
    }
    for group in by_root.values() {
        for (i, a) in group.iter().enumerate() {
            if let Some(b) = group[i + 1..].iter().find(|b| conflicts(a, b)) {
                return Some((a, b));
            }
        }
    }
    None
}

fn describe(g: &GrantInfo) -> String {
    format!("r{} {} {} ({}@s{})", g.id.0, g.mode, g.resource, g.owner, g.session.0)
}

/// Checks one replica's grants against both rules. `seen` holds, per counted resource, the
/// capacity last seen on this replica and the reservations held when it was first seen; it
/// is brought up to date here.
pub fn check_replica(
    node: u64,
    grants: &[GrantInfo],
    capacities: &BTreeMap<String, u32>,
    seen: &mut BTreeMap<String, (u32, BTreeSet<u64>)>,
) -> Result<(), String> {
    if let Some((a, b)) = first_conflict(grants) {
        return Err(format!("n{node} holds conflicting grants: {} and {}", describe(a), describe(b)));
    }
    seen.retain(|path, _| capacities.contains_key(path));
    for (path, capacity) in capacities {
        let held: Vec<&GrantInfo> = grants.iter().filter(|g| g.resource.as_str() == path).collect();
        let ids = || held.iter().map(|g| g.id.0).collect::<BTreeSet<u64>>();
        let entry = seen.entry(path.clone()).or_insert_with(|| (*capacity, ids()));
        if entry.0 != *capacity {
            *entry = (*capacity, ids());
        }
        // Reservations are never reused: one that ended is of no more interest.
        entry.1.retain(|id| held.iter().any(|g| g.id.0 == *id));
        if let Some(broke) = over_capacity(*capacity, &held, &entry.1) {
            return Err(format!("n{node}: {broke}"));
        }
    }
    Ok(())
}

#[derive(Debug, Default)]
pub struct MutualExclusion {
    /// (resource, token) → owner, from accepted writes.
    writers: BTreeMap<(String, u64), String>,
    /// token → (resource, owner), from committed grants.
    granted: BTreeMap<u64, (String, String)>,
    /// Accepted writes whose grant no replica has applied yet.
    unconfirmed: BTreeMap<(String, u64), String>,
    last_accepted: BTreeMap<String, u64>,
    /// Per replica, per counted resource: the capacity last seen and the reservations held
    /// when it was first seen (see [`check_replica`]).
    capacities: BTreeMap<u64, BTreeMap<String, (u32, BTreeSet<u64>)>>,
}

impl MutualExclusion {
    fn confirm(&mut self) -> Result<(), String> {
        let mut done = Vec::new();
        for ((path, token), owner) in &self.unconfirmed {
            if let Some((gpath, gowner)) = self.granted.get(token) {
                if gpath != path || gowner != owner {
                    return Err(format!(
                        "fenced write to {path} by {owner} with token {token}, but token {token} was granted to {gowner} on {gpath}"
                    ));
                }
                done.push((path.clone(), *token));
            }
        }
        for k in done {
            self.unconfirmed.remove(&k);
        }
        Ok(())
    }
}

impl Invariant for MutualExclusion {
    fn name(&self) -> &'static str {
        "mutual-exclusion"
    }

    fn on_step(&mut self, obs: &Obs<'_>) -> Result<(), String> {
        for r in obs.replicas {
            check_replica(r.id, &r.grants, &r.capacities, self.capacities.entry(r.id).or_default())?;
        }
        for (_, rec) in obs.records {
            for e in &rec.effects {
                if let Effect::Granted { grant, .. } = e {
                    self.granted.insert(grant.fencing_token, (grant.resource.to_string(), grant.owner.to_string()));
                }
            }
        }
        for (path, w) in obs.writes.iter().filter(|(_, w)| w.accepted) {
            let last = self.last_accepted.entry(path.clone()).or_default();
            if w.token < *last {
                return Err(format!("{path} accepted token {} after token {last}", w.token));
            }
            *last = w.token;
            let key = (path.clone(), w.token);
            if let Some(other) = self.writers.get(&key) {
                if *other != w.owner {
                    return Err(format!(
                        "{path}: token {} used by two owners, {other} and {} (two holders at once)",
                        w.token, w.owner
                    ));
                }
            }
            self.writers.insert(key.clone(), w.owner.clone());
            self.unconfirmed.insert(key, w.owner.clone());
        }
        self.confirm()
    }

    fn at_end(&mut self, _end: &End<'_>) -> Result<(), String> {
        self.confirm()?;
        match self.unconfirmed.iter().next() {
            Some(((path, token), owner)) => {
                Err(format!("fenced write to {path} by {owner} with token {token}, a token no replica ever granted"))
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use qm_coordinator::state::{GrantInfo, ReservationId, SessionId};
    use qm_shared::{Mode, ResourcePath};

    use super::{check_replica, conflicts, over_capacity};

    const S: Mode = Mode::Shared;
    const X: Mode = Mode::Exclusive;

    /// Reservation `id` on `path` held by owner `owner` of session 1.
    fn grant(id: u64, owner: &str, path: &str, mode: Mode) -> GrantInfo {
        GrantInfo {
            id: ReservationId(id),
            resource: ResourcePath::parse(path).expect("valid path"),
            mode,
            units: 1,
            fencing_token: id,
            owner: owner.into(),
            session: SessionId(1),
            priority: 0,
            granted_at: 0,
            expires_at: 1_000,
        }
    }

    fn pair(a: (&str, Mode), b: (&str, Mode)) -> bool {
        let (a, b) = (grant(1, "a", a.0, a.1), grant(2, "b", b.0, b.1));
        let there = conflicts(&a, &b);
        assert_eq!(there, conflicts(&b, &a), "the rule is symmetric");
        there
    }

    #[test]
    fn same_path_conflicts_unless_both_shared() {
        let t = "pg:db/table:t1";
        assert!(!pair((t, S), (t, S)));
        assert!(pair((t, S), (t, X)));
        assert!(pair((t, X), (t, S)));
        assert!(pair((t, X), (t, X)));
    }

    #[test]
    fn ancestor_and_descendant_conflict_unless_both_shared() {
        let (parent, child) = ("pg:db/table:t1", "pg:db/table:t1/rows:[0,10)");
        let grandparent = "pg:db";
        for up in [parent, grandparent] {
            assert!(!pair((up, S), (child, S)), "S above S");
            assert!(pair((up, S), (child, X)), "S above X (X puts IX on {up})");
            assert!(pair((up, X), (child, S)), "X above S");
            assert!(pair((up, X), (child, X)), "X above X");
        }
        // A name that merely begins like another is not below it.
        assert!(!pair(("pg:db/table:t1", X), ("pg:db/table:t10", X)));
        assert!(!pair(("pg:db/table:t1", X), ("pg:db/table:t2", X)), "siblings");
        assert!(!pair(("pg:db", X), ("pg:other", X)), "other trees");
    }

    #[test]
    fn row_ranges_conflict_when_they_overlap() {
        let r = |range: &str| format!("pg:db/table:t1/rows:{range}");
        assert!(pair((&r("[0,10)"), X), (&r("[5,15)"), S)));
        assert!(pair((&r("[0,10)"), S), (&r("[9,10)"), X)));
        assert!(!pair((&r("[0,10)"), S), (&r("[5,15)"), S)), "both shared");
        assert!(!pair((&r("[0,10)"), X), (&r("[10,20)"), X)), "half-open: touching is disjoint");
        assert!(!pair((&r("[0,10)"), X), ("pg:db/table:t2/rows:[0,10)", X)), "other parents");
    }

    #[test]
    fn one_owner_never_conflicts_with_itself() {
        let a = grant(1, "a", "pg:db/table:t1", X);
        let b = grant(2, "a", "pg:db/table:t1/rows:[0,10)", X);
        assert!(!conflicts(&a, &b));
        assert!(!conflicts(&a, &grant(3, "a", "pg:db/table:t1", X)));
        // The same name in another session is another owner.
        let other = GrantInfo { session: SessionId(2), ..b };
        assert!(conflicts(&a, &other));
    }

    #[test]
    fn a_shared_parent_beside_an_exclusive_child_is_a_violation() {
        let grants = vec![
            grant(1, "a", "pg:db/table:t1", S),
            grant(2, "c", "pg:db/table:t9", X),
            grant(3, "b", "pg:db/table:t1/rows:[0,10)", X),
        ];
        let err = check_replica(7, &grants, &BTreeMap::new(), &mut BTreeMap::new()).expect_err("a violation");
        assert!(err.contains("n7 holds conflicting grants") && err.contains("r1") && err.contains("r3"), "{err}");
        // Without the conflicting child the same grants are fine.
        assert_eq!(check_replica(7, &grants[..2], &BTreeMap::new(), &mut BTreeMap::new()), Ok(()));
    }

    #[test]
    fn counted_units_fit_unless_the_capacity_was_lowered_under_the_holders() {
        let path = "gpu:box-7";
        let g = |id: u64, owner: &str| GrantInfo { units: 2, ..grant(id, owner, path, S) };
        let (a, b, c) = (g(1, "a"), g(2, "b"), g(3, "c"));
        assert_eq!(over_capacity(4, &[&a, &b], &BTreeSet::new()), None);
        assert!(over_capacity(3, &[&a, &b], &BTreeSet::new()).is_some());
        // Lowered to 3 under a and b: they keep their grants...
        assert_eq!(over_capacity(3, &[&a, &b], &BTreeSet::from([1, 2])), None);
        // ...but nothing new may join them while they do not fit.
        assert!(over_capacity(3, &[&a, &c], &BTreeSet::from([1, 2])).is_some());

        let mut seen = BTreeMap::new();
        let cap = |c: u32| BTreeMap::from([(path.to_string(), c)]);
        assert_eq!(check_replica(1, &[a.clone(), b.clone()], &cap(4), &mut seen), Ok(()));
        assert_eq!(check_replica(1, &[a.clone(), b.clone()], &cap(3), &mut seen), Ok(()), "lowered under a and b");
        assert_eq!(check_replica(1, std::slice::from_ref(&a), &cap(3), &mut seen), Ok(()), "b released");
        let err = check_replica(1, &[a, c], &cap(3), &mut seen).expect_err("c granted over capacity");
        assert!(err.contains("r3") && err.contains("capacity 3"), "{err}");
    }
}
