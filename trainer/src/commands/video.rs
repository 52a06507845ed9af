//! `dino video`: the attention of every frame of a clip (official `video_generation.py`): the
//! mean over heads of the last layer's CLS attention, drawn with the inferno map (`attn-*.png`,
//! as the official script's `plt.imsave(..., cmap="inferno")`; the numbers in `attention.npy`,
//! [frames, rows, cols], when every frame has the same patch grid), each head's threshold mask
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

use dino_shared::attention_maps::{draw_mask, heatmap, overlay};
use dino_shared::inference::{attention_maps, features_and_attention};
use dino_shared::preprocess::{self, ImageSize};
use image::codecs::gif::{GifDecoder, GifEncoder, Repeat};
use image::{AnimationDecoder, Delay, DynamicImage, Frame, RgbImage};

use super::{image_size, ModelArgs};
use crate::device::{self, DeviceChoice};
use crate::images::{open_image, top_level_images};
use crate::npy::write_npy;

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

/// Where the frames come from; frames are decoded one at a time (a long clip never sits in
/// memory whole).
enum FrameSource {
    /// Image files in name order (a frames folder, or what ffmpeg extracted).
    Files(Vec<PathBuf>),
    /// An animated GIF's frames, each with its delay.
    Gif(image::Frames<'static>),
}

impl FrameSource {
    /// The next frame: `Some(Ok((picture, delay)))`, `Some(Err(why))` for a frame to skip (an
    /// unreadable file of a folder), `None` at the end. A damaged GIF is an error.
    fn next_frame(&mut self) -> anyhow::Result<Option<Result<(DynamicImage, Option<Delay>), String>>> {
        match self {
            FrameSource::Files(files) => {
                if files.is_empty() {
                    return Ok(None);
                }
                let path = files.remove(0);
                Ok(Some(open_image(&path).map(|img| (img, None)).map_err(|e| e.to_string())))
            }
            FrameSource::Gif(frames) => match frames.next() {
                None => Ok(None),
                Some(Ok(f)) => {
                    let delay = f.delay();
                    Ok(Some(Ok((DynamicImage::ImageRgba8(f.into_buffer()), Some(delay)))))
                }
                Some(Err(e)) => anyhow::bail!("damaged GIF: {e}"),
            },
        }
    }
}

fn extension(path: &Path) -> String {
    path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase()
}

fn ffmpeg_available() -> bool {
    Command::new("ffmpeg").arg("-version").output().map(|o| o.status.success()).unwrap_or(false)
}

/// Remove what an earlier run left in `dir` under our numbered names (`prefix00000.png`), so
/// that a shorter clip never picks up the frames of a longer one.
fn remove_numbered(dir: &Path, prefix: &str) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let numbered = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(".png"))
            .is_some_and(|n| n.len() == 5 && n.bytes().all(|b| b.is_ascii_digit()));
        if numbered {
            std::fs::remove_file(entry.path()).map_err(|e| anyhow::anyhow!("{}: cannot remove: {e}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn open_frames(input: &Path, output_dir: &Path) -> anyhow::Result<FrameSource> {
    let show = input.display();
    if input.is_dir() {
        let files = top_level_images(input)?;
        anyhow::ensure!(!files.is_empty(), "{show}: no image files in this folder");
        return Ok(FrameSource::Files(files));
    }
    let ext = extension(input);
    if VIDEO_EXTENSIONS.contains(&ext.as_str()) {
        anyhow::ensure!(
            ffmpeg_available(),
            "{show}: reading .{ext} needs ffmpeg on PATH (not found); give a folder of frames or an animated .gif instead"
        );
        let dir = output_dir.join("frames");
        std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))?;
        remove_numbered(&dir, "")?;
        let out = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-i"])
            .arg(input)
            .arg(dir.join("%05d.png"))
            .output()
            .map_err(|e| anyhow::anyhow!("{show}: cannot run ffmpeg: {e}"))?;
        anyhow::ensure!(out.status.success(), "{show}: ffmpeg could not read it: {}", String::from_utf8_lossy(&out.stderr).trim());
        return open_frames(&dir, output_dir);
    }
    let file = std::fs::File::open(input).map_err(|e| anyhow::anyhow!("{show}: cannot read: {e}"))?;
    if ext == "gif" {
        use image::ImageDecoder;
        let decoder = GifDecoder::new(std::io::BufReader::new(file)).map_err(|e| anyhow::anyhow!("{show}: not a GIF: {e}"))?;
        // The canvas every frame is drawn on: bounded as any decoded picture is.
        let (w, h) = decoder.dimensions();
        anyhow::ensure!(
            decoder.total_bytes() <= preprocess::MAX_DECODED_BYTES,
            "{show}: the GIF claims {w}x{h} pixels: larger than {} MiB decoded",
            preprocess::MAX_DECODED_BYTES >> 20
        );
        return Ok(FrameSource::Gif(decoder.into_frames()));
    }
    anyhow::bail!("{show}: not a folder of frames, a .gif or a video file ({})", VIDEO_EXTENSIONS.join(", "))
}

fn save(img: &RgbImage, path: &Path) -> anyhow::Result<()> {
    img.save(path).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))
}

pub fn run(args: &VideoArgs) -> anyhow::Result<()> {
    anyhow::ensure!((0.0..=1.0).contains(&args.threshold), "--threshold must be in [0, 1], got {}", args.threshold);
    if let Some(fps) = args.fps {
        // A GIF stores delays in hundredths of a second: 0.1 to 100 frames a second.
        anyhow::ensure!(fps.is_finite() && (0.1..=100.0).contains(&fps), "--fps must be in [0.1, 100], got {fps:?}");
    }
    anyhow::ensure!(!args.mp4 || ffmpeg_available(), "--mp4 needs ffmpeg on PATH (not found); attention.gif is written without it");
    let size = args.image_size.as_deref().map(image_size).transpose()?;
    let device = device::select(args.device);
    let model = args.model.backbone(&device)?;
    let patch = model.config().patch_size;
    let out_dir = &args.output_dir;
    std::fs::create_dir_all(out_dir).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", out_dir.display()))?;
    for prefix in ["attn-", "mask-", "overlay-"] {
        remove_numbered(out_dir, prefix)?;
    }
    let mut source = open_frames(&args.input, out_dir)?;
    let fps_delay = Delay::from_numer_denom_ms((1000.0 / args.fps.unwrap_or(OFFICIAL_FPS)).round() as u32, 1);
    let gif_path = out_dir.join("attention.gif");
    let mut gif = GifWriter::create(&gif_path)?;
    let mut skipped = Vec::new();
    let (mut written, mut total_delay_ms) = (0usize, 0.0f64);
    let mut first_size = None;
    let mut index = 0usize;
    // The head-mean maps of every frame, while all frames share one patch grid.
    let mut means: Option<(usize, usize, Vec<f32>)> = Some((0, 0, Vec::new()));
    while let Some(frame) = source.next_frame().map_err(|e| anyhow::anyhow!("{}: {e}", args.input.display()))? {
        let i = index;
        index += 1;
        let (img, delay) = match frame {
            Ok(f) => f,
            Err(why) => {
                eprintln!("skipped: {why}");
                skipped.push(why);
                continue;
            }
        };
        let sizing = size.unwrap_or(ImageSize::Exact { height: img.height() as usize, width: img.width() as usize });
        let input = match preprocess::for_attention(&img, sizing, patch) {
            Ok(input) => input,
            // With --image_size the size is at fault, not the frame: every frame would fail the
            // same way. Without it each frame keeps its own size, and a frame that cannot take it
            // is skipped and counted like an unreadable one.
            Err(e) if e.is_size_flag_error() && args.image_size.is_some() => {
                anyhow::bail!("{}: frame {i}: {e}", args.input.display())
            }
            Err(e) => {
                // A frame smaller than one patch is skipped and counted, like an unreadable one.
                let why = format!("{}: frame {i}: {e}", args.input.display());
                eprintln!("skipped: {why}");
                skipped.push(why);
                continue;
            }
        };
        let (_, attn) = features_and_attention(&model, &input, None, &device).map_err(|e| anyhow::anyhow!("{e}"))?;
        let maps = attention_maps(attn.into_data(), &model, &input).map_err(|e| anyhow::anyhow!("frame {i}: {e}"))?;
        let (gh, gw) = (maps.grid_h, maps.grid_w);
        let mean = maps.mean();
        means = match means.take() {
            Some((0, 0, v)) if v.is_empty() => Some((gh, gw, mean.clone())),
            Some((h, w, mut v)) if (h, w) == (gh, gw) => {
                v.extend_from_slice(&mean);
                Some((h, w, v))
            }
            _ => None,
        };
        let heat = heatmap(&mean, gh, gw, patch);
        let n = written;
        save(&heat, &out_dir.join(format!("attn-{n:05}.png")))?;
        // th_attn of the official script: a patch is kept when any head keeps it.
        let masks = maps.threshold_masks(args.threshold);
        let cells = gh * gw;
        let union: Vec<bool> = (0..cells).map(|p| (0..maps.heads).any(|h| masks[h * cells + p])).collect();
        save(&draw_mask(&input.image, &union, gh, gw, patch, [70, 240, 240]), &out_dir.join(format!("mask-{n:05}.png")))?;
        let over = overlay(&input.image, &heat, 0.6);
        // A GIF's frames share one canvas: every frame must have the first one's size.
        let dims = *first_size.get_or_insert(over.dimensions());
        let over = if over.dimensions() == dims {
            over
        } else {
            image::imageops::resize(&over, dims.0, dims.1, image::imageops::FilterType::Triangle)
        };
        if args.mp4 {
            save(&over, &out_dir.join(format!("overlay-{n:05}.png")))?;
        }
        let delay = if args.fps.is_some() { fps_delay } else { delay.unwrap_or(fps_delay) };
        let (num, den) = delay.numer_denom_ms();
        total_delay_ms += num as f64 / den.max(1) as f64;
        gif.add(Frame::from_parts(DynamicImage::ImageRgb8(over).to_rgba8(), 0, 0, delay))?;
        written += 1;
    }
    anyhow::ensure!(written > 0, "{}: none of its {} frames could be used", args.input.display(), skipped.len());
    gif.finish()?;
    let npy = out_dir.join("attention.npy");
    match means {
        Some((gh, gw, values)) => write_npy(&npy, &[written, gh, gw], &values)?,
        None => {
            // A stale array of an earlier clip would be mistaken for this one's.
            let _ = std::fs::remove_file(&npy);
            eprintln!("the frames have different patch grids: attention.npy not written (the pictures are)");
        }
    }
    if args.mp4 {
        // The GIF's own pace when it had one, else --fps (official 30).
        let fps = args.fps.unwrap_or(if total_delay_ms > 0.0 { 1000.0 * written as f64 / total_delay_ms } else { OFFICIAL_FPS });
        let mp4 = out_dir.join("attention.mp4");
        let out = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-framerate", &format!("{fps:.3}"), "-i"])
            .arg(out_dir.join("overlay-%05d.png"))
            .args(["-pix_fmt", "yuv420p", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"])
            .arg(&mp4)
            .output()
            .map_err(|e| anyhow::anyhow!("cannot run ffmpeg: {e}"))?;
        anyhow::ensure!(out.status.success(), "{}: ffmpeg failed: {}", mp4.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    eprintln!(
        "{written} frames{}: wrote attn-*.png, mask-*.png and {}{}",
        if skipped.is_empty() { String::new() } else { format!(" ({} skipped: unreadable, or smaller than one patch)", skipped.len()) },
        gif_path.display(),
        if args.mp4 { " and attention.mp4" } else { "" }
    );
    Ok(())
}

/// An endlessly looping GIF written frame by frame into a temporary file, renamed into place
/// when complete (a stopped run leaves no partial `attention.gif`).
struct GifWriter {
    path: PathBuf,
    tmp: PathBuf,
    encoder: GifEncoder<std::io::BufWriter<std::fs::File>>,
}

impl GifWriter {
    fn create(path: &Path) -> anyhow::Result<Self> {
        let tmp = path.with_extension("gif.tmp");
        let file = std::fs::File::create(&tmp).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", tmp.display()))?;
        let mut encoder = GifEncoder::new_with_speed(std::io::BufWriter::new(file), 10);
        encoder.set_repeat(Repeat::Infinite).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), tmp, encoder })
    }

    fn add(&mut self, frame: Frame) -> anyhow::Result<()> {
        self.encoder.encode_frame(frame).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", self.path.display()))
    }

    fn finish(self) -> anyhow::Result<()> {
        let Self { path, tmp, encoder } = self;
        drop(encoder);
        std::fs::rename(&tmp, &path).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))
    }
}
