// Runs an ONNX model in ONNX Runtime (onnxruntime-node, installed into bench/ by
// bench/setup.sh) on one float32 input read from a raw little-endian file, and writes
// its first output the same way. The ONNX export test (onnx_parity.py) drives it.
// Usage: node tests/onnx/ort_run.mjs MODEL.onnx INPUT.bin N,C,H,W OUTPUT.bin
// Prints the output's shape as JSON.
import { createRequire } from 'node:module';
import { readFileSync, writeFileSync } from 'node:fs';

const require = createRequire(new URL('../../bench/package.json', import.meta.url));
const ort = require('onnxruntime-node');

const [modelPath, inputPath, dimsText, outputPath] = process.argv.slice(2);
if (!outputPath) {
  console.error('usage: node ort_run.mjs MODEL.onnx INPUT.bin N,C,H,W OUTPUT.bin');
  process.exit(2);
}
const dims = dimsText.split(',').map(Number);
const bytes = readFileSync(inputPath);
const data = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
const session = await ort.InferenceSession.create(modelPath, {
  executionProviders: ['cpu'],
  intraOpNumThreads: 2,
  interOpNumThreads: 1,
});
const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', data, dims) };
const out = (await session.run(feeds))[session.outputNames[0]];
writeFileSync(outputPath, Buffer.from(out.data.buffer, out.data.byteOffset, out.data.byteLength));
console.log(JSON.stringify({ input: session.inputNames[0], output: session.outputNames[0], dims: out.dims }));
