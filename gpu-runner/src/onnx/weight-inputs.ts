/**
 * The graph rewrite behind folded LoRA sets (addons/fold.ts): named weight initializers become float32 graph inputs,
 * so one session runs any set's merged weights `W + Σ s·up·down`, fed per run, with no session built per set and no
 * branch computed per step. A float32 initializer becomes an input of its own name; a float16 one that the graph
 * only casts up (the zoo's half-size storage) is dropped with its Cast, whose output becomes the input. Weights a
 * float16 graph computes with, and weights in external data, are refused (those models keep their branches).
 * Field numbers follow onnx/onnx.proto.
 */
import {
  locateInitializers,
  ONNX_FLOAT,
  ONNX_FLOAT16,
  protoFields,
  readOnnxGraph,
} from "@imagegen/formats/onnx-reader";
import { f16ToF32 } from "@imagegen/formats/safetensors";
import { ProtoWriter, writeValueInfo } from "./builder.ts";
import { GraphRewriteError } from "./lora-branches.ts";

/** One weight turned into a graph input. */
export interface WeightInput {
  /** The graph input that now carries the weight (float32). */
  input: string;
  dims: number[];
  /** The model's own values, as float32 in the graph's layout. */
  base: Float32Array;
}

export interface WeightInputsRewrite {
  model: Uint8Array;
  /** By initializer name (the manifest's `weight` entries). */
  weights: Map<string, WeightInput>;
}

/** `model` with the initializers `names` turned into float32 graph inputs. */
export function weightsAsInputs(model: Uint8Array, names: readonly string[]): WeightInputsRewrite {
  const located = locateInitializers(model);
  const graph = readOnnxGraph(model);
  const consumers = new Map<string, typeof graph.nodes>();
  for (const n of graph.nodes) for (const i of n.inputs) consumers.set(i, [...(consumers.get(i) ?? []), n]);
  const dropInitializers = new Set<string>();
  const dropNodesByOutput = new Set<string>();
  const weights = new Map<string, WeightInput>();
  const view = new DataView(model.buffer, model.byteOffset, model.byteLength);
  for (const name of new Set(names)) {
    const w = located.get(name);
    if (!w) throw new GraphRewriteError(`initializer '${name}' is not a float initializer of this graph`);
    if (w.external) throw new GraphRewriteError(`initializer '${name}' lies in external data (${w.external.location})`);
    const count = w.dims.reduce((a, b) => a * b, 1);
    const base = new Float32Array(count);
    let input = name;
    if (w.dataType === ONNX_FLOAT) {
      if (w.byteLength !== count * 4) throw new GraphRewriteError(`initializer '${name}' is not raw float32 data`);
      for (let i = 0; i < count; i++) base[i] = view.getFloat32(w.offset + i * 4, true);
    } else if (w.dataType === ONNX_FLOAT16) {
      const uses = consumers.get(name) ?? [];
      const cast = uses[0];
      if (uses.length !== 1 || cast?.opType !== "Cast" || cast.ints.to !== ONNX_FLOAT || cast.outputs.length !== 1)
        throw new GraphRewriteError(`float16 initializer '${name}' is computed with, not only cast to float32`);
      for (let i = 0; i < count; i++) base[i] = f16ToF32(view.getUint16(w.offset + i * 2, true));
      input = cast.outputs[0]!;
      dropNodesByOutput.add(input);
    } else throw new GraphRewriteError(`initializer '${name}' has data type ${w.dataType}`);
    dropInitializers.add(name);
    weights.set(name, { input, dims: w.dims, base });
  }

  const text = new TextDecoder();
  const out = new ProtoWriter();
  for (const top of protoFields(model)) {
    if (top.field !== 7 || top.wire !== 2) {
      out.raw(model.subarray(top.start, top.end));
      continue;
    }
    out.message(7, (g) => {
      for (const f of protoFields(model, top.at, top.end)) {
        if (f.wire === 2 && (f.field === 1 || f.field === 5 || f.field === 11)) {
          // node (1): its outputs are field 2; initializer (5) and input (11): their name is field 8 / 1.
          const nameField = f.field === 1 ? 2 : f.field === 5 ? 8 : 1;
          const names = protoFields(model, f.at, f.end)
            .filter((x) => x.field === nameField && x.wire === 2)
            .map((x) => text.decode(model.subarray(x.at, x.end)));
          if (f.field === 1 && names.some((n) => dropNodesByOutput.has(n))) continue;
          if (f.field === 5 && dropInitializers.has(names[0] ?? "")) continue;
          // A model that lists its initializers among its inputs (IR < 4): the new float32 input replaces that entry.
          if (f.field === 11 && dropInitializers.has(names[0] ?? "")) continue;
        }
        g.raw(model.subarray(f.start, f.end));
      }
      for (const w of weights.values())
        g.message(11, (vi) => writeValueInfo(vi, { name: w.input, dtype: "float32", shape: w.dims }));
    });
  }
  return { model: out.finish(), weights };
}
