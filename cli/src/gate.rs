//! `qm gate approve|reject`: its arguments and handler. A human decides a pass waiting for
//! one: a human gate, or a spend approval at a budget's `at` threshold.

use clap::Subcommand;
use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use serde_json::json;

use crate::job::job_id;
use crate::reserve::emit;
use crate::{status_failure, Failure, Output};

#[derive(Subcommand, Debug)]
pub enum GateCommand {
    /// Pass the gate (or approve the spend) of PASS of work item ID
    Approve {
        #[command(flatten)]
        decision: Decision,
    },
    /// Fail the gate (its on_fail applies) or refuse the spend (the work item fails)
    Reject {
        #[command(flatten)]
        decision: Decision,
    },
}

/// The pass a decision is about, and its note.
#[derive(clap::Args, Debug)]
pub struct Decision {
    /// The work item (`j7` or `7`)
    id: String,
    /// The pass whose gate (or spend approval) is decided, as `qm job show` names it
    pass: String,
    /// Why, recorded with the decision and shown in `qm job show`
    #[arg(long, default_value = "")]
    note: String,
}

/// `qm gate …`.
pub async fn dispatch(command: GateCommand, client: &Client, output: Output) -> Result<(), Failure> {
    match command {
        GateCommand::Approve { decision: Decision { id, pass, note } } => {
            decide(client, &id, pass, true, note, output).await
        }
        GateCommand::Reject { decision: Decision { id, pass, note } } => {
            decide(client, &id, pass, false, note, output).await
        }
    }
}

/// Approves or rejects PASS of work item `id`, recorded under the caller's token name.
async fn decide(
    client: &Client,
    id: &str,
    pass: String,
    approve: bool,
    note: String,
    output: Output,
) -> Result<(), Failure> {
    let job_id = job_id(id)?;
    let req = pb::DecideGateRequest { job_id, pass, approve, note, by: String::new() };
    let ack = client.decide_gate(req).await.map_err(status_failure)?;
    emit(output, &json!({"job_id": ack.job_id, "message": ack.message}), &format!("{}\n", ack.message));
    Ok(())
}
