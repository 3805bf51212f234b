//! A task payload's envelope, checked where it enters (the coordinator's edge) and again where
//! it runs (the worker): a JSON object naming a known executor, without the fields no payload
//! may set. Each executor's own parameters are checked by the worker that runs it.

use crate::validate::Invalid;

/// The executors a payload may name (`"executor": …`).
pub const EXECUTORS: [&str; 3] = ["scripted", "command", "llm"];

/// Payload fields a task may not set, and why. They are not fields of any executor; this
/// table makes the refusal say why and what to do instead.
pub const REFUSED_FIELDS: &[(&str, &str)] = &[
    (
        "api_key_env",
        "a task cannot choose which of the worker's secrets to use; API keys come from the \
         worker's own configuration (`qm worker run --provider-key-env NAME=VAR`): name a \
         provider with `provider`",
    ),
    (
        "base_url",
        "a task cannot choose where the worker sends requests (or its API key); provider URLs \
         come from the worker's own configuration (`qm worker run --provider NAME=KIND:URL`): \
         name a provider with `provider`",
    ),
];

/// The refusal for a payload that sets a refused field, if it does.
pub fn refused_field(payload: &serde_json::Value) -> Option<Invalid> {
    let obj = payload.as_object()?;
    REFUSED_FIELDS
        .iter()
        .find(|(field, _)| obj.contains_key(*field))
        .map(|(field, why)| Invalid::new(format!("payload.{field}"), format!("refused: {why}")))
}

/// Checks the envelope of `payload`: a JSON object whose `executor` is one of [`EXECUTORS`]
/// and that sets no refused field.
pub fn check_envelope(payload: &[u8]) -> Result<(), Invalid> {
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| Invalid::new("payload", format!("is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(Invalid::new("payload", "must be a JSON object with an `executor` field"));
    }
    match value.get("executor").and_then(|e| e.as_str()) {
        Some(name) if EXECUTORS.contains(&name) => {}
        Some(name) => {
            return Err(Invalid::new(
                "payload.executor",
                format!("{name:?} is not an executor; choose one of {}", EXECUTORS.join(", ")),
            ))
        }
        None => return Err(Invalid::new("payload.executor", format!("is required: one of {}", EXECUTORS.join(", ")))),
    }
    refused_field(&value).map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_names_the_field_and_the_choices() {
        assert!(check_envelope(br#"{"executor":"scripted","duration_ms":10}"#).is_ok());
        let err = |p: &[u8]| check_envelope(p).expect_err("refused").to_string();
        assert!(err(br#"{"executor":"shell"}"#)
            .starts_with("payload.executor: \"shell\" is not an executor; choose one of scripted, command, llm"));
        assert!(err(br#"{"cmd":"ls"}"#).starts_with("payload.executor: is required"));
        assert!(err(b"[1]").starts_with("payload: must be a JSON object"));
        assert!(err(b"{").starts_with("payload: is not JSON"));
        assert!(err(br#"{"executor":"llm","base_url":"http://x"}"#).starts_with("payload.base_url: refused"));
        assert!(err(br#"{"executor":"llm","api_key_env":"HOME"}"#).starts_with("payload.api_key_env: refused"));
    }
}
