//! The pixel operations of DINO's augmentation with PIL's arithmetic, on 8-bit RGB pictures:
//! brightness, contrast, saturation, hue, grayscale, box-blur Gaussian and solarize follow PIL's C
//! code (ImageEnhance blends with truncation, L = ITU-R 601 in 16-bit fixed point, HSV via
//! Convert.c, GaussianBlur as 3 extended box blurs) and are checked byte for byte against PIL in
//! the tests (fixture from tools/make_test_data.py). One deliberate difference: the bicubic resize
//! of RandomResizedCrop uses the `image` crate's Catmull-Rom filter (PIL's bicubic kernel,
//! a = -0.5, with the same support widening when shrinking), not PIL's fixed-point resampler,
//! so resized pixels can differ from PIL's by a rounding step.

use image::imageops::FilterType;
use image::{Rgb, RgbImage};

/// torchvision `F.resized_crop`: the box (top, left, height, width) of `img`, resized to
/// `size` x `size` (bicubic: the named deviation above).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solarize_inverts_bright_values_only() {
        let mut img = RgbImage::from_pixel(1, 1, Rgb([127, 128, 255]));
        solarize(&mut img);
        assert_eq!(img.get_pixel(0, 0).0, [127, 127, 0]);
    }

    /// Byte-for-byte against PIL / torchvision (fixture from tools/make_test_data.py).
    mod against_pil {
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

