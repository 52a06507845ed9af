//! Running the backbone on preprocessed pictures: the glue both the CLI and the web page use.

use burn::tensor::{Device, Tensor, TensorData};

use crate::attention_maps::AttentionMaps;
use crate::views::PatchFeatures;
use crate::preprocess::ModelInput;
use crate::config::VitConfig;
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

/// The most memory (bytes) one tensor of a block's forward pass may take, over all the inputs
/// of one forward pass: the attention matrices [B, heads, T, T], the MLP's hidden activations
/// [B, T, hidden] and the input [B, 3, H, W] (f32). 2 GiB.
pub const MAX_ACTIVATION_BYTES: u64 = 2 << 30;

/// Bytes (f32) of the largest tensor a block holds for one `height x width` input: the
/// attention [heads, T, T] (T = prefix tokens + patches: it grows with the fourth power of the
/// side), the MLP's hidden activations [T, hidden], or the input [3, H, W] (large for few
/// patches). In u128, saturating: no size overflows it.
pub fn activation_bytes(cfg: &VitConfig, height: usize, width: usize) -> u128 {
    let p = cfg.patch_size.max(1) as u128;
    let (h, w) = (height as u128, width as u128);
    let tokens = ((h / p) * (w / p)).saturating_add(cfg.num_prefix_tokens() as u128);
    let attention = tokens.saturating_mul(tokens).saturating_mul(cfg.num_heads as u128);
    let mlp = tokens.saturating_mul(cfg.mlp_hidden() as u128);
    let input = (h * w).saturating_mul(3);
    attention.max(mlp).max(input).saturating_mul(4)
}

/// How many `height x width` inputs one forward pass may take within [`MAX_ACTIVATION_BYTES`]
/// (at least 1): the evaluation commands split their batches to it, which changes no feature.
pub fn max_batch(cfg: &VitConfig, height: usize, width: usize) -> usize {
    let per_input = activation_bytes(cfg, height, width).max(1);
    usize::try_from(u128::from(MAX_ACTIVATION_BYTES) / per_input).unwrap_or(usize::MAX).max(1)
}

/// Whether `count` inputs of `height x width` fit one forward pass: the largest tensor of a
/// block at most [`MAX_ACTIVATION_BYTES`].
///
/// # Errors
/// The bound is exceeded; the message names `flag` (the option to change: `--image_size`,
/// `--global_crops_size`, `--batch_size_per_gpu`, ...) and says what the inputs are (`noun`,
/// e.g. "input(s)" or "global crops (2 per picture)").
pub fn check_activation_size(cfg: &VitConfig, flag: &str, count: usize, noun: &str, height: usize, width: usize) -> Result<(), String> {
    let bytes = activation_bytes(cfg, height, width).saturating_mul(count as u128);
    if bytes > u128::from(MAX_ACTIVATION_BYTES) {
        let p = cfg.patch_size.max(1) as u128;
        return Err(format!(
            "{flag}: {count} {noun} of {height}x{width} px ({} patches of {p} px each): one block's attention or MLP activations would take {:.1} GiB (at most {} GiB)",
            (height as u128 / p) * (width as u128 / p),
            bytes as f64 / (1u64 << 30) as f64,
            MAX_ACTIVATION_BYTES >> 30,
        ));
    }
    Ok(())
}

/// Whether one `height x width` input fits the model's memory bound
/// ([`check_activation_size`]).
///
/// # Errors
/// The bound is exceeded; the message names `--image_size`.
pub fn check_input_size(model: &VisionTransformer, height: usize, width: usize) -> Result<(), String> {
    check_activation_size(model.config(), "--image_size", 1, "input", height, width)
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
    /// The memory rule's numbers for the official ViT-S/16 at 224 px, by hand: 197 tokens; the
    /// MLP's [197, 1536] is the largest tensor (attention [6, 197, 197] = 232854, input
    /// [3, 224, 224] = 150528 floats), 1210368 bytes; 2 GiB / that = 1774 inputs per pass.
    #[test]
    fn activation_bound_of_vit_small_16() {
        let cfg = crate::VitConfig::from_arch("vit_small", 16).unwrap();
        assert_eq!(super::activation_bytes(&cfg, 224, 224), 197 * 1536 * 4);
        assert_eq!(super::max_batch(&cfg, 224, 224), 1774);
        assert!(super::check_activation_size(&cfg, "--batch", 1774, "inputs", 224, 224).is_ok());
        let e = super::check_activation_size(&cfg, "--batch", 1775, "inputs", 224, 224).unwrap_err();
        assert!(e.starts_with("--batch: 1775 inputs of 224x224 px (196 patches of 16 px each)"), "{e}");
        // Attention dominates at 448 px: 785 tokens, 6 x 785^2 floats.
        assert_eq!(super::activation_bytes(&cfg, 448, 448), 6 * 785 * 785 * 4);
        // Saturating, not overflowing, at any size.
        assert!(super::check_activation_size(&cfg, "--image_size", usize::MAX, "inputs", usize::MAX, usize::MAX).is_err());
    }

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
