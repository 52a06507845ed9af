//! `dino attention`: one layer's (by default the last's) per-head attention maps of one image
//! (official visualize_attention.py), as PNGs, a composite grid and a raw `.npy`.

use std::path::{Path, PathBuf};

use dino_shared::attention_maps::{draw_mask, head_color, heatmap, overlay, AttentionMaps};
use dino_shared::inference::{attention_maps, features_and_attention};
use dino_shared::preprocess;
use image::RgbImage;

use super::{image_size, ModelArgs};
use crate::device::{self, DeviceChoice};
use crate::images::open_image;
use crate::npy::write_npy;
use crate::plot::labelled_grid;

#[derive(clap::Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct AttentionArgs {
    /// The picture to look at.
    #[arg(long)]
    pub image: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Pixels: one value resizes the shorter side to it (aspect kept, torchvision `Resize(S)`),
    /// two values resize to exactly H W; then cropped to a multiple of the patch. Official
    /// default: 480 480.
    #[arg(long, num_args = 1..=2, default_values_t = [480, 480])]
    pub image_size: Vec<usize>,
    /// Which block's attention, 0-based (official `get_last_selfattention` is the last one,
    /// the default).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Keep the smallest set of patches holding this share of each head's attention.
    #[arg(long, default_value_t = 0.6)]
    pub threshold: f32,
    /// Where the pictures and attention.npy go.
    #[arg(long, default_value = ".")]
    pub output_dir: PathBuf,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

pub fn run(args: &AttentionArgs) -> anyhow::Result<()> {
    let device = device::select(args.device);
    let model = args.model.backbone(&device)?;
    let size = image_size(&args.image_size)?;
    anyhow::ensure!((0.0..=1.0).contains(&args.threshold), "--threshold must be in [0, 1], got {}", args.threshold);
    let img = open_image(&args.image)?;
    let input = preprocess::for_attention(&img, size, model.config().patch_size)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.image.display()))?;
    let (_, attn) = features_and_attention(&model, &input, args.layer, &device).map_err(|e| anyhow::anyhow!("{e}"))?;
    let maps = attention_maps(attn.into_data(), &model, &input).map_err(|e| anyhow::anyhow!("{}: {e}", args.image.display()))?;
    write_outputs(&maps, &input.image, model.config().patch_size, args.threshold, &args.output_dir, 1)?;
    eprintln!("wrote {} heads of {}x{} patches to {}", maps.heads, maps.grid_h, maps.grid_w, args.output_dir.display());
    Ok(())
}

/// Write every picture of the official script plus the mean overlay, the grid and the `.npy`.
/// `scale` > 1 enlarges every picture (nearest neighbour) for tiny inputs such as 28 px data.
pub fn write_outputs(
    maps: &AttentionMaps,
    image: &RgbImage,
    patch: usize,
    threshold: f32,
    dir: &Path,
    scale: u32,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))?;
    let save = |img: &RgbImage, name: &str| -> anyhow::Result<()> {
        let path = dir.join(name);
        let img = if scale > 1 {
            image::imageops::resize(img, img.width() * scale, img.height() * scale, image::imageops::FilterType::Nearest)
        } else {
            img.clone()
        };
        img.save(&path).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))
    };
    let (gh, gw) = (maps.grid_h, maps.grid_w);
    save(image, "img.png")?;
    let mean_overlay = overlay(image, &heatmap(&maps.mean(), gh, gw, patch), 0.6);
    save(&mean_overlay, "attn-mean-overlay.png")?;
    let mut heads = Vec::new();
    let mut mask_pictures = Vec::new();
    for j in 0..maps.heads {
        let hm = heatmap(maps.head(j), gh, gw, patch);
        save(&hm, &format!("attn-head{j}.png"))?;
        heads.push(hm);
        let m = draw_mask(image, &maps.threshold_mask(j, threshold), gh, gw, patch, head_color(j));
        save(&m, &format!("mask_th{threshold}_head{j}.png"))?;
        mask_pictures.push(m);
    }
    // Grid: picture, mean overlay, then one column per head; masks below the heads; each cell
    // under its label.
    let blank = RgbImage::from_pixel(image.width(), image.height(), image::Rgb([255, 255, 255]));
    let mut cells = vec![image.clone(), mean_overlay];
    cells.extend(heads);
    cells.push(blank.clone());
    cells.push(blank);
    cells.extend(mask_pictures);
    let mut labels = vec!["picture".to_string(), format!("mean of {} heads", maps.heads)];
    labels.extend((0..maps.heads).map(|j| format!("head {j}")));
    labels.extend([String::new(), String::new()]);
    labels.extend((0..maps.heads).map(|j| format!("head {j}, threshold {threshold}")));
    let cells: Vec<RgbImage> = cells
        .iter()
        .map(|c| image::imageops::resize(c, c.width() * scale.max(1), c.height() * scale.max(1), image::imageops::FilterType::Nearest))
        .collect();
    let grid = labelled_grid(&cells, &labels, maps.heads + 2)?;
    let path = dir.join("attention-grid.png");
    grid.save(&path).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))?;
    write_npy(&dir.join("attention.npy"), &[maps.heads, gh, gw], &maps.values)?;
    Ok(dir.join("attention-grid.png"))
}
