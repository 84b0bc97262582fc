/**
 * The graph rewrite that gives an imported model LoRA branch inputs (DESIGN.md, "LoRA without rebuilding"), so a
 * request's LoRA set switches per run with no new session, as the zoo bundles' exported branches do. At every target
 * node (MatMul / Gemm / Conv of `graphLoraTargets`) the output y becomes y + branch(x), fed by two float32 inputs:
 *
 *   linear   down [b, R, in]     up [b, out, R]   y += (x·downᵀ)·upᵀ          x reshaped to [B, -1, in]
 *   conv1x1  down [b, R, in]     up [b, out, R]   y += up·(down·x)            x reshaped to [B, in, HW]
 *   conv3x3  down [b, R, in, 9]  up [b, out, R]   LoCon: a 3×3 conv to R channels, then 1×1 up
 *
 * b is the batch or 1 (one LoRA set for every sample: MatMul broadcasts), R is a dynamic axis, 0 for no LoRA; the
 * inputs are what `stackLoras` (addons/lora.ts) feeds. One zero rank is appended inside the graph: onnxruntime's
 * MatMul with an inner dimension of 0 returns uninitialised memory (zoo/models.py LoRALinear). The 3×3 branch runs
 * per sample as the zoo's does, tap by tap: Z = downᵀ·x for the nine taps in one MatMul, then a constant 3×3
 * convolution (one-hot taps) with the layer's own strides, pads and dilations sums each rank's nine maps; spatial
 * sizes stay dynamic (Shape nodes). A float16 graph gets its branch inputs cast to float16 inside.
 */
import type { LoraTarget, TensorSpec } from "@imagegen/formats/manifest";
import { protoFields } from "@imagegen/formats/onnx-reader";
import type { GraphLoraTarget } from "@imagegen/formats/lora-targets";
import { f32ToF16 } from "@imagegen/formats/safetensors";
import {
  ProtoWriter,
  writeInitializer,
  writeNode,
  writeValueInfo,
  type Initializer,
  type NodeSpec,
} from "./builder.ts";

export interface BranchRewrite {
  model: Uint8Array;
  /** The new graph inputs, as the manifest declares them ("batch" and `rank_<i>` symbolic). */
  inputs: TensorSpec[];
  /** The manifest's targets: branch inputs, and the weight to merge into for hot sets. */
  targets: LoraTarget[];
}

export class GraphRewriteError extends Error {
  override readonly name = "GraphRewriteError";
}

/** Branch input names: the module path is unique per bundle (text encoders' are qualified). */
export const branchInputNames = (module: string) => ({ down: `lora.${module}.down`, up: `lora.${module}.up` });

/** The manifest entry of a graph target, with its branch inputs when the bundle has them. */
export function manifestTarget(t: GraphLoraTarget, branch?: { down: string; up: string }): LoraTarget {
  return {
    module: t.module,
    kind: t.kind,
    in_features: t.in_features,
    out_features: t.out_features,
    components: [t.component],
    ...(branch ? { down_input: branch.down, up_input: branch.up } : {}),
    weight: { [t.component]: t.weight },
    weight_layout: t.weight_layout,
  };
}

const FLOAT16 = 10;
const C = "lora_branch::";

/** The default-domain opset of a model (ModelProto.opset_import). */
function opsetOf(model: Uint8Array): number {
  let version = 0;
  for (const f of protoFields(model)) {
    if (f.field !== 8 || f.wire !== 2) continue;
    let domain = "";
    let v = 0;
    for (const e of protoFields(model, f.at, f.end)) {
      if (e.field === 1) domain = new TextDecoder().decode(model.subarray(e.at, e.end));
      else if (e.field === 2) v = e.value;
    }
    if (domain === "" || domain === "ai.onnx") version = v;
  }
  return version;
}

/**
 * `model` with branch inputs at `targets` (those `branchable`; others are refused). `rankOffset` numbers the rank
 * axes after those of another component of the same bundle.
 */
export function addLoraBranches(
  model: Uint8Array,
  component: string,
  targets: GraphLoraTarget[],
  rankOffset = 0,
): BranchRewrite {
  if (opsetOf(model) < 15)
    throw new GraphRewriteError(`${component}: opset ${opsetOf(model)} is below 15 (Shape with start/end)`);
  const byNode = new Map<string, { t: GraphLoraTarget; i: number }>();
  targets.forEach((t, i) => {
    if (!t.branchable)
      throw new GraphRewriteError(
        `${component}: '${t.module}' cannot take a branch (a 1×1 conv with stride or padding)`,
      );
    for (const n of t.nodes) byNode.set(n, { t, i });
  });
  const half = targets.some((t) => t.dtype === "float16");
  const constants: Initializer[] = [];
  const constant = (name: string, dims: number[], data: Initializer["data"]) => {
    if (!constants.some((c) => c.name === C + name)) constants.push({ name: C + name, dims, data });
    return C + name;
  };
  const ints = (name: string, values: number[]) =>
    constant(name, [values.length], BigInt64Array.from(values.map(BigInt)));
  const taps = () => {
    const one = new Float32Array(81);
    for (let k = 0; k < 9; k++) one[k * 9 + k] = 1; // channel k has a one at tap k = ky·3 + kx
    return constant("taps", [1, 9, 3, 3], half ? Uint16Array.from(one, f32ToF16) : one);
  };
  const inputs: TensorSpec[] = [];
  const onnxInputs: { name: string; shape: (number | string)[] }[] = [];
  const manifestTargets: LoraTarget[] = [];
  targets.forEach((t, i) => {
    const names = branchInputNames(t.module);
    const rank = `rank_${rankOffset + i}`;
    const downShape = t.kind === "conv3x3" ? [rank, t.in_features, 9] : [rank, t.in_features];
    inputs.push({ name: names.down, dtype: "float32", shape: ["batch", ...downShape] });
    inputs.push({ name: names.up, dtype: "float32", shape: ["batch", t.out_features, rank] });
    // The graph's batch axis is its own symbol: a 3×3 branch is fed with batch 1 when every sample shares the set.
    onnxInputs.push(
      { name: names.down, shape: ["lora_batch", ...downShape] },
      { name: names.up, shape: ["lora_batch", t.out_features, rank] },
    );
    manifestTargets.push(manifestTarget(t, names));
  });

  /** The branch nodes of one target node whose output is renamed to `base`. */
  const branchNodes = (
    t: GraphLoraTarget,
    node: { name: string; x: string; y: string; base: string; attributes: Uint8Array[] },
  ) => {
    const p = `${node.name}/lora`;
    const v = (s: string) => `${p}/${s}`;
    const names = branchInputNames(t.module);
    const out: (NodeSpec & { rawAttributes?: Uint8Array[] })[] = [];
    let down = names.down;
    let up = names.up;
    if (half) {
      out.push(
        { op: "Cast", inputs: [down], outputs: [v("down16")], attributes: { to: FLOAT16 } },
        { op: "Cast", inputs: [up], outputs: [v("up16")], attributes: { to: FLOAT16 } },
      );
      [down, up] = [v("down16"), v("up16")];
    }
    out.push({ op: "Pad", inputs: [up, ints("pad_up", [0, 0, 0, 0, 0, 1])], outputs: [v("up")] });
    let z: string;
    if (t.kind === "linear") {
      out.push(
        { op: "Pad", inputs: [down, ints("pad_down", [0, 0, 0, 0, 1, 0])], outputs: [v("down")] },
        { op: "Transpose", inputs: [v("down")], outputs: [v("downT")], attributes: { perm: [0, 2, 1] } },
        { op: "Transpose", inputs: [v("up")], outputs: [v("upT")], attributes: { perm: [0, 2, 1] } },
        { op: "Reshape", inputs: [node.x, ints(`rows_${t.in_features}`, [0, -1, t.in_features])], outputs: [v("x")] },
        { op: "MatMul", inputs: [v("x"), v("downT")], outputs: [v("h")] },
        { op: "MatMul", inputs: [v("h"), v("upT")], outputs: [v("z")] },
      );
      z = v("z");
    } else if (t.kind === "conv1x1") {
      out.push(
        { op: "Pad", inputs: [down, ints("pad_down", [0, 0, 0, 0, 1, 0])], outputs: [v("down")] },
        { op: "Reshape", inputs: [node.x, ints(`cols_${t.in_features}`, [0, t.in_features, -1])], outputs: [v("x")] },
        { op: "MatMul", inputs: [v("down"), v("x")], outputs: [v("h")] },
        { op: "MatMul", inputs: [v("up"), v("h")], outputs: [v("z")] },
      );
      z = v("z");
    } else {
      out.push(
        { op: "Pad", inputs: [down, ints("pad_kernel", [0, 0, 0, 0, 0, 1, 0, 0])], outputs: [v("down")] },
        { op: "Transpose", inputs: [v("down")], outputs: [v("downT")], attributes: { perm: [0, 1, 3, 2] } }, // [b, R, 9, in]
        {
          op: "Reshape",
          inputs: [node.x, ints(`planes_${t.in_features}`, [0, 1, t.in_features, -1])],
          outputs: [v("x")],
        },
        { op: "MatMul", inputs: [v("downT"), v("x")], outputs: [v("taps")] }, // [B, R, 9, HW]
        { op: "Shape", inputs: [node.x], outputs: [v("hw")], attributes: { start: 2 } },
        {
          op: "Concat",
          inputs: [ints("minus1_9", [-1, 9]), v("hw")],
          outputs: [v("tapShape")],
          attributes: { axis: 0 },
        },
        { op: "Reshape", inputs: [v("taps"), v("tapShape")], outputs: [v("tapMaps")] }, // [B·R, 9, H, W]
        { op: "Conv", inputs: [v("tapMaps"), taps()], outputs: [v("summed")], rawAttributes: node.attributes }, // [B·R, 1, H', W']
        { op: "Shape", inputs: [v("taps")], outputs: [v("batchRank")], attributes: { start: 0, end: 2 } },
        {
          op: "Concat",
          inputs: [v("batchRank"), ints("minus1", [-1])],
          outputs: [v("hShape")],
          attributes: { axis: 0 },
        },
        { op: "Reshape", inputs: [v("summed"), v("hShape")], outputs: [v("h")] }, // [B, R, H'W']
        { op: "MatMul", inputs: [v("up"), v("h")], outputs: [v("z")] },
      );
      z = v("z");
    }
    out.push(
      { op: "Shape", inputs: [node.base], outputs: [v("yShape")] },
      { op: "Reshape", inputs: [z, v("yShape")], outputs: [v("delta")] },
      { op: "Add", inputs: [node.base, v("delta")], outputs: [node.y] },
    );
    return out.map((n, k) => ({ node: n, name: `${p}/${n.op}_${k}` }));
  };

  const text = new TextDecoder();
  const seen = new Set<string>();
  const w = new ProtoWriter();
  for (const top of protoFields(model)) {
    if (top.field !== 7 || top.wire !== 2) {
      w.raw(model.subarray(top.start, top.end));
      continue;
    }
    w.message(7, (g) => {
      for (const f of protoFields(model, top.at, top.end)) {
        if (f.field !== 1 || f.wire !== 2) {
          g.raw(model.subarray(f.start, f.end));
          continue;
        }
        const fields = protoFields(model, f.at, f.end);
        const nameField = fields.find((x) => x.field === 3);
        const name = nameField ? text.decode(model.subarray(nameField.at, nameField.end)) : "";
        const hit = byNode.get(name);
        if (!hit) {
          g.raw(model.subarray(f.start, f.end));
          continue;
        }
        seen.add(name);
        const inputsOf = fields.filter((x) => x.field === 1).map((x) => text.decode(model.subarray(x.at, x.end)));
        const outputField = fields.find((x) => x.field === 2)!;
        const y = text.decode(model.subarray(outputField.at, outputField.end));
        const base = `${y}::lora_base`;
        // The node itself, its output renamed; every other field as it was.
        g.message(1, (n) => {
          for (const x of fields) {
            if (x === outputField) n.string(2, base);
            else n.raw(model.subarray(x.start, x.end));
          }
        });
        const attributes = fields.filter((x) => x.field === 5).map((x) => model.subarray(x.start, x.end));
        for (const { node, name: nodeName } of branchNodes(hit.t, { name, x: inputsOf[0]!, y, base, attributes })) {
          g.message(1, (n) => {
            writeNode(n, node, nodeName);
            for (const a of (node as { rawAttributes?: Uint8Array[] }).rawAttributes ?? []) n.raw(a);
          });
        }
      }
      for (const c of constants) g.message(5, (t) => writeInitializer(t, c));
      for (const input of onnxInputs)
        g.message(11, (vi) => writeValueInfo(vi, { name: input.name, dtype: "float32", shape: input.shape }));
    });
  }
  const missing = [...byNode.keys()].filter((n) => !seen.has(n));
  if (missing.length) throw new GraphRewriteError(`${component}: target nodes not in the graph: ${missing.join(", ")}`);
  return { model: w.finish(), inputs, targets: manifestTargets };
}
