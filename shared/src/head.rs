//! The DINO projection head (official `vision_transformer.DINOHead`): an MLP to a bottleneck,
//! L2 normalisation, then a weight-normalised linear layer onto `out_dim` prototypes.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Distribution, Tensor};

use crate::autocast::{linear, matmul};
use crate::config::HeadConfig;
use crate::init::trunc_normal_linear;

/// `F.normalize`'s epsilon: x / max(||x||, eps).
const NORMALIZE_EPS: f64 = 1e-12;

/// `nn.utils.weight_norm(nn.Linear(in, out, bias=False))`: weight = g * v / ||v|| per output row.
/// Both tensors keep torch's [out, ...] layout so official keys load without a transpose.
#[derive(Module, Debug)]
pub struct WeightNormLinear {
    /// [out, 1]; fixed at 1 and not trained when `norm_last_layer`.
    pub weight_g: Param<Tensor<2>>,
    /// [out, in]
    pub weight_v: Param<Tensor<2>>,
}

impl WeightNormLinear {
    fn new(in_dim: usize, out_dim: usize, norm_last_layer: bool, device: &Device) -> Self {
        // torch's default Linear init (kaiming_uniform a=sqrt(5)) is U(-1/sqrt(in), 1/sqrt(in));
        // weight_norm then takes it as v, and the official code fills g with 1.
        let bound = 1.0 / (in_dim as f64).sqrt();
        let weight_v = Tensor::random([out_dim, in_dim], Distribution::Uniform(-bound, bound), device);
        let weight_g = Param::from_tensor(Tensor::ones([out_dim, 1], device)).set_require_grad(!norm_last_layer);
        Self { weight_g, weight_v: Param::from_tensor(weight_v) }
    }

    /// The effective [out, in] weight.
    pub fn weight(&self) -> Tensor<2> {
        let v = self.weight_v.val();
        let norm = v.clone().powi_scalar(2).sum_dim(1).sqrt();
        v * (self.weight_g.val() / norm)
    }

    /// [B, in] -> [B, out] (no bias, as official).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        matmul(x, self.weight().transpose())
    }
}

/// The projection head (official `vision_transformer.DINOHead`): `nlayers` Linear layers with
/// GELU between them down to the bottleneck, L2 normalisation, then the weight-normalised
/// `last_layer` onto `out_dim` prototypes. [B, in_dim] -> [B, out_dim] logits.
#[derive(Module, Debug)]
pub struct DinoHead {
    /// Linear layers of the MLP; official keys `mlp.0`, `mlp.2`, `mlp.4` (GELUs between them).
    pub mlp: Vec<Linear>,
    pub last_layer: WeightNormLinear,
    #[module(skip)]
    config: HeadConfig,
}

impl DinoHead {
    /// Random init as official `DINOHead._init_weights` (trunc normal std 0.02, zero biases;
    /// the last layer: torch's default Linear init under weight norm, g = 1).
    pub fn new(config: &HeadConfig, device: &Device) -> Self {
        let nlayers = config.nlayers.max(1);
        let mut dims = vec![config.in_dim];
        dims.extend(std::iter::repeat_n(config.hidden_dim, nlayers - 1));
        dims.push(config.bottleneck_dim);
        let mlp = dims.windows(2).map(|d| trunc_normal_linear(LinearConfig::new(d[0], d[1]), device)).collect();
        Self {
            mlp,
            last_layer: WeightNormLinear::new(config.bottleneck_dim, config.out_dim, config.norm_last_layer, device),
            config: config.clone(),
        }
    }

    /// The configuration the head was built with.
    pub fn config(&self) -> &HeadConfig {
        &self.config
    }

    /// [B, in_dim] -> [B, out_dim] logits.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.mlp.len() - 1;
        let mut x = x;
        for (i, layer) in self.mlp.iter().enumerate() {
            x = linear(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()));
            if i < last {
                x = gelu(x);
            }
        }
        let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(NORMALIZE_EPS);
        self.last_layer.forward(x / norm)
    }
}
