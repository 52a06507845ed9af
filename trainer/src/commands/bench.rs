//! `dino bench`: our side of the benchmarks in `bench/` (which runs the PyTorch peer with the
//! same settings and prints the ratios). Each prints one JSON line on stdout.
//!
//! - `step`: one DINO training step (2 global + N local crops, student forward/backward, teacher
//!   forward, loss, AdamW, EMA), on fixed random crops so that data loading is not in it.
//! - `infer`: a forward pass with the last layer's attention (what the web page runs).
//! - `augment`: the multi-crop augmentation of pictures held in memory, on one thread.
//! - `matmul`: Burn's matrix product alone on the shapes of those models' Linear layers (GFLOP/s).

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Device, Distribution, FloatDType, Tensor};
use dino_shared::autocast::autocast;
use dino_shared::inference::check_activation_size;
use dino_shared::{VisionTransformer, VitConfig};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;

use crate::augment::multi_crop;
use crate::commands::positive;
use crate::config::{autocast_dtype, Preset};
use crate::data::{Dataset, Split};
use crate::device::{self, DeviceChoice};
use crate::loss::DinoLoss;
use crate::optim::Step;
use crate::train::TrainState;
use crate::profile::Phases;
use crate::step::{train_step, Crops, Parallelism};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: Bench,
}

#[derive(clap::Subcommand, Debug)]
pub enum Bench {
    /// Images per second of one training step (random crops; no data loading).
    Step(StepArgs),
    /// Latency of a forward pass with the last layer's attention.
    Infer(InferArgs),
    /// Images per second of the multi-crop augmentation on one thread.
    Augment(AugmentArgs),
    /// GFLOP/s of Burn's matrix product [m, k] x [k, n] on given shapes.
    Matmul(MatmulArgs),
}

#[derive(clap::Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct MatmulArgs {
    /// Comma-separated products MxKxN, e.g. 197x384x1536 (a ViT-S/16 fc1 at batch 1); each
    /// matrix at most 2^28 elements, each product at most 2^37 multiply-adds.
    #[arg(long, default_value = "197x384x384,197x384x1536,197x1536x384")]
    pub shapes: String,
    /// Products per timed round.
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Timed rounds per shape; the best and the median round are reported.
    #[arg(long, default_value_t = 15)]
    pub rounds: usize,
    /// Where the products run (cpu: Burn's flex backend, threads from RAYON_NUM_THREADS).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
}

#[derive(clap::Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct StepArgs {
    /// small (28 px default run: 4-block ViT/4, 24/12 crops) or imagenet (ViT-S/16, 224/96).
    #[arg(long, value_enum, default_value_t = Preset::Small)]
    pub preset: Preset,
    #[arg(long)]
    pub batch_size_per_gpu: Option<usize>,
    #[arg(long)]
    pub local_crops_number: Option<usize>,
    /// Data-parallel student replicas (as `dino train --replicas`; 0: auto, 2 on the cpu).
    #[arg(long, default_value_t = 0)]
    pub replicas: usize,
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Also time each phase (synchronises after each: slower).
    #[arg(long)]
    pub profile: bool,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// Matrix products in f16 with loss scaling (as `dino train --use_fp16`): true or false.
    #[arg(long, action = clap::ArgAction::Set, default_value_t = false)]
    pub use_fp16: bool,
    /// Matrix products in bf16 (as `dino train --use_bf16`): true or false.
    #[arg(long, action = clap::ArgAction::Set, default_value_t = false)]
    pub use_bf16: bool,
}

#[derive(clap::Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct InferArgs {
    #[arg(long, default_value = "vit_small")]
    pub arch: String,
    #[arg(long, default_value_t = 16)]
    pub patch_size: usize,
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// Matrix products in f16 (as under `dino train --use_fp16`): true or false.
    #[arg(long, action = clap::ArgAction::Set, default_value_t = false)]
    pub use_fp16: bool,
    /// Matrix products in bf16 (as under `dino train --use_bf16`): true or false.
    #[arg(long, action = clap::ArgAction::Set, default_value_t = false)]
    pub use_bf16: bool,
}

#[derive(clap::Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct AugmentArgs {
    /// The crop recipe: small (24/12 px, 4 local crops) or imagenet (224/96, 8 local crops).
    #[arg(long, value_enum, default_value_t = Preset::Imagenet)]
    pub preset: Preset,
    /// A folder of pictures, or any dataset `dino train` reads (IDX, class folders).
    #[arg(long)]
    pub data_path: PathBuf,
    /// Pictures loaded (decoded once, before timing).
    #[arg(long, default_value_t = 200)]
    pub count: usize,
    /// Passes over the pictures.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    #[arg(long)]
    pub local_crops_number: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let line = match &args.what {
        Bench::Step(a) => step(a)?,
        Bench::Infer(a) => infer(a)?,
        Bench::Augment(a) => augment(a)?,
        Bench::Matmul(a) => matmul(a)?,
    };
    println!("{line}");
    Ok(())
}

/// "cpu" (flex) or "wgpu": what actually runs after any fallback.
fn backend_name(device: &Device) -> &'static str {
    let d = format!("{device:?}").to_lowercase();
    ["wgpu", "flex"].into_iter().find(|b| d.contains(b)).map_or("?", |b| if b == "flex" { "cpu" } else { b })
}

/// "f32", "f16" or "bf16": the dtype of the matrix products.
fn precision_name(dtype: Option<FloatDType>) -> &'static str {
    match dtype {
        Some(FloatDType::F16) => "f16",
        Some(FloatDType::BF16) => "bf16",
        _ => "f32",
    }
}

fn step(a: &StepArgs) -> anyhow::Result<serde_json::Value> {
    let mut cfg = a.preset.config();
    if let Some(b) = a.batch_size_per_gpu {
        cfg.batch_size_per_gpu = b;
    }
    if let Some(n) = a.local_crops_number {
        cfg.local_crops_number = n;
    }
    (cfg.use_fp16, cfg.use_bf16) = (a.use_fp16, a.use_bf16);
    cfg.validate()?;
    positive("--iters", a.iters)?;
    anyhow::ensure!(a.warmup.checked_add(a.iters).is_some(), "--warmup {} + --iters {} is too large", a.warmup, a.iters);
    let device = device::select(a.device);
    device::check_step_memory(&device, &cfg)?;
    let ad = device.clone().autodiff();
    cfg.seed = 0;
    let mut state = TrainState::new(&cfg, &device)?;
    let vit = state.student.backbone.config().clone();
    let mut loss_fn = DinoLoss::new(cfg.out_dim, &device);
    let (b, g, l, n) = (cfg.batch_size_per_gpu, cfg.global_crops_size, cfg.local_crops_size, cfg.local_crops_number);
    let globals: Tensor<4> = Tensor::random([2 * b, 3, g, g], Distribution::Normal(0.0, 1.0), &ad);
    let locals: Option<Tensor<4>> = (n > 0).then(|| Tensor::random([n * b, 3, l, l], Distribution::Normal(0.0, 1.0), &ad));
    let step = Step {
        lr: 1e-4,
        weight_decay: 0.04,
        momentum: cfg.momentum_teacher,
        teacher_temp: cfg.teacher_temp,
        clip_grad: cfg.clip_grad,
        freeze_last_layer: false,
        autocast: cfg.autocast(),
        drop_path_seed: 0,
    };
    let replicas = device::replicas(a.replicas, &device);
    let mut phases = Phases::new(a.profile, &ad);
    let mut off = Phases::new(false, &ad);
    let mut start = Instant::now();
    let mut skipped_steps = 0usize;
    for i in 0..a.warmup + a.iters {
        if i == a.warmup {
            let _ = ad.sync();
            start = Instant::now();
        }
        let crops = Crops { globals: globals.clone(), locals: locals.clone(), ncrops: 2 + n };
        let p = if i >= a.warmup { &mut phases } else { &mut off };
        let (s, loss) = train_step(state, &mut loss_fn, crops, &step, Parallelism { replicas, accum_iter: 1 }, p);
        state = s;
        let values = loss.map_err(|v| anyhow::anyhow!("non-finite loss {v} in the benchmark"))?;
        // --use_fp16: steps the optimizer skipped (the first ones overflow at the default scale).
        skipped_steps += usize::from(i >= a.warmup && values.skipped);
    }
    let _ = ad.sync();
    let secs = start.elapsed().as_secs_f64();
    phases.report("the timed steps");
    let profile: serde_json::Map<String, serde_json::Value> =
        phases.times.iter().map(|(k, t)| (k.to_string(), json!(t / a.iters as f64))).collect();
    Ok(json!({
        "bench": "step", "impl": "dino-rs", "backend": backend_name(&device),
        "arch": vit.arch_name(), "precision": precision_name(cfg.autocast()), "batch": b, "replicas": replicas, "global": g, "local": l, "local_crops": n, "out_dim": cfg.out_dim,
        "iters": a.iters, "seconds_per_step": secs / a.iters as f64,
        "images_per_s": (b * a.iters) as f64 / secs, "skipped_steps": skipped_steps, "profile": profile,
    }))
}

fn infer(a: &InferArgs) -> anyhow::Result<serde_json::Value> {
    let mut vit = VitConfig::from_arch(&a.arch, a.patch_size)
        .ok_or_else(|| anyhow::anyhow!("unknown --arch {} (vit_tiny, vit_small, vit_base)", a.arch))?;
    vit.img_size = a.image_size;
    vit.validate().map_err(|e| anyhow::anyhow!("--arch {} --patch_size {} --image_size {}: {e}", a.arch, a.patch_size, a.image_size))?;
    positive("--batch", a.batch)?;
    positive("--iters", a.iters)?;
    // One picture at --image_size, then the batch of them: the flag at fault is named.
    check_activation_size(&vit, "--image_size", 1, "input", a.image_size, a.image_size)
        .and_then(|()| check_activation_size(&vit, "--batch", a.batch, "inputs", a.image_size, a.image_size))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(a.warmup.checked_add(a.iters).is_some(), "--warmup {} + --iters {} is too large", a.warmup, a.iters);
    let dtype = autocast_dtype(a.use_fp16, a.use_bf16)?;
    let device = device::select(a.device);
    device::check_autocast(&device, dtype)?;
    device.seed(0);
    let model = VisionTransformer::new(&vit, &device);
    let s = a.image_size;
    let x: Tensor<4> = Tensor::random([a.batch, 3, s, s], Distribution::Normal(0.0, 1.0), &device);
    let mut times = Vec::new();
    for i in 0..a.warmup + a.iters {
        let start = Instant::now();
        let (cls, attn) = autocast(dtype, || model.forward_with_last_attention(x.clone()));
        // Read both back: the page and `dino attention` need them on the host.
        let _ = cls.into_data();
        let _ = attn.into_data();
        if i >= a.warmup {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    Ok(json!({
        "bench": "infer", "impl": "dino-rs", "backend": backend_name(&device), "arch": vit.arch_name(),
        "precision": precision_name(dtype), "image_size": s, "batch": a.batch, "iters": a.iters,
        "ms_mean": mean, "ms_median": times[times.len() / 2], "images_per_s": a.batch as f64 * 1e3 / mean,
    }))
}

/// The most elements of one matrix of `dino bench matmul` (2^28: 1 GiB of f32).
const MATMUL_MAX_ELEMENTS: usize = 1 << 28;

/// The most multiply-adds of one product of `dino bench matmul` (2^37, e.g. 4096 x 4096 x 8192:
/// about a second on two cores).
const MATMUL_MAX_WORK: usize = 1 << 37;

/// One product of `--shapes` ("197x384x1536" -> (197, 384, 1536)); `all` is the whole flag, for
/// the error.
///
/// # Errors
/// Not three positive integers, a matrix over [`MATMUL_MAX_ELEMENTS`] or a product over
/// [`MATMUL_MAX_WORK`].
fn parse_shape(text: &str, all: &str) -> anyhow::Result<(usize, usize, usize)> {
    let at = if text == all { format!("--shapes {all:?}") } else { format!("--shapes {all:?}: {text:?}") };
    let bad = || anyhow::anyhow!("{at} is not MxKxN with positive integers, e.g. 197x384x1536");
    let dims: Vec<usize> = text.split('x').map(|d| d.trim().parse::<usize>()).collect::<Result<_, _>>().map_err(|_| bad())?;
    let [m, k, n] = dims[..] else { return Err(bad()) };
    if m == 0 || k == 0 || n == 0 {
        return Err(bad());
    }
    let fits = |a: usize, b: usize| a.checked_mul(b).is_some_and(|e| e <= MATMUL_MAX_ELEMENTS);
    anyhow::ensure!(
        fits(m, k) && fits(k, n) && fits(m, n),
        "{at}: each of m x k, k x n and m x n must be at most 2^28 elements (1 GiB of f32)"
    );
    let work = m.checked_mul(k).and_then(|mk| mk.checked_mul(n));
    anyhow::ensure!(
        work.is_some_and(|w| w <= MATMUL_MAX_WORK),
        "{at}: m x k x n must be at most 2^37 multiply-adds (e.g. 4096x4096x8192)"
    );
    Ok((m, k, n))
}

fn matmul(a: &MatmulArgs) -> anyhow::Result<serde_json::Value> {
    let shapes = a.shapes.split(',').map(|text| parse_shape(text, &a.shapes)).collect::<anyhow::Result<Vec<_>>>()?;
    positive("--iters", a.iters)?;
    positive("--rounds", a.rounds)?;
    let device = device::select(a.device);
    device.seed(0);
    let mut results = Vec::new();
    for (m, k, n) in shapes {
        let x: Tensor<2> = Tensor::random([m, k], Distribution::Normal(0.0, 1.0), &device);
        let w: Tensor<2> = Tensor::random([k, n], Distribution::Normal(0.0, 1.0), &device);
        let product = || drop(x.clone().matmul(w.clone()));
        for _ in 0..3 {
            product();
        }
        let _ = device.sync();
        let mut rounds: Vec<f64> = (0..a.rounds)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..a.iters {
                    product();
                }
                let _ = device.sync();
                start.elapsed().as_secs_f64() / a.iters as f64
            })
            .collect();
        rounds.sort_by(f64::total_cmp);
        let gflops = |secs: f64| 2.0 * m as f64 * k as f64 * n as f64 / secs / 1e9;
        results.push(json!({"m": m, "k": k, "n": n, "gflops_best": gflops(rounds[0]), "gflops_median": gflops(rounds[rounds.len() / 2])}));
    }
    Ok(json!({
        "bench": "matmul", "impl": "dino-rs", "backend": backend_name(&device), "threads": rayon::current_num_threads(),
        "iters": a.iters, "rounds": a.rounds, "shapes": results,
    }))
}

fn augment(a: &AugmentArgs) -> anyhow::Result<serde_json::Value> {
    let mut cfg = a.preset.config();
    if let Some(n) = a.local_crops_number {
        cfg.local_crops_number = n;
    }
    // The crops' flags through the same checks as dino train (a huge --local_crops_number was
    // an allocation failure).
    cfg.validate()?;
    positive("--count", a.count)?;
    positive("--repeat", a.repeat)?;
    let pictures: Vec<image::RgbImage> = match crate::images::list_images(&a.data_path) {
        Ok(files) if !files.is_empty() => files
            .iter()
            .filter_map(|f| crate::images::open_image(f).ok().map(|i| i.to_rgb8()))
            .cycle()
            .take(a.count)
            .collect(),
        _ => {
            let data = Dataset::open(&a.data_path, Split::Train)?;
            (0..a.count.min(data.len())).map(|i| data.load(i)).collect::<anyhow::Result<_>>()?
        }
    };
    anyhow::ensure!(!pictures.is_empty(), "{}: no pictures", a.data_path.display());
    let crops = cfg.multicrop().crops();
    let mut rng = StdRng::seed_from_u64(a.seed);
    let start = Instant::now();
    let mut values = 0usize;
    for _ in 0..a.repeat {
        for img in &pictures {
            values += multi_crop(img, &crops, &mut rng).iter().map(Vec::len).sum::<usize>();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let n = pictures.len() * a.repeat;
    Ok(json!({
        "bench": "augment", "impl": "dino-rs", "threads": 1, "pictures": n,
        "global": cfg.global_crops_size, "local": cfg.local_crops_size, "local_crops": cfg.local_crops_number,
        "mean_side": pictures.iter().map(|p| (p.width() + p.height()) as f64 / 2.0).sum::<f64>() / pictures.len() as f64,
        "images_per_s": n as f64 / secs, "floats": values,
    }))
}
