//! `qm audit list`: its arguments and handler. Every coordinator keeps its own audit log of
//! what arrived at it; the CLI asks every member the cluster status names and merges their
//! records by time, saying which node each came from.

use clap::Subcommand;
use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use qm_shared::timestamp::rfc3339;
use serde_json::{json, Value};

use crate::reserve::emit;
use crate::{status_failure, Failure, Output};

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Admin, operator and approver actions and every denied call, as the coordinators
    /// recorded them (admin only; listing is itself recorded).
    #[command(
        long_about = "Admin, operator and approver actions and every denied call, as the coordinators \
            recorded them: who (the token's name, `anonymous` without a token, `unknown token` for \
            one the cluster does not know or has revoked), from where, when, which method, the \
            request's salient fields (never a secret or a payload) and the answer.\n\n\
            Recorded: membership and leadership changes, snapshots, token create and revoke, \
            bootstrap, budgets, the scheduler, projects, resource declarations, gate decisions, an \
            operator's cancels and retries, listing the audit log, and every UNAUTHENTICATED or \
            PERMISSION_DENIED answer of any call. Not recorded: reads and holder traffic (acquire, \
            keepalive, …) that succeed.\n\n\
            Each coordinator records what arrived at it, so every member is asked; one that does \
            not answer is named on stderr and the others are still printed. Needs an admin token.",
        after_help = "Examples:\n  \
            qm audit list --since 10m\n  \
            qm audit list --denied --since 2026-11-22T13:00:00Z\n  \
            qm audit list --principal ci --method CreateToken -o json\n  \
            qm audit list --node 2 --limit 1000"
    )]
    List(ListArgs),
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Only records since then: a duration back from now (90s, 10m, 24h, 7d), an RFC 3339
    /// time (2026-11-22T13:05:00Z) or ms since the Unix epoch.
    #[arg(long)]
    since: Option<String>,
    /// Only this principal's records: a token name, `anonymous` or `unknown token`.
    #[arg(long)]
    principal: Option<String>,
    /// Only methods whose name contains this (CreateToken, qm.v1.Cluster/).
    #[arg(long)]
    method: Option<String>,
    /// Only denials: UNAUTHENTICATED and PERMISSION_DENIED.
    #[arg(long)]
    denied: bool,
    /// At most this many records, the newest (1..=1000).
    #[arg(long, default_value_t = qm_shared::limits::AUDIT_LIST_DEFAULT)]
    limit: u32,
    /// Ask only this member (its node id).
    #[arg(long)]
    node: Option<u64>,
}

/// `qm audit …`.
pub async fn dispatch(command: AuditCommand, client: &Client, output: Output) -> Result<(), Failure> {
    match command {
        AuditCommand::List(args) => list(client, &args, output).await,
    }
}

/// The request every member is asked.
fn request(args: &ListArgs) -> Result<pb::ListAuditRequest, Failure> {
    let max = qm_shared::limits::AUDIT_LIST_MAX;
    if !(1..=max).contains(&args.limit) {
        return Err(Failure::usage(format!("--limit {}: must be within 1..={max}", args.limit)));
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    Ok(pb::ListAuditRequest {
        since_ms: args.since.as_deref().map(|s| crate::cost::since_ms(s, now)).transpose()?.unwrap_or(0),
        since_seq: 0,
        principal: args.principal.clone().unwrap_or_default(),
        method: args.method.clone().unwrap_or_default(),
        denied_only: args.denied,
        limit: args.limit,
    })
}

/// The members to ask: `(node id, address)`, every one or just `only`.
async fn members(client: &Client, only: Option<u64>) -> Result<Vec<(u64, String)>, Failure> {
    let status = client.status().await.map_err(status_failure)?;
    let all: Vec<(u64, String)> = status.members.into_iter().map(|m| (m.node_id, m.address)).collect();
    match only {
        None => Ok(all),
        Some(id) => match all.iter().find(|(n, _)| *n == id) {
            Some(m) => Ok(vec![m.clone()]),
            None => Err(Failure::usage(format!(
                "--node {id}: not a member; the members are {}",
                all.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>().join(", ")
            ))),
        },
    }
}

/// `qm audit list`.
async fn list(client: &Client, args: &ListArgs, output: Output) -> Result<(), Failure> {
    let req = request(args)?;
    let members = members(client, args.node).await?;
    let asks = members.iter().map(|(id, address)| {
        let req = req.clone();
        async move {
            let answer = match client.pinned(address) {
                Ok(c) => c.list_audit(req).await,
                Err(e) => Err(tonic::Status::invalid_argument(e.to_string())),
            };
            (*id, address.clone(), answer)
        }
    });
    let mut records = Vec::new();
    let mut nodes = Vec::new();
    let mut failures = Vec::new();
    for (id, address, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(r) => {
                nodes.push(node_json(id, &address, &r));
                records.extend(r.records);
            }
            Err(status) => {
                eprintln!("qm: node {id} at {address} did not answer: {:?}: {}", status.code(), status.message());
                nodes.push(json!({"node_id": id, "address": address, "error": status.message()}));
                failures.push(status);
            }
        }
    }
    if failures.len() == members.len() {
        return Err(failures.into_iter().next().map_or_else(|| Failure::error("no member to ask"), status_failure));
    }
    records.sort_by_key(|r| (r.at_ms, r.node_id, r.seq));
    let cut = records.len().saturating_sub(args.limit as usize);
    records.drain(..cut);
    let value = json!({"records": records.iter().map(record_json).collect::<Vec<_>>(), "nodes": nodes});
    emit(output, &value, &text(&records));
    Ok(())
}

fn node_json(id: u64, address: &str, r: &pb::ListAuditResponse) -> Value {
    json!({"node_id": id, "address": address, "matched": r.matched, "oldest_seq": r.oldest_seq,
        "next_seq": r.next_seq, "durable_seq": r.durable_seq, "dropped": r.dropped, "persistent": r.persistent})
}

fn record_json(r: &pb::AuditRecord) -> Value {
    json!({"node_id": r.node_id, "seq": r.seq, "at_ms": r.at_ms, "time": rfc3339(r.at_ms),
        "principal": r.principal, "peer": r.peer, "method": r.method, "request": r.request,
        "code": r.code, "outcome": r.outcome, "message": r.message})
}

fn text(records: &[pb::AuditRecord]) -> String {
    let mut out = format!(
        "{:<24} {:>4} {:>6} {:<20} {:<21} {:<18} {:<34} {}\n",
        "TIME", "NODE", "SEQ", "PRINCIPAL", "PEER", "OUTCOME", "METHOD", "REQUEST"
    );
    for r in records {
        out.push_str(&format!(
            "{:<24} {:>4} {:>6} {:<20} {:<21} {:<18} {:<34} {}\n",
            rfc3339(r.at_ms),
            r.node_id,
            r.seq,
            r.principal,
            r.peer,
            r.outcome,
            r.method,
            r.request
        ));
        if !r.message.is_empty() {
            out.push_str(&format!("    {}\n", r.message));
        }
    }
    if records.is_empty() {
        out.push_str("(no records match)\n");
    }
    out
}
