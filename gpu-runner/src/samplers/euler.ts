/**
 * Euler sampling of the probability-flow ODE in σ (Karras et al. 2022, Alg. 2 without churn), diffusers'
 * `EulerDiscreteScheduler`. The sample lives at noise level σ: the U-Net sees it divided by √(σ² + 1) and the
 * initial noise is scaled up by `initNoiseSigma`. Karras sigmas re-space σ and feed fractional timesteps.
 */
import type { PredictionType } from "@imagegen/formats/manifest";
import {
  alphasCumprod,
  arange,
  checkSteps,
  interpolate,
  karrasSigmas,
  linspace,
  roundHalfEven,
  sigmaToT,
  trainingSigmas,
  type PredictionKind,
  type TimestepSpacing,
  type TrainingSchedule,
} from "./noise-schedule.ts";
import { SamplerMismatchError, type NoiseSource, type Sampler, type StepResult } from "./types.ts";

export interface SigmaScheduleOptions {
  timestepSpacing?: TimestepSpacing;
  stepsOffset?: number;
  useKarrasSigmas?: boolean;
  /** σ after the last step: 0, or σ at the first training timestep. */
  finalSigmasType?: "zero" | "sigma_min";
}

export interface SigmaSchedule {
  timesteps: number[];
  /** One more than the timesteps: the last is the final noise level. Rounded to float32 as diffusers keeps them. */
  sigmas: number[];
}

/** Euler's (and Euler ancestral's) `set_timesteps`: spaced timesteps, σ interpolated at them, optionally Karras. */
export function eulerSchedule(alphas: Float64Array, steps: number, options: SigmaScheduleOptions = {}): SigmaSchedule {
  const T = alphas.length;
  checkSteps("euler", steps, T);
  const spacing = options.timestepSpacing ?? "linspace";
  let timesteps: number[];
  if (spacing === "linspace")
    timesteps = linspace(0, T - 1, steps)
      .map(Math.fround)
      .reverse();
  else if (spacing === "leading") {
    const ratio = Math.floor(T / steps);
    timesteps = Array.from({ length: steps }, (_, i) => (steps - 1 - i) * ratio + (options.stepsOffset ?? 0));
  } else timesteps = arange(T, 0, -T / steps).map((t) => roundHalfEven(t) - 1);
  const full = trainingSigmas(alphas, true);
  let sigmas = timesteps.map((t) => interpolate(full, t));
  if (options.useKarrasSigmas) {
    sigmas = karrasSigmas(sigmas[sigmas.length - 1]!, sigmas[0]!, steps);
    const logSigmas = full.map((x) => Math.fround(Math.log(x)));
    timesteps = sigmas.map((s) => Math.fround(sigmaToT(s, logSigmas)));
  }
  const last = options.finalSigmasType === "sigma_min" ? full[0]! : 0;
  return { timesteps, sigmas: [...sigmas, last].map(Math.fround) };
}

/** The clean-latent estimate at noise level σ from an epsilon, v or sample prediction. */
export function sigmaPredictOriginal(
  predictionType: PredictionKind,
  modelOutput: Float32Array,
  sample: Float32Array,
  sigma: number,
): Float32Array {
  const x0 = new Float32Array(sample.length);
  const c = 1 / Math.sqrt(sigma * sigma + 1);
  for (let i = 0; i < sample.length; i++) {
    const m = modelOutput[i]!;
    x0[i] =
      predictionType === "epsilon"
        ? sample[i]! - sigma * m
        : predictionType === "v_prediction"
          ? -sigma * c * m + c * c * sample[i]!
          : m;
  }
  return x0;
}

/** √(σ_max² + 1) for "leading" spacing, whose first timestep is not the last training one; σ_max otherwise. */
export function sigmaInitNoise(sigmas: readonly number[], spacing: TimestepSpacing): number {
  const max = Math.max(...sigmas);
  return spacing === "leading" ? Math.sqrt(max * max + 1) : max;
}

export function scaleBySigma(sample: Float32Array, sigma: number): Float32Array {
  const c = 1 / Math.sqrt(sigma * sigma + 1);
  return sample.map((x) => x * c);
}

export class EulerSampler implements Sampler {
  readonly name: "euler" | "euler-a" = "euler";
  readonly predictionTypes: readonly PredictionType[] = ["epsilon", "v_prediction"];
  readonly classifierFreeGuidance = true;
  timesteps: readonly number[] = [];
  sigmas: readonly number[] = [];
  initNoiseSigma = 1;
  protected readonly alphas: Float64Array;
  protected readonly predictionType: PredictionKind;
  protected readonly options: SigmaScheduleOptions;

  constructor(spec: TrainingSchedule, predictionType: PredictionType | "sample", options: SigmaScheduleOptions = {}) {
    if (predictionType === "flow")
      throw new SamplerMismatchError(`${this.name} needs an epsilon or v_prediction model, not flow`);
    this.predictionType = predictionType;
    this.options = options;
    this.alphas = alphasCumprod(spec);
    // diffusers moves ᾱ_T off 0 so that σ_T stays finite.
    if (spec.rescale_betas_zero_snr) this.alphas[this.alphas.length - 1] = 2 ** -24;
  }

  setTimesteps(steps: number): void {
    const { timesteps, sigmas } = eulerSchedule(this.alphas, steps, this.options);
    this.timesteps = timesteps;
    this.sigmas = sigmas;
    this.initNoiseSigma = sigmaInitNoise(sigmas, this.options.timestepSpacing ?? "linspace");
  }

  scaleModelInput(sample: Float32Array, stepIndex: number): Float32Array {
    return scaleBySigma(sample, this.sigmaAt(stepIndex));
  }

  protected sigmaAt(stepIndex: number): number {
    const sigma = this.sigmas[stepIndex];
    if (sigma === undefined || stepIndex >= this.timesteps.length) {
      throw new RangeError(`${this.name}: step ${stepIndex} outside ${this.timesteps.length} timesteps`);
    }
    return sigma;
  }

  step(modelOutput: Float32Array, stepIndex: number, sample: Float32Array, _noise?: NoiseSource): StepResult {
    const sigma = this.sigmaAt(stepIndex);
    const denoised = sigmaPredictOriginal(this.predictionType, modelOutput, sample, sigma);
    const dt = this.sigmas[stepIndex + 1]! - sigma;
    const prev = new Float32Array(sample.length);
    for (let i = 0; i < prev.length; i++) prev[i] = sample[i]! + ((sample[i]! - denoised[i]!) / sigma) * dt;
    return { prevSample: prev, denoised };
  }
}
