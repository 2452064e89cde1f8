//! Submission rate limits shared through Redis, and the money path going
//! on without Redis.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::ServerProcess;

async fn post(
    client: &awc::Client,
    url: String,
    key: Option<&str>,
    body: Value,
) -> (u16, Option<String>, Value) {
    let mut req = client.post(url);
    if let Some(key) = key {
        req = req.insert_header(("Authorization", format!("Bearer {key}")));
    }
    let mut res = req.send_json(&body).await.expect("request");
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (res.status().as_u16(), retry_after, body)
}

fn job() -> Value {
    json!({"kind": "image", "model": "sdxl", "prompt": "rate limited"})
}

#[actix_web::test]
async fn rate_limit_is_shared_by_two_server_processes() {
    let (Some(db), Some(redis)) = (support::fresh_database().await, support::redis_url()) else {
        return;
    };
    let env = vec![
        ("DATABASE_URL", db),
        ("REDIS_URL", redis),
        ("ADMEDIA_SIM_WORKERS", "0".to_owned()),
        ("ADMEDIA_RATE_LIMITS", "free=5".to_owned()),
    ];
    let a = ServerProcess::start(&env).await;
    let b = ServerProcess::start(&env).await;
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let (status, _, reg) = post(
        &client,
        format!("{}/v1/users", a.base),
        None,
        json!({"email": "limited@example.com", "display_name": "L"}),
    )
    .await;
    assert_eq!(status, 201);
    let key = reg["api_key"].as_str().expect("key").to_owned();

    let mut accepted = 0;
    let mut limited = 0;
    for i in 0..10 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (status, retry_after, body) =
            post(&client, format!("{}/v1/jobs", node.base), Some(&key), job()).await;
        match status {
            202 => accepted += 1,
            429 => {
                assert_eq!(body["type"], "rate-limited");
                let secs: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
                assert!((1..=60).contains(&secs));
                limited += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // Each node alone would have allowed 5: together they allowed 5.
    assert_eq!((accepted, limited), (5, 5));
}

#[actix_web::test]
async fn submissions_continue_when_redis_is_unreachable() {
    let mut settings = admedia::config::Settings::default();
    settings.bind = "127.0.0.1:0".into();
    // The embedded store, whatever DATABASE_URL says: a rerun must not
    // find the user of the previous run.
    settings.database_url = None;
    settings.sim_workers = Some(0);
    settings.rate_limits = "free=1".parse().expect("rate limits");
    // Nothing listens here.
    settings.redis_url = Some(format!("redis://127.0.0.1:{}/", support::free_port()));
    let app = admedia::startup::Application::build(settings)
        .await
        .expect("build");
    let base = format!("http://127.0.0.1:{}", app.port());
    actix_rt::spawn(app.run_until_stopped());
    let client = awc::Client::default();
    let (_, _, reg) = post(
        &client,
        format!("{base}/v1/users"),
        None,
        json!({"email": "noredis@example.com", "display_name": "N"}),
    )
    .await;
    let key = reg["api_key"]
        .as_str()
        .unwrap_or_else(|| panic!("registered: {reg}"))
        .to_owned();
    for _ in 0..3 {
        let (status, _, body) = post(&client, format!("{base}/v1/jobs"), Some(&key), job()).await;
        assert_eq!(status, 202, "{body}");
    }
    let mut res = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics");
    let text = String::from_utf8(res.body().await.expect("body").to_vec()).expect("utf8");
    let errors: f64 = text
        .lines()
        .find(|l| l.starts_with("admedia_redis_errors_total{operation=\"rate_limit\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("redis error metric");
    assert!(errors >= 3.0, "each unchecked submission is counted");
}

/// An address of 127.0.0.0/8 (all loopback) no other run uses, so the
/// counts this test makes in the shared Redis are its own.
fn fresh_loopback() -> std::net::IpAddr {
    let b = uuid::Uuid::now_v7().into_bytes();
    std::net::IpAddr::from([127, b[13].max(1), b[14], b[15].max(2)])
}

async fn node(redis: &str, tweak: impl FnOnce(&mut admedia::config::Settings)) -> String {
    let mut settings = admedia::config::Settings::default();
    settings.bind = "127.0.0.1:0".into();
    settings.sim_workers = Some(0);
    settings.redis_url = Some(redis.to_owned());
    settings.database_url = None;
    settings.admin_token = Some(support::ADMIN_TOKEN.to_owned());
    tweak(&mut settings);
    let app = admedia::startup::Application::build(settings)
        .await
        .expect("build");
    let base = format!("http://127.0.0.1:{}", app.port());
    actix_rt::spawn(app.run_until_stopped());
    base
}

#[actix_web::test]
async fn failed_logins_and_registrations_are_counted_across_nodes() {
    let Some(redis) = support::redis_url() else {
        return;
    };
    let tweak = |s: &mut admedia::config::Settings| {
        s.auth_failures_per_minute = 4;
        s.registrations_per_hour = 3;
    };
    let a = node(&redis, tweak).await;
    let b = node(&redis, tweak).await;
    let client = awc::Client::builder()
        .local_address(fresh_loopback())
        .timeout(Duration::from_secs(10))
        .finish();
    let stats = |base: &str| format!("{base}/v1/admin/stats");
    let status = |res: awc::ClientResponse<_>| res.status().as_u16();

    // Four wrong tokens, two on each node, and the address is refused on
    // both, even with the right token.
    for i in 0..4 {
        let base = if i % 2 == 0 { &a } else { &b };
        let res = client
            .get(stats(base))
            .bearer_auth(format!("guess-{i}"))
            .send()
            .await
            .expect("send");
        assert_eq!(status(res), 401);
    }
    for base in [&a, &b] {
        let res = client
            .get(stats(base))
            .bearer_auth(support::ADMIN_TOKEN)
            .send()
            .await
            .expect("send");
        assert_eq!(res.status().as_u16(), 429);
        assert!(res.headers().contains_key("retry-after"));
    }

    // Registrations: three in all across the nodes, then 429 on both.
    let other = awc::Client::builder()
        .local_address(fresh_loopback())
        .timeout(Duration::from_secs(10))
        .finish();
    let mut created = 0;
    let mut limited = 0;
    for i in 0..8 {
        let base = if i % 2 == 0 { &a } else { &b };
        let tag = uuid::Uuid::now_v7().simple();
        let res = other
            .post(format!("{base}/v1/users"))
            .send_json(&json!({"email": format!("r{i}-{tag}@example.com"), "display_name": "R"}))
            .await
            .expect("send");
        match res.status().as_u16() {
            201 => created += 1,
            429 => limited += 1,
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!((created, limited), (3, 5), "one count for the cluster");
}

/// Deployments sharing a Redis server keep apart by their prefix: rate
/// counts and job events of one are not the other's. (Pub/sub channels
/// are shared by every logical database, so the database alone would not
/// keep events apart.)
#[actix_web::test]
async fn deployments_with_other_prefixes_share_nothing_in_redis() {
    use admedia::events::EventHub;
    use admedia::metrics::Metrics;
    use admedia::ratelimit::{Decision, RateLimiter};
    use admedia_actors::domain::events::{JobEvent, JobEventKind};
    use admedia_actors::domain::ids::{JobId, UserId};
    use admedia_actors::domain::job::{Charge, JobState};
    use admedia_actors::domain::tier::Tier;
    use std::sync::Arc;

    let Some(redis) = support::redis_url() else {
        return;
    };
    let run = uuid::Uuid::now_v7().simple().to_string();
    let (one, other) = (format!("t-{run}-one"), format!("t-{run}-other"));
    let metrics = || Arc::new(Metrics::new());

    // Rate limits: one allowed per minute, counted per deployment.
    let limits = "free=1".parse().expect("limits");
    let pool = || admedia::ratelimit::redis_pool(&redis).expect("pool");
    let a = RateLimiter::redis(pool(), &one, limits, metrics());
    let a2 = RateLimiter::redis(pool(), &one, limits, metrics());
    let b = RateLimiter::redis(pool(), &other, limits, metrics());
    let user = UserId::generate();
    assert!(matches!(
        a.check(user, Tier::Free).await,
        Decision::Allowed { .. }
    ));
    assert!(matches!(
        a2.check(user, Tier::Free).await,
        Decision::Limited { .. }
    ));
    assert!(matches!(
        b.check(user, Tier::Free).await,
        Decision::Allowed { .. }
    ));

    // Events.
    let job = JobId::generate();
    let event = |attempt: u32| JobEvent {
        job_id: job,
        user_id: user,
        attempt,
        at: chrono::Utc::now(),
        kind: JobEventKind::State {
            state: JobState::Running,
            charge: Charge::Held,
            error: None,
        },
    };
    let hub = |prefix: &str| EventHub::with_redis(&redis, prefix, metrics()).expect("hub");
    let (one_sender, one_listener) = (hub(&one), hub(&one));
    let (other_sender, other_listener) = (hub(&other), hub(&other));
    let mut one_sub = one_listener.subscribe(job);
    let mut other_sub = other_listener.subscribe(job);
    // Publishes until the listener hears it (its subscription starts in
    // the background), and returns what it heard.
    async fn until_heard(
        sender: &EventHub,
        sub: &mut admedia::events::Subscription,
        event: &JobEvent,
    ) -> JobEvent {
        for _ in 0..200 {
            sender.publish(event.clone());
            let heard = tokio::time::timeout(Duration::from_millis(50), sub.recv()).await;
            if let Ok(Ok(heard)) = heard {
                return heard;
            }
        }
        panic!("no event arrived through Redis");
    }
    assert_eq!(
        until_heard(&other_sender, &mut other_sub, &event(1))
            .await
            .attempt,
        1
    );
    // The other deployment listens now; an event of this one, heard here...
    assert_eq!(
        until_heard(&one_sender, &mut one_sub, &event(2))
            .await
            .attempt,
        2
    );
    // ...never reaches it: it hears its own next event (and repeats of its
    // first), never this one's.
    loop {
        let heard = until_heard(&other_sender, &mut other_sub, &event(3)).await;
        assert_ne!(heard.attempt, 2, "another deployment's event arrived");
        if heard.attempt == 3 {
            break;
        }
    }
}
