//! A whole coordinator process: the node, its gRPC port and its admin HTTP port.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::clock::SystemClock;
use crate::node::{Node, NodeConfig};

/// Where a running coordinator listens.
#[derive(Clone, Debug)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub admin: Option<SocketAddr>,
}

/// A running coordinator; dropping it does not stop it, call [`Running::shutdown`].
#[derive(Debug)]
pub struct Running {
    pub node: Arc<Node>,
    pub bound: Bound,
    /// The gRPC port's TLS, to reload on SIGHUP (`None`: plaintext).
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

/// Starts a coordinator: binds both ports first (so a bad address fails fast), then Raft.
pub async fn start(
    mut config: NodeConfig,
    grpc: SocketAddr,
    admin: Option<SocketAddr>,
) -> anyhow_free::Result<Running> {
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
    if config.advertise.is_empty() {
        let scheme = if tls.is_some() { "https" } else { "http" };
        config.advertise = format!("{scheme}://{grpc_bound}");
        if config.initial_members.len() == 1 && config.initial_members.contains_key(&config.id) {
            config.initial_members.insert(config.id, config.advertise.clone());
        }
    }
    let node = Node::start(config, Arc::new(SystemClock)).await.map_err(|e| std::io::Error::other(e.to_string()))?;
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
    if let Some(listener) = admin_listener {
        let n = node.clone();
        let s = signal(stopped.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = crate::admin::serve(n, listener, s).await {
                tracing::error!(error = %e, "admin HTTP server stopped");
            }
        }));
    }
    Ok(Running { node, bound: Bound { grpc: grpc_bound, admin: admin_bound }, tls, stop, tasks })
}

mod anyhow_free {
    pub type Result<T> = std::result::Result<T, std::io::Error>;
}
