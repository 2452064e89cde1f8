//! Errors the framework itself would answer: a wrong method, an oversized
//! body, an unreadable one. Every one is problem+json with a stable type.

use actix_web::http::Method;
use serde_json::json;

use crate::helpers::*;
use crate::payments::PAYMENT_SECRET;

#[actix_web::test]
async fn a_wrong_method_is_405_with_the_allowed_ones() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "methods@example.com").await;
    for (method, path, allow) in [
        (Method::DELETE, "/v1/jobs", "POST, GET"),
        (Method::PUT, "/v1/wallet", "GET"),
        (Method::GET, "/v1/users", "POST"),
        (Method::PATCH, "/v1/me/api-keys/some-id", "DELETE"),
        (Method::POST, "/healthz", "GET"),
        (Method::GET, "/v1/admin/users/x/membership", "PUT"),
    ] {
        let res = app
            .call(method.clone(), path, Some(&key), &[], Body::None)
            .await;
        res.expect_problem(405, "method-not-allowed");
        assert_eq!(
            res.header("allow").as_deref(),
            Some(allow),
            "{method} {path}"
        );
    }
    // An unknown path is still 404.
    app.get("/v1/nothing-here", Some(&key))
        .await
        .expect_problem(404, "not-found");
}

#[actix_web::test]
async fn an_oversized_body_is_413_problem_json_everywhere() {
    let app = spawn_app_with(|s| {
        s.sim_workers = Some(0);
        s.payment_secret = Some(PAYMENT_SECRET.into());
    })
    .await;
    let (_, key) = register(&app, "big@example.com").await;
    let huge = "x".repeat(70 * 1024);
    let job = json!({"kind": "image", "model": "sdxl", "prompt": huge});
    submit(&app, &key, &job, None)
        .await
        .expect_problem(413, "payload-too-large");
    // The payment webhook reads the raw body (to check its signature).
    let res = app
        .call(
            Method::POST,
            "/v1/payments/webhook",
            None,
            &[],
            Body::Raw(Some("application/json"), &huge),
        )
        .await;
    res.expect_problem(413, "payload-too-large");
    // Nothing was charged.
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 0, 100));
}
