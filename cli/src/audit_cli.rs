//! `bulkhead audit …`: a tenant's audit records and its compliance report,
//! from the audit-service over mTLS (operator certificate). Every tenant read
//! also sends the tenant's admin key (`--key` or BULKHEAD_TENANT_ADMIN_KEY)
//! as `authorization: Bearer …`; the audit-service serves only that key's
//! own tenant. `bulkhead audit shred --tenant T` crypto-shreds a tenant
//! through the audit-service's operator-only admin API (the operator
//! certificate is the authorization; no tenant key).
use anyhow::{Context, Result};
use bulkhead_proto::audit::audit_admin_client::AuditAdminClient;
use bulkhead_proto::audit::audit_query_client::AuditQueryClient;
use bulkhead_proto::audit::{
    AuditEvent, AuditQueryRequest, AuditReport, AuditReportRequest, HeadsRequest, ShredRequest,
    ShredResponse,
};
use clap::{Args, Subcommand, ValueEnum};
use tonic::Request;
use tonic::metadata::MetadataValue;

use crate::client::mtls_channel;
use crate::remote::Remote;

/// The tenant-admin key that scopes every audit read.
#[derive(Args, Debug, Clone)]
pub struct AdminKey {
    /// The tenant's tenant-admin API key (issued with
    /// `bulkhead keys issue --scope tenant-admin`).
    #[arg(
        long = "key",
        env = "BULKHEAD_TENANT_ADMIN_KEY",
        hide_env_values = true
    )]
    pub key: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    #[default]
    Markdown,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// A tenant's audit records (hashes and figures, never content).
    Query {
        /// The tenant whose records to show.
        #[arg(long)]
        tenant: String,
        /// Only records at or after this time (Unix ms).
        #[arg(long, default_value_t = 0)]
        from_ms: i64,
        /// Only records at or before this time (Unix ms; 0 = now).
        #[arg(long, default_value_t = 0)]
        to_ms: i64,
        /// Records per page (the service caps it at 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue from a previous page (printed as `next page: ...`).
        #[arg(long, default_value = "")]
        page_token: String,
        #[command(flatten)]
        key: AdminKey,
    },
    /// A compliance report for a tenant and period, computed from the stored
    /// records: totals, success/error rates, P50/P99 latency, tokens, key
    /// prefixes, retention and encryption.
    Report {
        /// The tenant to report on.
        #[arg(long)]
        tenant: String,
        /// Start of the period (Unix ms).
        #[arg(long, default_value_t = 0)]
        from_ms: i64,
        /// End of the period (Unix ms; 0 = now).
        #[arg(long, default_value_t = 0)]
        to_ms: i64,
        /// Output form (`--json` also selects JSON).
        #[arg(long, value_enum, default_value = "markdown")]
        format: ReportFormat,
        #[command(flatten)]
        key: AdminKey,
    },
    /// Crypto-shred a tenant's audit records: the audit-service destroys
    /// every one of the tenant's data keys, so its records can never be
    /// decrypted again (the hash chain still verifies) and new events for
    /// it are refused. Irreversible. Operator certificate only.
    Shred {
        /// The tenant whose records to make unrecoverable.
        #[arg(long)]
        tenant: String,
    },
    /// Export the latest signed head of each tenant's log (or of one), one
    /// JSON object per line, to keep off the audit host: `bulkhead-audit
    /// verify --head FILE` later proves each log still holds what its head
    /// signed (no rewrite, no truncation). Operator certificate only.
    Heads {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Append the heads to this file (default: standard output).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

/// The one-line outcome of a shred.
pub fn shred_line(r: &ShredResponse) -> String {
    if r.already_shredded {
        format!(
            "{}: already shredded ({} records, unreadable)",
            r.tenant_id, r.records
        )
    } else {
        format!(
            "{}: {} data key(s) destroyed; its {} audit records are now unrecoverable (the chain still verifies)",
            r.tenant_id, r.keys_destroyed, r.records
        )
    }
}

/// A request carrying the admin key (if any) as bearer metadata.
fn with_key<T>(msg: T, key: &AdminKey) -> Result<Request<T>> {
    let mut req = Request::new(msg);
    if let Some(k) = key.key.as_deref().map(str::trim).filter(|k| !k.is_empty()) {
        let v: MetadataValue<_> = format!("Bearer {k}")
            .parse()
            .context("the tenant-admin key has characters that cannot be sent")?;
        req.metadata_mut().insert("authorization", v);
    }
    Ok(req)
}

pub fn event_json(e: &AuditEvent) -> serde_json::Value {
    serde_json::json!({
        "request_id": e.request_id, "tenant_id": e.tenant_id, "model": e.model,
        "timestamp_unix_ms": e.timestamp_unix_ms, "status": e.status, "error_code": e.error_code,
        "prompt_tokens": e.prompt_tokens, "completion_tokens": e.completion_tokens,
        "cached_tokens": e.cached_tokens, "ttft_us": e.ttft_us, "latency_us": e.latency_us,
        "worker_id": e.worker_id, "routing_decision": e.routing_decision,
        "prompt_hash": e.prompt_hash, "response_hash": e.response_hash,
        "api_key_prefix": e.api_key_prefix, "protocol": e.protocol,
        "finish_reason": e.finish_reason, "source_addr": e.source_addr,
    })
}

/// The report as JSON.
pub fn report_json(r: &AuditReport) -> serde_json::Value {
    serde_json::json!({
        "tenant_id": r.tenant_id,
        "period": {"from_unix_ms": r.from_unix_ms, "to_unix_ms": r.to_unix_ms},
        "generated_unix_ms": r.generated_unix_ms,
        "total_records": r.total_records,
        "requests": r.requests,
        "succeeded": r.succeeded,
        "failed": r.failed,
        "success_rate": r.success_rate,
        "error_rate": r.error_rate,
        "errors_by_code": r.errors_by_code,
        "latency_us": {"p50": r.latency_p50_us, "p99": r.latency_p99_us},
        "tokens": {"input": r.input_tokens, "output": r.output_tokens},
        "key_prefixes": r.key_prefixes,
        "denied_access_attempts": r.denied_access_attempts,
        "chain_intact": r.chain_intact,
        "retention": r.retention_statement,
        "encryption": r.encryption_statement,
    })
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// The report as readable Markdown.
pub fn report_markdown(r: &AuditReport) -> String {
    let mut s = format!(
        "# Audit compliance report: `{}`\n\nPeriod: {} – {} (Unix ms); generated {}.\n\n",
        r.tenant_id, r.from_unix_ms, r.to_unix_ms, r.generated_unix_ms
    );
    s.push_str("| figure | value |\n|---|---|\n");
    let rows = [
        ("records", r.total_records.to_string()),
        ("requests", r.requests.to_string()),
        ("succeeded", r.succeeded.to_string()),
        ("failed", r.failed.to_string()),
        ("success rate", pct(r.success_rate)),
        ("error rate", pct(r.error_rate)),
        ("latency P50", format!("{} µs", r.latency_p50_us)),
        ("latency P99", format!("{} µs", r.latency_p99_us)),
        ("input tokens", r.input_tokens.to_string()),
        ("output tokens", r.output_tokens.to_string()),
        ("distinct API keys", r.key_prefixes.len().to_string()),
        (
            "denied audit-access attempts",
            r.denied_access_attempts.to_string(),
        ),
        (
            "hash chain",
            if r.chain_intact { "intact" } else { "BROKEN" }.to_string(),
        ),
    ];
    for (k, v) in rows {
        s.push_str(&format!("| {k} | {v} |\n"));
    }
    if !r.errors_by_code.is_empty() {
        s.push_str("\n## Errors by code\n\n");
        let mut codes: Vec<_> = r.errors_by_code.iter().collect();
        codes.sort();
        for (code, n) in codes {
            s.push_str(&format!("- `{code}`: {n}\n"));
        }
    }
    s.push_str("\n## API key prefixes\n\n");
    if r.key_prefixes.is_empty() {
        s.push_str("(none)\n");
    }
    for p in &r.key_prefixes {
        s.push_str(&format!("- `{p}…`\n"));
    }
    s.push_str(&format!(
        "\n## Retention\n\n{}\n\n## Encryption\n\n{}\n",
        r.retention_statement, r.encryption_statement
    ));
    s
}

pub async fn run(cmd: AuditCmd, r: &Remote) -> Result<()> {
    let channel = mtls_channel(&r.audit, &r.certs_dir, "operator", "audit").await?;
    let mut c = AuditQueryClient::new(channel.clone());
    match cmd {
        AuditCmd::Heads { tenant, out } => {
            let resp = AuditAdminClient::new(channel)
                .heads(HeadsRequest {
                    tenant_id: tenant.unwrap_or_default(),
                })
                .await
                .map_err(crate::client::ClientError::from)?
                .into_inner();
            let text: String = resp
                .heads
                .iter()
                .map(|h| format!("{}\n", bulkhead_proto::head_text::to_json(h)))
                .collect();
            match out {
                None => print!("{text}"),
                Some(path) => {
                    use std::io::Write;
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
                        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
                    eprintln!(
                        "{} head(s) appended to {}",
                        resp.heads.len(),
                        path.display()
                    );
                }
            }
        }
        AuditCmd::Shred { tenant } => {
            let resp = AuditAdminClient::new(channel)
                .shred(ShredRequest { tenant_id: tenant })
                .await
                .map_err(crate::client::ClientError::from)?
                .into_inner();
            if r.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "tenant_id": resp.tenant_id,
                        "keys_destroyed": resp.keys_destroyed,
                        "already_shredded": resp.already_shredded,
                        "records": resp.records,
                    })
                );
            } else {
                println!("{}", shred_line(&resp));
            }
        }
        AuditCmd::Query {
            tenant,
            from_ms,
            to_ms,
            limit,
            page_token,
            key,
        } => {
            let req = AuditQueryRequest {
                tenant_id: tenant,
                from_unix_ms: from_ms,
                to_unix_ms: to_ms,
                page_size: limit,
                page_token,
            };
            let resp = c
                .query(with_key(req, &key)?)
                .await
                .map_err(crate::client::ClientError::from)?
                .into_inner();
            if r.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "records": resp.records.iter().map(event_json).collect::<Vec<_>>(),
                        "next_page_token": resp.next_page_token,
                    })
                );
                return Ok(());
            }
            for e in &resp.records {
                println!(
                    "{} {} {:<8} {:>5}+{:<5} ttft {:>7}us  {}",
                    e.timestamp_unix_ms,
                    e.request_id,
                    e.status,
                    e.prompt_tokens,
                    e.completion_tokens,
                    e.ttft_us,
                    e.model
                );
            }
            if !resp.next_page_token.is_empty() {
                println!("next page: --page-token {}", resp.next_page_token);
            }
        }
        AuditCmd::Report {
            tenant,
            from_ms,
            to_ms,
            format,
            key,
        } => {
            let req = AuditReportRequest {
                tenant_id: tenant,
                from_unix_ms: from_ms,
                to_unix_ms: to_ms,
            };
            let rep = c
                .report(with_key(req, &key)?)
                .await
                .map_err(crate::client::ClientError::from)?
                .into_inner();
            if r.json || format == ReportFormat::Json {
                println!("{:#}", report_json(&rep));
            } else {
                print!("{}", report_markdown(&rep));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_renders_in_both_forms() {
        let r = AuditReport {
            tenant_id: "acme".into(),
            requests: 4,
            succeeded: 3,
            failed: 1,
            success_rate: 0.75,
            error_rate: 0.25,
            latency_p99_us: 900,
            key_prefixes: vec!["bh_abcdef".into()],
            errors_by_code: [("Internal".to_string(), 1)].into_iter().collect(),
            chain_intact: true,
            retention_statement: "kept".into(),
            encryption_statement: "AES-256-GCM".into(),
            ..Default::default()
        };
        let j = report_json(&r);
        assert_eq!(j["tenant_id"], "acme");
        assert_eq!(j["latency_us"]["p99"], 900);
        assert_eq!(j["errors_by_code"]["Internal"], 1);
        let md = report_markdown(&r);
        for want in [
            "# Audit compliance report: `acme`",
            "| success rate | 75.00% |",
            "| error rate | 25.00% |",
            "- `Internal`: 1",
            "- `bh_abcdef…`",
            "## Encryption\n\nAES-256-GCM",
            "| hash chain | intact |",
        ] {
            assert!(md.contains(want), "missing {want:?} in\n{md}");
        }
    }

    #[test]
    fn the_key_travels_as_bearer_metadata() {
        let k = AdminKey {
            key: Some("bh_abc".into()),
        };
        let req = with_key((), &k).unwrap();
        assert_eq!(
            req.metadata().get("authorization").unwrap(),
            "Bearer bh_abc"
        );
        let none = with_key((), &AdminKey { key: None }).unwrap();
        assert!(none.metadata().get("authorization").is_none());
        assert!(
            with_key(
                (),
                &AdminKey {
                    key: Some("bh\nx".into())
                }
            )
            .is_err()
        );
    }
}
