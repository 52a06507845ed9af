// The Web Worker that runs the model for the page and every <dino-attention> widget, so that a
// forward pass never holds the page's main thread. It owns the engine (the wasm module, the
// device, the loaded models); the main thread gets the maps back as plain arrays and draws them
// with its own copy of the wasm module (dino-attention.js: WorkerEngine).
//
// Messages in: {id, op: 'init', webgpu} | {id, op: 'load', name, file, bytes} |
// {id, op: 'analyze', name, bytes, size, layer}; out: {id, ok: true, result} or {id, ok: false, error}.
import init, { create_engine } from './dino-web.js';

let engine = null;

async function handle(data) {
  switch (data.op) {
    case 'init':
      await init({ module_or_path: new URL('dino-web_bg.wasm', import.meta.url) });
      engine = await create_engine(data.webgpu);
      return { result: engine.backend() };
    case 'load':
      return { result: engine.load_weights(data.name, data.file, data.bytes) };
    case 'analyze': {
      const a = await engine.analyze(data.name, data.bytes, data.size, data.layer ?? -1);
      const result = {
        values: a.values(), heads: a.heads(), grid_h: a.grid_h(), grid_w: a.grid_w(), features: a.features(),
        dim: a.dim(), image: a.image_rgb(), width: a.width(), height: a.height(), patch: a.patch(),
        layer: a.layer(), forward_ms: a.forward_ms(),
      };
      a.free();
      return { result, transfer: [result.values.buffer, result.features.buffer, result.image.buffer] };
    }
    default:
      throw new Error(`unknown request ${data.op}`);
  }
}

self.onmessage = async ({ data }) => {
  try {
    const { result, transfer = [] } = await handle(data);
    self.postMessage({ id: data.id, ok: true, result }, transfer);
  } catch (e) {
    self.postMessage({ id: data.id, ok: false, error: String((e && e.message) || e) });
  }
};
