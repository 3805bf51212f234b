//! `qm sim cluster`: the level-B simulator — the real coordinator cluster (openraft, gRPC
//! services, peer transport) under turmoil, with a workload, a nemesis and invariant
//! checkers. One line per seed on stdout (table or JSON), a summary, and for every failure
//! the one-line command that reproduces it.
//!
//! Exit codes: 0 every seed clean, 1 an invariant was violated, 2 bad arguments.

use std::io::Write;
use std::process::ExitCode;

use qm_sim::cluster::options::{Focus, CHAOS_MS_DEFAULT, CHAOS_MS_MAX};
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
    /// How many seeds to run: seed, seed+1, …, seed+seeds-1. With more than one, each runs in
    /// a process of its own, so every line is exactly what its reproduce command gives.
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
    /// Favour one fault kind: 60% of the nemesis's faults are of it. One of isolate, oneway,
    /// delay, crash, clock-jump, clock-rate, transfer, worker-crash, worker-isolate,
    /// leader-blink (a leader down for less than any election timeout), leader-return (a
    /// deposed leader catches up by snapshot and is elected again, then a quiet spell).
    #[arg(long, value_name = "KIND", conflicts_with = "no_faults")]
    pub focus: Option<Focus>,
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

/// Runs one seed in this process: its JSON line, and on a violation its account on stderr.
fn run_here(args: &ClusterArgs, seed: u64) -> serde_json::Value {
    let mut opts = Options::from_seed(seed, args.nodes, args.chaos_ms);
    opts.faults = !args.no_faults;
    opts.focus = args.focus;
    opts.keep_trace = args.trace.is_some();
    // A thread of its own: the simulator builds its own runtimes, which cannot nest in the
    // caller's, and its panic capture is per thread.
    let Ok(r) = std::thread::scope(|s| s.spawn(|| cluster::run(&opts)).join()) else {
        eprintln!("seed {seed}: the simulator itself panicked");
        let command = cluster::options::command(seed, args.nodes, args.chaos_ms, !args.no_faults, args.focus);
        eprintln!("reproduce with: {command}");
        return crashed(seed, args, "the simulator panicked".into());
    };
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
    }
    line_json(&r)
}

/// Runs one seed as `qm sim cluster --seed N -o json` in a child process (its stderr passes
/// through) and returns the line it printed; a child that dies is a failed seed.
fn run_child(args: &ClusterArgs, seed: u64) -> serde_json::Value {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return crashed(seed, args, format!("cannot find the qm binary to run the seed: {e}")),
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["sim", "cluster", "-o", "json", "--seed", &seed.to_string()])
        .args(["--nodes", &args.nodes.to_string(), "--chaos-ms", &args.chaos_ms.to_string()])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    if args.no_faults {
        cmd.arg("--no-faults");
    }
    if let Some(f) = args.focus {
        cmd.args(["--focus", f.name]);
    }
    if let Some(path) = &args.trace {
        cmd.arg("--trace").arg(path);
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => return crashed(seed, args, format!("cannot start the seed's process: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("seed").is_some());
    match line {
        Some(line) => line,
        None => crashed(seed, args, format!("the seed's process died ({}) before reporting", out.status)),
    }
}

/// The line of a seed whose run ended without a report.
fn crashed(seed: u64, args: &ClusterArgs, why: String) -> serde_json::Value {
    json!({
        "seed": seed,
        "nodes": args.nodes,
        "result": "crashed",
        "violation": {"invariant": "no-panic", "message": why, "t_ms": null},
        "reproduce": cluster::options::command(seed, args.nodes, args.chaos_ms, !args.no_faults, args.focus),
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
    let mut failed: Vec<(u64, String)> = Vec::new();
    if matches!(args.output, Output::Table) {
        let _ = writeln!(
            out,
            "{:>10}  {:<16}  {:>5}  {:>6}  {:>6}  result",
            "seed", "trace hash", "ops", "faults", "sim s"
        );
    }
    // One seed runs here; several run each in a process of its own, so that every line is
    // exactly what its reproduce command gives (runs sharing a process share its task and
    // actor id counters, which order a crashed host's drops), and a run that takes the
    // process down is reported like any other failure.
    let alone = args.seeds == 1;
    for seed in args.seed..args.seed + args.seeds {
        let line = if alone { run_here(args, seed) } else { run_child(args, seed) };
        match args.output {
            Output::Json => {
                let _ = writeln!(out, "{line}");
            }
            _ => {
                let result = match &line["violation"] {
                    serde_json::Value::Null => "ok".to_string(),
                    v => format!(
                        "VIOLATED {} at {}ms: {}",
                        v["invariant"].as_str().unwrap_or("?"),
                        v["t_ms"],
                        v["message"].as_str().unwrap_or("")
                    ),
                };
                let _ = writeln!(
                    out,
                    "{:>10}  {:<16}  {:>5}  {:>6}  {:>6.1}  {result}",
                    seed,
                    line["trace_hash"].as_str().unwrap_or("-"),
                    line["ops"].as_u64().unwrap_or(0),
                    line["faults"].as_u64().unwrap_or(0),
                    line["sim_ms"].as_f64().unwrap_or(0.0) / 1000.0
                );
            }
        }
        let _ = out.flush();
        if line["result"] != "ok" {
            failed.push((seed, line["reproduce"].as_str().unwrap_or_default().to_string()));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    match args.output {
        Output::Json => {
            let summary = json!({
                "summary": {
                    "seeds": args.seeds,
                    "failed": failed.iter().map(|(seed, cmd)| json!({"seed": seed, "reproduce": cmd})).collect::<Vec<_>>(),
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
            for (_, cmd) in &failed {
                let _ = writeln!(out, "reproduce: {cmd}");
            }
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
