//! The audit log as an operator reads it: real `qm coordinator` processes, calls made over
//! gRPC and with the `qm` CLI, and `qm audit list` / `qm.v1.Audit/List` to see what each node
//! recorded — the principal, method, request and outcome, never a secret — within its bound
//! and across a restart.

use std::time::Duration;

use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use qm_tests::{eventually, Cluster};
use serde_json::Value;
use tonic::Code;

/// A one-node cluster, leading.
async fn cluster() -> Cluster {
    let c = Cluster::start(1, 10_000);
    c.leader(&[1]).await;
    c
}

/// Makes token `name` with `role` and the secret `secret` (empty: the cluster makes one);
/// returns a client carrying it and its secret.
async fn token(c: &Cluster, name: &str, role: pb::AclRole, secret: &str) -> (Client, String) {
    let info = pb::TokenInfo {
        name: name.into(),
        roles: vec![role as i32],
        path_prefixes: vec!["*".into()],
        teams: vec!["*".into()],
        priority_max: 500,
        ..Default::default()
    };
    let req = pb::CreateTokenRequest { token: Some(info), ttl_ms: 0, secret: secret.into() };
    let created = c.client().create_token(req).await.expect("create token");
    (c.client_with(&created.secret), created.secret)
}

/// Node `id`'s records that match `req` (asked with the admin token).
async fn audit(c: &Cluster, id: u64, req: pb::ListAuditRequest) -> pb::ListAuditResponse {
    c.client_of(id).list_audit(req).await.expect("list the audit log")
}

/// Every record node `id` keeps.
async fn everything(c: &Cluster, id: u64) -> pb::ListAuditResponse {
    audit(c, id, pb::ListAuditRequest { limit: qm_shared::limits::AUDIT_LIST_MAX, ..Default::default() }).await
}

/// The sequence number node `id`'s next record takes: what a test does is recorded from here
/// on (the harness's own start-up calls, refused until the cluster is bootstrapped, are
/// recorded before it).
async fn next_seq(c: &Cluster, id: u64) -> u64 {
    audit(c, id, pb::ListAuditRequest { limit: 1, ..Default::default() }).await.next_seq + 1
}

/// Waits (bounded) until node `id` has every record up to `seq` on disk.
async fn durable(c: &Cluster, id: u64, seq: u64) {
    eventually(&format!("node {id}'s audit records up to {seq} reaching the disk"), Duration::from_secs(10), || async {
        let now = audit(c, id, pb::ListAuditRequest { limit: 1, ..Default::default() }).await;
        if now.durable_seq >= seq {
            Ok(())
        } else {
            Err(format!("durable up to {}", now.durable_seq))
        }
    })
    .await
}

/// The one record of `records` for `method`.
fn only<'a>(records: &'a [pb::AuditRecord], method: &str) -> &'a pb::AuditRecord {
    let found: Vec<_> = records.iter().filter(|r| r.method == method).collect();
    assert_eq!(found.len(), 1, "records of {method}: {found:#?}");
    found[0]
}

/// The records `qm audit list ARGS… -o json` prints.
fn listed(c: &Cluster, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "list"];
    all.extend_from_slice(args);
    let out = c.qm_json(&all);
    out["records"].as_array().expect("records").clone()
}

fn denied<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>, code: Code) {
    match r {
        Ok(v) => panic!("{what}: allowed ({v:?}); expected {code:?}"),
        Err(s) => assert_eq!(s.code(), code, "{what}: {s:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_changes_are_recorded_with_principal_method_and_outcome_and_never_the_secret() {
    let c = cluster().await;
    let secret = format!("qm_{}", "5ec7e7".repeat(8));
    let (ci, _) = token(&c, "ci", pb::AclRole::Submitter, &secret).await;
    ci.who_am_i().await.expect("the token works");
    c.client().revoke_token("ci").await.expect("revoke");

    let log = audit(&c, 1, pb::ListAuditRequest { method: "Token".into(), ..Default::default() }).await;
    let created = only(&log.records, "/qm.v1.Acl/CreateToken");
    assert_eq!((created.principal.as_str(), created.outcome.as_str(), created.code), ("bootstrap-admin", "OK", 0));
    assert!(created.request.starts_with("name=\"ci\" roles=[\"submitter\"]"), "{}", created.request);
    assert!(created.request.ends_with("secret=given"), "{}", created.request);
    assert!(created.peer.starts_with("127.0.0.1:"), "{}", created.peer);
    assert_eq!(created.node_id, 1);
    let revoked = only(&log.records, "/qm.v1.Acl/RevokeToken");
    assert_eq!((revoked.principal.as_str(), revoked.request.as_str()), ("bootstrap-admin", "name=\"ci\""));
    assert!(revoked.seq > created.seq && revoked.at_ms >= created.at_ms);
    // WhoAmI is a read that succeeded: not recorded.
    assert!(everything(&c, 1).await.records.iter().all(|r| r.method != "/qm.v1.Acl/WhoAmI"));

    // Neither the new token's secret nor the admin's bearer token is anywhere: not in a
    // record, not in the files.
    durable(&c, 1, revoked.seq).await;
    let dir = c.dir.path().join("n1/audit");
    let files: String = std::fs::read_dir(&dir)
        .expect("the audit directory")
        .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("read a segment"))
        .collect();
    let records = format!("{:?}", everything(&c, 1).await.records);
    for (what, text) in [("the records", &records), ("the files", &files)] {
        assert!(!text.contains(&secret) && !text.contains(&c.token), "{what} hold a secret: {text}");
    }
    assert!(files.contains("/qm.v1.Acl/RevokeToken"), "the records are on disk: {files}");

    let cli = listed(&c, &["--method", "CreateToken"]);
    assert_eq!(cli.len(), 1, "{cli:#?}");
    assert_eq!(cli[0]["principal"], "bootstrap-admin");
    assert_eq!(cli[0]["node_id"], 1);
    assert_eq!(cli[0]["outcome"], "OK");
    assert!(cli[0]["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{cli:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_are_recorded_with_their_code_whether_auth_or_a_handler_refused() {
    let c = cluster().await;
    let start = next_seq(&c, 1).await;
    let none = c.client_with("");
    denied("list without a token", none.list(pb::ListRequest::default()).await, Code::Unauthenticated);
    let forged = c.client_with(&format!("qm_{}", "0".repeat(64)));
    denied("status with an unknown token", forged.status().await, Code::Unauthenticated);
    let (reader, _) = token(&c, "dash", pb::AclRole::Reader, "").await;
    denied("a reader revoking a token", reader.revoke_token("ci").await, Code::PermissionDenied);
    let (alice, _) = token(&c, "alice", pb::AclRole::Submitter, "").await;
    let (mallory, _) = token(&c, "mallory", pb::AclRole::Submitter, "").await;
    let session = alice.open_session("alice", 60_000).await.expect("open").session_id;
    let release =
        pb::ReleaseRequest { session_id: session, target: Some(pb::release_request::Target::ReservationId(9)) };
    denied("release on another's session", mallory.release(release).await, Code::PermissionDenied);
    // A stream the handler ends with a denial says so in its trailers.
    denied("keep another's session alive", mallory.keepalive(session).await, Code::PermissionDenied);

    let log = audit(&c, 1, pb::ListAuditRequest { denied_only: true, since_seq: start, ..Default::default() }).await;
    let rec = |method: &str| only(&log.records, method).clone();
    let list = rec("/qm.v1.Reservations/List");
    assert_eq!((list.principal.as_str(), list.outcome.as_str()), ("anonymous", "UNAUTHENTICATED"));
    assert_eq!(list.request, "", "the body of a call refused before it was read is not read");
    let status = rec("/qm.v1.Cluster/Status");
    assert_eq!((status.principal.as_str(), status.outcome.as_str()), ("unknown token", "UNAUTHENTICATED"));
    let revoke = rec("/qm.v1.Acl/RevokeToken");
    assert_eq!((revoke.principal.as_str(), revoke.code), ("dash", Code::PermissionDenied as i32));
    assert!(revoke.message.contains("rule role"), "{}", revoke.message);
    // The handler's own denial, seen in its answer.
    let stolen = rec("/qm.v1.Reservations/Release");
    assert_eq!((stolen.principal.as_str(), stolen.outcome.as_str()), ("mallory", "PERMISSION_DENIED"));
    assert!(stolen.message.contains("rule session-owner"), "{}", stolen.message);
    assert_eq!(stolen.request, format!("session_id={session} target=\"reservation 9\""));
    let kept = rec("/qm.v1.Sessions/Keepalive");
    assert_eq!((kept.principal.as_str(), kept.outcome.as_str()), ("mallory", "PERMISSION_DENIED"));
    assert!(kept.message.contains(&format!("session s{session} belongs to another")), "{}", kept.message);
    assert_eq!(log.records.len(), 5, "{:#?}", log.records);
    // Holder traffic that succeeded is not recorded.
    assert!(everything(&c, 1).await.records.iter().all(|r| r.principal != "alice"));

    let cli = listed(&c, &["--denied", "--principal", "mallory"]);
    let methods: Vec<&str> = cli.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(methods, vec!["/qm.v1.Reservations/Release", "/qm.v1.Sessions/Keepalive"]);
    let cli = listed(&c, &["--principal", "dash"]);
    assert_eq!(cli.iter().map(|r| r["outcome"].as_str().unwrap()).collect::<Vec<_>>(), vec!["PERMISSION_DENIED"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_cancel_is_recorded_and_a_submitters_own_is_not() {
    let c = cluster().await;
    let (ci, _) = token(&c, "ci", pb::AclRole::Submitter, "").await;
    let (ops, _) = token(&c, "ops", pb::AclRole::Operator, "").await;
    let task = pb::SubmitTaskRequest {
        role: "implementer".into(),
        resources: vec![pb::ResourceRequest { path: "pg:a".into(), mode: pb::Mode::Exclusive as i32, units: 0 }],
        payload: br#"{"executor":"scripted","duration_ms":100}"#.to_vec(),
        ..Default::default()
    };
    let mine = ci.submit_task(task.clone()).await.expect("submit").task_id;
    let theirs = ci.submit_task(task).await.expect("submit").task_id;
    ci.cancel_task(pb::CancelTaskRequest { task_id: mine }).await.expect("ci cancels its own");
    ops.cancel_task(pb::CancelTaskRequest { task_id: theirs }).await.expect("an operator cancels ci's");

    let cancels = audit(&c, 1, pb::ListAuditRequest { method: "/qm.v1.Tasks/".into(), ..Default::default() }).await;
    let cancel = only(&cancels.records, "/qm.v1.Tasks/Cancel");
    assert_eq!((cancel.principal.as_str(), cancel.outcome.as_str()), ("ops", "OK"));
    assert_eq!(cancel.request, format!("task_id={theirs}"));
    assert!(cancels.records.iter().all(|r| r.principal != "ci"), "{:#?}", cancels.records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_lists_the_audit_log_and_every_listing_is_recorded() {
    let c = cluster().await;
    let (reader, secret) = token(&c, "dash", pb::AclRole::Reader, "").await;
    let (operator, _) = token(&c, "ops", pb::AclRole::Operator, "").await;
    denied("a reader listing", reader.list_audit(pb::ListAuditRequest::default()).await, Code::PermissionDenied);
    denied("an operator listing", operator.list_audit(pb::ListAuditRequest::default()).await, Code::PermissionDenied);
    let (code, _, err) = c.qm_at_with(&secret, &["audit", "list"]);
    assert_eq!(code, 4, "the CLI exits 4 when refused: {err}");

    let too_many = pb::ListAuditRequest { limit: qm_shared::limits::AUDIT_LIST_MAX + 1, ..Default::default() };
    match c.client().list_audit(too_many).await {
        Err(s) => {
            assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
            assert!(s.message().starts_with("limit: 1001 is above the maximum 1000"), "{}", s.message());
        }
        Ok(r) => panic!("a limit past the bound was allowed: {r:?}"),
    }

    let first = audit(&c, 1, pb::ListAuditRequest { method: "/qm.v1.Audit/".into(), ..Default::default() }).await;
    let by = |r: &pb::AuditRecord| (r.principal.clone(), r.outcome.clone());
    assert_eq!(
        first.records.iter().map(by).collect::<Vec<_>>(),
        vec![
            ("dash".into(), "PERMISSION_DENIED".into()),
            ("ops".into(), "PERMISSION_DENIED".into()),
            ("dash".into(), "PERMISSION_DENIED".into()),
            ("bootstrap-admin".into(), "INVALID_ARGUMENT".into()),
        ]
    );
    assert_eq!(
        first.records[3].request,
        "since_ms=0 since_seq=0 principal=\"\" method=\"\" denied_only=false limit=1001"
    );
    // The listing just made is recorded too; the next listing shows it.
    let second = audit(&c, 1, pb::ListAuditRequest { since_seq: first.next_seq, ..Default::default() }).await;
    let own = only(&second.records, "/qm.v1.Audit/List");
    assert_eq!((own.principal.as_str(), own.outcome.as_str(), own.seq), ("bootstrap-admin", "OK", first.next_seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_since_and_principal_filters_select_records_by_time_and_name() {
    let c = cluster().await;
    let start = next_seq(&c, 1).await;
    let none = c.client_with("");
    for _ in 0..5 {
        denied("a call without a token", none.list(pb::ListRequest::default()).await, Code::Unauthenticated);
    }
    token(&c, "ci", pb::AclRole::Submitter, "").await;
    token(&c, "cd", pb::AclRole::Submitter, "").await;
    // Every listing is recorded too: leave those out when comparing, and what the harness
    // did before `start`.
    let calls = |args: &[&str]| -> Vec<Value> {
        let ours = |r: &Value| r["method"] != "/qm.v1.Audit/List" && r["seq"].as_u64().is_some_and(|s| s >= start);
        listed(&c, args).into_iter().filter(ours).collect()
    };
    let all = calls(&["--limit", "1000"]);
    assert_eq!(all.len(), 7, "{all:#?}");
    for pick in [0, 3, 6] {
        let at = all[pick]["at_ms"].as_u64().expect("at_ms");
        let since = all[pick]["time"].as_str().expect("time").to_string();
        let got = calls(&["--since", &since, "--limit", "1000"]);
        let want: Vec<Value> = all.iter().filter(|r| r["at_ms"].as_u64().unwrap() >= at).cloned().collect();
        assert_eq!(got, want, "--since {since}");
        assert_eq!(calls(&["--since", &at.to_string(), "--limit", "1000"]), got, "--since {at} (epoch ms)");
    }
    assert_eq!(calls(&["--since", "10m", "--limit", "1000"]), all, "every record is recent");
    assert!(listed(&c, &["--since", "2999-01-01T00:00:00Z"]).is_empty());
    let anonymous = calls(&["--principal", "anonymous"]);
    assert_eq!(anonymous.len(), 5);
    assert!(anonymous.iter().all(|r| r["outcome"] == "UNAUTHENTICATED"));
    let newest = calls(&["--principal", "anonymous", "--limit", "2"]);
    assert_eq!(newest, anonymous[3..].to_vec(), "the limit keeps the newest");
    let (code, _, err) = c.qm(&["audit", "list", "--since", "yesterday"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("RFC 3339"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_decision_is_recorded_under_the_approvers_name() {
    let mut c = Cluster::start(1, 10_000);
    c.spawn_worker("w1", &["architect=1"]);
    c.qm_json(&["project", "apply", "--demo"]);
    let flow = c.dir.path().join("one-gate.toml");
    std::fs::write(
        &flow,
        "name = \"one-gate\"\ndescription = \"One pass, then a human.\"\n\n[[pass]]\nname = \"design\"\n\
         role = \"architect\"\noutputs = [\"design.md\"]\n\n[pass.gate]\ncriteria = \"A human agrees.\"\n\
         reviewer = \"human\"\n",
    )
    .expect("write the workflow");
    let flow = flow.display().to_string();
    let submit = ["job", "submit", "--team", "platform", "--project", "demo", "--title", "t", "--workflow", &flow];
    let id = c.qm_json(&[&submit[..], &["--scripted-ms", "100"]].concat())["id"].as_str().expect("id").to_string();
    eventually("the pass awaiting a human", Duration::from_secs(60), || async {
        let j = c.qm_json(&["job", "show", &id]);
        let waiting = j["passes"].as_array().expect("passes").iter().any(|p| p["status"] == "awaiting-human");
        if waiting {
            Ok(())
        } else {
            Err(format!("{j:#}"))
        }
    })
    .await;
    let ana = c.qm_json(&["token", "create", "--name", "ana", "--role", "approver"]);
    let (code, _, err) = c.qm_at_with(ana["secret"].as_str().expect("secret"), &["gate", "approve", &id, "design"]);
    assert_eq!(code, 0, "{err}");

    let decided = only(&everything(&c, 1).await.records, "/qm.v1.Jobs/DecideGate").clone();
    assert_eq!((decided.principal.as_str(), decided.outcome.as_str()), ("ana", "OK"));
    let job = id.trim_start_matches('j');
    assert!(decided.request.starts_with(&format!("job_id={job} pass=\"design\" approve=true")), "{}", decided.request);
    let project = only(&everything(&c, 1).await.records, "/qm.v1.Jobs/ApplyProject").clone();
    assert_eq!(project.principal, "bootstrap-admin");
    assert!(project.request.contains("sha256="), "{}", project.request);
    // The job's own submission by the admin is not an operator act on others' work: only the
    // token created and the project applied are recorded besides the decision.
    let methods: Vec<String> = everything(&c, 1).await.records.into_iter().map(|r| r.method).collect();
    assert!(!methods.iter().any(|m| m == "/qm.v1.Jobs/Submit"), "{methods:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_only_its_newest_records_within_its_bound_and_keeps_them_across_a_restart() {
    let bound = qm_shared::limits::AUDIT_BYTES_MIN;
    let mut c = Cluster::start_with_flags(1, 10_000, &["--audit-bytes-max", &bound.to_string()]);
    c.leader(&[1]).await;
    let none = c.client_with("");
    for _ in 0..600 {
        denied("a call without a token", none.list(pb::ListRequest::default()).await, Code::Unauthenticated);
    }
    let before = everything(&c, 1).await;
    assert!(before.oldest_seq > 1, "the oldest records went: oldest {}", before.oldest_seq);
    let seqs: Vec<u64> = before.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (before.oldest_seq..before.next_seq).collect::<Vec<_>>(), "the newest, unbroken");
    assert_eq!(before.matched as usize, seqs.len());
    assert!(seqs.len() < 600, "{} records kept", seqs.len());

    let last = before.next_seq - 1;
    durable(&c, 1, last).await;
    let dir = c.dir.path().join("n1/audit");
    let on_disk: u64 =
        std::fs::read_dir(&dir).expect("dir").map(|e| e.expect("entry").metadata().expect("meta").len()).sum();
    assert!(on_disk <= bound, "{on_disk} bytes on disk, bound {bound}");

    c.kill(1);
    c.spawn(1, false);
    c.leader(&[1]).await;
    let after = everything(&c, 1).await;
    // The listings since `before` are records too, and may have pushed out one more segment.
    let range = |l: &pb::ListAuditResponse| {
        l.records.iter().filter(|r| r.seq >= after.oldest_seq && r.seq <= last).cloned().collect::<Vec<_>>()
    };
    assert_eq!(range(&after), range(&before), "the same records after a restart");
    assert!(
        range(&after).len() >= before.records.len() / 2,
        "{} of {} kept",
        range(&after).len(),
        before.records.len()
    );
    assert!(after.next_seq > last + 1, "numbering goes on: {} after {last}", after.next_seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_asks_every_member_and_names_one_that_does_not_answer() {
    let mut c = Cluster::start(3, 10_000);
    c.leader(&[1, 2, 3]).await;
    let none = c.client_with("");
    for id in 1..=3u64 {
        let pinned = none.pinned(&c.addrs[&id]).expect("a client of one node");
        denied("a call without a token", pinned.list(pb::ListRequest::default()).await, Code::Unauthenticated);
    }
    let nodes = |records: &[Value]| {
        let mut ids: Vec<u64> = records.iter().map(|r| r["node_id"].as_u64().expect("node_id")).collect();
        ids.sort_unstable();
        ids
    };
    // Only the calls above: the harness's start-up calls may have been refused too.
    let denials = listed(&c, &["--denied", "--principal", "anonymous"]);
    assert_eq!(nodes(&denials), vec![1, 2, 3], "{denials:#?}");
    let times: Vec<u64> = denials.iter().map(|r| r["at_ms"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "merged by time: {times:?}");
    assert_eq!(nodes(&listed(&c, &["--principal", "anonymous", "--node", "2"])), vec![2]);

    c.kill(3);
    let (code, out, err) = c.qm(&["audit", "list", "--principal", "anonymous"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("node 3 at"), "{err}");
    let out: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(nodes(out["records"].as_array().expect("records")), vec![1, 2]);
    let node3 = out["nodes"].as_array().expect("nodes").iter().find(|n| n["node_id"] == 3).cloned();
    assert!(node3.is_some_and(|n| n["error"].is_string()), "{out:#}");
}
