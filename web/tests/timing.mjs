// Forward-pass time of a model on the page's CPU path (flex in WASM, in the page's Web Worker),
// in Debian's headless Chromium driven by playwright-core. Usage:
//   node web/tests/timing.mjs DIST WEIGHTS.safetensors PATCHES OUT.json [LABEL]
// loads WEIGHTS on the page (`dino export` output), sets the grid to PATCHES along the shorter
// side (14 patches x 16 px = 224 px for a ViT-S/16), analyses tests/images/astronaut.jpg four
// times and writes the times (ms, each pass with the attention and the features read back) to
// OUT.json under LABEL (other labels already in the file are kept: a before / after table).
import { chromium } from 'playwright-core';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const [distArg, weights, patches, out, label = 'run'] = process.argv.slice(2);
if (!distArg || !weights || !patches || !out) {
  console.error('usage: node web/tests/timing.mjs DIST WEIGHTS.safetensors PATCHES OUT.json [LABEL]');
  process.exit(2);
}
const dist = path.resolve(distArg);
const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm', '.png': 'image/png', '.jpg': 'image/jpeg' };
const server = http.createServer((req, res) => {
  let file = path.join(dist, decodeURIComponent(new URL(req.url, 'http://x').pathname));
  if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, 'index.html');
  if (!file.startsWith(dist) || !fs.existsSync(file)) { res.writeHead(404); return res.end(); }
  res.writeHead(200, { 'Content-Type': types[path.extname(file)] || 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args: ['--no-sandbox'] });
try {
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${server.address().port}/index.html`);
  await page.waitForFunction(() => window.dinoPage && (window.dinoPage.ready || window.dinoPage.error), null, { timeout: 300000 });
  await page.setInputFiles('#weights-file', weights);
  const name = path.basename(weights);
  await page.waitForFunction((n) => (window.dinoPage.model && window.dinoPage.model.file === n) || window.dinoPage.error, name, { timeout: 300000 });
  await page.selectOption('#grid-side', patches);
  const times = [];
  for (let i = 0; i < 4; i++) {
    const runs = await page.evaluate(() => window.dinoPage.runs);
    await page.setInputFiles('#file', path.join(repo, 'tests/images/astronaut.jpg'));
    await page.waitForFunction((r) => window.dinoPage.runs > r || window.dinoPage.error, runs, { timeout: 300000 });
    const s = await page.evaluate(() => ({ ...window.dinoPage }));
    if (s.error) throw new Error(s.error);
    times.push(Math.round(s.forwardMs));
    console.log(`${label}: ${s.model.arch} at ${s.inputSize} px (${s.gridH} x ${s.gridW} patches): ${s.forwardMs.toFixed(0)} ms`);
  }
  const all = fs.existsSync(out) ? JSON.parse(fs.readFileSync(out, 'utf8')) : {};
  all[label] = { weights: name, patches: Number(patches), backend: 'cpu', times_ms: times, median_ms: [...times].sort((a, b) => a - b)[2] };
  fs.writeFileSync(out, JSON.stringify(all, null, 2));
} finally {
  await browser.close();
  server.close();
}
