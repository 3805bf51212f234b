//! Errors of the service shell, and their one mapping to gRPC statuses.
//!
//! Refusals (held, deadlock, queue full) are not errors: they are answers in the response.
//! These are the cases where the request could not be answered at all.

use qm_shared::Invalid;

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
        }
    }
}
