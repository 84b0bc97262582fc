import { createHash } from "node:crypto";
import { rmSync } from "node:fs";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadBundle, type Bundle } from "../src/pipeline/bundle.ts";
import { generate, generateBatch, GenerationError } from "../src/pipeline/pipeline.ts";
import { TOY_GRAPHS, writeToyBundle } from "./fixtures/toy-bundle.ts";

let dir: string;
let bundle: Bundle;
beforeAll(async () => {
  dir = writeToyBundle();
  bundle = await loadBundle(dir);
});
afterAll(async () => {
  await bundle.release();
  rmSync(dir, { recursive: true, force: true });
});

const sha = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");
const base = { prompt: "a red circle on the left", seed: 1234 } as const;

describe("generate (toy bundle)", () => {
  it("gives the same bytes for the same request and different bytes for another seed", async () => {
    const a = await generate(bundle, { ...base, n: 2 });
    const b = await generate(bundle, { ...base, n: 2 });
    const c = await generate(bundle, { ...base, seed: 99 });
    expect(a.images.map(sha)).toEqual(b.images.map(sha));
    expect(sha(c.images[0]!)).not.toBe(sha(a.images[0]!));
    expect(a.images[0]!.subarray(1, 4)).toEqual(new TextEncoder().encode("PNG"));
  });

  it("makes image i of a batch equal to a single image with seed + i", async () => {
    const batch = await generate(bundle, { ...base, n: 3, sampler: "lcm", steps: 3 });
    const third = await generate(bundle, { ...base, seed: base.seed + 2, sampler: "lcm", steps: 3 });
    expect(sha(batch.images[2]!)).toBe(sha(third.images[0]!));
    expect(batch.seeds).toEqual([1234, 1235, 1236]);
  });

  it("lets compatible requests share one U-Net batch without changing their bytes", async () => {
    const a = { prompt: "a red circle", negative_prompt: "blue", seed: 10, n: 2, steps: 4 };
    const b = { prompt: "a blue square on the left", seed: 77, steps: 4 };
    const [batchedA, batchedB] = await generateBatch(bundle, [a, b]);
    const [soloA, soloB] = [await generate(bundle, a), await generate(bundle, b)];
    expect(batchedA!.images.map(sha)).toEqual(soloA.images.map(sha));
    expect(batchedB!.images.map(sha)).toEqual(soloB.images.map(sha));
    expect(batchedB!.batchSize).toBe(3);
    expect(batchedA!.componentRuns.unet).toBe(4); // one batched pass per step, not one per request
    await expect(generateBatch(bundle, [a, { ...b, steps: 5 }])).rejects.toThrow(/must share sampler, steps/);
  });

  it("runs the unconditional pass only when the sampler uses classifier-free guidance", async () => {
    const ddim = await generate(bundle, { ...base, sampler: "ddim", steps: 5, guidance: 3 });
    expect(ddim.classifierFreeGuidance).toBe(true);
    expect(ddim.componentRuns).toMatchObject({ text_encoder: 2, unet: 5, vae_decoder: 1 });
    const noGuidance = await generate(bundle, { ...base, sampler: "ddim", steps: 5, guidance: 1 });
    expect(noGuidance.componentRuns.text_encoder).toBe(1);
    expect(sha(noGuidance.images[0]!)).not.toBe(sha(ddim.images[0]!));
    const lcm = await generate(bundle, { ...base, sampler: "lcm", steps: 4, guidance: 8 });
    expect(lcm.classifierFreeGuidance).toBe(false);
    expect(lcm.timesteps).toEqual([999, 759, 499, 259]);
  });

  it("runs the deep part only on full steps of the DeepCache schedule", async () => {
    for (const schedule of ["uniform", "non-uniform"] as const) {
      const r = await generate(bundle, {
        ...base,
        sampler: "ddim",
        steps: 10,
        cache: { mode: "deepcache", interval: 3, schedule },
      });
      const full = r.fullSteps!.filter(Boolean).length;
      expect(full).toBe(4);
      expect(r.componentRuns).toMatchObject({ unet: 0, unet_head: 10, unet_tail: 10, unet_deep: full });
    }
  });

  it("runs full steps as one whole-U-Net pass when that graph also outputs the cached feature", async () => {
    const feature = { name: "deep_feature", dtype: "float32" as const, shape: ["batch", 8, 8, 8] };
    const dir2 = writeToyBundle((m) => m.components.unet.outputs.push(feature), {
      unet: { ...TOY_GRAPHS.unet!, outputs: [...TOY_GRAPHS.unet!.outputs, feature] },
    });
    const withFeature = await loadBundle(dir2);
    try {
      const request = { ...base, steps: 10, cache: { mode: "deepcache" as const, interval: 3 } };
      const fused = await generate(withFeature, request);
      expect(fused.componentRuns).toMatchObject({ unet: 4, unet_deep: 0, unet_head: 6, unet_tail: 6 });
      const split = await generate(bundle, request);
      const maxDiff = fused.latents.reduce((m, v, i) => Math.max(m, Math.abs(v - split.latents[i]!)), 0);
      expect(maxDiff).toBeLessThan(1e-3);
    } finally {
      await withFeature.release();
      rmSync(dir2, { recursive: true, force: true });
    }
  });

  it("with interval 1 the split U-Net reproduces the whole U-Net", async () => {
    const whole = await generate(bundle, { ...base, steps: 6 });
    const split = await generate(bundle, { ...base, steps: 6, cache: { mode: "deepcache", interval: 1 } });
    const maxDiff = whole.latents.reduce((m, v, i) => Math.max(m, Math.abs(v - split.latents[i]!)), 0);
    expect(maxDiff).toBeLessThan(1e-3);
    const cached = await generate(bundle, { ...base, steps: 6, cache: { mode: "deepcache", interval: 3 } });
    expect(cached.latents).not.toEqual(split.latents);
  });

  it("feeds zeros to ControlNet residual inputs, and a provider's residuals change the image", async () => {
    const plain = await generate(bundle, { ...base, steps: 4 });
    const seen: number[] = [];
    const steered = await generate(
      bundle,
      { ...base, steps: 4 },
      {
        unetInputs: ({ stepIndex, unetBatch }) => {
          seen.push(stepIndex);
          const dims = [unetBatch, 8, 8, 8];
          return {
            mid_block_additional_residual: new ort.Tensor("float32", new Float32Array(unetBatch * 512).fill(0.5), dims),
          };
        },
      },
    );
    expect(seen).toEqual([0, 1, 2, 3]);
    expect(sha(steered.images[0]!)).not.toBe(sha(plain.images[0]!));
    const zeros = await generate(
      bundle,
      { ...base, steps: 4 },
      {
        unetInputs: ({ unetBatch }) => ({
          mid_block_additional_residual: new ort.Tensor("float32", new Float32Array(unetBatch * 512), [
            unetBatch,
            8,
            8,
            8,
          ]),
        }),
      },
    );
    expect(sha(zeros.images[0]!)).toBe(sha(plain.images[0]!));
  });

  it("runs the U-Net head while a promised residual is still pending (ControlNet beside the U-Net)", async () => {
    const head = bundle.components.unet_head!;
    const headRunsWhenResolved: number[] = [];
    const before = head.runs;
    const r = await generate(
      bundle,
      { ...base, steps: 3, cache: { mode: "deepcache", interval: 1 } },
      {
        unetInputs: ({ unetBatch }) => ({
          mid_block_additional_residual: new Promise((resolve) =>
            setTimeout(() => {
              headRunsWhenResolved.push(head.runs - before);
              resolve(new ort.Tensor("float32", new Float32Array(unetBatch * 512).fill(0.5), [unetBatch, 8, 8, 8]));
            }, 10),
          ),
        }),
      },
    );
    expect(headRunsWhenResolved).toEqual([1, 2, 3]); // step i's head had run when its residual arrived
    expect(r.componentRuns.unet_deep).toBe(3);
  });

  it("reports progress per step and stops when aborted", async () => {
    const steps: number[] = [];
    await generate(bundle, { ...base, steps: 3 }, { onProgress: (p) => steps.push(p.step) });
    expect(steps).toEqual([1, 2, 3]);
    const controller = new AbortController();
    await expect(
      generate(
        bundle,
        { ...base, steps: 10 },
        { signal: controller.signal, onProgress: (p) => p.step === 2 && controller.abort(new Error("stop")) },
      ),
    ).rejects.toThrow("stop");
  });

  it("refuses requests the model cannot serve", async () => {
    await expect(generate(bundle, { ...base, sampler: "rectified-flow" })).rejects.toThrow(
      /does not support sampler rectified-flow/,
    );
    await expect(generate(bundle, { ...base, width: 24 })).rejects.toThrow(GenerationError);
    await expect(generate(bundle, { ...base, seed: -1 })).rejects.toThrow(/seed/);
    await expect(generate(bundle, { ...base, n: 0 })).rejects.toThrow();
  });
});
