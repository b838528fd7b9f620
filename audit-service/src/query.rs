//! The tenant-scoped audit query API over mTLS. Callers are admitted by
//! SPIFFE id (router, control-plane, operator — see `server::ALLOWED_CALLERS`).
//! A query returns only the named tenant's records, decrypted with that
//! tenant's key. Scoping a caller to one tenant by a tenant-admin API key is
//! a later issue and not built yet: any admitted component may read any
//! tenant's records. The page token is the index of the next record.
use std::sync::{Arc, Mutex};

use bulkhead_proto::audit::audit_query_server::AuditQuery;
use bulkhead_proto::audit::{AuditQueryRequest, AuditQueryResponse};
use bulkhead_proto::names::valid_tenant_id;
use tonic::{Request, Response, Status};

use crate::store::AuditStore;

pub const DEFAULT_PAGE: u32 = 100;
pub const MAX_PAGE: u32 = 1000;

pub struct QueryService {
    pub store: Arc<Mutex<AuditStore>>,
}

#[tonic::async_trait]
impl AuditQuery for QueryService {
    async fn query(
        &self,
        request: Request<AuditQueryRequest>,
    ) -> Result<Response<AuditQueryResponse>, Status> {
        let q = request.into_inner();
        if !valid_tenant_id(&q.tenant_id) {
            return Err(Status::invalid_argument(format!(
                "invalid tenant_id {:?}: 1-64 characters of [a-z0-9-_], starting with a letter or digit",
                q.tenant_id.chars().take(80).collect::<String>()
            )));
        }
        let start: usize = if q.page_token.is_empty() {
            0
        } else {
            q.page_token.parse().map_err(|_| {
                Status::invalid_argument(
                    "invalid page_token: pass the next_page_token of a previous reply",
                )
            })?
        };
        let page = match q.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        } as usize;
        let to = if q.to_unix_ms == 0 {
            i64::MAX
        } else {
            q.to_unix_ms
        };
        // Reading decrypts the whole log: keep it off the async threads.
        let store = self.store.clone();
        let tenant = q.tenant_id.clone();
        let read = tokio::task::spawn_blocking(move || {
            let store = store.lock().unwrap_or_else(|e| e.into_inner());
            store.read(&tenant)
        })
        .await
        .map_err(|e| Status::internal(format!("query task failed: {e}")))?
        .map_err(|e| {
            tracing::error!(tenant = %q.tenant_id, error = %e, "audit query failed");
            Status::internal(format!("reading the audit log failed: {e}"))
        })?;
        let mut records = Vec::new();
        let mut next = None;
        for (i, f) in read.frames.into_iter().enumerate().skip(start) {
            let t = f.event.timestamp_unix_ms;
            if t < q.from_unix_ms || t > to {
                continue;
            }
            if records.len() == page {
                next = Some(i);
                break;
            }
            records.push(f.event);
        }
        Ok(Response::new(AuditQueryResponse {
            records,
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }
}
