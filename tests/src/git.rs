//! Real git repositories for tests: a bare "remote" with a first commit, and reads of what
//! was pushed to it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory of one test's own under the temp dir, removed when dropped.
pub fn scratch(test: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("qm-{test}-")).tempdir().expect("a scratch directory")
}

/// Runs git in `dir`; its stdout, panicking with stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out =
        Command::new("git").arg("-C").arg(dir).args(args).env("GIT_TERMINAL_PROMPT", "0").output().expect("git runs");
    assert!(out.status.success(), "git {args:?} in {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes a bare repository at `<dir>/remote.git` whose `main` holds `files` (path, content)
/// in one commit; returns its path.
pub fn remote_with(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let remote = dir.join("remote.git");
    let seed = dir.join("seed");
    std::fs::create_dir_all(&seed).expect("seed dir");
    git(dir, &["init", "-q", "--bare", "-b", "main", remote.to_str().expect("utf-8 path")]);
    git(&seed, &["init", "-q", "-b", "main"]);
    for (path, content) in files {
        let p = seed.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dirs");
        std::fs::write(p, content).expect("write");
    }
    git(&seed, &["add", "-A"]);
    git(&seed, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first"]);
    git(&seed, &["push", "-q", remote.to_str().expect("utf-8 path"), "main"]);
    remote
}

/// The content of `path` at `rev` in `repo`, or `None` when there is no such thing.
pub fn show(repo: &Path, rev: &str, path: &str) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(repo).args(["show", &format!("{rev}:{path}")]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Commits `files` (path, content) on `main` of the remote [`remote_with`] made under `dir`,
/// pushes it, and returns the new commit.
pub fn push_change(dir: &Path, files: &[(&str, &str)]) -> String {
    let (seed, remote) = (dir.join("seed"), dir.join("remote.git"));
    for (path, content) in files {
        std::fs::write(seed.join(path), content).expect("write");
    }
    git(&seed, &["add", "-A"]);
    git(&seed, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "change"]);
    git(&seed, &["push", "-q", remote.to_str().expect("utf-8 path"), "main"]);
    git(&seed, &["rev-parse", "HEAD"]).trim().to_string()
}
