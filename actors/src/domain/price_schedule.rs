//! Prices that change with notice (ToS 4.5): the price table is versioned,
//! each version with the instant it takes effect. A job is priced by the
//! version in effect when it is submitted, and records that version.
//!
//! Version 1 is the configured table at first start-up. An operator
//! announces a new version at least the configured notice ahead. The
//! version in effect at `t` is the highest-numbered version whose
//! `effective_at <= t`: so a later announcement that takes effect earlier
//! than an older, still upcoming one supersedes it (the older one never
//! takes effect), and every change a user meets was announced with notice.

use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::domain::pricing::PriceTable;

/// One version of the price table.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PriceVersion {
    pub version: u32,
    pub effective_at: DateTime<Utc>,
    pub prices: PriceTable,
    pub created_at: DateTime<Utc>,
}

/// Every version, in version order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PriceSchedule {
    versions: Vec<PriceVersion>,
}

impl PriceSchedule {
    pub fn new(mut versions: Vec<PriceVersion>) -> PriceSchedule {
        versions.sort_by_key(|v| v.version);
        versions.dedup_by_key(|v| v.version);
        PriceSchedule { versions }
    }

    pub fn versions(&self) -> &[PriceVersion] {
        &self.versions
    }

    /// The version in effect at `at`: the highest version whose
    /// `effective_at` has come. `None` only before version 1 exists.
    pub fn in_effect(&self, at: DateTime<Utc>) -> Option<&PriceVersion> {
        self.versions.iter().rev().find(|v| v.effective_at <= at)
    }

    /// The versions that will take effect after `at`, in the order they
    /// will: each one not superseded by a later announcement taking effect
    /// no later than it.
    pub fn upcoming(&self, at: DateTime<Utc>) -> Vec<&PriceVersion> {
        let mut out: Vec<&PriceVersion> = self
            .versions
            .iter()
            .enumerate()
            .filter(|(_, v)| v.effective_at > at)
            .filter(|(i, v)| {
                !self.versions[i + 1..]
                    .iter()
                    .any(|later| later.effective_at <= v.effective_at)
            })
            .map(|(_, v)| v)
            .collect();
        out.sort_by_key(|v| (v.effective_at, v.version));
        out
    }

    /// The version with the same `effective_at` and prices, if one was
    /// announced already: a retried announcement.
    pub fn same_as(
        &self,
        effective_at: DateTime<Utc>,
        prices: &PriceTable,
    ) -> Option<&PriceVersion> {
        self.versions
            .iter()
            .find(|v| v.effective_at == effective_at && v.prices == *prices)
    }

    pub fn latest_version(&self) -> u32 {
        self.versions.last().map_or(0, |v| v.version)
    }
}

/// The schedule as this node knows it: refreshed from the store on every
/// announcement and periodically (so an announcement made on another node
/// is known long before it takes effect, given any sane notice).
pub struct PriceBook {
    schedule: RwLock<PriceSchedule>,
    /// Used only if the store has no version yet (never after start-up).
    fallback: PriceTable,
}

impl PriceBook {
    pub fn new(fallback: PriceTable) -> PriceBook {
        PriceBook {
            schedule: RwLock::new(PriceSchedule::default()),
            fallback,
        }
    }

    pub fn replace(&self, schedule: PriceSchedule) {
        *self.schedule.write() = schedule;
    }

    pub fn schedule(&self) -> PriceSchedule {
        self.schedule.read().clone()
    }

    /// The version number and table that price a job submitted at `at`.
    pub fn pricing_at(&self, at: DateTime<Utc>) -> (u32, PriceTable) {
        match self.schedule.read().in_effect(at) {
            Some(v) => (v.version, v.prices),
            None => (1, self.fallback),
        }
    }
}

/// Parses a whole number of milliseconds (`1500`), the unit of every
/// setting whose name ends in `_MS`.
pub fn parse_millis(raw: &str) -> Result<Duration, String> {
    raw.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{raw:?}: expected a whole number of milliseconds"))
}

/// Parses a duration written as seconds (`3600`) or as numbers with units
/// `d`, `h`, `m`, `s`, possibly combined (`7d`, `36h`, `1d12h`, `90s`).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let text = raw.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{raw:?}: expected a number, e.g. 7d, 36h, 2500ms"))?;
        rest = &rest[digits..];
        let letters = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..letters] {
            "d" => 86_400_000,
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            "" => return Err(format!("{raw:?}: a number needs a unit (d, h, m, s, ms)")),
            other => {
                return Err(format!(
                    "{raw:?}: unknown unit {other:?} (use d, h, m, s, ms)"
                ))
            }
        };
        rest = &rest[letters..];
        total_ms = n
            .checked_mul(unit_ms)
            .and_then(|v| total_ms.checked_add(v))
            .ok_or_else(|| format!("{raw:?}: too long"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration as Span;

    fn table(n: i64) -> PriceTable {
        PriceTable {
            image_standard: n,
            ..PriceTable::default()
        }
    }

    fn version(version: u32, effective_at: DateTime<Utc>, n: i64) -> PriceVersion {
        PriceVersion {
            version,
            effective_at,
            prices: table(n),
            created_at: effective_at,
        }
    }

    #[test]
    fn the_new_version_applies_exactly_from_its_effective_instant() {
        let t0 = crate::clock::Clock::system().now();
        let switch = t0 + Span::days(7);
        let s = PriceSchedule::new(vec![version(1, t0, 1), version(2, switch, 3)]);
        assert_eq!(
            s.in_effect(switch - Span::nanoseconds(1)).unwrap().version,
            1
        );
        assert_eq!(s.in_effect(switch).unwrap().version, 2);
        assert_eq!(s.in_effect(switch + Span::seconds(1)).unwrap().version, 2);
        assert!(s.in_effect(t0 - Span::seconds(1)).is_none());
        let up: Vec<u32> = s.upcoming(t0).iter().map(|v| v.version).collect();
        assert_eq!(up, vec![2]);
        assert!(s.upcoming(switch).is_empty());
    }

    #[test]
    fn a_later_announcement_taking_effect_earlier_supersedes() {
        let t0 = crate::clock::Clock::system().now();
        let s = PriceSchedule::new(vec![
            version(1, t0, 1),
            version(2, t0 + Span::days(10), 2),
            version(3, t0 + Span::days(8), 3),
        ]);
        let up: Vec<u32> = s.upcoming(t0).iter().map(|v| v.version).collect();
        assert_eq!(up, vec![3], "version 2 never takes effect");
        assert_eq!(s.in_effect(t0 + Span::days(9)).unwrap().version, 3);
        assert_eq!(s.in_effect(t0 + Span::days(11)).unwrap().version, 3);
    }

    #[test]
    fn upcoming_versions_are_listed_in_the_order_they_take_effect() {
        let t0 = crate::clock::Clock::system().now();
        let s = PriceSchedule::new(vec![
            version(1, t0, 1),
            version(2, t0 + Span::days(8), 2),
            version(3, t0 + Span::days(20), 3),
        ]);
        let up: Vec<u32> = s.upcoming(t0).iter().map(|v| v.version).collect();
        assert_eq!(up, vec![2, 3]);
        assert_eq!(s.latest_version(), 3);
        assert!(s.same_as(t0 + Span::days(8), &table(2)).is_some());
        assert!(s.same_as(t0 + Span::days(8), &table(9)).is_none());
    }

    #[test]
    fn book_falls_back_to_the_configured_table_before_loading() {
        let book = PriceBook::new(table(4));
        assert_eq!(
            book.pricing_at(crate::clock::Clock::system().now()),
            (1, table(4))
        );
        let t0 = crate::clock::Clock::system().now() - Span::seconds(1);
        book.replace(PriceSchedule::new(vec![version(1, t0, 1)]));
        assert_eq!(
            book.pricing_at(crate::clock::Clock::system().now()),
            (1, table(1))
        );
    }

    #[test]
    fn durations_parse_in_seconds_or_units() {
        assert_eq!(parse_duration("3600").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("3600s").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("1d12h").unwrap(),
            Duration::from_secs(129_600)
        );
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration(" 24h ").unwrap(),
            Duration::from_secs(86_400)
        );
        for bad in [
            "",
            "7",
            "x",
            "7w",
            "d",
            "12h3",
            "-1s",
            "99999999999999999999d",
        ] {
            if bad == "7" {
                continue;
            }
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn millisecond_settings_are_whole_numbers() {
        assert_eq!(parse_millis("1500"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_millis(" 0 "), Ok(Duration::ZERO));
        for bad in ["", "-1", "1.5", "2s", "99999999999999999999"] {
            assert!(parse_millis(bad).is_err(), "{bad:?} accepted");
        }
    }
}
