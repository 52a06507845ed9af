//! A Linear layer applied to token sequences as one 2-D matrix product.
//!
//! Burn 0.22.1's `linear` keeps a [B, N, C] input batched (`MatmulTransformPolicy` merges the
//! batch into the rows only when that makes the output squarer): B small products that each
//! re-pack the weight, and under autodiff a weight gradient of B x [C, C_out] summed over B.
//! Folding the tokens into the rows, [B * N, C] x [C, C_out], is the same product row by row
//! (PyTorch's `F.linear` does the same fold) and makes the weight gradient one product.

use burn::nn::Linear;
use crate::autocast::linear;
use burn::tensor::Tensor;

/// `x W + b` on tokens: x [B, N, C_in], weight [C_in, C_out] (Burn's layout), bias [C_out]
/// -> [B, N, C_out], in the [`autocast`](crate::autocast) dtype. `x` is copied once when not contiguous (as the fold needs).
pub fn linear_tokens(x: Tensor<3>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<3> {
    let [b, n, c] = x.dims();
    let c_out = weight.dims()[1];
    linear(x.reshape([b * n, c]), weight, bias).reshape([b, n, c_out])
}

/// [`linear_tokens`] with a [`Linear`] module's parameters: [B, N, C_in] -> [B, N, C_out].
pub fn forward_tokens(layer: &Linear, x: Tensor<3>) -> Tensor<3> {
    linear_tokens(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}
