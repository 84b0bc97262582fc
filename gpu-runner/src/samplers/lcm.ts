/**
 * Latent Consistency Model multi-step sampling (LCM paper, Alg. 3; diffusers `scheduling_lcm.py`): each step maps
 * the sample to the consistency function's clean estimate with the boundary-condition scalings, then re-noises it
 * to the next timestep of the skeleton, except after the last step.
 */
import type { PredictionType, SchedulerSpec } from "@imagegen/formats/manifest";
import { alphasCumprod, predictOriginal, type PredictionKind, type TrainingSchedule } from "./noise-schedule.ts";
import { SamplerMismatchError, type NoiseSource, type Sampler, type StepResult } from "./types.ts";

/** σ_data of the consistency-model parameterisation (diffusers' LCMScheduler). */
export const LCM_SIGMA_DATA = 0.5;

/**
 * The skeleton: k = T / original_inference_steps, grid [k−1, 2k−1, …, T−1] reversed, and for n steps the indices
 * floor(linspace(0, original_inference_steps, n, endpoint=False)). 4 steps of the SD schedule → [999, 759, 499, 259].
 */
export function lcmTimesteps(steps: number, numTrainTimesteps: number, originalInferenceSteps: number): number[] {
  if (!Number.isInteger(steps) || steps < 1 || steps > originalInferenceSteps) {
    throw new RangeError(`lcm: steps must be an integer in [1, ${originalInferenceSteps}], got ${steps}`);
  }
  const k = Math.floor(numTrainTimesteps / originalInferenceSteps);
  const grid = Array.from({ length: originalInferenceSteps }, (_, i) => (originalInferenceSteps - i) * k - 1);
  return Array.from({ length: steps }, (_, i) => grid[Math.floor((i * originalInferenceSteps) / steps)]!);
}

/** c_skip and c_out at timestep t: with s = scaling·t, c_skip = σ²/(s²+σ²), c_out = s/√(s²+σ²). */
export function lcmBoundaryScalings(
  t: number,
  timestepScaling: number,
  sigmaData = LCM_SIGMA_DATA,
): { cSkip: number; cOut: number } {
  const s = t * timestepScaling;
  const sd2 = sigmaData * sigmaData;
  return { cSkip: sd2 / (s * s + sd2), cOut: s / Math.sqrt(s * s + sd2) };
}

/**
 * The guidance-scale embedding a distilled LCM U-Net takes (`timestep_cond`): w = scale − 1, times wScale,
 * sinusoidal with sin first then cos, frequencies exp(−ln(10000)·i / (half − freqShift)). freqShift 1 is
 * diffusers' `get_guidance_scale_embedding`; the manifest says which one the model was trained with.
 */
export function guidanceScaleEmbedding(
  guidanceScale: number,
  dim: number,
  wScale: number,
  freqShift: 0 | 1 = 1,
): Float32Array {
  const w = (guidanceScale - 1) * wScale;
  const half = Math.floor(dim / 2);
  const out = new Float32Array(dim); // an odd dim leaves the last entry 0, as diffusers pads
  const logBase = half - freqShift > 0 ? Math.log(10000) / (half - freqShift) : 0;
  for (let i = 0; i < half; i++) {
    const arg = w * Math.exp(-logBase * i);
    out[i] = Math.sin(arg);
    out[half + i] = Math.cos(arg);
  }
  return out;
}

export class LcmSampler implements Sampler {
  readonly name = "lcm" as const;
  readonly predictionTypes: readonly PredictionType[] = ["epsilon", "v_prediction"];
  readonly classifierFreeGuidance = false;
  readonly initNoiseSigma = 1;
  timesteps: readonly number[] = [];
  private readonly alphas: Float64Array;
  private readonly spec: TrainingSchedule;
  private readonly predictionType: PredictionKind;
  private readonly timestepScaling: number;
  private readonly originalInferenceSteps: number;

  constructor(
    spec: TrainingSchedule & Pick<SchedulerSpec, "original_inference_steps" | "timestep_scaling">,
    predictionType: PredictionType | "sample",
  ) {
    if (predictionType === "flow")
      throw new SamplerMismatchError("lcm needs an epsilon or v_prediction model, not flow");
    this.spec = spec;
    this.predictionType = predictionType;
    this.alphas = alphasCumprod(spec);
    this.timestepScaling = spec.timestep_scaling ?? 10;
    this.originalInferenceSteps = spec.original_inference_steps ?? 50;
  }

  setTimesteps(steps: number): void {
    this.timesteps = lcmTimesteps(steps, this.spec.num_train_timesteps, this.originalInferenceSteps);
  }

  scaleModelInput(sample: Float32Array): Float32Array {
    return sample;
  }

  step(modelOutput: Float32Array, stepIndex: number, sample: Float32Array, noise: NoiseSource): StepResult {
    const t = this.timesteps[stepIndex];
    if (t === undefined) throw new RangeError(`lcm: step ${stepIndex} outside ${this.timesteps.length} timesteps`);
    const { x0 } = predictOriginal(this.predictionType, modelOutput, sample, this.alphas[t]!);
    const { cSkip, cOut } = lcmBoundaryScalings(t, this.timestepScaling);
    const denoised = new Float32Array(sample.length);
    for (let i = 0; i < sample.length; i++) denoised[i] = cOut * x0[i]! + cSkip * sample[i]!;
    const next = this.timesteps[stepIndex + 1];
    if (next === undefined) return { prevSample: denoised, denoised };
    const z = noise(sample.length);
    const a = Math.sqrt(this.alphas[next]!);
    const b = Math.sqrt(1 - this.alphas[next]!);
    const prev = new Float32Array(sample.length);
    for (let i = 0; i < prev.length; i++) prev[i] = a * denoised[i]! + b * z[i]!;
    return { prevSample: prev, denoised };
  }
}
