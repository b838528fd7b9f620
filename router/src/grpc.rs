//! The client gRPC API (`bulkhead.v1.Inference`). Callers authenticate with
//! `authorization: Bearer <key>` metadata; errors are gRPC statuses with the
//! same classification as the HTTP API.
use std::pin::Pin;

use bulkhead_proto::client::inference_server::Inference;
use bulkhead_proto::client::{
    GenerateRequest, GenerateResponse, ListModelsRequest, ListModelsResponse, Model,
    Usage as WireUsage,
};
use futures::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::ApiError;
use crate::http::AppState;
use crate::pipeline::Event;
use crate::validate::{Input, Protocol, RawLogprobs, RawRequest, RequestMeta, validate};

pub struct InferenceService {
    pub state: AppState,
}

type GenerateStream = Pin<Box<dyn Stream<Item = Result<GenerateResponse, Status>> + Send>>;

fn authenticate<T>(
    state: &AppState,
    req: &Request<T>,
) -> Result<crate::directory::AuthContext, ApiError> {
    let value =
        match req.metadata().get("authorization") {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                ApiError::Unauthenticated("malformed authorization metadata".into())
            })?),
        };
    state.directory.authenticate(value)
}

fn raw_request(r: GenerateRequest) -> Result<RawRequest, ApiError> {
    let input = match (r.prompt.is_empty(), r.messages.is_empty()) {
        (false, true) => Input::Prompt(r.prompt),
        (true, false) => Input::Chat(r.messages),
        (false, false) => {
            return Err(ApiError::invalid(
                "set either `prompt` or `messages`, not both",
            ));
        }
        (true, true) => return Err(ApiError::invalid("`prompt` or `messages` is required")),
    };
    Ok(RawRequest {
        model: r.model,
        input,
        max_tokens: (r.max_tokens != 0).then_some(i64::from(r.max_tokens)),
        temperature: r.temperature.map(f64::from),
        top_p: r.top_p.map(f64::from),
        top_k: r.top_k.map(i64::from),
        seed: r.seed,
        stop: r.stop,
        logprobs: RawLogprobs::Chat {
            logprobs: Some(r.logprobs),
            top_logprobs: r.top_logprobs.map(i64::from),
        },
        frequency_penalty: r.frequency_penalty.map(f64::from),
        presence_penalty: r.presence_penalty.map(f64::from),
        repetition_penalty: r.repetition_penalty.map(f64::from),
        logit_bias: r
            .logit_bias
            .into_iter()
            .map(|(k, v)| (k, f64::from(v)))
            .collect(),
        user: (!r.user.is_empty()).then_some(r.user),
    })
}

#[tonic::async_trait]
impl Inference for InferenceService {
    type GenerateStream = GenerateStream;

    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateStream>, Status> {
        let xff: Vec<&str> = request
            .metadata()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let source =
            crate::forwarded::client_addr(request.remote_addr(), &xff, &self.state.trusted_proxies);
        let meta = RequestMeta::new(Protocol::Grpc, source);
        let span = tracing::info_span!("request", request.id = %meta.request_id,
            tenant.id = tracing::field::Empty, protocol = "grpc");
        bulkhead_telemetry::propagation::adopt_grpc(&span, request.metadata());
        self.traced(meta, request).instrument(span).await
    }

    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let auth = authenticate(&self.state, &request).map_err(|e| e.to_status())?;
        let served = self.state.pipeline.workers().models();
        let models = auth
            .tenant
            .allowed_models
            .iter()
            .map(|m| Model {
                id: m.clone(),
                owned_by: "bulkhead".into(),
                max_context: served
                    .iter()
                    .find(|(s, _)| s == m)
                    .map(|(_, c)| *c)
                    .unwrap_or(0),
            })
            .collect();
        Ok(Response::new(ListModelsResponse { models }))
    }
}

impl InferenceService {
    /// `generate`, inside its `request` span.
    async fn traced(
        &self,
        meta: RequestMeta,
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateStream>, Status> {
        let auth =
            tracing::info_span!("authenticate").in_scope(|| authenticate(&self.state, &request));
        let auth = auth.map_err(|e| {
            tracing::info!(request_id = %meta.request_id, source = %meta.source_addr, error = %e, "request refused");
            e.to_status()
        })?;
        tracing::Span::current().record("tenant.id", auth.tenant.id.as_str());
        let body = request.into_inner();
        let model = body.model.clone();
        let req = raw_request(body).and_then(|raw| validate(&auth, &meta, raw));
        let req = req.map_err(|e| {
            tracing::info!(request_id = %meta.request_id, tenant = %auth.tenant.id, error = %e, "request refused");
            self.state.pipeline.refused(&auth, &meta, &model, &e);
            e.to_status()
        })?;
        let request_id = req.request_id.clone();
        tracing::info!(request_id = %request_id, tenant = %req.tenant.id, model = %req.model, max_tokens = req.max_tokens, "request accepted");
        let (rate, rx) = self
            .state
            .pipeline
            .start(req)
            .await
            .map_err(|e| e.to_status())?;
        let stream = futures::stream::unfold(Some(rx), move |rx| {
            let request_id = request_id.clone();
            async move {
                let mut rx = rx?;
                let item = match rx.recv().await {
                    Some(Event::Text {
                        text,
                        token_ids,
                        logprobs,
                    }) => Ok(GenerateResponse {
                        request_id,
                        text,
                        token_ids,
                        logprobs,
                        ..Default::default()
                    }),
                    Some(Event::Done { finish, usage }) => {
                        let last = GenerateResponse {
                            request_id,
                            finish_reason: finish as i32,
                            usage: Some(WireUsage {
                                prompt_tokens: usage.prompt_tokens,
                                completion_tokens: usage.completion_tokens,
                                cached_tokens: usage.cached_tokens,
                            }),
                            ..Default::default()
                        };
                        return Some((Ok(last), None));
                    }
                    Some(Event::Error(e)) => return Some((Err(e.to_status()), None)),
                    None => {
                        let e = ApiError::Internal("the generation ended unexpectedly".into());
                        return Some((Err(e.to_status()), None));
                    }
                };
                Some((item, Some(rx)))
            }
        });
        // The tenant's rate buckets, as the HTTP API's x-ratelimit-* headers.
        let mut resp = Response::new(Box::pin(stream) as GenerateStream);
        for (name, value) in rate.headers() {
            if let Ok(v) = value.parse() {
                resp.metadata_mut().insert(name, v);
            }
        }
        Ok(resp)
    }
}
