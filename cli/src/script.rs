//! `qm script run|demo`: its arguments and handlers. Scripts run against the replicated core
//! in-process (no server needed) and print their transcripts.

use std::path::PathBuf;

use clap::Subcommand;

use crate::{print_stdout, Failure, Output};

/// The demo script `qm script demo` prints: three agents, a staging database and a GPU box.
const DEMO: &str = include_str!("demo.scn");

/// Largest script file `qm script run` reads.
const SCRIPT_LEN_MAX_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Subcommand, Debug)]
pub enum ScriptCommand {
    /// Run script files and print their transcripts.
    ///
    /// A script is one command per line: `open s1 ttl=10000`, `acquire s1 alice X
    /// pg:staging/table:orders timeout=5000`, `release s1 r1`, `tick 5000`, `show`, ... .
    /// The scheduler, work items and budgets too: `worker w1 implementer:2`, `task
    /// implementer prio=900`, `report w1 t1 done`, `project demo`, `item production-bug`,
    /// `decide j1 deploy approve`, `budget team platform 5.00 period=day`, `show items`.
    /// `qm script demo` prints a commented example; the scenario files under
    /// coordinator/tests/scenarios/ cover every rule of the core and the scheduler.
    #[command(after_help = "Example:\n  qm script demo > demo.scn && qm script run demo.scn")]
    Run {
        /// Script files to run, each on a fresh state.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the built-in demo script (a commented starting point for your own).
    Demo,
}

/// `qm script …`.
pub fn run(command: ScriptCommand, output: Output) -> Result<(), Failure> {
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
            let list: Vec<serde_json::Value> =
                transcripts.iter().map(|(name, t)| serde_json::json!({ "file": name, "transcript": t })).collect();
            let value = serde_json::json!({ "transcripts": list });
            let text = serde_json::to_string_pretty(&value).map_err(|e| Failure::error(e.to_string()))?;
            print_stdout(&format!("{text}\n"));
        }
    }
    Ok(())
}
