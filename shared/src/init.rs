//! Official initialisation (`VisionTransformer._init_weights`, `DINOHead._init_weights`):
//! Linear weights trunc_normal(std=.02), biases 0; cls_token and pos_embed trunc_normal(.02).
//!
//! timm's `trunc_normal_(std=.02)` truncates at the absolute values +-2, i.e. at 100 standard
//! deviations: no sample is ever cut, so a plain Normal(0, .02) has the same distribution.

use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Distribution, Tensor};

pub const INIT_STD: f64 = 0.02;

pub fn trunc_normal_linear(config: LinearConfig, device: &Device) -> Linear {
    let mut linear = config.with_initializer(Initializer::Normal { mean: 0.0, std: INIT_STD }).init(device);
    linear.bias = linear.bias.map(|b| Param::from_tensor(Tensor::zeros(b.lazy_shape(), device)));
    linear
}

pub fn trunc_normal_param<const D: usize>(shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::random(shape, Distribution::Normal(0.0, INIT_STD), device))
}
