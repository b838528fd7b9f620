//! OpenAI wire types: the request bodies the router accepts and the response
//! bodies it writes. Every field is honoured or refused by name
//! (`fields`): unknown and unimplemented fields are 400s, not dropped.
use bulkhead_proto::common::{ChatMessage, FinishReason, TokenLogprob};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::pipeline::Usage;
use crate::validate::{Input, RawLogprobs, RawRequest};

pub mod fields;

#[derive(Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields shared by both endpoints.
#[derive(Deserialize)]
pub struct Common {
    pub model: String,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<StopField>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    /// Extension (vLLM, transformers): > 0, 1 = off.
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    /// Token id (as a string, OpenAI's form) -> bias.
    #[serde(default)]
    pub logit_bias: Option<std::collections::HashMap<String, f64>>,
    /// The caller's end-user id (audited as a keyed hash).
    #[serde(default)]
    pub user: Option<String>,
    /// Chat: OpenAI's newer name for the same.
    #[serde(default)]
    pub safety_identifier: Option<String>,
}

/// A chat body: its own fields and the [`Common`] ones, each read from the
/// same JSON object (not `#[serde(flatten)]`, which would hide the name of
/// a field of the wrong type from the error).
pub struct ChatBody {
    pub messages: Vec<Message>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub common: Common,
}

#[derive(Deserialize)]
struct ChatFields {
    messages: Vec<Message>,
    /// Return the chosen tokens' log-probabilities.
    #[serde(default)]
    logprobs: Option<bool>,
    /// Alternatives per position (0..=20; needs `logprobs: true`).
    #[serde(default)]
    top_logprobs: Option<i64>,
}

impl ChatBody {
    /// Reads a body whose fields [`fields::check`] accepted.
    pub fn from_value(v: Value) -> Result<Self, ApiError> {
        let own: ChatFields = from_value(&v)?;
        Ok(Self {
            messages: own.messages,
            logprobs: own.logprobs,
            top_logprobs: own.top_logprobs,
            common: from_value(&v)?,
        })
    }
}

impl ChatBody {
    pub fn raw_logprobs(&self) -> RawLogprobs {
        RawLogprobs::Chat {
            logprobs: self.logprobs,
            top_logprobs: self.top_logprobs,
        }
    }
}

/// A legacy completions body (read like [`ChatBody`]).
pub struct CompletionBody {
    pub prompt: Value,
    pub logprobs: Option<i64>,
    pub common: Common,
}

#[derive(Deserialize)]
struct CompletionFields {
    prompt: Value,
    /// Legacy: how many alternatives per position (0..=5); null = none.
    #[serde(default)]
    logprobs: Option<i64>,
}

impl CompletionBody {
    /// Reads a body whose fields [`fields::check`] accepted.
    pub fn from_value(v: Value) -> Result<Self, ApiError> {
        let own: CompletionFields = from_value(&v)?;
        Ok(Self {
            prompt: own.prompt,
            logprobs: own.logprobs,
            common: from_value(&v)?,
        })
    }
}

/// Parses a JSON body, turning serde's message into a 400. serde quotes a
/// string of the wrong type in full (`invalid type: string "…", expected
/// u64`) and refusals are logged, so such a string is left out (found by
/// the `http_body` fuzz target).
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| body_error(&e))
}

/// [`parse`] for a body already parsed as JSON (checked field by field
/// first, so it is not parsed twice).
pub fn from_value<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| body_error(&e))
}

/// The error, naming the field it is about (`presence_penalty: invalid
/// type: ...`) when it is about one.
fn body_error(e: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let msg = without_quoted_string(&e.inner().to_string());
    let path = e.path().to_string();
    let at = if path == "." || path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    };
    ApiError::invalid(format!(
        "the request body is not valid JSON for this endpoint: {at}{msg}"
    ))
}

/// serde's message less the string value it quotes from the body, if any.
fn without_quoted_string(msg: &str) -> String {
    for what in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(what)
            && rest.starts_with("string \"")
            && let Some(at) = rest.rfind(", expected ")
        {
            return format!("{what}a string{}", &rest[at..]);
        }
    }
    msg.to_string()
}

impl Common {
    pub fn into_raw(self, input: Input, logprobs: RawLogprobs) -> Result<RawRequest, ApiError> {
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::invalid_param("n", "only n = 1 is supported"));
        }
        let stop = match self.stop {
            None => vec![],
            Some(StopField::One(s)) => vec![s],
            Some(StopField::Many(v)) => v,
        };
        let mut logit_bias = vec![];
        for (k, v) in self.logit_bias.unwrap_or_default() {
            let id = k.parse::<u32>().map_err(|_| {
                ApiError::invalid_param(
                    "logit_bias",
                    "logit_bias keys must be token ids (non-negative integers as strings)",
                )
            })?;
            logit_bias.push((id, v));
        }
        Ok(RawRequest {
            model: self.model,
            input,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            stop,
            logprobs,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            repetition_penalty: self.repetition_penalty,
            logit_bias,
            user: self.safety_identifier.or(self.user),
        })
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

pub fn chat_input(messages: Vec<Message>) -> Result<Input, ApiError> {
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => s.push_str(&t),
                        _ => {
                            return Err(ApiError::invalid_param(
                                "messages",
                                "only text content parts are supported",
                            ));
                        }
                    }
                }
                s
            }
        };
        out.push(ChatMessage {
            role: m.role,
            content,
        });
    }
    Ok(Input::Chat(out))
}

pub fn completion_input(prompt: Value) -> Result<Input, ApiError> {
    match prompt {
        Value::String(s) => Ok(Input::Prompt(s)),
        Value::Array(v) if v.len() == 1 && v[0].is_string() => {
            Ok(Input::Prompt(v[0].as_str().unwrap_or_default().to_string()))
        }
        _ => Err(ApiError::invalid_param(
            "prompt",
            "`prompt` must be a string (token arrays and batches are not supported)",
        )),
    }
}

pub fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
        FinishReason::Error => "error",
        _ => "stop",
    }
}

pub fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

/// Which endpoint a response is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

pub struct Envelope {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub logprobs: LogprobsOut,
}

/// Whether a response carries log-probabilities, and where the next token
/// starts in the completion text (the legacy `text_offset`, in characters,
/// counted from the start of the completion as vLLM does).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogprobsOut {
    requested: bool,
    offset: usize,
}

impl LogprobsOut {
    pub fn new(requested: bool) -> Self {
        Self {
            requested,
            offset: 0,
        }
    }
}

/// Chat shape: `{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}`.
pub fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = lps
        .iter()
        .map(|l| {
            let top: Vec<Value> = l
                .top_logprobs
                .iter()
                .map(|t| json!({"token": t.text, "logprob": t.logprob, "bytes": &t.bytes}))
                .collect();
            json!({"token": l.text, "logprob": l.logprob, "bytes": &l.bytes, "top_logprobs": top})
        })
        .collect();
    json!({ "content": content })
}

/// Legacy completions shape: `{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}`.
/// `offset` is where the first token starts; it is advanced past the last.
pub fn legacy_logprobs(lps: &[TokenLogprob], offset: &mut usize) -> Value {
    let mut text_offset = Vec::with_capacity(lps.len());
    for l in lps {
        text_offset.push(*offset);
        *offset += l.text.chars().count();
    }
    let top: Vec<Value> = lps
        .iter()
        .map(|l| {
            let m: serde_json::Map<String, Value> = l
                .top_logprobs
                .iter()
                .map(|t| (t.text.clone(), json!(t.logprob)))
                .collect();
            Value::Object(m)
        })
        .collect();
    json!({
        "tokens": lps.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

impl Envelope {
    /// The `logprobs` of a choice for these tokens: `null` when not asked
    /// for (or, in a streamed chunk, when the chunk has no tokens).
    fn logprobs_json(&mut self, lps: &[TokenLogprob], chunk: bool) -> Value {
        if !self.logprobs.requested || (chunk && lps.is_empty()) {
            return Value::Null;
        }
        match self.kind {
            Kind::Chat => chat_logprobs(lps),
            Kind::Completion => legacy_logprobs(lps, &mut self.logprobs.offset),
        }
    }

    /// The whole (non-streaming) response.
    pub fn full(
        &mut self,
        text: &str,
        finish: FinishReason,
        usage: Usage,
        lps: &[TokenLogprob],
    ) -> Value {
        let logprobs = self.logprobs_json(lps, false);
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_str(finish),
                "logprobs": logprobs,
            }),
            Kind::Completion => json!({
                "index": 0, "text": text, "finish_reason": finish_str(finish), "logprobs": logprobs,
            }),
        };
        json!({
            "id": self.id,
            "object": if self.kind == Kind::Chat { "chat.completion" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage_json(usage),
        })
    }

    /// One streamed chunk; `first` adds the assistant role for chat; `lps`
    /// are the log-probabilities of the tokens in it (if asked for).
    pub fn chunk(
        &mut self,
        text: &str,
        finish: Option<FinishReason>,
        first: bool,
        lps: &[TokenLogprob],
    ) -> Value {
        let logprobs = self.logprobs_json(lps, true);
        let finish = finish.map(finish_str);
        let choice = match self.kind {
            Kind::Chat => {
                let delta = if first {
                    json!({"role": "assistant", "content": text})
                } else if finish.is_some() && text.is_empty() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs})
            }
        };
        json!({
            "id": self.id,
            "object": if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }

    /// The usage-only chunk sent when `stream_options.include_usage` is set.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        json!({
            "id": self.id,
            "object": if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_json(usage),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_proto::common::TopLogprob;

    fn lp(id: u32, text: &str, logprob: f32, top: &[(&str, f32)]) -> TokenLogprob {
        TokenLogprob {
            id,
            text: text.into(),
            bytes: text.as_bytes().to_vec(),
            logprob,
            top_logprobs: top
                .iter()
                .map(|(t, l)| TopLogprob {
                    id: 0,
                    text: (*t).into(),
                    bytes: t.as_bytes().to_vec(),
                    logprob: *l,
                })
                .collect(),
        }
    }

    fn env(kind: Kind, requested: bool) -> Envelope {
        Envelope {
            kind,
            id: "x".into(),
            created: 0,
            model: "m".into(),
            logprobs: LogprobsOut::new(requested),
        }
    }

    #[test]
    fn chat_shape() {
        let lps = [lp(5, "Hi", -0.5, &[("Hi", -0.5), ("Yo", -1.0)])];
        let v = env(Kind::Chat, true).full("Hi", FinishReason::Stop, Usage::default(), &lps);
        let c = &v["choices"][0]["logprobs"]["content"][0];
        assert_eq!(c["token"], "Hi");
        assert_eq!(c["logprob"], -0.5);
        assert_eq!(c["bytes"], json!([72, 105]));
        assert_eq!(
            c["top_logprobs"][1],
            json!({"token": "Yo", "logprob": -1.0, "bytes": [89, 111]})
        );
        let v = env(Kind::Chat, false).full("Hi", FinishReason::Stop, Usage::default(), &[]);
        assert!(v["choices"][0]["logprobs"].is_null());
        // Asked for, nothing generated: an empty list, not null.
        let v = env(Kind::Chat, true).full("", FinishReason::Stop, Usage::default(), &[]);
        assert_eq!(v["choices"][0]["logprobs"], json!({"content": []}));
    }

    #[test]
    fn legacy_shape_and_offsets_across_chunks() {
        let mut e = env(Kind::Completion, true);
        let a = e.chunk(
            "ab",
            None,
            true,
            &[lp(1, "a", -0.1, &[("a", -0.1)]), lp(2, "b", -0.2, &[])],
        );
        let l = &a["choices"][0]["logprobs"];
        assert_eq!(l["tokens"], json!(["a", "b"]));
        assert_eq!(l["text_offset"], json!([0, 1]));
        assert_eq!(l["top_logprobs"], json!([{"a": -0.1f32}, {}]));
        let b = e.chunk("é", None, false, &[lp(3, "é", -1.0, &[])]);
        assert_eq!(b["choices"][0]["logprobs"]["text_offset"], json!([2]));
        let end = e.chunk("", Some(FinishReason::Stop), false, &[]);
        assert!(end["choices"][0]["logprobs"].is_null());
    }
}
