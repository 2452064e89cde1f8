//! Credits and wallets.
//!
//! A wallet has `balance` (posted credits) and `held` (open holds); what a
//! user may spend is `available = balance - held`, which never goes below
//! zero. Every change is made through the methods here, which check the
//! arithmetic and the invariant, so no caller can produce an impossible
//! wallet (TigerBeetle's `debits_must_not_exceed_credits`).

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A whole, non-negative number of credits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Credits(i64);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MoneyError {
    #[error("credits cannot be negative")]
    Negative,
    #[error("credit arithmetic overflowed")]
    Overflow,
    #[error("an amount of credits must be positive")]
    NotPositive,
    #[error("not enough available credits: {required} required, {available} available")]
    Insufficient {
        required: Credits,
        available: Credits,
    },
    #[error("wallet invariant broken: {0}")]
    Invariant(&'static str),
}

impl Credits {
    pub const ZERO: Credits = Credits(0);
    /// Far beyond any real balance; keeps sums of many amounts in i64.
    pub const MAX: Credits = Credits(1_000_000_000_000);

    pub fn new(value: i64) -> Result<Self, MoneyError> {
        if value < 0 {
            Err(MoneyError::Negative)
        } else if value > Self::MAX.0 {
            Err(MoneyError::Overflow)
        } else {
            Ok(Credits(value))
        }
    }

    /// A positive amount: ledger entries move at least one credit.
    pub fn positive(value: i64) -> Result<Self, MoneyError> {
        if value <= 0 {
            return Err(MoneyError::NotPositive);
        }
        Self::new(value)
    }

    pub const fn get(self) -> i64 {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn checked_add(self, other: Credits) -> Result<Credits, MoneyError> {
        self.0
            .checked_add(other.0)
            .ok_or(MoneyError::Overflow)
            .and_then(Credits::new)
    }

    pub fn checked_sub(self, other: Credits) -> Result<Credits, MoneyError> {
        self.0
            .checked_sub(other.0)
            .ok_or(MoneyError::Overflow)
            .and_then(Credits::new)
    }

    pub fn checked_mul(self, factor: u32) -> Result<Credits, MoneyError> {
        self.0
            .checked_mul(i64::from(factor))
            .ok_or(MoneyError::Overflow)
            .and_then(Credits::new)
    }
}

impl TryFrom<i64> for Credits {
    type Error = MoneyError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Credits::new(value)
    }
}

impl From<Credits> for i64 {
    fn from(c: Credits) -> i64 {
        c.0
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}cr", self.0)
    }
}

/// A user's wallet. Construct with [`Wallet::new`] or from the store; every
/// mutation returns the wallet after it, checked.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Wallet {
    pub balance: Credits,
    pub held: Credits,
}

impl Wallet {
    pub fn new(balance: Credits, held: Credits) -> Result<Self, MoneyError> {
        let wallet = Wallet { balance, held };
        wallet.check()?;
        Ok(wallet)
    }

    pub fn available(&self) -> Credits {
        // `check` guarantees held <= balance, so this cannot underflow.
        Credits(self.balance.0 - self.held.0)
    }

    /// The invariant every stored wallet satisfies.
    pub fn check(&self) -> Result<(), MoneyError> {
        if self.held > self.balance {
            return Err(MoneyError::Invariant("held exceeds balance"));
        }
        Ok(())
    }

    /// Credits arrive: registration, purchase, membership gift, admin.
    pub fn grant(self, amount: Credits) -> Result<Wallet, MoneyError> {
        require_positive(amount)?;
        Wallet::new(self.balance.checked_add(amount)?, self.held)
    }

    /// Reserve credits for a job; refused when not enough are available.
    pub fn hold(self, amount: Credits) -> Result<Wallet, MoneyError> {
        require_positive(amount)?;
        if amount > self.available() {
            return Err(MoneyError::Insufficient {
                required: amount,
                available: self.available(),
            });
        }
        Wallet::new(self.balance, self.held.checked_add(amount)?)
    }

    /// Capture a hold: the credits are spent.
    pub fn post(self, amount: Credits) -> Result<Wallet, MoneyError> {
        require_positive(amount)?;
        if amount > self.held {
            return Err(MoneyError::Invariant("post exceeds held"));
        }
        Wallet::new(
            self.balance.checked_sub(amount)?,
            self.held.checked_sub(amount)?,
        )
    }

    /// Release a hold: the credits become available again (a refund).
    pub fn void(self, amount: Credits) -> Result<Wallet, MoneyError> {
        require_positive(amount)?;
        if amount > self.held {
            return Err(MoneyError::Invariant("void exceeds held"));
        }
        Wallet::new(self.balance, self.held.checked_sub(amount)?)
    }
}

fn require_positive(amount: Credits) -> Result<(), MoneyError> {
    if amount.is_zero() {
        Err(MoneyError::NotPositive)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(v: i64) -> Credits {
        Credits::new(v).unwrap()
    }

    #[test]
    fn credits_refuse_negative_and_overflow() {
        assert_eq!(Credits::new(-1), Err(MoneyError::Negative));
        assert!(Credits::new(i64::MAX).is_err());
        assert_eq!(Credits::positive(0), Err(MoneyError::NotPositive));
        assert!(c(5).checked_sub(c(6)).is_err());
    }

    #[test]
    fn hold_post_void_keep_available_non_negative() {
        let w = Wallet::default().grant(c(10)).unwrap();
        let w = w.hold(c(4)).unwrap();
        assert_eq!((w.balance, w.held, w.available()), (c(10), c(4), c(6)));
        assert_eq!(
            w.hold(c(7)),
            Err(MoneyError::Insufficient {
                required: c(7),
                available: c(6)
            })
        );
        let posted = w.post(c(4)).unwrap();
        assert_eq!((posted.balance, posted.held), (c(6), c(0)));
        let voided = w.void(c(4)).unwrap();
        assert_eq!((voided.balance, voided.held), (c(10), c(0)));
        assert!(posted.post(c(1)).is_err(), "nothing held to post");
        assert!(w.hold(Credits::ZERO).is_err());
    }

    #[test]
    fn wallet_rejects_held_above_balance() {
        assert!(Wallet::new(c(1), c(2)).is_err());
    }

    #[test]
    fn credits_deserialize_rejects_negative() {
        assert!(serde_json::from_str::<Credits>("-3").is_err());
        assert_eq!(serde_json::from_str::<Credits>("3").unwrap(), c(3));
    }
}
