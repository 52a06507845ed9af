//! Mixed precision: the model's matrix products in f16 or bf16, everything else in f32.
//!
//! Official `main_dino.py --use_fp16` runs the student and teacher forward and the DINO loss
//! under `torch.cuda.amp.autocast()`: a thread-local mode in which matrix products (`linear`,
//! `matmul`, `conv2d`) cast their inputs to f16, while softmax, log-softmax, layer norm, norms and
//! sums run in f32. Burn has no autocast, so the products of the ViT and the DINO head call the
//! functions below, which cast explicitly when [`autocast`] is on for the calling thread and are
//! the plain f32 products otherwise. Parameters, gradients (the casts' backward turns them back
//! into f32), the optimizer state, the loss and the centre stay f32.
//!
//! Deliberate difference from torch's autocast: each product's output (bias included, added in
//! the low dtype as `addmm` does) is cast back to f32 at once, so the elementwise ops between
//! products run in f32 where autocast runs GELU and the attention scale in f16. That costs one
//! cast per product and is at least as precise; the products, where the time goes, run in the
//! low dtype.
//!
//! The patch embedding (a convolution, about 1% of a ViT-S/16's multiply-adds) stays f32: Burn
//! 0.22.1's wgpu convolution gave a wrong weight gradient in f16 (relative L2 error 1.0 against
//! the f32 one on Mesa lavapipe; the cpu's was right), found by the trainer's
//! `mixed_precision_gradients_track_f32` test when the convolution was cast too.

use std::cell::Cell;

use burn::tensor::module::linear as burn_linear;
use burn::tensor::{FloatDType, Tensor};

thread_local! {
    /// The dtype of matrix products on this thread; `None`: f32 (no autocast).
    static PRODUCT_DTYPE: Cell<Option<FloatDType>> = const { Cell::new(None) };
}

/// Runs `f` with the matrix products of this thread in `dtype` (`None`: f32), then restores the
/// previous mode (also when `f` panics), as `with torch.autocast(...)` does. Only the thread that
/// calls it is affected: code that runs the model on other threads calls it there.
pub fn autocast<R>(dtype: Option<FloatDType>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<FloatDType>);
    impl Drop for Restore {
        fn drop(&mut self) {
            PRODUCT_DTYPE.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(PRODUCT_DTYPE.with(|d| d.replace(dtype)));
    f()
}

/// The dtype matrix products run in on this thread (`None`: f32).
pub fn product_dtype() -> Option<FloatDType> {
    PRODUCT_DTYPE.with(|d| d.get())
}

/// `lhs @ rhs`: [..., M, K] x [..., K, N] -> [..., M, N] (f32), in the autocast dtype.
pub fn matmul<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    match product_dtype() {
        None => lhs.matmul(rhs),
        Some(d) => lhs.cast(d).matmul(rhs.cast(d)).cast(FloatDType::F32),
    }
}

/// `x W + b`: x [..., C_in], weight [C_in, C_out] (Burn's layout), bias [C_out] -> [..., C_out]
/// (f32), in the autocast dtype (torch's `F.linear` under autocast).
pub fn linear<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<D> {
    match product_dtype() {
        None => burn_linear(x, weight, bias),
        Some(d) => burn_linear(x.cast(d), weight.cast(d), bias.map(|b| b.cast(d))).cast(FloatDType::F32),
    }
}
