//! Training configuration: official `main_dino.py` flag names and defaults, presets for small
//! images, loadable from TOML (`--config`), overridden by flags.

use std::path::PathBuf;

use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};

use crate::augment::MultiCrop;
use crate::device::DeviceChoice;
use dino_shared::inference::check_activation_size;
use dino_shared::{HeadConfig, VitConfig};

/// Every setting of `dino train`, declared once: each field is a key of the TOML file given by
/// `--config`, a flag of the same name (its doc comment is the flag's help) and a key of
/// `--print_config`'s JSON. Values come from a [`Preset`], then the file, then the flags given
/// (`commands/train.rs`: clap's `update_from_arg_matches` sets only the flags present).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct TrainConfig {
    // Model (official names).
    /// vit_tiny, vit_small, vit_base (official, 64-dim heads) or custom (--embed_dim --depth --num_heads); official vit_small.
    #[arg(long)]
    pub arch: String,
    /// Side of the square patches in pixels (official 16; 8 gives finer maps at 4x the cost).
    #[arg(long)]
    pub patch_size: usize,
    /// Dimensionality K of the DINO head output (official 65536; smaller for small data).
    #[arg(long)]
    pub out_dim: usize,
    /// Weight-normalise the head's last layer with a fixed norm: true or false (official true; false learns better but can be less stable).
    #[arg(long, action = clap::ArgAction::Set)]
    pub norm_last_layer: bool,
    /// Stochastic depth rate of the student (official 0.1).
    #[arg(long)]
    pub drop_path_rate: f64,
    /// Width of a custom ViT (--arch custom).
    #[arg(long)]
    pub embed_dim: usize,
    /// Blocks of a custom ViT (--arch custom).
    #[arg(long)]
    pub depth: usize,
    /// Attention heads of a custom ViT; must divide --embed_dim.
    #[arg(long)]
    pub num_heads: usize,
    /// Hidden width of the DINO head MLP (official 2048).
    #[arg(long)]
    pub head_hidden_dim: usize,
    /// Bottleneck width of the DINO head (official 256).
    #[arg(long)]
    pub head_bottleneck_dim: usize,
    // Teacher and loss.
    /// Base EMA momentum of the teacher, raised to 1 by a cosine (official 0.996; lower, e.g. 0.99, for short runs and small batches).
    #[arg(long)]
    pub momentum_teacher: f64,
    /// Teacher temperature at the start of its warm-up (official 0.04; lower it if the loss does not fall).
    #[arg(long)]
    pub warmup_teacher_temp: f64,
    /// Teacher temperature after the warm-up (official 0.04; above 0.07 is unstable).
    #[arg(long)]
    pub teacher_temp: f64,
    /// Epochs of linear teacher-temperature warm-up (official 0 here; 30 in the paper's long runs).
    #[arg(long)]
    pub warmup_teacher_temp_epochs: usize,
    // Optimisation.
    /// Initial AdamW weight decay (official 0.04), cosine to --weight_decay_end.
    #[arg(long)]
    pub weight_decay: f64,
    /// Final weight decay (official 0.4).
    #[arg(long)]
    pub weight_decay_end: f64,
    /// Per-tensor gradient norm clipping (official 3.0; 0 disables).
    #[arg(long)]
    pub clip_grad: f64,
    /// Matrix products in f16 with dynamic loss scaling, the rest in f32: true or false (official true, torch.cuda.amp; false here: f16 pays on GPUs, on the CPU it is slower).
    #[arg(long, action = clap::ArgAction::Set)]
    pub use_fp16: bool,
    /// Matrix products in bf16, the rest in f32, no loss scaling: true or false (not official; for GPUs with bf16 units; WGSL has no bf16, so not on --device wgpu).
    #[arg(long, action = clap::ArgAction::Set)]
    pub use_bf16: bool,
    /// Pictures per micro-batch (official 64 per GPU); a step takes --accum_iter of them.
    #[arg(long)]
    pub batch_size_per_gpu: usize,
    /// Passes over the training pictures (official 100).
    #[arg(long)]
    pub epochs: usize,
    /// Epochs during which the head's last layer is not updated (official 1).
    #[arg(long)]
    pub freeze_last_layer: usize,
    /// Peak learning rate at batch 256, scaled linearly by the step's batch / 256 (official 0.0005).
    #[arg(long)]
    pub lr: f64,
    /// Epochs of linear learning-rate warm-up (official 10).
    #[arg(long)]
    pub warmup_epochs: usize,
    /// Final learning rate of the cosine schedule (official 1e-6).
    #[arg(long)]
    pub min_lr: f64,
    // Multi-crop.
    /// Area range (min max) of the two global crops, as fractions of the picture (official 0.4 1.0).
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"])]
    pub global_crops_scale: Vec<f64>,
    /// Number of small local crops (official 8; 0 disables multi-crop).
    #[arg(long)]
    pub local_crops_number: usize,
    /// Area range (min max) of the local crops (official 0.05 0.4).
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"])]
    pub local_crops_scale: Vec<f64>,
    /// Side of the global crops in pixels (official 224).
    #[arg(long)]
    pub global_crops_size: usize,
    /// Side of the local crops in pixels (official 96).
    #[arg(long)]
    pub local_crops_size: usize,
    /// Gaussian blur radius range (min max) in pixels (official 0.1 2.0, made for 224 / 96 px crops).
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"])]
    pub blur_radius: Vec<f64>,
    // Run.
    /// Image folder, Tiny-ImageNet root or IDX file/folder; default: the embedded subset.
    #[arg(long)]
    pub data_path: Option<PathBuf>,
    /// Where checkpoints, log.txt, loss.png, eval.json and maps go; a run there resumes.
    #[arg(long)]
    pub output_dir: PathBuf,
    /// Also keep checkpoint{epoch:04}.safetensors every N epochs (0: never).
    #[arg(long)]
    pub saveckp_freq: usize,
    /// Seed of the initialisation, the crops and drop-path (a seeded run is reproducible; with
    /// drop-path, for a given --replicas and --accum_iter).
    #[arg(long)]
    pub seed: u64,
    /// Threads making the multi-crop batches.
    #[arg(long)]
    pub num_workers: usize,
    /// Where the model trains.
    #[arg(long, value_enum)]
    pub device: DeviceChoice,
    /// Data-parallel student replicas, each a job on the CPU kernels' thread pool (one worker per
    /// core, or RAYON_NUM_THREADS): the batch's pictures are split between them and their
    /// gradients summed (official DDP on one device; see `step.rs`). 0: auto, i.e.
    /// 2 on the cpu (Burn's CPU backend runs a small ViT's matrices on one core; a fixed 2 keeps a
    /// seeded run's numbers independent of the number of cores; raise it on more cores) and 1 on
    /// a GPU. With --drop_path_rate > 0 each micro-batch draws its drop-path masks from its own
    /// generator, seeded from the run's: a seeded run repeats itself for a given --replicas and
    /// --accum_iter (other splits of the batch draw other masks).
    #[arg(long)]
    pub replicas: usize,
    /// Gradient accumulation: each step runs N micro-batches of --batch_size_per_gpu pictures one
    /// after the other and sums their gradients (one optimizer step on N x the batch; the lr
    /// scaling and the iterations per epoch follow the larger batch). Default 1.
    #[arg(long)]
    pub accum_iter: usize,
    /// Stop after this many iterations in all (0: no limit), counted over all epochs and resumes;
    /// a resume goes on inside an epoch it cut short (the same run as one never cut). For smoke
    /// tests, benchmarks and runs in time-limited slices.
    #[arg(long)]
    pub max_iters: usize,
    /// Time every phase of a step (waits for the device after each: slower, for profiling).
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub profile: bool,
    /// k-NN of the teacher every N epochs (and after the last) into log.txt and loss.png; 0: only
    /// the floor (initial teacher) and the final evaluation.
    #[arg(long)]
    pub eval_every: usize,
    /// Skip every k-NN evaluation (the floor included) and the attention maps after training.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub skip_eval: bool,
}

impl Default for TrainConfig {
    /// The official defaults (main_dino.py), ImageNet-sized.
    fn default() -> Self {
        Self {
            arch: "vit_small".into(),
            patch_size: 16,
            out_dim: 65536,
            norm_last_layer: true,
            drop_path_rate: 0.1,
            embed_dim: 192,
            depth: 12,
            num_heads: 3,
            head_hidden_dim: 2048,
            head_bottleneck_dim: 256,
            momentum_teacher: 0.996,
            warmup_teacher_temp: 0.04,
            teacher_temp: 0.04,
            warmup_teacher_temp_epochs: 0,
            weight_decay: 0.04,
            weight_decay_end: 0.4,
            clip_grad: 3.0,
            use_fp16: false,
            use_bf16: false,
            batch_size_per_gpu: 64,
            epochs: 100,
            freeze_last_layer: 1,
            lr: 0.0005,
            warmup_epochs: 10,
            min_lr: 1e-6,
            global_crops_scale: vec![0.4, 1.0],
            local_crops_number: 8,
            local_crops_scale: vec![0.05, 0.4],
            global_crops_size: 224,
            local_crops_size: 96,
            blur_radius: { let (lo, hi) = crate::augment::official_blur_radius(); vec![lo, hi] },
            data_path: None,
            output_dir: PathBuf::from("."),
            saveckp_freq: 20,
            seed: 0,
            num_workers: 10,
            device: DeviceChoice::Auto,
            replicas: 0,
            accum_iter: 1,
            max_iters: 0,
            profile: false,
            eval_every: 0,
            skip_eval: false,
        }
    }
}

/// Starting points for common data; every value can still be overridden by flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Official ImageNet recipe: ViT-S/16, 224/96 crops, 2 + 8 crops.
    Imagenet,
    /// 64 px pictures (Tiny-ImageNet): ViT-tiny/8 on 64/32 crops.
    TinyImagenet,
    /// 28 px pictures (Fashion-MNIST, MNIST): a 4-block ViT/4 on 24/12 crops; the built-in default.
    Small,
}

impl Preset {
    pub fn config(self) -> TrainConfig {
        let base = TrainConfig::default();
        match self {
            Preset::Imagenet => base,
            Preset::TinyImagenet => TrainConfig {
                arch: "vit_tiny".into(),
                patch_size: 8,
                out_dim: 8192,
                global_crops_size: 64,
                local_crops_size: 32,
                local_crops_number: 6,
                batch_size_per_gpu: 128,
                momentum_teacher: 0.99,
                ..base
            },
            Preset::Small => TrainConfig {
                arch: "custom".into(),
                patch_size: 4,
                embed_dim: 96,
                depth: 4,
                num_heads: 3,
                out_dim: 1024,
                head_hidden_dim: 512,
                head_bottleneck_dim: 128,
                norm_last_layer: false,
                drop_path_rate: 0.0,
                // 24/12 px crops of the 28 px pictures (a 6x6 / 3x3 patch grid): the CPU budget.
                global_crops_size: 24,
                local_crops_size: 12,
                local_crops_number: 4,
                // The official blur radii (0.1-2 px) are kept: the trials that learned most used
                // them (BENCHMARKS.md: trials, H2 and M).
                // On this data DINO first drifts towards uniform outputs and learns once it has
                // left them (~600 iterations). A 20-epoch cosine decays the lr and drives the
                // teacher momentum to 1 before the learning is done, so the short run starts
                // with a faster teacher (0.98) and twice the per-step lr of the long runs:
                // 4e-3 x 32 / 256 = 5e-4 (BENCHMARKS.md: trial M, the main job).
                momentum_teacher: 0.98,
                lr: 0.004,
                warmup_epochs: 1,
                batch_size_per_gpu: 32,
                // 1860 iterations: about 13 minutes of training on 2 CPU cores (README: the main job).
                epochs: 20,
                eval_every: 4,
                saveckp_freq: 5,
                num_workers: 2,
                ..base
            },
        }
    }
}

/// The dtype of the model's matrix products for `--use_fp16` / `--use_bf16` (`None`: f32;
/// `dino_shared::autocast`), for `dino train` and `dino bench`. Both flags is an error.
pub fn autocast_dtype(use_fp16: bool, use_bf16: bool) -> anyhow::Result<Option<FloatDType>> {
    anyhow::ensure!(!(use_fp16 && use_bf16), "--use_fp16 and --use_bf16 are exclusive: choose one");
    Ok(if use_fp16 {
        Some(FloatDType::F16)
    } else if use_bf16 {
        Some(FloatDType::BF16)
    } else {
        None
    })
}

impl TrainConfig {
    /// [`autocast_dtype`] of this configuration (`validate` refused both flags together).
    pub fn autocast(&self) -> Option<FloatDType> {
        autocast_dtype(self.use_fp16, self.use_bf16).ok().flatten()
    }

    /// The pictures of one optimizer step: `batch_size_per_gpu x accum_iter`.
    pub fn step_batch(&self) -> usize {
        self.batch_size_per_gpu * self.accum_iter
    }

    pub fn vit(&self) -> anyhow::Result<VitConfig> {
        let img = self.global_crops_size;
        // Before the remainders below (a zero patch size divided by zero).
        anyhow::ensure!(self.patch_size > 0, "--patch_size must be at least 1");
        anyhow::ensure!(
            img % self.patch_size == 0 && self.local_crops_size % self.patch_size == 0,
            "crop sizes {} / {} must be multiples of --patch_size {}",
            self.global_crops_size,
            self.local_crops_size,
            self.patch_size
        );
        let cfg = if self.arch == "custom" {
            VitConfig::custom(img, self.patch_size, self.embed_dim, self.depth, self.num_heads)
        } else {
            let mut c = VitConfig::from_arch(&self.arch, self.patch_size)
                .ok_or_else(|| anyhow::anyhow!("unknown --arch {} (vit_tiny, vit_small, vit_base or custom)", self.arch))?;
            // The position embedding is made for the global crop size (224 on ImageNet).
            c.img_size = img;
            c
        };
        let cfg = cfg.with_drop_path_rate(self.drop_path_rate);
        cfg.validate().map_err(|e| {
            anyhow::anyhow!("model: {e} (--arch {}, --embed_dim, --depth, --num_heads, --patch_size, --global_crops_size, --drop_path_rate)", self.arch)
        })?;
        Ok(cfg)
    }

    pub fn head(&self, in_dim: usize) -> HeadConfig {
        HeadConfig {
            in_dim,
            out_dim: self.out_dim,
            hidden_dim: self.head_hidden_dim,
            bottleneck_dim: self.head_bottleneck_dim,
            nlayers: 3,
            norm_last_layer: self.norm_last_layer,
        }
    }

    /// The multi-crop recipe; `validate` has checked that each range holds two values.
    pub fn multicrop(&self) -> MultiCrop {
        let pair = |v: &[f64]| (v.first().copied().unwrap_or(f64::NAN), v.get(1).copied().unwrap_or(f64::NAN));
        // Official: without local crops, the global crops take the wider scale (0.14, 1).
        let global_crops_scale = if self.local_crops_number == 0 && self.global_crops_scale == [0.4, 1.0] {
            (0.14, 1.0)
        } else {
            pair(&self.global_crops_scale)
        };
        MultiCrop {
            global_size: self.global_crops_size,
            local_size: self.local_crops_size,
            global_crops_scale,
            local_crops_scale: pair(&self.local_crops_scale),
            local_crops_number: self.local_crops_number,
            blur_radius: pair(&self.blur_radius),
        }
    }

    /// Every setting checked before anything runs: one line naming the flag and the problem.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::ensure;
        ensure!(self.batch_size_per_gpu > 0, "--batch_size_per_gpu must be at least 1");
        ensure!(self.accum_iter > 0, "--accum_iter must be at least 1");
        ensure!(
            self.batch_size_per_gpu.checked_mul(self.accum_iter).is_some(),
            "--batch_size_per_gpu {} x --accum_iter {} is too large",
            self.batch_size_per_gpu,
            self.accum_iter
        );
        ensure!(self.epochs > 0, "--epochs must be at least 1");
        ensure!(self.freeze_last_layer <= self.epochs, "--freeze_last_layer {} exceeds --epochs {}", self.freeze_last_layer, self.epochs);
        ensure!(self.warmup_epochs <= self.epochs, "--warmup_epochs {} exceeds --epochs {}", self.warmup_epochs, self.epochs);
        ensure!(
            self.warmup_teacher_temp_epochs <= self.epochs,
            "--warmup_teacher_temp_epochs {} exceeds --epochs {}",
            self.warmup_teacher_temp_epochs,
            self.epochs
        );
        let finite_nonneg = |flag: &str, v: f64| -> anyhow::Result<()> {
            ensure!(v.is_finite() && v >= 0.0, "{flag} must be a finite number >= 0, got {v}");
            Ok(())
        };
        finite_nonneg("--lr", self.lr)?;
        finite_nonneg("--min_lr", self.min_lr)?;
        finite_nonneg("--weight_decay", self.weight_decay)?;
        finite_nonneg("--weight_decay_end", self.weight_decay_end)?;
        finite_nonneg("--clip_grad", self.clip_grad)?;
        autocast_dtype(self.use_fp16, self.use_bf16)?;
        ensure!((0.0..=1.0).contains(&self.momentum_teacher), "--momentum_teacher must be in [0, 1], got {}", self.momentum_teacher);
        for (flag, t) in [("--teacher_temp", self.teacher_temp), ("--warmup_teacher_temp", self.warmup_teacher_temp)] {
            ensure!(t.is_finite() && t > 0.0, "{flag} must be a positive number, got {t}");
        }
        ensure!(self.out_dim > 0, "--out_dim must be at least 1");
        ensure!(self.head_hidden_dim > 0 && self.head_bottleneck_dim > 0, "--head_hidden_dim and --head_bottleneck_dim must be at least 1");
        ensure!(self.global_crops_size > 0 && self.local_crops_size > 0, "--global_crops_size and --local_crops_size must be at least 1");
        ensure!((1..=256).contains(&self.num_workers), "--num_workers must be between 1 and 256 (threads), got {}", self.num_workers);
        for (flag, v) in [("--global_crops_scale", &self.global_crops_scale), ("--local_crops_scale", &self.local_crops_scale), ("--blur_radius", &self.blur_radius)] {
            ensure!(v.len() == 2, "{flag} takes two numbers (min max), got {}", v.len());
        }
        let crops = self.multicrop();
        let ok = |s: (f64, f64)| 0.0 < s.0 && s.0 <= s.1 && s.1 <= 1.0;
        ensure!(ok(crops.global_crops_scale), "--global_crops_scale must satisfy 0 < min <= max <= 1");
        ensure!(ok(crops.local_crops_scale), "--local_crops_scale must satisfy 0 < min <= max <= 1");
        let (b0, b1) = crops.blur_radius;
        ensure!(b0.is_finite() && b1.is_finite() && 0.0 <= b0 && b0 <= b1 && b1 <= 64.0, "--blur_radius must satisfy 0 <= min <= max <= 64 (pixels)");
        let vit = self.vit()?;
        // One picture's crops, and a micro-batch's crops, within the models' memory bound
        // (`check_activation_size`, as `--image_size` in the other commands): a huge size, batch
        // or crop count is one line, not an allocation failure or an overflow. The k-NN
        // evaluation during training runs at the global crop size and splits its batches.
        let (b, g, l, n) = (self.batch_size_per_gpu, self.global_crops_size, self.local_crops_size, self.local_crops_number);
        let bound = |flag: &str, count: usize, noun: &str, size: usize| {
            check_activation_size(&vit, flag, count, noun, size, size).map_err(|e| anyhow::anyhow!("{e}"))
        };
        bound("--global_crops_size", 1, "crop", g)?;
        bound("--local_crops_size", 1, "crop", l)?;
        bound("--batch_size_per_gpu", b.saturating_mul(2), "global crops (2 per picture)", g)?;
        bound("--local_crops_number x --batch_size_per_gpu", n.saturating_mul(b), "local crops", l)?;
        self.head(vit.embed_dim).validate().map_err(|e| anyhow::anyhow!("head: {e} (--out_dim, --head_hidden_dim, --head_bottleneck_dim)"))?;
        Ok(())
    }
}
