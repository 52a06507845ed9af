//! One DINO training step, the body of official `train_one_epoch`: teacher forward on the two
//! global crops, student forward on every crop, DINO loss, backward (student only), AdamW with
//! clipping, EMA of the teacher. `dino train` and `dino bench step` run this same function.

use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::checkpoint::TrainState;
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

/// Run one step. Returns the new state and the loss; a non-finite loss is `Err(value)` and the
/// state comes back unchanged (no update is applied).
pub fn train_step(
    mut state: TrainState,
    loss_fn: &mut DinoLoss,
    crops: Crops,
    epoch: usize,
    step: &Step,
    momentum: f64,
    phases: &mut Phases,
) -> (TrainState, Result<f64, f64>) {
    let Crops { globals, locals, ncrops } = crops;
    // The teacher sees the global crops only, without gradients (plain tensors).
    let teacher_out = phases.time("teacher forward", || state.teacher.forward_crops(globals.clone().inner(), None));
    let student_out = phases.time("student forward", || state.student.forward_crops(globals, locals));
    let loss = phases.time("loss", || loss_fn.forward(student_out, teacher_out, ncrops, epoch));
    let value = phases.time("loss read-back", || loss.clone().into_scalar::<f32>() as f64);
    if !value.is_finite() {
        return (state, Err(value));
    }
    let grads = phases.time("backward", || GradientsParams::from_grads(loss.backward(), &state.student));
    state.student = phases.time("optimizer (AdamW + clipping)", || state.optimizer.step(state.student, grads, step));
    state.teacher = phases.time("teacher EMA", || ema_update(state.teacher, &state.student, momentum));
    (state, Ok(value))
}
