//! Multi-head self-attention with one fused `qkv` projection (timm / official layout), able
//! to hand back its softmaxed attention weights for the attention maps.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};

use crate::init::trunc_normal_linear;

#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    num_heads: usize,
}

impl Attention {
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
        // [B, N, 3, heads, head_dim]: the official reshape order of the fused projection.
        let qkv = self.qkv.forward(x).reshape([b, n, 3, h, head_dim]);
        let take = |i: usize| qkv.clone().narrow(2, i, 1).reshape([b, n, h, head_dim]).swap_dims(1, 2);
        let (q, k, v) = (take(0), take(1), take(2));
        let attn = softmax(q.matmul(k.swap_dims(2, 3)).mul_scalar(scale), 3);
        let out = attn.clone().matmul(v).swap_dims(1, 2).reshape([b, n, c]);
        (self.proj.forward(out), attn)
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with_attention(x).0
    }
}
