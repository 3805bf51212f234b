//! `qm reserve …` and `qm graph`: the lock table from the command line.

use std::time::Duration;

use futures::StreamExt;
use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use serde_json::{json, Value};

use crate::{print_stdout, status_failure, Failure, Output};

pub fn mode_name(mode: i32) -> &'static str {
    match pb::Mode::try_from(mode) {
        Ok(pb::Mode::Shared) => "shared",
        Ok(pb::Mode::Exclusive) => "exclusive",
        _ => "unspecified",
    }
}

pub fn reservation_json(r: &pb::Reservation) -> Value {
    json!({
        "id": r.id, "resource": r.resource, "mode": mode_name(r.mode), "units": r.units,
        "fencing_token": r.fencing_token, "owner": r.owner, "session_id": r.session_id,
        "priority": r.priority, "granted_at_ms": r.granted_at_ms, "expires_at_ms": r.expires_at_ms,
    })
}

fn holder_json(h: &pb::Holder) -> Value {
    json!({
        "owner": h.owner, "session_id": h.session_id, "reservation_id": h.reservation_id,
        "resource": h.resource, "mode": mode_name(h.mode), "expires_at_ms": h.expires_at_ms,
    })
}

fn reason_name(r: i32) -> String {
    pb::RefusalReason::try_from(r)
        .map(|r| r.as_str_name().trim_start_matches("REFUSAL_REASON_").to_ascii_lowercase())
        .unwrap_or_else(|_| r.to_string())
}

#[derive(Debug, Clone)]
pub struct AcquireArgs {
    pub resources: Vec<String>,
    pub mode: pb::Mode,
    pub wait: bool,
    pub timeout_ms: Option<u64>,
    pub lease_ms: u64,
    pub priority: u32,
    pub owner: String,
    pub session: Option<u64>,
    pub session_ttl_ms: u64,
}

/// What an acquire ended as.
#[derive(Debug)]
pub enum Outcome {
    Granted { session: u64, reservations: Vec<pb::Reservation> },
    Refused { json: Value, text: String },
}

async fn session(client: &Client, args: &AcquireArgs) -> Result<u64, Failure> {
    match args.session {
        Some(s) => Ok(s),
        None => Ok(client.open_session(&args.owner, args.session_ttl_ms).await.map_err(status_failure)?.session_id),
    }
}

/// Acquires; with `wait`, follows the queued request until it is granted or refused.
pub async fn acquire(client: &Client, args: &AcquireArgs) -> Result<Outcome, Failure> {
    let session_id = session(client, args).await?;
    let req = pb::AcquireRequest {
        session_id,
        owner: args.owner.clone(),
        resources: args
            .resources
            .iter()
            .map(|p| pb::ResourceRequest { path: p.clone(), mode: args.mode as i32, units: 0 })
            .collect(),
        kind: if args.wait { pb::AcquireKind::Wait } else { pb::AcquireKind::Try } as i32,
        priority: args.priority,
        lease_ms: args.lease_ms,
        wait_timeout_ms: if args.wait { args.timeout_ms } else { None },
    };
    // Watch this session from before the acquire, so a grant from the queue is never missed.
    let mut events = if args.wait {
        Some(
            client
                .watch(pb::WatchRequest { session_id: Some(session_id), ..Default::default() })
                .await
                .map_err(status_failure)?,
        )
    } else {
        None
    };
    let resp = client.acquire(req).await.map_err(status_failure)?;
    use pb::acquire_response::Outcome as O;
    match resp.outcome {
        Some(O::Granted(g)) => Ok(Outcome::Granted { session: session_id, reservations: g.reservations }),
        Some(O::Refused(r)) => Ok(refused(session_id, &r)),
        Some(O::Queued(q)) => {
            eprintln!(
                "queued as request {} at position {} (blocked by {})",
                q.request_id,
                q.position,
                q.blocked_by.iter().map(|h| format!("{} on {}", h.owner, h.resource)).collect::<Vec<_>>().join(", ")
            );
            let events = events.as_mut().expect("wait opens a watch");
            let mut granted = Vec::new();
            while let Some(ev) = events.next().await {
                let ev = ev.map_err(status_failure)?;
                use pb::watch_event::Kind as K;
                match ev.kind {
                    Some(K::Granted(g)) if g.request_id == q.request_id => {
                        granted.extend(g.reservations);
                        if granted.len() >= args.resources.len() {
                            return Ok(Outcome::Granted { session: session_id, reservations: granted });
                        }
                    }
                    Some(K::DeadlockVictim(d)) if d.request_id == q.request_id => {
                        return Ok(Outcome::Refused {
                            json: json!({"status": "refused", "reason": "deadlock", "cycle": d.cycle_owners, "session_id": session_id}),
                            text: format!("refused: deadlock victim, cycle {}", d.cycle_owners.join(" -> ")),
                        })
                    }
                    Some(K::TimedOut(t)) if t.request_id == q.request_id => {
                        return Ok(Outcome::Refused {
                            json: json!({"status": "refused", "reason": "timed_out", "request_id": q.request_id, "session_id": session_id}),
                            text: "refused: timed out in the queue".into(),
                        })
                    }
                    Some(K::Cancelled(c)) if c.request_id == q.request_id => {
                        return Ok(Outcome::Refused {
                            json: json!({"status": "refused", "reason": "cancelled", "request_id": q.request_id, "session_id": session_id}),
                            text: "refused: cancelled".into(),
                        })
                    }
                    Some(K::SessionExpired(_)) => return Err(Failure::error("the session expired while waiting")),
                    _ => {}
                }
            }
            Err(Failure::error("the watch stream ended before the request was decided"))
        }
        None => Err(Failure::error("the coordinator answered without an outcome")),
    }
}

fn refused(session_id: u64, r: &pb::acquire_response::Refused) -> Outcome {
    let holders: Vec<Value> = r.holders.iter().map(holder_json).collect();
    let held_by = r
        .holders
        .iter()
        .map(|h| format!("{} ({} {}, reservation {})", h.owner, mode_name(h.mode), h.resource, h.reservation_id))
        .collect::<Vec<_>>();
    Outcome::Refused {
        json: json!({
            "status": "refused", "reason": reason_name(r.reason), "holders": holders,
            "queue_position": r.queue_position, "estimated_wait_ms": r.estimated_wait_ms,
            "retry_after_ms": r.retry_after_ms, "message": r.message, "session_id": session_id,
        }),
        text: format!(
            "refused ({}): {}{}",
            reason_name(r.reason),
            r.message,
            if held_by.is_empty() { String::new() } else { format!("; held by {}", held_by.join(", ")) }
        ),
    }
}

/// `qm reserve acquire`.
pub async fn acquire_cmd(client: &Client, args: AcquireArgs, output: Output) -> Result<(), Failure> {
    match acquire(client, &args).await? {
        Outcome::Granted { session, reservations } => {
            let first = &reservations[0];
            let value = json!({
                "status": "granted", "id": first.id, "resource": first.resource, "mode": mode_name(first.mode),
                "fencing_token": first.fencing_token, "session_id": session, "expires_at_ms": first.expires_at_ms,
                "reservations": reservations.iter().map(reservation_json).collect::<Vec<_>>(),
            });
            let text = reservations
                .iter()
                .map(|r| {
                    format!(
                        "granted {} {} {} token={} session={}\n",
                        r.id,
                        mode_name(r.mode),
                        r.resource,
                        r.fencing_token,
                        session
                    )
                })
                .collect::<String>();
            emit(output, &value, &text);
            Ok(())
        }
        Outcome::Refused { json, text, .. } => {
            if output == Output::Json {
                emit(output, &json, "");
            }
            Err(Failure { code: 3, message: text })
        }
    }
}

pub fn emit(output: Output, value: &Value, text: &str) {
    match output {
        Output::Json => print_stdout(&format!("{}\n", serde_json::to_string_pretty(value).expect("json"))),
        _ => print_stdout(text),
    }
}

/// `qm reserve list`.
pub async fn list(client: &Client, req: pb::ListRequest, output: Output) -> Result<(), Failure> {
    let resp = client.list(req).await.map_err(status_failure)?;
    let value = json!({
        "index": resp.index,
        "reservations": resp.reservations.iter().map(reservation_json).collect::<Vec<_>>(),
        "pending": resp.pending.iter().map(|p| json!({
            "request_id": p.request_id, "owner": p.owner, "session_id": p.session_id,
            "resources": p.resources.iter().map(|r| json!({"path": r.path, "mode": mode_name(r.mode)})).collect::<Vec<_>>(),
            "priority": p.priority, "effective_priority": p.effective_priority,
        })).collect::<Vec<_>>(),
        "next_page_token": resp.next_page_token,
    });
    let mut text =
        format!("{:<8} {:<40} {:<10} {:>10} {:<24} {:>8}\n", "ID", "RESOURCE", "MODE", "TOKEN", "OWNER", "SESSION");
    for r in &resp.reservations {
        text.push_str(&format!(
            "{:<8} {:<40} {:<10} {:>10} {:<24} {:>8}\n",
            r.id,
            r.resource,
            mode_name(r.mode),
            r.fencing_token,
            r.owner,
            r.session_id
        ));
    }
    for p in &resp.pending {
        let res =
            p.resources.iter().map(|r| format!("{} {}", mode_name(r.mode), r.path)).collect::<Vec<_>>().join(", ");
        text.push_str(&format!(
            "waiting: request {} {} (session {}) for {}\n",
            p.request_id, p.owner, p.session_id, res
        ));
    }
    if !resp.next_page_token.is_empty() {
        text.push_str(&format!("more: --page-token '{}'\n", resp.next_page_token));
    }
    emit(output, &value, &text);
    Ok(())
}

/// `qm reserve watch`: prints events until `count` were printed (or forever).
pub async fn watch(client: &Client, req: pb::WatchRequest, count: Option<u64>, output: Output) -> Result<(), Failure> {
    let mut stream = client.watch(req).await.map_err(status_failure)?;
    let mut seen = 0;
    while let Some(ev) = stream.next().await {
        let ev = ev.map_err(status_failure)?;
        let (kind, detail) = describe(&ev);
        match output {
            Output::Json => print_stdout(&format!(
                "{}\n",
                json!({"index": ev.index, "at_ms": ev.at_ms, "event": kind, "detail": detail})
            )),
            _ => print_stdout(&format!("{:>8} {:<18} {}\n", ev.index, kind, detail)),
        }
        seen += 1;
        if count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
}

fn describe(ev: &pb::WatchEvent) -> (&'static str, String) {
    use pb::watch_event::Kind as K;
    match &ev.kind {
        Some(K::Granted(g)) => (
            "granted",
            g.reservations
                .iter()
                .map(|r| {
                    format!("{} {} {} token={} owner={}", r.id, mode_name(r.mode), r.resource, r.fencing_token, r.owner)
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Some(K::Queued(q)) => (
            "queued",
            q.request
                .as_ref()
                .map(|r| format!("request {} owner={} position {}", r.request_id, r.owner, r.position))
                .unwrap_or_default(),
        ),
        Some(K::PreemptRequested(p)) => (
            "preempt_requested",
            format!("reservation {} grace {} ms", p.reservation.as_ref().map_or(0, |r| r.id), p.grace_ms),
        ),
        Some(K::Revoked(r)) => ("revoked", format!("reservation {}", r.reservation.as_ref().map_or(0, |r| r.id))),
        Some(K::Expired(r)) => ("expired", format!("reservation {}", r.reservation.as_ref().map_or(0, |r| r.id))),
        Some(K::Released(r)) => {
            ("released", r.reservation.as_ref().map(|r| format!("{} {}", r.id, r.resource)).unwrap_or_default())
        }
        Some(K::Extended(r)) => ("extended", format!("reservation {}", r.reservation.as_ref().map_or(0, |r| r.id))),
        Some(K::DeadlockVictim(d)) => (
            "deadlock_victim",
            format!("request {} owner={} cycle {}", d.request_id, d.owner, d.cycle_owners.join(" -> ")),
        ),
        Some(K::TimedOut(t)) => ("timed_out", format!("request {} owner={}", t.request_id, t.owner)),
        Some(K::Cancelled(c)) => ("cancelled", format!("request {} owner={}", c.request_id, c.owner)),
        Some(K::SessionExpired(s)) => ("session_expired", format!("session {}", s.session_id)),
        Some(K::SessionClosed(s)) => ("session_closed", format!("session {}", s.session_id)),
        Some(K::Lagged(l)) => ("lagged", format!("{} events dropped; re-read with qm reserve list", l.missed_events)),
        None => ("unknown", String::new()),
    }
}

/// `qm reserve run`: acquire, run CMD with the token in its environment, keep the lease and
/// session alive while it runs, release, exit with CMD's code.
pub async fn run(client: &Client, args: AcquireArgs, cmd: Vec<String>) -> Result<u8, Failure> {
    let lease_ms = args.lease_ms;
    let ttl_ms = args.session_ttl_ms;
    let (session, reservations) = match acquire(client, &args).await? {
        Outcome::Granted { session, reservations } => (session, reservations),
        Outcome::Refused { text, .. } => return Err(Failure { code: 3, message: text }),
    };
    let first = reservations[0].clone();
    let mut child = tokio::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("QM_FENCING_TOKEN", first.fencing_token.to_string())
        .env("QM_RESERVATION_ID", first.id.to_string())
        .env("QM_SESSION_ID", session.to_string())
        .env("QM_RESOURCE", &first.resource)
        .spawn()
        .map_err(|e| Failure::usage(format!("{}: {e}", cmd[0])))?;
    // Keep both the session and the leases alive well within their bounds.
    let period = Duration::from_millis((ttl_ms.min(lease_ms) / 3).max(200));
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = ticker.tick() => {
                match client.keepalive(session).await {
                    Ok(k) if k.expired => {
                        eprintln!("qm reserve run: session {session} expired; the lease is lost, stopping the command");
                        let _ = child.start_kill();
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("qm reserve run: keepalive failed: {}", e.message()),
                }
                for r in &reservations {
                    let req = pb::ExtendRequest { reservation_id: r.id, session_id: session, lease_ms };
                    if let Err(e) = client.extend(req).await {
                        eprintln!("qm reserve run: extending reservation {} failed: {}", r.id, e.message());
                    }
                }
            }
        }
    };
    let _ = client.close_session(session).await;
    let status = status.map_err(|e| Failure::error(format!("waiting for {}: {e}", cmd[0])))?;
    Ok(status.code().map_or(1, |c| c as u8))
}

/// `qm graph`.
pub async fn graph(client: &Client, prefix: String, output: Output) -> Result<(), Failure> {
    let g = client.graph(pb::GraphRequest { resource_prefix: prefix }).await.map_err(status_failure)?;
    match output {
        Output::Dot => {
            let mut out = String::from("digraph waits_for {\n  rankdir=LR;\n");
            for n in &g.nodes {
                out.push_str(&format!(
                    "  \"{}@s{}\" [label=\"{}\\ns{} p{}\"];\n",
                    n.owner, n.session_id, n.owner, n.session_id, n.priority
                ));
            }
            for e in &g.edges {
                out.push_str(&format!(
                    "  \"{}\" -> \"{}\" [label=\"{} {}\"];\n",
                    node_name(&g, &e.from_owner),
                    node_name(&g, &e.to_owner),
                    mode_name(e.wanted_mode),
                    e.resource
                ));
            }
            out.push_str("}\n");
            print_stdout(&out);
        }
        Output::Json => {
            let value = json!({
                "index": g.index,
                "nodes": g.nodes.iter().map(|n| json!({"owner": n.owner, "session_id": n.session_id, "priority": n.priority, "blocking_reservation_ids": n.blocking_reservation_ids, "pending_request_id": n.pending.as_ref().map(|p| p.request_id)})).collect::<Vec<_>>(),
                "edges": g.edges.iter().map(|e| json!({"from": e.from_owner, "to": e.to_owner, "resource": e.resource, "request_id": e.request_id, "reservation_id": e.reservation_id, "wanted_mode": mode_name(e.wanted_mode), "held_mode": mode_name(e.held_mode)})).collect::<Vec<_>>(),
            });
            emit(output, &value, "");
        }
        Output::Table | Output::Csv => {
            let mut out =
                format!("wait-for graph at index {}: {} owners, {} edges\n", g.index, g.nodes.len(), g.edges.len());
            out.push_str(&format!(
                "{:<24} {:<24} {:<40} {:<10} {:<10}\n",
                "WAITER", "WAITS FOR", "RESOURCE", "WANTS", "HELD AS"
            ));
            for e in &g.edges {
                out.push_str(&format!(
                    "{:<24} {:<24} {:<40} {:<10} {:<10}\n",
                    e.from_owner,
                    e.to_owner,
                    e.resource,
                    mode_name(e.wanted_mode),
                    mode_name(e.held_mode)
                ));
            }
            print_stdout(&out);
        }
    }
    Ok(())
}

fn node_name(g: &pb::GraphResponse, owner: &str) -> String {
    g.nodes
        .iter()
        .find(|n| n.owner == owner)
        .map(|n| format!("{}@s{}", n.owner, n.session_id))
        .unwrap_or_else(|| owner.to_string())
}
