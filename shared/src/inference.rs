//! Running the backbone on preprocessed pictures: the glue both the CLI and the web page use.

use burn::tensor::{Device, Tensor, TensorData};

use crate::attention_maps::AttentionMaps;
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

/// The per-head CLS attention maps of one picture from the last block's attention read back
/// from the device (`features_and_attention`'s second output, [1, heads, N+1, N+1]): official
/// `visualize_attention.py`'s `attentions[0, :, 0, 1:]` on the patch grid of `input`. The CLI
/// (`dino attention`, `dino train`'s maps) and the page both go through here.
///
/// Errors: the tensor's shape does not match the picture's patch grid, or it holds no floats.
pub fn attention_maps(attn: TensorData, model: &VisionTransformer, input: &ModelInput) -> Result<AttentionMaps, String> {
    let (gh, gw) = grid_of(model, input);
    let n1 = gh * gw + 1;
    let heads = match attn.shape().as_slice() {
        &[1, heads, a, b] if a == n1 && b == n1 => heads,
        shape => return Err(format!("attention of shape {shape:?} does not fit a {gh} x {gw} patch grid")),
    };
    let values = attn.convert::<f32>().try_into_vec::<f32>().map_err(|e| format!("attention values: {e:?}"))?;
    Ok(AttentionMaps::from_last_attention(&values, heads, gh, gw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VitConfig;

    /// A 2 x 3 picture grid gives maps of 2 x 3 per head; attention of another shape is an
    /// error, not a panic.
    #[test]
    fn attention_maps_take_the_picture_grid() {
        let device = Device::flex();
        let model = VisionTransformer::new(&VitConfig::custom(8, 4, 12, 1, 3), &device);
        let input = ModelInput { data: vec![0.0; 3 * 8 * 12], height: 8, width: 12, image: image::RgbImage::new(12, 8) };
        let (_, attn) = features_and_attention(&model, &input, &device);
        let maps = attention_maps(attn.into_data(), &model, &input).unwrap();
        assert_eq!((maps.heads, maps.grid_h, maps.grid_w, maps.values.len()), (3, 2, 3, 18));
        let wrong = TensorData::new(vec![0.0f32; 3 * 5 * 5], [1, 3, 5, 5]);
        let err = attention_maps(wrong, &model, &input).unwrap_err();
        assert!(err.contains("2 x 3 patch grid"), "{err}");
    }
}
