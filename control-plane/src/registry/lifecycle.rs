//! Tenant and key lifecycle on the registry: update and delete tenants;
//! list, revoke and rotate keys (addressed by their public prefix). Every
//! change is a compare-and-set on the KV revision, so concurrent changes
//! never overwrite each other silently. Routers see the changes through
//! their KV watch (`router/src/directory.rs` honours `revoked`,
//! `expires_unix_ms` and a deleted tenant).
use async_nats::jetstream::kv::{self, Operation};
use bulkhead_proto::common::Isolation;
use bulkhead_proto::control::{
    ApiKeyRecord, IssueKeyResponse, KeyInfo, KeyScope, RotateKeyResponse, Tenant,
    UpdateTenantRequest,
};
use bulkhead_proto::{Message, keys, names};
use futures::StreamExt;

use super::{ControlError, Registry, new_key, now_ms, unavailable};

/// Compare-and-set attempts before a change gives up as contended.
const CAS_ATTEMPTS: usize = 8;
/// Longest key lifetime accepted (ten years).
pub const MAX_EXPIRY_DAYS: u32 = 3650;
/// Longest grace period of a rotated key (thirty days).
pub const MAX_GRACE_SECONDS: u32 = 30 * 24 * 3600;

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The public view of a key record: no key, no hash.
pub fn key_info(r: &ApiKeyRecord) -> KeyInfo {
    KeyInfo {
        prefix: r.prefix.clone(),
        tenant_id: r.tenant_id.clone(),
        scope: r.scope,
        created_unix_ms: r.created_unix_ms,
        expires_unix_ms: r.expires_unix_ms,
        revoked: r.revoked,
        daily_token_budget: r.daily_token_budget,
        monthly_token_budget: r.monthly_token_budget,
    }
}

/// Expiry time (Unix ms) of a key issued now for `days` (0 = never).
pub fn expiry_from_days(days: u32, now: i64) -> Result<i64, ControlError> {
    if days > MAX_EXPIRY_DAYS {
        return Err(ControlError::InvalidArgument(format!(
            "expires_in_days must be at most {MAX_EXPIRY_DAYS}"
        )));
    }
    Ok(if days == 0 {
        0
    } else {
        now + i64::from(days) * 86_400_000
    })
}

/// Largest TTFT quantum accepted (a larger one would only add latency).
pub const MAX_TTFT_QUANTUM_MS: u32 = 10_000;

pub fn check_quantum(ms: u32) -> Result<(), ControlError> {
    if ms > MAX_TTFT_QUANTUM_MS {
        return Err(ControlError::InvalidArgument(format!(
            "ttft_quantum_ms must be at most {MAX_TTFT_QUANTUM_MS}"
        )));
    }
    Ok(())
}

/// Applies an update request to a tenant, validating the result.
pub fn apply_update(mut t: Tenant, r: &UpdateTenantRequest) -> Result<Tenant, ControlError> {
    if let Some(v) = r.requests_per_second {
        t.requests_per_second = v;
    }
    if let Some(v) = r.burst {
        t.burst = v;
    }
    if let Some(v) = r.tokens_per_minute {
        t.tokens_per_minute = v;
    }
    if let Some(v) = r.max_in_flight {
        t.max_in_flight = v;
    }
    if let Some(v) = r.max_queued {
        t.max_queued = v;
    }
    if let Some(v) = r.ttft_quantum_ms {
        check_quantum(v)?;
        t.ttft_quantum_ms = v;
    }
    if let Some(v) = r.no_prefix_cache {
        t.no_prefix_cache = v;
    }
    if let Some(v) = r.daily_token_budget {
        t.daily_token_budget = v;
    }
    if let Some(v) = r.monthly_token_budget {
        t.monthly_token_budget = v;
    }
    if let Some(v) = r.prefix_cache_ttl_s {
        t.prefix_cache_ttl_s = v;
    }
    if let Some(w) = r.weight {
        t.weight = w.max(1);
    }
    if !r.allowed_models.is_empty() {
        if r.allowed_models
            .iter()
            .any(|m| m.is_empty() || m.len() > 128)
        {
            return Err(ControlError::InvalidArgument(
                "model names must be 1-128 characters".into(),
            ));
        }
        t.allowed_models = r.allowed_models.clone();
    }
    if let Some(m) = r.max_tokens_per_request {
        if m == 0 {
            return Err(ControlError::InvalidArgument(
                "max_tokens_per_request must be at least 1".into(),
            ));
        }
        t.max_tokens_per_request = m;
    }
    if let Some(i) = r.isolation {
        if Isolation::try_from(i).is_err() {
            return Err(ControlError::InvalidArgument(format!(
                "unknown isolation {i}"
            )));
        }
        t.isolation = i;
    }
    Ok(t)
}

fn not_found_tenant(id: &str) -> ControlError {
    ControlError::NotFound(format!("no tenant {:?}", short(id)))
}

impl Registry {
    /// The current value and revision of `key` in `store` (`None` when absent or deleted).
    async fn current(store: &kv::Store, key: &str) -> Result<Option<(Vec<u8>, u64)>, ControlError> {
        match store.entry(key).await.map_err(unavailable)? {
            Some(e) if e.operation == Operation::Put => Ok(Some((e.value.to_vec(), e.revision))),
            _ => Ok(None),
        }
    }

    /// Changes the given fields of a tenant.
    pub async fn update_tenant(&self, r: UpdateTenantRequest) -> Result<Tenant, ControlError> {
        if !names::valid_tenant_id(&r.id) {
            return Err(not_found_tenant(&r.id));
        }
        for _ in 0..CAS_ATTEMPTS {
            let Some((bytes, rev)) = Self::current(&self.tenants, &r.id).await? else {
                return Err(not_found_tenant(&r.id));
            };
            let old = Tenant::decode(bytes.as_slice())
                .map_err(|e| ControlError::Unavailable(format!("corrupt tenant record: {e}")))?;
            let t = apply_update(old, &r)?;
            match self
                .tenants
                .update(&r.id, t.encode_to_vec().into(), rev)
                .await
            {
                Ok(_) => return Ok(t),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(ControlError::Unavailable(
            "tenant changed concurrently too often; try again".into(),
        ))
    }

    /// Revokes every key of the tenant, then deletes the tenant record.
    /// Returns how many keys were newly revoked.
    pub async fn delete_tenant(&self, id: &str) -> Result<u32, ControlError> {
        if self.get_tenant(id).await?.is_none() {
            return Err(not_found_tenant(id));
        }
        let mut n = 0;
        for (hash, rec) in self.key_records().await? {
            if rec.tenant_id == id && !rec.revoked && self.revoke_hash(&hash, None).await? {
                n += 1;
            }
        }
        self.tenants.delete(id).await.map_err(unavailable)?;
        Ok(n)
    }

    /// Every key record with the hash it is stored under (internal only).
    async fn key_records(&self) -> Result<Vec<(String, ApiKeyRecord)>, ControlError> {
        let mut hashes = vec![];
        let mut it = self.keys.keys().await.map_err(unavailable)?;
        while let Some(k) = it.next().await {
            hashes.push(k.map_err(unavailable)?);
        }
        let mut out = vec![];
        for h in hashes {
            if let Some(v) = self.keys.get(&h).await.map_err(unavailable)?
                && let Ok(r) = ApiKeyRecord::decode(v.as_ref())
            {
                out.push((h, r));
            }
        }
        Ok(out)
    }

    /// Key records of one tenant (or all when `tenant_id` is empty), oldest first.
    pub async fn list_keys(&self, tenant_id: &str) -> Result<Vec<KeyInfo>, ControlError> {
        let mut out: Vec<KeyInfo> = self
            .key_records()
            .await?
            .iter()
            .filter(|(_, r)| tenant_id.is_empty() || r.tenant_id == tenant_id)
            .map(|(_, r)| key_info(r))
            .collect();
        out.sort_by(|a, b| {
            (&a.tenant_id, a.created_unix_ms, &a.prefix).cmp(&(
                &b.tenant_id,
                b.created_unix_ms,
                &b.prefix,
            ))
        });
        Ok(out)
    }

    /// The one key with this prefix (and tenant, when given).
    async fn find_by_prefix(
        &self,
        prefix: &str,
        tenant_id: &str,
    ) -> Result<(String, ApiKeyRecord), ControlError> {
        if prefix.len() != keys::PREFIX_LEN || !prefix.starts_with(keys::KEY_PREFIX) {
            return Err(ControlError::InvalidArgument(format!(
                "a key prefix is the first {} characters of the key (bh_ and 6 more), got {:?}",
                keys::PREFIX_LEN,
                short(prefix)
            )));
        }
        let mut hits: Vec<_> = self
            .key_records()
            .await?
            .into_iter()
            .filter(|(_, r)| {
                r.prefix == prefix && (tenant_id.is_empty() || r.tenant_id == tenant_id)
            })
            .collect();
        match hits.len() {
            0 => Err(ControlError::NotFound(format!(
                "no key with prefix {prefix}{}",
                if tenant_id.is_empty() {
                    String::new()
                } else {
                    format!(" for tenant {}", short(tenant_id))
                }
            ))),
            1 => Ok(hits.remove(0)),
            n => Err(ControlError::InvalidArgument(format!(
                "{n} keys share prefix {prefix}; name the tenant to choose one"
            ))),
        }
    }

    /// Marks the record under `hash` revoked (or, with `expire_at`, expiring
    /// then). Returns false when it was already revoked.
    async fn revoke_hash(&self, hash: &str, expire_at: Option<i64>) -> Result<bool, ControlError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some((bytes, rev)) = Self::current(&self.keys, hash).await? else {
                return Ok(false);
            };
            let Ok(mut r) = ApiKeyRecord::decode(bytes.as_slice()) else {
                return Ok(false);
            };
            if r.revoked {
                return Ok(false);
            }
            match expire_at {
                None => r.revoked = true,
                Some(t) => {
                    if r.expires_unix_ms != 0 && r.expires_unix_ms <= t {
                        return Ok(false); // already expires sooner
                    }
                    r.expires_unix_ms = t;
                }
            }
            match self.keys.update(hash, r.encode_to_vec().into(), rev).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(ControlError::Unavailable(
            "key changed concurrently too often; try again".into(),
        ))
    }

    /// Revokes the key with this prefix; revoking twice is harmless.
    pub async fn revoke_key(&self, prefix: &str, tenant_id: &str) -> Result<KeyInfo, ControlError> {
        let (hash, _) = self.find_by_prefix(prefix, tenant_id).await?;
        self.revoke_hash(&hash, None).await?;
        let (_, rec) = self.find_by_prefix(prefix, tenant_id).await?;
        Ok(key_info(&rec))
    }

    /// Issues a key expiring `expires_in_days` from now (0 = never).
    pub async fn issue_key_expiring(
        &self,
        tenant_id: &str,
        scope: KeyScope,
        expires_in_days: u32,
    ) -> Result<IssueKeyResponse, ControlError> {
        self.issue_key_budgeted(tenant_id, scope, expires_in_days, (0, 0))
            .await
    }

    /// Issues a key expiring `expires_in_days` from now (0 = never), with
    /// its own daily and monthly token budgets (0 = none).
    pub async fn issue_key_budgeted(
        &self,
        tenant_id: &str,
        scope: KeyScope,
        expires_in_days: u32,
        (daily_token_budget, monthly_token_budget): (u64, u64),
    ) -> Result<IssueKeyResponse, ControlError> {
        let now = now_ms();
        let expires_unix_ms = expiry_from_days(expires_in_days, now)?;
        if self.get_tenant(tenant_id).await?.is_none() {
            return Err(not_found_tenant(tenant_id));
        }
        let key = new_key();
        let record = ApiKeyRecord {
            prefix: keys::key_prefix(&key),
            tenant_id: tenant_id.to_string(),
            scope: scope as i32,
            created_unix_ms: now,
            expires_unix_ms,
            revoked: false,
            daily_token_budget,
            monthly_token_budget,
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

    /// Issues a replacement key (same tenant and scope), then revokes the old
    /// one at once or lets it expire after `grace_seconds`.
    pub async fn rotate_key(
        &self,
        prefix: &str,
        tenant_id: &str,
        expires_in_days: u32,
        grace_seconds: u32,
    ) -> Result<RotateKeyResponse, ControlError> {
        if grace_seconds > MAX_GRACE_SECONDS {
            return Err(ControlError::InvalidArgument(format!(
                "grace_seconds must be at most {MAX_GRACE_SECONDS}"
            )));
        }
        let (hash, old) = self.find_by_prefix(prefix, tenant_id).await?;
        if old.revoked {
            return Err(ControlError::InvalidArgument(format!(
                "key {prefix} is revoked; issue a new key instead"
            )));
        }
        let scope = KeyScope::try_from(old.scope).unwrap_or(KeyScope::Inference);
        // The new key keeps the old one's budgets.
        let budgets = (old.daily_token_budget, old.monthly_token_budget);
        let new = self
            .issue_key_budgeted(&old.tenant_id, scope, expires_in_days, budgets)
            .await?;
        let grace = (grace_seconds > 0).then(|| now_ms() + i64::from(grace_seconds) * 1000);
        self.revoke_hash(&hash, grace).await?;
        let (_, old) = self.find_by_prefix(prefix, &old.tenant_id).await?;
        Ok(RotateKeyResponse {
            api_key: new.api_key,
            prefix: new.prefix,
            old_key: Some(key_info(&old)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Tenant {
        Tenant {
            id: "a".into(),
            weight: 2,
            allowed_models: vec!["m".into()],
            max_tokens_per_request: 10,
            ..Default::default()
        }
    }

    #[test]
    fn update_changes_only_given_fields() {
        let r = UpdateTenantRequest {
            id: "a".into(),
            weight: Some(0),
            max_tokens_per_request: Some(99),
            ..Default::default()
        };
        let u = apply_update(t(), &r).unwrap();
        assert_eq!((u.weight, u.max_tokens_per_request), (1, 99));
        assert_eq!(u.allowed_models, ["m"]);
        let bad = UpdateTenantRequest {
            max_tokens_per_request: Some(0),
            ..Default::default()
        };
        assert!(apply_update(t(), &bad).is_err());
        let bad = UpdateTenantRequest {
            isolation: Some(42),
            ..Default::default()
        };
        assert!(apply_update(t(), &bad).is_err());
        let bad = UpdateTenantRequest {
            allowed_models: vec![String::new()],
            ..Default::default()
        };
        assert!(apply_update(t(), &bad).is_err());
        let bad = UpdateTenantRequest {
            ttft_quantum_ms: Some(MAX_TTFT_QUANTUM_MS + 1),
            ..Default::default()
        };
        assert!(apply_update(t(), &bad).is_err());
        // Limits change only when given; 0 turns one off.
        let lim = UpdateTenantRequest {
            max_in_flight: Some(3),
            tokens_per_minute: Some(0),
            ..Default::default()
        };
        let u = apply_update(t(), &lim).unwrap();
        assert_eq!((u.max_in_flight, u.tokens_per_minute), (3, 0));
    }

    #[test]
    fn expiry_days() {
        assert_eq!(expiry_from_days(0, 5).unwrap(), 0);
        assert_eq!(expiry_from_days(1, 5).unwrap(), 5 + 86_400_000);
        assert!(expiry_from_days(MAX_EXPIRY_DAYS + 1, 5).is_err());
    }
}
