//! `dino train`: self-distillation with no labels (official main_dino.py train_dino).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};

use crate::checkpoint::{load_checkpoint, save_checkpoint, TrainState};
use crate::config::{Preset, TrainConfig};
use crate::data::{Dataset, Split};
use crate::device::{self, DeviceChoice};
use crate::loader::{mix, Batch, Loader};
use crate::loss::DinoLoss;
use crate::model::Dino;
use crate::optim::{AdamW, Step};
use crate::profile::Phases;
use crate::step::{train_step, Crops};
use crate::plot::loss_curve;
use crate::schedule::{cosine_scheduler, teacher_temp_schedule};

/// The labelled Fashion-MNIST subset committed with the repository (MIT licence, see its README):
/// what `dino train` uses when no `--data_path` is given.
pub fn embedded_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist-mini")
}

/// A training run that cannot go on (e.g. a non-finite loss); the process exits with 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TrainingStopped(pub String);

#[derive(clap::Args, Debug, Default)]
#[command(rename_all = "snake_case")]
pub struct TrainArgs {
    /// TOML file with any of the settings below (flags given here win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Starting values: small (28 px, the default without --data_path), tiny-imagenet, imagenet.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    #[arg(long)] pub arch: Option<String>,
    #[arg(long)] pub patch_size: Option<usize>,
    #[arg(long)] pub out_dim: Option<usize>,
    #[arg(long)] pub norm_last_layer: Option<bool>,
    #[arg(long)] pub drop_path_rate: Option<f64>,
    #[arg(long)] pub embed_dim: Option<usize>,
    #[arg(long)] pub depth: Option<usize>,
    #[arg(long)] pub num_heads: Option<usize>,
    #[arg(long)] pub head_hidden_dim: Option<usize>,
    #[arg(long)] pub head_bottleneck_dim: Option<usize>,
    #[arg(long)] pub momentum_teacher: Option<f64>,
    #[arg(long)] pub warmup_teacher_temp: Option<f64>,
    #[arg(long)] pub teacher_temp: Option<f64>,
    #[arg(long)] pub warmup_teacher_temp_epochs: Option<usize>,
    #[arg(long)] pub weight_decay: Option<f64>,
    #[arg(long)] pub weight_decay_end: Option<f64>,
    #[arg(long)] pub clip_grad: Option<f64>,
    #[arg(long)] pub batch_size_per_gpu: Option<usize>,
    #[arg(long)] pub epochs: Option<usize>,
    #[arg(long)] pub freeze_last_layer: Option<usize>,
    #[arg(long)] pub lr: Option<f64>,
    #[arg(long)] pub warmup_epochs: Option<usize>,
    #[arg(long)] pub min_lr: Option<f64>,
    #[arg(long, num_args = 2)] pub global_crops_scale: Option<Vec<f64>>,
    #[arg(long)] pub local_crops_number: Option<usize>,
    #[arg(long, num_args = 2)] pub local_crops_scale: Option<Vec<f64>>,
    #[arg(long)] pub global_crops_size: Option<usize>,
    #[arg(long)] pub local_crops_size: Option<usize>,
    /// Image folder, Tiny-ImageNet root or IDX file/folder; default: the embedded subset.
    #[arg(long)] pub data_path: Option<PathBuf>,
    #[arg(long)] pub output_dir: Option<PathBuf>,
    #[arg(long)] pub saveckp_freq: Option<usize>,
    #[arg(long)] pub seed: Option<u64>,
    #[arg(long)] pub num_workers: Option<usize>,
    #[arg(long, value_enum)] pub device: Option<DeviceChoice>,
    /// Stop after this many iterations in all (smoke tests, benchmarks).
    #[arg(long)] pub max_iters: Option<usize>,
    /// Skip the k-NN evaluation and attention maps after training.
    #[arg(long)] pub skip_eval: bool,
    /// Time every phase of a step (waits for the device after each: slower, for profiling).
    #[arg(long)] pub profile: bool,
}

macro_rules! override_fields {
    ($cfg:ident, $args:ident, $($f:ident),*) => { $( if let Some(v) = $args.$f.clone() { $cfg.$f = v; } )* };
}

impl TrainArgs {
    /// Preset (small without --data_path), then the TOML file, then flags.
    pub fn resolve(&self) -> anyhow::Result<TrainConfig> {
        let preset = self.preset.unwrap_or(if self.data_path.is_some() { Preset::Imagenet } else { Preset::Small });
        let mut cfg = preset.config();
        if self.data_path.is_none() {
            cfg.output_dir = PathBuf::from("output");
        }
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
            // Keys absent from the file keep the preset's values.
            let mut table: toml::Table = toml::to_string(&cfg)?.parse()?;
            // One line naming the file (toml's messages span several lines).
            let bad = |e: &dyn std::fmt::Display| {
                anyhow::anyhow!("{}: {}", path.display(), e.to_string().split_whitespace().collect::<Vec<_>>().join(" "))
            };
            let file: toml::Table = text.parse().map_err(|e| bad(&e))?;
            table.extend(file);
            cfg = table.try_into().map_err(|e| bad(&e))?;
        }
        let a = self;
        override_fields!(cfg, a, arch, patch_size, out_dim, norm_last_layer, drop_path_rate, embed_dim, depth, num_heads,
            head_hidden_dim, head_bottleneck_dim, momentum_teacher, warmup_teacher_temp, teacher_temp,
            warmup_teacher_temp_epochs, weight_decay, weight_decay_end, clip_grad, batch_size_per_gpu, epochs,
            freeze_last_layer, lr, warmup_epochs, min_lr, local_crops_number, global_crops_size, local_crops_size,
            output_dir, saveckp_freq, seed, num_workers, device, max_iters);
        cfg.profile |= a.profile;
        if let Some(p) = &a.data_path {
            cfg.data_path = Some(p.clone());
        }
        if let Some(s) = &a.global_crops_scale {
            cfg.global_crops_scale = (s[0], s[1]);
        }
        if let Some(s) = &a.local_crops_scale {
            cfg.local_crops_scale = (s[0], s[1]);
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Per-epoch record written to log.txt (official keys train_loss / train_lr / train_wd / epoch).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct EpochLog {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_lr: f64,
    pub train_wd: f64,
    pub momentum: f64,
    pub images_per_s: f64,
    pub seconds: f64,
    pub skipped_files: usize,
    /// Loss of every iteration (for the curve and for resume checks).
    pub iter_losses: Vec<f64>,
}

pub struct TrainOutcome {
    pub teacher: Dino,
    pub device: Device,
}

fn batch_tensors(batch: Batch, cfg: &TrainConfig, device: &Device) -> (Tensor<4>, Option<Tensor<4>>) {
    let b = batch.images;
    let (g, l) = (cfg.global_crops_size, cfg.local_crops_size);
    let globals = Tensor::from_data(TensorData::new(batch.globals, [2 * b, 3, g, g]), device);
    let locals = (cfg.local_crops_number > 0)
        .then(|| Tensor::from_data(TensorData::new(batch.locals, [cfg.local_crops_number * b, 3, l, l]), device));
    (globals, locals)
}

fn read_log(path: &Path) -> Vec<EpochLog> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}

pub fn train(cfg: &TrainConfig) -> anyhow::Result<TrainOutcome> {
    let data_path = cfg.data_path.clone().unwrap_or_else(embedded_data);
    let dataset = Arc::new(Dataset::open(&data_path, Split::Train)?);
    let bs = cfg.batch_size_per_gpu;
    anyhow::ensure!(
        dataset.len() >= bs,
        "{}: {} images, fewer than one batch of {bs}",
        data_path.display(),
        dataset.len()
    );
    let device = device::select(cfg.device);
    let ad = device.clone().autodiff();
    std::fs::create_dir_all(&cfg.output_dir).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", cfg.output_dir.display()))?;
    let ckpt_path = cfg.output_dir.join("checkpoint.safetensors");
    let log_path = cfg.output_dir.join("log.txt");

    let vit = cfg.vit()?;
    let head = cfg.head(vit.embed_dim);
    let mut state = if ckpt_path.exists() {
        let s = load_checkpoint(&ckpt_path, cfg, &device)?;
        eprintln!("resuming from {} at epoch {}", ckpt_path.display(), s.epoch);
        s
    } else {
        device.seed(cfg.seed);
        ad.seed(cfg.seed);
        let student = Dino::new(&vit, &head, &ad);
        // Teacher = student at the start (same weights, plain tensors: never any gradient).
        let teacher = student.valid();
        TrainState { epoch: 0, student, teacher, optimizer: AdamW::default(), center: Tensor::zeros([1, cfg.out_dim], &device) }
    };
    let mut logs: Vec<EpochLog> = read_log(&log_path).into_iter().filter(|l| l.epoch < state.epoch).collect();

    let niter = dataset.len() / bs;
    let lr_schedule =
        cosine_scheduler(cfg.lr * bs as f64 / 256.0, cfg.min_lr, cfg.epochs, niter, cfg.warmup_epochs, 0.0);
    let wd_schedule = cosine_scheduler(cfg.weight_decay, cfg.weight_decay_end, cfg.epochs, niter, 0, 0.0);
    let momentum_schedule = cosine_scheduler(cfg.momentum_teacher, 1.0, cfg.epochs, niter, 0, 0.0);
    let temps = teacher_temp_schedule(cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.warmup_teacher_temp_epochs, cfg.epochs);
    let mut loss_fn = DinoLoss::new(cfg.out_dim, temps, &device);
    loss_fn.center = state.center.clone();
    let multicrop = cfg.multicrop();
    let ncrops = 2 + cfg.local_crops_number;
    eprintln!(
        "training {} ({} params) on {} images of {}: {} epochs x {niter} iterations, batch {bs}, {ncrops} crops",
        vit.arch_name(),
        count_params(&state.student),
        dataset.len(),
        data_path.display(),
        cfg.epochs
    );

    let mut iterations_done = state.epoch * niter;
    for epoch in state.epoch..cfg.epochs {
        // Drop-path masks and any other device randomness restart from (seed, epoch): an
        // interrupted and resumed run repeats the uninterrupted one exactly.
        ad.seed(mix(cfg.seed, epoch as u64, 1));
        let loader = Loader::start(dataset.clone(), &multicrop, bs, cfg.seed, epoch, cfg.num_workers, 2);
        let bar = ProgressBar::new(loader.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                .unwrap()
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
        let start = Instant::now();
        let mut losses = Vec::new();
        let mut skipped = Vec::new();
        let mut images = 0usize;
        let (mut lr, mut wd, mut m) = (0.0, 0.0, 0.0);
        let mut phases = Phases::new(cfg.profile, &ad);
        let mut loader = loader.enumerate();
        while let Some((it, batch)) = phases.time("data (waiting for the loader)", || loader.next()) {
            if cfg.max_iters > 0 && iterations_done >= cfg.max_iters {
                break;
            }
            let gi = epoch * niter + it;
            (lr, wd, m) = (lr_schedule[gi], wd_schedule[gi], momentum_schedule[gi]);
            skipped.extend(batch.skipped.iter().cloned());
            let batch_images = batch.images;
            if batch_images == 0 {
                continue;
            }
            let (globals, locals) = phases.time("upload", || batch_tensors(batch, cfg, &ad));
            let step = Step { lr, weight_decay: wd, clip_grad: cfg.clip_grad, freeze_last_layer: epoch < cfg.freeze_last_layer };
            let crops = Crops { globals, locals, ncrops };
            let value = match train_step(state, &mut loss_fn, crops, epoch, &step, m, &mut phases) {
                (s, Ok(v)) => {
                    state = s;
                    v
                }
                (_, Err(value)) => {
                    bar.abandon();
                    return Err(TrainingStopped(format!(
                        "loss is {value} at epoch {epoch} iteration {it}: stopping training; the last good checkpoint is {}",
                        if ckpt_path.exists() { ckpt_path.display().to_string() } else { "none (first epoch)".into() }
                    ))
                    .into());
                }
            };
            losses.push(value);
            images += batch_images;
            iterations_done += 1;
            let secs = start.elapsed().as_secs_f64();
            bar.set_message(format!("loss {value:.4} lr {lr:.2e} {:.1} img/s", images as f64 / secs));
            bar.inc(1);
        }
        bar.finish_and_clear();
        phases.report("the epoch");
        if losses.is_empty() {
            break;
        }
        let seconds = start.elapsed().as_secs_f64();
        if !skipped.is_empty() {
            let shown: Vec<&str> = skipped.iter().take(5).map(String::as_str).collect();
            eprintln!("warning: skipped {} unreadable file(s) this epoch: {}", skipped.len(), shown.join("; "));
        }
        let log = EpochLog {
            epoch,
            train_loss: losses.iter().sum::<f64>() / losses.len() as f64,
            train_lr: lr,
            train_wd: wd,
            momentum: m,
            images_per_s: images as f64 / seconds,
            seconds,
            skipped_files: skipped.len(),
            iter_losses: losses,
        };
        eprintln!(
            "epoch {}/{}: loss {:.4}, lr {:.2e}, wd {:.3}, momentum {:.4}, {:.1} images/s, {:.1} s",
            epoch + 1,
            cfg.epochs,
            log.train_loss,
            lr,
            wd,
            m,
            log.images_per_s,
            seconds
        );
        logs.push(log);
        state.epoch = epoch + 1;
        state.center = loss_fn.center.clone();
        save_checkpoint(&ckpt_path, &state, cfg)?;
        if cfg.saveckp_freq > 0 && (epoch + 1) % cfg.saveckp_freq == 0 {
            std::fs::copy(&ckpt_path, cfg.output_dir.join(format!("checkpoint{:04}.safetensors", epoch + 1)))?;
        }
        let lines: Vec<String> = logs.iter().map(|l| serde_json::to_string(l).unwrap()).collect();
        crate::checkpoint::write_atomically(&log_path, (lines.join("\n") + "\n").as_bytes())?;
        let all_iters: Vec<f64> = logs.iter().flat_map(|l| l.iter_losses.iter().cloned()).collect();
        let means: Vec<f64> = logs.iter().map(|l| l.train_loss).collect();
        loss_curve(&all_iters, niter, &means).save(cfg.output_dir.join("loss.png"))?;
        if cfg.max_iters > 0 && iterations_done >= cfg.max_iters {
            break;
        }
    }
    Ok(TrainOutcome { teacher: state.teacher, device })
}

fn count_params(model: &Dino) -> usize {
    model.num_params()
}

/// `dino train`: train, then (unless --skip_eval) k-NN on the held-out split and attention maps
/// of a few held-out pictures.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let cfg = args.resolve()?;
    let outcome = train(&cfg)?;
    if args.skip_eval {
        return Ok(());
    }
    let data_path = cfg.data_path.clone().unwrap_or_else(embedded_data);
    let Ok(val) = Dataset::open(&data_path, Split::Val) else {
        eprintln!("no validation split next to {}: skipping the k-NN evaluation", data_path.display());
        return Ok(());
    };
    let train_set = Dataset::open(&data_path, Split::Train)?;
    let model = &outcome.teacher.backbone;
    let size = cfg.global_crops_size;
    let results = crate::knn::evaluate(model, &train_set, &val, size, 128, &[10, 20], 0.07, &outcome.device)?;
    let summary: Vec<String> = results.iter().map(|(k, t1, _)| format!("\"knn{k}_top1\": {t1:.2}")).collect();
    std::fs::write(cfg.output_dir.join("eval.json"), format!("{{{}}}\n", summary.join(", ")))?;
    // Attention maps of the first few held-out pictures, scaled up for viewing.
    let patch = model.config().patch_size;
    for i in 0..4.min(val.len()) {
        let img = val.load(i)?;
        let input = dino_shared::preprocess::for_attention(&image::DynamicImage::ImageRgb8(img), size, size, patch)
            .map_err(|e| anyhow::anyhow!("{}: {e}", val.describe(i)))?;
        let (_, attn) = dino_shared::inference::features_and_attention(model, &input, &outcome.device);
        let maps = super::attention::maps_from(attn, model, &input);
        let dir = cfg.output_dir.join("attention").join(format!("val{i}"));
        super::attention::write_outputs(&maps, &input.image, patch, 0.6, &dir, 8)?;
    }
    eprintln!(
        "done: checkpoint, log.txt, loss.png, eval.json and attention/ in {}",
        cfg.output_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Preset, then the TOML file, then flags; a bad file is one line naming it.
    #[test]
    fn config_file_then_flags() {
        let dir = std::env::temp_dir().join(format!("dino-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("run.toml");
        std::fs::write(&file, "epochs = 7\nlr = 0.002\nglobal_crops_scale = [0.3, 1.0]\n").unwrap();
        let args = TrainArgs { config: Some(file.clone()), lr: Some(0.003), ..Default::default() };
        let cfg = args.resolve().unwrap();
        assert_eq!(cfg.epochs, 7);
        assert_eq!(cfg.lr, 0.003);
        assert_eq!(cfg.global_crops_scale, (0.3, 1.0));
        assert_eq!(cfg.patch_size, Preset::Small.config().patch_size);
        std::fs::write(&file, "epochs = \"x\"\n").unwrap();
        let err = TrainArgs { config: Some(file.clone()), ..Default::default() }.resolve().unwrap_err().to_string();
        assert!(err.contains("run.toml") && err.contains("epochs") && !err.contains('\n'), "{err}");
        std::fs::write(&file, "no_such_flag = 1\n").unwrap();
        let err = TrainArgs { config: Some(file), ..Default::default() }.resolve().unwrap_err().to_string();
        assert!(err.contains("no_such_flag"), "{err}");
    }
}
