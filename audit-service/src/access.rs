//! Who may read which tenant's audit records. The audit-service keeps an
//! in-memory copy of the control-plane's `bulkhead_tenants` and
//! `bulkhead_api_keys` NATS KV buckets (the shared `bulkhead-directory`, as the
//! router uses): a tenant-admin key resolves to exactly one
//! tenant, and only that tenant's records are served to it.
//!
//! Policy (see `query`): every tenant-scoped read needs
//! `authorization: Bearer <tenant-admin key>`. The only exception is the
//! explicit operator override (`--operator-reads-any-tenant`): a caller with
//! the `operator` SPIFFE certificate and no key may then read any tenant.
use std::sync::Arc;

use async_nats::jetstream;
use bulkhead_directory::KeyError;
use bulkhead_proto::control::KeyScope;
use tonic::Status;

pub use bulkhead_directory::now_ms;

/// A caller authenticated by a tenant-admin key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantAdmin {
    pub tenant_id: String,
    /// The tenant's incarnation (`Tenant.uid`): only its log is served.
    pub tenant_uid: String,
    pub key_prefix: String,
}

/// Tenants and API keys, as the control-plane publishes them.
#[derive(Default)]
pub struct AccessDirectory {
    inner: Arc<bulkhead_directory::Directory>,
}

impl AccessDirectory {
    /// Resolves an `authorization` metadata value to a tenant admin.
    /// Unknown, malformed, revoked or expired keys are UNAUTHENTICATED; an
    /// inference key is PERMISSION_DENIED.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<TenantAdmin, Status> {
        match self.inner.resolve(authorization, KeyScope::TenantAdmin) {
            Ok(r) => Ok(TenantAdmin {
                tenant_id: r.tenant.id.clone(),
                tenant_uid: r.tenant.uid.clone(),
                key_prefix: r.key_prefix,
            }),
            Err(KeyError::Missing) => Err(Status::unauthenticated(
                "missing tenant-admin key: send the metadata `authorization: Bearer <tenant-admin key>`",
            )),
            Err(KeyError::Malformed) => Err(Status::unauthenticated(
                "malformed authorization metadata: expected `Bearer <tenant-admin key>`",
            )),
            Err(KeyError::WrongScope) => Err(Status::permission_denied(
                "this is an inference key; audit records need a tenant-admin key",
            )),
            Err(e @ KeyError::Stale(_)) => Err(Status::unavailable(e.to_string())),
            Err(e) => Err(Status::unauthenticated(e.to_string())),
        }
    }

    /// Applies one change of the tenants bucket (`None` = deleted).
    pub fn apply_tenant(&self, id: &str, value: Option<&[u8]>) {
        self.inner.apply_tenant(id, value);
    }

    /// Applies one change of the API keys bucket (`None` = deleted).
    pub fn apply_key(&self, hash: &str, value: Option<&[u8]>) {
        self.inner.apply_key(hash, value);
    }
}

/// Loads both buckets into `dir`, then keeps it current in the background
/// (a revoked key stops working here as soon as the watch delivers it).
pub async fn sync(
    js: &jetstream::Context,
    dir: Arc<AccessDirectory>,
) -> Result<(), bulkhead_directory::NatsError> {
    bulkhead_directory::sync(js, dir.inner.clone()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_proto::control::{ApiKeyRecord, Tenant};
    use bulkhead_proto::{Message, keys};
    use tonic::Code;

    const KEY: &str = "bh_0123456789abcdefghijklmnopqrstuv";

    fn dir_with(scope: KeyScope, revoked: bool, expires: i64) -> AccessDirectory {
        let d = AccessDirectory::default();
        let t = Tenant {
            id: "acme".into(),
            ..Default::default()
        };
        d.apply_tenant("acme", Some(&t.encode_to_vec()));
        let r = ApiKeyRecord {
            prefix: keys::key_prefix(KEY),
            tenant_id: "acme".into(),
            scope: scope as i32,
            revoked,
            expires_unix_ms: expires,
            ..Default::default()
        };
        d.apply_key(&keys::key_hash(KEY), Some(&r.encode_to_vec()));
        d
    }

    #[test]
    fn admin_keys_resolve_to_their_tenant_only() {
        let h = format!("Bearer {KEY}");
        let d = dir_with(KeyScope::TenantAdmin, false, 0);
        let a = d.authenticate(Some(&h)).unwrap();
        assert_eq!(a.tenant_id, "acme");
        assert_eq!(a.key_prefix, "bh_012345");
        for bad in [
            None,
            Some("Bearer"),
            Some("Basic abc"),
            Some("Bearer bh_nope"),
            Some("Bearer bh_0123456789abcdefghijklmnopqrstuw"),
        ] {
            let e = d.authenticate(bad).unwrap_err();
            assert_eq!(e.code(), Code::Unauthenticated, "{bad:?}: {e:?}");
        }
        let e = dir_with(KeyScope::Inference, false, 0)
            .authenticate(Some(&h))
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(e.message().contains("tenant-admin"), "{e:?}");
        for d in [
            dir_with(KeyScope::TenantAdmin, true, 0),
            dir_with(KeyScope::TenantAdmin, false, 1),
        ] {
            assert_eq!(
                d.authenticate(Some(&h)).unwrap_err().code(),
                Code::Unauthenticated
            );
        }
        let d = dir_with(KeyScope::TenantAdmin, false, 0);
        d.apply_tenant("acme", None);
        assert_eq!(
            d.authenticate(Some(&h)).unwrap_err().code(),
            Code::Unauthenticated
        );
        d.apply_tenant("acme", Some(&Tenant::default().encode_to_vec()));
        assert!(d.authenticate(Some(&h)).is_err(), "mismatched id trusted");
    }
}
