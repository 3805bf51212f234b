//! Leadership transfer.
//!
//! openraft 0.9 has no transfer primitive, so the leader does it by hand: it checks the
//! target is a voter whose log has caught up, stops sending heartbeats so the followers'
//! leader leases lapse, and asks the target (RaftPeer.Elect) to stand for election; while it
//! does, it proposes nothing (writes are answered UNAVAILABLE and retried), so no append
//! renews a lease or puts the target behind. The
//! target, having the newest log, wins the next term before any other follower's election
//! timer fires; if it does not, a normal election picks someone and the answer says who.

use std::time::Duration;

use openraft::ServerState;
use qm_shared::pb::v1 as pb;

use crate::error::ApiError;
use crate::node::Node;
use crate::raft::NodeId;

/// Longest the whole transfer may take.
const TRANSFER_WAIT_MS_MAX: u64 = 10_000;

pub async fn transfer(node: &Node, to: Option<NodeId>) -> Result<pb::TransferLeaderResponse, ApiError> {
    let m = node.metrics();
    if m.state != ServerState::Leader {
        let leader = node.leader();
        return Err(ApiError::NotLeaderForAdmin {
            leader_id: leader.as_ref().map(|l| l.0),
            leader_address: leader.map(|l| l.1),
        });
    }
    let (voters, _) = node.members();
    let replication = m.replication.clone().unwrap_or_default();
    let last = m.last_log_index.unwrap_or(0);
    let target = match to {
        Some(id) if id == node.id => {
            return Ok(pb::TransferLeaderResponse { leader_id: Some(id), term: m.current_term });
        }
        Some(id) => {
            if !voters.contains(&id) {
                return Err(ApiError::FailedPrecondition(format!("node {id} is not a voter")));
            }
            id
        }
        None => most_caught_up(node.id, &voters, &replication)
            .ok_or_else(|| ApiError::FailedPrecondition("no other voter to hand leadership to".into()))?,
    };
    let addr =
        node.peer_address_of(target).ok_or_else(|| ApiError::NotFound(format!("node {target} has no address")))?;
    // Wait (bounded) for the target to hold every entry the leader has.
    let mut rx = node.raft.metrics();
    let caught_up = tokio::time::timeout(Duration::from_millis(TRANSFER_WAIT_MS_MAX / 2), async {
        rx.wait_for(|m| {
            m.replication.as_ref().and_then(|r| r.get(&target).copied().flatten()).map_or(0, |l| l.index) >= last
        })
        .await
        .is_ok()
    })
    .await;
    if caught_up != Ok(true) {
        return Err(ApiError::Unavailable(format!("node {target} did not catch up with index {last} in time")));
    }
    // Stop proposing first, then let the target catch up with the very last entry.
    node.transferring.store(true, std::sync::atomic::Ordering::SeqCst);
    let last = node.metrics().last_log_index.unwrap_or(0);
    let mut rx = node.raft.metrics();
    let _ = tokio::time::timeout(Duration::from_millis(TRANSFER_WAIT_MS_MAX / 4), async {
        rx.wait_for(|m| {
            m.replication.as_ref().and_then(|r| r.get(&target).copied().flatten()).map_or(0, |l| l.index) >= last
        })
        .await
        .is_ok()
    })
    .await;
    hand_over(node, m.current_term, Some((target, addr))).await?;
    let m = node.metrics();
    Ok(pb::TransferLeaderResponse { leader_id: m.current_leader, term: m.current_term })
}

/// The voter other than `me` whose log the leader has replicated furthest.
fn most_caught_up(
    me: NodeId,
    voters: &std::collections::BTreeSet<NodeId>,
    replication: &std::collections::BTreeMap<NodeId, Option<crate::raft::LogId>>,
) -> Option<NodeId> {
    voters
        .iter()
        .copied()
        .filter(|v| *v != me)
        .max_by_key(|v| replication.get(v).copied().flatten().map_or(0, |l| l.index))
}

/// A leader that cannot serve steps down: it hands leadership to the voter with the longest
/// log it knows of, or, with no one to hand it to, stops heartbeating until a newer term
/// starts. Bounded; says why in the log.
pub async fn step_down(node: &Node, term: u64, why: &str) {
    let m = node.metrics();
    if m.state != ServerState::Leader || m.current_term != term {
        return;
    }
    let (voters, _) = node.members();
    let replication = m.replication.clone().unwrap_or_default();
    let target = most_caught_up(node.id, &voters, &replication).and_then(|v| node.peer_address_of(v).map(|a| (v, a)));
    tracing::error!(term, to = ?target.as_ref().map(|t| t.0), "leader: stepping down: {why}");
    if target.is_none() {
        // Alone: a new election of our own starts a new term, whose duties start afresh.
        if let Err(e) = node.raft.trigger().elect().await {
            tracing::warn!(error = %e, "leader: could not start a new election");
        }
        return;
    }
    node.transferring.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Err(e) = hand_over(node, term, target).await {
        tracing::warn!(term, error = %e, "leader: stepping down did not complete");
    }
}

/// The common tail of a transfer and a step-down: stop heartbeating so the followers' leases
/// lapse, ask `target` (at its peer address) to stand, and wait (bounded) for a newer term
/// with a leader; then heartbeat and propose again whatever happened. The caller has set
/// `transferring`.
async fn hand_over(node: &Node, term: u64, target: Option<(NodeId, String)>) -> Result<(), ApiError> {
    node.raft.runtime_config().heartbeat(false);
    let result = async {
        if let Some((id, addr)) = target {
            let mut client = crate::raft::network::peer_client(
                crate::raft::network::channel(&addr, &node.connector)
                    .map_err(|e| ApiError::Unavailable(e.to_string()))?,
            );
            let mut req = tonic::Request::new(pb::ElectRequest { term });
            req.set_timeout(Duration::from_millis(TRANSFER_WAIT_MS_MAX));
            client
                .elect(req)
                .await
                .map_err(|s| ApiError::Unavailable(format!("node {id} refused to stand: {}", s.message())))?;
        }
        let mut rx = node.raft.metrics();
        let _ = tokio::time::timeout(Duration::from_millis(TRANSFER_WAIT_MS_MAX), async {
            rx.wait_for(|m| m.current_term > term && m.current_leader.is_some()).await.is_ok()
        })
        .await;
        Ok::<_, ApiError>(())
    }
    .await;
    node.raft.runtime_config().heartbeat(true);
    node.transferring.store(false, std::sync::atomic::Ordering::SeqCst);
    result
}

/// The target's side: stand for election once the old leader's lease has lapsed.
pub async fn elect(node: &Node, term: u64, lease_ms: u64) -> Result<(), ApiError> {
    let m = node.metrics();
    if m.current_term > term {
        return Ok(());
    }
    tokio::time::sleep(Duration::from_millis(lease_ms)).await;
    node.raft.trigger().elect().await.map_err(|e| ApiError::Unavailable(e.to_string()))
}
