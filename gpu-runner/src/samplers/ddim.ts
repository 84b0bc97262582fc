/**
 * DDIM (Song et al. 2020) with η = 0: deterministic, the many-step baseline, used with classifier-free guidance.
 * Timesteps use diffusers' "leading" spacing with no offset; the step past t = 0 uses ᾱ₀ ("set_alpha_to_one"
 * false, as Stable Diffusion configures it).
 */
import type { PredictionType, SchedulerSpec } from "../pipeline/manifest.ts";
import { alphasCumprod, predictOriginal } from "./noise-schedule.ts";
import { SamplerMismatchError, type Sampler, type StepResult } from "./types.ts";

export function ddimTimesteps(steps: number, numTrainTimesteps: number): number[] {
  if (!Number.isInteger(steps) || steps < 1 || steps > numTrainTimesteps) {
    throw new RangeError(`ddim: steps must be an integer in [1, ${numTrainTimesteps}], got ${steps}`);
  }
  const ratio = Math.floor(numTrainTimesteps / steps);
  return Array.from({ length: steps }, (_, i) => (steps - 1 - i) * ratio);
}

/** One η = 0 DDIM update from timestep t to prevT (prevT < 0 means "to the clean latent"). */
export function ddimStep(
  predictionType: "epsilon" | "v_prediction",
  alphas: Float64Array,
  modelOutput: Float32Array,
  t: number,
  prevT: number,
  sample: Float32Array,
): StepResult {
  const alphaProd = alphas[t]!;
  const alphaPrev = prevT >= 0 ? alphas[prevT]! : alphas[0]!;
  const { x0, eps } = predictOriginal(predictionType, modelOutput, sample, alphaProd);
  const a = Math.sqrt(alphaPrev);
  const b = Math.sqrt(1 - alphaPrev);
  const prev = new Float32Array(sample.length);
  for (let i = 0; i < prev.length; i++) prev[i] = a * x0[i]! + b * eps[i]!;
  return { prevSample: prev, denoised: x0 };
}

export class DdimSampler implements Sampler {
  readonly name = "ddim" as const;
  readonly predictionTypes: readonly PredictionType[] = ["epsilon", "v_prediction"];
  readonly classifierFreeGuidance = true;
  readonly initNoiseSigma = 1;
  timesteps: readonly number[] = [];
  private readonly alphas: Float64Array;
  private readonly spec: SchedulerSpec;
  private readonly predictionType: "epsilon" | "v_prediction";

  constructor(spec: SchedulerSpec, predictionType: PredictionType) {
    if (predictionType === "flow") throw new SamplerMismatchError("ddim needs an epsilon or v_prediction model, not flow");
    this.spec = spec;
    this.predictionType = predictionType;
    this.alphas = alphasCumprod(spec);
  }

  setTimesteps(steps: number): void {
    this.timesteps = ddimTimesteps(steps, this.spec.num_train_timesteps);
  }

  step(modelOutput: Float32Array, stepIndex: number, sample: Float32Array): StepResult {
    const t = this.timesteps[stepIndex];
    if (t === undefined) throw new RangeError(`ddim: step ${stepIndex} outside ${this.timesteps.length} timesteps`);
    const prevT = t - Math.floor(this.spec.num_train_timesteps / this.timesteps.length);
    return ddimStep(this.predictionType, this.alphas, modelOutput, t, prevT, sample);
  }
}
