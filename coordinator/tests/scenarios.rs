//! Data-driven scenario tests for the pure core.
//!
//! Each file under `tests/scenarios/` is a script in the language of
//! [`qm_coordinator::script`]; its transcript (each command, the response, the effects, and
//! the lock table and wait-for graph where the script says `show`) is compared with an
//! `insta` snapshot under `tests/snapshots/`. Read the scripts beside their snapshots to learn
//! the semantics; every bullet of the core's specification, and every rule of the scheduler, work items and
//! budgets, has a script named after it.

fn run(name: &str) -> String {
    let path = format!("{}/tests/scenarios/{name}.scn", env!("CARGO_MANIFEST_DIR"));
    let script = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    qm_coordinator::script::run(&script).unwrap_or_else(|e| panic!("{path}: {e}"))
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                insta::assert_snapshot!(stringify!($name), run(stringify!($name)));
            }
        )*

        #[test]
        fn every_scenario_file_is_listed() {
            let listed = [$(stringify!($name)),*];
            let dir = format!("{}/tests/scenarios", env!("CARGO_MANIFEST_DIR"));
            for entry in std::fs::read_dir(dir).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                if name == "README.md" {
                    continue;
                }
                let stem = name.strip_suffix(".scn").expect("only .scn files and this README");
                assert!(listed.contains(&stem), "scenario {stem} is not listed in scenarios!()");
            }
        }
    };
}

scenarios!(
    sessions,
    hierarchy,
    row_ranges,
    capacity,
    lifetime,
    fencing,
    acquire_try,
    acquire_wait,
    atomic_sets,
    queues,
    aging,
    backpressure,
    deadlock,
    preemption,
    inheritance,
    tick,
    snapshot,
    leader_change,
    invalid,
    dispatch,
    lost_worker,
    task_retries,
    blocked_agent,
    gates,
    budgets,
);
