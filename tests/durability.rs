//! Durability on PostgreSQL: every acknowledged credit and job survives
//! SIGKILL, and a database outage is answered with 503s that leave nothing
//! half-done.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::{Api, ServerProcess, ADMIN_TOKEN};

fn job_body(i: usize) -> Value {
    json!({"kind": "image", "model": "sdxl", "prompt": format!("crash test {i}"), "params": {"count": 1 + i % 3}})
}

/// A webhook receiver that counts deliveries by `webhook-id`.
async fn counting_receiver() -> (String, Arc<Mutex<HashMap<String, usize>>>) {
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let state = seen.clone();
    let server = HttpServer::new(move || {
        let state = state.clone();
        App::new().default_service(web::to(move |req: HttpRequest| {
            let state = state.clone();
            async move {
                let id = req
                    .headers()
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                *state.lock().expect("lock").entry(id).or_default() += 1;
                HttpResponse::NoContent().finish()
            }
        }))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .expect("bind receiver");
    let port = server.addrs()[0].port();
    actix_rt::spawn(server.run());
    (format!("http://127.0.0.1:{port}/hooks"), seen)
}

/// The `webhook-id` of a job's event (Standard Webhooks: one id per event,
/// the same on every retry), as a receiver can recompute it.
fn webhook_id(job: &str, state: &str, attempt: u64) -> String {
    let digest = Sha256::digest(format!("{job}:{state}:{attempt}"));
    format!("msg_{}", &hex::encode(digest)[..32])
}

/// Submits job `i` for `key` until the server gives a definite answer; an
/// answer lost to the crash is retried with the same Idempotency-Key.
async fn submit_until_answered(api: &Api, key: &str, i: usize, webhook: &str) -> Option<String> {
    let idem = format!("crash-{i}");
    let (status, body) = api
        .call(
            "POST",
            "/v1/jobs",
            key,
            Some({
                let mut body = job_body(i);
                body["webhook_url"] = json!(webhook);
                body
            }),
            &[("Idempotency-Key", &idem)],
        )
        .await
        .ok()?;
    match status {
        202 => Some(body["id"].as_str()?.to_owned()),
        _ => None,
    }
}

#[actix_web::test]
async fn acknowledged_jobs_and_credits_survive_sigkill() {
    let Some(db) = support::fresh_database().await else {
        return;
    };
    let env = vec![
        ("DATABASE_URL", db.clone()),
        ("ADMEDIA_SIM_WORKERS", "3".to_owned()),
        ("ADMEDIA_SIM_SLOTS", "2".to_owned()),
        ("ADMEDIA_SIM_JOB_MS", "30".to_owned()),
        ("ADMEDIA_SIM_FAILURE_RATE", "0.3".to_owned()),
        // Failures here are injected at random into every simulated GPU,
        // not a broken one: quarantine would only stall the run.
        ("ADMEDIA_QUARANTINE_AFTER", "100".to_owned()),
        ("ADMEDIA_SIM_USER_ERROR_RATE", "0.05".to_owned()),
        ("ADMEDIA_RETRY_BASE_MS", "20".to_owned()),
        ("ADMEDIA_RETRY_MAX_MS", "100".to_owned()),
        // Attempts in flight at the kill are declared lost one lease after
        // the restart.
        ("ADMEDIA_WORKER_LEASE_MS", "1000".to_owned()),
        // No real worker presents attempts here: lose them quickly.
        ("ADMEDIA_REPRESENT_GRACE", "1000ms".to_owned()),
        ("ADMEDIA_REGISTRATION_CREDITS", "2000".to_owned()),
        ("ADMEDIA_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
        ("ADMEDIA_WEBHOOK_RETRY_BASE_MS", "50".to_owned()),
        (
            "ADMEDIA_RATE_LIMITS",
            "free=0,basic=0,professional=0,enterprise=0".to_owned(),
        ),
    ];
    let (hook, received) = counting_receiver().await;
    let mut server = ServerProcess::start(&env).await;
    let api = Api::new(&server.base);
    let mut users = Vec::new();
    for u in 0..4 {
        let (id, key) = api.register(&format!("crash{u}@example.com")).await;
        let (status, _) = api
            .call(
                "PUT",
                &format!("/v1/admin/users/{id}/membership"),
                ADMIN_TOKEN,
                Some(json!({"tier": "enterprise", "expires_at": "2100-01-01T00:00:00Z"})),
                &[],
            )
            .await
            .expect("membership");
        assert_eq!(status, 200);
        users.push((id, key));
    }

    // Submit 75 jobs per user, 300 in all, several at a time; SIGKILL the
    // server a little after half of them were acknowledged.
    const PER_USER: usize = 75;
    let mut acknowledged: HashMap<usize, HashSet<String>> = HashMap::new();
    let mut unanswered: Vec<(usize, usize)> = Vec::new();
    let mut killed = false;
    for batch in (0..PER_USER).step_by(5) {
        let mut futures = Vec::new();
        for (u, (_, key)) in users.iter().enumerate() {
            for i in batch..(batch + 5).min(PER_USER) {
                let (api, hook) = (&api, &hook);
                futures.push(async move { (u, i, submit_until_answered(api, key, i, hook).await) });
            }
        }
        for (u, i, answer) in futures_util::future::join_all(futures).await {
            match answer {
                Some(id) => {
                    acknowledged.entry(u).or_default().insert(id);
                }
                None => unanswered.push((u, i)),
            }
        }
        if !killed && batch >= PER_USER / 2 {
            server.kill();
            killed = true;
            server = ServerProcess::start(&env).await;
        }
    }
    assert!(killed);
    let api = Api::new(&server.base);
    // Retries of whatever the crash left unanswered: the same key either
    // replays the committed job or creates it now, never both.
    for (u, i) in unanswered {
        let id = submit_until_answered(&api, &users[u].1, i, &hook)
            .await
            .expect("resubmission after restart is answered");
        acknowledged.entry(u).or_default().insert(id);
    }

    // Every job reaches a terminal state.
    support::await_no_open_jobs(&api, Duration::from_secs(120)).await;

    // Audit every user from the API.
    for (u, (_, key)) in users.iter().enumerate() {
        let jobs = support::audit_user(&api, key).await;
        let ids: HashSet<String> = jobs
            .iter()
            .filter_map(|j| j["id"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(
            jobs.len(),
            PER_USER,
            "one job per idempotency key, no more, no less"
        );
        assert!(
            acknowledged[&u].is_subset(&ids),
            "an acknowledged job was lost"
        );
        for job in &jobs {
            let posted = job["state"] == "succeeded" || job["error"]["class"] == "user";
            let charge = if posted { "posted" } else { "voided" };
            assert_eq!(job["charge"].as_str(), Some(charge), "{job}");
        }
    }

    // Every webhook a committed change produced is delivered at least once
    // (the ones owed at the kill by the restarted server), and none for a
    // change that never committed: a start per attempt that started, and
    // the end.
    let mut owed: HashSet<String> = HashSet::new();
    for (_, key) in &users {
        for job in support::audit_user(&api, key).await {
            let id = job["id"].as_str().expect("id");
            let (status, detail) = api
                .call(
                    "GET",
                    &format!("/v1/admin/jobs/{id}"),
                    ADMIN_TOKEN,
                    None,
                    &[],
                )
                .await
                .expect("job detail");
            assert_eq!(status, 200);
            let state = job["state"].as_str().expect("state");
            owed.insert(webhook_id(
                id,
                state,
                job["attempts"].as_u64().expect("attempts"),
            ));
            for a in detail["attempts"].as_array().expect("attempts") {
                if !a["started_at"].is_null() {
                    owed.insert(webhook_id(id, "running", a["attempt"].as_u64().expect("n")));
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let seen: HashSet<String> = received.lock().expect("lock").keys().cloned().collect();
        let missing = owed.difference(&seen).count();
        if missing == 0 || Instant::now() > deadline {
            assert_eq!(missing, 0, "webhooks of committed changes never delivered");
            let stray: Vec<&String> = seen.difference(&owed).collect();
            assert!(
                stray.is_empty(),
                "webhooks for changes that never committed: {stray:?}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[actix_web::test]
async fn database_outage_answers_503_and_recovers() {
    let Some(db) = support::fresh_database().await else {
        return;
    };
    let url: tokio_postgres::Config = db.parse().expect("url");
    let host = match url.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = url.get_ports().first().copied().unwrap_or(5432);
    let proxy = support::CuttableProxy::start(format!("{host}:{port}")).await;
    let db_name = url.get_dbname().unwrap_or("test").to_owned();
    let user = url.get_user().unwrap_or("postgres").to_owned();
    let via_proxy = format!("postgres://{user}@127.0.0.1:{}/{db_name}", proxy.port);

    let mut settings = admedia::config::Settings::default();
    settings.bind = "127.0.0.1:0".into();
    settings.database_url = Some(via_proxy);
    settings.admin_token = Some(ADMIN_TOKEN.into());
    settings.sim_workers = Some(2);
    settings.sim_job_time = Duration::from_millis(20);
    settings.rate_limits = "free=0".parse().expect("rate limits");
    let app = admedia::startup::Application::build(settings)
        .await
        .expect("build");
    let api = Api::new(&format!("http://127.0.0.1:{}", app.port()));
    actix_rt::spawn(app.run_until_stopped());

    let (_, key) = api.register("outage@example.com").await;
    let (status, _) = api
        .call("POST", "/v1/jobs", &key, Some(job_body(0)), &[])
        .await
        .expect("submit");
    assert_eq!(status, 202);

    proxy.cut();
    // While the database is unreachable: 503 `unavailable` with
    // Retry-After, and nothing acknowledged.
    let mut res = api
        .client
        .post(format!("{}/v1/jobs", api.base))
        .insert_header(("Authorization", format!("Bearer {key}")))
        .insert_header(("Idempotency-Key", "during-outage"))
        .send_json(&job_body(1))
        .await
        .expect("response during outage");
    assert_eq!(res.status().as_u16(), 503);
    assert!(
        res.headers().get("retry-after").is_some(),
        "Retry-After on 503"
    );
    let problem: Value = res.json().await.expect("problem json");
    assert_eq!(problem["type"], "unavailable");
    let (status, body) = api
        .call("GET", "/readyz", "", None, &[])
        .await
        .expect("readyz");
    assert_eq!(status, 503, "{body}");

    proxy.restore();
    // Recovers by itself: the same submission is accepted now, exactly once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let job_id = loop {
        let (status, body) = api
            .call(
                "POST",
                "/v1/jobs",
                &key,
                Some(job_body(1)),
                &[("Idempotency-Key", "during-outage")],
            )
            .await
            .expect("submit after outage");
        if status == 202 {
            break body["id"].as_str().expect("id").to_owned();
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "did not recover");
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, jobs) = api
            .call("GET", "/v1/jobs", &key, None, &[])
            .await
            .expect("jobs");
        let jobs = jobs["jobs"].as_array().cloned().unwrap_or_default();
        assert_eq!(jobs.len(), 2, "the refused submission left no job behind");
        if jobs.iter().all(|j| j["state"] == "succeeded") {
            assert!(jobs.iter().any(|j| j["id"] == job_id.as_str()));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jobs did not finish after recovery: {jobs:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, wallet) = api
        .call("GET", "/v1/wallet", &key, None, &[])
        .await
        .expect("wallet");
    let entries = api.all_pages("/v1/wallet/ledger", "entries", &key).await;
    let holds = entries.iter().filter(|e| e["kind"] == "hold").count();
    let posts = entries.iter().filter(|e| e["kind"] == "post").count();
    assert_eq!(
        (holds, posts),
        (2, 2),
        "two jobs, each held and posted once"
    );
    assert_eq!(wallet["held"], 0);
    assert_eq!(wallet["balance"].as_i64(), Some(100 - 1 - 2));
}
