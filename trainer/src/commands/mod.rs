pub mod attention;
pub mod bench;
pub mod download;
pub mod embed;
pub mod export;
pub mod knn;
pub mod linear;
pub mod train;

use std::path::PathBuf;

use burn::tensor::Device;
use dino_shared::weights::{ArchSpec, WeightsFile};
use dino_shared::{DinoHead, VisionTransformer};

/// Which weights to load (official flag names).
#[derive(clap::Args, Debug, Clone)]
#[command(rename_all = "snake_case")]
pub struct ModelArgs {
    /// A .pth checkpoint (released backbone or full training checkpoint) or a safetensors file.
    #[arg(long)]
    pub pretrained_weights: PathBuf,
    /// vit_tiny, vit_small or vit_base; inferred from the weights when not given.
    #[arg(long)]
    pub arch: Option<String>,
    /// Patch size; inferred from the weights when not given.
    #[arg(long)]
    pub patch_size: Option<usize>,
    /// Head count, for non-standard widths (the official models have 64-dim heads).
    #[arg(long)]
    pub num_heads: Option<usize>,
    /// Which model of a full training checkpoint: teacher or student.
    #[arg(long, default_value = "teacher")]
    pub checkpoint_key: String,
}

impl ModelArgs {
    pub fn read(&self) -> anyhow::Result<WeightsFile> {
        Ok(WeightsFile::read(&self.pretrained_weights, &self.checkpoint_key)?)
    }

    pub fn spec(&self) -> ArchSpec {
        ArchSpec { arch: self.arch.clone(), patch_size: self.patch_size, num_heads: self.num_heads }
    }

    pub fn backbone(&self, device: &Device) -> anyhow::Result<VisionTransformer> {
        Ok(self.read()?.backbone_model(&self.spec(), device)?)
    }

    pub fn backbone_and_head(&self, device: &Device) -> anyhow::Result<(VisionTransformer, Option<DinoHead>)> {
        let file = self.read()?;
        Ok((file.backbone_model(&self.spec(), device)?, file.head_model(device)?))
    }
}

/// `--image_size H [W]` (one value: square), as the official script takes it.
pub fn image_size(values: &[usize]) -> anyhow::Result<(usize, usize)> {
    match values {
        [s] => Ok((*s, *s)),
        [h, w] => Ok((*h, *w)),
        _ => anyhow::bail!("--image_size takes one or two values (H W)"),
    }
}
