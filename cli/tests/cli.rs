//! The `qm` binary as a user runs it: real processes, exit codes, stdout and stderr.

use std::process::{Command, Output};

fn qm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qm")).args(args).output().expect("qm runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn dev_plays_the_demo_and_breaks_its_deadlock() {
    let out = qm(&["dev"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("REFUSED DEADLOCK"), "the demo's cycle is broken:\n{stdout}");
    assert!(stdout.contains("Revoked"), "the demo's preemption ends in a revoke:\n{stdout}");
    assert!(text(&out.stderr).contains("built-in demo"), "human text goes to stderr");
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
fn json_output_is_an_array_of_transcripts() {
    let dir = std::env::temp_dir().join(format!("qm-cli-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("one.scn");
    std::fs::write(&script, "open s1\nacquire s1 alice X pg:orders\n").unwrap();
    let out = qm(&["script", "run", "--json", script.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let transcript = value[0]["transcript"].as_str().unwrap();
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
    assert_eq!(ran.stdout, qm(&["dev"]).stdout, "qm dev plays exactly the demo script");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_commands_are_usage_errors() {
    let out = qm(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unrecognized subcommand"));
}
