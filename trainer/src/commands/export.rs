//! `dino export`: any supported weights file -> one compact safetensors file in the timm /
//! official key layout with the architecture in its metadata (what the web page loads).

use std::path::PathBuf;

use burn::tensor::Device;
use dino_shared::weights::{export_safetensors, ExportDType};

use super::ModelArgs;
use crate::fsutil::write_atomically;

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum Precision {
    F32,
    F16,
}

#[derive(clap::Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The safetensors file to write (atomically: a stopped export leaves no partial file).
    #[arg(long)]
    pub output: PathBuf,
    /// f16 halves the file; the attention maps stay within 1e-3 of f32.
    #[arg(long, value_enum, default_value_t = Precision::F16)]
    pub dtype: Precision,
    /// Also write the DINO head (only the backbone is needed for features and attention).
    #[arg(long)]
    pub with_head: bool,
}

pub fn run(args: &ExportArgs) -> anyhow::Result<()> {
    // Export is a host-side conversion: the cpu backend is always there.
    let device = Device::flex();
    let (vit, head) = args.model.backbone_and_head(&device)?;
    let head = if args.with_head { head } else { None };
    let dtype = match args.dtype {
        Precision::F32 => ExportDType::F32,
        Precision::F16 => ExportDType::F16,
    };
    let bytes = export_safetensors(&vit, head.as_ref(), dtype);
    write_atomically(&args.output, &bytes)?;
    eprintln!(
        "wrote {} ({}, {:?}, {:.1} MB)",
        args.output.display(),
        vit.config().model_name(),
        args.dtype,
        bytes.len() as f64 / 1e6
    );
    Ok(())
}
