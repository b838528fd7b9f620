//! Tenants and API keys in NATS JetStream KV — the state routers watch.
//! `bulkhead_tenants`: tenant id -> protobuf `Tenant`.
//! `bulkhead_api_keys`: hex SHA-256 of a key -> protobuf `ApiKeyRecord`.
//! A key's text exists only in the reply to `issue_key`.
use async_nats::jetstream::{self, kv};
use bulkhead_proto::control::{
    ApiKeyRecord, CreateTenantRequest, IssueKeyResponse, KeyScope, Tenant,
};
use bulkhead_proto::{Message, keys, names};
use futures::StreamExt;
use rand::Rng;

mod lifecycle;
mod usage;
pub use lifecycle::{MAX_EXPIRY_DAYS, MAX_GRACE_SECONDS, key_info};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
    #[error("NATS is unavailable: {0}")]
    Unavailable(String),
}

impl From<ControlError> for tonic::Status {
    fn from(e: ControlError) -> Self {
        let msg = e.to_string();
        match e {
            ControlError::InvalidArgument(_) => Self::invalid_argument(msg),
            ControlError::AlreadyExists(_) => Self::already_exists(msg),
            ControlError::NotFound(_) => Self::not_found(msg),
            ControlError::Unavailable(_) => Self::unavailable(msg),
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> ControlError {
    ControlError::Unavailable(e.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct Registry {
    tenants: kv::Store,
    keys: kv::Store,
    routers: kv::Store,
    /// The router replicas' usage records (`bulkhead_directory::usage`).
    usage: kv::Store,
}

async fn bucket(js: &jetstream::Context, name: &str) -> Result<kv::Store, ControlError> {
    if let Ok(s) = js.get_key_value(name).await {
        return Ok(s);
    }
    js.create_key_value(kv::Config {
        bucket: name.to_string(),
        history: 5,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(unavailable)
}

/// A new key: `bh_` + 32 base62 characters from the OS-seeded CSPRNG.
fn new_key() -> String {
    let mut rng = rand::rng();
    let body: String = (0..32)
        .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
        .collect();
    format!("{}{body}", keys::KEY_PREFIX)
}

impl Registry {
    /// Opens the buckets, creating them when missing; the buckets router
    /// replicas write allow no rollups (`forbid_rollup`).
    pub async fn open(js: &jetstream::Context) -> Result<Self, ControlError> {
        let registry = Self {
            tenants: bucket(js, names::TENANTS_BUCKET).await?,
            keys: bucket(js, names::API_KEYS_BUCKET).await?,
            routers: bulkhead_directory::routers_bucket(js)
                .await
                .map_err(|e| ControlError::Unavailable(e.chain()))?,
            usage: bulkhead_directory::usage::usage_bucket(js, true)
                .await
                .map_err(|e| ControlError::Unavailable(e.chain()))?,
        };
        for b in [names::ROUTERS_BUCKET, names::USAGE_BUCKET] {
            bulkhead_directory::forbid_rollup(js, b)
                .await
                .map_err(|e| ControlError::Unavailable(e.chain()))?;
        }
        Ok(registry)
    }

    /// The routers whose heartbeat is younger than `stale_after_ms` at
    /// `now_ms`, sorted by id.
    pub async fn live_routers(
        &self,
        now_ms: i64,
        stale_after_ms: i64,
    ) -> Result<Vec<bulkhead_proto::control::RouterHeartbeat>, ControlError> {
        use bulkhead_proto::Message;
        let mut ids = vec![];
        let mut keys = self.routers.keys().await.map_err(unavailable)?;
        while let Some(k) = keys.next().await {
            ids.push(k.map_err(unavailable)?);
        }
        ids.sort();
        let mut out = vec![];
        for id in ids {
            let Some(v) = self.routers.get(&id).await.map_err(unavailable)? else {
                continue;
            };
            match bulkhead_proto::control::RouterHeartbeat::decode(&v[..]) {
                Ok(hb) if now_ms - hb.sent_unix_ms <= stale_after_ms => out.push(hb),
                Ok(_) => {}
                Err(e) => tracing::warn!(router = %id, error = %e, "undecodable router heartbeat"),
            }
        }
        Ok(out)
    }

    pub async fn create_tenant(&self, r: CreateTenantRequest) -> Result<Tenant, ControlError> {
        if !names::valid_tenant_id(&r.id) {
            return Err(ControlError::InvalidArgument(format!(
                "invalid tenant id {:?}: 1-64 characters of [a-z0-9-_], starting with a letter or digit",
                r.id.chars().take(80).collect::<String>()
            )));
        }
        if r.allowed_models.is_empty()
            || r.allowed_models
                .iter()
                .any(|m| m.is_empty() || m.len() > 128)
        {
            return Err(ControlError::InvalidArgument(
                "allowed_models must list at least one model name (1-128 characters each)".into(),
            ));
        }
        if r.max_tokens_per_request == 0 {
            return Err(ControlError::InvalidArgument(
                "max_tokens_per_request must be at least 1".into(),
            ));
        }
        let tenant = Tenant {
            id: r.id.clone(),
            weight: r.weight.max(1),
            allowed_models: r.allowed_models,
            max_tokens_per_request: r.max_tokens_per_request,
            isolation: r.isolation,
            created_unix_ms: now_ms(),
            requests_per_second: r.requests_per_second,
            burst: r.burst,
            tokens_per_minute: r.tokens_per_minute,
            max_in_flight: r.max_in_flight,
            max_queued: r.max_queued,
            ttft_quantum_ms: r.ttft_quantum_ms,
            uid: uuid::Uuid::new_v4().to_string(),
            no_prefix_cache: r.no_prefix_cache,
            daily_token_budget: r.daily_token_budget,
            monthly_token_budget: r.monthly_token_budget,
            prefix_cache_ttl_s: r.prefix_cache_ttl_s,
        };
        lifecycle::check_quantum(tenant.ttft_quantum_ms)?;
        // `create` fails if the key exists, so two racing creates cannot both win.
        match self
            .tenants
            .create(&r.id, tenant.encode_to_vec().into())
            .await
        {
            Ok(_) => Ok(tenant),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(
                ControlError::AlreadyExists(format!("tenant {} already exists", r.id)),
            ),
            Err(e) => Err(unavailable(e)),
        }
    }

    pub async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>, ControlError> {
        if !names::valid_tenant_id(id) {
            return Ok(None);
        }
        let Some(bytes) = self.tenants.get(id).await.map_err(unavailable)? else {
            return Ok(None);
        };
        Ok(Tenant::decode(bytes.as_ref()).ok())
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, ControlError> {
        let mut ids = vec![];
        let mut keys = self.tenants.keys().await.map_err(unavailable)?;
        while let Some(k) = keys.next().await {
            ids.push(k.map_err(unavailable)?);
        }
        ids.sort();
        let mut out = vec![];
        for id in ids {
            if let Some(t) = self.get_tenant(&id).await? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Issues a key; its text is returned here and nowhere else.
    pub async fn issue_key(
        &self,
        tenant_id: &str,
        scope: KeyScope,
    ) -> Result<IssueKeyResponse, ControlError> {
        if self.get_tenant(tenant_id).await?.is_none() {
            return Err(ControlError::NotFound(format!(
                "no tenant {:?}",
                tenant_id.chars().take(80).collect::<String>()
            )));
        }
        let key = new_key();
        let record = ApiKeyRecord {
            prefix: keys::key_prefix(&key),
            tenant_id: tenant_id.to_string(),
            scope: scope as i32,
            created_unix_ms: now_ms(),
            expires_unix_ms: 0,
            revoked: false,
            ..Default::default()
        };
        self.keys
            .create(keys::key_hash(&key), record.encode_to_vec().into())
            .await
            .map_err(unavailable)?;
        Ok(IssueKeyResponse {
            prefix: record.prefix,
            api_key: key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_well_formed_and_distinct() {
        let a = new_key();
        assert!(keys::well_formed(&a), "{a}");
        assert_eq!(a.len(), 35);
        assert_ne!(a, new_key());
    }
}
