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
    #[error("image size {0}x{1} is smaller than one {2}x{2} patch")]
    SizeTooSmall(usize, usize, usize),
}

/// Decode a picture from its bytes, recognising the format by content (not by file name):
/// JPEG, PNG, WebP, BMP, TIFF, GIF. The message says what is wrong; callers add the file name.
pub fn decode_image(bytes: &[u8]) -> Result<DynamicImage, String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    let format = image::guess_format(bytes).map_err(|_| "not an image (unrecognised format)".to_string())?;
    // The JPEG decoder fills a cut-off file with gray instead of failing (PIL refuses it):
    // a JPEG must end with its end-of-image marker (some cameras append a few bytes after it).
    if format == image::ImageFormat::Jpeg {
        let tail = &bytes[bytes.len().saturating_sub(1024)..];
        if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
            return Err("cannot decode image: truncated JPEG (no end-of-image marker)".into());
        }
    }
    image::load_from_memory_with_format(bytes, format).map_err(|e| format!("cannot decode image: {e}"))
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

fn check_size(img: &RgbImage, patch: usize) -> Result<(), PreprocessError> {
    if (img.width() as usize) < patch || (img.height() as usize) < patch {
        return Err(PreprocessError::TooSmall { width: img.width(), height: img.height(), patch });
    }
    Ok(())
}

/// visualize_attention.py: `Resize((H, W))`, ToTensor, Normalize, then crop to a multiple of
/// the patch size. torchvision resizes PIL images bilinearly with antialiasing; the `image`
/// crate's triangle filter widens its support the same way when shrinking.
/// Pictures larger than [`MAX_SOURCE_SIDE`] are first shrunk to it (on native and web alike).
pub fn for_attention(img: &DynamicImage, height: usize, width: usize, patch: usize) -> Result<ModelInput, PreprocessError> {
    let rgb = to_rgb(img);
    let rgb = downscale_huge(rgb);
    // Below one patch there is nothing at the model's scale to look at: refuse, do not upscale.
    check_size(&rgb, patch)?;
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
        let x = for_attention(&img, 100, 70, 16).unwrap();
        assert_eq!((x.height, x.width), (96, 64));
        assert_eq!(x.data.len(), 3 * 96 * 64);
    }

    #[test]
    fn evaluation_crop_is_square() {
        let img = DynamicImage::ImageRgb8(RgbImage::new(300, 200));
        let x = for_evaluation(&img, 224, 16).unwrap();
        assert_eq!((x.height, x.width), (224, 224));
    }
}
