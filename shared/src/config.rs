//! Architecture descriptions: the official presets (vit_tiny / vit_small / vit_base) and free
//! configurations for small images, plus the DINO projection head.

use serde::{Deserialize, Serialize};

/// Shape of a Vision Transformer (official `vision_transformer.VisionTransformer` arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// Image side the learned position embedding was made for (224 for the released models).
    /// Any other size that is a multiple of the patch is served by interpolating it.
    pub img_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    /// Stochastic depth: rises linearly from 0 to this over the blocks (student only).
    #[serde(default)]
    pub drop_path_rate: f64,
    /// DINOv2 register tokens (0 or 4 in the released models): learned tokens inserted after
    /// CLS, with no position embedding (official DINOv2 `register_tokens`).
    #[serde(default)]
    pub num_register_tokens: usize,
    /// DINOv2 LayerScale: each residual branch is scaled per channel by a learned `gamma`
    /// (official DINOv2 `layers/layer_scale.py`, keys `ls1.gamma`, `ls2.gamma`).
    #[serde(default)]
    pub layer_scale: bool,
    /// The blocks' feed-forward layer (official DINOv2 `ffn_layer`).
    #[serde(default)]
    pub ffn_layer: FfnLayer,
    /// How the position embedding is resized to another patch grid.
    #[serde(default)]
    pub pos_interpolation: PosInterpolation,
}

/// How the learned position embedding is resized to another patch grid (official DINOv2
/// `interpolate_offset` / `interpolate_antialias`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PosInterpolation {
    /// Bicubic (A = -0.75) with the scale factor (n + 0.1) / M: DINO v1
    /// (`interpolate_pos_encoding`) and the DINOv2 hub models without registers
    /// (`interpolate_offset=0.1, interpolate_antialias=False`).
    #[default]
    Offset,
    /// Antialiased bicubic (torch's `_upsample_bicubic2d_aa`: A = -0.5, support widened when
    /// shrinking) to the exact size: the DINOv2 hub models with registers
    /// (`dinov2_vit*14_reg`: `interpolate_offset=0.0, interpolate_antialias=True`).
    Antialias,
}

/// The feed-forward layer of a block (official DINOv2 `ffn_layer` argument).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FfnLayer {
    /// fc1 -> exact GELU -> fc2 (DINO v1, DINOv2 ViT-S/B/L).
    #[default]
    Mlp,
    /// Official DINOv2 `SwiGLUFFNFused` (ViT-g): `w12` -> halves x1, x2 -> SiLU(x1) * x2 -> `w3`.
    #[serde(rename = "swiglufused")]
    SwiGluFused,
}

impl VitConfig {
    /// The official architectures by name: `vit_tiny`, `vit_small`, `vit_base`
    /// (`deit_tiny` / `deit_small` are accepted as the official aliases).
    pub fn from_arch(arch: &str, patch_size: usize) -> Option<Self> {
        let (embed_dim, depth, num_heads) = match arch {
            "vit_tiny" | "deit_tiny" => (192, 12, 3),
            "vit_small" | "deit_small" => (384, 12, 6),
            "vit_base" => (768, 12, 12),
            _ => return None,
        };
        Some(Self::custom(224, patch_size, embed_dim, depth, num_heads))
    }

    /// A free configuration, e.g. for 28-64 px images.
    pub fn custom(img_size: usize, patch_size: usize, embed_dim: usize, depth: usize, num_heads: usize) -> Self {
        Self {
            img_size,
            patch_size,
            in_chans: 3,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            drop_path_rate: 0.0,
            num_register_tokens: 0,
            layer_scale: false,
            ffn_layer: FfnLayer::Mlp,
            pos_interpolation: PosInterpolation::Offset,
        }
    }

    /// Check that this shape can be built and run: every loader (`.pth`, safetensors, the page's
    /// metadata) and `dino train` call it before building a model, so that no bad file or flag
    /// reaches an assertion inside the model.
    ///
    /// # Errors
    /// The first violated rule, as a [`ConfigError`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        use ConfigError::*;
        let within = |what: &'static str, value: usize, max: usize| {
            if value == 0 || value > max {
                Err(OutOfRange { what, value, max })
            } else {
                Ok(())
            }
        };
        if self.in_chans != 3 {
            return Err(Channels(self.in_chans));
        }
        within("patch size", self.patch_size, 1024)?;
        within("embedding dimension", self.embed_dim, 16384)?;
        within("depth", self.depth, 256)?;
        within("head count", self.num_heads, self.embed_dim)?;
        within("image size", self.img_size, 16384)?;
        if self.embed_dim % self.num_heads != 0 {
            return Err(Heads { embed_dim: self.embed_dim, num_heads: self.num_heads });
        }
        if self.img_size < self.patch_size || self.img_size % self.patch_size != 0 {
            return Err(ImageSize { img_size: self.img_size, patch_size: self.patch_size });
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0 && self.mlp_ratio <= 64.0) {
            return Err(MlpRatio(self.mlp_ratio));
        }
        if self.num_register_tokens > 256 {
            return Err(OutOfRange { what: "register token count", value: self.num_register_tokens, max: 256 });
        }
        if self.mlp_hidden() == 0 {
            return Err(MlpRatio(self.mlp_ratio));
        }
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            return Err(DropPath(self.drop_path_rate));
        }
        Ok(())
    }

    pub fn with_drop_path_rate(mut self, rate: f64) -> Self {
        self.drop_path_rate = rate;
        self
    }

    /// Side of the patch grid the position embedding holds.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Width of the feed-forward layer: `embed_dim * mlp_ratio`, or for SwiGLU official
    /// `SwiGLUFFNFused`'s `(int(hidden * 2 / 3) + 7) // 8 * 8` of it (4096 for ViT-g).
    pub fn mlp_hidden(&self) -> usize {
        let hidden = (self.embed_dim as f64 * self.mlp_ratio) as usize;
        match self.ffn_layer {
            FfnLayer::Mlp => hidden,
            FfnLayer::SwiGluFused => (hidden * 2 / 3 + 7) / 8 * 8,
        }
    }

    /// Tokens before the patch tokens: CLS and the registers (DINOv2 `num_register_tokens`).
    /// Every consumer of the token sequence (attention maps, patch features) skips these.
    pub fn num_prefix_tokens(&self) -> usize {
        1 + self.num_register_tokens
    }

    /// The official name when this is one of the presets (used in file metadata and logs).
    pub fn arch_name(&self) -> String {
        for arch in ["vit_tiny", "vit_small", "vit_base"] {
            if let Some(preset) = Self::from_arch(arch, self.patch_size) {
                if preset.embed_dim == self.embed_dim
                    && preset.depth == self.depth
                    && preset.num_heads == self.num_heads
                    && self.mlp_ratio == 4.0
                {
                    return format!("{arch}{}", self.patch_size);
                }
            }
        }
        format!("vit_d{}x{}h{}p{}", self.embed_dim, self.depth, self.num_heads, self.patch_size)
    }

    /// [`arch_name`](Self::arch_name) plus the DINOv2 parts: `_reg4`, `_ls`, `_swiglu`.
    pub fn model_name(&self) -> String {
        let mut name = self.arch_name();
        if self.num_register_tokens > 0 {
            name += &format!("_reg{}", self.num_register_tokens);
        }
        if self.layer_scale {
            name += "_ls";
        }
        if self.ffn_layer == FfnLayer::SwiGluFused {
            name += "_swiglu";
        }
        name
    }
}

/// Why a [`VitConfig`] or [`HeadConfig`] cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("the patch embedding takes {0} input channel(s); the model reads RGB pictures (3)")]
    Channels(usize),
    #[error("{num_heads} heads do not divide the embedding dimension {embed_dim}")]
    Heads { embed_dim: usize, num_heads: usize },
    #[error("image size {img_size} is not a positive multiple of the patch size {patch_size}")]
    ImageSize { img_size: usize, patch_size: usize },
    #[error("{what} {value} is out of range (1 to {max})")]
    OutOfRange { what: &'static str, value: usize, max: usize },
    #[error("MLP ratio {0} is out of range (0 to 64]")]
    MlpRatio(f64),
    #[error("drop-path rate {0} is out of range [0, 1)")]
    DropPath(f64),
}

/// Shape of the DINO projection head (official `DINOHead` arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    pub in_dim: usize,
    pub out_dim: usize,
    pub hidden_dim: usize,
    pub bottleneck_dim: usize,
    pub nlayers: usize,
    /// `true`: weight_g stays 1 (only the direction of each prototype is learned).
    pub norm_last_layer: bool,
}

impl HeadConfig {
    /// Check that this head can be built (see [`VitConfig::validate`]).
    ///
    /// # Errors
    /// A dimension that is zero or absurdly large.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let within = |what: &'static str, value: usize, max: usize| {
            if value == 0 || value > max {
                Err(ConfigError::OutOfRange { what, value, max })
            } else {
                Ok(())
            }
        };
        within("head input dimension", self.in_dim, 16384)?;
        within("head output dimension", self.out_dim, 1 << 20)?;
        within("head bottleneck dimension", self.bottleneck_dim, 16384)?;
        within("head layer count", self.nlayers, 16)?;
        if self.nlayers > 1 {
            within("head hidden dimension", self.hidden_dim, 65536)?;
        }
        Ok(())
    }

    /// The official defaults: 3 layers, hidden 2048, bottleneck 256.
    pub fn new(in_dim: usize, out_dim: usize, norm_last_layer: bool) -> Self {
        Self { in_dim, out_dim, hidden_dim: 2048, bottleneck_dim: 256, nlayers: 3, norm_last_layer }
    }
}
