//! `dino download tiny-imagenet --output_dir DIR`: fetch the official Tiny-ImageNet zip,
//! resuming a partial download (HTTP Range), verify its checksum, unpack it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use md5::Md5;
use sha2::{Digest, Sha256};

pub const TINY_IMAGENET_URL: &str = "http://cs231n.stanford.edu/tiny-imagenet-200.zip";
/// The MD5 published with the dataset (also used by common dataset loaders).
pub const TINY_IMAGENET_MD5: &str = "90528d7ca1a48142e341f4ef8d21d0de";

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum Which {
    TinyImagenet,
}

#[derive(clap::Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct DownloadArgs {
    /// The dataset to fetch.
    #[arg(value_enum)]
    pub dataset: Which,
    /// Folder to unpack into (the zip is kept there while downloading, so a stopped download resumes).
    #[arg(long)]
    pub output_dir: PathBuf,
    /// Another address for the same zip (a mirror).
    #[arg(long, default_value = TINY_IMAGENET_URL)]
    pub url: String,
    /// Expected MD5 of the zip (default: the official one); ignored when --sha256 is given.
    #[arg(long, default_value = TINY_IMAGENET_MD5)]
    pub md5: String,
    /// Expected SHA-256 of the zip instead of the MD5 (hex).
    #[arg(long)]
    pub sha256: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Download `url` to `dest`, continuing `dest.part` when a previous attempt stopped.
pub fn fetch_resumable(url: &str, dest: &Path) -> anyhow::Result<()> {
    let part = dest.with_extension("zip.part");
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut request = ureq::get(url);
    if have > 0 {
        request = request.header("Range", &format!("bytes={have}-"));
    }
    let response = request.call().map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let resumed = response.status().as_u16() == 206;
    if have > 0 {
        eprintln!(
            "{}",
            if resumed { format!("resuming at {have} bytes") } else { "server ignored the range: starting over".into() }
        );
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&part)
        .map_err(|e| anyhow::anyhow!("{}: {e}", part.display()))?;
    let total = response.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let bar = indicatif::ProgressBar::new(total.map(|t| t + if resumed { have } else { 0 }).unwrap_or(0));
    bar.set_position(if resumed { have } else { 0 });
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = body.read(&mut buf).map_err(|e| anyhow::anyhow!("{url}: download interrupted ({e}); run again to resume"))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])?;
        received += n as u64;
        bar.inc(n as u64);
    }
    file.sync_all()?;
    if let Some(total) = total {
        anyhow::ensure!(
            received == total,
            "{url}: download interrupted after {received} of {total} bytes; run again to resume"
        );
    }
    bar.finish_and_clear();
    std::fs::rename(&part, dest)?;
    Ok(())
}

pub fn verify(path: &Path, md5: &str, sha256: Option<&str>) -> anyhow::Result<()> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    let (mut m, mut s) = (Md5::new(), Sha256::new());
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        m.update(&buf[..n]);
        s.update(&buf[..n]);
    }
    let (got, want, kind) = match sha256 {
        Some(want) => (hex(&s.finalize()), want.to_lowercase(), "SHA-256"),
        None => (hex(&m.finalize()), md5.to_lowercase(), "MD5"),
    };
    anyhow::ensure!(got == want, "{}: {kind} {got} does not match the expected {want}", path.display());
    Ok(())
}

pub fn unzip(zip_path: &Path, dir: &Path) -> anyhow::Result<usize> {
    let file = std::fs::File::open(zip_path)?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| anyhow::anyhow!("{}: {e}", zip_path.display()))?;
    let n = archive.len();
    archive.extract(dir).map_err(|e| anyhow::anyhow!("{}: cannot unpack: {e}", zip_path.display()))?;
    Ok(n)
}

pub fn run(args: &DownloadArgs) -> anyhow::Result<()> {
    let Which::TinyImagenet = args.dataset;
    std::fs::create_dir_all(&args.output_dir)?;
    let zip_path = args.output_dir.join("tiny-imagenet-200.zip");
    if !zip_path.exists() {
        fetch_resumable(&args.url, &zip_path)?;
    }
    if let Err(e) = verify(&zip_path, &args.md5, args.sha256.as_deref()) {
        // A wrong file must not be mistaken for a finished download next time.
        std::fs::rename(&zip_path, zip_path.with_extension("zip.bad"))?;
        return Err(e);
    }
    let n = unzip(&zip_path, &args.output_dir)?;
    eprintln!("unpacked {n} entries into {}", args.output_dir.display());
    eprintln!("train with: dino train --preset tiny-imagenet --data_path {}", args.output_dir.join("tiny-imagenet-200").display());
    Ok(())
}
