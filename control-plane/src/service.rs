//! The control-plane's gRPC API; the server admits operators only.
use bulkhead_proto::control::control_server::Control;
use bulkhead_proto::control::{
    CreateTenantRequest, IssueKeyRequest, IssueKeyResponse, KeyScope, ListTenantsRequest,
    ListTenantsResponse, Tenant,
};
use tonic::{Request, Response, Status};

use crate::registry::Registry;

pub struct ControlService {
    pub registry: Registry,
}

fn caller<T>(r: &Request<T>) -> String {
    r.extensions()
        .get::<bulkhead_proto::identity::CallerId>()
        .map(|c| c.0.to_string())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn create_tenant(
        &self,
        request: Request<CreateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let who = caller(&request);
        let t = self.registry.create_tenant(request.into_inner()).await?;
        tracing::info!(tenant = %t.id, caller = %who, "tenant created");
        Ok(Response::new(t))
    }

    async fn list_tenants(
        &self,
        _request: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        let tenants = self.registry.list_tenants().await?;
        Ok(Response::new(ListTenantsResponse { tenants }))
    }

    async fn issue_key(
        &self,
        request: Request<IssueKeyRequest>,
    ) -> Result<Response<IssueKeyResponse>, Status> {
        let who = caller(&request);
        let r = request.into_inner();
        let scope = KeyScope::try_from(r.scope)
            .map_err(|_| Status::invalid_argument("unknown key scope"))?;
        let k = self.registry.issue_key(&r.tenant_id, scope).await?;
        tracing::info!(tenant = %r.tenant_id, prefix = %k.prefix, scope = scope.as_str_name(), caller = %who, "key issued");
        Ok(Response::new(k))
    }
}
