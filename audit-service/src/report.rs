//! The compliance report: figures computed from a tenant's stored records.
use std::collections::{BTreeMap, BTreeSet};

use bulkhead_proto::audit::{AuditEvent, AuditReport};

/// Status of a recorded, refused audit-API access attempt.
pub const DENIED: &str = "denied";

pub const RETENTION: &str = "Records are kept append-only with no automatic expiry; a tenant's \
records are erased only by crypto-shredding its data keys (every key epoch), after which they cannot be decrypted \
while the hash chain still verifies.";
pub const ENCRYPTION: &str = "Each record is encrypted with AES-256-GCM under the tenant's own \
data key (random 96-bit nonce; tenant, sequence number, key epoch and previous chain hash as \
associated data); a tenant's data key is rotated to a new epoch long before 2^32 encryptions \
(by default after 2^24 records, never more than 2^28), and data keys are wrapped by the \
audit-service master key. Records hold content hashes (keyed HMAC-SHA-256), never prompt or \
response text. Each tenant's records form a SHA-256 hash chain across append-only segment \
files, each closed segment carrying an Ed25519-signed checkpoint.";

/// Nearest-rank percentile of sorted values (0 when empty).
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Computes the report over `events` whose timestamp lies in `from..=to`.
pub fn compute<'a>(
    tenant: &str,
    from: i64,
    to: i64,
    events: impl IntoIterator<Item = &'a AuditEvent>,
    chain_intact: bool,
    now_ms: i64,
) -> AuditReport {
    let mut r = AuditReport {
        tenant_id: tenant.to_string(),
        from_unix_ms: from,
        to_unix_ms: to,
        generated_unix_ms: now_ms,
        chain_intact,
        retention_statement: RETENTION.into(),
        encryption_statement: ENCRYPTION.into(),
        ..Default::default()
    };
    let mut latencies = vec![];
    let mut prefixes = BTreeSet::new();
    let mut by_code = BTreeMap::new();
    for e in events
        .into_iter()
        .filter(|e| e.timestamp_unix_ms >= from && e.timestamp_unix_ms <= to)
    {
        r.total_records += 1;
        if !e.api_key_prefix.is_empty() {
            prefixes.insert(e.api_key_prefix.clone());
        }
        if e.status == DENIED {
            r.denied_access_attempts += 1;
            continue;
        }
        r.requests += 1;
        if e.status == "ok" {
            r.succeeded += 1;
        } else {
            r.failed += 1;
            let code = if e.error_code.is_empty() {
                e.status.clone()
            } else {
                e.error_code.clone()
            };
            *by_code.entry(code).or_insert(0u64) += 1;
        }
        latencies.push(e.latency_us);
        r.input_tokens += u64::from(e.prompt_tokens);
        r.output_tokens += u64::from(e.completion_tokens);
    }
    latencies.sort_unstable();
    r.latency_p50_us = percentile(&latencies, 50.0);
    r.latency_p99_us = percentile(&latencies, 99.0);
    if r.requests > 0 {
        r.success_rate = r.succeeded as f64 / r.requests as f64;
        r.error_rate = r.failed as f64 / r.requests as f64;
    }
    r.key_prefixes = prefixes.into_iter().collect();
    r.errors_by_code = by_code.into_iter().collect();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: i64, status: &str, lat: u64, key: &str) -> AuditEvent {
        AuditEvent {
            timestamp_unix_ms: ts,
            status: status.into(),
            error_code: if status == "ok" { "" } else { "Internal" }.into(),
            latency_us: lat,
            prompt_tokens: 3,
            completion_tokens: 5,
            api_key_prefix: key.into(),
            ..Default::default()
        }
    }

    #[test]
    fn figures_over_a_window() {
        let mut evs: Vec<AuditEvent> = (1..=100)
            .map(|i| ev(i, "ok", i as u64 * 10, "bh_aaaaaa"))
            .collect();
        evs.push(ev(50, "error", 5, "bh_bbbbbb"));
        evs.push(ev(51, DENIED, 0, "bh_cccccc"));
        evs.push(ev(500, "ok", 1, "bh_dddddd")); // outside the window
        let r = compute("acme", 1, 100, &evs, true, 7);
        assert_eq!(r.total_records, 102);
        assert_eq!(r.requests, 101);
        assert_eq!(
            (r.succeeded, r.failed, r.denied_access_attempts),
            (100, 1, 1)
        );
        assert!((r.success_rate - 100.0 / 101.0).abs() < 1e-9);
        assert_eq!(r.latency_p50_us, 500);
        assert_eq!(r.latency_p99_us, 990);
        assert_eq!((r.input_tokens, r.output_tokens), (303, 505));
        assert_eq!(r.key_prefixes, ["bh_aaaaaa", "bh_bbbbbb", "bh_cccccc"]);
        assert_eq!(r.errors_by_code.get("Internal"), Some(&1));
        let empty = compute("acme", 0, 0, &[], true, 0);
        assert_eq!(
            (empty.requests, empty.success_rate, empty.latency_p99_us),
            (0, 0.0, 0)
        );
    }
}
