//! `qm sim cluster`: the level-B simulator — the real coordinator cluster (openraft, gRPC
//! services, peer transport) under turmoil, with a workload, a nemesis and invariant
//! checkers. One line per seed on stdout (table or JSON), a summary, and for every failure
//! the one-line command that reproduces it.
//!
//! Exit codes: 0 every seed clean, 1 an invariant was violated, 2 bad arguments.

use std::io::Write;
use std::process::ExitCode;

use qm_sim::cluster::options::{CHAOS_MS_DEFAULT, CHAOS_MS_MAX};
use qm_sim::cluster::{self, Options, Report};
use serde_json::json;

use crate::Output;

/// Most seeds one invocation runs.
pub const SEEDS_MAX: u64 = 100_000;

/// Run the real coordinator cluster under simulated network, time and faults.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// First seed (every random choice of a run derives from it).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How many seeds to run: seed, seed+1, …, seed+seeds-1.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Coordinators in the cluster: 3 or 5.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Simulated milliseconds of workload under faults, before the heal.
    #[arg(long = "chaos-ms", alias = "duration", default_value_t = CHAOS_MS_DEFAULT)]
    pub chaos_ms: u64,
    /// Run the workload without faults (a baseline).
    #[arg(long = "no-faults")]
    pub no_faults: bool,
    /// Write every trace line of the (last) run to this file.
    #[arg(long)]
    pub trace: Option<std::path::PathBuf>,
    /// Output format, table or json. Not a flag of its own: `qm` has a global `-o/--json`,
    /// and the caller copies it here.
    #[arg(skip = Output::Table)]
    pub output: Output,
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("qm sim cluster: {msg}");
    ExitCode::from(2)
}

fn line_json(r: &Report) -> serde_json::Value {
    json!({
        "seed": r.seed,
        "nodes": r.nodes,
        "trace_hash": r.trace_hash,
        "ops": r.ops,
        "grants_acked": r.grants_acked,
        "fenced_writes": r.fenced_writes,
        "fenced_rejected": r.fenced_rejected,
        "faults": r.faults,
        "faults_by_kind": r.faults_by_kind,
        "sim_ms": r.sim_ms,
        "applied_index": r.applied_index,
        "snapshot_installs": r.snapshot_installs,
        "result": if r.violation.is_some() { "violation" } else { "ok" },
        "violation": r.violation.as_ref().map(|v| json!({"invariant": v.invariant, "message": v.message, "t_ms": v.t_ms})),
        "reproduce": r.command(),
    })
}

/// Runs the seeds and prints what happened; see the module docs for the exit codes.
pub fn run(args: &ClusterArgs) -> ExitCode {
    if args.nodes != 3 && args.nodes != 5 {
        return usage(&format!("--nodes must be 3 or 5 (got {})", args.nodes));
    }
    if args.seeds == 0 || args.seeds > SEEDS_MAX {
        return usage(&format!("--seeds must be between 1 and {SEEDS_MAX} (got {})", args.seeds));
    }
    if args.chaos_ms == 0 || args.chaos_ms > CHAOS_MS_MAX {
        return usage(&format!("--chaos-ms must be between 1 and {CHAOS_MS_MAX} (got {})", args.chaos_ms));
    }
    if !matches!(args.output, Output::Table | Output::Json) {
        return usage("-o must be table or json");
    }
    if args.seed.checked_add(args.seeds).is_none() {
        return usage("--seed plus --seeds overflows");
    }
    if !cluster::deterministic() {
        eprintln!("qm sim cluster: warning: built without --cfg tokio_unstable; a seed may not reproduce its run");
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let started = std::time::Instant::now();
    let mut failed = Vec::new();
    if matches!(args.output, Output::Table) {
        let _ = writeln!(
            out,
            "{:>10}  {:<16}  {:>5}  {:>6}  {:>6}  result",
            "seed", "trace hash", "ops", "faults", "sim s"
        );
    }
    for seed in args.seed..args.seed + args.seeds {
        let mut opts = Options::from_seed(seed, args.nodes, args.chaos_ms);
        opts.faults = !args.no_faults;
        opts.keep_trace = args.trace.is_some();
        // A thread of its own: the simulator builds its own runtimes, which cannot nest in
        // the caller's, and its panic capture is per thread.
        let r = match std::thread::scope(|s| s.spawn(|| cluster::run(&opts)).join()) {
            Ok(r) => r,
            Err(_) => {
                eprintln!("seed {seed}: the simulator itself panicked");
                eprintln!("reproduce with: qm sim cluster --seed {seed} --nodes {}", args.nodes);
                return ExitCode::from(1);
            }
        };
        match args.output {
            Output::Json => {
                let _ = writeln!(out, "{}", line_json(&r));
            }
            _ => {
                let result = match &r.violation {
                    None => "ok".to_string(),
                    Some(v) => format!("VIOLATED {} at {}ms: {}", v.invariant, v.t_ms, v.message),
                };
                let _ = writeln!(
                    out,
                    "{:>10}  {:<16}  {:>5}  {:>6}  {:>6.1}  {result}",
                    r.seed,
                    r.trace_hash,
                    r.ops,
                    r.faults,
                    r.sim_ms as f64 / 1000.0
                );
            }
        }
        let _ = out.flush();
        if let (Some(path), Some(all)) = (&args.trace, &r.trace_all) {
            if let Err(e) = std::fs::write(path, all.join("\n") + "\n") {
                eprintln!("qm sim cluster: writing the trace to {}: {e}", path.display());
            }
        }
        if let Some(v) = &r.violation {
            eprintln!("seed {seed}: invariant {} violated at {}ms: {}", v.invariant, v.t_ms, v.message);
            eprintln!("last trace lines:");
            for l in &r.trace_tail {
                eprintln!("  {l}");
            }
            eprintln!("reproduce with: {}", r.command());
            failed.push(r);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    match args.output {
        Output::Json => {
            let summary = json!({
                "summary": {
                    "seeds": args.seeds,
                    "failed": failed.iter().map(|r| json!({"seed": r.seed, "reproduce": r.command()})).collect::<Vec<_>>(),
                    "wall_s": secs,
                }
            });
            let _ = writeln!(out, "{summary}");
        }
        _ => {
            let _ = writeln!(
                out,
                "{} seeds, {} clean, {} failed ({secs:.1}s)",
                args.seeds,
                args.seeds - failed.len() as u64,
                failed.len()
            );
            for r in &failed {
                let _ = writeln!(out, "reproduce: {}", r.command());
            }
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
