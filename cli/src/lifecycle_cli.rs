//! `bulkhead tenants update|delete` and `bulkhead keys rotate|revoke|list`:
//! the lifecycle commands, through the control-plane's gRPC API. Key text is
//! printed once (by `rotate`); listings show prefixes, never keys or hashes.
use anyhow::Result;
use bulkhead_proto::common::Isolation;
use bulkhead_proto::control::{KeyInfo, KeyScope, RotateKeyRequest, UpdateTenantRequest};
use clap::Args;

use crate::client::ControlClient;
use crate::remote::{IsolationArg, Remote};

#[derive(Args, Debug)]
pub struct UpdateTenantArgs {
    /// The tenant to change.
    #[arg(long)]
    pub id: String,
    /// New weight (share under contention).
    #[arg(long)]
    pub weight: Option<u32>,
    /// New list of allowed models (replaces the old list).
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// New largest max_tokens per request.
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// New isolation tier.
    #[arg(long, value_enum)]
    pub isolation: Option<IsolationArg>,
    /// New requests-per-second limit (0 = unlimited).
    #[arg(long)]
    pub rps: Option<u32>,
    /// New burst above the steady rate.
    #[arg(long)]
    pub burst: Option<u32>,
    /// New tokens-per-minute limit (0 = unlimited).
    #[arg(long)]
    pub tokens_per_minute: Option<u64>,
    /// New limit of requests in flight (0 = unlimited).
    #[arg(long)]
    pub max_in_flight: Option<u32>,
    /// New limit of requests queued (0 = unlimited).
    #[arg(long)]
    pub max_queued: Option<u32>,
    /// New TTFT quantum in ms (0 = off): the first token is released at the
    /// next multiple of it, to blunt timing side channels.
    #[arg(long)]
    pub ttft_quantum_ms: Option<u32>,
    /// true: never keep this tenant's prompts in a prefix cache; false: cache
    /// them again (per tenant, salted).
    #[arg(long)]
    pub no_prefix_cache: Option<bool>,
    /// New token budget per UTC day (0 = none).
    #[arg(long)]
    pub daily_token_budget: Option<u64>,
    /// New token budget per calendar month, UTC (0 = none).
    #[arg(long)]
    pub monthly_token_budget: Option<u64>,
    /// New prefix-cache TTL of this tenant in seconds (0 = the workers' only).
    #[arg(long)]
    pub prefix_cache_ttl_s: Option<u32>,
}

#[derive(Args, Debug)]
pub struct DeleteTenantArgs {
    /// The tenant to delete; its keys are revoked first.
    #[arg(long)]
    pub id: String,
}

#[derive(Args, Debug)]
pub struct RotateKeyArgs {
    /// Prefix of the key to replace (its first 9 characters, `bh_…`).
    #[arg(long)]
    pub prefix: String,
    /// The key's tenant (needed only when two tenants' keys share a prefix).
    #[arg(long, default_value = "")]
    pub tenant: String,
    /// Lifetime of the new key in days (0 = never expires).
    #[arg(long, default_value_t = 0)]
    pub expires_in_days: u32,
    /// Keep the old key working this long before it expires (0 = revoke now).
    #[arg(long, default_value_t = 0)]
    pub grace_seconds: u32,
}

#[derive(Args, Debug)]
pub struct RevokeKeyArgs {
    /// Prefix of the key to revoke (its first 9 characters, `bh_…`).
    #[arg(long)]
    pub prefix: String,
    /// The key's tenant (needed only when two tenants' keys share a prefix).
    #[arg(long, default_value = "")]
    pub tenant: String,
}

#[derive(Args, Debug)]
pub struct ListKeysArgs {
    /// Only this tenant's keys.
    #[arg(long, default_value = "")]
    pub tenant: String,
}

pub fn isolation(i: IsolationArg) -> Isolation {
    match i {
        IsolationArg::Shared => Isolation::Shared,
        IsolationArg::Process => Isolation::Process,
        IsolationArg::Mig => Isolation::Mig,
        IsolationArg::Dedicated => Isolation::Dedicated,
    }
}

fn scope_name(s: i32) -> &'static str {
    match KeyScope::try_from(s) {
        Ok(KeyScope::Inference) => "inference",
        Ok(KeyScope::TenantAdmin) => "tenant-admin",
        Err(_) => "?",
    }
}

/// The key's state at `now`: active, revoked or expired.
pub fn key_state(k: &KeyInfo, now_ms: i64) -> &'static str {
    if k.revoked {
        "revoked"
    } else if k.expires_unix_ms != 0 && k.expires_unix_ms <= now_ms {
        "expired"
    } else {
        "active"
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 (UTC, seconds) of a Unix-ms time; "never" for 0.
fn when(ms: i64) -> String {
    if ms == 0 {
        return "never".into();
    }
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

pub fn key_json(k: &KeyInfo) -> serde_json::Value {
    serde_json::json!({
        "prefix": k.prefix, "tenant_id": k.tenant_id, "scope": scope_name(k.scope),
        "created_unix_ms": k.created_unix_ms, "expires_unix_ms": k.expires_unix_ms,
        "revoked": k.revoked, "state": key_state(k, now_ms()),
        "daily_token_budget": k.daily_token_budget,
        "monthly_token_budget": k.monthly_token_budget,
    })
}

pub async fn update_tenant(a: UpdateTenantArgs, c: &mut ControlClient, r: &Remote) -> Result<()> {
    let t = c
        .update_tenant(UpdateTenantRequest {
            id: a.id,
            weight: a.weight,
            allowed_models: a.models,
            max_tokens_per_request: a.max_tokens,
            isolation: a.isolation.map(|i| isolation(i) as i32),
            requests_per_second: a.rps,
            burst: a.burst,
            tokens_per_minute: a.tokens_per_minute,
            max_in_flight: a.max_in_flight,
            max_queued: a.max_queued,
            ttft_quantum_ms: a.ttft_quantum_ms,
            no_prefix_cache: a.no_prefix_cache,
            daily_token_budget: a.daily_token_budget,
            monthly_token_budget: a.monthly_token_budget,
            prefix_cache_ttl_s: a.prefix_cache_ttl_s,
        })
        .await?;
    if r.json {
        println!("{}", crate::remote::tenant_json(&t));
    } else {
        println!("tenant {} updated", t.id);
    }
    Ok(())
}

pub async fn delete_tenant(a: DeleteTenantArgs, c: &mut ControlClient, r: &Remote) -> Result<()> {
    let n = c.delete_tenant(&a.id).await?;
    if r.json {
        println!(
            "{}",
            serde_json::json!({"tenant": a.id, "deleted": true, "keys_revoked": n})
        );
    } else {
        println!("tenant {} deleted ({n} keys revoked)", a.id);
    }
    Ok(())
}

pub async fn rotate_key(a: RotateKeyArgs, r: &Remote) -> Result<()> {
    let mut c = ControlClient::connect(&r.control, &r.certs_dir).await?;
    let k = c
        .rotate_key(RotateKeyRequest {
            prefix: a.prefix.clone(),
            tenant_id: a.tenant,
            expires_in_days: a.expires_in_days,
            grace_seconds: a.grace_seconds,
        })
        .await?;
    let old = k.old_key.unwrap_or_default();
    if r.json {
        println!(
            "{}",
            serde_json::json!({"tenant": old.tenant_id, "prefix": k.prefix, "api_key": k.api_key,
                "old_key": key_json(&old), "note": "shown once; Bulkhead keeps only its hash"})
        );
    } else {
        println!("{}", k.api_key);
        let fate = if old.revoked {
            "revoked now".to_string()
        } else {
            format!("expires {}", when(old.expires_unix_ms))
        };
        eprintln!(
            "(new key {}… for {}; old key {}… {fate}; store the new key now — it cannot be shown again)",
            k.prefix, old.tenant_id, a.prefix
        );
    }
    Ok(())
}

pub async fn revoke_key(a: RevokeKeyArgs, r: &Remote) -> Result<()> {
    let mut c = ControlClient::connect(&r.control, &r.certs_dir).await?;
    let k = c.revoke_key(&a.prefix, &a.tenant).await?;
    if r.json {
        println!("{}", key_json(&k));
    } else {
        println!("key {}… of {} revoked", k.prefix, k.tenant_id);
    }
    Ok(())
}

pub async fn list_keys(a: ListKeysArgs, r: &Remote) -> Result<()> {
    let mut c = ControlClient::connect(&r.control, &r.certs_dir).await?;
    let ks = c.list_keys(&a.tenant).await?;
    if r.json {
        println!(
            "{}",
            serde_json::Value::Array(ks.iter().map(key_json).collect())
        );
        return Ok(());
    }
    println!(
        "{:<10} {:<24} {:<12} {:<20} {:<20} state",
        "prefix", "tenant", "scope", "created", "expires"
    );
    let now = now_ms();
    for k in &ks {
        println!(
            "{:<10} {:<24} {:<12} {:<20} {:<20} {}",
            k.prefix,
            k.tenant_id,
            scope_name(k.scope),
            when(k.created_unix_ms),
            when(k.expires_unix_ms),
            key_state(k, now)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_times() {
        let mut k = KeyInfo::default();
        assert_eq!(key_state(&k, 10), "active");
        k.expires_unix_ms = 10;
        assert_eq!(key_state(&k, 10), "expired");
        k.revoked = true;
        assert_eq!(key_state(&k, 0), "revoked");
        assert_eq!(when(0), "never");
        assert_eq!(when(86_400_000), "1970-01-02T00:00:00Z");
    }
}
