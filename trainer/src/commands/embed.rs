//! `dino embed`: CLS features of one image or a folder of images, one row per image, for
//! retrieval and analysis (the k-NN evaluation's preprocessing: resize 256/224 + center crop).

use std::path::PathBuf;

use dino_shared::inference::{batch_tensor, max_batch};
use dino_shared::preprocess::{self, ModelInput};

use super::ModelArgs;
use crate::device::{self, DeviceChoice};
use crate::images::open_image;
use crate::npy::write_npy;

#[derive(clap::Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct EmbedArgs {
    /// One picture.
    #[arg(long, conflicts_with = "data_path", required_unless_present = "data_path")]
    pub image: Option<PathBuf>,
    /// A folder of pictures (a flat folder, or class folders as `dino knn` reads them; hidden
    /// folders skipped; rows in class order, then by path).
    #[arg(long)]
    pub data_path: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Side of the center crop the model sees, in pixels (default: the size the model was
    /// trained at, as `dino knn` and `dino linear`).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Pictures per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Output .npy (float32, images x dim); the image paths go to the same name with .txt.
    #[arg(long)]
    pub output: PathBuf,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

pub fn run(args: &EmbedArgs) -> anyhow::Result<()> {
    super::positive("--batch_size", args.batch_size)?;
    let files = match (&args.image, &args.data_path) {
        (Some(img), _) => vec![img.clone()],
        // The pictures of the class folders (or of a flat folder), as train, knn and linear read them.
        (None, Some(dir)) => crate::data::Dataset::class_folders(dir)?.files(),
        (None, None) => anyhow::bail!("give --image or --data_path"),
    };
    anyhow::ensure!(!files.is_empty(), "no images found");
    let device = device::select(args.device);
    let model = args.model.backbone(&device)?;
    let image_size = args.model.eval_size(args.image_size, &model)?;
    let patch = model.config().patch_size;
    let dim = model.config().embed_dim;
    let mut rows: Vec<f32> = Vec::new();
    let mut kept: Vec<String> = Vec::new();
    let mut skipped = Vec::new();
    // Batches within the memory bound at this size (`inference::max_batch`): same features.
    let batch_size = args.batch_size.clamp(1, max_batch(model.config(), image_size, image_size));
    for chunk in files.chunks(batch_size) {
        let mut inputs: Vec<ModelInput> = Vec::new();
        for path in chunk {
            let img = match open_image(path) {
                Ok(img) => img,
                // One image alone is an error; in a folder a bad file is skipped and counted.
                Err(e) if args.image.is_some() => return Err(e),
                Err(e) => {
                    skipped.push(e.to_string());
                    continue;
                }
            };
            // A size that is no size for any picture (below a patch) is the flag's fault: one
            // line, folder or not. A picture that cannot take the size (smaller than a patch, too
            // elongated to resize) is skipped and counted in a folder.
            let decoded = preprocess::for_evaluation(&img, image_size, patch).map_err(|e| {
                let flag_error = e.is_size_flag_error();
                (flag_error, anyhow::anyhow!("{}: {e}", path.display()))
            });
            match decoded {
                Ok(x) => {
                    inputs.push(x);
                    kept.push(path.display().to_string());
                }
                Err((flag_error, e)) if flag_error || args.image.is_some() => return Err(e),
                Err((_, e)) => skipped.push(e.to_string()),
            }
        }
        if inputs.is_empty() {
            continue;
        }
        let refs: Vec<&ModelInput> = inputs.iter().collect();
        let cls = model.forward(batch_tensor(&refs, &device));
        rows.extend(cls.into_data().convert::<f32>().try_into_vec::<f32>().expect("float features"));
    }
    if !skipped.is_empty() {
        eprintln!("warning: skipped {} picture(s) ({}): {}", skipped.len(), crate::knn::SKIP_REASONS, skipped.join("; "));
    }
    anyhow::ensure!(!kept.is_empty(), "no readable images");
    write_npy(&args.output, &[kept.len(), dim], &rows)?;
    std::fs::write(args.output.with_extension("txt"), kept.join("\n") + "\n")?;
    eprintln!("wrote {} x {dim} features to {}", kept.len(), args.output.display());
    Ok(())
}
