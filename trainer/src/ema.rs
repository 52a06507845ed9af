//! The teacher is an exponential moving average of the student:
//! teacher = m * teacher + (1 - m) * student, for every parameter, outside any autodiff graph.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// Student parameters by module path, flattened (ranks differ; the teacher's shape restores them).
#[derive(Default)]
struct Collect {
    path: Vec<String>,
    params: HashMap<String, Tensor<1>>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val().inner();
        let n = t.shape().num_elements();
        self.params.insert(self.path.join("."), t.reshape([n]));
    }
}

struct Blend {
    path: Vec<String>,
    student: HashMap<String, Tensor<1>>,
    momentum: f64,
}

impl ModuleMapper for Blend {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let key = self.path.join(".");
        let s = self.student.remove(&key).unwrap_or_else(|| panic!("teacher parameter {key} has no student twin"));
        let m = self.momentum;
        param.map(|t| {
            let s = s.reshape(t.dims());
            t.mul_scalar(m) + s.mul_scalar(1.0 - m)
        })
    }
}

/// One EMA step of `teacher` towards `student` (same architecture).
pub fn ema_update<M: Module>(teacher: M, student: &M, momentum: f64) -> M {
    let mut collect = Collect::default();
    student.visit(&mut collect);
    let mut blend = Blend { path: Vec::new(), student: collect.params, momentum };
    teacher.map(&mut blend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use dino_shared::state_dict::to_state_dict;
    use dino_shared::{VisionTransformer, VitConfig};

    /// teacher' = m teacher + (1 - m) student, for every parameter, to float rounding.
    #[test]
    fn ema_is_exact_for_every_parameter() {
        let device = Device::flex();
        let cfg = VitConfig::custom(16, 8, 16, 2, 2);
        let teacher = VisionTransformer::new(&cfg, &device);
        let student = VisionTransformer::new(&cfg, &device.clone().autodiff());
        let (t0, s0) = (to_state_dict(&teacher), to_state_dict(&student));
        let m = 0.996;
        let t1 = to_state_dict(&ema_update(teacher, &student.valid(), m));
        assert_eq!(t1.len(), t0.len());
        for (name, t) in &t1 {
            for ((a, b), c) in t0[name].data.iter().zip(&s0[name].data).zip(&t.data) {
                let want = a * m as f32 + b * (1.0 - m) as f32;
                assert!((c - want).abs() <= 1e-7 * want.abs().max(1e-3), "{name}: {c} vs {want}");
            }
        }
    }
}
