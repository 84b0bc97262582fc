import * as ort from "onnxruntime-node";
import { describe, expect, it } from "vitest";
import { stackLoras, type LoraUse, type ParsedLora } from "../src/addons/lora.ts";
import { locateInitializers, mergeLoras } from "../src/addons/merge.ts";
import { buildModel } from "../src/onnx/builder.ts";
import type { LoraTarget } from "@imagegen/formats/manifest";

const IN = 8,
  OUT = 6,
  TOKENS = 5;

function seeded(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32 - 0.5) * scale;
  });
}

function lora(rank: number, seed: number, alpha: number, module = "attn.to_q", k = 1): ParsedLora {
  return {
    bytes: 0,
    layers: new Map([
      [
        module,
        {
          rank,
          inFeatures: IN,
          outFeatures: OUT,
          down: seeded(rank * IN * k, seed),
          up: seeded(OUT * rank, seed + 1),
          scale: alpha / rank,
        },
      ],
    ]),
  };
}

const W = seeded(IN * OUT, 7); // stored [in, out]: a MatMul weight
const x = seeded(2 * TOKENS * IN, 9);

/** y = x·W + (x·downᵀ)·upᵀ, with W the MatMul initializer `w_q` ([in, out]). */
const branchModel = buildModel({
  inputs: [
    { name: "x", dtype: "float32", shape: ["batch", TOKENS, IN] },
    { name: "lora_0_down", dtype: "float32", shape: ["batch", "rank", IN] },
    { name: "lora_0_up", dtype: "float32", shape: ["batch", OUT, "rank"] },
  ],
  outputs: [{ name: "y", dtype: "float32", shape: ["batch", TOKENS, OUT] }],
  nodes: [
    { op: "MatMul", inputs: ["x", "w_q"], outputs: ["base"] },
    { op: "Transpose", inputs: ["lora_0_down"], outputs: ["dT"], attributes: { perm: [0, 2, 1] } },
    { op: "MatMul", inputs: ["x", "dT"], outputs: ["xd"] },
    { op: "Transpose", inputs: ["lora_0_up"], outputs: ["uT"], attributes: { perm: [0, 2, 1] } },
    { op: "MatMul", inputs: ["xd", "uT"], outputs: ["delta"] },
    { op: "Add", inputs: ["base", "delta"], outputs: ["y"] },
  ],
  initializers: [{ name: "w_q", dims: [IN, OUT], data: W }],
});
/** The same layer without branch inputs: what a merge-mode bundle exports. */
const plainModel = buildModel({
  inputs: [{ name: "x", dtype: "float32", shape: ["batch", TOKENS, IN] }],
  outputs: [{ name: "y", dtype: "float32", shape: ["batch", TOKENS, OUT] }],
  nodes: [{ op: "MatMul", inputs: ["x", "w_q"], outputs: ["y"] }],
  initializers: [{ name: "w_q", dims: [IN, OUT], data: W }],
});

const target: LoraTarget = {
  module: "attn.to_q",
  kind: "linear",
  in_features: IN,
  out_features: OUT,
  components: ["unet"],
  down_input: "lora_0_down",
  up_input: "lora_0_up",
  weight: { unet: "w_q" },
  weight_layout: "in_out",
};

async function run(model: Uint8Array, feeds: Record<string, ort.Tensor>): Promise<Float32Array> {
  const session = await ort.InferenceSession.create(model);
  const out = (await session.run(feeds)).y!.data as Float32Array;
  await session.release();
  return out;
}
const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

describe("LoRA merging into initializers", () => {
  const uses: LoraUse[] = [
    { lora: lora(3, 21, 1.5), scale: 0.7 },
    { lora: lora(2, 31, 4), scale: -0.4 },
  ];

  it("stacked branches and merged weights agree", async () => {
    const feeds: Record<string, ort.Tensor> = { x: new ort.Tensor("float32", x, [2, TOKENS, IN]) };
    for (const f of stackLoras([target], [uses, uses], 64)) feeds[f.name] = new ort.Tensor("float32", f.data, f.dims);
    const stacked = await run(branchModel, feeds);
    const merged = await run(mergeLoras(plainModel, "unet", [target], uses), { x: feeds.x! });
    const plain = await run(plainModel, { x: feeds.x! });
    expect(maxDiff(stacked, merged)).toBeLessThan(1e-5);
    expect(maxDiff(plain, merged)).toBeGreaterThan(1e-2);
  });

  it("leaves the original bytes and other initializers alone, and handles the PyTorch layout", async () => {
    const copy = plainModel.slice();
    mergeLoras(plainModel, "unet", [target], uses);
    expect(plainModel).toEqual(copy);
    // The same layer as Gemm with W stored [out, in] (transB = 1).
    const Wt = new Float32Array(OUT * IN);
    for (let i = 0; i < IN; i++) for (let o = 0; o < OUT; o++) Wt[o * IN + i] = W[i * OUT + o]!;
    const gemm = buildModel({
      inputs: [{ name: "x2", dtype: "float32", shape: [TOKENS, IN] }],
      outputs: [{ name: "y", dtype: "float32", shape: [TOKENS, OUT] }],
      nodes: [{ op: "Gemm", inputs: ["x2", "w_k"], outputs: ["y"], attributes: { transB: 1 } }],
      initializers: [{ name: "w_k", dims: [OUT, IN], data: Wt }],
    });
    const x2 = new ort.Tensor("float32", x.subarray(0, TOKENS * IN), [TOKENS, IN]);
    const mm = buildModel({
      inputs: [{ name: "x2", dtype: "float32", shape: [TOKENS, IN] }],
      outputs: [{ name: "y", dtype: "float32", shape: [TOKENS, OUT] }],
      nodes: [{ op: "MatMul", inputs: ["x2", "w_q"], outputs: ["y"] }],
      initializers: [{ name: "w_q", dims: [IN, OUT], data: W }],
    });
    const a = await run(
      mergeLoras(gemm, "unet", [{ ...target, weight: { unet: "w_k" }, weight_layout: "out_in" }], uses),
      { x2 },
    );
    const b = await run(mergeLoras(mm, "unet", [target], uses), { x2 });
    expect(maxDiff(a, b)).toBeLessThan(1e-5);
    expect(locateInitializers(gemm).get("w_k")!.dims).toEqual([OUT, IN]);
  });

  it("composes a 3×3 convolution LoRA as one convolution", async () => {
    const C = { in: IN, out: OUT, r: 2 };
    const Wc = seeded(C.out * C.in * 9, 5);
    const conv = (name: string, kernel: string, out: string) => ({
      op: "Conv",
      inputs: [name, kernel],
      outputs: [out],
      attributes: { pads: [1, 1, 1, 1] },
    });
    const l = lora(C.r, 41, 2, "conv", 9);
    const layer = l.layers.get("conv")!;
    const img = new ort.Tensor("float32", seeded(C.in * 6 * 6, 3), [1, C.in, 6, 6]);
    // Reference: the LoRA as its two convolutions (down 3×3 to rank r, then up 1×1), added to the base conv.
    const twoConvs = buildModel({
      inputs: [{ name: "img", dtype: "float32", shape: [1, C.in, 6, 6] }],
      outputs: [{ name: "y", dtype: "float32", shape: [1, C.out, 6, 6] }],
      nodes: [
        conv("img", "w", "base"),
        conv("img", "down", "mid"),
        { op: "Conv", inputs: ["mid", "up"], outputs: ["delta"] },
        { op: "Mul", inputs: ["delta", "s"], outputs: ["scaled"] },
        { op: "Add", inputs: ["base", "scaled"], outputs: ["y"] },
      ],
      initializers: [
        { name: "w", dims: [C.out, C.in, 3, 3], data: Wc },
        { name: "down", dims: [C.r, C.in, 3, 3], data: layer.down },
        { name: "up", dims: [C.out, C.r, 1, 1], data: layer.up },
        { name: "s", dims: [], data: Float32Array.from([0.5 * layer.scale]) },
      ],
    });
    const single = buildModel({
      inputs: [{ name: "img", dtype: "float32", shape: [1, C.in, 6, 6] }],
      outputs: [{ name: "y", dtype: "float32", shape: [1, C.out, 6, 6] }],
      nodes: [conv("img", "w", "y")],
      initializers: [{ name: "w", dims: [C.out, C.in, 3, 3], data: Wc }],
    });
    const convTarget: LoraTarget = {
      module: "conv",
      kind: "conv3x3",
      in_features: C.in,
      out_features: C.out,
      components: ["unet"],
      weight: { unet: "w" },
      weight_layout: "out_in",
    };
    const expected = await run(twoConvs, { img });
    const merged = await run(mergeLoras(single, "unet", [convTarget], [{ lora: l, scale: 0.5 }]), { img });
    expect(maxDiff(expected, merged)).toBeLessThan(1e-4);
  });
});
