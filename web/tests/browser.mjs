// Browser tests of the trunk build (dist/) in Debian's headless Chromium, driven by
// playwright-core. Usage: node web/tests/browser.mjs DIST NATIVE_NPY SCREENSHOT_DIR
//
// Checks: the page loads and runs on WebGPU (--enable-unsafe-webgpu; SwiftShader here) and on
// the CPU backend (no flag); the attention values read back from the page equal the native
// `dino attention` values (max abs diff <= 1e-3); the widget page renders two widgets; a text
// file named .jpg, an empty file and a wrong weights file each show an error and the page keeps
// working; weights whose metadata is wrong (heads that do not divide the width) are refused with
// a message and the loaded model keeps working; of two pictures given one after the other the
// page shows the second; a reload takes the weights from the browser's cache (no download);
// the widget redraws without running the model again when only opacity or threshold change; the
// main thread answers (timers keep firing) while the model runs in its Web Worker; the PCA and
// similarity views and another block's attention equal the native `dino pca`, `dino
// similarity` and `dino attention --layer 1` (files next to NATIVE_NPY: pca_rgb0.npy,
// similarity.npy for --query 10 12, layer1/attention.npy) within 1e-3, a click picks the
// similarity query; the widgets draw every view and redraw a view change without a new pass.
// Screenshots go to SCREENSHOT_DIR.
import { chromium } from 'playwright-core';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';

const [distArg, nativeNpy, shots] = process.argv.slice(2);
const dist = path.resolve(distArg);
const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
fs.mkdirSync(shots, { recursive: true });

function readNpy(file) {
  const b = fs.readFileSync(file);
  const hlen = b.readUInt16LE(8);
  const header = b.subarray(10, 10 + hlen).toString();
  const shape = header.match(/'shape': \(([^)]*)\)/)[1].split(',').filter((s) => s.trim()).map(Number);
  const data = new Float32Array(b.buffer.slice(b.byteOffset + 10 + hlen, b.byteOffset + b.length));
  return { shape, data };
}

const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm', '.jpg': 'image/jpeg', '.png': 'image/png', '.safetensors': 'application/octet-stream', '.css': 'text/css' };
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  let file = path.join(dist, decodeURIComponent(url.pathname));
  if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, 'index.html');
  if (!file.startsWith(path.resolve(dist)) || !fs.existsSync(file)) { res.writeHead(404); return res.end('not found'); }
  res.writeHead(200, { 'Content-Type': types[path.extname(file)] || 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}`;

const failures = [];
const check = (ok, what) => { console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`); if (!ok) failures.push(what); };
const timings = {};

async function withBrowser(webgpu, fn) {
  const args = ['--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-quic'];
  if (webgpu) args.push('--enable-unsafe-webgpu');
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args });
  try { await fn(browser); } finally { await browser.close(); }
}

/** A copy of a safetensors file with its `vit` metadata changed by `edit` (the tensors kept). */
function withMetadata(file, edit) {
  const b = fs.readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.subarray(8, 8 + n).toString());
  const vit = JSON.parse(header.__metadata__.vit);
  edit(vit);
  header.__metadata__.vit = JSON.stringify(vit);
  let text = JSON.stringify(header);
  text += ' '.repeat((8 - (text.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(text)));
  return Buffer.concat([len, Buffer.from(text), b.subarray(8 + n)]);
}

async function openPage(browser, query = '') {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.weightRequests = 0;
  page.on('request', (r) => { if (r.url().endsWith('.safetensors')) page.weightRequests++; });
  page.on('pageerror', (e) => console.log('  page error:', e.message));
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') console.log(`  console ${m.type()}: ${m.text().slice(0, 400)}`); });
  await page.goto(`${base}/index.html${query}`);
  try {
    await page.waitForFunction(() => window.dinoPage && (window.dinoPage.ready || window.dinoPage.error), null, { timeout: 300000 });
  } catch (e) {
    console.log('  page state at the timeout:', await page.evaluate(() => JSON.stringify({ ...window.dinoPage, status: document.getElementById('status').textContent })));
    throw e;
  }
  return page;
}

async function analyzeFile(page, file) {
  const runs = await page.evaluate(() => window.dinoPage.runs);
  const errBefore = await page.evaluate(() => window.dinoPage.error);
  await page.setInputFiles('#file', file);
  await page.waitForFunction(([r, e]) => window.dinoPage.runs > r || (window.dinoPage.error && window.dinoPage.error !== e), [runs, errBefore], { timeout: 300000 });
  return page.evaluate(() => ({ ...window.dinoPage }));
}

const native = readNpy(nativeNpy);
const nativeDir = path.dirname(nativeNpy);
const nativePca = readNpy(path.join(nativeDir, 'pca_rgb0.npy'));
const nativeSimilarity = readNpy(path.join(nativeDir, 'similarity.npy'));
const nativeLayer1 = readNpy(path.join(nativeDir, 'layer1', 'attention.npy'));
const SIMILARITY_QUERY = { row: 10, col: 12 }; // test.sh: dino similarity --query 10 12
// A DINOv2 model with 4 registers and LayerScale (tests/fixtures/v2reg4_official.pth through
// `dino export`) and its native attention and PCA of the same picture at 28 x 14 = 392 px.
const v2Weights = path.join(nativeDir, 'v2', 'v2reg4.safetensors');
const v2Attention = readNpy(path.join(nativeDir, 'v2', 'attention.npy'));
const v2Pca = readNpy(path.join(nativeDir, 'v2', 'pca_rgb0.npy'));
const maxAbsDiff = (a, b) => {
  if (!a || a.length !== b.length) return Infinity;
  let d = 0;
  for (let i = 0; i < b.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
};
const photo = path.join(repo, 'tests/images/astronaut.jpg');

for (const [label, webgpu, query] of [['webgpu', true, ''], ['cpu', false, '']]) {
  await withBrowser(webgpu, async (browser) => {
    const page = await openPage(browser, query);
    const state = await page.evaluate(() => ({ ...window.dinoPage }));
    check(state.ready && !state.error, `${label}: page loads and runs the sample (${state.error || 'no error'})`);
    check(state.backend === label, `${label}: backend is ${state.backend}`);
    check(state.gridH === 28 && state.gridW === 28, `${label}: the page opens on a held-out Fashion-MNIST picture (${state.gridH}x${state.gridW})`);
    // A non-square photo keeps its aspect ratio: 320x213 at 28 patches (112 px) on the shorter
    // side is 168x112 px, 42 x 28 patches of 4 (torchvision Resize(112)).
    const wide = await analyzeFile(page, path.join(repo, 'tests/images/chelsea.jpg'));
    check(wide.gridH === 28 && wide.gridW === 42, `${label}: chelsea.jpg keeps its aspect ratio (${wide.gridH}x${wide.gridW} patches)`);
    // The same picture as the native run, at the page's default grid (28 x 28 patches).
    const s = await analyzeFile(page, photo);
    const same = s.values && s.values.length === native.data.length;
    let maxDiff = Infinity;
    if (same) { maxDiff = 0; for (let i = 0; i < native.data.length; i++) maxDiff = Math.max(maxDiff, Math.abs(s.values[i] - native.data[i])); }
    check(same && maxDiff <= 1e-3, `${label}: attention equals native dino attention (max abs diff ${maxDiff.toExponential(2)}, ${s.heads} heads ${s.gridH}x${s.gridW})`);
    console.log(`  ${label}: forward pass ${s.forwardMs.toFixed(1)} ms at ${s.inputSize} px (first picture after the warm-up)`);
    // A second pass on the same picture: the steady-state time.
    const s2 = await analyzeFile(page, photo);
    timings[label] = { input_px: s.inputSize, first_ms: s.forwardMs, second_ms: s2.forwardMs };
    console.log(`  ${label}: forward pass ${s2.forwardMs.toFixed(1)} ms (second picture)`);
    await page.screenshot({ path: path.join(shots, `page-${label}.png`), fullPage: true });
    if (label === 'webgpu') {
      await page.selectOption('#view-mode', 'masks');
      await page.screenshot({ path: path.join(shots, `page-${label}-masks.png`), fullPage: true });
      await page.selectOption('#view-mode', 'mean');
    }
    // The PCA and similarity views of the same picture equal the native commands'.
    const views = await page.evaluate(async (query) => {
      const mode = document.getElementById('view-mode');
      mode.value = 'pca';
      mode.dispatchEvent(new Event('change'));
      const pca = window.dinoPage.pca;
      window.dinoPage.query = query;
      mode.value = 'similarity';
      mode.dispatchEvent(new Event('change'));
      return { pca, similarity: window.dinoPage.similarity };
    }, SIMILARITY_QUERY);
    const pcaDiff = maxAbsDiff(views.pca, nativePca.data);
    check(pcaDiff <= 1e-3, `${label}: the PCA view equals native dino pca (max abs diff ${pcaDiff.toExponential(2)})`);
    const simDiff = maxAbsDiff(views.similarity, nativeSimilarity.data);
    check(simDiff <= 1e-3, `${label}: the similarity view equals native dino similarity --query 10 12 (max abs diff ${simDiff.toExponential(2)})`);
    await page.screenshot({ path: path.join(shots, `page-${label}-similarity.png`), fullPage: true });
    // A click on the picture picks the query: the patch under the click.
    const clicked = await page.evaluate(() => {
      const c = document.getElementById('main-canvas');
      const r = c.getBoundingClientRect();
      // The centre of patch (row 3, col 20) in CSS pixels.
      const p = c.width / window.dinoPage.gridW;
      const x = r.left + ((20 + 0.5) * p * r.width) / c.width;
      const y = r.top + ((3 + 0.5) * p * r.height) / c.height;
      c.dispatchEvent(new MouseEvent('click', { clientX: x, clientY: y, bubbles: true }));
      return { query: window.dinoPage.query, values: window.dinoPage.similarity };
    });
    const self = clicked.values ? clicked.values[3 * 28 + 20] : NaN;
    check(clicked.query.row === 3 && clicked.query.col === 20 && Math.abs(self - 1) < 1e-5, `${label}: a click picks the similarity query (${JSON.stringify(clicked.query)}, self-similarity ${self})`);
    if (label === 'webgpu') {
      await page.selectOption('#view-mode', 'pca');
      await page.screenshot({ path: path.join(shots, `page-${label}-pca.png`), fullPage: true });
    }
    await page.selectOption('#view-mode', 'mean');
    // Another block's attention: the same picture through block 1 equals dino attention --layer 1.
    {
      const runs = await page.evaluate(() => window.dinoPage.runs);
      await page.selectOption('#layer', '1');
      await page.waitForFunction((r) => window.dinoPage.runs > r || window.dinoPage.error, runs, { timeout: 300000 });
      const l1 = await page.evaluate(() => ({ ...window.dinoPage }));
      const d = maxAbsDiff(l1.values, nativeLayer1.data);
      check(l1.layer === 1 && d <= 1e-3, `${label}: block 1's attention equals native dino attention --layer 1 (max abs diff ${d.toExponential(2)})`);
      const back = await page.evaluate(() => window.dinoPage.runs);
      await page.selectOption('#layer', '-1');
      await page.waitForFunction((r) => window.dinoPage.runs > r || window.dinoPage.error, back, { timeout: 300000 });
    }
    // Bad input: each shows an error and the page keeps working.
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dino-bad-'));
    const textJpg = path.join(tmp, 'notes.jpg'); fs.writeFileSync(textJpg, 'this is text, not a picture\n');
    const empty = path.join(tmp, 'empty.jpg'); fs.writeFileSync(empty, '');
    const badWeights = path.join(tmp, 'wrong.safetensors'); fs.writeFileSync(badWeights, 'not weights at all');
    for (const f of [textJpg, empty]) {
      const r = await analyzeFile(page, f);
      check(!!r.error && r.error.includes(path.basename(f)), `${label}: ${path.basename(f)} shows an error (${r.error})`);
    }
    await page.setInputFiles('#weights-file', badWeights);
    await page.waitForFunction(() => window.dinoPage.error && window.dinoPage.error.includes('wrong.safetensors'), null, { timeout: 60000 });
    const werr = await page.evaluate(() => window.dinoPage.error);
    check(werr.includes('not a weights file'), `${label}: wrong weights file shows an error (${werr})`);
    await page.screenshot({ path: path.join(shots, `page-${label}-error.png`) });
    const again = await analyzeFile(page, photo);
    check(!again.error && again.values.length === native.data.length, `${label}: the page still works after the errors`);
    // The page's own logic, on the CPU path only (on SwiftShader each pass takes ~15 s).
    if (!webgpu) {
      // Weights whose metadata does not fit (5 heads on a width of 96): refused, the model loaded
      // before keeps working.
      const badHeads = path.join(tmp, 'five-heads.safetensors');
      fs.writeFileSync(badHeads, withMetadata(path.join(dist, 'dino-default.safetensors'), (v) => { v.num_heads = 5; }));
      await page.setInputFiles('#weights-file', badHeads);
      await page.waitForFunction(() => window.dinoPage.error && window.dinoPage.error.includes('five-heads.safetensors'), null, { timeout: 60000 });
      const herr = await page.evaluate(() => window.dinoPage.error);
      check(/head/.test(herr), `${label}: weights with 5 heads on 96 dims are refused (${herr})`);
      const still = await analyzeFile(page, photo);
      let stillDiff = Infinity;
      if (!still.error && still.values.length === native.data.length) { stillDiff = 0; for (let i = 0; i < native.data.length; i++) stillDiff = Math.max(stillDiff, Math.abs(still.values[i] - native.data[i])); }
      check(stillDiff <= 1e-3, `${label}: the loaded model keeps working after the refused weights (max abs diff ${stillDiff.toExponential(2)})`);
      // Two pictures one after the other: the page ends on the second (an older result never
      // overwrites a newer one).
      const runsBefore = await page.evaluate(() => window.dinoPage.runs);
      await page.setInputFiles('#file', path.join(repo, 'tests/images/chelsea.jpg'));
      await page.setInputFiles('#file', photo);
      await page.waitForFunction((r) => window.dinoPage.runs + (window.dinoPage.dropped || 0) >= r + 2 || window.dinoPage.error, runsBefore, { timeout: 300000 });
      await page.waitForFunction(() => !document.getElementById('status').textContent.startsWith('computing'), null, { timeout: 300000 });
      const last = await page.evaluate(() => ({ ...window.dinoPage }));
      check(!last.error && last.gridW === 28 && last.gridH === 28, `${label}: of two pictures given in a row the page shows the second (${last.gridH}x${last.gridW}, ${last.dropped || 0} dropped)`);
      {
        // A reload takes the weights from the Cache API: no new request for them.
        const requests = page.weightRequests;
        await page.reload();
        await page.waitForFunction(() => window.dinoPage && (window.dinoPage.ready || window.dinoPage.error), null, { timeout: 300000 });
        const reloaded = await page.evaluate(() => ({ ...window.dinoPage }));
        check(reloaded.ready && page.weightRequests === requests && requests >= 1, `${label}: a reload takes the weights from the browser's cache (${page.weightRequests - requests} new downloads, ${requests} before)`);
      }
      // The model runs in a Web Worker: during a pass at 56 x 56 patches (seconds on the CPU
      // path) the main thread keeps running timers every 20 ms.
      const responsive = await page.evaluate(async () => {
        const runs = window.dinoPage.runs;
        let last = performance.now(), maxGap = 0, ticks = 0;
        const timer = setInterval(() => { const t = performance.now(); maxGap = Math.max(maxGap, t - last); last = t; ticks++; }, 20);
        const side = document.getElementById('grid-side');
        side.value = '56';
        side.dispatchEvent(new Event('change'));
        while (window.dinoPage.runs === runs && !window.dinoPage.error) await new Promise((r) => setTimeout(r, 20));
        clearInterval(timer);
        const forwardMs = window.dinoPage.forwardMs;
        side.value = '28';
        side.dispatchEvent(new Event('change'));
        while (window.dinoPage.runs === runs + 1 && !window.dinoPage.error) await new Promise((r) => setTimeout(r, 20));
        return { maxGap, ticks, forwardMs, error: window.dinoPage.error };
      });
      check(!responsive.error && responsive.maxGap < 250 && responsive.ticks >= 5, `${label}: the page answers during a pass (longest pause of the main thread ${responsive.maxGap.toFixed(0)} ms, ${responsive.ticks} timer ticks, pass ${responsive.forwardMs.toFixed(0)} ms)`);
    }
    if (!webgpu) {
      // A DINOv2 checkpoint with registers: the page's attention (after CLS and the 4
      // registers) and PCA equal the native commands on the same picture.
      await page.setInputFiles('#weights-file', v2Weights);
      await page.waitForFunction(() => window.dinoPage.model && window.dinoPage.model.file === 'v2reg4.safetensors' || window.dinoPage.error, null, { timeout: 60000 });
      await page.waitForFunction(() => !document.getElementById('status').textContent.startsWith('computing'), null, { timeout: 300000 });
      await analyzeFile(page, photo);
      const v2 = await page.evaluate(() => {
        const mode = document.getElementById('view-mode');
        mode.value = 'pca';
        mode.dispatchEvent(new Event('change'));
        const state = { ...window.dinoPage };
        mode.value = 'mean';
        mode.dispatchEvent(new Event('change'));
        return state;
      });
      const dA = maxAbsDiff(v2.values, v2Attention.data);
      const dP = maxAbsDiff(v2.pca, v2Pca.data);
      check(!v2.error && v2.model.num_register_tokens === 4 && dA <= 1e-3 && dP <= 1e-3,
        `cpu: a DINOv2 model with registers draws the native attention and PCA (${v2.model.arch}, ${v2.heads} heads ${v2.gridH}x${v2.gridW}; max abs diff ${dA.toExponential(2)}, ${dP.toExponential(2)}; ${v2.error || 'ok'})`);
      await page.screenshot({ path: path.join(shots, 'page-dinov2.png'), fullPage: true });
      // A click on a held-out picture runs the model on it.
      const before = await page.evaluate(() => window.dinoPage.runs);
      await page.click('#samples button:nth-child(8)');
      await page.waitForFunction((r) => window.dinoPage.runs > r, before, { timeout: 120000 });
      const clicked = await page.evaluate(() => ({ ...window.dinoPage }));
      check(!clicked.error && clicked.gridH === 28, `cpu: a click on a held-out picture analyses it (${clicked.error || 'ok'})`);
      // The same page on a phone-sized screen (the layout stacks into one column).
      await page.setViewportSize({ width: 390, height: 844 });
      await page.screenshot({ path: path.join(shots, 'page-phone.png'), fullPage: true });
    }
    await page.close();

    if (!webgpu) {
      const docs = await browser.newPage({ viewport: { width: 900, height: 1100 } });
      await docs.goto(`${base}/docs/example.html`);
      await docs.waitForFunction(() => [...document.querySelectorAll('dino-attention')].every((w) => w.dataset.state === 'ready' || w.dataset.state === 'error'), null, { timeout: 300000 });
      const widgets = await docs.evaluate(() => [...document.querySelectorAll('dino-attention')].map((w) => ({ id: w.id, state: w.dataset.state, canvases: w.shadowRoot.querySelectorAll('canvas').length })));
      check(widgets.length === 5 && widgets.every((w) => w.state === 'ready' && w.canvases > 0), `widget page renders five widgets ${JSON.stringify(widgets)}`);
      // The view widgets: PCA colours for every patch; a click moves the similarity query and
      // redraws without a new pass; layer="0" draws block 0.
      const viewWidgets = await docs.evaluate(async () => {
        const pca = document.getElementById('pca');
        const sim = document.getElementById('similarity');
        const grid = [pca.analysis.grid_h(), pca.analysis.grid_w()];
        const [runs, draws] = [sim.runs, sim.draws];
        const canvas = sim.shadowRoot.querySelector('canvas');
        const r = canvas.getBoundingClientRect();
        canvas.dispatchEvent(new MouseEvent('click', { clientX: r.left + 2, clientY: r.top + 2, bubbles: true }));
        await new Promise((res) => setTimeout(res, 200));
        return {
          pcaValues: pca.values.length, grid, query: sim.getAttribute('query'), selfSimilarity: sim.values[0],
          runs: sim.runs - runs, draws: sim.draws - draws, layer0: document.getElementById('layer0').analysis.layer(),
        };
      });
      check(viewWidgets.pcaValues === viewWidgets.grid[0] * viewWidgets.grid[1] * 3 && viewWidgets.query === '0 0'
        && Math.abs(viewWidgets.selfSimilarity - 1) < 1e-5 && viewWidgets.runs === 0 && viewWidgets.draws === 1 && viewWidgets.layer0 === 0,
        `widget: pca, similarity (click sets query, redraw without a pass) and layer views ${JSON.stringify(viewWidgets)}`);
      // Only the drawing changes: the widget redraws without running the model again.
      const redraw = await docs.evaluate(async () => {
        const w = document.querySelector('dino-attention');
        const [runs, draws] = [w.runs, w.draws];
        w.setAttribute('opacity', '0.3');
        w.setAttribute('threshold', '0.5');
        await new Promise((r) => setTimeout(r, 200));
        return { runs: w.runs - runs, draws: w.draws - draws, state: w.dataset.state };
      });
      check(redraw.runs === 0 && redraw.draws === 2 && redraw.state === 'ready', `widget: opacity and threshold redraw without a new pass ${JSON.stringify(redraw)}`);
      await docs.screenshot({ path: path.join(shots, 'widgets.png'), fullPage: true });
      await docs.close();
    }
  });
}

fs.writeFileSync(path.join(shots, 'timings.json'), JSON.stringify(timings, null, 2));
server.close();
if (failures.length) { console.log(`${failures.length} browser check(s) failed`); process.exit(1); }
console.log('all browser checks passed');
