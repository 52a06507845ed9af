//! Per-iteration schedules (official `utils.cosine_scheduler` and the teacher temperature).

/// `final + 0.5 (base - final)(1 + cos(pi i / N))` after a linear warm-up from
/// `start_warmup_value` to `base` over `warmup_epochs`; one value per iteration.
pub fn cosine_scheduler(
    base: f64,
    final_value: f64,
    epochs: usize,
    niter_per_ep: usize,
    warmup_epochs: usize,
    start_warmup_value: f64,
) -> Vec<f64> {
    let warmup_iters = warmup_epochs * niter_per_ep;
    let total = epochs * niter_per_ep;
    let mut out = Vec::with_capacity(total);
    // np.linspace(start, base, warmup_iters): both ends included.
    for i in 0..warmup_iters {
        let t = if warmup_iters > 1 { i as f64 / (warmup_iters - 1) as f64 } else { 0.0 };
        out.push(start_warmup_value + (base - start_warmup_value) * t);
    }
    let n = total.saturating_sub(warmup_iters);
    for i in 0..n {
        out.push(final_value + 0.5 * (base - final_value) * (1.0 + (std::f64::consts::PI * i as f64 / n as f64).cos()));
    }
    out
}

/// Teacher temperature per epoch: linear warm-up `warmup` -> `final_temp` over `warmup_epochs`
/// (np.linspace, ends included), then constant.
pub fn teacher_temp_schedule(warmup: f64, final_temp: f64, warmup_epochs: usize, epochs: usize) -> Vec<f64> {
    let mut out: Vec<f64> = (0..warmup_epochs)
        .map(|i| {
            let t = if warmup_epochs > 1 { i as f64 / (warmup_epochs - 1) as f64 } else { 0.0 };
            warmup + (final_temp - warmup) * t
        })
        .collect();
    out.resize(epochs.max(warmup_epochs), final_temp);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dino_shared::weights::parse_safetensors;

    /// Values written by the official `utils.cosine_scheduler` (tools/reference.py).
    #[test]
    fn cosine_schedules_equal_the_official_formula() {
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/schedules.safetensors")).unwrap();
        let (refs, _) = parse_safetensors(&bytes).unwrap();
        let ours = [
            ("lr", cosine_scheduler(5e-4 * 64.0 / 256.0, 1e-6, 10, 7, 2, 0.0)),
            ("wd", cosine_scheduler(0.04, 0.4, 10, 7, 0, 0.0)),
            ("momentum", cosine_scheduler(0.996, 1.0, 10, 7, 0, 0.0)),
        ];
        for (name, values) in ours {
            let want = &refs[name].data;
            assert_eq!(values.len(), want.len(), "{name}");
            for (i, (a, b)) in values.iter().zip(want).enumerate() {
                assert!((*a as f32 - b).abs() <= 1e-7 * b.abs().max(1.0), "{name}[{i}]: {a} vs {b}");
            }
        }
    }

    #[test]
    fn teacher_temperature_warms_up_linearly() {
        let t = teacher_temp_schedule(0.04, 0.07, 3, 10);
        assert_eq!(t.len(), 10);
        assert!((t[0] - 0.04).abs() < 1e-12 && (t[1] - 0.055).abs() < 1e-12 && (t[2] - 0.07).abs() < 1e-12);
        assert!(t[3..].iter().all(|&v| v == 0.07));
    }
}
