//! `dino knn`: official weighted k-NN evaluation of a backbone on a labelled train/val split.

use super::{positive, positive_f64, ModelArgs, SplitArgs};
use crate::device::{self, DeviceChoice};

#[derive(clap::Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct KnnArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub splits: SplitArgs,
    /// Numbers of neighbours k to report (official: 10 20 100 200); each at least 1.
    #[arg(long, num_args = 1.., default_values_t = [10, 20, 100, 200])]
    pub nb_knn: Vec<usize>,
    /// Temperature T of the vote weights exp(similarity / T) (official 0.07).
    #[arg(long, default_value_t = 0.07)]
    pub temperature: f64,
    /// Center-crop side fed to the model in pixels (default: the size the model was trained at).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Pictures per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size_per_gpu: usize,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

pub fn run(args: &KnnArgs) -> anyhow::Result<()> {
    for &k in &args.nb_knn {
        positive("--nb_knn", k)?;
    }
    positive_f64("--temperature", args.temperature)?;
    positive("--batch_size_per_gpu", args.batch_size_per_gpu)?;
    let (train, val) = args.splits.open()?;
    let device = device::select(args.device);
    let model = args.model.backbone(&device)?;
    let size = args.model.eval_size(args.image_size, &model)?;
    eprintln!("k-NN: {} train / {} val images at {size} px", train.len(), val.len());
    let results = crate::knn::evaluate(&model, &train, &val, size, "--image_size", args.batch_size_per_gpu, &args.nb_knn, args.temperature, &device)?;
    crate::knn::print_results(&results);
    Ok(())
}
