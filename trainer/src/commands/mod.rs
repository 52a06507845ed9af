pub mod attention;
pub mod bench;
pub mod download;
pub mod embed;
pub mod export;
pub mod knn;
pub mod linear;
pub mod train;
pub mod video;
pub mod views;

use std::path::PathBuf;

use burn::tensor::Device;

use crate::data::{Dataset, Split};
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

    /// The side of the evaluation crop: `--image_size` or the model's own training size.
    ///
    /// # Errors
    /// A size below one patch.
    pub fn eval_size(&self, image_size: Option<usize>, model: &VisionTransformer) -> anyhow::Result<usize> {
        let size = image_size.unwrap_or(model.config().img_size);
        let patch = model.config().patch_size;
        anyhow::ensure!(size >= patch, "--image_size {size} is smaller than one {patch} px patch");
        dino_shared::inference::check_input_size(model, size, size).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(size)
    }

    pub fn backbone_and_head(&self, device: &Device) -> anyhow::Result<(VisionTransformer, Option<DinoHead>)> {
        let file = self.read()?;
        Ok((file.backbone_model(&self.spec(), device)?, file.head_model(device)?))
    }
}

/// `--image_size S` (shorter side, aspect kept) or `--image_size H W`, as the official scripts
/// take it.
pub fn image_size(values: &[usize]) -> anyhow::Result<dino_shared::preprocess::ImageSize> {
    Ok(dino_shared::preprocess::ImageSize::from_values(values)?)
}

/// Where the labelled splits of an evaluation (`knn`, `linear`) come from.
#[derive(clap::Args, Debug, Clone)]
#[command(rename_all = "snake_case")]
pub struct SplitArgs {
    /// Root with both splits: an IDX folder (train-* / t10k-*), Tiny-ImageNet, or a folder with
    /// train/ and val/ class folders.
    #[arg(long, required_unless_present_all = ["train_path", "val_path"])]
    pub data_path: Option<PathBuf>,
    /// The training split (k-NN bank, probe training data) instead of --data_path's.
    #[arg(long)]
    pub train_path: Option<PathBuf>,
    /// The validation split instead of --data_path's: an IDX folder's t10k-* files, a folder
    /// with val/, or a folder of class folders.
    #[arg(long)]
    pub val_path: Option<PathBuf>,
}

impl SplitArgs {
    /// Both splits, the validation classes matched to the training ones by name.
    ///
    /// # Errors
    /// A missing split (no silent evaluation of the training pictures against themselves), a
    /// validation class the training split lacks, unreadable data.
    pub fn open(&self) -> anyhow::Result<(Dataset, Dataset)> {
        let open = |explicit: &Option<PathBuf>, split| match (explicit, &self.data_path) {
            (Some(p), _) => Dataset::open_explicit(p, split),
            (None, Some(root)) => Dataset::open(root, split),
            (None, None) => anyhow::bail!("give --data_path, or --train_path and --val_path"),
        };
        let train = open(&self.train_path, Split::Train)?;
        let val = open(&self.val_path, Split::Val)?.align_classes_to(&train)?;
        Ok((train, val))
    }
}

/// One-line error unless `value` is a positive count.
pub fn positive(flag: &str, value: usize) -> anyhow::Result<usize> {
    anyhow::ensure!(value > 0, "{flag} must be at least 1, got {value}");
    Ok(value)
}

/// One-line error unless `value` is a finite number > 0.
pub fn positive_f64(flag: &str, value: f64) -> anyhow::Result<f64> {
    anyhow::ensure!(value.is_finite() && value > 0.0, "{flag} must be a positive number, got {value}");
    Ok(value)
}
