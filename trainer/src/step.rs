//! One DINO training step, the body of official `train_one_epoch`: teacher forward on the two
//! global crops, student forward on every crop, DINO loss, backward (student only), AdamW with
//! clipping, EMA of the teacher. `dino train` and `dino bench step` run this same function.
//!
//! Data parallel on one device: with `replicas` > 1 the batch's pictures are split into that
//! many shares, each share runs forward, loss and backward on its own thread with its own copy
//! of the student (`Module::fork`: own autodiff graph, same parameters), and the gradients are
//! summed, as official DDP averages them over GPUs (each replica's loss is weighted by its share
//! of the batch, so the sum is the full-batch gradient). The centre is updated once from every
//! replica's teacher outputs (official `update_center` with its `all_reduce`). Burn's flex CPU
//! backend runs the small matrices of a small ViT on one core; replicas use the others.
//!
//! Gradient accumulation (`accum_iter` > 1) splits the batch further into micro-batches that a
//! replica runs one after the other, summing their gradients the same way: an effective batch
//! `accum_iter` times larger than what fits at once, one optimizer step.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::ema::ema_update;
use crate::loss::DinoLoss;
use crate::model::Dino;
use crate::optim::Step;
use crate::profile::Phases;
use crate::train::TrainState;

/// The crops of one batch on the autodiff device: `globals` [2B, 3, G, G], `locals` [NB, 3, L, L].
pub struct Crops {
    pub globals: Tensor<4>,
    pub locals: Option<Tensor<4>>,
    pub ncrops: usize,
}

impl Crops {
    /// The crops of pictures `start..start + n` of the batch (still crop-major).
    fn share(&self, start: usize, n: usize) -> Crops {
        let b = self.globals.dims()[0] / 2;
        let pick = |t: &Tensor<4>, views: usize| {
            Tensor::cat((0..views).map(|v| t.clone().narrow(0, v * b + start, n)).collect(), 0)
        };
        Crops {
            globals: pick(&self.globals, 2),
            locals: self.locals.as_ref().map(|l| pick(l, self.ncrops - 2)),
            ncrops: self.ncrops,
        }
    }
}

/// What one step measured: the DINO loss and the teacher's entropy (nats; see [`DinoLoss::forward`]).
#[derive(Debug, Clone, Copy)]
pub struct StepValues {
    pub loss: f64,
    pub teacher_entropy: f64,
}

/// What one replica hands back: its weighted loss and entropy (plain [1] tensors), the column
/// sum of its teacher outputs ([1, K]) and its gradients.
struct Share {
    loss: Tensor<1>,
    entropy: Tensor<1>,
    teacher_sum: Tensor<2>,
    grads: GradientsParams,
}

/// Forward, loss and backward of one replica on its share of the batch; `weight` is the share's
/// fraction of the batch's pictures.
fn replica_step(student: &Dino, teacher: &Dino, loss_fn: &DinoLoss, crops: Crops, weight: f64, teacher_temp: f64) -> Share {
    let Crops { globals, locals, ncrops } = crops;
    let teacher_out = teacher.forward_crops(globals.clone().inner(), None);
    let student_out = student.forward_crops(globals, locals);
    let (loss, entropy) = loss_fn.loss(student_out, teacher_out.clone(), ncrops, teacher_temp);
    let loss = loss.mul_scalar(weight);
    let grads = GradientsParams::from_grads(loss.backward(), student);
    Share { loss: loss.inner(), entropy: entropy.mul_scalar(weight), teacher_sum: teacher_out.sum_dim(0), grads }
}

/// Adds the gradients of `from` into `into`, parameter by parameter (the all-reduce sum).
struct SumGradients<'a> {
    into: &'a mut GradientsParams,
    from: GradientsParams,
}

impl ModuleVisitor for SumGradients<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.from.remove::<D>(param.id) {
            let sum = match self.into.remove::<D>(param.id) {
                Some(acc) => acc + g,
                None => g,
            };
            self.into.register(param.id, sum);
        }
    }
}

impl Share {
    /// Adds `other` into `self` (the all-reduce sum of losses, teacher sums and gradients).
    fn add(&mut self, other: Share, student: &Dino) {
        self.loss = self.loss.clone() + other.loss;
        self.entropy = self.entropy.clone() + other.entropy;
        self.teacher_sum = self.teacher_sum.clone() + other.teacher_sum;
        student.visit(&mut SumGradients { into: &mut self.grads, from: other.grads });
    }
}

/// How one step's batch is split: `replicas` data-parallel replicas (threads), each running
/// `accum_iter` micro-batches one after the other (gradient accumulation). 1 x 1 is the plain
/// single-device step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parallelism {
    pub replicas: usize,
    pub accum_iter: usize,
}

/// Run one step on `crops` split as `parallel` says. Returns the new state and the loss; a
/// non-finite loss is `Err(value)` and the state comes back unchanged (no update is applied).
pub fn train_step(
    mut state: TrainState,
    loss_fn: &mut DinoLoss,
    crops: Crops,
    step: &Step,
    parallel: Parallelism,
    phases: &mut Phases,
) -> (TrainState, Result<StepValues, f64>) {
    let b = crops.globals.dims()[0] / 2;
    let parts = (parallel.replicas.max(1) * parallel.accum_iter.max(1)).clamp(1, b.max(1));
    let share = if parts == 1 {
        // The teacher sees the global crops only, without gradients (plain tensors).
        let Crops { globals, locals, ncrops } = crops;
        let teacher_out = phases.time("teacher forward", || state.teacher.forward_crops(globals.clone().inner(), None));
        let student_out = phases.time("student forward", || state.student.forward_crops(globals, locals));
        let (loss, entropy) = phases.time("loss", || loss_fn.loss(student_out, teacher_out.clone(), ncrops, step.teacher_temp));
        let grads = phases.time("backward", || GradientsParams::from_grads(loss.backward(), &state.student));
        Share { loss: loss.inner(), entropy, teacher_sum: teacher_out.sum_dim(0), grads }
    } else {
        phases.time("replicas: forward, loss, backward", || {
            let (teacher, loss_fn_ref, student) = (&state.teacher, &*loss_fn, &state.student);
            // Micro-batches of pictures as even as possible; replica r takes `per_replica`
            // consecutive ones and runs them in turn.
            let bounds: Vec<(usize, usize)> =
                (0..parts).map(|i| (i * b / parts, (i + 1) * b / parts - i * b / parts)).collect();
            let per_replica = parts.div_ceil(parallel.replicas.max(1));
            let device = crops.globals.device();
            let run = |chunk: &[(usize, usize)], replica: &Dino| -> Share {
                let mut total: Option<Share> = None;
                for &(start, n) in chunk {
                    let s = replica_step(replica, teacher, loss_fn_ref, crops.share(start, n), n as f64 / b as f64, step.teacher_temp);
                    match total.as_mut() {
                        Some(t) => t.add(s, student),
                        None => total = Some(s),
                    }
                }
                // Every chunk holds at least one micro-batch (chunks of a non-empty list).
                total.unwrap_or_else(|| unreachable!("empty chunk"))
            };
            let mut chunks = bounds.chunks(per_replica);
            let first = chunks.next().unwrap_or_default();
            // Replica 0 runs on this thread, the others on their own; their results are summed
            // in replica order: the same sums whatever the thread timing.
            std::thread::scope(|scope| {
                let others: Vec<_> = chunks
                    .map(|chunk| {
                        let replica = student.clone().fork(&device);
                        scope.spawn(move || run(chunk, &replica))
                    })
                    .collect();
                let mut total = run(first, &student.clone().fork(&device));
                for handle in others {
                    total.add(handle.join().unwrap_or_else(|e| std::panic::resume_unwind(e)), student);
                }
                total
            })
        })
    };
    // One read-back for both values (each read waits for the device).
    let values = phases.time("loss read-back", || {
        Tensor::cat(vec![share.loss, share.entropy], 0).into_data().convert::<f64>().try_into_vec::<f64>().unwrap_or_default()
    });
    let (value, teacher_entropy) = (values.first().copied().unwrap_or(f64::NAN), values.get(1).copied().unwrap_or(f64::NAN));
    if !value.is_finite() {
        return (state, Err(value));
    }
    loss_fn.update_center(share.teacher_sum, 2 * b);
    state.student = phases.time("optimizer (AdamW + clipping)", || state.optimizer.step(state.student, share.grads, step));
    state.teacher = phases.time("teacher EMA", || ema_update(state.teacher, &state.student, step.momentum));
    (state, Ok(StepValues { loss: value, teacher_entropy }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;
    use burn::tensor::{Device, Distribution};
    use dino_shared::state_dict::to_state_dict;

    /// Losses, student, teacher and centre after `steps` steps on the same crops.
    fn run(parallel: Parallelism, batch: usize, steps: u64) -> (Vec<f64>, Vec<(String, Vec<f32>)>) {
        let mut cfg = Preset::Small.config();
        (cfg.batch_size_per_gpu, cfg.out_dim, cfg.local_crops_number, cfg.norm_last_layer) = (batch, 64, 2, true);
        let device = Device::flex();
        let ad = device.clone().autodiff();
        let mut state = TrainState::new(&cfg, &device).unwrap();
        let mut loss_fn = DinoLoss::new(cfg.out_dim, &device);
        let (g, l) = (cfg.global_crops_size, cfg.local_crops_size);
        let mut losses = Vec::new();
        for i in 0..steps {
            ad.seed(100 + i);
            let globals = Tensor::random([2 * batch, 3, g, g], Distribution::Normal(0.0, 1.0), &ad);
            let locals = Some(Tensor::random([2 * batch, 3, l, l], Distribution::Normal(0.0, 1.0), &ad));
            // A small lr: Adam divides each gradient by its own magnitude, so a gradient that is
            // zero in exact arithmetic (the key bias: softmax ignores a constant added to a
            // query's logits) gets float noise of ~1e-10 turned into updates of up to lr x 1e-2,
            // different for any other summation order (as with torch on several GPUs).
            let step = Step {
                lr: 1e-4,
                weight_decay: 0.04,
                momentum: 0.9,
                teacher_temp: 0.04,
                clip_grad: 3.0,
                freeze_last_layer: i == 0,
            };
            let (s, v) = train_step(state, &mut loss_fn, Crops { globals, locals, ncrops: 4 }, &step, parallel, &mut Phases::new(false, &ad));
            state = s;
            losses.push(v.unwrap().loss);
        }
        let mut params: Vec<(String, Vec<f32>)> = Vec::new();
        for (prefix, sd) in [("student", to_state_dict(&state.student)), ("teacher", to_state_dict(&state.teacher))] {
            params.extend(sd.iter().map(|(k, t)| (format!("{prefix}.{k}"), t.data.clone())));
        }
        params.push(("center".into(), loss_fn.center.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()));
        params.sort_by(|a, b| a.0.cmp(&b.0));
        (losses, params)
    }

    /// Data parallel and gradient accumulation equal one device (issue: equivalence-tested): 2
    /// and 3 replicas, 2 and 3 accumulated micro-batches and 2 x 2, on uneven shares of a batch
    /// of 5, give the losses and every parameter of the single-replica step (1e-5; see the
    /// loop for the few elements Adam's normalisation of noise-sized gradients moves further).
    #[test]
    fn replicas_and_accumulation_equal_one_device() {
        let (losses, params) = run(Parallelism { replicas: 1, accum_iter: 1 }, 5, 3);
        for (replicas, accum_iter) in [(2, 1), (3, 1), (1, 2), (1, 3), (2, 2)] {
            let parallel = Parallelism { replicas, accum_iter };
            let (l, p) = run(parallel, 5, 3);
            for (a, b) in losses.iter().zip(&l) {
                assert!((a - b).abs() <= 1e-5 * a.abs(), "{parallel:?}: loss {b} vs {a}");
            }
            assert_eq!(p.len(), params.len());
            // Every element within 1e-5, but for at most 1 in 10^4 of a tensor (at least 2):
            // an element whose gradient is float noise (e.g. 1e-9 where the exact value is tiny)
            // gets an Adam update of any size up to lr per step, and any other summation order
            // (a replica's share, a matrix product's blocking) gives it another. Those stay
            // within the most Adam can move an element: lr x 3 steps on each side.
            for ((name, a), (_, b)) in params.iter().zip(&p) {
                let diffs: Vec<f32> = a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect();
                let outliers = diffs.iter().filter(|&&d| d > 1e-5).count();
                let worst = diffs.iter().copied().fold(0.0f32, f32::max);
                let allowed = (a.len() / 10_000).max(2);
                assert!(
                    outliers <= allowed && worst <= 6e-4,
                    "{parallel:?}: {name}: {outliers} of {} elements differ by more than 1e-5 (at most \
                     {allowed}), the largest by {worst}",
                    a.len()
                );
            }
        }
    }
}
