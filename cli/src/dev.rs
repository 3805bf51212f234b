//! `qm dev`: its arguments and handler. A single-node coordinator on an embedded sled
//! directory, a demo played against it over real gRPC, then serving until Ctrl-C.

use std::path::PathBuf;

use qm_coordinator::node::NodeConfig;
use qm_coordinator::server;
use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use qm_shared::Role;

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
    /// Data directory, kept as it is. [default: $XDG_STATE_HOME/qm/dev-<port> (else
    /// ~/.local/state/qm/dev-<port>), emptied at every start unless --keep-state]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Start from the default data directory's state of the last run instead of afresh.
    #[arg(long)]
    keep_state: bool,
    /// Skip the demo.
    #[arg(long)]
    no_demo: bool,
    /// Stop after the demo instead of serving (for scripts and CI).
    #[arg(long)]
    exit_after_demo: bool,
    /// The in-process worker's executors, as `qm worker run` takes them (the demo needs only
    /// `scripted`; `--enable-executor command` lets `qm task submit --cmd` run here).
    #[command(flatten)]
    exec: crate::worker::ExecArgs,
}

/// The dev admin token's file in the data directory.
const DEV_TOKEN_FILE: &str = "admin.token";

/// The dev cluster's admin secret: kept in its data directory, so a restart on the same
/// directory (already bootstrapped with it) keeps working; made on first start.
fn dev_admin_secret(dir: &std::path::Path) -> Result<String, Failure> {
    let path = dir.join(DEV_TOKEN_FILE);
    if path.exists() {
        return crate::config::read_secret_file("dev admin token", &path);
    }
    let secret = qm_coordinator::api::auth::new_secret().map_err(|e| Failure::error(e.to_string()))?;
    crate::config::write_secret_file(&path, &secret)
        .map_err(|e| Failure::error(format!("writing {}: {e}", path.display())))?;
    Ok(secret)
}

/// The per-user data directory of `qm dev` on `listen`, emptied unless `keep` (each run
/// starts afresh, so the demo and its ids read as the README says). Refuses while the port
/// is taken, which also keeps it from emptying the directory of a `qm dev` still running.
fn default_data_dir(listen: std::net::SocketAddr, keep: bool) -> Result<PathBuf, Failure> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join("qm").join(format!("dev-{}", listen.port()));
    if let Err(e) = std::net::TcpListener::bind(listen) {
        return Err(Failure::error(format!(
            "--listen {listen}: {e} (is another `qm dev` running? stop it, or give --listen and --admin-listen)"
        )));
    }
    if !keep && dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Failure::error(format!("emptying {}: {e}", dir.display())))?;
    }
    Ok(dir)
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
    let exec = crate::worker::exec_config(args.exec, "dev-worker", Default::default())?;
    let dir = match args.data_dir {
        Some(dir) => dir,
        None => default_data_dir(listen, args.keep_state)?,
    };
    let secret = dev_admin_secret(&dir)?;
    let mut config = NodeConfig::single(1, String::new(), Some(dir.clone()));
    config.initial_admin_hash = Some(qm_coordinator::api::auth::hash_secret(&secret));
    let running = server::start(config, listen, None, Some(admin)).await.map_err(|e| Failure::error(e.to_string()))?;
    eprintln!(
        "qm dev: single-node coordinator; gRPC on {}, admin HTTP on http://{}, data in {}",
        running.bound.grpc,
        running.bound.admin.map_or("-".into(), |a| a.to_string()),
        dir.display()
    );
    let endpoint = running.bound.grpc.to_string();
    let client = Client::new([endpoint.as_str()])
        .and_then(|c| c.with_token(&secret))
        .map_err(|e| Failure::usage(e.to_string()))?;
    // The node bootstraps access control with the dev admin token once it leads.
    let bootstrapped = tokio::time::timeout(Duration::from_secs(10), async {
        // Raft's metrics change with every applied entry.
        let mut metrics = running.node.raft.metrics();
        while !running.node.shared.read(|d| d.state.acl().bootstrapped()) {
            if metrics.changed().await.is_err() {
                return false;
            }
        }
        true
    })
    .await;
    if !matches!(bootstrapped, Ok(true)) {
        return Err(Failure::error("qm dev: the node did not bootstrap access control within 10 s"));
    }
    match crate::config::token_path(&endpoint) {
        Some(path) => {
            crate::config::write_secret_file(&path, &secret)
                .map_err(|e| Failure::error(format!("writing the dev admin token to {}: {e}", path.display())))?;
            eprintln!(
                "qm dev: access control is on; the admin token is in {} (0600), where `qm` finds it for {endpoint}",
                path.display()
            );
        }
        None => eprintln!(
            "qm dev: access control is on; export QM_TOKEN=$(cat {}) to use the CLI",
            dir.join(DEV_TOKEN_FILE).display()
        ),
    }
    eprintln!("qm dev: plaintext on loopback; a shared network needs TLS and tokens: see docs/security.md");
    // The worker part: an in-process worker with scripted agents, on the same gRPC port.
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = {
        let config = qm_worker::runtime::WorkerConfig {
            node_id: "dev-worker".into(),
            // Implementers and a verifier for the agents demo; one of every other role too, so
            // the built-in workflows run end to end.
            slots: Role::ALL.into_iter().map(|r| (r, if r == Role::Implementer { 2 } else { 1 })).collect(),
            labels: Default::default(),
            session_ttl_ms: 10_000,
            blocked_after_ms: 1_000,
            providers: Vec::new(),
            gpus: Vec::new(),
            exec,
        };
        let client = client.clone();
        tokio::spawn(async move {
            let _ = qm_worker::runtime::run(client, config, async {
                let _ = worker_stopped.await;
            })
            .await;
        })
    };
    if !args.no_demo {
        STORY_ON_STDERR.store(output == Output::Json, Ordering::Relaxed);
        demo(&client, output).await?;
        agents_demo(&client, output).await?;
        jobs_demo(&client).await?;
        eprintln!("{REAL_AGENTS_HINT}");
    }
    if !args.exit_after_demo {
        // Only commands that work on what is there: without the demo, no project is applied yet.
        let jobs = if args.no_demo {
            "`qm project apply --demo`, then `qm job submit --title T --team platform --project demo --workflow docs --wait`"
        } else {
            "`qm job submit --title T --team platform --project demo --workflow docs --wait`, `qm cost report --by pass`"
        };
        eprintln!(
            "qm dev: serving; try `qm reserve acquire pg:staging --mode exclusive`, `qm graph`, {jobs}; Ctrl-C stops"
        );
        crate::coordinator::wait_for_signal().await;
    }
    let _ = stop_worker.send(());
    let _ = worker.await;
    running.shutdown().await;
    Ok(())
}

/// How to run the same kind of work with real agents: the one worker command and the one
/// submission (docs/agents.md).
const REAL_AGENTS_HINT: &str =
    "qm dev: the demo's agents are scripted; for real ones in your repository, run a worker \
     `qm worker run --slots implementer=1 --slots verifier=1 --slots analyst=1 --enable-executor agent \
     --enable-executor command --repo app=<your repo URL> --provider anthropic=anthropic:https://api.anthropic.com \
     --provider-key-env anthropic=ANTHROPIC_API_KEY` and submit `qm job submit --workflow ticket --title T --team \
     platform --project demo --input ticket=\"…\" --input test=\"make test\" --wait` (docs/agents.md)";

/// Whether the demo tells its story on stderr: only under `-o json`, so that stdout holds
/// JSON alone. Otherwise the story, its tables and its progress are one stream on stdout
/// (`qm dev > demo.log` keeps all of it), and logs go to stderr.
static STORY_ON_STDERR: AtomicBool = AtomicBool::new(false);

/// One line of the demo's story.
fn say(line: impl std::fmt::Display) {
    if STORY_ON_STDERR.load(Ordering::Relaxed) {
        eprintln!("{line}");
    } else {
        crate::print_stdout(&format!("{line}\n"));
    }
}

/// Whether the story goes to a terminal: then progress is shown decile by decile; otherwise
/// (a file, a pipe, CI) only when a task starts, blocks, is preempted, resumes or ends.
fn live() -> bool {
    use std::io::IsTerminal;
    if STORY_ON_STDERR.load(Ordering::Relaxed) {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    }
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
    let step = |s: &str| say(format!("\n== {s}"));
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
    say(format!("granted reservation {} on {} with fencing token {}", r.id, r.resource, r.fencing_token));
    step("verifier/WI-2 tries to read the whole database: refused, naming the holder");
    if let Outcome::Refused { text, .. } =
        reserve::acquire(client, &args("verifier/WI-2", bob, &["pg:staging"], pb::Mode::Shared, false)).await?
    {
        say(text);
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
    say("verifier/WI-2 waits in the queue, behind implementer/WI-1");
    step("the wait-for graph while it waits");
    crate::graph::show(client, String::new(), if output == Output::Json { Output::Json } else { Output::Table })
        .await?;
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
            say(format!(
                "verifier/WI-2 granted {} with fencing token {} (> {})",
                g.id, g.fencing_token, r.fencing_token
            ));
        }
        Outcome::Refused { text, .. } => say(text),
    }
    step("what is held now");
    reserve::list(client, pb::ListRequest::default(), output).await?;
    client.close_session(alice).await.map_err(status_failure)?;
    client.close_session(bob).await.map_err(status_failure)?;
    Ok(())
}

async fn submit(
    client: &Client,
    role: &str,
    resource: &str,
    priority: u32,
    ms: u64,
    work_item: &str,
) -> Result<u64, Failure> {
    submit_set(client, role, &[resource], priority, ms, work_item, false).await
}

async fn submit_set(
    client: &Client,
    role: &str,
    resources: &[&str],
    priority: u32,
    ms: u64,
    work_item: &str,
    incremental: bool,
) -> Result<u64, Failure> {
    let payload = serde_json::json!({"executor": "scripted", "duration_ms": ms, "steps": 20,
        "input_tokens_per_step": 400, "output_tokens_per_step": 60})
    .to_string();
    let req = pb::SubmitTaskRequest {
        role: role.into(),
        resources: resources
            .iter()
            .map(|r| pb::ResourceRequest { path: r.to_string(), mode: pb::Mode::Exclusive as i32, units: 0 })
            .collect(),
        payload: payload.into_bytes(),
        priority,
        work_item_id: work_item.into(),
        max_attempts: 3,
        timeout_ms: 0,
        incremental,
    };
    let resp = client.submit_task(req).await.map_err(status_failure)?;
    let how = if incremental { ", one at a time" } else { "" };
    say(format!(
        "submitted task {} ({role}, {work_item}, priority {priority}) needing {}{how}",
        resp.task_id,
        resources.join(" + ")
    ));
    Ok(resp.task_id)
}

async fn tasks(client: &Client) -> Result<Vec<pb::TaskInfo>, Failure> {
    let resp = client.list_tasks(pb::ListTasksRequest::default()).await.map_err(status_failure)?;
    Ok(resp.tasks)
}

/// Prints a line whenever a task's status, attempt or (on a terminal) progress decile changes.
fn progress(seen: &mut BTreeMap<u64, (String, u32, u32, String)>, all: &[pb::TaskInfo]) {
    let live = live();
    for t in all.iter().rev() {
        let decile = if live { t.percent_done / 10 } else { 0 };
        let now = (t.status.clone(), t.attempt, decile, t.blocked.clone());
        if seen.get(&t.task_id).is_some_and(|old| old.3 != t.blocked && !t.blocked.is_empty())
            || (!seen.contains_key(&t.task_id) && !t.blocked.is_empty())
        {
            say(format!("  task {:<3} {:<12} blocked: {}", t.task_id, t.work_item_id, t.blocked));
        }
        if seen.get(&t.task_id) != Some(&now) {
            let bar: String = (0..10).map(|i| if i < t.percent_done / 10 { '#' } else { '.' }).collect();
            let on = if t.worker_node_id.is_empty() { String::new() } else { format!(" on {}", t.worker_node_id) };
            let resumed = t
                .attempts
                .last()
                .filter(|a| a.resumed_from_seq > 0)
                .map_or(String::new(), |_| " (resumed from its checkpoint)".to_string());
            say(format!(
                "  task {:<3} {:<12} {:<10} [{bar}] {:>3}%  attempt {}{on}{resumed}",
                t.task_id, t.work_item_id, t.status, t.percent_done, t.attempt
            ));
            seen.insert(t.task_id, now);
        }
    }
}

/// Agents contending for staging: a preemption with resume, then a summary.
async fn agents_demo(client: &Client, output: Output) -> Result<(), Failure> {
    say("\n== agents: an in-process worker hosts an agent of every role, two implementers (scripted executors)");
    let declare = pb::DeclareResourceRequest {
        path: "pg:staging".into(),
        capacity: None,
        policy: pb::ResourcePolicy::Preempt as i32,
        grace_ms: 5_000,
    };
    client.declare_resource(declare).await.map_err(status_failure)?;
    say("pg:staging declared with policy preempt (grace 5 s)");
    let feature = submit(client, "implementer", "pg:staging/table:orders", 100, 4_000, "WI-feature").await?;
    submit(client, "verifier", "pg:staging/table:users", 500, 2_000, "WI-verify").await?;
    submit(client, "implementer", "pg:staging/table:orders", 300, 1_500, "WI-refactor").await?;
    say("WI-refactor (priority 300) outranks WI-feature (100) on the orders table, and pg:staging preempts: \
         the feature checkpoints and yields at once, then resumes from its checkpoint after the refactor");
    let mut seen = BTreeMap::new();
    let mut hotfix = None;
    for _ in 0..240 {
        let all = tasks(client).await?;
        progress(&mut seen, &all);
        let f = all.iter().find(|t| t.task_id == feature);
        if hotfix.is_none() && f.is_some_and(|t| t.percent_done >= 40) {
            say("\n== a hotfix needs all of pg:staging while WI-feature is at 40%: the feature is preempted");
            hotfix = Some(submit(client, "implementer", "pg:staging", 900, 1_000, "WI-hotfix").await?);
        }
        if hotfix.is_some() && all.iter().all(|t| matches!(t.status.as_str(), "succeeded" | "failed" | "cancelled")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    replan_demo(client, &mut seen).await?;
    deadlock_demo(client, &mut seen).await?;
    say("\n== summary");
    let all = tasks(client).await?;
    let mut text = format!(
        "{:<5} {:<12} {:<12} {:<10} {:>8} {:>8}  {}\n",
        "TASK", "ROLE", "WORK ITEM", "STATUS", "TOK IN", "TOK OUT", "ATTEMPTS"
    );
    for t in all.iter().rev() {
        let u = t.usage.clone().unwrap_or_default();
        let attempts: Vec<String> = t
            .attempts
            .iter()
            .map(|a| {
                let resumed = if a.resumed_from_seq > 0 { " (resumed)" } else { "" };
                format!("#{} {}{resumed}", a.attempt, a.outcome)
            })
            .collect();
        text.push_str(&format!(
            "{:<5} {:<12} {:<12} {:<10} {:>8} {:>8}  {}\n",
            t.task_id,
            t.role,
            t.work_item_id,
            t.status,
            u.input_tokens,
            u.output_tokens,
            attempts.join(", ")
        ));
    }
    let value = serde_json::json!({ "tasks": all.iter().map(crate::task::info_json).collect::<Vec<_>>() });
    reserve::emit(output, &value, &text);
    Ok(())
}

/// Polls and prints progress until every task has ended (bounded: 30 s).
async fn until_all_end(client: &Client, seen: &mut BTreeMap<u64, (String, u32, u32, String)>) -> Result<(), Failure> {
    for _ in 0..300 {
        let all = tasks(client).await?;
        progress(seen, &all);
        if all.iter().all(|t| matches!(t.status.as_str(), "succeeded" | "failed" | "cancelled")) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Holds `resource` in a demo session (the "somebody else" of the story).
async fn hold(client: &Client, owner: &str, resource: &str) -> Result<(u64, u64), Failure> {
    let session = client.open_session(owner, 30_000).await.map_err(status_failure)?.session_id;
    match reserve::acquire(client, &args(owner, session, &[resource], pb::Mode::Exclusive, false)).await? {
        Outcome::Granted { reservations, .. } => Ok((session, reservations[0].id)),
        Outcome::Refused { text, .. } => Err(Failure::error(format!("demo: {text}"))),
    }
}

async fn let_go(client: &Client, (session, reservation): (u64, u64)) -> Result<(), Failure> {
    let target = Some(pb::release_request::Target::ReservationId(reservation));
    client.release(pb::ReleaseRequest { session_id: session, target }).await.map_err(status_failure)?;
    client.close_session(session).await.map_err(status_failure)?;
    Ok(())
}

/// Both implementer agents block on a GPU somebody else holds; they re-plan onto other work.
async fn replan_demo(client: &Client, seen: &mut BTreeMap<u64, (String, u32, u32, String)>) -> Result<(), Failure> {
    say("\n== re-plan: someone holds gpu:box-7; two training tasks need it; other work is ready");
    let gpu = hold(client, "ops/maintenance", "gpu:box-7").await?;
    submit(client, "implementer", "gpu:box-7", 500, 1_000, "WI-train-a").await?;
    submit(client, "implementer", "gpu:box-7", 500, 1_000, "WI-train-b").await?;
    // Let both agents wait past the blocked threshold, then offer other work.
    tokio::time::sleep(Duration::from_millis(300)).await;
    submit(client, "implementer", "repo:docs", 400, 800, "WI-docs").await?;
    submit(client, "implementer", "repo:lint", 400, 800, "WI-lint").await?;
    for _ in 0..60 {
        let all = tasks(client).await?;
        progress(seen, &all);
        let side_done = all
            .iter()
            .filter(|t| t.work_item_id == "WI-docs" || t.work_item_id == "WI-lint")
            .all(|t| t.status == "succeeded");
        if side_done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say("the blocked agents finished other work meanwhile; now the GPU frees up");
    let_go(client, gpu).await?;
    until_all_end(client, seen).await
}

/// Two agents lock as they go in opposite orders; the cycle is broken and both finish.
async fn deadlock_demo(client: &Client, seen: &mut BTreeMap<u64, (String, u32, u32, String)>) -> Result<(), Failure> {
    say("\n== deadlock: two tasks lock pg:a and pg:b one at a time, in opposite orders");
    let b = hold(client, "ops/backup", "pg:b").await?;
    let second = submit_set(client, "implementer", &["pg:b", "pg:a"], 500, 600, "WI-sync", true).await?;
    let first = submit_set(client, "implementer", &["pg:a", "pg:b"], 400, 600, "WI-migrate", true).await?;
    // WI-sync waits for pg:b; WI-migrate takes pg:a and queues for pg:b behind it.
    for _ in 0..50 {
        let list = client.list(pb::ListRequest::default()).await.map_err(status_failure)?;
        if list.reservations.iter().any(|r| r.owner == qm_shared::agent::task_owner(first)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    say(format!("pg:b is released to task {second}, which then needs pg:a, held by task {first}: a cycle"));
    let_go(client, b).await?;
    until_all_end(client, seen).await
}

/// Work items: the demo project, a team budget, a new feature through all seven passes (a
/// human gate approved on the way), its cost by pass, then an identical rerun served by the
/// artifact cache.
async fn jobs_demo(client: &Client) -> Result<(), Failure> {
    say("\n== work items: the demo project (team platform), a team budget, the new-feature workflow");
    let project = pb::ApplyProjectRequest { project_toml: qm_shared::workflow_file::DEMO_PROJECT.to_string() };
    client.apply_project(project).await.map_err(status_failure)?;
    let budget = pb::SetBudgetRequest {
        scope: "team".into(),
        name: "platform".into(),
        limit_micros: 5_000_000,
        period: "month".into(),
    };
    client.set_budget(budget).await.map_err(status_failure)?;
    say("project demo registered; team platform budget $5.00 a month");
    let args = crate::job::SubmitArgs {
        title: Some("Add CSV export to reports".into()),
        class: Some("feature".into()),
        team: Some("platform".into()),
        project: Some("demo".into()),
        workflow: Some("new-feature".into()),
        commit: Some("4f2a9c1".into()),
        inputs: vec!["ticket=Reports can be exported as CSV".into()],
        scripted_ms: 400,
        ..crate::job::SubmitArgs::default()
    };
    let req = crate::job::submit_request(&args)?;
    let run = |req: pb::SubmitJobRequest| async move {
        let id = client.submit_job(req).await.map_err(status_failure)?.job_id;
        let mut last = None;
        for _ in 0..600 {
            let j = client.get_job(pb::GetJobRequest { job_id: id }).await.map_err(status_failure)?;
            for e in crate::job::new_events(&j.events, &mut last) {
                say(crate::job::event_line(id, e));
            }
            if let Some(p) = j.passes.iter().find(|p| p.status == "awaiting-human") {
                say(format!("j{id} (the demo approves it, as `qm gate approve j{id} {}` would)", p.name));
                let d = pb::DecideGateRequest {
                    job_id: id,
                    pass: p.name.clone(),
                    approve: true,
                    note: "approved in the demo".into(),
                    by: String::new(),
                };
                client.decide_gate(d).await.map_err(status_failure)?;
            }
            if j.status != "running" {
                return Ok::<pb::JobInfo, Failure>(j);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Failure::error(format!("work item j{id} did not end within 60 s")))
    };
    let first = run(req.clone()).await?;
    say("\n== cost by pass (qm cost report --by pass)");
    for p in &first.passes {
        say(format!(
            "{:<14} {:<13} {:<9} {:<18} tokens in {:>6} out {:>6} {:>9}  {:.1}s",
            p.name,
            p.role,
            p.tier,
            p.model,
            p.input_tokens,
            p.output_tokens,
            qm_shared::workflow::dollars(p.cost_micros),
            p.wall_ms as f64 / 1000.0
        ));
    }
    say(format!("j{} {}: total {}", first.job_id, first.status, qm_shared::workflow::dollars(first.cost_micros)));
    say("\n== the same work item again: every pass reuses its cached artifact");
    let again = run(req).await?;
    let cached = again.passes.iter().filter(|p| p.status == "cached").count();
    say(format!(
        "j{} {}: {cached} of {} passes from the cache, cost {}, saved {}",
        again.job_id,
        again.status,
        again.passes.len(),
        qm_shared::workflow::dollars(again.cost_micros),
        qm_shared::workflow::dollars(again.saved_micros)
    ));
    Ok(())
}
