//! Names shared between services: NATS buckets and subjects, certificate file
//! names. One place, so a producer and its consumer cannot drift apart.

/// JetStream KV bucket with one protobuf `Tenant` per tenant id.
pub const TENANTS_BUCKET: &str = "bulkhead_tenants";
/// JetStream KV bucket with one protobuf `ApiKeyRecord` per hex SHA-256 of a key.
pub const API_KEYS_BUCKET: &str = "bulkhead_api_keys";
/// JetStream KV bucket with one protobuf `RouterHeartbeat` per live router.
pub const ROUTERS_BUCKET: &str = "bulkhead_routers";
/// A router whose heartbeat is older than this is no longer counted live.
pub const ROUTER_STALE_AFTER_MS: i64 = 5_000;
/// How often routers write their heartbeat (the freshness of the slot
/// shares across replicas, see the router's `cluster.rs`).
pub const ROUTER_HEARTBEAT_MS: u64 = 250;
/// JetStream KV bucket with each router replica's usage per tenant and UTC
/// day (protobuf `DayUsage`, keys from [`usage_key`]).
pub const USAGE_BUCKET: &str = "bulkhead_usage";
/// How long usage records are kept (a year and a month: last year's month
/// can still be billed).
pub const USAGE_MAX_AGE_DAYS: u64 = 400;

/// The key of router `router`'s usage record of `tenant` on a UTC day:
/// `m<YYYYMM>.d<DD>.<router>.<tenant>` (both ids are single NATS tokens),
/// so a month's records are watched with [`usage_month_filter`] and a
/// replica's NATS user may write `*.*.<router>.*` only.
pub fn usage_key(year: i32, month: u8, day: u8, router: &str, tenant: &str) -> String {
    format!("m{year:04}{month:02}.d{day:02}.{router}.{tenant}")
}

/// The KV key filter of one month's usage records.
pub fn usage_month_filter(year: i32, month: u8) -> String {
    format!("m{year:04}{month:02}.>")
}

/// The parts of a [`usage_key`]: year, month, day, router, tenant (the
/// numbers as written, not checked to be a date).
pub fn parse_usage_key(key: &str) -> Option<(i32, u8, u8, &str, &str)> {
    let mut it = key.split('.');
    let (m, d, router, tenant) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || !valid_replica_id(router) || !valid_tenant_id(tenant) {
        return None;
    }
    let m = m
        .strip_prefix('m')
        .filter(|m| m.len() == 6 && m.bytes().all(|b| b.is_ascii_digit()))?;
    let d = d
        .strip_prefix('d')
        .filter(|d| d.len() == 2 && d.bytes().all(|b| b.is_ascii_digit()))?;
    Some((
        m[..4].parse().ok()?,
        m[4..].parse().ok()?,
        d.parse().ok()?,
        router,
        tenant,
    ))
}

/// JetStream stream that holds audit events.
pub const AUDIT_STREAM: &str = "BULKHEAD_AUDIT";
/// Subject prefix of audit events; the full subject is `bulkhead.audit.<tenant>`.
pub const AUDIT_SUBJECT_PREFIX: &str = "bulkhead.audit";

/// The audit subject of one tenant.
pub fn audit_subject(tenant_id: &str) -> String {
    format!("{AUDIT_SUBJECT_PREFIX}.{tenant_id}")
}

/// The key a tenant's state (KV blocks, prefix-cache salt, content-hash
/// key) hangs off: its id and its immutable internal id (`Tenant.uid`), so
/// a deleted id created again shares nothing with the old tenant. Records
/// from before the uid existed keep the plain id.
pub fn tenant_key(id: &str, uid: &str) -> String {
    if uid.is_empty() {
        id.to_string()
    } else {
        format!("{id}/{uid}")
    }
}

/// The tenant id part of a [`tenant_key`] (for labels and logs).
pub fn tenant_id_of_key(key: &str) -> &str {
    key.split_once('/').map_or(key, |(id, _)| id)
}

/// Tenant ids are used in NATS subjects, KV keys and file names, so they are
/// restricted to a safe alphabet: 1-64 of `[a-z0-9-_]`, starting with a letter
/// or digit.
pub fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && id.as_bytes()[0].is_ascii_alphanumeric()
}

/// A router replica's id: its key in the heartbeat bucket, the last segment
/// of its SPIFFE id (`.../bulkhead/router/replica/<id>`), its NATS user and
/// its certificate's file name (`router.<id>.pem`), so 1-63 of `[a-z0-9-]`,
/// starting with a letter or digit (a Kubernetes pod name qualifies).
pub fn valid_replica_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && id.as_bytes()[0].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ids() {
        assert!(valid_replica_id("router-0"));
        assert!(valid_replica_id("dev-router-12"));
        for bad in [
            "",
            "-r",
            "Router",
            "r_0",
            "r.0",
            "r*",
            "r>",
            &"r".repeat(64),
        ] {
            assert!(!valid_replica_id(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn tenant_ids() {
        assert!(valid_tenant_id("acme"));
        assert!(valid_tenant_id("team-7_b"));
        for bad in ["", "-x", "Acme", "a.b", "a b", "a*", "a>", &"x".repeat(65)] {
            assert!(!valid_tenant_id(bad), "{bad:?} accepted");
        }
    }
}
