//! Reading and writing weight files.
//!
//! Read: released backbone-only `.pth` files (`dino_deitsmall16_pretrain.pth`, DINOv2's
//! `dinov2_vits14_reg4_pretrain.pth`), full training checkpoints (`teacher` / `student`, keys
//! with `module.` / `backbone.` / `head.` prefixes), timm-layout and HF-transformers-layout
//! files (see [`crate::layouts`]), and our own exported safetensors (architecture in the
//! metadata).
//! Write: safetensors in the timm / official key layout (backbone keys bare, DINO head under
//! `head.`), f32 or f16, with the architecture in the metadata.

use std::collections::HashMap;

use burn::tensor::Device;
use safetensors::{Dtype, SafeTensors};

use crate::config::{ConfigError, FfnLayer, HeadConfig, PosInterpolation, VitConfig};
use crate::layouts;
use crate::head::DinoHead;
use crate::state_dict::{load_state_dict, to_state_dict, HostTensor, LoadMismatch, StateDict};
use crate::vit::VisionTransformer;

/// A problem with one weights file: `Display` gives one line naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {kind}")]
pub struct WeightsError {
    /// The path, or the name of a dropped file.
    pub file: String,
    /// In the message already (not a `#[source]`, so error chains do not print it twice).
    pub kind: WeightsErrorKind,
}

/// What is wrong with a weights file.
#[derive(Debug, thiserror::Error)]
pub enum WeightsErrorKind {
    #[error("the file is empty")]
    Empty,
    #[error("not a weights file (expected safetensors, or a PyTorch .pth natively)")]
    NotWeights,
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// The file's structure: a malformed safetensors or pickle, a missing model in a training
    /// checkpoint, bad metadata JSON, tensors no architecture fits.
    #[error("{0}")]
    Format(String),
    /// `dino export` metadata that does not describe the tensors the file holds.
    #[error("the '{part}' metadata {metadata} does not match the tensors {tensors}")]
    MetadataMismatch { part: &'static str, metadata: String, tensors: String },
    /// An architecture that cannot be (heads that do not divide the width, ...).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("unknown --arch {0} (vit_tiny, vit_small or vit_base)")]
    UnknownArch(String),
    /// The tensors do not fill the model: missing, unexpected or mis-shaped keys.
    #[error("weights do not fit {model} ({detail})")]
    DoNotFit { model: String, detail: LoadMismatch },
}

impl WeightsError {
    pub fn new(file: impl Into<String>, kind: impl Into<WeightsErrorKind>) -> Self {
        Self { file: file.into(), kind: kind.into() }
    }
}

impl From<String> for WeightsErrorKind {
    fn from(message: String) -> Self {
        WeightsErrorKind::Format(message)
    }
}

/// The weights of one model as read from a file, split into backbone and DINO head.
#[derive(Debug, Clone, Default)]
pub struct WeightsFile {
    /// Name used in error messages (the path, or the name of a dropped file).
    pub name: String,
    pub backbone: StateDict,
    pub head: StateDict,
    /// Architecture recorded by `dino export` (absent in official and timm files).
    pub vit: Option<VitConfig>,
    pub head_config: Option<HeadConfig>,
}

/// How to pick the architecture when the file does not say: anything left `None` is inferred
/// from tensor shapes.
#[derive(Debug, Clone, Default)]
pub struct ArchSpec {
    /// `vit_tiny`, `vit_small` or `vit_base`.
    pub arch: Option<String>,
    pub patch_size: Option<usize>,
    pub num_heads: Option<usize>,
}

/// Precision of exported tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportDType {
    F32,
    F16,
}

const METADATA_FORMAT: &str = "dino-rs";

fn is_safetensors(bytes: &[u8]) -> bool {
    if bytes.len() < 10 {
        return false;
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    n > 0 && n < bytes.len() as u64 && bytes[8] == b'{'
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let chunks = |n: usize| bytes.chunks_exact(n);
    Some(match dtype {
        Dtype::F32 => chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        Dtype::F16 => chunks(2).map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f32()).collect(),
        Dtype::BF16 => chunks(2).map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32()).collect(),
        Dtype::F64 => chunks(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
        _ => return None,
    })
}

/// All tensors and the metadata of a safetensors buffer.
pub fn parse_safetensors(bytes: &[u8]) -> Result<(StateDict, HashMap<String, String>), String> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| format!("not a valid safetensors file ({e})"))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| format!("not a valid safetensors file ({e})"))?;
    let mut out = StateDict::new();
    for (name, view) in st.iter() {
        use Dtype::*;
        // Integer and boolean buffers (HF's `position_ids`, step counters) are not model
        // weights: skipped, as in `.pth` files.
        if matches!(view.dtype(), BOOL | U8 | I8 | U16 | I16 | U32 | I32 | U64 | I64) {
            continue;
        }
        let data = to_f32(view.dtype(), view.data())
            .ok_or_else(|| format!("tensor {name} has dtype {:?}; expected a float type", view.dtype()))?;
        out.insert(name.to_string(), HostTensor::checked(view.shape().to_vec(), data).map_err(|e| format!("tensor {name}: {e}"))?);
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// Keys of a full training checkpoint or a plain state dict, reduced to one model: pick
/// `checkpoint_key` (`teacher` / `student`) when the file has such sections, drop `module.`
/// (DistributedDataParallel), and split `backbone.` / `head.`.
pub fn select_model_keys(names: &[String], checkpoint_key: &str) -> Result<Vec<(String, String)>, String> {
    let sections: Vec<&str> = ["teacher", "student"]
        .into_iter()
        .filter(|s| names.iter().any(|n| n.starts_with(&format!("{s}."))))
        .collect();
    let prefix = format!("{checkpoint_key}.");
    let selected: Vec<(String, &str)> = if names.iter().any(|n| n.starts_with(&prefix)) {
        names.iter().filter_map(|n| n.strip_prefix(&prefix).map(|k| (n.clone(), k))).collect()
    } else if !sections.is_empty() {
        return Err(format!(
            "no '{checkpoint_key}' weights in this checkpoint (it has: {}); choose one with --checkpoint_key",
            sections.join(", ")
        ));
    } else {
        names.iter().map(|n| (n.clone(), n.as_str())).collect()
    };
    Ok(selected
        .into_iter()
        .map(|(orig, k)| {
            let k = k.strip_prefix("module.").unwrap_or(k);
            (orig, k.to_string())
        })
        .collect())
}

/// Weights with NaN or infinite values give NaN maps and features silently: refused, naming
/// the first such tensor.
fn check_finite(sd: &StateDict) -> Result<(), String> {
    match sd.iter().find(|(_, t)| t.data.iter().any(|x| !x.is_finite())) {
        Some((name, t)) => {
            let bad = t.data.iter().filter(|x| !x.is_finite()).count();
            Err(format!("tensor {name} holds {bad} NaN or infinite value(s)"))
        }
        None => Ok(()),
    }
}

/// Split official names into the backbone and the DINO head.
fn split_backbone_head(all: StateDict) -> (StateDict, StateDict) {
    let has_backbone_prefix = all.keys().any(|k| k.starts_with("backbone."));
    let mut backbone = StateDict::new();
    let mut head = StateDict::new();
    for (k, v) in all {
        let is_dino_head = k.starts_with("head.mlp.") || k.starts_with("head.last_layer.");
        if is_dino_head {
            head.insert(k["head.".len()..].to_string(), v);
        } else if has_backbone_prefix {
            // Anything that is neither backbone. nor head. is kept and reported as unexpected.
            backbone.insert(k.strip_prefix("backbone.").map(str::to_string).unwrap_or(k), v);
        } else {
            backbone.insert(k, v);
        }
    }
    (backbone, head)
}

impl WeightsFile {
    /// From the bytes of a safetensors file (the web page's path; also used natively).
    pub fn from_safetensors_bytes(name: &str, bytes: &[u8], checkpoint_key: &str) -> Result<Self, WeightsError> {
        let err = |m: String| WeightsError::new(name, m);
        if !is_safetensors(bytes) {
            let kind = if bytes.is_empty() { WeightsErrorKind::Empty } else { WeightsErrorKind::NotWeights };
            return Err(WeightsError::new(name, kind));
        }
        let (all, meta) = parse_safetensors(bytes).map_err(err)?;
        let names: Vec<String> = all.keys().cloned().collect();
        let keys = select_model_keys(&names, checkpoint_key).map_err(err)?;
        let mut selected = StateDict::new();
        let mut all = all;
        for (orig, k) in keys {
            if let Some(t) = all.remove(&orig) {
                selected.insert(k, t);
            }
        }
        let (backbone, head) = split_backbone_head(selected);
        let (backbone, _) = layouts::to_official(backbone).map_err(err)?;
        check_finite(&backbone).and_then(|_| check_finite(&head)).map_err(err)?;
        let vit = meta.get("vit").map(|s| serde_json::from_str(s)).transpose().map_err(|e| err(format!("bad 'vit' metadata: {e}")))?;
        let head_config =
            meta.get("head").map(|s| serde_json::from_str(s)).transpose().map_err(|e| err(format!("bad 'head' metadata: {e}")))?;
        Ok(Self { name: name.into(), backbone, head, vit, head_config })
    }

    /// Read a `.pth` checkpoint or a safetensors file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(path: &std::path::Path, checkpoint_key: &str) -> Result<Self, WeightsError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| WeightsError::new(&name, e))?;
        if bytes.is_empty() {
            return Err(WeightsError::new(&name, WeightsErrorKind::Empty));
        }
        if is_safetensors(&bytes) {
            return Self::from_safetensors_bytes(&name, &bytes, checkpoint_key);
        }
        drop(bytes);
        let backbone_and_head = read_pth(path, checkpoint_key).map_err(|m| WeightsError::new(&name, m))?;
        let (backbone, head) = split_backbone_head(backbone_and_head);
        let (backbone, _) = layouts::to_official(backbone).map_err(|m| WeightsError::new(&name, m))?;
        check_finite(&backbone).and_then(|_| check_finite(&head)).map_err(|m| WeightsError::new(&name, m))?;
        Ok(Self { name, backbone, head, vit: None, head_config: None })
    }

    /// The architecture: from the file's metadata, else from `spec` and the tensor shapes;
    /// always validated ([`VitConfig::validate`]).
    pub fn vit_config(&self, spec: &ArchSpec) -> Result<VitConfig, WeightsError> {
        let cfg = self.unchecked_vit_config(spec)?;
        cfg.validate().map_err(|e| WeightsError::new(&self.name, e))?;
        if let Some(p) = spec.patch_size.filter(|&p| p != cfg.patch_size) {
            let found = format!("--patch_size {p} does not match the file's patches of {} px", cfg.patch_size);
            return Err(WeightsError::new(&self.name, found));
        }
        Ok(cfg)
    }

    fn unchecked_vit_config(&self, spec: &ArchSpec) -> Result<VitConfig, WeightsError> {
        let err = |m: String| WeightsError::new(&self.name, m);
        if let (Some(cfg), None) = (&self.vit, &spec.arch) {
            // The metadata must describe the tensors the file holds: a model is only built at
            // the size the file can fill (absurd metadata never reaches an allocation).
            let found = infer_vit_config(&self.backbone, Some(cfg.num_heads)).map_err(err)?;
            let shape = |c: &VitConfig| {
                (c.in_chans, c.patch_size, c.embed_dim, c.depth, c.img_size, c.mlp_hidden(), c.num_register_tokens, c.layer_scale, c.ffn_layer)
            };
            if shape(&found) != shape(cfg) {
                return Err(WeightsError::new(
                    &self.name,
                    WeightsErrorKind::MetadataMismatch {
                        part: "vit",
                        metadata: format!(
                            "(channels, patch, dim, depth, image size, MLP width, registers, LayerScale, FFN = {:?})",
                            shape(cfg)
                        ),
                        tensors: format!("({:?})", shape(&found)),
                    },
                ));
            }
            let mut cfg = cfg.clone();
            if let Some(h) = spec.num_heads {
                cfg.num_heads = h;
            }
            return Ok(cfg);
        }
        let inferred = infer_vit_config(&self.backbone, spec.num_heads.or(self.vit.as_ref().map(|c| c.num_heads)));
        match &spec.arch {
            Some(arch) => {
                let patch = match (spec.patch_size, &inferred) {
                    (Some(p), _) => p,
                    (None, Ok(c)) => c.patch_size,
                    (None, Err(_)) => 16,
                };
                let mut cfg = VitConfig::from_arch(arch, patch)
                    .ok_or_else(|| WeightsError::new(&self.name, WeightsErrorKind::UnknownArch(arch.clone())))?;
                if let Ok(found) = &inferred {
                    // The position embedding's grid is whatever the file holds (224/p for the
                    // released models); any image size is served by interpolation. The
                    // DINOv2 parts (registers, LayerScale, SwiGLU) are the file's too.
                    if found.embed_dim == cfg.embed_dim && found.patch_size == cfg.patch_size {
                        cfg.img_size = found.img_size;
                    }
                    cfg.num_register_tokens = found.num_register_tokens;
                    cfg.layer_scale = found.layer_scale;
                    cfg.pos_interpolation = found.pos_interpolation;
                    if found.ffn_layer != cfg.ffn_layer {
                        (cfg.ffn_layer, cfg.mlp_ratio) = (found.ffn_layer, found.mlp_ratio);
                    }
                }
                Ok(cfg)
            }
            None => inferred.map_err(err),
        }
    }

    pub fn head_config(&self, norm_last_layer: bool) -> Result<Option<HeadConfig>, WeightsError> {
        if self.head.is_empty() {
            return Ok(None);
        }
        let found = infer_head_config(&self.head, norm_last_layer).map_err(|m| WeightsError::new(&self.name, m))?;
        let cfg = match &self.head_config {
            Some(cfg) => {
                let shape = |c: &HeadConfig| (c.in_dim, c.out_dim, if c.nlayers > 1 { c.hidden_dim } else { 0 }, c.bottleneck_dim, c.nlayers);
                if shape(cfg) != shape(&found) {
                    return Err(WeightsError::new(
                        &self.name,
                        WeightsErrorKind::MetadataMismatch {
                            part: "head",
                            metadata: format!("{:?}", shape(cfg)),
                            tensors: format!("{:?}", shape(&found)),
                        },
                    ));
                }
                cfg.clone()
            }
            None => found,
        };
        cfg.validate().map_err(|e| WeightsError::new(&self.name, e))?;
        Ok(Some(cfg))
    }

    /// A backbone holding these weights (errors list missing / unexpected / mis-shaped keys).
    pub fn backbone_model(&self, spec: &ArchSpec, device: &Device) -> Result<VisionTransformer, WeightsError> {
        let cfg = self.vit_config(spec)?;
        let model = VisionTransformer::new(&cfg, device);
        load_state_dict(model, &self.backbone)
            .map_err(|detail| WeightsError::new(&self.name, WeightsErrorKind::DoNotFit { model: cfg.model_name(), detail }))
    }

    /// The DINO head, when the file has one.
    pub fn head_model(&self, device: &Device) -> Result<Option<DinoHead>, WeightsError> {
        let Some(cfg) = self.head_config(false)? else { return Ok(None) };
        let head = DinoHead::new(&cfg, device);
        load_state_dict(head, &self.head)
            .map(Some)
            .map_err(|detail| WeightsError::new(&self.name, WeightsErrorKind::DoNotFit { model: "the DINO head".into(), detail }))
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn read_pth(path: &std::path::Path, checkpoint_key: &str) -> Result<StateDict, String> {
    use burn::store::pytorch_reader::{DType, PytorchReader};
    let reader = PytorchReader::new(path)
        .map_err(|e| format!("not a weights file: neither a PyTorch checkpoint nor safetensors ({e})"))?;
    let mut tensors = reader.into_tensors();
    let names: Vec<String> = tensors.keys().cloned().collect();
    if names.is_empty() {
        return Err("the checkpoint holds no tensors".into());
    }
    let mut out = StateDict::new();
    for (orig, key) in select_model_keys(&names, checkpoint_key)? {
        let Some(t) = tensors.remove(&orig) else { continue };
        let bytes = t.read().map_err(|e| format!("cannot read tensor {orig}: {e}"))?;
        let data: Vec<f32> = match t.dtype() {
            DType::F32 => bytes.chunks_exact(4).map(|b| f32::from_ne_bytes(b.try_into().unwrap())).collect(),
            DType::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_ne_bytes(b.try_into().unwrap()).to_f32()).collect(),
            DType::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_ne_bytes(b.try_into().unwrap()).to_f32()).collect(),
            DType::F64 => bytes.chunks_exact(8).map(|b| f64::from_ne_bytes(b.try_into().unwrap()) as f32).collect(),
            // Integer buffers (e.g. optimizer steps) are not model weights.
            _ => continue,
        };
        out.insert(key, HostTensor::checked(t.shape().to_vec(), data).map_err(|e| format!("tensor {orig}: {e}"))?);
    }
    Ok(out)
}

/// The shape of `key`, which must have `N` dimensions.
fn dims<const N: usize>(sd: &StateDict, key: &str) -> Result<[usize; N], String> {
    let shape = shape_of(sd, key)?;
    shape.try_into().map_err(|_| format!("{key} has shape {shape:?}; expected {N} dimensions"))
}

fn shape_of<'a>(sd: &'a StateDict, key: &str) -> Result<&'a [usize], String> {
    sd.get(key).map(|t| t.shape.as_slice()).ok_or_else(|| {
        let some: Vec<&str> = sd.keys().take(5).map(|s| s.as_str()).collect();
        format!("no '{key}' tensor: not a ViT backbone (first keys: {})", some.join(", "))
    })
}

/// Architecture from tensor shapes (official layout, see [`layouts::to_official`]). The head
/// count is not in any shape: it comes from `num_heads`, or the official head width of 64
/// (vit_tiny 3, vit_small 6, vit_base 12; DINOv2 ViT-L 16, ViT-g 24). DINOv2 parts: registers
/// from `register_tokens` [1, R, dim], LayerScale from `blocks.0.ls1.gamma`, SwiGLU from
/// `blocks.0.mlp.w12.weight` [2H, dim].
pub fn infer_vit_config(sd: &StateDict, num_heads: Option<usize>) -> Result<VitConfig, String> {
    let w = shape_of(sd, "patch_embed.proj.weight")?;
    if w.len() != 4 || w[2] != w[3] || w[1] != 3 {
        return Err(format!("patch_embed.proj.weight has shape {w:?}; expected [dim, 3, p, p] (RGB input)"));
    }
    let (embed_dim, in_chans, patch_size) = (w[0], w[1], w[2]);
    let pos = shape_of(sd, "pos_embed")?;
    let n = pos.get(1).copied().unwrap_or(0).saturating_sub(1);
    let grid = (n as f64).sqrt().round() as usize;
    if pos.len() != 3 || grid * grid != n {
        return Err(format!("pos_embed has shape {pos:?}; expected [1, 1 + g*g, dim]"));
    }
    let depth = sd
        .keys()
        .filter_map(|k| k.strip_prefix("blocks.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map(|d| d + 1)
        .ok_or("no blocks.* tensors: not a ViT backbone")?;
    let (ffn_layer, mlp_ratio) = if sd.contains_key("blocks.0.mlp.w12.weight") {
        let [two_hidden, _] = dims::<2>(sd, "blocks.0.mlp.w12.weight")?;
        (FfnLayer::SwiGluFused, swiglu_mlp_ratio(two_hidden / 2, embed_dim)?)
    } else {
        let [hidden, _] = dims::<2>(sd, "blocks.0.mlp.fc1.weight")?;
        (FfnLayer::Mlp, hidden as f64 / embed_dim as f64)
    };
    let num_register_tokens = match sd.get("register_tokens") {
        Some(_) => dims::<3>(sd, "register_tokens")?[1],
        None => 0,
    };
    let num_heads = match num_heads {
        Some(h) => h,
        None if embed_dim % 64 == 0 => embed_dim / 64,
        None => return Err(format!("cannot infer the head count of a {embed_dim}-dim model: give --arch or the head count")),
    };
    Ok(VitConfig {
        img_size: grid * patch_size,
        patch_size,
        in_chans,
        embed_dim,
        depth,
        num_heads,
        mlp_ratio,
        drop_path_rate: 0.0,
        num_register_tokens,
        layer_scale: sd.contains_key("blocks.0.ls1.gamma"),
        ffn_layer,
        // The official hub's convention: the models with registers resize with antialiasing.
        pos_interpolation: if num_register_tokens > 0 { PosInterpolation::Antialias } else { PosInterpolation::Offset },
    })
}

/// The MLP ratio whose official SwiGLU width (`VitConfig::mlp_hidden`) is `hidden`: 4 for
/// every released model, else the ratio the width was made from.
fn swiglu_mlp_ratio(hidden: usize, embed_dim: usize) -> Result<f64, String> {
    let fits = |ratio: f64| {
        let c = VitConfig { mlp_ratio: ratio, ffn_layer: FfnLayer::SwiGluFused, ..VitConfig::custom(embed_dim, 1, embed_dim, 1, 1) };
        c.mlp_hidden() == hidden
    };
    let candidates = [4.0, hidden as f64 * 1.5 / embed_dim as f64, (hidden as f64 * 1.5).ceil() / embed_dim as f64];
    candidates
        .into_iter()
        .find(|&r| r.is_finite() && r > 0.0 && fits(r))
        .ok_or_else(|| format!("a SwiGLU width of {hidden} fits no MLP ratio of a {embed_dim}-dim model"))
}

/// DINO head shape from its tensors (`mlp.{0,2,4}`, `last_layer.weight_v`).
pub fn infer_head_config(sd: &StateDict, norm_last_layer: bool) -> Result<HeadConfig, String> {
    let v = dims::<2>(sd, "last_layer.weight_v")?;
    let mut layers: Vec<usize> = sd
        .keys()
        .filter_map(|k| k.strip_prefix("mlp.")?.split('.').next()?.parse::<usize>().ok())
        .collect();
    layers.sort();
    layers.dedup();
    let (in_dim, hidden_dim, nlayers) = if layers.is_empty() {
        // nlayers = 1: `mlp` is a bare Linear.
        (dims::<2>(sd, "mlp.weight")?[1], 0, 1)
    } else {
        let first = dims::<2>(sd, "mlp.0.weight")?;
        (first[1], first[0], layers.len())
    };
    Ok(HeadConfig { in_dim, out_dim: v[0], hidden_dim, bottleneck_dim: v[1], nlayers, norm_last_layer })
}

/// Serialise a backbone (and optionally its DINO head) as safetensors in the timm / official
/// layout; the architecture goes into the metadata so the file is self-describing.
pub fn export_safetensors(vit: &VisionTransformer, head: Option<&DinoHead>, dtype: ExportDType) -> Vec<u8> {
    let mut all: StateDict = to_state_dict(vit);
    if let Some(head) = head {
        for (k, v) in to_state_dict(head) {
            all.insert(format!("head.{k}"), v);
        }
    }
    let mut meta = HashMap::new();
    meta.insert("vit".to_string(), serde_json::to_string(vit.config()).unwrap());
    if let Some(head) = head {
        meta.insert("head".to_string(), serde_json::to_string(head.config()).unwrap());
    }
    serialize_safetensors(&all, dtype, meta)
}

/// Any state dict as safetensors bytes, with string metadata (plus `format: dino-rs`).
pub fn serialize_safetensors(tensors: &StateDict, dtype: ExportDType, mut meta: HashMap<String, String>) -> Vec<u8> {
    let bytes: Vec<(&String, &HostTensor, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| {
            let b = match dtype {
                ExportDType::F32 => t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ExportDType::F16 => t.data.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
            };
            (k, t, b)
        })
        .collect();
    let st_dtype = match dtype {
        ExportDType::F32 => Dtype::F32,
        ExportDType::F16 => Dtype::F16,
    };
    let views = bytes
        .iter()
        .map(|(k, t, b)| (k.as_str(), safetensors::tensor::TensorView::new(st_dtype, t.shape.clone(), b).unwrap()));
    meta.insert("format".to_string(), METADATA_FORMAT.to_string());
    let bytes = safetensors::tensor::serialize(views, Some(meta)).expect("serialising safetensors");
    with_sorted_header(bytes)
}

/// The same safetensors file with its header's keys in sorted order, so that equal contents give
/// equal bytes: the `safetensors` crate writes `__metadata__` from a `HashMap`, in an order that
/// changes from run to run. The header keeps its length (the same keys and values, reordered;
/// compact JSON, padded with spaces to 8 bytes as the crate pads it), so the tensor data and its
/// offsets are untouched. Any surprise (unparsable header, other length) returns the bytes as
/// they were.
fn with_sorted_header(mut bytes: Vec<u8>) -> Vec<u8> {
    let Some(len) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize) else { return bytes };
    let Some(header) = bytes.get(8..8 + len) else { return bytes };
    // serde_json's Map is a BTreeMap here (no `preserve_order`): keys come out sorted, nested
    // maps too.
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(header) else { return bytes };
    let Ok(mut sorted) = serde_json::to_vec(&value) else { return bytes };
    if sorted.len() > len {
        return bytes;
    }
    sorted.resize(len, b' ');
    bytes[8..8 + len].copy_from_slice(&sorted);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_dict::HostTensor;

    /// Equal contents give equal bytes: the metadata map's iteration order (a `HashMap`, random
    /// per instance) does not reach the file, and the file reads back the same.
    #[test]
    fn safetensors_bytes_do_not_depend_on_the_metadata_order() {
        let mut sd = StateDict::new();
        sd.insert("b.weight".into(), HostTensor::new(vec![2, 3], (0..6).map(|i| i as f32 * 0.5).collect()));
        sd.insert("a.bias".into(), HostTensor::new(vec![3], vec![1.0, -2.0, 3.5]));
        let meta = || (0..20).map(|i| (format!("key{i}"), format!("{{\"value\": {i}}}"))).collect::<HashMap<_, _>>();
        let first = serialize_safetensors(&sd, ExportDType::F32, meta());
        for _ in 0..5 {
            assert_eq!(serialize_safetensors(&sd, ExportDType::F32, meta()), first);
        }
        let (back, read_meta) = parse_safetensors(&first).unwrap();
        assert_eq!(read_meta, { let mut m = meta(); m.insert("format".into(), METADATA_FORMAT.into()); m });
        assert_eq!(back.keys().collect::<Vec<_>>(), sd.keys().collect::<Vec<_>>());
        for (k, t) in &sd {
            assert_eq!(back[k].data, t.data, "{k}");
            assert_eq!(back[k].shape, t.shape, "{k}");
        }
    }
}
