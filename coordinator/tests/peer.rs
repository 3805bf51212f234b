//! Peer-message hardening, against real coordinators: the gRPC services on loopback, Raft
//! over them, the admin port. A peer's message is input: a snapshot chunk past the snapshot
//! bound or out of order is refused without keeping it, a snapshot that breaks an invariant
//! is refused and the node keeps its state, a message past the message limit or claiming the
//! receiver's own leadership is refused and the node keeps serving, entries that together
//! exceed one message still replicate, a snapshot still installs in chunks, and `/livez`
//! fails once Raft has stopped on a storage error.
//!
//! Every wait here is for an event (a metric, a watch) and bounded by `WAIT_MS_MAX` only so
//! that a broken build fails instead of hanging; nothing sleeps.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{CommittedLeaderId, LogId, ServerState};
use qm_coordinator::clock::SystemClock;
use qm_coordinator::node::{Node, NodeConfig};
use qm_coordinator::raft::mem_store::MemStore;
use qm_coordinator::raft::store::{Pair, Space, Store, StoreError, Write};
use qm_coordinator::raft::{Node as RaftNode, NodeId, SnapshotMeta, TypeConfig};
use qm_coordinator::server::{self, Running};
use qm_coordinator::state::{Command, JobSpec, Response, SnapshotError, State};
use qm_shared::limits::{
    COMMAND_BYTES_MAX, PEER_MESSAGE_BYTES_MAX, SNAPSHOT_BYTES_MAX, SNAPSHOT_CHUNK_BYTES_MAX, TASK_PAYLOAD_BYTES_MAX,
};
use qm_shared::pb::v1 as pb;
use support::{acquire, demo_project, job, pass, Core};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// Longest a test waits for an event before it fails.
const WAIT_MS_MAX: u64 = 120_000;

fn bound() -> Duration {
    Duration::from_millis(WAIT_MS_MAX)
}

/// A coordinator on loopback ports; `member`: it forms its own one-node cluster, otherwise
/// it waits to be added.
async fn start(id: NodeId, member: bool) -> Running {
    let mut config = NodeConfig::single(id, String::new(), None);
    if !member {
        config.initial_members.clear();
    }
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    server::start(config, any, None, Some(any)).await.unwrap()
}

/// Waits until `node` leads and its term's RestartLeases has committed.
async fn serving(node: &Node) {
    let m = node.raft.wait(Some(bound())).state(ServerState::Leader, "leader").await.unwrap();
    let mut restarted = node.restarted_term();
    tokio::time::timeout(bound(), restarted.wait_for(|t| *t >= m.current_term)).await.unwrap().unwrap();
}

async fn propose(node: &Node, command: Command) -> Response {
    node.propose(command).await.unwrap().1
}

fn open(label: &str) -> Command {
    Command::OpenSession { label: label.into(), ttl_ms: 60_000, principal: String::new() }
}

/// A peer client that may send more than the peer limit (to test the server's).
async fn peer_client(addr: SocketAddr) -> pb::raft_peer_client::RaftPeerClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    pb::raft_peer_client::RaftPeerClient::new(channel)
        .max_encoding_message_size(2 * PEER_MESSAGE_BYTES_MAX)
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
}

/// The vote of a node 99 that claims to lead a later term than `node`'s: it passes the vote
/// check, so what a chunk sent under it meets is the check under test.
fn newer_vote(node: &Node) -> openraft::Vote<NodeId> {
    openraft::Vote::new_committed(node.metrics().current_term + 1, 99)
}

/// One InstallSnapshot chunk for `node`, sent under `vote`.
fn chunk_under(
    vote: openraft::Vote<NodeId>,
    node: &Node,
    id: &str,
    offset: u64,
    data: Vec<u8>,
    done: bool,
) -> pb::InstallSnapshotRequest {
    let m = node.metrics();
    let meta = SnapshotMeta {
        last_log_id: Some(LogId::new(CommittedLeaderId::new(vote.leader_id().term, 99), 1_000_000)),
        last_membership: (*m.membership_config).clone(),
        snapshot_id: id.into(),
    };
    let rpc = InstallSnapshotRequest::<TypeConfig> { vote, meta, offset, data, done };
    pb::InstallSnapshotRequest { payload: bincode::serialize(&rpc).unwrap(), target_node_id: node.id }
}

fn chunk(node: &Node, id: &str, offset: u64, data: Vec<u8>, done: bool) -> pb::InstallSnapshotRequest {
    chunk_under(newer_vote(node), node, id, offset, data, done)
}

type ChunkAnswer = Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;

fn answer(resp: pb::InstallSnapshotResponse) -> ChunkAnswer {
    match resp.outcome.unwrap() {
        pb::install_snapshot_response::Outcome::Ok(b) => Ok(bincode::deserialize(&b).unwrap()),
        pb::install_snapshot_response::Outcome::Error(b) => Err(bincode::deserialize(&b).unwrap()),
    }
}

/// The node still answers peers and clients: a stale vote gets a refusal, a write commits.
async fn still_serving(running: &Running, client: &mut pb::raft_peer_client::RaftPeerClient<Channel>) {
    let stale = VoteRequest::<NodeId>::new(openraft::Vote::new(0, 99), None);
    let req = pb::VoteRequest { payload: bincode::serialize(&stale).unwrap(), target_node_id: running.node.id };
    let outcome = client.vote(req).await.unwrap().into_inner().outcome.unwrap();
    let pb::vote_response::Outcome::Ok(bytes) = outcome else { panic!("vote answered {outcome:?}") };
    let vote: VoteResponse<NodeId> = bincode::deserialize(&bytes).unwrap();
    assert!(!vote.vote_granted);
    assert!(matches!(propose(&running.node, open("after")).await, Response::SessionOpened { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_chunks_past_the_snapshot_bound_are_refused_naming_the_field_and_the_bound() {
    let running = start(1, true).await;
    serving(&running.node).await;
    let mut client = peer_client(running.bound.grpc).await;
    let node = &running.node;
    for (offset, len, field) in
        [(SNAPSHOT_BYTES_MAX + 1, 1, "offset"), (u64::MAX, 1, "offset"), (SNAPSHOT_BYTES_MAX - 1, 2, "data")]
    {
        let status = client.install_snapshot(chunk(node, "absurd", offset, vec![7; len], false)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{status:?}");
        assert!(status.message().contains(&format!("SNAPSHOT_BYTES_MAX ({SNAPSHOT_BYTES_MAX} bytes)")), "{status:?}");
    }
    still_serving(&running, &mut client).await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_does_not_continue_the_bytes_received_is_refused_and_not_kept() {
    let running = start(1, true).await;
    serving(&running.node).await;
    let mut client = peer_client(running.bound.grpc).await;
    let node = &running.node;
    let first = client.install_snapshot(chunk(node, "s", 0, vec![1; 10], false)).await.unwrap().into_inner();
    assert!(answer(first).is_ok());
    // A gap (as a claimed offset far ahead would make), an overlap, and a chunk of another
    // snapshot that does not start at 0: each refused with where the chunk should start.
    for (id, offset, expect) in [("s", 1 << 40, 10), ("s", 5, 10), ("other", 10, 0)] {
        let resp = client.install_snapshot(chunk(node, id, offset, vec![2; 10], false)).await.unwrap().into_inner();
        let Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) = answer(resp) else {
            panic!("chunk at {offset} of {id} was not refused as a mismatch");
        };
        assert_eq!((m.expect.offset, m.got.offset), (expect, offset));
    }
    // What was received is intact: the snapshot continues where it left off.
    let next = client.install_snapshot(chunk(node, "s", 10, vec![3; 10], false)).await.unwrap().into_inner();
    assert!(answer(next).is_ok());
    still_serving(&running, &mut client).await;
    running.shutdown().await;
}

/// A snapshot of a sound state with one byte string changed so that it still decodes but a
/// session lists its owner under a name the owner does not have.
fn broken_snapshot() -> Vec<u8> {
    let mut core = Core::new();
    let session = core.open_session("s");
    core.apply(acquire(session, "victim-owner").exclusive("db:x/table:t"));
    let mut bytes = core.state.snapshot();
    let at = bytes.windows(12).position(|w| w == b"victim-owner").expect("the owner's name is in the snapshot");
    bytes[at..at + 12].copy_from_slice(b"rogue--owner");
    bytes
}

#[test]
fn restore_refuses_a_snapshot_that_decodes_but_breaks_an_invariant() {
    let err = State::restore(&broken_snapshot()).unwrap_err();
    assert!(matches!(err, SnapshotError::Invariant(_)), "{err}");
    assert!(err.to_string().contains("under another name"), "{err}");
}

/// Every single-byte change and every truncation of a snapshot holding every kind of record
/// (sessions, holders and a waiter, a worker, running and finished work items, the ledger,
/// the cache, a budget) restores to a sound state or is refused: restoring never panics.
#[test]
fn restore_never_panics_on_a_damaged_snapshot_of_every_kind_of_record() {
    use qm_shared::workflow::{OnFail, Reviewer};
    use qm_shared::Role;
    let mut core = Core::new().project(demo_project());
    core.worker("w1", &[(Role::Specifier, 1), (Role::Analyst, 1), (Role::Implementer, 1)]);
    core.budget(qm_coordinator::state::Scope::Team, "platform", 1_000_000, qm_coordinator::state::Period::Day);
    let passes = || [pass("spec", Role::Specifier).gate(Reviewer::Agent, Role::Analyst, OnFail::Retry)];
    let done = core.submit_job(job("done", passes()));
    core.drive(done);
    core.submit_job(job("running", passes()).commit("def"));
    let session = core.open_session("locks");
    core.apply(acquire(session, "a").exclusive("db:x/table:t"));
    core.apply(acquire(session, "b").exclusive("db:x/table:t"));
    let bytes = core.state.snapshot();
    for at in 12..bytes.len() {
        for flip in [0x01, 0xff] {
            let mut damaged = bytes.clone();
            damaged[at] ^= flip;
            if let Ok(state) = State::restore(&damaged) {
                state.check_invariants();
            }
        }
        assert!(State::restore(&bytes[..at]).is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_breaks_an_invariant_is_refused_and_the_node_keeps_its_state() {
    let running = start(1, true).await;
    let node = &running.node;
    serving(node).await;
    let Response::SessionOpened { session, .. } = propose(node, open("before")).await else { panic!("no session") };
    let snapshot = node.metrics().snapshot;
    let mut client = peer_client(running.bound.grpc).await;

    let status = client.install_snapshot(chunk(node, "broken", 0, broken_snapshot(), true)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("snapshot: "), "{status:?}");
    assert!(status.message().contains("breaks an invariant"), "{status:?}");

    // Nothing was installed: no snapshot, the log goes on (the leader's ticks still apply),
    // the session opened before is there.
    assert_eq!(node.metrics().snapshot, snapshot);
    assert!(node.metrics().last_applied.is_some_and(|l| l.index < 1_000), "the broken snapshot's index was taken");
    assert_eq!(node.shared.read(|d| d.state.session_label(session).map(str::to_string)), Some("before".into()));
    assert!(node.liveness().is_ok());
    still_serving(&running, &mut client).await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_message_past_the_message_limit_is_refused_and_the_node_keeps_serving() {
    let running = start(1, true).await;
    serving(&running.node).await;
    let mut client = peer_client(running.bound.grpc).await;
    let oversized = pb::AppendEntriesRequest { payload: vec![0; PEER_MESSAGE_BYTES_MAX + 1], target_node_id: 1 };
    let status = client.append_entries(oversized).await.unwrap_err();
    assert!(
        matches!(status.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted),
        "an oversized AppendEntries answered {status:?}"
    );
    assert!(running.node.liveness().is_ok());
    still_serving(&running, &mut client).await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_or_a_snapshot_claiming_to_come_from_this_node_are_refused() {
    let running = start(1, true).await;
    let node = &running.node;
    serving(node).await;
    let mut client = peer_client(running.bound.grpc).await;
    let ours = node.metrics().vote;
    // A heartbeat under this leader's own vote: openraft would follow itself.
    let heartbeat = AppendEntriesRequest::<TypeConfig> {
        vote: ours,
        prev_log_id: node
            .metrics()
            .last_log_index
            .map(|i| LogId::new(CommittedLeaderId::new(ours.leader_id().term, 1), i)),
        entries: Vec::new(),
        leader_commit: None,
    };
    let req = pb::AppendEntriesRequest { payload: bincode::serialize(&heartbeat).unwrap(), target_node_id: node.id };
    let status = client.append_entries(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("vote: "), "{status:?}");

    let status = client.install_snapshot(chunk_under(ours, node, "mine", 0, vec![1], false)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("vote: "), "{status:?}");

    assert_eq!(node.liveness(), Ok(()));
    still_serving(&running, &mut client).await;
    running.shutdown().await;
}

/// A work item of `passes` passes, one after another (only the first starts), each with an
/// executor payload of the most bytes a pass may carry: 50 passes make a command of about
/// 3 MiB, close to `COMMAND_BYTES_MAX`; 64 make one past it.
fn bulky_job(n: usize, passes: usize) -> JobSpec {
    let wrapper = r#"{"executor":"scripted","output":""}"#.len();
    let run = format!(r#"{{"executor":"scripted","output":"{}"}}"#, "x".repeat(TASK_PAYLOAD_BYTES_MAX - wrapper));
    let mut chain = Vec::new();
    for p in 0..passes {
        let mut b = pass(&format!("p{p}"), qm_shared::Role::Implementer);
        if p > 0 {
            b = b.after(&format!("p{}", p - 1));
        }
        b.0.run = run.clone().into_bytes();
        chain.push(b);
    }
    job(&format!("bulky {n}"), chain).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_past_the_command_bound_is_refused_before_it_reaches_the_log() {
    let running = start(1, true).await;
    let node = &running.node;
    serving(node).await;
    let command = Command::SubmitJob(Box::new(bulky_job(0, 64)));
    assert!(bincode::serialized_size(&command).unwrap() as usize > COMMAND_BYTES_MAX);
    let last = node.metrics().last_log_index;
    let err = node.propose(command).await.unwrap_err();
    let message = err.to_string();
    assert!(message.starts_with("command: ") && message.contains("COMMAND_BYTES_MAX"), "{message}");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::InvalidArgument);
    assert_eq!(node.metrics().last_log_index, last, "the command reached the log");
    running.shutdown().await;
}

/// Submits bulky work items on `node` until their commands total more than `bytes`.
async fn submit_bulk(node: &Node, bytes: usize) -> usize {
    assert!(matches!(
        propose(node, Command::ApplyProject(Box::new(demo_project()))).await,
        Response::ProjectApplied { .. }
    ));
    let mut total = 0;
    let mut n = 0;
    while total <= bytes {
        let command = Command::SubmitJob(Box::new(bulky_job(n, 50)));
        let len = bincode::serialized_size(&command).unwrap() as usize;
        assert!(len <= COMMAND_BYTES_MAX && len > COMMAND_BYTES_MAX / 2, "{len} bytes");
        let response = propose(node, command).await;
        assert!(matches!(response, Response::JobSubmitted { .. }), "{response:?}");
        total += len;
        n += 1;
    }
    total
}

/// Adds `learner` to `leader`'s cluster and waits until it has applied everything the leader
/// has; then their states are byte for byte the same. (Nothing here has timed work, so the
/// leader proposes no Tick meanwhile.)
async fn catch_up(leader: &Running, learner: &Running) {
    let applied = leader.node.metrics().last_applied.map(|l| l.index);
    let node = RaftNode::new(format!("http://{}", learner.bound.grpc));
    let add = leader.node.raft.add_learner(learner.node.id, node, false);
    tokio::time::timeout(bound(), add).await.unwrap().unwrap();
    learner.node.raft.wait(Some(bound())).applied_index_at_least(applied, "caught up").await.unwrap();
    let state = |n: &Node| n.shared.read(|d| d.state.snapshot());
    assert!(state(&leader.node) == state(&learner.node), "the learner's state differs from the leader's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_that_together_exceed_one_peer_message_replicate() {
    let leader = start(1, true).await;
    serving(&leader.node).await;
    // Written before the learner exists: its first AppendEntries would carry all of them.
    let total = submit_bulk(&leader.node, PEER_MESSAGE_BYTES_MAX).await;
    assert!(total > PEER_MESSAGE_BYTES_MAX);
    let learner = start(2, false).await;
    catch_up(&leader, &learner).await;
    learner.shutdown().await;
    leader.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_catches_up_by_a_snapshot_sent_in_chunks() {
    let leader = start(1, true).await;
    serving(&leader.node).await;
    submit_bulk(&leader.node, 2 * SNAPSHOT_CHUNK_BYTES_MAX).await;
    // Snapshot and purge the log, so the learner can only catch up by the snapshot.
    let applied = leader.node.metrics().last_applied.unwrap();
    leader.node.raft.trigger().snapshot().await.unwrap();
    let wait = leader.node.raft.wait(Some(bound()));
    wait.metrics(|m| m.snapshot.is_some_and(|s| s.index >= applied.index), "snapshot").await.unwrap();
    let snapshot = leader.node.metrics().snapshot.unwrap();
    leader.node.raft.trigger().purge_log(snapshot.index).await.unwrap();
    wait.metrics(|m| m.purged == Some(snapshot), "purged").await.unwrap();
    let size = leader.node.shared.read(|d| d.state.snapshot().len());
    assert!(size > SNAPSHOT_CHUNK_BYTES_MAX, "a {size}-byte snapshot goes in one chunk");

    let learner = start(2, false).await;
    catch_up(&leader, &learner).await;
    assert!(learner.node.metrics().snapshot.is_some_and(|s| s.index >= snapshot.index), "no snapshot installed");
    learner.shutdown().await;
    leader.shutdown().await;
}

/// A memory store whose writes fail once `failing` is set, like a disk gone read-only.
#[derive(Clone, Debug)]
struct FailingStore {
    inner: MemStore,
    failing: Arc<AtomicBool>,
}

impl FailingStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            let source = std::io::Error::other("injected: disk on fire");
            return Err(StoreError::Io { space: "log", source });
        }
        Ok(())
    }
}

impl Store for FailingStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(space, key)
    }

    fn batch(&self, space: Space, writes: Vec<Write>) -> Result<(), StoreError> {
        self.check()?;
        self.inner.batch(space, writes)
    }

    fn range(&self, space: Space, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, StoreError> {
        self.inner.range(space, from, to, limit)
    }

    fn last(&self, space: Space) -> Result<Option<Pair>, StoreError> {
        self.inner.last(space)
    }

    fn remove_range(&self, space: Space, from: &[u8], to: Option<&[u8]>) -> Result<(), StoreError> {
        self.check()?;
        self.inner.remove_range(space, from, to)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.check()
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
}

/// `GET path` on the admin port: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livez_fails_with_the_reason_once_raft_stops_on_a_storage_error() {
    let failing = Arc::new(AtomicBool::new(false));
    let store = FailingStore { inner: MemStore::new(), failing: failing.clone() };
    let config = NodeConfig::single(1, "http://127.0.0.1:9".into(), None);
    let node = Node::start_with(config, Arc::new(SystemClock), store).await.unwrap();
    serving(&node).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(qm_coordinator::admin::serve(node.clone(), listener, async {
        let _ = stopped.await;
    }));
    assert_eq!(get(admin, "/livez").await, (200, "ok\n".to_string()));

    failing.store(true, Ordering::SeqCst);
    // The write cannot be stored: Raft stops rather than acknowledge it.
    assert!(node.propose(open("lost")).await.is_err());
    let stopped = node.raft.wait(Some(bound())).metrics(|m| m.running_state.is_err(), "raft stopped").await;
    assert!(stopped.is_ok(), "{stopped:?}");
    let (code, body) = get(admin, "/livez").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("not live: raft stopped"), "{body}");
    assert!(body.contains("disk on fire"), "{body}");

    let _ = stop.send(());
    served.await.unwrap().unwrap();
}
