//! The `qm` binary as a user runs it: real processes, exit codes, stdout and stderr.

use std::process::{Command, Output};

fn qm(args: &[&str]) -> Output {
    // `qm dev` saves its token under the config home: keep it out of the real one.
    let config_home = std::env::temp_dir().join(format!("qm-cli-config-{}", std::process::id()));
    Command::new(env!("CARGO_BIN_EXE_qm")).args(args).env("XDG_CONFIG_HOME", config_home).output().expect("qm runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn dev_serves_a_coordinator_and_plays_its_demo_over_grpc_afresh_at_every_start() {
    let state = tempfile_dir("dev-state");
    let grpc = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    // The second run starts from an empty state again: the same story, nothing from the cache.
    for run in 1..=2 {
        let out = Command::new(env!("CARGO_BIN_EXE_qm"))
            .args(["dev", "--listen", &grpc, "--admin-listen", &admin, "--exit-after-demo"])
            .env("XDG_CONFIG_HOME", format!("{state}/config"))
            .env("XDG_STATE_HOME", &state)
            .output()
            .expect("qm runs");
        assert_eq!(out.status.code(), Some(0), "run {run}: {}", text(&out.stderr));
        let story = text(&out.stdout);
        assert_demo_story(&story);
        let logs = text(&out.stderr);
        assert!(!logs.contains(" WARN "), "a healthy start logs no warning:\n{logs}");
        assert!(!logs.contains('\x1b') && !story.contains('\x1b'), "no colour codes off a terminal:\n{logs}");
        // Not on a terminal: progress only when a task starts, blocks, resumes or ends.
        let hotfix = story.lines().filter(|l| l.contains("WI-hotfix    running")).count();
        assert!(hotfix <= 2, "compacted progress: {hotfix} progress lines for one task:\n{story}");
        assert!(story.lines().count() < 200, "{} lines:\n{story}", story.lines().count());
    }
    assert!(std::path::Path::new(&format!("{state}/qm/dev-{}", grpc.rsplit(':').next().unwrap())).is_dir());
    std::fs::remove_dir_all(&state).unwrap();
}

/// What every `qm dev` demo shows, in order, in one stream (stdout): `qm dev > demo.log`
/// keeps the whole story, tables and all.
fn assert_demo_story(story: &str) {
    let scenes = [
        ("refused (conflict)", "a refusal"),
        ("held by implementer/WI-1", "that names the holder"),
        ("wait-for graph at index", "the wait-for graph while a waiter queues"),
        ("verifier/WI-2 granted", "the waiter is granted after the release"),
        ("outranks WI-feature", "why the feature is preempted at once"),
        ("(resumed from its checkpoint)", "a preempted task resumes from its checkpoint"),
        ("WI-hotfix    succeeded", "the hotfix ran"),
        ("WI-train-a   blocked: waiting for gpu:box-7", "an agent re-plans"),
        ("WI-docs      succeeded", "other work ran meanwhile"),
        ("blocked: deadlock victim", "a deadlock is broken"),
        ("WI-migrate   succeeded", "the victim finishes"),
        ("== summary", "the summary table"),
        ("design: waits for a human gate", "a human gate"),
        ("succeeded: cost $", "the feature went through every pass"),
        ("7 of 7 passes from the cache, cost $0.00", "the rerun is cached"),
    ];
    let mut from = 0;
    for (text, what) in scenes {
        let at = story[from..].find(text).unwrap_or_else(|| panic!("{what}: {text:?} after byte {from} of:\n{story}"));
        from += at;
    }
}

fn tempfile_dir(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("qm-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.to_str().unwrap().to_string()
}

#[test]
fn config_show_names_each_source_and_flags_win() {
    let dir = tempfile_dir("config");
    std::fs::create_dir_all(&dir).unwrap();
    let file = format!("{dir}/qm.toml");
    std::fs::write(&file, "endpoint = \"10.0.0.1:7070\"\n[raft]\ntick_ms = 300\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qm"))
        .args(["config", "show", "--json", "--config", &file, "--endpoint", "127.0.0.9:1"])
        .env("QM_RAFT_SNAPSHOT_LOGS", "500")
        .env("QM_RAFT_TICK_MS", "250")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let get = |k: &str| rows["keys"].as_array().unwrap().iter().find(|r| r["key"] == k).unwrap().clone();
    assert_eq!(get("endpoint")["value"], "127.0.0.9:1");
    assert_eq!(get("endpoint")["source"], "flag");
    assert_eq!(get("raft.tick_ms")["value"], "250", "env beats the file");
    assert_eq!(get("raft.snapshot_logs")["source"], "env QM_RAFT_SNAPSHOT_LOGS");
    assert_eq!(get("node.id")["source"], "default");
    std::fs::write(&file, "nope = 1\n").unwrap();
    let bad = qm(&["config", "show", "--config", &file]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("unknown key \"nope\""), "{}", text(&bad.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn script_errors_exit_2_naming_file_and_line() {
    let dir = std::env::temp_dir().join(format!("qm-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.scn");
    std::fs::write(&bad, "open s1\nacquire s1 alice Q pg:orders\n").unwrap();
    let out = qm(&["script", "run", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("bad.scn: line 2: mode Q: expected S or X"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout when the script fails");

    let missing = qm(&["script", "run", dir.join("missing.scn").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn json_output_is_an_object_holding_the_transcripts() {
    let dir = std::env::temp_dir().join(format!("qm-cli-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("one.scn");
    std::fs::write(&script, "open s1\nacquire s1 alice X pg:orders\n").unwrap();
    let out = qm(&["script", "run", "--json", script.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let transcript = value["transcripts"][0]["transcript"].as_str().unwrap();
    assert!(transcript.contains("granted r1 alice X pg:orders tok=2"), "{transcript}");
    let same = qm(&["-o", "json", "script", "run", script.to_str().unwrap()]);
    assert_eq!(same.stdout, out.stdout, "-o json and --json agree");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_demo_script_round_trips_through_script_run() {
    let demo = qm(&["script", "demo"]);
    assert_eq!(demo.status.code(), Some(0));
    let dir = std::env::temp_dir().join(format!("qm-cli-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("demo.scn");
    std::fs::write(&file, &demo.stdout).unwrap();
    let ran = qm(&["script", "run", file.to_str().unwrap()]);
    let stdout = text(&ran.stdout);
    assert!(stdout.contains("REFUSED DEADLOCK"), "the demo's cycle is broken:\n{stdout}");
    assert!(stdout.contains("Revoked"), "the demo's preemption ends in a revoke:\n{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_commands_are_usage_errors() {
    let out = qm(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unrecognized subcommand"));
}

#[test]
fn the_shipped_agent_specs_validate_and_list_all_nine_roles() {
    let agents = concat!(env!("CARGO_MANIFEST_DIR"), "/../agents");
    let out = qm(&["agent", "validate", agents]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().filter(|l| l.starts_with("ok ")).count(), 9, "{}", text(&out.stdout));
    let out = qm(&["agent", "list", agents, "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut roles: Vec<&str> = v["agents"].as_array().unwrap().iter().map(|a| a["role"].as_str().unwrap()).collect();
    roles.sort_unstable();
    assert_eq!(
        roles,
        [
            "analyst",
            "architect",
            "deployer",
            "diagnostician",
            "documenter",
            "implementer",
            "monitor",
            "specifier",
            "verifier"
        ]
    );
}

#[test]
fn outside_the_repository_the_built_in_specs_are_read_and_a_missing_path_is_named() {
    let dir = tempfile_dir("outside");
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_qm")).args(args).current_dir(&dir).output().unwrap();
    let out = run(&["agent", "validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no ./agents here: the built-in specs"), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).lines().filter(|l| l.contains("(built in)/agents/")).count(),
        9,
        "{}",
        text(&out.stdout)
    );
    let out = run(&["agent", "list", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("nope: no such file or directory"), "{}", text(&out.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn agent_validate_names_file_line_and_field_and_exits_1() {
    let dir = tempfile_dir("agents");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        format!("{dir}/reviewer.md"),
        "---\nname: code-reviewer\ndescription: Reviews code.\ntools: Read, Grep\nmodel: sonnet\n---\nReview.\n",
    )
    .unwrap();
    std::fs::write(format!("{dir}/bad.md"), "---\nname: bad\ndescription: d\nrole: implementor\n---\n").unwrap();
    let out = qm(&["agent", "validate", &dir]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("bad.md:4: field `role`: unknown role \"implementor\": did you mean implementer?"),
        "{stderr}"
    );
    assert!(text(&out.stdout).contains("reviewer.md (code-reviewer) (no role"), "{}", text(&out.stdout));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    for (shell, marker) in [("bash", "_qm()"), ("zsh", "#compdef qm"), ("fish", "complete -c qm")] {
        let out = qm(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: {}", &script[..script.len().min(200)]);
        assert!(script.contains("acquire") && script.contains("session-ttl-ms"), "{shell}: subcommands and flags");
    }
    let bad = qm(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2), "an unknown shell is a usage error");
    assert!(text(&bad.stderr).contains("bash") && text(&bad.stderr).contains("zsh"), "{}", text(&bad.stderr));

    let page = text(&qm(&["man"]).stdout);
    assert!(page.contains(".TH qm 1") && page.contains("reserve"), "{}", &page[..page.len().min(300)]);
    let dir = tempfile_dir("man");
    let out = qm(&["man", "--dir", &dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let acquire = std::fs::read_to_string(format!("{dir}/qm-reserve-acquire.1")).expect("a page per subcommand");
    assert!(acquire.contains("session\\-ttl\\-ms"), "the page documents the flags");
    std::fs::remove_dir_all(&dir).unwrap();
}
