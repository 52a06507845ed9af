// <dino-attention>: last-layer attention maps of a DINO ViT over a picture, computed in the
// browser (WASM; WebGPU when available, else the CPU backend). One module import:
//
//   <script type="module" src="dino-attention.js"></script>
//   <dino-attention src="cat.jpg" weights="dino-default.safetensors" threshold="0.6" heads="mean"></dino-attention>
//
// Attributes: src (picture URL), weights (a `dino export` safetensors file; default: the model
// shipped next to this file), heads ("mean": head-mean overlay, "all": one map per head),
// threshold (draw the official cumulative-mass masks), size (the model input's shorter side in
// px, the aspect ratio kept; default 28 patches),
// opacity (0..1). Every widget on a page shares one engine (one device) and one copy of each model.

const here = new URL('.', import.meta.url);
let enginePromise = null;
const models = new Map();

/** The wasm module, initialised once. On a trunk-built page trunk's own loader instantiates it:
 *  wait for that one rather than instantiating a second copy that would race with it. */
async function initWasm() {
  if (window.wasmBindings) return window.wasmBindings;
  if (document.querySelector('link[rel="preload"][href*="dino-web_bg.wasm"]')) {
    await new Promise((resolve) => addEventListener('TrunkApplicationStarted', resolve, { once: true }));
    return window.wasmBindings;
  }
  const wasm = await import(new URL('dino-web.js', here).href);
  await wasm.default({ module_or_path: new URL('dino-web_bg.wasm', here) });
  return wasm;
}

/** The page's engine: WebGPU unless `?backend=cpu` or `window.DINO_BACKEND = 'cpu'`. */
export function getEngine() {
  if (!enginePromise) {
    enginePromise = (async () => {
      const wasm = await initWasm();
      const forced = new URLSearchParams(location.search).get('backend') || window.DINO_BACKEND;
      return wasm.create_engine(forced !== 'cpu');
    })();
  }
  return enginePromise;
}

export const DEFAULT_WEIGHTS = new URL('dino-default.safetensors', here).href;

/** Load a weights URL once; later calls share the same promise. Resolves to the model's name. */
export function loadModel(url = DEFAULT_WEIGHTS) {
  const key = new URL(url, location.href).href;
  if (!models.has(key)) {
    models.set(key, (async () => {
      const engine = await getEngine();
      const res = await fetch(key);
      if (!res.ok) throw new Error(`${key}: HTTP ${res.status}`);
      const bytes = new Uint8Array(await res.arrayBuffer());
      const info = JSON.parse(engine.load_weights(key, key.split('/').pop(), bytes));
      return { name: key, info };
    })());
    models.get(key).catch(() => models.delete(key));
  }
  return models.get(key);
}

/** Paint RGBA bytes onto a canvas of that size. */
export function paint(canvas, rgba, width, height) {
  canvas.width = width;
  canvas.height = height;
  canvas.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(rgba), width, height), 0, 0);
}

const STYLE = `
  :host { display: inline-block; font: 13px system-ui, sans-serif; color: #333; max-width: 100%; }
  .maps { display: flex; flex-wrap: wrap; gap: 4px; }
  canvas { image-rendering: pixelated; max-width: 100%; border-radius: 4px; }
  .main { width: var(--dino-size, 320px); }
  .head { width: var(--dino-head-size, 120px); }
  .status { margin-top: 4px; color: #666; }
  .status.error { color: #b00020; }
`;

class DinoAttention extends HTMLElement {
  static observedAttributes = ['src', 'weights', 'threshold', 'heads', 'size', 'opacity'];

  constructor() {
    super();
    const root = this.attachShadow({ mode: 'open' });
    root.innerHTML = `<style>${STYLE}</style><div class="maps"></div><div class="status">loading…</div>`;
    this.mapsEl = root.querySelector('.maps');
    this.statusEl = root.querySelector('.status');
    this.analysis = null;
    this.generation = 0;
  }

  connectedCallback() { this.update(); }
  attributeChangedCallback() { if (this.isConnected) this.update(); }

  async update() {
    const gen = ++this.generation;
    const src = this.getAttribute('src');
    if (!src) return;
    this.dataset.state = 'loading';
    try {
      const engine = await getEngine();
      const model = await loadModel(this.getAttribute('weights') || DEFAULT_WEIGHTS);
      const res = await fetch(new URL(src, location.href));
      if (!res.ok) throw new Error(`${src}: HTTP ${res.status}`);
      const bytes = new Uint8Array(await res.arrayBuffer());
      // Default input: 28 patches along the shorter side, as on the page (112 px for patch 4, 224
      // for 8, 448 for 16); the longer side follows the picture's aspect ratio.
      const size = parseInt(this.getAttribute('size') || String(28 * model.info.patch_size), 10);
      const analysis = await engine.analyze(model.name, bytes, size);
      if (gen !== this.generation) return; // a newer update superseded this one
      this.analysis = analysis;
      this.draw();
      this.statusEl.className = 'status';
      this.statusEl.textContent = `${model.info.arch} · ${engine.backend()} · ${analysis.forward_ms().toFixed(0)} ms`;
      this.dataset.state = 'ready';
      this.dispatchEvent(new CustomEvent('dino-ready', { detail: analysis, bubbles: true }));
    } catch (e) {
      if (gen !== this.generation) return;
      this.statusEl.className = 'status error';
      this.statusEl.textContent = String(e.message || e);
      this.dataset.state = 'error';
    }
  }

  draw() {
    const a = this.analysis;
    const opacity = parseFloat(this.getAttribute('opacity') || '0.6');
    const th = this.getAttribute('threshold');
    const [w, h] = [a.width(), a.height()];
    this.mapsEl.replaceChildren();
    const add = (rgba, cls) => {
      const c = document.createElement('canvas');
      c.className = cls;
      paint(c, rgba, w, h);
      this.mapsEl.append(c);
    };
    if ((this.getAttribute('heads') || 'mean') === 'all') {
      for (let j = 0; j < a.heads(); j++) add(th ? a.mask_rgba(j, parseFloat(th)) : a.head_rgba(j, opacity), 'head');
    } else {
      add(a.mean_overlay_rgba(opacity), 'main');
      if (th) add(a.masks_rgba(parseFloat(th)), 'main');
    }
  }
}

if (!customElements.get('dino-attention')) customElements.define('dino-attention', DinoAttention);
