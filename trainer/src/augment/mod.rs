//! DINO's multi-crop augmentation (official `main_dino.DataAugmentationDINO`): which crops, with
//! which probabilities, in which order:
//!
//! | crop | RandomResizedCrop | flip + jitter + gray | blur p | solarize p |
//! |---|---|---|---|---|
//! | global 1 | global size, `global_crops_scale` | .5 / .8 / .2 | 1.0 | 0 |
//! | global 2 | global size, `global_crops_scale` | .5 / .8 / .2 | 0.1 | 0.2 |
//! | local x N | local size, `local_crops_scale` | .5 / .8 / .2 | 0.5 | 0 |
//!
//! then ToTensor + ImageNet Normalize. The pixel operations themselves are PIL's, in [`pil`]
//! (torchvision applies these transforms to PIL images).
use image::RgbImage;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::RngExt;

use dino_shared::preprocess::normalize;

pub mod pil;
use pil::{adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, gaussian_blur, grayscale, hflip, resized_crop, solarize};

/// One crop of the multi-crop recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct CropSpec {
    pub size: usize,
    pub scale: (f64, f64),
    pub blur_p: f64,
    /// Range of the Gaussian blur radius in pixels (official `GaussianBlur`: 0.1 to 2.0).
    pub blur_radius: (f64, f64),
    pub solarize_p: f64,
}

/// Sizes, scales and count of the crops (official flags `global_crops_scale`,
/// `local_crops_scale`, `local_crops_number`; sizes 224/96 on ImageNet).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MultiCrop {
    pub global_size: usize,
    pub local_size: usize,
    pub global_crops_scale: (f64, f64),
    pub local_crops_scale: (f64, f64),
    pub local_crops_number: usize,
    /// Gaussian blur radius range in pixels, every crop (official 0.1 to 2.0).
    #[serde(default = "official_blur_radius")]
    pub blur_radius: (f64, f64),
}

/// The official `GaussianBlur(radius_min=0.1, radius_max=2.)` range.
pub fn official_blur_radius() -> (f64, f64) {
    (0.1, 2.0)
}

impl MultiCrop {
    /// The crop list in the official order: global 1, global 2, then the local crops.
    pub fn crops(&self) -> Vec<CropSpec> {
        let blur_radius = self.blur_radius;
        let g = |blur_p, solarize_p| CropSpec { size: self.global_size, scale: self.global_crops_scale, blur_p, blur_radius, solarize_p };
        let mut v = vec![g(1.0, 0.0), g(0.1, 0.2)];
        let local = CropSpec { size: self.local_size, scale: self.local_crops_scale, blur_p: 0.5, blur_radius, solarize_p: 0.0 };
        v.extend(std::iter::repeat_n(local, self.local_crops_number));
        v
    }
}

pub const RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// torchvision `RandomResizedCrop.get_params`: (top, left, height, width) of the crop box.
pub fn random_resized_crop_box(width: u32, height: u32, scale: (f64, f64), rng: &mut StdRng) -> (u32, u32, u32, u32) {
    let (w0, h0) = (width as f64, height as f64);
    let area = w0 * h0;
    let log_ratio = (RATIO.0.ln(), RATIO.1.ln());
    for _ in 0..10 {
        let target_area = area * rng.random_range(scale.0..=scale.1);
        let aspect = rng.random_range(log_ratio.0..=log_ratio.1).exp();
        let w = (target_area * aspect).sqrt().round() as i64;
        let h = (target_area / aspect).sqrt().round() as i64;
        if 0 < w && w <= width as i64 && 0 < h && h <= height as i64 {
            let top = rng.random_range(0..=(height as i64 - h)) as u32;
            let left = rng.random_range(0..=(width as i64 - w)) as u32;
            return (top, left, h as u32, w as u32);
        }
    }
    // Fallback: a central crop with the ratio clamped to the allowed range.
    let in_ratio = w0 / h0;
    let (w, h) = if in_ratio < RATIO.0 {
        (width, (w0 / RATIO.0).round() as u32)
    } else if in_ratio > RATIO.1 {
        ((h0 * RATIO.1).round() as u32, height)
    } else {
        (width, height)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// torchvision `ColorJitter(0.4, 0.4, 0.2, 0.1)`: factors drawn first, then the four
/// adjustments applied in a random order (`torch.randperm(4)`).
pub fn color_jitter(img: &mut RgbImage, rng: &mut StdRng) {
    let mut order = [0usize, 1, 2, 3];
    order.shuffle(rng);
    let brightness = rng.random_range(0.6f32..=1.4);
    let contrast = rng.random_range(0.6f32..=1.4);
    let saturation = rng.random_range(0.8f32..=1.2);
    let hue = rng.random_range(-0.1f32..=0.1);
    for op in order {
        match op {
            0 => adjust_brightness(img, brightness),
            1 => adjust_contrast(img, contrast),
            2 => adjust_saturation(img, saturation),
            _ => adjust_hue(img, hue),
        }
    }
}

/// What [`augment`] did to one crop (for the statistical tests and debugging).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Trace {
    /// (top, left, height, width) in the source picture.
    pub crop_box: (u32, u32, u32, u32),
    pub flipped: bool,
    pub jittered: bool,
    pub grayscale: bool,
    pub blur_radius: Option<f32>,
    pub solarized: bool,
}

/// One crop: RandomResizedCrop, flip, jitter, grayscale, blur, solarize (not normalised).
pub fn augment(img: &RgbImage, spec: &CropSpec, rng: &mut StdRng) -> RgbImage {
    augment_traced(img, spec, rng).0
}

pub fn augment_traced(img: &RgbImage, spec: &CropSpec, rng: &mut StdRng) -> (RgbImage, Trace) {
    let mut t = Trace { crop_box: random_resized_crop_box(img.width(), img.height(), spec.scale, rng), ..Default::default() };
    let mut out = resized_crop(img, t.crop_box, spec.size as u32);
    t.flipped = rng.random_bool(0.5);
    if t.flipped {
        hflip(&mut out);
    }
    t.jittered = rng.random_bool(0.8);
    if t.jittered {
        color_jitter(&mut out, rng);
    }
    t.grayscale = rng.random_bool(0.2);
    if t.grayscale {
        grayscale(&mut out);
    }
    if spec.blur_p > 0.0 && rng.random_bool(spec.blur_p) {
        let (lo, hi) = (spec.blur_radius.0 as f32, spec.blur_radius.1 as f32);
        let radius = if hi > lo { rng.random_range(lo..=hi) } else { lo };
        gaussian_blur(&mut out, radius);
        t.blur_radius = Some(radius);
    }
    t.solarized = spec.solarize_p > 0.0 && rng.random_bool(spec.solarize_p);
    if t.solarized {
        solarize(&mut out);
    }
    (out, t)
}

/// All crops of one picture, normalised: one [3, s, s] vector per crop, in the official order.
pub fn multi_crop(img: &RgbImage, crops: &[CropSpec], rng: &mut StdRng) -> Vec<Vec<f32>> {
    crops.iter().map(|spec| normalize(&augment(img, spec, rng))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use rand::SeedableRng;

    fn photo() -> RgbImage {
        // A structured picture (gradients and edges) so that every operation changes pixels.
        RgbImage::from_fn(80, 60, |x, y| Rgb([(x * 3) as u8, (y * 4) as u8, ((x * y) % 256) as u8]))
    }

    fn imagenet() -> MultiCrop {
        MultiCrop {
            global_size: 32,
            local_size: 16,
            global_crops_scale: (0.4, 1.0),
            local_crops_scale: (0.05, 0.4),
            local_crops_number: 8,
            blur_radius: official_blur_radius(),
        }
    }

    #[test]
    fn crop_boxes_respect_scale_and_ratio() {
        let mut rng = StdRng::seed_from_u64(1);
        for (scale, n) in [((0.4, 1.0), 4000), ((0.05, 0.4), 4000)] {
            let mut fallbacks = 0;
            for _ in 0..n {
                let (top, left, h, w) = random_resized_crop_box(400, 300, scale, &mut rng);
                assert!(top + h <= 300 && left + w <= 400);
                let area = (h * w) as f64 / (400.0 * 300.0);
                let ratio = w as f64 / h as f64;
                // Rounding w and h to integers moves area and ratio by a little.
                let in_range = area >= scale.0 * 0.97 && area <= scale.1 * 1.03 && ratio >= 0.74 && ratio <= 1.35;
                if !in_range {
                    fallbacks += 1;
                }
            }
            assert!(fallbacks < n / 100, "{fallbacks} boxes out of range for {scale:?}");
        }
    }

    #[test]
    fn crops_have_the_configured_sizes_and_order() {
        let crops = imagenet().crops();
        assert_eq!(crops.len(), 10);
        let mut rng = StdRng::seed_from_u64(2);
        let out = multi_crop(&photo(), &crops, &mut rng);
        assert_eq!(out[0].len(), 3 * 32 * 32);
        assert_eq!(out[1].len(), 3 * 32 * 32);
        assert!(out[2..].iter().all(|c| c.len() == 3 * 16 * 16));
    }

    fn rate(n: usize, spec: &CropSpec, f: impl Fn(&Trace) -> bool) -> f64 {
        let mut rng = StdRng::seed_from_u64(3);
        let img = RgbImage::from_fn(24, 24, |x, y| Rgb([(x * 9) as u8, (y * 9) as u8, 90]));
        (0..n).filter(|_| f(&augment_traced(&img, spec, &mut rng).1)).count() as f64 / n as f64
    }

    #[test]
    fn per_crop_probabilities_match_the_official_recipe() {
        let crops = MultiCrop { global_size: 8, local_size: 8, ..imagenet() }.crops();
        let n = 3000;
        let close = |got: f64, want: f64| (got - want).abs() < 0.035;
        let (g1, g2, local) = (&crops[0], &crops[1], &crops[2]);
        assert_eq!(rate(n, g1, |t| t.blur_radius.is_some()), 1.0);
        assert!(close(rate(n, g2, |t| t.blur_radius.is_some()), 0.1));
        assert!(close(rate(n, local, |t| t.blur_radius.is_some()), 0.5));
        assert!(close(rate(n, g2, |t| t.solarized), 0.2));
        assert_eq!(rate(n, g1, |t| t.solarized), 0.0);
        assert_eq!(rate(n, local, |t| t.solarized), 0.0);
        for spec in [g1, g2, local] {
            assert!(close(rate(n, spec, |t| t.flipped), 0.5));
            assert!(close(rate(n, spec, |t| t.jittered), 0.8));
            assert!(close(rate(n, spec, |t| t.grayscale), 0.2));
        }
        let radii: Vec<f32> = {
            let mut rng = StdRng::seed_from_u64(4);
            let img = RgbImage::new(16, 16);
            (0..500).filter_map(|_| augment_traced(&img, g1, &mut rng).1.blur_radius).collect()
        };
        assert!(radii.iter().all(|r| (0.1..=2.0).contains(r)));
        let mean = radii.iter().sum::<f32>() / radii.len() as f32;
        assert!((mean - 1.05).abs() < 0.06, "blur radius mean {mean}");
    }

    #[test]
    fn same_seed_same_crops() {
        let crops = imagenet().crops();
        let a = multi_crop(&photo(), &crops, &mut StdRng::seed_from_u64(7));
        let b = multi_crop(&photo(), &crops, &mut StdRng::seed_from_u64(7));
        let c = multi_crop(&photo(), &crops, &mut StdRng::seed_from_u64(8));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
