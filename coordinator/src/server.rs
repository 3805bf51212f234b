//! A whole coordinator process: the node, its gRPC client port, its peer port (when there is
//! one: `qm.v1.RaftPeer` only) and its admin HTTP port.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::clock::SystemClock;
use crate::node::{Node, NodeConfig};

/// Where a running coordinator listens.
#[derive(Clone, Debug)]
pub struct Bound {
    pub grpc: SocketAddr,
    /// The peer port, if the node has one.
    pub peer: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// A running coordinator; dropping it does not stop it, call [`Running::shutdown`].
#[derive(Debug)]
pub struct Running {
    pub node: Arc<Node>,
    pub bound: Bound,
    /// The gRPC ports' TLS, to reload on SIGHUP (`None`: plaintext).
    pub tls: Option<crate::tls::ServerTls>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = self.node.raft.shutdown().await;
        let node = self.node.clone();
        let _ = tokio::task::spawn_blocking(move || node.audit.flush()).await;
    }
}

/// Starts a coordinator: binds every port first (so a bad address fails fast), then Raft.
/// `peer`: the peer port's listen address (`None`: Raft is served on the gRPC port). An empty
/// `config.peer_advertise` with a peer port becomes `scheme://<bound peer address>`.
pub async fn start(
    mut config: NodeConfig,
    grpc: SocketAddr,
    peer: Option<SocketAddr>,
    admin: Option<SocketAddr>,
) -> anyhow_free::Result<Running> {
    if peer.is_none() && !config.peer_advertise.is_empty() {
        return Err(std::io::Error::other(format!(
            "a peer address ({}) is advertised but no peer port is listened on",
            config.peer_advertise
        )));
    }
    let tls = match &config.tls {
        Some(files) => {
            Some(crate::tls::ServerTls::load(files.clone()).map_err(|e| std::io::Error::other(e.to_string()))?)
        }
        None => None,
    };
    let grpc_listener = crate::api::bind(grpc).await?;
    let grpc_bound = grpc_listener.local_addr()?;
    let admin_listener = match admin {
        Some(a) => Some(crate::api::bind(a).await?),
        None => None,
    };
    let admin_bound = admin_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let peer_listener = match peer {
        Some(a) => Some(crate::api::bind(a).await?),
        None => None,
    };
    let peer_bound = peer_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let derived = config.advertise.is_empty();
    if derived {
        config.advertise = format!("{scheme}://{grpc_bound}");
    }
    if let (true, Some(bound)) = (config.peer_advertise.is_empty(), peer_bound) {
        config.peer_advertise = format!("{scheme}://{bound}");
    }
    if config.initial_members.len() == 1 {
        // A cluster of this node alone: it is reached where it says it is.
        if let Some(me) = config.initial_members.get_mut(&config.id) {
            if derived {
                me.addr = config.advertise.clone();
            }
            if me.peer_addr.is_empty() {
                me.peer_addr = config.peer_advertise.clone();
            }
        }
    }
    let peer_advertise = config.peer_advertise.clone();
    let node = Node::start(config, Arc::new(SystemClock)).await.map_err(|e| std::io::Error::other(e.to_string()))?;
    check_own_entry(&node, &peer_advertise);
    let (stop, stopped) = watch::channel(false);
    let signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = Vec::new();
    let n = node.clone();
    let s = signal(stopped.clone());
    let server_tls = tls.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = crate::api::serve(n, grpc_listener, server_tls, s).await {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    }));
    if let Some(listener) = peer_listener {
        let n = node.clone();
        let s = signal(stopped.clone());
        let peer_tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = crate::api::serve_peer(n, listener, peer_tls, s).await {
                tracing::error!(error = %e, "gRPC peer server stopped");
            }
        }));
    }
    if let Some(listener) = admin_listener {
        let n = node.clone();
        let s = signal(stopped.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = crate::admin::serve(n, listener, s).await {
                tracing::error!(error = %e, "admin HTTP server stopped");
            }
        }));
    }
    Ok(Running { node, bound: Bound { grpc: grpc_bound, peer: peer_bound, admin: admin_bound }, tls, stop, tasks })
}

/// Says loudly when this node's own membership entry (read back from its data directory)
/// disagrees with how it was started: the others send Raft where the entry says, so a node
/// restarted without the peer port its entry names, or with one its entry does not name, is
/// cut off from Raft until it is removed and added back with the addresses it serves.
fn check_own_entry(node: &Node, peer_advertise: &str) {
    let metrics = node.raft.metrics();
    let metrics = metrics.borrow();
    let Some(me) = metrics.membership_config.membership().get_node(&node.id) else { return };
    if me.peer_addr.is_empty() != peer_advertise.is_empty() {
        tracing::error!(
            node = node.id,
            entry = %me,
            peer_listen = %if peer_advertise.is_empty() { "none" } else { peer_advertise },
            "this node's membership entry and its peer port disagree: the other nodes send Raft to \
             the entry's {} address; restart it as its entry says, or remove it and add it back",
            if me.peer_addr.is_empty() { "client" } else { "peer" }
        );
    }
}

mod anyhow_free {
    pub type Result<T> = std::result::Result<T, std::io::Error>;
}
