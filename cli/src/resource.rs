//! `qm resource declare`: its arguments and handler. Resource declarations: capacity and
//! priority-inversion policy.

use clap::Subcommand;
use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use serde_json::json;

use crate::reserve::emit;
use crate::{status_failure, Failure, Output};

#[derive(Subcommand, Debug)]
pub enum ResourceCommand {
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

/// `qm resource …`.
pub async fn dispatch(command: ResourceCommand, client: &Client, output: Output) -> Result<(), Failure> {
    match command {
        ResourceCommand::Declare { path, capacity, policy, grace_ms } => {
            declare(client, path, capacity, &policy, grace_ms, output).await
        }
    }
}

/// `qm resource declare`: declares `path` with its capacity, policy and preemption grace.
async fn declare(
    client: &Client,
    path: String,
    capacity: Option<u32>,
    policy: &str,
    grace_ms: u64,
    output: Output,
) -> Result<(), Failure> {
    let policy = match policy {
        "preempt" => pb::ResourcePolicy::Preempt,
        "inherit" => pb::ResourcePolicy::Inherit,
        _ => pb::ResourcePolicy::None,
    } as i32;
    let req = pb::DeclareResourceRequest { path: path.clone(), capacity, policy, grace_ms };
    let resp = client.declare_resource(req).await.map_err(status_failure)?;
    emit(output, &json!({"path": path, "index": resp.index}), &format!("{path} declared (index {})\n", resp.index));
    Ok(())
}
