//! Payments and memberships (ToS 4.2, 5) and prices with notice (ToS
//! 4.5) as orchestrator operations.

use chrono::{DateTime, SubsecRound, Utc};

use super::sweep::{chrono_span, grant_due_gifts, refresh_prices};
use super::Orchestrator;
use crate::actors::wallet::ApplyPayment;
use crate::domain::ids::UserId;
use crate::domain::payments::{NewPayment, PaymentId, PaymentOutcome, Product, ScheduledGift};
use crate::domain::price_schedule::PriceVersion;
use crate::domain::pricing::PriceTable;
use crate::error::OrchestratorError;

impl Orchestrator {
    /// Applies a verified payment, idempotent by its id.
    pub async fn apply_payment(
        &self,
        payment_id: PaymentId,
        user: UserId,
        product: Product,
    ) -> Result<PaymentOutcome, OrchestratorError> {
        self.user(user).await?;
        let monthly_gift = match product {
            Product::Membership { tier, .. } => self.config.platform.gifts.monthly(tier),
            Product::Credits { .. } => crate::domain::wallet::Credits::ZERO,
        };
        let payment = NewPayment {
            request_hash: NewPayment::hash_of(user, &product),
            payment_id,
            user_id: user,
            product,
            monthly_gift,
            // Every adapter keeps microseconds.
            now: self.config.clock.now().trunc_subsecs(6),
        };
        Ok(self.wallets.call(user, ApplyPayment(payment)).await??)
    }

    /// Payments kept for an operator instead of applied, oldest first.
    pub async fn payments_for_review(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::domain::payments::PaymentReview>, OrchestratorError> {
        Ok(self.store.payments_for_review(limit).await?)
    }

    /// Grants the gifts due at `now` (the sweep does this periodically).
    pub async fn grant_due_gifts(&self, now: DateTime<Utc>) -> Result<usize, OrchestratorError> {
        grant_due_gifts(self.store.as_ref(), &self.wallets, now).await
    }

    /// The user's next gift not granted yet.
    pub async fn next_gift(
        &self,
        user: UserId,
    ) -> Result<Option<ScheduledGift>, OrchestratorError> {
        let gifts = self.store.gifts(user).await?;
        Ok(gifts.into_iter().find(|g| g.granted_at.is_none()))
    }

    /// The version in effect now and the ones announced after it.
    pub async fn pricing(&self) -> Result<(PriceVersion, Vec<PriceVersion>), OrchestratorError> {
        refresh_prices(self.store.as_ref(), &self.platform).await?;
        let schedule = self.platform.prices.schedule();
        let now = self.config.clock.now();
        // Before version 1's instant only on a node whose clock is behind.
        let current = schedule
            .in_effect(now)
            .or_else(|| schedule.versions().first())
            .copied()
            .ok_or_else(|| OrchestratorError::Internal("no price version in effect".into()))?;
        let upcoming = schedule.upcoming(now).into_iter().copied().collect();
        Ok((current, upcoming))
    }

    /// Announces a price version, refused when it takes effect sooner than
    /// the configured notice. An identical announcement is a replay.
    pub async fn announce_prices(
        &self,
        prices: PriceTable,
        effective_at: DateTime<Utc>,
    ) -> Result<(PriceVersion, bool), OrchestratorError> {
        prices
            .validate()
            .map_err(OrchestratorError::InvalidParams)?;
        // Every adapter keeps microseconds: a retried announcement must
        // find the stored one.
        let effective_at = effective_at.trunc_subsecs(6);
        let now = self.config.clock.now().trunc_subsecs(6);
        let notice = self.config.platform.price_notice;
        let earliest = now + chrono_span(notice);
        let schedule = self.platform.prices.schedule();
        let retried = schedule.same_as(effective_at, &prices).is_some();
        if effective_at < earliest && !retried {
            return Err(OrchestratorError::PriceNoticeTooShort {
                earliest,
                notice_secs: notice.as_secs(),
            });
        }
        let (version, replayed) = self
            .store
            .announce_prices(prices, effective_at, now)
            .await?;
        refresh_prices(self.store.as_ref(), &self.platform).await?;
        if !replayed {
            tracing::info!(version = version.version, effective_at = %version.effective_at,
                "price change announced");
        }
        Ok((version, replayed))
    }
}
