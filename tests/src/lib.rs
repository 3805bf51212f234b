//! Black-box test helpers: real `qm coordinator` processes on loopback, a client, and a
//! fenced resource that checks what the cluster's tokens promise.
//!
//! Processes are started with `qm coordinator run` and stopped by PID (SIGKILL where a test
//! says so); a [`Cluster`] kills whatever is left when dropped. [`model`] is a stand-in model
//! provider, [`git`] makes real repositories.

pub mod git;
pub mod image;
pub mod model;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;

/// The `qm` binary built beside this test, or the one `QM_BIN` names (to run the black-box
/// tests against another build, e.g. a release binary or an older commit's). The scenarios
/// are test targets of the `qm-cli` package, so cargo has built this binary afresh before
/// it runs them.
pub fn qm_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("QM_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(bin.exists(), "QM_BIN={} does not exist", bin.display());
        return bin;
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let bin = dir.join("qm");
    assert!(bin.exists(), "{} not built; run the tests with `cargo test --workspace`", bin.display());
    bin
}

/// Ports handed out to servers are taken from this range, below the kernel's ephemeral range
/// (32768–60999 by default), so no outgoing connection of any process can be holding one.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// Ports this test process has handed out: never handed out twice, though a server may not
/// have bound its port yet when the next test asks for one.
static PORTS_TAKEN: Mutex<Option<std::collections::BTreeSet<u16>>> = Mutex::new(None);

/// A free loopback port for a server to listen on: one this process has not handed out before,
/// outside the ephemeral range, and free to bind when handed out. Parallel tests in one binary
/// cannot race for it; test binaries run one after another.
pub fn free_port() -> u16 {
    let mut taken = PORTS_TAKEN.lock().expect("ports lock");
    let taken = taken.get_or_insert_with(Default::default);
    // Start where the process id points, so consecutive test binaries use different ports.
    let span = u32::from(PORTS.end - PORTS.start);
    let offset = (std::process::id() % span) as u16;
    for i in 0..span as u16 {
        let port = PORTS.start + (offset + i) % (span as u16);
        if !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
    panic!("no free port in {PORTS:?}");
}

/// Every poll of [`eventually`] waits this long before the next.
pub const POLL_MS: u64 = 50;

/// The one way a process test waits for something: runs `probe` every [`POLL_MS`] until it
/// returns `Ok`, for at most `within`, and panics naming `what` and the last thing `probe`
/// saw (its `Err`).
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = match probe().await {
            Ok(t) => return t,
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("{what} did not happen within {within:?}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
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
    /// The first admin token's secret: every node is started with it as
    /// `--initial-admin-token-file`, so whichever leads first bootstraps access control.
    pub token: String,
    /// Whether the nodes serve TLS with certificates `qm cert` made in `dir/certs`.
    pub tls: bool,
    /// More `qm coordinator run` flags every node starts (and restarts) with.
    pub node_flags: Vec<String>,
    /// Each node's peer port (`--peer-listen`), when the cluster's nodes have one: Raft goes
    /// there and `--peers` names it (`id=address/peer_address`). Empty: Raft on `addrs`.
    pub peer_addrs: BTreeMap<u64, String>,
}

/// A fresh random secret for a test cluster's first admin token.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("randomness");
    format!("qm-test-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

impl Cluster {
    /// Starts `n` voters that form a cluster from config; serving TLS when `QM_TEST_TLS` is
    /// set (the whole process suite then runs with TLS as well as tokens).
    pub fn start(n: u64, snapshot_logs: u64) -> Cluster {
        Cluster::start_with_flags(n, snapshot_logs, &[])
    }

    /// [`Cluster::start`] with more `qm coordinator run` flags for every node
    /// (`--audit-bytes-max 65536`).
    pub fn start_with_flags(n: u64, snapshot_logs: u64, flags: &[&str]) -> Cluster {
        let tls = std::env::var_os("QM_TEST_TLS").is_some_and(|v| !v.is_empty());
        Cluster::start_with(n, snapshot_logs, tls, false, flags)
    }

    /// Starts `n` voters serving TLS: a CA, node certificates for 127.0.0.1 and a client
    /// certificate `ops`, all made with `qm cert` in `dir/certs`.
    pub fn start_tls(n: u64) -> Cluster {
        Cluster::start_with(n, 10_000, true, false, &[])
    }

    /// Starts `n` voters serving TLS, each with a peer port of its own (`--peer-listen`) that
    /// `--peers` names: Raft goes only there.
    pub fn start_tls_peer_ports(n: u64) -> Cluster {
        Cluster::start_with(n, 10_000, true, true, &[])
    }

    fn start_with(n: u64, snapshot_logs: u64, tls: bool, peer_ports: bool, flags: &[&str]) -> Cluster {
        let addrs: BTreeMap<u64, String> = (1..=n).map(|i| (i, format!("127.0.0.1:{}", free_port()))).collect();
        let peer_addrs = if peer_ports {
            (1..=n).map(|i| (i, format!("127.0.0.1:{}", free_port()))).collect()
        } else {
            BTreeMap::new()
        };
        let mut c = Cluster {
            dir: tempfile::tempdir().expect("tempdir"),
            addrs,
            procs: BTreeMap::new(),
            snapshot_logs,
            workers: BTreeMap::new(),
            token: random_secret(),
            tls,
            node_flags: flags.iter().map(|f| f.to_string()).collect(),
            peer_addrs,
        };
        std::fs::write(c.admin_secret_file(), &c.token).expect("write the admin secret");
        if tls {
            c.make_certs(n);
        }
        for id in 1..=n {
            c.spawn(id, false);
        }
        c.wait_bootstrapped();
        c
    }

    /// Waits (bounded) until a node answers the admin token: the cluster has a leader and it
    /// has bootstrapped access control. Runs on a thread of its own, so it may be called from
    /// inside a test's runtime.
    fn wait_bootstrapped(&self) {
        let client = self.client();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(eventually("access control bootstrapped", Duration::from_secs(30), || async {
                client.status().await.map(|_| ()).map_err(|e| e.to_string())
            }))
        })
        .join()
        .expect("waiting for bootstrap");
    }

    /// Where `qm cert` wrote the cluster's CA and certificates.
    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn make_certs(&self, n: u64) {
        let dir = self.certs();
        let dir = dir.to_str().expect("utf-8 path");
        let mut runs: Vec<Vec<String>> = vec![vec!["cert".into(), "ca".into(), "--dir".into(), dir.into()]];
        for id in 1..=n {
            runs.push(
                ["cert", "node", "--dir", dir, "--id", &id.to_string(), "--host", "127.0.0.1"]
                    .map(String::from)
                    .to_vec(),
            );
        }
        runs.push(["cert", "client", "--dir", dir, "--name", "ops"].map(String::from).to_vec());
        for args in runs {
            let out = Command::new(qm_bin()).args(&args).output().expect("run qm cert");
            assert!(out.status.success(), "qm {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
    }

    /// The cluster CA and a client certificate (`ops`) as a client's TLS.
    pub fn client_tls(&self, with_client_cert: bool) -> qm_shared::client::ClientTls {
        self.tls_as(with_client_cert.then_some("client-ops"))
    }

    /// The cluster CA, presenting the certificate `certs/<stem>.pem` (`node-2`, `client-ops`)
    /// or none.
    pub fn tls_as(&self, stem: Option<&str>) -> qm_shared::client::ClientTls {
        let read = |f: &str| std::fs::read(self.certs().join(f)).expect("read a certificate file");
        let identity = stem.map(|s| (read(&format!("{s}.pem")), read(&format!("{s}.key"))));
        qm_shared::client::ClientTls::new(&read("ca.pem"), identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())))
    }

    /// Issues a node certificate for `id` from the cluster CA with `qm cert node` (for an id
    /// that is not a member, say), as `certs/node-<id>.pem`.
    pub fn issue_node_certificate(&self, id: u64) {
        let dir = self.certs();
        let out = Command::new(qm_bin())
            .args(["cert", "node", "--id", &id.to_string(), "--host", "127.0.0.1", "--dir"])
            .arg(&dir)
            .output()
            .expect("run qm cert node");
        assert!(out.status.success(), "qm cert node --id {id}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The file every node reads its first admin token from.
    pub fn admin_secret_file(&self) -> PathBuf {
        self.dir.path().join("admin.secret")
    }

    /// `--peers`: `id=address`, or `id=address/peer_address` for a node with a peer port.
    fn peers(&self) -> String {
        let member = |(i, a): (&u64, &String)| match self.peer_addrs.get(i) {
            Some(p) => format!("{i}={a}/{p}"),
            None => format!("{i}={a}"),
        };
        self.addrs.iter().map(member).collect::<Vec<_>>().join(",")
    }

    /// Starts (or restarts, from its data directory) node `id`; `join` starts it empty.
    pub fn spawn(&mut self, id: u64, join: bool) {
        let addr = self.addrs.entry(id).or_insert_with(|| format!("127.0.0.1:{}", free_port())).clone();
        let mut cmd = Command::new(qm_bin());
        cmd.args(["coordinator", "run", "--id", &id.to_string(), "--listen", &addr, "--admin-listen", ""])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("n{id}")))
            .args(["--snapshot-logs", &self.snapshot_logs.to_string()])
            .arg("--initial-admin-token-file")
            .arg(self.admin_secret_file())
            .args(self.tls_args(Some(id)))
            .args(self.peer_addrs.get(&id).map(|p| vec!["--peer-listen".to_string(), p.clone()]).unwrap_or_default())
            .args(&self.node_flags)
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
        self.spawn_worker_with(node, slots, &[], &[]);
    }

    /// [`Cluster::spawn_worker`] with more flags (`--enable-executor command`, `--provider …`)
    /// and variables in the worker's environment.
    pub fn spawn_worker_with(&mut self, node: &str, slots: &[&str], flags: &[&str], env: &[(&str, &str)]) {
        let mut cmd = Command::new(qm_bin());
        cmd.args(self.tls_args(None));
        cmd.args(["worker", "run", "--node-id", node, "--session-ttl-ms", "3000", "--blocked-after-ms", "500"])
            .args(["--endpoint", &self.endpoints()]);
        for s in slots {
            cmd.args(["--slots", s]);
        }
        cmd.args(flags).envs(env.iter().copied());
        if !flags.contains(&"--work-root") {
            // Each worker of each test works under the cluster's own directory, so two tests'
            // workers of one node id never share attempt directories or mirrors.
            cmd.arg("--work-root").arg(self.dir.path().join(format!("work-{node}")));
        }
        cmd.env("QM_LOG", "warn").env("QM_TOKEN", &self.token).stdout(Stdio::null()).stderr(Stdio::null());
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
        eventually(&format!("{n} workers registering"), Duration::from_secs(10), || async {
            let got = client.list_workers().await.map_err(|e| e.to_string())?;
            if got.workers.len() >= n {
                Ok(())
            } else {
                Err(format!("{} registered", got.workers.len()))
            }
        })
        .await
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
        self.run_qm(endpoints, &self.token, args)
    }

    /// Runs `qm ARGS… --endpoint <every node> -o json` with `token` (empty: none, and no
    /// token file either): (exit code, stdout, stderr).
    pub fn qm_at_with(&self, token: &str, args: &[&str]) -> (i32, String, String) {
        self.run_qm(&self.endpoints(), token, args)
    }

    /// `qm ARGS… --endpoint <every node> -o json` with the admin token, to spawn as a process
    /// of the test's own (to signal it, or to run it alongside others).
    pub fn qm_command(&self, args: &[&str]) -> Command {
        self.qm_command_at(&self.endpoints(), &self.token, args)
    }

    fn qm_command_at(&self, endpoints: &str, token: &str, args: &[&str]) -> Command {
        let mut command = Command::new(qm_bin());
        // The global flags first, so that ARGS may end in `-- CMD…` (`qm reserve run`).
        command
            .args(self.tls_args(None))
            .args(["--endpoint", endpoints, "-o", "json"])
            .args(args)
            .env("QM_LOG", "warn")
            .env("QM_TOKEN", token)
            .env("XDG_CONFIG_HOME", self.dir.path());
        command
    }

    fn run_qm(&self, endpoints: &str, token: &str, args: &[&str]) -> (i32, String, String) {
        let out = self.qm_command_at(endpoints, token, args).output().expect("run qm");
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

    /// `--tls-*` flags for node `id` (its own certificate), or for a client (the CA only).
    fn tls_args(&self, id: Option<u64>) -> Vec<String> {
        if !self.tls {
            return Vec::new();
        }
        let path = |f: String| self.certs().join(f).display().to_string();
        let mut args = vec!["--tls-ca".to_string(), path("ca.pem".into())];
        if let Some(id) = id {
            args.extend([
                "--tls-cert".into(),
                path(format!("node-{id}.pem")),
                "--tls-key".into(),
                path(format!("node-{id}.key")),
            ]);
        }
        args
    }

    /// `client`, speaking TLS when the cluster does.
    fn tls_client(&self, client: Client) -> Client {
        if self.tls {
            client.with_tls(self.client_tls(false)).expect("tls client")
        } else {
            client
        }
    }

    /// A client of every node carrying the admin token.
    pub fn client(&self) -> Client {
        self.client_with(&self.token)
    }

    /// A client of node `id` only, carrying the admin token.
    pub fn client_of(&self, id: u64) -> Client {
        self.tls_client(
            Client::new([self.addrs[&id].as_str()]).and_then(|c| c.with_token(&self.token)).expect("client"),
        )
    }

    /// A client of nodes `ids` only, carrying the admin token.
    pub fn client_among(&self, ids: &[u64]) -> Client {
        let addrs = ids.iter().map(|i| self.addrs[i].as_str());
        self.tls_client(Client::new(addrs).and_then(|c| c.with_token(&self.token)).expect("client"))
    }

    /// A client of every node carrying `token` (empty: none).
    pub fn client_with(&self, token: &str) -> Client {
        self.tls_client(Client::new(self.addrs.values()).and_then(|c| c.with_token(token)).expect("client"))
    }

    /// Status as node `id` sees it (no leader following).
    pub async fn status_of(&self, id: u64) -> Option<pb::StatusResponse> {
        use qm_shared::client::{Bearer, Connector, Transport};
        let scheme = if self.tls { "https" } else { "http" };
        let ep = tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", self.addrs[&id])).ok()?;
        let connector = if self.tls { Connector::tls(self.client_tls(false)) } else { Connector::tcp() };
        let ch = Transport::new(connector.connect(ep), Bearer::new(&self.token).ok()?);
        Client::cluster(ch).status(pb::StatusRequest {}).await.ok().map(|r| r.into_inner())
    }

    /// Waits (bounded) until some node reports a leader among `among`; returns its id.
    pub async fn leader(&self, among: &[u64]) -> u64 {
        eventually(&format!("a leader among {among:?}"), Duration::from_secs(15), || async {
            for id in among {
                if let Some(l) = self.status_of(*id).await.and_then(|s| s.leader_id) {
                    if among.contains(&l) {
                        return Ok(l);
                    }
                }
            }
            Err("no node of them names one of them leader".into())
        })
        .await
    }

    /// Waits (bounded) until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64) -> pb::StatusResponse {
        eventually(&format!("node {id} applying index {index}"), Duration::from_secs(30), || async {
            match self.status_of(id).await {
                Some(s) if s.applied_index >= index => Ok(s),
                Some(s) => Err(format!("applied {}", s.applied_index)),
                None => Err("no answer".into()),
            }
        })
        .await
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

/// A resource guarded by fencing tokens, as a careful adapter would be: it refuses a token
/// lower than the highest it has seen, and records as a violation both every refused token (a
/// holder writing with a token older than one already used: either the cluster handed out
/// tokens out of order, or a holder outlived its lease) and any overlap of exclusive holders.
///
/// A test expecting a refusal (a revoked holder, on purpose) says so with
/// [`Fence::take_refusals`]; every other test asserts [`Fence::violations`] is empty.
#[derive(Debug, Default)]
pub struct Fence {
    inner: Mutex<FenceState>,
}

#[derive(Debug, Default)]
struct FenceState {
    highest: BTreeMap<String, u64>,
    holder: BTreeMap<String, (String, u64)>,
    refusals: Vec<String>,
    overlaps: Vec<String>,
    entries: u64,
}

/// How long a cluster test's holder stays inside the fence: long enough for a second holder
/// granted by mistake to arrive while the first is still there.
pub const FENCE_HOLD_MS: u64 = 5;

impl Fence {
    /// A holder with `token` starts writing to `resource`. Returns false if refused (and
    /// records the refusal).
    pub fn enter(&self, resource: &str, who: &str, token: u64) -> bool {
        let mut s = self.inner.lock().expect("fence");
        let high = s.highest.get(resource).copied().unwrap_or(0);
        if token < high {
            s.refusals.push(format!("{resource}: {who} wrote with token {token} after token {high} was used"));
            return false;
        }
        s.highest.insert(resource.to_string(), token);
        if let Some((other, t)) = s.holder.get(resource).cloned() {
            s.overlaps.push(format!("{resource}: {who} (token {token}) entered while {other} (token {t}) was inside"));
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

    /// Enters, holds for [`FENCE_HOLD_MS`] and leaves, as a holder doing one write would.
    pub async fn write(&self, resource: &str, who: &str, token: u64) -> bool {
        if !self.enter(resource, who, token) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(FENCE_HOLD_MS)).await;
        self.leave(resource, who);
        true
    }

    /// Every refused token and every overlap seen so far.
    pub fn violations(&self) -> Vec<String> {
        let s = self.inner.lock().expect("fence");
        s.refusals.iter().chain(&s.overlaps).cloned().collect()
    }

    /// The refusals so far, forgotten: for a test that made one on purpose.
    pub fn take_refusals(&self) -> Vec<String> {
        std::mem::take(&mut self.inner.lock().expect("fence").refusals)
    }

    pub fn entries(&self) -> u64 {
        self.inner.lock().expect("fence").entries
    }
}

/// An acquire of `resource`, exclusive, waiting (up to 20 s), with a 20 s lease.
pub fn exclusive_wait(session: u64, owner: &str, resource: &str) -> pb::AcquireRequest {
    pb::AcquireRequest {
        session_id: session,
        owner: owner.to_string(),
        resources: vec![pb::ResourceRequest { path: resource.to_string(), mode: pb::Mode::Exclusive as i32, units: 0 }],
        kind: pb::AcquireKind::Wait as i32,
        priority: 500,
        lease_ms: 20_000,
        wait_timeout_ms: Some(20_000),
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
    match client.acquire(exclusive_wait(session, owner, resource)).await.map_err(|s| s.to_string())?.outcome {
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

#[cfg(test)]
mod fence_tests {
    use super::Fence;

    #[test]
    fn a_backward_token_is_a_violation() {
        let f = Fence::default();
        assert!(f.enter("r", "a", 7));
        f.leave("r", "a");
        assert!(!f.enter("r", "b", 5), "an older token is refused");
        assert_eq!(f.violations(), ["r: b wrote with token 5 after token 7 was used"]);
    }

    #[test]
    fn an_overlap_is_a_violation_and_equal_tokens_are_not_refused() {
        let f = Fence::default();
        assert!(f.enter("r", "a", 7));
        assert!(f.enter("r", "b", 7));
        assert_eq!(f.violations(), ["r: b (token 7) entered while a (token 7) was inside"]);
        assert!(f.take_refusals().is_empty());
    }

    #[test]
    fn a_refusal_made_on_purpose_is_taken_back() {
        let f = Fence::default();
        assert!(f.enter("r", "new", 9));
        f.leave("r", "new");
        assert!(!f.enter("r", "revoked", 3));
        assert_eq!(f.take_refusals().len(), 1);
        assert!(f.violations().is_empty());
    }
}
