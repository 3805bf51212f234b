//! Tidy: the replicated core stays pure.
//!
//! Architecture Invariant: nothing under `coordinator/src/state` imports tokio, tonic, sled or
//! openraft, reads a clock, uses hash maps (iteration order is not deterministic), draws
//! unseeded randomness, or does I/O. This test reads the sources and fails on any of it,
//! naming the file and line.

use std::path::{Path, PathBuf};

/// Words that must not appear in code (comments are skipped).
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "async runtime"),
    ("tonic", "gRPC"),
    ("sled", "storage"),
    ("openraft", "consensus"),
    ("Instant", "clock read"),
    ("SystemTime", "clock read"),
    ("UNIX_EPOCH", "clock read"),
    ("chrono", "clock read"),
    ("HashMap", "non-deterministic iteration"),
    ("HashSet", "non-deterministic iteration"),
    ("thread_rng", "unseeded randomness"),
    ("rand", "randomness"),
    ("async", "async code"),
    ("await", "async code"),
    ("fs", "file I/O"),
    ("net", "network I/O"),
    ("thread", "threads"),
    ("env", "environment reads"),
];

/// `(line number, word, why)` for every forbidden word in `source`'s code lines.
fn violations(source: &str) -> Vec<(usize, &'static str, &'static str)> {
    let mut found = Vec::new();
    for (n, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let words = code.split(|c: char| !(c.is_alphanumeric() || c == '_'));
        for word in words {
            if let Some((w, why)) = FORBIDDEN.iter().find(|(w, _)| *w == word) {
                found.push((n + 1, *w, *why));
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_state_machine_is_pure() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/state");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    assert!(files.len() >= 5, "expected the state sources under {}", dir.display());
    let mut problems = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        for (line, word, why) in violations(&source) {
            problems.push(format!("{}:{line}: `{word}` ({why})", file.display()));
        }
    }
    assert!(problems.is_empty(), "coordinator/src/state must stay pure:\n{}", problems.join("\n"));
}

#[test]
fn the_scanner_catches_what_it_forbids() {
    let sample = "use tokio::time::sleep;\n// tokio in a comment is fine\nlet t = std::time::Instant::now();\n\
                  let m: HashMap<u8, u8> = HashMap::new();\nlet x = y.await;";
    let words: Vec<&str> = violations(sample).iter().map(|(_, w, _)| *w).collect();
    assert_eq!(words, ["tokio", "Instant", "HashMap", "HashMap", "await"]);
    assert_eq!(violations(sample)[0].0, 1);
    assert!(violations("let state = BTreeMap::new(); // no I/O, no tokio").is_empty());
}

/// openraft calls whose futures resolve only when an entry is applied or truncated: a leader
/// deposed before its entry committed, which then catches up by snapshot, never sees them
/// resolve.
const UNBOUNDED_RAFT_WAITS: &[&str] =
    &[".client_write(", ".change_membership(", ".add_learner(", ".ensure_linearizable("];

/// `(line number, call)` for every such call in `source` that is not handed to `within_term`
/// (on its line or the two before, where a long call is split).
fn unbounded_waits(source: &str) -> Vec<(usize, &'static str)> {
    let lines: Vec<&str> = source.lines().map(|l| l.split("//").next().unwrap_or("")).collect();
    let mut found = Vec::new();
    for (n, code) in lines.iter().enumerate() {
        for call in UNBOUNDED_RAFT_WAITS.iter().filter(|c| code.contains(*c)) {
            let bounded = lines[n.saturating_sub(2)..=n].iter().any(|l| l.contains("within_term("))
                || lines.get(n + 1).is_some_and(|l| l.contains("within_term("));
            if !bounded {
                found.push((n + 1, *call));
            }
        }
    }
    found
}

/// Architecture Invariant: no wait on a Raft write is unbounded. Every openraft call that is
/// answered only on apply goes through `raft::bounded::within_term`, which gives up when the
/// term ends or a deadline passes.
#[test]
fn every_wait_on_a_raft_write_is_bounded() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    let mut problems = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        for (line, call) in unbounded_waits(&source) {
            problems.push(format!("{}:{line}: `{call}` is awaited without `within_term`", file.display()));
        }
    }
    assert!(problems.is_empty(), "waits on Raft writes must be bounded:\n{}", problems.join("\n"));
}

#[test]
fn the_wait_scanner_catches_an_unbounded_write() {
    let bad = "let r = node.raft.client_write(request).await;\n// raft.client_write( in a comment";
    assert_eq!(unbounded_waits(bad), [(1, ".client_write(")]);
    let good = "let w = raft.client_write(req);\nmatch within_term(m, 10, w).await {}";
    assert!(unbounded_waits(good).is_empty());
}
