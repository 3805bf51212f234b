//! `qm`, the one Quartermaster binary.
//!
//! Today it runs scripts against the replicated core (`qm script run`, `qm dev`); the
//! coordinator, worker, cluster and reservation commands join it as they land. Conventions
//! every command keeps: noun–verb subcommands, `-o table|json` (or `--json`), stable JSON on
//! stdout, human text on stderr, exit codes 0 ok / 1 error / 2 usage or bad input / 3
//! conflict or not found.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Demo script `qm dev` runs: three agents, a staging database and a GPU box.
const DEMO: &str = include_str!("demo.scn");

/// Largest script file `qm script run` reads.
const SCRIPT_LEN_MAX_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Parser, Debug)]
#[command(
    name = "qm",
    version,
    about = "Quartermaster: reservations, queues and deadlock handling for pools of AI agents",
    long_about = "Quartermaster coordinates pools of AI software-engineering agents the way a \
                  database lock manager coordinates transactions: agents reserve shared \
                  resources (databases down to row ranges, GPU slots, rate-limited APIs) and get \
                  a lease with a fencing token, a place in a fair queue, or a refusal that names \
                  who holds what.\n\nThe replicated core runs today through scripts: `qm dev` \
                  plays the built-in demo, `qm script run FILE` plays your own.",
    after_help = "Exit codes: 0 ok, 1 error, 2 usage or bad input, 3 conflict or not found."
)]
struct Cli {
    /// Output format: human-readable text or stable JSON on stdout.
    #[arg(short = 'o', long = "output", value_enum, global = true, default_value_t = Output::Table)]
    output: Output,
    /// Shorthand for `-o json`.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Play the built-in demo against the replicated core (three agents, a staging database,
    /// a GPU box: queues, fencing tokens, a deadlock broken, a preemption).
    ///
    /// The full dev mode — a single-node coordinator on an embedded store with gRPC on
    /// 127.0.0.1:7070, admin HTTP on 127.0.0.1:7080 and scripted agents — arrives with the
    /// replicated coordinator. Until then `qm dev` shows the core those pieces wrap.
    Dev,
    /// Scripts against the replicated core.
    Script {
        #[command(subcommand)]
        command: ScriptCommand,
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
    match run(cli.command, output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("qm: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// A failed command: what to tell the user and the exit code.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Failure {
        Failure { code: 2, message: message.into() }
    }

    fn error(message: impl Into<String>) -> Failure {
        Failure { code: 1, message: message.into() }
    }
}

fn run(command: Command, output: Output) -> Result<(), Failure> {
    match command {
        Command::Dev => {
            eprintln!(
                "qm dev: playing the built-in demo against the replicated core.\n\
                 (The full dev mode, a local coordinator with gRPC on 127.0.0.1:7070 and scripted \
                 agents, arrives with the replicated coordinator.)\n"
            );
            let transcript = qm_coordinator::script::run(DEMO).map_err(|e| Failure::error(format!("demo: {e}")))?;
            emit(output, &[("demo", transcript)])
        }
        Command::Script { command: ScriptCommand::Demo } => {
            print_stdout(DEMO);
            Ok(())
        }
        Command::Script { command: ScriptCommand::Run { files } } => {
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
        Output::Table => {
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
fn print_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}
