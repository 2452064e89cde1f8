//! Text the store cannot keep (a NUL character) is the caller's error on
//! both stores: `422 invalid-text` wherever it is sent, and nothing changes.
//! (PostgreSQL refuses U+0000 in `text` and `jsonb`; the embedded store
//! would have kept it.)

use serde_json::{json, Value};

use crate::helpers::*;
use crate::payments::{send_signed, PAYMENT_SECRET};

/// Everything the account shows, to compare before and after.
async fn snapshot(app: &TestApp, key: &str) -> (Value, Vec<Value>, Value, Value) {
    let wallet = app.wallet(key).await;
    let ledger = app.ledger(key).await;
    let jobs = app.get("/v1/jobs", Some(key)).await.expect(200);
    let users = app
        .get("/v1/admin/users?email=example.com", Some(&app.admin_token))
        .await
        .expect(200);
    (wallet, ledger, jobs, users)
}

async fn nul_is_refused_everywhere(app: TestApp) {
    let (user, key) = register(&app, "clean@example.com").await;
    let id = id_of(&user);
    app.grant(&id, 10, "first-grant").await.expect(200);
    let before = snapshot(&app, &key).await;
    let refused = |res: Resp, what: &str| {
        let p = res.expect_problem(422, "invalid-text");
        assert!(
            p["detail"].as_str().is_some_and(|d| d.contains(what)),
            "the detail names {what}: {p}"
        );
    };

    // Registration.
    for (email, name, field) in [
        ("nul\u{0}@example.com", "Name", "email"),
        ("other@example.com", "Na\u{0}me", "display_name"),
    ] {
        let res = app
            .post_json(
                "/v1/users",
                None,
                &json!({"email": email, "display_name": name}),
            )
            .await;
        refused(res, field);
    }
    // A job: prompt, model, webhook URL, and a string where a number goes.
    for (body, field) in [
        (
            json!({"kind": "image", "model": "sdxl", "prompt": "a fox\u{0}"}),
            "/prompt",
        ),
        (
            json!({"kind": "image", "model": "sd\u{0}xl", "prompt": "a fox"}),
            "/model",
        ),
        (
            json!({"kind": "image", "model": "sdxl", "prompt": "a fox",
                "webhook_url": "https://example.com/\u{0}"}),
            "/webhook_url",
        ),
        (
            json!({"kind": "image", "model": "sdxl", "prompt": "a fox",
                "params": {"seed": "\u{0}"}}),
            "/params/seed",
        ),
    ] {
        refused(submit(&app, &key, &body, Some("idem-1")).await, field);
    }
    // The operator's grant: its key and its note.
    for (body, field) in [
        (
            json!({"amount": 5, "source": "admin", "idempotency_key": "k\u{0}"}),
            "/idempotency_key",
        ),
        (
            json!({"amount": 5, "source": "admin", "idempotency_key": "k2", "note": "n\u{0}"}),
            "/note",
        ),
    ] {
        let res = app
            .post_json(
                &format!("/v1/admin/users/{id}/credits"),
                Some(&app.admin_token),
                &body,
            )
            .await;
        refused(res, field);
    }
    // Query strings: the operator's search and a user's filter.
    refused(
        app.get("/v1/admin/users?email=clean%00", Some(&app.admin_token))
            .await,
        "email",
    );
    refused(
        app.get("/v1/jobs?state=queued%00", Some(&key)).await,
        "state",
    );
    // A payment event, correctly signed.
    let event = json!({"payment_id": "pay\u{0}1", "user_id": id,
        "product": {"type": "credits", "credits": 500}})
    .to_string();
    refused(
        send_signed(&app, PAYMENT_SECRET, chrono::Utc::now().timestamp(), &event).await,
        "/payment_id",
    );
    // The escaped text "\u0000" (a backslash and five characters) is fine.
    let fine = json!({"kind": "image", "model": "sdxl", "prompt": "say \\u0000"});
    let job = submit(&app, &key, &fine, None).await.expect(202);
    assert_eq!(job["prompt"], "say \\u0000");
    app.post(&format!("/v1/jobs/{}/cancel", id_of(&job)), Some(&key))
        .await
        .expect(200);

    // Nothing else happened: the same wallet, ledger (but for the fine
    // job's hold and its refund), jobs and users.
    let after = snapshot(&app, &key).await;
    assert_eq!(before.0, after.0, "wallet");
    assert_eq!(before.1.len() + 2, after.1.len(), "ledger: {:?}", after.1);
    assert_eq!(before.2["jobs"].as_array().map(Vec::len), Some(0));
    assert_eq!(after.2["jobs"].as_array().map(Vec::len), Some(1));
    assert_eq!(before.3, after.3, "users");
}

/// No workers, so the one accepted job is still waiting when cancelled.
fn payments(s: &mut admedia::config::Settings) {
    s.payment_secret = Some(PAYMENT_SECRET.into());
    s.sim_workers = Some(0);
}

#[actix_web::test]
async fn nul_characters_are_refused_on_the_embedded_store() {
    nul_is_refused_everywhere(spawn_app_with(payments).await).await;
}

#[actix_web::test]
async fn nul_characters_are_refused_on_postgres() {
    let Some(app) = spawn_app_on_postgres_with(payments).await else {
        return;
    };
    nul_is_refused_everywhere(app).await;
}
