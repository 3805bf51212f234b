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
//! crashed host's tasks are dropped in, so every run here is a child process of this test
//! binary (the ignored `child_run` entry point), as `qm sim cluster --seeds` runs them: a
//! seed that fails here fails the same way from its printed command.

use std::process::Command;

use qm_sim::cluster::{self, regressions, Options};

/// Simulated milliseconds of chaos per test run.
const TEST_CHAOS_MS: u64 = 10_000;

/// The environment variable handing a child its run: `SEED:NODES:CHAOS_MS[:FOCUS]`.
const CHILD_RUN: &str = "QM_SIM_CHILD_RUN";

/// What a child run printed: its result line
/// `trace=<hash> <ops> <faults> <sim_ms> <clean|violation:NAME>` and, after a violation, the
/// invariant's message, the last trace lines and the command that reproduces it.
struct ChildRun {
    line: String,
    stdout: String,
}

impl ChildRun {
    /// Fails the test, with the child's account, unless the run was clean and did work.
    fn assert_clean(&self, seed: u64) {
        let ops: u64 = self.line.split(' ').nth(1).and_then(|o| o.parse().ok()).unwrap_or(0);
        assert!(self.line.ends_with(" clean") && ops > 0, "seed {seed}: {}\n{}", self.line, self.stdout);
    }
}

/// Runs one simulation in a fresh process: `spec` is `SEED:NODES:CHAOS_MS[:FOCUS]`.
fn run_in_child(spec: &str) -> ChildRun {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args(["child_run", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_RUN, spec)
        .output()
        .expect("start a child test process");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child run {spec} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.find("trace=").map(|at| l[at..].to_string()))
        .unwrap_or_else(|| panic!("child run {spec} printed no result line:\n{stdout}"));
    ChildRun { line, stdout }
}

fn run_seed(seed: u64, nodes: u64) -> ChildRun {
    run_in_child(&format!("{seed}:{nodes}:{TEST_CHAOS_MS}"))
}

/// The child side of every test here: runs the simulation named in [`CHILD_RUN`] and prints
/// its result line (and, after a violation, how it broke). Ignored in a normal run; without
/// the variable it has nothing to do.
#[test]
#[ignore = "entry point for the child processes of the other tests"]
fn child_run() {
    let Ok(spec) = std::env::var(CHILD_RUN) else { return };
    let parts: Vec<&str> = spec.split(':').collect();
    let number = |i: usize| -> u64 { parts[i].parse().expect("SEED:NODES:CHAOS_MS[:FOCUS]") };
    let mut opts = Options::from_seed(number(0), number(1), number(2));
    opts.focus = parts.get(3).map(|f| f.parse().expect("a fault kind"));
    let r = cluster::run(&opts);
    let outcome = match &r.violation {
        None => "clean".to_string(),
        Some(v) => format!("violation:{}", v.invariant),
    };
    println!("trace={} {} {} {} {outcome}", r.trace_hash, r.ops, r.faults, r.sim_ms);
    if let Some(v) = &r.violation {
        println!("invariant {} violated at {}ms: {}", v.invariant, v.t_ms, v.message);
        println!("last trace lines:\n{}", r.trace_tail.join("\n"));
    }
    println!("reproduce with: {}", r.command());
}

fn seeds(range: std::ops::Range<u64>) {
    for seed in range {
        let run = run_seed(seed, 3);
        eprintln!("seed {seed}: {}", run.line);
        run.assert_clean(seed);
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
    let a = run_seed(7, 3);
    let b = run_seed(7, 3);
    a.assert_clean(7);
    assert_eq!(a.line, b.line, "seed 7 ran twice with different traces ({})", options_command(7));
    let c = run_seed(8, 3);
    assert_ne!(a.line.split(' ').next(), c.line.split(' ').next(), "seeds 7 and 8 gave the same trace");
}

fn options_command(seed: u64) -> String {
    cluster::options::command(seed, 3, TEST_CHAOS_MS, true, None)
}

#[test]
fn pinned_regression_seeds() {
    for r in regressions::SEEDS {
        let focus = r.focus.map(|f| format!(":{f}")).unwrap_or_default();
        run_in_child(&format!("{}:{}:{}{focus}", r.seed, r.nodes, r.chaos_ms)).assert_clean(r.seed);
    }
}
