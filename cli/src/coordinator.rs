//! `qm coordinator run` and `qm dev`: a coordinator process in the foreground.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use qm_coordinator::node::NodeConfig;
use qm_coordinator::server;

use crate::config::Config;
use crate::Failure;

fn addr(config: &Config, key: &str) -> Result<Option<SocketAddr>, Failure> {
    let raw = config.get(key);
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| Failure::usage(format!("{key} = {raw:?}: not an ip:port address")))
}

fn peers(raw: &str) -> Result<BTreeMap<u64, String>, Failure> {
    let mut out = BTreeMap::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) =
            part.split_once('=').ok_or_else(|| Failure::usage(format!("node.peers: {part:?} is not id=address")))?;
        let id: u64 = id.trim().parse().map_err(|_| Failure::usage(format!("node.peers: {id:?} is not a node id")))?;
        if id == 0 {
            return Err(Failure::usage("node.peers: node ids start at 1"));
        }
        out.insert(id, qm_shared::client::normalize(addr));
    }
    if out.len() > 9 {
        return Err(Failure::usage(format!("node.peers: {} voters, at most 9 allowed", out.len())));
    }
    Ok(out)
}

/// The node configuration from the effective config.
pub fn node_config(config: &Config, join: bool) -> Result<(NodeConfig, SocketAddr, Option<SocketAddr>), Failure> {
    let id = config.u64("node.id", 1, u64::MAX)?;
    let listen = addr(config, "node.listen")?.ok_or_else(|| Failure::usage("node.listen is required"))?;
    let admin = addr(config, "node.admin_listen")?;
    let advertise = config.get("node.advertise").to_string();
    let advertise =
        if advertise.is_empty() { format!("http://{listen}") } else { qm_shared::client::normalize(&advertise) };
    let mut members = peers(config.get("node.peers"))?;
    if members.is_empty() && !join {
        members.insert(id, advertise.clone());
    }
    if !members.is_empty() && !members.contains_key(&id) && !join {
        return Err(Failure::usage(format!(
            "node.peers does not name this node's id {id}; use --join to start as a learner-to-be"
        )));
    }
    if join {
        members.clear();
    }
    let data_dir = config.get("node.data_dir");
    if data_dir.is_empty() {
        return Err(Failure::usage("node.data_dir is required"));
    }
    let min = config.u64("raft.election_timeout_min_ms", 50, 60_000)?;
    let max = config.u64("raft.election_timeout_max_ms", min + 1, 120_000)?;
    let heartbeat = config.u64("raft.heartbeat_ms", 10, min - 1)?;
    let node = NodeConfig {
        id,
        advertise,
        data_dir: Some(PathBuf::from(data_dir)),
        initial_members: members,
        heartbeat_ms: heartbeat,
        election_timeout_min_ms: min,
        election_timeout_max_ms: max,
        tick_ms: config.u64("raft.tick_ms", 10, 10_000)?,
        snapshot_logs: config.u64("raft.snapshot_logs", 100, 10_000_000)?,
        classes: classes(config.get("jobs.classes"))?,
    };
    Ok((node, listen, admin))
}

/// `jobs.classes`: `class=priority,...`.
fn classes(text: &str) -> Result<std::collections::BTreeMap<String, u32>, Failure> {
    let mut out = std::collections::BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || Failure::usage(format!("jobs.classes: {part:?} is not class=priority with priority 1..=1000"));
        let (class, p) = part.split_once('=').ok_or_else(bad)?;
        let p: u32 = p.trim().parse().map_err(|_| bad())?;
        if !(1..=1000).contains(&p) || class.trim().is_empty() {
            return Err(bad());
        }
        out.insert(class.trim().to_string(), p);
    }
    if out.is_empty() {
        return Err(Failure::usage("jobs.classes: names no class"));
    }
    Ok(out)
}

/// Runs until SIGINT/SIGTERM.
pub async fn run(config: &Config, join: bool) -> Result<(), Failure> {
    let (node, listen, admin) = node_config(config, join)?;
    let id = node.id;
    let running = server::start(node, listen, admin).await.map_err(|e| Failure::error(e.to_string()))?;
    eprintln!(
        "qm coordinator: node {id} serving gRPC on {}{}; data in {}",
        running.bound.grpc,
        running.bound.admin.map(|a| format!(", admin HTTP on http://{a}")).unwrap_or_default(),
        config.get("node.data_dir"),
    );
    wait_for_signal().await;
    eprintln!("qm coordinator: shutting down");
    running.shutdown().await;
    Ok(())
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
