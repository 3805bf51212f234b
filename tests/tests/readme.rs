//! The README is a test: every `sh` block in README.md runs, in order, as written, in a fresh
//! directory, and a README edit that breaks a command fails here.
//!
//! A block's info string says where it runs: `sh setup` (the two set-up commands, checked to
//! be what this test runs), `sh dev` (against a real `qm dev`, started as the set-up block
//! says, with its demo), `sh cluster` (starts its own coordinators, as a reader would) or
//! `sh local` (no server). Blocks of one kind share one bash process, so variables and
//! background jobs carry over from block to block as they do in a reader's terminal.
//!
//! Each command (a line, or lines joined by a trailing `\`) is checked against its comment:
//! `(exit N)` is the exit status it must end with (0 when none is given), and every
//! `"quoted"` phrase is text its output must contain. `<reservation>`, `<session>` and
//! `<job>` stand for the ids an earlier command of the block printed (the first of each
//! kind), and the loopback ports the README uses are mapped onto free ones. A command ending
//! in `&` runs in the background; whatever is left running is stopped when the test ends.
//!
//! ```text
//!   README.md ─▶ blocks (kind, commands, expectations) ─▶ one bash per kind ─▶ per command:
//!                                                         exit status, quoted text, ids seen
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::Duration;

use qm_tests::{free_port, qm_bin};

const README: &str = include_str!("../../README.md");

/// The longest one README command may run before the test fails naming it (the longest ones
/// wait for a work item's passes or run a load for a few seconds).
const COMMAND_TIME_MAX: Duration = Duration::from_secs(240);

/// The longest `qm dev` may take to play its demo and start serving.
const DEV_START_TIME_MAX: Duration = Duration::from_secs(300);

/// How `cargo run` spells `qm` in the README; the test runs the binary cargo built.
const CARGO_QM: &str = "cargo run -q -p qm-cli --";

/// Kinds of id a command prints that later commands refer to as `<kind>`.
const CAPTURES: [(&str, char); 3] = [("reservation", 'r'), ("session", 's'), ("job", 'j')];

#[derive(Debug)]
struct Block {
    kind: String,
    line: usize,
    steps: Vec<Step>,
}

#[derive(Debug, Clone)]
struct Step {
    line: usize,
    command: String,
    exit: i32,
    expect: Vec<String>,
}

/// Splits a line into the command and its comment (after the first `#` that starts a word
/// outside quotes).
fn split_comment(line: &str) -> (&str, &str) {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return (line[..i].trim_end(), line[i + 1..].trim()),
            _ => {}
        }
        prev = c;
    }
    (line.trim_end(), "")
}

/// What a comment asks of its command: the exit status and the phrases of its output.
fn expectations(comment: &str) -> (i32, Vec<String>) {
    let exit = comment
        .split("(exit ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .map(|n| n.trim().parse().unwrap_or_else(|_| panic!("`(exit {n})` is not a number in {comment:?}")))
        .unwrap_or(0);
    let expect = comment.split('"').skip(1).step_by(2).map(str::to_string).collect();
    (exit, expect)
}

fn parse(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in readme.lines().enumerate() {
        let n = i + 1;
        if let Some(info) = raw.strip_prefix("```") {
            if let Some(block) = current.take() {
                assert!(pending.is_none(), "README.md:{n}: a block ends inside a `\\` continuation");
                blocks.push(block);
                continue;
            }
            let mut words = info.split_whitespace();
            if words.next() == Some("sh") {
                let kind = words.next().unwrap_or_else(|| {
                    panic!("README.md:{n}: a `sh` block names where it runs: sh setup|dev|cluster|local")
                });
                assert!(
                    ["setup", "dev", "cluster", "local"].contains(&kind),
                    "README.md:{n}: unknown block kind {kind:?}: sh setup|dev|cluster|local"
                );
                current = Some(Block { kind: kind.into(), line: n, steps: Vec::new() });
            } else {
                // A block in another language (text, toml): skipped to its end.
                current = Some(Block { kind: String::new(), line: n, steps: Vec::new() });
            }
            continue;
        }
        let Some(block) = current.as_mut().filter(|b| !b.kind.is_empty()) else { continue };
        let (command, comment) = split_comment(raw);
        if let Some(head) = command.strip_suffix('\\') {
            let (_, text) = pending.get_or_insert((n, String::new()));
            text.push_str(head.trim());
            text.push(' ');
            continue;
        }
        let (line, mut text) = pending.take().unwrap_or((n, String::new()));
        text.push_str(command.trim());
        if text.is_empty() {
            continue;
        }
        let (exit, expect) = expectations(comment);
        block.steps.push(Step { line, command: text, exit, expect });
    }
    blocks.into_iter().filter(|b| !b.kind.is_empty()).collect()
}

/// Every loopback port the runnable blocks name, mapped to a free one.
fn port_map(blocks: &[Block]) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for step in blocks.iter().filter(|b| b.kind != "setup").flat_map(|b| &b.steps) {
        for piece in step
            .command
            .split("127.0.0.1:")
            .skip(1)
            .chain(step.expect.iter().flat_map(|e| e.split("127.0.0.1:").skip(1)))
        {
            let port: String = piece.chars().take_while(char::is_ascii_digit).collect();
            if !port.is_empty() && !map.contains_key(&port) {
                map.insert(port, free_port().to_string());
            }
        }
    }
    map
}

fn remap(text: &str, ports: &BTreeMap<String, String>) -> String {
    let mut out = text.to_string();
    for (from, to) in ports {
        out = out.replace(&format!("127.0.0.1:{from}"), &format!("127.0.0.1:{to}"));
    }
    out
}

/// Ids of each kind in `output` (`r12`, `s3`, `j3`): the first of each kind not yet known.
fn capture(output: &str, seen: &mut BTreeMap<String, String>) {
    for word in output.split(|c: char| !c.is_ascii_alphanumeric()) {
        for (name, prefix) in CAPTURES {
            let digits = word.strip_prefix(prefix).filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
            if digits.is_some() && !seen.contains_key(name) {
                seen.insert(name.to_string(), word.to_string());
            }
        }
    }
}

/// One bash process, fed one command at a time, each command's output in a file of its own.
struct Shell {
    child: Child,
    stdin: ChildStdin,
    done: Receiver<String>,
    outputs: PathBuf,
    count: usize,
    kind: String,
}

impl Shell {
    fn start(kind: &str, cwd: &Path, env: &[(&str, String)], outputs: PathBuf) -> Shell {
        let mut command = Command::new("bash");
        command.args(["--noprofile", "--norc"]).current_dir(cwd).process_group(0);
        for (k, v) in env {
            command.env(k, v);
        }
        for k in ["QM_ENDPOINT", "QM_TOKEN", "QM_TOKEN_FILE", "QM_CONFIG", "XDG_CONFIG_HOME", "XDG_STATE_HOME"] {
            if !env.iter().any(|(e, _)| e == &k) {
                command.env_remove(k);
            }
        }
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("start bash");
        let stdin = child.stdin.take().expect("bash stdin");
        let stdout = child.stdout.take().expect("bash stdout");
        let (tx, done) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Shell { child, stdin, done, outputs, count: 0, kind: kind.into() }
    }

    /// Runs `command` as the README line `line` and returns its exit status and output.
    fn run(&mut self, line: usize, command: &str) -> (i32, String) {
        self.count += 1;
        let out = self.outputs.join(format!("{}-{}.out", self.kind, self.count));
        let (body, background) = match command.strip_suffix('&') {
            Some(head) if !head.ends_with('&') => (head.trim_end(), true),
            _ => (command, false),
        };
        let script = format!(
            "{{ {body}\n}} </dev/null >'{out}' 2>&1 {bg}\nprintf '\\n__qm_readme_done %d\\n' \"$?\"\n",
            out = out.display(),
            bg = if background { "&" } else { "" }
        );
        self.stdin.write_all(script.as_bytes()).and_then(|()| self.stdin.flush()).expect("write to bash");
        let status = loop {
            match self.done.recv_timeout(COMMAND_TIME_MAX) {
                Ok(l) => {
                    if let Some(code) = l.strip_prefix("__qm_readme_done ") {
                        break code.trim().parse::<i32>().expect("status");
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "README.md:{line}: `{command}` did not finish within {COMMAND_TIME_MAX:?}; its output so far:\n{}",
                    std::fs::read_to_string(&out).unwrap_or_default()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!("README.md:{line}: bash exited running `{command}`"),
            }
        };
        (status, if background { String::new() } else { std::fs::read_to_string(&out).unwrap_or_default() })
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

/// Stops the process group `leader` leads (it and everything it started in the background):
/// SIGTERM, then, once the leader has exited, SIGKILL for whatever of the group is left. The
/// test's directory goes away with it, so nothing needs a clean shutdown.
fn stop_group(leader: &mut Child) {
    let group = format!("-{}", leader.id());
    let kill = |signal: &str| Command::new("kill").args([signal, "--", &group]).stderr(Stdio::null()).status();
    let _ = kill("-TERM");
    let _ = leader.wait();
    let _ = kill("-KILL");
}

/// `qm dev` as the set-up block starts it, on the mapped ports, served until dropped.
struct Dev {
    child: Child,
}

impl Dev {
    fn start(args: &[&str], cwd: &Path, env: &[(&str, String)]) -> Dev {
        let mut command = Command::new(qm_bin());
        command.args(args).current_dir(cwd).process_group(0).stdin(Stdio::null()).stdout(Stdio::piped());
        command.stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        for k in ["QM_ENDPOINT", "QM_TOKEN", "QM_TOKEN_FILE", "QM_CONFIG", "XDG_CONFIG_HOME", "XDG_STATE_HOME"] {
            command.env_remove(k);
        }
        let mut child = command.spawn().expect("start qm dev");
        let (tx, lines) = channel();
        for pipe in [
            child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child.stdout.take().map(|p| Box::new(p) as _),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let mut seen = String::new();
        loop {
            match lines.recv_timeout(DEV_START_TIME_MAX) {
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                    if line.starts_with("qm dev: serving") {
                        break;
                    }
                }
                Err(_) => panic!("qm dev did not start serving within {DEV_START_TIME_MAX:?}:\n{seen}"),
            }
        }
        println!("qm dev printed {} lines before serving", seen.lines().count());
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || while lines.recv().is_ok() {});
        Dev { child }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

#[test]
fn every_shell_block_of_the_readme_runs_in_order_as_written() {
    let blocks = parse(README);
    let ports = port_map(&blocks);
    let root = tempfile::tempdir().expect("temp dir");
    let (home, work, outputs) = (root.path().join("home"), root.path().join("work"), root.path().join("out"));
    for dir in [&home, &work, &outputs] {
        std::fs::create_dir_all(dir).expect("dirs");
    }
    // "From the repository root": the files the README names are where a reader has them;
    // everything the commands write stays in the fresh directory.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root");
    for name in ["sim", "agents", "workflows", "projects"] {
        std::os::unix::fs::symlink(repo.join(name), work.join(name)).expect("link");
    }
    let bin_dir = qm_bin().parent().expect("bin dir").to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let base: Vec<(&str, String)> = vec![("PATH", path), ("HOME", home.display().to_string())];

    let setup = blocks.iter().find(|b| b.kind == "setup").expect("README.md has a `sh setup` block");
    let commands: Vec<&str> = setup.steps.iter().map(|s| s.command.as_str()).collect();
    assert_eq!(
        commands,
        [format!("{CARGO_QM} dev").replace(" -q", "").as_str(), "cargo test --workspace"],
        "README.md:{}: the set-up block is the two commands this test stands for",
        setup.line
    );

    let mut dev: Option<Dev> = None;
    let mut shells: BTreeMap<String, Shell> = BTreeMap::new();
    let mut ran = 0;
    for block in blocks.iter().filter(|b| b.kind != "setup") {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        if block.kind == "dev" && dev.is_none() {
            let (grpc, admin) = (remap("127.0.0.1:7070", &ports), remap("127.0.0.1:7080", &ports));
            dev = Some(Dev::start(&["dev", "--listen", &grpc, "--admin-listen", &admin], &work, &base));
        }
        let shell = shells.entry(block.kind.clone()).or_insert_with(|| {
            let mut env = base.clone();
            if block.kind == "dev" {
                env.push(("QM_ENDPOINT", remap("127.0.0.1:7070", &ports)));
            }
            Shell::start(&block.kind, &work, &env, outputs.clone())
        });
        for step in &block.steps {
            let mut command = remap(&step.command.replace(CARGO_QM, "qm"), &ports);
            for (name, _) in CAPTURES {
                let placeholder = format!("<{name}>");
                if command.contains(&placeholder) {
                    let value = seen.get(name).unwrap_or_else(|| {
                        panic!(
                            "README.md:{}: {placeholder} stands for an id no earlier command of the block printed",
                            step.line
                        )
                    });
                    command = command.replace(&placeholder, value);
                }
            }
            println!("README.md:{} ({}) $ {command}", step.line, block.kind);
            let (status, output) = shell.run(step.line, &command);
            print!("{output}");
            assert_eq!(
                status, step.exit,
                "README.md:{}: `{command}` exited {status}, the README says {}; its output:\n{output}",
                step.line, step.exit
            );
            for phrase in &step.expect {
                let phrase = remap(phrase, &ports);
                assert!(
                    output.contains(&phrase),
                    "README.md:{}: the output of `{command}` lacks {phrase:?}; it was:\n{output}",
                    step.line
                );
            }
            capture(&output, &mut seen);
            ran += 1;
        }
    }
    println!("{ran} README commands ran as written");
    assert!(ran >= 30, "the README's blocks hold at least the tour: {ran} commands ran");
    drop(shells);
    drop(dev);
}

#[test]
fn comments_say_what_a_command_must_print_and_end_with() {
    assert_eq!(
        split_comment("qm x --note \"a # b\"  # refused (exit 3)"),
        ("qm x --note \"a # b\"", "refused (exit 3)")
    );
    assert_eq!(split_comment("echo a#b"), ("echo a#b", ""));
    assert_eq!(expectations("refused (exit 3), names the holder \"held by\""), (3, vec!["held by".to_string()]));
    assert_eq!(expectations("no expectations"), (0, vec![]));
    let blocks = parse("```sh dev\nqm a \\\n  --b c   # \"x\"\nqm d\n```\n```toml\nk = 1\n```\n");
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].steps.len(), 2);
    assert_eq!(blocks[0].steps[0].command, "qm a --b c");
    assert_eq!(blocks[0].steps[0].expect, vec!["x".to_string()]);
    assert_eq!(blocks[0].steps[1].line, 4);
    let mut seen = BTreeMap::new();
    capture("granted r12 on pg:x, token 40, session s3 (sessions s4)", &mut seen);
    assert_eq!(seen.get("reservation").map(String::as_str), Some("r12"));
    assert_eq!(seen.get("session").map(String::as_str), Some("s3"));
}
