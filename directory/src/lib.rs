//! Tenants and API keys as every Bulkhead service reads them: an in-memory
//! copy of the control-plane's `bulkhead_tenants` and `bulkhead_api_keys`
//! NATS KV buckets, kept current by a watch (no call to the control-plane
//! per request), and the one place a presented key is resolved to a tenant.
//! The router (inference keys) and the audit-service (tenant-admin keys) map
//! [`KeyError`] to their own error shapes.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream;
use async_nats::jetstream::kv::{self, Operation};
use bulkhead_proto::Message;
use bulkhead_proto::control::{ApiKeyRecord, KeyScope, Tenant};
use bulkhead_proto::{keys, names};
use futures::StreamExt;

mod audit_stream;
mod nats;
pub use audit_stream::{
    AUDIT_CONSUMER, AUDIT_DUPLICATE_WINDOW, AUDIT_STREAM_MAX_MESSAGES, audit_consumer_config,
    audit_stream_config, ensure_audit_stream,
};
pub use nats::connect_nats;

/// A key that resolved: its tenant (the current record) and its prefix.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub tenant: Arc<Tenant>,
    pub key_prefix: String,
}

/// Why a presented key does not resolve.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("missing API key")]
    Missing,
    #[error("malformed authorization: expected `Bearer <key>`")]
    Malformed,
    #[error("invalid API key")]
    Invalid,
    #[error("this API key has been revoked")]
    Revoked,
    #[error("this API key has expired")]
    Expired,
    /// A valid key of another scope than the one asked for.
    #[error("this key's scope does not allow this")]
    WrongScope,
    #[error("the tenant of this API key no longer exists")]
    TenantGone,
}

#[derive(Default)]
struct State {
    tenants: HashMap<String, Arc<Tenant>>,
    keys: HashMap<String, ApiKeyRecord>,
}

/// The copy of both buckets.
#[derive(Default)]
pub struct Directory {
    state: RwLock<State>,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Directory {
    /// Resolves an `authorization` value (`Bearer <key>`) to a tenant; the
    /// key must be of `scope`, unrevoked, unexpired, and its tenant must exist.
    pub fn resolve(
        &self,
        authorization: Option<&str>,
        scope: KeyScope,
    ) -> Result<Resolved, KeyError> {
        let header = authorization.ok_or(KeyError::Missing)?;
        let key = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, k)| k.trim())
            .ok_or(KeyError::Malformed)?;
        if !keys::well_formed(key) {
            return Err(KeyError::Invalid);
        }
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let record = state
            .keys
            .get(&keys::key_hash(key))
            .ok_or(KeyError::Invalid)?;
        if record.revoked {
            return Err(KeyError::Revoked);
        }
        if record.expires_unix_ms != 0 && record.expires_unix_ms <= now_ms() {
            return Err(KeyError::Expired);
        }
        if record.scope != scope as i32 {
            return Err(KeyError::WrongScope);
        }
        let tenant = state
            .tenants
            .get(&record.tenant_id)
            .cloned()
            .ok_or(KeyError::TenantGone)?;
        Ok(Resolved {
            tenant,
            key_prefix: record.prefix.clone(),
        })
    }

    /// Applies one change of the tenants bucket (`None` = deleted). A record
    /// whose id disagrees with its key is not trusted.
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

/// Opens (or creates) the `bulkhead_routers` bucket of router heartbeats:
/// in memory, one value per router, values older than a minute dropped.
pub async fn routers_bucket(js: &jetstream::Context) -> Result<kv::Store, String> {
    let name = names::ROUTERS_BUCKET;
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: name.to_string(),
        history: 1,
        max_age: std::time::Duration::from_secs(60),
        storage: jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("KV bucket {name}: {e}"))
}

/// Loads both buckets into `dir`, then keeps it current in the background
/// (a revoked key stops working as soon as the watch delivers the change).
pub async fn sync(js: &jetstream::Context, dir: Arc<Directory>) -> Result<(), String> {
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

fn apply(dir: &Directory, is_tenants: bool, key: &str, value: Option<&[u8]>) {
    if is_tenants {
        dir.apply_tenant(key, value);
    } else {
        dir.apply_key(key, value);
    }
}
