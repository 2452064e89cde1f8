//! The dashboards and alert rules, proved against a real Prometheus: the
//! server runs a short load with simulated workers (some failing, so there
//! are retries and refunds), Prometheus scrapes it every second, and every
//! PromQL expression in `dashboards/` is asked of Prometheus. Each must
//! parse and return at least one series, each metric it names must be one
//! the server exports, and `promtool` must accept the shipped rules and
//! config. Grafana itself is not needed: a panel is its query.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::{ServerProcess, ADMIN_TOKEN};

/// What Grafana's interval variables become when a query is asked directly.
const GRAFANA_INTERVAL: &str = "1m";

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `name` on PATH, else in /usr/bin (where Debian's package puts it).
fn find_binary(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let p = Path::new("/usr/bin").join(name);
        p.is_file().then_some(p)
    })
}

// ---------------------------------------------------------------- extraction

/// Every `targets[].expr` of a Grafana dashboard, at any depth (rows,
/// nested panels, library panels inlined), named by its panel's title.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                let title = map
                    .get("title")
                    .and_then(Value::as_str)
                    .unwrap_or(title)
                    .to_owned();
                if let Some(Value::Array(targets)) = map.get("targets") {
                    for t in targets {
                        if let Some(expr) = t.get("expr").and_then(Value::as_str) {
                            out.push((format!("panel {title:?}"), expr.to_owned()));
                        }
                    }
                }
                for (key, child) in map {
                    if key != "targets" {
                        walk(child, &title, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "", &mut out);
    out
}

/// Every `expr:` of a Prometheus rules file, named by its alert (or
/// record). Handles plain, quoted and block (`|`, `>`) scalars, which is
/// all a rules file needs, without a YAML parser.
fn rule_exprs(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut name = String::from("?");
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let body = line.trim_start().trim_start_matches("- ");
        if let Some(n) = body
            .strip_prefix("alert:")
            .or_else(|| body.strip_prefix("record:"))
        {
            name = n.trim().trim_matches(['"', '\'']).to_owned();
        }
        if let Some(value) = body.strip_prefix("expr:") {
            let value = value.trim();
            // A comment after a plain scalar is not part of it.
            let value = value.split(" #").next().unwrap_or(value).trim();
            let expr = if value.starts_with('|') || value.starts_with('>') {
                let key_indent = indent(line);
                let mut block = Vec::new();
                while i + 1 < lines.len()
                    && (lines[i + 1].trim().is_empty() || indent(lines[i + 1]) > key_indent)
                {
                    i += 1;
                    block.push(lines[i].trim());
                }
                block.join("\n").trim().to_owned()
            } else if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                inner.replace("\\\"", "\"").replace("\\\\", "\\")
            } else if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\''))
            {
                inner.replace("''", "'")
            } else {
                value.to_owned()
            };
            out.push((format!("alert {name:?}"), expr));
        }
        i += 1;
    }
    out
}

/// Grafana's interval variables as Prometheus sees them once Grafana has
/// filled them in.
fn substitute_grafana(expr: &str) -> String {
    let mut e = expr.to_owned();
    for var in [
        "${__rate_interval}",
        "$__rate_interval",
        "${__interval}",
        "$__interval",
        "${__range}",
        "$__range",
    ] {
        e = e.replace(var, GRAFANA_INTERVAL);
    }
    e
}

/// Skips a quoted string starting at `i` (the opening quote); returns the
/// index after the closing quote.
fn skip_string(chars: &[char], mut i: usize) -> usize {
    let quote = chars[i];
    i += 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Skips from an opening bracket at `i` to after its match, minding strings.
fn skip_group(chars: &[char], mut i: usize) -> usize {
    let (open, close) = match chars[i] {
        '{' => ('{', '}'),
        '[' => ('[', ']'),
        _ => ('(', ')'),
    };
    let mut depth = 0;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// An alert expression is a question with a threshold: `x > 600` has no
/// series while nothing is wrong. With `bool` after every comparison it
/// answers 0 or 1 for every series `x` has, so "has a series" checks that
/// the data behind the alert exists.
fn with_bool(expr: &str) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let op_len = match (c, next) {
            ('"' | '\'' | '`' | '{', _) => {
                let end = if c == '{' {
                    skip_group(&chars, i)
                } else {
                    skip_string(&chars, i)
                };
                out.extend(&chars[i..end.min(chars.len())]);
                i = end;
                continue;
            }
            ('=' | '!' | '>' | '<', Some('=')) => 2,
            ('>' | '<', _) => 1,
            _ => 0,
        };
        if op_len == 0 {
            out.push(c);
            i += 1;
            continue;
        }
        out.extend(&chars[i..i + op_len]);
        i += op_len;
        let rest: String = chars[i..].iter().collect();
        if !rest.trim_start().starts_with("bool") {
            out.push_str(" bool");
        }
    }
    out
}

const NOT_METRICS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "Inf",
    "NaN",
    // Aggregations, which may be followed by `by (...)` before their `(`.
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression reads: identifiers that are not
/// functions, keywords, label names or inside matchers and ranges.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if matches!(c, '{' | '[') {
            i = skip_group(&chars, i);
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations: 1e-9, 0.95, 5m.
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '.'
                    || (matches!(chars[i], '+' | '-') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let followed_by_paren = chars.get(j) == Some(&'(');
            if LABEL_LISTS.contains(&ident.as_str()) {
                if followed_by_paren {
                    i = skip_group(&chars, j);
                }
            } else if !followed_by_paren && !NOT_METRICS.contains(&ident.as_str()) {
                names.insert(ident);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Metric names in a text exposition (`_bucket`, `_sum`, `_count` included).
fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn extraction_handles_the_shapes_it_meets() {
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up > 0\n      - alert: B\n        expr: |\n          sum(x{a=\"b\"})\n            > 1\n        for: 1m\n      - alert: 'C'\n        expr: \"y == 0\"\n      - record: r:d\n        expr: >-\n          rate(z[5m])\n";
    let exprs = rule_exprs(yaml);
    let got: Vec<&str> = exprs.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(
        got,
        ["up > 0", "sum(x{a=\"b\"})\n> 1", "y == 0", "rate(z[5m])"]
    );
    assert_eq!(exprs[2].0, "alert \"C\"");

    let dash = json!({"panels": [
        {"type": "row", "title": "R", "panels": [{"title": "P", "targets": [{"expr": "a"}]}]},
        {"title": "Q", "targets": [{"expr": "b"}, {"refId": "no expr"}]}
    ]});
    let exprs = dashboard_exprs(&dash);
    assert_eq!(
        exprs,
        [
            ("panel \"P\"".to_owned(), "a".to_owned()),
            ("panel \"Q\"".to_owned(), "b".to_owned())
        ]
    );

    assert_eq!(
        with_bool(r#"sum(x{l=~"a>b"}) > 0.1 and y == 0 and z >= bool 1"#),
        r#"sum(x{l=~"a>b"}) > bool 0.1 and y == bool 0 and z >= bool 1"#
    );
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (le, tier) (rate(m_bucket{tier!="free"}[5m]))) > 1e-9 * on (a) group_left (b) n offset 5m"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["m_bucket".to_owned(), "n".to_owned()]
    );
    assert_eq!(
        substitute_grafana("rate(x[$__rate_interval]) + rate(y[${__interval}])"),
        "rate(x[1m]) + rate(y[1m])"
    );
}

// ---------------------------------------------------------------- prometheus

/// A Prometheus of the test's own in a temporary directory, killed and
/// cleaned up on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    base: String,
}

impl Prometheus {
    fn start(binary: &Path, server_port: u16) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "admedia-prometheus-{}",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(dir.join("data")).expect("temp dir");
        let rules = repo_path("dashboards/prometheus/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: admedia\n    static_configs:\n      - targets: [\"127.0.0.1:{server_port}\"]\n",
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write config");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let port = support::free_port();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        Prometheus {
            child,
            dir,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self, client: &awc::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", self.log());
            }
            if let Ok(res) = client.get(format!("{}/-/ready", self.base)).send().await {
                if res.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                self.log()
            );
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An instant query: `Ok(result)` with the data, `Err` with what
    /// Prometheus said when the query failed.
    async fn query(&self, client: &awc::Client, expr: &str) -> Result<Value, String> {
        let mut res = client
            .post(format!("{}/api/v1/query", self.base))
            .send_form(&[("query", expr)])
            .await
            .map_err(|e| format!("request: {e}"))?;
        let body: Value = res
            .json()
            .limit(16 << 20)
            .await
            .map_err(|e| e.to_string())?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!("{}: {}", body["errorType"], body["error"]))
        }
    }

    async fn get(&self, client: &awc::Client, path: &str) -> Value {
        let mut res = client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        res.json()
            .limit(16 << 20)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How many series (or scalars) a query's data holds.
fn series_count(data: &Value) -> usize {
    match data["resultType"].as_str() {
        Some("vector" | "matrix") => data["result"].as_array().map_or(0, Vec::len),
        Some("scalar" | "string") => 1,
        _ => 0,
    }
}

fn promtool(binary: &Path, args: &[&str]) {
    let out = Command::new(binary)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("promtool: {e}"));
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------- load

async fn call(
    client: &awc::Client,
    base: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{base}{path}");
    let req = match method {
        "GET" => client.get(url),
        "PUT" => client.put(url),
        _ => client.post(url),
    }
    .insert_header(("Authorization", format!("Bearer {token}")));
    let mut res = match body {
        Some(b) => req.send_json(&b).await,
        None => req.send().await,
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let bytes = res
        .body()
        .limit(10 << 20)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (
        res.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Users of every tier, ~50 jobs of both kinds (a few refused with 402 and
/// 422), one cancellation; returns once every job is terminal.
async fn short_load(client: &awc::Client, base: &str) -> Vec<String> {
    let tiers = ["free", "basic", "professional", "enterprise"];
    let mut keys = Vec::new();
    let mut user_ids = Vec::new();
    for (u, tier) in tiers.iter().enumerate() {
        let (status, body) = call(
            client,
            base,
            "POST",
            "/v1/users",
            "",
            Some(json!({"email": format!("obs{u}@example.com"), "display_name": "Obs"})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let id = body["user"]["id"].as_str().expect("user id").to_owned();
        if *tier != "free" {
            let (status, body) = call(
                client,
                base,
                "PUT",
                &format!("/v1/admin/users/{id}/membership"),
                ADMIN_TOKEN,
                Some(json!({"tier": tier, "expires_at": "2100-01-01T00:00:00Z"})),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
        keys.push(body["api_key"].as_str().expect("api key").to_owned());
        user_ids.push(id);
    }

    let job = |i: usize| {
        if i % 12 == 0 {
            json!({"kind": "video", "model": "v1", "prompt": format!("waves {i}"),
                   "params": {"width": 1280, "height": 720, "duration_s": 2}})
        } else {
            json!({"kind": "image", "model": "sdxl", "prompt": format!("a fox {i}"),
                   "params": {"count": 1 + i % 3}})
        }
    };
    // In bursts, so jobs wait and tiers compete; a burst may find a user's
    // waiting-job limit, which is one more thing the dashboards show.
    let mut accepted = 0;
    for batch in (0..48).step_by(12) {
        let futures = (batch..batch + 12).map(|i| {
            let key = &keys[i % keys.len()];
            async move { call(client, base, "POST", "/v1/jobs", key, Some(job(i))).await }
        });
        for (status, body) in futures_util::future::join_all(futures).await {
            match status {
                202 => accepted += 1,
                429 => assert_eq!(body["type"], "queue-limit", "{body}"),
                _ => panic!("submit: {status} {body}"),
            }
        }
    }
    assert!(accepted >= 36, "only {accepted} of 48 jobs accepted");
    wait_until_idle(client, base).await;
    // Refusals: more credits than the wallet holds (402), invalid params (422).
    let too_dear = json!({"kind": "video", "model": "v1", "prompt": "epic",
        "params": {"width": 1920, "height": 1080, "duration_s": 60}});
    let invalid = json!({"kind": "image", "model": "sdxl", "prompt": ""});
    for key in &keys[..2] {
        let (status, body) = call(
            client,
            base,
            "POST",
            "/v1/jobs",
            key,
            Some(too_dear.clone()),
        )
        .await;
        assert_eq!(status, 402, "{body}");
        let (status, body) =
            call(client, base, "POST", "/v1/jobs", key, Some(invalid.clone())).await;
        assert_eq!(status, 422, "{body}");
    }
    // A cancellation: whatever state the job reached, the answer is
    // definite (cancelled, or already finished).
    let (status, body) = call(client, base, "POST", "/v1/jobs", &keys[0], Some(job(1))).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().expect("job id");
    let (status, body) = call(
        client,
        base,
        "POST",
        &format!("/v1/jobs/{id}/cancel"),
        &keys[0],
        None,
    )
    .await;
    assert!(status == 200 || status == 409, "cancel: {status} {body}");
    wait_until_idle(client, base).await;
    user_ids
}

/// Until every job is terminal.
async fn wait_until_idle(client: &awc::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, stats) = call(client, base, "GET", "/v1/admin/stats", ADMIN_TOKEN, None).await;
        let open: u64 = ["queued", "assigned", "running"]
            .iter()
            .map(|s| stats["jobs"][s].as_u64().unwrap_or(0))
            .sum();
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "jobs still open: {stats}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------- the check

#[actix_web::test]
async fn every_dashboard_and_alert_query_returns_data_from_a_real_prometheus() {
    let (Some(prometheus_bin), Some(promtool_bin)) =
        (find_binary("prometheus"), find_binary("promtool"))
    else {
        support::service_missing(
            "Prometheus",
            "prometheus/promtool not found on PATH or in /usr/bin (apt-get install prometheus)",
        );
        return;
    };

    // The shipped files, as an operator would load them.
    promtool(
        &promtool_bin,
        &["check", "rules", "dashboards/prometheus/alerts.yml"],
    );
    promtool(
        &promtool_bin,
        &["check", "config", "dashboards/prometheus/prometheus.yml"],
    );

    let dashboard_path = repo_path("dashboards/grafana/admedia-overview.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&dashboard_path).expect("read dashboard"))
            .expect("dashboard is JSON");
    let panels = dashboard_exprs(&dashboard);
    let alerts_yaml = std::fs::read_to_string(repo_path("dashboards/prometheus/alerts.yml"))
        .expect("read alerts");
    let alerts = rule_exprs(&alerts_yaml);
    assert!(panels.len() >= 20, "dashboard queries: {panels:?}");
    assert_eq!(
        alerts.len(),
        alerts_yaml
            .lines()
            .filter(|l| l.trim_start().starts_with("- alert:"))
            .count(),
        "one expr per alert: {alerts:?}"
    );
    let panels: Vec<(String, String)> = panels
        .into_iter()
        .map(|(at, e)| (at, substitute_grafana(&e)))
        .collect();
    for (at, e) in panels.iter().chain(&alerts) {
        assert!(!e.contains('$'), "{at}: only plain PromQL: {e}");
    }

    let server = ServerProcess::start(&[
        ("ADMEDIA_SIM_WORKERS", "2".to_owned()),
        ("ADMEDIA_SIM_JOB_MS", "20".to_owned()),
        ("ADMEDIA_SIM_FAILURE_RATE", "0.3".to_owned()),
        // Failures here are injected at random into every simulated GPU,
        // not a broken one: quarantine would only stall the run.
        ("ADMEDIA_QUARANTINE_AFTER", "100".to_owned()),
        ("ADMEDIA_RETRY_BASE_MS", "10".to_owned()),
        ("ADMEDIA_RETRY_MAX_MS", "50".to_owned()),
        ("ADMEDIA_RATE_LIMITS", "free=0".to_owned()),
    ])
    .await;
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let mut prometheus = Prometheus::start(&prometheus_bin, server.port);
    prometheus.wait_ready(&client).await;

    let user_ids = short_load(&client, &server.base).await;
    let load_done = unix_now();

    // Two scrapes after the load, so every series born during it has
    // enough samples for rate(), and three in all. (Prometheus starts
    // scraping some 5 s after it starts.)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let number = |data: Result<Value, String>| {
            data.ok()
                .and_then(|d| d["result"][0]["value"][1].as_str().map(str::to_owned))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let latest = number(
            prometheus
                .query(&client, "max(timestamp(admedia_workers_connected))")
                .await,
        );
        let scrapes = number(
            prometheus
                .query(&client, "count_over_time(admedia_workers_connected[1m])")
                .await,
        );
        if latest >= load_done + 2.0 && scrapes >= 3.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus is not scraping the server ({scrapes} scrapes, latest at {latest}):\n{}",
            prometheus.log()
        );
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }

    let mut failures = Vec::new();
    for (at, expr) in &panels {
        match prometheus.query(&client, expr).await {
            Ok(data) if series_count(&data) > 0 => {}
            Ok(_) => failures.push(format!("{at}: no series for {expr}")),
            Err(e) => failures.push(format!("{at}: {e} in {expr}")),
        }
    }
    for (at, expr) in &alerts {
        if let Err(e) = prometheus.query(&client, expr).await {
            failures.push(format!("{at}: {e} in {expr}"));
            continue;
        }
        let data_behind = with_bool(expr);
        match prometheus.query(&client, &data_behind).await {
            Ok(data) if series_count(&data) > 0 => {}
            Ok(_) => failures.push(format!("{at}: no series behind {data_behind}")),
            Err(e) => failures.push(format!("{at}: {e} in {data_behind}")),
        }
    }

    // Prometheus evaluated the rules itself too, without errors.
    let rules = prometheus.get(&client, "/api/v1/rules").await;
    let mut evaluated = 0;
    for group in rules["data"]["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        for rule in group["rules"].as_array().cloned().unwrap_or_default() {
            evaluated += 1;
            if rule["health"] == "err" {
                failures.push(format!(
                    "alert {}: evaluation failed: {}",
                    rule["name"], rule["lastError"]
                ));
            }
        }
    }
    assert_eq!(evaluated, alerts.len(), "prometheus loaded every rule");

    // Every metric a query reads is one the server exports.
    let (status, _) = call(&client, &server.base, "GET", "/healthz", "", None).await;
    assert_eq!(status, 200);
    let mut res = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .expect("GET /metrics");
    let text = String::from_utf8_lossy(&res.body().limit(16 << 20).await.expect("metrics body"))
        .into_owned();
    let exported = exposed_names(&text);
    for (at, expr) in panels.iter().chain(&alerts) {
        for name in metric_names(expr) {
            if !name.starts_with("admedia_") || !exported.contains(&name) {
                failures.push(format!("{at}: {name} is not exported by the server"));
            }
        }
    }
    for id in &user_ids {
        assert!(!text.contains(id.as_str()), "a user id in a label: {id}");
    }

    eprintln!(
        "asked prometheus {} dashboard and {} alert queries",
        panels.len(),
        alerts.len()
    );
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
