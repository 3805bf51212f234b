//! `qm bench reserve`: its arguments and handler, a closed-loop load generator against a
//! running cluster.
//!
//! Each client opens its own session and a watch on it, then loops: acquire (wait) an
//! exclusive lease, check the fencing token against an in-process fenced resource, release.
//! With `--contention c`, a cycle picks one of the `--resources` shared hot resources with
//! probability c, else a resource of its own. Latency is acquire-call-to-grant; throughput
//! is completed acquire+release cycles per second. Bounded by `--duration-s` and
//! `--cycles-max`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Subcommand;
use futures::StreamExt;
use hdrhistogram::Histogram;
use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use serde_json::json;

use crate::{status_failure, Failure, Output};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Acquire+release cycles against a running cluster, fencing-checked.
    #[command(
        after_help = "The four standard runs:\n  qm bench reserve --clients 1\n  qm bench reserve --clients 16\n  qm bench reserve --clients 64\n  qm bench reserve --clients 64 --resources 8 --contention 1"
    )]
    Reserve(BenchArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Concurrent clients (each with its own session).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub clients: u32,
    /// Shared hot resources.
    #[arg(long, default_value_t = 0)]
    pub resources: u32,
    /// Probability that a cycle uses a shared hot resource (0..=1).
    #[arg(long, default_value_t = 0.0)]
    pub contention: f64,
    /// How long to run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration_s: u64,
    /// Stop after this many cycles in all.
    #[arg(long, default_value_t = 10_000_000)]
    pub cycles_max: u64,
    /// Seed of the clients' choices of resources (the same seed, the same sequence per client)
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// `qm bench …`: checks the arguments, then runs.
pub async fn dispatch(command: BenchCommand, client: &Client, output: Output) -> Result<(), Failure> {
    match command {
        BenchCommand::Reserve(args) => {
            if !(0.0..=1.0).contains(&args.contention) {
                return Err(Failure::usage(format!("--contention {}: must be within 0..=1", args.contention)));
            }
            if args.contention > 0.0 && args.resources == 0 {
                return Err(Failure::usage("--contention needs --resources of at least 1"));
            }
            reserve(client, args, output).await
        }
    }
}

/// A fenced resource: refuses tokens lower than the highest seen, records overlapping holders.
#[derive(Debug, Default)]
struct Fence {
    highest: BTreeMap<String, u64>,
    holder: BTreeMap<String, u32>,
    violations: Vec<String>,
}

impl Fence {
    fn enter(&mut self, resource: &str, token: u64, client: u32) {
        let high = self.highest.entry(resource.to_string()).or_insert(0);
        if token <= *high {
            self.violations.push(format!("{resource}: token {token} after {high}"));
        }
        *high = (*high).max(token);
        if let Some(other) = self.holder.insert(resource.to_string(), client) {
            self.violations.push(format!("{resource}: client {client} entered while client {other} held it"));
        }
    }

    fn leave(&mut self, resource: &str) {
        self.holder.remove(resource);
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

async fn reserve(client: &Client, args: BenchArgs, output: Output) -> Result<(), Failure> {
    let fence = Arc::new(Mutex::new(Fence::default()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_s);
    let per_client_max = args.cycles_max.div_ceil(u64::from(args.clients)).max(1);
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let client = client.clone();
        let fence = fence.clone();
        let args = args.clone();
        tasks.push(tokio::spawn(
            async move { one_client(client, c, args, fence, started, deadline, per_client_max).await },
        ));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut cycles = 0u64;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut grants_at: Vec<u32> = Vec::new();
    for t in tasks {
        let (h, n, e, at) = t.await.map_err(|e| Failure::error(format!("bench client panicked: {e}")))??;
        hist.add(h).expect("same bounds");
        cycles += n;
        grants_at.extend(at);
        for (kind, count) in e {
            *errors.entry(kind).or_default() += count;
        }
    }
    let error_total: u64 = errors.values().sum();
    // The longest stretch with no grant anywhere (a failover shows up here), and when it began.
    grants_at.sort_unstable();
    let (gap_ms, gap_from_ms) =
        grants_at.windows(2).map(|w| (w[1] - w[0], w[0])).max_by_key(|(gap, _)| *gap).unwrap_or((0, 0));
    let error_lines: String = errors.iter().map(|(kind, n)| format!("  {n} × {kind}\n")).collect();
    let elapsed = started.elapsed().as_secs_f64();
    let violations = fence.lock().expect("fence").violations.clone();
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    let commit = option_env!("QM_COMMIT").unwrap_or("unknown").to_string();
    let machine =
        format!("{} cpus, {}", std::thread::available_parallelism().map_or(0, |n| n.get()), std::env::consts::ARCH);
    let value = json!({
        "bench": "reserve",
        "params": {"clients": args.clients, "resources": args.resources, "contention": args.contention, "duration_s": args.duration_s, "seed": args.seed},
        "endpoints": client.endpoints(),
        "machine": machine, "commit": commit, "version": env!("CARGO_PKG_VERSION"),
        "cycles": cycles, "errors": error_total, "errors_by_kind": errors, "elapsed_s": elapsed,
        "cycles_per_s": cycles as f64 / elapsed,
        "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": hist.max() as f64 / 1000.0},
        "fencing_violations": violations.len(),
        "longest_grant_gap_ms": gap_ms, "longest_grant_gap_from_ms": gap_from_ms,
        "peer_etcd_3_4_cycles_per_s": {"1": 157, "16": 490, "64": 710, "64_over_8_keys": 390},
    });
    let text =
        format!(
        "qm bench reserve: {} clients, {} hot resources, contention {:.2}, {:.1} s on {machine} (commit {commit})\n\
         cycles: {cycles} ({:.0}/s), errors: {error_total}, fencing violations: {}\n{error_lines}\
         acquire latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}\n\
         longest pause in grants: {gap_ms} ms, from {gap_from_ms} ms into the run\n\
         etcd 3.4 on a like machine (lease+lock): 157/s @1, 490/s @16, 710/s @64, 390/s @64 over 8 keys\n",
        args.clients, args.resources, args.contention, elapsed, cycles as f64 / elapsed, violations.len(),
        q(0.5), q(0.9), q(0.99), hist.max() as f64 / 1000.0,
    );
    crate::reserve::emit(output, &value, &text);
    if !violations.is_empty() {
        return Err(Failure::error(format!("fencing violations: {}", violations.join("; "))));
    }
    Ok(())
}

async fn one_client(
    client: Client,
    c: u32,
    args: BenchArgs,
    fence: Arc<Mutex<Fence>>,
    started: Instant,
    deadline: Instant,
    cycles_max: u64,
) -> Result<(Histogram<u64>, u64, BTreeMap<String, u64>, Vec<u32>), Failure> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut rng = Rng(args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(u64::from(c) * 2 + 1) | 1);
    let owner = format!("bench-{c}");
    let session = client.open_session(&owner, 30_000).await.map_err(status_failure)?.session_id;
    let stream = client
        .watch(pb::WatchRequest { session_id: Some(session), ..Default::default() })
        .await
        .map_err(status_failure)?;
    // Read the watch stream all the time, not only while waiting: an unread stream backs up
    // into the HTTP/2 connection the unary calls share. The loop drops what it did not wait for.
    // A stream that ends (its node died) is reopened after the last index seen, losing nothing.
    let (forward, mut events) = tokio::sync::mpsc::channel(1_024);
    let reader = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut stream = Some(stream);
            let mut last = 0;
            loop {
                if let Some(mut s) = stream.take() {
                    while let Some(Ok(ev)) = s.next().await {
                        last = last.max(ev.index);
                        if forward.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                let start_index = if last == 0 { 0 } else { last + 1 };
                let req = pb::WatchRequest { session_id: Some(session), start_index, ..Default::default() };
                stream = client.watch(req).await.ok();
            }
        })
    };
    let mut cycles = 0;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut error = |kind: String| *errors.entry(kind).or_default() += 1;
    let mut grants_at = Vec::new();
    let mut last_keepalive = Instant::now();
    while Instant::now() < deadline && cycles < cycles_max {
        if last_keepalive.elapsed() > Duration::from_secs(5) {
            let _ = client.keepalive(session).await;
            last_keepalive = Instant::now();
        }
        let resource = if args.resources > 0 && rng.unit() < args.contention {
            format!("bench:hot/key:{}", rng.next() % u64::from(args.resources))
        } else {
            format!("bench:own/key:{c}")
        };
        let t0 = Instant::now();
        let req = pb::AcquireRequest {
            session_id: session,
            owner: owner.clone(),
            resources: vec![pb::ResourceRequest { path: resource.clone(), mode: pb::Mode::Exclusive as i32, units: 0 }],
            kind: pb::AcquireKind::Wait as i32,
            priority: 500,
            lease_ms: 30_000,
            wait_timeout_ms: Some(30_000),
        };
        let resp = match client.acquire(req).await {
            Ok(r) => r,
            Err(status) => {
                error(format!("acquire: {}", describe(&status)));
                continue;
            }
        };
        use pb::acquire_response::Outcome as O;
        let granted = match resp.outcome {
            Some(O::Granted(g)) => g.reservations.into_iter().next().ok_or_else(|| "granted nothing".to_string()),
            Some(O::Queued(q)) => {
                let mut got = Err("watch stream ended".to_string());
                while let Some(ev) = events.recv().await {
                    match ev.map(|ev| ev.kind) {
                        Ok(Some(pb::watch_event::Kind::Granted(g))) if g.request_id == q.request_id => {
                            got = g.reservations.into_iter().next().ok_or_else(|| "granted nothing".to_string());
                            break;
                        }
                        Ok(Some(pb::watch_event::Kind::TimedOut(t))) if t.request_id == q.request_id => {
                            got = Err("wait timed out".to_string());
                            break;
                        }
                        Ok(Some(pb::watch_event::Kind::Lagged(_))) => {
                            got = Err("watch lagged".to_string());
                            break;
                        }
                        Err(status) => {
                            got = Err(format!("watch: {}", describe(&status)));
                            break;
                        }
                        _ => {}
                    }
                }
                got
            }
            Some(O::Refused(r)) => Err(format!("refused: {r:?}")),
            None => Err("empty answer".to_string()),
        };
        let r = match granted {
            Ok(r) => r,
            Err(kind) => {
                error(kind);
                continue;
            }
        };
        hist.record(t0.elapsed().as_micros().max(1) as u64).expect("within bounds");
        grants_at.push(u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX));
        fence.lock().expect("fence").enter(&r.resource, r.fencing_token, c);
        fence.lock().expect("fence").leave(&r.resource);
        let rel =
            pb::ReleaseRequest { session_id: session, target: Some(pb::release_request::Target::ReservationId(r.id)) };
        if let Err(status) = client.release(rel).await {
            error(format!("release: {}", describe(&status)));
        }
        while events.try_recv().is_ok() {}
        cycles += 1;
    }
    let _ = client.close_session(session).await;
    reader.abort();
    Ok((hist, cycles, errors, grants_at))
}

/// A status with the innermost cause of a transport error (which side reset, and why).
fn describe(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(status);
    while let Some(c) = cause {
        if c.source().is_none() {
            text.push_str(&format!(" ({c:?})"));
        }
        cause = c.source();
    }
    text
}
