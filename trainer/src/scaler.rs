//! Dynamic loss scaling for f16 training (official `--use_fp16`: `torch.cuda.amp.GradScaler()`
//! with its defaults, torch/amp/grad_scaler.py).
//!
//! f16 has 5 exponent bits: gradients below 2^-24 flush to zero. The loss is multiplied by
//! `scale` before the backward pass, and the gradients divided by it before clipping and the
//! optimizer (official `fp16_scaler.unscale_(optimizer)` before `clip_gradients`). A step whose
//! gradients hold an inf or a NaN is skipped (no AdamW update, its state untouched: torch's
//! `scaler.step` does not call `optimizer.step`) and halves the scale; 2000 steps in a row
//! without one double it. bf16 has f32's exponent range and needs none of this.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::model::Dino;

/// torch's `GradScaler` defaults, which official DINO keeps.
pub const INIT_SCALE: f64 = 65536.0;
pub const GROWTH_FACTOR: f64 = 2.0;
pub const BACKOFF_FACTOR: f64 = 0.5;
pub const GROWTH_INTERVAL: u64 = 2000;

/// The scaler's state (torch's `_scale` and `_growth_tracker`), saved in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GradScaler {
    /// The factor the loss is multiplied by before the backward pass.
    pub scale: f64,
    /// Steps in a row without an inf or NaN gradient since the last change of `scale`.
    pub growth_tracker: u64,
}

impl Default for GradScaler {
    fn default() -> Self {
        Self { scale: INIT_SCALE, growth_tracker: 0 }
    }
}

impl GradScaler {
    /// A state the update rule can reach: a finite scale > 0, a tracker below the interval.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(format!("scale must be a finite number > 0, got {}", self.scale));
        }
        if self.growth_tracker >= GROWTH_INTERVAL {
            return Err(format!("growth_tracker must be below {GROWTH_INTERVAL}, got {}", self.growth_tracker));
        }
        Ok(())
    }

    /// After a step: `found_inf` says whether any gradient was inf or NaN (torch's `update`).
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= BACKOFF_FACTOR;
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == GROWTH_INTERVAL {
                self.scale *= GROWTH_FACTOR;
                self.growth_tracker = 0;
            }
        }
    }
}

/// Divides every gradient of `student` by `scale` (torch's `unscale_`: multiplied by the f32
/// reciprocal, exact for the powers of two the scale takes) and returns, as a [1] tensor left on
/// the device, the number of gradient tensors holding an inf or a NaN (0: all finite; `None`:
/// no gradients).
pub fn unscale(grads: &mut GradientsParams, student: &Dino, scale: f64) -> Option<Tensor<1>> {
    let mut visitor = Unscale { grads, inv_scale: (1.0 / scale) as f32 as f64, nonfinite: None };
    student.visit(&mut visitor);
    visitor.nonfinite
}

struct Unscale<'a> {
    grads: &'a mut GradientsParams,
    inv_scale: f64,
    nonfinite: Option<Tensor<1>>,
}

impl ModuleVisitor for Unscale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(g) = self.grads.remove::<D>(param.id) else { return };
        let g = g.mul_scalar(self.inv_scale);
        let bad = g.clone().is_finite().all().bool_not().float().reshape([1]);
        self.nonfinite = Some(match self.nonfinite.take() {
            Some(n) => n + bad,
            None => bad,
        });
        self.grads.register(param.id, g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torch's update rule: halve on an inf, double after GROWTH_INTERVAL clean steps, the
    /// tracker reset by either.
    #[test]
    fn scale_follows_torch_update_rule() {
        let mut s = GradScaler::default();
        s.update(true);
        assert_eq!((s.scale, s.growth_tracker), (32768.0, 0));
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(false);
        }
        assert_eq!((s.scale, s.growth_tracker), (32768.0, GROWTH_INTERVAL - 1));
        s.update(false);
        assert_eq!((s.scale, s.growth_tracker), (65536.0, 0));
        s.update(false);
        s.update(true);
        assert_eq!((s.scale, s.growth_tracker), (32768.0, 0));
    }

    /// A checkpoint's scaler must be one the rule can reach (else: a one-line error on resume).
    #[test]
    fn unreachable_states_are_refused() {
        assert!(GradScaler::default().validate().is_ok());
        for (scale, growth_tracker) in [(0.0, 0), (-1.0, 0), (f64::NAN, 0), (f64::INFINITY, 0), (1.0, GROWTH_INTERVAL)] {
            assert!(GradScaler { scale, growth_tracker }.validate().is_err(), "{scale} {growth_tracker}");
        }
    }
}
