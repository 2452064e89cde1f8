//! Job webhooks, signed per Standard Webhooks: to a job's own
//! `webhook_url`, and to the account's endpoints (`/v1/me/webhooks`) that
//! want the event, each its own owed row with its own `webhook-id`, the
//! same signing, checks and retries (see `crate::http::account_webhooks`).
//!
//! When a job starts running and when it ends, and it carries a
//! `webhook_url`, the event is POSTed there with the headers `webhook-id`
//! (the same on every retry of one event), `webhook-timestamp` and
//! `webhook-signature` = `v1,` + base64(HMAC-SHA256(secret, id.timestamp.body)),
//! where the secret is the user's (`GET /v1/me/webhook-secret`, `whsec_` +
//! base64 of the key bytes). Deliveries are owed rows of the store's
//! outbox, written with the change that causes them, so a restart loses
//! none; one that fails is retried with exponential backoff. Targets must
//! be http(s) and, unless `ADMEDIA_WEBHOOK_ALLOW_PRIVATE=true`, must not be
//! special-purpose addresses (loopback, private, link-local, documentation,
//! translation, ...; see `crate::special_addresses`) — checked at
//! submission and again, after DNS, at every delivery, which then connects
//! to the address it checked and follows no redirect.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use admedia_actors::store::outbox::{DeliveryReport, PendingWebhook};
use admedia_actors::store::writeset::WebhookDelivery;
use admedia_actors::store::Store;
use admedia_process::tls::{self, Trust};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::metrics::Metrics;
use crate::views::JobView;

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per event before it is given up (logged and counted).
const MAX_DELIVERIES: u32 = 6;

pub struct Webhooks {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    allow_private: bool,
    retry_base: Duration,
    resolver: Resolver,
}

/// A new signing secret.
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// `v1,<base64 signature>` over `id.timestamp.body`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Result<String, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("secret: {e}"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| format!("secret: {e}"))?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// Why a target is refused: a special-purpose address (see
/// [`crate::special_addresses`]), by name.
fn refused_address(ip: IpAddr) -> Option<&'static str> {
    crate::special_addresses::special_purpose(ip)
}

/// Checks a target as submitted: scheme, host, and a literal address.
pub fn check_target(raw: &str, allow_private: bool) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("webhook_url: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("webhook_url must be an http(s) URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("webhook_url must not carry credentials".into());
    }
    let host = url.host().ok_or("webhook_url needs a host")?;
    if !allow_private {
        let refused = match host {
            url::Host::Ipv4(ip) => refused_address(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => refused_address(IpAddr::V6(ip)),
            url::Host::Domain(d) => (d.eq_ignore_ascii_case("localhost")
                || d.to_ascii_lowercase().ends_with(".localhost"))
            .then_some("loopback (localhost)"),
        };
        if let Some(range) = refused {
            return Err(format!(
                "webhook_url must not point at a special-purpose address: {range}"
            ));
        }
    }
    Ok(url)
}

/// Why one delivery attempt did not reach a receiver that accepted it.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The target itself is unacceptable (scheme, credentials, a literal
    /// special-purpose address): retrying cannot help.
    #[error("target refused: {0}")]
    TargetRefused(String),
    /// The name resolves (now) to a special-purpose address.
    #[error("{host} resolves to {ip}, a special-purpose address: {range}")]
    ResolvesToSpecial {
        host: String,
        ip: IpAddr,
        range: &'static str,
    },
    #[error("resolve {host}: {error}")]
    Resolve { host: String, error: String },
    #[error("signing: {0}")]
    Signing(String),
    #[error("send: {0}")]
    Send(String),
    /// Any status but 2xx, redirects included: they are not followed.
    #[error("status {0}")]
    Status(u16),
}

impl DeliveryError {
    /// The receiver's status, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            DeliveryError::Status(s) => Some(*s),
            _ => None,
        }
    }

    /// Whether a later attempt may succeed.
    pub fn retryable(&self) -> bool {
        !matches!(
            self,
            DeliveryError::TargetRefused(_) | DeliveryError::Signing(_)
        )
    }
}

/// Resolves a host name to the addresses to try, in order.
pub type Resolver = Arc<
    dyn Fn(
            String,
            u16,
        ) -> futures_util::future::BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>
        + Send
        + Sync,
>;

/// The system resolver.
fn system_resolver() -> Resolver {
    Arc::new(|host, port| {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    })
}

/// TLS for `https://` receivers: the system's roots, loaded once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, DeliveryError> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| tls::client_config(Trust::SystemRoots))
        .clone()
        .map_err(DeliveryError::Send)
}

impl Webhooks {
    pub fn new(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        allow_private: bool,
        retry_base: Duration,
    ) -> Webhooks {
        Webhooks {
            store,
            metrics,
            allow_private,
            retry_base,
            resolver: system_resolver(),
        }
    }

    /// Resolves names with `resolver` instead of the system's (tests).
    pub fn with_resolver(mut self, resolver: Resolver) -> Webhooks {
        self.resolver = resolver;
        self
    }

    /// How often owed deliveries are looked for (retries, and what a
    /// restart left): the first retry delay, at most a second.
    pub fn poll_every(&self) -> Duration {
        self.retry_base.min(Duration::from_secs(1))
    }

    /// Tries one owed delivery once and records how it went: delivered,
    /// retried later with exponential backoff, or given up after
    /// `MAX_DELIVERIES` tries.
    pub async fn deliver(&self, owed: PendingWebhook) {
        let d = &owed.delivery;
        let outcome = self.deliver_event(d).await;
        let now = chrono::Utc::now();
        let report = match outcome {
            Ok(status) => {
                self.metrics.webhook("delivered");
                tracing::info!(job = %d.job_id, webhook = %d.id, event = %d.event_type, delivery = owed.attempts + 1, "webhook delivered");
                DeliveryReport::Delivered { status }
            }
            Err(e) if !e.retryable() => {
                tracing::warn!(job = %d.job_id, webhook = %d.id, error = %e, "webhook target refused");
                self.metrics.webhook("refused");
                DeliveryReport::GivenUp {
                    error: e.to_string(),
                    status: e.status(),
                }
            }
            Err(e) => {
                let status = e.status();
                let e = e.to_string();
                self.metrics.webhook("failed_attempt");
                tracing::warn!(job = %d.job_id, webhook = %d.id, delivery = owed.attempts + 1, error = %e, "webhook delivery failed");
                if owed.attempts + 1 >= MAX_DELIVERIES {
                    self.metrics.webhook("given_up");
                    tracing::error!(job = %d.job_id, webhook = %d.id, "webhook given up after {MAX_DELIVERIES} deliveries");
                    DeliveryReport::GivenUp { error: e, status }
                } else {
                    let delay = self
                        .retry_base
                        .saturating_mul(1 << owed.attempts.min(16))
                        .min(Duration::from_secs(300));
                    DeliveryReport::Failed {
                        retry_at: now
                            + chrono::Duration::from_std(delay)
                                .unwrap_or(chrono::Duration::seconds(300)),
                        error: e,
                        status,
                    }
                }
            }
        };
        if let Err(e) = self.store.report_webhook(&d.id, report, now).await {
            // The row stays owed; its claim runs out and it is tried again.
            tracing::warn!(webhook = %d.id, error = %e, "webhook outcome not recorded");
        }
    }

    /// One signed POST of one owed event.
    async fn deliver_event(&self, d: &WebhookDelivery) -> Result<u16, DeliveryError> {
        // Refused before the secret is looked up: a bad target is final.
        check_target(&d.url, self.allow_private).map_err(DeliveryError::TargetRefused)?;
        let secret = self
            .store
            .webhook_secret(d.user_id, new_secret())
            .await
            .map_err(|e| DeliveryError::Send(format!("no webhook secret: {e}")))?;
        // The body is the same on every retry: the event's own time, the
        // job as it was then.
        let body = serde_json::json!({
            "type": d.event_type,
            "timestamp": d.at,
            "data": JobView::of(&d.job, None),
        })
        .to_string();
        self.deliver_once(&d.url, &d.id, &body, &secret).await
    }

    /// One signed POST of `body` to `target`. The name is resolved once,
    /// every address it gives is checked, and the connection goes to a
    /// checked address (the request still names the host, for `Host` and
    /// TLS), so a second lookup cannot steer it elsewhere. Redirects are
    /// not followed: a 3xx is a failed delivery.
    pub async fn deliver_once(
        &self,
        target: &str,
        id: &str,
        body: &str,
        secret: &str,
    ) -> Result<u16, DeliveryError> {
        let url = check_target(target, self.allow_private).map_err(DeliveryError::TargetRefused)?;
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = match url.host() {
            Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
            Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
            Some(url::Host::Domain(name)) => {
                let found = (self.resolver)(name.to_owned(), port).await.map_err(|e| {
                    DeliveryError::Resolve {
                        host: name.to_owned(),
                        error: e.to_string(),
                    }
                })?;
                if found.is_empty() {
                    return Err(DeliveryError::Resolve {
                        host: name.to_owned(),
                        error: "no addresses".into(),
                    });
                }
                found
            }
            None => {
                return Err(DeliveryError::TargetRefused(
                    "webhook_url needs a host".into(),
                ))
            }
        };
        if !self.allow_private {
            // One bad address refuses the name: which one a client would
            // pick is not ours to guess.
            for addr in &addrs {
                if let Some(range) = refused_address(addr.ip()) {
                    return Err(DeliveryError::ResolvesToSpecial {
                        host: url.host_str().unwrap_or_default().to_owned(),
                        ip: addr.ip(),
                        range,
                    });
                }
            }
        }
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign(secret, id, timestamp, body).map_err(DeliveryError::Signing)?;
        let mut connector = awc::Connector::new();
        if url.scheme() == "https" {
            connector = connector.rustls_0_23(tls_config()?);
        }
        let client = awc::Client::builder()
            .connector(connector)
            .disable_redirects()
            .timeout(DELIVERY_TIMEOUT)
            .finish();
        let mut last = DeliveryError::Send("no address to connect to".into());
        for addr in addrs {
            let sent = client
                .post(url.as_str())
                .address(addr)
                .insert_header(("content-type", "application/json"))
                .insert_header(("webhook-id", id))
                .insert_header(("webhook-timestamp", timestamp.to_string()))
                .insert_header(("webhook-signature", signature.as_str()))
                .send_body(body.to_owned())
                .await;
            match sent {
                Ok(res) if res.status().is_success() => return Ok(res.status().as_u16()),
                Ok(res) => return Err(DeliveryError::Status(res.status().as_u16())),
                // Not reached at all: the next checked address may be.
                Err(awc::error::SendRequestError::Connect(e)) => {
                    last = DeliveryError::Send(format!("connect {addr}: {e}"));
                }
                Err(e) => return Err(DeliveryError::Send(e.to_string())),
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn private_and_odd_targets_are_refused() {
        for bad in [
            "http://127.0.0.1/x",
            "http://localhost:8080/",
            "http://10.0.0.5/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fd00::1]/",
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "not a url",
        ] {
            assert!(check_target(bad, false).is_err(), "{bad} accepted");
        }
        for bad in [
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[fec0::1]/",
            "http://198.18.0.1/",
            "http://240.0.0.1/",
            "http://224.0.0.1/",
            "http://Foo.LocalHost/",
        ] {
            assert!(check_target(bad, false).is_err(), "{bad} accepted");
        }
        assert!(check_target("https://hooks.example.com/a?b=c", false).is_ok());
        assert!(check_target("http://127.0.0.1:9000/", true).is_ok());
    }

    /// A receiver on 127.0.0.1 answering every request with `status` and
    /// `location`; returns its port and the paths it was asked for.
    async fn receiver(
        status: u16,
        location: Option<String>,
    ) -> (u16, Arc<parking_lot::Mutex<Vec<String>>>) {
        use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
        let seen: Arc<parking_lot::Mutex<Vec<String>>> = Arc::default();
        let state = seen.clone();
        let server = HttpServer::new(move || {
            let (state, location) = (state.clone(), location.clone());
            App::new().default_service(web::to(move |req: HttpRequest| {
                let (state, location) = (state.clone(), location.clone());
                async move {
                    state.lock().push(req.path().to_owned());
                    let mut res = HttpResponse::build(
                        actix_web::http::StatusCode::from_u16(status).expect("status"),
                    );
                    if let Some(l) = location {
                        res.insert_header(("location", l));
                    }
                    res.finish()
                }
            }))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .expect("bind receiver");
        let port = server.addrs()[0].port();
        actix_rt::spawn(server.run());
        (port, seen)
    }

    fn webhooks(allow_private: bool) -> Webhooks {
        let store: Arc<dyn Store> = Arc::new(admedia_actors::store::memory::MemoryStore::new());
        Webhooks::new(
            store,
            Arc::new(Metrics::new()),
            allow_private,
            Duration::from_millis(1),
        )
    }

    /// Resolves every name to `ip`.
    fn resolving_to(ip: IpAddr) -> Resolver {
        Arc::new(move |_, port| Box::pin(async move { Ok(vec![SocketAddr::new(ip, port)]) }))
    }

    #[actix_rt::test]
    async fn a_redirect_is_a_failed_delivery_and_its_target_is_never_reached() {
        for status in [301, 302, 303, 307, 308] {
            let (inner, inner_seen) = receiver(204, None).await;
            let (outer, outer_seen) =
                receiver(status, Some(format!("http://127.0.0.1:{inner}/internal"))).await;
            // Private targets allowed, so only the redirect rule can stop it.
            let hooks = webhooks(true);
            let secret = new_secret();
            let outcome = hooks
                .deliver_once(
                    &format!("http://127.0.0.1:{outer}/hook"),
                    "msg_1",
                    "{}",
                    &secret,
                )
                .await;
            assert!(
                matches!(outcome, Err(DeliveryError::Status(s)) if s == status),
                "{status}: {outcome:?}"
            );
            assert!(outcome.as_ref().is_err_and(DeliveryError::retryable));
            assert_eq!(outer_seen.lock().as_slice(), ["/hook"], "{status}");
            assert!(inner_seen.lock().is_empty(), "{status}: redirect followed");
        }
    }

    #[actix_rt::test]
    async fn a_name_resolving_to_loopback_is_refused_at_delivery() {
        let (port, seen) = receiver(204, None).await;
        let target = format!("http://hooks.example.com:{port}/hook");
        let hooks = webhooks(false).with_resolver(resolving_to("127.0.0.1".parse().expect("ip")));
        let outcome = hooks
            .deliver_once(&target, "msg_1", "{}", &new_secret())
            .await;
        assert!(
            matches!(&outcome, Err(DeliveryError::ResolvesToSpecial { range, .. }) if range.starts_with("loopback")),
            "{outcome:?}"
        );
        // Rebinding to an IPv6 special range is caught the same way.
        let hooks =
            webhooks(false).with_resolver(resolving_to("64:ff9b::7f00:1".parse().expect("ip")));
        let outcome = hooks
            .deliver_once(&target, "msg_1", "{}", &new_secret())
            .await;
        assert!(
            matches!(outcome, Err(DeliveryError::ResolvesToSpecial { .. })),
            "{outcome:?}"
        );
        assert!(
            seen.lock().is_empty(),
            "nothing reached the loopback receiver"
        );

        // The connection goes to the address that was checked, whatever the
        // name: with private targets allowed the same name reaches it, and
        // the request still names the host.
        let hooks = webhooks(true).with_resolver(resolving_to("127.0.0.1".parse().expect("ip")));
        hooks
            .deliver_once(&target, "msg_1", "{}", &new_secret())
            .await
            .expect("delivered to the resolved address");
        assert_eq!(seen.lock().as_slice(), ["/hook"]);
    }

    #[actix_rt::test]
    async fn a_literal_special_address_is_refused_without_retry() {
        let hooks = webhooks(false);
        let outcome = hooks
            .deliver_once("http://[::ffff:127.0.0.1]:9/", "msg_1", "{}", &new_secret())
            .await;
        assert!(
            matches!(&outcome, Err(DeliveryError::TargetRefused(_))),
            "{outcome:?}"
        );
        assert!(!outcome.as_ref().is_err_and(DeliveryError::retryable));
        let outcome = webhooks(false)
            .with_resolver(Arc::new(|_, _| Box::pin(async { Ok(Vec::new()) })))
            .deliver_once("http://nowhere.example.com/", "msg_1", "{}", &new_secret())
            .await;
        assert!(
            matches!(outcome, Err(DeliveryError::Resolve { .. })),
            "{outcome:?}"
        );
    }
}
