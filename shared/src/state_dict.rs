//! Moving weights between our modules and a "state dict" of host tensors that uses the official
//! PyTorch names and layouts. One name mapping serves both directions (import and export).
//!
//! Burn's layouts differ from torch's in two places, both handled here and nowhere else:
//! - `Linear` weights are stored [in, out] (torch: [out, in]) and must be transposed. A square
//!   weight such as `attn.proj` would load silently wrong without it; the parity tests catch that.
//! - `LayerNorm` parameters are `gamma` / `beta` (torch: `weight` / `bias`).
//! The DINO head's `nn.Sequential` indices (`mlp.0`, `mlp.2`, `mlp.4`, GELUs in between) map to
//! our `Vec<Linear>` indices 0, 1, 2.

use std::collections::BTreeMap;
use std::fmt;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};

/// A host tensor in torch layout (row-major, f32).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor whose `data` holds exactly the product of `shape` values.
    ///
    /// # Errors
    /// A shape that does not match the number of values (e.g. from a damaged file).
    pub fn checked(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, String> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(data.len()) {
            return Err(format!("shape {shape:?} does not hold its {} values", data.len()));
        }
        Ok(Self { shape, data })
    }

    /// Panics when `shape` does not hold `data` (for tensors this crate made itself).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "shape {shape:?} does not hold {} values", data.len());
        Self { shape, data }
    }

    /// Swap the two axes of a 2-D tensor.
    pub fn transposed(&self) -> Self {
        let [r, c] = [self.shape[0], self.shape[1]];
        let mut data = vec![0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                data[j * r + i] = self.data[i * c + j];
            }
        }
        Self { shape: vec![c, r], data }
    }
}

/// Official name -> tensor.
pub type StateDict = BTreeMap<String, HostTensor>;

/// What did not fit when loading a state dict into a module.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadMismatch {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// (name, expected shape, found shape), in torch layout.
    pub shape_mismatch: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl LoadMismatch {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shape_mismatch.is_empty()
    }
}

impl fmt::Display for LoadMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let list = |v: &[String]| {
            let shown: Vec<&str> = v.iter().take(8).map(|s| s.as_str()).collect();
            let more = if v.len() > 8 { format!(" (+{} more)", v.len() - 8) } else { String::new() };
            format!("{}{more}", shown.join(", "))
        };
        if !self.shape_mismatch.is_empty() {
            let shown: Vec<String> = self
                .shape_mismatch
                .iter()
                .take(8)
                .map(|(n, want, got)| format!("{n}: model {want:?}, file {got:?}"))
                .collect();
            parts.push(format!("shape mismatch: {}", shown.join("; ")));
        }
        if !self.missing.is_empty() {
            parts.push(format!("missing keys: {}", list(&self.missing)));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!("unexpected keys: {}", list(&self.unexpected)));
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// Where a visitor is in our module tree: each step's field name and the type of the module
/// holding it (Burn's `container_type`: `Struct:LayerNorm`, `Enum:Ffn`, `Vec`, ...). The one
/// place our module paths become official parameter names.
#[derive(Debug, Clone, Default)]
pub struct ModulePath(Vec<(String, String)>);

impl ModulePath {
    /// `ModuleVisitor::enter_module` / `ModuleMapper::enter_module`.
    pub fn enter(&mut self, name: &str, container_type: &str) {
        self.0.push((name.to_string(), container_type.to_string()));
    }

    /// `exit_module`.
    pub fn exit(&mut self) {
        self.0.pop();
    }

    /// Our field names joined by dots (unique within a module; not the official name).
    pub fn key(&self) -> String {
        self.0.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(".")
    }

    /// The official name of the parameter at this path:
    /// - enum variants (`Ffn::Mlp`, `Ffn::SwiGlu`) are ours, not steps of the official name;
    /// - a LayerNorm's `gamma` / `beta` are torch's `weight` / `bias` (only a LayerNorm's: the
    ///   DINOv2 LayerScale's `gamma` keeps its name, `blocks.N.ls1.gamma`);
    /// - the DINO head's `mlp.<i>` of our `Vec<Linear>` is `mlp.<2i>` of the official
    ///   `nn.Sequential` (GELUs in between).
    pub fn official_name(&self) -> String {
        let steps: Vec<&(String, String)> = self.0.iter().filter(|(_, container)| !container.starts_with("Enum:")).collect();
        let mut parts: Vec<String> = steps.iter().map(|(n, _)| n.clone()).collect();
        let n = parts.len();
        if n == 0 {
            return String::new();
        }
        // (The backbone's `mlp` is a struct with fc1/fc2, so its next step is not a number.)
        if n >= 3 && parts[n - 3] == "mlp" {
            if let Ok(i) = parts[n - 2].parse::<usize>() {
                parts[n - 2] = (2 * i).to_string();
            }
        }
        if steps[n - 1].1 == "Struct:LayerNorm" {
            match parts[n - 1].as_str() {
                "gamma" => parts[n - 1] = "weight".into(),
                "beta" => parts[n - 1] = "bias".into(),
                _ => {}
            }
        }
        parts.join(".")
    }

    /// Burn Linear weights are the only 2-D parameters named `weight` in a `Linear`; they are
    /// [in, out] (torch: [out, in]).
    fn is_linear_weight(&self, rank: usize) -> bool {
        rank == 2 && self.0.last().is_some_and(|(n, c)| n == "weight" && c == "Struct:Linear")
    }
}

struct Collector {
    path: ModulePath,
    out: StateDict,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        let data = tensor.into_data().convert::<f32>().try_into_vec::<f32>().expect("float parameter");
        let mut host = HostTensor::new(shape, data);
        if self.path.is_linear_weight(D) {
            host = host.transposed();
        }
        self.out.insert(self.path.official_name(), host);
    }
}

/// All float parameters of `module` under their official names, in torch layout.
pub fn to_state_dict<M: Module>(module: &M) -> StateDict {
    let mut collector = Collector { path: ModulePath::default(), out: StateDict::new() };
    module.visit(&mut collector);
    collector.out
}

struct Loader<'a> {
    path: ModulePath,
    source: &'a StateDict,
    used: Vec<String>,
    mismatch: LoadMismatch,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.official_name();
        let transpose = self.path.is_linear_weight(D);
        let Some(host) = self.source.get(&name) else {
            self.mismatch.missing.push(name);
            return param;
        };
        self.used.push(name.clone());
        let current: Vec<usize> = param.lazy_shape().to_vec();
        let torch_shape = if transpose { vec![current[1], current[0]] } else { current };
        if host.shape != torch_shape {
            self.mismatch.shape_mismatch.push((name, torch_shape, host.shape.clone()));
            return param;
        }
        let host = if transpose { host.transposed() } else { host.clone() };
        // Same ParamId and gradient setting: only the value changes.
        param.map(|old| {
            let device = old.device();
            let require_grad = old.is_require_grad();
            Tensor::<D>::from_data(TensorData::new(host.data, host.shape), &device).set_require_grad(require_grad)
        })
    }
}

/// Load `state` (official names, torch layout) into `module`. Every parameter must be present
/// with the right shape and every tensor of `state` must be used; otherwise nothing is returned
/// but the list of what does not fit.
pub fn load_state_dict<M: Module>(module: M, state: &StateDict) -> Result<M, LoadMismatch> {
    let mut loader = Loader { path: ModulePath::default(), source: state, used: Vec::new(), mismatch: LoadMismatch::default() };
    let module = module.map(&mut loader);
    let mut mismatch = loader.mismatch;
    mismatch.unexpected = state.keys().filter(|k| !loader.used.contains(k)).cloned().collect();
    if mismatch.is_empty() {
        Ok(module)
    } else {
        Err(mismatch)
    }
}
