//! The official weighted k-NN evaluation (eval_knn.py): L2-normalised CLS features, cosine
//! similarity to every training feature, the k most similar vote for their class with weight
//! exp(similarity / T), T = 0.07. Test features are processed in chunks against all training
//! features on the device, so memory stays bounded at 100k+ images.

use burn::tensor::{Device, Tensor, TensorData};
use dino_shared::inference::{batch_tensor, max_batch};
use dino_shared::preprocess::{self, ModelInput, PreprocessError};
use dino_shared::VisionTransformer;

use crate::data::Dataset;

/// Why the evaluations (k-NN, linear probe, embed) skip a picture, for their warning line.
pub const SKIP_REASONS: &str = "unreadable, smaller than one patch, or too elongated to resize to this size";

/// A decoded picture prepared for the evaluations (k-NN, linear probe) at `image_size`: the
/// input; or `Ok(Err(why))` when this picture cannot be used (skipped and counted:
/// [`SKIP_REASONS`]).
///
/// # Errors
/// `image_size` itself cannot be used (`PreprocessError::is_size_flag_error`): every picture
/// would fail, so the callers stop rather than count skipped files.
pub fn evaluation_input(img: image::RgbImage, image_size: usize, patch: usize) -> Result<Result<ModelInput, PreprocessError>, PreprocessError> {
    match preprocess::for_evaluation(&image::DynamicImage::ImageRgb8(img), image_size, patch) {
        Ok(x) => Ok(Ok(x)),
        Err(e) if e.is_size_flag_error() => Err(e),
        Err(e) => Ok(Err(e)),
    }
}

/// Whether `data` holds a picture the evaluation can use at `image_size` (decoded and
/// preprocessed as [`extract_features`] does, in order, stopping at the first that works).
/// The k-NN and the linear probe check both splits before extracting any feature, so that a
/// split with nothing usable is one line at the start, not after minutes of extraction.
///
/// # Errors
/// No picture can be used: the message names `split` ("train", "val"), the count, the reasons
/// and the first picture's own error; or `image_size` itself cannot be used (naming `size_flag`).
pub fn ensure_usable(data: &Dataset, split: &str, image_size: usize, size_flag: &str, patch: usize) -> anyhow::Result<()> {
    let mut first_error = None;
    for i in 0..data.len() {
        // A decoding error names its file already; a preprocessing error does not.
        let error = match data.load(i) {
            Ok(img) => match evaluation_input(img, image_size, patch) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => format!("{}: {e}", data.describe(i)),
                Err(e) => anyhow::bail!("{}: {}", data.describe(i), e.message_for_flag(size_flag)),
            },
            Err(e) => e.to_string(),
        };
        first_error.get_or_insert(error);
    }
    anyhow::bail!(
        "the {split} split has no picture usable at {size_flag} {image_size} among its {} file(s) ({SKIP_REASONS}); first: {}",
        data.len(),
        first_error.unwrap_or_else(|| "no files".into())
    )
}

/// CLS features ([n, dim], L2-normalised rows) and labels of a dataset. Pictures that cannot be
/// used ([`SKIP_REASONS`]) are skipped; their number is returned.
///
/// # Errors
/// `image_size` itself cannot be used (`PreprocessError::is_size_flag_error`): every picture
/// would fail, so it stops the extraction rather than being counted as skipped files.
///
/// `size_flag` names the option that set `image_size` in messages (`--image_size`, or
/// `--global_crops_size` for the evaluation during training). Batches larger than the memory
/// bound allows at this size are split (`inference::max_batch`): the features do not change.
pub fn extract_features(
    model: &VisionTransformer,
    data: &Dataset,
    image_size: usize,
    size_flag: &str,
    batch_size: usize,
    device: &Device,
) -> anyhow::Result<(Vec<f32>, Vec<usize>, usize)> {
    let patch = model.config().patch_size;
    let mut feats = Vec::new();
    let mut labels = Vec::new();
    let mut skipped = 0;
    let indices: Vec<usize> = (0..data.len()).collect();
    let batch_size = batch_size.clamp(1, max_batch(model.config(), image_size, image_size));
    for chunk in indices.chunks(batch_size) {
        // Decode and preprocess the chunk on two threads while keeping the order.
        let prepared: Vec<Result<Option<ModelInput>, PreprocessError>> = std::thread::scope(|s| {
            let half = chunk.len().div_ceil(2);
            let work = |part: &[usize]| -> Vec<Result<Option<ModelInput>, PreprocessError>> {
                part.iter()
                    .map(|&i| {
                        let Ok(img) = data.load(i) else { return Ok(None) };
                        evaluation_input(img, image_size, patch).map(Result::ok)
                    })
                    .collect()
            };
            let (a, b) = chunk.split_at(half);
            let hb = s.spawn(move || work(b));
            let mut out = work(a);
            match hb.join() {
                Ok(rest) => out.extend(rest),
                Err(panic) => std::panic::resume_unwind(panic),
            }
            out
        });
        let prepared: Vec<Option<ModelInput>> = prepared
            .into_iter()
            .zip(chunk)
            .map(|(x, &i)| x.map_err(|e| anyhow::anyhow!("{}: {}", data.describe(i), e.message_for_flag(size_flag))))
            .collect::<anyhow::Result<_>>()?;
        let mut inputs = Vec::new();
        for (x, &i) in prepared.into_iter().zip(chunk) {
            match x {
                Some(x) => {
                    inputs.push(x);
                    labels.push(data.label(i));
                }
                None => skipped += 1,
            }
        }
        if inputs.is_empty() {
            continue;
        }
        let refs: Vec<&ModelInput> = inputs.iter().collect();
        let f = model.forward(batch_tensor(&refs, device));
        let norm = f.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
        feats.extend((f / norm).into_data().convert::<f32>().try_into_vec::<f32>().unwrap());
    }
    Ok((feats, labels, skipped))
}

/// Top-1 and top-5 accuracy (%) of the weighted k-NN classifier for each k.
#[allow(clippy::too_many_arguments)]
pub fn knn_classifier(
    train: &[f32],
    train_labels: &[usize],
    test: &[f32],
    test_labels: &[usize],
    dim: usize,
    ks: &[usize],
    temperature: f64,
    num_classes: usize,
    device: &Device,
) -> Vec<(usize, f64, f64)> {
    let n_train = train_labels.len();
    let n_test = test_labels.len();
    let kmax = ks.iter().cloned().max().unwrap_or(1).min(n_train);
    let train_t: Tensor<2> = Tensor::from_data(TensorData::new(train.to_vec(), [n_train, dim]), device).transpose();
    let mut correct = vec![(0usize, 0usize); ks.len()];
    let chunk = (4_000_000 / n_train.max(1)).clamp(1, 256);
    for start in (0..n_test).step_by(chunk) {
        let rows = chunk.min(n_test - start);
        let q: Tensor<2> = Tensor::from_data(TensorData::new(test[start * dim..(start + rows) * dim].to_vec(), [rows, dim]), device);
        let sim = q.matmul(train_t.clone()).into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        for r in 0..rows {
            let row = &sim[r * n_train..(r + 1) * n_train];
            let mut idx: Vec<usize> = (0..n_train).collect();
            // The kmax most similar, sorted by decreasing similarity (torch.topk, sorted).
            if kmax < n_train {
                idx.select_nth_unstable_by(kmax - 1, |&a, &b| row[b].total_cmp(&row[a]));
                idx.truncate(kmax);
            }
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let target = test_labels[start + r];
            for (ki, &k) in ks.iter().enumerate() {
                let k = k.min(n_train);
                let mut votes = vec![0f64; num_classes];
                for &j in &idx[..k] {
                    votes[train_labels[j]] += (row[j] as f64 / temperature).exp();
                }
                let mut order: Vec<usize> = (0..num_classes).collect();
                order.sort_by(|&a, &b| votes[b].total_cmp(&votes[a]));
                if order[0] == target {
                    correct[ki].0 += 1;
                }
                // Official eval_knn.py: the top min(5, k) predictions; a class without a vote is
                // no prediction (with k < 5 at most k classes got one).
                if order.iter().take(5.min(k)).any(|&c| c == target && votes[c] > 0.0) {
                    correct[ki].1 += 1;
                }
            }
        }
    }
    ks.iter()
        .zip(correct)
        .map(|(&k, (c1, c5))| (k, 100.0 * c1 as f64 / n_test as f64, 100.0 * c5 as f64 / n_test as f64))
        .collect()
}

/// The official result lines (eval_knn.py), one per k.
pub fn print_results(results: &[(usize, f64, f64)]) {
    for (k, top1, top5) in results {
        println!("{k}-NN classifier result: Top1: {top1:.2}, Top5: {top5:.2}");
    }
}

/// Extract both splits and classify: (k, top-1 %, top-5 %) per k.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &VisionTransformer,
    train: &Dataset,
    val: &Dataset,
    image_size: usize,
    size_flag: &str,
    batch_size: usize,
    ks: &[usize],
    temperature: f64,
    device: &Device,
) -> anyhow::Result<Vec<(usize, f64, f64)>> {
    let patch = model.config().patch_size;
    ensure_usable(train, "train", image_size, size_flag, patch)?;
    ensure_usable(val, "val", image_size, size_flag, patch)?;
    let (tf, tl, ts) = extract_features(model, train, image_size, size_flag, batch_size, device)?;
    let (vf, vl, vs) = extract_features(model, val, image_size, size_flag, batch_size, device)?;
    if ts + vs > 0 {
        eprintln!("warning: skipped {} picture(s) during feature extraction: {SKIP_REASONS}", ts + vs);
    }
    anyhow::ensure!(!tl.is_empty() && !vl.is_empty(), "no readable images for the k-NN evaluation");
    let classes = train.num_classes().max(val.num_classes());
    let dim = model.config().embed_dim;
    Ok(knn_classifier(&tf, &tl, &vf, &vl, dim, ks, temperature, classes, device))
}
