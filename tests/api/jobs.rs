//! `POST /v1/jobs`, `GET /v1/jobs/{id}`, `GET /v1/jobs`,
//! `POST /v1/jobs/{id}/cancel`: prices, holds, idempotency, limits,
//! outcomes and the money each outcome moves.

use actix_web::http::Method;
use serde_json::{json, Value};

use std::time::{Duration, Instant};

use crate::helpers::{
    id_of, image_job, register, spawn_app, spawn_app_with, spawn_app_without_workers, submit,
    submit_ok, wait_for_state, wallet_tuple, Body, WAIT,
};

fn ids(page: &Value) -> Vec<String> {
    page["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(id_of)
        .collect()
}

#[actix_web::test]
async fn submit_holds_the_cost_and_returns_the_queued_job() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "j1@example.com").await;
    let res = submit(
        &app,
        &key,
        &json!({"kind": "image", "model": "sdxl", "prompt": "  a fox  ",
                "params": {"count": 3, "seed": 42}}),
        None,
    )
    .await;
    let job = res.expect(202);
    let id = id_of(&job);
    assert_eq!(res.header("location"), Some(format!("/v1/jobs/{id}")));
    assert_eq!(res.header("idempotent-replayed"), None);
    assert_eq!(job["kind"], "image");
    assert_eq!(job["model"], "sdxl");
    assert_eq!(job["prompt"], "a fox");
    assert_eq!(
        job["params"],
        json!({"width": 1024, "height": 1024, "count": 3, "seed": 42})
    );
    assert_eq!(job["state"], "queued");
    assert_eq!(job["tier"], "free");
    assert_eq!(job["cost"], 3);
    assert_eq!(job["attempts"], 0);
    assert_eq!(job["max_attempts"], 3);
    assert_eq!(job["queue_position"], 1);
    assert_eq!(job["charge"], "held");
    assert!(job["started_at"].is_null());
    assert!(job["finished_at"].is_null());
    assert!(job["error"].is_null());
    assert!(job["result"].is_null());
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 3, 97));

    let second = submit_ok(&app, &key, &image_job()).await;
    assert_eq!(second["queue_position"], 2);

    // GET reads the same job.
    let read = app.job(&key, &id).await;
    assert_eq!(read["id"], job["id"]);
    assert_eq!(read["state"], "queued");
    assert_eq!(read["queue_position"], 1);
}

#[actix_web::test]
async fn a_job_completes_posts_its_charge_and_carries_a_personal_license() {
    let app = spawn_app().await;
    let (_, key) = register(&app, "j2@example.com").await;
    let job = submit_ok(
        &app,
        &key,
        &json!({"kind": "image", "model": "sdxl",
        "prompt": "a fox", "params": {"count": 2}}),
    )
    .await;
    let done = wait_for_state(&app, &key, &id_of(&job), "succeeded", WAIT).await;
    assert_eq!(done["charge"], "posted");
    assert_eq!(done["attempts"], 1);
    assert!(done["error"].is_null());
    assert!(done["queue_position"].is_null());
    assert!(done["started_at"].as_str().is_some());
    assert!(done["finished_at"].as_str().is_some());
    let result = &done["result"];
    assert_eq!(result["license"], "personal");
    let outputs = result["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), 2);
    for o in outputs {
        assert!(o["url"].as_str().is_some_and(|u| !u.is_empty()));
        assert_eq!(o["content_type"], "image/png");
    }
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (98, 0, 98));
    let ledger = app.ledger(&key).await;
    let kinds: Vec<&str> = ledger.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["post", "hold", "grant"]);
    assert_eq!(ledger[0]["amount"], 2);
    assert_eq!(ledger[0]["job_id"], job["id"]);
    assert_eq!(ledger[0]["balance"], 98);
    assert_eq!(ledger[0]["held"], 0);

    // A finished job cannot be cancelled.
    app.post(&format!("/v1/jobs/{}/cancel", id_of(&job)), Some(&key))
        .await
        .expect_problem(409, "job-finished");
}

#[actix_web::test]
async fn prices_follow_the_default_table() {
    let app = spawn_app_without_workers().await;
    let (user, key) = register(&app, "j3@example.com").await;
    app.grant(&id_of(&user), 1000, "prices").await.expect(200);
    let cases = [
        (
            json!({"kind": "video", "model": "v1", "prompt": "waves",
                "params": {"width": 1280, "height": 720, "duration_s": 5}}),
            25,
        ),
        (
            json!({"kind": "video", "model": "v1", "prompt": "waves",
                "params": {"duration_s": 5}}),
            25,
        ),
        (
            json!({"kind": "video", "model": "v1", "prompt": "waves",
                "params": {"width": 1920, "height": 1080, "duration_s": 3}}),
            30,
        ),
        (
            json!({"kind": "image", "model": "sdxl", "prompt": "a fox",
                "params": {"width": 2048, "height": 2048, "count": 4}}),
            8,
        ),
        (
            json!({"kind": "image", "model": "sdxl", "prompt": "a fox",
                "params": {"width": 512, "height": 512}}),
            1,
        ),
    ];
    let mut held = 0;
    for (body, cost) in cases {
        let job = submit_ok(&app, &key, &body).await;
        assert_eq!(job["cost"], cost, "{body}");
        held += cost;
    }
    assert_eq!(
        wallet_tuple(&app.wallet(&key).await),
        (1100, held, 1100 - held)
    );
    let video = app.get("/v1/jobs?limit=200", Some(&key)).await.expect(200)["jobs"][4].clone();
    assert_eq!(
        video["params"],
        json!({"width": 1280, "height": 720, "duration_s": 5})
    );
}

#[actix_web::test]
async fn out_of_limit_params_are_422_and_charge_nothing() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "j4@example.com").await;
    let bad = [
        json!({"kind": "image", "model": "sdxl", "prompt": ""}),
        json!({"kind": "image", "model": "sdxl", "prompt": "   "}),
        json!({"kind": "image", "model": "", "prompt": "a fox"}),
        json!({"kind": "image", "model": "rm -rf", "prompt": "a fox"}),
        json!({"kind": "image", "model": "sdxl", "prompt": "x".repeat(4001)}),
        json!({"kind": "image", "model": "sdxl", "prompt": "a fox", "params": {"width": 4096}}),
        json!({"kind": "image", "model": "sdxl", "prompt": "a fox", "params": {"width": 10}}),
        json!({"kind": "image", "model": "sdxl", "prompt": "a fox", "params": {"count": 9}}),
        json!({"kind": "image", "model": "sdxl", "prompt": "a fox", "params": {"count": 0}}),
        json!({"kind": "image", "model": "sdxl", "prompt": "a fox", "params": {"duration_s": 5}}),
        json!({"kind": "video", "model": "v1", "prompt": "waves"}),
        json!({"kind": "video", "model": "v1", "prompt": "waves", "params": {"duration_s": 61}}),
        json!({"kind": "video", "model": "v1", "prompt": "waves", "params": {"duration_s": 0}}),
        json!({"kind": "video", "model": "v1", "prompt": "waves",
               "params": {"duration_s": 5, "count": 1}}),
        json!({"kind": "video", "model": "v1", "prompt": "waves",
               "params": {"duration_s": 5, "width": 1920, "height": 1200}}),
    ];
    for body in &bad {
        submit(&app, &key, body, None)
            .await
            .expect_problem(422, "invalid-params");
    }
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 0, 100));
    assert_eq!(app.ledger(&key).await.len(), 1);
}

#[actix_web::test]
async fn priority_is_kept_and_orders_only_the_users_own_queue() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "prio@example.com").await;
    let body = |priority: Option<&str>| {
        let mut b = json!({"kind": "image", "model": "sdxl", "prompt": "a fox"});
        if let Some(p) = priority {
            b["priority"] = json!(p);
        }
        b
    };
    let plain = submit_ok(&app, &key, &body(None)).await;
    assert_eq!(plain["priority"], "normal");
    let low = submit_ok(&app, &key, &body(Some("low"))).await;
    assert_eq!(low["priority"], "low");
    assert_eq!(low["queue_position"], 2);
    // A high job goes before the user's own normal and low ones.
    let high = submit_ok(&app, &key, &body(Some("high"))).await;
    assert_eq!(high["priority"], "high");
    assert_eq!(high["queue_position"], 1);
    let read = app
        .get(&format!("/v1/jobs/{}", id_of(&high)), Some(&key))
        .await
        .expect(200);
    assert_eq!(read["priority"], "high");
    let read = app
        .get(&format!("/v1/jobs/{}", id_of(&low)), Some(&key))
        .await
        .expect(200);
    assert_eq!(read["queue_position"], 3);

    // Bad input: a value outside the three is refused and charges nothing.
    let before = wallet_tuple(&app.wallet(&key).await);
    for bad in ["urgent", "HIGH", "", " high"] {
        submit(&app, &key, &body(Some(bad)), None)
            .await
            .expect_problem(422, "invalid-params");
    }
    let mut wrong_type = body(None);
    wrong_type["priority"] = json!(3);
    submit(&app, &key, &wrong_type, None)
        .await
        .expect_problem(400, "invalid-request");
    assert_eq!(wallet_tuple(&app.wallet(&key).await), before);
}

#[actix_web::test]
async fn malformed_job_requests_are_400() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "j5@example.com").await;
    let bad = [
        // Unknown fields, at the top and in params.
        json!({"kind": "image", "model": "sdxl", "prompt": "a fox", "colour": "red"}),
        json!({"kind": "image", "model": "sdxl", "prompt": "a fox", "params": {"widht": 512}}),
        // Wrong types and values outside the type.
        json!({"kind": "audio", "model": "sdxl", "prompt": "a fox"}),
        json!({"kind": "image", "model": "sdxl", "prompt": 5}),
        json!({"kind": "image", "model": "sdxl", "prompt": "a fox", "params": {"width": "big"}}),
        json!({"kind": "image", "model": "sdxl", "prompt": "a fox", "params": {"width": -1}}),
        json!({"kind": "image", "model": "sdxl", "prompt": "a fox", "params": {"count": 1.5}}),
        json!({"kind": "image", "model": "sdxl", "prompt": "a fox", "params": [1, 2]}),
        // Missing fields.
        json!({"kind": "image", "model": "sdxl"}),
        json!([]),
    ];
    for body in &bad {
        submit(&app, &key, body, None)
            .await
            .expect_problem(400, "invalid-request");
    }
    // A body beyond the limit (64 KiB) is refused before it is parsed.
    let huge = json!({"kind": "image", "model": "sdxl", "prompt": "x".repeat(70_000)});
    submit(&app, &key, &huge, None)
        .await
        .expect_problem(413, "payload-too-large");
    for (ct, raw) in [
        (Some("application/json"), "{"),
        (
            None,
            r#"{"kind": "image", "model": "sdxl", "prompt": "a fox"}"#,
        ),
    ] {
        app.call(
            Method::POST,
            "/v1/jobs",
            Some(&key),
            &[],
            Body::Raw(ct, raw),
        )
        .await
        .expect_problem(400, "invalid-request");
    }
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 0, 100));
}

#[actix_web::test]
async fn submitting_needs_a_user_key() {
    let app = spawn_app_without_workers().await;
    submit(&app, "nope", &image_job(), None)
        .await
        .expect_problem(401, "unauthorized");
    app.call(
        Method::POST,
        "/v1/jobs",
        None,
        &[],
        Body::Json(&image_job()),
    )
    .await
    .expect_problem(401, "unauthorized");
    for path in ["/v1/jobs", "/v1/jobs/00000000-0000-0000-0000-000000000000"] {
        app.get(path, None)
            .await
            .expect_problem(401, "unauthorized");
    }
    app.post("/v1/jobs/00000000-0000-0000-0000-000000000000/cancel", None)
        .await
        .expect_problem(401, "unauthorized");
}

#[actix_web::test]
async fn insufficient_credits_is_402_and_charges_nothing() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "j6@example.com").await;
    let body = json!({"kind": "video", "model": "v1", "prompt": "waves",
        "params": {"width": 1920, "height": 1080, "duration_s": 60}});
    let p = submit(&app, &key, &body, None)
        .await
        .expect_problem(402, "insufficient-credits");
    assert_eq!(p["required"].as_i64(), Some(600), "{p}");
    assert_eq!(p["available"].as_i64(), Some(100), "{p}");
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 0, 100));
    assert_eq!(app.ledger(&key).await.len(), 1);
    assert_eq!(
        app.get("/v1/jobs", Some(&key)).await.expect(200)["jobs"],
        json!([])
    );

    // Available, not balance, is what counts: hold 96, then 5 is too much.
    let big = json!({"kind": "image", "model": "sdxl", "prompt": "a fox",
        "params": {"width": 2048, "count": 8}});
    for _ in 0..6 {
        submit_ok(&app, &key, &big).await;
    }
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 96, 4));
    let p = submit(
        &app,
        &key,
        &json!({"kind": "image", "model": "sdxl", "prompt": "a fox", "params": {"count": 5}}),
        None,
    )
    .await
    .expect_problem(402, "insufficient-credits");
    assert_eq!(p["required"].as_i64(), Some(5));
    assert_eq!(p["available"].as_i64(), Some(4));
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 96, 4));
}

#[actix_web::test]
async fn the_same_idempotency_key_and_body_replays_the_first_job() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "j7@example.com").await;
    let first = submit(&app, &key, &image_job(), Some("order-42")).await;
    let job = first.expect(202);
    assert_eq!(first.header("idempotent-replayed"), None);

    // Same body, other formatting and field order.
    let same = json!({"prompt": "a red fox in the snow", "model": "sdxl", "kind": "image",
        "params": {"count": 1}});
    for body in [image_job(), same] {
        let replay = submit(&app, &key, &body, Some("order-42")).await;
        let again = replay.expect(202);
        assert_eq!(
            replay.header("idempotent-replayed").as_deref(),
            Some("true")
        );
        assert_eq!(again["id"], job["id"]);
        assert_eq!(again["cost"], job["cost"]);
        assert_eq!(
            replay.header("location"),
            Some(format!("/v1/jobs/{}", id_of(&job)))
        );
    }
    // Charged once.
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 1, 99));
    let holds = app
        .ledger(&key)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "hold")
        .count();
    assert_eq!(holds, 1);
    assert_eq!(
        ids(&app.get("/v1/jobs", Some(&key)).await.expect(200)).len(),
        1
    );

    // Another body under the same key.
    let other = json!({"kind": "image", "model": "sdxl", "prompt": "a grey wolf"});
    submit(&app, &key, &other, Some("order-42"))
        .await
        .expect_problem(422, "idempotency-key-reused");
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 1, 99));

    // A key is the user's own: another user may use the same one.
    let (_, key2) = register(&app, "j7b@example.com").await;
    let theirs = submit(&app, &key2, &image_job(), Some("order-42")).await;
    let their_job = theirs.expect(202);
    assert_eq!(theirs.header("idempotent-replayed"), None);
    assert_ne!(their_job["id"], job["id"]);
}

#[actix_web::test]
async fn malformed_idempotency_keys_are_422() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "j8@example.com").await;
    let long = "k".repeat(256);
    for idem in ["", long.as_str(), "has space"] {
        submit(&app, &key, &image_job(), Some(idem))
            .await
            .expect_problem(422, "invalid-params");
    }
    let longest = "k".repeat(255);
    submit(&app, &key, &image_job(), Some(&longest))
        .await
        .expect(202);
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 1, 99));
}

#[actix_web::test]
async fn another_users_job_is_not_found() {
    let app = spawn_app_without_workers().await;
    let (_, alice) = register(&app, "j9a@example.com").await;
    let (_, bob) = register(&app, "j9b@example.com").await;
    let job = submit_ok(&app, &alice, &image_job()).await;
    let id = id_of(&job);
    app.get(&format!("/v1/jobs/{id}"), Some(&bob))
        .await
        .expect_problem(404, "not-found");
    app.post(&format!("/v1/jobs/{id}/cancel"), Some(&bob))
        .await
        .expect_problem(404, "not-found");
    // Bob's list does not show it, and paging from it shows nothing of Alice's.
    assert_eq!(
        app.get("/v1/jobs", Some(&bob)).await.expect(200)["jobs"],
        json!([])
    );
    app.get(&format!("/v1/jobs?before={id}"), Some(&bob))
        .await
        .expect_problem(404, "not-found");
    // Still queued and held for Alice.
    assert_eq!(app.job(&alice, &id).await["state"], "queued");
    assert_eq!(wallet_tuple(&app.wallet(&alice).await), (100, 1, 99));

    for garbage in ["garbage", "00000000-0000-0000-0000-000000000000", "1"] {
        app.get(&format!("/v1/jobs/{garbage}"), Some(&alice))
            .await
            .expect_problem(404, "not-found");
        app.post(&format!("/v1/jobs/{garbage}/cancel"), Some(&alice))
            .await
            .expect_problem(404, "not-found");
    }
}

#[actix_web::test]
async fn list_filters_by_state_and_pages_newest_first() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "j10@example.com").await;
    let mut submitted = Vec::new();
    for _ in 0..3 {
        submitted.push(id_of(&submit_ok(&app, &key, &image_job()).await));
    }
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();

    let all = app.get("/v1/jobs", Some(&key)).await.expect(200);
    assert_eq!(ids(&all), newest_first);
    assert!(all["next"].is_null());
    // A list does not compute queue positions, but carries the jobs.
    assert_eq!(all["jobs"][0]["state"], "queued");

    let p1 = app.get("/v1/jobs?limit=2", Some(&key)).await.expect(200);
    assert_eq!(ids(&p1), newest_first[..2]);
    let next = p1["next"].as_str().expect("next");
    assert_eq!(next, newest_first[1]);
    let p2 = app
        .get(&format!("/v1/jobs?limit=2&before={next}"), Some(&key))
        .await
        .expect(200);
    assert_eq!(ids(&p2), newest_first[2..]);
    assert!(p2["next"].is_null());

    app.post(&format!("/v1/jobs/{}/cancel", submitted[1]), Some(&key))
        .await
        .expect(200);
    let queued = app
        .get("/v1/jobs?state=queued", Some(&key))
        .await
        .expect(200);
    assert_eq!(ids(&queued), [submitted[2].clone(), submitted[0].clone()]);
    let cancelled = app
        .get("/v1/jobs?state=cancelled", Some(&key))
        .await
        .expect(200);
    assert_eq!(ids(&cancelled), [submitted[1].clone()]);
    let succeeded = app
        .get("/v1/jobs?state=succeeded", Some(&key))
        .await
        .expect(200);
    assert_eq!(ids(&succeeded), Vec::<String>::new());
    let page = app
        .get("/v1/jobs?state=queued&limit=1", Some(&key))
        .await
        .expect(200);
    assert_eq!(ids(&page), [submitted[2].clone()]);
    assert_eq!(page["next"], submitted[2].as_str());
}

#[actix_web::test]
async fn list_filter_by_succeeded_shows_finished_jobs() {
    let app = spawn_app().await;
    let (_, key) = register(&app, "j11@example.com").await;
    let mut submitted = Vec::new();
    for _ in 0..3 {
        let id = id_of(&submit_ok(&app, &key, &image_job()).await);
        wait_for_state(&app, &key, &id, "succeeded", WAIT).await;
        submitted.push(id);
    }
    submitted.reverse();
    let page = app
        .get("/v1/jobs?state=succeeded", Some(&key))
        .await
        .expect(200);
    assert_eq!(ids(&page), submitted);
    for job in page["jobs"].as_array().unwrap() {
        assert_eq!(job["charge"], "posted");
    }
    let queued = app
        .get("/v1/jobs?state=queued", Some(&key))
        .await
        .expect(200);
    assert_eq!(queued["jobs"], json!([]));
}

#[actix_web::test]
async fn list_refuses_bad_queries() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "j12@example.com").await;
    for q in [
        "state=done",
        "state=QUEUED",
        "state=",
        "limit=0",
        "limit=1000",
        "before=garbage",
    ] {
        app.get(&format!("/v1/jobs?{q}"), Some(&key))
            .await
            .expect_problem(422, "invalid-params");
    }
    for q in ["status=queued", "limit=x"] {
        app.get(&format!("/v1/jobs?{q}"), Some(&key))
            .await
            .expect_problem(400, "invalid-request");
    }
}

#[actix_web::test]
async fn cancelling_a_queued_job_voids_its_hold() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "j13@example.com").await;
    let job = submit_ok(
        &app,
        &key,
        &json!({"kind": "video", "model": "v1", "prompt": "waves", "params": {"duration_s": 2}}),
    )
    .await;
    let id = id_of(&job);
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 10, 90));

    let cancelled = app
        .post(&format!("/v1/jobs/{id}/cancel"), Some(&key))
        .await
        .expect(200);
    assert_eq!(cancelled["id"], job["id"]);
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["charge"], "voided");
    assert!(cancelled["finished_at"].as_str().is_some());
    assert!(cancelled["queue_position"].is_null());
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 0, 100));
    let ledger = app.ledger(&key).await;
    assert_eq!(ledger[0]["kind"], "void");
    assert_eq!(ledger[0]["amount"], 10);
    assert_eq!(ledger[0]["job_id"], job["id"]);

    app.post(&format!("/v1/jobs/{id}/cancel"), Some(&key))
        .await
        .expect_problem(409, "job-finished");
    assert_eq!(app.job(&key, &id).await["state"], "cancelled");
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 0, 100));
    assert_eq!(app.ledger(&key).await.len(), 3);
}

#[actix_web::test]
async fn the_free_tier_may_have_ten_jobs_waiting() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "j14@example.com").await;
    let mut first = None;
    for _ in 0..10 {
        let job = submit_ok(&app, &key, &image_job()).await;
        first.get_or_insert(id_of(&job));
    }
    let p = submit(&app, &key, &image_job(), None)
        .await
        .expect_problem(429, "queue-limit");
    assert_eq!(p["limit"], 10, "{p}");
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 10, 90));

    // A cancelled job frees its place.
    let first = first.unwrap();
    app.post(&format!("/v1/jobs/{first}/cancel"), Some(&key))
        .await
        .expect(200);
    submit_ok(&app, &key, &image_job()).await;
    submit(&app, &key, &image_job(), None)
        .await
        .expect_problem(429, "queue-limit");
}

#[actix_web::test]
async fn system_failures_are_retried_then_refunded() {
    let app = spawn_app_with(|s| s.sim_failure_rate = 1.0).await;
    let (_, key) = register(&app, "j15@example.com").await;
    let job = submit_ok(&app, &key, &image_job()).await;
    let failed = wait_for_state(&app, &key, &id_of(&job), "failed", WAIT).await;
    assert_eq!(failed["attempts"], 3);
    assert_eq!(failed["max_attempts"], 3);
    assert_eq!(failed["charge"], "voided");
    assert_eq!(failed["error"]["class"], "system");
    assert!(failed["error"]["message"].as_str().is_some());
    assert!(failed["result"].is_null());
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 0, 100));
    let ledger = app.ledger(&key).await;
    assert_eq!(ledger[0]["kind"], "void");
    assert_eq!(ledger.len(), 3);
}

#[actix_web::test]
async fn user_errors_are_charged_and_not_retried() {
    let app = spawn_app_with(|s| s.sim_user_error_rate = 1.0).await;
    let (_, key) = register(&app, "j16@example.com").await;
    let job = submit_ok(&app, &key, &image_job()).await;
    let failed = wait_for_state(&app, &key, &id_of(&job), "failed", WAIT).await;
    assert_eq!(failed["attempts"], 1);
    assert_eq!(failed["charge"], "posted");
    assert_eq!(failed["error"]["class"], "user");
    assert!(failed["result"].is_null());
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (99, 0, 99));
    assert_eq!(app.ledger(&key).await[0]["kind"], "post");
}

#[actix_web::test]
async fn concurrent_submissions_never_overdraw_the_wallet() {
    let app = spawn_app_with(|s| {
        s.sim_workers = Some(0);
        s.registration_credits = 0;
    })
    .await;
    let (user, key) = register(&app, "j17@example.com").await;
    let id = id_of(&user);
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (0, 0, 0));
    // Enterprise, so the waiting limit (1000) is not what stops them.
    app.set_membership(&id, "enterprise", Value::Null)
        .await
        .expect(200);
    assert_eq!(
        wallet_tuple(&app.grant(&id, 50, "fifty").await.expect(200)),
        (50, 0, 50)
    );

    let body = image_job();
    let responses =
        futures_util::future::join_all((0..200).map(|_| submit(&app, &key, &body, None))).await;
    let mut accepted = 0;
    let mut refused = 0;
    for res in &responses {
        match res.status {
            202 => accepted += 1,
            402 => {
                let p = res.expect_problem(402, "insufficient-credits");
                assert_eq!(p["required"], 1);
                assert_eq!(p["available"], 0);
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", res.text()),
        }
    }
    assert_eq!((accepted, refused), (50, 150));
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (50, 50, 0));
    let queued = app
        .get("/v1/jobs?state=queued&limit=200", Some(&key))
        .await
        .expect(200);
    assert_eq!(queued["jobs"].as_array().unwrap().len(), 50);
    let holds = app
        .ledger(&key)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "hold")
        .count();
    assert_eq!(holds, 50);
}

#[actix_web::test]
async fn a_replay_after_the_job_finished_still_charges_nothing() {
    let app = spawn_app().await;
    let (_, key) = register(&app, "j18@example.com").await;
    let job = submit(&app, &key, &image_job(), Some("once"))
        .await
        .expect(202);
    wait_for_state(&app, &key, &id_of(&job), "succeeded", WAIT).await;
    let replay = submit(&app, &key, &image_job(), Some("once")).await;
    assert_eq!(replay.expect(202)["id"], job["id"]);
    assert_eq!(
        replay.header("idempotent-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (99, 0, 99));
    assert_eq!(
        ids(&app.get("/v1/jobs", Some(&key)).await.expect(200)).len(),
        1
    );
}

#[actix_web::test]
async fn cancelling_a_running_job_charges_it_and_frees_the_worker() {
    // One slot, and an attempt far longer than the test: only a cancel
    // that reaches the worker frees the slot in time.
    let app = spawn_app_with(|s| {
        s.sim_workers = Some(1);
        s.sim_slots = 1;
        s.sim_job_time = Duration::from_millis(60_000);
    })
    .await;
    let (_, key) = register(&app, "j19@example.com").await;
    let job = submit_ok(&app, &key, &image_job()).await;
    let id = id_of(&job);
    let running = wait_for_state(&app, &key, &id, "running", WAIT).await;
    assert_eq!(running["attempts"], 1);
    assert!(running["started_at"].as_str().is_some());
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 1, 99));

    let cancelled = app
        .post(&format!("/v1/jobs/{id}/cancel"), Some(&key))
        .await
        .expect(200);
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["charge"], "posted");
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (99, 0, 99));
    app.post(&format!("/v1/jobs/{id}/cancel"), Some(&key))
        .await
        .expect_problem(409, "job-finished");

    let deadline = Instant::now() + WAIT;
    loop {
        let stats = app.stats().await;
        if stats["workers"]["busy_slots"] == 0 && stats["workers"]["idle_slots"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cancelled attempt still holds the slot: {stats}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    // The freed slot takes the next job.
    let next = submit_ok(&app, &key, &image_job()).await;
    wait_for_state(&app, &key, &id_of(&next), "running", WAIT).await;
    assert_eq!(app.job(&key, &id).await["state"], "cancelled");
}

/// Only accepted submissions spend the per-minute budget: refusals (here
/// for want of credits) leave it whole.
#[actix_web::test]
async fn refused_submissions_do_not_spend_the_rate_budget() {
    let app = spawn_app_with(|s| {
        s.sim_workers = Some(0);
        s.registration_credits = 0;
        s.rate_limits = "free=2".parse().expect("rate limits");
    })
    .await;
    let (user, key) = register(&app, "budget@example.com").await;
    for _ in 0..3 {
        submit(&app, &key, &image_job(), None)
            .await
            .expect_problem(402, "insufficient-credits");
    }
    app.grant(&id_of(&user), 10, "budget").await.expect(200);
    for _ in 0..2 {
        submit(&app, &key, &image_job(), None).await.expect(202);
    }
    submit(&app, &key, &image_job(), None)
        .await
        .expect_problem(429, "rate-limited");
}
