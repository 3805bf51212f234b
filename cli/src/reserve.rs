//! `qm reserve acquire|release|extend|list|watch|run`: its arguments and handlers, the lock
//! table from the command line. Also what other commands share: acquiring (`qm dev`), the
//! JSON of reservations and modes, and `emit`, which prints a command's result as JSON or text.

use std::time::Duration;

use clap::Subcommand;
use futures::StreamExt;
use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use serde_json::{json, Value};

use crate::{print_stdout, status_failure, Failure, Output};

#[derive(Subcommand, Debug)]
pub enum ReserveCommand {
    /// Acquire one resource or an atomic set. Prints the reservation and fencing token;
    /// a refusal exits 3 and names the holders.
    #[command(
        after_help = "Examples:\n  qm reserve acquire pg:staging/table:orders --mode exclusive\n  qm reserve acquire 'pg:staging/table:orders/rows:[0,1000)' --mode shared --wait --timeout-ms 5000\n  qm reserve acquire gpu:box-1 api:anthropic --mode exclusive -o json"
    )]
    Acquire {
        /// Resource paths, granted all-or-nothing.
        #[arg(required = true)]
        resources: Vec<String>,
        #[command(flatten)]
        flags: AcquireFlags,
    },
    /// Release a reservation (or cancel a queued request with --request).
    Release {
        /// Reservation id (`r12` or `12`).
        #[arg(required_unless_present = "request", value_parser = crate::ids::reservation)]
        id: Option<u64>,
        /// Cancel this pending request instead (`q3` or `3`).
        #[arg(long, value_parser = crate::ids::request)]
        request: Option<u64>,
        /// Session that owns it (`s5` or `5`).
        #[arg(long, value_parser = crate::ids::session)]
        session: u64,
    },
    /// Renew a reservation's lease.
    Extend {
        /// Reservation id (`r12` or `12`).
        #[arg(value_parser = crate::ids::reservation)]
        id: u64,
        /// Session that owns it (`s5` or `5`).
        #[arg(long, value_parser = crate::ids::session)]
        session: u64,
        /// New lease from now, ms (0: the default 5 minutes).
        #[arg(long, default_value_t = 0)]
        lease_ms: u64,
    },
    /// List reservations (and queued requests with --pending).
    List {
        #[command(flatten)]
        filter: Filter,
        /// Also the requests waiting in the queues, with who they wait for
        #[arg(long)]
        pending: bool,
        /// At most this many reservations (0: the server's page size)
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// Continue a listing from the `more: --page-token` the previous page printed
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Stream lock-table events (one line each; -o json for JSON lines).
    Watch {
        #[command(flatten)]
        filter: Filter,
        /// Replay retained events from this log index first.
        #[arg(long, default_value_t = 0)]
        from_index: u64,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Run a command while holding a resource, like flock(1): acquire (waiting), export
    /// QM_FENCING_TOKEN and QM_RESERVATION_ID, keep the lease alive, release when the command
    /// exits, and exit with its code.
    #[command(after_help = "Example:\n  qm reserve run pg:staging --mode exclusive -- ./migrate.sh")]
    Run {
        /// The resource path to hold while the command runs (e.g. pg:staging)
        resource: String,
        #[command(flatten)]
        flags: AcquireFlags,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
}

/// Which reservations `qm reserve list` and `qm reserve watch` cover.
#[derive(clap::Args, Debug)]
pub struct Filter {
    /// Only resources under this path (`pg:staging` covers `pg:staging/table:orders`).
    #[arg(long, default_value = "")]
    prefix: String,
    /// Only this session's (`s5` or `5`).
    #[arg(long, value_parser = crate::ids::session)]
    session: Option<u64>,
    /// Only this owner's.
    #[arg(long)]
    owner: Option<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct AcquireFlags {
    /// Access mode.
    #[arg(long, value_parser = ["shared", "exclusive"], default_value = "exclusive")]
    mode: String,
    /// Queue until granted instead of failing fast.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long in the queue (ms).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Lease length in ms (1000..=3600000; 0: the server default of 5 minutes).
    #[arg(long, default_value_t = 0)]
    lease_ms: u64,
    /// Priority 0..=1000 (higher wins; 0: the default 500).
    #[arg(long, default_value_t = 0)]
    priority: u32,
    /// Owner label shown to others. [default: $USER@qm]
    #[arg(long)]
    owner: Option<String>,
    /// Existing session to acquire under (`s5` or `5`); otherwise a new session is opened.
    #[arg(long, value_parser = crate::ids::session)]
    session: Option<u64>,
    /// TTL of the session opened for this request (1000..=300000 ms). The reservation lives
    /// while the session does: it is released when the session expires. [default: 300000 for
    /// `acquire`, whose lease outlives the command; 10000 for `run`, which keeps the session
    /// alive while its command runs, so a killed `qm reserve run` frees the resource within
    /// this time]
    #[arg(long)]
    session_ttl_ms: Option<u64>,
}

/// Session TTL of `qm reserve acquire` when not given: the lease outlives the command.
const ACQUIRE_SESSION_TTL_MS: u64 = 300_000;
/// Session TTL of `qm reserve run` when not given: the command keeps it alive, so a killed
/// CLI's lease expires this soon after.
const RUN_SESSION_TTL_MS: u64 = 10_000;

impl AcquireFlags {
    fn args(&self, resources: Vec<String>, default_ttl_ms: u64) -> AcquireArgs {
        AcquireArgs {
            resources,
            mode: if self.mode == "shared" { pb::Mode::Shared } else { pb::Mode::Exclusive },
            wait: self.wait,
            timeout_ms: self.timeout_ms,
            lease_ms: self.lease_ms,
            priority: self.priority,
            owner: self
                .owner
                .clone()
                .unwrap_or_else(|| format!("{}@qm", std::env::var("USER").unwrap_or_else(|_| "cli".into()))),
            session: self.session,
            session_ttl_ms: self.session_ttl_ms.unwrap_or(default_ttl_ms),
        }
    }
}

/// `qm reserve …`.
pub async fn dispatch(command: ReserveCommand, client: &Client, output: Output) -> Result<(), Failure> {
    match command {
        ReserveCommand::Acquire { resources, flags } => {
            acquire_cmd(client, flags.args(resources, ACQUIRE_SESSION_TTL_MS), output).await
        }
        ReserveCommand::Release { id, request, session } => release(client, id, request, session, output).await,
        ReserveCommand::Extend { id, session, lease_ms } => extend(client, id, session, lease_ms, output).await,
        ReserveCommand::List { filter: Filter { prefix, session, owner }, pending, limit, page_token } => {
            let req = pb::ListRequest {
                resource_prefix: prefix,
                session_id: session,
                owner,
                limit,
                page_token,
                include_pending: pending,
            };
            list(client, req, output).await
        }
        ReserveCommand::Watch { filter: Filter { prefix, session, owner }, from_index, count } => {
            let req = pb::WatchRequest { resource_prefix: prefix, session_id: session, owner, start_index: from_index };
            watch(client, req, count, output).await
        }
        ReserveCommand::Run { resource, flags, cmd } => {
            let mut flags = flags;
            flags.wait = true;
            let code = run(client, flags.args(vec![resource], RUN_SESSION_TTL_MS), cmd).await?;
            if code == 0 {
                Ok(())
            } else {
                Err(Failure { code, message: String::new() })
            }
        }
    }
}

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
    // Catch signals from before the request can be queued, so none leaves it behind.
    let mut interrupts = if args.wait { Some(Interrupts::install()?) } else { None };
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
            let queued = Queued { session: session_id, request: q.request_id, own_session: args.session.is_none() };
            let interrupts = interrupts.as_mut().expect("wait installs the handlers");
            follow_queue(client, args, queued, events, interrupts).await
        }
        None => Err(Failure::error("the coordinator answered without an outcome")),
    }
}

/// A request waiting in the queue, and whether this command opened its session.
struct Queued {
    session: u64,
    request: u64,
    own_session: bool,
}

/// Follows a queued request until it is granted or refused, keeping the session alive. On
/// SIGINT or SIGTERM it cancels the request (closing the session if this command opened it),
/// so nothing is granted later to a process that is gone, and exits 128 + the signal.
async fn follow_queue(
    client: &Client,
    args: &AcquireArgs,
    q: Queued,
    events: &mut tonic::Streaming<pb::WatchEvent>,
    interrupts: &mut Interrupts,
) -> Result<Outcome, Failure> {
    let mut ticker = tokio::time::interval(keepalive_period(args.session_ttl_ms, args.lease_ms));
    ticker.tick().await;
    let mut granted = Vec::new();
    loop {
        let ev = tokio::select! {
            ev = events.next() => ev,
            _ = ticker.tick() => {
                if q.own_session {
                    keep_session(client, q.session).await;
                }
                continue;
            }
            signal = interrupts.next() => return Err(cancel_queued(client, &q, signal).await),
        };
        let Some(ev) = ev else {
            return Err(Failure::error("the watch stream ended before the request was decided"));
        };
        let ev = ev.map_err(status_failure)?;
        if let Some(outcome) = decided(ev, &q, args.resources.len(), &mut granted)? {
            return Ok(outcome);
        }
    }
}

/// What `ev` decides about the queued request, if anything (grants accumulate in `granted`
/// until every resource asked for is held).
fn decided(
    ev: pb::WatchEvent,
    q: &Queued,
    wanted: usize,
    granted: &mut Vec<pb::Reservation>,
) -> Result<Option<Outcome>, Failure> {
    use pb::watch_event::Kind as K;
    let (session_id, request) = (q.session, q.request);
    let refused = |reason: &str, text: String, extra: Value| {
        let mut json = json!({"status": "refused", "reason": reason, "request_id": request, "session_id": session_id});
        if let (Some(o), Value::Object(e)) = (json.as_object_mut(), extra) {
            o.extend(e);
        }
        Ok(Some(Outcome::Refused { json, text }))
    };
    match ev.kind {
        Some(K::Granted(g)) if g.request_id == request => {
            granted.extend(g.reservations);
            if granted.len() >= wanted {
                return Ok(Some(Outcome::Granted { session: session_id, reservations: std::mem::take(granted) }));
            }
            Ok(None)
        }
        Some(K::DeadlockVictim(d)) if d.request_id == request => refused(
            "deadlock",
            format!("refused: deadlock victim, cycle {}", d.cycle_owners.join(" -> ")),
            json!({"cycle": d.cycle_owners}),
        ),
        Some(K::TimedOut(t)) if t.request_id == request => {
            refused("timed_out", "refused: timed out in the queue".into(), json!({}))
        }
        Some(K::Cancelled(c)) if c.request_id == request => {
            refused("cancelled", "refused: cancelled".into(), json!({}))
        }
        Some(K::SessionExpired(_)) => Err(Failure::error("the session expired while waiting")),
        _ => Ok(None),
    }
}

/// Cancels a queued request after `signal` (the exit code to use): closes the session this
/// command opened, or withdraws just the request from the caller's own session.
async fn cancel_queued(client: &Client, q: &Queued, signal: u8) -> Failure {
    let done = if q.own_session {
        client.close_session(q.session).await.map(|_| ())
    } else {
        let target = Some(pb::release_request::Target::RequestId(q.request));
        client.release(pb::ReleaseRequest { session_id: q.session, target }).await.map(|_| ())
    };
    match done {
        Ok(()) => Failure { code: signal, message: format!("interrupted: request {} cancelled", q.request) },
        Err(e) => Failure {
            code: signal,
            message: format!(
                "interrupted, but cancelling request {} failed ({}); it is withdrawn when session {} expires",
                q.request,
                e.message(),
                q.session
            ),
        },
    }
}

/// SIGINT and SIGTERM, caught from the moment [`Interrupts::install`] returns, so one that
/// comes before the first wait is not lost.
struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn install() -> Result<Interrupts, Failure> {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind| signal(kind).map_err(|e| Failure::error(format!("installing a signal handler: {e}")));
        Ok(Interrupts { int: install(SignalKind::interrupt())?, term: install(SignalKind::terminate())? })
    }

    /// The next signal, as the exit code it ends the command with: 130 (SIGINT), 143 (SIGTERM).
    async fn next(&mut self) -> u8 {
        tokio::select! {
            _ = self.int.recv() => 130,
            _ = self.term.recv() => 143,
        }
    }
}

/// How often to renew a session of `ttl_ms` and leases of `lease_ms` (0: the 5-minute
/// default): well within both.
fn keepalive_period(ttl_ms: u64, lease_ms: u64) -> Duration {
    let lease_ms = if lease_ms == 0 { qm_shared::limits::LEASE_MS_DEFAULT } else { lease_ms };
    Duration::from_millis((ttl_ms.min(lease_ms) / 3).max(200))
}

/// Renews `session`, saying on stderr when that fails.
async fn keep_session(client: &Client, session: u64) -> bool {
    match client.keepalive(session).await {
        Ok(k) if k.expired => {
            eprintln!("qm reserve: session {session} expired");
            false
        }
        Ok(_) => true,
        Err(e) => {
            eprintln!("qm reserve: keepalive of session {session} failed: {}", e.message());
            true
        }
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
async fn acquire_cmd(client: &Client, args: AcquireArgs, output: Output) -> Result<(), Failure> {
    match acquire(client, &args).await? {
        Outcome::Granted { session, reservations } => {
            let first = &reservations[0];
            let value = json!({
                "status": "granted", "id": first.id, "resource": first.resource, "mode": mode_name(first.mode),
                "fencing_token": first.fencing_token, "session_id": session, "expires_at_ms": first.expires_at_ms,
                "reservations": reservations.iter().map(reservation_json).collect::<Vec<_>>(),
            });
            let mut text = reservations
                .iter()
                .map(|r| {
                    format!(
                        "granted r{} {} {} token={} session=s{}\n",
                        r.id,
                        mode_name(r.mode),
                        r.resource,
                        r.fencing_token,
                        session
                    )
                })
                .collect::<String>();
            let ids: Vec<String> = reservations.iter().map(|r| format!("r{}", r.id)).collect();
            text.push_str(&match ids.as_slice() {
                [one] => format!("release with: qm reserve release {one} --session s{session}\n"),
                _ => format!("release each with: qm reserve release ID --session s{session} ({})\n", ids.join(", ")),
            });
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

/// A command's result: `value` as pretty JSON with `-o json`, else `text`.
/// Every JSON answer is an object with named top-level fields (never a bare array), so that
/// fields can be added without breaking scripts.
pub fn emit(output: Output, value: &Value, text: &str) {
    debug_assert!(value.is_object(), "-o json answers are objects: {value}");
    match output {
        Output::Json => print_stdout(&format!("{}\n", serde_json::to_string_pretty(value).expect("json"))),
        _ => print_stdout(text),
    }
}

/// `qm reserve release`: reservation `id`, or the queued `request`.
async fn release(
    client: &Client,
    id: Option<u64>,
    request: Option<u64>,
    session: u64,
    output: Output,
) -> Result<(), Failure> {
    let (target, what) = match (id, request) {
        (_, Some(r)) => (pb::release_request::Target::RequestId(r), format!("request q{r} is not queued")),
        (Some(id), None) => (pb::release_request::Target::ReservationId(id), format!("reservation r{id} is not held")),
        (None, None) => return Err(Failure::usage("give a reservation id or --request")),
    };
    let resp = client
        .release(pb::ReleaseRequest { session_id: session, target: Some(target) })
        .await
        .map_err(status_failure)?;
    if resp.released_reservation_ids.is_empty() && resp.cancelled_request_ids.is_empty() {
        return Err(Failure {
            code: 3,
            message: format!(
                "nothing released: {what} by session s{session} (released already, expired, or never \
                 its); `qm reserve list --session {session}` shows what the session holds"
            ),
        });
    }
    let value = json!({"released": resp.released_reservation_ids, "cancelled": resp.cancelled_request_ids});
    emit(
        output,
        &value,
        &format!("released {:?} cancelled {:?}\n", resp.released_reservation_ids, resp.cancelled_request_ids),
    );
    Ok(())
}

/// `qm reserve extend`: renews reservation `id` for `lease_ms` from now.
async fn extend(client: &Client, id: u64, session: u64, lease_ms: u64, output: Output) -> Result<(), Failure> {
    let resp = client
        .extend(pb::ExtendRequest { reservation_id: id, session_id: session, lease_ms })
        .await
        .map_err(status_failure)?;
    let r = resp.reservation.unwrap_or_default();
    emit(output, &reservation_json(&r), &format!("extended {} until {} ms\n", r.id, r.expires_at_ms));
    Ok(())
}

/// `qm reserve list`.
pub async fn list(client: &Client, req: pb::ListRequest, output: Output) -> Result<(), Failure> {
    let pending_asked = req.include_pending;
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
            format!("r{}", r.id),
            r.resource,
            mode_name(r.mode),
            r.fencing_token,
            r.owner,
            format!("s{}", r.session_id)
        ));
    }
    if pending_asked && resp.pending.is_empty() {
        text.push_str("nothing waits\n");
    }
    for p in &resp.pending {
        let res =
            p.resources.iter().map(|r| format!("{} {}", mode_name(r.mode), r.path)).collect::<Vec<_>>().join(", ");
        text.push_str(&format!(
            "waiting: request q{} {} (session s{}) for {}\n",
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
async fn watch(client: &Client, req: pb::WatchRequest, count: Option<u64>, output: Output) -> Result<(), Failure> {
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
/// session alive while it runs, release, exit with CMD's code. SIGINT or SIGTERM while
/// queued cancels the request; while CMD runs, it is passed to CMD, and the lease is
/// released once CMD has exited.
async fn run(client: &Client, args: AcquireArgs, cmd: Vec<String>) -> Result<u8, Failure> {
    let lease_ms = args.lease_ms;
    let (session, reservations) = match acquire(client, &args).await? {
        Outcome::Granted { session, reservations } => (session, reservations),
        Outcome::Refused { text, .. } => return Err(Failure { code: 3, message: text }),
    };
    let mut interrupts = Interrupts::install()?;
    let first = reservations[0].clone();
    let spawned = tokio::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("QM_FENCING_TOKEN", first.fencing_token.to_string())
        .env("QM_RESERVATION_ID", first.id.to_string())
        .env("QM_SESSION_ID", session.to_string())
        .env("QM_RESOURCE", &first.resource)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let _ = client.close_session(session).await;
            return Err(Failure::usage(format!("{}: {e}", cmd[0])));
        }
    };
    let mut ticker = tokio::time::interval(keepalive_period(args.session_ttl_ms, lease_ms));
    ticker.tick().await;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            signal = interrupts.next() => pass_signal(&child, signal),
            _ = ticker.tick() => {
                if !keep_session(client, session).await {
                    eprintln!("qm reserve run: the lease is lost, stopping the command");
                    let _ = child.start_kill();
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
    use std::os::unix::process::ExitStatusExt;
    Ok(status.code().map_or_else(|| status.signal().map_or(1, |s| 128 + s as u8), |c| c as u8))
}

/// Passes the signal that ends in exit code `code` (130: SIGINT, 143: SIGTERM) to the
/// command, which decides how to stop; the lease is kept until it has.
#[allow(unsafe_code)]
fn pass_signal(child: &tokio::process::Child, code: u8) {
    let signal = if code == 130 { libc::SIGINT } else { libc::SIGTERM };
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) has no memory effects; `pid` is our own child, not yet reaped
        // (`id()` is `None` once it has been).
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }
}
