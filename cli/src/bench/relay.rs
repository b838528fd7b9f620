//! The floor beside the router in `bench overhead`: a bare gRPC relay — the
//! client API in front (plaintext on loopback, like the router's), the
//! worker API behind over the same mTLS — that does nothing a relay need
//! not do: no authentication, limits, queue, routing choice or audit. What
//! it adds over going straight to the worker is the least any relay adds
//! on this machine; the router's addition is read against it.
//!
//! It runs inside the bench process on a thread and runtime of its own
//! (two worker threads), so it never waits for the load generator's.
use std::path::Path;
use std::pin::Pin;

use anyhow::{Context, Result};
use bulkhead_identity::spiffe::CertPaths;
use bulkhead_proto::client::inference_server::{Inference, InferenceServer};
use bulkhead_proto::client::{
    GenerateRequest, GenerateResponse, ListModelsRequest, ListModelsResponse, Usage,
};
use bulkhead_proto::common::SamplingParams;
use bulkhead_proto::worker::WorkerGenerateRequest;
use bulkhead_proto::worker::worker_client::WorkerClient;
use bulkhead_proto::worker::worker_generate_response::Event;
use futures::{Stream, StreamExt};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

struct Relay {
    worker: WorkerClient<Channel>,
    tenant: String,
}

type Out = Pin<Box<dyn Stream<Item = Result<GenerateResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Inference for Relay {
    type GenerateStream = Out;

    async fn generate(
        &self,
        req: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let r = req.into_inner();
        let request_id = format!("relay-{:032x}", rand::random::<u128>());
        let wreq = WorkerGenerateRequest {
            request_id: request_id.clone(),
            tenant_id: self.tenant.clone(),
            model: r.model,
            prompt: r.prompt,
            max_tokens: r.max_tokens,
            sampling: Some(SamplingParams::default()),
            ..Default::default()
        };
        let stream = self.worker.clone().generate(wreq).await?.into_inner();
        let out = stream.filter_map(move |m| {
            let request_id = request_id.clone();
            async move {
                let ev = match m {
                    Ok(m) => m.event?,
                    Err(e) => return Some(Err(e)),
                };
                match ev {
                    Event::Started(_) => None,
                    Event::Token(t) => Some(Ok(GenerateResponse {
                        request_id,
                        text: t.text,
                        token_ids: vec![t.id],
                        ..Default::default()
                    })),
                    Event::Finished(f) => Some(Ok(GenerateResponse {
                        request_id,
                        finish_reason: f.reason,
                        usage: Some(Usage {
                            prompt_tokens: f.prompt_tokens,
                            completion_tokens: f.completion_tokens,
                            cached_tokens: 0,
                        }),
                        ..Default::default()
                    })),
                }
            }
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn list_models(
        &self,
        _: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        Err(Status::unimplemented(
            "the bench relay serves Generate only",
        ))
    }
}

/// A running relay: its address; dropping it stops the relay.
pub struct RelayServer {
    pub addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts a relay in front of the worker at `worker_url`, connected over
/// mTLS as a router from `certs_dir`, sending every request as `tenant`. It
/// runs on a thread and runtime of its own (its connection's I/O too).
pub async fn start(worker_url: &str, certs_dir: &Path, tenant: &str) -> Result<RelayServer> {
    let tls = CertPaths::new(certs_dir, "router").client_tls("worker")?;
    let (url, tenant) = (worker_url.to_string(), tenant.to_string());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<std::net::SocketAddr>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("bench-relay".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                let setup = async {
                    let ch = Endpoint::from_shared(url)?
                        .tls_config(tls)?
                        .connect()
                        .await
                        .context("the bench relay connecting to the worker")?;
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .context("binding the bench relay")?;
                    anyhow::Ok((WorkerClient::new(ch), listener))
                };
                let (worker, listener) = match setup.await {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(listener.local_addr().map_err(Into::into));
                let relay = Relay { worker, tenant };
                if let Err(e) = tonic::transport::Server::builder()
                    .add_service(InferenceServer::new(relay))
                    .serve_with_incoming_shutdown(
                        bulkhead_telemetry::incoming_nodelay(listener),
                        async {
                            let _ = stop_rx.await;
                        },
                    )
                    .await
                {
                    eprintln!("bench relay stopped: {e}");
                }
            });
        })?;
    let addr = ready_rx.await.context("the bench relay thread ended")??;
    Ok(RelayServer {
        addr,
        _stop: stop_tx,
    })
}
