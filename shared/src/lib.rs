//! dino-shared: the model code of dino-rs, used by the native trainer and the web page alike.
//!
//! - [`vit::VisionTransformer`] and [`head::DinoHead`]: DINO's ViT and projection head,
//!   numerically equal to the official PyTorch code (see the parity tests).
//! - [`weights`]: official DINO / DINOv2 `.pth` checkpoints, timm and HF layouts
//!   ([`layouts`]), export.
//! - [`preprocess`]: image -> normalised tensor, identical on native and web.
//! - [`attention_maps`]: per-head CLS attention, threshold masks, colour maps and overlays.
//! - [`views`]: PCA of patch features and patch similarity.
//! - [`autocast`]: the matrix products in f16 / bf16 for mixed-precision training.

pub mod attention;
pub mod attention_maps;
pub mod autocast;
pub mod config;
pub mod head;
pub mod inference;
mod init;
pub mod layouts;
pub mod linear;
pub mod pos_embed;
pub mod preprocess;
pub mod state_dict;
pub mod views;
pub mod vit;
pub mod weights;

pub use config::{HeadConfig, VitConfig};
pub use head::DinoHead;
pub use vit::VisionTransformer;
