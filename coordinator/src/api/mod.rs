//! The gRPC services: decode → validate → propose or read → encode.
//!
//! ```text
//!   client port (--listen)       every service; qm.v1.RaftPeer too unless there is a peer port
//!   peer port (--peer-listen)    qm.v1.RaftPeer only; mutual TLS under TLS
//! ```
//!
//! Every service here is thin. Validation happens at the edge ([`convert`]), writes go
//! through [`Node::propose`], linearizable reads through [`Node::read_index`], and every
//! error becomes a `tonic::Status` in one place ([`crate::error`]).

pub mod acl;
pub mod audit;
pub mod auth;
pub mod cluster;
pub mod convert;
pub mod graph;
pub mod jobs;
pub mod peer;
pub mod rate;
pub mod reservations;
pub mod sessions;
pub mod tasks;
pub mod transfer;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use qm_shared::limits::{CLIENT_MESSAGE_BYTES_MAX, PEER_MESSAGE_BYTES_MAX, WATCHERS_MAX};
use qm_shared::pb::v1 as pb;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::node::Node;

/// Which of a node's gRPC ports a server is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// Every service. With a peer port configured it refuses `qm.v1.RaftPeer` (rule
    /// `peer-port`); a client certificate is optional under TLS.
    Client,
    /// `qm.v1.RaftPeer` only (`--peer-listen`); under TLS a handshake needs a client
    /// certificate from the cluster CA, and every call one naming a member node.
    Peer,
}

/// Serves every gRPC service of `node` on `listener` until `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    tls: Option<crate::tls::ServerTls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    if let Some(tls) = tls {
        return serve_incoming(node, tls.incoming(listener, Port::Client), shutdown).await;
    }
    serve_incoming(node, tcp_incoming(listener), shutdown).await
}

/// Serves `qm.v1.RaftPeer` alone on `listener` (the peer port) until `shutdown` resolves.
pub async fn serve_peer(
    node: Arc<Node>,
    listener: TcpListener,
    tls: Option<crate::tls::ServerTls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    if let Some(tls) = tls {
        return serve_peer_incoming(node, tls.incoming(listener, Port::Peer), shutdown).await;
    }
    serve_peer_incoming(node, tcp_incoming(listener), shutdown).await
}

/// Plaintext connections accepted on `listener`.
fn tcp_incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    // A caller-supplied listener bypasses the builder's socket options: set them here, or
    // small replies wait on Nagle and the peer's delayed ACK (~40 ms per round trip).
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)))
}

/// The Raft peer service, with the peer message bounds.
fn peer_service(node: Arc<Node>) -> pb::raft_peer_server::RaftPeerServer<peer::PeerApi> {
    pb::raft_peer_server::RaftPeerServer::new(peer::PeerApi::new(node))
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
}

/// Serves `qm.v1.RaftPeer` alone on a stream of accepted connections (the peer port), behind
/// the same audit and auth layers as the client port (auth knows it is the peer port).
pub async fn serve_peer_incoming<I, IO, IE>(
    node: Arc<Node>,
    incoming: I,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error>
where
    I: futures::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let recorder = audit::AuditLayer { node: node.clone() };
    let auth = auth::AuthLayer { node: node.clone(), port: Port::Peer };
    server()
        .layer(recorder)
        .layer(auth)
        .add_service(peer_service(node))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Streams a client may reset before the server has read them, per connection, before the
/// server answers GOAWAY (HTTP/2's defence against rapid-reset floods). h2's default of 20 is
/// far too low for a node that was paused or stalled: every call that hit its deadline
/// meanwhile is a reset waiting to be read, and the GOAWAY would fail every call on the
/// connection after it resumes.
const RESET_STREAMS_PENDING_MAX: usize = 1_024;

/// The server both ports use: keepalives, a concurrency limit per connection, and the reset
/// bound above.
fn server() -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .concurrency_limit_per_connection(256)
        .http2_max_pending_accept_reset_streams(Some(RESET_STREAMS_PENDING_MAX))
}

/// Serves every gRPC service of `node` on a stream of accepted connections (the transport
/// seam: real TCP in [`serve`], the simulator's network in `qm-sim`) until `shutdown` resolves.
pub async fn serve_incoming<I, IO, IE>(
    node: Arc<Node>,
    incoming: I,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error>
where
    I: futures::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(node.clone(), health));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(qm_shared::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor set is valid");
    let sessions = pb::sessions_server::SessionsServer::new(sessions::SessionsApi { node: node.clone() })
        .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX);
    let reservations = pb::reservations_server::ReservationsServer::new(reservations::ReservationsApi {
        node: node.clone(),
        watchers: Arc::new(tokio::sync::Semaphore::new(WATCHERS_MAX)),
    })
    .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
    .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX);
    let cluster = pb::cluster_server::ClusterServer::new(cluster::ClusterApi { node: node.clone() })
        .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX);
    let tasks = pb::tasks_server::TasksServer::new(tasks::TasksApi { node: node.clone() })
        .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX);
    let jobs = pb::jobs_server::JobsServer::new(jobs::JobsApi { node: node.clone(), classes: node.classes.clone() })
        .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX);
    let gateway = pb::worker_gateway_server::WorkerGatewayServer::new(worker::GatewayApi { node: node.clone() })
        .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX);
    let acl = pb::acl_server::AclServer::new(acl::AclApi { node: node.clone() })
        .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX);
    let audit = pb::audit_server::AuditServer::new(audit::AuditApi { node: node.clone() })
        .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX);
    let recorder = audit::AuditLayer { node: node.clone() };
    let auth = auth::AuthLayer { node: node.clone(), port: Port::Client };
    // Served here also when there is a peer port, so that every call of it is answered by
    // the auth layer's PERMISSION_DENIED naming the rule, never UNIMPLEMENTED.
    let peer = peer_service(node);
    server()
        // The recorder goes outside auth, so that it sees the denials auth answers with.
        .layer(recorder)
        .layer(auth)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(sessions)
        .add_service(reservations)
        .add_service(cluster)
        .add_service(tasks)
        .add_service(jobs)
        .add_service(gateway)
        .add_service(acl)
        .add_service(audit)
        .add_service(peer)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// gRPC health: SERVING while the node is ready ([`Node::readiness`]: a follower that knows
/// a leader, a leader whose term's RestartLeases has committed), NOT_SERVING otherwise.
async fn report_health(node: Arc<Node>, health: tonic_health::server::HealthReporter) {
    let mut metrics = node.raft.metrics();
    let mut restarted = node.restarted_term();
    let mut last = None;
    loop {
        metrics.borrow_and_update();
        restarted.borrow_and_update();
        let serving = node.readiness().is_ok();
        if last != Some(serving) {
            let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
            health.set_service_status("", status).await;
            for name in [
                "qm.v1.Sessions",
                "qm.v1.Reservations",
                "qm.v1.Cluster",
                "qm.v1.Tasks",
                "qm.v1.Jobs",
                "qm.v1.WorkerGateway",
                "qm.v1.Acl",
                "qm.v1.Audit",
            ] {
                health.set_service_status(name, status).await;
            }
            last = Some(serving);
        }
        let changed = tokio::select! {
            m = metrics.changed() => m,
            r = restarted.changed() => r,
        };
        if changed.is_err() {
            return;
        }
    }
}

/// Binds a listener, naming the address on failure.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))
}
