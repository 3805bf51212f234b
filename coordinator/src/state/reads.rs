//! Reads: what the API, watchers and tests see of the lock table.

use super::*;

impl State {
    /// Every held reservation, in id order.
    pub fn grants(&self) -> impl Iterator<Item = GrantInfo> + '_ {
        self.grants.values().map(|g| g.info(&self.owners[&g.owner].name))
    }

    pub fn grant(&self, id: ReservationId) -> Option<GrantInfo> {
        self.grants.get(&id).map(|g| g.info(&self.owners[&g.owner].name))
    }

    /// Every pending request, with its own, effective and preempting priorities.
    pub fn waiters(&self) -> impl Iterator<Item = WaiterInfo> + '_ {
        self.requests.values().map(|r| WaiterInfo {
            request: r.id,
            owner: self.owners[&r.owner].name.to_string(),
            session: r.session,
            items: r.items.clone(),
            priority: r.priority,
            effective_priority: r.effective,
            preempting_priority: self.preempting_priority(r.id),
            enqueued_at: r.enqueued_at,
            seq: r.seq,
        })
    }

    /// The wait-for graph as owner-name edges `(waiter, blocker)`.
    pub fn wait_for_edges(&self) -> Vec<(OwnerRef, OwnerRef)> {
        self.wait_for
            .edges()
            .iter()
            .flat_map(|(from, targets)| targets.iter().map(move |t| (self.owner_ref(*from), self.owner_ref(*t))))
            .collect()
    }

    pub(super) fn owner_ref(&self, owner: OwnerId) -> OwnerRef {
        let o = &self.owners[&owner];
        OwnerRef { name: o.name.to_string(), session: o.session }
    }

    /// The declared capacities of counted resources, by path.
    pub fn capacities(&self) -> impl Iterator<Item = (&str, u32)> + '_ {
        self.resources.iter().filter_map(|(path, r)| r.capacity.map(|c| (path.as_str(), c)))
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn session_label(&self, id: SessionId) -> Option<&str> {
        self.sessions.get(&id).map(|s| s.label.as_str())
    }

    /// Whether a Tick could change anything (sessions or leases to expire, waiters to age or
    /// time out). The leader skips Ticks while there is nothing to time.
    pub fn has_timed_work(&self) -> bool {
        !self.sessions.is_empty() || !self.grants.is_empty() || !self.requests.is_empty()
    }

    pub fn session_expires_at(&self, id: SessionId) -> Option<Millis> {
        self.sessions.get(&id).map(|s| s.expires_at)
    }
}

/// A pending request as reported to readers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaiterInfo {
    pub request: RequestId,
    pub owner: String,
    pub session: SessionId,
    pub items: Vec<Item>,
    pub priority: u32,
    pub effective_priority: u32,
    /// What it preempts with: its own or inherited priority, never the aged one.
    pub preempting_priority: u32,
    pub enqueued_at: Millis,
    /// Arrival order (FIFO within a priority).
    pub seq: u64,
}

/// An owner as readers name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnerRef {
    pub name: String,
    pub session: SessionId,
}
