//! Scheduling with a mixed fleet of real WebSocket workers: jobs nobody can
//! run never block the others, broken workers are quarantined, unknown
//! models are refused, and jobs that wait too long are refunded.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;
use crate::workers::Gpu;

fn video_job() -> Value {
    json!({"kind": "video", "model": "v1", "prompt": "waves", "params": {"duration_s": 2}})
}

fn image_only(name: &str, slots: u32) -> Value {
    json!({"type": "hello", "name": name, "slots": slots, "vram_mb": 24000, "kinds": ["image"]})
}

async fn fail_system(gpu: &mut Gpu, a: &Value) {
    gpu.send(
        json!({"type": "fail", "job_id": a["job_id"], "lease": a["lease"],
        "class": "system", "message": "the program does not exist"}),
    )
    .await;
}

async fn worker_named(app: &TestApp, name: &str) -> Value {
    let list = app
        .get("/v1/admin/workers", Some(ADMIN_TOKEN))
        .await
        .expect(200);
    list["workers"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no worker {name} in {list}"))
}

async fn metric(app: &TestApp, line_start: &str) -> Option<f64> {
    let text = app.get("/metrics", None).await.text();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// As reported: one image-only worker with two idle slots; a user submits
/// a video job, then three image jobs. The images run; the video waits
/// without holding them up; cancelling it changes nothing for them; a video
/// worker joining takes it.
#[actix_web::test]
async fn a_job_no_worker_can_run_does_not_block_the_jobs_behind_it() {
    let app = spawn_app_with(|s| s.sim_workers = Some(0)).await;
    let (user, key) = register(&app, "hol@example.com").await;
    app.set_membership(&id_of(&user), "basic", json!(null))
        .await
        .expect(200);
    let mut images = Gpu::connect(&app, image_only("image-only", 2)).await;
    let video = id_of(&submit_ok(&app, &key, &video_job()).await);
    let mut jobs = Vec::new();
    for _ in 0..3 {
        jobs.push(id_of(&submit_ok(&app, &key, &image_job()).await));
    }
    // Basic runs two at once: both slots fill with images at once.
    let a = images.assigned().await;
    let b = images.assigned().await;
    let mut got = vec![a["job_id"].clone(), b["job_id"].clone()];
    got.sort_by_key(|v| v.to_string());
    let mut want = vec![json!(jobs[0]), json!(jobs[1])];
    want.sort_by_key(|v| v.to_string());
    assert_eq!(got, want, "the first two images go, in order");
    assert_eq!(app.job(&key, &video).await["state"], "queued");

    // Ending one image frees a slot and a running turn: the third goes.
    images.accept(&a).await;
    images.complete(&a).await;
    let c = images.assigned().await;
    assert_eq!(c["job_id"], jobs[2].as_str());

    // A video worker joining dispatches the waiting video at once.
    let mut videos = Gpu::connect(
        &app,
        json!({"type": "hello", "name": "video", "slots": 1, "vram_mb": 48000, "kinds": ["video"]}),
    )
    .await;
    images.accept(&b).await;
    images.complete(&b).await;
    let v = videos.assigned().await;
    assert_eq!(v["job_id"], video.as_str());
}

/// As reported: the blocking job is cancelled beside idle slots, and
/// nothing else happens afterwards; the job behind it must not stay queued.
#[actix_web::test]
async fn cancelling_the_blocking_job_leaves_nothing_queued_beside_idle_slots() {
    let app = spawn_app_with(|s| s.sim_workers = Some(0)).await;
    let (user, key) = register(&app, "cancel-dispatch@example.com").await;
    app.set_membership(&id_of(&user), "basic", json!(null))
        .await
        .expect(200);
    let mut images = Gpu::connect(&app, image_only("image-only", 2)).await;
    let video = id_of(&submit_ok(&app, &key, &video_job()).await);
    let image = id_of(&submit_ok(&app, &key, &image_job()).await);
    app.post(&format!("/v1/jobs/{video}/cancel"), Some(&key))
        .await
        .expect(200);
    let a = images.assigned().await;
    assert_eq!(a["job_id"], image.as_str());
    assert_eq!(app.job(&key, &video).await["state"], "cancelled");
    assert_eq!(app.job(&key, &image).await["state"], "assigned");
}

/// As reported: a worker whose program is missing fails everything. A
/// retry goes to another worker; after three system failures in a row the
/// broken one is quarantined (listed so, counted in the metrics) and gets
/// nothing until an operator lifts it.
#[actix_web::test]
async fn a_broken_worker_is_quarantined_and_retries_go_elsewhere() {
    let app = spawn_app_with(|s| {
        s.sim_workers = Some(0);
        s.max_attempts = 5;
        s.quarantine_base = Duration::from_secs(600);
        // Retries wait long enough for the next failure report to arrive
        // first: a retry prefers another worker, but takes the one it
        // failed on when nothing else is free.
        s.retry_base = Duration::from_millis(2_000);
        s.retry_max = Duration::from_millis(4_000);
    })
    .await;
    let (user, key) = register(&app, "broken@example.com").await;
    app.set_membership(&id_of(&user), "enterprise", json!(null))
        .await
        .expect(200);
    let mut broken = Gpu::connect(&app, image_only("broken", 4)).await;
    let mut healthy = Gpu::connect(&app, image_only("healthy", 1)).await;

    // The roomier worker gets the first job and fails it; the retry avoids it.
    let first = id_of(&submit_ok(&app, &key, &image_job()).await);
    let a = broken.assigned().await;
    assert_eq!(a["job_id"], first.as_str());
    fail_system(&mut broken, &a).await;
    let retry = healthy.assigned().await;
    assert_eq!(
        retry["job_id"],
        first.as_str(),
        "the retry avoids the worker it failed on"
    );
    assert_eq!(retry["attempt"], 2);

    // Two more failures in a row: quarantined.
    let second = id_of(&submit_ok(&app, &key, &image_job()).await);
    let b = broken.assigned().await;
    assert_eq!(b["job_id"], second.as_str());
    let third = id_of(&submit_ok(&app, &key, &image_job()).await);
    let c = broken.assigned().await;
    assert_eq!(c["job_id"], third.as_str());
    fail_system(&mut broken, &b).await;
    fail_system(&mut broken, &c).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let w = worker_named(&app, "broken").await;
        if w["quarantined"] == true {
            break w;
        }
        assert!(Instant::now() < deadline, "never quarantined: {w}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(listed["consecutive_failures"], 3);
    assert!(listed["quarantine_left_ms"]
        .as_u64()
        .is_some_and(|ms| ms > 0));
    assert_eq!(worker_named(&app, "healthy").await["quarantined"], false);
    assert_eq!(
        metric(&app, "admedia_worker_quarantines_total").await,
        Some(1.0)
    );
    assert_eq!(metric(&app, "admedia_workers_quarantined").await, Some(1.0));

    // The retries wait for the healthy worker rather than burning attempts.
    broken.expect_no_assignment().await;
    healthy.accept(&retry).await;
    healthy.complete(&retry).await;
    let next = healthy.assigned().await;
    assert!(
        next["job_id"] == second.as_str() || next["job_id"] == third.as_str(),
        "{next}"
    );
    wait_for_state(&app, &key, &first, "succeeded", Duration::from_secs(10)).await;

    // An unknown worker id is refused; lifting the real one dispatches to it.
    app.post(
        "/v1/admin/workers/not-a-worker/lift-quarantine",
        Some(ADMIN_TOKEN),
    )
    .await
    .expect_problem(404, "not-found");
    app.post(
        &format!(
            "/v1/admin/workers/{}/lift-quarantine",
            listed["id"].as_str().unwrap_or("")
        ),
        Some(&key),
    )
    .await
    .expect_problem(401, "unauthorized");
    let resp = app
        .post(
            &format!(
                "/v1/admin/workers/{}/lift-quarantine",
                listed["id"].as_str().unwrap_or("")
            ),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(resp.status, 204, "{}", resp.text());
    let d = broken.assigned().await;
    assert!(
        d["job_id"] == second.as_str() || d["job_id"] == third.as_str(),
        "{d}"
    );
    let after = worker_named(&app, "broken").await;
    assert_eq!(after["quarantined"], false);
    assert_eq!(after["consecutive_failures"], 0);
}

/// A quarantine's cool-down ending dispatches by itself.
#[actix_web::test]
async fn the_end_of_a_quarantine_dispatches() {
    let app = spawn_app_with(|s| {
        s.sim_workers = Some(0);
        s.max_attempts = 5;
        s.quarantine_after = 1;
        s.quarantine_base = Duration::from_millis(300);
        // The only worker may be quarantined here.
        s.quarantine_max_percent = 100;
    })
    .await;
    let (_, key) = register(&app, "cooldown@example.com").await;
    let mut gpu = Gpu::connect(&app, image_only("flaky", 1)).await;
    let job = id_of(&submit_ok(&app, &key, &image_job()).await);
    let a = gpu.assigned().await;
    fail_system(&mut gpu, &a).await;
    // The only worker is quarantined; when the cool-down passes the retry
    // is assigned to it without any other event.
    let b = gpu.assigned().await;
    assert_eq!(b["job_id"], job.as_str());
    assert_eq!(b["attempt"], 2);
    gpu.accept(&b).await;
    gpu.complete(&b).await;
    wait_for_state(&app, &key, &job, "succeeded", Duration::from_secs(10)).await;
}

#[actix_web::test]
async fn an_unknown_model_is_refused_and_nothing_is_held() {
    let app = spawn_app_with(|s| s.sim_workers = Some(0)).await;
    let (_, key) = register(&app, "models@example.com").await;
    let before = app.wallet(&key).await;
    let problem = submit(
        &app,
        &key,
        &json!({"kind": "image", "model": "no-such-model", "prompt": "a cat"}),
        None,
    )
    .await
    .expect_problem(422, "unknown-model");
    assert!(problem["detail"]
        .as_str()
        .is_some_and(|d| d.contains("no-such-model")));
    // A known model of the other kind is a plain parameter error.
    submit(
        &app,
        &key,
        &json!({"kind": "video", "model": "sdxl", "prompt": "a cat", "params": {"duration_s": 2}}),
        None,
    )
    .await
    .expect_problem(422, "invalid-params");
    assert_eq!(wallet_tuple(&app.wallet(&key).await), wallet_tuple(&before));
    assert!(app.ledger(&key).await.iter().all(|e| e["kind"] != "hold"));

    let listed = |page: &Value, name: &str| {
        page["models"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["name"] == name).cloned())
            .unwrap_or_else(|| panic!("{name} not listed: {page}"))
    };
    let page = app.get("/v1/models", None).await.expect(200);
    assert_eq!(listed(&page, "sdxl")["kind"], "image");
    assert_eq!(listed(&page, "sdxl")["served"], false);
    let _gpu = Gpu::connect(
        &app,
        json!({"type": "hello", "name": "sdxl-box", "slots": 1, "vram_mb": 24000,
               "kinds": ["image"], "models": ["sdxl"]}),
    )
    .await;
    let page = app.get("/v1/models", None).await.expect(200);
    assert_eq!(listed(&page, "sdxl")["served"], true);
    assert_eq!(listed(&page, "v1")["served"], false);
    assert_eq!(listed(&page, "flux-dev")["served"], false);
}

/// A job nobody can run waits no longer than its tier allows: it fails as
/// `expired`, its hold voided, and the metrics show it.
#[actix_web::test]
async fn a_job_waiting_past_its_tier_limit_expires_and_is_refunded() {
    let app = spawn_app_with(|s| {
        s.sim_workers = Some(0);
        s.max_wait = "free=1s".parse().expect("waiting limits");
    })
    .await;
    let (_, key) = register(&app, "expire@example.com").await;
    let before = wallet_tuple(&app.wallet(&key).await);
    let job = id_of(&submit_ok(&app, &key, &video_job()).await);
    assert!(
        wallet_tuple(&app.wallet(&key).await).1 > 0,
        "held while waiting"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let ended = loop {
        let j = app.job(&key, &job).await;
        if j["state"] != "queued" {
            break j;
        }
        assert!(Instant::now() < deadline, "never expired: {j}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ended["state"], "failed", "{ended}");
    assert_eq!(ended["error"]["code"], "expired", "{ended}");
    assert_eq!(ended["error"]["class"], "system", "{ended}");
    assert_eq!(
        wallet_tuple(&app.wallet(&key).await),
        before,
        "refunded in full"
    );
    let ledger = app.ledger(&key).await;
    assert_eq!(
        ledger
            .iter()
            .filter(|e| e["job_id"] == job.as_str() && e["kind"] == "void")
            .count(),
        1
    );
    assert_eq!(
        metric(&app, "admedia_jobs_expired_total{tier=\"free\"}").await,
        Some(1.0)
    );
    // Cancelling an expired job is refused: it has ended.
    app.post(&format!("/v1/jobs/{job}/cancel"), Some(&key))
        .await
        .expect_problem(409, "job-finished");
}

/// Failures spread over the whole fleet (every worker fails, as with a bad
/// deploy of the model) never quarantine all of it: with the default 50%
/// one of two workers is quarantined, the other keeps taking work.
#[actix_web::test]
async fn quarantine_never_takes_more_than_its_share_of_the_fleet() {
    let app = spawn_app_with(|s| {
        s.sim_workers = Some(0);
        s.max_attempts = 10;
        s.quarantine_after = 1;
        s.quarantine_base = Duration::from_secs(600);
        s.retry_base = Duration::from_millis(10);
        s.retry_max = Duration::from_millis(20);
    })
    .await;
    let (_, key) = register(&app, "fleet-wide@example.com").await;
    let one = Gpu::connect(&app, image_only("one", 1)).await;
    let two = Gpu::connect(&app, image_only("two", 1)).await;
    let job = id_of(&submit_ok(&app, &key, &image_job()).await);
    let mut pair = [("one", one), ("two", two)];
    // The first attempt runs on either; it fails and that worker goes.
    let first = match pair[0].1.try_assigned(Duration::from_secs(2)).await {
        Some(a) => (0, a),
        None => (1, pair[1].1.assigned().await),
    };
    let (x, y) = (first.0, 1 - first.0);
    fail_system(&mut pair[x].1, &first.1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while worker_named(&app, pair[x].0).await["quarantined"] != true {
        assert!(Instant::now() < deadline, "{} never quarantined", pair[x].0);
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    // The other fails the retries too, and stays in service.
    for attempt in 2..=3 {
        let a = pair[y].1.assigned().await;
        assert_eq!(
            (a["job_id"].as_str(), a["attempt"].as_u64()),
            (Some(job.as_str()), Some(attempt))
        );
        fail_system(&mut pair[y].1, &a).await;
    }
    let a = pair[y].1.assigned().await;
    assert_eq!(a["attempt"], 4);
    let other = worker_named(&app, pair[y].0).await;
    assert_eq!(other["quarantined"], false, "{other}");
    assert!(other["consecutive_failures"].as_u64() >= Some(2), "{other}");
    assert_eq!(metric(&app, "admedia_workers_quarantined").await, Some(1.0));
    pair[y].1.accept(&a).await;
    pair[y].1.complete(&a).await;
    wait_for_state(&app, &key, &job, "succeeded", Duration::from_secs(10)).await;
}
