//! Multi-head self-attention with one fused `qkv` projection (timm / official layout), able
//! to hand back its softmaxed attention weights for the attention maps.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};

use crate::autocast::matmul;
use crate::init::trunc_normal_linear;
use crate::linear::{forward_tokens, linear_tokens};

/// Multi-head self-attention (official `vision_transformer.Attention`): `qkv` [C, 3C] (Burn's
/// [in, out] layout; official key `attn.qkv`), `proj` [C, C], scale head_dim^-0.5.
#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    num_heads: usize,
}

impl Attention {
    /// Random init as official (`trunc_normal_(std=.02)` weights, zero biases).
    ///
    /// # Panics
    /// When `num_heads` does not divide `dim` (`VitConfig::validate` rejects such configs first).
    pub fn new(dim: usize, num_heads: usize, device: &Device) -> Self {
        assert_eq!(dim % num_heads, 0, "embed dim {dim} is not divisible by {num_heads} heads");
        Self {
            qkv: trunc_normal_linear(LinearConfig::new(dim, 3 * dim), device),
            proj: trunc_normal_linear(LinearConfig::new(dim, dim), device),
            num_heads,
        }
    }

    /// `x`: [B, N, C] -> (output [B, N, C], attention [B, heads, N, N]).
    pub fn forward_with_attention(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<4>) {
        let [b, n, c] = x.dims();
        let h = self.num_heads;
        let head_dim = c / h;
        let scale = (head_dim as f64).powf(-0.5);
        // The fused projection's outputs are ordered [3, heads, head_dim] (official reshape
        // [B, N, 3, heads, head_dim]): q, k and v are its column blocks [0, C), [C, 2C), [2C, 3C).
        // Under autodiff (the student), projecting with each block of the weight gives the same
        // numbers as slicing the fused output, and its backward slices the [C, 3C] weight
        // instead of zero-filling the [B, N, 3C] activation three times per block (Burn's
        // `narrow` backward). Without autodiff the fused output is sliced (views, no copy).
        let (attn, out) = if x.device().is_autodiff() {
            let weight = self.qkv.weight.val();
            let bias = self.qkv.bias.as_ref().map(|p| p.val());
            let take = |i: usize| {
                let w = weight.clone().narrow(1, i * c, c);
                let bias = bias.clone().map(|bias| bias.narrow(0, i * c, c));
                linear_tokens(x.clone(), w, bias).reshape([b, n, h, head_dim]).swap_dims(1, 2)
            };
            let (q, k, v) = (take(0), take(1), take(2));
            let attn = softmax(matmul(q, k.swap_dims(2, 3)).mul_scalar(scale), 3);
            let out = matmul(attn.clone(), v);
            (attn, out)
        } else {
            // Without autodiff there is no backward to spare: one product [B * N, C] x [C, 3C]
            // (one packing of the input, and a wider product that splits better over the
            // threads), then q, k and v as strided views [1, B, heads, N, head_dim] of it.
            let qkv = forward_tokens(&self.qkv, x).reshape([b, n, 3, h, head_dim]);
            let take = |i: usize| qkv.clone().narrow(2, i, 1).permute([2, 0, 3, 1, 4]);
            let (q, k, v) = (take(0), take(1), take(2));
            let attn = softmax(matmul(q, k.swap_dims(3, 4)).mul_scalar(scale), 4);
            let out = matmul(attn.clone(), v);
            (attn.reshape([b, h, n, n]), out.reshape([b, h, n, head_dim]))
        };
        let out = out.swap_dims(1, 2).reshape([b, n, c]);
        (forward_tokens(&self.proj, out), attn)
    }

    /// `x`: [B, N, C] -> [B, N, C] (official `Attention.forward`'s first output).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with_attention(x).0
    }
}
