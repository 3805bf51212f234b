//! `qm graph`: its arguments and handler. The wait-for graph: who waits for whom, on what,
//! as a table, JSON or DOT.

use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use serde_json::json;

use crate::reserve::{emit, mode_name};
use crate::{print_stdout, status_failure, Failure, Output};

#[derive(clap::Args, Debug)]
pub struct GraphArgs {
    /// Only edges on resources at or below this path.
    #[arg(long, default_value = "")]
    pub prefix: String,
}

/// `qm graph`: the graph as a table, JSON or DOT.
pub async fn show(client: &Client, prefix: String, output: Output) -> Result<(), Failure> {
    let g = client.graph(pb::GraphRequest { resource_prefix: prefix }).await.map_err(status_failure)?;
    match output {
        Output::Dot => {
            let mut out = String::from("digraph waits_for {\n  rankdir=LR;\n");
            for n in &g.nodes {
                out.push_str(&format!(
                    "  \"{}@s{}\" [label=\"{}\\ns{} p{}\"];\n",
                    n.owner, n.session_id, n.owner, n.session_id, n.priority
                ));
            }
            for e in &g.edges {
                out.push_str(&format!(
                    "  \"{}\" -> \"{}\" [label=\"{} {}\"];\n",
                    node_name(&g, &e.from_owner),
                    node_name(&g, &e.to_owner),
                    mode_name(e.wanted_mode),
                    e.resource
                ));
            }
            out.push_str("}\n");
            print_stdout(&out);
        }
        Output::Json => {
            let value = json!({
                "index": g.index,
                "nodes": g.nodes.iter().map(|n| json!({"owner": n.owner, "session_id": n.session_id, "priority": n.priority, "blocking_reservation_ids": n.blocking_reservation_ids, "pending_request_id": n.pending.as_ref().map(|p| p.request_id)})).collect::<Vec<_>>(),
                "edges": g.edges.iter().map(|e| json!({"from": e.from_owner, "to": e.to_owner, "resource": e.resource, "request_id": e.request_id, "reservation_id": e.reservation_id, "wanted_mode": mode_name(e.wanted_mode), "held_mode": mode_name(e.held_mode)})).collect::<Vec<_>>(),
            });
            emit(output, &value, "");
        }
        Output::Table | Output::Csv => {
            let mut out = format!(
                "wait-for graph at index {}: {}, {}\n",
                g.index,
                crate::count(g.nodes.len(), "owner"),
                crate::count(g.edges.len(), "edge")
            );
            out.push_str(&format!(
                "{:<24} {:<24} {:<40} {:<10} {:<10}\n",
                "WAITER", "WAITS FOR", "RESOURCE", "WANTS", "HELD AS"
            ));
            for e in &g.edges {
                out.push_str(&format!(
                    "{:<24} {:<24} {:<40} {:<10} {:<10}\n",
                    e.from_owner,
                    e.to_owner,
                    e.resource,
                    mode_name(e.wanted_mode),
                    mode_name(e.held_mode)
                ));
            }
            print_stdout(&out);
        }
    }
    Ok(())
}

fn node_name(g: &pb::GraphResponse, owner: &str) -> String {
    g.nodes
        .iter()
        .find(|n| n.owner == owner)
        .map(|n| format!("{}@s{}", n.owner, n.session_id))
        .unwrap_or_else(|| owner.to_string())
}
