//! One turn of an agent: its transcript sent to a model with its tools, the answer read back
//! as text and tool calls. The transcript is kept in the OpenAI chat shape (system, user,
//! assistant with `tool_calls`, `tool` results); for an Anthropic provider it is translated
//! to Messages (`tool_use` / `tool_result` blocks) on the way out and back.

use serde_json::{json, Value};

use super::super::llm::{post, Api};
use super::super::{Provider, Usage};

/// A tool call the model asked for.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Call {
    pub id: String,
    pub name: String,
    pub args: Value,
}

/// A model's answer to one turn.
#[derive(Debug)]
pub(crate) struct Turn {
    /// The assistant message, in the transcript's (OpenAI) shape.
    pub message: Value,
    pub text: String,
    pub calls: Vec<Call>,
    pub usage: Usage,
}

/// Sends the transcript; the answer, or an error fit for a task's error (scrubbed, bounded).
pub(crate) async fn turn(
    p: &Provider,
    model: &str,
    messages: &[Value],
    tools: &[Value],
    max_tokens: u32,
) -> Result<Turn, String> {
    let base = p.base_url.trim_end_matches('/');
    let (url, body) = match p.api {
        Api::Openai => (
            format!("{base}/chat/completions"),
            json!({"model": model, "messages": messages, "tools": tools, "max_tokens": max_tokens}),
        ),
        Api::Anthropic => (format!("{base}/v1/messages"), anthropic_request(model, messages, tools, max_tokens)),
    };
    let v = post(p, &url, &body).await?;
    match p.api {
        Api::Openai => openai_turn(&v),
        Api::Anthropic => anthropic_turn(&v),
    }
    .map_err(|e| format!("answer of {url}: {e}"))
}

fn openai_turn(v: &Value) -> Result<Turn, String> {
    let message = v.pointer("/choices/0/message").ok_or("no choices[0].message")?;
    let text = message.get("content").and_then(Value::as_str).unwrap_or_default().to_string();
    let mut calls = Vec::new();
    for c in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        let id = c.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let name = c.pointer("/function/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let raw = c.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}");
        // Arguments that are not JSON reach the tool as none: it answers with what is missing.
        let args = serde_json::from_str(raw).unwrap_or(Value::Null);
        calls.push(Call { id, name, args });
    }
    let u = |p: &str| v.pointer(p).and_then(Value::as_u64);
    let cached = u("/usage/prompt_tokens_details/cached_tokens").unwrap_or(0);
    let usage = Usage {
        // OpenAI counts cached prompt tokens inside prompt_tokens.
        input_tokens: u("/usage/prompt_tokens").unwrap_or(0).saturating_sub(cached),
        output_tokens: u("/usage/completion_tokens").unwrap_or(0),
        cached_tokens: cached,
        estimated: u("/usage/prompt_tokens").is_none(),
        reported_micros: None,
    };
    Ok(Turn { message: assistant_message(&text, &calls), text, calls, usage })
}

/// An answer as the transcript keeps it (the OpenAI assistant message).
fn assistant_message(text: &str, calls: &[Call]) -> Value {
    let mut message = json!({"role": "assistant", "content": text});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(
            calls
                .iter()
                .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.args.to_string()}}))
                .collect(),
        );
    }
    message
}

/// The transcript as an Anthropic Messages request: the system message apart, assistant tool
/// calls as `tool_use` blocks, tool results as `tool_result` blocks of one user message.
fn anthropic_request(model: &str, messages: &[Value], tools: &[Value], max_tokens: u32) -> Value {
    let mut system = String::new();
    let mut out: Vec<Value> = Vec::new();
    for m in messages {
        let content = m.get("content").and_then(Value::as_str).unwrap_or_default();
        match m.get("role").and_then(Value::as_str).unwrap_or_default() {
            "system" => system.push_str(content),
            "assistant" => {
                let mut blocks = Vec::new();
                if !content.is_empty() {
                    blocks.push(json!({"type": "text", "text": content}));
                }
                for c in m.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                    let args = c.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}");
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": c.get("id").cloned().unwrap_or_default(),
                        "name": c.pointer("/function/name").cloned().unwrap_or_default(),
                        "input": serde_json::from_str::<Value>(args).unwrap_or(json!({})),
                    }));
                }
                out.push(json!({"role": "assistant", "content": blocks}));
            }
            "tool" => {
                let block = json!({"type": "tool_result", "tool_use_id": m.get("tool_call_id").cloned().unwrap_or_default(), "content": content});
                // Consecutive results go in one user message, as the API asks.
                match out.last_mut() {
                    Some(last) if last["role"] == "user" && last["content"].is_array() => {
                        last["content"].as_array_mut().expect("array").push(block)
                    }
                    _ => out.push(json!({"role": "user", "content": [block]})),
                }
            }
            _ => out.push(json!({"role": "user", "content": content})),
        }
    }
    let tools: Vec<Value> = tools
        .iter()
        .map(|t| {
            json!({
                "name": t.pointer("/function/name").cloned().unwrap_or_default(),
                "description": t.pointer("/function/description").cloned().unwrap_or_default(),
                "input_schema": t.pointer("/function/parameters").cloned().unwrap_or_default(),
            })
        })
        .collect();
    json!({"model": model, "max_tokens": max_tokens, "system": system, "messages": out, "tools": tools})
}

fn anthropic_turn(v: &Value) -> Result<Turn, String> {
    let blocks = v.get("content").and_then(Value::as_array).ok_or("no content")?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("tool_use") => calls.push(Call {
                id: b.get("id").and_then(Value::as_str).unwrap_or_default().to_string(),
                name: b.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
                args: b.get("input").cloned().unwrap_or(Value::Null),
            }),
            _ => {}
        }
    }
    let u = |p: &str| v.pointer(p).and_then(Value::as_u64);
    let usage = Usage {
        input_tokens: u("/usage/input_tokens").unwrap_or(0),
        output_tokens: u("/usage/output_tokens").unwrap_or(0),
        cached_tokens: u("/usage/cache_read_input_tokens").unwrap_or(0),
        estimated: u("/usage/input_tokens").is_none(),
        reported_micros: None,
    };
    Ok(Turn { message: assistant_message(&text, &calls), text, calls, usage })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transcript_becomes_anthropic_blocks_and_back() {
        let call =
            json!({"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a\"}"}});
        let messages = vec![
            json!({"role": "system", "content": "be brief"}),
            json!({"role": "user", "content": "fix it"}),
            json!({"role": "assistant", "content": "", "tool_calls": [call]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "text"}),
        ];
        let r = anthropic_request("m", &messages, &[], 100);
        assert_eq!(r["system"], "be brief");
        assert_eq!(r["messages"][1]["content"][0]["type"], "tool_use");
        assert_eq!(r["messages"][1]["content"][0]["input"]["path"], "a");
        assert_eq!(r["messages"][2]["content"][0]["tool_use_id"], "c1");
        let answer = json!({"content": [{"type": "tool_use", "id": "t2", "name": "finish", "input": {"summary": "ok"}}],
                            "usage": {"input_tokens": 10, "output_tokens": 3}});
        let t = anthropic_turn(&answer).unwrap();
        assert_eq!(t.calls, vec![Call { id: "t2".into(), name: "finish".into(), args: json!({"summary": "ok"}) }]);
        assert_eq!((t.usage.input_tokens, t.usage.output_tokens), (10, 3));
    }
}
