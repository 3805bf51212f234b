//! Raft transport, client side: openraft's RPCs over gRPC (`qm.v1.RaftPeer`), sent to each
//! peer's peer address (its peer port, or its client port when it has none), presenting this
//! node's certificate under TLS (the connector carries it).
//!
//! openraft's request, response and error types travel as bincode bytes inside the protobuf
//! messages; a remote openraft error comes back in the `error` arm and is rebuilt as the same
//! typed error here. A failure to reach the peer (connect refused, reset, deadline) is mapped
//! to `Unreachable`, which makes openraft back off instead of hammering a dead node.
//!
//! openraft sends up to `max_payload_entries` entries per AppendEntries whatever their size.
//! A run of entries that encodes past `APPEND_ENTRIES_BYTES_MAX` is not sent: openraft is
//! answered `PayloadTooLarge` with the number of entries that fit (at least one), and it
//! retries at once with that many ([`entries_that_fit`]). Every single entry fits a peer
//! message, because a command is bounded (`COMMAND_BYTES_MAX`) and so is a batch of them
//! ([`ENTRY_BYTES_MAX`]), so replication never meets an entry it cannot send.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use qm_shared::client::Connector;
use qm_shared::limits::{
    APPEND_ENTRIES_BYTES_MAX, COMMAND_BYTES_MAX, ENTRY_ENVELOPE_BYTES_MAX, PEER_ENVELOPE_BYTES_MAX,
    PEER_MESSAGE_BYTES_MAX,
};
use qm_shared::pb::v1 as pb;
use tonic::transport::{Channel, Endpoint};

use super::{Node, NodeId, TypeConfig};
use crate::batcher::BATCH_BYTES_MAX;

/// How long to wait for a TCP connection to a peer.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 500;

/// The largest log entry, encoded: the batcher fills an entry with commands up to
/// `BATCH_BYTES_MAX`, or puts one larger command in it alone, and no command is larger than
/// `COMMAND_BYTES_MAX` (refused by `Node::propose_local`). Raft's own entries (blank,
/// membership: ids and addresses of at most 256 bytes) are far smaller.
pub const ENTRY_BYTES_MAX: usize =
    if (BATCH_BYTES_MAX as usize) > COMMAND_BYTES_MAX { BATCH_BYTES_MAX as usize } else { COMMAND_BYTES_MAX }
        + ENTRY_ENVELOPE_BYTES_MAX;

// Any one entry goes in one AppendEntries: replication never wedges on an entry.
const _: () = assert!(ENTRY_BYTES_MAX + PEER_ENVELOPE_BYTES_MAX < PEER_MESSAGE_BYTES_MAX);

/// How many of `rpc`'s entries to send in one AppendEntries when it may not carry them all:
/// the longest run from the first whose encoding stays within `budget` bytes, and at least
/// one (a lone entry always goes: it fits a peer message, see [`ENTRY_BYTES_MAX`]). `None`:
/// send them all.
pub fn entries_that_fit(rpc: &AppendEntriesRequest<TypeConfig>, budget: usize) -> Option<u64> {
    if rpc.entries.len() <= 1 {
        return None;
    }
    let total = encoded_len(rpc);
    if total <= budget as u64 {
        return None;
    }
    let sizes: Vec<u64> = rpc.entries.iter().map(encoded_len).collect();
    let mut used = total - sizes.iter().sum::<u64>();
    let mut fit = 0;
    for size in sizes {
        used += size;
        if used > budget as u64 {
            break;
        }
        fit += 1;
    }
    Some(fit.max(1))
}

fn encoded_len<T: serde::Serialize>(value: &T) -> u64 {
    bincode::serialized_size(value).expect("sizing an in-memory value cannot fail")
}

/// Opens a lazily connected channel to a peer's gRPC address, dialing through `connector`
/// (real TCP in production, the simulated network in the simulator).
pub fn channel(addr: &str, connector: &Connector) -> Result<Channel, tonic::transport::Error> {
    let uri = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Ok(connector.connect(
        Endpoint::from_shared(uri)?
            .connect_timeout(Duration::from_millis(PEER_CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10)),
    ))
}

/// A peer client for openraft's RPCs.
pub fn peer_client(channel: Channel) -> pb::raft_peer_client::RaftPeerClient<Channel> {
    pb::raft_peer_client::RaftPeerClient::new(channel)
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
}

pub fn to_bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("serializing to memory cannot fail")
}

pub(crate) fn from_bytes<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(bytes)
}

/// Creates one [`Network`] per peer, dialing through its connector.
#[derive(Clone, Debug, Default)]
pub struct NetworkFactory {
    pub connector: Connector,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Network {
        let connector = self.connector.clone();
        // Raft goes to the peer's peer port when it has one, else to its client port.
        let addr = node.peer_address().to_string();
        Network {
            target,
            client: channel(&addr, &connector).ok().map(peer_client),
            addr,
            node: node.clone(),
            connector,
        }
    }
}

/// The connection to one peer.
#[derive(Debug)]
pub struct Network {
    target: NodeId,
    /// Where this peer's Raft RPCs go ([`Node::peer_address`]).
    addr: String,
    node: Node,
    client: Option<PeerClient>,
    connector: Connector,
}

type RpcErr<E> = RPCError<NodeId, Node, RaftError<NodeId, E>>;

type PeerClient = pb::raft_peer_client::RaftPeerClient<Channel>;

/// A peer's answer to one of openraft's RPCs: the encoded result, the encoded error, or neither.
trait Answer {
    fn into_parts(self) -> (Option<Vec<u8>>, Option<Vec<u8>>);
}

/// Implements [`Answer`] for a response message whose `outcome` is the given oneof.
macro_rules! answer {
    ($response:ty, $outcome:ident) => {
        impl Answer for $response {
            fn into_parts(self) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
                match self.outcome {
                    Some(pb::$outcome::Outcome::Ok(b)) => (Some(b), None),
                    Some(pb::$outcome::Outcome::Error(b)) => (None, Some(b)),
                    None => (None, None),
                }
            }
        }
    };
}

answer!(pb::AppendEntriesResponse, append_entries_response);
answer!(pb::InstallSnapshotResponse, install_snapshot_response);
answer!(pb::VoteResponse, vote_response);

fn transport<E: std::error::Error>(status: tonic::Status) -> RpcErr<E> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

fn decode_err<E: std::error::Error>(e: bincode::Error) -> RpcErr<E> {
    RPCError::Network(NetworkError::new(&e))
}

impl Network {
    /// Notes a failed call. Each call is bounded here by openraft's soft deadline, before openraft
    /// gives up on it at the hard one and drops it unseen. A missed deadline can mean the
    /// connection itself is stalled: after
    /// a partition that lost segments, TCP may not retransmit for a long while and HTTP/2
    /// keepalive notices only after its interval and timeout (tens of seconds), during which
    /// every call on it times out. Heartbeats and votes would be lost all that time, so the
    /// peer is dialled afresh instead.
    fn failed<E: std::error::Error>(&mut self, status: tonic::Status) -> RpcErr<E> {
        if status.code() == tonic::Code::DeadlineExceeded {
            self.client = channel(&self.addr, &self.connector).ok().map(peer_client);
        }
        transport(status)
    }

    fn client<E: std::error::Error>(&self) -> Result<PeerClient, RpcErr<E>> {
        self.client.clone().ok_or_else(|| {
            let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad peer address {:?}", self.addr));
            RPCError::Unreachable(Unreachable::new(&e))
        })
    }

    fn request<T>(&self, message: T, option: &RPCOption) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.set_timeout(option.hard_ttl());
        req
    }

    /// One of openraft's RPCs to the peer: sent with openraft's hard deadline, awaited up to
    /// its soft one (see [`Network::failed`]), and its answer turned into openraft's result.
    async fn call<M, A, R, E, Fut>(
        &mut self,
        message: M,
        option: &RPCOption,
        send: impl FnOnce(PeerClient, tonic::Request<M>) -> Fut,
    ) -> Result<R, RpcErr<E>>
    where
        A: Answer,
        Fut: std::future::Future<Output = Result<tonic::Response<A>, tonic::Status>>,
        R: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let client = self.client()?;
        let req = self.request(message, option);
        let resp = match tokio::time::timeout(option.soft_ttl(), send(client, req)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => return Err(self.failed(status)),
            Err(_) => return Err(self.failed(tonic::Status::deadline_exceeded("no answer within the RPC's deadline"))),
        };
        let (ok, err) = resp.into_parts();
        self.outcome(ok, err)
    }

    /// Turns a `(ok | error)` outcome into openraft's result.
    fn outcome<R, E>(&self, ok: Option<Vec<u8>>, error: Option<Vec<u8>>) -> Result<R, RpcErr<E>>
    where
        R: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        match (ok, error) {
            (Some(ok), _) => from_bytes(&ok).map_err(decode_err),
            (None, Some(err)) => {
                let err: RaftError<NodeId, E> = from_bytes(&err).map_err(decode_err)?;
                Err(RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), err)))
            }
            (None, None) => {
                let e = std::io::Error::new(std::io::ErrorKind::InvalidData, "peer answered with no outcome");
                Err(RPCError::Network(NetworkError::new(&e)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        if let Some(fit) = entries_that_fit(&rpc, APPEND_ENTRIES_BYTES_MAX) {
            tracing::debug!(entries = rpc.entries.len(), fit, target = self.target, "splitting a large AppendEntries");
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit)));
        }
        let message = pb::AppendEntriesRequest { payload: to_bytes(&rpc), target_node_id: self.target };
        self.call(message, &option, |mut c: PeerClient, req| async move { c.append_entries(req).await }).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let message = pb::InstallSnapshotRequest { payload: to_bytes(&rpc), target_node_id: self.target };
        self.call(message, &option, |mut c: PeerClient, req| async move { c.install_snapshot(req).await }).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        let message = pb::VoteRequest { payload: to_bytes(&rpc), target_node_id: self.target };
        self.call(message, &option, |mut c: PeerClient, req| async move { c.vote(req).await }).await
    }

    /// After an unreachable peer: 20 ms, doubling to 320 ms. openraft's constant 500 ms would
    /// silence heartbeats to a follower that merely missed one deadline under load for longer
    /// than its election timeout allows.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new((0..).map(|i: u32| Duration::from_millis(20u64 << i.min(4))))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;
    use crate::raft::{Entry, Request};
    use crate::state::Command;

    /// An AppendEntries carrying one entry per label length given.
    fn rpc(labels: &[usize]) -> AppendEntriesRequest<TypeConfig> {
        let entries = (1..)
            .zip(labels)
            .map(|(index, len)| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(Request::one(
                    0,
                    Command::OpenSession { label: "x".repeat(*len), ttl_ms: 0, principal: String::new() },
                )),
            })
            .collect();
        AppendEntriesRequest {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            entries,
            leader_commit: None,
        }
    }

    #[test]
    fn entries_within_the_budget_all_go() {
        assert_eq!(entries_that_fit(&rpc(&[1_000, 1_000, 1_000]), 10_000), None);
        assert_eq!(entries_that_fit(&rpc(&[]), 0), None);
    }

    #[test]
    fn a_longer_run_is_cut_to_the_entries_that_fit() {
        let rpc = rpc(&[1_000; 5]);
        let one = encoded_len(&rpc.entries[0]) as usize;
        let header = encoded_len(&rpc) as usize - 5 * one;
        assert_eq!(entries_that_fit(&rpc, header + 2 * one), Some(2));
        assert_eq!(entries_that_fit(&rpc, header + 3 * one - 1), Some(2));
        assert_eq!(entries_that_fit(&rpc, header + 5 * one - 1), Some(4));
    }

    #[test]
    fn a_large_entry_goes_alone_and_never_stalls_replication() {
        // First entry alone is over the budget: send just it (a hint of 0 would stall).
        assert_eq!(entries_that_fit(&rpc(&[10_000, 10]), 1_000), Some(1));
        // Sent alone, it goes whatever the budget.
        assert_eq!(entries_that_fit(&rpc(&[10_000]), 1_000), None);
    }
}
