// <dino-attention>: what a DINO / DINOv2 ViT sees in a picture, computed in the browser (WASM;
// WebGPU when available, else the CPU backend): attention maps, threshold masks, the PCA of the
// patch features, patch similarity. One module import:
//
//   <script type="module" src="dino-attention.js"></script>
//   <dino-attention src="cat.jpg" weights="dino-default.safetensors" threshold="0.6" heads="mean"></dino-attention>
//   <dino-attention src="cat.jpg" view="pca"></dino-attention>
//
// Attributes: src (picture URL), weights (a `dino export` safetensors file; default: the model
// shipped next to this file), view ("attention" (default), "masks", "pca" or "similarity"),
// layer (the block whose attention is drawn, 0-based; default the last), heads ("mean":
// head-mean overlay, "all": one map per head), threshold (also draw the official
// cumulative-mass masks), foreground (pca view: black out patches whose first component is at
// most this), query ("ROW COL": the similarity view's patch; default the centre; a click on
// the picture moves it), size (the model input's shorter side in px, the aspect ratio kept;
// default 28 patches), opacity (0..1). Every widget on a page shares one engine (one device, in
// one Web Worker: dino-worker.js, next to this file) and one copy of each model; changing view,
// query, opacity, threshold, foreground or heads redraws without running the model again.

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

/** The engine in a Web Worker (dino-worker.js): the same calls as the wasm `Engine`, as
 *  promises; the worker runs the model and the main thread only draws, so the page answers
 *  input during a pass. Results arrive as parts and become an `Analysis` of the main thread's
 *  wasm module, which draws the maps. */
class WorkerEngine {
  constructor(wasm, worker) {
    this.wasm = wasm;
    this.worker = worker;
    this.pending = new Map();
    this.nextId = 0;
    worker.onmessage = ({ data }) => {
      const p = this.pending.get(data.id);
      if (!p) return; // its call was already rejected by an error
      this.pending.delete(data.id);
      if (data.ok) p.resolve(data.result); else p.reject(new Error(data.error));
    };
    const failAll = (message) => {
      for (const p of this.pending.values()) p.reject(new Error(`worker: ${message}`));
      this.pending.clear();
    };
    worker.onerror = (e) => failAll(e.message || 'failed to start');
    worker.onmessageerror = () => failAll('a reply could not be read');
  }
  call(message) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ ...message, id });
    });
  }
  async start(webgpu) { this.backendName = await this.call({ op: 'init', webgpu }); return this; }
  backend() { return this.backendName; }
  /** Resolves to the model's JSON description; rejects with the loader's message. */
  load_weights(name, file, bytes) { return this.call({ op: 'load', name, file, bytes }); }
  /** `layer`: the block whose attention is wanted, 0-based; -1: the last. */
  async analyze(name, bytes, size, layer = -1) {
    const p = await this.call({ op: 'analyze', name, bytes, size, layer });
    return new this.wasm.Analysis(p.values, p.heads, p.grid_h, p.grid_w, p.features, p.dim, p.image, p.width, p.height,
      p.patch, p.layer, p.forward_ms);
  }
}

/** The page's engine: WebGPU unless `?backend=cpu` or `window.DINO_BACKEND = 'cpu'`; in a Web
 *  Worker unless `?worker=0` (or where workers cannot start: then on the main thread). */
export function getEngine() {
  if (!enginePromise) {
    enginePromise = (async () => {
      const wasm = await initWasm();
      const params = new URLSearchParams(location.search);
      const webgpu = (params.get('backend') || window.DINO_BACKEND) !== 'cpu';
      if (params.get('worker') !== '0') {
        let worker = null;
        try {
          worker = new Worker(new URL('dino-worker.js', here), { type: 'module' });
          return await new WorkerEngine(wasm, worker).start(webgpu);
        } catch (e) {
          if (worker) worker.terminate();
          console.warn(`Web Worker unavailable (${e.message || e}); the model runs on the main thread`);
        }
      }
      return wasm.create_engine(webgpu);
    })();
  }
  return enginePromise;
}

export const DEFAULT_WEIGHTS = new URL('dino-default.safetensors', here).href;

/** The bytes of a weights file. Weights are kept by the browser (Cache API), keyed by URL, so a
 *  reload does not download them again; where the Cache API is missing (insecure origins) this
 *  is a plain fetch. A release that changes a file at the same URL (the default model) bumps
 *  WEIGHTS_CACHE; older caches are deleted on the first load. */
export const WEIGHTS_CACHE = 'dino-weights-v1';
async function weightsCache() {
  if (!self.caches) return null;
  try {
    for (const name of await caches.keys()) {
      if (name.startsWith('dino-weights-') && name !== WEIGHTS_CACHE) await caches.delete(name);
    }
    return await caches.open(WEIGHTS_CACHE);
  } catch {
    return null;
  }
}
async function fetchWeights(url) {
  const cache = await weightsCache();
  let res = cache ? await cache.match(url) : undefined;
  if (!res) {
    res = await fetch(url);
    if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
    if (cache) await cache.put(url, res.clone()).catch(() => {});
  }
  return new Uint8Array(await res.arrayBuffer());
}

/** Load a weights URL once; later calls share the same promise. Resolves to the model's name. */
export function loadModel(url = DEFAULT_WEIGHTS) {
  const key = new URL(url, location.href).href;
  if (!models.has(key)) {
    models.set(key, (async () => {
      const engine = await getEngine();
      const bytes = await fetchWeights(key);
      try {
        const info = JSON.parse(await engine.load_weights(key, key.split('/').pop(), bytes));
        return { name: key, info };
      } catch (e) {
        // A refused file does not stay in the cache.
        if (self.caches) await caches.open(WEIGHTS_CACHE).then((c) => c.delete(key)).catch(() => {});
        throw e;
      }
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

// The one renderer of the page and the widget: which picture shows what. `view` is 'mean'
// (attention maps over the picture), 'masks' (the official threshold masks, `threshold` of the
// attention mass), 'pca' (the first three principal components of the patch features as RGB;
// patches at or below `foreground` on the first one black, when given) or 'similarity' (cosine
// similarity of patch `query` = {row, col} with every patch); `opacity` blends the maps over the
// picture. Every picture is `analysis.width()` x `analysis.height()` RGBA bytes, drawn by the
// wasm engine (dino-shared, as `dino attention`, `dino pca` and `dino similarity` draw them).

/** The patch in the middle of the grid: the similarity view's first query. */
export function centrePatch(analysis) {
  return { row: Math.floor(analysis.grid_h() / 2), col: Math.floor(analysis.grid_w() / 2) };
}

/** The patch under a click on `canvas` (which shows an analysis picture at any CSS size). */
export function patchAt(canvas, analysis, event) {
  const r = canvas.getBoundingClientRect();
  const x = ((event.clientX - r.left) * canvas.width) / r.width;
  const y = ((event.clientY - r.top) * canvas.height) / r.height;
  const p = analysis.patch();
  return {
    row: Math.min(analysis.grid_h() - 1, Math.max(0, Math.floor(y / p))),
    col: Math.min(analysis.grid_w() - 1, Math.max(0, Math.floor(x / p))),
  };
}

/** The main picture of `view` (see above). */
export function mainPicture(analysis, { view = 'mean', opacity = 0.6, threshold = 0.6, foreground = null, query = null } = {}) {
  switch (view) {
    case 'masks': return analysis.masks_rgba(threshold);
    case 'pca': return analysis.pca_rgba(foreground === null || Number.isNaN(foreground) ? -1 : foreground);
    case 'similarity': {
      const q = query || centrePatch(analysis);
      return analysis.similarity_rgba(q.row, q.col, opacity);
    }
    default: return analysis.mean_overlay_rgba(opacity);
  }
}

/** Head `j`'s picture: its attention map over the picture, or its mask ('masks' view). */
export function headPicture(analysis, j, { view = 'mean', opacity = 0.6, threshold = 0.6 } = {}) {
  return view === 'masks' ? analysis.mask_rgba(j, threshold) : analysis.head_rgba(j, opacity);
}

/** A canvas (in a <figure> with a caption when `caption` is given) holding `rgba`, appended to
 *  `container`. */
export function addPicture(container, analysis, rgba, { className = '', caption = null } = {}) {
  const canvas = document.createElement('canvas');
  canvas.className = className;
  paint(canvas, rgba, analysis.width(), analysis.height());
  if (caption === null) return container.appendChild(canvas);
  const fig = document.createElement('figure');
  const cap = document.createElement('figcaption');
  cap.textContent = caption;
  fig.append(canvas, cap);
  return container.appendChild(fig);
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
  static observedAttributes = ['src', 'weights', 'threshold', 'heads', 'size', 'opacity', 'view', 'layer', 'query', 'foreground'];
  /** Attributes that only change the drawing. */
  static redrawOnly = ['threshold', 'heads', 'opacity', 'view', 'query', 'foreground'];

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
  attributeChangedCallback(name, before, after) {
    if (!this.isConnected || before === after) return;
    // Only the drawing changes: redraw from the last result without running the model again.
    if (this.analysis && DinoAttention.redrawOnly.includes(name)) {
      try {
        this.draw();
      } catch (e) {
        this.statusEl.className = 'status error';
        this.statusEl.textContent = String(e.message || e);
      }
    }
    else this.update();
  }

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
      const layer = this.hasAttribute('layer') ? parseInt(this.getAttribute('layer'), 10) : -1;
      if (Number.isNaN(layer) || layer >= model.info.depth) {
        throw new Error(`layer="${this.getAttribute('layer')}": the model has ${model.info.depth} blocks (0 to ${model.info.depth - 1})`);
      }
      const analysis = await engine.analyze(model.name, bytes, size, layer);
      this.runs = (this.runs || 0) + 1;
      if (gen !== this.generation) return; // a newer update superseded this one
      this.analysis = analysis;
      this.draw();
      this.statusEl.className = 'status';
      this.statusEl.textContent = `${model.info.arch} · layer ${analysis.layer()} · ${engine.backend()} · ${analysis.forward_ms().toFixed(0)} ms`;
      this.dataset.state = 'ready';
      this.dispatchEvent(new CustomEvent('dino-ready', { detail: analysis, bubbles: true }));
    } catch (e) {
      if (gen !== this.generation) return;
      this.analysis = null; // nothing to redraw: the maps shown no longer match the attributes
      this.statusEl.className = 'status error';
      this.statusEl.textContent = String(e.message || e);
      this.dataset.state = 'error';
    }
  }

  /** The similarity view's patch: the `query` attribute ("ROW COL"), else the centre. */
  query() {
    const [row, col] = (this.getAttribute('query') || '').trim().split(/\s+/).map((v) => parseInt(v, 10));
    const a = this.analysis;
    if (Number.isInteger(row) && Number.isInteger(col) && row >= 0 && col >= 0 && row < a.grid_h() && col < a.grid_w()) return { row, col };
    return centrePatch(a);
  }

  draw() {
    const a = this.analysis;
    const opacity = parseFloat(this.getAttribute('opacity') || '0.6');
    const th = this.getAttribute('threshold');
    const masks = { view: 'masks', threshold: parseFloat(th) };
    const view = this.getAttribute('view') || 'attention';
    this.mapsEl.replaceChildren();
    if (view === 'pca' || view === 'similarity') {
      const foreground = this.hasAttribute('foreground') ? parseFloat(this.getAttribute('foreground')) : null;
      const query = this.query();
      this.values = view === 'pca' ? a.pca_rgb() : a.similarity(query.row, query.col);
      const el = addPicture(this.mapsEl, a, mainPicture(a, { view, opacity, foreground, query }), { className: 'main' });
      if (view === 'similarity') {
        // A click on the picture asks for that patch's similarities.
        el.style.cursor = 'crosshair';
        el.onclick = (e) => { const q = patchAt(el, a, e); this.setAttribute('query', `${q.row} ${q.col}`); };
      }
    } else if (view === 'masks') {
      addPicture(this.mapsEl, a, mainPicture(a, { view: 'masks', threshold: parseFloat(th || '0.6') }), { className: 'main' });
    } else if ((this.getAttribute('heads') || 'mean') === 'all') {
      for (let j = 0; j < a.heads(); j++) addPicture(this.mapsEl, a, headPicture(a, j, th ? masks : { opacity }), { className: 'head' });
    } else {
      addPicture(this.mapsEl, a, mainPicture(a, { opacity }), { className: 'main' });
      if (th) addPicture(this.mapsEl, a, mainPicture(a, masks), { className: 'main' });
    }
    this.draws = (this.draws || 0) + 1;
  }
}

if (!customElements.get('dino-attention')) customElements.define('dino-attention', DinoAttention);
