//! The operator API across users.

use serde_json::json;

use crate::helpers::*;
use crate::workers::{hello, Gpu};

#[actix_web::test]
async fn a_job_page_shows_attempts_and_ledger_after_a_retry() {
    let app = spawn_app_with(|s| s.sim_workers = Some(0)).await;
    let (user, key) = register(&app, "ops.view@example.com").await;
    let id = id_of(&submit_ok(&app, &key, &image_job()).await);
    let mut gpu = Gpu::connect(&app, hello("op-gpu", 1)).await;
    let a = gpu.assigned().await;
    gpu.send(json!({"type": "fail", "job_id": a["job_id"], "lease": a["lease"], "class": "system", "message": "OOM"}))
        .await;
    let b = gpu.assigned().await;
    gpu.accept(&b).await;
    gpu.complete(&b).await;
    wait_for_state(&app, &key, &id, "succeeded", WAIT).await;

    let detail = app
        .get(&format!("/v1/admin/jobs/{id}"), Some(ADMIN_TOKEN))
        .await
        .expect(200);
    assert_eq!(detail["user_id"], id_of(&user).as_str());
    let attempts = detail["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["outcome"], "system_failure");
    assert_eq!(attempts[0]["message"], "OOM");
    assert_eq!(attempts[1]["outcome"], "succeeded");
    let kinds: Vec<&str> = detail["ledger"]
        .as_array()
        .expect("ledger")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, vec!["hold", "post"]);

    let listed = app
        .get(
            &format!("/v1/admin/jobs?state=succeeded&user={}", id_of(&user)),
            Some(ADMIN_TOKEN),
        )
        .await
        .expect(200);
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(1));
    let none = app
        .get("/v1/admin/jobs?state=queued", Some(ADMIN_TOKEN))
        .await
        .expect(200);
    assert_eq!(none["jobs"].as_array().map(Vec::len), Some(0));
    let stats = app.stats().await;
    assert_eq!(stats["last_hour"]["system_failures"], 1);
    assert_eq!(stats["recent_dispatches"]["free"], 2);

    let workers = app
        .get("/v1/admin/workers", Some(ADMIN_TOKEN))
        .await
        .expect(200);
    let w = &workers["workers"][0];
    assert_eq!(w["name"], "op-gpu");
    assert_eq!(w["loaded_models"], json!(["sdxl"]));
    let wid = w["id"].as_str().expect("worker id").to_owned();
    app.post(&format!("/v1/admin/workers/{wid}/drain"), Some(ADMIN_TOKEN))
        .await;
    let drain = gpu.recv().await;
    assert_eq!(drain["type"], "drain");
    let after = app
        .get("/v1/admin/workers", Some(ADMIN_TOKEN))
        .await
        .expect(200);
    assert_eq!(after["workers"][0]["draining"], true);
    // A drained worker gets nothing new.
    let next = id_of(&submit_ok(&app, &key, &image_job()).await);
    gpu.expect_no_assignment().await;
    let cancelled = app
        .post(&format!("/v1/admin/jobs/{next}/cancel"), Some(ADMIN_TOKEN))
        .await
        .expect(200);
    assert_eq!(cancelled["charge"], "voided");
}

#[actix_web::test]
async fn operator_api_refuses_bad_input_and_strangers() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "Finder.Someone@example.com").await;
    app.get("/v1/admin/jobs", None)
        .await
        .expect_problem(401, "unauthorized");
    app.get("/v1/admin/jobs", Some(&key))
        .await
        .expect_problem(401, "unauthorized");
    app.get("/v1/admin/jobs?state=sleeping", Some(ADMIN_TOKEN))
        .await
        .expect_problem(422, "invalid-params");
    app.get("/v1/admin/jobs?tier=gold", Some(ADMIN_TOKEN))
        .await
        .expect_problem(422, "invalid-params");
    app.get("/v1/admin/jobs?user=nobody", Some(ADMIN_TOKEN))
        .await
        .expect_problem(422, "invalid-params");
    app.get("/v1/admin/jobs?colour=red", Some(ADMIN_TOKEN))
        .await
        .expect_problem(400, "invalid-request");
    app.get("/v1/admin/jobs/nope", Some(ADMIN_TOKEN))
        .await
        .expect_problem(404, "not-found");
    app.post(
        "/v1/admin/jobs/01a2201c-78e0-7109-9b52-7b4f43d4b1ac/cancel",
        Some(ADMIN_TOKEN),
    )
    .await
    .expect_problem(404, "not-found");
    app.post("/v1/admin/workers/nope/drain", Some(ADMIN_TOKEN))
        .await
        .expect_problem(404, "not-found");
    app.get("/v1/admin/users?email=", Some(ADMIN_TOKEN))
        .await
        .expect_problem(422, "invalid-params");
    let found = app
        .get("/v1/admin/users?email=finder.some", Some(ADMIN_TOKEN))
        .await
        .expect(200);
    assert_eq!(found["users"][0]["email"], "finder.someone@example.com");
    let uid = found["users"][0]["id"].as_str().expect("id").to_owned();
    let detail = app
        .get(&format!("/v1/admin/users/{uid}"), Some(ADMIN_TOKEN))
        .await
        .expect(200);
    assert_eq!(detail["wallet"]["balance"], 100);
    assert_eq!(detail["ledger"][0]["source"], "registration");
}
