//! Limits per client address against guessing and bulk sign-ups: failed
//! authentications (admin API, console sign-in, worker connect) and
//! registrations. Counted through Redis when there is one, so every node
//! sees the same count, else in this process (see `crate::ratelimit`).
//!
//! A failed authentication is counted; a successful one is not, and
//! costs one look at the count. Once an address reaches the limit, every
//! authentication from it is answered `429` until the window moves on,
//! whether the token is right or not: otherwise a guesser would still
//! learn which guess was right.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpRequest;
use bb8_redis::RedisConnectionManager;

use crate::http::problem::ApiError;
use crate::metrics::Metrics;
use crate::ratelimit::{Decision, Mode, WindowCounter};

const AUTH_WINDOW: Duration = Duration::from_secs(60);
const REGISTRATION_WINDOW: Duration = Duration::from_secs(3600);

pub struct ClientLimits {
    failed_auth: WindowCounter,
    failed_auth_limit: u32,
    registrations: WindowCounter,
    registration_limit: u32,
}

/// The address a limit counts against: the peer's IPv4 address, or the
/// /64 network of an IPv6 one (a single host usually has the whole /64).
pub fn client_key(req: &HttpRequest) -> String {
    match req.peer_addr().map(|a| a.ip()) {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        None => "unknown".into(),
    }
}

impl ClientLimits {
    /// `redis`: the node's pool when `REDIS_URL` is set.
    pub fn new(
        redis: Option<bb8::Pool<RedisConnectionManager>>,
        prefix: &str,
        failed_auth_per_minute: u32,
        registrations_per_hour: u32,
        metrics: Arc<Metrics>,
    ) -> ClientLimits {
        let counter = |name: &str, window| match &redis {
            Some(pool) => WindowCounter::redis(
                pool.clone(),
                &format!("{prefix}:{name}"),
                window,
                metrics.clone(),
            ),
            None => WindowCounter::local(window, metrics.clone()),
        };
        ClientLimits {
            failed_auth: counter("auth-failures", AUTH_WINDOW),
            failed_auth_limit: failed_auth_per_minute,
            registrations: counter("registrations", REGISTRATION_WINDOW),
            registration_limit: registrations_per_hour,
        }
    }

    /// Refuses `client` while it is over its failed-authentication limit.
    pub async fn check_auth(&self, client: &str) -> Result<(), ApiError> {
        match self
            .failed_auth
            .apply(client, self.failed_auth_limit, Mode::Peek)
            .await
        {
            Decision::Allowed { .. } => Ok(()),
            Decision::Limited { retry_after } => Err(ApiError::RateLimited {
                detail: format!(
                    "too many failed authentications from this address; retry in {retry_after} s"
                ),
                retry_after,
            }),
        }
    }

    /// Counts a failed authentication from `client`.
    pub async fn auth_failed(&self, client: &str) {
        self.failed_auth
            .apply(client, self.failed_auth_limit, Mode::Record)
            .await;
        tracing::info!(client, "failed authentication");
    }

    /// Counts a registration from `client`, or refuses it over the limit.
    pub async fn register(&self, client: &str) -> Result<(), ApiError> {
        match self
            .registrations
            .apply(client, self.registration_limit, Mode::Count)
            .await
        {
            Decision::Allowed { .. } => Ok(()),
            Decision::Limited { retry_after } => Err(ApiError::RateLimited {
                detail: format!(
                    "too many registrations from this address; retry in {retry_after} s"
                ),
                retry_after,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(auth: u32, registrations: u32) -> ClientLimits {
        ClientLimits::new(None, "test", auth, registrations, Arc::new(Metrics::new()))
    }

    #[tokio::test]
    async fn failures_block_the_address_and_successes_cost_nothing() {
        let l = limits(3, 0);
        for _ in 0..100 {
            // Looking is free: a client that always succeeds is never held up.
            l.check_auth("10.0.0.1").await.expect("not blocked");
        }
        for _ in 0..3 {
            l.check_auth("10.0.0.1").await.expect("not blocked yet");
            l.auth_failed("10.0.0.1").await;
        }
        match l.check_auth("10.0.0.1").await {
            Err(ApiError::RateLimited { retry_after, .. }) => {
                assert!((1..=60).contains(&retry_after))
            }
            other => panic!("expected 429, got {other:?}"),
        }
        l.check_auth("10.0.0.2")
            .await
            .expect("another address is not blocked");
        // No limit at all with 0.
        let open = limits(0, 0);
        for _ in 0..50 {
            open.auth_failed("10.0.0.1").await;
        }
        open.check_auth("10.0.0.1").await.expect("unlimited");
    }

    #[tokio::test]
    async fn registrations_are_counted_per_address() {
        let l = limits(0, 2);
        l.register("a").await.expect("first");
        l.register("a").await.expect("second");
        assert!(matches!(
            l.register("a").await,
            Err(ApiError::RateLimited { .. })
        ));
        l.register("b").await.expect("another address");
    }
}
