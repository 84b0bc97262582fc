import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { conditioningTensor, decodePng } from "../src/addons/control-image.ts";
import { ControlNetOverlap } from "../src/addons/controlnet-overlap.ts";
import { AddonRuntime } from "../src/addons/runtime.ts";
import { GraphRewriteError } from "../src/onnx/lora-branches.ts";
import { partitionByInputs } from "../src/onnx/partition.ts";
import { loadBundle, type Bundle } from "../src/pipeline/bundle.ts";
import { generate } from "../src/pipeline/pipeline.ts";
import { encodePng } from "../src/pipeline/png.ts";

const models = join(import.meta.dirname, "../models");
const lcmDir = join(models, "tiny-shapes-lcm");
const cnDir = join(models, "tiny-shapes/addons/controlnet-mask");
const session = { executionProviders: ["cpu" as const], intraOpNumThreads: 1 };
const request = {
  prompt: "a large red circle on the left, blue background",
  seed: 9,
  sampler: "lcm" as const,
  steps: 4,
};
const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

function mask(): Float32Array {
  const rgb = new Uint8Array(64 * 64 * 3);
  for (let y = 16; y < 48; y++) for (let x = 4; x < 30; x++) rgb.fill(255, (y * 64 + x) * 3, (y * 64 + x) * 3 + 3);
  const cond = JSON.parse(readFileSync(join(cnDir, "manifest.json"), "utf8")).conditioning;
  return conditioningTensor(decodePng(encodePng(rgb, 64, 64)), cond);
}

let lcm: Bundle;
beforeAll(async () => {
  lcm = await loadBundle(lcmDir, session);
});
afterAll(() => lcm?.release());

describe("the U-Net split where the ControlNet residuals enter", () => {
  it("puts every residual in the late part and none in the early one", () => {
    const manifest = JSON.parse(readFileSync(join(lcmDir, "manifest.json"), "utf8"));
    const model = new Uint8Array(readFileSync(join(lcmDir, manifest.components.unet.path)));
    const p = partitionByInputs(model, manifest.controlnet.residuals);
    for (const r of manifest.controlnet.residuals) {
      expect(p.lateInputs).toContain(r);
      expect(p.earlyInputs).not.toContain(r);
    }
    expect(p.earlyInputs).toContain("sample");
    expect(p.handover.length).toBeGreaterThan(0);
    expect(() => partitionByInputs(model, ["not_an_input"])).toThrow(GraphRewriteError);
  });

  it("early then late gives the whole U-Net's image, with and without a ControlNet", async () => {
    const overlap = await new ControlNetOverlap(session).parts(lcm);
    expect(overlap).toBeDefined();
    const runtime = new AddonRuntime(session);
    const addons = [{ loras: [], controlnets: [{ dir: cnDir, conditioning: mask(), scale: 1 }] }];
    const unetInputs = (await runtime.provider(lcm, [1], addons, "sequence"))!;
    const whole = (await generate(lcm, request, { unetInputs })).latents;
    const split = (await generate(lcm, request, { unetInputs, overlap: overlap! })).latents;
    expect(maxDiff(whole, split)).toBeLessThan(1e-6);
    const plain = (await generate(lcm, request)).latents;
    expect(maxDiff(plain, whole)).toBeGreaterThan(1e-3); // the ControlNet acts
    expect(maxDiff(plain, (await generate(lcm, request, { overlap: overlap! })).latents)).toBeLessThan(1e-6);
  });

  it("a bundle on merged weights has none (its batches keep the DeepCache parts)", async () => {
    const overlap = new ControlNetOverlap(session);
    expect(await overlap.parts({ ...lcm, lorasMerged: "some-set" })).toBeUndefined();
  });
});
