//! The wait-for graph as the API reports it: owners as nodes, one edge per blocking grant.

use std::collections::BTreeMap;

use qm_shared::pb::v1 as pb;
use qm_shared::ResourcePath;

use super::convert;
use crate::state::{OwnerRef, State};

pub fn build(state: &State, prefix: Option<&ResourcePath>, index: u64) -> pb::GraphResponse {
    let waiters: BTreeMap<OwnerRef, _> =
        state.waiters().map(|w| (OwnerRef { name: w.owner.clone(), session: w.session }, w)).collect();
    let within = |p: &ResourcePath| prefix.is_none_or(|x| p.is_within(x.as_str()) || x.is_within(p.as_str()));
    let mut nodes: BTreeMap<OwnerRef, pb::GraphNode> = BTreeMap::new();
    let mut edges = Vec::new();
    for (from, to) in state.wait_for_edges() {
        let Some(w) = waiters.get(&from) else { continue };
        if !w.items.iter().any(|i| within(&i.path)) {
            continue;
        }
        let blocking: Vec<_> = state
            .grants()
            .filter(|g| *g.owner == *to.name && g.session == to.session)
            .filter(|g| {
                w.items.iter().any(|i| i.path.is_within(g.resource.as_str()) || g.resource.is_within(i.path.as_str()))
            })
            .collect();
        let wanted = w.items.first().map_or(0, |i| convert::mode_to_pb(i.mode));
        if blocking.is_empty() {
            // Blocked by a waiter queued ahead (no barging), not by a grant.
            edges.push(pb::GraphEdge {
                from_owner: from.name.clone(),
                to_owner: to.name.clone(),
                resource: w.items.first().map(|i| i.path.to_string()).unwrap_or_default(),
                request_id: w.request.0,
                reservation_id: 0,
                wanted_mode: wanted,
                held_mode: 0,
            });
        }
        for g in &blocking {
            let wanted = w
                .items
                .iter()
                .find(|i| i.path.is_within(g.resource.as_str()) || g.resource.is_within(i.path.as_str()))
                .map_or(wanted, |i| convert::mode_to_pb(i.mode));
            edges.push(pb::GraphEdge {
                from_owner: from.name.clone(),
                to_owner: to.name.clone(),
                resource: g.resource.to_string(),
                request_id: w.request.0,
                reservation_id: g.id.0,
                wanted_mode: wanted,
                held_mode: convert::mode_to_pb(g.mode),
            });
        }
        for owner in [&from, &to] {
            let node = nodes.entry(owner.clone()).or_insert_with(|| pb::GraphNode {
                owner: owner.name.clone(),
                session_id: owner.session.0,
                priority: 0,
                pending: None,
                blocking_reservation_ids: Vec::new(),
            });
            if let Some(w) = waiters.get(owner) {
                node.priority = w.effective_priority;
                node.pending = Some(convert::pending(w, 0, 0));
            }
        }
        let holder = nodes.get_mut(&to).expect("inserted above");
        for g in blocking {
            if !holder.blocking_reservation_ids.contains(&g.id.0) {
                holder.blocking_reservation_ids.push(g.id.0);
                holder.priority = holder.priority.max(g.priority);
            }
        }
    }
    pb::GraphResponse { nodes: nodes.into_values().collect(), edges, index }
}
