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

    /// Serves one of openraft's RPCs: checks it is meant for this node, decodes its payload,
    /// runs it on the local raft and encodes the result (`ok`) or the error (`error`).
    async fn serve<Rpc, R, E, O, Fut>(
        &self,
        target: u64,
        payload: &[u8],
        run: impl FnOnce(Rpc) -> Fut,
        ok: fn(Vec<u8>) -> O,
        error: fn(Vec<u8>) -> O,
    ) -> Result<O, Status>
    where
        Rpc: serde::de::DeserializeOwned,
        R: serde::Serialize,
        E: serde::Serialize,
        Fut: std::future::Future<Output = Result<R, E>>,
    {
        self.check_target(target)?;
        let rpc = from_bytes(payload).map_err(undecodable)?;
        Ok(match run(rpc).await {
            Ok(r) => ok(to_bytes(&r)),
            Err(e) => error(to_bytes(&e)),
        })
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
        use pb::append_entries_response::Outcome;
        let req = request.into_inner();
        let raft = &self.node.raft;
        let outcome =
            self.serve(req.target_node_id, &req.payload, |rpc| raft.append_entries(rpc), Outcome::Ok, Outcome::Error);
        Ok(GrpcResponse::new(pb::AppendEntriesResponse { outcome: Some(outcome.await?) }))
    }

    async fn vote(&self, request: Request<pb::VoteRequest>) -> Result<GrpcResponse<pb::VoteResponse>, Status> {
        use pb::vote_response::Outcome;
        let req = request.into_inner();
        let raft = &self.node.raft;
        let outcome = self.serve(req.target_node_id, &req.payload, |rpc| raft.vote(rpc), Outcome::Ok, Outcome::Error);
        Ok(GrpcResponse::new(pb::VoteResponse { outcome: Some(outcome.await?) }))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::InstallSnapshotRequest>,
    ) -> Result<GrpcResponse<pb::InstallSnapshotResponse>, Status> {
        use pb::install_snapshot_response::Outcome;
        let req = request.into_inner();
        let raft = &self.node.raft;
        let outcome =
            self.serve(req.target_node_id, &req.payload, |rpc| raft.install_snapshot(rpc), Outcome::Ok, Outcome::Error);
        Ok(GrpcResponse::new(pb::InstallSnapshotResponse { outcome: Some(outcome.await?) }))
    }

    async fn propose(&self, request: Request<pb::ProposeRequest>) -> Result<GrpcResponse<pb::ProposeResponse>, Status> {
        let command: Command = from_bytes(&request.into_inner().command).map_err(undecodable)?;
        // Only what a client may ask for travels here: the leader's own duties never do.
        if matches!(command, Command::Tick | Command::RestartLeases) {
            return Err(Status::permission_denied(
                "rule internal-command: Tick and RestartLeases are proposed only by the leader itself",
            ));
        }
        crate::state::validate_command(&command).map_err(ApiError::from)?;
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
