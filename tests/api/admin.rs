//! The operator's API: credits, memberships, suspension and stats, and
//! that only the admin token opens it.

use std::time::{Duration, Instant};

use actix_web::http::Method;
use chrono::Utc;
use serde_json::{json, Value};

use crate::helpers::{
    id_of, image_job, register, spawn_app, spawn_app_with, spawn_app_without_workers, submit,
    submit_ok, wait_for_state, wallet_tuple, Body, TestApp, WAIT,
};

const UNKNOWN_USER: &str = "00000000-0000-7000-8000-000000000000";

fn in_days(days: i64) -> Value {
    json!((Utc::now() + chrono::Duration::days(days)).to_rfc3339())
}

/// Polls the stats until `done` holds; fails after [`WAIT`].
async fn stats_until(app: &TestApp, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = app.stats().await;
        if done(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "stats never showed {what}: {stats}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn the_admin_api_needs_the_admin_token() {
    let app = spawn_app_without_workers().await;
    let (user, key) = register(&app, "a1@example.com").await;
    let id = id_of(&user);
    let grant = json!({"amount": 5, "source": "admin", "idempotency_key": "k"});
    let membership = json!({"tier": "basic", "expires_at": null});
    let calls: [(Method, String, Option<&Value>); 5] = [
        (
            Method::POST,
            format!("/v1/admin/users/{id}/credits"),
            Some(&grant),
        ),
        (
            Method::PUT,
            format!("/v1/admin/users/{id}/membership"),
            Some(&membership),
        ),
        (Method::POST, format!("/v1/admin/users/{id}/suspend"), None),
        (
            Method::POST,
            format!("/v1/admin/users/{id}/reinstate"),
            None,
        ),
        (Method::GET, "/v1/admin/stats".to_owned(), None),
    ];
    let wrong_admin = format!("{}x", app.admin_token);
    for (method, path, body) in &calls {
        for auth in [
            None,
            Some("wrong"),
            Some(key.as_str()),
            Some(wrong_admin.as_str()),
        ] {
            let body = body.map_or(Body::None, Body::Json);
            app.call(method.clone(), path, auth, &[], body)
                .await
                .expect_problem(401, "unauthorized");
        }
        let body = body.map_or(Body::None, Body::Json);
        app.call(
            method.clone(),
            path,
            None,
            &[("Authorization", "Basic xyz")],
            body,
        )
        .await
        .expect_problem(401, "unauthorized");
    }
    // Nothing happened.
    let me = app.get("/v1/me", Some(&key)).await.expect(200);
    assert_eq!(me["user"]["tier"], "free");
    assert_eq!(me["user"]["status"], "active");
    assert_eq!(wallet_tuple(&me["wallet"]), (100, 0, 100));
}

#[actix_web::test]
async fn grants_are_idempotent_by_key() {
    let app = spawn_app_without_workers().await;
    let (user, key) = register(&app, "a2@example.com").await;
    let id = id_of(&user);
    let path = format!("/v1/admin/users/{id}/credits");
    let body = json!({"amount": 500, "source": "purchase", "idempotency_key": "invoice-1",
        "note": "order 1"});
    let wallet = app
        .post_json(&path, Some(&app.admin_token), &body)
        .await
        .expect(200);
    assert_eq!(wallet_tuple(&wallet), (600, 0, 600));

    // The same key and body again changes nothing.
    let again = app
        .post_json(&path, Some(&app.admin_token), &body)
        .await
        .expect(200);
    assert_eq!(wallet_tuple(&again), (600, 0, 600));
    // The same key with another amount, source or note is another request
    // reusing the key: refused, as for jobs, and nothing changes.
    for reused in [
        json!({"amount": 7, "source": "purchase", "idempotency_key": "invoice-1", "note": "order 1"}),
        json!({"amount": 500, "source": "admin", "idempotency_key": "invoice-1", "note": "order 1"}),
        json!({"amount": 500, "source": "purchase", "idempotency_key": "invoice-1"}),
    ] {
        app.post_json(&path, Some(&app.admin_token), &reused)
            .await
            .expect_problem(422, "idempotency-key-reused");
    }
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (600, 0, 600));
    let ledger = app.ledger(&key).await;
    assert_eq!(ledger.len(), 2);
    let e = &ledger[0];
    assert_eq!(e["kind"], "grant");
    assert_eq!(e["amount"], 500);
    assert_eq!(e["balance"], 600);
    assert_eq!(e["source"], "purchase");
    assert_eq!(e["note"], "order 1");
    assert!(e["job_id"].is_null());

    let gift = json!({"amount": 3, "source": "membership_gift", "idempotency_key": "gift-1"});
    let wallet = app
        .post_json(&path, Some(&app.admin_token), &gift)
        .await
        .expect(200);
    assert_eq!(wallet_tuple(&wallet), (603, 0, 603));
    let ledger = app.ledger(&key).await;
    assert_eq!(ledger[0]["source"], "membership_gift");
    assert!(ledger[0]["note"].is_null());
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (603, 0, 603));
}

#[actix_web::test]
async fn bad_grants_are_refused() {
    let app = spawn_app_without_workers().await;
    let (user, key) = register(&app, "a3@example.com").await;
    let path = format!("/v1/admin/users/{}/credits", id_of(&user));
    let invalid = [
        json!({"amount": 0, "source": "admin", "idempotency_key": "k1"}),
        json!({"amount": -5, "source": "admin", "idempotency_key": "k2"}),
        json!({"amount": 5, "source": "registration", "idempotency_key": "k3"}),
        json!({"amount": 5, "source": "admin", "idempotency_key": ""}),
        json!({"amount": 5, "source": "admin", "idempotency_key": "   "}),
        json!({"amount": 5, "source": "admin", "idempotency_key": "k".repeat(256)}),
        json!({"amount": 5, "source": "admin", "idempotency_key": "k4", "note": "n".repeat(501)}),
        // Beyond the largest amount of credits there can be.
        json!({"amount": 1_000_000_000_001_i64, "source": "admin", "idempotency_key": "k10"}),
    ];
    for body in &invalid {
        app.post_json(&path, Some(&app.admin_token), body)
            .await
            .expect_problem(422, "invalid-params");
    }
    let malformed = [
        json!({"amount": 5, "source": "bitcoin", "idempotency_key": "k5"}),
        json!({"amount": "5", "source": "admin", "idempotency_key": "k6"}),
        json!({"amount": 1.5, "source": "admin", "idempotency_key": "k7"}),
        json!({"amount": 5, "source": "admin"}),
        json!({"amount": 5, "source": "admin", "idempotency_key": "k8", "extra": 1}),
    ];
    for body in &malformed {
        app.post_json(&path, Some(&app.admin_token), body)
            .await
            .expect_problem(400, "invalid-request");
    }
    let ok = json!({"amount": 5, "source": "admin", "idempotency_key": "k9"});
    for bad_id in [UNKNOWN_USER, "garbage"] {
        app.post_json(
            &format!("/v1/admin/users/{bad_id}/credits"),
            Some(&app.admin_token),
            &ok,
        )
        .await
        .expect_problem(404, "not-found");
    }
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 0, 100));
    assert_eq!(app.ledger(&key).await.len(), 1);
}

#[actix_web::test]
async fn a_professional_membership_licenses_results_commercially() {
    let app = spawn_app().await;
    let (user, key) = register(&app, "a4@example.com").await;
    let id = id_of(&user);
    let expires = in_days(30);
    let updated = app
        .set_membership(&id, "professional", expires.clone())
        .await
        .expect(200);
    assert_eq!(updated["id"], user["id"]);
    assert_eq!(updated["tier"], "professional");
    let expiry = updated["membership_expires_at"].as_str().expect("expiry");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(expiry).unwrap(),
        chrono::DateTime::parse_from_rfc3339(expires.as_str().unwrap()).unwrap()
    );
    let me = app.get("/v1/me", Some(&key)).await.expect(200);
    assert_eq!(me["user"]["tier"], "professional");
    assert_eq!(wallet_tuple(&me["wallet"]), (100, 0, 100));

    let job = submit_ok(&app, &key, &image_job()).await;
    assert_eq!(job["tier"], "professional");
    let done = wait_for_state(&app, &key, &id_of(&job), "succeeded", WAIT).await;
    assert_eq!(done["result"]["license"], "commercial");

    // Back to free.
    let free = app
        .set_membership(&id, "free", Value::Null)
        .await
        .expect(200);
    assert_eq!(free["tier"], "free");
    assert!(free["membership_expires_at"].is_null());
}

#[actix_web::test]
async fn a_lapsed_membership_reads_free_and_keeps_the_balance() {
    let app = spawn_app_without_workers().await;
    let (user, key) = register(&app, "a5@example.com").await;
    let id = id_of(&user);
    let lapsed = app
        .set_membership(&id, "enterprise", in_days(-1))
        .await
        .expect(200);
    assert_eq!(lapsed["tier"], "free");
    assert!(lapsed["membership_expires_at"].as_str().is_some());
    let me = app.get("/v1/me", Some(&key)).await.expect(200);
    assert_eq!(me["user"]["tier"], "free");
    assert_eq!(wallet_tuple(&me["wallet"]), (100, 0, 100));
    let job = submit_ok(&app, &key, &image_job()).await;
    assert_eq!(job["tier"], "free");

    // No expiry: the tier holds.
    let basic = app
        .put_json(
            &format!("/v1/admin/users/{id}/membership"),
            Some(&app.admin_token),
            &json!({"tier": "basic"}),
        )
        .await
        .expect(200);
    assert_eq!(basic["tier"], "basic");
    assert!(basic["membership_expires_at"].is_null());
}

#[actix_web::test]
async fn bad_membership_requests_are_refused() {
    let app = spawn_app_without_workers().await;
    let (user, key) = register(&app, "a6@example.com").await;
    let path = format!("/v1/admin/users/{}/membership", id_of(&user));
    for body in [
        json!({"tier": "gold", "expires_at": null}),
        json!({"tier": "basic", "expires_at": "next tuesday"}),
        json!({"tier": 2}),
        json!({"expires_at": null}),
        json!({"tier": "basic", "expires_at": null, "price": 5}),
    ] {
        app.put_json(&path, Some(&app.admin_token), &body)
            .await
            .expect_problem(400, "invalid-request");
    }
    for bad_id in [UNKNOWN_USER, "garbage"] {
        app.set_membership(bad_id, "basic", Value::Null)
            .await
            .expect_problem(404, "not-found");
    }
    let me = app.get("/v1/me", Some(&key)).await.expect(200);
    assert_eq!(me["user"]["tier"], "free");
}

#[actix_web::test]
async fn suspension_cancels_waiting_jobs_and_locks_the_account_until_reinstated() {
    let app = spawn_app_without_workers().await;
    let (user, key) = register(&app, "a7@example.com").await;
    let (_, other) = register(&app, "a7b@example.com").await;
    let id = id_of(&user);
    let mut jobs = Vec::new();
    for _ in 0..3 {
        jobs.push(id_of(&submit_ok(&app, &key, &image_job()).await));
    }
    let others_job = id_of(&submit_ok(&app, &other, &image_job()).await);
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 3, 97));

    let suspended = app.suspend(&id).await.expect(200);
    assert_eq!(suspended["id"], user["id"]);
    assert_eq!(suspended["status"], "suspended");

    // The account can no longer act.
    app.get("/v1/me", Some(&key))
        .await
        .expect_problem(403, "account-suspended");
    app.get("/v1/wallet", Some(&key))
        .await
        .expect_problem(403, "account-suspended");
    app.get(&format!("/v1/jobs/{}", jobs[0]), Some(&key))
        .await
        .expect_problem(403, "account-suspended");
    submit(&app, &key, &image_job(), None)
        .await
        .expect_problem(403, "account-suspended");
    // Suspending again is harmless.
    assert_eq!(app.suspend(&id).await.expect(200)["status"], "suspended");
    let stats = stats_until(&app, "the suspended user's jobs leave the line", |s| {
        s["queue"]["free"] == 1
    })
    .await;
    assert_eq!(stats["jobs"]["cancelled"], 3);
    assert_eq!(stats["jobs"]["queued"], 1);

    let reinstated = app.reinstate(&id).await.expect(200);
    assert_eq!(reinstated["status"], "active");
    let me = app.get("/v1/me", Some(&key)).await.expect(200);
    assert_eq!(me["user"]["status"], "active");
    // The waiting jobs were cancelled and their holds voided.
    assert_eq!(wallet_tuple(&me["wallet"]), (100, 0, 100));
    for job in &jobs {
        let j = app.job(&key, job).await;
        assert_eq!(j["state"], "cancelled", "{j}");
        assert_eq!(j["charge"], "voided", "{j}");
    }
    let voids = app
        .ledger(&key)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "void")
        .count();
    assert_eq!(voids, 3);
    // Requests work again.
    submit_ok(&app, &key, &image_job()).await;
    // Reinstating an active account is harmless too.
    assert_eq!(app.reinstate(&id).await.expect(200)["status"], "active");
    // Another user's job was untouched.
    assert_eq!(app.job(&other, &others_job).await["state"], "queued");

    for bad_id in [UNKNOWN_USER, "garbage"] {
        app.suspend(bad_id).await.expect_problem(404, "not-found");
        app.reinstate(bad_id).await.expect_problem(404, "not-found");
    }
}

#[actix_web::test]
async fn stats_show_queues_jobs_and_workers() {
    let app = spawn_app_with(|s| {
        s.sim_workers = Some(3);
        s.sim_slots = 2;
    })
    .await;
    let stats = stats_until(&app, "3 connected workers", |s| {
        s["workers"]["connected"] == 3
    })
    .await;
    let queue = stats["queue"].as_object().expect("queue");
    for tier in ["free", "basic", "professional", "enterprise"] {
        assert_eq!(queue[tier], 0, "{stats}");
    }
    let jobs = stats["jobs"].as_object().expect("jobs");
    for state in [
        "queued",
        "assigned",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ] {
        assert_eq!(jobs[state], 0, "{stats}");
    }
    assert_eq!(stats["workers"]["busy_slots"], 0);
    assert_eq!(stats["workers"]["idle_slots"], 6);

    let (_, key) = register(&app, "a8@example.com").await;
    let job = submit_ok(&app, &key, &image_job()).await;
    wait_for_state(&app, &key, &id_of(&job), "succeeded", WAIT).await;
    let stats = stats_until(&app, "the finished job", |s| {
        s["jobs"]["succeeded"] == 1 && s["workers"]["busy_slots"] == 0
    })
    .await;
    assert_eq!(stats["workers"]["connected"], 3);
    assert_eq!(stats["workers"]["idle_slots"], 6);
    assert_eq!(stats["queue"]["free"], 0);
}

#[actix_web::test]
async fn stats_count_waiting_jobs_per_tier() {
    let app = spawn_app_without_workers().await;
    let (alice, alice_key) = register(&app, "a9a@example.com").await;
    let (_, bob_key) = register(&app, "a9b@example.com").await;
    app.set_membership(&id_of(&alice), "basic", in_days(1))
        .await
        .expect(200);
    submit_ok(&app, &alice_key, &image_job()).await;
    submit_ok(&app, &alice_key, &image_job()).await;
    submit_ok(&app, &bob_key, &image_job()).await;
    let stats = stats_until(&app, "3 waiting jobs", |s| {
        s["queue"]["basic"] == 2 && s["queue"]["free"] == 1
    })
    .await;
    assert_eq!(stats["queue"]["professional"], 0);
    assert_eq!(stats["queue"]["enterprise"], 0);
    assert_eq!(stats["jobs"]["queued"], 3);
    assert_eq!(
        stats["workers"],
        json!({"connected": 0, "busy_slots": 0, "idle_slots": 0})
    );
}
