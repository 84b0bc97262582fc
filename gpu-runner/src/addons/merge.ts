/**
 * LoRA merging (DESIGN.md): W ← W + Σ scale·(alpha/rank)·up·down, written into the ONNX model's initializers, and a
 * session is built per add-on set: for bundles without branch inputs, and for a branch bundle's hot add-on sets
 * (runtime.ts). float32 weights are added to in place (the bytes keep their length, so no protobuf re-encoding);
 * float16-stored ones are widened to float32 and the graph re-encoded around them. 3×3 convolutions compose as a
 * convolution: the down kernel [r, in, 3, 3] followed by the 1×1 up [out, r] is one 3×3 kernel up·down. Field
 * numbers follow onnx/onnx.proto.
 */
import type { LoraTarget } from "@imagegen/formats/manifest";
import { ProtoWriter } from "../onnx/builder.ts";
import { ProtoReader, protoFields } from "@imagegen/formats/onnx-reader";
import { LoraError, type LoraUse } from "./lora.ts";
import { downFeatures } from "@imagegen/formats/lora-keys";
import { f16ToF32 } from "@imagegen/formats/safetensors";

const FLOAT = 1;
const FLOAT16 = 10;

interface Located {
  dims: number[];
  dataType: number;
  /** Where the values are: raw_data bytes, or (float32 only) the packed float_data field. */
  offset: number;
  byteLength: number;
  /** The TensorProto's field in the graph, [start, end) of the model bytes. */
  start: number;
  end: number;
}

/** Runs a parse, reporting a malformed model as a LoraError. */
function asLoraError<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw new LoraError(`malformed ONNX model: ${(err as Error).message}`);
  }
}

/** The graph's float32 and float16 initializers by name, with where their values lie in the model bytes. */
export function locateInitializers(model: Uint8Array): Map<string, Located> {
  return asLoraError(() => {
    const out = new Map<string, Located>();
    for (const g of protoFields(model)) {
      if (g.field !== 7 || g.wire !== 2) continue; // ModelProto.graph
      for (const f of protoFields(model, g.at, g.end)) {
        if (f.field !== 5 || f.wire !== 2) continue; // GraphProto.initializer
        let name = "";
        const dims: number[] = [];
        let dataType = 0;
        let data: { offset: number; byteLength: number; raw: boolean } | undefined;
        for (const t of protoFields(model, f.at, f.end)) {
          if (t.field === 8) name = new TextDecoder().decode(model.subarray(t.at, t.end));
          else if (t.field === 1 && t.wire === 0) dims.push(t.value);
          else if (t.field === 1 && t.wire === 2) {
            const r = new ProtoReader(model, t.end);
            r.pos = t.at;
            r.ints(2, dims);
          } else if (t.field === 2) dataType = t.value;
          // raw_data (9), or float32's packed float_data (4).
          else if ((t.field === 9 || t.field === 4) && t.wire === 2) data = { offset: t.at, byteLength: t.end - t.at, raw: t.field === 9 };
        }
        // float16 values outside raw_data (one per int32_data varint) are not located: such a weight is not merged into.
        if (data && (dataType === FLOAT || (dataType === FLOAT16 && data.raw))) out.set(name, { dims, dataType, offset: data.offset, byteLength: data.byteLength, start: f.start, end: f.end });
      }
    }
    return out;
  });
}

/** The model with some initializers replaced by float32 ones (same names and dims): a float16-stored weight that
 * received a LoRA delta is widened rather than rounded back to float16. */
function replaceInitializers(model: Uint8Array, replaced: Map<string, { located: Located; values: Float32Array }>): Uint8Array {
  const byStart = new Map([...replaced].map(([name, r]) => [r.located.start, { name, ...r }]));
  const out = new ProtoWriter();
  for (const top of protoFields(model)) {
    if (top.field !== 7 || top.wire !== 2) {
      out.raw(model.subarray(top.start, top.end));
      continue;
    }
    out.message(7, (graph) => {
      for (const g of protoFields(model, top.at, top.end)) {
        const r = byStart.get(g.start);
        if (!r) {
          graph.raw(model.subarray(g.start, g.end));
          continue;
        }
        graph.message(5, (t) => {
          for (const d of r.located.dims) t.int(1, d);
          t.int(2, FLOAT).string(8, r.name).bytes(9, new Uint8Array(r.values.buffer, r.values.byteOffset, r.values.byteLength));
        });
      }
    });
  }
  return out.finish();
}

/** Σ over uses of scale·(alpha/rank)·up·down for one target, as [out, in] (or [out, in, kh, kw] for conv3x3). */
export function loraDelta(target: LoraTarget, uses: LoraUse[]): Float32Array | undefined {
  const nIn = downFeatures(target);
  const nOut = target.out_features;
  let delta: Float32Array | undefined;
  for (const use of uses) {
    const layer = use.lora.layers.get(target.module);
    if (!layer) continue;
    delta ??= new Float32Array(nOut * nIn);
    const s = use.scale * layer.scale;
    // down is [r, in·k] (a 3×3 kernel flattened per input channel); up is [out, r].
    for (let o = 0; o < nOut; o++) {
      for (let r = 0; r < layer.rank; r++) {
        const u = s * layer.up[o * layer.rank + r]!;
        if (u === 0) continue;
        const row = o * nIn;
        const down = r * nIn;
        for (let j = 0; j < nIn; j++) delta[row + j]! += u * layer.down[down + j]!;
      }
    }
  }
  return delta;
}

/**
 * A copy of `model` with the uses' LoRAs merged into the initializers the manifest names for `component`.
 * `layout` "in_out" means the graph stores W transposed ([in, out], a MatMul weight), "out_in" as PyTorch does.
 */
export function mergeLoras(model: Uint8Array, component: string, targets: LoraTarget[], uses: LoraUse[]): Uint8Array {
  const merged = model.slice();
  const where = locateInitializers(merged);
  const view = new DataView(merged.buffer, merged.byteOffset, merged.byteLength);
  const widened = new Map<string, { located: Located; values: Float32Array }>();
  for (const t of targets) {
    const name = t.weight?.[component];
    if (!name) continue;
    const delta = loraDelta(t, uses);
    if (!delta) continue;
    const w = where.get(name);
    if (!w) throw new LoraError(`initializer '${name}' of target '${t.module}' is not in ${component}`);
    const size = w.dataType === FLOAT ? 4 : 2;
    if (w.byteLength !== delta.length * size) throw new LoraError(`initializer '${name}' has ${w.byteLength / size} values; the LoRA delta has ${delta.length}`);
    // float32 is added to in place; float16 (a bundle stored at half size) is widened to float32 first.
    let values: Float32Array | undefined;
    if (w.dataType === FLOAT16) {
      values = Float32Array.from({ length: delta.length }, (_, i) => f16ToF32(view.getUint16(w.offset + i * 2, true)));
      widened.set(name, { located: w, values });
    }
    const transposed = t.weight_layout === "in_out";
    const nIn = downFeatures(t);
    for (let o = 0; o < t.out_features; o++) {
      for (let i = 0; i < nIn; i++) {
        const index = transposed ? i * t.out_features + o : o * nIn + i;
        const d = delta[o * nIn + i]!;
        if (values) values[index]! += d;
        else {
          const at = w.offset + index * 4;
          view.setFloat32(at, view.getFloat32(at, true) + d, true);
        }
      }
    }
  }
  return widened.size ? replaceInitializers(merged, widened) : merged;
}
