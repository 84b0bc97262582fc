import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parseHeader, readFloatTensor } from "@imagegen/formats/safetensors";
import { describe, expect, it } from "vitest";
import { samplerFromSchedulerConfig, SamplerMismatchError } from "../src/samplers/index.ts";
import type { DiffusersSchedulerConfig } from "../src/samplers/scheduler-config.ts";

// Written by gpu-runner/sd-fixtures/scheduler_refs.py from diffusers' schedulers: a seeded random chain per case.
const DIR = join(import.meta.dirname, "fixtures", "sd-refs", "schedulers");
const CASES = readdirSync(DIR)
  .filter((f) => f.endsWith(".safetensors"))
  .sort();
const TOLERANCE = 1e-5;
/**
 * DPM-Solver++ multiplies x0 estimates of up to ±100 by coefficients like e^(−h) − 1 that diffusers forms in
 * float32 scalars: its own rounding reaches 1.6e-5 relative, so the float64 sampler is held to 2e-5 there.
 */
const tolerance = (file: string) => (file.startsWith("dpmpp") ? 2e-5 : TOLERANCE);

function load(file: string) {
  const bytes = new Uint8Array(readFileSync(join(DIR, file)));
  const header = parseHeader(bytes, bytes.byteLength);
  const get = (name: string) => (header.tensors.has(name) ? readFloatTensor(bytes, header, name) : undefined);
  return {
    config: JSON.parse(header.metadata.config!) as DiffusersSchedulerConfig,
    steps: Number(header.metadata.steps),
    get,
    rows: (name: string) => {
      const t = get(name);
      const n = get("init_sample")!.length;
      return t && Array.from({ length: t.length / n }, (_, i) => t.subarray(i * n, (i + 1) * n));
    },
  };
}

/** Largest |a − b| / max(1, |b|): float32 holds ~7 digits, and x0 estimates at high noise reach ±100. */
const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!) / Math.max(1, Math.abs(b[i]!)));
  return m;
};

describe("samplers against diffusers' schedulers", () => {
  it("has the reference cases", () => {
    expect(CASES.length).toBeGreaterThanOrEqual(15);
  });

  const observed: Record<string, number> = {};
  for (const file of CASES) {
    it(`${file.replace(".safetensors", "")}: same timesteps, step outputs within ${tolerance(file)} (relative above 1)`, () => {
      const ref = load(file);
      const sampler = samplerFromSchedulerConfig(ref.config);
      sampler.setTimesteps(ref.steps);
      // Integer timesteps exactly. Karras' fractional ones come from a log-σ interpolation that diffusers runs in
      // mixed float32/float64 numpy: equal to a float32 ulp or two.
      const timesteps = ref.get("timesteps")!;
      if (timesteps.every(Number.isInteger)) expect(sampler.timesteps).toEqual([...timesteps]);
      else expect(maxDiff(sampler.timesteps, timesteps)).toBeLessThan(2e-4);
      const sigmas = ref.get("sigmas");
      if (sigmas)
        expect(maxDiff((sampler as unknown as { sigmas: number[] }).sigmas, sigmas) / sigmas[0]!).toBeLessThan(1e-6);
      expect(Math.abs(sampler.initNoiseSigma - ref.get("init_noise_sigma")![0]!)).toBeLessThan(
        1e-5 * sampler.initNoiseSigma,
      );

      const outputs = ref.rows("model_output")!;
      const prevs = ref.rows("prev_sample")!;
      const denoised = ref.rows("denoised");
      const noise = ref.rows("noise");
      const scales = ref.get("input_scale")!;
      let sample = ref.get("init_sample")!;
      let worst = 0;
      outputs.forEach((modelOutput, i) => {
        const ones = new Float32Array(sample.length).fill(1);
        expect(Math.abs(sampler.scaleModelInput(ones, i)[0]! - scales[i]!)).toBeLessThan(1e-6);
        const result = sampler.step(modelOutput, i, sample, (size) => {
          expect(noise, "a deterministic sampler drew noise").toBeDefined();
          expect(size).toBe(sample.length);
          return noise![i]!;
        });
        worst = Math.max(worst, maxDiff(result.prevSample, prevs[i]!));
        if (denoised) worst = Math.max(worst, maxDiff(result.denoised, denoised[i]!));
        sample = result.prevSample; // the sampler's own chain, as a pipeline runs it
      });
      observed[file] = worst;
      expect(worst).toBeLessThan(tolerance(file));
    });
  }

  it("reports the largest difference seen", () => {
    const entries = Object.entries(observed);
    const worst = (dpm: boolean) =>
      Math.max(0, ...entries.filter(([f]) => f.startsWith("dpmpp") === dpm).map(([, d]) => d));
    console.log(
      `scheduler parity: ${entries.length} cases, max relative diff ${worst(false).toExponential(2)} (dpm++ ${worst(true).toExponential(2)})`,
    );
    expect(worst(false)).toBeLessThan(TOLERANCE);
  });
});

describe("samplerFromSchedulerConfig", () => {
  const sd15 = {
    _class_name: "PNDMScheduler",
    beta_schedule: "scaled_linear",
    beta_start: 0.00085,
    beta_end: 0.012,
    steps_offset: 1,
    set_alpha_to_one: false,
    clip_sample: false,
    timestep_spacing: "leading",
  };

  it("names the class and the supported ones for a scheduler it cannot run", () => {
    expect(() => samplerFromSchedulerConfig(sd15)).toThrow(SamplerMismatchError);
    expect(() => samplerFromSchedulerConfig(sd15)).toThrow(
      /PNDMScheduler.*DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler, LCMScheduler/,
    );
  });

  it("builds the sampler a request names from another class's config, as diffusers' from_config does", () => {
    expect(samplerFromSchedulerConfig(sd15, { sampler: "euler" }).name).toBe("euler");
    const karras = samplerFromSchedulerConfig(sd15, { sampler: "dpm++2m-karras" });
    karras.setTimesteps(4);
    expect(karras.name).toBe("dpm++2m-karras");
    expect(karras.timesteps[0]).toBe(999);
    const ddim = samplerFromSchedulerConfig(sd15, { sampler: "ddim" });
    ddim.setTimesteps(4);
    expect(ddim.timesteps).toEqual([751, 501, 251, 1]);
  });

  it("refuses options whose arithmetic it does not implement instead of ignoring them", () => {
    expect(() => samplerFromSchedulerConfig({ ...sd15, _class_name: "DDIMScheduler", clip_sample: true })).toThrow(
      /clip_sample/,
    );
    expect(() =>
      samplerFromSchedulerConfig({
        ...sd15,
        _class_name: "DPMSolverMultistepScheduler",
        algorithm_type: "sde-dpmsolver++",
      }),
    ).toThrow(/algorithm_type/);
    expect(() =>
      samplerFromSchedulerConfig({
        ...sd15,
        _class_name: "EulerDiscreteScheduler",
        beta_schedule: "squaredcos_cap_v2",
      }),
    ).toThrow(/beta_schedule/);
  });
});
