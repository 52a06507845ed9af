//! Datasets: image folders (class subfolders, or the Tiny-ImageNet layout) and IDX files.
//! Pictures are decoded lazily by the loader's worker threads; a file that cannot be decoded is
//! reported to the caller, which skips and counts it.

pub mod idx;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;

use crate::images::{has_image_extension, list_images, open_image};
use idx::{load_idx_pair, IdxSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

#[derive(Debug, Clone)]
pub enum Dataset {
    Files { items: Vec<(PathBuf, usize)>, classes: Vec<String> },
    Idx { set: Arc<IdxSet>, source: PathBuf },
}

fn idx_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}-images-idx3-ubyte"), format!("{stem}-images-idx3-ubyte.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
}

impl Dataset {
    /// Open `path` for a split. Understood layouts:
    /// - an IDX images file, or a folder with `train-images-idx3-ubyte[.gz]` / `t10k-...`;
    /// - Tiny-ImageNet: `train/<wnid>/images/*.JPEG`, `val/images` + `val/val_annotations.txt`;
    /// - a folder with `train/` and `val/` class folders; or a folder of class folders.
    pub fn open(path: &Path, split: Split) -> anyhow::Result<Self> {
        anyhow::ensure!(path.exists(), "{}: no such file or folder", path.display());
        if path.is_file() {
            return Ok(Self::Idx { set: Arc::new(load_idx_pair(path)?), source: path.to_path_buf() });
        }
        let stem = if split == Split::Train { "train" } else { "t10k" };
        if let Some(f) = idx_file(path, stem) {
            return Ok(Self::Idx { set: Arc::new(load_idx_pair(&f)?), source: f });
        }
        let sub = path.join(if split == Split::Train { "train" } else { "val" });
        if sub.is_dir() {
            let annotations = sub.join("val_annotations.txt");
            if annotations.exists() && sub.join("images").is_dir() {
                return Self::tiny_imagenet_val(path, &sub, &annotations);
            }
            return Self::class_folders(&sub);
        }
        Self::class_folders(path)
    }

    /// Class = first folder level below `root`; every image file beneath it belongs to it.
    pub fn class_folders(root: &Path) -> anyhow::Result<Self> {
        let mut classes: Vec<String> = std::fs::read_dir(root)
            .map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", root.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        classes.sort();
        let mut items = Vec::new();
        if classes.is_empty() {
            // A flat folder of pictures: one unnamed class (fine for self-supervised training).
            items.extend(list_images(root)?.into_iter().map(|p| (p, 0)));
            classes.push(String::new());
        } else {
            for (c, name) in classes.iter().enumerate() {
                items.extend(list_images(&root.join(name))?.into_iter().map(|p| (p, c)));
            }
        }
        anyhow::ensure!(!items.is_empty(), "{}: no images found (jpg, png, webp, bmp, ...)", root.display());
        Ok(Self::Files { items, classes })
    }

    fn tiny_imagenet_val(root: &Path, val: &Path, annotations: &Path) -> anyhow::Result<Self> {
        // Classes are those of train/ so that labels agree between the splits.
        let train = Self::class_folders(&root.join("train"))?;
        let Self::Files { classes, .. } = train else { unreachable!() };
        let text = std::fs::read_to_string(annotations)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", annotations.display()))?;
        let mut items = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let mut cols = line.split('\t');
            let (Some(file), Some(wnid)) = (cols.next(), cols.next()) else { continue };
            let c = classes.iter().position(|k| k == wnid).ok_or_else(|| {
                anyhow::anyhow!("{}:{}: class {wnid} is not a folder of train/", annotations.display(), n + 1)
            })?;
            let p = val.join("images").join(file);
            if has_image_extension(&p) {
                items.push((p, c));
            }
        }
        anyhow::ensure!(!items.is_empty(), "{}: no validation images listed", annotations.display());
        Ok(Self::Files { items, classes })
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Files { items, .. } => items.len(),
            Self::Idx { set, .. } => set.len(),
        }
    }

    pub fn label(&self, i: usize) -> usize {
        match self {
            Self::Files { items, .. } => items[i].1,
            Self::Idx { set, .. } => set.labels[i] as usize,
        }
    }

    pub fn num_classes(&self) -> usize {
        match self {
            Self::Files { classes, .. } => classes.len(),
            Self::Idx { set, .. } => set.labels.iter().map(|&l| l as usize + 1).max().unwrap_or(1),
        }
    }

    /// Where item `i` comes from, for messages.
    pub fn describe(&self, i: usize) -> String {
        match self {
            Self::Files { items, .. } => items[i].0.display().to_string(),
            Self::Idx { source, .. } => format!("{}[{i}]", source.display()),
        }
    }

    /// Decode item `i` as RGB (grayscale IDX pictures are replicated to 3 channels, as
    /// PIL's `convert('RGB')` does).
    pub fn load(&self, i: usize) -> anyhow::Result<RgbImage> {
        match self {
            Self::Files { items, .. } => Ok(open_image(&items[i].0)?.to_rgb8()),
            Self::Idx { set, .. } => {
                let (w, h) = (set.cols as u32, set.rows as u32);
                let px = set.image(i);
                Ok(RgbImage::from_fn(w, h, |x, y| {
                    let v = px[(y * w + x) as usize];
                    image::Rgb([v, v, v])
                }))
            }
        }
    }
}
