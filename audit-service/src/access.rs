//! Who may read which tenant's audit records. The audit-service keeps an
//! in-memory copy of the control-plane's `bulkhead_tenants` and
//! `bulkhead_api_keys` NATS KV buckets (the same record format and watch as
//! the router's directory): a tenant-admin key resolves to exactly one
//! tenant, and only that tenant's records are served to it.
//!
//! Policy (see `query`): every tenant-scoped read needs
//! `authorization: Bearer <tenant-admin key>`. The only exception is the
//! explicit operator override (`--operator-reads-any-tenant`): a caller with
//! the `operator` SPIFFE certificate and no key may then read any tenant.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use async_nats::jetstream;
use async_nats::jetstream::kv::{self, Operation};
use bulkhead_proto::Message;
use bulkhead_proto::control::{ApiKeyRecord, KeyScope, Tenant};
use bulkhead_proto::{keys, names};
use futures::StreamExt;
use tonic::Status;

/// A caller authenticated by a tenant-admin key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantAdmin {
    pub tenant_id: String,
    pub key_prefix: String,
}

#[derive(Default)]
struct State {
    tenants: HashSet<String>,
    keys: HashMap<String, ApiKeyRecord>,
}

/// Tenants and API keys, as the control-plane publishes them.
#[derive(Default)]
pub struct AccessDirectory {
    state: RwLock<State>,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl AccessDirectory {
    /// Resolves an `authorization` metadata value to a tenant admin.
    /// Unknown, malformed, revoked or expired keys are UNAUTHENTICATED; an
    /// inference key is PERMISSION_DENIED.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<TenantAdmin, Status> {
        let header = authorization.ok_or_else(|| {
            Status::unauthenticated(
                "missing tenant-admin key: send the metadata `authorization: Bearer <tenant-admin key>`",
            )
        })?;
        let key = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, k)| k.trim())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "malformed authorization metadata: expected `Bearer <tenant-admin key>`",
                )
            })?;
        let invalid = || Status::unauthenticated("invalid API key");
        if !keys::well_formed(key) {
            return Err(invalid());
        }
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let record = state.keys.get(&keys::key_hash(key)).ok_or_else(invalid)?;
        if record.revoked {
            return Err(Status::unauthenticated("this API key has been revoked"));
        }
        if record.expires_unix_ms != 0 && record.expires_unix_ms <= now_ms() {
            return Err(Status::unauthenticated("this API key has expired"));
        }
        if record.scope != KeyScope::TenantAdmin as i32 {
            return Err(Status::permission_denied(
                "this is an inference key; audit records need a tenant-admin key",
            ));
        }
        if !state.tenants.contains(&record.tenant_id) {
            return Err(Status::unauthenticated(
                "the tenant of this API key no longer exists",
            ));
        }
        Ok(TenantAdmin {
            tenant_id: record.tenant_id.clone(),
            key_prefix: record.prefix.clone(),
        })
    }

    /// Applies one change of the tenants bucket (`None` = deleted).
    pub fn apply_tenant(&self, id: &str, value: Option<&[u8]>) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        match value.map(Tenant::decode) {
            Some(Ok(t)) if t.id == id => {
                state.tenants.insert(id.to_string());
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
}

/// Opens (or creates, with the control-plane's settings) a KV bucket.
async fn bucket(js: &jetstream::Context, name: &str) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: name.to_string(),
        history: 5,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("KV bucket {name}: {e}"))
}

/// Loads both buckets into `dir`, then keeps it current in the background
/// (a revoked key stops working here as soon as the watch delivers it).
pub async fn sync(js: &jetstream::Context, dir: Arc<AccessDirectory>) -> Result<(), String> {
    for (name, is_tenants) in [
        (names::TENANTS_BUCKET, true),
        (names::API_KEYS_BUCKET, false),
    ] {
        let store = bucket(js, name).await?;
        let err = |e: &dyn std::fmt::Display| format!("KV bucket {name}: {e}");
        // Subscribe first, then load: a change in between is seen by both,
        // and applying the same value twice is harmless.
        let mut watch = store.watch_all().await.map_err(|e| err(&e))?;
        let mut keys = store.keys().await.map_err(|e| err(&e))?;
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| err(&e))?;
            let value = store.get(&key).await.map_err(|e| err(&e))?;
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
            tracing::error!(bucket = name, "KV watch ended; key changes no longer apply");
        });
    }
    Ok(())
}

fn apply(dir: &AccessDirectory, is_tenants: bool, key: &str, value: Option<&[u8]>) {
    if is_tenants {
        dir.apply_tenant(key, value);
    } else {
        dir.apply_key(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
