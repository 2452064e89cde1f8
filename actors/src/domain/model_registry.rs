//! The model registry: the models the platform serves, as configuration.
//! A submission names one of them or is refused before anything is held;
//! placement reads a model's GPU memory need, fair sharing its expected
//! GPU time, and pricing its factor on the price table.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::job::{JobKind, JobSpec};

/// One model the platform serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    pub kind: JobKind,
    /// GPU memory the model needs; a large size may need more (the VRAM
    /// table by size class), and a job needs the larger of the two.
    pub vram_mb: u32,
    /// The price rule: this many times the price table's cost (1 for the
    /// table as published).
    #[serde(default = "one")]
    pub price_factor: u32,
    /// Expected GPU time per unit (one image, or one second of video) at
    /// the standard size; fair sharing starts from it and refines it with
    /// what attempts actually take.
    pub expected_ms_per_unit: u64,
}

fn one() -> u32 {
    1
}

impl ModelSpec {
    /// Expected GPU time of one job of this model.
    pub fn expected_runtime(&self, spec: &JobSpec) -> Duration {
        let units = u64::from(job_units(spec));
        let large = match spec.size_class() {
            crate::domain::job::SizeClass::ImageStandard
            | crate::domain::job::SizeClass::VideoStandard => 1,
            crate::domain::job::SizeClass::ImageLarge | crate::domain::job::SizeClass::VideoHd => 2,
        };
        Duration::from_millis(
            self.expected_ms_per_unit
                .saturating_mul(units)
                .saturating_mul(large),
        )
    }
}

/// Images for an image job, seconds for a video: what the price and the
/// GPU time scale with.
pub fn job_units(spec: &JobSpec) -> u32 {
    match spec.kind {
        JobKind::Image => spec.params.count.unwrap_or(1),
        JobKind::Video => spec.params.duration_s.unwrap_or(1),
    }
    .max(1)
}

/// The models served, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelRegistry {
    models: Vec<ModelSpec>,
}

impl Default for ModelRegistry {
    /// The models a fresh install serves.
    fn default() -> Self {
        let m = |name: &str, kind, vram_mb, expected_ms_per_unit| ModelSpec {
            name: name.into(),
            kind,
            vram_mb,
            price_factor: 1,
            expected_ms_per_unit,
        };
        ModelRegistry {
            models: vec![
                m("sdxl", JobKind::Image, 8_000, 4_000),
                m("sd15", JobKind::Image, 4_000, 2_000),
                m("flux-dev", JobKind::Image, 16_000, 8_000),
                m("v1", JobKind::Video, 24_000, 6_000),
                m("svd-xt", JobKind::Video, 24_000, 8_000),
            ],
        }
    }
}

impl ModelRegistry {
    pub fn new(models: Vec<ModelSpec>) -> ModelRegistry {
        ModelRegistry { models }
    }

    pub fn get(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn all(&self) -> &[ModelSpec] {
        &self.models
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.models.is_empty() {
            return Err("models: at least one model must be served".into());
        }
        for (i, m) in self.models.iter().enumerate() {
            if m.name.is_empty()
                || m.name.chars().count() > crate::domain::job::MAX_MODEL_CHARS
                || !m
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'))
            {
                return Err(format!("models: {:?} is not a valid model name", m.name));
            }
            if self.models[..i].iter().any(|o| o.name == m.name) {
                return Err(format!("models: {:?} is listed twice", m.name));
            }
            if !(1..=1000).contains(&m.price_factor) {
                return Err(format!("models: {}: price_factor must be 1..=1000", m.name));
            }
            if !(1..=3_600_000).contains(&m.expected_ms_per_unit) {
                return Err(format!(
                    "models: {}: expected_ms_per_unit must be 1..=3600000",
                    m.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_cover_the_documented_models() {
        let r = ModelRegistry::default();
        assert!(r.validate().is_ok());
        assert_eq!(r.get("sdxl").map(|m| m.kind), Some(JobKind::Image));
        assert_eq!(r.get("v1").map(|m| m.kind), Some(JobKind::Video));
        assert!(r.get("gpt-9").is_none());
    }

    #[test]
    fn bad_registries_are_refused() {
        let mut dup = ModelRegistry::default();
        dup.models.push(dup.models[0].clone());
        assert!(dup.validate().is_err());
        assert!(ModelRegistry::new(vec![]).validate().is_err());
        let mut bad = ModelRegistry::default();
        bad.models[0].name = "rm -rf".into();
        assert!(bad.validate().is_err());
        let mut bad = ModelRegistry::default();
        bad.models[0].price_factor = 0;
        assert!(bad.validate().is_err());
        let mut bad = ModelRegistry::default();
        bad.models[0].expected_ms_per_unit = 0;
        assert!(bad.validate().is_err());
    }
}
