//! The client workload: sessions, exclusive leases on a few resources with fencing tokens,
//! writes to the fenced resources, linearizable reads at random nodes, task submissions —
//! all through the real client library (`qm_shared::client::Client`) over the simulated
//! network.
//!
//! ```text
//!   client "c<i>": open session (kept alive) ─▶ loop, bounded by OPS_MAX and the phase:
//!     lock op:  acquire r1 [try|wait] ─▶ (queued: poll List until granted or timed out)
//!               [acquire r2 while holding r1: wait-for cycles across clients]
//!               1–3 fenced writes with the token (sometimes after hanging past the lease)
//!               release (sometimes twice) or abandon to expiry
//!     read op:  List at a random node (read index), recorded with the index floor
//!     task op:  Submit a task, acknowledged id recorded
//! ```
//!
//! Every acknowledged answer is recorded in the [`History`](super::world::History) the
//! checkers read; every request and answer goes to the trace.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;

use super::net;
use super::options::Options;
use super::rng::Rng;
use super::world::{lock, now_ms, AckedGrant, Phase, ReadObs, Shared};

/// Operations one client starts at most.
pub const OPS_MAX: u64 = 10_000;
/// Polls of a queued request at most.
pub const POLLS_MAX: u64 = 100;

/// Priorities clients and tasks ask at: far enough apart (more than the default preemption
/// gap of 100) that preemption happens on resources declared `preempt`.
pub const PRIORITIES: [u32; 5] = [10, 10, 50, 150, 300];

/// The resource paths of a run; the first one is declared with the `preempt` policy.
pub fn resource_paths(opts: &Options) -> Vec<String> {
    (0..opts.resources).map(|i| format!("pg:sim/table:t{i}")).collect()
}

struct Ctx {
    name: String,
    shared: Shared,
    client: Client,
    per_node: Vec<(u64, Client)>,
    session: Arc<AtomicU64>,
    rng: Rng,
    opts: Options,
    paths: Vec<String>,
}

impl Ctx {
    fn event(&self, what: &str, detail: std::fmt::Arguments<'_>) {
        let name = &self.name;
        lock(&self.shared).trace.event(now_ms(), what, format_args!("{name} {detail}"));
    }

    fn phase(&self) -> Phase {
        lock(&self.shared).phase
    }

    fn progress(&self) {
        *lock(&self.shared).history.progress.entry(self.name.clone()).or_default() += 1;
    }
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}", s.code())
}

/// The client host software.
pub async fn run(index: u64, opts: Options, shared: Shared) -> turmoil::Result {
    let endpoints: Vec<String> = (1..=opts.nodes).map(net::node_endpoint).collect();
    let client = Client::with_connector(&endpoints, net::connector())?;
    let per_node = (1..=opts.nodes)
        .map(|id| Ok((id, Client::with_connector([net::node_endpoint(id)], net::connector())?)))
        .collect::<Result<Vec<_>, qm_shared::client::ClientError>>()?;
    let mut ctx = Ctx {
        name: format!("c{index}"),
        shared,
        client,
        per_node,
        session: Arc::new(AtomicU64::new(0)),
        rng: Rng::new(opts.seed).fork(100 + index),
        paths: resource_paths(&opts),
        opts,
    };
    tokio::spawn(keepalive(ctx.client.clone(), ctx.session.clone(), ctx.opts.session_ttl_ms));
    if index == 1 {
        declare(&mut ctx).await;
    }
    for op in 0..OPS_MAX {
        if ctx.phase() >= Phase::Converge {
            break;
        }
        let think = ctx.rng.range(10, 200);
        tokio::time::sleep(Duration::from_millis(think)).await;
        if ctx.session.load(Ordering::SeqCst) == 0 {
            open_session(&ctx).await;
            continue;
        }
        lock(&ctx.shared).history.ops += 1;
        match ctx.rng.range(0, 100) {
            0..=69 => lock_op(&mut ctx, op).await,
            70..=84 => read_op(&mut ctx).await,
            _ => task_op(&mut ctx).await,
        }
    }
    Ok(())
}

/// Declares the first resource `preempt` (retried until it is acknowledged, bounded).
async fn declare(ctx: &mut Ctx) {
    let grace_ms = ctx.rng.range(300, 2_000);
    let req = pb::DeclareResourceRequest {
        path: ctx.paths[0].clone(),
        capacity: None,
        policy: pb::ResourcePolicy::Preempt as i32,
        grace_ms,
    };
    for _ in 0..20 {
        let answer = ctx.client.declare_resource(req.clone()).await;
        match answer {
            Ok(r) => {
                ctx.event("declare", format_args!("{} preempt grace={grace_ms}ms index={}", ctx.paths[0], r.index));
                return;
            }
            Err(e) => ctx.event("declare", format_args!("failed {}", status_text(&e))),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn open_session(ctx: &Ctx) {
    match ctx.client.open_session(&ctx.name, ctx.opts.session_ttl_ms).await {
        Ok(s) => {
            ctx.session.store(s.session_id, Ordering::SeqCst);
            ctx.event("session", format_args!("opened {}", s.session_id));
        }
        Err(e) => ctx.event("session", format_args!("open failed {}", status_text(&e))),
    }
}

/// Keeps the current session alive every third of its TTL; forgets it once it expired.
async fn keepalive(client: Client, session: Arc<AtomicU64>, ttl_ms: u64) {
    for _ in 0..1_000_000u64 {
        tokio::time::sleep(Duration::from_millis(ttl_ms / 3)).await;
        let id = session.load(Ordering::SeqCst);
        if id == 0 {
            continue;
        }
        match client.keepalive(id).await {
            Ok(r) if r.expired => {
                let _ = session.compare_exchange(id, 0, Ordering::SeqCst, Ordering::SeqCst);
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                let _ = session.compare_exchange(id, 0, Ordering::SeqCst, Ordering::SeqCst);
            }
            _ => {}
        }
    }
}

fn ack(ctx: &Ctx, r: &pb::Reservation) -> AckedGrant {
    let g = AckedGrant {
        reservation: r.id,
        resource: r.resource.clone(),
        token: r.fencing_token,
        owner: r.owner.clone(),
        session: r.session_id,
        expires_at_ms: r.expires_at_ms,
        lease_ms: r.expires_at_ms.saturating_sub(r.granted_at_ms),
        t_ms: now_ms(),
    };
    let mut w = lock(&ctx.shared);
    w.trace.event(
        g.t_ms,
        "granted",
        format_args!("{} {} res={} token={} owner={}", ctx.name, g.resource, g.reservation, g.token, g.owner),
    );
    w.history.grants.insert(g.reservation, g.clone());
    g
}

async fn acquire(ctx: &mut Ctx, owner: &str, path: &str) -> Option<AckedGrant> {
    let session = ctx.session.load(Ordering::SeqCst);
    let wait = ctx.rng.chance(50);
    let wait_ms = ctx.rng.range(300, 3_000);
    let req = pb::AcquireRequest {
        session_id: session,
        owner: owner.to_string(),
        resources: vec![pb::ResourceRequest { path: path.to_string(), mode: pb::Mode::Exclusive as i32, units: 1 }],
        kind: if wait { pb::AcquireKind::Wait } else { pb::AcquireKind::Try } as i32,
        priority: *ctx.rng.pick(&PRIORITIES),
        lease_ms: ctx.rng.range(1_000, 5_000),
        wait_timeout_ms: wait.then_some(wait_ms),
    };
    ctx.event("acquire", format_args!("{owner} {path} wait={wait}"));
    let mut answer = ctx.client.acquire(req.clone()).await;
    if ctx.rng.chance(ctx.opts.duplicate_pct) {
        // The answer was "lost": the client sends the same request again.
        let again = ctx.client.acquire(req.clone()).await;
        ctx.event("duplicate", format_args!("{owner} {path} first={} second={}", outcome(&answer), outcome(&again)));
        if let Ok(pb::AcquireResponse { outcome: Some(pb::acquire_response::Outcome::Granted(g)) }) = &answer {
            for r in &g.reservations {
                ack(ctx, r);
            }
        }
        answer = again;
    }
    ctx.event("answer", format_args!("{owner} {path} {}", outcome(&answer)));
    use pb::acquire_response::Outcome;
    match answer {
        Ok(pb::AcquireResponse { outcome: Some(Outcome::Granted(g)) }) => {
            let mut mine = None;
            for r in &g.reservations {
                let a = ack(ctx, r);
                if a.resource == path {
                    mine = Some(a);
                }
            }
            mine
        }
        Ok(pb::AcquireResponse { outcome: Some(Outcome::Queued(q)) }) => {
            poll_granted(ctx, owner, path, session, q.request_id, wait_ms).await
        }
        _ => None,
    }
}

fn outcome(a: &Result<pb::AcquireResponse, tonic::Status>) -> String {
    use pb::acquire_response::Outcome;
    match a {
        Ok(pb::AcquireResponse { outcome: Some(Outcome::Granted(g)) }) => {
            format!("granted tokens={:?}", g.reservations.iter().map(|r| r.fencing_token).collect::<Vec<_>>())
        }
        Ok(pb::AcquireResponse { outcome: Some(Outcome::Queued(q)) }) => format!("queued req={}", q.request_id),
        Ok(pb::AcquireResponse { outcome: Some(Outcome::Refused(r)) }) => format!("refused {:?}", r.reason()),
        Ok(_) => "empty".into(),
        Err(s) => format!("error {}", status_text(s)),
    }
}

/// Waits for a queued request's grant by reading (List, read index) until it shows up.
async fn poll_granted(
    ctx: &mut Ctx,
    owner: &str,
    path: &str,
    session: u64,
    request: u64,
    wait_ms: u64,
) -> Option<AckedGrant> {
    let deadline = now_ms() + wait_ms + 1_000;
    for _ in 0..POLLS_MAX {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let req = pb::ListRequest {
            resource_prefix: path.to_string(),
            session_id: Some(session),
            owner: Some(owner.to_string()),
            limit: 10,
            page_token: String::new(),
            include_pending: true,
        };
        match ctx.client.list(req).await {
            Ok(list) => {
                if let Some(r) = list.reservations.iter().find(|r| r.resource == path && r.owner == owner) {
                    return Some(ack(ctx, r));
                }
                if !list.pending.iter().any(|p| p.request_id == request) {
                    ctx.event("not-queued", format_args!("{owner} {path} req={request}"));
                    return None;
                }
            }
            Err(e) => ctx.event("list", format_args!("{owner} failed {}", status_text(&e))),
        }
        if now_ms() > deadline {
            break;
        }
    }
    let cancel =
        pb::ReleaseRequest { target: Some(pb::release_request::Target::RequestId(request)), session_id: session };
    let r = ctx.client.release(cancel).await;
    ctx.event("cancel", format_args!("{owner} req={request} {}", r.map_or_else(|e| status_text(&e), |_| "ok".into())));
    None
}

async fn lock_op(ctx: &mut Ctx, op: u64) {
    let owner = format!("{}-o{op}", ctx.name);
    lock(&ctx.shared).history.owners.insert(owner.clone());
    let first = ctx.rng.pick(&ctx.paths).clone();
    let mut held = Vec::new();
    if let Some(g) = acquire(ctx, &owner, &first).await {
        held.push(g);
        if ctx.rng.chance(25) {
            let second = ctx.rng.pick(&ctx.paths).clone();
            if second != first {
                if let Some(g) = acquire(ctx, &owner, &second).await {
                    held.push(g);
                }
            }
        }
    }
    for g in &held {
        let lease_ms = g.lease_ms.min(5_000);
        let writes = ctx.rng.range(1, 4);
        for _ in 0..writes {
            let pause = if ctx.rng.chance(5) {
                // The agent hangs past its lease (GC pause, stuck call), then writes anyway.
                ctx.event("hang", format_args!("{owner} {}", g.resource));
                5_500
            } else {
                ctx.rng.range(5, (lease_ms / 4).max(10))
            };
            tokio::time::sleep(Duration::from_millis(pause)).await;
            lock(&ctx.shared).fenced_write(now_ms(), &g.resource, g.token, &owner);
        }
    }
    let session = ctx.session.load(Ordering::SeqCst);
    for g in &held {
        if ctx.rng.chance(10) {
            ctx.event("abandon", format_args!("{owner} res={}", g.reservation));
            continue;
        }
        let req = pb::ReleaseRequest {
            target: Some(pb::release_request::Target::ReservationId(g.reservation)),
            session_id: session,
        };
        let times = if ctx.rng.chance(ctx.opts.duplicate_pct) { 2 } else { 1 };
        for _ in 0..times {
            let r = ctx.client.release(req).await;
            ctx.event(
                "release",
                format_args!(
                    "{owner} res={} {}",
                    g.reservation,
                    r.map_or_else(|e| status_text(&e), |r| format!("released={:?}", r.released_reservation_ids))
                ),
            );
        }
    }
    if !held.is_empty() {
        ctx.progress();
    }
}

async fn read_op(ctx: &mut Ctx) {
    let (node, client) = ctx.rng.pick(&ctx.per_node).clone();
    let floor = lock(&ctx.shared).applied_max;
    let req = pb::ListRequest { limit: 100, include_pending: true, ..Default::default() };
    match client.list(req).await {
        Ok(list) => {
            let obs = ReadObs { client: ctx.name.clone(), node, floor, index: list.index, t_ms: now_ms() };
            ctx.event(
                "read",
                format_args!("n{node} index={} floor={floor} held={}", list.index, list.reservations.len()),
            );
            lock(&ctx.shared).history.reads.push(obs);
            ctx.progress();
        }
        Err(e) => ctx.event("read", format_args!("n{node} failed {}", status_text(&e))),
    }
}

async fn task_op(ctx: &mut Ctx) {
    // A real scripted-executor payload; `output` names the resource the simulated executor
    // writes to (see `workers`).
    let path = ctx.rng.pick(&ctx.paths).clone();
    let payload = serde_json::json!({
        "executor": "scripted",
        "duration_ms": ctx.rng.range(300, 3_000),
        "steps": ctx.rng.range(2, 8),
        "output": path,
    })
    .to_string()
    .into_bytes();
    let req = pb::SubmitTaskRequest {
        role: "implementer".into(),
        resources: vec![pb::ResourceRequest { path, mode: pb::Mode::Exclusive as i32, units: 1 }],
        payload,
        priority: *ctx.rng.pick(&PRIORITIES),
        work_item_id: String::new(),
        max_attempts: 3,
        timeout_ms: 30_000,
        incremental: false,
    };
    let answer = ctx.client.submit_task(req).await;
    match answer {
        Ok(r) => {
            let mut w = lock(&ctx.shared);
            w.trace.event(now_ms(), "submitted", format_args!("{} task={}", ctx.name, r.task_id));
            w.history.tasks.insert(r.task_id, ctx.name.clone());
            drop(w);
            ctx.progress();
        }
        Err(e) => ctx.event("submit", format_args!("failed {}", status_text(&e))),
    }
}
