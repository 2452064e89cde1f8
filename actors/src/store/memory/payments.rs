//! The embedded store's purchases: payments, the membership gifts they
//! schedule (ToS 4.2, 5) and price versions (ToS 4.5). Each operation runs
//! under the store's one lock, so it is atomic.

use std::collections::{BTreeMap, HashMap};

use super::accounts::status;
use super::*;
use crate::domain::ledger::GrantSource;
use crate::domain::payments::{
    GiftOutcome, NewPayment, PaymentId, PaymentOutcome, PaymentReview, ScheduledGift,
};
use crate::domain::price_schedule::PriceVersion;
use crate::domain::pricing::PriceTable;
use crate::store::decide::money;

#[derive(Default)]
pub(super) struct Purchases {
    payments: HashMap<PaymentId, (UserId, RequestHash)>,
    /// Payments recorded for an operator instead of applied.
    reviews: BTreeMap<PaymentId, PaymentReview>,
    gifts: BTreeMap<(PaymentId, u32), ScheduledGift>,
    prices: Vec<PriceVersion>,
}

/// Books a grant; the caller checked everything else.
fn book_grant(
    s: &mut State,
    user: UserId,
    amount: Credits,
    source: GrantSource,
    note: String,
    now: DateTime<Utc>,
) -> StoreResult<Wallet> {
    let grant = Grant {
        amount,
        source,
        note: Some(note),
        idempotency_key: None,
    };
    s.book_grant(user, &grant, now)
}

pub(super) fn apply_payment(s: &mut State, p: NewPayment) -> StoreResult<PaymentOutcome> {
    let user = s
        .users
        .get(&p.user_id)
        .cloned()
        .ok_or(StoreError::NotFound("user"))?;
    let account = s.account_state(p.user_id)?;
    let wallet_before = account.wallet;
    if decide::payment_replay(s.purchases.payments.get(&p.payment_id).copied(), &p)? {
        return Ok(PaymentOutcome {
            user,
            wallet: wallet_before,
            granted: Credits::ZERO,
            replayed: true,
            review: s
                .purchases
                .reviews
                .get(&p.payment_id)
                .map(|r| r.reason.clone()),
        });
    }
    let plan = decide::payment(&account, &user, &p);
    s.purchases
        .payments
        .insert(p.payment_id.clone(), (p.user_id, p.request_hash));
    if let Some(reason) = plan.review {
        s.purchases.reviews.insert(
            p.payment_id.clone(),
            PaymentReview {
                payment_id: p.payment_id.clone(),
                user_id: p.user_id,
                product: p.product,
                reason: reason.clone(),
                received_at: p.now,
            },
        );
        return Ok(PaymentOutcome {
            user,
            wallet: wallet_before,
            granted: Credits::ZERO,
            replayed: false,
            review: Some(reason),
        });
    }
    let user = match plan.membership {
        Some(m) => {
            let u = s
                .users
                .get_mut(&p.user_id)
                .ok_or(StoreError::NotFound("user"))?;
            u.membership = m;
            u.clone()
        }
        None => user,
    };
    for (mut gift, now) in plan.gifts {
        gift.granted_at = now.then_some(p.now);
        s.purchases
            .gifts
            .insert((gift.payment_id.clone(), gift.month), gift);
    }
    let mut wallet = wallet_before;
    for grant in &plan.grants {
        wallet = s.book_grant(p.user_id, grant, p.now)?;
    }
    let granted = wallet
        .balance
        .checked_sub(wallet_before.balance)
        .map_err(|e| StoreError::Invariant(format!("a payment lowered the balance: {e}")))?;
    Ok(PaymentOutcome {
        user,
        wallet,
        granted,
        replayed: false,
        review: None,
    })
}

/// Payments kept for an operator, oldest first.
pub(super) fn payments_for_review(s: &State, limit: usize) -> Vec<PaymentReview> {
    let mut all: Vec<PaymentReview> = s.purchases.reviews.values().cloned().collect();
    all.sort_by(|a, b| (a.received_at, &a.payment_id).cmp(&(b.received_at, &b.payment_id)));
    all.truncate(limit);
    all
}

pub(super) fn due_gifts(s: &State, now: DateTime<Utc>, limit: usize) -> Vec<ScheduledGift> {
    let mut due: Vec<ScheduledGift> = s
        .purchases
        .gifts
        .values()
        .filter(|g| g.granted_at.is_none() && g.lapsed_at.is_none() && g.starts_at <= now)
        .filter(|g| {
            s.users
                .get(&g.user_id)
                .is_some_and(|u| u.status == AccountStatus::Active)
        })
        .cloned()
        .collect();
    due.sort_by(|a, b| {
        (a.starts_at, &a.payment_id, a.month).cmp(&(b.starts_at, &b.payment_id, b.month))
    });
    due.truncate(limit);
    due
}

pub(super) fn grant_gift(
    s: &mut State,
    user: UserId,
    payment: PaymentId,
    month: u32,
    now: DateTime<Utc>,
) -> StoreResult<GiftOutcome> {
    let st = status(s, user)?;
    let wallet = s.account(user)?.wallet;
    let gift = match s.purchases.gifts.get(&(payment, month)) {
        Some(g) if g.user_id == user => g.clone(),
        _ => return Err(StoreError::NotFound("gift")),
    };
    if !decide::gift_due(&gift, st, now) {
        return Ok(GiftOutcome {
            wallet,
            granted: false,
            amount: Credits::ZERO,
        });
    }
    wallet.grant(gift.amount).map_err(money)?;
    let wallet = book_grant(
        s,
        user,
        gift.amount,
        GrantSource::MembershipGift,
        gift.note(),
        now,
    )?;
    if let Some(g) = s
        .purchases
        .gifts
        .get_mut(&(gift.payment_id.clone(), gift.month))
    {
        g.granted_at = Some(now);
    }
    Ok(GiftOutcome {
        wallet,
        granted: true,
        amount: gift.amount,
    })
}

/// Marks the gifts a status change lapses (see `decide::gifts_lapsing`).
pub(super) fn lapse_gifts(
    s: &mut State,
    user: UserId,
    current: AccountStatus,
    next: AccountStatus,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let own = gifts(s, user)?;
    for key in decide::gifts_lapsing(current, next, &own, now) {
        if let Some(g) = s.purchases.gifts.get_mut(&key) {
            g.lapsed_at = Some(now);
        }
    }
    Ok(())
}

pub(super) fn gifts(s: &State, user: UserId) -> StoreResult<Vec<ScheduledGift>> {
    status(s, user)?;
    let mut list: Vec<ScheduledGift> = s
        .purchases
        .gifts
        .values()
        .filter(|g| g.user_id == user)
        .cloned()
        .collect();
    list.sort_by(|a, b| {
        (a.starts_at, &a.payment_id, a.month).cmp(&(b.starts_at, &b.payment_id, b.month))
    });
    Ok(list)
}

pub(super) fn price_versions(s: &State) -> Vec<PriceVersion> {
    s.purchases.prices.clone()
}

pub(super) fn init_prices(
    s: &mut State,
    prices: PriceTable,
    now: DateTime<Utc>,
) -> Vec<PriceVersion> {
    if s.purchases.prices.is_empty() {
        s.purchases.prices.push(PriceVersion {
            version: 1,
            effective_at: now,
            prices,
            created_at: now,
        });
    }
    s.purchases.prices.clone()
}

pub(super) fn announce_prices(
    s: &mut State,
    prices: PriceTable,
    effective_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> StoreResult<(PriceVersion, bool)> {
    let (version, replayed) =
        decide::price_announcement(&s.purchases.prices, prices, effective_at, now)?;
    if !replayed {
        s.purchases.prices.push(version);
    }
    Ok((version, replayed))
}

#[async_trait]
impl PaymentStore for MemoryStore {
    async fn apply_payment(&self, payment: NewPayment) -> StoreResult<PaymentOutcome> {
        apply_payment(&mut self.state.lock(), payment)
    }

    async fn payments_for_review(&self, limit: usize) -> StoreResult<Vec<PaymentReview>> {
        Ok(payments_for_review(&self.state.lock(), limit))
    }

    async fn due_gifts(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<ScheduledGift>> {
        Ok(due_gifts(&self.state.lock(), now, limit))
    }

    async fn grant_gift(
        &self,
        user: UserId,
        payment: PaymentId,
        month: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<GiftOutcome> {
        grant_gift(&mut self.state.lock(), user, payment, month, now)
    }

    async fn gifts(&self, user: UserId) -> StoreResult<Vec<ScheduledGift>> {
        gifts(&self.state.lock(), user)
    }

    async fn price_versions(&self) -> StoreResult<Vec<PriceVersion>> {
        Ok(price_versions(&self.state.lock()))
    }

    async fn init_prices(
        &self,
        prices: PriceTable,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<PriceVersion>> {
        Ok(init_prices(&mut self.state.lock(), prices, now))
    }

    async fn announce_prices(
        &self,
        prices: PriceTable,
        effective_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<(PriceVersion, bool)> {
        announce_prices(&mut self.state.lock(), prices, effective_at, now)
    }
}
