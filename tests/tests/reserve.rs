//! `qm reserve` as a shell user meets it: real `qm` processes signalled the way a terminal
//! and a supervisor signal them. A queued request must never outlive the process that asked
//! for it, and a `reserve run` lease lives as long as its command.

use std::process::{Child, Stdio};
use std::time::Duration;

use qm_tests::{eventually, Cluster};
use serde_json::Value;

/// A one-node cluster, leading.
async fn cluster() -> Cluster {
    let c = Cluster::start(1, 10_000);
    c.leader(&[1]).await;
    c
}

/// Starts `qm ARGS…` as a child in a process group of its own (so a test can kill what it
/// started, grandchildren included) with its output captured.
fn spawn(c: &Cluster, args: &[&str]) -> Child {
    use std::os::unix::process::CommandExt;
    c.qm_command(args).process_group(0).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn qm")
}

/// Sends `signal` (a `kill -s` name) to process `pid`; a negative pid names a process group.
fn signal(pid: i64, signal: &str) {
    let status = std::process::Command::new("kill").args(["-s", signal, "--", &pid.to_string()]).status();
    assert!(status.expect("run kill").success(), "kill -s {signal} {pid}");
}

/// The owners of the requests waiting in the queue for `path`, in queue order.
fn waiting_on(c: &Cluster, path: &str) -> Vec<String> {
    let list = c.qm_json(&["reserve", "list", "--pending", "--prefix", path]);
    list["pending"]
        .as_array()
        .expect("pending")
        .iter()
        .map(|p| p["owner"].as_str().expect("owner").to_string())
        .collect()
}

/// Who holds `path` now.
fn holders_of(c: &Cluster, path: &str) -> Vec<String> {
    let list = c.qm_json(&["reserve", "list", "--prefix", path]);
    list["reservations"]
        .as_array()
        .expect("reservations")
        .iter()
        .map(|r| r["owner"].as_str().expect("owner").to_string())
        .collect()
}

/// Waits until `owners` wait for `path`, in this order.
async fn until_waiting(c: &Cluster, path: &str, owners: &[&str]) {
    eventually("the requests queue", Duration::from_secs(20), || async {
        let seen = waiting_on(c, path);
        if seen == owners {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await
}

/// Waits until `owner` holds `path`.
async fn until_held(c: &Cluster, path: &str, owner: &str) {
    eventually("the grant", Duration::from_secs(30), || async {
        let seen = holders_of(c, path);
        if seen == [owner] {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await
}

/// Waits for `child` to exit; its exit code and stdout.
async fn exit_of(child: Child) -> (i32, String) {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.expect("join").expect("wait");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn ctrl_c_on_a_queued_reserve_run_withdraws_it_and_the_next_waiter_is_served() {
    let c = cluster().await;
    let held = c.qm_json(&["reserve", "acquire", "pg:staging", "--owner", "holder"]);
    let run = spawn(&c, &["reserve", "run", "pg:staging", "--owner", "runner", "--", "true"]);
    until_waiting(&c, "pg:staging", &["runner"]).await;
    let next = spawn(&c, &["reserve", "acquire", "pg:staging", "--wait", "--owner", "next"]);
    until_waiting(&c, "pg:staging", &["runner", "next"]).await;

    signal(i64::from(run.id()), "INT");
    let (code, _) = exit_of(run).await;
    assert_eq!(code, 130, "interrupted: 128 + SIGINT");
    assert_eq!(waiting_on(&c, "pg:staging"), ["next"], "the interrupted request left the queue");

    let session = held["session_id"].as_u64().expect("session").to_string();
    let id = held["id"].as_u64().expect("id").to_string();
    c.qm_json(&["reserve", "release", &id, "--session", &session]);
    let (code, out) = exit_of(next).await;
    assert_eq!(code, 0, "the next waiter is granted: {out}");
    let granted: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(granted["status"], "granted");
    assert_eq!(holders_of(&c, "pg:staging"), ["next"]);
}

#[tokio::test]
async fn sigterm_on_a_queued_acquire_withdraws_it() {
    let c = cluster().await;
    c.qm_json(&["reserve", "acquire", "gpu:a100", "--owner", "holder"]);
    let waiter = spawn(&c, &["reserve", "acquire", "gpu:a100", "--wait", "--owner", "waiter"]);
    until_waiting(&c, "gpu:a100", &["waiter"]).await;
    signal(i64::from(waiter.id()), "TERM");
    let (code, _) = exit_of(waiter).await;
    assert_eq!(code, 143, "terminated: 128 + SIGTERM");
    assert!(waiting_on(&c, "gpu:a100").is_empty(), "nothing left in the queue");
    assert_eq!(holders_of(&c, "gpu:a100"), ["holder"], "the holder is untouched");
}

#[tokio::test]
async fn a_sigkilled_reserve_run_frees_its_lease_when_its_short_session_lapses() {
    let c = cluster().await;
    let run = spawn(
        &c,
        &["reserve", "run", "pg:orders", "--owner", "killed", "--session-ttl-ms", "2000", "--", "sleep", "120"],
    );
    until_held(&c, "pg:orders", "killed").await;
    signal(i64::from(run.id()), "KILL");
    // The lease's own length is the 5-minute default; the waiter's 60 s patience is served
    // only because the dead command's session lapses.
    let (code, out) =
        exit_of(spawn(&c, &["reserve", "acquire", "pg:orders", "--wait", "--timeout-ms", "60000", "--owner", "after"]))
            .await;
    signal(-i64::from(run.id()), "KILL");
    exit_of(run).await;
    assert_eq!(code, 0, "granted after the killed holder's session lapsed: {out}");
    assert_eq!(holders_of(&c, "pg:orders"), ["after"]);
}

#[tokio::test]
async fn sigterm_on_a_running_reserve_run_stops_its_command_then_releases() {
    let c = cluster().await;
    let run = spawn(&c, &["reserve", "run", "pg:reports", "--owner", "running", "--", "sleep", "600"]);
    until_held(&c, "pg:reports", "running").await;
    signal(i64::from(run.id()), "TERM");
    let (code, _) = exit_of(run).await;
    assert_eq!(code, 143, "the command was stopped by the SIGTERM passed on to it");
    assert!(holders_of(&c, "pg:reports").is_empty(), "released once the command exited");
}

/// An owner that already waits gets ALREADY_WAITING with the request it waits in as a field,
/// not only in the message, so a client can wait on it or withdraw it.
#[tokio::test]
async fn a_second_wait_by_the_same_owner_names_the_request_it_already_waits_in() {
    use qm_shared::pb::v1 as pb;
    let c = cluster().await;
    let client = c.client();
    let session = client.open_session("api", 10_000).await.expect("session").session_id;
    let acquire = |owner: &str, path: &str| qm_tests::exclusive_wait(session, owner, path);
    use pb::acquire_response::Outcome;
    let held = client.acquire(acquire("a", "pg:x")).await.expect("acquire").outcome;
    assert!(matches!(held, Some(Outcome::Granted(_))), "{held:?}");
    let Some(Outcome::Queued(q)) = client.acquire(acquire("b", "pg:x")).await.expect("acquire").outcome else {
        panic!("b queues behind a")
    };
    let again = client.acquire(acquire("b", "pg:y")).await.expect("acquire").outcome;
    let Some(Outcome::Refused(r)) = again else { panic!("{again:?}") };
    assert_eq!(r.reason, pb::RefusalReason::AlreadyWaiting as i32, "{r:?}");
    assert_eq!(r.request_id, q.request_id, "{r:?}");
    assert!(r.message.contains(&format!("q{}", q.request_id)), "{r:?}");
    // Nothing changed: pg:y is free.
    let y = client.acquire(acquire("c", "pg:y")).await.expect("acquire").outcome;
    assert!(matches!(y, Some(Outcome::Granted(_))), "{y:?}");
}
