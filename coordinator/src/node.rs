//! One coordinator: Raft, its storage, the leader's duties, and how writes and reads reach
//! the leader.
//!
//! ```text
//!   propose(cmd) ─▶ leader? ── yes ─▶ wait for this term's RestartLeases ─▶ batcher ─▶ client_write
//!                     └─ no ─▶ forward once to the leader (RaftPeer.Propose)
//!                                └─ failing that: NotLeader{leader hint} → UNAVAILABLE
//!   read_index()  ─▶ leader? ── yes ─▶ ensure_linearizable
//!                     └─ no ─▶ ask the leader for its read index, wait to apply it
//!   leader duties: on a new term propose RestartLeases first, then Tick every tick_ms
//! ```
//!
//! No wait here lasts forever. Every wait on a Raft write is bounded and given up when the
//! term it was made in ends ([`crate::raft::bounded`]): openraft leaves a write unanswered
//! when its leader is deposed and then catches up by snapshot. A leader whose term's
//! RestartLeases does not commit within `RESTART_COMMIT_MS_MAX` is not serving: it steps
//! down ([`crate::api::transfer::step_down`]), and until then `/readyz` and `qm cluster
//! status` call it not ready.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use qm_shared::client::Connector;
use qm_shared::limits::{COMMAND_BYTES_MAX, SNAPSHOT_CHUNK_BYTES_MAX};
use qm_shared::pb::v1 as pb;
use qm_shared::Invalid;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::audit::{AuditConfig, AuditLog};
use crate::batcher::Batcher;
use crate::clock::Clock;
use crate::error::ApiError;
use crate::raft::bounded::{within_term, Abandoned};
use crate::raft::log_store::LogStore;
use crate::raft::mem_store::MemStore;
use crate::raft::network::{self, NetworkFactory};
use crate::raft::sled_store::SledStore;
use crate::raft::state_machine::{Shared, StateMachine};
use crate::raft::store::Store;
use crate::raft::{Node as RaftNode, NodeId, Raft, RaftMetrics, Request};
use crate::state::{validate_command, Command, LogIndex, Response};

/// How long a new leader may take to commit its term's RestartLeases before it steps down;
/// its writes and reads wait for it at most this long.
pub const RESTART_COMMIT_MS_MAX: u64 = 5_000;
/// How long one Tick may wait to commit.
const TICK_WAIT_MS_MAX: u64 = 2_000;
/// Deadline of a forwarded write or read-index call.
const FORWARD_TIMEOUT_MS: u64 = 5_000;

/// Tunables of one coordinator process (not replicated).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Address clients (and, without a peer port, peers) use to reach this node's gRPC port.
    pub advertise: String,
    /// Address peers use to reach this node's peer port (`--peer-listen`), which serves
    /// `qm.v1.RaftPeer` only; the client port then refuses it. Empty: no peer port, Raft is
    /// served on the client port.
    pub peer_advertise: String,
    /// Data directory for the sled store; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    /// Initial voters `id → addresses`, used once, when the cluster is first formed. The node
    /// with the lowest id initializes it; the others wait to hear from it. Empty: join an
    /// existing cluster later (`qm cluster add`).
    pub initial_members: BTreeMap<NodeId, RaftNode>,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Period of the leader's Tick.
    pub tick_ms: u64,
    /// Build a snapshot (and purge the log before it) every this many entries.
    pub snapshot_logs: u64,
    /// Work-item class → priority (`jobs.classes`).
    pub classes: BTreeMap<String, u32>,
    /// Every call needs a token the cluster knows (see `api/auth.rs`). On by default; off
    /// only for embedded uses that have no network edge of their own (the simulator).
    pub access_control: bool,
    /// SHA-256 (hex) of an operator-chosen first admin secret: a leader that finds the
    /// cluster not bootstrapped bootstraps it with this token, so automation needs no
    /// `qm acl bootstrap` step (the same secret on every node; whichever leads first wins).
    pub initial_admin_hash: Option<String>,
    /// TLS on the gRPC port and toward peers; `None`: plaintext.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Plaintext on a non-loopback address was asked for (`--insecure`): said at start and
    /// in `/health`.
    pub insecure: bool,
    /// Bytes of audit records kept (`--audit-bytes-max`), under `<data_dir>/audit` or, with no
    /// data directory, in memory.
    pub audit_bytes_max: u64,
    /// Calls needing a role that one principal may make on this node
    /// (`--write-rate-per-principal`); `None`: no limit.
    pub write_rate: Option<crate::api::rate::Rate>,
    /// The replicated state's quota in encoded bytes (`--state-bytes-max`): past it the leader
    /// raises the storage alarm (NOSPACE).
    pub state_bytes_max: u64,
}

impl NodeConfig {
    pub fn single(id: NodeId, advertise: String, data_dir: Option<PathBuf>) -> NodeConfig {
        NodeConfig {
            id,
            initial_members: BTreeMap::from([(id, RaftNode::new(advertise.clone()))]),
            advertise,
            peer_advertise: String::new(),
            data_dir,
            heartbeat_ms: 100,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            tick_ms: 200,
            snapshot_logs: 10_000,
            classes: default_classes(),
            access_control: true,
            initial_admin_hash: None,
            tls: None,
            insecure: false,
            audit_bytes_max: qm_shared::limits::AUDIT_BYTES_DEFAULT,
            write_rate: None,
            state_bytes_max: qm_shared::limits::STATE_BYTES_DEFAULT,
        }
    }
}

/// The default class priorities: incident > hotfix > security > feature > refactor > docs.
pub fn default_classes() -> BTreeMap<String, u32> {
    qm_shared::workflow_file::CLASSES.iter().map(|(c, p)| (c.to_string(), *p)).collect()
}

/// A running coordinator.
pub struct Node {
    pub id: NodeId,
    pub advertise: String,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub clock: Arc<dyn Clock>,
    /// How this node dials its peers (real TCP, or the simulator's network).
    pub connector: Connector,
    batcher: Batcher,
    /// Set while this leader hands leadership over: it proposes nothing (writes answer
    /// UNAVAILABLE and are retried by clients), so the followers' leases lapse and the
    /// target's log stays the newest.
    pub transferring: std::sync::atomic::AtomicBool,
    /// The term whose RestartLeases has committed (0: none yet).
    restarted_term: watch::Sender<u64>,
    /// Peer clients by address, for forwarding (bounded by the membership).
    peers: Mutex<BTreeMap<String, pb::raft_peer_client::RaftPeerClient<Channel>>>,
    store_size: Arc<dyn Fn() -> u64 + Send + Sync>,
    tick_ms: u64,
    pub classes: BTreeMap<String, u32>,
    /// Whether calls are authenticated and authorized ([`NodeConfig::access_control`]).
    pub access_control: bool,
    pub(crate) initial_admin_hash: Option<String>,
    /// Whether the gRPC port serves TLS (peer RPCs then need a node certificate).
    pub tls: bool,
    /// Whether this node has a separate peer port ([`NodeConfig::peer_advertise`]): Raft RPCs
    /// are then refused on the client port.
    pub peer_port: bool,
    pub insecure: bool,
    /// The voters the cluster was first formed with (besides the membership Raft knows).
    pub initial_members: BTreeSet<NodeId>,
    /// What arrived at this node's edge (not replicated).
    pub audit: AuditLog,
    /// Per-principal write rates at this node's edge (not replicated).
    pub write_rate: crate::api::rate::WriteRate,
    /// The replicated state's quota ([`NodeConfig::state_bytes_max`]).
    pub state_bytes_max: u64,
    /// The state's encoded size as this node last measured it, and when (clock ms) the next
    /// measurement is due.
    state_bytes: std::sync::atomic::AtomicU64,
    state_measure_due: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).field("advertise", &self.advertise).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("opening the store: {0}")]
    Store(#[from] crate::raft::store::StoreError),
    #[error("starting raft: {0}")]
    Raft(String),
    #[error("invalid raft config: {0}")]
    Config(String),
    #[error("opening the audit log: {0}")]
    Audit(std::io::Error),
}

impl Node {
    /// Opens storage and starts Raft (sled when `data_dir` is set, memory otherwise).
    pub async fn start(config: NodeConfig, clock: Arc<dyn Clock>) -> Result<Arc<Node>, StartError> {
        match &config.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StartError::Store(crate::raft::store::StoreError::Io { space: "meta", source: e }))?;
                let store = SledStore::open(&dir.join("raft"))?;
                Node::start_with(config, clock, store).await
            }
            None => Node::start_with(config, clock, MemStore::new()).await,
        }
    }

    pub async fn start_with<S: Store>(
        config: NodeConfig,
        clock: Arc<dyn Clock>,
        store: S,
    ) -> Result<Arc<Node>, StartError> {
        let connector = match &config.tls {
            Some(files) => {
                Connector::tls(crate::tls::client_tls(files).map_err(|e| StartError::Config(e.to_string()))?)
            }
            None => Connector::tcp(),
        };
        Node::start_with_connector(config, clock, store, connector).await
    }

    /// Like [`Node::start_with`], dialing peers through `connector` (the simulator's network).
    pub async fn start_with_connector<S: Store>(
        config: NodeConfig,
        clock: Arc<dyn Clock>,
        store: S,
        connector: Connector,
    ) -> Result<Arc<Node>, StartError> {
        let raft_config = openraft::Config {
            cluster_name: "quartermaster".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
            max_in_snapshot_log_to_keep: config.snapshot_logs.min(1_000),
            // Purge in batches no larger than the snapshot interval, so that the log behind a
            // snapshot goes once the next one is taken (a batch of 256 behind snapshots every
            // 100 entries would keep 356 entries).
            purge_batch_size: config.snapshot_logs.clamp(1, 256),
            // At most 64 entries an AppendEntries, and fewer when they encode past
            // APPEND_ENTRIES_BYTES_MAX: the network client splits the run (raft::network).
            max_payload_entries: 64,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES_MAX as u64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let log = LogStore::new(store.clone());
        let sm = StateMachine::open(store.clone()).map_err(|e| StartError::Raft(e.to_string()))?;
        let shared = sm.shared();
        let raft =
            Raft::new(config.id, Arc::new(raft_config), NetworkFactory { connector: connector.clone() }, log, sm)
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
        let size_store = store.clone();
        let audit_config =
            AuditConfig { dir: config.data_dir.as_ref().map(|d| d.join("audit")), bytes_max: config.audit_bytes_max };
        let audit = AuditLog::open(config.id, audit_config).map_err(StartError::Audit)?;
        let node = Arc::new(Node {
            id: config.id,
            advertise: config.advertise.clone(),
            batcher: Batcher::start(raft.clone(), clock.clone()),
            transferring: std::sync::atomic::AtomicBool::new(false),
            raft,
            shared,
            clock,
            connector,
            restarted_term: watch::Sender::new(0),
            peers: Mutex::new(BTreeMap::new()),
            store_size: Arc::new(move || size_store.size_bytes()),
            tick_ms: config.tick_ms,
            classes: config.classes.clone(),
            access_control: config.access_control,
            initial_admin_hash: config.initial_admin_hash.clone(),
            tls: config.tls.is_some(),
            peer_port: !config.peer_advertise.is_empty(),
            insecure: config.insecure,
            initial_members: config.initial_members.keys().copied().collect(),
            audit,
            write_rate: crate::api::rate::WriteRate::new(config.write_rate),
            state_bytes_max: config.state_bytes_max,
            state_bytes: std::sync::atomic::AtomicU64::new(0),
            state_measure_due: std::sync::atomic::AtomicU64::new(0),
        });
        if !config.initial_members.is_empty()
            && config.initial_members.keys().next() == Some(&config.id)
            && !node.raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))?
        {
            node.raft.initialize(config.initial_members.clone()).await.map_err(|e| StartError::Raft(e.to_string()))?;
        }
        tokio::spawn(leader_duties(node.clone()));
        Ok(node)
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    pub fn store_size_bytes(&self) -> u64 {
        (self.store_size)()
    }

    /// The replicated state's encoded size as this node last measured it (0 before the first
    /// measurement), its quota, and the storage alarm as replicated.
    pub fn space(&self) -> (u64, u64, Option<crate::state::SpaceAlarm>) {
        let bytes = self.state_bytes.load(std::sync::atomic::Ordering::Relaxed);
        (bytes, self.state_bytes_max, self.shared.read(|d| d.state.space_alarm()))
    }

    /// Measures the state at most every [`SPACE_CHECK_MS`], and less often when a
    /// measurement (a walk of the whole state under the read lock) takes long: at most
    /// 1/[`SPACE_CHECK_SLOWDOWN`] of the time. The leader then raises or clears the storage
    /// alarm when the measurement says so.
    async fn measure_space(&self, leader: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.clock.now_ms();
        if now < self.state_measure_due.load(Relaxed) {
            return;
        }
        let (bytes, alarm) = self.shared.read(|d| (d.state.encoded_len(), d.state.space_alarm()));
        let took = self.clock.now_ms().saturating_sub(now);
        self.state_measure_due.store(now + SPACE_CHECK_MS.max(took * SPACE_CHECK_SLOWDOWN), Relaxed);
        self.state_bytes.store(bytes, Relaxed);
        let quota = self.state_bytes_max;
        let change = match alarm {
            None => bytes > quota,
            Some(_) => crate::state::SpaceAlarm::clears_at(bytes, quota),
        };
        if !leader || !change {
            return;
        }
        match self.propose_local(Command::SpaceMeasured { bytes, quota }).await {
            Ok((_, crate::state::Response::SpaceMeasured { alarm: true })) => tracing::warn!(
                bytes,
                quota,
                "alarm NOSPACE raised: the replicated state is over limits.state_bytes_max; writes that add data are \
                 refused until it is back under {}% of it",
                crate::state::SPACE_ALARM_CLEAR_PERCENT
            ),
            Ok(_) => tracing::info!(bytes, quota, "alarm NOSPACE cleared"),
            Err(e) => tracing::debug!(error = %e, "space measurement not committed; measuring again"),
        }
    }

    /// The leader as this node knows it: `(id, address)`.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.metrics();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())?;
        Some((id, addr))
    }

    /// Where node `id`'s Raft RPCs (and forwarded writes and reads) go: its peer address in
    /// the membership, or its client address if it has no peer port.
    pub fn peer_address_of(&self, id: NodeId) -> Option<String> {
        let m = self.metrics();
        m.membership_config.membership().get_node(&id).map(|n| n.peer_address().to_string())
    }

    fn not_leader(&self) -> ApiError {
        let leader = self.leader().filter(|(id, _)| *id != self.id);
        ApiError::NotLeader { leader_id: leader.as_ref().map(|l| l.0), leader_address: leader.map(|l| l.1) }
    }

    fn peer(&self, addr: &str) -> Result<pb::raft_peer_client::RaftPeerClient<Channel>, ApiError> {
        let mut peers = self.peers.lock().expect("peers lock poisoned");
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let channel = network::channel(addr, &self.connector)
            .map_err(|e| ApiError::Unavailable(format!("leader address {addr}: {e}")))?;
        let client = network::peer_client(channel);
        // Bounded: addresses come from the membership; forget them all if it ever grows odd.
        if peers.len() >= 64 {
            peers.clear();
        }
        peers.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Validates and proposes a command; forwards it to the leader once if this node is not it.
    pub async fn propose(&self, command: Command) -> Result<(LogIndex, Response), ApiError> {
        validate_command(&command)?;
        match self.propose_local(command.clone()).await {
            Err(ApiError::NotLeader { leader_id: Some(id), leader_address: Some(addr) }) if id != self.id => {
                self.forward(id, &addr, command).await
            }
            other => other,
        }
    }

    /// Proposes on this node, which must be the leader. A command whose encoding is past
    /// `COMMAND_BYTES_MAX` is refused here, so no log entry is too large to replicate.
    pub async fn propose_local(&self, command: Command) -> Result<(LogIndex, Response), ApiError> {
        check_command_size(&command)?;
        self.wait_restarted().await?;
        if self.transferring.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ApiError::Unavailable("leadership transfer in progress; retry".into()));
        }
        self.batcher.propose(command).await
    }

    /// A new leader serves writes only once its RestartLeases has committed.
    async fn wait_restarted(&self) -> Result<(), ApiError> {
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return Err(self.not_leader());
        }
        let term = m.current_term;
        let mut rx = self.restarted_term.subscribe();
        let restarted = async { rx.wait_for(|t| *t >= term).await.is_ok() };
        match within_term(self.raft.metrics(), RESTART_COMMIT_MS_MAX, restarted).await {
            Ok(true) => Ok(()),
            Err(Abandoned::TermEnded { .. }) => Err(self.not_leader()),
            _ => Err(ApiError::Unavailable(format!(
                "leader of term {term} has not restarted leases yet (it steps down if that takes over {} ms)",
                RESTART_COMMIT_MS_MAX
            ))),
        }
    }

    /// The term whose RestartLeases has committed here, as it changes.
    pub fn restarted_term(&self) -> watch::Receiver<u64> {
        self.restarted_term.subscribe()
    }

    /// Whether Raft still runs here, and why not: openraft records the error that stopped
    /// its core in the metrics (`running_state`), and drops the metrics sender when the core's
    /// task ends, which is all a panic leaves behind.
    pub fn liveness(&self) -> Result<(), String> {
        let metrics = self.raft.metrics();
        if let Err(fatal) = &metrics.borrow().running_state {
            return Err(format!("raft stopped: {fatal}"));
        }
        if metrics.has_changed().is_err() {
            return Err("raft stopped: its core task has ended".into());
        }
        Ok(())
    }

    /// Whether this node serves requests now, and why not: a leader once its term's
    /// RestartLeases has committed, a follower while it knows a leader.
    pub fn readiness(&self) -> Result<String, String> {
        let m = self.metrics();
        if m.state == ServerState::Leader {
            let term = m.current_term;
            return if *self.restarted_term.borrow() >= term {
                Ok(format!("leader of term {term}, serving"))
            } else {
                Err(format!(
                    "leader of term {term} has not committed its first entry (RestartLeases); it serves nothing until it does"
                ))
            };
        }
        match m.current_leader {
            Some(l) => Ok(format!("following node {l} (term {})", m.current_term)),
            None => Err("no leader known".into()),
        }
    }

    /// Forwards `command` to the leader's peer address; `addr`, its client address, is the
    /// hint a client gets if that fails.
    async fn forward(&self, leader: NodeId, addr: &str, command: Command) -> Result<(LogIndex, Response), ApiError> {
        let hint = || ApiError::NotLeader { leader_id: Some(leader), leader_address: Some(addr.to_string()) };
        let dial = self.peer_address_of(leader).unwrap_or_else(|| addr.to_string());
        let mut client = self.peer(&dial)?;
        let mut req = tonic::Request::new(pb::ProposeRequest { command: network::to_bytes(&command) });
        req.set_timeout(Duration::from_millis(FORWARD_TIMEOUT_MS));
        let resp = match client.propose(req).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                tracing::debug!(%status, leader, "forwarding to the leader failed");
                // Dial it afresh next time: a connection that timed out may be stalled.
                self.peers.lock().expect("peers lock poisoned").remove(&dial);
                return Err(hint());
            }
        };
        match resp.outcome {
            Some(pb::propose_response::Outcome::Ok(bytes)) => network::from_bytes(&bytes)
                .map_err(|e| ApiError::Internal(format!("undecodable answer from the leader: {e}"))),
            Some(pb::propose_response::Outcome::NotLeader(n)) => Err(ApiError::NotLeader {
                leader_id: (n.leader_id != 0).then_some(n.leader_id),
                leader_address: (!n.leader_address.is_empty()).then_some(n.leader_address),
            }),
            Some(pb::propose_response::Outcome::Failed(msg)) => Err(ApiError::Unavailable(msg)),
            None => Err(hint()),
        }
    }

    /// Read-index: returns once this node has applied everything committed before the call,
    /// confirmed by the leader with a quorum. Reads after it are linearizable.
    pub async fn read_index(&self) -> Result<LogIndex, ApiError> {
        if self.metrics().state == ServerState::Leader {
            return self.local_read_index().await;
        }
        let confirmed = within_term(self.raft.metrics(), FORWARD_TIMEOUT_MS, self.raft.ensure_linearizable()).await;
        let Ok(confirmed) = confirmed else { return Err(self.not_leader()) };
        match confirmed {
            // Became leader since: ask again once this term's RestartLeases has applied.
            Ok(_) => self.local_read_index().await,
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                let (Some(leader), Some(node)) = (f.leader_id, f.leader_node) else {
                    return Err(self.not_leader());
                };
                let index = self.remote_read_index(leader, &node).await?;
                self.raft
                    .wait(Some(Duration::from_millis(FORWARD_TIMEOUT_MS)))
                    .applied_index_at_least(Some(index), "read index")
                    .await
                    .map_err(|e| ApiError::Unavailable(format!("waiting to apply index {index}: {e}")))?;
                Ok(index)
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(ApiError::Unavailable(format!("leader lost its quorum: {e}")))
            }
            Err(RaftError::Fatal(e)) => Err(ApiError::Unavailable(format!("raft stopped: {e}"))),
        }
    }

    /// Asks the leader, at its peer address, for its read index; a client's hint names its
    /// client address.
    async fn remote_read_index(&self, leader: NodeId, node: &RaftNode) -> Result<LogIndex, ApiError> {
        let mut client = self.peer(node.peer_address())?;
        let mut req = tonic::Request::new(pb::ReadIndexRequest {});
        req.set_timeout(Duration::from_millis(FORWARD_TIMEOUT_MS));
        let hint = || ApiError::NotLeader { leader_id: Some(leader), leader_address: Some(node.addr.clone()) };
        match client.read_index(req).await.map_err(|_| hint())?.into_inner().outcome {
            Some(pb::read_index_response::Outcome::Index(i)) => Ok(i),
            _ => Err(hint()),
        }
    }

    /// The local read index, for a follower asking (leader only).
    ///
    /// A node that restarts with a committed vote for itself comes back as leader of its old
    /// term at once, with the commit index it last persisted, which can be behind what the
    /// followers have applied. Its RestartLeases is the first entry it commits in this
    /// incarnation and lies past everything in its log, so once it has applied, the commit
    /// index is current again: reads wait for it, as writes do.
    pub async fn local_read_index(&self) -> Result<LogIndex, ApiError> {
        self.wait_restarted().await?;
        match within_term(self.raft.metrics(), FORWARD_TIMEOUT_MS, self.raft.ensure_linearizable()).await {
            Ok(Ok(log_id)) => Ok(log_id.map_or(0, |l| l.index)),
            _ => Err(self.not_leader()),
        }
    }

    /// Voters and learners of the effective membership, with their addresses.
    pub fn members(&self) -> (BTreeSet<NodeId>, BTreeMap<NodeId, RaftNode>) {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let nodes = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        (voters, nodes)
    }
}

/// Refuses a command that encodes past `COMMAND_BYTES_MAX`, naming the field and the bound.
pub fn check_command_size(command: &Command) -> Result<(), Invalid> {
    let len = bincode::serialized_size(command).unwrap_or(u64::MAX);
    if len > COMMAND_BYTES_MAX as u64 {
        return Err(Invalid::new(
            "command",
            format!("encodes to {len} bytes, past COMMAND_BYTES_MAX ({COMMAND_BYTES_MAX} bytes)"),
        ));
    }
    Ok(())
}

/// The leader's duties: RestartLeases first in each new term, then a Tick every `tick_ms`.
///
/// Each write is awaited within its term and a bound, so a write that will never be answered
/// (proposed in a term that ended) cannot stall the duties of a later term. A RestartLeases
/// How often a node measures the replicated state against its quota.
pub const SPACE_CHECK_MS: u64 = 1_000;
/// A measurement that took `t` waits at least `t` times this before the next.
pub const SPACE_CHECK_SLOWDOWN: u64 = 50;

/// that does not commit in `RESTART_COMMIT_MS_MAX` makes the leader step down.
async fn leader_duties(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    let mut ticker = tokio::time::interval(Duration::from_millis(node.tick_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let ticked = tokio::select! {
            _ = ticker.tick() => true,
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                false
            }
        };
        let (state, term) = {
            let m = metrics.borrow_and_update();
            (m.state, m.current_term)
        };
        let serving = state == ServerState::Leader && *node.restarted_term.borrow() >= term;
        if ticked {
            node.measure_space(serving).await;
        }
        if state != ServerState::Leader {
            continue;
        }
        if *node.restarted_term.borrow() < term {
            restart_leases(&node, term).await;
            continue;
        }
        bootstrap_from_config(&node).await;
        let transferring = node.transferring.load(std::sync::atomic::Ordering::SeqCst);
        if ticked && !transferring && node.shared.read(|d| d.state.has_timed_work()) {
            let request = Request::one(node.clock.now_ms(), Command::Tick);
            match within_term(node.raft.metrics(), TICK_WAIT_MS_MAX, node.raft.client_write(request)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "leader: tick not committed"),
                Err(abandoned) => tracing::debug!(%abandoned, "leader: tick abandoned"),
            }
        }
    }
}

/// Bootstraps access control with the configured first admin token, once, if the cluster
/// has not been bootstrapped (a refusal means another leader got there first).
async fn bootstrap_from_config(node: &Node) {
    let Some(hash) = &node.initial_admin_hash else { return };
    if node.shared.read(|d| d.state.acl().bootstrapped()) {
        return;
    }
    let token = crate::api::acl::bootstrap_token(hash.clone(), node.clock.now_ms());
    match node.propose_local(Command::BootstrapAcl(Box::new(token))).await {
        Ok((_, crate::state::Response::TokenCreated { name })) => {
            tracing::info!(token = %name, "access control bootstrapped from the configured initial admin token")
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "bootstrap from config not committed; retrying next tick"),
    }
}

/// Commits this term's RestartLeases (every lease restarts with a full TTL before any may
/// expire), or steps down when it cannot within `RESTART_COMMIT_MS_MAX`.
async fn restart_leases(node: &Node, term: u64) {
    let request = Request::one(node.clock.now_ms(), Command::RestartLeases);
    let write = node.raft.client_write(request);
    match within_term(node.raft.metrics(), RESTART_COMMIT_MS_MAX, write).await {
        Ok(Ok(r)) => {
            tracing::info!(term, index = r.log_id.index, "leader: leases restarted with a full TTL");
            node.restarted_term.send_replace(term);
        }
        Ok(Err(e)) => tracing::warn!(term, error = %e, "leader: RestartLeases failed"),
        Err(Abandoned::TimedOut { .. }) => {
            let why = format!("its term's RestartLeases did not commit within {RESTART_COMMIT_MS_MAX} ms");
            crate::api::transfer::step_down(node, term, &why).await;
        }
        Err(abandoned) => tracing::info!(term, %abandoned, "leader: RestartLeases abandoned"),
    }
}
