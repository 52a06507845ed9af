//! The Vision Transformer of DINO (official `vision_transformer.py`), block by block, with the
//! parts DINOv2 adds (official dinov2 `models/vision_transformer.py` `DinoVisionTransformer`):
//! register tokens, LayerScale and the SwiGLU feed-forward layer of ViT-g.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, LinearConfig, Linear};
use burn::tensor::activation::{gelu, silu};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::cell::RefCell;

use crate::attention::Attention;
use crate::config::{FfnLayer, VitConfig};
use crate::init::{trunc_normal_linear, trunc_normal_param};
use crate::linear::forward_tokens;
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
        forward_tokens(&self.fc2, gelu(forward_tokens(&self.fc1, x)))
    }
}

/// Official DINOv2 `SwiGLUFFNFused` (ViT-g): `w12` [C, 2H] (keys `mlp.w12`) gives x1 and x2
/// (its two halves), then `w3(silu(x1) * x2)`.
#[derive(Module, Debug)]
pub struct SwiGlu {
    pub w12: Linear,
    pub w3: Linear,
}

impl SwiGlu {
    /// [B, N, C] -> [B, N, C].
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x12 = forward_tokens(&self.w12, x);
        let hidden = x12.dims()[2] / 2;
        let x1 = x12.clone().narrow(2, 0, hidden);
        let x2 = x12.narrow(2, hidden, hidden);
        forward_tokens(&self.w3, silu(x1) * x2)
    }
}

/// A block's feed-forward layer (official DINOv2 `ffn_layer`). The variant names are not part
/// of the official parameter names (`blocks.N.mlp.fc1.weight`, `blocks.N.mlp.w12.weight`): see
/// [`crate::state_dict::ModulePath`].
#[derive(Module, Debug)]
pub enum Ffn {
    Mlp(Mlp),
    SwiGlu(SwiGlu),
}

impl Ffn {
    fn new(config: &VitConfig, device: &Device) -> Self {
        let (dim, hidden) = (config.embed_dim, config.mlp_hidden());
        let linear = |i, o| trunc_normal_linear(LinearConfig::new(i, o), device);
        match config.ffn_layer {
            FfnLayer::Mlp => Ffn::Mlp(Mlp { fc1: linear(dim, hidden), fc2: linear(hidden, dim) }),
            FfnLayer::SwiGluFused => Ffn::SwiGlu(SwiGlu { w12: linear(dim, 2 * hidden), w3: linear(hidden, dim) }),
        }
    }

    /// [B, N, C] -> [B, N, C].
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            Ffn::Mlp(m) => m.forward(x),
            Ffn::SwiGlu(m) => m.forward(x),
        }
    }
}

/// Official DINOv2 `LayerScale`: the residual branch times a learned per-channel `gamma` [C].
#[derive(Module, Debug)]
pub struct LayerScale {
    pub gamma: Param<Tensor<1>>,
}

impl LayerScale {
    /// Official init: `init_values * ones(dim)` (1e-5 in DINOv2's training configs).
    fn new(dim: usize, init_values: f64, device: &Device) -> Self {
        Self { gamma: Param::from_tensor(Tensor::ones([dim], device).mul_scalar(init_values)) }
    }

    /// [B, N, C] -> [B, N, C].
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        x * self.gamma.val().unsqueeze::<3>()
    }
}

/// DINOv2's LayerScale init value (`layerscale: 1.0e-05` in its training configs).
pub const LAYER_SCALE_INIT: f64 = 1e-5;

fn scaled(ls: &Option<LayerScale>, x: Tensor<3>) -> Tensor<3> {
    match ls {
        Some(ls) => ls.forward(x),
        None => x,
    }
}

thread_local! {
    /// The generator [`with_drop_path_seed`] set on this thread, if any.
    static DROP_PATH_RNG: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's drop-path masks drawn from a generator seeded with `seed`
/// (ChaCha12, `rand`'s `StdRng`) instead of the device's shared generator, and restores the
/// previous one after (also when `f` panics).
///
/// Data-parallel replicas run their forward passes at once on one device: drawn from the
/// device's generator, their masks would depend on which replica draws first. Each replica's
/// forward runs inside this with its own seed (`trainer/src/step.rs`), so a seeded run gives the
/// same masks, hence the same weights, every time. Nested calls (a thread that runs another
/// replica's job while it waits inside a split matrix product) each see their own generator.
pub fn with_drop_path_seed<R>(seed: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<StdRng>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            DROP_PATH_RNG.with(|rng| *rng.borrow_mut() = previous);
        }
    }
    let _restore = Restore(DROP_PATH_RNG.with(|rng| rng.replace(Some(StdRng::seed_from_u64(seed)))));
    f()
}

/// Stochastic depth: drops a sample's whole residual branch with probability `rate` and scales
/// the kept ones by 1/(1-rate) (official `vision_transformer.drop_path`). Active only on an
/// autodiff device, i.e. for the training student; the teacher and every evaluation run on plain
/// tensors. The keep mask [B, 1, 1] comes from the generator of [`with_drop_path_seed`] when
/// one is set on this thread, else from the device's.
fn drop_path(x: Tensor<3>, rate: f64) -> Tensor<3> {
    if rate == 0.0 || !x.device().is_autodiff() {
        return x;
    }
    let keep = 1.0 - rate;
    let [b, _, _] = x.dims();
    let device = x.device();
    let drawn = DROP_PATH_RNG.with(|rng| {
        rng.borrow_mut().as_mut().map(|rng| (0..b).map(|_| if rng.random_bool(keep) { 1.0f32 } else { 0.0 }).collect::<Vec<_>>())
    });
    let mask = match drawn {
        Some(mask) => Tensor::<1>::from_data(TensorData::new(mask, [b]), &device).reshape([b, 1, 1]),
        None => Tensor::<3>::random([b, 1, 1], Distribution::Bernoulli(keep), &device),
    };
    x * mask.div_scalar(keep)
}

/// Pre-norm transformer block: x + ls1(attn(norm1(x))); x + ls2(mlp(norm2(x))), the
/// LayerScales `ls1`, `ls2` only in DINOv2 models.
#[derive(Module, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub ls1: Option<LayerScale>,
    pub norm2: LayerNorm,
    pub mlp: Ffn,
    pub ls2: Option<LayerScale>,
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
            ls1: config.layer_scale.then(|| LayerScale::new(dim, LAYER_SCALE_INIT, device)),
            mlp: Ffn::new(config, device),
            ls2: config.layer_scale.then(|| LayerScale::new(dim, LAYER_SCALE_INIT, device)),
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
        let x = x + drop_path(scaled(&self.ls1, y), self.drop_path);
        let y = self.mlp.forward(self.norm2.forward(x.clone()));
        (x + drop_path(scaled(&self.ls2, y), self.drop_path), attn)
    }
}

/// The DINO ViT backbone (official `vision_transformer.VisionTransformer`, no classifier):
/// patch embedding, CLS token, position embedding resized to the input's grid
/// (`interpolate_pos_encoding`), `depth` pre-norm blocks, final LayerNorm. DINOv2 models add
/// register tokens after CLS (no position embedding), LayerScale and possibly SwiGLU
/// (official dinov2 `DinoVisionTransformer`). Inputs are [B, 3, H, W] ImageNet-normalised
/// pictures with H, W multiples of the patch size; the token sequence is
/// [CLS, registers, patches] (`VitConfig::num_prefix_tokens` before the patches).
#[derive(Module, Debug)]
pub struct VisionTransformer {
    pub patch_embed: PatchEmbed,
    pub cls_token: Param<Tensor<3>>,
    pub pos_embed: Param<Tensor<3>>,
    /// DINOv2 `register_tokens` [1, R, dim], when the model has registers.
    pub register_tokens: Option<Param<Tensor<3>>>,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    #[module(skip)]
    config: VitConfig,
}

impl VisionTransformer {
    /// Whether any block drops paths (`drop_path_rate` > 0).
    pub fn has_drop_path(&self) -> bool {
        self.blocks.iter().any(|block| block.drop_path > 0.0)
    }

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
            // Official DINOv2: `nn.init.normal_(self.register_tokens, std=1e-6)`.
            register_tokens: (config.num_register_tokens > 0).then(|| {
                Param::from_tensor(Tensor::random([1, config.num_register_tokens, dim], Distribution::Normal(0.0, 1e-6), device))
            }),
            blocks: rates.iter().map(|&r| Block::new(config, r, device)).collect(),
            norm: layer_norm(dim, device),
            config: config.clone(),
        }
    }

    /// The configuration the model was built with (or read from a weights file).
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// Patch tokens, CLS prepended, position embedding (resized to the grid) added, then the
    /// registers inserted after CLS: [B, prefix + patches, dim] (official DINOv2
    /// `prepare_tokens_with_masks` without masks; DINO v1 `prepare_tokens`).
    pub fn prepare_tokens(&self, x: Tensor<4>) -> Tensor<3> {
        let [b, _, h, w] = x.dims();
        let p = self.config.patch_size;
        assert!(h >= p && w >= p, "image {h}x{w} is smaller than one {p}x{p} patch");
        let (x, gh, gw) = self.patch_embed.forward(x);
        let dim = self.config.embed_dim;
        let cls = self.cls_token.val().expand([b, 1, dim]);
        let x = Tensor::cat(vec![cls, x], 1);
        let x = x + interpolate_pos_encoding(self.pos_embed.val(), gh, gw, self.config.pos_interpolation);
        match &self.register_tokens {
            Some(registers) => {
                let r = registers.val();
                let n = x.dims()[1];
                let r = r.clone().expand([b, r.dims()[1], dim]);
                Tensor::cat(vec![x.clone().narrow(1, 0, 1), r, x.narrow(1, 1, n - 1)], 1)
            }
            None => x,
        }
    }

    /// Normalised last-layer tokens [B, T, dim] (T = prefix + patches; official DINOv2
    /// `forward_features` before it splits CLS, registers and patches).
    pub fn forward_tokens(&self, x: Tensor<4>) -> Tensor<3> {
        let mut x = self.prepare_tokens(x);
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.norm.forward(x)
    }

    /// [`forward_tokens`](Self::forward_tokens) and the softmaxed attention [B, heads, T, T] of
    /// block `block` (0-based) from the same pass.
    ///
    /// # Panics
    /// When `block` is not a block index (callers check it against `config().depth`).
    pub fn forward_tokens_with_attention(&self, x: Tensor<4>, block: usize) -> (Tensor<3>, Tensor<4>) {
        assert!(block < self.blocks.len(), "block {block} of a {}-block model", self.blocks.len());
        let mut x = self.prepare_tokens(x);
        for b in &self.blocks[..block] {
            x = b.forward(x);
        }
        let (mut x, attention) = self.blocks[block].forward_with_attention(x);
        for b in &self.blocks[block + 1..] {
            x = b.forward(x);
        }
        (self.norm.forward(x), attention)
    }

    /// The CLS token of normalised tokens [B, T, dim] -> [B, dim].
    fn cls(tokens: Tensor<3>) -> Tensor<2> {
        let [b, _, d] = tokens.dims();
        tokens.narrow(1, 0, 1).reshape([b, d])
    }

    /// The patch tokens of normalised tokens [B, T, dim] -> [B, patches, dim] (official DINOv2
    /// `x_norm_patchtokens`: after CLS and the registers).
    pub fn patch_tokens(&self, tokens: Tensor<3>) -> Tensor<3> {
        let prefix = self.config.num_prefix_tokens();
        let n = tokens.dims()[1];
        tokens.narrow(1, prefix, n - prefix)
    }

    /// The normalised CLS token: [B, dim] (official `VisionTransformer.forward`, `x[:, 0]`).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        Self::cls(self.forward_tokens(x))
    }

    /// Softmaxed attention of the last block: [B, heads, T, T] (CLS first, then registers and
    /// patches); official `get_last_selfattention`.
    pub fn last_selfattention(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_with_last_attention(x).1
    }

    /// CLS features and the last block's attention from one pass.
    pub fn forward_with_last_attention(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<4>) {
        self.forward_with_attention(x, self.blocks.len() - 1)
    }

    /// CLS features and block `block`'s attention (0-based) from one pass.
    ///
    /// # Panics
    /// When `block` is not a block index.
    pub fn forward_with_attention(&self, x: Tensor<4>, block: usize) -> (Tensor<2>, Tensor<4>) {
        let (tokens, attention) = self.forward_tokens_with_attention(x, block);
        (Self::cls(tokens), attention)
    }

    /// Normalised token outputs of the last `n` blocks, earliest first: each [B, T, dim];
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
    /// The two largest (a ViT-S/16 MLP at batch 1, and just over the threshold with a short last
    /// chunk) take the patch's split into chunks on rayon's threads.
    #[test]
    fn gelu_and_its_gradient_match_the_float64_formula() {
        let device = Device::flex().autodiff();
        device.seed(7);
        for shape in [[1, 7], [3, 33], [64, 384], [197, 1536], [4, 16389]] {
            let x: Tensor<2> = Tensor::random(shape, Distribution::Uniform(-6.0, 6.0), &device).require_grad();
            // A random upstream gradient: the backward must multiply by it, not assume ones.
            let w: Tensor<2> = Tensor::random(shape, Distribution::Uniform(-2.0, 2.0), &device);
            let y = gelu(x.clone());
            let grads = (y.clone() * w.clone()).sum().backward();
            let gx = host(x.grad(&grads).unwrap());
            let (xs, ys, ws) = (host(x.inner()), host(y.inner()), host(w.inner()));
            for (((&x, &y), &g), &w) in xs.iter().zip(&ys).zip(&gx).zip(&ws) {
                let x = x as f64;
                let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                let want = w as f64 * (cdf + x * pdf);
                assert!((y as f64 - x * cdf).abs() <= 1e-5, "gelu({x}) = {y}, want {}", x * cdf);
                assert!((g as f64 - want).abs() <= 2e-5, "{w} * gelu'({x}) = {g}, want {want}");
            }
        }
        let nan: Tensor<2> = Tensor::from_data(TensorData::new(vec![f32::NAN, 1.0], [1, 2]), &Device::flex());
        assert!(host(gelu(nan))[0].is_nan(), "NaN must propagate");
    }
}
