//! The `command` executor: `/bin/sh -c CMD`, off unless the worker enables it.
//!
//! Each attempt runs
//! * in its own work directory `<work root>/task-<id>-attempt-<n>` (created fresh, removed
//!   after); a payload `workdir` is a relative path inside it, never `..` or absolute;
//! * with a cleared environment: the worker's allow-list (`--pass-env`) plus the attempt's
//!   `QM_*` variables (`QM_FENCING_TOKEN`, `QM_RESERVATION_ID`, `QM_TASK_ID`,
//!   `QM_TASK_ATTEMPT`, `QM_CHECKPOINT_FILE`, `QM_WORK_DIR`);
//! * in its own process group with CPU, address-space and open-file limits
//!   ([`super::child`]); stop, cancel, preemption and timeout send SIGTERM to the group and,
//!   once the shell exits or the grace ends, SIGKILL, and whatever is left of the group when
//!   the shell exits by itself is killed too, so no grandchild outlives its attempt;
//! * with at most `output_bytes` of stdout kept as the output (stderr, bounded, is the
//!   error); past the cap the rest is drained and the output says it was truncated.
//!
//! Its checkpoint is whatever it wrote to `$QM_CHECKPOINT_FILE`; on resume that file holds
//! the last checkpoint before it starts. On a stop it is read after the group has had its
//! grace, so a command may write a last checkpoint when it gets SIGTERM.

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qm_shared::limits::{TASK_CHECKPOINT_BYTES_MAX, TASK_ERROR_LEN_MAX_BYTES};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::child::{self, Group, Signal};
use super::{Control, ExecConfig, ExecEvent, ExecOutcome, ExecRequest, ExecResult, Usage};

/// The shell commands run with (an absolute path: the child's PATH is the allow-list's).
const SHELL: &str = "/bin/sh";
/// How long a container may run when the task sets no timeout.
const CONTAINER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3_600);
/// The checkpoint file's name in the attempt's directory.
const CHECKPOINT_FILE: &str = ".qm-checkpoint";
/// Once the group is gone, how long its pipes may stay open (held by a process that left the
/// group) before the output read so far is taken as all there is.
const OUTPUT_DRAIN_MAX: Duration = Duration::from_secs(5);

/// The command executor's parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// Run with `/bin/sh -c`.
    pub cmd: String,
    /// Work directory relative to the attempt's, or to the workspace with `repo` (created if
    /// missing); default: the attempt's, or the workspace.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Run in a worktree of this worker's repository of that name (`--repo NAME=URL`).
    #[serde(default)]
    pub repo: Option<String>,
    /// With `repo`: the commit or branch to check out (e.g. `qm/{{job}}/implement`, the branch
    /// an upstream pass pushed); empty: the remote's default branch.
    #[serde(default)]
    pub start: String,
    /// `local` (default) or `container` (on a worker that offers it: `--engine container`).
    #[serde(default)]
    pub engine: String,
    /// The container's image (default: the worker's `--container-image`).
    #[serde(default)]
    pub image: Option<String>,
}

/// The directory `rel` names inside `attempt_dir`: relative, without `..`.
pub fn workdir_in(attempt_dir: &Path, rel: Option<&str>) -> Result<PathBuf, String> {
    let Some(rel) = rel else { return Ok(attempt_dir.to_path_buf()) };
    for part in Path::new(rel).components() {
        match part {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "payload.workdir: {rel:?} refused: `..` would leave the attempt's work directory; \
                     give a relative path inside it"
                ))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "payload.workdir: {rel:?} refused: an absolute path would leave the attempt's work \
                     directory; give a relative path inside it"
                ))
            }
        }
    }
    Ok(attempt_dir.join(rel))
}

/// Runs `c` for the attempt and removes its work directory (and worktree) after.
pub(crate) async fn run(
    c: CommandSpec,
    config: &ExecConfig,
    req: &ExecRequest,
    timeout: Option<Duration>,
    events: mpsc::Sender<ExecEvent>,
    control: mpsc::Receiver<Control>,
) -> ExecResult {
    let dirs = match super::AttemptDirs::prepare(config, req, c.repo.as_deref(), (&c.start, None), "").await {
        Ok(d) => d,
        Err(e) => return ExecResult::failed(e),
    };
    let workspace = dirs.workspace.as_ref().map(|w| w.dir.as_path());
    let result = run_in(&c, config, req, &dirs.dir, workspace, timeout, events, control).await;
    dirs.remove().await;
    result
}

/// [`run`] once the directories exist: the attempt's, and the workspace if any.
#[allow(clippy::too_many_arguments)]
async fn run_in(
    c: &CommandSpec,
    config: &ExecConfig,
    req: &ExecRequest,
    dir: &Path,
    workspace: Option<&Path>,
    timeout: Option<Duration>,
    events: mpsc::Sender<ExecEvent>,
    control: mpsc::Receiver<Control>,
) -> ExecResult {
    let cwd = match workdir_in(workspace.unwrap_or(dir), c.workdir.as_deref()) {
        Ok(d) => d,
        Err(e) => return ExecResult::failed(e),
    };
    if let Err(e) = tokio::fs::create_dir_all(&cwd).await {
        return ExecResult::failed(format!("creating the work directory {}: {e}", cwd.display()));
    }
    let checkpoint_file = dir.join(CHECKPOINT_FILE);
    if let Some(data) = &req.resume {
        if let Err(e) = tokio::fs::write(&checkpoint_file, data).await {
            return ExecResult::failed(format!("writing the checkpoint: {e}"));
        }
    }
    match super::engine::choose(config, &c.engine, c.image.as_deref()) {
        Err(e) => ExecResult::failed(e),
        Ok(Some(image)) => {
            let mut control = control;
            let _ = events
                .send(ExecEvent::Progress { percent: 0, stage: format!("running in {image}"), usage: Usage::default() })
                .await;
            let limit = timeout.unwrap_or(CONTAINER_TIMEOUT_DEFAULT);
            super::engine::run_in_container(&image, &c.cmd, &cwd, config, req, limit, &mut control).await
        }
        Ok(None) => {
            let paths = Paths { dir, cwd: &cwd, checkpoint_file: &checkpoint_file };
            supervise(c, config, req, paths, timeout, events, control).await
        }
    }
}

/// Runs `cmd` in `cwd` as an attempt's command runs (process group, limits, cleared
/// environment, bounded output), to its end or `timeout`: an agent's `run_command`.
pub(crate) async fn run_once(
    cmd: &str,
    cwd: &Path,
    attempt_dir: &Path,
    config: &ExecConfig,
    req: &ExecRequest,
    timeout: Duration,
) -> ExecResult {
    let c = CommandSpec {
        cmd: cmd.to_string(),
        workdir: None,
        repo: None,
        start: String::new(),
        engine: String::new(),
        image: None,
    };
    let (events, _dropped) = mpsc::channel(4);
    let (_never, control) = mpsc::channel(1);
    let checkpoint_file = attempt_dir.join(CHECKPOINT_FILE);
    let paths = Paths { dir: attempt_dir, cwd, checkpoint_file: &checkpoint_file };
    supervise(&c, config, req, paths, Some(timeout), events, control).await
}

struct Paths<'a> {
    dir: &'a Path,
    cwd: &'a Path,
    checkpoint_file: &'a Path,
}

/// How the wait for the shell ended.
enum Ended {
    Exited(std::io::Result<std::process::ExitStatus>),
    TimedOut(Duration),
    Stopped,
}

/// Starts the shell and waits for it, a control or the deadline.
async fn supervise(
    c: &CommandSpec,
    config: &ExecConfig,
    req: &ExecRequest,
    paths: Paths<'_>,
    timeout: Option<Duration>,
    events: mpsc::Sender<ExecEvent>,
    mut control: mpsc::Receiver<Control>,
) -> ExecResult {
    let mut cmd = tokio::process::Command::new(SHELL);
    cmd.arg("-c").arg(&c.cmd).current_dir(paths.cwd).env_clear();
    for (name, value) in &config.pass_env {
        cmd.env(name, value);
    }
    cmd.envs(req.env.iter().map(|(k, v)| (k, v)))
        .env("QM_CHECKPOINT_FILE", paths.checkpoint_file)
        .env("QM_WORK_DIR", paths.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    child::confine(&mut cmd, config.limits);
    let mut shell = match cmd.spawn() {
        Ok(ch) => ch,
        Err(e) => return ExecResult::failed(format!("starting `{SHELL} -c {}`: {e}", c.cmd)),
    };
    let mut group = Group::led_by(shell.id().expect("a child just spawned has a pid"));
    let stdout = Capture::start(shell.stdout.take(), config.limits.output_bytes);
    let stderr = Capture::start(shell.stderr.take(), config.limits.output_bytes.min(TASK_ERROR_LEN_MAX_BYTES));
    let read_checkpoint = || {
        let fits = std::fs::metadata(paths.checkpoint_file)
            .is_ok_and(|m| m.len() > 0 && m.len() <= TASK_CHECKPOINT_BYTES_MAX as u64);
        fits.then(|| std::fs::read(paths.checkpoint_file).ok()).flatten()
    };
    let _ = events.send(ExecEvent::Progress { percent: 0, stage: "running".into(), usage: Usage::default() }).await;
    let deadline = async {
        match timeout {
            Some(t) => {
                tokio::time::sleep(t).await;
                t
            }
            None => std::future::pending::<Duration>().await,
        }
    };
    tokio::pin!(deadline);
    let grace = config.kill_grace;
    let ended = loop {
        tokio::select! {
            status = shell.wait() => break Ended::Exited(status),
            t = &mut deadline => {
                stop(&mut shell, &group, grace).await;
                break Ended::TimedOut(t);
            }
            ctl = control.recv() => {
                if ctl == Some(Control::Checkpoint) {
                    if let Some(data) = read_checkpoint() {
                        let _ = events.send(ExecEvent::Checkpoint(data)).await;
                    }
                    continue;
                }
                stop(&mut shell, &group, grace).await;
                if let Some(data) = read_checkpoint() {
                    let _ = events.send(ExecEvent::Checkpoint(data)).await;
                }
                break Ended::Stopped;
            }
        }
    };
    // The shell has exited: whatever is left of its group (background jobs, daemons) goes.
    group.kill_and_disarm();
    let status = match ended {
        Ended::Exited(status) => status,
        Ended::TimedOut(t) => return ExecResult::timed_out(t),
        Ended::Stopped => return ExecResult::stopped(Usage::default()),
    };
    let (out, err) = (stdout.finish().await, stderr.finish().await);
    match status {
        Ok(status) => {
            let ok = status.success();
            let mut error = err.text("stderr");
            if !ok && error.is_empty() {
                error = format!("exited with {status}");
            }
            let outcome = if ok { ExecOutcome::Succeeded } else { ExecOutcome::Failed };
            ExecResult { outcome, output: out.bytes("output"), error, usage: Usage::default() }
        }
        Err(e) => ExecResult::failed(format!("waiting for the command: {e}")),
    }
}

/// SIGTERM to the group, up to `grace` for the shell to exit, then SIGKILL to the group.
async fn stop(shell: &mut tokio::process::Child, group: &Group, grace: Duration) {
    group.signal(Signal::Term);
    let _ = tokio::time::timeout(grace, shell.wait()).await;
    group.signal(Signal::Kill);
    let _ = shell.wait().await;
}

/// One pipe read to its end: the first `keep` bytes kept, the rest counted.
#[derive(Debug, Default)]
struct Captured {
    kept: Vec<u8>,
    total: u64,
}

impl Captured {
    /// The kept bytes, ending with a note when some were dropped (the whole within the cap).
    fn bytes(self, what: &str) -> Vec<u8> {
        if self.total <= self.kept.len() as u64 {
            return self.kept;
        }
        let cap = self.kept.len();
        let note = format!("\n[qm: {what} truncated to {cap} bytes; the command wrote {}]\n", self.total);
        let mut out = self.kept;
        out.truncate(cap.saturating_sub(note.len()));
        out.extend_from_slice(note.as_bytes());
        out.truncate(cap);
        out
    }

    /// [`Captured::bytes`] as text.
    fn text(self, what: &str) -> String {
        String::from_utf8_lossy(&self.bytes(what)).into_owned()
    }
}

/// A pipe being read by a task of its own, so a full pipe never blocks the child.
struct Capture {
    captured: Arc<Mutex<Captured>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Capture {
    fn start(pipe: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>, keep: usize) -> Capture {
        let captured = Arc::new(Mutex::new(Captured::default()));
        let into = captured.clone();
        let reader = tokio::spawn(async move {
            let Some(mut pipe) = pipe else { return };
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut c = into.lock().expect("capture");
                let room = keep.saturating_sub(c.kept.len());
                c.kept.extend_from_slice(&buf[..n.min(room)]);
                c.total += n as u64;
            }
        });
        Capture { captured, reader }
    }

    /// What was read, once the pipe closes; after [`OUTPUT_DRAIN_MAX`] (a process that left
    /// the group still holds it open), what was read so far.
    async fn finish(mut self) -> Captured {
        if tokio::time::timeout(OUTPUT_DRAIN_MAX, &mut self.reader).await.is_err() {
            self.reader.abort();
        }
        std::mem::take(&mut *self.captured.lock().expect("capture"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdirs_stay_inside_the_attempt_directory() {
        let dir = Path::new("/w/task-1-attempt-1");
        assert_eq!(workdir_in(dir, None).unwrap(), dir);
        assert_eq!(workdir_in(dir, Some("src/app")).unwrap(), dir.join("src/app"));
        assert_eq!(workdir_in(dir, Some("./a")).unwrap(), dir.join("./a"));
        for bad in ["..", "a/../../etc", "/etc", "/"] {
            let e = workdir_in(dir, Some(bad)).expect_err(bad);
            assert!(e.starts_with(&format!("payload.workdir: {bad:?} refused")), "{e}");
        }
    }

    #[test]
    fn a_truncated_capture_says_so_within_its_cap() {
        let whole = Captured { kept: b"abc".to_vec(), total: 3 };
        assert_eq!(whole.bytes("output"), b"abc");
        let cut = Captured { kept: vec![b'x'; 200], total: 10_000 };
        let out = String::from_utf8(cut.bytes("output")).unwrap();
        assert_eq!(out.len(), 200);
        assert!(
            out.starts_with("xxx") && out.ends_with("[qm: output truncated to 200 bytes; the command wrote 10000]\n")
        );
    }
}
