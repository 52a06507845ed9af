//! Property tests of every reader of untrusted bytes: safetensors weights (with and without our
//! metadata), PyTorch `.pth` pickles (state dicts and full training checkpoints) and pictures
//! (JPEG, PNG, WebP, BMP, GIF, TIFF). Each target mutates the committed corpus
//! (`tests/fuzz-corpus`, made by `tools/make_fuzz_corpus.py`) with a seeded generator (bit
//! flips, byte insertions and deletions, interesting values, truncation, splices) for a bounded
//! time, and requires an `Ok` or an `Err`, never a panic. The time per target is
//! `DINO_FUZZ_SECONDS` (default 20); a failing input is written to `$TMPDIR/dino-fuzz-*` and
//! its seed printed, so that it can be added to the corpus.
//!
//! (cargo-fuzz needs a nightly toolchain, which these machines cannot install; this harness
//! runs on stable in CI.)

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use dino_shared::preprocess::{decode_image, for_attention, for_evaluation, ImageSize};
use dino_shared::weights::{ArchSpec, WeightsFile};

/// xorshift64*: a small seeded generator (no dependency).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn corpus(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz-corpus").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

/// One to eight mutations of `seed`, some of them structure-aware (length fields, markers).
fn mutate(seed: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        let n = b.len();
        match rng.below(9) {
            0 if n > 0 => {
                let i = rng.below(n);
                b[i] ^= 1 << rng.below(8);
            }
            1 if n > 0 => {
                let i = rng.below(n);
                b[i] = [0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE][rng.below(6)];
            }
            2 => {
                let i = rng.below(n + 1);
                let v = rng.next() as u8;
                b.insert(i, v);
            }
            3 if n > 0 => {
                let i = rng.below(n);
                let len = 1 + rng.below(16.min(n - i));
                b.drain(i..i + len);
            }
            4 => b.truncate(rng.below(n + 1)),
            5 if n >= 8 => {
                // An interesting 32/64-bit little- or big-endian value over a length field.
                let i = rng.below(n - 7);
                let v: u64 = [0, 1, u32::MAX as u64, u64::MAX, 1 << 31, 1 << 40, (n as u64) * 2][rng.below(7)];
                if rng.below(2) == 0 {
                    b[i..i + 8].copy_from_slice(&v.to_le_bytes());
                } else {
                    b[i..i + 4].copy_from_slice(&(v as u32).to_be_bytes());
                }
            }
            6 if !other.is_empty() => {
                // Splice a piece of another corpus file.
                let (i, j) = (rng.below(n + 1), rng.below(other.len()));
                let len = 1 + rng.below(64.min(other.len() - j));
                b.splice(i..i, other[j..j + len].iter().cloned());
            }
            7 if n > 0 => {
                // Repeat a chunk (nested or repeated structures).
                let i = rng.below(n);
                let len = 1 + rng.below(32.min(n - i));
                let chunk: Vec<u8> = b[i..i + len].to_vec();
                b.splice(i..i, chunk);
            }
            _ => {
                let i = rng.below(n + 1);
                b.insert(i, b'{');
            }
        }
    }
    b
}

fn seconds() -> Duration {
    Duration::from_secs_f64(std::env::var("DINO_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20.0))
}

/// Run `target` on mutations of the corpus for the time budget; panics name the seed and file.
fn fuzz(name: &str, dir: &str, salt: u64, target: impl Fn(&[u8])) {
    let files = corpus(dir);
    // The unmutated seeds first: they must pass too.
    for (path, bytes) in &files {
        if catch_unwind(AssertUnwindSafe(|| target(bytes))).is_err() {
            panic!("{name}: the corpus file {} panics", path.display());
        }
    }
    let budget = seconds();
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed() < budget {
        let seed = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ runs.wrapping_add(1);
        let mut rng = Rng(seed | 1);
        let (_, base) = &files[rng.below(files.len())];
        let (_, other) = &files[rng.below(files.len())];
        let input = mutate(base, other, &mut rng);
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            let out = std::env::temp_dir().join(format!("dino-fuzz-{name}-{seed:x}"));
            let _ = std::fs::write(&out, &input);
            panic!("{name}: input {} (seed {seed:#x}, {} bytes) panics", out.display(), input.len());
        }
        runs += 1;
    }
    eprintln!("{name}: {runs} mutated inputs in {:.1} s, no panic", start.elapsed().as_secs_f64());
    assert!(runs > 0);
}

/// Parse, check the architecture and build the model (the page's and the CLI's whole path).
fn load_weights(file: Result<WeightsFile, dino_shared::weights::WeightsError>) {
    let Ok(file) = file else { return };
    // One head: the corpus models are 16 wide, below the official 64-dim heads.
    let spec = ArchSpec { num_heads: Some(1), ..ArchSpec::default() };
    let device = Device::flex();
    if file.vit_config(&spec).is_ok() {
        let _ = file.backbone_model(&spec, &device);
    }
    let _ = file.head_model(&device);
}

#[test]
fn safetensors_weights_never_panic() {
    fuzz("safetensors", "weights", 1, |bytes| {
        load_weights(WeightsFile::from_safetensors_bytes("fuzz.safetensors", bytes, "teacher"));
    });
}

#[test]
fn pth_weights_never_panic() {
    let path = std::env::temp_dir().join(format!("dino-fuzz-{}.pth", std::process::id()));
    fuzz("pth", "weights", 2, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        load_weights(WeightsFile::read(&path, "teacher"));
    });
    let _ = std::fs::remove_file(&path);
}

#[test]
fn pictures_never_panic() {
    fuzz("pictures", "pictures", 3, |bytes| {
        if let Ok(img) = decode_image(bytes) {
            let _ = for_attention(&img, ImageSize::ShorterSide(16), 4);
            let _ = for_evaluation(&img, 8, 4);
        }
    });
}

/// The EXIF orientation is applied: the corpus' `rotated.jpg` (12 x 9 stored, orientation 6)
/// comes out 9 x 12, as `ImageOps.exif_transpose` gives it.
#[test]
fn exif_orientation_is_applied() {
    let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz-corpus/pictures/rotated.jpg")).unwrap();
    let img = decode_image(&bytes).unwrap();
    assert_eq!((img.width(), img.height()), (9, 12));
}
