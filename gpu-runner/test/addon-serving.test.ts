import { copyFileSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { conditioningTensor, decodePng } from "../src/addons/control-image.ts";
import { loraSetKey, type RequestAddons } from "../src/addons/request-addons.ts";
import { encodePng } from "../src/pipeline/png.ts";
import { InferencePool } from "../src/workers/pool.ts";

const bundle = join(import.meta.dirname, "../models/tiny-shapes-random");
const cnDir = join(bundle, "addons/random-controlnet-mask");
const cnManifest = JSON.parse(readFileSync(join(cnDir, "manifest.json"), "utf8"));
const loraBytes = new Uint8Array(readFileSync(join(bundle, "addons/random-lora-kohya.safetensors")));
// Stacked LoRAs throughout (a hot set would otherwise switch to merged weights mid-file); merging has its own test.
const pool = new InferencePool({ size: 1, mergeHotAfter: 0 });
afterAll(() => pool.close());

const request = {
  prompt: "a large red circle on the left, blue background",
  seed: 11,
  sampler: "ddim" as const,
  steps: 6,
  guidance: 3,
};
const none: RequestAddons = { loras: [], controlnets: [] };
const lora = (scale: number): RequestAddons => ({
  loras: [{ sha256: "kohya-random", bytes: loraBytes, scale }],
  controlnets: [],
});

/** A mask: white square on the left half, as a tenant would send it. */
function mask(): Float32Array {
  const rgb = new Uint8Array(64 * 64 * 3);
  for (let y = 16; y < 48; y++) for (let x = 4; x < 30; x++) rgb.fill(255, (y * 64 + x) * 3, (y * 64 + x) * 3 + 3);
  return conditioningTensor(decodePng(encodePng(rgb, 64, 64)), cnManifest.conditioning);
}
const cn = (scale: number, times = 1): RequestAddons => ({
  loras: [],
  controlnets: Array.from({ length: times }, () => ({ dir: cnDir, conditioning: mask(), scale })),
});

async function latents(addons: RequestAddons): Promise<Float32Array> {
  return (await pool.generate(bundle, request, { addons: [addons] })).latents;
}
const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);
const maxAbs = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
/**
 * The same image up to float32 rounding: a batch with one LoRA set runs on its merged weights fed to the
 * weights-as-inputs session (addons/fold.ts), other kernels than the plain session's or the branches' (sums in
 * another order), so "the same" is within 1e-5 of the latents' magnitude, not bit for bit.
 */
const same = (a: Float32Array, b: Float32Array) => expect(maxDiff(a, b)).toBeLessThan(1e-5 * maxAbs(b));

describe("add-ons applied by the inference worker", () => {
  it("a LoRA changes the image; at scale 0 it is the plain image", async () => {
    const plain = await latents(none);
    expect(maxDiff(plain, await latents(lora(1)))).toBeGreaterThan(1e-3);
    same(await latents(lora(0)), plain);
  });

  it("a ControlNet's residuals reach the U-Net; two are summed", async () => {
    const plain = await latents(none);
    const one = await latents(cn(1));
    expect(maxDiff(plain, one)).toBeGreaterThan(1e-3);
    expect(maxDiff(plain, await latents(cn(0)))).toBeLessThan(1e-6);
    // Two ControlNets at 0.5 each add up to one at 1.
    expect(maxDiff(one, await latents(cn(0.5, 2)))).toBeLessThan(1e-4);
  });

  it("requests with different add-ons share a batch without leaking into each other", async () => {
    const alone = await latents(none);
    const styledAlone = await latents({ ...lora(1), controlnets: cn(1).controlnets });
    const [a, b] = await pool.generateBatch(bundle, [request, request], {
      addons: [{ ...lora(1), controlnets: cn(1).controlnets }, none],
    });
    expect(maxDiff(a!.latents, styledAlone)).toBeLessThan(1e-4);
    expect(maxDiff(b!.latents, alone)).toBeLessThan(1e-4);
  });
});

describe("bounded asynchronous loading", () => {
  const slow = { ...request, steps: 8 };
  it("add-ons that arrive late join at the bound, and the steps before run without them", async () => {
    const immediate = (await pool.generate(bundle, slow, { addons: [lora(1)] })).latents;
    const plain = (await pool.generate(bundle, slow, { addons: [none] })).latents;
    let release!: (a: RequestAddons[]) => void;
    const arriving = new Promise<RequestAddons[]>((r) => (release = r));
    let joined: number | null = -1;
    const late = await pool.generate(bundle, slow, {
      addons: arriving,
      addonJoinFraction: 3 / 8,
      onAddonsJoined: (s) => (joined = s),
      // The add-ons "finish loading" only once step 3 has begun: the generation must wait for them there.
      onProgress: ({ step }) => step === 3 && release([lora(1)]),
    });
    expect(joined).toBe(3);
    expect(maxDiff(late.latents, immediate)).toBeGreaterThan(1e-4);
    expect(maxDiff(late.latents, plain)).toBeGreaterThan(1e-4);
  });

  it("add-ons already there join at step 0: the same image as without the bound", async () => {
    const immediate = (await pool.generate(bundle, slow, { addons: [lora(1)] })).latents;
    let joined: number | null = -1;
    const ready = await pool.generate(bundle, slow, {
      addons: Promise.resolve([lora(1)]),
      addonJoinFraction: 0.5,
      onAddonsJoined: (s) => (joined = s),
    });
    expect(joined).toBe(0);
    same(ready.latents, immediate);
  });

  it("add-ons that arrive while a fresh worker is still loading the model are not lost", async () => {
    const immediate = (await pool.generate(bundle, slow, { addons: [lora(1)] })).latents;
    const fresh = new InferencePool({ size: 1, mergeHotAfter: 0 });
    try {
      // Already loaded: the "addons" message follows the job at once, before the worker has the bundle (it hung).
      const r = await fresh.generate(bundle, slow, { addons: Promise.resolve([lora(1)]), addonJoinFraction: 0 });
      same(r.latents, immediate);
    } finally {
      await fresh.close();
    }
  }, 20_000);

  it("an add-on that fails to load fails the generation with its reason", async () => {
    const failing = Promise.reject(
      Object.assign(new Error("sha256 mismatch for addon_x@1"), { name: "AddonIntegrityError" }),
    );
    await expect(pool.generate(bundle, slow, { addons: failing, addonJoinFraction: 0.25 })).rejects.toThrow(
      /sha256 mismatch/,
    );
  });
});

describe("hot LoRA sets through the pool", () => {
  it("a set that keeps coming is merged in the worker and picked by its key while its files are still on the way", async () => {
    const hot = new InferencePool({ size: 1, mergeHotAfter: 2 });
    try {
      const stacked = (await pool.generate(bundle, request, { addons: [lora(1)] })).latents;
      const loraSets = [loraSetKey(lora(1).loras)];
      const merged: boolean[] = [];
      let last = stacked;
      // The merge runs in the worker's background after the set's 2nd batch: a few more batches at most.
      for (let i = 0; i < 12 && !merged.at(-1); i++) {
        last = (
          await hot.generate(bundle, request, {
            addons: Promise.resolve([lora(1)]),
            addonJoinFraction: 0,
            loraSets,
            onAddonsJoined: (_, m) => merged.push(m),
          })
        ).latents;
      }
      expect(merged.slice(0, 2)).toEqual([false, false]);
      expect(merged.at(-1)).toBe(true);
      expect(maxDiff(last, stacked)).toBeLessThan(1e-4);
      // Another set on the same worker is stacked, not given the merged weights.
      let other: boolean | undefined;
      await hot.generate(bundle, request, {
        addons: Promise.resolve([lora(0.5)]),
        addonJoinFraction: 0,
        loraSets: [loraSetKey(lora(0.5).loras)],
        onAddonsJoined: (_, m) => (other = m),
      });
      expect(other).toBe(false);
    } finally {
      await hot.close();
    }
  });
});

describe("ControlNet beside the U-Net", () => {
  it("in its own worker (the U-Net cut where the residuals enter) gives the image of the sequential path", async () => {
    const parallel = new InferencePool({ size: 1, parallelControlNet: true });
    try {
      const both = { ...lora(0.7), controlnets: cn(1).controlnets };
      const a = (await parallel.generate(bundle, request, { addons: [both] })).latents;
      const b = (await pool.generate(bundle, request, { addons: [both] })).latents;
      expect(maxDiff(a, b)).toBeLessThan(1e-4);
      expect(maxDiff(a, await latents(none))).toBeGreaterThan(1e-3);
    } finally {
      await parallel.close();
    }
  });

  it("in its own worker: a ControlNet that fails to load fails its generation, and the next batch still runs", async () => {
    const broken = mkdtempSync(join(tmpdir(), "cn-broken-"));
    copyFileSync(join(cnDir, "manifest.json"), join(broken, "manifest.json")); // no ONNX file beside it
    const parallel = new InferencePool({ size: 1, parallelControlNet: true });
    try {
      const bad = { loras: [], controlnets: [{ dir: broken, conditioning: mask(), scale: 1 }] };
      await expect(parallel.generate(bundle, request, { addons: [bad] })).rejects.toThrow(/not found/);
      const ok = (await parallel.generate(bundle, request, { addons: [cn(1)] })).latents;
      expect(maxDiff(ok, await latents(cn(1)))).toBeLessThan(1e-4);
    } finally {
      await parallel.close();
      rmSync(broken, { recursive: true, force: true });
    }
  });
});
