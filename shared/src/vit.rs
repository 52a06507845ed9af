//! The Vision Transformer of DINO (official `vision_transformer.py`), block by block.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, LinearConfig, Linear};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Distribution, Tensor};

use crate::attention::Attention;
use crate::config::VitConfig;
use crate::init::{trunc_normal_linear, trunc_normal_param};
use crate::pos_embed::interpolate_pos_encoding;

/// DINO and timm use LayerNorm eps 1e-6 (Burn's default is 1e-5).
pub const LAYER_NORM_EPS: f64 = 1e-6;

pub(crate) fn layer_norm(dim: usize, device: &Device) -> LayerNorm {
    LayerNormConfig::new(dim).with_epsilon(LAYER_NORM_EPS).init(device)
}

/// Image to patch tokens: a Conv2d with kernel = stride = patch size.
#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: Conv2d,
    patch_size: usize,
}

impl PatchEmbed {
    /// [B, 3, H, W] -> ([B, (H/p)(W/p), dim], grid_h, grid_w)
    pub fn forward(&self, x: Tensor<4>) -> (Tensor<3>, usize, usize) {
        let x = self.proj.forward(x);
        let [b, d, gh, gw] = x.dims();
        (x.reshape([b, d, gh * gw]).swap_dims(1, 2), gh, gw)
    }
}

/// Feed-forward part of a block: fc1 -> exact (erf) GELU -> fc2.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    /// [B, N, C] -> [B, N, C].
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.fc2.forward(gelu(self.fc1.forward(x)))
    }
}

/// Stochastic depth: drops a sample's whole residual branch with probability `rate` and scales
/// the kept ones by 1/(1-rate). Active only on an autodiff device, i.e. for the training
/// student; the teacher and every evaluation run on plain tensors.
fn drop_path(x: Tensor<3>, rate: f64) -> Tensor<3> {
    if rate == 0.0 || !x.device().is_autodiff() {
        return x;
    }
    let keep = 1.0 - rate;
    let [b, _, _] = x.dims();
    let mask = Tensor::<3>::random([b, 1, 1], Distribution::Bernoulli(keep), &x.device());
    x * mask.div_scalar(keep)
}

/// Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x)).
#[derive(Module, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    drop_path: f64,
}

impl Block {
    /// A block of `config`'s width and heads with stochastic depth rate `drop_path`.
    pub fn new(config: &VitConfig, drop_path: f64, device: &Device) -> Self {
        let dim = config.embed_dim;
        Self {
            norm1: layer_norm(dim, device),
            attn: Attention::new(dim, config.num_heads, device),
            norm2: layer_norm(dim, device),
            mlp: Mlp {
                fc1: trunc_normal_linear(LinearConfig::new(dim, config.mlp_hidden()), device),
                fc2: trunc_normal_linear(LinearConfig::new(config.mlp_hidden(), dim), device),
            },
            drop_path,
        }
    }

    /// [B, N, C] -> [B, N, C] (official `Block.forward`).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with_attention(x).0
    }

    /// The block's output and the softmaxed attention of its self-attention layer.
    pub fn forward_with_attention(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<4>) {
        let (y, attn) = self.attn.forward_with_attention(self.norm1.forward(x.clone()));
        let x = x + drop_path(y, self.drop_path);
        let y = self.mlp.forward(self.norm2.forward(x.clone()));
        (x + drop_path(y, self.drop_path), attn)
    }
}

/// The DINO ViT backbone (official `vision_transformer.VisionTransformer`, no classifier):
/// patch embedding, CLS token, position embedding resized to the input's grid
/// (`interpolate_pos_encoding`), `depth` pre-norm blocks, final LayerNorm. Inputs are
/// [B, 3, H, W] ImageNet-normalised pictures with H, W multiples of the patch size.
#[derive(Module, Debug)]
pub struct VisionTransformer {
    pub patch_embed: PatchEmbed,
    pub cls_token: Param<Tensor<3>>,
    pub pos_embed: Param<Tensor<3>>,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    #[module(skip)]
    config: VitConfig,
}

impl VisionTransformer {
    /// Random init as official `VisionTransformer.__init__` (trunc normal std 0.02 for the
    /// position embedding, CLS token and Linear weights; torch's default Conv2d init for the
    /// patch embedding; drop-path rates rising linearly over the blocks).
    ///
    /// # Panics
    /// When `img_size` is not a multiple of the patch size (`VitConfig::validate` rejects it first).
    pub fn new(config: &VitConfig, device: &Device) -> Self {
        let dim = config.embed_dim;
        let p = config.patch_size;
        let grid = config.grid();
        assert!(grid > 0 && config.img_size % p == 0, "img_size {} is not a multiple of patch {p}", config.img_size);
        // Stochastic depth decay rule: linearly 0 -> drop_path_rate over the blocks.
        let rates: Vec<f64> = (0..config.depth)
            .map(|i| if config.depth > 1 { config.drop_path_rate * i as f64 / (config.depth - 1) as f64 } else { 0.0 })
            .collect();
        Self {
            patch_embed: PatchEmbed {
                // Default torch Conv2d init (kaiming_uniform a=sqrt(5)), as official.
                proj: Conv2dConfig::new([config.in_chans, dim], [p, p]).with_stride([p, p]).init(device),
                patch_size: p,
            },
            cls_token: trunc_normal_param([1, 1, dim], device),
            pos_embed: trunc_normal_param([1, grid * grid + 1, dim], device),
            blocks: rates.iter().map(|&r| Block::new(config, r, device)).collect(),
            norm: layer_norm(dim, device),
            config: config.clone(),
        }
    }

    /// The configuration the model was built with (or read from a weights file).
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// Patch tokens, CLS prepended, position embedding (resized to the grid) added.
    pub fn prepare_tokens(&self, x: Tensor<4>) -> Tensor<3> {
        let [b, _, h, w] = x.dims();
        let p = self.config.patch_size;
        assert!(h >= p && w >= p, "image {h}x{w} is smaller than one {p}x{p} patch");
        let (x, gh, gw) = self.patch_embed.forward(x);
        let dim = self.config.embed_dim;
        let cls = self.cls_token.val().expand([b, 1, dim]);
        let x = Tensor::cat(vec![cls, x], 1);
        x + interpolate_pos_encoding(self.pos_embed.val(), gh, gw)
    }

    /// The normalised CLS token: [B, dim] (official `VisionTransformer.forward`, `x[:, 0]`).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.prepare_tokens(x);
        for block in &self.blocks {
            x = block.forward(x);
        }
        let [b, _, d] = x.dims();
        self.norm.forward(x).narrow(1, 0, 1).reshape([b, d])
    }

    /// Softmaxed attention of the last block: [B, heads, N+1, N+1] (CLS first); official
    /// `get_last_selfattention`.
    pub fn last_selfattention(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_with_last_attention(x).1
    }

    /// CLS features and the last block's attention from one pass.
    pub fn forward_with_last_attention(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<4>) {
        let mut x = self.prepare_tokens(x);
        let last = self.blocks.len() - 1;
        for block in &self.blocks[..last] {
            x = block.forward(x);
        }
        let (x, attn) = self.blocks[last].forward_with_attention(x);
        let [b, _, d] = x.dims();
        (self.norm.forward(x).narrow(1, 0, 1).reshape([b, d]), attn)
    }

    /// Normalised token outputs of the last `n` blocks, earliest first: each [B, N+1, dim];
    /// official `get_intermediate_layers` (what `eval_linear.py` concatenates the CLS of).
    pub fn intermediate_layers(&self, x: Tensor<4>, n: usize) -> Vec<Tensor<3>> {
        let mut x = self.prepare_tokens(x);
        let depth = self.blocks.len();
        let mut out = Vec::with_capacity(n);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x);
            if depth - i <= n {
                out.push(self.norm.forward(x.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::gelu;
    use burn::tensor::{Device, Distribution, Tensor, TensorData};

    fn host(t: Tensor<2>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
    }

    /// Exact GELU (`nn.GELU()`) forward and gradient on Burn's CPU backend, whose erf is the
    /// vectorised approximation of patches/burn-flex, against the float64 formula
    /// 0.5 x (1 + erf(x / sqrt 2)) and its derivative: several shapes, x in [-6, 6], <= 1e-5.
    #[test]
    fn gelu_and_its_gradient_match_the_float64_formula() {
        let device = Device::flex().autodiff();
        device.seed(7);
        for shape in [[1, 7], [3, 33], [64, 384]] {
            let x: Tensor<2> = Tensor::random(shape, Distribution::Uniform(-6.0, 6.0), &device).require_grad();
            let y = gelu(x.clone());
            let grads = y.clone().sum().backward();
            let gx = host(x.grad(&grads).unwrap());
            let (xs, ys) = (host(x.inner()), host(y.inner()));
            for ((&x, &y), &g) in xs.iter().zip(&ys).zip(&gx) {
                let x = x as f64;
                let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                assert!((y as f64 - x * cdf).abs() <= 1e-5, "gelu({x}) = {y}, want {}", x * cdf);
                assert!((g as f64 - (cdf + x * pdf)).abs() <= 1e-5, "gelu'({x}) = {g}, want {}", cdf + x * pdf);
            }
        }
        let nan: Tensor<2> = Tensor::from_data(TensorData::new(vec![f32::NAN, 1.0], [1, 2]), &Device::flex());
        assert!(host(gelu(nan))[0].is_nan(), "NaN must propagate");
    }
}
