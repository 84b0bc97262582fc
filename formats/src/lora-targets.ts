/**
 * The LoRA-able layers of an exported graph (a user's Optimum / torch.onnx export), found from the module paths the
 * exporter keeps in node names: `/down_blocks.0/attentions.0/transformer_blocks.0/attn1/to_q/MatMul` is the Linear
 * `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`. The weight is found by following the node's weight
 * input (through a Transpose or Identity) to its initializer, whatever that is called (`onnx::MatMul_1627`): never by
 * initializer names alone (REFERENCE.md, "Real Stable Diffusion exports"). Pure: the importer and the edge can both
 * call it on the model's bytes.
 */
import type { LoraTargetShape } from "./lora-keys.ts";
import { locateInitializers, ONNX_FLOAT16, readOnnxGraph, type OnnxNode } from "./onnx-reader.ts";

/**
 * How a component's module paths are named in LoRA files: U-Net paths are bare (`down_blocks.0…`, as the zoo's
 * targets), text encoders' are qualified with the component (`text_encoder.text_model.encoder.layers.0…`), as
 * diffusers' PEFT keys spell them; that also keeps SDXL's two encoders, whose paths are the same, apart.
 */
export const MODULE_SCOPE: Record<string, string> = {
  unet: "",
  text_encoder: "text_encoder.",
  text_encoder_2: "text_encoder_2.",
};

export interface GraphLoraTarget
  extends Required<Pick<LoraTargetShape, "module" | "in_features" | "out_features" | "kind">> {
  component: string;
  /** The MatMul / Gemm / Conv node(s) computing the layer (a module called twice has two, sharing the weight). */
  nodes: string[];
  /** The weight initializer. */
  weight: string;
  /** "in_out": stored [in, out] (a MatMul weight, a Gemm without transB); "out_in": as PyTorch ([out, in(, kh, kw)]). */
  weight_layout: "in_out" | "out_in";
  dtype: "float32" | "float16";
  /** Whether a branch can be added at the node (a 1×1 conv only with stride 1, no padding; every linear and 3×3). */
  branchable: boolean;
}

/** `/a.0/b/to_q/MatMul` → `a.0.b.to_q`; undefined for a name without a module path. */
export function modulePathOfNode(name: string): string | undefined {
  const parts = name.split("/").filter((p) => p !== "");
  if (parts.length < 2) return undefined;
  return parts.slice(0, -1).join(".");
}

const attr = (n: OnnxNode, name: string, fallback: number): number => {
  const v = n.ints[name];
  return typeof v === "number" ? v : fallback;
};
const allEqual = (n: OnnxNode, name: string, value: number): boolean => {
  const v = n.ints[name];
  return v === undefined || (Array.isArray(v) ? v.every((x) => x === value) : v === value);
};

/**
 * The LoRA-able layers of one component's graph: every MatMul, Gemm and (ungrouped 1×1 or 3×3) Conv whose weight is
 * an initializer and whose name carries a module path. A weight shared by two modules (the exporter deduplicates
 * identical initializers) is left out: a merge into it would change both.
 */
export function graphLoraTargets(model: Uint8Array, component: string): GraphLoraTarget[] {
  const graph = readOnnxGraph(model);
  const located = locateInitializers(model);
  const producer = new Map<string, OnnxNode>();
  for (const n of graph.nodes) for (const o of n.outputs) producer.set(o, n);
  const scope = MODULE_SCOPE[component] ?? "";

  const byModule = new Map<string, GraphLoraTarget>();
  const weightUsers = new Map<string, Set<string>>();
  const dropped = new Set<string>();
  for (const n of graph.nodes) {
    if (n.opType !== "MatMul" && n.opType !== "Gemm" && n.opType !== "Conv") continue;
    const path = modulePathOfNode(n.name);
    if (path === undefined || n.inputs.length < 2) continue;
    // Follow the weight input to its initializer; a Transpose on the way swaps the stored layout.
    let source = n.inputs[1]!;
    let transposed = false;
    for (
      let p = producer.get(source);
      p && (p.opType === "Transpose" || p.opType === "Identity");
      p = producer.get(source)
    ) {
      if (p.opType === "Transpose") transposed = !transposed;
      source = p.inputs[0]!;
    }
    const w = located.get(source);
    if (!w) continue;
    let kind: GraphLoraTarget["kind"];
    let layout: GraphLoraTarget["weight_layout"];
    let inF: number;
    let outF: number;
    let branchable = true;
    if (n.opType === "Conv") {
      if (w.dims.length !== 4 || attr(n, "group", 1) !== 1 || transposed) continue;
      const [o, i, kh, kw] = w.dims as [number, number, number, number];
      if (kh === 1 && kw === 1) {
        kind = "conv1x1";
        branchable = allEqual(n, "strides", 1) && allEqual(n, "pads", 0) && allEqual(n, "dilations", 1);
      } else if (kh === 3 && kw === 3) kind = "conv3x3";
      else continue;
      layout = "out_in";
      [inF, outF] = [i, o];
    } else {
      if (w.dims.length !== 2 || (n.opType === "Gemm" && attr(n, "transA", 0) !== 0)) continue;
      kind = "linear";
      // MatMul(x, W): W is [in, out]; Gemm with transB multiplies by Wᵀ, so W is [out, in].
      const stored = n.opType === "Gemm" && attr(n, "transB", 0) === 1 ? "out_in" : "in_out";
      layout = transposed ? (stored === "in_out" ? "out_in" : "in_out") : stored;
      [inF, outF] = layout === "in_out" ? [w.dims[0]!, w.dims[1]!] : [w.dims[1]!, w.dims[0]!];
    }
    const module = scope + path;
    weightUsers.set(source, (weightUsers.get(source) ?? new Set()).add(module));
    const seen = byModule.get(module);
    if (seen) {
      if (seen.weight === source) seen.nodes.push(n.name);
      else dropped.add(module); // one module path, two weights: ambiguous
      continue;
    }
    byModule.set(module, {
      module,
      kind,
      in_features: inF,
      out_features: outF,
      component,
      nodes: [n.name],
      weight: source,
      weight_layout: layout,
      dtype: w.dataType === ONNX_FLOAT16 ? "float16" : "float32",
      branchable,
    });
  }
  for (const users of weightUsers.values()) if (users.size > 1) for (const m of users) dropped.add(m);
  return [...byModule.values()].filter((t) => !dropped.has(t.module));
}
