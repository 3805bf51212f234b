//! `qm sim run|compare|cluster`: its arguments and handlers. `run` and `compare` are
//! contention studies of the replicated core with modelled agents (here); `cluster` runs the
//! real coordinator cluster under turmoil (`cluster.rs`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use qm_sim::study::{self, scenario, Variant};

use crate::{Failure, Output};

pub mod cluster;

#[derive(Subcommand, Debug)]
pub enum SimCommand {
    /// Run a scenario: its workload against the real replicated core with modelled agents,
    /// in simulated time. Reports throughput, waits per class, utilisation, contention,
    /// re-plans, starvation, budget events and cost.
    #[command(
        after_help = "Examples:\n  qm sim run sim/scenarios/standup-rush.toml\n  qm sim run sim/scenarios/standup-rush.toml --seed 7 -o json\n  qm sim run sim/scenarios/standup-rush.toml --report rush.html\n\nThe same scenario and seed give the same report (its state digest shows it). Scenario format: docs/simulator.md."
    )]
    Run(RunArgs),
    /// Run one workload under several policies side by side: the variants the scenario lists
    /// ([[variant]]), or the combinations of `--vary` settings.
    #[command(
        after_help = "Examples:\n  qm sim compare sim/scenarios/replan-under-contention.toml\n  qm sim compare sim/scenarios/standup-rush.toml --vary granularity=coarse,fine\n  qm sim compare S.toml --vary preemption=preempt,inherit,none --vary replan=on,off\n\nSettings: preemption (preempt|inherit|none), replan (on|off), replan_after (e.g. 2s), granularity (coarse|fine), fair_share_points (0..=1000), deadlock_detection (on|off), aging_step (1..=1000).\nEvery variant sees the same arrivals and the same drawn work."
    )]
    Compare(CompareArgs),
    /// Run the real coordinator cluster (openraft, the gRPC services, workers with agent
    /// actors) under turmoil: simulated network and time, a nemesis (partitions, loss,
    /// crashes, clock jumps, duplicated requests, leadership transfer, worker crashes, hung
    /// agents) and invariants checked every step; then heal and check progress.
    #[command(after_help = "Examples:
  qm sim cluster --seed 7
  qm sim cluster --seeds 500          # the release check
  qm sim cluster --seed 7 --trace t.log

A failure prints the invariant, the seed and the one-line command that reproduces it.
The same seed gives the same trace hash (builds use --cfg tokio_unstable, set in .cargo/config.toml).")]
    Cluster(cluster::ClusterArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The scenario file (TOML).
    pub scenario: PathBuf,
    /// Seed of every random draw (arrivals, durations, failures); default: the scenario's.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run one of the scenario's named variants instead of its base policies.
    #[arg(long)]
    pub variant: Option<String>,
    /// Also write an HTML report with plots (wait-time CDF per class, utilisation over time,
    /// contention heat map by resource).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The scenario file (TOML).
    pub scenario: PathBuf,
    /// Seed of every random draw; default: the scenario's
    #[arg(long)]
    pub seed: Option<u64>,
    /// A setting and the values to compare, `KEY=V1,V2,…`; repeat to combine settings.
    #[arg(long = "vary", value_name = "KEY=VALUES")]
    pub vary: Vec<String>,
    /// Also write an HTML report comparing the variants.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

fn load(path: &std::path::Path) -> Result<scenario::Scenario, Failure> {
    scenario::load(path).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        Failure::usage(format!("the scenario has {} error(s):\n  {}", lines.len(), lines.join("\n  ")))
    })
}

fn write_report(path: &std::path::Path, html: &str) -> Result<(), Failure> {
    std::fs::write(path, html).map_err(|e| Failure::error(format!("writing {}: {e}", path.display())))?;
    eprintln!("report written to {}", path.display());
    Ok(())
}

pub fn run(command: SimCommand, output: Output) -> Result<(), Failure> {
    if matches!(output, Output::Dot | Output::Csv) {
        return Err(Failure::usage("qm sim prints -o table or -o json (and --report FILE for HTML)"));
    }
    match command {
        SimCommand::Cluster(_) => Err(Failure::error("qm sim cluster runs from main")),
        SimCommand::Run(a) => {
            let sc = load(&a.scenario)?;
            let seed = a.seed.unwrap_or(sc.seed);
            let (name, policies) = match &a.variant {
                None => ("base".to_string(), sc.policies.clone()),
                Some(v) => match sc.variants.iter().find(|x| &x.name == v) {
                    Some(x) => (x.name.clone(), x.policies.clone()),
                    None => {
                        let names: Vec<&str> = sc.variants.iter().map(|x| x.name.as_str()).collect();
                        return Err(Failure::usage(format!(
                            "--variant: {v:?} is not a variant of {}; one of {names:?}",
                            sc.name
                        )));
                    }
                },
            };
            eprintln!(
                "simulating {} ({} agents, {:.1} h) with seed {seed}…",
                sc.name,
                sc.agents(),
                sc.duration_ms as f64 / 3.6e6
            );
            let report = study::run(&sc, &name, &policies, seed);
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report).expect("serializable")),
                _ => print!("{}", report.table()),
            }
            eprintln!("reproduce: qm sim run {} --seed {seed}", a.scenario.display());
            if let Some(path) = &a.report {
                write_report(path, &study::html::run_page(&sc, &report))?;
            }
            Ok(())
        }
        SimCommand::Compare(a) => {
            let sc = load(&a.scenario)?;
            let seed = a.seed.unwrap_or(sc.seed);
            let variants = if a.vary.is_empty() {
                if sc.variants.is_empty() {
                    return Err(Failure::usage(format!(
                        "{} lists no [[variant]]: give settings to compare with --vary KEY=V1,V2",
                        a.scenario.display()
                    )));
                }
                sc.variants.clone()
            } else {
                vary(&sc.policies, &a.vary)?
            };
            let mut runs = Vec::new();
            for (k, v) in variants.iter().enumerate() {
                eprintln!("[{}/{}] {} …", k + 1, variants.len(), v.name);
                let r = study::run(&sc, &v.name, &v.policies, seed);
                eprintln!("      {} work items done, {} wall", r.items_completed, study::report::hms(r.wall_ms));
                runs.push(r);
            }
            let cmp = study::Comparison { scenario: sc.name.clone(), seed, runs };
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&cmp).expect("serializable")),
                _ => print!("{}", cmp.table()),
            }
            let flags: String = a.vary.iter().map(|v| format!(" --vary {v}")).collect();
            eprintln!("reproduce: qm sim compare {} --seed {seed}{flags}", a.scenario.display());
            if let Some(path) = &a.report {
                write_report(path, &study::html::compare_page(&sc, &cmp))?;
            }
            Ok(())
        }
    }
}

/// The combinations of `--vary KEY=V1,V2` settings, as variants.
fn vary(base: &scenario::Policies, specs: &[String]) -> Result<Vec<Variant>, Failure> {
    let mut variants = vec![Variant { name: String::new(), policies: base.clone() }];
    for spec in specs {
        let Some((key, values)) = spec.split_once('=') else {
            return Err(Failure::usage(format!("--vary {spec:?}: write KEY=V1,V2 (e.g. replan=on,off)")));
        };
        let values: Vec<&str> = values.split(',').map(str::trim).filter(|v| !v.is_empty()).collect();
        if values.is_empty() {
            return Err(Failure::usage(format!("--vary {key}: give at least one value")));
        }
        let mut next = Vec::new();
        for v in &variants {
            for value in &values {
                let policies = scenario::apply_setting(&v.policies, key, value)
                    .map_err(|e| Failure::usage(format!("--vary {e}")))?;
                let name =
                    if v.name.is_empty() { format!("{key}={value}") } else { format!("{} {key}={value}", v.name) };
                next.push(Variant { name, policies });
            }
        }
        if next.len() > scenario::VARIANTS_MAX {
            return Err(Failure::usage(format!(
                "--vary: {} combinations is above the bound {}",
                next.len(),
                scenario::VARIANTS_MAX
            )));
        }
        variants = next;
    }
    Ok(variants)
}
