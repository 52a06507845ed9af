//! Training checkpoints: the official checkpoint's structure in one safetensors file, written
//! atomically ([`write_atomically`]) and restored exactly.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use dino_shared::state_dict::{load_state_dict, to_state_dict, HostTensor, StateDict};
use dino_shared::weights::{parse_safetensors, serialize_safetensors, ExportDType};

use crate::config::TrainConfig;
use crate::fsutil::write_atomically;
use crate::model::Dino;
use crate::optim::AdamW;
use crate::scaler::GradScaler;
use crate::train::TrainState;

fn prefixed(out: &mut StateDict, prefix: &str, sd: StateDict) {
    for (k, v) in sd {
        out.insert(format!("{prefix}.{k}"), v);
    }
}

fn section(all: &StateDict, prefix: &str) -> StateDict {
    let p = format!("{prefix}.");
    all.iter().filter_map(|(k, v)| k.strip_prefix(&p).map(|s| (s.to_string(), v.clone()))).collect()
}

/// One safetensors file in the official checkpoint's structure: `student.*`, `teacher.*`
/// (each `backbone.*` + `head.*`), `optimizer.*`, `dino_loss.center`; epoch and config in the
/// metadata. `dino attention` / `dino export` read it directly (teacher by default).
pub fn save_checkpoint(path: &Path, state: &TrainState, config: &TrainConfig) -> anyhow::Result<()> {
    let mut all = StateDict::new();
    prefixed(&mut all, "student", to_state_dict(&state.student));
    prefixed(&mut all, "teacher", to_state_dict(&state.teacher));
    let (opt, steps) = state.optimizer.to_host();
    prefixed(&mut all, "optimizer", opt);
    let center = state.center.clone().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    all.insert("dino_loss.center".into(), HostTensor::new(vec![1, center.len()], center));
    let mut meta = HashMap::new();
    meta.insert("epoch".into(), state.epoch.to_string());
    if let Some(iterations) = state.iterations {
        meta.insert("iterations".into(), iterations.to_string());
    }
    if state.epoch_pictures > 0 {
        meta.insert("epoch_pictures".into(), state.epoch_pictures.to_string());
    }
    meta.insert("args".into(), serde_json::to_string(config)?);
    meta.insert("vit".into(), serde_json::to_string(state.teacher.backbone.config())?);
    meta.insert("head".into(), serde_json::to_string(state.teacher.head.config())?);
    meta.insert("optimizer_steps".into(), serde_json::to_string(&steps)?);
    if let Some(scaler) = &state.scaler {
        // Official checkpoints hold `fp16_scaler` (torch's `GradScaler.state_dict()`).
        meta.insert("fp16_scaler".into(), serde_json::to_string(scaler)?);
    }
    write_atomically(path, &serialize_safetensors(&all, ExportDType::F32, meta))
}

/// Restore a checkpoint written by [`save_checkpoint`] into freshly built modules.
pub fn load_checkpoint(path: &Path, config: &TrainConfig, device: &Device) -> anyhow::Result<TrainState> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    let (all, meta) = parse_safetensors(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let bad = |m: String| anyhow::anyhow!("{}: {m}", path.display());
    let epoch: usize = meta.get("epoch").and_then(|e| e.parse().ok()).ok_or_else(|| bad("no epoch: not a training checkpoint".into()))?;
    let vit = config.vit()?;
    let head = config.head(vit.embed_dim);
    let student = load_state_dict(Dino::new(&vit, &head, &device.clone().autodiff()), &section(&all, "student"))
        .map_err(|m| bad(format!("student does not fit the configuration ({m})")))?;
    let teacher = load_state_dict(Dino::new(&vit, &head, device), &section(&all, "teacher"))
        .map_err(|m| bad(format!("teacher does not fit the configuration ({m})")))?;
    let steps: HashMap<String, u64> = serde_json::from_str(meta.get("optimizer_steps").map(String::as_str).unwrap_or("{}"))?;
    // Optimizer moments live outside the autodiff graph, like the gradients they follow.
    let optimizer = AdamW::from_host(&section(&all, "optimizer"), &steps, device)?;
    let c = all.get("dino_loss.center").ok_or_else(|| bad("no dino_loss.center".into()))?;
    let center = Tensor::from_data(TensorData::new(c.data.clone(), c.shape.clone()), device);
    // `--use_fp16`: the scaler as saved; a fresh one when the checkpoint was written without it.
    let scaler = match (config.use_fp16, meta.get("fp16_scaler")) {
        (false, _) => None,
        (true, None) => Some(GradScaler::default()),
        (true, Some(s)) => {
            let scaler: GradScaler = serde_json::from_str(s).map_err(|e| bad(format!("fp16_scaler: {e}")))?;
            scaler.validate().map_err(|e| bad(format!("fp16_scaler: {e}")))?;
            Some(scaler)
        }
    };
    // Absent from checkpoints written before the count was kept: then epochs x iterations per epoch.
    let iterations = match meta.get("iterations") {
        Some(text) => Some(text.parse().map_err(|_| bad(format!("iterations {text:?} in the metadata is not a count")))?),
        None => None,
    };
    // Absent when the epoch starts from its beginning, and in checkpoints written before it was
    // kept (their `epoch_cut` epochs had moved on: the rest of the cut epoch is not replayed).
    let epoch_pictures = match meta.get("epoch_pictures") {
        Some(text) => text.parse().map_err(|_| bad(format!("epoch_pictures {text:?} in the metadata is not a count")))?,
        None => 0,
    };
    Ok(TrainState { epoch, epoch_pictures, iterations, student, teacher, optimizer, center, scaler })
}
