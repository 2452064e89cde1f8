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
    settings.sim_workers = Some(0);
    settings.rate_limits = "free=1".into();
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
    let key = reg["api_key"].as_str().expect("key").to_owned();
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
