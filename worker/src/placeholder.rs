//! What a simulated worker delivers instead of a generated file: the
//! smallest files the server's check of an upload (it reads the first
//! bytes) takes as an image or a video. The agent's `simulate` executor
//! and the load tester's workers both upload them.

use admedia_actors::domain::job::JobKind;
use admedia_actors::domain::material::MediaType;

/// A 1×1 PNG: the smallest real image.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0xF8, 0xCF, 0xC0, 0xF0,
    0x1F, 0x00, 0x05, 0x00, 0x01, 0xFF, 0x89, 0x99, 0x3D, 0x1D, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];
/// An MP4 `ftyp` box alone: enough to be recognised, nothing to play.
const MP4: &[u8] = b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2";

/// The placeholder for a job of `kind` and its type: a video job must
/// deliver an MP4, or its completion is refused.
pub fn of(kind: JobKind) -> (&'static [u8], MediaType) {
    match kind {
        JobKind::Image => (PNG, MediaType::Png),
        JobKind::Video => (MP4, MediaType::Mp4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_placeholder_is_taken_as_an_output_of_its_kind() {
        for kind in [JobKind::Image, JobKind::Video] {
            let (bytes, media) = of(kind);
            assert_eq!(MediaType::sniff(bytes), Some(media), "{kind:?}");
            assert!(media.fits_output_of(kind), "{kind:?}");
        }
    }
}
