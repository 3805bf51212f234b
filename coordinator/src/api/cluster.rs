//! `qm.v1.Cluster`: status and membership administration.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use qm_shared::pb::v1 as pb;
use qm_shared::Invalid;
use tonic::{Request, Response as GrpcResponse, Status};

use crate::error::ApiError;
use crate::node::Node;
use crate::raft::bounded::within_term;
use crate::raft::{Node as RaftNode, NodeId};

/// Longest address (client or peer) a member may have, in bytes.
const ADDRESS_LEN_MAX: usize = 256;

/// Longest a `wait` snapshot request or a caught-up learner add waits.
const ADMIN_WAIT_MS_MAX: u64 = 60_000;

/// How long the voters a removal would leave have to replicate a fresh entry to count as
/// answering.
const QUORUM_PROBE_MS: u64 = 2_000;

#[derive(Debug)]
pub struct ClusterApi {
    pub node: Arc<Node>,
}

impl ClusterApi {
    fn members(&self) -> Vec<pb::Member> {
        let m = self.node.metrics();
        let (voters, nodes) = self.node.members();
        let replication = m.replication.clone().unwrap_or_default();
        nodes
            .into_iter()
            .map(|(id, n)| pb::Member {
                node_id: id,
                address: n.addr,
                peer_address: n.peer_addr,
                role: if voters.contains(&id) { pb::MemberRole::Voter } else { pb::MemberRole::Learner } as i32,
                is_leader: m.current_leader == Some(id),
                matched_index: if m.state == ServerState::Leader {
                    Some(replication.get(&id).copied().flatten().map_or(0, |l| l.index))
                } else {
                    None
                },
            })
            .collect()
    }

    fn write_err(&self, e: RaftError<NodeId, ClientWriteError<NodeId, RaftNode>>) -> ApiError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                ApiError::NotLeaderForAdmin { leader_id: f.leader_id, leader_address: f.leader_node.map(|n| n.addr) }
            }
            // A change still in flight (e.g. the initial membership not yet committed): retryable.
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                e @ openraft::error::ChangeMembershipError::InProgress(_),
            )) => ApiError::Unavailable(format!("{e}; retry")),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                ApiError::FailedPrecondition(e.to_string())
            }
            RaftError::Fatal(e) => ApiError::Unavailable(format!("raft stopped: {e}")),
        }
    }

    /// A membership change, awaited within its term and `ADMIN_WAIT_MS_MAX` (openraft answers
    /// it like a write: never, if this leader is deposed and then catches up by snapshot).
    async fn change_members(
        &self,
        change: ChangeMembers<NodeId, RaftNode>,
    ) -> Result<openraft::raft::ClientWriteResponse<crate::raft::TypeConfig>, ApiError> {
        let fut = self.node.raft.change_membership(change, false);
        within_term(self.node.raft.metrics(), ADMIN_WAIT_MS_MAX, fut)
            .await
            .map_err(|abandoned| ApiError::Unavailable(format!("membership change: {abandoned}")))?
            .map_err(|e| self.write_err(e))
    }

    /// Refuses to remove voter `id` when the voters left would not hold a majority that
    /// answers now: the leader proposes a fresh entry, and a voter counts as answering if its
    /// replication reaches that entry within [`QUORUM_PROBE_MS`] (the leader always does).
    /// Otherwise the removal would commit with the old majority and leave a cluster that
    /// cannot elect or write.
    async fn check_quorum_without(&self, id: u64, voters: &BTreeSet<u64>) -> Result<(), ApiError> {
        let rest: BTreeSet<u64> = voters.iter().copied().filter(|v| *v != id).collect();
        let need = rest.len() / 2 + 1;
        let (index, _) = self.node.propose_local(crate::state::Command::Tick).await.map_err(|e| match e {
            ApiError::NotLeader { leader_id, leader_address } => {
                ApiError::NotLeaderForAdmin { leader_id, leader_address }
            }
            other => other,
        })?;
        let mut rx = self.node.raft.metrics();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(QUORUM_PROBE_MS);
        loop {
            let answering: BTreeSet<u64> = {
                let m = rx.borrow();
                let replication = m.replication.clone().unwrap_or_default();
                rest.iter()
                    .copied()
                    .filter(|v| {
                        *v == self.node.id || replication.get(v).copied().flatten().is_some_and(|l| l.index >= index)
                    })
                    .collect()
            };
            if answering.len() >= need {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.map_or(true, |r| r.is_err()) {
                let list = |s: &BTreeSet<u64>| s.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ");
                return Err(ApiError::FailedPrecondition(format!(
                    "removing node {id} would leave voters [{}], of which only [{}] answer (replicated index \
                     {index} within {QUORUM_PROBE_MS} ms); {need} of them must: bring the others back, or remove \
                     an unreachable node first",
                    list(&rest),
                    list(&answering)
                )));
            }
        }
    }

    fn check_node_id(id: u64) -> Result<(), ApiError> {
        if id == 0 {
            return Err(Invalid::new("node_id", "must be at least 1").into());
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterApi {
    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<GrpcResponse<pb::StatusResponse>, Status> {
        let m = self.node.metrics();
        let leader = self.node.leader();
        let ready = self.node.readiness();
        let (state_bytes, state_bytes_max, alarm) = self.node.space();
        Ok(GrpcResponse::new(pb::StatusResponse {
            node_id: self.node.id,
            term: m.current_term,
            leader_id: m.current_leader,
            leader_address: leader.map(|l| l.1).unwrap_or_default(),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            committed_index: m.last_applied.map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            members: self.members(),
            membership_changing: m.membership_config.membership().get_joint_config().len() > 1,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ready: ready.is_ok(),
            not_ready_reason: ready.err().unwrap_or_default(),
            state_bytes,
            state_bytes_max,
            nospace_alarm: alarm.is_some(),
        }))
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<GrpcResponse<pb::AddLearnerResponse>, Status> {
        let req = request.into_inner();
        Self::check_node_id(req.node_id)?;
        qm_shared::validate::check_name("address", &req.address, ADDRESS_LEN_MAX).map_err(ApiError::from)?;
        if !req.peer_address.is_empty() {
            qm_shared::validate::check_name("peer_address", &req.peer_address, ADDRESS_LEN_MAX)
                .map_err(ApiError::from)?;
            if req.peer_address == req.address {
                let message = "must differ from address (leave it empty to serve Raft on the client port)";
                return Err(ApiError::from(Invalid::new("peer_address", message)).into());
            }
        }
        if self.node.members().1.contains_key(&req.node_id) {
            return Err(ApiError::FailedPrecondition(format!("node {} is already a member", req.node_id)).into());
        }
        let member = RaftNode::with_peer(req.address, req.peer_address);
        let fut = self.node.raft.add_learner(req.node_id, member, req.wait_caught_up);
        let resp = within_term(self.node.raft.metrics(), ADMIN_WAIT_MS_MAX, fut)
            .await
            .map_err(|abandoned| ApiError::Unavailable(format!("adding the learner: {abandoned}")))?
            .map_err(|e| self.write_err(e))?;
        Ok(GrpcResponse::new(pb::AddLearnerResponse { log_index: resp.log_id.index, members: self.members() }))
    }

    async fn promote(&self, request: Request<pb::PromoteRequest>) -> Result<GrpcResponse<pb::PromoteResponse>, Status> {
        let id = request.into_inner().node_id;
        Self::check_node_id(id)?;
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        let resp = self.change_members(change).await?;
        Ok(GrpcResponse::new(pb::PromoteResponse { log_index: resp.log_id.index, members: self.members() }))
    }

    async fn remove(&self, request: Request<pb::RemoveRequest>) -> Result<GrpcResponse<pb::RemoveResponse>, Status> {
        let id = request.into_inner().node_id;
        Self::check_node_id(id)?;
        let (voters, nodes) = self.node.members();
        if !nodes.contains_key(&id) {
            return Err(ApiError::NotFound(format!("node {id} is not a member")).into());
        }
        if voters.contains(&id) {
            self.check_quorum_without(id, &voters).await?;
        }
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let resp = self.change_members(change).await?;
        Ok(GrpcResponse::new(pb::RemoveResponse { log_index: resp.log_id.index, members: self.members() }))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<GrpcResponse<pb::TransferLeaderResponse>, Status> {
        let req = request.into_inner();
        let resp = super::transfer::transfer(&self.node, req.to_node_id).await?;
        Ok(GrpcResponse::new(resp))
    }

    async fn snapshot_now(
        &self,
        request: Request<pb::SnapshotNowRequest>,
    ) -> Result<GrpcResponse<pb::SnapshotNowResponse>, Status> {
        let wait = request.into_inner().wait;
        let applied = self.node.metrics().last_applied;
        self.node.raft.trigger().snapshot().await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
        if wait {
            let mut rx = self.node.raft.metrics();
            let done = tokio::time::timeout(Duration::from_millis(ADMIN_WAIT_MS_MAX), async {
                rx.wait_for(|m| m.snapshot.map(|s| s.index) >= applied.map(|a| a.index)).await.is_ok()
            })
            .await;
            if done != Ok(true) {
                return Err(ApiError::Unavailable("snapshot not built in time".into()).into());
            }
        }
        let index = self.node.metrics().snapshot.map_or(0, |s| s.index);
        Ok(GrpcResponse::new(pb::SnapshotNowResponse {
            snapshot_index: index,
            snapshot_size_bytes: self.node.store_size_bytes(),
        }))
    }
}
