//! The CLI's edges as a newcomer meets them: what `qm` says when nothing is listening, when
//! an id is given in the form it was printed, and when input is wrong.

use std::process::{Command, Stdio};

use qm_tests::{free_port, qm_bin, Cluster};

/// Runs `qm ARGS…` with no token and no config: (exit code, stdout, stderr).
fn qm_alone(args: &[&str]) -> (i32, String, String) {
    let home = tempfile::tempdir().expect("config dir");
    let out = Command::new(qm_bin())
        .args(args)
        .env("QM_LOG", "warn")
        .env_remove("QM_ENDPOINT")
        .env_remove("QM_TOKEN")
        .env("XDG_CONFIG_HOME", home.path())
        .output()
        .expect("run qm");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

#[test]
fn with_nothing_listening_qm_says_where_it_looked_and_how_to_start_a_coordinator() {
    let (a, b) = (free_port(), free_port());
    let endpoints = format!("127.0.0.1:{a},127.0.0.1:{b}");
    let (code, _, err) = qm_alone(&["reserve", "list", "--endpoint", &endpoints]);
    assert_eq!(code, 1, "{err}");
    for named in [format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}"), "qm dev".into(), "QM_ENDPOINT".into()] {
        assert!(err.contains(&named), "the error names {named}: {err}");
    }
}

/// A one-node cluster, leading.
async fn cluster() -> Cluster {
    let c = Cluster::start(1, 10_000);
    c.leader(&[1]).await;
    c
}

#[tokio::test]
async fn every_id_is_taken_in_the_form_it_is_printed() {
    let c = cluster().await;
    let held = c.qm_json(&["reserve", "acquire", "pg:ids"]);
    let (id, session) = (held["id"].as_u64().expect("id"), held["session_id"].as_u64().expect("session"));
    let listed = c.qm_json(&["reserve", "list", "--session", &format!("s{session}")]);
    assert_eq!(listed["reservations"][0]["id"].as_u64(), Some(id), "{listed}");

    let (code, _, err) = c.qm(&["task", "show", "t999"]);
    assert_eq!(code, 3, "a well-formed id of no task is not found, not a usage error: {err}");
    assert!(err.contains("t999"), "{err}");
    let (code, _, err) = c.qm(&["task", "show", "x1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a task id") && err.contains("t7"), "{err}");

    c.qm_json(&["reserve", "release", &format!("r{id}"), "--session", &format!("s{session}")]);
    assert!(c.qm_json(&["reserve", "list", "--prefix", "pg:ids"])["reservations"].as_array().expect("list").is_empty());
}

#[tokio::test]
async fn releasing_what_is_not_held_fails_naming_it() {
    let c = cluster().await;
    let before = c.qm_json(&["reserve", "list"]);
    let (code, _, err) = c.qm(&["reserve", "release", "2", "--session", "999"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("reservation r2 is not held by session s999"), "{err}");
    let after = c.qm_json(&["reserve", "list"]);
    assert_eq!(before["reservations"], after["reservations"], "nothing changed");
}

#[tokio::test]
async fn a_waiter_behind_another_is_told_who_holds_the_resource() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let c = cluster().await;
    c.qm_json(&["reserve", "acquire", "pg:queue", "--owner", "holder"]);
    let mut waiters = Vec::new();
    let mut first_lines = Vec::new();
    for who in ["first", "second"] {
        let args = ["reserve", "acquire", "pg:queue", "--wait", "--owner", who];
        let mut child =
            c.qm_command(&args).process_group(0).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("spawn");
        let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            stderr.read_line(&mut line).expect("read");
            line
        });
        first_lines.push(line.await.expect("join"));
        waiters.push(child);
    }
    assert!(
        first_lines[0].contains("position 1") && first_lines[0].contains("holder on pg:queue"),
        "{}",
        first_lines[0]
    );
    assert!(
        first_lines[1].contains("position 2") && first_lines[1].contains("holder on pg:queue"),
        "{}",
        first_lines[1]
    );
    for mut w in waiters {
        w.kill().expect("kill");
        w.wait().expect("reap");
    }
}

#[test]
fn a_negative_number_or_a_misspelt_mode_is_named_with_what_is_allowed() {
    let (code, _, err) = qm_alone(&["reserve", "acquire", "pg:x", "--timeout-ms", "-5"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("'--timeout-ms <TIMEOUT_MS>': must be 0 or more"), "{err}");
    assert!(!err.contains("-- -5"), "no hint to pass -5 as a positional value: {err}");

    let args = ["task", "submit", "--role", "implementer", "--resource", "pg:staging:exclusiv", "--scripted-ms", "5"];
    let (code, _, err) = qm_alone(&args);
    assert_eq!(code, 2, "refused before any connection: {err}");
    assert!(err.contains("\"exclusiv\" is not a mode") && err.contains(":shared or :exclusive"), "{err}");

    for (limit, said) in [
        ("implementer:open-files=3", "--role-limit implementer:open-files: 3 is below 8"),
        (
            "reviewr:cpu-secs=3",
            "--role-limit reviewr: this worker hosts no reviewr agents (its slots: implementer, verifier)",
        ),
        ("Reviewer:cpu-secs=3", "unknown role \"Reviewer\""),
        ("implementer:cpu=3", "\"cpu\" is not a limit: cpu-secs, memory-bytes, open-files or output-bytes"),
    ] {
        let (code, _, err) = qm_alone(&["worker", "run", "--role-limit", limit, "--endpoint", "127.0.0.1:1"]);
        assert_eq!(code, 2, "refused before connecting: {err}");
        assert!(err.contains(said), "{limit}: {err}");
    }
}

#[tokio::test]
async fn json_answers_are_objects_and_a_json_error_names_the_field() {
    let c = cluster().await;
    assert!(c.qm_json(&["worker", "list"])["workers"].is_array());
    assert!(c.qm_json(&["token", "list"])["tokens"].is_array());

    let (code, out, err) = c.qm(&["reserve", "acquire", "pg:bad name"]);
    assert_eq!(code, 2, "{err}");
    let error: serde_json::Value = serde_json::from_str(&out).expect("the error as JSON on stdout");
    assert_eq!(error["error"]["kind"], "invalid", "{error}");
    assert_eq!(error["error"]["field"], "resources[0].path", "{error}");
    assert_eq!(error["error"]["exit_code"], 2, "{error}");
    assert!(c.qm_json(&["reserve", "list"])["reservations"].as_array().expect("list").is_empty(), "nothing changed");
}
