//! The trust boundary as an attacker meets it: real `qm coordinator` processes on loopback,
//! tokens made through the API, and every denial checked for its exact status, the rule it
//! names, and that nothing changed.

use std::time::Duration;

use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use qm_tests::{acquire_wait, eventually, Cluster};
use tonic::Code;

/// A one-node cluster, bootstrapped (its status answers the admin token) and leading.
async fn cluster() -> Cluster {
    let c = Cluster::start(1, 10_000);
    c.leader(&[1]).await;
    c
}

/// Grants of a token made for a test.
#[derive(Default)]
struct Grants<'a> {
    roles: &'a [pb::AclRole],
    teams: &'a [&'a str],
    prefixes: &'a [&'a str],
    priority_max: u32,
    nodes: &'a [&'a str],
    ttl_ms: u64,
}

/// Makes token `name` with `g` through the admin; returns a client carrying it.
async fn token(c: &Cluster, name: &str, g: Grants<'_>) -> Client {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    let info = pb::TokenInfo {
        name: name.into(),
        roles: g.roles.iter().map(|r| *r as i32).collect(),
        teams: strings(g.teams),
        path_prefixes: strings(g.prefixes),
        priority_max: g.priority_max,
        nodes: strings(g.nodes),
        ..Default::default()
    };
    let req = pb::CreateTokenRequest { token: Some(info), ttl_ms: g.ttl_ms, secret: String::new() };
    let created = c.client().create_token(req).await.expect("create token");
    c.client_with(&created.secret)
}

/// A submitter of team `platform` under `pg:team-a`, priority at most 500.
async fn submitter(c: &Cluster, name: &str) -> Client {
    let g = Grants {
        roles: &[pb::AclRole::Submitter],
        teams: &["platform"],
        prefixes: &["pg:team-a"],
        priority_max: 500,
        ..Default::default()
    };
    token(c, name, g).await
}

/// Asserts `r` failed with `code` and a message containing `names`.
fn denied<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>, code: Code, names: &str) {
    match r {
        Ok(v) => panic!("{what}: allowed ({v:?}); expected {code:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {s:?}");
            assert!(s.message().contains(names), "{what}: message {:?} does not name {names:?}", s.message());
        }
    }
}

fn acquire(session: u64, owner: &str, path: &str, priority: u32) -> pb::AcquireRequest {
    pb::AcquireRequest {
        session_id: session,
        owner: owner.into(),
        resources: vec![pb::ResourceRequest { path: path.into(), mode: pb::Mode::Exclusive as i32, units: 0 }],
        kind: pb::AcquireKind::Try as i32,
        priority,
        lease_ms: 60_000,
        wait_timeout_ms: None,
    }
}

async fn reservations(c: &Cluster) -> Vec<pb::Reservation> {
    c.client().list(pb::ListRequest::default()).await.expect("list").reservations
}

async fn token_names(c: &Cluster) -> Vec<String> {
    c.client().list_tokens().await.expect("list tokens").tokens.into_iter().map(|t| t.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_known_live_token_are_unauthenticated_and_change_nothing() {
    let c = cluster().await;
    let none = c.client_with("");
    denied("list without a token", none.list(pb::ListRequest::default()).await, Code::Unauthenticated, "no token");
    denied("open without a token", none.open_session("x", 10_000).await, Code::Unauthenticated, "no token");
    let forged = c.client_with("qm_0000000000000000000000000000000000000000000000000000000000000000");
    denied("open with an unknown token", forged.open_session("x", 10_000).await, Code::Unauthenticated, "unknown");
    denied("status with an unknown token", forged.status().await, Code::Unauthenticated, "unknown");

    let ci = submitter(&c, "ci").await;
    assert_eq!(ci.who_am_i().await.expect("whoami").name, "ci");
    c.client().revoke_token("ci").await.expect("revoke");
    denied("open with a revoked token", ci.open_session("x", 10_000).await, Code::Unauthenticated, "revoked");

    let short = Grants { roles: &[pb::AclRole::Reader], ttl_ms: 1_000, ..Default::default() };
    let brief = token(&c, "brief", short).await;
    brief.who_am_i().await.expect("a fresh token works");
    eventually("the short token expiring", Duration::from_secs(10), || async {
        match brief.who_am_i().await {
            Err(s) if s.code() == Code::Unauthenticated && s.message().contains("expired") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    assert!(reservations(&c).await.is_empty(), "no denied call opened or acquired anything");
    assert_eq!(token_names(&c).await, vec!["bootstrap-admin", "brief"]);
    let (code, _, err) = c.qm_at_with("", &["reserve", "list"]);
    assert_eq!(code, 4, "the CLI without a token exits 4: {err}");
    assert!(err.contains("no token"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_need_the_admin_role_and_bootstrap_happens_once() {
    let c = cluster().await;
    let ci = submitter(&c, "ci").await;
    let reader = token(&c, "dash", Grants { roles: &[pb::AclRole::Reader], ..Default::default() }).await;
    let before = c.client().status().await.expect("status");

    denied("a second bootstrap", c.client_with("").bootstrap("").await, Code::FailedPrecondition, "already");
    let req = pb::CreateTokenRequest {
        token: Some(pb::TokenInfo {
            name: "mine".into(),
            roles: vec![pb::AclRole::Admin as i32],
            ..Default::default()
        }),
        ..Default::default()
    };
    denied("a reader creating a token", reader.create_token(req.clone()).await, Code::PermissionDenied, "rule role");
    denied("a submitter creating a token", ci.create_token(req).await, Code::PermissionDenied, "rule role");
    denied("a submitter revoking a token", ci.revoke_token("dash").await, Code::PermissionDenied, "rule role");
    denied("a submitter listing tokens", ci.list_tokens().await, Code::PermissionDenied, "rule role");

    let learner = pb::AddLearnerRequest { node_id: 9, address: "127.0.0.1:1".into(), ..Default::default() };
    denied("AddLearner by a submitter", ci.add_learner(learner).await, Code::PermissionDenied, "rule role");
    let remove = pb::RemoveRequest { node_id: 1 };
    denied("Remove by a reader", reader.remove(remove).await, Code::PermissionDenied, "rule role");
    let transfer = pb::TransferLeaderRequest { to_node_id: Some(1) };
    denied("TransferLeader by a submitter", ci.transfer_leader(transfer).await, Code::PermissionDenied, "rule role");
    let snap = pb::SnapshotNowRequest::default();
    denied("SnapshotNow by a submitter", ci.snapshot_now(snap).await, Code::PermissionDenied, "rule role");
    let budget = pb::SetBudgetRequest {
        scope: "team".into(),
        name: "platform".into(),
        limit_micros: 1_000_000_000,
        period: "month".into(),
    };
    denied("a budget raised by a submitter", ci.set_budget(budget).await, Code::PermissionDenied, "rule role");
    let sched = c.client().get_scheduler().await.expect("scheduler");
    denied("the scheduler set by a submitter", ci.set_scheduler(sched).await, Code::PermissionDenied, "rule role");
    let declare = pb::DeclareResourceRequest { path: "gpu:box".into(), capacity: Some(2), ..Default::default() };
    denied(
        "a resource declared by a submitter",
        ci.declare_resource(declare).await,
        Code::PermissionDenied,
        "rule role",
    );

    let after = c.client().status().await.expect("status");
    let members =
        |s: &pb::StatusResponse| s.members.iter().map(|m| (m.node_id, m.address.clone(), m.role)).collect::<Vec<_>>();
    assert_eq!(members(&after), members(&before), "membership unchanged");
    assert!(c.client().list_budgets().await.expect("budgets").budgets.is_empty(), "no budget set");
    assert_eq!(c.client().get_scheduler().await.expect("scheduler"), sched, "scheduler unchanged");
    assert_eq!(token_names(&c).await, vec!["bootstrap-admin", "ci", "dash"], "tokens unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_answers_only_to_the_principal_that_opened_it() {
    let c = cluster().await;
    let alice = submitter(&c, "alice").await;
    let mallory = submitter(&c, "mallory").await;
    let session = alice.open_session("alice", 60_000).await.expect("open").session_id;
    let held = acquire_wait(&alice, session, "alice", "pg:team-a/table:orders").await.expect("acquire");

    let steal = acquire(session, "mallory", "pg:team-a/table:users", 500);
    denied("acquire on another's session", mallory.acquire(steal).await, Code::PermissionDenied, "session-owner");
    let release =
        pb::ReleaseRequest { session_id: session, target: Some(pb::release_request::Target::ReservationId(held.id)) };
    denied("release on another's session", mallory.release(release).await, Code::PermissionDenied, "session-owner");
    let extend = pb::ExtendRequest { session_id: session, reservation_id: held.id, lease_ms: 1_000 };
    denied("extend on another's session", mallory.extend(extend).await, Code::PermissionDenied, "session-owner");
    denied("keep another's session alive", mallory.keepalive(session).await, Code::PermissionDenied, "session-owner");
    denied("close another's session", mallory.close_session(session).await, Code::PermissionDenied, "session-owner");
    denied("a session that does not exist", mallory.close_session(session + 100).await, Code::NotFound, "unknown");

    let now = reservations(&c).await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!((now[0].id, now[0].expires_at_ms), (held.id, held.expires_at_ms));
    alice.keepalive(session).await.expect("the owner keeps its session");
    alice.close_session(session).await.expect("the owner closes its session");
    assert!(reservations(&c).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_prefixes_priority_ceilings_and_teams_bound_what_a_submitter_asks_for() {
    let c = cluster().await;
    let ci = submitter(&c, "ci").await;
    let s = ci.open_session("ci", 60_000).await.expect("open").session_id;
    for path in ["pg:team-b/table:orders", "pg:team-a2", "gpu:box-1"] {
        let r = ci.acquire(acquire(s, "ci", path, 500)).await;
        denied(&format!("acquire {path}"), r, Code::PermissionDenied, "rule path-prefix");
    }
    let r = ci.acquire(acquire(s, "ci", "pg:team-a/table:orders", 900)).await;
    denied("acquire above the ceiling", r, Code::PermissionDenied, "rule priority-ceiling");
    assert!(reservations(&c).await.is_empty(), "nothing granted");
    ci.acquire(acquire(s, "ci", "pg:team-a/table:orders", 500)).await.expect("inside the grants");

    let task = |path: &str, priority: u32| pb::SubmitTaskRequest {
        role: "implementer".into(),
        resources: vec![pb::ResourceRequest { path: path.into(), mode: pb::Mode::Exclusive as i32, units: 0 }],
        payload: br#"{"executor":"scripted","duration_ms":100}"#.to_vec(),
        priority,
        ..Default::default()
    };
    // Ad-hoc tasks belong to no team: only a submitter granted every team may submit them.
    denied(
        "an ad-hoc task by a team submitter",
        ci.submit_task(task("pg:team-a", 100)).await,
        Code::PermissionDenied,
        "rule team",
    );
    let any = Grants {
        roles: &[pb::AclRole::Submitter],
        teams: &["*"],
        prefixes: &["pg:team-a"],
        priority_max: 500,
        ..Default::default()
    };
    let ops = token(&c, "ops", any).await;
    denied(
        "a task above the ceiling",
        ops.submit_task(task("pg:team-a", 900)).await,
        Code::PermissionDenied,
        "rule priority-ceiling",
    );
    denied(
        "a task outside the prefixes",
        ops.submit_task(task("pg:prod", 100)).await,
        Code::PermissionDenied,
        "rule path-prefix",
    );
    let job = pb::SubmitJobRequest {
        title: "t".into(),
        class: "feature".into(),
        team: "web".into(),
        project: "demo".into(),
        workflow: "docs".into(),
        ..Default::default()
    };
    denied("a work item for another team", ci.submit_job(job.clone()).await, Code::PermissionDenied, "rule team");
    let hot = pb::SubmitJobRequest { team: "platform".into(), class: "incident".into(), ..job.clone() };
    denied("a work item above the ceiling", ci.submit_job(hot).await, Code::PermissionDenied, "rule priority-ceiling");

    let tasks = c.client().list_tasks(pb::ListTasksRequest::default()).await.expect("tasks").tasks;
    assert!(tasks.is_empty(), "{tasks:?}");
    let jobs = c.client().list_jobs(pb::ListJobsRequest::default()).await.expect("jobs").jobs;
    assert!(jobs.is_empty(), "{jobs:?}");

    // Another team's work item, submitted by an admin: the platform submitter may not cancel
    // or retry it, and it keeps running.
    c.qm_json(&["project", "apply", "--demo"]);
    let submitted =
        c.qm_json(&["job", "submit", "--title", "t", "--team", "web", "--project", "demo", "--workflow", "docs"]);
    let theirs = submitted["job_id"].as_u64().expect("an admin submits for web");
    let target = pb::JobRef { job_id: theirs };
    denied("cancelling another team's work item", ci.cancel_job(target).await, Code::PermissionDenied, "rule team");
    denied("retrying another team's work item", ci.retry_job(target).await, Code::PermissionDenied, "rule team");
    let still = c.client().get_job(pb::GetJobRequest { job_id: theirs }).await.expect("job");
    assert_eq!(still.status, "running", "nothing changed: {still:?}");
}

fn register(node_id: &str, session_id: u64) -> pb::WorkerMessage {
    pb::WorkerMessage {
        msg: Some(pb::worker_message::Msg::Register(pb::worker_message::Register {
            node_id: node_id.into(),
            roles: vec![pb::RoleSlots { role: "implementer".into(), slots: 1, ..Default::default() }],
            session_ttl_ms: 30_000,
            session_id,
            ..Default::default()
        })),
    }
}

/// The session id of a worker stream's `Registered`.
async fn registered(down: &mut tonic::Streaming<pb::CoordinatorMessage>) -> u64 {
    match down.message().await.expect("stream").expect("a first message").msg {
        Some(pb::coordinator_message::Msg::Registered(r)) => r.session_id,
        other => panic!("expected Registered, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_connects_only_as_its_granted_nodes_and_never_resumes_anothers_session() {
    let c = cluster().await;
    let g = |nodes| Grants {
        roles: &[pb::AclRole::Worker],
        nodes,
        prefixes: &["*"],
        priority_max: 1000,
        ..Default::default()
    };
    let w1 = token(&c, "box-1", g(&["box-1"])).await;
    let w2 = token(&c, "box-2", g(&["box-2"])).await;
    let ci = submitter(&c, "ci").await;

    denied(
        "a worker as a node it was not granted",
        w1.connect_worker(register("box-2", 0), 4).await.map(|_| ()),
        Code::PermissionDenied,
        "rule worker-node",
    );
    denied(
        "a submitter connecting a worker",
        ci.connect_worker(register("box-1", 0), 4).await.map(|_| ()),
        Code::PermissionDenied,
        "rule role",
    );
    let (mut down, _up) = w1.connect_worker(register("box-1", 0), 4).await.expect("box-1 connects");
    let session = registered(&mut down).await;
    let resume = w2.connect_worker(register("box-2", session), 4).await.map(|_| ());
    denied("resuming another worker's session", resume, Code::PermissionDenied, "session-owner");

    let workers = c.client().list_workers().await.expect("workers").workers;
    assert_eq!(
        workers.iter().map(|w| (w.node_id.as_str(), w.session_id)).collect::<Vec<_>>(),
        vec![("box-1", session)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_are_decided_by_approvers_under_their_own_name() {
    let c = cluster().await;
    let ci = submitter(&c, "ci").await;
    let alice = token(&c, "alice", Grants { roles: &[pb::AclRole::Approver], ..Default::default() }).await;
    let decide = |by: &str| pb::DecideGateRequest {
        job_id: 1,
        pass: "design".into(),
        approve: true,
        note: String::new(),
        by: by.into(),
    };
    denied("a gate decided by a submitter", ci.decide_gate(decide("")).await, Code::PermissionDenied, "rule role");
    denied(
        "a gate decided in another's name",
        alice.decide_gate(decide("bob")).await,
        Code::PermissionDenied,
        "rule gate-by",
    );
    // Past the rules, the core answers: there is no such work item.
    denied("a gate of an unknown item", alice.decide_gate(decide("alice")).await, Code::NotFound, "unknown");
    let jobs = c.client().list_jobs(pb::ListJobsRequest::default()).await.expect("jobs").jobs;
    assert!(jobs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_own_commands_cannot_be_proposed_from_outside() {
    use qm_shared::client::{Bearer, Connector, Transport};
    let c = cluster().await;
    let before = c.client().status().await.expect("status");
    // Under TLS (QM_TEST_TLS) the peer RPCs are shut to anything but a member node's
    // certificate, before the command is even looked at.
    let (scheme, connector, rule) = if c.tls {
        ("https", Connector::tls(c.client_tls(true)), "rule peer-certificate")
    } else {
        ("http", Connector::tcp(), "rule internal-command")
    };
    let ep = tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", c.addrs[&1])).expect("endpoint");
    let mut peer = pb::raft_peer_client::RaftPeerClient::new(Transport::new(connector.connect(ep), Bearer::default()));
    use qm_coordinator::state::Command;
    for command in [Command::RestartLeases, Command::Tick, Command::SpaceMeasured { bytes: u64::MAX, quota: 16_384 }] {
        let bytes = qm_coordinator::raft::network::to_bytes(&command);
        let r = peer.propose(pb::ProposeRequest { command: bytes }).await;
        denied(&format!("Propose {command:?}"), r, Code::PermissionDenied, rule);
    }
    let after = c.client().status().await.expect("status");
    assert_eq!(after.term, before.term, "no restart was forced");
}

/// A node whose cluster has not bootstrapped yet (here it never can: its two peers never
/// start) tells a caller with the configured first admin token to retry, and any other
/// token that it is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_first_admin_token_is_retried_until_the_cluster_has_applied_it() {
    let dir = tempfile::tempdir().expect("dir");
    let secret = qm_tests::random_secret();
    let secret_file = dir.path().join("admin.secret");
    std::fs::write(&secret_file, &secret).expect("secret");
    let addrs: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", qm_tests::free_port())).collect();
    let peers = format!("1={},2={},3={}", addrs[0], addrs[1], addrs[2]);
    let mut node = std::process::Command::new(qm_tests::qm_bin())
        .args(["coordinator", "run", "--id", "1", "--listen", &addrs[0], "--admin-listen", "", "--peers", &peers])
        .arg("--data-dir")
        .arg(dir.path().join("d1"))
        .arg("--initial-admin-token-file")
        .arg(&secret_file)
        .env("QM_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start node 1");
    let qm = |token: &str| {
        let out = std::process::Command::new(qm_tests::qm_bin())
            .args(["cluster", "status", "--endpoint", &addrs[0]])
            .env("QM_TOKEN", token)
            .env("XDG_CONFIG_HOME", dir.path())
            .output()
            .expect("run qm");
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // Until node 1 listens nothing answers at all; then the answers below, every time.
    let (code, err) = eventually("node 1 listens", Duration::from_secs(30), || async {
        let (code, err) = qm(&secret);
        if err.contains("no coordinator is listening") {
            Err(err)
        } else {
            Ok((code, err))
        }
    })
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("access control is being bootstrapped"), "retry, not unknown: {err}");
    let (code, err) = qm(&qm_tests::random_secret());
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("unknown or revoked token"), "{err}");
    node.kill().expect("kill node 1");
    node.wait().expect("reap node 1");
}

/// With `--write-rate-per-principal 4/m`, a principal's fifth write within 15 s is refused
/// with RESOURCE_EXHAUSTED naming the rule and when to retry, and changes nothing; another
/// principal and reads are not held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_over_its_write_rate_is_refused_and_nothing_changes() {
    let c = Cluster::start_with_flags(1, 10_000, &["--write-rate-per-principal", "4/m"]);
    c.leader(&[1]).await;
    let ci = c.qm_json(&["token", "create", "--name", "ci", "--role", "submitter", "--path-prefix", "pg:ci"]);
    let secret = ci["secret"].as_str().expect("secret").to_string();
    // `qm reserve acquire` writes twice: it opens a session, then acquires.
    for i in 0..2 {
        let (code, _, err) = c.qm_at_with(&secret, &["reserve", "acquire", &format!("pg:ci/table:t{i}")]);
        assert_eq!(code, 0, "writes {} and {} are within the burst: {err}", 2 * i + 1, 2 * i + 2);
    }
    let before = c.qm_json(&["reserve", "list"]);
    let (code, out, err) = c.qm_at_with(&secret, &["reserve", "acquire", "pg:ci/table:t2"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ResourceExhausted") && err.contains("rule write-rate"), "{err}");
    assert!(err.contains("principal \"ci\"") && err.contains("retry in"), "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).expect("json")["error"]["kind"], "error");
    let after = c.qm_json(&["reserve", "list"]);
    assert_eq!(before["reservations"], after["reservations"], "nothing changed");
    let (code, _, err) = c.qm_at_with(&secret, &["reserve", "list"]);
    assert_eq!(code, 0, "reads are not rate-limited: {err}");
    c.qm_json(&["reserve", "acquire", "pg:admin"]);
    // The refusal is a denial in the node's audit log.
    let denied = c.qm_json(&["audit", "list", "--denied", "--principal", "ci"]);
    let records = denied["records"].as_array().expect("records");
    assert!(
        records.iter().any(|r| r["message"].as_str().is_some_and(|m| m.starts_with("rule write-rate"))),
        "{denied:#}"
    );
}

/// The storage alarm (NOSPACE) against a real node: with `--state-bytes-max 16384`, filling
/// the state past it raises the alarm (in `qm cluster status`); then an acquire is refused
/// with RESOURCE_EXHAUSTED naming the alarm and the quota, and changes nothing, while
/// releases still work; once the state is back under 90% of the quota the alarm clears by
/// itself and acquires work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nospace_alarm_refuses_growth_allows_release_and_clears() {
    let quota = 16_384u64;
    let c = Cluster::start_with_flags(1, 10_000, &["--state-bytes-max", &quota.to_string()]);
    c.leader(&[1]).await;
    let status = || async { c.qm_json(&["cluster", "status"]) };
    // Sets of 32 long paths until the state is measured over the quota (each set adds a few
    // KiB; the alarm may refuse the last ones).
    let mut held: Vec<(u64, u64)> = Vec::new();
    for set in 0..12 {
        let paths: Vec<String> = (0..32).map(|i| format!("pg:nospace/table:{}-{set}-{i}", "t".repeat(48))).collect();
        let mut args = vec!["reserve", "acquire"];
        args.extend(paths.iter().map(String::as_str));
        let (code, out, err) = c.qm(&args);
        if code != 0 {
            assert!(err.contains("alarm NOSPACE"), "set {set}: {err}");
            break;
        }
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let session = v["session_id"].as_u64().expect("session");
        for r in v["reservations"].as_array().expect("reservations") {
            held.push((session, r["id"].as_u64().expect("id")));
        }
    }
    let raised = eventually("the alarm raised", Duration::from_secs(30), || async {
        let s = status().await;
        if s["nospace_alarm"] == true {
            Ok(s)
        } else {
            Err(format!("state {} of {quota} bytes, no alarm", s["state_bytes"]))
        }
    })
    .await;
    assert!(raised["state_bytes"].as_u64().expect("bytes") > quota, "{raised:#}");
    assert_eq!(raised["state_bytes_max"].as_u64(), Some(quota));
    let (code, out, _) = c.qm(&["cluster", "status", "-o", "table"]);
    assert_eq!(code, 0);
    assert!(out.contains("ALARM NOSPACE"), "{out}");

    // Growth is refused, naming the alarm and the quota, and nothing changes.
    let before = c.qm_json(&["reserve", "list"]);
    let (code, out, err) = c.qm(&["reserve", "acquire", "pg:nospace/table:one-more"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ResourceExhausted") && err.contains("alarm NOSPACE"), "{err}");
    assert!(err.contains(&format!("over its quota of {quota}")) && err.contains("limits.state_bytes_max"), "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).expect("json")["error"]["kind"], "error");
    assert_eq!(before["reservations"], c.qm_json(&["reserve", "list"])["reservations"], "nothing changed");

    // Releases work while the alarm is raised.
    for (session, id) in &held {
        c.qm_json(&["reserve", "release", &format!("r{id}"), "--session", &format!("s{session}")]);
    }
    assert!(c.qm_json(&["reserve", "list", "--prefix", "pg:nospace"])["reservations"]
        .as_array()
        .expect("list")
        .is_empty());
    // Back under 90% of the quota: the alarm clears by itself, and growth works again.
    eventually("the alarm cleared", Duration::from_secs(30), || async {
        let s = status().await;
        if s["nospace_alarm"] == false {
            Ok(())
        } else {
            Err(format!("state {} of {quota} bytes, alarm raised", s["state_bytes"]))
        }
    })
    .await;
    let again = c.qm_json(&["reserve", "acquire", "pg:nospace/table:one-more"]);
    assert_eq!(again["status"], "granted");
}

/// With `qm scheduler set --claims-per-principal-max 2`, a principal holding two resources
/// is refused a third with RESOURCE_EXHAUSTED naming it and the bound, and nothing changes;
/// another principal is not held back; a release makes room. A bound above the most allowed
/// is a usage error naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_over_its_claims_quota_is_refused_and_nothing_changes() {
    let c = Cluster::start_with_flags(1, 10_000, &[]);
    c.leader(&[1]).await;
    let (code, _, err) = c.qm(&["scheduler", "set", "--claims-per-principal-max", "100001"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("claims_per_principal_max") && err.contains("100000"), "{err}");
    let set = c.qm_json(&["scheduler", "set", "--claims-per-principal-max", "2"]);
    assert_eq!(set["claims_per_principal_max"], 2, "{set}");
    let ci = c.qm_json(&["token", "create", "--name", "ci", "--role", "submitter", "--path-prefix", "pg:ci"]);
    let secret = ci["secret"].as_str().expect("secret").to_string();
    let (code, out, err) = c.qm_at_with(&secret, &["reserve", "acquire", "pg:ci/table:a", "pg:ci/table:b"]);
    assert_eq!(code, 0, "{err}");
    let held: serde_json::Value = serde_json::from_str(&out).expect("json");
    let before = c.qm_json(&["reserve", "list"]);
    let (code, _, err) = c.qm_at_with(&secret, &["reserve", "acquire", "pg:ci/table:c"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ResourceExhausted"), "{err}");
    assert!(err.contains("reservations held and waited for by principal \"ci\": at most 2"), "{err}");
    assert_eq!(before["reservations"], c.qm_json(&["reserve", "list"])["reservations"], "nothing changed");
    c.qm_json(&["reserve", "acquire", "pg:admin/table:a", "pg:admin/table:b"]);
    let (session, id) = (held["session_id"].as_u64().expect("session"), held["id"].as_u64().expect("id"));
    let (code, _, err) =
        c.qm_at_with(&secret, &["reserve", "release", &format!("r{id}"), "--session", &format!("s{session}")]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = c.qm_at_with(&secret, &["reserve", "acquire", "pg:ci/table:c"]);
    assert_eq!(code, 0, "a release made room: {err}");
}
