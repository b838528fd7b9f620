//! The dispatch path: a [`ValidRequest`] passes the tenant's limits, waits
//! in the fair queue ([`Dispatcher`]) until a worker has a free slot, goes to
//! that worker over mTLS, tokens stream back as [`Event`]s (each charged to
//! the tenant's fair-queue counter as it arrives), and one audit event is
//! published when the request ends, however it ends. A request whose
//! tenant or key has used up a token budget is refused before it queues
//! (`usage_sync::Usage`), and what each served request used is counted
//! there when it ends.
use std::sync::Arc;
use std::time::Duration;

use bulkhead_proto::audit::AuditEvent;
use bulkhead_proto::common::FinishReason;
use bulkhead_proto::worker::worker_generate_response::Event as WorkerEvent;
use bulkhead_proto::worker::{CancelRequest, WorkerGenerateRequest, WorkerGenerateResponse};
use tokio::sync::mpsc;
use tonic::Streaming;
use tracing::Instrument;

use crate::audit::{AuditPublisher, ContentHasher};
use crate::cluster::ClusterView;
use crate::directory::AuthContext;
use crate::dispatch::{Dispatcher, Grant, Meter};
use crate::error::ApiError;
use crate::limits::{RateState, estimate_prompt_tokens};
use crate::metrics::RouterMetrics;
use crate::usage_sync::Usage as UsageBook;
use crate::validate::{Input, RequestMeta, ValidRequest};
use crate::workers::{WorkerHandle, WorkerLease, WorkerPool};

/// Events buffered between the worker stream and a slow client.
const EVENT_BUFFER: usize = 64;

#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cached_tokens: u32,
}

#[derive(Debug)]
pub enum Event {
    /// Text produced since the previous event.
    Text {
        text: String,
        token_ids: Vec<u32>,
        /// Log-probabilities of those tokens, when the request asked.
        logprobs: Vec<bulkhead_proto::common::TokenLogprob>,
    },
    /// The last event of a successful request.
    Done { finish: FinishReason, usage: Usage },
    /// The last event of a request that failed after it started.
    Error(ApiError),
}

pub struct Pipeline {
    workers: Arc<WorkerPool>,
    dispatcher: Dispatcher<WorkerLease>,
    audit: AuditPublisher,
    hasher: ContentHasher,
    metrics: Arc<RouterMetrics>,
    usage: Arc<UsageBook>,
}

/// What the audit event of a request needs to know about its outcome.
#[derive(Default)]
struct Outcome {
    worker: String,
    /// How the worker was chosen.
    decision: Option<crate::affinity::RoutingDecision>,
    usage: Usage,
    ttft: Option<Duration>,
    response: String,
    finish: Option<FinishReason>,
    error: Option<ApiError>,
    cancelled: bool,
    traceparent: String,
    last_token: Option<std::time::Instant>,
}

impl Pipeline {
    /// Needs a Tokio runtime: it starts the dispatcher task.
    pub fn new(
        workers: Arc<WorkerPool>,
        audit: AuditPublisher,
        hasher: ContentHasher,
        metrics: Arc<RouterMetrics>,
        cluster: Arc<ClusterView>,
        usage: Arc<UsageBook>,
    ) -> Self {
        let start = std::time::Instant::now();
        Self {
            dispatcher: Dispatcher::spawn_in_cluster(
                workers.clone(),
                Arc::new(move || start.elapsed()),
                cluster,
            ),
            workers,
            audit,
            hasher,
            metrics,
            usage,
        }
    }

    pub fn workers(&self) -> &WorkerPool {
        &self.workers
    }

    pub fn dispatcher(&self) -> &Dispatcher<WorkerLease> {
        &self.dispatcher
    }

    /// Audits a request from a known tenant that was refused before dispatch.
    pub fn refused(&self, auth: &AuthContext, meta: &RequestMeta, model: &str, err: &ApiError) {
        let mut ev = base_event(meta, &auth.tenant, &auth.key_prefix, model);
        ev.status = "refused".into();
        ev.error_code = err.code_name();
        ev.traceparent = bulkhead_telemetry::propagation::current_traceparent();
        self.metrics.request(&auth.tenant.id, &ev.error_code);
        self.audit.publish_detached(ev);
    }

    /// Dispatches the request. Returns once the worker has accepted it (so an
    /// error here can still become a plain HTTP/gRPC error), with the number
    /// of prompt tokens and a stream of events.
    pub async fn start(
        self: &Arc<Self>,
        req: ValidRequest,
    ) -> Result<(RateState, mpsc::Receiver<Event>), ApiError> {
        if !self.audit.available() {
            tracing::error!(request_id = %req.request_id, tenant = %req.tenant.id,
                "refusing a request: the audit trail (NATS) is unreachable");
            self.metrics.request(&req.tenant.id, "Unavailable");
            let why = if self.audit.spools() {
                "the audit trail is unreachable and the local audit spool is full; this router serves nothing it cannot audit (audit mode: spool)"
            } else {
                "the audit trail is unreachable; this router serves nothing it cannot audit (audit mode: reject)"
            };
            return Err(ApiError::Unavailable(why.into()));
        }
        let mut outcome = Outcome {
            traceparent: bulkhead_telemetry::propagation::current_traceparent(),
            ..Outcome::default()
        };
        let started = match self
            .usage
            .check(&req.tenant, &req.key_prefix, req.key_budgets)
        {
            Err(e) => {
                let now = bulkhead_directory::now_ms();
                Err(ApiError::BudgetExhausted {
                    message: e.to_string(),
                    retry_after: Duration::from_millis((e.resets_unix_ms - now).max(0) as u64),
                })
            }
            Ok(()) => self.dispatch(&req, &mut outcome).await,
        };
        let (worker, mut grant, stream, usage) = match started {
            Ok(s) => s,
            Err(e) => {
                outcome.error = Some(e.clone());
                self.audit.publish_detached(self.event(&req, outcome));
                return Err(e);
            }
        };
        outcome.usage = usage;
        let rate = grant.rate;
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let this = self.clone();
        let relay =
            tracing::info_span!("relay", tenant.id = %req.tenant.id, request.id = %req.request_id);
        tokio::spawn(
            async move {
                this.forward(&req, &worker, stream, tx, &mut grant.meter, &mut outcome)
                    .await;
                // Ends the request in the dispatcher: frees the slot, refunds.
                drop(grant);
                this.audit.publish_detached(this.event(&req, outcome));
            }
            .instrument(relay),
        );
        Ok((rate, rx))
    }

    /// Dispatches, retrying once on another worker when the chosen one
    /// fails before anything was streamed (it is taken out of rotation, so
    /// the dispatcher picks another). The retry passes the tenant's limits
    /// again, so a tenant right at its rate limit may see a 429 instead.
    async fn dispatch(
        &self,
        req: &ValidRequest,
        outcome: &mut Outcome,
    ) -> Result<
        (
            Arc<WorkerHandle>,
            Grant<WorkerLease>,
            Streaming<WorkerGenerateResponse>,
            Usage,
        ),
        ApiError,
    > {
        match self.dispatch_once(req, outcome).await {
            Err((e, true)) => {
                tracing::warn!(request_id = %req.request_id, worker = %outcome.worker, error = %e,
                    "worker failed before streaming; retrying on another worker");
                self.dispatch_once(req, outcome).await.map_err(|(e, _)| e)
            }
            r => r.map_err(|(e, _)| e),
        }
    }

    /// One attempt. The error says whether a retry elsewhere is safe (the
    /// worker was unreachable and nothing reached the client).
    async fn dispatch_once(
        &self,
        req: &ValidRequest,
        outcome: &mut Outcome,
    ) -> Result<
        (
            Arc<WorkerHandle>,
            Grant<WorkerLease>,
            Streaming<WorkerGenerateResponse>,
            Usage,
        ),
        (ApiError, bool),
    > {
        let prompt_bytes = match &req.input {
            Input::Prompt(p) => p.len(),
            Input::Chat(ms) => ms.iter().map(|m| m.content.len()).sum(),
        };
        let reserve = estimate_prompt_tokens(prompt_bytes) + u64::from(req.max_tokens);
        let tenant = req.tenant.id.as_str();
        let waited = std::time::Instant::now();
        self.metrics.queued(tenant, 1);
        // A tenant without prefix cache gets no affinity either: its
        // prompts' prefix hashes are not kept in the affinity table.
        let prefix: Arc<[u64]> = if req.tenant.no_prefix_cache {
            Arc::from([])
        } else {
            self.workers.prefix_keys(tenant, &req.input).into()
        };
        let granted = self
            .dispatcher
            .acquire_routed(req.tenant.clone(), req.model.clone(), reserve, prefix)
            .await;
        self.metrics.queued(tenant, -1);
        let mut grant = match granted {
            Ok(g) => g,
            Err(e) => {
                if matches!(e, ApiError::RateLimited { .. }) {
                    self.metrics.limited(tenant);
                }
                return Err((e, false));
            }
        };
        self.metrics.queue_wait(tenant, waited.elapsed());
        let dispatch = tracing::info_span!("dispatch", tenant.id = %tenant,
            request.id = %req.request_id, model = %req.model, worker = tracing::field::Empty);
        let worker = grant.lease.worker.clone();
        outcome.worker = worker.name();
        outcome.decision = Some(grant.lease.decision);
        let (prompt, messages) = match &req.input {
            Input::Prompt(p) => (p.clone(), vec![]),
            Input::Chat(ms) => (String::new(), ms.clone()),
        };
        let wreq = WorkerGenerateRequest {
            request_id: req.request_id.clone(),
            tenant_id: req.tenant.id.clone(),
            tenant_uid: req.tenant.uid.clone(),
            tenant_weight: req.tenant.weight,
            no_prefix_cache: req.tenant.no_prefix_cache,
            prefix_cache_ttl_s: req.tenant.prefix_cache_ttl_s,
            model: req.model.clone(),
            prompt,
            messages,
            max_tokens: req.max_tokens,
            sampling: Some(req.sampling.clone()),
            stop: req.stop.clone(),
            logprobs: req.logprobs.is_some(),
            top_logprobs: req.logprobs.unwrap_or(0),
        };
        dispatch.record("worker", outcome.worker.as_str());
        let mut call = tonic::Request::new(wreq);
        dispatch.in_scope(|| bulkhead_telemetry::propagation::inject_grpc(call.metadata_mut()));
        let mut stream = match worker
            .client()
            .generate(call)
            .instrument(dispatch.clone())
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let unreachable = matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown
                );
                if unreachable {
                    worker.mark_unhealthy();
                }
                return Err((ApiError::from_worker(&outcome.worker, &status), unreachable));
            }
        };
        match stream.message().await {
            Ok(Some(WorkerGenerateResponse {
                event: Some(WorkerEvent::Started(s)),
            })) => {
                let usage = Usage {
                    prompt_tokens: s.prompt_tokens,
                    completion_tokens: 0,
                    cached_tokens: s.cached_tokens,
                };
                grant.meter.started(s.prompt_tokens);
                Ok((worker, grant, stream, usage))
            }
            Ok(_) => Err((
                ApiError::Internal(format!(
                    "worker {} did not start the stream properly",
                    outcome.worker
                )),
                false,
            )),
            Err(status) => {
                // The worker died after accepting: nothing was streamed yet.
                let unreachable = status.code() == tonic::Code::Unavailable;
                if unreachable {
                    worker.mark_unhealthy();
                }
                Err((ApiError::from_worker(&outcome.worker, &status), unreachable))
            }
        }
    }

    async fn forward(
        &self,
        req: &ValidRequest,
        worker: &WorkerHandle,
        mut stream: Streaming<WorkerGenerateResponse>,
        tx: mpsc::Sender<Event>,
        meter: &mut Meter,
        outcome: &mut Outcome,
    ) {
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m.event,
                Ok(None) => {
                    let e = ApiError::Internal(format!(
                        "worker {} ended the stream without finishing",
                        outcome.worker
                    ));
                    outcome.error = Some(e.clone());
                    let _ = tx.send(Event::Error(e)).await;
                    return;
                }
                Err(status) => {
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown
                    ) {
                        worker.mark_unhealthy();
                    }
                    let e = ApiError::from_worker(&outcome.worker, &status);
                    outcome.error = Some(e.clone());
                    let _ = tx.send(Event::Error(e)).await;
                    return;
                }
            };
            if outcome.last_token.is_none()
                && matches!(msg, Some(WorkerEvent::Token(_)))
                && req.tenant.ttft_quantum_ms > 0
            {
                release_at_quantum(req.received, req.tenant.ttft_quantum_ms).await;
            }
            let event = match msg {
                Some(WorkerEvent::Token(t)) => {
                    let now = std::time::Instant::now();
                    match outcome.last_token.replace(now) {
                        Some(prev) => self.metrics.inter_token(&req.tenant.id, now - prev),
                        None => self.metrics.ttft(&req.tenant.id, req.received.elapsed()),
                    }
                    outcome.ttft.get_or_insert_with(|| req.received.elapsed());
                    outcome.usage.completion_tokens += 1;
                    meter.output(1);
                    outcome.response.push_str(&t.text);
                    Event::Text {
                        text: t.text,
                        token_ids: vec![t.id],
                        logprobs: t.logprobs.into_iter().collect(),
                    }
                }
                Some(WorkerEvent::Finished(f)) => {
                    outcome.usage.prompt_tokens = f.prompt_tokens;
                    outcome.usage.completion_tokens = f.completion_tokens;
                    meter.finished(f.prompt_tokens, f.completion_tokens);
                    let reason =
                        FinishReason::try_from(f.reason).unwrap_or(FinishReason::Unspecified);
                    outcome.finish = Some(reason);
                    let ev = if reason == FinishReason::Error {
                        let e = ApiError::Internal(format!(
                            "worker {} failed the request: {}",
                            outcome.worker, f.error
                        ));
                        outcome.error = Some(e.clone());
                        Event::Error(e)
                    } else {
                        Event::Done {
                            finish: reason,
                            usage: outcome.usage,
                        }
                    };
                    let _ = tx.send(ev).await;
                    return;
                }
                Some(WorkerEvent::Started(_)) | None => continue,
            };
            if tx.send(event).await.is_err() {
                // The client went away: free the worker's blocks now.
                outcome.cancelled = true;
                drop(stream);
                let cancel = CancelRequest {
                    request_id: req.request_id.clone(),
                };
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), worker.client().cancel(cancel))
                        .await;
                return;
            }
        }
    }

    fn event(&self, req: &ValidRequest, o: Outcome) -> AuditEvent {
        let meta = RequestMeta {
            request_id: req.request_id.clone(),
            received: req.received,
            protocol: req.protocol,
            source_addr: req.source_addr.clone(),
        };
        let tenant = &req.tenant.id;
        let mut ev = base_event(&meta, &req.tenant, &req.key_prefix, &req.model);
        // Keyed per incarnation: a re-created tenant's hashes are not
        // comparable with the old tenant's.
        let key = bulkhead_proto::names::tenant_key(tenant, &req.tenant.uid);
        ev.prompt_hash = self.hasher.hash(&key, &req.input.canonical_bytes());
        ev.response_hash = self.hasher.hash(&key, o.response.as_bytes());
        // The end-user id, never in clear: a hash apart from content's.
        if let Some(u) = &req.user {
            ev.user_hash = self.hasher.hash(&key, format!("user:{u}").as_bytes());
        }
        // What a worker served counts toward usage and budgets.
        if !o.worker.is_empty() {
            self.usage.record(
                tenant,
                &req.key_prefix,
                crate::usage::Counts {
                    requests: 1,
                    prompt_tokens: o.usage.prompt_tokens.into(),
                    cached_tokens: o.usage.cached_tokens.into(),
                    completion_tokens: o.usage.completion_tokens.into(),
                },
            );
        }
        ev.prompt_tokens = o.usage.prompt_tokens;
        ev.completion_tokens = o.usage.completion_tokens;
        ev.cached_tokens = o.usage.cached_tokens;
        ev.ttft_us = o.ttft.map(|d| d.as_micros() as u64).unwrap_or(0);
        ev.worker_id = o.worker;
        ev.routing_decision = o.decision.map_or("", |d| d.as_str()).into();
        ev.finish_reason = o
            .finish
            .map(|f| f.as_str_name().to_string())
            .unwrap_or_default();
        (ev.status, ev.error_code) = match (&o.error, o.cancelled) {
            (Some(e), _) => ("error".into(), e.code_name()),
            (None, true) => ("cancelled".into(), "Cancelled".into()),
            (None, false) => ("ok".into(), String::new()),
        };
        ev.traceparent = o.traceparent;
        let status = if ev.error_code.is_empty() {
            "ok"
        } else {
            ev.error_code.as_str()
        };
        self.metrics.request(tenant, status);
        self.metrics
            .tokens(tenant, ev.prompt_tokens, ev.completion_tokens);
        ev
    }
}

fn base_event(
    meta: &RequestMeta,
    tenant: &bulkhead_proto::control::Tenant,
    key_prefix: &str,
    model: &str,
) -> AuditEvent {
    let latency = meta.received.elapsed();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    AuditEvent {
        request_id: meta.request_id.clone(),
        tenant_id: tenant.id.clone(),
        tenant_uid: tenant.uid.clone(),
        model: crate::validate::truncate(model, 128),
        timestamp_unix_ms: now_ms - latency.as_millis() as i64,
        latency_us: latency.as_micros() as u64,
        source_addr: meta.source_addr.clone(),
        api_key_prefix: key_prefix.to_string(),
        protocol: meta.protocol.as_str().to_string(),
        ..Default::default()
    }
}

/// Waits until the next multiple of `quantum_ms` since `received` (the
/// tenant's TTFT quantum): the first token then leaves at a time that says
/// nothing finer than the quantum about how long prefill took, e.g. whether
/// a prefix was cached.
pub async fn release_at_quantum(received: std::time::Instant, quantum_ms: u32) {
    let q = u128::from(quantum_ms.max(1)) * 1000;
    let elapsed = received.elapsed().as_micros();
    let target = elapsed.div_ceil(q).max(1) * q;
    tokio::time::sleep_until((received + Duration::from_micros(target as u64)).into()).await;
}
