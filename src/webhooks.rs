//! Job webhooks, signed per Standard Webhooks.
//!
//! When a job starts running and when it ends, and it carries a
//! `webhook_url`, the event is POSTed there with the headers `webhook-id`
//! (the same on every retry of one event), `webhook-timestamp` and
//! `webhook-signature` = `v1,` + base64(HMAC-SHA256(secret, id.timestamp.body)),
//! where the secret is the user's (`GET /v1/me/webhook-secret`, `whsec_` +
//! base64 of the key bytes). Deliveries are owed rows of the store's
//! outbox, written with the change that causes them, so a restart loses
//! none; one that fails is retried with exponential backoff. Targets must be http(s) and, unless
//! `ADMEDIA_WEBHOOK_ALLOW_PRIVATE=true`, must not be loopback, private or
//! link-local addresses — checked at submission and again, after DNS, at
//! every delivery.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use admedia_actors::store::outbox::{DeliveryReport, PendingWebhook};
use admedia_actors::store::writeset::WebhookDelivery;
use admedia_actors::store::Store;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::http::views::JobView;
use crate::metrics::Metrics;

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per event before it is given up (logged and counted).
const MAX_DELIVERIES: u32 = 6;

pub struct Webhooks {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    allow_private: bool,
    retry_base: Duration,
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

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1]) // carrier-grade NAT
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
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
        let private = match host {
            url::Host::Ipv4(ip) => is_private(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => is_private(IpAddr::V6(ip)),
            url::Host::Domain(d) => {
                d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost")
            }
        };
        if private {
            return Err("webhook_url must not point at a loopback or private address".into());
        }
    }
    Ok(url)
}

/// Checks where a target resolves to now, just before a delivery.
async fn check_resolved(url: &url::Url, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let host = url.host_str().ok_or("no host")?;
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?;
    for addr in addrs {
        if is_private(addr.ip()) {
            return Err(format!("{host} resolves to a private address"));
        }
    }
    Ok(())
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
        }
    }

    /// How often owed deliveries are looked for (retries, and what a
    /// restart left): the first retry delay, at most a second.
    pub fn poll_every(&self) -> Duration {
        self.retry_base.min(Duration::from_secs(1))
    }

    /// Tries one owed delivery once and records how it went: delivered,
    /// retried later with exponential backoff, or given up after
    /// [`MAX_DELIVERIES`].
    pub async fn deliver(&self, owed: PendingWebhook) {
        let d = &owed.delivery;
        let outcome = self.deliver_once(d).await;
        let now = chrono::Utc::now();
        let report = match outcome {
            Ok(()) => {
                self.metrics.webhook("delivered");
                tracing::info!(job = %d.job_id, webhook = %d.id, event = %d.event_type, delivery = owed.attempts + 1, "webhook delivered");
                DeliveryReport::Delivered
            }
            Err(DeliveryError::Refused(e)) => {
                tracing::warn!(job = %d.job_id, webhook = %d.id, error = %e, "webhook target refused");
                self.metrics.webhook("refused");
                DeliveryReport::GivenUp { error: e }
            }
            Err(DeliveryError::Failed(e)) => {
                self.metrics.webhook("failed_attempt");
                tracing::warn!(job = %d.job_id, webhook = %d.id, delivery = owed.attempts + 1, error = %e, "webhook delivery failed");
                if owed.attempts + 1 >= MAX_DELIVERIES {
                    self.metrics.webhook("given_up");
                    tracing::error!(job = %d.job_id, webhook = %d.id, "webhook given up after {MAX_DELIVERIES} deliveries");
                    DeliveryReport::GivenUp { error: e }
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
                    }
                }
            }
        };
        if let Err(e) = self.store.report_webhook(&d.id, report, now).await {
            // The row stays owed; its claim runs out and it is tried again.
            tracing::warn!(webhook = %d.id, error = %e, "webhook outcome not recorded");
        }
    }

    /// One signed POST of one event.
    async fn deliver_once(&self, d: &WebhookDelivery) -> Result<(), DeliveryError> {
        let url = check_target(&d.url, self.allow_private).map_err(DeliveryError::Refused)?;
        let secret = self
            .store
            .webhook_secret(d.user_id, new_secret())
            .await
            .map_err(|e| DeliveryError::Failed(format!("no webhook secret: {e}")))?;
        // The body is the same on every retry: the event's own time, the
        // job as it was then.
        let body = serde_json::json!({
            "type": d.event_type,
            "timestamp": d.at,
            "data": JobView::of(&d.job, None),
        })
        .to_string();
        check_resolved(&url, self.allow_private)
            .await
            .map_err(DeliveryError::Failed)?;
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign(&secret, &d.id, timestamp, &body).map_err(DeliveryError::Failed)?;
        let client = awc::Client::builder().timeout(DELIVERY_TIMEOUT).finish();
        let res = client
            .post(url.as_str())
            .insert_header(("content-type", "application/json"))
            .insert_header(("webhook-id", d.id.as_str()))
            .insert_header(("webhook-timestamp", timestamp.to_string()))
            .insert_header(("webhook-signature", signature))
            .send_body(body)
            .await
            .map_err(|e| DeliveryError::Failed(e.to_string()))?;
        if res.status().is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Failed(format!("status {}", res.status())))
        }
    }
}

/// Why a delivery did not happen.
enum DeliveryError {
    /// The target is not allowed: never retried.
    Refused(String),
    /// Tried and failed: retried.
    Failed(String),
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
        assert!(check_target("https://hooks.example.com/a?b=c", false).is_ok());
        assert!(check_target("http://127.0.0.1:9000/", true).is_ok());
    }
}
