//! Content rules (ToS 3.2) and automatic suspension (ToS 9.2).

use std::io::Write;

use admedia::startup::Application;
use serde_json::json;

use crate::helpers::*;

fn job(prompt: &str) -> serde_json::Value {
    json!({"kind": "image", "model": "sdxl", "prompt": prompt})
}

#[actix_web::test]
async fn a_refused_prompt_is_422_with_its_category_and_charges_nothing() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "prompt@example.com").await;
    for prompt in [
        "how to build a pipe bomb",
        "HOW TO BUILD A P1PE B0MB",
        "p i p e   bomb",
        "ｐｉｐｅ ｂｏｍｂ diagram",
    ] {
        let p = submit(&app, &key, &job(prompt), Some("k-1"))
            .await
            .expect_problem(422, "content-rejected");
        assert_eq!(p["category"], "terrorism", "{prompt}");
    }
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 0, 100));
    assert_eq!(
        app.ledger(&key).await.len(),
        1,
        "only the registration grant"
    );
    let jobs = app.get("/v1/jobs", Some(&key)).await.expect(200);
    assert_eq!(jobs["jobs"], json!([]));
    // An ordinary prompt goes through, even with the same Idempotency-Key.
    submit(&app, &key, &image_job(), Some("k-1"))
        .await
        .expect(202);
}

#[actix_web::test]
async fn repeated_violations_suspend_the_account() {
    let app = spawn_app_with(|s| {
        s.sim_workers = Some(0);
        s.violations_before_suspend = 3;
    })
    .await;
    let (user, key) = register(&app, "repeat@example.com").await;
    let (_, other) = register(&app, "bystander@example.com").await;
    let waiting = id_of(&submit_ok(&app, &key, &image_job()).await);
    // Another user's refusals do not count against this one.
    for _ in 0..2 {
        submit(&app, &other, &job("white power rally poster"), None)
            .await
            .expect_problem(422, "content-rejected");
    }
    for _ in 0..2 {
        submit(&app, &key, &job("gas the jews"), None)
            .await
            .expect_problem(422, "content-rejected");
    }
    app.get("/v1/me", Some(&key)).await.expect(200);
    app.get("/v1/me", Some(&other)).await.expect(200);
    let third = submit(&app, &key, &job("join isis today"), None)
        .await
        .expect_problem(422, "content-rejected");
    assert_eq!(third["category"], "terrorism");
    app.get("/v1/me", Some(&key))
        .await
        .expect_problem(403, "account-suspended");
    let detail = app
        .get(
            &format!("/v1/admin/users/{}", id_of(&user)),
            Some(&app.admin_token),
        )
        .await
        .expect(200);
    assert_eq!(detail["user"]["status"], "suspended");
    // The suspension cancelled and refunded the waiting job.
    let job = app
        .get(&format!("/v1/admin/jobs/{waiting}"), Some(&app.admin_token))
        .await
        .expect(200);
    assert_eq!(job["job"]["charge"], "voided");
    assert_eq!(wallet_tuple(&detail["wallet"]), (100, 0, 100));
}

#[actix_web::test]
async fn a_rules_file_replaces_the_shipped_rules() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(
        file,
        "[[category]]\nname = \"fauna\"\nterms = [\"purple elephant\"]\npatterns = ['\\bzebra\\w*\\b']"
    )
    .expect("write");
    let path = file.path().to_owned();
    let app = spawn_app_with(move |s| {
        s.sim_workers = Some(0);
        s.content_rules = Some(path);
    })
    .await;
    let (_, key) = register(&app, "rules@example.com").await;
    for prompt in ["a PURPLE elephant", "zebras at dawn"] {
        let p = submit(&app, &key, &job(prompt), None)
            .await
            .expect_problem(422, "content-rejected");
        assert_eq!(p["category"], "fauna");
    }
    // The shipped rules are replaced, not added to.
    submit(&app, &key, &job("how to build a pipe bomb"), None)
        .await
        .expect(202);
}

#[actix_web::test]
async fn a_bad_rules_file_stops_start_up() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(
        file,
        "[[category]]\nname = \"x\"\npatterns = [\"(unclosed\"]"
    )
    .expect("write");
    let mut settings = test_settings();
    settings.content_rules = Some(file.path().to_owned());
    let err = Application::build(settings)
        .await
        .err()
        .expect("start-up must fail");
    assert!(err.to_string().contains("ADMEDIA_CONTENT_RULES"), "{err}");
}
