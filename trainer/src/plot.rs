//! The loss curve as a PNG (drawn with the `image` crate: no plotting dependency, no fonts).
//! Per-iteration loss in light grey, its per-epoch mean in blue, epoch boundaries as ticks.

use image::{Rgb, RgbImage};

const W: u32 = 640;
const H: u32 = 360;
const MARGIN: u32 = 24;

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), color: Rgb<u8>) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for s in 0..=steps {
        let t = s as f64 / steps as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        if x >= 0.0 && y >= 0.0 && (x as u32) < W && (y as u32) < H {
            img.put_pixel(x as u32, y as u32, color);
        }
    }
}

/// `iters`: loss per iteration; `epochs`: mean loss per finished epoch.
pub fn loss_curve(iters: &[f64], iters_per_epoch: usize, epochs: &[f64]) -> RgbImage {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let finite: Vec<f64> = iters.iter().chain(epochs).cloned().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return img;
    }
    let lo = finite.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let n = iters.len().max(1) as f64;
    let (pw, ph) = ((W - 2 * MARGIN) as f64, (H - 2 * MARGIN) as f64);
    let px = |i: f64| MARGIN as f64 + pw * i / n;
    let py = |v: f64| MARGIN as f64 + ph * (1.0 - (v - lo) / span);
    let axis = Rgb([0, 0, 0]);
    line(&mut img, (MARGIN as f64, (H - MARGIN) as f64), ((W - MARGIN) as f64, (H - MARGIN) as f64), axis);
    line(&mut img, (MARGIN as f64, MARGIN as f64), (MARGIN as f64, (H - MARGIN) as f64), axis);
    for e in 1..=epochs.len() {
        let x = px((e * iters_per_epoch) as f64);
        line(&mut img, (x, (H - MARGIN) as f64), (x, (H - MARGIN + 5) as f64), axis);
    }
    for (i, w) in iters.windows(2).enumerate() {
        line(&mut img, (px(i as f64), py(w[0])), (px(i as f64 + 1.0), py(w[1])), Rgb([190, 190, 190]));
    }
    let centers: Vec<(f64, f64)> =
        epochs.iter().enumerate().map(|(e, v)| (px((e as f64 + 0.5) * iters_per_epoch as f64), py(*v))).collect();
    for w in centers.windows(2) {
        line(&mut img, w[0], w[1], Rgb([31, 119, 180]));
    }
    for &(x, y) in &centers {
        for dx in -2..=2 {
            for dy in -2..=2 {
                line(&mut img, (x + dx as f64, y + dy as f64), (x + dx as f64, y + dy as f64), Rgb([31, 119, 180]));
            }
        }
    }
    img
}
