//! `dino pca` and `dino similarity`: what the last layer's patch features look like (the PCA
//! view of the DINOv2 paper's figure 1, and patch-to-patch cosine similarity), as PNGs and
//! `.npy` arrays. The numbers come from `dino_shared::views`, which the web page uses too.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use dino_shared::inference::{patch_features, patch_tokens};
use dino_shared::preprocess::{self, ModelInput};
use dino_shared::views::{mark_patch, patch_at, patch_similarity, similarity_picture, PatchFeatures, PatchPca};
use dino_shared::VisionTransformer;
use image::RgbImage;

use super::{image_size, ModelArgs};
use crate::device::{self, DeviceChoice};
use crate::images::open_image;
use crate::npy::write_npy;
use crate::plot::labelled_grid;

#[derive(clap::Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct PcaArgs {
    /// A picture; give the flag several times to fit one PCA on all of them, so that the same
    /// colour means the same feature direction in every picture.
    #[arg(long, required = true)]
    pub image: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Pixels: one value resizes the shorter side to it (aspect kept), two resize to exactly
    /// H W; then cropped to a multiple of the patch. 448 is a multiple of 14 and 16.
    #[arg(long, num_args = 1..=2, default_values_t = [448, 448])]
    pub image_size: Vec<usize>,
    /// Keep only patches whose first component, scaled to [0, 1], is above this (the DINOv2
    /// demo's background removal); the others are drawn black. Off when not given.
    #[arg(long)]
    pub foreground_threshold: Option<f32>,
    /// Where the pictures and the .npy arrays go.
    #[arg(long, default_value = ".")]
    pub output_dir: PathBuf,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

#[derive(clap::Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct SimilarityArgs {
    /// The picture holding the query patch.
    #[arg(long)]
    pub image: PathBuf,
    /// The query patch by its place on the patch grid: ROW COL (0-based).
    #[arg(long, num_args = 2, value_names = ["ROW", "COL"], conflicts_with = "at", required_unless_present = "at")]
    pub query: Option<Vec<usize>>,
    /// The query patch by a pixel X Y of the model's input picture (after resizing and
    /// cropping: the `img.png` this command writes).
    #[arg(long, num_args = 2, value_names = ["X", "Y"])]
    pub at: Option<Vec<usize>>,
    /// Compare with every patch of this picture instead of the query's own.
    #[arg(long)]
    pub target: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Pixels, as for `dino pca`.
    #[arg(long, num_args = 1..=2, default_values_t = [448, 448])]
    pub image_size: Vec<usize>,
    /// Where the pictures and similarity.npy go.
    #[arg(long, default_value = ".")]
    pub output_dir: PathBuf,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

/// A picture through the model: its input (the resized, cropped picture) and patch features.
fn features(model: &VisionTransformer, path: &Path, size: &[usize], device: &Device) -> anyhow::Result<(ModelInput, PatchFeatures)> {
    let img = open_image(path)?;
    let input = preprocess::for_attention(&img, image_size(size)?, model.config().patch_size)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let tokens = patch_tokens(model, &input, device).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?.into_data();
    let features = patch_features(tokens, model, &input).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((input, features))
}

fn save(img: &RgbImage, path: &Path) -> anyhow::Result<()> {
    img.save(path).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))
}

pub fn run_pca(args: &PcaArgs) -> anyhow::Result<()> {
    if let Some(t) = args.foreground_threshold {
        anyhow::ensure!((0.0..=1.0).contains(&t), "--foreground_threshold must be in [0, 1], got {t}");
    }
    let device = device::select(args.device);
    let model = args.model.backbone(&device)?;
    let patch = model.config().patch_size;
    let pictures: Vec<(ModelInput, PatchFeatures)> =
        args.image.iter().map(|p| features(&model, p, &args.image_size, &device)).collect::<anyhow::Result<_>>()?;
    let all: Vec<&PatchFeatures> = pictures.iter().map(|(_, f)| f).collect();
    let pca = PatchPca::fit(&all).map_err(|e| anyhow::anyhow!("--image: {e}"))?;
    create_dir(&args.output_dir)?;
    let dim = model.config().embed_dim;
    let k = pca.components.len();
    let flat = |rows: &[Vec<f64>]| rows.iter().flatten().map(|&x| x as f32).collect::<Vec<f32>>();
    write_npy(&args.output_dir.join("pca_components.npy"), &[k, dim], &flat(&pca.components))?;
    write_npy(&args.output_dir.join("pca_mean.npy"), &[dim], &pca.mean.iter().map(|&x| x as f32).collect::<Vec<_>>())?;
    let mut cells = Vec::new();
    let mut labels = Vec::new();
    for (i, (input, f)) in pictures.iter().enumerate() {
        let rgb = pca.rgb(f);
        let picture = pca.picture(f, patch, args.foreground_threshold);
        save(&input.image, &args.output_dir.join(format!("img{i}.png")))?;
        save(&picture, &args.output_dir.join(format!("pca{i}.png")))?;
        write_npy(&args.output_dir.join(format!("pca_proj{i}.npy")), &[f.grid_h, f.grid_w, k], &flat(&pca.project(f)))?;
        write_npy(&args.output_dir.join(format!("pca_rgb{i}.npy")), &[f.grid_h, f.grid_w, 3], &rgb.concat())?;
        cells.extend([input.image.clone(), picture]);
        let name = args.image[i].file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        labels.extend([name, "PCA of the patch features".to_string()]);
    }
    // The pictures may differ in size: pad each cell to the largest.
    let (w, h) = cells.iter().fold((0, 0), |(w, h), c| (c.width().max(w), c.height().max(h)));
    let cells: Vec<RgbImage> = cells
        .iter()
        .map(|c| {
            let mut canvas = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
            image::imageops::replace(&mut canvas, c, 0, 0);
            canvas
        })
        .collect();
    save(&labelled_grid(&cells, &labels, 2)?, &args.output_dir.join("pca-grid.png"))?;
    let variance: Vec<String> = pca.variance.iter().map(|v| format!("{v:.4}")).collect();
    eprintln!(
        "fitted one PCA on {} picture(s) ({} patches), variance along components 1-{k}: {}; wrote {}",
        pictures.len(),
        all.iter().map(|f| f.patches()).sum::<usize>(),
        variance.join(", "),
        args.output_dir.display()
    );
    Ok(())
}

pub fn run_similarity(args: &SimilarityArgs) -> anyhow::Result<()> {
    let device = device::select(args.device);
    let model = args.model.backbone(&device)?;
    let patch = model.config().patch_size;
    let (input, query) = features(&model, &args.image, &args.image_size, &device)?;
    let (row, col, flag) = match (&args.query, &args.at) {
        (Some(q), _) => (q[0], q[1], "--query"),
        (None, Some(at)) => {
            let (w, h) = input.image.dimensions();
            anyhow::ensure!(
                at[0] < w as usize && at[1] < h as usize,
                "--at {} {} is outside the {w} x {h} model input (the picture after resizing and cropping)",
                at[0],
                at[1]
            );
            let (r, c) = patch_at(at[0], at[1], patch);
            (r, c, "--at")
        }
        (None, None) => anyhow::bail!("give --query ROW COL or --at X Y"),
    };
    let target = match &args.target {
        Some(path) => Some(features(&model, path, &args.image_size, &device)?),
        None => None,
    };
    let (target_input, target_features) = match &target {
        Some((i, f)) => (i, f),
        None => (&input, &query),
    };
    let sim = patch_similarity(&query, row, col, target_features).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    create_dir(&args.output_dir)?;
    let (gh, gw) = (target_features.grid_h, target_features.grid_w);
    write_npy(&args.output_dir.join("similarity.npy"), &[gh, gw], &sim)?;
    let marked = mark_patch(&input.image, row, col, patch);
    save(&marked, &args.output_dir.join("query.png"))?;
    save(&input.image, &args.output_dir.join("img.png"))?;
    let query_here = target.is_none().then_some((row, col));
    let map = similarity_picture(&target_input.image, &sim, gh, gw, patch, query_here, 0.6);
    save(&map, &args.output_dir.join("similarity.png"))?;
    let best = sim.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    eprintln!(
        "patch ({row}, {col}) against {} x {} patches: cosine similarity {:.3} to {best:.3}; wrote {}",
        gh,
        gw,
        sim.iter().cloned().fold(f32::INFINITY, f32::min),
        args.output_dir.display()
    );
    Ok(())
}
