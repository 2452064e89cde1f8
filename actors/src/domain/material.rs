//! Stored files: materials a user uploads (ToS 6.4) and the outputs a GPU
//! generates for them (ToS 6.2). Their media type is read from their first
//! bytes, never taken from a name or a header; each has an owner, a size
//! that counts against the tier's storage quota, and an expiry after the
//! tier's retention period.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::ids::{JobId, MaterialId, UserId};
use crate::domain::job::JobKind;
use crate::domain::tier::{License, PerTier, Tier};

/// How many leading bytes [`MediaType::sniff`] needs.
pub const SNIFF_BYTES: usize = 16;

/// The media types the platform stores.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum MediaType {
    Png,
    Jpeg,
    Webp,
    Mp4,
}

impl MediaType {
    pub const ALL: [MediaType; 4] = [
        MediaType::Png,
        MediaType::Jpeg,
        MediaType::Webp,
        MediaType::Mp4,
    ];

    /// The type the file's signature says, if it is one of ours. A short
    /// prefix (fewer than [`SNIFF_BYTES`]) is judged on what it has.
    pub fn sniff(head: &[u8]) -> Option<MediaType> {
        if head.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(MediaType::Png)
        } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(MediaType::Jpeg)
        } else if head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WEBP" {
            Some(MediaType::Webp)
        } else if head.len() >= 12 && &head[4..8] == b"ftyp" {
            // ISO base media: MP4 and its brands (isom, mp41, mp42, avc1…),
            // but not QuickTime or HEIF, which share the box layout.
            let brand = &head[8..12];
            (!matches!(
                brand,
                b"qt  " | b"heic" | b"heix" | b"mif1" | b"msf1" | b"avif"
            ))
            .then_some(MediaType::Mp4)
        } else {
            None
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            MediaType::Png => "image/png",
            MediaType::Jpeg => "image/jpeg",
            MediaType::Webp => "image/webp",
            MediaType::Mp4 => "video/mp4",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            MediaType::Png => "png",
            MediaType::Jpeg => "jpg",
            MediaType::Webp => "webp",
            MediaType::Mp4 => "mp4",
        }
    }

    pub fn is_image(self) -> bool {
        !matches!(self, MediaType::Mp4)
    }

    /// Whether a job of `kind` may produce this type.
    pub fn fits_output_of(self, kind: JobKind) -> bool {
        match kind {
            JobKind::Image => self.is_image(),
            JobKind::Video => self == MediaType::Mp4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::Png => "png",
            MediaType::Jpeg => "jpeg",
            MediaType::Webp => "webp",
            MediaType::Mp4 => "mp4",
        }
    }

    pub fn parse(s: &str) -> Option<MediaType> {
        MediaType::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mime())
    }
}

/// What a stored object is to the platform.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ObjectRole {
    /// Uploaded by its user; `name` is the file name they gave (shown only).
    Material { id: MaterialId, name: String },
    /// Output `index` (from 0) of a job, with the job's licence (ToS 6.3).
    Output {
        job_id: JobId,
        index: u32,
        license: License,
    },
}

/// One object in the object store, as the catalogue records it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StoredObject {
    /// The object's key in the object store.
    pub key: String,
    pub user_id: UserId,
    pub role: ObjectRole,
    pub media: MediaType,
    pub size: u64,
    pub created_at: DateTime<Utc>,
    /// Past this, the sweep deletes it.
    pub expires_at: DateTime<Utc>,
    /// When it stopped being served (deleted by its user, expired, or its
    /// account closed); the API answers `410 Gone` from then on.
    pub gone_at: Option<DateTime<Utc>>,
}

impl StoredObject {
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.gone_at.is_none() && self.expires_at > now
    }

    pub fn material_id(&self) -> Option<MaterialId> {
        match &self.role {
            ObjectRole::Material { id, .. } => Some(*id),
            ObjectRole::Output { .. } => None,
        }
    }
}

/// What a user stores now.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct StorageUsage {
    pub bytes: u64,
    pub materials: u64,
    pub outputs: u64,
}

/// Storage quota and retention of one tier.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TierStorage {
    /// Bytes of materials and outputs kept at once.
    pub quota_bytes: u64,
    /// How long an object is kept after it is stored.
    #[serde(with = "secs")]
    pub retention: Duration,
}

/// Per-tier storage rules (configurable; see `docs/materials.md`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct StorageRules {
    pub free: TierStorage,
    pub basic: TierStorage,
    pub professional: TierStorage,
    pub enterprise: TierStorage,
    /// Largest single material upload.
    pub max_material_bytes: u64,
    /// Largest single output a worker may upload.
    pub max_output_bytes: u64,
}

const MB: u64 = 1024 * 1024;
const DAY: u64 = 24 * 3600;

impl Default for StorageRules {
    fn default() -> Self {
        let tier = |quota_mb: u64, days: u64| TierStorage {
            quota_bytes: quota_mb * MB,
            retention: Duration::from_secs(days * DAY),
        };
        StorageRules {
            free: tier(500, 7),
            basic: tier(5 * 1024, 30),
            professional: tier(50 * 1024, 60),
            enterprise: tier(500 * 1024, 90),
            max_material_bytes: 1024 * MB,
            max_output_bytes: 4 * 1024 * MB,
        }
    }
}

impl StorageRules {
    pub fn of(&self, tier: Tier) -> TierStorage {
        match tier {
            Tier::Free => self.free,
            Tier::Basic => self.basic,
            Tier::Professional => self.professional,
            Tier::Enterprise => self.enterprise,
        }
    }

    pub fn of_mut(&mut self, tier: Tier) -> &mut TierStorage {
        match tier {
            Tier::Free => &mut self.free,
            Tier::Basic => &mut self.basic,
            Tier::Professional => &mut self.professional,
            Tier::Enterprise => &mut self.enterprise,
        }
    }

    /// When an object stored now by a user of `tier` expires.
    pub fn expiry(&self, tier: Tier, now: DateTime<Utc>) -> DateTime<Utc> {
        chrono::Duration::from_std(self.of(tier).retention)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// A number of bytes as settings write it: `500MB`, `5GB`, `64KB`
/// (powers of 1024) or plain bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(raw: &str) -> Result<ByteSize, String> {
        parse_size(raw).map(ByteSize)
    }
}

/// `500MB`, `5GB`, `64KB` (powers of 1024) or a number of bytes.
pub fn parse_size(raw: &str) -> Result<u64, String> {
    let s = raw.trim().to_ascii_uppercase();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s.as_str(), ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{raw:?}: expected a size like 500MB, 5GB or bytes"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "K" => 1 << 10,
        "MB" | "M" => 1 << 20,
        "GB" | "G" => 1 << 30,
        "TB" | "T" => 1 << 40,
        other => {
            return Err(format!(
                "{raw:?}: unknown unit {other:?} (B, KB, MB, GB, TB)"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{raw:?}: too large"))
}

/// Storage quotas set per tier by a setting, e.g. `free=500MB,basic=5GB`;
/// tiers not named keep their default.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct TierQuotas(pub PerTier<Option<u64>>);

impl std::str::FromStr for TierQuotas {
    type Err = String;
    fn from_str(raw: &str) -> Result<TierQuotas, String> {
        crate::domain::tier::parse_tier_pairs(raw, "tier=size", parse_size).map(TierQuotas)
    }
}

/// Retention set per tier by a setting, e.g. `free=7d,enterprise=90d`;
/// tiers not named keep their default.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct TierRetention(pub PerTier<Option<Duration>>);

impl std::str::FromStr for TierRetention {
    type Err = String;
    fn from_str(raw: &str) -> Result<TierRetention, String> {
        crate::domain::tier::parse_tier_pairs(
            raw,
            "tier=duration",
            crate::domain::price_schedule::parse_duration,
        )
        .map(TierRetention)
    }
}

impl StorageRules {
    /// These rules with the tiers named by `quotas` and `retention` changed.
    pub fn with_tiers(mut self, quotas: &TierQuotas, retention: &TierRetention) -> StorageRules {
        for tier in Tier::ALL {
            let storage = self.of_mut(tier);
            if let Some(bytes) = quotas.0[tier] {
                storage.quota_bytes = bytes;
            }
            if let Some(span) = retention.0[tier] {
                storage.retention = span;
            }
        }
        self
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_read_from_the_content() {
        assert_eq!(
            MediaType::sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
            Some(MediaType::Png)
        );
        assert_eq!(
            MediaType::sniff(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10]),
            Some(MediaType::Jpeg)
        );
        assert_eq!(
            MediaType::sniff(b"RIFF\x24\0\0\0WEBPVP8 "),
            Some(MediaType::Webp)
        );
        assert_eq!(
            MediaType::sniff(b"\0\0\0\x20ftypisom\0\0\x02\0"),
            Some(MediaType::Mp4)
        );
        // A WAV is RIFF too; a QuickTime movie has the MP4 layout.
        assert_eq!(MediaType::sniff(b"RIFF\x24\0\0\0WAVEfmt "), None);
        assert_eq!(MediaType::sniff(b"\0\0\0\x14ftypqt  \0\0\0\0"), None);
        assert_eq!(MediaType::sniff(b"GIF89a"), None);
        assert_eq!(MediaType::sniff(b"<svg xmlns="), None);
        assert_eq!(MediaType::sniff(b""), None);
        assert_eq!(MediaType::sniff(b"\x89PN"), None);
    }

    #[test]
    fn outputs_must_fit_the_job_kind() {
        assert!(MediaType::Png.fits_output_of(JobKind::Image));
        assert!(!MediaType::Mp4.fits_output_of(JobKind::Image));
        assert!(MediaType::Mp4.fits_output_of(JobKind::Video));
        assert!(!MediaType::Jpeg.fits_output_of(JobKind::Video));
    }

    #[test]
    fn expiry_follows_the_tier_and_never_overflows() {
        let mut rules = StorageRules::default();
        let now = crate::clock::Clock::system().now();
        assert_eq!(
            rules.expiry(Tier::Free, now) - now,
            chrono::Duration::days(7)
        );
        assert_eq!(
            rules.expiry(Tier::Enterprise, now) - now,
            chrono::Duration::days(90)
        );
        rules.free.retention = Duration::from_secs(u64::MAX);
        assert_eq!(rules.expiry(Tier::Free, now), DateTime::<Utc>::MAX_UTC);
    }
}
