//! The published OpenAPI document against the server that publishes it:
//! `openapi-spec-validator` must accept `/openapi.json`, and schemathesis
//! (`--checks all`) must find nothing when it drives the embedded server
//! from that document. Both are Python tools; `scripts/test.sh` installs
//! them into a virtual environment under the user's cache directory and
//! names it in `ADMEDIA_PYTHON_TOOLS`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use admedia::config::Settings;
use admedia::startup::Application;
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "conformance-admin-token-0123456789abcdef";
const WORKER_TOKEN: &str = "conformance-worker-token-0123456789abcdef";
const PAYMENT_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Test cases per operation and phase: enough to cover every operation's
/// constraints, few enough to keep the run near a minute on two cores.
const MAX_EXAMPLES: &str = "12";
const SEED: &str = "20261201";

/// The directory holding `bin/schemathesis` and `bin/openapi-spec-validator`.
fn tools() -> Option<PathBuf> {
    let dir = std::env::var_os("ADMEDIA_PYTHON_TOOLS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/admedia/venv"))
        })?;
    let present = ["schemathesis", "openapi-spec-validator"]
        .iter()
        .all(|t| dir.join("bin").join(t).is_file());
    if present {
        return Some(dir);
    }
    let why = format!(
        "schemathesis and openapi-spec-validator not found in {}",
        dir.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("required when CI=true: {why}; ./scripts/test.sh installs them");
    }
    eprintln!("skipping: {why}; run ./scripts/test.sh to install them");
    None
}

async fn start() -> (String, awc::Client) {
    let mut settings = Settings::default();
    settings.bind = "127.0.0.1:0".into();
    settings.database_url = None;
    settings.redis_url = None;
    settings.admin_token = Some(ADMIN_TOKEN.into());
    settings.worker_token = Some(WORKER_TOKEN.into());
    settings.payment_secret = Some(PAYMENT_SECRET.into());
    settings.sim_workers = Some(2);
    settings.sim_job_time = Duration::from_millis(5);
    settings.http_workers = Some(2);
    // Generated prompts trip the content rules now and then; the test
    // account must not be suspended for it half-way through.
    settings.violations_before_suspend = 0;
    // The generator sends wrong tokens on purpose (to check 401s); counted
    // per address they would soon turn every request into a 429. Those
    // limits have tests of their own.
    settings.auth_failures_per_minute = 0;
    settings.registrations_per_hour = 0;
    let app = Application::build(settings)
        .await
        .unwrap_or_else(|e| panic!("start the server: {e}"));
    let address = format!("http://127.0.0.1:{}", app.port());
    actix_rt::spawn(app.run_until_stopped());
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    (address, client)
}

async fn register(client: &awc::Client, address: &str, email: &str) -> String {
    let mut res = client
        .post(format!("{address}/v1/users"))
        .send_json(&json!({"email": email, "display_name": "Conformance"}))
        .await
        .unwrap_or_else(|e| panic!("register: {e}"));
    let body: Value = res
        .json()
        .await
        .unwrap_or_else(|e| panic!("register body: {e}"));
    body["api_key"]
        .as_str()
        .unwrap_or_else(|| panic!("no api_key in {body}"))
        .to_owned()
}

/// Runs a tool, failing the test with its output when it exits non-zero.
async fn run(dir: &Path, tool: &str, args: &[&str], cwd: &Path) {
    let out = tokio::process::Command::new(dir.join("bin").join(tool))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{tool} {} failed ({}):\n{stdout}\n{stderr}",
        args.join(" "),
        out.status
    );
    // The summary line, for the test log.
    if let Some(last) = stdout.lines().rev().find(|l| !l.trim().is_empty()) {
        eprintln!("{tool}: {last}");
    }
}

#[actix_web::test]
async fn the_openapi_document_is_valid_and_the_server_keeps_to_it() {
    let Some(tools) = tools() else {
        return;
    };
    let (address, client) = start().await;
    let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let dir = scratch.path();

    let mut res = client
        .get(format!("{address}/openapi.json"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /openapi.json: {e}"));
    assert_eq!(res.status().as_u16(), 200);
    let document = res
        .body()
        .limit(4 * 1024 * 1024)
        .await
        .unwrap_or_else(|e| panic!("document: {e}"));
    let spec = dir.join("openapi.json");
    std::fs::write(&spec, &document).unwrap_or_else(|e| panic!("write document: {e}"));
    let spec = spec.to_string_lossy().into_owned();
    run(&tools, "openapi-spec-validator", &[&spec], dir).await;

    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/openapi/schemathesis.toml"
    );
    let schemathesis = |auth: String, filters: Vec<&'static str>| {
        let mut args: Vec<String> = vec![
            "--config-file".into(),
            config.into(),
            "run".into(),
            spec.clone(),
            "--url".into(),
            address.clone(),
            "--checks".into(),
            "all".into(),
            "--max-examples".into(),
            MAX_EXAMPLES.into(),
            "--seed".into(),
            SEED.into(),
            "--generation-database".into(),
            "none".into(),
            "--request-timeout".into(),
            "10".into(),
            "--no-color".into(),
            "-H".into(),
            format!("Authorization: Bearer {auth}"),
        ];
        args.extend(filters.into_iter().map(str::to_owned));
        args
    };
    // Everything a user, the public and the payment provider call, with a
    // user's key; closing the account is left to the last run.
    let user_key = register(&client, &address, "conformance-user@example.com").await;
    let args = schemathesis(
        user_key,
        vec!["--exclude-tag", "admin", "--exclude-path", "/v1/me/close"],
    );
    run(&tools, "schemathesis", &refs(&args), dir).await;
    // The operator's API with the admin token.
    let args = schemathesis(ADMIN_TOKEN.to_owned(), vec!["--include-tag", "admin"]);
    run(&tools, "schemathesis", &refs(&args), dir).await;
    // Closing an account, with an account of its own.
    let closing_key = register(&client, &address, "conformance-close@example.com").await;
    let args = schemathesis(closing_key, vec!["--include-path", "/v1/me/close"]);
    run(&tools, "schemathesis", &refs(&args), dir).await;
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}
