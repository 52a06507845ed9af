//! DINO's multi-crop augmentation (official `main_dino.DataAugmentationDINO`), on 8-bit RGB
//! pictures with PIL's arithmetic, because torchvision applies these transforms to PIL images:
//!
//! | crop | RandomResizedCrop | flip + jitter + gray | blur p | solarize p |
//! |---|---|---|---|---|
//! | global 1 | global size, `global_crops_scale` | .5 / .8 / .2 | 1.0 | 0 |
//! | global 2 | global size, `global_crops_scale` | .5 / .8 / .2 | 0.1 | 0.2 |
//! | local x N | local size, `local_crops_scale` | .5 / .8 / .2 | 0.5 | 0 |
//!
//! then ToTensor + ImageNet Normalize. Brightness, contrast, saturation, hue, grayscale, box-blur
//! Gaussian and solarize follow PIL's C code (ImageEnhance blends with truncation, L = ITU-R 601
//! in 16-bit fixed point, HSV via Convert.c, GaussianBlur as 3 extended box blurs) and are
//! checked byte for byte against PIL in the tests. One deliberate difference: the bicubic resize
//! of RandomResizedCrop uses the `image` crate's Catmull-Rom filter (PIL's bicubic kernel,
//! a = -0.5, with the same support widening when shrinking), not PIL's fixed-point resampler,
//! so resized pixels can differ from PIL's by a rounding step.

use image::imageops::FilterType;
use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::RngExt;

use dino_shared::preprocess::normalize;

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

pub fn resized_crop(img: &RgbImage, bx: (u32, u32, u32, u32), size: u32) -> RgbImage {
    let (top, left, h, w) = bx;
    let view = image::imageops::crop_imm(img, left, top, w, h).to_image();
    image::imageops::resize(&view, size, size, FilterType::CatmullRom)
}

/// PIL `Image.blend(degenerate, image, factor)` for one channel value: float arithmetic,
/// truncated (not rounded), clipped.
fn blend(degenerate: u8, value: u8, factor: f32) -> u8 {
    let t = degenerate as f32 + factor * (value as f32 - degenerate as f32);
    if t <= 0.0 {
        0
    } else if t >= 255.0 {
        255
    } else {
        t as u8
    }
}

/// PIL's RGB -> L: ITU-R 601-2 luma in 16-bit fixed point with rounding.
pub fn luma(p: [u8; 3]) -> u8 {
    ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

pub fn adjust_brightness(img: &mut RgbImage, factor: f32) {
    for p in img.pixels_mut() {
        p.0 = p.0.map(|v| blend(0, v, factor));
    }
}

pub fn adjust_contrast(img: &mut RgbImage, factor: f32) {
    // ImageEnhance.Contrast: a flat gray picture at the rounded mean luma.
    let n = (img.width() * img.height()) as f64;
    let mean = (img.pixels().map(|p| luma(p.0) as f64).sum::<f64>() / n + 0.5) as u8;
    for p in img.pixels_mut() {
        p.0 = p.0.map(|v| blend(mean, v, factor));
    }
}

pub fn adjust_saturation(img: &mut RgbImage, factor: f32) {
    for p in img.pixels_mut() {
        let l = luma(p.0);
        p.0 = p.0.map(|v| blend(l, v, factor));
    }
}

fn clip8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// PIL Convert.c `rgb2hsv_row`, including where C promotes float to double (the literals are
/// doubles): results then round exactly as PIL's do.
fn rgb_to_hsv(p: [u8; 3]) -> [u8; 3] {
    let [r, g, b] = p;
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if maxc == minc {
        return [0, 0, maxc];
    }
    let cr = (maxc - minc) as f32;
    let s = cr / maxc as f32;
    let rc = (maxc - r) as f32 / cr;
    let gc = (maxc - g) as f32 / cr;
    let bc = (maxc - b) as f32 / cr;
    let h: f32 = if r == maxc {
        bc - gc
    } else if g == maxc {
        (2.0 + rc as f64 - bc as f64) as f32
    } else {
        (4.0 + gc as f64 - rc as f64) as f32
    };
    let h = ((h as f64 / 6.0 + 1.0) % 1.0) as f32;
    [clip8((h as f64 * 255.0) as i32), clip8((s as f64 * 255.0) as i32), maxc]
}

/// PIL Convert.c `hsv2rgb` (same float/double mix as the C code).
fn hsv_to_rgb(p: [u8; 3]) -> [u8; 3] {
    let [h, s, v] = p;
    if s == 0 {
        return [v, v, v];
    }
    let hf = h as f32 as f64 * 6.0 / 255.0;
    let i = hf.floor() as i32;
    let f = (hf - i as f64) as f32;
    let fs = (s as f64 / 255.0) as f32;
    let vf = v as f64;
    let up = clip8((vf * (1.0 - fs as f64)).round() as i32);
    let uq = clip8((vf * (1.0 - (fs * f) as f64)).round() as i32);
    let ut = clip8((vf * (1.0 - fs as f64 * (1.0 - f as f64))).round() as i32);
    match i % 6 {
        0 => [v, ut, up],
        1 => [uq, v, up],
        2 => [up, v, ut],
        3 => [up, uq, v],
        4 => [ut, up, v],
        _ => [v, up, uq],
    }
}

/// torchvision `F_pil.adjust_hue`: shift the uint8 hue channel by `uint8(factor * 255)`, wrapping.
pub fn adjust_hue(img: &mut RgbImage, factor: f32) {
    let shift = ((factor * 255.0) as i32).rem_euclid(256) as u8;
    for p in img.pixels_mut() {
        let [h, s, v] = rgb_to_hsv(p.0);
        p.0 = hsv_to_rgb([h.wrapping_add(shift), s, v]);
    }
}

pub fn grayscale(img: &mut RgbImage) {
    for p in img.pixels_mut() {
        let l = luma(p.0);
        p.0 = [l, l, l];
    }
}

/// `ImageOps.solarize(img, 128)`: invert every value >= 128.
pub fn solarize(img: &mut RgbImage) {
    for p in img.pixels_mut() {
        p.0 = p.0.map(|v| if v >= 128 { 255 - v } else { v });
    }
}

pub fn hflip(img: &mut RgbImage) {
    image::imageops::flip_horizontal_in_place(img);
}

/// PIL `ImagingLineBoxBlur32` on one line of pixels: a box of fractional `radius` (integer part
/// plus weighted far pixels) in 8.24 fixed point, edges extended.
fn box_blur_line(line_in: &[[u8; 3]], out: &mut [[u8; 3]], radius: f32) {
    let r = radius as usize;
    let ww: u32 = ((1u32 << 24) as f32 / (radius * 2.0 + 1.0)) as u32;
    let fw: u32 = ((1u32 << 24) - (r as u32 * 2 + 1) * ww) / 2;
    let n = line_in.len();
    let last = n - 1;
    let edge_a = (r + 1).min(n);
    let edge_b = n.saturating_sub(r + 1);
    let px = |i: usize, c: usize| line_in[i][c] as u32;
    for c in 0..3 {
        let mut acc: u32 = px(0, c) * (r as u32 + 1);
        for x in 0..edge_a.saturating_sub(1) {
            acc = acc.wrapping_add(px(x, c));
        }
        acc = acc.wrapping_add(px(last, c).wrapping_mul((r as u32 + 1).wrapping_sub(edge_a as u32)));
        let mut step = |x: usize, sub: usize, add: usize, far_l: usize, far_r: usize, acc: &mut u32| {
            *acc = acc.wrapping_add(px(add, c)).wrapping_sub(px(sub, c));
            let bulk = acc.wrapping_mul(ww).wrapping_add((px(far_l, c) + px(far_r, c)).wrapping_mul(fw));
            out[x][c] = (bulk.wrapping_add(1 << 23) >> 24) as u8;
        };
        if edge_a <= edge_b {
            for x in 0..edge_a {
                step(x, 0, x + r, 0, x + r + 1, &mut acc);
            }
            for x in edge_a..edge_b {
                step(x, x - r - 1, x + r, x - r - 1, x + r + 1, &mut acc);
            }
            for x in edge_b..=last {
                step(x, x - r - 1, last, x - r - 1, last, &mut acc);
            }
        } else {
            for x in 0..edge_b {
                step(x, 0, x + r, 0, x + r + 1, &mut acc);
            }
            for x in edge_b..edge_a {
                step(x, 0, last, 0, last, &mut acc);
            }
            for x in edge_a..=last {
                step(x, x - r - 1, last, x - r - 1, last, &mut acc);
            }
        }
    }
}

fn box_blur_rows(img: &mut RgbImage, radius: f32, passes: usize) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut line = vec![[0u8; 3]; w];
    let mut out = vec![[0u8; 3]; w];
    for y in 0..h {
        for (x, l) in line.iter_mut().enumerate() {
            *l = img.get_pixel(x as u32, y as u32).0;
        }
        for _ in 0..passes {
            box_blur_line(&line, &mut out, radius);
            std::mem::swap(&mut line, &mut out);
        }
        for (x, l) in line.iter().enumerate() {
            img.put_pixel(x as u32, y as u32, Rgb(*l));
        }
    }
}

fn transpose(img: &RgbImage) -> RgbImage {
    RgbImage::from_fn(img.height(), img.width(), |x, y| *img.get_pixel(y, x))
}

/// PIL `ImageFilter.GaussianBlur(radius)`: `ImagingGaussianBlur` with 3 passes of an extended
/// box blur whose fractional radius gives the same variance (Gwosdek et al. 2011).
pub fn gaussian_blur(img: &mut RgbImage, radius: f32) {
    let passes = 3usize;
    let sigma2 = radius * radius / passes as f32;
    let big_l = (12.0 * sigma2 + 1.0).sqrt();
    let l = ((big_l - 1.0) / 2.0).floor();
    let mut a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2);
    a /= 6.0 * (sigma2 - (l + 1.0) * (l + 1.0));
    let box_radius = l + a;
    box_blur_rows(img, box_radius, passes);
    let mut t = transpose(img);
    box_blur_rows(&mut t, box_radius, passes);
    *img = transpose(&t);
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

    #[test]
    fn solarize_inverts_bright_values_only() {
        let mut img = RgbImage::from_pixel(1, 1, Rgb([127, 128, 255]));
        solarize(&mut img);
        assert_eq!(img.get_pixel(0, 0).0, [127, 127, 0]);
    }

    /// Byte-for-byte against PIL / torchvision (fixture from tools/make_test_data.py).
    mod pil {
        use super::*;
        use dino_shared::state_dict::HostTensor;
        use dino_shared::weights::parse_safetensors;
        use std::collections::HashMap;

        fn fixture() -> (HashMap<String, HostTensor>, RgbImage) {
            let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/augment_ops.safetensors")).unwrap();
            let all: HashMap<String, HostTensor> = parse_safetensors(&bytes).unwrap().0.into_iter().collect();
            let input = to_image(&all["input"]);
            (all, input)
        }

        fn to_image(t: &HostTensor) -> RgbImage {
            let (h, w) = (t.shape[0] as u32, t.shape[1] as u32);
            RgbImage::from_fn(w, h, |x, y| {
                let i = ((y * w + x) * 3) as usize;
                Rgb([t.data[i] as u8, t.data[i + 1] as u8, t.data[i + 2] as u8])
            })
        }

        /// (max abs difference, number of differing values)
        fn diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
            assert_eq!(a.dimensions(), b.dimensions());
            let d: Vec<u8> = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).collect();
            (d.iter().cloned().max().unwrap(), d.iter().filter(|&&v| v > 0).count())
        }

        fn same(name: &str, ours: &RgbImage, all: &HashMap<String, HostTensor>) {
            assert_eq!(diff(ours, &to_image(&all[name])), (0, 0), "{name} differs from PIL");
        }

        #[test]
        fn colour_operations_equal_pil() {
            let (all, input) = fixture();
            let cases: [(&str, fn(&mut RgbImage, f32), &[f32]); 4] = [
                ("brightness", adjust_brightness, &[0.6, 0.85, 1.3]),
                ("contrast", adjust_contrast, &[0.6, 1.4]),
                ("saturation", adjust_saturation, &[0.8, 1.2]),
                ("hue", adjust_hue, &[-0.1, -0.03, 0.05, 0.1]),
            ];
            for (op, f, factors) in cases {
                for &factor in factors {
                    let mut img = input.clone();
                    f(&mut img, factor);
                    same(&format!("{op}_{factor}"), &img, &all);
                }
            }
            let mut g = input.clone();
            grayscale(&mut g);
            same("grayscale", &g, &all);
            let mut s = input.clone();
            solarize(&mut s);
            same("solarize", &s, &all);
            let mut f = input.clone();
            hflip(&mut f);
            same("hflip", &f, &all);
        }

        #[test]
        fn gaussian_blur_equals_pil() {
            let (all, input) = fixture();
            for (r, key) in [(0.1f32, "0.1"), (0.5, "0.5"), (1.0, "1.0"), (1.7, "1.7"), (2.0, "2.0")] {
                let mut img = input.clone();
                gaussian_blur(&mut img, r);
                same(&format!("blur_{key}"), &img, &all);
            }
        }

        /// The documented deviation: Catmull-Rom resampling instead of PIL's fixed-point bicubic.
        #[test]
        fn bicubic_resized_crop_is_within_rounding_of_pil() {
            let (all, input) = fixture();
            for (name, bx, size) in [("resized_crop", (5, 7, 30, 40), 32), ("resized_crop_up", (2, 3, 12, 10), 24)] {
                let ours = resized_crop(&input, bx, size);
                let (max, n) = diff(&ours, &to_image(&all[name]));
                let total = (size * size * 3) as usize;
                eprintln!("{name}: max diff {max}, {n} of {total} values differ");
                assert!(max <= 3 && n * 4 <= total, "{name}: max diff {max}, {n} of {total} values differ");
            }
        }
    }
}
