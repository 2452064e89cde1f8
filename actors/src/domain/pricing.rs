//! The price table: what a job costs, from its kind, size and length.
//! Sizes are classified orientation-free (a 720x1280 portrait video is the
//! same class as 1280x720).

use serde::{Deserialize, Serialize};

use crate::domain::job::{JobKind, JobSpec, SizeClass};
use crate::domain::wallet::{Credits, MoneyError};

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    /// Per image up to 1024x1024.
    pub image_standard: i64,
    /// Per image above that, up to 2048x2048.
    pub image_large: i64,
    /// Per second of video up to 1280x720.
    pub video_standard: i64,
    /// Per second of video above that, up to 1920x1080.
    pub video_hd: i64,
}

impl Default for PriceTable {
    fn default() -> Self {
        PriceTable {
            image_standard: 1,
            image_large: 2,
            video_standard: 5,
            video_hd: 10,
        }
    }
}

impl PriceTable {
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("image_standard", self.image_standard),
            ("image_large", self.image_large),
            ("video_standard", self.video_standard),
            ("video_hd", self.video_hd),
        ] {
            if !(1..=1_000_000).contains(&v) {
                return Err(format!("price {name} must be 1..=1000000"));
            }
        }
        Ok(())
    }

    pub fn unit_price(&self, class: SizeClass) -> i64 {
        match class {
            SizeClass::ImageStandard => self.image_standard,
            SizeClass::ImageLarge => self.image_large,
            SizeClass::VideoStandard => self.video_standard,
            SizeClass::VideoHd => self.video_hd,
        }
    }

    /// The cost of a parsed job. A parsed spec always has a size class.
    pub fn cost(&self, spec: &JobSpec) -> Result<Credits, MoneyError> {
        let unit = Credits::positive(self.unit_price(spec.size_class()))?;
        let units = match spec.kind {
            JobKind::Image => spec.params.count.unwrap_or(1),
            JobKind::Video => spec.params.duration_s.unwrap_or(1),
        };
        unit.checked_mul(units)
    }

    /// The cost of a parsed job of a model whose price rule is `factor`
    /// times the table (the model registry's `price_factor`).
    pub fn cost_with_factor(&self, spec: &JobSpec, factor: u32) -> Result<Credits, MoneyError> {
        self.cost(spec)?.checked_mul(factor.max(1))
    }
}
