//! Weight files: export/import round trips, architecture inference and the errors users see.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use dino_shared::weights::{export_safetensors, infer_head_config, ArchSpec, ExportDType, WeightsFile};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
}

fn small() -> ArchSpec {
    ArchSpec { num_heads: Some(3), ..Default::default() }
}

#[test]
fn export_then_import_is_exact_in_f32() {
    let device = Device::flex();
    let file = WeightsFile::read(&fixture("tiny16_full.pth"), "teacher").unwrap();
    let vit = file.backbone_model(&small(), &device).unwrap();
    let head = file.head_model(&device).unwrap().unwrap();
    let bytes = export_safetensors(&vit, Some(&head), ExportDType::F32);
    let back = WeightsFile::from_safetensors_bytes("exported", &bytes, "teacher").unwrap();
    assert_eq!(back.backbone, file.backbone, "backbone tensors changed in the round trip");
    assert_eq!(back.head, file.head, "head tensors changed in the round trip");
    // The architecture travels in the metadata: no spec needed to rebuild it.
    assert_eq!(back.vit.as_ref(), Some(vit.config()));
    let rebuilt = back.backbone_model(&ArchSpec::default(), &device).unwrap();
    assert_eq!(rebuilt.config(), vit.config());
}

#[test]
fn f16_export_is_within_half_precision() {
    let device = Device::flex();
    let file = WeightsFile::read(&fixture("tiny8_pretrain.pth"), "teacher").unwrap();
    let vit = file.backbone_model(&small(), &device).unwrap();
    let bytes = export_safetensors(&vit, None, ExportDType::F16);
    let back = WeightsFile::from_safetensors_bytes("exported", &bytes, "teacher").unwrap();
    for (k, t) in &file.backbone {
        let b = &back.backbone[k];
        assert_eq!(b.shape, t.shape, "{k}");
        for (x, y) in t.data.iter().zip(&b.data) {
            assert!((x - y).abs() <= 1e-3 * x.abs().max(1e-2), "{k}: {x} vs {y}");
        }
    }
}

#[test]
fn architecture_is_inferred_from_shapes() {
    let file = WeightsFile::read(&fixture("tiny8_full.pth"), "teacher").unwrap();
    let cfg = file.vit_config(&small()).unwrap();
    assert_eq!((cfg.embed_dim, cfg.depth, cfg.patch_size, cfg.img_size, cfg.num_heads), (96, 2, 8, 224, 3));
    assert_eq!(cfg.mlp_ratio, 4.0);
    let head = infer_head_config(&file.head, false).unwrap();
    assert_eq!((head.in_dim, head.hidden_dim, head.bottleneck_dim, head.out_dim, head.nlayers), (96, 128, 64, 256, 3));
}

#[test]
fn heads_of_an_unusual_width_must_be_given() {
    let file = WeightsFile::read(&fixture("tiny16_pretrain.pth"), "teacher").unwrap();
    let err = file.vit_config(&ArchSpec::default()).unwrap_err().to_string();
    assert!(err.contains("head count"), "{err}");
}

#[test]
fn another_architecture_lists_the_mismatches() {
    let file = WeightsFile::read(&fixture("tiny16_pretrain.pth"), "teacher").unwrap();
    let spec = ArchSpec { arch: Some("vit_small".into()), ..Default::default() };
    let err = file.backbone_model(&spec, &Device::flex()).unwrap_err().to_string();
    assert!(err.contains("tiny16_pretrain.pth"), "{err}");
    assert!(err.contains("shape mismatch") && err.contains("cls_token"), "{err}");
    assert!(err.contains("missing keys") && err.contains("blocks.2."), "{err}");
}

#[test]
fn unknown_checkpoint_key_names_the_sections() {
    let err = WeightsFile::read(&fixture("tiny16_full.pth"), "ema").unwrap_err().to_string();
    assert!(err.contains("no 'ema' weights") && err.contains("teacher, student"), "{err}");
}

#[test]
fn a_file_that_is_not_a_checkpoint_is_refused() {
    let dir = std::env::temp_dir().join(format!("dino-weights-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("notes.pth");
    std::fs::write(&text, "these are not weights\n").unwrap();
    let err = WeightsFile::read(&text, "teacher").unwrap_err().to_string();
    assert!(err.starts_with(&text.display().to_string()) && err.contains("not a weights file"), "{err}");
    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let err = WeightsFile::read(&empty, "teacher").unwrap_err().to_string();
    assert!(err.contains("empty.safetensors") && err.contains("the file is empty"), "{err}");
    let missing = WeightsFile::read(&dir.join("nope.pth"), "teacher").unwrap_err().to_string();
    assert!(missing.contains("nope.pth") && missing.contains("cannot read"), "{missing}");
    let _ = std::fs::remove_dir_all(&dir);
}
