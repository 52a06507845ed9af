//! Student and teacher: backbone + DINO head, run the way official `MultiCropWrapper` runs them
//! (the backbone once per resolution group, the head once on all CLS features).

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use dino_shared::{DinoHead, HeadConfig, VisionTransformer, VitConfig};

#[derive(Module, Debug)]
pub struct Dino {
    pub backbone: VisionTransformer,
    pub head: DinoHead,
}

impl Dino {
    pub fn new(vit: &VitConfig, head: &HeadConfig, device: &Device) -> Self {
        Self { backbone: VisionTransformer::new(vit, device), head: DinoHead::new(head, device) }
    }

    /// `globals`: [2B, 3, G, G]; `locals`: [N*B, 3, L, L] or none. Returns [(2+N)B, out_dim],
    /// crop-major (all pictures' first crop, then all second crops, ...).
    pub fn forward_crops(&self, globals: Tensor<4>, locals: Option<Tensor<4>>) -> Tensor<2> {
        let mut features = vec![self.backbone.forward(globals)];
        if let Some(locals) = locals {
            features.push(self.backbone.forward(locals));
        }
        self.head.forward(Tensor::cat(features, 0))
    }
}
