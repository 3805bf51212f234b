//! Black-box test helpers: real `qm coordinator` processes on loopback, a client, and a
//! fenced resource that checks what the cluster's tokens promise.
//!
//! Processes are started with `qm coordinator run` and stopped by PID (SIGKILL where a test
//! says so); a [`Cluster`] kills whatever is left when dropped.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;

/// The `qm` binary built beside this test, or the one `QM_BIN` names (to run the black-box
/// tests against another build, e.g. a release binary or an older commit's).
pub fn qm_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("QM_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(bin.exists(), "QM_BIN={} does not exist", bin.display());
        return bin;
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let bin = dir.join("qm");
    assert!(bin.exists(), "{} not built; run `cargo build -p qm-cli` (cargo test --workspace does)", bin.display());
    bin
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A cluster of coordinator processes.
#[derive(Debug)]
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub addrs: BTreeMap<u64, String>,
    pub procs: BTreeMap<u64, Child>,
    pub snapshot_logs: u64,
    /// Worker processes by node id.
    pub workers: BTreeMap<String, Child>,
}

impl Cluster {
    /// Starts `n` voters that form a cluster from config.
    pub fn start(n: u64, snapshot_logs: u64) -> Cluster {
        let addrs: BTreeMap<u64, String> = (1..=n).map(|i| (i, format!("127.0.0.1:{}", free_port()))).collect();
        let mut c = Cluster {
            dir: tempfile::tempdir().expect("tempdir"),
            addrs,
            procs: BTreeMap::new(),
            snapshot_logs,
            workers: BTreeMap::new(),
        };
        for id in 1..=n {
            c.spawn(id, false);
        }
        c
    }

    fn peers(&self) -> String {
        self.addrs.iter().map(|(i, a)| format!("{i}={a}")).collect::<Vec<_>>().join(",")
    }

    /// Starts (or restarts, from its data directory) node `id`; `join` starts it empty.
    pub fn spawn(&mut self, id: u64, join: bool) {
        let addr = self.addrs.entry(id).or_insert_with(|| format!("127.0.0.1:{}", free_port())).clone();
        let mut cmd = Command::new(qm_bin());
        cmd.args(["coordinator", "run", "--id", &id.to_string(), "--listen", &addr, "--admin-listen", ""])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("n{id}")))
            .args(["--snapshot-logs", &self.snapshot_logs.to_string()])
            .env("QM_LOG", std::env::var("QM_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn,sled=warn".into()))
            .stdout(Stdio::null())
            .stderr(self.log_file(&format!("n{id}")));
        if join {
            cmd.arg("--join");
        } else {
            cmd.args(["--peers", &self.peers()]);
        }
        let child = cmd.spawn().expect("spawn qm coordinator run");
        self.procs.insert(id, child);
    }

    /// Where a coordinator's log goes: `<name>.log` in `$QM_TEST_LOGS` when that is set (kept
    /// after the test), else in the cluster's own directory; appended across restarts.
    fn log_path(&self, name: &str) -> PathBuf {
        let dir = std::env::var_os("QM_TEST_LOGS").map_or_else(|| self.dir.path().to_path_buf(), PathBuf::from);
        dir.join(format!("{name}.log"))
    }

    fn log_file(&self, name: &str) -> Stdio {
        let path = self.log_path(name);
        match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => Stdio::from(f),
            Err(e) => panic!("opening {}: {e}", path.display()),
        }
    }

    /// What node `id` has logged so far (every incarnation), at `QM_TEST_LOG` (default: info,
    /// openraft and sled at warn).
    pub fn log_of(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(&format!("n{id}"))).unwrap_or_default()
    }

    /// SIGKILL node `id` and reap it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.procs.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Pauses node `id` (SIGSTOP): it neither answers nor times out until [`Cluster::resume`].
    pub fn pause(&self, id: u64) {
        self.signal(id, "-STOP");
    }

    /// Resumes a paused node (SIGCONT).
    pub fn resume(&self, id: u64) {
        self.signal(id, "-CONT");
    }

    fn signal(&self, id: u64, signal: &str) {
        let pid = self.procs.get(&id).unwrap_or_else(|| panic!("node {id} is not running")).id();
        let status = Command::new("kill").args([signal, &pid.to_string()]).status().expect("run kill");
        assert!(status.success(), "kill {signal} {pid} (node {id}) failed");
    }

    /// Starts `qm worker run --node-id NODE --slots ROLE=N...` against every node.
    pub fn spawn_worker(&mut self, node: &str, slots: &[&str]) {
        let mut cmd = Command::new(qm_bin());
        cmd.args(["worker", "run", "--node-id", node, "--session-ttl-ms", "3000", "--blocked-after-ms", "500"])
            .args(["--endpoint", &self.endpoints()]);
        for s in slots {
            cmd.args(["--slots", s]);
        }
        cmd.env("QM_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::null());
        self.workers.insert(node.to_string(), cmd.spawn().expect("spawn qm worker run"));
    }

    /// SIGKILL worker `node` and reap it.
    pub fn kill_worker(&mut self, node: &str) {
        if let Some(mut child) = self.workers.remove(node) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (bounded) until `n` workers are registered.
    pub async fn wait_workers(&self, n: usize) {
        let client = self.client();
        for _ in 0..200 {
            let got = client
                .call(|ch| async move { Ok(Client::tasks(ch).workers(pb::ListWorkersRequest {}).await?.into_inner()) })
                .await;
            if got.is_ok_and(|w| w.workers.len() >= n) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{n} workers did not register within 10 s");
    }

    /// Runs `qm ARGS… --endpoint <every node> -o json` and parses its stdout; panics naming
    /// the command and its stderr unless it exits 0.
    pub fn qm_json(&self, args: &[&str]) -> serde_json::Value {
        let (code, out, err) = self.qm(args);
        assert_eq!(code, 0, "qm {} exited {code}: {err}", args.join(" "));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("qm {}: stdout is not JSON ({e}): {out}", args.join(" ")))
    }

    /// Runs `qm ARGS… --endpoint <every node> -o json`: (exit code, stdout, stderr).
    pub fn qm(&self, args: &[&str]) -> (i32, String, String) {
        self.qm_at(&self.endpoints(), args)
    }

    /// Runs `qm ARGS… --endpoint <node id's address> -o json`: (exit code, stdout, stderr).
    pub fn qm_on(&self, id: u64, args: &[&str]) -> (i32, String, String) {
        self.qm_at(&self.addrs[&id], args)
    }

    fn qm_at(&self, endpoints: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(qm_bin())
            .args(args)
            .args(["--endpoint", endpoints, "-o", "json"])
            .env("QM_LOG", "warn")
            .output()
            .expect("run qm");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// Every node's address, comma-separated, as `--endpoint` takes them.
    pub fn endpoints(&self) -> String {
        self.addrs.values().cloned().collect::<Vec<_>>().join(",")
    }

    pub fn client(&self) -> Client {
        Client::new(self.addrs.values()).expect("client")
    }

    pub fn client_of(&self, id: u64) -> Client {
        Client::new([self.addrs[&id].as_str()]).expect("client")
    }

    /// Status as node `id` sees it (no leader following).
    pub async fn status_of(&self, id: u64) -> Option<pb::StatusResponse> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addrs[&id]))
            .ok()?
            .connect()
            .await
            .ok()?;
        Client::cluster(ch).status(pb::StatusRequest {}).await.ok().map(|r| r.into_inner())
    }

    /// Waits (bounded) until some node reports a leader among `among`; returns its id.
    pub async fn leader(&self, among: &[u64]) -> u64 {
        for _ in 0..300 {
            for id in among {
                if let Some(s) = self.status_of(*id).await {
                    if let Some(l) = s.leader_id {
                        if among.contains(&l) {
                            return l;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader among {among:?} within 15 s");
    }

    /// Waits (bounded) until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64) -> pb::StatusResponse {
        for _ in 0..600 {
            if let Some(s) = self.status_of(id).await {
                if s.applied_index >= index {
                    return s;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {id} did not apply index {index} within 30 s");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let nodes: Vec<String> = self.workers.keys().cloned().collect();
        for n in nodes {
            self.kill_worker(&n);
        }
        let ids: Vec<u64> = self.procs.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

/// A resource guarded by fencing tokens, as a careful adapter would be: it rejects a token
/// lower than the highest it has seen and records any overlap of exclusive holders.
#[derive(Debug, Default)]
pub struct Fence {
    inner: Mutex<FenceState>,
}

#[derive(Debug, Default)]
struct FenceState {
    highest: BTreeMap<String, u64>,
    holder: BTreeMap<String, (String, u64)>,
    violations: Vec<String>,
    entries: u64,
}

impl Fence {
    /// A holder with `token` starts writing to `resource`. Returns false if rejected.
    pub fn enter(&self, resource: &str, who: &str, token: u64) -> bool {
        let mut s = self.inner.lock().expect("fence");
        let high = s.highest.get(resource).copied().unwrap_or(0);
        if token < high {
            return false;
        }
        s.highest.insert(resource.to_string(), token);
        if let Some((other, t)) = s.holder.get(resource).cloned() {
            s.violations
                .push(format!("{resource}: {who} (token {token}) entered while {other} (token {t}) was inside"));
        }
        s.holder.insert(resource.to_string(), (who.to_string(), token));
        s.entries += 1;
        true
    }

    pub fn leave(&self, resource: &str, who: &str) {
        let mut s = self.inner.lock().expect("fence");
        if s.holder.get(resource).is_some_and(|(w, _)| w == who) {
            s.holder.remove(resource);
        }
    }

    pub fn violations(&self) -> Vec<String> {
        self.inner.lock().expect("fence").violations.clone()
    }

    pub fn entries(&self) -> u64 {
        self.inner.lock().expect("fence").entries
    }
}

/// Acquires `resource` exclusively under `session`, waiting; returns the reservation.
pub async fn acquire_wait(
    client: &Client,
    session: u64,
    owner: &str,
    resource: &str,
) -> Result<pb::Reservation, String> {
    use futures::StreamExt;
    let mut events = client
        .watch(pb::WatchRequest { session_id: Some(session), ..Default::default() })
        .await
        .map_err(|s| s.to_string())?;
    let req = pb::AcquireRequest {
        session_id: session,
        owner: owner.to_string(),
        resources: vec![pb::ResourceRequest { path: resource.to_string(), mode: pb::Mode::Exclusive as i32, units: 0 }],
        kind: pb::AcquireKind::Wait as i32,
        priority: 500,
        lease_ms: 20_000,
        wait_timeout_ms: Some(20_000),
    };
    match client.acquire(req).await.map_err(|s| s.to_string())?.outcome {
        Some(pb::acquire_response::Outcome::Granted(g)) => Ok(g.reservations[0].clone()),
        Some(pb::acquire_response::Outcome::Queued(q)) => {
            while let Some(ev) = events.next().await {
                match ev.map_err(|s| s.to_string())?.kind {
                    Some(pb::watch_event::Kind::Granted(g)) if g.request_id == q.request_id => {
                        return Ok(g.reservations[0].clone())
                    }
                    Some(pb::watch_event::Kind::TimedOut(t)) if t.request_id == q.request_id => {
                        return Err("timed out".into())
                    }
                    _ => {}
                }
            }
            Err("watch ended".into())
        }
        other => Err(format!("not granted: {other:?}")),
    }
}

pub async fn release(client: &Client, session: u64, id: u64) -> Result<(), String> {
    client
        .release(pb::ReleaseRequest {
            session_id: session,
            target: Some(pb::release_request::Target::ReservationId(id)),
        })
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}
