//! Seed → options: everything a run varies is drawn here from the seed, so one number
//! reproduces the whole run (`qm sim cluster --seed N`).

use super::rng::Rng;

/// Most coordinators a run may have.
pub const NODES_MAX: u64 = 5;
/// Simulated milliseconds of chaos when not asked otherwise.
pub const CHAOS_MS_DEFAULT: u64 = 20_000;
/// Most simulated milliseconds of chaos a run may ask for.
pub const CHAOS_MS_MAX: u64 = 600_000;

/// Percent of a focused nemesis's faults that are of the focused kind.
pub const FOCUS_PCT: u64 = 60;

/// Fault kinds the nemesis can be focused on, with the draw that selects each in its table.
pub const FOCUS_KINDS: &[(&str, u64)] = &[
    ("isolate", 0),
    ("oneway", 20),
    ("delay", 30),
    ("crash", 42),
    ("clock-jump", 62),
    ("clock-rate", 72),
    ("transfer", 82),
    ("worker-crash", 89),
    ("worker-isolate", 93),
    ("leader-blink", 96),
    ("leader-return", 98),
];

/// A fault kind the nemesis favours (`--focus`): [`FOCUS_PCT`]% of its faults are of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Focus {
    pub name: &'static str,
    pub draw: u64,
}

impl std::str::FromStr for Focus {
    type Err = String;

    fn from_str(s: &str) -> Result<Focus, String> {
        FOCUS_KINDS.iter().find(|(n, _)| *n == s).map(|&(name, draw)| Focus { name, draw }).ok_or_else(|| {
            let names: Vec<&str> = FOCUS_KINDS.iter().map(|(n, _)| *n).collect();
            format!("unknown fault kind {s:?}; one of: {}", names.join(", "))
        })
    }
}

/// The shape of one run.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub nodes: u64,
    pub clients: u64,
    /// Exclusive resources the clients fight over.
    pub resources: u64,
    /// Simulated milliseconds of workload under faults.
    pub chaos_ms: u64,
    /// After the heal: the window in which the cluster must elect, commit and serve every client.
    pub liveness_ms: u64,
    /// After the workload stops: the window in which every replica must reach the same state.
    pub converge_ms: u64,
    /// Whether the nemesis injects faults (off: a clean run, for the baseline).
    pub faults: bool,
    /// Gap between two faults, drawn in this range (ms).
    pub fault_gap_ms: (u64, u64),
    /// The coordinators' snapshot threshold: low, so outages end in snapshot installs.
    pub snapshot_logs: u64,
    /// Election timeout of each node (ms); each node's is fixed (see `node_config`).
    pub election_ms: Vec<u64>,
    /// Network latency range (ms).
    pub latency_ms: (u64, u64),
    pub session_ttl_ms: u64,
    /// Percent of client requests sent twice (a retry after a lost answer).
    pub duplicate_pct: u64,
    /// Keep every trace line (for `--trace`), not just the hash and the tail.
    pub keep_trace: bool,
    /// Workers running scripted agents.
    pub workers: u64,
    /// Percent of fresh votes the nemesis answers with a crash of the voter.
    pub vote_crash_pct: u64,
    /// The fault kind the nemesis favours, if any.
    pub focus: Option<Focus>,
}

/// The one-line command that reproduces a run.
pub fn command(seed: u64, nodes: u64, chaos_ms: u64, faults: bool, focus: Option<Focus>) -> String {
    let mut c = format!("qm sim cluster --seed {seed} --nodes {nodes}");
    if chaos_ms != CHAOS_MS_DEFAULT {
        c.push_str(&format!(" --chaos-ms {chaos_ms}"));
    }
    if !faults {
        c.push_str(" --no-faults");
    }
    if let Some(f) = focus {
        c.push_str(&format!(" --focus {}", f.name));
    }
    c
}

impl Options {
    /// The one-line command that reproduces this run.
    pub fn command(&self) -> String {
        command(self.seed, self.nodes, self.chaos_ms, self.faults, self.focus)
    }

    /// The options of `seed` with `nodes` coordinators and `chaos_ms` of chaos.
    pub fn from_seed(seed: u64, nodes: u64, chaos_ms: u64) -> Options {
        let mut rng = Rng::new(seed).fork(1);
        let nodes = nodes.clamp(1, NODES_MAX);
        let election_ms = (0..nodes).map(|_| rng.range(300, 700)).collect();
        let latency_hi = rng.range(2, 25);
        Options {
            seed,
            nodes,
            clients: rng.range(2, 5),
            resources: rng.range(2, 4),
            chaos_ms: chaos_ms.min(CHAOS_MS_MAX),
            liveness_ms: 40_000,
            converge_ms: 40_000,
            faults: true,
            fault_gap_ms: (rng.range(300, 1_000), rng.range(1_500, 4_000)),
            snapshot_logs: rng.range(40, 200),
            election_ms,
            latency_ms: (1, latency_hi),
            session_ttl_ms: rng.range(3_000, 8_000),
            duplicate_pct: rng.range(0, 15),
            keep_trace: false,
            workers: rng.range(1, 3),
            vote_crash_pct: rng.range(0, 40),
            focus: None,
        }
    }

    /// The simulated time after which a run is cut off (every phase at its longest).
    pub fn deadline_ms(&self) -> u64 {
        self.chaos_ms + self.liveness_ms + self.converge_ms + 1_000
    }
}
