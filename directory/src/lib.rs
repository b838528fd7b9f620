//! Tenants and API keys as every Bulkhead service reads them: an in-memory
//! copy of the control-plane's `bulkhead_tenants` and `bulkhead_api_keys`
//! NATS KV buckets, kept current by a watch (no call to the control-plane
//! per request), and the one place a presented key is resolved to a tenant.
//! The router (inference keys) and the audit-service (tenant-admin keys) map
//! [`KeyError`] to their own error shapes.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use async_nats::jetstream;
use async_nats::jetstream::kv;
use bulkhead_proto::Message;
use bulkhead_proto::control::{ApiKeyRecord, KeyScope, Tenant};
use bulkhead_proto::{keys, names};

mod audit_stream;
mod error;
pub use error::NatsError;
mod nats;
pub mod usage;
mod watch;
pub use audit_stream::{
    AUDIT_CONSUMER, AUDIT_DUPLICATE_WINDOW, AUDIT_STREAM_MAX_MESSAGES, audit_consumer_config,
    audit_stream_config, ensure_audit_stream,
};
pub use nats::{connect_nats, connect_nats_as};
pub use watch::{DEFAULT_MAX_STALENESS_MS, sync};

/// A key that resolved: its tenant (the current record) and its prefix.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub tenant: Arc<Tenant>,
    pub key_prefix: String,
    /// The key's own token budgets (0 = none): daily, monthly.
    pub key_token_budgets: (u64, u64),
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
    /// The copy may be missing revocations: refuse rather than trust it.
    #[error(
        "the tenant directory is not current ({0}); refusing rather than trusting keys that may have been revoked"
    )]
    Stale(String),
}

#[derive(Default)]
struct State {
    tenants: HashMap<String, Arc<Tenant>>,
    keys: HashMap<String, ApiKeyRecord>,
}

/// The copy of both buckets, and how current it is.
pub struct Directory {
    state: RwLock<State>,
    /// Bucket watches not running (ended, being restarted).
    watches_down: AtomicU32,
    /// When the NATS connection was lost (Unix ms; 0 = connected).
    disconnected_since_ms: AtomicI64,
    /// How long a lost connection is tolerated before keys are refused.
    max_staleness_ms: AtomicI64,
}

impl Default for Directory {
    fn default() -> Self {
        Self {
            state: RwLock::default(),
            watches_down: AtomicU32::new(0),
            disconnected_since_ms: AtomicI64::new(0),
            max_staleness_ms: AtomicI64::new(DEFAULT_MAX_STALENESS_MS),
        }
    }
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
        if let Some(why) = self.staleness(now_ms()) {
            return Err(KeyError::Stale(why));
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
            key_token_budgets: (record.daily_token_budget, record.monthly_token_budget),
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

    /// Why the copy cannot be trusted at `now_ms`, if it cannot: a bucket
    /// watch is down, or NATS has been unreachable for longer than the
    /// bound ([`Directory::set_max_staleness_ms`]).
    pub fn staleness(&self, now_ms: i64) -> Option<String> {
        if self.watches_down.load(Ordering::Relaxed) > 0 {
            return Some("a KV watch of the tenant or key bucket ended".into());
        }
        let since = self.disconnected_since_ms.load(Ordering::Relaxed);
        let max = self.max_staleness_ms.load(Ordering::Relaxed);
        (since != 0 && now_ms - since > max).then(|| {
            format!(
                "NATS unreachable for {} ms, more than the {max} ms allowed",
                now_ms - since
            )
        })
    }

    /// How long a lost NATS connection is tolerated before every key is
    /// refused (revocations cannot arrive meanwhile).
    pub fn set_max_staleness_ms(&self, ms: i64) {
        self.max_staleness_ms.store(ms.max(0), Ordering::Relaxed);
    }

    /// Records the NATS connection's state at `now_ms`.
    pub fn set_connected(&self, connected: bool, now_ms: i64) {
        if connected {
            self.disconnected_since_ms.store(0, Ordering::Relaxed);
        } else {
            let _ = self.disconnected_since_ms.compare_exchange(
                0,
                now_ms.max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    fn watch_down(&self, down: bool) {
        if down {
            self.watches_down.fetch_add(1, Ordering::Relaxed);
        } else {
            self.watches_down.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Drops every tenant (or key) not in `present` (after a reload, the
    /// deletions missed while a watch was down).
    fn retain(&self, is_tenants: bool, present: &HashSet<String>) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if is_tenants {
            state.tenants.retain(|k, _| present.contains(k));
        } else {
            state.keys.retain(|k, _| present.contains(k));
        }
    }
}

/// Opens (or creates, with the control-plane's settings) a KV bucket.
async fn bucket(js: &jetstream::Context, name: &str) -> Result<kv::Store, NatsError> {
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
    .map_err(|e| NatsError::bucket(name, "creating", e))
}

/// Forbids `Nats-Rollup` headers on a bucket's stream. With rollups
/// allowed, whoever may write one key could purge every other (a router
/// replica wiping the others' heartbeats or usage records with `Nats-Rollup:
/// all` on its own key). The control-plane applies it to the buckets routers
/// write; KV reads, writes and deletes do not need rollups.
pub async fn forbid_rollup(js: &jetstream::Context, bucket: &str) -> Result<(), NatsError> {
    let name = format!("KV_{bucket}");
    let mut s = js
        .get_stream(&name)
        .await
        .map_err(|e| NatsError::bucket(bucket, "reading its stream", e))?;
    let config = s
        .info()
        .await
        .map_err(|e| NatsError::bucket(bucket, "reading its stream", e))?
        .config
        .clone();
    if config.allow_rollup {
        js.update_stream(jetstream::stream::Config {
            allow_rollup: false,
            ..config
        })
        .await
        .map_err(|e| NatsError::bucket(bucket, "forbidding rollups", e))?;
    }
    Ok(())
}

/// Opens (or creates) the `bulkhead_routers` bucket of router heartbeats:
/// in memory, one value per router, values older than a minute dropped.
pub async fn routers_bucket(js: &jetstream::Context) -> Result<kv::Store, NatsError> {
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
    .map_err(|e| NatsError::bucket(name, "creating", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "bh_AbCdEfGhIjKlMnOpQrStUvWxYz012345";

    fn directory() -> Directory {
        let d = Directory::default();
        let t = Tenant {
            id: "acme".into(),
            ..Default::default()
        };
        d.apply_tenant("acme", Some(&t.encode_to_vec()));
        let r = ApiKeyRecord {
            tenant_id: "acme".into(),
            scope: KeyScope::Inference as i32,
            ..Default::default()
        };
        d.apply_key(&keys::key_hash(KEY), Some(&r.encode_to_vec()));
        d
    }

    fn resolve(d: &Directory) -> Result<Resolved, KeyError> {
        d.resolve(Some(&format!("Bearer {KEY}")), KeyScope::Inference)
    }

    #[test]
    fn a_lost_connection_is_tolerated_up_to_the_bound_then_keys_are_refused() {
        let d = directory();
        d.set_max_staleness_ms(10_000);
        assert!(resolve(&d).is_ok());
        d.set_connected(false, 1_000);
        assert_eq!(d.staleness(11_000), None);
        assert!(d.staleness(11_001).unwrap().contains("NATS unreachable"));
        // A second report of the same outage keeps its start.
        d.set_connected(false, 5_000);
        assert!(d.staleness(11_001).is_some());
        d.set_connected(true, 12_000);
        assert_eq!(d.staleness(12_000), None);
        // In real time: an outage that began a minute ago refuses keys.
        d.set_connected(false, now_ms() - 60_000);
        assert!(matches!(resolve(&d), Err(KeyError::Stale(_))));
        d.set_connected(true, now_ms());
        assert!(resolve(&d).is_ok());
    }

    #[test]
    fn a_watch_that_is_down_refuses_every_key_until_it_is_back() {
        let d = directory();
        d.watch_down(true);
        assert!(matches!(resolve(&d), Err(KeyError::Stale(_))));
        d.watch_down(false);
        assert!(resolve(&d).is_ok());
    }

    #[test]
    fn a_reload_drops_what_was_deleted_meanwhile() {
        let d = directory();
        d.retain(true, &HashSet::new());
        assert_eq!(d.tenant_count(), 0);
        assert_eq!(resolve(&d).unwrap_err(), KeyError::TenantGone);
    }
}
