//! Materials and outputs over real HTTP on the local object directory:
//! uploads checked by content and quota, ownership, jobs that reference
//! materials, a worker's uploads through signed URLs, completions that do
//! not deliver (never charged), downloads with the licence, retention, and
//! the real worker agent running the example model program.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actix_web::http::Method;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::workers::{hello, Gpu};

/// A fresh object directory per app, removed with it.
struct Objects(tempfile::TempDir);

fn objects() -> Objects {
    Objects(tempfile::tempdir().expect("temp dir"))
}

impl Objects {
    fn url(&self) -> String {
        self.0.path().display().to_string()
    }

    /// Every file kept under the directory.
    fn files(&self) -> Vec<std::path::PathBuf> {
        fn walk(dir: &std::path::Path, into: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, into);
                } else {
                    into.push(path);
                }
            }
        }
        let mut found = Vec::new();
        walk(self.0.path(), &mut found);
        found
    }
}

async fn app_with_objects(
    dir: &Objects,
    tweak: impl FnOnce(&mut admedia::config::Settings),
) -> TestApp {
    let url = dir.url();
    spawn_app_with(move |s| {
        s.object_store = Some(url);
        tweak(s);
    })
    .await
}

async fn upload(app: &TestApp, key: &str, name: &str, bytes: &[u8]) -> Resp {
    let mut res = app
        .client
        .post(app.url(&format!("/v1/materials?name={name}")))
        .insert_header(("Authorization", format!("Bearer {key}")))
        .insert_header(("Content-Type", "application/octet-stream"))
        .send_body(bytes.to_vec())
        .await
        .expect("upload");
    let body = res.body().limit(1 << 20).await.expect("body");
    Resp {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: body.to_vec(),
    }
}

async fn delete(app: &TestApp, path: &str, key: &str) -> Resp {
    app.call(Method::DELETE, path, Some(key), &[], Body::None)
        .await
}

fn png_of(width: u32, height: u32) -> Vec<u8> {
    // IHDR says the size; the tests read it back from downloads.
    let mut png = TINY_PNG.to_vec();
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    png
}

#[actix_web::test]
async fn materials_are_uploaded_read_and_deleted_by_their_owner_only() {
    let dir = objects();
    let app = app_with_objects(&dir, |_| {}).await;
    let (_, alice) = register(&app, "alice@example.com").await;
    let (_, bob) = register(&app, "bob@example.com").await;

    let m = upload(&app, &alice, "cat.png", TINY_PNG).await.expect(201);
    assert_eq!(m["content_type"], "image/png");
    assert_eq!(m["size_bytes"], TINY_PNG.len());
    assert_eq!(m["name"], "cat.png");
    let id = m["id"].as_str().unwrap().to_owned();

    let listed = app.get("/v1/materials", Some(&alice)).await.expect(200);
    assert_eq!(listed["materials"].as_array().unwrap().len(), 1);
    let content = app
        .get(&format!("/v1/materials/{id}/content"), Some(&alice))
        .await;
    assert_eq!(content.status, 200);
    assert_eq!(content.header("content-type").as_deref(), Some("image/png"));
    assert_eq!(content.body, TINY_PNG);

    // Another user sees nothing of it.
    for path in [
        format!("/v1/materials/{id}"),
        format!("/v1/materials/{id}/content"),
    ] {
        app.get(&path, Some(&bob))
            .await
            .expect_problem(404, "not-found");
    }
    delete(&app, &format!("/v1/materials/{id}"), &bob)
        .await
        .expect_problem(404, "not-found");
    let bobs = app.get("/v1/materials", Some(&bob)).await.expect(200);
    assert!(bobs["materials"].as_array().unwrap().is_empty());
    app.get("/v1/materials/not-an-id", Some(&alice))
        .await
        .expect_problem(404, "not-found");

    let me = app.get("/v1/me", Some(&alice)).await.expect(200);
    assert_eq!(me["storage"]["used_bytes"], TINY_PNG.len());
    assert_eq!(me["storage"]["materials"], 1);
    assert_eq!(me["storage"]["retention_days"], 7);

    assert_eq!(
        delete(&app, &format!("/v1/materials/{id}"), &alice)
            .await
            .status,
        204
    );
    app.get(&format!("/v1/materials/{id}"), Some(&alice))
        .await
        .expect_problem(410, "gone");
    delete(&app, &format!("/v1/materials/{id}"), &alice)
        .await
        .expect_problem(410, "gone");
    let me = app.get("/v1/me", Some(&alice)).await.expect(200);
    assert_eq!(me["storage"]["used_bytes"], 0);
    assert!(
        dir.files().is_empty(),
        "deleted bytes remain: {:?}",
        dir.files()
    );
}

#[actix_web::test]
async fn uploads_are_checked_by_content_size_and_quota() {
    let dir = objects();
    let app = app_with_objects(&dir, |s| {
        s.storage_quotas = "free=200".parse().expect("quotas");
        s.max_material_size = admedia_actors::domain::material::ByteSize(150);
    })
    .await;
    let (_, key) = register(&app, "quota@example.com").await;

    // The name says PNG; the content is a GIF.
    upload(
        &app,
        &key,
        "fake.png",
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    )
    .await
    .expect_problem(415, "unsupported-media-type");
    upload(&app, &key, "empty.png", b"")
        .await
        .expect_problem(422, "invalid-params");
    let mut big = TINY_PNG.to_vec();
    big.resize(151, 0);
    upload(&app, &key, "big.png", &big)
        .await
        .expect_problem(413, "file-too-large");

    upload(&app, &key, "one.png", TINY_PNG).await.expect(201);
    upload(&app, &key, "two.png", TINY_PNG).await.expect(201);
    let p = upload(&app, &key, "three.png", TINY_PNG)
        .await
        .expect_problem(413, "storage-quota-exceeded");
    assert_eq!(p["quota_bytes"], 200);
    assert_eq!(p["used_bytes"], 2 * TINY_PNG.len());
    // Nothing of the refused uploads is kept.
    assert_eq!(dir.files().len(), 2, "{:?}", dir.files());
    let me = app.get("/v1/me", Some(&key)).await.expect(200);
    assert_eq!(me["storage"]["quota_bytes"], 200);
}

#[actix_web::test]
async fn jobs_may_reference_only_the_callers_stored_images() {
    let dir = objects();
    let app = app_with_objects(&dir, |s| s.sim_workers = Some(0)).await;
    let (_, alice) = register(&app, "refs@example.com").await;
    let (_, bob) = register(&app, "other@example.com").await;
    let mine = upload(&app, &alice, "a.png", TINY_PNG).await.expect(201);
    let theirs = upload(&app, &bob, "b.png", TINY_PNG).await.expect(201);
    let video = upload(
        &app,
        &alice,
        "v.mp4",
        b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2",
    )
    .await
    .expect(201);
    let job = |params: Value| json!({"kind": "image", "model": "sdxl", "prompt": "a cat", "params": params});

    for (params, why) in [
        (
            json!({"init_image": theirs["id"]}),
            "another user's material",
        ),
        (json!({"init_image": video["id"]}), "a video as init image"),
        (
            json!({"reference_images": [uuid::Uuid::now_v7()]}),
            "an unknown material",
        ),
        (
            json!({"reference_images": [mine["id"], mine["id"]]}),
            "a duplicate",
        ),
    ] {
        let p = submit(&app, &alice, &job(params), None)
            .await
            .expect_problem(422, "invalid-params");
        assert!(p["detail"].as_str().is_some(), "{why}: {p}");
    }
    submit(&app, &alice, &job(json!({"init_image": "nope"})), None)
        .await
        .expect_problem(400, "invalid-request");
    // Nothing was held for the refused submissions.
    assert_eq!(wallet_tuple(&app.wallet(&alice).await).1, 0);

    let accepted = submit_ok(
        &app,
        &alice,
        &job(json!({"init_image": mine["id"], "reference_images": [mine["id"]]})),
    )
    .await;
    assert_eq!(accepted["params"]["init_image"], mine["id"]);
}

async fn worker_app(dir: &Objects) -> TestApp {
    app_with_objects(dir, |s| {
        s.sim_workers = Some(0);
        s.max_attempts = 2;
        // One worker sends many refused completions on purpose; it is the
        // outputs under test here, not the worker's health.
        s.quarantine_after = 100;
    })
    .await
}

/// Runs every attempt of a job on `gpu` with `complete`, until it ends.
async fn each_attempt<F, Fut>(
    app: &TestApp,
    key: &str,
    job: &str,
    gpu: &mut Gpu,
    attempts: u32,
    mut complete: F,
) -> Value
where
    F: FnMut(Value) -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    for _ in 0..attempts {
        let a = gpu.assigned().await;
        assert_eq!(a["job_id"], job);
        gpu.accept(&a).await;
        let msg = complete(a).await;
        gpu.send(msg).await;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let j = app.job(key, job).await;
        if matches!(j["state"].as_str(), Some("succeeded" | "failed")) {
            return j;
        }
        assert!(Instant::now() < deadline, "job did not end: {j}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn a_completion_without_its_outputs_is_never_charged() {
    let dir = objects();
    let app = worker_app(&dir).await;
    let (_, key) = register(&app, "cheated@example.com").await;
    let mut gpu = Gpu::connect(&app, hello("gpu", 1)).await;
    let four =
        json!({"kind": "image", "model": "sdxl", "prompt": "four foxes", "params": {"count": 4}});

    // The reported defect: `complete` with zero outputs for count 4.
    let job = submit_ok(&app, &key, &four).await;
    let id = id_of(&job);
    let ended = each_attempt(&app, &key, &id, &mut gpu, 2, |a| async move {
        json!({"type": "complete", "job_id": a["job_id"], "lease": a["lease"], "outputs": []})
    })
    .await;
    assert_eq!(ended["state"], "failed", "{ended}");
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 0, 100));

    // Too few outputs: one uploaded and named of four.
    let id = id_of(&submit_ok(&app, &key, &four).await);
    let ended = each_attempt(&app, &key, &id, &mut gpu, 2, |a| async move {
        let mut outputs = upload_outputs(&a, TINY_PNG).await;
        outputs.truncate(1);
        json!({"type": "complete", "job_id": a["job_id"], "lease": a["lease"], "outputs": outputs})
    })
    .await;
    assert_eq!(ended["state"], "failed", "{ended}");

    // Four named, none uploaded; then four uploaded but empty; then not
    // images; then keys that are not this attempt's slots.
    let one = image_job();
    for (label, body) in [
        ("missing", None),
        ("empty", Some(&b""[..])),
        ("not an image", Some(&b"hello world, not a png"[..])),
    ] {
        let id = id_of(&submit_ok(&app, &key, &one).await);
        let ended = each_attempt(&app, &key, &id, &mut gpu, 2, |a| async move {
            let slots = a["outputs"].as_array().cloned().unwrap_or_default();
            if let Some(bytes) = body {
                for s in &slots {
                    put_signed(s["upload_url"].as_str().unwrap(), bytes).await;
                }
            }
            let outputs: Vec<Value> = slots
                .iter()
                .map(|s| json!({"url": s["key"], "content_type": "image/png"}))
                .collect();
            json!({"type": "complete", "job_id": a["job_id"], "lease": a["lease"], "outputs": outputs})
        })
        .await;
        assert_eq!(ended["state"], "failed", "{label}: {ended}");
    }
    let id = id_of(&submit_ok(&app, &key, &one).await);
    let ended = each_attempt(&app, &key, &id, &mut gpu, 2, |a| async move {
        upload_outputs(&a, TINY_PNG).await;
        json!({"type": "complete", "job_id": a["job_id"], "lease": a["lease"],
               "outputs": [{"url": "file:///tmp/out.png", "content_type": "image/png"}]})
    })
    .await;
    assert_eq!(ended["state"], "failed", "a foreign URL: {ended}");
    // Not one credit was taken for any of them.
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 0, 100));
}

#[actix_web::test]
async fn uploaded_outputs_are_downloaded_by_the_owner_with_their_licence() {
    let dir = objects();
    let app = worker_app(&dir).await;
    let (_, key) = register(&app, "owner@example.com").await;
    let (_, other) = register(&app, "stranger@example.com").await;
    let mut gpu = Gpu::connect(&app, hello("gpu", 1)).await;
    let material = upload(&app, &key, "init.png", TINY_PNG).await.expect(201);
    let job = submit_ok(
        &app,
        &key,
        &json!({"kind": "image", "model": "sdxl", "prompt": "two", "params": {"count": 2, "init_image": material["id"]}}),
    )
    .await;
    let id = id_of(&job);
    let a = gpu.assigned().await;
    // The input arrives as a signed URL that works over plain HTTP.
    let input = &a["inputs"][0];
    assert_eq!(input["role"], "init_image");
    assert_eq!(input["material_id"], material["id"]);
    let mut got = awc::Client::new()
        .get(input["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.body().await.unwrap().to_vec(), TINY_PNG);
    // A tampered or wrong-method signature is refused.
    let tampered = input["url"]
        .as_str()
        .unwrap()
        .replace("signature=", "signature=00");
    let status = awc::Client::new()
        .get(tampered)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 403);
    assert_eq!(
        put_signed(input["url"].as_str().unwrap(), TINY_PNG).await,
        403
    );

    gpu.accept(&a).await;
    let mut outputs = Vec::new();
    for (i, slot) in a["outputs"].as_array().unwrap().iter().enumerate() {
        let png = png_of(10 + i as u32, 20);
        assert_eq!(
            put_signed(slot["upload_url"].as_str().unwrap(), &png).await,
            200
        );
        outputs.push(json!({"url": slot["key"], "content_type": "image/png"}));
    }
    gpu.send(
        json!({"type": "complete", "job_id": a["job_id"], "lease": a["lease"], "outputs": outputs}),
    )
    .await;
    let done = wait_for_state(&app, &key, &id, "succeeded", WAIT).await;
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (98, 0, 98));
    let shown = done["result"]["outputs"].as_array().unwrap();
    assert_eq!(shown[1]["url"], format!("/v1/jobs/{id}/outputs/1"));

    let out = app
        .get(&format!("/v1/jobs/{id}/outputs/1"), Some(&key))
        .await;
    assert_eq!(out.status, 200);
    assert_eq!(out.header("content-type").as_deref(), Some("image/png"));
    assert_eq!(out.header("x-content-license").as_deref(), Some("personal"));
    assert_eq!(out.body, png_of(11, 20));
    app.get(&format!("/v1/jobs/{id}/outputs/1"), Some(&other))
        .await
        .expect_problem(404, "not-found");
    app.get(&format!("/v1/jobs/{id}/outputs/2"), Some(&key))
        .await
        .expect_problem(404, "not-found");
    delete(&app, &format!("/v1/jobs/{id}/outputs/0"), &other)
        .await
        .expect_problem(404, "not-found");

    // The console shows thumbnails of the outputs, and the user's storage.
    let cookie = console_session(&app).await;
    let page = console_get(&app, &format!("/console/jobs/{id}"), &cookie).await;
    assert_eq!(page.status, 200);
    assert!(
        page.text()
            .contains(&format!("src=\"/console/jobs/{id}/outputs/1\"")),
        "{}",
        page.text()
    );
    let thumb = console_get(&app, &format!("/console/jobs/{id}/outputs/1"), &cookie).await;
    assert_eq!(thumb.status, 200);
    assert_eq!(thumb.body, png_of(11, 20));
    let anonymous = console_get(&app, &format!("/console/jobs/{id}/outputs/1"), "").await;
    assert_ne!(anonymous.status, 200);
    let owner = app.get("/v1/me", Some(&key)).await.expect(200);
    let user_page = console_get(
        &app,
        &format!("/console/users/{}", owner["user"]["id"].as_str().unwrap()),
        &cookie,
    )
    .await;
    assert!(
        user_page.text().contains("Storage") && user_page.text().contains("init.png"),
        "{}",
        user_page.text()
    );

    // Deleted early by its owner: gone, and its bytes with it.
    let before = dir.files().len();
    assert_eq!(
        delete(&app, &format!("/v1/jobs/{id}/outputs/0"), &key)
            .await
            .status,
        204
    );
    app.get(&format!("/v1/jobs/{id}/outputs/0"), Some(&key))
        .await
        .expect_problem(410, "gone");
    assert_eq!(dir.files().len(), before - 1);
}

/// Every directory under the object directory, relative to it.
fn directories(dir: &Objects) -> Vec<String> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, into: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if let Ok(rel) = path.strip_prefix(root) {
                    into.push(rel.display().to_string());
                }
                walk(root, &path, into);
            }
        }
    }
    let mut found = Vec::new();
    walk(dir.0.path(), dir.0.path(), &mut found);
    found.sort();
    found
}

/// A job's outputs are files in their user's directory: a job makes no
/// directory of its own (each one an inode made and freed per job, the
/// larger part of a busy server's file system work). An attempt that an
/// earlier release assigned, with job and attempt directories in its
/// keys, is still accepted.
#[actix_web::test]
async fn outputs_are_files_in_their_users_directory() {
    let dir = objects();
    let app = worker_app(&dir).await;
    let (user, key) = register(&app, "flat@example.com").await;
    let user = id_of(&user);
    let mut gpu = Gpu::connect(&app, hello("gpu", 1)).await;
    let two = json!({"kind": "image", "model": "sdxl", "prompt": "two", "params": {"count": 2}});

    let id = id_of(&submit_ok(&app, &key, &two).await);
    let a = gpu.assigned().await;
    gpu.accept(&a).await;
    let outputs = upload_outputs(&a, TINY_PNG).await;
    for (i, o) in outputs.iter().enumerate() {
        assert_eq!(o["url"], format!("outputs/{user}/{id}.1.{i}"));
    }
    gpu.send(
        json!({"type": "complete", "job_id": a["job_id"], "lease": a["lease"], "outputs": outputs}),
    )
    .await;
    wait_for_state(&app, &key, &id, "succeeded", WAIT).await;
    assert_eq!(
        directories(&dir),
        ["outputs".to_owned(), format!("outputs/{user}")]
    );
    assert_eq!(dir.files().len(), 2);

    // Reported under the earlier layout, written where that layout put it.
    let id = id_of(&submit_ok(&app, &key, &two).await);
    let a = gpu.assigned().await;
    gpu.accept(&a).await;
    let earlier: Vec<Value> = (0..2)
        .map(|i| {
            let key = format!("outputs/{user}/{id}/1/{i}");
            let path = dir.0.path().join(&key);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, TINY_PNG).expect("write");
            json!({"url": key, "content_type": "image/png"})
        })
        .collect();
    gpu.send(
        json!({"type": "complete", "job_id": a["job_id"], "lease": a["lease"], "outputs": earlier}),
    )
    .await;
    wait_for_state(&app, &key, &id, "succeeded", WAIT).await;
    let out = app
        .get(&format!("/v1/jobs/{id}/outputs/1"), Some(&key))
        .await;
    assert_eq!(out.status, 200);
    assert_eq!(out.body, TINY_PNG);

    // Bad input: a key in neither layout, or another job's, is refused
    // and nothing is charged for it.
    let before = wallet_tuple(&app.wallet(&key).await);
    let id = id_of(&submit_ok(&app, &key, &two).await);
    let ended = each_attempt(&app, &key, &id, &mut gpu, 2, |a| {
        let user = user.clone();
        async move {
            let job = a["job_id"].as_str().unwrap_or("").to_owned();
            json!({"type": "complete", "job_id": a["job_id"], "lease": a["lease"], "outputs": [
                {"url": format!("outputs/{user}/{job}.1"), "content_type": "image/png"},
                {"url": format!("outputs/{user}/{job}/9/0"), "content_type": "image/png"}]})
        }
    })
    .await;
    assert_eq!(ended["state"], "failed", "{ended}");
    assert_eq!(wallet_tuple(&app.wallet(&key).await), before);
}

#[actix_web::test]
async fn retention_expiry_answers_gone_and_frees_the_space() {
    let dir = objects();
    let app = app_with_objects(&dir, |s| {
        s.retention = "free=1s".parse().expect("retention");
        s.object_sweep = Duration::from_millis(100);
    })
    .await;
    let (_, key) = register(&app, "brief@example.com").await;
    let m = upload(&app, &key, "a.png", TINY_PNG).await.expect(201);
    let id = m["id"].as_str().unwrap().to_owned();
    assert_eq!(dir.files().len(), 1);
    let deadline = Instant::now() + WAIT;
    while !dir.files().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the sweep never deleted the expired file"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    app.get(&format!("/v1/materials/{id}"), Some(&key))
        .await
        .expect_problem(410, "gone");
    app.get(&format!("/v1/materials/{id}/content"), Some(&key))
        .await
        .expect_problem(410, "gone");
    let me = app.get("/v1/me", Some(&key)).await.expect(200);
    assert_eq!(me["storage"]["used_bytes"], 0);
}

#[actix_web::test]
async fn closing_an_account_deletes_its_objects() {
    let dir = objects();
    let app = app_with_objects(&dir, |s| s.object_sweep = Duration::from_millis(100)).await;
    let (_, key) = register(&app, "leaving@example.com").await;
    upload(&app, &key, "a.png", TINY_PNG).await.expect(201);
    app.post_json("/v1/me/close", Some(&key), &json!({"confirm": true}))
        .await
        .expect(200);
    let deadline = Instant::now() + WAIT;
    while !dir.files().is_empty() {
        assert!(Instant::now() < deadline, "a closed account's file remains");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Python with Pillow: `ADMEDIA_TEST_PYTHON` (set by scripts/test.sh),
/// else `python3`. Without one the test fails under CI and is skipped on a
/// laptop.
fn python_with_pillow() -> Option<String> {
    let python = std::env::var("ADMEDIA_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import PIL"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    let why = format!("{python} cannot import PIL; run ./scripts/test.sh");
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("Pillow is required when CI=true: {why}");
    }
    eprintln!("skipping: {why}");
    None
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[actix_web::test]
async fn the_real_agent_runs_the_example_model_on_an_uploaded_image() {
    let Some(python) = python_with_pillow() else {
        return;
    };
    let dir = objects();
    let app = app_with_objects(&dir, |s| s.sim_workers = Some(0)).await;
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/model_server.py");
    let _agent = Agent(
        Command::new(crate::support::worker_bin())
            .args([
                "--server",
                &app.address.replacen("http", "ws", 1),
                "--token",
                WORKER_TOKEN,
                "--executor",
                "persistent",
                "--model-command",
                &format!("{python} {example}"),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start admedia-worker"),
    );
    let (_, key) = register(&app, "artist@example.com").await;
    let (_, other) = register(&app, "nosy@example.com").await;
    let material = upload(&app, &key, "photo.png", &png_of(1, 1))
        .await
        .expect(201);
    // Two jobs on the same model process: it stays loaded between them.
    let mut ids = Vec::new();
    for prompt in ["a watercolour fox", "the same fox at night"] {
        let job = submit_ok(
            &app,
            &key,
            &json!({"kind": "image", "model": "sdxl", "prompt": prompt,
                    "params": {"width": 96, "height": 64, "count": 2, "init_image": material["id"]}}),
        )
        .await;
        ids.push(id_of(&job));
    }
    for id in &ids {
        let done = wait_for_state(&app, &key, id, "succeeded", Duration::from_secs(60)).await;
        assert_eq!(
            done["result"]["outputs"].as_array().unwrap().len(),
            2,
            "{done}"
        );
        for n in 0..2 {
            let out = app
                .get(&format!("/v1/jobs/{id}/outputs/{n}"), Some(&key))
                .await;
            assert_eq!(out.status, 200, "{}", out.text());
            assert_eq!(out.header("content-type").as_deref(), Some("image/png"));
            assert!(out.body.starts_with(b"\x89PNG\r\n\x1a\n"));
            let width = u32::from_be_bytes(out.body[16..20].try_into().unwrap());
            let height = u32::from_be_bytes(out.body[20..24].try_into().unwrap());
            assert_eq!((width, height), (96, 64));
            app.get(&format!("/v1/jobs/{id}/outputs/{n}"), Some(&other))
                .await
                .expect_problem(404, "not-found");
        }
    }
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (96, 0, 96));
}

/// A GET that does not follow redirects: status and `Location`.
async fn get_unfollowed(app: &TestApp, path: &str, key: &str) -> (u16, Option<String>) {
    let res = awc::Client::builder()
        .disable_redirects()
        .finish()
        .get(app.url(path))
        .insert_header(("Authorization", format!("Bearer {key}")))
        .send()
        .await
        .expect("GET");
    let location = res
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (res.status().as_u16(), location)
}

#[actix_web::test]
async fn on_s3_signed_urls_carry_inputs_outputs_and_downloads() {
    let Some([endpoint, bucket, access, secret]) = crate::support::s3_settings() else {
        return;
    };
    let app = spawn_app_with(move |s| {
        s.sim_workers = Some(0);
        s.object_store = Some(format!("s3://{bucket}"));
        s.s3_endpoint = Some(endpoint);
        s.s3_access_key_id = Some(access);
        s.s3_secret_access_key = Some(secret);
    })
    .await;
    let (_, key) = register(&app, "s3@example.com").await;
    let (_, other) = register(&app, "s3-other@example.com").await;
    let m = upload(&app, &key, "init.png", &png_of(3, 4))
        .await
        .expect(201);
    let id = m["id"].as_str().unwrap().to_owned();
    // A material's bytes: a redirect to a short-lived URL on the store.
    let (status, location) =
        get_unfollowed(&app, &format!("/v1/materials/{id}/content"), &key).await;
    assert_eq!(status, 302);
    let location = location.unwrap();
    let mut got = awc::Client::new().get(&location).send().await.unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.body().await.unwrap().to_vec(), png_of(3, 4));
    upload(&app, &key, "fake.png", b"GIF89a....")
        .await
        .expect_problem(415, "unsupported-media-type");

    let mut gpu = Gpu::connect(&app, hello("gpu", 1)).await;
    let job = submit_ok(
        &app,
        &key,
        &json!({"kind": "image", "model": "sdxl", "prompt": "on s3", "params": {"init_image": id}}),
    )
    .await;
    let job_id = id_of(&job);
    let a = gpu.assigned().await;
    let input_url = a["inputs"][0]["url"].as_str().unwrap().to_owned();
    assert!(input_url.starts_with("http://127.0.0.1"), "{input_url}");
    let mut got = awc::Client::new().get(&input_url).send().await.unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.body().await.unwrap().to_vec(), png_of(3, 4));
    gpu.accept(&a).await;
    let outputs = upload_outputs(&a, &png_of(7, 8)).await;
    gpu.send(
        json!({"type": "complete", "job_id": a["job_id"], "lease": a["lease"], "outputs": outputs}),
    )
    .await;
    wait_for_state(&app, &key, &job_id, "succeeded", WAIT).await;
    let (status, location_out) =
        get_unfollowed(&app, &format!("/v1/jobs/{job_id}/outputs/0"), &key).await;
    assert_eq!(status, 302);
    // The licence header comes with the redirect (and the followed answer).
    let out = app
        .get(&format!("/v1/jobs/{job_id}/outputs/0"), Some(&key))
        .await;
    assert_eq!(out.body, png_of(7, 8));
    let mut got = awc::Client::new()
        .get(location_out.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.body().await.unwrap().to_vec(), png_of(7, 8));
    app.get(&format!("/v1/jobs/{job_id}/outputs/0"), Some(&other))
        .await
        .expect_problem(404, "not-found");
    // Deleted: gone from the API and from the bucket.
    assert_eq!(
        delete(&app, &format!("/v1/materials/{id}"), &key)
            .await
            .status,
        204
    );
    let status = awc::Client::new()
        .get(&location)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 404);
}

/// Signs in to the console with the admin token; returns the cookie.
async fn console_session(app: &TestApp) -> String {
    let res = awc::Client::builder()
        .disable_redirects()
        .finish()
        .post(app.url("/console/login"))
        .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
        .send_body(format!("token={}", app.admin_token))
        .await
        .expect("console login");
    assert_eq!(res.status().as_u16(), 303);
    let cookie = res
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie");
    cookie.split(';').next().unwrap_or_default().to_owned()
}

async fn console_get(app: &TestApp, path: &str, cookie: &str) -> Resp {
    let mut res = awc::Client::builder()
        .disable_redirects()
        .finish()
        .get(app.url(path))
        .insert_header(("Cookie", cookie))
        .send()
        .await
        .expect("console page");
    let body = res.body().limit(1 << 22).await.expect("body");
    Resp {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: body.to_vec(),
    }
}
