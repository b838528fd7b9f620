//! The router's view of tenants and API keys: an in-memory copy of the
//! control-plane's NATS KV buckets, kept current by a watch. Authentication is
//! a local lookup; no request ever calls the control-plane.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream;
use async_nats::jetstream::kv::{self, Operation};
use bulkhead_proto::Message;
use bulkhead_proto::control::{ApiKeyRecord, KeyScope, Tenant};
use bulkhead_proto::{keys, names};
use futures::StreamExt;

use crate::error::ApiError;

/// Who is calling, once the API key is checked.
#[derive(Clone, Debug)]
pub struct AuthContext {
    pub tenant: Arc<Tenant>,
    pub key_prefix: String,
}

#[derive(Default)]
struct State {
    tenants: HashMap<String, Arc<Tenant>>,
    keys: HashMap<String, ApiKeyRecord>,
}

#[derive(Default)]
pub struct Directory {
    state: RwLock<State>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Directory {
    /// Resolves an `Authorization` header value to a tenant.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<AuthContext, ApiError> {
        let header = authorization.ok_or_else(|| {
            ApiError::Unauthenticated(
                "missing API key: send the header `Authorization: Bearer <key>`".into(),
            )
        })?;
        let key = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, k)| k.trim())
            .ok_or_else(|| {
                ApiError::Unauthenticated(
                    "malformed Authorization header: expected `Bearer <key>`".into(),
                )
            })?;
        let invalid = || ApiError::Unauthenticated("invalid API key".into());
        if !keys::well_formed(key) {
            return Err(invalid());
        }
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let record = state.keys.get(&keys::key_hash(key)).ok_or_else(invalid)?;
        if record.revoked {
            return Err(ApiError::Unauthenticated(
                "this API key has been revoked".into(),
            ));
        }
        if record.expires_unix_ms != 0 && record.expires_unix_ms <= now_ms() {
            return Err(ApiError::Unauthenticated("this API key has expired".into()));
        }
        if record.scope != KeyScope::Inference as i32 {
            return Err(ApiError::PermissionDenied(
                "this key is a tenant-admin key; inference needs an inference key".into(),
            ));
        }
        let tenant = state
            .tenants
            .get(&record.tenant_id)
            .cloned()
            .ok_or_else(|| {
                ApiError::Unauthenticated("the tenant of this API key no longer exists".into())
            })?;
        Ok(AuthContext {
            tenant,
            key_prefix: record.prefix.clone(),
        })
    }

    /// Applies one change of the tenants bucket (`None` = deleted).
    pub fn apply_tenant(&self, id: &str, value: Option<&[u8]>) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        match value.map(Tenant::decode) {
            Some(Ok(t)) if t.id == id => {
                state.tenants.insert(id.to_string(), Arc::new(t));
            }
            Some(_) => {
                tracing::error!(tenant = id, "ignoring an undecodable tenant record");
                state.tenants.remove(id);
            }
            None => {
                state.tenants.remove(id);
            }
        }
    }

    /// Applies one change of the API keys bucket (`None` = deleted).
    pub fn apply_key(&self, hash: &str, value: Option<&[u8]>) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        match value.map(ApiKeyRecord::decode) {
            Some(Ok(r)) => {
                state.keys.insert(hash.to_string(), r);
            }
            Some(Err(_)) => {
                tracing::error!("ignoring an undecodable API key record");
                state.keys.remove(hash);
            }
            None => {
                state.keys.remove(hash);
            }
        }
    }

    pub fn tenant_count(&self) -> usize {
        self.state.read().map(|s| s.tenants.len()).unwrap_or(0)
    }
}

/// Opens (or creates, with the control-plane's settings) a KV bucket.
async fn bucket(js: &jetstream::Context, name: &str) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    Ok(js
        .create_key_value(kv::Config {
            bucket: name.to_string(),
            history: 5,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?)
}

/// Loads both buckets into `dir`, then keeps it current in the background.
pub async fn sync(js: &jetstream::Context, dir: Arc<Directory>) -> anyhow::Result<()> {
    for (name, is_tenants) in [
        (names::TENANTS_BUCKET, true),
        (names::API_KEYS_BUCKET, false),
    ] {
        let store = bucket(js, name).await?;
        // Subscribe first, then load: a change in between is seen by both,
        // and applying the same value twice is harmless.
        let mut watch = store.watch_all().await?;
        let mut keys = store.keys().await?;
        while let Some(key) = keys.next().await {
            let key = key?;
            let value = store.get(&key).await?;
            apply(&dir, is_tenants, &key, value.as_deref());
        }
        let dir = dir.clone();
        tokio::spawn(async move {
            while let Some(entry) = watch.next().await {
                match entry {
                    Ok(e) => {
                        let value = matches!(e.operation, Operation::Put).then_some(&e.value[..]);
                        apply(&dir, is_tenants, &e.key, value);
                    }
                    Err(err) => tracing::error!(bucket = name, %err, "KV watch error"),
                }
            }
            tracing::error!(
                bucket = name,
                "KV watch ended; tenant changes no longer apply"
            );
        });
    }
    Ok(())
}

fn apply(dir: &Directory, is_tenants: bool, key: &str, value: Option<&[u8]>) {
    if is_tenants {
        dir.apply_tenant(key, value);
    } else {
        dir.apply_key(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
