use proptest::prelude::*;

use super::*;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn rps(rate: u32, burst: u32) -> Limits {
    Limits {
        requests_per_second: rate,
        burst,
        ..Default::default()
    }
}

#[test]
fn unlimited_by_default() {
    let mut l = Limiter::new();
    for i in 0..10_000 {
        assert!(
            l.admit("a", &Limits::default(), secs(0.0), 1_000_000, i, i)
                .is_ok()
        );
    }
}

#[test]
fn requests_per_second_with_burst() {
    let mut l = Limiter::new();
    let lim = rps(2, 5);
    for _ in 0..5 {
        l.admit("a", &lim, secs(0.0), 1, 0, 0).unwrap();
    }
    let r = l.admit("a", &lim, secs(0.0), 1, 0, 0).unwrap_err();
    assert_eq!(r.retry_after, secs(0.5));
    assert!(r.message.contains("2 requests per second"), "{}", r.message);
    // Half a second later one more fits, then none.
    l.admit("a", &lim, secs(0.5), 1, 0, 0).unwrap();
    assert!(l.admit("a", &lim, secs(0.5), 1, 0, 0).is_err());
    // Another tenant is unaffected.
    for _ in 0..5 {
        l.admit("b", &lim, secs(0.5), 1, 0, 0).unwrap();
    }
}

#[test]
fn tokens_per_minute_reserve_and_refund() {
    let mut l = Limiter::new();
    let lim = Limits {
        tokens_per_minute: 600,
        ..Default::default()
    };
    l.admit("a", &lim, secs(0.0), 500, 0, 0).unwrap();
    let r = l.admit("a", &lim, secs(0.0), 200, 0, 0).unwrap_err();
    // 100 tokens left, 200 needed, 10 tokens/s come back.
    assert_eq!(r.retry_after, secs(10.0));
    // The first request used only 150 of its 500: 350 come back.
    l.refund_tokens("a", &lim, secs(0.0), 350);
    assert_eq!(l.tokens_available("a", &lim, secs(0.0)), 450.0);
    l.admit("a", &lim, secs(0.0), 200, 0, 0).unwrap();
    // Refunds never fill past the budget.
    l.refund_tokens("a", &lim, secs(0.0), 10_000);
    assert_eq!(l.tokens_available("a", &lim, secs(0.0)), 600.0);
    // A longer prompt than estimated costs more.
    l.refund_tokens("a", &lim, secs(0.0), -100);
    assert_eq!(l.tokens_available("a", &lim, secs(0.0)), 500.0);
}

#[test]
fn a_request_larger_than_the_budget_waits_for_a_full_bucket() {
    let mut l = Limiter::new();
    let lim = Limits {
        tokens_per_minute: 60,
        ..Default::default()
    };
    l.admit("a", &lim, secs(0.0), 100, 0, 0).unwrap();
    // In debt by 40: 100 s until the bucket is full again.
    let r = l.admit("a", &lim, secs(0.0), 100, 0, 0).unwrap_err();
    assert_eq!(r.retry_after, secs(100.0));
    l.admit("a", &lim, secs(100.0), 100, 0, 0).unwrap();
}

#[test]
fn refused_requests_take_nothing() {
    let mut l = Limiter::new();
    let lim = Limits {
        requests_per_second: 1,
        tokens_per_minute: 60,
        ..Default::default()
    };
    // Refused on tokens: the request token is not consumed.
    l.admit("a", &lim, secs(0.0), 60, 0, 0).unwrap();
    assert!(l.admit("a", &lim, secs(1.0), 60, 0, 0).is_err());
    let lim2 = Limits {
        requests_per_second: 1,
        ..Default::default()
    };
    l.admit("a", &lim2, secs(1.0), 60, 0, 0).unwrap();
}

#[test]
fn in_flight_and_queue_quotas() {
    let mut l = Limiter::new();
    let lim = Limits {
        max_in_flight: 3,
        max_queued: 2,
        ..Default::default()
    };
    assert!(l.admit("a", &lim, secs(0.0), 1, 2, 1).is_ok());
    let r = l.admit("a", &lim, secs(0.0), 1, 3, 0).unwrap_err();
    assert!(r.message.contains("in flight"));
    let r = l.admit("a", &lim, secs(0.0), 1, 2, 2).unwrap_err();
    assert!(r.message.contains("queued"));
    assert_eq!(r.retry_after, secs(1.0));
}

#[test]
fn limit_changes_apply_to_the_next_request() {
    let mut l = Limiter::new();
    for _ in 0..3 {
        l.admit("a", &rps(1, 3), secs(0.0), 1, 0, 0).unwrap();
    }
    assert!(l.admit("a", &rps(1, 3), secs(0.0), 1, 0, 0).is_err());
    // Raised: the bucket refills at the new rate.
    l.admit("a", &rps(100, 100), secs(0.1), 1, 0, 0).unwrap();
    // Removed: unlimited.
    for _ in 0..100 {
        l.admit("a", &Limits::default(), secs(0.1), 1, 0, 0)
            .unwrap();
    }
    // Lowered: never more than the new burst in stock.
    l.admit("a", &rps(1, 1), secs(100.0), 1, 0, 0).unwrap();
    assert!(l.admit("a", &rps(1, 1), secs(100.0), 1, 0, 0).is_err());
}

#[test]
fn replicas_share_each_limit() {
    let l = Limits {
        requests_per_second: 10,
        burst: 20,
        tokens_per_minute: 1_000,
        max_in_flight: 3,
        max_queued: 0,
    };
    assert_eq!(l.share(1), l);
    let half = l.share(2);
    assert_eq!(
        half,
        Limits {
            requests_per_second: 5,
            burst: 10,
            tokens_per_minute: 500,
            max_in_flight: 2, // rounded up
            max_queued: 0,    // unlimited stays unlimited
        }
    );
    // Never rounded down to 0, which would mean unlimited.
    let many = l.share(50);
    assert_eq!(many.max_in_flight, 1);
    assert_eq!(many.requests_per_second, 1);
    assert_eq!(l.share(0), l);
}

proptest! {
    /// Over any window starting at 0, admitted requests never exceed
    /// burst + rate × elapsed; and a refusal's retry_after is honest.
    #[test]
    fn token_bucket_never_exceeds_rate(
        rate in 1u32..50, burst in 0u32..20, gaps in prop::collection::vec(0u32..2_000, 1..300),
    ) {
        let lim = rps(rate, burst);
        let cap = f64::from(burst.max(rate).max(1));
        let mut l = Limiter::new();
        let mut now_ms = 0u64;
        let mut admitted = 0u64;
        for g in gaps {
            now_ms += u64::from(g);
            let now = Duration::from_millis(now_ms);
            match l.admit("a", &lim, now, 1, 0, 0) {
                Ok(_) => admitted += 1,
                Err(r) => {
                    prop_assert!(r.retry_after > Duration::ZERO);
                    // Retrying after the advertised delay succeeds.
                    let mut probe = Limiter { tenants: l.tenants.clone() };
                    prop_assert!(probe.admit("a", &lim, now + r.retry_after + Duration::from_micros(1), 1, 0, 0).is_ok());
                }
            }
            let allowed = cap + f64::from(rate) * now.as_secs_f64();
            prop_assert!(admitted as f64 <= allowed + 1e-9, "{admitted} > {allowed}");
        }
    }

    /// Tokens per minute: reserved minus refunded never exceeds the budget
    /// plus the refill, whatever the refunds (one request may overdraw by
    /// at most its own size).
    #[test]
    fn tokens_per_minute_never_exceeds_budget(
        tpm in 60u64..10_000, reqs in prop::collection::vec((1u64..2_000, 0u32..100, 0u64..1_000), 1..200),
    ) {
        let lim = Limits { tokens_per_minute: tpm, ..Default::default() };
        let mut l = Limiter::new();
        let mut now = Duration::ZERO;
        let mut net = 0f64;
        let mut largest = 0u64;
        for (cost, used_pct, gap_ms) in reqs {
            now += Duration::from_millis(gap_ms);
            if l.admit("a", &lim, now, cost, 0, 0).is_ok() {
                let refund = cost - cost * u64::from(used_pct) / 100;
                l.refund_tokens("a", &lim, now, refund as i64);
                net += (cost - refund) as f64;
                largest = largest.max(cost);
            }
            let allowed = tpm as f64 + tpm as f64 / 60.0 * now.as_secs_f64() + largest as f64;
            prop_assert!(net <= allowed + 1e-6, "{net} > {allowed}");
        }
    }
}

#[test]
fn admission_reports_the_buckets_as_clients_see_them() {
    let mut l = Limiter::new();
    let lim = Limits {
        requests_per_second: 2,
        burst: 4,
        tokens_per_minute: 600,
        ..Limits::default()
    };
    let r = l.admit("a", &lim, secs(0.0), 100, 0, 0).unwrap();
    let req = r.requests.unwrap();
    assert_eq!((req.limit, req.remaining), (4, 3));
    // One request's worth refills in half a second at 2 per second.
    assert_eq!(req.reset, Duration::from_millis(500));
    let tok = r.tokens.unwrap();
    assert_eq!((tok.limit, tok.remaining), (600, 500));
    // 100 tokens at 10 a second.
    assert_eq!(tok.reset, Duration::from_secs(10));
    // Refused: the state rides along.
    for _ in 0..3 {
        l.admit("a", &lim, secs(0.0), 1, 0, 0).unwrap();
    }
    let e = l.admit("a", &lim, secs(0.0), 1, 0, 0).unwrap_err();
    assert_eq!(e.rate.requests.unwrap().remaining, 0);
    // No limits, no headers.
    let free = l
        .admit("b", &Limits::default(), secs(0.0), 1, 0, 0)
        .unwrap();
    assert!(free.headers().is_empty());
    let h = r.headers();
    assert_eq!(h[0], ("x-ratelimit-limit-requests", "4".to_string()));
    assert_eq!(h[5], ("x-ratelimit-reset-tokens", "10s".to_string()));
}
