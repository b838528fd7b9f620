//! `http_body`: an OpenAI chat or completion JSON body → the router's
//! `http::parse` (serde + content flattening) → `validate::validate`, the
//! only constructor of `ValidRequest`, for a few tenant configurations.
//!
//! Invariants: nothing panics; a refusal is a 4xx whose message is bounded
//! (it is logged, so it must not echo a large part of the body); an accepted
//! request is within every documented limit.
use std::sync::{Arc, OnceLock};

use bulkhead_proto::common::Isolation;
use bulkhead_proto::control::Tenant;
use bulkhead_router::directory::AuthContext;
use bulkhead_router::error::ApiError;
use bulkhead_router::http::parse;
use bulkhead_router::openai::Kind;
use bulkhead_router::validate::{
    self, Input, MAX_MESSAGES, MAX_PROMPT_BYTES, MAX_STOP_BYTES, MAX_STOP_STRINGS,
    MAX_TOP_LOGPROBS, Protocol, RequestMeta,
};

/// Longest refusal message accepted (model names are echoed truncated to
/// 64 characters, escaped).
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

fn tenants() -> &'static [AuthContext] {
    static T: OnceLock<Vec<AuthContext>> = OnceLock::new();
    T.get_or_init(|| {
        let t = |id: &str, max_tokens: u32| AuthContext {
            tenant: Arc::new(Tenant {
                id: id.into(),
                weight: 1,
                allowed_models: vec!["tiny".into(), "m".into()],
                max_tokens_per_request: max_tokens,
                isolation: Isolation::Shared as i32,
                ..Default::default()
            }),
            key_prefix: "bh_test".into(),
            key_budgets: Default::default(),
        };
        // A tenant with no per-request limit set (0) and one with a large one.
        vec![t("acme", 0), t("globex", 4096)]
    })
}

fn check_refusal(e: &ApiError) {
    let status = e.http_status();
    assert!(
        status.is_client_error(),
        "parsing/validation produced {status}: {e}"
    );
    let msg = e.to_string();
    assert!(
        msg.len() <= MAX_ERROR_MESSAGE_BYTES,
        "refusal message of {} bytes (it is logged and must not echo the body): {:?}",
        msg.len(),
        msg.chars().take(200).collect::<String>()
    );
    // The edges render it: OpenAI JSON body and gRPC status.
    let body = e.body();
    assert!(body["error"]["message"].is_string());
    let _ = serde_json::to_vec(&body).expect("error body serializes");
    let _ = e.to_status();
}

pub fn run(data: &[u8]) {
    for kind in [Kind::Chat, Kind::Completion] {
        let (raw, _stream, _usage) = match parse(kind, data) {
            Ok(p) => p,
            Err(e) => {
                check_refusal(&e);
                continue;
            }
        };
        for auth in tenants() {
            let meta = RequestMeta::new(Protocol::Http, "127.0.0.1:1".into());
            let v = match validate::validate(auth, &meta, raw.clone()) {
                Ok(v) => v,
                Err(e) => {
                    check_refusal(&e);
                    continue;
                }
            };
            let limit = auth.tenant.max_tokens_per_request.max(1);
            assert!(
                (1..=limit).contains(&v.max_tokens),
                "max_tokens {}",
                v.max_tokens
            );
            assert!(auth.tenant.allowed_models.contains(&v.model));
            let s = &v.sampling;
            assert!(s.temperature.is_finite() && (0.0..=2.0).contains(&s.temperature));
            assert!(s.top_p.is_finite() && s.top_p > 0.0 && s.top_p <= 1.0);
            assert!(s.top_k <= 100_000);
            assert!(v.stop.len() <= MAX_STOP_STRINGS);
            assert!(
                v.stop
                    .iter()
                    .all(|s| !s.is_empty() && s.len() <= MAX_STOP_BYTES)
            );
            assert!(v.logprobs.is_none_or(|k| i64::from(k) <= MAX_TOP_LOGPROBS));
            match &v.input {
                Input::Prompt(p) => {
                    assert!(kind == Kind::Completion);
                    assert!(!p.is_empty() && p.len() <= MAX_PROMPT_BYTES);
                }
                Input::Chat(ms) => {
                    assert!(kind == Kind::Chat);
                    assert!(!ms.is_empty() && ms.len() <= MAX_MESSAGES);
                    assert!(ms.iter().map(|m| m.content.len()).sum::<usize>() <= MAX_PROMPT_BYTES);
                    assert!(ms.iter().all(|m| matches!(
                        m.role.as_str(),
                        "system" | "user" | "assistant" | "tool"
                    )));
                }
            }
            assert_eq!(v.tenant.id, auth.tenant.id);
            let _ = v.input.canonical_bytes();
        }
    }
}
