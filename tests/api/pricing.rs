//! Prices that change with notice (ToS 4.5).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::helpers::*;

fn prices(image_standard: i64) -> Value {
    json!({"image_standard": image_standard, "image_large": 2, "video_standard": 5, "video_hd": 10})
}

async fn announce(app: &TestApp, effective_at: DateTime<Utc>, p: Value) -> Resp {
    app.post_json(
        "/v1/admin/pricing",
        Some(&app.admin_token),
        &json!({"effective_at": effective_at, "prices": p}),
    )
    .await
}

#[actix_web::test]
async fn version_one_is_the_configured_table() {
    let app = spawn_app_without_workers().await;
    let pricing = app.get("/v1/pricing", None).await.expect(200);
    assert_eq!(pricing["current"]["version"], 1);
    assert_eq!(pricing["current"]["prices"], prices(1));
    assert!(pricing["current"]["effective_at"].is_string());
    assert_eq!(pricing["upcoming"], json!([]));
    let (_, key) = register(&app, "v1@example.com").await;
    let job = submit_ok(&app, &key, &image_job()).await;
    assert_eq!(
        (job["cost"].as_i64(), job["price_version"].as_i64()),
        (Some(1), Some(1))
    );
}

#[actix_web::test]
async fn a_change_sooner_than_the_notice_is_refused() {
    let app = spawn_app_without_workers().await;
    let now = Utc::now();
    let soon = announce(&app, now + chrono::Duration::days(6), prices(3))
        .await
        .expect_problem(422, "price-notice-too-short");
    let earliest: DateTime<Utc> = soon["earliest"]
        .as_str()
        .expect("earliest")
        .parse()
        .expect("time");
    assert!(earliest >= now + chrono::Duration::days(7));
    announce(&app, now - chrono::Duration::days(1), prices(3))
        .await
        .expect_problem(422, "price-notice-too-short");

    // Bad input.
    app.post_json(
        "/v1/admin/pricing",
        None,
        &json!({"effective_at": now + chrono::Duration::days(8), "prices": prices(3)}),
    )
    .await
    .expect_problem(401, "unauthorized");
    announce(&app, now + chrono::Duration::days(8), prices(0))
        .await
        .expect_problem(422, "invalid-params");
    let mut extra = prices(3);
    extra["audio"] = json!(1);
    announce(&app, now + chrono::Duration::days(8), extra)
        .await
        .expect_problem(400, "invalid-request");
    app.post_json(
        "/v1/admin/pricing",
        Some(&app.admin_token),
        &json!({"prices": prices(3)}),
    )
    .await
    .expect_problem(400, "invalid-request");
    app.post_json(
        "/v1/admin/pricing",
        Some(&app.admin_token),
        &json!({"effective_at": "next tuesday", "prices": prices(3)}),
    )
    .await
    .expect_problem(400, "invalid-request");

    // With notice: announced, listed as upcoming; the same again is a replay.
    let at = now + chrono::Duration::days(8);
    let v2 = announce(&app, at, prices(3)).await.expect(201);
    assert_eq!(v2["version"], 2);
    let again = announce(&app, at, prices(3)).await.expect(200);
    assert_eq!(again["version"], 2);
    let pricing = app.get("/v1/pricing", None).await.expect(200);
    assert_eq!(pricing["current"]["version"], 1);
    let upcoming = pricing["upcoming"].as_array().expect("upcoming");
    assert_eq!(upcoming.len(), 1);
    assert_eq!(upcoming[0]["version"], 2);
    assert_eq!(upcoming[0]["prices"], prices(3));
}

#[actix_web::test]
async fn jobs_are_priced_by_the_version_in_effect_at_submission() {
    let app = spawn_app_with(|s| {
        s.sim_workers = Some(0);
        s.price_notice = Duration::from_secs(1);
    })
    .await;
    let (_, key) = register(&app, "switch@example.com").await;
    let switch = Utc::now() + chrono::Duration::milliseconds(1500);
    announce(&app, switch, prices(3)).await.expect(201);
    let before = submit_ok(&app, &key, &image_job()).await;
    assert_eq!(
        (before["cost"].as_i64(), before["price_version"].as_i64()),
        (Some(1), Some(1))
    );
    let wait = (switch - Utc::now()).to_std().unwrap_or_default();
    actix_rt::time::sleep(wait + Duration::from_millis(50)).await;
    let after = submit_ok(&app, &key, &image_job()).await;
    assert_eq!(
        (after["cost"].as_i64(), after["price_version"].as_i64()),
        (Some(3), Some(2))
    );
    // The first job keeps its version and price.
    let first = app.job(&key, before["id"].as_str().expect("id")).await;
    assert_eq!(
        (first["cost"].as_i64(), first["price_version"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 4, 96));
    let pricing = app.get("/v1/pricing", None).await.expect(200);
    assert_eq!(pricing["current"]["version"], 2);
    assert_eq!(pricing["upcoming"], json!([]));
}
