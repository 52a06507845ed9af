//! IDX files (`*-ubyte`, `*-ubyte.gz`): MNIST / Fashion-MNIST as LeCun ships them and Debian's
//! `dataset-fashion-mnist` installs them.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Images (u8, row-major) and their labels.
#[derive(Debug, Clone)]
pub struct IdxSet {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub rows: usize,
    pub cols: usize,
}

impl IdxSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.images[i * n..(i + 1) * n]
    }
}

fn read_maybe_gz(path: &Path) -> anyhow::Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| anyhow::anyhow!("{}: corrupt gzip: {e}", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parse one IDX file of unsigned bytes: (dimensions, data).
pub fn read_idx(path: &Path) -> anyhow::Result<(Vec<usize>, Vec<u8>)> {
    let bytes = read_maybe_gz(path)?;
    let bad = |m: &str| anyhow::anyhow!("{}: not an IDX file ({m})", path.display());
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("bad magic"));
    }
    if bytes[2] != 0x08 {
        return Err(bad("only unsigned-byte IDX data is supported"));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(bad("truncated header"));
    }
    let dims: Vec<usize> =
        (0..ndim).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    let n: usize = dims.iter().product();
    if bytes.len() != header + n {
        return Err(bad(&format!("{} data bytes for dimensions {dims:?}", bytes.len() - header)));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// The labels file that goes with an images file (`...-images-idx3-ubyte` -> `...-labels-idx1-ubyte`).
pub fn labels_path_for(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    let labels = name.replace("images-idx3", "labels-idx1");
    (labels != name).then(|| images.with_file_name(labels))
}

pub fn load_idx_pair(images: &Path) -> anyhow::Result<IdxSet> {
    let (dims, data) = read_idx(images)?;
    anyhow::ensure!(dims.len() == 3, "{}: expected 3 dimensions (n, rows, cols), found {dims:?}", images.display());
    let labels_path = labels_path_for(images)
        .ok_or_else(|| anyhow::anyhow!("{}: cannot tell the labels file from this name", images.display()))?;
    let labels = if labels_path.exists() {
        let (ldims, labels) = read_idx(&labels_path)?;
        anyhow::ensure!(
            ldims == [dims[0]],
            "{}: {} labels for {} images",
            labels_path.display(),
            ldims.first().unwrap_or(&0),
            dims[0]
        );
        labels
    } else {
        // Unlabelled images are fine for self-supervised training.
        vec![0; dims[0]]
    };
    Ok(IdxSet { images: data, labels, rows: dims[1], cols: dims[2] })
}
