/**
 * LoRA merging (DESIGN.md): W ← W + Σ scale·(alpha/rank)·up·down, written into the ONNX model's initializers, and a
 * session is built per add-on set: for bundles without branch inputs, and for a branch bundle's hot add-on sets
 * (runtime.ts). float32 weights are added to in place (the bytes keep their length, so no protobuf re-encoding);
 * float16 weights that the graph only casts up (the zoo's half-size storage) are widened to float32 and the graph
 * re-encoded around them, while those a float16 graph computes with (an fp16 export) are rounded back in place.
 * Weights in external data (`model.onnx_data`) are patched in a copy of that file. 3×3 convolutions compose as a
 * convolution: the down kernel [r, in, 3, 3] followed by the 1×1 up [out, r] is one 3×3 kernel up·down. Field
 * numbers follow onnx/onnx.proto.
 */
import type { LoraTarget } from "@imagegen/formats/manifest";
import { ProtoWriter } from "../onnx/builder.ts";
import {
  locateInitializers,
  ONNX_FLOAT,
  ONNX_FLOAT16,
  protoFields,
  readOnnxGraph,
  type LocatedTensor,
} from "@imagegen/formats/onnx-reader";
import { LoraError, type LoraUse } from "./lora.ts";
import { downFeatures } from "@imagegen/formats/lora-keys";
import { f16ToF32, f32ToF16 } from "@imagegen/formats/safetensors";

/** Where a weight lies (re-exported for the tests that check it). */
export { locateInitializers };
type Located = LocatedTensor;

/** A model and the external data files it references by location (`model.onnx_data`), as ONNX Runtime takes them. */
export interface ModelFiles {
  model: Uint8Array;
  external: Map<string, Uint8Array>;
}

/** Runs a parse, reporting a malformed model as a LoraError. */
function asLoraError<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw new LoraError(`malformed ONNX model: ${(err as Error).message}`);
  }
}

/** The model with some initializers replaced by float32 ones (same names and dims): a float16-stored weight that
 * received a LoRA delta is widened rather than rounded back to float16. */
function replaceInitializers(
  model: Uint8Array,
  replaced: Map<string, { located: Located; values: Float32Array }>,
): Uint8Array {
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
          t.int(2, ONNX_FLOAT)
            .string(8, r.name)
            .bytes(9, new Uint8Array(r.values.buffer, r.values.byteOffset, r.values.byteLength));
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
  return mergeLoraFiles({ model, external: new Map() }, component, targets, uses).model;
}

/** The external data files (locations beside the model) that the model's float initializers lie in. */
export function externalDataFiles(model: Uint8Array): string[] {
  const where = asLoraError(() => locateInitializers(model));
  return [...new Set([...where.values()].flatMap((w) => (w.external ? [w.external.location] : [])))];
}

/** mergeLoras for a model with external data: the patched files are copies; `files.external` holds those needed. */
export function mergeLoraFiles(
  files: ModelFiles,
  component: string,
  targets: LoraTarget[],
  uses: LoraUse[],
): ModelFiles {
  const merged = files.model.slice();
  const external = new Map<string, Uint8Array>();
  const where = asLoraError(() => locateInitializers(merged));
  // float16 weights consumed only by Casts are storage (widen them); any other consumer computes in float16.
  let castOnly: Set<string> | undefined;
  const storedHalf = (name: string): boolean => {
    if (!castOnly) {
      const graph = asLoraError(() => readOnnxGraph(merged));
      const other = new Set<string>();
      const cast = new Set<string>();
      for (const n of graph.nodes) for (const i of n.inputs) (n.opType === "Cast" ? cast : other).add(i);
      castOnly = new Set([...cast].filter((i) => !other.has(i)));
    }
    return castOnly.has(name);
  };
  const widened = new Map<string, { located: Located; values: Float32Array }>();
  for (const t of targets) {
    const name = t.weight?.[component];
    if (!name) continue;
    const delta = loraDelta(t, uses);
    if (!delta) continue;
    const w = where.get(name);
    if (!w) throw new LoraError(`initializer '${name}' of target '${t.module}' is not in ${component}`);
    let bytes: Uint8Array = merged;
    if (w.external) {
      const loc = w.external.location;
      let data = external.get(loc);
      if (!data) {
        const source = files.external.get(loc);
        if (!source)
          throw new LoraError(`initializer '${name}' of target '${t.module}' lies in '${loc}', which was not given`);
        data = source.slice();
        external.set(loc, data);
      }
      bytes = data;
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const size = w.dataType === ONNX_FLOAT ? 4 : 2;
    if (w.byteLength !== delta.length * size || w.offset + w.byteLength > bytes.byteLength) {
      throw new LoraError(
        `initializer '${name}' has ${w.byteLength / size} values; the LoRA delta of '${t.module}' has ${delta.length}`,
      );
    }
    const half = w.dataType === ONNX_FLOAT16;
    // float16 storage (a zoo bundle at half size) is widened to float32; a float16 graph's weight is rounded back.
    let values: Float32Array | undefined;
    if (half && !w.external && storedHalf(name)) {
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
        else if (half) {
          const at = w.offset + index * 2;
          view.setUint16(at, f32ToF16(f16ToF32(view.getUint16(at, true)) + d), true);
        } else {
          const at = w.offset + index * 4;
          view.setFloat32(at, view.getFloat32(at, true) + d, true);
        }
      }
    }
  }
  return { model: widened.size ? replaceInitializers(merged, widened) : merged, external };
}
