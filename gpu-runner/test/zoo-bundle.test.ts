/**
 * The real pipeline on the zoo's committed random bundles (no mocks): goldens that fail if a sampler's output
 * changes for a fixed seed, run counts that fail if a cached step ran the deep part, and the add-on inputs.
 *
 * Goldens are latents, not PNG bytes: 64 values spread over the final latents plus their mean and standard
 * deviation, compared with a relative tolerance, so they survive last-bit differences between CPUs but not a
 * changed formula. When the zoo re-exports the bundle (its sha256 changes), regenerate them:
 *   UPDATE_GOLDENS=1 npx vitest run --root gpu-runner test/zoo-bundle.test.ts
 */
import { createHash } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadBundle, type Bundle } from "../src/pipeline/bundle.ts";
import * as ort from "onnxruntime-node";
import { generate, type UnetInputProvider } from "../src/pipeline/pipeline.ts";
import type { GenerationRequest } from "../src/pipeline/request.ts";

const MODELS = fileURLToPath(new URL("../models/", import.meta.url));
const BASE = "tiny-shapes-random";
const GOLDENS = fileURLToPath(new URL("./goldens/tiny-shapes-random.json", import.meta.url));
const UPDATE = process.env.UPDATE_GOLDENS === "1";
const present = existsSync(join(MODELS, BASE, "manifest.json"));

interface Golden {
  sample: number[];
  mean: number;
  std: number;
}
interface GoldenFile {
  /** sha256 of each bundle's unet/model.onnx when the goldens were recorded. */
  unetSha256: Record<string, string>;
  cases: Record<string, Golden>;
}

const PROMPT = "a large red circle on the left, blue background";
/** Each case on the random bundle made for its sampler (the LCM one takes timestep_cond; the RF one predicts flow). */
const CASES: Record<string, { bundle: string; request: GenerationRequest }> = {
  "ddim-10-cfg": { bundle: BASE, request: { prompt: PROMPT, seed: 42, sampler: "ddim", steps: 10, guidance: 5 } },
  "ddim-10-cfg-deepcache-3": {
    bundle: BASE,
    request: {
      prompt: PROMPT,
      seed: 42,
      sampler: "ddim",
      steps: 10,
      guidance: 5,
      cache: { mode: "deepcache", interval: 3, schedule: "uniform" },
    },
  },
  "lcm-4-base": { bundle: BASE, request: { prompt: PROMPT, seed: 42, sampler: "lcm", steps: 4, guidance: 1.5 } },
  "lcm-4-distilled": {
    bundle: `${BASE}-lcm`,
    request: { prompt: PROMPT, seed: 42, sampler: "lcm", steps: 4, guidance: 8 },
  },
  "rectified-flow-1": {
    bundle: `${BASE}-rf`,
    request: { prompt: PROMPT, seed: 42, sampler: "rectified-flow", steps: 1 },
  },
  "rectified-flow-3": {
    bundle: `${BASE}-rf`,
    request: { prompt: PROMPT, seed: 42, sampler: "rectified-flow", steps: 3 },
  },
};

function summarize(latents: Float32Array): Golden {
  const stride = Math.max(1, Math.floor(latents.length / 64));
  const sample = Array.from({ length: 64 }, (_, i) => latents[i * stride] ?? 0);
  const mean = latents.reduce((s, v) => s + v, 0) / latents.length;
  const std = Math.sqrt(latents.reduce((s, v) => s + (v - mean) ** 2, 0) / latents.length);
  return { sample, mean, std };
}

// Loose enough for another CPU's last bits to compound over the steps, tight enough for any change of formula.
const close = (actual: number, expected: number) => Math.abs(actual - expected) <= 5e-3 * (1 + Math.abs(expected));
const sha256 = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex");

describe.skipIf(!present)("zoo random bundles (tiny-shapes-random*)", () => {
  const bundles = new Map<string, Bundle>();
  let goldens: GoldenFile;
  const fresh: GoldenFile = { unetSha256: {}, cases: {} };
  let bundle: Bundle; // the base

  beforeAll(async () => {
    for (const name of new Set(Object.values(CASES).map((c) => c.bundle))) {
      const b = await loadBundle(join(MODELS, name));
      bundles.set(name, b);
      fresh.unetSha256[name] = sha256(join(MODELS, name, b.manifest.components.unet.path));
    }
    bundle = bundles.get(BASE)!;
    goldens = existsSync(GOLDENS)
      ? (JSON.parse(readFileSync(GOLDENS, "utf8")) as GoldenFile)
      : { unetSha256: {}, cases: {} };
  });
  afterAll(async () => {
    if (UPDATE) writeFileSync(GOLDENS, JSON.stringify(fresh, null, 2) + "\n");
    await Promise.all([...bundles.values()].map((b) => b.release()));
  });

  it("runs on the bundles the goldens were recorded on", () => {
    if (UPDATE) return;
    expect(goldens.unetSha256, "the zoo re-exported a bundle: regenerate the goldens (see the header)").toEqual(
      fresh.unetSha256,
    );
  });

  for (const [name, { bundle: bundleName, request }] of Object.entries(CASES)) {
    it(`${name} reproduces its golden latents`, async () => {
      const b = bundles.get(bundleName)!;
      const result = await generate(b, request);
      const summary = summarize(result.latents);
      fresh.cases[name] = summary;
      if (UPDATE) return;
      const golden = goldens.cases[name];
      expect(golden, `no golden for ${name}`).toBeDefined();
      const off = summary.sample.flatMap((v, i) =>
        close(v, golden!.sample[i]!) ? [] : [`[${i}] ${v} vs ${golden!.sample[i]}`],
      );
      expect(off).toEqual([]);
      expect(close(summary.mean, golden!.mean) && close(summary.std, golden!.std)).toBe(true);
      // the same request again gives the same bytes
      const again = await generate(b, request);
      expect(Buffer.from(again.images[0]!).equals(Buffer.from(result.images[0]!))).toBe(true);
    });
  }

  it("never runs the deep part on a cached step", async () => {
    const deep = bundle.components.unet_deep!;
    for (const [interval, schedule] of [
      [2, "uniform"],
      [3, "uniform"],
      [5, "non-uniform"],
    ] as const) {
      const before = { deep: deep.runs, head: bundle.components.unet_head!.runs };
      const r = await generate(bundle, {
        prompt: PROMPT,
        seed: 1,
        sampler: "lcm",
        steps: 8,
        cache: { mode: "deepcache", interval, schedule },
      });
      const full = r.fullSteps!.filter(Boolean).length;
      expect(full).toBe(Math.ceil(8 / interval));
      expect(deep.runs - before.deep).toBe(full);
      expect(bundle.components.unet_head!.runs - before.head).toBe(8);
      expect(r.componentRuns.unet).toBe(0);
    }
  });

  it("feeds zeros for absent add-ons, and supplied LoRA branches and residuals reach the U-Net", async () => {
    const m = bundle.manifest;
    const request: GenerationRequest = { prompt: PROMPT, seed: 3, sampler: "lcm", steps: 2 };
    const spec = (name: string) => m.components.unet.inputs.find((t) => t.name === name)!;
    const filled = (name: string, batch: number, value: number, rank = 1) => {
      const dims = spec(name).shape.map((d) => (d === "batch" ? batch : typeof d === "number" ? d : rank));
      return new ort.Tensor("float32", new Float32Array(dims.reduce((a, b) => a * b, 1)).fill(value), dims);
    };
    const latents = async (unetInputs?: UnetInputProvider) =>
      Buffer.from((await generate(bundle, request, { unetInputs })).latents.buffer);
    const plain = await latents();
    const mid = m.controlnet!.residuals.at(-1)!;
    expect((await latents(({ unetBatch }) => ({ [mid]: filled(mid, unetBatch, 0) }))).equals(plain)).toBe(true);
    expect((await latents(({ unetBatch }) => ({ [mid]: filled(mid, unetBatch, 0.5) }))).equals(plain)).toBe(false);
    const { down_input: down, up_input: up } = m.lora!.targets[0]!;
    const lora: UnetInputProvider = ({ unetBatch }) => ({
      [down!]: filled(down!, unetBatch, 0.5),
      [up!]: filled(up!, unetBatch, 0.5),
    });
    expect((await latents(lora)).equals(plain)).toBe(false);
  });
});
