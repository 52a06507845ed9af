//! `--device`: wgpu (any GPU through Vulkan / Metal / DX12, NVIDIA ones included) or
//! cpu (Burn's flex backend). Without a usable GPU adapter we fall back to cpu and say so.

use burn::tensor::{Device, FloatDType};
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A hardware GPU through wgpu when there is one, else cpu.
    Auto,
    /// wgpu on whatever adapter exists, a software one (Mesa lavapipe) included.
    Wgpu,
    /// Burn's flex CPU backend.
    Cpu,
}

/// Resolve the choice to a device, printing what runs (on stderr).
pub fn select(choice: DeviceChoice) -> Device {
    match choice {
        DeviceChoice::Cpu => cpu("--device cpu"),
        DeviceChoice::Wgpu | DeviceChoice::Auto => match Device::wgpu_options().init_with_setup() {
            Ok((device, setup)) => {
                let info = setup.adapter.get_info();
                let software = info.device_type == burn::tensor::wgpu::wgpu::DeviceType::Cpu;
                if software && choice == DeviceChoice::Auto {
                    cpu(&format!("only a software GPU adapter ({}); --device wgpu forces it", info.name))
                } else {
                    eprintln!("device: wgpu on {} ({:?}, {:?})", info.name, info.device_type, info.backend);
                    device
                }
            }
            Err(e) => cpu(&format!("no GPU adapter ({e})")),
        },
    }
}

/// Whether `device` is Burn's flex CPU backend (plain or autodiff).
pub fn is_cpu(device: &Device) -> bool {
    format!("{device:?}").to_lowercase().contains("flex")
}

/// The data-parallel replicas to run on `device` for a `--replicas` value (0: auto, 2 on the
/// cpu, 1 on a GPU).
pub fn replicas(requested: usize, device: &Device) -> usize {
    match requested {
        0 if is_cpu(device) => 2,
        0 => 1,
        n => n,
    }
}

/// The matrix-product dtype of `--use_fp16` / `--use_bf16` on `device`: an error naming the
/// flag when the device cannot compute in it (wgpu: WGSL has no bf16, and f16 needs the
/// adapter's `shader-f16` feature).
pub fn check_autocast(device: &Device, dtype: Option<FloatDType>) -> anyhow::Result<()> {
    let Some(dtype) = dtype else { return Ok(()) };
    let flag = if dtype == FloatDType::F16 { "--use_fp16" } else { "--use_bf16" };
    anyhow::ensure!(
        device.supports_dtype(dtype),
        "{flag}: this device ({}) has no {dtype:?} arithmetic; use --device cpu or drop {flag}",
        if is_cpu(device) { "cpu" } else { "wgpu" }
    );
    Ok(())
}

/// Bytes of memory this machine can still hand out: `MemAvailable + SwapFree` from Linux's
/// `/proc/meminfo`; `None` where there is no such file or it cannot be read.
pub fn available_memory() -> Option<u128> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| -> Option<u128> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].trim().trim_end_matches("kB").trim().parse::<u128>().ok()
    };
    Some(kib("MemAvailable:")?.saturating_add(kib("SwapFree:").unwrap_or(0)).saturating_mul(1024))
}

/// On the cpu device, whether one training step's backward pass fits the memory this machine
/// has ([`saved_activation_bytes`](crate::step::saved_activation_bytes), a lower bound, against
/// [`available_memory`]): a step that cannot fit is one line before the run, not an allocation
/// failure or the kernel's OOM killer mid-epoch. Not checked on wgpu (no memory figure there) or
/// where `/proc/meminfo` is missing. The official code has no such check (CUDA raises its
/// out-of-memory error in the first step).
///
/// # Errors
/// The lower bound exceeds the available memory; the message names `--batch_size_per_gpu` and
/// `--local_crops_number`.
pub fn check_step_memory(device: &Device, cfg: &crate::config::TrainConfig) -> anyhow::Result<()> {
    if !is_cpu(device) {
        return Ok(());
    }
    let needed = crate::step::saved_activation_bytes(cfg)?;
    let Some(available) = available_memory() else { return Ok(()) };
    let gib = |bytes: u128| bytes as f64 / (1u64 << 30) as f64;
    anyhow::ensure!(
        needed <= available,
        "--batch_size_per_gpu {} with --local_crops_number {}: one training step keeps at least {:.1} GiB of activations for its backward pass, more than the {:.1} GiB of memory available (MemAvailable + SwapFree); lower --batch_size_per_gpu (--accum_iter keeps the batch), --local_crops_number or the model's size",
        cfg.batch_size_per_gpu,
        cfg.local_crops_number,
        gib(needed),
        gib(available),
    );
    Ok(())
}

fn cpu(why: &str) -> Device {
    eprintln!("device: cpu (flex): {why}");
    Device::flex()
}
