//! `POST /v1/jobs/batch`: per-item answers in order, each item submitted as
//! a single submission would be (holds, refusals, idempotency keys, rate
//! limit), on the embedded store and on PostgreSQL.

use actix_web::http::Method;
use serde_json::{json, Value};

use crate::helpers::{
    id_of, image_job, register, spawn_app_on_postgres_with, spawn_app_with,
    spawn_app_without_workers, submit, wallet_tuple, Body, Resp, TestApp,
};

async fn batch(app: &TestApp, key: &str, body: &Value) -> Resp {
    app.post_json("/v1/jobs/batch", Some(key), body).await
}

fn results(body: &Value) -> Vec<Value> {
    body["results"].as_array().expect("results").clone()
}

fn images(count: u32) -> Value {
    json!({"kind": "image", "model": "sdxl", "prompt": "a fox", "params": {"count": count}})
}

/// Far more than a new account's 100 credits: 600.
fn too_expensive() -> Value {
    json!({"kind": "video", "model": "v1", "prompt": "waves",
        "params": {"width": 1920, "height": 1080, "duration_s": 60}})
}

#[track_caller]
fn expect_item_problem(result: &Value, index: usize, status: u16, kind: &str) -> Value {
    assert_eq!(result["index"], index, "{result}");
    assert_eq!(result["status"], status, "{result}");
    assert!(result.get("job").is_none(), "{result}");
    let p = &result["problem"];
    assert_eq!(p["type"], kind, "{result}");
    assert_eq!(p["status"], status, "{result}");
    assert!(p["detail"].as_str().is_some_and(|d| !d.is_empty()), "{p}");
    p.clone()
}

/// Four items, two refused (bad params, too few credits), two held; then
/// the same batch again replays the keyed items and holds nothing more.
async fn one_refused_item_leaves_the_others_held(app: &TestApp) {
    let (_, key) = register(app, "batch-mixed@example.com").await;
    let body = json!({"items": [
        {"idempotency_key": "batch-a", "job": images(4)},
        {"job": {"kind": "image", "model": "sdxl", "prompt": "a fox", "params": {"width": 10}}},
        {"job": too_expensive()},
        {"idempotency_key": "batch-d", "job": images(3)},
    ]});
    let res = batch(app, &key, &body).await;
    let first = results(&res.expect(200));
    assert_eq!(first.len(), 4);
    for (i, count) in [(0, 4), (3, 3)] {
        let r = &first[i];
        assert_eq!(
            (r["index"].as_u64(), r["status"].as_u64()),
            (Some(i as u64), Some(202)),
            "{r}"
        );
        assert!(
            r.get("problem").is_none() && r.get("replayed").is_none(),
            "{r}"
        );
        assert_eq!(r["job"]["state"], "queued", "{r}");
        assert_eq!(r["job"]["cost"], count, "{r}");
        assert_eq!(r["job"]["charge"], "held", "{r}");
    }
    expect_item_problem(&first[1], 1, 422, "invalid-params");
    let p = expect_item_problem(&first[2], 2, 402, "insufficient-credits");
    assert_eq!(p["required"], 600, "{p}");
    // What the wallet had when this item reached it: the others may have
    // been held before it or not.
    assert!(
        [100, 96, 97, 93].contains(&p["available"].as_i64().expect("available")),
        "{p}"
    );
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 7, 93));
    let jobs = app.get("/v1/jobs", Some(&key)).await.expect(200)["jobs"].clone();
    assert_eq!(jobs.as_array().map(Vec::len), Some(2), "{jobs}");
    let holds: Vec<i64> = app
        .ledger(&key)
        .await
        .iter()
        .filter(|e| e["kind"] == "hold")
        .map(|e| e["amount"].as_i64().expect("amount"))
        .collect();
    assert_eq!(holds.iter().sum::<i64>(), 7, "{holds:?}");

    // Again: the keyed items answer their first jobs, the others are
    // refused again, and nothing more is held.
    let again = results(&batch(app, &key, &body).await.expect(200));
    for i in [0, 3] {
        assert_eq!(again[i]["status"], 202, "{}", again[i]);
        assert_eq!(again[i]["replayed"], true, "{}", again[i]);
        assert_eq!(again[i]["job"]["id"], first[i]["job"]["id"]);
    }
    expect_item_problem(&again[1], 1, 422, "invalid-params");
    expect_item_problem(&again[2], 2, 402, "insufficient-credits");
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 7, 93));

    // An item key is the single submission's `Idempotency-Key`: the same
    // key with another job is refused, in a batch or alone.
    let reused = json!({"items": [{"idempotency_key": "batch-a", "job": images(2)}]});
    let r = results(&batch(app, &key, &reused).await.expect(200));
    expect_item_problem(&r[0], 0, 422, "idempotency-key-reused");
    submit(app, &key, &images(4), Some("batch-d"))
        .await
        .expect_problem(422, "idempotency-key-reused");
    let replayed = submit(app, &key, &images(4), Some("batch-a")).await;
    assert_eq!(replayed.expect(202)["id"], first[0]["job"]["id"]);
    assert_eq!(
        replayed.header("idempotent-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 7, 93));
}

#[actix_web::test]
async fn a_refused_item_does_not_stop_the_others() {
    let app = spawn_app_without_workers().await;
    one_refused_item_leaves_the_others_held(&app).await;
}

#[actix_web::test]
async fn a_refused_item_does_not_stop_the_others_on_postgres() {
    let Some(app) = spawn_app_on_postgres_with(|_| {}).await else {
        return;
    };
    one_refused_item_leaves_the_others_held(&app).await;
}

/// A full batch on PostgreSQL: every item held once, the wallet exact.
#[actix_web::test]
async fn a_hundred_items_are_held_exactly_on_postgres() {
    let Some(app) = spawn_app_on_postgres_with(|_| {}).await else {
        return;
    };
    let (user, key) = register(&app, "batch-hundred@example.com").await;
    app.set_membership(&id_of(&user), "enterprise", json!("2099-01-01T00:00:00Z"))
        .await
        .expect(200);
    app.grant(&id_of(&user), 900, "batch-hundred")
        .await
        .expect(200);
    let items: Vec<Value> = (0..100)
        .map(|i| json!({"idempotency_key": format!("hundred-{i}"), "job": images(1 + i % 8)}))
        .collect();
    let expected: i64 = (0..100).map(|i| 1 + i64::from(i % 8)).sum();
    let body = json!({ "items": items });
    let first = results(&batch(&app, &key, &body).await.expect(200));
    assert_eq!(first.len(), 100);
    for (i, r) in first.iter().enumerate() {
        assert_eq!(r["index"], i, "{r}");
        assert_eq!(r["status"], 202, "{r}");
        assert_eq!(r["job"]["cost"], 1 + i % 8, "{r}");
    }
    assert_eq!(
        wallet_tuple(&app.wallet(&key).await),
        (1000, expected, 1000 - expected)
    );
    let again = results(&batch(&app, &key, &body).await.expect(200));
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(b["replayed"], true, "{b}");
        assert_eq!(a["job"]["id"], b["job"]["id"]);
    }
    assert_eq!(
        wallet_tuple(&app.wallet(&key).await),
        (1000, expected, 1000 - expected)
    );
}

#[actix_web::test]
async fn more_than_a_hundred_items_or_none_are_refused_whole() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "batch-size@example.com").await;
    let items: Vec<Value> = (0..101).map(|_| json!({"job": image_job()})).collect();
    let p = batch(&app, &key, &json!({ "items": items }))
        .await
        .expect_problem(422, "batch-too-large");
    assert_eq!(p["limit"], 100, "{p}");
    batch(&app, &key, &json!({"items": []}))
        .await
        .expect_problem(422, "invalid-params");
    // Two items under one key are refused before anything is held.
    let twice = json!({"items": [
        {"idempotency_key": "same", "job": image_job()},
        {"idempotency_key": "same", "job": image_job()},
    ]});
    batch(&app, &key, &twice)
        .await
        .expect_problem(422, "invalid-params");
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 0, 100));
    assert_eq!(
        app.get("/v1/jobs", Some(&key)).await.expect(200)["jobs"],
        json!([])
    );
}

#[actix_web::test]
async fn a_malformed_batch_is_refused_whole() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "batch-malformed@example.com").await;
    let raw = |body: &'static str| {
        let (app, key) = (&app, &key);
        async move {
            app.call(
                Method::POST,
                "/v1/jobs/batch",
                Some(key),
                &[],
                Body::Raw(Some("application/json"), body),
            )
            .await
        }
    };
    raw("{\"items\": [")
        .await
        .expect_problem(400, "invalid-request");
    raw("[]").await.expect_problem(400, "invalid-request");
    raw("{\"items\": {}}")
        .await
        .expect_problem(400, "invalid-request");
    raw("{\"jobs\": []}")
        .await
        .expect_problem(400, "invalid-request");
    // One malformed item (an unknown field) refuses the batch: its shape is
    // the request's, not a rule of the platform.
    let body = json!({"items": [
        {"job": image_job()},
        {"job": {"kind": "image", "model": "sdxl", "prompt": "a fox", "colour": "red"}},
    ]});
    batch(&app, &key, &body)
        .await
        .expect_problem(400, "invalid-request");
    let body = json!({"items": [{"job": image_job(), "priority": 1}]});
    batch(&app, &key, &body)
        .await
        .expect_problem(400, "invalid-request");
    // A NUL anywhere is text the store cannot keep, as for any body.
    let body = json!({"items": [{"idempotency_key": "a\u{0}b", "job": image_job()}]});
    batch(&app, &key, &body)
        .await
        .expect_problem(422, "invalid-text");
    // Without credentials nothing is read.
    app.post_json(
        "/v1/jobs/batch",
        None,
        &json!({"items": [{"job": image_job()}]}),
    )
    .await
    .expect_problem(401, "unauthorized");
    // The batch path takes only POST.
    let res = app.get("/v1/jobs/batch", Some(&key)).await;
    res.expect_problem(405, "method-not-allowed");
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 0, 100));
}

#[actix_web::test]
async fn each_accepted_item_counts_against_the_rate_limit() {
    let app = spawn_app_with(|s| {
        s.sim_workers = Some(0);
        s.rate_limits = "free=3".parse().expect("rate limits");
    })
    .await;
    let (_, key) = register(&app, "batch-rate@example.com").await;
    // Refused items give their unit back.
    let refused = json!({"items": [{"job": too_expensive()}, {"job": too_expensive()}]});
    for r in results(&batch(&app, &key, &refused).await.expect(200)) {
        assert_eq!(r["problem"]["type"], "insufficient-credits", "{r}");
    }
    let items: Vec<Value> = (0..5).map(|_| json!({"job": image_job()})).collect();
    let all = results(
        &batch(&app, &key, &json!({ "items": items }))
            .await
            .expect(200),
    );
    let accepted = all.iter().filter(|r| r["status"] == 202).count();
    assert_eq!(accepted, 3, "{all:?}");
    for r in all.iter().filter(|r| r["status"] != 202) {
        let p = expect_item_problem(
            r,
            r["index"].as_u64().expect("index") as usize,
            429,
            "rate-limited",
        );
        assert!(
            (1..=60).contains(&p["retry_after"].as_u64().expect("retry_after")),
            "{p}"
        );
    }
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 3, 97));
    let p = submit(&app, &key, &image_job(), None)
        .await
        .expect_problem(429, "rate-limited");
    assert!(p["retry_after"].as_u64().is_some(), "{p}");
}
