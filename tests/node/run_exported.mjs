// Run an onnxcam-exported model with onnxruntime-node and write its heatmap.
// usage: node run_exported.mjs MODEL INPUT.f32 N,C,H,W OUT.f32 [CLASS,...]
// INPUT.f32 / OUT.f32 are raw little-endian float32; the map comes from the output "onnxcam/map".
import { readFileSync, writeFileSync } from 'node:fs';
import * as ort from 'onnxruntime-node';

const [model, inputPath, dims, outPath, classes] = process.argv.slice(2);
const session = await ort.InferenceSession.create(model);
const shape = dims.split(',').map(Number);
const raw = readFileSync(inputPath);
const data = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', data, shape) };
if (classes) {
  const ids = BigInt64Array.from(classes.split(',').map(BigInt));
  feeds['onnxcam/class'] = new ort.Tensor('int64', ids, [ids.length]);
}
const out = await session.run(feeds);
const map = out['onnxcam/map'];
writeFileSync(outPath, Buffer.from(map.data.buffer, map.data.byteOffset, map.data.byteLength));
console.log(JSON.stringify({ dims: map.dims, target: Array.from(out['onnxcam/target'].data, Number) }));
