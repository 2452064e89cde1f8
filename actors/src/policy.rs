//! The platform's policies (its terms of service) as configuration and
//! run-time state: price notice (ToS 4.5), membership gifts (ToS 5.3), the
//! content policy and automatic suspension (ToS 3.2, 9.2), and how often
//! the sweep (`orchestrator::sweep`) reloads prices and grants the monthly
//! gifts that have come due.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::content::outputs::OutputThresholds;
use crate::domain::content::{ContentPolicy, Score};
use crate::domain::payments::GiftTable;
use crate::domain::price_schedule::PriceBook;
use crate::domain::pricing::PriceTable;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformConfig {
    /// The least notice of a price change (ToS 4.5).
    pub price_notice: Duration,
    /// Gift credits per paid month, by tier.
    pub gifts: GiftTable,
    /// Refused prompts within `violation_window` that suspend the account
    /// (ToS 9.2); 0 never suspends.
    pub violations_before_suspend: u32,
    pub violation_window: Duration,
    /// Only refusals at least this sure count toward suspension: a
    /// borderline match is refused but not held against the account.
    pub suspend_min_confidence: Score,
    /// The safety-label scores that withhold an output.
    pub output_thresholds: OutputThresholds,
    /// How often due gifts are granted and the price table reloaded.
    pub sweep_every: Duration,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            price_notice: Duration::from_secs(7 * 86_400),
            gifts: GiftTable::default(),
            violations_before_suspend: 5,
            violation_window: Duration::from_secs(86_400),
            suspend_min_confidence: Score::new(0.9).unwrap_or(Score::ONE),
            output_thresholds: OutputThresholds::default(),
            sweep_every: Duration::from_secs(60),
        }
    }
}

impl PlatformConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.gifts.validate()?;
        if self.violation_window.is_zero() {
            return Err("the violation window must be longer than zero".into());
        }
        if self.sweep_every < Duration::from_millis(10) {
            return Err("the gift sweep interval must be at least 10 ms".into());
        }
        if self.price_notice > Duration::from_secs(366 * 86_400) {
            return Err("the price notice must be at most a year".into());
        }
        Ok(())
    }
}

/// What the orchestrator holds for the rules at run time.
pub struct Platform {
    pub prices: Arc<PriceBook>,
    content: Arc<dyn ContentPolicy>,
}

impl Platform {
    pub fn new(fallback: PriceTable, content: Arc<dyn ContentPolicy>) -> Platform {
        Platform {
            prices: Arc::new(PriceBook::new(fallback)),
            content,
        }
    }

    pub fn content(&self) -> Arc<dyn ContentPolicy> {
        self.content.clone()
    }
}
