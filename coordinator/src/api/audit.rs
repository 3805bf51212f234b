//! What arrived at this node's edge and how it was answered: the tower layer that feeds the
//! audit log ([`crate::audit`]), and `qm.v1.Audit`, which lists it.
//!
//! ```text
//!   request ─▶ Recorder (outermost layer): method, peer address, a trail in the extensions
//!                │   the body teed: the bytes the service reads are kept (a call refused
//!                │   before its body is read never has it read)
//!                ├─▶ Auth: names the token's principal in the trail ─▶ the service
//!                ◀── the answer: `grpc-status` in its headers (an error, or a trailers-only
//!                │   answer), else OK (a unary answer); a stream that started is watched
//!                │   to its trailers, where a handler's status ending it is
//!                └─ recorded when the method is admin-, operator- or approver-only (RULES),
//!                   an operator's cancel or retry, or the answer is a denial
//! ```
//!
//! Denials are seen as answers, so those a handler gives (session owner, path prefix,
//! priority ceiling, team, gate `by`) are recorded like the layer's own. Ordinary reads and
//! holder traffic (acquire, keepalive, …) that succeed are not recorded: too many.
//!
//! What this module must not do: fail or delay a call beyond recording it in memory, or
//! put a secret in a record (summaries are rendered field by field, `convert::audit`).

use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use qm_shared::limits::CLIENT_MESSAGE_BYTES_MAX;
use qm_shared::pb::v1 as pb;
use tonic::body::Body;
use tonic::{Request, Response as GrpcResponse, Status};

use super::auth::{rule, Rule};
use super::convert;
use crate::audit::Call;
use crate::error::ApiError;
use crate::node::Node;
use crate::state::{AclRole, TokenSpec};

/// Methods whose requests stream: their bodies are never kept. `streaming_methods_are_listed`
/// checks this against the protocol.
const CLIENT_STREAMING: &[&str] = &[
    "/qm.v1.Sessions/Keepalive",
    "/qm.v1.WorkerGateway/Connect",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
];

/// Methods whose answers stream: a stream a handler ends with a denial (a keepalive on
/// another's session) says so in its trailers. Checked against the protocol with the above.
const SERVER_STREAMING: &[&str] = &[
    "/qm.v1.Reservations/Watch",
    "/qm.v1.Sessions/Keepalive",
    "/qm.v1.WorkerGateway/Connect",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
];

/// Calls open to every submitter that are recorded when an operator (or admin) makes them:
/// acting on anyone's work.
const OPERATOR_ACTS: &[&str] = &["/qm.v1.Jobs/Cancel", "/qm.v1.Jobs/Retry", "/qm.v1.Tasks/Cancel"];

/// gRPC frame header: a compression flag and the message's length.
const FRAME_HEADER_BYTES: usize = 5;

/// Which calls to a method are recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Every call, whatever its outcome.
    Always,
    /// Calls by a principal with the operator role, and denials.
    ByOperators,
    /// Denials only.
    Denials,
}

fn kind(method: &str, rule: Option<Rule>) -> Kind {
    let privileged = |r: &AclRole| matches!(r, AclRole::Admin | AclRole::Operator | AclRole::Approver);
    match rule {
        Some(Rule::Bootstrap) => Kind::Always,
        Some(Rule::AnyOf(roles)) if roles.iter().all(privileged) => Kind::Always,
        _ if OPERATOR_ACTS.contains(&method) => Kind::ByOperators,
        _ => Kind::Denials,
    }
}

/// The request bytes the service read, kept for a summary (at most one message).
#[derive(Debug, Default)]
struct Kept {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Kept {
    /// Bytes of the first message with its header, once the header has arrived.
    fn wanted(&self) -> usize {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        let mut at = 0;
        for chunk in &self.chunks {
            for b in chunk.iter().take(FRAME_HEADER_BYTES - at) {
                header[at] = *b;
                at += 1;
            }
        }
        if at < FRAME_HEADER_BYTES {
            return CLIENT_MESSAGE_BYTES_MAX + FRAME_HEADER_BYTES;
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        FRAME_HEADER_BYTES + len.min(CLIENT_MESSAGE_BYTES_MAX)
    }

    fn keep(&mut self, data: &Bytes) {
        if self.len < self.wanted() {
            self.len += data.len();
            self.chunks.push(data.clone());
        }
    }

    /// The first message's salient fields, for `method`.
    fn summary(&self, method: &str) -> String {
        if self.chunks.is_empty() {
            return String::new();
        }
        let bytes: Vec<u8> = self.chunks.iter().flat_map(|c| c.iter().copied()).collect();
        if bytes.len() < FRAME_HEADER_BYTES {
            return "(the request was not read)".into();
        }
        if bytes[0] != 0 {
            return "(a compressed request, not decoded)".into();
        }
        match bytes.get(FRAME_HEADER_BYTES..self.wanted()) {
            Some(message) => convert::request_summary(method, message),
            None => "(the request was not read whole)".into(),
        }
    }
}

/// What the layers and the service note about one call while it runs.
#[derive(Debug, Default)]
struct Trail {
    /// The token's name, and whether it has the operator role.
    principal: OnceLock<(String, bool)>,
    kept: Mutex<Kept>,
}

/// The trail as it rides in a request's extensions.
#[derive(Clone, Debug)]
struct AuditTrail(Arc<Trail>);

/// Names the principal of the call whose extensions these are (called by `Auth` once it has
/// found the token, whether or not the call is then allowed).
pub fn note_token(extensions: &http::Extensions, token: &TokenSpec) {
    if let Some(trail) = extensions.get::<AuditTrail>() {
        let _ = trail.0.principal.set((token.name.clone(), token.has(AclRole::Operator)));
    }
}

/// One call being watched, from its request to its answer.
#[derive(Debug)]
struct Watch {
    /// The request's URI (shared bytes: cloning it copies no text).
    uri: http::Uri,
    rule: Option<Rule>,
    kind: Kind,
    peer: Option<std::net::SocketAddr>,
    sent_token: bool,
    trail: Arc<Trail>,
}

impl Watch {
    /// Starts watching `req`: a trail in its extensions, its body teed unless it streams.
    fn start(req: &mut http::Request<Body>) -> Watch {
        let uri = req.uri().clone();
        let method = uri.path();
        let rule = rule(method);
        let trail = Arc::new(Trail::default());
        req.extensions_mut().insert(AuditTrail(trail.clone()));
        let serves_clients = matches!(rule, Some(Rule::Read | Rule::AnyOf(_) | Rule::Bootstrap));
        if serves_clients && !CLIENT_STREAMING.contains(&method) {
            let body = std::mem::replace(req.body_mut(), Body::empty());
            *req.body_mut() = Body::new(Observed { inner: body, look: Look::Request(trail.clone()) });
        }
        Watch {
            kind: kind(method, rule),
            peer: peer_address(req.extensions()),
            sent_token: req.headers().contains_key(http::header::AUTHORIZATION),
            uri,
            rule,
            trail,
        }
    }

    /// Who the call came from, as far as this node could tell.
    fn principal(&self, node: &Node) -> String {
        let name = match (self.trail.principal.get(), self.rule) {
            (Some((name, _)), _) => return name.clone(),
            (None, Some(Rule::Peer)) => "peer",
            (None, None) => "unchecked",
            (None, Some(Rule::Public | Rule::Bootstrap)) => "anonymous",
            (None, _) if !node.access_control || !self.sent_token => "anonymous",
            (None, _) => "unknown token",
        };
        name.to_string()
    }

    /// Records the call whose status (if any: none is OK) is in `headers` — the answer's
    /// headers, or a stream's trailers — if it is one to record.
    fn finish(self, node: &Node, headers: &http::HeaderMap) {
        let status = Status::from_header_map(headers);
        let (code, message) = status.map_or((0, String::new()), |s| (s.code() as i32, s.message().to_string()));
        let denied = crate::audit::is_denial(code, &message);
        let by_operator = self.trail.principal.get().is_some_and(|(_, operator)| *operator);
        let wanted = match self.kind {
            Kind::Always => true,
            Kind::ByOperators => by_operator || denied,
            Kind::Denials => denied,
        };
        if !wanted {
            return;
        }
        let method = self.uri.path();
        let request = self.trail.kept.lock().expect("audit trail lock poisoned").summary(method);
        let peer = self.peer.map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let call = Call { principal: self.principal(node), peer, method: method.to_string(), request, code, message };
        node.audit.record(node.clock.now_ms(), call);
    }
}

/// What a watched body looks for as its frames pass.
#[derive(Debug)]
enum Look {
    /// A request's bytes, kept for its summary (cheap: `Bytes` are shared).
    Request(Arc<Trail>),
    /// A streamed answer's trailers, where the status ending it is; recorded once.
    Trailers(Option<(Watch, Arc<Node>)>),
}

/// A body passed through unchanged while [`Look`] sees its frames.
#[derive(Debug)]
struct Observed {
    inner: Body,
    look: Look,
}

impl Observed {
    fn see(&mut self, frame: &http_body::Frame<Bytes>) {
        match &mut self.look {
            Look::Request(trail) => {
                if let Some(data) = frame.data_ref() {
                    trail.kept.lock().expect("audit trail lock poisoned").keep(data);
                }
            }
            Look::Trailers(watch) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some((watch, node)) = watch.take() {
                        watch.finish(&node, trailers);
                    }
                }
            }
        }
    }
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            self.see(frame);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The caller's address, with or without TLS.
fn peer_address(extensions: &http::Extensions) -> Option<std::net::SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let plain = extensions.get::<TcpConnectInfo>().and_then(|i| i.remote_addr());
    plain.or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.get_ref().remote_addr()))
}

/// The tower layer that records calls into the node's audit log; it goes outside `AuthLayer`.
#[derive(Clone, Debug)]
pub struct AuditLayer {
    pub node: Arc<Node>,
}

impl<S> tower::Layer<S> for AuditLayer {
    type Service = Recorder<S>;
    fn layer(&self, inner: S) -> Recorder<S> {
        Recorder { inner, node: self.node.clone() }
    }
}

/// [`AuditLayer`]'s service.
#[derive(Clone, Debug)]
pub struct Recorder<S> {
    inner: S,
    node: Arc<Node>,
}

impl<S> tower::Service<http::Request<Body>> for Recorder<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        if rule(req.uri().path()) == Some(Rule::Public) {
            return Box::pin(self.inner.call(req));
        }
        let watch = Watch::start(&mut req);
        let answer = self.inner.call(req);
        let node = self.node.clone();
        Box::pin(async move {
            let response = answer.await?;
            let started = !response.headers().contains_key("grpc-status");
            if started && SERVER_STREAMING.contains(&watch.uri.path()) {
                let look = Look::Trailers(Some((watch, node)));
                return Ok(response.map(|inner| Body::new(Observed { inner, look })));
            }
            watch.finish(&node, response.headers());
            Ok(response)
        })
    }
}

/// `qm.v1.Audit`: this node's audit log.
#[derive(Debug)]
pub struct AuditApi {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditApi {
    async fn list(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<GrpcResponse<pb::ListAuditResponse>, Status> {
        let query = convert::audit_query(request.get_ref()).map_err(ApiError::from)?;
        let listing = self.node.audit.list(&query);
        Ok(GrpcResponse::new(convert::audit_listing(self.node.id, listing)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `rpc` whose request streams is in CLIENT_STREAMING, every one whose answer streams
    /// in SERVER_STREAMING, and nothing else is.
    #[test]
    fn streaming_methods_are_listed() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(qm_shared::pb::FILE_DESCRIPTOR_SET).expect("descriptors");
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_string();
        let (mut clients, mut servers) = (vec![reflection.clone()], vec![reflection]);
        for file in &set.file {
            for service in &file.service {
                for m in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), m.name());
                    if m.client_streaming() {
                        clients.push(path.clone());
                    }
                    if m.server_streaming() {
                        servers.push(path);
                    }
                }
            }
        }
        let sorted = |list: &[&str]| {
            let mut v: Vec<String> = list.iter().map(|m| m.to_string()).collect();
            v.sort();
            v
        };
        clients.sort();
        servers.sort();
        assert_eq!(sorted(CLIENT_STREAMING), clients);
        assert_eq!(sorted(SERVER_STREAMING), servers);
    }

    #[test]
    fn admin_operator_and_approver_methods_are_always_recorded_and_holder_traffic_only_when_denied() {
        let k = |m: &str| kind(m, rule(m));
        for m in [
            "/qm.v1.Acl/Bootstrap",
            "/qm.v1.Acl/CreateToken",
            "/qm.v1.Acl/RevokeToken",
            "/qm.v1.Cluster/AddLearner",
            "/qm.v1.Cluster/TransferLeader",
            "/qm.v1.Jobs/DecideGate",
            "/qm.v1.Jobs/SetBudget",
            "/qm.v1.Jobs/SetScheduler",
            "/qm.v1.Jobs/ApplyProject",
            "/qm.v1.Reservations/DeclareResource",
            "/qm.v1.Audit/List",
        ] {
            assert_eq!(k(m), Kind::Always, "{m}");
        }
        for m in OPERATOR_ACTS {
            assert_eq!(k(m), Kind::ByOperators, "{m}");
        }
        for m in ["/qm.v1.Reservations/Acquire", "/qm.v1.Sessions/Keepalive", "/qm.v1.Jobs/List", "/qm.v1.Nope/X"] {
            assert_eq!(k(m), Kind::Denials, "{m}");
        }
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    /// A request split across frames is put back together, and only its first message kept.
    #[test]
    fn the_first_message_is_kept_across_chunks_and_summarized() {
        use prost::Message;
        let req = pb::RevokeTokenRequest { name: "ci".into() };
        let mut bytes = framed(&req.encode_to_vec());
        bytes.extend_from_slice(&framed(b"second message, not kept"));
        let mut kept = Kept::default();
        for chunk in bytes.chunks(3) {
            kept.keep(&Bytes::copy_from_slice(chunk));
        }
        assert!(kept.len < bytes.len(), "kept {} of {}", kept.len, bytes.len());
        assert_eq!(kept.summary("/qm.v1.Acl/RevokeToken"), "name=\"ci\"");
        assert_eq!(Kept::default().summary("/qm.v1.Acl/RevokeToken"), "");
    }
}
