//! `qm`, the one Quartermaster binary: the top-level command line (global flags, output
//! format, one subcommand per noun), exit codes and dispatch to the noun modules.
//!
//! Commands: `dev`, `coordinator run`, `cluster …`, `reserve …`, `graph`, `resource`, `task …`,
//! `worker …`, `job …`, `gate …`, `budget …`, `cost …`, `workflow …`, `project …`,
//! `scheduler …`, `cert …`, `acl …`, `token …`, `audit list`, `agent …`, `config show`,
//! `bench reserve`, `sim …`, `script …`. Each noun's
//! arguments and handlers live in the module of the same name. Conventions every command
//! keeps: noun–verb subcommands, `-o table|json` (or `--json`), stable JSON on stdout, human
//! text on stderr, exit codes 0 ok / 1 error / 2 usage or bad input / 3 conflict or not found /
//! 4 not authenticated or not allowed / 5 waits for a human (`qm job submit --wait`, `qm job
//! wait`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc: the replicated state is many small maps and strings, and an apply runs about a
/// quarter faster than on the system allocator (`cargo bench -p qm-coordinator --bench
/// scheduler`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod acl;
mod agent;
mod artifact;
mod audit;
mod bench;
mod budget;
mod cert;
mod cluster;
mod config;
mod coordinator;
mod cost;
mod dev;
mod gate;
mod graph;
mod ids;
mod job;
mod project;
mod reserve;
mod resource;
mod scheduler;
mod script;
mod sim;
mod task;
mod worker;
mod workflow;

use qm_shared::client::Client;

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
                  Exit codes: 0 ok, 1 error, 2 usage or bad input, 3 conflict or not found, 4 not \
                  allowed (no or unknown token, or a rule denied it), 5 waiting stopped at a gate \
                  that needs a person (qm job submit --wait, qm job wait)."
)]
struct Cli {
    /// Output format: human-readable text, or stable JSON on stdout (`qm graph` also speaks
    /// `-o dot`, `qm cost report` `-o csv`).
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
    /// The cluster CA (PEM): talk TLS to the coordinators and trust only it. [config: tls.ca]
    #[arg(long, global = true)]
    tls_ca: Option<String>,
    /// Certificate (PEM) to present; a coordinator's own node certificate. [config: tls.cert]
    #[arg(long, global = true)]
    tls_cert: Option<String>,
    /// The certificate's private key (PEM). [config: tls.key]
    #[arg(long, global = true)]
    tls_key: Option<String>,
    /// Allow plaintext to or on a non-loopback address (tokens then cross the network in
    /// clear text). [config: insecure]
    #[arg(long, global = true)]
    insecure: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    /// DOT: `qm graph` only, so not listed with the global choices (its help names it).
    #[value(hide = true)]
    Dot,
    /// CSV: `qm cost report` only, likewise.
    #[value(hide = true)]
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
        command: coordinator::CoordinatorCommand,
    },
    /// Cluster status and membership.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Reservations: acquire, release, extend, list, watch, run a command under a lease.
    Reserve {
        #[command(subcommand)]
        command: reserve::ReserveCommand,
    },
    /// The wait-for graph: who waits for whom, on what (-o table|json|dot).
    Graph(graph::GraphArgs),
    /// Resource declarations: capacity and priority-inversion policy.
    Resource {
        #[command(subcommand)]
        command: resource::ResourceCommand,
    },
    /// Tasks: units of agent work (a role, resources with modes, an executor payload).
    Task {
        #[command(subcommand)]
        command: task::TaskCommand,
    },
    /// Worker nodes that host agent slots and run tasks.
    Worker {
        #[command(subcommand)]
        command: worker::WorkerCommand,
    },
    /// Work items: tickets that flow through a workflow's passes, gates and budgets.
    #[command(
        after_help = "Examples:\n  qm project apply --demo\n  qm job submit --title 'Add CSV export' --class feature --team platform --project demo --workflow new-feature --wait\n  qm job show j1\n  qm gate approve j1 design"
    )]
    Job {
        #[command(subcommand)]
        command: job::JobCommand,
    },
    /// The outputs of a work item's passes: an agent's summary, branch, commit and diff; a
    /// command's output; a review's verdict.
    #[command(after_help = "Examples:\n  qm artifact list j1\n  qm artifact get j1 implement\n  \
                  qm artifact get j1 implement -o json | jq -r .content.diff")]
    Artifact {
        #[command(subcommand)]
        command: artifact::ArtifactCommand,
    },
    /// Decide a pass waiting for a human: a human gate, or a spend approval at a budget's
    /// `at` threshold.
    Gate {
        #[command(subcommand)]
        command: gate::GateCommand,
    },
    /// Budgets at org, team, project and work-item scope, enforced at dispatch.
    #[command(after_help = "Thresholds: approaching (80%): low-priority work dispatches only when nothing \
                  higher waits; at (95%): low-priority work pauses and high-cost dispatches need \
                  `qm gate approve`; over: everything in scope pauses. A dispatch whose forecast \
                  would cross the limit waits. Raising a budget or a period rollover resumes work.")]
    Budget {
        #[command(subcommand)]
        command: budget::BudgetCommand,
    },
    /// The cost ledger: every attempt's model, provider, tokens, money, wall time, agent,
    /// worker and outcome.
    Cost {
        #[command(subcommand)]
        command: cost::CostCommand,
    },
    /// Workflows: DAGs of passes as TOML files (five are built in).
    Workflow {
        #[command(subcommand)]
        command: workflow::WorkflowCommand,
    },
    /// Projects: the resources, providers and prices a team works against.
    Project {
        #[command(subcommand)]
        command: project::ProjectCommand,
    },
    /// Certificates: a cluster CA and node and client certificates (development and small
    /// clusters; production brings its own CA).
    Cert {
        #[command(subcommand)]
        command: cert::CertCommand,
    },
    /// Access control: bootstrap a fresh cluster's first admin token.
    Acl {
        #[command(subcommand)]
        command: acl::AclCommand,
    },
    /// Tokens: create (secret shown once), list, revoke, whoami.
    Token {
        #[command(subcommand)]
        command: acl::TokenCommand,
    },
    /// The audit log: admin and operator actions, gate decisions, token changes and every
    /// denial, from every coordinator.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// The scheduler's replicated tunables: aging, fair share, budget thresholds.
    Scheduler {
        #[command(subcommand)]
        command: scheduler::SchedulerCommand,
    },
    /// Agent specs: markdown with YAML front matter (a superset of .claude/agents files).
    Agent {
        #[command(subcommand)]
        command: agent::AgentCommand,
    },
    /// The effective configuration.
    Config {
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
    /// Load generators that report throughput and latency beside a named peer's figures.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// The simulator: contention studies of the replicated core with modelled agents.
    Sim {
        #[command(subcommand)]
        command: sim::SimCommand,
    },
    /// Scripts against the replicated core (no server needed).
    Script {
        #[command(subcommand)]
        command: script::ScriptCommand,
    },
    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  \
        qm completions bash > ~/.local/share/bash-completion/completions/qm\n  \
        qm completions zsh > \"${fpath[1]}/_qm\"\n  \
        qm completions fish > ~/.config/fish/completions/qm.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one page per command into a directory.
    #[command(after_help = "Examples:\n  qm man | man -l -\n  qm man --dir /usr/local/share/man/man1")]
    Man {
        /// Write qm.1 and a page for every subcommand (qm-reserve-acquire.1, ...) here.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

/// `qm completions` and `qm man`: generated from the same definitions as `--help`.
fn self_documentation(command: Command) -> Result<(), Failure> {
    use clap::CommandFactory;
    let mut cli = Cli::command();
    match command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli, "qm", &mut script);
            print_stdout(&String::from_utf8_lossy(&script));
            Ok(())
        }
        Command::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).map_err(|e| Failure::error(format!("--dir {}: {e}", dir.display())))?;
            clap_mangen::generate_to(cli, &dir).map_err(|e| Failure::error(format!("--dir {}: {e}", dir.display())))
        }
        _ => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cli).render(&mut page).map_err(|e| Failure::error(e.to_string()))?;
            print_stdout(&String::from_utf8_lossy(&page));
            Ok(())
        }
    }
}

/// Parses the command line. A negative number given to a flag is taken as its value (not as
/// an unknown flag), so that the error names the flag and its bound: `--timeout-ms -5` is
/// "must be 0 or more", not a hint to write `-- -5`.
fn parse_command_line() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    fn negatives_are_values(command: clap::Command) -> clap::Command {
        command
            .mut_args(|a| if a.get_action().takes_values() { a.allow_negative_numbers(true) } else { a })
            .mut_subcommands(negatives_are_values)
    }
    let mut command = negatives_are_values(Cli::command());
    let parsed = command.try_get_matches_from_mut(std::env::args_os()).and_then(|m| Cli::from_arg_matches(&m));
    match parsed {
        Ok(cli) => cli,
        Err(e) if e.kind() == clap::error::ErrorKind::ValueValidation => {
            let text = e.render().to_string();
            if text.contains("invalid value '-") && text.contains("invalid digit found in string") {
                eprint!("{}", text.replace("invalid digit found in string", "must be 0 or more"));
                std::process::exit(2);
            }
            e.exit()
        }
        Err(e) => e.exit(),
    }
}

fn main() -> ExitCode {
    let cli = parse_command_line();
    let output = if cli.json { Output::Json } else { cli.output };
    let result = match cli.command {
        Command::Script { command } => script::run(command, output),
        Command::Sim { command: sim::SimCommand::Cluster(mut args) } => {
            args.output = output;
            return sim::cluster::run(&args);
        }
        Command::Sim { command } => sim::run(command, output),
        command @ (Command::Completions { .. } | Command::Man { .. }) => self_documentation(command),
        command => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
            let flags = vec![
                ("endpoint", cli.endpoint),
                ("tls.ca", cli.tls_ca),
                ("tls.cert", cli.tls_cert),
                ("tls.key", cli.tls_key),
                ("insecure", cli.insecure.then(|| "true".to_string())),
            ];
            runtime.block_on(run(command, output, flags, cli.config))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.message.is_empty() {
                eprintln!("qm: {}", failure.message);
            }
            if output == Output::Json {
                print_stdout(&format!("{:#}\n", failure.json()));
            }
            ExitCode::from(failure.code)
        }
    }
}

/// `n` and `noun`, in the plural unless `n` is 1: "1 edge", "3 edges", "2 passes".
pub fn count(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        _ if noun.ends_with('s') || noun.ends_with('x') || noun.ends_with("sh") || noun.ends_with("ch") => {
            format!("{n} {noun}es")
        }
        _ => format!("{n} {noun}s"),
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

    /// What the user is told.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The failure as `-o json` prints it on stdout: `{"error": {exit_code, kind, message,
    /// field}}`, `field` naming the input at fault when the message starts with one.
    fn json(&self) -> serde_json::Value {
        let kind = match self.code {
            2 => "invalid",
            3 => "conflict",
            4 => "denied",
            5 => "waiting",
            130 | 143 => "interrupted",
            _ => "error",
        };
        // "InvalidArgument: resources[0].path: …" or "node.peers: …": the first word before
        // a colon, once a status code name is set aside.
        let text = self.message.split_once(": ").filter(|(c, _)| c.chars().all(|ch| ch.is_ascii_alphabetic()));
        let rest = text.map_or(self.message.as_str(), |(_, rest)| rest);
        let field = rest.split_once(": ").map(|(f, _)| f).filter(|f| !f.is_empty() && !f.contains(' '));
        serde_json::json!({"error": {"exit_code": self.code, "kind": kind, "message": self.message, "field": field}})
    }

    /// Waiting stopped because a person must act (a gate waits for a human): exit 5.
    pub fn waiting(message: impl Into<String>) -> Failure {
        Failure { code: 5, message: message.into() }
    }
}

/// Maps a gRPC status to the CLI's exit codes.
pub fn status_failure(status: tonic::Status) -> Failure {
    use tonic::Code;
    let code = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => 2,
        Code::NotFound | Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => 3,
        Code::Unauthenticated | Code::PermissionDenied => 4,
        // A plaintext client talking to a TLS port sees only a broken HTTP/2 stream.
        Code::Internal | Code::Unknown if status.message().contains("h2 protocol error") => {
            return Failure::error(format!(
                "{:?}: {} (does the server speak TLS? then set --tls-ca / QM_TLS_CA)",
                status.code(),
                status.message()
            ))
        }
        Code::Unavailable if status.message().starts_with(qm_shared::client::NOTHING_LISTENING) => {
            return Failure::error(format!(
                "{:?}: {}; start one with `qm dev`, or point --endpoint / QM_ENDPOINT at a running cluster",
                status.code(),
                status.message()
            ))
        }
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

/// Commands that run on the tokio runtime: local ones first, then those that talk to a
/// coordinator.
async fn run(
    command: Command,
    output: Output,
    endpoint_flag: Vec<(&'static str, Option<String>)>,
    config_file: Option<PathBuf>,
) -> Result<(), Failure> {
    if output == Output::Dot && !matches!(command, Command::Graph(_)) {
        return Err(Failure::usage("-o dot applies to qm graph only"));
    }
    if output == Output::Csv && !matches!(command, Command::Cost { command: cost::CostCommand::Report { .. } }) {
        return Err(Failure::usage("-o csv applies to qm cost report only"));
    }
    match command {
        Command::Dev(args) => {
            // The demo narrates the worker's story itself.
            init_tracing_with("info,openraft=warn,sled=warn,qm_worker=warn");
            dev::run(args, output).await
        }
        Command::Coordinator { command } => coordinator::dispatch(command, config_file.as_deref(), endpoint_flag).await,
        Command::Workflow { command } => workflow::dispatch(command, output),
        Command::Cert { command } => cert::dispatch(command, output),
        Command::Project { command: project::ProjectCommand::Validate { file } } => project::validate(&file, output),
        Command::Agent { command } => agent::dispatch(command, output),
        Command::Config { command } => config::dispatch(command, config_file.as_deref(), &endpoint_flag, output),
        command => {
            let config = config::Config::load(config_file.as_deref(), &endpoint_flag)?;
            let token = config.token()?;
            let client = Client::new([config.get("endpoint")])
                .and_then(|c| c.with_token(&token))
                .map_err(|e| Failure::usage(e.to_string()))?;
            let client = match config.client_tls()? {
                Some(tls) => client.with_tls(tls).map_err(|e| Failure::usage(e.to_string()))?,
                None => {
                    config.check_plaintext_endpoints()?;
                    client
                }
            };
            run_client(command, output, &client).await
        }
    }
}

/// Commands that talk to the coordinators through `client`.
async fn run_client(command: Command, output: Output, client: &Client) -> Result<(), Failure> {
    match command {
        Command::Cluster { command } => cluster::dispatch(command, client, output).await,
        Command::Reserve { command } => reserve::dispatch(command, client, output).await,
        Command::Graph(args) => graph::show(client, args.prefix, output).await,
        Command::Resource { command } => resource::dispatch(command, client, output).await,
        Command::Task { command } => task::dispatch(command, client, output).await,
        Command::Worker { command } => worker::dispatch(command, client, output).await,
        Command::Job { command } => job::dispatch(command, client, output).await,
        Command::Gate { command } => gate::dispatch(command, client, output).await,
        Command::Artifact { command } => artifact::dispatch(command, client, output).await,
        Command::Budget { command } => budget::dispatch(command, client, output).await,
        Command::Cost { command } => cost::dispatch(command, client, output).await,
        Command::Project { command: project::ProjectCommand::Apply { file, demo } } => {
            project::apply(client, file, demo, output).await
        }
        Command::Scheduler { command } => scheduler::dispatch(command, client, output).await,
        Command::Acl { command } => acl::dispatch_acl(command, client, output).await,
        Command::Token { command } => acl::dispatch_token(command, client, output).await,
        Command::Audit { command } => audit::dispatch(command, client, output).await,
        Command::Bench { command } => bench::dispatch(command, client, output).await,
        Command::Dev(_)
        | Command::Coordinator { .. }
        | Command::Config { .. }
        | Command::Script { .. }
        | Command::Sim { .. }
        | Command::Workflow { .. }
        | Command::Cert { .. }
        | Command::Project { command: project::ProjectCommand::Validate { .. } }
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Agent { .. } => {
            unreachable!("handled before")
        }
    }
}

/// Writes to stdout; a closed pipe (`qm ... | head`) ends quietly.
pub fn print_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_are_singular_for_one_and_plural_otherwise() {
        assert_eq!(super::count(1, "edge"), "1 edge");
        assert_eq!(super::count(0, "edge"), "0 edges");
        assert_eq!(super::count(2, "pass"), "2 passes");
        assert_eq!(super::count(1, "pass"), "1 pass");
    }
}

#[cfg(test)]
mod help_tests {
    /// Every flag and argument of every command says what it is in `--help`.
    #[test]
    fn every_argument_of_every_command_has_a_description() {
        use clap::CommandFactory;
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(format!("{path} {} (the command itself)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "qm", &mut missing);
        assert!(missing.is_empty(), "{} without a description:\n{}", missing.len(), missing.join("\n"));
    }
}
