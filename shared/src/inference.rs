//! Running the backbone on preprocessed pictures: the glue both the CLI and the web page use.

use burn::tensor::{Device, Tensor, TensorData};

use crate::preprocess::ModelInput;
use crate::vit::VisionTransformer;

/// Stack equally sized inputs into a [B, 3, H, W] tensor.
pub fn batch_tensor(inputs: &[&ModelInput], device: &Device) -> Tensor<4> {
    let (h, w) = (inputs[0].height, inputs[0].width);
    let mut data = Vec::with_capacity(inputs.len() * 3 * h * w);
    for x in inputs {
        assert_eq!((x.height, x.width), (h, w), "inputs of different sizes in one batch");
        data.extend_from_slice(&x.data);
    }
    Tensor::from_data(TensorData::new(data, [inputs.len(), 3, h, w]), device)
}

/// CLS features [1, dim] and last-block attention [1, heads, N+1, N+1] of one picture.
pub fn features_and_attention(model: &VisionTransformer, input: &ModelInput, device: &Device) -> (Tensor<2>, Tensor<4>) {
    model.forward_with_last_attention(batch_tensor(&[input], device))
}

/// Patch grid (rows, columns) of a picture.
pub fn grid_of(model: &VisionTransformer, input: &ModelInput) -> (usize, usize) {
    let p = model.config().patch_size;
    (input.height / p, input.width / p)
}
