//! Content moderation end to end: the reported prompts, confident-only
//! suspension with its evidence and an audited reinstatement, outputs
//! withheld by a worker's safety labels, and a moderation provider over
//! HTTP switched on by configuration (a small test server plays it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use admedia::metrics::Metrics;
use admedia::moderation::{ProviderConfig, ProviderPolicy};
use admedia::startup::Application;
use admedia_actors::domain::content::{ContentPolicy, RulesPolicy, Verdict};
use admedia_actors::domain::tier::Tier;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::workers::{hello, Gpu};

const WAIT: Duration = Duration::from_secs(10);

fn job(prompt: &str) -> Value {
    json!({"kind": "image", "model": "sdxl", "prompt": prompt})
}

async fn moderation_of(app: &TestApp, user: &str) -> Value {
    app.get(
        &format!("/v1/admin/users/{user}/moderation"),
        Some(&app.admin_token),
    )
    .await
    .expect(200)
}

#[actix_web::test]
async fn the_reported_prompts_behave_and_harmless_ones_do_not_count() {
    let app = spawn_app_without_workers().await;
    let (user, key) = register(&app, "reported@example.com").await;
    let p = submit(
        &app,
        &key,
        &job("a sexual photo, in a bedroom with soft light and flowers, of a young child"),
        None,
    )
    .await
    .expect_problem(422, "content-rejected");
    assert_eq!(p["category"], "sexual-minors");
    for fine in [
        "Caravaggio, The Beheading of Saint John",
        "car bomb disposal robot",
    ] {
        submit(&app, &key, &job(fine), None).await.expect(202);
    }
    let m = moderation_of(&app, &id_of(&user)).await;
    let refusals = m["refusals"].as_array().expect("refusals");
    assert_eq!(
        refusals.len(),
        1,
        "only the refused prompt is recorded: {m}"
    );
    assert_eq!(refusals[0]["category"], "sexual-minors");
    assert_eq!(refusals[0]["source"], "rules");
    assert_eq!(refusals[0]["counted"], true);
    assert!(refusals[0]["matched"]
        .as_array()
        .expect("matched")
        .contains(&json!("child")));
}

#[actix_web::test]
async fn only_confident_refusals_suspend_and_the_suspension_shows_its_evidence() {
    let app = spawn_app_with(|s| {
        s.sim_workers = Some(0);
        s.violations_before_suspend = 2;
        // Combinations of concepts (0.95 and below) are refused but do not
        // count; single terms (1.0) do.
        s.suspend_min_confidence = "0.99".parse().expect("score");
    })
    .await;
    let (user, key) = register(&app, "unsure@example.com").await;
    let uid = id_of(&user);
    for _ in 0..3 {
        submit(&app, &key, &job("a nude child"), None)
            .await
            .expect_problem(422, "content-rejected");
    }
    app.get("/v1/me", Some(&key)).await.expect(200);
    let m = moderation_of(&app, &uid).await;
    assert_eq!(m["refusals"].as_array().map(Vec::len), Some(3));
    assert!(m["refusals"]
        .as_array()
        .expect("refusals")
        .iter()
        .all(|r| r["counted"] == false && r["confidence"] == 0.95));
    for prompt in ["child pornography", "join isis today"] {
        submit(&app, &key, &job(prompt), None)
            .await
            .expect_problem(422, "content-rejected");
    }
    app.get("/v1/me", Some(&key))
        .await
        .expect_problem(403, "account-suspended");
    let all = app
        .get("/v1/admin/suspensions", Some(&app.admin_token))
        .await
        .expect(200);
    let s = &all["suspensions"][0];
    assert_eq!(s["user_id"], uid.as_str());
    assert_eq!(s["by"], "automatic");
    let evidence = s["evidence"].as_array().expect("evidence");
    assert_eq!(evidence.len(), 2, "the counted refusals only: {s}");
    assert_eq!(evidence[0]["prompt"], "join isis today");
    assert_eq!(evidence[0]["category"], "terrorism");
    assert_eq!(evidence[1]["prompt"], "child pornography");

    // A malformed body is refused and changes nothing.
    app.post_json(
        &format!("/v1/admin/users/{uid}/reinstate"),
        Some(&app.admin_token),
        &json!({"nope": 1}),
    )
    .await
    .expect_problem(422, "invalid-params");
    app.get("/v1/me", Some(&key))
        .await
        .expect_problem(403, "account-suspended");
    let user = app
        .post_json(
            &format!("/v1/admin/users/{uid}/reinstate"),
            Some(&app.admin_token),
            &json!({"note": "checked: a test account"}),
        )
        .await
        .expect(200);
    assert_eq!(user["status"], "active");
    app.get("/v1/me", Some(&key)).await.expect(200);
    let m = moderation_of(&app, &uid).await;
    assert_eq!(m["actions"][0]["action"], "reinstated");
    assert_eq!(m["actions"][0]["by"], "operator");
    assert_eq!(m["actions"][0]["note"], "checked: a test account");
    assert_eq!(m["actions"][1]["action"], "suspended");
    // The bare endpoint still works without a body.
    app.suspend(&uid).await.expect(200);
    let m = moderation_of(&app, &uid).await;
    assert_eq!(m["actions"][0]["action"], "suspended");
    assert_eq!(m["actions"][0]["by"], "operator");
    app.get(
        "/v1/admin/users/not-a-user/moderation",
        Some(&app.admin_token),
    )
    .await
    .expect_problem(404, "not-found");
}

fn labelled(url: &Value, labels: Value) -> Value {
    json!({"url": url, "content_type": "image/png", "safety": labels})
}

#[actix_web::test]
async fn flagged_outputs_are_withheld_from_the_user_and_kept_for_operators() {
    let app = spawn_app_with(|s| {
        s.sim_workers = Some(0);
        s.output_thresholds = "sexual-minors=0.1".parse().expect("thresholds");
    })
    .await;
    let (_, key) = register(&app, "outputs@example.com").await;
    let mut gpu = Gpu::connect(&app, hello("labeller", 1)).await;

    // One of two outputs is flagged: the job succeeds and is charged, the
    // user sees only the clean one.
    let body =
        json!({"kind": "image", "model": "sdxl", "prompt": "two foxes", "params": {"count": 2}});
    let id = id_of(&submit_ok(&app, &key, &body).await);
    let a = gpu.assigned().await;
    gpu.accept(&a).await;
    let uploaded = upload_outputs(&a, TINY_PNG).await;
    gpu.send(
        json!({"type": "complete", "job_id": a["job_id"], "lease": a["lease"], "outputs": [
            labelled(&uploaded[0]["url"], json!([{"category": "violence", "score": 0.1}])),
            labelled(&uploaded[1]["url"], json!([{"category": "sexual-minors", "score": 0.2}])),
        ]}),
    )
    .await;
    let done = wait_for_state(&app, &key, &id, "succeeded", WAIT).await;
    assert_eq!(done["charge"], "posted");
    assert_eq!(done["withheld_outputs"], 1);
    let outputs = done["result"]["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), 1);
    let clean = format!("/v1/jobs/{id}/outputs/0");
    let flagged = format!("/v1/jobs/{id}/outputs/1");
    assert_eq!(outputs[0]["url"], clean.as_str());
    assert!(!done.to_string().contains(&flagged), "{done}");
    let listed = app.get("/v1/jobs", Some(&key)).await.expect(200);
    assert!(!listed.to_string().contains(&flagged), "{listed}");
    // The clean output downloads; the withheld one does not exist for its
    // owner.
    let download = app.get(&clean, Some(&key)).await;
    assert_eq!(download.status, 200, "{}", download.text());
    assert!(download.body.starts_with(b"\x89PNG"));
    app.get(&flagged, Some(&key))
        .await
        .expect_problem(404, "not-found");
    let admin = app
        .get(&format!("/v1/admin/jobs/{id}"), Some(&app.admin_token))
        .await
        .expect(200);
    let all = admin["job"]["result"]["outputs"]
        .as_array()
        .expect("outputs");
    assert_eq!(all.len(), 2);
    assert_eq!(all[1]["withheld"]["category"], "sexual-minors");
    assert_eq!(all[1]["withheld"]["score"], 0.2);

    // Every output flagged: nothing delivered, refunded, not retried. A
    // worker cannot mark its own output clean.
    let id = id_of(&submit_ok(&app, &key, &image_job()).await);
    let a = gpu.assigned().await;
    gpu.accept(&a).await;
    let uploaded = upload_outputs(&a, TINY_PNG).await;
    gpu.send(
        json!({"type": "complete", "job_id": a["job_id"], "lease": a["lease"], "outputs": [
            {"url": uploaded[0]["url"], "content_type": "image/png", "withheld": null,
             "safety": [{"category": "violence", "score": 0.7}]},
        ]}),
    )
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    let failed = loop {
        let j = app.job(&key, &id).await;
        if j["state"] == "failed" {
            break j;
        }
        assert!(std::time::Instant::now() < deadline, "not failed: {j}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(failed["charge"], "voided");
    assert_eq!(failed["attempts"], 1);
    assert_eq!(failed["result"]["outputs"], json!([]));
    assert_eq!(failed["withheld_outputs"], 1);
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (98, 0, 98));

    // A label with a score outside 0..=1 is a malformed message: refused
    // with an error frame, the attempt untouched.
    let id = id_of(&submit_ok(&app, &key, &image_job()).await);
    let a = gpu.assigned().await;
    gpu.accept(&a).await;
    wait_for_state(&app, &key, &id, "running", WAIT).await;
    gpu.send(
        json!({"type": "complete", "job_id": a["job_id"], "lease": a["lease"], "outputs": [
            labelled(&json!("s3://out/x.png"), json!([{"category": "violence", "score": 7}])),
        ]}),
    )
    .await;
    let err = gpu.recv().await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(app.job(&key, &id).await["state"], "running");
    gpu.complete(&a).await;
    wait_for_state(&app, &key, &id, "succeeded", WAIT).await;
}

/// A moderation provider for tests: flags `violence` for prompts with
/// "forbidden" (0.9) or "borderline" (0.4), sleeps on "slow", answers 500
/// on "broken", and counts its calls.
struct FakeProvider {
    base: String,
    calls: Arc<AtomicUsize>,
    server: actix_web::dev::ServerHandle,
}

async fn moderations(calls: web::Data<AtomicUsize>, body: web::Json<Value>) -> HttpResponse {
    calls.fetch_add(1, Ordering::SeqCst);
    let input = body["input"].as_str().unwrap_or_default().to_owned();
    if input.contains("slow") {
        actix_rt::time::sleep(Duration::from_secs(3)).await;
    }
    if input.contains("broken") {
        return HttpResponse::InternalServerError().finish();
    }
    let score = if input.contains("forbidden") {
        0.9
    } else if input.contains("borderline") {
        0.4
    } else {
        0.01
    };
    HttpResponse::Ok().json(json!({"id": "modr-1", "model": "test", "results": [{
        "flagged": score > 0.3,
        "categories": {"violence": score > 0.3, "sexual/minors": false},
        "category_scores": {"violence": score, "sexual/minors": 0.001},
    }]}))
}

async fn fake_provider() -> FakeProvider {
    let calls = Arc::new(AtomicUsize::new(0));
    let data = web::Data::from(calls.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/v1/moderations", web::post().to(moderations))
    })
    .workers(1)
    // A connection per call: a kept-alive one could still be answered
    // for a moment after the test stops the provider to take it down.
    .keep_alive(actix_web::http::KeepAlive::Disabled)
    .bind(("127.0.0.1", 0))
    .expect("bind the fake provider");
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    FakeProvider {
        base: format!("http://127.0.0.1:{port}"),
        calls,
        server: handle,
    }
}

fn provider(base: &str, thresholds: &str, when_down: &str, cache: usize) -> ProviderPolicy {
    let config = ProviderConfig::parse(
        base,
        Some("test-key".into()),
        Some("guard-1".into()),
        Duration::from_millis(500),
        thresholds.parse().expect("thresholds"),
        None,
        cache,
        when_down.parse().expect("when down"),
    )
    .expect("provider settings");
    ProviderPolicy::new(
        config,
        Arc::new(RulesPolicy::builtin().expect("rules")),
        Arc::new(Metrics::new()),
    )
}

fn category(v: &Verdict) -> Option<(String, f64)> {
    match v {
        Verdict::Rejected(r) => Some((r.category.clone(), r.confidence.get())),
        _ => None,
    }
}

#[actix_web::test]
async fn provider_thresholds_decide_per_category() {
    let fake = fake_provider().await;
    let flags = provider(&fake.base, "", "refuse", 0);
    assert_eq!(
        category(&flags.check("a borderline scene", Tier::Free).await),
        Some(("violence".into(), 0.4)),
        "no threshold: the provider's flag decides"
    );
    let strict = provider(&fake.base, "violence=0.3", "refuse", 0);
    assert!(category(&strict.check("a borderline scene", Tier::Free).await).is_some());
    let lenient = provider(&fake.base, "violence=0.5", "refuse", 0);
    assert_eq!(
        lenient.check("a borderline scene", Tier::Free).await,
        Verdict::Allowed
    );
    assert_eq!(
        category(&lenient.check("a forbidden scene", Tier::Free).await),
        Some(("violence".into(), 0.9))
    );
    assert_eq!(
        lenient.check("a red fox", Tier::Free).await,
        Verdict::Allowed
    );
    fake.server.stop(false).await;
}

#[actix_web::test]
async fn provider_answers_are_cached_by_prompt() {
    let fake = fake_provider().await;
    let p = provider(&fake.base, "", "refuse", 100);
    for _ in 0..3 {
        assert_eq!(p.check("a red fox", Tier::Free).await, Verdict::Allowed);
        assert!(category(&p.check("a forbidden scene", Tier::Free).await).is_some());
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2, "one call per prompt");
    // The rules go first: a prompt they refuse never reaches the provider.
    assert_eq!(
        category(&p.check("how to build a pipe bomb", Tier::Free).await).map(|c| c.0),
        Some("terrorism".into())
    );
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
    let uncached = provider(&fake.base, "", "refuse", 0);
    uncached.check("a red fox", Tier::Free).await;
    uncached.check("a red fox", Tier::Free).await;
    assert_eq!(fake.calls.load(Ordering::SeqCst), 4);
    fake.server.stop(false).await;
}

#[actix_web::test]
async fn a_provider_that_is_slow_broken_or_gone_follows_each_tiers_policy() {
    let fake = fake_provider().await;
    let p = provider(
        &fake.base,
        "",
        "free=refuse,basic=refuse,professional=rules,enterprise=rules",
        100,
    );
    for prompt in ["a slow red fox", "a broken red fox"] {
        assert!(
            matches!(p.check(prompt, Tier::Free).await, Verdict::Unavailable(_)),
            "{prompt}"
        );
        assert_eq!(
            p.check(prompt, Tier::Enterprise).await,
            Verdict::Allowed,
            "{prompt}"
        );
        // Falling back to the rules still refuses what they refuse.
        assert!(category(
            &p.check(&format!("{prompt}, child porn"), Tier::Enterprise)
                .await
        )
        .is_some());
    }
    assert!(p.depends_on_tier());
    // A failed call is not cached: the provider is asked again.
    let before = fake.calls.load(Ordering::SeqCst);
    p.check("a broken red fox", Tier::Free).await;
    assert_eq!(fake.calls.load(Ordering::SeqCst), before + 1);
    fake.server.stop(false).await;
    let gone = provider(&fake.base, "", "refuse", 100);
    assert!(matches!(
        gone.check("a red fox", Tier::Free).await,
        Verdict::Unavailable(_)
    ));
    assert!(!gone.depends_on_tier());
    let fallback = provider(&fake.base, "", "rules", 100);
    assert_eq!(
        fallback.check("a red fox", Tier::Free).await,
        Verdict::Allowed
    );
}

#[actix_web::test]
async fn a_provider_is_switched_on_by_configuration_alone() {
    let fake = fake_provider().await;
    let base = fake.base.clone();
    let app = spawn_app_with(move |s| {
        s.sim_workers = Some(0);
        s.moderation_url = Some(base);
        s.moderation_timeout = Duration::from_millis(500);
    })
    .await;
    let (user, key) = register(&app, "provider@example.com").await;
    let p = submit(&app, &key, &job("a forbidden scene"), None)
        .await
        .expect_problem(422, "content-rejected");
    assert_eq!(p["category"], "violence");
    submit(&app, &key, &job("a red fox"), None)
        .await
        .expect(202);
    submit(&app, &key, &job("a red fox"), None)
        .await
        .expect(202);
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        2,
        "the second fox was cached"
    );
    let m = moderation_of(&app, &id_of(&user)).await;
    assert_eq!(m["refusals"][0]["source"], "provider");
    assert_eq!(m["refusals"][0]["scores"]["violence"], 0.9);
    let metrics = app.get("/metrics", None).await.text();
    assert!(
        metrics
            .contains(r#"admedia_moderation_decisions_total{decision="allowed",source="cache"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("admedia_moderation_provider_seconds_count{outcome=\"ok\"} 2"));

    // Down, with the default policy (refuse): 503, nothing charged or
    // recorded.
    fake.server.stop(false).await;
    let before = app.wallet(&key).await;
    submit(&app, &key, &job("a blue heron"), None)
        .await
        .expect_problem(503, "moderation-unavailable");
    assert_eq!(app.wallet(&key).await, before);
    let m = moderation_of(&app, &id_of(&user)).await;
    assert_eq!(m["refusals"].as_array().map(Vec::len), Some(1));
}

#[actix_web::test]
async fn bad_provider_settings_stop_start_up() {
    let mut settings = test_settings();
    settings.moderation_url = Some("https://moderation.example.com".into());
    let err = Application::build(settings)
        .await
        .err()
        .expect("start-up must fail");
    assert!(err.to_string().contains("ADMEDIA_MODERATION_URL"), "{err}");
    // A bad policy or threshold is refused as it is read, before start-up
    // (tests/configuration.rs); what only holds with a provider, here.
    let mut settings = test_settings();
    settings.moderation_url = Some("http://127.0.0.1:9".into());
    settings.moderation_timeout = Duration::ZERO;
    let err = Application::build(settings)
        .await
        .err()
        .expect("start-up must fail");
    assert!(
        err.to_string().contains("ADMEDIA_MODERATION_TIMEOUT"),
        "{err}"
    );
}
