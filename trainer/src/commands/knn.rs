//! `dino knn`: official weighted k-NN evaluation of a backbone on a labelled train/val split.

use std::path::PathBuf;

use super::ModelArgs;
use crate::data::{Dataset, Split};
use crate::device::{self, DeviceChoice};

#[derive(clap::Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct KnnArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Root with both splits: IDX folder (train-*/t10k-*), Tiny-ImageNet, or train/ + val/ folders.
    #[arg(long, required_unless_present_all = ["train_path", "val_path"])]
    pub data_path: Option<PathBuf>,
    #[arg(long)]
    pub train_path: Option<PathBuf>,
    #[arg(long)]
    pub val_path: Option<PathBuf>,
    #[arg(long, num_args = 1.., default_values_t = [10, 20, 100, 200])]
    pub nb_knn: Vec<usize>,
    #[arg(long, default_value_t = 0.07)]
    pub temperature: f64,
    /// Center-crop side fed to the model (default: the size the model was trained at).
    #[arg(long)]
    pub image_size: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub batch_size_per_gpu: usize,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

pub fn run(args: &KnnArgs) -> anyhow::Result<()> {
    let open = |explicit: &Option<PathBuf>, split| -> anyhow::Result<Dataset> {
        match (explicit, &args.data_path) {
            (Some(p), _) => Dataset::open(p, Split::Train),
            (None, Some(root)) => Dataset::open(root, split),
            (None, None) => anyhow::bail!("give --data_path or both --train_path and --val_path"),
        }
    };
    let train = open(&args.train_path, Split::Train)?;
    let val = open(&args.val_path, Split::Val)?;
    let device = device::select(args.device);
    let model = args.model.backbone(&device)?;
    let size = args.image_size.unwrap_or(model.config().img_size);
    eprintln!("k-NN: {} train / {} val images at {size} px", train.len(), val.len());
    crate::knn::evaluate(&model, &train, &val, size, args.batch_size_per_gpu, &args.nb_knn, args.temperature, &device)?;
    Ok(())
}
