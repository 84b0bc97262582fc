/**
 * DPM-Solver++ (Lu et al. 2022) multistep, data prediction, diffusers' `DPMSolverMultistepScheduler` with
 * `algorithm_type` "dpmsolver++": "DPM++ 2M" at solver order 2, its Karras variant with `use_karras_sigmas`.
 * The sample stays in the variance-preserving space (no input scaling, initial noise σ 1); each step converts
 * the model output to x0 and extrapolates from the last two x0 estimates in λ = log(α/σ).
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
import { SamplerMismatchError, type Sampler, type StepResult } from "./types.ts";

export interface DpmSolverOptions {
  timestepSpacing?: TimestepSpacing;
  stepsOffset?: number;
  useKarrasSigmas?: boolean;
  /** 1 (DPM++ 1S, i.e. DDIM in λ) or 2 (DPM++ 2M). */
  solverOrder?: 1 | 2;
  solverType?: "midpoint" | "heun";
  /** First-order last step(s) below 15 steps, which stabilises few-step sampling. */
  lowerOrderFinal?: boolean;
  eulerAtFinal?: boolean;
  finalSigmasType?: "zero" | "sigma_min";
}

/** DPM-Solver's `set_timesteps`: integer timesteps (Karras ones rounded) and σ at each, plus the final σ. */
export function dpmSolverSchedule(
  alphas: Float64Array,
  steps: number,
  options: DpmSolverOptions = {},
): { timesteps: number[]; sigmas: number[] } {
  const T = alphas.length;
  checkSteps("dpm-solver++", steps, T);
  const spacing = options.timestepSpacing ?? "linspace";
  let timesteps: number[];
  if (spacing === "linspace")
    timesteps = linspace(0, T - 1, steps + 1)
      .map(roundHalfEven)
      .reverse()
      .slice(0, -1);
  else if (spacing === "leading") {
    const ratio = Math.floor(T / (steps + 1));
    timesteps = Array.from({ length: steps }, (_, i) => (steps - i) * ratio + (options.stepsOffset ?? 0));
  } else timesteps = arange(T, 0, -T / steps).map((t) => roundHalfEven(t) - 1);
  const full = trainingSigmas(alphas, true);
  let sigmas: number[];
  if (options.useKarrasSigmas) {
    sigmas = karrasSigmas(full[0]!, full[T - 1]!, steps);
    const logSigmas = full.map((x) => Math.fround(Math.log(x)));
    timesteps = sigmas.map((s) => roundHalfEven(sigmaToT(s, logSigmas)));
  } else sigmas = timesteps.map((t) => interpolate(full, t));
  const last = options.finalSigmasType === "sigma_min" ? full[0]! : 0;
  return { timesteps, sigmas: [...sigmas, last].map(Math.fround) };
}

/** α_t and σ_t of the VP process at VE noise level σ: α = 1/√(σ²+1), σ_t = σ·α. */
function alphaSigma(sigma: number): { alpha: number; sigma: number; lambda: number } {
  const alpha = 1 / Math.sqrt(sigma * sigma + 1);
  const s = sigma * alpha;
  return { alpha, sigma: s, lambda: Math.log(alpha) - Math.log(s) };
}

export class DpmSolverPlusPlusSampler implements Sampler {
  readonly name: "dpm++2m" | "dpm++2m-karras";
  readonly predictionTypes: readonly PredictionType[] = ["epsilon", "v_prediction"];
  readonly classifierFreeGuidance = true;
  readonly initNoiseSigma = 1;
  timesteps: readonly number[] = [];
  sigmas: readonly number[] = [];
  private readonly alphas: Float64Array;
  private readonly predictionType: PredictionKind;
  private readonly options: DpmSolverOptions;
  /** x0 estimates of the previous and the current step. */
  private history: Float32Array[] = [];
  private nextStep = 0;

  constructor(spec: TrainingSchedule, predictionType: PredictionType | "sample", options: DpmSolverOptions = {}) {
    if (predictionType === "flow")
      throw new SamplerMismatchError("dpm++2m needs an epsilon or v_prediction model, not flow");
    this.predictionType = predictionType;
    this.options = {
      solverOrder: 2,
      solverType: "midpoint",
      lowerOrderFinal: true,
      eulerAtFinal: false,
      finalSigmasType: "zero",
      ...options,
    };
    this.name = options.useKarrasSigmas ? "dpm++2m-karras" : "dpm++2m";
    this.alphas = alphasCumprod(spec);
    if (spec.rescale_betas_zero_snr) this.alphas[this.alphas.length - 1] = 2 ** -24;
  }

  setTimesteps(steps: number): void {
    const { timesteps, sigmas } = dpmSolverSchedule(this.alphas, steps, this.options);
    this.timesteps = timesteps;
    this.sigmas = sigmas;
    this.history = [];
    this.nextStep = 0;
  }

  scaleModelInput(sample: Float32Array): Float32Array {
    return sample;
  }

  step(modelOutput: Float32Array, stepIndex: number, sample: Float32Array): StepResult {
    const n = this.timesteps.length;
    if (stepIndex < 0 || stepIndex >= n) throw new RangeError(`dpm++2m: step ${stepIndex} outside ${n} timesteps`);
    // The multistep update reads the previous step's x0, so steps must come in order.
    if (stepIndex !== this.nextStep)
      throw new RangeError(
        `dpm++2m: step ${stepIndex} out of order (expected ${this.nextStep}; call setTimesteps to restart)`,
      );
    const { lowerOrderFinal, eulerAtFinal, finalSigmasType, solverOrder, solverType } = this.options;
    const s0 = alphaSigma(this.sigmas[stepIndex]!);
    const t = alphaSigma(this.sigmas[stepIndex + 1]!);
    const x0 = new Float32Array(sample.length);
    for (let i = 0; i < x0.length; i++) {
      const m = modelOutput[i]!;
      x0[i] =
        this.predictionType === "epsilon"
          ? (sample[i]! - s0.sigma * m) / s0.alpha
          : this.predictionType === "v_prediction"
            ? s0.alpha * sample[i]! - s0.sigma * m
            : m;
    }
    const last = stepIndex === n - 1;
    const firstOrder =
      solverOrder === 1 ||
      this.history.length < 1 ||
      (last && (eulerAtFinal || (lowerOrderFinal && n < 15) || finalSigmasType === "zero"));
    const h = t.lambda - s0.lambda;
    const ratio = t.sigma / s0.sigma;
    const coeff = t.alpha * (Math.exp(-h) - 1);
    const prev = new Float32Array(sample.length);
    if (firstOrder) {
      for (let i = 0; i < prev.length; i++) prev[i] = ratio * sample[i]! - coeff * x0[i]!;
    } else {
      const s1 = alphaSigma(this.sigmas[stepIndex - 1]!);
      const r0 = (s0.lambda - s1.lambda) / h;
      const m1 = this.history[this.history.length - 1]!;
      const d1Coeff = solverType === "heun" ? -t.alpha * ((Math.exp(-h) - 1) / h + 1) : 0.5 * coeff;
      for (let i = 0; i < prev.length; i++) {
        const d1 = (x0[i]! - m1[i]!) / r0;
        prev[i] = ratio * sample[i]! - coeff * x0[i]! - d1Coeff * d1;
      }
    }
    this.history = [x0];
    this.nextStep = stepIndex + 1;
    return { prevSample: prev, denoised: x0 };
  }
}
