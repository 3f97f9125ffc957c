// Run a TF.js graph model on @tensorflow/tfjs's pure-JavaScript CPU backend and write chosen nodes' values:
// the reference side of the TF.js -> PyTorch parity test (training/tfjs_node.py calls it).
//
//   node scripts/tfjs_features.mjs --tfjs .cache/tfjs --model M/model.json --input in.f32 --shape 2,224,224,3 \
//        --outputs node_a,node_b --out out.f32
//
// The input is raw little-endian float32 NHWC; the outputs are written the same way, one after the other, and
// their shapes printed as JSON on stdout. The model is loaded with tf.io.fromMemory from its model.json and
// shards (concatenated in manifest order), exactly as a browser would fetch them. Placeholder heights and
// widths are relaxed to -1 so the graph also runs at sizes other than its native one.
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || i + 1 >= argv.length) throw new Error(`bad argument ${argv[i]}`);
    args[argv[i].slice(2)] = argv[i + 1];
  }
  for (const key of ['tfjs', 'model', 'input', 'shape', 'outputs', 'out']) {
    if (!(key in args)) throw new Error(`missing --${key}`);
  }
  return args;
}

function relaxInputs(model) {
  for (const node of model.modelTopology.node) {
    const dims = node.op === 'Placeholder' ? node.attr?.shape?.shape?.dim : undefined;
    if (dims && dims.length === 4) {
      for (let d = 0; d < 3; d += 1) dims[d].size = '-1';
    }
  }
  for (const spec of Object.values(model.signature?.inputs ?? {})) {
    const dims = spec.tensorShape?.dim;
    if (dims && dims.length === 4) {
      for (let d = 0; d < 3; d += 1) dims[d].size = '-1';
    }
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const require = createRequire(path.resolve(args.tfjs, 'package.json'));
  const tf = require('@tensorflow/tfjs');
  await tf.setBackend('cpu');
  await tf.ready();

  const model = JSON.parse(readFileSync(args.model, 'utf8'));
  relaxInputs(model);
  const dir = path.dirname(args.model);
  const specs = model.weightsManifest.flatMap((group) => group.weights);
  const shards = model.weightsManifest.flatMap((group) => group.paths).map((p) => readFileSync(path.join(dir, p)));
  const data = Buffer.concat(shards);
  const weightData = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
  const graph = await tf.loadGraphModel(tf.io.fromMemory({ modelTopology: model.modelTopology, weightSpecs: specs, weightData }));

  const shape = args.shape.split(',').map(Number);
  const raw = readFileSync(args.input);
  const values = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
  const input = tf.tensor(values, shape, 'float32');
  const names = args.outputs.split(',');
  const result = await graph.executeAsync({ [graph.inputs[0].name]: input }, names);
  const tensors = Array.isArray(result) ? result : [result];
  const parts = [];
  const shapes = [];
  for (const t of tensors) {
    const out = await t.data();
    parts.push(Buffer.from(out.buffer, out.byteOffset, out.byteLength));
    shapes.push(t.shape);
  }
  writeFileSync(args.out, Buffer.concat(parts));
  process.stdout.write(`${JSON.stringify({ shapes, backend: tf.getBackend(), version: tf.version.tfjs })}\n`);
}

main().catch((err) => {
  process.stderr.write(`${err.stack ?? err}\n`);
  process.exit(1);
});
