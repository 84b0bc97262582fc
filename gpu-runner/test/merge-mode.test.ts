import { afterAll, describe, expect, it } from "vitest";
import { encodeSafetensors } from "@imagegen/formats/safetensors";
import { AddonRuntime } from "../src/addons/runtime.ts";
import { loadBundle, type Bundle } from "../src/pipeline/bundle.ts";
import { generate } from "../src/pipeline/pipeline.ts";
import { writeToyBundle } from "./fixtures/toy-bundle.ts";

// The toy U-Net's text projection `w_ctx` (a MatMul weight, [hidden 16, features 8]) as a merge-mode LoRA target.
const dir = writeToyBundle((m) => {
  m.lora = {
    mode: "merge",
    max_rank: 8,
    targets: [
      {
        module: "ctx_proj",
        kind: "linear",
        in_features: 16,
        out_features: 8,
        components: ["unet", "unet_head"],
        weight: { unet: "w_ctx", unet_head: "w_ctx" },
        weight_layout: "in_out",
      },
    ],
  };
});

function loraFile(seed: number) {
  const down = Float32Array.from({ length: 2 * 16 }, (_, i) => Math.sin(i * 0.7 + seed));
  const up = Float32Array.from({ length: 8 * 2 }, (_, i) => Math.cos(i * 1.3 + seed));
  return encodeSafetensors({
    "lora_unet_ctx_proj.lora_down.weight": { shape: [2, 16], data: down },
    "lora_unet_ctx_proj.lora_up.weight": { shape: [8, 2], data: up },
  });
}

let bundle: Bundle;
const runtime = new AddonRuntime({ executionProviders: ["cpu"], intraOpNumThreads: 1 });
afterAll(() => bundle?.release());

const request = { prompt: "a red circle", seed: 4, sampler: "ddim" as const, steps: 3, guidance: 1 };
async function latents(loras: Array<{ seed: number; scale: number }>) {
  bundle ??= await loadBundle(dir);
  const addons = [
    { loras: loras.map((l) => ({ sha256: `s${l.seed}`, bytes: loraFile(l.seed), scale: l.scale })), controlnets: [] },
  ];
  const b = await runtime.bundleFor(bundle, addons);
  return (await generate(b, request, { unetInputs: await runtime.provider(b, [1], addons) })).latents;
}
const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

describe("merge mode (a model without branch inputs)", () => {
  it("merges the LoRA into the U-Net's weights: it changes the image, and at scale 0 it does not", async () => {
    const plain = await latents([]);
    expect(runtime.mergedBuilds).toBe(0);
    expect(maxDiff(plain, await latents([{ seed: 1, scale: 1 }]))).toBeGreaterThan(1e-3);
    expect(maxDiff(plain, await latents([{ seed: 1, scale: 0 }]))).toBeLessThan(1e-6);
  });

  it("builds a merged session once per add-on set and keeps a bounded number", async () => {
    const before = runtime.mergedBuilds;
    const a = await latents([{ seed: 2, scale: 0.5 }]);
    const built = runtime.mergedBuilds - before;
    expect(built).toBe(2); // unet and unet_head hold the weight
    expect(maxDiff(a, await latents([{ seed: 2, scale: 0.5 }]))).toBe(0);
    expect(runtime.mergedBuilds - before).toBe(built); // warm: nothing rebuilt
    for (let seed = 10; seed < 15; seed++) await latents([{ seed, scale: 1 }]);
    const afterMany = runtime.mergedBuilds;
    await latents([{ seed: 2, scale: 0.5 }]); // evicted by now: rebuilt
    expect(runtime.mergedBuilds).toBe(afterMany + built);
  });

  it("refuses to batch requests with different LoRAs", async () => {
    bundle ??= await loadBundle(dir);
    const one = { loras: [{ sha256: "s1", bytes: loraFile(1), scale: 1 }], controlnets: [] };
    await expect(runtime.bundleFor(bundle, [one, { loras: [], controlnets: [] }])).rejects.toThrow(
      /cannot share a batch/,
    );
  });
});
