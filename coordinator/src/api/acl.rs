//! `qm.v1.Acl`: bootstrap, tokens, and who is calling.
//!
//! Secrets are made here (or taken from the caller, checked), hashed, and only the hash is
//! proposed; the secret goes back in the answer and is kept nowhere.

use std::collections::BTreeSet;
use std::sync::Arc;

use qm_shared::limits::TOKEN_TTL_MS_MAX;
use qm_shared::pb::v1 as pb;
use qm_shared::Invalid;
use tonic::{Request, Response as GrpcResponse, Status};

use super::auth::{check_secret, hash_secret, new_secret, Principal};
use crate::error::ApiError;
use crate::node::Node;
use crate::state::{AclRole, Command, Response, TokenSpec, ACL_ANY};

/// Name of the token `Bootstrap` creates.
pub const BOOTSTRAP_TOKEN_NAME: &str = "bootstrap-admin";

/// The first admin token: every role, every grant, no expiry.
pub fn bootstrap_token(hash: String, now: u64) -> TokenSpec {
    TokenSpec {
        name: BOOTSTRAP_TOKEN_NAME.into(),
        hash,
        roles: BTreeSet::from([AclRole::Admin]),
        teams: BTreeSet::from([ACL_ANY.to_string()]),
        path_prefixes: BTreeSet::from([ACL_ANY.to_string()]),
        priority_max: qm_shared::limits::PRIORITY_MAX,
        nodes: BTreeSet::from([ACL_ANY.to_string()]),
        expires_at: None,
        created_at: now,
    }
}

#[derive(Debug)]
pub struct AclApi {
    pub node: Arc<Node>,
}

fn role_to_pb(r: AclRole) -> pb::AclRole {
    match r {
        AclRole::Admin => pb::AclRole::Admin,
        AclRole::Operator => pb::AclRole::Operator,
        AclRole::Submitter => pb::AclRole::Submitter,
        AclRole::Worker => pb::AclRole::Worker,
        AclRole::Approver => pb::AclRole::Approver,
        AclRole::Reader => pb::AclRole::Reader,
    }
}

fn role_from_pb(i: usize, r: i32) -> Result<AclRole, ApiError> {
    Ok(match pb::AclRole::try_from(r) {
        Ok(pb::AclRole::Admin) => AclRole::Admin,
        Ok(pb::AclRole::Operator) => AclRole::Operator,
        Ok(pb::AclRole::Submitter) => AclRole::Submitter,
        Ok(pb::AclRole::Worker) => AclRole::Worker,
        Ok(pb::AclRole::Approver) => AclRole::Approver,
        Ok(pb::AclRole::Reader) => AclRole::Reader,
        _ => return Err(Invalid::new(format!("token.roles[{i}]"), format!("{r} is not a role")).into()),
    })
}

/// A token as clients see it.
pub fn token_to_pb(t: &TokenSpec) -> pb::TokenInfo {
    pb::TokenInfo {
        name: t.name.clone(),
        roles: t.roles.iter().map(|r| role_to_pb(*r) as i32).collect(),
        teams: t.teams.iter().cloned().collect(),
        path_prefixes: t.path_prefixes.iter().cloned().collect(),
        priority_max: t.priority_max,
        nodes: t.nodes.iter().cloned().collect(),
        expires_at_ms: t.expires_at.unwrap_or(0),
        created_at_ms: t.created_at,
    }
}

/// The secret to use: the caller's (checked) or a fresh one.
fn secret(given: String, field: &str) -> Result<String, ApiError> {
    if given.is_empty() {
        new_secret()
    } else {
        check_secret(field, &given)?;
        Ok(given)
    }
}

impl AclApi {
    async fn create(&self, command: Command, token: &TokenSpec, secret: String) -> Result<pb::TokenCreated, Status> {
        match self.node.propose(command).await?.1 {
            Response::TokenCreated { .. } => Ok(pb::TokenCreated { token: Some(token_to_pb(token)), secret }),
            Response::Refused(r) => Err(ApiError::from(r).into()),
            other => Err(ApiError::Internal(format!("unexpected answer: {other:?}")).into()),
        }
    }
}

#[tonic::async_trait]
impl pb::acl_server::Acl for AclApi {
    async fn bootstrap(
        &self,
        request: Request<pb::BootstrapRequest>,
    ) -> Result<GrpcResponse<pb::TokenCreated>, Status> {
        let secret = secret(request.into_inner().secret, "secret")?;
        let token = bootstrap_token(hash_secret(&secret), self.node.clock.now_ms());
        let answer = self.create(Command::BootstrapAcl(Box::new(token.clone())), &token, secret).await?;
        tracing::warn!("access control bootstrapped: the first admin token was created");
        Ok(GrpcResponse::new(answer))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<GrpcResponse<pb::TokenCreated>, Status> {
        let by = Principal::of(&request).name;
        let req = request.into_inner();
        let t = req.token.ok_or_else(|| ApiError::from(Invalid::new("token", "is required")))?;
        let roles = t.roles.iter().enumerate().map(|(i, r)| role_from_pb(i, *r)).collect::<Result<_, _>>()?;
        qm_shared::validate::check_range("ttl_ms", req.ttl_ms, 0, TOKEN_TTL_MS_MAX).map_err(ApiError::from)?;
        let secret = secret(req.secret, "secret")?;
        let now = self.node.clock.now_ms();
        let token = TokenSpec {
            name: t.name,
            hash: hash_secret(&secret),
            roles,
            teams: t.teams.into_iter().collect(),
            path_prefixes: t.path_prefixes.into_iter().collect(),
            priority_max: t.priority_max,
            nodes: t.nodes.into_iter().collect(),
            expires_at: (req.ttl_ms > 0).then(|| now + req.ttl_ms),
            created_at: now,
        };
        crate::state::validate_command(&Command::CreateToken(Box::new(token.clone())))
            .map_err(|e| e.within("token"))
            .map_err(ApiError::from)?;
        let answer = self.create(Command::CreateToken(Box::new(token.clone())), &token, secret).await?;
        tracing::info!(token = %token.name, by = %by, "token created");
        Ok(GrpcResponse::new(answer))
    }

    async fn list_tokens(
        &self,
        _: Request<pb::ListTokensRequest>,
    ) -> Result<GrpcResponse<pb::ListTokensResponse>, Status> {
        self.node.read_index().await?;
        let tokens = self.node.shared.read(|d| d.state.acl().tokens().into_iter().map(token_to_pb).collect());
        Ok(GrpcResponse::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<GrpcResponse<pb::RevokeTokenResponse>, Status> {
        let by = Principal::of(&request).name;
        let name = request.into_inner().name;
        match self.node.propose(Command::RevokeToken { name: name.clone() }).await?.1 {
            Response::TokenRevoked { name } => {
                tracing::info!(token = %name, by = %by, "token revoked");
                Ok(GrpcResponse::new(pb::RevokeTokenResponse { name }))
            }
            Response::Refused(r) => Err(ApiError::from(r).into()),
            other => Err(ApiError::Internal(format!("unexpected answer: {other:?}")).into()),
        }
    }

    async fn who_am_i(&self, request: Request<pb::WhoAmIRequest>) -> Result<GrpcResponse<pb::TokenInfo>, Status> {
        let principal = Principal::of(&request);
        Ok(GrpcResponse::new(match &principal.token {
            Some(t) => token_to_pb(t),
            None => pb::TokenInfo { name: "anonymous (access control is off)".into(), ..Default::default() },
        }))
    }
}
