import { describe, expect, it } from "vitest";
import type { ModelManifest } from "@imagegen/formats/manifest";
import { ddimStep, ddimTimesteps, DdimSampler } from "../src/samplers/ddim.ts";
import { createSampler, SamplerMismatchError } from "../src/samplers/index.ts";
import { guidanceScaleEmbedding, lcmBoundaryScalings, lcmTimesteps, LcmSampler } from "../src/samplers/lcm.ts";
import { alphasCumprod } from "../src/samplers/noise-schedule.ts";
import { rectifiedFlowTimesteps, RectifiedFlowSampler } from "../src/samplers/rectified-flow.ts";

const SD_SCHEDULER: ModelManifest["scheduler"] = {
  num_train_timesteps: 1000,
  beta_schedule: "scaled_linear",
  beta_start: 0.00085,
  beta_end: 0.012,
  original_inference_steps: 50,
  timestep_scaling: 10,
};

const noNoise = () => {
  throw new Error("no noise expected");
};

describe("noise schedule", () => {
  it("matches the Stable Diffusion scaled-linear ᾱ at both ends", () => {
    const a = alphasCumprod(SD_SCHEDULER);
    expect(a[0]).toBeCloseTo(1 - 0.00085, 12);
    // β₁ = (√0.00085 + (√0.012 − √0.00085)/999)², by hand: 0.000850...; ᾱ₁ = ᾱ₀·(1 − β₁).
    const beta1 = (Math.sqrt(0.00085) + (Math.sqrt(0.012) - Math.sqrt(0.00085)) / 999) ** 2;
    expect(a[1]).toBeCloseTo((1 - 0.00085) * (1 - beta1), 12);
    expect(a[999]).toBeCloseTo(0.00466, 6); // diffusers' SD alphas_cumprod[-1]
  });
});

describe("LCM", () => {
  it("picks the skeleton timesteps of the paper (4 steps → 999, 759, 499, 259)", () => {
    expect(lcmTimesteps(4, 1000, 50)).toEqual([999, 759, 499, 259]);
    expect(lcmTimesteps(1, 1000, 50)).toEqual([999]);
    expect(lcmTimesteps(2, 1000, 50)).toEqual([999, 499]);
    expect(lcmTimesteps(8, 1000, 50)).toEqual([999, 879, 759, 639, 499, 379, 259, 139]);
    expect(() => lcmTimesteps(51, 1000, 50)).toThrow(RangeError);
  });

  it("uses the boundary-condition scalings with timestep_scaling 10 and σ_data 0.5 (hand-computed with bc)", () => {
    const at999 = lcmBoundaryScalings(999, 10);
    expect(at999.cSkip).toBeCloseTo(2.505007503737452e-9, 20);
    expect(at999.cOut).toBeCloseTo(0.9999999987474962, 15);
    const at259 = lcmBoundaryScalings(259, 10);
    expect(at259.cSkip).toBeCloseTo(3.726837564778493e-8, 20);
    expect(at259.cOut).toBeCloseTo(0.999999981365812, 15);
  });

  it("re-noises to the next timestep and returns denoised after the last step", () => {
    const sampler = new LcmSampler(SD_SCHEDULER, "epsilon");
    sampler.setTimesteps(2);
    const a = alphasCumprod(SD_SCHEDULER);
    const x0 = Float32Array.from([0.5, -1]);
    const eps = Float32Array.from([0.3, 0.7]);
    const xt = x0.map((v, i) => Math.sqrt(a[999]!) * v + Math.sqrt(1 - a[999]!) * eps[i]!);
    const z = Float32Array.from([1, -2]);
    const first = sampler.step(eps, 0, xt, () => z);
    const { cSkip, cOut } = lcmBoundaryScalings(999, 10);
    for (let i = 0; i < 2; i++) {
      const denoised = cOut * x0[i]! + cSkip * xt[i]!;
      expect(first.denoised[i]).toBeCloseTo(denoised, 5);
      expect(first.prevSample[i]).toBeCloseTo(Math.sqrt(a[499]!) * denoised + Math.sqrt(1 - a[499]!) * z[i]!, 5);
    }
    const last = sampler.step(eps, 1, first.prevSample, noNoise);
    expect(last.prevSample).toEqual(last.denoised);
  });

  it("embeds the guidance scale sin-first, w = scale − 1", () => {
    const e = guidanceScaleEmbedding(1, 8, 1000);
    expect([...e]).toEqual([0, 0, 0, 0, 1, 1, 1, 1]);
    const g = guidanceScaleEmbedding(2.5, 4, 1000); // w·1000 = 1500, freqs [1, 1e-4]
    expect(g[0]).toBeCloseTo(Math.sin(1500), 5);
    expect(g[1]).toBeCloseTo(Math.sin(0.15), 5);
    expect(g[2]).toBeCloseTo(Math.cos(1500), 5);
    expect(g[3]).toBeCloseTo(Math.cos(0.15), 5);
    const plain = guidanceScaleEmbedding(2.5, 4, 1000, 0); // freqs [1, 10000^(−1/2) = 0.01]
    expect(plain[1]).toBeCloseTo(Math.sin(15), 5);
    expect(plain[3]).toBeCloseTo(Math.cos(15), 5);
  });
});

describe("DDIM", () => {
  it("uses leading spacing", () => {
    const t = ddimTimesteps(50, 1000);
    expect(t[0]).toBe(980);
    expect(t[49]).toBe(0);
    expect(t.length).toBe(50);
  });

  it("moves an exactly predicted sample along the deterministic (η = 0) path", () => {
    const a = alphasCumprod(SD_SCHEDULER);
    const x0 = Float32Array.from([0.2, -0.4, 1.1]);
    const eps = Float32Array.from([-1.2, 0.5, 0.9]);
    const xt = x0.map((v, i) => Math.sqrt(a[500]!) * v + Math.sqrt(1 - a[500]!) * eps[i]!);
    const { prevSample, denoised } = ddimStep("epsilon", a, eps, 500, 480, xt);
    for (let i = 0; i < 3; i++) {
      expect(denoised[i]).toBeCloseTo(x0[i]!, 5);
      expect(prevSample[i]).toBeCloseTo(Math.sqrt(a[480]!) * x0[i]! + Math.sqrt(1 - a[480]!) * eps[i]!, 5);
    }
    // v-prediction: v = √ᾱ·ε − √(1−ᾱ)·x0 recovers the same x0.
    const v = x0.map((x, i) => Math.sqrt(a[500]!) * eps[i]! - Math.sqrt(1 - a[500]!) * x);
    const fromV = ddimStep("v_prediction", a, v, 500, 480, xt);
    for (let i = 0; i < 3; i++) expect(fromV.denoised[i]).toBeCloseTo(x0[i]!, 5);
  });

  it("steps past t = 0 with ᾱ₀", () => {
    const s = new DdimSampler(SD_SCHEDULER, "epsilon");
    s.setTimesteps(10);
    const out = s.step(Float32Array.from([0]), 9, Float32Array.from([1]));
    expect(out.prevSample[0]).toBeCloseTo(1, 6); // ε = 0 at t = 0: x stays where ᾱ₀ puts it
  });
});

describe("rectified flow", () => {
  it("feeds t_i = (1 − i/N)·1000 and moves x by v/N", () => {
    expect(rectifiedFlowTimesteps(1)).toEqual([1000]);
    expect(rectifiedFlowTimesteps(4)).toEqual([1000, 750, 500, 250]);
    const s = new RectifiedFlowSampler("flow");
    s.setTimesteps(1);
    expect([...s.step(Float32Array.from([2, -1]), 0, Float32Array.from([0.5, 0.5])).prevSample]).toEqual([2.5, -0.5]);
    s.setTimesteps(4);
    expect([...s.step(Float32Array.from([2, -1]), 0, Float32Array.from([0.5, 0.5])).prevSample]).toEqual([1, 0.25]);
  });
});

describe("sampler and prediction type", () => {
  const manifest = (prediction_type: ModelManifest["prediction_type"], samplers: ModelManifest["samplers"]) => ({
    name: "m",
    prediction_type,
    samplers,
    scheduler: SD_SCHEDULER,
  });

  it("refuses a sampler that does not fit the model's prediction type", () => {
    expect(() => createSampler("rectified-flow", manifest("epsilon", ["rectified-flow"]))).toThrow(
      /rectified-flow needs a flow \(velocity\) model, not epsilon/,
    );
    expect(() => createSampler("ddim", manifest("flow", ["ddim"]))).toThrow(SamplerMismatchError);
    expect(() => createSampler("lcm", manifest("flow", ["lcm"]))).toThrow(/lcm needs an epsilon or v_prediction model/);
  });

  it("refuses a sampler the manifest does not list, unless forced for the bench", () => {
    expect(() => createSampler("lcm", manifest("epsilon", ["ddim"]))).toThrow(/does not support sampler lcm/);
    expect(createSampler("rectified-flow", manifest("epsilon", ["ddim"]), { force: true }).name).toBe("rectified-flow");
  });
});
