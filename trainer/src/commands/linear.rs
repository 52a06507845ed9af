//! `dino linear`: the official linear probe (eval_linear.py) on a frozen backbone.
//!
//! Features: the CLS tokens of the last `n_last_blocks` blocks (4 for ViT-S), concatenated
//! (+ the mean patch token of the last block with `--avgpool_patchtokens`). Classifier:
//! Linear(dim, classes), weight N(0, 0.01), bias 0; SGD momentum 0.9, no weight decay,
//! lr = `--lr` * batch / 256, cosine annealing per epoch to 0; cross-entropy.
//! Training pictures get RandomResizedCrop + horizontal flip as official; so that a probe takes
//! minutes, the backbone runs once per picture and view: `--cache_views` augmented views per
//! training picture are computed up front and each epoch draws one of them per picture
//! (official: a fresh view every epoch). Validation: resize 256/224 + center crop, as official.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use dino_shared::inference::{batch_tensor, max_batch};
use dino_shared::preprocess::{self, ModelInput};
use dino_shared::VisionTransformer;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use super::{positive, positive_f64, ModelArgs, SplitArgs};
use crate::augment::pil::{hflip, resized_crop};
use crate::augment::random_resized_crop_box;
use crate::data::Dataset;
use crate::device::{self, DeviceChoice};
use crate::loader::mix;

#[derive(clap::Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct LinearArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub splits: SplitArgs,
    /// Concatenate the CLS tokens of this many last blocks (official: 4 for ViT-S, 1 for ViT-B).
    #[arg(long, default_value_t = 4)]
    pub n_last_blocks: usize,
    /// Also concatenate the mean patch token of the last block (official: on for ViT-B).
    #[arg(long)]
    pub avgpool_patchtokens: bool,
    /// Passes over the training pictures.
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    /// Base learning rate of SGD, scaled by batch / 256 (official 0.001).
    #[arg(long, default_value_t = 0.001)]
    pub lr: f64,
    /// Pictures per batch.
    #[arg(long, default_value_t = 128)]
    pub batch_size_per_gpu: usize,
    /// Augmented views per training picture computed once (see the module docs).
    #[arg(long, default_value_t = 4)]
    pub cache_views: usize,
    /// Crop side in pixels (default: the size the model was trained at).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Seed of the views, the classifier's initialisation and the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

/// The probe's input features of a batch: [B, dim * n (+ dim)].
pub fn probe_features(model: &VisionTransformer, x: Tensor<4>, n_last_blocks: usize, avgpool: bool) -> Tensor<2> {
    let layers = model.intermediate_layers(x, n_last_blocks);
    let [b, n1, d] = layers[0].dims();
    let mut parts: Vec<Tensor<2>> = layers.iter().map(|t| t.clone().narrow(1, 0, 1).reshape([b, d])).collect();
    if avgpool {
        let last = layers.last().unwrap().clone();
        parts.push(last.narrow(1, 1, n1 - 1).mean_dim(1).reshape([b, d]));
    }
    Tensor::cat(parts, 1)
}

fn features_of(
    model: &VisionTransformer,
    inputs: Vec<ModelInput>,
    args: &LinearArgs,
    device: &Device,
    out: &mut Vec<f32>,
) {
    let refs: Vec<&ModelInput> = inputs.iter().collect();
    let f = probe_features(model, batch_tensor(&refs, device), args.n_last_blocks, args.avgpool_patchtokens);
    out.extend(f.into_data().convert::<f32>().try_into_vec::<f32>().unwrap());
}

/// Cached features: (features [n, dim], labels, pictures skipped). Unreadable files are
/// skipped and counted, and in the evaluation view (`view` None) the other pictures it cannot
/// use too (`knn::SKIP_REASONS`); the training views resize any picture, as RandomResizedCrop
/// does.
///
/// # Errors
/// `size` itself cannot be used (`PreprocessError::is_size_flag_error`): one line naming the
/// file and the flag.
fn extract(
    model: &VisionTransformer,
    data: &Dataset,
    size: usize,
    view: Option<usize>,
    args: &LinearArgs,
    device: &Device,
) -> anyhow::Result<(Vec<f32>, Vec<usize>, usize)> {
    let patch = model.config().patch_size;
    let mut feats = Vec::new();
    let mut labels = Vec::new();
    let mut batch = Vec::new();
    let mut skipped = 0;
    // Batches within the memory bound at this size (`inference::max_batch`): same features.
    let batch_size = args.batch_size_per_gpu.clamp(1, max_batch(model.config(), size, size));
    for i in 0..data.len() {
        let Ok(img) = data.load(i) else {
            skipped += 1;
            continue;
        };
        let input = match view {
            // Train view: RandomResizedCrop(size) + flip, seeded by (seed, view, index).
            Some(v) => {
                let mut rng = StdRng::seed_from_u64(mix(args.seed, v as u64, i as u64));
                let bx = random_resized_crop_box(img.width(), img.height(), (0.08, 1.0), &mut rng);
                let mut crop = resized_crop(&img, bx, size as u32);
                if rng.random_bool(0.5) {
                    hflip(&mut crop);
                }
                ModelInput { data: preprocess::normalize(&crop), height: size, width: size, image: crop }
            }
            None => match crate::knn::evaluation_input(img, size, patch) {
                Ok(Ok(x)) => x,
                Ok(Err(_)) => {
                    skipped += 1;
                    continue;
                }
                Err(e) => anyhow::bail!("{}: {}", data.describe(i), e.message_for_flag("--image_size")),
            },
        };
        batch.push(input);
        labels.push(data.label(i));
        if batch.len() >= batch_size {
            features_of(model, std::mem::take(&mut batch), args, device, &mut feats);
        }
    }
    if !batch.is_empty() {
        features_of(model, batch, args, device, &mut feats);
    }
    Ok((feats, labels, skipped))
}

/// Train the linear classifier on cached features; returns top-1 (%) on the validation set.
#[allow(clippy::too_many_arguments)]
pub fn train_probe(
    train_views: &[Vec<f32>],
    train_labels: &[usize],
    val: &[f32],
    val_labels: &[usize],
    dim: usize,
    classes: usize,
    args: &LinearArgs,
    device: &Device,
) -> f64 {
    let ad = device.clone().autodiff();
    ad.seed(args.seed);
    let mut w: Tensor<2> = Tensor::random([dim, classes], burn::tensor::Distribution::Normal(0.0, 0.01), &ad).require_grad();
    let mut b: Tensor<1> = Tensor::zeros([classes], &ad).require_grad();
    let (mut vw, mut vb): (Option<Tensor<2>>, Option<Tensor<1>>) = (None, None);
    let n = train_labels.len();
    let bs = args.batch_size_per_gpu;
    let base_lr = args.lr * bs as f64 / 256.0;
    let mut rng = StdRng::seed_from_u64(mix(args.seed, 17, 0));
    for epoch in 0..args.epochs {
        // CosineAnnealingLR(T_max = epochs, eta_min = 0), stepped per epoch.
        let lr = base_lr * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / args.epochs as f64).cos());
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        for chunk in order.chunks(bs) {
            let mut x = Vec::with_capacity(chunk.len() * dim);
            for &i in chunk {
                let v = rng.random_range(0..train_views.len());
                x.extend_from_slice(&train_views[v][i * dim..(i + 1) * dim]);
            }
            let y: Vec<i64> = chunk.iter().map(|&i| train_labels[i] as i64).collect();
            let x: Tensor<2> = Tensor::from_data(TensorData::new(x, [chunk.len(), dim]), &ad);
            let y: Tensor<1, Int> = Tensor::from_data(TensorData::new(y, [chunk.len()]), &ad);
            let logits = x.matmul(w.clone()) + b.clone().unsqueeze_dim(0);
            let logp = log_softmax(logits, 1);
            let loss = logp.gather(1, y.unsqueeze_dim(1)).mean().neg();
            let grads = loss.backward();
            let gw = w.grad(&grads).unwrap();
            let gb = b.grad(&grads).unwrap();
            // torch SGD, momentum 0.9, dampening 0: buf = 0.9 buf + g; p -= lr buf.
            let bw = vw.take().map(|v| v.mul_scalar(0.9) + gw.clone()).unwrap_or(gw);
            let bb = vb.take().map(|v| v.mul_scalar(0.9) + gb.clone()).unwrap_or(gb);
            w = Tensor::from_inner(w.inner() - bw.clone().mul_scalar(lr)).require_grad();
            b = Tensor::from_inner(b.inner() - bb.clone().mul_scalar(lr)).require_grad();
            (vw, vb) = (Some(bw), Some(bb));
        }
    }
    let nv = val_labels.len();
    let x: Tensor<2> = Tensor::from_data(TensorData::new(val.to_vec(), [nv, dim]), device);
    let logits = x.matmul(w.inner()) + b.inner().unsqueeze_dim(0);
    let pred = logits.argmax(1).into_data().convert::<i64>().try_into_vec::<i64>().unwrap();
    let correct = pred.iter().zip(val_labels).filter(|(p, l)| **p as usize == **l).count();
    100.0 * correct as f64 / nv as f64
}

pub fn run(args: &LinearArgs) -> anyhow::Result<f64> {
    positive("--epochs", args.epochs)?;
    positive("--batch_size_per_gpu", args.batch_size_per_gpu)?;
    positive("--cache_views", args.cache_views)?;
    positive_f64("--lr", args.lr)?;
    let (train, val) = args.splits.open()?;
    let device = device::select(args.device);
    let model = args.model.backbone(&device)?;
    let depth = model.config().depth;
    anyhow::ensure!(
        (1..=depth).contains(&args.n_last_blocks),
        "--n_last_blocks must be between 1 and the model's depth {depth}, got {}",
        args.n_last_blocks
    );
    let size = args.model.eval_size(args.image_size, &model)?;
    let dim = model.config().embed_dim * (args.n_last_blocks + args.avgpool_patchtokens as usize);
    eprintln!("linear probe: {} train x {} views / {} val pictures, {dim} features", train.len(), args.cache_views, val.len());
    // Both splits checked before any extraction (the training views resize any picture that
    // decodes, as RandomResizedCrop does; the val split is resized for evaluation).
    train.ensure_readable(&"the train split")?;
    crate::knn::ensure_usable(&val, "val", size, "--image_size", model.config().patch_size)?;
    let mut views = Vec::new();
    let mut train_labels = Vec::new();
    let mut skipped = 0;
    for v in 0..args.cache_views.max(1) {
        let (f, l, s) = extract(&model, &train, size, Some(v), args, &device)?;
        views.push(f);
        train_labels = l;
        // Every view skips the same unreadable files.
        skipped = s;
    }
    let (vf, vl, vs) = extract(&model, &val, size, None, args, &device)?;
    if skipped + vs > 0 {
        eprintln!("warning: skipped {} picture(s): {}", skipped + vs, crate::knn::SKIP_REASONS);
    }
    anyhow::ensure!(!train_labels.is_empty() && !vl.is_empty(), "no readable images for the linear probe");
    let classes = train.num_classes().max(val.num_classes());
    let top1 = train_probe(&views, &train_labels, &vf, &vl, dim, classes, args, &device);
    println!("Linear probe: Top1: {top1:.2} ({} epochs, {} views)", args.epochs, args.cache_views);
    Ok(top1)
}
