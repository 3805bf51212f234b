//! Errors of the service shell, and their one mapping to gRPC statuses.
//!
//! Refusals of an acquire (held, deadlock, queue full) are not errors: they are answers in the
//! response. These are the cases where the request could not be answered at all, and the one
//! mapping from the core's other refusals to them ([`ApiError::refused`]).

use qm_shared::Invalid;

use crate::state::{Refusal, SessionId};

/// gRPC error-details domain of Quartermaster statuses.
pub const ERROR_DOMAIN: &str = "qm.v1";
/// `ErrorInfo.reason` when the answering node is not the leader.
pub const REASON_NOT_LEADER: &str = "NOT_LEADER";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input; nothing was written.
    #[error("{0}")]
    Invalid(#[from] Invalid),
    /// This node cannot serve the request; the leader (if known) can.
    #[error("not the leader{}", leader_text(.leader_id, .leader_address))]
    NotLeader { leader_id: Option<u64>, leader_address: Option<String> },
    /// A membership change must run on the leader.
    #[error("membership changes run on the leader{}", leader_text(.leader_id, .leader_address))]
    NotLeaderForAdmin { leader_id: Option<u64>, leader_address: Option<String> },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Internal(String),
    /// No credentials, or credentials the cluster does not accept (unknown, revoked, expired).
    #[error("{0}")]
    Unauthenticated(String),
    /// The principal is known but a rule does not allow the call; the message names the rule.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    AlreadyExists(String),
}

impl ApiError {
    /// The error a refusal of the core answers with. `session` is the session the request acted
    /// for, named when a reservation is not held by it.
    pub fn refused(r: Refusal, session: Option<SessionId>) -> ApiError {
        match r {
            Refusal::Invalid(i) => ApiError::Invalid(i),
            Refusal::Exhausted { what, max } => ApiError::ResourceExhausted(format!("{what}: at most {max}")),
            r @ Refusal::NoSpace { .. } => ApiError::ResourceExhausted(r.to_string()),
            Refusal::SessionUnknown { session } => {
                ApiError::NotFound(format!("session {} is unknown or expired", session.0))
            }
            Refusal::ReservationUnknown { reservation } => ApiError::NotFound(match session {
                Some(s) => format!(
                    "reservation {} is not held by session {} (expired, revoked or released)",
                    reservation.0, s.0
                ),
                None => format!("reservation {} is unknown (expired, revoked or released)", reservation.0),
            }),
            Refusal::TokenUnknown { name } => ApiError::NotFound(format!("token {name:?} is unknown")),
            Refusal::TokenExists { name } => ApiError::AlreadyExists(format!("a token named {name:?} exists")),
            Refusal::AclBootstrapped => ApiError::FailedPrecondition(
                "the cluster is already bootstrapped: ask an admin for a token (qm token create)".into(),
            ),
            Refusal::TaskUnknown { task } => ApiError::NotFound(format!("task {task} is unknown")),
            Refusal::JobUnknown { job } => ApiError::NotFound(format!("work item {job} is unknown")),
            Refusal::ProjectUnknown { project } => ApiError::NotFound(format!(
                "project {project:?} is not registered: qm project apply FILE (the demo: qm project apply --demo)"
            )),
            r @ (Refusal::Conflict { .. }
            | Refusal::QueueFull { .. }
            | Refusal::Deadlock { .. }
            | Refusal::RequestUnknown { .. }
            | Refusal::AlreadyWaiting { .. }
            | Refusal::StaleAttempt { .. }
            | Refusal::NotAWorker { .. }
            | Refusal::TaskEnded { .. }
            | Refusal::JobState { .. }
            | Refusal::NotAwaitingDecision { .. }) => ApiError::FailedPrecondition(r.to_string()),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        ApiError::refused(r, None)
    }
}

fn leader_text(id: &Option<u64>, addr: &Option<String>) -> String {
    match (id, addr) {
        (Some(id), Some(addr)) => format!("; the leader is node {id} at {addr}"),
        _ => "; no leader is known yet (election in progress?)".to_string(),
    }
}

fn with_leader(code: tonic::Code, message: String, id: Option<u64>, addr: Option<String>) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let mut metadata = std::collections::HashMap::new();
    if let (Some(id), Some(addr)) = (id, addr) {
        metadata.insert("leader_id".to_string(), id.to_string());
        metadata.insert("leader_address".to_string(), addr);
    }
    let details = ErrorDetails::with_error_info(REASON_NOT_LEADER, ERROR_DOMAIN, metadata);
    tonic::Status::with_error_details(code, message, details)
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> tonic::Status {
        let message = e.to_string();
        match e {
            ApiError::Invalid(_) => tonic::Status::invalid_argument(message),
            ApiError::NotLeader { leader_id, leader_address } => {
                with_leader(tonic::Code::Unavailable, message, leader_id, leader_address)
            }
            ApiError::NotLeaderForAdmin { leader_id, leader_address } => {
                with_leader(tonic::Code::FailedPrecondition, message, leader_id, leader_address)
            }
            ApiError::Unavailable(_) => tonic::Status::unavailable(message),
            ApiError::NotFound(_) => tonic::Status::not_found(message),
            ApiError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            ApiError::OutOfRange(_) => tonic::Status::out_of_range(message),
            ApiError::ResourceExhausted(_) => tonic::Status::resource_exhausted(message),
            ApiError::Internal(_) => tonic::Status::internal(message),
            ApiError::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            ApiError::PermissionDenied(_) => tonic::Status::permission_denied(message),
            ApiError::AlreadyExists(_) => tonic::Status::already_exists(message),
        }
    }
}
