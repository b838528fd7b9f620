//! The operator-only administration API (`AuditAdmin`): crypto-shredding a
//! tenant while the service runs. `server` mounts it behind a
//! `SpiffeAuthorizer` that admits only the `operator` SPIFFE id
//! ([`ALLOWED_CALLERS`]); routers, the control-plane and tenant-admin keys
//! cannot reach it.
use std::sync::{Arc, Mutex};

use bulkhead_identity::spiffe::CallerId;
use bulkhead_proto::audit::audit_admin_server::AuditAdmin;
use bulkhead_proto::audit::{HeadsRequest, HeadsResponse, ShredRequest, ShredResponse};
use tonic::{Request, Response, Status};

use crate::StoreError;
use crate::shred::Shredded;
use crate::store::AuditStore;

/// The only SPIFFE component admitted on the admin API.
pub const ALLOWED_CALLERS: &[&str] = &["operator"];

pub struct AdminService {
    pub store: Arc<Mutex<AuditStore>>,
}

#[tonic::async_trait]
impl AuditAdmin for AdminService {
    async fn shred(&self, req: Request<ShredRequest>) -> Result<Response<ShredResponse>, Status> {
        let caller = req
            .extensions()
            .get::<CallerId>()
            .map(|c| c.0.to_string())
            .unwrap_or_default();
        let tenant = req.into_inner().tenant_id;
        let store = self.store.clone();
        let t = tenant.clone();
        let done = tokio::task::spawn_blocking(move || {
            store.lock().unwrap_or_else(|e| e.into_inner()).shred(&t)
        })
        .await
        .map_err(|e| Status::internal(format!("shred task failed: {e}")))?;
        let (done, records) = done.map_err(|e| match e {
            e @ StoreError::UnknownTenant(_) => Status::not_found(e.to_string()),
            StoreError::Invalid(why) => Status::invalid_argument(why),
            e => {
                tracing::error!(tenant, error = %e, "crypto-shredding failed");
                Status::internal(format!("crypto-shredding failed: {e}"))
            }
        })?;
        let (keys_destroyed, already_shredded) = match done {
            Shredded::Now(n) => (n as u32, false),
            Shredded::Already => (0, true),
        };
        tracing::warn!(tenant, %caller, keys_destroyed, records, "tenant audit records crypto-shredded by an operator");
        Ok(Response::new(ShredResponse {
            tenant_id: tenant,
            keys_destroyed,
            already_shredded,
            records,
        }))
    }

    async fn heads(&self, req: Request<HeadsRequest>) -> Result<Response<HeadsResponse>, Status> {
        let want = req.into_inner().tenant_id;
        let reader = self
            .store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reader();
        let heads = tokio::task::spawn_blocking(move || {
            let tenants = if want.is_empty() {
                crate::verify::tenants(reader.root())?
            } else {
                vec![want]
            };
            let mut heads = vec![];
            for t in tenants {
                if let Some(h) = crate::heads::head(&reader, &t)? {
                    heads.push(h);
                }
            }
            Ok::<_, StoreError>(heads)
        })
        .await
        .map_err(|e| Status::internal(format!("heads task failed: {e}")))?
        .map_err(|e| Status::internal(format!("reading the checkpoints failed: {e}")))?;
        Ok(Response::new(HeadsResponse { heads }))
    }
}
