//! `qm.v1.RaftPeer`, server side: openraft's RPCs, forwarded writes and read-index.

use std::sync::Arc;

use qm_shared::pb::v1 as pb;
use tonic::{Request, Response as GrpcResponse, Status};

use crate::error::ApiError;
use crate::node::Node;
use crate::raft::network::{from_bytes, to_bytes};
use crate::state::Command;

#[derive(Debug)]
pub struct PeerApi {
    pub node: Arc<Node>,
}

impl PeerApi {
    fn check_target(&self, target: u64) -> Result<(), Status> {
        if target != 0 && target != self.node.id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {target} (address reused?)",
                self.node.id
            )));
        }
        Ok(())
    }
}

fn undecodable(e: bincode::Error) -> Status {
    Status::invalid_argument(format!("payload: not a valid encoded raft message: {e}"))
}

#[tonic::async_trait]
impl pb::raft_peer_server::RaftPeer for PeerApi {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<GrpcResponse<pb::AppendEntriesResponse>, Status> {
        let req = request.into_inner();
        self.check_target(req.target_node_id)?;
        let rpc = from_bytes(&req.payload).map_err(undecodable)?;
        use pb::append_entries_response::Outcome;
        let outcome = match self.node.raft.append_entries(rpc).await {
            Ok(r) => Outcome::Ok(to_bytes(&r)),
            Err(e) => Outcome::Error(to_bytes(&e)),
        };
        Ok(GrpcResponse::new(pb::AppendEntriesResponse { outcome: Some(outcome) }))
    }

    async fn vote(&self, request: Request<pb::VoteRequest>) -> Result<GrpcResponse<pb::VoteResponse>, Status> {
        let req = request.into_inner();
        self.check_target(req.target_node_id)?;
        let rpc = from_bytes(&req.payload).map_err(undecodable)?;
        use pb::vote_response::Outcome;
        let outcome = match self.node.raft.vote(rpc).await {
            Ok(r) => Outcome::Ok(to_bytes(&r)),
            Err(e) => Outcome::Error(to_bytes(&e)),
        };
        Ok(GrpcResponse::new(pb::VoteResponse { outcome: Some(outcome) }))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::InstallSnapshotRequest>,
    ) -> Result<GrpcResponse<pb::InstallSnapshotResponse>, Status> {
        let req = request.into_inner();
        self.check_target(req.target_node_id)?;
        let rpc = from_bytes(&req.payload).map_err(undecodable)?;
        use pb::install_snapshot_response::Outcome;
        let outcome = match self.node.raft.install_snapshot(rpc).await {
            Ok(r) => Outcome::Ok(to_bytes(&r)),
            Err(e) => Outcome::Error(to_bytes(&e)),
        };
        Ok(GrpcResponse::new(pb::InstallSnapshotResponse { outcome: Some(outcome) }))
    }

    async fn propose(&self, request: Request<pb::ProposeRequest>) -> Result<GrpcResponse<pb::ProposeResponse>, Status> {
        let command: Command = from_bytes(&request.into_inner().command).map_err(undecodable)?;
        use pb::propose_response::Outcome;
        let outcome = match self.node.propose_local(command).await {
            Ok(answer) => Outcome::Ok(to_bytes(&answer)),
            Err(ApiError::NotLeader { leader_id, leader_address }) => Outcome::NotLeader(pb::NotLeader {
                leader_id: leader_id.unwrap_or(0),
                leader_address: leader_address.unwrap_or_default(),
            }),
            Err(e) => Outcome::Failed(e.to_string()),
        };
        Ok(GrpcResponse::new(pb::ProposeResponse { outcome: Some(outcome) }))
    }

    async fn read_index(
        &self,
        _: Request<pb::ReadIndexRequest>,
    ) -> Result<GrpcResponse<pb::ReadIndexResponse>, Status> {
        use pb::read_index_response::Outcome;
        let outcome = match self.node.local_read_index().await {
            Ok(i) => Outcome::Index(i),
            Err(_) => {
                let leader = self.node.leader();
                Outcome::NotLeader(pb::NotLeader {
                    leader_id: leader.as_ref().map_or(0, |l| l.0),
                    leader_address: leader.map(|l| l.1).unwrap_or_default(),
                })
            }
        };
        Ok(GrpcResponse::new(pb::ReadIndexResponse { outcome: Some(outcome) }))
    }

    async fn elect(&self, request: Request<pb::ElectRequest>) -> Result<GrpcResponse<pb::ElectResponse>, Status> {
        let term = request.into_inner().term;
        let lease_ms = self.node.raft.config().election_timeout_max + 50;
        super::transfer::elect(&self.node, term, lease_ms).await?;
        Ok(GrpcResponse::new(pb::ElectResponse {}))
    }
}
