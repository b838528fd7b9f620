//! Usage as the router replicas recorded it (the `bulkhead_usage` bucket),
//! summed over the replicas.
use std::collections::BTreeMap;

use bulkhead_directory::usage::{Day, parse_key};
use bulkhead_proto::Message;
use bulkhead_proto::control::{DayUsage, UsageCounts};
use bulkhead_proto::names;
use futures::StreamExt;

use super::{ControlError, Registry, now_ms, unavailable};

/// The longest range one query may cover.
pub const MAX_USAGE_DAYS: i64 = names::USAGE_MAX_AGE_DAYS as i64;

/// (tenant, day) → (hour, key) → counts.
type Merged = BTreeMap<(String, Day), BTreeMap<(u32, String), UsageCounts>>;

fn day_arg(name: &str, s: &str, default: Day) -> Result<Day, ControlError> {
    if s.is_empty() {
        return Ok(default);
    }
    Day::parse(s).ok_or_else(|| {
        ControlError::InvalidArgument(format!("{name} {s:?} is not a date (YYYY-MM-DD, UTC)"))
    })
}

impl Registry {
    /// Every replica's records of `tenant` (empty: every tenant) from
    /// `from` to `to` (inclusive, `YYYY-MM-DD`; empty: today, and `from`),
    /// summed per tenant, day, hour and key.
    pub async fn usage(
        &self,
        tenant: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<DayUsage>, ControlError> {
        if !tenant.is_empty() && !names::valid_tenant_id(tenant) {
            return Err(ControlError::InvalidArgument(format!(
                "invalid tenant id {tenant:?}"
            )));
        }
        let (today, _) = Day::at(now_ms());
        let from = day_arg("from_day", from, today)?;
        let to = day_arg("to_day", to, from)?;
        let span = to.days_since(&from);
        if span < 0 {
            return Err(ControlError::InvalidArgument(format!(
                "to_day {} is before from_day {}",
                to.iso(),
                from.iso()
            )));
        }
        if span >= MAX_USAGE_DAYS {
            return Err(ControlError::InvalidArgument(format!(
                "a usage query covers at most {MAX_USAGE_DAYS} days (usage is kept that long)"
            )));
        }
        let mut keys = self.usage.keys().await.map_err(unavailable)?;
        let mut wanted = vec![];
        while let Some(k) = keys.next().await {
            let k = k.map_err(unavailable)?;
            if let Some((d, _, t)) = parse_key(&k)
                && (tenant.is_empty() || t == tenant)
                && from <= d
                && d <= to
            {
                wanted.push(k);
            }
        }
        let mut merged = Merged::new();
        for k in wanted {
            let Some(bytes) = self.usage.get(&k).await.map_err(unavailable)? else {
                continue; // expired or deleted since listed
            };
            let Some((day, _, t)) = parse_key(&k) else {
                continue;
            };
            // A record that does not decode, or an hour out of range, is
            // skipped and logged: one bad record does not hide the rest.
            let v = match DayUsage::decode(bytes) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(key = %k, error = %e, "undecodable usage record skipped");
                    continue;
                }
            };
            let hours = merged.entry((t.to_string(), day)).or_default();
            for h in v.hours.into_iter().filter(|h| h.hour < 24) {
                let c = hours
                    .entry((h.hour, h.key_prefix.clone()))
                    .or_insert_with(|| UsageCounts {
                        key_prefix: h.key_prefix.clone(),
                        hour: h.hour,
                        ..Default::default()
                    });
                c.requests = c.requests.saturating_add(h.requests);
                c.prompt_tokens = c.prompt_tokens.saturating_add(h.prompt_tokens);
                c.cached_tokens = c.cached_tokens.saturating_add(h.cached_tokens);
                c.completion_tokens = c.completion_tokens.saturating_add(h.completion_tokens);
            }
        }
        Ok(merged
            .into_iter()
            .map(|((tenant_id, day), hours)| DayUsage {
                router_id: String::new(),
                tenant_id,
                day: day.iso(),
                hours: hours.into_values().collect(),
            })
            .collect())
    }
}
