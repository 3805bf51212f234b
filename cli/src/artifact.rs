//! `qm artifact list|get`: the outputs of a work item's passes, as the coordinators keep them
//! (an agent's summary, branch, commit and diff; a command's output; a review's verdict).

use clap::Subcommand;
use qm_shared::client::Client;
use serde_json::json;

use crate::job::job_id;
use crate::reserve::emit;
use crate::{status_failure, Failure, Output};

#[derive(Subcommand, Debug)]
pub enum ArtifactCommand {
    /// Every pass of work item ID with its artifact's digest and size
    List {
        /// The work item (`j7` or `7`)
        id: String,
    },
    /// The artifact of PASS of work item ID: its content as it was produced (JSON for an
    /// agent's output) on stdout; with -o json, in a JSON object with its digest
    Get {
        /// The work item (`j7` or `7`)
        id: String,
        /// The pass, as `qm job show` names it
        pass: String,
    },
}

/// `qm artifact …`.
pub async fn dispatch(command: ArtifactCommand, client: &Client, output: Output) -> Result<(), Failure> {
    match command {
        ArtifactCommand::List { id } => {
            let resp = client.get_artifacts(job_id(&id)?, "").await.map_err(status_failure)?;
            let mut text = format!("{:<24} {:>10}  {}\n", "PASS", "BYTES", "DIGEST");
            for a in &resp.artifacts {
                let digest = if a.digest.is_empty() { "-" } else { &a.digest };
                let gone = if !a.digest.is_empty() && !a.retained { " (evicted)" } else { "" };
                text.push_str(&format!("{:<24} {:>10}  {digest}{gone}\n", a.pass, a.size_bytes));
            }
            let rows: Vec<_> = resp
                .artifacts
                .iter()
                .map(
                    |a| json!({"pass": a.pass, "digest": a.digest, "size_bytes": a.size_bytes, "retained": a.retained}),
                )
                .collect();
            emit(output, &json!({"artifacts": rows}), &text);
            Ok(())
        }
        ArtifactCommand::Get { id, pass } => {
            let resp = client.get_artifacts(job_id(&id)?, &pass).await.map_err(status_failure)?;
            let a = resp.artifacts.iter().find(|a| a.pass == pass).expect("the coordinator answers for the pass asked");
            if a.digest.is_empty() || !a.retained {
                let why = if a.digest.is_empty() { "has produced no artifact yet" } else { "artifact was evicted" };
                return Err(Failure::error(format!("{id} {pass}: {why}")));
            }
            let text = String::from_utf8_lossy(&a.data).into_owned();
            let content: serde_json::Value = serde_json::from_str(&text).unwrap_or(json!(text));
            let shown = if text.ends_with('\n') { text.clone() } else { format!("{text}\n") };
            emit(output, &json!({"pass": a.pass, "digest": a.digest, "content": content}), &shown);
            Ok(())
        }
    }
}
