//! Membership tiers (ToS 5.1) and what each one buys: a share of dispatches
//! and per-user limits. Weights and limits are configuration, not code.

use std::fmt;
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
    pub const ALL: [Tier; 4] = [
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

/// The membership tier table (`docs/platform-rules.md`); configuration
/// may replace it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierTable {
    pub free: TierPolicy,
    pub basic: TierPolicy,
    pub professional: TierPolicy,
    pub enterprise: TierPolicy,
}

impl Default for TierTable {
    fn default() -> Self {
        let p = |weight, max_running, max_waiting| TierPolicy {
            weight,
            max_running,
            max_waiting,
        };
        TierTable {
            free: p(1, 1, 10),
            basic: p(2, 2, 50),
            professional: p(4, 5, 200),
            enterprise: p(8, 20, 1000),
        }
    }
}

impl TierTable {
    pub fn policy(&self, tier: Tier) -> TierPolicy {
        match tier {
            Tier::Free => self.free,
            Tier::Basic => self.basic,
            Tier::Professional => self.professional,
            Tier::Enterprise => self.enterprise,
        }
    }

    pub fn weights(&self) -> [u32; 4] {
        Tier::ALL.map(|t| self.policy(t).weight)
    }

    /// Every tier must be able to run and queue something and have a share,
    /// or a tier would starve by configuration.
    pub fn validate(&self) -> Result<(), String> {
        for tier in Tier::ALL {
            let p = self.policy(tier);
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
        assert_eq!(t.weights(), [1, 2, 4, 8]);
        assert!(t.validate().is_ok());
        let mut bad = t;
        bad.free.weight = 0;
        assert!(bad.validate().is_err());
    }
}
