//! The fused autodiff nodes of `patches/burn-autodiff` (softmax, log-softmax, layer norm) against
//! the same functions composed from Burn's primitive ops (each primitive with its own backward,
//! as Burn 0.22.1 differentiates them without the patch): forward values and the gradients of
//! every input, several shapes and axes, within 1e-5. Also the vectorisable `exp` of
//! `patches/burn-flex` (under softmax, log-softmax and GELU's gradient) against float64, and
//! `dino_shared::linear::linear_tokens` (tokens folded into the rows) against Burn's batched
//! `linear`.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::module::{layer_norm, linear};
use burn::tensor::{Device, Distribution, FloatDType, Tensor, TensorData};
use dino_shared::linear::linear_tokens;

/// Largest difference over the largest magnitude (absolute when that is below 1): parameter
/// gradients are sums over thousands of rows, whose float32 rounding is relative to the sum's size.
const TOL: f32 = 1e-5;

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 data")
}

fn assert_close(what: &str, got: Vec<f32>, want: Vec<f32>) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max) / scale;
    assert!(worst <= TOL, "{what}: max difference {worst:e} > {TOL:e} (relative to the largest value {scale})");
}

fn device() -> Device {
    let device = Device::flex().autodiff();
    device.seed(11);
    device
}

/// softmax(x) composed as the default `ActivationOps::softmax` does.
fn softmax_composed<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    let shifted = x.clone() - x.detach().max_dim(dim);
    let exp = shifted.exp();
    exp.clone() / exp.sum_dim(dim)
}

/// log_softmax(x) composed as the default `ActivationOps::log_softmax` does.
fn log_softmax_composed<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    let shifted = x.clone() - x.detach().max_dim(dim);
    shifted.clone() - shifted.exp().sum_dim(dim).log()
}

/// Forward and input gradient of `fused` against `composed` for `x` of `shape`, with a random
/// upstream gradient (the gradient of `sum(y)` through a softmax is zero: it would test nothing).
fn check_unary<const D: usize>(
    name: &str,
    shape: [usize; D],
    fused: impl Fn(Tensor<D>) -> Tensor<D>,
    composed: impl Fn(Tensor<D>) -> Tensor<D>,
) {
    let device = device();
    let x0: Tensor<D> = Tensor::random(shape, Distribution::Normal(0.0, 3.0), &device);
    let w: Tensor<D> = Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let run = |f: &dyn Fn(Tensor<D>) -> Tensor<D>| {
        let x = x0.clone().detach().require_grad();
        let y = f(x.clone());
        let grads = (y.clone() * w.clone()).sum().backward();
        let gx = x.grad(&grads).expect("input gradient");
        (host(y.inner()), host(gx))
    };
    let (y_fused, g_fused) = run(&fused);
    let (y_composed, g_composed) = run(&composed);
    assert_close(&format!("{name} {shape:?} forward"), y_fused, y_composed);
    assert_close(&format!("{name} {shape:?} gradient"), g_fused, g_composed);
}

#[test]
fn softmax_node_equals_composed_ops() {
    check_unary("softmax dim 3", [2, 3, 37, 37], |x| softmax(x, 3), |x| softmax_composed(x, 3));
    check_unary("softmax dim 1", [4, 5, 7], |x| softmax(x, 1), |x| softmax_composed(x, 1));
    check_unary("softmax dim 0", [9, 2], |x| softmax(x, 0), |x| softmax_composed(x, 0));
    check_unary("softmax dim 1", [6, 1024], |x| softmax(x, 1), |x| softmax_composed(x, 1));
    check_unary("softmax dim 1", [3, 1], |x| softmax(x, 1), |x| softmax_composed(x, 1));
}

#[test]
fn log_softmax_node_equals_composed_ops() {
    check_unary("log_softmax dim 1", [6, 1024], |x| log_softmax(x, 1), |x| log_softmax_composed(x, 1));
    check_unary("log_softmax dim 2", [2, 3, 65], |x| log_softmax(x, 2), |x| log_softmax_composed(x, 2));
    check_unary("log_softmax dim 0", [7, 3], |x| log_softmax(x, 0), |x| log_softmax_composed(x, 0));
}

/// layer_norm composed as the default `ModuleOps::layer_norm` does (biased variance).
fn layer_norm_composed<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Option<Tensor<1>>, eps: f64) -> Tensor<D> {
    let last = D - 1;
    let centered = x.clone() - x.mean_dim(last);
    let var = (centered.clone() * centered.clone()).mean_dim(last);
    let normalized = centered / var.add_scalar(eps).sqrt();
    let scaled = normalized * gamma.unsqueeze::<D>();
    match beta {
        Some(beta) => scaled + beta.unsqueeze::<D>(),
        None => scaled,
    }
}

fn check_layer_norm<const D: usize>(shape: [usize; D], with_beta: bool, eps: f64) {
    let device = device();
    let d = shape[D - 1];
    // An offset and scale per row, as activations have (the centring is then not a no-op).
    let x0: Tensor<D> = Tensor::random(shape, Distribution::Normal(0.5, 2.0), &device);
    let gamma0: Tensor<1> = Tensor::random([d], Distribution::Normal(1.0, 0.5), &device);
    let beta0: Tensor<1> = Tensor::random([d], Distribution::Normal(0.0, 0.5), &device);
    let w: Tensor<D> = Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device);
    type Ln<const D: usize> = dyn Fn(Tensor<D>, Tensor<1>, Option<Tensor<1>>) -> Tensor<D>;
    let run = |f: &Ln<D>| {
        let x = x0.clone().detach().require_grad();
        let gamma = gamma0.clone().detach().require_grad();
        let beta = with_beta.then(|| beta0.clone().detach().require_grad());
        let y = f(x.clone(), gamma.clone(), beta.clone());
        let grads = (y.clone() * w.clone()).sum().backward();
        let mut out = vec![host(y.inner()), host(x.grad(&grads).expect("dx")), host(gamma.grad(&grads).expect("dgamma"))];
        if let Some(beta) = beta {
            out.push(host(beta.grad(&grads).expect("dbeta")));
        }
        out
    };
    let fused = run(&move |x, g, b| layer_norm(x, g, b, eps));
    let composed = run(&move |x, g, b| layer_norm_composed(x, g, b, eps));
    let reference = layer_norm_f64(&host(x0), &host(gamma0), &host(beta0), &host(w), d, eps, with_beta);
    for (i, what) in ["forward", "dx", "dgamma", "dbeta"].iter().enumerate().take(fused.len()) {
        let scale = reference[i].iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let err = |v: &[f32]| v.iter().zip(&reference[i]).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max) / scale;
        let (fused_err, composed_err) = (err(&fused[i]), err(&composed[i]));
        eprintln!("layer_norm {shape:?} {what}: against float64, fused {fused_err:.1e}, composed {composed_err:.1e}");
        assert_close(&format!("layer_norm {shape:?} beta {with_beta} {what}"), fused[i].clone(), composed[i].clone());
        // And no less accurate than the composed ops, measured against float64.
        assert!(fused_err <= (2.0 * composed_err).max(1e-6), "layer_norm {shape:?} {what}: fused {fused_err:e} vs composed {composed_err:e}");
    }
}

/// Layer norm and its gradients in float64 on the host: `[forward, dx, dgamma, dbeta]` for the
/// upstream gradient `w` (rows of `d` features).
fn layer_norm_f64(x: &[f32], gamma: &[f32], beta: &[f32], w: &[f32], d: usize, eps: f64, with_beta: bool) -> Vec<Vec<f64>> {
    let (mut y, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    let (mut dgamma, mut dbeta) = (vec![0.0; d], vec![0.0; d]);
    for ((xr, wr), (yr, dxr)) in x.chunks(d).zip(w.chunks(d)).zip(y.chunks_mut(d).zip(dx.chunks_mut(d))) {
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        let xhat: Vec<f64> = xr.iter().map(|&v| (v as f64 - mean) * rstd).collect();
        let g: Vec<f64> = (0..d).map(|j| wr[j] as f64 * gamma[j] as f64).collect();
        let g_mean = g.iter().sum::<f64>() / d as f64;
        let gx_mean = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / d as f64;
        for j in 0..d {
            yr[j] = xhat[j] * gamma[j] as f64 + if with_beta { beta[j] as f64 } else { 0.0 };
            dxr[j] = rstd * (g[j] - g_mean - xhat[j] * gx_mean);
            dgamma[j] += wr[j] as f64 * xhat[j];
            dbeta[j] += wr[j] as f64;
        }
    }
    vec![y, dx, dgamma, dbeta]
}

#[test]
fn layer_norm_node_equals_composed_ops() {
    check_layer_norm([64, 37, 96], true, 1e-6);
    check_layer_norm([5, 384], true, 1e-6);
    check_layer_norm([2, 3, 7], false, 1e-5);
    check_layer_norm([1, 1, 4, 16], true, 1e-6);
}

/// The node with some inputs not requiring a gradient (a frozen scale, a constant input): the
/// gradients that are asked for equal the composed ops', the others are absent.
#[test]
fn layer_norm_node_with_frozen_inputs() {
    let device = device();
    let shape = [3, 5, 16];
    let x0: Tensor<3> = Tensor::random(shape, Distribution::Normal(0.5, 2.0), &device);
    let gamma0: Tensor<1> = Tensor::random([16], Distribution::Normal(1.0, 0.5), &device);
    let beta0: Tensor<1> = Tensor::random([16], Distribution::Normal(0.0, 0.5), &device);
    let w: Tensor<3> = Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device);
    for (x_grad, gamma_grad) in [(true, false), (false, true), (false, false)] {
        type Ln = dyn Fn(Tensor<3>, Tensor<1>, Option<Tensor<1>>) -> Tensor<3>;
        let run = |f: &Ln| {
            let track = |t: Tensor<3>, on: bool| if on { t.require_grad() } else { t };
            let x = track(x0.clone().detach(), x_grad);
            let gamma = if gamma_grad { gamma0.clone().detach().require_grad() } else { gamma0.clone().detach() };
            let beta = beta0.clone().detach().require_grad();
            let y = f(x.clone(), gamma.clone(), Some(beta.clone()));
            let grads = (y * w.clone()).sum().backward();
            [x.grad(&grads).map(host), gamma.grad(&grads).map(host), beta.grad(&grads).map(host)]
        };
        let fused = run(&|x, g, b| layer_norm(x, g, b, 1e-6));
        let composed = run(&|x, g, b| layer_norm_composed(x, g, b, 1e-6));
        for (what, (a, b)) in ["dx", "dgamma", "dbeta"].iter().zip(fused.into_iter().zip(composed)) {
            let case = format!("layer_norm, x tracked {x_grad}, gamma tracked {gamma_grad}: {what}");
            match (a, b) {
                (Some(a), Some(b)) => assert_close(&case, a, b),
                (None, None) => {}
                (a, b) => panic!("{case}: fused has it {}, composed {}", a.is_some(), b.is_some()),
            }
        }
    }
}

/// `patches/burn-flex`'s `exp_f32` (flex's f32 `exp`, softmax, GELU's gradient) against float64
/// `exp`: within 2 ulp (2.4e-7 relative) on every 97th float of [-87.3, 88.7], 0 for the
/// subnormal results below -87.34 and for -inf, +inf above ln(f32::MAX), NaN for NaN; and a
/// softmax with a -inf entry gives that entry exactly 0.
#[test]
fn exp_matches_float64() {
    let device = Device::flex();
    let mut xs = Vec::new();
    let mut x = -87.33f32;
    while x < 88.72 {
        xs.push(x);
        let bits = if x < 0.0 { x.to_bits() - 97 } else { x.to_bits() + 97 };
        x = if x < 0.0 && x > -1e-30 { 1e-30 } else { f32::from_bits(bits) };
    }
    let n = xs.len();
    xs.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1000.0, -87.35, 88.73, 0.0, -0.0]);
    let len = xs.len();
    let got = host(Tensor::<1>::from_floats(xs.as_slice(), &device).exp());
    let mut worst = 0.0f64;
    for (&x, &e) in xs[..n].iter().zip(&got) {
        let want = (x as f64).exp();
        worst = worst.max(((e as f64 - want) / want).abs());
    }
    assert!(worst <= 2.4e-7, "exp: max relative error {worst:e} over {n} points");
    let tail = &got[n..len];
    assert!(tail[0].is_nan(), "exp(NaN) = {}", tail[0]);
    assert_eq!(&tail[1..], &[f32::INFINITY, 0.0, 0.0, 0.0, f32::INFINITY, 1.0, 1.0]);
    let p = host(softmax(Tensor::<1>::from_floats([0.5, f32::NEG_INFINITY, -0.5], &device), 0));
    assert_eq!(p[1], 0.0);
    assert!((p[0] - 0.731_058_6).abs() <= 1e-7 && (p[2] - 0.268_941_4).abs() <= 1e-7, "softmax {p:?}");
}

/// flex's softmax over the last axis against float64, for every row length from 1 to 70 (rows
/// under four SIMD vectors take the patched whole-chunk exp loop, longer ones the row kernel) and
/// a few long ones: each probability within 2e-6 of its float64 value, relative (the float32
/// row sum's rounding; 4.4e-7 measured on rows of 1024), every probability in [0, 1],
/// a -inf entry exactly 0 (a row with one finite entry gives it exactly 1).
#[test]
fn softmax_rows_match_float64() {
    let device = Device::flex();
    let mut state = 0x2545_f491_u32;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state as f32 / u32::MAX as f32
    };
    for len in (1..=70).chain([127, 128, 129, 1024]) {
        let rows = 5;
        let mut xs: Vec<f32> = (0..rows * len).map(|_| (uniform() - 0.5) * 60.0).collect();
        // Row 1 has a -inf entry (a masked position); row 2 all entries but one -inf.
        if len > 1 {
            xs[len] = f32::NEG_INFINITY;
        }
        for v in &mut xs[2 * len + 1..3 * len] {
            *v = f32::NEG_INFINITY;
        }
        let got = host(softmax(Tensor::<2>::from_data(TensorData::new(xs.clone(), [rows, len]), &device), 1));
        for (r, (row, p)) in xs.chunks(len).zip(got.chunks(len)).enumerate() {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            let want: Vec<f64> = e.iter().map(|v| v / sum).collect();
            let top = want.iter().fold(0.0f64, |m, &v| m.max(v));
            for (i, (&g, &w)) in p.iter().zip(&want).enumerate() {
                assert!((0.0..=1.0).contains(&g), "len {len} row {r}: p[{i}] = {g}");
                assert!((g as f64 - w).abs() <= 2e-6 * w + 1e-12 * top, "len {len} row {r}: p[{i}] = {g}, float64 {w}");
                if row[i] == f32::NEG_INFINITY {
                    assert_eq!(g, 0.0, "len {len} row {r}: p[{i}] of -inf");
                }
            }
            if r == 2 {
                assert_eq!(p[0], 1.0, "len {len}: the one finite entry");
            }
        }
    }
}

/// `linear_tokens` ([B, N, C] folded to [B * N, C]) against Burn's `linear` on the same [B, N, C]
/// (a batched product for these shapes): output and the gradients of input, weight and bias,
/// contiguous and transposed inputs, with and without bias.
#[test]
fn linear_tokens_equals_batched_linear() {
    let device = device();
    for ([b, n, c], c_out, transposed, with_bias) in
        [([4, 37, 24], 72, false, true), ([3, 10, 16], 16, true, true), ([2, 5, 8], 12, false, false)]
    {
        let x0: Tensor<3> = if transposed {
            Tensor::<3>::random([b, c, n], Distribution::Normal(0.0, 1.0), &device).swap_dims(1, 2)
        } else {
            Tensor::random([b, n, c], Distribution::Normal(0.0, 1.0), &device)
        };
        let w0: Tensor<2> = Tensor::random([c, c_out], Distribution::Normal(0.0, 0.5), &device);
        let b0: Tensor<1> = Tensor::random([c_out], Distribution::Normal(0.0, 0.5), &device);
        let up: Tensor<3> = Tensor::random([b, n, c_out], Distribution::Normal(0.0, 1.0), &device);
        type Lin = dyn Fn(Tensor<3>, Tensor<2>, Option<Tensor<1>>) -> Tensor<3>;
        let run = |f: &Lin| {
            let x = x0.clone().detach().require_grad();
            let w = w0.clone().detach().require_grad();
            let bias = b0.clone().detach().require_grad();
            let y = f(x.clone(), w.clone(), with_bias.then(|| bias.clone()));
            let grads = (y.clone() * up.clone()).sum().backward();
            let gb = bias.grad(&grads).map(host);
            (host(y.inner()), host(x.grad(&grads).expect("dx")), host(w.grad(&grads).expect("dw")), gb)
        };
        let folded = run(&|x, w, b| linear_tokens(x, w, b));
        let batched = run(&|x, w, b| linear(x, w, b));
        let case = format!("linear [{b}, {n}, {c}] -> {c_out}, transposed {transposed}, bias {with_bias}");
        assert_close(&format!("{case}: y"), folded.0, batched.0);
        assert_close(&format!("{case}: dx"), folded.1, batched.1);
        assert_close(&format!("{case}: dw"), folded.2, batched.2);
        assert_eq!(folded.3.is_some(), with_bias, "{case}: bias gradient");
        if let (Some(a), Some(bb)) = (folded.3, batched.3) {
            assert_close(&format!("{case}: db"), a, bb);
        }
    }
}

/// Products write their output without zero-filling it first (burn-flex patch `gemm_output`):
/// every element must still be written, for 2-D and batched products, strided inputs and an
/// empty inner dimension (k = 0 gives zeros), checked against a float64 product on the host.
#[test]
fn matmul_outputs_are_written_whole() {
    let device = Device::flex();
    let reference = |a: &[f32], b: &[f32], batch: usize, m: usize, k: usize, n: usize| -> Vec<f32> {
        let mut out = vec![0f32; batch * m * n];
        for p in 0..batch {
            for i in 0..m {
                for j in 0..n {
                    let s: f64 = (0..k).map(|t| a[(p * m + i) * k + t] as f64 * b[(p * k + t) * n + j] as f64).sum();
                    out[(p * m + i) * n + j] = s as f32;
                }
            }
        }
        out
    };
    // Shapes for each of gemm's paths: packed kernels, batched, k = 0, m = 1 and n = 1 (gemv),
    // k <= 2 (outer products), small m x n with a column-major rhs (the horizontal kernel).
    let shapes = [(1, 37, 24, 72), (6, 37, 32, 37), (3, 5, 0, 4), (1, 7, 0, 3), (2, 64, 96, 288), (1, 1, 16, 40), (1, 40, 16, 1), (2, 9, 2, 7), (1, 8, 1, 8), (1, 12, 20, 16)];
    for (dtype, tol) in [(FloatDType::F32, 1e-4f32), (FloatDType::F16, 0.1)] {
    for (batch, m, k, n) in shapes {
        // Fill the allocator's free lists with non-zero garbage first, so that a product that
        // skipped an element would show it.
        drop(Tensor::<1>::full([batch * m * n + 64], f32::NAN, &device).into_data());
        let a: Tensor<3> = Tensor::random([batch, m, k], Distribution::Normal(0.0, 1.0), &device);
        let bt: Tensor<3> = Tensor::random([batch, n, k], Distribution::Normal(0.0, 1.0), &device);
        let b = bt.clone().swap_dims(1, 2); // strided rhs
        let want = reference(&host(a.clone()), &host(b.clone()), batch, m, k, n);
        let got = if batch == 1 {
            // 2-D product (Burn's reshape reads a 0 as "keep this dimension": slice instead).
            let a2: Tensor<2> = Tensor::from_data(TensorData::new(host(a), [m, k]), &device);
            let b2: Tensor<2> = Tensor::from_data(TensorData::new(host(bt.clone().slice([0..1]).squeeze_dim::<2>(0)), [n, k]), &device);
            host(a2.cast(dtype).matmul(b2.transpose().cast(dtype)).cast(FloatDType::F32))
        } else {
            host(a.cast(dtype).matmul(b.cast(dtype)).cast(FloatDType::F32))
        };
        let worst = got.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(got.iter().all(|v| v.is_finite()) && worst <= tol, "{dtype:?} [{batch}, {m}, {k}] x [{k}, {n}]: max difference {worst}");
    }
    }
}
