//! Workers and agents as a user runs them: real `qm coordinator` and `qm worker` processes on
//! loopback, scripted executors, SIGKILL by PID.

use std::time::Duration;

use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use qm_tests::{eventually, Cluster, Fence};

async fn submit(client: &Client, resource: &str, priority: u32, duration_ms: u64, work_item: &str) -> u64 {
    let payload = serde_json::json!({"executor": "scripted", "duration_ms": duration_ms, "steps": 20}).to_string();
    let req = pb::SubmitTaskRequest {
        role: "implementer".into(),
        resources: vec![pb::ResourceRequest { path: resource.into(), mode: pb::Mode::Exclusive as i32, units: 0 }],
        payload: payload.into_bytes(),
        priority,
        work_item_id: work_item.into(),
        max_attempts: 3,
        timeout_ms: 0,
        incremental: false,
    };
    submit_request(client, req).await
}

async fn submit_request(client: &Client, req: pb::SubmitTaskRequest) -> u64 {
    client.submit_task(req).await.expect("submit").task_id
}

async fn task(client: &Client, id: u64) -> pb::TaskInfo {
    client.get_task(pb::GetTaskRequest { task_id: id }).await.expect("get task")
}

/// Polls (bounded: 60 s) until `done` holds for the task.
async fn wait_for(client: &Client, id: u64, what: &str, mut done: impl FnMut(&pb::TaskInfo) -> bool) -> pb::TaskInfo {
    let done = std::sync::Mutex::new(&mut done);
    eventually(&format!("task {id}: {what}"), Duration::from_secs(60), || async {
        let t = task(client, id).await;
        if (done.lock().expect("predicate"))(&t) {
            Ok(t)
        } else {
            Err(format!("{t:?}"))
        }
    })
    .await
}

/// The fencing token of the reservation a task's agent holds, if any.
async fn token_of(client: &Client, task: u64) -> Option<u64> {
    let list = client.list(pb::ListRequest::default()).await.expect("list");
    list.reservations.iter().find(|r| r.owner == qm_shared::agent::task_owner(task)).map(|r| r.fencing_token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_task_checkpoints_and_resumes_where_it_stopped() {
    let mut cluster = Cluster::start(3, 10_000);
    cluster.leader(&[1, 2, 3]).await;
    cluster.spawn_worker("w1", &["implementer=2"]);
    cluster.wait_workers(1).await;
    let client = cluster.client();
    let declare = pb::DeclareResourceRequest {
        path: "pg:staging".into(),
        capacity: None,
        policy: pb::ResourcePolicy::Preempt as i32,
        grace_ms: 5_000,
    };
    client.declare_resource(declare).await.expect("declare");

    let low = submit(&client, "pg:staging", 100, 4_000, "WI-feature").await;
    let at = wait_for(&client, low, "40% progress", |t| t.percent_done >= 40).await;
    let low_token = token_of(&client, low).await.expect("the low task holds pg:staging");
    let fence = Fence::default();
    assert!(fence.enter("pg:staging", "low", low_token));
    fence.leave("pg:staging", "low");

    let hotfix = submit(&client, "pg:staging", 900, 500, "WI-hotfix").await;
    let hot = wait_for(&client, hotfix, "the hotfix to run", |t| t.status == "running" && t.percent_done > 0).await;
    assert_eq!(hot.attempt, 1);
    let hot_token = token_of(&client, hotfix).await.expect("the hotfix holds pg:staging");
    assert!(fence.enter("pg:staging", "hotfix", hot_token), "the hotfix's newer token is accepted");
    fence.leave("pg:staging", "hotfix");
    // The preempted holder's token is stale now: a careful adapter refuses it.
    assert!(!fence.enter("pg:staging", "low (revoked)", low_token), "the revoked holder's token is rejected");
    assert_eq!(fence.take_refusals().len(), 1, "the refusal was recorded");
    assert!(fence.violations().is_empty(), "{:?}", fence.violations());

    wait_for(&client, hotfix, "the hotfix to succeed", |t| t.status == "succeeded").await;
    // The low task resumes from its checkpoint: its progress never drops back below 40%.
    let mut lowest = u32::MAX;
    let done = wait_for(&client, low, "the low task to finish", |t| {
        if t.attempt >= 2 && t.status == "running" {
            lowest = lowest.min(t.percent_done);
        }
        t.status == "succeeded"
    })
    .await;
    // The second attempt runs for more than half the task's 4 s, many polls long.
    assert_ne!(lowest, u32::MAX, "the second attempt was never seen running: {done:?}");
    assert!(lowest >= at.percent_done.min(40), "resumed at {lowest}%, was at {}%", at.percent_done);
    assert_eq!(done.attempts.len(), 2, "{done:?}");
    assert_eq!(done.attempts[0].outcome, "preempted");
    let resumed = done.attempts[1].resumed_from_seq;
    assert!(resumed > 0 && resumed >= at.checkpoint_seq, "resumed from {resumed}, checkpointed {}", at.checkpoint_seq);
    assert_eq!(done.attempts[1].outcome, "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_on_a_killed_worker_completes_on_another_exactly_once() {
    let mut cluster = Cluster::start(3, 10_000);
    cluster.leader(&[1, 2, 3]).await;
    cluster.spawn_worker("w1", &["implementer=1"]);
    cluster.spawn_worker("w2", &["implementer=1"]);
    cluster.wait_workers(2).await;
    let client = cluster.client();
    let id = submit(&client, "pg:staging/table:orders", 500, 3_000, "WI-7").await;
    let running = wait_for(&client, id, "20% progress", |t| t.status == "running" && t.percent_done >= 20).await;
    let victim = running.worker_node_id.clone();
    cluster.kill_worker(&victim);

    let done = wait_for(&client, id, "completion elsewhere", |t| t.status == "succeeded").await;
    assert_eq!(done.attempts.len(), 2, "one lost attempt, one that finished: {done:?}");
    assert_eq!(done.attempts[0].worker_node_id, victim);
    assert_eq!(done.attempts[0].outcome, "lost");
    assert_ne!(done.attempts[1].worker_node_id, victim);
    assert_eq!(done.attempts[1].outcome, "succeeded");
    // Exactly once: nothing is left running or queued, and the lease is gone.
    let list = client.list_tasks(pb::ListTasksRequest::default()).await.expect("list tasks");
    assert_eq!(list.tasks.iter().filter(|t| t.status == "succeeded").count(), 1);
    assert_eq!(list.queued, 0);
    assert!(token_of(&client, id).await.is_none(), "the task's lease was released");
}

/// A local stand-in for an OpenAI-compatible endpoint (llama.cpp, vLLM, a cloud API): it
/// answers chat completions, with usage or without, and counts calls.
async fn fake_openai() -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use axum::{routing::post, Json, Router};
    use std::sync::atomic::{AtomicU64, Ordering};
    let calls = std::sync::Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |headers: axum::http::HeaderMap, Json(body): Json<serde_json::Value>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                // The key comes from the worker's --provider-key-env, never from the task.
                assert_eq!(headers.get("authorization").map(|v| v.as_bytes()), Some(&b"Bearer test-key-1"[..]));
                let prompt = body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str()).unwrap_or("");
                let answer = format!("patched: {prompt}");
                if body["model"] == "no-usage-model" {
                    return Json(serde_json::json!({"choices": [{"message": {"role": "assistant", "content": answer}}]}));
                }
                Json(serde_json::json!({
                    "choices": [{"message": {"role": "assistant", "content": answer}}],
                    "usage": {"prompt_tokens": 120, "completion_tokens": 30, "prompt_tokens_details": {"cached_tokens": 20}}
                }))
            }
        }),
    );
    let anthropic_calls = calls.clone();
    let app = app.route(
        "/v1/messages",
        post(move |headers: axum::http::HeaderMap, Json(body): Json<serde_json::Value>| {
            let counter = anthropic_calls.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                assert_eq!(headers.get("anthropic-version").map(|v| v.as_bytes()), Some(&b"2023-06-01"[..]));
                assert_eq!(body["system"], "You fix bugs.");
                Json(serde_json::json!({
                    "content": [{"type": "text", "text": "anthropic says: "}, {"type": "text", "text": "done"}],
                    "usage": {"input_tokens": 50, "output_tokens": 7, "cache_read_input_tokens": 40}
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1"), calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_executor_records_usage_per_task() {
    let (base_url, calls) = fake_openai().await;
    let mut cluster = Cluster::start(1, 10_000);
    cluster.leader(&[1]).await;
    let anthropic_base = base_url.trim_end_matches("/v1").to_string();
    let (local, claude) = (format!("local=openai:{base_url}"), format!("claude=anthropic:{anthropic_base}"));
    let flags = ["--enable-executor", "llm", "--provider", &local, "--provider", &claude];
    let flags = [&flags[..], &["--provider-key-env", "local=QM_TEST_LOCAL_KEY"]].concat();
    cluster.spawn_worker_with("gpu-box", &["implementer=1"], &flags, &[("QM_TEST_LOCAL_KEY", "test-key-1")]);
    cluster.wait_workers(1).await;
    let client = cluster.client();
    let mut ids = Vec::new();
    for (provider, model) in
        [("local", "llama-3.1-8b-instruct"), ("local", "no-usage-model"), ("claude", "claude-sonnet")]
    {
        let payload = serde_json::json!({
            "executor": "llm", "provider": provider, "model": model,
            "system": "You fix bugs.", "prompt": "fix the off-by-one in pager.rs",
        });
        let req = pb::SubmitTaskRequest {
            role: "implementer".into(),
            payload: payload.to_string().into_bytes(),
            ..Default::default()
        };
        ids.push(submit_request(&client, req).await);
    }
    let reported = wait_for(&client, ids[0], "success", |t| t.status == "succeeded").await;
    assert_eq!(String::from_utf8_lossy(&reported.output), "patched: fix the off-by-one in pager.rs");
    let u = reported.usage.expect("usage");
    assert_eq!((u.input_tokens, u.output_tokens, u.cached_tokens, u.estimated), (100, 30, 20, false), "{u:?}");

    let estimated = wait_for(&client, ids[1], "success", |t| t.status == "succeeded").await;
    let u = estimated.usage.expect("usage");
    assert!(u.estimated && u.input_tokens > 0 && u.output_tokens > 0, "estimated when the server reports none: {u:?}");
    let claude = wait_for(&client, ids[2], "success", |t| t.status == "succeeded").await;
    assert_eq!(String::from_utf8_lossy(&claude.output), "anthropic says: done");
    let u = claude.usage.expect("usage");
    assert_eq!((u.input_tokens, u.output_tokens, u.cached_tokens, u.estimated), (50, 7, 40, false), "{u:?}");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3, "one call per task");
}

async fn submit_payload(client: &Client, payload: serde_json::Value) -> u64 {
    let req = pb::SubmitTaskRequest {
        role: "implementer".into(),
        payload: payload.to_string().into_bytes(),
        max_attempts: 1,
        ..Default::default()
    };
    submit_request(client, req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_tasks_run_only_where_enabled_and_see_only_the_allowed_environment() {
    let mut cluster = Cluster::start(1, 10_000);
    cluster.leader(&[1]).await;
    // A worker as started by default: command and llm tasks fail, naming how to enable them.
    cluster.spawn_worker("default", &["implementer=1"]);
    cluster.wait_workers(1).await;
    let client = cluster.client();
    let refused =
        submit_payload(&client, serde_json::json!({"executor": "command", "cmd": "touch /tmp/qm-should-not-run"}))
            .await;
    let t = wait_for(&client, refused, "the command task to fail", |t| t.status == "failed").await;
    let error = &t.error;
    assert!(error.contains("executor `command` is disabled on this worker"), "{t:?}");
    assert!(error.contains("--enable-executor command"), "{t:?}");
    let workers = client.list_workers().await.expect("workers");
    assert_eq!(workers.workers.len(), 1, "the worker is still there: {workers:?}");
    cluster.kill_worker("default");

    // Enabled: it runs, with the allow-list and its attempt's QM_* variables and nothing else.
    let flags = ["--enable-executor", "command", "--pass-env", "PATH", "--pass-env", "QM_TEST_VISIBLE"];
    let env = [("QM_TEST_VISIBLE", "yes"), ("QM_TEST_SECRET", "hunter2")];
    cluster.spawn_worker_with("enabled", &["implementer=1"], &flags, &env);
    eventually("only the enabled worker registered", Duration::from_secs(30), || async {
        let got = client.list_workers().await.map_err(|e| e.to_string())?;
        let nodes: Vec<String> = got.workers.iter().map(|w| w.node_id.clone()).collect();
        if nodes == ["enabled"] {
            Ok(())
        } else {
            Err(format!("{nodes:?}"))
        }
    })
    .await;
    let id = submit_payload(&client, serde_json::json!({"executor": "command", "cmd": "env"})).await;
    let t = wait_for(&client, id, "the command task to succeed", |t| t.status == "succeeded").await;
    let out = String::from_utf8_lossy(&t.output).into_owned();
    let names: std::collections::BTreeSet<&str> =
        out.lines().filter_map(|l| l.split_once('=')).map(|(n, _)| n).collect();
    assert!(out.contains("QM_TEST_VISIBLE=yes\n") && out.contains(&format!("QM_TASK_ID={id}\n")), "{out}");
    assert!(!out.contains("hunter2") && !names.contains("QM_TEST_SECRET") && !names.contains("QM_LOG"), "{out}");
    let allowed = ["PATH", "QM_TEST_VISIBLE", "QM_TASK_ID", "QM_TASK_ATTEMPT", "QM_CHECKPOINT_FILE", "QM_WORK_DIR"];
    // What the shell adds by itself.
    let shell = ["PWD", "SHLVL", "_", "OLDPWD"];
    for n in &names {
        assert!(allowed.contains(n) || shell.contains(n), "{n} leaked into the child: {out}");
    }
}

/// One coordinator, one worker with two implementer agents, and an outside session holding
/// `resource` exclusively.
async fn two_agents_and_an_outside_holder_of(resource: &str) -> (Cluster, Client, u64, pb::Reservation) {
    let mut cluster = Cluster::start(1, 10_000);
    cluster.leader(&[1]).await;
    cluster.spawn_worker("w1", &["implementer=2"]);
    cluster.wait_workers(1).await;
    let client = cluster.client();
    let holder = client.open_session("dba", 60_000).await.expect("open").session_id;
    let held = qm_tests::acquire_wait(&client, holder, "dba", resource).await.expect("hold the resource");
    (cluster, client, holder, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_agents_do_other_work_and_the_blocked_tasks_finish_after() {
    // Somebody outside holds staging.
    let (_cluster, client, holder, held) = two_agents_and_an_outside_holder_of("pg:staging").await;

    let blocked = [
        submit(&client, "pg:staging/table:orders", 500, 300, "WI-1").await,
        submit(&client, "pg:staging/table:users", 500, 300, "WI-2").await,
    ];
    for id in blocked {
        wait_for(&client, id, "a blocked report", |t| !t.blocked.is_empty()).await;
    }
    // Both agents are waiting; the other ready work runs on them meanwhile.
    let other =
        [submit(&client, "repo:main", 400, 300, "WI-1").await, submit(&client, "repo:docs", 400, 300, "WI-3").await];
    for id in other {
        wait_for(&client, id, "other work to finish while staging is held", |t| t.status == "succeeded").await;
    }
    for id in blocked {
        assert_eq!(task(&client, id).await.status, "running", "the blocked task keeps its place");
    }
    qm_tests::release(&client, holder, held.id).await.expect("release staging");
    for id in blocked {
        let t = wait_for(&client, id, "the blocked task to finish", |t| t.status == "succeeded").await;
        assert_eq!(t.attempt, 1, "it kept its attempt and its place: {t:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_between_two_agents_is_broken_and_both_tasks_complete() {
    // Two tasks locking as they go, in opposite orders. An outside holder of B lines them up
    // so the cycle closes for certain: T2 waits for B; T1 takes A and queues for B behind T2;
    // B is released to T2, which then asks for A — held by T1.
    let (_cluster, client, holder, held) = two_agents_and_an_outside_holder_of("pg:b").await;
    let incremental = |resources: [&str; 2], priority: u32, wi: &str| pb::SubmitTaskRequest {
        role: "implementer".into(),
        resources: resources
            .iter()
            .map(|p| pb::ResourceRequest { path: p.to_string(), mode: pb::Mode::Exclusive as i32, units: 0 })
            .collect(),
        payload: serde_json::json!({"executor": "scripted", "duration_ms": 300, "steps": 5}).to_string().into_bytes(),
        priority,
        work_item_id: wi.into(),
        max_attempts: 3,
        timeout_ms: 0,
        incremental: true,
    };
    let t2 = submit_request(&client, incremental(["pg:b", "pg:a"], 500, "WI-2")).await;
    wait_for(&client, t2, "T2 to queue for B", |t| t.status == "running").await;
    let t1 = submit_request(&client, incremental(["pg:a", "pg:b"], 400, "WI-1")).await;
    eventually("T1 holding A", Duration::from_secs(10), || async {
        token_of(&client, t1).await.ok_or_else(|| "no lease of T1's".to_string())
    })
    .await;
    eventually("T1 queueing for B", Duration::from_secs(10), || async {
        let list = client.list(pb::ListRequest { include_pending: true, ..Default::default() }).await.expect("list");
        let t1_owner = qm_shared::agent::task_owner(t1);
        if list.pending.iter().any(|p| p.owner == t1_owner) {
            Ok(())
        } else {
            Err(format!("pending: {:?}", list.pending))
        }
    })
    .await;
    qm_tests::release(&client, holder, held.id).await.expect("release B");

    // The lower-priority T1 is the victim: it gives A back, re-plans, and retries atomically.
    let mut victim_reported = false;
    let done1 = wait_for(&client, t1, "T1 to finish", |t| {
        victim_reported |= t.blocked.contains("deadlock victim");
        t.status == "succeeded"
    })
    .await;
    let done2 = wait_for(&client, t2, "T2 to finish", |t| t.status == "succeeded").await;
    assert!(victim_reported, "T1 reported itself a deadlock victim: {done1:?}");
    assert_eq!((done1.attempt, done2.attempt), (1, 1), "no attempt was lost to the deadlock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_rides_out_a_leader_sigkill_without_losing_or_repeating_work() {
    let mut cluster = Cluster::start(3, 10_000);
    let leader = cluster.leader(&[1, 2, 3]).await;
    cluster.spawn_worker("w1", &["implementer=1"]);
    cluster.wait_workers(1).await;
    let client = cluster.client();
    let id = submit(&client, "pg:staging", 500, 3_000, "WI-9").await;
    wait_for(&client, id, "20% progress", |t| t.percent_done >= 20).await;
    cluster.kill(leader);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    cluster.leader(&others).await;

    let done = wait_for(&client, id, "completion after the failover", |t| t.status == "succeeded").await;
    assert_eq!(done.attempts.len(), 1, "the same attempt finished, nothing was run twice: {done:?}");
    assert_eq!(done.attempts[0].worker_node_id, "w1");
    let workers = client.list_workers().await.expect("workers");
    assert_eq!(workers.workers.len(), 1, "the worker kept its one session: {workers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_task_requests_name_the_field_and_bound_and_change_nothing() {
    let cluster = Cluster::start(1, 10_000);
    cluster.leader(&[1]).await;
    let client = cluster.client();
    let payload = br#"{"executor":"scripted","duration_ms":10}"#.to_vec();
    let good = pb::SubmitTaskRequest { role: "implementer".into(), payload, ..Default::default() };
    let cases = [
        (pb::SubmitTaskRequest { role: "orchestrator".into(), ..good.clone() }, "role: unknown role"),
        (pb::SubmitTaskRequest { max_attempts: 17, ..good.clone() }, "max_attempts: 17 is over the limit of 16"),
        (pb::SubmitTaskRequest { priority: 1_001, ..good.clone() }, "priority: 1001"),
        (
            pb::SubmitTaskRequest {
                resources: vec![pb::ResourceRequest { path: "pg:".into(), mode: pb::Mode::Exclusive as i32, units: 0 }],
                ..good.clone()
            },
            "resources[0].path: ",
        ),
        (pb::SubmitTaskRequest { payload: vec![b' '; 64 * 1024 + 1], ..good.clone() }, "payload: is 65537 bytes"),
        (
            pb::SubmitTaskRequest { payload: br#"{"executor":"shell"}"#.to_vec(), ..good.clone() },
            "payload.executor: \"shell\" is not an executor; choose one of scripted, command, llm",
        ),
        (
            pb::SubmitTaskRequest { payload: br#"{"executor":"llm","base_url":"http://x"}"#.to_vec(), ..good.clone() },
            "payload.base_url: refused",
        ),
    ];
    for (req, want) in cases {
        let got = client.submit_task(req).await.expect_err("refused");
        assert_eq!(got.code(), tonic::Code::InvalidArgument, "{got:?}");
        assert!(got.message().starts_with(want), "{:?} does not start with {want:?}", got.message());
    }
    let list = client.list_tasks(pb::ListTasksRequest::default()).await.expect("list");
    assert!(list.tasks.is_empty(), "nothing was written: {list:?}");
}
