//! Purchases (ToS 4.2, 5.2) and memberships (ToS 5.1, 5.3, 5.4).
//!
//! A payment provider reports each completed payment once or more; the
//! store claims the payment id in the same transaction as what it buys, so
//! a replay changes nothing. Payments are final: there is no refund path.
//!
//! A credit pack is a `purchase` grant. A membership extends
//! `membership_expires_at` by its period from the later of now and the
//! current expiry; a higher tier than the one in effect takes effect at
//! once (the rest of the current period is upgraded too), a lower one
//! never lowers the tier in effect. Each paid month of the period is
//! scheduled as one `membership_gift` of the purchased tier, identified by
//! (payment id, month index): the first month's gift is granted in the
//! payment's own transaction when it starts at once, the others by the
//! periodic sweep when their month starts — each exactly once, by a
//! conditional update of the gift row in the same transaction as the grant.

use std::fmt;

use chrono::{DateTime, Months, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::domain::account::User;
use crate::domain::ids::UserId;
use crate::domain::job::RequestHash;
use crate::domain::tier::{Membership, PerTier, Tier};
use crate::domain::wallet::{Credits, Wallet};

/// How long a membership purchase lasts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Period {
    Month,
    Year,
}

impl Period {
    pub fn months(self) -> u32 {
        match self {
            Period::Month => 1,
            Period::Year => 12,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Month => "month",
            Period::Year => "year",
        }
    }
}

/// What a payment bought.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Product {
    Credits { credits: Credits },
    Membership { tier: Tier, period: Period },
}

/// The provider's id of a payment: 1..=255 visible ASCII characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PaymentId(String);

#[derive(Debug, Error, PartialEq, Eq)]
#[error("payment_id must be 1..=255 visible ASCII characters")]
pub struct PaymentIdError;

impl PaymentId {
    pub fn parse(raw: &str) -> Result<PaymentId, PaymentIdError> {
        if raw.is_empty() || raw.len() > 255 || !raw.chars().all(|c| c.is_ascii_graphic()) {
            return Err(PaymentIdError);
        }
        Ok(PaymentId(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn from_stored(stored: String) -> PaymentId {
        PaymentId(stored)
    }
}

impl fmt::Display for PaymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A verified payment to apply.
#[derive(Clone, Debug)]
pub struct NewPayment {
    pub payment_id: PaymentId,
    pub user_id: UserId,
    pub product: Product,
    /// Of `(user_id, product)`: a payment id seen with other content is a
    /// conflict, not a replay.
    pub request_hash: RequestHash,
    /// The gift per paid month of a membership product, from the
    /// configuration at purchase time (zero: no gift).
    pub monthly_gift: Credits,
    pub now: DateTime<Utc>,
}

impl NewPayment {
    pub fn hash_of(user: UserId, product: &Product) -> RequestHash {
        let canonical = serde_json::to_vec(&(user, product)).unwrap_or_default();
        RequestHash::of(&canonical)
    }
}

#[derive(Clone, Debug)]
pub struct PaymentOutcome {
    pub user: User,
    pub wallet: Wallet,
    /// Credits granted by this call: the pack, or the gifts already due.
    pub granted: Credits,
    /// The payment id was applied before; nothing changed.
    pub replayed: bool,
    /// Why the payment was recorded for an operator instead of applied
    /// (nothing was granted); also on a replay of such a payment.
    pub review: Option<String>,
}

/// A paid event that could not be applied as bought: the provider has the
/// money, so it is kept for an operator to settle by hand instead of being
/// refused (a refusal tells the provider to stop retrying and the payment
/// would be recorded nowhere).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PaymentReview {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub payment_id: PaymentId,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub user_id: UserId,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub product: Product,
    pub reason: String,
    pub received_at: DateTime<Utc>,
}

/// One paid month's gift, due from `starts_at`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ScheduledGift {
    pub payment_id: PaymentId,
    /// 0 for the first month of the payment's period.
    pub month: u32,
    pub user_id: UserId,
    pub tier: Tier,
    pub amount: Credits,
    pub starts_at: DateTime<Utc>,
    pub granted_at: Option<DateTime<Utc>>,
    /// Set when the gift's whole month passed while the account was
    /// suspended: a benefit of a month not enjoyed, never granted later.
    #[serde(default)]
    pub lapsed_at: Option<DateTime<Utc>>,
}

impl ScheduledGift {
    /// The end of the gift's month (the next month's start). `None` only
    /// past the calendar's end, where no gift can be scheduled anyway.
    pub fn ends_at(&self) -> Option<DateTime<Utc>> {
        self.starts_at.checked_add_months(Months::new(1))
    }

    /// The ledger note of the grant.
    pub fn note(&self) -> String {
        format!(
            "{} membership, month {} (payment {})",
            self.tier,
            self.month + 1,
            self.payment_id
        )
    }
}

#[derive(Clone, Copy, Debug)]
pub struct GiftOutcome {
    pub wallet: Wallet,
    /// False when the gift was granted before (or the account is not
    /// active): nothing changed.
    pub granted: bool,
    /// Credits granted by this call (zero when `granted` is false).
    pub amount: Credits,
}

/// Gift credits per paid month, by tier (ToS 5.3); configuration.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GiftTable {
    pub basic: i64,
    pub professional: i64,
    pub enterprise: i64,
}

impl Default for GiftTable {
    fn default() -> Self {
        GiftTable {
            basic: 200,
            professional: 1000,
            enterprise: 5000,
        }
    }
}

impl GiftTable {
    pub fn monthly(&self, tier: Tier) -> Credits {
        let v = match tier {
            Tier::Free => 0,
            Tier::Basic => self.basic,
            Tier::Professional => self.professional,
            Tier::Enterprise => self.enterprise,
        };
        Credits::new(v).unwrap_or(Credits::ZERO)
    }

    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("basic", self.basic),
            ("professional", self.professional),
            ("enterprise", self.enterprise),
        ] {
            if !(0..=MAX_GIFT).contains(&v) {
                return Err(format!("membership gift {name} must be 0..={MAX_GIFT}"));
            }
        }
        Ok(())
    }
}

/// Gift credits set per paid tier by a setting, over the table the
/// configuration file (or the default) gives: `basic=200,enterprise=5000`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct GiftOverrides(pub PerTier<Option<i64>>);

impl GiftOverrides {
    pub fn over(&self, base: GiftTable) -> GiftTable {
        GiftTable {
            basic: self.0[Tier::Basic].unwrap_or(base.basic),
            professional: self.0[Tier::Professional].unwrap_or(base.professional),
            enterprise: self.0[Tier::Enterprise].unwrap_or(base.enterprise),
        }
    }
}

impl std::str::FromStr for GiftOverrides {
    type Err = String;
    fn from_str(raw: &str) -> Result<GiftOverrides, String> {
        let named = crate::domain::tier::parse_tier_pairs(raw, "tier=credits", |amount| {
            let amount: i64 = amount
                .parse()
                .map_err(|_| "expected a whole number of credits".to_owned())?;
            if !(0..=MAX_GIFT).contains(&amount) {
                return Err(format!("a membership gift must be 0..={MAX_GIFT}"));
            }
            Ok(amount)
        })?;
        if named[Tier::Free].is_some() {
            return Err("free has no paid months to gift (basic, professional, enterprise)".into());
        }
        Ok(GiftOverrides(named))
    }
}

/// The most credits one paid month may gift.
const MAX_GIFT: i64 = 10_000_000;

/// The membership after buying `tier` for `period` at `now`, and the start
/// of the paid period. `None` when the dates overflow.
pub fn extend_membership(
    current: Membership,
    tier: Tier,
    period: Period,
    now: DateTime<Utc>,
) -> Option<(Membership, DateTime<Utc>)> {
    let effective = current.effective_tier(now);
    let start = match (effective, current.expires_at) {
        (Tier::Free, _) => now,
        (_, Some(expires)) => expires.max(now),
        // A paid tier without expiry (granted by an operator): nothing to
        // extend from; the paid period starts now.
        (_, None) => now,
    };
    let new_tier = effective.max(tier);
    let indefinite = effective != Tier::Free && current.expires_at.is_none() && effective >= tier;
    let expires_at = if indefinite {
        None
    } else {
        Some(start.checked_add_months(Months::new(period.months()))?)
    };
    Some((
        Membership {
            tier: new_tier,
            expires_at,
        },
        start,
    ))
}

/// One gift per paid month from `start`; none when the tier has no gift.
pub fn gift_schedule(
    payment_id: &PaymentId,
    user: UserId,
    tier: Tier,
    period: Period,
    start: DateTime<Utc>,
    monthly: Credits,
) -> Option<Vec<ScheduledGift>> {
    if monthly.is_zero() || tier == Tier::Free {
        return Some(Vec::new());
    }
    (0..period.months())
        .map(|month| {
            Some(ScheduledGift {
                payment_id: payment_id.clone(),
                month,
                user_id: user,
                tier,
                amount: monthly,
                starts_at: start.checked_add_months(Months::new(month))?,
                granted_at: None,
                lapsed_at: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap()
    }

    #[test]
    fn buying_from_free_starts_now() {
        let now = at(2026, 1, 31);
        let (m, start) =
            extend_membership(Membership::FREE, Tier::Basic, Period::Month, now).unwrap();
        assert_eq!(start, now);
        assert_eq!(m.tier, Tier::Basic);
        // Month arithmetic clamps to the end of a shorter month.
        assert_eq!(m.expires_at, Some(at(2026, 2, 28)));
    }

    #[test]
    fn renewal_extends_from_the_current_expiry() {
        let now = at(2026, 3, 10);
        let current = Membership {
            tier: Tier::Basic,
            expires_at: Some(at(2026, 4, 1)),
        };
        let (m, start) = extend_membership(current, Tier::Basic, Period::Year, now).unwrap();
        assert_eq!(start, at(2026, 4, 1));
        assert_eq!(m.expires_at, Some(at(2027, 4, 1)));
        assert_eq!(m.tier, Tier::Basic);
    }

    #[test]
    fn upgrade_takes_effect_at_once_and_downgrade_never_lowers() {
        let now = at(2026, 3, 10);
        let basic = Membership {
            tier: Tier::Basic,
            expires_at: Some(at(2026, 4, 1)),
        };
        let (up, _) = extend_membership(basic, Tier::Enterprise, Period::Month, now).unwrap();
        assert_eq!(up.effective_tier(now), Tier::Enterprise);
        assert_eq!(up.expires_at, Some(at(2026, 5, 1)));
        let pro = Membership {
            tier: Tier::Professional,
            expires_at: Some(at(2026, 4, 1)),
        };
        let (down, _) = extend_membership(pro, Tier::Basic, Period::Month, now).unwrap();
        assert_eq!(down.tier, Tier::Professional);
        assert_eq!(down.expires_at, Some(at(2026, 5, 1)));
    }

    #[test]
    fn a_lapsed_membership_counts_as_free() {
        let now = at(2026, 3, 10);
        let lapsed = Membership {
            tier: Tier::Enterprise,
            expires_at: Some(now - Duration::days(3)),
        };
        let (m, start) = extend_membership(lapsed, Tier::Basic, Period::Month, now).unwrap();
        assert_eq!((m.tier, start), (Tier::Basic, now));
    }

    #[test]
    fn a_year_schedules_twelve_monthly_gifts() {
        let id = PaymentId::parse("pay_1").unwrap();
        let start = at(2026, 1, 31);
        let gifts = gift_schedule(
            &id,
            UserId::generate(),
            Tier::Professional,
            Period::Year,
            start,
            Credits::new(1000).unwrap(),
        )
        .unwrap();
        assert_eq!(gifts.len(), 12);
        assert_eq!(gifts[0].starts_at, start);
        assert_eq!(gifts[1].starts_at, at(2026, 2, 28));
        assert_eq!(gifts[2].starts_at, at(2026, 3, 31));
        assert_eq!(gifts[11].month, 11);
        let none = gift_schedule(
            &id,
            UserId::generate(),
            Tier::Basic,
            Period::Month,
            start,
            Credits::ZERO,
        )
        .unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn payment_ids_are_bounded_visible_ascii() {
        assert!(PaymentId::parse("pay_123").is_ok());
        assert!(PaymentId::parse("").is_err());
        assert!(PaymentId::parse("has space").is_err());
        assert!(PaymentId::parse(&"x".repeat(256)).is_err());
    }

    #[test]
    fn the_request_hash_distinguishes_content() {
        let u = UserId::generate();
        let a = Product::Credits {
            credits: Credits::new(10).unwrap(),
        };
        let b = Product::Credits {
            credits: Credits::new(11).unwrap(),
        };
        assert_eq!(NewPayment::hash_of(u, &a), NewPayment::hash_of(u, &a));
        assert_ne!(NewPayment::hash_of(u, &a), NewPayment::hash_of(u, &b));
    }
}
