//! The usage records router replicas write and the control-plane reads:
//! the `bulkhead_usage` KV bucket, its keys (`names::usage_key`) and the
//! UTC days they name.
use async_nats::jetstream::{self, kv};
use bulkhead_proto::names;
use time::OffsetDateTime;

/// A UTC calendar day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Day {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

impl Day {
    /// The UTC day and hour of a Unix time in milliseconds.
    pub fn at(unix_ms: i64) -> (Day, u8) {
        let t = OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        (
            Day {
                year: t.year(),
                month: t.month() as u8,
                day: t.day(),
            },
            t.hour(),
        )
    }

    /// `YYYY-MM-DD`.
    pub fn iso(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// Parses `YYYY-MM-DD` (a real date).
    pub fn parse(s: &str) -> Option<Day> {
        let mut it = s.splitn(3, '-');
        let (y, m, d) = (it.next()?, it.next()?, it.next()?);
        if y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return None;
        }
        let day = Day {
            year: y.parse().ok()?,
            month: m.parse().ok()?,
            day: d.parse().ok()?,
        };
        day.date().map(|_| day)
    }

    pub fn date(&self) -> Option<time::Date> {
        let m = time::Month::try_from(self.month).ok()?;
        time::Date::from_calendar_date(self.year, m, self.day).ok()
    }

    pub fn same_month(&self, other: &Day) -> bool {
        (self.year, self.month) == (other.year, other.month)
    }

    /// Days from `earlier` to this day (negative when it is later).
    pub fn days_since(&self, earlier: &Day) -> i64 {
        match (self.date(), earlier.date()) {
            (Some(a), Some(b)) => (a - b).whole_days(),
            _ => 0,
        }
    }

    /// Unix ms of the midnight (UTC) that ends this day.
    pub fn end_ms(&self) -> i64 {
        let d = self
            .date()
            .and_then(|d| d.next_day())
            .unwrap_or(time::Date::MAX);
        d.midnight().assume_utc().unix_timestamp() * 1000
    }

    /// Unix ms of the midnight (UTC) that ends this day's month.
    pub fn month_end_ms(&self) -> i64 {
        let (y, m) = if self.month == 12 {
            (self.year + 1, 1)
        } else {
            (self.year, self.month + 1)
        };
        Day {
            year: y,
            month: m,
            day: 1,
        }
        .date()
        .map_or(i64::MAX, |d| {
            d.midnight().assume_utc().unix_timestamp() * 1000
        })
    }
}

/// A usage record's key: its day (a real date), router and tenant.
pub fn parse_key(k: &str) -> Option<(Day, &str, &str)> {
    let (year, month, day, router, tenant) = names::parse_usage_key(k)?;
    let d = Day { year, month, day };
    d.date().map(|_| (d, router, tenant))
}

/// Opens the usage bucket; `create`: creating it when missing (the
/// control-plane does; routers may only open it).
pub async fn usage_bucket(
    js: &jetstream::Context,
    create: bool,
) -> Result<kv::Store, crate::NatsError> {
    let name = names::USAGE_BUCKET;
    match js.get_key_value(name).await {
        Ok(s) => return Ok(s),
        Err(e) if !create => return Err(crate::NatsError::bucket(name, "opening", e)),
        Err(_) => {}
    }
    js.create_key_value(kv::Config {
        bucket: name.to_string(),
        history: 1,
        max_age: std::time::Duration::from_secs(names::USAGE_MAX_AGE_DAYS * 86_400),
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| crate::NatsError::bucket(name, "creating", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-08T10:00:00Z, 2026-12-09T00:00:00Z, 2026-12-31T23:30:00Z,
    /// 2027-01-01T00:00:00Z.
    const DEC8_10H: i64 = 1_796_724_000_000;
    const DEC9: i64 = 1_796_774_400_000;
    const DEC31_2330: i64 = 1_798_759_800_000;
    const JAN1: i64 = 1_798_761_600_000;

    #[test]
    fn days_hours_and_their_ends() {
        let (d, hour) = Day::at(DEC8_10H);
        assert_eq!(
            (d, hour),
            (
                Day {
                    year: 2026,
                    month: 12,
                    day: 8
                },
                10
            )
        );
        assert_eq!(d.iso(), "2026-12-08");
        assert_eq!(Day::parse("2026-12-08"), Some(d));
        for bad in ["2026-13-01", "2026-02-30", "26-12-08", "2026-1-08", "x", ""] {
            assert_eq!(Day::parse(bad), None, "{bad}");
        }
        assert_eq!(d.end_ms(), DEC9);
        let (dec31, _) = Day::at(DEC31_2330);
        assert_eq!((dec31.end_ms(), dec31.month_end_ms()), (JAN1, JAN1));
        assert_eq!(d.month_end_ms(), JAN1);
        assert_eq!(dec31.days_since(&d), 23);
        assert_eq!(d.days_since(&dec31), -23);
        assert!(d.same_month(&dec31) && !d.same_month(&Day::at(JAN1).0));
    }

    #[test]
    fn record_keys() {
        let k = names::usage_key(2026, 12, 8, "router-0", "acme");
        assert_eq!(k, "m202612.d08.router-0.acme");
        let (d, r, t) = parse_key(&k).unwrap();
        assert_eq!((d.iso().as_str(), r, t), ("2026-12-08", "router-0", "acme"));
        for bad in [
            "x",
            "m202613.d01.r.acme",
            "m202612.d32.r.acme",
            "m202612.d08.r",
            "m202612.d08.r.acme.more",
            "m2026120.d08.r.acme",
            "m202612.d8.r.acme",
            "m202612.d08.R.acme",
            "m202612.d08.r.Acme",
        ] {
            assert!(parse_key(bad).is_none(), "{bad}");
        }
    }
}
