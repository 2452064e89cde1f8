//! Membership tiers (ToS 5.1) and what each one buys: a share of dispatches
//! and per-user limits. Weights and limits are configuration, not code.

use std::fmt;
use std::ops::{Index, IndexMut};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Tier {
    Free,
    Basic,
    Professional,
    Enterprise,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("unknown tier {0:?}: expected free, basic, professional or enterprise")]
pub struct TierError(String);

impl Tier {
    /// How many tiers there are: the length of every [`PerTier`].
    pub const COUNT: usize = 4;

    pub const ALL: [Tier; Tier::COUNT] = [
        Tier::Free,
        Tier::Basic,
        Tier::Professional,
        Tier::Enterprise,
    ];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Basic => "basic",
            Tier::Professional => "professional",
            Tier::Enterprise => "enterprise",
        }
    }

    /// Commercial use of outputs is for Professional and Enterprise (ToS 6.3).
    pub fn license(self) -> License {
        match self {
            Tier::Professional | Tier::Enterprise => License::Commercial,
            Tier::Free | Tier::Basic => License::Personal,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = TierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| TierError(s.to_owned()))
    }
}

/// The licence attached to a job's outputs, fixed at submission (ToS 6.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum License {
    Commercial,
    Personal,
}

impl License {
    pub fn as_str(self) -> &'static str {
        match self {
            License::Commercial => "commercial",
            License::Personal => "personal",
        }
    }
}

/// A user's paid membership. `Free` has no expiry.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Membership {
    pub tier: Tier,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Membership {
    pub const FREE: Membership = Membership {
        tier: Tier::Free,
        expires_at: None,
    };

    /// The tier that counts now: a lapsed membership reads as Free (ToS 5.4).
    /// The balance is a wallet matter and is never touched by expiry.
    pub fn effective_tier(&self, now: DateTime<Utc>) -> Tier {
        match (self.tier, self.expires_at) {
            (Tier::Free, _) => Tier::Free,
            (tier, Some(expires)) if expires > now => tier,
            (_, Some(_)) => Tier::Free,
            // A paid tier without an expiry is granted indefinitely (admin).
            (tier, None) => tier,
        }
    }
}

/// What one tier is entitled to.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierPolicy {
    /// Share of dispatches when every tier has work waiting.
    pub weight: u32,
    /// Jobs of one user assigned or running at once.
    pub max_running: u32,
    /// Jobs of one user waiting at once.
    pub max_waiting: u32,
}

/// One value per tier, indexed by [`Tier`]: weights, limits, counters.
/// (De)serialized as a map by tier name, every tier present once.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct PerTier<T>([T; Tier::COUNT]);

impl<T> PerTier<T> {
    /// Each tier's value from `f`.
    pub fn from_fn(f: impl FnMut(Tier) -> T) -> Self {
        PerTier(Tier::ALL.map(f))
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> PerTier<U> {
        PerTier(self.0.map(f))
    }

    /// Every tier with its value, in `Tier::ALL` order.
    pub fn iter(&self) -> impl Iterator<Item = (Tier, &T)> {
        Tier::ALL.into_iter().zip(self.0.iter())
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Tier, &mut T)> {
        Tier::ALL.into_iter().zip(self.0.iter_mut())
    }

    /// The values alone, in `Tier::ALL` order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }
}

impl<T> PerTier<Option<T>> {
    /// The tiers given here take their value; the others keep `base`'s.
    pub fn or(self, base: PerTier<T>) -> PerTier<T> {
        let mut out = base;
        for (slot, value) in out.0.iter_mut().zip(self.0) {
            if let Some(value) = value {
                *slot = value;
            }
        }
        out
    }
}

/// Reads `free=…,basic=…` as settings write values per tier: each pair's
/// value is read by `value`, a tier not named is `None`, and a tier named
/// twice takes its last value. `shape` is what a pair should look like,
/// for the error (`tier=duration`).
pub fn parse_tier_pairs<T>(
    raw: &str,
    shape: &str,
    mut value: impl FnMut(&str) -> Result<T, String>,
) -> Result<PerTier<Option<T>>, String> {
    let mut out = PerTier::from_fn(|_| None);
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (tier, text) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected {shape}"))?;
        let tier: Tier = tier.trim().parse().map_err(|e: TierError| e.to_string())?;
        out[tier] = Some(value(text.trim()).map_err(|e| format!("{part:?}: {e}"))?);
    }
    Ok(out)
}

impl<T: Copy> PerTier<T> {
    /// The same value for every tier.
    pub const fn splat(value: T) -> Self {
        PerTier([value; Tier::COUNT])
    }
}

/// Values in `Tier::ALL` order.
impl<T> From<[T; Tier::COUNT]> for PerTier<T> {
    fn from(values: [T; Tier::COUNT]) -> Self {
        PerTier(values)
    }
}

impl<T> Index<Tier> for PerTier<T> {
    type Output = T;
    fn index(&self, tier: Tier) -> &T {
        &self.0[tier.index()]
    }
}

impl<T> IndexMut<Tier> for PerTier<T> {
    fn index_mut(&mut self, tier: Tier) -> &mut T {
        &mut self.0[tier.index()]
    }
}

impl<T: Serialize> Serialize for PerTier<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(Tier::COUNT))?;
        for (tier, value) in self.iter() {
            map.serialize_entry(&tier, value)?;
        }
        map.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for PerTier<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = PerTier<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map with free, basic, professional and enterprise")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                use serde::de::Error;
                let mut values: [Option<T>; Tier::COUNT] = Default::default();
                while let Some(tier) = map.next_key::<Tier>()? {
                    let slot = &mut values[tier.index()];
                    if slot.is_some() {
                        return Err(A::Error::custom(format!("tier {tier} given twice")));
                    }
                    *slot = Some(map.next_value()?);
                }
                let mut out = Vec::with_capacity(Tier::COUNT);
                for (tier, value) in Tier::ALL.into_iter().zip(values) {
                    out.push(value.ok_or_else(|| A::Error::missing_field(tier.as_str()))?);
                }
                match <[T; Tier::COUNT]>::try_from(out) {
                    Ok(values) => Ok(PerTier(values)),
                    Err(_) => Err(A::Error::custom("a value for every tier")),
                }
            }
        }
        deserializer.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// The membership tier table (`docs/platform-rules.md`); configuration
/// may replace it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TierTable(pub PerTier<TierPolicy>);

impl Default for TierTable {
    fn default() -> Self {
        let p = |weight, max_running, max_waiting| TierPolicy {
            weight,
            max_running,
            max_waiting,
        };
        TierTable(PerTier([
            p(1, 1, 10),
            p(2, 2, 50),
            p(4, 5, 200),
            p(8, 20, 1000),
        ]))
    }
}

impl Index<Tier> for TierTable {
    type Output = TierPolicy;
    fn index(&self, tier: Tier) -> &TierPolicy {
        &self.0[tier]
    }
}

impl IndexMut<Tier> for TierTable {
    fn index_mut(&mut self, tier: Tier) -> &mut TierPolicy {
        &mut self.0[tier]
    }
}

impl TierTable {
    pub fn policy(&self, tier: Tier) -> TierPolicy {
        self[tier]
    }

    pub fn weights(&self) -> PerTier<u32> {
        self.0.map(|p| p.weight)
    }

    /// Every tier must be able to run and queue something and have a share,
    /// or a tier would starve by configuration.
    pub fn validate(&self) -> Result<(), String> {
        for (tier, p) in self.0.iter() {
            if p.weight == 0 || p.weight > 1000 {
                return Err(format!("tier {tier}: weight must be 1..=1000"));
            }
            if p.max_running == 0 || p.max_waiting == 0 {
                return Err(format!("tier {tier}: limits must be at least 1"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn lapsed_membership_reads_as_free() {
        let now = crate::clock::Clock::system().now();
        let active = Membership {
            tier: Tier::Professional,
            expires_at: Some(now + Duration::days(1)),
        };
        let lapsed = Membership {
            tier: Tier::Professional,
            expires_at: Some(now - Duration::seconds(1)),
        };
        assert_eq!(active.effective_tier(now), Tier::Professional);
        assert_eq!(lapsed.effective_tier(now), Tier::Free);
        assert_eq!(Membership::FREE.effective_tier(now), Tier::Free);
    }

    #[test]
    fn only_professional_and_enterprise_get_commercial_licence() {
        assert_eq!(Tier::Free.license(), License::Personal);
        assert_eq!(Tier::Basic.license(), License::Personal);
        assert_eq!(Tier::Professional.license(), License::Commercial);
        assert_eq!(Tier::Enterprise.license(), License::Commercial);
    }

    #[test]
    fn tier_parses_only_known_names() {
        assert_eq!("basic".parse::<Tier>().unwrap(), Tier::Basic);
        assert!("gold".parse::<Tier>().is_err());
        assert!("Basic".parse::<Tier>().is_err());
    }

    #[test]
    fn default_table_matches_api_and_validates() {
        let t = TierTable::default();
        assert_eq!(t.weights(), PerTier::from([1, 2, 4, 8]));
        assert!(t.validate().is_ok());
        let mut bad = t;
        bad[Tier::Free].weight = 0;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn per_tier_reads_and_writes_by_tier_name() {
        let weights = TierTable::default().weights();
        assert_eq!(weights[Tier::Professional], 4);
        let json = serde_json::to_string(&weights).unwrap();
        assert_eq!(
            json,
            r#"{"free":1,"basic":2,"professional":4,"enterprise":8}"#
        );
        assert_eq!(
            serde_json::from_str::<PerTier<u32>>(&json).unwrap(),
            weights
        );
        for bad in [
            r#"{"free":1,"basic":2,"professional":4}"#,
            r#"{"free":1,"basic":2,"professional":4,"enterprise":8,"gold":9}"#,
            r#"{"free":1,"free":1,"basic":2,"professional":4,"enterprise":8}"#,
        ] {
            assert!(serde_json::from_str::<PerTier<u32>>(bad).is_err(), "{bad}");
        }
        let tiers: Vec<Tier> = PerTier::from_fn(|t| t).iter().map(|(t, _)| t).collect();
        assert_eq!(tiers, Tier::ALL);
    }

    #[test]
    fn tier_pairs_name_some_tiers_over_a_base() {
        let number = |v: &str| v.parse::<u32>().map_err(|e| e.to_string());
        let named = parse_tier_pairs(" free=5, enterprise=0 ,", "tier=n", number).unwrap();
        assert_eq!(named.or(PerTier::splat(9)), PerTier::from([5, 9, 9, 0]));
        let last = parse_tier_pairs("basic=1,basic=2", "tier=n", number).unwrap();
        assert_eq!(last[Tier::Basic], Some(2));
        assert_eq!(
            parse_tier_pairs("", "tier=n", number).unwrap(),
            PerTier::splat(None)
        );
        for (bad, why) in [
            ("free", "expected tier=n"),
            ("gold=5", "unknown tier \"gold\""),
            ("free=x", "\"free=x\": invalid digit"),
        ] {
            let e = parse_tier_pairs(bad, "tier=n", number).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
