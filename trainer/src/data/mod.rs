//! Datasets: image folders (class subfolders, or the Tiny-ImageNet layout) and IDX files.
//! Pictures are decoded lazily by the loader's worker threads; a file that cannot be decoded is
//! reported to the caller, which skips and counts it.

pub mod idx;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;

use crate::images::{has_image_extension, list_images, open_image, top_level_images};
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

/// A folder entry that is not a class: hidden (`.ipynb_checkpoints`, `.git`, ...) or empty.
fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

impl Dataset {
    /// Open the `split` of the data at `path` (`--data_path`). Understood layouts:
    /// - an IDX images file, or a folder with `train-images-idx3-ubyte[.gz]` / `t10k-...`;
    /// - Tiny-ImageNet: `train/<wnid>/images/*.JPEG`, `val/images` + `val/val_annotations.txt`;
    /// - a folder with `train/` and `val/` class folders;
    /// - for the training split only: a folder of class folders, or a flat folder of pictures.
    ///
    /// # Errors
    /// Nothing readable at `path`; for [`Split::Val`], a root without a validation split (the
    /// training pictures are never evaluated against themselves).
    pub fn open(path: &Path, split: Split) -> anyhow::Result<Self> {
        anyhow::ensure!(path.exists(), "{}: no such file or folder", path.display());
        if path.is_file() {
            // One IDX file is one split: the training one (never evaluated against itself).
            anyhow::ensure!(
                split == Split::Train,
                "{}: one IDX file holds no validation split: give --val_path",
                path.display()
            );
            return Ok(Self::Idx { set: Arc::new(load_idx_pair(path)?), source: path.to_path_buf() });
        }
        if let Some(found) = Self::split_of(path, split)? {
            return Ok(found);
        }
        match split {
            Split::Train => Self::class_folders(path),
            Split::Val => anyhow::bail!(
                "{}: no validation split (t10k-images-idx3-ubyte[.gz], or val/ beside train/): give --val_path",
                path.display()
            ),
        }
    }

    /// Open a folder given for one split explicitly (`--train_path`, `--val_path`): its own split
    /// layout when it has one (an IDX folder's `t10k-*` for validation), else its class folders.
    pub fn open_explicit(path: &Path, split: Split) -> anyhow::Result<Self> {
        anyhow::ensure!(path.exists(), "{}: no such file or folder", path.display());
        if path.is_file() {
            return Ok(Self::Idx { set: Arc::new(load_idx_pair(path)?), source: path.to_path_buf() });
        }
        match Self::split_of(path, split)? {
            Some(found) => Ok(found),
            None => Self::class_folders(path),
        }
    }

    /// Whether `path` holds the split itself: an IDX file, the split's IDX files, or its subfolder
    /// (for [`Split::Train`] any folder does: its class folders are the training split).
    pub fn has_split(path: &Path, split: Split) -> bool {
        if split == Split::Train {
            return path.exists();
        }
        if path.is_file() {
            return false; // one IDX file is one split: the training one
        }
        idx_file(path, "t10k").is_some() || path.join("val").is_dir()
    }

    /// The split's IDX file or `train/` / `val/` subfolder under `path`, if it has one.
    fn split_of(path: &Path, split: Split) -> anyhow::Result<Option<Self>> {
        let stem = if split == Split::Train { "train" } else { "t10k" };
        if let Some(f) = idx_file(path, stem) {
            return Ok(Some(Self::Idx { set: Arc::new(load_idx_pair(&f)?), source: f }));
        }
        let sub = path.join(if split == Split::Train { "train" } else { "val" });
        if !sub.is_dir() {
            return Ok(None);
        }
        let annotations = sub.join("val_annotations.txt");
        if annotations.exists() && sub.join("images").is_dir() {
            return Self::tiny_imagenet_val(path, &sub, &annotations).map(Some);
        }
        Self::class_folders(&sub).map(Some)
    }

    /// Class = a folder at the first level below `root` holding at least one picture (searched
    /// recursively); hidden folders (`.ipynb_checkpoints`, `.git`) and folders without pictures
    /// are not classes (as torchvision's `ImageFolder` skips hidden and empty ones) and are
    /// reported. Pictures directly in `root` beside class folders are not in any class: they
    /// are left out and reported. Without class folders, `root` is one flat, unlabelled class.
    pub fn class_folders(root: &Path) -> anyhow::Result<Self> {
        let mut folders = Vec::new();
        for entry in std::fs::read_dir(root).map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", root.display()))? {
            let entry = entry.map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", root.display()))?;
            if entry.path().is_dir() {
                folders.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        folders.sort();
        let mut classes = Vec::new();
        let mut items = Vec::new();
        let mut left_out = Vec::new();
        for name in folders {
            let files = if is_hidden(&name) { Vec::new() } else { list_images(&root.join(&name))? };
            if files.is_empty() {
                left_out.push(format!("{name}/"));
                continue;
            }
            items.extend(files.into_iter().map(|p| (p, classes.len())));
            classes.push(name);
        }
        let loose = top_level_images(root)?;
        if classes.is_empty() {
            // A flat folder of pictures: one unnamed class (fine for self-supervised training).
            items.extend(loose.into_iter().map(|p| (p, 0)));
            classes.push(String::new());
        } else if !loose.is_empty() {
            left_out.push(format!("{} picture(s) beside the class folders", loose.len()));
        }
        if !left_out.is_empty() {
            eprintln!("{}: not classes (hidden, or no pictures), left out: {}", root.display(), left_out.join(", "));
        }
        anyhow::ensure!(!items.is_empty(), "{}: no images found (jpg, png, webp, bmp, ...)", root.display());
        Ok(Self::Files { items, classes })
    }

    /// The picture files, in order (empty for IDX data).
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            Self::Files { items, .. } => items.iter().map(|(p, _)| p.clone()).collect(),
            Self::Idx { .. } => Vec::new(),
        }
    }

    /// Relabel this (validation) split with the class indices of `train`, matching classes by
    /// name, as a split evaluated against `train` must be.
    ///
    /// # Errors
    /// A class of this split that `train` does not have (named).
    pub fn align_classes_to(self, train: &Dataset) -> anyhow::Result<Self> {
        let (Self::Files { items, classes }, Self::Files { classes: train_classes, .. }) = (&self, train) else {
            return Ok(self); // IDX labels are numbers shared by both splits
        };
        if classes == train_classes {
            return Ok(self);
        }
        let mut map = Vec::with_capacity(classes.len());
        for name in classes {
            let shown = if name.is_empty() { "(pictures without a class folder)" } else { name.as_str() };
            let index = train_classes.iter().position(|c| c == name).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: class {shown} of the validation split is not a class of the training split ({})",
                    items.first().map(|(p, _)| p.parent().unwrap_or(p).display().to_string()).unwrap_or_default(),
                    train_classes.join(", ")
                )
            })?;
            map.push(index);
        }
        let items = items.iter().map(|(p, c)| (p.clone(), map[*c])).collect();
        Ok(Self::Files { items, classes: train_classes.clone() })
    }

    /// Decode items in order until one works; the training split must have one.
    ///
    /// # Errors
    /// No item decodes: `what` (the folder, or the split) is named with the first failure.
    pub fn ensure_readable(&self, what: &dyn std::fmt::Display) -> anyhow::Result<()> {
        let mut first_error = None;
        for i in 0..self.len() {
            match self.load(i) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        anyhow::bail!(
            "{what}: no readable image among {} file(s) (first: {})",
            self.len(),
            first_error.map(|e| e.to_string()).unwrap_or_else(|| "none".into())
        )
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
