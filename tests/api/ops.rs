//! Operations: health, readiness, metrics, the OpenAPI document, unknown
//! routes and request ids.

use actix_web::http::Method;

use crate::helpers::*;

#[actix_web::test]
async fn healthz_and_readyz_answer() {
    let app = spawn_app_without_workers().await;
    let health = app.get("/healthz", None).await.expect(200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["store"], "memory");
    let ready = app.get("/readyz", None).await.expect(200);
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["store"], "memory");
}

#[actix_web::test]
async fn metrics_are_prometheus_text_without_ids_in_labels() {
    let app = spawn_app_without_workers().await;
    let (user, key) = register(&app, "o1@example.com").await;
    let job = submit_ok(&app, &key, &image_job()).await;
    app.get(&format!("/v1/jobs/{}", id_of(&job)), Some(&key))
        .await
        .expect(200);

    let res = app.get("/metrics", None).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(res
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    let text = res.text();
    assert!(text.contains("admedia_jobs_submitted_total"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("admedia_jobs_submitted_total{") && l.ends_with(" 1")),
        "{text}"
    );
    assert!(text.contains("admedia_http_requests_total"), "{text}");
    for id in [id_of(&user), id_of(&job), key.clone()] {
        assert!(!text.contains(&id), "metrics leak {id}");
    }
    // Routes are labelled by pattern.
    assert!(text.contains("/v1/jobs/{id}"), "{text}");
}

#[actix_web::test]
async fn openapi_document_lists_the_paths() {
    let app = spawn_app_without_workers().await;
    let doc = app.get("/openapi.json", None).await.expect(200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    for path in [
        "/v1/users",
        "/v1/me",
        "/v1/wallet",
        "/v1/wallet/ledger",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/cancel",
        "/v1/admin/users/{id}/credits",
        "/v1/admin/users/{id}/membership",
        "/v1/admin/users/{id}/suspend",
        "/v1/admin/users/{id}/reinstate",
        "/v1/admin/stats",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(path), "openapi misses {path}");
    }
    assert!(paths["/v1/jobs"]["post"].is_object());
    assert!(paths["/v1/jobs"]["get"].is_object());
}

#[actix_web::test]
async fn unknown_routes_are_404_problems() {
    let app = spawn_app_without_workers().await;
    for path in ["/nope", "/v1/nope", "/v2/jobs", "/v1/jobs/x/y/z"] {
        app.get(path, None).await.expect_problem(404, "not-found");
    }
    app.call(Method::DELETE, "/v1/nothing", None, &[], Body::None)
        .await
        .expect_problem(404, "not-found");
}

#[actix_web::test]
async fn request_ids_are_echoed_or_generated() {
    let app = spawn_app_without_workers().await;
    let res = app
        .call(
            Method::GET,
            "/healthz",
            None,
            &[("X-Request-Id", "trace-abc-123")],
            Body::None,
        )
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("x-request-id").as_deref(), Some("trace-abc-123"));

    let a = app.get("/healthz", None).await.header("x-request-id");
    let b = app.get("/healthz", None).await.header("x-request-id");
    let (a, b) = (a.expect("generated id"), b.expect("generated id"));
    assert!(!a.is_empty());
    assert_ne!(a, b);

    // An id that is not sane is replaced.
    let res = app
        .call(
            Method::GET,
            "/healthz",
            None,
            &[("X-Request-Id", "has space")],
            Body::None,
        )
        .await;
    let generated = res.header("x-request-id").expect("generated id");
    assert_ne!(generated, "has space");
    assert!(!generated.is_empty());

    // On errors too.
    let res = app
        .call(
            Method::GET,
            "/v1/me",
            None,
            &[("X-Request-Id", "trace-err")],
            Body::None,
        )
        .await;
    res.expect_problem(401, "unauthorized");
    assert_eq!(res.header("x-request-id").as_deref(), Some("trace-err"));
}

async fn metrics_text(app: &TestApp) -> String {
    app.get("/metrics", None).await.text()
}

/// The value of one sample line of the exposition, e.g.
/// `admedia_credits_moved_total{movement="void"}`; labels in any order.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

#[actix_web::test]
async fn each_outcome_moves_exactly_its_counters() {
    // Every attempt fails for a system reason: three attempts, then a refund.
    let app = spawn_app_with(|s| {
        s.sim_failure_rate = 1.0;
        s.max_attempts = 3;
    })
    .await;
    let before = metrics_text(&app).await;
    let (_, key) = register(&app, "counted@example.com").await;
    let id = id_of(&submit_ok(&app, &key, &image_job()).await);
    wait_for_state(&app, &key, &id, "failed", WAIT).await;
    let after = metrics_text(&app).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    assert_eq!(
        delta(
            "admedia_attempts_total",
            &[("kind", "image"), ("outcome", "system_failure")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "admedia_attempts_total",
            &[("kind", "image"), ("outcome", "succeeded")]
        ),
        0.0
    );
    assert_eq!(
        delta("admedia_credits_moved_total", &[("movement", "void")]),
        1.0
    );
    assert_eq!(
        delta("admedia_credits_moved_total", &[("movement", "post")]),
        0.0
    );
    assert_eq!(
        delta("admedia_credits_moved_total", &[("movement", "hold")]),
        1.0
    );
    assert_eq!(
        delta(
            "admedia_jobs_finished_total",
            &[("kind", "image"), ("tier", "free"), ("outcome", "failed")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "admedia_jobs_finished_total",
            &[
                ("kind", "image"),
                ("tier", "free"),
                ("outcome", "succeeded")
            ]
        ),
        0.0
    );

    // A success moves the success counters only.
    let app = spawn_app().await;
    let before = metrics_text(&app).await;
    let (_, key) = register(&app, "counted.ok@example.com").await;
    let id = id_of(&submit_ok(&app, &key, &image_job()).await);
    wait_for_state(&app, &key, &id, "succeeded", WAIT).await;
    let after = metrics_text(&app).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    assert_eq!(
        delta(
            "admedia_attempts_total",
            &[("kind", "image"), ("outcome", "succeeded")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "admedia_attempts_total",
            &[("kind", "image"), ("outcome", "system_failure")]
        ),
        0.0
    );
    assert_eq!(
        delta("admedia_credits_moved_total", &[("movement", "post")]),
        1.0
    );
    assert_eq!(
        delta("admedia_credits_moved_total", &[("movement", "void")]),
        0.0
    );
    assert_eq!(
        delta(
            "admedia_jobs_finished_total",
            &[
                ("kind", "image"),
                ("tier", "free"),
                ("outcome", "succeeded")
            ]
        ),
        1.0
    );
}
