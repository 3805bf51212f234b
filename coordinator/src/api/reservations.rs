//! `qm.v1.Reservations`: acquire, extend, release, list, watch and the wait-for graph.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use qm_shared::limits::{LEASE_MS_DEFAULT, LIST_PAGE_DEFAULT, LIST_PAGE_MAX};
use qm_shared::pb::v1 as pb;
use qm_shared::{validate, Invalid};
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response as GrpcResponse, Status};

use super::auth::Principal;
use super::convert;
use crate::error::ApiError;
use crate::node::Node;
use crate::state::{Command, Refusal, RequestId, ReservationId, Response, SessionId};

/// Events buffered per watch stream before the stream is told it lagged.
const WATCH_BUFFER_LEN: usize = 1_024;

#[derive(Debug)]
pub struct ReservationsApi {
    pub node: Arc<Node>,
    pub watchers: Arc<Semaphore>,
}

fn unexpected(r: Response) -> Status {
    ApiError::Internal(format!("unexpected answer from the state machine: {r:?}")).into()
}

#[tonic::async_trait]
impl pb::reservations_server::Reservations for ReservationsApi {
    async fn acquire(&self, request: Request<pb::AcquireRequest>) -> Result<GrpcResponse<pb::AcquireResponse>, Status> {
        let principal = Principal::of(&request);
        let req = request.into_inner();
        let acquire = self.node.shared.read(|d| convert::acquire_from_pb(req, &d.state)).map_err(ApiError::from)?;
        principal.check_items(&acquire.items, acquire.priority)?;
        principal.check_session(&self.node, acquire.session).await?;
        let (owner, session, items) = (acquire.owner.clone(), acquire.session, acquire.items.clone());
        let (_, resp) = self.node.propose(Command::Acquire(acquire)).await?;
        use pb::acquire_response as ar;
        let outcome = match resp {
            Response::Granted { grants } => {
                ar::Outcome::Granted(ar::Granted { reservations: grants.iter().map(convert::reservation).collect() })
            }
            Response::Queued { request, position, estimated_wait_ms } => {
                let blocked_by = self.node.shared.read(|d| convert::blockers(&d.state, &owner, session, &items));
                ar::Outcome::Queued(ar::Queued { request_id: request.0, position, estimated_wait_ms, blocked_by })
            }
            Response::Refused(r) => {
                let refused =
                    self.node.shared.read(|d| convert::acquire_refused(r, &d.state)).map_err(ApiError::from)?;
                ar::Outcome::Refused(refused)
            }
            other => return Err(unexpected(other)),
        };
        Ok(GrpcResponse::new(pb::AcquireResponse { outcome: Some(outcome) }))
    }

    async fn extend(&self, request: Request<pb::ExtendRequest>) -> Result<GrpcResponse<pb::ExtendResponse>, Status> {
        let principal = Principal::of(&request);
        let req = request.into_inner();
        principal.check_session(&self.node, SessionId(req.session_id)).await?;
        let lease_ms = if req.lease_ms == 0 { LEASE_MS_DEFAULT } else { req.lease_ms };
        validate::check_lease_ms(lease_ms).map_err(|e| ApiError::Invalid(Invalid::new("lease_ms", e.message)))?;
        let command = Command::Extend {
            session: SessionId(req.session_id),
            reservation: ReservationId(req.reservation_id),
            lease_ms,
        };
        let (_, resp) = self.node.propose(command).await?;
        match resp {
            Response::Extended { reservation, .. } => {
                let grant = self.node.shared.read(|d| d.state.grant(reservation));
                let grant =
                    grant.ok_or_else(|| ApiError::NotFound(format!("reservation {} is gone", reservation.0)))?;
                Ok(GrpcResponse::new(pb::ExtendResponse { reservation: Some(convert::reservation(&grant)) }))
            }
            Response::Refused(r) => Err(ApiError::refused(r, Some(SessionId(req.session_id))).into()),
            other => Err(unexpected(other)),
        }
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<GrpcResponse<pb::ReleaseResponse>, Status> {
        let principal = Principal::of(&request);
        let req = request.into_inner();
        let session = SessionId(req.session_id);
        principal.check_session(&self.node, session).await?;
        let command = match req.target {
            Some(pb::release_request::Target::ReservationId(id)) => {
                Command::Release { session, reservation: ReservationId(id) }
            }
            Some(pb::release_request::Target::RequestId(id)) => Command::Cancel { session, request: RequestId(id) },
            None => return Err(ApiError::Invalid(Invalid::new("target", "set reservation_id or request_id")).into()),
        };
        let (_, resp) = self.node.propose(command).await?;
        let mut out = pb::ReleaseResponse::default();
        match resp {
            Response::Released { reservation } => out.released_reservation_ids.push(reservation.0),
            Response::Cancelled { request } => out.cancelled_request_ids.push(request.0),
            // Release is idempotent: something already gone is not an error.
            Response::Refused(Refusal::ReservationUnknown { .. } | Refusal::RequestUnknown { .. }) => {}
            Response::Refused(r) => return Err(ApiError::from(r).into()),
            other => return Err(unexpected(other)),
        }
        Ok(GrpcResponse::new(out))
    }

    async fn list(&self, request: Request<pb::ListRequest>) -> Result<GrpcResponse<pb::ListResponse>, Status> {
        let req = request.into_inner();
        let prefix = convert::prefix("resource_prefix", &req.resource_prefix).map_err(ApiError::from)?;
        if req.limit > LIST_PAGE_MAX {
            return Err(ApiError::Invalid(Invalid::new(
                "limit",
                format!("{} is above the maximum {LIST_PAGE_MAX}", req.limit),
            ))
            .into());
        }
        let limit = if req.limit == 0 { LIST_PAGE_DEFAULT } else { req.limit } as usize;
        let after: Option<(String, u64)> = if req.page_token.is_empty() {
            None
        } else {
            let (id, path) = req
                .page_token
                .split_once('|')
                .and_then(|(id, p)| Some((id.parse::<u64>().ok()?, p.to_string())))
                .ok_or_else(|| ApiError::Invalid(Invalid::new("page_token", "is not a token from a previous page")))?;
            Some((path, id))
        };
        let index = self.node.read_index().await?;
        let out = self.node.shared.read(|d| {
            let matches = |resource: &qm_shared::ResourcePath, session: SessionId, owner: &str| {
                prefix.as_ref().is_none_or(|p| resource.is_within(p.as_str()))
                    && req.session_id.is_none_or(|s| s == session.0)
                    && req.owner.as_deref().is_none_or(|o| o == owner)
            };
            let mut grants: Vec<_> = d.state.grants().filter(|g| matches(&g.resource, g.session, &g.owner)).collect();
            grants.sort_by(|a, b| (a.resource.as_str(), a.id).cmp(&(b.resource.as_str(), b.id)));
            let start = match &after {
                Some((p, id)) => grants.partition_point(|g| (g.resource.as_str(), g.id.0) <= (p.as_str(), *id)),
                None => 0,
            };
            let page: Vec<_> = grants[start..].iter().take(limit).collect();
            let next_page_token = if start + page.len() < grants.len() {
                page.last().map(|g| format!("{}|{}", g.id.0, g.resource)).unwrap_or_default()
            } else {
                String::new()
            };
            let pending = if req.include_pending && after.is_none() {
                d.state
                    .waiters()
                    .filter(|w| w.items.iter().any(|i| matches(&i.path, w.session, &w.owner)))
                    .take(limit)
                    .map(|w| convert::pending(&w, 0, 0))
                    .collect()
            } else {
                Vec::new()
            };
            pb::ListResponse {
                reservations: page.into_iter().map(convert::reservation).collect(),
                pending,
                next_page_token,
                index: d.last_applied.map_or(index, |l| l.index),
            }
        });
        Ok(GrpcResponse::new(out))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send + 'static>>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<GrpcResponse<Self::WatchStream>, Status> {
        let req = request.into_inner();
        let prefix = convert::prefix("resource_prefix", &req.resource_prefix).map_err(ApiError::from)?;
        let permit = self.watchers.clone().try_acquire_owned().map_err(|_| {
            ApiError::ResourceExhausted(format!("at most {} watch streams per node", qm_shared::limits::WATCHERS_MAX))
        })?;
        let (replay, mut live) = if req.start_index == 0 {
            (Vec::new(), self.node.shared.subscribe())
        } else {
            self.node.shared.subscribe_from(req.start_index).ok_or_else(|| {
                ApiError::OutOfRange(format!(
                    "start_index {} is no longer retained; List, then watch live",
                    req.start_index
                ))
            })?
        };
        let (tx, rx) = mpsc::channel(WATCH_BUFFER_LEN);
        let filter = move |e: &crate::state::Effect| {
            let (resource, session, owner) = convert::effect_subject(e);
            prefix
                .as_ref()
                .is_none_or(|p| resource.is_some_and(|r| r == p.as_str() || r.starts_with(&format!("{}/", p.as_str()))))
                && req.session_id.is_none_or(|s| session == Some(SessionId(s)))
                && req.owner.as_deref().is_none_or(|o| owner == Some(o))
        };
        tokio::spawn(async move {
            let _permit = permit;
            let mut last = 0;
            let send = |applied: &crate::raft::state_machine::Applied| {
                applied
                    .effects
                    .iter()
                    .filter(|e| filter(e))
                    .filter_map(|e| convert::watch_event(applied.index, applied.now, e))
                    .collect::<Vec<_>>()
            };
            for applied in replay {
                last = applied.index;
                for ev in send(&applied) {
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
            }
            loop {
                match live.recv().await {
                    Ok(applied) => {
                        if applied.index <= last {
                            continue;
                        }
                        last = applied.index;
                        for ev in send(&applied) {
                            if tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let ev = pb::WatchEvent {
                            index: last,
                            at_ms: 0,
                            kind: Some(pb::watch_event::Kind::Lagged(pb::watch_event::Lagged { missed_events: n })),
                        };
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(GrpcResponse::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn declare_resource(
        &self,
        request: Request<pb::DeclareResourceRequest>,
    ) -> Result<GrpcResponse<pb::DeclareResourceResponse>, Status> {
        let req = request.into_inner();
        let path = convert::path("path", &req.path).map_err(ApiError::from)?;
        let policy = convert::policy_from_pb("policy", req.policy).map_err(ApiError::from)?;
        let grace_ms = if req.grace_ms == 0 { qm_shared::limits::PREEMPT_GRACE_MS_DEFAULT } else { req.grace_ms };
        let command = Command::DeclareResource { path, capacity: req.capacity, policy, grace_ms };
        crate::state::validate_command(&command).map_err(ApiError::from)?;
        match self.node.propose(command).await? {
            (index, Response::ResourceDeclared { .. }) => Ok(GrpcResponse::new(pb::DeclareResourceResponse { index })),
            (_, Response::Refused(r)) => Err(ApiError::from(r).into()),
            (_, other) => Err(unexpected(other)),
        }
    }

    async fn graph(&self, request: Request<pb::GraphRequest>) -> Result<GrpcResponse<pb::GraphResponse>, Status> {
        let req = request.into_inner();
        let prefix = convert::prefix("resource_prefix", &req.resource_prefix).map_err(ApiError::from)?;
        self.node.read_index().await?;
        Ok(GrpcResponse::new(
            self.node
                .shared
                .read(|d| super::graph::build(&d.state, prefix.as_ref(), d.last_applied.map_or(0, |l| l.index))),
        ))
    }
}
