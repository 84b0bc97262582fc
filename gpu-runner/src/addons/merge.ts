/**
 * LoRA merging for bundles without branch inputs (DESIGN.md): W ← W + Σ scale·(alpha/rank)·up·down, written into
 * the ONNX model's initializers in place (the bytes keep their length, so no protobuf re-encoding), and a session
 * is built per add-on set. 3×3 convolutions compose as a convolution: the down kernel [r, in, 3, 3] followed by the
 * 1×1 up [out, r] is one 3×3 kernel up·down. Field numbers follow onnx/onnx.proto.
 */
import type { LoraTarget } from "../pipeline/manifest.ts";
import { LoraError, type LoraUse } from "./lora.ts";
import { downFeatures } from "./lora-keys.ts";

interface Located {
  dims: number[];
  dataType: number;
  /** Where the float32 values are: raw_data bytes, or the packed float_data field. */
  offset: number;
  byteLength: number;
}

function varint(buf: Uint8Array, pos: number): [number, number] {
  let result = 0;
  let shift = 0;
  for (;;) {
    const b = buf[pos++]!;
    result += (b & 0x7f) * 2 ** shift;
    if ((b & 0x80) === 0) return [result, pos];
    shift += 7;
    if (shift > 63) throw new LoraError("malformed ONNX varint");
  }
}

/** Iterates the fields of one protobuf message in [start, end): field number, wire type, value span. */
function* fields(buf: Uint8Array, start: number, end: number): Generator<{ field: number; wire: number; at: number; len: number; value: number }> {
  let pos = start;
  while (pos < end) {
    const [key, p1] = varint(buf, pos);
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (wire === 0) {
      const [value, p2] = varint(buf, p1);
      yield { field, wire, at: p1, len: p2 - p1, value };
      pos = p2;
    } else if (wire === 2) {
      const [len, p2] = varint(buf, p1);
      yield { field, wire, at: p2, len, value: 0 };
      pos = p2 + len;
    } else if (wire === 5) {
      yield { field, wire, at: p1, len: 4, value: 0 };
      pos = p1 + 4;
    } else if (wire === 1) {
      yield { field, wire, at: p1, len: 8, value: 0 };
      pos = p1 + 8;
    } else throw new LoraError(`unsupported protobuf wire type ${wire}`);
  }
}

/** The graph's float initializers by name, with where their values lie in the model bytes. */
export function locateInitializers(model: Uint8Array): Map<string, Located> {
  const out = new Map<string, Located>();
  for (const g of fields(model, 0, model.byteLength)) {
    if (g.field !== 7 || g.wire !== 2) continue; // ModelProto.graph
    for (const f of fields(model, g.at, g.at + g.len)) {
      if (f.field !== 5 || f.wire !== 2) continue; // GraphProto.initializer
      let name = "";
      const dims: number[] = [];
      let dataType = 0;
      let data: { offset: number; byteLength: number } | undefined;
      for (const t of fields(model, f.at, f.at + f.len)) {
        if (t.field === 8) name = new TextDecoder().decode(model.subarray(t.at, t.at + t.len));
        else if (t.field === 1 && t.wire === 0) dims.push(t.value);
        else if (t.field === 1 && t.wire === 2) for (let p = t.at; p < t.at + t.len; ) { const [d, n] = varint(model, p); dims.push(d); p = n; }
        else if (t.field === 2) dataType = t.value;
        else if ((t.field === 9 || t.field === 4) && t.wire === 2) data = { offset: t.at, byteLength: t.len };
      }
      if (data && dataType === 1) out.set(name, { dims, dataType, ...data });
    }
  }
  return out;
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
  for (const t of targets) {
    const name = t.weight?.[component];
    if (!name) continue;
    const delta = loraDelta(t, uses);
    if (!delta) continue;
    const w = where.get(name);
    if (!w) throw new LoraError(`initializer '${name}' of target '${t.module}' is not in ${component}`);
    if (w.byteLength !== delta.length * 4) throw new LoraError(`initializer '${name}' has ${w.byteLength / 4} values; the LoRA delta has ${delta.length}`);
    const transposed = t.weight_layout === "in_out";
    const nIn = downFeatures(t);
    for (let o = 0; o < t.out_features; o++) {
      for (let i = 0; i < nIn; i++) {
        const index = transposed ? i * t.out_features + o : o * nIn + i;
        const at = w.offset + index * 4;
        view.setFloat32(at, view.getFloat32(at, true) + delta[o * nIn + i]!, true);
      }
    }
  }
  return merged;
}
