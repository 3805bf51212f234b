//! A stand-in model server: OpenAI-compatible chat completions on loopback that keeps every
//! request it got and answers either from a script, in order ([`FakeModel::start`]; when it
//! runs out a request waits until more answers are given), or by what a request holds
//! ([`FakeModel::start_with`]: a function of the request that may hold it until
//! [`FakeModel::wake`]). It stands for what is outside the system (a model provider); the code
//! that talks to it is the production code.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::{extract::State, routing::post, Json, Router};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

/// Answers a request, or `None` to hold it until the next [`FakeModel::wake`].
pub type Responder = dyn Fn(&Value) -> Option<Value> + Send + Sync;

struct Inner {
    script: Mutex<VecDeque<Value>>,
    respond: Option<Box<Responder>>,
    requests: Mutex<Vec<Value>>,
    more: Notify,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").field("requests", &self.requests.lock().map(|r| r.len()).unwrap_or(0)).finish()
    }
}

#[derive(Debug)]
pub struct FakeModel {
    /// The base URL to give a worker: `http://127.0.0.1:PORT/v1`.
    pub url: String,
    inner: Arc<Inner>,
    count: watch::Receiver<usize>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeModel {
    /// Serves `script`, one answer per request.
    pub async fn start(script: Vec<Value>) -> FakeModel {
        FakeModel::serve(script.into(), None).await
    }

    /// Answers each request with `respond(request)`; a `None` holds it until [`FakeModel::wake`].
    pub async fn start_with(respond: impl Fn(&Value) -> Option<Value> + Send + Sync + 'static) -> FakeModel {
        FakeModel::serve(VecDeque::new(), Some(Box::new(respond))).await
    }

    async fn serve(script: VecDeque<Value>, respond: Option<Box<Responder>>) -> FakeModel {
        let inner = Arc::new(Inner {
            script: Mutex::new(script),
            respond,
            requests: Mutex::new(Vec::new()),
            more: Notify::new(),
        });
        let (tx, count) = watch::channel(0usize);
        let app = Router::new().route("/v1/chat/completions", post(answer)).with_state((inner.clone(), Arc::new(tx)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the model server");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeModel { url: format!("http://{addr}/v1"), inner, count, server }
    }

    /// Adds answers to the script (a waiting request gets the first).
    pub fn give(&self, answers: Vec<Value>) {
        self.inner.script.lock().expect("script").extend(answers);
        self.inner.more.notify_waiters();
    }

    /// Held requests ask their responder again.
    pub fn wake(&self) {
        self.inner.more.notify_waiters();
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.inner.requests.lock().expect("requests").clone()
    }

    /// Waits until `n` requests have arrived.
    pub async fn until_requests(&self, n: usize) {
        let mut count = self.count.clone();
        let _ = count.wait_for(|c| *c >= n).await;
    }
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(
    State((inner, count)): State<(Arc<Inner>, Arc<watch::Sender<usize>>)>,
    Json(req): Json<Value>,
) -> Json<Value> {
    inner.requests.lock().expect("requests").push(req.clone());
    count.send_modify(|c| *c += 1);
    loop {
        let waiting = inner.more.notified();
        let answer = match &inner.respond {
            Some(respond) => respond(&req),
            None => inner.script.lock().expect("script").pop_front(),
        };
        if let Some(a) = answer {
            return Json(a);
        }
        waiting.await;
    }
}

/// An answer that calls `calls` (name, arguments) as tools.
pub fn calls(calls: &[(&str, Value)]) -> Value {
    let calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, (name, args))| json!({"id": format!("call-{i}-{name}"), "type": "function", "function": {"name": name, "arguments": args.to_string()}}))
        .collect();
    json!({
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null, "tool_calls": calls}}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 50},
    })
}

/// The system prompt of a request (who is asking: a spec's body comes first).
pub fn system_of(request: &Value) -> &str {
    request["messages"][0]["content"].as_str().unwrap_or_default()
}

/// How many turns a request's transcript already holds (its assistant messages).
pub fn turns_of(request: &Value) -> usize {
    request["messages"].as_array().map_or(0, |m| m.iter().filter(|m| m["role"] == "assistant").count())
}

/// An answer with one tool call.
pub fn call(name: &str, args: Value) -> Value {
    calls(&[(name, args)])
}

/// The tool results a request carried (the `tool` messages' contents), in order.
pub fn tool_results(request: &Value) -> Vec<String> {
    request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or_default().to_string())
        .collect()
}
