/**
 * The discrete training noise schedule shared by the diffusers-style samplers (`alphas_cumprod`, σ = √((1−ᾱ)/ᾱ)),
 * computed in float64 once per sampler, and the numpy arithmetic diffusers lays timesteps out with, reproduced
 * operation for operation so that the timesteps come out identical (numpy rounds half to even, `arange` with a
 * float step decides its length by a division that can overshoot).
 */
import type { SchedulerSpec } from "@imagegen/formats/manifest";

export type TrainingSchedule = Pick<
  SchedulerSpec,
  "num_train_timesteps" | "beta_schedule" | "beta_start" | "beta_end"
> & {
  /** Zero terminal SNR (Lin et al. 2023): ᾱ at the last timestep becomes exactly 0. */
  rescale_betas_zero_snr?: boolean;
  /**
   * Store β, α and ᾱ as float32, as diffusers' torch tensors hold them (the product itself accumulates in
   * float64 as torch's CPU cumprod does): the samplers built from scheduler_config.json then match diffusers to
   * float32 rounding. The manifest-driven tiny-shapes samplers keep the float64 schedule.
   */
  float32?: boolean;
};

export function alphasCumprod(spec: TrainingSchedule): Float64Array {
  const n = spec.num_train_timesteps;
  const betas = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const f = n === 1 ? 0 : i / (n - 1);
    // scaled_linear is linear in √β (the Stable Diffusion convention); linear is linear in β.
    betas[i] =
      spec.beta_schedule === "scaled_linear"
        ? (Math.sqrt(spec.beta_start) + f * (Math.sqrt(spec.beta_end) - Math.sqrt(spec.beta_start))) ** 2
        : spec.beta_start + f * (spec.beta_end - spec.beta_start);
  }
  const f = spec.float32 ? Math.fround : (x: number) => x;
  const out = new Float64Array(n);
  let product = 1;
  for (let i = 0; i < n; i++) {
    product *= f(1 - f(betas[i]!));
    out[i] = f(product);
  }
  if (spec.rescale_betas_zero_snr) rescaleZeroTerminalSnr(out);
  return out;
}

/** diffusers' `rescale_zero_terminal_snr`: shift and scale √ᾱ so that it ends at 0 and keeps its first value. */
function rescaleZeroTerminalSnr(alphas: Float64Array): void {
  const sqrt = alphas.map(Math.sqrt);
  const first = sqrt[0]!;
  const last = sqrt[sqrt.length - 1]!;
  for (let i = 0; i < alphas.length; i++) alphas[i] = (((sqrt[i]! - last) * first) / (first - last)) ** 2;
}

/** σ_t = √((1 − ᾱ_t)/ᾱ_t), the variance-exploding noise level of each training timestep (float32 ops if asked). */
export function trainingSigmas(alphas: Float64Array, float32 = false): Float64Array {
  const f = float32 ? Math.fround : (x: number) => x;
  return alphas.map((a) => f(Math.sqrt(f(f(1 - a) / a))));
}

export type PredictionKind = "epsilon" | "v_prediction" | "sample";

/** The model's clean-latent estimate x0 and noise estimate ε from its output, at ᾱ = alphaProd. */
export function predictOriginal(
  predictionType: PredictionKind,
  modelOutput: Float32Array,
  sample: Float32Array,
  alphaProd: number,
): { x0: Float32Array; eps: Float32Array } {
  const a = Math.sqrt(alphaProd);
  const b = Math.sqrt(1 - alphaProd);
  const x0 = new Float32Array(sample.length);
  const eps = new Float32Array(sample.length);
  for (let i = 0; i < sample.length; i++) {
    const x = sample[i]!;
    const m = modelOutput[i]!;
    if (predictionType === "epsilon") {
      x0[i] = (x - b * m) / a;
      eps[i] = m;
    } else if (predictionType === "v_prediction") {
      x0[i] = a * x - b * m;
      eps[i] = a * m + b * x;
    } else {
      x0[i] = m;
      eps[i] = (x - a * m) / b;
    }
  }
  return { x0, eps };
}

/** numpy's round: halves go to the even neighbour. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** `np.linspace(start, stop, num)` in float64 (the last value is `stop` exactly). */
export function linspace(start: number, stop: number, num: number): number[] {
  if (num === 1) return [start];
  const step = (stop - start) / (num - 1);
  return Array.from({ length: num }, (_, i) => (i === num - 1 ? stop : i * step + start));
}

/** `np.arange(start, stop, step)` for a float step: length ceil((stop − start)/step), values start + i·step. */
export function arange(start: number, stop: number, step: number): number[] {
  const length = Math.max(0, Math.ceil((stop - start) / step));
  return Array.from({ length }, (_, i) => start + i * step);
}

/** diffusers' "leading" / "trailing" / "linspace" timestep spacing. */
export type TimestepSpacing = "leading" | "trailing" | "linspace";

export function checkSteps(name: string, steps: number, max: number): void {
  if (!Number.isInteger(steps) || steps < 1 || steps > max)
    throw new RangeError(`${name}: steps must be an integer in [1, ${max}], got ${steps}`);
}

/** `np.interp(t, arange(len(values)), values)` for t inside the grid. */
export function interpolate(values: ArrayLike<number>, t: number): number {
  const i = Math.min(Math.max(Math.floor(t), 0), values.length - 2);
  if (t <= 0) return values[0]!;
  if (t >= values.length - 1) return values[values.length - 1]!;
  return (values[i + 1]! - values[i]!) * (t - i) + values[i]!;
}

/** Karras et al. (2022) noise levels, ρ = 7, from sigmaMax down to sigmaMin in `n` steps. */
export function karrasSigmas(sigmaMin: number, sigmaMax: number, n: number): number[] {
  const rho = 7;
  const minInv = sigmaMin ** (1 / rho);
  const maxInv = sigmaMax ** (1 / rho);
  return linspace(0, 1, n).map((r) => (maxInv + r * (minInv - maxInv)) ** rho);
}

/** diffusers' `_sigma_to_t`: the fractional training timestep whose log σ interpolates to σ. */
export function sigmaToT(sigma: number, logSigmas: Float64Array): number {
  const logSigma = Math.log(Math.max(sigma, 1e-10));
  let low = 0;
  for (let i = 0; i < logSigmas.length; i++) if (logSigma - logSigmas[i]! >= 0) low = i;
  low = Math.min(low, logSigmas.length - 2);
  const lo = logSigmas[low]!;
  const hi = logSigmas[low + 1]!;
  const w = Math.min(Math.max((lo - logSigma) / (lo - hi), 0), 1);
  return (1 - w) * low + w * (low + 1);
}
