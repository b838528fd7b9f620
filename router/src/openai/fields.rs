//! Every top-level field of an OpenAI request body is either honoured or
//! refused with a 400 that names it: none is silently dropped. A field we
//! do not implement is still accepted at its neutral value (what OpenAI
//! does when it is absent: `frequency_penalty: 0`, `tools: []`,
//! `response_format: {"type": "text"}`, …), since clients often send the
//! defaults explicitly.
use serde_json::{Map, Value};

use super::Kind;
use crate::error::ApiError;

/// How the router treats one field.
enum Rule {
    /// Read and honoured by the router (parsed into the request).
    Honoured,
    /// The caller's end-user id (`user`, `safety_identifier`): no effect on
    /// the output; recorded in the audit event as a keyed hash.
    Identifier,
    /// Not implemented: accepted only at its neutral value.
    NeutralOnly(fn(&Value) -> bool, &'static str),
}

fn null_or_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}
fn null_or_false(v: &Value) -> bool {
    v.is_null() || v == &Value::Bool(false)
}
fn text_format(v: &Value) -> bool {
    v.is_null() || v.get("type").and_then(Value::as_str) == Some("text")
}
fn no_tool_choice(v: &Value) -> bool {
    v.is_null() || v.as_str() == Some("none")
}
fn text_modalities(v: &Value) -> bool {
    v.is_null() || v.as_array().is_some_and(|a| a.iter().all(|m| m == "text"))
}
fn default_tier(v: &Value) -> bool {
    v.is_null() || matches!(v.as_str(), Some("auto" | "default"))
}
fn one(v: &Value) -> bool {
    v.is_null() || v.as_i64() == Some(1)
}
fn any(_: &Value) -> bool {
    true
}

fn rule(kind: Kind, field: &str) -> Option<(&'static str, Rule)> {
    use Rule::*;
    let common: Option<(&'static str, Rule)> = match field {
        "model" => Some(("model", Honoured)),
        "max_tokens" => Some(("max_tokens", Honoured)),
        "temperature" => Some(("temperature", Honoured)),
        "top_p" => Some(("top_p", Honoured)),
        "top_k" => Some(("top_k", Honoured)),
        "seed" => Some(("seed", Honoured)),
        "stop" => Some(("stop", Honoured)),
        "stream" => Some(("stream", Honoured)),
        "stream_options" => Some(("stream_options", Honoured)),
        "n" => Some(("n", Honoured)),
        "logprobs" => Some(("logprobs", Honoured)),
        "user" => Some(("user", Identifier)),
        "frequency_penalty" => Some(("frequency_penalty", Honoured)),
        "presence_penalty" => Some(("presence_penalty", Honoured)),
        "repetition_penalty" => Some(("repetition_penalty", Honoured)),
        "logit_bias" => Some(("logit_bias", Honoured)),
        _ => None,
    };
    if common.is_some() {
        return common;
    }
    match (kind, field) {
        (Kind::Chat, "messages") => Some(("messages", Honoured)),
        (Kind::Chat, "max_completion_tokens") => Some(("max_completion_tokens", Honoured)),
        (Kind::Chat, "top_logprobs") => Some(("top_logprobs", Honoured)),
        (Kind::Chat, "safety_identifier") => Some(("safety_identifier", Identifier)),
        (Kind::Chat, "tools") => Some((
            "tools",
            NeutralOnly(null_or_empty, "tool calling is not implemented"),
        )),
        (Kind::Chat, "functions") => Some((
            "functions",
            NeutralOnly(null_or_empty, "function calling is not implemented"),
        )),
        (Kind::Chat, "tool_choice") => Some((
            "tool_choice",
            NeutralOnly(
                no_tool_choice,
                "tool calling is not implemented; only \"none\" is accepted",
            ),
        )),
        (Kind::Chat, "function_call") => Some((
            "function_call",
            NeutralOnly(
                no_tool_choice,
                "function calling is not implemented; only \"none\" is accepted",
            ),
        )),
        (Kind::Chat, "parallel_tool_calls") => Some(("parallel_tool_calls", NeutralOnly(any, ""))),
        (Kind::Chat, "response_format") => Some((
            "response_format",
            NeutralOnly(
                text_format,
                "structured output (json_object, json_schema) is not implemented; only {\"type\": \"text\"} is accepted",
            ),
        )),
        (Kind::Chat, "modalities") => Some((
            "modalities",
            NeutralOnly(text_modalities, "only the text modality is served"),
        )),
        (Kind::Chat, "audio") => Some((
            "audio",
            NeutralOnly(Value::is_null, "audio output is not served"),
        )),
        (Kind::Chat, "prediction") => Some((
            "prediction",
            NeutralOnly(Value::is_null, "predicted outputs are not implemented"),
        )),
        (Kind::Chat, "reasoning_effort") => Some((
            "reasoning_effort",
            NeutralOnly(Value::is_null, "this model has no reasoning effort setting"),
        )),
        (Kind::Chat, "verbosity") => Some((
            "verbosity",
            NeutralOnly(Value::is_null, "verbosity is not implemented"),
        )),
        (Kind::Chat, "web_search_options") => Some((
            "web_search_options",
            NeutralOnly(Value::is_null, "web search is not served"),
        )),
        (Kind::Chat, "store") => Some((
            "store",
            NeutralOnly(
                null_or_false,
                "completions are not stored; only false is accepted",
            ),
        )),
        (Kind::Chat, "metadata") => Some((
            "metadata",
            NeutralOnly(
                null_or_empty,
                "metadata is kept only with store, which is not implemented",
            ),
        )),
        (Kind::Chat, "service_tier") => Some((
            "service_tier",
            NeutralOnly(default_tier, "only the default service tier exists"),
        )),
        (Kind::Chat, "prompt_cache_key") => Some((
            "prompt_cache_key",
            NeutralOnly(
                Value::is_null,
                "prompt cache keys are not implemented (the prefix cache is per tenant)",
            ),
        )),
        (Kind::Completion, "prompt") => Some(("prompt", Honoured)),
        (Kind::Completion, "best_of") => {
            Some(("best_of", NeutralOnly(one, "only best_of = 1 is supported")))
        }
        (Kind::Completion, "echo") => Some((
            "echo",
            NeutralOnly(null_or_false, "echo is not implemented"),
        )),
        (Kind::Completion, "suffix") => Some((
            "suffix",
            NeutralOnly(null_or_empty, "suffix (insertion) is not implemented"),
        )),
        _ => None,
    }
}

/// Refuses any top-level field that is unknown, or known but not
/// implemented and not at its neutral value.
pub fn check(kind: Kind, body: &Map<String, Value>) -> Result<(), ApiError> {
    for (field, value) in body {
        match rule(kind, field) {
            None => {
                let shown: String = field.chars().take(64).collect();
                return Err(ApiError::invalid(format!(
                    "unknown field {shown:?}: this endpoint does not implement it, so it is refused rather than ignored"
                )));
            }
            Some((name, Rule::NeutralOnly(neutral, why))) if !neutral(value) => {
                return Err(ApiError::invalid_param(
                    name,
                    format!("{name} is not supported: {why}"),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn chat(extra: Value) -> Map<String, Value> {
        let mut m = json!({"model": "m", "messages": []})
            .as_object()
            .unwrap()
            .clone();
        m.extend(extra.as_object().unwrap().clone());
        m
    }

    #[test]
    fn neutral_values_pass_and_others_are_refused_by_name() {
        for ok in [
            json!({"frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}}),
            // Honoured (their ranges are checked in `validate`).
            json!({"frequency_penalty": 0.5, "presence_penalty": -1, "repetition_penalty": 1.1,
                "logit_bias": {"50256": -100}}),
            json!({"tools": [], "tool_choice": "none", "response_format": {"type": "text"}}),
            json!({"user": "u-1", "store": false, "service_tier": "auto", "modalities": ["text"]}),
        ] {
            assert!(check(Kind::Chat, &chat(ok.clone())).is_ok(), "{ok}");
        }
        for (bad, name) in [
            (json!({"tools": [{"type": "function"}]}), "tools"),
            (
                json!({"response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (json!({"store": true}), "store"),
        ] {
            let e = check(Kind::Chat, &chat(bad.clone())).unwrap_err();
            assert!(e.to_string().contains(name), "{bad}: {e}");
            assert_eq!(e.http_status(), axum::http::StatusCode::BAD_REQUEST);
        }
        let e = check(Kind::Chat, &chat(json!({"temprature": 0.2}))).unwrap_err();
        assert!(
            e.to_string().contains("unknown field \"temprature\""),
            "{e}"
        );
        // A completion-only field on the chat endpoint is unknown there.
        assert!(check(Kind::Chat, &chat(json!({"echo": false}))).is_err());
        let mut c = json!({"model": "m", "prompt": "p", "echo": true})
            .as_object()
            .unwrap()
            .clone();
        assert!(
            check(Kind::Completion, &c)
                .unwrap_err()
                .to_string()
                .contains("echo")
        );
        c.insert("echo".into(), json!(false));
        assert!(check(Kind::Completion, &c).is_ok());
    }
}
