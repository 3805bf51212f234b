//! Level-B simulation tests: the real coordinator cluster (openraft, gRPC services, peer
//! transport) under turmoil, with the workload, the nemesis and every invariant.
//!
//! * 20 seeds with faults, in four groups (cargo runs the groups in parallel);
//! * determinism: one seed run twice gives the same trace hash;
//! * every pinned regression seed (`qm_sim::cluster::regressions::SEEDS`).
//!
//! A failure names the seed, the broken invariant and the command that reproduces it.
//! Runs use `TEST_CHAOS_MS` of chaos (shorter than the CLI's default) to keep the suite fast.
//!
//! A run is reproducible from its seed when it has the process to itself: simulations
//! running at once on other threads share process-wide counters (tokio task ids, ractor
//! actor ids) that change the order a crashed host's tasks are dropped in. The determinism
//! tests therefore take [`EXCLUSIVE`] for writing; every other test takes it for reading.

use std::sync::RwLock;

use qm_sim::cluster::{self, regressions, Options, Report};

/// Simulated milliseconds of chaos per test run.
const TEST_CHAOS_MS: u64 = 10_000;

/// Held for writing by the determinism tests, for reading by every other run.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

fn run_with(seed: u64, nodes: u64, chaos_ms: u64) -> Report {
    cluster::run(&Options::from_seed(seed, nodes, chaos_ms))
}

fn run(seed: u64, nodes: u64) -> Report {
    let _shared = EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner());
    run_with(seed, nodes, TEST_CHAOS_MS)
}

fn run_alone(seed: u64, nodes: u64) -> Report {
    let _alone = EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner());
    run_with(seed, nodes, TEST_CHAOS_MS)
}

fn assert_clean(r: &Report) {
    if let Some(v) = &r.violation {
        let tail: Vec<&str> = r.trace_tail.iter().map(String::as_str).collect();
        panic!(
            "seed {}: invariant {} violated at {}ms: {}\nlast trace lines:\n{}\nreproduce with: {}",
            r.seed,
            v.invariant,
            v.t_ms,
            v.message,
            tail.join("\n"),
            r.command()
        );
    }
    assert!(r.ops > 0, "seed {}: the workload did nothing ({})", r.seed, r.command());
}

fn seeds(range: std::ops::Range<u64>) {
    for seed in range {
        let r = run(seed, 3);
        eprintln!("seed {seed}: hash {} ops {} faults {} sim {}ms", r.trace_hash, r.ops, r.faults, r.sim_ms);
        assert_clean(&r);
    }
}

#[test]
fn seeds_1_to_5() {
    seeds(1..6);
}

#[test]
fn seeds_6_to_10() {
    seeds(6..11);
}

#[test]
fn seeds_11_to_15() {
    seeds(11..16);
}

#[test]
fn seeds_16_to_20() {
    seeds(16..21);
}

#[test]
fn same_seed_same_trace() {
    assert!(
        cluster::deterministic(),
        "qm-sim was built without --cfg tokio_unstable (see .cargo/config.toml): runs are not reproducible"
    );
    let a = run_alone(7, 3);
    let b = run_alone(7, 3);
    assert_clean(&a);
    assert_eq!(a.trace_hash, b.trace_hash, "seed 7 ran twice with different traces ({})", a.command());
    assert_eq!((a.ops, a.faults, a.sim_ms), (b.ops, b.faults, b.sim_ms));
    let c = run(8, 3);
    assert_ne!(a.trace_hash, c.trace_hash, "seeds 7 and 8 gave the same trace");
}

#[test]
fn pinned_regression_seeds() {
    for &(seed, nodes, chaos_ms) in regressions::SEEDS {
        let _shared = EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner());
        assert_clean(&run_with(seed, nodes, chaos_ms));
    }
}
