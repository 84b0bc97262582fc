import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loraSetKey, type RequestAddons } from "../src/addons/request-addons.ts";
import { AddonRuntime } from "../src/addons/runtime.ts";
import { loadBundle, type Bundle } from "../src/pipeline/bundle.ts";
import { generate } from "../src/pipeline/pipeline.ts";

// A branch model (LoRA branch inputs, float32 weights) whose manifest also names every target's weight: a hot
// add-on set is merged into those weights (addons/runtime.ts `bundleFor`).
const dir = join(import.meta.dirname, "../models/tiny-shapes-random");
const kohya = new Uint8Array(readFileSync(join(dir, "addons/random-lora-kohya.safetensors")));
const peft = new Uint8Array(readFileSync(join(dir, "addons/random-lora-peft.safetensors")));
const request = { prompt: "a red circle", seed: 4, sampler: "ddim" as const, steps: 3, guidance: 2 };
const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);
const maxAbs = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);

let bundle: Bundle;
beforeAll(async () => {
  bundle = await loadBundle(dir);
});
afterAll(() => bundle?.release());

const set = (scale: number, withPeft = false): RequestAddons => ({
  loras: [{ sha256: "kohya", bytes: kohya, scale }, ...(withPeft ? [{ sha256: "peft", bytes: peft, scale: 0.5 }] : [])],
  controlnets: [],
});

async function run(runtime: AddonRuntime, addons: RequestAddons[]) {
  const b = await runtime.bundleFor(bundle, addons);
  const result = await generate(b, request, { unetInputs: await runtime.provider(b, [1], addons) });
  return { merged: b.lorasMerged, latents: result.latents };
}

describe("hot LoRA sets on a branch model", () => {
  it("stacks a set until its n-th batch, then runs it merged, with the same image", async () => {
    // Folding off: the set runs on the branches until merged (folding has its own tests, fold.test.ts).
    const runtime = new AddonRuntime(
      { executionProviders: ["cpu"], intraOpNumThreads: 1 },
      { mergeHotAfter: 2, foldLoras: false },
    );
    const addons = [set(0.8, true)];
    const first = await run(runtime, addons);
    expect(first.merged).toBeUndefined();
    expect(runtime.mergedBuilds).toBe(0);
    const second = await run(runtime, addons); // the set's 2nd batch: still stacked, the merge starts beside it
    expect(second.merged).toBeUndefined();
    await runtime.mergesSettled();
    // unet and the three DeepCache parts hold LoRA targets.
    expect(runtime.mergedBuilds).toBe(4);
    const third = await run(runtime, addons);
    expect(third.merged).toBe(loraSetKey(addons[0]!.loras));
    expect(maxDiff(first.latents, second.latents)).toBe(0);
    const plain = (await generate(bundle, request)).latents;
    // The LoRAs change the image, and merged weights give the stacked image (float32 sums in another order).
    expect(maxDiff(plain, first.latents)).toBeGreaterThan(1e-2);
    expect(maxDiff(first.latents, third.latents)).toBeLessThan(1e-4 * maxAbs(first.latents));
    expect(runtime.mergedBuilds).toBe(4); // warm: nothing rebuilt
  });

  it("keeps stacking mixed batches, sets below the threshold, and everything when merging is off", async () => {
    const runtime = new AddonRuntime({ executionProviders: ["cpu"], intraOpNumThreads: 1 }, { mergeHotAfter: 1 });
    const mixed = [set(1), set(0.5)];
    expect(await runtime.bundleFor(bundle, mixed)).toBe(bundle);
    await runtime.mergesSettled();
    expect(runtime.mergedBuilds).toBe(0);
    const off = new AddonRuntime(
      { executionProviders: ["cpu"], intraOpNumThreads: 1 },
      { mergeHotAfter: 0, foldLoras: false },
    );
    for (let i = 0; i < 3; i++) expect(await off.bundleFor(bundle, [set(1)])).toBe(bundle);
    await off.mergesSettled();
    expect(off.mergedBuilds).toBe(0);
  });

  it("picks a hot set's merged weights by its key before the files arrive, and refuses other LoRAs on them", async () => {
    const runtime = new AddonRuntime({ executionProviders: ["cpu"], intraOpNumThreads: 1 }, { mergeHotAfter: 1 });
    const key = loraSetKey(set(1).loras);
    expect(runtime.hotMerged(bundle, [key])).toBeUndefined();
    runtime.countUse(bundle, [set(1)]);
    await runtime.mergesSettled();
    const merged = runtime.hotMerged(bundle, [key]);
    expect(merged?.lorasMerged).toBe(key);
    expect(runtime.hotMerged(bundle, [key, ""])).toBeUndefined(); // a batch mixing sets stays stacked
    await expect(runtime.provider(merged!, [1], [set(0.5)])).rejects.toThrow(/other than the ones merged/);
  });
});

describe("merging into float16-stored weights", () => {
  // The trained LCM bundle stores its weights as float16 (+ Cast); its LoCon LoRA reaches linear and 3×3 targets.
  const lcmDir = join(import.meta.dirname, "../models/tiny-shapes-lcm");
  const outlined = join(import.meta.dirname, "../models/tiny-shapes/addons/lora-outlined.safetensors");
  it("widens them to float32: the merged image is the stacked one", async (ctx) => {
    let lcm: Bundle;
    try {
      lcm = await loadBundle(lcmDir);
    } catch {
      return ctx.skip(); // the trained family is not exported
    }
    try {
      const addons: RequestAddons[] = [
        { loras: [{ sha256: "outlined", bytes: new Uint8Array(readFileSync(outlined)), scale: 1 }], controlnets: [] },
      ];
      const runtime = new AddonRuntime({ executionProviders: ["cpu"], intraOpNumThreads: 1 }, { mergeHotAfter: 1 });
      const lcmRequest = {
        prompt: "a large red circle in the center, outlined",
        seed: 3,
        sampler: "lcm" as const,
        steps: 4,
      };
      const stacked = (await generate(lcm, lcmRequest, { unetInputs: await runtime.provider(lcm, [1], addons) }))
        .latents;
      runtime.countUse(lcm, addons);
      await runtime.mergesSettled();
      const merged = runtime.hotMerged(lcm, [loraSetKey(addons[0]!.loras)]);
      expect(merged?.lorasMerged).toBeDefined();
      const fromMerged = (
        await generate(merged!, lcmRequest, { unetInputs: await runtime.provider(merged!, [1], addons) })
      ).latents;
      const plain = (await generate(lcm, lcmRequest)).latents;
      expect(maxDiff(plain, stacked)).toBeGreaterThan(1e-2);
      expect(maxDiff(stacked, fromMerged)).toBeLessThan(1e-4 * maxAbs(stacked));
    } finally {
      await lcm.release();
    }
  });
});
