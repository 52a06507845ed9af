//! Decoding image files with clear, per-file errors, and listing image folders.

use std::path::{Path, PathBuf};

use image::DynamicImage;

pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"];

/// Decode a file by its content (not its name): any colour type is accepted and converted later.
pub fn open_image(path: &Path) -> anyhow::Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    dino_shared::preprocess::decode_image(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// The image files directly in `dir` (not in its subfolders), sorted.
pub fn top_level_images(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", dir.display()))? {
        let path = entry.map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", dir.display()))?.path();
        if path.is_file() && has_image_extension(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Every image file under `dir` (recursively, hidden folders skipped), sorted for a stable order.
pub fn list_images(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", d.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                if !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
                    stack.push(path);
                }
            } else if has_image_extension(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}
