//! The connection: register (on the same session after a reconnect), serve the stream,
//! resend unacknowledged results, reconnect with backoff.

use super::*;

/// The slots per role a worker registers, with the tiers each role's agent spec gives.
pub(super) fn role_slots(config: &WorkerConfig) -> Vec<pb::RoleSlots> {
    config
        .slots
        .iter()
        .map(|(role, n)| {
            let spec = config.exec.specs.get(role);
            pb::RoleSlots {
                role: role.to_string(),
                slots: *n,
                tier: spec.map(|s| s.tier.to_string()).unwrap_or_default(),
                max_tier: spec.map(|s| s.escalation.max_tier.to_string()).unwrap_or_default(),
                escalate_after_failed_gates: spec.map_or(0, |s| s.escalation.after_failed_gates),
                money_per_task_micros: spec.and_then(|s| s.budget.money_per_task_micros).unwrap_or(0),
            }
        })
        .collect()
}

/// Runs the worker until `shutdown` resolves: connects, registers, serves assignments, and
/// on shutdown closes its session so its tasks are requeued at once.
pub async fn run(
    client: Client,
    config: WorkerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let executor = Executor::builtin(config.exec.clone());
    run_with(client, config, executor, shutdown).await
}

/// [`run`] with the executor seam set (the simulator's).
pub async fn run_with(
    client: Client,
    config: WorkerConfig,
    executor: Executor,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let (up_tx, mut up_rx) = mpsc::channel(UP_BUFFER_LEN);
    let shared = Shared {
        client: client.clone(),
        executor,
        session: Arc::new(AtomicU64::new(0)),
        up: up_tx,
        book: Arc::new(Mutex::new(Book::default())),
        started: Instant::now(),
        blocked_after: Duration::from_millis(config.blocked_after_ms),
        specs: Arc::new(config.exec.specs.iter().map(|(r, s)| (*r, format!("{}@{}", s.name, s.version))).collect()),
    };
    let (supervisor, handle) =
        Actor::spawn(Some(format!("{}/supervisor", config.node_id)), SupervisorActor, (config.clone(), shared.clone()))
            .await
            .map_err(|e| format!("starting the supervisor: {e}"))?;
    let connection = connect_loop(client.clone(), config.clone(), shared.clone(), supervisor.clone(), &mut up_rx);
    tokio::select! {
        _ = connection => {}
        _ = shutdown => {}
    }
    supervisor.stop(Some("shutting down".into()));
    let _ = handle.await;
    let session = shared.session();
    if session != 0 {
        let _ = client.close_session(session).await;
    }
    Ok(())
}

pub(super) async fn connect_loop(
    client: Client,
    config: WorkerConfig,
    shared: Shared,
    supervisor: ActorRef<SupMsg>,
    up_rx: &mut mpsc::Receiver<pb::WorkerMessage>,
) {
    let mut backoff = RECONNECT_BACKOFF_FIRST;
    // Results not yet acknowledged, resent after a reconnect.
    let mut unacked: BTreeMap<(u64, u32), pb::WorkerMessage> = BTreeMap::new();
    loop {
        let register = {
            let running: Vec<u64> = shared.book.lock().expect("book").running.keys().copied().collect();
            pb::WorkerMessage {
                msg: Some(pb::worker_message::Msg::Register(pb::worker_message::Register {
                    node_id: config.node_id.clone(),
                    roles: role_slots(&config),
                    repos: config.exec.repos.keys().cloned().collect(),
                    clis: config.exec.clis.keys().cloned().collect(),
                    labels: config.labels.clone().into_iter().collect(),
                    model_providers: config.providers.clone(),
                    gpus: config.gpus.clone(),
                    engines: config
                        .exec
                        .engines
                        .iter()
                        .map(|e| match e {
                            executor::engine::Engine::Container => "container".to_string(),
                            executor::engine::Engine::Local => "local".to_string(),
                        })
                        .collect(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    running_task_ids: running,
                    session_ttl_ms: config.session_ttl_ms,
                    session_id: shared.session(),
                })),
            }
        };
        let (mut down, tx) = match client.connect_worker(register, UP_BUFFER_LEN).await {
            Ok(opened) => opened,
            Err(e) => {
                tracing::warn!(error = %e, "connecting to the coordinators failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                continue;
            }
        };
        let registered = match down.message().await {
            Ok(Some(pb::CoordinatorMessage { msg: Some(pb::coordinator_message::Msg::Registered(r)) })) => r,
            other => {
                tracing::warn!(answer = ?other.err(), "no registration answer; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                continue;
            }
        };
        backoff = RECONNECT_BACKOFF_FIRST;
        let previous = shared.session.swap(registered.session_id, Ordering::SeqCst);
        if previous != 0 && previous != registered.session_id {
            tracing::warn!(previous, now = registered.session_id, "the old session expired; its tasks were requeued");
            let lost: Vec<u64> = shared.book.lock().expect("book").running.keys().copied().collect();
            let _ = supervisor.cast(SupMsg::Abandon(lost));
            unacked.clear();
        }
        tracing::info!(session = registered.session_id, node_id = %config.node_id, "registered");
        if !registered.abandon_task_ids.is_empty() {
            let _ = supervisor.cast(SupMsg::Abandon(registered.abandon_task_ids.clone()));
        }
        for m in unacked.values() {
            let _ = tx.send(m.clone()).await;
        }
        let mut heartbeat = tokio::time::interval(Duration::from_millis(registered.heartbeat_interval_ms.max(100)));
        let mut seq = 0u64;
        loop {
            tokio::select! {
                m = down.message() => match m {
                    Ok(Some(m)) => {
                        if let Some(pb::coordinator_message::Msg::ResultAccepted(a)) = &m.msg {
                            unacked.remove(&(a.task_id, a.attempt));
                            continue;
                        }
                        let _ = supervisor.cast(SupMsg::Down(m));
                    }
                    Ok(None) | Err(_) => {
                        tracing::warn!(error = ?m.err(), "the coordinator stream ended; reconnecting");
                        break;
                    }
                },
                up = up_rx.recv() => {
                    let Some(up) = up else { return };
                    if let Some(pb::worker_message::Msg::Result(r)) = &up.msg {
                        unacked.insert((r.task_id, r.attempt), up.clone());
                    }
                    if tx.send(up).await.is_err() {
                        break;
                    }
                }
                _ = heartbeat.tick() => {
                    seq += 1;
                    let running: BTreeSet<u64> = shared.book.lock().expect("book").running.keys().copied().collect();
                    let hb = pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Heartbeat(pb::worker_message::Heartbeat {
                        seq,
                        running_task_ids: running.into_iter().collect(),
                        free_slots: Vec::new(),
                    }))};
                    if tx.send(hb).await.is_err() {
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}
