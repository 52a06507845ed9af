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
        Some(Self {
            img_size: 224,
            patch_size,
            in_chans: 3,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            drop_path_rate: 0.0,
        })
    }

    /// A free configuration, e.g. for 28-64 px images.
    pub fn custom(img_size: usize, patch_size: usize, embed_dim: usize, depth: usize, num_heads: usize) -> Self {
        Self { img_size, patch_size, in_chans: 3, embed_dim, depth, num_heads, mlp_ratio: 4.0, drop_path_rate: 0.0 }
    }

    pub fn with_drop_path_rate(mut self, rate: f64) -> Self {
        self.drop_path_rate = rate;
        self
    }

    /// Side of the patch grid the position embedding holds.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
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
    /// The official defaults: 3 layers, hidden 2048, bottleneck 256.
    pub fn new(in_dim: usize, out_dim: usize, norm_last_layer: bool) -> Self {
        Self { in_dim, out_dim, hidden_dim: 2048, bottleneck_dim: 256, nlayers: 3, norm_last_layer }
    }
}
