//! The tenant-scoped audit query API over mTLS. Callers are first admitted by
//! SPIFFE id (router, control-plane, operator — see `server::ALLOWED_CALLERS`);
//! then every tenant-scoped read needs `authorization: Bearer <tenant-admin
//! key>` (see `access`) and is served only for that key's own tenant.
//!
//! - no / malformed / unknown / revoked / expired key → UNAUTHENTICATED;
//! - an inference key → PERMISSION_DENIED;
//! - another tenant's id → PERMISSION_DENIED, and the attempt is appended
//!   (and fsynced) to the *caller's* tenant log as a record with status
//!   `denied`, error code `PermissionDenied` and a fresh request id.
//!
//! Operator override (explicit, off by default): with
//! `ServeOptions::operator_reads_any_tenant`, a caller presenting the
//! `operator` SPIFFE certificate and *no* key may read any tenant (logged).
//! A key, when sent, is always enforced. The page token is the index of the
//! next record.
use std::sync::{Arc, Mutex};

use bulkhead_identity::spiffe::CallerId;
use bulkhead_proto::audit::audit_query_server::AuditQuery;
use bulkhead_proto::audit::{
    AuditEvent, AuditQueryRequest, AuditQueryResponse, AuditReport, AuditReportRequest, SignedHead,
};
use bulkhead_proto::names::valid_tenant_id;
use tonic::{Request, Response, Status};

use crate::StoreError;
use crate::access::{AccessDirectory, now_ms};
use crate::report;
use crate::store::{AuditStore, LogRead};

pub const DEFAULT_PAGE: u32 = 100;
pub const MAX_PAGE: u32 = 1000;

pub struct QueryService {
    /// The writer (a denied read is itself recorded).
    pub store: Arc<Mutex<AuditStore>>,
    /// Reads go here, without the writer's lock (`AuditStore::reader`).
    pub reader: Arc<AuditStore>,
    pub access: Arc<AccessDirectory>,
    /// The explicit operator override (see the module docs).
    pub operator_reads_any_tenant: bool,
}

fn invalid_tenant(t: &str) -> Status {
    Status::invalid_argument(format!(
        "invalid tenant_id {:?}: 1-64 characters of [a-z0-9-_], starting with a letter or digit",
        t.chars().take(80).collect::<String>()
    ))
}

impl QueryService {
    /// Decides whether the caller may read `tenant`'s records; returns the
    /// incarnation it may see (`None`: the operator override, any).
    async fn authorize<T>(
        &self,
        req: &Request<T>,
        rpc: &str,
        tenant: &str,
    ) -> Result<Option<String>, Status> {
        let auth = match req.metadata().get("authorization") {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                Status::unauthenticated(
                    "malformed authorization metadata: expected `Bearer <tenant-admin key>`",
                )
            })?),
        };
        let caller = req.extensions().get::<CallerId>();
        if auth.is_none()
            && self.operator_reads_any_tenant
            && caller.is_some_and(|c| c.0.is_component("operator"))
        {
            if !valid_tenant_id(tenant) {
                return Err(invalid_tenant(tenant));
            }
            tracing::info!(
                rpc,
                tenant,
                "operator override: reading a tenant's audit records"
            );
            return Ok(None);
        }
        let admin = self.access.authenticate(auth)?;
        if !valid_tenant_id(tenant) {
            return Err(invalid_tenant(tenant));
        }
        if admin.tenant_id == tenant {
            return Ok(Some(admin.tenant_uid));
        }
        tracing::warn!(rpc, caller_tenant = %admin.tenant_id, key = %admin.key_prefix,
            "refused a tenant-admin key's read of another tenant's audit records");
        let ev = AuditEvent {
            request_id: uuid::Uuid::new_v4().to_string(),
            tenant_id: admin.tenant_id.clone(),
            tenant_uid: admin.tenant_uid.clone(),
            timestamp_unix_ms: now_ms(),
            routing_decision: format!("audit {rpc}: another tenant's records refused"),
            status: report::DENIED.into(),
            error_code: "PermissionDenied".into(),
            source_addr: req.remote_addr().map(|a| a.to_string()).unwrap_or_default(),
            api_key_prefix: admin.key_prefix.clone(),
            protocol: "grpc".into(),
            ..Default::default()
        };
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
            store.append(&ev)?;
            store.sync()
        })
        .await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "could not record a denied audit read"),
            Err(e) => tracing::error!(error = %e, "could not record a denied audit read"),
        }
        Err(Status::permission_denied(
            "this tenant-admin key may read only its own tenant's audit records",
        ))
    }

    /// Reads (and decrypts) a whole log off the async threads, without
    /// taking the writer's lock: ingestion goes on while a large log is read.
    async fn read(
        &self,
        tenant: &str,
        uid: Option<String>,
    ) -> Result<(LogRead, Option<SignedHead>), Status> {
        let reader = self.reader.clone();
        let t = tenant.to_string();
        tokio::task::spawn_blocking(move || {
            let log = reader.read_as(&t, uid.as_deref())?;
            // The signed head goes out with the answer (see `heads`), for
            // the incarnation the caller may see only.
            let visible =
                crate::store::incarnation::visible_to(&reader.tenant_dir(&t), uid.as_deref());
            let head = if visible {
                crate::heads::head(&reader, &t)?
            } else {
                None
            };
            Ok::<_, StoreError>((log, head))
        })
        .await
        .map_err(|e| Status::internal(format!("query task failed: {e}")))?
        .map_err(|e| match e {
            StoreError::Shredded(_) => Status::failed_precondition(e.to_string()),
            e => {
                tracing::error!(tenant, error = %e, "audit query failed");
                Status::internal(format!("reading the audit log failed: {e}"))
            }
        })
    }
}

fn window_end(to: i64) -> i64 {
    if to == 0 { i64::MAX } else { to }
}

#[tonic::async_trait]
impl AuditQuery for QueryService {
    async fn query(
        &self,
        request: Request<AuditQueryRequest>,
    ) -> Result<Response<AuditQueryResponse>, Status> {
        let uid = self
            .authorize(&request, "query", &request.get_ref().tenant_id)
            .await?;
        let q = request.into_inner();
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
        let to = window_end(q.to_unix_ms);
        let (read, head) = self.read(&q.tenant_id, uid).await?;
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
            head,
        }))
    }

    async fn report(
        &self,
        request: Request<AuditReportRequest>,
    ) -> Result<Response<AuditReport>, Status> {
        let uid = self
            .authorize(&request, "report", &request.get_ref().tenant_id)
            .await?;
        let q = request.into_inner();
        let now = now_ms();
        let to = if q.to_unix_ms == 0 { now } else { q.to_unix_ms };
        if to < q.from_unix_ms {
            return Err(Status::invalid_argument(
                "to_unix_ms is before from_unix_ms",
            ));
        }
        let (read, head) = self.read(&q.tenant_id, uid).await?;
        let intact = read.first_bad.is_none();
        let events = read.frames.iter().map(|f| &f.event);
        let mut report = report::compute(&q.tenant_id, q.from_unix_ms, to, events, intact, now);
        report.head = head;
        Ok(Response::new(report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyWrapper, LocalMasterKey};

    // Holding the lock across the await is the point: it stands for an
    // ingestion batch in progress.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn a_query_reads_while_ingestion_holds_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let master: Arc<dyn KeyWrapper> = Arc::new(LocalMasterKey::from_bytes(&[9; 32]));
        let mut store = AuditStore::open(dir.path(), master).unwrap();
        for i in 0..50 {
            let ev = AuditEvent {
                request_id: format!("r{i}"),
                tenant_id: "acme".into(),
                ..Default::default()
            };
            store.append(&ev).unwrap();
        }
        store.sync().unwrap();
        let reader = Arc::new(store.reader());
        let store = Arc::new(Mutex::new(store));
        let q = QueryService {
            store: store.clone(),
            reader,
            access: Arc::new(AccessDirectory::default()),
            operator_reads_any_tenant: false,
        };
        // Ingestion holds the writer's lock for as long as the read takes
        // (and longer): the read must not need it.
        let held = store.lock().unwrap();
        let (read, _) =
            tokio::time::timeout(std::time::Duration::from_secs(30), q.read("acme", None))
                .await
                .expect("the query waited for the writer's lock")
                .unwrap();
        drop(held);
        assert_eq!(read.frames.len(), 50);
        assert!(read.first_bad.is_none());
    }
}
