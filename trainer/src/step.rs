//! One DINO training step, the body of official `train_one_epoch`: teacher forward on the two
//! global crops, student forward on every crop, DINO loss, backward (student only), AdamW with
//! clipping, EMA of the teacher. `dino train` and `dino bench step` run this same function.

use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::train::TrainState;
use crate::ema::ema_update;
use crate::loss::DinoLoss;
use crate::optim::Step;
use crate::profile::Phases;

/// The crops of one batch on the autodiff device: `globals` [2B, 3, G, G], `locals` [NB, 3, L, L].
pub struct Crops {
    pub globals: Tensor<4>,
    pub locals: Option<Tensor<4>>,
    pub ncrops: usize,
}

/// What one step measured: the DINO loss and the teacher's entropy (nats; see [`DinoLoss::forward`]).
#[derive(Debug, Clone, Copy)]
pub struct StepValues {
    pub loss: f64,
    pub teacher_entropy: f64,
}

/// Run one step. Returns the new state and the loss; a non-finite loss is `Err(value)` and the
/// state comes back unchanged (no update is applied).
pub fn train_step(
    mut state: TrainState,
    loss_fn: &mut DinoLoss,
    crops: Crops,
    step: &Step,
    phases: &mut Phases,
) -> (TrainState, Result<StepValues, f64>) {
    let Crops { globals, locals, ncrops } = crops;
    // The teacher sees the global crops only, without gradients (plain tensors).
    let teacher_out = phases.time("teacher forward", || state.teacher.forward_crops(globals.clone().inner(), None));
    let student_out = phases.time("student forward", || state.student.forward_crops(globals, locals));
    let (loss, entropy) = phases.time("loss", || loss_fn.forward(student_out, teacher_out, ncrops, step.teacher_temp));
    // One read-back for both values (each read waits for the device).
    let values = phases.time("loss read-back", || {
        Tensor::cat(vec![loss.clone().inner(), entropy], 0).into_data().convert::<f64>().try_into_vec::<f64>().unwrap_or_default()
    });
    let (value, teacher_entropy) = (values.first().copied().unwrap_or(f64::NAN), values.get(1).copied().unwrap_or(f64::NAN));
    if !value.is_finite() {
        return (state, Err(value));
    }
    let grads = phases.time("backward", || GradientsParams::from_grads(loss.backward(), &state.student));
    state.student = phases.time("optimizer (AdamW + clipping)", || state.optimizer.step(state.student, grads, step));
    state.teacher = phases.time("teacher EMA", || ema_update(state.teacher, &state.student, step.momentum));
    (state, Ok(StepValues { loss: value, teacher_entropy }))
}
