//! The worker agent over `wss://`: the real server behind a TLS endpoint
//! whose certificate the test makes (signed by a CA made here too), and
//! the real `admedia-worker` binary. With the CA given by `--ca-file` the
//! agent connects and runs a job; without it the agent refuses the
//! server's certificate and says how to fix it.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use admedia::config::Settings;
use admedia::startup::Application;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use serde_json::{json, Value};
use tokio_rustls::rustls;

const ADMIN_TOKEN: &str = "tls-test-admin-token-0123456789abcdef";
const WORKER_TOKEN: &str = "tls-test-worker-token-0123456789abcde";
const WAIT: Duration = Duration::from_secs(20);

/// A CA, and a certificate for `localhost` it signed; the CA as PEM.
fn certificates() -> (String, rustls::ServerConfig) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    (ca.pem(), server)
}

/// Terminates TLS on a port of its own and forwards the bytes to
/// `upstream`; returns the port.
async fn tls_endpoint(config: rustls::ServerConfig, upstream: u16) -> u16 {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    actix_rt::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            actix_rt::spawn(async move {
                // A refused handshake (the agent distrusting us) just ends.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
            });
        }
    });
    port
}

async fn server() -> (u16, awc::Client) {
    let settings = Settings {
        bind: "127.0.0.1:0".into(),
        admin_token: Some(ADMIN_TOKEN.into()),
        worker_token: Some(WORKER_TOKEN.into()),
        sim_workers: Some(0),
        http_workers: Some(2),
        registrations_per_hour: 0,
        ..Settings::default()
    };
    let app = Application::build(settings).await.expect("build");
    let port = app.port();
    actix_rt::spawn(app.run_until_stopped());
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    (port, client)
}

struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(dir: &Path, tls_port: u16, extra: &[&str]) -> Agent {
        let log = dir.join(format!("agent-{}.log", uuid::Uuid::now_v7().simple()));
        let file = std::fs::File::create(&log).expect("log");
        let mut command = Command::new(support::worker_bin());
        for (name, _) in std::env::vars() {
            if name.starts_with("ADMEDIA_") {
                command.env_remove(name);
            }
        }
        command
            .args(["--server", &format!("wss://localhost:{tls_port}")])
            .args([
                "--token",
                WORKER_TOKEN,
                "--executor",
                "simulate",
                "--sim-job-ms",
                "20",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        Agent {
            child: command.spawn().expect("start admedia-worker"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
    }
}

async fn call(
    client: &awc::Client,
    port: u16,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Value {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut req = match body {
        Some(_) => client.post(url),
        None => client.get(url),
    };
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let mut res = match body {
        Some(b) => req.send_json(&b).await,
        None => req.send().await,
    }
    .expect("request");
    res.json::<Value>().await.expect("JSON")
}

#[actix_web::test]
async fn the_agent_runs_jobs_over_wss_with_the_ca_it_is_given() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca_pem, tls) = certificates();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("write CA");
    let (port, client) = server().await;
    let tls_port = tls_endpoint(tls, port).await;

    // Without the CA the server's certificate is not trusted.
    let untrusting = Agent::start(dir.path(), tls_port, &[]);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = untrusting.log();
        if log.contains("not trusted") {
            assert!(
                log.contains("--ca-file"),
                "the error says how to fix it: {log}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no TLS error: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(untrusting);
    let workers = call(&client, port, "/v1/admin/workers", Some(ADMIN_TOKEN), None).await;
    assert_eq!(
        workers["workers"].as_array().map(Vec::len),
        Some(0),
        "{workers}"
    );

    // A CA file that is not one is refused at start-up.
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "hello").expect("write");
    let mut refused = Agent::start(
        dir.path(),
        tls_port,
        &["--ca-file", bogus.to_str().expect("path")],
    );
    let status = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(s) = refused.child.try_wait().expect("wait") {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("exits");
    assert_eq!(status.code(), Some(2));
    assert!(refused.log().contains("--ca-file"), "{}", refused.log());

    // With it, the agent connects and a job runs on it.
    let agent = Agent::start(
        dir.path(),
        tls_port,
        &["--ca-file", ca_file.to_str().expect("path")],
    );
    let reg = call(
        &client,
        port,
        "/v1/users",
        None,
        Some(json!({"email": "tls@example.com", "display_name": "TLS"})),
    )
    .await;
    let key = reg["api_key"].as_str().expect("key").to_owned();
    let job = call(
        &client,
        port,
        "/v1/jobs",
        Some(&key),
        Some(json!({"kind": "image", "model": "sdxl", "prompt": "over TLS"})),
    )
    .await;
    let id = job["id"].as_str().expect("id").to_owned();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let job = call(&client, port, &format!("/v1/jobs/{id}"), Some(&key), None).await;
        if job["state"] == "succeeded" {
            assert_eq!(job["charge"], "posted");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job not done: {job}\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
