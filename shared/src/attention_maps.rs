//! From the last block's attention to pictures (official visualize_attention.py): the CLS
//! query's attention to every patch per head, the cumulative-mass threshold masks, the
//! head-mean map, nearest upsampling by the patch size, a perceptual colour map and overlays.
//! Pure host code on plain slices, shared by the CLI and the web page.

use image::{Rgb, RgbImage};

/// Per-head CLS->patch attention on the patch grid.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionMaps {
    pub heads: usize,
    pub grid_h: usize,
    pub grid_w: usize,
    /// [heads, grid_h, grid_w] row-major.
    pub values: Vec<f32>,
}

impl AttentionMaps {
    /// `attn` is one image's attention, [heads, T, T] row-major with T = `prefix` + patches
    /// (CLS first, then the registers of DINOv2 models); keeps row 0 (the CLS query) without
    /// the prefix columns: `attn[:, 0, prefix:]` (official `attentions[0, :, 0, 1:]` for v1).
    ///
    /// # Panics
    /// When `attn` is not [heads, T, T] (callers check shapes: `inference::attention_maps`).
    pub fn from_attention(attn: &[f32], heads: usize, prefix: usize, grid_h: usize, grid_w: usize) -> Self {
        let t = grid_h * grid_w + prefix;
        assert_eq!(attn.len(), heads * t * t, "attention of {} values is not {heads} x {t} x {t}", attn.len());
        let rows: Vec<f32> = (0..heads).flat_map(|h| attn[h * t * t..h * t * t + t].iter().copied()).collect();
        Self::from_cls_rows(&rows, heads, prefix, grid_h, grid_w)
    }

    /// From the CLS query rows only, [heads, T] (the `prefix` columns first).
    ///
    /// # Panics
    /// When `rows` is not [heads, T].
    pub fn from_cls_rows(rows: &[f32], heads: usize, prefix: usize, grid_h: usize, grid_w: usize) -> Self {
        let t = grid_h * grid_w + prefix;
        assert_eq!(rows.len(), heads * t, "CLS rows of {} values are not {heads} x {t}", rows.len());
        let values = (0..heads).flat_map(|h| rows[h * t + prefix..(h + 1) * t].iter().copied()).collect();
        Self { heads, grid_h, grid_w, values }
    }

    /// Head `j`'s map, [grid_h, grid_w] row-major. Panics when `j >= heads`.
    pub fn head(&self, j: usize) -> &[f32] {
        let n = self.grid_h * self.grid_w;
        &self.values[j * n..(j + 1) * n]
    }

    /// Mean over heads (the map the official video script draws).
    pub fn mean(&self) -> Vec<f32> {
        let n = self.grid_h * self.grid_w;
        (0..n).map(|i| (0..self.heads).map(|h| self.values[h * n + i]).sum::<f32>() / self.heads as f32).collect()
    }

    /// Head `j`'s official threshold mask, [grid_h, grid_w]. Panics when `j >= heads`.
    pub fn threshold_mask(&self, j: usize, threshold: f32) -> Vec<bool> {
        threshold_mask(self.head(j), threshold)
    }

    /// Official threshold masks of every head, [heads, grid_h, grid_w].
    pub fn threshold_masks(&self, threshold: f32) -> Vec<bool> {
        (0..self.heads).flat_map(|h| self.threshold_mask(h, threshold)).collect()
    }
}

/// The smallest set of patches holding `threshold` of the attention mass (official algorithm:
/// sort ascending, normalise to sum 1, cumulative sum, keep where cumsum > 1 - threshold).
/// Arithmetic follows torch's CPU kernels: float division, cumulative sum accumulated in double
/// and stored as float, compared with `1 - threshold` rounded to float.
pub fn threshold_mask(values: &[f32], threshold: f32) -> Vec<bool> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let sum = values.iter().map(|&v| v as f64).sum::<f64>() as f32;
    let cut = (1.0 - threshold as f64) as f32;
    let mut mask = vec![false; values.len()];
    let mut cum = 0f64;
    for &i in &order {
        cum += (values[i] / sum) as f64;
        mask[i] = (cum as f32) > cut;
    }
    mask
}

/// Nearest-neighbour upsampling of a grid by an integer factor (the patch size).
pub fn upsample_nearest<T: Copy>(grid: &[T], grid_h: usize, grid_w: usize, factor: usize) -> Vec<T> {
    let (h, w) = (grid_h * factor, grid_w * factor);
    (0..h * w).map(|i| grid[(i / w / factor) * grid_w + (i % w) / factor]).collect()
}

/// The inferno colour map (a perceptually uniform map, the one of the official video script),
/// as the widely used 6th-degree polynomial fit; `t` in [0, 1].
pub fn inferno(t: f32) -> [u8; 3] {
    const C: [[f32; 3]; 7] = [
        [0.000_218_940_37, 0.001_651_004_6, -0.019_480_898],
        [0.106_513_42, 0.563_956_44, 3.932_712_4],
        [11.602_493, -3.972_854, -15.942_394],
        [-41.703_995, 17.436_399, 44.354_145],
        [77.162_94, -33.402_36, -81.807_31],
        [-71.319_43, 32.626_064, 73.209_52],
        [25.131_126, -12.242_669, -23.070_325],
    ];
    let t = t.clamp(0.0, 1.0);
    let mut rgb = [0u8; 3];
    for (c, out) in rgb.iter_mut().enumerate() {
        let v = C.iter().rev().fold(0.0f32, |acc, k| acc * t + k[c]);
        *out = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    }
    rgb
}

/// Min-max normalise a map to [0, 1] (what `plt.imsave` does before colouring).
pub fn min_max(values: &[f32]) -> Vec<f32> {
    let lo = values.iter().cloned().fold(f32::INFINITY, f32::min);
    let hi = values.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let range = if hi > lo { hi - lo } else { 1.0 };
    values.iter().map(|v| (v - lo) / range).collect()
}

/// A grid map as a coloured picture, each patch a `patch x patch` block.
pub fn heatmap(grid: &[f32], grid_h: usize, grid_w: usize, patch: usize) -> RgbImage {
    let up = upsample_nearest(&min_max(grid), grid_h, grid_w, patch);
    let (w, h) = ((grid_w * patch) as u32, (grid_h * patch) as u32);
    RgbImage::from_fn(w, h, |x, y| Rgb(inferno(up[(y * w + x) as usize])))
}

/// Blend `top` over `base` with the given opacity (both the same size).
pub fn overlay(base: &RgbImage, top: &RgbImage, opacity: f32) -> RgbImage {
    assert_eq!(base.dimensions(), top.dimensions(), "overlay of pictures of different sizes");
    RgbImage::from_fn(base.width(), base.height(), |x, y| {
        let (b, t) = (base.get_pixel(x, y).0, top.get_pixel(x, y).0);
        Rgb(std::array::from_fn(|c| (b[c] as f32 * (1.0 - opacity) + t[c] as f32 * opacity).round() as u8))
    })
}

/// A threshold mask drawn over the picture: the kept region tinted with `color`, its border
/// outlined (the official `display_instances` draws tinted masks with contours).
pub fn draw_mask(base: &RgbImage, mask: &[bool], grid_h: usize, grid_w: usize, patch: usize, color: [u8; 3]) -> RgbImage {
    let up = upsample_nearest(mask, grid_h, grid_w, patch);
    let (w, h) = (base.width() as usize, base.height() as usize);
    assert_eq!((grid_w * patch, grid_h * patch), (w, h), "mask grid does not cover the picture");
    let at = |x: isize, y: isize| x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h && up[y as usize * w + x as usize];
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let (xi, yi) = (x as isize, y as isize);
        let p = base.get_pixel(x, y).0;
        if !at(xi, yi) {
            return Rgb(p);
        }
        let edge = !(at(xi - 1, yi) && at(xi + 1, yi) && at(xi, yi - 1) && at(xi, yi + 1));
        if edge {
            Rgb(color)
        } else {
            Rgb(std::array::from_fn(|c| (p[c] as f32 * 0.5 + color[c] as f32 * 0.5).round() as u8))
        }
    })
}

/// Distinct colours for masks of different heads.
pub fn head_color(j: usize) -> [u8; 3] {
    const PALETTE: [[u8; 3]; 8] = [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
    ];
    PALETTE[j % PALETTE.len()]
}

/// Pictures of equal size in a grid with `cols` columns and a small gap.
pub fn composite(images: &[RgbImage], cols: usize) -> RgbImage {
    assert!(!images.is_empty());
    let (w, h) = images[0].dimensions();
    let gap = 4u32;
    let cols = cols.max(1).min(images.len()) as u32;
    let rows = (images.len() as u32).div_ceil(cols);
    let mut out = RgbImage::from_pixel(cols * w + (cols - 1) * gap, rows * h + (rows - 1) * gap, Rgb([255, 255, 255]));
    for (i, img) in images.iter().enumerate() {
        let (c, r) = (i as u32 % cols, i as u32 / cols);
        image::imageops::replace(&mut out, img, (c * (w + gap)) as i64, (r * (h + gap)) as i64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keeps_smallest_set_with_threshold_mass() {
        // 0.5 + 0.3 = 0.8 >= 0.6 of the mass: the two largest patches are kept.
        let m = threshold_mask(&[0.1, 0.5, 0.1, 0.3], 0.6);
        assert_eq!(m, vec![false, true, false, true]);
    }

    #[test]
    fn cls_row_without_cls_column() {
        // 1 head, grid 1x2: N+1 = 3.
        let attn = [0.0, 0.25, 0.75, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0];
        let m = AttentionMaps::from_attention(&attn, 1, 1, 1, 2);
        assert_eq!(m.values, vec![0.25, 0.75]);
    }

    #[test]
    fn nearest_upsampling_repeats_blocks() {
        assert_eq!(upsample_nearest(&[1, 2], 1, 2, 2), vec![1, 1, 2, 2, 1, 1, 2, 2]);
    }

    #[test]
    fn inferno_endpoints() {
        let lo = inferno(0.0);
        let hi = inferno(1.0);
        assert!(lo.iter().all(|&c| c < 8), "{lo:?}");
        assert!(hi[0] > 240 && hi[1] > 240 && hi[2] > 140 && hi[2] < 180, "{hi:?}");
    }
}
