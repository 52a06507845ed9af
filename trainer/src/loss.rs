//! DINOLoss (official main_dino.DINOLoss): cross-entropy between the centred, sharpened teacher
//! distribution of each global crop and the student distribution of every other crop.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Tensor};

pub struct DinoLoss {
    pub student_temp: f64,
    pub center_momentum: f64,
    /// [1, out_dim], kept off the autodiff graph.
    pub center: Tensor<2>,
}

impl DinoLoss {
    /// Official settings: student temperature 0.1, centre momentum 0.9, centre 0.
    pub fn new(out_dim: usize, device: &Device) -> Self {
        Self { student_temp: 0.1, center_momentum: 0.9, center: Tensor::zeros([1, out_dim], device) }
    }

    /// `student`: [ncrops * B, K] (crop-major), `teacher`: [2 * B, K] (plain tensor).
    /// Returns the scalar loss and, as a plain [1] tensor, the mean entropy (nats) of the
    /// centred, sharpened teacher distribution: the paper's collapse diagnostic (Section 5.3,
    /// Fig. 7; not in the official code). Since the loss is H(P_t, P_s) = H(P_t) + KL(P_t || P_s)
    /// averaged over the same pairs, loss minus entropy is the KL divergence of that figure.
    /// `teacher_temp` is this step's value of the teacher temperature schedule.
    /// The centre is not updated here: each data-parallel replica computes the loss of its
    /// share of the batch, and the centre is then updated once from all of them
    /// ([`update_center`](Self::update_center)).
    pub fn loss(&self, student: Tensor<2>, teacher: Tensor<2>, ncrops: usize, teacher_temp: f64) -> (Tensor<1>, Tensor<1>) {
        let [n, k] = student.dims();
        let b = n / ncrops;
        let temp = teacher_temp;
        let logits = (teacher.clone() - self.center.clone()).div_scalar(temp);
        let q = softmax(logits.clone(), 1);
        let entropy = (q.clone() * log_softmax(logits, 1)).sum().neg().div_scalar((2 * b) as f64);
        let q = q.reshape([2, b, k]);
        let logp = log_softmax(student.div_scalar(self.student_temp), 1).reshape([ncrops, b, k]);
        // Sum over every (teacher crop iq, student crop v != iq) pair of mean_b sum_k -q log p:
        // all pairs at once with q0 + q1 against every crop, minus the two diagonal pairs.
        // (q is a plain tensor: it enters the autodiff graph as a constant, the stop-gradient.)
        let all_pairs = (q.clone().sum_dim(0) * logp.clone()).sum();
        let same_view = (q * logp.narrow(0, 0, 2)).sum();
        let n_terms = (2 * ncrops - 2) as f64;
        let loss = (same_view - all_pairs).div_scalar(b as f64 * n_terms);
        (loss, entropy)
    }

    /// c <- m c + (1 - m) mean_batch(teacher), from the column sum of the teacher outputs of
    /// every replica, [1, K], and their number of rows: official `update_center` (`sum`,
    /// `dist.all_reduce`, divide by `len(teacher_output) * world_size`).
    pub fn update_center(&mut self, teacher_sum: Tensor<2>, rows: usize) {
        let batch_center = teacher_sum.div_scalar(rows as f64);
        self.center = self.center.clone().mul_scalar(self.center_momentum) + batch_center.mul_scalar(1.0 - self.center_momentum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use dino_shared::weights::parse_safetensors;

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// DINOLoss, its gradient and the centre update against PyTorch on fixed logits.
    #[test]
    fn loss_gradient_and_center_equal_pytorch() {
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/losses.safetensors")).unwrap();
        let (r, _) = parse_safetensors(&bytes).unwrap();
        let device = Device::flex().autodiff();
        let plain = Device::flex();
        let t = |name: &str, d: &Device| -> Tensor<2> {
            Tensor::from_data(TensorData::new(r[name].data.clone(), r[name].shape.clone()), d)
        };
        let student = t("student_output", &device).require_grad();
        let teacher = t("teacher_output", &plain);
        let temps = teacher_temp_schedule(0.04, 0.07, 3, 10);
        let mut loss_fn = DinoLoss::new(32, &plain);
        loss_fn.center = t("center_in", &plain);
        let (loss, _) = loss_fn.loss(student.clone(), teacher.clone(), 6, temps[1]); // epoch 1
        loss_fn.update_center(teacher.sum_dim(0), 4 * 2);
        let grads = loss.backward();
        let value = loss.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()[0];
        let want = r["loss"].data[0];
        assert!((value - want).abs() <= 1e-6 * want.abs(), "loss {value} vs {want}");
        let g = student.grad(&grads).unwrap().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        assert!(max_diff(&g, &r["student_grad"].data) < 1e-6, "gradient differs");
        let c = loss_fn.center.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        assert!(max_diff(&c, &r["center_out"].data) < 1e-6, "center differs");
    }

    use crate::schedule::teacher_temp_schedule;
}
