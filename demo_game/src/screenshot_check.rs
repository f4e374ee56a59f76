//! Tells a rendered screenshot from a blank one, for the windowed smoke test
//! (`demo_game/smoke.sh` runs `examples/check_screenshot.rs`).

use bevy::asset::RenderAssetUsages;
use bevy::image::{CompressedImageFormats, Image, ImageSampler, ImageType};
use serde::Serialize;

/// Simple statistics of an RGB image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImageStats {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Distinct colours (quantized to 5 bits per channel).
    pub distinct_colors: usize,
    /// Share of pixels that have the most common (quantized) colour.
    pub dominant_fraction: f64,
    /// Standard deviation of luma, 0..255.
    pub luma_stddev: f64,
}

impl ImageStats {
    /// Whether the image looks blank: one flat colour, or almost nothing but one colour.
    pub fn is_blank(&self) -> bool {
        self.width == 0
            || self.height == 0
            || self.distinct_colors < 64
            || self.dominant_fraction > 0.9
            || self.luma_stddev < 8.0
    }
}

/// Statistics of `rgb`, tightly packed 8-bit RGB rows.
pub fn analyze_rgb(width: u32, height: u32, rgb: &[u8]) -> ImageStats {
    let mut counts = std::collections::HashMap::<u16, usize>::new();
    let (mut sum, mut sum_sq, mut n) = (0.0f64, 0.0f64, 0usize);
    for px in rgb.chunks_exact(3) {
        let key = (u16::from(px[0] >> 3) << 10) | (u16::from(px[1] >> 3) << 5) | u16::from(px[2] >> 3);
        *counts.entry(key).or_default() += 1;
        let luma = 0.299 * f64::from(px[0]) + 0.587 * f64::from(px[1]) + 0.114 * f64::from(px[2]);
        sum += luma;
        sum_sq += luma * luma;
        n += 1;
    }
    let n_f = n.max(1) as f64;
    let mean = sum / n_f;
    ImageStats {
        width,
        height,
        distinct_colors: counts.len(),
        dominant_fraction: counts.values().copied().max().unwrap_or(0) as f64 / n_f,
        luma_stddev: (sum_sq / n_f - mean * mean).max(0.0).sqrt(),
    }
}

/// Decodes a PNG and returns its statistics.
pub fn analyze_png(bytes: &[u8]) -> Result<ImageStats, String> {
    let image = Image::from_buffer(
        bytes,
        ImageType::Extension("png"),
        CompressedImageFormats::NONE,
        true,
        ImageSampler::Default,
        RenderAssetUsages::default(),
    )
    .map_err(|e| format!("not a PNG: {e}"))?;
    let rgb = image.try_into_dynamic().map_err(|e| format!("unsupported PNG: {e}"))?.to_rgb8();
    Ok(analyze_rgb(rgb.width(), rgb.height(), rgb.as_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_image_is_blank() {
        let rgb = [40u8, 90, 200].repeat(64 * 64);
        let s = analyze_rgb(64, 64, &rgb);
        assert_eq!(s.distinct_colors, 1);
        assert!(s.is_blank());
    }

    #[test]
    fn a_varied_image_is_not_blank() {
        let mut rgb = Vec::new();
        for y in 0..64u32 {
            for x in 0..64u32 {
                rgb.extend([(x * 4) as u8, (y * 4) as u8, ((x ^ y) * 4) as u8]);
            }
        }
        let s = analyze_rgb(64, 64, &rgb);
        assert!(!s.is_blank(), "{s:?}");
    }

    #[test]
    fn garbage_is_not_a_png() {
        assert!(analyze_png(b"definitely not a png").is_err());
    }
}
