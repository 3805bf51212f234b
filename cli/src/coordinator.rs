//! `qm coordinator run` (its arguments and handler) and the coordinator process `qm dev`
//! also starts: node configuration from the effective config, serving in the foreground.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use qm_coordinator::node::NodeConfig;
use qm_coordinator::raft::Node as RaftNode;
use qm_coordinator::server;
use qm_shared::limits::{AUDIT_BYTES_MAX, AUDIT_BYTES_MIN, STATE_BYTES_MAX_MIN};

use crate::config::Config;
use crate::Failure;

#[derive(Subcommand, Debug)]
pub enum CoordinatorCommand {
    /// Run a coordinator in the foreground until SIGINT/SIGTERM.
    #[command(after_help = "A three-node cluster on one machine:\n  \
        qm coordinator run --id 1 --listen 127.0.0.1:7071 --admin-listen 127.0.0.1:7181 --data-dir d1 --peers 1=127.0.0.1:7071,2=127.0.0.1:7072,3=127.0.0.1:7073\n  \
        (same for ids 2 and 3 with their own ports and directories)\n\
        With a separate peer port for Raft (each node's peer address after a slash):\n  \
        qm coordinator run --id 1 --listen 127.0.0.1:7071 --peer-listen 127.0.0.1:7471 --data-dir d1 --peers 1=127.0.0.1:7071/127.0.0.1:7471,2=127.0.0.1:7072/127.0.0.1:7472,3=127.0.0.1:7073/127.0.0.1:7473\n\
        The node with the lowest id forms the cluster the first time; afterwards each node \
        restarts from its data directory.")]
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Raft node id (1 or more). [config: node.id]
    #[arg(long)]
    id: Option<u64>,
    /// gRPC listen address: the client API, and Raft unless --peer-listen is given.
    /// [config: node.listen]
    #[arg(long)]
    listen: Option<String>,
    /// Peer port listen address: a second gRPC port that serves only Raft (qm.v1.RaftPeer),
    /// which the --listen port then refuses. Under TLS it takes only connections presenting a
    /// certificate from the cluster CA, and only node certificates naming a member. Every
    /// node's peer address goes in --peers as id=address/peer_address.
    /// [config: node.peer_listen]
    #[arg(long)]
    peer_listen: Option<String>,
    /// Admin HTTP listen address; empty disables it. [config: node.admin_listen]
    #[arg(long)]
    admin_listen: Option<String>,
    /// Address others reach this node at. [config: node.advertise]
    #[arg(long)]
    advertise: Option<String>,
    /// Data directory (sled). [config: node.data_dir]
    #[arg(long)]
    data_dir: Option<String>,
    /// Initial voters, id=address,... or, for nodes with a peer port,
    /// id=address/peer_address,... (at most 9). [config: node.peers]
    #[arg(long)]
    peers: Option<String>,
    /// Start empty and wait to be added with `qm cluster add`.
    #[arg(long)]
    join: bool,
    /// Period of the leader's Tick in ms. [config: raft.tick_ms]
    #[arg(long)]
    tick_ms: Option<String>,
    /// Snapshot every this many log entries. [config: raft.snapshot_logs]
    #[arg(long)]
    snapshot_logs: Option<String>,
    /// A file holding a secret (32+ characters) that becomes the first admin token if the
    /// cluster is not bootstrapped yet; give every node the same one. Without it, run
    /// `qm acl bootstrap` once. [config: acl.initial_admin_token_file]
    #[arg(long)]
    initial_admin_token_file: Option<String>,
    /// Bytes of audit records this node keeps in `<data dir>/audit` (and in memory), from
    /// 65536 to 268435456; past it the oldest go first. `qm audit list` reads them.
    /// [config: audit.bytes_max] [default: 16777216]
    #[arg(long)]
    audit_bytes_max: Option<String>,
    /// Calls needing a role beyond reading (writes, admin calls) that one principal may make
    /// on this node: N, N/s or N/m, with a burst of N; past it RESOURCE_EXHAUSTED says when to
    /// retry. 0: no limit. [config: limits.write_rate_per_principal] [default: 0]
    #[arg(long)]
    write_rate_per_principal: Option<String>,
    /// Quota of the replicated state in encoded bytes (what a snapshot takes), at least
    /// 16384. Past it the leader raises the storage alarm (NOSPACE): writes that add data are
    /// refused with RESOURCE_EXHAUSTED until the state is back under 90% of it; release,
    /// close and cancel still work. Give every node the same value; a coordinator needs about
    /// six times it in memory at the peak (docs/operations.md, "Sizing").
    /// [config: limits.state_bytes_max] [default: 268435456]
    #[arg(long)]
    state_bytes_max: Option<String>,
}

impl RunArgs {
    /// The flags given, by config key.
    fn flags(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("node.id", self.id.map(|i| i.to_string())),
            ("node.listen", self.listen.clone()),
            ("node.peer_listen", self.peer_listen.clone()),
            ("node.admin_listen", self.admin_listen.clone()),
            ("node.advertise", self.advertise.clone()),
            ("node.data_dir", self.data_dir.clone()),
            ("node.peers", self.peers.clone()),
            ("raft.tick_ms", self.tick_ms.clone()),
            ("raft.snapshot_logs", self.snapshot_logs.clone()),
            ("acl.initial_admin_token_file", self.initial_admin_token_file.clone()),
            ("audit.bytes_max", self.audit_bytes_max.clone()),
            ("limits.write_rate_per_principal", self.write_rate_per_principal.clone()),
            ("limits.state_bytes_max", self.state_bytes_max.clone()),
        ]
    }
}

/// `qm coordinator …`: the config file and the global flags (`endpoint`) join the command's
/// own flags.
pub async fn dispatch(
    command: CoordinatorCommand,
    config_file: Option<&Path>,
    global_flags: Vec<(&'static str, Option<String>)>,
) -> Result<(), Failure> {
    match command {
        CoordinatorCommand::Run(args) => {
            crate::init_tracing();
            let mut flags = args.flags();
            flags.extend(global_flags);
            let config = Config::load(config_file, &flags)?;
            run(&config, args.join).await
        }
    }
}

fn addr(config: &Config, key: &str) -> Result<Option<SocketAddr>, Failure> {
    let raw = config.get(key);
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| Failure::usage(format!("{key} = {raw:?}: not an ip:port address")))
}

/// Splits `address/peer_address` at the slash between them (a scheme's `//` is not one):
/// `(address, None)` when there is no peer address.
fn split_member(text: &str) -> (&str, Option<&str>) {
    let bytes = text.as_bytes();
    let at = (0..bytes.len()).find(|&i| {
        bytes[i] == b'/' && (i == 0 || !matches!(bytes[i - 1], b':' | b'/')) && bytes.get(i + 1) != Some(&b'/')
    });
    match at {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    }
}

/// `address` if it is `[http(s)://]host:port` (with a port number), else why not.
fn check_host_port<'a>(part: &str, address: &'a str) -> Result<&'a str, Failure> {
    let address = address.trim();
    let bare = address.strip_prefix("https://").or_else(|| address.strip_prefix("http://")).unwrap_or(address);
    let ok = match bare.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    };
    if ok {
        Ok(address)
    } else {
        Err(Failure::usage(format!("node.peers: {part:?}: {address:?} is not host:port")))
    }
}

/// `node.peers`: `id=address` or `id=address/peer_address`, comma-separated.
fn peers(raw: &str, tls: bool) -> Result<BTreeMap<u64, RaftNode>, Failure> {
    let mut out = BTreeMap::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addrs) = part.split_once('=').ok_or_else(|| {
            Failure::usage(format!("node.peers: {part:?} is not id=address or id=address/peer_address"))
        })?;
        let id: u64 = id.trim().parse().map_err(|_| Failure::usage(format!("node.peers: {id:?} is not a node id")))?;
        if id == 0 {
            return Err(Failure::usage("node.peers: node ids start at 1"));
        }
        let (addr, peer) = split_member(addrs.trim());
        if addr.trim().is_empty() {
            return Err(Failure::usage(format!("node.peers: {part:?} gives node {id} no address")));
        }
        let addr = qm_shared::client::normalize_for(check_host_port(part, addr)?, tls);
        let peer = match peer.map(str::trim) {
            None => String::new(),
            Some("") => {
                return Err(Failure::usage(format!("node.peers: {part:?} has a slash but no peer address after it")))
            }
            Some(p) => qm_shared::client::normalize_for(check_host_port(part, p)?, tls),
        };
        if peer == addr {
            return Err(Failure::usage(format!(
                "node.peers: node {id}'s peer address must differ from its address {addr}"
            )));
        }
        if out.insert(id, RaftNode::with_peer(addr, peer)).is_some() {
            return Err(Failure::usage(format!("node.peers: node {id} is named twice")));
        }
    }
    if out.len() > 9 {
        return Err(Failure::usage(format!("node.peers: {} voters, at most 9 allowed", out.len())));
    }
    Ok(out)
}

/// Where a coordinator listens: gRPC, the peer port (if any), admin HTTP (if any).
#[derive(Clone, Copy, Debug)]
pub struct Listen {
    pub grpc: SocketAddr,
    pub peer: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// The node configuration from the effective config.
pub fn node_config(config: &Config, join: bool) -> Result<(NodeConfig, Listen), Failure> {
    let id = config.u64("node.id", 1, u64::MAX)?;
    let listen = addr(config, "node.listen")?.ok_or_else(|| Failure::usage("node.listen is required"))?;
    let peer_listen = addr(config, "node.peer_listen")?;
    let admin = addr(config, "node.admin_listen")?;
    let tls = tls_files(config)?;
    let insecure = config.insecure()?;
    for (key, a) in [("node.listen", Some(listen)), ("node.peer_listen", peer_listen)] {
        if let Some(a) = a.filter(|a| tls.is_none() && !insecure && !a.ip().is_loopback()) {
            return Err(Failure::usage(format!(
                "{key} {a} is not a loopback address: serve TLS (--tls-cert, --tls-key, --tls-ca; \
                 `qm cert` makes them) or give --insecure to serve plaintext"
            )));
        }
    }
    if peer_listen == Some(listen) {
        return Err(Failure::usage(format!("node.peer_listen {listen} must differ from node.listen")));
    }
    let advertise = config.get("node.advertise").to_string();
    let advertise = if advertise.is_empty() {
        let scheme = if tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{listen}")
    } else {
        qm_shared::client::normalize_for(&advertise, tls.is_some())
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut members = peers(config.get("node.peers"), tls.is_some())?;
    let peer_advertise = match (peer_listen, members.get(&id)) {
        (None, Some(me)) if !me.peer_addr.is_empty() => {
            return Err(Failure::usage(format!(
                "node.peers gives this node ({id}) the peer address {}, but node.peer_listen is not set: \
                 give --peer-listen, or drop the peer address",
                me.peer_addr
            )))
        }
        (None, _) => String::new(),
        (Some(p), Some(me)) if me.peer_addr.is_empty() && !join => {
            return Err(Failure::usage(format!(
                "node.peer_listen is {p}, but node.peers gives this node ({id}) no peer address: \
                 write {id}={}/<peer address> so the other nodes send Raft to the peer port",
                me.addr
            )))
        }
        (Some(_), Some(me)) if !me.peer_addr.is_empty() => me.peer_addr.clone(),
        (Some(p), _) => format!("{scheme}://{p}"),
    };
    if members.is_empty() && !join {
        members.insert(id, RaftNode::with_peer(advertise.clone(), peer_advertise.clone()));
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
        peer_advertise,
        data_dir: Some(PathBuf::from(data_dir)),
        initial_members: members,
        heartbeat_ms: heartbeat,
        election_timeout_min_ms: min,
        election_timeout_max_ms: max,
        tick_ms: config.u64("raft.tick_ms", 10, 10_000)?,
        snapshot_logs: config.u64("raft.snapshot_logs", 100, 10_000_000)?,
        classes: classes(config.get("jobs.classes"))?,
        access_control: true,
        initial_admin_hash: initial_admin_hash(config)?,
        tls,
        insecure,
        audit_bytes_max: config.u64("audit.bytes_max", AUDIT_BYTES_MIN, AUDIT_BYTES_MAX)?,
        write_rate: qm_coordinator::api::rate::Rate::parse(config.get("limits.write_rate_per_principal"))
            .map_err(|e| Failure::usage(format!("limits.write_rate_per_principal: {e}")))?,
        state_bytes_max: config.u64("limits.state_bytes_max", STATE_BYTES_MAX_MIN, u64::MAX / 100)?,
    };
    Ok((node, Listen { grpc: listen, peer: peer_listen, admin }))
}

/// `tls.cert`, `tls.key`, `tls.ca`: all three, or none.
fn tls_files(config: &Config) -> Result<Option<qm_coordinator::tls::TlsFiles>, Failure> {
    let (cert, key, ca) = (config.get("tls.cert"), config.get("tls.key"), config.get("tls.ca"));
    match (cert.is_empty(), key.is_empty(), ca.is_empty()) {
        (true, true, true) => Ok(None),
        (false, false, false) => Ok(Some(qm_coordinator::tls::TlsFiles {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
            ca: PathBuf::from(ca),
        })),
        _ => Err(Failure::usage("tls.cert, tls.key and tls.ca go together: a node serving TLS needs all three")),
    }
}

/// `acl.initial_admin_token_file`: the hash of the secret it holds, checked like any secret.
fn initial_admin_hash(config: &Config) -> Result<Option<String>, Failure> {
    let key = "acl.initial_admin_token_file";
    let file = config.get(key);
    if file.is_empty() {
        return Ok(None);
    }
    let secret = crate::config::read_secret_file(key, Path::new(file))?;
    qm_coordinator::api::auth::check_secret(key, &secret).map_err(|e| Failure::usage(e.to_string()))?;
    Ok(Some(qm_coordinator::api::auth::hash_secret(&secret)))
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
    let (node, listen) = node_config(config, join)?;
    let id = node.id;
    let insecure = node.insecure;
    let running =
        server::start(node, listen.grpc, listen.peer, listen.admin).await.map_err(|e| Failure::error(e.to_string()))?;
    eprintln!(
        "qm coordinator: node {id} serving gRPC{} on {}{}{}; data in {}",
        if running.tls.is_some() { " (TLS)" } else { " (plaintext)" },
        running.bound.grpc,
        running.bound.peer.map(|p| format!(", Raft only on the peer port {p}")).unwrap_or_default(),
        running.bound.admin.map(|a| format!(", admin HTTP on http://{a}")).unwrap_or_default(),
        config.get("node.data_dir"),
    );
    if insecure && running.tls.is_none() {
        tracing::warn!(
            "INSECURE: plaintext gRPC on a non-loopback address; tokens and data cross the network in clear text"
        );
        eprintln!(
            "qm coordinator: WARNING: --insecure: plaintext on {}; anyone on the network can read tokens",
            running.bound.grpc
        );
    }
    wait_for_signal_reloading(running.tls.as_ref()).await;
    eprintln!("qm coordinator: shutting down");
    running.shutdown().await;
    Ok(())
}

/// Waits for SIGINT or SIGTERM; on SIGHUP reloads the TLS files (a bad file keeps the
/// certificates in force and says why).
async fn wait_for_signal_reloading(tls: Option<&qm_coordinator::tls::ServerTls>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => match tls.map(|t| t.reload()) {
                Some(Ok(())) => tracing::warn!("SIGHUP: TLS certificates reloaded; new connections use them"),
                Some(Err(e)) => tracing::error!(error = %e, "SIGHUP: TLS reload failed; the certificates in force stay"),
                None => tracing::info!("SIGHUP: nothing to reload (no TLS)"),
            },
        }
    }
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_an_address_and_optionally_a_peer_address_after_a_slash() {
        assert_eq!(split_member("127.0.0.1:7071"), ("127.0.0.1:7071", None));
        assert_eq!(split_member("127.0.0.1:7071/127.0.0.1:7471"), ("127.0.0.1:7071", Some("127.0.0.1:7471")));
        // A scheme's slashes are not the separator.
        assert_eq!(split_member("https://10.0.0.1:7070"), ("https://10.0.0.1:7070", None));
        assert_eq!(
            split_member("https://10.0.0.1:7070/https://10.0.0.1:7400"),
            ("https://10.0.0.1:7070", Some("https://10.0.0.1:7400"))
        );
        assert_eq!(split_member("a:1/"), ("a:1", Some("")));
    }

    #[test]
    fn peers_keep_the_old_form_and_take_peer_addresses() {
        let old = peers("1=127.0.0.1:7071, 2=127.0.0.1:7072", false).expect("the old form");
        assert_eq!(old[&1], RaftNode::new("http://127.0.0.1:7071"));
        assert_eq!(old[&2].peer_address(), "http://127.0.0.1:7072", "Raft on the client port");
        let new = peers("1=10.0.0.1:7070/10.0.0.1:7400,2=10.0.0.2:7070", true).expect("with a peer address");
        assert_eq!(new[&1], RaftNode::with_peer("https://10.0.0.1:7070", "https://10.0.0.1:7400"));
        assert_eq!(new[&1].peer_address(), "https://10.0.0.1:7400");
        assert_eq!(new[&2], RaftNode::new("https://10.0.0.2:7070"), "members may differ");
        for (bad, says) in [
            ("1=a:1/", "no peer address after it"),
            ("1=a:1/a:1", "must differ"),
            ("1=/b:2", "gives node 1 no address"),
            ("1=a:1/b", r#"\"b\" is not host:port"#),
            ("1=a/b:2", r#"\"a\" is not host:port"#),
            ("1=a:1/b:2/c:3", "is not host:port"),
            ("1=a:1,1=b:2", "named twice"),
            ("x=a:1", "is not a node id"),
        ] {
            let err = format!("{:?}", peers(bad, false).expect_err(bad));
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
