//! Wall time per phase of a training step (`dino train --profile`, `dino bench step --profile`).

use std::time::Instant;

use burn::tensor::Device;

/// The device is synchronised after each phase so that queued GPU work is charged to the phase
/// that queued it (slower: for profiling only; off, `time` just runs the closure).
pub struct Phases<'a> {
    on: bool,
    device: &'a Device,
    pub times: Vec<(&'static str, f64)>,
}

impl<'a> Phases<'a> {
    pub fn new(on: bool, device: &'a Device) -> Self {
        Self { on, device, times: Vec::new() }
    }

    pub fn time<T>(&mut self, name: &'static str, f: impl FnOnce() -> T) -> T {
        if !self.on {
            return f();
        }
        let start = Instant::now();
        let out = f();
        let _ = self.device.sync();
        let secs = start.elapsed().as_secs_f64();
        match self.times.iter_mut().find(|(n, _)| *n == name) {
            Some((_, t)) => *t += secs,
            None => self.times.push((name, secs)),
        }
        out
    }

    pub fn total(&self) -> f64 {
        self.times.iter().map(|(_, t)| t).sum()
    }

    pub fn report(&self, what: &str) {
        if !self.on {
            return;
        }
        let total = self.total();
        eprintln!("profile of {what} ({total:.2} s):");
        for (name, t) in &self.times {
            eprintln!("  {name:<32} {t:>8.3} s {:>5.1}%", 100.0 * t / total);
        }
    }
}
