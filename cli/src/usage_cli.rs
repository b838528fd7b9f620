//! `bulkhead usage`: requests and tokens per tenant (and key), by UTC day or
//! hour, as the router replicas counted them (the control-plane's
//! `GetUsage`), as a table, JSON or CSV.
use std::collections::BTreeMap;

use anyhow::Result;
use bulkhead_proto::control::{DayUsage, GetUsageRequest};
use clap::{Args, ValueEnum};

use crate::client::ControlClient;
use crate::remote::Remote;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum By {
    Day,
    Hour,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Args, Debug)]
pub struct UsageArgs {
    /// Only this tenant (default: every tenant).
    #[arg(long)]
    pub tenant: Option<String>,
    /// First UTC day, YYYY-MM-DD (default: today).
    #[arg(long)]
    pub from: Option<String>,
    /// Last UTC day, inclusive (default: --from).
    #[arg(long)]
    pub to: Option<String>,
    /// One row per day or per hour.
    #[arg(long, value_enum, default_value = "day")]
    pub by: By,
    /// One row per API key (by its public prefix) too.
    #[arg(long)]
    pub per_key: bool,
    /// Output format (`--json` means `--format json`).
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// One output row's key: tenant, day, hour (with --by hour), key prefix
/// (with --per-key).
type RowKey = (String, String, Option<u32>, Option<String>);

/// The counts of one row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Row {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
}

/// Sums the control-plane's records into rows (pure).
pub fn rows(days: &[DayUsage], by: By, per_key: bool) -> BTreeMap<RowKey, Row> {
    let mut out: BTreeMap<RowKey, Row> = BTreeMap::new();
    for d in days {
        for h in &d.hours {
            let k = (
                d.tenant_id.clone(),
                d.day.clone(),
                (by == By::Hour).then_some(h.hour),
                per_key.then(|| h.key_prefix.clone()),
            );
            let r = out.entry(k).or_default();
            r.requests = r.requests.saturating_add(h.requests);
            r.prompt_tokens = r.prompt_tokens.saturating_add(h.prompt_tokens);
            r.cached_tokens = r.cached_tokens.saturating_add(h.cached_tokens);
            r.completion_tokens = r.completion_tokens.saturating_add(h.completion_tokens);
        }
    }
    out
}

/// One row's columns as text: tenant, day, hour, key, then the counts.
fn cells((t, d, h, k): &RowKey, r: &Row) -> [String; 9] {
    [
        t.clone(),
        d.clone(),
        h.map(|h| format!("{h:02}:00")).unwrap_or_default(),
        k.clone().unwrap_or_default(),
        r.requests.to_string(),
        r.prompt_tokens.to_string(),
        r.cached_tokens.to_string(),
        r.completion_tokens.to_string(),
        (r.prompt_tokens.saturating_add(r.completion_tokens)).to_string(),
    ]
}

/// Renders rows as `format` (pure).
pub fn render(rows: &BTreeMap<RowKey, Row>, format: Format) -> String {
    let mut s = String::new();
    match format {
        Format::Json => {
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|((t, d, h, k), r)| {
                    let mut v = serde_json::json!({
                        "tenant": t, "day": d, "requests": r.requests,
                        "prompt_tokens": r.prompt_tokens, "cached_tokens": r.cached_tokens,
                        "completion_tokens": r.completion_tokens,
                        "total_tokens": r.prompt_tokens.saturating_add(r.completion_tokens),
                    });
                    if let Some(h) = h {
                        v["hour"] = (*h).into();
                    }
                    if let Some(k) = k {
                        v["key_prefix"] = k.clone().into();
                    }
                    v
                })
                .collect();
            s.push_str(&serde_json::Value::Array(items).to_string());
            s.push('\n');
        }
        Format::Csv => {
            s.push_str("tenant,day,hour,key_prefix,requests,prompt_tokens,cached_tokens,completion_tokens,total_tokens\n");
            // Tenant ids, days and key prefixes hold no comma or quote.
            for (k, r) in rows {
                s.push_str(&cells(k, r).join(","));
                s.push('\n');
            }
        }
        Format::Table => {
            let line = |c: [String; 9]| {
                format!(
                    "{:<24} {:<10} {:>5} {:<14} {:>9} {:>12} {:>12} {:>12} {:>12}\n",
                    c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]
                )
            };
            let head = [
                "tenant",
                "day",
                "hour",
                "key",
                "requests",
                "prompt",
                "cached",
                "completion",
                "total",
            ];
            s.push_str(&line(head.map(String::from)));
            for (k, r) in rows {
                s.push_str(&line(cells(k, r)));
            }
            if rows.is_empty() {
                s.push_str("(no usage in this range)\n");
            }
        }
    }
    s
}

pub async fn run(a: UsageArgs, r: &Remote) -> Result<()> {
    let mut c = ControlClient::connect(&r.control, &r.certs_dir).await?;
    let days = c
        .get_usage(GetUsageRequest {
            tenant_id: a.tenant.unwrap_or_default(),
            from_day: a.from.unwrap_or_default(),
            to_day: a.to.unwrap_or_default(),
        })
        .await?;
    let format = if r.json { Format::Json } else { a.format };
    print!("{}", render(&rows(&days, a.by, a.per_key), format));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_proto::control::UsageCounts;

    fn counts(key: &str, hour: u32, n: u64) -> UsageCounts {
        UsageCounts {
            key_prefix: key.into(),
            hour,
            requests: n,
            prompt_tokens: 10 * n,
            cached_tokens: n,
            completion_tokens: 5 * n,
        }
    }

    #[test]
    fn rows_sum_by_day_hour_and_key() {
        let days = vec![DayUsage {
            router_id: String::new(),
            tenant_id: "acme".into(),
            day: "2026-12-08".into(),
            hours: vec![
                counts("bh_a", 9, 1),
                counts("bh_b", 9, 2),
                counts("bh_a", 10, 3),
            ],
        }];
        let by_day = rows(&days, By::Day, false);
        assert_eq!(by_day.len(), 1);
        let r = by_day.values().next().unwrap();
        assert_eq!(
            (r.requests, r.prompt_tokens, r.completion_tokens),
            (6, 60, 30)
        );
        assert_eq!(rows(&days, By::Hour, false).len(), 2);
        assert_eq!(rows(&days, By::Day, true).len(), 2);
        assert_eq!(rows(&days, By::Hour, true).len(), 3);
        let csv = render(&rows(&days, By::Hour, true), Format::Csv);
        assert!(
            csv.contains("acme,2026-12-08,09:00,bh_b,2,20,2,10,30\n"),
            "{csv}"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&by_day, Format::Json)).unwrap();
        assert_eq!(json[0]["total_tokens"], 90);
        assert!(json[0].get("hour").is_none());
        let table = render(&BTreeMap::new(), Format::Table);
        assert!(table.contains("no usage"), "{table}");
    }
}
