//! Token usage per tenant and API key by UTC hour, and the token budgets
//! checked against it (pure: no I/O; times are arguments).
//!
//! Each router replica counts what it served (requests; prompt, cached and
//! completion tokens, as the worker reported them) per tenant, key and UTC
//! hour, and writes one record per tenant and UTC day into the
//! `bulkhead_usage` KV bucket under a key naming itself
//! (`names::usage_key`: NATS lets a replica write only its own). Every
//! replica watches the current month's records of the others, so a budget
//! spent through one replica is refused at all of them, about a second
//! later (the flush interval, `usage_sync`). A budget counts prompt plus
//! completion tokens; it is checked when a request is admitted, so requests
//! admitted before it ran out still finish (a budget can be passed by what
//! those generate, never by a request admitted after).
use std::collections::{HashMap, HashSet};
use std::fmt;

use bulkhead_directory::usage::{Day, parse_key};
use bulkhead_proto::control::{DayUsage, UsageCounts};
use bulkhead_proto::names;
use time::OffsetDateTime;

/// What one request (or many, summed) used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
}

impl Counts {
    /// What a budget counts: prompt plus completion tokens.
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    fn add(&mut self, o: &Counts) {
        self.requests = self.requests.saturating_add(o.requests);
        self.prompt_tokens = self.prompt_tokens.saturating_add(o.prompt_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(o.cached_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(o.completion_tokens);
    }

    fn from_proto(c: &UsageCounts) -> Counts {
        Counts {
            requests: c.requests,
            prompt_tokens: c.prompt_tokens,
            cached_tokens: c.cached_tokens,
            completion_tokens: c.completion_tokens,
        }
    }
}

/// Token budgets (0 = none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budgets {
    pub daily: u64,
    pub monthly: u64,
}

/// Whose budget ran out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    Tenant(String),
    Key(String),
}

/// A budget that is used up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exhausted {
    pub owner: Owner,
    /// `true`: the monthly budget; `false`: the daily one.
    pub monthly: bool,
    pub budget: u64,
    pub used: u64,
    /// When it resets (Unix ms: the next UTC midnight or month).
    pub resets_unix_ms: i64,
}

impl fmt::Display for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match &self.owner {
            Owner::Tenant(t) => format!("tenant {t:?}"),
            Owner::Key(k) => format!("API key {k}…"),
        };
        let (period, when) = if self.monthly {
            ("monthly", "this month (UTC)")
        } else {
            ("daily", "today (UTC)")
        };
        let resets = OffsetDateTime::from_unix_timestamp(self.resets_unix_ms / 1000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "later".into());
        write!(
            f,
            "the {period} token budget of {who} ({} tokens) is used up: {} tokens used {when}; it resets at {resets}",
            self.budget, self.used
        )
    }
}

/// Per key and hour.
type DayTable = HashMap<(String, u8), Counts>;
/// Tokens per key prefix (one replica's day of one tenant).
type KeyTokens = HashMap<String, u64>;

/// This replica's usage and the other replicas' (this month).
#[derive(Debug)]
pub struct UsageBook {
    me: String,
    own: HashMap<(String, Day), DayTable>,
    dirty: HashSet<(String, Day)>,
    /// tenant → (router, day) → tokens per key.
    remote: HashMap<String, HashMap<(String, Day), KeyTokens>>,
}

impl UsageBook {
    /// `me`: this replica's id (its records' key part).
    pub fn new(me: impl Into<String>) -> Self {
        Self {
            me: me.into(),
            own: HashMap::new(),
            dirty: HashSet::new(),
            remote: HashMap::new(),
        }
    }

    /// Counts one finished request at `unix_ms`.
    pub fn record(&mut self, tenant: &str, key: &str, unix_ms: i64, c: Counts) {
        let (day, hour) = Day::at(unix_ms);
        let k = (tenant.to_string(), day);
        self.own
            .entry(k.clone())
            .or_default()
            .entry((key.to_string(), hour))
            .or_default()
            .add(&c);
        self.dirty.insert(k);
    }

    /// The records changed since the last call, as (KV key, value) to
    /// write; forgets this replica's days before `now`'s month that are
    /// written.
    pub fn take_dirty(&mut self, now_ms: i64) -> Vec<(String, DayUsage)> {
        let out = self
            .dirty
            .drain()
            .filter_map(|(tenant, day)| {
                let table = self.own.get(&(tenant.clone(), day))?;
                Some((
                    names::usage_key(day.year, day.month, day.day, &self.me, &tenant),
                    to_proto(&self.me, &tenant, day, table),
                ))
            })
            .collect();
        let (today, _) = Day::at(now_ms);
        self.own.retain(|(_, d), _| d.same_month(&today));
        out
    }

    /// Marks records [`Self::take_dirty`] returned as changed again (their
    /// write failed).
    pub fn mark_dirty(&mut self, written: &[(String, DayUsage)]) {
        for (k, _) in written {
            if let Some((day, _, tenant)) = parse_key(k) {
                self.dirty.insert((tenant.to_string(), day));
            }
        }
    }

    /// Marks every record this replica holds as changed (the last write at
    /// shutdown: a write the aborted writer took but never made is not lost).
    pub fn mark_all_dirty(&mut self) {
        self.dirty.extend(self.own.keys().cloned());
    }

    /// Whether `key` is one of this replica's records of `today`'s month.
    pub fn is_own_of_month(&self, key: &str, today: Day) -> bool {
        matches!(parse_key(key), Some((d, r, _)) if r == self.me && d.same_month(&today))
    }

    /// Takes in a record of the usage bucket (`None`: deleted). One of
    /// this replica's own records is merged into its counts only while
    /// `seeding` (the bucket's contents when the watch starts, before this
    /// replica writes anything): later it is the echo of its own write.
    pub fn apply(&mut self, kv_key: &str, value: Option<&DayUsage>, seeding: bool) {
        let Some((day, router, tenant)) = parse_key(kv_key) else {
            return;
        };
        if router == self.me {
            if let (true, Some(v)) = (seeding, value) {
                let table = self.own.entry((tenant.to_string(), day)).or_default();
                for h in v.hours.iter().filter(|h| h.hour < 24) {
                    table
                        .entry((h.key_prefix.clone(), h.hour as u8))
                        .or_default()
                        .add(&Counts::from_proto(h));
                }
            }
            return;
        }
        let days = self.remote.entry(tenant.to_string()).or_default();
        let slot = (router.to_string(), day);
        match value {
            None => {
                days.remove(&slot);
            }
            Some(v) => {
                let mut per_key: HashMap<String, u64> = HashMap::new();
                for h in &v.hours {
                    let t = per_key.entry(h.key_prefix.clone()).or_default();
                    *t = t.saturating_add(Counts::from_proto(h).tokens());
                }
                days.insert(slot, per_key);
            }
        }
    }

    /// Forgets other replicas' records of months before `now`'s.
    pub fn forget_past_months(&mut self, now_ms: i64) {
        let (today, _) = Day::at(now_ms);
        for days in self.remote.values_mut() {
            days.retain(|(_, d), _| d.same_month(&today));
        }
        self.remote.retain(|_, days| !days.is_empty());
    }

    /// Tokens `tenant` used (all its keys, or only `key`) today and this
    /// month at `now_ms`, every replica together.
    pub fn used(&self, tenant: &str, key: Option<&str>, now_ms: i64) -> (u64, u64) {
        let (today, _) = Day::at(now_ms);
        let (mut day, mut month) = (0u64, 0u64);
        let mut add = |d: &Day, tokens: u64| {
            if d.same_month(&today) {
                month = month.saturating_add(tokens);
                if *d == today {
                    day = day.saturating_add(tokens);
                }
            }
        };
        for ((t, d), table) in &self.own {
            if t == tenant {
                for ((k, _), c) in table {
                    if key.is_none_or(|key| key == k) {
                        add(d, c.tokens());
                    }
                }
            }
        }
        for ((_, d), per_key) in self.remote.get(tenant).into_iter().flatten() {
            for (k, tokens) in per_key {
                if key.is_none_or(|key| key == k) {
                    add(d, *tokens);
                }
            }
        }
        (day, month)
    }

    /// Refuses when the tenant's or the key's daily or monthly budget is
    /// used up at `now_ms`.
    pub fn check(
        &self,
        tenant: &str,
        tenant_budgets: Budgets,
        key: &str,
        key_budgets: Budgets,
        now_ms: i64,
    ) -> Result<(), Exhausted> {
        let (today, _) = Day::at(now_ms);
        for (owner, b, only) in [
            (Owner::Tenant(tenant.to_string()), tenant_budgets, None),
            (Owner::Key(key.to_string()), key_budgets, Some(key)),
        ] {
            if b == Budgets::default() {
                continue;
            }
            let (day, month) = self.used(tenant, only, now_ms);
            let over = |budget: u64, used: u64| budget > 0 && used >= budget;
            if over(b.monthly, month) {
                return Err(Exhausted {
                    owner,
                    monthly: true,
                    budget: b.monthly,
                    used: month,
                    resets_unix_ms: today.month_end_ms(),
                });
            }
            if over(b.daily, day) {
                return Err(Exhausted {
                    owner,
                    monthly: false,
                    budget: b.daily,
                    used: day,
                    resets_unix_ms: today.end_ms(),
                });
            }
        }
        Ok(())
    }
}

fn to_proto(router: &str, tenant: &str, day: Day, table: &DayTable) -> DayUsage {
    let mut hours: Vec<UsageCounts> = table
        .iter()
        .map(|((key, hour), c)| UsageCounts {
            key_prefix: key.clone(),
            hour: u32::from(*hour),
            requests: c.requests,
            prompt_tokens: c.prompt_tokens,
            cached_tokens: c.cached_tokens,
            completion_tokens: c.completion_tokens,
        })
        .collect();
    hours.sort_by(|a, b| (a.hour, &a.key_prefix).cmp(&(b.hour, &b.key_prefix)));
    DayUsage {
        router_id: router.to_string(),
        tenant_id: tenant.to_string(),
        day: day.iso(),
        hours,
    }
}

#[cfg(test)]
mod tests;
