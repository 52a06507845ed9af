//! Resizing the learned position embedding to another patch grid, exactly as official DINO does.
//!
//! Official `interpolate_pos_encoding` calls
//! `F.interpolate(grid, scale_factor=((h/p + 0.1)/g, (w/p + 0.1)/g), mode='bicubic')`.
//! Because a *scale factor* (not a size) reaches torch, the source coordinates are
//! `(dst + 0.5) / scale - 0.5` with that slightly-off scale; Burn's `interpolate` only takes a
//! target size and so samples other coordinates (CLS error ~1e-3 at 480 px, ~1e-2 at 96 px).
//! We therefore build torch's bicubic weights (A = -0.75, align_corners = False, border indices
//! clamped) as two dense matrices and apply them with matmuls: exact, and differentiable.
//!
//! The DINOv2 hub models with registers resize differently (`interpolate_offset=0.0,
//! interpolate_antialias=True`: torch's antialiased bicubic to the exact size, A = -0.5); the
//! same two-matrix scheme serves it with torch's antialiasing weights ([`PosInterpolation`]).

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::PosInterpolation;

const CUBIC_A: f32 = -0.75;

fn cubic_convolution1(x: f32) -> f32 {
    ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0
}

fn cubic_convolution2(x: f32) -> f32 {
    ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A
}

/// `[out_len, in_len]` matrix of torch's 1-D bicubic resampling with `scale_factor`
/// (torch's float arithmetic: scale = 1/scale_factor, index guards of `guard_index_and_lambda`).
pub fn bicubic_matrix(in_len: usize, out_len: usize, scale_factor: f64) -> Vec<f32> {
    let scale = (1.0 / scale_factor) as f32;
    let mut m = vec![0f32; out_len * in_len];
    for o in 0..out_len {
        let real = scale * (o as f32 + 0.5) - 0.5;
        let index = (real.floor() as i64).min(in_len as i64 - 1);
        let t = (real - index as f32).clamp(0.0, 1.0);
        let weights = [
            cubic_convolution2(t + 1.0),
            cubic_convolution1(t),
            cubic_convolution1(1.0 - t),
            cubic_convolution2(2.0 - t),
        ];
        for (k, w) in weights.iter().enumerate() {
            let i = (index - 1 + k as i64).clamp(0, in_len as i64 - 1) as usize;
            m[o * in_len + i] += w;
        }
    }
    m
}

/// `[out_len, in_len]` matrix of torch's 1-D antialiased bicubic resampling to `out_len`
/// (aten `UpSampleKernel.cpp` `_compute_weights_aa` with the Keys filter, A = -0.5: the
/// support is 2 input pixels, widened by in/out when shrinking; weights normalised to sum 1).
pub fn antialias_bicubic_matrix(in_len: usize, out_len: usize) -> Vec<f32> {
    const A: f32 = -0.5;
    let filter = |x: f32| {
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
        } else {
            0.0
        }
    };
    let scale = in_len as f32 / out_len as f32;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut m = vec![0f32; out_len * in_len];
    for o in 0..out_len {
        let center = scale * (o as f32 + 0.5);
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_len as i64).max(xmin as i64) as usize;
        let weights: Vec<f32> = (xmin..xmax).map(|j| filter((j as f32 - center + 0.5) * invscale)).collect();
        let total: f32 = weights.iter().sum();
        for (j, w) in (xmin..xmax).zip(weights) {
            m[o * in_len + j] = if total != 0.0 { w / total } else { w };
        }
    }
    m
}

/// Resize `pos_embed` ([1, 1 + g*g, dim], CLS first) to a `grid_h x grid_w` patch grid the way
/// `mode` says. Returns it unchanged when the official code would (same patch count and a
/// square image).
pub fn interpolate_pos_encoding(pos_embed: Tensor<3>, grid_h: usize, grid_w: usize, mode: PosInterpolation) -> Tensor<3> {
    let [_, n1, dim] = pos_embed.dims();
    let n = n1 - 1;
    if grid_h * grid_w == n && grid_h == grid_w {
        return pos_embed;
    }
    let g = (n as f64).sqrt() as usize;
    assert_eq!(g * g, n, "position embedding of {n} patches is not a square grid");
    let device = pos_embed.device();
    let class_pos = pos_embed.clone().narrow(1, 0, 1);
    let patch_pos = pos_embed.narrow(1, 1, n).reshape([g, g * dim]);

    let (wy, wx) = match mode {
        PosInterpolation::Offset => {
            (matrix(grid_h, g, (grid_h as f64 + 0.1) / g as f64, &device), matrix(grid_w, g, (grid_w as f64 + 0.1) / g as f64, &device))
        }
        PosInterpolation::Antialias => {
            let m = |out: usize| Tensor::from_data(TensorData::new(antialias_bicubic_matrix(g, out), [out, g]), &device);
            (m(grid_h), m(grid_w))
        }
    };
    // rows: [grid_h, g] x [g, g*dim]; then columns, batched over output rows.
    let rows = wy.matmul(patch_pos).reshape([grid_h, g, dim]);
    let wx = wx.unsqueeze_dim::<3>(0).expand([grid_h, grid_w, g]);
    let resized = wx.matmul(rows).reshape([1, grid_h * grid_w, dim]);
    Tensor::cat(vec![class_pos, resized], 1)
}

fn matrix(out_len: usize, in_len: usize, scale_factor: f64, device: &Device) -> Tensor<2> {
    // torch's output size is floor(in * scale); the +0.1 makes it exactly `out_len`.
    debug_assert_eq!((in_len as f64 * scale_factor).floor() as usize, out_len);
    let data = TensorData::new(bicubic_matrix(in_len, out_len, scale_factor), [out_len, in_len]);
    Tensor::from_data(data, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_scale_is_identity() {
        let m = bicubic_matrix(5, 5, 1.0);
        for o in 0..5 {
            for i in 0..5 {
                let expected = if o == i { 1.0 } else { 0.0 };
                assert!((m[o * 5 + i] - expected).abs() < 1e-6, "{o},{i}: {}", m[o * 5 + i]);
            }
        }
    }

    /// Shrinking by 2 with antialiasing spreads the 4-tap Keys cubic over 8 inputs (support
    /// 2 x 2 on each side); every row sums to 1; the same size is the identity.
    #[test]
    fn antialias_rows_sum_to_one_and_widen_when_shrinking() {
        for (i, o) in [(37, 16), (37, 18), (7, 16), (7, 24), (5, 5)] {
            let m = antialias_bicubic_matrix(i, o);
            for r in 0..o {
                let s: f32 = m[r * i..(r + 1) * i].iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "{i}->{o} row {r} sums to {s}");
            }
        }
        let m = antialias_bicubic_matrix(16, 8);
        assert_eq!(m[3 * 16..4 * 16].iter().filter(|&&w| w != 0.0).count(), 8, "{:?}", &m[3 * 16..4 * 16]);
        let id = antialias_bicubic_matrix(5, 5);
        assert!((0..5).all(|r| (id[r * 5 + r] - 1.0).abs() < 1e-6));
    }

    #[test]
    fn rows_sum_to_one() {
        for (i, o) in [(14, 30), (14, 6), (4, 9)] {
            let m = bicubic_matrix(i, o, (o as f64 + 0.1) / i as f64);
            for r in 0..o {
                let s: f32 = m[r * i..(r + 1) * i].iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "row {r} sums to {s}");
            }
        }
    }
}
