//! Level A: contention studies. A scenario's workload runs against the real replicated core
//! (`qm_coordinator::state`) with modelled agents, in simulated time, and reports what teams
//! ask before they scale: throughput, waits per class, utilisation, contention, cost.

pub mod engine;
pub mod html;
pub mod report;
pub mod rng;
pub mod scenario;

pub use engine::run;
pub use report::{Comparison, Report};
pub use scenario::{load, Policies, Scenario, Variant};

/// Runs every variant on the same seed: the same arrivals and the same drawn work.
pub fn compare(sc: &Scenario, variants: &[Variant], seed: u64) -> Comparison {
    let runs = variants.iter().map(|v| run(sc, &v.name, &v.policies, seed)).collect();
    Comparison { scenario: sc.name.clone(), seed, runs }
}
