/**
 * DDIM (Song et al. 2020) with η = 0: deterministic, the many-step baseline, used with classifier-free guidance.
 * diffusers' `DDIMScheduler`: the step goes from t to t − T/n, and past t = 0 it uses ᾱ₀ unless
 * `set_alpha_to_one`. The tiny-shapes bundles' manifests give no spacing: they get "leading" with no offset and
 * `set_alpha_to_one` false, as Stable Diffusion configures it; an export's scheduler_config.json may say otherwise.
 */
import type { PredictionType } from "@imagegen/formats/manifest";
import {
  alphasCumprod,
  arange,
  checkSteps,
  linspace,
  predictOriginal,
  roundHalfEven,
  type PredictionKind,
  type TimestepSpacing,
  type TrainingSchedule,
} from "./noise-schedule.ts";
import { SamplerMismatchError, type Sampler, type StepResult } from "./types.ts";

export interface DdimOptions {
  timestepSpacing?: TimestepSpacing;
  stepsOffset?: number;
  setAlphaToOne?: boolean;
}

export function ddimTimesteps(
  steps: number,
  numTrainTimesteps: number,
  spacing: TimestepSpacing = "leading",
  stepsOffset = 0,
): number[] {
  checkSteps("ddim", steps, numTrainTimesteps);
  const T = numTrainTimesteps;
  if (spacing === "linspace")
    return linspace(0, T - 1, steps)
      .map(roundHalfEven)
      .reverse();
  if (spacing === "trailing") return arange(T, 0, -T / steps).map((t) => roundHalfEven(t) - 1);
  const ratio = Math.floor(T / steps);
  return Array.from({ length: steps }, (_, i) => (steps - 1 - i) * ratio + stepsOffset);
}

/** One η = 0 DDIM update from timestep t to prevT (prevT < 0 means "to the clean latent", at ᾱ = finalAlpha). */
export function ddimStep(
  predictionType: PredictionKind,
  alphas: Float64Array,
  modelOutput: Float32Array,
  t: number,
  prevT: number,
  sample: Float32Array,
  finalAlpha = alphas[0]!,
): StepResult {
  const alphaProd = alphas[t]!;
  const alphaPrev = prevT >= 0 ? alphas[prevT]! : finalAlpha;
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
  private steps = 0;
  private readonly alphas: Float64Array;
  private readonly spec: TrainingSchedule;
  private readonly predictionType: PredictionKind;
  private readonly options: Required<DdimOptions>;

  constructor(spec: TrainingSchedule, predictionType: PredictionType | "sample", options: DdimOptions = {}) {
    if (predictionType === "flow")
      throw new SamplerMismatchError("ddim needs an epsilon or v_prediction model, not flow");
    this.spec = spec;
    this.predictionType = predictionType;
    this.alphas = alphasCumprod(spec);
    this.options = { timestepSpacing: "leading", stepsOffset: 0, setAlphaToOne: false, ...options };
  }

  setTimesteps(steps: number): void {
    const { timestepSpacing, stepsOffset } = this.options;
    this.timesteps = ddimTimesteps(steps, this.spec.num_train_timesteps, timestepSpacing, stepsOffset);
    this.steps = steps;
  }

  scaleModelInput(sample: Float32Array): Float32Array {
    return sample;
  }

  step(modelOutput: Float32Array, stepIndex: number, sample: Float32Array): StepResult {
    const t = this.timesteps[stepIndex];
    if (t === undefined) throw new RangeError(`ddim: step ${stepIndex} outside ${this.timesteps.length} timesteps`);
    // diffusers steps back by T // n whatever the spacing (and however many timesteps "trailing" produced).
    const prevT = t - Math.floor(this.spec.num_train_timesteps / this.steps);
    const finalAlpha = this.options.setAlphaToOne ? 1 : this.alphas[0]!;
    return ddimStep(this.predictionType, this.alphas, modelOutput, t, prevT, sample, finalAlpha);
  }
}
