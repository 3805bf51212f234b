//! `qm cluster status|add|promote|remove|transfer-leader|snapshot`: its arguments and handlers.
//! Cluster status and membership, through any node (leader hints are followed).

use clap::Subcommand;
use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use serde_json::json;

use crate::reserve::emit;
use crate::{status_failure, Failure, Output};

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Term, leader, applied index and members with their roles.
    Status {
        /// Wait until a node answers with a leader and is ready to serve (nodes still
        /// starting, electing or catching up), then print its view; for scripts that start a
        /// cluster and use it next
        #[arg(long)]
        wait: bool,
        /// How long --wait waits before giving up (exit 1, naming what it last saw)
        #[arg(long, default_value_t = 30_000, requires = "wait")]
        timeout_ms: u64,
    },
    /// Add a node: as a learner, caught up, then promoted to voter (unless --learner).
    Add {
        /// Node id of the new coordinator.
        id: u64,
        /// Its gRPC address (what clients use).
        address: String,
        /// Its peer port's address, if it runs with --peer-listen: the other nodes send it
        /// Raft there (and its gRPC address then refuses Raft).
        #[arg(long, value_name = "PEER")]
        peer_addr: Option<String>,
        /// Leave it a non-voting learner.
        #[arg(long)]
        learner: bool,
        /// How long the learner may take to catch up (to the log index of its addition)
        /// before it is promoted; past it, it stays a learner and the command fails
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
    },
    /// Promote a learner that has caught up to voter.
    Promote {
        /// Node id of the learner.
        id: u64,
    },
    /// Remove a node (voter or learner).
    Remove {
        /// Node id to remove.
        id: u64,
    },
    /// Hand leadership to another voter (the most up-to-date one unless --to).
    TransferLeader {
        /// Node id of the voter to hand leadership to
        #[arg(long)]
        to: Option<u64>,
    },
    /// Build a snapshot now on the answering node and compact its log.
    Snapshot,
}

/// `qm cluster …`.
pub async fn dispatch(command: ClusterCommand, client: &Client, output: Output) -> Result<(), Failure> {
    match command {
        ClusterCommand::Status { wait: false, .. } => status(client, output).await,
        ClusterCommand::Status { wait: true, timeout_ms } => {
            wait_ready(client, std::time::Duration::from_millis(timeout_ms)).await?;
            status(client, output).await
        }
        ClusterCommand::Add { id, address, peer_addr, learner, timeout_ms } => {
            let how = Adding { learner, within: std::time::Duration::from_millis(timeout_ms) };
            add(client, id, &address, peer_addr.as_deref(), how, output).await
        }
        ClusterCommand::Promote { id } => {
            let members = client.promote(pb::PromoteRequest { node_id: id }).await.map_err(status_failure)?.members;
            let value = json!({"promoted": id, "members": members.iter().map(member_json).collect::<Vec<_>>()});
            emit(output, &value, &format!("node {id} is a voter; {}\n", crate::count(members.len(), "member")));
            Ok(())
        }
        ClusterCommand::Remove { id } => remove(client, id, output).await,
        ClusterCommand::TransferLeader { to } => transfer_leader(client, to, output).await,
        ClusterCommand::Snapshot => snapshot(client, output).await,
    }
}

fn role_name(m: &pb::Member) -> &'static str {
    if m.role == pb::MemberRole::Voter as i32 {
        "voter"
    } else {
        "learner"
    }
}

fn member_json(m: &pb::Member) -> serde_json::Value {
    json!({"node_id": m.node_id, "address": m.address, "peer_address": m.peer_address, "role": role_name(m), "is_leader": m.is_leader, "matched_index": m.matched_index})
}

/// `qm cluster status`: the answering node's view and every member.
async fn status(client: &Client, output: Output) -> Result<(), Failure> {
    let s = client.status().await.map_err(status_failure)?;
    let value = json!({
        "node_id": s.node_id, "term": s.term, "leader_id": s.leader_id, "leader_address": s.leader_address,
        "applied_index": s.applied_index, "last_log_index": s.last_log_index, "snapshot_index": s.snapshot_index,
        "membership_changing": s.membership_changing, "version": s.version,
        "ready": s.ready, "not_ready_reason": s.not_ready_reason,
        "state_bytes": s.state_bytes, "state_bytes_max": s.state_bytes_max, "nospace_alarm": s.nospace_alarm,
        "members": s.members.iter().map(member_json).collect::<Vec<_>>(),
    });
    let mut text = format!(
        "answered by node {} (term {}, applied {}, snapshot {}); leader: {}; {}\n{:<6} {:<28} {:<8} {:<7} {:<8} {}\n",
        s.node_id,
        s.term,
        s.applied_index,
        s.snapshot_index,
        s.leader_id.map_or("none".to_string(), |l| format!("node {l} at {}", s.leader_address)),
        if s.ready { "ready".to_string() } else { format!("NOT READY: {}", s.not_ready_reason) },
        "ID",
        "ADDRESS",
        "ROLE",
        "LEADER",
        "MATCHED",
        "PEER"
    );
    for m in &s.members {
        text.push_str(&format!(
            "{:<6} {:<28} {:<8} {:<7} {:<8} {}\n",
            m.node_id,
            m.address,
            role_name(m),
            if m.is_leader { "*" } else { "" },
            m.matched_index.map_or("-".into(), |i| i.to_string()),
            if m.peer_address.is_empty() { "-" } else { &m.peer_address }
        ));
    }
    text.push_str(&space_line(&s));
    emit(output, &value, &text);
    Ok(())
}

/// The state's size against its quota, and the storage alarm when it is raised.
fn space_line(s: &pb::StatusResponse) -> String {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    let size = if s.state_bytes == 0 { "not measured yet".to_string() } else { mib(s.state_bytes) };
    let mut line = format!("state: {size} of {} (limits.state_bytes_max)\n", mib(s.state_bytes_max));
    if s.nospace_alarm {
        line.push_str(&format!(
            "ALARM NOSPACE: the state went over its quota; writes that add data are refused until it is back \
             under {}% of it (release, close and cancel still work; or raise limits.state_bytes_max)\n",
            qm_coordinator::state::SPACE_ALARM_CLEAR_PERCENT
        ));
    }
    line
}

/// Polls the cluster until a node reports a leader and is ready, for at most `within`.
async fn wait_ready(client: &Client, within: std::time::Duration) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let s = while_starting(deadline, || client.status()).await?;
        let last = match s.leader_id {
            Some(_) if s.ready => return Ok(()),
            Some(_) => format!("node {} is not ready: {}", s.node_id, s.not_ready_reason),
            None => format!("node {} knows no leader (term {})", s.node_id, s.term),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure::error(format!(
                "the cluster was not ready within {} ms; last seen: {last}",
                within.as_millis()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Runs `call` until the cluster answers it, for a cluster that is starting: while nothing
/// listens yet, or no leader is elected (UNAVAILABLE: nothing was applied), it tries again
/// until `deadline`; any other answer is final.
pub async fn while_starting<T, F, Fut>(deadline: tokio::time::Instant, call: F) -> Result<T, Failure>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if e.code() == tonic::Code::Unavailable && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(status_failure(e)),
        }
    }
}

/// `qm cluster add`: node `id` at `address` (Raft at `peer_address`, if given) as a learner,
/// caught up, then promoted to voter unless `learner`.
async fn add(
    client: &Client,
    id: u64,
    address: &str,
    peer_address: Option<&str>,
    how: Adding,
    output: Output,
) -> Result<(), Failure> {
    // A cluster spoken to over TLS serves TLS to its peers too.
    let tls = client.current().starts_with("https://");
    let address = qm_shared::client::normalize_for(address, tls);
    let peer_address = match peer_address.map(str::trim) {
        None => String::new(),
        Some("") => return Err(Failure::usage("--peer-addr: empty; leave the flag out to serve Raft on ADDRESS")),
        Some(p) => qm_shared::client::normalize_for(p, tls),
    };
    let req = pb::AddLearnerRequest { node_id: id, address: address.clone(), peer_address, wait_caught_up: true };
    let added = client.add_learner(req).await.map_err(status_failure)?;
    let members = if how.learner {
        added.members
    } else {
        caught_up(client, id, &address, added.log_index, how.within).await?;
        client.promote(pb::PromoteRequest { node_id: id }).await.map_err(status_failure)?.members
    };
    let value = json!({"added": id, "members": members.iter().map(member_json).collect::<Vec<_>>()});
    emit(
        output,
        &value,
        &format!(
            "node {id} added as {}; {}\n",
            if how.learner { "learner" } else { "voter" },
            crate::count(members.len(), "member")
        ),
    );
    Ok(())
}

/// How `qm cluster add` adds a node.
#[derive(Clone, Copy, Debug)]
struct Adding {
    learner: bool,
    within: std::time::Duration,
}

/// Waits until learner `id` has replicated the log up to `index` (its addition), as the
/// leader reports it, for at most `within`. openraft's own wait counts a learner as caught up
/// while it is thousands of entries behind, or not reachable at all.
async fn caught_up(
    client: &Client,
    id: u64,
    address: &str,
    index: u64,
    within: std::time::Duration,
) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + within;
    let mut said = None;
    loop {
        let s = while_starting(deadline, || client.status()).await?;
        let matched = s.members.iter().find(|m| m.node_id == id).and_then(|m| m.matched_index);
        if matched.is_some_and(|m| m >= index) {
            return Ok(());
        }
        if said != Some(matched) {
            let at = matched.map_or("nothing yet".to_string(), |m| format!("index {m}"));
            eprintln!("node {id} catching up: {at} of {index}");
            said = Some(matched);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure::error(format!(
                "node {id} was added as a learner but has not caught up to index {index} within {} ms, so it was \
                 not promoted: is it running and reachable at {address}? Once it has, `qm cluster promote {id}`",
                within.as_millis()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `qm cluster remove`.
async fn remove(client: &Client, id: u64, output: Output) -> Result<(), Failure> {
    let resp = client.remove(pb::RemoveRequest { node_id: id }).await.map_err(status_failure)?;
    let value = json!({"removed": id, "members": resp.members.iter().map(member_json).collect::<Vec<_>>()});
    emit(output, &value, &format!("node {id} removed; {}\n", crate::count(resp.members.len(), "member")));
    Ok(())
}

/// `qm cluster transfer-leader`: to voter `to`, or the most up-to-date one.
async fn transfer_leader(client: &Client, to: Option<u64>, output: Output) -> Result<(), Failure> {
    let resp = client.transfer_leader(pb::TransferLeaderRequest { to_node_id: to }).await.map_err(status_failure)?;
    let value = json!({"leader_id": resp.leader_id, "term": resp.term});
    emit(
        output,
        &value,
        &format!(
            "leader is now {} (term {})\n",
            resp.leader_id.map_or("unknown".into(), |l| format!("node {l}")),
            resp.term
        ),
    );
    Ok(())
}

/// `qm cluster snapshot`: on the answering node, waiting for it to finish.
async fn snapshot(client: &Client, output: Output) -> Result<(), Failure> {
    let resp = client.snapshot_now(pb::SnapshotNowRequest { wait: true }).await.map_err(status_failure)?;
    let value = json!({"snapshot_index": resp.snapshot_index, "store_size_bytes": resp.snapshot_size_bytes});
    emit(
        output,
        &value,
        &format!("snapshot at index {} (store {} bytes)\n", resp.snapshot_index, resp.snapshot_size_bytes),
    );
    Ok(())
}
