//! Demo tenants for the dev stack, created through the control-plane's gRPC
//! API with the operator certificate, exactly as an operator would.
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bulkhead_identity::spiffe::CertPaths;
use bulkhead_proto::client::ListModelsRequest;
use bulkhead_proto::client::inference_client::InferenceClient;
use bulkhead_proto::control::control_client::ControlClient;
use bulkhead_proto::control::{CreateTenantRequest, IssueKeyRequest, KeyScope};

/// The demo tenants' in-flight and queued counts.
const DEMO_MAX_IN_FLIGHT: u32 = 1_024;
const DEMO_MAX_QUEUED: u32 = 1_024;
use tonic::transport::Endpoint;

use super::TenantInfo;

pub async fn create_demo(
    control_url: &str,
    certs: &Path,
    ids: &[String],
    dedicated: Option<&str>,
    model: &str,
    max_tokens: u32,
) -> Result<Vec<TenantInfo>> {
    let channel = Endpoint::from_shared(control_url.to_string())?
        .tls_config(CertPaths::new(certs, "operator").client_tls("control")?)?
        .connect()
        .await
        .context("connecting to the control-plane")?;
    let mut client = ControlClient::new(channel);
    let mut out = vec![];
    let all: Vec<&String> = ids.iter().collect();
    let extra = dedicated.map(str::to_string);
    for id in all.into_iter().chain(extra.as_ref()) {
        let isolation = if Some(id.as_str()) == dedicated {
            bulkhead_proto::common::Isolation::Process as i32
        } else {
            bulkhead_proto::common::Isolation::Shared as i32
        };
        let created = client
            .create_tenant(CreateTenantRequest {
                id: id.clone(),
                weight: 1,
                allowed_models: vec![model.to_string()],
                max_tokens_per_request: max_tokens,
                isolation,
                // Explicit and generous, so the benches can load one demo
                // tenant with hundreds of streams (a tenant that leaves
                // these at 0 gets the router's defaults, 64 and 256).
                max_in_flight: DEMO_MAX_IN_FLIGHT,
                max_queued: DEMO_MAX_QUEUED,
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => bail!("creating tenant {id}: {}", s.message()),
        }
        let mut keys = vec![];
        for scope in [KeyScope::Inference, KeyScope::TenantAdmin] {
            let key = client
                .issue_key(IssueKeyRequest {
                    tenant_id: id.clone(),
                    scope: scope as i32,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("issuing a key for {id}"))?
                .into_inner();
            keys.push(key.api_key);
        }
        out.push(TenantInfo {
            id: id.clone(),
            admin_key: keys.pop().unwrap_or_default(),
            api_key: keys.pop().unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Waits until the router's watch has picked up every new key.
pub async fn wait_until_router_knows(router_grpc: &str, tenants: &[TenantInfo]) -> Result<()> {
    let mut client = InferenceClient::connect(format!("http://{router_grpc}")).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    for t in tenants {
        loop {
            let mut req = tonic::Request::new(ListModelsRequest {});
            req.metadata_mut()
                .insert("authorization", format!("Bearer {}", t.api_key).parse()?);
            match client.list_models(req).await {
                Ok(_) => break,
                Err(s) if Instant::now() > deadline => {
                    bail!("the router never accepted {}'s key: {}", t.id, s.message())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    Ok(())
}
