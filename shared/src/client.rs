//! The typed client library: a cluster given as a list of endpoints, leader hints followed,
//! the leader cached.
//!
//! ```text
//!   call(f) ─▶ cached leader (or the next endpoint) ─▶ f(channel)
//!                ├─ ok ─▶ done
//!                ├─ UNAVAILABLE / FAILED_PRECONDITION with a leader hint ─▶ cache it, retry there
//!                └─ transport failure / no hint ─▶ next endpoint, backoff
//!   bounded: at most ATTEMPTS_MAX tries and CALL_DEADLINE_MS per try
//! ```
//!
//! Only errors that say the request was not served by a leader are retried; a refusal (held,
//! deadlock, invalid) is an answer, never retried here.
//!
//! A leader hint is followed only to an address that is a member of the cluster as this
//! client last saw it: one of the endpoints it was given, or a member's address in the last
//! `Status` it received. A hint naming any other address makes the client ask the hinting
//! node's `Status` once for the current membership; an address still not in it is not dialled
//! (the client moves on to its next endpoint), so a stale or forged hint cannot take the
//! client, and the token it carries, somewhere outside the cluster.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::limits::CLIENT_MESSAGE_BYTES_MAX;
use crate::pb::v1 as pb;

/// Most attempts of one call across endpoints and leader hints.
pub const ATTEMPTS_MAX: usize = 64;
/// How long one call keeps retrying toward a leader (an election takes well under this);
/// after it the last error is returned rather than hanging.
pub const RETRY_BUDGET_MS: u64 = 5_000;
/// Deadline of one attempt.
pub const CALL_DEADLINE_MS: u64 = 10_000;
/// Connect timeout per endpoint.
pub const CONNECT_TIMEOUT_MS: u64 = 500;
/// Backoff between attempts that found no leader: doubles from the first, capped.
pub const BACKOFF_MS_FIRST: u64 = 25;
pub const BACKOFF_MS_MAX: u64 = 250;

/// How an UNAVAILABLE that no endpoint's coordinator answered begins (then the endpoints).
pub const NOTHING_LISTENING: &str = "no coordinator is listening at";

/// Whether `status` is a transport failure whose cause is a refused TCP connection: nothing
/// listens at the address (a node that is up but not leading answers instead).
fn connection_refused(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
            return true;
        }
        source = e.source();
    }
    false
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no endpoints given (set --endpoint or QM_ENDPOINT)")]
    NoEndpoints,
    #[error("endpoint {endpoint:?}: {message}")]
    BadEndpoint { endpoint: String, message: String },
    #[error("token: {0}")]
    BadToken(String),
}

/// Adds `authorization: Bearer <token>` to every call (nothing when there is no token).
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// The header for `token` (surrounding whitespace, as in a token file, is dropped).
    pub fn new(token: &str) -> Result<Bearer, ClientError> {
        let token = token.trim();
        if token.is_empty() {
            return Ok(Bearer(None));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::BadToken("must be printable ASCII without spaces".into()));
        }
        let value =
            format!("Bearer {token}").parse().map_err(|_| ClientError::BadToken("not a valid header".into()))?;
        Ok(Bearer(Some(value)))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// What a call runs on: a channel that carries the client's credentials.
pub type Transport = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// TLS toward the coordinators: the cluster CA to trust and, optionally, a certificate to
/// present (a node's own, when it dials its peers).
#[derive(Clone, Debug)]
pub struct ClientTls(tonic::transport::ClientTlsConfig);

impl ClientTls {
    /// From PEM bytes: the CA, and a certificate chain with its key.
    pub fn new(ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> ClientTls {
        use tonic::transport::{Certificate, Identity};
        let mut config = tonic::transport::ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        if let Some((cert, key)) = identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        ClientTls(config)
    }
}

/// `endpoint` with the scheme TLS (or plaintext) needs: `host:port` and `http://` become
/// `https://` under TLS, `http://` otherwise.
pub fn normalize_for(endpoint: &str, tls: bool) -> String {
    let e = normalize(endpoint);
    match (tls, e.strip_prefix("http://")) {
        (true, Some(rest)) => format!("https://{rest}"),
        _ => e,
    }
}

/// Normalizes `host:port` to `http://host:port`.
pub fn normalize(endpoint: &str) -> String {
    let e = endpoint.trim();
    if e.starts_with("http://") || e.starts_with("https://") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

/// The transport seam: how a configured [`Endpoint`] becomes a [`Channel`].
///
/// Production dials real TCP ([`Connector::tcp`], the default); the simulator passes one that
/// dials its simulated network (`Endpoint::connect_with_connector_lazy`). Every channel the
/// client library, the coordinator's peer transport and the worker open goes through one.
#[derive(Clone)]
pub struct Connector(Arc<dyn Fn(Endpoint) -> Channel + Send + Sync>);

impl Connector {
    /// Real TCP: `Endpoint::connect_lazy`.
    pub fn tcp() -> Connector {
        Connector(Arc::new(|ep: Endpoint| ep.connect_lazy()))
    }

    /// Real TCP with TLS. Endpoints must be `https://` (see [`normalize_for`]); an endpoint
    /// the configuration cannot apply to fails to connect rather than fall back to plaintext.
    pub fn tls(tls: ClientTls) -> Connector {
        Connector(Arc::new(move |ep: Endpoint| match ep.clone().tls_config(tls.0.clone()) {
            Ok(ep) => ep.connect_lazy(),
            Err(_) => ep.connect_lazy(),
        }))
    }

    /// A connector from a function turning an endpoint into a lazily connected channel.
    pub fn new(f: impl Fn(Endpoint) -> Channel + Send + Sync + 'static) -> Connector {
        Connector(Arc::new(f))
    }

    /// A lazily connected channel for `endpoint`.
    pub fn connect(&self, endpoint: Endpoint) -> Channel {
        (self.0)(endpoint)
    }
}

impl Default for Connector {
    fn default() -> Connector {
        Connector::tcp()
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

fn channel(endpoint: &str, connector: &Connector) -> Result<Channel, ClientError> {
    let ep = Endpoint::from_shared(normalize(endpoint))
        .map_err(|e| ClientError::BadEndpoint { endpoint: endpoint.to_string(), message: e.to_string() })?;
    Ok(connector.connect(
        ep.connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true),
    ))
}

/// Most member addresses remembered from a `Status` (a cluster has at most a few).
const MEMBERS_MAX: usize = 64;

#[derive(Debug)]
struct Inner {
    /// The endpoints given first (`configured` of them), then leaders followed to since.
    endpoints: Vec<String>,
    /// How many of `endpoints` were given: these are always followed to.
    configured: usize,
    /// The members' client addresses in the last `Status` this client received (normalized).
    members: Vec<String>,
    channels: Vec<Channel>,
    connector: Connector,
    bearer: Bearer,
    /// Whether endpoints are dialed with TLS.
    tls: bool,
    /// Index into `endpoints` of the node believed to lead.
    current: usize,
}

/// A handle on the cluster; cheap to clone, clones share the leader cache.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Mutex<Inner>>,
}

/// The leader named in a status's error details, if any.
pub fn leader_hint(status: &Status) -> Option<(u64, String)> {
    let details = status.get_error_details();
    let info = details.error_info()?;
    let id = info.metadata.get("leader_id")?.parse().ok()?;
    let addr = info.metadata.get("leader_address")?.clone();
    Some((id, addr))
}

impl Client {
    /// A client over a comma-separated or listed set of endpoints. Connections are lazy.
    pub fn new<I, S>(endpoints: I) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Client::with_connector(endpoints, Connector::tcp())
    }

    /// Like [`Client::new`], dialing through `connector` (the simulator's network).
    pub fn with_connector<I, S>(endpoints: I, connector: Connector) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .flat_map(|s| s.as_ref().split(',').map(|e| e.trim().to_string()).collect::<Vec<_>>())
            .filter(|e| !e.is_empty())
            .map(|e| normalize(&e))
            .collect();
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let channels = endpoints.iter().map(|e| channel(e, &connector)).collect::<Result<_, _>>()?;
        let inner = Inner {
            configured: endpoints.len(),
            endpoints,
            members: Vec::new(),
            channels,
            connector,
            bearer: Bearer::default(),
            tls: false,
            current: 0,
        };
        Ok(Client { inner: Arc::new(Mutex::new(inner)) })
    }

    /// This client, dialing every endpoint (and every leader it is pointed to) with TLS.
    pub fn with_tls(self, tls: ClientTls) -> Result<Client, ClientError> {
        {
            let mut inner = self.inner.lock().expect("client lock");
            inner.connector = Connector::tls(tls);
            inner.tls = true;
            inner.endpoints = inner.endpoints.iter().map(|e| normalize_for(e, true)).collect();
            let channels = inner.endpoints.iter().map(|e| channel(e, &inner.connector)).collect::<Result<_, _>>()?;
            inner.channels = channels;
        }
        Ok(self)
    }

    /// This client, carrying `token` on every call from now on (an empty token: none).
    pub fn with_token(self, token: &str) -> Result<Client, ClientError> {
        let bearer = Bearer::new(token)?;
        self.inner.lock().expect("client lock").bearer = bearer;
        Ok(self)
    }

    /// A client of `endpoint` alone, dialing it as this client does and carrying its token:
    /// for what one particular node must answer (its own audit log).
    pub fn pinned(&self, endpoint: &str) -> Result<Client, ClientError> {
        let inner = self.inner.lock().expect("client lock");
        let endpoint = normalize_for(endpoint, inner.tls);
        let channels = vec![channel(&endpoint, &inner.connector)?];
        let pinned = Inner {
            endpoints: vec![endpoint],
            configured: 1,
            members: inner.members.clone(),
            channels,
            connector: inner.connector.clone(),
            bearer: inner.bearer.clone(),
            tls: inner.tls,
            current: 0,
        };
        Ok(Client { inner: Arc::new(Mutex::new(pinned)) })
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.inner.lock().expect("client lock").endpoints.clone()
    }

    /// The endpoint the next call goes to first.
    pub fn current(&self) -> String {
        let inner = self.inner.lock().expect("client lock");
        inner.endpoints[inner.current].clone()
    }

    fn pick(&self) -> (usize, String, Transport) {
        let inner = self.inner.lock().expect("client lock");
        let transport = Transport::new(inner.channels[inner.current].clone(), inner.bearer.clone());
        (inner.current, inner.endpoints[inner.current].clone(), transport)
    }

    fn advance(&self, from: usize) {
        let mut inner = self.inner.lock().expect("client lock");
        if inner.current == from {
            inner.current = (from + 1) % inner.endpoints.len();
        }
    }

    /// Replaces endpoint `i`'s channel after a call on it got no answer in time: the connection
    /// may be stalled (segments lost in a partition; HTTP/2 keepalive notices only after tens
    /// of seconds), and every later call on it would time out too.
    fn redial(&self, i: usize) {
        let mut inner = self.inner.lock().expect("client lock");
        if let Ok(ch) = channel(&inner.endpoints[i], &inner.connector) {
            inner.channels[i] = ch;
        }
    }

    /// Remembers `members`' client addresses as the cluster's membership (from a `Status`).
    fn learn_members(&self, members: &[pb::Member]) {
        let mut inner = self.inner.lock().expect("client lock");
        let tls = inner.tls;
        inner.members = members.iter().take(MEMBERS_MAX).map(|m| normalize_for(&m.address, tls)).collect();
    }

    /// Makes `addr` the endpoint the next call goes to, if it is a member as this client last
    /// saw it (a given endpoint, or an address in the last `Status`). `Ok(false)`: it is not,
    /// and nothing changed.
    fn follow(&self, addr: &str) -> Result<bool, ClientError> {
        let mut inner = self.inner.lock().expect("client lock");
        let addr = normalize_for(addr, inner.tls);
        let member = inner.members.contains(&addr);
        if let Some(i) = inner.endpoints.iter().position(|e| *e == addr) {
            if i < inner.configured || member {
                inner.current = i;
                return Ok(true);
            }
            return Ok(false);
        }
        if !member {
            return Ok(false);
        }
        // A member we were not given: remember it (bounded by the cluster's size).
        if inner.endpoints.len() >= MEMBERS_MAX {
            return Ok(false);
        }
        let ch = channel(&addr, &inner.connector)?;
        inner.endpoints.push(addr);
        inner.channels.push(ch);
        inner.current = inner.endpoints.len() - 1;
        Ok(true)
    }

    /// Follows a leader hint that endpoint `from` gave: at once if it names a member as last
    /// seen; otherwise after asking `from` for the membership (one bounded `Status`), if it
    /// names a member then. Whether the next call goes to `addr`.
    async fn follow_hint(&self, addr: &str, from: usize) -> bool {
        match self.follow(addr) {
            Ok(true) => return true,
            Err(_) => return false,
            Ok(false) => {}
        }
        let transport = {
            let inner = self.inner.lock().expect("client lock");
            Transport::new(inner.channels[from].clone(), inner.bearer.clone())
        };
        let mut cluster = Client::cluster(transport);
        let asked = cluster.status(pb::StatusRequest {});
        match tokio::time::timeout(Duration::from_millis(CALL_DEADLINE_MS), asked).await {
            Ok(Ok(status)) => self.learn_members(&status.into_inner().members),
            _ => return false,
        }
        matches!(self.follow(addr), Ok(true))
    }

    /// Runs `f` against the leader, following hints and failing over, within the bounds above.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(Transport) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        // tokio's clock, not the OS's: the same in production, and simulated time in the simulator.
        let started = tokio::time::Instant::now();
        let mut backoff = BACKOFF_MS_FIRST;
        let mut last = Status::unavailable("no attempt made");
        // Endpoints that refused the connection since anything last answered: once every one
        // has, nothing is listening anywhere, and waiting out the retry budget helps nobody.
        let mut refusing = std::collections::BTreeSet::new();
        for _ in 0..ATTEMPTS_MAX {
            let (i, tried, ch) = self.pick();
            let attempt = tokio::time::timeout(Duration::from_millis(CALL_DEADLINE_MS), f(ch)).await;
            let status = match attempt {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(status)) => status,
                Err(_) => {
                    self.redial(i);
                    Status::deadline_exceeded(format!("no answer within {CALL_DEADLINE_MS} ms"))
                }
            };
            if !connection_refused(&status) {
                refusing.clear();
            } else if refusing.insert(tried.clone()) && refusing.len() == self.endpoints().len() {
                let tried = refusing.into_iter().collect::<Vec<_>>().join(", ");
                return Err(Status::unavailable(format!("{NOTHING_LISTENING} {tried} (connection refused)")));
            }
            // Retry at once only when a node names a leader other than the one just tried;
            // otherwise (no leader yet, a stale hint, a dead node) back off first.
            let (retry, pause) = match status.code() {
                Code::Unavailable | Code::FailedPrecondition => match leader_hint(&status) {
                    Some((_, addr)) => {
                        let tls = self.inner.lock().expect("client lock").tls;
                        let fresh = normalize_for(&addr, tls) != normalize_for(&tried, tls);
                        let followed = fresh && self.follow_hint(&addr, i).await;
                        if !followed {
                            if fresh {
                                tracing::debug!(hint = %addr, "not following a leader hint to a non-member");
                            }
                            self.advance(i);
                        }
                        (true, !followed)
                    }
                    None if status.code() == Code::Unavailable => {
                        self.advance(i);
                        (true, true)
                    }
                    None => (false, false),
                },
                Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                    self.advance(i);
                    (true, false)
                }
                _ => (false, false),
            };
            if !retry || started.elapsed() + Duration::from_millis(backoff) > Duration::from_millis(RETRY_BUDGET_MS) {
                return Err(status);
            }
            if pause {
                tokio::time::sleep(Duration::from_millis(backoff)).await;
                backoff = (backoff * 2).min(BACKOFF_MS_MAX);
            }
            last = status;
        }
        Err(last)
    }

    pub fn sessions(ch: Transport) -> pb::sessions_client::SessionsClient<Transport> {
        pb::sessions_client::SessionsClient::new(ch)
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
    }

    pub fn reservations(ch: Transport) -> pb::reservations_client::ReservationsClient<Transport> {
        pb::reservations_client::ReservationsClient::new(ch)
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
    }

    pub fn tasks(ch: Transport) -> pb::tasks_client::TasksClient<Transport> {
        pb::tasks_client::TasksClient::new(ch)
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
    }

    pub fn jobs(ch: Transport) -> pb::jobs_client::JobsClient<Transport> {
        pb::jobs_client::JobsClient::new(ch)
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
    }

    pub fn cluster(ch: Transport) -> pb::cluster_client::ClusterClient<Transport> {
        pb::cluster_client::ClusterClient::new(ch)
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
    }

    pub async fn open_session(&self, owner: &str, ttl_ms: u64) -> Result<pb::OpenSessionResponse, Status> {
        self.call(|ch| async move {
            let req = pb::OpenSessionRequest { owner: owner.to_string(), ttl_ms };
            Ok(Client::sessions(ch).open_session(req).await?.into_inner())
        })
        .await
    }

    /// One keepalive (unary use of the stream), following the leader like every call.
    pub async fn keepalive(&self, session_id: u64) -> Result<pb::KeepaliveResponse, Status> {
        self.call(|ch| async move {
            let stream = tokio_stream::iter([pb::KeepaliveRequest { session_id }]);
            let mut answers = Client::sessions(ch).keepalive(stream).await?.into_inner();
            answers.message().await?.ok_or_else(|| Status::unavailable("keepalive stream ended without an answer"))
        })
        .await
    }

    pub async fn close_session(&self, session_id: u64) -> Result<pb::CloseSessionResponse, Status> {
        self.call(|ch| async move {
            Ok(Client::sessions(ch).close_session(pb::CloseSessionRequest { session_id }).await?.into_inner())
        })
        .await
    }

    pub async fn acquire(&self, req: pb::AcquireRequest) -> Result<pb::AcquireResponse, Status> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Client::reservations(ch).acquire(req).await?.into_inner()) }
        })
        .await
    }

    pub async fn release(&self, req: pb::ReleaseRequest) -> Result<pb::ReleaseResponse, Status> {
        self.call(|ch| async move { Ok(Client::reservations(ch).release(req).await?.into_inner()) }).await
    }

    pub async fn extend(&self, req: pb::ExtendRequest) -> Result<pb::ExtendResponse, Status> {
        self.call(|ch| async move { Ok(Client::reservations(ch).extend(req).await?.into_inner()) }).await
    }

    pub async fn list(&self, req: pb::ListRequest) -> Result<pb::ListResponse, Status> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Client::reservations(ch).list(req).await?.into_inner()) }
        })
        .await
    }

    pub async fn watch(&self, req: pb::WatchRequest) -> Result<tonic::Streaming<pb::WatchEvent>, Status> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Client::reservations(ch).watch(req).await?.into_inner()) }
        })
        .await
    }

    pub async fn graph(&self, req: pb::GraphRequest) -> Result<pb::GraphResponse, Status> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Client::reservations(ch).graph(req).await?.into_inner()) }
        })
        .await
    }

    /// Declares (or redeclares) a resource: its capacity and its preemption policy.
    pub async fn declare_resource(
        &self,
        req: pb::DeclareResourceRequest,
    ) -> Result<pb::DeclareResourceResponse, Status> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Client::reservations(ch).declare_resource(req).await?.into_inner()) }
        })
        .await
    }

    /// Queues a task.
    pub async fn submit_task(&self, req: pb::SubmitTaskRequest) -> Result<pb::SubmitTaskResponse, Status> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Client::tasks(ch).submit(req).await?.into_inner()) }
        })
        .await
    }

    /// One task, linearizable.
    pub async fn get_task(&self, req: pb::GetTaskRequest) -> Result<pb::TaskInfo, Status> {
        self.call(|ch| async move { Ok(Client::tasks(ch).get(req).await?.into_inner()) }).await
    }

    /// Tasks, newest first, optionally by status.
    pub async fn list_tasks(&self, req: pb::ListTasksRequest) -> Result<pb::ListTasksResponse, Status> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Client::tasks(ch).list(req).await?.into_inner()) }
        })
        .await
    }

    /// Cancels a task: a queued one ends at once, a running one is told to stop.
    pub async fn cancel_task(&self, req: pb::CancelTaskRequest) -> Result<pb::CancelTaskResponse, Status> {
        self.call(|ch| async move { Ok(Client::tasks(ch).cancel(req).await?.into_inner()) }).await
    }

    /// Connected workers and their slots.
    pub async fn list_workers(&self) -> Result<pb::ListWorkersResponse, Status> {
        self.call(|ch| async move { Ok(Client::tasks(ch).workers(pb::ListWorkersRequest {}).await?.into_inner()) })
            .await
    }

    /// Starts a work item.
    pub async fn submit_job(&self, req: pb::SubmitJobRequest) -> Result<pb::SubmitJobResponse, Status> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Client::jobs(ch).submit(req).await?.into_inner()) }
        })
        .await
    }

    /// One work item: passes, gate results, what it waits for, cost so far, events.
    pub async fn get_job(&self, req: pb::GetJobRequest) -> Result<pb::JobInfo, Status> {
        self.call(|ch| async move { Ok(Client::jobs(ch).get(req).await?.into_inner()) }).await
    }

    /// Work items, newest first.
    pub async fn list_jobs(&self, req: pb::ListJobsRequest) -> Result<pb::ListJobsResponse, Status> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Client::jobs(ch).list(req).await?.into_inner()) }
        })
        .await
    }

    /// Stops a running work item.
    pub async fn cancel_job(&self, req: pb::JobRef) -> Result<pb::JobAck, Status> {
        self.call(|ch| async move { Ok(Client::jobs(ch).cancel(req).await?.into_inner()) }).await
    }

    /// Runs a failed or cancelled work item again from its unfinished passes.
    pub async fn retry_job(&self, req: pb::JobRef) -> Result<pb::JobAck, Status> {
        self.call(|ch| async move { Ok(Client::jobs(ch).retry(req).await?.into_inner()) }).await
    }

    /// Approves or rejects a pass waiting for a human.
    pub async fn decide_gate(&self, req: pb::DecideGateRequest) -> Result<pb::JobAck, Status> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Client::jobs(ch).decide_gate(req).await?.into_inner()) }
        })
        .await
    }

    /// Sets, changes or (limit 0) removes a budget.
    pub async fn set_budget(&self, req: pb::SetBudgetRequest) -> Result<pb::BudgetInfo, Status> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Client::jobs(ch).set_budget(req).await?.into_inner()) }
        })
        .await
    }

    /// Every budget with its spending in the current period.
    pub async fn list_budgets(&self) -> Result<pb::ListBudgetsResponse, Status> {
        self.call(|ch| async move { Ok(Client::jobs(ch).list_budgets(pb::ListBudgetsRequest {}).await?.into_inner()) })
            .await
    }

    /// One page of ledger entries.
    pub async fn cost_report(&self, req: pb::CostReportRequest) -> Result<pb::CostReportResponse, Status> {
        self.call(|ch| async move { Ok(Client::jobs(ch).cost_report(req).await?.into_inner()) }).await
    }

    /// The artifacts of a work item's passes; the content of `pass` when it is named.
    pub async fn get_artifacts(&self, job_id: u64, pass: &str) -> Result<pb::GetArtifactsResponse, Status> {
        let req = pb::GetArtifactsRequest { job_id, pass: pass.to_string() };
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Client::jobs(ch).get_artifacts(req).await?.into_inner()) }
        })
        .await
    }

    /// A forecast of one run of a workflow from the ledger's history.
    pub async fn forecast(&self, req: pb::ForecastRequest) -> Result<pb::ForecastResponse, Status> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Client::jobs(ch).forecast(req).await?.into_inner()) }
        })
        .await
    }

    /// Registers or updates a project (resources, providers, prices).
    pub async fn apply_project(&self, req: pb::ApplyProjectRequest) -> Result<pb::ApplyProjectResponse, Status> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Client::jobs(ch).apply_project(req).await?.into_inner()) }
        })
        .await
    }

    /// The scheduler's replicated tunables.
    pub async fn get_scheduler(&self) -> Result<pb::SchedulerConfig, Status> {
        self.call(
            |ch| async move { Ok(Client::jobs(ch).get_scheduler(pb::GetSchedulerRequest {}).await?.into_inner()) },
        )
        .await
    }

    /// Changes the scheduler's tunables (fields left 0 keep their value).
    pub async fn set_scheduler(&self, req: pb::SchedulerConfig) -> Result<pb::SchedulerConfig, Status> {
        self.call(|ch| async move { Ok(Client::jobs(ch).set_scheduler(req).await?.into_inner()) }).await
    }

    /// Status of whichever node answers first (no leader needed): its view of the cluster,
    /// whose members become the membership this client follows leader hints within.
    pub async fn status(&self) -> Result<pb::StatusResponse, Status> {
        let status = self
            .call(|ch| async move { Ok(Client::cluster(ch).status(pb::StatusRequest {}).await?.into_inner()) })
            .await?;
        self.learn_members(&status.members);
        Ok(status)
    }

    /// Adds a node as a non-voting learner.
    pub async fn add_learner(&self, req: pb::AddLearnerRequest) -> Result<pb::AddLearnerResponse, Status> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Client::cluster(ch).add_learner(req).await?.into_inner()) }
        })
        .await
    }

    /// Promotes a learner to voter.
    pub async fn promote(&self, req: pb::PromoteRequest) -> Result<pb::PromoteResponse, Status> {
        self.call(|ch| async move { Ok(Client::cluster(ch).promote(req).await?.into_inner()) }).await
    }

    /// Removes a node (voter or learner) from the cluster.
    pub async fn remove(&self, req: pb::RemoveRequest) -> Result<pb::RemoveResponse, Status> {
        self.call(|ch| async move { Ok(Client::cluster(ch).remove(req).await?.into_inner()) }).await
    }

    /// Asks the leader to hand leadership to another voter.
    pub async fn transfer_leader(&self, req: pb::TransferLeaderRequest) -> Result<pb::TransferLeaderResponse, Status> {
        self.call(|ch| async move { Ok(Client::cluster(ch).transfer_leader(req).await?.into_inner()) }).await
    }

    /// Asks the node that answers to build a state-machine snapshot now (no leader needed).
    pub async fn snapshot_now(&self, req: pb::SnapshotNowRequest) -> Result<pb::SnapshotNowResponse, Status> {
        self.call(|ch| async move { Ok(Client::cluster(ch).snapshot_now(req).await?.into_inner()) }).await
    }

    pub fn acl(ch: Transport) -> pb::acl_client::AclClient<Transport> {
        pb::acl_client::AclClient::new(ch)
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
    }

    /// Creates the first admin token of a fresh cluster (an empty `secret`: the cluster makes one).
    pub async fn bootstrap(&self, secret: &str) -> Result<pb::TokenCreated, Status> {
        self.call(|ch| async move {
            let req = pb::BootstrapRequest { secret: secret.to_string() };
            Ok(Client::acl(ch).bootstrap(req).await?.into_inner())
        })
        .await
    }

    pub async fn create_token(&self, req: pb::CreateTokenRequest) -> Result<pb::TokenCreated, Status> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Client::acl(ch).create_token(req).await?.into_inner()) }
        })
        .await
    }

    pub async fn list_tokens(&self) -> Result<pb::ListTokensResponse, Status> {
        self.call(|ch| async move { Ok(Client::acl(ch).list_tokens(pb::ListTokensRequest {}).await?.into_inner()) })
            .await
    }

    pub async fn revoke_token(&self, name: &str) -> Result<pb::RevokeTokenResponse, Status> {
        self.call(|ch| async move {
            let req = pb::RevokeTokenRequest { name: name.to_string() };
            Ok(Client::acl(ch).revoke_token(req).await?.into_inner())
        })
        .await
    }

    /// The principal this client's token names, and its grants.
    pub async fn who_am_i(&self) -> Result<pb::TokenInfo, Status> {
        self.call(|ch| async move { Ok(Client::acl(ch).who_am_i(pb::WhoAmIRequest {}).await?.into_inner()) }).await
    }

    /// The audit log of the node that answers (every node keeps its own: use [`Client::pinned`]).
    pub async fn list_audit(&self, req: pb::ListAuditRequest) -> Result<pb::ListAuditResponse, Status> {
        self.call(|ch| {
            let req = req.clone();
            async move {
                let mut audit = pb::audit_client::AuditClient::new(ch)
                    .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX);
                Ok(audit.list(req).await?.into_inner())
            }
        })
        .await
    }

    /// Opens the worker's control stream on the leader. Every attempt gets a fresh upward
    /// stream, buffering `buffer` messages, that starts with `register`; its sender is returned
    /// with the downward stream.
    pub async fn connect_worker(
        &self,
        register: pb::WorkerMessage,
        buffer: usize,
    ) -> Result<(tonic::Streaming<pb::CoordinatorMessage>, mpsc::Sender<pb::WorkerMessage>), Status> {
        self.call(|ch| {
            let (tx, rx) = mpsc::channel(buffer);
            let _ = tx.try_send(register.clone());
            async move {
                let mut gw = pb::worker_gateway_client::WorkerGatewayClient::new(ch);
                let down = gw.connect(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
                Ok((down, tx))
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(address: &str) -> pb::Member {
        pb::Member { address: address.to_string(), ..Default::default() }
    }

    /// A hint is followed only to a given endpoint or a member in the last `Status` seen; any
    /// other address changes nothing and is never dialled.
    #[tokio::test]
    async fn a_leader_hint_is_followed_only_to_a_member_as_last_seen() {
        let client = Client::new(["127.0.0.1:7071", "127.0.0.1:7072"]).expect("client");
        assert!(client.follow("127.0.0.1:7072").expect("follow"), "a given endpoint");
        assert_eq!(client.current(), "http://127.0.0.1:7072");

        assert!(!client.follow("10.9.9.9:7070").expect("follow"), "an address nobody named a member");
        assert_eq!(client.current(), "http://127.0.0.1:7072", "nothing changed");
        assert_eq!(client.endpoints(), ["http://127.0.0.1:7071", "http://127.0.0.1:7072"], "nothing added");

        // A member the last Status named is followed (and remembered) though it was not given.
        client.learn_members(&[member("http://127.0.0.1:7071"), member("http://127.0.0.1:7073")]);
        assert!(client.follow("127.0.0.1:7073").expect("follow"));
        assert_eq!(client.current(), "http://127.0.0.1:7073");
        assert!(!client.follow("10.9.9.9:7070").expect("follow"));

        // Once a Status no longer names it (removed), a stale hint to it is not followed; a
        // given endpoint still is.
        client.learn_members(&[member("http://127.0.0.1:7071")]);
        client.follow("127.0.0.1:7071").expect("follow");
        assert!(!client.follow("127.0.0.1:7073").expect("follow"), "a removed member");
        assert_eq!(client.current(), "http://127.0.0.1:7071");
        assert!(client.follow("127.0.0.1:7072").expect("follow"), "given, though not in the Status");
    }

    /// Under TLS the membership's `https://` addresses match hints given as `host:port`.
    #[tokio::test]
    async fn members_and_hints_compare_with_the_scheme_tls_needs() {
        let ca = b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n";
        let client = Client::new(["127.0.0.1:7071"]).expect("client").with_tls(ClientTls::new(ca, None)).expect("tls");
        client.learn_members(&[member("https://127.0.0.1:7074")]);
        assert!(client.follow("127.0.0.1:7074").expect("follow"));
        assert_eq!(client.current(), "https://127.0.0.1:7074");
    }
}
