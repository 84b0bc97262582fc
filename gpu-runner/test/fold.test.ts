import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RequestAddons } from "../src/addons/request-addons.ts";
import { AddonRuntime } from "../src/addons/runtime.ts";
import { buildModel } from "../src/onnx/builder.ts";
import { GraphRewriteError } from "../src/onnx/lora-branches.ts";
import { weightsAsInputs } from "../src/onnx/weight-inputs.ts";
import { loadBundle, type Bundle } from "../src/pipeline/bundle.ts";
import { generate } from "../src/pipeline/pipeline.ts";

// The trained LCM bundle (float16-stored weights that the graph casts up) with the family's trained LoCon files,
// and the random bundle (float32 weights).
const models = join(import.meta.dirname, "../models");
const lcmDir = join(models, "tiny-shapes-lcm");
const randomDir = join(models, "tiny-shapes-random");
const file = (path: string) => new Uint8Array(readFileSync(path));
const trained = ["lora-outlined", "lora-pastel", "lora-striped"].map((n) =>
  file(join(models, "tiny-shapes/addons", `${n}.safetensors`)),
);
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const set = (files: Uint8Array[], scale = 0.8): RequestAddons => ({
  loras: files.map((bytes, i) => ({ sha256: sha(bytes), bytes, scale: scale - i * 0.1 })),
  controlnets: [],
});
const session = { executionProviders: ["cpu" as const], intraOpNumThreads: 1 };
const request = {
  prompt: "a large red circle on the left, blue background",
  seed: 5,
  sampler: "lcm" as const,
  steps: 4,
};
const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);
const maxAbs = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);

let lcm: Bundle;
beforeAll(async () => {
  lcm = await loadBundle(lcmDir, session);
});
afterAll(() => lcm?.release());

async function run(runtime: AddonRuntime, bundle: Bundle, addons: RequestAddons[], extra: object = {}) {
  const b = await runtime.bundleFor(bundle, addons);
  const unetInputs = await runtime.provider(b, [1], addons);
  const result = await generate(b, { ...request, ...extra }, unetInputs ? { unetInputs } : {});
  return { bundle: b, latents: result.latents };
}

describe("weights as graph inputs", () => {
  it("the rewritten U-Net fed its own weights gives the original output (float16 storage and float32)", async () => {
    for (const dir of [lcmDir, randomDir]) {
      const manifest = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));
      const model = file(join(dir, manifest.components.unet.path));
      const names = manifest.lora.targets.map((t: { weight: Record<string, string> }) => t.weight.unet);
      const rewrite = weightsAsInputs(model, names);
      expect(rewrite.weights.size).toBe(names.length);
      const original = await ort.InferenceSession.create(model, { intraOpNumThreads: 1 });
      const rewritten = await ort.InferenceSession.create(rewrite.model, { intraOpNumThreads: 1, logSeverityLevel: 3 });
      for (const w of rewrite.weights.values()) expect(rewritten.inputNames).toContain(w.input);
      const feeds: Record<string, ort.Tensor> = {};
      let s = 7;
      for (const spec of manifest.components.unet.inputs) {
        const dims = spec.shape.map((d: number | string) => (typeof d === "number" ? d : d === "batch" ? 1 : 0));
        const n = dims.reduce((a: number, b: number) => a * b, 1);
        feeds[spec.name] = new ort.Tensor(
          "float32",
          spec.name === "timestep"
            ? Float32Array.of(400)
            : Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1),
          dims,
        );
      }
      const weights = Object.fromEntries(
        [...rewrite.weights.values()].map((w) => [w.input, new ort.Tensor("float32", w.base, w.dims)]),
      );
      const out = manifest.components.unet.outputs[0].name;
      const a = (await original.run(feeds))[out]!.data as Float32Array;
      const b = (await rewritten.run({ ...feeds, ...weights }))[out]!.data as Float32Array;
      expect(maxDiff(a, b)).toBeLessThan(1e-5 * maxAbs(a));
      await Promise.all([original.release(), rewritten.release()]);
    }
  });

  it("refuses a float16 weight the graph computes with, and a name that is not an initializer", () => {
    const model = buildModel({
      inputs: [{ name: "x", dtype: "float16", shape: [1, 2] }],
      outputs: [{ name: "y", dtype: "float16", shape: [1, 2] }],
      nodes: [{ op: "MatMul", inputs: ["x", "w"], outputs: ["y"] }],
      initializers: [{ name: "w", dims: [2, 2], data: Uint16Array.of(0x3c00, 0, 0, 0x3c00) }],
    });
    expect(() => weightsAsInputs(model, ["w"])).toThrow(GraphRewriteError);
    expect(() => weightsAsInputs(model, ["w"])).toThrow(/computed with/);
    expect(() => weightsAsInputs(model, ["nope"])).toThrow(/not a float initializer/);
  });
});

describe("folded LoRA sets", () => {
  it("three stacked LoCon files: the folded image is the branches' image, and a warm set folds nothing again", async () => {
    const folding = new AddonRuntime(session, { mergeHotAfter: 0 });
    const branches = new AddonRuntime(session, { mergeHotAfter: 0, foldLoras: false });
    const three = [set(trained)];
    const stacked = await run(branches, lcm, three);
    expect(stacked.bundle).toBe(lcm);
    const folded = await run(folding, lcm, three);
    expect(folded.bundle.lorasFolded).toBe(true);
    expect(folding.foldStats.folds).toBe(1); // the whole U-Net only: the split parts did not run
    const plain = (await generate(lcm, request)).latents;
    expect(maxDiff(plain, folded.latents)).toBeGreaterThan(0.1); // the LoRAs act
    expect(maxDiff(stacked.latents, folded.latents)).toBeLessThan(1e-5 * maxAbs(stacked.latents));
    // Warm: the set's merged weights are reused, bit for bit.
    const again = await run(folding, lcm, three);
    expect(folding.foldStats.folds).toBe(1);
    expect(maxDiff(again.latents, folded.latents)).toBe(0);
    // Another set (another scale) folds anew and gives another image.
    const other = await run(folding, lcm, [set(trained, 0.5)]);
    expect(folding.foldStats.folds).toBe(2);
    expect(maxDiff(other.latents, folded.latents)).toBeGreaterThan(1e-3);
  });

  it("DeepCache's split parts fold too, and give the branches' image", async () => {
    const folding = new AddonRuntime(session, { mergeHotAfter: 0 });
    const branches = new AddonRuntime(session, { mergeHotAfter: 0, foldLoras: false });
    const one = [set(trained.slice(1, 2))];
    const cache = { cache: { mode: "deepcache" as const, interval: 2 }, steps: 6 };
    const stacked = await run(branches, lcm, one, cache);
    const folded = await run(folding, lcm, one, cache);
    expect(folding.foldStats.folds).toBeGreaterThanOrEqual(3); // head, deep and tail (and the whole graph)
    expect(maxDiff(stacked.latents, folded.latents)).toBeLessThan(1e-5 * maxAbs(stacked.latents));
  });

  it("a batch mixing LoRA sets keeps the per-sample branches; a float32 model folds as well", async () => {
    const folding = new AddonRuntime(session, { mergeHotAfter: 0 });
    expect(await folding.bundleFor(lcm, [set(trained.slice(0, 1)), set(trained.slice(1, 2))])).toBe(lcm);
    expect(await folding.bundleFor(lcm, [set(trained.slice(0, 1)), { loras: [], controlnets: [] }])).toBe(lcm);
    const random = await loadBundle(randomDir, session);
    try {
      const kohya = file(join(randomDir, "addons/random-lora-kohya.safetensors"));
      const addons = [set([kohya])];
      const request = { prompt: "a red circle", seed: 4, sampler: "ddim" as const, steps: 3, guidance: 2 };
      const branches = new AddonRuntime(session, { mergeHotAfter: 0, foldLoras: false });
      const stacked = (await generate(random, request, { unetInputs: (await branches.provider(random, [1], addons))! }))
        .latents;
      const b = await folding.bundleFor(random, addons);
      expect(b.lorasFolded).toBe(true);
      const folded = (await generate(b, request, { unetInputs: (await folding.provider(b, [1], addons))! })).latents;
      expect(maxDiff(stacked, folded)).toBeLessThan(1e-5 * maxAbs(stacked));
    } finally {
      await random.release();
    }
  });
});
