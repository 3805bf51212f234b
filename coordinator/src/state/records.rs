//! The records the state machine keeps: sessions, owners, grants (held reservations) and
//! pending requests. Plain data; every transition lives in `apply_*` methods on `State`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use qm_shared::{Mode, ResourcePath};

use super::lock_table::{NodeId, QueueKey};
use super::small_map::SmallSet;
use super::types::{GrantInfo, Item, Millis, OwnerId, RequestId, ReservationId, SessionId};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    pub(crate) id: SessionId,
    pub(crate) label: String,
    pub(crate) ttl_ms: u64,
    pub(crate) expires_at: Millis,
    /// The session's owners by name.
    pub(crate) owners: BTreeMap<String, OwnerId>,
    /// The principal that opened it (a token's name; empty where access control is off).
    pub(crate) principal: String,
}

/// One `(session, name)` pair: what holds and waits. A node of the wait-for graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Owner {
    pub(crate) id: OwnerId,
    pub(crate) session: SessionId,
    /// Shared with every `GrantInfo` handed out, so reporting a grant copies no text.
    pub(crate) name: Arc<str>,
    pub(crate) created_at: Millis,
    pub(crate) grants: SmallSet<ReservationId>,
    /// Sum of `granted_at` over `grants` (sunk work, for victim choice).
    pub(crate) granted_at_sum: u64,
    pub(crate) pending: Option<RequestId>,
    /// Priority inherited from waiters blocked on this owner's `inherit` resources (0: none).
    pub(crate) inherited: u32,
}

/// A held reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Grant {
    pub(crate) id: ReservationId,
    pub(crate) owner: OwnerId,
    pub(crate) session: SessionId,
    pub(crate) path: ResourcePath,
    /// The lock-table node of `path`.
    pub(crate) node: NodeId,
    pub(crate) mode: Mode,
    pub(crate) units: u32,
    pub(crate) token: u64,
    pub(crate) priority: u32,
    pub(crate) granted_at: Millis,
    pub(crate) lease_ms: u64,
    pub(crate) expires_at: Millis,
    /// No extend moves `expires_at` past this (`granted_at + lifetime_ms_max`).
    pub(crate) cap_at: Millis,
    /// Set once a preemption was requested: when the grace ends.
    pub(crate) preempt_deadline: Option<Millis>,
}

/// A queued acquire (one resource or an atomic set).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) id: RequestId,
    pub(crate) owner: OwnerId,
    pub(crate) session: SessionId,
    /// Sorted by path: the canonical grant order.
    pub(crate) items: Vec<Item>,
    /// The lock-table node of each item, set when the request is queued.
    pub(crate) targets: Vec<NodeId>,
    pub(crate) priority: u32,
    /// Effective priority: `max(priority + aging, inherited)`, capped at `priority_max`.
    pub(crate) effective: u32,
    pub(crate) seq: u64,
    pub(crate) enqueued_at: Millis,
    pub(crate) timeout_at: Option<Millis>,
    pub(crate) next_aging_at: Option<Millis>,
    pub(crate) lease_ms: u64,
}

impl Request {
    pub(crate) fn key(&self) -> QueueKey {
        QueueKey { inv_priority: qm_shared::limits::PRIORITY_MAX - self.effective, seq: self.seq }
    }
}

impl Grant {
    pub(crate) fn info(&self, owner_name: &Arc<str>) -> GrantInfo {
        GrantInfo {
            id: self.id,
            resource: self.path.clone(),
            mode: self.mode,
            units: self.units,
            fencing_token: self.token,
            owner: Arc::clone(owner_name),
            session: self.session,
            priority: self.priority,
            granted_at: self.granted_at,
            expires_at: self.expires_at,
        }
    }
}
