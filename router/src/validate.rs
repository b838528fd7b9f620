//! Validation: the only way from a client's request (HTTP or gRPC) to a
//! [`ValidRequest`], which is the only thing the dispatch path accepts.
use std::sync::Arc;
use std::time::Instant;

use bulkhead_proto::common::{ChatMessage, SamplingParams};
use bulkhead_proto::control::Tenant;

use crate::directory::AuthContext;
use crate::error::ApiError;

/// Largest prompt accepted, in bytes (all messages together).
pub const MAX_PROMPT_BYTES: usize = 256 * 1024;
pub const MAX_MESSAGES: usize = 512;
pub const MAX_STOP_STRINGS: usize = 16;
pub const MAX_STOP_BYTES: usize = 256;
/// `max_tokens` when the client sends none: the tenant's limit, capped by this.
pub const DEFAULT_MAX_TOKENS: u32 = 256;
/// Most alternatives per position: `top_logprobs` (chat, gRPC).
pub const MAX_TOP_LOGPROBS: i64 = 20;
/// Most alternatives per position: `logprobs` of the legacy completions API.
pub const MAX_LEGACY_LOGPROBS: i64 = 5;

/// Log-probabilities as the client asked for them, in its API's terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RawLogprobs {
    #[default]
    Off,
    /// Chat completions and gRPC: the `logprobs` flag plus `top_logprobs`
    /// (0..=20, only with `logprobs: true`).
    Chat {
        logprobs: Option<bool>,
        top_logprobs: Option<i64>,
    },
    /// Legacy completions: `logprobs: <int>` (0..=5) alternatives.
    Legacy(Option<i64>),
}

#[derive(Clone, Debug)]
pub enum Input {
    Prompt(String),
    Chat(Vec<ChatMessage>),
}

impl Input {
    /// The bytes the audit hash is computed over.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        match self {
            Input::Prompt(p) => p.as_bytes().to_vec(),
            Input::Chat(ms) => {
                let v: Vec<_> = ms
                    .iter()
                    .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
                    .collect();
                serde_json::to_vec(&v).unwrap_or_default()
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// What a client asked for, before any checks. Numbers are wide so that
/// out-of-range values are reported, not silently wrapped.
#[derive(Clone, Debug)]
pub struct RawRequest {
    pub model: String,
    pub input: Input,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub logprobs: RawLogprobs,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    /// Token id -> bias.
    pub logit_bias: Vec<(u32, f64)>,
    /// The caller's end-user id.
    pub user: Option<String>,
}

/// A request that passed authentication and every check.
#[derive(Clone, Debug)]
pub struct ValidRequest {
    pub request_id: String,
    pub received: Instant,
    pub tenant: Arc<Tenant>,
    pub key_prefix: String,
    /// The key's own token budgets (the tenant's are in `tenant`).
    pub key_budgets: crate::usage::Budgets,
    pub model: String,
    pub input: Input,
    pub max_tokens: u32,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// `Some(k)`: return each token's log-probability and its top `k`
    /// alternatives (`k <= MAX_TOP_LOGPROBS`).
    pub logprobs: Option<u32>,
    pub protocol: Protocol,
    pub source_addr: String,
    /// The caller's end-user id (at most [`MAX_USER_BYTES`]; audited as a
    /// keyed hash only).
    pub user: Option<String>,
}

/// Longest end-user id accepted (`user`, `safety_identifier`).
pub const MAX_USER_BYTES: usize = 256;

/// Everything known about a request before validation, so that a refused
/// request can still be audited.
#[derive(Clone, Debug)]
pub struct RequestMeta {
    pub request_id: String,
    pub received: Instant,
    pub protocol: Protocol,
    pub source_addr: String,
}

impl RequestMeta {
    pub fn new(protocol: Protocol, source_addr: String) -> Self {
        Self {
            request_id: uuid::Uuid::new_v4().simple().to_string(),
            received: Instant::now(),
            protocol,
            source_addr,
        }
    }
}

pub fn validate(
    auth: &AuthContext,
    meta: &RequestMeta,
    raw: RawRequest,
) -> Result<ValidRequest, ApiError> {
    let tenant = &auth.tenant;
    if raw.model.is_empty() {
        return Err(ApiError::invalid_param("model", "`model` is required"));
    }
    if !tenant.allowed_models.contains(&raw.model) {
        return Err(ApiError::PermissionDenied(format!(
            "model {:?} is not enabled for this tenant",
            truncate(&raw.model, 64)
        )));
    }
    let limit = tenant.max_tokens_per_request.max(1);
    let max_tokens = match raw.max_tokens {
        None => limit.min(DEFAULT_MAX_TOKENS),
        Some(n) if n < 1 => {
            return Err(ApiError::invalid_param(
                "max_tokens",
                format!("max_tokens must be at least 1, got {n}"),
            ));
        }
        Some(n) if n > i64::from(limit) => {
            return Err(ApiError::invalid_param(
                "max_tokens",
                format!("max_tokens {n} exceeds this tenant's limit of {limit}"),
            ));
        }
        Some(n) => n as u32,
    };
    let sampling = sampling(&raw)?;
    let logprobs = logprobs(raw.logprobs)?;
    check_input(&raw.input)?;
    if raw.stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid_param(
            "stop",
            format!(
                "at most {MAX_STOP_STRINGS} stop strings are allowed, got {}",
                raw.stop.len()
            ),
        ));
    }
    if let Some(s) = raw
        .stop
        .iter()
        .find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(ApiError::invalid_param(
            "stop",
            format!(
                "each stop string must be 1 to {MAX_STOP_BYTES} bytes, got {} bytes",
                s.len()
            ),
        ));
    }
    if let Some(u) = &raw.user
        && u.len() > MAX_USER_BYTES
    {
        return Err(ApiError::invalid_param(
            "user",
            format!(
                "user must be at most {MAX_USER_BYTES} bytes, got {}",
                u.len()
            ),
        ));
    }
    Ok(ValidRequest {
        request_id: meta.request_id.clone(),
        received: meta.received,
        tenant: tenant.clone(),
        key_prefix: auth.key_prefix.clone(),
        key_budgets: auth.key_budgets,
        model: raw.model,
        input: raw.input,
        max_tokens,
        sampling,
        stop: raw.stop,
        logprobs,
        protocol: meta.protocol,
        source_addr: meta.source_addr.clone(),
        user: raw.user.filter(|u| !u.is_empty()),
    })
}

fn sampling(raw: &RawRequest) -> Result<SamplingParams, ApiError> {
    let temperature = raw.temperature.unwrap_or(1.0);
    if !temperature.is_finite() || !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid_param(
            "temperature",
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = raw.top_p.unwrap_or(1.0);
    if !top_p.is_finite() || top_p <= 0.0 || top_p > 1.0 {
        return Err(ApiError::invalid_param(
            "top_p",
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    let top_k = raw.top_k.unwrap_or(0);
    if !(0..=100_000).contains(&top_k) {
        return Err(ApiError::invalid_param(
            "top_k",
            format!("top_k must be between 0 (off) and 100000, got {top_k}"),
        ));
    }
    let penalty = |name: &'static str, v: Option<f64>| match v.unwrap_or(0.0) {
        v if v.is_finite() && (-2.0..=2.0).contains(&v) => Ok(v as f32),
        v => Err(ApiError::invalid_param(
            name,
            format!("{name} must be between -2 and 2, got {v}"),
        )),
    };
    let frequency_penalty = penalty("frequency_penalty", raw.frequency_penalty)?;
    let presence_penalty = penalty("presence_penalty", raw.presence_penalty)?;
    let repetition_penalty = match raw.repetition_penalty.unwrap_or(1.0) {
        v if v.is_finite() && v > 0.0 && v <= 10.0 => v as f32,
        v => {
            return Err(ApiError::invalid_param(
                "repetition_penalty",
                format!("repetition_penalty must be greater than 0 and at most 10, got {v}"),
            ));
        }
    };
    if raw.logit_bias.len() > MAX_LOGIT_BIAS {
        return Err(ApiError::invalid_param(
            "logit_bias",
            format!(
                "logit_bias may name at most {MAX_LOGIT_BIAS} tokens, got {}",
                raw.logit_bias.len()
            ),
        ));
    }
    let mut logit_bias = std::collections::HashMap::new();
    for &(id, b) in &raw.logit_bias {
        if !b.is_finite() || !(-100.0..=100.0).contains(&b) {
            return Err(ApiError::invalid_param(
                "logit_bias",
                format!("the bias of token {id} must be between -100 and 100, got {b}"),
            ));
        }
        logit_bias.insert(id, b as f32);
    }
    Ok(SamplingParams {
        temperature: temperature as f32,
        top_p: top_p as f32,
        top_k: top_k as u32,
        seed: raw.seed,
        frequency_penalty,
        presence_penalty,
        repetition_penalty,
        logit_bias,
    })
}

/// Most `logit_bias` entries per request (OpenAI's limit; the worker
/// checks the ids against its vocabulary).
pub const MAX_LOGIT_BIAS: usize = 300;

fn logprobs(raw: RawLogprobs) -> Result<Option<u32>, ApiError> {
    match raw {
        RawLogprobs::Off | RawLogprobs::Legacy(None) => Ok(None),
        RawLogprobs::Chat {
            logprobs,
            top_logprobs,
        } => {
            let on = logprobs.unwrap_or(false);
            match top_logprobs {
                Some(k) if !(0..=MAX_TOP_LOGPROBS).contains(&k) => Err(ApiError::invalid_param(
                    "top_logprobs",
                    format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
                )),
                Some(_) if !on => Err(ApiError::invalid_param(
                    "top_logprobs",
                    "top_logprobs requires logprobs to be true",
                )),
                k => Ok(on.then_some(k.unwrap_or(0) as u32)),
            }
        }
        RawLogprobs::Legacy(Some(n)) if !(0..=MAX_LEGACY_LOGPROBS).contains(&n) => {
            Err(ApiError::invalid_param(
                "logprobs",
                format!("logprobs must be between 0 and {MAX_LEGACY_LOGPROBS}, got {n}"),
            ))
        }
        RawLogprobs::Legacy(Some(n)) => Ok(Some(n as u32)),
    }
}

fn check_input(input: &Input) -> Result<(), ApiError> {
    match input {
        Input::Prompt(p) => {
            if p.is_empty() {
                return Err(ApiError::invalid_param("prompt", "`prompt` is empty"));
            }
            if p.len() > MAX_PROMPT_BYTES {
                return Err(ApiError::PayloadTooLarge(format!(
                    "prompt of {} bytes exceeds the limit of {MAX_PROMPT_BYTES}",
                    p.len()
                )));
            }
        }
        Input::Chat(ms) => {
            if ms.is_empty() {
                return Err(ApiError::invalid_param("messages", "`messages` is empty"));
            }
            if ms.len() > MAX_MESSAGES {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!("at most {MAX_MESSAGES} messages are allowed"),
                ));
            }
            if let Some(m) = ms
                .iter()
                .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool"))
            {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!(
                        "unknown role {:?}: expected system, user, assistant or tool",
                        truncate(&m.role, 32)
                    ),
                ));
            }
            let total: usize = ms.iter().map(|m| m.content.len()).sum();
            if total > MAX_PROMPT_BYTES {
                return Err(ApiError::PayloadTooLarge(format!(
                    "messages of {total} bytes exceed the limit of {MAX_PROMPT_BYTES}"
                )));
            }
        }
    }
    Ok(())
}

/// A client-supplied string, shortened for an error message.
pub fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests;
