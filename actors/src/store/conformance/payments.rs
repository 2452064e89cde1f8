//! Conformance of purchases: payments applied once, memberships with
//! their monthly gifts, price versions and the version a job records.

use chrono::Months;

use super::*;
use crate::domain::payments::{NewPayment, PaymentId, Period, Product};
use crate::domain::price_schedule::PriceSchedule;
use crate::domain::pricing::PriceTable;

fn payment(id: &str, user: UserId, product: Product, gift: i64) -> NewPayment {
    NewPayment {
        payment_id: PaymentId::parse(id).expect("test payment id"),
        user_id: user,
        request_hash: NewPayment::hash_of(user, &product),
        product,
        monthly_gift: credits(gift),
        now: now_us(),
    }
}

fn pack(n: i64) -> Product {
    Product::Credits {
        credits: credits(n),
    }
}

fn membership(tier: Tier, period: Period) -> Product {
    Product::Membership { tier, period }
}

async fn gift_entries(store: &Shared, user: UserId) -> Vec<LedgerEntry> {
    store
        .ledger(user, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.source == Some(GrantSource::MembershipGift))
        .collect()
}

pub async fn payments_apply_once_and_refuse_a_reused_id(store: Shared) {
    let user = user_with(&store, "pay@example.com", 10).await;
    let first = store
        .apply_payment(payment("pay_1", user.id, pack(500), 0))
        .await
        .unwrap();
    assert!(!first.replayed);
    assert_eq!(first.granted.get(), 500);
    assert_eq!(first.wallet.balance.get(), 510);
    let replay = store
        .apply_payment(payment("pay_1", user.id, pack(500), 0))
        .await
        .unwrap();
    assert!(replay.replayed);
    assert_eq!(
        (replay.wallet.balance.get(), replay.granted.get()),
        (510, 0)
    );
    // The same id with other content is a conflict, not a replay.
    assert_eq!(
        store
            .apply_payment(payment("pay_1", user.id, pack(900), 0))
            .await
            .unwrap_err(),
        StoreError::IdempotencyKeyReused
    );
    let bob = user_with(&store, "pay-bob@example.com", 0).await;
    assert_eq!(
        store
            .apply_payment(payment("pay_1", bob.id, pack(500), 0))
            .await
            .unwrap_err(),
        StoreError::IdempotencyKeyReused
    );
    assert!(matches!(
        store
            .apply_payment(payment("pay_2", UserId::generate(), pack(5), 0))
            .await,
        Err(StoreError::NotFound(_))
    ));
    // A pack that would pass the balance cap cannot be applied, but the
    // provider has the money: it is kept for an operator, nothing granted,
    // and its id stays taken.
    let capped = store
        .apply_payment(payment("pay_3", user.id, pack(Credits::MAX.get()), 0))
        .await
        .unwrap();
    assert!(!capped.replayed);
    assert_eq!(capped.granted, Credits::ZERO);
    assert_eq!(capped.wallet.balance.get(), 510);
    let reason = capped.review.clone().expect("kept for review");
    assert!(reason.contains("balance cap"), "{reason}");
    let again = store
        .apply_payment(payment("pay_3", user.id, pack(Credits::MAX.get()), 0))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.review.as_deref(), Some(reason.as_str()));
    assert_eq!(
        store
            .apply_payment(payment("pay_3", user.id, pack(1), 0))
            .await
            .unwrap_err(),
        StoreError::IdempotencyKeyReused
    );
    let review = store.payments_for_review(10).await.unwrap();
    assert_eq!(review.len(), 1);
    assert_eq!(
        (
            review[0].payment_id.as_str(),
            review[0].user_id,
            &review[0].reason
        ),
        ("pay_3", user.id, &reason)
    );
    assert_eq!(review[0].product, pack(Credits::MAX.get()));
    assert!(
        !store
            .apply_payment(payment("pay_4", user.id, pack(1), 0))
            .await
            .unwrap()
            .replayed
    );
    let purchases: Vec<_> = store
        .ledger(user.id, None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.source == Some(GrantSource::Purchase))
        .collect();
    assert_eq!(purchases.len(), 2);
    assert_books_balance(&store).await;
}

pub async fn memberships_extend_and_grant_each_month_once(store: Shared) {
    let user = user_with(&store, "member@example.com", 0).await;
    let now = now_us();
    let mut p = payment("m_1", user.id, membership(Tier::Basic, Period::Month), 200);
    p.now = now;
    let bought = store.apply_payment(p.clone()).await.unwrap();
    assert_eq!(bought.user.membership.tier, Tier::Basic);
    let month_end = now.checked_add_months(Months::new(1)).unwrap();
    assert_eq!(bought.user.membership.expires_at, Some(month_end));
    // The month that started now is granted with the payment.
    assert_eq!(
        (bought.granted.get(), bought.wallet.balance.get()),
        (200, 200)
    );
    assert_eq!(gift_entries(&store, user.id).await.len(), 1);
    // A replay grants nothing more.
    assert!(store.apply_payment(p).await.unwrap().replayed);
    assert_eq!(gift_entries(&store, user.id).await.len(), 1);

    // A yearly renewal starts when the month ends: nothing due yet.
    let mut y = payment("y_1", user.id, membership(Tier::Basic, Period::Year), 200);
    y.now = now + Duration::seconds(1);
    let renewed = store.apply_payment(y).await.unwrap();
    assert_eq!(renewed.granted.get(), 0);
    assert_eq!(
        renewed.user.membership.expires_at,
        month_end.checked_add_months(Months::new(12))
    );
    let scheduled = store.gifts(user.id).await.unwrap();
    assert_eq!(scheduled.len(), 13);
    assert!(scheduled[1..].iter().all(|g| g.granted_at.is_none()));
    assert!(store
        .due_gifts(now + Duration::seconds(2), 100)
        .await
        .unwrap()
        .is_empty());

    // When the first renewed month starts, exactly that gift is due.
    let later = month_end + Duration::seconds(1);
    let due = store.due_gifts(later, 100).await.unwrap();
    assert_eq!(due.len(), 1);
    let g = &due[0];
    assert_eq!((g.payment_id.as_str(), g.month), ("y_1", 0));
    let granted = store
        .grant_gift(user.id, g.payment_id.clone(), g.month, later)
        .await
        .unwrap();
    assert!(granted.granted);
    assert_eq!(granted.amount.get(), 200);
    let twice = store
        .grant_gift(user.id, g.payment_id.clone(), g.month, later)
        .await
        .unwrap();
    assert!(!twice.granted, "a gift is granted once");
    assert_eq!(twice.wallet.balance.get(), 400);
    // Not yet due, or another user's: nothing / not found.
    assert!(
        !store
            .grant_gift(user.id, g.payment_id.clone(), 5, later)
            .await
            .unwrap()
            .granted
    );
    let other = user_with(&store, "member-other@example.com", 0).await;
    assert!(matches!(
        store
            .grant_gift(other.id, g.payment_id.clone(), 1, later)
            .await,
        Err(StoreError::NotFound(_))
    ));
    // Suspended accounts get no gifts until reinstated.
    store
        .set_status(user.id, AccountStatus::Suspended, now_us())
        .await
        .unwrap();
    let second_month = month_end.checked_add_months(Months::new(1)).unwrap() + Duration::seconds(1);
    assert!(store.due_gifts(second_month, 100).await.unwrap().is_empty());
    assert!(
        !store
            .grant_gift(user.id, g.payment_id.clone(), 1, second_month)
            .await
            .unwrap()
            .granted
    );
    store
        .set_status(user.id, AccountStatus::Active, second_month)
        .await
        .unwrap();
    assert_eq!(store.due_gifts(second_month, 100).await.unwrap().len(), 1);
    assert_eq!(gift_entries(&store, user.id).await.len(), 2);
    assert_books_balance(&store).await;
}

pub async fn gifts_of_months_spent_suspended_lapse(store: Shared) {
    let user = user_with(&store, "lapse@example.com", 0).await;
    let now = now_us();
    let mut p = payment("l_1", user.id, membership(Tier::Basic, Period::Year), 200);
    p.now = now;
    store.apply_payment(p).await.unwrap();
    assert_eq!(gift_entries(&store, user.id).await.len(), 1);
    let month = |n: u32| now.checked_add_months(Months::new(n)).unwrap();
    store
        .set_status(
            user.id,
            AccountStatus::Suspended,
            now + Duration::seconds(1),
        )
        .await
        .unwrap();
    // Reinstated during the fourth month: months two and three passed
    // whole while suspended and lapse; the fourth, in progress, is due.
    let back = month(3) + Duration::days(1);
    store
        .set_status(user.id, AccountStatus::Active, back)
        .await
        .unwrap();
    let due = store.due_gifts(back, 100).await.unwrap();
    let due: Vec<u32> = due
        .iter()
        .filter(|g| g.user_id == user.id)
        .map(|g| g.month)
        .collect();
    assert_eq!(due, vec![3]);
    let gifts = store.gifts(user.id).await.unwrap();
    let lapsed: Vec<u32> = gifts
        .iter()
        .filter(|g| g.lapsed_at.is_some())
        .map(|g| g.month)
        .collect();
    assert_eq!(lapsed, vec![1, 2]);
    assert!(gifts
        .iter()
        .all(|g| g.lapsed_at.is_none() || g.granted_at.is_none()));
    // A lapsed gift is never granted, however it is asked for.
    assert!(
        !store
            .grant_gift(user.id, PaymentId::parse("l_1").unwrap(), 1, back)
            .await
            .unwrap()
            .granted
    );
    assert!(
        store
            .grant_gift(user.id, PaymentId::parse("l_1").unwrap(), 3, back)
            .await
            .unwrap()
            .granted
    );
    // Reinstating an account that was never suspended lapses nothing.
    store
        .set_status(user.id, AccountStatus::Active, back + Duration::seconds(1))
        .await
        .unwrap();
    let lapsed_after = store
        .gifts(user.id)
        .await
        .unwrap()
        .iter()
        .filter(|g| g.lapsed_at.is_some())
        .count();
    assert_eq!(lapsed_after, 2);
    // Suspended until after the membership ended: every remaining month
    // lapses, and the balance stays (ToS 5.4).
    store
        .set_status(
            user.id,
            AccountStatus::Suspended,
            back + Duration::seconds(2),
        )
        .await
        .unwrap();
    let balance = store.wallet(user.id).await.unwrap().balance;
    store
        .set_status(user.id, AccountStatus::Active, month(13))
        .await
        .unwrap();
    assert!(store
        .due_gifts(month(13), 100)
        .await
        .unwrap()
        .iter()
        .all(|g| g.user_id != user.id));
    assert_eq!(store.wallet(user.id).await.unwrap().balance, balance);
    assert_eq!(gift_entries(&store, user.id).await.len(), 2);
    let lapsed = store
        .gifts(user.id)
        .await
        .unwrap()
        .iter()
        .filter(|g| g.lapsed_at.is_some())
        .count();
    assert_eq!(lapsed, 10, "months 2, 3 and 5 to 12");
    assert_books_balance(&store).await;
}

pub async fn membership_upgrade_takes_effect_at_once(store: Shared) {
    let user = user_with(&store, "upgrade@example.com", 0).await;
    let now = now_us();
    let mut basic = payment("u_1", user.id, membership(Tier::Basic, Period::Month), 0);
    basic.now = now;
    store.apply_payment(basic).await.unwrap();
    let mut pro = payment(
        "u_2",
        user.id,
        membership(Tier::Professional, Period::Month),
        1000,
    );
    pro.now = now + Duration::seconds(1);
    let up = store.apply_payment(pro).await.unwrap();
    assert_eq!(up.user.tier(now + Duration::seconds(2)), Tier::Professional);
    // Extended from the basic month's end; its gift comes when it starts.
    assert_eq!(
        up.user.membership.expires_at,
        now.checked_add_months(Months::new(1))
            .and_then(|end| end.checked_add_months(Months::new(1)))
    );
    assert_eq!(up.granted.get(), 0);
    assert_eq!(
        store.user(user.id).await.unwrap().unwrap().membership,
        up.user.membership
    );
}

pub async fn price_versions_are_stored_once_and_announced(store: Shared) {
    let now = now_us();
    let base = PriceTable::default();
    let first = store.init_prices(base, now).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].version, first[0].prices), (1, base));
    // Start-up again (other prices configured): version 1 stays.
    let mut other = base;
    other.image_standard = 3;
    let again = store.init_prices(other, now).await.unwrap();
    assert_eq!(again, first);
    let at = now + Duration::days(8);
    let (v2, replayed) = store.announce_prices(other, at, now).await.unwrap();
    assert!(!replayed);
    assert_eq!((v2.version, v2.prices, v2.effective_at), (2, other, at));
    let (same, replayed) = store.announce_prices(other, at, now).await.unwrap();
    assert!(replayed);
    assert_eq!(same, v2);
    let (v3, _) = store
        .announce_prices(base, at + Duration::days(1), now)
        .await
        .unwrap();
    assert_eq!(v3.version, 3);
    let all = store.price_versions().await.unwrap();
    assert_eq!(
        all.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let schedule = PriceSchedule::new(all);
    assert_eq!(schedule.in_effect(at).unwrap().version, 2);
    // An invalid table is refused.
    let mut bad = base;
    bad.video_hd = 0;
    assert!(store.announce_prices(bad, at, now).await.is_err());
}

pub async fn jobs_record_their_price_version(store: Shared) {
    let user = user_with(&store, "priced@example.com", 10).await;
    let mut job = new_job(user.id, 2);
    job.price_version = 7;
    let sub = store.submit_job(job).await.unwrap();
    assert_eq!(sub.job.price_version, 7);
    let stored = store.job(sub.job.id).await.unwrap().unwrap();
    assert_eq!(stored.price_version, 7);
}
