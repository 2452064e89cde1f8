//! Job webhooks, signed per Standard Webhooks.
//!
//! When a job starts running and when it ends, and it carries a
//! `webhook_url`, the event is POSTed there with the headers `webhook-id`
//! (the same on every retry of one event), `webhook-timestamp` and
//! `webhook-signature` = `v1,` + base64(HMAC-SHA256(secret, id.timestamp.body)),
//! where the secret is the user's (`GET /v1/me/webhook-secret`, `whsec_` +
//! base64 of the key bytes). A delivery that fails is retried with
//! exponential backoff. Targets must be http(s) and, unless
//! `ADMEDIA_WEBHOOK_ALLOW_PRIVATE=true`, must not be loopback, private or
//! link-local addresses — checked at submission and again, after DNS, at
//! every delivery.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use admedia_actors::events::{JobEvent, JobEventKind};
use admedia_actors::job::{Job, JobState};
use admedia_actors::store::Store;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

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

    /// Called for every job event; starts a delivery for the ones that
    /// webhooks carry.
    pub fn on_event(self: &Arc<Self>, event: &JobEvent) {
        let JobEventKind::State { state, .. } = &event.kind else {
            return;
        };
        if !(state.is_terminal() || *state == JobState::Running) {
            return;
        }
        let this = self.clone();
        let (job_id, state, attempt) = (event.job_id, *state, event.attempt);
        actix_rt::spawn(async move {
            let job = match this.store.job(job_id).await {
                Ok(Some(job)) => job,
                _ => return,
            };
            if job.spec.webhook_url.is_some() {
                this.deliver(job, state, attempt).await;
            }
        });
    }

    async fn deliver(&self, job: Job, state: JobState, attempt: u32) {
        let Some(target) = job.spec.webhook_url.clone() else {
            return;
        };
        let event_type = match state {
            JobState::Running => "job.started",
            JobState::Succeeded => "job.succeeded",
            JobState::Failed => "job.failed",
            JobState::Cancelled => "job.cancelled",
            JobState::Queued | JobState::Assigned => return,
        };
        // One id per (job, state, attempt): the same on every retry, and a
        // receiver that saw it before knows it is a replay.
        let digest = Sha256::digest(format!("{}:{}:{attempt}", job.id, state.as_str()));
        let id = format!("msg_{}", &hex::encode(digest)[..32]);
        let secret = match self.store.webhook_secret(job.user_id, new_secret()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "no webhook secret; event not sent");
                return;
            }
        };
        let payload = serde_json::json!({
            "type": event_type,
            "timestamp": chrono::Utc::now(),
            "data": JobView::of(&job, None),
        });
        let body = payload.to_string();
        let url = match check_target(&target, self.allow_private) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "webhook target refused");
                self.metrics.webhook("refused");
                return;
            }
        };
        let client = awc::Client::builder().timeout(DELIVERY_TIMEOUT).finish();
        let mut delay = self.retry_base;
        for delivery in 1..=MAX_DELIVERIES {
            let outcome = match check_resolved(&url, self.allow_private).await {
                Err(e) => Err(e),
                Ok(()) => {
                    let timestamp = chrono::Utc::now().timestamp();
                    match sign(&secret, &id, timestamp, &body) {
                        Err(e) => Err(e),
                        Ok(signature) => client
                            .post(url.as_str())
                            .insert_header(("content-type", "application/json"))
                            .insert_header(("webhook-id", id.as_str()))
                            .insert_header(("webhook-timestamp", timestamp.to_string()))
                            .insert_header(("webhook-signature", signature))
                            .send_body(body.clone())
                            .await
                            .map_err(|e| e.to_string())
                            .and_then(|res| {
                                if res.status().is_success() {
                                    Ok(())
                                } else {
                                    Err(format!("status {}", res.status()))
                                }
                            }),
                    }
                }
            };
            match outcome {
                Ok(()) => {
                    self.metrics.webhook("delivered");
                    tracing::info!(job = %job.id, webhook = %id, event = event_type, delivery, "webhook delivered");
                    return;
                }
                Err(e) => {
                    self.metrics.webhook("failed_attempt");
                    tracing::warn!(job = %job.id, webhook = %id, delivery, error = %e, "webhook delivery failed");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(300));
        }
        self.metrics.webhook("given_up");
        tracing::error!(job = %job.id, webhook = %id, "webhook given up after {MAX_DELIVERIES} deliveries");
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
        assert!(check_target("https://hooks.example.com/a?b=c", false).is_ok());
        assert!(check_target("http://127.0.0.1:9000/", true).is_ok());
    }
}
