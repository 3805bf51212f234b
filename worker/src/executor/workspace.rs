//! Workspaces in real repositories: a mirror per repository the worker is granted, and a git
//! worktree per attempt.
//!
//! A repository is granted by the worker's own configuration (`qm worker run --repo
//! NAME=URL`); a payload names it, never a URL. Its mirror, `<work root>/mirrors/<NAME>.git`,
//! is a bare repository made once and fetched (branches and `refs/qm/*`) before each attempt,
//! never cloned again. Each attempt works in its own worktree of the mirror, detached at the
//! revision it starts from: the work item's base commit, a branch an upstream pass pushed, or
//! its own last checkpoint commit. Credentials are the worker's (its git configuration, SSH
//! agent or a URL it was given); git never prompts.
//!
//! ```text
//!   remote ──fetch──▶ mirrors/app.git ──worktree add──▶ task-7-attempt-1/repo
//!      ▲                                                     │ edits, commands
//!      └──────────── push HEAD:qm/<item>/<pass>  ◀── commit ─┘ (checkpoints: refs/qm/checkpoints/task-7)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::process::Command;

/// How long one git command may take (a fetch of a large repository included).
const GIT_TIMEOUT: Duration = Duration::from_secs(600);
/// Bytes of git's stderr quoted in an error.
const GIT_ERROR_BYTES_MAX: usize = 2_000;
/// The author of the commits an attempt makes.
const AUTHOR_NAME: &str = "Quartermaster agent";
const AUTHOR_EMAIL: &str = "agent@quartermaster.invalid";

/// One lock per mirror directory: a fetch and a worktree add never race another on the same
/// mirror (git's own ref locks would fail one of them).
fn mirror_lock(dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<BTreeMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS.get_or_init(Default::default).lock().expect("mirror locks");
    locks.entry(dir.to_path_buf()).or_default().clone()
}

/// Runs `git args` in `dir`; its stdout, or an error naming the command and quoting stderr.
pub(crate) async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir).args(args).env("GIT_TERMINAL_PROMPT", "0").stdin(std::process::Stdio::null());
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(GIT_TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("git {}: no answer within {} s", args.join(" "), GIT_TIMEOUT.as_secs()))?
        .map_err(|e| format!("git {}: {e} (is git installed on the worker?)", args.join(" ")))?;
    if !out.status.success() {
        let mut err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        super::truncate_at_char(&mut err, GIT_ERROR_BYTES_MAX);
        return Err(format!("git {}: {}: {err}", args.join(" "), out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The refs a mirror keeps: branches and Quartermaster's own (checkpoints).
const FETCH_REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/qm/*:refs/qm/*"];

/// Where an attempt works, and what it started from.
#[derive(Debug)]
pub struct Workspace {
    /// The repository's name on this worker.
    pub repo: String,
    url: String,
    mirror: PathBuf,
    /// The worktree.
    pub dir: PathBuf,
    /// The commit the work item's change is measured against (kept across checkpoints).
    pub base: String,
    /// Time spent fetching the mirror and adding the worktree.
    pub setup: Duration,
}

impl Workspace {
    /// Fetches the mirror of `repo` at `url` (made on first use) and adds a worktree at
    /// `dir`, detached at `start` (a commit or branch; empty: the remote's default branch), or
    /// at the branch `prefer` when the remote has it. `base` is the commit diffs are taken
    /// against; empty: where it starts.
    pub async fn open(
        work_root: &Path,
        (repo, url): (&str, &str),
        dir: &Path,
        (start, prefer): (&str, Option<&str>),
        base: &str,
    ) -> Result<Workspace, String> {
        check_rev("payload.start", start)?;
        check_rev("payload.base", base)?;
        if let Some(p) = prefer {
            check_rev("payload.branch", p)?;
        }
        let began = Instant::now();
        let mirror = work_root.join("mirrors").join(format!("{repo}.git"));
        let lock = mirror_lock(&mirror);
        let _held = lock.lock().await;
        if !mirror.join("HEAD").exists() {
            tokio::fs::create_dir_all(&mirror).await.map_err(|e| format!("creating {}: {e}", mirror.display()))?;
            git(&mirror, &["init", "--bare", "-q"]).await?;
        }
        let mut fetch = vec!["fetch", "-q", "--prune", "--no-tags", url];
        fetch.extend(FETCH_REFSPECS);
        git(&mirror, &fetch).await.map_err(|e| format!("repo {repo:?}: {e}"))?;
        let start = if start.is_empty() { default_branch(&mirror, url).await? } else { start.to_string() };
        let given = git(&mirror, &["rev-parse", "--verify", "-q", &format!("{start}^{{commit}}")])
            .await
            .map_err(|_| format!("repo {repo:?}: {start:?} is neither a branch nor a commit of {url}"))?
            .trim()
            .to_string();
        let preferred = match prefer {
            Some(p) => git(&mirror, &["rev-parse", "--verify", "-q", &format!("refs/heads/{p}^{{commit}}")]).await.ok(),
            None => None,
        };
        let commit = preferred.map(|c| c.trim().to_string()).unwrap_or_else(|| given.clone());
        // A worktree a crashed attempt left behind is pruned before this one is added.
        let _ = git(&mirror, &["worktree", "prune"]).await;
        let _ = tokio::fs::remove_dir_all(dir).await;
        let path = dir.to_string_lossy().into_owned();
        git(&mirror, &["worktree", "add", "-q", "--detach", "-f", &path, &commit]).await?;
        let base = if base.is_empty() {
            given
        } else {
            git(&mirror, &["rev-parse", "--verify", "-q", &format!("{base}^{{commit}}")])
                .await
                .map_err(|_| format!("payload.base: {base:?} is neither a branch nor a commit of {url}"))?
                .trim()
                .to_string()
        };
        Ok(Workspace {
            repo: repo.to_string(),
            url: url.to_string(),
            mirror,
            dir: dir.to_path_buf(),
            base,
            setup: began.elapsed(),
        })
    }

    /// The commit checked out now.
    pub async fn head(&self) -> Result<String, String> {
        Ok(git(&self.dir, &["rev-parse", "HEAD"]).await?.trim().to_string())
    }

    /// Commits every change in the worktree (`message`); the new head, or `None` when nothing
    /// changed.
    pub async fn commit(&self, message: &str) -> Result<Option<String>, String> {
        if git(&self.dir, &["status", "--porcelain"]).await?.trim().is_empty() {
            return Ok(None);
        }
        git(&self.dir, &["add", "-A"]).await?;
        let name = format!("user.name={AUTHOR_NAME}");
        let email = format!("user.email={AUTHOR_EMAIL}");
        git(&self.dir, &["-c", &name, "-c", &email, "commit", "-q", "--no-verify", "-m", message]).await?;
        self.head().await.map(Some)
    }

    /// A digest of what `paths` hold at the base commit: each one's object id there (`-`
    /// where it does not exist; `.` is the whole tree), in path order. Two bases give the same
    /// digest exactly when those paths hold the same content.
    pub async fn read_digest(&self, paths: &[String]) -> Result<String, String> {
        use sha2::{Digest, Sha256};
        let mut ids: BTreeMap<&str, String> = paths.iter().map(|p| (p.as_str(), "-".to_string())).collect();
        if ids.contains_key(".") {
            let tree = git(&self.dir, &["rev-parse", &format!("{}^{{tree}}", self.base)]).await?;
            ids.insert(".", tree.trim().to_string());
        }
        let named: Vec<&str> = ids.keys().copied().filter(|p| *p != ".").collect();
        if !named.is_empty() {
            let mut args = vec!["ls-tree", "--full-tree", self.base.as_str(), "--"];
            args.extend(named.iter().copied());
            for line in git(&self.dir, &args).await?.lines() {
                // "<mode> <type> <id>\t<path>"
                let Some((meta, path)) = line.split_once('\t') else { continue };
                if let (Some(id), Some(slot)) = (meta.split(' ').nth(2), ids.get_mut(path)) {
                    *slot = id.to_string();
                }
            }
        }
        let mut h = Sha256::new();
        for (path, id) in &ids {
            h.update(format!("{path} {id}\n"));
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Applies the change `old_base..commit` (an earlier attempt's, on the remote) here: the
    /// commit itself when this base is `old_base`, else its commits picked onto this base.
    /// On a conflict nothing is left applied.
    pub async fn replay(&self, old_base: &str, commit: &str) -> Result<(), String> {
        check_rev("cached.base", old_base)?;
        check_rev("cached.commit", commit)?;
        if old_base == self.base {
            return git(&self.dir, &["reset", "-q", "--hard", commit]).await.map(|_| ());
        }
        let (name, email) = (format!("user.name={AUTHOR_NAME}"), format!("user.email={AUTHOR_EMAIL}"));
        let range = format!("{old_base}..{commit}");
        let picked = git(&self.dir, &["-c", &name, "-c", &email, "cherry-pick", "--allow-empty", &range]).await;
        if let Err(e) = picked {
            let _ = git(&self.dir, &["cherry-pick", "--abort"]).await;
            let _ = git(&self.dir, &["reset", "-q", "--hard", &self.base]).await;
            return Err(e);
        }
        Ok(())
    }

    /// Pushes the head to `refname` on the remote (forced: an attempt owns its refs).
    pub async fn push(&self, refname: &str) -> Result<(), String> {
        git(&self.dir, &["push", "-q", "--force", &self.url, &format!("HEAD:{refname}")])
            .await
            .map(|_| ())
            .map_err(|e| format!("repo {:?}: {e}", self.repo))
    }

    /// `git diff --stat` and the diff (at most `max` bytes, cut at a line) from the base to
    /// the head.
    pub async fn diff(&self, max: usize) -> Result<(String, String), String> {
        let range = format!("{}..HEAD", self.base);
        let stat = git(&self.dir, &["diff", "--stat", &range]).await?;
        let mut diff = git(&self.dir, &["diff", &range]).await?;
        if diff.len() > max {
            let whole = diff.len();
            super::truncate_at_char(&mut diff, max);
            if let Some(end) = diff.rfind('\n') {
                diff.truncate(end + 1);
            }
            diff.push_str(&format!("[qm: diff truncated to {} of {whole} bytes]\n", diff.len()));
        }
        Ok((stat, diff))
    }

    /// Commits the worktree's changes (`qm: task N: <summary's first line>`), pushes them to
    /// `branch` if given, and adds the repository, branch, commit, base, diff summary, diff
    /// (at most `diff_max` bytes) and setup time to `out`.
    pub async fn deliver(
        &self,
        task: u64,
        summary: &str,
        branch: Option<&str>,
        diff_max: usize,
        out: &mut serde_json::Value,
    ) -> Result<(), String> {
        let first = summary.lines().next().unwrap_or("").trim();
        let first = if first.is_empty() { "the agent's change" } else { first };
        self.commit(&format!("qm: task {task}: {first}")).await?;
        if let Some(branch) = branch {
            self.push(&format!("refs/heads/{branch}")).await?;
            out["branch"] = serde_json::json!(branch);
        }
        let (stat, diff) = self.diff(diff_max).await?;
        out["repo"] = serde_json::json!(self.repo);
        out["commit"] = serde_json::json!(self.head().await?);
        out["base"] = serde_json::json!(self.base);
        out["diffstat"] = serde_json::json!(stat);
        out["diff"] = serde_json::json!(diff);
        out["setup_ms"] = serde_json::json!(self.setup.as_millis() as u64);
        // The task is done: its checkpoint ref (if an attempt pushed one) is not needed again.
        let gone = format!(":{}", checkpoint_ref(task));
        if let Err(e) = git(&self.dir, &["push", "-q", &self.url, &gone]).await {
            if !e.contains("unable to delete") && !e.contains("does not exist") {
                tracing::warn!(task, "removing the checkpoint ref: {e}");
            }
        }
        Ok(())
    }

    /// Removes the worktree (the mirror stays).
    pub async fn close(self) {
        let path = self.dir.to_string_lossy().into_owned();
        let lock = mirror_lock(&self.mirror);
        let _held = lock.lock().await;
        if git(&self.mirror, &["worktree", "remove", "--force", &path]).await.is_err() {
            let _ = tokio::fs::remove_dir_all(&self.dir).await;
            let _ = git(&self.mirror, &["worktree", "prune"]).await;
        }
    }
}

/// The remote's default branch (its HEAD), as a revision of the mirror.
async fn default_branch(mirror: &Path, url: &str) -> Result<String, String> {
    let out = git(mirror, &["ls-remote", "--symref", url, "HEAD"]).await?;
    out.lines()
        .find_map(|l| l.strip_prefix("ref: ")?.split_whitespace().next().map(str::to_string))
        .ok_or_else(|| format!("{url} has no default branch; name a commit or branch to start from"))
}

/// Whether `rev` (a payload's `start` or `base`) is a plain revision name: letters, digits and
/// `/ . _ -`, not starting with `-` (git would read an option), at most 200 bytes. Empty is
/// allowed (the default).
pub fn check_rev(field: &str, rev: &str) -> Result<(), String> {
    let ok = rev.len() <= 200
        && !rev.starts_with('-')
        && !rev.contains("..")
        && rev.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field}: {rev:?} refused: give a commit id or a branch name (letters, digits, / . _ -; not starting \
             with -; at most 200 bytes)"
        ))
    }
}

/// The ref a task's checkpoint commits are pushed to.
pub fn checkpoint_ref(task: u64) -> String {
    format!("refs/qm/checkpoints/task-{task}")
}

/// Whether `name` is a branch name an attempt may push to: `qm/…`, git's rules, nothing odd.
pub fn check_branch(name: &str) -> Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
    let ok = name.starts_with("qm/")
        && ok_chars
        && !name.contains("..")
        && !name.contains("//")
        && !name.ends_with('/')
        && !name.ends_with(".lock")
        && name.len() <= 200;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "payload.branch: {name:?} refused: an attempt pushes only to branches under qm/ \
             (letters, digits, / . _ -; at most 200 bytes), e.g. qm/{{{{job}}}}/{{{{pass}}}}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_that_git_could_read_as_options_are_refused() {
        for good in ["", "main", "qm/j1/implement", "3f2a9c1b7d0e", "release-1.2"] {
            check_rev("payload.start", good).unwrap();
        }
        for bad in ["--output=/tmp/x", "-n", "main..HEAD", "a b", "HEAD~1", "x;rm"] {
            let e = check_rev("payload.base", bad).expect_err(bad);
            assert!(e.starts_with("payload.base:"), "{e}");
        }
    }

    #[test]
    fn only_qm_branches_are_pushed_to() {
        for good in ["qm/j7/implement", "qm/7/fix-1.2"] {
            check_branch(good).unwrap();
        }
        for bad in ["main", "qm/../main", "qm/a b", "qm/x.lock", "refs/heads/qm/x", "qm//x", "qm/"] {
            let e = check_branch(bad).expect_err(bad);
            assert!(e.starts_with("payload.branch:"), "{e}");
        }
    }
}
