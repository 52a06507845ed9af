//! dino-web: the ViT of `dino-shared`, compiled to WASM, on WebGPU when the browser offers an
//! adapter and on Burn's CPU backend (flex) otherwise. Decoding, preprocessing and every
//! picture drawn (heat maps, overlays, threshold masks, the PCA and similarity views) come
//! from `dino-shared`, so the page shows the same numbers as `dino attention`, `dino pca` and
//! `dino similarity` on the command line.
//!
//! JavaScript sees three things: [`create_engine`] (once per page, in the page's Web Worker,
//! `dino-worker.js`; every widget shares it), [`Engine::load_weights`] and [`Engine::analyze`],
//! which returns an [`Analysis`]; the worker posts its parts back and the main thread rebuilds it
//! with [`Analysis::new`] to draw from.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use burn::tensor::Device;
use dino_shared::attention_maps::{draw_mask, head_color, heatmap, overlay, AttentionMaps};
use dino_shared::inference::{attention_maps, batch_tensor, checked_block, patch_features};
use dino_shared::views::{patch_similarity, similarity_picture, PatchFeatures, PatchPca};
use dino_shared::preprocess::{self};
use dino_shared::weights::{ArchSpec, WeightsFile};
use dino_shared::VisionTransformer;
use image::RgbImage;
use wasm_bindgen::prelude::*;

/// A property of the global object (the window on a page, the worker's scope in a Web Worker).
fn global_property(name: &str) -> Option<JsValue> {
    js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str(name)).ok().filter(|v| !v.is_undefined())
}

/// `performance.now()` in milliseconds, on a page or in a worker (0 where there is none).
fn now_ms() -> f64 {
    global_property("performance")
        .and_then(|p| {
            let now = js_sys::Reflect::get(&p, &JsValue::from_str("now")).ok()?;
            now.dyn_ref::<js_sys::Function>()?.call0(&p).ok()?.as_f64()
        })
        .unwrap_or(0.0)
}

struct State {
    device: Device,
    backend: String,
    /// Loaded models by the name the page gave them (the default model, a user's file, ...).
    models: HashMap<String, VisionTransformer>,
}

/// The page's one model on one device, shared by every widget.
#[wasm_bindgen]
#[derive(Clone)]
pub struct Engine {
    state: Rc<RefCell<State>>,
}

/// Start the engine: WebGPU when `prefer_webgpu` and the browser gives an adapter, else CPU.
#[wasm_bindgen]
pub async fn create_engine(prefer_webgpu: bool) -> Engine {
    let mut backend = "cpu".to_string();
    let mut device = Device::flex();
    let has_gpu = global_property("navigator")
        .map(|n| js_sys::Reflect::has(&n, &JsValue::from_str("gpu")).unwrap_or(false))
        .unwrap_or(false);
    if prefer_webgpu && has_gpu {
        match Device::wgpu_options().graphics_api(burn::tensor::wgpu::WgpuBackend::WebGpu).init_async().await {
            Ok(d) => {
                device = d;
                backend = "webgpu".into();
            }
            Err(e) => web_sys::console::warn_1(&format!("WebGPU unavailable ({e}); using the CPU backend").into()),
        }
    }
    Engine { state: Rc::new(RefCell::new(State { device, backend, models: HashMap::new() })) }
}

#[wasm_bindgen]
impl Engine {
    /// "webgpu" or "cpu".
    pub fn backend(&self) -> String {
        self.state.borrow().backend.clone()
    }

    /// Load a safetensors file made by `dino export` (or timm-layout safetensors of an official
    /// architecture) under `name`. Returns a JSON description; a file that is not a model is an
    /// error and whatever was loaded before stays.
    pub fn load_weights(&self, name: &str, file_name: &str, bytes: &[u8]) -> Result<String, JsError> {
        let file = WeightsFile::from_safetensors_bytes(file_name, bytes, "teacher").map_err(|e| JsError::new(&e.to_string()))?;
        let device = self.state.borrow().device.clone();
        let model = file.backbone_model(&ArchSpec::default(), &device).map_err(|e| JsError::new(&e.to_string()))?;
        let cfg = model.config().clone();
        self.state.borrow_mut().models.insert(name.to_string(), model);
        Ok(serde_json::json!({
            "name": name,
            "file": file_name,
            "arch": cfg.model_name(),
            "num_register_tokens": cfg.num_register_tokens,
            "patch_size": cfg.patch_size,
            "embed_dim": cfg.embed_dim,
            "depth": cfg.depth,
            "num_heads": cfg.num_heads,
            "img_size": cfg.img_size,
        })
        .to_string())
    }

    /// Decode, preprocess (the shorter side resized to `shorter_side` pixels, the aspect ratio
    /// kept, as `dino attention --image_size S`; cropped to the patch grid) and run the model:
    /// the attention of block `layer` (0-based; negative: the last, as `dino attention
    /// --layer`) and the last layer's patch features (for the PCA and similarity views).
    /// Resolves to an [`Analysis`]; rejects with a readable message on a bad picture or layer.
    pub fn analyze(&self, model_name: String, image_bytes: Vec<u8>, shorter_side: usize, layer: i32) -> js_sys::Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let (model, device) = {
                let st = state.borrow();
                let model = st
                    .models
                    .get(&model_name)
                    .cloned()
                    .ok_or_else(|| JsValue::from(JsError::new(&format!("no model named {model_name} is loaded"))))?;
                (model, st.device.clone())
            };
            let layer = usize::try_from(layer).ok();
            let analysis = analyze(&model, &device, &image_bytes, shorter_side, layer).await.map_err(|e| JsValue::from(JsError::new(&e)))?;
            Ok(JsValue::from(analysis))
        })
    }
}

async fn analyze(model: &VisionTransformer, device: &Device, bytes: &[u8], shorter_side: usize, layer: Option<usize>) -> Result<Analysis, String> {
    let img = preprocess::decode_image(bytes)?;
    let patch = model.config().patch_size;
    let block = checked_block(layer, model.config().depth)?;
    let size = preprocess::ImageSize::from_values(&[shorter_side]).map_err(|e| e.to_string())?;
    let input = preprocess::for_attention(&img, size, patch).map_err(|e| e.to_string())?;
    dino_shared::inference::check_input_size(model, input.height, input.width)?;
    let start = now_ms();
    let (tokens, attn) = model.forward_tokens_with_attention(batch_tensor(&[&input], device), block);
    let data = attn.into_data_async().await.map_err(|e| format!("reading the attention back failed: {e:?}"))?;
    let tokens = model.patch_tokens(tokens).into_data_async().await.map_err(|e| format!("reading the features back failed: {e:?}"))?;
    let forward_ms = now_ms() - start;
    Ok(Analysis {
        maps: attention_maps(data, model, &input)?,
        features: patch_features(tokens, model, &input)?,
        pca: RefCell::new(None),
        image: input.image,
        patch,
        layer: block,
        forward_ms,
    })
}

fn rgba(img: &RgbImage) -> Vec<u8> {
    img.pixels().flat_map(|p| [p.0[0], p.0[1], p.0[2], 255]).collect()
}

/// The result for one picture; every drawing is RGBA bytes of `width() x height()` pixels.
#[wasm_bindgen]
pub struct Analysis {
    maps: AttentionMaps,
    /// The last layer's patch features, [grid_h * grid_w, dim].
    features: PatchFeatures,
    /// The PCA of `features`, fitted the first time a PCA view is asked for.
    pca: RefCell<Option<PatchPca>>,
    image: RgbImage,
    patch: usize,
    /// The block whose attention `maps` holds (0-based).
    layer: usize,
    forward_ms: f64,
}

#[wasm_bindgen]
impl Analysis {
    /// An analysis from its parts, as a Web Worker that ran the model posts them back: the
    /// per-head maps [heads, grid_h, grid_w] of block `layer`, the patch features
    /// [grid_h * grid_w, dim], the model's input picture (`width` x `height` RGB bytes, a
    /// patch-size multiple of the grid), the patch size and the time of the pass.
    /// Errors when the sizes do not agree.
    #[wasm_bindgen(constructor)]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        values: Vec<f32>,
        heads: usize,
        grid_h: usize,
        grid_w: usize,
        features: Vec<f32>,
        dim: usize,
        image_rgb: Vec<u8>,
        width: u32,
        height: u32,
        patch: usize,
        layer: usize,
        forward_ms: f64,
    ) -> Result<Analysis, JsError> {
        let product = |factors: &[usize]| factors.iter().try_fold(1usize, |acc, &f| acc.checked_mul(f));
        let fits = heads > 0
            && grid_h > 0
            && grid_w > 0
            && patch > 0
            && product(&[heads, grid_h, grid_w]) == Some(values.len())
            && product(&[grid_w, patch]) == Some(width as usize)
            && product(&[grid_h, patch]) == Some(height as usize)
            && product(&[width as usize, height as usize, 3]) == Some(image_rgb.len());
        if !fits {
            return Err(JsError::new(&format!(
                "analysis parts do not agree: {} values for {heads} heads of {grid_h} x {grid_w}, {} bytes for a {width} x {height} picture, patch {patch}",
                values.len(),
                image_rgb.len()
            )));
        }
        let image = RgbImage::from_raw(width, height, image_rgb).ok_or_else(|| JsError::new("picture bytes do not fit its size"))?;
        let features = PatchFeatures::new(grid_h, grid_w, dim, features).map_err(|e| JsError::new(&e))?;
        Ok(Analysis { maps: AttentionMaps { heads, grid_h, grid_w, values }, features, pca: RefCell::new(None), image, patch, layer, forward_ms })
    }
    /// The block whose attention this holds (0-based).
    pub fn layer(&self) -> usize {
        self.layer
    }
    /// Width of the patch features.
    pub fn dim(&self) -> usize {
        self.features.dim
    }
    /// The last layer's patch features, [grid_h * grid_w, dim] (what the worker posts back).
    pub fn features(&self) -> Vec<f32> {
        self.features.values.clone()
    }
    /// The PCA view's colours, [grid_h * grid_w, 3] in [0, 1] (a PCA fitted on this picture,
    /// as `dino pca` with one `--image`: its `pca_rgb0.npy`).
    pub fn pca_rgb(&self) -> Result<Vec<f32>, JsError> {
        Ok(self.with_pca(|pca, f| pca.rgb(f).concat())?)
    }
    /// The PCA view as a picture; patches whose first component is at most
    /// `foreground_threshold` are black (a negative threshold keeps every patch).
    pub fn pca_rgba(&self, foreground_threshold: f32) -> Result<Vec<u8>, JsError> {
        let threshold = (foreground_threshold >= 0.0).then_some(foreground_threshold);
        Ok(rgba(&self.with_pca(|pca, f| pca.picture(f, self.patch, threshold))?))
    }
    /// Cosine similarity of patch (`row`, `col`) with every patch, [grid_h * grid_w] (as
    /// `dino similarity --query ROW COL`); an error outside the grid.
    pub fn similarity(&self, row: usize, col: usize) -> Result<Vec<f32>, JsError> {
        patch_similarity(&self.features, row, col, &self.features).map_err(|e| JsError::new(&e))
    }
    /// The similarity map coloured over the picture, the query patch outlined.
    pub fn similarity_rgba(&self, row: usize, col: usize, opacity: f32) -> Result<Vec<u8>, JsError> {
        let sim = self.similarity(row, col)?;
        let (gh, gw) = (self.maps.grid_h, self.maps.grid_w);
        Ok(rgba(&similarity_picture(&self.image, &sim, gh, gw, self.patch, Some((row, col)), opacity)))
    }
    /// The model's input picture as RGB bytes, `width() x height()` (what the maps are drawn over).
    pub fn image_rgb(&self) -> Vec<u8> {
        self.image.as_raw().clone()
    }
    /// Patch size of the model in pixels.
    pub fn patch(&self) -> usize {
        self.patch
    }
    pub fn heads(&self) -> usize {
        self.maps.heads
    }
    pub fn grid_h(&self) -> usize {
        self.maps.grid_h
    }
    pub fn grid_w(&self) -> usize {
        self.maps.grid_w
    }
    pub fn width(&self) -> u32 {
        self.image.width()
    }
    pub fn height(&self) -> u32 {
        self.image.height()
    }
    /// Time of the forward pass including the read-back, in milliseconds.
    pub fn forward_ms(&self) -> f64 {
        self.forward_ms
    }
    /// Raw per-head CLS attention, [heads, grid_h, grid_w] (what `attention.npy` holds natively).
    pub fn values(&self) -> Vec<f32> {
        self.maps.values.clone()
    }
    /// Head-mean map coloured and blended over the picture.
    pub fn mean_overlay_rgba(&self, opacity: f32) -> Vec<u8> {
        let hm = heatmap(&self.maps.mean(), self.maps.grid_h, self.maps.grid_w, self.patch);
        rgba(&overlay(&self.image, &hm, opacity))
    }
    /// Head `j`'s map coloured and blended over the picture; an error when `j >= heads()`.
    pub fn head_rgba(&self, j: usize, opacity: f32) -> Result<Vec<u8>, JsError> {
        self.check_head(j)?;
        let hm = heatmap(self.maps.head(j), self.maps.grid_h, self.maps.grid_w, self.patch);
        Ok(rgba(&overlay(&self.image, &hm, opacity)))
    }
    /// Head `j`'s official threshold mask drawn over the picture; an error when `j >= heads()`.
    pub fn mask_rgba(&self, j: usize, threshold: f32) -> Result<Vec<u8>, JsError> {
        self.check_head(j)?;
        Ok(rgba(&draw_mask(&self.image, &self.maps.threshold_mask(j, threshold), self.maps.grid_h, self.maps.grid_w, self.patch, head_color(j))))
    }
    /// All heads' masks over one picture (each head in its colour).
    pub fn masks_rgba(&self, threshold: f32) -> Vec<u8> {
        let mut img = self.image.clone();
        for j in 0..self.maps.heads {
            img = draw_mask(&img, &self.maps.threshold_mask(j, threshold), self.maps.grid_h, self.maps.grid_w, self.patch, head_color(j));
        }
        rgba(&img)
    }
}

impl Analysis {
    fn with_pca<T>(&self, f: impl FnOnce(&PatchPca, &PatchFeatures) -> T) -> Result<T, JsError> {
        let mut cached = self.pca.borrow_mut();
        let pca = match &mut *cached {
            Some(pca) => pca,
            slot @ None => slot.insert(PatchPca::fit(&[&self.features]).map_err(|e| JsError::new(&e))?),
        };
        Ok(f(pca, &self.features))
    }

    fn check_head(&self, j: usize) -> Result<(), JsError> {
        if j < self.maps.heads {
            Ok(())
        } else {
            Err(JsError::new(&format!("no head {j}: the model has {} heads", self.maps.heads)))
        }
    }
}
