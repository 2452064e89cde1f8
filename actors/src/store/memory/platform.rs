//! The platform-rules operations of the embedded store (API keys,
//! payments and gifts, price versions, content violations). Each runs
//! under the store's one lock, taken by the caller, so it is atomic.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use super::State;
use crate::accounts::ApiKeyRecord;
use crate::content::evidence::{ModerationAction, ModerationKind, NewViolation, Violation};
use crate::ids::{ApiKeyId, UserId};
use crate::job::RequestHash;
use crate::ledger::Grant;
use crate::ledger::GrantSource;
use crate::money::{Credits, Wallet};
use crate::payments::{
    GiftOutcome, NewPayment, PaymentId, PaymentOutcome, PaymentReview, ScheduledGift,
};
use crate::price_schedule::PriceVersion;
use crate::pricing::PriceTable;
use crate::store::decide::{self, money};
use crate::store::{StoreError, StoreResult};
use crate::user::{AccountStatus, KeyHash};

#[derive(Default)]
pub(super) struct PlatformState {
    keys: HashMap<UserId, Vec<ApiKeyRecord>>,
    payments: HashMap<PaymentId, (UserId, RequestHash)>,
    /// Payments recorded for an operator instead of applied.
    reviews: BTreeMap<PaymentId, PaymentReview>,
    gifts: BTreeMap<(PaymentId, u32), ScheduledGift>,
    prices: Vec<PriceVersion>,
    violations: HashMap<UserId, Vec<Violation>>,
    moderation: Vec<ModerationAction>,
}

/// Records the key a user registered with.
pub(super) fn registered(s: &mut State, user: UserId, hash: KeyHash, now: DateTime<Utc>) {
    s.platform.keys.entry(user).or_default().push(ApiKeyRecord {
        id: ApiKeyId::generate(),
        user_id: user,
        hash,
        created_at: now,
        revoked_at: None,
        name: None,
        expires_at: None,
        scopes: None,
    });
}

/// The user's key with this hash, if not revoked.
pub(super) fn active_key(s: &State, user: UserId, hash: KeyHash) -> Option<ApiKeyRecord> {
    s.platform
        .keys
        .get(&user)?
        .iter()
        .find(|k| k.hash == hash && k.is_active())
        .cloned()
}

fn status(s: &State, user: UserId) -> StoreResult<AccountStatus> {
    s.users
        .get(&user)
        .map(|u| u.status)
        .ok_or(StoreError::NotFound("user"))
}

pub(super) fn create_api_key(
    s: &mut State,
    user: UserId,
    id: ApiKeyId,
    hash: KeyHash,
    options: crate::accounts::KeyOptions,
    now: DateTime<Utc>,
) -> StoreResult<ApiKeyRecord> {
    let st = status(s, user)?;
    if s.keys.contains_key(&hash) {
        return Err(StoreError::Invariant("API key hash reused".into()));
    }
    let list = s.platform.keys.entry(user).or_default();
    decide::new_api_key(st, list.iter().filter(|k| k.is_active()).count())?;
    let record = ApiKeyRecord {
        id,
        user_id: user,
        hash,
        created_at: now,
        revoked_at: None,
        name: options.name,
        expires_at: options.expires_at,
        scopes: options.scopes,
    };
    list.push(record.clone());
    s.keys.insert(hash, user);
    Ok(record)
}

pub(super) fn api_keys(s: &State, user: UserId) -> StoreResult<Vec<ApiKeyRecord>> {
    status(s, user)?;
    Ok(s.platform.keys.get(&user).cloned().unwrap_or_default())
}

pub(super) fn revoke_api_key(
    s: &mut State,
    user: UserId,
    id: ApiKeyId,
    now: DateTime<Utc>,
) -> StoreResult<ApiKeyRecord> {
    status(s, user)?;
    let list = s
        .platform
        .keys
        .get_mut(&user)
        .ok_or(StoreError::NotFound("API key"))?;
    let active = list.iter().filter(|k| k.is_active()).count();
    let key = list
        .iter_mut()
        .find(|k| k.id == id)
        .ok_or(StoreError::NotFound("API key"))?;
    if !decide::revoke_api_key(key, active)? {
        return Ok(key.clone());
    }
    key.revoked_at = Some(now);
    let record = key.clone();
    s.keys.remove(&record.hash);
    Ok(record)
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
    if decide::payment_replay(s.platform.payments.get(&p.payment_id).copied(), &p)? {
        return Ok(PaymentOutcome {
            user,
            wallet: wallet_before,
            granted: Credits::ZERO,
            replayed: true,
            review: s
                .platform
                .reviews
                .get(&p.payment_id)
                .map(|r| r.reason.clone()),
        });
    }
    let plan = decide::payment(&account, &user, &p);
    s.platform
        .payments
        .insert(p.payment_id.clone(), (p.user_id, p.request_hash));
    if let Some(reason) = plan.review {
        s.platform.reviews.insert(
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
        s.platform
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
    let mut all: Vec<PaymentReview> = s.platform.reviews.values().cloned().collect();
    all.sort_by(|a, b| (a.received_at, &a.payment_id).cmp(&(b.received_at, &b.payment_id)));
    all.truncate(limit);
    all
}

pub(super) fn due_gifts(s: &State, now: DateTime<Utc>, limit: usize) -> Vec<ScheduledGift> {
    let mut due: Vec<ScheduledGift> = s
        .platform
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
    let gift = match s.platform.gifts.get(&(payment, month)) {
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
        .platform
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
        if let Some(g) = s.platform.gifts.get_mut(&key) {
            g.lapsed_at = Some(now);
        }
    }
    Ok(())
}

pub(super) fn gifts(s: &State, user: UserId) -> StoreResult<Vec<ScheduledGift>> {
    status(s, user)?;
    let mut list: Vec<ScheduledGift> = s
        .platform
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
    s.platform.prices.clone()
}

pub(super) fn init_prices(
    s: &mut State,
    prices: PriceTable,
    now: DateTime<Utc>,
) -> Vec<PriceVersion> {
    if s.platform.prices.is_empty() {
        s.platform.prices.push(PriceVersion {
            version: 1,
            effective_at: now,
            prices,
            created_at: now,
        });
    }
    s.platform.prices.clone()
}

pub(super) fn announce_prices(
    s: &mut State,
    prices: PriceTable,
    effective_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> StoreResult<(PriceVersion, bool)> {
    let (version, replayed) =
        decide::price_announcement(&s.platform.prices, prices, effective_at, now)?;
    if !replayed {
        s.platform.prices.push(version);
    }
    Ok((version, replayed))
}

pub(super) fn record_violation(
    s: &mut State,
    user: UserId,
    violation: &NewViolation,
    now: DateTime<Utc>,
    since: DateTime<Utc>,
) -> StoreResult<u32> {
    status(s, user)?;
    let list = s.platform.violations.entry(user).or_default();
    list.push(Violation {
        user_id: user,
        refusal: violation.refusal.clone(),
        prompt: violation.prompt.clone(),
        counted: violation.counted,
        created_at: now,
    });
    Ok(u32::try_from(
        list.iter()
            .filter(|v| v.counted && v.created_at >= since)
            .count(),
    )
    .unwrap_or(u32::MAX))
}

pub(super) fn violations(
    s: &State,
    user: UserId,
    since: DateTime<Utc>,
    counted_only: bool,
    limit: usize,
) -> StoreResult<Vec<Violation>> {
    status(s, user)?;
    let Some(list) = s.platform.violations.get(&user) else {
        return Ok(Vec::new());
    };
    Ok(list
        .iter()
        .rev()
        .filter(|v| v.created_at >= since && (v.counted || !counted_only))
        .take(limit)
        .cloned()
        .collect())
}

pub(super) fn record_moderation_action(
    s: &mut State,
    action: &ModerationAction,
) -> StoreResult<()> {
    status(s, action.user_id)?;
    s.platform.moderation.push(action.clone());
    Ok(())
}

pub(super) fn moderation_actions(
    s: &State,
    user: Option<UserId>,
    kind: Option<ModerationKind>,
    limit: usize,
) -> StoreResult<Vec<ModerationAction>> {
    Ok(s.platform
        .moderation
        .iter()
        .rev()
        .filter(|a| user.is_none_or(|u| a.user_id == u) && kind.is_none_or(|k| a.kind == k))
        .take(limit)
        .cloned()
        .collect())
}
