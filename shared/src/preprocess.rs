//! Image -> normalised CHW float data, as the official scripts prepare it. Native (`dino
//! attention`, `dino embed`, k-NN) and the web page call these same functions, so both see the
//! same numbers for the same image.

use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};

/// ImageNet statistics used by every official transform.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A normalised image ready for the model: `data` is [3, height, width] row-major.
#[derive(Debug, Clone)]
pub struct ModelInput {
    pub data: Vec<f32>,
    pub height: usize,
    pub width: usize,
    /// The resized, cropped RGB picture the data was made from (what the maps are drawn over).
    pub image: RgbImage,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PreprocessError {
    #[error("image is {width}x{height} pixels, smaller than one {patch}x{patch} patch")]
    TooSmall { width: u32, height: u32, patch: usize },
    #[error("--image_size: {0}x{1} px is smaller than one {2}x{2} patch")]
    SizeTooSmall(usize, usize, usize),
    #[error("--image_size: resizing to {0}x{1} px would take more than {max} MiB", max = MAX_DECODED_BYTES >> 20)]
    SizeTooLarge(usize, usize),
    #[error("--image_size takes one value (the shorter side) or two (H W), all positive; got {0:?}")]
    BadSize(Vec<usize>),
}

impl PreprocessError {
    /// Whether the requested size is at fault rather than the picture: below one patch, or not
    /// a size at all. Commands over a folder stop with one line on these (every picture would
    /// fail the same way). The others belong to the picture and are skipped and counted there: a
    /// picture smaller than one patch ([`PreprocessError::TooSmall`]), and one so elongated that
    /// resizing its shorter side to the size would pass the decoded-size bound
    /// ([`PreprocessError::SizeTooLarge`]; a size too large for every picture is refused before,
    /// by `inference::check_input_size`).
    pub fn is_size_flag_error(&self) -> bool {
        matches!(self, Self::SizeTooSmall(..) | Self::BadSize(_))
    }

    /// The message with `flag` in place of `--image_size`, for a command whose size comes from
    /// another option (`dino train`'s evaluations run at `--global_crops_size`).
    pub fn message_for_flag(&self, flag: &str) -> String {
        self.to_string().replacen("--image_size", flag, 1)
    }
}

/// Decode a picture from its bytes, recognising the format by content (not by file name):
/// JPEG, PNG, WebP, BMP, TIFF, GIF. The message says what is wrong; callers add the file name.
///
/// Bytes after the end of the picture (a JPEG's end-of-image marker, a PNG's IEND: camera and
/// motion-photo trailers) are ignored, as PIL ignores them. The EXIF orientation of JPEG, WebP
/// and TIFF files is applied, so phone photos come upright: this is `ImageOps.exif_transpose`,
/// a deliberate deviation from the official loaders (PIL's `Image.open` leaves it unapplied).
pub fn decode_image(bytes: &[u8]) -> Result<DynamicImage, String> {
    use image::ImageDecoder;
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    let format = image::guess_format(bytes).map_err(|_| "not an image (unrecognised format)".to_string())?;
    // The JPEG decoder fills a cut-off file with gray instead of failing (PIL refuses it).
    if format == image::ImageFormat::Jpeg && !jpeg_reaches_end(bytes) {
        return Err("cannot decode image: truncated JPEG (the data ends before the end-of-image marker)".into());
    }
    let failed = |e: image::ImageError| format!("cannot decode image: {e}");
    let reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut decoder = reader.into_decoder().map_err(failed)?;
    // A header can claim any size; not every decoder enforces the reader's memory limit, so the
    // size is checked here before anything is allocated.
    let (w, h) = decoder.dimensions();
    if decoder.total_bytes() > MAX_DECODED_BYTES {
        return Err(format!("the picture claims {w}x{h} pixels: larger than {} MiB decoded", MAX_DECODED_BYTES >> 20));
    }
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(failed)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// The largest decoded picture accepted, in bytes (a 16k x 8k RGBA picture).
pub const MAX_DECODED_BYTES: u64 = 512 << 20;

/// Whether a JPEG stream reaches its end-of-image marker (FF D9), walking its segments as a
/// decoder does: segment lengths are skipped (an EXIF thumbnail's own FF D9 does not count),
/// entropy-coded data runs to the next marker that is not a stuffed FF 00 or a restart marker.
fn jpeg_reaches_end(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while i + 1 < bytes.len() {
        if bytes[i] != 0xFF {
            i += 1; // stray bytes between segments (libjpeg warns and skips them)
            continue;
        }
        match bytes[i + 1] {
            0xD9 => return true,
            0xFF => i += 1, // fill byte
            0x01 | 0xD0..=0xD7 => i += 2,
            marker => {
                let Some(len) = bytes.get(i + 2..i + 4).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize) else {
                    return false;
                };
                i += 2 + len;
                if marker == 0xDA {
                    while i + 1 < bytes.len()
                        && !(bytes[i] == 0xFF && bytes[i + 1] != 0x00 && !(0xD0..=0xD7).contains(&bytes[i + 1]))
                    {
                        i += 1;
                    }
                }
            }
        }
    }
    false
}

/// Any decoded image (grayscale, RGBA, 16-bit, CMYK-converted JPEG...) as 8-bit RGB, the way
/// PIL's `.convert('RGB')` does it: alpha dropped, gray replicated, 16-bit scaled down.
pub fn to_rgb(img: &DynamicImage) -> RgbImage {
    img.to_rgb8()
}

/// `ToTensor()` + `Normalize(mean, std)`: [3, h, w] floats.
pub fn normalize(img: &RgbImage) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0f32; 3 * h * w];
    for (x, y, px) in img.enumerate_pixels() {
        let i = y as usize * w + x as usize;
        for c in 0..3 {
            out[c * h * w + i] = (px.0[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    out
}

/// A resize target must fit the same memory bound as a decoded picture (`--image_size 100000`
/// is refused before 30 GB are asked for).
fn check_resize(height: usize, width: usize) -> Result<(), PreprocessError> {
    let bytes = (height as u64).saturating_mul(width as u64).saturating_mul(3);
    if bytes > MAX_DECODED_BYTES {
        return Err(PreprocessError::SizeTooLarge(height, width));
    }
    Ok(())
}

fn check_size(img: &RgbImage, patch: usize) -> Result<(), PreprocessError> {
    if (img.width() as usize) < patch || (img.height() as usize) < patch {
        return Err(PreprocessError::TooSmall { width: img.width(), height: img.height(), patch });
    }
    Ok(())
}

/// How a picture is sized for the model, as the official scripts' `--image_size` does it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSize {
    /// torchvision `Resize(side)`: the shorter side becomes `side` pixels, the longer one follows
    /// the picture's aspect ratio (`int(side * long / short)`, as torchvision rounds it).
    ShorterSide(usize),
    /// torchvision `Resize((height, width))`: exactly this size, aspect ratio not kept.
    Exact { height: usize, width: usize },
}

impl ImageSize {
    /// `--image_size S` (shorter side) or `--image_size H W` (exact), in pixels.
    ///
    /// # Errors
    /// Not one or two values, or a zero.
    pub fn from_values(values: &[usize]) -> Result<Self, PreprocessError> {
        match values {
            [s] if *s > 0 => Ok(Self::ShorterSide(*s)),
            [h, w] if *h > 0 && *w > 0 => Ok(Self::Exact { height: *h, width: *w }),
            _ => Err(PreprocessError::BadSize(values.to_vec())),
        }
    }

    /// The (height, width) a `width` x `height` picture is resized to (torchvision
    /// `transforms.functional._compute_resized_output_size`).
    pub fn resolve(self, width: u32, height: u32) -> (usize, usize) {
        match self {
            Self::Exact { height, width } => (height, width),
            Self::ShorterSide(side) => {
                let (w, h) = (width.max(1) as f64, height.max(1) as f64);
                if w <= h {
                    (((side as f64) * h / w) as usize, side)
                } else {
                    (side, ((side as f64) * w / h) as usize)
                }
            }
        }
    }
}

/// visualize_attention.py: `Resize(image_size)` (see [`ImageSize`]), ToTensor, Normalize, then
/// crop to a multiple of the patch size (top-left, as official). torchvision resizes PIL images
/// bilinearly with antialiasing; the `image` crate's triangle filter widens its support the same
/// way when shrinking. Pictures larger than [`MAX_SOURCE_SIDE`] are first shrunk to it (on
/// native and web alike).
///
/// # Errors
/// The picture or the resized size is smaller than one patch.
pub fn for_attention(img: &DynamicImage, size: ImageSize, patch: usize) -> Result<ModelInput, PreprocessError> {
    let rgb = to_rgb(img);
    let rgb = downscale_huge(rgb);
    // Below one patch there is nothing at the model's scale to look at: refuse, do not upscale.
    check_size(&rgb, patch)?;
    let (height, width) = size.resolve(rgb.width(), rgb.height());
    check_resize(height, width)?;
    let (h, w) = (height - height % patch, width - width % patch);
    if h == 0 || w == 0 {
        return Err(PreprocessError::SizeTooSmall(width, height, patch));
    }
    let resized = image::imageops::resize(&rgb, width as u32, height as u32, FilterType::Triangle);
    let cropped = image::imageops::crop_imm(&resized, 0, 0, w as u32, h as u32).to_image();
    Ok(ModelInput { data: normalize(&cropped), height: h, width: w, image: cropped })
}

/// eval_knn.py / eval_linear.py: `Resize(size * 256/224, bicubic)` of the shorter side, then
/// `CenterCrop(size)` (256/224 for ImageNet; the same ratio for small images).
pub fn for_evaluation(img: &DynamicImage, size: usize, patch: usize) -> Result<ModelInput, PreprocessError> {
    let rgb = to_rgb(img);
    check_size(&rgb, patch)?;
    if size < patch {
        return Err(PreprocessError::SizeTooSmall(size, size, patch));
    }
    let resize_to = (size as f64 * 256.0 / 224.0).round() as u32;
    let (w, h) = (rgb.width(), rgb.height());
    let (nw, nh) = if w <= h {
        (resize_to, ((h as f64 * resize_to as f64 / w as f64) as u32).max(1))
    } else {
        (((w as f64 * resize_to as f64 / h as f64) as u32).max(1), resize_to)
    };
    check_resize(nh as usize, nw as usize)?;
    let resized = image::imageops::resize(&rgb, nw, nh, FilterType::CatmullRom);
    let s = size as u32;
    let left = ((nw as f64 - s as f64) / 2.0).round().max(0.0) as u32;
    let top = ((nh as f64 - s as f64) / 2.0).round().max(0.0) as u32;
    let cropped = image::imageops::crop_imm(&resized, left, top, s.min(nw), s.min(nh)).to_image();
    Ok(ModelInput { data: normalize(&cropped), height: cropped.height() as usize, width: cropped.width() as usize, image: cropped })
}

/// Pictures larger than this on their longer side are shrunk first (huge photos would
/// otherwise cost seconds of resizing in the browser for no visible gain).
pub const MAX_SOURCE_SIDE: u32 = 2048;

pub fn downscale_huge(img: RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let side = w.max(h);
    if side <= MAX_SOURCE_SIDE {
        return img;
    }
    let scale = MAX_SOURCE_SIDE as f64 / side as f64;
    let (nw, nh) = (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
    image::imageops::resize(&img, nw, nh, FilterType::Triangle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_matches_torchvision_formula() {
        let img = RgbImage::from_pixel(2, 1, image::Rgb([255, 0, 128]));
        let d = normalize(&img);
        assert!((d[0] - (1.0 - 0.485) / 0.229).abs() < 1e-6);
        assert!((d[2] - (0.0 - 0.456) / 0.224).abs() < 1e-6);
        assert!((d[4] - (128.0 / 255.0 - 0.406) / 0.225).abs() < 1e-6);
    }

    #[test]
    fn attention_input_is_cropped_to_patch_multiple() {
        let img = DynamicImage::ImageRgb8(RgbImage::new(50, 40));
        let x = for_attention(&img, ImageSize::Exact { height: 100, width: 70 }, 16).unwrap();
        assert_eq!((x.height, x.width), (96, 64));
        assert_eq!(x.data.len(), 3 * 96 * 64);
    }

    /// One value is torchvision's `Resize(224)`: the 320x213 chelsea photo becomes 336x224
    /// (int(224 * 320 / 213) = 336), cropped to 21 x 14 patches of 16.
    #[test]
    fn one_size_keeps_the_aspect_ratio() {
        let img = DynamicImage::ImageRgb8(RgbImage::new(320, 213));
        let x = for_attention(&img, ImageSize::from_values(&[224]).unwrap(), 16).unwrap();
        assert_eq!((x.height / 16, x.width / 16), (14, 21));
        assert_eq!(ImageSize::ShorterSide(224).resolve(213, 320), (336, 224));
        assert!(ImageSize::from_values(&[]).is_err() && ImageSize::from_values(&[0]).is_err());
        assert!(ImageSize::from_values(&[1, 2, 3]).is_err());
    }

    /// A JPEG followed by a trailer (motion photos append a video after the end marker)
    /// decodes, as in PIL; one cut before its end is refused.
    #[test]
    fn jpeg_trailer_decodes_and_truncation_is_refused() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images");
        let jpeg = std::fs::read(dir.join("astronaut.jpg")).unwrap();
        let plain = decode_image(&jpeg).unwrap();
        let mut trailer = jpeg.clone();
        trailer.extend((0..4096u32).map(|i| (i * 7 + 1) as u8));
        assert_eq!(decode_image(&trailer).unwrap().to_rgb8(), plain.to_rgb8());
        let cut = &jpeg[..jpeg.len() / 2];
        assert!(decode_image(cut).unwrap_err().contains("truncated"));
        let png = std::fs::read(dir.join("coffee.png")).unwrap();
        let mut png_trailer = png.clone();
        png_trailer.extend([0u8; 4096]);
        assert_eq!(decode_image(&png_trailer).unwrap().to_rgb8(), decode_image(&png).unwrap().to_rgb8());
    }

    #[test]
    fn evaluation_crop_is_square() {
        let img = DynamicImage::ImageRgb8(RgbImage::new(300, 200));
        let x = for_evaluation(&img, 224, 16).unwrap();
        assert_eq!((x.height, x.width), (224, 224));
    }
}
