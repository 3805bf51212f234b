//! `qm.v1.RaftPeer`, server side: openraft's RPCs, forwarded writes and read-index.
//!
//! A peer's message is input like a client's. The service is built with a decoding limit
//! of `PEER_MESSAGE_BYTES_MAX` (a larger message is refused before it is read; see
//! `api::serve`). An AppendEntries or InstallSnapshot that claims this node's own leadership
//! is refused (`PeerApi::check_sender`). Snapshot chunks go through [`SnapshotInbox`], which keeps a chunk only if it
//! is within `SNAPSHOT_BYTES_MAX` and continues the bytes received so far; a completed
//! snapshot is restored and checked against every invariant ([`State::restore`], off the
//! async threads) before openraft installs it, so a snapshot that breaks one is refused with
//! INVALID_ARGUMENT and the node keeps the state it had.
//!
//! ```text
//!   InstallSnapshot ─▶ bounds, sender ─▶ vote ≥ ours? ─▶ inbox (in order) ─▶ done? ─▶ restore + check
//!                        │                  └ no: answer our vote   │                 │ ok
//!                 INVALID_ARGUMENT                     SnapshotMismatch        install_full_snapshot
//! ```

use std::cmp::Ordering;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::error::{InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest};
use openraft::{SnapshotSegmentId, Vote};
use qm_shared::pb::v1 as pb;
use qm_shared::Invalid;
use tonic::{Request, Response as GrpcResponse, Status};

use crate::error::ApiError;
use crate::node::Node;
use crate::raft::inbox::{check_bounds, ChunkError, SnapshotInbox};
use crate::raft::network::{from_bytes, to_bytes};
use crate::raft::{NodeId, Snapshot, TypeConfig};
use crate::state::{Command, State};

/// What openraft answers an InstallSnapshot chunk with.
type ChunkAnswer = Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;

#[derive(Debug)]
pub struct PeerApi {
    node: Arc<Node>,
    /// The snapshot being received from the leader.
    inbox: Mutex<SnapshotInbox>,
}

impl PeerApi {
    pub fn new(node: Arc<Node>) -> PeerApi {
        PeerApi { node, inbox: Mutex::new(SnapshotInbox::default()) }
    }

    fn check_target(&self, target: u64) -> Result<(), Status> {
        if target != 0 && target != self.node.id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {target} (address reused?)",
                self.node.id
            )));
        }
        Ok(())
    }

    /// Refuses an AppendEntries or InstallSnapshot sent under this node's own leadership. A
    /// node never sends them to itself, and openraft, handed one while it leads, would follow
    /// itself: a failed assertion that stops Raft in debug builds, a leader appending as a
    /// follower in release builds.
    fn check_sender(&self, vote: &Vote<NodeId>) -> Result<(), Status> {
        if vote.leader_id().voted_for() == Some(self.node.id) {
            let message = format!(
                "{vote} names this node ({}) as the leader; a node does not send itself entries or snapshots",
                self.node.id
            );
            return Err(ApiError::Invalid(Invalid::new("vote", message)).into());
        }
        Ok(())
    }

    /// Serves one of openraft's RPCs: checks it is meant for this node, decodes its payload,
    /// checks who claims to send it, runs it on the local raft and encodes the result (`ok`)
    /// or the error (`error`).
    async fn serve<Rpc, R, E, O, Fut>(
        &self,
        target: u64,
        payload: &[u8],
        run: impl FnOnce(Rpc) -> Fut,
        ok: fn(Vec<u8>) -> O,
        error: fn(Vec<u8>) -> O,
    ) -> Result<O, Status>
    where
        Rpc: serde::de::DeserializeOwned + Sent,
        R: serde::Serialize,
        E: serde::Serialize,
        Fut: std::future::Future<Output = Result<R, E>>,
    {
        self.check_target(target)?;
        let rpc: Rpc = from_bytes(payload).map_err(undecodable)?;
        if let Some(vote) = rpc.leader_vote() {
            self.check_sender(vote)?;
        }
        Ok(match run(rpc).await {
            Ok(r) => ok(to_bytes(&r)),
            Err(e) => error(to_bytes(&e)),
        })
    }

    /// One chunk of a snapshot from the leader (see the module's diagram). `Err` is a refusal
    /// of the request itself; `Ok(Err(_))` is openraft's answer that the leader acts on.
    async fn receive_chunk(&self, rpc: InstallSnapshotRequest<TypeConfig>) -> Result<ChunkAnswer, Status> {
        check_bounds(rpc.offset, rpc.data.len()).map_err(refused)?;
        self.check_sender(&rpc.vote)?;
        let raft = &self.node.raft;
        let ours: Vote<NodeId> = match raft.with_raft_state(|s| *s.vote_ref()).await {
            Ok(vote) => vote,
            Err(fatal) => return Ok(Err(RaftError::Fatal(fatal))),
        };
        // A chunk from a leader of an older term is not kept; our vote tells it why.
        if matches!(rpc.vote.partial_cmp(&ours), Some(Ordering::Less) | None) {
            return Ok(Ok(InstallSnapshotResponse { vote: ours }));
        }
        let id = &rpc.meta.snapshot_id;
        let accepted = self.inbox.lock().expect("inbox lock poisoned").accept(id, rpc.offset, &rpc.data, rpc.done);
        let bytes = match accepted {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(Ok(InstallSnapshotResponse { vote: ours })),
            Err(ChunkError::Mismatch { id, expect, got }) => {
                let mismatch = SnapshotMismatch {
                    expect: SnapshotSegmentId { id: id.clone(), offset: expect },
                    got: SnapshotSegmentId { id, offset: got },
                };
                return Ok(Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch))));
            }
            Err(e) => return Err(refused(e)),
        };
        let bytes = verified(bytes).await?;
        let snapshot = Snapshot { meta: rpc.meta, snapshot: Box::new(Cursor::new(bytes)) };
        Ok(match raft.install_full_snapshot(rpc.vote, snapshot).await {
            Ok(answer) => Ok(answer.into()),
            Err(fatal) => Err(RaftError::Fatal(fatal)),
        })
    }
}

/// The leader's vote an RPC is sent under, for those that only a leader sends.
trait Sent {
    fn leader_vote(&self) -> Option<&Vote<NodeId>>;
}

impl Sent for AppendEntriesRequest<TypeConfig> {
    fn leader_vote(&self) -> Option<&Vote<NodeId>> {
        Some(&self.vote)
    }
}

impl Sent for VoteRequest<NodeId> {
    fn leader_vote(&self) -> Option<&Vote<NodeId>> {
        None
    }
}

/// Restores `bytes` on a blocking thread (decoding a large state takes a while) and checks
/// every invariant; returns them if the state they hold is sound. A panic while restoring
/// (a checker's blind spot) refuses the snapshot too, instead of reaching openraft.
async fn verified(bytes: Vec<u8>) -> Result<Vec<u8>, Status> {
    let restored = tokio::task::spawn_blocking(move || State::restore(&bytes).map(|_| bytes)).await;
    let reason = match restored {
        Ok(Ok(bytes)) => return Ok(bytes),
        Ok(Err(e)) => e.to_string(),
        Err(e) if e.is_panic() => format!("restoring it panicked: {e}"),
        Err(e) => return Err(ApiError::Unavailable(format!("restoring the snapshot: {e}")).into()),
    };
    tracing::warn!(%reason, "refused a snapshot from the leader; keeping the current state");
    Err(ApiError::Invalid(Invalid::new("snapshot", reason)).into())
}

fn refused(e: ChunkError) -> Status {
    match e {
        ChunkError::Bound { field, message } => ApiError::Invalid(Invalid::new(field, message)).into(),
        mismatch => ApiError::Invalid(Invalid::new("offset", mismatch.to_string())).into(),
    }
}

fn undecodable(e: bincode::Error) -> Status {
    ApiError::Invalid(Invalid::new("payload", format!("not a valid encoded raft message: {e}"))).into()
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
        self.check_target(req.target_node_id)?;
        let rpc = from_bytes(&req.payload).map_err(undecodable)?;
        let outcome = match self.receive_chunk(rpc).await? {
            Ok(answer) => Outcome::Ok(to_bytes(&answer)),
            Err(e) => Outcome::Error(to_bytes(&e)),
        };
        Ok(GrpcResponse::new(pb::InstallSnapshotResponse { outcome: Some(outcome) }))
    }

    async fn propose(&self, request: Request<pb::ProposeRequest>) -> Result<GrpcResponse<pb::ProposeResponse>, Status> {
        let command: Command = from_bytes(&request.into_inner().command).map_err(undecodable)?;
        // Only what a client may ask for travels here: the leader's own duties never do.
        if command.is_internal() {
            return Err(Status::permission_denied(
                "rule internal-command: Tick, RestartLeases and SpaceMeasured are proposed only by the leader itself",
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
