//! `qm`, the one Quartermaster binary.
//!
//! Commands: `dev`, `coordinator run`, `cluster …`, `reserve …`, `graph`, `resource`, `task …`,
//! `worker …`, `job …`, `gate …`, `budget …`, `cost …`, `workflow …`, `project …`,
//! `scheduler …`, `agent …`, `config show`, `bench reserve`, `script …`. Conventions every command keeps: noun–verb subcommands, `-o table|json` (or `--json`), stable JSON on
//! stdout, human text on stderr, exit codes 0 ok / 1 error / 2 usage or bad input / 3
//! conflict or not found.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc: the replicated state is many small maps and strings, and an apply runs about a
/// quarter faster than on the system allocator (`cargo bench -p qm-coordinator --bench
/// scheduler`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Demo script `qm dev` runs: three agents, a staging database and a GPU box.
const DEMO: &str = include_str!("demo.scn");

/// Largest script file `qm script run` reads.
const SCRIPT_LEN_MAX_BYTES: u64 = 16 * 1024 * 1024;

mod agent;
mod bench;
mod config;
mod coordinator;
mod dev;
mod job;
mod reserve;
mod sim;
mod sim_cluster;
mod task;
mod workflow;

use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "qm",
    version,
    about = "Quartermaster: reservations, queues and deadlock handling for pools of AI agents",
    long_about = "Quartermaster coordinates pools of AI software-engineering agents the way a \
                  database lock manager coordinates transactions: agents reserve shared \
                  resources (databases down to row ranges, GPU slots, rate-limited APIs) and get \
                  a lease with a fencing token, a place in a fair queue, or a refusal that names \
                  who holds what.\n\nStart with `qm dev` (a single-node coordinator on \
                  127.0.0.1:7070 with a demo), then try `qm reserve acquire pg:staging --mode \
                  exclusive` in another terminal.",
    after_help = "Configuration: a TOML file (--config or QM_CONFIG), QM_* environment variables \
                  and flags, flags winning; `qm config show` prints the effective values.\n\
                  Exit codes: 0 ok, 1 error, 2 usage or bad input, 3 conflict or not found."
)]
struct Cli {
    /// Output format: human-readable text, stable JSON on stdout, DOT (qm graph only) or CSV
    /// (qm cost report only).
    #[arg(short = 'o', long = "output", value_enum, global = true, default_value_t = Output::Table)]
    output: Output,
    /// Shorthand for `-o json`.
    #[arg(long, global = true)]
    json: bool,
    /// Coordinators to talk to, comma-separated (host:port or http://host:port); any node
    /// works, leader hints are followed. [env: QM_ENDPOINT] [default: 127.0.0.1:7070]
    #[arg(long, global = true)]
    endpoint: Option<String>,
    /// TOML config file. [env: QM_CONFIG]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Dot,
    /// CSV (qm cost report only).
    Csv,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a single-node coordinator on an embedded store (gRPC 127.0.0.1:7070, admin HTTP
    /// 127.0.0.1:7080), play a short demo against it over gRPC, and keep serving until Ctrl-C.
    #[command(
        after_help = "Then, in another terminal:\n  qm reserve acquire pg:staging/table:orders --mode exclusive\n  qm reserve list\n  qm graph\n  curl -s 127.0.0.1:7080/metrics"
    )]
    Dev(dev::DevArgs),
    /// Coordinator processes.
    Coordinator {
        #[command(subcommand)]
        command: CoordinatorCommand,
    },
    /// Cluster status and membership.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Reservations: acquire, release, extend, list, watch, run a command under a lease.
    Reserve {
        #[command(subcommand)]
        command: ReserveCommand,
    },
    /// The wait-for graph: who waits for whom, on what (-o table|json|dot).
    Graph {
        /// Only edges on resources at or below this path.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Resource declarations: capacity and priority-inversion policy.
    Resource {
        #[command(subcommand)]
        command: ResourceCommand,
    },
    /// Tasks: units of agent work (a role, resources with modes, an executor payload).
    Task {
        #[command(subcommand)]
        command: TaskCommand,
    },
    /// Worker nodes that host agent slots and run tasks.
    Worker {
        #[command(subcommand)]
        command: WorkerCommand,
    },
    /// Work items: tickets that flow through a workflow's passes, gates and budgets.
    #[command(
        after_help = "Examples:\n  qm project apply --demo\n  qm job submit --title 'Add CSV export' --class feature --team platform --project demo --workflow new-feature --wait\n  qm job show j1\n  qm gate approve j1 design"
    )]
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Decide a pass waiting for a human: a human gate, or a spend approval at a budget's
    /// `at` threshold.
    Gate {
        #[command(subcommand)]
        command: GateCommand,
    },
    /// Budgets at org, team, project and work-item scope, enforced at dispatch.
    #[command(after_help = "Thresholds: approaching (80%): low-priority work dispatches only when nothing \
                  higher waits; at (95%): low-priority work pauses and high-cost dispatches need \
                  `qm gate approve`; over: everything in scope pauses. A dispatch whose forecast \
                  would cross the limit waits. Raising a budget or a period rollover resumes work.")]
    Budget {
        #[command(subcommand)]
        command: BudgetCommand,
    },
    /// The cost ledger: every attempt's model, provider, tokens, money, wall time, agent,
    /// worker and outcome.
    Cost {
        #[command(subcommand)]
        command: CostCommand,
    },
    /// Workflows: DAGs of passes as TOML files (five are built in).
    Workflow {
        #[command(subcommand)]
        command: WorkflowCommand,
    },
    /// Projects: the resources, providers and prices a team works against.
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
    /// The scheduler's replicated tunables: aging, fair share, budget thresholds.
    Scheduler {
        #[command(subcommand)]
        command: SchedulerCommand,
    },
    /// Agent specs: markdown with YAML front matter (a superset of .claude/agents files).
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// The effective configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Load generators that report throughput and latency beside a named peer's figures.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// The simulator: contention studies of the replicated core with modelled agents.
    Sim {
        #[command(subcommand)]
        command: sim::SimCommand,
    },
    /// Scripts against the replicated core (no server needed).
    Script {
        #[command(subcommand)]
        command: ScriptCommand,
    },
}

#[derive(Subcommand, Debug)]
enum JobCommand {
    /// Start a work item on a workflow (from flags or a file)
    Submit(job::SubmitArgs),
    /// Where a work item stands: passes, gate results, what it waits for and why, its cost
    Show { id: String },
    /// Work items, newest first
    List {
        /// running, succeeded, failed or cancelled
        #[arg(long, default_value = "")]
        status: String,
        #[arg(long, default_value = "")]
        team: String,
    },
    /// Stop a running work item (running passes are told to stop)
    Cancel { id: String },
    /// Run a failed or cancelled work item again from its unfinished passes
    Retry { id: String },
}

#[derive(Subcommand, Debug)]
enum GateCommand {
    /// Pass the gate (or approve the spend) of PASS of work item ID
    Approve {
        id: String,
        pass: String,
        #[arg(long, default_value = "")]
        note: String,
        /// Who decides (default: $USER)
        #[arg(long)]
        by: Option<String>,
    },
    /// Fail the gate (its on_fail applies) or refuse the spend (the work item fails)
    Reject {
        id: String,
        pass: String,
        #[arg(long, default_value = "")]
        note: String,
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum BudgetCommand {
    /// Set a budget: SCOPE (org, team, project, work-item), NAME (`org` for the org scope,
    /// `j7` for a work item) and LIMIT in dollars; 0 removes it
    Set {
        /// org, team, project or work-item
        scope: String,
        /// The team, project or work item (j7); `org` for the org scope
        name: String,
        /// Dollars, e.g. 250 or 12.50
        limit: String,
        /// day, week, month or total
        #[arg(long, default_value = "month")]
        period: String,
    },
    /// Every budget with its spending this period
    Show,
}

#[derive(Subcommand, Debug)]
enum CostCommand {
    /// Roll the ledger up (-o table|json|csv; csv lists the entries themselves)
    Report {
        #[arg(long, value_enum, default_value_t = job::By::WorkItem)]
        by: job::By,
        /// A duration back from now (30m, 24h, 7d) or epoch ms
        #[arg(long)]
        since: Option<String>,
    },
    /// Forecast one run of a workflow (built-in name or file) from the ledger's history
    Forecast { workflow: String },
}

#[derive(Subcommand, Debug)]
enum WorkflowCommand {
    /// The built-in workflows
    List,
    /// A workflow's passes in order (a built-in name or a file)
    Show { workflow: String },
    /// Check workflow files (cycles, unknown roles, unknown resources with --project); the
    /// built-ins when none are given
    Validate {
        paths: Vec<PathBuf>,
        /// Check resources against this project file
        #[arg(long)]
        project: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ProjectCommand {
    /// Register or update a project on the coordinators (declares its resources and its
    /// providers' concurrency as counted resources api:<provider>)
    Apply {
        file: Option<PathBuf>,
        /// The demo project (team platform)
        #[arg(long, conflicts_with = "file")]
        demo: bool,
    },
    /// Check a project file
    Validate { file: PathBuf },
}

#[derive(Subcommand, Debug)]
enum SchedulerCommand {
    /// The current tunables
    Show,
    /// Change tunables (only the flags given)
    Set(job::SchedulerArgs),
}

#[derive(Subcommand, Debug)]
enum CoordinatorCommand {
    /// Run a coordinator in the foreground until SIGINT/SIGTERM.
    #[command(after_help = "A three-node cluster on one machine:\n  \
        qm coordinator run --id 1 --listen 127.0.0.1:7071 --admin-listen 127.0.0.1:7181 --data-dir d1 --peers 1=127.0.0.1:7071,2=127.0.0.1:7072,3=127.0.0.1:7073\n  \
        (same for ids 2 and 3 with their own ports and directories)\n\
        The node with the lowest id forms the cluster the first time; afterwards each node \
        restarts from its data directory.")]
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Raft node id (1 or more). [config: node.id]
    #[arg(long)]
    id: Option<u64>,
    /// gRPC listen address. [config: node.listen]
    #[arg(long)]
    listen: Option<String>,
    /// Admin HTTP listen address; empty disables it. [config: node.admin_listen]
    #[arg(long)]
    admin_listen: Option<String>,
    /// Address others reach this node at. [config: node.advertise]
    #[arg(long)]
    advertise: Option<String>,
    /// Data directory (sled). [config: node.data_dir]
    #[arg(long)]
    data_dir: Option<String>,
    /// Initial voters, id=address,... [config: node.peers]
    #[arg(long)]
    peers: Option<String>,
    /// Start empty and wait to be added with `qm cluster add`.
    #[arg(long)]
    join: bool,
    /// Period of the leader's Tick in ms. [config: raft.tick_ms]
    #[arg(long)]
    tick_ms: Option<String>,
    /// Snapshot every this many log entries. [config: raft.snapshot_logs]
    #[arg(long)]
    snapshot_logs: Option<String>,
}

impl RunArgs {
    fn flags(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("node.id", self.id.map(|i| i.to_string())),
            ("node.listen", self.listen.clone()),
            ("node.admin_listen", self.admin_listen.clone()),
            ("node.advertise", self.advertise.clone()),
            ("node.data_dir", self.data_dir.clone()),
            ("node.peers", self.peers.clone()),
            ("raft.tick_ms", self.tick_ms.clone()),
            ("raft.snapshot_logs", self.snapshot_logs.clone()),
        ]
    }
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Term, leader, applied index and members with their roles.
    Status,
    /// Add a node: as a learner, caught up, then promoted to voter (unless --learner).
    Add {
        /// Node id of the new coordinator.
        id: u64,
        /// Its gRPC address.
        address: String,
        /// Leave it a non-voting learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node (voter or learner).
    Remove {
        /// Node id to remove.
        id: u64,
    },
    /// Hand leadership to another voter (the most up-to-date one unless --to).
    TransferLeader {
        /// Node id of the voter to hand leadership to
        #[arg(long)]
        to: Option<u64>,
    },
    /// Build a snapshot now on the answering node and compact its log.
    Snapshot,
}

#[derive(clap::Args, Debug, Clone)]
struct AcquireFlags {
    /// Access mode.
    #[arg(long, value_parser = ["shared", "exclusive"], default_value = "exclusive")]
    mode: String,
    /// Queue until granted instead of failing fast.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long in the queue (ms).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Lease length in ms (1000..=3600000; 0: the server default of 5 minutes).
    #[arg(long, default_value_t = 0)]
    lease_ms: u64,
    /// Priority 0..=1000 (higher wins; 0: the default 500).
    #[arg(long, default_value_t = 0)]
    priority: u32,
    /// Owner label shown to others. [default: $USER@qm]
    #[arg(long)]
    owner: Option<String>,
    /// Existing session to acquire under; otherwise a new session is opened.
    #[arg(long)]
    session: Option<u64>,
    /// TTL of the session opened for this acquire (1000..=300000 ms). The reservation lives
    /// while the session does: it is released when the session expires.
    #[arg(long, default_value_t = 300_000)]
    session_ttl_ms: u64,
}

impl AcquireFlags {
    fn args(&self, resources: Vec<String>) -> reserve::AcquireArgs {
        reserve::AcquireArgs {
            resources,
            mode: if self.mode == "shared" { pb::Mode::Shared } else { pb::Mode::Exclusive },
            wait: self.wait,
            timeout_ms: self.timeout_ms,
            lease_ms: self.lease_ms,
            priority: self.priority,
            owner: self
                .owner
                .clone()
                .unwrap_or_else(|| format!("{}@qm", std::env::var("USER").unwrap_or_else(|_| "cli".into()))),
            session: self.session,
            session_ttl_ms: self.session_ttl_ms,
        }
    }
}

#[derive(Subcommand, Debug)]
enum ReserveCommand {
    /// Acquire one resource or an atomic set. Prints the reservation and fencing token;
    /// a refusal exits 3 and names the holders.
    #[command(
        after_help = "Examples:\n  qm reserve acquire pg:staging/table:orders --mode exclusive\n  qm reserve acquire 'pg:staging/table:orders/rows:[0,1000)' --mode shared --wait --timeout-ms 5000\n  qm reserve acquire gpu:box-1 api:anthropic --mode exclusive -o json"
    )]
    Acquire {
        /// Resource paths, granted all-or-nothing.
        #[arg(required = true)]
        resources: Vec<String>,
        #[command(flatten)]
        flags: AcquireFlags,
    },
    /// Release a reservation (or cancel a queued request with --request).
    Release {
        /// Reservation id.
        #[arg(required_unless_present = "request")]
        id: Option<u64>,
        /// Cancel this pending request instead.
        #[arg(long)]
        request: Option<u64>,
        /// Session that owns it.
        #[arg(long)]
        session: u64,
    },
    /// Renew a reservation's lease.
    Extend {
        /// Reservation id.
        id: u64,
        #[arg(long)]
        session: u64,
        /// New lease from now, ms (0: the default 5 minutes).
        #[arg(long, default_value_t = 0)]
        lease_ms: u64,
    },
    /// List reservations (and queued requests with --pending).
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long)]
        session: Option<u64>,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        pending: bool,
        #[arg(long, default_value_t = 0)]
        limit: u32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Stream lock-table events (one line each; -o json for JSON lines).
    Watch {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long)]
        session: Option<u64>,
        #[arg(long)]
        owner: Option<String>,
        /// Replay retained events from this log index first.
        #[arg(long, default_value_t = 0)]
        from_index: u64,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Run a command while holding a resource, like flock(1): acquire (waiting), export
    /// QM_FENCING_TOKEN and QM_RESERVATION_ID, keep the lease alive, release when the command
    /// exits, and exit with its code.
    #[command(after_help = "Example:\n  qm reserve run pg:staging --mode exclusive -- ./migrate.sh")]
    Run {
        resource: String,
        #[command(flatten)]
        flags: AcquireFlags,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ResourceCommand {
    /// Declare (or redeclare) a resource.
    #[command(after_help = "Examples:\n  \
        qm resource declare pg:staging --policy preempt --grace-ms 5000\n  \
        qm resource declare gpu:box-7 --capacity 2\n  \
        qm resource declare api:anthropic --capacity 20 --policy inherit")]
    Declare {
        /// Resource path
        path: String,
        /// Units of a counted resource (1..=1000000); omit for a plain resource
        #[arg(long)]
        capacity: Option<u32>,
        /// What happens to a holder blocking a far higher priority waiter: none (wait),
        /// preempt (checkpoint and release within the grace, then revoke) or inherit
        #[arg(long, default_value = "none", value_parser = ["none", "preempt", "inherit"])]
        policy: String,
        /// Preemption grace in ms (100..=600000)
        #[arg(long, default_value_t = 10_000)]
        grace_ms: u64,
    },
}

#[derive(Subcommand, Debug)]
enum TaskCommand {
    /// Queue a task for an agent of its role.
    #[command(after_help = "Examples:\n  \
        qm task submit --role implementer --resource pg:staging --scripted-ms 3000 --wait\n  \
        qm task submit --role verifier --resource pg:staging:shared --cmd 'make test' --priority 800\n  \
        qm task submit --role implementer --payload '{\"executor\":\"scripted\",\"duration_ms\":5000,\"steps\":20}'\n  \
        qm task submit --role implementer --payload '{\"executor\":\"llm\",\"api\":\"openai\",\"base_url\":\"http://127.0.0.1:8000/v1\",\"model\":\"qwen2.5-coder\",\"prompt\":\"...\"}'\n\n\
        Executors: scripted {duration_ms, steps, input_tokens_per_step, output_tokens_per_step, fail_at_step, output}; \
        command {cmd, workdir}; llm {api: openai|anthropic, base_url, model, prompt, system, max_tokens, api_key_env}. \
        The agent runs it with QM_FENCING_TOKEN and QM_RESERVATION_ID set.")]
    Submit(task::SubmitArgs),
    /// Tasks, newest first.
    List {
        /// Only this status: queued, running, succeeded, failed, cancelled
        #[arg(long, default_value = "")]
        status: String,
        /// At most this many (1..=10000)
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One task: status, progress, checkpoint, usage and every attempt.
    Show {
        /// Task id
        id: u64,
    },
    /// Cancel a task (a running one is told to stop).
    Cancel {
        /// Task id
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
enum WorkerCommand {
    /// Run a worker in the foreground: connect, register slots, run assigned tasks.
    #[command(after_help = "Example:\n  qm worker run --node-id box-1 --slots implementer=2 --slots verifier=1\n\
        Ctrl-C closes the worker's session: its running tasks go back to the queue and resume \
        elsewhere from their last checkpoint.")]
    Run(task::WorkerArgs),
    /// Connected workers, their slots and running tasks.
    List,
}

#[derive(Subcommand, Debug)]
enum AgentCommand {
    /// List the specs found: name, role, tier, resources and file.
    #[command(
        after_help = "Examples:\n  qm agent list                  # ./agents\n  qm agent list .claude/agents -o json"
    )]
    List {
        /// Spec files or directories of `*.md` specs [default: agents]
        paths: Vec<PathBuf>,
    },
    /// Check specs; every error names the file, line and field. Exit 1 if any is invalid.
    #[command(after_help = "Examples:\n  qm agent validate\n  qm agent validate agents/implementer.md .claude/agents")]
    Validate {
        /// Spec files or directories of `*.md` specs [default: agents]
        paths: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print every setting, its effective value and where it came from.
    Show,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Acquire+release cycles against a running cluster, fencing-checked.
    #[command(
        after_help = "The four standard runs:\n  qm bench reserve --clients 1\n  qm bench reserve --clients 16\n  qm bench reserve --clients 64\n  qm bench reserve --clients 64 --resources 8 --contention 1"
    )]
    Reserve {
        /// Concurrent clients (each with its own session).
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
        clients: u32,
        /// Shared hot resources.
        #[arg(long, default_value_t = 0)]
        resources: u32,
        /// Probability that a cycle uses a shared hot resource (0..=1).
        #[arg(long, default_value_t = 0.0)]
        contention: f64,
        /// How long to run.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        duration_s: u64,
        /// Stop after this many cycles in all.
        #[arg(long, default_value_t = 10_000_000)]
        cycles_max: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Subcommand, Debug)]
enum ScriptCommand {
    /// Run script files and print their transcripts.
    ///
    /// A script is one command per line: `open s1 ttl=10000`, `acquire s1 alice X
    /// pg:staging/table:orders timeout=5000`, `release s1 r1`, `tick 5000`, `show`, ... .
    /// `qm script demo` prints a commented example; the scenario files under
    /// coordinator/tests/scenarios/ cover every rule of the core.
    #[command(after_help = "Example:\n  qm script demo > demo.scn && qm script run demo.scn")]
    Run {
        /// Script files to run, each on a fresh state.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the built-in demo script (a commented starting point for your own).
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let output = if cli.json { Output::Json } else { cli.output };
    let result = match cli.command {
        Command::Script { command } => run_script(command, output),
        Command::Sim { command: sim::SimCommand::Cluster(mut args) } => {
            args.output = output;
            return sim_cluster::run(&args);
        }
        Command::Sim { command } => sim::run(command, output),
        command => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
            runtime.block_on(run(command, output, cli.endpoint, cli.config))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.message.is_empty() {
                eprintln!("qm: {}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

/// A failed command: what to tell the user and the exit code.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure { code: 2, message: message.into() }
    }

    pub fn error(message: impl Into<String>) -> Failure {
        Failure { code: 1, message: message.into() }
    }
}

/// Maps a gRPC status to the CLI's exit codes.
pub fn status_failure(status: tonic::Status) -> Failure {
    use tonic::Code;
    let code = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => 2,
        Code::NotFound | Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => 3,
        _ => 1,
    };
    Failure { code, message: format!("{:?}: {}", status.code(), status.message()) }
}

fn init_tracing() {
    init_tracing_with("info,openraft=warn,sled=warn");
}

fn init_tracing_with(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QM_LOG").unwrap_or_else(|_| default.into());
    // Colour only on a terminal: logs sent to a file or a collector stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

async fn run(
    command: Command,
    output: Output,
    endpoint: Option<String>,
    config_file: Option<PathBuf>,
) -> Result<(), Failure> {
    if output == Output::Dot && !matches!(command, Command::Graph { .. }) {
        return Err(Failure::usage("-o dot applies to qm graph only"));
    }
    if output == Output::Csv && !matches!(command, Command::Cost { command: CostCommand::Report { .. } }) {
        return Err(Failure::usage("-o csv applies to qm cost report only"));
    }
    let endpoint_flag = vec![("endpoint", endpoint)];
    match command {
        Command::Dev(args) => {
            // The demo narrates the worker's story itself.
            init_tracing_with("info,openraft=warn,sled=warn,qm_worker=warn");
            dev::run(args, output).await
        }
        Command::Coordinator { command: CoordinatorCommand::Run(args) } => {
            init_tracing();
            let mut flags = args.flags();
            flags.extend(endpoint_flag);
            let config = config::Config::load(config_file.as_deref(), &flags)?;
            coordinator::run(&config, args.join).await
        }
        Command::Workflow { command } => match command {
            WorkflowCommand::List => workflow::list(output),
            WorkflowCommand::Show { workflow } => workflow::show(&workflow, output),
            WorkflowCommand::Validate { paths, project } => workflow::validate(&paths, project.as_deref(), output),
        },
        Command::Project { command: ProjectCommand::Validate { file } } => workflow::project_validate(&file, output),
        Command::Agent { command: AgentCommand::List { paths } } => agent::list(&agent::default_paths(paths), output),
        Command::Agent { command: AgentCommand::Validate { paths } } => {
            agent::validate(&agent::default_paths(paths), output)
        }
        Command::Config { command: ConfigCommand::Show } => {
            let config = config::Config::load(config_file.as_deref(), &endpoint_flag)?;
            let rows = config.show();
            let mut text = format!("{:<32} {:<40} {}\n", "KEY", "VALUE", "SOURCE");
            for r in &rows {
                text.push_str(&format!(
                    "{:<32} {:<40} {}\n",
                    r["key"].as_str().unwrap_or(""),
                    r["value"].as_str().unwrap_or(""),
                    r["source"].as_str().unwrap_or("")
                ));
            }
            reserve::emit(output, &serde_json::Value::Array(rows), &text);
            Ok(())
        }
        command => {
            let config = config::Config::load(config_file.as_deref(), &endpoint_flag)?;
            let client = Client::new([config.get("endpoint")]).map_err(|e| Failure::usage(e.to_string()))?;
            run_client(command, output, &client).await
        }
    }
}

async fn run_client(command: Command, output: Output, client: &Client) -> Result<(), Failure> {
    match command {
        Command::Cluster { command } => cluster(command, output, client).await,
        Command::Graph { prefix } => reserve::graph(client, prefix, output).await,
        Command::Resource { command: ResourceCommand::Declare { path, capacity, policy, grace_ms } } => {
            let policy = match policy.as_str() {
                "preempt" => pb::ResourcePolicy::Preempt,
                "inherit" => pb::ResourcePolicy::Inherit,
                _ => pb::ResourcePolicy::None,
            } as i32;
            let req = pb::DeclareResourceRequest { path: path.clone(), capacity, policy, grace_ms };
            let resp = client
                .call(|ch| {
                    let req = req.clone();
                    async move { Ok(Client::reservations(ch).declare_resource(req).await?.into_inner()) }
                })
                .await
                .map_err(status_failure)?;
            reserve::emit(
                output,
                &serde_json::json!({"path": path, "index": resp.index}),
                &format!("{path} declared (index {})\n", resp.index),
            );
            Ok(())
        }
        Command::Task { command } => match command {
            TaskCommand::Submit(a) => task::submit(client, a, output).await,
            TaskCommand::List { status, limit } => task::list(client, status, limit, output).await,
            TaskCommand::Show { id } => task::show(client, id, output).await,
            TaskCommand::Cancel { id } => task::cancel(client, id, output).await,
        },
        Command::Worker { command: WorkerCommand::List } => task::workers(client, output).await,
        Command::Job { command } => match command {
            JobCommand::Submit(a) => job::submit(client, a, output).await,
            JobCommand::Show { id } => job::show(client, &id, output).await,
            JobCommand::List { status, team } => job::list(client, status, team, output).await,
            JobCommand::Cancel { id } => job::cancel(client, &id, false, output).await,
            JobCommand::Retry { id } => job::cancel(client, &id, true, output).await,
        },
        Command::Gate { command } => match command {
            GateCommand::Approve { id, pass, note, by } => job::decide(client, &id, pass, true, note, by, output).await,
            GateCommand::Reject { id, pass, note, by } => job::decide(client, &id, pass, false, note, by, output).await,
        },
        Command::Budget { command } => match command {
            BudgetCommand::Set { scope, name, limit, period } => {
                job::budget_set(client, scope, name, limit, period, output).await
            }
            BudgetCommand::Show => job::budget_show(client, output).await,
        },
        Command::Cost { command } => match command {
            CostCommand::Report { by, since } => job::cost_report(client, by, since, output).await,
            CostCommand::Forecast { workflow } => job::forecast(client, workflow, output).await,
        },
        Command::Project { command: ProjectCommand::Apply { file, demo } } => {
            if file.is_none() && !demo {
                return Err(Failure::usage("give a project FILE or --demo"));
            }
            job::project_apply(client, file, output).await
        }
        Command::Scheduler { command } => match command {
            SchedulerCommand::Show => job::scheduler(client, None, output).await,
            SchedulerCommand::Set(a) => job::scheduler(client, Some(a), output).await,
        },
        Command::Worker { command: WorkerCommand::Run(a) } => {
            init_tracing();
            task::run_worker(client.clone(), task::worker_config(a)?).await
        }
        Command::Reserve { command } => match command {
            ReserveCommand::Acquire { resources, flags } => {
                reserve::acquire_cmd(client, flags.args(resources), output).await
            }
            ReserveCommand::Release { id, request, session } => {
                let target = match (id, request) {
                    (_, Some(r)) => pb::release_request::Target::RequestId(r),
                    (Some(id), None) => pb::release_request::Target::ReservationId(id),
                    (None, None) => return Err(Failure::usage("give a reservation id or --request")),
                };
                let resp = client
                    .release(pb::ReleaseRequest { session_id: session, target: Some(target) })
                    .await
                    .map_err(status_failure)?;
                let value = json!({"released": resp.released_reservation_ids, "cancelled": resp.cancelled_request_ids});
                reserve::emit(
                    output,
                    &value,
                    &format!(
                        "released {:?} cancelled {:?}\n",
                        resp.released_reservation_ids, resp.cancelled_request_ids
                    ),
                );
                Ok(())
            }
            ReserveCommand::Extend { id, session, lease_ms } => {
                let resp = client
                    .extend(pb::ExtendRequest { reservation_id: id, session_id: session, lease_ms })
                    .await
                    .map_err(status_failure)?;
                let r = resp.reservation.unwrap_or_default();
                reserve::emit(
                    output,
                    &reserve::reservation_json(&r),
                    &format!("extended {} until {} ms\n", r.id, r.expires_at_ms),
                );
                Ok(())
            }
            ReserveCommand::List { prefix, session, owner, pending, limit, page_token } => {
                let req = pb::ListRequest {
                    resource_prefix: prefix,
                    session_id: session,
                    owner,
                    limit,
                    page_token,
                    include_pending: pending,
                };
                reserve::list(client, req, output).await
            }
            ReserveCommand::Watch { prefix, session, owner, from_index, count } => {
                let req =
                    pb::WatchRequest { resource_prefix: prefix, session_id: session, owner, start_index: from_index };
                reserve::watch(client, req, count, output).await
            }
            ReserveCommand::Run { resource, flags, cmd } => {
                let mut flags = flags;
                flags.wait = true;
                let code = reserve::run(client, flags.args(vec![resource]), cmd).await?;
                if code == 0 {
                    Ok(())
                } else {
                    Err(Failure { code, message: String::new() })
                }
            }
        },
        Command::Bench {
            command: BenchCommand::Reserve { clients, resources, contention, duration_s, cycles_max, seed },
        } => {
            if !(0.0..=1.0).contains(&contention) {
                return Err(Failure::usage(format!("--contention {contention}: must be within 0..=1")));
            }
            if contention > 0.0 && resources == 0 {
                return Err(Failure::usage("--contention needs --resources of at least 1"));
            }
            bench::reserve(
                client,
                bench::BenchArgs { clients, resources, contention, duration_s, cycles_max, seed },
                output,
            )
            .await
        }
        Command::Dev(_)
        | Command::Coordinator { .. }
        | Command::Config { .. }
        | Command::Script { .. }
        | Command::Sim { .. }
        | Command::Workflow { .. }
        | Command::Project { command: ProjectCommand::Validate { .. } }
        | Command::Agent { .. } => {
            unreachable!("handled before")
        }
    }
}

fn member_json(m: &pb::Member) -> serde_json::Value {
    let role = if m.role == pb::MemberRole::Voter as i32 { "voter" } else { "learner" };
    json!({"node_id": m.node_id, "address": m.address, "role": role, "is_leader": m.is_leader, "matched_index": m.matched_index})
}

async fn cluster(command: ClusterCommand, output: Output, client: &Client) -> Result<(), Failure> {
    match command {
        ClusterCommand::Status => {
            let s = client.status().await.map_err(status_failure)?;
            let value = json!({
                "node_id": s.node_id, "term": s.term, "leader_id": s.leader_id, "leader_address": s.leader_address,
                "applied_index": s.applied_index, "last_log_index": s.last_log_index, "snapshot_index": s.snapshot_index,
                "membership_changing": s.membership_changing, "version": s.version,
                "ready": s.ready, "not_ready_reason": s.not_ready_reason,
                "members": s.members.iter().map(member_json).collect::<Vec<_>>(),
            });
            let mut text = format!(
                "answered by node {} (term {}, applied {}, snapshot {}); leader: {}; {}\n{:<6} {:<28} {:<8} {:<7} {}\n",
                s.node_id,
                s.term,
                s.applied_index,
                s.snapshot_index,
                s.leader_id.map_or("none".to_string(), |l| format!("node {l} at {}", s.leader_address)),
                if s.ready { "ready".to_string() } else { format!("NOT READY: {}", s.not_ready_reason) },
                "ID",
                "ADDRESS",
                "ROLE",
                "LEADER",
                "MATCHED"
            );
            for m in &s.members {
                let role = if m.role == pb::MemberRole::Voter as i32 { "voter" } else { "learner" };
                text.push_str(&format!(
                    "{:<6} {:<28} {:<8} {:<7} {}\n",
                    m.node_id,
                    m.address,
                    role,
                    if m.is_leader { "*" } else { "" },
                    m.matched_index.map_or("-".into(), |i| i.to_string())
                ));
            }
            reserve::emit(output, &value, &text);
            Ok(())
        }
        ClusterCommand::Add { id, address, learner } => {
            let address = qm_shared::client::normalize(&address);
            let added = client
                .call(|ch| {
                    let address = address.clone();
                    async move {
                        Ok(Client::cluster(ch)
                            .add_learner(pb::AddLearnerRequest { node_id: id, address, wait_caught_up: true })
                            .await?
                            .into_inner())
                    }
                })
                .await
                .map_err(status_failure)?;
            let members = if learner {
                added.members
            } else {
                client
                    .call(|ch| async move {
                        Ok(Client::cluster(ch).promote(pb::PromoteRequest { node_id: id }).await?.into_inner())
                    })
                    .await
                    .map_err(status_failure)?
                    .members
            };
            let value = json!({"added": id, "members": members.iter().map(member_json).collect::<Vec<_>>()});
            reserve::emit(
                output,
                &value,
                &format!(
                    "node {id} added as {}; {} members\n",
                    if learner { "learner" } else { "voter" },
                    members.len()
                ),
            );
            Ok(())
        }
        ClusterCommand::Remove { id } => {
            let resp = client
                .call(|ch| async move {
                    Ok(Client::cluster(ch).remove(pb::RemoveRequest { node_id: id }).await?.into_inner())
                })
                .await
                .map_err(status_failure)?;
            let value = json!({"removed": id, "members": resp.members.iter().map(member_json).collect::<Vec<_>>()});
            reserve::emit(output, &value, &format!("node {id} removed; {} members\n", resp.members.len()));
            Ok(())
        }
        ClusterCommand::TransferLeader { to } => {
            let resp = client
                .call(|ch| async move {
                    Ok(Client::cluster(ch)
                        .transfer_leader(pb::TransferLeaderRequest { to_node_id: to })
                        .await?
                        .into_inner())
                })
                .await
                .map_err(status_failure)?;
            let value = json!({"leader_id": resp.leader_id, "term": resp.term});
            reserve::emit(
                output,
                &value,
                &format!(
                    "leader is now {} (term {})\n",
                    resp.leader_id.map_or("unknown".into(), |l| format!("node {l}")),
                    resp.term
                ),
            );
            Ok(())
        }
        ClusterCommand::Snapshot => {
            let resp = client
                .call(|ch| async move {
                    Ok(Client::cluster(ch).snapshot_now(pb::SnapshotNowRequest { wait: true }).await?.into_inner())
                })
                .await
                .map_err(status_failure)?;
            let value = json!({"snapshot_index": resp.snapshot_index, "store_size_bytes": resp.snapshot_size_bytes});
            reserve::emit(
                output,
                &value,
                &format!("snapshot at index {} (store {} bytes)\n", resp.snapshot_index, resp.snapshot_size_bytes),
            );
            Ok(())
        }
    }
}

fn run_script(command: ScriptCommand, output: Output) -> Result<(), Failure> {
    match command {
        ScriptCommand::Demo => {
            print_stdout(DEMO);
            Ok(())
        }
        ScriptCommand::Run { files } => {
            let mut transcripts = Vec::with_capacity(files.len());
            for file in &files {
                let name = file.display().to_string();
                let meta = std::fs::metadata(file).map_err(|e| Failure::usage(format!("{name}: {e}")))?;
                if meta.len() > SCRIPT_LEN_MAX_BYTES {
                    return Err(Failure::usage(format!(
                        "{name}: is {} bytes, at most {SCRIPT_LEN_MAX_BYTES} allowed",
                        meta.len()
                    )));
                }
                let script = std::fs::read_to_string(file).map_err(|e| Failure::usage(format!("{name}: {e}")))?;
                let transcript =
                    qm_coordinator::script::run(&script).map_err(|e| Failure::usage(format!("{name}: {e}")))?;
                transcripts.push((name, transcript));
            }
            let named: Vec<(&str, String)> = transcripts.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
            emit(output, &named)
        }
    }
}

/// Transcripts as text (one after another) or as a JSON array of `{file, transcript}`.
fn emit(output: Output, transcripts: &[(&str, String)]) -> Result<(), Failure> {
    match output {
        Output::Table | Output::Dot | Output::Csv => {
            for (i, (name, transcript)) in transcripts.iter().enumerate() {
                if transcripts.len() > 1 {
                    if i > 0 {
                        print_stdout("\n");
                    }
                    print_stdout(&format!("=== {name}\n"));
                }
                print_stdout(transcript);
            }
        }
        Output::Json => {
            let value: Vec<serde_json::Value> =
                transcripts.iter().map(|(name, t)| serde_json::json!({ "file": name, "transcript": t })).collect();
            let text = serde_json::to_string_pretty(&value).map_err(|e| Failure::error(e.to_string()))?;
            print_stdout(&format!("{text}\n"));
        }
    }
    Ok(())
}

/// Writes to stdout; a closed pipe (`qm ... | head`) ends quietly.
pub fn print_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}
