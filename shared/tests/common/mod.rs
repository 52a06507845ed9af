//! Helpers of the parity tests (`parity.rs`, `parity_v2.rs`): the fixtures written by
//! `tools/reference.py` and host <-> device tensors.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use dino_shared::state_dict::{HostTensor, StateDict};
use dino_shared::weights::parse_safetensors;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

pub fn read_ref(dir: &Path, name: &str) -> StateDict {
    let bytes = std::fs::read(dir.join(format!("{name}_ref.safetensors"))).expect("reference outputs");
    parse_safetensors(&bytes).unwrap().0
}

pub fn tensor<const D: usize>(t: &HostTensor, device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "different sizes");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

