//! The tenant-scoped audit query API over mTLS. Callers are admitted by
//! SPIFFE id (router, control-plane, operator); scoping by tenant-admin keys
//! is the audit issue's work and not built yet.
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
            return Err(Status::invalid_argument("invalid tenant_id"));
        }
        let start: usize = if q.page_token.is_empty() {
            0
        } else {
            q.page_token
                .parse()
                .map_err(|_| Status::invalid_argument("invalid page_token"))?
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
        let read = {
            let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
            store.read(&q.tenant_id)
        }
        .map_err(|e| Status::internal(e.to_string()))?;
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
