//! Running the backbone on preprocessed pictures: the glue both the CLI and the web page use.

use burn::tensor::{Device, Tensor, TensorData};

use crate::attention_maps::AttentionMaps;
use crate::views::PatchFeatures;
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

/// The most memory one block's attention matrix [heads, T, T] (f32) of one picture may take.
pub const MAX_ATTENTION_BYTES: u64 = 2 << 30;

/// Whether a `height x width` input fits the model's memory bound: each block holds a
/// [heads, T, T] attention matrix (T = prefix tokens + patches), which grows with the fourth
/// power of the side.
///
/// # Errors
/// The matrix would exceed [`MAX_ATTENTION_BYTES`]; the message names `--image_size`.
pub fn check_input_size(model: &VisionTransformer, height: usize, width: usize) -> Result<(), String> {
    let cfg = model.config();
    let p = cfg.patch_size.max(1);
    let tokens = (cfg.num_prefix_tokens() + (height / p) * (width / p)) as u64;
    let bytes = (cfg.num_heads as u64).saturating_mul(tokens).saturating_mul(tokens).saturating_mul(4);
    if bytes > MAX_ATTENTION_BYTES {
        return Err(format!(
            "--image_size: a {height}x{width} px input is {} patches of {p} px; one block's attention would take {:.1} GB (at most {} GB): choose a smaller size",
            (height / p) * (width / p),
            bytes as f64 / 1e9,
            MAX_ATTENTION_BYTES >> 30
        ));
    }
    Ok(())
}

/// CLS features [1, dim] and block `block`'s attention [1, heads, T, T] of one picture
/// (T = prefix tokens + patches).
///
/// # Errors
/// `block` is not a block of the model (e.g. a `--layer` flag out of range), or the input is
/// too large for the model ([`check_input_size`]).
pub fn features_and_attention(
    model: &VisionTransformer,
    input: &ModelInput,
    block: Option<usize>,
    device: &Device,
) -> Result<(Tensor<2>, Tensor<4>), String> {
    let depth = model.config().depth;
    let block = checked_block(block, depth)?;
    check_input_size(model, input.height, input.width)?;
    Ok(model.forward_with_attention(batch_tensor(&[input], device), block))
}

/// The block index for a 0-based `layer` (`None`: the last block).
///
/// # Errors
/// `layer` >= `depth`.
pub fn checked_block(layer: Option<usize>, depth: usize) -> Result<usize, String> {
    match layer {
        None => Ok(depth - 1),
        Some(l) if l < depth => Ok(l),
        Some(l) => Err(format!("--layer: layer {l} does not exist: the model has {depth} blocks (0 to {})", depth - 1)),
    }
}

/// Patch grid (rows, columns) of a picture.
pub fn grid_of(model: &VisionTransformer, input: &ModelInput) -> (usize, usize) {
    let p = model.config().patch_size;
    (input.height / p, input.width / p)
}

/// The per-head CLS attention maps of one picture from an attention read back from the device
/// (`features_and_attention`'s second output, [1, heads, T, T]): official
/// `visualize_attention.py`'s `attentions[0, :, 0, 1:]` on the patch grid of `input`, after
/// CLS and any DINOv2 registers. The CLI (`dino attention`, `dino train`'s maps) and the page
/// all go through here.
///
/// Errors: the tensor's shape does not match the picture's patch grid, or it holds no floats.
pub fn attention_maps(attn: TensorData, model: &VisionTransformer, input: &ModelInput) -> Result<AttentionMaps, String> {
    let (gh, gw) = grid_of(model, input);
    let prefix = model.config().num_prefix_tokens();
    let t = gh * gw + prefix;
    let heads = match attn.shape().as_slice() {
        &[1, heads, a, b] if a == t && b == t => heads,
        shape => return Err(format!("attention of shape {shape:?} does not fit a {gh} x {gw} patch grid")),
    };
    let values = attn.convert::<f32>().try_into_vec::<f32>().map_err(|e| format!("attention values: {e:?}"))?;
    Ok(AttentionMaps::from_attention(&values, heads, prefix, gh, gw))
}

/// The last layer's normalised patch tokens of one picture, [1, patches, dim] (official
/// DINOv2 `x_norm_patchtokens`: after CLS and the registers).
///
/// # Errors
/// The input is too large for the model ([`check_input_size`]).
pub fn patch_tokens(model: &VisionTransformer, input: &ModelInput, device: &Device) -> Result<Tensor<3>, String> {
    check_input_size(model, input.height, input.width)?;
    Ok(model.patch_tokens(model.forward_tokens(batch_tensor(&[input], device))))
}

/// Patch tokens read back from the device (`patch_tokens`' output) as [`PatchFeatures`] on the
/// picture's patch grid: the input of the PCA and similarity views.
///
/// Errors: the tensor's shape does not match the picture's patch grid.
pub fn patch_features(tokens: TensorData, model: &VisionTransformer, input: &ModelInput) -> Result<PatchFeatures, String> {
    let (gh, gw) = grid_of(model, input);
    let dim = match tokens.shape().as_slice() {
        &[1, n, dim] if n == gh * gw => dim,
        shape => return Err(format!("patch tokens of shape {shape:?} do not fit a {gh} x {gw} patch grid")),
    };
    let values = tokens.convert::<f32>().try_into_vec::<f32>().map_err(|e| format!("patch tokens: {e:?}"))?;
    PatchFeatures::new(gh, gw, dim, values)
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
        let (_, attn) = features_and_attention(&model, &input, None, &device).unwrap();
        let maps = attention_maps(attn.into_data(), &model, &input).unwrap();
        assert_eq!((maps.heads, maps.grid_h, maps.grid_w, maps.values.len()), (3, 2, 3, 18));
        let wrong = TensorData::new(vec![0.0f32; 3 * 5 * 5], [1, 3, 5, 5]);
        let err = attention_maps(wrong, &model, &input).unwrap_err();
        assert!(err.contains("2 x 3 patch grid"), "{err}");
    }
}
