//! The control-plane's gRPC API; the server admits operators only.
use bulkhead_proto::control::control_server::Control;
use bulkhead_proto::control::{
    ClusterStatusRequest, ClusterStatusResponse, CreateTenantRequest, DeleteTenantRequest,
    DeleteTenantResponse, GetUsageRequest, GetUsageResponse, IssueKeyRequest, IssueKeyResponse,
    KeyInfo, KeyScope, ListKeysRequest, ListKeysResponse, ListTenantsRequest, ListTenantsResponse,
    RevokeKeyRequest, RotateKeyRequest, RotateKeyResponse, Tenant, UpdateTenantRequest,
};
use tonic::{Request, Response, Status};

use crate::registry::Registry;

pub struct ControlService {
    pub registry: Registry,
    pub metrics: Option<std::sync::Arc<crate::metrics::ControlMetrics>>,
}

impl ControlService {
    /// Runs one RPC, counting it by method and outcome.
    async fn observed<T>(
        &self,
        method: &'static str,
        rpc: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let r = rpc.await;
        if let Some(m) = &self.metrics {
            let code = match &r {
                Ok(_) => tonic::Code::Ok,
                Err(s) => s.code(),
            };
            m.request(method, code);
        }
        r
    }
}

fn caller<T>(r: &Request<T>) -> String {
    r.extensions()
        .get::<bulkhead_identity::spiffe::CallerId>()
        .map(|c| c.0.to_string())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        self.observed("cluster_status", async move {
            let now = bulkhead_directory::now_ms();
            let stale = bulkhead_proto::names::ROUTER_STALE_AFTER_MS;
            Ok::<_, Status>(Response::new(ClusterStatusResponse {
                routers: self.registry.live_routers(now, stale).await?,
                tenants: self.registry.list_tenants().await?,
                now_unix_ms: now,
                stale_after_ms: stale,
            }))
        })
        .await
    }

    async fn create_tenant(
        &self,
        request: Request<CreateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        self.observed("create_tenant", async move {
            let who = caller(&request);
            let t = self.registry.create_tenant(request.into_inner()).await?;
            tracing::info!(tenant = %t.id, caller = %who, "tenant created");
            Ok::<_, Status>(Response::new(t))
        })
        .await
    }

    async fn list_tenants(
        &self,
        _request: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        self.observed("list_tenants", async move {
            let tenants = self.registry.list_tenants().await?;
            Ok::<_, Status>(Response::new(ListTenantsResponse { tenants }))
        })
        .await
    }

    async fn issue_key(
        &self,
        request: Request<IssueKeyRequest>,
    ) -> Result<Response<IssueKeyResponse>, Status> {
        self.observed("issue_key", async move {
            let who = caller(&request);
            let r = request.into_inner();
            let scope = KeyScope::try_from(r.scope)
                .map_err(|_| Status::invalid_argument("unknown key scope"))?;
            let k = self
                .registry
                .issue_key_budgeted(
                    &r.tenant_id,
                    scope,
                    r.expires_in_days,
                    (r.daily_token_budget, r.monthly_token_budget),
                )
                .await?;
            tracing::info!(tenant = %r.tenant_id, prefix = %k.prefix, scope = scope.as_str_name(), expires_in_days = r.expires_in_days, caller = %who, "key issued");
            Ok::<_, Status>(Response::new(k))
        })
        .await
    }

    async fn update_tenant(
        &self,
        request: Request<UpdateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        self.observed("update_tenant", async move {
            let who = caller(&request);
            let t = self.registry.update_tenant(request.into_inner()).await?;
            tracing::info!(tenant = %t.id, caller = %who, "tenant updated");
            Ok::<_, Status>(Response::new(t))
        })
        .await
    }

    async fn delete_tenant(
        &self,
        request: Request<DeleteTenantRequest>,
    ) -> Result<Response<DeleteTenantResponse>, Status> {
        self.observed("delete_tenant", async move {
            let who = caller(&request);
            let id = request.into_inner().id;
            let keys_revoked = self.registry.delete_tenant(&id).await?;
            tracing::info!(tenant = %id, keys_revoked, caller = %who, "tenant deleted");
            Ok::<_, Status>(Response::new(DeleteTenantResponse { keys_revoked }))
        })
        .await
    }

    async fn get_usage(
        &self,
        request: Request<GetUsageRequest>,
    ) -> Result<Response<GetUsageResponse>, Status> {
        self.observed("get_usage", async move {
            let r = request.into_inner();
            let days = self
                .registry
                .usage(&r.tenant_id, &r.from_day, &r.to_day)
                .await?;
            Ok::<_, Status>(Response::new(GetUsageResponse { days }))
        })
        .await
    }

    async fn list_keys(
        &self,
        request: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        self.observed("list_keys", async move {
            let keys = self
                .registry
                .list_keys(&request.into_inner().tenant_id)
                .await?;
            Ok::<_, Status>(Response::new(ListKeysResponse { keys }))
        })
        .await
    }

    async fn revoke_key(
        &self,
        request: Request<RevokeKeyRequest>,
    ) -> Result<Response<KeyInfo>, Status> {
        self.observed("revoke_key", async move {
            let who = caller(&request);
            let r = request.into_inner();
            let k = self.registry.revoke_key(&r.prefix, &r.tenant_id).await?;
            tracing::info!(tenant = %k.tenant_id, prefix = %k.prefix, caller = %who, "key revoked");
            Ok::<_, Status>(Response::new(k))
        })
        .await
    }

    async fn rotate_key(
        &self,
        request: Request<RotateKeyRequest>,
    ) -> Result<Response<RotateKeyResponse>, Status> {
        self.observed("rotate_key", async move {
            let who = caller(&request);
            let r = request.into_inner();
            let k = self
                .registry
                .rotate_key(&r.prefix, &r.tenant_id, r.expires_in_days, r.grace_seconds)
                .await?;
            tracing::info!(old_prefix = %r.prefix, new_prefix = %k.prefix, grace_seconds = r.grace_seconds, caller = %who, "key rotated");
            Ok::<_, Status>(Response::new(k))
        })
        .await
    }
}
