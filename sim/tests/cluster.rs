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
//! A run is reproducible from its seed in a fresh process. Simulations sharing a process
//! draw on process-wide counters (tokio task ids, ractor actor ids) that change the order a
//! crashed host's tasks are dropped in, so the determinism test runs each pass as a child
//! process of this test binary (the ignored `child_run` entry point) and compares what
//! the children print.

use std::process::Command;

use qm_sim::cluster::{self, regressions, Options, Report};

/// Simulated milliseconds of chaos per test run.
const TEST_CHAOS_MS: u64 = 10_000;

/// The environment variable handing a child its run: `SEED:NODES:CHAOS_MS`.
const CHILD_RUN: &str = "QM_SIM_CHILD_RUN";

fn run_with(seed: u64, nodes: u64, chaos_ms: u64) -> Report {
    cluster::run(&Options::from_seed(seed, nodes, chaos_ms))
}

fn run(seed: u64, nodes: u64) -> Report {
    run_with(seed, nodes, TEST_CHAOS_MS)
}

/// Runs one seed in a fresh process and returns the line it printed:
/// `trace=<hash> <ops> <faults> <sim_ms> <clean|violation:NAME>` (the test harness may put
/// its own words before it on the same line).
fn run_in_child(seed: u64, nodes: u64) -> String {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args(["child_run", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_RUN, format!("{seed}:{nodes}:{TEST_CHAOS_MS}"))
        .output()
        .expect("start a child test process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child run of seed {seed} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.find("trace=").map(|at| l[at..].to_string()))
        .unwrap_or_else(|| panic!("child run of seed {seed} printed no result line:\n{stdout}"))
}

/// The child side of [`same_seed_same_trace`]: runs the seed named in [`CHILD_RUN`] and
/// prints its result line. Ignored in a normal run; without the variable it has nothing to do.
#[test]
#[ignore = "entry point for the determinism test's child processes"]
fn child_run() {
    let Ok(spec) = std::env::var(CHILD_RUN) else { return };
    let parts: Vec<u64> = spec.split(':').map(|p| p.parse().expect("SEED:NODES:CHAOS_MS")).collect();
    let r = run_with(parts[0], parts[1], parts[2]);
    let outcome = match &r.violation {
        None => "clean".to_string(),
        Some(v) => format!("violation:{}", v.invariant),
    };
    println!("trace={} {} {} {} {outcome}", r.trace_hash, r.ops, r.faults, r.sim_ms);
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
    let a = run_in_child(7, 3);
    let b = run_in_child(7, 3);
    assert!(a.ends_with(" clean"), "seed 7 broke an invariant: {a} ({})", options_command(7));
    assert_eq!(a, b, "seed 7 ran twice with different traces ({})", options_command(7));
    let c = run_in_child(8, 3);
    assert_ne!(a.split(' ').next(), c.split(' ').next(), "seeds 7 and 8 gave the same trace");
}

fn options_command(seed: u64) -> String {
    cluster::options::command(seed, 3, TEST_CHAOS_MS, true, None)
}

#[test]
fn pinned_regression_seeds() {
    for r in regressions::SEEDS {
        let mut opts = Options::from_seed(r.seed, r.nodes, r.chaos_ms);
        opts.focus = r.focus.map(|f| f.parse().expect("a pinned seed's focus is a fault kind"));
        assert_clean(&cluster::run(&opts));
    }
}
