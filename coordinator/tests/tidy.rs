//! Tidy: the replicated core stays pure, Raft waits stay bounded, and ARCHITECTURE.md stays
//! true (every source file on its map, crate dependencies as it allows).
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

/// The repository's root (the workspace holding this crate).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// Source files (`.rs`, `.proto`) under `dir`, as paths relative to `root`, skipping build
/// output and hidden folders.
fn source_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            source_files(root, &path, out);
        } else if name.ends_with(".rs") || name.ends_with(".proto") {
            out.push(path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/"));
        }
    }
}

/// Paths the map must name besides the source files.
const MAPPED_ALSO: &[&str] = &[
    ".ci/run",
    ".cargo/config.toml",
    "docs/",
    "agents/",
    "workflows/",
    "projects/",
    "sim/scenarios/",
    "coordinator/tests/scenarios/",
    "README.md",
    "rustfmt.toml",
];

/// The entries of `wanted` that `map` does not name as a code span (`` `path` ``, or a path
/// that a code span starts with, such as `` `coordinator/tests/scenarios/*.scn` ``).
fn missing_from_map<'a>(wanted: &'a [String], map: &str) -> Vec<&'a str> {
    wanted.iter().map(String::as_str).filter(|p| !map.contains(&format!("`{p}"))).collect()
}

/// Architecture Invariant: ARCHITECTURE.md names every source file; a new file goes on the
/// map in the change that adds it.
#[test]
fn every_source_file_is_on_the_map() {
    let root = repo_root();
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut files = Vec::new();
    for dir in ["proto", "shared", "coordinator", "worker", "sim", "cli", "tests"] {
        source_files(&root, &root.join(dir), &mut files);
    }
    assert!(files.len() > 100, "expected the workspace's sources, found {}", files.len());
    files.extend(MAPPED_ALSO.iter().map(|p| p.to_string()));
    for p in MAPPED_ALSO {
        assert!(root.join(p).exists(), "{p} is listed as mapped but does not exist");
    }
    let missing = missing_from_map(&files, &map);
    assert!(missing.is_empty(), "ARCHITECTURE.md does not name:\n{}", missing.join("\n"));
}

#[test]
fn the_map_check_catches_a_missing_file() {
    let files = vec!["a/b.rs".to_string(), "a/c.rs".to_string(), "docs/".to_string()];
    let map = "* `a/b.rs` — one\n* `docs/` — the docs\nc.rs is mentioned only in prose";
    assert_eq!(missing_from_map(&files, map), ["a/c.rs"]);
}

/// The allowed workspace dependencies as ARCHITECTURE.md writes them: the lines of the block
/// headed `crate dependencies (tidy-checked)`, each `crate -> dep dep …`.
fn allowed_dependencies(map: &str) -> Vec<(String, Vec<String>)> {
    let block = map.split("crate dependencies (tidy-checked)\n").nth(1).expect("the dependency block");
    let block = block.split("```").next().unwrap();
    let mut rules = Vec::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let (krate, deps) = line.split_once("->").unwrap_or_else(|| panic!("a rule `crate -> deps`: {line}"));
        let mut deps: Vec<String> = deps.split_whitespace().map(String::from).collect();
        deps.sort();
        rules.push((krate.trim().to_string(), deps));
    }
    rules
}

/// The workspace crates a manifest names in any dependency table.
fn workspace_dependencies(manifest: &str) -> Vec<String> {
    let mut deps: Vec<String> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("qm-"))
        .filter_map(|rest| rest.split(['.', ' ', '=']).next())
        .map(|name| format!("qm-{name}"))
        .collect();
    deps.sort();
    deps.dedup();
    deps
}

/// Architecture Invariant: crates depend on each other only as ARCHITECTURE.md's dependency
/// block says, and the block says exactly what the manifests do.
#[test]
fn crates_depend_only_as_the_map_allows() {
    let root = repo_root();
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let rules = allowed_dependencies(&map);
    let dirs = [
        ("qm-shared", "shared"),
        ("qm-coordinator", "coordinator"),
        ("qm-worker", "worker"),
        ("qm-sim", "sim"),
        ("qm-cli", "cli"),
        ("qm-tests", "tests"),
    ];
    assert_eq!(rules.len(), dirs.len(), "one rule per crate: {rules:?}");
    for (krate, dir) in dirs {
        let manifest = std::fs::read_to_string(root.join(dir).join("Cargo.toml")).unwrap();
        let actual = workspace_dependencies(&manifest);
        let allowed = &rules.iter().find(|(k, _)| k == krate).unwrap_or_else(|| panic!("no rule for {krate}")).1;
        assert_eq!(&actual, allowed, "{krate} depends on {actual:?}; ARCHITECTURE.md allows {allowed:?}");
    }
}

#[test]
fn the_dependency_check_reads_manifests_and_rules() {
    let manifest = "[package]\nname = \"qm-sim\"\n[dependencies]\nqm-shared.workspace = true\nqm-worker = { path = \"../worker\" }\ntokio = \"1\"\n";
    assert_eq!(workspace_dependencies(manifest), ["qm-shared", "qm-worker"]);
    let map = "```text\ncrate dependencies (tidy-checked)\nqm-a ->\nqm-b -> qm-a\n```\n";
    assert_eq!(
        allowed_dependencies(map),
        [("qm-a".to_string(), vec![]), ("qm-b".to_string(), vec!["qm-a".to_string()])]
    );
}
