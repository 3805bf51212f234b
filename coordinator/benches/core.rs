//! Benchmarks of the pure core (criterion).
//!
//! * `acquire_release/*`: one acquire + one release of an exclusive reservation,
//!   single-threaded, with 100,000 reservations held under the same root (so the root node
//!   counts 100k holders and every ancestor check sees them). `agent` is the steady state:
//!   1,000 agent sessions hold 100 reservations each and one agent acquires and releases
//!   another; `fresh_owner` is the worst case: every acquire comes from a name never seen
//!   before, in a session of 100,000 owners, so an owner record is created every time (and
//!   collected in bulk once 4,096 vacant ones wait).
//! * `deadlock_check/*`: the apply that adds a waiter to 10,000 waiters in long chains, both
//!   when it closes a 10k-long cycle (detect + choose victim + abort) and when it does not
//!   (the search walks the whole chain and finds nothing).
//! * `hot_queue/*`: one exclusive resource with 1,000 writers queued; the holder releases
//!   (the head is granted) and queues again at the tail.
//! * memory per held reservation: heap bytes and snapshot bytes, printed before the timings.
//!
//! Run: `cargo bench -p qm-coordinator --bench core`. The machine, commit and parameters are
//! printed first.

// A counting global allocator is the one place unsafe code is needed: it only forwards to the
// system allocator and counts bytes.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use criterion::{criterion_group, Criterion, Throughput};

use qm_coordinator::state::{Acquire, Command, Config, Item, Response, SessionId, State, Wait};
use qm_shared::{Mode, ResourcePath};

/// Counts live heap bytes so the memory figure is measured, not estimated.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const HELD: usize = 100_000;
const WAITERS: usize = 10_000;
const AGENTS: usize = 1_000;
const QUEUED: usize = 1_000;
const LEASE_MS: u64 = 600_000;

struct Driver {
    state: State,
    index: u64,
    session: SessionId,
}

impl Driver {
    fn new() -> Driver {
        let mut state = State::new(Config::default());
        let (r, _) = state.apply(
            1,
            0,
            Command::OpenSession { label: "bench".into(), ttl_ms: 300_000, principal: String::new() },
        );
        let Response::SessionOpened { session, .. } = r else { panic!("open: {r:?}") };
        Driver { state, index: 1, session }
    }

    /// Opens a session for one of 1,000 principals, as sessions are with access control on
    /// (the default), so the per-principal counts are on the measured path.
    fn open(&mut self) -> SessionId {
        self.index += 1;
        let (r, _) = self.state.apply(
            self.index,
            1,
            Command::OpenSession {
                label: "agent".into(),
                ttl_ms: 300_000,
                principal: format!("bench-{}", self.index % 1000),
            },
        );
        let Response::SessionOpened { session, .. } = r else { panic!("open: {r:?}") };
        session
    }

    fn acquire(&mut self, owner: &str, path: &ResourcePath, mode: Mode) -> Response {
        self.acquire_in(self.session, owner, path, mode)
    }

    fn acquire_in(&mut self, session: SessionId, owner: &str, path: &ResourcePath, mode: Mode) -> Response {
        self.index += 1;
        let cmd = Command::Acquire(Acquire {
            session,
            owner: owner.to_string(),
            items: vec![Item { path: path.clone(), mode, units: 1 }],
            wait: Wait::Wait { timeout_ms: None },
            priority: 500,
            lease_ms: LEASE_MS,
        });
        self.state.apply(self.index, 1, cmd).0
    }

    fn release(&mut self, reservation: qm_coordinator::state::ReservationId) {
        self.release_in(self.session, reservation)
    }

    fn release_in(&mut self, session: SessionId, reservation: qm_coordinator::state::ReservationId) {
        self.index += 1;
        let cmd = Command::Release { session, reservation };
        let (r, _) = self.state.apply(self.index, 1, cmd);
        assert!(matches!(r, Response::Released { .. }), "{r:?}");
    }

    /// `HELD` exclusive reservations on `pg:bench/table:tN`, one owner each.
    fn with_held(n: usize) -> Driver {
        let mut d = Driver::new();
        for i in 0..n {
            let path = ResourcePath::parse(&format!("pg:bench/table:t{i}")).unwrap();
            let r = d.acquire(&format!("holder-{i}"), &path, Mode::Exclusive);
            assert!(matches!(r, Response::Granted { .. }), "{r:?}");
        }
        d
    }

    /// `HELD` exclusive reservations on `pg:bench/table:tN`, held by `agents` agents, each in
    /// its own session. Returns the driver and the agents' sessions.
    fn with_agents(agents: usize) -> (Driver, Vec<SessionId>) {
        let mut d = Driver::new();
        let sessions: Vec<SessionId> = (0..agents).map(|_| d.open()).collect();
        for i in 0..HELD {
            let path = ResourcePath::parse(&format!("pg:bench/table:t{i}")).unwrap();
            let a = i % agents;
            let r = d.acquire_in(sessions[a], &format!("agent-{a}"), &path, Mode::Exclusive);
            assert!(matches!(r, Response::Granted { .. }), "{r:?}");
        }
        (d, sessions)
    }

    /// `chains` chains of `len` owners: owner k of a chain holds `c/k` and waits for `c/k+1`.
    /// The last owner of each chain holds its resource and does not wait.
    fn with_chains(chains: usize, len: usize) -> Driver {
        let mut d = Driver::new();
        let path = |c: usize, k: usize| ResourcePath::parse(&format!("chain:c{c}/link:l{k}")).unwrap();
        for c in 0..chains {
            for k in 0..len {
                d.acquire(&format!("o{c}-{k}"), &path(c, k), Mode::Exclusive);
            }
            for k in 0..len - 1 {
                let r = d.acquire(&format!("o{c}-{k}"), &path(c, k + 1), Mode::Exclusive);
                assert!(matches!(r, Response::Queued { .. }), "{r:?}");
            }
        }
        d
    }
}

fn print_context() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    eprintln!("machine: {cpu}, {cores} cores, {}", std::env::consts::ARCH);
    eprintln!("commit: {commit}");
    eprintln!("parameters: held={HELD} agents={AGENTS} waiters={WAITERS} queued={QUEUED} lease_ms={LEASE_MS}");
}

fn print_memory() {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let (d, _) = Driver::with_agents(AGENTS);
    let heap = (LIVE_BYTES.load(Ordering::Relaxed) - before) as f64 / HELD as f64;
    let snapshot = d.state.snapshot().len() as f64 / HELD as f64;
    eprintln!(
        "memory per held reservation: {heap:.0} bytes of heap, {snapshot:.0} bytes of snapshot \
         ({HELD} held by {AGENTS} agents, paths like pg:bench/table:t12345)"
    );
    drop(d);
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let d = Driver::with_held(HELD);
    let heap = (LIVE_BYTES.load(Ordering::Relaxed) - before) as f64 / HELD as f64;
    let snapshot = d.state.snapshot().len() as f64 / HELD as f64;
    eprintln!(
        "memory per held reservation: {heap:.0} bytes of heap, {snapshot:.0} bytes of snapshot \
         ({HELD} held by {HELD} owners in one session: an owner record per reservation)"
    );
}

fn acquire_release(c: &mut Criterion) {
    let mut group = c.benchmark_group("acquire_release");
    group.throughput(Throughput::Elements(1));
    let hot = ResourcePath::parse("pg:bench/table:hot").unwrap();
    let (mut d, sessions) = Driver::with_agents(AGENTS);
    group.bench_function(format!("agent/held={HELD}"), |b| {
        b.iter(|| {
            let Response::Granted { grants } = d.acquire_in(sessions[7], "agent-7", &hot, Mode::Exclusive) else {
                panic!("not granted")
            };
            d.release_in(sessions[7], grants[0].id);
        })
    });
    drop(d);
    let mut d = Driver::with_held(HELD);
    let mut n = 0u64;
    group.bench_function(format!("fresh_owner/held={HELD}"), |b| {
        b.iter(|| {
            n += 1;
            let owner = format!("worker-{n}");
            let Response::Granted { grants } = d.acquire(&owner, &hot, Mode::Exclusive) else { panic!("not granted") };
            d.release(grants[0].id);
        })
    });
    group.finish();
}

fn deadlock_check(c: &mut Criterion) {
    let mut group = c.benchmark_group("deadlock_check");
    // One chain of 10k waiters: o0-k holds link k and waits for link k+1.
    let mut d = Driver::with_chains(1, WAITERS + 1);
    let first = ResourcePath::parse("chain:c0/link:l0").unwrap();
    // The chain's last owner asks for the first link and closes a cycle through all 10k. It
    // has the least sunk work, so its own request is the victim: refused with DEADLOCK, and
    // the state is as before, ready for the next iteration.
    let last = format!("o0-{WAITERS}");
    group.bench_function(format!("close_cycle/waiters={WAITERS}"), |b| {
        b.iter(|| {
            let r = d.acquire(&last, &first, Mode::Exclusive);
            assert!(matches!(r, Response::Refused(_)), "{r:?}");
        })
    });
    // A newcomer waits on the chain's head: the search from it walks all 10k owners and finds
    // no cycle; it then withdraws (a cheap cancel) for the next iteration.
    group.bench_function(format!("no_cycle/waiters={WAITERS}"), |b| {
        b.iter(|| {
            let Response::Queued { request, .. } = d.acquire("newcomer", &first, Mode::Exclusive) else {
                panic!("not queued")
            };
            d.index += 1;
            let (r, _) = d.state.apply(d.index, 1, Command::Cancel { session: d.session, request });
            assert!(matches!(r, Response::Cancelled { .. }), "{r:?}");
        })
    });
    drop(d);
    // 100 chains of 100 waiters: one of them closes its cycle.
    let mut d = Driver::with_chains(100, 101);
    let head = ResourcePath::parse("chain:c42/link:l0").unwrap();
    group.bench_function("close_cycle/chains=100x100", |b| {
        b.iter(|| {
            let r = d.acquire("o42-100", &head, Mode::Exclusive);
            assert!(matches!(r, Response::Refused(_)), "{r:?}");
        })
    });
    group.finish();
}

/// A hot resource: one holder and 1,000 exclusive waiters. Each iteration the holder
/// releases (the head of the queue is granted) and queues again at the tail.
fn hot_queue(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot_queue");
    let mut d = Driver::new();
    let hot = ResourcePath::parse("pg:bench/table:hot").unwrap();
    let mut holder = {
        let Response::Granted { grants } = d.acquire("a0", &hot, Mode::Exclusive) else { panic!("not granted") };
        (String::from("a0"), grants[0].id)
    };
    for i in 1..=QUEUED {
        let r = d.acquire(&format!("a{i}"), &hot, Mode::Exclusive);
        assert!(matches!(r, Response::Queued { .. }), "{r:?}");
    }
    group.bench_function(format!("release_requeue/waiters={QUEUED}"), |b| {
        b.iter(|| {
            d.index += 1;
            let cmd = Command::Release { session: d.session, reservation: holder.1 };
            let (_, effects) = d.state.apply(d.index, 1, cmd);
            let next = effects
                .iter()
                .find_map(|e| match e {
                    qm_coordinator::state::Effect::Granted { grant, .. } => Some((grant.owner.to_string(), grant.id)),
                    _ => None,
                })
                .expect("the head of the queue is granted");
            let r = d.acquire(&holder.0, &hot, Mode::Exclusive);
            assert!(matches!(r, Response::Queued { .. }), "{r:?}");
            holder = next;
        })
    });
    group.finish();
}

criterion_group!(benches, acquire_release, deadlock_check, hot_queue);

fn main() {
    print_context();
    print_memory();
    benches();
    criterion::Criterion::default().configure_from_args().final_summary();
}
