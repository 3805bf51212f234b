//! The admin HTTP port (axum): `/metrics` (Prometheus text), `/livez`, `/readyz`, `/health`.
//!
//! `/livez` answers 200 while Raft runs, and 503 with the reason once it has stopped — on a
//! fatal storage error, a panic, or shutdown — so an orchestrator restarts the process (a
//! stopped Raft never resumes by itself); `/readyz` only while the node can serve
//! writes, directly or forwarded: a follower that knows a leader, or a leader whose term's
//! RestartLeases has committed (a leader that is not serving is not ready); `/health` is a
//! JSON summary with the same verdict and its reason, and the audit log's standing (records
//! and bytes kept, how far the disk is, records it could not write).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use openraft::ServerState;
use tokio::net::TcpListener;

use crate::node::Node;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .with_state(node)
}

pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(node)).with_graceful_shutdown(shutdown).await
}

async fn livez(AxumState(node): AxumState<Arc<Node>>) -> impl IntoResponse {
    match node.liveness() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not live: {why}\n")),
    }
}

async fn readyz(AxumState(node): AxumState<Arc<Node>>) -> impl IntoResponse {
    match node.readiness() {
        Ok(why) => (StatusCode::OK, format!("ok: {why}\n")),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

async fn health(AxumState(node): AxumState<Arc<Node>>) -> impl IntoResponse {
    let m = node.metrics();
    let ready = node.readiness();
    let body = serde_json::json!({
        "node_id": node.id,
        "state": format!("{:?}", m.state),
        "term": m.current_term,
        "leader_id": m.current_leader,
        "applied_index": m.last_applied.map_or(0, |l| l.index),
        "ready": ready.is_ok(),
        "readiness": match &ready { Ok(why) | Err(why) => why },
        "tls": node.tls,
        "access_control": node.access_control,
        // Plaintext on a non-loopback address, asked for with --insecure.
        "insecure": node.insecure && !node.tls,
        "audit": audit_json(&node),
        "storage": storage_json(&node),
    });
    let code = if ready.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body))
}

/// The replicated state's size against its quota, and the storage alarm.
fn storage_json(node: &Node) -> serde_json::Value {
    let (bytes, bytes_max, alarm) = node.space();
    serde_json::json!({
        "state_bytes": bytes,
        "state_bytes_max": bytes_max,
        "nospace_alarm": alarm.is_some(),
        "alarm_since_ms": alarm.map(|a| a.since),
    })
}

/// The audit log's standing: what it keeps, how far the disk is, what it could not write.
fn audit_json(node: &Node) -> serde_json::Value {
    let (records, bytes, bytes_max, next_seq, persistent) = node.audit.summary();
    serde_json::json!({
        "records": records,
        "bytes": bytes,
        "bytes_max": bytes_max,
        "next_seq": next_seq,
        "durable_seq": node.audit.durable_seq(),
        "dropped": node.audit.dropped(),
        "persistent": persistent,
    })
}

async fn metrics(AxumState(node): AxumState<Arc<Node>>) -> impl IntoResponse {
    let m = node.metrics();
    let (stats, held, waiters, sessions) = node.shared.read(|d| {
        (d.state.stats().clone(), d.state.grants().count(), d.state.waiters().count(), d.state.session_count())
    });
    let mut out = String::with_capacity(2048);
    let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    gauge("qm_raft_term", "Current Raft term.", "gauge", m.current_term);
    gauge("qm_raft_is_leader", "1 if this node is the leader.", "gauge", u64::from(m.state == ServerState::Leader));
    gauge("qm_raft_leader_id", "Node id of the known leader (0: none).", "gauge", m.current_leader.unwrap_or(0));
    gauge("qm_raft_applied_index", "Highest log index applied here.", "gauge", m.last_applied.map_or(0, |l| l.index));
    gauge("qm_raft_last_log_index", "Highest log index in the local log.", "gauge", m.last_log_index.unwrap_or(0));
    gauge("qm_raft_snapshot_index", "Log index of the latest snapshot.", "gauge", m.snapshot.map_or(0, |l| l.index));
    gauge("qm_store_size_bytes", "Bytes used by the local store.", "gauge", node.store_size_bytes());
    let (state_bytes, state_bytes_max, alarm) = node.space();
    gauge("qm_state_bytes", "Encoded size of the replicated state, as last measured here.", "gauge", state_bytes);
    gauge("qm_state_bytes_max", "Quota of the replicated state (limits.state_bytes_max).", "gauge", state_bytes_max);
    gauge("qm_nospace_alarm", "1 while the storage alarm (NOSPACE) is raised.", "gauge", u64::from(alarm.is_some()));
    gauge("qm_sessions", "Open sessions.", "gauge", sessions as u64);
    gauge("qm_reservations_held", "Reservations currently held.", "gauge", held as u64);
    gauge("qm_waiters", "Requests waiting in queues.", "gauge", waiters as u64);
    gauge("qm_grants_total", "Reservations granted.", "counter", stats.grants_total);
    gauge("qm_releases_total", "Reservations released.", "counter", stats.releases_total);
    gauge(
        "qm_session_releases_total",
        "Reservations freed because their session ended (closed, or expired without keepalives).",
        "counter",
        stats.session_releases_total,
    );
    gauge("qm_expirations_total", "Leases that ran out.", "counter", stats.expirations_total);
    gauge("qm_deadlocks_total", "Wait-for cycles broken.", "counter", stats.deadlocks_total);
    gauge("qm_preemptions_total", "Preemptions requested.", "counter", stats.preemptions_total);
    gauge("qm_revocations_total", "Leases revoked after a preemption grace.", "counter", stats.revocations_total);
    gauge("qm_wait_timeouts_total", "Waits that timed out.", "counter", stats.timeouts_total);
    let (records, bytes, _, next_seq, _) = node.audit.summary();
    gauge("qm_audit_records", "Audit records this node keeps.", "gauge", records);
    gauge("qm_audit_bytes", "Bytes of audit records this node keeps.", "gauge", bytes);
    gauge("qm_audit_records_total", "Audit records this node has made.", "counter", next_seq.saturating_sub(1));
    gauge(
        "qm_audit_dropped_total",
        "Audit records not written to disk (kept in memory only).",
        "counter",
        node.audit.dropped(),
    );
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
