//! Who is calling, and may they: the edge's authentication and authorization.
//!
//! ```text
//!   request ─▶ Auth (tower layer over every service, on the client port and the peer port)
//!                ├─ method → the rule it needs (RULES; a method not listed is refused)
//!                ├─ rule peer-port: the peer port serves only Raft RPCs; with a peer port, the
//!                │     client port serves none ─▶ PERMISSION_DENIED naming the rule
//!                ├─ Raft RPCs under TLS: a certificate naming a member node (check_peer)
//!                ├─ `authorization: Bearer <secret>` → SHA-256 → the token table on this replica
//!                │     none / unknown / revoked / expired ─▶ UNAUTHENTICATED
//!                ├─ the token's roles against the rule ─▶ PERMISSION_DENIED naming the rule
//!                └─ ok: the `Principal` rides in the request's extensions to the handler,
//!                       which checks what depends on the request's fields (session owner,
//!                       path prefixes, priority ceiling, teams, node ids)
//! ```
//!
//! The token table is replicated state read on the answering node; a revocation takes
//! effect on each node when it applies the revoking entry. A session's principal never
//! changes after it is opened and session ids are never reused, so checking ownership on a
//! replica is sound once the session is known there; a session not yet known locally is
//! looked up again after a linearizable read before the call is refused.
//!
//! What this module must not do: decide anything about reservations, or write. Denials
//! change nothing, because they happen before any proposal.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::task::{Context, Poll};

use qm_shared::limits::{TOKEN_SECRET_LEN_MAX_BYTES, TOKEN_SECRET_LEN_MIN_BYTES};
use sha2::{Digest, Sha256};
use tonic::Status;

use super::Port;
use crate::error::ApiError;
use crate::node::Node;
use crate::state::{AclRole, SessionId, TokenSpec};

/// What a method needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Anyone (gRPC health).
    Public,
    /// Anyone, until the cluster is bootstrapped (then the core refuses).
    Bootstrap,
    /// Any known token (every role may read).
    Read,
    /// A token with one of these roles (admin has every role).
    AnyOf(&'static [AclRole]),
    /// Coordinator-to-coordinator traffic.
    Peer,
}

const HOLDERS: &[AclRole] = &[AclRole::Operator, AclRole::Submitter, AclRole::Worker];
const SUBMITTERS: &[AclRole] = &[AclRole::Operator, AclRole::Submitter];
const OPERATORS: &[AclRole] = &[AclRole::Operator];
const ADMINS: &[AclRole] = &[AclRole::Admin];
const APPROVERS: &[AclRole] = &[AclRole::Approver];
const WORKERS: &[AclRole] = &[AclRole::Worker];

/// Every method of every service and the rule it needs. `every_method_has_a_rule` checks
/// this table against the protocol's descriptor set.
pub const RULES: &[(&str, Rule)] = &[
    ("/grpc.health.v1.Health/Check", Rule::Public),
    ("/grpc.health.v1.Health/Watch", Rule::Public),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Rule::Read),
    ("/qm.v1.Acl/Bootstrap", Rule::Bootstrap),
    ("/qm.v1.Acl/CreateToken", Rule::AnyOf(ADMINS)),
    ("/qm.v1.Acl/ListTokens", Rule::AnyOf(ADMINS)),
    ("/qm.v1.Acl/RevokeToken", Rule::AnyOf(ADMINS)),
    ("/qm.v1.Acl/WhoAmI", Rule::Read),
    ("/qm.v1.Audit/List", Rule::AnyOf(ADMINS)),
    ("/qm.v1.Cluster/Status", Rule::Read),
    ("/qm.v1.Cluster/AddLearner", Rule::AnyOf(ADMINS)),
    ("/qm.v1.Cluster/Promote", Rule::AnyOf(ADMINS)),
    ("/qm.v1.Cluster/Remove", Rule::AnyOf(ADMINS)),
    ("/qm.v1.Cluster/TransferLeader", Rule::AnyOf(ADMINS)),
    ("/qm.v1.Cluster/SnapshotNow", Rule::AnyOf(ADMINS)),
    ("/qm.v1.Jobs/Submit", Rule::AnyOf(SUBMITTERS)),
    ("/qm.v1.Jobs/Get", Rule::Read),
    ("/qm.v1.Jobs/List", Rule::Read),
    ("/qm.v1.Jobs/Cancel", Rule::AnyOf(SUBMITTERS)),
    ("/qm.v1.Jobs/Retry", Rule::AnyOf(SUBMITTERS)),
    ("/qm.v1.Jobs/DecideGate", Rule::AnyOf(APPROVERS)),
    ("/qm.v1.Jobs/SetBudget", Rule::AnyOf(ADMINS)),
    ("/qm.v1.Jobs/ListBudgets", Rule::Read),
    ("/qm.v1.Jobs/CostReport", Rule::Read),
    ("/qm.v1.Jobs/GetArtifacts", Rule::Read),
    ("/qm.v1.Jobs/Forecast", Rule::Read),
    ("/qm.v1.Jobs/ApplyProject", Rule::AnyOf(OPERATORS)),
    ("/qm.v1.Jobs/GetScheduler", Rule::Read),
    ("/qm.v1.Jobs/SetScheduler", Rule::AnyOf(ADMINS)),
    ("/qm.v1.RaftPeer/AppendEntries", Rule::Peer),
    ("/qm.v1.RaftPeer/Vote", Rule::Peer),
    ("/qm.v1.RaftPeer/InstallSnapshot", Rule::Peer),
    ("/qm.v1.RaftPeer/Propose", Rule::Peer),
    ("/qm.v1.RaftPeer/ReadIndex", Rule::Peer),
    ("/qm.v1.RaftPeer/Elect", Rule::Peer),
    ("/qm.v1.Reservations/Acquire", Rule::AnyOf(HOLDERS)),
    ("/qm.v1.Reservations/Extend", Rule::AnyOf(HOLDERS)),
    ("/qm.v1.Reservations/Release", Rule::AnyOf(HOLDERS)),
    ("/qm.v1.Reservations/List", Rule::Read),
    ("/qm.v1.Reservations/Watch", Rule::Read),
    ("/qm.v1.Reservations/Graph", Rule::Read),
    ("/qm.v1.Reservations/DeclareResource", Rule::AnyOf(OPERATORS)),
    ("/qm.v1.Sessions/OpenSession", Rule::AnyOf(HOLDERS)),
    ("/qm.v1.Sessions/Keepalive", Rule::AnyOf(HOLDERS)),
    ("/qm.v1.Sessions/CloseSession", Rule::AnyOf(HOLDERS)),
    ("/qm.v1.Tasks/Submit", Rule::AnyOf(SUBMITTERS)),
    ("/qm.v1.Tasks/Get", Rule::Read),
    ("/qm.v1.Tasks/List", Rule::Read),
    ("/qm.v1.Tasks/Cancel", Rule::AnyOf(SUBMITTERS)),
    ("/qm.v1.Tasks/Workers", Rule::Read),
    ("/qm.v1.WorkerGateway/Connect", Rule::AnyOf(WORKERS)),
];

/// The rule `path` (`/package.Service/Method`) needs, if it is a method we serve.
pub fn rule(path: &str) -> Option<Rule> {
    RULES.iter().find(|(p, _)| *p == path).map(|(_, r)| *r)
}

/// Who is calling. With access control off every call is the unrestricted `anonymous`.
#[derive(Clone, Debug)]
pub struct Principal {
    pub name: String,
    /// `None`: access control is off; everything is allowed.
    pub token: Option<Arc<TokenSpec>>,
}

impl Principal {
    fn unrestricted() -> Principal {
        Principal { name: String::new(), token: None }
    }

    /// The principal `Auth` attached to `request` (unrestricted when access control is off).
    pub fn of<T>(request: &tonic::Request<T>) -> Principal {
        request.extensions().get::<Principal>().cloned().unwrap_or_else(Principal::unrestricted)
    }

    /// Whether the principal has `role` (an admin has every role; no access control: yes).
    pub fn has(&self, role: AclRole) -> bool {
        self.token.as_ref().is_none_or(|t| t.has(role))
    }

    fn shown(&self) -> String {
        format!("token {:?}", self.name)
    }

    /// Refuses a priority above the principal's ceiling.
    pub fn check_priority(&self, field: &str, priority: u32) -> Result<(), ApiError> {
        match &self.token {
            // Out of range is bad input, not a denial: the field check refuses it.
            _ if priority > qm_shared::limits::PRIORITY_MAX => Ok(()),
            Some(t) if priority > t.priority_max => Err(ApiError::PermissionDenied(format!(
                "rule priority-ceiling: {field} {priority} is above {}'s ceiling {}",
                self.shown(),
                t.priority_max
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses a resource path outside the principal's prefixes.
    pub fn check_path(&self, field: &str, path: &str) -> Result<(), ApiError> {
        match &self.token {
            Some(t) if !t.may_acquire(path) => Err(ApiError::PermissionDenied(format!(
                "rule path-prefix: {field} {path} is outside {}'s path prefixes [{}]",
                self.shown(),
                t.path_prefixes.iter().cloned().collect::<Vec<_>>().join(", ")
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses an acquire set (or a task's resources) with a path outside the principal's
    /// prefixes or a priority above its ceiling.
    pub fn check_items(&self, items: &[crate::state::Item], priority: u32) -> Result<(), ApiError> {
        self.check_priority("priority", priority)?;
        for (i, item) in items.iter().enumerate() {
            self.check_path(&format!("resources[{i}].resource"), item.path.as_str())?;
        }
        Ok(())
    }

    /// Refuses work for a team the principal is not granted (operators act for every team).
    pub fn check_team(&self, field: &str, team: &str) -> Result<(), ApiError> {
        match &self.token {
            Some(t) if !t.has(AclRole::Operator) && !TokenSpec::grants(&t.teams, team) => {
                Err(ApiError::PermissionDenied(format!(
                    "rule team: {field} {team:?} is not among {}'s teams [{}]",
                    self.shown(),
                    t.teams.iter().cloned().collect::<Vec<_>>().join(", ")
                )))
            }
            _ => Ok(()),
        }
    }

    /// Refuses a worker node id the principal is not granted.
    pub fn check_node(&self, field: &str, node_id: &str) -> Result<(), ApiError> {
        match &self.token {
            Some(t) if !TokenSpec::grants(&t.nodes, node_id) => Err(ApiError::PermissionDenied(format!(
                "rule worker-node: {field} {node_id:?} is not among {}'s node ids [{}]",
                self.shown(),
                t.nodes.iter().cloned().collect::<Vec<_>>().join(", ")
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses acting on a session another principal opened (an operator may act on any).
    /// A session this replica does not know yet is looked up again after a linearizable
    /// read; one that does not exist then is NOT_FOUND.
    pub async fn check_session(&self, node: &Node, session: SessionId) -> Result<(), ApiError> {
        if self.token.is_none() || self.has(AclRole::Operator) {
            return Ok(());
        }
        let owner = |node: &Node| node.shared.read(|d| d.state.session_principal(session).map(str::to_string));
        let principal = match owner(node) {
            Some(p) => p,
            None => {
                node.read_index().await?;
                owner(node).ok_or_else(|| ApiError::NotFound(format!("session {session} is unknown")))?
            }
        };
        if principal == self.name {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied(format!(
                "rule session-owner: session {session} belongs to another principal; {} may act only on its own",
                self.shown()
            )))
        }
    }
}

/// The SHA-256 of a secret, lowercase hex: how the cluster stores a token.
pub fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random secret: `qm_` and 64 hex characters (256 bits from the OS).
pub fn new_secret() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::Internal(format!("no randomness for a token: {e}")))?;
    Ok(format!("qm_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// Checks a caller-chosen secret's length and alphabet.
pub fn check_secret(field: &str, secret: &str) -> Result<(), ApiError> {
    let ok_len = (TOKEN_SECRET_LEN_MIN_BYTES..=TOKEN_SECRET_LEN_MAX_BYTES).contains(&secret.len());
    if !ok_len || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::Invalid(qm_shared::Invalid::new(
            field,
            format!(
                "must be {TOKEN_SECRET_LEN_MIN_BYTES}..={TOKEN_SECRET_LEN_MAX_BYTES} printable ASCII characters without spaces"
            ),
        )));
    }
    Ok(())
}

/// Who `headers` say is calling `path` on `port`, and whether they may.
pub fn authenticate(
    node: &Node,
    port: Port,
    path: &str,
    headers: &http::HeaderMap,
    extensions: &http::Extensions,
) -> Result<Principal, ApiError> {
    let Some(rule) = rule(path) else {
        return Err(ApiError::PermissionDenied(format!(
            "rule unknown-method: {path} is not a method this node serves"
        )));
    };
    check_port(node, port, path, rule)?;
    if rule == Rule::Peer {
        check_peer(node, path, extensions)?;
        return Ok(Principal::unrestricted());
    }
    if !node.access_control || matches!(rule, Rule::Public | Rule::Bootstrap) {
        return Ok(Principal::unrestricted());
    }
    let token = match headers.get(http::header::AUTHORIZATION) {
        Some(value) => by_bearer(node, value)?,
        None => by_certificate(node, extensions)?,
    };
    super::audit::note_token(extensions, &token);
    let now = node.clock.now_ms();
    if token.expired(now) {
        return Err(ApiError::Unauthenticated(format!(
            "token {:?} expired at {} ms since the epoch",
            token.name,
            token.expires_at.unwrap_or_default()
        )));
    }
    let principal = Principal { name: token.name.clone(), token: Some(Arc::new(token)) };
    if let Rule::AnyOf(roles) = rule {
        if !roles.iter().any(|r| principal.has(*r)) {
            let needed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            let held: Vec<&str> = principal.token.iter().flat_map(|t| t.roles.iter().map(|r| r.as_str())).collect();
            return Err(ApiError::PermissionDenied(format!(
                "rule role: {path} needs one of [{}] (or admin); token {:?} has [{}]",
                needed.join(", "),
                principal.name,
                held.join(", ")
            )));
        }
    }
    Ok(principal)
}

/// The token a bearer secret names.
fn by_bearer(node: &Node, value: &http::HeaderValue) -> Result<TokenSpec, ApiError> {
    let value =
        value.to_str().map_err(|_| ApiError::Unauthenticated("the authorization header is not ASCII".into()))?;
    let secret = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| ApiError::Unauthenticated("the authorization header is not `Bearer <token>`".into()))?;
    if secret.len() > TOKEN_SECRET_LEN_MAX_BYTES {
        return Err(ApiError::Unauthenticated("unknown or revoked token".into()));
    }
    let hash = hash_secret(secret.trim());
    let (token, bootstrapped) =
        node.shared.read(|d| (d.state.acl().by_hash(&hash).cloned(), d.state.acl().bootstrapped()));
    match token {
        Some(token) => Ok(token),
        // The configured first admin token, before the leader has applied it: the cluster is
        // still starting, so the caller is told to retry, not that its token is unknown.
        None if !bootstrapped && node.initial_admin_hash.as_deref() == Some(hash.as_str()) => {
            Err(ApiError::Unavailable(
                "access control is being bootstrapped from the configured initial admin token; retry".into(),
            ))
        }
        None => Err(ApiError::Unauthenticated("unknown or revoked token".into())),
    }
}

/// With no bearer token: the principal a verified client certificate names
/// (`<name>.client.qm`), granted what the token of that name grants; a certificate is an
/// identity, the token table holds every principal's grants.
fn by_certificate(node: &Node, extensions: &http::Extensions) -> Result<TokenSpec, ApiError> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let named = extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.peer_certs())
        .and_then(|certs| crate::tls::principal_of(&certs));
    let Some(name) = named else {
        return Err(ApiError::Unauthenticated(
            "no token: set `authorization: Bearer <token>` (qm: QM_TOKEN or the token file), or present a client \
             certificate naming a principal"
                .into(),
        ));
    };
    node.shared.read(|d| d.state.acl().named(&name).cloned()).ok_or_else(|| {
        ApiError::Unauthenticated(format!(
            "the client certificate names principal {name:?}, which no token grants anything: \
             qm token create --name {name} --role …"
        ))
    })
}

/// Highest node id a node that knows no membership yet (a fresh joiner) accepts a peer
/// certificate for: it cannot tell members from others until the leader reaches it.
pub const JOINER_NODE_IDS_MAX: u64 = 1_024;

/// The peer port serves Raft RPCs alone; a node with a peer port serves none on its client
/// port. Checked before anything else about the call, so a refusal here changes nothing.
fn check_port(node: &Node, port: Port, path: &str, rule: Rule) -> Result<(), ApiError> {
    match (port, rule == Rule::Peer) {
        (Port::Peer, false) => Err(ApiError::PermissionDenied(format!(
            "rule peer-port: {path} is not served on the peer port, which serves only qm.v1.RaftPeer"
        ))),
        (Port::Client, true) if node.peer_port => {
            Err(ApiError::PermissionDenied(format!("rule peer-port: {path} is served only on the peer port")))
        }
        _ => Ok(()),
    }
}

/// A Raft RPC under TLS needs a certificate from the cluster CA naming a member (or the
/// initial voters): a client's certificate names no node, and is refused.
fn check_peer(node: &Node, path: &str, extensions: &http::Extensions) -> Result<(), ApiError> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    if !node.tls {
        return Ok(());
    }
    let certs = extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.peer_certs());
    let Some(certs) = certs.filter(|c| !c.is_empty()) else {
        return Err(ApiError::PermissionDenied(format!(
            "rule peer-certificate: {path} needs a node certificate from the cluster CA; none was presented"
        )));
    };
    let mut members: BTreeSet<u64> = node.initial_members.clone();
    members.extend(node.raft.metrics().borrow().membership_config.membership().nodes().map(|(id, _)| *id));
    let named = if members.is_empty() {
        (1..=JOINER_NODE_IDS_MAX).any(|id| crate::tls::names_node(&certs, id))
    } else {
        members.iter().any(|id| crate::tls::names_node(&certs, *id))
    };
    if named {
        Ok(())
    } else {
        Err(ApiError::PermissionDenied(format!(
            "rule peer-certificate: {path} needs a certificate naming a member node (node-<id>.peer.qm); this one names none of {members:?}"
        )))
    }
}

/// Takes a call from `principal`'s write rate at this node ([`super::rate`]) when `path`
/// needs a role beyond reading; RESOURCE_EXHAUSTED naming the rule and when to retry when
/// its bucket is empty.
fn within_rate(node: &Node, path: &str, principal: Principal) -> Result<Principal, ApiError> {
    // Off (the default): no second look-up of the method's rule on every call.
    if node.write_rate.rate().is_none() || !matches!(rule(path), Some(Rule::AnyOf(_))) {
        return Ok(principal);
    }
    match node.write_rate.take(&principal.name, node.clock.now_ms()) {
        Ok(()) => Ok(principal),
        Err(retry_ms) => {
            let rate = node.write_rate.rate().expect("a bucket ran dry, so there is a rate");
            let unit = if rate.per_ms == 60_000 { "minute" } else { "second" };
            Err(ApiError::ResourceExhausted(format!(
                "{}: principal {:?} is over its {} calls a {unit} on this node; retry in {retry_ms} ms",
                super::rate::RULE,
                principal.name,
                rate.calls
            )))
        }
    }
}

/// The tower layer that runs [`authenticate`] in front of every service of a port.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    pub node: Arc<Node>,
    pub port: Port,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner, node: self.node.clone(), port: self.port }
    }
}

/// [`AuthLayer`]'s service.
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    node: Arc<Node>,
    port: Port,
}

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let checked = authenticate(&self.node, self.port, req.uri().path(), req.headers(), req.extensions())
            .and_then(|principal| within_rate(&self.node, req.uri().path(), principal));
        match checked {
            Ok(principal) => {
                req.extensions_mut().insert(principal);
                Box::pin(self.inner.call(req))
            }
            Err(e) => {
                tracing::info!(method = req.uri().path(), error = %e, "call denied");
                let status: Status = e.into();
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `rpc` of every `service` in `proto/` has a rule, and every rule of ours names one.
    #[test]
    fn every_method_has_a_rule() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/qm/v1");
        let mut methods = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("proto dir") {
            let text = std::fs::read_to_string(entry.expect("entry").path()).expect("proto");
            let mut service = None;
            for line in text.lines().map(str::trim) {
                if let Some(rest) = line.strip_prefix("service ") {
                    service = rest.split_whitespace().next().map(str::to_string);
                } else if let (Some(rest), Some(s)) = (line.strip_prefix("rpc "), &service) {
                    let name = rest.split('(').next().expect("rpc name").trim();
                    methods.push(format!("/qm.v1.{s}/{name}"));
                }
            }
        }
        assert!(methods.len() > 40, "{methods:?}");
        for m in &methods {
            assert!(rule(m).is_some(), "{m} has no rule in RULES");
        }
        for (path, _) in RULES.iter().filter(|(p, _)| p.starts_with("/qm.v1.")) {
            assert!(methods.iter().any(|m| m == path), "RULES names {path}, which no proto declares");
        }
        assert_eq!(rule("/qm.v1.Sessions/Nope"), None);
    }

    #[test]
    fn a_prefix_matches_at_a_segment_boundary() {
        let t = TokenSpec {
            name: "t".into(),
            hash: hash_secret("x"),
            roles: [AclRole::Submitter].into(),
            teams: Default::default(),
            path_prefixes: ["pg:team-a".to_string()].into(),
            priority_max: 500,
            nodes: Default::default(),
            expires_at: Some(10),
            created_at: 0,
        };
        assert!(t.may_acquire("pg:team-a"));
        assert!(t.may_acquire("pg:team-a/table:orders"));
        assert!(t.may_acquire("pg:team-a/table:orders/rows:[1,5)"));
        assert!(!t.may_acquire("pg:team-a2"));
        assert!(!t.may_acquire("pg:team"));
        assert!(!t.may_acquire("pg:team-b/table:orders"));
        assert!(t.has(AclRole::Submitter) && !t.has(AclRole::Operator));
        assert!(!t.expired(9) && t.expired(10));
        assert_eq!(hash_secret("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
