//! The router's view of tenants and API keys: the shared
//! `bulkhead-directory` (an in-memory copy of the control-plane's NATS KV
//! buckets, kept current by a watch), resolving inference keys. No request
//! ever calls the control-plane.
use std::sync::Arc;

use async_nats::jetstream;
use bulkhead_directory::KeyError;
use bulkhead_proto::control::{KeyScope, Tenant};

use crate::error::ApiError;

/// Who is calling, once the API key is checked.
#[derive(Clone, Debug)]
pub struct AuthContext {
    pub tenant: Arc<Tenant>,
    pub key_prefix: String,
    /// The key's own token budgets.
    pub key_budgets: crate::usage::Budgets,
}

#[derive(Default)]
pub struct Directory {
    inner: Arc<bulkhead_directory::Directory>,
}

impl Directory {
    /// Resolves an `Authorization` header value to a tenant (inference keys).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<AuthContext, ApiError> {
        match self.inner.resolve(authorization, KeyScope::Inference) {
            Ok(r) => Ok(AuthContext {
                tenant: r.tenant,
                key_prefix: r.key_prefix,
                key_budgets: crate::usage::Budgets {
                    daily: r.key_token_budgets.0,
                    monthly: r.key_token_budgets.1,
                },
            }),
            Err(KeyError::Missing) => Err(ApiError::Unauthenticated(
                "missing API key: send the header `Authorization: Bearer <key>`".into(),
            )),
            Err(KeyError::Malformed) => Err(ApiError::Unauthenticated(
                "malformed Authorization header: expected `Bearer <key>`".into(),
            )),
            Err(KeyError::WrongScope) => Err(ApiError::PermissionDenied(
                "this key is a tenant-admin key; inference needs an inference key".into(),
            )),
            Err(e @ KeyError::Stale(_)) => Err(ApiError::Unavailable(e.to_string())),
            Err(e) => Err(ApiError::Unauthenticated(e.to_string())),
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

    /// How long a lost NATS connection is tolerated (see
    /// `bulkhead_directory::Directory::staleness`).
    pub fn set_max_staleness_ms(&self, ms: i64) {
        self.inner.set_max_staleness_ms(ms);
    }

    pub fn tenant_count(&self) -> usize {
        self.inner.tenant_count()
    }
}

/// Loads both buckets into `dir`, then keeps it current in the background.
pub async fn sync(js: &jetstream::Context, dir: Arc<Directory>) -> anyhow::Result<()> {
    Ok(bulkhead_directory::sync(js, dir.inner.clone()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_proto::control::ApiKeyRecord;
    use bulkhead_proto::{Message, keys};

    const KEY: &str = "bh_0123456789abcdefghijklmnopqrstuv";

    fn dir_with(scope: KeyScope, revoked: bool) -> Directory {
        let d = Directory::default();
        let t = Tenant {
            id: "acme".into(),
            weight: 1,
            allowed_models: vec!["m".into()],
            max_tokens_per_request: 16,
            ..Default::default()
        };
        d.apply_tenant("acme", Some(&t.encode_to_vec()));
        let r = ApiKeyRecord {
            prefix: keys::key_prefix(KEY),
            tenant_id: "acme".into(),
            scope: scope as i32,
            revoked,
            ..Default::default()
        };
        d.apply_key(&keys::key_hash(KEY), Some(&r.encode_to_vec()));
        d
    }

    #[test]
    fn authenticates_known_keys_only() {
        let d = dir_with(KeyScope::Inference, false);
        let ctx = d.authenticate(Some(&format!("Bearer {KEY}"))).unwrap();
        assert_eq!(ctx.tenant.id, "acme");
        assert_eq!(ctx.key_prefix, "bh_012345");
        assert!(d.authenticate(Some(&format!("bearer {KEY}"))).is_ok());
        for bad in [
            None,
            Some("Bearer"),
            Some("Basic abc"),
            Some("Bearer bh_nope"),
            Some("Bearer bh_0123456789abcdefghijklmnopqrstuw"),
        ] {
            let e = d.authenticate(bad).unwrap_err();
            assert!(matches!(e, ApiError::Unauthenticated(_)), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn revoked_admin_and_orphaned_keys_are_refused() {
        let h = format!("Bearer {KEY}");
        let d = dir_with(KeyScope::Inference, true);
        assert!(matches!(
            d.authenticate(Some(&h)),
            Err(ApiError::Unauthenticated(_))
        ));
        let d = dir_with(KeyScope::TenantAdmin, false);
        assert!(matches!(
            d.authenticate(Some(&h)),
            Err(ApiError::PermissionDenied(_))
        ));
        let d = dir_with(KeyScope::Inference, false);
        d.apply_tenant("acme", None);
        assert!(matches!(
            d.authenticate(Some(&h)),
            Err(ApiError::Unauthenticated(_))
        ));
        // A record whose id disagrees with its key is not trusted.
        let d = dir_with(KeyScope::Inference, false);
        let other = Tenant {
            id: "evil".into(),
            ..Default::default()
        };
        d.apply_tenant("acme", Some(&other.encode_to_vec()));
        assert!(d.authenticate(Some(&h)).is_err());
    }
}
