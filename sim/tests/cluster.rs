//! Level-B simulation tests: the real coordinator cluster under turmoil.

use qm_sim::cluster::{self, Options};

fn seed_from_env() -> Option<u64> {
    std::env::var("QM_SIM_SEED").ok().and_then(|s| s.parse().ok())
}

#[test]
fn dev_one_seed() {
    let Some(seed) = seed_from_env() else { return };
    let chaos: u64 = std::env::var("QM_SIM_CHAOS_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let mut opts = Options::from_seed(seed, 3, chaos);
    opts.faults = std::env::var("QM_SIM_NOFAULTS").is_err();
    let started = std::time::Instant::now();
    let r = cluster::run(&opts);
    eprintln!("{:?}", opts);
    for l in &r.trace_tail {
        eprintln!("{l}");
    }
    eprintln!(
        "seed={} hash={} ops={} grants={} writes={} rejected={} faults={:?} sim_ms={} applied={} wall={:?} violation={:?}",
        r.seed, r.trace_hash, r.ops, r.grants_acked, r.fenced_writes, r.fenced_rejected, r.faults_by_kind, r.sim_ms,
        r.applied_index, started.elapsed(), r.violation
    );
}
