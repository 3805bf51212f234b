//! `qm.v1.Sessions`: open, keep alive (a stream), close.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use qm_shared::limits::SESSION_TTL_MS_DEFAULT;
use qm_shared::pb::v1 as pb;
use qm_shared::validate;
use tonic::{Request, Response as GrpcResponse, Status, Streaming};

use super::auth::Principal;
use crate::error::ApiError;
use crate::node::Node;
use crate::state::{Command, Refusal, Response, SessionId};

#[derive(Debug)]
pub struct SessionsApi {
    pub node: Arc<Node>,
}

fn unexpected(r: Response) -> Status {
    ApiError::Internal(format!("unexpected answer from the state machine: {r:?}")).into()
}

#[tonic::async_trait]
impl pb::sessions_server::Sessions for SessionsApi {
    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<GrpcResponse<pb::OpenSessionResponse>, Status> {
        let principal = Principal::of(&request).name;
        let req = request.into_inner();
        validate::check_name("owner", &req.owner, qm_shared::limits::SESSION_LABEL_LEN_MAX_BYTES)
            .map_err(ApiError::from)?;
        let ttl_ms = if req.ttl_ms == 0 { SESSION_TTL_MS_DEFAULT } else { req.ttl_ms };
        validate::check_session_ttl_ms(ttl_ms)
            .map_err(|e| ApiError::Invalid(qm_shared::Invalid::new("ttl_ms", e.message)))?;
        let (_, resp) = self.node.propose(Command::OpenSession { label: req.owner, ttl_ms, principal }).await?;
        match resp {
            Response::SessionOpened { session, ttl_ms, expires_at } => Ok(GrpcResponse::new(pb::OpenSessionResponse {
                session_id: session.0,
                ttl_ms,
                server_time_ms: expires_at.saturating_sub(ttl_ms),
                expires_at_ms: expires_at,
            })),
            Response::Refused(r) => Err(ApiError::from(r).into()),
            other => Err(unexpected(other)),
        }
    }

    type KeepaliveStream = Pin<Box<dyn Stream<Item = Result<pb::KeepaliveResponse, Status>> + Send + 'static>>;

    async fn keepalive(
        &self,
        request: Request<Streaming<pb::KeepaliveRequest>>,
    ) -> Result<GrpcResponse<Self::KeepaliveStream>, Status> {
        let node = self.node.clone();
        let principal = Principal::of(&request);
        // One keepalive at a time per stream: the stream itself is the backpressure.
        let out = request.into_inner().then(move |req| {
            let node = node.clone();
            let principal = principal.clone();
            async move {
                let req = req?;
                let session = SessionId(req.session_id);
                principal.check_session(&node, session).await?;
                let (_, resp) = node.propose(Command::KeepAlive { session }).await?;
                let now = node.shared.read(|d| d.state.last_now());
                Ok(match resp {
                    Response::SessionKept { session, expires_at } => pb::KeepaliveResponse {
                        session_id: session.0,
                        ttl_ms: expires_at.saturating_sub(now),
                        expires_at_ms: expires_at,
                        expired: false,
                        server_time_ms: now,
                    },
                    _ => pb::KeepaliveResponse {
                        session_id: session.0,
                        expired: true,
                        server_time_ms: now,
                        ..Default::default()
                    },
                })
            }
        });
        Ok(GrpcResponse::new(Box::pin(out)))
    }

    async fn close_session(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> Result<GrpcResponse<pb::CloseSessionResponse>, Status> {
        let principal = Principal::of(&request);
        let session = SessionId(request.into_inner().session_id);
        principal.check_session(&self.node, session).await?;
        let before: (Vec<u64>, Vec<u64>) = self.node.shared.read(|d| {
            (
                d.state.grants().filter(|g| g.session == session).map(|g| g.id.0).collect(),
                d.state.waiters().filter(|w| w.session == session).map(|w| w.request.0).collect(),
            )
        });
        let (_, resp) = self.node.propose(Command::CloseSession { session }).await?;
        match resp {
            Response::SessionClosed { .. } => Ok(GrpcResponse::new(pb::CloseSessionResponse {
                released_reservation_ids: before.0,
                cancelled_request_ids: before.1,
            })),
            Response::Refused(Refusal::SessionUnknown { .. }) => {
                Ok(GrpcResponse::new(pb::CloseSessionResponse::default()))
            }
            other => Err(unexpected(other)),
        }
    }
}
