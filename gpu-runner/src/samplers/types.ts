/**
 * One interface for every sampler, in the manner of the diffusers schedulers: `setTimesteps` picks the
 * timesteps fed to the U-Net, `step` turns one model output into the next sample. A sampler knows nothing about
 * ONNX, batching or guidance passes; the pipeline composes those.
 */
import type { PredictionType, SamplerName } from "@imagegen/formats/manifest";

/** Fills a buffer with standard normal noise, per image, from the request's seeded generators. */
export type NoiseSource = (size: number) => Float32Array;

export interface StepResult {
  /** The sample for the next step; after the last step, the latent to decode. */
  prevSample: Float32Array;
  /** The sampler's estimate of the clean latent at this step. */
  denoised: Float32Array;
}

export interface Sampler {
  readonly name: SamplerName;
  /** Prediction types whose model output this sampler's update rule is derived for. */
  readonly predictionTypes: readonly PredictionType[];
  /**
   * Whether the sampler uses classifier-free guidance (a second, unconditional pass). LCM does not: a distilled
   * LCM takes the guidance scale as an input, and LCM-LoRA samples with one pass.
   */
  readonly classifierFreeGuidance: boolean;
  /** Timesteps in sampling order, as fed to the U-Net; empty until `setTimesteps`. */
  readonly timesteps: readonly number[];
  /** Standard deviation of the initial noise: the pipeline multiplies its unit Gaussian latents by it. */
  readonly initNoiseSigma: number;
  setTimesteps(steps: number): void;
  /**
   * The U-Net's input at `timesteps[stepIndex]` (diffusers' `scale_model_input`): σ-parameterised samplers
   * (Euler, Euler ancestral) divide by √(σ² + 1); the others return `sample` itself.
   */
  scaleModelInput(sample: Float32Array, stepIndex: number): Float32Array;
  /**
   * Advances from `timesteps[stepIndex]` to the next timestep (or to the clean latent after the last one). Steps run
   * in order from 0 after `setTimesteps` (multistep samplers keep the previous outputs). Stochastic samplers
   * (LCM, Euler ancestral) draw from `noise`; a parity test passes diffusers' own noise through it.
   */
  step(modelOutput: Float32Array, stepIndex: number, sample: Float32Array, noise: NoiseSource): StepResult;
}

export class SamplerMismatchError extends Error {
  override readonly name = "SamplerMismatchError";
}
