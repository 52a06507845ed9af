//! `dino video`: the attention of every frame of a clip (official `video_generation.py`): the
//! mean over heads of the last layer's CLS attention, drawn with the inferno map (`attn-*.png`,
//! as the official script's `plt.imsave(..., cmap="inferno")`), each head's threshold mask
//! (`--threshold`, official default 0.6) united into one outline picture (`mask-*.png`), and the
//! heat map over the frame as an animated GIF (`attention.gif`); with `ffmpeg` on PATH also
//! mp4 in and out.
//!
//! Input: a folder of frames (image files, sorted by name), an animated GIF (decoded by the
//! `image` crate), or a video file read through `ffmpeg` (a clear error when it is missing).
//! Deviation: official writes frames as JPEG and the video with OpenCV; we write PNG and GIF
//! (no lossy step, no OpenCV), mp4 only through ffmpeg.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dino_shared::attention_maps::{draw_mask, heatmap, overlay};
use dino_shared::inference::{attention_maps, features_and_attention};
use dino_shared::preprocess::{self, ImageSize};
use image::codecs::gif::{GifDecoder, GifEncoder, Repeat};
use image::{AnimationDecoder, Delay, DynamicImage, Frame, RgbImage};

use super::{image_size, ModelArgs};
use crate::device::{self, DeviceChoice};
use crate::images::{open_image, top_level_images};

#[derive(clap::Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct VideoArgs {
    /// A folder of frames (image files, in name order), an animated .gif, or a video file
    /// (.mp4, .avi, .mov, .mkv, .webm: read through ffmpeg, which must be on PATH).
    #[arg(long)]
    pub input: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Pixels: one value resizes each frame's shorter side to it, two to exactly H W. Official
    /// default (`--resize` not given): the frame's own size, cropped to a multiple of the patch.
    #[arg(long, num_args = 1..=2)]
    pub image_size: Option<Vec<usize>>,
    /// Keep the smallest set of patches holding this share of each head's attention (masks).
    #[arg(long, default_value_t = 0.6)]
    pub threshold: f32,
    /// Frames per second of the output (official default 30); a GIF input keeps its own
    /// frame delays unless this is given.
    #[arg(long)]
    pub fps: Option<f64>,
    /// Also write attention.mp4 (needs ffmpeg on PATH).
    #[arg(long)]
    pub mp4: bool,
    /// Where the frames, attention.gif (and attention.mp4) go.
    #[arg(long, default_value = ".")]
    pub output_dir: PathBuf,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

const VIDEO_EXTENSIONS: [&str; 6] = ["mp4", "avi", "mov", "mkv", "webm", "m4v"];
const OFFICIAL_FPS: f64 = 30.0;

/// Frames of the input, each with its delay when the input has one (GIF).
struct Frames {
    frames: Vec<(DynamicImage, Option<Delay>)>,
    /// Files of a frame folder that could not be decoded (skipped and counted).
    skipped: Vec<String>,
}

fn extension(path: &Path) -> String {
    path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase()
}

fn ffmpeg_available() -> bool {
    Command::new("ffmpeg").arg("-version").output().map(|o| o.status.success()).unwrap_or(false)
}

fn read_frames(input: &Path, output_dir: &Path) -> anyhow::Result<Frames> {
    let show = input.display();
    if input.is_dir() {
        let files = top_level_images(input)?;
        anyhow::ensure!(!files.is_empty(), "{show}: no image files in this folder");
        let mut frames = Vec::new();
        let mut skipped = Vec::new();
        for f in files {
            match open_image(&f) {
                Ok(img) => frames.push((img, None)),
                Err(e) => skipped.push(e.to_string()),
            }
        }
        anyhow::ensure!(!frames.is_empty(), "{show}: none of its {} image files could be decoded", skipped.len());
        return Ok(Frames { frames, skipped });
    }
    let ext = extension(input);
    if VIDEO_EXTENSIONS.contains(&ext.as_str()) {
        anyhow::ensure!(
            ffmpeg_available(),
            "{show}: reading .{ext} needs ffmpeg on PATH (not found); give a folder of frames or an animated .gif instead"
        );
        let dir = output_dir.join("frames");
        std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))?;
        let out = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-i"])
            .arg(input)
            .arg(dir.join("%05d.png"))
            .output()
            .map_err(|e| anyhow::anyhow!("{show}: cannot run ffmpeg: {e}"))?;
        anyhow::ensure!(out.status.success(), "{show}: ffmpeg could not read it: {}", String::from_utf8_lossy(&out.stderr).trim());
        return read_frames(&dir, output_dir);
    }
    let file = std::fs::File::open(input).map_err(|e| anyhow::anyhow!("{show}: cannot read: {e}"))?;
    if ext == "gif" {
        let decoder = GifDecoder::new(std::io::BufReader::new(file)).map_err(|e| anyhow::anyhow!("{show}: not a GIF: {e}"))?;
        let frames = decoder
            .into_frames()
            .map(|f| f.map(|f| (DynamicImage::ImageRgba8(f.buffer().clone()), Some(f.delay()))))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{show}: damaged GIF: {e}"))?;
        anyhow::ensure!(!frames.is_empty(), "{show}: the GIF has no frames");
        return Ok(Frames { frames, skipped: Vec::new() });
    }
    anyhow::bail!("{show}: not a folder of frames, a .gif or a video file ({})", VIDEO_EXTENSIONS.join(", "))
}

fn save(img: &RgbImage, path: &Path) -> anyhow::Result<()> {
    img.save(path).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))
}

pub fn run(args: &VideoArgs) -> anyhow::Result<()> {
    anyhow::ensure!((0.0..=1.0).contains(&args.threshold), "--threshold must be in [0, 1], got {}", args.threshold);
    if let Some(fps) = args.fps {
        anyhow::ensure!(fps.is_finite() && fps > 0.0 && fps <= 100.0, "--fps must be in (0, 100], got {fps}");
    }
    anyhow::ensure!(!args.mp4 || ffmpeg_available(), "--mp4 needs ffmpeg on PATH (not found); attention.gif is written without it");
    let size = args.image_size.as_deref().map(image_size).transpose()?;
    let device = device::select(args.device);
    let model = args.model.backbone(&device)?;
    let patch = model.config().patch_size;
    std::fs::create_dir_all(&args.output_dir).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", args.output_dir.display()))?;
    let Frames { frames, skipped } = read_frames(&args.input, &args.output_dir)?;
    for s in &skipped {
        eprintln!("skipped: {s}");
    }
    let fps_delay = Delay::from_saturating_duration(Duration::from_secs_f64(1.0 / args.fps.unwrap_or(OFFICIAL_FPS)));
    let mut gif_frames = Vec::with_capacity(frames.len());
    let mut overlay_paths = Vec::new();
    let mut first_size = None;
    for (i, (img, delay)) in frames.iter().enumerate() {
        let sizing = size.unwrap_or(ImageSize::Exact { height: img.height() as usize, width: img.width() as usize });
        let input = preprocess::for_attention(img, sizing, patch).map_err(|e| anyhow::anyhow!("{}: frame {i}: {e}", args.input.display()))?;
        let (_, attn) = features_and_attention(&model, &input, None, &device).map_err(|e| anyhow::anyhow!("{e}"))?;
        let maps = attention_maps(attn.into_data(), &model, &input).map_err(|e| anyhow::anyhow!("frame {i}: {e}"))?;
        let (gh, gw) = (maps.grid_h, maps.grid_w);
        let heat = heatmap(&maps.mean(), gh, gw, patch);
        save(&heat, &args.output_dir.join(format!("attn-{i:05}.png")))?;
        // th_attn of the official script: a patch is kept when any head keeps it.
        let masks = maps.threshold_masks(args.threshold);
        let n = gh * gw;
        let union: Vec<bool> = (0..n).map(|p| (0..maps.heads).any(|h| masks[h * n + p])).collect();
        save(&draw_mask(&input.image, &union, gh, gw, patch, [70, 240, 240]), &args.output_dir.join(format!("mask-{i:05}.png")))?;
        let over = overlay(&input.image, &heat, 0.6);
        // A GIF's frames share one canvas: every frame must have the first one's size.
        let dims = *first_size.get_or_insert(over.dimensions());
        let over = if over.dimensions() == dims {
            over
        } else {
            image::imageops::resize(&over, dims.0, dims.1, image::imageops::FilterType::Triangle)
        };
        if args.mp4 {
            let path = args.output_dir.join(format!("overlay-{i:05}.png"));
            save(&over, &path)?;
            overlay_paths.push(path);
        }
        let delay = if args.fps.is_some() { fps_delay } else { delay.unwrap_or(fps_delay) };
        gif_frames.push(Frame::from_parts(DynamicImage::ImageRgb8(over).to_rgba8(), 0, 0, delay));
    }
    let gif_path = args.output_dir.join("attention.gif");
    write_gif(&gif_path, gif_frames)?;
    if args.mp4 {
        let mp4 = args.output_dir.join("attention.mp4");
        let out = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-framerate", &format!("{}", args.fps.unwrap_or(OFFICIAL_FPS)), "-i"])
            .arg(args.output_dir.join("overlay-%05d.png"))
            .args(["-pix_fmt", "yuv420p", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"])
            .arg(&mp4)
            .output()
            .map_err(|e| anyhow::anyhow!("cannot run ffmpeg: {e}"))?;
        anyhow::ensure!(out.status.success(), "{}: ffmpeg failed: {}", mp4.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    eprintln!(
        "{} frames{}: wrote attn-*.png, mask-*.png and {}{}",
        frames.len(),
        if skipped.is_empty() { String::new() } else { format!(" ({} unreadable files skipped)", skipped.len()) },
        gif_path.display(),
        if args.mp4 { " and attention.mp4" } else { "" }
    );
    Ok(())
}

/// An endlessly looping GIF, written atomically (a temporary file renamed into place).
fn write_gif(path: &Path, frames: Vec<Frame>) -> anyhow::Result<()> {
    let tmp = path.with_extension("gif.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", tmp.display()))?;
    let mut encoder = GifEncoder::new_with_speed(std::io::BufWriter::new(file), 10);
    encoder.set_repeat(Repeat::Infinite).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    encoder.encode_frames(frames).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))?;
    drop(encoder);
    std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))
}
