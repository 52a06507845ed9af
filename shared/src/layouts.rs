//! The key layouts of the backbone files people bring, turned into the one layout our model
//! loads: the official DINO / DINOv2 one (`cls_token`, `pos_embed` [1, 1 + g*g, dim],
//! `register_tokens`, `blocks.N.attn.qkv`, `blocks.N.ls1.gamma`, `blocks.N.mlp.fc1` or
//! `blocks.N.mlp.w12`, `norm`).
//!
//! - Official DINOv2 hub files (`dinov2_vits14_reg4_pretrain.pth`): already that layout, plus a
//!   `mask_token` [1, dim] used only by iBOT's masked training; accepted and dropped.
//! - Official DINOv2 training backbones with `block_chunks` > 0: block N of chunk C is
//!   `blocks.C.N.*` (official `BlockChunk`; N is the global index) -> `blocks.N.*`.
//! - timm's DINOv2-with-registers models (`vit_small_patch14_reg4_dinov2`): `reg_token` is
//!   `register_tokens`, and timm's `checkpoint_filter_fn` folded the CLS position into
//!   `cls_token` and dropped it from `pos_embed` ([1, g*g, dim]). A zero CLS position restores
//!   the official layout with the same numbers (the CLS position is never interpolated).
//! - Hugging Face transformers' `Dinov2Model` / `Dinov2WithRegistersModel`
//!   (`embeddings.*`, `encoder.layer.N.*`, `layernorm.*`; separate query / key / value, which
//!   are stacked into the fused `qkv`; `layer_scale1.lambda1` is `ls1.gamma`; SwiGLU
//!   `weights_in` / `weights_out` are `w12` / `w3`). A `dinov2.` prefix and the `classifier.*`
//!   head of the HF classifier models (`Dinov2ForImageClassification`) are dropped.
//!
//! Two keys of a file that land on the same official name (a chunked and a plain copy of one
//! block, `reg_token` beside `register_tokens`) are an error, never a silent choice.

use crate::state_dict::{HostTensor, StateDict};

/// Which layout a backbone state dict was in (for messages and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Official,
    OfficialChunked,
    Timm,
    HuggingFace,
}

/// `sd` in the official layout, and the layout it came in.
///
/// # Errors
/// An HF file whose query / key / value of a block do not stack (missing or mis-shaped), or a
/// timm position embedding that is not [1, g*g, dim].
pub fn to_official(sd: StateDict) -> Result<(StateDict, Layout), String> {
    let is_hf = sd.keys().any(|k| {
        let k = k.strip_prefix("dinov2.").unwrap_or(k);
        k.starts_with("embeddings.") || k.starts_with("encoder.layer.")
    });
    if is_hf {
        return Ok((from_hugging_face(sd)?, Layout::HuggingFace));
    }
    let mut layout = Layout::Official;
    let mut out = StateDict::new();
    let mut source: std::collections::BTreeMap<String, String> = Default::default();
    for (key, tensor) in sd {
        if key == "mask_token" {
            continue;
        }
        let official = if let Some(rest) = unchunk(&key) {
            layout = Layout::OfficialChunked;
            rest
        } else if key == "reg_token" {
            layout = Layout::Timm;
            "register_tokens".into()
        } else {
            key.clone()
        };
        insert_once(&mut out, &mut source, official, key, tensor)?;
    }
    if let Some(pos) = out.get("pos_embed") {
        let n = pos.shape.get(1).copied().unwrap_or(0);
        let g = (n as f64).sqrt().round() as usize;
        // 1 + g*g is never a square, so a square count means timm's no_embed_class layout.
        if pos.shape.len() == 3 && n > 0 && g * g == n {
            layout = Layout::Timm;
            let dim = pos.shape[2];
            let mut data = vec![0.0; dim];
            data.extend_from_slice(&pos.data);
            out.insert("pos_embed".into(), HostTensor::new(vec![1, n + 1, dim], data));
        }
    }
    Ok((out, layout))
}

/// Insert `tensor` under `official`, refusing a second file key for the same name.
fn insert_once(
    out: &mut StateDict,
    source: &mut std::collections::BTreeMap<String, String>,
    official: String,
    key: String,
    tensor: HostTensor,
) -> Result<(), String> {
    if let Some(first) = source.get(&official) {
        return Err(format!("{first} and {key} are both {official}: the file holds two copies of one tensor"));
    }
    source.insert(official.clone(), key);
    out.insert(official, tensor);
    Ok(())
}

/// `blocks.C.N.rest` (official `BlockChunk`) -> `blocks.N.rest`.
fn unchunk(key: &str) -> Option<String> {
    let rest = key.strip_prefix("blocks.")?;
    let mut parts = rest.splitn(3, '.');
    let (c, n, tail) = (parts.next()?, parts.next()?, parts.next()?);
    (c.parse::<usize>().is_ok() && n.parse::<usize>().is_ok()).then(|| format!("blocks.{n}.{tail}"))
}

/// HF transformers `Dinov2Model` names -> official names (the inverse of transformers'
/// `convert_dinov2_to_hf.py` `create_rename_keys` / `read_in_q_k_v`).
fn from_hugging_face(sd: StateDict) -> Result<StateDict, String> {
    let mut out = StateDict::new();
    let mut source: std::collections::BTreeMap<String, String> = Default::default();
    // Per block: query, key, value (weight, bias) to stack.
    let mut qkv: std::collections::BTreeMap<(String, String), [Option<HostTensor>; 3]> = Default::default();
    for (key, tensor) in sd {
        let k = key.strip_prefix("dinov2.").unwrap_or(&key).to_string();
        if k.starts_with("classifier.") {
            continue; // Dinov2ForImageClassification's linear head: not part of the backbone
        }
        let renamed = if let Some(rest) = k.strip_prefix("embeddings.") {
            match rest {
                "mask_token" => continue,
                "cls_token" | "register_tokens" => rest.to_string(),
                "position_embeddings" => "pos_embed".into(),
                _ => match rest.strip_prefix("patch_embeddings.projection.") {
                    Some(p) => format!("patch_embed.proj.{p}"),
                    None => key.clone(),
                },
            }
        } else if let Some(rest) = k.strip_prefix("encoder.layer.") {
            let (n, tail) = rest.split_once('.').unwrap_or((rest, ""));
            let block = format!("blocks.{n}");
            let part = |p: &str| tail.strip_prefix(p).map(|t| t.to_string());
            if let Some(t) = part("attention.attention.") {
                let (which, param) = t.split_once('.').unwrap_or((&t, ""));
                let i = match which {
                    "query" => Some(0),
                    "key" => Some(1),
                    "value" => Some(2),
                    _ => None,
                };
                if let Some(i) = i {
                    qkv.entry((block, param.to_string())).or_default()[i] = Some(tensor);
                    continue;
                }
                key.clone()
            } else if let Some(t) = part("attention.output.dense.") {
                format!("{block}.attn.proj.{t}")
            } else if let Some(t) = part("layer_scale1.") {
                if t == "lambda1" { format!("{block}.ls1.gamma") } else { key.clone() }
            } else if let Some(t) = part("layer_scale2.") {
                if t == "lambda1" { format!("{block}.ls2.gamma") } else { key.clone() }
            } else if let Some(t) = part("mlp.weights_in.") {
                format!("{block}.mlp.w12.{t}")
            } else if let Some(t) = part("mlp.weights_out.") {
                format!("{block}.mlp.w3.{t}")
            } else if tail.starts_with("norm1.") || tail.starts_with("norm2.") || tail.starts_with("mlp.fc") {
                format!("{block}.{tail}")
            } else {
                key.clone()
            }
        } else if let Some(t) = k.strip_prefix("layernorm.") {
            format!("norm.{t}")
        } else {
            key.clone()
        };
        insert_once(&mut out, &mut source, renamed, key, tensor)?;
    }
    for ((block, param), parts) in qkv {
        let [Some(q), Some(k), Some(v)] = parts else {
            return Err(format!("{block}: query, key and value {param} are not all present"));
        };
        if q.shape != k.shape || q.shape != v.shape || q.shape.is_empty() {
            return Err(format!("{block}: query, key and value {param} have different shapes"));
        }
        // torch [out, in] (or [out]): stacking along the first axis is a concatenation.
        let mut shape = q.shape.clone();
        shape[0] *= 3;
        let data = [q.data, k.data, v.data].concat();
        let name = format!("{block}.attn.qkv.{param}");
        insert_once(&mut out, &mut source, name, format!("{block} query/key/value {param}"), HostTensor::new(shape, data))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], start: f32) -> HostTensor {
        let n = shape.iter().product();
        HostTensor::new(shape.to_vec(), (0..n).map(|i| start + i as f32).collect())
    }

    #[test]
    fn chunked_blocks_and_the_mask_token() {
        let sd: StateDict = [
            ("blocks.0.0.norm1.weight".to_string(), t(&[2], 0.0)),
            ("blocks.1.3.ls1.gamma".to_string(), t(&[2], 0.0)),
            ("mask_token".to_string(), t(&[1, 2], 0.0)),
        ]
        .into();
        let (out, layout) = to_official(sd).unwrap();
        assert_eq!(layout, Layout::OfficialChunked);
        assert_eq!(out.keys().collect::<Vec<_>>(), ["blocks.0.norm1.weight", "blocks.3.ls1.gamma"]);
    }

    /// A chunked and a plain copy of one tensor, or `reg_token` beside `register_tokens`: an
    /// error naming both keys, not whichever came last.
    #[test]
    fn two_copies_of_one_tensor_are_an_error() {
        let sd: StateDict =
            [("blocks.0.1.norm1.weight".to_string(), t(&[2], 0.0)), ("blocks.1.norm1.weight".to_string(), t(&[2], 5.0))].into();
        let err = to_official(sd).unwrap_err();
        assert!(err.contains("blocks.0.1.norm1.weight") && err.contains("blocks.1.norm1.weight"), "{err}");
        let sd: StateDict = [("reg_token".to_string(), t(&[1, 4, 2], 0.0)), ("register_tokens".to_string(), t(&[1, 4, 2], 0.0))].into();
        assert!(to_official(sd).unwrap_err().contains("two copies"));
        // HF classifier files: the prefix and the linear head go.
        let sd: StateDict = [
            ("dinov2.embeddings.cls_token".to_string(), t(&[1, 1, 2], 0.0)),
            ("dinov2.layernorm.weight".to_string(), t(&[2], 0.0)),
            ("classifier.weight".to_string(), t(&[3, 4], 0.0)),
        ]
        .into();
        assert_eq!(to_official(sd).unwrap().0.keys().collect::<Vec<_>>(), ["cls_token", "norm.weight"]);
    }

    #[test]
    fn timm_registers_and_position_without_cls() {
        let sd: StateDict =
            [("reg_token".to_string(), t(&[1, 4, 2], 0.0)), ("pos_embed".to_string(), t(&[1, 4, 2], 1.0))].into();
        let (out, layout) = to_official(sd).unwrap();
        assert_eq!(layout, Layout::Timm);
        assert_eq!(out["pos_embed"].shape, [1, 5, 2]);
        assert_eq!(out["pos_embed"].data[..4], [0.0, 0.0, 1.0, 2.0]);
        assert!(out.contains_key("register_tokens"));
    }

    #[test]
    fn hugging_face_query_key_value_stack_into_qkv() {
        let p = "encoder.layer.1.attention.attention.";
        let sd: StateDict = [
            (format!("{p}query.weight"), t(&[2, 2], 0.0)),
            (format!("{p}key.weight"), t(&[2, 2], 10.0)),
            (format!("{p}value.weight"), t(&[2, 2], 20.0)),
            ("embeddings.mask_token".to_string(), t(&[1, 2], 0.0)),
            ("encoder.layer.1.layer_scale2.lambda1".to_string(), t(&[2], 0.0)),
        ]
        .into();
        let (out, layout) = to_official(sd).unwrap();
        assert_eq!(layout, Layout::HuggingFace);
        let qkv = &out["blocks.1.attn.qkv.weight"];
        assert_eq!((qkv.shape.as_slice(), &qkv.data[..]), (&[6, 2][..], &[0., 1., 2., 3., 10., 11., 12., 13., 20., 21., 22., 23.][..]));
        assert!(out.contains_key("blocks.1.ls2.gamma") && !out.contains_key("mask_token"));
        let missing: StateDict = [(format!("{p}query.bias"), t(&[2], 0.0))].into();
        assert!(to_official(missing).unwrap_err().contains("not all present"));
    }
}
