//! A moderation provider over HTTP: any service speaking the widely used
//! moderation API shape (`POST {base}/v1/moderations` with `{"input": …}`,
//! answering `results[0].categories` flags and `category_scores`), so a
//! hosted API or a self-hosted guard model is plugged in by configuration
//! alone (`ADMEDIA_MODERATION_URL`, see `docs/content-moderation.md`).
//!
//! The built-in rules run first (they cost microseconds and never fail);
//! a prompt they allow goes to the provider. Answers are cached by the
//! prompt's SHA-256, bounded. When the provider cannot answer in time, each
//! tier's policy says whether to refuse the prompt for now (503, nothing
//! charged or counted) or to go by the rules alone.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use admedia_actors::domain::content::{
    CategoryScores, ContentPolicy, Refusal, RulesPolicy, Score, Source, Verdict,
};
use admedia_actors::domain::tier::{PerTier, Tier};
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;

/// The largest answer read from the provider.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// What to do with a prompt when the provider cannot answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WhenDown {
    /// Refuse it for now (503 `moderation-unavailable`).
    Refuse,
    /// Go by the built-in rules alone.
    Rules,
}

impl WhenDown {
    fn parse(s: &str) -> Option<WhenDown> {
        match s.trim() {
            "refuse" => Some(WhenDown::Refuse),
            "rules" => Some(WhenDown::Rules),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// The base URL; requests go to `{base}/v1/moderations`.
    pub endpoint: hyper::Uri,
    /// Sent as `Authorization: Bearer …` when set.
    pub api_key: Option<String>,
    /// Sent as `model` when set.
    pub model: Option<String>,
    pub timeout: Duration,
    /// A category is refused when its score reaches its threshold here, or
    /// `default_threshold`; with neither, when the provider flags it.
    pub thresholds: BTreeMap<String, Score>,
    pub default_threshold: Option<Score>,
    /// Answers kept, by prompt hash; 0 keeps none.
    pub cache_size: usize,
    pub when_down: PerTier<WhenDown>,
}

impl ProviderConfig {
    /// Reads the settings; `url` is `http://host[:port][/prefix]`.
    #[allow(clippy::too_many_arguments)]
    pub fn parse(
        url: &str,
        api_key: Option<String>,
        model: Option<String>,
        timeout: Duration,
        thresholds: CategoryScores,
        default_threshold: Option<Score>,
        cache_size: usize,
        when_down: WhenDownByTier,
    ) -> Result<ProviderConfig, String> {
        let base = url.trim().trim_end_matches('/');
        let lower = base.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(format!(
                "ADMEDIA_MODERATION_URL {base:?}: https is not built in; put a TLS-terminating \
                 proxy (or the guard model) on a local http:// address"
            ));
        }
        if !lower.starts_with("http://") {
            return Err(format!(
                "ADMEDIA_MODERATION_URL {base:?}: expected an http:// URL"
            ));
        }
        let endpoint: hyper::Uri = format!("{base}/v1/moderations")
            .parse()
            .map_err(|e| format!("ADMEDIA_MODERATION_URL {base:?}: {e}"))?;
        if endpoint.host().is_none_or(str::is_empty) {
            return Err(format!("ADMEDIA_MODERATION_URL {base:?}: no host"));
        }
        if timeout.is_zero() || timeout > Duration::from_secs(60) {
            return Err("ADMEDIA_MODERATION_TIMEOUT must be more than 0 and at most 60s".into());
        }
        if cache_size > 1_000_000 {
            return Err("ADMEDIA_MODERATION_CACHE must be at most 1000000".into());
        }
        Ok(ProviderConfig {
            endpoint,
            api_key: api_key.filter(|k| !k.trim().is_empty()),
            model: model.filter(|m| !m.trim().is_empty()),
            timeout,
            thresholds: thresholds.0,
            default_threshold,
            cache_size,
            when_down: when_down.0,
        })
    }
}

/// What each tier does with a prompt while the provider is down, as set:
/// `refuse`, `rules`, or per tier, `free=refuse,enterprise=rules`
/// (unnamed tiers refuse).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct WhenDownByTier(pub PerTier<WhenDown>);

impl std::str::FromStr for WhenDownByTier {
    type Err = String;
    fn from_str(raw: &str) -> Result<WhenDownByTier, String> {
        if let Some(all) = WhenDown::parse(raw) {
            return Ok(WhenDownByTier(PerTier::splat(all)));
        }
        let bad = |part: &str| format!("{part:?}: expected refuse, rules, or tier=refuse|rules");
        let mut out = PerTier::splat(WhenDown::Refuse);
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (tier, policy) = part.split_once('=').ok_or_else(|| bad(part))?;
            let tier: Tier = tier.trim().parse().map_err(|_| bad(part))?;
            out[tier] = WhenDown::parse(policy).ok_or_else(|| bad(part))?;
        }
        Ok(WhenDownByTier(out))
    }
}

#[derive(Deserialize)]
struct Answer {
    results: Vec<AnswerResult>,
}

#[derive(Deserialize)]
struct AnswerResult {
    #[serde(default)]
    categories: BTreeMap<String, bool>,
    #[serde(default)]
    category_scores: BTreeMap<String, f64>,
}

/// Our name for a provider's category (`sexual/minors` → `sexual-minors`),
/// so it fits the problem's `category` like the rules' names do.
fn category_name(raw: &str) -> String {
    let mut out: String = raw
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(64)
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "flagged".into()
    } else {
        trimmed.to_owned()
    }
}

/// A bounded map from prompt hash to answer, oldest entry evicted first.
struct Cache {
    capacity: usize,
    map: HashMap<[u8; 32], Option<Refusal>>,
    order: VecDeque<[u8; 32]>,
}

impl Cache {
    fn get(&self, key: &[u8; 32]) -> Option<Option<Refusal>> {
        self.map.get(key).cloned()
    }

    fn put(&mut self, key: [u8; 32], value: Option<Refusal>) {
        if self.capacity == 0 {
            return;
        }
        if self.map.insert(key, value).is_none() {
            self.order.push_back(key);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// The built-in rules, then the provider.
pub struct ProviderPolicy {
    config: ProviderConfig,
    rules: Arc<RulesPolicy>,
    client: Client<HttpConnector, Full<Bytes>>,
    cache: Mutex<Cache>,
    metrics: Arc<Metrics>,
}

impl ProviderPolicy {
    pub fn new(config: ProviderConfig, rules: Arc<RulesPolicy>, metrics: Arc<Metrics>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout));
        ProviderPolicy {
            cache: Mutex::new(Cache {
                capacity: config.cache_size,
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
            client: Client::builder(TokioExecutor::new()).build(connector),
            config,
            rules,
            metrics,
        }
    }

    /// One call to the provider: its refusal, `None` for allowed, or why
    /// it could not answer.
    async fn ask(&self, prompt: &str) -> Result<Option<Refusal>, String> {
        let mut body = serde_json::json!({ "input": prompt });
        if let Some(model) = &self.config.model {
            body["model"] = serde_json::Value::String(model.clone());
        }
        let mut request = hyper::Request::post(self.config.endpoint.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.config.api_key {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| format!("request: {e}"))?;
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("provider: {e}"))?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("provider answer: {e}"))?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("provider answered {status}"));
            }
            let answer: Answer = serde_json::from_slice(&bytes)
                .map_err(|e| format!("provider answer is not a moderation result: {e}"))?;
            self.judge(answer)
        };
        match tokio::time::timeout(self.config.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(TIMED_OUT.into()),
        }
    }

    /// The refusal an answer makes under the configured thresholds: the
    /// highest-scoring category over its threshold.
    fn judge(&self, answer: Answer) -> Result<Option<Refusal>, String> {
        let first = answer
            .results
            .into_iter()
            .next()
            .ok_or("provider answer has no results")?;
        let mut scores = BTreeMap::new();
        for (name, value) in &first.category_scores {
            let score = Score::new(*value)
                .ok_or_else(|| format!("provider score {value} for {name:?} is not in 0..=1"))?;
            scores.insert(name.clone(), score);
        }
        let mut worst: Option<(&str, Score)> = None;
        let names: std::collections::BTreeSet<&String> =
            first.categories.keys().chain(scores.keys()).collect();
        for name in names {
            let score = scores.get(name).copied();
            let threshold = self
                .config
                .thresholds
                .get(name)
                .copied()
                .or(self.config.default_threshold);
            let flagged = match (threshold, score) {
                (Some(t), Some(s)) => s >= t,
                // A threshold but no score: trust the provider's flag.
                _ => first.categories.get(name).copied().unwrap_or(false),
            };
            if flagged {
                let s = score.unwrap_or(Score::ONE);
                if worst.is_none_or(|(_, w)| s > w) {
                    worst = Some((name, s));
                }
            }
        }
        Ok(worst.map(|(name, score)| Refusal {
            category: category_name(name),
            confidence: score,
            source: Source::Provider,
            matched: Vec::new(),
            scores: scores.clone(),
        }))
    }
}

const TIMED_OUT: &str = "provider did not answer in time";

#[async_trait]
impl ContentPolicy for ProviderPolicy {
    async fn check(&self, prompt: &str, tier: Tier) -> Verdict {
        let by_rules = self.rules.evaluate(prompt);
        if matches!(by_rules, Verdict::Rejected(_)) {
            self.metrics.moderation_decision("rules", "rejected");
            return by_rules;
        }
        let key: [u8; 32] = Sha256::digest(prompt.as_bytes()).into();
        if let Some(cached) = self.cache.lock().get(&key) {
            self.metrics.moderation_decision(
                "cache",
                if cached.is_some() {
                    "rejected"
                } else {
                    "allowed"
                },
            );
            return cached.map_or(Verdict::Allowed, Verdict::Rejected);
        }
        let started = Instant::now();
        match self.ask(prompt).await {
            Ok(answer) => {
                self.metrics.moderation_call("ok", started.elapsed());
                self.metrics.moderation_decision(
                    "provider",
                    if answer.is_some() {
                        "rejected"
                    } else {
                        "allowed"
                    },
                );
                self.cache.lock().put(key, answer.clone());
                answer.map_or(Verdict::Allowed, Verdict::Rejected)
            }
            Err(reason) => {
                let outcome = if reason == TIMED_OUT {
                    "timeout"
                } else {
                    "error"
                };
                self.metrics.moderation_call(outcome, started.elapsed());
                tracing::warn!(reason = %reason, tier = tier.as_str(), "moderation provider unavailable");
                match self.config.when_down[tier] {
                    WhenDown::Refuse => {
                        self.metrics.moderation_decision("fallback", "unavailable");
                        Verdict::Unavailable(reason)
                    }
                    WhenDown::Rules => {
                        self.metrics.moderation_decision("fallback", "allowed");
                        by_rules
                    }
                }
            }
        }
    }

    fn depends_on_tier(&self) -> bool {
        self.config
            .when_down
            .values()
            .any(|w| *w != self.config.when_down[Tier::Free])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let ok = |url: &str, thresholds: &str, down: &str| {
            ProviderConfig::parse(
                url,
                None,
                None,
                Duration::from_secs(1),
                thresholds.parse()?,
                None,
                10,
                down.parse()?,
            )
        };
        assert!(ok("http://127.0.0.1:9000", "", "refuse").is_ok());
        let c = ok(
            "http://guard.internal/",
            "sexual/minors=0.1, violence=0.8",
            "free=refuse,enterprise=rules",
        )
        .unwrap();
        assert_eq!(
            c.endpoint.to_string(),
            "http://guard.internal/v1/moderations"
        );
        assert_eq!(c.thresholds["sexual/minors"].get(), 0.1);
        assert_eq!(
            c.when_down,
            PerTier::from([
                WhenDown::Refuse,
                WhenDown::Refuse,
                WhenDown::Refuse,
                WhenDown::Rules
            ])
        );
        for (url, thresholds, down) in [
            ("https://api.example.com", "", "refuse"),
            ("ftp://x", "", "refuse"),
            ("http://", "", "refuse"),
            ("http://x", "violence", "refuse"),
            ("http://x", "violence=2", "refuse"),
            ("http://x", "", "sometimes"),
            ("http://x", "", "gold=rules"),
            ("http://x", "", "free=maybe"),
        ] {
            assert!(
                ok(url, thresholds, down).is_err(),
                "{url} {thresholds} {down}"
            );
        }
        assert!(ProviderConfig::parse(
            "http://x",
            None,
            None,
            Duration::ZERO,
            CategoryScores::default(),
            None,
            1,
            WhenDownByTier(PerTier::splat(WhenDown::Rules)),
        )
        .is_err());
    }

    #[test]
    fn when_down_is_one_policy_or_one_per_tier() {
        assert_eq!(
            " rules ".parse::<WhenDownByTier>(),
            Ok(WhenDownByTier(PerTier::splat(WhenDown::Rules)))
        );
        let by_tier: WhenDownByTier = "basic=rules".parse().unwrap();
        assert_eq!(by_tier.0[Tier::Basic], WhenDown::Rules);
        assert_eq!(by_tier.0[Tier::Free], WhenDown::Refuse, "unnamed refuse");
    }

    #[test]
    fn provider_categories_become_ours() {
        assert_eq!(category_name("sexual/minors"), "sexual-minors");
        assert_eq!(
            category_name("Self-Harm/Instructions"),
            "self-harm-instructions"
        );
        assert_eq!(category_name("S1: Violent Crimes"), "s1-violent-crimes");
        assert_eq!(category_name("///"), "flagged");
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut c = Cache {
            capacity: 2,
            map: HashMap::new(),
            order: VecDeque::new(),
        };
        c.put([1; 32], None);
        c.put([2; 32], None);
        c.put([3; 32], None);
        assert!(c.get(&[1; 32]).is_none(), "oldest evicted");
        assert!(c.get(&[3; 32]).is_some());
        assert_eq!(c.map.len(), 2);
    }
}
