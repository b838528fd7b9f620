//! Per-tenant admission limits (pure: no I/O; the clock is an argument).
//!
//! - requests per second with a burst (token bucket);
//! - tokens per minute (token bucket of `tokens_per_minute` refilled over a
//!   minute): a request reserves its prompt estimate + `max_tokens` when it
//!   is admitted, and what it did not use is refunded when it ends;
//! - requests in flight: admitted and not yet finished (queued or running);
//! - requests queued: admitted and waiting in the router's fair queue.
//!
//! 0 means unlimited for every field. Limits come from the tenant record of
//! each request (the directory's KV watch keeps it current), so a change to
//! a tenant's limits applies from its next request on.
//!
//! Replicas: each router replica enforces its share of every limit — the
//! configured value divided by the live replica count it sees in the
//! `bulkhead_routers` heartbeats, rounded up ([`Limits::share`]; see
//! `cluster` for the scheme and its failure modes).
use std::collections::HashMap;
use std::time::Duration;

use bulkhead_proto::control::Tenant;

/// What a router admits when a tenant record leaves a limit at 0, and how
/// much it queues in all: no tenant is unbounded by default, and one
/// router's queue is bounded whatever the tenants' settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    /// A tenant's requests in flight (queued or running) when its record
    /// says 0.
    pub default_max_in_flight: u32,
    /// A tenant's requests waiting in the fair queue when its record says 0.
    pub default_max_queued: u32,
    /// Requests waiting in this router's queue, all tenants together.
    pub max_queued_total: u32,
}

/// The defaults of [`Admission`] (and of the router's flags).
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;
pub const DEFAULT_MAX_QUEUED: u32 = 256;
pub const DEFAULT_MAX_QUEUED_TOTAL: u32 = 4_096;

impl Default for Admission {
    fn default() -> Self {
        Self {
            default_max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            default_max_queued: DEFAULT_MAX_QUEUED,
            max_queued_total: DEFAULT_MAX_QUEUED_TOTAL,
        }
    }
}

/// A tenant's limits; 0 = unlimited (rates), see [`Limits::from_tenant_with`]
/// for the counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_second: u32,
    /// Requests allowed at once above the steady rate; 0 = the rate itself.
    pub burst: u32,
    pub tokens_per_minute: u64,
    pub max_in_flight: u32,
    pub max_queued: u32,
}

impl Limits {
    /// The record's limits as they are (0 = unlimited).
    pub fn from_tenant(t: &Tenant) -> Self {
        Self {
            requests_per_second: t.requests_per_second,
            burst: t.burst,
            tokens_per_minute: t.tokens_per_minute,
            max_in_flight: t.max_in_flight,
            max_queued: t.max_queued,
        }
    }

    /// The record's limits, with `a`'s defaults where it leaves the
    /// in-flight or queued count at 0: a tenant is never unbounded.
    pub fn from_tenant_with(t: &Tenant, a: &Admission) -> Self {
        let or = |v: u32, d: u32| if v == 0 { d } else { v };
        Self {
            max_in_flight: or(t.max_in_flight, a.default_max_in_flight),
            max_queued: or(t.max_queued, a.default_max_queued),
            ..Self::from_tenant(t)
        }
    }

    /// This replica's share when `replicas` routers serve the tenant: each
    /// limit divided by the replica count, rounded up (a limit stays a
    /// limit: never 0, which would mean unlimited).
    pub fn share(self, replicas: u32) -> Self {
        let n = replicas.max(1);
        let div = |x: u32| if x == 0 { 0 } else { x.div_ceil(n).max(1) };
        Self {
            requests_per_second: div(self.requests_per_second),
            burst: div(self.burst),
            tokens_per_minute: if self.tokens_per_minute == 0 {
                0
            } else {
                self.tokens_per_minute.div_ceil(u64::from(n)).max(1)
            },
            max_in_flight: div(self.max_in_flight),
            max_queued: div(self.max_queued),
        }
    }
}

/// Why a request was refused, and when retrying may succeed.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub message: String,
    pub retry_after: Duration,
    /// The tenant's rate buckets as they stand (for `x-ratelimit-*`).
    pub rate: RateState,
}

/// One rate bucket as a client sees it: its capacity, what is left, and
/// how long until it is full again.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketView {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
}

/// A tenant's request and token buckets at this replica (`None`: that
/// limit is off), reported as OpenAI's `x-ratelimit-*` headers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RateState {
    pub requests: Option<BucketView>,
    pub tokens: Option<BucketView>,
}

impl RateState {
    /// `(name, value)` of each `x-ratelimit-*` header (`limit-requests`,
    /// `remaining-requests`, `reset-requests`, and the same for tokens;
    /// resets in OpenAI's duration form, e.g. `1.5s`).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![];
        for (b, [limit, remaining, reset]) in [
            (
                self.requests,
                [
                    "x-ratelimit-limit-requests",
                    "x-ratelimit-remaining-requests",
                    "x-ratelimit-reset-requests",
                ],
            ),
            (
                self.tokens,
                [
                    "x-ratelimit-limit-tokens",
                    "x-ratelimit-remaining-tokens",
                    "x-ratelimit-reset-tokens",
                ],
            ),
        ] {
            if let Some(b) = b {
                out.push((limit, b.limit.to_string()));
                out.push((remaining, b.remaining.to_string()));
                out.push((
                    reset,
                    format!("{}s", (b.reset.as_secs_f64() * 1000.0).ceil() / 1000.0),
                ));
            }
        }
        out
    }
}

/// Adds `rate`'s `x-ratelimit-*` headers to a response.
pub fn insert_headers(h: &mut axum::http::HeaderMap, rate: &RateState) {
    for (name, value) in rate.headers() {
        if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
}

/// A rough prompt size in tokens for the reservation (about 4 bytes a
/// token); corrected when the worker reports the real count.
pub fn estimate_prompt_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4).max(1)
}

#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    last: Duration,
}

impl Bucket {
    fn full(capacity: f64, now: Duration) -> Self {
        Self {
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Duration, rate_per_s: f64, capacity: f64) {
        let dt = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * rate_per_s).min(capacity);
    }

    fn view(&self, rate_per_s: f64, capacity: f64) -> BucketView {
        let left = self.tokens.max(0.0);
        BucketView {
            limit: capacity as u64,
            remaining: left.floor() as u64,
            reset: Duration::from_secs_f64(((capacity - left) / rate_per_s).max(0.0)),
        }
    }

    /// Time until `need` tokens are there (zero if they are now).
    fn wait_for(&self, need: f64, rate_per_s: f64) -> Duration {
        if self.tokens >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.tokens) / rate_per_s)
        }
    }
}

#[derive(Clone, Debug, Default)]
struct TenantState {
    rps: Option<Bucket>,
    tpm: Option<Bucket>,
}

fn rps_params(l: &Limits) -> (f64, f64) {
    let rate = f64::from(l.requests_per_second);
    (rate, f64::from(l.burst.max(l.requests_per_second).max(1)))
}

fn tpm_params(l: &Limits) -> (f64, f64) {
    let cap = l.tokens_per_minute as f64;
    (cap / 60.0, cap)
}

/// Rate-limit state of every tenant seen by this replica.
#[derive(Debug, Default)]
pub struct Limiter {
    tenants: HashMap<String, TenantState>,
}

impl Limiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits one request that reserves `tokens` (prompt estimate +
    /// `max_tokens`), given the tenant's current `in_flight` and `queued`
    /// counts. Takes nothing when it refuses.
    pub fn admit(
        &mut self,
        tenant: &str,
        limits: &Limits,
        now: Duration,
        tokens: u64,
        in_flight: u32,
        queued: u32,
    ) -> Result<RateState, Refusal> {
        let taken = self.take(tenant, limits, now, tokens, in_flight, queued);
        // The buckets as they stand after the decision, either way.
        let rate = self.state(tenant, limits, now);
        match taken {
            Ok(()) => Ok(rate),
            Err((message, retry_after)) => Err(Refusal {
                message,
                retry_after,
                rate,
            }),
        }
    }

    /// [`Self::admit`]'s decision: takes from the buckets, or says why not
    /// and when to retry (taking nothing).
    fn take(
        &mut self,
        tenant: &str,
        limits: &Limits,
        now: Duration,
        tokens: u64,
        in_flight: u32,
        queued: u32,
    ) -> Result<(), (String, Duration)> {
        let soon = Duration::from_secs(1);
        if limits.max_in_flight != 0 && in_flight >= limits.max_in_flight {
            return Err((
                format!(
                    "too many requests in flight: this tenant may have {} at once",
                    limits.max_in_flight
                ),
                soon,
            ));
        }
        if limits.max_queued != 0 && queued >= limits.max_queued {
            return Err((
                format!(
                    "too many requests queued: this tenant may have {} waiting",
                    limits.max_queued
                ),
                soon,
            ));
        }
        let st = self.tenants.entry(tenant.to_string()).or_default();
        let (rps_rate, rps_cap) = rps_params(limits);
        let (tpm_rate, tpm_cap) = tpm_params(limits);
        if limits.requests_per_second != 0 {
            let b = st.rps.get_or_insert_with(|| Bucket::full(rps_cap, now));
            b.refill(now, rps_rate, rps_cap);
            let wait = b.wait_for(1.0, rps_rate);
            if !wait.is_zero() {
                return Err((
                    format!(
                        "rate limit reached: {} requests per second (burst {})",
                        limits.requests_per_second, rps_cap
                    ),
                    wait,
                ));
            }
        }
        if limits.tokens_per_minute != 0 {
            let b = st.tpm.get_or_insert_with(|| Bucket::full(tpm_cap, now));
            b.refill(now, tpm_rate, tpm_cap);
            // A request bigger than the whole budget waits for a full bucket
            // and then runs into debt, rather than never running.
            let wait = b.wait_for((tokens as f64).min(tpm_cap), tpm_rate);
            if !wait.is_zero() {
                return Err((
                    format!(
                        "token rate limit reached: {} tokens per minute; this request reserves {tokens}",
                        limits.tokens_per_minute
                    ),
                    wait,
                ));
            }
            b.tokens -= tokens as f64;
        }
        if let Some(b) = st.rps.as_mut().filter(|_| limits.requests_per_second != 0) {
            b.tokens -= 1.0;
        }
        Ok(())
    }

    /// The tenant's buckets now (full when it has not been seen yet).
    pub fn state(&mut self, tenant: &str, limits: &Limits, now: Duration) -> RateState {
        let st = self.tenants.get_mut(tenant);
        let (rps_rate, rps_cap) = rps_params(limits);
        let (tpm_rate, tpm_cap) = tpm_params(limits);
        let (mut rps, mut tpm) = match st {
            Some(s) => (s.rps.clone(), s.tpm.clone()),
            None => (None, None),
        };
        RateState {
            requests: (limits.requests_per_second != 0).then(|| {
                let b = rps.get_or_insert_with(|| Bucket::full(rps_cap, now));
                b.refill(now, rps_rate, rps_cap);
                b.view(rps_rate, rps_cap)
            }),
            tokens: (limits.tokens_per_minute != 0).then(|| {
                let b = tpm.get_or_insert_with(|| Bucket::full(tpm_cap, now));
                b.refill(now, tpm_rate, tpm_cap);
                b.view(tpm_rate, tpm_cap)
            }),
        }
    }

    /// Returns `tokens` reserved but not used (negative: charges more, e.g.
    /// when the prompt was longer than estimated).
    pub fn refund_tokens(&mut self, tenant: &str, limits: &Limits, now: Duration, tokens: i64) {
        if limits.tokens_per_minute == 0 {
            return;
        }
        let (rate, cap) = tpm_params(limits);
        if let Some(b) = self.tenants.get_mut(tenant).and_then(|s| s.tpm.as_mut()) {
            b.refill(now, rate, cap);
            b.tokens = (b.tokens + tokens as f64).min(cap);
        }
    }

    /// Tokens available to `tenant` now (for tests and metrics).
    pub fn tokens_available(&mut self, tenant: &str, limits: &Limits, now: Duration) -> f64 {
        let (rate, cap) = tpm_params(limits);
        match self.tenants.get_mut(tenant).and_then(|s| s.tpm.as_mut()) {
            Some(b) => {
                b.refill(now, rate, cap);
                b.tokens
            }
            None => cap,
        }
    }
}

#[cfg(test)]
mod tests;
