// Runs ONNX models with onnxruntime-node on inputs written by export.py (zoo-internal parity check).
// usage: node ort_run.cjs job.json   job = {runs:[{model, inputs:{name:{dtype,shape,file}}, out}]}
// Writes for each run: <out>.json {name:{dims,type}} and <out>.<name>.bin (raw little-endian).
const fs = require("fs");
const path = require("path");
let ort;
for (const p of [process.env.ORT_NODE, path.join(__dirname, "../../../node_modules/onnxruntime-node"),
                 path.join(__dirname, "../../node_modules/onnxruntime-node")]) {
  if (!p) continue;
  try { ort = require(p); break; } catch (e) { /* next */ }
}
if (!ort) { console.error("onnxruntime-node not found"); process.exit(3); }
const ctor = { float32: Float32Array, int64: BigInt64Array, float16: Uint16Array, int32: Int32Array };
(async () => {
  const job = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const sessions = {};
  for (const run of job.runs) {
    if (!sessions[run.model]) sessions[run.model] = await ort.InferenceSession.create(run.model, { intraOpNumThreads: 1 });
    const s = sessions[run.model];
    const feeds = {};
    for (const [name, spec] of Object.entries(run.inputs)) {
      const buf = fs.readFileSync(spec.file);
      const C = ctor[spec.dtype];
      const arr = new C(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
      feeds[name] = new ort.Tensor(spec.dtype, arr, spec.shape);
    }
    const res = await s.run(feeds);
    const meta = {};
    for (const [name, t] of Object.entries(res)) {
      meta[name] = { dims: t.dims, type: t.type };
      fs.writeFileSync(`${run.out}.${name}.bin`, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    }
    meta.__inputs = s.inputNames; meta.__outputs = s.outputNames;
    if (s.inputMetadata) meta.__input_meta = s.inputMetadata;
    fs.writeFileSync(`${run.out}.json`, JSON.stringify(meta));
  }
})().catch((e) => { console.error(e); process.exit(1); });
