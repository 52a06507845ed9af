//! DINOv2 backbones against the official forward (tools/reference.py: a transcription of
//! facebookresearch/dinov2 `DinoVisionTransformer`, itself checked there against timm's and
//! HF transformers' models): register tokens, LayerScale, SwiGLU, the position-embedding
//! resizing of both hub conventions, every file layout (official hub `.pth`, block-chunked
//! `.pth`, timm, HF `Dinov2Model`), and the PCA / similarity views against numpy.
//!
//! Fixtures (random weights, reduced size): `v2reg4` (4 registers, LayerScale, GELU MLP, the
//! hub's `dinov2_vits14_reg4` in miniature) and `v2swiglu` (SwiGLUFFNFused, no registers,
//! LayerScale; the ViT-g recipe), 128-dim, 2 heads, patch 14, position grid 7 x 7.

use std::path::PathBuf;

use burn::tensor::{Device, Tensor};
use dino_shared::config::{FfnLayer, PosInterpolation};
use dino_shared::inference::{checked_block, patch_features};
use dino_shared::preprocess::ModelInput;
use dino_shared::state_dict::{load_state_dict, StateDict};
use dino_shared::views::{patch_similarity, PatchFeatures, PatchPca};
use dino_shared::weights::{parse_safetensors, ArchSpec, WeightsFile};
use dino_shared::VisionTransformer;

mod common;
use common::*;

const CLS_TOL: f32 = 1e-4;
const PATCH_TOL: f32 = 1e-4;
const ATTN_TOL: f32 = 1e-5;

fn read_v2_ref(name: &str) -> StateDict {
    read_ref(&fixtures(), name)
}

/// The model of `file` with its inferred configuration, or with the position resizing `mode`.
fn model(file: &str, mode: Option<PosInterpolation>, device: &Device) -> VisionTransformer {
    let weights = WeightsFile::read(&fixtures().join(file), "teacher").unwrap_or_else(|e| panic!("{e}"));
    let mut cfg = weights.vit_config(&ArchSpec::default()).unwrap();
    if let Some(mode) = mode {
        cfg.pos_interpolation = mode;
    }
    load_state_dict(VisionTransformer::new(&cfg, device), &weights.backbone).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Largest differences of CLS, patch tokens and the CLS attention row against the reference
/// outputs `prefix{cls,patch,attn_cls}_{size}` at every size.
fn compare(vit: &VisionTransformer, refs: &StateDict, prefix: &str, sizes: &[&str], device: &Device) -> (f32, f32, f32) {
    let (mut cls, mut patch, mut attn) = (0f32, 0f32, 0f32);
    let depth = vit.config().depth;
    for size in sizes {
        let x: Tensor<4> = tensor(&refs[&format!("input_{size}")], device);
        let (tokens, a) = vit.forward_tokens_with_attention(x, depth - 1);
        let [b, t, d] = tokens.dims();
        cls = cls.max(max_abs_diff(&host(tokens.clone().narrow(1, 0, 1).reshape([b, d])), &refs[&format!("{prefix}cls_{size}")].data));
        patch = patch.max(max_abs_diff(&host(vit.patch_tokens(tokens)), &refs[&format!("{prefix}patch_{size}")].data));
        let [_, heads, _, _] = a.dims();
        let row = host(a.narrow(2, 0, 1).reshape([b, heads, t]));
        attn = attn.max(max_abs_diff(&row, &refs[&format!("{prefix}attn_cls_{size}")].data));
    }
    (cls, patch, attn)
}

fn assert_close(what: &str, (cls, patch, attn): (f32, f32, f32)) {
    println!("{what}: CLS {cls:.2e}, patches {patch:.2e}, attention {attn:.2e}");
    assert!(cls <= CLS_TOL, "{what}: CLS differs by {cls}");
    assert!(patch <= PATCH_TOL, "{what}: patch tokens differ by {patch}");
    assert!(attn <= ATTN_TOL, "{what}: attention differs by {attn}");
}

/// Every layout of the register model, as the hub's `dinov2_vits14_reg4` resizes
/// (antialiased, inferred from the registers), at the native 98 px, at 224 and at 252 x 336.
fn registers_model_matches(device: &Device) {
    let refs = read_v2_ref("v2reg4");
    for file in ["v2reg4_official.pth", "v2reg4_timm.safetensors", "v2reg4_hf.safetensors"] {
        let vit = model(file, None, device);
        let cfg = vit.config();
        assert_eq!(
            (cfg.num_register_tokens, cfg.layer_scale, cfg.num_heads, cfg.patch_size, cfg.pos_interpolation),
            (4, true, 2, 14, PosInterpolation::Antialias),
            "{file}"
        );
        assert_close(&format!("{file} native size"), compare(&vit, &refs, "", &["98"], device));
        assert_close(&format!("{file} antialiased resizing"), compare(&vit, &refs, "aa_", &["224", "252x336"], device));
    }
    // The same weights with DINO's resizing (the hub's models without registers).
    let vit = model("v2reg4_official.pth", Some(PosInterpolation::Offset), device);
    assert_close("v2reg4 offset resizing", compare(&vit, &refs, "", &["224", "252x336"], device));
}

/// SwiGLU in the block-chunked training layout and in HF's layout (no registers: DINO's
/// resizing with the 0.1 offset, as the hub's models without registers).
fn swiglu_model_matches(device: &Device) {
    let refs = read_v2_ref("v2swiglu");
    for file in ["v2swiglu_chunked.pth", "v2swiglu_hf.safetensors"] {
        let vit = model(file, None, device);
        let cfg = vit.config();
        assert_eq!((cfg.ffn_layer, cfg.mlp_hidden(), cfg.depth, cfg.num_register_tokens), (FfnLayer::SwiGluFused, 344, 2, 0), "{file}");
        assert_eq!(cfg.pos_interpolation, PosInterpolation::Offset);
        assert_close(file, compare(&vit, &refs, "", &["98", "224", "252x336"], device));
    }
}

#[test]
fn registers_layerscale_match_the_official_forward_on_cpu() {
    registers_model_matches(&Device::flex());
}

#[test]
fn swiglu_matches_the_official_forward_on_cpu() {
    swiglu_model_matches(&Device::flex());
}

#[test]
fn dinov2_matches_the_official_forward_on_wgpu() {
    let device = Device::wgpu_options()
        .init()
        .expect("no wgpu adapter: install a GPU driver or Mesa's lavapipe (Debian mesa-vulkan-drivers)");
    registers_model_matches(&device);
    swiglu_model_matches(&device);
}

/// Every block's attention (`dino attention --layer N`), not only the last one's.
#[test]
fn every_layer_attention_matches() {
    let device = Device::flex();
    for (name, file) in [("v2reg4", "v2reg4_official.pth"), ("v2swiglu", "v2swiglu_chunked.pth")] {
        let refs = read_v2_ref(name);
        let vit = model(file, Some(PosInterpolation::Offset), &device);
        let depth = vit.config().depth;
        for layer in 0..depth {
            let block = checked_block(Some(layer), depth).unwrap();
            let x: Tensor<4> = tensor(&refs["input_224"], &device);
            let (_, a) = vit.forward_with_attention(x, block);
            let [b, heads, t, _] = a.dims();
            let row = host(a.narrow(2, 0, 1).reshape([b, heads, t]));
            let d = max_abs_diff(&row, &refs[&format!("attn_cls_224_layer{layer}")].data);
            assert!(d <= ATTN_TOL, "{name} layer {layer}: attention differs by {d}");
        }
        assert!(checked_block(Some(depth), depth).unwrap_err().contains("does not exist"));
    }
}

/// Loading must fail loudly when a LayerScale is missing (not run silently without it).
#[test]
fn a_missing_layerscale_is_an_error() {
    let mut file = WeightsFile::read(&fixtures().join("v2reg4_official.pth"), "teacher").unwrap();
    file.backbone.remove("blocks.1.ls2.gamma");
    let err = file.backbone_model(&ArchSpec::default(), &Device::flex()).unwrap_err().to_string();
    assert!(err.contains("blocks.1.ls2.gamma"), "{err}");
}

fn features(refs: &StateDict, key: &str, grid_h: usize, grid_w: usize) -> PatchFeatures {
    PatchFeatures::new(grid_h, grid_w, 128, refs[key].data.clone()).unwrap()
}

/// PCA of the reference patch tokens equals numpy's SVD (components, projections, RGB), for a
/// joint fit of two pictures and a single one.
#[test]
fn pca_equals_numpy() {
    let refs = read_v2_ref("v2reg4");
    let (a, b) = (features(&refs, "patch_224", 16, 16), features(&refs, "patch_252x336", 18, 24));
    let joint = PatchPca::fit(&[&a, &b]).unwrap();
    let comps: Vec<f32> = joint.components.iter().flatten().map(|&x| x as f32).collect();
    let d = max_abs_diff(&comps, &refs["pca_joint_components"].data);
    assert!(d <= 1e-5, "components differ by {d}");
    for (f, size) in [(&a, "224"), (&b, "252x336")] {
        let proj: Vec<f32> = joint.project(f).iter().flatten().map(|&x| x as f32).collect();
        let d = max_abs_diff(&proj, &refs[&format!("pca_joint_proj_{size}")].data);
        assert!(d <= 1e-4, "{size}: projections differ by {d}");
        let rgb: Vec<f32> = joint.rgb(f).concat();
        let d = max_abs_diff(&rgb, &refs[&format!("pca_joint_rgb_{size}")].data);
        assert!(d <= 1e-5, "{size}: RGB differs by {d}");
    }
    let single = PatchPca::fit(&[&a]).unwrap();
    let d = max_abs_diff(&single.rgb(&a).concat(), &refs["pca_rgb_224"].data);
    assert!(d <= 1e-5, "single-picture RGB differs by {d}");
}

/// Patch similarity of the reference tokens equals numpy's, within and across pictures; and
/// from our own forward pass (through `inference::patch_features`) within 1e-4.
#[test]
fn similarity_equals_numpy() {
    let refs = read_v2_ref("v2reg4");
    let (a, b) = (features(&refs, "patch_224", 16, 16), features(&refs, "patch_252x336", 18, 24));
    let d = max_abs_diff(&patch_similarity(&a, 3, 5, &a).unwrap(), &refs["sim_224_r3_c5"].data);
    assert!(d <= 1e-6, "similarity differs by {d}");
    let d = max_abs_diff(&patch_similarity(&a, 3, 5, &b).unwrap(), &refs["sim_224_r3_c5_to_252x336"].data);
    assert!(d <= 1e-6, "cross-picture similarity differs by {d}");

    let device = Device::flex();
    let vit = model("v2reg4_official.pth", None, &device);
    let input = &refs["input_224"];
    let x: Tensor<4> = tensor(input, &device);
    let tokens = vit.patch_tokens(vit.forward_tokens(x));
    let picture = ModelInput { data: input.data.clone(), height: 224, width: 224, image: image::RgbImage::new(224, 224) };
    let ours = patch_features(tokens.into_data(), &vit, &picture).unwrap();
    let sim = patch_similarity(&ours, 3, 5, &ours).unwrap();
    let aa = features(&refs, "aa_patch_224", 16, 16);
    let d = max_abs_diff(&sim, &patch_similarity(&aa, 3, 5, &aa).unwrap());
    assert!(d <= 1e-4, "similarity from our forward differs by {d}");
}

/// Full-size DINOv2 ViT-S/14 with 4 registers (the hub's `dinov2_vits14_reg4` shape, random
/// weights) at 518 (native), 224 and 252 x 336: run `tools/parity-full.sh`.
#[test]
#[ignore = "needs DINO_PARITY_DIR written by `python3 tools/reference.py full --only dinov2` (torch + timm)"]
fn full_size_vits14_reg4_parity() {
    let dir = PathBuf::from(std::env::var("DINO_PARITY_DIR").expect("set DINO_PARITY_DIR"));
    let bytes = std::fs::read(dir.join("vits14reg4_ref.safetensors")).expect("reference outputs");
    let refs = parse_safetensors(&bytes).unwrap().0;
    for device in [Device::flex(), Device::wgpu_options().init().expect("no wgpu adapter")] {
        let weights = WeightsFile::read(&dir.join("vits14reg4_official.pth"), "teacher").unwrap();
        let vit = weights.backbone_model(&ArchSpec::default(), &device).unwrap();
        let cfg = vit.config();
        assert_eq!((cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.num_register_tokens, cfg.img_size), (384, 12, 6, 4, 518));
        assert_close("ViT-S/14 reg4 native", compare(&vit, &refs, "", &["518"], &device));
        assert_close("ViT-S/14 reg4 antialiased resizing", compare(&vit, &refs, "aa_", &["224", "252x336"], &device));
    }
}
