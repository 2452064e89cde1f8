//! Per-user submission rate limits by tier.
//!
//! A sliding window approximated from two fixed windows (the previous
//! window's count weighted by how much of it still overlaps): exact enough
//! to stop a burst at a window edge, and one atomic Redis script per check.
//! With `REDIS_URL` the count is shared by every node; without it each
//! node counts alone. If Redis fails, submissions are let through with a
//! warning and a metric: the money path never depends on Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use admedia_actors::ids::UserId;
use admedia_actors::tier::Tier;
use bb8_redis::RedisConnectionManager;
use parking_lot::Mutex;

use crate::metrics::Metrics;

const WINDOW: Duration = Duration::from_secs(60);

/// Submissions per minute per user, by tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits(pub [u32; 4]);

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits([60, 300, 1200, 6000])
    }
}

impl std::str::FromStr for RateLimits {
    type Err = String;

    /// `free=60,basic=300,professional=1200,enterprise=6000`; omitted tiers
    /// keep their default; 0 means unlimited.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut limits = RateLimits::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (tier, n) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected tier=per_minute"))?;
            let tier: Tier = tier.trim().parse().map_err(|e| format!("{e}"))?;
            let n: u32 = n
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: expected a whole number"))?;
            limits.0[tier.index()] = n;
        }
        Ok(limits)
    }
}

pub enum Decision {
    /// Let through; `spent` is the unit counted, to give back with
    /// [`RateLimiter::release`] if the submission is then refused.
    Allowed {
        spent: Option<Spent>,
    },
    Limited {
        retry_after: u64,
    },
}

/// One counted submission: its user and the window it was counted in.
#[derive(Clone, Copy, Debug)]
pub struct Spent {
    user: UserId,
    window: u64,
}

/// Where the window is now: its index, and how far into it we are.
fn window_now() -> (u64, f64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let w = WINDOW.as_millis() as u64;
    let ms = now.as_millis() as u64;
    (ms / w, (ms % w) as f64 / w as f64)
}

fn retry_after(progress: f64) -> u64 {
    ((1.0 - progress) * WINDOW.as_secs_f64()).ceil().max(1.0) as u64
}

pub struct RateLimiter {
    limits: RateLimits,
    backend: Backend,
    metrics: Arc<Metrics>,
}

enum Backend {
    Local(Mutex<HashMap<UserId, (u64, u32, u32)>>),
    Redis {
        pool: bb8::Pool<RedisConnectionManager>,
        script: redis::Script,
        prefix: String,
    },
}

/// Atomically: refuse when the weighted count is at the limit, else count.
const SLIDING_WINDOW: &str = r#"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
if previous * tonumber(ARGV[2]) + current >= tonumber(ARGV[1]) then
  return 0
end
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// Atomically: take one back from a count that is still there.
const RELEASE: &str = r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then
  return redis.call('DECR', KEYS[1])
end
return 0
"#;

impl RateLimiter {
    pub fn local(limits: RateLimits, metrics: Arc<Metrics>) -> RateLimiter {
        RateLimiter {
            limits,
            backend: Backend::Local(Mutex::new(HashMap::new())),
            metrics,
        }
    }

    /// Counts in Redis under `<prefix>:rate:<user>:<window>`.
    pub async fn redis(
        url: &str,
        prefix: &str,
        limits: RateLimits,
        metrics: Arc<Metrics>,
    ) -> Result<RateLimiter, String> {
        let manager = RedisConnectionManager::new(url).map_err(|e| format!("REDIS_URL: {e}"))?;
        let pool = bb8::Pool::builder()
            .max_size(8)
            .connection_timeout(Duration::from_millis(500))
            .build_unchecked(manager);
        Ok(RateLimiter {
            limits,
            backend: Backend::Redis {
                pool,
                script: redis::Script::new(SLIDING_WINDOW),
                prefix: format!("{prefix}:rate"),
            },
            metrics,
        })
    }

    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Local(_) => "local",
            Backend::Redis { .. } => "redis",
        }
    }

    pub async fn check(&self, user: UserId, tier: Tier) -> Decision {
        let limit = self.limits.0[tier.index()];
        if limit == 0 {
            return Decision::Allowed { spent: None };
        }
        let (window, progress) = window_now();
        let allowed = match &self.backend {
            Backend::Local(counts) => {
                let mut counts = counts.lock();
                let entry = counts.entry(user).or_insert((window, 0, 0));
                if entry.0 != window {
                    let previous = if entry.0 + 1 == window { entry.2 } else { 0 };
                    *entry = (window, previous, 0);
                }
                let weighted = f64::from(entry.1) * (1.0 - progress) + f64::from(entry.2);
                if weighted >= f64::from(limit) {
                    false
                } else {
                    entry.2 += 1;
                    true
                }
            }
            Backend::Redis {
                pool,
                script,
                prefix,
            } => {
                match self
                    .check_redis(pool, script, prefix, user, window, progress, limit)
                    .await
                {
                    Ok(allowed) => allowed,
                    Err(e) => {
                        self.metrics.redis_error("rate_limit");
                        tracing::warn!(error = %e, "Redis unreachable; submission not rate limited");
                        true
                    }
                }
            }
        };
        if allowed {
            Decision::Allowed {
                spent: Some(Spent { user, window }),
            }
        } else {
            self.metrics.rate_limited();
            Decision::Limited {
                retry_after: retry_after(progress),
            }
        }
    }

    /// Gives back a counted submission that was refused before it was
    /// accepted (a full queue, too few credits, a refused prompt): only
    /// accepted submissions spend the budget. A unit counted in a window
    /// that has passed is left alone, as that window no longer limits much.
    pub async fn release(&self, spent: Spent) {
        match &self.backend {
            Backend::Local(counts) => {
                let mut counts = counts.lock();
                if let Some(entry) = counts.get_mut(&spent.user) {
                    if entry.0 == spent.window {
                        entry.2 = entry.2.saturating_sub(1);
                    }
                }
            }
            Backend::Redis { pool, prefix, .. } => {
                let key = format!("{prefix}:{}:{}", spent.user, spent.window);
                let result: Result<(), String> = async {
                    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                    redis::Script::new(RELEASE)
                        .key(key)
                        .invoke_async::<i64>(&mut *conn)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
                .await;
                if let Err(e) = result {
                    self.metrics.redis_error("rate_limit");
                    tracing::warn!(error = %e, "Redis unreachable; a refused submission stays counted");
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn check_redis(
        &self,
        pool: &bb8::Pool<RedisConnectionManager>,
        script: &redis::Script,
        prefix: &str,
        user: UserId,
        window: u64,
        progress: f64,
        limit: u32,
    ) -> Result<bool, String> {
        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
        let current = format!("{prefix}:{user}:{window}");
        let previous = format!("{prefix}:{user}:{}", window.saturating_sub(1));
        let ttl_ms = (WINDOW.as_millis() * 2) as u64;
        let allowed: i64 = script
            .key(current)
            .key(previous)
            .arg(limit)
            .arg(1.0 - progress)
            .arg(ttl_ms)
            .invoke_async(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(allowed == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_reject_nonsense() {
        let l: RateLimits = "free=5, enterprise=0".parse().unwrap();
        assert_eq!(l.0, [5, 300, 1200, 0]);
        assert!("gold=5".parse::<RateLimits>().is_err());
        assert!("free=x".parse::<RateLimits>().is_err());
        assert!("free".parse::<RateLimits>().is_err());
    }

    #[tokio::test]
    async fn local_limiter_stops_a_burst_per_user() {
        let limiter = RateLimiter::local("free=3".parse().unwrap(), Arc::new(Metrics::new()));
        let (a, b) = (UserId::generate(), UserId::generate());
        let mut allowed = 0;
        for _ in 0..10 {
            if matches!(limiter.check(a, Tier::Free).await, Decision::Allowed { .. }) {
                allowed += 1;
            }
        }
        // At most the limit, at least the limit minus what the previous
        // (empty) window could weigh.
        assert_eq!(allowed, 3);
        assert!(matches!(
            limiter.check(b, Tier::Free).await,
            Decision::Allowed { .. }
        ));
        match limiter.check(a, Tier::Free).await {
            Decision::Limited { retry_after } => assert!((1..=60).contains(&retry_after)),
            Decision::Allowed { .. } => panic!("over the limit"),
        }
    }

    #[tokio::test]
    async fn a_released_unit_can_be_spent_again() {
        let limiter = RateLimiter::local("free=2".parse().unwrap(), Arc::new(Metrics::new()));
        let user = UserId::generate();
        let mut spent = Vec::new();
        for _ in 0..2 {
            match limiter.check(user, Tier::Free).await {
                Decision::Allowed { spent: Some(s) } => spent.push(s),
                _ => panic!("within the limit"),
            }
        }
        assert!(matches!(
            limiter.check(user, Tier::Free).await,
            Decision::Limited { .. }
        ));
        // Both refused after counting: the budget is whole again.
        for s in spent {
            limiter.release(s).await;
        }
        for _ in 0..2 {
            assert!(matches!(
                limiter.check(user, Tier::Free).await,
                Decision::Allowed { spent: Some(_) }
            ));
        }
    }
}
