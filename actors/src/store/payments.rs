//! Purchases and memberships with their monthly gifts (ToS 4.2, 5), and
//! prices with notice (ToS 4.5).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreResult;
use crate::domain::ids::UserId;
use crate::domain::payments::{
    GiftOutcome, NewPayment, PaymentId, PaymentOutcome, PaymentReview, ScheduledGift,
};
use crate::domain::price_schedule::PriceVersion;
use crate::domain::pricing::PriceTable;

/// Payments, the gifts they schedule, and price versions.
#[async_trait]
pub trait PaymentStore: Send + Sync + 'static {
    /// Claims the payment id and applies what it bought, all at once: a
    /// credit grant, or the extended membership with its monthly gifts
    /// scheduled (and the ones already due granted). A replay with the
    /// same content changes nothing (`replayed`); the same id with other
    /// content is `IdempotencyKeyReused`.
    async fn apply_payment(&self, payment: NewPayment) -> StoreResult<PaymentOutcome>;
    /// Payments recorded for an operator instead of applied (see
    /// [`crate::domain::payments::PaymentReview`]), oldest first.
    async fn payments_for_review(&self, limit: usize) -> StoreResult<Vec<PaymentReview>>;
    /// Gifts whose month has started and that are not granted yet, of
    /// active accounts, oldest first.
    async fn due_gifts(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<ScheduledGift>>;
    /// Grants one scheduled gift exactly once: marks it granted and books
    /// the grant in one transaction; `granted: false` when it was granted
    /// before, is not due yet, or the account is not active.
    async fn grant_gift(
        &self,
        user: UserId,
        payment: PaymentId,
        month: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<GiftOutcome>;
    /// The user's scheduled gifts, by start.
    async fn gifts(&self, user: UserId) -> StoreResult<Vec<ScheduledGift>>;
    /// Every price version, by version.
    async fn price_versions(&self) -> StoreResult<Vec<PriceVersion>>;
    /// Stores `prices` as version 1, effective at `now`, unless a version
    /// exists; returns every version.
    async fn init_prices(
        &self,
        prices: PriceTable,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<PriceVersion>>;
    /// Adds the next version; a version with the same `effective_at` and
    /// prices is returned instead (`true`: a replay).
    async fn announce_prices(
        &self,
        prices: PriceTable,
        effective_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<(PriceVersion, bool)>;
}
