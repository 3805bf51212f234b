//! Engines: where an attempt's processes run.
//!
//! * `local` (always offered): a process group under the worker, with its rlimits and cleared
//!   environment ([`super::command`]).
//! * `container` (offered with `qm worker run --engine container`): one container per command
//!   on the Docker Engine, through its API (bollard, over the local socket). The workspace is
//!   bind-mounted at `/work` and is the working directory; the network is off; memory (swap
//!   included), CPUs and processes are limited by the worker's `--container-*` flags; every
//!   capability is dropped and privileges cannot be gained; it runs as the worker's own user,
//!   so what it writes the worker can commit. The image is the payload's `image`, else the
//!   worker's `--container-image`. The container is removed after, however it ends; a stop, a
//!   cancel or a timeout kills it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bollard::container::{
    Config, CreateContainerOptions, KillContainerOptions, LogOutput, LogsOptions, RemoveContainerOptions,
    StartContainerOptions, WaitContainerOptions,
};
use bollard::models::HostConfig;
use bollard::Docker;
use futures::StreamExt;
use qm_shared::limits::TASK_ERROR_LEN_MAX_BYTES;
use tokio::sync::mpsc;

use super::{truncate_at_char, Control, ExecConfig, ExecOutcome, ExecRequest, ExecResult, Usage};

/// Where a workspace is mounted in a container, and its working directory.
pub const CONTAINER_WORKDIR: &str = "/work";
/// The PATH of a container's shell (the image's own directories; never the worker's PATH).
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An engine an attempt may run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Engine {
    Local,
    Container,
}

impl Engine {
    pub fn parse(name: &str) -> Result<Engine, String> {
        match name {
            "" | "local" => Ok(Engine::Local),
            "container" => Ok(Engine::Container),
            _ => Err(format!("payload.engine: {name:?} is not an engine: local or container")),
        }
    }
}

/// What containers of this worker may use (`--container-*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerLimits {
    /// Memory, swap included, bytes.
    pub memory_bytes: u64,
    /// CPUs in billionths (Docker's NanoCpus): 2 CPUs = 2,000,000,000.
    pub nano_cpus: u64,
    /// Processes and threads.
    pub pids: u64,
    /// The image when a payload names none.
    pub default_image: Option<String>,
}

impl Default for ContainerLimits {
    fn default() -> Self {
        ContainerLimits { memory_bytes: 2 << 30, nano_cpus: 2_000_000_000, pids: 512, default_image: None }
    }
}

/// The engine and image a payload asks for, checked against what this worker offers.
pub(crate) fn choose(config: &ExecConfig, engine: &str, image: Option<&str>) -> Result<Option<String>, String> {
    match Engine::parse(engine)? {
        Engine::Local => Ok(None),
        Engine::Container if !config.engines.contains(&Engine::Container) => Err(
            "payload.engine: this worker offers no container engine (start it with `qm worker run --engine container`)"
                .into(),
        ),
        Engine::Container => {
            let image = image.map(str::to_string).or_else(|| config.container.default_image.clone());
            image.map(Some).ok_or_else(|| {
                "payload.image: empty, and the worker has no --container-image; name the image to run in".into()
            })
        }
    }
}

/// Runs `/bin/sh -c cmd` in a container of `image` with `host_dir` mounted at `/work`, until
/// it exits, `timeout` passes, or a control arrives (which kills it).
pub(crate) async fn run_in_container(
    image: &str,
    cmd: &str,
    host_dir: &Path,
    config: &ExecConfig,
    req: &ExecRequest,
    timeout: Duration,
    control: &mut mpsc::Receiver<Control>,
) -> ExecResult {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let docker = match Docker::connect_with_local_defaults() {
        Ok(d) => d,
        Err(e) => return ExecResult::failed(format!("container engine: connecting to the Docker Engine: {e}")),
    };
    let name = format!(
        "qm-task-{}-attempt-{}-{}-{}",
        req.task,
        req.attempt,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    // Removed however this ends, a dropped future (an agent stopped mid-command) included.
    let _reaper = Reaper { docker: docker.clone(), name: name.clone() };
    if let Err(e) = create(&docker, &name, image, cmd, host_dir, config, req).await {
        return ExecResult::failed(format!("container engine: creating a container of {image:?}: {e}"));
    }
    supervise(&docker, &name, config, timeout, control).await
}

/// Force-removes its container when dropped (killing it if it still runs).
struct Reaper {
    docker: Docker,
    name: String,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let (docker, name) = (self.docker.clone(), std::mem::take(&mut self.name));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let remove = RemoveContainerOptions { force: true, ..Default::default() };
                let _ = docker.remove_container(&name, Some(remove)).await;
            });
        }
    }
}

async fn create(
    docker: &Docker,
    name: &str,
    image: &str,
    cmd: &str,
    host_dir: &Path,
    config: &ExecConfig,
    req: &ExecRequest,
) -> Result<(), bollard::errors::Error> {
    let limits = &config.container;
    let mut env = vec![format!("PATH={CONTAINER_PATH}"), format!("QM_WORK_DIR={CONTAINER_WORKDIR}")];
    env.extend(req.env.iter().map(|(k, v)| format!("{k}={v}")));
    let user = format!("{}:{}", own_id("Uid:"), own_id("Gid:"));
    let host = HostConfig {
        binds: Some(vec![format!("{}:{CONTAINER_WORKDIR}", host_dir.display())]),
        memory: Some(limits.memory_bytes as i64),
        memory_swap: Some(limits.memory_bytes as i64),
        nano_cpus: Some(limits.nano_cpus as i64),
        pids_limit: Some(limits.pids as i64),
        network_mode: Some("none".into()),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        ..Default::default()
    };
    let body = Config {
        image: Some(image.to_string()),
        cmd: Some(vec!["/bin/sh".to_string(), "-c".to_string(), cmd.to_string()]),
        working_dir: Some(CONTAINER_WORKDIR.to_string()),
        env: Some(env),
        user: Some(user),
        network_disabled: Some(true),
        labels: Some(HashMap::from([("qm.task".to_string(), req.task.to_string())])),
        host_config: Some(host),
        ..Default::default()
    };
    docker.create_container(Some(CreateContainerOptions { name, platform: None }), body).await?;
    docker.start_container(name, None::<StartContainerOptions<String>>).await
}

/// The worker's real user (`Uid:`) or group (`Gid:`) id, from /proc/self/status.
fn own_id(key: &str) -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// How the wait for a container ended.
enum Ended {
    Exited(i64),
    TimedOut,
    Stopped,
    Lost(String),
}

async fn supervise(
    docker: &Docker,
    name: &str,
    config: &ExecConfig,
    timeout: Duration,
    control: &mut mpsc::Receiver<Control>,
) -> ExecResult {
    let mut wait = docker.wait_container(name, None::<WaitContainerOptions<String>>);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let ended = loop {
        tokio::select! {
            w = wait.next() => break match w {
                Some(Ok(r)) => Ended::Exited(r.status_code),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ended::Exited(code),
                Some(Err(e)) => Ended::Lost(e.to_string()),
                None => Ended::Lost("the wait ended without a status".into()),
            },
            _ = &mut deadline => break Ended::TimedOut,
            c = control.recv() => if c != Some(Control::Checkpoint) { break Ended::Stopped },
        }
    };
    if matches!(ended, Ended::TimedOut | Ended::Stopped) {
        let _ = docker.kill_container(name, None::<KillContainerOptions<String>>).await;
    }
    let oom = docker.inspect_container(name, None).await.ok().and_then(|i| i.state?.oom_killed).unwrap_or(false);
    let (stdout, stderr) = logs(docker, name, config.limits.output_bytes).await;
    let code = match ended {
        Ended::TimedOut => return ExecResult::timed_out(timeout),
        Ended::Stopped => return ExecResult::stopped(Usage::default()),
        Ended::Lost(e) => return ExecResult::failed(format!("container engine: waiting for {name}: {e}")),
        Ended::Exited(code) => code,
    };
    let mut error = stderr;
    if oom {
        error = format!(
            "killed: out of memory (the container's limit is {} bytes, --container-memory-bytes)\n{error}",
            config.container.memory_bytes
        );
    } else if code != 0 && error.is_empty() {
        error = format!("exited with status {code}");
    }
    truncate_at_char(&mut error, TASK_ERROR_LEN_MAX_BYTES);
    let outcome = if code == 0 && !oom { ExecOutcome::Succeeded } else { ExecOutcome::Failed };
    ExecResult { outcome, output: stdout.into_bytes(), error, usage: Usage::default() }
}

/// The container's stdout and stderr, each at most `max` bytes.
async fn logs(docker: &Docker, name: &str, max: usize) -> (String, String) {
    let options = LogsOptions::<String> { stdout: true, stderr: true, ..Default::default() };
    let mut stream = docker.logs(name, Some(options));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(Ok(chunk)) = stream.next().await {
        let (into, bytes) = match chunk {
            LogOutput::StdOut { message } => (&mut out, message),
            LogOutput::StdErr { message } => (&mut err, message),
            _ => continue,
        };
        let room = max.saturating_sub(into.len());
        into.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
    (String::from_utf8_lossy(&out).into_owned(), String::from_utf8_lossy(&err).into_owned())
}
