// ONNX Runtime (Node binding, CPU execution provider) inference timing, the peer of
// `incres bench MODEL --mode infer`: random input, untimed warm-up runs, then the
// median of timed runs. Prints one JSON line.
// Usage: node bench/ort_infer.mjs --model-file F.onnx --model resnet50 --batch 16
//          [--image 224] [--iters 20] [--warmup 3] [--threads 2]
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';

const require = createRequire(import.meta.url);
const ort = require('onnxruntime-node');

const { values: a } = parseArgs({
  options: {
    'model-file': { type: 'string' },
    model: { type: 'string' },
    batch: { type: 'string', default: '16' },
    image: { type: 'string', default: '224' },
    iters: { type: 'string', default: '20' },
    warmup: { type: 'string', default: '3' },
    threads: { type: 'string', default: '2' },
  },
});
if (!a['model-file']) {
  console.error('ort_infer.mjs: --model-file is required');
  process.exit(2);
}
const batch = Number(a.batch), image = Number(a.image), iters = Number(a.iters);
const warmup = Number(a.warmup), threads = Number(a.threads);

const session = await ort.InferenceSession.create(a['model-file'], {
  executionProviders: ['cpu'],
  graphOptimizationLevel: 'all',
  executionMode: 'sequential',
  intraOpNumThreads: threads,
  interOpNumThreads: 1,
});
const data = new Float32Array(batch * 3 * image * image);
for (let i = 0; i < data.length; i++) data[i] = Math.random() * 2 - 1;
const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', data, [batch, 3, image, image]) };

for (let i = 0; i < warmup; i++) await session.run(feeds);
const times = [];
for (let i = 0; i < iters; i++) {
  const t0 = performance.now();
  await session.run(feeds);
  times.push(performance.now() - t0);
}
times.sort((x, y) => x - y);
const mid = times.length >> 1;
const median = times.length % 2 ? times[mid] : (times[mid - 1] + times[mid]) / 2;
console.log(JSON.stringify({
  engine: 'onnxruntime', peer: `onnxruntime ${ort.env.versions.node}`, model: a.model ?? a['model-file'],
  mode: 'infer', batch, image, threads, iters, images_per_sec: batch / (median / 1e3), median_ms: median,
}));
