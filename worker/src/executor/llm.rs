//! The `llm` executor: one call to a model provider (OpenAI-compatible or Anthropic), off
//! unless the worker enables it.
//!
//! The provider's URL and API key come from the worker's configuration, keyed by provider
//! name; a payload names a provider (or leaves it to the coordinator's routing), never a URL
//! or a key variable. A provider's error body reaches the task error bounded
//! (`PROVIDER_ERROR_LEN_MAX_BYTES`) and scrubbed: the key, `Bearer …` and `sk-…` tokens are
//! replaced by `[redacted]`. A completed answer is the checkpoint, so a resumed attempt does
//! not pay twice.

use std::time::Duration;

use qm_shared::limits::{
    PROVIDER_ANSWER_BYTES_MAX, PROVIDER_ERROR_LEN_MAX_BYTES, TASK_CHECKPOINT_BYTES_MAX, TASK_ERROR_LEN_MAX_BYTES,
    TASK_OUTPUT_BYTES_MAX,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{truncate_at_char, Control, ExecConfig, ExecEvent, ExecOutcome, ExecRequest, ExecResult, Provider, Usage};

/// API flavour of a model endpoint.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// OpenAI-compatible chat completions (cloud, llama.cpp server, vLLM, Ollama).
    Openai,
    /// Anthropic Messages.
    Anthropic,
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Api::Openai => "openai",
            Api::Anthropic => "anthropic",
        })
    }
}

/// The llm executor's parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Llm {
    /// A provider configured on this worker (`qm worker run --provider NAME=…`). Empty or
    /// `auto`: the provider the coordinator routed the task to.
    #[serde(default)]
    pub provider: String,
    /// If given, must be the provider's kind (the provider decides the API).
    #[serde(default)]
    pub api: Option<Api>,
    /// Empty or `auto`: the model the coordinator routed the task to (its tier's model).
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub system: Option<String>,
    pub prompt: String,
    #[serde(default = "Llm::default_max_tokens")]
    pub max_tokens: u32,
}

impl Llm {
    fn default_max_tokens() -> u32 {
        1_024
    }
}

/// A model's answer and its usage.
#[derive(Serialize, Deserialize)]
struct LlmCheckpoint {
    text: String,
    input_tokens: u64,
    output_tokens: u64,
    cached_tokens: u64,
    estimated: bool,
}

/// The provider the payload (or else the coordinator's routing) names, as this worker
/// configures it.
pub(crate) fn provider<'a>(
    named: &str,
    api: Option<Api>,
    config: &'a ExecConfig,
    req: &ExecRequest,
) -> Result<(String, &'a Provider), String> {
    let known = || config.providers.keys().cloned().collect::<Vec<_>>().join(", ");
    let name = if named.is_empty() || named == "auto" { req.provider.clone() } else { named.to_string() };
    if name.is_empty() {
        return Err(format!(
            "payload.provider: empty (or auto) and the task was routed to no provider; name one of this \
             worker's providers ({})",
            known()
        ));
    }
    let Some(p) = config.providers.get(&name) else {
        return Err(format!(
            "payload.provider: {name:?} is not configured on this worker (its providers: {}; add one with \
             `qm worker run --provider NAME=KIND:URL`)",
            known()
        ));
    };
    if let Some(api) = api {
        if api != p.api {
            return Err(format!("payload.api: {api} does not match provider {name:?}, which is {}", p.api));
        }
    }
    Ok((name, p))
}

pub(crate) async fn run(
    mut l: Llm,
    config: &ExecConfig,
    req: &ExecRequest,
    events: mpsc::Sender<ExecEvent>,
    mut control: mpsc::Receiver<Control>,
) -> ExecResult {
    if l.model.is_empty() || l.model == "auto" {
        if req.model.is_empty() {
            return ExecResult::failed("payload.model: empty (or auto) and the task was routed to no model");
        }
        l.model = req.model.clone();
    }
    let (name, p) = match provider(&l.provider, l.api, config, req) {
        Ok(found) => found,
        Err(e) => return ExecResult::failed(e),
    };
    if let Some(c) = &req.resume {
        if let Ok(done) = serde_json::from_slice::<LlmCheckpoint>(c) {
            return ExecResult {
                outcome: ExecOutcome::Succeeded,
                output: done.text.into_bytes(),
                error: String::new(),
                usage: Usage::default(),
            };
        }
    }
    let _ = events
        .send(ExecEvent::Progress {
            percent: 0,
            stage: format!("calling {} on {name}", l.model),
            usage: Usage::default(),
        })
        .await;
    let call = call_model(&l, p);
    tokio::pin!(call);
    let answer = loop {
        tokio::select! {
            r = &mut call => break r,
            c = control.recv() => {
                if c != Some(Control::Checkpoint) {
                    // Nothing to keep from a call in flight: a resumed attempt calls again.
                    return ExecResult::stopped(Usage::default());
                }
            }
        }
    };
    match answer {
        Ok(done) => {
            let usage = Usage {
                input_tokens: done.input_tokens,
                output_tokens: done.output_tokens,
                cached_tokens: done.cached_tokens,
                estimated: done.estimated,
                reported_micros: None,
            };
            let mut checkpoint = serde_json::to_vec(&done).expect("json");
            if checkpoint.len() <= TASK_CHECKPOINT_BYTES_MAX {
                let _ = events.send(ExecEvent::Checkpoint(std::mem::take(&mut checkpoint))).await;
            }
            let mut output = done.text.into_bytes();
            output.truncate(TASK_OUTPUT_BYTES_MAX);
            ExecResult { outcome: ExecOutcome::Succeeded, output, error: String::new(), usage }
        }
        Err(e) => {
            let mut error = scrub(&e, p.api_key.as_ref().map(|k| k.expose()));
            truncate_at_char(&mut error, TASK_ERROR_LEN_MAX_BYTES);
            ExecResult::failed(error)
        }
    }
}

/// What replaces a secret in text that leaves the worker.
const REDACTED: &str = "[redacted]";

/// `text` with `key` and anything that looks like a credential (`Bearer <token>`,
/// `sk-<token>`) replaced by `[redacted]`.
pub fn scrub(text: &str, key: Option<&str>) -> String {
    let text = match key {
        Some(k) if !k.is_empty() => text.replace(k, REDACTED),
        _ => text.to_string(),
    };
    let text = redact_after(&text, "bearer ", false);
    redact_after(&text, "sk-", true)
}

/// Token characters (base64, base64url, JWT dots).
fn token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~+/=".contains(&c)
}

/// Replaces the token after each `marker` (ASCII, any case) by [`REDACTED`]; with
/// `word_start`, only where the marker does not continue a word (`task-1` holds no `sk-`).
fn redact_after(text: &str, marker: &str, word_start: bool) -> String {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    let mut search = 0;
    while let Some(at) = lower[search..].find(marker).map(|i| i + search) {
        let token_start = at + marker.len();
        let mut end = token_start;
        while end < bytes.len() && token_char(bytes[end]) {
            end += 1;
        }
        let starts_word = at == 0 || !bytes[at - 1].is_ascii_alphanumeric();
        if end > token_start && (starts_word || !word_start) {
            out.push_str(&text[from..token_start]);
            out.push_str(REDACTED);
            from = end;
        }
        search = end;
    }
    out.push_str(&text[from..]);
    out
}

/// Counts tokens the way providers roughly do (4 bytes a token) when they report none.
fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// Reads at most `max` bytes of the body; true when there was more.
async fn read_bounded(mut resp: reqwest::Response, max: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = max - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// The request's URL and JSON body for `l` on a provider of kind `api` at `base`.
fn request_of(l: &Llm, api: Api, base: &str) -> (String, serde_json::Value) {
    match api {
        Api::Openai => {
            let mut messages = Vec::new();
            if let Some(s) = &l.system {
                messages.push(serde_json::json!({"role": "system", "content": s}));
            }
            messages.push(serde_json::json!({"role": "user", "content": l.prompt}));
            (
                format!("{base}/chat/completions"),
                serde_json::json!({"model": l.model, "messages": messages, "max_tokens": l.max_tokens}),
            )
        }
        Api::Anthropic => {
            let mut body = serde_json::json!({"model": l.model, "max_tokens": l.max_tokens, "messages": [{"role": "user", "content": l.prompt}]});
            if let Some(s) = &l.system {
                body["system"] = serde_json::json!(s);
            }
            (format!("{base}/v1/messages"), body)
        }
    }
}

async fn call_model(l: &Llm, p: &Provider) -> Result<LlmCheckpoint, String> {
    let (url, body) = request_of(l, p.api, p.base_url.trim_end_matches('/'));
    let v = post(p, &url, &body).await?;
    Ok(answer_of(l, p.api, &v))
}

/// POSTs `body` to `url` of provider `p` with its key; the JSON answer, or an error quoting
/// at most `PROVIDER_ERROR_LEN_MAX_BYTES` of the provider's answer with credentials scrubbed.
pub(crate) async fn post(p: &Provider, url: &str, body: &serde_json::Value) -> Result<serde_json::Value, String> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let key = p.api_key.as_ref().map(|k| k.expose());
    let mut request = client.post(url).json(body);
    request = match (p.api, key) {
        (Api::Openai, Some(k)) => request.bearer_auth(k),
        (Api::Anthropic, k) => {
            let r = request.header("anthropic-version", "2023-06-01");
            match k {
                Some(k) => r.header("x-api-key", k),
                None => r,
            }
        }
        (Api::Openai, None) => request,
    };
    let resp = request.send().await.map_err(|e| scrub(&format!("POST {url}: {e}"), key))?;
    let status = resp.status();
    if !status.is_success() {
        // Scrubbed before it is cut, so no credential is cut into an unrecognisable prefix.
        let (body, _) = read_bounded(resp, TASK_ERROR_LEN_MAX_BYTES).await.unwrap_or_default();
        let mut quoted = scrub(&String::from_utf8_lossy(&body), key);
        let whole = quoted.len();
        truncate_at_char(&mut quoted, PROVIDER_ERROR_LEN_MAX_BYTES);
        let more = if quoted.len() < whole { " […]" } else { "" };
        return Err(format!("POST {url}: {status}: {quoted}{more}"));
    }
    let (body, cut) =
        read_bounded(resp, PROVIDER_ANSWER_BYTES_MAX).await.map_err(|e| format!("reading the answer of {url}: {e}"))?;
    if cut {
        return Err(format!("the answer of {url} is over {PROVIDER_ANSWER_BYTES_MAX} bytes"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("answer of {url} is not JSON: {e}"))
}

/// The answer and usage in a provider's JSON. Lenient: take what is there, estimate what is
/// not.
fn answer_of(l: &Llm, api: Api, v: &serde_json::Value) -> LlmCheckpoint {
    let u64_at = |p: &str| v.pointer(p).and_then(serde_json::Value::as_u64);
    let (answer, input, output, cached) = match api {
        Api::Openai => (
            v.pointer("/choices/0/message/content").and_then(|c| c.as_str()).unwrap_or_default().to_string(),
            u64_at("/usage/prompt_tokens"),
            u64_at("/usage/completion_tokens"),
            u64_at("/usage/prompt_tokens_details/cached_tokens"),
        ),
        Api::Anthropic => (
            v.get("content")
                .and_then(|c| c.as_array())
                .map(|parts| {
                    parts.iter().filter_map(|p| p.get("text").and_then(|t| t.as_str())).collect::<Vec<_>>().join("")
                })
                .unwrap_or_default(),
            u64_at("/usage/input_tokens"),
            u64_at("/usage/output_tokens"),
            u64_at("/usage/cache_read_input_tokens"),
        ),
    };
    let prompt_len = l.prompt.len() + l.system.as_deref().map_or(0, str::len);
    let estimated = input.is_none() || output.is_none();
    let cached = cached.unwrap_or(0);
    LlmCheckpoint {
        // OpenAI counts cached prompt tokens inside prompt_tokens; Anthropic does not.
        input_tokens: input.map_or_else(
            || (prompt_len as u64).div_ceil(4),
            |i| if api == Api::Openai { i.saturating_sub(cached) } else { i },
        ),
        output_tokens: output.unwrap_or_else(|| estimate_tokens(&answer)),
        cached_tokens: cached,
        estimated,
        text: answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubbing_removes_the_key_and_anything_like_a_credential() {
        let text = "bad key sk-live-0123456789abcdef (Authorization: Bearer eyJhbGc.iOiJ-IUz_I1) \
                    for the key my-own-key-value; task-12 risk-free";
        let s = scrub(text, Some("my-own-key-value"));
        assert_eq!(
            s,
            "bad key sk-[redacted] (Authorization: Bearer [redacted]) for the key [redacted]; task-12 risk-free"
        );
        assert_eq!(scrub("BEARER abc", None), "BEARER [redacted]");
        assert_eq!(scrub("no secrets here", None), "no secrets here");
    }
}
