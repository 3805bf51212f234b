//! `qm dev`: a single-node coordinator on an embedded sled directory, a demo played against
//! it over real gRPC, then serving until Ctrl-C.

use std::path::PathBuf;

use qm_coordinator::node::NodeConfig;
use qm_coordinator::server;
use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;

use crate::reserve::{self, AcquireArgs, Outcome};
use crate::{status_failure, Failure, Output};

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    /// Admin HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:7080")]
    admin_listen: String,
    /// Data directory. [default: <temp dir>/qm-dev-<port>]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Skip the demo.
    #[arg(long)]
    no_demo: bool,
    /// Stop after the demo instead of serving (for scripts and CI).
    #[arg(long)]
    exit_after_demo: bool,
}

pub async fn run(args: DevArgs, output: Output) -> Result<(), Failure> {
    let listen: std::net::SocketAddr = args
        .listen
        .parse()
        .map_err(|_| Failure::usage(format!("--listen {:?}: not an ip:port address", args.listen)))?;
    let admin: std::net::SocketAddr = args
        .admin_listen
        .parse()
        .map_err(|_| Failure::usage(format!("--admin-listen {:?}: not an ip:port address", args.admin_listen)))?;
    let dir = args.data_dir.unwrap_or_else(|| std::env::temp_dir().join(format!("qm-dev-{}", listen.port())));
    let config = NodeConfig::single(1, String::new(), Some(dir.clone()));
    let running = server::start(config, listen, Some(admin)).await.map_err(|e| Failure::error(e.to_string()))?;
    eprintln!(
        "qm dev: single-node coordinator; gRPC on {}, admin HTTP on http://{}, data in {}",
        running.bound.grpc,
        running.bound.admin.map_or("-".into(), |a| a.to_string()),
        dir.display()
    );
    let client = Client::new([running.bound.grpc.to_string()]).map_err(|e| Failure::usage(e.to_string()))?;
    let mut rx = running.node.raft.metrics();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        rx.wait_for(|m| m.current_leader.is_some()).await.is_ok()
    })
    .await;
    if !args.no_demo {
        demo(&client, output).await?;
    }
    if !args.exit_after_demo {
        eprintln!("qm dev: serving; try `qm reserve acquire pg:staging --mode exclusive`, `qm graph`; Ctrl-C stops");
        crate::coordinator::wait_for_signal().await;
    }
    running.shutdown().await;
    Ok(())
}

fn args(owner: &str, session: u64, resources: &[&str], mode: pb::Mode, wait: bool) -> AcquireArgs {
    AcquireArgs {
        resources: resources.iter().map(|s| s.to_string()).collect(),
        mode,
        wait,
        timeout_ms: Some(30_000),
        lease_ms: 60_000,
        priority: 0,
        owner: owner.to_string(),
        session: Some(session),
        session_ttl_ms: 30_000,
    }
}

async fn demo(client: &Client, output: Output) -> Result<(), Failure> {
    let step = |s: &str| eprintln!("\n== {s}");
    let alice = client.open_session("implementer/WI-1", 30_000).await.map_err(status_failure)?.session_id;
    let bob = client.open_session("verifier/WI-2", 30_000).await.map_err(status_failure)?.session_id;
    step("implementer/WI-1 takes the orders table exclusively");
    let granted = match reserve::acquire(
        client,
        &args("implementer/WI-1", alice, &["pg:staging/table:orders"], pb::Mode::Exclusive, false),
    )
    .await?
    {
        Outcome::Granted { reservations, .. } => reservations,
        Outcome::Refused { text, .. } => return Err(Failure::error(format!("demo: {text}"))),
    };
    let r = &granted[0];
    eprintln!("granted reservation {} on {} with fencing token {}", r.id, r.resource, r.fencing_token);
    step("verifier/WI-2 tries to read the whole database: refused, naming the holder");
    if let Outcome::Refused { text, .. } =
        reserve::acquire(client, &args("verifier/WI-2", bob, &["pg:staging"], pb::Mode::Shared, false)).await?
    {
        eprintln!("{text}");
    }
    step("verifier/WI-2 queues for the table; implementer/WI-1 releases; the waiter is granted");
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move {
            reserve::acquire(&client, &args("verifier/WI-2", bob, &["pg:staging/table:orders"], pb::Mode::Shared, true))
                .await
        })
    };
    // Let the waiter queue before releasing, so the demo shows a grant from the queue.
    for _ in 0..50 {
        let list = client
            .list(pb::ListRequest { include_pending: true, ..Default::default() })
            .await
            .map_err(status_failure)?;
        if !list.pending.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    step("the wait-for graph while it waits");
    reserve::graph(client, String::new(), if output == Output::Json { Output::Json } else { Output::Table }).await?;
    client
        .release(pb::ReleaseRequest {
            session_id: alice,
            target: Some(pb::release_request::Target::ReservationId(r.id)),
        })
        .await
        .map_err(status_failure)?;
    match waiter.await.map_err(|e| Failure::error(e.to_string()))?? {
        Outcome::Granted { reservations, .. } => {
            let g = &reservations[0];
            eprintln!("verifier/WI-2 granted {} with fencing token {} (> {})", g.id, g.fencing_token, r.fencing_token);
        }
        Outcome::Refused { text, .. } => eprintln!("{text}"),
    }
    step("what is held now");
    reserve::list(client, pb::ListRequest::default(), output).await?;
    client.close_session(alice).await.map_err(status_failure)?;
    client.close_session(bob).await.map_err(status_failure)?;
    Ok(())
}
