//! Purchases and memberships (ToS 4.2, 5.1-5.4) through the payment
//! provider's signed webhook.

use actix_web::http::Method;
use admedia::webhooks::sign;
use serde_json::{json, Value};

use crate::helpers::*;

pub const PAYMENT_SECRET: &str = "whsec_cGF5bWVudHMtdGVzdC1zZWNyZXQtMzItYnl0ZXMh";

pub async fn payments_app() -> TestApp {
    spawn_app_with(|s| {
        s.sim_workers = Some(0);
        s.payment_secret = Some(PAYMENT_SECRET.into());
    })
    .await
}

/// Sends `body` signed with `secret` at `timestamp`.
pub async fn send_signed(app: &TestApp, secret: &str, timestamp: i64, body: &str) -> Resp {
    let id = format!("evt_{}", uuid::Uuid::now_v7().simple());
    let signature = sign(secret, &id, timestamp, body).expect("sign");
    let ts = timestamp.to_string();
    app.call(
        Method::POST,
        "/v1/payments/webhook",
        None,
        &[
            ("payment-id", id.as_str()),
            ("payment-timestamp", ts.as_str()),
            ("payment-signature", signature.as_str()),
        ],
        Body::Raw(Some("application/json"), body),
    )
    .await
}

pub async fn pay(app: &TestApp, payment_id: &str, user_id: &str, product: Value) -> Resp {
    let body = json!({"payment_id": payment_id, "user_id": user_id, "product": product});
    send_signed(
        app,
        PAYMENT_SECRET,
        chrono::Utc::now().timestamp(),
        &body.to_string(),
    )
    .await
}

fn sources(ledger: &[Value], source: &str) -> usize {
    ledger.iter().filter(|e| e["source"] == source).count()
}

#[actix_web::test]
async fn a_credit_pack_is_granted_once_however_often_it_is_reported() {
    let app = payments_app().await;
    let (user, key) = register(&app, "buyer@example.com").await;
    let id = id_of(&user);
    let pack = json!({"type": "credits", "credits": 500});
    let first = pay(&app, "pay_100", &id, pack.clone()).await.expect(200);
    assert_eq!(first["replayed"], false);
    assert_eq!(first["granted"], 500);
    assert_eq!(wallet_tuple(&first["wallet"]), (600, 0, 600));
    // Reported again (a new delivery, freshly signed): nothing changes.
    for _ in 0..2 {
        let again = pay(&app, "pay_100", &id, pack.clone()).await.expect(200);
        assert_eq!(again["replayed"], true);
        assert_eq!(again["granted"], 0);
    }
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (600, 0, 600));
    let ledger = app.ledger(&key).await;
    assert_eq!(sources(&ledger, "purchase"), 1);
    // The same payment id for another product is a conflict.
    pay(
        &app,
        "pay_100",
        &id,
        json!({"type": "credits", "credits": 900}),
    )
    .await
    .expect_problem(409, "payment-id-reused");
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (600, 0, 600));
}

#[actix_web::test]
async fn unsigned_wrongly_signed_stale_and_future_events_are_refused() {
    let app = payments_app().await;
    let (user, key) = register(&app, "forger@example.com").await;
    let body = json!({"payment_id": "pay_x", "user_id": id_of(&user),
        "product": {"type": "credits", "credits": 1000}})
    .to_string();
    let now = chrono::Utc::now().timestamp();
    // Unsigned.
    app.call(
        Method::POST,
        "/v1/payments/webhook",
        None,
        &[],
        Body::Raw(Some("application/json"), &body),
    )
    .await
    .expect_problem(400, "invalid-signature");
    // Signed with another key.
    send_signed(
        &app,
        "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        now,
        &body,
    )
    .await
    .expect_problem(400, "invalid-signature");
    // Signed, then the body changed.
    let signature = sign(PAYMENT_SECRET, "evt_1", now, &body).expect("sign");
    let tampered = body.replace("1000", "9000");
    let ts = now.to_string();
    app.call(
        Method::POST,
        "/v1/payments/webhook",
        None,
        &[
            ("payment-id", "evt_1"),
            ("payment-timestamp", ts.as_str()),
            ("payment-signature", signature.as_str()),
        ],
        Body::Raw(Some("application/json"), &tampered),
    )
    .await
    .expect_problem(400, "invalid-signature");
    // A timestamp that is not a number.
    app.call(
        Method::POST,
        "/v1/payments/webhook",
        None,
        &[
            ("payment-id", "evt_1"),
            ("payment-timestamp", "yesterday"),
            ("payment-signature", signature.as_str()),
        ],
        Body::Raw(Some("application/json"), &body),
    )
    .await
    .expect_problem(400, "invalid-signature");
    // Validly signed, but too old or from the future (a captured replay).
    send_signed(&app, PAYMENT_SECRET, now - 301, &body)
        .await
        .expect_problem(400, "stale-timestamp");
    send_signed(&app, PAYMENT_SECRET, now + 301, &body)
        .await
        .expect_problem(400, "stale-timestamp");
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 0, 100));
    // Within the window it is accepted.
    send_signed(&app, PAYMENT_SECRET, now - 200, &body)
        .await
        .expect(200);
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (1100, 0, 1100));
}

#[actix_web::test]
async fn unknown_products_and_bad_bodies_are_refused() {
    let app = payments_app().await;
    let (user, key) = register(&app, "odd@example.com").await;
    let id = id_of(&user);
    for product in [
        json!({"type": "gift-card", "credits": 5}),
        json!({"credits": 5}),
        json!("credits"),
        json!({"type": "membership", "tier": "free", "period": "month"}),
        json!({"type": "membership", "tier": "gold", "period": "month"}),
        json!({"type": "membership", "tier": "basic", "period": "week"}),
        json!({"type": "membership", "tier": "basic"}),
    ] {
        pay(&app, "pay_odd", &id, product)
            .await
            .expect_problem(422, "unknown-product");
    }
    for product in [
        json!({"type": "credits", "credits": 0}),
        json!({"type": "credits", "credits": -5}),
        json!({"type": "credits", "credits": "500"}),
        json!({"type": "credits", "credits": 10_000_001}),
        json!({"type": "credits", "credits": 5, "bonus": 5}),
    ] {
        pay(&app, "pay_odd", &id, product)
            .await
            .expect_problem(422, "invalid-params");
    }
    let pack = json!({"type": "credits", "credits": 5});
    pay(&app, "pay_odd", "not-a-user", pack.clone())
        .await
        .expect_problem(422, "invalid-params");
    pay(
        &app,
        "pay_odd",
        "00000000-0000-0000-0000-000000000000",
        pack.clone(),
    )
    .await
    .expect_problem(422, "invalid-params");
    pay(&app, "has space", &id, pack.clone())
        .await
        .expect_problem(422, "invalid-params");
    let now = chrono::Utc::now().timestamp();
    send_signed(&app, PAYMENT_SECRET, now, "{not json")
        .await
        .expect_problem(400, "invalid-request");
    let extra = json!({"payment_id": "p", "user_id": id, "product": pack, "coupon": "x"});
    send_signed(&app, PAYMENT_SECRET, now, &extra.to_string())
        .await
        .expect_problem(400, "invalid-request");
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 0, 100));
}

#[actix_web::test]
async fn without_a_secret_payment_events_are_refused_as_unavailable() {
    let app = spawn_app_without_workers().await;
    let (user, _) = register(&app, "nosecret@example.com").await;
    let r = pay(
        &app,
        "pay_1",
        &id_of(&user),
        json!({"type": "credits", "credits": 5}),
    )
    .await;
    r.expect_problem(503, "unavailable");
}

#[actix_web::test]
async fn a_membership_takes_effect_at_once_and_gifts_each_month_once() {
    let app = payments_app().await;
    let (user, key) = register(&app, "member@example.com").await;
    let id = id_of(&user);
    let me = app.get("/v1/me", Some(&key)).await.expect(200);
    assert_eq!(me["membership"]["tier"], "free");
    assert_eq!(me["membership"]["active"], false);
    assert!(me["next_gift"].is_null());

    let month = json!({"type": "membership", "tier": "professional", "period": "month"});
    let bought = pay(&app, "pay_m1", &id, month.clone()).await.expect(200);
    assert_eq!(bought["user"]["tier"], "professional");
    assert_eq!(bought["granted"], 1000, "the first month's gift");
    assert_eq!(wallet_tuple(&bought["wallet"]), (1100, 0, 1100));
    let expires: chrono::DateTime<chrono::Utc> = bought["user"]["membership_expires_at"]
        .as_str()
        .expect("expiry")
        .parse()
        .expect("time");
    let days = (expires - chrono::Utc::now()).num_days();
    assert!((27..=31).contains(&days), "{days} days");
    pay(&app, "pay_m1", &id, month).await.expect(200);
    assert_eq!(sources(&app.ledger(&key).await, "membership_gift"), 1);

    // A year's renewal starts when the month ends: its first gift then.
    let year = json!({"type": "membership", "tier": "professional", "period": "year"});
    let renewed = pay(&app, "pay_y1", &id, year).await.expect(200);
    assert_eq!(renewed["granted"], 0);
    let me = app.get("/v1/me", Some(&key)).await.expect(200);
    assert_eq!(me["membership"]["tier"], "professional");
    assert_eq!(me["membership"]["active"], true);
    assert_eq!(me["next_gift"]["amount"], 1000);
    assert_eq!(me["next_gift"]["tier"], "professional");
    let next: chrono::DateTime<chrono::Utc> = me["next_gift"]["at"]
        .as_str()
        .expect("at")
        .parse()
        .expect("time");
    assert_eq!(
        next, expires,
        "the renewal's first month starts at the old expiry"
    );
    let new_expiry: chrono::DateTime<chrono::Utc> = me["user"]["membership_expires_at"]
        .as_str()
        .expect("expiry")
        .parse()
        .expect("time");
    assert!((new_expiry - expires).num_days() >= 365);
    assert_eq!(sources(&app.ledger(&key).await, "membership_gift"), 1);
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (1100, 0, 1100));
}

#[actix_web::test]
async fn an_upgrade_raises_limits_and_priority_at_once() {
    let app = payments_app().await;
    let (user, key) = register(&app, "upgrade@example.com").await;
    let id = id_of(&user);
    // Free: ten jobs may wait at once.
    for _ in 0..10 {
        let job = submit_ok(&app, &key, &image_job()).await;
        assert_eq!(job["tier"], "free");
    }
    submit(&app, &key, &image_job(), None)
        .await
        .expect_problem(429, "queue-limit");
    pay(
        &app,
        "pay_up",
        &id,
        json!({"type": "membership", "tier": "basic", "period": "month"}),
    )
    .await
    .expect(200);
    let job = submit_ok(&app, &key, &image_job()).await;
    assert_eq!(job["tier"], "basic", "the new tier counts at once");
}

/// A paid event the wallet cannot take (its grant would pass the balance
/// cap) is acknowledged and kept for an operator: refusing it would tell
/// the provider to stop retrying a payment recorded nowhere.
#[actix_web::test]
async fn a_payment_past_the_balance_cap_is_kept_for_review_and_acknowledged() {
    let app = payments_app().await;
    let (user, key) = register(&app, "whale@example.com").await;
    let id = id_of(&user);
    let cap = admedia_actors::domain::wallet::Credits::MAX.get();
    let registered = wallet_tuple(&app.wallet(&key).await).0;
    app.grant(&id, cap - registered - 100, "top-up")
        .await
        .expect(200);
    let pack = json!({"type": "credits", "credits": 500});
    let kept = pay(&app, "pay_cap", &id, pack.clone()).await.expect(202);
    assert_eq!(kept["replayed"], false);
    assert_eq!(kept["granted"], 0);
    let reason = kept["review"].as_str().expect("review reason").to_owned();
    assert!(reason.contains("balance cap"), "{reason}");
    assert_eq!(wallet_tuple(&app.wallet(&key).await).0, cap - 100);
    // Delivered again: the same answer, still nothing granted.
    let again = pay(&app, "pay_cap", &id, pack).await.expect(202);
    assert_eq!(again["replayed"], true);
    assert_eq!(again["review"], reason.as_str());
    let listed = app
        .get("/v1/admin/payments/review", Some(&app.admin_token))
        .await
        .expect(200);
    let payments = listed["payments"].as_array().expect("payments");
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0]["payment_id"], "pay_cap");
    assert_eq!(payments[0]["user_id"], id.as_str());
    // Not for users.
    app.get("/v1/admin/payments/review", Some(&key))
        .await
        .expect_problem(401, "unauthorized");
    let ledger = app.ledger(&key).await;
    assert_eq!(sources(&ledger, "purchase"), 0);
}
