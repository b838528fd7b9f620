//! The gRPC `Worker` service: validation, tokenization, and streaming of the
//! engine's events. Never logs prompt or completion text.
use std::pin::Pin;
use std::sync::Arc;

use bulkhead_proto::common::{
    FinishReason as PbFinish, TokenLogprob as PbTokenLogprob, TopLogprob,
};
use bulkhead_proto::worker::{
    CancelRequest, CancelResponse, CapacityRequest, CapacityResponse, Finished, ModelInfoRequest,
    ModelInfoResponse, Started, Token, WorkerGenerateRequest, WorkerGenerateResponse,
    worker_generate_response::Event, worker_server::Worker,
};
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::LoadedModel;
use crate::engine::{EngineEvent, EngineHandle, FinishReason, GenerateRequest};
use crate::logprobs::{MAX_TOP_LOGPROBS, TokenLogprobs};
use crate::sampling::SamplingParams;
use crate::tokenizer::ChatMessage;

/// Largest request message accepted.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
const MAX_STOP_STRINGS: usize = 16;
const MAX_STOP_LEN: usize = 256;
const MAX_ID_LEN: usize = 256;

/// The Worker service.
pub struct WorkerService {
    pub engine: Arc<EngineHandle>,
    pub model: Arc<LoadedModel>,
    pub model_name: String,
    pub worker_id: String,
    pub block_size: u32,
    /// The device the model runs on (`cpu`), as reported by ModelInfo.
    pub device: String,
    /// The pool this worker belongs to and the tenants it admits.
    pub placement: Arc<Placement>,
}

/// A worker's pool (DESIGN.md isolation tiers). A `shared` worker serves
/// whatever the routers send it (they send only shared-tier tenants); any
/// other tier serves only the listed tenants, and refuses others itself too.
#[derive(Clone, Debug)]
pub struct Placement {
    pub pool: String,
    /// `bulkhead.common.v1.Isolation`.
    pub isolation: i32,
    pub admitted: Vec<String>,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            pool: "shared".into(),
            isolation: bulkhead_proto::common::Isolation::Shared as i32,
            admitted: vec![],
        }
    }
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

fn token_logprob_pb(l: TokenLogprobs) -> PbTokenLogprob {
    PbTokenLogprob {
        id: l.chosen.id,
        text: l.chosen.text,
        bytes: l.chosen.bytes,
        logprob: l.chosen.logprob,
        top_logprobs: l
            .top
            .into_iter()
            .map(|a| TopLogprob {
                id: a.id,
                text: a.text,
                bytes: a.bytes,
                logprob: a.logprob,
            })
            .collect(),
    }
}

fn to_pb(ev: EngineEvent) -> WorkerGenerateResponse {
    let event = match ev {
        EngineEvent::Started {
            prompt_tokens,
            cached_tokens,
        } => Event::Started(Started {
            prompt_tokens,
            cached_tokens,
        }),
        EngineEvent::Token { id, text, logprobs } => Event::Token(Token {
            id,
            text,
            logprobs: logprobs.map(|l| token_logprob_pb(*l)),
        }),
        EngineEvent::Finished {
            reason,
            prompt_tokens,
            completion_tokens,
            error,
        } => Event::Finished(Finished {
            reason: match reason {
                FinishReason::Length => PbFinish::Length,
                FinishReason::Stop => PbFinish::Stop,
                FinishReason::Cancelled => PbFinish::Cancelled,
                FinishReason::Error => PbFinish::Error,
            } as i32,
            prompt_tokens,
            completion_tokens,
            error: error.unwrap_or_default(),
        }),
    };
    WorkerGenerateResponse { event: Some(event) }
}

impl WorkerService {
    /// Checks a request and turns it into an engine request (minus the channel).
    pub fn prepare(
        &self,
        req: &WorkerGenerateRequest,
    ) -> Result<(Vec<u32>, SamplingParams), Status> {
        if !bulkhead_proto::names::valid_tenant_id(&req.tenant_id) {
            return Err(invalid(
                "tenant_id must be 1-64 characters of [a-z0-9-_] starting with a letter or digit",
            ));
        }
        if req.tenant_uid.len() > 64
            || !req
                .tenant_uid
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b'-')
        {
            return Err(invalid(
                "tenant_uid must be at most 64 characters of hex digits and '-'",
            ));
        }
        let p = &self.placement;
        if p.isolation != bulkhead_proto::common::Isolation::Shared as i32
            && !p.admitted.contains(&req.tenant_id)
        {
            return Err(Status::permission_denied(format!(
                "this worker's pool {:?} does not admit this tenant",
                p.pool
            )));
        }
        if req.request_id.len() > MAX_ID_LEN {
            return Err(invalid(format!(
                "request_id is longer than {MAX_ID_LEN} bytes"
            )));
        }
        if req.model != self.model_name {
            return Err(Status::not_found(format!(
                "model {:?} is not served by this worker (it serves {:?})",
                req.model, self.model_name
            )));
        }
        if req.max_tokens == 0 {
            return Err(invalid("max_tokens must be at least 1"));
        }
        let sp = req.sampling.clone().unwrap_or_default();
        let mut logit_bias: Vec<(u32, f32)> = sp.logit_bias.into_iter().collect();
        logit_bias.sort_unstable_by_key(|(id, _)| *id);
        if let Some((id, _)) = logit_bias
            .iter()
            .find(|(id, _)| *id as usize >= self.model.model.vocab_size())
        {
            return Err(invalid(format!(
                "logit_bias: token id {id} is outside the vocabulary of {} tokens",
                self.model.model.vocab_size()
            )));
        }
        let params = SamplingParams {
            temperature: sp.temperature,
            top_p: sp.top_p,
            top_k: sp.top_k,
            seed: sp.seed,
            frequency_penalty: sp.frequency_penalty,
            presence_penalty: sp.presence_penalty,
            repetition_penalty: if sp.repetition_penalty == 0.0 {
                1.0
            } else {
                sp.repetition_penalty
            },
            logit_bias,
        };
        params.validate().map_err(|e| invalid(e.to_string()))?;
        if req.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(invalid(format!(
                "top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {}",
                req.top_logprobs
            )));
        }
        if req.top_logprobs > 0 && !req.logprobs {
            return Err(invalid("top_logprobs needs logprobs to be set"));
        }
        if req.stop.len() > MAX_STOP_STRINGS {
            return Err(invalid(format!(
                "at most {MAX_STOP_STRINGS} stop strings are allowed"
            )));
        }
        if req
            .stop
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_STOP_LEN)
        {
            return Err(invalid(format!(
                "stop strings must be 1-{MAX_STOP_LEN} bytes long"
            )));
        }
        if req.messages.is_empty() && req.prompt.is_empty() {
            return Err(invalid("the prompt is empty (give a prompt or messages)"));
        }
        let tok = &self.model.tokenizer;
        let ids = if req.messages.is_empty() {
            tok.encode_prompt(&req.prompt)
        } else {
            let msgs: Vec<ChatMessage> = req
                .messages
                .iter()
                .map(|m| ChatMessage {
                    role: m.role.clone(),
                    content: m.content.clone(),
                })
                .collect();
            tok.encode_chat(&msgs)
        }
        .map_err(|e| invalid(e.to_string()))?;
        if ids.is_empty() {
            return Err(invalid("the prompt is empty after tokenization"));
        }
        let ctx = self.model.model.max_context();
        if ids.len() + req.max_tokens as usize > ctx {
            return Err(invalid(format!(
                "prompt of {} tokens plus max_tokens {} exceeds the model's context of {} tokens",
                ids.len(),
                req.max_tokens,
                ctx
            )));
        }
        let vocab = self.model.model.vocab_size();
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(invalid(format!(
                "prompt token {bad} is outside the model's vocabulary of {vocab}"
            )));
        }
        Ok((ids, params))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<WorkerGenerateResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Worker for WorkerService {
    type GenerateStream = EventStream;

    async fn generate(
        &self,
        request: Request<WorkerGenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let span = tracing::info_span!(
            "generate",
            tenant.id = %request.get_ref().tenant_id,
            request.id = %request.get_ref().request_id,
            model = %request.get_ref().model,
            prompt_tokens = tracing::field::Empty,
            completion_tokens = tracing::field::Empty,
        );
        bulkhead_telemetry::propagation::adopt_grpc(&span, request.metadata());
        let req = request.into_inner();
        // Tokenization is CPU work: keep it off the async workers.
        let (req, prepared) = {
            let this = WorkerService {
                engine: self.engine.clone(),
                model: self.model.clone(),
                model_name: self.model_name.clone(),
                worker_id: self.worker_id.clone(),
                block_size: self.block_size,
                device: self.device.clone(),
                placement: self.placement.clone(),
            };
            tokio::task::spawn_blocking(move || {
                let p = this.prepare(&req);
                (req, p)
            })
            .await
            .map_err(|_| Status::internal("request preparation failed"))?
        };
        let (prompt, params) = match prepared {
            Ok(p) => p,
            Err(s) => {
                tracing::info!(request_id = %req.request_id, tenant = %req.tenant_id,
                    code = ?s.code(), "rejected a generate request");
                return Err(s);
            }
        };
        let request_id = if req.request_id.is_empty() {
            format!("anon-{:016x}", rand::random::<u64>())
        } else {
            req.request_id.clone()
        };
        tracing::info!(request_id = %request_id, tenant = %req.tenant_id,
            prompt_tokens = prompt.len(), max_tokens = req.max_tokens, "generate");
        let prompt_len = prompt.len();
        let (tx, rx) = mpsc::channel(req.max_tokens as usize + 8);
        self.engine
            .submit(GenerateRequest {
                request_id,
                // KV blocks and the prefix-cache salt hang off the tenant's
                // incarnation, not just its id.
                tenant: Arc::from(bulkhead_proto::names::tenant_key(
                    &req.tenant_id,
                    &req.tenant_uid,
                )),
                prompt,
                params,
                stop: req.stop.clone(),
                max_tokens: req.max_tokens,
                logprobs: req.logprobs.then_some(req.top_logprobs),
                ignore_eos: false,
                no_prefix_cache: req.no_prefix_cache,
                prefix_cache_ttl: (req.prefix_cache_ttl_s > 0)
                    .then(|| std::time::Duration::from_secs(req.prefix_cache_ttl_s.into())),
                weight: req.tenant_weight,
                events: tx,
            })
            .map_err(|e| Status::unavailable(e.to_string()))?;
        span.record("prompt_tokens", prompt_len);
        let (tid, rid) = (req.tenant_id.clone(), req.request_id.clone());
        let phase = move |name: &'static str, parent: &tracing::Span| {
            tracing::info_span!(parent: parent, "phase", otel.name = name,
                tenant.id = %tid, request.id = %rid)
        };
        // Spans for the two phases: prefill until the first token, decode
        // until the end. The open one lives in `open`; replacing or clearing
        // it closes it.
        let mut open = vec![phase("prefill", &span)];
        let mut in_prefill = true;
        let mut generated = 0u32;
        let stream =
            futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), move |ev| {
                match &ev {
                    EngineEvent::Token { .. } => {
                        generated += 1;
                        if in_prefill {
                            in_prefill = false;
                            open.clear();
                            open.push(phase("decode", &span));
                        }
                    }
                    EngineEvent::Finished { .. } => {
                        open.clear();
                        span.record("completion_tokens", generated);
                    }
                    EngineEvent::Started { .. } => {}
                }
                Ok(to_pb(ev))
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        let id = request.into_inner().request_id;
        let found = !id.is_empty() && self.engine.cancel(&id).await;
        tracing::info!(request_id = %id, found, "cancel");
        Ok(Response::new(CancelResponse { found }))
    }

    async fn capacity(
        &self,
        _request: Request<CapacityRequest>,
    ) -> Result<Response<CapacityResponse>, Status> {
        let c = self.engine.capacity();
        Ok(Response::new(CapacityResponse {
            free_seq_slots: c.free_seq_slots,
            max_seqs: c.max_seqs,
            free_kv_blocks: c.free_kv_blocks,
            total_kv_blocks: c.total_kv_blocks,
            running: c.running,
            waiting: c.waiting,
        }))
    }

    async fn model_info(
        &self,
        _request: Request<ModelInfoRequest>,
    ) -> Result<Response<ModelInfoResponse>, Status> {
        // Routers poll this: a dead engine makes the worker unready.
        if !self.engine.is_alive() {
            return Err(Status::unavailable(
                "this worker's engine has stopped (it panicked); it serves nothing until restarted",
            ));
        }
        Ok(Response::new(ModelInfoResponse {
            model: self.model_name.clone(),
            max_context: self.model.model.max_context() as u32,
            vocab_size: self.model.model.vocab_size() as u32,
            kv_block_size: self.block_size,
            device: self.device.clone(),
            worker_id: self.worker_id.clone(),
            pool: self.placement.pool.clone(),
            isolation: self.placement.isolation,
            admitted_tenants: self.placement.admitted.clone(),
        }))
    }
}
