//! Limits per client address: wrong tokens on the admin API, the console
//! sign-in and the worker connect, registrations, and token strength at
//! start-up. Each test connects from addresses of its own in 127.0.0.0/8
//! (all loopback on Linux), so it can show that one address's limit does
//! not touch another's.

use std::net::IpAddr;
use std::time::Duration;

use admedia::startup::Application;
use serde_json::{json, Value};

use crate::helpers::*;

/// A client whose connections come from `from`.
fn client_from(from: &str) -> awc::Client {
    let ip: IpAddr = from.parse().expect("address");
    awc::Client::builder()
        .local_address(ip)
        .disable_redirects()
        .timeout(Duration::from_secs(30))
        .finish()
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    content_type: String,
    body: String,
}

async fn send(
    client: &awc::Client,
    method: &str,
    url: String,
    bearer: Option<&str>,
    body: Option<(&str, String)>,
) -> Answer {
    let method = actix_web::http::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client.request(method, url);
    if let Some(t) = bearer {
        req = req.insert_header(("Authorization", format!("Bearer {t}")));
    }
    let sent = match body {
        Some((content_type, body)) => {
            req.insert_header(("Content-Type", content_type))
                .send_body(body)
                .await
        }
        None => req.send().await,
    };
    let mut res = sent.expect("request");
    let header = |n: &str| {
        res.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (retry_after, content_type) = (header("retry-after"), header("content-type"));
    let body = res.body().await.expect("body");
    Answer {
        status: res.status().as_u16(),
        retry_after,
        content_type: content_type.unwrap_or_default(),
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn assert_limited(a: &Answer, problem: bool) {
    assert_eq!(a.status, 429, "{}", a.body);
    let secs: u64 = a
        .retry_after
        .as_deref()
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&secs), "{secs}");
    if problem {
        assert_eq!(a.content_type, "application/problem+json");
        let v: Value = serde_json::from_str(&a.body).expect("problem");
        assert_eq!(v["type"], "rate-limited", "{v}");
    }
}

async fn app_with_limit(failures: u32) -> TestApp {
    spawn_app_with(|s| {
        s.auth_failures_per_minute = failures;
        s.sim_workers = Some(0);
    })
    .await
}

#[actix_web::test]
async fn wrong_admin_tokens_are_limited_per_address_and_right_ones_are_not() {
    let app = app_with_limit(5).await;
    let stats = app.url("/v1/admin/stats");
    let right = client_from("127.0.0.11");
    // Many right tokens in a row: never limited, never counted.
    for _ in 0..30 {
        let a = send(&right, "GET", stats.clone(), Some(ADMIN_TOKEN), None).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let guesser = client_from("127.0.0.12");
    for i in 0..5 {
        let a = send(
            &guesser,
            "GET",
            stats.clone(),
            Some(&format!("guess-{i}")),
            None,
        )
        .await;
        assert_eq!(a.status, 401, "{}", a.body);
    }
    let a = send(&guesser, "GET", stats.clone(), Some("guess-5"), None).await;
    assert_limited(&a, true);
    // While limited, even the right token is refused from that address:
    // otherwise the answer would tell a guesser which guess was right.
    let a = send(&guesser, "GET", stats.clone(), Some(ADMIN_TOKEN), None).await;
    assert_limited(&a, true);
    // Other addresses are untouched.
    let a = send(&right, "GET", stats.clone(), Some(ADMIN_TOKEN), None).await;
    assert_eq!(a.status, 200);
    // A request without any token is not a guess and not counted.
    let other = client_from("127.0.0.13");
    for _ in 0..10 {
        assert_eq!(
            send(&other, "GET", stats.clone(), None, None).await.status,
            401
        );
    }
    assert_eq!(
        send(&other, "GET", stats, Some(ADMIN_TOKEN), None)
            .await
            .status,
        200
    );
}

#[actix_web::test]
async fn wrong_console_tokens_are_limited_without_a_pause_per_request() {
    let app = app_with_limit(3).await;
    let login = app.url("/console/login");
    let form = |t: &str| Some(("application/x-www-form-urlencoded", format!("token={t}")));
    let guesser = client_from("127.0.0.21");
    for i in 0..3 {
        let a = send(
            &guesser,
            "POST",
            login.clone(),
            None,
            form(&format!("nope{i}")),
        )
        .await;
        assert_eq!(a.status, 401);
        assert!(a.body.contains("That is not the admin token"));
    }
    let a = send(&guesser, "POST", login.clone(), None, form("nope")).await;
    assert_limited(&a, false);
    assert!(a.body.contains("Too many wrong tokens"), "{}", a.body);
    let a = send(&guesser, "POST", login.clone(), None, form(ADMIN_TOKEN)).await;
    assert_limited(&a, false);
    // Another address signs in at once.
    let a = send(
        &client_from("127.0.0.22"),
        "POST",
        login,
        None,
        form(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(a.status, 303, "{}", a.body);
}

#[actix_web::test]
async fn wrong_worker_tokens_are_limited_per_address() {
    let app = app_with_limit(4).await;
    let url = app.url("/v1/workers/connect").replacen("http", "ws", 1);
    let connect = |from: &'static str, token: String| {
        let url = url.clone();
        async move {
            client_from(from)
                .ws(url)
                .bearer_auth(token)
                .connect()
                .await
                .map(|_| ())
        }
    };
    for i in 0..4 {
        match connect("127.0.0.31", format!("wrong-{i}")).await {
            Err(awc::error::WsClientError::InvalidResponseStatus(s)) => assert_eq!(s, 401),
            other => panic!("expected 401, got {other:?}"),
        }
    }
    for token in ["wrong-4".to_owned(), WORKER_TOKEN.to_owned()] {
        match connect("127.0.0.31", token).await {
            Err(awc::error::WsClientError::InvalidResponseStatus(s)) => assert_eq!(s, 429),
            other => panic!("expected 429, got {other:?}"),
        }
    }
    connect("127.0.0.32", WORKER_TOKEN.to_owned())
        .await
        .expect("another address connects");
}

#[actix_web::test]
async fn registrations_are_limited_per_address_and_earn_nothing_beyond_it() {
    let app = spawn_app_with(|s| {
        s.registrations_per_hour = 10;
        s.sim_workers = Some(0);
    })
    .await;
    let users = app.url("/v1/users");
    let farm = client_from("127.0.0.41");
    let (mut created, mut limited) = (0, 0);
    for i in 0..200 {
        let body = json!({"email": format!("farm{i}@example.com"), "display_name": "Farm"});
        let a = send(
            &farm,
            "POST",
            users.clone(),
            None,
            Some(("application/json", body.to_string())),
        )
        .await;
        match a.status {
            201 => created += 1,
            429 => {
                assert_limited_registration(&a);
                limited += 1;
            }
            other => panic!("unexpected {other}: {}", a.body),
        }
    }
    assert_eq!((created, limited), (10, 190));
    // No account, and so no credit, was made for the refused ones.
    let found = app
        .get("/v1/admin/users?email=farm&limit=200", Some(ADMIN_TOKEN))
        .await
        .expect(200);
    assert_eq!(found["users"].as_array().map(Vec::len), Some(10), "{found}");
    // Another address registers at once.
    let body = json!({"email": "neighbour@example.com", "display_name": "N"});
    let a = send(
        &client_from("127.0.0.42"),
        "POST",
        users,
        None,
        Some(("application/json", body.to_string())),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
}

fn assert_limited_registration(a: &Answer) {
    assert_eq!(a.content_type, "application/problem+json");
    let v: Value = serde_json::from_str(&a.body).expect("problem");
    assert_eq!(v["type"], "rate-limited", "{v}");
    let secs: u64 = a
        .retry_after
        .as_deref()
        .expect("Retry-After")
        .parse()
        .expect("secs");
    assert!((1..=3600).contains(&secs));
}

#[actix_web::test]
async fn weak_tokens_are_refused_at_start_up_naming_the_variable() {
    for (admin, worker, variable, says) in [
        (Some(""), None, "ADMEDIA_ADMIN_TOKEN", "empty"),
        (None, Some(""), "ADMEDIA_WORKER_TOKEN", "empty"),
        (Some("short"), None, "ADMEDIA_ADMIN_TOKEN", "at least 32"),
        (
            None,
            Some(&"w".repeat(31)),
            "ADMEDIA_WORKER_TOKEN",
            "at least 32",
        ),
        (
            Some(&format!("{} x", "a".repeat(40))),
            None,
            "ADMEDIA_ADMIN_TOKEN",
            "visible ASCII",
        ),
    ] {
        let mut settings = test_settings();
        settings.admin_token = admin.map(str::to_owned);
        settings.worker_token = worker.map(str::to_owned);
        match Application::build(settings).await {
            Ok(_) => panic!("{variable} {admin:?}/{worker:?} accepted"),
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains(variable) && e.contains(says), "{e}");
            }
        }
    }
    // Unset: one is generated, long enough.
    let mut settings = test_settings();
    settings.admin_token = None;
    settings.worker_token = None;
    let app = Application::build(settings)
        .await
        .expect("generated tokens");
    assert!(app.admin_token().len() >= 32);
    assert!(app.worker_token().len() >= 32);
    let mut settings = test_settings();
    settings.admin_token = Some("a".repeat(32));
    Application::build(settings)
        .await
        .expect("32 characters are enough");
}
