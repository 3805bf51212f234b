//! The leader's proposal batcher: concurrent writes share one Raft entry.
//!
//! ```text
//!   propose_local(cmd) ──▶ queue (PROPOSALS_QUEUED_MAX) ──▶ batcher: take what is waiting,
//!        ▲                                                  up to BATCH_COMMANDS_MAX and
//!        │                                                  BATCH_BYTES_MAX, one entry
//!        └──── the command's own Response ◀── client_write(Request{now, commands})
//! ```
//!
//! At most `BATCHES_IN_FLIGHT_MAX` entries are being committed at once; while they are, new
//! proposals gather into the next batch, so under load one entry (one append, one fsync on
//! each node, one replication message) carries many commands, and an idle leader adds no
//! delay: a lone proposal goes out at once as a batch of one. Commands keep their arrival
//! order inside a batch, and the state machine applies them in that order at the entry's
//! index (`State::apply_batch`).
//!
//! No batch waits forever: each waits for its answer at most `PROPOSAL_WAIT_MS_MAX`, and
//! only while the term it was proposed in lasts ([`crate::raft::bounded`]); an abandoned
//! batch answers its callers UNAVAILABLE with an unknown outcome.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::clock::Clock;
use crate::error::ApiError;
use crate::raft::bounded::{within_term, PROPOSAL_WAIT_MS_MAX};
use crate::raft::{Node as RaftNode, NodeId, Raft, Request};
use crate::state::{Command, LogIndex, Response};

/// Most commands in one entry.
pub const BATCH_COMMANDS_MAX: usize = 256;
/// Most encoded command bytes in one entry (a larger single command still goes alone).
pub const BATCH_BYTES_MAX: u64 = 256 * 1024;
/// Entries being committed at once.
pub const BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Proposals waiting for a batch; a full queue makes proposers wait (backpressure).
pub const PROPOSALS_QUEUED_MAX: usize = 8_192;

pub type Outcome = Result<(LogIndex, Response), ApiError>;

struct Proposal {
    command: Command,
    reply: oneshot::Sender<Outcome>,
}

/// The proposing end; the batcher task ends when every handle is dropped.
#[derive(Clone, Debug)]
pub struct Batcher {
    queue: mpsc::Sender<Proposal>,
}

impl std::fmt::Debug for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposal").field("command", &self.command).finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts the batching task for `raft`, stamping each entry with `clock`.
    pub fn start(raft: Raft, clock: Arc<dyn Clock>) -> Batcher {
        let (queue, rx) = mpsc::channel(PROPOSALS_QUEUED_MAX);
        tokio::spawn(run(raft, clock, rx));
        Batcher { queue }
    }

    /// Proposes one command; returns once its entry has committed and applied.
    pub async fn propose(&self, command: Command) -> Outcome {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Proposal { command, reply })
            .await
            .map_err(|_| ApiError::Unavailable("the coordinator is shutting down".into()))?;
        answer.await.map_err(|_| ApiError::Unavailable("the coordinator is shutting down".into()))?
    }
}

async fn run(raft: Raft, clock: Arc<dyn Clock>, mut queue: mpsc::Receiver<Proposal>) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
    // A proposal that did not fit the previous batch opens the next one.
    let mut carried: Option<Proposal> = None;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let first = match carried.take() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = encoded_len(&first.command);
        let mut batch = vec![first];
        while batch.len() < BATCH_COMMANDS_MAX {
            let Ok(next) = queue.try_recv() else { break };
            let len = encoded_len(&next.command);
            if bytes.saturating_add(len) > BATCH_BYTES_MAX {
                carried = Some(next);
                break;
            }
            bytes += len;
            batch.push(next);
        }
        let raft = raft.clone();
        let now = clock.now_ms();
        tokio::spawn(async move {
            let (commands, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
            // Bounded, and given up when the term ends: an entry proposed by a leader that was
            // deposed and then caught up by snapshot is never answered, and an unanswered batch
            // would hold its in-flight permit (and its callers) forever.
            let write = raft.client_write(Request { now, commands });
            match within_term(raft.metrics(), PROPOSAL_WAIT_MS_MAX, write).await {
                Ok(Ok(written)) => {
                    let index = written.log_id.index;
                    for (reply, response) in replies.into_iter().zip(written.data) {
                        let _ = reply.send(Ok((index, response)));
                    }
                }
                Ok(Err(e)) => {
                    for reply in replies {
                        let _ = reply.send(Err(write_error(&e)));
                    }
                }
                Err(abandoned) => {
                    tracing::warn!(%abandoned, "a batch of writes was abandoned");
                    for reply in replies {
                        let _ = reply.send(Err(ApiError::Unavailable(abandoned.to_string())));
                    }
                }
            }
            drop(permit);
        });
    }
}

fn encoded_len(command: &Command) -> u64 {
    bincode::serialized_size(command).unwrap_or(BATCH_BYTES_MAX)
}

/// A failed `client_write` as the API reports it.
pub fn write_error(e: &RaftError<NodeId, ClientWriteError<NodeId, RaftNode>>) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ApiError::NotLeader {
            leader_id: f.leader_id,
            leader_address: f.leader_node.as_ref().map(|n| n.addr.clone()),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => ApiError::Internal(e.to_string()),
        RaftError::Fatal(e) => ApiError::Unavailable(format!("raft stopped: {e}")),
    }
}
