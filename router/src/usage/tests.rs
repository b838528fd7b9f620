use super::*;

/// 2026-12-08T10:00:00Z.
const DEC8_10H: i64 = 1_796_724_000_000;
const HOUR: i64 = 3_600_000;
/// 2026-12-09T00:00:00Z.
const DEC9: i64 = 1_796_774_400_000;
/// 2026-12-31T23:30:00Z and 2027-01-01T00:00:00Z.
const DEC31_2330: i64 = 1_798_759_800_000;
const JAN1: i64 = 1_798_761_600_000;

fn req(prompt: u64, completion: u64) -> Counts {
    Counts {
        requests: 1,
        prompt_tokens: prompt,
        cached_tokens: prompt / 2,
        completion_tokens: completion,
    }
}

#[test]
fn usage_is_counted_per_tenant_key_day_and_month() {
    let mut b = UsageBook::new("r0");
    b.record("acme", "bh_k1", DEC8_10H, req(10, 5));
    b.record("acme", "bh_k2", DEC8_10H + HOUR, req(20, 0));
    b.record("other", "bh_o", DEC8_10H, req(1000, 1000));
    // On the 8th: acme used 35 today, 35 this month.
    assert_eq!(b.used("acme", None, DEC8_10H + 2 * HOUR), (35, 35));
    assert_eq!(b.used("acme", Some("bh_k1"), DEC8_10H), (15, 15));
    b.record("acme", "bh_k1", DEC9 + HOUR, req(1, 1));
    // On the 9th: 2 today, 37 this month.
    assert_eq!(b.used("acme", None, DEC9 + 2 * HOUR), (2, 37));
    // In January nothing of December counts.
    b.record("acme", "bh_k1", DEC31_2330, req(7, 0));
    assert_eq!(b.used("acme", None, JAN1 + HOUR), (0, 0));
}

#[test]
fn budgets_refuse_with_what_ran_out_and_when_it_resets() {
    let mut b = UsageBook::new("r0");
    let none = Budgets::default();
    let daily = |n| Budgets {
        daily: n,
        monthly: 0,
    };
    b.record("acme", "bh_k1", DEC8_10H, req(60, 40));
    assert!(b.check("acme", daily(101), "bh_k1", none, DEC8_10H).is_ok());
    let e = b
        .check("acme", daily(100), "bh_k1", none, DEC8_10H)
        .unwrap_err();
    assert_eq!(e.owner, Owner::Tenant("acme".into()));
    assert!(!e.monthly);
    assert_eq!((e.budget, e.used, e.resets_unix_ms), (100, 100, DEC9));
    let msg = e.to_string();
    assert!(
        msg.contains("daily token budget of tenant \"acme\" (100 tokens)"),
        "{msg}"
    );
    assert!(msg.contains("resets at 2026-12-09T00:00:00Z"), "{msg}");
    // The next day it is fresh; a monthly budget is not.
    assert!(b.check("acme", daily(100), "bh_k1", none, DEC9).is_ok());
    let monthly = Budgets {
        daily: 0,
        monthly: 100,
    };
    let e = b.check("acme", monthly, "bh_k1", none, DEC9).unwrap_err();
    assert!(e.monthly && e.resets_unix_ms == JAN1, "{e:?}");
    assert!(b.check("acme", monthly, "bh_k1", none, JAN1).is_ok());
    // A key's budget counts only that key.
    assert!(b.check("acme", none, "bh_k2", daily(50), DEC8_10H).is_ok());
    let e = b
        .check("acme", none, "bh_k1", daily(50), DEC8_10H)
        .unwrap_err();
    assert_eq!(e.owner, Owner::Key("bh_k1".into()));
    assert!(e.to_string().contains("API key bh_k1…"), "{e}");
    // No budgets: never refused.
    b.record("acme", "bh_k1", DEC8_10H, req(u64::MAX, u64::MAX));
    assert!(b.check("acme", none, "bh_k1", none, DEC8_10H).is_ok());
}

#[test]
fn what_one_replica_writes_another_counts() {
    let mut r0 = UsageBook::new("r0");
    let mut r1 = UsageBook::new("r1");
    r0.record("acme", "bh_k1", DEC8_10H, req(30, 20));
    r0.record("acme", "bh_k1", DEC8_10H + 1, req(30, 20));
    let written = r0.take_dirty(DEC8_10H);
    assert_eq!(written.len(), 1);
    let (key, v) = &written[0];
    assert_eq!(key, "m202612.d08.r0.acme");
    assert_eq!((v.router_id.as_str(), v.day.as_str()), ("r0", "2026-12-08"));
    assert_eq!(v.hours.len(), 1);
    assert_eq!((v.hours[0].hour, v.hours[0].requests), (10, 2));
    assert_eq!(v.hours[0].cached_tokens, 30);
    assert!(r0.take_dirty(DEC8_10H).is_empty(), "written once");
    // At shutdown every record is written again.
    r0.mark_all_dirty();
    assert_eq!(r0.take_dirty(DEC8_10H), written);
    r1.apply(key, Some(v), false);
    assert_eq!(r1.used("acme", None, DEC8_10H), (100, 100));
    let budget = Budgets {
        daily: 100,
        monthly: 0,
    };
    assert!(
        r1.check("acme", budget, "bh_k9", Budgets::default(), DEC8_10H)
            .is_err()
    );
    // A newer record replaces the older; a deleted one is gone.
    r0.record("acme", "bh_k1", DEC8_10H, req(1, 0));
    let (key, v) = r0.take_dirty(DEC8_10H).pop().unwrap();
    r1.apply(&key, Some(&v), false);
    assert_eq!(r1.used("acme", None, DEC8_10H), (101, 101));
    r1.apply(&key, None, false);
    assert_eq!(r1.used("acme", None, DEC8_10H), (0, 0));
    // A replica's own record is its echo (ignored), except while seeding
    // after a restart, when it carries on from it.
    let mut again = UsageBook::new("r0");
    again.apply(&key, Some(&v), false);
    assert_eq!(again.used("acme", None, DEC8_10H), (0, 0));
    again.apply(&key, Some(&v), true);
    again.record("acme", "bh_k1", DEC8_10H, req(1, 0));
    assert_eq!(again.used("acme", None, DEC8_10H), (102, 102));
    let (_, v) = again.take_dirty(DEC8_10H).pop().unwrap();
    assert_eq!(v.hours[0].requests, 4);
    // Keys that are not usage records, or name a bad day, are ignored.
    for bad in [
        "x",
        "m202613.d01.r2.acme",
        "m202612.d08.r2",
        "m202612.d32.r2.acme",
    ] {
        r1.apply(bad, Some(&v), false);
    }
    assert_eq!(r1.used("acme", None, DEC8_10H), (0, 0));
    // Past months are forgotten.
    r1.apply("m202612.d08.r2.acme", Some(&v), false);
    r1.forget_past_months(JAN1);
    assert_eq!(r1.used("acme", None, DEC8_10H), (0, 0));
}
