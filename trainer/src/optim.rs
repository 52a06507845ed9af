//! AdamW exactly as torch.optim.AdamW with DINO's settings, in one place:
//! - two groups: weight decay on every parameter except biases and 1-D tensors (norms), as
//!   official `utils.get_params_groups`; the decay follows its own cosine schedule, applied as
//!   torch does (`p *= 1 - lr * wd` before the moment update);
//! - gradient clipping per parameter tensor (official `utils.clip_gradients`: each tensor's own
//!   L2 norm, coefficient clip / (norm + 1e-6) when below 1), in every group;
//! - `freeze_last_layer`: the head's last layer gets no update at all (torch: `p.grad = None`);
//! - betas (0.9, 0.999), eps 1e-8 (Burn's AdamW defaults to 1e-5; torch's is 1e-8).
//! Burn's stock AdamW fixes the decay at build time and clips only its first group, hence this.
//! State is keyed by official parameter name, so checkpoints are readable and resume exactly.

use std::collections::{BTreeMap, HashMap};

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{FloatDType, Tensor, TensorData};
use dino_shared::state_dict::{HostTensor, ModulePath, StateDict};

pub const BETA1: f64 = 0.9;
pub const BETA2: f64 = 0.999;
pub const EPS: f64 = 1e-8;

pub struct AdamState {
    pub step: u64,
    pub exp_avg: Tensor<1>,
    pub exp_avg_sq: Tensor<1>,
}

#[derive(Default)]
pub struct AdamW {
    pub states: HashMap<String, AdamState>,
}

/// Settings of one optimisation step.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub lr: f64,
    pub weight_decay: f64,
    /// Teacher EMA momentum of this step.
    pub momentum: f64,
    /// Teacher temperature of this step.
    pub teacher_temp: f64,
    pub clip_grad: f64,
    pub freeze_last_layer: bool,
    /// The dtype of the forward's matrix products (`--use_fp16` / `--use_bf16`; `None`: f32).
    pub autocast: Option<FloatDType>,
    /// Seed of this step's drop-path masks: micro-batch i draws them from a generator seeded
    /// with `mix(drop_path_seed, i)` (`dino train`: from the run's seed and the iteration, so a
    /// resumed run draws the same masks). Unused without drop path.
    pub drop_path_seed: u64,
}

struct Update<'a> {
    path: ModulePath,
    grads: GradientsParams,
    states: &'a mut HashMap<String, AdamState>,
    step: &'a Step,
}

impl ModuleMapper for Update<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.official_name();
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else { return Param::from_mapped_value(id, tensor, mapper) };
        let s = self.step;
        if s.freeze_last_layer && name.contains("last_layer") {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let require_grad = tensor.is_require_grad();
        let p = tensor.inner();
        let shape = p.dims();
        let n = p.shape().num_elements();
        let mut p = p.reshape([n]);
        let mut g = grad.inner().reshape([n]);
        if s.clip_grad > 0.0 {
            // g * min(1, clip / (norm + 1e-6)), without reading the norm back to the host.
            let norm = g.clone().powi_scalar(2).sum().sqrt();
            g = g * norm.add_scalar(1e-6).recip().mul_scalar(s.clip_grad).clamp_max(1.0);
        }
        let regularized = !(name.ends_with(".bias") || D == 1);
        if regularized && s.weight_decay != 0.0 {
            p = p.mul_scalar(1.0 - s.lr * s.weight_decay);
        }
        let state = self.states.remove(&name).unwrap_or_else(|| AdamState {
            step: 0,
            exp_avg: Tensor::zeros([n], &g.device()),
            exp_avg_sq: Tensor::zeros([n], &g.device()),
        });
        let step = state.step + 1;
        let exp_avg = state.exp_avg.mul_scalar(BETA1) + g.clone().mul_scalar(1.0 - BETA1);
        let exp_avg_sq = state.exp_avg_sq.mul_scalar(BETA2) + g.powi_scalar(2).mul_scalar(1.0 - BETA2);
        let bias_correction1 = 1.0 - BETA1.powi(step as i32);
        let bias_correction2 = 1.0 - BETA2.powi(step as i32);
        let denom = exp_avg_sq.clone().sqrt().div_scalar(bias_correction2.sqrt()).add_scalar(EPS);
        let p = p - (exp_avg.clone() / denom).mul_scalar(s.lr / bias_correction1);
        self.states.insert(name, AdamState { step, exp_avg, exp_avg_sq });
        let mut updated = Tensor::from_inner(p.reshape(shape));
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

impl AdamW {
    /// Apply one step to `module` with its gradients.
    pub fn step<M: Module>(&mut self, module: M, grads: GradientsParams, step: &Step) -> M {
        let mut update = Update { path: ModulePath::default(), grads, states: &mut self.states, step };
        module.map(&mut update)
    }

    /// State as host tensors (`{name}.exp_avg`, `{name}.exp_avg_sq`) and the step counts.
    pub fn to_host(&self) -> (StateDict, BTreeMap<String, u64>) {
        let mut sd = StateDict::new();
        // Sorted: the checkpoint's metadata JSON lists the steps in one order every time.
        let mut steps = BTreeMap::new();
        for (name, s) in &self.states {
            let host = |t: &Tensor<1>| {
                let data = t.clone().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
                HostTensor::new(vec![data.len()], data)
            };
            sd.insert(format!("{name}.exp_avg"), host(&s.exp_avg));
            sd.insert(format!("{name}.exp_avg_sq"), host(&s.exp_avg_sq));
            steps.insert(name.clone(), s.step);
        }
        (sd, steps)
    }

    pub fn from_host(sd: &StateDict, steps: &HashMap<String, u64>, device: &burn::tensor::Device) -> anyhow::Result<Self> {
        let mut states = HashMap::new();
        for (name, &step) in steps {
            let get = |suffix: &str| -> anyhow::Result<Tensor<1>> {
                let t = sd
                    .get(&format!("{name}.{suffix}"))
                    .ok_or_else(|| anyhow::anyhow!("optimizer state of {name} is missing its {suffix}"))?;
                Ok(Tensor::from_data(TensorData::new(t.data.clone(), [t.data.len()]), device))
            };
            states.insert(name.clone(), AdamState { step, exp_avg: get("exp_avg")?, exp_avg_sq: get("exp_avg_sq")? });
        }
        Ok(Self { states })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
    use burn::tensor::Device;
    use dino_shared::weights::parse_safetensors;

    #[derive(Module, Debug)]
    struct Tiny {
        lin: Linear,
        norm: LayerNorm,
    }

    fn tensor<const D: usize>(t: &HostTensor, device: &Device) -> Tensor<D> {
        Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
    }

    /// Four steps of torch.optim.AdamW driven as main_dino.py does (two groups, per-step lr and
    /// wd, per-tensor clipping at 3.0) against ours.
    #[test]
    fn equals_torch_adamw_with_dino_groups_and_clipping() {
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/adamw.safetensors")).unwrap();
        let (r, _) = parse_safetensors(&bytes).unwrap();
        let device = Device::flex().autodiff();
        let plain = Device::flex();
        let mut m = Tiny { lin: LinearConfig::new(3, 4).init(&device), norm: LayerNormConfig::new(3).init(&device) };
        // Torch's w is [out, in]; Burn's Linear keeps [in, out].
        m.lin.weight = Param::from_tensor(tensor::<2>(&r["w_0"], &device).transpose().require_grad());
        m.lin.bias = Some(Param::from_tensor(tensor::<1>(&r["b_0"], &device).require_grad()));
        m.norm.gamma = Param::from_tensor(tensor::<1>(&r["g_0"], &device).require_grad());
        let mut opt = AdamW::default();
        for s in 0..4 {
            let mut grads = GradientsParams::new();
            grads.register(m.lin.weight.id, tensor::<2>(&r[&format!("grad_w_{s}")], &plain).transpose());
            grads.register(m.lin.bias.as_ref().unwrap().id, tensor::<1>(&r[&format!("grad_b_{s}")], &plain));
            grads.register(m.norm.gamma.id, tensor::<1>(&r[&format!("grad_g_{s}")], &plain));
            let step = Step {
                lr: r["lr"].data[s] as f64,
                weight_decay: r["wd"].data[s] as f64,
                momentum: 0.996,
                teacher_temp: 0.04,
                clip_grad: 3.0,
                freeze_last_layer: false,
                autocast: None,
                drop_path_seed: 0,
            };
            m = opt.step(m, grads, &step);
            let host = |t: Tensor<2>| t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
            let host1 = |t: Tensor<1>| t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
            let w = host(m.lin.weight.val().transpose());
            let b = host1(m.lin.bias.as_ref().unwrap().val());
            let g = host1(m.norm.gamma.val());
            for (name, ours, want) in [("w", w, &r[&format!("w_{}", s + 1)]), ("b", b, &r[&format!("b_{}", s + 1)]), ("g", g, &r[&format!("g_{}", s + 1)])] {
                let d = ours.iter().zip(&want.data).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(d < 2e-6, "step {s}: {name} differs by {d}");
            }
        }
        assert!(m.lin.weight.val().is_require_grad(), "parameters must stay trainable");
    }
}
