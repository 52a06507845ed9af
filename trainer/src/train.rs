//! The DINO training run (official `main_dino.py`: `train_dino` and `train_one_epoch`): the
//! state, the schedules, one epoch, the whole run with checkpoints, logs, collapse diagnostics,
//! k-NN evaluations and the curves. `commands/train.rs` only parses flags and calls [`train`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};

use crate::checkpoint::{load_checkpoint, save_checkpoint};
use crate::config::TrainConfig;
use crate::data::{Dataset, Split};
use crate::device;
use crate::fsutil::write_atomically;
use crate::loader::{mix, Batch, Loader};
use crate::loss::DinoLoss;
use crate::model::Dino;
use crate::optim::{AdamW, Step};
use crate::plot::{training_curves, TrainingCurves};
use crate::profile::Phases;
use crate::scaler::GradScaler;
use crate::schedule::{cosine_scheduler, teacher_temp_schedule};
use crate::step::{train_step, Crops, Parallelism};

/// The k of the k-NN evaluations during and after training (official eval_knn: 10, 20).
pub const KNN_KS: [usize; 2] = [10, 20];
/// The vote temperature of those evaluations (official 0.07).
pub const KNN_TEMPERATURE: f64 = 0.07;

/// The labelled Fashion-MNIST subset committed with the repository (MIT licence, see its README):
/// what `dino train` uses when no `--data_path` is given.
pub fn embedded_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist-mini")
}

/// A training run that cannot go on (e.g. a non-finite loss); the process exits with 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TrainingStopped(pub String);

/// Everything needed to continue training exactly where it stopped.
pub struct TrainState {
    /// The next epoch to run (or to finish: see `epoch_pictures`).
    pub epoch: usize,
    /// Pictures of `epoch`'s shuffled order already trained: > 0 when `--max_iters` stopped the
    /// run inside it, and a resume goes on from the next picture (the epoch's order and
    /// augmentations come from (seed, epoch, index), the device randomness from (seed,
    /// iteration)), so that a run cut and resumed repeats the uncut one exactly; with another
    /// `--batch_size_per_gpu x --accum_iter` no picture is trained twice or left out. 0 in
    /// checkpoints written before it was kept (they had moved on to the next epoch, and the rest
    /// of the cut one was not trained).
    pub epoch_pictures: usize,
    /// Optimizer iterations done in all (fewer than `epoch` x iterations per epoch when
    /// `--max_iters` cut the last epoch short); `None` in checkpoints written before it was kept.
    pub iterations: Option<usize>,
    pub student: Dino,
    pub teacher: Dino,
    pub optimizer: AdamW,
    /// The DINO loss centre, [1, out_dim].
    pub center: Tensor<2>,
    /// The loss scaler of `--use_fp16` (official `fp16_scaler`); `None` otherwise.
    pub scaler: Option<GradScaler>,
}

impl TrainState {
    /// A fresh run: the student initialised from `cfg.seed`, the teacher equal to it (official:
    /// `teacher_without_ddp.load_state_dict(student.module.state_dict())`), centre 0.
    pub fn new(cfg: &TrainConfig, device: &Device) -> anyhow::Result<Self> {
        let ad = device.clone().autodiff();
        device.seed(cfg.seed);
        ad.seed(cfg.seed);
        let vit = cfg.vit()?;
        let student = Dino::new(&vit, &cfg.head(vit.embed_dim), &ad);
        // Plain tensors: the teacher never gets a gradient.
        let teacher = student.valid();
        Ok(Self { epoch: 0, epoch_pictures: 0, iterations: Some(0), student, teacher, optimizer: AdamW::default(),
            center: Tensor::zeros([1, cfg.out_dim], device),
            scaler: cfg.use_fp16.then(GradScaler::default),
        })
    }
}

/// The per-iteration schedules of `train_dino`: learning rate (scaled by batch / 256, linear
/// warm-up then cosine), weight decay (cosine), teacher momentum (cosine to 1) and teacher
/// temperature (linear warm-up per epoch, official `DINOLoss.teacher_temp_schedule`).
pub struct Schedules {
    pub lr: Vec<f64>,
    pub weight_decay: Vec<f64>,
    pub momentum: Vec<f64>,
    /// One value per iteration (the official schedule is per epoch; repeated over its iterations).
    pub teacher_temp: Vec<f64>,
    pub iters_per_epoch: usize,
}

impl Schedules {
    pub fn new(cfg: &TrainConfig, iters_per_epoch: usize) -> Self {
        let (e, n) = (cfg.epochs, iters_per_epoch);
        let base_lr = cfg.lr * cfg.step_batch() as f64 / 256.0;
        let temps = teacher_temp_schedule(cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.warmup_teacher_temp_epochs, e);
        Self {
            lr: cosine_scheduler(base_lr, cfg.min_lr, e, n, cfg.warmup_epochs, 0.0),
            weight_decay: cosine_scheduler(cfg.weight_decay, cfg.weight_decay_end, e, n, 0, 0.0),
            momentum: cosine_scheduler(cfg.momentum_teacher, 1.0, e, n, 0, 0.0),
            teacher_temp: temps.iter().take(e).flat_map(|&t| std::iter::repeat_n(t, n)).collect(),
            iters_per_epoch: n,
        }
    }

    /// The values of global iteration `it` (epoch * iters_per_epoch + iteration in the epoch).
    pub fn at(&self, it: usize, cfg: &TrainConfig) -> Step {
        let last = |v: &[f64]| v.get(it).or(v.last()).copied().unwrap_or(0.0);
        Step {
            lr: last(&self.lr),
            weight_decay: last(&self.weight_decay),
            momentum: last(&self.momentum),
            teacher_temp: last(&self.teacher_temp),
            clip_grad: cfg.clip_grad,
            freeze_last_layer: it / self.iters_per_epoch.max(1) < cfg.freeze_last_layer,
            autocast: cfg.autocast(),
            drop_path_seed: mix(cfg.seed, it as u64, 3),
        }
    }
}

/// Per-epoch record written to log.txt (official keys train_loss / train_lr / train_wd / epoch,
/// plus the collapse diagnostics and any k-NN evaluation).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct EpochLog {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_lr: f64,
    pub train_wd: f64,
    pub momentum: f64,
    #[serde(default)]
    pub teacher_temp: f64,
    /// Mean entropy of the centred, sharpened teacher output (nats; ln(out_dim) = uniform).
    #[serde(default)]
    pub teacher_entropy: f64,
    /// Mean KL(teacher || student) = loss - teacher entropy (nats; 0 = collapsed).
    #[serde(default)]
    pub kl: f64,
    /// k-NN top-1 (%) of the teacher on the validation split after this epoch (`--eval_every`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn_top1: Option<Vec<(usize, f64)>>,
    pub images_per_s: f64,
    pub seconds: f64,
    pub skipped_files: usize,
    /// `--use_fp16`: the loss scale at the end of the epoch (official `fp16_scaler`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// `--use_fp16`: steps of the epoch the optimizer skipped (a gradient held an inf or a NaN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<usize>,
    /// Loss of every iteration (for the curve and for resume checks).
    pub iter_losses: Vec<f64>,
    /// Where `--max_iters` stopped this epoch (pictures of its order): the record is then the
    /// epoch's first part, and a resume merges the rest into it ([`EpochLog::continued`]).
    /// Absent for a whole epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_at_picture: Option<usize>,
}

impl EpochLog {
    /// One record for an epoch that `--max_iters` cut and a resume finished: `self` is the
    /// first part, `rest` the second; the same record as an uncut epoch's (the loss recomputed
    /// over every iteration, the entropy weighted by iterations, the end-of-epoch values and
    /// any k-NN from `rest`, speed over both parts' time).
    pub fn continued(self, rest: EpochLog) -> EpochLog {
        let (a, b) = (self.iter_losses.len() as f64, rest.iter_losses.len() as f64);
        let mut iter_losses = self.iter_losses;
        iter_losses.extend_from_slice(&rest.iter_losses);
        let train_loss = iter_losses.iter().sum::<f64>() / iter_losses.len().max(1) as f64;
        let teacher_entropy = (self.teacher_entropy * a + rest.teacher_entropy * b) / (a + b).max(1.0);
        let seconds = self.seconds + rest.seconds;
        let images = self.images_per_s * self.seconds + rest.images_per_s * rest.seconds;
        EpochLog {
            train_loss,
            teacher_entropy,
            kl: train_loss - teacher_entropy,
            images_per_s: if seconds > 0.0 { images / seconds } else { 0.0 },
            seconds,
            skipped_files: self.skipped_files + rest.skipped_files,
            skipped_steps: rest.skipped_steps.map(|n| n + self.skipped_steps.unwrap_or(0)),
            iter_losses,
            ..rest
        }
    }
}

/// What a finished run hands back: the teacher and the k-NN of its initial state (the floor).
pub struct TrainOutcome {
    pub teacher: Dino,
    pub device: Device,
    /// k-NN top-1 (%) per k of the teacher before any step, when a validation split exists.
    pub floor: Option<Vec<(usize, f64)>>,
    /// (k, top-1, top-5) of the final teacher when the last epoch was evaluated (`--eval_every`).
    pub final_knn: Option<Vec<(usize, f64, f64)>>,
    /// The validation data, when the run has some and evaluates.
    pub evaluator: Option<Evaluator>,
}

fn batch_tensors(batch: Batch, cfg: &TrainConfig, device: &Device) -> (Tensor<4>, Option<Tensor<4>>) {
    let b = batch.images;
    let (g, l) = (cfg.global_crops_size, cfg.local_crops_size);
    let globals = Tensor::from_data(TensorData::new(batch.globals, [2 * b, 3, g, g]), device);
    let locals = (cfg.local_crops_number > 0)
        .then(|| Tensor::from_data(TensorData::new(batch.locals, [cfg.local_crops_number * b, 3, l, l]), device));
    (globals, locals)
}

/// The most iterations a run may have (2^27: the three per-iteration schedules then take 3 GiB;
/// the official ImageNet run has about 1M).
const MAX_ITERATIONS: usize = 1 << 27;

fn read_log(path: &Path) -> Vec<EpochLog> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}

/// The held-out split of the training data, for k-NN during and after training; `None` (with
/// one line saying so) when the data has none: the training pictures are never scored against
/// themselves.
pub struct Evaluator {
    pub train: Dataset,
    pub val: Dataset,
    pub image_size: usize,
}

impl Evaluator {
    pub fn open(cfg: &TrainConfig) -> anyhow::Result<Option<Self>> {
        let root = cfg.data_path.clone().unwrap_or_else(embedded_data);
        if !Dataset::has_split(&root, Split::Val) {
            eprintln!("no validation split, evaluation skipped (no t10k-* files or val/ folder in {})", root.display());
            return Ok(None);
        }
        let val = Dataset::open(&root, Split::Val)?;
        let train = Dataset::open(&root, Split::Train)?;
        let val = val.align_classes_to(&train)?;
        Ok(Some(Self { train, val, image_size: cfg.global_crops_size }))
    }

    /// (k, top-1 %, top-5 %) of `model`'s CLS features (official weighted k-NN, quiet).
    pub fn knn(&self, model: &dino_shared::VisionTransformer, device: &Device) -> anyhow::Result<Vec<(usize, f64, f64)>> {
        crate::knn::evaluate(model, &self.train, &self.val, self.image_size, "--global_crops_size", 256, &KNN_KS, KNN_TEMPERATURE, device)
    }
}

/// The (k, top-1) pairs of k-NN results.
pub fn top1s(r: &[(usize, f64, f64)]) -> Vec<(usize, f64)> {
    r.iter().map(|(k, t1, _)| (*k, *t1)).collect()
}

fn top1_at(results: &[(usize, f64)], k: usize) -> Option<f64> {
    results.iter().find(|(kk, _)| *kk == k).map(|(_, v)| *v)
}

/// One line when the teacher's outputs collapse (paper Section 5.3): both collapses drive the
/// KL divergence to 0; the entropy tells which one.
pub fn collapse_warning(entropy: f64, kl: f64, out_dim: usize) -> Option<String> {
    let max = (out_dim as f64).ln();
    if entropy >= 0.9 * max {
        Some(format!(
            "warning: teacher outputs are near uniform (entropy {entropy:.2} of ln(out_dim) = {max:.2}, KL {kl:.3}): \
             the centring dominates; a lower --teacher_temp / --warmup_teacher_temp, a larger --lr, a lower \
             --momentum_teacher, a smaller --out_dim or more iterations help"
        ))
    } else if entropy <= 0.05 * max && kl <= 0.05 * max {
        Some(format!(
            "warning: teacher outputs are near one-hot (entropy {entropy:.2}, KL {kl:.3}): one dimension dominates; \
             a higher --teacher_temp, a lower --lr or a larger --out_dim help"
        ))
    } else {
        None
    }
}

/// One pass over the data (or the rest of one, from `first_picture`): the body of official
/// `train_one_epoch`. Returns the state, the epoch's record (none when no step ran), where
/// `--max_iters` stopped it (pictures of its order; none when the epoch is done) and the
/// unreadable files it skipped.
#[allow(clippy::too_many_arguments)]
fn train_one_epoch(
    mut state: TrainState,
    loss_fn: &mut DinoLoss,
    dataset: &Arc<Dataset>,
    cfg: &TrainConfig,
    schedules: &Schedules,
    epoch: usize,
    first_picture: usize,
    iterations_done: &mut usize,
    ckpt_path: &Path,
    ad: &Device,
) -> anyhow::Result<(TrainState, Option<EpochLog>, Option<usize>, usize)> {
    let bs = cfg.step_batch();
    // The iteration the epoch goes on with (rounded up: with a larger batch than the cut run's,
    // no iteration's schedule values and seeds are used twice).
    let first_iteration = first_picture.div_ceil(bs);
    let loader = Loader::start(dataset.clone(), &cfg.multicrop(), bs, cfg.seed, epoch, first_picture, cfg.num_workers, 2);
    let bar = ProgressBar::new((first_iteration + loader.len()) as u64);
    bar.set_position(first_iteration as u64);
    if let Ok(style) = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
    let start = Instant::now();
    let (mut losses, mut entropies, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    let mut skipped_steps = 0usize;
    let mut images = 0usize;
    let mut last = schedules.at(epoch * schedules.iters_per_epoch + first_iteration, cfg);
    // Pictures of the epoch's order trained (or skipped as unreadable) once this run stops.
    let mut pictures = first_picture;
    let mut cut = false;
    let mut phases = Phases::new(cfg.profile, ad);
    let ncrops = 2 + cfg.local_crops_number;
    let parallel = Parallelism { replicas: device::replicas(cfg.replicas, ad), accum_iter: cfg.accum_iter };
    let mut loader = (first_iteration..).zip(loader);
    while let Some((it, batch)) = phases.time("data (waiting for the loader)", || loader.next()) {
        if cfg.max_iters > 0 && *iterations_done >= cfg.max_iters {
            cut = true;
            break;
        }
        pictures += bs;
        let global_iteration = epoch * schedules.iters_per_epoch + it;
        // Drop-path masks and any other device randomness restart from (seed, iteration): a run
        // stopped anywhere and resumed repeats the uninterrupted one exactly.
        ad.seed(mix(cfg.seed, global_iteration as u64, 1));
        let step = schedules.at(global_iteration, cfg);
        skipped.extend(batch.skipped.iter().cloned());
        let batch_images = batch.images;
        if batch_images == 0 {
            continue;
        }
        let (globals, locals) = phases.time("upload", || batch_tensors(batch, cfg, ad));
        let crops = Crops { globals, locals, ncrops };
        let values = match train_step(state, loss_fn, crops, &step, parallel, &mut phases) {
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
        losses.push(values.loss);
        entropies.push(values.teacher_entropy);
        skipped_steps += usize::from(values.skipped);
        images += batch_images;
        *iterations_done += 1;
        last = step;
        let secs = start.elapsed().as_secs_f64();
        bar.set_message(format!("loss {:.4} lr {:.2e} {:.1} img/s", values.loss, step.lr, images as f64 / secs));
        bar.inc(1);
    }
    bar.finish_and_clear();
    phases.report("the epoch");
    // Where a cut epoch stops (None: the epoch is done).
    let stopped_at = cut.then_some(pictures);
    if !skipped.is_empty() {
        let shown: Vec<&str> = skipped.iter().take(5).map(String::as_str).collect();
        eprintln!("warning: skipped {} unreadable file(s) this epoch: {}", skipped.len(), shown.join("; "));
    }
    if losses.is_empty() {
        return Ok((state, None, stopped_at, skipped.len()));
    }
    let seconds = start.elapsed().as_secs_f64();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (train_loss, teacher_entropy) = (mean(&losses), mean(&entropies));
    let loss_scale = state.scaler.map(|s| s.scale);
    Ok((
        state,
        Some(EpochLog {
            epoch,
            train_loss,
            train_lr: last.lr,
            train_wd: last.weight_decay,
            momentum: last.momentum,
            teacher_temp: last.teacher_temp,
            teacher_entropy,
            kl: train_loss - teacher_entropy,
            knn_top1: None,
            images_per_s: images as f64 / seconds,
            seconds,
            skipped_files: skipped.len(),
            loss_scale,
            skipped_steps: loss_scale.map(|_| skipped_steps),
            iter_losses: losses,
            cut_at_picture: stopped_at,
        }),
        stopped_at,
        skipped.len(),
    ))
}

/// The whole run (official `train_dino`): resume from `output_dir` when it holds a checkpoint,
/// train every remaining epoch, and after each write the checkpoint (atomically), log.txt and
/// loss.png; k-NN of the initial teacher (the floor) and every `--eval_every` epochs when the
/// data has a validation split.
///
/// # Errors
/// Unreadable data or output folder, a checkpoint of another configuration, a non-finite loss
/// ([`TrainingStopped`]).
pub fn train(cfg: &TrainConfig) -> anyhow::Result<TrainOutcome> {
    let data_path = cfg.data_path.clone().unwrap_or_else(embedded_data);
    let dataset = Arc::new(Dataset::open(&data_path, Split::Train)?);
    let bs = cfg.step_batch();
    anyhow::ensure!(
        dataset.len() >= bs,
        "{}: {} images, fewer than one batch of --batch_size_per_gpu x --accum_iter = {bs}",
        data_path.display(),
        dataset.len()
    );
    // The schedules hold one value per iteration (official `cosine_scheduler`): bounded, so that
    // a huge --epochs is one line, not an allocation failure.
    let iterations = cfg.epochs.checked_mul(dataset.len() / bs).filter(|&n| n <= MAX_ITERATIONS);
    anyhow::ensure!(
        iterations.is_some(),
        "--epochs {} x {} iterations per epoch is over {MAX_ITERATIONS} iterations in all",
        cfg.epochs,
        dataset.len() / bs
    );
    dataset.ensure_readable(&data_path.display())?;
    let device = device::select(cfg.device);
    // Fresh runs and resumes alike.
    device::check_autocast(&device, cfg.autocast())?;
    device::check_step_memory(&device, cfg)?;
    std::fs::create_dir_all(&cfg.output_dir).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", cfg.output_dir.display()))?;
    let ckpt_path = cfg.output_dir.join("checkpoint.safetensors");
    let log_path = cfg.output_dir.join("log.txt");
    let floor_path = cfg.output_dir.join("knn_init.json");

    let mut state = if ckpt_path.exists() {
        let mut s = load_checkpoint(&ckpt_path, cfg, &device)?;
        anyhow::ensure!(
            s.epoch_pictures < dataset.len().max(1),
            "{}: the checkpoint stopped epoch {} after {} pictures, but {} has {} (a checkpoint of other data?)",
            ckpt_path.display(),
            s.epoch.saturating_add(1),
            s.epoch_pictures,
            data_path.display(),
            dataset.len()
        );
        let inside = if s.epoch_pictures > 0 && s.epoch_pictures.saturating_add(bs) > dataset.len() {
            // Cut by --max_iters, and what is left of that epoch does not fill one batch of this
            // run (a larger --batch_size_per_gpu x --accum_iter): the epoch is done.
            (s.epoch, s.epoch_pictures) = (s.epoch.saturating_add(1), 0);
            String::new()
        } else if s.epoch_pictures > 0 && s.epoch < cfg.epochs {
            format!(
                "; epoch {} was stopped by --max_iters after {} of its {} pictures, and goes on from there",
                s.epoch.saturating_add(1),
                s.epoch_pictures,
                dataset.len()
            )
        } else {
            String::new()
        };
        eprintln!("resuming from {}: {} of {} epoch(s) done{inside}", ckpt_path.display(), s.epoch, cfg.epochs);
        s
    } else {
        TrainState::new(cfg, &device)?
    };
    let evaluator = if cfg.skip_eval { None } else { Evaluator::open(cfg)? };
    // The floor: the initial teacher's k-NN, measured once per run (kept across resumes).
    let floor: Option<Vec<(usize, f64)>> = match &evaluator {
        Some(ev) => match std::fs::read_to_string(&floor_path).ok().and_then(|t| serde_json::from_str(&t).ok()) {
            Some(f) => Some(f),
            None if state.epoch == 0 && state.epoch_pictures == 0 => {
                let f = top1s(&ev.knn(&state.teacher.backbone, &device)?);
                write_atomically(&floor_path, serde_json::to_string(&f)?.as_bytes())?;
                eprintln!("k-NN of the initial teacher (the floor): {}", format_knn(&f));
                Some(f)
            }
            None => None,
        },
        None => None,
    };
    // The epochs the checkpoint has done, and the first part of one it is inside of.
    let mut logs: Vec<EpochLog> = read_log(&log_path)
        .into_iter()
        .filter(|l| l.epoch < state.epoch || (l.epoch == state.epoch && state.epoch_pictures > 0))
        .collect();
    // A run stopped between writing the checkpoint and log.txt leaves the log behind it: the
    // record of the epoch being resumed must be its first part, cut where the checkpoint was, and
    // the last finished epoch's record must be whole.
    let warn = |what: String| eprintln!("warning: {}: {what} (a run stopped between writing the checkpoint and the log)", log_path.display());
    if state.epoch_pictures > 0 {
        let (e, p) = (state.epoch.saturating_add(1), state.epoch_pictures);
        match logs.last().filter(|l| l.epoch == state.epoch) {
            Some(l) if l.cut_at_picture == Some(p) => {}
            Some(_) => {
                logs.pop();
                warn(format!("the record of epoch {e} does not end at picture {p}, where the checkpoint does; it will cover that epoch from there on"));
            }
            None => warn(format!("no record of the first {p} pictures of epoch {e}; its record will cover the rest")),
        }
    } else if let Some(done) = state.epoch.checked_sub(1).filter(|_| log_path.exists()) {
        match logs.iter().find(|l| l.epoch == done) {
            None => warn(format!("no record of epoch {}", done + 1)),
            Some(l) => {
                if let Some(p) = l.cut_at_picture {
                    warn(format!("the record of epoch {} covers its first {p} pictures only; its loss is of those", done + 1));
                }
            }
        }
    }

    let niter = dataset.len() / bs;
    let schedules = Schedules::new(cfg, niter);
    let mut loss_fn = DinoLoss::new(cfg.out_dim, &device);
    loss_fn.center = state.center.clone();
    let vit = state.student.backbone.config().clone();
    eprintln!(
        "training {} ({} params) on {} images of {}: {} epochs x {niter} iterations, batch {bs} ({} micro-batch(es)), {} crops, {} replica(s)",
        vit.arch_name(),
        state.student.num_params(),
        dataset.len(),
        data_path.display(),
        cfg.epochs,
        cfg.accum_iter,
        2 + cfg.local_crops_number,
        Parallelism { replicas: device::replicas(cfg.replicas, &device), accum_iter: cfg.accum_iter }.replicas_that_run(bs)
    );

    let ad = device.clone().autodiff();
    let mut iterations_done = state.iterations.unwrap_or(state.epoch.saturating_mul(niter));
    // Checkpoints written before the count was kept: epochs x iterations per epoch.
    let estimated = if state.iterations.is_some() { "" } else { " (estimated: an older checkpoint without its count)" };
    // A resume past the end trains nothing: say why instead of passing silently.
    let max_iters_reached = cfg.max_iters > 0 && iterations_done >= cfg.max_iters;
    if state.epoch >= cfg.epochs {
        eprintln!("nothing to train: the checkpoint {} is at epoch {} of --epochs {}; raise --epochs to train on", ckpt_path.display(), state.epoch, cfg.epochs);
    } else if max_iters_reached {
        eprintln!(
            "nothing to train: the checkpoint {} has done {iterations_done} iterations{estimated}, the limit of --max_iters {} (counted over all epochs and resumes); raise --max_iters, or set it to 0 for no limit",
            ckpt_path.display(),
            cfg.max_iters
        );
    }
    let mut final_knn = None;
    let first_epoch = if max_iters_reached { cfg.epochs } else { state.epoch };
    for epoch in first_epoch..cfg.epochs {
        let first_picture = if epoch == state.epoch { state.epoch_pictures } else { 0 };
        let (s, log, stopped_at, skipped_files) = train_one_epoch(state, &mut loss_fn, &dataset, cfg, &schedules, epoch, first_picture, &mut iterations_done, &ckpt_path, &ad)?;
        state = s;
        let log = match (logs.pop_if(|l| l.epoch == epoch), log) {
            (Some(first), Some(rest)) => Some(first.continued(rest)),
            // The rest of a cut epoch had no batch to train (unreadable pictures only).
            (Some(first), None) if stopped_at.is_none() => {
                Some(EpochLog { cut_at_picture: None, skipped_files: first.skipped_files + skipped_files, ..first })
            }
            (Some(first), None) => {
                logs.push(first);
                None
            }
            (None, log) => log,
        };
        let Some(mut log) = log else {
            if stopped_at.is_some() {
                break; // --max_iters reached before this epoch's first step
            }
            // A whole epoch without a batch to train: go on with the next one, not stop here
            // (a rerun would stop at the same place).
            eprintln!("warning: epoch {}/{}: no batch to train (unreadable pictures only)", epoch + 1, cfg.epochs);
            (state.epoch, state.epoch_pictures) = (epoch + 1, 0);
            state.iterations = Some(iterations_done);
            save_checkpoint(&ckpt_path, &state, cfg)?;
            continue;
        };
        let last_epoch = epoch + 1 == cfg.epochs || (cfg.max_iters > 0 && iterations_done >= cfg.max_iters);
        if let Some(ev) = &evaluator {
            if cfg.eval_every > 0 && ((epoch + 1) % cfg.eval_every == 0 || last_epoch) {
                let r = ev.knn(&state.teacher.backbone, &device)?;
                eprintln!("epoch {}/{}: k-NN {}", epoch + 1, cfg.epochs, format_knn(&top1s(&r)));
                log.knn_top1 = Some(top1s(&r));
                final_knn = last_epoch.then_some(r);
            }
        }
        eprintln!(
            "epoch {}/{}: loss {:.4}, teacher entropy {:.3} (ln out_dim {:.3}), KL {:.3}, lr {:.2e}, wd {:.3}, momentum {:.4}, {:.1} images/s, {:.1} s",
            epoch + 1,
            cfg.epochs,
            log.train_loss,
            log.teacher_entropy,
            (cfg.out_dim as f64).ln(),
            log.kl,
            log.train_lr,
            log.train_wd,
            log.momentum,
            log.images_per_s,
            log.seconds
        );
        if let Some(w) = collapse_warning(log.teacher_entropy, log.kl, cfg.out_dim) {
            eprintln!("{w}");
        }
        logs.push(log);
        // An epoch cut by --max_iters stays the next one to run, from where it stopped.
        let epoch_done = stopped_at.is_none();
        (state.epoch, state.epoch_pictures) = match stopped_at {
            None => (epoch + 1, 0),
            Some(pictures) => (epoch, pictures),
        };
        state.iterations = Some(iterations_done);
        state.center = loss_fn.center.clone();
        save_checkpoint(&ckpt_path, &state, cfg)?;
        if epoch_done && cfg.saveckp_freq > 0 && (epoch + 1) % cfg.saveckp_freq == 0 {
            let copy = cfg.output_dir.join(format!("checkpoint{:04}.safetensors", epoch + 1));
            let bytes = std::fs::read(&ckpt_path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", ckpt_path.display()))?;
            write_atomically(&copy, &bytes)?;
        }
        let mut lines = String::new();
        for l in &logs {
            lines.push_str(&serde_json::to_string(l)?);
            lines.push('\n');
        }
        write_atomically(&log_path, lines.as_bytes())?;
        write_curves(&cfg.output_dir.join("loss.png"), &logs, &schedules, floor.as_deref(), cfg)?;
        if cfg.max_iters > 0 && iterations_done >= cfg.max_iters {
            break;
        }
    }
    Ok(TrainOutcome { teacher: state.teacher, device, floor, final_knn, evaluator })
}

/// "10-NN 48.70, 20-NN 47.00".
pub fn format_knn(r: &[(usize, f64)]) -> String {
    r.iter().map(|(k, v)| format!("{k}-NN {v:.2}")).collect::<Vec<_>>().join(", ")
}

fn write_curves(
    path: &Path,
    logs: &[EpochLog],
    schedules: &Schedules,
    floor: Option<&[(usize, f64)]>,
    cfg: &TrainConfig,
) -> anyhow::Result<()> {
    let k = KNN_KS[1];
    let mut knn: Vec<(f64, f64)> = floor.and_then(|f| top1_at(f, k)).map(|v| vec![(0.0, v)]).unwrap_or_default();
    knn.extend(logs.iter().filter_map(|l| Some(((l.epoch + 1) as f64, top1_at(l.knn_top1.as_deref()?, k)?))));
    let iter_losses: Vec<f64> = logs.iter().flat_map(|l| l.iter_losses.iter().cloned()).collect();
    let col = |f: fn(&EpochLog) -> f64| logs.iter().map(f).collect::<Vec<f64>>();
    let img = training_curves(&TrainingCurves {
        iter_losses: &iter_losses,
        iters_per_epoch: schedules.iters_per_epoch,
        epoch_losses: &col(|l| l.train_loss),
        epoch_entropy: &col(|l| l.teacher_entropy),
        epoch_kl: &col(|l| l.kl),
        max_entropy: (cfg.out_dim as f64).ln(),
        knn: &knn,
        knn_k: k,
        lr: &schedules.lr,
        teacher_temp: &schedules.teacher_temp,
        momentum: &schedules.momentum,
    })?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| anyhow::anyhow!("{}: cannot encode: {e}", path.display()))?;
    write_atomically(path, &png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_warnings_name_the_kind() {
        let k = 1024;
        assert!(collapse_warning(6.8, 0.01, k).unwrap().contains("uniform"));
        assert!(collapse_warning(0.05, 0.01, k).unwrap().contains("one-hot"));
        assert!(collapse_warning(3.0, 1.0, k).is_none());
    }

    #[test]
    fn schedules_follow_the_official_ones() {
        let cfg = crate::config::Preset::Small.config();
        let s = Schedules::new(&cfg, 10);
        assert_eq!(s.lr.len(), cfg.epochs * 10);
        assert_eq!(s.teacher_temp.len(), cfg.epochs * 10);
        let first = s.at(0, &cfg);
        assert_eq!(first.lr, 0.0); // linear warm-up from 0
        assert_eq!(first.momentum, cfg.momentum_teacher);
        assert!(first.freeze_last_layer == (cfg.freeze_last_layer > 0));
        assert_eq!(s.at(10 * cfg.epochs - 1, &cfg).freeze_last_layer, false);
    }
}
