//! Per-user submission rate limits by tier.
//!
//! A sliding window approximated from two fixed windows (the previous
//! window's count weighted by how much of it still overlaps): exact enough
//! to stop a burst at a window edge, and one atomic Redis script per check.
//! With `REDIS_URL` the count is shared by every node; without it each
//! node counts alone. If Redis fails, submissions are let through with a
//! warning and a metric: the money path never depends on Redis. Counters
//! that guard against abuse (failed logins, registrations) count in the
//! process meanwhile instead, so their limit never simply lapses.
//! [`WindowCounter`] is the counting itself, also used for failed
//! logins and registrations per client address.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use admedia_actors::domain::ids::UserId;
use admedia_actors::domain::tier::{parse_tier_pairs, PerTier, Tier};
use bb8_redis::RedisConnectionManager;
use parking_lot::Mutex;

use crate::metrics::Metrics;

const WINDOW: Duration = Duration::from_secs(60);

/// Submissions per minute per user, by tier; 0 is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits(pub PerTier<u32>);

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits(PerTier::from([60, 300, 1200, 6000]))
    }
}

impl std::str::FromStr for RateLimits {
    type Err = String;

    /// `free=60,basic=300,professional=1200,enterprise=6000`; omitted tiers
    /// keep their default; 0 means unlimited.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let named = parse_tier_pairs(s, "tier=per_minute", |n| {
            n.parse::<u32>()
                .map_err(|_| "expected a whole number".to_owned())
        })?;
        Ok(RateLimits(named.or(RateLimits::default().0)))
    }
}

pub enum Decision {
    /// Let through; `spent` is the unit counted, to give back with
    /// [`WindowCounter::release`] if the event is then refused.
    Allowed {
        spent: Option<Spent>,
    },
    Limited {
        retry_after: u64,
    },
}

/// One counted event: its key and the window it was counted in.
#[derive(Clone, Debug)]
pub struct Spent {
    key: String,
    window: u64,
    /// Where the unit was counted, so it is given back there and only
    /// there (Redis may have failed, or come back, in between).
    in_redis: bool,
}

/// What one call does to a key's count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Counts the event if the key is under its limit (a submission).
    Count,
    /// Only looks: is the key under its limit?
    Peek,
    /// Counts the event whatever the count (a failed login).
    Record,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Count => "count",
            Mode::Peek => "peek",
            Mode::Record => "record",
        }
    }
}

/// Where the window is now: its index, and how far into it we are.
fn window_now(window: Duration) -> (u64, f64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let w = (window.as_millis() as u64).max(1);
    let ms = now.as_millis() as u64;
    (ms / w, (ms % w) as f64 / w as f64)
}

fn retry_after(window: Duration, progress: f64) -> u64 {
    ((1.0 - progress) * window.as_secs_f64()).ceil().max(1.0) as u64
}

/// Keys kept by the in-process counter before stale ones are dropped.
const LOCAL_KEYS_BEFORE_PRUNE: usize = 65_536;

/// Counts events per key in a sliding window: in Redis when there is one
/// (shared by every node), else in this process.
pub struct WindowCounter {
    window: Duration,
    /// When Redis fails: count in this process (true) or allow (false).
    local_when_redis_fails: bool,
    local: Mutex<HashMap<String, (u64, u32, u32)>>,
    redis: Option<RedisCounter>,
    metrics: Arc<Metrics>,
}

struct RedisCounter {
    pool: bb8::Pool<RedisConnectionManager>,
    script: redis::Script,
    prefix: String,
}

/// Atomically: is the weighted count under the limit; count per `ARGV[4]`.
const SLIDING_WINDOW: &str = r#"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local under = previous * tonumber(ARGV[2]) + current < tonumber(ARGV[1])
if ARGV[4] == 'record' or (ARGV[4] == 'count' and under) then
  redis.call('INCR', KEYS[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
if under then return 1 else return 0 end
"#;

/// Atomically: take one back from a count that is still there.
const RELEASE: &str = r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then
  return redis.call('DECR', KEYS[1])
end
return 0
"#;

/// A pool for every Redis-backed counter of this node.
pub fn redis_pool(url: &str) -> Result<bb8::Pool<RedisConnectionManager>, String> {
    let manager = RedisConnectionManager::new(url).map_err(|e| format!("REDIS_URL: {e}"))?;
    Ok(bb8::Pool::builder()
        .max_size(8)
        .connection_timeout(Duration::from_millis(500))
        .build_unchecked(manager))
}

impl WindowCounter {
    pub fn local(window: Duration, metrics: Arc<Metrics>) -> WindowCounter {
        WindowCounter {
            window,
            local_when_redis_fails: true,
            local: Mutex::new(HashMap::new()),
            redis: None,
            metrics,
        }
    }

    /// Counts in Redis under keys starting with `prefix`.
    pub fn redis(
        pool: bb8::Pool<RedisConnectionManager>,
        prefix: &str,
        window: Duration,
        metrics: Arc<Metrics>,
    ) -> WindowCounter {
        WindowCounter {
            redis: Some(RedisCounter {
                pool,
                script: redis::Script::new(SLIDING_WINDOW),
                prefix: prefix.to_owned(),
            }),
            ..WindowCounter::local(window, metrics)
        }
    }

    /// Lets events through while Redis fails, instead of counting them in
    /// this process.
    pub fn allow_when_redis_fails(mut self) -> WindowCounter {
        self.local_when_redis_fails = false;
        self
    }

    pub fn backend(&self) -> &'static str {
        if self.redis.is_some() {
            "redis"
        } else {
            "local"
        }
    }

    /// Applies `mode` to `key`'s count against `limit` (0: unlimited).
    pub async fn apply(&self, key: &str, limit: u32, mode: Mode) -> Decision {
        if limit == 0 {
            return Decision::Allowed { spent: None };
        }
        let (window, progress) = window_now(self.window);
        // `Some(in_redis)`: where the event was counted, if it was.
        let (under, counted_in) = match &self.redis {
            Some(redis) => match self
                .apply_redis(redis, key, window, progress, limit, mode)
                .await
            {
                Ok(under) => (under, Some(true)),
                Err(e) if self.local_when_redis_fails => {
                    self.metrics.redis_error("rate_limit");
                    tracing::warn!(error = %e, "Redis unreachable; counting in this process meanwhile");
                    let under = self.apply_local(key, window, progress, limit, mode);
                    (under, Some(false))
                }
                Err(e) => {
                    self.metrics.redis_error("rate_limit");
                    tracing::warn!(error = %e, "Redis unreachable; not rate limited");
                    (true, None)
                }
            },
            None => (
                self.apply_local(key, window, progress, limit, mode),
                Some(false),
            ),
        };
        if under {
            let counted = mode == Mode::Count || mode == Mode::Record;
            Decision::Allowed {
                spent: counted_in.filter(|_| counted).map(|in_redis| Spent {
                    key: key.to_owned(),
                    window,
                    in_redis,
                }),
            }
        } else {
            Decision::Limited {
                retry_after: retry_after(self.window, progress),
            }
        }
    }

    /// Gives back a counted event that was then refused (a submission
    /// refused for a full queue, too few credits or its prompt): only
    /// accepted submissions spend the budget. A unit counted in a window
    /// that has passed is left alone, as that window no longer limits much.
    pub async fn release(&self, spent: Spent) {
        if spent.in_redis {
            let Some(redis) = &self.redis else {
                return;
            };
            let key = format!("{}:{}:{}", redis.prefix, spent.key, spent.window);
            let result: Result<(), String> = async {
                let mut conn = redis.pool.get().await.map_err(|e| e.to_string())?;
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
                tracing::warn!(error = %e, "Redis unreachable; a refused event stays counted");
            }
            return;
        }
        let mut counts = self.local.lock();
        if let Some(entry) = counts.get_mut(&spent.key) {
            if entry.0 == spent.window {
                entry.2 = entry.2.saturating_sub(1);
            }
        }
    }

    fn apply_local(&self, key: &str, window: u64, progress: f64, limit: u32, mode: Mode) -> bool {
        let mut counts = self.local.lock();
        if counts.len() >= LOCAL_KEYS_BEFORE_PRUNE && !counts.contains_key(key) {
            // Only the current and previous windows weigh anything.
            counts.retain(|_, e| e.0 + 1 >= window);
        }
        let entry = counts.entry(key.to_owned()).or_insert((window, 0, 0));
        if entry.0 != window {
            let previous = if entry.0 + 1 == window { entry.2 } else { 0 };
            *entry = (window, previous, 0);
        }
        let weighted = f64::from(entry.1) * (1.0 - progress) + f64::from(entry.2);
        let under = weighted < f64::from(limit);
        if mode == Mode::Record || (mode == Mode::Count && under) {
            entry.2 = entry.2.saturating_add(1);
        }
        under
    }

    async fn apply_redis(
        &self,
        redis: &RedisCounter,
        key: &str,
        window: u64,
        progress: f64,
        limit: u32,
        mode: Mode,
    ) -> Result<bool, String> {
        let mut conn = redis.pool.get().await.map_err(|e| e.to_string())?;
        let current = format!("{}:{key}:{window}", redis.prefix);
        let previous = format!("{}:{key}:{}", redis.prefix, window.saturating_sub(1));
        let ttl_ms = (self.window.as_millis() * 2) as u64;
        let under: i64 = redis
            .script
            .key(current)
            .key(previous)
            .arg(limit)
            .arg(1.0 - progress)
            .arg(ttl_ms)
            .arg(mode.as_str())
            .invoke_async(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(under == 1)
    }
}

/// Submissions per minute per user, by tier.
pub struct RateLimiter {
    limits: RateLimits,
    counter: WindowCounter,
    metrics: Arc<Metrics>,
}

impl RateLimiter {
    pub fn local(limits: RateLimits, metrics: Arc<Metrics>) -> RateLimiter {
        RateLimiter {
            limits,
            counter: WindowCounter::local(WINDOW, metrics.clone()),
            metrics,
        }
    }

    /// Counts in Redis under `<prefix>:rate:<user>:<window>`.
    pub fn redis(
        pool: bb8::Pool<RedisConnectionManager>,
        prefix: &str,
        limits: RateLimits,
        metrics: Arc<Metrics>,
    ) -> RateLimiter {
        RateLimiter {
            limits,
            counter: WindowCounter::redis(pool, &format!("{prefix}:rate"), WINDOW, metrics.clone())
                .allow_when_redis_fails(),
            metrics,
        }
    }

    pub fn backend(&self) -> &'static str {
        self.counter.backend()
    }

    pub async fn check(&self, user: UserId, tier: Tier) -> Decision {
        let limit = self.limits.0[tier];
        let decision = self
            .counter
            .apply(&user.to_string(), limit, Mode::Count)
            .await;
        if matches!(decision, Decision::Limited { .. }) {
            self.metrics.rate_limited();
        }
        decision
    }

    /// Gives back a submission counted by [`RateLimiter::check`] that was
    /// then refused.
    pub async fn release(&self, spent: Spent) {
        self.counter.release(spent).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_reject_nonsense() {
        let l: RateLimits = "free=5, enterprise=0".parse().unwrap();
        assert_eq!(l.0, PerTier::from([5, 300, 1200, 0]));
        assert_eq!("".parse::<RateLimits>(), Ok(RateLimits::default()));
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

    /// A unit is given back where it was counted: nothing when Redis was
    /// down and the event let through uncounted, this process's count when
    /// it counted meanwhile.
    #[tokio::test]
    async fn a_unit_records_where_it_was_counted() {
        let metrics = Arc::new(Metrics::new());
        let down = || redis_pool("redis://127.0.0.1:1/").expect("pool");
        let uncounted =
            WindowCounter::redis(down(), "t", WINDOW, metrics.clone()).allow_when_redis_fails();
        assert!(matches!(
            uncounted.apply("k", 5, Mode::Count).await,
            Decision::Allowed { spent: None }
        ));
        let fallback = WindowCounter::redis(down(), "t", WINDOW, metrics);
        match fallback.apply("k", 1, Mode::Count).await {
            Decision::Allowed { spent: Some(s) } => {
                assert!(!s.in_redis);
                assert!(matches!(
                    fallback.apply("k", 1, Mode::Count).await,
                    Decision::Limited { .. }
                ));
                fallback.release(s).await;
                assert!(matches!(
                    fallback.apply("k", 1, Mode::Count).await,
                    Decision::Allowed { spent: Some(_) }
                ));
            }
            _ => panic!("counted in this process"),
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
