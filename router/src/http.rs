//! The OpenAI-compatible HTTP API: `POST /v1/chat/completions`,
//! `POST /v1/completions`, `GET /v1/models`, `GET /healthz`.
use std::collections::VecDeque;
use std::convert::Infallible;
use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::directory::{AuthContext, Directory};
use crate::error::ApiError;
use crate::openai::{self, Envelope, Kind};
use crate::pipeline::{Event, Pipeline};
use crate::validate::{Protocol, RawLogprobs, RawRequest, RequestMeta, validate};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How long a client has to send a request body once its key is accepted.
pub const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone)]
pub struct AppState {
    pub directory: Arc<Directory>,
    pub pipeline: Arc<Pipeline>,
    /// See [`DEFAULT_BODY_TIMEOUT`].
    pub body_timeout: std::time::Duration,
    /// Peers whose `X-Forwarded-For` is believed (`crate::forwarded`).
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
}

pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completion))
        .route("/v1/models", get(models))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(serde_json::json!({"error": {
                    "message": "method not allowed on this endpoint",
                    "type": "invalid_request_error", "param": null, "code": "method_not_allowed"}})),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn authenticate(dir: &Directory, headers: &HeaderMap) -> Result<AuthContext, ApiError> {
    let value = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::Unauthenticated("malformed Authorization header".into()))?,
        ),
    };
    dir.authenticate(value)
}

// The body is taken unread: it is read only once the key is accepted
// (`read_body`), so an unauthenticated caller cannot make the router read
// (or wait for) a megabyte.
async fn chat(
    state: State<AppState>,
    addr: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    generate(state, addr, headers, body, Kind::Chat).await
}

async fn completion(
    state: State<AppState>,
    addr: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    generate(state, addr, headers, body, Kind::Completion).await
}

/// Reads a body of at most [`MAX_BODY_BYTES`] within `timeout`.
async fn read_body(body: Body, timeout: std::time::Duration) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "the request body exceeds the limit of {MAX_BODY_BYTES} bytes"
        ))
    };
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "the request body did not arrive within {} s",
            timeout.as_secs_f64()
        ))),
        Ok(Err(e))
            if e.source()
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) =>
        {
            Err(too_large())
        }
        Ok(Err(e)) => Err(ApiError::invalid(format!("cannot read the body: {e}"))),
        Ok(Ok(b)) => Ok(b),
    }
}

/// Parses a body into the request and its streaming options (`pub` for the
/// `http_body` fuzz target and its corpus test).
pub fn parse(kind: Kind, body: &[u8]) -> Result<(RawRequest, bool, bool), ApiError> {
    let value: serde_json::Value = openai::parse(body)?;
    let Some(fields) = value.as_object() else {
        return Err(ApiError::invalid("the request body must be a JSON object"));
    };
    openai::fields::check(kind, fields)?;
    let (common, input, logprobs) = match kind {
        Kind::Chat => {
            let b = openai::ChatBody::from_value(value)?;
            let lp = b.raw_logprobs();
            (b.common, openai::chat_input(b.messages)?, lp)
        }
        Kind::Completion => {
            let b = openai::CompletionBody::from_value(value)?;
            let lp = RawLogprobs::Legacy(b.logprobs);
            (b.common, openai::completion_input(b.prompt)?, lp)
        }
    };
    let (stream, usage) = (common.stream, common.include_usage());
    Ok((common.into_raw(input, logprobs)?, stream, usage))
}

async fn generate(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
    kind: Kind,
) -> Response {
    let xff: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let source = crate::forwarded::client_addr(Some(addr), &xff, &s.trusted_proxies);
    let meta = RequestMeta::new(Protocol::Http, source);
    let span = tracing::info_span!("request", request.id = %meta.request_id,
        tenant.id = tracing::field::Empty, protocol = "http");
    bulkhead_telemetry::propagation::adopt_http(&span, &headers);
    traced(s, meta, headers, body, kind).instrument(span).await
}

/// The request, inside its `request` span.
async fn traced(
    s: AppState,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Body,
    kind: Kind,
) -> Response {
    let auth = match tracing::info_span!("authenticate")
        .in_scope(|| authenticate(&s.directory, &headers))
    {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(request_id = %meta.request_id, source = %meta.source_addr, error = %e, "request refused");
            return e.into_response();
        }
    };
    tracing::Span::current().record("tenant.id", auth.tenant.id.as_str());
    let refuse = |model: &str, e: ApiError| {
        tracing::info!(request_id = %meta.request_id, tenant = %auth.tenant.id, error = %e, "request refused");
        s.pipeline.refused(&auth, &meta, model, &e);
        with_request_id(e.into_response(), &meta.request_id)
    };
    let body = match read_body(body, s.body_timeout).await {
        Ok(b) => b,
        Err(e) => return refuse("", e),
    };
    let (raw, stream, include_usage) = match parse(kind, &body) {
        Ok(p) => p,
        Err(e) => return refuse("", e),
    };
    let model = raw.model.clone();
    let req = match validate(&auth, &meta, raw) {
        Ok(r) => r,
        Err(e) => return refuse(&model, e),
    };
    let env = Envelope {
        kind,
        id: match kind {
            Kind::Chat => format!("chatcmpl-{}", req.request_id),
            Kind::Completion => format!("cmpl-{}", req.request_id),
        },
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        model: req.model.clone(),
        logprobs: openai::LogprobsOut::new(req.logprobs.is_some()),
    };
    let request_id = req.request_id.clone();
    tracing::info!(request_id = %request_id, tenant = %req.tenant.id, model = %req.model, max_tokens = req.max_tokens, stream, "request accepted");
    let resp = match s.pipeline.start(req).await {
        Err(e) => {
            tracing::warn!(request_id = %request_id, error = %e, "dispatch failed");
            e.into_response()
        }
        Ok((rate, rx)) => {
            let mut resp = if stream {
                sse(env, rx, include_usage).into_response()
            } else {
                collect(env, rx).await
            };
            crate::limits::insert_headers(resp.headers_mut(), &rate);
            resp
        }
    };
    with_request_id(resp, &request_id)
}

fn with_request_id(mut resp: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

async fn collect(mut env: Envelope, mut rx: mpsc::Receiver<Event>) -> Response {
    let (mut text, mut lps) = (String::new(), Vec::new());
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text {
                text: t, logprobs, ..
            } => {
                text.push_str(&t);
                lps.extend(logprobs);
            }
            Event::Done { finish, usage } => {
                return Json(env.full(&text, finish, usage, &lps)).into_response();
            }
            Event::Error(e) => return e.into_response(),
        }
    }
    ApiError::Internal("the generation ended unexpectedly".into()).into_response()
}

struct SseState {
    rx: mpsc::Receiver<Event>,
    env: Envelope,
    include_usage: bool,
    first: bool,
    pending: VecDeque<SseEvent>,
    done: bool,
}

fn json_event(v: &serde_json::Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

/// Server-sent events in OpenAI's shape, ending with `data: [DONE]`.
fn sse(
    env: Envelope,
    rx: mpsc::Receiver<Event>,
    include_usage: bool,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let st = SseState {
        rx,
        env,
        include_usage,
        first: true,
        pending: VecDeque::new(),
        done: false,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop_front() {
                return Some((Ok(ev), st));
            }
            if st.done {
                return None;
            }
            match st.rx.recv().await {
                Some(Event::Text { text, logprobs, .. })
                    if text.is_empty() && logprobs.is_empty() && !st.first =>
                {
                    // A token whose text is held back (partial UTF-8 or a
                    // possible stop string): nothing to show yet.
                }
                Some(Event::Text { text, logprobs, .. }) => {
                    let chunk = st.env.chunk(&text, None, st.first, &logprobs);
                    st.first = false;
                    st.pending.push_back(json_event(&chunk));
                }
                Some(Event::Done { finish, usage }) => {
                    let chunk = st.env.chunk("", Some(finish), st.first, &[]);
                    st.pending.push_back(json_event(&chunk));
                    if st.include_usage {
                        st.pending.push_back(json_event(&st.env.usage_chunk(usage)));
                    }
                    st.finish();
                }
                Some(Event::Error(e)) => {
                    st.pending.push_back(json_event(&e.body()));
                    st.finish();
                }
                None => {
                    let e = ApiError::Internal("the generation ended unexpectedly".into());
                    st.pending.push_back(json_event(&e.body()));
                    st.finish();
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

impl SseState {
    fn finish(&mut self) {
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.done = true;
    }
}

async fn models(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let auth = match authenticate(&s.directory, &headers) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let data: Vec<_> = auth
        .tenant
        .allowed_models
        .iter()
        .map(|m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "bulkhead"}))
        .collect();
    Json(serde_json::json!({"object": "list", "data": data})).into_response()
}
